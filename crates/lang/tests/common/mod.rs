//! A test catalog mirroring the built-in operators of operators.md, plus two fake
//! plugins (`tall`, `wide`) that both define `consensus`.

#![allow(dead_code)]

use reefknot_lang::{
    Bound, Catalog, DefaultValue, Lookup, Models, OpSpec, ParamKind, ParamSpec, Signature, Ty, TIES,
};

const SS: Signature = Signature::new(Ty::Stack, Ty::Stack);
const SV: Signature = Signature::new(Ty::Stack, Ty::Voted);
const VD: Signature = Signature::new(Ty::Voted, Ty::Delta);
const SD: Signature = Signature::new(Ty::Stack, Ty::Delta);
const DD: Signature = Signature::new(Ty::Delta, Ty::Delta);

const fn at_least(min: f64) -> ParamKind {
    ParamKind::Number {
        min: Bound::Inclusive(min),
        max: Bound::Unbounded,
    }
}

pub static TRIM: OpSpec = OpSpec {
    name: "trim",
    aliases: &["topk"],
    signatures: &[SS, DD],
    params: &[ParamSpec {
        name: "k",
        kind: at_least(0.0),
        default: Some(DefaultValue::Number(0.2)),
        doc: "the fraction of entries kept",
    }],
    models: Models::ANY,
    weighted: true,
    summary: "keep the largest entries of each task vector",
    doc: "",
};

pub static DARE: OpSpec = OpSpec {
    name: "dare",
    aliases: &[],
    signatures: &[SS, DD],
    params: &[
        ParamSpec {
            name: "p",
            kind: ParamKind::Number {
                min: Bound::Inclusive(0.0),
                max: Bound::Exclusive(1.0),
            },
            default: Some(DefaultValue::Number(0.9)),
            doc: "the probability of dropping each entry",
        },
        ParamSpec {
            name: "rescale",
            kind: ParamKind::Choice(&["inverse", "l1", "none"]),
            default: Some(DefaultValue::Choice("inverse")),
            doc: "how survivors are rescaled",
        },
    ],
    models: Models::ANY,
    weighted: true,
    summary: "drop entries at random and rescale the survivors",
    doc: "",
};

pub static ELECT: OpSpec = OpSpec {
    name: "elect",
    aliases: &[],
    signatures: &[SV],
    params: &[ParamSpec {
        name: "by",
        kind: ParamKind::Choice(&["mass", "count", "fisher"]),
        default: Some(DefaultValue::Choice("mass")),
        doc: "what elects the sign",
    }],
    models: Models::ANY,
    weighted: true,
    summary: "elect a sign per element",
    doc: "",
};

pub static DISJOINT: OpSpec = OpSpec {
    name: "disjoint",
    aliases: &[],
    signatures: &[VD],
    params: &[ParamSpec {
        name: "by",
        kind: ParamKind::Choice(&["mean", "sum", "fisher"]),
        default: Some(DefaultValue::Choice("mean")),
        doc: "how the agreeing entries are combined",
    }],
    models: Models::ANY,
    weighted: true,
    summary: "combine the entries that agree with the elected sign",
    doc: "",
};

pub static SUM: OpSpec = OpSpec {
    name: "sum",
    aliases: &["task_arithmetic"],
    signatures: &[SD],
    params: &[],
    models: Models::ANY,
    weighted: true,
    summary: "add the task vectors",
    doc: "",
};

pub static MEAN: OpSpec = OpSpec {
    name: "mean",
    aliases: &[],
    signatures: &[SD],
    params: &[],
    models: Models::ANY,
    weighted: true,
    summary: "weighted mean of the task vectors",
    doc: "",
};

pub static FISHER: OpSpec = OpSpec {
    name: "fisher",
    aliases: &[],
    signatures: &[SD],
    params: &[
        ParamSpec {
            name: "eps",
            kind: at_least(0.0),
            default: Some(DefaultValue::Number(1e-12)),
            doc: "added to every Fisher value",
        },
        ParamSpec {
            name: "normalize",
            kind: ParamKind::Bool,
            default: Some(DefaultValue::Bool(false)),
            doc: "divide each model's Fisher by its mean",
        },
    ],
    models: Models::ANY,
    weighted: true,
    summary: "Fisher-weighted mean of the task vectors",
    doc: "",
};

pub static SCALE: OpSpec = OpSpec {
    name: "scale",
    aliases: &[],
    signatures: &[DD],
    params: &[ParamSpec {
        name: "lambda",
        kind: ParamKind::any_number(),
        default: None,
        doc: "the factor",
    }],
    models: Models::ANY,
    weighted: true,
    summary: "multiply the merged delta",
    doc: "",
};

pub static TALL_CONSENSUS: OpSpec = OpSpec {
    name: "consensus",
    aliases: &[],
    signatures: &[SS],
    params: &[
        ParamSpec {
            name: "k",
            kind: ParamKind::closed(0.0, 1.0),
            default: Some(DefaultValue::Number(0.5)),
            doc: "agreement threshold",
        },
        ParamSpec {
            name: "label",
            kind: ParamKind::Text,
            default: Some(DefaultValue::Text("tall")),
            doc: "a label",
        },
    ],
    models: Models::ANY,
    weighted: true,
    summary: "keep entries most models agree on",
    doc: "",
};

pub static TALL_VOTE: OpSpec = OpSpec {
    name: "vote",
    aliases: &[],
    signatures: &[SV],
    params: &[],
    models: Models::ANY,
    weighted: true,
    summary: "elect a sign by plurality",
    doc: "",
};

pub static WIDE_CONSENSUS: OpSpec = OpSpec {
    name: "consensus",
    aliases: &[],
    signatures: &[SD],
    params: &[],
    models: Models::ANY,
    weighted: true,
    summary: "merge by consensus",
    doc: "",
};

pub static WIDE_TAG: OpSpec = OpSpec {
    name: "tag",
    aliases: &[],
    signatures: &[DD],
    params: &[ParamSpec {
        name: "label",
        kind: ParamKind::Text,
        default: None,
        doc: "the tag",
    }],
    models: Models::ANY,
    weighted: true,
    summary: "tag the merged delta",
    doc: "",
};

const BUILTINS: &[&OpSpec] = &[
    &TRIM, &DARE, &ELECT, &DISJOINT, &SUM, &MEAN, &FISHER, &SCALE, &TIES,
];
const PLUGINS: &[(&str, &OpSpec)] = &[
    ("tall", &TALL_CONSENSUS),
    ("tall", &TALL_VOTE),
    ("wide", &WIDE_CONSENSUS),
    ("wide", &WIDE_TAG),
];

fn answers(spec: &OpSpec, name: &str) -> bool {
    spec.name == name || spec.aliases.contains(&name)
}

/// Built-ins by plain name or alias; plugin operators by `plugin::op`, or by their
/// plain name when exactly one plugin defines it and no built-in does.
pub struct TestCatalog;

impl Catalog for TestCatalog {
    fn lookup(&self, name: &str) -> Lookup {
        if let Some((ns, op)) = name.split_once("::") {
            return match PLUGINS.iter().find(|(n, s)| *n == ns && answers(s, op)) {
                Some((ns, spec)) => Lookup::Found {
                    qualified: format!("{ns}::{}", spec.name),
                    spec,
                },
                None => Lookup::NotFound,
            };
        }
        if let Some(spec) = BUILTINS.iter().find(|s| answers(s, name)) {
            return Lookup::Found {
                qualified: spec.name.to_string(),
                spec,
            };
        }
        let found: Vec<_> = PLUGINS.iter().filter(|(_, s)| answers(s, name)).collect();
        match found.as_slice() {
            [] => Lookup::NotFound,
            [(ns, spec)] => Lookup::Found {
                qualified: format!("{ns}::{}", spec.name),
                spec,
            },
            many => Lookup::Ambiguous(
                many.iter()
                    .map(|(ns, s)| format!("{ns}::{}", s.name))
                    .collect(),
            ),
        }
    }

    fn names(&self) -> Vec<String> {
        let mut out = Vec::new();
        for spec in BUILTINS {
            out.push(spec.name.to_string());
            out.extend(spec.aliases.iter().map(|a| a.to_string()));
        }
        for (ns, spec) in PLUGINS {
            out.push(format!("{ns}::{}", spec.name));
        }
        for (_, spec) in PLUGINS {
            if !out.iter().any(|n| n == spec.name) {
                out.push(spec.name.to_string());
            }
        }
        out
    }
}

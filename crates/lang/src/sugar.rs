//! The `ties` sugar: one stage that stands for `trim |> elect |> disjoint`.

use crate::ast::{self, Value};
use crate::check::{ordinal, quoted_or, Checker};
use crate::error::{ErrorKind, LangError};
use crate::pipeline::{Arg, ArgValue, Call, Span};
use crate::spec::{Bound, DefaultValue, Lookup, OpSpec, ParamKind, ParamSpec, Signature, Ty};

/// The canonical name the catalog returns for the sugar.
pub(crate) const TIES_NAME: &str = "ties";

/// `ties`: TIES merging (Yadav et al., 2023) written as one stage.
///
/// The catalog should list it so that users can call it and `reefknot ops` shows it;
/// the checker recognises it by the canonical name `ties` and expands it before
/// type-checking, so the engine never sees it.
pub static TIES: OpSpec = OpSpec {
    name: TIES_NAME,
    aliases: &[],
    signatures: &[Signature::new(Ty::Stack, Ty::Delta)],
    params: &[ParamSpec {
        name: "k",
        kind: ParamKind::Number {
            min: Bound::Inclusive(0.0),
            max: Bound::Unbounded,
        },
        default: Some(DefaultValue::Number(0.2)),
        doc: "the density of `trim`, the fraction of each task vector's entries kept",
    }],
    models: crate::spec::Models::ANY,
    weighted: true,
    summary: "TIES merging: sugar for trim(k) |> elect |> disjoint",
    doc: "\
TIES merging (trim, elect sign, disjoint merge) as one stage. It is sugar: the
checker expands it into three stages before anything runs.

- `ties` is `ties(0.2)`.
- `ties(k)` or `ties(k=...)` is `trim(k) |> elect |> disjoint`; `k` may be a number,
  a `$variable` or a gradient, as for `trim`.
- `ties(trim(k), elect(..), disjoint(..))` is `trim(k) |> elect(..) |> disjoint(..)`:
  the parts are stages, in this order: one that sparsifies the task vectors
  (Stack→Stack, e.g. `trim` or `dare`), one that elects a sign (Stack→Voted,
  `elect`), one that combines the models along it (Voted→Delta, `disjoint`).
  Parts left out at the end default to `elect` and `disjoint`; the first part may
  also be a number, as in `ties(0.3, elect(count))`.

Examples: `ties(trim(0.2), elect, disjoint) |> dare(0.9)`,
`ties(dare(0.9), elect(fisher), disjoint(fisher))`.",
};

/// What each part of `ties(...)` must be.
struct Part {
    signature: Signature,
    role: &'static str,
    default: &'static str,
}

const PARTS: [Part; 3] = [
    Part {
        signature: Signature::new(Ty::Stack, Ty::Stack),
        role: "sparsify the task vectors (Stack→Stack)",
        default: "trim",
    },
    Part {
        signature: Signature::new(Ty::Stack, Ty::Voted),
        role: "elect a sign (Stack→Voted)",
        default: "elect",
    },
    Part {
        signature: Signature::new(Ty::Voted, Ty::Delta),
        role: "combine the models along the elected sign (Voted→Delta)",
        default: "disjoint",
    },
];

const TIES_FORM: &str = "write `ties(k)` or the parts in order: `ties(trim(0.2), elect, disjoint)`";

impl Checker<'_> {
    /// Expands one `ties(...)` stage into its three calls (each spanning the whole
    /// `ties(...)` stage).
    pub(crate) fn expand_ties(&self, stage: &ast::Stage) -> Result<Vec<Call>, LangError> {
        let k_param = &TIES.params[0];
        let mut slots: [Option<&ast::Arg>; 3] = [None; 3];
        for (i, arg) in stage.args().iter().enumerate() {
            let idx = match &arg.name {
                None if i < 3 => i,
                None => {
                    return Err(self
                        .error(
                            ErrorKind::TooManyArguments,
                            arg.span,
                            "`ties` takes at most three parts: trim, elect and disjoint",
                        )
                        .with_label("unexpected argument")
                        .with_help(TIES_FORM))
                }
                Some(name) if name.text == k_param.name => {
                    if matches!(arg.value, Value::Name(_) | Value::Stage(_)) {
                        return Err(self
                            .error(
                                ErrorKind::ArgumentType,
                                arg.value.span(),
                                format!(
                                    "`k` of `ties` expects {}, found {}",
                                    k_param.kind.describe(),
                                    self.what(&arg.value)
                                ),
                            )
                            .with_label("expected a number")
                            .with_help(TIES_FORM));
                    }
                    0
                }
                Some(name) => {
                    return Err(self
                        .error(
                            ErrorKind::UnknownParameter,
                            name.span,
                            format!("`ties` has no parameter `{}`", name.text),
                        )
                        .with_label("unknown parameter")
                        .with_help(format!(
                            "`ties` takes `k` (the density of `trim`) or up to three stages; \
                             {TIES_FORM}"
                        )))
                }
            };
            if let Some(first) = slots[idx] {
                return Err(self
                    .error(
                        ErrorKind::DuplicateArgument,
                        arg.span,
                        "`k` of `ties` is given twice",
                    )
                    .with_label("second value for `k`")
                    .with_note_at(first.span, "first given here")
                    .with_help("give the density once: `ties(k=0.2)` or `ties(trim(0.2), ...)`"));
            }
            slots[idx] = Some(arg);
        }

        let mut calls = Vec::with_capacity(3);
        for (idx, part) in PARTS.iter().enumerate() {
            let call = match slots[idx] {
                Some(arg) => match &arg.value {
                    Value::Name(_) | Value::Stage(_) => {
                        self.ties_part(stage.span, &arg.value, idx)?
                    }
                    Value::Number(_) | Value::Var { .. } | Value::Gradient { .. } if idx == 0 => {
                        let k = self.value(TIES_NAME, k_param, &arg.value)?;
                        self.ties_trim(stage, k, Some(arg.value.span()))?
                    }
                    other => {
                        let what = if idx == 0 {
                            "a number (the density k) or a stage"
                        } else {
                            "a stage"
                        };
                        return Err(self
                            .error(
                                if idx == 0 {
                                    ErrorKind::ArgumentType
                                } else {
                                    ErrorKind::TiesPart
                                },
                                other.span(),
                                format!(
                                    "the {} part of `ties` must be {what} that can {}, found {}",
                                    ordinal(idx),
                                    part.role,
                                    self.what(other)
                                ),
                            )
                            .with_label(format!("expected {what}"))
                            .with_help(TIES_FORM));
                    }
                },
                None if idx == 0 => {
                    let k = match k_param.default {
                        Some(DefaultValue::Number(x)) => ArgValue::Number(x),
                        _ => unreachable!("TIES.k has a number default"),
                    };
                    self.ties_trim(stage, k, None)?
                }
                None => self.ties_default(stage, idx)?,
            };
            calls.push(call);
        }
        Ok(calls)
    }

    /// Resolves one of the operators `ties` expands to by default.
    fn ties_lookup(
        &self,
        stage: &ast::Stage,
        name: &str,
    ) -> Result<(String, &'static OpSpec), LangError> {
        match self.catalog.lookup(name) {
            Lookup::Found { qualified, spec } => Ok((qualified, spec)),
            _ => Err(self
                .error(
                    ErrorKind::UnknownOperator,
                    stage.name.span,
                    format!("`ties` expands to `{name}`, which is not a known operator"),
                )
                .with_label("cannot expand")
                .with_help("write the stages out, e.g. `trim(0.2) |> elect |> disjoint`")),
        }
    }

    /// `trim(k)` for the density given to `ties` (or its default).
    fn ties_trim(
        &self,
        stage: &ast::Stage,
        k: ArgValue,
        span: Option<Span>,
    ) -> Result<Call, LangError> {
        let part = &PARTS[0];
        let (qualified, spec) = self.ties_lookup(stage, part.default)?;
        let Some(trim_k) = spec.params.iter().find(|p| p.name == "k") else {
            return Err(self
                .error(
                    ErrorKind::UnknownParameter,
                    stage.span,
                    format!("`ties` passes its density to `{qualified}(k=...)`, which has no parameter `k`"),
                )
                .with_help("write the stages out, e.g. `trim(0.2) |> elect |> disjoint`"));
        };
        // The density was checked against `ties`'s own `k`; check it against `trim`'s too.
        if let (ArgValue::Number(x), Some(span)) = (&k, span) {
            if !trim_k.kind.admits(*x) {
                return Err(self
                    .error(
                        ErrorKind::OutOfRange,
                        span,
                        format!("`{x}` is out of range for `k` of `{qualified}`"),
                    )
                    .with_help(format!(
                        "`k` of `{qualified}` takes {}",
                        trim_k.kind.describe()
                    )));
            }
        }
        let mut args = Vec::with_capacity(spec.params.len());
        for param in spec.params {
            if std::ptr::eq(param, trim_k) {
                args.push(Arg {
                    param,
                    value: k.clone(),
                    span,
                });
            } else {
                args.push(self.default_arg(&qualified, spec, param, stage.span)?);
            }
        }
        let signature = spec
            .signature_for(Ty::Stack)
            .filter(|s| *s == part.signature);
        let Some(signature) = signature else {
            return Err(self.part_mismatch(stage.span, &qualified, spec, 0));
        };
        Ok(Call {
            op: qualified,
            spec,
            signature,
            args,
            span: stage.span,
        })
    }

    /// `elect` or `disjoint` with their defaults.
    fn ties_default(&self, stage: &ast::Stage, idx: usize) -> Result<Call, LangError> {
        let part = &PARTS[idx];
        let (qualified, spec) = self.ties_lookup(stage, part.default)?;
        if !spec.signatures.contains(&part.signature) {
            return Err(self.part_mismatch(stage.span, &qualified, spec, idx));
        }
        let args = self.bind(&qualified, spec, &[], stage.span)?;
        Ok(Call {
            op: qualified,
            spec,
            signature: part.signature,
            args,
            span: stage.span,
        })
    }

    /// A stage written as the `idx`-th part of `ties(...)`.
    fn ties_part(&self, ties_span: Span, value: &Value, idx: usize) -> Result<Call, LangError> {
        let (name, args, span) = match value {
            Value::Name(n) => (n, &[][..], n.span),
            Value::Stage(s) => (&s.name, s.args(), s.span),
            _ => unreachable!("ties_part is called with a name or a stage"),
        };
        let resolved = self.resolve(name, idx == 0 && matches!(value, Value::Name(_)))?;
        let part = &PARTS[idx];
        if !resolved.spec.signatures.contains(&part.signature) {
            return Err(self.part_mismatch(span, &name.text, resolved.spec, idx));
        }
        let args = self.bind(&name.text, resolved.spec, args, span)?;
        Ok(Call {
            op: resolved.qualified,
            spec: resolved.spec,
            signature: part.signature,
            args,
            span: ties_span,
        })
    }

    fn part_mismatch(&self, span: Span, name: &str, spec: &OpSpec, idx: usize) -> LangError {
        let part = &PARTS[idx];
        let mut help = format!("the {} part of `ties` must {}", ordinal(idx), part.role);
        let mut examples = self.ops_with(part.signature.input, part.signature.output);
        examples.retain(|e| e != TIES_NAME);
        examples.truncate(3);
        if !examples.is_empty() {
            help.push_str(&format!(", e.g. {}", quoted_or(&examples)));
        }
        help.push_str(&format!("; {TIES_FORM}"));
        self.error(
            ErrorKind::TiesPart,
            span,
            format!("`{name}` cannot be the {} part of `ties`", ordinal(idx)),
        )
        .with_label(format!("`{name}` is {}", spec.signature_list()))
        .with_help(help)
    }
}

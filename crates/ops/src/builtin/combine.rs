//! Operators that combine the stack into one delta without a vote (`sum`, `mean`,
//! `fisher`), and `scale`, which acts on the delta.

use reefknot_lang::{Bound, DefaultValue, OpSpec, ParamKind, ParamSpec, Signature, Ty};

use super::tiles::Tiles;
use crate::kernel::{Args, BindCtx, BoolParam, Chunk, Kernel, NumberParam, Operator, Param};
use crate::OpError;

/// `sum` (alias `task_arithmetic`).
pub struct Sum;

static SUM: OpSpec = OpSpec {
    name: "sum",
    aliases: &["task_arithmetic"],
    signatures: &[Signature::new(Ty::Stack, Ty::Delta)],
    params: &[],
    models: reefknot_lang::Models::ANY,
    weighted: true,
    summary: "task arithmetic: add the weighted task vectors",
    doc: "Task arithmetic (Ilharco et al. 2023): `Δ = Σ_i u_i` with `u_i = w_i·δ̃_i`. \
Equals mergekit's `task_arithmetic`; follow it with `scale(λ)` for its `lambda`.",
};

impl Operator for Sum {
    fn spec(&self) -> &'static OpSpec {
        &SUM
    }

    fn bind(&self, _args: &Args, _ctx: &BindCtx<'_>) -> Result<Box<dyn Kernel>, OpError> {
        Ok(Box::new(WeightedSum { normalize: false }))
    }
}

/// `mean`.
pub struct Mean;

static MEAN: OpSpec = OpSpec {
    name: "mean",
    aliases: &[],
    signatures: &[Signature::new(Ty::Stack, Ty::Delta)],
    params: &[],
    models: reefknot_lang::Models::ANY,
    weighted: true,
    summary: "weighted average of the task vectors (zeros count)",
    doc: "The weighted average of the task vectors: `Δ = Σ_i u_i / Σ_i w_i` (when \
`|Σ_i w_i| < 1e-8` the divisor is 1). Entries that are zero count, unlike `disjoint`. \
The merged model is the weighted average of the fine-tunes, mergekit's `linear` with \
`normalize: true` (computed on task vectors, so the last bit may differ).",
};

impl Operator for Mean {
    fn spec(&self) -> &'static OpSpec {
        &MEAN
    }

    fn bind(&self, _args: &Args, _ctx: &BindCtx<'_>) -> Result<Box<dyn Kernel>, OpError> {
        Ok(Box::new(WeightedSum { normalize: true }))
    }
}

struct WeightedSum {
    normalize: bool,
}

impl Kernel for WeightedSum {
    fn apply(&self, chunk: &mut Chunk<'_>) -> Result<(), OpError> {
        let tiles = Tiles::new(chunk.stack, &chunk.weights[..chunk.models], chunk.len);
        let total: f32 = chunk.weights.iter().sum();
        let out = &mut *chunk.delta;
        if self.normalize && total.abs() >= 1e-8 {
            tiles.fold(out, None, |w, x, _| w * x, |s| s / total);
        } else {
            tiles.fold(out, None, |w, x, _| w * x, |s| s);
        }
        Ok(())
    }
}

/// `fisher`.
pub struct Fisher;

static FISHER: OpSpec = OpSpec {
    name: "fisher",
    aliases: &[],
    signatures: &[Signature::new(Ty::Stack, Ty::Delta)],
    params: &[
        ParamSpec {
            name: "eps",
            kind: ParamKind::Number {
                min: Bound::Inclusive(0.0),
                max: Bound::Unbounded,
            },
            default: Some(DefaultValue::Number(1e-12)),
            doc: "added to every Fisher value, so all-zero Fisher gives the weighted mean",
        },
        ParamSpec {
            name: "normalize",
            kind: ParamKind::Bool,
            default: Some(DefaultValue::Bool(false)),
            doc: "divide each model's Fisher by its mean over the whole model first",
        },
    ],
    models: reefknot_lang::Models::ANY,
    weighted: true,
    summary: "Fisher merging: per-element average weighted by each model's Fisher",
    doc: "Fisher merging (Matena & Raffel 2022) in task-vector space: \
`Δ_j = Σ_i w_i·F'_ij·δ_ij / Σ_i w_i·F'_ij` with `F' = F + eps`, `F_i` the diagonal Fisher \
information of model `i` (recipe `fisher:`, a safetensors file with the model's tensor \
names). Where every Fisher is zero it is the weighted mean.\n\n\
`normalize=true` first divides each model's Fisher by its mean over the whole model, for \
Fishers estimated on different amounts of data. Keep `eps` tiny: measured diagonal Fishers \
of small language models are mostly 1e-8–1e-6, so a floor such as 1e-6 would flatten \
Fisher merging into plain averaging.",
};

const NORMALIZE: Param<BoolParam> = Param::flag(&FISHER, "normalize");
const EPS: Param<NumberParam> = Param::number(&FISHER, "eps");

impl Operator for Fisher {
    fn spec(&self) -> &'static OpSpec {
        &FISHER
    }

    fn needs_fisher(&self, _args: &Args) -> bool {
        true
    }

    fn needs_fisher_means(&self, args: &Args) -> bool {
        args.flag(NORMALIZE)
    }

    fn bind(&self, args: &Args, ctx: &BindCtx<'_>) -> Result<Box<dyn Kernel>, OpError> {
        let scale = if args.flag(NORMALIZE) {
            let means = ctx.fisher_means.ok_or_else(|| OpError::InvalidArguments {
                op: "fisher".into(),
                message: "normalize=true needs each model's Fisher mean".into(),
            })?;
            let mut scale = Vec::with_capacity(means.len());
            for (i, &m) in means.iter().enumerate() {
                if !m.is_finite() {
                    return Err(OpError::NonFinite {
                        op: "fisher".into(),
                        what: format!("the Fisher mean of model {}", i + 1),
                        value: m,
                    });
                }
                scale.push(if m > 0.0 { (1.0 / m) as f32 } else { 1.0 });
            }
            scale
        } else {
            vec![1.0; ctx.models]
        };
        Ok(Box::new(FisherKernel {
            eps: args.number(EPS) as f32,
            scale,
        }))
    }
}

struct FisherKernel {
    eps: f32,
    /// Per model: 1 / (mean Fisher) when normalising, else 1.
    scale: Vec<f32>,
}

impl Kernel for FisherKernel {
    fn apply(&self, chunk: &mut Chunk<'_>) -> Result<(), OpError> {
        let len = chunk.len;
        let num = &mut *chunk.delta;
        let den = &mut *chunk.scratch;
        num.fill(0.0);
        den.fill(0.0);
        let fisher = chunk.fisher.expect("fisher is bound with Fisher data");
        for i in 0..chunk.models {
            let w = chunk.weights[i];
            let s = self.scale[i];
            let d = &chunk.stack[i * len..(i + 1) * len];
            let f = &fisher[i * len..(i + 1) * len];
            for j in 0..len {
                let fw = (f[j] * s + self.eps) * w;
                num[j] += fw * d[j];
                den[j] += fw;
            }
        }
        for (n, d) in num.iter_mut().zip(den.iter()) {
            if *d != 0.0 {
                *n /= *d;
            }
        }
        Ok(())
    }
}

/// `scale`.
pub struct Scale;

static SCALE: OpSpec = OpSpec {
    name: "scale",
    aliases: &[],
    signatures: &[Signature::new(Ty::Delta, Ty::Delta)],
    params: &[ParamSpec {
        name: "lambda",
        kind: ParamKind::any_number(),
        default: None,
        doc: "the factor",
    }],
    models: reefknot_lang::Models::ANY,
    weighted: false,
    summary: "multiply the merged delta by λ",
    doc: "`Δ ← λ·Δ`. mergekit's `lambda` parameter of TIES and task arithmetic.",
};

const LAMBDA: Param<NumberParam> = Param::number(&SCALE, "lambda");

impl Operator for Scale {
    fn spec(&self) -> &'static OpSpec {
        &SCALE
    }

    fn bind(&self, args: &Args, _ctx: &BindCtx<'_>) -> Result<Box<dyn Kernel>, OpError> {
        Ok(Box::new(ScaleKernel {
            lambda: args.number(LAMBDA) as f32,
        }))
    }
}

struct ScaleKernel {
    lambda: f32,
}

impl Kernel for ScaleKernel {
    fn apply(&self, chunk: &mut Chunk<'_>) -> Result<(), OpError> {
        let l = self.lambda;
        chunk.delta.iter_mut().for_each(|x| *x *= l);
        Ok(())
    }
}

/// `linear`.
pub struct Linear;

static LINEAR: OpSpec = OpSpec {
    name: "linear",
    aliases: &[],
    signatures: &[Signature::new(Ty::Stack, Ty::Delta)],
    params: &[
        ParamSpec {
            name: "normalize",
            kind: ParamKind::Bool,
            default: Some(DefaultValue::Bool(true)),
            doc: "divide by the sum of the weights (the base's included)",
        },
        ParamSpec {
            name: "base_weight",
            kind: ParamKind::any_number(),
            default: Some(DefaultValue::Number(0.0)),
            doc: "the weight of the base model itself among the averaged models",
        },
    ],
    models: reefknot_lang::Models::ANY,
    weighted: true,
    summary: "mergekit's linear: a weighted sum of whole models, optionally normalised",
    doc: "mergekit's `linear` (Wortsman et al. 2022, model soups): the merged tensor is \
`(w_b·θ_b + Σ_i w_i·θ_i) / W` with `W = w_b + Σ_i w_i` (`normalize=true`; when \
`|W| < 1e-8` the divisor is 1, where mergekit divides by zero), or \
`w_b·θ_b + Σ_i w_i·θ_i` (`normalize=false`). `w_i` are the models' weights and `w_b` is \
`base_weight`: a mergekit config that lists the base among its models with a weight \
gives that weight here; one that does not list it has `base_weight=0`. Computed on task \
vectors: `Δ = Σ_i w_i·δ_i / W`, or `Δ = Σ_i w_i·δ_i + (W − 1)·θ_b` without normalising, \
so the last bit may differ from mergekit's. With the default arguments it is `mean`.",
};

const LINEAR_NORMALIZE: Param<BoolParam> = Param::flag(&LINEAR, "normalize");
const BASE_WEIGHT: Param<NumberParam> = Param::number(&LINEAR, "base_weight");

impl Operator for Linear {
    fn spec(&self) -> &'static OpSpec {
        &LINEAR
    }

    fn bind(&self, args: &Args, _ctx: &BindCtx<'_>) -> Result<Box<dyn Kernel>, OpError> {
        Ok(Box::new(LinearKernel {
            normalize: args.flag(LINEAR_NORMALIZE),
            base_weight: args.number(BASE_WEIGHT) as f32,
        }))
    }
}

struct LinearKernel {
    normalize: bool,
    base_weight: f32,
}

impl Kernel for LinearKernel {
    fn apply(&self, chunk: &mut Chunk<'_>) -> Result<(), OpError> {
        let tiles = Tiles::new(chunk.stack, &chunk.weights[..chunk.models], chunk.len);
        let total = self.base_weight + chunk.weights.iter().sum::<f32>();
        let out = &mut *chunk.delta;
        if self.normalize && total.abs() >= 1e-8 {
            tiles.fold(out, None, |w, x, _| w * x, |s| s / total);
        } else {
            // Not normalised, or weights summing to (nearly) zero, which mergekit divides
            // by: the weighted sum of the models.
            tiles.fold(out, None, |w, x, _| w * x, |s| s);
            let own = total - 1.0;
            if own != 0.0 {
                for (o, &b) in out.iter_mut().zip(chunk.base) {
                    *o += own * b;
                }
            }
        }
        Ok(())
    }
}

/// `passthrough`.
pub struct Passthrough;

static PASSTHROUGH: OpSpec = OpSpec {
    name: "passthrough",
    aliases: &[],
    signatures: &[Signature::new(Ty::Stack, Ty::Delta)],
    params: &[ParamSpec {
        name: "scale",
        kind: ParamKind::any_number(),
        default: Some(DefaultValue::Number(1.0)),
        doc: "factor applied to the fine-tune's tensor",
    }],
    models: reefknot_lang::Models::exactly(1),
    weighted: false,
    summary: "take the one fine-tune's tensor as it is (or scaled)",
    doc: "mergekit's `passthrough` for one model: the merged tensor is `scale·θ_1`, the \
fine-tune's own values (`Δ = scale·θ_1 − θ_b`). With `scale=1` and nothing else in the \
pipeline, the tensor is copied, bit for bit. A recipe with `passthrough` has one model; \
to take layers from several models (mergekit's frankenmerges), a recipe's `slices:` copy \
each run of layers from its input, with its own `scale` (docs/recipes.md).",
};

const PASS_SCALE: Param<NumberParam> = Param::number(&PASSTHROUGH, "scale");

impl Operator for Passthrough {
    fn spec(&self) -> &'static OpSpec {
        &PASSTHROUGH
    }

    fn copies_model(&self, args: &Args) -> bool {
        args.number(PASS_SCALE) == 1.0
    }

    fn bind(&self, args: &Args, _ctx: &BindCtx<'_>) -> Result<Box<dyn Kernel>, OpError> {
        Ok(Box::new(PassthroughKernel {
            scale: args.number(PASS_SCALE) as f32,
        }))
    }
}

struct PassthroughKernel {
    scale: f32,
}

impl Kernel for PassthroughKernel {
    fn apply(&self, chunk: &mut Chunk<'_>) -> Result<(), OpError> {
        let len = chunk.len;
        let s = self.scale;
        for ((o, &b), &d) in chunk
            .delta
            .iter_mut()
            .zip(chunk.base)
            .zip(&chunk.stack[..len])
        {
            *o = if s == 1.0 { d } else { s * (b + d) - b };
        }
        Ok(())
    }
}

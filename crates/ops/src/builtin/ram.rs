//! `ram` and `ramplus_tl`: Reinforced Agent Merging, as mergekit 0.1.5 defines them.
//!
//! An entry is *active* in a task vector when `|δ_ij| > ε`; `c_j` counts the models
//! active at element `j`. Entries only one model moved are kept whole; entries several
//! moved are averaged over those models.

use reefknot_lang::{Bound, DefaultValue, OpSpec, ParamKind, ParamSpec, Signature, Ty};

use crate::kernel::{Args, BindCtx, Chunk, Kernel, NumberParam, Operator, Param, Partial};
use crate::OpError;

const EPSILON_SPEC: ParamSpec = ParamSpec {
    name: "epsilon",
    kind: ParamKind::Number {
        min: Bound::Inclusive(0.0),
        max: Bound::Unbounded,
    },
    default: Some(DefaultValue::Number(1e-5)),
    doc: "an entry counts as changed when |δ| is above this",
};

/// `ram`.
pub struct Ram;

static RAM: OpSpec = OpSpec {
    name: "ram",
    aliases: &[],
    signatures: &[Signature::new(Ty::Stack, Ty::Delta)],
    params: &[EPSILON_SPEC],
    models: reefknot_lang::Models::ANY,
    weighted: false,
    summary: "keep entries one model changed, average those several changed",
    doc: "Reinforced Agent Merging, as mergekit's `ram`: with `a_ij = |δ_ij| > ε` and \
`c_j = Σ_i a_ij`, `Δ_j = Σ_i a_ij·δ_ij / max(c_j, 1)`: an entry changed by one model \
keeps that model's value, one changed by several gets their mean (unchanged models do \
not dilute it, unlike `mean`). Model weights are ignored.",
};

const RAM_EPSILON: Param<NumberParam> = Param::number(&RAM, "epsilon");

impl Operator for Ram {
    fn spec(&self) -> &'static OpSpec {
        &RAM
    }

    fn bind(&self, args: &Args, ctx: &BindCtx<'_>) -> Result<Box<dyn Kernel>, OpError> {
        Ok(Box::new(RamKernel {
            epsilon: args.number(RAM_EPSILON) as f32,
            unique: vec![1.0; ctx.models],
            plus: None,
        }))
    }
}

/// `ramplus_tl`.
pub struct RamPlus;

static RAMPLUS: OpSpec = OpSpec {
    name: "ramplus_tl",
    aliases: &[],
    signatures: &[Signature::new(Ty::Stack, Ty::Delta)],
    params: &[
        ParamSpec {
            name: "r",
            kind: ParamKind::any_number(),
            default: Some(DefaultValue::Number(0.1)),
            doc: "how strongly a model's unique entries are boosted",
        },
        ParamSpec {
            name: "alpha",
            kind: ParamKind::Number {
                min: Bound::Inclusive(0.0),
                max: Bound::Unbounded,
            },
            default: Some(DefaultValue::Number(0.2)),
            doc: "the cap on the shared-to-unique ratio",
        },
        EPSILON_SPEC,
    ],
    models: reefknot_lang::Models::ANY,
    weighted: false,
    summary: "ram, with each model's unique entries boosted by how much it shares",
    doc: "RAM+ (tensor-local), as mergekit's `ramplus_tl`: as `ram`, but model `i`'s unique \
entries (`c_j = 1`) are multiplied by `λ_i = 1 + r·clamp(ρ_i, 0, α)`, where \
`ρ_i = |{j : a_ij, c_j > 1}| / max(|{j : a_ij, c_j = 1}|, ε)` is, over the tensor, how \
many of the model's changed entries it shares with others per entry it changed alone \
(one counting pass). Model weights are ignored.",
};

const PLUS_R: Param<NumberParam> = Param::number(&RAMPLUS, "r");
const PLUS_ALPHA: Param<NumberParam> = Param::number(&RAMPLUS, "alpha");
const PLUS_EPSILON: Param<NumberParam> = Param::number(&RAMPLUS, "epsilon");

impl Operator for RamPlus {
    fn spec(&self) -> &'static OpSpec {
        &RAMPLUS
    }

    fn bind(&self, args: &Args, ctx: &BindCtx<'_>) -> Result<Box<dyn Kernel>, OpError> {
        Ok(Box::new(RamKernel {
            epsilon: args.number(PLUS_EPSILON) as f32,
            unique: vec![1.0; ctx.models],
            plus: Some(Plus {
                r: args.number(PLUS_R),
                alpha: args.number(PLUS_ALPHA),
                epsilon: args.number(PLUS_EPSILON),
                counted: false,
            }),
        }))
    }
}

struct Plus {
    r: f64,
    alpha: f64,
    epsilon: f64,
    counted: bool,
}

struct RamKernel {
    epsilon: f32,
    /// Per model, the factor of its unique entries (`λ_i`; 1 for `ram`).
    unique: Vec<f32>,
    plus: Option<Plus>,
}

/// Per model: (changed entries shared with another model, changed entries alone).
struct Counts(Vec<(u64, u64)>);

impl RamKernel {
    /// The number of models active at element `j` of `chunk`.
    #[inline]
    fn active(&self, chunk: &Chunk<'_>, j: usize) -> u32 {
        (0..chunk.models)
            .map(|i| u32::from(chunk.stack[i * chunk.len + j].abs() > self.epsilon))
            .sum()
    }
}

impl Kernel for RamKernel {
    fn wants_pass(&self, pass: usize) -> bool {
        pass == 0 && self.plus.as_ref().is_some_and(|p| !p.counted)
    }

    fn partial(&self, _pass: usize) -> Partial {
        Box::new(Counts(vec![(0, 0); self.unique.len()]))
    }

    fn observe(&self, _pass: usize, chunk: &Chunk<'_>, partial: &mut Partial) {
        let counts = partial.downcast_mut::<Counts>().expect("ram partial");
        for j in 0..chunk.len {
            let c = self.active(chunk, j);
            for (i, n) in counts.0.iter_mut().enumerate() {
                if chunk.stack[i * chunk.len + j].abs() > self.epsilon {
                    if c > 1 {
                        n.0 += 1;
                    } else {
                        n.1 += 1;
                    }
                }
            }
        }
    }

    fn combine(&self, _pass: usize, mut a: Partial, b: Partial) -> Partial {
        let counts = a.downcast_mut::<Counts>().expect("ram partial");
        for (x, y) in counts
            .0
            .iter_mut()
            .zip(b.downcast::<Counts>().expect("ram partial").0)
        {
            x.0 += y.0;
            x.1 += y.1;
        }
        a
    }

    fn conclude(&mut self, _pass: usize, total: Partial) -> Result<(), OpError> {
        let counts = total.downcast::<Counts>().expect("ram partial");
        let plus = self.plus.as_mut().expect("only ramplus_tl counts");
        for (factor, &(shared, unique)) in self.unique.iter_mut().zip(&counts.0) {
            let rho = shared as f64 / (unique as f64).max(plus.epsilon);
            *factor = (1.0 + plus.r * rho.clamp(0.0, plus.alpha)) as f32;
        }
        plus.counted = true;
        Ok(())
    }

    fn apply(&self, chunk: &mut Chunk<'_>) -> Result<(), OpError> {
        let len = chunk.len;
        for j in 0..len {
            let c = self.active(chunk, j);
            let mut sum = 0f32;
            for (i, &lambda) in self.unique.iter().enumerate() {
                let d = chunk.stack[i * len + j];
                if d.abs() > self.epsilon {
                    sum += if c == 1 { lambda * d } else { d / c as f32 };
                }
            }
            chunk.delta[j] = sum;
        }
        Ok(())
    }
}

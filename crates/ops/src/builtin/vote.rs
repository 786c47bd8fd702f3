//! The TIES vote: `elect` a sign per element, then average the entries that agree
//! with it (`disjoint`).
//!
//! Both work on the weighted task vectors `u_i = w_i·δ̃_i`, summed in model order in
//! `f32`, as mergekit does.

use reefknot_lang::{DefaultValue, OpSpec, ParamKind, ParamSpec, Signature, Ty};

use crate::kernel::{Args, BindCtx, Chunk, Kernel, Operator};
use crate::OpError;

/// The Fisher floor of `disjoint(fisher)`: `F' = F + FISHER_EPS`.
pub const FISHER_EPS: f32 = 1e-12;

/// `elect`.
pub struct Elect;

static ELECT: OpSpec = OpSpec {
    name: "elect",
    aliases: &[],
    signatures: &[Signature::new(Ty::Stack, Ty::Voted)],
    params: &[ParamSpec {
        name: "by",
        kind: ParamKind::Choice(&["mass", "count", "fisher"]),
        default: Some(DefaultValue::Choice("mass")),
        doc: "what decides the sign: the summed mass, the majority of models, or Fisher-weighted mass",
    }],
    summary: "elect a sign per element from the weighted task vectors",
    doc: "Elects one sign `γ_j` per element from the weighted task vectors `u_i = w_i·δ̃_i`:\n\n\
* `elect(mass)` (the default, TIES and mergekit's `consensus_method: sum`): `γ_j = +1` if \
`Σ_i u_ij ≥ 0`, else `−1`;\n\
* `elect(count)` (mergekit's `count`): `+1` if `Σ_i sign(u_ij) ≥ 0`, the majority of models;\n\
* `elect(fisher)`: `+1` if `Σ_i F_ij·u_ij ≥ 0`, each vote weighted by the model's diagonal \
Fisher information (recipe `fisher:`), so a model decides where it is confident.\n\n\
An exactly zero sum elects `+`.",
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum By {
    Mass,
    Count,
    Fisher,
}

impl Operator for Elect {
    fn spec(&self) -> &'static OpSpec {
        &ELECT
    }

    fn needs_fisher(&self, args: &Args) -> bool {
        args.choice("by") == "fisher"
    }

    fn bind(&self, args: &Args, _ctx: &BindCtx<'_>) -> Result<Box<dyn Kernel>, OpError> {
        let by = match args.choice("by") {
            "count" => By::Count,
            "fisher" => By::Fisher,
            _ => By::Mass,
        };
        Ok(Box::new(ElectKernel { by }))
    }
}

struct ElectKernel {
    by: By,
}

impl Kernel for ElectKernel {
    fn apply(&self, chunk: &mut Chunk<'_>) -> Result<(), OpError> {
        let len = chunk.len;
        // The score accumulates in the sign buffer, which is this stage's output.
        let score = &mut *chunk.sign;
        score.fill(0.0);
        for i in 0..chunk.models {
            let w = chunk.weights[i];
            let d = &chunk.stack[i * len..(i + 1) * len];
            match self.by {
                By::Mass => score.iter_mut().zip(d).for_each(|(s, &x)| *s += w * x),
                By::Count => score
                    .iter_mut()
                    .zip(d)
                    .for_each(|(s, &x)| *s += sign(w * x)),
                By::Fisher => {
                    let f = &chunk
                        .fisher
                        .expect("elect(fisher) is bound with Fisher data")
                        [i * len..(i + 1) * len];
                    score
                        .iter_mut()
                        .zip(d)
                        .zip(f)
                        .for_each(|((s, &x), &fi)| *s += fi * (w * x));
                }
            }
        }
        for g in score.iter_mut() {
            *g = if *g >= 0.0 { 1.0 } else { -1.0 };
        }
        Ok(())
    }
}

/// `torch.sign`: -1, 0 or +1 (NaN counts as 0: it has no sign to vote with). Written
/// without branches so that the vote vectorises.
#[inline]
fn sign(x: f32) -> f32 {
    f32::from(u8::from(x > 0.0)) - f32::from(u8::from(x < 0.0))
}

/// `disjoint`.
pub struct Disjoint;

static DISJOINT: OpSpec = OpSpec {
    name: "disjoint",
    aliases: &[],
    signatures: &[Signature::new(Ty::Voted, Ty::Delta)],
    params: &[ParamSpec {
        name: "by",
        kind: ParamKind::Choice(&["mean", "sum", "fisher"]),
        default: Some(DefaultValue::Choice("mean")),
        doc: "how agreeing entries combine: weighted mean, sum, or Fisher-weighted mean",
    }],
    summary: "combine only the entries whose sign agrees with the elected one",
    doc: "Combines, per element, only the entries that agree with the elected sign: \
`A_j = {i : u_ij ≠ 0 and sign(u_ij) = γ_j}`.\n\n\
* `disjoint(mean)` (the default; mergekit TIES with `normalize: true`): \
`Δ_j = Σ_{A_j} u_ij / Σ_{A_j} w_i` (a zero divisor becomes 1);\n\
* `disjoint(sum)` (mergekit with `normalize: false`): `Δ_j = Σ_{A_j} u_ij`;\n\
* `disjoint(fisher)`: `Δ_j = Σ_{A_j} F'_ij·u_ij / Σ_{A_j} F'_ij·w_i` with `F' = F + 1e-12`, \
the Fisher-weighted mean of the agreeing entries; with a constant Fisher it equals `disjoint`.",
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Combine {
    Mean,
    Sum,
    Fisher,
}

impl Operator for Disjoint {
    fn spec(&self) -> &'static OpSpec {
        &DISJOINT
    }

    fn needs_fisher(&self, args: &Args) -> bool {
        args.choice("by") == "fisher"
    }

    fn bind(&self, args: &Args, _ctx: &BindCtx<'_>) -> Result<Box<dyn Kernel>, OpError> {
        let by = match args.choice("by") {
            "sum" => Combine::Sum,
            "fisher" => Combine::Fisher,
            _ => Combine::Mean,
        };
        Ok(Box::new(DisjointKernel { by }))
    }
}

struct DisjointKernel {
    by: Combine,
}

impl Kernel for DisjointKernel {
    fn apply(&self, chunk: &mut Chunk<'_>) -> Result<(), OpError> {
        let len = chunk.len;
        // The numerator accumulates in the delta (this stage's output), the divisor in
        // the scratch buffer.
        let num = &mut *chunk.delta;
        let den = &mut *chunk.scratch;
        num.fill(0.0);
        den.fill(0.0);
        let signs = &*chunk.sign;
        for i in 0..chunk.models {
            let w = chunk.weights[i];
            let d = &chunk.stack[i * len..(i + 1) * len];
            // Branch-free updates (a select, not a conditional store) so the loops
            // vectorise; adding +0.0 leaves a sum unchanged.
            match self.by {
                Combine::Mean | Combine::Sum => {
                    for (((n, dn), &x), &g) in num.iter_mut().zip(den.iter_mut()).zip(d).zip(signs)
                    {
                        let u = w * x;
                        let agree = u * g > 0.0;
                        *n += if agree { u } else { 0.0 };
                        *dn += if agree { w } else { 0.0 };
                    }
                }
                Combine::Fisher => {
                    let f = &chunk
                        .fisher
                        .expect("disjoint(fisher) is bound with Fisher data")
                        [i * len..(i + 1) * len];
                    for ((((n, dn), &x), &g), &fi) in
                        num.iter_mut().zip(den.iter_mut()).zip(d).zip(signs).zip(f)
                    {
                        let u = w * x;
                        let agree = u * g > 0.0;
                        let fp = fi + FISHER_EPS;
                        *n += if agree { fp * u } else { 0.0 };
                        *dn += if agree { fp * w } else { 0.0 };
                    }
                }
            }
        }
        if self.by != Combine::Sum {
            for (n, d) in num.iter_mut().zip(den.iter()) {
                *n /= if *d == 0.0 { 1.0 } else { *d };
            }
        }
        Ok(())
    }
}

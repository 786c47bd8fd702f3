//! The TIES vote: `elect` a sign per element, then average the entries that agree
//! with it (`disjoint`).
//!
//! Both work on the weighted task vectors `u_i = w_i·δ̃_i`, summed in model order in
//! `f32`, as mergekit does.

use reefknot_lang::{DefaultValue, OpSpec, ParamKind, ParamSpec, Signature, Ty};

use super::tiles::Tiles;
use crate::kernel::{Args, BindCtx, ChoiceParam, Chunk, Kernel, Operator, Param};
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
    models: reefknot_lang::Models::ANY,
    weighted: true,
    summary: "elect a sign per element from the weighted task vectors",
    doc: "Elects one sign `γ_j` per element from the weighted task vectors `u_i = w_i·δ̃_i`:\n\n\
* `elect(mass)` (the default, TIES and mergekit's `consensus_method: sum`): `γ_j = +1` if \
`Σ_i u_ij ≥ 0`, else `−1`;\n\
* `elect(count)` (mergekit's `count`): `+1` if `Σ_i sign(u_ij) ≥ 0`, the majority of models;\n\
* `elect(fisher)`: `+1` if `Σ_i F_ij·u_ij ≥ 0`, each vote weighted by the model's diagonal \
Fisher information (recipe `fisher:`), so a model decides where it is confident.\n\n\
An exactly zero sum elects `+`.",
};

const ELECT_BY: Param<ChoiceParam> = Param::choice(&ELECT, "by");

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
        args.choice(ELECT_BY) == "fisher"
    }

    fn bind(&self, args: &Args, _ctx: &BindCtx<'_>) -> Result<Box<dyn Kernel>, OpError> {
        let by = match args.choice(ELECT_BY) {
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
        let tiles = Tiles::new(chunk.stack, &chunk.weights[..chunk.models], chunk.len);
        let out = &mut *chunk.sign;
        match self.by {
            By::Count => tiles.fold(out, None, |w, x, _| sign(w * x), elected),
            By::Fisher => tiles.fold(
                out,
                Some(
                    chunk
                        .fisher
                        .expect("elect(fisher) is bound with Fisher data"),
                ),
                |w, x, fi| fi * (w * x),
                elected,
            ),
            By::Mass => tiles.fold(out, None, |w, x, _| w * x, elected),
        }
        Ok(())
    }
}

/// The sign elected by a score: `+1` when it is `≥ 0` (an exactly zero sum elects `+`).
#[inline(always)]
fn elected(score: f32) -> f32 {
    if score >= 0.0 {
        1.0
    } else {
        -1.0
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
    models: reefknot_lang::Models::ANY,
    weighted: true,
    summary: "combine only the entries whose sign agrees with the elected one",
    doc: "Combines, per element, only the entries that agree with the elected sign: \
`A_j = {i : u_ij ≠ 0 and sign(u_ij) = γ_j}`.\n\n\
* `disjoint(mean)` (the default; mergekit TIES with `normalize: true`): \
`Δ_j = Σ_{A_j} u_ij / Σ_{A_j} w_i` (a zero divisor becomes 1);\n\
* `disjoint(sum)` (mergekit with `normalize: false`): `Δ_j = Σ_{A_j} u_ij`;\n\
* `disjoint(fisher)`: `Δ_j = Σ_{A_j} F'_ij·u_ij / Σ_{A_j} F'_ij·w_i` with `F' = F + 1e-12`, \
the Fisher-weighted mean of the agreeing entries; with a constant Fisher it equals `disjoint`.",
};

const DISJOINT_BY: Param<ChoiceParam> = Param::choice(&DISJOINT, "by");

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
        args.choice(DISJOINT_BY) == "fisher"
    }

    fn bind(&self, args: &Args, _ctx: &BindCtx<'_>) -> Result<Box<dyn Kernel>, OpError> {
        let by = match args.choice(DISJOINT_BY) {
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
        let tiles = Tiles::new(chunk.stack, &chunk.weights[..chunk.models], chunk.len);
        let (out, signs) = (&mut *chunk.delta, &*chunk.sign);
        // Branch-free shares (a select, not a conditional store) so the loops
        // vectorise; adding +0.0 leaves a sum unchanged.
        match self.by {
            Combine::Mean | Combine::Sum => {
                tiles.disjoint(out, signs, None, self.by == Combine::Mean, |w, x, g, _| {
                    let u = w * x;
                    let agree = u * g > 0.0;
                    (if agree { u } else { 0.0 }, if agree { w } else { 0.0 })
                })
            }
            Combine::Fisher => {
                let f = chunk
                    .fisher
                    .expect("disjoint(fisher) is bound with Fisher data");
                tiles.disjoint(out, signs, Some(f), true, |w, x, g, fi| {
                    let u = w * x;
                    let agree = u * g > 0.0;
                    let fp = fi + FISHER_EPS;
                    (
                        if agree { fp * u } else { 0.0 },
                        if agree { fp * w } else { 0.0 },
                    )
                })
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tiles::tests::bits;
    use super::*;
    use proptest::prelude::*;

    /// The vote as one pass over the whole chunk per model: the definition the tiled
    /// kernels must reproduce bit for bit.
    fn reference(
        by: &str,
        combine: &str,
        stack: &[f32],
        fisher: &[f32],
        weights: &[f32],
    ) -> (Vec<f32>, Vec<f32>) {
        let len = stack.len() / weights.len();
        let mut score = vec![0f32; len];
        for (i, &w) in weights.iter().enumerate() {
            for j in 0..len {
                let (x, f) = (stack[i * len + j], fisher[i * len + j]);
                score[j] += match by {
                    "count" => sign(w * x),
                    "fisher" => f * (w * x),
                    _ => w * x,
                };
            }
        }
        let signs: Vec<f32> = score
            .iter()
            .map(|&s| if s >= 0.0 { 1.0 } else { -1.0 })
            .collect();
        let (mut num, mut den) = (vec![0f32; len], vec![0f32; len]);
        for (i, &w) in weights.iter().enumerate() {
            for j in 0..len {
                let (x, f) = (stack[i * len + j], fisher[i * len + j]);
                let u = w * x;
                if u * signs[j] > 0.0 {
                    let fp = if combine == "fisher" {
                        f + FISHER_EPS
                    } else {
                        1.0
                    };
                    num[j] += if combine == "fisher" { fp * u } else { u };
                    den[j] += if combine == "fisher" { fp * w } else { w };
                }
            }
        }
        if combine != "sum" {
            for (n, d) in num.iter_mut().zip(&den) {
                *n /= if *d == 0.0 { 1.0 } else { *d };
            }
        }
        (signs, num)
    }

    fn run(
        by: &'static str,
        combine: &'static str,
        stack: &[f32],
        fisher: &[f32],
        weights: &[f32],
    ) -> (Vec<f32>, Vec<f32>) {
        let models = weights.len();
        let len = stack.len() / models;
        let (mut stack, mut sign, mut delta, mut scratch) = (
            stack.to_vec(),
            vec![f32::NAN; len],
            vec![f32::NAN; len],
            vec![f32::NAN; len],
        );
        let base = vec![0f32; len];
        let mut chunk = Chunk {
            index: 0,
            offset: 0,
            len,
            models,
            base: &base,
            stack: &mut stack,
            sign: &mut sign,
            delta: &mut delta,
            scratch: &mut scratch,
            fisher: Some(fisher),
            weights,
        };
        let elect = ElectKernel {
            by: match by {
                "count" => By::Count,
                "fisher" => By::Fisher,
                _ => By::Mass,
            },
        };
        let disjoint = DisjointKernel {
            by: match combine {
                "sum" => Combine::Sum,
                "fisher" => Combine::Fisher,
                _ => Combine::Mean,
            },
        };
        elect.apply(&mut chunk).unwrap();
        disjoint.apply(&mut chunk).unwrap();
        (sign, delta)
    }

    /// Values with exact zeros, signed zeros, cancelling pairs and repeats, which the
    /// vote treats specially.
    fn value() -> impl Strategy<Value = f32> {
        prop_oneof![
            4 => -1.0f32..1.0,
            1 => Just(0.0f32),
            1 => Just(-0.0f32),
            1 => Just(0.25f32),
            1 => Just(-0.25f32),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Tiling changes the order of the loops, never the order of any sum: the
        /// results are bitwise those of the untiled definition, at every length
        /// (whole tiles and a remainder) and for every variant.
        #[test]
        fn tiles_give_the_untiled_bits(
            models in 1usize..5,
            len in 1usize..200,
            seed in prop::collection::vec(value(), 1000),
            weights in prop::collection::vec(prop_oneof![Just(1.0f32), -0.5f32..2.0], 5),
        ) {
            let stack: Vec<f32> = (0..models * len).map(|k| seed[k % seed.len()]).collect();
            let fisher: Vec<f32> = (0..models * len)
                .map(|k| seed[(k * 7 + 3) % seed.len()].abs())
                .collect();
            let weights = &weights[..models];
            for by in ["mass", "count", "fisher"] {
                for combine in ["mean", "sum", "fisher"] {
                    let (signs, delta) = run(by, combine, &stack, &fisher, weights);
                    let (want_signs, want_delta) = reference(by, combine, &stack, &fisher, weights);
                    prop_assert_eq!(bits(&signs), bits(&want_signs), "{} {}", by, combine);
                    prop_assert_eq!(bits(&delta), bits(&want_delta), "{} {}", by, combine);
                }
            }
        }
    }
}

//! `tall::consensus`: TALL-mask consensus (Wang et al. 2024, "Localizing Task
//! Information for Improved Model Merging and Compression", ICML) as a reefknot plugin.
//!
//! The paper builds, for each task `i`, a mask of the parameters that matter to it,
//! `m_i = |δ_i| ≥ λ_i·|Δ_TA − δ_i|` where `Δ_TA = Σ_j δ_j` is the task-arithmetic sum:
//! an entry matters to task `i` when task `i`'s own change outweighs (by `λ_i`) what
//! the other tasks add there. Consensus merging keeps only the entries that at least
//! `k` tasks' masks select, removing "selfish" weights (important to one task only)
//! and "catastrophic" ones (important to none).
//!
//! `consensus(k, lambda)` is `Stack→Stack`: it zeroes, in every task vector, the
//! entries outside the consensus mask, so it composes with any combiner:
//! `tall::consensus(k=2, lambda=0.6) |> sum |> scale(0.4)` is the paper's consensus
//! task arithmetic, `tall::consensus |> elect |> disjoint` consensus TIES.

use reefknot_plugin_api::{export_plugin, Input, Operator, Output, Param, Signature};

/// TALL-mask consensus.
pub struct Consensus;

impl Operator for Consensus {
    const NAME: &'static str = "consensus";
    const SUMMARY: &'static str =
        "TALL-mask consensus: zero the entries fewer than k tasks' masks select";
    const DOC: &'static str = "TALL-mask consensus (Wang et al. 2024). For element `j`, \
with the task vectors `δ_i` as they reach this stage (unweighted), \
`Δ_TA = Σ_i δ_i` (summed in f32 in model order) and task `i`'s mask \
`m_ij = |δ_ij| ≥ λ_i·|Δ_TA,j − δ_ij|` (in f32, `λ_i` rounded to f32). The element is \
kept in every task vector when `Σ_i m_ij ≥ k`, and zeroed in all of them otherwise.\n\n\
`lambda` may be per model (`lambda = $lambda` with a value in each model's `params`), \
as the paper tunes `λ_t` per task; `k = 0` keeps everything, `k > T` nothing. \
Follow it with a combiner: `tall::consensus(k=2, lambda=0.6) |> sum` is consensus task \
arithmetic.";
    const SIGNATURES: &'static [Signature] = &[Signature::StackToStack];
    const PARAMS: &'static [Param] = &[
        Param::number("k", "how many tasks' masks must select an entry to keep it")
            .default(2.0)
            .min(0.0),
        Param::number(
            "lambda",
            "the mask threshold λ: larger keeps fewer entries per task",
        )
        .default(0.6)
        .min(0.0),
    ];

    fn call(input: &Input<'_>, output: &mut Output<'_>) -> Result<(), String> {
        let t = input.models();
        let k = input.number("k");
        let lambda: Vec<f32> = (0..t)
            .map(|i| input.number_for("lambda", i) as f32)
            .collect();
        let deltas: Vec<&[f32]> = (0..t).map(|i| input.model(i)).collect();
        let keep: Vec<bool> = (0..input.len())
            .map(|j| {
                let total = deltas.iter().fold(0f32, |acc, d| acc + d[j]);
                let votes = (0..t)
                    .filter(|&i| deltas[i][j].abs() >= lambda[i] * (total - deltas[i][j]).abs())
                    .count();
                votes as f64 >= k
            })
            .collect();
        for (i, delta) in deltas.iter().enumerate() {
            for ((o, &d), &kept) in output.model_mut(i).iter_mut().zip(*delta).zip(&keep) {
                *o = if kept { d } else { 0.0 };
            }
        }
        Ok(())
    }
}

export_plugin! {
    name: "tall",
    version: env!("CARGO_PKG_VERSION"),
    description: "TALL-mask consensus merging (Wang et al. 2024)",
    operators: [Consensus],
}

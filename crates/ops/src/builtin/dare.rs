//! `dare(p, rescale)`: drop entries at random and rescale the survivors (Yu et al. 2023).

use reefknot_lang::{Bound, DefaultValue, OpSpec, ParamKind, ParamSpec, Signature, Ty};

use crate::kernel::{Args, BindCtx, Chunk, Kernel, Operator, Partial};
use crate::rng::{threshold, Stream, DELTA_STREAM};
use crate::{OpError, OrderFreeSum, BLOCK};

/// `dare`.
pub struct Dare;

static SPEC: OpSpec = OpSpec {
    name: "dare",
    aliases: &[],
    signatures: &[
        Signature::new(Ty::Stack, Ty::Stack),
        Signature::new(Ty::Delta, Ty::Delta),
    ],
    params: &[
        ParamSpec {
            name: "p",
            kind: ParamKind::Number {
                min: Bound::Inclusive(0.0),
                max: Bound::Exclusive(1.0),
            },
            default: Some(DefaultValue::Number(0.9)),
            doc: "probability of dropping each entry",
        },
        ParamSpec {
            name: "rescale",
            kind: ParamKind::Choice(&["inverse", "l1", "none"]),
            default: Some(DefaultValue::Choice("inverse")),
            doc: "how survivors are rescaled: by 1/(1-p), to restore the L1 norm, or not",
        },
    ],
    summary: "drop each entry with probability p and rescale the survivors",
    doc: "Drops each entry independently with probability `p` (`0 ≤ p < 1`) and rescales the \
survivors: by `1/(1-p)` with `rescale=inverse` (the DARE paper), by `‖δ‖₁/‖kept‖₁` with \
`rescale=l1` (mergekit's choice; skipped where either norm is below 1e-7), or not at all \
with `rescale=none`. `p = 0` is the identity.\n\n\
The draws are deterministic: element `j` of vector `i` of tensor `name` is dropped when its \
counter-based 32-bit draw `r(seed, name, i, j) < ⌊p·2³²⌋` (see the language reference), so \
the same recipe gives the same bytes on any machine, thread count or chunk size. `p` may \
differ per model.",
};

impl Operator for Dare {
    fn spec(&self) -> &'static OpSpec {
        &SPEC
    }

    fn bind(&self, args: &Args, ctx: &BindCtx<'_>) -> Result<Box<dyn Kernel>, OpError> {
        let on_delta = ctx.input() == Ty::Delta;
        let ps = if on_delta {
            vec![args.number("p")]
        } else {
            args.per_model("p", ctx.models)
        };
        let rescale = match args.choice("rescale") {
            "inverse" => Rescale::Inverse,
            "l1" => Rescale::L1,
            _ => Rescale::None,
        };
        let lanes = ps
            .iter()
            .enumerate()
            .map(|(i, &p)| DareLane {
                cut: u32::try_from(threshold(p)).unwrap_or(u32::MAX),
                stream: Stream::new(
                    ctx.seed,
                    ctx.tensor,
                    if on_delta { DELTA_STREAM } else { i as u64 },
                ),
                factor: match rescale {
                    Rescale::Inverse => (1.0 / (1.0 - p)) as f32,
                    _ => 1.0,
                },
            })
            .collect();
        Ok(Box::new(DareKernel {
            on_delta,
            rescale,
            lanes,
        }))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rescale {
    Inverse,
    L1,
    None,
}

struct DareLane {
    /// Drop when the draw is below this (`⌊p·2³²⌋`, which fits: `p < 1`).
    cut: u32,
    stream: Stream,
    factor: f32,
}

/// Draws are made for this many elements at a time.
const DRAWS: usize = 64;

impl DareLane {
    fn active(&self) -> bool {
        self.cut > 0
    }

    /// `(Σ|x|, Σ|kept x|)` over `block` (at most [`BLOCK`] elements), whose first element
    /// is element `start` of the tensor. Eight interleaved `f32` partial sums (of at most
    /// 512 values each), added in a fixed order at the end, keep the result independent
    /// of chunking while letting the loop vectorise.
    fn l1_sums(&self, start: usize, block: &[f32]) -> (f64, f64) {
        const LANES: usize = 8;
        let mut all = [0f32; LANES];
        let mut kept = [0f32; LANES];
        let mut draws = [0u32; DRAWS];
        let mut runs = block.chunks_exact(DRAWS);
        let mut at = start;
        for run in &mut runs {
            let run: &[f32; DRAWS] = run.try_into().expect("exact run");
            self.stream.fill(at as u64, &mut draws);
            // Magnitudes and kept magnitudes of the run, then eight-lane partial sums:
            // simple loops over fixed arrays, which vectorise.
            let mut abs = [0f32; DRAWS];
            let mut kept_abs = [0f32; DRAWS];
            for k in 0..DRAWS {
                abs[k] = run[k].abs();
                kept_abs[k] = if draws[k] >= self.cut { abs[k] } else { 0.0 };
            }
            for g in 0..DRAWS / LANES {
                for l in 0..LANES {
                    all[l] += abs[g * LANES + l];
                    kept[l] += kept_abs[g * LANES + l];
                }
            }
            at += DRAWS;
        }
        let rest = runs.remainder();
        let draws = &mut draws[..rest.len()];
        self.stream.fill(at as u64, draws);
        for (k, (&x, &d)) in rest.iter().zip(draws.iter()).enumerate() {
            let a = x.abs();
            all[k % LANES] += a;
            kept[k % LANES] += if d >= self.cut { a } else { 0.0 };
        }
        let total = |v: [f32; LANES]| v.iter().map(|&x| f64::from(x)).sum::<f64>();
        (total(all), total(kept))
    }
}

struct DareKernel {
    on_delta: bool,
    rescale: Rescale,
    lanes: Vec<DareLane>,
}

/// Per lane: (Σ|x|, Σ|kept x|), each block's sum added order-free.
type NormParts = Vec<(OrderFreeSum, OrderFreeSum)>;

impl Kernel for DareKernel {
    fn wants_pass(&self, pass: usize) -> bool {
        pass == 0 && self.rescale == Rescale::L1 && self.lanes.iter().any(DareLane::active)
    }

    fn partial(&self, _pass: usize) -> Partial {
        let parts: NormParts = vec![Default::default(); self.lanes.len()];
        Box::new(parts)
    }

    fn observe(&self, _pass: usize, chunk: &Chunk<'_>, partial: &mut Partial) {
        let parts = partial.downcast_mut::<NormParts>().expect("norm partial");
        for (l, lane) in self.lanes.iter().enumerate() {
            if !lane.active() {
                continue;
            }
            let values = if self.on_delta {
                &*chunk.delta
            } else {
                chunk.model(l)
            };
            // Each block of BLOCK elements is summed in a fixed order, and block sums
            // are added order-free, so the norms do not depend on the chunking or on
            // which worker saw which chunk.
            for (b, block) in values.chunks(BLOCK).enumerate() {
                let (all, kept) = lane.l1_sums(chunk.offset + b * BLOCK, block);
                parts[l].0.add(all);
                parts[l].1.add(kept);
            }
        }
    }

    fn combine(&self, _pass: usize, mut a: Partial, b: Partial) -> Partial {
        let av = a.downcast_mut::<NormParts>().expect("norm partial");
        for (x, y) in av
            .iter_mut()
            .zip(*b.downcast::<NormParts>().expect("norm partial"))
        {
            x.0.merge(y.0);
            x.1.merge(y.1);
        }
        a
    }

    fn conclude(&mut self, _pass: usize, total: Partial) -> Result<(), OpError> {
        let parts = *total.downcast::<NormParts>().expect("norm partial");
        for (lane, (all, kept)) in self.lanes.iter_mut().zip(parts) {
            let (all, kept) = (all.value(), kept.value());
            const EPS: f64 = 1e-7;
            lane.factor = if all < EPS || kept < EPS {
                1.0
            } else {
                (all / kept) as f32
            };
        }
        Ok(())
    }

    fn apply(&self, chunk: &mut Chunk<'_>) -> Result<(), OpError> {
        let offset = chunk.offset;
        for (l, lane) in self.lanes.iter().enumerate() {
            if !lane.active() {
                continue;
            }
            let values = if self.on_delta {
                &mut *chunk.delta
            } else {
                chunk.model_mut(l)
            };
            let mut draws = [0u32; DRAWS];
            for (r, run) in values.chunks_mut(DRAWS).enumerate() {
                let draws = &mut draws[..run.len()];
                lane.stream.fill((offset + r * DRAWS) as u64, draws);
                for (x, &d) in run.iter_mut().zip(draws.iter()) {
                    *x = if d >= lane.cut { *x * lane.factor } else { 0.0 };
                }
            }
        }
        Ok(())
    }
}

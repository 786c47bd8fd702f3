//! `della(k, eps)`: DELLA's magnitude-ranked random drop (Deep et al. 2024), as
//! mergekit's `della_magprune`.
//!
//! Within each row, entries are ranked by magnitude; an entry of normalised rank
//! `r̂ ∈ [0, 1]` (0 the smallest) is kept with probability `p = (k − ε) + 2ε·r̂`, so large
//! entries survive more often, and the survivors are rescaled to restore the vector's
//! L1 norm. The engine hands the kernel whole rows ([`Operator::whole_rows`]); a row is
//! ranked by sorting `(magnitude bits, position)` keys, once in the norms pass and once
//! when applying (no copy of the tensor is kept).

use reefknot_lang::{Bound, DefaultValue, OpSpec, ParamKind, ParamSpec, Signature, Ty};

use super::geometry::rows_fit;
use crate::kernel::{
    Args, BindCtx, ChoiceParam, Chunk, Kernel, NumberParam, Operator, Param, Partial,
};
use crate::rng::Stream;
use crate::{OpError, OrderFreeSum, BLOCK};

/// `della`.
pub struct Della;

static SPEC: OpSpec = OpSpec {
    name: "della",
    aliases: &[],
    signatures: &[Signature::new(Ty::Stack, Ty::Stack)],
    params: &[
        ParamSpec {
            name: "k",
            kind: ParamKind::Number {
                min: Bound::Inclusive(0.0),
                max: Bound::Unbounded,
            },
            default: None,
            doc: "mean fraction of entries to keep (density); 1 or more keeps all, 0 none",
        },
        ParamSpec {
            name: "eps",
            kind: ParamKind::Number {
                min: Bound::Inclusive(0.0),
                max: Bound::Exclusive(0.5),
            },
            default: Some(DefaultValue::Number(0.15)),
            doc:
                "half-width of the keep probabilities: from k − eps (smallest) to k + eps (largest)",
        },
        ParamSpec {
            name: "rescale",
            kind: ParamKind::Choice(&["l1", "none"]),
            default: Some(DefaultValue::Choice("l1")),
            doc: "`l1` scales the survivors to restore the vector's L1 norm (mergekit's `rescale`)",
        },
    ],
    models: reefknot_lang::Models::ANY,
    summary: "drop entries at random, keeping large ones more often (DELLA, per row)",
    doc: "DELLA's MagPrune (Deep et al. 2024), as mergekit's `della_magprune` (`della`, \
`della_linear`): in each row (the last dimension; a vector is one row) of each task \
vector, the entries are ranked by magnitude, smallest first, and the entry of rank \
`q ∈ {0, …, r−1}` of a row of `r` is kept with probability `p = (k − ε) + 2ε·q/(r−1)` \
(`p = k` in a row of one); `rescale=l1` then multiplies the survivors by `‖δ‖₁/‖kept‖₁` \
over the whole tensor (skipped where either norm is below 1e-7), as mergekit does — not \
the paper's `1/p`. `k ≥ 1` keeps everything and `k = 0` nothing; otherwise \
`0 < k − ε` and `k + ε < 1` are required, as mergekit requires. Equal magnitudes are \
ranked by position.\n\n\
The draws are counter-based, as `dare`'s, on stream `2³² + i` for model `i`: entry `j` \
is kept when its 32-bit draw is below `p·2³²`, so a merge gives the same bytes on any \
machine, thread count or chunk size. `k` and `eps` may differ per model.",
};

const K: Param<NumberParam> = Param::number(&SPEC, "k");
const EPS: Param<NumberParam> = Param::number(&SPEC, "eps");
const RESCALE: Param<ChoiceParam> = Param::choice(&SPEC, "rescale");

/// `della` draws for model `i` on stream `STREAM_BASE + i`, apart from `dare`'s.
const STREAM_BASE: u64 = 1 << 32;

impl Operator for Della {
    fn spec(&self) -> &'static OpSpec {
        &SPEC
    }

    fn whole_rows(&self, _args: &Args) -> bool {
        true
    }

    fn check(&self, args: &Args, ctx: &BindCtx<'_>) -> Result<(), OpError> {
        let ks = args.per_model(K, ctx.models);
        let eps = args.per_model(EPS, ctx.models);
        for (i, (&k, &e)) in ks.iter().zip(&eps).enumerate() {
            if k > 0.0 && k < 1.0 && (k - e <= 0.0 || k + e >= 1.0) {
                return Err(OpError::InvalidArguments {
                    op: "della".into(),
                    message: format!(
                        "k ± eps must lie strictly between 0 and 1, but model {} has k = {k} \
                         and eps = {e} (keep probabilities {} to {})",
                        i + 1,
                        k - e,
                        k + e
                    ),
                });
            }
        }
        rows_fit("della", ctx)
    }

    fn bind(&self, args: &Args, ctx: &BindCtx<'_>) -> Result<Box<dyn Kernel>, OpError> {
        let ks = args.per_model(K, ctx.models);
        let eps = args.per_model(EPS, ctx.models);
        let lanes = ks
            .iter()
            .zip(&eps)
            .enumerate()
            .map(|(i, (&k, &e))| Lane {
                action: if k >= 1.0 {
                    Action::Keep
                } else if k <= 0.0 {
                    Action::Zero
                } else {
                    Action::Draw {
                        low: k - e,
                        span: 2.0 * e,
                    }
                },
                stream: Stream::new(ctx.seed, ctx.tensor, STREAM_BASE + i as u64),
                factor: 1.0,
            })
            .collect();
        Ok(Box::new(DellaKernel {
            row: ctx.row_len().max(1),
            lanes,
            rescale: args.choice(RESCALE) == "l1",
            concluded: false,
        }))
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Action {
    Keep,
    Zero,
    /// Keep probability `low + span·r̂`.
    Draw {
        low: f64,
        span: f64,
    },
}

struct Lane {
    action: Action,
    stream: Stream,
    /// The L1 rescale factor, once the norms pass has run (1 until then).
    factor: f32,
}

impl Lane {
    /// Zeroes the dropped entries of `values`, whole rows of `row` elements whose first
    /// element is element `offset` of the tensor; `keys` is scratch for the ranking.
    fn drop_entries(&self, row: usize, offset: usize, values: &mut [f32], keys: &mut Vec<u64>) {
        let (low, span) = match self.action {
            Action::Keep => return,
            Action::Zero => return values.fill(0.0),
            Action::Draw { low, span } => (low, span),
        };
        for (r, run) in values.chunks_mut(row).enumerate() {
            let start = offset + r * row;
            keys.clear();
            keys.extend(
                run.iter()
                    .enumerate()
                    .map(|(q, x)| (u64::from(x.to_bits() & 0x7fff_ffff) << 32) | q as u64),
            );
            keys.sort_unstable();
            let last = (run.len() - 1) as f64;
            for (rank, &key) in keys.iter().enumerate() {
                let q = (key & 0xffff_ffff) as usize;
                let normalised = if last > 0.0 { rank as f64 / last } else { 0.5 };
                let p = low + span * normalised;
                let draw = f64::from(self.stream.draw((start + q) as u64));
                if draw >= p * 4_294_967_296.0 {
                    run[q] = 0.0;
                }
            }
        }
    }
}

struct DellaKernel {
    row: usize,
    lanes: Vec<Lane>,
    rescale: bool,
    concluded: bool,
}

/// Per model, `(Σ|δ|, Σ|kept|)`, block by block.
struct Norms(Vec<(OrderFreeSum, OrderFreeSum)>);

impl Kernel for DellaKernel {
    fn wants_pass(&self, pass: usize) -> bool {
        pass == 0
            && self.rescale
            && !self.concluded
            && self
                .lanes
                .iter()
                .any(|l| matches!(l.action, Action::Draw { .. }))
    }

    fn partial(&self, _pass: usize) -> Partial {
        Box::new(Norms(vec![Default::default(); self.lanes.len()]))
    }

    fn observe(&self, _pass: usize, chunk: &Chunk<'_>, partial: &mut Partial) {
        let norms = partial.downcast_mut::<Norms>().expect("della partial");
        let mut kept = vec![0f32; chunk.len];
        let mut keys = Vec::with_capacity(self.row);
        for (i, lane) in self.lanes.iter().enumerate() {
            let values = chunk.model(i);
            kept.copy_from_slice(values);
            lane.drop_entries(self.row, chunk.offset, &mut kept, &mut keys);
            let l1 = |x: &[f32]| x.iter().map(|&a| f64::from(a.abs())).sum::<f64>();
            for (all, cut) in values.chunks(BLOCK).zip(kept.chunks(BLOCK)) {
                norms.0[i].0.add(l1(all));
                norms.0[i].1.add(l1(cut));
            }
        }
    }

    fn combine(&self, _pass: usize, mut a: Partial, b: Partial) -> Partial {
        let norms = a.downcast_mut::<Norms>().expect("della partial");
        for (x, y) in norms
            .0
            .iter_mut()
            .zip(b.downcast::<Norms>().expect("della partial").0)
        {
            x.0.merge(y.0);
            x.1.merge(y.1);
        }
        a
    }

    fn conclude(&mut self, _pass: usize, total: Partial) -> Result<(), OpError> {
        let norms = total.downcast::<Norms>().expect("della partial");
        for (lane, (all, kept)) in self.lanes.iter_mut().zip(norms.0) {
            let (all, kept) = (all.value(), kept.value());
            const NORM_EPS: f64 = 1e-7;
            if matches!(lane.action, Action::Draw { .. }) && all >= NORM_EPS && kept >= NORM_EPS {
                lane.factor = (all / kept) as f32;
            }
        }
        self.concluded = true;
        Ok(())
    }

    fn apply(&self, chunk: &mut Chunk<'_>) -> Result<(), OpError> {
        let mut keys = Vec::with_capacity(self.row);
        let (offset, len) = (chunk.offset, chunk.len);
        for (i, lane) in self.lanes.iter().enumerate() {
            let values = &mut chunk.stack[i * len..(i + 1) * len];
            lane.drop_entries(self.row, offset, values, &mut keys);
            if lane.factor != 1.0 {
                values.iter_mut().for_each(|x| *x *= lane.factor);
            }
        }
        Ok(())
    }
}

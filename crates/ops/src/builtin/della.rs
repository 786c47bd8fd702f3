//! `della(k, eps)`: DELLA's magnitude-ranked random drop (Deep et al. 2024), as
//! mergekit's `della_magprune`.
//!
//! Within each row, entries are ranked by magnitude; an entry of normalised rank
//! `r̂ ∈ [0, 1]` (0 the smallest) is kept with probability `p = (k − ε) + 2ε·r̂`, so large
//! entries survive more often, and the survivors are rescaled to restore the vector's
//! L1 norm. The engine hands the kernel whole rows ([`Operator::whole_rows`]); a row is
//! ranked by a stable radix sort of its magnitudes' bit patterns, once in the norms pass
//! and once when applying (no copy of the tensor is kept).

use reefknot_lang::{Bound, DefaultValue, OpSpec, ParamKind, ParamSpec, Signature, Ty};

use super::geometry::{l1, l1_factor, rows_fit};
use super::masks::{ChunkMask, MASK_BUDGET};
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
    weighted: false,
    summary: "drop entries at random, keeping large ones more often (DELLA, per row)",
    doc: "DELLA's MagPrune (Deep et al. 2024), as mergekit's `della_magprune` (`della`, \
`della_linear`): in each row (the last dimension; a vector is one row) of each task \
vector, the entries are ranked by magnitude, smallest first, and the entry of rank \
`q ∈ {0, …, r−1}` of a row of `r` is kept with probability `p = (k − ε) + 2ε·q/(r−1)` \
(`p = k` in a row of one); `rescale=l1` then multiplies the survivors by `‖δ‖₁/‖kept‖₁` \
over the whole tensor (skipped where either norm is below 1e-7; a norm that is NaN or \
infinite is an error), as mergekit does — not \
the paper's `1/p`. `k ≥ 1` keeps everything and `k = 0` nothing; otherwise \
`0 < k − ε` and `k + ε < 1` are required, as mergekit requires. Equal magnitudes are \
ranked by position. (mergekit ranks along the second dimension, the same for the 1-D and \
2-D tensors of language models.) A tensor whose rows cannot be streamed whole (rows \
sharing few factors of two with 4096 in a tensor of more than 2²⁰ elements) is refused \
when the recipe is checked.\n\n\
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
            masks: Vec::new(),
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

reefknot_simd::multiversion! {
    /// Zeroes the entries of `values` that `lane` drops, whole rows of `row` elements
    /// whose first element is element `offset` of the tensor; `scratch` holds the
    /// ranking. With `bits` (`values.len().div_ceil(64)` zeroed words), records each keep
    /// decision: bit `k % 64` of word `k / 64` set when entry `k` is kept. Compiled per
    /// vector level.
    fn drop_entries(
        lane: &Lane,
        row: usize,
        offset: usize,
        values: &mut [f32],
        scratch: &mut Ranks,
        bits: Option<&mut [u64]>,
    ) {
        let mut bits = bits;
        let (low, span) = match lane.action {
            Action::Keep => {
                if let Some(bits) = bits {
                    bits.fill(u64::MAX);
                }
                return;
            }
            Action::Zero => return values.fill(0.0),
            Action::Draw { low, span } => (low, span),
        };
        for (r, run) in values.chunks_mut(row).enumerate() {
            let start = offset + r * row;
            scratch.rank(run);
            scratch.draws.resize(run.len(), 0);
            if start.is_multiple_of(2) {
                lane.stream.fill(start as u64, &mut scratch.draws);
            } else {
                for (k, d) in scratch.draws.iter_mut().enumerate() {
                    *d = lane.stream.draw((start + k) as u64);
                }
            }
            // Each entry's rank, then a branch-free pass in element order (the keep
            // decisions are coin flips: a branch on them would mispredict half the time).
            scratch.rank_of.resize(run.len(), 0);
            for (rank, &q) in scratch.order.iter().enumerate() {
                scratch.rank_of[q as usize] = rank as u32;
            }
            let last = (run.len() - 1) as f64;
            let first = r * row;
            for (k, ((x, &rank), &d)) in run
                .iter_mut()
                .zip(&scratch.rank_of)
                .zip(&scratch.draws)
                .enumerate()
            {
                let normalised = if last > 0.0 {
                    f64::from(rank) / last
                } else {
                    0.5
                };
                let p = low + span * normalised;
                let keep = f64::from(d) < p * 4_294_967_296.0;
                *x = f32::from_bits(x.to_bits() & (u32::from(keep).wrapping_neg()));
                if let Some(bits) = bits.as_deref_mut() {
                    let at = first + k;
                    bits[at / 64] |= u64::from(keep) << (at % 64);
                }
            }
        }
    }
}

/// Scratch for ranking a row: its positions in order of increasing magnitude (equal
/// magnitudes by position), found by a stable LSD radix sort of the magnitudes' bit
/// patterns (only the bits that vary, in digits of at most 11 bits); each position's
/// rank; and the row's draws.
#[derive(Default)]
struct Ranks {
    order: Vec<u32>,
    keys: Vec<u32>,
    spare_order: Vec<u32>,
    spare_keys: Vec<u32>,
    rank_of: Vec<u32>,
    draws: Vec<u32>,
}

impl Ranks {
    #[inline(always)]
    fn rank(&mut self, run: &[f32]) {
        let n = run.len();
        self.keys.clear();
        self.keys
            .extend(run.iter().map(|x| x.to_bits() & 0x7fff_ffff));
        self.order.clear();
        self.order.extend(0..n as u32);
        // Only the bits that differ between entries need sorting: weights that went
        // through bf16 leave the low half of the mantissa zero. They are sorted in as
        // few digits of at most 11 bits as cover them.
        let first = self.keys.first().copied().unwrap_or(0);
        let varying = self.keys.iter().fold(0u32, |acc, &k| acc | (k ^ first));
        if varying == 0 {
            return;
        }
        let low = varying.trailing_zeros();
        let width = 32 - varying.leading_zeros() - low;
        let passes = width.div_ceil(11);
        let digit = width.div_ceil(passes);
        let buckets = 1usize << digit;
        let mask = (buckets - 1) as u32;
        self.spare_keys.resize(n, 0);
        self.spare_order.resize(n, 0);
        let mut count = vec![0usize; buckets];
        for pass in 0..passes {
            let shift = low + pass * digit;
            count.fill(0);
            for &k in &self.keys {
                count[((k >> shift) & mask) as usize] += 1;
            }
            let mut at = 0;
            for c in count.iter_mut() {
                let here = *c;
                *c = at;
                at += here;
            }
            for (&k, &q) in self.keys.iter().zip(&self.order) {
                let b = ((k >> shift) & mask) as usize;
                self.spare_keys[count[b]] = k;
                self.spare_order[count[b]] = q;
                count[b] += 1;
            }
            std::mem::swap(&mut self.keys, &mut self.spare_keys);
            std::mem::swap(&mut self.order, &mut self.spare_order);
        }
    }
}

struct DellaKernel {
    row: usize,
    lanes: Vec<Lane>,
    rescale: bool,
    concluded: bool,
    /// Per chunk index, the keep decisions of the norms pass, when they fitted the
    /// shared budget (a chunk without draws again in `apply`, to the same bits).
    masks: Vec<Option<ChunkMask>>,
}

/// Per model, `(Σ|δ|, Σ|kept|)`, block by block; and the chunks' keep decisions.
struct Norms {
    sums: Vec<(OrderFreeSum, OrderFreeSum)>,
    masks: Vec<(usize, ChunkMask)>,
}

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
        Box::new(Norms {
            sums: vec![Default::default(); self.lanes.len()],
            masks: Vec::new(),
        })
    }

    fn observe(&self, _pass: usize, chunk: &Chunk<'_>, partial: &mut Partial) {
        let norms = partial.downcast_mut::<Norms>().expect("della partial");
        let mut kept = vec![0f32; chunk.len];
        let mut ranks = Ranks::default();
        let per_lane = chunk.len.div_ceil(64);
        let mut words = MASK_BUDGET.take(per_lane * self.lanes.len());
        for (i, lane) in self.lanes.iter().enumerate() {
            let values = chunk.model(i);
            kept.copy_from_slice(values);
            let bits = words
                .as_deref_mut()
                .map(|w| &mut w[i * per_lane..(i + 1) * per_lane]);
            drop_entries(lane, self.row, chunk.offset, &mut kept, &mut ranks, bits);
            for (all, cut) in values.chunks(BLOCK).zip(kept.chunks(BLOCK)) {
                norms.sums[i].0.add(l1(all));
                norms.sums[i].1.add(l1(cut));
            }
        }
        if let Some(words) = words {
            let mask = ChunkMask {
                offset: chunk.offset,
                len: chunk.len,
                words,
            };
            norms.masks.push((chunk.index, mask));
        }
    }

    fn combine(&self, _pass: usize, mut a: Partial, b: Partial) -> Partial {
        let norms = a.downcast_mut::<Norms>().expect("della partial");
        let more = *b.downcast::<Norms>().expect("della partial");
        for (x, y) in norms.sums.iter_mut().zip(more.sums) {
            x.0.merge(y.0);
            x.1.merge(y.1);
        }
        norms.masks.extend(more.masks);
        a
    }

    fn conclude(&mut self, _pass: usize, total: Partial) -> Result<(), OpError> {
        let norms = *total.downcast::<Norms>().expect("della partial");
        for (index, mask) in norms.masks {
            if self.masks.len() <= index {
                self.masks.resize_with(index + 1, || None);
            }
            self.masks[index] = Some(mask);
        }
        for (i, (lane, (all, kept))) in self.lanes.iter_mut().zip(norms.sums).enumerate() {
            if matches!(lane.action, Action::Draw { .. }) {
                lane.factor = l1_factor("della", Some(i), all.value(), kept.value())?;
            }
        }
        self.concluded = true;
        Ok(())
    }

    fn apply(&self, chunk: &mut Chunk<'_>) -> Result<(), OpError> {
        let mut ranks = Ranks::default();
        let (offset, len) = (chunk.offset, chunk.len);
        let mask = self
            .masks
            .get(chunk.index)
            .and_then(Option::as_ref)
            .filter(|m| m.offset == offset && m.len == len);
        let per_lane = len.div_ceil(64);
        for (i, lane) in self.lanes.iter().enumerate() {
            let values = &mut chunk.stack[i * len..(i + 1) * len];
            match mask {
                Some(m) => {
                    let words = &m.words[i * per_lane..(i + 1) * per_lane];
                    for (k, x) in values.iter_mut().enumerate() {
                        let keep = (words[k / 64] >> (k % 64)) & 1;
                        *x = f32::from_bits(x.to_bits() & (keep as u32).wrapping_neg());
                    }
                }
                None => drop_entries(lane, self.row, offset, values, &mut ranks, None),
            }
            if lane.factor != 1.0 {
                values.iter_mut().for_each(|x| *x *= lane.factor);
            }
        }
        Ok(())
    }
}

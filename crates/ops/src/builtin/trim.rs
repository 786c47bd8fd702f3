//! `trim(k)`: keep the `⌊k·n⌋` entries of largest magnitude of each vector, and
//! `breadcrumbs(k, γ)`: drop the `⌊γ·n⌋` largest and keep the next `⌊k·n⌋`.
//!
//! Both are bands of ranks `[lo, hi)` by decreasing magnitude: a selection of the `hi`
//! largest entries, less (for breadcrumbs) a selection of the `lo` largest.
//!
//! The threshold is found by selection on the bit pattern of `|x|` (for non-negative
//! floats the `u32` bit pattern is monotone in the value), never by sorting the tensor:
//!
//! 1. **Histogram** of the high 15 bits of `|x|` (32 768 buckets). On a large tensor it
//!    is taken over a sample — every 8th chunk, ⅛ of the data — and gives a window of
//!    buckets that holds the k-th largest magnitude with a wide margin; on a small
//!    tensor it is taken over everything and the window is the one exact bucket.
//! 2. **Collect**, over the whole tensor: count the entries above the window and keep
//!    the bit patterns of the entries inside it (a small fraction), per chunk, in
//!    element order. If the k-th largest lies in the window (it almost always does),
//!    a selection among the candidates gives the exact threshold `t`, how many entries
//!    equal to `t` are kept, and, from the per-chunk lists, how many of those each chunk
//!    keeps — entries equal to `t` are kept in flat-index order. If the sample misled
//!    (the k-th largest is outside the window), the lane starts again with an exact
//!    histogram of the whole tensor.
//!
//! So a large tensor costs about 1⅛ streaming passes before the merge pass writes it.
//!
//! Candidates are stored per chunk as distinct bit patterns with their counts (weights
//! that went through bf16 give many equal magnitudes), and memory stays bounded whatever
//! the tensor's size: past [`MAX_CANDIDATES`] pairs a lane stops storing and takes the
//! constant-memory road instead — an exact histogram of the high bits, a histogram of
//! the low 16 bits inside the one bucket holding the cut, and, if the cut falls among
//! equal magnitudes, a pass counting them per chunk.
//!
//! Counts are integers and every road resolves exactly, so the result does not depend
//! on the sample, the road, the thread count or the chunk size.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use reefknot_lang::{DefaultValue, OpSpec, ParamKind, ParamSpec, Signature, Ty};

use crate::kernel::{
    Args, BindCtx, ChoiceParam, Chunk, Kernel, NumberParam, Operator, Param, Partial,
};
use crate::{OpError, OrderFreeSum, BLOCK};

/// `trim` (alias `topk`).
pub struct Trim;

static SPEC: OpSpec = OpSpec {
    name: "trim",
    aliases: &["topk"],
    signatures: &[
        Signature::new(Ty::Stack, Ty::Stack),
        Signature::new(Ty::Delta, Ty::Delta),
    ],
    params: &[
        ParamSpec {
            name: "k",
            kind: ParamKind::Number {
                min: reefknot_lang::Bound::Inclusive(0.0),
                max: reefknot_lang::Bound::Unbounded,
            },
            default: Some(DefaultValue::Number(0.2)),
            doc: "fraction of entries to keep (density); 0 keeps none, 1 or more keeps all",
        },
        RESCALE_SPEC,
    ],
    models: reefknot_lang::Models::ANY,
    summary: "keep the fraction k of entries with the largest |δ| in each vector, zero the rest",
    doc: "Keeps, in each task vector (or in the merged delta), the `max(1, ⌊k·n⌋)` entries of \
largest magnitude and sets the others to zero; `k = 0` keeps none and `k ≥ 1` keeps all. \
Entries whose magnitude equals the threshold are kept in flat-index order, lowest first. \
Equals mergekit's `magnitude` sparsification (used by `ties`), whose unstable sort may pick \
other entries among equal magnitudes at the cut.\n\n\
`rescale=l1` multiplies the kept entries by `‖δ‖₁/‖kept‖₁` (skipped where either norm is \
below 1e-7, and when nothing is cut), mergekit's `rescale: true`.\n\n\
`k` may differ per model (`trim($density)` with a `density` in each model's `params`).\n\n\
The threshold is found by radix selection on the float bit pattern (a histogram of a \
sample, then one pass collecting the few candidates near the cut): O(n), streaming, no \
sorting, no copy of the tensor.",
};

/// The `rescale` parameter `trim` and `breadcrumbs` share.
const RESCALE_SPEC: ParamSpec = ParamSpec {
    name: "rescale",
    kind: ParamKind::Choice(&["none", "l1"]),
    default: Some(DefaultValue::Choice("none")),
    doc: "`l1` scales the kept entries to restore the vector's L1 norm (mergekit's `rescale`)",
};

const K: Param<NumberParam> = Param::number(&SPEC, "k");
const RESCALE: Param<ChoiceParam> = Param::choice(&SPEC, "rescale");

impl Operator for Trim {
    fn spec(&self) -> &'static OpSpec {
        &SPEC
    }

    fn bind(&self, args: &Args, ctx: &BindCtx<'_>) -> Result<Box<dyn Kernel>, OpError> {
        let n = ctx.numel as u64;
        let bands = vector_values(args, K, ctx)
            .into_iter()
            .map(|k| {
                let keep = if k >= 1.0 {
                    n
                } else if k <= 0.0 {
                    0
                } else {
                    // As mergekit: max(1, int(k * n)), computed in double precision.
                    ((k * n as f64).floor() as u64).max(1)
                };
                (0, keep)
            })
            .collect();
        Ok(Box::new(TrimKernel::new(
            ctx,
            bands,
            args.choice(RESCALE) == "l1",
        )))
    }
}

/// A number argument per vector the kernel cuts: one per model on a stack, one for
/// the delta.
fn vector_values(args: &Args, p: Param<NumberParam>, ctx: &BindCtx<'_>) -> Vec<f64> {
    if ctx.input() == Ty::Delta {
        vec![args.number(p)]
    } else {
        args.per_model(p, ctx.models)
    }
}

/// `breadcrumbs`.
pub struct Breadcrumbs;

static BREADCRUMBS: OpSpec = OpSpec {
    name: "breadcrumbs",
    aliases: &[],
    signatures: &[
        Signature::new(Ty::Stack, Ty::Stack),
        Signature::new(Ty::Delta, Ty::Delta),
    ],
    params: &[
        ParamSpec {
            name: "k",
            kind: ParamKind::Number {
                min: reefknot_lang::Bound::Inclusive(0.0),
                max: reefknot_lang::Bound::Unbounded,
            },
            default: None,
            doc: "fraction of entries to keep (density), after the outliers; 1 or more keeps all",
        },
        ParamSpec {
            name: "gamma",
            kind: ParamKind::closed(0.0, 1.0),
            default: Some(DefaultValue::Number(0.01)),
            doc: "fraction of the largest entries to drop as outliers",
        },
        RESCALE_SPEC,
    ],
    models: reefknot_lang::Models::ANY,
    summary: "drop the largest fraction γ of |δ| as outliers, keep the next fraction k",
    doc: "Model Breadcrumbs (Davari & Belilovsky 2024): in each task vector of `n` entries, \
drops the `⌊γ·n⌋` entries of largest magnitude (outliers) and keeps the next `⌊k·n⌋` \
(fewer outliers are dropped when `⌊γ·n⌋ + ⌊k·n⌋ > n`, so that `⌊k·n⌋` are kept); the rest \
is zero. `k ≥ 1` keeps everything, outliers included. Equals mergekit's \
`magnitude_outliers` sparsification (`breadcrumbs`, `breadcrumbs_ties`); where `⌊γ·n⌋ = 0` \
no outlier is dropped. Ties among equal magnitudes are broken as `trim` breaks them.\n\n\
`rescale=l1` restores each vector's L1 norm, mergekit's `rescale: true`. `k` and `gamma` \
may differ per model. Streaming radix selection, as `trim`.",
};

const BK: Param<NumberParam> = Param::number(&BREADCRUMBS, "k");
const GAMMA: Param<NumberParam> = Param::number(&BREADCRUMBS, "gamma");
const BRESCALE: Param<ChoiceParam> = Param::choice(&BREADCRUMBS, "rescale");

impl Operator for Breadcrumbs {
    fn spec(&self) -> &'static OpSpec {
        &BREADCRUMBS
    }

    fn bind(&self, args: &Args, ctx: &BindCtx<'_>) -> Result<Box<dyn Kernel>, OpError> {
        let n = ctx.numel as u64;
        let ks = vector_values(args, BK, ctx);
        let gammas = vector_values(args, GAMMA, ctx);
        let bands = ks
            .iter()
            .zip(&gammas)
            .map(|(&k, &g)| {
                if k >= 1.0 {
                    return (0, n);
                }
                // As mergekit: keep ranks [lo, lo + target) by decreasing magnitude.
                let target = ((k * n as f64).floor() as u64).min(n);
                let top = ((g * n as f64).floor() as u64).min(n);
                let lo = top.min(n - target);
                (lo, lo + target)
            })
            .collect();
        Ok(Box::new(TrimKernel::new(
            ctx,
            bands,
            args.choice(BRESCALE) == "l1",
        )))
    }
}

/// Buckets of the histogram: the high 15 bits of `|x|` (the sign bit is clear).
const BUCKETS: usize = 1 << 15;

/// Tensors of at least this many elements are histogrammed on a sample.
const SAMPLE_FROM: usize = 64 * BLOCK;

/// The sample: every `SAMPLE_STRIDE`-th chunk.
const SAMPLE_STRIDE: usize = 8;

/// Half-width of the window, in standard deviations of the sampled rank.
const MARGIN_SIGMAS: f64 = 8.0;

/// The most candidate `(pattern, count)` pairs a lane stores (8 MiB); beyond, the lane
/// resolves its cut with constant memory.
pub const MAX_CANDIDATES: u64 = 1 << 20;

/// Buckets of the low-bits histogram: the low 16 bits of `|x|`.
const LOW_BUCKETS: usize = 1 << 16;

#[inline]
fn abs_bits(x: f32) -> u32 {
    x.to_bits() & 0x7fff_ffff
}

#[inline]
fn bucket(bits: u32) -> usize {
    (bits >> 16) as usize
}

/// What to do with one vector (one model's task vector, or the delta).
#[derive(Clone, Debug, PartialEq)]
enum Lane {
    /// Keep every entry.
    All,
    /// Zero every entry.
    None,
    /// Needs a histogram over every `stride`-th chunk.
    Histogram { keep: u64, stride: usize },
    /// Needs the entries above bucket `hi` counted and those in buckets `lo..=hi` collected.
    Collect { keep: u64, lo: usize, hi: usize },
    /// Needs a histogram of the low 16 bits of the entries in `bucket`, above which
    /// `above` entries lie.
    Low {
        keep: u64,
        bucket: usize,
        above: u64,
    },
    /// Needs the entries equal to `bits` counted per chunk; `take` of them are kept.
    CountTies { bits: u32, take: u64 },
    /// Keep entries whose `|x|` bits are `>= bits`.
    AtLeast { bits: u32 },
    /// Keep entries above `bits`, and the first entries equal to it in flat-index order.
    Ties {
        bits: u32,
        /// Per chunk: how many of its entries equal to `bits` are kept, and how many it has.
        quota: Vec<(u64, u64)>,
    },
}

impl Lane {
    /// The lane that keeps the `keep` largest of `n` entries.
    fn keep(keep: u64, n: u64, stride: usize) -> Lane {
        if keep >= n {
            Lane::All
        } else if keep == 0 {
            Lane::None
        } else {
            Lane::Histogram { keep, stride }
        }
    }

    fn pending(&self) -> bool {
        matches!(
            self,
            Lane::Histogram { .. }
                | Lane::Collect { .. }
                | Lane::Low { .. }
                | Lane::CountTies { .. }
        )
    }

    /// Zeroes the entries of `values` (chunk `index` of the vector) the lane drops.
    fn select(&self, index: usize, values: &mut [f32]) {
        match self {
            Lane::All => {}
            Lane::None => values.fill(0.0),
            Lane::AtLeast { bits } => keep_above(values, *bits, true),
            Lane::Ties { bits, quota } => {
                let (keep, count) = quota[index];
                if keep == count {
                    keep_above(values, *bits, true);
                } else if keep == 0 {
                    keep_above(values, *bits, false);
                } else {
                    // The chunk where the cut falls among equal magnitudes.
                    let mut seen = 0u64;
                    for x in values.iter_mut() {
                        let b = abs_bits(*x);
                        if b < *bits || (b == *bits && seen >= keep) {
                            *x = 0.0;
                        }
                        seen += u64::from(b == *bits);
                    }
                }
            }
            Lane::Histogram { .. }
            | Lane::Collect { .. }
            | Lane::Low { .. }
            | Lane::CountTies { .. } => unreachable!("selection before its passes"),
        }
    }
}

/// One pass's partial result, per lane.
enum Part {
    /// Bucket counts.
    Histogram(Vec<u64>),
    /// Entries above the window, and per chunk `(chunk index, candidates)`, the
    /// candidates as `(bit pattern, how many)` with distinct patterns, largest first.
    Collect(u64, Vec<(usize, Vec<(u32, u32)>)>),
    /// `(chunk index, entries equal to the cut)`.
    Ties(Vec<(usize, u64)>),
    /// The lane does nothing this pass.
    Idle,
}

/// What one vector keeps: the entries of ranks `[lo, hi)` in order of decreasing
/// magnitude, as the selection lanes `keep` (the `hi` largest) and `outliers` (the `lo`
/// largest, dropped again) find them.
struct Band {
    keep: usize,
    outliers: Option<usize>,
}

struct TrimKernel {
    on_delta: bool,
    /// The selections: the `hi` largest entries of a vector, and for breadcrumbs the
    /// `lo` largest.
    lanes: Vec<Lane>,
    /// Per lane, the vector it selects in (a model of the stack, or 0 for the delta).
    vector: Vec<usize>,
    /// Per vector.
    bands: Vec<Band>,
    /// Per lane, candidate pairs stored in the collect pass under way; past
    /// [`MAX_CANDIDATES`] the lane stops storing and takes the constant-memory road.
    stored: Vec<AtomicU64>,
    /// With `rescale=l1`: per vector, `‖δ‖₁/‖kept‖₁` once the norms pass has run.
    rescale: Option<Option<Vec<f32>>>,
}

/// The L1 norms of every vector, all and kept, summed per block of [`BLOCK`] elements.
struct Norms(Vec<(OrderFreeSum, OrderFreeSum)>);

impl TrimKernel {
    /// A kernel keeping ranks `[lo, hi)` of each vector (`bands`, one per vector).
    fn new(ctx: &BindCtx<'_>, bands: Vec<(u64, u64)>, rescale: bool) -> TrimKernel {
        let n = ctx.numel as u64;
        // Sample large tensors; histogram small ones exactly.
        let stride = if ctx.numel >= SAMPLE_FROM {
            SAMPLE_STRIDE
        } else {
            1
        };
        let mut lanes = Vec::new();
        let mut vector = Vec::new();
        let mut out = Vec::new();
        for (v, &(lo, hi)) in bands.iter().enumerate() {
            let mut lane = |keep| {
                lanes.push(Lane::keep(keep, n, stride));
                vector.push(v);
                lanes.len() - 1
            };
            let keep = lane(hi);
            let outliers = (lo > 0 && hi > lo).then(|| lane(lo));
            out.push(Band { keep, outliers });
        }
        let stored = lanes.iter().map(|_| AtomicU64::new(0)).collect();
        TrimKernel {
            on_delta: ctx.input() == Ty::Delta,
            lanes,
            vector,
            bands: out,
            stored,
            rescale: rescale.then_some(None),
        }
    }

    fn values<'c>(&self, chunk: &'c Chunk<'_>, lane: usize) -> &'c [f32] {
        self.vector_values(chunk, self.vector[lane])
    }

    fn vector_values<'c>(&self, chunk: &'c Chunk<'_>, v: usize) -> &'c [f32] {
        if self.on_delta {
            chunk.delta
        } else {
            chunk.model(v)
        }
    }

    fn selecting(&self) -> bool {
        self.lanes.iter().any(Lane::pending)
    }

    /// Keeps the band of vector `v` in `values` (chunk `index`), using `spare` (as long
    /// as `values`) for the outliers.
    fn keep_band(&self, v: usize, index: usize, values: &mut [f32], spare: &mut [f32]) {
        let band = &self.bands[v];
        if let Some(o) = band.outliers {
            spare.copy_from_slice(values);
            self.lanes[o].select(index, spare);
        }
        self.lanes[band.keep].select(index, values);
        if band.outliers.is_some() {
            for (x, &top) in values.iter_mut().zip(spare.iter()) {
                if top != 0.0 {
                    *x = 0.0;
                }
            }
        }
    }

    /// The norms pass: each vector's L1 norm before and after the cut.
    fn observe_norms(&self, chunk: &Chunk<'_>, norms: &mut Norms) {
        let mut kept = vec![0f32; chunk.len];
        let mut spare = vec![0f32; chunk.len];
        for v in 0..self.bands.len() {
            let values = self.vector_values(chunk, v);
            kept.copy_from_slice(values);
            self.keep_band(v, chunk.index, &mut kept, &mut spare);
            let l1 = |x: &[f32]| x.iter().map(|&a| f64::from(a.abs())).sum::<f64>();
            for (all, cut) in values.chunks(BLOCK).zip(kept.chunks(BLOCK)) {
                norms.0[v].0.add(l1(all));
                norms.0[v].1.add(l1(cut));
            }
        }
    }
}

impl Kernel for TrimKernel {
    fn wants_pass(&self, _pass: usize) -> bool {
        self.selecting() || matches!(self.rescale, Some(None))
    }

    fn pass_stride(&self, _pass: usize) -> usize {
        if !self.selecting() {
            return 1;
        }
        // Every lane in this pass is either sampling with the same stride or needs the
        // whole tensor; a lane that samples skips the chunks outside its sample.
        self.lanes
            .iter()
            .map(|l| match l {
                Lane::Histogram { stride, .. } => *stride,
                Lane::Collect { .. } | Lane::Low { .. } | Lane::CountTies { .. } => 1,
                _ => usize::MAX,
            })
            .min()
            .unwrap_or(1)
    }

    fn partial(&self, _pass: usize) -> Partial {
        if !self.selecting() {
            return Box::new(Norms(vec![Default::default(); self.bands.len()]));
        }
        let parts: Vec<Part> = self
            .lanes
            .iter()
            .map(|l| match l {
                Lane::Histogram { .. } => Part::Histogram(vec![0; BUCKETS]),
                Lane::Collect { .. } => Part::Collect(0, Vec::new()),
                Lane::Low { .. } => Part::Histogram(vec![0; LOW_BUCKETS]),
                Lane::CountTies { .. } => Part::Ties(Vec::new()),
                _ => Part::Idle,
            })
            .collect();
        Box::new(parts)
    }

    fn observe(&self, _pass: usize, chunk: &Chunk<'_>, partial: &mut Partial) {
        if let Some(norms) = partial.downcast_mut::<Norms>() {
            return self.observe_norms(chunk, norms);
        }
        let parts = partial.downcast_mut::<Vec<Part>>().expect("trim partial");
        for (l, (lane, part)) in self.lanes.iter().zip(parts.iter_mut()).enumerate() {
            match (lane, part) {
                (Lane::Histogram { stride, .. }, Part::Histogram(h))
                    if chunk.index.is_multiple_of(*stride) =>
                {
                    for &x in self.values(chunk, l) {
                        h[bucket(abs_bits(x))] += 1;
                    }
                }
                (Lane::Collect { lo, hi, .. }, Part::Collect(above, lists)) => {
                    let (count, pairs) = collect(self.values(chunk, l), *lo, *hi);
                    *above += count;
                    let stored = self.stored[l].fetch_add(pairs.len() as u64, Ordering::Relaxed);
                    // Past the budget the lane keeps counting but stores nothing more;
                    // its conclusion sees the overflow and starts the exact road.
                    let pairs = if stored + pairs.len() as u64 > MAX_CANDIDATES {
                        Vec::new()
                    } else {
                        pairs
                    };
                    lists.push((chunk.index, pairs));
                }
                (Lane::Low { bucket: b, .. }, Part::Histogram(h)) => {
                    for &x in self.values(chunk, l) {
                        let bits = abs_bits(x);
                        if bucket(bits) == *b {
                            h[(bits & 0xffff) as usize] += 1;
                        }
                    }
                }
                (Lane::CountTies { bits, .. }, Part::Ties(counts)) => {
                    let n = self
                        .values(chunk, l)
                        .iter()
                        .filter(|&&x| abs_bits(x) == *bits)
                        .count();
                    counts.push((chunk.index, n as u64));
                }
                _ => {}
            }
        }
    }

    fn combine(&self, _pass: usize, mut a: Partial, b: Partial) -> Partial {
        if let Some(norms) = a.downcast_mut::<Norms>() {
            let more = b.downcast::<Norms>().expect("norms partial");
            for (x, y) in norms.0.iter_mut().zip(more.0) {
                x.0.merge(y.0);
                x.1.merge(y.1);
            }
            return a;
        }
        let av = a.downcast_mut::<Vec<Part>>().expect("trim partial");
        let bv = b.downcast::<Vec<Part>>().expect("trim partial");
        for (x, y) in av.iter_mut().zip(*bv) {
            match (x, y) {
                (Part::Histogram(h), Part::Histogram(g)) => {
                    h.iter_mut().zip(&g).for_each(|(p, q)| *p += *q);
                }
                (Part::Collect(above, lists), Part::Collect(more, other)) => {
                    *above += more;
                    lists.extend(other);
                }
                (Part::Ties(counts), Part::Ties(other)) => counts.extend(other),
                _ => {}
            }
        }
        a
    }

    fn conclude(&mut self, _pass: usize, total: Partial) -> Result<(), OpError> {
        let total = match total.downcast::<Norms>() {
            Ok(norms) => {
                const EPS: f64 = 1e-7;
                let factors = norms
                    .0
                    .iter()
                    .map(|(all, kept)| {
                        let (all, kept) = (all.value(), kept.value());
                        if all < EPS || kept < EPS {
                            1.0
                        } else {
                            (all / kept) as f32
                        }
                    })
                    .collect();
                self.rescale = Some(Some(factors));
                return Ok(());
            }
            Err(total) => total,
        };
        let parts = total.downcast::<Vec<Part>>().expect("trim partial");
        for (l, (lane, part)) in self.lanes.iter_mut().zip(*parts).enumerate() {
            *lane = match (&*lane, part) {
                (&Lane::Histogram { keep, stride }, Part::Histogram(h)) => window(&h, keep, stride),
                (&Lane::Collect { keep, .. }, Part::Collect(above, mut lists)) => {
                    if self.stored[l].swap(0, Ordering::Relaxed) > MAX_CANDIDATES {
                        Lane::Histogram { keep, stride: 1 }
                    } else {
                        lists.sort_unstable_by_key(|(index, _)| *index);
                        resolve(keep, above, &lists)
                    }
                }
                (
                    &Lane::Low {
                        keep,
                        bucket,
                        above,
                    },
                    Part::Histogram(h),
                ) => low_cut(&h, keep, bucket, above),
                (&Lane::CountTies { bits, take }, Part::Ties(mut counts)) => {
                    counts.sort_unstable_by_key(|(index, _)| *index);
                    Lane::Ties {
                        bits,
                        quota: quotas(take, counts.iter().map(|(_, n)| *n)),
                    }
                }
                _ => continue,
            };
        }
        Ok(())
    }

    fn apply(&self, chunk: &mut Chunk<'_>) -> Result<(), OpError> {
        let index = chunk.index;
        let len = chunk.len;
        let factors = self.rescale.as_ref().and_then(Option::as_deref);
        for v in 0..self.bands.len() {
            let values = if self.on_delta {
                &mut *chunk.delta
            } else {
                &mut chunk.stack[v * len..(v + 1) * len]
            };
            self.keep_band(v, index, values, chunk.scratch);
            if let Some(&f) = factors.and_then(|f| f.get(v)).filter(|&&f| f != 1.0) {
                values.iter_mut().for_each(|x| *x *= f);
            }
        }
        Ok(())
    }
}

/// Counts the entries of `values` above bucket `hi` and returns the bit patterns of
/// those in buckets `lo..=hi` as `(pattern, count)`, distinct patterns, largest first
/// (magnitudes cluster: merged from low-precision weights, many are equal).
///
/// Runs of 64 entries are first reduced to a count and a bit mask by loops that
/// vectorise; only the set bits of the mask (the few candidates) are visited one by one.
fn collect(values: &[f32], lo: usize, hi: usize) -> (u64, Vec<(u32, u32)>) {
    let (lo, hi) = (lo as u32, hi as u32);
    let mut above = 0u64;
    let mut list = Vec::new();
    let mut runs = values.chunks_exact(64);
    for run in &mut runs {
        let run: &[f32; 64] = run.try_into().expect("exact run");
        let mut bits = [0u32; 64];
        for (b, &x) in bits.iter_mut().zip(run) {
            *b = abs_bits(x);
        }
        let mut n = 0u32;
        let mut mask = 0u64;
        for (k, &b) in bits.iter().enumerate() {
            let key = b >> 16;
            n += u32::from(key > hi);
            mask |= u64::from(key >= lo && key <= hi) << k;
        }
        above += u64::from(n);
        while mask != 0 {
            list.push(bits[mask.trailing_zeros() as usize]);
            mask &= mask - 1;
        }
    }
    for &x in runs.remainder() {
        let b = abs_bits(x);
        let key = b >> 16;
        above += u64::from(key > hi);
        if key >= lo && key <= hi {
            list.push(b);
        }
    }
    // A chunk's candidates (a few hundred), not the tensor: sorting them is cheap.
    list.sort_unstable_by(|a, b| b.cmp(a));
    let mut pairs: Vec<(u32, u32)> = Vec::new();
    for b in list {
        match pairs.last_mut() {
            Some((v, n)) if *v == b => *n += 1,
            _ => pairs.push((b, 1)),
        }
    }
    (above, pairs)
}

/// From a histogram (of everything when `stride == 1`, else of a sample), the window of
/// buckets to collect.
fn window(hist: &[u64], keep: u64, stride: usize) -> Lane {
    let sampled: u64 = hist.iter().sum();
    if stride == 1 {
        // Exact: the bucket holding the keep-th largest, and what lies above it.
        let b = bucket_of_rank(hist, keep);
        if hist[b] <= MAX_CANDIDATES {
            return Lane::Collect { keep, lo: b, hi: b };
        }
        let above = hist[b + 1..].iter().sum();
        return Lane::Low {
            keep,
            bucket: b,
            above,
        };
    }
    // The keep-th largest of n sits near rank keep·m/n of the m sampled entries; allow
    // MARGIN_SIGMAS binomial standard deviations on each side.
    let n_est = sampled as f64 * stride as f64;
    let frac = (keep as f64 / n_est.max(1.0)).min(1.0);
    let rank = frac * sampled as f64;
    let sigma = (rank * (1.0 - frac)).sqrt() + 1.0;
    let top = (rank - MARGIN_SIGMAS * sigma - 2.0).max(1.0) as u64;
    let bottom = ((rank + MARGIN_SIGMAS * sigma + 2.0) as u64).min(sampled.max(1));
    // If the candidates turn out too many to store, the collect pass says so and the
    // lane continues with an exact histogram.
    Lane::Collect {
        keep,
        lo: bucket_of_rank(hist, bottom),
        hi: bucket_of_rank(hist, top),
    }
}

/// From the low-bits histogram of the bucket holding the cut, the exact threshold.
fn low_cut(hist: &[u64], keep: u64, bucket: usize, above: u64) -> Lane {
    let need = keep - above;
    let low = bucket_of_rank(hist, need);
    let bits = ((bucket as u32) << 16) | low as u32;
    let greater = above + hist[low + 1..].iter().sum::<u64>();
    let equal = hist[low];
    let take = keep - greater;
    if take >= equal || bits == 0 {
        Lane::AtLeast { bits }
    } else {
        Lane::CountTies { bits, take }
    }
}

/// Per chunk, how many of its entries equal to the cut are kept (`take` in all, in
/// flat-index order: each chunk keeps what the chunks before it left) and how many it has.
fn quotas(take: u64, counts: impl Iterator<Item = u64>) -> Vec<(u64, u64)> {
    let mut before = 0u64;
    counts
        .map(|here| {
            let keep = take.saturating_sub(before).min(here);
            before += here;
            (keep, here)
        })
        .collect()
}

/// The bucket holding the `rank`-th largest entry (1-based) of `hist`; bucket 0 if there
/// are fewer entries.
fn bucket_of_rank(hist: &[u64], rank: u64) -> usize {
    let mut seen = 0u64;
    for (b, &count) in hist.iter().enumerate().rev() {
        seen += count;
        if seen >= rank {
            return b;
        }
    }
    0
}

/// From the entries above the window and the candidates inside it, the exact threshold,
/// or a new exact histogram if the window missed.
fn resolve(keep: u64, above: u64, lists: &[(usize, Vec<(u32, u32)>)]) -> Lane {
    // How many candidates have each distinct pattern, largest first.
    let mut counts: BTreeMap<u32, u64> = BTreeMap::new();
    for (_, pairs) in lists {
        for &(b, n) in pairs {
            *counts.entry(b).or_default() += u64::from(n);
        }
    }
    let candidates: u64 = counts.values().sum();
    if above >= keep || above + candidates < keep {
        return Lane::Histogram { keep, stride: 1 };
    }
    // The threshold t: the pattern at which the running count reaches keep.
    let mut greater = above;
    let mut cut = None;
    for (&b, &n) in counts.iter().rev() {
        if greater + n >= keep {
            cut = Some((b, n));
            break;
        }
        greater += n;
    }
    let (t, equal) = cut.expect("the candidates reach keep");
    let take = keep - greater;
    // Keeping every equal entry, or entries equal to zero (which stay zero either way),
    // needs no tie-breaking.
    if take >= equal || t == 0 {
        return Lane::AtLeast { bits: t };
    }
    // Entries equal to t are kept in flat-index order.
    debug_assert!(
        lists
            .iter()
            .enumerate()
            .all(|(pos, (index, _))| pos == *index),
        "every chunk collected once"
    );
    let quota = quotas(
        take,
        lists.iter().map(|(_, pairs)| {
            pairs
                .iter()
                .find(|(b, _)| *b == t)
                .map_or(0, |&(_, n)| u64::from(n))
        }),
    );
    Lane::Ties { bits: t, quota }
}

/// Zeroes the entries whose magnitude is below the threshold `bits` (or not above it,
/// when `equal` is false). Branch-free, so it vectorises.
#[inline]
fn keep_above(values: &mut [f32], bits: u32, equal: bool) {
    if equal {
        for x in values.iter_mut() {
            *x = if abs_bits(*x) >= bits { *x } else { 0.0 };
        }
    } else {
        for x in values.iter_mut() {
            *x = if abs_bits(*x) > bits { *x } else { 0.0 };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missed_window_falls_back_to_an_exact_histogram() {
        // Everything is above the window: the sample misled.
        let lists = vec![(0, vec![(6u32, 1u32), (5, 1)]), (1, vec![(7, 1)])];
        assert_eq!(
            resolve(3, 10, &lists),
            Lane::Histogram { keep: 3, stride: 1 }
        );
        // Not enough in the window either.
        assert_eq!(
            resolve(20, 10, &lists),
            Lane::Histogram {
                keep: 20,
                stride: 1
            }
        );
    }

    #[test]
    fn resolution_breaks_ties_by_chunk_order() {
        // keep 4: 2 above, then candidates 9, 8, 8, 8 → threshold 8, one of three 8s kept.
        let lists = vec![
            (0, vec![(8u32, 1u32)]),
            (1, vec![(9, 1), (8, 1)]),
            (2, vec![(8, 1), (1, 1)]),
        ];
        assert_eq!(
            resolve(4, 2, &lists),
            Lane::Ties {
                bits: 8,
                quota: vec![(1, 1), (0, 1), (0, 1)]
            }
        );
        // keep 6: all three 8s.
        assert_eq!(resolve(6, 2, &lists), Lane::AtLeast { bits: 8 });
    }

    #[test]
    fn low_bits_resolve_the_cut_exactly() {
        // 10 above the bucket; in it, 3 entries with low bits 9, then 5 with low bits 4.
        let mut low = vec![0u64; LOW_BUCKETS];
        low[9] = 3;
        low[4] = 5;
        assert_eq!(
            low_cut(&low, 13, 7, 10),
            Lane::AtLeast {
                bits: (7 << 16) | 9
            }
        );
        assert_eq!(
            low_cut(&low, 15, 7, 10),
            Lane::CountTies {
                bits: (7 << 16) | 4,
                take: 2
            }
        );
        assert_eq!(
            quotas(2, [0, 1, 3, 1].into_iter()),
            [(0, 0), (1, 1), (1, 3), (0, 1)]
        );
    }

    #[test]
    fn huge_buckets_take_the_constant_memory_road() {
        let mut hist = vec![0u64; BUCKETS];
        hist[600] = 10;
        hist[500] = MAX_CANDIDATES + 1; // the exact histogram: go to the low bits
        assert_eq!(
            window(&hist, 100, 1),
            Lane::Low {
                keep: 100,
                bucket: 500,
                above: 10
            }
        );
    }

    #[test]
    fn sampled_windows_contain_the_rank() {
        let mut hist = vec![0u64; BUCKETS];
        for (b, h) in hist.iter_mut().enumerate().skip(100).take(1000) {
            *h = (b % 7) as u64 + 1;
        }
        let Lane::Collect { lo, hi, .. } = window(&hist, 8 * 400, 8) else {
            panic!()
        };
        assert!(lo <= hi);
        let above_hi: u64 = hist[hi + 1..].iter().sum();
        let from_lo: u64 = hist[lo..].iter().sum();
        assert!(above_hi < 400 && from_lo >= 400);
    }
}

//! Exact selection of the `k` largest magnitudes of a vector, streaming: the machinery
//! behind `trim` and `breadcrumbs`, and the quantiles and top-k of other operators.
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
//!
//! A [`Selection`] runs any number of such lanes over the same passes; its user hands
//! each lane's values for a chunk to [`Selection::observe`] (a stored vector, or one it
//! derives, such as a variance across models).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::kernel::Partial;
use crate::BLOCK;

/// Buckets of the histogram: the high 15 bits of `|x|` (the sign bit is clear).
const BUCKETS: usize = 1 << 15;

/// Tensors of at least this many elements are histogrammed on a sample.
pub(crate) const SAMPLE_FROM: usize = 64 * BLOCK;

/// The sample: every `SAMPLE_STRIDE`-th chunk.
pub(crate) const SAMPLE_STRIDE: usize = 8;

/// Half-width of the window, in standard deviations of the sampled rank.
const MARGIN_SIGMAS: f64 = 8.0;

/// The most candidate `(pattern, count)` pairs a lane stores (8 MiB); beyond, the lane
/// resolves its cut with constant memory.
pub const MAX_CANDIDATES: u64 = 1 << 20;

/// Buckets of the low-bits histogram: the low 16 bits of `|x|`.
const LOW_BUCKETS: usize = 1 << 16;

#[inline]
pub(crate) fn abs_bits(x: f32) -> u32 {
    x.to_bits() & 0x7fff_ffff
}

#[inline]
fn bucket(bits: u32) -> usize {
    (bits >> 16) as usize
}

/// What to do with one vector (one model's task vector, or the delta).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Lane {
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
    pub(crate) fn keep(keep: u64, n: u64, stride: usize) -> Lane {
        if keep >= n {
            Lane::All
        } else if keep == 0 {
            Lane::None
        } else {
            Lane::Histogram { keep, stride }
        }
    }

    /// Whether the lane still needs passes.
    pub(crate) fn pending(&self) -> bool {
        matches!(
            self,
            Lane::Histogram { .. }
                | Lane::Collect { .. }
                | Lane::Low { .. }
                | Lane::CountTies { .. }
        )
    }

    /// The lane that finds the `rank`-th largest of `n` entries (`1 ≤ rank ≤ n`),
    /// even when that is the smallest: for order statistics, see [`Lane::cut`].
    pub(crate) fn rank(rank: u64, n: u64, stride: usize) -> Lane {
        if n == 0 || rank == 0 {
            Lane::None
        } else {
            Lane::Histogram {
                keep: rank.min(n),
                stride,
            }
        }
    }

    /// Once resolved, the magnitude of the last entry kept (the `keep`-th largest), as
    /// its bit pattern; `None` for a lane that keeps all or nothing without a cut.
    pub(crate) fn cut(&self) -> Option<u32> {
        match self {
            Lane::AtLeast { bits } | Lane::Ties { bits, .. } => Some(*bits),
            _ => None,
        }
    }

    /// Zeroes the entries of `values` (chunk `index` of the vector) the lane drops.
    pub(crate) fn select(&self, index: usize, values: &mut [f32]) {
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

/// Lanes of selection run over the same passes (see the module documentation).
pub(crate) struct Selection {
    pub(crate) lanes: Vec<Lane>,
    /// Entries in each lane's vector (the tensor's size).
    n: u64,
    /// Per lane, candidate pairs stored in the collect pass under way; past
    /// [`MAX_CANDIDATES`] the lane stops storing and takes the constant-memory road.
    stored: Vec<AtomicU64>,
}

impl Selection {
    /// Lanes over vectors of `n` entries.
    pub(crate) fn new(lanes: Vec<Lane>, n: u64) -> Selection {
        let stored = lanes.iter().map(|_| AtomicU64::new(0)).collect();
        Selection { lanes, n, stored }
    }

    /// The sample stride for a vector of `n` entries: large ones are histogrammed on a
    /// sample, small ones exactly.
    pub(crate) fn stride_for(n: usize) -> usize {
        if n >= SAMPLE_FROM {
            SAMPLE_STRIDE
        } else {
            1
        }
    }

    /// Whether some lane still needs a pass.
    pub(crate) fn pending(&self) -> bool {
        self.lanes.iter().any(Lane::pending)
    }

    /// The stride of the next pass.
    pub(crate) fn stride(&self) -> usize {
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

    pub(crate) fn partial(&self) -> Partial {
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

    /// Whether `partial` is one of this selection's.
    pub(crate) fn owns(partial: &Partial) -> bool {
        partial.is::<Vec<Part>>()
    }

    /// Folds chunk `index` into `partial`; `values(l)` is lane `l`'s values there.
    pub(crate) fn observe<'v>(
        &self,
        index: usize,
        values: impl Fn(usize) -> &'v [f32],
        partial: &mut Partial,
    ) {
        let parts = partial
            .downcast_mut::<Vec<Part>>()
            .expect("selection partial");
        for (l, (lane, part)) in self.lanes.iter().zip(parts.iter_mut()).enumerate() {
            match (lane, part) {
                (Lane::Histogram { stride, .. }, Part::Histogram(h))
                    if index.is_multiple_of(*stride) =>
                {
                    for &x in values(l) {
                        h[bucket(abs_bits(x))] += 1;
                    }
                }
                (Lane::Collect { lo, hi, .. }, Part::Collect(above, lists)) => {
                    let (count, pairs) = collect(values(l), *lo, *hi);
                    *above += count;
                    let stored = self.stored[l].fetch_add(pairs.len() as u64, Ordering::Relaxed);
                    // Past the budget the lane keeps counting but stores nothing more;
                    // its conclusion sees the overflow and starts the exact road.
                    let pairs = if stored + pairs.len() as u64 > MAX_CANDIDATES {
                        Vec::new()
                    } else {
                        pairs
                    };
                    lists.push((index, pairs));
                }
                (Lane::Low { bucket: b, .. }, Part::Histogram(h)) => {
                    for &x in values(l) {
                        let bits = abs_bits(x);
                        if bucket(bits) == *b {
                            h[(bits & 0xffff) as usize] += 1;
                        }
                    }
                }
                (Lane::CountTies { bits, .. }, Part::Ties(counts)) => {
                    let n = values(l).iter().filter(|&&x| abs_bits(x) == *bits).count();
                    counts.push((index, n as u64));
                }
                _ => {}
            }
        }
    }

    pub(crate) fn combine(mut a: Partial, b: Partial) -> Partial {
        let av = a.downcast_mut::<Vec<Part>>().expect("selection partial");
        let bv = b.downcast::<Vec<Part>>().expect("selection partial");
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

    pub(crate) fn conclude(&mut self, total: Partial) {
        let parts = total.downcast::<Vec<Part>>().expect("selection partial");
        for (l, (lane, part)) in self.lanes.iter_mut().zip(*parts).enumerate() {
            *lane = match (&*lane, part) {
                (&Lane::Histogram { keep, stride }, Part::Histogram(h)) => {
                    window(&h, keep, stride, self.n)
                }
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
    }
}

reefknot_simd::multiversion! {
    max_avx2:
    /// The entries of `values` above bucket `hi`, and the bit patterns of those in
    /// buckets `lo..=hi` in element order.
    ///
    /// Runs of 8 entries are first reduced to a count and whether any lies in the
    /// window, by loops that vectorise; only the runs holding a candidate are visited
    /// again, to copy their candidates out.
    fn scan(values: &[f32], lo: u32, hi: u32) -> (u64, Vec<u32>) {
        let width = hi - lo;
        let mut above = 0u64;
        let mut list = Vec::new();
        let mut runs = values.chunks_exact(8);
        for run in &mut runs {
            let mut n = 0u32;
            let mut inside = 0u32;
            for &x in run {
                let key = abs_bits(x) >> 16;
                n += u32::from(key > hi);
                inside |= u32::from(key.wrapping_sub(lo) <= width);
            }
            above += u64::from(n);
            if inside != 0 {
                // Compacted without branches: a window over weights that went through
                // bf16 holds a few per cent of the entries, too many for a branch
                // predictor to guess which.
                let mut found = [0u32; 8];
                let mut m = 0;
                for &x in run {
                    let b = abs_bits(x);
                    found[m & 7] = b;
                    m += usize::from((b >> 16).wrapping_sub(lo) <= width);
                }
                list.extend_from_slice(&found[..m]);
            }
        }
        for &x in runs.remainder() {
            let b = abs_bits(x);
            let key = b >> 16;
            above += u64::from(key > hi);
            if key.wrapping_sub(lo) <= width {
                list.push(b);
            }
        }
        (above, list)
    }
}

/// Counts the entries of `values` above bucket `hi` and returns the bit patterns of
/// those in buckets `lo..=hi` as `(pattern, count)`, distinct patterns, largest first
/// (magnitudes cluster: merged from low-precision weights, many are equal).
fn collect(values: &[f32], lo: usize, hi: usize) -> (u64, Vec<(u32, u32)>) {
    let (lo, hi) = (lo as u32, hi as u32);
    let (above, mut list) = scan(values, lo, hi);
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

/// From a histogram (of everything when `stride == 1`, else of a sample of the `n`
/// entries), the window of buckets to collect.
fn window(hist: &[u64], keep: u64, stride: usize, n: u64) -> Lane {
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
    // The keep-th largest of n sits near rank keep·m/n of the m sampled entries (the
    // sample is every stride-th chunk: m is near n/stride only when the chunks are many);
    // allow MARGIN_SIGMAS binomial standard deviations on each side.
    let frac = (keep as f64 / (n as f64).max(1.0)).min(1.0);
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
            window(&hist, 100, 1, 1 << 40),
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
        let sampled: u64 = hist.iter().sum();
        // A sample of an eighth, and one of 3 chunks in 19: the window holds the rank
        // the keep-th largest has in the sample either way.
        for (n, keep, rank) in [
            (8 * sampled, 8 * 400, 400),
            (sampled * 19 / 3, sampled * 19 / 3 / 4, sampled / 4),
        ] {
            let Lane::Collect { lo, hi, .. } = window(&hist, keep, 8, n) else {
                panic!()
            };
            assert!(lo <= hi);
            let above_hi: u64 = hist[hi + 1..].iter().sum();
            let from_lo: u64 = hist[lo..].iter().sum();
            assert!(
                above_hi < rank && from_lo >= rank,
                "{n}: {above_hi} {from_lo} {rank}"
            );
        }
    }

    /// The scan of every vector level gives what its definition says: the count above
    /// the window and the window's entries in element order, whatever the length.
    #[test]
    fn the_scan_is_its_definition_at_every_vector_level() {
        let mut s = 0x2545_F491_4F6C_DD1Du64;
        let values: Vec<f32> = (0..10_007)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                // Few distinct magnitudes around 1e-3, both signs, some zeros.
                let m = (s % 64) as f32 * 3e-5;
                if s & 1 == 0 {
                    m
                } else {
                    -m
                }
            })
            .collect();
        let key = |x: f32| abs_bits(x) >> 16;
        let (lo, hi) = (key(6e-4), key(1.2e-3));
        for len in [0, 5, 8, 31, 64, 10_007] {
            let v = &values[..len];
            let want = (
                v.iter().filter(|&&x| key(x) > hi).count() as u64,
                v.iter()
                    .map(|&x| abs_bits(x))
                    .filter(|&b| (lo..=hi).contains(&(b >> 16)))
                    .collect::<Vec<u32>>(),
            );
            assert!(
                !want.1.is_empty() || len < 64,
                "{len}: the window holds entries"
            );
            assert_eq!(
                reefknot_simd::at_every_level(|| scan(v, lo, hi)),
                want,
                "{len} entries"
            );
        }
    }
}

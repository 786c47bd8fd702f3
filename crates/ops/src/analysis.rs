//! Measuring one tensor's task vectors: the figures `reefknot analyze` reports.
//!
//! A [`Probe`] is a [`Kernel`] that only observes: the executor streams a tensor's
//! task vectors through its statistics passes as it does for any operator, and the
//! probe's conclusion is a [`TensorStats`] of sums that add across tensors.
//!
//! Three kinds of work, in as few passes as they allow (three, usually: the refining
//! needs two, and the election runs beside the second, in the first pass after the
//! selection is resolved):
//!
//! 1. **Everything that needs no threshold**: `‖θ_base‖²`, per model `‖δ‖₁`, the
//!    entries that are non-zero and not finite, per pair `⟨δ_a, δ_b⟩` and how often
//!    their signs agree; and per model an exact histogram of `|δ|` by the high 12 bits
//!    of its float bit pattern (the exponent and 4 mantissa bits), holding each
//!    bucket's count and `Σ M²` over the entries' 24-bit integer significands `M`.
//!    Within a bucket the exponent is fixed, so the sum is an integer that no order of
//!    additions changes, and `‖δ‖²` is the sum of the buckets' energies. The same pass
//!    samples the histogram of the [`Selection`] that `trim` uses, for the recipe's
//!    density.
//! 2. **Refining**: each energy share asked for (the top 1, 5, 10, 20 and 50 % of the
//!    entries by `|δ|`, and the recipe's density) lies in one bucket; its entries are
//!    histogrammed by the next 10 bits, then, where needed, by the last 9, where every
//!    entry of a bucket has the same value — so the energy of the top `r` entries is
//!    exact whichever equal entries are counted. The selection collects its candidates
//!    in the same passes.
//! 3. **The election**: with each model's entries trimmed to the recipe's density
//!    exactly as `trim` keeps them (ties in flat-index order), the sign `elect`
//!    chooses per entry (`Σ_i w_i·δ̃_i ≥ 0` in model order, as `elect(mass)` sums),
//!    each model's kept mass and the part of it that disagrees with the elected sign
//!    (what `disjoint` discards), and per pair the entries both keep and how often their
//!    signs agree.
//!
//! Floating sums are taken per block of [`BLOCK`] elements (in eight interleaved
//! partial sums, added in a fixed order) and added as [`OrderFreeSum`]s, so no figure
//! depends on the thread count or the chunk size. Counts of signs and of lost entries
//! are taken on bit patterns without branches: they depend on data no predictor
//! guesses.
//! Entries that are NaN or infinite are counted and otherwise left out (as zeros).
//!
//! The energy curve — the share kept at each density 1 %, 2 %, … 100 % — is read off the
//! first pass's histogram: entries above the bucket holding the cut count whole, and the
//! `j` largest of a bucket's `c` entries at least `j/c` of its energy, so each point is a
//! lower bound, exact at bucket edges and short by less than the cut bucket's share.
//! [`TensorStats::suggested_density`]'s answer therefore always keeps what it promises.

use crate::builtin::select::{abs_bits, Lane, Selection};
use crate::kernel::{Chunk, Kernel, Partial};
use crate::{OpError, OrderFreeSum, BLOCK};

/// The fractions of entries whose share of a task vector's energy is reported.
pub const SHARES: [f64; 5] = [0.01, 0.05, 0.10, 0.20, 0.50];

/// Points of the energy curve: densities `1/STEPS, 2/STEPS, …, 1`.
pub const STEPS: usize = 100;

/// Buckets of the first histogram: the high 12 bits of `|x|` (sign clear).
const TOP: usize = 1 << 12;
/// Buckets of the second: the next 10 bits.
const MID: usize = 1 << 10;
/// Buckets of the third: the low 9 bits.
const LOW: usize = 1 << 9;

/// The number of entries a density keeps of `n`: `trim`'s `max(1, ⌊k·n⌋)`, all for
/// `k ≥ 1` and none for `k ≤ 0`.
pub fn kept_count(k: f64, n: u64) -> u64 {
    if k >= 1.0 {
        n
    } else if k <= 0.0 || n == 0 {
        0
    } else {
        ((k * n as f64).floor() as u64).clamp(1, n)
    }
}

/// A float's magnitude bits split for the histograms, and its significand's square.
#[inline(always)]
fn parts(bits: u32) -> (usize, u64) {
    // The implicit leading bit, present unless the number is subnormal (or zero).
    let implicit = u32::from(bits >> 23 != 0) << 23;
    let m = (bits & 0x7f_ffff) | implicit;
    ((bits >> 19) as usize, u64::from(m) * u64::from(m))
}

/// `Σ f(x_j, y_j)` over a block in eight interleaved partial sums, added in a fixed
/// order: the same bits for the same block whatever the chunking, and independent
/// additions the processor can overlap (one running sum waits on each addition).
#[inline(always)]
fn lanes(x: &[f32], y: &[f32], f: impl Fn(f32, f32) -> f64) -> f64 {
    let mut acc = [0f64; 8];
    let (xs, ys) = (x.chunks_exact(8), y.chunks_exact(8));
    let (xr, yr) = (xs.remainder(), ys.remainder());
    for (a, b) in xs.zip(ys) {
        for l in 0..8 {
            acc[l] += f(a[l], b[l]);
        }
    }
    for (l, (&a, &b)) in xr.iter().zip(yr).enumerate() {
        acc[l] += f(a, b);
    }
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
}

// The loops over every entry, compiled per vector level (`reefknot_simd`); each sums
// a block with `lanes`, or counts on bit patterns, without branches.

reefknot_simd::multiversion! {
    max_avx2:
    /// Over the entries non-zero in both `x` and `y`: how many there are, and how many
    /// have the same sign (no NaN here).
    fn sign_counts(x: &[f32], y: &[f32]) -> (u64, u64) {
        let (mut both, mut agree) = (0u64, 0u64);
        // u32 counts vectorise eight to a register; a piece cannot overflow them.
        for (p, q) in x.chunks(1 << 20).zip(y.chunks(1 << 20)) {
            let (mut b, mut a) = (0u32, 0u32);
            for (&u, &v) in p.iter().zip(q) {
                let (s, t) = (u.to_bits(), v.to_bits());
                let nz = (s & 0x7fff_ffff != 0) & (t & 0x7fff_ffff != 0);
                b += u32::from(nz);
                a += u32::from(nz & ((s ^ t) >> 31 == 0));
            }
            both += u64::from(b);
            agree += u64::from(a);
        }
        (both, agree)
    }
}

reefknot_simd::multiversion! {
    max_avx2:
    /// How many entries are NaN or infinite (all exponent bits set).
    fn nonfinite(x: &[f32]) -> u64 {
        x.chunks(1 << 20)
            .map(|b| {
                let mut n = 0u32;
                for v in b {
                    n += u32::from(v.to_bits() & 0x7f80_0000 == 0x7f80_0000);
                }
                u64::from(n)
            })
            .sum()
    }
}

reefknot_simd::multiversion! {
    max_avx2:
    /// `Σ x²` over the finite entries of a block.
    fn finite_energy(x: &[f32]) -> f64 {
        lanes(x, x, |a, _| {
            let a = if a.is_finite() { f64::from(a) } else { 0.0 };
            a * a
        })
    }
}

reefknot_simd::multiversion! {
    max_avx2:
    /// `Σ |x|` over a block.
    fn block_l1(x: &[f32]) -> f64 {
        lanes(x, x, |a, _| f64::from(a.abs()))
    }
}

reefknot_simd::multiversion! {
    max_avx2:
    /// `Σ x·y` over a block.
    fn block_dot(x: &[f32], y: &[f32]) -> f64 {
        lanes(x, y, |a, b| f64::from(a) * f64::from(b))
    }
}

reefknot_simd::multiversion! {
    max_avx2:
    /// Over a block of one model's kept entries `x` (weight `w`) and the elected signs
    /// (±1): the L1 mass of the entries whose weighted sign is not the elected one.
    fn block_lost(x: &[f32], signs: &[f32], w: f32) -> f64 {
        lanes(x, signs, |x, s| {
            let u = w * x;
            let wins = (u != 0.0) & ((u > 0.0) == (s > 0.0));
            let lost = (x != 0.0) & !wins;
            f64::from(x.abs()) * f64::from(u8::from(lost))
        })
    }
}

reefknot_simd::multiversion! {
    max_avx2:
    /// `sign += w · x`, element by element.
    fn add_weighted(sign: &mut [f32], x: &[f32], w: f32) {
        for (s, &v) in sign.iter_mut().zip(x) {
            *s += w * v;
        }
    }
}

/// The energy of `sum_m2` in top bucket `bucket`: `Σ M² · 2^(2(e − 150))`, `e` the
/// bucket's biased exponent (subnormals count as exponent 1).
fn bucket_energy(bucket: usize, sum_m2: u128) -> f64 {
    let exponent = ((bucket >> 4) as i32).max(1);
    sum_m2 as f64 * 2f64.powi(2 * (exponent - 150))
}

/// The statistics of one tensor (or, added up, of many).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TensorStats {
    /// Tensors added into these figures.
    pub tensors: usize,
    /// Elements per model.
    pub numel: u64,
    /// `‖θ_base‖²` over the finite entries.
    pub base_energy: f64,
    /// Per model.
    pub models: Vec<ModelStats>,
    /// Per pair `a < b`, ordered by `a` then `b`.
    pub pairs: Vec<PairStats>,
}

/// One model's task vector.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelStats {
    /// `‖δ‖²`.
    pub energy: f64,
    /// `‖δ‖₁`.
    pub l1: f64,
    /// Entries that are not zero.
    pub nonzero: u64,
    /// Entries that are NaN or infinite.
    pub nonfinite: u64,
    /// The energy of the top `max(1, ⌊s·n⌋)` entries by `|δ|` for each share `s` of
    /// [`SHARES`], per tensor, exact.
    pub top_energy: [f64; SHARES.len()],
    /// A lower bound of the energy kept at density `(p + 1)/STEPS`, `p < STEPS`, per
    /// tensor (the last point is `energy`).
    pub curve: Vec<f64>,
    /// Entries trimmed to the density (`trim`'s count).
    pub kept: u64,
    /// The energy of those entries, exact.
    pub kept_energy: f64,
    /// Their L1 mass.
    pub kept_mass: f64,
    /// The part of it whose weighted sign is not the elected one: what `disjoint`
    /// discards.
    pub discarded_mass: f64,
    /// The density the election was measured at (the last tensor's, when tensors of
    /// different densities were added).
    pub density: f64,
    /// Whether tensors of different densities were added.
    pub mixed_density: bool,
}

/// Two models' task vectors.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PairStats {
    /// The first model.
    pub a: usize,
    /// The second (`b > a`).
    pub b: usize,
    /// `⟨δ_a, δ_b⟩`.
    pub dot: f64,
    /// Entries non-zero in both.
    pub both: u64,
    /// Of those, the entries whose signs agree.
    pub agree: u64,
    /// Entries both keep at their densities (and non-zero in both).
    pub top_both: u64,
    /// Of those, the entries whose signs agree.
    pub top_agree: u64,
}

impl TensorStats {
    /// Adds another tensor's figures (same number of models).
    pub fn add(&mut self, other: &TensorStats) {
        if self.models.is_empty() {
            *self = other.clone();
            return;
        }
        self.tensors += other.tensors;
        self.numel += other.numel;
        self.base_energy += other.base_energy;
        for (m, o) in self.models.iter_mut().zip(&other.models) {
            m.energy += o.energy;
            m.l1 += o.l1;
            m.nonzero += o.nonzero;
            m.nonfinite += o.nonfinite;
            for (x, y) in m.top_energy.iter_mut().zip(o.top_energy) {
                *x += y;
            }
            for (x, y) in m.curve.iter_mut().zip(&o.curve) {
                *x += y;
            }
            m.kept += o.kept;
            m.kept_energy += o.kept_energy;
            m.kept_mass += o.kept_mass;
            m.discarded_mass += o.discarded_mass;
            m.mixed_density |= o.mixed_density || m.density != o.density;
            m.density = o.density;
        }
        for (p, o) in self.pairs.iter_mut().zip(&other.pairs) {
            p.dot += o.dot;
            p.both += o.both;
            p.agree += o.agree;
            p.top_both += o.top_both;
            p.top_agree += o.top_agree;
        }
    }

    /// `‖δ_i‖`.
    pub fn norm(&self, i: usize) -> f64 {
        self.models[i].energy.sqrt()
    }

    /// `‖δ_i‖ / ‖θ_base‖`; `None` for a zero base.
    pub fn relative_norm(&self, i: usize) -> Option<f64> {
        ratio(self.norm(i), self.base_energy.sqrt())
    }

    /// The share of model `i`'s energy in its top `SHARES[s]` entries of each tensor.
    pub fn energy_share(&self, i: usize, s: usize) -> Option<f64> {
        let m = &self.models[i];
        ratio(m.top_energy[s], m.energy)
    }

    /// The share of model `i`'s energy its kept entries hold.
    pub fn kept_energy_share(&self, i: usize) -> Option<f64> {
        let m = &self.models[i];
        ratio(m.kept_energy, m.energy)
    }

    /// The share of model `i`'s kept L1 mass the election discards.
    pub fn discarded_share(&self, i: usize) -> Option<f64> {
        let m = &self.models[i];
        ratio(m.discarded_mass, m.kept_mass)
    }

    /// `cos(δ_a, δ_b)` of pair `p`.
    pub fn cosine(&self, p: &PairStats) -> Option<f64> {
        ratio(
            p.dot,
            (self.models[p.a].energy * self.models[p.b].energy).sqrt(),
        )
    }

    /// The entries both models of `p` keep, as a share of the smaller kept set.
    pub fn top_overlap(&self, p: &PairStats) -> Option<f64> {
        count_ratio(p.top_both, self.models[p.a].kept.min(self.models[p.b].kept))
    }

    /// The smallest density on the curve's grid (`1/STEPS` steps) at which model `i`
    /// keeps at least `share` of its energy; `None` for a zero task vector.
    pub fn suggested_density(&self, i: usize, share: f64) -> Option<f64> {
        let m = &self.models[i];
        if m.energy <= 0.0 {
            return None;
        }
        let p = m
            .curve
            .iter()
            .position(|&e| e >= share * m.energy)
            .unwrap_or(STEPS - 1);
        Some((p + 1) as f64 / STEPS as f64)
    }
}

impl PairStats {
    /// Over the entries non-zero in both, the share whose signs agree.
    pub fn sign_agreement(&self) -> Option<f64> {
        count_ratio(self.agree, self.both)
    }

    /// Over the entries both keep, the share whose signs agree.
    pub fn top_sign_agreement(&self) -> Option<f64> {
        count_ratio(self.top_agree, self.top_both)
    }

    /// Over the entries both keep, the share whose signs differ: what TIES resolves.
    pub fn top_conflict(&self) -> Option<f64> {
        self.top_sign_agreement().map(|a| 1.0 - a)
    }
}

/// `a / b`, when that is a number (`b > 0`, both finite).
fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0 && a.is_finite() && b.is_finite()).then(|| a / b)
}

/// `a / b` of counts, when `b > 0`.
fn count_ratio(a: u64, b: u64) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64)
}

/// What the probe measures an election at: each model's density (`trim`'s `k`).
#[derive(Clone, Debug)]
pub struct ProbeSpec {
    /// Per model.
    pub density: Vec<f64>,
}

/// Where one energy share stands.
#[derive(Clone, Copy, Debug)]
enum Refine {
    /// Found.
    Done(f64),
    /// `take` entries of top bucket `top` are still to count, after `above` energy.
    Mid { top: usize, take: u64, above: f64 },
    /// `take` entries of `(top, mid)` remain; all of them have the same value there
    /// once the low bucket is known.
    Low {
        top: usize,
        mid: usize,
        take: u64,
        above: f64,
    },
}

/// No histogram.
const NONE: u32 = u32::MAX;

thread_local! {
    /// A worker's copies of task vectors with their NaN and infinities zeroed.
    static SPARES: std::cell::RefCell<Vec<Vec<f32>>> = const { std::cell::RefCell::new(Vec::new()) };
    /// A worker's scratch for the election: the trimmed task vectors and the signs.
    static ELECTION: std::cell::RefCell<(Vec<f32>, Vec<f32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// One model's refining histograms, looked up by top bucket.
#[derive(Default)]
struct Slots {
    /// Per top bucket, the index of its mid-level histogram ([`NONE`]: none); empty
    /// when the model has none.
    mid: Vec<u32>,
    /// Per top bucket, where its low-level keys start in `low` ([`NONE`]: none).
    low_from: Vec<u32>,
    /// `(top bucket << 10 | mid bucket, histogram index)`, sorted.
    low: Vec<(u32, usize)>,
}

impl Slots {
    fn is_empty(&self) -> bool {
        self.mid.is_empty() && self.low.is_empty()
    }

    fn insert_mid(&mut self, top: usize, key: usize) {
        if self.mid.is_empty() {
            self.mid = vec![NONE; TOP];
        }
        self.mid[top] = key as u32;
    }

    /// Appends a low-level key; keys come in increasing prefix order.
    fn push_low(&mut self, prefix: u32, key: usize) {
        if self.low_from.is_empty() {
            self.low_from = vec![NONE; TOP];
        }
        let top = (prefix >> 10) as usize;
        if self.low_from[top] == NONE {
            self.low_from[top] = self.low.len() as u32;
        }
        self.low.push((prefix, key));
    }
}

/// The pass-one histogram of one model.
struct TopHist {
    count: Vec<u64>,
    m2: Vec<u128>,
}

/// A pass's accumulator.
struct ProbePart {
    /// Pass one: per model its histogram, `‖δ‖₁`, non-zero and non-finite entries;
    /// `‖θ_base‖²`; per pair the dot product and the sign counts.
    first: Option<First>,
    /// Refining: per key of [`Probe::mid_keys`] counts and `Σ M²`; per key of
    /// [`Probe::low_keys`] counts.
    /// `mid_keys.len() × MID` counts and `Σ M²`, key by key.
    mid: (Vec<u64>, Vec<u128>),
    low: Vec<Vec<u64>>,
    /// The selection's own.
    selection: Option<Partial>,
    /// The election pass.
    election: Option<Election>,
}

struct First {
    hist: Vec<TopHist>,
    l1: Vec<OrderFreeSum>,
    nonzero: Vec<u64>,
    nonfinite: Vec<u64>,
    base: OrderFreeSum,
    dot: Vec<OrderFreeSum>,
    both: Vec<u64>,
    agree: Vec<u64>,
}

struct Election {
    kept_mass: Vec<OrderFreeSum>,
    discarded: Vec<OrderFreeSum>,
    top_both: Vec<u64>,
    top_agree: Vec<u64>,
}

/// Measures one tensor's task vectors (see the module documentation).
pub struct Probe {
    models: usize,
    n: u64,
    density: Vec<f64>,
    /// Whether pass one has run.
    first_done: bool,
    /// Whether the election has been measured.
    elected: bool,
    /// Per model: the ranks whose energy is asked for ([`SHARES`], then the density).
    refine: Vec<Vec<Refine>>,
    /// Distinct `(model, top bucket)` being refined this pass.
    mid_keys: Vec<(usize, usize)>,
    /// Distinct `(model, top bucket, mid bucket)` being refined this pass.
    low_keys: Vec<(usize, usize, usize)>,
    /// Per model, the look-up of those histograms.
    slots: Vec<Slots>,
    selection: Selection,
    stats: TensorStats,
}

impl Probe {
    /// A probe of a tensor of `numel` elements and `spec.density.len()` models.
    pub fn new(spec: &ProbeSpec, numel: usize) -> Probe {
        let models = spec.density.len();
        let n = numel as u64;
        let stride = Selection::stride_for(numel);
        let lanes = spec
            .density
            .iter()
            .map(|&k| Lane::keep(kept_count(k, n), n, stride))
            .collect();
        Probe {
            models,
            n,
            density: spec.density.clone(),
            first_done: false,
            elected: false,
            refine: vec![Vec::new(); models],
            mid_keys: Vec::new(),
            low_keys: Vec::new(),
            slots: Vec::new(),
            selection: Selection::new(lanes, n),
            stats: TensorStats::default(),
        }
    }

    /// The figures, once the executor has run every pass.
    pub fn stats(&self) -> &TensorStats {
        debug_assert!(!self.wants_pass(0), "the probe's passes have not all run");
        &self.stats
    }

    fn pairs(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        (0..self.models).flat_map(move |a| (a + 1..self.models).map(move |b| (a, b)))
    }

    /// Each model's task vector in `chunk` with NaN and infinities as zeros (copied into
    /// `spares` where there are any), and how many there were.
    fn clean<'c>(chunk: &'c Chunk<'_>, spares: &'c mut [Vec<f32>]) -> (Vec<&'c [f32]>, Vec<u64>) {
        let mut counts = Vec::with_capacity(spares.len());
        let views = spares
            .iter_mut()
            .enumerate()
            .map(|(i, spare)| {
                let v = chunk.model(i);
                let bad = nonfinite(v);
                counts.push(bad);
                if bad == 0 {
                    return v;
                }
                spare.clear();
                spare.extend(v.iter().map(|&x| if x.is_finite() { x } else { 0.0 }));
                &spare[..]
            })
            .collect();
        (views, counts)
    }

    fn observe_first(&self, chunk: &Chunk<'_>, clean: &[&[f32]], bad: &[u64], part: &mut First) {
        for block in chunk.base.chunks(BLOCK) {
            part.base.add(finite_energy(block));
        }
        for (n, b) in part.nonfinite.iter_mut().zip(bad) {
            *n += b;
        }
        for (i, v) in clean.iter().enumerate() {
            let h = &mut part.hist[i];
            // Slices, so that the loop keeps their addresses in registers.
            let (count, sums) = (&mut h.count[..], &mut h.m2[..]);
            let mut nonzero = 0u64;
            for &x in *v {
                let bits = abs_bits(x);
                let (bucket, m2) = parts(bits);
                count[bucket] += 1;
                sums[bucket] += u128::from(m2);
                nonzero += u64::from(bits != 0);
            }
            part.nonzero[i] += nonzero;
        }
        for (i, v) in clean.iter().enumerate() {
            for block in v.chunks(BLOCK) {
                part.l1[i].add(block_l1(block));
            }
        }
        for (p, (a, b)) in self.pairs().enumerate() {
            let (x, y) = (clean[a], clean[b]);
            for (bx, by) in x.chunks(BLOCK).zip(y.chunks(BLOCK)) {
                part.dot[p].add(block_dot(bx, by));
            }
            let (both, agree) = sign_counts(x, y);
            part.both[p] += both;
            part.agree[p] += agree;
        }
    }

    fn observe_refine(&self, clean: &[&[f32]], part: &mut ProbePart) {
        for (i, slots) in self.slots.iter().enumerate() {
            if slots.is_empty() {
                continue;
            }
            if !slots.mid.is_empty() {
                let (count, m2) = (&mut part.mid.0[..], &mut part.mid.1[..]);
                let table = &slots.mid[..];
                for &x in clean[i] {
                    let bits = abs_bits(x);
                    let key = table[(bits >> 19) as usize];
                    if key != NONE {
                        let at = key as usize * MID + ((bits >> 9) & 0x3ff) as usize;
                        count[at] += 1;
                        m2[at] += u128::from(parts(bits).1);
                    }
                }
            }
            if slots.low.is_empty() {
                continue;
            }
            for &x in clean[i] {
                let bits = abs_bits(x);
                let top = (bits >> 19) as usize;
                let from = slots.low_from[top];
                if from == NONE {
                    continue;
                }
                let prefix = bits >> 9;
                for &(p, k) in &slots.low[from as usize..] {
                    if p >> 10 != top as u32 {
                        break;
                    }
                    if p == prefix {
                        part.low[k][(bits & 0x1ff) as usize] += 1;
                    }
                }
            }
        }
    }

    fn observe_election(&self, chunk: &Chunk<'_>, clean: &[&[f32]], part: &mut Election) {
        let (t, len) = (self.models, chunk.len);
        ELECTION.with_borrow_mut(|(kept, sign)| {
            kept.resize(t * len, 0.0);
            sign.resize(len, 0.0);
            self.elect(chunk, clean, &mut kept[..t * len], &mut sign[..len], part);
        });
    }

    /// The election over one chunk, in the worker's scratch (`kept`: `T × len`).
    fn elect(
        &self,
        chunk: &Chunk<'_>,
        clean: &[&[f32]],
        kept: &mut [f32],
        sign: &mut [f32],
        part: &mut Election,
    ) {
        let (t, len) = (self.models, chunk.len);
        for (i, v) in clean.iter().enumerate() {
            let k = &mut kept[i * len..(i + 1) * len];
            k.copy_from_slice(v);
            self.selection.lanes[i].select(chunk.index, k);
        }
        // `Σ_i w_i·δ̃_i` in model order, per element, as `elect` sums.
        sign.fill(0.0);
        for i in 0..t {
            add_weighted(sign, &kept[i * len..(i + 1) * len], chunk.weights[i]);
        }
        for s in sign.iter_mut() {
            *s = if *s >= 0.0 { 1.0 } else { -1.0 };
        }
        let kept = &*kept;
        let sign = &*sign;
        for i in 0..t {
            let k = &kept[i * len..(i + 1) * len];
            let w = chunk.weights[i];
            for (block, signs) in k.chunks(BLOCK).zip(sign.chunks(BLOCK)) {
                part.kept_mass[i].add(block_l1(block));
                // Without branches: whether a kept entry loses is data, not a pattern
                // the processor could predict.
                part.discarded[i].add(block_lost(block, signs, w));
            }
        }
        for (p, (a, b)) in self.pairs().enumerate() {
            let (x, y) = (&kept[a * len..(a + 1) * len], &kept[b * len..(b + 1) * len]);
            let (both, agree) = sign_counts(x, y);
            part.top_both[p] += both;
            part.top_agree[p] += agree;
        }
    }

    /// Takes pass one's totals: the figures it gives, and where each share lies.
    fn conclude_first(&mut self, first: First) {
        let t = self.models;
        self.stats = TensorStats {
            tensors: 1,
            numel: self.n,
            base_energy: first.base.value(),
            models: Vec::with_capacity(t),
            pairs: self
                .pairs()
                .enumerate()
                .map(|(p, (a, b))| PairStats {
                    a,
                    b,
                    dot: first.dot[p].value(),
                    both: first.both[p],
                    agree: first.agree[p],
                    top_both: 0,
                    top_agree: 0,
                })
                .collect(),
        };
        for (i, h) in first.hist.iter().enumerate() {
            let energies: Vec<f64> = (0..TOP).map(|b| bucket_energy(b, h.m2[b])).collect();
            // From the largest bucket down: entries and energy above each bucket.
            let mut ranks: Vec<u64> = SHARES.iter().map(|&s| kept_count(s, self.n)).collect();
            ranks.push(kept_count(self.density[i], self.n));
            let curve_ranks: Vec<u64> = (1..=STEPS)
                .map(|p| kept_count(p as f64 / STEPS as f64, self.n))
                .collect();
            let mut refine: Vec<Refine> = vec![Refine::Done(0.0); ranks.len()];
            let mut curve = vec![0f64; STEPS];
            let (mut above_count, mut above_energy) = (0u64, 0f64);
            for b in (0..TOP).rev() {
                let c = h.count[b];
                if c == 0 {
                    continue;
                }
                for (r, &rank) in ranks.iter().enumerate() {
                    if rank > above_count && rank <= above_count + c {
                        let take = rank - above_count;
                        refine[r] = if take == c {
                            Refine::Done(above_energy + energies[b])
                        } else {
                            Refine::Mid {
                                top: b,
                                take,
                                above: above_energy,
                            }
                        };
                    }
                }
                for (p, &rank) in curve_ranks.iter().enumerate() {
                    if rank > above_count && rank <= above_count + c {
                        let take = rank - above_count;
                        curve[p] = above_energy + energies[b] * (take as f64 / c as f64);
                    }
                }
                above_count += c;
                above_energy += energies[b];
            }
            // Ranks beyond the non-zero entries keep only zeros: the energy of all.
            for (r, &rank) in ranks.iter().enumerate() {
                if rank > above_count {
                    refine[r] = Refine::Done(above_energy);
                }
            }
            for (p, &rank) in curve_ranks.iter().enumerate() {
                if rank > above_count {
                    curve[p] = above_energy;
                }
            }
            if let Some(last) = curve.last_mut() {
                *last = above_energy;
            }
            self.refine[i] = refine;
            self.stats.models.push(ModelStats {
                energy: above_energy,
                l1: first.l1[i].value(),
                nonzero: first.nonzero[i],
                nonfinite: first.nonfinite[i],
                curve,
                kept: kept_count(self.density[i], self.n),
                density: self.density[i],
                ..ModelStats::default()
            });
        }
        self.plan_refinement();
    }

    /// The histograms the next pass needs, and each model's look-up of them.
    fn plan_refinement(&mut self) {
        self.find_keys();
        self.slots = (0..self.models).map(|_| Slots::default()).collect();
        for (k, &(i, top)) in self.mid_keys.iter().enumerate() {
            self.slots[i].insert_mid(top, k);
        }
        let mut low: Vec<(usize, u32, usize)> = self
            .low_keys
            .iter()
            .enumerate()
            .map(|(k, &(i, top, mid))| (i, ((top as u32) << 10) | mid as u32, k))
            .collect();
        low.sort_unstable();
        for (i, prefix, k) in low {
            self.slots[i].push_low(prefix, k);
        }
    }

    fn find_keys(&mut self) {
        self.mid_keys.clear();
        self.low_keys.clear();
        for (i, targets) in self.refine.iter().enumerate() {
            for r in targets {
                match *r {
                    Refine::Mid { top, .. } if !self.mid_keys.contains(&(i, top)) => {
                        self.mid_keys.push((i, top));
                    }
                    Refine::Low { top, mid, .. } if !self.low_keys.contains(&(i, top, mid)) => {
                        self.low_keys.push((i, top, mid));
                    }
                    _ => {}
                }
            }
        }
    }

    fn refining(&self) -> bool {
        !self.mid_keys.is_empty() || !self.low_keys.is_empty()
    }

    fn conclude_refine(&mut self, mid: (Vec<u64>, Vec<u128>), low: Vec<Vec<u64>>) {
        for (i, targets) in self.refine.iter_mut().enumerate() {
            for r in targets.iter_mut() {
                *r = match *r {
                    Refine::Mid { top, take, above } => {
                        let k = self
                            .mid_keys
                            .iter()
                            .position(|&key| key == (i, top))
                            .expect("a histogram per refined bucket");
                        let (count, m2) = (&mid.0[k * MID..], &mid.1[k * MID..]);
                        let (mut seen, mut energy) = (0u64, above);
                        let mut next = None;
                        for s in (0..MID).rev() {
                            let c = count[s];
                            if c == 0 {
                                continue;
                            }
                            let e = bucket_energy(top, m2[s]);
                            if take <= seen + c {
                                next = Some(if take == seen + c {
                                    Refine::Done(energy + e)
                                } else {
                                    Refine::Low {
                                        top,
                                        mid: s,
                                        take: take - seen,
                                        above: energy,
                                    }
                                });
                                break;
                            }
                            seen += c;
                            energy += e;
                        }
                        next.expect("the bucket holds the rank")
                    }
                    Refine::Low {
                        top,
                        mid,
                        take,
                        above,
                    } => {
                        let k = self
                            .low_keys
                            .iter()
                            .position(|&key| key == (i, top, mid))
                            .expect("a histogram per refined bucket");
                        let count = &low[k];
                        let (mut seen, mut energy) = (0u64, above);
                        let mut done = None;
                        for s in (0..LOW).rev() {
                            let c = count[s];
                            if c == 0 {
                                continue;
                            }
                            let bits = ((top as u32) << 19) | ((mid as u32) << 9) | s as u32;
                            let v = f64::from(f32::from_bits(bits));
                            let n = (take - seen).min(c);
                            energy += n as f64 * v * v;
                            seen += n;
                            if seen == take {
                                done = Some(Refine::Done(energy));
                                break;
                            }
                        }
                        done.expect("the bucket holds the rank")
                    }
                    done => done,
                }
            }
        }
        self.plan_refinement();
        if !self.refining() {
            for (i, targets) in self.refine.iter().enumerate() {
                let m = &mut self.stats.models[i];
                for (s, r) in targets.iter().enumerate() {
                    let Refine::Done(e) = *r else {
                        unreachable!("every share is found")
                    };
                    if s < SHARES.len() {
                        m.top_energy[s] = e;
                    } else {
                        m.kept_energy = e;
                    }
                }
            }
        }
    }
}

impl Kernel for Probe {
    fn wants_pass(&self, _pass: usize) -> bool {
        !self.first_done || self.refining() || !self.elected
    }

    fn partial(&self, _pass: usize) -> Partial {
        let t = self.models;
        let pairs = t * t.saturating_sub(1) / 2;
        let selecting = self.selection.pending();
        // The election runs in the first pass after the selection is resolved, beside
        // whatever refining is left.
        let electing = self.first_done && !selecting && !self.elected;
        Box::new(ProbePart {
            first: (!self.first_done).then(|| First {
                hist: (0..t)
                    .map(|_| TopHist {
                        count: vec![0; TOP],
                        m2: vec![0; TOP],
                    })
                    .collect(),
                l1: vec![OrderFreeSum::default(); t],
                nonzero: vec![0; t],
                nonfinite: vec![0; t],
                base: OrderFreeSum::default(),
                dot: vec![OrderFreeSum::default(); pairs],
                both: vec![0; pairs],
                agree: vec![0; pairs],
            }),
            mid: if self.mid_keys.is_empty() {
                (Vec::new(), Vec::new())
            } else {
                let n = self.mid_keys.len() * MID;
                (vec![0; n], vec![0; n])
            },
            low: self.low_keys.iter().map(|_| vec![0; LOW]).collect(),
            selection: selecting.then(|| self.selection.partial()),
            election: electing.then(|| Election {
                kept_mass: vec![OrderFreeSum::default(); t],
                discarded: vec![OrderFreeSum::default(); t],
                top_both: vec![0; pairs],
                top_agree: vec![0; pairs],
            }),
        })
    }

    fn observe(&self, _pass: usize, chunk: &Chunk<'_>, partial: &mut Partial) {
        let part = partial.downcast_mut::<ProbePart>().expect("probe partial");
        SPARES.with_borrow_mut(|spares| {
            spares.resize_with(self.models, Vec::new);
            let (clean, bad) = Probe::clean(chunk, &mut spares[..self.models]);
            if let Some(first) = part.first.as_mut() {
                self.observe_first(chunk, &clean, &bad, first);
            }
            self.observe_refine(&clean, part);
            if let Some(selection) = part.selection.as_mut() {
                self.selection.observe(chunk.index, |l| clean[l], selection);
            }
            if let Some(election) = part.election.as_mut() {
                self.observe_election(chunk, &clean, election);
            }
        });
    }

    fn combine(&self, _pass: usize, mut a: Partial, b: Partial) -> Partial {
        let x = a.downcast_mut::<ProbePart>().expect("probe partial");
        let y = *b.downcast::<ProbePart>().expect("probe partial");
        if let (Some(f), Some(g)) = (x.first.as_mut(), y.first) {
            for (h, k) in f.hist.iter_mut().zip(g.hist) {
                h.count.iter_mut().zip(k.count).for_each(|(p, q)| *p += q);
                h.m2.iter_mut().zip(k.m2).for_each(|(p, q)| *p += q);
            }
            let sums = f.l1.iter_mut().chain(f.dot.iter_mut());
            sums.zip(g.l1.into_iter().chain(g.dot))
                .for_each(|(p, q)| p.merge(q));
            f.base.merge(g.base);
            let counts = f
                .nonzero
                .iter_mut()
                .chain(f.nonfinite.iter_mut())
                .chain(f.both.iter_mut())
                .chain(f.agree.iter_mut());
            counts
                .zip(
                    g.nonzero
                        .into_iter()
                        .chain(g.nonfinite)
                        .chain(g.both)
                        .chain(g.agree),
                )
                .for_each(|(p, q)| *p += q);
        }
        x.mid.0.iter_mut().zip(y.mid.0).for_each(|(p, q)| *p += q);
        x.mid.1.iter_mut().zip(y.mid.1).for_each(|(p, q)| *p += q);
        for (c, d) in x.low.iter_mut().zip(y.low) {
            c.iter_mut().zip(d).for_each(|(p, q)| *p += q);
        }
        if let (Some(s), Some(t)) = (x.selection.take(), y.selection) {
            x.selection = Some(Selection::combine(s, t));
        }
        if let (Some(e), Some(f)) = (x.election.as_mut(), y.election) {
            let sums = e.kept_mass.iter_mut().chain(e.discarded.iter_mut());
            sums.zip(f.kept_mass.into_iter().chain(f.discarded))
                .for_each(|(p, q)| p.merge(q));
            let counts = e.top_both.iter_mut().chain(e.top_agree.iter_mut());
            counts
                .zip(f.top_both.into_iter().chain(f.top_agree))
                .for_each(|(p, q)| *p += q);
        }
        a
    }

    fn conclude(&mut self, _pass: usize, total: Partial) -> Result<(), OpError> {
        let part = *total.downcast::<ProbePart>().expect("probe partial");
        if let Some(e) = part.election {
            for (i, m) in self.stats.models.iter_mut().enumerate() {
                m.kept_mass = e.kept_mass[i].value();
                m.discarded_mass = e.discarded[i].value();
            }
            for (p, pair) in self.stats.pairs.iter_mut().enumerate() {
                pair.top_both = e.top_both[p];
                pair.top_agree = e.top_agree[p];
            }
            self.elected = true;
        }
        if let Some(first) = part.first {
            self.conclude_first(first);
            self.first_done = true;
            if !self.refining() {
                // Every share fell on a bucket's edge.
                self.conclude_refine((Vec::new(), Vec::new()), Vec::new());
            }
        } else if self.refining() {
            self.conclude_refine(part.mid, part.low);
        }
        if let Some(selection) = part.selection {
            self.selection.conclude(selection);
        }
        Ok(())
    }

    fn apply(&self, _chunk: &mut Chunk<'_>) -> Result<(), OpError> {
        // A probe only observes; the executor never runs it as a stage.
        Ok(())
    }
}

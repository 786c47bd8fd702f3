//! `dare(p, rescale)`: drop entries at random and rescale the survivors (Yu et al. 2023).

use reefknot_lang::{Bound, DefaultValue, OpSpec, ParamKind, ParamSpec, Signature, Ty};

use super::geometry::l1_factor;
use super::masks::{Budget, ChunkMask, MaskWords, MASK_BUDGET};
use crate::kernel::{
    Args, BindCtx, ChoiceParam, Chunk, Kernel, NumberParam, Operator, Param, Partial, Span,
    TaskVectors,
};
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
    models: reefknot_lang::Models::ANY,
    weighted: false,
    summary: "drop each entry with probability p and rescale the survivors",
    doc: "Drops each entry independently with probability `p` (`0 ≤ p < 1`) and rescales the \
survivors: by `1/(1-p)` with `rescale=inverse` (the DARE paper), by `‖δ‖₁/‖kept‖₁` with \
`rescale=l1` (mergekit's choice; skipped where either norm is below 1e-7; a norm that is \
NaN or infinite is an error), or not at all with `rescale=none`. `p = 0` is the identity.\n\n\
The draws are deterministic: element `j` of vector `i` of tensor `name` is dropped when its \
counter-based 32-bit draw `r(seed, name, i, j) < ⌊p·2³²⌋` (see the language reference), so \
the same recipe gives the same bytes on any machine, thread count or chunk size. `p` may \
differ per model.",
};

const P: Param<NumberParam> = Param::number(&SPEC, "p");
const RESCALE: Param<ChoiceParam> = Param::choice(&SPEC, "rescale");

impl Operator for Dare {
    fn spec(&self) -> &'static OpSpec {
        &SPEC
    }

    fn bind(&self, args: &Args, ctx: &BindCtx<'_>) -> Result<Box<dyn Kernel>, OpError> {
        Ok(Box::new(DareKernel::new(args, ctx)))
    }
}

impl DareKernel {
    fn new(args: &Args, ctx: &BindCtx<'_>) -> DareKernel {
        let on_delta = ctx.input() == Ty::Delta;
        let ps = super::per_vector(args, P, ctx);
        let rescale = match args.choice(RESCALE) {
            "inverse" => Rescale::Inverse,
            "l1" => Rescale::L1,
            _ => Rescale::None,
        };
        let lanes: Vec<DareLane> = ps
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
        let active = lanes.iter().filter(|l| l.active()).count();
        // With an L1 rescale every draw is needed twice (norms, then apply): keep the
        // statistics pass's keep-masks for `apply`, as far as the budget allows.
        let masks = (rescale == Rescale::L1 && active > 0).then(|| Masks {
            budget: &MASK_BUDGET,
            chunks: Vec::new(),
        });
        DareKernel {
            on_delta,
            rescale,
            lanes,
            masks,
        }
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

    /// The keep-mask of up to 64 draws: bit `k` set when element `k` is kept.
    #[inline(always)]
    fn keep_word(&self, draws: &[u32]) -> u64 {
        draws
            .iter()
            .enumerate()
            .fold(0u64, |w, (k, &d)| w | (u64::from(d >= self.cut) << k))
    }
}

/// The L1 sums of one block of one lane, over runs of [`DRAWS`] elements in order:
/// eight interleaved `f32` partial sums (of at most 512 values each), added in a fixed
/// order at the end, keep the result independent of chunking while letting the loops
/// vectorise.
#[derive(Default)]
struct L1Block {
    all: [f32; L1Block::LANES],
    kept: [f32; L1Block::LANES],
}

impl L1Block {
    const LANES: usize = 8;

    /// Adds the run `values` (at most [`DRAWS`] elements) whose first element is element
    /// `at` of the tensor; returns its keep-mask.
    #[inline(always)]
    fn add(&mut self, lane: &DareLane, at: usize, values: &[f32]) -> u64 {
        match <&[f32; DRAWS]>::try_from(values) {
            Ok(run) => l1_run(self, lane, at, run),
            Err(_) => self.rest(lane, at, values),
        }
    }

    /// Adds the last, partial run of a block (fewer than [`DRAWS`] elements).
    fn rest(&mut self, lane: &DareLane, at: usize, rest: &[f32]) -> u64 {
        let mut draws = [0u32; DRAWS];
        let draws = &mut draws[..rest.len()];
        lane.stream.fill(at as u64, draws);
        for (k, (&x, &d)) in rest.iter().zip(draws.iter()).enumerate() {
            let a = x.abs();
            self.all[k % Self::LANES] += a;
            self.kept[k % Self::LANES] += if d >= lane.cut { a } else { 0.0 };
        }
        lane.keep_word(draws)
    }

    /// `(Σ|x|, Σ|kept x|)`.
    fn total(&self) -> (f64, f64) {
        let total = |v: &[f32; Self::LANES]| v.iter().map(|&x| f64::from(x)).sum::<f64>();
        (total(&self.all), total(&self.kept))
    }
}

reefknot_simd::multiversion! {
    /// Adds a whole run whose first element is element `at` of the tensor to `acc`: its
    /// draws, its magnitudes and kept magnitudes into eight-lane partial sums; returns
    /// its keep-mask. Compiled per vector level (the 64-bit mixing of the draws gains
    /// most from AVX-512).
    fn l1_run(acc: &mut L1Block, lane: &DareLane, at: usize, run: &[f32; DRAWS]) -> u64 {
        const LANES: usize = L1Block::LANES;
        let mut draws = [0u32; DRAWS];
        lane.stream.fill(at as u64, &mut draws);
        // Magnitudes and kept magnitudes of the run, then eight-lane partial sums:
        // simple loops over fixed arrays, which vectorise.
        let mut abs = [0f32; DRAWS];
        let mut kept_abs = [0f32; DRAWS];
        for k in 0..DRAWS {
            abs[k] = run[k].abs();
            kept_abs[k] = if draws[k] >= lane.cut { abs[k] } else { 0.0 };
        }
        for g in 0..DRAWS / LANES {
            for l in 0..LANES {
                acc.all[l] += abs[g * LANES + l];
                acc.kept[l] += kept_abs[g * LANES + l];
            }
        }
        lane.keep_word(&draws)
    }
}

reefknot_simd::multiversion! {
    /// Drops and rescales `values` by `lane`'s keep-mask `words` (as the statistics pass
    /// records it). Compiled per vector level.
    fn apply_masked(lane: &DareLane, words: &[u64], values: &mut [f32]) {
        for (run, &w) in values.chunks_mut(DRAWS).zip(words) {
            for (k, x) in run.iter_mut().enumerate() {
                *x = if (w >> k) & 1 != 0 {
                    *x * lane.factor
                } else {
                    0.0
                };
            }
        }
    }
}

reefknot_simd::multiversion! {
    /// Drops and rescales `values`, whose first element is element `start` of the
    /// tensor, drawing `lane`'s draws as it goes. Compiled per vector level.
    fn apply_drawn(lane: &DareLane, start: usize, values: &mut [f32]) {
        let mut draws = [0u32; DRAWS];
        for (r, run) in values.chunks_mut(DRAWS).enumerate() {
            let draws = &mut draws[..run.len()];
            lane.stream.fill((start + r * DRAWS) as u64, draws);
            for (x, &d) in run.iter_mut().zip(draws.iter()) {
                *x = if d >= lane.cut { *x * lane.factor } else { 0.0 };
            }
        }
    }
}

/// The keep-masks the statistics pass drew, kept for `apply` so that the draws are made
/// once: one bit per element and active lane (an eighth of a byte, against a 64-bit
/// mix per two elements). Each chunk's masks are kept when they fit the shared
/// [`MASK_BUDGET`] (until the tensor is written); a chunk whose masks do not fit draws
/// again in `apply`. The bits are the same either way.
struct Masks {
    budget: &'static Budget,
    /// Per chunk index, the chunk's masks, when they were kept.
    chunks: Vec<Option<ChunkMask>>,
}

struct DareKernel {
    on_delta: bool,
    rescale: Rescale,
    lanes: Vec<DareLane>,
    /// The statistics pass's keep-masks, when they fit the budget.
    masks: Option<Masks>,
}

/// A statistics pass's accumulator: per lane (Σ|x|, Σ|kept x|), each block's sum added
/// order-free; and, when masks are kept, the chunks' keep-masks by chunk index.
#[derive(Default)]
struct NormParts {
    sums: Vec<(OrderFreeSum, OrderFreeSum)>,
    masks: Vec<(usize, ChunkMask)>,
}

/// Elements of a task vector read at a time by [`DareKernel::observe_task_vectors`]:
/// 512 bytes of `bf16`, less than the hardware prefetcher fetches ahead of a stream while
/// the arithmetic on the previous piece runs. A multiple of [`DRAWS`].
const SEGMENT: usize = 256;

impl DareKernel {
    /// The lanes that drop anything, with their model index.
    fn active_lanes(&self) -> impl Iterator<Item = (usize, &DareLane)> {
        self.lanes.iter().enumerate().filter(|(_, l)| l.active())
    }

    /// Zeroed keep-mask words for the chunk at `span`, when masks are kept and the
    /// budget has room.
    fn mask_words(&self, span: Span) -> Option<MaskWords> {
        let words = self.active_lanes().count() * span.len.div_ceil(DRAWS);
        self.masks.as_ref()?.budget.take(words)
    }

    /// Records the chunk's keep-masks in the pass's accumulator, when they are kept.
    fn keep_masks(&self, parts: &mut NormParts, span: Span, words: Option<MaskWords>) {
        if let Some(words) = words {
            parts.masks.push((
                span.index,
                ChunkMask {
                    offset: span.offset,
                    len: span.len,
                    words,
                },
            ));
        }
    }
}

/// Where the statistics pass finds the values of a lane, a piece at a time.
trait Pieces {
    /// The pass turns to the block of elements `[start, start + n)`.
    fn block(&mut self, _start: usize, _n: usize) {}
    /// Lane `l`'s values over `[start, start + n)`, a range within the current block.
    fn piece(&mut self, l: usize, start: usize, n: usize) -> &[f32];
}

/// The values of a chunk the engine converted: the stack, or the delta.
struct Converted<'c, 'a> {
    chunk: &'c Chunk<'a>,
    on_delta: bool,
}

impl Pieces for Converted<'_, '_> {
    fn piece(&mut self, l: usize, start: usize, n: usize) -> &[f32] {
        let values = if self.on_delta {
            &*self.chunk.delta
        } else {
            self.chunk.model(l)
        };
        &values[start - self.chunk.offset..][..n]
    }
}

/// The task vectors read from their source: the base once per block, then each piece
/// of a model minus it.
struct Read<'a> {
    source: &'a dyn TaskVectors,
    base: [f32; BLOCK],
    /// The first element of the current block, whose base values `base` holds.
    block: usize,
    piece: [f32; SEGMENT],
}

impl Pieces for Read<'_> {
    fn block(&mut self, start: usize, n: usize) {
        self.block = start;
        self.source.base(start, &mut self.base[..n]);
    }

    fn piece(&mut self, l: usize, start: usize, n: usize) -> &[f32] {
        let at = start - self.block;
        let piece = &mut self.piece[..n];
        self.source.delta(l, start, &self.base[at..at + n], piece);
        piece
    }
}

impl DareKernel {
    /// The statistics pass over the chunk at `span`: for each block of [`BLOCK`]
    /// elements and each active lane, the draws and L1 sums of its runs of [`DRAWS`]
    /// elements, in order (so the sums do not depend on how the values are read), taken
    /// a piece of [`SEGMENT`] elements at a time from `pieces`; each block's sums are
    /// added order-free, so the norms do not depend on the chunking or on which worker
    /// saw which chunk. The keep-masks are recorded when the budget allows.
    fn fold_norms(&self, span: Span, pieces: &mut impl Pieces, partial: &mut Partial) {
        let parts = partial.downcast_mut::<NormParts>().expect("norm partial");
        let mut kept = self.mask_words(span);
        let words: &mut [u64] = kept.as_deref_mut().unwrap_or_default();
        let per_lane = span.len.div_ceil(DRAWS);
        for b in 0..span.len.div_ceil(BLOCK) {
            let start = span.offset + b * BLOCK;
            let n = BLOCK.min(span.len - b * BLOCK);
            pieces.block(start, n);
            for (active, (l, lane)) in self.active_lanes().enumerate() {
                let mut acc = L1Block::default();
                let first_word = active * per_lane + b * (BLOCK / DRAWS);
                for s in (0..n).step_by(SEGMENT) {
                    let piece = pieces.piece(l, start + s, SEGMENT.min(n - s));
                    for (r, run) in piece.chunks(DRAWS).enumerate() {
                        let at = s + r * DRAWS;
                        let word = acc.add(lane, start + at, run);
                        if let Some(w) = words.get_mut(first_word + at / DRAWS) {
                            *w = word;
                        }
                    }
                }
                let (all, kept) = acc.total();
                parts.sums[l].0.add(all);
                parts.sums[l].1.add(kept);
            }
        }
        self.keep_masks(parts, span, kept);
    }
}

impl Kernel for DareKernel {
    fn wants_pass(&self, pass: usize) -> bool {
        pass == 0 && self.rescale == Rescale::L1 && self.lanes.iter().any(DareLane::active)
    }

    fn partial(&self, _pass: usize) -> Partial {
        let parts = NormParts {
            sums: vec![Default::default(); self.lanes.len()],
            masks: Vec::new(),
        };
        Box::new(parts)
    }

    fn observe(&self, _pass: usize, chunk: &Chunk<'_>, partial: &mut Partial) {
        let mut pieces = Converted {
            chunk,
            on_delta: self.on_delta,
        };
        self.fold_norms(chunk.span(), &mut pieces, partial);
    }

    fn observes_task_vectors(&self, _pass: usize) -> bool {
        !self.on_delta
    }

    /// As [`DareKernel::observe`], but each task vector is read in pieces of
    /// [`SEGMENT`] elements, each followed by its draws and sums, so that reading the
    /// next piece overlaps the arithmetic on this one.
    fn observe_task_vectors(
        &self,
        _pass: usize,
        span: Span,
        source: &dyn TaskVectors,
        partial: &mut Partial,
    ) {
        let mut pieces = Read {
            source,
            base: [0f32; BLOCK],
            block: 0,
            piece: [0f32; SEGMENT],
        };
        self.fold_norms(span, &mut pieces, partial);
    }

    fn combine(&self, _pass: usize, mut a: Partial, b: Partial) -> Partial {
        let av = a.downcast_mut::<NormParts>().expect("norm partial");
        let b = *b.downcast::<NormParts>().expect("norm partial");
        for (x, y) in av.sums.iter_mut().zip(b.sums) {
            x.0.merge(y.0);
            x.1.merge(y.1);
        }
        av.masks.extend(b.masks);
        a
    }

    fn conclude(&mut self, _pass: usize, total: Partial) -> Result<(), OpError> {
        let parts = *total.downcast::<NormParts>().expect("norm partial");
        for (i, (lane, (all, kept))) in self.lanes.iter_mut().zip(parts.sums).enumerate() {
            let vector = (!self.on_delta).then_some(i);
            lane.factor = l1_factor("dare", vector, all.value(), kept.value())?;
        }
        if let Some(masks) = &mut self.masks {
            for (index, mask) in parts.masks {
                if masks.chunks.len() <= index {
                    masks.chunks.resize_with(index + 1, || None);
                }
                masks.chunks[index] = Some(mask);
            }
        }
        Ok(())
    }

    fn apply(&self, chunk: &mut Chunk<'_>) -> Result<(), OpError> {
        let offset = chunk.offset;
        let mask = self
            .masks
            .as_ref()
            .and_then(|m| m.chunks.get(chunk.index)?.as_ref())
            .filter(|m| m.offset == offset && m.len == chunk.len);
        let per_lane = chunk.len.div_ceil(DRAWS);
        for (active, (l, lane)) in self.active_lanes().enumerate() {
            let values = if self.on_delta {
                &mut *chunk.delta
            } else {
                chunk.model_mut(l)
            };
            match mask {
                Some(m) => apply_masked(lane, &m.words[active * per_lane..][..per_lane], values),
                None => apply_drawn(lane, offset, values),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tiles::tests::bits;
    use super::*;
    use crate::kernel::Value;
    use std::sync::atomic::Ordering;

    const LEN: usize = 3 * BLOCK + 4096 + 77; // chunks of 2 blocks, the last one ragged
    const CHUNK: usize = 2 * BLOCK;
    const MODELS: usize = 3;

    fn kernel(rescale: &'static str) -> DareKernel {
        let args = Args::new(vec![
            ("p", Value::Number(vec![0.8, 0.0, 0.35])),
            ("rescale", Value::Choice(rescale)),
        ]);
        let ctx = BindCtx {
            tensor: "model.layers.0.mlp.up_proj.weight",
            shape: &[LEN],
            numel: LEN,
            layer: Some(0),
            models: MODELS,
            seed: 11,
            signature: Signature::new(Ty::Stack, Ty::Stack),
            fisher_means: None,
        };
        DareKernel::new(&args, &ctx)
    }

    /// Task vectors with a spread of magnitudes; the base is irrelevant to `dare`.
    fn vectors() -> (Vec<f32>, Vec<Vec<f32>>) {
        let base: Vec<f32> = (0..LEN)
            .map(|j| ((j * 37 % 101) as f32 - 50.0) / 64.0)
            .collect();
        let models = (0..MODELS)
            .map(|i| {
                base.iter()
                    .enumerate()
                    .map(|(j, b)| b + ((j * (i + 3) * 7919 % 2003) as f32 - 1001.0) * 1e-3)
                    .collect()
            })
            .collect();
        (base, models)
    }

    struct Memory<'a>(&'a [f32], &'a [Vec<f32>]);

    impl TaskVectors for Memory<'_> {
        fn base(&self, start: usize, out: &mut [f32]) {
            out.copy_from_slice(&self.0[start..start + out.len()]);
        }
        fn delta(&self, i: usize, start: usize, base: &[f32], out: &mut [f32]) {
            for ((o, &m), &b) in out.iter_mut().zip(&self.1[i][start..]).zip(base) {
                *o = m - b;
            }
        }
    }

    /// Runs `f` on each chunk of the task vectors, as the engine builds it.
    fn chunks(mut f: impl FnMut(&mut Chunk<'_>)) {
        let (base, models) = vectors();
        for (index, offset) in (0..LEN).step_by(CHUNK).enumerate() {
            let len = CHUNK.min(LEN - offset);
            let mut stack: Vec<f32> = models
                .iter()
                .flat_map(|m| (offset..offset + len).map(|j| m[j] - base[j]))
                .collect();
            let (mut sign, mut delta, mut scratch) =
                (vec![0.0; len], vec![0.0; len], vec![0.0; len]);
            let mut chunk = Chunk {
                index,
                offset,
                len,
                models: MODELS,
                base: &base[offset..offset + len],
                stack: &mut stack,
                sign: &mut sign,
                delta: &mut delta,
                scratch: &mut scratch,
                fisher: None,
                weights: &[1.0; MODELS],
            };
            f(&mut chunk);
        }
    }

    /// Runs the statistics pass, from converted chunks or from the task vectors, and
    /// then `apply`: the factors and the transformed stack.
    fn run(mut k: DareKernel, direct: bool) -> (Vec<f32>, Vec<u32>) {
        if k.wants_pass(0) {
            let mut partial = k.partial(0);
            if direct {
                let (base, models) = vectors();
                for (index, offset) in (0..LEN).step_by(CHUNK).enumerate() {
                    let span = Span {
                        index,
                        offset,
                        len: CHUNK.min(LEN - offset),
                    };
                    // Fold each chunk into its own accumulator, then combine: as workers do.
                    let mut own = k.partial(0);
                    k.observe_task_vectors(0, span, &Memory(&base, &models), &mut own);
                    partial = k.combine(0, partial, own);
                }
            } else {
                chunks(|c| k.observe(0, c, &mut partial));
            }
            k.conclude(0, partial).unwrap();
        }
        let factors = k.lanes.iter().map(|l| l.factor).collect();
        let mut out = Vec::new();
        chunks(|c| {
            k.apply(c).unwrap();
            out.extend(bits(c.stack));
        });
        (factors, out)
    }

    #[test]
    fn kept_masks_give_the_bits_of_drawing_again() {
        let with_masks = kernel("l1");
        assert!(with_masks.masks.is_some(), "an L1 rescale keeps its masks");
        let mut without = kernel("l1");
        without.masks = None;
        let (factors, kept) = run(with_masks, false);
        assert_eq!(run(without, false), (factors.clone(), kept.clone()));
        // The first stage reading the task vectors itself: the same norms and masks.
        assert_eq!(run(kernel("l1"), true), (factors.clone(), kept.clone()));
        // The L1 factor of the lane that drops nothing is 1; the others restore the norm.
        assert_eq!(factors[1], 1.0);
        assert!((factors[0] - 5.0).abs() < 0.25, "{factors:?}");
        // And the drops are those of the inverse rescale (which draws in `apply`).
        let (_, inverse) = run(kernel("inverse"), false);
        let zeros = |v: &[u32]| {
            v.iter()
                .map(|&b| f32::from_bits(b) == 0.0)
                .collect::<Vec<_>>()
        };
        assert_eq!(zeros(&kept), zeros(&inverse));
    }

    #[test]
    fn chunks_beyond_the_budget_are_drawn_again() {
        // A budget with room for the masks of the first chunk only.
        static ONE_CHUNK: Budget = Budget::new(2 * CHUNK.div_ceil(DRAWS) * 8);
        assert!(ONE_CHUNK.take(ONE_CHUNK.limit / 8 + 1).is_none());
        let mut k = kernel("l1");
        k.masks.as_mut().unwrap().budget = &ONE_CHUNK;
        let mut partial = k.partial(0);
        chunks(|c| k.observe(0, c, &mut partial));
        k.conclude(0, partial).unwrap();
        let kept: Vec<bool> = k
            .masks
            .as_ref()
            .unwrap()
            .chunks
            .iter()
            .map(Option::is_some)
            .collect();
        assert_eq!(kept, [true]);
        drop(k);
        let mut tight = kernel("l1");
        tight.masks.as_mut().unwrap().budget = &ONE_CHUNK;
        assert_eq!(run(tight, true), run(kernel("l1"), false));
        // The buffer came back and was used again: one chunk's worth exists, spare.
        assert_eq!(ONE_CHUNK.used.load(Ordering::Acquire), ONE_CHUNK.limit);
        assert_eq!(ONE_CHUNK.spare().len(), 1);
        // Released, it is freed and no longer counted; the budget serves again.
        ONE_CHUNK.release();
        assert_eq!(ONE_CHUNK.used.load(Ordering::Acquire), 0);
        assert!(ONE_CHUNK.spare().is_empty());
        let again = ONE_CHUNK
            .take(ONE_CHUNK.limit / 8)
            .expect("room after release");
        drop(again);
        assert_eq!(ONE_CHUNK.used.load(Ordering::Acquire), ONE_CHUNK.limit);
    }
}

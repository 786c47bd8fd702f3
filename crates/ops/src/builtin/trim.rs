//! `trim(k)`: keep the `⌊k·n⌋` entries of largest magnitude of each vector, and
//! `breadcrumbs(k, γ)`: drop the `⌊γ·n⌋` largest and keep the next `⌊k·n⌋`.
//!
//! Both are bands of ranks `[lo, hi)` by decreasing magnitude: a selection of the `hi`
//! largest entries, less (for breadcrumbs) a selection of the `lo` largest, found by the
//! streaming radix selection of [`super::select`].

use reefknot_lang::{DefaultValue, OpSpec, ParamKind, ParamSpec, Signature, Ty};

use super::geometry::{l1, l1_factor};
use super::per_vector;
use super::select::{Lane, Selection};
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
            kind: ParamKind::closed(0.0, 1.0),
            default: Some(DefaultValue::Number(0.2)),
            doc: "fraction of entries to keep (density); 0 keeps none, 1 keeps all",
        },
        RESCALE_SPEC,
    ],
    models: reefknot_lang::Models::ANY,
    weighted: false,
    summary: "keep the fraction k of entries with the largest |δ| in each vector, zero the rest",
    doc: "Keeps, in each task vector (or in the merged delta), the `max(1, ⌊k·n⌋)` entries of \
largest magnitude and sets the others to zero; `k = 0` keeps none and `k = 1` keeps all
(`k` lies in `[0, 1]`: a density). \
Entries whose magnitude equals the threshold are kept in flat-index order, lowest first. \
Equals mergekit's `magnitude` sparsification (used by `ties`), whose unstable sort may pick \
other entries among equal magnitudes at the cut.\n\n\
`rescale=l1` multiplies the kept entries by `‖δ‖₁/‖kept‖₁` (skipped where either norm is \
below 1e-7, and when nothing is cut; a norm that is NaN or infinite is an error), \
mergekit's `rescale: true`.\n\n\
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
        let bands = per_vector(args, K, ctx)
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
            "trim",
            ctx,
            bands,
            args.choice(RESCALE) == "l1",
        )))
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
            kind: ParamKind::closed(0.0, 1.0),
            default: None,
            doc: "fraction of entries to keep (density), after the outliers; 1 keeps all",
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
    weighted: false,
    summary: "drop the largest fraction γ of |δ| as outliers, keep the next fraction k",
    doc: "Model Breadcrumbs (Davari & Belilovsky 2024): in each task vector of `n` entries, \
drops the `⌊γ·n⌋` entries of largest magnitude (outliers) and keeps the next `⌊k·n⌋` \
(fewer outliers are dropped when `⌊γ·n⌋ + ⌊k·n⌋ > n`, so that `⌊k·n⌋` are kept); the rest \
is zero. `k = 1` keeps everything, outliers included. Equals mergekit's \
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
        let ks = per_vector(args, BK, ctx);
        let gammas = per_vector(args, GAMMA, ctx);
        let bands = ks
            .iter()
            .zip(&gammas)
            .map(|(&k, &g)| {
                if k >= 1.0 {
                    return (0, n);
                }
                // As mergekit: keep ranks [lo, lo + target) by decreasing magnitude.
                let target = ((k * n as f64).floor() as u64).min(n);
                if target == 0 {
                    return (0, 0); // keeps nothing (mergekit's empty slice)
                }
                let top = ((g * n as f64).floor() as u64).min(n);
                let lo = top.min(n - target);
                (lo, lo + target)
            })
            .collect();
        Ok(Box::new(TrimKernel::new(
            "breadcrumbs",
            ctx,
            bands,
            args.choice(BRESCALE) == "l1",
        )))
    }
}

/// What one vector keeps: the entries of ranks `[lo, hi)` in order of decreasing
/// magnitude, as the selection lanes `keep` (the `hi` largest) and `outliers` (the `lo`
/// largest, dropped again) find them.
struct Band {
    keep: usize,
    outliers: Option<usize>,
}

struct TrimKernel {
    /// `trim` or `breadcrumbs`, for messages.
    op: &'static str,
    on_delta: bool,
    /// The selections: the `hi` largest entries of a vector, and for breadcrumbs the
    /// `lo` largest.
    selection: Selection,
    /// Per lane, the vector it selects in (a model of the stack, or 0 for the delta).
    vector: Vec<usize>,
    /// Per vector.
    bands: Vec<Band>,
    /// With `rescale=l1`: per vector, `‖δ‖₁/‖kept‖₁` once the norms pass has run.
    rescale: Option<Option<Vec<f32>>>,
}

/// The L1 norms of every vector, all and kept, summed per block of [`BLOCK`] elements.
struct Norms(Vec<(OrderFreeSum, OrderFreeSum)>);

impl TrimKernel {
    /// A kernel keeping ranks `[lo, hi)` of each vector (`bands`, one per vector).
    fn new(
        op: &'static str,
        ctx: &BindCtx<'_>,
        bands: Vec<(u64, u64)>,
        rescale: bool,
    ) -> TrimKernel {
        let n = ctx.numel as u64;
        let stride = Selection::stride_for(ctx.numel);
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
        TrimKernel {
            op,
            on_delta: ctx.input() == Ty::Delta,
            selection: Selection::new(lanes, n),
            vector,
            bands: out,
            rescale: rescale.then_some(None),
        }
    }

    fn vector_values<'c>(&self, chunk: &'c Chunk<'_>, v: usize) -> &'c [f32] {
        if self.on_delta {
            chunk.delta
        } else {
            chunk.model(v)
        }
    }

    fn selecting(&self) -> bool {
        self.selection.pending()
    }

    /// Keeps the band of vector `v` in `values` (chunk `index`), using `spare` (as long
    /// as `values`) for the outliers.
    fn keep_band(&self, v: usize, index: usize, values: &mut [f32], spare: &mut [f32]) {
        let band = &self.bands[v];
        if let Some(o) = band.outliers {
            spare.copy_from_slice(values);
            self.selection.lanes[o].select(index, spare);
        }
        self.selection.lanes[band.keep].select(index, values);
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
        if self.selecting() {
            self.selection.stride()
        } else {
            1
        }
    }

    fn partial(&self, _pass: usize) -> Partial {
        if self.selecting() {
            self.selection.partial()
        } else {
            Box::new(Norms(vec![Default::default(); self.bands.len()]))
        }
    }

    fn observe(&self, _pass: usize, chunk: &Chunk<'_>, partial: &mut Partial) {
        if let Some(norms) = partial.downcast_mut::<Norms>() {
            return self.observe_norms(chunk, norms);
        }
        let values = |l: usize| self.vector_values(chunk, self.vector[l]);
        self.selection.observe(chunk.index, values, partial);
    }

    fn combine(&self, _pass: usize, mut a: Partial, b: Partial) -> Partial {
        if Selection::owns(&a) {
            return Selection::combine(a, b);
        }
        let norms = a.downcast_mut::<Norms>().expect("norms partial");
        let more = b.downcast::<Norms>().expect("norms partial");
        for (x, y) in norms.0.iter_mut().zip(more.0) {
            x.0.merge(y.0);
            x.1.merge(y.1);
        }
        a
    }

    fn conclude(&mut self, _pass: usize, total: Partial) -> Result<(), OpError> {
        if Selection::owns(&total) {
            self.selection.conclude(total);
            return Ok(());
        }
        let norms = total.downcast::<Norms>().expect("norms partial");
        let factors = norms
            .0
            .iter()
            .enumerate()
            .map(|(v, (all, kept))| {
                let vector = (!self.on_delta).then_some(v);
                l1_factor(self.op, vector, all.value(), kept.value())
            })
            .collect::<Result<_, _>>()?;
        self.rescale = Some(Some(factors));
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

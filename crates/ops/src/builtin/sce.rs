//! `sce` (Select, Calculate, Erase; Wan et al. 2024) and `arcee_fusion`, as mergekit
//! 0.1.5 defines them: methods that select on a quantity derived from the task vectors
//! (their variance across models; an importance score), with the streaming radix
//! selection of [`super::select`].

use reefknot_lang::{Bound, DefaultValue, Models, OpSpec, ParamKind, ParamSpec, Signature, Ty};

use super::geometry::rows_fit;
use super::select::{Lane, Selection};
use crate::kernel::{Args, BindCtx, Chunk, Kernel, NumberParam, Operator, Param, Partial};
use crate::{OpError, OrderFreeSum, BLOCK};

/// `sce`.
pub struct Sce;

static SCE: OpSpec = OpSpec {
    name: "sce",
    aliases: &[],
    signatures: &[Signature::new(Ty::Stack, Ty::Delta)],
    params: &[ParamSpec {
        name: "select_topk",
        kind: ParamKind::Number {
            min: Bound::Inclusive(0.0),
            max: Bound::Unbounded,
        },
        default: Some(DefaultValue::Number(1.0)),
        doc: "fraction of the elements, by variance across models, that are merged",
    }],
    models: Models::ANY,
    weighted: false,
    summary: "SCE: keep high-variance elements, weight models by energy, TIES-style erase",
    doc: "SCE (Wan et al. 2024, FuseChat), as mergekit's `sce`: **select** — with \
`select_topk < 1`, only the `⌊m·select_topk⌋` elements of largest variance across the \
task vectors are kept (`m` the number of elements whose variance is not zero; population \
variance; ties at the cut kept in flat-index order), the rest of every task vector is \
zeroed; **calculate** — each model's weight is its share of the energy, \
`c_i = mean(δ_i²) / Σ_k mean(δ_k²)` (uniform where that sum is below 1e-6); **erase** — \
an elected sign per element from the unweighted sum `Σ_i δ_ij` (`+` where it is zero) \
keeps the entries that agree; `Δ_j = Σ_i c_i·m_ij·δ_ij / max(Σ_i c_i·m_ij, 1e-6)`. Model \
weights are ignored, as in mergekit. Streaming: a counting pass, the selection passes \
on the variance, an energy pass.",
};

const SELECT_TOPK: Param<NumberParam> = Param::number(&SCE, "select_topk");

impl Operator for Sce {
    fn spec(&self) -> &'static OpSpec {
        &SCE
    }

    fn bind(&self, args: &Args, ctx: &BindCtx<'_>) -> Result<Box<dyn Kernel>, OpError> {
        let topk = args.number(SELECT_TOPK);
        let phase = if topk >= 1.0 {
            Phase::Energy
        } else if topk <= 0.0 {
            Phase::Select(Selection::new(vec![Lane::None], ctx.numel as u64))
        } else {
            Phase::Count
        };
        let mut kernel = SceKernel {
            models: ctx.models,
            numel: ctx.numel,
            topk,
            phase,
            mask: None,
            weights: Vec::new(),
        };
        kernel.settle();
        Ok(Box::new(kernel))
    }
}

/// Where `sce` is in its passes.
enum Phase {
    /// Counting the elements of nonzero variance.
    Count,
    /// Selecting the elements of largest variance.
    Select(Selection),
    /// Summing the energy of the (selected) task vectors.
    Energy,
    /// Ready to apply.
    Done,
}

struct SceKernel {
    models: usize,
    numel: usize,
    topk: f64,
    phase: Phase,
    /// The variance selection, once made (`None`: every element is kept).
    mask: Option<Selection>,
    /// The energy weights `c_i`, once known.
    weights: Vec<f32>,
}

struct NonZero(u64);
struct Energy(Vec<OrderFreeSum>);

impl SceKernel {
    /// A selection that needs no more passes becomes the mask; the energy pass follows.
    fn settle(&mut self) {
        if matches!(&self.phase, Phase::Select(s) if !s.pending()) {
            if let Phase::Select(s) = std::mem::replace(&mut self.phase, Phase::Energy) {
                self.mask = Some(s);
            }
        }
    }

    /// The population variance across models of each element of `chunk`.
    fn variance(&self, chunk: &Chunk<'_>) -> Vec<f32> {
        let t = self.models as f64;
        (0..chunk.len)
            .map(|j| {
                let x = |i: usize| f64::from(chunk.stack[i * chunk.len + j]);
                let mean = (0..self.models).map(x).sum::<f64>() / t;
                ((0..self.models).map(|i| (x(i) - mean).powi(2)).sum::<f64>() / t) as f32
            })
            .collect()
    }

    /// Per element of `chunk`, whether the variance selection keeps it.
    fn kept(&self, chunk: &Chunk<'_>) -> Option<Vec<bool>> {
        let selection = self.mask.as_ref()?;
        let mut var = self.variance(chunk);
        selection.lanes[0].select(chunk.index, &mut var);
        Some(var.iter().map(|&v| v != 0.0).collect())
    }
}

impl Kernel for SceKernel {
    fn wants_pass(&self, _pass: usize) -> bool {
        !matches!(self.phase, Phase::Done)
    }

    fn pass_stride(&self, _pass: usize) -> usize {
        match &self.phase {
            Phase::Select(s) => s.stride(),
            _ => 1,
        }
    }

    fn partial(&self, _pass: usize) -> Partial {
        match &self.phase {
            Phase::Count => Box::new(NonZero(0)),
            Phase::Select(s) => s.partial(),
            _ => Box::new(Energy(vec![OrderFreeSum::default(); self.models])),
        }
    }

    fn observe(&self, _pass: usize, chunk: &Chunk<'_>, partial: &mut Partial) {
        match &self.phase {
            Phase::Count => {
                let n = partial.downcast_mut::<NonZero>().expect("sce partial");
                n.0 += self.variance(chunk).iter().filter(|&&v| v != 0.0).count() as u64;
            }
            Phase::Select(s) => {
                let var = self.variance(chunk);
                s.observe(chunk.index, |_| &var, partial);
            }
            _ => {
                let e = partial.downcast_mut::<Energy>().expect("sce partial");
                let kept = self.kept(chunk);
                for (i, sum) in e.0.iter_mut().enumerate() {
                    let d = chunk.model(i);
                    for start in (0..chunk.len).step_by(BLOCK) {
                        let end = (start + BLOCK).min(chunk.len);
                        let block: f64 = (start..end)
                            .filter(|&j| kept.as_ref().is_none_or(|k| k[j]))
                            .map(|j| f64::from(d[j]).powi(2))
                            .sum();
                        sum.add(block);
                    }
                }
            }
        }
    }

    fn combine(&self, _pass: usize, mut a: Partial, b: Partial) -> Partial {
        if Selection::owns(&a) {
            return Selection::combine(a, b);
        }
        if let Some(n) = a.downcast_mut::<NonZero>() {
            n.0 += b.downcast::<NonZero>().expect("sce partial").0;
            return a;
        }
        let e = a.downcast_mut::<Energy>().expect("sce partial");
        for (x, y) in
            e.0.iter_mut()
                .zip(b.downcast::<Energy>().expect("sce partial").0)
        {
            x.merge(y);
        }
        a
    }

    fn conclude(&mut self, _pass: usize, total: Partial) -> Result<(), OpError> {
        self.phase = match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Count => {
                let nonzero = total.downcast::<NonZero>().expect("sce partial").0;
                // As mergekit: the product is a float32 tensor.
                let k = (nonzero as f32 * self.topk as f32) as u64;
                let lane = Lane::keep(k, self.numel as u64, Selection::stride_for(self.numel));
                Phase::Select(Selection::new(vec![lane], self.numel as u64))
            }
            Phase::Select(mut s) => {
                s.conclude(total);
                Phase::Select(s)
            }
            Phase::Energy | Phase::Done => {
                let e = total.downcast::<Energy>().expect("sce partial");
                let n = self.numel.max(1) as f64;
                let means: Vec<f64> = e.0.iter().map(|s| s.value() / n).collect();
                let total: f64 = means.iter().sum();
                self.weights = if total.abs() < 1e-6 {
                    vec![1.0 / self.models as f32; self.models]
                } else {
                    means.iter().map(|m| (m / total) as f32).collect()
                };
                Phase::Done
            }
        };
        self.settle();
        Ok(())
    }

    fn apply(&self, chunk: &mut Chunk<'_>) -> Result<(), OpError> {
        let kept = self.kept(chunk);
        let len = chunk.len;
        for j in 0..len {
            let keep = kept.as_ref().is_none_or(|k| k[j]);
            if !keep {
                chunk.delta[j] = 0.0;
                continue;
            }
            let d = |i: usize| chunk.stack[i * len + j];
            let sum: f32 = (0..self.models).map(d).sum();
            let elected = if sum >= 0.0 { 1.0 } else { -1.0 };
            let (mut num, mut den) = (0f32, 0f32);
            for (i, &c) in self.weights.iter().enumerate() {
                let x = d(i);
                if x != 0.0 && x.signum() == elected {
                    num += c * x;
                    den += c;
                }
            }
            chunk.delta[j] = num / den.max(1e-6);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// arcee_fusion
// ---------------------------------------------------------------------------

/// `arcee_fusion`.
pub struct ArceeFusion;

static FUSION: OpSpec = OpSpec {
    name: "arcee_fusion",
    aliases: &[],
    signatures: &[Signature::new(Ty::Stack, Ty::Delta)],
    params: &[],
    models: Models::exactly(1),
    weighted: false,
    summary: "keep the fine-tune's changes whose importance is an outlier",
    doc: "Arcee Fusion, as mergekit's `arcee_fusion`, for exactly one fine-tune: each \
element's importance is `I_j = |δ_j| · KL(softmax(θ_1) ‖ softmax(θ_b))`, the divergence \
taken per row (the last dimension, probabilities plus 1e-8); the change is kept where \
`I_j ≥ median + 1.5·(q3 − q1)` of the tensor's importances (quantiles at sorted index \
`⌊q·(n−1)⌋`), and dropped elsewhere. mergekit estimates the quantiles from a random \
sample of 10⁶ elements in larger tensors (so its result changes from run to run); \
reefknot computes them exactly, by streaming selection, so the result is deterministic \
without any seed. Whole rows are streamed together.",
};

impl Operator for ArceeFusion {
    fn spec(&self) -> &'static OpSpec {
        &FUSION
    }

    fn whole_rows(&self, _args: &Args) -> bool {
        true
    }

    fn check(&self, _args: &Args, ctx: &BindCtx<'_>) -> Result<(), OpError> {
        rows_fit("arcee_fusion", ctx)
    }

    fn bind(&self, _args: &Args, ctx: &BindCtx<'_>) -> Result<Box<dyn Kernel>, OpError> {
        let n = ctx.numel as u64;
        let stride = Selection::stride_for(ctx.numel);
        // The q-quantile is the element of ascending index ⌊q·(n−1)⌋: the (n − index)-th
        // largest.
        let lanes = [0.25f32, 0.5, 0.75]
            .iter()
            .map(|&q| {
                let index = (q * n.saturating_sub(1) as f32) as u64;
                Lane::rank(n - index, n, stride)
            })
            .collect();
        Ok(Box::new(FusionKernel {
            row: ctx.row_len().max(1),
            quantiles: Selection::new(lanes, n),
            threshold: None,
        }))
    }
}

struct FusionKernel {
    row: usize,
    quantiles: Selection,
    threshold: Option<f32>,
}

impl FusionKernel {
    /// The importance of every element of `chunk` (whole rows).
    fn importance(&self, chunk: &Chunk<'_>) -> Vec<f32> {
        let mut out = vec![0f32; chunk.len];
        let d = chunk.model(0);
        for start in (0..chunk.len).step_by(self.row) {
            let end = (start + self.row).min(chunk.len);
            let b = &chunk.base[start..end];
            let x: Vec<f64> = b
                .iter()
                .zip(&d[start..end])
                .map(|(&b, &d)| f64::from(b + d))
                .collect();
            let softmax = |v: &mut dyn Iterator<Item = f64>| -> Vec<f64> {
                let v: Vec<f64> = v.collect();
                let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = v.iter().map(|&x| (x - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                e.iter().map(|&x| x / sum + 1e-8).collect()
            };
            let p = softmax(&mut x.iter().copied());
            let q = softmax(&mut b.iter().map(|&v| f64::from(v)));
            let kl: f64 = p.iter().zip(&q).map(|(&p, &q)| p * (p / q).ln()).sum();
            for (o, &dj) in out[start..end].iter_mut().zip(&d[start..end]) {
                *o = ((f64::from(dj.abs()) * kl) as f32).max(0.0);
            }
        }
        out
    }
}

impl Kernel for FusionKernel {
    fn wants_pass(&self, _pass: usize) -> bool {
        self.quantiles.pending()
    }

    fn pass_stride(&self, _pass: usize) -> usize {
        self.quantiles.stride()
    }

    fn partial(&self, _pass: usize) -> Partial {
        self.quantiles.partial()
    }

    fn observe(&self, _pass: usize, chunk: &Chunk<'_>, partial: &mut Partial) {
        let importance = self.importance(chunk);
        self.quantiles
            .observe(chunk.index, |_| &importance, partial);
    }

    fn combine(&self, _pass: usize, a: Partial, b: Partial) -> Partial {
        Selection::combine(a, b)
    }

    fn conclude(&mut self, _pass: usize, total: Partial) -> Result<(), OpError> {
        self.quantiles.conclude(total);
        if !self.quantiles.pending() {
            let q: Vec<f32> = self
                .quantiles
                .lanes
                .iter()
                .map(|l| l.cut().map_or(0.0, f32::from_bits))
                .collect();
            self.threshold = Some(q[1] + 1.5 * (q[2] - q[0]));
        }
        Ok(())
    }

    fn apply(&self, chunk: &mut Chunk<'_>) -> Result<(), OpError> {
        // A tensor of no elements has no quantiles: nothing is kept.
        let threshold = self.threshold.unwrap_or(f32::INFINITY);
        let importance = self.importance(chunk);
        let len = chunk.len;
        for ((o, &d), &i) in chunk
            .delta
            .iter_mut()
            .zip(&chunk.stack[..len])
            .zip(&importance)
        {
            *o = if i >= threshold { d } else { 0.0 };
        }
        Ok(())
    }
}

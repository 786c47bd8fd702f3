//! Operators that merge by the geometry of whole tensors (or rows): `slerp` and
//! `model_stock`, from norms and dot products gathered in one statistics pass, and
//! `nearswap`, element by element.
//!
//! The statistics are sums over the tensor. Each block of [`BLOCK`] elements is summed
//! in `f64`, in order, and the blocks are added with [`OrderFreeSum`], so the result
//! does not depend on chunking or threads. Row-wise statistics (`model_stock` with
//! `filter_wise=true`) are taken over whole rows, which the engine keeps inside one
//! chunk ([`Operator::whole_rows`]).

use reefknot_lang::{DefaultValue, Models, OpSpec, ParamKind, ParamSpec, Signature, Ty};

use crate::kernel::{
    row_chunk, Args, BindCtx, BoolParam, Chunk, Kernel, NumberParam, Operator, Param, Partial,
};
use crate::{OpError, OrderFreeSum, BLOCK};

/// Refuses a tensor whose rows cannot be chunked whole (see [`row_chunk`]).
pub(crate) fn rows_fit(op: &str, ctx: &BindCtx<'_>) -> Result<(), OpError> {
    match row_chunk(ctx.numel, ctx.row_len(), BLOCK) {
        Some(_) => Ok(()),
        None => Err(OpError::InvalidArguments {
            op: op.into(),
            message: format!(
                "works on whole rows, and rows of {} elements in a tensor of {} cannot be held \
                 in chunks of at most {} elements",
                ctx.row_len(),
                ctx.numel,
                crate::MAX_ROW_CHUNK
            ),
        }),
    }
}

/// Sums of products over a tensor, block by block (see the module documentation).
#[derive(Clone, Debug, Default)]
struct Sums(Vec<OrderFreeSum>);

impl Sums {
    fn merge(&mut self, other: Sums) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            a.merge(b);
        }
    }
}

/// `Σ a_j·b_j` in `f64`: eight interleaved partial sums (element `j` into lane `j % 8`)
/// added in lane order at the end, a fixed order that does not depend on the caller's
/// chunking and lets the loop vectorise (one running sum would wait on every add).
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f64 {
    const LANES: usize = 8;
    let mut acc = [0f64; LANES];
    let (ra, rb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ta, tb) = (ra.remainder(), rb.remainder());
    for (x, y) in ra.zip(rb) {
        for l in 0..LANES {
            acc[l] += f64::from(x[l]) * f64::from(y[l]);
        }
    }
    for (l, (&x, &y)) in ta.iter().zip(tb).enumerate() {
        acc[l] += f64::from(x) * f64::from(y);
    }
    acc.iter().sum()
}

/// The factor `‖δ‖₁/‖kept‖₁` that restores a vector's L1 norm after a cut, from the
/// norms before (`all`) and after (`kept`): 1 where either is below 1e-7 (mergekit's
/// rule). A norm that is not finite, or a factor beyond `f32`, is an error: one NaN or
/// infinity in the vector would otherwise rescale every entry of it. `vector` is the
/// model whose task vector it is, `None` for the merged task vector.
pub(crate) fn l1_factor(
    op: &str,
    vector: Option<usize>,
    all: f64,
    kept: f64,
) -> Result<f32, OpError> {
    const EPS: f64 = 1e-7;
    let what = || match vector {
        Some(i) => format!("task vector {}", i + 1),
        None => "the merged task vector".to_string(),
    };
    for (norm, value) in [("the L1 norm of", all), ("the kept L1 norm of", kept)] {
        if !value.is_finite() {
            return Err(OpError::NonFinite {
                op: op.to_string(),
                what: format!("{norm} {}", what()),
                value,
            });
        }
    }
    if all < EPS || kept < EPS {
        return Ok(1.0);
    }
    let factor = (all / kept) as f32;
    if !factor.is_finite() {
        return Err(OpError::NonFinite {
            op: op.to_string(),
            what: format!("the L1 rescale factor of {}", what()),
            value: f64::from(factor),
        });
    }
    Ok(factor)
}

/// `Σ |a_j|` in `f64`, in the fixed order of [`dot`].
pub(crate) fn l1(a: &[f32]) -> f64 {
    const LANES: usize = 8;
    let mut acc = [0f64; LANES];
    let rows = a.chunks_exact(LANES);
    let tail = rows.remainder();
    for x in rows {
        for l in 0..LANES {
            acc[l] += f64::from(x[l].abs());
        }
    }
    for (l, &x) in tail.iter().enumerate() {
        acc[l] += f64::from(x.abs());
    }
    acc.iter().sum()
}

// ---------------------------------------------------------------------------
// slerp
// ---------------------------------------------------------------------------

/// `slerp`.
pub struct Slerp;

static SLERP: OpSpec = OpSpec {
    name: "slerp",
    aliases: &[],
    signatures: &[Signature::new(Ty::Stack, Ty::Delta)],
    params: &[ParamSpec {
        name: "t",
        kind: ParamKind::any_number(),
        default: None,
        doc: "where between the base (0) and the fine-tune (1)",
    }],
    models: Models::exactly(1),
    weighted: false,
    summary: "spherical interpolation between the base and one fine-tune",
    doc: "Spherical linear interpolation between the base `θ_b` and exactly one fine-tune \
`θ_1`, over the whole tensor, as mergekit's `slerp`: with `d = ⟨θ_b, θ_1⟩/(‖θ_b‖·‖θ_1‖)` \
(a norm at most 1e-8 counts as 1; `d` clamped to [−1, 1]) and `Ω = acos d`, the merged \
tensor is `sin((1−t)Ω)/sin Ω · θ_b + sin(tΩ)/sin Ω · θ_1`, or the linear interpolation \
`(1−t)·θ_b + t·θ_1` where `|d| > 0.9995`. `t = 0` gives the base, `t = 1` the fine-tune; \
`t` may be a gradient over depth (`slerp($t)` with `params: {t: [0, 0.5, 1]}`). The norms \
and the dot product come from one streaming pass. mergekit lists the base among its two \
models; reefknot's recipe names it `base` and gives one model. Model weights are ignored.",
};

const T: Param<NumberParam> = Param::number(&SLERP, "t");

impl Operator for Slerp {
    fn spec(&self) -> &'static OpSpec {
        &SLERP
    }

    fn bind(&self, args: &Args, _ctx: &BindCtx<'_>) -> Result<Box<dyn Kernel>, OpError> {
        Ok(Box::new(SlerpKernel {
            t: args.number(T),
            coefficients: None,
        }))
    }
}

struct SlerpKernel {
    t: f64,
    /// `(c_b, c_1)` once the statistics pass has run.
    coefficients: Option<(f32, f32)>,
}

/// The coefficients of the base and the fine-tune, from `‖θ_b‖²`, `‖θ_1‖²` and
/// `⟨θ_b, θ_1⟩`, as mergekit's `slerp`.
fn slerp_coefficients(t: f64, bb: f64, xx: f64, bx: f64) -> (f64, f64) {
    const EPS: f64 = 1e-8;
    const DOT_THRESHOLD: f64 = 0.9995;
    let norm = |s: f64| {
        let n = s.sqrt();
        if n > EPS {
            n
        } else {
            1.0
        }
    };
    let d = (bx / (norm(bb) * norm(xx))).clamp(-1.0, 1.0);
    if d.abs() > DOT_THRESHOLD {
        return (1.0 - t, t);
    }
    let omega = d.acos();
    let s = omega.sin();
    (((1.0 - t) * omega).sin() / s, (t * omega).sin() / s)
}

impl Kernel for SlerpKernel {
    fn wants_pass(&self, pass: usize) -> bool {
        pass == 0 && self.coefficients.is_none()
    }

    fn partial(&self, _pass: usize) -> Partial {
        Box::new(Sums(vec![OrderFreeSum::default(); 3]))
    }

    fn observe(&self, _pass: usize, chunk: &Chunk<'_>, partial: &mut Partial) {
        let sums = partial.downcast_mut::<Sums>().expect("slerp partial");
        let mut x = [0f32; BLOCK];
        for (b, d) in chunk.base.chunks(BLOCK).zip(chunk.model(0).chunks(BLOCK)) {
            let x = &mut x[..b.len()];
            for ((x, &b), &d) in x.iter_mut().zip(b).zip(d) {
                *x = b + d;
            }
            sums.0[0].add(dot(b, b));
            sums.0[1].add(dot(x, x));
            sums.0[2].add(dot(b, x));
        }
    }

    fn combine(&self, _pass: usize, mut a: Partial, b: Partial) -> Partial {
        let more = *b.downcast::<Sums>().expect("slerp partial");
        a.downcast_mut::<Sums>().expect("slerp partial").merge(more);
        a
    }

    fn conclude(&mut self, _pass: usize, total: Partial) -> Result<(), OpError> {
        let s = total.downcast::<Sums>().expect("slerp partial");
        let (cb, c1) = slerp_coefficients(self.t, s.0[0].value(), s.0[1].value(), s.0[2].value());
        self.coefficients = Some((cb as f32, c1 as f32));
        Ok(())
    }

    fn apply(&self, chunk: &mut Chunk<'_>) -> Result<(), OpError> {
        let (cb, c1) = self.coefficients.expect("slerp's pass has run");
        let len = chunk.len;
        for ((out, &b), &d) in chunk
            .delta
            .iter_mut()
            .zip(chunk.base)
            .zip(&chunk.stack[..len])
        {
            *out = (cb * b + c1 * (b + d)) - b;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// nearswap
// ---------------------------------------------------------------------------

/// `nearswap`.
pub struct Nearswap;

static NEARSWAP: OpSpec = OpSpec {
    name: "nearswap",
    aliases: &[],
    signatures: &[Signature::new(Ty::Stack, Ty::Delta)],
    params: &[ParamSpec {
        name: "t",
        kind: ParamKind::Number {
            min: reefknot_lang::Bound::Inclusive(0.0),
            max: reefknot_lang::Bound::Unbounded,
        },
        default: None,
        doc: "distance below which the fine-tune's value is taken outright",
    }],
    models: Models::exactly(1),
    weighted: false,
    summary: "take the fine-tune's value where it is near the base, interpolate elsewhere",
    doc: "NearSwap, as mergekit's `nearswap`, for exactly one fine-tune: per element, \
`ω = clamp(t / max(|δ|, 1e-6), 0, 1)` and `Δ = ω·δ`, so entries that moved less than `t` \
take the fine-tune's value and larger moves are shrunk to length `t`. Model weights are \
ignored.",
};

const NEAR_T: Param<NumberParam> = Param::number(&NEARSWAP, "t");

impl Operator for Nearswap {
    fn spec(&self) -> &'static OpSpec {
        &NEARSWAP
    }

    fn bind(&self, args: &Args, _ctx: &BindCtx<'_>) -> Result<Box<dyn Kernel>, OpError> {
        Ok(Box::new(NearswapKernel {
            t: args.number(NEAR_T) as f32,
        }))
    }
}

struct NearswapKernel {
    t: f32,
}

impl Kernel for NearswapKernel {
    fn apply(&self, chunk: &mut Chunk<'_>) -> Result<(), OpError> {
        let len = chunk.len;
        for (out, &d) in chunk.delta.iter_mut().zip(&chunk.stack[..len]) {
            let w = (self.t / d.abs().max(1e-6)).clamp(0.0, 1.0);
            *out = w * d;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// model_stock
// ---------------------------------------------------------------------------

/// `model_stock`.
pub struct ModelStock;

static MODEL_STOCK: OpSpec = OpSpec {
    name: "model_stock",
    aliases: &[],
    signatures: &[Signature::new(Ty::Stack, Ty::Delta)],
    params: &[ParamSpec {
        name: "filter_wise",
        kind: ParamKind::Bool,
        default: Some(DefaultValue::Bool(false)),
        doc: "one interpolation ratio per row instead of per tensor",
    }],
    models: Models::at_least(2),
    weighted: false,
    summary: "Model Stock: move the base towards the average by the task vectors' angle",
    doc: "Model Stock (Jang et al. 2024), as mergekit's `model_stock`: with `c` the mean of the \
pairwise cosines `⟨δ_i, δ_j⟩ / max(‖δ_i‖·‖δ_j‖, 1e-6)` (each clamped to [−1, 1]) of the `T ≥ 2` \
task vectors, `t = T·c / (1 + (T−1)·c)` (0 where the divisor is below 1e-6 in magnitude), \
and `Δ = t · (1/T)·Σ_i δ_i`: the merged tensor is `t·mean_i θ_i + (1−t)·θ_b`. With \
`filter_wise=true` the cosines and `t` are taken per row (the last dimension; a vector is \
one row). Model weights are ignored. The norms and dot products come from one streaming \
pass.",
};

const FILTER_WISE: Param<BoolParam> = Param::flag(&MODEL_STOCK, "filter_wise");

impl Operator for ModelStock {
    fn spec(&self) -> &'static OpSpec {
        &MODEL_STOCK
    }

    fn whole_rows(&self, args: &Args) -> bool {
        args.flag(FILTER_WISE)
    }

    fn check(&self, args: &Args, ctx: &BindCtx<'_>) -> Result<(), OpError> {
        if args.flag(FILTER_WISE) {
            rows_fit("model_stock", ctx)?;
        }
        Ok(())
    }

    fn bind(&self, args: &Args, ctx: &BindCtx<'_>) -> Result<Box<dyn Kernel>, OpError> {
        Ok(Box::new(StockKernel {
            models: ctx.models,
            row: args.flag(FILTER_WISE).then(|| ctx.row_len()),
            ratios: None,
        }))
    }
}

struct StockKernel {
    models: usize,
    /// Per-row ratios over rows of this length; `None`: one ratio for the tensor.
    row: Option<usize>,
    /// Once the pass has run: one ratio for the tensor, or one per row.
    ratios: Option<Vec<f32>>,
}

/// The row-wise pass's result: per chunk (by index), the ratio of each of its rows.
struct RowRatios(Vec<(usize, Vec<f32>)>);

impl StockKernel {
    /// Squared norms `‖δ_i‖²` (`T` of them), then `⟨δ_i, δ_j⟩` for `i < j`.
    fn products(&self) -> usize {
        self.models + self.models * (self.models - 1) / 2
    }

    /// Adds the products of one run of elements (the same range of every model) to `out`.
    fn fold(&self, chunk: &Chunk<'_>, range: std::ops::Range<usize>, out: &mut [f64]) {
        let t = self.models;
        let v = |i: usize| &chunk.model(i)[range.clone()];
        let mut k = t;
        for i in 0..t {
            out[i] += dot(v(i), v(i));
            for j in i + 1..t {
                out[k] += dot(v(i), v(j));
                k += 1;
            }
        }
    }

    /// The ratio `t` from the products.
    fn ratio(&self, p: &[f64]) -> f32 {
        let n = self.models;
        let mut cosines = 0.0;
        let mut k = n;
        for i in 0..n {
            for j in i + 1..n {
                let norms = (p[i].sqrt() * p[j].sqrt()).max(1e-6);
                cosines += (p[k] / norms).clamp(-1.0, 1.0);
                k += 1;
            }
        }
        let c = cosines / (n * (n - 1) / 2) as f64;
        let den = 1.0 + (n as f64 - 1.0) * c;
        if den.abs() < 1e-6 {
            0.0
        } else {
            (n as f64 * c / den) as f32
        }
    }
}

impl Kernel for StockKernel {
    fn wants_pass(&self, pass: usize) -> bool {
        pass == 0 && self.ratios.is_none()
    }

    fn partial(&self, _pass: usize) -> Partial {
        match self.row {
            Some(_) => Box::new(RowRatios(Vec::new())),
            None => Box::new(Sums(vec![OrderFreeSum::default(); self.products()])),
        }
    }

    fn observe(&self, _pass: usize, chunk: &Chunk<'_>, partial: &mut Partial) {
        let mut p = vec![0f64; self.products()];
        match self.row {
            Some(row) => {
                let rows = partial.downcast_mut::<RowRatios>().expect("stock partial");
                let ratios = (0..chunk.len.div_ceil(row))
                    .map(|r| {
                        p.fill(0.0);
                        self.fold(chunk, r * row..((r + 1) * row).min(chunk.len), &mut p);
                        self.ratio(&p)
                    })
                    .collect();
                rows.0.push((chunk.index, ratios));
            }
            None => {
                let sums = partial.downcast_mut::<Sums>().expect("stock partial");
                for start in (0..chunk.len).step_by(BLOCK) {
                    p.fill(0.0);
                    self.fold(chunk, start..(start + BLOCK).min(chunk.len), &mut p);
                    for (s, &x) in sums.0.iter_mut().zip(&p) {
                        s.add(x);
                    }
                }
            }
        }
    }

    fn combine(&self, _pass: usize, mut a: Partial, b: Partial) -> Partial {
        if let Some(rows) = a.downcast_mut::<RowRatios>() {
            rows.0
                .extend(b.downcast::<RowRatios>().expect("stock partial").0);
        } else {
            let more = *b.downcast::<Sums>().expect("stock partial");
            a.downcast_mut::<Sums>().expect("stock partial").merge(more);
        }
        a
    }

    fn conclude(&mut self, _pass: usize, total: Partial) -> Result<(), OpError> {
        let ratios = match total.downcast::<RowRatios>() {
            Ok(mut rows) => {
                rows.0.sort_unstable_by_key(|(index, _)| *index);
                rows.0.into_iter().flat_map(|(_, r)| r).collect()
            }
            Err(total) => {
                let sums = total.downcast::<Sums>().expect("stock partial");
                let p: Vec<f64> = sums.0.iter().map(|s| s.value()).collect();
                vec![self.ratio(&p)]
            }
        };
        self.ratios = Some(ratios);
        Ok(())
    }

    fn apply(&self, chunk: &mut Chunk<'_>) -> Result<(), OpError> {
        let ratios = self.ratios.as_deref().expect("model_stock's pass has run");
        let len = chunk.len;
        let n = self.models as f32;
        let out = &mut *chunk.delta;
        out.copy_from_slice(&chunk.stack[..len]);
        for i in 1..self.models {
            for (o, &d) in out.iter_mut().zip(&chunk.stack[i * len..(i + 1) * len]) {
                *o += d;
            }
        }
        match self.row {
            None => {
                let t = ratios[0];
                out.iter_mut().for_each(|o| *o = t * (*o / n));
            }
            Some(row) => {
                let first = chunk.offset / row;
                for (r, run) in out.chunks_mut(row).enumerate() {
                    let t = ratios[first + r];
                    run.iter_mut().for_each(|o| *o = t * (*o / n));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slerp_ends_are_the_inputs() {
        let (bb, xx, bx) = (4.0, 9.0, 1.0);
        assert_eq!(slerp_coefficients(0.0, bb, xx, bx), (1.0, 0.0));
        let (cb, c1) = slerp_coefficients(1.0, bb, xx, bx);
        assert!(cb.abs() < 1e-15 && (c1 - 1.0).abs() < 1e-15, "{cb} {c1}");
        // nearly parallel: linear interpolation
        assert_eq!(slerp_coefficients(0.3, 1.0, 1.0, 0.9999), (0.7, 0.3));
    }

    #[test]
    fn slerp_of_orthogonal_unit_vectors_stays_on_the_circle() {
        let (cb, c1) = slerp_coefficients(0.5, 1.0, 1.0, 0.0);
        let h = std::f64::consts::FRAC_1_SQRT_2;
        assert!((cb - h).abs() < 1e-15 && (c1 - h).abs() < 1e-15);
    }
}

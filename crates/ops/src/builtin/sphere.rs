//! Interpolations on the sphere over several models: `nuslerp`, `multislerp` and
//! `karcher`, as mergekit 0.1.5 defines them.
//!
//! Each result is a linear combination of the input vectors (the task vectors, or the
//! models' own tensors), whose coefficients depend only on the vectors' norms and
//! mutual dot products. So one statistics pass gathers the Gram matrix
//! `G_ik = ⟨v_i, v_k⟩` (block sums added order-free, as everywhere), the coefficients
//! are worked out from it in `f64` — for `karcher`, every iteration of its Riemannian
//! mean, which mergekit runs over whole tensors in memory — and `apply` streams
//! `Σ_i c_i·v_i`. Memory is a `T×T` matrix, whatever the tensor's size. `nuslerp`
//! without flattening works per row (whole rows in each chunk, nothing gathered) or per
//! column (one pass of per-column sums).

use std::sync::{Mutex, OnceLock};

use reefknot_lang::{Bound, DefaultValue, Models, OpSpec, ParamKind, ParamSpec, Signature, Ty};

use super::geometry::dot;
use crate::kernel::{
    Args, BindCtx, BoolParam, Chunk, Kernel, NumberParam, Operator, Param, Partial,
};
use crate::{OpError, OrderFreeSum, BLOCK};

/// The vectors a kernel combines, read from a chunk: the base itself first when
/// `with_base`, then each model's task vector `δ_i` (`centered`) or tensor `θ_b + δ_i`.
#[derive(Clone, Copy, Debug)]
struct Vectors {
    models: usize,
    centered: bool,
    with_base: bool,
}

impl Vectors {
    fn count(&self) -> usize {
        self.models + usize::from(self.with_base)
    }

    /// Vector `i` over `range` of the chunk, into `out`.
    fn read(&self, chunk: &Chunk<'_>, i: usize, range: std::ops::Range<usize>, out: &mut [f32]) {
        let base = &chunk.base[range.clone()];
        if self.with_base && i == 0 {
            out.copy_from_slice(base);
            return;
        }
        let d = &chunk.model(i - usize::from(self.with_base))[range];
        if self.centered {
            out.copy_from_slice(d);
        } else {
            for ((o, &b), &d) in out.iter_mut().zip(base).zip(d) {
                *o = b + d;
            }
        }
    }

    /// The Gram matrix's upper triangle over one chunk, block by block, into `sums`
    /// (`count·(count+1)/2` entries, row by row).
    fn fold_gram(&self, chunk: &Chunk<'_>, sums: &mut [OrderFreeSum]) {
        let n = self.count();
        let mut v = vec![[0f32; BLOCK]; n];
        for start in (0..chunk.len).step_by(BLOCK) {
            let len = BLOCK.min(chunk.len - start);
            for (i, v) in v.iter_mut().enumerate() {
                self.read(chunk, i, start..start + len, &mut v[..len]);
            }
            let mut k = 0;
            for i in 0..n {
                for j in i..n {
                    sums[k].add(dot(&v[i][..len], &v[j][..len]));
                    k += 1;
                }
            }
        }
    }

    /// The first two vectors over the whole chunk.
    fn read_two(&self, chunk: &Chunk<'_>) -> (Vec<f32>, Vec<f32>) {
        let mut a = vec![0f32; chunk.len];
        let mut b = vec![0f32; chunk.len];
        self.read(chunk, 0, 0..chunk.len, &mut a);
        self.read(chunk, 1, 0..chunk.len, &mut b);
        (a, b)
    }

    /// Turns a combination written to `chunk.delta` into the delta: minus the base when
    /// the vectors are the models' tensors.
    fn finish_delta(&self, chunk: &mut Chunk<'_>) {
        if !self.centered {
            for (o, &b) in chunk.delta.iter_mut().zip(chunk.base) {
                *o -= b;
            }
        }
    }

    /// `Δ = Σ_i c_i·v_i` (minus the base when the vectors are not centered).
    fn combine(&self, chunk: &mut Chunk<'_>, c: &[f64]) {
        let len = chunk.len;
        let mut v = vec![0f32; len];
        chunk.delta.fill(0.0);
        for (i, &ci) in c.iter().enumerate() {
            self.read(chunk, i, 0..len, &mut v);
            let ci = ci as f32;
            for (o, &x) in chunk.delta.iter_mut().zip(&v) {
                *o += ci * x;
            }
        }
        self.finish_delta(chunk);
    }
}

/// A symmetric matrix from its upper triangle, row by row.
fn gram(n: usize, upper: &[OrderFreeSum]) -> Vec<Vec<f64>> {
    let mut g = vec![vec![0.0; n]; n];
    let pairs = (0..n).flat_map(|i| (i..n).map(move |j| (i, j)));
    for ((i, j), sum) in pairs.zip(upper) {
        g[i][j] = sum.value();
        g[j][i] = sum.value();
    }
    g
}

/// `aᵀ G b`.
fn form(g: &[Vec<f64>], a: &[f64], b: &[f64]) -> f64 {
    let mut s = 0.0;
    for (i, row) in g.iter().enumerate() {
        for (k, &x) in row.iter().enumerate() {
            s += a[i] * x * b[k];
        }
    }
    s
}

/// The Gram-pass part of a kernel: the statistics pass and its result.
struct GramPass {
    vectors: Vectors,
    g: Option<Vec<Vec<f64>>>,
}

struct Upper(Vec<OrderFreeSum>);

impl GramPass {
    fn new(vectors: Vectors) -> Self {
        GramPass { vectors, g: None }
    }

    fn wants(&self, pass: usize) -> bool {
        pass == 0 && self.g.is_none()
    }

    fn partial(&self) -> Partial {
        let n = self.vectors.count();
        Box::new(Upper(vec![OrderFreeSum::default(); n * (n + 1) / 2]))
    }

    fn observe(&self, chunk: &Chunk<'_>, partial: &mut Partial) {
        let upper = partial.downcast_mut::<Upper>().expect("gram partial");
        self.vectors.fold_gram(chunk, &mut upper.0);
    }

    fn combine(mut a: Partial, b: Partial) -> Partial {
        let x = a.downcast_mut::<Upper>().expect("gram partial");
        for (p, q) in
            x.0.iter_mut()
                .zip(b.downcast::<Upper>().expect("gram partial").0)
        {
            p.merge(q);
        }
        a
    }

    fn conclude(&mut self, total: Partial) {
        let upper = total.downcast::<Upper>().expect("gram partial");
        self.g = Some(gram(self.vectors.count(), &upper.0));
    }

    fn g(&self) -> &[Vec<f64>] {
        self.g.as_deref().expect("the Gram pass has run")
    }
}

const CENTERED: ParamSpec = ParamSpec {
    name: "centered",
    kind: ParamKind::Bool,
    default: Some(DefaultValue::Bool(true)),
    doc: "interpolate the task vectors (mergekit with a base_model), or the models' own tensors",
};

// ---------------------------------------------------------------------------
// nuslerp
// ---------------------------------------------------------------------------

/// `nuslerp`.
pub struct Nuslerp;

static NUSLERP: OpSpec = OpSpec {
    name: "nuslerp",
    aliases: &[],
    signatures: &[Signature::new(Ty::Stack, Ty::Delta)],
    params: &[
        ParamSpec {
            name: "flatten",
            kind: ParamKind::Bool,
            default: Some(DefaultValue::Bool(true)),
            doc: "one angle for the whole tensor (mergekit's nuslerp_flatten)",
        },
        ParamSpec {
            name: "row_wise",
            kind: ParamKind::Bool,
            default: Some(DefaultValue::Bool(false)),
            doc: "without flatten: slerp the vectors along the first dimension instead of the last (nuslerp_row_wise)",
        },
        CENTERED,
    ],
    models: Models::exactly(2),
    weighted: true,
    summary: "slerp between two fine-tunes, t from their weights",
    doc: "mergekit's `nuslerp` for exactly two fine-tunes with weights `w_1`, `w_2`: \
`t = w_2/(w_1 + w_2)` (0.5 when `|w_1 + w_2| < 1e-6`), and the spherical interpolation \
`(sin((1−t)Ω)·v_1 + sin(tΩ)·v_2)/sin Ω`, `cos Ω = ⟨v̂_1, v̂_2⟩` (norms clamped at 1e-7), or \
the linear `(1−t)·v_1 + t·v_2` where `1 − cos²Ω ≤ 1e-16`. The `v_i` are the task vectors \
(`centered=true`, mergekit with a `base_model`: the result is added to the base) or the \
models' tensors (`centered=false`, mergekit without one: the base is then only the \
template of the output). With `flatten=true` there is one angle per tensor; otherwise \
one per vector along the last dimension (rows; whole rows are streamed together), or \
with `row_wise=true` along the first (columns; one pass gathers per-column sums, 48 \
bytes per column).",
};

const FLATTEN: Param<BoolParam> = Param::flag(&NUSLERP, "flatten");
const ROW_WISE: Param<BoolParam> = Param::flag(&NUSLERP, "row_wise");
const NU_CENTERED: Param<BoolParam> = Param::flag(&NUSLERP, "centered");

/// How `nuslerp` groups the elements into vectors.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Layout {
    Whole,
    /// Vectors along the last dimension, of this length.
    Rows(usize),
    /// Vectors along the first dimension: element `j` is in column `j % columns`.
    Columns(usize),
}

impl Operator for Nuslerp {
    fn spec(&self) -> &'static OpSpec {
        &NUSLERP
    }

    fn whole_rows(&self, args: &Args) -> bool {
        !args.flag(FLATTEN) && !args.flag(ROW_WISE)
    }

    fn check(&self, args: &Args, ctx: &BindCtx<'_>) -> Result<(), OpError> {
        if self.whole_rows(args) {
            super::geometry::rows_fit("nuslerp", ctx)?;
        }
        Ok(())
    }

    fn bind(&self, args: &Args, ctx: &BindCtx<'_>) -> Result<Box<dyn Kernel>, OpError> {
        let layout = if args.flag(FLATTEN) {
            Layout::Whole
        } else if args.flag(ROW_WISE) {
            let first = ctx.shape.first().copied().unwrap_or(1).max(1);
            Layout::Columns((ctx.numel / first).max(1))
        } else {
            Layout::Rows(ctx.row_len().max(1))
        };
        let vectors = Vectors {
            models: 2,
            centered: args.flag(NU_CENTERED),
            with_base: false,
        };
        Ok(Box::new(NuslerpKernel {
            layout,
            vectors,
            whole: GramPass::new(vectors),
            totals: Mutex::new(match layout {
                Layout::Columns(n) => vec![Default::default(); n],
                _ => Vec::new(),
            }),
            columns: None,
            column_coefficients: OnceLock::new(),
        }))
    }
}

struct NuslerpKernel {
    layout: Layout,
    vectors: Vectors,
    whole: GramPass,
    /// `row_wise`: per column, `‖v_1‖²`, `‖v_2‖²`, `⟨v_1, v_2⟩` as the pass adds them up,
    /// one accumulator for every worker (the sums are exact integers on a grid, so the
    /// order of the additions does not matter), 96 bytes per column.
    totals: Mutex<Vec<[OrderFreeSum; 3]>>,
    /// Per column: the three sums, once the pass has run.
    columns: Option<Vec<[f64; 3]>>,
    /// Per column, the two coefficients, from the first chunk on.
    column_coefficients: OnceLock<Vec<(f32, f32)>>,
}

/// The column pass's partial: the sums go straight into [`NuslerpKernel::totals`].
struct ColumnPass;

/// The coefficients of `v_1` and `v_2`, from `‖v_1‖²`, `‖v_2‖²` and `⟨v_1, v_2⟩`.
fn nuslerp_coefficients(t: f64, aa: f64, bb: f64, ab: f64) -> (f64, f64) {
    let na = aa.sqrt().max(1e-7);
    let nb = bb.sqrt().max(1e-7);
    let cos = (ab / (na * nb)).clamp(-1.0, 1.0);
    if 1.0 - cos * cos <= 1e-16 {
        return (1.0 - t, t);
    }
    let omega = cos.acos();
    let s = omega.sin();
    (((1.0 - t) * omega).sin() / s, (t * omega).sin() / s)
}

/// `t` from the two weights, as mergekit.
fn nuslerp_t(weights: &[f32]) -> f64 {
    let (w1, w2) = (f64::from(weights[0]), f64::from(weights[1]));
    let total = w1 + w2;
    if total.abs() < 1e-6 {
        0.5
    } else {
        w2 / total
    }
}

impl Kernel for NuslerpKernel {
    fn wants_pass(&self, pass: usize) -> bool {
        match self.layout {
            Layout::Whole => self.whole.wants(pass),
            Layout::Rows(_) => false,
            Layout::Columns(_) => pass == 0 && self.columns.is_none(),
        }
    }

    fn partial(&self, _pass: usize) -> Partial {
        match self.layout {
            Layout::Columns(_) => Box::new(ColumnPass),
            _ => self.whole.partial(),
        }
    }

    fn observe(&self, _pass: usize, chunk: &Chunk<'_>, partial: &mut Partial) {
        let Layout::Columns(n) = self.layout else {
            return self.whole.observe(chunk, partial);
        };
        let (a, b) = self.vectors.read_two(chunk);
        let mut totals = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        for (j, (&x, &y)) in a.iter().zip(&b).enumerate() {
            let s = &mut totals[(chunk.offset + j) % n];
            let (x, y) = (f64::from(x), f64::from(y));
            s[0].add(x * x);
            s[1].add(y * y);
            s[2].add(x * y);
        }
    }

    fn combine(&self, _pass: usize, a: Partial, b: Partial) -> Partial {
        if a.is::<ColumnPass>() {
            return a;
        }
        GramPass::combine(a, b)
    }

    fn conclude(&mut self, _pass: usize, total: Partial) -> Result<(), OpError> {
        if total.is::<ColumnPass>() {
            let totals = std::mem::take(self.totals.get_mut().unwrap_or_else(|e| e.into_inner()));
            self.columns = Some(
                totals
                    .iter()
                    .map(|s| [s[0].value(), s[1].value(), s[2].value()])
                    .collect(),
            );
        } else {
            self.whole.conclude(total);
        }
        Ok(())
    }

    fn apply(&self, chunk: &mut Chunk<'_>) -> Result<(), OpError> {
        let t = nuslerp_t(chunk.weights);
        match self.layout {
            Layout::Whole => {
                let g = self.whole.g();
                let (c1, c2) = nuslerp_coefficients(t, g[0][0], g[1][1], g[0][1]);
                self.vectors.combine(chunk, &[c1, c2]);
            }
            Layout::Rows(row) => {
                let len = chunk.len;
                let (a, b) = self.vectors.read_two(chunk);
                for start in (0..len).step_by(row) {
                    let r = start..(start + row).min(len);
                    let (x, y) = (&a[r.clone()], &b[r.clone()]);
                    let (c1, c2) = nuslerp_coefficients(t, dot(x, x), dot(y, y), dot(x, y));
                    let (c1, c2) = (c1 as f32, c2 as f32);
                    for ((o, &u), &v) in chunk.delta[r].iter_mut().zip(x).zip(y) {
                        *o = c1 * u + c2 * v;
                    }
                }
                self.vectors.finish_delta(chunk);
            }
            Layout::Columns(n) => {
                // Once per tensor (the weights, hence t, are the tensor's).
                let coef = self.column_coefficients.get_or_init(|| {
                    let stats = self.columns.as_deref().expect("nuslerp's pass has run");
                    stats
                        .iter()
                        .map(|s| {
                            let (a, b) = nuslerp_coefficients(t, s[0], s[1], s[2]);
                            (a as f32, b as f32)
                        })
                        .collect()
                });
                let (a, b) = self.vectors.read_two(chunk);
                for (j, o) in chunk.delta.iter_mut().enumerate() {
                    let (c1, c2) = coef[(chunk.offset + j) % n];
                    *o = c1 * a[j] + c2 * b[j];
                }
                self.vectors.finish_delta(chunk);
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// multislerp
// ---------------------------------------------------------------------------

/// `multislerp`.
pub struct Multislerp;

static MULTISLERP: OpSpec = OpSpec {
    name: "multislerp",
    aliases: &[],
    signatures: &[Signature::new(Ty::Stack, Ty::Delta)],
    params: &[
        ParamSpec {
            name: "normalize",
            kind: ParamKind::Bool,
            default: Some(DefaultValue::Bool(true)),
            doc: "divide the weights by their sum (mergekit's normalize_weights)",
        },
        ParamSpec {
            name: "eps",
            kind: ParamKind::Number {
                min: Bound::Inclusive(0.0),
                max: Bound::Unbounded,
            },
            default: Some(DefaultValue::Number(1e-8)),
            doc: "added to norms before dividing by them",
        },
        CENTERED,
    ],
    models: Models::ANY,
    weighted: true,
    summary: "weighted spherical mean of several fine-tunes (tangent-space barycentre)",
    doc: "mergekit's `multislerp`: the vectors `v_i` (task vectors with `centered=true`, as \
mergekit with a `base_model`; the models' tensors otherwise) are put on the unit sphere, \
`u_i = v_i/(‖v_i‖ + eps)`; their weighted mean `μ = Σ_i w_i·u_i` (weights divided by \
their sum with `normalize=true`) is normalised, the `u_i` are projected onto the tangent \
space at `μ̂`, their weighted sum `τ` is mapped back, `μ̂·cos‖τ‖ + τ·sin‖τ‖/‖τ‖` (`‖τ‖` plus \
eps), and scaled by `Σ_i w_i‖v_i‖`. Where `‖μ‖ < eps` two models fall back to \
`w_1·v_1 + w_2·v_2` and more are an error, as in mergekit. One model is returned as it \
is. Computed from the Gram matrix of one streaming pass.",
};

const MS_NORMALIZE: Param<BoolParam> = Param::flag(&MULTISLERP, "normalize");
const MS_EPS: Param<NumberParam> = Param::number(&MULTISLERP, "eps");
const MS_CENTERED: Param<BoolParam> = Param::flag(&MULTISLERP, "centered");

impl Operator for Multislerp {
    fn spec(&self) -> &'static OpSpec {
        &MULTISLERP
    }

    fn bind(&self, args: &Args, ctx: &BindCtx<'_>) -> Result<Box<dyn Kernel>, OpError> {
        let vectors = Vectors {
            models: ctx.models,
            centered: args.flag(MS_CENTERED),
            with_base: false,
        };
        let mean = Mean::Multislerp {
            normalize: args.flag(MS_NORMALIZE),
            eps: args.number(MS_EPS),
        };
        Ok(Box::new(GramKernel::new(mean, vectors)))
    }
}

/// multislerp's coefficients of the vectors, or why there are none.
fn multislerp_coefficients(
    g: &[Vec<f64>],
    weights: &[f32],
    normalize: bool,
    eps: f64,
) -> Result<Vec<f64>, String> {
    let n = g.len();
    if n == 1 {
        return Ok(vec![1.0]);
    }
    let mut w: Vec<f64> = weights.iter().map(|&x| f64::from(x)).collect();
    if normalize {
        let total: f64 = w.iter().sum();
        w.iter_mut().for_each(|x| *x /= total);
    }
    let norms: Vec<f64> = (0..n).map(|i| g[i][i].max(0.0).sqrt()).collect();
    let s: Vec<f64> = norms.iter().map(|x| 1.0 / (x + eps)).collect();
    let mu: Vec<f64> = (0..n).map(|i| w[i] * s[i]).collect();
    let mu_norm = form(g, &mu, &mu).max(0.0).sqrt();
    if mu_norm < eps {
        if n == 2 {
            return Ok(w);
        }
        return Err(
            "the weighted mean of the unit task vectors is zero (antipodal vectors \
                    whose weights balance out): change the weights"
                .into(),
        );
    }
    let m: Vec<f64> = mu.iter().map(|x| x / mu_norm).collect();
    // d_i = ⟨u_i, μ̂⟩
    let d: Vec<f64> = (0..n)
        .map(|i| s[i] * (0..n).map(|k| g[i][k] * m[k]).sum::<f64>())
        .collect();
    let big_d: f64 = (0..n).map(|i| w[i] * d[i]).sum();
    let tau: Vec<f64> = (0..n).map(|k| w[k] * s[k] - big_d * m[k]).collect();
    let tn = form(g, &tau, &tau).max(0.0).sqrt() + eps;
    let avg: f64 = (0..n).map(|i| w[i] * norms[i]).sum();
    Ok((0..n)
        .map(|k| avg * (m[k] * tn.cos() + tau[k] * tn.sin() / tn))
        .collect())
}

// ---------------------------------------------------------------------------
// karcher
// ---------------------------------------------------------------------------

/// `karcher`.
pub struct Karcher;

static KARCHER: OpSpec = OpSpec {
    name: "karcher",
    aliases: &[],
    signatures: &[Signature::new(Ty::Stack, Ty::Delta)],
    params: &[
        ParamSpec {
            name: "max_iter",
            kind: ParamKind::Number {
                min: Bound::Inclusive(0.0),
                max: Bound::Inclusive(10_000.0),
            },
            default: Some(DefaultValue::Number(10.0)),
            doc: "iterations of the Riemannian mean at most",
        },
        ParamSpec {
            name: "tol",
            kind: ParamKind::Number {
                min: Bound::Inclusive(0.0),
                max: Bound::Unbounded,
            },
            default: Some(DefaultValue::Number(1e-5)),
            doc: "stop when the tangent step is shorter; norms and angles below it are skipped",
        },
        ParamSpec {
            name: "with_base",
            kind: ParamKind::Bool,
            default: Some(DefaultValue::Bool(false)),
            doc: "average the base model too (mergekit does when the config names a base_model)",
        },
    ],
    models: Models::ANY,
    weighted: false,
    summary: "Karcher (Riemannian) mean of the models' tensors on the sphere",
    doc: "mergekit's `karcher`: the weighted Karcher mean of the models' own tensors \
`θ_i` (not task vectors), every model weighted `1/N` (recipe weights are ignored, as in \
mergekit): unit vectors `u_i = θ_i/‖θ_i‖` (norms at most `tol` left out), start from \
their normalised mean, and repeat up to `max_iter` times `u ← cos‖T‖·u + sin‖T‖·T/‖T‖` \
with the tangent `T = Σ_i α_i·θ_i/sin θ_i·(u_i − cos θ_i·u)` (`θ_i` the angle to `u`; \
terms with `θ_i < tol` skipped), stopping once `‖T‖ < tol`; the result is \
`(Σ_i α_i‖θ_i‖)·u`. mergekit averages its `base_model` too when the config names one: \
`with_base=true`. Every iterate is a combination of the inputs, so the iteration runs on \
their Gram matrix, gathered in one streaming pass; nothing of the tensor is held.",
};

const MAX_ITER: Param<NumberParam> = Param::number(&KARCHER, "max_iter");
const TOL: Param<NumberParam> = Param::number(&KARCHER, "tol");
const WITH_BASE: Param<BoolParam> = Param::flag(&KARCHER, "with_base");

impl Operator for Karcher {
    fn spec(&self) -> &'static OpSpec {
        &KARCHER
    }

    fn bind(&self, args: &Args, ctx: &BindCtx<'_>) -> Result<Box<dyn Kernel>, OpError> {
        let vectors = Vectors {
            models: ctx.models,
            centered: false,
            with_base: args.flag(WITH_BASE),
        };
        let mean = Mean::Karcher {
            max_iter: args.number(MAX_ITER) as usize,
            tol: args.number(TOL),
        };
        Ok(Box::new(GramKernel::new(mean, vectors)))
    }
}

/// The Karcher mean's coefficients of the inputs, from their Gram matrix, as mergekit's
/// `karcher_merge_tensors` with equal weights.
fn karcher_coefficients(g: &[Vec<f64>], max_iter: usize, tol: f64) -> Vec<f64> {
    let n = g.len();
    if n == 1 {
        return vec![1.0];
    }
    let alpha = 1.0 / n as f64;
    let norms: Vec<f64> = (0..n).map(|i| g[i][i].max(0.0).sqrt()).collect();
    let valid: Vec<usize> = (0..n).filter(|&i| norms[i] > tol).collect();
    if valid.is_empty() {
        return vec![0.0; n];
    }
    let a = alpha / (alpha * valid.len() as f64); // normalised over the valid inputs
                                                  // The mean u = Σ β_k θ_k.
    let mut beta = vec![0.0; n];
    for &i in &valid {
        beta[i] = a / norms[i];
    }
    let norm = |b: &[f64]| form(g, b, b).max(0.0).sqrt();
    let mean_norm = norm(&beta);
    if mean_norm < tol {
        beta.fill(0.0);
        beta[valid[0]] = 1.0 / norms[valid[0]];
    } else {
        beta.iter_mut().for_each(|x| *x /= mean_norm);
    }
    for _ in 0..max_iter {
        let mut tangent = vec![0.0; n];
        for &i in &valid {
            // ⟨u, u_i⟩ = Σ_k β_k G_ki / ‖θ_i‖
            let dot = ((0..n).map(|k| beta[k] * g[k][i]).sum::<f64>() / norms[i]).clamp(-1.0, 1.0);
            let theta = dot.acos();
            if theta < tol {
                continue;
            }
            let f = a * theta / theta.sin();
            tangent[i] += f / norms[i];
            for (t, &b) in tangent.iter_mut().zip(&beta) {
                *t -= f * dot * b;
            }
        }
        let tn = norm(&tangent);
        if tn < tol {
            break;
        }
        for (b, &t) in beta.iter_mut().zip(&tangent) {
            *b = tn.cos() * *b + tn.sin() * t / tn;
        }
        let un = norm(&beta);
        if un > tol {
            beta.iter_mut().for_each(|x| *x /= un);
        }
    }
    let scale: f64 = norms.iter().map(|x| alpha * x).sum();
    beta.iter().map(|b| scale * b).collect()
}

/// Which mean a [`GramKernel`] takes.
enum Mean {
    Multislerp { normalize: bool, eps: f64 },
    Karcher { max_iter: usize, tol: f64 },
}

/// `multislerp` and `karcher`: a Gram pass, then `Σ_i c_i·v_i` with the coefficients of
/// the mean, worked out once per tensor (on the first chunk: they need the tensor's
/// weights, which every chunk carries).
struct GramKernel {
    mean: Mean,
    gram: GramPass,
    coefficients: OnceLock<Result<Vec<f64>, String>>,
}

impl GramKernel {
    fn new(mean: Mean, vectors: Vectors) -> Self {
        GramKernel {
            mean,
            gram: GramPass::new(vectors),
            coefficients: OnceLock::new(),
        }
    }
}

impl Kernel for GramKernel {
    fn wants_pass(&self, pass: usize) -> bool {
        self.gram.vectors.count() > 1 && self.gram.wants(pass)
    }
    fn partial(&self, _pass: usize) -> Partial {
        self.gram.partial()
    }
    fn observe(&self, _pass: usize, chunk: &Chunk<'_>, partial: &mut Partial) {
        self.gram.observe(chunk, partial);
    }
    fn combine(&self, _pass: usize, a: Partial, b: Partial) -> Partial {
        GramPass::combine(a, b)
    }
    fn conclude(&mut self, _pass: usize, total: Partial) -> Result<(), OpError> {
        self.gram.conclude(total);
        Ok(())
    }
    fn apply(&self, chunk: &mut Chunk<'_>) -> Result<(), OpError> {
        let c = self.coefficients.get_or_init(|| {
            if self.gram.vectors.count() == 1 {
                return Ok(vec![1.0]);
            }
            let g = self.gram.g();
            match self.mean {
                Mean::Multislerp { normalize, eps } => {
                    multislerp_coefficients(g, chunk.weights, normalize, eps)
                }
                Mean::Karcher { max_iter, tol } => Ok(karcher_coefficients(g, max_iter, tol)),
            }
        });
        let c = c.as_ref().map_err(|message| OpError::Failed {
            op: "multislerp".into(),
            message: message.clone(),
        })?;
        self.gram.vectors.combine(chunk, c);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn karcher_of_identical_unit_vectors_is_the_vector() {
        // Three copies of one vector of norm 2: the mean is that vector.
        let g = vec![vec![4.0; 3]; 3];
        let c = karcher_coefficients(&g, 10, 1e-5);
        let sum: f64 = c.iter().sum();
        assert!((sum - 1.0).abs() < 1e-12, "{c:?}");
    }

    #[test]
    fn karcher_of_two_orthogonal_unit_vectors_is_their_bisector() {
        let g = vec![vec![1.0, 0.0], vec![0.0, 1.0]];
        let c = karcher_coefficients(&g, 50, 1e-12);
        let h = std::f64::consts::FRAC_1_SQRT_2;
        assert!((c[0] - h).abs() < 1e-9 && (c[1] - h).abs() < 1e-9, "{c:?}");
    }

    #[test]
    fn nuslerp_t_follows_the_weights() {
        assert_eq!(nuslerp_t(&[1.0, 3.0]), 0.75);
        assert_eq!(nuslerp_t(&[1.0, -1.0]), 0.5);
        assert_eq!(nuslerp_coefficients(0.3, 1.0, 4.0, 2.0), (0.7, 0.3));
    }

    #[test]
    fn multislerp_of_one_direction_is_the_weighted_norm() {
        // Two parallel vectors of norms 1 and 3, equal weights: the result is the unit
        // direction times the mean norm 2, i.e. coefficients summing to 2/‖·‖ terms.
        let g = vec![vec![1.0, 3.0], vec![3.0, 9.0]];
        let c = multislerp_coefficients(&g, &[1.0, 1.0], true, 1e-8).unwrap();
        // result = c0·v + c1·3v has norm 2: c0 + 3·c1 = 2.
        assert!((c[0] + 3.0 * c[1] - 2.0).abs() < 1e-6, "{c:?}");
        // antipodal, balanced, three of them: an error
        let g = vec![
            vec![1.0, -1.0, 0.0],
            vec![-1.0, 1.0, 0.0],
            vec![0.0, 0.0, 0.0],
        ];
        assert!(multislerp_coefficients(&g, &[1.0, 1.0, 0.0], true, 1e-8).is_err());
    }
}

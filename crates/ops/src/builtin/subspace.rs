//! Subspace merges: operators that work on each weight matrix's singular vectors
//! rather than on its entries — `tsv` (TSV-M), `iso` (Iso-C) and `iso_cts` (Iso-CTS).
//!
//! A matrix (a tensor of two dimensions) needs all of its task vectors at once, so the
//! kernel gathers them in one statistics pass (`T·numel` floats, the stage's whole
//! input: the one tensor being merged, never the model), computes the merged matrix in
//! `conclude` with faer's SVD, and `apply` copies each chunk's part. Every other tensor
//! (norms, biases, anything not two-dimensional) takes the mean of the task vectors,
//! chunk by chunk, as the papers do; an override can give those tensors another
//! expression.
//!
//! faer is the Rust linear-algebra crate built for speed: pure Rust (no BLAS or LAPACK
//! to install), SIMD kernels chosen at run time, symmetric eigensolvers and SVDs in f32
//! and f64. The matrices are gathered in f32 and decomposed in f64, each SVD from the
//! eigendecomposition of the smaller Gram matrix (see [`svd`]): a chain of SVDs and
//! polar factors in f32 loses 1e-4 of the result where singular values crowd (the
//! golden family: FusionBench's float32 runs are 6e-5 off float64) and a few percent
//! on 2048×2048 matrices with flat spectra (the benchmark family: 2.5 %), while f64
//! keeps it to rounding. faer runs sequentially here: tensors are merged in parallel
//! already, and one thread gives the same bytes at any thread count (another CPU's
//! vector instructions may change the last bits).

use faer::diag::Diag;
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::evd::{self, ComputeEigenvectors, SelfAdjointEvdParams};
use faer::linalg::matmul::matmul;
use faer::linalg::matmul::triangular::{self, BlockStructure};
use faer::{Accum, Mat, MatRef, Par, Spec};
use reefknot_lang::{DefaultValue, OpSpec, ParamKind, ParamSpec, Signature, Ty};

use crate::kernel::{Args, BindCtx, Chunk, Kernel, NumberParam, Operator, Param, Partial};
use crate::OpError;

/// `tsv` (alias `tsv_m`).
pub struct Tsv;

static TSV: OpSpec = OpSpec {
    name: "tsv",
    aliases: &["tsv_m"],
    signatures: &[Signature::new(Ty::Stack, Ty::Delta)],
    params: &[ParamSpec {
        name: "k",
        kind: ParamKind::Number {
            min: reefknot_lang::Bound::Exclusive(0.0),
            max: reefknot_lang::Bound::Inclusive(1.0),
        },
        default: Some(DefaultValue::Number(1.0)),
        doc: "share of each matrix's rank the tasks fill together, split equally",
    }],
    models: reefknot_lang::Models::ANY,
    weighted: true,
    summary:
        "Task Singular Vectors merging (TSV-M): each task's top singular vectors, decorrelated",
    doc: "TSV-M (Gargiulo et al., CVPR 2025). For a matrix of rank `r = min(rows, cols)`, \
each weighted task vector `u_i = w_i·δ̃_i = U_i S_i V_iᵀ` keeps its top `k_t = ⌊r·k/T⌋` \
singular triplets; they are set side by side, `Û = [U_1[:, :k_t] … U_T[:, :k_t]]`, \
`Ŝ`, `V̂` likewise, `Û` and `V̂` are replaced by their nearest orthonormal matrices \
(the polar factors `P Qᵀ` of their SVDs `P Σ Qᵀ`), and `Δ = Û Ŝ V̂ᵀ`. A matrix too \
narrow for one triplet per task (`⌊r·k/T⌋ = 0`, e.g. a `[1, n]` matrix) gets `Δ = 0`, \
as in FusionBench. Tensors that are not matrices take the mean `Σ_i u_i / T`. `k = 1` \
is the paper's and FusionBench's choice; follow with `scale(λ)` for their α.",
};

/// `iso` (alias `iso_c`).
pub struct Iso;

static ISO: OpSpec = OpSpec {
    name: "iso",
    aliases: &["iso_c"],
    signatures: &[Signature::new(Ty::Stack, Ty::Delta)],
    params: &[],
    models: reefknot_lang::Models::ANY,
    weighted: true,
    summary: "isotropic merging in the common subspace (Iso-C): the sum's spectrum flattened",
    doc: "Iso-C (Marczak et al., ICML 2025). For a matrix, the sum of the weighted task \
vectors `Σ_i u_i = U S Vᵀ` keeps its singular vectors and has every singular value \
replaced by their mean: `Δ = mean(S)·U Vᵀ`. Tensors that are not matrices take the \
mean `Σ_i u_i / T`. Follow with `scale(λ)` for the paper's α.",
};

/// `iso_cts`.
pub struct IsoCts;

static ISO_CTS: OpSpec = OpSpec {
    name: "iso_cts",
    aliases: &[],
    signatures: &[Signature::new(Ty::Stack, Ty::Delta)],
    params: &[ParamSpec {
        name: "common",
        kind: ParamKind::closed(0.0, 1.0),
        default: Some(DefaultValue::Number(0.8)),
        doc: "share of each matrix's rank given to the common subspace",
    }],
    models: reefknot_lang::Models::ANY,
    weighted: true,
    summary: "isotropic merging in common and task-specific subspaces (Iso-CTS)",
    doc: "Iso-CTS (Marczak et al., ICML 2025). For a matrix of rank `r`, the common \
subspace is the top `c` singular vectors of `Σ_i u_i` (`c = r − T·round((r − ⌊r·common⌋)/T)`, \
so that the rest splits equally); each task adds the top `(r − c)/T` singular vectors \
of its `u_i` with the common subspace projected out, `u_i − U_c U_cᵀ u_i`. The `r` \
directions are orthonormalized (polar factors, as in `tsv`), and every singular value \
is set to their mean. Where rounding would make `c` negative (a small `common` on a \
narrow matrix), `c = 0` and each task adds `⌊r/T⌋` (FusionBench fails there). Tensors \
that are not matrices take the mean `Σ_i u_i / T`. FusionBench's default `common` is \
0.8; follow with `scale(λ)` for the paper's α.",
};

const TSV_K: Param<NumberParam> = Param::number(&TSV, "k");
const ISO_CTS_COMMON: Param<NumberParam> = Param::number(&ISO_CTS, "common");

/// Which subspace merge a kernel computes.
#[derive(Clone, Copy, Debug)]
enum Method {
    Tsv { k: f64 },
    Iso,
    IsoCts { common: f64 },
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Tsv { .. } => "tsv",
            Method::Iso => "iso",
            Method::IsoCts { .. } => "iso_cts",
        }
    }
}

impl Operator for Tsv {
    fn spec(&self) -> &'static OpSpec {
        &TSV
    }

    fn bind(&self, args: &Args, ctx: &BindCtx<'_>) -> Result<Box<dyn Kernel>, OpError> {
        Ok(Box::new(SubspaceKernel::new(
            Method::Tsv {
                k: args.number(TSV_K),
            },
            ctx,
        )))
    }
}

impl Operator for Iso {
    fn spec(&self) -> &'static OpSpec {
        &ISO
    }

    fn bind(&self, _args: &Args, ctx: &BindCtx<'_>) -> Result<Box<dyn Kernel>, OpError> {
        Ok(Box::new(SubspaceKernel::new(Method::Iso, ctx)))
    }
}

impl Operator for IsoCts {
    fn spec(&self) -> &'static OpSpec {
        &ISO_CTS
    }

    fn bind(&self, args: &Args, ctx: &BindCtx<'_>) -> Result<Box<dyn Kernel>, OpError> {
        Ok(Box::new(SubspaceKernel::new(
            Method::IsoCts {
                common: args.number(ISO_CTS_COMMON),
            },
            ctx,
        )))
    }
}

/// A subspace merge bound to one tensor.
struct SubspaceKernel {
    method: Method,
    /// `(rows, cols)` for a matrix; `None` for every other tensor (the mean).
    matrix: Option<(usize, usize)>,
    models: usize,
    /// The merged matrix, row-major, once computed.
    merged: Option<Vec<f32>>,
}

/// A gathered piece of the stage's input: `T × len` weighted task vector values (or,
/// for `iso`, their sum: `1 × len`), starting at element `offset`.
struct Piece {
    offset: usize,
    len: usize,
    values: Vec<f32>,
}

impl SubspaceKernel {
    fn new(method: Method, ctx: &BindCtx<'_>) -> Self {
        SubspaceKernel {
            method,
            matrix: match ctx.shape {
                [rows, cols] if *rows > 0 && *cols > 0 => Some((*rows, *cols)),
                _ => None,
            },
            models: ctx.models,
            merged: None,
        }
    }

    /// How many gathered vectors a piece holds: only the sum, for `iso`.
    fn gathered(&self) -> usize {
        match self.method {
            Method::Iso => 1,
            _ => self.models,
        }
    }

    fn failure(&self, message: String) -> OpError {
        OpError::Failed {
            op: format!("`{}`", self.method.name()),
            message,
        }
    }
}

impl Kernel for SubspaceKernel {
    fn wants_pass(&self, pass: usize) -> bool {
        pass == 0 && self.matrix.is_some() && self.merged.is_none()
    }

    fn partial(&self, _pass: usize) -> Partial {
        Box::new(Vec::<Piece>::new())
    }

    fn observe(&self, _pass: usize, chunk: &Chunk<'_>, partial: &mut Partial) {
        let pieces = partial
            .downcast_mut::<Vec<Piece>>()
            .expect("a subspace partial");
        let (l, t) = (chunk.len, chunk.models);
        let mut values = vec![0f32; self.gathered() * l];
        for i in 0..t {
            let w = chunk.weights[i];
            let x = chunk.model(i);
            let out = match self.method {
                Method::Iso => &mut values[..],
                _ => &mut values[i * l..(i + 1) * l],
            };
            for (o, &x) in out.iter_mut().zip(x) {
                *o += w * x;
            }
        }
        pieces.push(Piece {
            offset: chunk.offset,
            len: l,
            values,
        });
    }

    fn combine(&self, _pass: usize, mut a: Partial, b: Partial) -> Partial {
        let more = *b.downcast::<Vec<Piece>>().expect("a subspace partial");
        a.downcast_mut::<Vec<Piece>>()
            .expect("a subspace partial")
            .extend(more);
        a
    }

    fn conclude(&mut self, _pass: usize, total: Partial) -> Result<(), OpError> {
        let pieces = *total.downcast::<Vec<Piece>>().expect("a subspace partial");
        let (rows, cols) = self.matrix.expect("only matrices gather");
        let covered: usize = pieces.iter().map(|p| p.len).sum();
        assert_eq!(covered, rows * cols, "the pass covers the tensor once");
        // The gathered vectors as matrices, each piece freed once copied.
        let mut mats: Vec<Mat<f64>> = (0..self.gathered())
            .map(|_| Mat::zeros(rows, cols))
            .collect();
        for p in pieces {
            for (v, m) in mats.iter_mut().enumerate() {
                for (j, &x) in p.values[v * p.len..(v + 1) * p.len].iter().enumerate() {
                    let e = p.offset + j;
                    m[(e / cols, e % cols)] = f64::from(x);
                }
            }
        }
        let merged = match self.method {
            Method::Iso => iso(mats[0].as_ref()),
            Method::Tsv { k } => tsv(&mats, k),
            Method::IsoCts { common } => iso_cts(&mats, common),
        }
        .map_err(|e| self.failure(e))?;
        let mut out = vec![0f32; rows * cols];
        for (r, row) in out.chunks_exact_mut(cols).enumerate() {
            for (c, o) in row.iter_mut().enumerate() {
                *o = merged[(r, c)] as f32;
            }
        }
        self.merged = Some(out);
        Ok(())
    }

    fn apply(&self, chunk: &mut Chunk<'_>) -> Result<(), OpError> {
        let (o, l) = (chunk.offset, chunk.len);
        match &self.merged {
            Some(m) => chunk.delta.copy_from_slice(&m[o..o + l]),
            None => {
                // Not a matrix: the mean of the weighted task vectors.
                let t = chunk.models as f32;
                chunk.delta.fill(0.0);
                for i in 0..chunk.models {
                    let w = chunk.weights[i];
                    for (d, &x) in chunk.delta.iter_mut().zip(&chunk.stack[i * l..(i + 1) * l]) {
                        *d += w * x;
                    }
                }
                for d in chunk.delta.iter_mut() {
                    *d /= t;
                }
            }
        }
        Ok(())
    }
}

/// A thin SVD's `(U, S, V)`: every singular value, descending, and the leading singular
/// vectors asked for.
type Svd = (Mat<f64>, Vec<f64>, Mat<f64>);

/// Singular values below this share of the largest count as zero, at least; see
/// [`null_floor`].
const NULL_SINGULAR: f64 = 1e-7;

/// The singular value below which a direction of an `n`-wide Gram decomposition is
/// noise: the Gram matrix's eigenvalues carry an error of up to about `n·ε·σ_max²`, so
/// a singular value under `√(n·ε)·σ_max` (times a margin of 8) cannot be told from
/// zero. Such directions get zero vectors.
fn null_floor(sigma_max: f64, n: usize) -> f64 {
    sigma_max * NULL_SINGULAR.max(8.0 * (n as f64 * f64::EPSILON).sqrt())
}

/// The leading `want` singular triplets of `a = U·diag(S)·Vᵀ` (and every singular
/// value), from the eigendecomposition of the smaller Gram matrix (`aᵀa` or `aaᵀ`, its
/// lower half): two matrix products and one symmetric eigensolver, 1.7× faster than
/// faer's bidiagonal SVD on the benchmark family (before the Gram product was halved). In f64 a singular value
/// σ comes out with a relative error of about `ε·(σ_max/σ)²`: rounding for the
/// spectrum of a fine-tune's matrices, 1e-4 at `σ = 1e-6·σ_max`. Directions under
/// [`null_floor`] (a rank-deficient matrix, e.g. a LoRA fine-tune's) get zero vectors,
/// where an SVD would complete the basis arbitrarily. Sequential: the executor runs
/// one tensor per core already, and one thread gives the same bytes at any count.
fn svd(a: MatRef<'_, f64>, want: usize) -> Result<Svd, String> {
    // Work on the side with the smaller Gram matrix: a = U S Vᵀ ⇔ aᵀ = V S Uᵀ.
    if a.nrows() < a.ncols() {
        let (v, s, u) = svd(a.transpose(), want)?;
        return Ok((u, s, v));
    }
    let (s, v, rank) = right_singular(a)?;
    // U = a·V·S⁻¹ for the leading `k` directions only (zero past the rank).
    let k = want.min(s.len());
    let v = v.subcols(0, k).to_owned();
    let av = mul(a, v.as_ref());
    let u = Mat::from_fn(a.nrows(), k, |row, col| {
        if col < rank {
            av[(row, col)] / s[col]
        } else {
            0.0
        }
    });
    Ok((u, s, v))
}

/// The singular values (descending), right singular vectors and numerical rank of a
/// matrix with at least as many rows as columns, from the eigendecomposition of `aᵀa`;
/// the vectors past the rank (singular values under [`null_floor`]) are zero.
fn right_singular(a: MatRef<'_, f64>) -> Result<(Vec<f64>, Mat<f64>, usize), String> {
    let (m, n) = a.shape();
    debug_assert!(m >= n);
    // The lower half of the symmetric `aᵀa`, all the eigensolver reads: half the
    // products of a full one, the same bits in each entry computed.
    let mut gram = Mat::<f64>::zeros(n, n);
    triangular::matmul(
        &mut gram,
        BlockStructure::TriangularLower,
        Accum::Replace,
        a.transpose(),
        BlockStructure::Rectangular,
        a,
        BlockStructure::Rectangular,
        1.0,
        Par::Seq,
    );
    let mut vectors = Mat::<f64>::zeros(n, n);
    let mut values = Diag::<f64>::zeros(n);
    let params: Spec<SelfAdjointEvdParams, f64> = Default::default();
    let mut scratch = MemBuffer::new(evd::self_adjoint_evd_scratch::<f64>(
        n,
        ComputeEigenvectors::Yes,
        Par::Seq,
        params,
    ));
    evd::self_adjoint_evd(
        gram.as_ref(),
        values.as_mut(),
        Some(vectors.as_mut()),
        Par::Seq,
        MemStack::new(&mut scratch),
        params,
    )
    .map_err(|e| format!("the decomposition of a {m}×{n} matrix did not converge ({e:?})"))?;
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| values[j].total_cmp(&values[i]));
    let s: Vec<f64> = order.iter().map(|&i| values[i].max(0.0).sqrt()).collect();
    let floor = null_floor(s.first().copied().unwrap_or(0.0), n);
    let rank = s.iter().take_while(|&&x| x > floor).count();
    let v = Mat::from_fn(n, n, |row, col| {
        if col < rank {
            vectors[(row, order[col])]
        } else {
            0.0
        }
    });
    Ok((s, v, rank))
}

/// `a·(V·S⁻¹·Vᵀ)` over the first `rank` of `a`'s singular values `s` and right vectors
/// `v`: the polar factor `U·Vᵀ` in one product with `a` instead of two.
fn polar_from(a: MatRef<'_, f64>, s: &[f64], v: MatRef<'_, f64>, rank: usize) -> Mat<f64> {
    let scaled = Mat::from_fn(v.nrows(), rank, |i, j| v[(i, j)] / s[j]);
    mul(
        a,
        mul(scaled.as_ref(), v.subcols(0, rank).transpose()).as_ref(),
    )
}

/// `a·b`, sequentially.
fn mul(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> Mat<f64> {
    let mut out = Mat::<f64>::zeros(a.nrows(), b.ncols());
    matmul(&mut out, Accum::Replace, a, b, 1.0, Par::Seq);
    out
}

/// The nearest matrix with orthonormal columns to `a` (its polar factor `P·Qᵀ`, where
/// `a = P·Σ·Qᵀ`; directions where `a` has no rank are left out).
fn polar(a: MatRef<'_, f64>) -> Result<Mat<f64>, String> {
    if a.nrows() < a.ncols() {
        return Ok(polar(a.transpose())?.transpose().to_owned());
    }
    let (s, v, rank) = right_singular(a)?;
    Ok(polar_from(a, &s, v.as_ref(), rank))
}

/// `U·diag(s)·Vᵀ`.
fn compose(u: MatRef<'_, f64>, s: &[f64], v: MatRef<'_, f64>) -> Mat<f64> {
    let scaled = Mat::from_fn(u.nrows(), u.ncols(), |i, j| u[(i, j)] * s[j]);
    mul(scaled.as_ref(), v.transpose())
}

/// The mean of `s`.
fn mean(s: &[f64]) -> f64 {
    s.iter().sum::<f64>() / s.len().max(1) as f64
}

/// Iso-C of the summed task vectors `sum`.
fn iso(sum: MatRef<'_, f64>) -> Result<Mat<f64>, String> {
    if sum.nrows() < sum.ncols() {
        return Ok(iso(sum.transpose())?.transpose().to_owned());
    }
    // mean(S)·U·Vᵀ: the polar factor scaled, without forming U.
    let (s, v, rank) = right_singular(sum)?;
    let mut out = polar_from(sum, &s, v.as_ref(), rank);
    out *= faer::Scale(mean(&s));
    Ok(out)
}

/// TSV-M of the weighted task vectors `u`, each task keeping `⌊r·k/T⌋` triplets.
fn tsv(u: &[Mat<f64>], k: f64) -> Result<Mat<f64>, String> {
    let (rows, cols) = (u[0].nrows(), u[0].ncols());
    let t = u.len();
    let r = rows.min(cols);
    let kt = (r as f64 * (k / t as f64)).floor() as usize;
    if kt == 0 {
        return Ok(Mat::zeros(rows, cols));
    }
    let mut uu = Mat::<f64>::zeros(rows, t * kt);
    let mut vv = Mat::<f64>::zeros(cols, t * kt);
    let mut ss = vec![0f64; t * kt];
    for (i, ui) in u.iter().enumerate() {
        let (a, s, b) = svd(ui.as_ref(), kt)?;
        for j in 0..kt {
            uu.col_mut(i * kt + j).copy_from(a.col(j));
            vv.col_mut(i * kt + j).copy_from(b.col(j));
            ss[i * kt + j] = s[j];
        }
    }
    let (pu, pv) = (polar(uu.as_ref())?, polar(vv.as_ref())?);
    Ok(compose(pu.as_ref(), &ss, pv.as_ref()))
}

/// Iso-CTS of the weighted task vectors `u` with the share `common` of the rank for
/// the common subspace.
fn iso_cts(u: &[Mat<f64>], common: f64) -> Result<Mat<f64>, String> {
    let (rows, cols) = (u[0].nrows(), u[0].ncols());
    let t = u.len();
    let r = rows.min(cols);
    // FusionBench's sizes: the task-specific total is rounded (half to even, as
    // Python's round) to a multiple of T; a negative common size (tiny `common`, few
    // dimensions) is clamped to zero.
    let c0 = (r as f64 * common) as usize;
    let specific = ((r - c0) as f64 / t as f64).round_ties_even() as usize * t;
    let c = r.saturating_sub(specific);
    let per_task = (r - c) / t;
    let mut sum = Mat::<f64>::zeros(rows, cols);
    for ui in u {
        sum += ui;
    }
    let (us, ss, vs) = svd(sum.as_ref(), c)?;
    let uc = us.subcols(0, c);
    let mut uu = Mat::<f64>::zeros(rows, t * per_task + c);
    let mut vv = Mat::<f64>::zeros(cols, t * per_task + c);
    let mut all = vec![0f64; t * per_task + c];
    for (i, ui) in u.iter().enumerate() {
        // The task's own directions, with the common subspace projected out.
        let specific = ui - mul(uc, mul(uc.transpose(), ui.as_ref()).as_ref());
        let (a, s, b) = svd(specific.as_ref(), per_task)?;
        for j in 0..per_task {
            uu.col_mut(i * per_task + j).copy_from(a.col(j));
            vv.col_mut(i * per_task + j).copy_from(b.col(j));
            all[i * per_task + j] = s[j];
        }
    }
    for j in 0..c {
        uu.col_mut(t * per_task + j).copy_from(us.col(j));
        vv.col_mut(t * per_task + j).copy_from(vs.col(j));
        all[t * per_task + j] = ss[j];
    }
    let flat = vec![mean(&all); all.len()];
    let (pu, pv) = (polar(uu.as_ref())?, polar(vv.as_ref())?);
    Ok(compose(pu.as_ref(), &flat, pv.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random matrix with entries in [-1, 1) (SplitMix64 of
    /// the seed and the element's index: full rank, unlike simpler hashes).
    fn random(rows: usize, cols: usize, seed: u64) -> Mat<f64> {
        Mat::from_fn(rows, cols, |i, j| {
            let mut z = seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(((i * cols + j) as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        })
    }

    /// A random `n × n` orthogonal matrix (the polar factor of a random matrix).
    fn orthogonal(n: usize, seed: u64) -> Mat<f64> {
        polar(random(n, n, seed).as_ref()).unwrap()
    }

    fn max_diff(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> f64 {
        let mut d = 0f64;
        for j in 0..a.ncols() {
            for i in 0..a.nrows() {
                d = d.max((a[(i, j)] - b[(i, j)]).abs());
            }
        }
        d
    }

    #[test]
    fn the_gram_svd_reconstructs_tall_wide_and_rank_deficient_matrices() {
        for (rows, cols) in [(30, 12), (12, 30), (17, 17)] {
            let a = random(rows, cols, 5);
            let (u, s, v) = svd(a.as_ref(), usize::MAX).unwrap();
            assert!(s.windows(2).all(|w| w[0] >= w[1]));
            let back = compose(u.as_ref(), &s, v.as_ref());
            assert!(max_diff(back.as_ref(), a.as_ref()) < 1e-12, "{rows}×{cols}");
            // U and V have orthonormal columns.
            let utu = mul(u.transpose(), u.as_ref());
            let vtv = mul(v.transpose(), v.as_ref());
            let eye = Mat::<f64>::identity(s.len(), s.len());
            assert!(max_diff(utu.as_ref(), eye.as_ref()) < 1e-10);
            assert!(max_diff(vtv.as_ref(), eye.as_ref()) < 1e-10);
        }
        // Rank 3 of 10: three singular vectors, the other directions left out (zero),
        // where an SVD would pick arbitrary ones.
        let low = mul(random(20, 3, 6).as_ref(), random(3, 10, 7).as_ref());
        let (u, s, v) = svd(low.as_ref(), usize::MAX).unwrap();
        assert!(s[2] > 1e-3 && s[3] < 1e-6 * s[0], "{s:?}");
        assert!((3..10).all(|j| u.col(j).norm_l2() == 0.0 && v.col(j).norm_l2() == 0.0));
        let back = compose(u.as_ref(), &s, v.as_ref());
        assert!(max_diff(back.as_ref(), low.as_ref()) < 1e-12);
    }

    #[test]
    fn iso_of_one_matrix_keeps_its_singular_vectors_and_flattens_its_spectrum() {
        let a = random(24, 16, 1);
        let (u, s, v) = svd(a.as_ref(), usize::MAX).unwrap();
        let merged = iso(a.as_ref()).unwrap();
        let (mu, ms, mv) = svd(merged.as_ref(), usize::MAX).unwrap();
        let m = mean(&s);
        assert!(
            ms.iter().all(|x| (x - m).abs() < 1e-10 * m),
            "{ms:?} vs {m}"
        );
        // Same subspaces: Δ·V = mean·U.
        let dv = mul(merged.as_ref(), v.as_ref());
        let mut mean_u = u.clone();
        mean_u *= faer::Scale(m);
        assert!(max_diff(dv.as_ref(), mean_u.as_ref()) < 1e-10 * m);
        // The flat spectrum spans the whole rank.
        assert_eq!((mu.ncols(), mv.ncols()), (16, 16));
    }

    #[test]
    fn tsv_of_task_vectors_in_orthogonal_subspaces_is_their_sum() {
        // Three rank-4 task vectors on disjoint columns of two orthogonal bases: each
        // keeps ⌊12/3⌋ = 4 triplets, all of them, and they are orthogonal already.
        let (p, q) = (orthogonal(12, 7), orthogonal(12, 8));
        let mut tasks = Vec::new();
        let mut sum = Mat::<f64>::zeros(12, 12);
        for t in 0..3 {
            let s: Vec<f64> = (0..4).map(|j| 3.0 - j as f64 * 0.5 + t as f64).collect();
            let tv = compose(p.subcols(4 * t, 4), &s, q.subcols(4 * t, 4));
            sum += &tv;
            tasks.push(tv);
        }
        let merged = tsv(&tasks, 1.0).unwrap();
        assert!(
            max_diff(merged.as_ref(), sum.as_ref()) < 1e-10,
            "{}",
            max_diff(merged.as_ref(), sum.as_ref())
        );
    }

    #[test]
    fn tsv_keeps_each_tasks_top_singular_values_on_decorrelated_bases() {
        // Overlapping subspaces: the polar step makes Û and V̂ orthonormal, so the merged
        // matrix's singular values are exactly the kept ones, ⌊16/3⌋ = 5 per task.
        let tasks: Vec<Mat<f64>> = (0..3).map(|t| random(20, 16, 30 + t)).collect();
        let mut kept = Vec::new();
        for t in &tasks {
            kept.extend_from_slice(&svd(t.as_ref(), usize::MAX).unwrap().1[..5]);
        }
        kept.sort_by(|a, b| b.total_cmp(a));
        let (_, s, _) = svd(tsv(&tasks, 1.0).unwrap().as_ref(), usize::MAX).unwrap();
        for (got, want) in s.iter().zip(&kept) {
            assert!((got - want).abs() < 1e-7 * want, "{s:?} vs {kept:?}");
        }
        assert!(s[15] < 1e-9 * s[0], "15 triplets, no more: {s:?}");
    }

    #[test]
    fn tsv_of_one_task_vector_is_its_best_rank_k_approximation() {
        let a = random(20, 30, 3);
        let (u, s, v) = svd(a.as_ref(), usize::MAX).unwrap();
        // k = 0.5 of rank 20: the top 10 triplets.
        let merged = tsv(std::slice::from_ref(&a), 0.5).unwrap();
        let top = compose(u.subcols(0, 10), &s[..10], v.subcols(0, 10));
        assert!(max_diff(merged.as_ref(), top.as_ref()) < 1e-10);
        // Below one triplet per task: nothing.
        let none = tsv(&[a.clone(), a.clone(), a.clone()], 0.1).unwrap();
        assert_eq!(
            max_diff(none.as_ref(), Mat::<f64>::zeros(20, 30).as_ref()),
            0.0
        );
    }

    #[test]
    fn iso_cts_with_the_whole_rank_common_is_iso() {
        let tasks: Vec<Mat<f64>> = (0..3).map(|t| random(18, 12, 10 + t)).collect();
        let mut sum = Mat::<f64>::zeros(18, 12);
        for t in &tasks {
            sum += t;
        }
        let cts = iso_cts(&tasks, 1.0).unwrap();
        let c = iso(sum.as_ref()).unwrap();
        assert!(max_diff(cts.as_ref(), c.as_ref()) < 1e-10);
        // Its spectrum is flat over the whole rank at any share.
        let (_, s, _) = svd(iso_cts(&tasks, 0.5).unwrap().as_ref(), usize::MAX).unwrap();
        let m = mean(&s);
        assert!(s.iter().all(|x| (x - m).abs() < 1e-9 * m), "{s:?}");
    }
}

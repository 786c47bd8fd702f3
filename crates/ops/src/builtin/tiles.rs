//! Walking a chunk's stack of task vectors in tiles, for the operators that combine the
//! models element by element (`elect`, `disjoint`, `sum`, `mean`).

/// Elements per tile: 32 `f32` accumulators (four 256-bit registers) per sum.
const TILE: usize = 32;

/// The stack of a chunk, walked in tiles of [`TILE`] elements: a tile's accumulators
/// stay in registers while every model's values are added to them (in model order, so
/// sums are the same as one pass over the chunk per model would give), instead of one
/// pass over the whole chunk per model.
pub(crate) struct Tiles<'a> {
    stack: &'a [f32],
    weights: &'a [f32],
    len: usize,
}

/// Stands in for the Fisher values of a vote that reads none.
static ONES: [f32; TILE] = [1.0; TILE];

impl<'a> Tiles<'a> {
    pub(crate) fn new(stack: &'a [f32], weights: &'a [f32], len: usize) -> Self {
        Tiles {
            stack,
            weights,
            len,
        }
    }

    /// Model `i`'s values and its Fisher values (ones without Fisher) over the whole
    /// tile that starts at element `at`.
    #[inline(always)]
    fn tile<'f>(
        &'f self,
        fisher: Option<&'f [f32]>,
        i: usize,
        at: usize,
    ) -> (&'f [f32; TILE], &'f [f32; TILE]) {
        let start = i * self.len + at;
        let d = self.stack[start..][..TILE].try_into().expect("tile");
        let f = match fisher {
            Some(f) => f[start..][..TILE].try_into().expect("tile"),
            None => &ONES,
        };
        (d, f)
    }

    /// `out[j] = finish(Σ_i term(w_i, x_ij, F_ij))`, the sum from 0 in model order (`F`
    /// is 1 without Fisher).
    #[inline(always)]
    pub(crate) fn fold(
        &self,
        out: &mut [f32],
        fisher: Option<&[f32]>,
        term: impl Fn(f32, f32, f32) -> f32,
        finish: impl Fn(f32) -> f32,
    ) {
        let len = self.len;
        let mut tiles = out.chunks_exact_mut(TILE);
        for (t, out) in (&mut tiles).enumerate() {
            let at = t * TILE;
            let mut score = [0f32; TILE];
            for (i, &w) in self.weights.iter().enumerate() {
                let (d, f) = self.tile(fisher, i, at);
                for k in 0..TILE {
                    score[k] += term(w, d[k], f[k]);
                }
            }
            for (o, &s) in out.iter_mut().zip(score.iter()) {
                *o = finish(s);
            }
        }
        let rest = tiles.into_remainder();
        let at = len - rest.len();
        for (k, o) in rest.iter_mut().enumerate() {
            let j = at + k;
            let mut s = 0f32;
            for (i, &w) in self.weights.iter().enumerate() {
                s += term(
                    w,
                    self.stack[i * len + j],
                    fisher.map_or(1.0, |f| f[i * len + j]),
                );
            }
            *o = finish(s);
        }
    }

    /// `out[j] = Σ_{A_j} num / Σ_{A_j} den` (or the numerator alone when `!divide`), with
    /// `(num, den) = share(w_i, x_ij, γ_j, F_ij)`, zero for entries that do not agree.
    #[inline(always)]
    pub(crate) fn disjoint(
        &self,
        out: &mut [f32],
        signs: &[f32],
        fisher: Option<&[f32]>,
        divide: bool,
        share: impl Fn(f32, f32, f32, f32) -> (f32, f32),
    ) {
        let len = self.len;
        let finish = |n: f32, d: f32| {
            if divide {
                n / if d == 0.0 { 1.0 } else { d }
            } else {
                n
            }
        };
        let mut tiles = out.chunks_exact_mut(TILE);
        for (t, out) in (&mut tiles).enumerate() {
            let at = t * TILE;
            let g: &[f32; TILE] = signs[at..][..TILE].try_into().expect("tile");
            let mut num = [0f32; TILE];
            let mut den = [0f32; TILE];
            for (i, &w) in self.weights.iter().enumerate() {
                let (d, f) = self.tile(fisher, i, at);
                for k in 0..TILE {
                    let (n, dn) = share(w, d[k], g[k], f[k]);
                    num[k] += n;
                    den[k] += dn;
                }
            }
            for k in 0..TILE {
                out[k] = finish(num[k], den[k]);
            }
        }
        let rest = tiles.into_remainder();
        let at = len - rest.len();
        for (k, o) in rest.iter_mut().enumerate() {
            let j = at + k;
            let (mut n, mut dn) = (0f32, 0f32);
            for (i, &w) in self.weights.iter().enumerate() {
                let f = fisher.map_or(1.0, |f| f[i * len + j]);
                let (a, b) = share(w, self.stack[i * len + j], signs[j], f);
                n += a;
                dn += b;
            }
            *o = finish(n, dn);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The bit patterns of `v`, for comparing results bit for bit (signed zeros, NaNs).
    pub(crate) fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// A fold gives, bit for bit, the sums of one pass over the chunk per model,
        /// over whole tiles and the remainder alike.
        #[test]
        fn folds_are_model_by_model_sums(
            models in 1usize..5,
            len in 1usize..150,
            values in prop::collection::vec(-1.0f32..1.0, 600),
            weights in prop::collection::vec(-0.5f32..2.0, 4),
        ) {
            let stack = &values[..models * len];
            let fisher: Vec<f32> = stack.iter().map(|x| x.abs() + 0.5).collect();
            let weights = &weights[..models];
            let tiles = Tiles::new(stack, weights, len);
            for with_fisher in [false, true] {
                let f = with_fisher.then_some(&fisher[..]);
                let mut out = vec![f32::NAN; len];
                tiles.fold(&mut out, f, |w, x, fi| fi * (w * x), |s| s / 3.0);
                let mut want = vec![0f32; len];
                for (i, &w) in weights.iter().enumerate() {
                    for (j, o) in want.iter_mut().enumerate() {
                        let fi = if with_fisher { fisher[i * len + j] } else { 1.0 };
                        *o += fi * (w * stack[i * len + j]);
                    }
                }
                want.iter_mut().for_each(|o| *o /= 3.0);
                prop_assert_eq!(bits(&out), bits(&want));
            }
        }
    }
}

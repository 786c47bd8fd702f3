//! Deterministic randomness for plugin operators: the counter-based construction of
//! reefknot's built-in random operators (`dare`), so a random plugin operator gives the
//! same bytes whatever the thread count, chunk size or machine.
//!
//! A draw is a pure function of `(seed, tensor name, stream, element index)`; use the
//! call's [`Input::seed`](crate::Input::seed), [`Input::tensor`](crate::Input::tensor)
//! and the element's index in the tensor, [`Input::offset`](crate::Input::offset)` + j`,
//! never a generator carried from call to call. The construction, exactly (wrapping
//! `u64` arithmetic, `GAMMA = 0x9E3779B97F4A7C15`): `mix` is the SplitMix64 finaliser;
//! `key = mix(mix(mix(seed ^ GAMMA) ^ fnv1a64(tensor)) ^ (stream + 1)·GAMMA)`; the pair
//! of elements `m = ⌊j/2⌋` draws `x = mix(key + (m + 1)·GAMMA)`, and element `j` takes
//! the low 32 bits of `x` when `j` is even, the high 32 bits when it is odd.
//!
//! This module is the one definition of the construction: reefknot's own operators use
//! it too (`reefknot_ops::rng` re-exports it), so a plugin drawing from it gets the
//! numbers `dare` would. `dare(p)` drops element `j` when its draw is below
//! [`threshold`]`(p)`.

/// The golden-ratio increment of SplitMix64.
pub const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// The SplitMix64 output function.
#[inline]
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a, 64-bit.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

/// One random stream: element `j`'s draw is computed directly from the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stream {
    key: u64,
}

impl Stream {
    /// The stream `stream` of tensor `tensor` under `seed` (use the model index as the
    /// stream for per-model draws).
    pub fn new(seed: u64, tensor: &str, stream: u64) -> Stream {
        let key = mix(mix(mix(seed ^ GAMMA) ^ fnv1a64(tensor.as_bytes()))
            ^ stream.wrapping_add(1).wrapping_mul(GAMMA));
        Stream { key }
    }

    /// The 64-bit draw of the pair of elements `2m` and `2m + 1`.
    #[inline]
    pub fn pair(&self, m: u64) -> u64 {
        mix(self.key.wrapping_add(m.wrapping_add(1).wrapping_mul(GAMMA)))
    }

    /// The 32-bit draw of element `j` (its index in the whole tensor).
    #[inline]
    pub fn draw(&self, j: u64) -> u32 {
        let x = self.pair(j / 2);
        if j.is_multiple_of(2) {
            x as u32
        } else {
            (x >> 32) as u32
        }
    }

    /// A uniform number in `[0, 1)` for element `j`: its draw times 2⁻³².
    #[inline]
    pub fn uniform(&self, j: u64) -> f64 {
        f64::from(self.draw(j)) * (1.0 / 4_294_967_296.0)
    }

    /// The draws of elements `start, start + 1, …` into `out`. `start` must be even
    /// (chunks and blocks start at even elements); computed a block of pairs at a time so
    /// that the mixing vectorises. Always inlined, so that a caller compiled for wider
    /// vectors (reefknot's dispatched kernels) mixes with them.
    #[inline(always)]
    pub fn fill(&self, start: u64, out: &mut [u32]) {
        debug_assert_eq!(start % 2, 0, "draws are filled from an even element");
        const PAIRS: usize = 32;
        let mut m = start / 2;
        let mut blocks = out.chunks_exact_mut(2 * PAIRS);
        for block in &mut blocks {
            let block: &mut [u32; 2 * PAIRS] = block.try_into().expect("exact block");
            let mut x = [0u64; PAIRS];
            for (k, v) in x.iter_mut().enumerate() {
                *v = self.pair(m + k as u64);
            }
            for (k, v) in x.iter().enumerate() {
                block[2 * k] = *v as u32;
                block[2 * k + 1] = (*v >> 32) as u32;
            }
            m += PAIRS as u64;
        }
        for (k, r) in blocks.into_remainder().iter_mut().enumerate() {
            *r = self.draw(2 * m + k as u64);
        }
    }
}

/// The drop threshold of a probability `p`: element `j` is dropped when `r_j < t`.
pub fn threshold(p: f64) -> u64 {
    (p.clamp(0.0, 1.0) * 4_294_967_296.0).floor() as u64
}

/// The stream index reefknot uses for operators applied to the merged delta (stream
/// `i < T` is fine-tune `i`'s task vector).
pub const DELTA_STREAM: u64 = u64::MAX - 1;

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins the construction: changing it changes every DARE merge ever made.
    #[test]
    fn pinned_draws() {
        let s = Stream::new(0, "model.layers.0.mlp.up_proj.weight", 0);
        let got: Vec<u64> = (0..3).map(|m| s.pair(m)).collect();
        assert_eq!(got, PINNED, "the documented random construction changed");
        assert_eq!(s.draw(0), PINNED[0] as u32);
        assert_eq!(s.draw(1), (PINNED[0] >> 32) as u32);
        assert_eq!(s.draw(5), (PINNED[2] >> 32) as u32);
    }

    // Computed independently from the documented construction (a few lines of Python
    // in docs/language.md reproduce them).
    const PINNED: [u64; 3] = [
        2_494_853_975_789_300_084,
        1_942_326_172_303_985_961,
        6_326_119_334_452_387_448,
    ];

    #[test]
    fn streams_differ() {
        let a = Stream::new(0, "t", 0);
        assert_ne!(a.draw(0), Stream::new(1, "t", 0).draw(0));
        assert_ne!(a.draw(0), Stream::new(0, "u", 0).draw(0));
        assert_ne!(a.draw(0), Stream::new(0, "t", 1).draw(0));
        assert_ne!(a.draw(0), a.draw(1));
    }

    #[test]
    fn fill_matches_single_draws() {
        let s = Stream::new(3, "x", 1);
        for (start, len) in [(0u64, 1usize), (0, 64), (4096, 65), (10, 200), (2, 3)] {
            let mut out = vec![0u32; len];
            s.fill(start, &mut out);
            for (k, r) in out.iter().enumerate() {
                assert_eq!(*r, s.draw(start + k as u64), "start {start} k {k}");
            }
        }
    }

    #[test]
    fn draws_are_uniform() {
        let s = Stream::new(7, "x", 2);
        let n = 200_000;
        let t = threshold(0.3);
        let mut out = vec![0u32; n];
        s.fill(0, &mut out);
        let below = out.iter().filter(|&&r| u64::from(r) < t).count();
        let frac = below as f64 / n as f64;
        // Binomial standard deviation at n = 2e5 is about 0.001.
        assert!((frac - 0.3).abs() < 0.005, "{frac}");
        // Even and odd elements (low and high halves) each on their own.
        for parity in 0..2 {
            let below = out
                .iter()
                .skip(parity)
                .step_by(2)
                .filter(|&&r| u64::from(r) < t)
                .count();
            assert!((below as f64 / (n / 2) as f64 - 0.3).abs() < 0.007);
        }
    }
}

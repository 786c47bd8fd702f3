//! The counter-based random numbers behind every synthetic value.
//!
//! A value never depends on which thread computed it or on how a tensor was cut
//! into chunks: element `i` of a stream is a pure function of the stream's 64-bit
//! key and `i`. The mixing function is the SplitMix64 output function; evaluating
//! it at `key + (i + 1)·γ` (γ the 64-bit golden-ratio constant) is exactly the
//! `i`-th output of a SplitMix64 generator seeded with `key`, so a stream has the
//! statistical quality of SplitMix64 while any element can be drawn directly.

// The mixing function, the golden-ratio increment and the name hash are those of the
// operators' counter-based construction, defined once in `reefknot-plugin-api`.
use reefknot_plugin_api::rng::GAMMA;
pub use reefknot_plugin_api::rng::{fnv1a64 as fnv1a, mix as mix64};

/// The `index`-th 64-bit draw of the stream keyed by `key`.
#[inline(always)]
pub fn draw(key: u64, index: u64) -> u64 {
    mix64(key.wrapping_add(index.wrapping_add(1).wrapping_mul(GAMMA)))
}

/// The key of sub-stream `stream` of the stream keyed by `key`.
pub fn substream(key: u64, stream: u64) -> u64 {
    mix64(key ^ mix64(stream.wrapping_add(GAMMA)))
}

/// `√3 / 2^16`: scales a sum of four 16-bit uniforms to unit variance.
const IH16_SCALE: f32 = 1.732_050_8 / 65_536.0;
/// `√3 / 2^15`: scales a sum of four 15-bit uniforms to unit variance.
const IH15_SCALE: f32 = 1.732_050_8 / 32_768.0;

/// A normal-like value with mean 0 and variance 1 from one 64-bit draw.
///
/// It is the Irwin–Hall sum of the draw's four 16-bit fields, centred and scaled:
/// bell-shaped, excess kurtosis −0.3, support `±2√3 ≈ ±3.46`. One multiply-free
/// sum per value instead of Box–Muller's logarithm and sine, which makes the
/// generator several times faster; the bounded tails do not matter for weights
/// that are only ever used as merge fixtures.
#[inline(always)]
pub fn normal16(h: u64) -> f32 {
    let s = (h & 0xFFFF) + ((h >> 16) & 0xFFFF) + ((h >> 32) & 0xFFFF) + (h >> 48);
    (s as f32 - 131_070.0) * IH16_SCALE
}

/// As [`normal16`] from the low 60 bits of `h` (four 15-bit fields), leaving the
/// top bits free for other uses.
#[inline(always)]
pub fn normal15(h: u64) -> f32 {
    let s = (h & 0x7FFF) + ((h >> 15) & 0x7FFF) + ((h >> 30) & 0x7FFF) + ((h >> 45) & 0x7FFF);
    (s as f32 - 65_534.0) * IH15_SCALE
}

/// The threshold `t` such that `u < t` has probability `p` for a uniform 32-bit `u`.
pub fn threshold32(p: f64) -> u64 {
    let p = p.clamp(0.0, 1.0);
    // 2^32 · p, exact at both ends (p = 1 gives 2^32, which every u32 is below).
    (p * 4_294_967_296.0).round() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moments(f: impl Fn(u64) -> f32, n: u64) -> (f64, f64, f64) {
        let key = substream(7, 1);
        let (mut s1, mut s2, mut s4) = (0.0f64, 0.0f64, 0.0f64);
        for i in 0..n {
            let x = f64::from(f(draw(key, i)));
            s1 += x;
            s2 += x * x;
            s4 += x * x * x * x;
        }
        let n = n as f64;
        (s1 / n, s2 / n, s4 / n)
    }

    #[test]
    fn normal16_has_unit_variance() {
        let (m, v, k) = moments(normal16, 400_000);
        assert!(m.abs() < 0.01, "mean {m}");
        assert!((v - 1.0).abs() < 0.01, "variance {v}");
        // Irwin–Hall with n = 4 has kurtosis 3 − 1.2/4 = 2.7.
        assert!((k - 2.7).abs() < 0.05, "fourth moment {k}");
    }

    #[test]
    fn normal15_has_unit_variance() {
        let (m, v, _) = moments(normal15, 400_000);
        assert!(m.abs() < 0.01, "mean {m}");
        assert!((v - 1.0).abs() < 0.01, "variance {v}");
    }

    #[test]
    fn draws_are_pinned() {
        // SplitMix64 seeded with 0: its first output is well known.
        assert_eq!(draw(0, 0), 0xE220_A839_7B1D_CDAF);
        assert_ne!(draw(0, 1), draw(0, 0));
        assert_ne!(substream(1, 0), substream(1, 1));
    }

    #[test]
    fn thresholds() {
        assert_eq!(threshold32(0.0), 0);
        assert_eq!(threshold32(1.0), 1 << 32);
        assert_eq!(threshold32(0.5), 1 << 31);
    }
}

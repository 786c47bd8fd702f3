//! Conversion between stored tensor bytes and `f32` working values.
//!
//! These are the hot loops of a merge (billions of elements), written as plain loops
//! over `chunks_exact` that the compiler vectorises, each compiled for the portable
//! baseline, AVX2 and AVX-512 and picked at run time (`reefknot_simd::multiversion!`). Sources and destinations are
//! byte slices borrowed from memory maps, so they may be unaligned; every element is
//! read and written little-endian.

use half::f16;
use half::slice::HalfFloatSliceExt;

use crate::Dtype;

/// Elements per block of the BF16 loops: fixed-size arrays let the compiler vectorise
/// the body without per-element bounds or alias checks.
const BLOCK: usize = 16;

/// Elements converted per step for `F16`, through an aligned stack buffer that lets
/// `half` use the CPU's hardware conversion (F16C on x86-64, FP16 on aarch64).
const F16_STEP: usize = 1024;

reefknot_simd::multiversion! {
    max_avx2:
    /// Decodes `dst.len()` elements of `dtype` from the little-endian bytes `src` into `dst`.
    ///
    /// `dtype` must be computable (`F32`, `F16`, `BF16` or `F64`, rounded to nearest)
    /// and `src.len()` must equal
    /// `dst.len() * dtype.size()`; `src` need not be aligned.
    ///
    /// # Panics
    /// If `dtype` is not computable or the lengths do not match (a caller bug).
    pub fn to_f32(dtype: Dtype, src: &[u8], dst: &mut [f32]) {
        check(dtype, src.len(), dst.len());
        match dtype {
            Dtype::BF16 => {
                let mut dst_blocks = dst.chunks_exact_mut(BLOCK);
                let mut src_blocks = src.chunks_exact(2 * BLOCK);
                for (d, s) in (&mut dst_blocks).zip(&mut src_blocks) {
                    let d: &mut [f32; BLOCK] = d.try_into().expect("block");
                    let s: &[u8; 2 * BLOCK] = s.try_into().expect("block");
                    for i in 0..BLOCK {
                        d[i] = bf16_bits_to_f32(u16::from_le_bytes([s[2 * i], s[2 * i + 1]]));
                    }
                }
                let tail = dst_blocks.into_remainder();
                for (d, s) in tail.iter_mut().zip(src_blocks.remainder().chunks_exact(2)) {
                    *d = bf16_bits_to_f32(u16::from_le_bytes([s[0], s[1]]));
                }
            }
            Dtype::F32 => {
                for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
                    *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
                }
            }
            Dtype::F64 => {
                for (d, s) in dst.iter_mut().zip(src.chunks_exact(8)) {
                    *d = f64::from_le_bytes(s.try_into().expect("eight bytes")) as f32;
                }
            }
            Dtype::F16 => {
                let mut buf = [f16::ZERO; F16_STEP];
                for (d, s) in dst.chunks_mut(F16_STEP).zip(src.chunks(2 * F16_STEP)) {
                    let buf = &mut buf[..d.len()];
                    for (b, s) in buf.iter_mut().zip(s.chunks_exact(2)) {
                        *b = f16::from_bits(u16::from_le_bytes([s[0], s[1]]));
                    }
                    buf.convert_to_f32_slice(d);
                }
            }
            _ => unreachable!("checked above"),
        }
    }
}

reefknot_simd::multiversion! {
    max_avx2:
    /// Decodes like [`to_f32`] and subtracts `sub` in the same loop:
    /// `dst[i] = value(src, i) - sub[i]`. This is how a chunk of a task vector
    /// `δ = θ_model − θ_base` is formed without a second pass over `dst`.
    ///
    /// # Panics
    /// As [`to_f32`], and if `sub.len() != dst.len()`.
    pub fn to_f32_minus(dtype: Dtype, src: &[u8], sub: &[f32], dst: &mut [f32]) {
        check(dtype, src.len(), dst.len());
        assert_eq!(
            sub.len(),
            dst.len(),
            "the subtrahend has one value per element"
        );
        match dtype {
            Dtype::BF16 => {
                let mut dst_blocks = dst.chunks_exact_mut(BLOCK);
                let mut src_blocks = src.chunks_exact(2 * BLOCK);
                let mut sub_blocks = sub.chunks_exact(BLOCK);
                for ((d, s), b) in (&mut dst_blocks).zip(&mut src_blocks).zip(&mut sub_blocks) {
                    let d: &mut [f32; BLOCK] = d.try_into().expect("block");
                    let s: &[u8; 2 * BLOCK] = s.try_into().expect("block");
                    let b: &[f32; BLOCK] = b.try_into().expect("block");
                    for i in 0..BLOCK {
                        d[i] = bf16_bits_to_f32(u16::from_le_bytes([s[2 * i], s[2 * i + 1]])) - b[i];
                    }
                }
                let tail = dst_blocks.into_remainder();
                for ((d, s), b) in tail
                    .iter_mut()
                    .zip(src_blocks.remainder().chunks_exact(2))
                    .zip(sub_blocks.remainder())
                {
                    *d = bf16_bits_to_f32(u16::from_le_bytes([s[0], s[1]])) - b;
                }
            }
            _ => {
                to_f32(dtype, src, dst);
                dst.iter_mut().zip(sub).for_each(|(d, b)| *d -= b);
            }
        }
    }
}

reefknot_simd::multiversion! {
    max_avx2:
    /// Encodes the `f32` values `src` as `dtype` into the little-endian bytes `dst`.
    ///
    /// Rounds to nearest, ties to even; NaN stays NaN (quieted), infinities stay infinite
    /// and values beyond the target's range become infinities, as IEEE 754 prescribes.
    /// `dtype` must be computable (`F32`, `F16`, `BF16` or `F64`, exact) and `dst.len()`
    /// must equal
    /// `src.len() * dtype.size()`; `dst` need not be aligned.
    ///
    /// # Panics
    /// If `dtype` is not computable or the lengths do not match (a caller bug).
    pub fn from_f32(dtype: Dtype, src: &[f32], dst: &mut [u8]) {
        check(dtype, dst.len(), src.len());
        match dtype {
            Dtype::BF16 => {
                const WIDE: usize = 4 * BLOCK;
                let mut dst_blocks = dst.chunks_exact_mut(2 * WIDE);
                let mut src_blocks = src.chunks_exact(WIDE);
                for (d, s) in (&mut dst_blocks).zip(&mut src_blocks) {
                    let d: &mut [u8; 2 * WIDE] = d.try_into().expect("block");
                    let s: &[f32; WIDE] = s.try_into().expect("block");
                    // Round into 16-bit lanes first, then lay them out as bytes: two simple
                    // loops vectorise better than one storing bytes.
                    let mut h = [0u16; WIDE];
                    for i in 0..WIDE {
                        h[i] = f32_to_bf16_bits(s[i]);
                    }
                    for (d, h) in d.chunks_exact_mut(2).zip(h) {
                        d.copy_from_slice(&h.to_le_bytes());
                    }
                }
                let tail = dst_blocks.into_remainder();
                for (d, &x) in tail.chunks_exact_mut(2).zip(src_blocks.remainder()) {
                    d.copy_from_slice(&f32_to_bf16_bits(x).to_le_bytes());
                }
            }
            Dtype::F32 => {
                for (d, &x) in dst.chunks_exact_mut(4).zip(src) {
                    d.copy_from_slice(&x.to_le_bytes());
                }
            }
            Dtype::F64 => {
                for (d, &x) in dst.chunks_exact_mut(8).zip(src) {
                    d.copy_from_slice(&f64::from(x).to_le_bytes());
                }
            }
            Dtype::F16 => {
                let mut buf = [f16::ZERO; F16_STEP];
                for (s, d) in src.chunks(F16_STEP).zip(dst.chunks_mut(2 * F16_STEP)) {
                    let buf = &mut buf[..s.len()];
                    buf.convert_from_f32_slice(s);
                    for (d, b) in d.chunks_exact_mut(2).zip(buf.iter()) {
                        let h = b.to_bits();
                        d[0] = h as u8;
                        d[1] = (h >> 8) as u8;
                    }
                }
            }
            _ => unreachable!("checked above"),
        }
    }
}

reefknot_simd::multiversion! {
    max_avx2:
    /// Whether every value is finite: no NaN and no infinity.
    ///
    /// One branch-free pass, cheap next to the decoding that filled `values`.
    pub fn all_finite(values: &[f32]) -> bool {
        // NaN and the infinities are the magnitudes at or above the infinity's bits.
        largest_magnitude_bits(values) < 0x7f80_0000
    }
}

reefknot_simd::multiversion! {
    max_avx2:
    /// The largest `|x|` of `values` as bits (0 when empty): an integer max, which
    /// vectorises as a reduction. For non-negative floats the order of the bits is the
    /// order of the values, and NaN and the infinities lie above every finite value.
    fn largest_magnitude_bits(values: &[f32]) -> u32 {
        values
            .iter()
            .fold(0u32, |m, x| m.max(x.to_bits() & 0x7fff_ffff))
    }
}

/// The position of the first NaN or infinity in `values`, if any.
pub fn first_nonfinite(values: &[f32]) -> Option<usize> {
    if all_finite(values) {
        return None;
    }
    values.iter().position(|x| !x.is_finite())
}

/// The position of the first finite value in `values` that `dtype` cannot hold: one
/// that [`from_f32`] would round to an infinity (65 520 or more in magnitude for `F16`,
/// about 3.3961e38 or more for `BF16`; `F32` and `F64` hold every finite `f32`).
pub fn first_overflow(dtype: Dtype, values: &[f32]) -> Option<usize> {
    // The smallest magnitude that rounds to infinity (ties go to the even infinity).
    let limit = match dtype {
        Dtype::F16 => 65_520.0f32,
        Dtype::BF16 => f32::from_bits(0x7f7f_8000),
        _ => return None,
    };
    // One vectorised pass finds that nothing overflows, the usual answer.
    if largest_magnitude_bits(values) < limit.to_bits() {
        return None;
    }
    values
        .iter()
        .position(|x| x.is_finite() && x.abs() >= limit)
}

/// Widens one `bf16` bit pattern to `f32` (exact: bf16 is the upper half of an f32).
#[inline(always)]
pub fn bf16_bits_to_f32(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// Rounds one `f32` to the bit pattern of the nearest `bf16` (ties to even).
///
/// Adding `0x7fff` plus the lowest kept bit to the bits and truncating rounds to nearest
/// even; a carry out of the mantissa correctly bumps the exponent (up to infinity).
/// NaNs are truncated with the quiet bit set, so a NaN whose payload lies only in the
/// dropped bits stays a NaN.
#[inline(always)]
pub fn f32_to_bf16_bits(x: f32) -> u16 {
    // Selected in 32-bit lanes and narrowed once, which vectorises well.
    let bits = x.to_bits();
    let lsb = (bits >> 16) & 1;
    let rounded = bits.wrapping_add(0x7fff + lsb);
    let quiet_nan = bits | 0x0040_0000;
    let wide = if bits & 0x7fff_ffff > 0x7f80_0000 {
        quiet_nan
    } else {
        rounded
    };
    (wide >> 16) as u16
}

#[inline]
fn check(dtype: Dtype, bytes: usize, elements: usize) {
    assert!(
        dtype.is_computable(),
        "reefknot-io: cannot convert {dtype} to or from f32 (only F32, F16, BF16 and F64 are computable)"
    );
    assert_eq!(
        Some(bytes),
        elements.checked_mul(dtype.size()),
        "reefknot-io: {elements} {dtype} elements need {} bytes, the byte slice has {bytes}",
        elements.saturating_mul(dtype.size())
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    #[test]
    fn bf16_ties_to_even() {
        // 1.0 + half an ulp of bf16: tie, rounds down to the even 1.0.
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3f80_8000)), 0x3f80);
        // 1.0 + 1 ulp + half an ulp: tie, rounds up to the even 0x3f82.
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3f81_8000)), 0x3f82);
        // Just above the tie rounds up.
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3f80_8001)), 0x3f81);
        // Largest finite f32 overflows to infinity.
        assert_eq!(f32_to_bf16_bits(f32::MAX), 0x7f80);
        assert_eq!(f32_to_bf16_bits(-f32::MAX), 0xff80);
        // NaN with payload only in the low bits stays NaN.
        let nan = f32::from_bits(0x7f80_0001);
        assert!(bf16::from_bits(f32_to_bf16_bits(nan)).is_nan());
    }

    #[test]
    fn finds_every_kind_of_nonfinite_anywhere() {
        for len in [0, 1, 15, 16, 17, 100] {
            let mut v: Vec<f32> = (0..len).map(|i| i as f32 - 50.0).collect();
            v.iter_mut().for_each(|x| *x *= f32::MAX / 64.0);
            assert_eq!(first_nonfinite(&v), None, "len {len}");
            for at in 0..len {
                for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -f32::NAN] {
                    let mut w = v.clone();
                    w[at] = bad;
                    assert_eq!(first_nonfinite(&w), Some(at), "len {len}, {bad} at {at}");
                }
            }
        }
    }

    #[test]
    fn overflow_is_what_rounds_to_infinity() {
        for dtype in [Dtype::F16, Dtype::BF16, Dtype::F32, Dtype::F64] {
            let mut probes = vec![0.0f32, 1.0, 65_504.0, 65_519.996, 65_520.0, 1e38, f32::MAX];
            probes.extend(probes.clone().iter().map(|x| -x));
            probes.push(f32::from_bits(0x7f7f_7fff));
            probes.push(f32::from_bits(0x7f7f_8000));
            for x in probes {
                let mut bytes = vec![0u8; dtype.size()];
                from_f32(dtype, &[x], &mut bytes);
                let mut back = [0f32];
                to_f32(dtype, &bytes, &mut back);
                let overflows = first_overflow(dtype, &[x]).is_some();
                assert_eq!(overflows, back[0].is_infinite(), "{dtype} {x}");
            }
        }
    }

    #[test]
    fn f64_rounds_to_f32_and_back_exactly() {
        let values = [1.0f64 / 3.0, -2.5e-40, 1e300, f64::NAN, 0.0];
        let bytes: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
        let mut out = [0f32; 5];
        to_f32(Dtype::F64, &bytes, &mut out);
        assert_eq!(out[0], (1.0f64 / 3.0) as f32);
        assert_eq!(out[1], -2.5e-40f64 as f32);
        assert_eq!(out[2], f32::INFINITY);
        assert!(out[3].is_nan());
        let mut back = vec![0u8; 40];
        from_f32(Dtype::F64, &out, &mut back);
        let again: Vec<f64> = back
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(again[0], f64::from(out[0]));
        assert_eq!(again[2], f64::INFINITY);
    }

    #[test]
    #[should_panic(expected = "only F32, F16, BF16 and F64")]
    fn not_computable_panics() {
        to_f32(Dtype::I8, &[0], &mut [0.0]);
    }

    #[test]
    #[should_panic(expected = "need 4 bytes")]
    fn length_mismatch_panics() {
        to_f32(Dtype::BF16, &[0; 3], &mut [0.0; 2]);
    }
}

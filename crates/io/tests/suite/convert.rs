//! to_f32 / from_f32 against `half`, exhaustively for 16-bit inputs and by proptest for f32.

use half::{bf16, f16};
use proptest::prelude::*;
use reefknot_io::{from_f32, to_f32, to_f32_minus, Dtype};

fn all_u16_bytes() -> Vec<u8> {
    (0..=u16::MAX).flat_map(|b| b.to_le_bytes()).collect()
}

fn same_float(a: f32, b: f32) -> bool {
    (a.is_nan() && b.is_nan()) || a.to_bits() == b.to_bits()
}

#[test]
fn bf16_exhaustive_round_trip() {
    let bytes = all_u16_bytes();
    let mut values = vec![0.0f32; 65536];
    to_f32(Dtype::BF16, &bytes, &mut values);
    let mut back = vec![0u8; bytes.len()];
    from_f32(Dtype::BF16, &values, &mut back);
    for bits in 0..=u16::MAX {
        let i = bits as usize;
        let reference = bf16::from_bits(bits).to_f32();
        assert!(same_float(values[i], reference), "bf16 {bits:#06x}");
        let round = u16::from_le_bytes([back[2 * i], back[2 * i + 1]]);
        if reference.is_nan() {
            assert!(
                bf16::from_bits(round).is_nan(),
                "bf16 NaN {bits:#06x} -> {round:#06x}"
            );
        } else {
            assert_eq!(round, bits, "bf16 {bits:#06x}");
        }
    }
}

#[test]
fn f16_exhaustive_round_trip() {
    let bytes = all_u16_bytes();
    let mut values = vec![0.0f32; 65536];
    to_f32(Dtype::F16, &bytes, &mut values);
    let mut back = vec![0u8; bytes.len()];
    from_f32(Dtype::F16, &values, &mut back);
    for bits in 0..=u16::MAX {
        let i = bits as usize;
        let reference = f16::from_bits(bits).to_f32();
        assert!(same_float(values[i], reference), "f16 {bits:#06x}");
        let round = u16::from_le_bytes([back[2 * i], back[2 * i + 1]]);
        if reference.is_nan() {
            assert!(
                f16::from_bits(round).is_nan(),
                "f16 NaN {bits:#06x} -> {round:#06x}"
            );
        } else {
            assert_eq!(round, bits, "f16 {bits:#06x}");
        }
    }
}

#[test]
fn f32_is_identity() {
    let values: Vec<f32> = (0..1000u32)
        .map(|i| f32::from_bits(i.wrapping_mul(2_654_435_761)))
        .collect();
    let mut bytes = vec![0u8; 4000];
    from_f32(Dtype::F32, &values, &mut bytes);
    let mut back = vec![0.0f32; 1000];
    to_f32(Dtype::F32, &bytes, &mut back);
    for (a, b) in values.iter().zip(&back) {
        assert_eq!(a.to_bits(), b.to_bits());
    }
}

#[test]
fn special_values() {
    let values = [
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        -f32::NAN,
        f32::MAX,
        f32::MIN_POSITIVE,
        f32::from_bits(1),
        65504.0,
        65520.0,
        1e-8,
        6e-8,
        3e-8,
    ];
    for dtype in [Dtype::BF16, Dtype::F16] {
        let mut bytes = vec![0u8; values.len() * 2];
        from_f32(dtype, &values, &mut bytes);
        let mut back = vec![0.0f32; values.len()];
        to_f32(dtype, &bytes, &mut back);
        for (&x, &y) in values.iter().zip(&back) {
            let reference = match dtype {
                Dtype::BF16 => bf16::from_f32(x).to_f32(),
                _ => f16::from_f32(x).to_f32(),
            };
            assert!(
                same_float(y, reference),
                "{dtype} {x:e}: {y:e} vs {reference:e}"
            );
            assert_eq!(x.is_nan(), y.is_nan());
            assert_eq!(
                x.is_sign_negative(),
                y.is_sign_negative(),
                "{dtype} sign of {x:e}"
            );
        }
    }
    // Overflow: f16 max is 65504; 65520 rounds to infinity, bf16 keeps it finite.
    let mut b = [0u8; 2];
    from_f32(Dtype::F16, &[65520.0], &mut b);
    assert_eq!(u16::from_le_bytes(b), 0x7c00);
    from_f32(Dtype::BF16, &[f32::MAX], &mut b);
    assert_eq!(u16::from_le_bytes(b), 0x7f80);
}

#[test]
fn unaligned_and_odd_lengths() {
    for n in [0usize, 1, 7, 1023, 1024, 1025, 3000] {
        let values: Vec<f32> = (0..n).map(|i| (i as f32 - 500.0) * 0.37).collect();
        for dtype in [Dtype::BF16, Dtype::F16, Dtype::F32] {
            let size = dtype.size();
            let mut aligned = vec![0u8; n * size];
            from_f32(dtype, &values, &mut aligned);
            for shift in 1..4 {
                // Unaligned destination.
                let mut buf = vec![0u8; n * size + shift];
                from_f32(dtype, &values, &mut buf[shift..]);
                assert_eq!(
                    &buf[shift..],
                    aligned.as_slice(),
                    "{dtype} n={n} shift={shift}"
                );
                // Unaligned source.
                let mut got = vec![0.0f32; n];
                to_f32(dtype, &buf[shift..], &mut got);
                let mut want = vec![0.0f32; n];
                to_f32(dtype, &aligned, &mut want);
                assert_eq!(got, want, "{dtype} n={n} shift={shift}");
            }
        }
    }
}

fn encode(dtype: Dtype, x: f32) -> u16 {
    let mut b = [0u8; 2];
    from_f32(dtype, &[x], &mut b);
    u16::from_le_bytes(b)
}

/// f32 bit patterns that stress rounding: exact ties (the dropped bits are 1000...),
/// just around ties, subnormals, near-overflow, NaNs and infinities.
fn interesting_bits() -> impl Strategy<Value = u32> {
    prop_oneof![
        any::<u32>(),
        any::<u32>().prop_map(|b| (b & 0xffff_0000) | 0x8000),
        any::<u32>().prop_map(|b| (b & 0xffff_0000) | 0x7fff),
        any::<u32>().prop_map(|b| (b & 0xffff_0000) | 0x8001),
        any::<u32>().prop_map(|b| (b & 0xffff_e000) | 0x1000),
        any::<u32>().prop_map(|b| b & 0x807f_ffff),
        any::<u32>().prop_map(|b| b | 0x7f80_0000),
        any::<u32>().prop_map(|b| (b & 0x8000_0000) | 0x7f80_0000),
        any::<u32>().prop_map(|b| (b & 0x8000_ffff) | 0x7f7f_0000),
        (0u32..=0x0001_ffff).prop_map(|m| 0x3300_0000 + m),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    #[test]
    fn bf16_rounding_matches_half(bits in interesting_bits()) {
        let x = f32::from_bits(bits);
        let ours = encode(Dtype::BF16, x);
        let reference = bf16::from_f32(x).to_bits();
        prop_assert_eq!(ours, reference, "x = {:#010x}", bits);
    }

    #[test]
    fn f16_rounding_matches_half(bits in interesting_bits()) {
        let x = f32::from_bits(bits);
        let ours = encode(Dtype::F16, x);
        let reference = f16::from_f32(x);
        if reference.is_nan() {
            prop_assert!(f16::from_bits(ours).is_nan(), "x = {:#010x}", bits);
        } else {
            prop_assert_eq!(ours, reference.to_bits(), "x = {:#010x}", bits);
        }
    }

    #[test]
    fn bf16_rounding_is_nearest(bits in any::<u32>()) {
        let x = f32::from_bits(bits);
        prop_assume!(x.is_finite() && x.abs() < 3.0e38);
        let y = bf16::from_bits(encode(Dtype::BF16, x)).to_f32();
        // No bf16 value is strictly closer than the one chosen.
        let lo = f32::from_bits(bits & 0xffff_0000);
        let hi = f32::from_bits((bits & 0xffff_0000) + 0x1_0000);
        let err = (y as f64 - x as f64).abs();
        prop_assert!(err <= (lo as f64 - x as f64).abs());
        prop_assert!(err <= (hi as f64 - x as f64).abs());
    }
}

/// Every one of the 2^32 f32 bit patterns through `from_f32` against `half`
/// (about a minute; run with `cargo test -p reefknot-io --release -- --ignored exhaustive`).
#[test]
#[ignore = "slow: 2^32 values"]
fn exhaustive_f32_to_bf16_and_f16() {
    const CHUNK: u64 = 1 << 20;
    let mut values = vec![0.0f32; CHUNK as usize];
    let mut bf = vec![0u8; 2 * CHUNK as usize];
    let mut hf = vec![0u8; 2 * CHUNK as usize];
    for base in (0..1u64 << 32).step_by(CHUNK as usize) {
        for (i, v) in values.iter_mut().enumerate() {
            *v = f32::from_bits((base + i as u64) as u32);
        }
        from_f32(Dtype::BF16, &values, &mut bf);
        from_f32(Dtype::F16, &values, &mut hf);
        for (i, &x) in values.iter().enumerate() {
            let ours = u16::from_le_bytes([bf[2 * i], bf[2 * i + 1]]);
            assert_eq!(
                ours,
                bf16::from_f32(x).to_bits(),
                "bf16 of {:#010x}",
                x.to_bits()
            );
            let ours = u16::from_le_bytes([hf[2 * i], hf[2 * i + 1]]);
            let reference = f16::from_f32(x);
            assert!(
                ours == reference.to_bits()
                    || (reference.is_nan() && f16::from_bits(ours).is_nan()),
                "f16 of {:#010x}",
                x.to_bits()
            );
        }
    }
}

/// `to_f32_minus` is `to_f32` followed by a subtraction, bit for bit, for every
/// computable dtype and lengths around the block size.
#[test]
fn decode_minus_equals_decode_then_subtract() {
    for dtype in [Dtype::BF16, Dtype::F16, Dtype::F32] {
        for len in [0usize, 1, 15, 16, 17, 100, 1000] {
            let values: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
            let sub: Vec<f32> = (0..len).map(|i| (i as f32 * 0.11).cos()).collect();
            let mut bytes = vec![0u8; len * dtype.size() + 1];
            // An odd offset: the source need not be aligned.
            from_f32(dtype, &values, &mut bytes[1..]);
            let mut expected = vec![0f32; len];
            to_f32(dtype, &bytes[1..], &mut expected);
            expected.iter_mut().zip(&sub).for_each(|(e, s)| *e -= s);
            let mut got = vec![0f32; len];
            to_f32_minus(dtype, &bytes[1..], &sub, &mut got);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&expected), "{dtype:?}, {len} elements");
        }
    }
}

/// Every conversion, run at each vector level this CPU supports, against the portable
/// level, bit for bit (NaN payloads included): random bit patterns, lengths around the
/// loops' block sizes, sources and destinations at every alignment.
fn at_every_level(f: impl Fn() -> Vec<u32>) {
    reefknot_simd::at_every_level(f);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn every_vector_level_gives_the_same_bits(
        seed in any::<u64>(),
        len in 0usize..3000,
        src_at in 0usize..4,
        dst_at in 0usize..4,
    ) {
        let mut state = seed | 1;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let raw: Vec<u8> = (0..4 * len + 8).map(|_| next() as u8).collect();
        let floats: Vec<f32> = (0..len).map(|_| f32::from_bits(next() as u32)).collect();
        let sub: Vec<f32> = (0..len).map(|_| f32::from_bits(next() as u32 & 0xbfff_ffff)).collect();
        for dtype in [Dtype::BF16, Dtype::F16, Dtype::F32] {
            let size = dtype.size();
            let src = &raw[src_at..src_at + len * size];
            at_every_level(|| {
                let mut out = vec![0f32; len];
                to_f32(dtype, src, &mut out);
                let mut minus = vec![0f32; len];
                to_f32_minus(dtype, src, &sub, &mut minus);
                let mut bytes = vec![0u8; len * size + dst_at];
                from_f32(dtype, &floats, &mut bytes[dst_at..]);
                out.iter()
                    .chain(&minus)
                    .map(|x| x.to_bits())
                    .chain(bytes.iter().map(|&b| u32::from(b)))
                    .collect()
            });
        }
    }
}

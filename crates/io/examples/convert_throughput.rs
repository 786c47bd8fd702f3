//! Times `to_f32` / `from_f32` over 100M elements:
//! `cargo run -p reefknot-io --release --example convert_throughput [ELEMENTS]`.

use std::time::Instant;

use reefknot_io::{from_f32, to_f32, Dtype};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("a number of elements"))
        .unwrap_or(100_000_000);
    let values: Vec<f32> = (0..n)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761) as f32 / u32::MAX as f32 - 0.5) * 0.02)
        .collect();
    let mut floats = vec![0.0f32; n];
    for dtype in [Dtype::BF16, Dtype::F16, Dtype::F32] {
        // Offset by one byte to measure the unaligned case a memory map can give.
        let mut bytes = vec![0u8; n * dtype.size() + 1];
        let stored = &mut bytes[1..];
        from_f32(dtype, &values, stored); // warm up, fault the pages in
        to_f32(dtype, stored, &mut floats);
        let mut best_to = f64::MAX;
        let mut best_from = f64::MAX;
        for _ in 0..5 {
            let t = Instant::now();
            to_f32(dtype, stored, &mut floats);
            best_to = best_to.min(t.elapsed().as_secs_f64());
            let t = Instant::now();
            from_f32(dtype, &floats, stored);
            best_from = best_from.min(t.elapsed().as_secs_f64());
        }
        std::hint::black_box(&floats);
        let gb = |bytes: usize, s: f64| bytes as f64 / s / 1e9;
        let elems = |s: f64| n as f64 / s / 1e9;
        println!(
            "{dtype:>4}  to_f32: {:6.1} ms  {:5.2} G elem/s  {:5.1} GB/s read+written | \
             from_f32: {:6.1} ms  {:5.2} G elem/s  {:5.1} GB/s read+written",
            best_to * 1e3,
            elems(best_to),
            gb(n * (dtype.size() + 4), best_to),
            best_from * 1e3,
            elems(best_from),
            gb(n * (dtype.size() + 4), best_from),
        );
    }
}

//! The analysis probe through the executor against a brute-force computation: exact
//! energy shares whatever the ties, zeros and NaN, the trimmed sets `trim` keeps, and
//! the same figures for every chunk size and thread count.

use reefknot_engine::{observe_tensor, InMemory, TensorJob};
use reefknot_ops::analysis::{kept_count, Probe, ProbeSpec, TensorStats, SHARES, STEPS};

/// A deterministic stream of values with many exact ties (few distinct magnitudes),
/// zeros and, when `nan`, a few NaN and infinities.
fn values(n: usize, seed: u64, distinct: u64, nan: bool) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            match s % 1000 {
                0..=49 => 0.0,
                50 if nan => f32::NAN,
                51 if nan => f32::INFINITY * if i % 2 == 0 { 1.0 } else { -1.0 },
                _ => {
                    let m = (s >> 20) % distinct + 1;
                    let sign = if (s >> 10) & 1 == 0 { 1.0 } else { -1.0 };
                    sign * m as f32 * 1e-3 * (1.0 + ((s >> 40) % 3) as f32 / 7.0)
                }
            }
        })
        .collect()
}

fn measure(
    base: &[f32],
    models: &[Vec<f32>],
    density: &[f64],
    weights: &[f32],
    chunk: usize,
    threads: usize,
) -> TensorStats {
    let source = InMemory {
        base,
        models: models.iter().map(Vec::as_slice).collect(),
        fisher: Vec::new(),
    };
    let job = TensorJob {
        name: "t",
        shape: &[base.len()],
        numel: base.len(),
        layer: None,
        models: models.len(),
        source: &source,
        fisher: false,
        stages: &[],
        weights,
        seed: 0,
        fisher_means: None,
        check_finite: false,
    };
    let mut probe = Probe::new(
        &ProbeSpec {
            density: density.to_vec(),
        },
        base.len(),
    );
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(|| observe_tensor(&job, chunk, &mut probe))
        .unwrap();
    probe.stats().clone()
}

/// The `keep` entries of largest magnitude, ties in flat-index order (as `trim`).
fn top(d: &[f32], keep: usize) -> Vec<bool> {
    let mut order: Vec<usize> = (0..d.len()).collect();
    order.sort_by(|&a, &b| d[b].abs().total_cmp(&d[a].abs()).then(a.cmp(&b)));
    let mut mask = vec![false; d.len()];
    for &i in &order[..keep] {
        mask[i] = true;
    }
    mask
}

#[test]
fn the_probe_matches_brute_force_on_ties_zeros_and_nan() {
    // Small tensors (exact histograms) and ones past the sampling threshold (the
    // selection's sampled road), few and many distinct magnitudes.
    for (n, distinct, nan) in [
        (1usize, 3u64, false),
        (777, 5, false),
        (40_000, 1000, true),
        (300_000, 40, true),
    ] {
        let base = values(n, 1, 50, false);
        let models: Vec<Vec<f32>> = (0..3).map(|i| values(n, 10 + i, distinct, nan)).collect();
        let deltas: Vec<Vec<f32>> = models
            .iter()
            .map(|m| m.iter().zip(&base).map(|(x, b)| x - b).collect())
            .collect();
        let clean: Vec<Vec<f32>> = deltas
            .iter()
            .map(|d| {
                d.iter()
                    .map(|&x| if x.is_finite() { x } else { 0.0 })
                    .collect()
            })
            .collect();
        let density = [0.1, 0.35, 1.0];
        let weights = [0.5f32, 1.0, 2.0];
        let s = measure(&base, &models, &density, &weights, 4096, 2);
        assert_eq!(s.numel, n as u64);
        let mut kept = Vec::new();
        for (i, d) in clean.iter().enumerate() {
            let m = &s.models[i];
            let mut sq: Vec<f64> = d.iter().map(|&x| f64::from(x) * f64::from(x)).collect();
            sq.sort_by(|a, b| b.total_cmp(a));
            let energy_of = |k: usize| sq[..k].iter().sum::<f64>();
            let close = |a: f64, b: f64, what: &str| {
                assert!(
                    (a - b).abs() <= 1e-9 * b.abs().max(1e-30),
                    "n={n} model {i} {what}: {a} vs {b}"
                )
            };
            close(m.energy, energy_of(n), "energy");
            for (s, &e) in SHARES.iter().zip(&m.top_energy) {
                close(
                    e,
                    energy_of(kept_count(*s, n as u64) as usize),
                    &format!("top {s}"),
                );
            }
            let keep = kept_count(density[i], n as u64) as usize;
            close(m.kept_energy, energy_of(keep), "kept energy");
            assert_eq!(m.kept, keep as u64);
            let expected_nonfinite = deltas[i].iter().filter(|x| !x.is_finite()).count() as u64;
            assert_eq!(
                m.nonfinite, expected_nonfinite,
                "n={n} model {i} non-finite"
            );
            // The curve is a lower bound, exact at its end.
            for (p, &e) in m.curve.iter().enumerate() {
                let exact = energy_of(kept_count((p + 1) as f64 / STEPS as f64, n as u64) as usize);
                assert!(
                    e <= exact * (1.0 + 1e-12),
                    "n={n} model {i} curve {p}: {e} > {exact}"
                );
            }
            close(m.curve[STEPS - 1], m.energy, "curve end");
            let mask = top(d, keep);
            kept.push(
                d.iter()
                    .zip(&mask)
                    .map(|(&x, &k)| if k { x } else { 0.0 })
                    .collect::<Vec<f32>>(),
            );
        }
        // The election, brute force.
        for i in 0..3 {
            let (mut mass, mut lost) = (0f64, 0f64);
            for j in 0..n {
                let mut score = 0f32;
                for (w, k) in weights.iter().zip(&kept) {
                    score += w * k[j];
                }
                let elected = if score >= 0.0 { 1.0 } else { -1.0 };
                let x = kept[i][j];
                mass += f64::from(x.abs());
                let u = weights[i] * x;
                if x != 0.0 && !(u != 0.0 && u.signum() == elected) {
                    lost += f64::from(x.abs());
                }
            }
            let m = &s.models[i];
            assert!(
                (m.kept_mass - mass).abs() <= 1e-9 * mass.max(1e-30),
                "kept mass"
            );
            assert!(
                (m.discarded_mass - lost).abs() <= 1e-9 * mass.max(1e-30),
                "discarded"
            );
        }
        for p in &s.pairs {
            let (x, y) = (&clean[p.a], &clean[p.b]);
            let both = (0..n).filter(|&j| x[j] != 0.0 && y[j] != 0.0);
            assert_eq!(p.both, both.clone().count() as u64);
            assert_eq!(
                p.agree,
                both.filter(|&j| (x[j] > 0.0) == (y[j] > 0.0)).count() as u64
            );
            let (kx, ky) = (&kept[p.a], &kept[p.b]);
            let tboth = (0..n).filter(|&j| kx[j] != 0.0 && ky[j] != 0.0);
            assert_eq!(p.top_both, tboth.clone().count() as u64, "n={n} top both");
            assert_eq!(
                p.top_agree,
                tboth.filter(|&j| (kx[j] > 0.0) == (ky[j] > 0.0)).count() as u64
            );
        }
        // The same figures, to the bit, for other chunks and thread counts.
        for (chunk, threads) in [(4096 * 3, 1), (4096 * 64, 3)] {
            assert_eq!(
                s,
                measure(&base, &models, &density, &weights, chunk, threads),
                "n={n}"
            );
        }
    }
}

#[test]
fn every_vector_level_gives_the_same_figures() {
    // An odd length, so that the vector loops' tails run, with NaN and many ties.
    let n = 300_007;
    let base = values(n, 1, 50, false);
    let models: Vec<Vec<f32>> = (0..3).map(|i| values(n, 20 + i, 300, true)).collect();
    let run = || {
        measure(
            &base,
            &models,
            &[0.2, 0.05, 0.5],
            &[1.0, 0.5, 2.0],
            4096 * 4,
            2,
        )
    };
    reefknot_simd::at_every_level(run);
}

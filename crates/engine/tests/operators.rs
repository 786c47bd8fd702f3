//! The built-in operators on hand-computed cases and their promised properties, run
//! through the real streaming executor (chunked, parallel) on vectors in memory.

use std::collections::BTreeMap;

use proptest::prelude::*;
use reefknot_engine::{bind_pipeline, merge_tensor, InMemory, MemorySink, NoProgress, TensorJob};
use reefknot_io::Dtype;
use reefknot_ops::{Registry, BLOCK};

/// A merge of one tensor: `base + Δ` for the pipeline `expr`.
struct Case<'a> {
    expr: &'a str,
    base: Vec<f32>,
    models: Vec<Vec<f32>>,
    weights: Vec<f32>,
    fisher: Vec<Vec<f32>>,
    vars: BTreeMap<String, Vec<f64>>,
    seed: u64,
    chunk: usize,
    /// The tensor's shape (default: a vector).
    shape: Option<Vec<usize>>,
}

impl<'a> Case<'a> {
    fn new(expr: &'a str, base: Vec<f32>, models: Vec<Vec<f32>>) -> Self {
        let t = models.len();
        Case {
            expr,
            base,
            models,
            weights: vec![1.0; t],
            fisher: Vec::new(),
            vars: BTreeMap::new(),
            seed: 0,
            chunk: BLOCK,
            shape: None,
        }
    }

    /// Task vectors on a zero base: the output is Δ itself.
    fn deltas(expr: &'a str, deltas: &[&[f32]]) -> Self {
        let n = deltas[0].len();
        Case::new(
            expr,
            vec![0.0; n],
            deltas.iter().map(|d| d.to_vec()).collect(),
        )
    }

    fn weights(mut self, w: &[f32]) -> Self {
        self.weights = w.to_vec();
        self
    }

    fn fisher(mut self, f: Vec<Vec<f32>>) -> Self {
        self.fisher = f;
        self
    }

    fn var(mut self, name: &str, values: &[f64]) -> Self {
        self.vars.insert(name.to_string(), values.to_vec());
        self
    }

    fn chunk(mut self, chunk: usize) -> Self {
        self.chunk = chunk;
        self
    }

    fn shape(mut self, shape: &[usize]) -> Self {
        assert_eq!(shape.iter().product::<usize>(), self.base.len());
        self.shape = Some(shape.to_vec());
        self
    }

    fn run(&self) -> Vec<f32> {
        let bytes = self.run_bytes(None);
        bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }

    /// The output's bytes, on a pool of `threads` threads (or the global pool).
    fn run_bytes(&self, threads: Option<usize>) -> Vec<u8> {
        let registry = Registry::builtin();
        let pipeline = reefknot_lang::compile(self.expr, &registry)
            .unwrap_or_else(|e| panic!("{}: {e}", self.expr));
        let t = self.models.len();
        let stages = bind_pipeline(&pipeline, &registry, &self.vars, t, "test.weight")
            .unwrap_or_else(|e| panic!("{}: {e}", self.expr));
        let source = InMemory {
            base: &self.base,
            models: self.models.iter().map(Vec::as_slice).collect(),
            fisher: self.fisher.iter().map(Vec::as_slice).collect(),
        };
        let shape = self.shape.clone().unwrap_or_else(|| vec![self.base.len()]);
        let job = TensorJob {
            name: "test.weight",
            shape: &shape,
            numel: self.base.len(),
            layer: None,
            models: t,
            source: &source,
            fisher: !self.fisher.is_empty(),
            stages: &stages,
            weights: &self.weights,
            seed: self.seed,
            fisher_means: None,
            check_finite: true,
        };
        let out = MemorySink::new(self.base.len() * 4);
        let work = || {
            merge_tensor(&job, self.chunk, Dtype::F32, &out, &NoProgress).unwrap();
            out.into_inner()
        };
        match threads {
            Some(n) => rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .unwrap()
                .install(work),
            None => work(),
        }
    }
}

fn close(a: &[f32], b: &[f32], tol: f32) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| (x - y).abs() <= tol * (1.0 + x.abs().max(y.abs())))
}

#[test]
fn worked_example_from_the_ties_paper() {
    // One parameter, three fine-tunes moving it by +0.5, +0.4 and −0.6.
    let d: &[&[f32]] = &[&[0.5], &[0.4], &[-0.6]];
    // Elected sign: Σ = +0.3 ≥ 0, so +. Disjoint mean of the agreeing +0.5, +0.4.
    assert_eq!(
        Case::deltas("trim(1) |> elect |> disjoint", d).run(),
        [0.45]
    );
    assert_eq!(Case::deltas("ties", d).run(), [0.45]);
    assert_eq!(
        Case::deltas("ties(trim(0.2), elect, disjoint)", d).run(),
        [0.45]
    );
    // Task arithmetic averaged: (0.5 + 0.4 − 0.6) / 3.
    let mean = Case::deltas("mean", d).run()[0];
    assert!((mean - 0.1).abs() < 1e-7, "{mean}");
    // Summed, the agreeing entries: 0.9.
    assert_eq!(
        Case::deltas("trim(1) |> elect |> disjoint(sum)", d).run(),
        [0.9]
    );
    let sum = Case::deltas("sum", d).run()[0];
    assert!((sum - 0.3).abs() < 1e-7, "{sum}");
}

#[test]
fn the_output_is_the_base_plus_the_delta() {
    let case = Case::new("sum", vec![1.0, 2.0], vec![vec![1.5, 2.0], vec![0.5, 3.0]]);
    assert_eq!(case.run(), [1.0, 3.0]);
}

#[test]
fn trim_keeps_the_largest_magnitudes() {
    let v: &[f32] = &[3.0, -1.0, 2.0, -5.0, 0.5];
    assert_eq!(
        Case::deltas("trim(0.4) |> sum", &[v]).run(),
        [3.0, 0.0, 0.0, -5.0, 0.0]
    );
    assert_eq!(Case::deltas("trim(0) |> sum", &[v]).run(), [0.0; 5]);
    assert_eq!(Case::deltas("trim(1) |> sum", &[v]).run(), v);
    // A density beyond 1 is refused where it is written (it would keep everything).
    let registry = reefknot_ops::Registry::builtin();
    let e = reefknot_lang::compile("trim(7.5) |> sum", &registry).unwrap_err();
    assert!(e.to_string().contains("`k`"), "{e}");
    // ⌊0.1·5⌋ = 0, but a positive density keeps at least one entry.
    assert_eq!(
        Case::deltas("trim(0.1) |> sum", &[v]).run(),
        [0.0, 0.0, 0.0, -5.0, 0.0]
    );
    // `topk` is an alias.
    assert_eq!(
        Case::deltas("topk(0.4) |> sum", &[v]).run(),
        [3.0, 0.0, 0.0, -5.0, 0.0]
    );
}

#[test]
fn trim_breaks_ties_by_flat_index() {
    let v: &[f32] = &[1.0, -1.0, 1.0, 2.0, 1.0, -1.0];
    // Keep 3 of 6: the 2, then the first two of the five entries of magnitude 1.
    assert_eq!(
        Case::deltas("trim(0.5) |> sum", &[v]).run(),
        [1.0, -1.0, 0.0, 2.0, 0.0, 0.0]
    );
}

#[test]
fn trim_ties_across_chunks_keep_the_lowest_indices() {
    // 3 blocks of equal magnitudes, cut in the middle of the second chunk.
    let n = 3 * BLOCK;
    let v: Vec<f32> = (0..n)
        .map(|j| if j % 2 == 0 { 1.0 } else { -1.0 })
        .collect();
    let out = Case::deltas("trim(0.5) |> sum", &[&v]).run();
    let keep = (0.5 * n as f64) as usize;
    for (j, x) in out.iter().enumerate() {
        let expected = if j < keep { v[j] } else { 0.0 };
        assert_eq!(*x, expected, "element {j}");
    }
}

#[test]
fn trim_takes_a_density_per_model() {
    let a: &[f32] = &[4.0, 3.0, 2.0, 1.0];
    let b: &[f32] = &[1.0, 2.0, 3.0, 4.0];
    let out = Case::deltas("trim($density) |> sum", &[a, b])
        .var("density", &[0.25, 0.5])
        .run();
    assert_eq!(out, [4.0, 0.0, 3.0, 4.0]);
}

#[test]
fn trim_on_the_merged_delta() {
    let a: &[f32] = &[1.0, 2.0, 3.0, 4.0];
    let out = Case::deltas("sum |> trim(0.5)", &[a, a]).run();
    assert_eq!(out, [0.0, 0.0, 6.0, 8.0]);
}

#[test]
fn elect_by_mass_count_and_fisher() {
    let d: &[&[f32]] = &[&[0.1], &[0.1], &[-0.9]];
    // Mass: Σ = −0.7, so −; the only agreeing entry is −0.9.
    assert_eq!(Case::deltas("elect |> disjoint", d).run(), [-0.9]);
    // Count: two positive votes against one.
    assert_eq!(Case::deltas("elect(count) |> disjoint", d).run(), [0.1]);
    // Fisher: the negative model is unsure (F = 0.01), the others confident.
    let out = Case::deltas("elect(fisher) |> disjoint", d)
        .fisher(vec![vec![1.0], vec![1.0], vec![0.01]])
        .run();
    assert_eq!(out, [0.1]);
}

#[test]
fn an_exactly_zero_sum_elects_plus() {
    let d: &[&[f32]] = &[&[0.5], &[-0.5]];
    assert_eq!(Case::deltas("elect |> disjoint", d).run(), [0.5]);
}

#[test]
fn weights_apply_before_the_vote() {
    // u = (2·0.5, 1·−0.6) = (1.0, −0.6): + wins, mean over the weight of agreeing models.
    let d: &[&[f32]] = &[&[0.5], &[-0.6]];
    assert_eq!(
        Case::deltas("elect |> disjoint", d)
            .weights(&[2.0, 1.0])
            .run(),
        [0.5]
    );
    assert_eq!(
        Case::deltas("elect |> disjoint(sum)", d)
            .weights(&[2.0, 1.0])
            .run(),
        [1.0]
    );
    // Without weights, − wins.
    assert_eq!(Case::deltas("elect |> disjoint", d).run(), [-0.6]);
}

#[test]
fn disjoint_with_no_agreeing_entry_gives_zero() {
    let d: &[&[f32]] = &[&[0.0], &[0.0]];
    assert_eq!(Case::deltas("elect |> disjoint", d).run(), [0.0]);
}

#[test]
fn mean_counts_zeros_and_guards_a_zero_weight_sum() {
    let d: &[&[f32]] = &[&[0.6, 0.0], &[0.0, 0.3]];
    assert_eq!(Case::deltas("mean", d).run(), [0.3, 0.15]);
    // Σw = 0: the divisor becomes 1.
    let out = Case::deltas("mean", d).weights(&[1.0, -1.0]).run();
    assert_eq!(out, [0.6, -0.3]);
}

#[test]
fn fisher_merging_weights_each_element_by_importance() {
    let d: &[&[f32]] = &[&[1.0, 1.0], &[-1.0, -1.0]];
    let out = Case::deltas("fisher", d)
        .fisher(vec![vec![3.0, 0.0], vec![1.0, 0.0]])
        .run();
    // (3·1 + 1·−1) / 4 = 0.5; all-zero Fisher falls back to the plain mean (0).
    assert!(close(&out, &[0.5, 0.0], 1e-6), "{out:?}");
    // Model weights multiply the Fisher weights.
    let out = Case::deltas("fisher", d)
        .fisher(vec![vec![1.0, 1.0], vec![1.0, 1.0]])
        .weights(&[3.0, 1.0])
        .run();
    assert!(close(&out, &[0.5, 0.5], 1e-6), "{out:?}");
}

#[test]
fn disjoint_fisher_is_the_fisher_weighted_mean_of_agreeing_entries() {
    let d: &[&[f32]] = &[&[1.0], &[3.0], &[-5.0]];
    let out = Case::deltas("elect |> disjoint(fisher)", d)
        .fisher(vec![vec![1.0], vec![3.0], vec![1.0]])
        .run();
    // By mass Σ = 1 + 3 − 5 = −1, so −: only −5 agrees.
    assert_eq!(out, [-5.0]);
    let out = Case::deltas("elect(count) |> disjoint(fisher)", d)
        .fisher(vec![vec![1.0], vec![3.0], vec![1.0]])
        .run();
    // + by count; (1·1 + 3·3) / (1 + 3) = 2.5.
    assert!(close(&out, &[2.5], 1e-6), "{out:?}");
}

#[test]
fn scale_multiplies_the_delta() {
    let d: &[&[f32]] = &[&[1.0, -2.0]];
    assert_eq!(Case::deltas("sum |> scale(0.5)", d).run(), [0.5, -1.0]);
    assert_eq!(
        Case::deltas("sum |> scale(lambda=-2)", d).run(),
        [-2.0, 4.0]
    );
}

#[test]
fn dare_zero_is_the_identity() {
    let v: Vec<f32> = (0..10_000)
        .map(|j| ((j * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    for rescale in ["inverse", "l1", "none"] {
        let expr = format!("dare(p=0, rescale={rescale}) |> sum");
        assert_eq!(Case::deltas(&expr, &[&v]).run(), v, "{rescale}");
    }
}

#[test]
fn dare_drops_about_p_and_rescales() {
    let n = 200_000;
    let v: Vec<f32> = (0..n).map(|j| 1.0 + (j % 10) as f32).collect();
    let out = Case::deltas("dare(0.9) |> sum", &[&v]).run();
    let kept = out.iter().filter(|&&x| x != 0.0).count() as f64 / n as f64;
    assert!((kept - 0.1).abs() < 0.005, "kept {kept}");
    // Survivors are scaled by 1/(1−p) = 10, so the mean is preserved in expectation.
    for (x, y) in out.iter().zip(&v) {
        assert!(*x == 0.0 || (x - 10.0 * y).abs() < 1e-4, "{x} vs {y}");
    }
    let mean_in = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n as f64;
    let mean_out = out.iter().map(|&x| f64::from(x)).sum::<f64>() / n as f64;
    assert!(
        (mean_out / mean_in - 1.0).abs() < 0.03,
        "{mean_out} vs {mean_in}"
    );
    // `rescale=none` keeps survivors as they were.
    let out = Case::deltas("dare(0.5, rescale=none) |> sum", &[&v]).run();
    assert!(out.iter().zip(&v).all(|(x, y)| *x == 0.0 || x == y));
}

#[test]
fn dare_l1_restores_the_l1_norm() {
    let n = 50_000;
    let v: Vec<f32> = (0..n)
        .map(|j| ((j * 31) % 97) as f32 / 97.0 - 0.5)
        .collect();
    let out = Case::deltas("dare(0.7, rescale=l1) |> sum", &[&v]).run();
    let l1 = |x: &[f32]| x.iter().map(|&a| f64::from(a.abs())).sum::<f64>();
    assert!(
        (l1(&out) / l1(&v) - 1.0).abs() < 1e-5,
        "{} vs {}",
        l1(&out),
        l1(&v)
    );
}

#[test]
fn dare_is_deterministic_and_seeded() {
    let v: Vec<f32> = vec![1.0; 5 * BLOCK];
    let a = Case::deltas("dare(0.5) |> sum", &[&v]).run();
    let b = Case::deltas("dare(0.5) |> sum", &[&v])
        .chunk(3 * BLOCK)
        .run();
    assert_eq!(a, b);
    let mut other = Case::deltas("dare(0.5) |> sum", &[&v]);
    other.seed = 1;
    assert_ne!(a, other.run());
}

/// Task vectors with heavy tails and sign conflicts, from a seed.
fn family(seed: u64, models: usize, n: usize) -> (Vec<f32>, Vec<Vec<f32>>) {
    let s = reefknot_ops::rng::Stream::new(seed, "family", 0);
    let mut j = 0u64;
    let mut next = || {
        j += 1;
        (f64::from(s.draw(j)) / 4_294_967_296.0) as f32 * 2.0 - 1.0
    };
    let base: Vec<f32> = (0..n).map(|_| next() * 0.05).collect();
    let models = (0..models)
        .map(|_| {
            base.iter()
                .map(|&b| {
                    let big = next().abs() > 0.8;
                    b + next() * if big { 0.02 } else { 0.002 }
                })
                .collect()
        })
        .collect();
    (base, models)
}

#[test]
fn results_do_not_depend_on_threads_or_chunks() {
    let (base, models) = family(3, 3, 5 * BLOCK + 123);
    for expr in [
        "ties(0.2)",
        "dare(0.9, rescale=l1) |> elect |> disjoint",
        "trim(0.5) |> dare(0.6, rescale=l1) |> elect |> disjoint",
        "sum |> dare(0.5, rescale=l1)",
        "trim(0.3) |> dare(0.5) |> elect(count) |> disjoint(sum) |> trim(0.5) |> scale(0.7)",
        "mean",
        "breadcrumbs(0.3, gamma=0.05, rescale=l1) |> elect |> disjoint",
        "trim(0.2, rescale=l1) |> sum",
        "della(0.4, eps=0.2) |> elect |> disjoint",
        "model_stock",
        "model_stock(filter_wise=true)",
        "tsv",
        "iso",
    ] {
        let case = Case::new(expr, base.clone(), models.clone());
        let one = case.run_bytes(Some(1));
        let four = case.run_bytes(Some(4));
        assert_eq!(one, four, "{expr}: 1 vs 4 threads");
        let big = Case::new(expr, base.clone(), models.clone()).chunk(4 * BLOCK);
        assert_eq!(one, big.run_bytes(Some(3)), "{expr}: chunk size");
    }
    // On a matrix, whose rows fit several to a chunk (row-wise operators), with the
    // number of models each method takes.
    for (t, expr) in [
        (3, "della(0.4, eps=0.2) |> elect |> disjoint"),
        (3, "model_stock(filter_wise=true)"),
        (3, "trim(0.3) |> della(0.5) |> dare(0.5, rescale=l1) |> sum"),
        (3, "multislerp"),
        (3, "karcher(with_base=true)"),
        (3, "sce(0.3)"),
        (3, "ram"),
        (3, "ramplus_tl"),
        (3, "linear(normalize=false, base_weight=0.2)"),
        (2, "nuslerp"),
        (2, "nuslerp(flatten=false)"),
        (2, "nuslerp(flatten=false, row_wise=true)"),
        (1, "slerp(0.3)"),
        (1, "nearswap(0.001)"),
        (1, "arcee_fusion"),
        (1, "passthrough(0.5)"),
        (3, "tsv"),
        (3, "trim(0.5) |> iso |> scale(0.8)"),
        (3, "iso_cts(common=0.6)"),
    ] {
        let (base, models) = family(4, t, 37 * 512);
        let case = || Case::new(expr, base.clone(), models.clone()).shape(&[37, 512]);
        let one = case().run_bytes(Some(1));
        assert_eq!(one, case().run_bytes(Some(4)), "{expr}: 1 vs 4 threads");
        let big = case().chunk(4 * BLOCK).run_bytes(Some(3));
        assert_eq!(one, big, "{expr}: chunk size");
    }
}

#[test]
fn constant_fisher_reproduces_plain_ties() {
    let (base, models) = family(5, 3, 3 * BLOCK);
    let plain = Case::new(
        "trim(0.2) |> elect |> disjoint",
        base.clone(),
        models.clone(),
    )
    .run();
    for c in [1e-8f32, 0.25, 1.0, 3.0] {
        let fisher = vec![vec![c; base.len()]; 3];
        let fisher_ties = Case::new(
            "trim(0.2) |> elect(fisher) |> disjoint(fisher)",
            base.clone(),
            models.clone(),
        )
        .fisher(fisher)
        .run();
        assert!(close(&plain, &fisher_ties, 1e-6), "Fisher constant {c}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// `trim(1)` then `sum` is task arithmetic.
    #[test]
    fn trim_one_then_sum_is_task_arithmetic(seed in 0u64..1000, n in 1usize..3000, t in 1usize..5) {
        let (base, models) = family(seed, t, n);
        let a = Case::new("trim(1) |> sum", base.clone(), models.clone()).run();
        let b = Case::new("task_arithmetic", base, models).run();
        prop_assert_eq!(a, b);
    }

    /// TIES does not depend on the order of the models (up to float rounding).
    #[test]
    fn ties_ignores_model_order(seed in 0u64..1000, n in 1usize..3000, k in 0.05f64..1.0) {
        let (base, models) = family(seed, 3, n);
        let expr = format!("ties({k})");
        let a = Case::new(&expr, base.clone(), models.clone()).run();
        let mut reversed = models.clone();
        reversed.reverse();
        let b = Case::new(&expr, base, reversed).run();
        prop_assert!(close(&a, &b, 1e-6));
    }

    /// `dare(p=0)` is the identity, whatever the rescaling.
    #[test]
    fn dare_zero_is_identity(seed in 0u64..1000, n in 1usize..3000) {
        let (base, models) = family(seed, 2, n);
        let a = Case::new("dare(p=0, rescale=l1) |> sum", base.clone(), models.clone()).run();
        let b = Case::new("sum", base, models).run();
        prop_assert_eq!(a, b);
    }

    /// `dare` with inverse rescaling preserves the mean in expectation: over many
    /// elements the mean stays within a few standard errors.
    #[test]
    fn dare_inverse_preserves_the_mean(seed in 0u64..1000, p in 0.05f64..0.9) {
        let n = 40_000;
        let v: Vec<f32> = (0..n).map(|j| 1.0 + ((j as u64 * 2654435761 + seed) % 1000) as f32 / 1000.0).collect();
        let mut case = Case::deltas("dare($p) |> sum", &[&v]).var("p", &[p]);
        case.seed = seed;
        let out = case.run();
        let mean_in = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n as f64;
        let mean_out = out.iter().map(|&x| f64::from(x)).sum::<f64>() / n as f64;
        // The standard error of the mean of survivors scaled by 1/(1−p).
        let se = (p / (1.0 - p) / n as f64).sqrt() * 1.6;
        prop_assert!((mean_out / mean_in - 1.0).abs() < 5.0 * se, "{} vs {} (p {})", mean_out, mean_in, p);
    }
}

/// The reference: keep the `max(1, ⌊k·n⌋)` largest magnitudes, ties by lower index,
/// computed by sorting (fine in a test).
fn trim_reference(v: &[f32], k: f64) -> Vec<f32> {
    let n = v.len();
    let keep = ((k * n as f64).floor() as usize).max(1);
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| v[b].abs().total_cmp(&v[a].abs()).then(a.cmp(&b)));
    let mut out = vec![0.0; n];
    for &j in &order[..keep] {
        out[j] = v[j];
    }
    out
}

#[test]
fn trim_on_large_tensors_matches_a_sort() {
    // Large enough to be sampled; values on a coarse grid, so many ties at the cut.
    let n = 80 * BLOCK + 77;
    let s = reefknot_ops::rng::Stream::new(11, "large", 0);
    let coarse: Vec<f32> = (0..n as u64)
        .map(|j| ((s.draw(j) % 200) as f32 - 100.0) / 64.0)
        .collect();
    // A sample that misleads: the sampled chunks (every 8th) hold only tiny values.
    let chunk = 4 * BLOCK;
    let skewed: Vec<f32> = coarse
        .iter()
        .enumerate()
        .map(|(j, &x)| {
            if (j / chunk).is_multiple_of(8) {
                x * 1e-3
            } else {
                x
            }
        })
        .collect();
    for (name, v) in [("coarse", &coarse), ("skewed", &skewed)] {
        for k in [0.001, 0.2, 0.5, 0.93] {
            let expected = trim_reference(v, k);
            let expr = format!("trim({k}) |> sum");
            for c in [BLOCK, chunk, 7 * BLOCK] {
                let got = Case::deltas(&expr, &[v]).chunk(c).run();
                assert!(got == expected, "{name}, k = {k}, chunk {c}");
            }
        }
    }
}

#[test]
fn trim_on_a_tensor_with_more_candidates_than_fit() {
    // Millions of magnitudes in the one histogram bucket around the cut, each pattern
    // repeated: more candidate pairs than a lane may store, so the lane takes the
    // constant-memory road (exact histograms, then per-chunk tie counts) and must still
    // keep the largest magnitudes, lowest indices first among equals.
    let n = 3 * reefknot_ops::builtin::MAX_CANDIDATES as usize + 5;
    let v: Vec<f32> = (0..n)
        .map(|j| {
            let x = 1.0 + (j % 65_536) as f32 * f32::EPSILON / 2.0;
            if j % 3 == 0 {
                -x
            } else {
                x
            }
        })
        .collect();
    for k in [0.3, 0.77] {
        let got = Case::deltas(&format!("trim({k}) |> sum"), &[&v])
            .chunk(8 * BLOCK)
            .run();
        assert!(got == trim_reference(&v, k), "k = {k}");
    }
}

// ---------------------------------------------------------------------------
// mergekit's other methods: breadcrumbs, rescaled trim, slerp, nearswap,
// model_stock, della
// ---------------------------------------------------------------------------

fn l1(x: &[f32]) -> f64 {
    x.iter().map(|&a| f64::from(a.abs())).sum()
}

#[test]
fn breadcrumbs_drops_the_outliers_and_keeps_the_next() {
    // n = 10: γ = 0.2 drops the 2 largest, k = 0.3 keeps the next 3.
    let d = [5.0f32, -9.0, 1.0, 7.0, -2.0, 0.5, 8.0, 3.0, -4.0, 6.0];
    let out = Case::deltas("breadcrumbs(0.3, gamma=0.2) |> sum", &[&d]).run();
    assert_eq!(
        out,
        [0.0, 0.0, 0.0, 7.0, 0.0, 0.0, 0.0, 0.0, 0.0, 6.0]
            .iter()
            .zip(&d)
            .map(|(&keep, &x)| if keep != 0.0 || x == 5.0 { x } else { 0.0 })
            .collect::<Vec<f32>>()
    );
    // γ + k > 1: fewer outliers are dropped so that ⌊k·n⌋ are kept (as mergekit).
    let out = Case::deltas("breadcrumbs(0.9, gamma=0.2) |> sum", &[&d]).run();
    assert_eq!(out.iter().filter(|x| **x != 0.0).count(), 9);
    assert_eq!(out[1], 0.0, "the largest is dropped");
    // k ≥ 1 keeps everything, outliers included.
    let out = Case::deltas("breadcrumbs(1, gamma=0.2) |> sum", &[&d]).run();
    assert_eq!(out, d);
}

#[test]
fn rescaled_sparsifiers_restore_the_l1_norm() {
    let (_, models) = family(8, 1, 6 * BLOCK + 5);
    let v = &models[0];
    for expr in [
        "trim(0.2, rescale=l1) |> sum",
        "breadcrumbs(0.3, gamma=0.02, rescale=l1) |> sum",
        "della(0.5, rescale=l1) |> sum",
    ] {
        let out = Case::deltas(expr, &[v]).run();
        let ratio = l1(&out) / l1(v);
        assert!((ratio - 1.0).abs() < 1e-5, "{expr}: L1 ratio {ratio}");
        assert!(
            out.iter().filter(|x| **x == 0.0).count() > v.len() / 3,
            "{expr}"
        );
    }
    // Nothing cut, nothing scaled.
    assert_eq!(Case::deltas("trim(1, rescale=l1) |> sum", &[v]).run(), *v);
}

#[test]
fn slerp_at_zero_is_the_base_and_at_one_the_fine_tune() {
    let (base, models) = family(9, 1, 3 * BLOCK + 17);
    let at = |t: f64| {
        Case::new("slerp($t)", base.clone(), models.clone())
            .var("t", &[t])
            .run()
    };
    assert_eq!(at(0.0), base);
    assert!(close(&at(1.0), &models[0], 1e-6));
    // Halfway, on a big angle: the norm is between the ends' and above the lerp's.
    let (a, b): (Vec<f32>, Vec<f32>) = ((0..1000).map(|j| (j % 7) as f32 - 3.0).collect(), {
        (0..1000).map(|j| (j % 5) as f32 - 2.0).collect()
    });
    let mid = Case::new("slerp(0.5)", a.clone(), vec![b.clone()]).run();
    let norm = |x: &[f32]| x.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt();
    let lerp: Vec<f32> = a.iter().zip(&b).map(|(x, y)| 0.5 * (x + y)).collect();
    assert!(
        norm(&mid) > norm(&lerp) * 1.05,
        "{} vs {}",
        norm(&mid),
        norm(&lerp)
    );
}

#[test]
fn nearswap_takes_near_values_and_shrinks_far_ones() {
    let d = [0.001f32, -0.002, 0.5, -0.1, 0.0];
    let out = Case::deltas("nearswap(0.01)", &[&d]).run();
    let want = [0.001f32, -0.002, 0.01, -0.01, 0.0];
    assert!(close(&out, &want, 1e-7), "{out:?}");
}

#[test]
fn model_stock_of_orthogonal_task_vectors_is_the_base() {
    let n = 3 * BLOCK;
    // Disjoint supports: pairwise orthogonal, cos θ = 0, t = 0.
    let models: Vec<Vec<f32>> = (0..3)
        .map(|i| (0..n).map(|j| if j % 3 == i { 0.1 } else { 0.0 }).collect())
        .collect();
    let base: Vec<f32> = (0..n).map(|j| j as f32 * 1e-4).collect();
    let out = Case::new(
        "model_stock",
        base.clone(),
        models
            .iter()
            .map(|m| m.iter().zip(&base).map(|(d, b)| b + d).collect())
            .collect(),
    )
    .run();
    assert_eq!(out, base);
    // Identical task vectors: cos θ = 1, t = 1, the average itself.
    let d: Vec<f32> = (0..n).map(|j| ((j % 13) as f32 - 6.0) * 0.01).collect();
    let out = Case::deltas("model_stock", &[&d, &d, &d]).run();
    assert!(close(&out, &d, 1e-6));
}

#[test]
fn model_stock_filter_wise_takes_a_ratio_per_row() {
    // Row 0: the models agree (t = 1); row 1: orthogonal (t = 0).
    let (rows, cols) = (2, 3000);
    let mut models = vec![vec![0f32; rows * cols]; 2];
    for j in 0..cols {
        models[0][j] = 0.5;
        models[1][j] = 0.5;
        models[0][cols + j] = if j % 2 == 0 { 1.0 } else { 0.0 };
        models[1][cols + j] = if j % 2 == 1 { 1.0 } else { 0.0 };
    }
    let out = Case::deltas("model_stock(filter_wise=true)", &[&models[0], &models[1]])
        .shape(&[rows, cols])
        .run();
    assert!(out[..cols].iter().all(|&x| (x - 0.5).abs() < 1e-6));
    assert!(out[cols..].iter().all(|&x| x == 0.0));
    // Over the whole tensor the two rows mix into one ratio strictly between.
    let whole = Case::deltas("model_stock", &[&models[0], &models[1]]).run();
    assert!(whole[0] > 0.0 && whole[0] < 0.5, "{}", whole[0]);
}

#[test]
fn della_keeps_about_k_and_prefers_large_entries() {
    let (rows, cols) = (64, 1000);
    // Every row holds the magnitudes 1..=cols once, shuffled by a stride.
    let v: Vec<f32> = (0..rows * cols)
        .map(|j| (((j % cols) * 7 + j / cols) % cols + 1) as f32)
        .collect();
    let (k, eps) = (0.4, 0.2);
    let out = Case::deltas(
        &format!("della({k}, eps={eps}, rescale=none) |> sum"),
        &[&v],
    )
    .shape(&[rows, cols])
    .run();
    let kept = out.iter().filter(|x| **x != 0.0).count() as f64 / v.len() as f64;
    assert!((kept - k).abs() < 0.01, "kept {kept}");
    // Keep rates by magnitude decile follow p = (k − ε) + 2ε·r̂.
    for decile in [0usize, 9] {
        let (lo, hi) = (decile * cols / 10 + 1, (decile + 1) * cols / 10);
        let (mut n, mut kept) = (0, 0);
        for (x, o) in v.iter().zip(&out) {
            let m = *x as usize;
            if m >= lo && m <= hi {
                n += 1;
                kept += usize::from(*o != 0.0);
            }
        }
        let rate = kept as f64 / n as f64;
        let expected = (k - eps) + 2.0 * eps * (decile as f64 + 0.5) / 10.0;
        assert!(
            (rate - expected).abs() < 0.03,
            "decile {decile}: {rate} vs {expected}"
        );
    }
    // Survivors are untouched without rescaling; k = 1 is the identity, k = 0 zero.
    assert!(out.iter().zip(&v).all(|(o, x)| *o == 0.0 || o == x));
    let all = Case::deltas("della(1) |> sum", &[&v])
        .shape(&[rows, cols])
        .run();
    assert_eq!(all, v);
    let none = Case::deltas("della(0) |> sum", &[&v])
        .shape(&[rows, cols])
        .run();
    assert!(none.iter().all(|x| *x == 0.0));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// With no outliers (γ = 0) breadcrumbs is trim.
    #[test]
    fn breadcrumbs_without_outliers_is_trim(seed in 0u64..1000, n in 10usize..5000, k in 0.1f64..1.0) {
        let (base, models) = family(seed, 2, n);
        let a = Case::new(&format!("breadcrumbs({k}, gamma=0) |> sum"), base.clone(), models.clone()).run();
        let b = Case::new(&format!("trim({k}) |> sum"), base, models).run();
        prop_assert_eq!(a, b);
    }

    /// slerp between a tensor and itself is that tensor, for any t.
    #[test]
    fn slerp_of_equal_tensors_is_the_tensor(seed in 0u64..1000, n in 1usize..3000, t in 0.0f64..1.0) {
        let (base, _) = family(seed, 1, n);
        let out = Case::new("slerp($t)", base.clone(), vec![base.clone()]).var("t", &[t]).run();
        prop_assert!(close(&out, &base, 1e-6));
    }
}

/// Two vectors at a moderate angle (well away from slerp's linear fallback).
fn two_directions(seed: u64, n: usize) -> (Vec<f32>, Vec<f32>) {
    let (_, m) = family(seed, 2, n);
    let a: Vec<f32> = m[0].iter().map(|x| x * 10.0).collect();
    let b: Vec<f32> = m[1]
        .iter()
        .zip(&a)
        .map(|(x, y)| 0.6 * y + 10.0 * x)
        .collect();
    (a, b)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// nuslerp of two models about the origin is slerp from the first to the second,
    /// with t = w₂/(w₁ + w₂).
    #[test]
    fn nuslerp_of_two_models_is_slerp(seed in 0u64..1000, n in 64usize..3000, t in 0.05f64..0.95) {
        let (a, b) = two_directions(seed, n);
        let slerp = Case::new("slerp($t)", a.clone(), vec![b.clone()]).var("t", &[t]).run();
        let zero = vec![0f32; n];
        let nu = Case::new("nuslerp(centered=false)", zero, vec![a, b])
            .weights(&[(1.0 - t) as f32, t as f32])
            .run();
        prop_assert!(close(&slerp, &nu, 1e-5));
    }

    /// The Karcher mean of identical models is that model, with or without the base.
    #[test]
    fn karcher_of_identical_models_is_the_model(seed in 0u64..1000, n in 1usize..3000, t in 1usize..5) {
        let (base, models) = family(seed, 1, n);
        let same = vec![models[0].clone(); t];
        let out = Case::new("karcher", base.clone(), same.clone()).run();
        prop_assert!(close(&out, &models[0], 1e-6));
        let with_base = Case::new("karcher(with_base=true)", models[0].clone(), same).run();
        prop_assert!(close(&with_base, &models[0], 1e-6));
    }
}

#[test]
fn multislerp_and_nuslerp_of_one_direction_keep_it() {
    // Parallel task vectors: the spherical means are the weighted mean along the line.
    let d: Vec<f32> = (0..5000).map(|j| ((j % 17) as f32 - 8.0) * 0.01).collect();
    let twice: Vec<f32> = d.iter().map(|x| 2.0 * x).collect();
    let multi = Case::deltas("multislerp", &[&d, &twice]).run();
    let want: Vec<f32> = d.iter().map(|x| 1.5 * x).collect();
    assert!(close(&multi, &want, 1e-5));
    let nu = Case::deltas("nuslerp", &[&d, &twice]).run();
    assert!(close(&nu, &want, 1e-5));
}

#[test]
fn ram_keeps_unique_changes_and_averages_shared_ones() {
    let a = [0.5f32, 0.0, 0.2, 1e-7];
    let b = [0.0f32, -0.3, 0.4, 0.0];
    let out = Case::deltas("ram", &[&a, &b]).run();
    assert!(close(&out, &[0.5, -0.3, 0.3, 0.0], 1e-7), "{out:?}");
    // ramplus_tl: each model changed one entry alone and shares one: ρ = 1, capped at
    // α = 0.2, so unique entries are scaled by 1 + 0.1·0.2.
    let out = Case::deltas("ramplus_tl", &[&a, &b]).run();
    assert!(
        close(&out, &[0.5 * 1.02, -0.3 * 1.02, 0.3, 0.0], 1e-6),
        "{out:?}"
    );
}

#[test]
fn sce_selects_by_variance_and_weights_by_energy() {
    // Element 0 varies most, element 1 not at all.
    let a = [1.0f32, 0.5, 0.1, -0.2];
    let b = [-1.0f32, 0.5, 0.3, -0.1];
    let all = Case::deltas("sce", &[&a, &b]).run();
    let half = Case::deltas("sce(0.5)", &[&a, &b]).run();
    // Three elements vary (element 1 does not): ⌊3·0.5⌋ = 1 is kept, the largest.
    assert_eq!(half.iter().filter(|x| **x != 0.0).count(), 1);
    assert!(half[0] != 0.0);
    // Without selection, element 1 (both 0.5) is 0.5 whatever the weights.
    assert!((all[1] - 0.5).abs() < 1e-6);
}

#[test]
fn linear_weights_whole_models() {
    // Models θ_i = base + δ_i; linear without normalising is Σ w_i θ_i (+ w_b θ_b).
    let base = vec![1.0f32, 2.0];
    let m = vec![vec![2.0f32, 2.0], vec![0.0, 4.0]];
    let out = Case::new(
        "linear(normalize=false, base_weight=0.5)",
        base.clone(),
        m.clone(),
    )
    .weights(&[0.25, 0.25])
    .run();
    assert!(
        close(&out, &[0.5 + 0.5 + 0.0, 1.0 + 0.5 + 1.0], 1e-6),
        "{out:?}"
    );
    let mean = Case::new("mean", base.clone(), m.clone()).run();
    let linear = Case::new("linear", base, m).run();
    assert_eq!(mean, linear);
}

#[test]
fn breadcrumbs_with_nothing_to_keep_keeps_nothing() {
    // ⌊k·n⌋ = 0 while ⌊γ·n⌋ = 1: no outlier survives (mergekit keeps an empty slice).
    let d = [5.0f32, -9.0, 1.0, 7.0, -2.0, 0.5, 8.0, 3.0, -4.0, 6.0];
    let out = Case::deltas("breadcrumbs(0.05, gamma=0.1) |> sum", &[&d]).run();
    assert!(out.iter().all(|x| *x == 0.0), "{out:?}");
    let out = Case::deltas("breadcrumbs(0, gamma=0.2) |> sum", &[&d]).run();
    assert!(out.iter().all(|x| *x == 0.0), "{out:?}");
}

#[test]
fn linear_with_weights_summing_to_zero_is_their_weighted_sum() {
    let base = vec![1.0f32, 2.0];
    let m = vec![vec![2.0f32, 2.0], vec![0.0, 4.0]];
    let out = Case::new("linear", base, m).weights(&[1.0, -1.0]).run();
    // 1·θ_1 − 1·θ_2, as `normalize=false` (mergekit divides by zero here).
    assert!(close(&out, &[2.0, -2.0], 1e-6), "{out:?}");
}

#[test]
fn every_vector_level_gives_the_same_bytes() {
    // Odd lengths and a ragged last chunk, so that the vector loops' tails run too.
    let (base, models) = family(12, 3, 3 * BLOCK + 4099);
    let exprs = [
        "dare(0.9, rescale=l1) |> elect |> disjoint",
        "dare(0.5) |> sum",
        "ties(0.2)",
        "sum |> dare(0.5, rescale=l1)",
        "della(0.4) |> mean",
    ];
    let run = || -> Vec<Vec<u8>> {
        exprs
            .iter()
            .map(|e| Case::new(e, base.clone(), models.clone()).run_bytes(Some(2)))
            .collect()
    };
    reefknot_simd::at_every_level(run);
}

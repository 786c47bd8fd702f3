//! How planning and merging scale with the number of tensors (large mixture-of-experts
//! checkpoints have tens of thousands): a base and two fine-tunes of `N` small tensors
//! each, named as a MoE model's experts and sharded with an index as the Hub's are,
//! planned with a recipe that has overrides, described, saved as JSON, read back and
//! merged with TIES, for each `N` given.
//!
//! ```text
//! cargo run --release -p reefknot-engine --example plan_scaling -- 10000 40000 200000
//! ```
//!
//! Prints, per `N`, the seconds of each step and the microseconds per tensor: linear
//! scaling keeps the latter flat. A benchmark to run and read, not a timed test. With
//! `REEFKNOT_KEEP=DIR` the families and recipes are kept in `DIR/N/`, to time the
//! command line on them (`reefknot check DIR/40000/r.yaml`).

use std::path::Path;
use std::time::Instant;

use reefknot_engine::{merge, MergeOptions, NoProgress, Plan, PlanOptions};
use reefknot_io::{Dtype, ModelWriter, OutputTensor, WriterOptions};
use reefknot_ops::Registry;
use reefknot_recipe::Recipe;

/// Elements per tensor: small, so that planning, not arithmetic, is measured.
const ELEMENTS: usize = 64;
/// Experts per layer, three matrices each.
const EXPERTS: usize = 128;
/// Bytes per shard: 1 MB, so that 200 000 tensors span 26 shards.
const SHARD: u64 = 1_000_000;

fn names(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let (layer, rest) = (i / (3 * EXPERTS), i % (3 * EXPERTS));
            let proj = ["gate_proj", "up_proj", "down_proj"][rest % 3];
            format!(
                "model.layers.{layer}.mlp.experts.{}.{proj}.weight",
                rest / 3
            )
        })
        .collect()
}

fn write_model(dir: &Path, names: &[String], seed: u32) {
    let tensors = names
        .iter()
        .map(|name| OutputTensor {
            name: name.clone(),
            dtype: Dtype::BF16,
            shape: vec![ELEMENTS],
        })
        .collect();
    std::fs::create_dir(dir).expect("a model folder");
    let opts = WriterOptions {
        shard_size: SHARD,
        ..WriterOptions::default()
    };
    let mut w = ModelWriter::create(dir, tensors, &opts).expect("writer");
    for (t, bytes) in w.data_mut_all().into_iter().enumerate() {
        for (j, b) in bytes.chunks_exact_mut(2).enumerate() {
            let h = (t as u32 ^ seed.wrapping_mul(0x9e37_79b9)).wrapping_mul(31) ^ j as u32;
            let x = ((h % 2001) as f32 - 1000.0) * 1e-5;
            b.copy_from_slice(&reefknot_io::f32_to_bf16_bits(x).to_le_bytes());
        }
    }
    w.finish().expect("write");
}

fn main() {
    let counts: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("tensor counts"))
        .collect();
    let counts = if counts.is_empty() {
        vec![10_000, 40_000, 200_000]
    } else {
        counts
    };
    let registry = Registry::builtin();
    println!(
        "{:>8}  {:>8}  {:>8}  {:>9}  {:>8}  {:>8}  {:>12}  {:>12}",
        "tensors", "plan s", "check s", "reload s", "merge s", "total s", "plan µs/t", "total µs/t"
    );
    for n in counts {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let kept = std::env::var_os("REEFKNOT_KEEP").map(|k| Path::new(&k).join(n.to_string()));
        let dir = match &kept {
            Some(k) => {
                std::fs::create_dir_all(k).expect("REEFKNOT_KEEP folder");
                tempfile::Builder::new()
                    .prefix("family-")
                    .tempdir_in(k)
                    .expect("a folder in REEFKNOT_KEEP")
            }
            None => dir,
        };
        let names = names(n);
        for (i, m) in ["base", "a", "b"].iter().enumerate() {
            write_model(&dir.path().join(m), &names, i as u32);
        }
        let recipe_path = dir.path().join("r.yaml");
        std::fs::write(
            &recipe_path,
            "base: base\nmodels:\n  - path: a\n  - path: b\nparams: { k: 0.2 }\n\
             merge: ties(trim($k), elect, disjoint)\noverrides:\n  \
             - match: \"model.layers.*.mlp.experts.*.down_proj.*\"\n    params: { k: 0.3 }\n  \
             - layers: 0..4\n    merge: sum |> scale(0.5)\n",
        )
        .expect("recipe");

        let started = Instant::now();
        let recipe = Recipe::load(&recipe_path).expect("recipe");
        let plan = Plan::build(&recipe, &registry, &PlanOptions::default()).expect("plan");
        let planned = started.elapsed().as_secs_f64();

        let t = Instant::now();
        let described = plan.describe();
        assert!(described.contains("trim"));
        let checked = t.elapsed().as_secs_f64();

        let t = Instant::now();
        let json = plan.data().to_json();
        let data = reefknot_engine::MergePlan::from_json(&json).expect("plan JSON");
        let reloaded = Plan::load(data, &registry).expect("reload");
        let reload = t.elapsed().as_secs_f64();
        drop(reloaded);

        let t = Instant::now();
        merge(
            &plan,
            &dir.path().join("out"),
            &MergeOptions::default(),
            &NoProgress,
        )
        .expect("merge");
        let merged = t.elapsed().as_secs_f64();

        std::fs::remove_dir_all(dir.path().join("out")).expect("remove the output");
        if kept.is_some() {
            let _ = dir.keep();
        }
        let total = planned + checked + reload + merged;
        println!(
            "{n:>8}  {planned:>8.3}  {checked:>8.3}  {reload:>9.3}  {merged:>8.3}  {total:>8.3}  {:>12.1}  {:>12.1}",
            planned * 1e6 / n as f64,
            total * 1e6 / n as f64
        );
    }
}

//! The cost of calling an operator through the plugin ABI: the built-in `scale` against
//! `fixture::gain` (the same elementwise math, `Δ ← λ·Δ`, in a plugin built with the
//! SDK), merging a synthetic family of about 170 M parameters per model.
//!
//! ```sh
//! cargo build --release -p reefknot-test-plugin
//! cargo run --release -p reefknot-plugins --example plugin_overhead [-- LIBFIXTURE [RUNS]]
//! ```
//!
//! It generates the family (hidden 1024, 8 layers, intermediate 2816, vocab 32000, three
//! fine-tunes, bf16) in a temporary folder, then times whole merges with one stage of
//! each (`sum |> scale(0.5)` against `sum |> fixture::gain(0.5)`) and with eight
//! (`sum |> scale(1.01) |> ...`), alternating built-in and plugin runs, and prints each
//! configuration's median and fastest wall time and the plugin/built-in ratio of the
//! medians. The two outputs of each configuration are checked to be identical bytes.

use std::path::{Path, PathBuf};
use std::time::Instant;

use reefknot_engine::{merge, MergeOptions, NoProgress, Plan, PlanOptions};
use reefknot_io::Dtype;
use reefknot_ops::Registry;
use reefknot_recipe::Recipe;
use reefknot_synth::FamilySpec;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let default_lib = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/release")
        .join(format!(
            "{}fixture{}",
            std::env::consts::DLL_PREFIX,
            std::env::consts::DLL_SUFFIX
        ));
    let lib = args.first().map_or(default_lib, PathBuf::from);
    let runs: usize = args.get(1).map_or(Ok(5), |r| r.parse())?;
    if !lib.exists() {
        return Err(format!(
            "{} does not exist: build it first with `cargo build --release -p reefknot-test-plugin`",
            lib.display()
        )
        .into());
    }

    let mut registry = Registry::builtin();
    let plugin = reefknot_plugins::load(&lib)?;
    plugin.register(&mut registry)?;

    let dir = tempfile::tempdir()?;
    let spec = FamilySpec {
        hidden: 1024,
        layers: 8,
        intermediate: 2816,
        vocab: 32_000,
        heads: 16,
        kv_heads: 16,
        tasks: 3,
        dtype: Dtype::BF16,
        ..FamilySpec::tiny()
    };
    let started = Instant::now();
    let family = reefknot_synth::generate(&spec, &dir.path().join("family"))?;
    println!(
        "family: base + {} fine-tunes of {:.1} M parameters each (bf16), generated in {:.1} s",
        spec.tasks,
        spec.params_per_model() as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    println!(
        "threads: {}, runs per configuration: {runs} (after one warm-up each)\n",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    let models: String = family
        .tasks
        .iter()
        .map(|t| format!("  - path: {}\n", t.display()))
        .collect();
    let plan = |merge_expr: &str| -> Result<Plan, Box<dyn std::error::Error>> {
        let text = format!(
            "base: {}\nmodels:\n{models}merge: {merge_expr}\n",
            family.base.display()
        );
        let recipe = Recipe::parse(&text, dir.path(), "bench.yaml")?;
        Ok(Plan::build(&recipe, &registry, &PlanOptions::default())?)
    };

    let chain = |op: &str, n: usize| -> String {
        let stages: Vec<String> = (0..n).map(|_| format!("{op}(1.01)")).collect();
        format!("sum |> {}", stages.join(" |> "))
    };
    let configs = [
        (
            "1 stage ",
            "sum |> scale(0.5)".to_string(),
            "sum |> fixture::gain(0.5)".to_string(),
        ),
        ("8 stages", chain("scale", 8), chain("fixture::gain", 8)),
    ];
    let opts = MergeOptions {
        force: true,
        ..MergeOptions::default()
    };
    println!("configuration  built-in median (min)   plugin median (min)   plugin / built-in");
    for (label, builtin_expr, plugin_expr) in &configs {
        let plans = [plan(builtin_expr)?, plan(plugin_expr)?];
        let outs = [
            dir.path().join("out-builtin"),
            dir.path().join("out-plugin"),
        ];
        let mut times = [Vec::new(), Vec::new()];
        for run in 0..=runs {
            for k in 0..2 {
                let report = merge(&plans[k], &outs[k], &opts, &NoProgress)?;
                if run > 0 {
                    times[k].push(report.seconds);
                }
            }
        }
        let a = std::fs::read(outs[0].join("model.safetensors"))?;
        let b = std::fs::read(outs[1].join("model.safetensors"))?;
        // The recipes differ (they are stored in the metadata); the tensors must not.
        let header = |x: &[u8]| 8 + u64::from_le_bytes(x[..8].try_into().unwrap()) as usize;
        assert!(
            a[header(&a)..] == b[header(&b)..],
            "built-in and plugin outputs differ"
        );
        let stats = |t: &mut Vec<f64>| {
            t.sort_by(f64::total_cmp);
            (t[t.len() / 2], t[0])
        };
        let (bm, bmin) = stats(&mut times[0]);
        let (pm, pmin) = stats(&mut times[1]);
        println!(
            "{label}       {bm:>7.3} s ({bmin:.3} s)      {pm:>7.3} s ({pmin:.3} s)      {:.3}",
            pm / bm
        );
    }
    Ok(())
}

//! The cost of calling an operator through the plugin ABI: the built-in `scale` against
//! `fixture::gain` (the same elementwise math, `Δ ← λ·Δ`, in a plugin built with the
//! SDK), in the process and isolated in helper processes (`--isolate-plugins`), merging
//! a synthetic family of about 170 M parameters per model.
//!
//! ```sh
//! cargo build --release -p reefknot-test-plugin --bin reefknot -p reefknot
//! cargo run --release -p reefknot-plugins --example plugin_overhead [-- LIBFIXTURE [RUNS [bench]]]
//! ```
//!
//! With `bench` as the third argument the family is the benchmark's (`synth bench`:
//! 0.54 B parameters a model) instead.
//!
//! It generates the family (hidden 1024, 8 layers, intermediate 2816, vocab 32000, three
//! fine-tunes, bf16) in a temporary folder, then times whole merges with one stage of
//! each (`sum |> scale(0.5)` against `sum |> fixture::gain(0.5)`) and with eight
//! (`sum |> scale(1.01) |> ...`), alternating built-in, plugin and isolated plugin runs,
//! and prints each configuration's median and fastest wall time and the ratios of the
//! medians to the built-in's. The outputs of each configuration are checked to be
//! identical bytes. The isolated runs' helpers are `target/release/reefknot
//! plugin-host`.

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
    let program = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/release")
        .join(format!("reefknot{}", std::env::consts::EXE_SUFFIX));
    if !program.exists() {
        return Err(format!(
            "{} does not exist: build it first with `cargo build --release`",
            program.display()
        )
        .into());
    }
    let mut loader = reefknot_plugins::Loader::isolated(reefknot_plugins::Isolation {
        program,
        args: vec!["plugin-host".into()],
        timeout: std::time::Duration::from_secs(600),
    });
    loader.load(&lib)?;
    let isolated = loader.registry()?;

    let dir = tempfile::tempdir()?;
    let spec = if args.get(2).map(String::as_str) == Some("bench") {
        FamilySpec::bench()
    } else {
        FamilySpec {
            hidden: 1024,
            layers: 8,
            intermediate: 2816,
            vocab: 32_000,
            heads: 16,
            kv_heads: 16,
            tasks: 3,
            dtype: Dtype::BF16,
            ..FamilySpec::tiny()
        }
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
    let plan =
        |merge_expr: &str, registry: &Registry| -> Result<Plan, Box<dyn std::error::Error>> {
            let text = format!(
                "base: {}\nmodels:\n{models}merge: {merge_expr}\n",
                family.base.display()
            );
            let recipe = Recipe::parse(&text, dir.path(), "bench.yaml")?;
            Ok(Plan::build(&recipe, registry, &PlanOptions::default())?)
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
    println!(
        "configuration  built-in median (min)   plugin median (min)   isolated median (min)   plugin / built-in   isolated / built-in"
    );
    for (label, builtin_expr, plugin_expr) in &configs {
        let plans = [
            plan(builtin_expr, &registry)?,
            plan(plugin_expr, &registry)?,
            plan(plugin_expr, &isolated)?,
        ];
        let outs = [
            dir.path().join("out-builtin"),
            dir.path().join("out-plugin"),
            dir.path().join("out-isolated"),
        ];
        let mut times = [Vec::new(), Vec::new(), Vec::new()];
        for run in 0..=runs {
            for k in 0..3 {
                let report = merge(&plans[k], &outs[k], &opts, &NoProgress)?;
                if run > 0 {
                    times[k].push(report.seconds);
                }
            }
        }
        let a = std::fs::read(outs[0].join("model.safetensors"))?;
        // The recipes differ (they are stored in the metadata); the tensors must not.
        let header = |x: &[u8]| 8 + u64::from_le_bytes(x[..8].try_into().unwrap()) as usize;
        for out in &outs[1..] {
            let b = std::fs::read(out.join("model.safetensors"))?;
            assert!(
                a[header(&a)..] == b[header(&b)..],
                "built-in and plugin outputs differ ({})",
                out.display()
            );
        }
        let stats = |t: &mut Vec<f64>| {
            t.sort_by(f64::total_cmp);
            (t[t.len() / 2], t[0])
        };
        let (bm, bmin) = stats(&mut times[0]);
        let (pm, pmin) = stats(&mut times[1]);
        let (im, imin) = stats(&mut times[2]);
        println!(
            "{label}       {bm:>7.3} s ({bmin:.3} s)      {pm:>7.3} s ({pmin:.3} s)      {im:>7.3} s ({imin:.3} s)        {:.3}               {:.3}",
            pm / bm,
            im / bm
        );
    }
    Ok(())
}

//! `reefknot demo`: synthesise a family with real sign conflicts, merge it with several
//! methods and show how each keeps the tasks.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args as ClapArgs;
use reefknot_engine::{MergeOptions, NoProgress, Plan, PlanOptions};
use reefknot_ops::Registry;
use reefknot_recipe::Recipe;
use reefknot_synth::{FamilySpec, TaskScore};

use crate::Failure;

#[derive(ClapArgs)]
pub(crate) struct DemoArgs {
    /// Keep the synthetic family, the recipes and the merged models in this folder
    /// (default: a temporary folder, deleted at the end).
    #[arg(long)]
    keep: Option<PathBuf>,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

/// The merges the demo compares: name, expression.
pub(crate) const METHODS: &[(&str, &str)] = &[
    ("averaging", "mean"),
    ("task arithmetic", "sum"),
    ("TIES", "ties(trim(0.2), elect, disjoint)"),
    ("DARE-TIES", "dare(p=0.8) |> elect |> disjoint"),
];

fn recipe_text(tasks: usize, expression: &str) -> String {
    let mut s = String::from("# written by `reefknot demo`\nbase: ../family/base\nmodels:\n");
    for t in 0..tasks {
        let _ = writeln!(s, "  - path: ../family/task_{t}");
    }
    let _ = writeln!(s, "merge: {expression}\nseed: 0");
    s
}

pub(crate) fn run(args: &DemoArgs) -> Result<(), Failure> {
    let temp;
    let root: &Path = match &args.keep {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            dir
        }
        None => {
            temp = tempfile::tempdir().context("creating a temporary folder")?;
            temp.path()
        }
    };
    let spec = FamilySpec::demo();
    let started = std::time::Instant::now();
    let family = reefknot_synth::generate(&spec, &root.join("family"))
        .context("generating the synthetic family")?;
    let stats = reefknot_synth::family_stats(&family.base, &family.tasks)
        .context("measuring the synthetic family")?;
    outln!(
        "A synthetic Llama-shaped family: a base and {} fine-tunes, {} layers, hidden {}, {:.1} M parameters each, {} (made in {:.2} s).",
        family.tasks.len(),
        spec.layers,
        spec.hidden,
        spec.params_per_model() as f64 / 1e6,
        spec.dtype.torch_name(),
        started.elapsed().as_secs_f64()
    );
    let top = stats.tasks.iter().map(|t| t.top_energy).sum::<f64>() / stats.tasks.len() as f64;
    let conflict =
        stats.pairs.iter().map(|p| p.conflict).sum::<f64>() / stats.pairs.len().max(1) as f64;
    outln!(
        "Each task vector keeps {:.0}% of its energy in its top 20% entries; where two tasks' top entries meet, {:.0}% have opposite signs.\n",
        100.0 * top,
        100.0 * conflict
    );

    let recipes = root.join("recipes");
    std::fs::create_dir_all(&recipes).with_context(|| format!("creating {}", recipes.display()))?;
    let registry = Registry::builtin();
    let mut rows = Vec::new();
    for (i, (name, expression)) in METHODS.iter().enumerate() {
        let path = recipes.join(format!(
            "{i}-{}.yaml",
            name.replace(' ', "-").to_lowercase()
        ));
        std::fs::write(&path, recipe_text(family.tasks.len(), expression))
            .with_context(|| format!("writing {}", path.display()))?;
        let recipe = Recipe::load(&path).map_err(reefknot_engine::Error::from)?;
        let plan = Plan::build(&recipe, &registry, &PlanOptions::default())?;
        let out = root
            .join("merged")
            .join(name.replace(' ', "-").to_lowercase());
        let opts = MergeOptions {
            threads: args.threads,
            force: true,
            ..MergeOptions::default()
        };
        let report = reefknot_engine::merge(&plan, &out, &opts, &NoProgress)?;
        let scores = reefknot_synth::score(&family.base, &family.tasks, &out)
            .with_context(|| format!("scoring {}", out.display()))?;
        rows.push((*name, *expression, scores, report.seconds));
    }
    out!("{}", table(&rows));
    outln!(
        "\ncos δi: cosine between the merged delta Δ and task vector δi. retained: ⟨Δ, δi⟩ / ‖δi‖², how much of each\n\
         task vector the merge carries (1 = all of it). signs kept: share of each task's top-20% entries whose sign\n\
         survives in Δ. Means over the tasks.\n\n\
         Averaging keeps every direction but dilutes each task to 1/T; task arithmetic keeps each task whole but adds\n\
         the others' noise and lets conflicting signs cancel; TIES keeps most of each task at full strength by trimming\n\
         the noise and electing one sign per parameter; DARE drops entries at random, which these synthetic task\n\
         vectors (unlike real fine-tunes) cannot afford."
    );
    if let Some(dir) = &args.keep {
        outln!(
            "The family, recipes and merged models are in {}.",
            dir.display()
        );
    }
    Ok(())
}

fn table(rows: &[(&str, &str, Vec<TaskScore>, f64)]) -> String {
    let tasks = rows.first().map_or(0, |r| r.2.len());
    let mut s = String::new();
    let _ = write!(s, "{:<16} {:<34}", "method", "expression");
    for t in 0..tasks {
        let _ = write!(s, " {:>7}", format!("cos δ{t}"));
    }
    let _ = writeln!(
        s,
        " {:>9} {:>9} {:>11} {:>8}",
        "cos mean", "retained", "signs kept", "time"
    );
    for (name, expression, scores, seconds) in rows {
        let _ = write!(s, "{name:<16} {expression:<34}");
        for sc in scores {
            let _ = write!(s, " {:>7.3}", sc.cosine);
        }
        let n = scores.len().max(1) as f64;
        let cos = scores.iter().map(|x| x.cosine).sum::<f64>() / n;
        let kept = scores.iter().map(|x| x.sign_kept).sum::<f64>() / n;
        let retained = scores.iter().map(|x| x.retained).sum::<f64>() / n;
        let _ = writeln!(
            s,
            " {cos:>9.3} {retained:>9.3} {:>10.1}% {:>6.0} ms",
            100.0 * kept,
            seconds * 1000.0
        );
    }
    s
}

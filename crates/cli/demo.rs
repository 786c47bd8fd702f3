//! `reefknot demo`: synthesise a family whose tasks have losses that can be computed
//! exactly, merge it with several methods and show what each keeps of each task.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args as ClapArgs;
use reefknot_engine::{MergeOptions, NoProgress, Plan, PlanOptions};
use reefknot_ops::Registry;
use reefknot_recipe::Recipe;
use reefknot_synth::FamilySpec;

use crate::Failure;

#[derive(ClapArgs)]
pub(crate) struct DemoArgs {
    /// Keep everything in this folder: the family as the example recipes expect it
    /// (`models/{base,code,math,chat}`, `fisher/{code,math,chat}.safetensors`) and the
    /// demo's own recipes and merges (`demo/`). Default: a temporary folder, deleted
    /// at the end. `reefknot demo --keep recipes` lets every recipe of `recipes/` run.
    #[arg(long, value_name = "DIR")]
    keep: Option<PathBuf>,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

/// One merge the demo compares.
pub(crate) struct Method {
    pub name: &'static str,
    pub expression: &'static str,
    /// Whether it reads the models' Fisher files (so it is not data-free).
    pub uses_fisher: bool,
}

/// The merges the demo compares, in the order of the table.
pub(crate) const METHODS: &[Method] = &[
    Method {
        name: "averaging",
        expression: "mean",
        uses_fisher: false,
    },
    Method {
        name: "task arithmetic",
        expression: "sum",
        uses_fisher: false,
    },
    Method {
        name: "TIES",
        expression: "ties(trim(0.2), elect, disjoint)",
        uses_fisher: false,
    },
    Method {
        name: "DARE-TIES",
        expression: "dare(p=0.8) |> elect |> disjoint",
        uses_fisher: false,
    },
    Method {
        name: "Fisher merging",
        expression: "fisher",
        uses_fisher: true,
    },
    Method {
        name: "Fisher-TIES",
        expression: "trim(0.2) |> elect(fisher) |> disjoint(fisher)",
        uses_fisher: true,
    },
];

/// The fine-tunes' names: the folders the example recipes read.
const TASKS: [&str; 3] = ["code", "math", "chat"];

/// What the demo writes under its folder (and refuses to replace).
const FAMILY_DIRS: [&str; 3] = ["models", "fisher", "demo"];

fn slug(name: &str) -> String {
    name.replace(' ', "-").to_lowercase()
}

fn recipe_text(method: &Method) -> String {
    let mut s = format!(
        "# written by `reefknot demo`: {}\nbase: ../models/base\nmodels:\n",
        method.name
    );
    for task in TASKS {
        let _ = writeln!(s, "  - path: ../models/{task}");
        if method.uses_fisher {
            let _ = writeln!(s, "    fisher: ../fisher/{task}.safetensors");
        }
    }
    let _ = writeln!(s, "merge: {}\nseed: 0", method.expression);
    s
}

/// One row of the table: a model, its loss on each task relative to the base's, and
/// its summed loss over the tasks relative to the base's sum (`all`).
struct Row {
    name: String,
    expression: &'static str,
    relative: Vec<f64>,
    all: f64,
    seconds: Option<f64>,
    uses_fisher: bool,
}

pub(crate) fn run(args: &DemoArgs) -> Result<(), Failure> {
    let temp;
    let root: &Path = match &args.keep {
        Some(dir) => {
            if let Some(taken) = FAMILY_DIRS.iter().map(|d| dir.join(d)).find(|p| p.exists()) {
                return Err(anyhow::anyhow!(
                    "{} already exists (an earlier `reefknot demo --keep`?); the demo writes \
                     {}/{{models,fisher,demo}} and replaces nothing: remove them, or keep \
                     the demo elsewhere",
                    taken.display(),
                    dir.display()
                )
                .into());
            }
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            dir
        }
        None => {
            temp = tempfile::tempdir().context("creating a temporary folder")?;
            temp.path()
        }
    };
    let spec = FamilySpec::demo();
    assert_eq!(spec.tasks, TASKS.len(), "the demo names three fine-tunes");
    let started = std::time::Instant::now();
    let (base, tasks, fishers) =
        lay_out_family(&spec, root).context("generating the synthetic family")?;
    outln!(
        "A synthetic Llama-shaped family: a base and {} fine-tunes ({}), {} layers, hidden {}, {:.1} M parameters each, {} (made in {:.2} s).",
        tasks.len(),
        TASKS.join(", "),
        spec.layers,
        spec.hidden,
        spec.params_per_model() as f64 / 1e6,
        spec.dtype.torch_name(),
        started.elapsed().as_secs_f64()
    );
    let demo = root.join("demo");
    std::fs::create_dir_all(&demo).with_context(|| format!("creating {}", demo.display()))?;
    let registry = Registry::builtin();
    let (top, conflict) = family_figures(&demo, &registry, args.threads)?;
    outln!(
        "Each task's loss is a quadratic bowl around its fine-tune, ½·Σ F·(θ − θ_task)², with curvature F = 1 on\n\
         the {:.0}% of entries the task changed on purpose and {} on the rest, where fine-tuning only drifted\n\
         (Fisher merging is exact for such losses; the Fisher files hold F). Each task vector keeps {:.0}% of its\n\
         energy in its top 20% entries; where two tasks' top entries meet, {:.0}% have opposite signs.\n",
        100.0 * f64::from(spec.density),
        reefknot_synth::NOISE_CURVATURE,
        100.0 * top,
        100.0 * conflict
    );

    let losses = |model: &Path| {
        reefknot_synth::quadratic_losses(&tasks, &fishers, model)
            .with_context(|| format!("computing the task losses of {}", model.display()))
    };
    let base_loss = losses(&base)?;
    let base_sum: f64 = base_loss.iter().sum();
    let row = |name: String, expression, loss: Vec<f64>, seconds, uses_fisher| Row {
        name,
        expression,
        relative: loss.iter().zip(&base_loss).map(|(l, b)| l / b).collect(),
        all: loss.iter().sum::<f64>() / base_sum,
        seconds,
        uses_fisher,
    };
    let mut rows = vec![
        row("the base".into(), "", base_loss.clone(), None, false),
        row(
            format!("the {} model", TASKS[0]),
            "",
            losses(&tasks[0])?,
            None,
            false,
        ),
    ];
    for method in METHODS {
        let path = demo.join(format!("{}.yaml", slug(method.name)));
        std::fs::write(&path, recipe_text(method))
            .with_context(|| format!("writing {}", path.display()))?;
        let recipe = Recipe::load(&path).map_err(reefknot_engine::Error::from)?;
        let plan = Plan::build(&recipe, &registry, &PlanOptions::default())?;
        let out = demo.join("merged").join(slug(method.name));
        let opts = MergeOptions {
            threads: args.threads,
            force: true,
            ..MergeOptions::default()
        };
        let report = reefknot_engine::merge(&plan, &out, &opts, &NoProgress)?;
        rows.push(row(
            method.name.into(),
            method.expression,
            losses(&out)?,
            Some(report.seconds),
            method.uses_fisher,
        ));
    }
    outln!(
        "Loss on each task relative to the base's (0: as good as that task's fine-tune, 1: no better than the\n\
         base); all: the tasks' losses summed, relative to the base's sum:\n"
    );
    out!("{}", table(&rows));
    outln!("");
    for line in verdict(&rows[2..]) {
        outln!("{line}");
    }
    if let Some(dir) = &args.keep {
        outln!(
            "\nThe family is in {0}/models and {0}/fisher (as the example recipes expect it), the demo's recipes and merges in {0}/demo.",
            dir.display()
        );
        outln!(
            "Measure its task vectors before choosing a density: reefknot analyze {}/ties.yaml (docs/analyze.md).",
            dir.join("demo").display()
        );
    } else {
        outln!(
            "\nBefore choosing a density for your own models, measure their task vectors: \
             reefknot analyze RECIPE (docs/analyze.md)."
        );
    }
    Ok(())
}

/// What `reefknot analyze` measures of the family, over the TIES recipe's tensors: the
/// share of each task vector's energy in its top 20 % of entries, and, where two tasks'
/// top entries meet, the share with opposite signs (each averaged).
fn family_figures(
    demo: &Path,
    registry: &Registry,
    threads: Option<usize>,
) -> Result<(f64, f64), Failure> {
    let ties = METHODS
        .iter()
        .find(|m| m.name == "TIES")
        .expect("the demo merges with TIES");
    let recipe = Recipe::parse(&recipe_text(ties), demo, "ties.yaml")
        .map_err(reefknot_engine::Error::from)?;
    let plan = Plan::build(&recipe, registry, &PlanOptions::default())?;
    let groups = |_: &str| Vec::new();
    let whole = reefknot_engine::analyze(
        &plan,
        &groups,
        Some(0.2),
        threads,
        reefknot_engine::DEFAULT_CHUNK,
        &NoProgress,
    )?
    .whole();
    let fifth = reefknot_ops::analysis::SHARES
        .iter()
        .position(|&s| s == 0.2)
        .expect("analyze measures the top 20 %");
    let top = (0..whole.models.len())
        .map(|i| whole.energy_share(i, fifth).unwrap_or(f64::NAN))
        .sum::<f64>()
        / whole.models.len() as f64;
    // A pair that keeps no entry in common counts as all conflict, as before.
    let conflict = whole
        .pairs
        .iter()
        .map(|p| p.top_conflict().unwrap_or(1.0))
        .sum::<f64>()
        / whole.pairs.len().max(1) as f64;
    Ok((top, conflict))
}

/// Generates the demo family into `root/models/{base,code,math,chat}` and its Fisher
/// files into `root/fisher/`. Returns the base, the fine-tunes and the Fisher files.
fn lay_out_family(
    spec: &FamilySpec,
    root: &Path,
) -> anyhow::Result<(PathBuf, Vec<PathBuf>, Vec<PathBuf>)> {
    let models = root.join("models");
    let family = reefknot_synth::generate(spec, &models)?;
    let mut tasks = Vec::new();
    for (from, name) in family.tasks.iter().zip(TASKS) {
        let to = models.join(name);
        std::fs::rename(from, &to).with_context(|| format!("renaming {}", from.display()))?;
        tasks.push(to);
    }
    // family.json names the folders as they are now.
    let mut about = reefknot_synth::family_json(spec);
    about["models"] = serde_json::json!(["base", TASKS[0], TASKS[1], TASKS[2]]);
    let json = models.join("family.json");
    std::fs::write(&json, format!("{about:#}\n"))
        .with_context(|| format!("writing {}", json.display()))?;
    let dir = root.join("fisher");
    std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let fishers: Vec<PathBuf> = TASKS
        .iter()
        .map(|t| dir.join(format!("{t}.safetensors")))
        .collect();
    reefknot_synth::write_fishers(spec, &fishers)?;
    Ok((family.base, tasks, fishers))
}

fn table(rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = write!(s, "{:<16} {:<46}", "", "expression");
    for t in TASKS {
        let _ = write!(s, " {t:>6}");
    }
    let _ = writeln!(s, " {:>6} {:>7}", "all", "time");
    for row in rows {
        let _ = write!(s, "{:<16} {:<46}", row.name, row.expression);
        for r in &row.relative {
            let _ = write!(s, " {r:>6.3}");
        }
        let _ = write!(s, " {:>6.3}", row.all);
        if let Some(seconds) = row.seconds {
            let _ = write!(s, " {:>4.0} ms", seconds * 1000.0);
        }
        let _ = writeln!(s);
    }
    s
}

/// What the table shows, in sentences drawn from its numbers.
fn verdict(rows: &[Row]) -> Vec<String> {
    let by_name = |name: &str| rows.iter().find(|r| r.name == name);
    let mut lines = Vec::new();
    let mut free: Vec<&Row> = rows.iter().filter(|r| !r.uses_fisher).collect();
    free.sort_by(|a, b| a.all.total_cmp(&b.all));
    if let Some((best, rest)) = free.split_first() {
        let others: Vec<String> = rest
            .iter()
            .map(|r| format!("{:.2} for {}", r.all, r.name))
            .collect();
        lines.push(format!(
            "Without data, {} keeps the tasks best: a summed loss of {:.2} of the base's,\nagainst {}.",
            best.name,
            best.all,
            join(&others)
        ));
    }
    if let (Some(avg), Some(ta)) = (by_name("averaging"), by_name("task arithmetic")) {
        lines.push(format!(
            "Averaging keeps a 1/{} share of each task vector ({:.2}); task arithmetic keeps each task whole but\n\
             piles the others' changes onto its important entries ({:.2}). TIES trims each task to its largest\n\
             entries, which are mostly its important ones, and lets one sign win where tasks conflict.",
            TASKS.len(),
            avg.all,
            ta.all
        ));
    }
    if let (Some(dare), Some(ties)) = (by_name("DARE-TIES"), by_name("TIES")) {
        if dare.all > ties.all {
            lines.push(format!(
                "DARE-TIES ({:.2}) loses to TIES at the same density: a random 20% of each task vector, scaled by 5, is right\n\
                 on average but adds a variance of 4·δ² to every entry, which a loss that feels each important entry pays\n\
                 in full. DARE relies on fine-tunes whose loss barely notices such noise, as Yu et al. (2024) measured on\n\
                 LLM fine-tunes; this family's tasks do not.",
                dare.all
            ));
        }
    }
    if let (Some(fisher), Some(best)) = (by_name("Fisher merging"), free.first()) {
        // Each element's summed loss is a parabola with its minimum at the Fisher-weighted
        // mean, and the nearest value of the output dtype is the best one stored.
        let lowest = rows.iter().all(|r| fisher.all <= r.all);
        lines.push(if lowest {
            format!(
                "Fisher merging is given each task's curvature and so reaches the lowest summed loss any merge of\n\
                 these tasks can ({:.2}); {} gets to {:.2} without it.",
                fisher.all, best.name, best.all
            )
        } else {
            format!(
                "Fisher merging should reach the lowest summed loss of all, yet measures {:.2}: a bug, please report it.",
                fisher.all
            )
        });
    }
    lines
}

/// `a`, `a and b`, `a, b and c`.
fn join(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

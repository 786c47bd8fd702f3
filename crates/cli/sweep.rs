//! `reefknot sweep`: a grid over a recipe's `$variables`, each point merged and scored
//! by the built-in evaluator (`--eval-data`, the mean held-out loss over the files) or
//! an external command (`--eval-cmd`), with a table as points finish, CSV and JSON
//! results, resume after an interruption, and the best model kept.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::Context as _;
use clap::Args as ClapArgs;
use reefknot_engine::MergeOptions;
use reefknot_recipe::{Number, ParamValue};
use serde_json::{json, Value};

use crate::{Failure, Overrides};

#[derive(ClapArgs)]
pub(crate) struct SweepArgs {
    /// The recipe (YAML) or mergekit configuration whose `$variables` the grid sets.
    recipe: PathBuf,
    /// One axis of the grid: a variable and its values, e.g. `--grid density=0.1,0.2,0.3`.
    /// Repeat for more axes; every combination is a point. Default: the recipe's
    /// `sweep: {grid: …}`.
    #[arg(long, value_name = "NAME=V1,V2,...", value_parser = parse_axis)]
    grid: Vec<(String, Vec<f64>)>,
    /// The command that scores a merged model: `{model}` is replaced by its folder (quoted
    /// for the shell); its last line of output is the score, a number or JSON (a number,
    /// or an object with `score`). Run with `sh -c`.
    #[arg(long, value_name = "COMMAND")]
    eval_cmd: Option<String>,
    /// Score each merged model by its held-out loss on this data file (as `reefknot
    /// eval` computes it), in-process; repeat for several files (one per task, say):
    /// the score is the mean of their losses, lower is better.
    #[arg(long, value_name = "FILE", conflicts_with = "eval_cmd")]
    eval_data: Vec<PathBuf>,
    /// With --eval-data: the evaluation window in tokens (as `reefknot eval --context`).
    #[arg(long, value_name = "TOKENS")]
    context: Option<usize>,
    /// The folder of the sweep: the points' models (`points/`), `results.json` and
    /// `results.csv`. A sweep run again into it resumes: scored points are not redone.
    #[arg(short, long)]
    output: PathBuf,
    /// Higher scores are better (default: lower, as for a loss).
    #[arg(long)]
    maximize: bool,
    /// Keep every point's model (default: only the best's).
    #[arg(long)]
    keep_all: bool,
    /// Also draw the score over the grid (`.svg` or `.png`): against the first axis,
    /// one line per combination of the others, the best point ringed.
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
    /// With the built-in scorer: write each point's merge to disk and load it back, even
    /// when it fits in memory (where it is scored from memory, and only the best point
    /// is written, at the end).
    #[arg(long)]
    to_disk: bool,
    /// Worker threads of each merge (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    #[command(flatten)]
    overrides: Overrides,
}

/// `NAME=V1,V2,...` for `--grid`.
fn parse_axis(s: &str) -> Result<(String, Vec<f64>), String> {
    let (name, values) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not NAME=V1,V2,..., e.g. density=0.1,0.2"))?;
    let name = crate::variable_name(name)?;
    let values: Vec<f64> = values
        .split(',')
        .map(|v| {
            let v = v.trim();
            v.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(|| format!("`{v}` in --grid {name} is not a finite number"))
        })
        .collect::<Result<_, _>>()?;
    Ok((name, values))
}

/// One point of the grid: a value per axis, in axis order.
type Point = Vec<(String, f64)>;

/// The folder name of a point: `density=0.1,lambda=0.5`.
fn slug(point: &Point) -> String {
    point
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Every combination of the axes' values, the first axis varying slowest.
fn points(axes: &[(String, Vec<f64>)]) -> Vec<Point> {
    let mut out: Vec<Point> = vec![Vec::new()];
    for (name, values) in axes {
        out = out
            .into_iter()
            .flat_map(|p| {
                values.iter().map(move |&v| {
                    let mut q = p.clone();
                    q.push((name.clone(), v));
                    q
                })
            })
            .collect();
    }
    out
}

/// A score from a command's output: its last non-empty line, a number or JSON.
fn parse_score(stdout: &str) -> Result<f64, String> {
    let line = stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .ok_or("the command printed nothing")?;
    let score = match line.parse::<f64>() {
        Ok(x) => Some(x),
        Err(_) => match serde_json::from_str::<Value>(line) {
            Ok(Value::Number(n)) => n.as_f64(),
            Ok(Value::Object(o)) => o.get("score").and_then(Value::as_f64),
            _ => None,
        },
    };
    match score {
        Some(x) if x.is_finite() => Ok(x),
        _ => Err(format!(
            "its last line, `{line}`, is not a finite number or JSON with a `score`"
        )),
    }
}

/// Whether a merge of `plan`, with its f32 copy for the evaluator, fits in the memory
/// the system says is available (Linux's `MemAvailable`), with a quarter to spare.
fn fits_in_memory(plan: &reefknot_engine::Plan) -> bool {
    let (stored, values): (u64, u64) = plan
        .data()
        .tensors
        .iter()
        .zip(plan.dtypes())
        .map(|(t, d)| {
            let n = t.numel() as u64;
            (n * d.size() as u64, n)
        })
        .fold((0, 0), |(a, b), (x, y)| (a + x, b + y));
    let need = stored + 4 * values;
    available_memory().is_some_and(|free| need.saturating_mul(4) / 3 < free)
}

/// `MemAvailable` of /proc/meminfo, in bytes.
fn available_memory() -> Option<u64> {
    let text = fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Runs the `--eval-cmd` on a point's model and reads its score.
fn score_with_command(cmd: &str, point: &Point, model: &Path) -> Result<f64, Failure> {
    let command = cmd.replace("{model}", &shell_quote(model));
    let out = Command::new("sh")
        .arg("-c")
        .arg(&command)
        .output()
        .with_context(|| format!("running `{command}`"))?;
    let failed = |why: String| {
        Failure::from(anyhow::anyhow!(
            "scoring {} with `{command}`: {why}{}",
            slug(point),
            match String::from_utf8_lossy(&out.stderr).trim() {
                "" => String::new(),
                e => format!("\n{e}"),
            }
        ))
    };
    if !out.status.success() {
        return Err(failed(format!("it failed ({})", out.status)));
    }
    parse_score(&String::from_utf8_lossy(&out.stdout)).map_err(failed)
}

/// Removes the model of every point of this grid but the best scored so far, so that
/// a sweep holds at most two merged models on disk (the best and the one just scored).
fn drop_all_but_the_best(
    results: &mut [Value],
    all: &[Point],
    maximize: bool,
) -> anyhow::Result<()> {
    let best = best_of(results, all, maximize).map(|(i, _)| i);
    for (i, r) in results.iter_mut().enumerate() {
        if Some(i) == best || !all.iter().any(|p| same_point(r, p)) {
            continue;
        }
        if let Some(model) = r["model"].as_str().map(PathBuf::from) {
            if model.exists() {
                fs::remove_dir_all(&model)
                    .with_context(|| format!("removing {}", model.display()))?;
            }
            r["model"] = Value::Null;
        }
    }
    Ok(())
}

/// The best-scored result of this grid's points, by index into `results`, and its
/// score; ties go to the point first in the grid.
fn best_of(results: &[Value], all: &[Point], maximize: bool) -> Option<(usize, f64)> {
    let better = |a: f64, b: f64| if maximize { a > b } else { a < b };
    let mut best: Option<(usize, f64, usize)> = None;
    for (i, r) in results.iter().enumerate() {
        let Some(at) = all.iter().position(|p| same_point(r, p)) else {
            continue;
        };
        let s = r["score"].as_f64().unwrap_or(f64::NAN);
        if best.is_none_or(|(_, b, b_at)| better(s, b) || (!better(b, s) && at < b_at)) {
            best = Some((i, s, at));
        }
    }
    best.map(|(i, s, _)| (i, s))
}

/// A path quoted for `sh`.
fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

/// One scored point, as results.json holds it.
fn result_json(point: &Point, score: f64, seconds: f64, model: Option<&Path>) -> Value {
    let params: serde_json::Map<String, Value> =
        point.iter().map(|(n, v)| (n.clone(), json!(v))).collect();
    json!({
        "params": params,
        "score": score,
        "merge_and_eval_seconds": seconds,
        "model": model.map(|m| m.display().to_string()),
    })
}

fn same_point(entry: &Value, point: &Point) -> bool {
    let params = &entry["params"];
    params.as_object().is_some_and(|o| o.len() == point.len())
        && point
            .iter()
            .all(|(n, v)| params[n.as_str()].as_f64() == Some(*v))
}

fn write_results(dir: &Path, axes: &[(String, Vec<f64>)], results: &[Value]) -> anyhow::Result<()> {
    let json_path = dir.join("results.json");
    let tmp = dir.join(".results.json.tmp");
    fs::write(&tmp, serde_json::to_string_pretty(&json!(results))? + "\n")
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, &json_path).with_context(|| format!("writing {}", json_path.display()))?;
    let mut csv = axes.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    csv.push("score".into());
    let mut text = csv.join(",") + "\n";
    for r in results {
        let mut row: Vec<String> = axes
            .iter()
            .map(|(n, _)| match &r["params"][n.as_str()] {
                // A point of another grid, without this axis.
                Value::Null => String::new(),
                v => v.to_string(),
            })
            .collect();
        row.push(r["score"].to_string());
        text.push_str(&row.join(","));
        text.push('\n');
    }
    let csv_path = dir.join("results.csv");
    fs::write(&csv_path, text).with_context(|| format!("writing {}", csv_path.display()))?;
    Ok(())
}

pub(crate) fn run(args: &SweepArgs, quiet: bool) -> Result<(), Failure> {
    crate::watchdog::start();
    // The recipe is read, and its plugins loaded, once for every point.
    let recipe = crate::read_recipe(&args.recipe, &args.overrides)?;
    let section = recipe.sweep.clone();
    let grid: Vec<(String, Vec<f64>)> = match (&section, args.grid.is_empty()) {
        (Some(s), true) => s
            .grid
            .iter()
            .map(|(n, v)| Ok((crate::variable_name(n)?, v.clone())))
            .collect::<Result<_, String>>()
            .map_err(|e| crate::usage(anyhow::anyhow!("the recipe's sweep grid: {e}")))?,
        (None, true) => {
            return Err(crate::usage(anyhow::anyhow!(
                "no grid: give --grid NAME=V1,V2,... or write a `sweep:` section with a `grid` in the recipe"
            )))
        }
        (_, false) => args.grid.clone(),
    };
    // The command line's scorer, else the recipe's.
    let from_cli = args.eval_cmd.is_some() || !args.eval_data.is_empty();
    let (eval_cmd, eval_data) = match &section {
        Some(s) if !from_cli => (s.eval_cmd.clone(), s.eval_data.clone()),
        _ => (args.eval_cmd.clone(), args.eval_data.clone()),
    };
    if eval_cmd.is_none() && eval_data.is_empty() {
        return Err(crate::usage(anyhow::anyhow!(
            "no scorer: give --eval-data FILE or --eval-cmd 'COMMAND {{model}}' (or `eval_data`/`eval_cmd` in the recipe's `sweep:`)"
        )));
    }
    let context = args.context.or(section.as_ref().and_then(|s| s.context));
    let maximize = args.maximize || section.as_ref().is_some_and(|s| s.maximize);
    let mut names: Vec<&str> = grid.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(crate::usage(anyhow::anyhow!(
            "--grid {} is given twice",
            w[0]
        )));
    }
    if let Some(cmd) = &eval_cmd {
        if !cmd.contains("{model}") {
            return Err(crate::usage(anyhow::anyhow!(
                "--eval-cmd must name the model as {{model}}, e.g. --eval-cmd 'my_eval {{model}}'"
            )));
        }
    } else {
        if maximize {
            return Err(crate::usage(anyhow::anyhow!(
                "--maximize with --eval-data: the built-in score is a loss, lower is better"
            )));
        }
        if let Some(missing) = eval_data.iter().find(|p| !p.is_file()) {
            return Err(crate::usage(anyhow::anyhow!(
                "--eval-data {}: no such file",
                missing.display()
            )));
        }
    }
    let scorer = match &eval_cmd {
        Some(cmd) => format!("`{cmd}`"),
        None => format!(
            "the mean loss on {}",
            eval_data
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    if let Some(path) = &args.plot {
        crate::plot::Format::of(path).map_err(|e| crate::usage(anyhow::anyhow!(e)))?;
    }
    let all = points(&grid);
    // Every point's plan first: a value out of range fails before anything is merged.
    // The points share their inputs, opened (and their headers checked) once.
    let opened = reefknot_engine::Opened::default();
    let registry = crate::recipe_registry(&recipe, &args.overrides, None)?;
    let mut plans = Vec::with_capacity(all.len());
    for point in &all {
        let mut recipe = recipe.clone();
        for (n, v) in point {
            recipe.set_param(n, ParamValue::Number(Number::Scalar(*v)));
        }
        // The recipe's warnings are the same at every point: shown once.
        let warn = plans.is_empty();
        let plan = crate::plan_of(&recipe, &registry, &args.overrides, None, warn, &opened)?;
        plans.push(plan);
    }
    let dir = &args.output;
    let points_dir = dir.join("points");
    fs::create_dir_all(&points_dir)
        .with_context(|| format!("creating {}", points_dir.display()))?;
    remove_scratch(dir)?;
    let mut results: Vec<Value> = match fs::read_to_string(dir.join("results.json")) {
        // Points of another grid run into the same folder are kept as they are.
        Ok(text) => serde_json::from_str::<Vec<Value>>(&text)
            .with_context(|| format!("reading {}", dir.join("results.json").display()))?,
        Err(_) => Vec::new(),
    };
    // The built-in scorer reads each merge from memory when only the best model is
    // kept and the merge fits, in its stored type and in f32, in the memory available.
    let in_memory = eval_cmd.is_none()
        && !args.keep_all
        && !args.to_disk
        && plans.first().is_some_and(fits_in_memory);
    // The built-in scorer's data, read (and text tokenized) at the first point scored.
    let mut data: Option<Vec<reefknot_eval::Documents>> = None;
    let header: Vec<String> = grid.iter().map(|(n, _)| format!("{n:>10}")).collect();
    if !quiet {
        outln!(
            "{} points, {} scored already; scores from {} ({} is better){}",
            all.len(),
            all.iter()
                .filter(|p| results.iter().any(|r| same_point(r, p)))
                .count(),
            scorer,
            if maximize { "higher" } else { "lower" },
            if in_memory {
                "; merges scored in memory, the best written at the end"
            } else {
                ""
            }
        );
        outln!("{}  {:>12}  {:>8}", header.join("  "), "score", "seconds");
    }
    let row = |point: &Point, score: f64, seconds: &str| {
        let cells: Vec<String> = point.iter().map(|(_, v)| format!("{v:>10}")).collect();
        format!("{}  {score:>12.6}  {seconds:>8}", cells.join("  "))
    };
    for (point, plan) in all.iter().zip(&plans) {
        if let Some(r) = results.iter().find(|r| same_point(r, point)) {
            if !quiet {
                outln!(
                    "{}",
                    row(point, r["score"].as_f64().unwrap_or(f64::NAN), "(done)")
                );
            }
            continue;
        }
        let model = points_dir.join(slug(point));
        let started = Instant::now();
        let opts = MergeOptions {
            threads: args.threads,
            // A point merged before the sweep was interrupted, but not scored.
            force: true,
            ..MergeOptions::default()
        };
        let (score, losses, written) = match &eval_cmd {
            Some(cmd) => {
                reefknot_engine::merge(plan, &model, &opts, &crate::bar(quiet, "merging"))?;
                (score_with_command(cmd, point, &model)?, None, true)
            }
            None => {
                // In memory, the non-weight files (config.json, the tokenizer) are in a
                // scratch folder until the point is scored; the weights never touch
                // the disk.
                let scratch;
                let mut m = if in_memory {
                    scratch = tempfile::Builder::new()
                        .prefix(SCRATCH)
                        .tempdir_in(dir)
                        .with_context(|| format!("creating a folder in {}", dir.display()))?;
                    let merged = reefknot_engine::merge_to_memory(
                        plan,
                        scratch.path(),
                        &opts,
                        &crate::bar(quiet, "merging"),
                    )?;
                    let tensors = merged
                        .into_iter()
                        .map(|t| {
                            let stored = reefknot_eval::Stored {
                                dtype: t.dtype,
                                shape: t.shape,
                                bytes: t.bytes,
                            };
                            (t.name, stored)
                        })
                        .collect();
                    reefknot_eval::Model::from_memory(scratch.path(), tensors)
                        .map_err(crate::eval::failure)?
                } else {
                    reefknot_engine::merge(plan, &model, &opts, &crate::bar(quiet, "merging"))?;
                    crate::eval::load(&model)?
                };
                let context = crate::eval::context_for(&m, context)?;
                // The data once: every point's output has the same tokenizer.
                if data.is_none() {
                    data = Some(crate::eval::read_data(&m, &eval_data)?);
                }
                let docs = data.as_deref().expect("read above");
                let scores = crate::eval::score_documents(&mut m, docs, context, quiet)?;
                let losses: serde_json::Map<String, Value> = scores
                    .iter()
                    .map(|s| (s.path.display().to_string(), json!(s.score.loss())))
                    .collect();
                (
                    crate::eval::mean_loss(&scores),
                    Some(Value::Object(losses)),
                    !in_memory,
                )
            }
        };
        let seconds = started.elapsed().as_secs_f64();
        let mut entry = result_json(point, score, seconds, written.then_some(model.as_path()));
        if let Some(losses) = losses {
            entry["losses"] = losses;
        }
        results.push(entry);
        if !args.keep_all {
            drop_all_but_the_best(&mut results, &all, maximize)?;
        }
        write_results(dir, &grid, &results)?;
        if !quiet {
            outln!("{}", row(point, score, &format!("{seconds:.2}")));
        }
    }
    // Results in grid order, whatever order they were scored in (other grids' after).
    let position = |r: &Value| all.iter().position(|p| same_point(r, p));
    results.sort_by_key(|r| position(r).unwrap_or(usize::MAX));
    let best = best_of(&results, &all, maximize);
    let Some((best, score)) = best else {
        return Ok(());
    };
    let best_at = all
        .iter()
        .position(|p| same_point(&results[best], p))
        .expect("a result of the grid");
    let best_slug = slug(&all[best_at]);
    // A best point scored in memory (or whose folder was removed) is merged now.
    let best_model = points_dir.join(&best_slug);
    if !best_model.exists() {
        let opts = MergeOptions {
            threads: args.threads,
            force: true,
            ..MergeOptions::default()
        };
        reefknot_engine::merge(
            &plans[best_at],
            &best_model,
            &opts,
            &crate::bar(quiet, "writing the best"),
        )?;
        results[best]["model"] = json!(best_model.display().to_string());
    }
    if !args.keep_all {
        for r in &mut results {
            let Some(model) = r["model"].as_str().map(PathBuf::from) else {
                continue;
            };
            if model.file_name().and_then(|n| n.to_str()) != Some(best_slug.as_str()) {
                if model.exists() {
                    fs::remove_dir_all(&model)
                        .with_context(|| format!("removing {}", model.display()))?;
                }
                r["model"] = Value::Null;
            }
        }
    }
    write_results(dir, &grid, &results)?;
    if let Some(path) = &args.plot {
        let scored: Vec<crate::plot::Scored> = all
            .iter()
            .filter_map(|p| {
                let r = results.iter().find(|r| same_point(r, p))?;
                Some((p.clone(), r["score"].as_f64()?))
            })
            .collect();
        let at = scored
            .iter()
            .position(|(p, _)| slug(p) == best_slug)
            .unwrap_or(0);
        crate::plot::draw_sweep(path, &scored, at)
            .map_err(|e| Failure::from(anyhow::anyhow!("drawing {}: {e}", path.display())))?;
    }
    if !quiet {
        outln!(
            "best: {best_slug} (score {score}), model in {}; results in {} and {}",
            points_dir.join(&best_slug).display(),
            dir.join("results.csv").display(),
            dir.join("results.json").display()
        );
    }
    Ok(())
}

/// The prefix of the folders holding a point's non-weight files while it is scored
/// from memory.
const SCRATCH: &str = ".scoring-";

/// Removes what a sweep killed while scoring from memory left in `dir`.
fn remove_scratch(dir: &Path) -> anyhow::Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let leftover = entry.file_name().to_string_lossy().starts_with(SCRATCH);
        if leftover && entry.file_type().is_ok_and(|t| t.is_dir()) {
            fs::remove_dir_all(entry.path())
                .with_context(|| format!("removing {}", entry.path().display()))?;
        }
    }
    Ok(())
}

//! `reefknot`: merge fine-tuned model checkpoints from a recipe.
//!
//! Exit codes: 0 success, 1 the merge failed, 2 a usage or recipe error.

/// `print!` for the program's output: a closed pipe (`reefknot ops | head -1`) ends
/// the program quietly with success, as it ends `cat`, instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => { $crate::emit(format_args!($($arg)*)) };
}

/// `println!` for the program's output, as [`out!`].
macro_rules! outln {
    ($($arg:tt)*) => { $crate::emit(format_args!("{}\n", format_args!($($arg)*))) };
}

mod analyze;
mod demo;
mod eval;
mod ops;
mod plot;
mod plugin_cmd;
mod plugins;
mod sweep;
mod template;
mod watchdog;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args as ClapArgs, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reefknot_engine::{MergeOptions, Plan, PlanOptions, Progress};
use reefknot_recipe::Recipe;

/// The examples and exit codes `reefknot --help` ends with.
const HELP_EXAMPLES: &str = "\
Examples:
  reefknot demo                                  compare merges on a synthetic family
  reefknot check recipe.yaml                     validate everything, print the plan
  reefknot check recipe.yaml --scan --strict     also read the tensors; warnings fail
  reefknot merge recipe.yaml -o merged           run the merge
  reefknot check recipe.yaml --json > plan.json  the plan as data...
  reefknot merge --plan plan.json -o merged      ...run as it is
  reefknot eval merged --data held_out.txt       held-out loss of a model folder
  reefknot ops dare                              an operator's documentation

Exit codes:
  0  success
  1  the inputs or the output failed: an unreadable or inconsistent checkpoint, NaN
     or infinite values, an operator's error, an output that cannot be written
  2  a usage or recipe error: no tensor data was read and nothing was written
  128+N  interrupted by signal N (the partial output is removed)

Environment:
  REEFKNOT_LOG, RUST_LOG   log filter, e.g. `info` or `reefknot_engine=debug`
  REEFKNOT_PLUGIN_PATH     folders of plugin libraries, `:`-separated
  REEFKNOT_SIMD            cap the vector instructions: portable, avx2 or avx512";

#[derive(Parser)]
#[command(
    name = "reefknot",
    version,
    about = "Merge fine-tuned model checkpoints: TIES, DARE and Fisher merging as a typed, composable language",
    after_help = "Run `reefknot demo` to see merges compared on a synthetic family, `reefknot ops` for the operators.",
    after_long_help = HELP_EXAMPLES
)]
struct Cli {
    /// More log lines on stderr: -v info, -vv debug, -vvv trace (REEFKNOT_LOG or
    /// RUST_LOG, e.g. `reefknot_engine=debug`, choose finely).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Print nothing but errors and warnings: no progress bar, no summary of a merge, no
    /// plan from `check` (its exit code says whether the recipe is valid), log lines
    /// of errors only (unless -v asks for more). Output asked for (`--json`, `ops`,
    /// `analyze`, `demo`, `completions`) is still printed.
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the merge a recipe describes and write the merged model.
    Merge(MergeArgs),
    /// Validate a recipe without reading tensor data and print the plan (as JSON with
    /// --json, for `merge --plan`).
    Check(CheckArgs),
    /// Measure the recipe's task vectors without merging: norms, how much of each one's
    /// energy its largest entries hold, how pairs agree in sign, what a TIES election
    /// at the recipe's density discards, and the density that keeps 90 % of the energy,
    /// per layer group and for the whole model.
    Analyze(analyze::AnalyzeArgs),
    /// The held-out loss (nats per token, and perplexity) of a Llama, Mistral, Qwen2 or
    /// GPT-2 model folder on token files or text, on the CPU, as transformers computes it.
    Eval(eval::EvalArgs),
    /// Merge a grid of values of the recipe's `$variables` (`--grid density=0.1,0.2`),
    /// score each merged model with a command of yours, and keep the best: a table as
    /// points finish, results.csv and results.json, and a sweep run again resumes.
    Sweep(sweep::SweepArgs),
    /// Print the reefknot recipe that a mergekit configuration (a YAML file with
    /// `merge_method:`) runs as; `merge` and `check` take the configuration itself too.
    /// Its paths are the configuration's: save it next to the configuration.
    Convert {
        /// The mergekit configuration.
        config: PathBuf,
        /// Fail (exit 2) on a warning: something in the configuration mergekit ignores
        /// (an unknown key, a parameter the method does not read).
        #[arg(long)]
        strict: bool,
    },
    /// List the operators, or show one operator's documentation.
    Ops {
        /// An operator name (or alias).
        name: Option<String>,
        /// Print the operator reference as Markdown (docs/operators.md is this output).
        #[arg(long, conflicts_with = "name")]
        markdown: bool,
        #[command(flatten)]
        plugins: plugins::PluginArgs,
    },
    /// Merge a synthetic family with several methods and compare how each keeps the tasks.
    Demo(demo::DemoArgs),
    /// Work on operator plugins: check a library, start a new one.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Print a shell completion script, e.g. `reefknot completions bash >
    /// ~/.local/share/bash-completion/completions/reefknot`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// The watchdog `merge` starts: removes the partial output if the merge dies.
    #[command(hide = true)]
    WatchOutputs,
    /// The helper process `merge --isolate-plugins` starts: serves one library's calls.
    #[command(hide = true)]
    PluginHost {
        /// The library.
        library: PathBuf,
        /// Its SHA-256, as the merge loaded it.
        sha256: String,
        /// The shared file of the calls.
        shm: PathBuf,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Run every operator of a plugin library (C or Rust) on synthetic tensors, each
    /// signature, and check what reefknot relies on: calls succeed, the same bits from
    /// run to run and (elementwise operators) in every chunking, every output element
    /// written, finite values, elected signs of ±1. Exit 1 if a check fails.
    Test {
        /// The plugin library (`libNAME.so`, `.dylib`, `.dll`).
        library: PathBuf,
        /// The longest one check may take, in seconds (a plugin that hangs fails).
        #[arg(long, value_name = "SECONDS", default_value_t = 60.0)]
        timeout: f64,
    },
    /// Write a new plugin project that builds and passes `reefknot plugin test` as it
    /// is: one operator to start from (`NAME::shrink`), a test, and this reefknot's SDK
    /// vendored (it builds offline).
    New {
        /// The plugin's name: the namespace of its operators (an identifier).
        name: String,
        /// The language of the project.
        #[arg(long, value_enum, default_value = "rust")]
        lang: template::Lang,
        /// The folder to write (default ./NAME; must not exist).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(ClapArgs, Clone)]
pub(crate) struct Overrides {
    /// Seed for random operators (overrides the recipe's `seed`).
    #[arg(long)]
    seed: Option<u64>,
    /// Output dtype: bfloat16, float16 or float32 (overrides the recipe's `dtype`).
    #[arg(long)]
    dtype: Option<String>,
    /// Fail (exit 2) on a warning: a part of the recipe that has no effect on these
    /// models (an override that selects nothing, a `params` entry no expression reads).
    #[arg(long)]
    strict: bool,
    /// Set a `$variable` of the recipe's expressions on every tensor and model, above
    /// the recipe's own values (a model's, an override's, the recipe's): e.g.
    /// `--set density=0.3`. The value is a number, `true`/`false`, or a word; repeat
    /// for more variables. The output's card and metadata record it.
    #[arg(long = "set", value_name = "NAME=VALUE", value_parser = parse_set)]
    set: Vec<(String, reefknot_recipe::ParamValue)>,
    #[command(flatten)]
    plugins: plugins::PluginArgs,
}

/// A `$variable`'s name as given on the command line (with or without its `$`).
pub(crate) fn variable_name(name: &str) -> Result<String, String> {
    let name = name.trim().trim_start_matches('$');
    let ident = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ident {
        Ok(name.to_string())
    } else {
        Err(format!(
            "`{name}` is not a variable name (letters, digits, _)"
        ))
    }
}

/// `NAME=VALUE` for `--set`: an identifier, and a number, a boolean or a word.
fn parse_set(s: &str) -> Result<(String, reefknot_recipe::ParamValue), String> {
    use reefknot_recipe::{Number, ParamValue};
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not NAME=VALUE, e.g. density=0.3"))?;
    let name = variable_name(name)?;
    let value = value.trim();
    let parsed = match value {
        "true" => ParamValue::Bool(true),
        "false" => ParamValue::Bool(false),
        v => match v.parse::<f64>() {
            Ok(x) if x.is_finite() => ParamValue::Number(Number::Scalar(x)),
            Ok(_) => return Err(format!("`{v}` is not a finite number")),
            Err(_) if !v.is_empty() => ParamValue::Text(v.to_string()),
            Err(_) => return Err(format!("no value for `{name}`")),
        },
    };
    Ok((name, parsed))
}

#[derive(ClapArgs)]
struct CheckArgs {
    /// The recipe (YAML).
    recipe: PathBuf,
    /// Print the whole plan as JSON (every input with its fingerprint, every output
    /// tensor with its producer and resolved arguments); `reefknot merge --plan` runs it.
    #[arg(long)]
    json: bool,
    /// Also read every floating-point tensor the merge reads and report NaN and
    /// infinite values (exit 1 if a merged tensor holds any, as the merge would).
    #[arg(long)]
    scan: bool,
    /// With --scan: report NaN and infinite values without failing (as
    /// `merge --allow-nonfinite` writes them).
    #[arg(long, requires = "scan")]
    allow_nonfinite: bool,
    /// Maximum size of an output shard in the plan, e.g. 5GB (default: the recipe's, else 5GB).
    #[arg(long, value_parser = parse_size)]
    shard_size: Option<u64>,
    #[command(flatten)]
    overrides: Overrides,
}

#[derive(ClapArgs)]
struct MergeArgs {
    /// The recipe (YAML).
    #[arg(required_unless_present = "plan")]
    recipe: Option<PathBuf>,
    /// Run a plan saved by `reefknot check --json` instead of a recipe. It refuses to run
    /// when an input file changed since the plan was made.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["recipe", "seed", "dtype", "set", "shard_size"])]
    plan: Option<PathBuf>,
    /// The output folder (must not exist, unless --force).
    #[arg(short, long)]
    output: PathBuf,
    #[command(flatten)]
    overrides: Overrides,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Replace the output folder if it exists.
    #[arg(long)]
    force: bool,
    /// Sync the output to disk before it is renamed into place, so that it survives a
    /// power loss (by default it is complete in the page cache, as a copied file is,
    /// and the system writes it back in its own time).
    #[arg(long)]
    sync: bool,
    /// Maximum size of an output shard, e.g. 5GB, 500MB (default 5GB).
    #[arg(long, value_parser = parse_size)]
    shard_size: Option<u64>,
    /// Elements per chunk of work (advanced; results do not depend on it).
    #[arg(long, default_value_t = reefknot_engine::DEFAULT_CHUNK, hide = true)]
    chunk: usize,
    /// Write NaN and infinite values instead of failing on them: in the inputs, made
    /// by a stage, or a merged value the output dtype cannot hold. A statistic one would
    /// spread over a whole tensor (an L1 rescale, a Fisher mean) still refuses it.
    #[arg(long)]
    allow_nonfinite: bool,
    /// Print a summary of the merge as JSON on stdout (no progress bar): the output,
    /// its files, tensor and parameter counts, bytes read and seconds.
    #[arg(long)]
    json: bool,
    /// Run plugin operators in helper processes (one per worker thread and library)
    /// over shared memory: a crash, a hang or memory corruption inside a plugin then
    /// fails the merge with an error instead of ending the process. Calls cost a copy
    /// in and out and a round trip each.
    #[arg(long)]
    isolate_plugins: bool,
    /// With --isolate-plugins: the longest one plugin call may take, in seconds, before
    /// its helper is stopped and the merge fails.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 600.0,
        requires = "isolate_plugins"
    )]
    plugin_timeout: f64,
}

/// A failure with its exit code; rendered with miette when it is a diagnostic.
pub(crate) enum Failure {
    Engine(reefknot_engine::Error),
    Other { code: i32, error: anyhow::Error },
}

impl From<reefknot_engine::Error> for Failure {
    fn from(e: reefknot_engine::Error) -> Self {
        Failure::Engine(e)
    }
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Failure::Other { code: 1, error }
    }
}

pub(crate) fn usage(error: anyhow::Error) -> Failure {
    Failure::Other { code: 2, error }
}

fn parse_size(s: &str) -> Result<u64, String> {
    reefknot_recipe::parse_size(s).ok_or_else(|| {
        format!(
            "`{s}` is not a size: write bytes (5000000000) or a size with a unit, such as \
             5GB or 2GiB (KB, MB, GB, TB: powers of 1000; KiB, MiB, GiB, TiB: of 1024)"
        )
    })
}

fn load_plan(
    recipe: &std::path::Path,
    overrides: &Overrides,
    shard_size: Option<u64>,
    isolation: Option<reefknot_plugins::Isolation>,
) -> Result<Plan, Failure> {
    let opened = reefknot_engine::Opened::default();
    load_plan_and_recipe(recipe, overrides, shard_size, isolation, true, &opened)
        .map(|(plan, _)| plan)
}

/// As [`load_plan`], with the recipe the plan was made of; `warn`: print the recipe's
/// warnings. Checkpoints are taken from `opened` where it holds them, and those opened
/// are kept there.
pub(crate) fn load_plan_and_recipe(
    recipe: &std::path::Path,
    overrides: &Overrides,
    shard_size: Option<u64>,
    isolation: Option<reefknot_plugins::Isolation>,
    warn: bool,
    opened: &reefknot_engine::Opened,
) -> Result<(Plan, Recipe), Failure> {
    let recipe = read_recipe(recipe, overrides)?;
    let registry = recipe_registry(&recipe, overrides, isolation)?;
    let plan = plan_of(&recipe, &registry, overrides, shard_size, warn, opened)?;
    Ok((plan, recipe))
}

/// The recipe (or mergekit configuration) at `path`, with the command line's `--set`
/// values.
pub(crate) fn read_recipe(
    path: &std::path::Path,
    overrides: &Overrides,
) -> Result<Recipe, Failure> {
    let mut recipe = Recipe::load(path).map_err(reefknot_engine::Error::from)?;
    for (name, value) in &overrides.set {
        recipe.set_param(name, value.clone());
    }
    Ok(recipe)
}

/// The operators `recipe` can use: the built-ins and the plugins its expressions name
/// (`--plugin`, the recipe's `plugins:`, `REEFKNOT_PLUGIN_PATH`).
pub(crate) fn recipe_registry(
    recipe: &Recipe,
    overrides: &Overrides,
    isolation: Option<reefknot_plugins::Isolation>,
) -> Result<reefknot_ops::Registry, Failure> {
    // Loading a plugin runs its code: not before the recipe's expressions parse.
    let namespaces = reefknot_engine::parse_exprs(recipe)?;
    let dir = recipe
        .path
        .as_deref()
        .and_then(std::path::Path::parent)
        .map(|d| {
            if d.as_os_str().is_empty() {
                std::path::Path::new(".")
            } else {
                d
            }
        });
    let wanted: Vec<&str> = namespaces.iter().map(String::as_str).collect();
    plugins::registry(&overrides.plugins, &recipe.plugins, dir, &wanted, isolation)
}

/// The plan of `recipe` over `registry`'s operators, with the command line's seed,
/// dtype and `shard_size`; `warn`: print the recipe's warnings (`--strict` makes them
/// errors either way).
pub(crate) fn plan_of(
    recipe: &Recipe,
    registry: &reefknot_ops::Registry,
    overrides: &Overrides,
    shard_size: Option<u64>,
    warn: bool,
    opened: &reefknot_engine::Opened,
) -> Result<Plan, Failure> {
    let opts = PlanOptions {
        seed: overrides.seed,
        dtype: overrides.dtype.clone(),
        shard_size,
    };
    let plan = Plan::build_with(recipe, registry, &opts, opened)?;
    for w in plan.warnings().iter().filter(|_| warn) {
        eprintln!("{:?}", miette::Report::new(reefknot_lang::Clipped::new(w)));
    }
    if overrides.strict && !plan.warnings().is_empty() {
        let n = plan.warnings().len();
        return Err(usage(anyhow::anyhow!(
            "{n} warning{} about the recipe, and --strict makes them errors",
            if n == 1 { "" } else { "s" }
        )));
    }
    Ok(plan)
}

/// Reads a saved plan and readies it against the operators of `--plugin` and
/// `REEFKNOT_PLUGIN_PATH`.
fn read_plan(
    path: &std::path::Path,
    overrides: &Overrides,
    isolation: Option<reefknot_plugins::Isolation>,
) -> Result<Plan, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| usage(anyhow::Error::new(e).context(format!("reading {}", path.display()))))?;
    let data = reefknot_engine::MergePlan::from_json(&text).map_err(|e| {
        usage(anyhow::Error::new(e).context(format!("reading the plan {}", path.display())))
    })?;
    let registry = plugins::registry(&overrides.plugins, &[], None, &data.namespaces(), isolation)?;
    Ok(Plan::load(data, &registry)?)
}

/// The terminal progress bar (hidden when stderr is not a terminal or with --quiet).
pub(crate) struct Bar(ProgressBar);

impl Progress for Bar {
    fn start(&self, total: u64) {
        self.0.set_length(total);
    }
    fn advance(&self, n: u64) {
        self.0.inc(n);
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

/// A progress bar of parameters, `verb` ("merging", "measuring") at its start.
pub(crate) fn bar(quiet: bool, verb: &str) -> Bar {
    let target = if quiet {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    };
    let pb = ProgressBar::with_draw_target(Some(0), target);
    pb.set_style(
        ProgressStyle::with_template(
            &format!(
                "{{spinner}} {verb} [{{bar:40}}] {{percent:>3}}%  {{human_pos}}/{{human_len}} parameters  {{elapsed}} (eta {{eta}})"
            ),
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    Bar(pb)
}

/// The helper processes of `--isolate-plugins`: this binary's `plugin-host`.
fn isolation(args: &MergeArgs) -> Result<Option<reefknot_plugins::Isolation>, Failure> {
    if !args.isolate_plugins {
        return Ok(None);
    }
    #[cfg(unix)]
    {
        if !(args.plugin_timeout.is_finite() && args.plugin_timeout > 0.0) {
            return Err(usage(anyhow::anyhow!(
                "--plugin-timeout {} is not a number of seconds above 0",
                args.plugin_timeout
            )));
        }
        let program = std::env::current_exe().map_err(|e| {
            Failure::from(
                anyhow::Error::new(e).context("finding this program for --isolate-plugins"),
            )
        })?;
        Ok(Some(reefknot_plugins::Isolation {
            program,
            args: vec!["plugin-host".to_string()],
            timeout: std::time::Duration::from_secs_f64(args.plugin_timeout),
        }))
    }
    #[cfg(not(unix))]
    Err(usage(anyhow::anyhow!(
        "--isolate-plugins is not supported on this platform yet"
    )))
}

fn merge(args: &MergeArgs, quiet: bool) -> Result<(), Failure> {
    // Before any output exists: a merge that dies outright leaves nothing behind.
    watchdog::start();
    let isolation = isolation(args)?;
    let plan = match (&args.plan, &args.recipe) {
        (Some(plan), _) => read_plan(plan, &args.overrides, isolation)?,
        (None, Some(recipe)) => load_plan(recipe, &args.overrides, args.shard_size, isolation)?,
        (None, None) => unreachable!("clap requires a recipe or --plan"),
    };
    let opts = MergeOptions {
        threads: args.threads,
        chunk: args.chunk,
        force: args.force,
        sync: args.sync,
        allow_nonfinite: args.allow_nonfinite,
    };
    let report = reefknot_engine::merge(
        &plan,
        &args.output,
        &opts,
        &bar(quiet || args.json, "merging"),
    )?;
    if args.json {
        let summary = serde_json::json!({
            "output": report.output.display().to_string(),
            "files": report.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
            "tensors": report.tensors,
            "parameters": report.elements,
            "input_bytes": report.input_bytes,
            "seconds": report.seconds,
        });
        outln!("{summary:#}");
    } else if !quiet {
        let files: Vec<String> = report
            .files
            .iter()
            .map(|f| f.display().to_string())
            .collect();
        outln!(
            "merged {} tensors ({} parameters) into {} in {:.2} s ({})",
            report.tensors,
            report.elements,
            report.output.display(),
            report.seconds,
            files.join(", ")
        );
    }
    Ok(())
}

fn convert(config: &std::path::Path, strict: bool) -> Result<(), Failure> {
    let recipe = Recipe::load(config).map_err(reefknot_engine::Error::from)?;
    if !recipe.from_mergekit {
        return Err(usage(anyhow::anyhow!(
            "{} is not a mergekit configuration (it has no `merge_method:`); a reefknot \
             recipe needs no conversion",
            config.display()
        )));
    }
    for w in &recipe.warnings {
        eprintln!("{:?}", miette::Report::new(reefknot_lang::Clipped::new(w)));
    }
    if strict && !recipe.warnings.is_empty() {
        let n = recipe.warnings.len();
        return Err(usage(anyhow::anyhow!(
            "{n} warning{} about the configuration, and --strict makes them errors",
            if n == 1 { "" } else { "s" }
        )));
    }
    out!("{}", recipe.source);
    Ok(())
}

fn check(args: &CheckArgs, quiet: bool) -> Result<(), Failure> {
    let plan = load_plan(&args.recipe, &args.overrides, args.shard_size, None)?;
    if args.json {
        out!("{}", plan.data().to_json());
    } else if !quiet {
        out!("{}", plan.describe());
    }
    if args.scan {
        let found = reefknot_engine::scan_nonfinite(&plan);
        let merged = found.iter().filter(|f| f.merged).count();
        if !found.is_empty() {
            // On stderr: with --json, stdout is the plan alone.
            eprintln!("\nNaN and infinite values in the inputs:");
            for f in &found {
                let mut kinds = Vec::new();
                if f.nan > 0 {
                    kinds.push(format!("{} NaN", f.nan));
                }
                if f.inf > 0 {
                    kinds.push(format!("{} infinite", f.inf));
                }
                eprintln!(
                    "  {}: `{}`: {}, the first at element {}{}",
                    f.input,
                    f.tensor,
                    kinds.join(", "),
                    f.first,
                    if f.merged { "" } else { " (copied as it is)" }
                );
            }
        }
        if merged > 0 && !args.allow_nonfinite {
            return Err(Failure::Other {
                code: 1,
                error: anyhow::anyhow!(
                    "{merged} {} that the merge reads {} NaN or infinite values: the merge \
                     would refuse them (repair the inputs, or merge with --allow-nonfinite \
                     to write them)",
                    if merged == 1 { "tensor" } else { "tensors" },
                    if merged == 1 { "holds" } else { "hold" }
                ),
            });
        }
        if !args.json && !quiet {
            outln!(
                "\nscanned: {}",
                match (found.is_empty(), merged) {
                    (true, _) => "no NaN or infinite values",
                    (false, 0) =>
                        "only copied tensors hold NaN or infinite values (copied as they are)",
                    _ => "tensors the merge reads hold NaN or infinite values; merge --allow-nonfinite writes them",
                }
            );
        }
    }
    if !args.json && !quiet {
        outln!("\nok: the recipe is valid");
    }
    Ok(())
}

/// Writes program output to stdout (see [`out!`]). A reader that went away ends the
/// program with success; any other write error with exit 1.
pub(crate) fn emit(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("Error: cannot write the output: {e}");
        std::process::exit(1);
    }
}

/// On SIGINT, SIGTERM or SIGHUP, removes the partial output of a merge in progress
/// (and its lock) and exits with 128 + the signal's number, as a shell reports it.
fn clean_up_on_signals() {
    #[cfg(unix)]
    {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        match signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) {
            Ok(mut signals) => {
                std::thread::spawn(move || {
                    if let Some(signal) = signals.forever().next() {
                        if reefknot_engine::abandon_outputs() > 0 {
                            eprintln!("interrupted: the partial output was removed");
                        } else {
                            eprintln!("interrupted");
                        }
                        std::process::exit(128 + signal);
                    }
                });
            }
            Err(e) => tracing::warn!("cannot watch for interrupts: {e}"),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Diagnostics wrap to the terminal; piped into a file or a test, lines stay whole.
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = miette::set_hook(Box::new(move |_| {
        Box::new(
            miette::MietteHandlerOpts::new()
                .wrap_lines(terminal)
                .build(),
        )
    }));
    // REEFKNOT_LOG, else RUST_LOG, else -v's level; colour only on a terminal.
    let level = match (cli.quiet, cli.verbose) {
        (true, 0) => "error",
        (_, v) => ["warn", "info", "debug", "trace"][usize::from(v.min(3))],
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("REEFKNOT_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(terminal)
        .without_time()
        .init();
    if let Command::WatchOutputs = cli.command {
        // Not a merge: it outlives the interrupts that end one.
        watchdog::run();
        return ExitCode::SUCCESS;
    }
    #[cfg(unix)]
    if let Command::PluginHost {
        library,
        sha256,
        shm,
    } = &cli.command
    {
        // Its standard output is the reply channel: nothing else may be written there.
        return match reefknot_plugins::serve_isolated(library, sha256, shm) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("Error: the plugin helper for {}: {e}", library.display());
                ExitCode::from(1)
            }
        };
    }
    clean_up_on_signals();
    let result = match &cli.command {
        Command::Merge(args) => merge(args, cli.quiet),
        Command::Check(args) => check(args, cli.quiet),
        Command::Convert { config, strict } => convert(config, *strict),
        Command::Ops {
            name,
            markdown,
            plugins,
        } => {
            let wanted: Vec<&str> = name
                .as_deref()
                .and_then(|n| n.split_once("::"))
                .map(|(ns, _)| ns)
                .into_iter()
                .collect();
            plugins::registry(plugins, &[], None, &wanted, None)
                .and_then(|registry| ops::run(&registry, name.as_deref(), *markdown))
        }
        Command::Demo(args) => demo::run(args),
        Command::Analyze(args) => analyze::run(args, cli.quiet),
        Command::Eval(args) => eval::run(args, cli.quiet),
        Command::Sweep(args) => sweep::run(args, cli.quiet),
        Command::Plugin { command } => match command {
            PluginCommand::Test { library, timeout } => {
                if timeout.is_finite() && *timeout > 0.0 {
                    plugin_cmd::test(library, std::time::Duration::from_secs_f64(*timeout))
                } else {
                    Err(usage(anyhow::anyhow!(
                        "--timeout {timeout} is not a number of seconds above 0"
                    )))
                }
            }
            PluginCommand::New { name, lang, dir } => template::new(name, *lang, dir.as_deref()),
        },
        Command::WatchOutputs => unreachable!("run above"),
        #[cfg(unix)]
        Command::PluginHost { .. } => unreachable!("run above"),
        #[cfg(not(unix))]
        Command::PluginHost { .. } => Err(usage(anyhow::anyhow!(
            "plugin isolation is not supported on this platform yet"
        ))),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut command, "reefknot", &mut script);
            out!("{}", String::from_utf8_lossy(&script));
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Engine(e)) => {
            let code = e.exit_code();
            // Long source lines are cut around the caret (the renderer would print
            // them whole, and panic past column 65 535).
            eprintln!("{:?}", miette::Report::new(reefknot_lang::Clipped::new(&e)));
            ExitCode::from(code as u8)
        }
        Err(Failure::Other { code, error }) => {
            eprintln!("Error: {error:#}");
            ExitCode::from(code as u8)
        }
    }
}

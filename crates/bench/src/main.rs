//! `reefknot-bench`: how fast and in how little memory reefknot merges a 0.5 B-parameter
//! family, compared with the I/O floor of this machine and with mergekit.
//!
//! It generates the synthetic benchmark family once (a bf16 Llama-shaped base and three
//! fine-tunes, [`reefknot_synth::FamilySpec::bench`]), runs the release `reefknot`
//! binary as a child process for TIES, DARE-TIES and task arithmetic, measures the floor
//! (reading every input once and writing one output), optionally runs mergekit on the
//! same merges, a thread sweep and merges under a cgroup memory limit, then prints a
//! table and writes the results as JSON. See `docs/benchmark.md`.

mod cgroup;
mod family;
mod floor;
mod measure;
mod mergekit;
mod methods;
mod report;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Parser;
use serde::{Deserialize, Serialize};

use crate::cgroup::{CgroupStats, MemoryCgroup};
use crate::floor::Floor;
use crate::measure::{Job, Measured};
use crate::methods::Method;

#[derive(Parser, Debug)]
#[command(
    name = "reefknot-bench",
    about = "Benchmark reefknot against the I/O floor and mergekit on a synthetic 0.5 B-parameter family",
    after_help = "Build first: `cargo build --release --workspace`. Details: docs/benchmark.md."
)]
struct Cli {
    /// Working folder: the family (family-xN/), recipes, configs, logs, outputs
    /// and the result files (results-xN.json, mergekit.json).
    #[arg(long, default_value = "scratch/bench")]
    dir: PathBuf,
    /// Family size: 1 is FamilySpec::bench() (4.3 GB), 2 doubles the layers and the
    /// vocabulary (twice the parameters). A list such as 1,2 runs each in turn.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    scale: Vec<usize>,
    /// Also run mergekit (`mergekit-yaml`) on the same merges; results are cached in
    /// DIR/mergekit.json and reused while the version and configs match.
    #[arg(long)]
    mergekit: bool,
    /// With --mergekit: measure again even when a cached result matches.
    #[arg(long)]
    rerun_mergekit: bool,
    /// The mergekit command (a name on PATH or a path).
    #[arg(long, default_value = "mergekit-yaml")]
    mergekit_cmd: String,
    /// mergekit's compute dtype (`dtype:` in its config). The default, float32 with a
    /// bfloat16 output, is the configuration that gives reefknot's numbers (as the golden
    /// tests check); bfloat16 computes in bfloat16, faster and less exactly.
    #[arg(long, default_value = "float32", value_parser = ["bfloat16", "float16", "float32"])]
    mergekit_dtype: String,
    /// Also run each merge with --threads 1 and with --threads N, N the cores, interleaved,
    /// and report the speed-up.
    #[arg(long)]
    threads_sweep: bool,
    /// Also run each merge inside a cgroup v1 memory group with this limit, e.g. 1GiB
    /// (reefknot; and mergekit with --mergekit).
    #[arg(long, value_parser = parse_size)]
    memory_limit: Option<u64>,
    /// Create the memory cgroups under this folder instead of this process's own
    /// memory cgroup (e.g. a group delegated to a non-root user).
    #[arg(long)]
    cgroup_parent: Option<PathBuf>,
    /// Run only these merges (comma-separated: ties, dare_ties, task_arithmetic, slerp,
    /// della, model_stock).
    #[arg(long, value_delimiter = ',', value_parser = parse_method)]
    only: Option<Vec<Method>>,
    /// Keep the merged outputs (by default each is deleted after it is measured).
    #[arg(long)]
    keep: bool,
    /// Delete the generated family at the end (the result files stay).
    #[arg(long)]
    clean: bool,
    /// The reefknot binary (default: `reefknot` next to this binary, i.e. target/release).
    #[arg(long)]
    reefknot: Option<PathBuf>,
    /// Measure the floor and each reefknot configuration this many times and keep the
    /// fastest (mergekit and memory-limited runs are measured once).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    repeat: u32,
    /// Use the small demo family (4 M parameters) instead: tries the benchmark itself
    /// in seconds; its figures mean nothing.
    #[arg(long)]
    small: bool,
    /// Before each run, wait up to this many seconds for a second in which other
    /// processes keep less than a quarter of a core busy (0: don't wait).
    #[arg(long, default_value_t = 30)]
    wait_quiet: u64,
    /// Memory sampling interval in milliseconds.
    #[arg(long, default_value_t = 5)]
    poll_ms: u64,
    /// Measure durable merges: reefknot with `--sync` (its output synced to disk before
    /// the rename), and a floor whose writes are followed by an `fsync`. mergekit never
    /// syncs, so its times are unchanged.
    #[arg(long)]
    sync: bool,
}

fn parse_method(s: &str) -> Result<Method, String> {
    Method::parse(s)
        .ok_or_else(|| format!("unknown merge `{s}` (use ties, dare_ties, task_arithmetic)"))
}

/// Parses `1GiB`, `512MiB`, `1.5GB`, `1000000` (bytes), as reefknot reads sizes.
fn parse_size(s: &str) -> Result<u64, String> {
    reefknot_recipe::parse_size(s)
        .ok_or_else(|| format!("`{s}` is not a size such as 1GiB or 512MiB"))
}

/// Other work below this many busy cores counts as a quiet machine.
const QUIET_CORES: f64 = 0.25;

/// The machine a measurement was taken on.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Machine {
    /// The CPU model (`/proc/cpuinfo`).
    pub cpu: String,
    /// Logical cores available to the benchmark.
    pub cores: usize,
    /// Total memory in bytes.
    pub mem_total_bytes: u64,
    /// The kernel release.
    pub kernel: String,
    /// Memory management that can disturb the measurements (a DAMON scheme paging out
    /// cold memory, a virtio balloon), as found in `/sys`.
    #[serde(default)]
    pub memory_notes: Vec<String>,
}

impl Machine {
    fn detect() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|l| l.trim_start_matches([' ', '\t', ':']).trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_total_bytes = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024;
        Machine {
            memory_notes: memory_notes(),
            cpu,
            cores: cores(),
            mem_total_bytes,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
        }
    }

    /// "2 × Intel(R) Xeon(R) Processor, 23.5 GiB".
    pub fn describe(&self) -> String {
        format!(
            "{} × {}, {:.1} GiB RAM, Linux {}",
            self.cores,
            self.cpu,
            self.mem_total_bytes as f64 / (1u64 << 30) as f64,
            self.kernel
        )
    }
}

/// Looks for DAMON schemes that page memory out and for a virtio balloon.
fn memory_notes() -> Vec<String> {
    let mut notes = Vec::new();
    let read = |p: &Path| std::fs::read_to_string(p).map(|s| s.trim().to_string());
    let list = |p: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(p)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    let kdamonds = Path::new("/sys/kernel/mm/damon/admin/kdamonds");
    for k in list(kdamonds) {
        if read(&k.join("state")).ok().as_deref() != Some("on") {
            continue;
        }
        let pageout = list(&k.join("contexts"))
            .iter()
            .flat_map(|c| list(&c.join("schemes")))
            .any(|scheme| read(&scheme.join("action")).ok().as_deref() == Some("pageout"));
        if pageout {
            notes.push(
                "a DAMON scheme pages out cold memory, page cache included: inputs stay cached only while in use".into(),
            );
            break;
        }
    }
    if list(Path::new("/sys/bus/virtio/drivers/virtio_balloon"))
        .iter()
        .any(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("virtio"))
        })
    {
        notes.push(
            "a virtio balloon: memory freed while idle may return to the host and be slow to touch again".into(),
        );
    }
    notes
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The reefknot binary measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReefknotInfo {
    /// `reefknot --version`.
    pub version: String,
    /// The commit of the git checkout the binary lives in, read when the benchmark ran
    /// (`+dirty` with local changes to tracked files): not necessarily what the binary
    /// was built from — see `stale`.
    pub checkout: Option<String>,
    /// When the binary was built (its modification time, UTC).
    pub built: Option<String>,
    /// Whether a source file of that checkout (`*.rs`, `*.toml`, `Cargo.lock`,
    /// `*.pest`, outside tests, examples and this benchmark) is newer than the binary,
    /// so that it may not be what the checkout builds.
    pub stale: Option<bool>,
}

/// One measured reefknot configuration (the fastest of `--repeat` runs).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Run {
    /// The merge.
    pub method: Method,
    /// `--threads`, when given (else reefknot's default: one per core).
    pub threads: Option<usize>,
    /// The wall time of every repetition.
    pub walls_s: Vec<f64>,
    /// The fastest repetition (peak memory: the largest over repetitions).
    pub measured: Measured,
    /// Cores kept busy by other work in the second before the fastest repetition.
    pub busy_before: f64,
    /// The 1-minute load average after the first repetition.
    pub load_before: f64,
    /// The size of the merged output folder.
    pub output_bytes: u64,
}

/// A run under a memory limit.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LimitedRun {
    /// "reefknot" or "mergekit".
    pub tool: String,
    /// The merge.
    pub method: Method,
    /// The limit in bytes.
    pub limit_bytes: u64,
    /// The measurement, or why there is none.
    pub measured: Option<Measured>,
    /// The cgroup's counters.
    pub cgroup: Option<CgroupStats>,
    /// Why the run could not be made (no cgroup support, no permission...).
    pub error: Option<String>,
    /// Whether a mergekit result came from the cache.
    pub from_cache: bool,
}

/// Everything one scale of the benchmark measured: the content of `results-x<SCALE>.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Results {
    /// When (UTC).
    pub date: String,
    /// Where.
    pub machine: Machine,
    /// What.
    pub reefknot: ReefknotInfo,
    /// The family's scale.
    pub scale: usize,
    /// The family (`family.json`).
    pub family: serde_json::Value,
    /// Bytes of every input file together.
    pub input_bytes: u64,
    /// Bytes of one bf16 output (the base's weight files).
    pub output_bytes: u64,
    /// Seconds spent generating the family, when it was generated by this run.
    pub generated_s: Option<f64>,
    /// Always "warm": every run starts right after the inputs were read once.
    pub page_cache: String,
    /// The floor.
    pub floor: Floor,
    /// The main reefknot runs (default thread count).
    pub runs: Vec<Run>,
    /// `--threads-sweep`: runs with 1 and with all cores.
    pub threads_sweep: Vec<Run>,
    /// `--memory-limit` runs.
    pub memory_limit: Vec<LimitedRun>,
    /// mergekit measurements (run now or cached).
    pub mergekit: Vec<mergekit::Entry>,
    /// The mergekit version, when mergekit was found.
    pub mergekit_version: Option<String>,
    /// The targets, checked.
    pub targets: Vec<report::Target>,
}

/// Everything a scale's runs share.
struct Ctx<'a> {
    cli: &'a Cli,
    dir: PathBuf,
    reefknot: PathBuf,
    tag: String,
    prepared: family::Prepared,
    recipes: Vec<(Method, PathBuf)>,
    poll: Duration,
}

impl Ctx<'_> {
    fn recipe(&self, m: Method) -> &Path {
        &self
            .recipes
            .iter()
            .find(|(x, _)| *x == m)
            .expect("a recipe per method")
            .1
    }

    fn out_dir(&self, tool: &str, m: Method, tag: &str) -> PathBuf {
        self.dir
            .join("out")
            .join(format!("{tool}-{}-{}{tag}", m.id(), self.tag))
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir
            .join("logs")
            .join(format!("{name}-{}.log", self.tag))
    }

    /// Reads every input once so that the run that follows finds them in the page cache.
    fn warm(&self) -> anyhow::Result<()> {
        floor::read_all(&self.prepared.inputs, cores()).map(|_| ())
    }

    fn reefknot_job(&self, m: Method, threads: Option<usize>, out: &Path, tag: &str) -> Job {
        let mut args: Vec<OsString> = vec![
            "merge".into(),
            self.recipe(m).into(),
            "-o".into(),
            out.into(),
            "--force".into(),
        ];
        if self.cli.sync {
            args.push("--sync".into());
        }
        if let Some(t) = threads {
            args.push("--threads".into());
            args.push(t.to_string().into());
        }
        Job {
            program: self.reefknot.clone(),
            args,
            cwd: None,
            log: self.log(&format!("reefknot-{}{tag}", m.id())),
            cgroup_procs: None,
            follow_children: false,
            poll: self.poll,
        }
    }

    /// Warms the page cache and waits (up to `--wait-quiet`) for the rest of the
    /// machine to go quiet; returns the cores other work kept busy just before.
    fn prepare_run(&self) -> anyhow::Result<f64> {
        self.warm()?;
        let patience = Duration::from_secs(self.cli.wait_quiet);
        let busy = measure::wait_quiet(Duration::from_secs(1), QUIET_CORES, patience);
        if busy >= QUIET_CORES && self.cli.wait_quiet > 0 {
            eprint!("(machine busy: {busy:.2} other cores) ");
        }
        Ok(busy)
    }

    /// Measures reefknot on every `(method, threads)` of `configs`, `--repeat` times,
    /// interleaved (all configurations once, then again...) so that a burst of other
    /// work on the machine does not fall on every repetition of one configuration; keeps
    /// the fastest repetition of each.
    fn run_reefknot(
        &self,
        configs: &[(Method, Option<usize>)],
        tag: &str,
    ) -> anyhow::Result<Vec<Run>> {
        let mut runs: Vec<Option<Run>> = vec![None; configs.len()];
        for rep in 0..self.cli.repeat {
            for (slot, &(m, threads)) in runs.iter_mut().zip(configs) {
                let tag = match threads {
                    Some(t) => format!("{tag}-t{t}"),
                    None => tag.to_string(),
                };
                let out = self.out_dir("reefknot", m, &tag);
                let job = self.reefknot_job(m, threads, &out, &tag);
                let label = match threads {
                    Some(t) => format!("{} --threads {t}", m.label()),
                    None => m.label().to_string(),
                };
                let repeat = if self.cli.repeat > 1 {
                    format!(" (run {}/{})", rep + 1, self.cli.repeat)
                } else {
                    String::new()
                };
                eprint!("  reefknot {label}{repeat} ... ");
                let quiet_before = self.prepare_run()?;
                let r = measure::run(&job)?;
                eprintln!(
                    "{} in {:.2} s, peak anon {}, other work {:.2} cores",
                    r.outcome(),
                    r.wall_s,
                    report::mib(r.peak_anon_bytes),
                    r.others_cpu_s / r.wall_s
                );
                if !r.ok() {
                    bail!(
                        "reefknot failed ({}) for {}: see {}",
                        r.outcome(),
                        m.label(),
                        job.log.display()
                    );
                }
                let output_bytes = measure::dir_bytes(&out);
                if !self.cli.keep {
                    let _ = std::fs::remove_dir_all(&out);
                }
                let run = slot.get_or_insert_with(|| Run {
                    method: m,
                    threads,
                    walls_s: Vec::new(),
                    measured: r.clone(),
                    busy_before: quiet_before,
                    load_before: load_average(),
                    output_bytes,
                });
                run.walls_s.push(r.wall_s);
                let best = &mut run.measured;
                let peaks = (
                    best.peak_anon_bytes.max(r.peak_anon_bytes),
                    best.peak_rss_bytes.max(r.peak_rss_bytes),
                    best.vm_hwm_bytes.max(r.vm_hwm_bytes),
                );
                if r.wall_s < best.wall_s {
                    *best = r;
                    run.busy_before = quiet_before;
                }
                (best.peak_anon_bytes, best.peak_rss_bytes, best.vm_hwm_bytes) = peaks;
            }
        }
        Ok(runs.into_iter().flatten().collect())
    }

    /// Runs `job` inside a fresh memory cgroup with `limit`.
    fn run_limited(&self, mut job: Job, tool: &str, m: Method, limit: u64) -> LimitedRun {
        let name = format!("reefknot-bench-{}-{tool}-{}", std::process::id(), m.id());
        let mut result = LimitedRun {
            tool: tool.into(),
            method: m,
            limit_bytes: limit,
            measured: None,
            cgroup: None,
            error: None,
            from_cache: false,
        };
        let group = match MemoryCgroup::create(&name, limit, self.cli.cgroup_parent.as_deref()) {
            Ok(g) => g,
            Err(e) => {
                eprintln!("  {tool} {} under a limit: not measured: {e}", m.label());
                result.error = Some(e);
                return result;
            }
        };
        job.cgroup_procs = Some(group.procs());
        eprint!(
            "  {tool} {} under a {} limit ({}) ... ",
            m.label(),
            report::mib(limit),
            group.dir().display()
        );
        if let Err(e) = self.prepare_run() {
            eprintln!("could not prepare: {e:#}");
            result.error = Some(format!("{e:#}"));
            return result;
        }
        match measure::run(&job) {
            Ok(r) => {
                let stats = group.stats();
                eprintln!(
                    "{} in {:.2} s, peak anon {}, OOM kills {}",
                    r.outcome(),
                    r.wall_s,
                    report::mib(r.peak_anon_bytes),
                    stats.oom_kills.map_or("?".into(), |n| n.to_string())
                );
                result.measured = Some(r);
                result.cgroup = Some(stats);
            }
            Err(e) => {
                eprintln!("could not run: {e:#}");
                result.error = Some(format!("{e:#}"));
            }
        }
        drop(group);
        result
    }
}

fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// `reefknot --version`, the checkout's commit and the binary's build time.
fn reefknot_info(bin: &Path) -> ReefknotInfo {
    let run = |cmd: &mut std::process::Command| -> Option<String> {
        let out = cmd.output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let version = run(std::process::Command::new(bin).arg("--version")).unwrap_or_default();
    let dir = bin.parent().unwrap_or(Path::new("."));
    let git = |args: &[&str]| {
        run(std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args))
    };
    let checkout = git(&["rev-parse", "--short", "HEAD"]).map(|c| {
        let dirty =
            git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
        if dirty {
            format!("{c}+dirty")
        } else {
            c
        }
    });
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let built_at = mtime(bin);
    let built = built_at
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| report::iso8601(d.as_secs()));
    let stale = match (git(&["rev-parse", "--show-toplevel"]), built_at) {
        (Some(top), Some(built_at)) => git(&["-C", &top, "ls-files", "-co", "--exclude-standard"])
            .map(|files| {
                files
                    .lines()
                    // Sources that cannot change the binary: this benchmark, tests, examples.
                    .filter(|f| {
                        !(f.starts_with("crates/bench/")
                            || f.starts_with("tests/")
                            || f.contains("/tests/")
                            || f.contains("/examples/"))
                    })
                    .filter(|f| {
                        f.ends_with(".rs")
                            || f.ends_with(".toml")
                            || f.ends_with(".pest")
                            || f.ends_with("Cargo.lock")
                    })
                    .any(|f| mtime(&Path::new(&top).join(f)).is_some_and(|t| t > built_at))
            }),
        _ => None,
    };
    ReefknotInfo {
        version,
        checkout,
        built,
        stale,
    }
}

fn find_reefknot(cli: &Cli) -> anyhow::Result<PathBuf> {
    let path = match &cli.reefknot {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("locating this binary")?
            .parent()
            .context("this binary has no folder")?
            .join("reefknot"),
    };
    if !path.is_file() {
        bail!(
            "no reefknot binary at {}: build it with `cargo build --release` (it lands next to \
             reefknot-bench in target/release) or pass --reefknot PATH",
            path.display()
        );
    }
    Ok(path)
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.scale.iter().any(|&s| s == 0 || s > 8) {
        bail!("--scale must be between 1 and 8");
    }
    let reefknot = find_reefknot(&cli)?;
    let info = reefknot_info(&reefknot);
    let machine = Machine::detect();
    std::fs::create_dir_all(&cli.dir).with_context(|| format!("creating {}", cli.dir.display()))?;
    let dir = cli
        .dir
        .canonicalize()
        .with_context(|| format!("resolving {}", cli.dir.display()))?;
    for sub in ["recipes", "mergekit", "logs", "out"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    let methods: Vec<Method> = match &cli.only {
        Some(list) => Method::ALL
            .into_iter()
            .filter(|m| list.contains(m))
            .collect(),
        None => Method::ALL.to_vec(),
    };
    let mergekit_tool = if cli.mergekit {
        Some(mergekit::Mergekit::find(&cli.mergekit_cmd)?)
    } else {
        mergekit::Mergekit::find(&cli.mergekit_cmd).ok()
    };
    let cache_path = dir.join("mergekit.json");
    let mut cache = mergekit::Cache::load(&cache_path)?;

    println!(
        "reefknot-bench: {} ({}{}), on {}",
        reefknot.display(),
        info.version,
        info.checkout
            .as_ref()
            .map(|c| format!(", checkout {c}"))
            .unwrap_or_default(),
        machine.describe()
    );
    for note in &machine.memory_notes {
        println!("note: {note}");
    }
    if info.stale == Some(true) {
        println!(
            "note: sources of this checkout are newer than {} (built {}): it may not be what \
             the checkout builds now (`cargo build --release` rebuilds it)",
            reefknot.display(),
            info.built.as_deref().unwrap_or("?")
        );
    }
    let mut all = Vec::new();
    for &scale in &cli.scale {
        let spec = family::spec(scale, cli.small);
        // "x1", "x2"; "small-x1" for the demo-sized family.
        let tag = format!("{}x{scale}", if cli.small { "small-" } else { "" });
        let fam_name = format!("family-{tag}");
        let fam_dir = dir.join(&fam_name);
        let prepared = family::prepare(&spec, &fam_dir)?;
        if let Some(s) = prepared.generated_s {
            println!("generated in {s:.1} s");
        }
        // Recipes and configs with paths relative to their folders.
        let rel = |name: &str| format!("../{fam_name}/{name}");
        let tasks: Vec<String> = (0..spec.tasks).map(|t| rel(&format!("task_{t}"))).collect();
        let mut recipes = Vec::new();
        for &m in &methods {
            let path = dir.join("recipes").join(format!("{}-{tag}.yaml", m.id()));
            std::fs::write(&path, m.recipe(&rel("base"), &tasks))?;
            recipes.push((m, path));
        }
        let ctx = Ctx {
            cli: &cli,
            dir: dir.clone(),
            reefknot: reefknot.clone(),
            tag: tag.clone(),
            prepared,
            recipes,
            poll: Duration::from_millis(cli.poll_ms.max(1)),
        };
        println!(
            "\nscale {scale}: a base and {} fine-tunes, {:.2} B parameters each, {:.2} GB of inputs; warm page cache",
            spec.tasks,
            spec.params_per_model() as f64 / 1e9,
            ctx.prepared.input_bytes as f64 / 1e9
        );

        // The floor.
        // The floor: one unmeasured pass first (memory that the machine returned to its
        // host while idle is slow to touch again, and a merge that follows other work
        // does not pay that), then `repeat` measured passes now and one after the
        // merges; the fastest parts count.
        let measure_floor = || -> anyhow::Result<Floor> {
            ctx.prepare_run()?;
            floor::measure(
                &ctx.prepared.inputs,
                &ctx.prepared.layout,
                &dir.join("out").join("floor"),
                cores(),
                cli.sync,
            )
        };
        measure_floor()?;
        let floor_line = |f: &Floor| {
            let sync = if f.synced {
                format!(" + sync {:.2} s", f.sync_s)
            } else {
                String::new()
            };
            format!(
                "  floor ({} threads): read {:.2} GB in {:.2} s, write {:.2} GB in {:.2} s{} ({})",
                f.threads,
                f.read_bytes as f64 / 1e9,
                f.read_s,
                f.write_bytes as f64 / 1e9,
                f.write_s,
                sync,
                f.writes[0].method
            )
        };
        let mut floors = Vec::new();
        for _ in 0..cli.repeat {
            let f = measure_floor()?;
            eprintln!("{}", floor_line(&f));
            floors.push(f);
        }

        let configs: Vec<(Method, Option<usize>)> = methods.iter().map(|&m| (m, None)).collect();
        let runs = ctx.run_reefknot(&configs, "")?;
        let f = measure_floor()?;
        eprintln!("{}", floor_line(&f));
        floors.push(f);
        let floor = Floor::best(floors).expect("at least one repetition");
        // 1 and N threads interleaved, so each pair is measured close together in time.
        let sweep = if cli.threads_sweep {
            let pairs: Vec<(Method, Option<usize>)> = methods
                .iter()
                .flat_map(|&m| [(m, Some(1)), (m, Some(cores()))])
                .collect();
            ctx.run_reefknot(&pairs, "")?
        } else {
            Vec::new()
        };

        let mut limited = Vec::new();
        if let Some(limit) = cli.memory_limit {
            for &m in &methods {
                let out = ctx.out_dir("reefknot", m, "-limited");
                let job = ctx.reefknot_job(m, None, &out, "-limited");
                limited.push(ctx.run_limited(job, "reefknot", m, limit));
                if !cli.keep {
                    let _ = std::fs::remove_dir_all(&out);
                }
            }
        }

        // mergekit: measured now (with --mergekit) or from the cache.
        let mut mk_entries = Vec::new();
        let mut limits = vec![None];
        if let Some(l) = cli.memory_limit {
            limits.push(Some(l));
        }
        for &m in &methods {
            let config = m.mergekit_config(&rel("base"), &tasks, &cli.mergekit_dtype);
            let config_path = dir.join("mergekit").join(format!("{}-{tag}.yml", m.id()));
            std::fs::write(&config_path, &config)?;
            for &limit in &limits {
                let version = mergekit_tool.as_ref().map(|t| t.version.as_str());
                let cached = cache.find(m, scale, limit, version, Some(&config));
                let entry = match (&mergekit_tool, cli.mergekit) {
                    (Some(tool), true) if cached.is_none() || cli.rerun_mergekit => {
                        let tag = if limit.is_some() { "-limited" } else { "" };
                        let out = ctx.out_dir("mergekit", m, tag);
                        let _ = std::fs::remove_dir_all(&out);
                        let out_rel =
                            format!("../out/{}", out.file_name().unwrap().to_string_lossy());
                        let args = mergekit::Mergekit::args(
                            &config_path.file_name().unwrap().to_string_lossy(),
                            &out_rel,
                        );
                        let job = Job {
                            program: tool.program.clone(),
                            args: args.iter().map(OsString::from).collect(),
                            cwd: Some(dir.join("mergekit")),
                            log: ctx.log(&format!("mergekit-{}{tag}", m.id())),
                            cgroup_procs: None,
                            follow_children: true,
                            poll: ctx.poll,
                        };
                        let (measured, cgroup_stats) = match limit {
                            None => {
                                eprint!("  mergekit {} (minutes) ... ", m.label());
                                ctx.prepare_run()?;
                                let r = measure::run(&job)?;
                                eprintln!(
                                    "{} in {:.1} s, peak anon {}, other work {:.2} cores",
                                    r.outcome(),
                                    r.wall_s,
                                    report::mib(r.peak_anon_bytes),
                                    r.others_cpu_s / r.wall_s
                                );
                                (Some(r), None)
                            }
                            Some(l) => {
                                let lr = ctx.run_limited(job.clone(), "mergekit", m, l);
                                if lr.error.is_some() {
                                    // Not measured: report why, cache nothing.
                                    limited.push(lr);
                                    (None, None)
                                } else {
                                    (lr.measured, lr.cgroup)
                                }
                            }
                        };
                        if !cli.keep {
                            let _ = std::fs::remove_dir_all(&out);
                        }
                        match measured {
                            Some(measured) => {
                                if limit.is_none() && !measured.ok() {
                                    eprintln!(
                                        "  warning: mergekit {} failed ({}): see {}",
                                        m.label(),
                                        measured.outcome(),
                                        job.log.display()
                                    );
                                }
                                let e = mergekit::Entry {
                                    method: m,
                                    scale,
                                    memory_limit_bytes: limit,
                                    mergekit_version: tool.version.clone(),
                                    config: config.clone(),
                                    args,
                                    measured,
                                    cgroup: cgroup_stats,
                                    date: report::now(),
                                    machine: machine.clone(),
                                    from_cache: false,
                                };
                                cache.store(&cache_path, e.clone())?;
                                Some(e)
                            }
                            None => None,
                        }
                    }
                    _ => cached.or_else(|| cache.find(m, scale, limit, None, None)),
                };
                if let Some(e) = entry {
                    if limit.is_some() {
                        limited.push(LimitedRun {
                            tool: "mergekit".into(),
                            method: m,
                            limit_bytes: e.memory_limit_bytes.unwrap_or_default(),
                            measured: Some(e.measured.clone()),
                            cgroup: e.cgroup.clone(),
                            error: None,
                            from_cache: e.from_cache,
                        });
                    }
                    mk_entries.push(e);
                }
            }
        }

        let mut results = Results {
            date: report::now(),
            machine: machine.clone(),
            reefknot: info.clone(),
            scale,
            family: reefknot_synth::family_json(&spec),
            input_bytes: ctx.prepared.input_bytes,
            output_bytes: ctx.prepared.output_bytes,
            generated_s: ctx.prepared.generated_s,
            page_cache: "warm".into(),
            floor,
            runs,
            threads_sweep: sweep,
            memory_limit: limited,
            mergekit: mk_entries,
            mergekit_version: mergekit_tool.as_ref().map(|t| t.version.clone()),
            targets: Vec::new(),
        };
        results.targets = report::targets(&results);
        print!("{}", report::render(&results));
        let json_path = dir.join(format!("results-{tag}.json"));
        let text = serde_json::to_string_pretty(&results).expect("results serialize");
        std::fs::write(&json_path, text + "\n")
            .with_context(|| format!("writing {}", json_path.display()))?;
        println!("results: {}", json_path.display());
        if cli.clean {
            family::remove(&ctx.prepared)?;
            println!("removed the family {}", fam_dir.display());
        }
        all.push(results);
    }
    if all.len() > 1 {
        print!("{}", report::render_scales(&all));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("512 MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1.5GB"), Ok(1_500_000_000));
        assert!(parse_size("1 parsec").is_err());
        assert!(parse_size("0").is_err());
    }

    #[test]
    fn the_cli_is_well_formed() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "reefknot-bench",
            "--scale",
            "1,2",
            "--only",
            "ties,task-arithmetic",
            "--memory-limit",
            "1GiB",
        ])
        .unwrap();
        assert_eq!(cli.scale, vec![1, 2]);
        assert_eq!(cli.only, Some(vec![Method::Ties, Method::TaskArithmetic]));
        assert_eq!(cli.memory_limit, Some(1 << 30));
    }
}

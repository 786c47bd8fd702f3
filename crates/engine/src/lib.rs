//! Plans and runs reefknot merges.
//!
//! The flow is front-end → [`MergePlan`] → [`Plan`] → execute → sink:
//!
//! 1. A front-end makes a [`MergePlan`], plain data (`reefknot-plan`): the recipe
//!    front-end ([`plan_recipe`]) compiles the recipe's expressions against a
//!    [`Registry`], opens every checkpoint (headers only), checks tensor names, shapes and
//!    dtypes, and resolves each tensor's pipeline arguments. A plan can be saved as JSON
//!    and read back.
//! 2. [`Plan`] readies a plan to run: its inputs opened (a plan read back refuses inputs
//!    that changed since it was made), its operators bound by name, every argument and
//!    tensor checked. Nothing reads tensor data, so `reefknot check` is cheap.
//! 3. [`execute`] streams the chosen output tensors through their producers in parallel
//!    chunks into an [`OutputSink`]; [`merge`] is the sink that writes a model folder:
//!    files created at their final size in a hidden sibling folder, the base's non-weight
//!    files and a model card beside them, the folder renamed into place.
//!
//! ```no_run
//! use reefknot_engine::{merge, MergeOptions, NoProgress, Plan, PlanOptions};
//! let recipe = reefknot_recipe::Recipe::load("recipes/ties.yaml".as_ref())?;
//! let registry = reefknot_ops::Registry::builtin();
//! let plan = Plan::build(&recipe, &registry, &PlanOptions::default())?;
//! std::fs::write("ties.plan.json", plan.data().to_json()).unwrap();
//! merge(&plan, "merged".as_ref(), &MergeOptions::default(), &NoProgress)?;
//! # Ok::<(), reefknot_engine::Error>(())
//! ```

mod analyze;
mod card;
mod chat;
mod error;
mod exec;
mod frontend;
mod hub;
mod lora;
mod output;
mod plan;
mod scan;
mod vocab;

use std::path::{Path, PathBuf};
use std::time::Instant;

use reefknot_io::{ModelWriter, OutputTensor, WriterOptions};
use reefknot_lang::Pipeline;
use reefknot_ops::{Registry, BLOCK};
use reefknot_recipe::{Expr, Recipe};

pub use analyze::{analyze, Analysis, DensityFrom, TensorReport, DEFAULT_DENSITY};
pub use error::{Error, ErrorKind, InRecipe, NonFiniteAt};
pub use exec::{
    execute, merge_tensor, observe_tensor, InMemory, MemoryOutput, MemorySink, NoProgress,
    OutputSink, Progress, Sink, Source, TensorJob,
};
pub use frontend::{
    bind_pipeline, plan_recipe, PlanOptions, PLUGINS_METADATA, RECIPE_METADATA, SET_METADATA,
};
pub use output::{abandon_outputs, watch_outputs, OutputChange, Staging};
pub use plan::{describe_stages, human_count, Job, Located, MergeJob, Opened, Plan, Stage};
pub use reefknot_plan::MergePlan;
pub use scan::{scan_nonfinite, NonFiniteInput};

/// The default chunk: 16 Ki elements (64 KiB per `f32` vector), so a worker's scratch
/// for a few models stays in its core's L2 cache.
pub const DEFAULT_CHUNK: usize = 4 * BLOCK;

/// How to run a merge.
#[derive(Clone, Debug)]
pub struct MergeOptions {
    /// Worker threads (`None`: one per core).
    pub threads: Option<usize>,
    /// Elements per chunk, 1 to [`MAX_CHUNK`]; rounded up to a multiple of [`BLOCK`].
    pub chunk: usize,
    /// Replace an existing output folder.
    pub force: bool,
    /// Sync the output to disk before renaming it into place (and the folder after),
    /// so that it survives a power loss; see [`WriterOptions::durable`].
    pub sync: bool,
    /// Write NaN and infinities instead of failing on them (see
    /// [`ErrorKind::NonFinite`]).
    pub allow_nonfinite: bool,
}

impl Default for MergeOptions {
    fn default() -> Self {
        MergeOptions {
            threads: None,
            chunk: DEFAULT_CHUNK,
            force: false,
            sync: false,
            allow_nonfinite: false,
        }
    }
}

/// What a merge produced.
#[derive(Clone, Debug)]
pub struct MergeReport {
    /// The output folder.
    pub output: PathBuf,
    /// The weight files written (relative to the output folder).
    pub files: Vec<PathBuf>,
    /// Number of tensors.
    pub tensors: usize,
    /// Number of elements written.
    pub elements: u64,
    /// Bytes of input read (base and models, each once per pass at least).
    pub input_bytes: u64,
    /// Wall time of the merge, in seconds.
    pub seconds: f64,
}

/// Assigns every output tensor of `plan` its shard by the one layout rule
/// ([`reefknot_io::shard_layout`]) and names the shard files: what a front-end (or a
/// tool that edited a plan's tensors) does last.
pub fn lay_out(plan: &mut MergePlan) -> Result<(), Error> {
    let (shards, names) = shards_of(plan, &dtypes_of(plan)?);
    for (t, s) in plan.tensors.iter_mut().zip(shards) {
        t.shard = s;
    }
    plan.output.shards = names;
    Ok(())
}

/// Every output tensor's dtype, parsed from the plan.
pub(crate) fn dtypes_of(plan: &MergePlan) -> Result<Vec<reefknot_io::Dtype>, Error> {
    plan.tensors
        .iter()
        .map(|t| {
            reefknot_io::Dtype::from_safetensors_name(&t.dtype).ok_or_else(|| {
                ErrorKind::PlanTensor {
                    tensor: t.name.clone(),
                    message: format!("`{}` is not a safetensors dtype", t.dtype),
                }
                .into()
            })
        })
        .collect()
}

/// The shard of every output tensor and the shard files, by the one layout rule.
pub(crate) fn shards_of(
    plan: &MergePlan,
    dtypes: &[reefknot_io::Dtype],
) -> (Vec<usize>, Vec<String>) {
    let sizes: Vec<usize> = plan
        .tensors
        .iter()
        .zip(dtypes)
        .map(|(t, d)| t.numel() * d.size())
        .collect();
    let shards = reefknot_io::shard_layout(&sizes, plan.output.shard_size);
    let names = reefknot_io::shard_names(shards.last().map_or(1, |&s| s + 1));
    (shards, names)
}

/// The largest chunk: 16 Mi elements (64 MiB per `f32` vector).
pub const MAX_CHUNK: usize = 1 << 24;

/// The most worker threads a merge starts: eight per CPU the process may use. More only contend (a merge
/// is bound by memory bandwidth long before), and without a bound a typo starts
/// threads until the machine stops responding.
pub fn max_threads() -> usize {
    8 * std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs a thread pool of `threads` workers (`None`: one per core).
fn pool(threads: Option<usize>) -> Result<rayon::ThreadPool, Error> {
    let mut b = rayon::ThreadPoolBuilder::new();
    if let Some(n) = threads {
        let max = max_threads();
        if n == 0 || n > max {
            return Err(ErrorKind::Threads {
                threads: n,
                message: format!(
                    "a merge runs 1 to {max} worker threads on this machine (8 per CPU)"
                ),
            }
            .into());
        }
        b = b.num_threads(n);
    }
    b.build().map_err(|e| {
        ErrorKind::Threads {
            threads: threads.unwrap_or(0),
            message: e.to_string(),
        }
        .into()
    })
}

/// Where a model named on a command line is: `name` itself when it exists; else, when
/// it reads as a Hugging Face repo id (`org/name`, `org/name@revision`) that the local
/// cache holds, that revision's snapshot folder (as recipes resolve their models,
/// offline). A repo the cache holds without the revision is an error naming where it
/// looked; any other name is returned as it is, for the caller to report missing.
pub fn locate_model(name: &Path) -> Result<PathBuf, Error> {
    hub::resolve(&name.to_string_lossy(), name).map_err(|e| Error::from(*e))
}

/// Runs [`execute`] over every tensor of `plan` into `out` on a pool of
/// `opts.threads` workers, with `opts.chunk`-element chunks: the whole merge into a sink
/// of the caller's (memory, an analysis) rather than a model folder.
pub fn execute_into(
    plan: &Plan,
    selection: Option<&[usize]>,
    out: &dyn OutputSink,
    opts: &MergeOptions,
    progress: &dyn Progress,
) -> Result<(), Error> {
    if !(1..=MAX_CHUNK).contains(&opts.chunk) {
        return Err(ErrorKind::Chunk(opts.chunk).into());
    }
    let chunk = opts.chunk.div_ceil(BLOCK) * BLOCK;
    let check = !opts.allow_nonfinite;
    let ran = pool(opts.threads)?.install(|| execute(plan, selection, out, chunk, check, progress));
    reefknot_ops::release_spare_memory();
    ran
}

/// Parses every expression of the recipe (its `merge` and each override's) without
/// resolving operators, pointing errors into the recipe file: the syntax is checked
/// before any plugin is loaded. Returns the plugin namespaces the expressions use, in
/// order of first use.
pub fn parse_exprs(recipe: &Recipe) -> Result<Vec<String>, Error> {
    let overrides = recipe.overrides.iter().filter_map(|o| o.merge.as_ref());
    let mut namespaces: Vec<String> = Vec::new();
    for expr in std::iter::once(&recipe.merge).chain(overrides) {
        let parsed = reefknot_lang::parse(&expr.text).map_err(|e| locate(recipe, expr, e))?;
        for ns in parsed.namespaces() {
            if !namespaces.iter().any(|n| n == ns) {
                namespaces.push(ns.to_string());
            }
        }
    }
    Ok(namespaces)
}

/// Compiles one of the recipe's expressions, pointing errors into the recipe file. The
/// expression must take the number of models each merged tensor has: the recipe's, or,
/// with slices, each merged slice's (none when every slice copies its layers: the
/// expression is never run).
pub fn compile_expr(recipe: &Recipe, expr: &Expr, registry: &Registry) -> Result<Pipeline, Error> {
    // How many fine-tunes a merged tensor has: the recipe's models, or, with slices,
    // each merged slice's.
    let counts: Vec<usize> = if recipe.slices.is_empty() {
        vec![recipe.models.len()]
    } else {
        (0..recipe.slices.len())
            .filter(|&s| {
                matches!(
                    recipe.slices[s].source,
                    reefknot_recipe::SliceSource::Merge { .. }
                )
            })
            .map(|s| recipe.merged_inputs(Some(s)).1.len())
            .collect()
    };
    reefknot_lang::compile(&expr.text, registry)
        .and_then(|p| {
            for &n in &counts {
                reefknot_lang::check_models(&expr.text, &p, n)?;
            }
            Ok(p)
        })
        .map_err(|e| locate(recipe, expr, e))
}

/// An error in expression `expr`, relocated into the recipe's file when the expression
/// came from one.
pub(crate) fn locate(recipe: &Recipe, expr: &Expr, e: reefknot_lang::LangError) -> Error {
    let name = recipe
        .path
        .as_ref()
        .map_or_else(|| "recipe".to_string(), |p| p.display().to_string());
    let located = match expr.offset_in_source {
        Some(offset) => e.offset(offset, recipe.source.clone(), &name),
        None => e.with_source_name(format!("{name}: merge expression")),
    };
    Error::from(located)
}

/// One merged tensor held in memory: what [`merge_to_memory`] returns.
#[derive(Debug, Clone, PartialEq)]
pub struct MergedTensor {
    /// Its name in the output.
    pub name: String,
    /// Its output type.
    pub dtype: reefknot_io::Dtype,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its bytes, little-endian, `numel · dtype size` of them.
    pub bytes: Vec<u8>,
}

/// Runs the merge into memory: every output tensor's bytes, in the plan's order, and
/// the output's non-weight files (`config.json` with the output's dtype and layout,
/// the tokenizer, ...) written into `files`, an existing folder. Nothing else touches
/// the disk; for a scorer that reads the merged model without a model folder.
pub fn merge_to_memory(
    plan: &Plan,
    files: &Path,
    opts: &MergeOptions,
    progress: &dyn Progress,
) -> Result<Vec<MergedTensor>, Error> {
    let out = MemoryOutput::for_plan(plan);
    progress.start(plan.total_elements());
    execute_into(plan, None, &out, opts, progress)?;
    progress.finish();
    card::copy_base_files(plan, files)?;
    Ok(plan
        .data()
        .tensors
        .iter()
        .zip(plan.dtypes())
        .zip(out.into_tensors())
        .map(|((t, &dtype), bytes)| MergedTensor {
            name: t.name.clone(),
            dtype,
            shape: t.shape.clone(),
            bytes,
        })
        .collect())
}

/// Runs `plan`, writing the merged model to the folder `out`.
pub fn merge(
    plan: &Plan,
    out: &Path,
    opts: &MergeOptions,
    progress: &dyn Progress,
) -> Result<MergeReport, Error> {
    let started = Instant::now();
    let data = plan.data();
    let mut inputs = plan.input_paths();
    inputs.extend(card::base_files(plan)?.into_iter().map(|(path, _)| path));
    let staging = Staging::begin(out, opts.force, &inputs)?;
    tracing::info!(
        staging = %staging.path().display(),
        tensors = data.tensors.len(),
        inputs = inputs.len(),
        "writing the merge"
    );
    let tensors: Vec<OutputTensor> = data
        .tensors
        .iter()
        .zip(plan.dtypes())
        .map(|(t, &dtype)| OutputTensor {
            name: t.name.clone(),
            dtype,
            shape: t.shape.clone(),
        })
        .collect();
    let writer_opts = WriterOptions {
        shard_size: data.output.shard_size,
        metadata: data.output.metadata.clone(),
        durable: opts.sync,
    };
    let writer =
        ModelWriter::create(staging.path(), tensors, &writer_opts).map_err(ErrorKind::Writer)?;

    progress.start(plan.total_elements());
    execute_into(plan, None, &exec::Combiner::new(&writer), opts, progress)?;
    let files = writer.finish().map_err(ErrorKind::Writer)?;
    progress.finish();

    card::copy_base_files(plan, staging.path())?;
    card::write_card(plan, staging.path())?;
    let output = staging.commit(opts.sync)?;
    tracing::info!(
        output = %output.display(),
        seconds = started.elapsed().as_secs_f64(),
        "merged and renamed into place"
    );

    let input_bytes = plan
        .data()
        .inputs
        .iter()
        .zip(plan.inputs())
        .filter(|(i, _)| !matches!(i.role, reefknot_plan::Role::Fisher { .. }))
        .map(|(_, c)| c.total_bytes())
        .sum();
    Ok(MergeReport {
        output,
        files: files
            .iter()
            .map(|f| {
                f.file_name()
                    .map(PathBuf::from)
                    .unwrap_or_else(|| f.clone())
            })
            .collect(),
        tensors: data.tensors.len(),
        elements: plan.total_elements(),
        input_bytes,
        seconds: started.elapsed().as_secs_f64(),
    })
}

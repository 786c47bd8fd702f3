//! Plans and runs reefknot merges.
//!
//! The flow is recipe → [`Plan`] → execute → write:
//!
//! 1. [`Plan::build`] compiles the recipe's expressions against a [`Registry`], opens every
//!    checkpoint (headers only), checks tensor names, shapes and dtypes, and resolves each
//!    tensor's pipeline arguments. Nothing reads tensor data, so `reefknot check` is cheap.
//! 2. [`merge`] lays the output out (names, dtypes, shapes and shard files are known up
//!    front), creates the files at their final size in a hidden sibling folder, streams
//!    every tensor through its pipeline in parallel chunks straight into the mapped files,
//!    copies the base's non-weight files, writes a model card, and renames the folder into
//!    place.
//!
//! ```no_run
//! use reefknot_engine::{merge, MergeOptions, NoProgress, Plan, PlanOptions};
//! let recipe = reefknot_recipe::Recipe::load("recipes/ties.yaml".as_ref())?;
//! let registry = reefknot_ops::Registry::builtin();
//! let plan = Plan::build(recipe, &registry, &PlanOptions::default())?;
//! merge(&plan, "merged".as_ref(), &MergeOptions::default(), &NoProgress)?;
//! # Ok::<(), reefknot_engine::Error>(())
//! ```

mod card;
mod error;
mod exec;
mod output;
mod plan;

use std::path::{Path, PathBuf};
use std::time::Instant;

use reefknot_io::{ModelWriter, OutputTensor, WriterOptions};
use reefknot_lang::Pipeline;
use reefknot_ops::{Registry, BLOCK};
use reefknot_recipe::{Expr, Recipe};

pub use error::{Error, ErrorKind};
pub use exec::{merge_tensor, InMemory, MemorySink, NoProgress, Progress, Sink, Source, TensorJob};
pub use output::Staging;
pub use plan::{
    bind_pipeline, describe_stages, Job, MergeJob, Plan, PlanOptions, Rule, Stage, TensorPlan,
};

/// The default chunk: 16 Ki elements (64 KiB per `f32` vector), so a worker's scratch
/// for a few models stays in its core's L2 cache.
pub const DEFAULT_CHUNK: usize = 4 * BLOCK;

/// The default shard size of the output, as Hugging Face uses: 5 GB.
pub const DEFAULT_SHARD_SIZE: u64 = 5_000_000_000;

/// How to run a merge.
#[derive(Clone, Debug)]
pub struct MergeOptions {
    /// Worker threads (`None`: one per core).
    pub threads: Option<usize>,
    /// Elements per chunk; rounded up to a multiple of [`BLOCK`].
    pub chunk: usize,
    /// Replace an existing output folder.
    pub force: bool,
    /// Output shard size in bytes (`None`: the recipe's, else [`DEFAULT_SHARD_SIZE`]).
    pub shard_size: Option<u64>,
    /// Sync the output to disk before renaming it into place (and the folder after),
    /// so that it survives a power loss; see [`WriterOptions::durable`].
    pub sync: bool,
}

impl Default for MergeOptions {
    fn default() -> Self {
        MergeOptions {
            threads: None,
            chunk: DEFAULT_CHUNK,
            force: false,
            shard_size: None,
            sync: false,
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

/// Compiles one of the recipe's expressions, pointing errors into the recipe file.
pub fn compile_expr(recipe: &Recipe, expr: &Expr, registry: &Registry) -> Result<Pipeline, Error> {
    reefknot_lang::compile(&expr.text, registry).map_err(|e| {
        let name = recipe
            .path
            .as_ref()
            .map_or_else(|| "recipe".to_string(), |p| p.display().to_string());
        let located = match expr.offset_in_source {
            Some(offset) => e.offset(offset, recipe.source.clone(), &name),
            None => e.with_source_name(format!("{name}: merge expression")),
        };
        Error::from(located)
    })
}

/// Runs `plan`, writing the merged model to `out`.
pub fn merge(
    plan: &Plan,
    out: &Path,
    opts: &MergeOptions,
    progress: &dyn Progress,
) -> Result<MergeReport, Error> {
    let started = Instant::now();
    let staging = Staging::begin(out, opts.force, &plan.inputs())?;

    let pool = {
        let mut b = rayon::ThreadPoolBuilder::new();
        if let Some(n) = opts.threads {
            b = b.num_threads(n);
        }
        b.build().map_err(|e| ErrorKind::Threads {
            threads: opts.threads.unwrap_or(0),
            message: e.to_string(),
        })?
    };

    let mut metadata = std::collections::BTreeMap::new();
    metadata.insert(
        "reefknot_version".to_string(),
        env!("CARGO_PKG_VERSION").to_string(),
    );
    metadata.insert("reefknot_recipe".to_string(), plan.recipe.source.clone());
    let tensors: Vec<OutputTensor> = plan
        .tensors
        .iter()
        .map(|t| OutputTensor {
            name: t.name.clone(),
            dtype: t.dtype,
            shape: t.shape.clone(),
        })
        .collect();
    let writer_opts = WriterOptions {
        shard_size: opts
            .shard_size
            .or(plan.recipe.shard_size)
            .unwrap_or(DEFAULT_SHARD_SIZE),
        metadata,
        durable: opts.sync,
    };
    let writer =
        ModelWriter::create(staging.path(), tensors, &writer_opts).map_err(ErrorKind::Writer)?;

    let chunk = opts.chunk.max(1).div_ceil(BLOCK) * BLOCK;
    progress.start(plan.total_elements());
    let ran = pool.install(|| exec::run(plan, &writer, chunk, progress));
    reefknot_ops::release_spare_memory();
    ran?;
    let files = writer.finish().map_err(ErrorKind::Writer)?;
    progress.finish();

    card::copy_base_files(plan, staging.path())?;
    card::write_card(plan, staging.path())?;
    let output = staging.commit(opts.sync)?;

    let input_bytes =
        plan.base.total_bytes() + plan.models.iter().map(|m| m.total_bytes()).sum::<u64>();
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
        tensors: plan.tensors.len(),
        elements: plan.total_elements(),
        input_bytes,
        seconds: started.elapsed().as_secs_f64(),
    })
}

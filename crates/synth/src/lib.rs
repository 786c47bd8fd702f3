//! Synthetic Llama checkpoint families for reefknot's demo, tests and benchmarks.
//!
//! [`generate`] writes a base model and `T` fine-tunes of it as Hugging Face folders
//! that `transformers` loads as `LlamaForCausalLM` (`config.json`,
//! `generation_config.json`, `model.safetensors` or shards plus an index), and
//! [`score`] measures how well a merge of them keeps each fine-tune; [`write_fishers`]
//! and [`quadratic_losses`] give each task an exact loss (a quadratic bowl around its
//! fine-tune with a known curvature, see [`curvature`]) to measure a merge by.
//!
//! ```no_run
//! use reefknot_synth::{generate, FamilySpec};
//! # fn main() -> Result<(), reefknot_synth::SynthError> {
//! let family = generate(&FamilySpec::demo(), std::path::Path::new("family"))?;
//! // ... merge family.base and family.tasks into "merged", then:
//! for s in reefknot_synth::score(&family.base, &family.tasks, "merged".as_ref())? {
//!     println!("task {}: cosine {:.3}, signs kept {:.1}%", s.task, s.cosine, 100.0 * s.sign_kept);
//! }
//! # Ok(()) }
//! ```
//!
//! # The statistical model
//!
//! **Base weights.** Embeddings, projections and `lm_head` are `0.02·z`; RMSNorm
//! scales are `1 + 0.05·z`. Here `z` is a fast normal-like variate: the Irwin–Hall
//! sum of four uniform 15- or 16-bit fields of one 64-bit random draw, centred and
//! scaled to variance 1 (bell-shaped, support ±3.46, kurtosis 2.7 instead of 3).
//!
//! **Task vectors.** Task `t` stores `θ_t = θ_base + δ_t`, rounded to the dtype. For
//! each tensor element, independently:
//! - with probability `density` the entry is *important* to the task:
//!   `δ = delta_scale · s_t · |z|`, where the sign `s_t` is the element's shared sign
//!   (a fair coin common to all tasks) flipped with probability
//!   `p = (1 − √(1 − 2·conflict))/2`;
//! - otherwise it is dense noise: `δ = 0.25 · delta_scale · z`.
//!
//! So `delta_scale` is the root-mean-square of the important entries, and the whole
//! task vector has RMS `delta_scale·√(density + 0.0625·(1 − density))`, 0.5·`delta_scale`
//! with the presets: `‖δ‖/‖θ_base‖ ≈ 5 %` for the preset `delta_scale` of 0.002.
//!
//! Norm tensors use ten times `delta_scale` (their values sit near 1, where a bf16
//! step is 0.004–0.008). Importance is drawn independently per task, so two tasks
//! share `density²` of the entries as important ones; on those, each task flipping
//! the shared sign independently with probability `p` makes their signs disagree with
//! probability `2p(1−p) = conflict`.
//!
//! Measured on the demo family (`density` 0.2, `conflict` 0.3; the tests pin these):
//! - the top 20 % of a tensor's `|δ|` carries 85 % of its energy (f32 and bf16 alike;
//!   a Gaussian vector would have 65 %), so most of a task lives in a sparse set;
//! - of the entries important to one task, 20 % are important to another, and 30 %
//!   of those shared entries have opposite signs;
//! - seen through top-20 % sets, as `reefknot analyze` sees the files, two tasks'
//!   sets overlap on 20 % of their entries and 41 % of the overlap has opposite signs
//!   (the top sets also hold the largest noise entries, whose signs are independent;
//!   27 % at `conflict` 0); the task vectors' cosine is about +0.045.
//!
//! **Determinism.** Every value is a pure function of `(seed, tensor name, model,
//! element index)`: a counter-based SplitMix64 ([`rng`]) keyed by the seed and the
//! tensor name's hash, with one sub-stream for the base (values and shared signs) and
//! two per task (importance and sign flips; magnitudes). Models are filled in
//! parallel chunks of 64 Ki elements written straight into the memory-mapped output,
//! and the bytes never depend on the thread count or the chunking.
#![forbid(unsafe_code)]

pub mod analysis;
pub mod curvature;
mod generate;
pub mod rng;
mod sample;
mod spec;

pub use analysis::{score, TaskScore};
pub use curvature::{quadratic_losses, write_fishers, NOISE_CURVATURE};
pub use generate::{family_json, generate, Family};
pub use sample::{sample_tensor, TensorSampler};
pub use spec::{
    config_json, generation_config_json, tensor_layout, tensor_names, FamilySpec, TensorKind,
    TensorSpec, BASE_STD, NOISE_RATIO, NORM_DELTA_GAIN, NORM_STD,
};

use std::path::PathBuf;

/// Everything that can go wrong generating or scoring a family.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SynthError {
    /// A [`FamilySpec`] field out of range.
    #[error("invalid family spec: {0}")]
    InvalidSpec(String),
    /// Reading or writing a checkpoint failed.
    #[error(transparent)]
    Io(#[from] reefknot_io::IoError),
    /// Another file operation failed.
    #[error("{}: cannot {action}: {source}", .path.display())]
    File {
        /// The file or folder.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Models that cannot be compared (a shape or dtype differs from the base's).
    #[error("{0}")]
    Mismatch(String),
}

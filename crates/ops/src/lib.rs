//! The merge operators of reefknot and their registry.
//!
//! Each operator is defined once: an [`Operator`] carries its [`reefknot_lang::OpSpec`]
//! (name, parameters, types, documentation), which drives the language's checks,
//! `reefknot ops` and the reference, and binds to a tensor as a [`Kernel`] that the
//! engine streams chunks through. Built-ins register with [`builtin!`] (collected by
//! `inventory`); plugin operators are added to a [`Registry`] at run time.
//!
//! ```
//! use reefknot_ops::Registry;
//! let registry = Registry::builtin();
//! assert!(registry.get("trim").is_some());
//! let pipeline = reefknot_lang::compile("ties(0.2) |> scale(0.8)", &registry).unwrap();
//! assert_eq!(pipeline.stages.len(), 4);
//! ```

pub mod analysis;
pub mod builtin;
mod error;
mod kernel;
mod mergekit;
mod registry;
pub mod rng;
mod sum;

pub use error::OpError;
pub use kernel::{
    row_chunk, row_len, Args, BindCtx, BoolParam, ChoiceParam, Chunk, Kernel, NumberParam,
    Operator, Param, Partial, Span, TaskVectors, TextParam, Value, MAX_ROW_CHUNK,
};
pub use mergekit::{MergekitMethod, MERGEKIT_METHODS};
pub use registry::{Builtin, Clash, Entry, Origin, Provider, Registry};
pub use sum::OrderFreeSum;

/// Frees the memory operators keep for reuse from one tensor to the next (`dare`'s
/// keep-mask buffers, at most 32 MiB). The engine calls it when a merge ends, so that a
/// process that merges and goes on to other work does not hold it; the next merge
/// allocates again what it needs.
pub fn release_spare_memory() {
    builtin::release_spare_masks();
}

/// Reductions over a tensor (such as `dare`'s L1 norms) sum fixed blocks of this many
/// elements in order, so results do not depend on the chunking. The engine's chunks
/// start at multiples of `BLOCK`.
pub const BLOCK: usize = 4096;

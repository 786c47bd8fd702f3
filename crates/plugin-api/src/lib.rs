//! The plugin ABI of reefknot, and a small SDK for writing plugins in Rust.
//!
//! A plugin is a shared library that adds merge operators to reefknot's language. It
//! exports two C functions, `reefknot_plugin_abi_version` (the [`RkAbiVersion`] it was
//! built for) and `reefknot_plugin_descriptor` (a static [`RkPlugin`] table listing its
//! operators: names, documentation, typed parameters, signatures, flags and entry
//! points). The host opens it, checks the version, validates every descriptor, and
//! calls the operators on chunks of tensors through host-owned buffers. The [`abi`]
//! module is that interface; `include/reefknot_plugin.h` is the same interface for C.
//!
//! In Rust, implement [`Operator`] for each operator and list them in
//! [`export_plugin!`], which generates both symbols and wraps every call in
//! `catch_unwind`: a panic becomes an error the host reports, never an unwind across
//! the C boundary. This crate has no dependencies.
//!
//! ```
//! use reefknot_plugin_api::{export_plugin, Input, Operator, Output, Param, Signature};
//!
//! /// `Δ ← λ·Δ`, as a plugin.
//! struct Gain;
//!
//! impl Operator for Gain {
//!     const NAME: &'static str = "gain";
//!     const SUMMARY: &'static str = "multiply the merged delta by lambda";
//!     const SIGNATURES: &'static [Signature] = &[Signature::DeltaToDelta];
//!     const PARAMS: &'static [Param] = &[Param::number("lambda", "the factor").default(1.0)];
//!
//!     fn call(input: &Input<'_>, output: &mut Output<'_>) -> Result<(), String> {
//!         let lambda = input.number("lambda") as f32;
//!         for (o, &d) in output.delta_mut().iter_mut().zip(input.delta()) {
//!             *o = lambda * d;
//!         }
//!         Ok(())
//!     }
//! }
//!
//! export_plugin! {
//!     name: "example",
//!     version: "0.1.0",
//!     description: "an example",
//!     operators: [Gain],
//! }
//! # fn main() {}
//! ```
//!
//! The rules a plugin lives by (the author's guide, `docs/plugins.md`, has the details):
//! - the host does all parallelism: an operator may be called from several threads at
//!   once and must not start threads or thread pools;
//! - the host owns every buffer; inputs are borrowed views, outputs are written into
//!   the host's buffers, an error message into the host's error buffer;
//! - no panic crosses the boundary, and a plugin built with `panic = "abort"` does not
//!   compile;
//! - randomness is a function of the seed, the tensor and the element index ([`rng`]),
//!   so results do not depend on how the host chunks a tensor.
//!
//! [`testing`] runs an operator the way the host calls it, from the plugin's own tests,
//! and checks what the host relies on.

pub mod abi;
mod call;
pub mod rng;
mod sdk;
pub mod testing;

pub use abi::*;
pub use call::{entry, Arg, Input, Output};
pub use sdk::{Flags, Operator, Param, Signature, Type};

/// Exports a Rust plugin: its name (the namespace of its operators), version,
/// description and operators (types implementing [`Operator`]).
///
/// ```ignore
/// reefknot_plugin_api::export_plugin! {
///     name: "tall",
///     version: env!("CARGO_PKG_VERSION"),
///     description: "TALL-mask consensus (Wang et al. 2024)",
///     operators: [Consensus],
/// }
/// ```
///
/// It generates `reefknot_plugin_abi_version` and `reefknot_plugin_descriptor` and a
/// static table whose entry points run each operator behind `catch_unwind`. Use it
/// once per plugin, in a crate built with `crate-type = ["cdylib"]`. A plugin built
/// with `panic = "abort"` is refused at compile time: a panic would kill the host
/// instead of failing the merge with a message.
#[macro_export]
macro_rules! export_plugin {
    (
        name: $name:expr,
        version: $version:expr,
        $(description: $description:expr,)?
        operators: [$($op:ty),+ $(,)?] $(,)?
    ) => {
        #[cfg(panic = "abort")]
        ::core::compile_error!(
            "reefknot plugins must be built with panic = \"unwind\": the SDK turns a panic \
             into an error the host reports, which panic = \"abort\" makes impossible \
             (remove `panic = \"abort\"` from the profile)"
        );

        const _: () = {
            const OPERATORS: &[$crate::RkOperator] = &[$($crate::RkOperator::of::<$op>()),+];
            static PLUGIN: $crate::RkPlugin = $crate::RkPlugin::new(
                $name,
                $version,
                $crate::export_plugin!(@description $($description)?),
                OPERATORS,
            );

            /// The ABI version this plugin was built against.
            // SAFETY: `no_mangle` exports this symbol under its C name; the ABI reserves
            // the `reefknot_plugin_` prefix, so it cannot clash with another definition
            // in a plugin that exports one plugin (the macro is invoked once per crate).
            #[allow(unsafe_code)]
            #[unsafe(no_mangle)]
            pub extern "C" fn reefknot_plugin_abi_version() -> $crate::RkAbiVersion {
                $crate::RkAbiVersion::CURRENT
            }

            /// The plugin's static descriptor table.
            // SAFETY: as above: the one exported symbol of this name in the library.
            #[allow(unsafe_code)]
            #[unsafe(no_mangle)]
            pub extern "C" fn reefknot_plugin_descriptor() -> *const $crate::RkPlugin {
                &PLUGIN
            }
        };
    };
    (@description $description:expr) => { $description };
    (@description) => { "" };
}

//! The C ABI itself: `#[repr(C)]` structs, constants and the two exported symbols.
//!
//! `include/reefknot_plugin.h` declares exactly these types for C authors; the crate's
//! `header` test compiles a C file that asserts the size, alignment and every field's
//! offset and size of each struct, and the value of each constant, against this module.
//!
//! Rules of the ABI (see `docs/plugins.md`):
//! - Strings are [`RkStr`]: a pointer and a length in bytes, UTF-8, not NUL-terminated.
//! - Structs that may grow ([`RkPlugin`], [`RkOperator`], [`RkParam`], [`RkCall`],
//!   [`RkArg`], [`RkOutput`]) start with `size`, their size in bytes as their writer
//!   compiled them. New fields are only ever appended, in a new minor version; a reader
//!   reads the fields the size covers and treats the others as zero. Arrays of such
//!   structs are strided by their elements' `size` (every element of one array has the
//!   same size). No struct has implicit padding, so appending a field always changes
//!   its size.
//! - The host allocates and frees every buffer, including the error buffer of
//!   [`RkOutput`]; no allocation crosses the boundary.
//! - Descriptor tables ([`RkPlugin`] and everything it points to) are static data of the
//!   plugin, immutable for the life of the process (plugins are never unloaded).

#![allow(unsafe_code)]

use std::ffi::c_void;
use std::mem::{align_of, offset_of, size_of};

/// The layout of one field, for the header test.
#[doc(hidden)]
#[derive(Clone, Copy, Debug)]
pub struct FieldLayout {
    /// The field's name (identical in C).
    pub name: &'static str,
    /// Its offset in bytes.
    pub offset: usize,
    /// Its size in bytes.
    pub size: usize,
}

/// The layout of one struct, for the header test.
#[doc(hidden)]
#[derive(Clone, Copy, Debug)]
pub struct StructLayout {
    /// The struct's name (identical in C).
    pub name: &'static str,
    /// `sizeof`.
    pub size: usize,
    /// `alignof`.
    pub align: usize,
    /// Every field, in declaration order.
    pub fields: &'static [FieldLayout],
}

/// Declares a `#[repr(C)]` struct and records its layout in `LAYOUT`.
macro_rules! abi_struct {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$fmeta:meta])* pub $field:ident : $ty:ty ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty ),*
        }

        impl $name {
            /// The struct's layout, field by field (compared with the C header by a test).
            #[doc(hidden)]
            pub const LAYOUT: StructLayout = StructLayout {
                name: stringify!($name),
                size: size_of::<$name>(),
                align: align_of::<$name>(),
                fields: &[$(FieldLayout {
                    name: stringify!($field),
                    offset: offset_of!($name, $field),
                    size: size_of::<$ty>(),
                }),*],
            };
        }
    };
}

/// Declares the ABI's constants and records them in `CONSTANTS`.
macro_rules! abi_consts {
    ($( $(#[$meta:meta])* $name:ident : $ty:ty = $value:expr; )*) => {
        $( $(#[$meta])* pub const $name: $ty = $value; )*

        /// Every constant of the ABI with its value (compared with the C header by a test).
        #[doc(hidden)]
        pub const CONSTANTS: &[(&str, u64)] = &[$((stringify!($name), $name as u64)),*];
    };
}

abi_consts! {
    /// The ABI's major version: a plugin built for another major is refused.
    REEFKNOT_ABI_MAJOR: u32 = 1;
    /// The ABI's minor version: a host runs plugins of its major and any minor up to its own.
    REEFKNOT_ABI_MINOR: u32 = 1;

    /// The call succeeded and wrote its output.
    RK_STATUS_OK: u32 = 0;
    /// The call failed; the error buffer holds a message.
    RK_STATUS_ERROR: u32 = 1;
    /// The call panicked (caught by the SDK); the error buffer holds the panic message.
    RK_STATUS_PANIC: u32 = 2;

    /// The stack of `T` task vectors.
    RK_TYPE_STACK: u32 = 1;
    /// The stack plus one elected sign per element.
    RK_TYPE_VOTED: u32 = 2;
    /// One merged delta.
    RK_TYPE_DELTA: u32 = 3;

    /// Signature bit: `Stack→Stack`.
    RK_SIG_STACK_STACK: u32 = 1 << 0;
    /// Signature bit: `Stack→Voted`.
    RK_SIG_STACK_VOTED: u32 = 1 << 1;
    /// Signature bit: `Voted→Delta`.
    RK_SIG_VOTED_DELTA: u32 = 1 << 2;
    /// Signature bit: `Stack→Delta`.
    RK_SIG_STACK_DELTA: u32 = 1 << 3;
    /// Signature bit: `Delta→Delta`.
    RK_SIG_DELTA_DELTA: u32 = 1 << 4;
    /// Signature bit: `Voted→Voted` (ABI 1.1): rewrites the task vectors and the
    /// elected signs.
    RK_SIG_VOTED_VOTED: u32 = 1 << 5;

    /// Operator flag: element `j` of the output depends only on element `j` of the
    /// inputs (and on `offset + j`), so the host may call it on any chunk of a tensor.
    /// Without it, the host gathers the whole tensor and makes one call.
    RK_OP_ELEMENTWISE: u32 = 1 << 0;
    /// Operator flag: the call reads the base model's values (`RkCall.base`).
    RK_OP_NEEDS_BASE: u32 = 1 << 1;
    /// Operator flag: the call reads each model's diagonal Fisher (`RkCall.fisher`).
    RK_OP_NEEDS_FISHER: u32 = 1 << 2;
    /// Operator flag (ABI 1.1): a `Delta→Delta` call also reads the task vectors, as
    /// the stages before the combiner left them (`RkCall.tasks`).
    RK_OP_NEEDS_TASKS: u32 = 1 << 3;

    /// Parameter kind: a real number (also accepts `$variables` and gradients).
    RK_PARAM_NUMBER: u32 = 1;
    /// Parameter kind: one identifier among `choices`.
    RK_PARAM_CHOICE: u32 = 2;
    /// Parameter kind: `true` or `false`.
    RK_PARAM_BOOL: u32 = 3;
    /// Parameter kind: a string literal.
    RK_PARAM_TEXT: u32 = 4;

    /// Range end: no limit.
    RK_BOUND_NONE: u32 = 0;
    /// Range end: the value itself is allowed.
    RK_BOUND_INCLUSIVE: u32 = 1;
    /// Range end: the value itself is not allowed.
    RK_BOUND_EXCLUSIVE: u32 = 2;
}

/// The name of the exported function returning the plugin's [`RkAbiVersion`].
pub const SYMBOL_ABI_VERSION: &str = "reefknot_plugin_abi_version";
/// The name of the exported function returning the plugin's [`RkPlugin`] table.
pub const SYMBOL_DESCRIPTOR: &str = "reefknot_plugin_descriptor";

/// `RkAbiVersion reefknot_plugin_abi_version(void)`.
pub type RkAbiVersionFn = unsafe extern "C" fn() -> RkAbiVersion;
/// `const RkPlugin *reefknot_plugin_descriptor(void)`.
pub type RkDescriptorFn = unsafe extern "C" fn() -> *const RkPlugin;
/// An operator's entry point: reads `call`, writes `out`, returns an `RK_STATUS_*`.
///
/// It may be called from several threads at once (the host runs chunks in parallel):
/// it must be reentrant, and must not start threads of its own.
pub type RkCallFn = unsafe extern "C" fn(call: *const RkCall, out: *mut RkOutput) -> u32;

abi_struct! {
    /// A borrowed UTF-8 string: `len` bytes at `ptr`, not NUL-terminated
    /// (`ptr` may be null when `len` is 0).
    pub struct RkStr {
        /// The first byte.
        pub ptr: *const u8,
        /// The number of bytes.
        pub len: usize,
    }
}

abi_struct! {
    /// The ABI version a plugin was built against (returned by value).
    pub struct RkAbiVersion {
        /// Must equal the host's [`REEFKNOT_ABI_MAJOR`].
        pub major: u32,
        /// Must not exceed the host's [`REEFKNOT_ABI_MINOR`].
        pub minor: u32,
    }
}

abi_struct! {
    /// The plugin's table: its name (the namespace of its operators) and operators.
    pub struct RkPlugin {
        /// `sizeof(RkPlugin)` as the plugin was compiled.
        pub size: usize,
        /// The namespace: an identifier (`[A-Za-z_][A-Za-z0-9_]*`), e.g. `tall`.
        pub name: RkStr,
        /// The plugin's own version, e.g. `0.1.0` (free text, may be empty).
        pub version: RkStr,
        /// One line about the plugin (may be empty).
        pub description: RkStr,
        /// The operators: `operator_count` structs strided by their `size`.
        pub operators: *const RkOperator,
        /// How many operators (at least one).
        pub operator_count: usize,
    }
}

abi_struct! {
    /// One operator: its specification and its entry point.
    pub struct RkOperator {
        /// `sizeof(RkOperator)` as the plugin was compiled.
        pub size: usize,
        /// Its name within the plugin: an identifier, unique in the plugin.
        pub name: RkStr,
        /// One line for `reefknot ops` (not empty).
        pub summary: RkStr,
        /// Full documentation, Markdown (may be empty).
        pub doc: RkStr,
        /// The parameters in positional order: `param_count` structs strided by their `size`.
        pub params: *const RkParam,
        /// How many parameters.
        pub param_count: usize,
        /// `RK_SIG_*` bits: the ways it can be used (at least one; at most one per input type).
        pub signatures: u32,
        /// `RK_OP_*` bits.
        pub flags: u32,
        /// The entry point (must not be null).
        pub call: Option<RkCallFn>,
        /// Handed back as `RkCall.op_data` (lets one C function serve several operators).
        pub data: *const c_void,
    }
}

abi_struct! {
    /// One parameter of an operator.
    pub struct RkParam {
        /// `sizeof(RkParam)` as the plugin was compiled.
        pub size: usize,
        /// Its name, as written in `name = value`: an identifier, unique in the operator.
        pub name: RkStr,
        /// One line of documentation.
        pub doc: RkStr,
        /// `RK_PARAM_*`.
        pub kind: u32,
        /// 1 when the parameter has a default (then it may be omitted), else 0.
        pub has_default: u32,
        /// Number parameters: `RK_BOUND_*` of the lower end.
        pub min_bound: u32,
        /// Number parameters: `RK_BOUND_*` of the upper end.
        pub max_bound: u32,
        /// Number parameters: the lower end (ignored when unbounded).
        pub min: f64,
        /// Number parameters: the upper end (ignored when unbounded).
        pub max: f64,
        /// Number parameters: the default.
        pub default_number: f64,
        /// Bool parameters: the default (0 or 1).
        pub default_bool: u32,
        /// Must be 0.
        pub reserved: u32,
        /// Choice parameters: the default identifier; Text parameters: the default string.
        pub default_text: RkStr,
        /// Choice parameters: the accepted identifiers (at least one).
        pub choices: *const RkStr,
        /// How many choices.
        pub choice_count: usize,
    }
}

abi_struct! {
    /// One resolved argument, handed to the call in the operator's parameter order.
    pub struct RkArg {
        /// `sizeof(RkArg)` on the host.
        pub size: usize,
        /// The parameter's name.
        pub name: RkStr,
        /// `RK_PARAM_*`.
        pub kind: u32,
        /// Bool arguments: 0 or 1.
        pub boolean: u32,
        /// Number arguments: one value, or one per model (`number_count == models`) when
        /// a `$variable` differs between models.
        pub numbers: *const f64,
        /// How many numbers (0 for other kinds).
        pub number_count: usize,
        /// Choice arguments: the identifier; Text arguments: the string.
        pub text: RkStr,
    }
}

abi_struct! {
    /// What a call reads: borrowed views of one element range of one tensor.
    ///
    /// Every `float` pointer points at `len` values (`stack[i]` and `fisher[i]` too).
    /// Pointers an operator's type or flags do not call for are null.
    pub struct RkCall {
        /// `sizeof(RkCall)` on the host.
        pub size: usize,
        /// The tensor's name (part of the key of deterministic random streams).
        pub tensor: RkStr,
        /// The recipe's seed.
        pub seed: u64,
        /// Flat index of this call's first element within the tensor: element `j` of
        /// the views is element `offset + j` of the tensor.
        pub offset: u64,
        /// Number of elements of the whole tensor.
        pub numel: u64,
        /// Number of elements of this call.
        pub len: usize,
        /// Number of fine-tuned models `T`.
        pub models: usize,
        /// `RK_TYPE_*`: what the stage receives (the signature it was checked with).
        pub input: u32,
        /// `RK_TYPE_*`: what it hands on.
        pub output: u32,
        /// `T` task vectors (Stack and Voted inputs).
        pub stack: *const *const f32,
        /// The elected sign per element, `+1` or `-1` (Voted input).
        pub sign: *const f32,
        /// The merged delta (Delta input).
        pub delta: *const f32,
        /// The base model's values (with `RK_OP_NEEDS_BASE`).
        pub base: *const f32,
        /// `T` diagonal Fishers (with `RK_OP_NEEDS_FISHER`).
        pub fisher: *const *const f32,
        /// `T` model weights `w_i` for this tensor.
        pub weights: *const f32,
        /// The resolved arguments, in parameter order, strided by their `size`.
        pub args: *const RkArg,
        /// How many arguments (the operator's parameter count).
        pub arg_count: usize,
        /// The operator's `RkOperator.data`.
        pub op_data: *const c_void,
        /// ABI 1.1: the tensor's shape, `ndim` dimensions, outermost first (a matrix
        /// is `[rows, columns]`, row-major: element `e` is row `e / columns`).
        pub shape: *const u64,
        /// ABI 1.1: the number of dimensions of `shape`.
        pub ndim: usize,
        /// ABI 1.1: the transformer layer the tensor belongs to (`model.layers.N.`),
        /// or -1 for a tensor of no layer (embeddings, final norm, LM head).
        pub layer: i64,
        /// ABI 1.1: `T` task vectors for a `Delta→Delta` call with
        /// `RK_OP_NEEDS_TASKS` (null otherwise; Stack and Voted inputs use `stack`).
        pub tasks: *const *const f32,
    }
}

abi_struct! {
    /// Where a call writes: host-owned buffers of `len` values each.
    pub struct RkOutput {
        /// `sizeof(RkOutput)` on the host.
        pub size: usize,
        /// Stack output, and Voted output from a Voted input (`Voted→Voted`): `T` task
        /// vectors to write (null for `Stack→Voted`, which keeps the task vectors).
        pub stack: *const *mut f32,
        /// Voted output: the elected sign to write, `+1` or `-1` per element.
        pub sign: *mut f32,
        /// Delta output: the merged delta to write.
        pub delta: *mut f32,
        /// A buffer for an error message (UTF-8), `error_capacity` bytes.
        pub error: *mut u8,
        /// The error buffer's size in bytes.
        pub error_capacity: usize,
        /// Set by a failing call: how many bytes of the message it wrote.
        pub error_len: usize,
    }
}

/// Every struct of the ABI (compared with the C header by a test).
#[doc(hidden)]
pub const LAYOUTS: &[StructLayout] = &[
    RkStr::LAYOUT,
    RkAbiVersion::LAYOUT,
    RkPlugin::LAYOUT,
    RkOperator::LAYOUT,
    RkParam::LAYOUT,
    RkArg::LAYOUT,
    RkCall::LAYOUT,
    RkOutput::LAYOUT,
];

// SAFETY: descriptor tables are immutable static data (the ABI's contract: a plugin's
// table and everything it points to live, unchanged, as long as the process), so
// sharing references to them between threads cannot race. These impls are what let a
// plugin keep its table in a `static`.
unsafe impl Sync for RkStr {}
// SAFETY: as for `RkStr`: an immutable static descriptor.
unsafe impl Sync for RkParam {}
// SAFETY: as for `RkStr`: an immutable static descriptor; `data` is the plugin's
// static, read-only operator data and its call is reentrant by contract.
unsafe impl Sync for RkOperator {}
// SAFETY: as for `RkStr`: an immutable static descriptor.
unsafe impl Sync for RkPlugin {}

impl RkStr {
    /// The empty string.
    pub const EMPTY: RkStr = RkStr {
        ptr: std::ptr::null(),
        len: 0,
    };

    /// A view of a `'static` string (for descriptor tables).
    pub const fn new(s: &'static str) -> RkStr {
        RkStr {
            ptr: s.as_ptr(),
            len: s.len(),
        }
    }
}

impl RkAbiVersion {
    /// The version this crate describes.
    pub const CURRENT: RkAbiVersion = RkAbiVersion {
        major: REEFKNOT_ABI_MAJOR,
        minor: REEFKNOT_ABI_MINOR,
    };
}

impl RkPlugin {
    /// A plugin table over a `'static` list of operators.
    pub const fn new(
        name: &'static str,
        version: &'static str,
        description: &'static str,
        operators: &'static [RkOperator],
    ) -> RkPlugin {
        RkPlugin {
            size: size_of::<RkPlugin>(),
            name: RkStr::new(name),
            version: RkStr::new(version),
            description: RkStr::new(description),
            operators: operators.as_ptr(),
            operator_count: operators.len(),
        }
    }
}

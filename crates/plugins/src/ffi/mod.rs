//! The plugin boundary: every `unsafe` of the host lives here.
//!
//! Opening a library, calling its two exported functions, reading its descriptor
//! table into owned values (bounds, alignment and size checked before every read),
//! and calling an operator's entry point, with the crash handler of `guard` knowing
//! which call a thread is in. Everything past this module works on safe values; the
//! checks that need no pointer (UTF-8, names, ranges) are in `describe`.

#![allow(unsafe_code)]

#[cfg(unix)]
mod guard;
#[cfg(unix)]
pub(crate) mod isolate;
#[cfg(unix)]
pub use guard::{contain_crashes, Watchdog};

use std::ffi::c_void;
use std::mem::{align_of, size_of, MaybeUninit};
use std::path::Path;

use reefknot_ops::{Args, Value};
use reefknot_plugin_api::{
    RkAbiVersion, RkAbiVersionFn, RkArg, RkCall, RkCallFn, RkDescriptorFn, RkOperator, RkOutput,
    RkParam, RkPlugin, RkStr, RK_PARAM_BOOL, RK_PARAM_CHOICE, RK_PARAM_NUMBER, RK_PARAM_TEXT,
    SYMBOL_ABI_VERSION, SYMBOL_DESCRIPTOR,
};

use crate::PluginError;

/// The longest string a descriptor may hold (1 MiB): anything longer is a wild length.
const MAX_STR: usize = 1 << 20;
/// The most elements a descriptor array may hold.
const MAX_ITEMS: usize = 4096;

/// An open library that is never unloaded.
pub(crate) struct Library {
    #[cfg(unix)]
    lib: &'static libloading::os::unix::Library,
    #[cfg(not(unix))]
    lib: &'static libloading::Library,
}

/// Opens `path` (named `shown` in messages) with `RTLD_NOW | RTLD_LOCAL` (every symbol resolved now, none made
/// visible to later libraries) and leaks the handle: plugins are never unloaded, so the
/// `'static` strings and functions taken from them stay valid.
pub(crate) fn open(path: &Path, shown: &Path) -> Result<Library, PluginError> {
    #[cfg(unix)]
    let opened = {
        use libloading::os::unix::{Library as Unix, RTLD_LOCAL, RTLD_NOW};
        // SAFETY: loading runs the library's initialisers, foreign code we cannot
        // check; that is what loading a plugin means, and the user asked for this file.
        // It is never unloaded, so no finaliser runs while its code may be in use.
        unsafe { Unix::open(Some(path), RTLD_NOW | RTLD_LOCAL) }
    };
    #[cfg(not(unix))]
    // SAFETY: as above: the user asked for this library; it is never unloaded.
    let opened = unsafe { libloading::Library::new(path) };
    let lib = opened.map_err(|e| {
        // The loader's own words are in the error's source.
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            message = format!("{message}: {s}");
            source = s.source();
        }
        PluginError::Open {
            path: shown.to_path_buf(),
            message,
        }
    })?;
    Ok(Library {
        lib: Box::leak(Box::new(lib)),
    })
}

impl Library {
    /// The function `symbol`, as a pointer of type `F`.
    ///
    /// # Safety
    /// `F` must be the function pointer type the ABI gives `symbol`.
    unsafe fn function<F: Copy>(
        &self,
        path: &Path,
        symbol: &'static str,
    ) -> Result<F, PluginError> {
        // SAFETY: the caller names the symbol's ABI type; the library outlives the
        // pointer (it is never unloaded).
        let f = unsafe { self.lib.get::<F>(symbol.as_bytes()) };
        f.map(|s| *s).map_err(|_| PluginError::MissingSymbol {
            path: path.to_path_buf(),
            symbol,
        })
    }

    /// Calls `reefknot_plugin_abi_version`.
    pub(crate) fn abi_version(&self, path: &Path) -> Result<RkAbiVersion, PluginError> {
        // SAFETY: the ABI declares `RkAbiVersion reefknot_plugin_abi_version(void)`.
        let f: RkAbiVersionFn = unsafe { self.function(path, SYMBOL_ABI_VERSION) }?;
        // SAFETY: a function of no arguments returning a two-field struct by value.
        Ok(unsafe { f() })
    }

    /// Looks up `reefknot_plugin_descriptor` (before calling anything, so a library
    /// lacking either symbol is refused as not being a plugin).
    pub(crate) fn descriptor_fn(&self, path: &Path) -> Result<RkDescriptorFn, PluginError> {
        // SAFETY: the ABI declares `const RkPlugin *reefknot_plugin_descriptor(void)`.
        unsafe { self.function(path, SYMBOL_DESCRIPTOR) }
    }
}

/// A plugin's table, read out of its memory. Strings are the plugin's own bytes
/// (static data of a library that is never unloaded), not yet checked for UTF-8.
pub(crate) struct RawPlugin {
    pub name: &'static [u8],
    pub version: &'static [u8],
    pub description: &'static [u8],
    pub operators: Vec<RawOperator>,
}

/// One operator's descriptor, read.
pub(crate) struct RawOperator {
    pub name: &'static [u8],
    pub summary: &'static [u8],
    pub doc: &'static [u8],
    pub params: Vec<RawParam>,
    pub signatures: u32,
    pub flags: u32,
    pub call: Option<RkCallFn>,
    pub data: OpData,
    /// The descriptor as read (its `params` point into the plugin's static table).
    pub descriptor: Descriptor,
}

/// An operator's descriptor, as the plugin's static table holds it.
#[derive(Clone, Copy)]
pub struct Descriptor(RkOperator);

impl Descriptor {
    /// A descriptor of no parameter around `call` (tests of the `describe` rules).
    #[cfg(test)]
    pub(crate) fn of_call(call: RkCallFn) -> Descriptor {
        Descriptor(RkOperator {
            size: size_of::<RkOperator>(),
            name: RkStr::EMPTY,
            summary: RkStr::EMPTY,
            doc: RkStr::EMPTY,
            params: std::ptr::null(),
            param_count: 0,
            signatures: 0,
            flags: 0,
            call: Some(call),
            data: std::ptr::null(),
        })
    }

    /// The descriptor (for `reefknot_plugin_api::testing::Subject::new`).
    pub fn get(&self) -> &RkOperator {
        &self.0
    }
}

// SAFETY: a copy of a static, immutable descriptor of a library that is never unloaded:
// the pointers in it (strings, parameters, `data`) lead to read-only data, and its
// entry point is reentrant by contract.
unsafe impl Send for Descriptor {}
// SAFETY: as above: nothing is ever written through it.
unsafe impl Sync for Descriptor {}

/// One parameter's descriptor, read.
pub(crate) struct RawParam {
    pub name: &'static [u8],
    pub doc: &'static [u8],
    pub kind: u32,
    pub has_default: u32,
    pub min_bound: u32,
    pub max_bound: u32,
    pub min: f64,
    pub max: f64,
    pub default_number: f64,
    pub default_bool: u32,
    pub reserved: u32,
    pub default_text: &'static [u8],
    pub choices: Vec<&'static [u8]>,
}

/// An operator's `data` pointer, handed back to its calls.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OpData(*const c_void);

impl OpData {
    /// No data (operators of the Rust SDK, tests).
    #[cfg(test)]
    pub(crate) fn null() -> OpData {
        OpData(std::ptr::null())
    }
}

// SAFETY: `data` is the plugin's static, read-only operator data: the ABI requires
// calls to be reentrant, so handing it to calls on any thread is what the plugin expects.
unsafe impl Send for OpData {}
// SAFETY: as above: never written by the host, read-only for the plugin.
unsafe impl Sync for OpData {}

/// Structs of the ABI that start with their own size and are valid when zeroed.
trait Growable {
    const NAME: &'static str;
}
impl Growable for RkPlugin {
    const NAME: &'static str = "RkPlugin";
}
impl Growable for RkOperator {
    const NAME: &'static str = "RkOperator";
}
impl Growable for RkParam {
    const NAME: &'static str = "RkParam";
}

/// Reads the struct at `ptr` whose first field is its size: the bytes its size covers
/// (at most ours), the rest zero. Returns the struct and its declared size (the stride
/// of the array it may be part of).
///
/// # Safety
/// `ptr` must be null or point at a readable struct of the plugin whose `size` bytes
/// are readable.
unsafe fn read_sized<T: Growable + Copy>(ptr: *const T) -> Result<(T, usize), String> {
    if ptr.is_null() {
        return Err(format!("a null {} pointer", T::NAME));
    }
    if !(ptr as usize).is_multiple_of(align_of::<T>()) {
        return Err(format!("a misaligned {} at {ptr:p}", T::NAME));
    }
    // SAFETY: non-null and aligned; every growable struct starts with its size.
    let size = unsafe { ptr.cast::<usize>().read() };
    // This host's version 1.0 is the oldest layout of this major: no field may be missing.
    if size < size_of::<T>() {
        return Err(format!(
            "its {} declares {size} bytes, fewer than the {} of ABI 1.0",
            T::NAME,
            size_of::<T>()
        ));
    }
    let mut value = MaybeUninit::<T>::zeroed();
    // SAFETY: the plugin vouches for `size` readable bytes; we copy at most
    // `size_of::<T>()` of them into our own zeroed struct, for which all-zero is valid
    // (integers, floats, raw pointers and an optional function pointer).
    unsafe {
        std::ptr::copy_nonoverlapping(
            ptr.cast::<u8>(),
            value.as_mut_ptr().cast::<u8>(),
            size.min(size_of::<T>()),
        );
        Ok((value.assume_init(), size))
    }
}

/// Reads an array of `count` size-prefixed structs strided by their size.
///
/// # Safety
/// As [`read_sized`], for every element.
unsafe fn read_array<T: Growable + Copy>(
    ptr: *const T,
    count: usize,
    what: &str,
) -> Result<Vec<T>, String> {
    if count == 0 {
        return Ok(Vec::new());
    }
    if count > MAX_ITEMS {
        return Err(format!("{count} {what}s (at most {MAX_ITEMS})"));
    }
    // SAFETY: the caller vouches for the array.
    let (first, stride) = unsafe { read_sized(ptr) }.map_err(|e| format!("{what} 1: {e}"))?;
    let mut items = vec![first];
    for i in 1..count {
        // SAFETY: element `i` starts `i * stride` bytes in (the array's stride).
        let p = unsafe { ptr.cast::<u8>().add(i * stride).cast::<T>() };
        // SAFETY: as above.
        let (item, size) =
            unsafe { read_sized(p) }.map_err(|e| format!("{what} {}: {e}", i + 1))?;
        if size != stride {
            return Err(format!(
                "{what} {} declares {size} bytes but {what} 1 declares {stride}: every element \
                 of an array must have the same size",
                i + 1
            ));
        }
        items.push(item);
    }
    Ok(items)
}

/// The bytes of a descriptor string.
///
/// # Safety
/// `s` must view `len` readable bytes of static plugin data (or be empty).
unsafe fn static_bytes(s: RkStr, what: &str) -> Result<&'static [u8], String> {
    if s.len == 0 {
        return Ok(&[]);
    }
    if s.ptr.is_null() {
        return Err(format!("{what} is a null pointer with length {}", s.len));
    }
    if s.len > MAX_STR {
        return Err(format!(
            "{what} is {} bytes long (at most {MAX_STR})",
            s.len
        ));
    }
    // SAFETY: the plugin's static table vouches for `len` bytes at `ptr`; the library
    // is never unloaded, so they live for the rest of the process.
    Ok(unsafe { std::slice::from_raw_parts(s.ptr, s.len) })
}

/// Calls the descriptor function and reads the whole table.
pub(crate) fn read_table(descriptor: RkDescriptorFn) -> Result<RawPlugin, String> {
    // SAFETY: the version handshake passed, so the function has the ABI's type.
    let table = unsafe { descriptor() };
    // SAFETY: the plugin returns its static table (null is caught).
    let (plugin, _) = unsafe { read_sized(table) }.map_err(|e| format!("its table: {e}"))?;
    // SAFETY: strings of the static table.
    let (name, version, description) = unsafe {
        (
            static_bytes(plugin.name, "its name")?,
            static_bytes(plugin.version, "its version")?,
            static_bytes(plugin.description, "its description")?,
        )
    };
    // SAFETY: the table's operator array.
    let ops = unsafe { read_array(plugin.operators, plugin.operator_count, "operator") }?;
    let mut operators = Vec::with_capacity(ops.len());
    for (i, op) in ops.iter().enumerate() {
        let at = |e: String| format!("operator {}: {e}", i + 1);
        // SAFETY: strings and parameter array of the operator's static descriptor.
        let (name, summary, doc) = unsafe {
            (
                static_bytes(op.name, "its name").map_err(at)?,
                static_bytes(op.summary, "its summary").map_err(at)?,
                static_bytes(op.doc, "its doc").map_err(at)?,
            )
        };
        // SAFETY: as above.
        let params = unsafe { read_array(op.params, op.param_count, "parameter") }.map_err(at)?;
        let mut raw_params = Vec::with_capacity(params.len());
        for (k, p) in params.iter().enumerate() {
            let at = |e: String| format!("operator {}: parameter {}: {e}", i + 1, k + 1);
            let choices = if p.choice_count == 0 {
                Vec::new()
            } else if p.choices.is_null() {
                return Err(at(format!(
                    "its choices are a null pointer with count {}",
                    p.choice_count
                )));
            } else if p.choice_count > MAX_ITEMS {
                return Err(at(format!(
                    "{} choices (at most {MAX_ITEMS})",
                    p.choice_count
                )));
            } else {
                // SAFETY: `choice_count` RkStr at `choices` (RkStr never grows), static.
                let list = unsafe { std::slice::from_raw_parts(p.choices, p.choice_count) };
                let mut v = Vec::with_capacity(list.len());
                for (c, s) in list.iter().enumerate() {
                    // SAFETY: a static string of the table.
                    v.push(unsafe { static_bytes(*s, &format!("choice {}", c + 1)) }.map_err(at)?);
                }
                v
            };
            // SAFETY: strings of the parameter's static descriptor.
            let (pname, pdoc, default_text) = unsafe {
                (
                    static_bytes(p.name, "its name").map_err(at)?,
                    static_bytes(p.doc, "its doc").map_err(at)?,
                    static_bytes(p.default_text, "its default").map_err(at)?,
                )
            };
            raw_params.push(RawParam {
                name: pname,
                doc: pdoc,
                kind: p.kind,
                has_default: p.has_default,
                min_bound: p.min_bound,
                max_bound: p.max_bound,
                min: p.min,
                max: p.max,
                default_number: p.default_number,
                default_bool: p.default_bool,
                reserved: p.reserved,
                default_text,
                choices,
            });
        }
        operators.push(RawOperator {
            name,
            summary,
            doc,
            params: raw_params,
            signatures: op.signatures,
            flags: op.flags,
            call: op.call,
            data: OpData(op.data),
            descriptor: Descriptor(*op),
        });
    }
    Ok(RawPlugin {
        name,
        version,
        description,
        operators,
    })
}

/// The resolved arguments of one stage for one tensor, laid out as the ABI's
/// [`RkArg`] array. The numbers and strings it points at are owned here (heap data
/// does not move when the block does).
pub(crate) struct ArgBlock {
    args: Vec<RkArg>,
    _numbers: Vec<Vec<f64>>,
    _texts: Vec<String>,
}

// SAFETY: the raw pointers in `args` point into `_numbers`, `_texts` (owned, never
// mutated after construction) or `'static` strings; sharing or sending the block
// shares or sends that immutable data with it.
unsafe impl Send for ArgBlock {}
// SAFETY: as above: nothing is ever written through these pointers.
unsafe impl Sync for ArgBlock {}

/// The bytes an `RkStr` of the host's own data views.
///
/// # Safety
/// `s` must view `len` live bytes (or be empty).
unsafe fn view_bytes<'a>(s: RkStr) -> &'a [u8] {
    if s.len == 0 || s.ptr.is_null() {
        return &[];
    }
    // SAFETY: the caller vouches for `len` bytes at `ptr`.
    unsafe { std::slice::from_raw_parts(s.ptr, s.len) }
}

fn view(s: &str) -> RkStr {
    RkStr {
        ptr: s.as_ptr(),
        len: s.len(),
    }
}

impl ArgBlock {
    /// The ABI form of `args`.
    pub(crate) fn new(args: &Args) -> ArgBlock {
        let mut numbers = Vec::new();
        let mut texts = Vec::new();
        let mut out = Vec::new();
        for (name, value) in args.iter() {
            let mut arg = RkArg {
                size: size_of::<RkArg>(),
                name: view(name),
                kind: 0,
                boolean: 0,
                numbers: std::ptr::null(),
                number_count: 0,
                text: RkStr::EMPTY,
            };
            match value {
                Value::Number(xs) => {
                    arg.kind = RK_PARAM_NUMBER;
                    let xs = xs.clone();
                    arg.numbers = xs.as_ptr();
                    arg.number_count = xs.len();
                    numbers.push(xs);
                }
                Value::Choice(c) => {
                    arg.kind = RK_PARAM_CHOICE;
                    arg.text = view(c);
                }
                Value::Bool(b) => {
                    arg.kind = RK_PARAM_BOOL;
                    arg.boolean = u32::from(*b);
                }
                Value::Text(t) => {
                    arg.kind = RK_PARAM_TEXT;
                    let t = t.clone();
                    arg.text = view(&t);
                    texts.push(t);
                }
            }
            out.push(arg);
        }
        ArgBlock {
            args: out,
            _numbers: numbers,
            _texts: texts,
        }
    }

    pub(crate) fn as_ptr(&self) -> *const RkArg {
        self.args.as_ptr()
    }

    pub(crate) fn len(&self) -> usize {
        self.args.len()
    }
}

/// What a call reads: live slices of one element range (or of the whole tensor).
pub(crate) struct CallViews<'a> {
    pub tensor: &'a str,
    pub seed: u64,
    pub offset: u64,
    pub numel: u64,
    pub len: usize,
    pub models: usize,
    pub input: u32,
    pub output: u32,
    /// `models × len` task vectors, model-major.
    pub stack: Option<&'a [f32]>,
    pub sign: Option<&'a [f32]>,
    pub delta: Option<&'a [f32]>,
    pub base: Option<&'a [f32]>,
    /// `models × len` Fisher values, model-major.
    pub fisher: Option<&'a [f32]>,
    /// `models` weights.
    pub weights: &'a [f32],
    pub args: &'a ArgBlock,
    /// The tensor's shape.
    pub shape: &'a [u64],
    /// Its layer, if any.
    pub layer: Option<usize>,
    /// `models × len` task vectors, model-major, for a Delta input that reads them.
    pub tasks: Option<&'a [f32]>,
}

/// Who is being called, for the message of a crash inside the call.
pub(crate) struct Site<'a> {
    /// `plugin::operator`.
    pub operator: &'a str,
    /// The plugin's name.
    pub plugin: &'a str,
    /// The library it was loaded from.
    pub library: &'a str,
    /// The tensor being merged.
    pub tensor: &'a str,
}

/// Runs `f`, which calls into the plugin of `site` by other means than [`invoke`] (the
/// test kit), with the thread marked as inside `site`'s call for the crash handler.
pub(crate) fn guarded<R>(site: &Site<'_>, f: impl FnOnce() -> R) -> R {
    #[cfg(unix)]
    let _inside = guard::enter(site);
    #[cfg(not(unix))]
    let _ = site;
    f()
}

/// Where a call writes: one host buffer.
pub(crate) enum OutView<'a> {
    /// `models × len` task vectors, model-major.
    Stack(&'a mut [f32]),
    /// `len` signs.
    Sign(&'a mut [f32]),
    /// `len` delta values.
    Delta(&'a mut [f32]),
    /// A Voted output from a Voted input: `models × len` task vectors and `len` signs.
    Voted {
        /// The task vectors, model-major.
        stack: &'a mut [f32],
        /// The signs.
        sign: &'a mut [f32],
    },
}

/// Pointers to each model's `len` values of a model-major block (none for `None`).
fn model_ptrs<T>(block: Option<*mut T>, models: usize, len: usize) -> Vec<*mut T> {
    match block {
        // `wrapping_add` stays in bounds: the block holds `models × len` values.
        Some(p) => (0..models).map(|i| p.wrapping_add(i * len)).collect(),
        None => Vec::new(),
    }
}

fn ptr_or_null<T>(s: Option<&[T]>) -> *const T {
    s.map_or(std::ptr::null(), <[T]>::as_ptr)
}

/// Calls an operator's entry point on `views`, writing into `out`; returns the status
/// and the length of the message written into `error`.
///
/// # Panics
/// If a view's length does not match `len` and `models` (a bug of the host).
pub(crate) fn invoke(
    f: RkCallFn,
    data: OpData,
    site: &Site<'_>,
    views: &CallViews<'_>,
    out: OutView<'_>,
    error: &mut [u8],
) -> (u32, usize) {
    let (len, models) = (views.len, views.models);
    for (what, s, n) in [
        ("stack", views.stack, models * len),
        ("sign", views.sign, len),
        ("delta", views.delta, len),
        ("base", views.base, len),
        ("fisher", views.fisher, models * len),
        ("tasks", views.tasks, models * len),
    ] {
        if let Some(s) = s {
            assert_eq!(s.len(), n, "{what} view of a plugin call");
        }
    }
    assert_eq!(views.weights.len(), models, "weights of a plugin call");
    let stack = model_ptrs(views.stack.map(|s| s.as_ptr().cast_mut()), models, len);
    let fisher = model_ptrs(views.fisher.map(|s| s.as_ptr().cast_mut()), models, len);
    let tasks = model_ptrs(views.tasks.map(|s| s.as_ptr().cast_mut()), models, len);
    let (mut out_stack, mut sign, mut delta) =
        (Vec::new(), std::ptr::null_mut(), std::ptr::null_mut());
    match out {
        OutView::Stack(s) => {
            assert_eq!(s.len(), models * len, "stack output of a plugin call");
            out_stack = model_ptrs(Some(s.as_mut_ptr()), models, len);
        }
        OutView::Sign(s) => {
            assert_eq!(s.len(), len, "sign output of a plugin call");
            sign = s.as_mut_ptr();
        }
        OutView::Delta(s) => {
            assert_eq!(s.len(), len, "delta output of a plugin call");
            delta = s.as_mut_ptr();
        }
        OutView::Voted { stack, sign: s } => {
            assert_eq!(stack.len(), models * len, "stack output of a plugin call");
            assert_eq!(s.len(), len, "sign output of a plugin call");
            out_stack = model_ptrs(Some(stack.as_mut_ptr()), models, len);
            sign = s.as_mut_ptr();
        }
    }
    let nonempty = |v: &Vec<*mut f32>| {
        if v.is_empty() {
            std::ptr::null()
        } else {
            v.as_ptr()
        }
    };
    let call = RkCall {
        size: size_of::<RkCall>(),
        tensor: view(views.tensor),
        seed: views.seed,
        offset: views.offset,
        numel: views.numel,
        len,
        models,
        input: views.input,
        output: views.output,
        stack: nonempty(&stack).cast::<*const f32>(),
        sign: ptr_or_null(views.sign),
        delta: ptr_or_null(views.delta),
        base: ptr_or_null(views.base),
        fisher: nonempty(&fisher).cast::<*const f32>(),
        weights: views.weights.as_ptr(),
        args: if views.args.len() == 0 {
            std::ptr::null()
        } else {
            views.args.as_ptr()
        },
        arg_count: views.args.len(),
        op_data: data.0,
        shape: views.shape.as_ptr(),
        ndim: views.shape.len(),
        layer: views
            .layer
            .and_then(|l| i64::try_from(l).ok())
            .unwrap_or(-1),
        tasks: nonempty(&tasks).cast::<*const f32>(),
    };
    let mut output = RkOutput {
        size: size_of::<RkOutput>(),
        stack: nonempty(&out_stack).cast::<*mut f32>(),
        sign,
        delta,
        error: error.as_mut_ptr(),
        error_capacity: error.len(),
        error_len: 0,
    };
    let status = {
        // A crash inside the call is reported as this site's.
        #[cfg(unix)]
        let _inside = guard::enter(site);
        #[cfg(not(unix))]
        let _ = site;
        // SAFETY: `f` is the entry point of a validated operator of a loaded, never
        // unloaded library, called as the ABI declares. Every pointer in `call` views
        // live slices of the lengths the ABI states (checked above) for the duration of
        // the call; the output buffers are `&mut` slices, so disjoint from every input;
        // the error buffer is `error.len()` writable bytes. The plugin promises
        // reentrancy.
        unsafe { f(&call, &mut output) }
    };
    (status, output.error_len.min(error.len()))
}

#[cfg(test)]
mod tests {
    use reefknot_plugin_api::{RK_OP_ELEMENTWISE, RK_SIG_DELTA_DELTA};

    use super::*;

    extern "C" fn noop(_call: *const RkCall, _out: *mut RkOutput) -> u32 {
        0
    }

    /// An operator as a plugin of a later minor version would lay it out: a field
    /// appended, its size larger.
    #[repr(C)]
    struct Later {
        op: RkOperator,
        appended: u64,
    }

    const fn later(name: &'static str, size: usize) -> Later {
        Later {
            op: RkOperator {
                size,
                name: RkStr::new(name),
                summary: RkStr::new("s"),
                doc: RkStr::EMPTY,
                params: std::ptr::null(),
                param_count: 0,
                signatures: RK_SIG_DELTA_DELTA,
                flags: RK_OP_ELEMENTWISE,
                call: Some(noop),
                data: std::ptr::null(),
            },
            appended: u64::MAX,
        }
    }

    static LATER: [Later; 2] = [
        later("first", size_of::<Later>()),
        later("second", size_of::<Later>()),
    ];
    static LATER_PLUGIN: RkPlugin = RkPlugin {
        size: size_of::<RkPlugin>() + 8,
        name: RkStr::new("later"),
        version: RkStr::EMPTY,
        description: RkStr::EMPTY,
        operators: LATER.as_ptr().cast::<RkOperator>(),
        operator_count: 2,
    };
    extern "C" fn later_table() -> *const RkPlugin {
        &LATER_PLUGIN
    }

    #[test]
    fn arrays_are_strided_by_their_elements_size() {
        let raw = read_table(later_table).unwrap();
        let names: Vec<&[u8]> = raw.operators.iter().map(|o| o.name).collect();
        assert_eq!(names, [&b"first"[..], b"second"]);
    }

    static MIXED: [Later; 2] = [
        later("first", size_of::<Later>()),
        later("second", size_of::<RkOperator>()),
    ];
    static MIXED_PLUGIN: RkPlugin = RkPlugin {
        operators: MIXED.as_ptr().cast::<RkOperator>(),
        ..LATER_PLUGIN
    };
    extern "C" fn mixed_table() -> *const RkPlugin {
        &MIXED_PLUGIN
    }

    static SHORT: [Later; 1] = [later("short", size_of::<RkOperator>() - 8)];
    static SHORT_PLUGIN: RkPlugin = RkPlugin {
        operators: SHORT.as_ptr().cast::<RkOperator>(),
        operator_count: 1,
        ..LATER_PLUGIN
    };
    extern "C" fn short_table() -> *const RkPlugin {
        &SHORT_PLUGIN
    }

    static BAD_STR: RkPlugin = RkPlugin {
        name: RkStr {
            ptr: std::ptr::null(),
            len: 3,
        },
        ..LATER_PLUGIN
    };
    extern "C" fn bad_str_table() -> *const RkPlugin {
        &BAD_STR
    }

    extern "C" fn null_table() -> *const RkPlugin {
        std::ptr::null()
    }

    #[test]
    fn malformed_tables_are_refused_before_any_wild_read() {
        let err = |f: RkDescriptorFn| read_table(f).err().unwrap();
        assert!(
            err(mixed_table).contains("operator 2 declares"),
            "{}",
            err(mixed_table)
        );
        assert!(
            err(short_table).contains("fewer than"),
            "{}",
            err(short_table)
        );
        assert!(err(bad_str_table).contains("its name is a null pointer with length 3"));
        assert!(err(null_table).contains("a null RkPlugin pointer"));
    }

    #[test]
    fn arguments_are_laid_out_for_the_abi() {
        let args = Args::new(vec![
            ("k", Value::Number(vec![0.5])),
            ("lambda", Value::Number(vec![0.1, 0.2])),
            ("mode", Value::Choice("fast")),
            ("on", Value::Bool(true)),
            ("label", Value::Text("x".into())),
        ]);
        let block = ArgBlock::new(&args);
        assert_eq!(block.len(), 5);
        let a = &block.args;
        assert_eq!((a[0].kind, a[0].number_count), (RK_PARAM_NUMBER, 1));
        assert_eq!(a[1].number_count, 2);
        assert_eq!((a[2].kind, a[2].text.len), (RK_PARAM_CHOICE, 4));
        assert_eq!((a[3].kind, a[3].boolean), (RK_PARAM_BOOL, 1));
        assert_eq!((a[4].kind, a[4].text.len), (RK_PARAM_TEXT, 1));
        assert!(a.iter().all(|x| x.size == size_of::<RkArg>()));
    }
}

//! The plugin side of a call: safe views of the host's [`RkCall`] and [`RkOutput`],
//! and the entry point that runs an [`Operator`] behind `catch_unwind`.

#![allow(unsafe_code)]

use std::mem::size_of;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::abi::*;
use crate::sdk::{Operator, Type};

/// Borrowed views of what a call reads: one element range of one tensor.
///
/// Every slice has [`Input::len`] elements; element `j` is element
/// [`Input::offset`]` + j` of the tensor.
pub struct Input<'a> {
    call: &'a RkCall,
    input: Type,
    output: Type,
}

/// One resolved argument.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Arg<'a> {
    /// A number: one value, or one per model.
    Number(&'a [f64]),
    /// The identifier of a choice parameter.
    Choice(&'a str),
    /// A boolean.
    Bool(bool),
    /// A string.
    Text(&'a str),
}

/// The bytes of `s`.
///
/// # Safety
/// `s` must view `len` readable bytes that outlive `'a` (or be empty).
unsafe fn bytes<'a>(s: RkStr) -> &'a [u8] {
    if s.len == 0 || s.ptr.is_null() {
        &[]
    } else {
        // SAFETY: the caller guarantees `len` readable bytes at `ptr` for `'a`.
        unsafe { std::slice::from_raw_parts(s.ptr, s.len) }
    }
}

/// `len` floats at `ptr`, or a panic naming `what` when the host did not provide them.
///
/// # Safety
/// A non-null `ptr` must point at `len` floats valid for `'a`.
unsafe fn floats<'a>(ptr: *const f32, len: usize, what: &str) -> &'a [f32] {
    assert!(
        !ptr.is_null(),
        "the host gave no {what} to this call (check the operator's signature and flags)"
    );
    // SAFETY: non-null, and the caller guarantees `len` valid floats for `'a`.
    unsafe { std::slice::from_raw_parts(ptr, len) }
}

impl<'a> Input<'a> {
    /// Number of elements of this call.
    pub fn len(&self) -> usize {
        self.call.len
    }

    /// Whether the call covers no element.
    pub fn is_empty(&self) -> bool {
        self.call.len == 0
    }

    /// Number of fine-tuned models `T`.
    pub fn models(&self) -> usize {
        self.call.models
    }

    /// Flat index of the first element within the tensor.
    pub fn offset(&self) -> u64 {
        self.call.offset
    }

    /// Number of elements of the whole tensor.
    pub fn numel(&self) -> u64 {
        self.call.numel
    }

    /// The recipe's seed.
    pub fn seed(&self) -> u64 {
        self.call.seed
    }

    /// The tensor's name.
    pub fn tensor(&self) -> &'a str {
        // SAFETY: the host passes a UTF-8 name valid for the call.
        let b = unsafe { bytes(self.call.tensor) };
        std::str::from_utf8(b).unwrap_or("<tensor name is not UTF-8>")
    }

    /// The tensor's shape, outermost dimension first (row-major: a `[rows, columns]`
    /// matrix's element `e` is in row `e / columns`).
    pub fn shape(&self) -> &'a [u64] {
        if self.call.shape.is_null() || self.call.ndim == 0 {
            return &[];
        }
        // SAFETY: the host passes `ndim` dimensions at `shape`, valid for the call.
        unsafe { std::slice::from_raw_parts(self.call.shape, self.call.ndim) }
    }

    /// The tensor as a matrix: (rows, columns), the outermost dimension and the
    /// product of the others ((1, numel) for a scalar).
    pub fn matrix(&self) -> (u64, u64) {
        match self.shape() {
            [] => (1, self.call.numel),
            [rows, ..] if *rows == 0 => (0, 0),
            [rows, ..] => (*rows, self.call.numel / rows),
        }
    }

    /// The transformer layer of the tensor (`model.layers.N.` gives `N`), or `None`
    /// for a tensor of no layer (embeddings, the final norm, the LM head).
    pub fn layer(&self) -> Option<u64> {
        u64::try_from(self.call.layer).ok()
    }

    /// Task vector `i` in a `Delta→Delta` call with `Flags::NEEDS_TASKS`, as the
    /// stages before the combiner left them.
    pub fn task(&self, i: usize) -> &'a [f32] {
        assert!(i < self.call.models, "model {i} of {}", self.call.models);
        assert!(
            !self.call.tasks.is_null(),
            "the host gave no task vectors to this Delta call (Flags::NEEDS_TASKS)"
        );
        // SAFETY: `tasks` holds `models` pointers to `len` floats each, valid for the call.
        unsafe { floats(*self.call.tasks.add(i), self.call.len, "task vector") }
    }

    /// What the stage receives.
    pub fn input_type(&self) -> Type {
        self.input
    }

    /// What the stage hands on.
    pub fn output_type(&self) -> Type {
        self.output
    }

    /// Task vector `i` (Stack and Voted inputs).
    ///
    /// # Panics
    /// If `i >= models()` or the stage's input is a Delta.
    pub fn model(&self, i: usize) -> &'a [f32] {
        assert!(i < self.call.models, "model {i} of {}", self.call.models);
        assert!(
            !self.call.stack.is_null(),
            "the host gave no task vectors to this call: the stage receives a {:?}",
            self.input
        );
        // SAFETY: `stack` holds `models` pointers to `len` floats each, valid for the call.
        unsafe { floats(*self.call.stack.add(i), self.call.len, "task vector") }
    }

    /// The elected signs, `+1` or `-1` (Voted input).
    pub fn sign(&self) -> &'a [f32] {
        // SAFETY: a non-null `sign` points at `len` floats valid for the call.
        unsafe { floats(self.call.sign, self.call.len, "elected sign (Voted input)") }
    }

    /// The merged delta (Delta input).
    pub fn delta(&self) -> &'a [f32] {
        // SAFETY: a non-null `delta` points at `len` floats valid for the call.
        unsafe { floats(self.call.delta, self.call.len, "merged delta (Delta input)") }
    }

    /// The base model's values (operators with `Flags::NEEDS_BASE`).
    pub fn base(&self) -> &'a [f32] {
        // SAFETY: a non-null `base` points at `len` floats valid for the call.
        unsafe {
            floats(
                self.call.base,
                self.call.len,
                "base values (Flags::NEEDS_BASE)",
            )
        }
    }

    /// Model `i`'s diagonal Fisher (operators with `Flags::NEEDS_FISHER`).
    pub fn fisher(&self, i: usize) -> &'a [f32] {
        assert!(i < self.call.models, "model {i} of {}", self.call.models);
        assert!(
            !self.call.fisher.is_null(),
            "the host gave no Fisher values to this call (Flags::NEEDS_FISHER)"
        );
        // SAFETY: `fisher` holds `models` pointers to `len` floats each, valid for the call.
        unsafe { floats(*self.call.fisher.add(i), self.call.len, "Fisher values") }
    }

    /// The models' weights `w_i` for this tensor.
    pub fn weights(&self) -> &'a [f32] {
        // SAFETY: a non-null `weights` points at `models` floats valid for the call.
        unsafe { floats(self.call.weights, self.call.models, "model weights") }
    }

    /// The argument of parameter `name`, if the operator declares it.
    pub fn arg(&self, name: &str) -> Option<Arg<'a>> {
        let count = self.call.arg_count;
        if count == 0 || self.call.args.is_null() {
            return None;
        }
        // SAFETY: `args` points at `arg_count` RkArgs strided by their `size` (the
        // first field, readable whatever the host's version).
        let stride = unsafe { (*self.call.args).size };
        for i in 0..count {
            // SAFETY: element `i` lies within the host's array (see above).
            let a: &'a RkArg =
                unsafe { &*self.call.args.cast::<u8>().add(i * stride).cast::<RkArg>() };
            // SAFETY: the host's strings and numbers are valid for the call.
            let arg_name = unsafe { bytes(a.name) };
            if arg_name != name.as_bytes() {
                continue;
            }
            // SAFETY: as above.
            let text = || std::str::from_utf8(unsafe { bytes(a.text) }).unwrap_or("");
            return Some(match a.kind {
                RK_PARAM_NUMBER => Arg::Number(if a.numbers.is_null() {
                    &[]
                } else {
                    // SAFETY: `numbers` points at `number_count` doubles valid for the call.
                    unsafe { std::slice::from_raw_parts(a.numbers, a.number_count) }
                }),
                RK_PARAM_CHOICE => Arg::Choice(text()),
                RK_PARAM_BOOL => Arg::Bool(a.boolean != 0),
                _ => Arg::Text(text()),
            });
        }
        None
    }

    fn expect_arg(&self, name: &str) -> Arg<'a> {
        self.arg(name)
            .unwrap_or_else(|| panic!("the operator has no parameter `{name}`"))
    }

    /// Number parameter `name` when it is the same for every model.
    ///
    /// # Panics
    /// If there is no such number parameter, or its value differs between models
    /// (use [`Input::number_for`] for parameters that may be per model).
    pub fn number(&self, name: &str) -> f64 {
        match self.expect_arg(name) {
            Arg::Number([x]) => *x,
            Arg::Number(xs) => panic!(
                "parameter `{name}` has {} values (one per model); read it with number_for",
                xs.len()
            ),
            other => panic!("parameter `{name}` is not a number: {other:?}"),
        }
    }

    /// Number parameter `name` for model `i` (a shared value serves every model).
    pub fn number_for(&self, name: &str, i: usize) -> f64 {
        match self.expect_arg(name) {
            Arg::Number([x]) => *x,
            Arg::Number(xs) => xs[i],
            other => panic!("parameter `{name}` is not a number: {other:?}"),
        }
    }

    /// Choice parameter `name`.
    pub fn choice(&self, name: &str) -> &'a str {
        match self.expect_arg(name) {
            Arg::Choice(c) => c,
            other => panic!("parameter `{name}` is not a choice: {other:?}"),
        }
    }

    /// Boolean parameter `name`.
    pub fn boolean(&self, name: &str) -> bool {
        match self.expect_arg(name) {
            Arg::Bool(b) => b,
            other => panic!("parameter `{name}` is not a boolean: {other:?}"),
        }
    }

    /// String parameter `name`.
    pub fn text(&self, name: &str) -> &'a str {
        match self.expect_arg(name) {
            Arg::Text(t) => t,
            other => panic!("parameter `{name}` is not a string: {other:?}"),
        }
    }
}

/// The host-owned buffers a call writes, each [`Input::len`] elements long.
pub struct Output<'a> {
    out: &'a mut RkOutput,
    len: usize,
    models: usize,
    output: Type,
}

impl Output<'_> {
    /// What the stage hands on (which buffer to write).
    pub fn output_type(&self) -> Type {
        self.output
    }

    /// Task vector `i` to write (Stack output, and Voted output from a Voted input).
    pub fn model_mut(&mut self, i: usize) -> &mut [f32] {
        assert!(i < self.models, "model {i} of {}", self.models);
        assert!(
            !self.out.stack.is_null(),
            "this stage returns a {:?}, not a Stack",
            self.output
        );
        // SAFETY: `stack` holds `models` pointers to `len` writable floats, disjoint from
        // every input view, valid for the call; `&mut self` makes the borrow unique.
        unsafe {
            let p = *self.out.stack.add(i);
            assert!(!p.is_null(), "no output buffer for model {i}");
            std::slice::from_raw_parts_mut(p, self.len)
        }
    }

    /// The elected signs to write, `+1.0` or `-1.0` (Voted output).
    pub fn sign_mut(&mut self) -> &mut [f32] {
        assert!(
            !self.out.sign.is_null(),
            "this stage returns a {:?}, not a Voted",
            self.output
        );
        // SAFETY: a non-null `sign` points at `len` writable floats, disjoint from the
        // inputs, valid for the call; `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.out.sign, self.len) }
    }

    /// The merged delta to write (Delta output).
    pub fn delta_mut(&mut self) -> &mut [f32] {
        assert!(
            !self.out.delta.is_null(),
            "this stage returns a {:?}, not a Delta",
            self.output
        );
        // SAFETY: a non-null `delta` points at `len` writable floats, disjoint from the
        // inputs, valid for the call; `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.out.delta, self.len) }
    }
}

/// The text of a panic payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-text payload".to_string()
    }
}

/// Copies as much of `message` as fits into the host's error buffer, cut at a
/// character boundary.
fn write_error(out: &mut RkOutput, message: &str) {
    if out.error.is_null() || out.error_capacity == 0 {
        out.error_len = 0;
        return;
    }
    let mut n = message.len().min(out.error_capacity);
    while !message.is_char_boundary(n) {
        n -= 1;
    }
    // SAFETY: `error` points at `error_capacity` writable bytes owned by the host, and
    // `n <= error_capacity`; the message is a separate allocation.
    unsafe { std::ptr::copy_nonoverlapping(message.as_ptr(), out.error, n) };
    out.error_len = n;
}

/// Builds the views of a call, or says why the host's structs cannot be read.
///
/// # Safety
/// `call` and `out` must be null or point at the host's structs, valid for the call.
unsafe fn views<'a>(
    call: *const RkCall,
    out: &'a mut RkOutput,
) -> Result<(Input<'a>, Output<'a>), String> {
    if call.is_null() {
        return Err("the host passed a null call".into());
    }
    // SAFETY: non-null, and the caller guarantees it points at the host's RkCall; the
    // size field comes first in every version.
    let call: &'a RkCall = unsafe { &*call };
    if call.size < size_of::<RkCall>() {
        return Err(format!(
            "the host's RkCall has {} bytes, this plugin needs {}",
            call.size,
            size_of::<RkCall>()
        ));
    }
    let (Some(input), Some(output)) = (Type::from_raw(call.input), Type::from_raw(call.output))
    else {
        return Err(format!(
            "unknown stage types {} -> {}",
            call.input, call.output
        ));
    };
    let views = (
        Input {
            call,
            input,
            output,
        },
        Output {
            out,
            len: call.len,
            models: call.models,
            output,
        },
    );
    Ok(views)
}

/// The `extern "C"` entry point of operator `T`: builds the views, runs
/// [`Operator::call`] behind `catch_unwind`, and reports an error or a panic through the
/// host's error buffer. No panic leaves this function.
///
/// # Safety
/// Called by the host with pointers to its `RkCall` and `RkOutput`, as the ABI says.
pub unsafe extern "C" fn entry<T: Operator>(call: *const RkCall, out: *mut RkOutput) -> u32 {
    if out.is_null() {
        return RK_STATUS_ERROR;
    }
    // SAFETY: non-null; the host owns the RkOutput for the duration of the call.
    let out: &mut RkOutput = unsafe { &mut *out };
    if out.size < size_of::<RkOutput>() {
        return RK_STATUS_ERROR;
    }
    let result = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the host passes pointers valid for the call (the ABI's contract).
        let (input, mut output) = unsafe { views(call, &mut *out) }?;
        T::call(&input, &mut output)
    }));
    match result {
        Ok(Ok(())) => RK_STATUS_OK,
        Ok(Err(message)) => {
            write_error(out, &message);
            RK_STATUS_ERROR
        }
        Err(payload) => {
            let message = format!("panicked: {}", panic_message(&*payload));
            // Dropping a payload can itself panic; never let that unwind.
            if let Err(second) = catch_unwind(AssertUnwindSafe(move || drop(payload))) {
                std::mem::forget(second);
            }
            write_error(out, &message);
            RK_STATUS_PANIC
        }
    }
}

//! Running an operator the way reefknot calls it, from a plugin's own tests: no host,
//! no recipe, no model family, no `unsafe`.
//!
//! Describe the inputs of one tensor with a [`Case`], then [`run`] a Rust operator (or
//! [`run_raw`] any operator descriptor, a C plugin's included) on it. [`run_chunked`]
//! calls it chunk by chunk as the host does, and [`check`] runs what the host relies on:
//! the same bits whether the tensor is called whole or split (elementwise operators),
//! from run to run, every output element written, finite values, signs of ±1.
//!
//! ```
//! use reefknot_plugin_api::testing::{self, Case};
//! use reefknot_plugin_api::{Input, Operator, Output, Param, Signature};
//!
//! struct Gain;
//! impl Operator for Gain {
//!     const NAME: &'static str = "gain";
//!     const SUMMARY: &'static str = "multiply the merged delta by lambda";
//!     const SIGNATURES: &'static [Signature] = &[Signature::DeltaToDelta];
//!     const PARAMS: &'static [Param] = &[Param::number("lambda", "the factor").default(1.0)];
//!     fn call(input: &Input<'_>, output: &mut Output<'_>) -> Result<(), String> {
//!         let lambda = input.number("lambda") as f32;
//!         for (o, &d) in output.delta_mut().iter_mut().zip(input.delta()) {
//!             *o = lambda * d;
//!         }
//!         Ok(())
//!     }
//! }
//!
//! let case = Case::delta(vec![1.0, -2.0, 4.0]).number("lambda", 0.5);
//! assert_eq!(testing::run::<Gain>(&case)?.delta, [0.5, -1.0, 2.0]);
//! testing::check::<Gain>(&case)?;
//! # Ok::<(), String>(())
//! ```

#![allow(unsafe_code)]

use std::mem::size_of;

use crate::abi::*;
use crate::sdk::{Operator, Signature, Type};

/// The inputs of one call over one whole tensor, and its arguments.
#[derive(Clone, Debug)]
pub struct Case {
    input: Type,
    tensor: String,
    seed: u64,
    shape: Vec<u64>,
    layer: Option<u64>,
    stack: Vec<Vec<f32>>,
    sign: Vec<f32>,
    delta: Vec<f32>,
    base: Option<Vec<f32>>,
    fisher: Option<Vec<Vec<f32>>>,
    weights: Option<Vec<f32>>,
    args: Vec<(String, Value)>,
}

/// An argument's value.
#[derive(Clone, Debug)]
enum Value {
    Numbers(Vec<f64>),
    Choice(String),
    Bool(bool),
    Text(String),
}

impl Case {
    fn new(input: Type, numel: usize) -> Case {
        Case {
            input,
            tensor: "model.layers.0.mlp.up_proj.weight".into(),
            seed: 0,
            shape: vec![numel as u64],
            layer: Some(0),
            stack: Vec::new(),
            sign: Vec::new(),
            delta: Vec::new(),
            base: None,
            fisher: None,
            weights: None,
            args: Vec::new(),
        }
    }

    /// A Stack input: the task vectors, all of one length. Its shape is one dimension
    /// of that length until [`Case::shape`] says otherwise.
    pub fn stack(models: Vec<Vec<f32>>) -> Case {
        let n = models.first().map_or(0, Vec::len);
        assert!(
            models.iter().all(|m| m.len() == n),
            "every task vector has the same length"
        );
        Case {
            stack: models,
            ..Case::new(Type::Stack, n)
        }
    }

    /// A Voted input: the task vectors and the elected signs (+1 or -1).
    pub fn voted(models: Vec<Vec<f32>>, sign: Vec<f32>) -> Case {
        let case = Case::stack(models);
        assert_eq!(sign.len(), case.numel(), "one sign per element");
        Case {
            input: Type::Voted,
            sign,
            ..case
        }
    }

    /// A Delta input: the merged delta (of one model until [`Case::tasks`] or
    /// [`Case::weights`] says how many).
    pub fn delta(delta: Vec<f32>) -> Case {
        let n = delta.len();
        Case {
            delta,
            ..Case::new(Type::Delta, n)
        }
    }

    /// The task vectors beside a Delta input (`Flags::NEEDS_TASKS`).
    pub fn tasks(mut self, models: Vec<Vec<f32>>) -> Case {
        assert!(models.iter().all(|m| m.len() == self.numel()));
        self.stack = models;
        self
    }

    /// The tensor's name (default `model.layers.0.mlp.up_proj.weight`).
    pub fn tensor(mut self, name: &str) -> Case {
        self.tensor = name.into();
        self
    }

    /// The recipe's seed (default 0).
    pub fn seed(mut self, seed: u64) -> Case {
        self.seed = seed;
        self
    }

    /// The tensor's shape; its product must be the number of elements.
    pub fn shape(mut self, shape: &[u64]) -> Case {
        assert_eq!(
            shape.iter().product::<u64>(),
            self.numel() as u64,
            "the shape's product is the number of elements"
        );
        self.shape = shape.to_vec();
        self
    }

    /// The tensor's layer (default `Some(0)`); `None` for a tensor of no layer.
    pub fn layer(mut self, layer: Option<u64>) -> Case {
        self.layer = layer;
        self
    }

    /// The base model's values (`Flags::NEEDS_BASE`; default all zero).
    pub fn base(mut self, base: Vec<f32>) -> Case {
        assert_eq!(base.len(), self.numel());
        self.base = Some(base);
        self
    }

    /// Each model's diagonal Fisher (`Flags::NEEDS_FISHER`; default all one).
    pub fn fisher(mut self, fisher: Vec<Vec<f32>>) -> Case {
        assert!(fisher.iter().all(|f| f.len() == self.numel()));
        self.fisher = Some(fisher);
        self
    }

    /// The models' weights (default all 1).
    pub fn weights(mut self, weights: Vec<f32>) -> Case {
        self.weights = Some(weights);
        self
    }

    /// A number argument shared by every model.
    pub fn number(self, name: &str, value: f64) -> Case {
        self.numbers(name, vec![value])
    }

    /// A number argument with one value per model.
    pub fn numbers(mut self, name: &str, values: Vec<f64>) -> Case {
        self.args.push((name.into(), Value::Numbers(values)));
        self
    }

    /// A choice argument.
    pub fn choice(mut self, name: &str, value: &str) -> Case {
        self.args.push((name.into(), Value::Choice(value.into())));
        self
    }

    /// A boolean argument.
    pub fn boolean(mut self, name: &str, value: bool) -> Case {
        self.args.push((name.into(), Value::Bool(value)));
        self
    }

    /// A string argument.
    pub fn text(mut self, name: &str, value: &str) -> Case {
        self.args.push((name.into(), Value::Text(value.into())));
        self
    }

    /// The same case over a tensor of no element (shape `[0]`).
    pub fn emptied(&self) -> Case {
        let t = self.models();
        Case {
            shape: vec![0],
            stack: vec![Vec::new(); self.stack.len()],
            sign: Vec::new(),
            delta: Vec::new(),
            base: self.base.as_ref().map(|_| Vec::new()),
            fisher: self.fisher.as_ref().map(|_| vec![Vec::new(); t]),
            ..self.clone()
        }
    }

    /// Elements of the tensor.
    pub fn numel(&self) -> usize {
        match self.input {
            Type::Delta => self.delta.len(),
            _ => self.stack.first().map_or(0, Vec::len),
        }
    }

    /// The number of models `T`.
    pub fn models(&self) -> usize {
        match (&self.weights, self.input) {
            (Some(w), _) => w.len(),
            (None, Type::Delta) if self.stack.is_empty() => 1,
            _ => self.stack.len(),
        }
    }
}

/// What a call wrote, over the whole tensor (buffers the stage's output type does not
/// use are empty).
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// The task vectors (Stack output, and Voted→Voted).
    pub stack: Vec<Vec<f32>>,
    /// The elected signs (Voted output).
    pub sign: Vec<f32>,
    /// The merged delta (Delta output).
    pub delta: Vec<f32>,
}

impl Outcome {
    /// Whether two outcomes hold the same bits (NaN included).
    pub fn same_bits(&self, other: &Outcome) -> bool {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
        self.stack.len() == other.stack.len()
            && self
                .stack
                .iter()
                .zip(&other.stack)
                .all(|(a, b)| bits(a) == bits(b))
            && bits(&self.sign) == bits(&other.sign)
            && bits(&self.delta) == bits(&other.delta)
    }
}

/// An operator as the host sees it: its descriptor.
#[derive(Clone, Copy)]
pub struct Subject<'a> {
    descriptor: &'a RkOperator,
    params: &'a [RkParam],
}

impl<'a> Subject<'a> {
    /// The operator of a descriptor (one of a plugin's `RkPlugin.operators`, or
    /// `RkOperator::of::<T>()`). Its parameters must be an array of this SDK's
    /// `RkParam` layout.
    pub fn new(descriptor: &'a RkOperator) -> Subject<'a> {
        let params = if descriptor.param_count == 0 || descriptor.params.is_null() {
            &[][..]
        } else {
            // SAFETY: a descriptor's `params` points at `param_count` parameters (the
            // ABI's contract for static descriptor tables).
            unsafe { std::slice::from_raw_parts(descriptor.params, descriptor.param_count) }
        };
        Subject { descriptor, params }
    }

    fn signature_from(&self, input: Type) -> Result<Signature, String> {
        Signature::ALL
            .into_iter()
            .find(|s| s.input() == input && self.descriptor.signatures & s.bit() != 0)
            .ok_or_else(|| format!("the operator has no signature taking a {input:?}"))
    }

    fn elementwise(&self) -> bool {
        self.descriptor.flags & RK_OP_ELEMENTWISE != 0
    }
}

/// Runs operator `T` once over the whole tensor of `case` (as the host calls a
/// whole-tensor operator), parameters it is not given taking their defaults.
pub fn run<T: Operator>(case: &Case) -> Result<Outcome, String> {
    run_raw(Subject::new(&RkOperator::of::<T>()), case, None)
}

/// Runs `T` chunk by chunk, `chunk` elements at a time (as the host calls an
/// elementwise operator).
pub fn run_chunked<T: Operator>(case: &Case, chunk: usize) -> Result<Outcome, String> {
    run_raw(Subject::new(&RkOperator::of::<T>()), case, Some(chunk))
}

/// Checks what the host relies on for `T` on `case`; see [`check_raw`].
pub fn check<T: Operator>(case: &Case) -> Result<Outcome, String> {
    check_raw(Subject::new(&RkOperator::of::<T>()), case)
}

/// Checks what the host relies on, and returns the whole-tensor outcome:
/// - the call succeeds, twice, with the same bits (determinism), and leaves its inputs
///   as they were;
/// - every element of the output is written (the buffers are filled with a NaN
///   pattern first) and finite, and every elected sign is +1 or -1;
/// - an elementwise operator gives the same bits called whole, per element, and in
///   chunks of 7, 64 and a third of the tensor (the host's chunking must not matter);
/// - a tensor of no element (shape `[0]`) is called, and succeeds.
pub fn check_raw(subject: Subject<'_>, case: &Case) -> Result<Outcome, String> {
    let whole = run_raw(subject, case, None)?;
    let again = run_raw(subject, case, None)?;
    if !whole.same_bits(&again) {
        return Err(first_difference(
            "two runs on the same inputs differ",
            &whole,
            &again,
        ));
    }
    let written = |o: &Outcome| {
        o.stack
            .iter()
            .flatten()
            .chain(&o.sign)
            .chain(&o.delta)
            .position(|x| x.to_bits() == UNWRITTEN)
    };
    if let Some(k) = written(&whole) {
        return Err(format!(
            "output value {k} was not written (every element of the stage's output must be)"
        ));
    }
    if let Some(k) = whole
        .stack
        .iter()
        .flatten()
        .chain(&whole.sign)
        .chain(&whole.delta)
        .position(|x| !x.is_finite())
    {
        return Err(format!(
            "output value {k} is not finite: reefknot refuses NaN and infinities"
        ));
    }
    if let Some(j) = whole.sign.iter().position(|&s| s != 1.0 && s != -1.0) {
        return Err(format!(
            "the sign of element {j} is {}: elected signs are +1 or -1",
            whole.sign[j]
        ));
    }
    let n = case.numel();
    if subject.elementwise() && n > 0 {
        for chunk in [1, 7, 64, n.div_ceil(3)] {
            let split = run_raw(subject, case, Some(chunk))?;
            if !whole.same_bits(&split) {
                return Err(first_difference(
                    &format!(
                        "called in chunks of {chunk} elements it differs from one call over \
                         the tensor (an elementwise operator's element j may depend only on \
                         element j and on its index offset + j)"
                    ),
                    &whole,
                    &split,
                ));
            }
        }
    }
    run_raw(subject, &case.emptied(), None)
        .map_err(|e| format!("on a tensor of no element: {e}"))?;
    Ok(whole)
}

/// The bit pattern output buffers hold before a call: a NaN no arithmetic makes.
const UNWRITTEN: u32 = 0x7fc0_dead;

fn first_difference(what: &str, a: &Outcome, b: &Outcome) -> String {
    let flat = |o: &Outcome| -> Vec<f32> {
        o.stack
            .iter()
            .flatten()
            .chain(&o.sign)
            .chain(&o.delta)
            .copied()
            .collect()
    };
    let (a, b) = (flat(a), flat(b));
    match a
        .iter()
        .zip(&b)
        .position(|(x, y)| x.to_bits() != y.to_bits())
    {
        Some(k) => format!("{what}: output value {k} is {} then {}", a[k], b[k]),
        None => what.to_string(),
    }
}

/// Runs any operator descriptor on `case`: once over the whole tensor (`chunk: None`)
/// or in calls of `chunk` elements, concatenated.
pub fn run_raw(subject: Subject<'_>, case: &Case, chunk: Option<usize>) -> Result<Outcome, String> {
    let n = case.numel();
    let step = chunk.unwrap_or(n).max(1);
    let mut total: Option<Outcome> = None;
    let mut start = 0;
    loop {
        let end = (start + step).min(n);
        let part = run_range(subject, case, start..end)?;
        match &mut total {
            None => total = Some(part),
            Some(t) => {
                for (whole, piece) in t.stack.iter_mut().zip(part.stack) {
                    whole.extend(piece);
                }
                t.sign.extend(part.sign);
                t.delta.extend(part.delta);
            }
        }
        start = end;
        if start >= n {
            break;
        }
    }
    Ok(total.expect("at least one call"))
}

/// One call over elements `range` of the tensor.
fn run_range(
    subject: Subject<'_>,
    case: &Case,
    range: std::ops::Range<usize>,
) -> Result<Outcome, String> {
    let op = subject.descriptor;
    let signature = subject.signature_from(case.input)?;
    let call_fn = op.call.ok_or("the operator's entry point is null")?;
    let (t, len) = (case.models(), range.len());
    let flags = op.flags;
    let slice = |v: &Vec<f32>| v[range.clone()].to_vec();

    // Arguments in parameter order, defaults filled in.
    let mut numbers: Vec<Vec<f64>> = Vec::new();
    let mut texts: Vec<String> = Vec::new();
    let mut raw_args = Vec::with_capacity(subject.params.len());
    for p in subject.params {
        // SAFETY: descriptor strings are static UTF-8 of the plugin (the ABI's contract).
        let name = unsafe { str_of(p.name) };
        let given = case.args.iter().find(|(n, _)| n == name).map(|(_, v)| v);
        let value = match given {
            Some(v) => v.clone(),
            None if p.has_default != 0 => match p.kind {
                RK_PARAM_NUMBER => Value::Numbers(vec![p.default_number]),
                RK_PARAM_BOOL => Value::Bool(p.default_bool != 0),
                // SAFETY: as above.
                RK_PARAM_CHOICE => Value::Choice(unsafe { str_of(p.default_text) }.into()),
                // SAFETY: as above.
                _ => Value::Text(unsafe { str_of(p.default_text) }.into()),
            },
            None => return Err(format!("parameter `{name}` has no default: give it")),
        };
        raw_args.push((name, p.kind, value));
    }
    for (name, _) in &case.args {
        if !raw_args.iter().any(|(n, _, _)| n == name) {
            return Err(format!("the operator has no parameter `{name}`"));
        }
    }
    for (_, _, v) in &raw_args {
        match v {
            Value::Numbers(xs) => numbers.push(xs.clone()),
            Value::Choice(s) | Value::Text(s) => texts.push(s.clone()),
            Value::Bool(_) => {}
        }
    }
    let (mut ni, mut ti) = (0, 0);
    let mut args = Vec::with_capacity(raw_args.len());
    for (name, kind, v) in &raw_args {
        let mut a = RkArg {
            size: size_of::<RkArg>(),
            name: view(name),
            kind: *kind,
            boolean: 0,
            numbers: std::ptr::null(),
            number_count: 0,
            text: RkStr::EMPTY,
        };
        match v {
            Value::Numbers(_) => {
                a.numbers = numbers[ni].as_ptr();
                a.number_count = numbers[ni].len();
                ni += 1;
            }
            Value::Choice(_) | Value::Text(_) => {
                a.text = view(&texts[ti]);
                ti += 1;
            }
            Value::Bool(b) => a.boolean = u32::from(*b),
        }
        args.push(a);
    }

    // Inputs.
    // Inputs are copies the call may (wrongly) write through: their pointers are made
    // from mutable borrows, so such a write is caught below rather than undefined.
    let mut stack: Vec<Vec<f32>> = case.stack.iter().map(slice).collect();
    let stack_ptrs: Vec<*const f32> = stack
        .iter_mut()
        .map(|v| v.as_mut_ptr().cast_const())
        .collect();
    let mut sign = if case.input == Type::Voted {
        slice(&case.sign)
    } else {
        Vec::new()
    };
    let mut delta = if case.input == Type::Delta {
        slice(&case.delta)
    } else {
        Vec::new()
    };
    let mut base = case
        .base
        .as_ref()
        .map_or_else(|| vec![0.0; len], |b| b[range.clone()].to_vec());
    let mut fisher: Vec<Vec<f32>> = match &case.fisher {
        Some(f) => f.iter().map(slice).collect(),
        None => vec![vec![1.0; len]; t],
    };
    let fisher_ptrs: Vec<*const f32> = fisher
        .iter_mut()
        .map(|v| v.as_mut_ptr().cast_const())
        .collect();
    let weights = case.weights.clone().unwrap_or_else(|| vec![1.0; t]);
    let has_stack = case.input != Type::Delta;
    let has_tasks = case.input == Type::Delta && flags & RK_OP_NEEDS_TASKS != 0;
    if (has_stack || has_tasks) && stack.len() != t {
        return Err(format!(
            "{} task vectors for {t} models (give them with Case::tasks)",
            stack.len()
        ));
    }
    let ptr_or_null = |want: bool, p: *const f32| if want { p } else { std::ptr::null() };
    let call = RkCall {
        size: size_of::<RkCall>(),
        tensor: view(&case.tensor),
        seed: case.seed,
        offset: range.start as u64,
        numel: case.numel() as u64,
        len,
        models: t,
        input: signature.input().raw(),
        output: signature.output().raw(),
        stack: if has_stack {
            stack_ptrs.as_ptr()
        } else {
            std::ptr::null()
        },
        sign: ptr_or_null(case.input == Type::Voted, sign.as_mut_ptr().cast_const()),
        delta: ptr_or_null(case.input == Type::Delta, delta.as_mut_ptr().cast_const()),
        base: ptr_or_null(
            flags & RK_OP_NEEDS_BASE != 0,
            base.as_mut_ptr().cast_const(),
        ),
        fisher: if flags & RK_OP_NEEDS_FISHER != 0 {
            fisher_ptrs.as_ptr()
        } else {
            std::ptr::null()
        },
        weights: weights.as_ptr(),
        args: if args.is_empty() {
            std::ptr::null()
        } else {
            args.as_ptr()
        },
        arg_count: args.len(),
        op_data: op.data,
        shape: case.shape.as_ptr(),
        ndim: case.shape.len(),
        layer: case.layer.and_then(|l| i64::try_from(l).ok()).unwrap_or(-1),
        tasks: if has_tasks {
            stack_ptrs.as_ptr()
        } else {
            std::ptr::null()
        },
    };

    // Outputs, filled with a NaN no arithmetic makes, to find elements left unwritten.
    let fill = f32::from_bits(UNWRITTEN);
    let output = signature.output();
    let writes_stack =
        output == Type::Stack || (output == Type::Voted && signature.input() == Type::Voted);
    let mut out_stack: Vec<Vec<f32>> = if writes_stack {
        vec![vec![fill; len]; t]
    } else {
        Vec::new()
    };
    let out_stack_ptrs: Vec<*mut f32> = out_stack.iter_mut().map(|v| v.as_mut_ptr()).collect();
    let mut out_sign = if output == Type::Voted {
        vec![fill; len]
    } else {
        Vec::new()
    };
    let mut out_delta = if output == Type::Delta {
        vec![fill; len]
    } else {
        Vec::new()
    };
    let mut error = vec![0u8; 4096];
    let mut out = RkOutput {
        size: size_of::<RkOutput>(),
        stack: if writes_stack {
            out_stack_ptrs.as_ptr()
        } else {
            std::ptr::null()
        },
        sign: if output == Type::Voted {
            out_sign.as_mut_ptr()
        } else {
            std::ptr::null_mut()
        },
        delta: if output == Type::Delta {
            out_delta.as_mut_ptr()
        } else {
            std::ptr::null_mut()
        },
        error: error.as_mut_ptr(),
        error_capacity: error.len(),
        error_len: 0,
    };
    // SAFETY: the call and output are laid out as the ABI says: every pointer views a
    // live buffer of the length the ABI states (`len` floats, `t` pointers, the
    // arguments in parameter order), the outputs are disjoint from the inputs, and all
    // of them outlive the call.
    let status = unsafe { call_fn(&call, &mut out) };
    // Inputs are the host's own chunk buffers, shared with later stages: read-only.
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    let unchanged = |what: &str, now: &[f32], then: &[f32]| match bits(now)
        .iter()
        .zip(bits(then))
        .position(|(a, b)| *a != b)
    {
        None => Ok(()),
        Some(k) => Err(format!(
            "the operator wrote into its input `{what}` (element {k}): inputs are the \
                 host's buffers, read-only"
        )),
    };
    for (i, m) in stack.iter().enumerate() {
        unchanged("stack", m, &case.stack[i][range.clone()])?;
    }
    if case.input == Type::Voted {
        unchanged("sign", &sign, &case.sign[range.clone()])?;
    }
    if case.input == Type::Delta {
        unchanged("delta", &delta, &case.delta[range.clone()])?;
    }
    if let Some(b) = &case.base {
        unchanged("base", &base, &b[range.clone()])?;
    }
    if let Some(f) = &case.fisher {
        for (i, m) in fisher.iter().enumerate() {
            unchanged("fisher", m, &f[i][range.clone()])?;
        }
    }
    let message = || {
        let n = out.error_len.min(error.len());
        String::from_utf8_lossy(&error[..n]).into_owned()
    };
    match status {
        RK_STATUS_OK => Ok(Outcome {
            stack: out_stack,
            sign: out_sign,
            delta: out_delta,
        }),
        RK_STATUS_ERROR => Err(format!("the operator returned an error: {}", message())),
        RK_STATUS_PANIC => Err(format!("the operator {}", message())),
        other => Err(format!("the operator returned the unknown status {other}")),
    }
}

fn view(s: &str) -> RkStr {
    RkStr {
        ptr: s.as_ptr(),
        len: s.len(),
    }
}

/// The text of a descriptor string.
///
/// # Safety
/// `s` must view `len` bytes that live as long as the descriptor.
unsafe fn str_of<'a>(s: RkStr) -> &'a str {
    if s.len == 0 || s.ptr.is_null() {
        return "";
    }
    // SAFETY: the caller vouches for `len` bytes at `ptr`.
    let bytes = unsafe { std::slice::from_raw_parts(s.ptr, s.len) };
    std::str::from_utf8(bytes).unwrap_or("")
}

//! The execution side of an operator: binding resolved arguments to one tensor, and
//! running over chunks of it.
//!
//! The engine streams every tensor through its pipeline in chunks of a few thousand
//! elements. A [`Chunk`] holds, for one element range, the base values, the stack of
//! task vectors, the elected signs, the merged delta and (when needed) the Fisher
//! values, all in `f32`. Each stage of the pipeline is a [`Kernel`] bound to one tensor:
//! it may first ask for statistics passes over its input (the top-k threshold of
//! `trim`, the L1 norms of `dare`), then it transforms chunks in place.

use std::any::Any;
use std::fmt;
use std::marker::PhantomData;

use reefknot_lang::{OpSpec, ParamKind, Signature, Ty};

use crate::error::OpError;

/// The values of one element range of one tensor, as they flow through a pipeline.
///
/// `stack` and `fisher` are model-major: model `i` occupies `[i*len, (i+1)*len)`.
#[derive(Debug)]
pub struct Chunk<'a> {
    /// Index of this chunk within the tensor (chunks are numbered from 0 in element order).
    pub index: usize,
    /// Flat index of the chunk's first element within the tensor.
    pub offset: usize,
    /// Number of elements in the chunk.
    pub len: usize,
    /// Number of fine-tuned models `T`.
    pub models: usize,
    /// The base model's values.
    pub base: &'a [f32],
    /// The task vectors `δ_i` as transformed so far (`T × len`). Stages whose output
    /// is a Delta only read them, so a later Delta→Delta stage sees them as the
    /// combiner did (plugins with `RK_OP_NEEDS_TASKS` read them there).
    pub stack: &'a mut [f32],
    /// The elected sign per element (`+1.0` or `-1.0`), valid once the pipeline is `Voted`.
    pub sign: &'a mut [f32],
    /// The merged delta, valid once the pipeline is `Delta`.
    pub delta: &'a mut [f32],
    /// Free space of `len` elements a kernel may use during [`Kernel::apply`].
    pub scratch: &'a mut [f32],
    /// The diagonal Fisher of each model (`T × len`), when some stage needs it.
    pub fisher: Option<&'a [f32]>,
    /// The model weights `w_i` for this tensor.
    pub weights: &'a [f32],
}

impl Chunk<'_> {
    /// Where the chunk lies in its tensor.
    pub fn span(&self) -> Span {
        Span {
            index: self.index,
            offset: self.offset,
            len: self.len,
        }
    }

    /// Task vector `i` of the stack.
    pub fn model(&self, i: usize) -> &[f32] {
        &self.stack[i * self.len..(i + 1) * self.len]
    }

    /// Task vector `i` of the stack, mutably.
    pub fn model_mut(&mut self, i: usize) -> &mut [f32] {
        &mut self.stack[i * self.len..(i + 1) * self.len]
    }

    /// The Fisher values of model `i`.
    ///
    /// # Panics
    /// If the pipeline was bound without Fisher data; the engine provides it whenever
    /// an operator's [`Operator::needs_fisher`] says so.
    pub fn fisher(&self, i: usize) -> &[f32] {
        let f = self
            .fisher
            .expect("the engine loads Fisher data for every stage that declares it needs it");
        &f[i * self.len..(i + 1) * self.len]
    }
}

/// A partial result of a statistics pass (each kernel knows its concrete type).
pub type Partial = Box<dyn Any + Send>;

/// The task vectors of one tensor as its checkpoints hold them, for a statistics pass
/// that reads them itself (see [`Kernel::observes_task_vectors`]).
pub trait TaskVectors: Sync {
    /// The base's elements `[start, start + out.len())` as `f32`.
    fn base(&self, start: usize, out: &mut [f32]);
    /// Model `i`'s task vector over `[start, start + out.len())`: its values as `f32`
    /// minus `base`, the base's values over the same range.
    fn delta(&self, i: usize, start: usize, base: &[f32], out: &mut [f32]);
}

/// Where a chunk lies in its tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// Index of the chunk (as [`Chunk::index`]).
    pub index: usize,
    /// Flat index of its first element (as [`Chunk::offset`]).
    pub offset: usize,
    /// Number of elements (as [`Chunk::len`]).
    pub len: usize,
}

/// One stage of a pipeline, bound to one tensor.
///
/// Statistics passes: before `apply` runs on any chunk, the engine asks
/// [`Kernel::wants_pass`] for pass `0, 1, 2, ...`. For each pass it wants, the engine
/// streams every chunk of the stage's input (the tensor run through the earlier stages)
/// through [`Kernel::observe`], in parallel, each worker folding into its own
/// [`Kernel::partial`]; it merges the workers' partials with [`Kernel::combine`] and hands
/// the total to [`Kernel::conclude`]. Results must not depend on how chunks were
/// distributed over workers: use integer counts, or record per-chunk values keyed by
/// [`Chunk::index`] and reduce them in index order.
pub trait Kernel: Send + Sync {
    /// Whether the kernel needs statistics pass number `pass` (asked for 0, 1, ... until false).
    fn wants_pass(&self, _pass: usize) -> bool {
        false
    }

    /// Pass `pass` observes only the chunks whose index is a multiple of this (1: every
    /// chunk). A kernel that estimates from a sample asks for a larger stride.
    fn pass_stride(&self, _pass: usize) -> usize {
        1
    }

    /// A fresh accumulator for `pass`.
    fn partial(&self, _pass: usize) -> Partial {
        Box::new(())
    }

    /// Folds one chunk of the stage's input into `partial`.
    fn observe(&self, _pass: usize, _chunk: &Chunk<'_>, _partial: &mut Partial) {}

    /// Whether pass `pass` would rather read the task vectors itself, through
    /// [`Kernel::observe_task_vectors`], than receive them converted chunk by chunk.
    /// The engine asks only the first stage of a pipeline, whose input the task vectors
    /// are. Reading them in small pieces between pieces of work lets the memory traffic
    /// overlap the arithmetic; the result must be what [`Kernel::observe`] would give.
    fn observes_task_vectors(&self, _pass: usize) -> bool {
        false
    }

    /// Folds the task vectors over `span` into `partial`, reading them from `source`.
    fn observe_task_vectors(
        &self,
        _pass: usize,
        _span: Span,
        _source: &dyn TaskVectors,
        _partial: &mut Partial,
    ) {
        unreachable!("observe_task_vectors is called only when observes_task_vectors says so")
    }

    /// Merges two accumulators of the same pass.
    fn combine(&self, _pass: usize, a: Partial, _b: Partial) -> Partial {
        a
    }

    /// Takes the total of a pass.
    fn conclude(&mut self, _pass: usize, _total: Partial) -> Result<(), OpError> {
        Ok(())
    }

    /// Transforms one chunk in place: the stage's input is read from the chunk and its
    /// output written there (`stack` for Stack outputs, `sign` for Voted, `delta` for
    /// Delta). An error (a plugin operator's failure) stops the merge.
    fn apply(&self, chunk: &mut Chunk<'_>) -> Result<(), OpError>;
}

/// The value of one parameter, resolved for one tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A number: one value for all models, or one per model (`len == T`).
    Number(Vec<f64>),
    /// An identifier of a `Choice` parameter.
    Choice(&'static str),
    /// A boolean.
    Bool(bool),
    /// A string.
    Text(String),
}

/// The resolved arguments of one stage for one tensor, in the operator's parameter order.
///
/// Operators read them through [`Param`] handles found in their spec at compile time,
/// never by a name looked up at run time.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Args {
    values: Vec<(&'static str, Value)>,
}

impl Args {
    /// Arguments from `(parameter name, value)` pairs, one per parameter of the
    /// operator's spec, in `spec.params` order (as the checker and the plan binder make
    /// them).
    pub fn new(values: Vec<(&'static str, Value)>) -> Self {
        Args { values }
    }

    /// The pairs, in parameter order.
    pub fn iter(&self) -> impl Iterator<Item = &(&'static str, Value)> {
        self.values.iter()
    }

    fn value<K>(&self, p: Param<K>) -> &Value {
        match self.values.get(p.index) {
            Some((name, v)) if *name == p.name => v,
            _ => panic!(
                "arguments bound out of parameter order: `{}` is not parameter {}",
                p.name, p.index
            ),
        }
    }

    /// A number parameter, one value per model (a shared value is repeated).
    pub fn per_model(&self, p: Param<NumberParam>, models: usize) -> Vec<f64> {
        match self.value(p) {
            Value::Number(v) if v.len() == 1 => vec![v[0]; models],
            Value::Number(v) => {
                assert_eq!(v.len(), models, "per-model values for `{}`", p.name);
                v.clone()
            }
            other => unreachable!("`{}` was bound to {other:?}", p.name),
        }
    }

    /// A number parameter that is the same for every model (the first value).
    pub fn number(&self, p: Param<NumberParam>) -> f64 {
        match self.value(p) {
            Value::Number(v) => v[0],
            other => unreachable!("`{}` was bound to {other:?}", p.name),
        }
    }

    /// A choice parameter's identifier.
    pub fn choice(&self, p: Param<ChoiceParam>) -> &'static str {
        match self.value(p) {
            Value::Choice(c) => c,
            other => unreachable!("`{}` was bound to {other:?}", p.name),
        }
    }

    /// A boolean parameter.
    pub fn flag(&self, p: Param<BoolParam>) -> bool {
        match self.value(p) {
            Value::Bool(b) => *b,
            other => unreachable!("`{}` was bound to {other:?}", p.name),
        }
    }

    /// A text parameter.
    pub fn text(&self, p: Param<TextParam>) -> &str {
        match self.value(p) {
            Value::Text(t) => t,
            other => unreachable!("`{}` was bound to {other:?}", p.name),
        }
    }
}

/// A typed handle to one parameter of an operator, found in the operator's spec when
/// the program is compiled:
///
/// ```
/// use reefknot_lang::{DefaultValue, OpSpec, ParamKind, ParamSpec, Signature, Ty};
/// use reefknot_ops::{NumberParam, Param};
/// static SPEC: OpSpec = OpSpec {
///     name: "shrink",
///     aliases: &[],
///     signatures: &[Signature::new(Ty::Delta, Ty::Delta)],
///     params: &[ParamSpec {
///         name: "by",
///         kind: ParamKind::closed(0.0, 1.0),
///         default: Some(DefaultValue::Number(0.5)),
///         doc: "factor",
///     }],
///     models: reefknot_lang::Models::ANY,
///     weighted: true,
///     summary: "",
///     doc: "",
/// };
/// const BY: Param<NumberParam> = Param::number(&SPEC, "by");
/// assert_eq!(BY.name(), "by");
/// ```
///
/// A name the spec does not have, or a parameter of another kind, stops the build
/// (the constant's evaluation panics), so an operator cannot ask for an argument it did
/// not declare:
///
/// ```compile_fail
/// # use reefknot_lang::{OpSpec, ParamKind, ParamSpec, Signature, Ty};
/// # use reefknot_ops::{NumberParam, Param};
/// # static SPEC: OpSpec = OpSpec {
/// #     name: "shrink",
/// #     aliases: &[],
/// #     signatures: &[Signature::new(Ty::Delta, Ty::Delta)],
/// #     params: &[ParamSpec { name: "by", kind: ParamKind::closed(0.0, 1.0), default: None, doc: "" }],
/// #     models: reefknot_lang::Models::ANY,
/// #     weighted: true,
/// #     summary: "",
/// #     doc: "",
/// # };
/// const TYPO: Param<NumberParam> = Param::number(&SPEC, "bye");
/// # let _ = TYPO;
/// ```
pub struct Param<K> {
    index: usize,
    name: &'static str,
    kind: PhantomData<K>,
}

impl<K> Clone for Param<K> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<K> Copy for Param<K> {}

impl<K> fmt::Debug for Param<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Param({} #{})", self.name, self.index)
    }
}

/// Marks a [`Param`] of a number parameter.
#[derive(Clone, Copy, Debug)]
pub struct NumberParam;
/// Marks a [`Param`] of a choice parameter.
#[derive(Clone, Copy, Debug)]
pub struct ChoiceParam;
/// Marks a [`Param`] of a boolean parameter.
#[derive(Clone, Copy, Debug)]
pub struct BoolParam;
/// Marks a [`Param`] of a text parameter.
#[derive(Clone, Copy, Debug)]
pub struct TextParam;

const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// The kinds of parameter, as a `const fn` can compare them.
#[derive(Clone, Copy)]
enum Kind {
    Number,
    Choice,
    Bool,
    Text,
}

const fn kind_of(kind: &ParamKind) -> Kind {
    match kind {
        ParamKind::Number { .. } => Kind::Number,
        ParamKind::Choice(_) => Kind::Choice,
        ParamKind::Bool => Kind::Bool,
        ParamKind::Text => Kind::Text,
    }
}

/// The position of parameter `name` of kind `kind` in `spec`; panics (at compile time,
/// in a `const`) when there is none.
const fn position(spec: &OpSpec, name: &str, kind: Kind) -> usize {
    let mut i = 0;
    while i < spec.params.len() {
        if same(spec.params[i].name, name) {
            assert!(
                kind_of(&spec.params[i].kind) as u8 == kind as u8,
                "the parameter is of another kind"
            );
            return i;
        }
        i += 1;
    }
    panic!("the operator's spec has no parameter of this name")
}

impl<K> Param<K> {
    /// The parameter's name.
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// Its position among the operator's parameters.
    pub const fn index(&self) -> usize {
        self.index
    }

    const fn find(spec: &OpSpec, name: &str, kind: Kind) -> Self {
        let index = position(spec, name, kind);
        Param {
            index,
            name: spec.params[index].name,
            kind: PhantomData,
        }
    }
}

impl Param<NumberParam> {
    /// Number parameter `name` of `spec` (the build fails if there is none).
    pub const fn number(spec: &OpSpec, name: &str) -> Self {
        Param::find(spec, name, Kind::Number)
    }
}

impl Param<ChoiceParam> {
    /// Choice parameter `name` of `spec` (the build fails if there is none).
    pub const fn choice(spec: &OpSpec, name: &str) -> Self {
        Param::find(spec, name, Kind::Choice)
    }
}

impl Param<BoolParam> {
    /// Boolean parameter `name` of `spec` (the build fails if there is none).
    pub const fn flag(spec: &OpSpec, name: &str) -> Self {
        Param::find(spec, name, Kind::Bool)
    }
}

impl Param<TextParam> {
    /// Text parameter `name` of `spec` (the build fails if there is none).
    pub const fn text(spec: &OpSpec, name: &str) -> Self {
        Param::find(spec, name, Kind::Text)
    }
}

/// What a kernel knows about the tensor it is bound to.
#[derive(Clone, Copy, Debug)]
pub struct BindCtx<'a> {
    /// The output tensor's name (part of the key of random streams).
    pub tensor: &'a str,
    /// Its shape (row-major; the last dimension varies fastest).
    pub shape: &'a [usize],
    /// Number of elements (the product of `shape`).
    pub numel: usize,
    /// The transformer layer it belongs to, if any.
    pub layer: Option<usize>,
    /// Number of fine-tuned models `T`.
    pub models: usize,
    /// The merge's seed.
    pub seed: u64,
    /// The signature the stage was checked with.
    pub signature: Signature,
    /// Each model's Fisher mean over the whole model (for `fisher(normalize=true)`),
    /// when some stage asked for it.
    pub fisher_means: Option<&'a [f64]>,
}

impl BindCtx<'_> {
    /// Elements per row: the last dimension (a matrix's rows; a vector is one row, a
    /// scalar a row of one).
    pub fn row_len(&self) -> usize {
        row_len(self.shape)
    }

    /// Number of rows (`numel / row_len`).
    pub fn rows(&self) -> usize {
        self.numel / self.row_len().max(1)
    }
}

/// Elements per row of a tensor of `shape`: its last dimension (1 for a scalar).
pub fn row_len(shape: &[usize]) -> usize {
    shape.last().copied().unwrap_or(1)
}

/// Chunks of an operator that needs whole rows ([`Operator::whole_rows`]) hold at most
/// this many elements, unless the tensor is smaller (then it is one chunk).
pub const MAX_ROW_CHUNK: usize = 1 << 20;

/// The chunk length for a tensor of `numel` elements in rows of `row_len` whose stages
/// need whole rows in every chunk: a multiple of both `row_len` and [`BLOCK`] (so that
/// chunks still start at block boundaries), at least `requested` where that fits in
/// [`MAX_ROW_CHUNK`]; or the whole tensor as one chunk when it is no larger than that.
/// `None` when neither fits: rows whose length shares few factors of two with
/// [`BLOCK`] and a tensor too large to hold at once.
///
/// [`BLOCK`]: crate::BLOCK
pub fn row_chunk(numel: usize, row_len: usize, requested: usize) -> Option<usize> {
    let row_len = row_len.max(1);
    let gcd = |mut a: usize, mut b: usize| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    let lcm = row_len / gcd(row_len, crate::BLOCK) * crate::BLOCK;
    if lcm <= MAX_ROW_CHUNK {
        let times = (requested / lcm).clamp(1, (MAX_ROW_CHUNK / lcm).max(1));
        return Some(lcm * times);
    }
    // One chunk of the whole tensor, rounded up to whole blocks.
    (numel <= MAX_ROW_CHUNK).then(|| numel.div_ceil(crate::BLOCK).max(1) * crate::BLOCK)
}

impl BindCtx<'_> {
    /// The type the stage receives.
    pub fn input(&self) -> Ty {
        self.signature.input
    }
}

/// An operator: its specification and how to bind it to a tensor.
///
/// Built-in operators implement this and register with [`crate::builtin!`]; plugin
/// operators are adapted to it by the host.
pub trait Operator: Send + Sync {
    /// The single definition of the operator.
    fn spec(&self) -> &'static reefknot_lang::OpSpec;

    /// Whether a stage with these arguments reads the models' Fisher information.
    fn needs_fisher(&self, _args: &Args) -> bool {
        false
    }

    /// Whether a stage with these arguments needs each model's Fisher mean over the whole
    /// model (a statistics pre-pass over every tensor of the Fisher files).
    fn needs_fisher_means(&self, _args: &Args) -> bool {
        false
    }

    /// Whether a stage with these arguments needs every chunk to hold whole rows (see
    /// [`BindCtx::row_len`]): a row-wise statistic or ranking. The engine then chunks
    /// the tensor by [`row_chunk`], so a chunk's `offset` and `len` are multiples of the
    /// row length (the last chunk ends with the tensor).
    fn whole_rows(&self, _args: &Args) -> bool {
        false
    }

    /// Whether a stage with these arguments, alone in a pipeline, gives the one
    /// fine-tune's tensor unchanged (`passthrough` unscaled): the front-end then copies
    /// that tensor, bit for bit, instead of computing `θ_b + (θ_1 − θ_b)`.
    fn copies_model(&self, _args: &Args) -> bool {
        false
    }

    /// Checks arguments that are valid one by one but maybe not together, or not for
    /// this tensor (its shape, its layer). Called for every tensor when the plan is
    /// made, before any tensor data is read; `ctx.fisher_means` is `None` then.
    fn check(&self, _args: &Args, _ctx: &BindCtx<'_>) -> Result<(), OpError> {
        Ok(())
    }

    /// Binds the operator to one tensor. The arguments passed [`Operator::check`] for
    /// this tensor when the plan was made, so binding does not fail on them.
    fn bind(&self, args: &Args, ctx: &BindCtx<'_>) -> Result<Box<dyn Kernel>, OpError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BLOCK;

    #[test]
    fn row_chunks_hold_whole_rows_and_whole_blocks() {
        // Rows dividing a block: the requested chunk.
        assert_eq!(row_chunk(1 << 20, 512, 4 * BLOCK), Some(4 * BLOCK));
        // Rows of 14336 = 2¹¹·7: chunks of lcm(4096, 14336) = 28672.
        assert_eq!(row_chunk(4096 * 14336, 14336, 4 * BLOCK), Some(28672));
        assert_eq!(row_chunk(4096 * 14336, 14336, 8 * 28672), Some(8 * 28672));
        // Odd rows: the whole tensor as one chunk when it is small enough ...
        assert_eq!(row_chunk(20603, 20603, BLOCK), Some(6 * BLOCK));
        assert_eq!(row_chunk(20603, 20603, 4 * BLOCK), Some(6 * BLOCK));
        // ... or no chunking at all.
        assert_eq!(row_chunk(3 * MAX_ROW_CHUNK, 3 * 4097, BLOCK), None);
        for (numel, row) in [(37 * 512, 512), (5 * 896, 896), (9, 3), (1, 1)] {
            let c = row_chunk(numel, row, BLOCK).unwrap();
            assert!(c.is_multiple_of(BLOCK) && (c.is_multiple_of(row) || c >= numel));
        }
    }
}

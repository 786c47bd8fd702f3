//! Plugin operators as the engine sees them: an [`Operator`] that binds to a tensor as
//! a [`Kernel`] calling the plugin's entry point.
//!
//! Elementwise operators are called once per chunk, on the executor's threads, with
//! pointers to the chunk's own `f32` slices (no copy in). Outputs go to host buffers
//! disjoint from the inputs: a Voted output straight into the chunk's signs, a Delta
//! output from a Stack or Voted input straight into the chunk's delta, a Delta output
//! from a Delta input into the chunk's free space, which then becomes its delta (the
//! two buffers swap), and a Stack output into a per-thread buffer copied back.
//!
//! Whole-tensor operators (without `RK_OP_ELEMENTWISE`) ask the executor for one
//! statistics pass, which streams the stage's input through `observe`: the kernel
//! gathers it (the inputs the operator's type and flags call for), calls the plugin
//! once over the whole tensor in `conclude`, and `apply` then copies each chunk's part
//! of the result. That holds the stage's input and output for the whole tensor in
//! memory: `(T + 2) · numel · 4` bytes at most per tensor being merged (one per worker
//! thread), the one exception to reefknot's chunk-bounded memory.

use std::cell::RefCell;
use std::sync::Arc;

use reefknot_lang::{OpSpec, Ty};
use reefknot_ops::{Args, BindCtx, Chunk, Kernel, OpError, Operator, Partial};
use reefknot_plugin_api::{
    RkCallFn, RkOperator, RK_OP_ELEMENTWISE, RK_OP_NEEDS_BASE, RK_OP_NEEDS_FISHER,
    RK_OP_NEEDS_TASKS, RK_STATUS_ERROR, RK_STATUS_OK, RK_STATUS_PANIC, RK_TYPE_DELTA,
    RK_TYPE_STACK, RK_TYPE_VOTED,
};

use crate::ffi::{self, ArgBlock, CallViews, Descriptor, OpData, OutView, Site};

/// Bytes of the host's error buffer handed to every call.
const ERROR_CAPACITY: usize = 4096;

/// A plugin operator, registered as `plugin::name`.
#[derive(Clone)]
pub struct PluginOperator {
    inner: Arc<Inner>,
}

struct Inner {
    /// The plugin's name (its namespace).
    plugin: &'static str,
    /// The library it was loaded from, for messages.
    library: String,
    /// `plugin::name`.
    qualified: String,
    spec: &'static OpSpec,
    flags: u32,
    call: RkCallFn,
    data: OpData,
    descriptor: Descriptor,
    /// Where calls go under isolation (`None`: in this process).
    #[cfg(unix)]
    isolated: Option<crate::ffi::isolate::Target>,
}

impl std::fmt::Debug for PluginOperator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginOperator")
            .field("qualified", &self.inner.qualified)
            .field("flags", &self.inner.flags)
            .finish()
    }
}

impl PluginOperator {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        plugin: &'static str,
        library: &std::path::Path,
        spec: &'static OpSpec,
        flags: u32,
        call: RkCallFn,
        data: OpData,
        descriptor: Descriptor,
        #[cfg(unix)] isolated: Option<crate::ffi::isolate::Target>,
    ) -> PluginOperator {
        PluginOperator {
            inner: Arc::new(Inner {
                plugin,
                library: library.display().to_string(),
                qualified: format!("{plugin}::{}", spec.name),
                spec,
                flags,
                call,
                data,
                descriptor,
                #[cfg(unix)]
                isolated,
            }),
        }
    }

    /// `plugin::name`.
    pub fn qualified(&self) -> &str {
        &self.inner.qualified
    }

    /// Its entry point and data (the isolation helper calls them).
    #[cfg(unix)]
    pub(crate) fn entry(&self) -> (RkCallFn, OpData) {
        (self.inner.call, self.inner.data)
    }

    /// Whether its calls run in a helper process (`--isolate-plugins`).
    pub fn is_isolated(&self) -> bool {
        #[cfg(unix)]
        return self.inner.isolated.is_some();
        #[cfg(not(unix))]
        false
    }

    /// Its descriptor as the plugin declares it, for the test kit
    /// (`reefknot_plugin_api::testing::Subject::new`).
    pub fn descriptor(&self) -> &RkOperator {
        self.inner.descriptor.get()
    }

    /// Runs `f` (calls of this operator made outside a merge, by `reefknot plugin
    /// test`) so that a crash inside it is reported naming this operator and `what`.
    pub fn guarded<R>(&self, what: &str, f: impl FnOnce() -> R) -> R {
        let site = Site {
            operator: &self.inner.qualified,
            plugin: self.inner.plugin,
            library: &self.inner.library,
            tensor: what,
        };
        ffi::guarded(&site, f)
    }

    /// Whether the host may call it on chunks (`RK_OP_ELEMENTWISE`).
    pub fn is_elementwise(&self) -> bool {
        self.inner.flags & RK_OP_ELEMENTWISE != 0
    }

    /// Whether its calls read the base model (`RK_OP_NEEDS_BASE`).
    pub fn needs_base(&self) -> bool {
        self.inner.flags & RK_OP_NEEDS_BASE != 0
    }

    /// Whether its calls read the models' Fisher (`RK_OP_NEEDS_FISHER`).
    pub fn needs_fisher(&self) -> bool {
        self.inner.flags & RK_OP_NEEDS_FISHER != 0
    }
}

impl Operator for PluginOperator {
    fn spec(&self) -> &'static OpSpec {
        self.inner.spec
    }

    fn needs_fisher(&self, _args: &Args) -> bool {
        PluginOperator::needs_fisher(self)
    }

    fn bind(&self, args: &Args, ctx: &BindCtx<'_>) -> Result<Box<dyn Kernel>, OpError> {
        Ok(Box::new(PluginKernel {
            op: Arc::clone(&self.inner),
            tensor: ctx.tensor.to_string(),
            numel: ctx.numel,
            models: ctx.models,
            seed: ctx.seed,
            input: ctx.signature.input,
            output: ctx.signature.output,
            args: ArgBlock::new(args),
            shape: ctx.shape.iter().map(|&d| d as u64).collect(),
            layer: ctx.layer,
            whole: None,
        }))
    }
}

fn raw_type(ty: Ty) -> u32 {
    match ty {
        Ty::Stack => RK_TYPE_STACK,
        Ty::Voted => RK_TYPE_VOTED,
        Ty::Delta => RK_TYPE_DELTA,
    }
}

/// A plugin operator bound to one tensor.
struct PluginKernel {
    op: Arc<Inner>,
    tensor: String,
    numel: usize,
    models: usize,
    seed: u64,
    input: Ty,
    output: Ty,
    args: ArgBlock,
    /// The tensor's shape and layer (ABI 1.1).
    shape: Vec<u64>,
    layer: Option<usize>,
    /// The whole tensor's output of a whole-tensor operator, once computed (for a
    /// `Voted→Voted` stage the task vectors, then the signs).
    whole: Option<Vec<f32>>,
}

thread_local! {
    /// Per-thread output buffer of Stack→Stack stages.
    static OUT: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Per-thread error buffer handed to every call.
    static ERROR: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// One element range's inputs, as the operator's type and flags call for them.
struct Inputs<'a> {
    offset: usize,
    len: usize,
    stack: &'a [f32],
    sign: &'a [f32],
    delta: &'a [f32],
    base: &'a [f32],
    fisher: Option<&'a [f32]>,
    weights: &'a [f32],
}

/// A gathered piece of a whole-tensor operator's input.
struct Piece {
    offset: usize,
    len: usize,
    stack: Vec<f32>,
    sign: Vec<f32>,
    delta: Vec<f32>,
    base: Vec<f32>,
    fisher: Vec<f32>,
    weights: Vec<f32>,
}

impl PluginKernel {
    /// Whether a call reads the task vectors: as its input, or beside a Delta input
    /// (`RK_OP_NEEDS_TASKS`).
    fn reads_stack(&self) -> bool {
        self.input != Ty::Delta || self.op.flags & RK_OP_NEEDS_TASKS != 0
    }

    fn failure(&self, message: String) -> OpError {
        OpError::Failed {
            op: format!(
                "operator `{}` of plugin `{}`",
                self.op.qualified, self.op.plugin
            ),
            message,
        }
    }

    /// Calls the plugin on `inputs`, writing into `out`.
    fn call(&self, inputs: &Inputs<'_>, out: OutView<'_>) -> Result<(), OpError> {
        let flags = self.op.flags;
        let views = CallViews {
            tensor: &self.tensor,
            seed: self.seed,
            offset: inputs.offset as u64,
            numel: self.numel as u64,
            len: inputs.len,
            models: self.models,
            input: raw_type(self.input),
            output: raw_type(self.output),
            stack: (self.input != Ty::Delta).then_some(inputs.stack),
            tasks: (self.input == Ty::Delta && self.reads_stack()).then_some(inputs.stack),
            shape: &self.shape,
            layer: self.layer,
            sign: (self.input == Ty::Voted).then_some(inputs.sign),
            delta: (self.input == Ty::Delta).then_some(inputs.delta),
            base: (flags & RK_OP_NEEDS_BASE != 0).then_some(inputs.base),
            fisher: if flags & RK_OP_NEEDS_FISHER != 0 {
                inputs.fisher
            } else {
                None
            },
            weights: inputs.weights,
            args: &self.args,
        };
        #[cfg(unix)]
        if let Some(target) = &self.op.isolated {
            let (status, message) =
                ffi::isolate::invoke(target, &views, out).map_err(|e| self.failure(e))?;
            return self.outcome(status, message.trim().to_string());
        }
        let (status, message) = ERROR.with_borrow_mut(|error| {
            if error.len() < ERROR_CAPACITY {
                error.resize(ERROR_CAPACITY, 0);
            }
            let site = Site {
                operator: &self.op.qualified,
                plugin: self.op.plugin,
                library: &self.op.library,
                tensor: &self.tensor,
            };
            let (status, n) = ffi::invoke(self.op.call, self.op.data, &site, &views, out, error);
            let message = if status == RK_STATUS_OK {
                String::new()
            } else {
                String::from_utf8_lossy(&error[..n]).trim().to_string()
            };
            (status, message)
        });
        self.outcome(status, message)
    }

    /// The result of a call that returned `status` with `message`.
    fn outcome(&self, status: u32, message: String) -> Result<(), OpError> {
        let message = || {
            if message.is_empty() {
                "(no message)".to_string()
            } else {
                message.clone()
            }
        };
        match status {
            RK_STATUS_OK => Ok(()),
            RK_STATUS_ERROR => Err(self.failure(message())),
            RK_STATUS_PANIC => {
                let m = message();
                Err(self.failure(if m.starts_with("panicked") {
                    m
                } else {
                    format!("panicked: {m}")
                }))
            }
            other => Err(self.failure(format!(
                "returned the unknown status {other} ({})",
                message()
            ))),
        }
    }

    /// Refuses elected signs other than +1 and -1 (`offset`: the first's element).
    fn check_signs(&self, offset: usize, sign: &[f32]) -> Result<(), OpError> {
        match sign.iter().position(|&s| s != 1.0 && s != -1.0) {
            None => Ok(()),
            Some(j) => Err(self.failure(format!(
                "it elected the sign {} at element {}, but a Voted output's signs must be \
                 +1 or -1",
                sign[j],
                offset + j
            ))),
        }
    }

    /// Runs the plugin on one chunk and stores its output in the chunk.
    fn apply_chunk(&self, chunk: &mut Chunk<'_>) -> Result<(), OpError> {
        let Chunk {
            offset,
            len,
            base,
            stack,
            sign,
            delta,
            scratch,
            fisher,
            weights,
            ..
        } = chunk;
        let (offset, len, base, fisher, weights) = (*offset, *len, &**base, *fisher, *weights);
        fn with<'b>(
            (offset, len, base, fisher, weights): (
                usize,
                usize,
                &'b [f32],
                Option<&'b [f32]>,
                &'b [f32],
            ),
            stack: &'b [f32],
            sign: &'b [f32],
            delta: &'b [f32],
        ) -> Inputs<'b> {
            Inputs {
                offset,
                len,
                stack,
                sign,
                delta,
                base,
                fisher,
                weights,
            }
        }
        let common = (offset, len, base, fisher, weights);
        match (self.input, self.output) {
            // The output would overwrite the input: write into the chunk's free space and
            // make it the chunk's delta (the old delta becomes the free space).
            (Ty::Delta, Ty::Delta) => {
                let tasks: &[f32] = if self.reads_stack() { stack } else { &[] };
                self.call(&with(common, tasks, &[], delta), OutView::Delta(scratch))?;
                std::mem::swap(delta, scratch);
                Ok(())
            }
            // Both: the stack through the per-thread buffer, the signs through the
            // free space.
            (Ty::Voted, Ty::Voted) => OUT.with_borrow_mut(|buf| {
                let n = self.models * len;
                if buf.len() < n {
                    buf.resize(n, 0.0);
                }
                self.call(
                    &with(common, stack, sign, &[]),
                    OutView::Voted {
                        stack: &mut buf[..n],
                        sign: scratch,
                    },
                )?;
                self.check_signs(offset, scratch)?;
                stack.copy_from_slice(&buf[..n]);
                std::mem::swap(sign, scratch);
                Ok(())
            }),
            // The same for a stack, through a per-thread buffer copied back.
            (_, Ty::Stack) => OUT.with_borrow_mut(|buf| {
                let n = self.models * len;
                if buf.len() < n {
                    buf.resize(n, 0.0);
                }
                self.call(
                    &with(common, stack, sign, &[]),
                    OutView::Stack(&mut buf[..n]),
                )?;
                stack.copy_from_slice(&buf[..n]);
                Ok(())
            }),
            // Straight into the chunk's signs / delta: not inputs of these stages.
            (_, Ty::Voted) => {
                self.call(&with(common, stack, &[], &[]), OutView::Sign(sign))?;
                self.check_signs(offset, sign)
            }
            (_, Ty::Delta) => self.call(&with(common, stack, sign, &[]), OutView::Delta(delta)),
        }
    }
}

impl Kernel for PluginKernel {
    fn wants_pass(&self, pass: usize) -> bool {
        pass == 0 && self.op.flags & RK_OP_ELEMENTWISE == 0
    }

    fn partial(&self, _pass: usize) -> Partial {
        Box::new(Vec::<Piece>::new())
    }

    fn observe(&self, _pass: usize, chunk: &Chunk<'_>, partial: &mut Partial) {
        let pieces = partial
            .downcast_mut::<Vec<Piece>>()
            .expect("a plugin kernel's partial");
        let flags = self.op.flags;
        pieces.push(Piece {
            offset: chunk.offset,
            len: chunk.len,
            stack: if self.reads_stack() {
                chunk.stack.to_vec()
            } else {
                Vec::new()
            },
            sign: if self.input == Ty::Voted {
                chunk.sign.to_vec()
            } else {
                Vec::new()
            },
            delta: if self.input == Ty::Delta {
                chunk.delta.to_vec()
            } else {
                Vec::new()
            },
            base: if flags & RK_OP_NEEDS_BASE != 0 {
                chunk.base.to_vec()
            } else {
                Vec::new()
            },
            fisher: match chunk.fisher {
                Some(f) if flags & RK_OP_NEEDS_FISHER != 0 => f.to_vec(),
                _ => Vec::new(),
            },
            weights: chunk.weights.to_vec(),
        });
    }

    fn combine(&self, _pass: usize, a: Partial, b: Partial) -> Partial {
        let mut a = a
            .downcast::<Vec<Piece>>()
            .expect("a plugin kernel's partial");
        let b = b
            .downcast::<Vec<Piece>>()
            .expect("a plugin kernel's partial");
        a.extend(*b);
        a
    }

    fn conclude(&mut self, _pass: usize, total: Partial) -> Result<(), OpError> {
        let mut pieces = *total
            .downcast::<Vec<Piece>>()
            .expect("a plugin kernel's partial");
        pieces.sort_by_key(|p| p.offset);
        let (n, t) = (self.numel, self.models);
        let covered: usize = pieces.iter().map(|p| p.len).sum();
        assert_eq!(covered, n, "the statistics pass covers the tensor once");
        let flags = self.op.flags;
        let take = |want: bool, per_model: bool| {
            if want {
                vec![0f32; if per_model { t * n } else { n }]
            } else {
                Vec::new()
            }
        };
        let mut stack = take(self.reads_stack(), true);
        let mut sign = take(self.input == Ty::Voted, false);
        let mut delta = take(self.input == Ty::Delta, false);
        let mut base = take(flags & RK_OP_NEEDS_BASE != 0, false);
        let has_fisher = pieces.first().is_some_and(|p| !p.fisher.is_empty());
        let mut fisher = take(has_fisher, true);
        let weights = pieces
            .first()
            .map(|p| p.weights.clone())
            .unwrap_or_default();
        // Lay each piece's model-major block out model-major over the whole tensor,
        // freeing pieces as they are consumed.
        for p in pieces.drain(..) {
            let (o, l) = (p.offset, p.len);
            for (whole, part, per_model) in [
                (&mut stack, &p.stack, true),
                (&mut sign, &p.sign, false),
                (&mut delta, &p.delta, false),
                (&mut base, &p.base, false),
                (&mut fisher, &p.fisher, true),
            ] {
                if part.is_empty() {
                    continue;
                }
                if per_model {
                    for i in 0..t {
                        whole[i * n + o..i * n + o + l].copy_from_slice(&part[i * l..(i + 1) * l]);
                    }
                } else {
                    whole[o..o + l].copy_from_slice(part);
                }
            }
        }
        let inputs = Inputs {
            offset: 0,
            len: n,
            stack: &stack,
            sign: &sign,
            delta: &delta,
            base: &base,
            fisher: has_fisher.then_some(&fisher[..]),
            weights: &weights,
        };
        let size = match (self.input, self.output) {
            (_, Ty::Stack) => t * n,
            (Ty::Voted, Ty::Voted) => (t + 1) * n,
            _ => n,
        };
        let mut out = vec![0f32; size];
        let view = match (self.input, self.output) {
            (_, Ty::Stack) => OutView::Stack(&mut out),
            (Ty::Voted, Ty::Voted) => {
                let (stack, sign) = out.split_at_mut(t * n);
                OutView::Voted { stack, sign }
            }
            (_, Ty::Voted) => OutView::Sign(&mut out),
            (_, Ty::Delta) => OutView::Delta(&mut out),
        };
        self.call(&inputs, view)?;
        if self.output == Ty::Voted {
            self.check_signs(0, &out[size - n..])?;
        }
        self.whole = Some(out);
        Ok(())
    }

    fn apply(&self, chunk: &mut Chunk<'_>) -> Result<(), OpError> {
        if let Some(whole) = &self.whole {
            let (o, l, n) = (chunk.offset, chunk.len, self.numel);
            match self.output {
                Ty::Stack => {
                    for i in 0..self.models {
                        chunk.stack[i * l..(i + 1) * l]
                            .copy_from_slice(&whole[i * n + o..i * n + o + l]);
                    }
                }
                Ty::Voted => {
                    let signs = whole.len() - n;
                    chunk.sign.copy_from_slice(&whole[signs + o..signs + o + l]);
                    if self.input == Ty::Voted {
                        for i in 0..self.models {
                            chunk.stack[i * l..(i + 1) * l]
                                .copy_from_slice(&whole[i * n + o..i * n + o + l]);
                        }
                    }
                }
                Ty::Delta => chunk.delta.copy_from_slice(&whole[o..o + l]),
            }
            return Ok(());
        }
        self.apply_chunk(chunk)
    }
}

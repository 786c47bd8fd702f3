//! The streaming executor.
//!
//! Every output tensor of a [`Plan`] is produced in chunks of
//! [`MergeOptions::chunk`](crate::MergeOptions::chunk) elements. A copied tensor is
//! written as it is stored (or converted chunk by chunk). For a merged tensor a worker
//! converts each chunk of the base's and the models' values to `f32` in its own
//! scratch space, forms the task vectors, runs the tensor's stages, adds the delta to
//! the base, converts the result to the output dtype in a per-thread buffer and hands
//! it to the [`OutputSink`] (for a model folder, positional writes through a combining
//! queue). Stages that need statistics over the whole tensor (the top-k threshold of
//! `trim`, `dare`'s L1 norms) get them in earlier streaming passes that recompute the
//! stages before them. Peak memory is therefore bounded by threads × chunk (plus fixed
//! budgets: the queue of chunks waiting to be written, `dare`'s keep-masks), not by
//! tensor or model size, and because every reduction is either an integer count or
//! summed in a fixed order, the bytes written do not depend on the thread count or the
//! chunk size.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use rayon::prelude::*;
use reefknot_io::{
    first_nonfinite, first_overflow, from_f32, to_f32, to_f32_minus, Checkpoint, Dtype, ModelWriter,
};
use reefknot_lang::Ty;
use reefknot_ops::{
    row_chunk, row_len, BindCtx, Chunk, Kernel, OpError, OrderFreeSum, Partial, Span, TaskVectors,
    BLOCK,
};
use reefknot_plan::Role;

use crate::plan::{describe_stages, Job, Located, Lora, MergeJob, Operand, Plan, Stage};
use crate::{Error, ErrorKind, NonFiniteAt};

/// Receives progress reports (in elements of output written).
pub trait Progress: Sync {
    /// The merge starts; `total` elements will be written.
    fn start(&self, _total: u64) {}
    /// `n` more elements were written.
    fn advance(&self, _n: u64) {}
    /// The merge is done.
    fn finish(&self) {}
}

/// Reports nothing.
pub struct NoProgress;

impl Progress for NoProgress {}

/// Scratch space of one worker, reused across chunks and tensors.
#[derive(Default)]
struct Scratch {
    base: Vec<f32>,
    stack: Vec<f32>,
    sign: Vec<f32>,
    delta: Vec<f32>,
    spare: Vec<f32>,
    fisher: Vec<f32>,
}

impl Scratch {
    fn reserve(&mut self, len: usize, models: usize, fisher: bool) {
        fn fit(v: &mut Vec<f32>, n: usize) {
            if v.len() < n {
                v.resize(n, 0.0);
            }
        }
        fit(&mut self.base, len);
        fit(&mut self.stack, len * models);
        fit(&mut self.sign, len);
        fit(&mut self.delta, len);
        fit(&mut self.spare, len);
        if fisher {
            fit(&mut self.fisher, len * models);
        }
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
    /// A worker's output bytes for one chunk.
    static BYTES: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Where a merged tensor's bytes go.
pub trait Sink: Sync {
    /// Writes `bytes` at byte `offset` of the tensor. Called from many threads at once,
    /// for disjoint ranges.
    fn write_at(&self, offset: usize, bytes: &[u8]) -> Result<(), Error>;

    /// As [`Sink::write_at`], taking the buffer: a sink may queue it to be written
    /// later (before the merge ends) and hand back another buffer for the caller to
    /// reuse.
    fn write_owned(&self, offset: usize, bytes: Vec<u8>) -> Result<Vec<u8>, Error> {
        self.write_at(offset, &bytes)?;
        Ok(bytes)
    }
}

/// A tensor's bytes in memory (for tests and tools).
pub struct MemorySink(std::sync::Mutex<Vec<u8>>);

impl MemorySink {
    /// `len` zero bytes.
    pub fn new(len: usize) -> Self {
        MemorySink(std::sync::Mutex::new(vec![0; len]))
    }

    /// The bytes written.
    pub fn into_inner(self) -> Vec<u8> {
        self.0.into_inner().unwrap_or_else(|e| e.into_inner())
    }
}

impl Sink for MemorySink {
    fn write_at(&self, offset: usize, bytes: &[u8]) -> Result<(), Error> {
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        v[offset..offset + bytes.len()].copy_from_slice(bytes);
        Ok(())
    }
}

/// Where the tensors of a whole plan go: a model folder being written, memory, or
/// whatever else consumes merged tensors.
pub trait OutputSink: Sync {
    /// Writes `bytes` at byte `offset` of output tensor `tensor` (an index into the
    /// plan's tensors). Called from many threads at once, for disjoint ranges.
    fn write_at(&self, tensor: usize, offset: usize, bytes: &[u8]) -> Result<(), Error>;

    /// As [`OutputSink::write_at`], taking the buffer: a sink may queue it to be
    /// written later (before [`OutputSink::flush`]) and hand back another buffer for
    /// the caller to reuse.
    fn write_owned(&self, tensor: usize, offset: usize, bytes: Vec<u8>) -> Result<Vec<u8>, Error> {
        self.write_at(tensor, offset, &bytes)?;
        Ok(bytes)
    }

    /// Writes whatever is still queued; called once every tensor was produced.
    fn flush(&self) -> Result<(), Error> {
        Ok(())
    }
}

/// Every tensor of a plan in memory (for tests and tools): one buffer per output
/// tensor, in the plan's order, each `numel · dtype size` bytes.
pub struct MemoryOutput(Vec<MemorySink>);

impl MemoryOutput {
    /// Zeroed buffers for every tensor of `plan`.
    pub fn for_plan(plan: &Plan) -> Self {
        MemoryOutput(
            plan.data()
                .tensors
                .iter()
                .zip(plan.dtypes())
                .map(|(t, d)| MemorySink::new(t.numel() * d.size()))
                .collect(),
        )
    }

    /// The buffers.
    pub fn into_tensors(self) -> Vec<Vec<u8>> {
        self.0.into_iter().map(MemorySink::into_inner).collect()
    }
}

impl OutputSink for MemoryOutput {
    fn write_at(&self, tensor: usize, offset: usize, bytes: &[u8]) -> Result<(), Error> {
        self.0[tensor].write_at(offset, bytes)
    }
}

/// Tensor `index` of a plan's output.
struct TensorOf<'a> {
    out: &'a dyn OutputSink,
    index: usize,
}

impl Sink for TensorOf<'_> {
    fn write_at(&self, offset: usize, bytes: &[u8]) -> Result<(), Error> {
        self.out.write_at(self.index, offset, bytes)
    }

    fn write_owned(&self, offset: usize, bytes: Vec<u8>) -> Result<Vec<u8>, Error> {
        self.out.write_owned(self.index, offset, bytes)
    }
}

/// Writes the workers' chunks into the output one at a time, without making a worker
/// wait for another's write.
///
/// Two threads writing into one file serialise on its inode lock, and the kernel lets
/// the waiting one spin (measured: up to a sixth of a merge's CPU time). Here a worker
/// queues its chunk and, if no one is writing, writes the queue itself; if someone is,
/// it goes back to merging and the writer takes its chunk along. The queue is bounded:
/// past [`Combiner::MAX_QUEUED`] chunks a worker waits its turn to write.
pub(crate) struct Combiner<'a> {
    writer: &'a ModelWriter,
    queue: Mutex<Queue>,
    /// Held by the worker that is writing the queue.
    writing: Mutex<()>,
}

/// Chunks waiting to be written, and written buffers to reuse.
#[derive(Default)]
struct Queue {
    /// `(tensor index, byte offset, bytes)`.
    waiting: Vec<(usize, usize, Vec<u8>)>,
    spare: Vec<Vec<u8>>,
}

impl<'a> Combiner<'a> {
    /// Chunks that may wait to be written (a few MiB at most).
    const MAX_QUEUED: usize = 32;

    pub(crate) fn new(writer: &'a ModelWriter) -> Self {
        Combiner {
            writer,
            queue: Mutex::new(Queue::default()),
            writing: Mutex::new(()),
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes `bytes` now (waiting for the lock).
    fn write(&self, index: usize, offset: usize, bytes: &[u8]) -> Result<(), Error> {
        let _turn = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        self.put(index, offset, bytes)
    }

    fn put(&self, index: usize, offset: usize, bytes: &[u8]) -> Result<(), Error> {
        self.writer
            .write_at(index, offset, bytes)
            .map_err(|e| ErrorKind::Writer(e).into())
    }

    /// Queues `bytes` for byte `offset` of tensor `index`, writes the queue if no one
    /// else is, and returns a buffer to reuse.
    fn submit(&self, index: usize, offset: usize, bytes: Vec<u8>) -> Result<Vec<u8>, Error> {
        let queued = {
            let mut q = self.queue();
            q.waiting.push((index, offset, bytes));
            q.waiting.len()
        };
        let mut wait = queued > Self::MAX_QUEUED;
        loop {
            let turn = if wait {
                self.writing.lock().unwrap_or_else(|e| e.into_inner())
            } else {
                match self.writing.try_lock() {
                    Ok(turn) => turn,
                    Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
                    // Someone is writing: they will take this chunk along.
                    Err(std::sync::TryLockError::WouldBlock) => break,
                }
            };
            wait = false;
            self.drain()?;
            drop(turn);
            // A worker that queued after the last look found the lock taken and left
            // its chunk to us: look again now that it is free.
            if self.queue().waiting.is_empty() {
                break;
            }
        }
        let mut q = self.queue();
        q.spare.truncate(Self::MAX_QUEUED);
        Ok(q.spare.pop().unwrap_or_default())
    }

    /// Writes the queue until it is empty, keeping the written buffers for reuse. The
    /// caller holds the turn to write.
    fn drain(&self) -> Result<(), Error> {
        loop {
            let batch = std::mem::take(&mut self.queue().waiting);
            if batch.is_empty() {
                return Ok(());
            }
            for (index, offset, bytes) in batch {
                self.put(index, offset, &bytes)?;
                self.queue().spare.push(bytes);
            }
        }
    }
}

impl OutputSink for Combiner<'_> {
    fn write_at(&self, tensor: usize, offset: usize, bytes: &[u8]) -> Result<(), Error> {
        self.write(tensor, offset, bytes)
    }

    fn write_owned(&self, tensor: usize, offset: usize, bytes: Vec<u8>) -> Result<Vec<u8>, Error> {
        self.submit(tensor, offset, bytes)
    }

    /// Writes whatever is still queued.
    fn flush(&self) -> Result<(), Error> {
        let _turn = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        self.drain()
    }
}

/// Where a tensor's input values come from: memory-mapped checkpoints, or slices in
/// memory (tests, tools).
pub trait Source: Sync {
    /// Reads base elements `[start, start + out.len())` as `f32`.
    fn base(&self, start: usize, out: &mut [f32]);
    /// Reads model `i`'s elements `[start, start + out.len())` as `f32`.
    fn model(&self, i: usize, start: usize, out: &mut [f32]);
    /// Model `i`'s task vector over `[start, start + out.len())`: its values minus
    /// `base` (the base's values over the same range).
    fn delta(&self, i: usize, start: usize, base: &[f32], out: &mut [f32]) {
        self.model(i, start, out);
        out.iter_mut().zip(base).for_each(|(x, &b)| *x -= b);
    }
    /// Reads model `i`'s Fisher values `[start, start + out.len())` as `f32`.
    fn fisher(&self, i: usize, start: usize, out: &mut [f32]);
}

/// A [`Source`] seen as the task vectors a first stage may read itself.
struct Vectors<'a>(&'a dyn Source);

impl TaskVectors for Vectors<'_> {
    fn base(&self, start: usize, out: &mut [f32]) {
        self.0.base(start, out);
    }
    fn delta(&self, i: usize, start: usize, base: &[f32], out: &mut [f32]) {
        self.0.delta(i, start, base, out);
    }
}

/// Whether a non-finite task-vector value at `element` comes from model `i`'s own value
/// (or the base's) or from the subtraction overflowing.
fn input_or_overflow(source: &dyn Source, i: usize, element: usize, base: f32) -> NonFiniteAt {
    let mut value = [0f32];
    source.model(i, element, &mut value);
    if !base.is_finite() {
        NonFiniteAt::Base
    } else if !value[0].is_finite() {
        NonFiniteAt::Model(i)
    } else {
        NonFiniteAt::TaskVector(i)
    }
}

/// One tensor to merge: its inputs and its bound pipeline.
pub struct TensorJob<'a> {
    /// The tensor's name (keys the random streams).
    pub name: &'a str,
    /// Its shape.
    pub shape: &'a [usize],
    /// Number of elements.
    pub numel: usize,
    /// The layer it belongs to, if any.
    pub layer: Option<usize>,
    /// Number of fine-tuned models.
    pub models: usize,
    /// The input values.
    pub source: &'a dyn Source,
    /// Whether stages read Fisher values.
    pub fisher: bool,
    /// The stages with their resolved arguments.
    pub stages: &'a [Stage],
    /// The models' weights.
    pub weights: &'a [f32],
    /// The seed.
    pub seed: u64,
    /// Each model's mean Fisher value, when a stage asked for it.
    pub fisher_means: Option<&'a [f64]>,
    /// Refuse NaN and infinities: in the values read, in what the stages make and in
    /// what is written (a finite value the output dtype cannot hold included). When
    /// false they pass through as IEEE arithmetic makes them.
    pub check_finite: bool,
}

impl<'a> TensorJob<'a> {
    /// Output tensor `index` of `plan`, merged by `job` from `source`, with no Fisher
    /// means and no check of non-finite values (set those fields as needed).
    pub(crate) fn of_plan(
        plan: &'a Plan,
        index: usize,
        job: &'a MergeJob,
        source: &'a dyn Source,
    ) -> Self {
        let tensor = &plan.data().tensors[index];
        TensorJob {
            name: &tensor.name,
            shape: &tensor.shape,
            numel: tensor.numel(),
            layer: tensor.layer,
            models: job.models.len(),
            source,
            fisher: job.fisher.is_some(),
            stages: &job.stages,
            weights: &job.weights,
            seed: plan.data().seed,
            fisher_means: None,
            check_finite: false,
        }
    }

    /// The error for a non-finite `value` found at `element`.
    fn nonfinite(&self, at: NonFiniteAt, element: usize, value: f32) -> Error {
        ErrorKind::NonFinite {
            tensor: self.name.to_string(),
            element,
            value: f64::from(value),
            at,
            input: None,
        }
        .into()
    }
}

/// Everything a worker needs to produce chunks of one tensor.
struct TensorRun<'a> {
    job: &'a TensorJob<'a>,
    chunk: usize,
}

impl TensorRun<'_> {
    fn chunks(&self) -> usize {
        self.job.numel.div_ceil(self.chunk)
    }

    fn range(&self, index: usize) -> (usize, usize) {
        let start = index * self.chunk;
        (start, (start + self.chunk).min(self.job.numel))
    }

    /// Fills the worker's scratch with chunk `index` of the task vectors, runs `stages`
    /// over it, then hands the chunk to `f`.
    fn with_chunk<R>(
        &self,
        index: usize,
        stages: &[Box<dyn Kernel>],
        f: impl FnOnce(&mut Chunk<'_>) -> Result<R, Error>,
    ) -> Result<R, Error> {
        self.run_chunk(index, stages, false, false, f)
    }

    /// As [`TensorRun::with_chunk`]: when `inputs`, a NaN or infinity in the values
    /// read is an error; when `each_stage`, so is one in what a stage hands on, naming
    /// the stage.
    fn run_chunk<R>(
        &self,
        index: usize,
        stages: &[Box<dyn Kernel>],
        inputs: bool,
        each_stage: bool,
        f: impl FnOnce(&mut Chunk<'_>) -> Result<R, Error>,
    ) -> Result<R, Error> {
        let (start, end) = self.range(index);
        let len = end - start;
        let job = self.job;
        let models = job.models;
        SCRATCH.with_borrow_mut(|s| {
            s.reserve(len, models, job.fisher);
            job.source.base(start, &mut s.base[..len]);
            let base = &s.base[..len];
            for i in 0..models {
                job.source
                    .delta(i, start, base, &mut s.stack[i * len..(i + 1) * len]);
            }
            if job.fisher {
                for i in 0..models {
                    job.source
                        .fisher(i, start, &mut s.fisher[i * len..(i + 1) * len]);
                }
            }
            if inputs {
                if let Some(k) = first_nonfinite(base) {
                    return Err(job.nonfinite(NonFiniteAt::Base, start + k, base[k]));
                }
                for i in 0..models {
                    let delta = &s.stack[i * len..(i + 1) * len];
                    if let Some(k) = first_nonfinite(delta) {
                        let at = input_or_overflow(job.source, i, start + k, base[k]);
                        return Err(job.nonfinite(at, start + k, delta[k]));
                    }
                }
                if job.fisher {
                    for i in 0..models {
                        let fisher = &s.fisher[i * len..(i + 1) * len];
                        if let Some(k) = first_nonfinite(fisher) {
                            return Err(job.nonfinite(
                                NonFiniteAt::Fisher(i),
                                start + k,
                                fisher[k],
                            ));
                        }
                    }
                }
            }
            let mut chunk = Chunk {
                index,
                offset: start,
                len,
                models,
                base,
                stack: &mut s.stack[..len * models],
                sign: &mut s.sign[..len],
                delta: &mut s.delta[..len],
                scratch: &mut s.spare[..len],
                fisher: job.fisher.then(|| &s.fisher[..len * models]),
                weights: job.weights,
            };
            for (number, (k, stage)) in stages.iter().zip(job.stages).enumerate() {
                k.apply(&mut chunk).map_err(|error| ErrorKind::Operator {
                    tensor: job.name.to_string(),
                    error,
                })?;
                if each_stage {
                    // A voting stage hands on its signs with the stack it voted on.
                    let made: &[&[f32]] = match stage.signature.output {
                        Ty::Delta => &[&*chunk.delta],
                        Ty::Voted => &[&*chunk.sign, &*chunk.stack],
                        Ty::Stack => &[&*chunk.stack],
                    };
                    let bad = made
                        .iter()
                        .find_map(|m| first_nonfinite(m).map(|k| (k, m[k])));
                    if let Some((k, value)) = bad {
                        let at = NonFiniteAt::Stage {
                            number: number + 1,
                            stage: describe_stages(std::slice::from_ref(stage)),
                        };
                        return Err(job.nonfinite(at, start + k % len, value));
                    }
                }
            }
            f(&mut chunk)
        })
    }

    /// Binds the stages and runs the statistics passes they ask for.
    ///
    /// The passes do not check their input for NaN and infinities (the final pass
    /// checks every value once); when one fails and [`TensorJob::check_finite`] is on,
    /// the inputs are searched, and a NaN or infinity there is the error reported, for
    /// it is the cause (a statistic it made infinite, an operator it upset).
    fn prepare(&self) -> Result<Vec<Box<dyn Kernel>>, Error> {
        self.bind_and_observe().map_err(|e| {
            if self.job.check_finite {
                self.first_bad_input().unwrap_or(e)
            } else {
                e
            }
        })
    }

    /// The first NaN or infinity in the tensor's inputs, in element order, if any.
    fn first_bad_input(&self) -> Option<Error> {
        (0..self.chunks())
            .find_map(|index| self.run_chunk(index, &[], true, false, |_| Ok(())).err())
    }

    fn bind_and_observe(&self) -> Result<Vec<Box<dyn Kernel>>, Error> {
        let job = self.job;
        let op_err = |error| ErrorKind::Operator {
            tensor: job.name.to_string(),
            error,
        };
        let mut kernels: Vec<Box<dyn Kernel>> = Vec::with_capacity(job.stages.len());
        for stage in job.stages {
            let ctx = BindCtx {
                tensor: job.name,
                shape: job.shape,
                numel: job.numel,
                layer: job.layer,
                models: job.models,
                seed: job.seed,
                signature: stage.signature,
                fisher_means: job.fisher_means,
            };
            let mut kernel = stage.operator.bind(&stage.args, &ctx).map_err(op_err)?;
            self.run_passes(&mut *kernel, &kernels)?;
            kernels.push(kernel);
        }
        Ok(kernels)
    }

    /// Runs every statistics pass `kernel` asks for over the output of the stages
    /// `before` (the task vectors themselves when there are none).
    fn run_passes(&self, kernel: &mut dyn Kernel, before: &[Box<dyn Kernel>]) -> Result<(), Error> {
        let job = self.job;
        let mut pass = 0;
        while kernel.wants_pass(pass) {
            let k = &*kernel;
            // Contiguous groups of the chunks the pass observes, a few per worker,
            // each folded into one accumulator: bounded allocations, good balance.
            let stride = k.pass_stride(pass).max(1);
            // The first stage's input is the task vectors themselves: it may read them.
            let direct = before.is_empty() && k.observes_task_vectors(pass);
            let observed = self.chunks().div_ceil(stride);
            let groups = observed.min(4 * rayon::current_num_threads()).max(1);
            let per_group = observed.div_ceil(groups);
            let total: Partial = (0..groups)
                .into_par_iter()
                .map(|g| {
                    let mut acc = k.partial(pass);
                    for i in g * per_group..((g + 1) * per_group).min(observed) {
                        let index = i * stride;
                        if direct {
                            let (offset, end) = self.range(index);
                            let span = Span {
                                index,
                                offset,
                                len: end - offset,
                            };
                            k.observe_task_vectors(pass, span, &Vectors(job.source), &mut acc);
                            continue;
                        }
                        self.with_chunk(index, before, |chunk| {
                            k.observe(pass, chunk, &mut acc);
                            Ok(())
                        })?;
                    }
                    Ok::<_, Error>(acc)
                })
                .try_reduce_with(|a, b| Ok(k.combine(pass, a, b)))
                .unwrap_or_else(|| Ok(k.partial(pass)))?;
            kernel
                .conclude(pass, total)
                .map_err(|error| ErrorKind::Operator {
                    tensor: job.name.to_string(),
                    error,
                })?;
            pass += 1;
        }
        Ok(())
    }

    /// Runs the final pass: `θ_base + Δ` converted to `dtype`, written to `out`.
    ///
    /// With [`TensorJob::check_finite`], a NaN or an infinity in the sum, or a value
    /// `dtype` cannot hold, is an error; for a NaN or an infinity the chunk is run again,
    /// checking stage by stage, to name the stage that made it.
    fn write(
        &self,
        kernels: &[Box<dyn Kernel>],
        dtype: Dtype,
        out: &dyn Sink,
        progress: &dyn Progress,
    ) -> Result<(), Error> {
        let size = dtype.size();
        let job = self.job;
        (0..self.chunks()).into_par_iter().try_for_each(|index| {
            let mut bytes = BYTES.take();
            let result = self.run_chunk(index, kernels, job.check_finite, false, |chunk| {
                for ((o, &b), &d) in chunk
                    .scratch
                    .iter_mut()
                    .zip(chunk.base)
                    .zip(chunk.delta.iter())
                {
                    *o = b + d;
                }
                if job.check_finite {
                    if let Some(k) = first_nonfinite(chunk.scratch) {
                        let (element, value) = (chunk.offset + k, chunk.scratch[k]);
                        if chunk.delta[k].is_finite() {
                            // Finite inputs, a finite merged task vector: the sum overflowed.
                            return Err(job.nonfinite(NonFiniteAt::Sum, element, value));
                        }
                        return Ok(Err((element, value)));
                    }
                    if let Some(k) = first_overflow(dtype, chunk.scratch) {
                        let at = NonFiniteAt::Overflow { dtype };
                        return Err(job.nonfinite(at, chunk.offset + k, chunk.scratch[k]));
                    }
                }
                bytes.resize(chunk.len * size, 0);
                from_f32(dtype, chunk.scratch, &mut bytes);
                progress.advance(chunk.len as u64);
                out.write_owned(chunk.offset * size, std::mem::take(&mut bytes))
                    .map(Ok)
            })?;
            match result {
                Ok(spare) => {
                    BYTES.set(spare);
                    Ok(())
                }
                Err((element, value)) => {
                    // The inputs were finite (checked as they were read): a stage made
                    // the non-finite merged task vector. Run the chunk again to name it.
                    self.run_chunk(index, kernels, false, true, |_| Ok(()))?;
                    let stage = NonFiniteAt::Stage {
                        number: job.stages.len(),
                        stage: describe_stages(&job.stages[job.stages.len().saturating_sub(1)..]),
                    };
                    Err(job.nonfinite(stage, element, value))
                }
            }
        })
    }
}

/// Merges one tensor, writing `θ_base + Δ` as `dtype` (`numel · dtype.size()` bytes)
/// to `out`, in chunks of `chunk` elements (a multiple of [`BLOCK`]) on the current
/// rayon pool.
pub fn merge_tensor(
    job: &TensorJob<'_>,
    chunk: usize,
    dtype: Dtype,
    out: &dyn Sink,
    progress: &dyn Progress,
) -> Result<(), Error> {
    assert!(
        chunk > 0 && chunk.is_multiple_of(BLOCK),
        "chunks are whole blocks"
    );
    // Row-wise stages see whole rows in every chunk (operators refuse, when the plan is
    // readied, tensors whose rows cannot be chunked so).
    let rows = job.stages.iter().find(|s| s.operator.whole_rows(&s.args));
    let chunk = if let Some(stage) = rows {
        row_chunk(job.numel, row_len(job.shape), chunk).ok_or_else(|| ErrorKind::Operator {
            tensor: job.name.to_string(),
            error: OpError::InvalidArguments {
                op: stage.op.clone(),
                message: format!(
                    "rows of {} elements cannot be chunked in whole rows",
                    row_len(job.shape)
                ),
            },
        })?
    } else {
        chunk
    };
    let run = TensorRun { job, chunk };
    let kernels = run.prepare()?;
    run.write(&kernels, dtype, out, progress).map_err(|e| {
        // Chunks run in parallel: report the input's first bad value, not the first
        // one a worker happened to meet.
        let from_input = matches!(
            e.kind(),
            ErrorKind::NonFinite {
                at: NonFiniteAt::Base
                    | NonFiniteAt::Model(_)
                    | NonFiniteAt::TaskVector(_)
                    | NonFiniteAt::Fisher(_),
                ..
            }
        );
        if from_input {
            run.first_bad_input().unwrap_or(e)
        } else {
            e
        }
    })
}

/// Streams one tensor's task vectors through the statistics passes of `probe` (a
/// kernel that only observes, such as [`reefknot_ops::analysis::Probe`]), in chunks of
/// `chunk` elements (a multiple of [`BLOCK`]) on the current rayon pool; the job's
/// stages are not run. Nothing is written.
pub fn observe_tensor(
    job: &TensorJob<'_>,
    chunk: usize,
    probe: &mut dyn Kernel,
) -> Result<(), Error> {
    assert!(
        chunk > 0 && chunk.is_multiple_of(BLOCK),
        "chunks are whole blocks"
    );
    TensorRun { job, chunk }.run_passes(probe, &[])
}

/// Slices in memory as a [`Source`] (every slice as long as the tensor).
pub struct InMemory<'a> {
    /// The base values.
    pub base: &'a [f32],
    /// Each model's values.
    pub models: Vec<&'a [f32]>,
    /// Each model's Fisher values (empty when none).
    pub fisher: Vec<&'a [f32]>,
}

impl Source for InMemory<'_> {
    fn base(&self, start: usize, out: &mut [f32]) {
        out.copy_from_slice(&self.base[start..start + out.len()]);
    }
    fn model(&self, i: usize, start: usize, out: &mut [f32]) {
        out.copy_from_slice(&self.models[i][start..start + out.len()]);
    }
    fn fisher(&self, i: usize, start: usize, out: &mut [f32]) {
        out.copy_from_slice(&self.fisher[i][start..start + out.len()]);
    }
}

/// A tensor of the plan's checkpoints as a [`Source`]: each input's tensor resolved
/// once, when the tensor starts, so that a read is one look-up (and an adapter's
/// factors read once).
pub(crate) struct Mapped<'a> {
    base: Read<'a>,
    models: Vec<Read<'a>>,
    fisher: Vec<(&'a Checkpoint, &'a reefknot_io::TensorInfo)>,
}

impl<'a> Mapped<'a> {
    pub(crate) fn new(plan: &'a Plan, job: &MergeJob) -> Self {
        let at = |l: Located| {
            let c: &Checkpoint = &plan.inputs()[l.0];
            (c, &c.tensors()[l.1])
        };
        Mapped {
            base: Read::new(plan, job.base),
            models: job.models.iter().map(|&o| Read::new(plan, o)).collect(),
            fisher: job.fisher.iter().flatten().map(|&l| at(l)).collect(),
        }
    }
}

impl Source for Mapped<'_> {
    fn base(&self, start: usize, out: &mut [f32]) {
        self.base.values(start, out);
    }
    fn model(&self, i: usize, start: usize, out: &mut [f32]) {
        self.models[i].values(start, out);
    }
    fn delta(&self, i: usize, start: usize, base: &[f32], out: &mut [f32]) {
        self.models[i].minus(start, base, out);
    }
    fn fisher(&self, i: usize, start: usize, out: &mut [f32]) {
        let (c, info) = self.fisher[i];
        read_f32(c, info, start, out);
    }
}

/// An operand's tensor, resolved, with its adapter's update ready to add, or its rows
/// permuted into the output's vocabulary.
struct Read<'a> {
    ckpt: &'a Checkpoint,
    info: &'a reefknot_io::TensorInfo,
    lora: Option<LowRank>,
    permuted: Option<Permuted<'a>>,
}

/// A vocabulary tensor's rows in the output's order: the input's own rows where it has
/// the token, else the mean of the fill rows (of the same tensor of other inputs).
struct Permuted<'a> {
    vocabulary: &'a reefknot_plan::Vocabulary,
    input: usize,
    cols: usize,
    /// The output rows this input lacks, in order, with the rows that fill them.
    fill: Vec<(usize, FillRows<'a>)>,
    /// Where the padding rows start, and their value: the mean of the rows before.
    pad: Option<(usize, Vec<f32>)>,
}

/// The rows a missing row is the mean of: `(checkpoint, tensor, row)`.
type FillRows<'a> = Vec<(&'a Checkpoint, &'a reefknot_io::TensorInfo, usize)>;

impl<'a> Read<'a> {
    fn new(plan: &'a Plan, o: Operand) -> Self {
        let ckpt = &plan.inputs()[o.at.0];
        let info = &ckpt.tensors()[o.at.1];
        let permuted = o.permuted.then(|| {
            let vocabulary = plan
                .data()
                .vocabulary
                .as_ref()
                .expect("a readied plan's permuted operands have a vocabulary");
            let fill = (vocabulary.fill.iter())
                .filter(|(&row, _)| vocabulary.row_of(o.at.0, row).is_none())
                .map(|(&row, sources)| {
                    let sources = sources
                        .iter()
                        .map(|&[i, r]| {
                            let c: &Checkpoint = &plan.inputs()[i];
                            (c, c.get(&info.name).expect("checked when readied"), r)
                        })
                        .collect();
                    (row, sources)
                })
                .collect();
            let mut p = Permuted {
                vocabulary,
                input: o.at.0,
                cols: info.shape[1],
                fill,
                pad: None,
            };
            if let Some(from) = vocabulary.padded_from {
                p.pad = Some((from, p.mean_row(ckpt, info, from)));
            }
            p
        });
        Read {
            ckpt,
            info,
            lora: o
                .lora
                .map(|l| LowRank::new(plan, l, info.shape[0], info.shape[1])),
            permuted,
        }
    }

    /// Elements `[start, start + out.len())` as `f32`.
    fn values(&self, start: usize, out: &mut [f32]) {
        if let Some(p) = &self.permuted {
            return p.values(self.ckpt, self.info, start, out);
        }
        read_f32(self.ckpt, self.info, start, out);
        if let Some(l) = &self.lora {
            l.add(start, out);
        }
    }

    /// Elements `[start, start + out.len())` minus `base`.
    fn minus(&self, start: usize, base: &[f32], out: &mut [f32]) {
        if self.permuted.is_some() {
            self.values(start, out);
            out.iter_mut().zip(base).for_each(|(x, &b)| *x -= b);
            return;
        }
        let size = self.info.dtype.size();
        let bytes = &self.ckpt.data(self.info)[start * size..(start + out.len()) * size];
        to_f32_minus(self.info.dtype, bytes, base, out);
        if let Some(l) = &self.lora {
            l.add(start, out);
        }
    }
}

impl Permuted<'_> {
    /// The tensor's elements `[start, start + out.len())`, row by row. A filled row is
    /// its sources' sum in order, divided by their count (zero without sources), as
    /// mergekit computes it.
    fn values(
        &self,
        ckpt: &Checkpoint,
        info: &reefknot_io::TensorInfo,
        start: usize,
        out: &mut [f32],
    ) {
        let cols = self.cols;
        let mut part = Vec::new();
        let mut done = 0;
        while done < out.len() {
            let (row, c0) = ((start + done) / cols, (start + done) % cols);
            let n = (cols - c0).min(out.len() - done);
            let seg = &mut out[done..done + n];
            if let Some((_, mean)) = self.pad.as_ref().filter(|(from, _)| row >= *from) {
                seg.copy_from_slice(&mean[c0..c0 + n]);
            } else if let Some(r) = self.vocabulary.row_of(self.input, row) {
                read_f32(ckpt, info, r * cols + c0, seg);
            } else {
                seg.fill(0.0);
                let sources = self
                    .fill
                    .binary_search_by_key(&row, |(r, _)| *r)
                    .map_or(&[][..], |i| self.fill[i].1.as_slice());
                part.resize(n, 0.0);
                for &(c, info, r) in sources {
                    read_f32(c, info, r * cols + c0, &mut part[..n]);
                    seg.iter_mut().zip(&part).for_each(|(s, &x)| *s += x);
                }
                if sources.len() > 1 {
                    let count = sources.len() as f32;
                    seg.iter_mut().for_each(|s| *s /= count);
                }
            }
            done += n;
        }
    }

    /// The mean of the tensor's first `rows` rows, summed in float64.
    fn mean_row(&self, ckpt: &Checkpoint, info: &reefknot_io::TensorInfo, rows: usize) -> Vec<f32> {
        let mut sum = vec![0f64; self.cols];
        let mut row = vec![0f32; self.cols];
        for r in 0..rows {
            self.values(ckpt, info, r * self.cols, &mut row);
            sum.iter_mut()
                .zip(&row)
                .for_each(|(s, &x)| *s += f64::from(x));
        }
        sum.iter().map(|&s| (s / rows as f64) as f32).collect()
    }
}

/// The Fisher means (`means`, by model of the plan) of a job's models, in the job's
/// order, from the Fisher tensors it reads: a slice may merge some of the plan's models.
fn means_of(plan: &Plan, means: &[f64], fisher: &[Located]) -> Vec<f64> {
    fisher
        .iter()
        .map(|&(input, _)| match plan.data().inputs[input].role {
            Role::Fisher { model } => means[model],
            // A plan written by hand may read Fisher values from another input: the
            // mean of one that is no Fisher file is not taken.
            _ => 1.0,
        })
        .collect()
}

/// A LoRA update as a product `left · right` of a `[rows, r]` and an `[r, cols]` matrix
/// in float32, the scale folded into `left`: `scale·B` and `A`, or, transposed,
/// `scale·Aᵀ` and `Bᵀ`. Small (`r·(rows + cols)` values), read whole once per tensor.
struct LowRank {
    left: Vec<f32>,
    right: Vec<f32>,
    rank: usize,
    cols: usize,
}

impl LowRank {
    fn new(plan: &Plan, l: Lora, rows: usize, cols: usize) -> LowRank {
        let whole = |at: Located| {
            let c = &plan.inputs()[at.0];
            let info = &c.tensors()[at.1];
            let mut v = vec![0f32; info.numel()];
            read_f32(c, info, 0, &mut v);
            v
        };
        LowRank::from_factors(&whole(l.a), &whole(l.b), l.scale, l.transposed, rows, cols)
    }

    /// The update `scale·B·A` (or its transpose) of a `[rows, cols]` tensor, from the
    /// factors' values (row-major).
    fn from_factors(
        a: &[f32],
        b: &[f32],
        scale: f32,
        transposed: bool,
        rows: usize,
        cols: usize,
    ) -> LowRank {
        let rank = a.len() / if transposed { rows } else { cols };
        let (left, right) = if transposed {
            // A is [r, rows], B is [cols, r].
            let mut left = vec![0f32; rows * rank];
            for k in 0..rank {
                for (row, &x) in a[k * rows..(k + 1) * rows].iter().enumerate() {
                    left[row * rank + k] = scale * x;
                }
            }
            let mut right = vec![0f32; rank * cols];
            for (c, b_row) in b.chunks_exact(rank).enumerate() {
                for (k, &x) in b_row.iter().enumerate() {
                    right[k * cols + c] = x;
                }
            }
            (left, right)
        } else {
            (b.iter().map(|&x| scale * x).collect(), a.to_vec())
        };
        LowRank {
            left,
            right,
            rank,
            cols,
        }
    }

    /// Adds the update's elements `[start, start + out.len())` (row-major) to `out`:
    /// each element's `r` products are summed, in order, before the one addition.
    fn add(&self, start: usize, out: &mut [f32]) {
        let (r, cols) = (self.rank, self.cols);
        let mut sum = vec![0f32; cols.min(out.len())];
        let mut done = 0;
        while done < out.len() {
            let (row, c0) = ((start + done) / cols, (start + done) % cols);
            let n = (cols - c0).min(out.len() - done);
            let sum = &mut sum[..n];
            sum.fill(0.0);
            for k in 0..r {
                let coef = self.left[row * r + k];
                let right = &self.right[k * cols + c0..k * cols + c0 + n];
                for (s, &x) in sum.iter_mut().zip(right) {
                    *s += coef * x;
                }
            }
            for (o, &s) in out[done..done + n].iter_mut().zip(sum.iter()) {
                *o += s;
            }
            done += n;
        }
    }
}

/// Reads elements `[start, start + out.len())` of tensor `info` as `f32`.
fn read_f32(ckpt: &Checkpoint, info: &reefknot_io::TensorInfo, start: usize, out: &mut [f32]) {
    let size = info.dtype.size();
    let bytes = &ckpt.data(info)[start * size..(start + out.len()) * size];
    to_f32(info.dtype, bytes, out);
}

/// Computes each model's Fisher mean over every floating-point tensor of its Fisher file
/// that the base also has (for `fisher(normalize=true)`). Blocks of [`BLOCK`] elements
/// are summed in order and the block sums added order-free, so the result does not
/// depend on the threads.
///
/// With `check_finite`, a NaN or an infinity among the values summed is an error (it
/// would make the mean, and so every Fisher weight of the model, meaningless).
pub(crate) fn fisher_means(plan: &Plan, check_finite: bool) -> Result<Vec<f64>, Error> {
    let base = plan.input_of(Role::Base).map(|i| &plan.inputs()[i]);
    (0..plan.data().models())
        .map(|model| {
            let Some(f) = plan.input_of(Role::Fisher { model }) else {
                return Ok(1.0);
            };
            let f = &plan.inputs()[f];
            let mut sum = 0f64;
            let mut count = 0u64;
            for info in f.tensors() {
                if !info.dtype.is_computable() || base.is_some_and(|b| b.get(&info.name).is_none())
                {
                    continue;
                }
                let n = info.numel();
                let total = (0..n.div_ceil(BLOCK))
                    .into_par_iter()
                    .fold(OrderFreeSum::default, |mut acc, b| {
                        let start = b * BLOCK;
                        let mut buf = [0f32; BLOCK];
                        let buf = &mut buf[..BLOCK.min(n - start)];
                        read_f32(f, info, start, buf);
                        acc.add(buf.iter().map(|&x| f64::from(x)).sum::<f64>());
                        acc
                    })
                    .reduce(OrderFreeSum::default, |mut a, b| {
                        a.merge(b);
                        a
                    });
                if check_finite && !total.value().is_finite() {
                    return Err(first_nonfinite_of(f, info, model)
                        .unwrap_or_else(|| ErrorKind::Operator {
                            tensor: info.name.clone(),
                            error: OpError::NonFinite {
                                op: "fisher".into(),
                                what: format!("the sum of model {}'s Fisher values", model + 1),
                                value: total.value(),
                            },
                        })
                        .into());
                }
                sum += total.value();
                count += n as u64;
            }
            Ok(if count == 0 { 1.0 } else { sum / count as f64 })
        })
        .collect()
}

/// The first NaN or infinity of Fisher tensor `info` of model `model`, as an error.
fn first_nonfinite_of(
    f: &Checkpoint,
    info: &reefknot_io::TensorInfo,
    model: usize,
) -> Option<ErrorKind> {
    let found = crate::scan::nonfinite_in(f, info)?;
    let mut value = [0f32];
    read_f32(f, info, found.first, &mut value);
    Some(ErrorKind::NonFinite {
        tensor: info.name.clone(),
        element: found.first,
        value: f64::from(value[0]),
        at: NonFiniteAt::Fisher(model),
        input: None,
    })
}

/// Adds the input's role and path to a non-finite error that came from an input, and
/// tells a finite F64 value beyond f32 from a stored infinity.
fn name_input(plan: &Plan, mut e: Error) -> Error {
    if let ErrorKind::NonFinite {
        tensor,
        element,
        value,
        at,
        input,
    } = e.kind_mut()
    {
        let role = match *at {
            NonFiniteAt::Base => Some(Role::Base),
            NonFiniteAt::Model(model) | NonFiniteAt::TaskVector(model) => {
                Some(Role::Model { model })
            }
            NonFiniteAt::Fisher(model) => Some(Role::Fisher { model }),
            _ => None,
        };
        if let Some(i) = role.and_then(|r| plan.input_of(r)) {
            *input = Some(plan.data().inputs[i].path.clone());
            let c = &plan.inputs()[i];
            let stored = c
                .get(tensor)
                .and_then(|info| raw_f64_beyond_f32(c, info, *element));
            if let (
                Some((_, v)),
                NonFiniteAt::Base | NonFiniteAt::Model(_) | NonFiniteAt::Fisher(_),
            ) = (stored, &*at)
            {
                *value = v;
                *at = NonFiniteAt::BeyondF32(Box::new(at.clone()));
            }
        }
    }
    e
}

/// Element `k` of an F64 tensor, when it is finite but beyond the range of f32 (read
/// as an infinity); `(k, value)`.
fn raw_f64_beyond_f32(
    c: &Checkpoint,
    info: &reefknot_io::TensorInfo,
    k: usize,
) -> Option<(usize, f64)> {
    if info.dtype != Dtype::F64 || k >= info.numel() {
        return None;
    }
    let bytes = &c.data(info)[8 * k..8 * k + 8];
    let v = f64::from_le_bytes(bytes.try_into().expect("eight bytes"));
    (v.is_finite() && (v as f32).is_infinite()).then_some((k, v))
}

/// Copies input tensor `from` into output tensor `index`: its bytes as they are, or,
/// with `convert = Some(scale)`, chunk by chunk through float32, multiplied by `scale`
/// (when it is not 1) and converted to `dtype`.
///
/// With `check_finite`, a finite value that `dtype` cannot hold is an error (NaN and
/// infinities already in the input are copied as they are: nothing merges them).
#[allow(clippy::too_many_arguments)]
fn copy_tensor(
    plan: &Plan,
    index: usize,
    from: Operand,
    convert: Option<f32>,
    dtype: Dtype,
    out: &dyn Sink,
    chunk: usize,
    check_finite: bool,
    progress: &dyn Progress,
) -> Result<(), Error> {
    let c = &plan.inputs()[from.at.0];
    let info = &c.tensors()[from.at.1];
    let Some(scale) = convert else {
        debug_assert!(
            from.lora.is_none(),
            "an adapter's update is computed, not copied"
        );
        out.write_at(0, c.data(info))?;
        progress.advance(info.numel() as u64);
        return Ok(());
    };
    let read = Read::new(plan, from);
    // The output's element count (a permuted tensor's differs from the input's).
    let n = plan.data().tensors[index].numel();
    (0..n.div_ceil(chunk)).into_par_iter().try_for_each(|k| {
        let (start, end) = (k * chunk, ((k + 1) * chunk).min(n));
        let mut values = vec![0f32; end - start];
        read.values(start, &mut values);
        if scale != 1.0 {
            for v in &mut values {
                *v *= scale;
            }
        }
        if check_finite {
            // A finite value that becomes an infinity: in the output dtype, or already
            // when an F64 value beyond f32 was read.
            let overflow = first_overflow(dtype, &values).map(|k| (k, f64::from(values[k])));
            let beyond = || {
                (info.dtype == Dtype::F64)
                    .then(|| {
                        (0..values.len())
                            .filter(|&k| values[k].is_infinite())
                            .find_map(|k| raw_f64_beyond_f32(c, info, start + k))
                    })
                    .flatten()
                    .map(|(k, v)| (k - start, v))
            };
            if let Some((k, value)) = overflow.or_else(beyond) {
                return Err(ErrorKind::NonFinite {
                    tensor: plan.data().tensors[index].name.clone(),
                    element: start + k,
                    value,
                    at: NonFiniteAt::Convert {
                        from: info.dtype,
                        to: dtype,
                    },
                    input: None,
                }
                .into());
            }
        }
        let mut bytes = vec![0u8; values.len() * dtype.size()];
        from_f32(dtype, &values, &mut bytes);
        out.write_at(start * dtype.size(), &bytes)?;
        progress.advance(values.len() as u64);
        Ok(())
    })
}

/// Runs `f` on every item of `items` in parallel and returns the results in order, or
/// the error of the first failing item in `items`' order, whatever the scheduling: once
/// one fails, only the items before it still run (so a failed merge or analysis reports
/// the same error for any thread count).
pub(crate) fn in_order<T: Send>(
    items: &[usize],
    f: impl Fn(usize) -> Result<T, Error> + Sync,
) -> Result<Vec<T>, Error> {
    let first_failed = AtomicUsize::new(usize::MAX);
    let failures: Mutex<BTreeMap<usize, Error>> = Mutex::default();
    let done: Vec<Option<T>> = items
        .par_iter()
        .enumerate()
        .map(|(position, &item)| {
            if position > first_failed.load(Ordering::Relaxed) {
                return None;
            }
            match f(item) {
                Ok(t) => Some(t),
                Err(e) => {
                    first_failed.fetch_min(position, Ordering::Relaxed);
                    let mut failures = failures.lock().unwrap_or_else(|e| e.into_inner());
                    failures.insert(position, e);
                    None
                }
            }
        })
        .collect();
    let failures = failures.into_inner().unwrap_or_else(|e| e.into_inner());
    if let Some((_, e)) = failures.into_iter().next() {
        return Err(e);
    }
    Ok(done.into_iter().flatten().collect())
}

/// Produces the output tensors `selection` (indices into the plan's tensors; `None`:
/// all of them) into `out`, in chunks of `chunk` elements (a multiple of [`BLOCK`]) on
/// the current rayon pool, then flushes `out`. With `check_finite`, a NaN or an
/// infinity read or made is an error ([`ErrorKind::NonFinite`], naming the input it
/// came from).
pub fn execute(
    plan: &Plan,
    selection: Option<&[usize]>,
    out: &dyn OutputSink,
    chunk: usize,
    check_finite: bool,
    progress: &dyn Progress,
) -> Result<(), Error> {
    let all: Vec<usize>;
    let selection = match selection {
        Some(s) => s,
        None => {
            all = (0..plan.jobs().len()).collect();
            &all
        }
    };
    let merges_some = || {
        selection
            .iter()
            .any(|&i| matches!(plan.jobs()[i], Job::Merge(_)))
    };
    let fisher_means = (plan.needs_fisher_means() && merges_some())
        .then(|| fisher_means(plan, check_finite))
        .transpose()
        .map_err(|e| name_input(plan, e))?;
    in_order(selection, |index| {
        let dtype = plan.dtypes()[index];
        let sink = TensorOf { out, index };
        match &plan.jobs()[index] {
            Job::Copy {
                from,
                convert,
                scale,
            } => copy_tensor(
                plan,
                index,
                *from,
                (*convert).then_some(*scale),
                dtype,
                &sink,
                chunk,
                check_finite,
                progress,
            ),
            Job::Merge(job) => {
                let source = Mapped::new(plan, job);
                let means = fisher_means
                    .as_deref()
                    .zip(job.fisher.as_deref())
                    .map(|(means, fisher)| means_of(plan, means, fisher));
                let job = TensorJob {
                    fisher_means: means.as_deref(),
                    check_finite,
                    ..TensorJob::of_plan(plan, index, job, &source)
                };
                merge_tensor(&job, chunk, dtype, &sink, progress).map_err(|e| name_input(plan, e))
            }
        }
    })?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use reefknot_io::{OutputTensor, WriterOptions};

    /// A LoRA update added chunk by chunk, at any offsets, gives the same bits as in
    /// one piece, and `scale·B·A` (transposed: its transpose) to float32 precision.
    #[test]
    fn lora_updates_do_not_depend_on_the_chunks() {
        let (rows, cols, r) = (7, 13, 3);
        let value = |k: usize| ((k * 2654435761) % 1000) as f32 / 500.0 - 1.0;
        for transposed in [false, true] {
            let (a_rows, b_rows) = if transposed {
                (rows, cols)
            } else {
                (cols, rows)
            };
            let a: Vec<f32> = (0..r * a_rows).map(value).collect();
            let b: Vec<f32> = (0..b_rows * r).map(|k| value(k + 77)).collect();
            let l = LowRank::from_factors(&a, &b, 0.75, transposed, rows, cols);
            let base: Vec<f32> = (0..rows * cols).map(|k| value(k + 5)).collect();
            let mut whole = base.clone();
            l.add(0, &mut whole);
            for step in [1, 5, 13, 14, 40] {
                let mut pieces = base.clone();
                for (k, piece) in pieces.chunks_mut(step).enumerate() {
                    l.add(k * step, piece);
                }
                assert_eq!(pieces, whole, "step {step}, transposed {transposed}");
            }
            for row in 0..rows {
                for col in 0..cols {
                    let exact: f64 = (0..r)
                        .map(|k| {
                            let (bv, av) = if transposed {
                                (b[col * r + k], a[k * rows + row])
                            } else {
                                (b[row * r + k], a[k * cols + col])
                            };
                            0.75 * f64::from(bv) * f64::from(av)
                        })
                        .sum();
                    let got =
                        f64::from(whole[row * cols + col]) - f64::from(base[row * cols + col]);
                    assert!((got - exact).abs() < 1e-6, "{row},{col}: {got} vs {exact}");
                }
            }
        }
    }

    /// Workers submitting chunks at once, some finding the writer busy: every chunk
    /// lands where it belongs, none is left in the queue, and buffers come back.
    #[test]
    fn combined_writes_land_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let tensors = (0..3)
            .map(|t| OutputTensor {
                name: format!("t{t}"),
                dtype: Dtype::U8,
                shape: vec![1 << 18],
            })
            .collect();
        let writer = ModelWriter::create(dir.path(), tensors, &WriterOptions::default()).unwrap();
        let out = Combiner::new(&writer);
        const PIECE: usize = 250;
        let pieces = (1usize << 18).div_ceil(PIECE);
        let byte = |t: usize, k: usize| (t * 7 + k * 13 + k / 256) as u8;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(4)
            .build()
            .unwrap();
        pool.install(|| {
            (0..3 * pieces)
                .into_par_iter()
                .with_min_len(1)
                .for_each(|p| {
                    let (t, k) = (p % 3, p / 3);
                    let len = PIECE.min((1 << 18) - k * PIECE);
                    let sink = TensorOf {
                        out: &out,
                        index: t,
                    };
                    let bytes = (0..len).map(|i| byte(t, k * PIECE + i)).collect();
                    let spare = sink.write_owned(k * PIECE, bytes).unwrap();
                    assert!(spare.capacity() <= PIECE);
                })
        });
        // Every chunk was written by the time its submit returned, or taken along by
        // the worker that was writing: nothing is left for the final flush.
        assert!(out.queue().waiting.is_empty());
        out.flush().unwrap();
        drop(out);
        writer.finish().unwrap();
        let ckpt = Checkpoint::open(dir.path()).unwrap();
        for t in 0..3 {
            let info = ckpt.get(&format!("t{t}")).unwrap();
            let data = ckpt.data(info);
            assert!(
                data.iter().enumerate().all(|(i, &b)| b == byte(t, i)),
                "tensor {t}"
            );
        }
    }
}

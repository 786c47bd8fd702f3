//! Scoring a merge against the task vectors it started from (the family's own
//! statistics are what `reefknot analyze` measures: `reefknot_ops::analysis`).
//!
//! Everything streams: models are memory-mapped, each tensor is read in chunks of
//! 64 Ki elements converted to f32, and the top 20 % of a task vector is found per
//! tensor by a radix selection on the bit patterns of `|δ|` (two histogram passes),
//! never by sorting or copying a tensor. Tensors are analysed in parallel and their
//! sums combined in tensor order, so results do not depend on the thread count.
//!
//! The top set of a tensor of `n` elements is its `max(1, ⌊0.2·n⌋)` entries of
//! largest `|δ|`, ties at the threshold taken in flat-index order: the same set
//! `trim(0.2)` keeps.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use reefknot_io::{to_f32, Checkpoint, Dtype, TensorInfo};

use crate::SynthError;

/// The fraction of each tensor's entries counted as a task's top set.
pub const TOP_FRACTION: f64 = 0.2;

/// Elements decoded per step.
const CHUNK: usize = 1 << 16;

/// How well a merged model keeps one task, over the whole model.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskScore {
    /// The task's index in the list given to [`score`].
    pub task: usize,
    /// `cos(Δ, δ_i)`: the cosine between the merged delta `Δ = θ_merged − θ_base` and
    /// the task vector `δ_i = θ_i − θ_base`, both flattened over every tensor.
    pub cosine: f64,
    /// Over the task's top-20 % entries (per tensor, by `|δ_i|`), the fraction where
    /// `Δ` has the same (non-zero) sign as `δ_i`.
    pub sign_kept: f64,
    /// `‖Δ‖ / ‖δ_i‖`.
    pub norm_ratio: f64,
    /// `⟨Δ, δ_i⟩ / ‖δ_i‖²`: how much of the task vector the merge carries along its
    /// own direction (1 for `Δ = δ_i`).
    pub retained: f64,
}

/// Scores the merge `merged` of the fine-tunes `tasks` of `base`: one [`TaskScore`]
/// per task. Every model must have the base's tensors with the base's shapes (dtypes
/// may differ); only computable (float) tensors are scored.
pub fn score(base: &Path, tasks: &[PathBuf], merged: &Path) -> Result<Vec<TaskScore>, SynthError> {
    let sums = analyze(base, tasks, Some(merged))?;
    Ok((0..tasks.len())
        .map(|i| {
            let t = &sums.tasks[i];
            TaskScore {
                task: i,
                cosine: ratio(t.dot, (t.energy * sums.merged_energy).sqrt()),
                sign_kept: ratio(t.kept as f64, t.top_count as f64),
                norm_ratio: ratio(sums.merged_energy.sqrt(), t.energy.sqrt()),
                retained: ratio(t.dot, t.energy),
            }
        })
        .collect())
}

fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        0.0
    } else {
        a / b
    }
}

/// Running sums for one task.
#[derive(Clone, Debug, Default)]
struct TaskSums {
    energy: f64,
    top_energy: f64,
    top_count: u64,
    dot: f64,
    kept: u64,
}

/// Everything measured, summed over tensors.
#[derive(Clone, Debug)]
struct Sums {
    tasks: Vec<TaskSums>,
    merged_energy: f64,
}

impl Sums {
    fn new(t: usize) -> Self {
        Sums {
            tasks: vec![TaskSums::default(); t],
            merged_energy: 0.0,
        }
    }

    fn add(&mut self, o: &Sums) {
        for (a, b) in self.tasks.iter_mut().zip(&o.tasks) {
            a.energy += b.energy;
            a.top_energy += b.top_energy;
            a.top_count += b.top_count;
            a.dot += b.dot;
            a.kept += b.kept;
        }
        self.merged_energy += o.merged_energy;
    }
}

/// Opens every model and analyses each of the base's float tensors.
fn analyze(base: &Path, tasks: &[PathBuf], merged: Option<&Path>) -> Result<Sums, SynthError> {
    let base_ck = Checkpoint::open(base)?;
    let task_cks = tasks
        .iter()
        .map(|p| Checkpoint::open(p))
        .collect::<Result<Vec<_>, _>>()?;
    let merged_ck = merged.map(Checkpoint::open).transpose()?;

    let mut jobs = Vec::new();
    for info in base_ck.tensors() {
        if !info.dtype.is_computable() {
            continue;
        }
        let tensor = TensorBytes {
            base: (info.dtype, base_ck.data(info)),
            tasks: task_cks
                .iter()
                .zip(tasks)
                .map(|(ck, p)| fetch(ck, p, info, "the base"))
                .collect::<Result<_, _>>()?,
            merged: match (&merged_ck, merged) {
                (Some(ck), Some(p)) => Some(fetch(ck, p, info, "the base")?),
                _ => None,
            },
        };
        jobs.push(tensor);
    }
    let per_tensor: Vec<Sums> = jobs.par_iter().map(TensorBytes::analyze).collect();
    let mut total = Sums::new(tasks.len());
    for s in &per_tensor {
        total.add(s);
    }
    Ok(total)
}

/// The bytes of the tensor `like` of `reference` (a model, named in errors) in the
/// checkpoint `ck` (opened from `path`), checking that it exists with the same shape
/// and a float dtype.
pub(crate) fn fetch<'a>(
    ck: &'a Checkpoint,
    path: &Path,
    like: &TensorInfo,
    reference: &str,
) -> Result<(Dtype, &'a [u8]), SynthError> {
    let name = &like.name;
    let t = ck.get(name).ok_or_else(|| {
        SynthError::Mismatch(format!(
            "{}: tensor {name} is missing ({reference} has it)",
            path.display()
        ))
    })?;
    if t.shape != like.shape {
        return Err(SynthError::Mismatch(format!(
            "{}: tensor {name} has shape {:?}, {reference} has {:?}",
            path.display(),
            t.shape,
            like.shape
        )));
    }
    if !t.dtype.is_computable() {
        return Err(SynthError::Mismatch(format!(
            "{}: tensor {name} is {}, not a float dtype",
            path.display(),
            t.dtype
        )));
    }
    Ok((t.dtype, ck.data(t)))
}

/// Decodes elements `start..start + out.len()` of a tensor's stored bytes.
pub(crate) fn decode((dtype, bytes): (Dtype, &[u8]), start: usize, out: &mut [f32]) {
    let s = dtype.size();
    to_f32(dtype, &bytes[start * s..(start + out.len()) * s], out);
}

/// One tensor of every model, as stored bytes.
struct TensorBytes<B> {
    base: (Dtype, B),
    tasks: Vec<(Dtype, B)>,
    merged: Option<(Dtype, B)>,
}

/// `|x|` as an unsigned integer, monotone in `|x|` for every non-NaN float.
#[inline(always)]
fn abs_bits(x: f32) -> u32 {
    x.to_bits() & 0x7FFF_FFFF
}

/// Where a task's top set starts: entries above `bits`, plus the first `ties` entries
/// (in index order) equal to it.
#[derive(Clone, Copy, Debug)]
struct Cut {
    bits: u32,
    ties: u64,
}

impl<B: AsRef<[u8]>> TensorBytes<B> {
    fn numel(&self) -> usize {
        self.base.1.as_ref().len() / self.base.0.size()
    }

    /// Decodes elements `start..start + out.len()` of `(dtype, bytes)`.
    fn decode(src: &(Dtype, B), start: usize, out: &mut [f32]) {
        decode((src.0, src.1.as_ref()), start, out);
    }

    /// Calls `f(start, base, model)` for every chunk of task `task`'s tensor (or the
    /// merged one for `None`), with both decoded.
    fn chunks(
        &self,
        model: Option<usize>,
        scratch: &mut [Vec<f32>; 2],
        mut f: impl FnMut(&[f32], &[f32]),
    ) {
        let n = self.numel();
        let src = match model {
            Some(t) => &self.tasks[t],
            None => self.merged.as_ref().expect("merged model"),
        };
        let [b, m] = scratch;
        let mut start = 0;
        while start < n {
            let len = CHUNK.min(n - start);
            Self::decode(&self.base, start, &mut b[..len]);
            Self::decode(src, start, &mut m[..len]);
            f(&b[..len], &m[..len]);
            start += len;
        }
    }

    /// Finds task `task`'s top-set cut by radix selection: a histogram of the high 16
    /// bits of `|δ|`, then of the low 16 bits within the winning bucket.
    fn cut(&self, task: usize, scratch: &mut [Vec<f32>; 2]) -> Cut {
        let n = self.numel() as u64;
        let k = ((TOP_FRACTION * n as f64).floor() as u64).max(1).min(n);
        let mut hist = vec![0u64; 1 << 16];
        self.chunks(Some(task), scratch, |b, m| {
            for (x, y) in b.iter().zip(m) {
                hist[(abs_bits(y - x) >> 16) as usize] += 1;
            }
        });
        // The bucket holding the k-th largest, and how many lie in higher buckets.
        let (hi, above) = select(&hist, k);
        hist.iter_mut().for_each(|h| *h = 0);
        self.chunks(Some(task), scratch, |b, m| {
            for (x, y) in b.iter().zip(m) {
                let a = abs_bits(y - x);
                if a >> 16 == hi {
                    hist[(a & 0xFFFF) as usize] += 1;
                }
            }
        });
        let (lo, above_in_bucket) = select(&hist, k - above);
        Cut {
            bits: (hi << 16) | lo,
            ties: k - above - above_in_bucket,
        }
    }

    /// Analyses this tensor: top-set cuts for every task, then one pass over all models.
    fn analyze(&self) -> Sums {
        let t = self.tasks.len();
        let mut scratch = [vec![0.0f32; CHUNK], vec![0.0f32; CHUNK]];
        let cuts: Vec<Cut> = (0..t).map(|i| self.cut(i, &mut scratch)).collect();
        let mut sums = Sums::new(t);
        let n = self.numel();
        let mut base = vec![0.0f32; CHUNK];
        let mut deltas = vec![vec![0.0f32; CHUNK]; t];
        let mut merged = vec![0.0f32; CHUNK];
        let mut top = vec![vec![false; CHUNK]; t];
        let mut ties_left: Vec<u64> = cuts.iter().map(|c| c.ties).collect();
        let mut start = 0;
        while start < n {
            let len = CHUNK.min(n - start);
            Self::decode(&self.base, start, &mut base[..len]);
            for i in 0..t {
                Self::decode(&self.tasks[i], start, &mut deltas[i][..len]);
                let (d, cut, top) = (&mut deltas[i][..len], cuts[i], &mut top[i][..len]);
                let s = &mut sums.tasks[i];
                for ((d, b), top) in d.iter_mut().zip(&base[..len]).zip(top.iter_mut()) {
                    *d -= *b;
                    let a = abs_bits(*d);
                    *top = a > cut.bits || (a == cut.bits && ties_left[i] > 0);
                    if a == cut.bits && *top {
                        ties_left[i] -= 1;
                    }
                    let e = f64::from(*d) * f64::from(*d);
                    s.energy += e;
                    if *top {
                        s.top_energy += e;
                        s.top_count += 1;
                    }
                }
            }
            if let Some(src) = &self.merged {
                Self::decode(src, start, &mut merged[..len]);
                for (m, b) in merged[..len].iter_mut().zip(&base[..len]) {
                    *m -= *b;
                    sums.merged_energy += f64::from(*m) * f64::from(*m);
                }
                for i in 0..t {
                    let s = &mut sums.tasks[i];
                    for j in 0..len {
                        let (m, d) = (merged[j], deltas[i][j]);
                        s.dot += f64::from(m) * f64::from(d);
                        if top[i][j] && ((m > 0.0 && d > 0.0) || (m < 0.0 && d < 0.0)) {
                            s.kept += 1;
                        }
                    }
                }
            }
            start += len;
        }
        sums
    }
}

/// In a histogram indexed by increasing value, the bin holding the `k`-th largest
/// entry (`k ≥ 1`) and how many entries lie in higher bins.
fn select(hist: &[u64], k: u64) -> (u32, u64) {
    let mut above = 0u64;
    for (bin, &count) in hist.iter().enumerate().rev() {
        if above + count >= k {
            return (bin as u32, above);
        }
        above += count;
    }
    (0, above)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(base: &[f32], tasks: &[Vec<f32>]) -> TensorBytes<Vec<u8>> {
        let bytes = |x: &[f32]| x.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
        TensorBytes {
            base: (Dtype::F32, bytes(base)),
            tasks: tasks.iter().map(|t| (Dtype::F32, bytes(t))).collect(),
            merged: None,
        }
    }

    #[test]
    fn the_top_set_takes_ties_in_index_order() {
        // Ten entries, k = 2: |δ| = 3 once, then 2 three times: the top set is the 3
        // and the first 2 (index 1), so it holds 9 + 4 of the energy.
        let t0 = vec![0.0, 2.0, 0.0, -3.0, 2.0, 0.0, 2.0, 0.0, 0.0, 1.0];
        let t = tensor(&[0.0; 10], &[t0]);
        let mut scratch = [vec![0.0f32; CHUNK], vec![0.0f32; CHUNK]];
        let cut = t.cut(0, &mut scratch);
        assert_eq!((cut.bits, cut.ties), (2f32.to_bits(), 1));
        let s = t.analyze();
        assert_eq!(s.tasks[0].top_count, 2);
        assert!((s.tasks[0].top_energy - 13.0).abs() < 1e-12);
        assert!((s.tasks[0].energy - 22.0).abs() < 1e-12);
    }

    #[test]
    fn radix_select_finds_the_kth_largest() {
        let t: Vec<f32> = (0..1000)
            .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5)
            .collect();
        let s = tensor(&[0.0; 1000], std::slice::from_ref(&t)).analyze();
        let mut e: Vec<f64> = t.iter().map(|x| f64::from(*x).powi(2)).collect();
        e.sort_by(|a, b| b.total_cmp(a));
        let want: f64 = e[..200].iter().sum();
        assert!(
            (s.tasks[0].top_energy - want).abs() < 1e-9,
            "{} vs {want}",
            s.tasks[0].top_energy
        );
    }
}

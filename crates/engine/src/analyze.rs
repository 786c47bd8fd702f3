//! `reefknot analyze`: the task vectors of every tensor a plan merges, measured by the
//! executor's statistics passes ([`reefknot_ops::analysis::Probe`]) without writing
//! anything.
//!
//! Tensors are measured in parallel, each in chunks as a merge reads it (through the
//! same sources: memory maps, LoRA updates, permuted vocabularies), so memory stays
//! bounded by threads × chunk plus each probe's histograms. Every figure is a sum that
//! adds across tensors; groups, layers and the whole model are such sums, taken in the
//! plan's tensor order.

use std::collections::BTreeMap;

use reefknot_lang::Ty;
use reefknot_ops::analysis::{Probe, ProbeSpec, TensorStats};
use reefknot_ops::{Value, BLOCK};

use crate::exec::{in_order, observe_tensor, Mapped};
use crate::plan::{Job, MergeJob};
use crate::{pool, Error, ErrorKind, Plan, Progress, TensorJob, MAX_CHUNK};

/// The density a tensor's election is measured at when neither the recipe (a `trim`
/// stage) nor the caller gives one: TIES's usual 20 %.
pub const DEFAULT_DENSITY: f64 = 0.2;

/// Where a tensor's density came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum DensityFrom {
    /// The `k` of the tensor's first `trim` stage over the task vectors.
    Recipe,
    /// The caller (`--density`).
    Given,
    /// [`DEFAULT_DENSITY`].
    Default,
}

/// One merged tensor's figures.
#[derive(Clone, Debug)]
pub struct TensorReport {
    /// Its output name.
    pub name: String,
    /// Its layer, if any.
    pub layer: Option<usize>,
    /// Its groups (the caller's classification).
    pub groups: Vec<String>,
    /// Where its density came from.
    pub density_from: DensityFrom,
    /// The figures.
    pub stats: TensorStats,
}

/// A plan's task vectors, measured.
#[derive(Clone, Debug)]
pub struct Analysis {
    /// Each fine-tune's path, in model order.
    pub models: Vec<String>,
    /// The base's path.
    pub base: String,
    /// Every merged tensor, in the plan's order.
    pub tensors: Vec<TensorReport>,
    /// Tensors the merge copies (not measured).
    pub copied: usize,
}

impl Analysis {
    /// The figures of every tensor `keep` accepts, added in the plan's order.
    pub fn sum(&self, keep: impl Fn(&TensorReport) -> bool) -> TensorStats {
        let mut total = TensorStats::default();
        for t in self.tensors.iter().filter(|t| keep(t)) {
            total.add(&t.stats);
        }
        total
    }

    /// The whole model's figures (every merged tensor).
    pub fn whole(&self) -> TensorStats {
        self.sum(|_| true)
    }

    /// The groups that hold a tensor, in the order of `order` (the recipe's group
    /// names; others after them, first seen first), and the figures of each.
    pub fn groups(&self, order: &[&str]) -> Vec<(String, TensorStats)> {
        let mut names: Vec<&str> = Vec::new();
        for t in &self.tensors {
            for g in &t.groups {
                if !names.contains(&g.as_str()) {
                    names.push(g);
                }
            }
        }
        names.sort_by_key(|g| order.iter().position(|o| o == g).unwrap_or(usize::MAX));
        names
            .into_iter()
            .map(|g| (g.to_string(), self.sum(|t| t.groups.iter().any(|x| x == g))))
            .collect()
    }

    /// The figures of each layer, by layer index.
    pub fn layers(&self) -> Vec<(usize, TensorStats)> {
        let mut layers: BTreeMap<usize, TensorStats> = BTreeMap::new();
        for t in &self.tensors {
            if let Some(l) = t.layer {
                layers.entry(l).or_default().add(&t.stats);
            }
        }
        layers.into_iter().collect()
    }
}

/// The per-model density of a tensor: `density` when given, else the `k` of its first
/// `trim` stage over the task vectors (not one over a merged delta), else
/// [`DEFAULT_DENSITY`].
fn density_of(job: &MergeJob, models: usize, density: Option<f64>) -> (Vec<f64>, DensityFrom) {
    if let Some(k) = density {
        return (vec![k; models], DensityFrom::Given);
    }
    let trim = job
        .stages
        .iter()
        .find(|s| s.op == "trim" && s.signature.input == Ty::Stack);
    let k = trim.and_then(|s| {
        s.args.iter().find_map(|(name, v)| match (name, v) {
            (&"k", Value::Number(v)) if v.len() == models => Some(v.clone()),
            (&"k", Value::Number(v)) if !v.is_empty() => Some(vec![v[0]; models]),
            _ => None,
        })
    });
    match k {
        Some(k) => (k, DensityFrom::Recipe),
        None => (vec![DEFAULT_DENSITY; models], DensityFrom::Default),
    }
}

/// Measures the task vectors of every tensor `plan` merges, on `threads` workers
/// (`None`: one per core) in chunks of about `chunk` elements (rounded up to whole
/// blocks; results do not depend on either); `groups` names each tensor's groups;
/// `density` replaces the recipe's. Advances `progress` by each tensor's elements as it
/// is done.
pub fn analyze(
    plan: &Plan,
    groups: &(dyn Fn(&str) -> Vec<String> + Sync),
    density: Option<f64>,
    threads: Option<usize>,
    chunk: usize,
    progress: &dyn Progress,
) -> Result<Analysis, Error> {
    if !(1..=MAX_CHUNK).contains(&chunk) {
        return Err(ErrorKind::Chunk(chunk).into());
    }
    let chunk = chunk.div_ceil(BLOCK) * BLOCK;
    let ran = pool(threads)?.install(|| measure(plan, groups, density, chunk, progress));
    reefknot_ops::release_spare_memory();
    ran
}

fn measure(
    plan: &Plan,
    groups: &(dyn Fn(&str) -> Vec<String> + Sync),
    density: Option<f64>,
    chunk: usize,
    progress: &dyn Progress,
) -> Result<Analysis, Error> {
    let data = plan.data();
    let models = data.models();
    let merged: Vec<usize> = (0..plan.jobs().len())
        .filter(|&i| matches!(plan.jobs()[i], Job::Merge(_)))
        .collect();
    progress.start(merged.iter().map(|&i| data.tensors[i].numel() as u64).sum());
    let reports = in_order(&merged, |index| {
        let Job::Merge(job) = &plan.jobs()[index] else {
            unreachable!("merged tensors only")
        };
        let tensor = &data.tensors[index];
        let (k, density_from) = density_of(job, models, density);
        let source = Mapped::new(plan, job);
        // The task vectors alone: no stage runs, no Fisher values are read.
        let tensor_job = TensorJob {
            fisher: false,
            stages: &[],
            ..TensorJob::of_plan(plan, index, job, &source)
        };
        let mut probe = Probe::new(&ProbeSpec { density: k }, tensor.numel());
        observe_tensor(&tensor_job, chunk, &mut probe)?;
        progress.advance(tensor.numel() as u64);
        Ok(TensorReport {
            name: tensor.name.clone(),
            layer: tensor.layer,
            groups: groups(&tensor.name),
            density_from,
            stats: probe.stats().clone(),
        })
    });
    progress.finish();
    let reports = reports?;
    let path_of = |role| {
        plan.input_of(role)
            .map(|i| data.inputs[i].path.clone())
            .unwrap_or_default()
    };
    Ok(Analysis {
        models: (0..models)
            .map(|model| path_of(reefknot_plan::Role::Model { model }))
            .collect(),
        base: path_of(reefknot_plan::Role::Base),
        tensors: reports,
        copied: plan.jobs().len() - merged.len(),
    })
}

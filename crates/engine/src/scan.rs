//! Finding NaN and infinities in a plan's inputs before merging (`reefknot check
//! --scan`): every floating-point tensor the plan reads, read once, in parallel.

use std::collections::BTreeMap;

use rayon::prelude::*;
use reefknot_io::{to_f32, Checkpoint, TensorInfo};

use reefknot_plan::Role;

use crate::plan::{Job, Located, Operand, Plan};

/// Elements decoded per step of a scan.
const STEP: usize = 1 << 16;

/// A tensor of an input holding NaN or infinities.
#[derive(Clone, Debug, PartialEq)]
pub struct NonFiniteInput {
    /// The input: its role and path, e.g. `model 2 (models/math)`.
    pub input: String,
    /// The tensor.
    pub tensor: String,
    /// How many of its values are NaN.
    pub nan: u64,
    /// How many are infinite.
    pub inf: u64,
    /// The first element that is either.
    pub first: usize,
    /// Whether a merge reads it (otherwise it is only copied into the output as it
    /// is, which a merge allows).
    pub merged: bool,
}

/// The adapter factors an operand is read with.
fn factors(o: &Operand) -> impl Iterator<Item = Located> {
    o.lora.into_iter().flat_map(|l| [l.a, l.b])
}

/// Every floating-point tensor the plan reads that holds NaN or infinities, in the
/// plan's input order and each input's tensor order. Reads all of their data (on the
/// current rayon pool).
pub fn scan_nonfinite(plan: &Plan) -> Vec<NonFiniteInput> {
    // Each tensor read, once, and whether a pipeline reads it.
    let mut read: BTreeMap<Located, bool> = BTreeMap::new();
    for job in plan.jobs() {
        match job {
            Job::Copy { from, .. } => {
                read.entry(from.at).or_insert(false);
                // An adapter's factors are computed with, never copied.
                for l in factors(from) {
                    read.insert(l, true);
                }
            }
            Job::Merge(m) => {
                let operands = std::iter::once(&m.base).chain(&m.models);
                for o in operands {
                    read.insert(o.at, true);
                    for l in factors(o) {
                        read.insert(l, true);
                    }
                }
                for &l in m.fisher.iter().flatten() {
                    read.insert(l, true);
                }
            }
        }
    }
    // `fisher(normalize=true)` averages every Fisher tensor the base also has.
    if plan.needs_fisher_means() {
        let base = plan.input_of(Role::Base).map(|i| &plan.inputs()[i]);
        for model in 0..plan.data().models() {
            let Some(f) = plan.input_of(Role::Fisher { model }) else {
                continue;
            };
            for (t, info) in plan.inputs()[f].tensors().iter().enumerate() {
                if base.is_none_or(|b| b.get(&info.name).is_some()) {
                    read.insert((f, t), true);
                }
            }
        }
    }
    let read: Vec<(Located, bool)> = read.into_iter().collect();
    read.par_iter()
        .filter_map(|&((input, tensor), merged)| {
            let ckpt = &plan.inputs()[input];
            let info = &ckpt.tensors()[tensor];
            if !info.dtype.is_computable() {
                return None;
            }
            let found = nonfinite_in(ckpt, info)?;
            let role = &plan.data().inputs[input];
            Some(NonFiniteInput {
                input: format!("{} ({})", role.role, role.path),
                tensor: info.name.clone(),
                nan: found.nan,
                inf: found.inf,
                first: found.first,
                merged,
            })
        })
        .collect()
}

/// The NaN and infinities of one floating-point tensor.
pub(crate) struct Found {
    /// How many values are NaN.
    pub(crate) nan: u64,
    /// How many are infinite.
    pub(crate) inf: u64,
    /// The first element that is either.
    pub(crate) first: usize,
}

/// Counts the NaN and infinities of tensor `info` of `ckpt` (a computable dtype),
/// reading it in parallel steps; `None` when every value is finite.
pub(crate) fn nonfinite_in(ckpt: &Checkpoint, info: &TensorInfo) -> Option<Found> {
    let data = ckpt.data(info);
    let size = info.dtype.size();
    let n = info.numel();
    // (NaN count, infinity count, first element), per step, combined in order.
    let (nan, inf, first) = (0..n.div_ceil(STEP))
        .into_par_iter()
        .map(|s| {
            let (start, end) = (s * STEP, ((s + 1) * STEP).min(n));
            let mut values = vec![0f32; end - start];
            to_f32(info.dtype, &data[start * size..end * size], &mut values);
            if reefknot_io::all_finite(&values) {
                return (0, 0, None);
            }
            let nan = values.iter().filter(|x| x.is_nan()).count() as u64;
            let inf = values.iter().filter(|x| x.is_infinite()).count() as u64;
            let first = values
                .iter()
                .position(|x| !x.is_finite())
                .map(|k| start + k);
            (nan, inf, first)
        })
        .reduce(
            || (0, 0, None),
            |a, b| {
                let first = match (a.2, b.2) {
                    (Some(x), Some(y)) => Some(x.min(y)),
                    (x, y) => x.or(y),
                };
                (a.0 + b.0, a.1 + b.1, first)
            },
        );
    Some(Found {
        nan,
        inf,
        first: first?,
    })
}

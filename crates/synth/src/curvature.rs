//! Task losses that can be computed exactly: each task's loss is a quadratic bowl
//! around its fine-tune, with a known diagonal curvature.
//!
//! # The model
//!
//! Task `t`'s loss at weights `θ` is
//!
//! ```text
//! L_t(θ) = ½ · Σ_j F_tj · (θ_j − θ*_tj)²
//! ```
//!
//! where `θ*_t` is the fine-tune as stored (its optimum: `L_t(θ*_t) = 0`) and `F_t` is
//! a diagonal curvature, the same thing as a diagonal Fisher information: this is the
//! Laplace approximation under which Fisher merging (Matena & Raffel 2022) is exact.
//! For a synthetic family the curvature follows the statistical model of the task
//! vectors (see the crate documentation): `F_tj = 1` on the entries important to task
//! `t`, where fine-tuning moved the weights on purpose, and [`NOISE_CURVATURE`] on the
//! others, where it drifted in directions the task's loss hardly feels. So a merge that
//! keeps a task's important entries keeps the task, and another task's noise landing on
//! them costs in full.
//!
//! [`write_fishers`] writes these curvatures as Fisher files (what a recipe's `fisher:`
//! reads), and [`quadratic_losses`] evaluates `L_t` at any model — for a synthetic
//! family exactly, for real models with real Fisher files as the usual second-order
//! estimate. Dividing by `L_t(θ_base)` gives a loss that reads the same for every task:
//! 0 is as good as the fine-tune, 1 no better than the base.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use reefknot_io::{Checkpoint, Dtype, ModelWriter, OutputTensor, WriterOptions};

use crate::analysis::{decode, fetch};
use crate::sample::TensorSampler;
use crate::spec::{tensor_layout, FamilySpec};
use crate::SynthError;

/// The curvature of the entries a task did not change on purpose (its noise), relative
/// to the 1 of its important entries.
pub const NOISE_CURVATURE: f32 = 0.01;

/// Elements per unit of parallel work.
const CHUNK: usize = 1 << 16;

/// Writes task `t`'s curvature `F_t` (see the module documentation) for the family
/// `spec` to `paths[t]`: a float32 safetensors file with the models' tensor names and
/// shapes, 1 on the task's important entries and [`NOISE_CURVATURE`] elsewhere. The
/// bytes depend only on the spec, as the models' do.
pub fn write_fishers(spec: &FamilySpec, paths: &[PathBuf]) -> Result<(), SynthError> {
    spec.validate()?;
    if paths.len() != spec.tasks {
        return Err(SynthError::InvalidSpec(format!(
            "{} Fisher paths for {} tasks",
            paths.len(),
            spec.tasks
        )));
    }
    let layout = tensor_layout(spec);
    let samplers: Vec<TensorSampler> = layout.iter().map(|t| TensorSampler::new(spec, t)).collect();
    let outputs: Vec<OutputTensor> = layout.iter().map(|t| t.output(Dtype::F32)).collect();
    for (task, path) in paths.iter().enumerate() {
        // The writer makes a model folder; its one shard becomes the Fisher file.
        let staging = path.with_extension("partial");
        let file_error = |action, source| SynthError::File {
            path: staging.clone(),
            action,
            source,
        };
        std::fs::create_dir(&staging).map_err(|e| file_error("create the folder", e))?;
        let written = (|| {
            let options = WriterOptions {
                shard_size: u64::MAX,
                metadata: [("generator".to_string(), "reefknot-synth".to_string())].into(),
                durable: false,
            };
            let mut writer = ModelWriter::create(&staging, outputs.clone(), &options)?;
            writer
                .data_mut_all()
                .into_par_iter()
                .zip(&samplers)
                .for_each(|(bytes, sampler)| {
                    bytes
                        .par_chunks_mut(CHUNK * 4)
                        .enumerate()
                        .for_each(|(c, chunk)| {
                            let start = (c * CHUNK) as u64;
                            for (j, b) in chunk.chunks_exact_mut(4).enumerate() {
                                let f = if sampler.is_important(task, start + j as u64) {
                                    1.0f32
                                } else {
                                    NOISE_CURVATURE
                                };
                                b.copy_from_slice(&f.to_le_bytes());
                            }
                        })
                });
            let files = writer.finish()?;
            std::fs::rename(&files[0], path).map_err(|e| SynthError::File {
                path: path.clone(),
                action: "write",
                source: e,
            })
        })();
        let _ = std::fs::remove_dir_all(&staging);
        written?;
    }
    Ok(())
}

/// `L_t(model)` for every task `t`: `½·Σ_j F_tj·(model_j − task_tj)²` over every float
/// tensor of the first task, with `F_t` read from `fishers[t]` (see the module
/// documentation). The model, the other tasks and the Fishers must have each of them,
/// with its shape. Tensors are summed in parallel and combined in order, so the result
/// does not depend on the thread count.
pub fn quadratic_losses(
    tasks: &[PathBuf],
    fishers: &[PathBuf],
    model: &Path,
) -> Result<Vec<f64>, SynthError> {
    if tasks.len() != fishers.len() {
        return Err(SynthError::Mismatch(format!(
            "{} tasks but {} Fisher files",
            tasks.len(),
            fishers.len()
        )));
    }
    let model_ck = Checkpoint::open(model)?;
    let task_cks = tasks
        .iter()
        .map(|p| Checkpoint::open(p))
        .collect::<Result<Vec<_>, _>>()?;
    let fisher_cks = fishers
        .iter()
        .map(|p| Checkpoint::open(p))
        .collect::<Result<Vec<_>, _>>()?;
    // One job per float tensor of the first task (a model that lacks one of them is an
    // error, not a smaller loss): the model's bytes, then each task's and Fisher's.
    let Some(first) = task_cks.first() else {
        return Ok(Vec::new());
    };
    let mut jobs = Vec::new();
    for info in first.tensors() {
        if !info.dtype.is_computable() {
            continue;
        }
        let reference = "the first task";
        let mut pairs = Vec::with_capacity(tasks.len());
        for t in 0..tasks.len() {
            pairs.push((
                fetch(&task_cks[t], &tasks[t], info, reference)?,
                fetch(&fisher_cks[t], &fishers[t], info, reference)?,
            ));
        }
        jobs.push((fetch(&model_ck, model, info, reference)?, pairs));
    }
    let per_tensor: Vec<Vec<f64>> = jobs
        .par_iter()
        .map(|(model, pairs)| {
            let n = model.1.len() / model.0.size();
            let mut m = vec![0.0f32; CHUNK];
            let mut x = vec![0.0f32; CHUNK];
            let mut f = vec![0.0f32; CHUNK];
            // Chunk by chunk, the model decoded once for every task.
            let mut sums = vec![0.0f64; pairs.len()];
            let mut start = 0;
            while start < n {
                let len = CHUNK.min(n - start);
                decode(*model, start, &mut m[..len]);
                for ((task, fisher), sum) in pairs.iter().zip(&mut sums) {
                    decode(*task, start, &mut x[..len]);
                    decode(*fisher, start, &mut f[..len]);
                    for ((m, x), f) in m[..len].iter().zip(&x[..len]).zip(&f[..len]) {
                        let d = f64::from(*m) - f64::from(*x);
                        *sum += f64::from(*f) * d * d;
                    }
                }
                start += len;
            }
            sums
        })
        .collect();
    let mut total = vec![0.0f64; tasks.len()];
    for sums in &per_tensor {
        for (a, b) in total.iter_mut().zip(sums) {
            *a += b;
        }
    }
    Ok(total.into_iter().map(|s| 0.5 * s).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate;
    use reefknot_io::to_f32;

    #[test]
    fn a_fine_tune_has_no_loss_on_its_task_and_the_curvature_marks_its_important_entries() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = FamilySpec::tiny();
        let family = generate(&spec, &tmp.path().join("f")).unwrap();
        let fishers: Vec<PathBuf> = (0..spec.tasks)
            .map(|t| tmp.path().join(format!("fisher_{t}.safetensors")))
            .collect();
        write_fishers(&spec, &fishers).unwrap();

        // The Fisher files hold 1 exactly where the sampler says the entry matters.
        let name = "model.layers.1.mlp.up_proj.weight";
        let tensor = tensor_layout(&spec)
            .into_iter()
            .find(|t| t.name == name)
            .unwrap();
        let sampler = TensorSampler::new(&spec, &tensor);
        let ck = Checkpoint::open(&fishers[2]).unwrap();
        let info = ck.get(name).unwrap();
        assert_eq!((info.dtype, &info.shape), (Dtype::F32, &tensor.shape));
        let mut f = vec![0.0f32; info.numel()];
        to_f32(Dtype::F32, ck.data(info), &mut f);
        let important = f.iter().filter(|&&x| x == 1.0).count();
        assert!(f.iter().all(|&x| x == 1.0 || x == NOISE_CURVATURE));
        for (j, x) in f.iter().enumerate() {
            assert_eq!(*x == 1.0, sampler.is_important(2, j as u64), "element {j}");
        }
        let share = important as f64 / f.len() as f64;
        assert!((share - f64::from(spec.density)).abs() < 0.01, "{share}");

        // Each fine-tune is its own task's optimum; the base is worse on every task,
        // and another task's fine-tune worse still (it adds its own changes).
        let on_base = quadratic_losses(&family.tasks, &fishers, &family.base).unwrap();
        let on_task0 = quadratic_losses(&family.tasks, &fishers, &family.tasks[0]).unwrap();
        assert_eq!(on_task0[0], 0.0);
        assert!(on_base.iter().all(|l| *l > 0.0));
        assert!(on_task0[1] > on_base[1] && on_task0[2] > on_base[2]);
    }

    #[test]
    fn the_loss_is_half_the_fisher_weighted_squared_distance() {
        // A one-tensor model: a hand-computed sum.
        let tmp = tempfile::tempdir().unwrap();
        let write = |name: &str, values: &[f32]| {
            let dir = tmp.path().join(name);
            std::fs::create_dir(&dir).unwrap();
            let t = OutputTensor {
                name: "w".into(),
                dtype: Dtype::F32,
                shape: vec![values.len()],
            };
            let mut w = ModelWriter::create(&dir, vec![t], &WriterOptions::default()).unwrap();
            for (b, v) in w.data_mut(0).chunks_exact_mut(4).zip(values) {
                b.copy_from_slice(&v.to_le_bytes());
            }
            w.finish().unwrap();
            dir
        };
        let model = write("m", &[1.0, 2.0, 3.0]);
        let task = write("t", &[0.0, 2.0, 5.0]);
        let fisher = write("f", &[2.0, 7.0, 0.5]);
        let loss = quadratic_losses(&[task], std::slice::from_ref(&fisher), &model).unwrap();
        // ½·(2·1² + 7·0² + 0.5·2²) = 2.
        assert_eq!(loss, vec![2.0]);
        let err = quadratic_losses(&[fisher.clone(), fisher.clone()], &[fisher], &model);
        assert!(matches!(err, Err(SynthError::Mismatch(_))));
    }
}

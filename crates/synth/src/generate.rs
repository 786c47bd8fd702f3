//! Writing a family to disk: every model at once, in parallel chunks, straight into
//! the memory-mapped safetensors files.

use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;
use reefknot_io::{from_f32, ModelWriter, OutputTensor, WriterOptions};
use serde_json::{json, Value};

use crate::sample::TensorSampler;
use crate::spec::{config_json, generation_config_json, tensor_layout, FamilySpec};
use crate::SynthError;

/// Elements per unit of parallel work: 64 Ki elements, 256 KiB of f32 scratch per buffer.
const CHUNK: usize = 1 << 16;

/// The folders of a generated family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Family {
    /// The folder holding everything (the `out` given to [`generate`]).
    pub root: PathBuf,
    /// `root/base`.
    pub base: PathBuf,
    /// `root/task_0 .. root/task_{T-1}`.
    pub tasks: Vec<PathBuf>,
}

impl Family {
    /// The folders a family generated into `out` has (whether or not it exists yet).
    pub fn at(out: &Path, tasks: usize) -> Self {
        Family {
            root: out.to_path_buf(),
            base: out.join("base"),
            tasks: (0..tasks).map(|t| out.join(format!("task_{t}"))).collect(),
        }
    }
}

/// Generates the family `spec` into `out` (created if missing): `out/base`,
/// `out/task_0 .. out/task_{T-1}`, each a complete Hugging Face Llama folder
/// (`config.json`, `generation_config.json`, `model.safetensors` or shards plus
/// `model.safetensors.index.json`), and `out/family.json` describing the spec.
///
/// Runs on the current rayon pool; the bytes written do not depend on its size.
/// The model folders must not exist yet; if generation fails, the ones it created are
/// removed again.
pub fn generate(spec: &FamilySpec, out: &Path) -> Result<Family, SynthError> {
    spec.validate()?;
    let started = Instant::now();
    let family = Family::at(out, spec.tasks);
    let dirs: Vec<&PathBuf> = std::iter::once(&family.base).chain(&family.tasks).collect();
    if let Some(dir) = dirs.iter().find(|d| d.exists()) {
        return Err(SynthError::File {
            path: dir.to_path_buf(),
            action: "create the model folder",
            source: std::io::ErrorKind::AlreadyExists.into(),
        });
    }
    std::fs::create_dir_all(out).map_err(|source| SynthError::File {
        path: out.to_path_buf(),
        action: "create the folder",
        source,
    })?;
    // Removes the model folders again unless generation completes.
    let mut cleanup = Cleanup(Vec::new());
    for dir in &dirs {
        std::fs::create_dir(dir).map_err(|source| SynthError::File {
            path: dir.to_path_buf(),
            action: "create the model folder",
            source,
        })?;
        cleanup.0.push(dir.to_path_buf());
    }

    let layout = tensor_layout(spec);
    let outputs: Vec<OutputTensor> = layout.iter().map(|t| t.output(spec.dtype)).collect();
    let options = WriterOptions {
        // No limit: one `model.safetensors`.
        shard_size: spec.shard_size.unwrap_or(u64::MAX),
        metadata: [("generator".to_string(), "reefknot-synth".to_string())].into(),
        durable: false,
    };
    let mut writers = dirs
        .iter()
        .map(|dir| ModelWriter::create(dir, outputs.clone(), &options))
        .collect::<Result<Vec<_>, _>>()?;

    let samplers: Vec<TensorSampler> = layout.iter().map(|t| TensorSampler::new(spec, t)).collect();
    let esize = spec.dtype.size();
    // One work item per (tensor, chunk): its element range and the byte range of
    // that chunk in every model's output, base first.
    let mut items: Vec<(usize, u64, Vec<&mut [u8]>)> = Vec::new();
    {
        let mut per_model: Vec<_> = writers
            .iter_mut()
            .map(|w| w.data_mut_all().into_iter())
            .collect();
        for ti in 0..layout.len() {
            let mut chunks: Vec<_> = per_model
                .iter_mut()
                .map(|m| {
                    m.next()
                        .expect("the writer has every tensor")
                        .chunks_mut(CHUNK * esize)
                })
                .collect();
            let mut start = 0u64;
            while let Some(first) = chunks[0].next() {
                let mut outs = Vec::with_capacity(chunks.len());
                let len = first.len() / esize;
                outs.push(first);
                outs.extend(
                    chunks[1..]
                        .iter_mut()
                        .map(|c| c.next().expect("every model has the same layout")),
                );
                items.push((ti, start, outs));
                start += len as u64;
            }
        }
    }
    items.into_par_iter().for_each(|(ti, start, mut outs)| {
        SCRATCH.with_borrow_mut(|Scratch { base, sign, model }| {
            let n = outs[0].len() / esize;
            let (base, sign, model) = (&mut base[..n], &mut sign[..n], &mut model[..n]);
            samplers[ti].fill_base(start, base, sign);
            from_f32(spec.dtype, base, outs[0]);
            for (t, out) in outs[1..].iter_mut().enumerate() {
                samplers[ti].fill_delta(t, start, sign, model);
                for (m, b) in model.iter_mut().zip(base.iter()) {
                    *m += *b;
                }
                from_f32(spec.dtype, model, out);
            }
        })
    });

    let config = config_json(spec);
    let generation = generation_config_json();
    for (dir, writer) in dirs.iter().zip(writers) {
        writer.finish()?;
        write_json(&dir.join("config.json"), &config)?;
        write_json(&dir.join("generation_config.json"), &generation)?;
    }
    write_json(&out.join("family.json"), &family_json(spec))?;
    cleanup.0.clear();
    tracing::info!(
        models = spec.tasks + 1,
        params_per_model = spec.params_per_model(),
        seconds = started.elapsed().as_secs_f64(),
        "generated synthetic family in {}",
        out.display()
    );
    Ok(family)
}

/// Folders to remove if generation fails half-way.
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for dir in &self.0 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

thread_local! {
    /// Each worker thread's buffers, allocated once.
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::new());
}

/// Per-thread buffers for one chunk.
struct Scratch {
    base: Vec<f32>,
    sign: Vec<f32>,
    model: Vec<f32>,
}

impl Scratch {
    fn new() -> Self {
        Scratch {
            base: vec![0.0; CHUNK],
            sign: vec![0.0; CHUNK],
            model: vec![0.0; CHUNK],
        }
    }
}

/// `family.json`: the spec a family was generated from, for people and scripts.
pub fn family_json(spec: &FamilySpec) -> Value {
    json!({
        "generator": "reefknot-synth",
        "hidden": spec.hidden,
        "layers": spec.layers,
        "intermediate": spec.intermediate,
        "vocab": spec.vocab,
        "heads": spec.heads,
        "kv_heads": spec.kv_heads,
        "tasks": spec.tasks,
        "dtype": spec.dtype.torch_name(),
        "shard_size": spec.shard_size,
        "seed": spec.seed,
        "tie_embeddings": spec.tie_embeddings,
        "delta_scale": spec.delta_scale,
        "density": spec.density,
        "conflict": spec.conflict,
        "params_per_model": spec.params_per_model(),
        "models": std::iter::once("base".to_string())
            .chain((0..spec.tasks).map(|t| format!("task_{t}")))
            .collect::<Vec<_>>(),
    })
}

fn write_json(path: &Path, value: &Value) -> Result<(), SynthError> {
    let mut text = serde_json::to_string_pretty(value).expect("JSON values always serialize");
    text.push('\n');
    std::fs::write(path, text).map_err(|source| SynthError::File {
        path: path.to_path_buf(),
        action: "write",
        source,
    })
}

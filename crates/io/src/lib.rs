//! Checkpoint I/O for reefknot: reading and writing Hugging Face safetensors models
//! without ever loading one into memory.
//!
//! - [`Checkpoint::open`] memory-maps a model (a folder, a sharded index, or one
//!   `.safetensors` file), validates every header strictly and hands out tensor bytes
//!   as slices borrowed from the maps.
//! - [`to_f32`] / [`from_f32`] convert between stored `F32`/`F16`/`BF16` bytes and `f32`
//!   working values (the hot loops of a merge).
//! - [`ModelWriter`] knows the whole output layout up front: it creates every file at
//!   its final size with its header, maps it, lets workers write their tensors in place
//!   and finishes with the index.
//!
//! ```
//! use reefknot_io::{from_f32, to_f32, Checkpoint, Dtype, ModelWriter, OutputTensor, WriterOptions};
//!
//! let dir = tempfile::tempdir()?;
//! let tensors = vec![OutputTensor { name: "w".into(), dtype: Dtype::BF16, shape: vec![2, 2] }];
//! let mut writer = ModelWriter::create(dir.path(), tensors, &WriterOptions::default())?;
//! from_f32(Dtype::BF16, &[1.0, -2.0, 0.5, 3.0], writer.data_mut(0));
//! writer.finish()?;
//!
//! let model = Checkpoint::open(dir.path())?;
//! let w = model.get("w").unwrap();
//! let mut values = vec![0.0f32; w.numel()];
//! to_f32(w.dtype, model.data(w), &mut values);
//! assert_eq!(values, [1.0, -2.0, 0.5, 3.0]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Inputs must not change while open
//! Memory-mapped inputs are read in place. reefknot never writes its inputs, but if
//! another program truncates a model file while it is open, reading the missing pages
//! kills the process (SIGBUS); if it rewrites bytes, the merge sees a mix. Do not
//! modify models while merging them.

mod convert;
mod dtype;
mod error;
mod header;
#[allow(unsafe_code)]
mod mmap;
mod read;
mod write;

pub use convert::{
    all_finite, bf16_bits_to_f32, f32_to_bf16_bits, first_nonfinite, first_overflow, from_f32,
    to_f32, to_f32_minus,
};
pub use dtype::Dtype;
pub use error::IoError;
pub use header::{check_header, MAX_HEADER_LEN};
pub use read::{model_root, within, Checkpoint, FileStamp, TensorInfo, INDEX_NAME, SINGLE_NAME};
pub use write::{
    shard_layout, shard_names, ModelWriter, OutputTensor, WriterOptions, DEFAULT_SHARD_SIZE,
};

/// Whether a file of a model folder holds weights (or indexes them), so that it must
/// not be copied into a merged model: `*.safetensors`, `pytorch_model*.bin`, `*.pt`,
/// `*.pth`, `*.gguf`, `tf_model.h5`, `flax_model.msgpack`, and their
/// `*.index.json` indexes (e.g. `model.safetensors.index.json`,
/// `pytorch_model.bin.index.json`).
///
/// `name` is a file name; a path is reduced to its last component. Case-insensitive.
pub fn is_weight_file(name: &str) -> bool {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let lower = base.to_ascii_lowercase();
    let stem = lower.strip_suffix(".index.json").unwrap_or(&lower);
    stem.ends_with(".safetensors")
        || stem.ends_with(".pt")
        || stem.ends_with(".pth")
        || stem.ends_with(".gguf")
        || (stem.starts_with("pytorch_model") && stem.ends_with(".bin"))
        || (stem.starts_with("tf_model") && stem.ends_with(".h5"))
        || (stem.starts_with("flax_model") && stem.ends_with(".msgpack"))
}

#[cfg(test)]
mod tests {
    use super::is_weight_file;

    #[test]
    fn weight_files() {
        for name in [
            "model.safetensors",
            "model-00001-of-00002.safetensors",
            "model.safetensors.index.json",
            "pytorch_model.bin",
            "pytorch_model-00001-of-00003.bin",
            "pytorch_model.bin.index.json",
            "consolidated.00.pth",
            "checkpoint.pt",
            "model-q4_k_m.gguf",
            "tf_model.h5",
            "flax_model.msgpack",
            "flax_model.msgpack.index.json",
            "sub/dir/MODEL.SAFETENSORS",
            "adapter_model.safetensors",
        ] {
            assert!(is_weight_file(name), "{name}");
        }
        for name in [
            "config.json",
            "generation_config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "tokenizer.model",
            "README.md",
            "training_args.bin",
            "vocab.txt",
            "merges.txt",
            ".gitattributes",
            "safetensors",
        ] {
            assert!(!is_weight_file(name), "{name}");
        }
    }
}

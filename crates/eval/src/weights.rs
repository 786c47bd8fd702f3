//! candle's `VarBuilder` over a reefknot [`Checkpoint`], or over tensors in memory (a
//! merge `reefknot sweep` scores without writing it): each tensor is converted to f32
//! once, whatever its stored type, so that sharded folders, bf16 and f16 load as
//! `reefknot merge` reads them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use rayon::prelude::*;
use reefknot_io::{Checkpoint, Dtype};

use crate::EvalError;

/// One tensor's stored form: type, shape and little-endian bytes.
pub struct Stored {
    /// Its type.
    pub dtype: Dtype,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// Where the tensors come from.
enum Source {
    Checkpoint(Checkpoint),
    /// Each tensor by name; its bytes are dropped once converted.
    Memory(Mutex<HashMap<String, Stored>>),
}

/// Tensors of one checkpoint, as f32 candle tensors.
pub struct Weights {
    source: Source,
    /// Every tensor's name and number of values.
    sizes: HashMap<String, usize>,
    dir: PathBuf,
    /// Names ending so that are zeros of the asked shape when the checkpoint lacks them
    /// (the q/k/v biases the Qwen2 decoder has and Llama and Mistral do not).
    zero_if_missing: &'static [&'static str],
    /// Each tensor read so far: a second request (tied embeddings) shares its storage.
    read: Mutex<HashMap<String, Tensor>>,
}

impl Weights {
    /// Opens the model folder's safetensors.
    pub fn open(dir: &Path, zero_if_missing: &'static [&'static str]) -> Result<Self, EvalError> {
        let checkpoint = Checkpoint::open(dir)?;
        let sizes = checkpoint
            .tensors()
            .iter()
            .map(|t| (t.name.clone(), t.numel()))
            .collect();
        Ok(Weights {
            source: Source::Checkpoint(checkpoint),
            sizes,
            dir: dir.to_path_buf(),
            zero_if_missing,
            read: Mutex::new(HashMap::new()),
        })
    }

    /// Tensors in memory, for the model whose other files are in `dir`.
    pub fn in_memory(
        dir: &Path,
        tensors: HashMap<String, Stored>,
        zero_if_missing: &'static [&'static str],
    ) -> Self {
        let sizes = tensors
            .iter()
            .map(|(name, t)| (name.clone(), t.shape.iter().product()))
            .collect();
        Weights {
            source: Source::Memory(Mutex::new(tensors)),
            sizes,
            dir: dir.to_path_buf(),
            zero_if_missing,
            read: Mutex::new(HashMap::new()),
        }
    }

    /// The number of values the checkpoint holds.
    pub fn parameters(&self) -> usize {
        self.sizes.values().sum()
    }

    /// Whether the checkpoint holds `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.sizes.contains_key(name)
    }

    /// The tensor `name` as f32, which must have `shape` (`None`: any).
    pub fn tensor(&self, name: &str, shape: Option<&[usize]>) -> Result<Tensor, EvalError> {
        self.load(name, shape)
            .map_err(|message| self.error(name, message))
    }

    fn error(&self, tensor: &str, message: String) -> EvalError {
        EvalError::Tensor {
            dir: self.dir.clone(),
            tensor: tensor.to_string(),
            message,
        }
    }

    fn load(&self, name: &str, shape: Option<&[usize]>) -> Result<Tensor, String> {
        if let Some(t) = self.read.lock().expect("not poisoned").get(name) {
            return check_shape(t, shape).map(|()| t.clone());
        }
        if !self.contains(name) {
            if let Some(shape) = shape {
                if self.zero_if_missing.iter().any(|end| name.ends_with(end)) {
                    return Tensor::zeros(shape, DType::F32, &Device::Cpu)
                        .map_err(|e| e.to_string());
                }
            }
            return Err("missing from the checkpoint".into());
        }
        let (values, dims) = match &self.source {
            Source::Checkpoint(c) => {
                let info = c.get(name).expect("listed in sizes");
                (to_f32(info.dtype, c.data(info))?, info.shape.clone())
            }
            Source::Memory(tensors) => {
                let stored = tensors
                    .lock()
                    .expect("not poisoned")
                    .remove(name)
                    .expect("read once: later requests find it converted");
                (to_f32(stored.dtype, &stored.bytes)?, stored.shape)
            }
        };
        let t =
            Tensor::from_vec(values, dims.as_slice(), &Device::Cpu).map_err(|e| e.to_string())?;
        self.read
            .lock()
            .expect("not poisoned")
            .insert(name.to_string(), t.clone());
        check_shape(&t, shape).map(|()| t)
    }

    /// A candle `VarBuilder` reading these weights, in f32 on the CPU.
    pub fn var_builder(self) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self), DType::F32, Device::Cpu)
    }
}

/// `bytes` of `dtype` as f32 values.
fn to_f32(dtype: Dtype, bytes: &[u8]) -> Result<Vec<f32>, String> {
    if !dtype.is_computable() {
        return Err(format!("is {dtype}, not a float type eval reads"));
    }
    // In pieces on every core: a 0.5 B model's weights are 2 GB of f32 to write.
    const PIECE: usize = 1 << 20;
    let size = dtype.size();
    let mut values = vec![0f32; bytes.len() / size];
    values
        .par_chunks_mut(PIECE)
        .zip(bytes.par_chunks(PIECE * size))
        .for_each(|(out, piece)| reefknot_io::to_f32(dtype, piece, out));
    Ok(values)
}

fn check_shape(t: &Tensor, shape: Option<&[usize]>) -> Result<(), String> {
    match shape {
        Some(s) if t.dims() != s => Err(format!("has shape {:?}, expected {s:?}", t.dims())),
        _ => Ok(()),
    }
}

impl SimpleBackend for Weights {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.get_checked(Some(s.dims()), name, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.get_checked(None, name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.contains(name)
    }
}

impl Weights {
    fn get_checked(
        &self,
        shape: Option<&[usize]>,
        name: &str,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self
            .load(name, shape)
            .map_err(|message| candle_core::Error::Msg(format!("tensor `{name}`: {message}")))?;
        t.to_dtype(dtype)?.to_device(dev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_are_checked() {
        let t = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
        assert!(check_shape(&t, Some(&[2, 3])).is_ok());
        assert!(check_shape(&t, None).is_ok());
        let e = check_shape(&t, Some(&[3, 2])).unwrap_err();
        assert_eq!(e, "has shape [2, 3], expected [3, 2]");
    }
}

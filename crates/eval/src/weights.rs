//! A model's tensors as f32 candle tensors, from a reefknot [`Checkpoint`] or from
//! tensors in memory (a merge `reefknot sweep` scores without writing it): each tensor
//! is converted to f32 once, whatever its stored type, so that sharded folders, bf16
//! and f16 load as `reefknot merge` reads them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::{Device, Tensor};
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
    /// Each tensor read so far: a second request (tied embeddings) shares its storage.
    read: Mutex<HashMap<String, Tensor>>,
}

impl Weights {
    /// Opens the model folder's safetensors.
    pub fn open(dir: &Path) -> Result<Self, EvalError> {
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
            read: Mutex::new(HashMap::new()),
        })
    }

    /// Tensors in memory, for the model whose other files are in `dir`.
    pub fn in_memory(dir: &Path, tensors: HashMap<String, Stored>) -> Self {
        let sizes = tensors
            .iter()
            .map(|(name, t)| (name.clone(), t.shape.iter().product()))
            .collect();
        Weights {
            source: Source::Memory(Mutex::new(tensors)),
            sizes,
            dir: dir.to_path_buf(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_are_checked() {
        let t = Tensor::zeros((2, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(check_shape(&t, Some(&[2, 3])).is_ok());
        assert!(check_shape(&t, None).is_ok());
        let e = check_shape(&t, Some(&[3, 2])).unwrap_err();
        assert_eq!(e, "has shape [2, 3], expected [3, 2]");
    }
}

//! Opening checkpoints: folder layout, index, shards, memory maps.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde_json::Value;

use crate::{header, mmap, Dtype, IoError};

/// The name of the index of a sharded safetensors model.
pub const INDEX_NAME: &str = "model.safetensors.index.json";
/// The name of a single-file safetensors model.
pub const SINGLE_NAME: &str = "model.safetensors";

/// Where one tensor lives: its name, type, shape and byte range in one of the
/// checkpoint's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// The tensor's name, e.g. `model.layers.0.mlp.up_proj.weight`.
    pub name: String,
    /// Its element type.
    pub dtype: Dtype,
    /// Its shape (empty for a scalar).
    pub shape: Vec<usize>,
    /// Index into [`Checkpoint::files`] of the file holding it.
    pub file: usize,
    /// Absolute byte offset of its first byte in that file.
    pub start: usize,
    /// Absolute byte offset one past its last byte in that file.
    pub end: usize,
}

impl TensorInfo {
    /// Number of elements (1 for a scalar).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Number of bytes of data (`end - start`).
    pub fn nbytes(&self) -> usize {
        self.end - self.start
    }
}

/// What identifies one file of a checkpoint as it was when opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileStamp {
    /// Its size in bytes.
    pub size: u64,
    /// Its modification time in nanoseconds since the Unix epoch, if the file system
    /// keeps one.
    pub modified: Option<u64>,
    /// The SHA-256 of its header (the 8-byte length and the JSON).
    pub header_sha256: [u8; 32],
}

impl FileStamp {
    /// The header digest in lowercase hexadecimal.
    pub fn header_hex(&self) -> String {
        self.header_sha256
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// An opened safetensors checkpoint: one file or several shards, memory-mapped.
///
/// Opening validates every header strictly; afterwards tensor data is borrowed straight
/// from the maps with [`Checkpoint::data`], never copied. The files must not be
/// modified while the checkpoint is open (see the crate documentation).
#[derive(Debug)]
pub struct Checkpoint {
    path: PathBuf,
    folder: Option<PathBuf>,
    index: Option<PathBuf>,
    files: Vec<PathBuf>,
    maps: Vec<Mmap>,
    stamps: Vec<FileStamp>,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    metadata: BTreeMap<String, String>,
    total_bytes: u64,
}

/// A parsed `*.safetensors.index.json`.
struct Index {
    path: PathBuf,
    /// Tensor name → shard name as written in the index.
    weight_map: BTreeMap<String, String>,
    /// Shard names, parallel to `Layout::files`.
    shards: Vec<String>,
}

/// What a path turned out to hold.
struct Layout {
    folder: Option<PathBuf>,
    index: Option<Index>,
    files: Vec<PathBuf>,
}

impl Checkpoint {
    /// Opens a checkpoint: a Hugging Face model folder, a single `.safetensors` file, or
    /// a `*.safetensors.index.json` file.
    ///
    /// In a folder, `model.safetensors` is used if present (as `transformers` does),
    /// else `model.safetensors.index.json` and the shards it lists, else the one
    /// `*.safetensors.index.json` or the one `*.safetensors` file there. A folder with
    /// only `pytorch_model.bin` (or other pickles) is reported as such.
    ///
    /// Every header is validated (see [`IoError`]), shards are checked against the index
    /// and against each other (no tensor twice).
    pub fn open(path: &Path) -> Result<Checkpoint, IoError> {
        let meta = fs::metadata(path).map_err(|e| IoError::io(path, "read", e))?;
        let layout = if meta.is_dir() {
            resolve_folder(path)?
        } else {
            regular(path, &meta)?;
            resolve_file(path)?
        };

        let mut maps = Vec::with_capacity(layout.files.len());
        let mut stamps = Vec::with_capacity(layout.files.len());
        let mut tensors: Vec<TensorInfo> = Vec::new();
        let mut by_name: HashMap<String, usize> = HashMap::new();
        let mut metadata = None;
        for (file_index, file_path) in layout.files.iter().enumerate() {
            let (map, modified) = map_file(file_path)?;
            let header = header::parse(file_path, &map)?;
            stamps.push(FileStamp {
                size: map.len() as u64,
                modified,
                header_sha256: header_digest(&map),
            });
            metadata.get_or_insert(header.metadata);
            for e in header.entries {
                if let Some(&other) = by_name.get(&e.name) {
                    return Err(IoError::DuplicateTensor {
                        tensor: e.name,
                        first: layout.files[tensors[other].file].clone(),
                        second: file_path.clone(),
                    });
                }
                by_name.insert(e.name.clone(), tensors.len());
                tensors.push(TensorInfo {
                    name: e.name,
                    dtype: e.dtype,
                    shape: e.shape,
                    file: file_index,
                    start: e.start,
                    end: e.end,
                });
            }
            maps.push(map);
        }

        if let Some(index) = &layout.index {
            check_index(index, &layout.files, &tensors, &by_name)?;
        }

        let total_bytes = tensors.iter().map(|t| t.nbytes() as u64).sum();
        Ok(Checkpoint {
            path: path.to_path_buf(),
            folder: layout.folder,
            index: layout.index.map(|i| i.path),
            files: layout.files,
            maps,
            stamps,
            tensors,
            by_name,
            metadata: metadata.unwrap_or_default(),
            total_bytes,
        })
    }

    /// The path as given to [`Checkpoint::open`].
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The model folder, when the checkpoint is one (given as a folder or as an index
    /// file): the place its non-weight files (config, tokenizer) are copied from.
    /// `None` for a single `.safetensors` file given directly.
    pub fn folder(&self) -> Option<&Path> {
        self.folder.as_deref()
    }

    /// The index file, when the checkpoint is sharded.
    pub fn index(&self) -> Option<&Path> {
        self.index.as_deref()
    }

    /// The safetensors files, in index order (sorted shard names).
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// What identifies each file of [`Checkpoint::files`] as it was opened: its size,
    /// modification time and the SHA-256 of its header (a merge plan's fingerprint).
    pub fn stamps(&self) -> &[FileStamp] {
        &self.stamps
    }

    /// Every tensor in storage order: by file, then by offset.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The position in [`Checkpoint::tensors`] of the tensor called `name`, if any.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// The tensor called `name`, if any.
    pub fn get(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// The bytes of `t`, borrowed from the memory map (little-endian, possibly
    /// unaligned; convert with [`crate::to_f32`]).
    ///
    /// # Panics
    /// If `t` does not come from this checkpoint and its range lies outside the file.
    pub fn data(&self, t: &TensorInfo) -> &[u8] {
        &self.maps[t.file][t.start..t.end]
    }

    /// The `__metadata__` of the first file (empty when it has none).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Total bytes of tensor data over all files (headers excluded); equals the
    /// index's `total_size` for a well-formed sharded model.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }
}

/// Maps `path`, returning the map and the file's modification time (nanoseconds since
/// the Unix epoch, where the file system keeps one), both of the one opened file.
fn map_file(path: &Path) -> Result<(Mmap, Option<u64>), IoError> {
    // Checked before opening (opening a FIFO for reading blocks until a writer comes)
    // and again on the opened file, which is opened without blocking in any case.
    let meta = fs::metadata(path).map_err(|e| IoError::io(path, "open the file", e))?;
    regular(path, &meta)?;
    let file = open_nonblocking(path).map_err(|e| IoError::io(path, "open the file", e))?;
    let meta = file
        .metadata()
        .map_err(|e| IoError::io(path, "read the file's size", e))?;
    regular(path, &meta)?;
    let len = meta.len();
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .and_then(|d| u64::try_from(d.as_nanos()).ok());
    if len < 8 {
        return Err(IoError::TooShort {
            path: path.to_path_buf(),
            len,
        });
    }
    let map = mmap::map_read(&file).map_err(|e| IoError::io(path, "memory-map the file", e))?;
    Ok((map, modified))
}

/// Refuses what is not a regular file (after following symlinks).
fn regular(path: &Path, meta: &fs::Metadata) -> Result<(), IoError> {
    if meta.is_file() {
        return Ok(());
    }
    #[cfg(unix)]
    let kind = {
        use std::os::unix::fs::FileTypeExt as _;
        let t = meta.file_type();
        if t.is_fifo() {
            "a FIFO"
        } else if t.is_socket() {
            "a socket"
        } else if t.is_block_device() || t.is_char_device() {
            "a device"
        } else if t.is_dir() {
            "a folder"
        } else {
            "not a file"
        }
    };
    #[cfg(not(unix))]
    let kind = if meta.is_dir() {
        "a folder"
    } else {
        "not a file"
    };
    Err(IoError::NotAFile {
        path: path.to_path_buf(),
        kind,
    })
}

/// Opens `path` for reading without ever blocking in `open` (a FIFO swapped in after
/// the check would otherwise wait for a writer).
fn open_nonblocking(path: &Path) -> std::io::Result<File> {
    let mut options = fs::OpenOptions::new();
    options.read(true);
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32);
    }
    options.open(path)
}

/// The folder a model's files must lie in, once symlinks are resolved: the model's
/// folder itself, or — for a snapshot of the Hugging Face cache
/// (`models--ORG--NAME/snapshots/REVISION`, whose files link to `../../blobs/`) — the
/// repository's folder. Canonical where the folder exists.
pub fn model_root(folder: &Path) -> PathBuf {
    let folder = folder
        .canonicalize()
        .unwrap_or_else(|_| folder.to_path_buf());
    let repo = folder
        .parent()
        .filter(|p| p.file_name().is_some_and(|n| n == "snapshots"))
        .and_then(Path::parent)
        .filter(|r| {
            r.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("models--") || n.starts_with("datasets--"))
        });
    repo.map(Path::to_path_buf).unwrap_or(folder)
}

/// Whether `path`, symlinks resolved, lies inside `root` (a [`model_root`]).
pub fn within(root: &Path, path: &Path) -> bool {
    path.canonicalize().is_ok_and(|p| p.starts_with(root))
}

/// Whether a name written in an index is a plain relative path: no root, no `..`.
fn plain_relative(name: &str) -> bool {
    let path = Path::new(name);
    !name.is_empty()
        && path.components().all(|c| {
            matches!(
                c,
                std::path::Component::Normal(_) | std::path::Component::CurDir
            )
        })
}

/// The SHA-256 of a validated file's header: its 8-byte length and the JSON.
fn header_digest(map: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    let len = u64::from_le_bytes(map[..8].try_into().expect("8 bytes")) as usize;
    sha2::Sha256::digest(&map[..8 + len]).into()
}

fn resolve_file(path: &Path) -> Result<Layout, IoError> {
    let name = file_name(path);
    let parent = path
        .parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            }
        })
        .unwrap_or(Path::new("."));
    if name.ends_with(".index.json") {
        if !name.ends_with(".safetensors.index.json") {
            return Err(IoError::BadIndex {
                path: path.to_path_buf(),
                what: "only safetensors indexes (*.safetensors.index.json) can be read; \
                       PyTorch pickle checkpoints must be converted to safetensors first"
                    .into(),
            });
        }
        let (index, files) = read_index(path, parent)?;
        return Ok(Layout {
            folder: Some(parent.to_path_buf()),
            index: Some(index),
            files,
        });
    }
    if is_pickle(&name) {
        return Err(IoError::PickleOnly {
            path: path.to_path_buf(),
            file: name,
        });
    }
    Ok(Layout {
        folder: None,
        index: None,
        files: vec![path.to_path_buf()],
    })
}

fn resolve_folder(dir: &Path) -> Result<Layout, IoError> {
    let single = dir.join(SINGLE_NAME);
    if let Ok(meta) = fs::metadata(&single) {
        regular(&single, &meta)?;
    }
    if single.is_file() {
        return Ok(Layout {
            folder: Some(dir.to_path_buf()),
            index: None,
            files: vec![single],
        });
    }
    let index = dir.join(INDEX_NAME);
    let mut names = Vec::new();
    if !index.is_file() {
        let entries = fs::read_dir(dir).map_err(|e| IoError::io(dir, "list the folder", e))?;
        for entry in entries {
            let entry = entry.map_err(|e| IoError::io(dir, "list the folder", e))?;
            if entry
                .file_type()
                .is_ok_and(|t| t.is_file() || t.is_symlink())
            {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
    }
    let indexes: Vec<&String> = names
        .iter()
        .filter(|n| n.ends_with(".safetensors.index.json"))
        .collect();
    let index = if index.is_file() {
        Some(index)
    } else if let [one] = indexes.as_slice() {
        Some(dir.join(one))
    } else {
        None
    };
    if let Some(index) = index {
        let (index, files) = read_index(&index, dir)?;
        return Ok(Layout {
            folder: Some(dir.to_path_buf()),
            index: Some(index),
            files,
        });
    }
    let shards: Vec<&String> = names
        .iter()
        .filter(|n| n.ends_with(".safetensors"))
        .collect();
    match shards.as_slice() {
        [one] => Ok(Layout {
            folder: Some(dir.to_path_buf()),
            index: None,
            files: vec![dir.join(one)],
        }),
        [] => match find_pickle(&names) {
            Some(pickle) => Err(IoError::PickleOnly {
                path: dir.to_path_buf(),
                file: pickle.clone(),
            }),
            None => Err(IoError::NoWeights {
                path: dir.to_path_buf(),
            }),
        },
        several => Err(IoError::AmbiguousWeights {
            path: dir.to_path_buf(),
            files: several.iter().map(|s| s.to_string()).collect(),
        }),
    }
}

/// Reads an index: its weight map and the shard paths (sorted by name, deduplicated,
/// each checked to exist).
fn read_index(index: &Path, dir: &Path) -> Result<(Index, Vec<PathBuf>), IoError> {
    let bad = |what: String| IoError::BadIndex {
        path: index.to_path_buf(),
        what,
    };
    let text = fs::read(index).map_err(|e| IoError::io(index, "read the index", e))?;
    let value: Value = serde_json::from_slice(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let Value::Object(mut top) = value else {
        return Err(bad(
            "expected a JSON object {\"metadata\": .., \"weight_map\": {tensor: file}}".into(),
        ));
    };
    let Some(Value::Object(map)) = top.remove("weight_map") else {
        return Err(bad(
            "it has no \"weight_map\" object mapping tensor names to shard files".into(),
        ));
    };
    let mut weight_map = BTreeMap::new();
    let mut per_shard: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for (tensor, shard) in map {
        let Value::String(shard) = shard else {
            return Err(bad(format!(
                "weight_map maps `{tensor}` to {shard}, expected a file name string"
            )));
        };
        let slot = per_shard
            .entry(shard.clone())
            .or_insert_with(|| (0, tensor.clone()));
        slot.0 += 1;
        weight_map.insert(tensor, shard);
    }
    if per_shard.is_empty() {
        return Err(bad("its weight_map is empty".into()));
    }
    let mut files = Vec::with_capacity(per_shard.len());
    let mut shards = Vec::with_capacity(per_shard.len());
    let root = model_root(dir);
    for (shard, (count, tensor)) in per_shard {
        let shard_path = dir.join(&shard);
        let outside = || IoError::OutsideFolder {
            index: index.to_path_buf(),
            shard: shard.clone(),
            tensor: tensor.clone(),
            folder: root.clone(),
        };
        if !plain_relative(&shard) {
            return Err(outside());
        }
        if shard_path.exists() && !within(&root, &shard_path) {
            return Err(outside());
        }
        if !shard_path.is_file() {
            return Err(IoError::MissingShard {
                index: index.to_path_buf(),
                shard,
                shard_path,
                tensor,
                count,
            });
        }
        files.push(shard_path);
        shards.push(shard);
    }
    let index = Index {
        path: index.to_path_buf(),
        weight_map,
        shards,
    };
    Ok((index, files))
}

/// Checks that the index and the shard headers list the same tensors in the same files.
fn check_index(
    index: &Index,
    files: &[PathBuf],
    tensors: &[TensorInfo],
    by_name: &HashMap<String, usize>,
) -> Result<(), IoError> {
    for (tensor, shard) in &index.weight_map {
        let found = by_name.get(tensor).map(|&i| tensors[i].file);
        if found.map(|f| &index.shards[f]) != Some(shard) {
            let shard_file = index.shards.iter().position(|s| s == shard);
            return Err(IoError::NotInShard {
                index: index.path.clone(),
                shard: shard_file.map_or_else(|| PathBuf::from(shard), |f| files[f].clone()),
                tensor: tensor.clone(),
                found_in: found.map(|f| files[f].clone()),
            });
        }
    }
    if let Some(t) = tensors
        .iter()
        .find(|t| !index.weight_map.contains_key(&t.name))
    {
        return Err(IoError::NotInIndex {
            index: index.path.clone(),
            shard: files[t.file].clone(),
            tensor: t.name.clone(),
        });
    }
    Ok(())
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The pickle weight file of a folder with no safetensors, preferring
/// `pytorch_model*.bin` (`training_args.bin` is not weights).
fn find_pickle(names: &[String]) -> Option<&String> {
    names
        .iter()
        .find(|n| n.starts_with("pytorch_model") && is_pickle(n))
        .or_else(|| {
            names
                .iter()
                .find(|n| is_pickle(n) && n.as_str() != "training_args.bin")
        })
}

fn is_pickle(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name.ends_with(".bin") || name.ends_with(".pt") || name.ends_with(".pth")
}

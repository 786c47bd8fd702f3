//! The error type of checkpoint reading and writing.

use std::path::{Path, PathBuf};

use crate::Dtype;

/// Everything that can go wrong reading or writing a checkpoint.
///
/// Every variant names the file it is about (for writer errors, the output folder or
/// file), the tensor where there is one, and what was expected instead. The messages
/// are complete sentences meant for end users.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IoError {
    /// An operating-system error while working on a file.
    #[error("{}: cannot {action}: {source}", .path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What was being done, e.g. `"open the file"`.
        action: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The path given does not exist.
    #[error("{}: no such file or folder", .path.display())]
    NotFound {
        /// The path as given.
        path: PathBuf,
    },

    /// A folder with no model weights at all.
    #[error(
        "{}: no model weights in this folder: expected model.safetensors, \
         model.safetensors.index.json or a single *.safetensors file",
        .path.display()
    )]
    NoWeights {
        /// The folder.
        path: PathBuf,
    },

    /// A folder whose weights exist only as PyTorch pickles (`pytorch_model.bin`, `*.pt`).
    #[error(
        "{}: this model has only PyTorch pickle weights ({file}); reefknot reads safetensors \
         only (pickles can run arbitrary code). Convert it first, e.g. in Python: \
         AutoModel.from_pretrained(path).save_pretrained(path, safe_serialization=True)",
        .path.display()
    )]
    PickleOnly {
        /// The folder.
        path: PathBuf,
        /// The pickle file found, e.g. `pytorch_model.bin`.
        file: String,
    },

    /// A folder with several `.safetensors` files but no index saying which form the model.
    #[error(
        "{}: {} .safetensors files ({}) but no model.safetensors.index.json saying which \
         belong to the model; add the index or give the path of one file",
        .path.display(), .files.len(), .files.join(", ")
    )]
    AmbiguousWeights {
        /// The folder.
        path: PathBuf,
        /// The `.safetensors` file names found.
        files: Vec<String>,
    },

    /// A file shorter than the 8-byte header length prefix.
    #[error(
        "{}: the file is {len} bytes long, too short for a safetensors file \
         (which starts with an 8-byte header length): the file is empty or truncated",
        .path.display()
    )]
    TooShort {
        /// The file.
        path: PathBuf,
        /// Its length in bytes.
        len: u64,
    },

    /// A header length beyond any sane header size.
    #[error(
        "{}: its first 8 bytes, read as a safetensors header length, give more than the \
         limit of {limit} bytes: this is not a safetensors file, or its start is corrupt",
        .path.display()
    )]
    HeaderTooLarge {
        /// The file.
        path: PathBuf,
        /// The header length read from the first 8 bytes (never shown in the message:
        /// the bytes of a file that is not a safetensors file are its own business).
        header_len: u64,
        /// The largest header accepted.
        limit: u64,
    },

    /// A header length that runs past the end of the file.
    #[error(
        "{}: its first 8 bytes, read as a safetensors header length, run past the end of \
         the file ({file_len} bytes): the file is truncated or not a safetensors file",
        .path.display()
    )]
    HeaderPastEnd {
        /// The file.
        path: PathBuf,
        /// The header length read from the first 8 bytes (not shown in the message).
        header_len: u64,
        /// The file's length.
        file_len: u64,
    },

    /// A header that is not valid UTF-8.
    #[error(
        "{}: the header is not valid UTF-8 (bad byte at offset {offset} of the header): \
         the file is corrupt or not a safetensors file",
        .path.display()
    )]
    HeaderNotUtf8 {
        /// The file.
        path: PathBuf,
        /// Byte offset within the header of the first invalid byte.
        offset: usize,
    },

    /// A header that is not valid JSON, or not a JSON object.
    #[error("{}: the header is not valid safetensors JSON: {message}", .path.display())]
    HeaderJson {
        /// The file.
        path: PathBuf,
        /// The parser's description, with line and column.
        message: String,
    },

    /// A `__metadata__` entry that is not an object of strings.
    #[error(
        "{}: the header's __metadata__ must be a JSON object of string values: {what}",
        .path.display()
    )]
    BadMetadata {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },

    /// A tensor entry of the header that is malformed (missing or mistyped field).
    #[error("{}: tensor `{tensor}`: {what}", .path.display())]
    BadEntry {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// What is wrong and what was expected.
        what: String,
    },

    /// A dtype string that the safetensors format does not define, or that reefknot
    /// does not support.
    #[error(
        "{}: tensor `{tensor}` has dtype `{dtype}`, {reason}; supported dtypes: {}",
        .path.display(), Dtype::supported_list()
    )]
    UnsupportedDtype {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The dtype string in the header.
        dtype: String,
        /// Why it is not supported.
        reason: &'static str,
    },

    /// A tensor whose byte range does not match its shape and dtype.
    #[error(
        "{}: tensor `{tensor}` has shape {shape:?} of {dtype}, which needs {expected} bytes, \
         but its data_offsets {start}..{end} span {actual} bytes",
        .path.display()
    )]
    SizeMismatch {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Its dtype.
        dtype: Dtype,
        /// Its shape.
        shape: Vec<usize>,
        /// Bytes the shape and dtype need.
        expected: usize,
        /// Bytes the offsets span.
        actual: usize,
        /// Start offset in the header (relative to the data area).
        start: usize,
        /// End offset in the header (relative to the data area).
        end: usize,
    },

    /// A tensor whose end offset is before its start offset.
    #[error(
        "{}: tensor `{tensor}` has data_offsets {start}..{end}, which end before they start",
        .path.display()
    )]
    ReversedOffsets {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Start offset (relative to the data area).
        start: usize,
        /// End offset (relative to the data area).
        end: usize,
    },

    /// A tensor whose bytes lie (partly) beyond the end of the file.
    #[error(
        "{}: tensor `{tensor}`: the header says bytes {start}..{end} but the data area is \
         only {data_len} bytes: the file is truncated or its header lies",
        .path.display()
    )]
    OutOfBounds {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Start offset (relative to the data area).
        start: usize,
        /// End offset (relative to the data area).
        end: usize,
        /// Size of the data area (file length − 8 − header length).
        data_len: usize,
    },

    /// Two tensors whose byte ranges overlap.
    #[error(
        "{}: tensor `{tensor}` (bytes {start}..{end}) overlaps tensor `{previous}` \
         (bytes {previous_start}..{previous_end}): each tensor must have its own bytes",
        .path.display()
    )]
    Overlap {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Its start offset.
        start: usize,
        /// Its end offset.
        end: usize,
        /// The tensor it overlaps.
        previous: String,
        /// That tensor's start offset.
        previous_start: usize,
        /// That tensor's end offset.
        previous_end: usize,
    },

    /// Bytes between tensors that belong to no tensor.
    #[error(
        "{}: tensor `{tensor}` starts at byte {start} of the data area but {} ends at byte \
         {expected}: tensors must be contiguous, {} bytes belong to no tensor",
        .path.display(),
        .previous.as_ref().map_or_else(|| "nothing".to_string(), |p| format!("the previous tensor `{p}`")),
        .start - .expected
    )]
    Gap {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Its start offset.
        start: usize,
        /// Where it should start (the previous tensor's end, or 0).
        expected: usize,
        /// The previous tensor in storage order, if any.
        previous: Option<String>,
    },

    /// Bytes after the last tensor that belong to no tensor.
    #[error(
        "{}: the data area is {data_len} bytes but the tensors end at byte {end}: \
         {} trailing bytes belong to no tensor",
        .path.display(), .data_len - .end
    )]
    TrailingData {
        /// The file.
        path: PathBuf,
        /// Where the last tensor ends.
        end: usize,
        /// Size of the data area.
        data_len: usize,
    },

    /// A tensor name that appears twice (in one header or in two shards).
    #[error(
        "tensor `{tensor}` appears in both {} and {}: a checkpoint must hold each tensor once",
        .first.display(), .second.display()
    )]
    DuplicateTensor {
        /// The tensor.
        tensor: String,
        /// The first file holding it.
        first: PathBuf,
        /// The second file holding it (equal to `first` for a header that lists it twice).
        second: PathBuf,
    },

    /// A `*.safetensors.index.json` that is not valid.
    #[error("{}: invalid index file: {what}", .path.display())]
    BadIndex {
        /// The index file.
        path: PathBuf,
        /// What is wrong and what was expected.
        what: String,
    },

    /// An index that lists a shard file which does not exist.
    #[error(
        "{}: the index maps {count} tensor(s) (e.g. `{tensor}`) to shard {shard}, but {} \
         does not exist: the download is incomplete",
        .index.display(), .shard_path.display()
    )]
    MissingShard {
        /// The index file.
        index: PathBuf,
        /// The shard name in the index.
        shard: String,
        /// Where the shard was looked for.
        shard_path: PathBuf,
        /// One tensor the index maps to it.
        tensor: String,
        /// How many tensors the index maps to it.
        count: usize,
    },

    /// A weight path that is not a regular file: a FIFO, a device or a socket, which
    /// could block the merge forever or never end.
    #[error("{}: not a regular file ({kind}); weights are read from regular files only", .path.display())]
    NotAFile {
        /// The path.
        path: PathBuf,
        /// What it is instead: `a FIFO`, `a device`, `a socket`.
        kind: &'static str,
    },

    /// An index entry naming a file outside the model's folder.
    #[error(
        "{}: the index maps tensor `{tensor}` to `{shard}`, which lies outside the model's \
         folder {}",
        .index.display(), .folder.display()
    )]
    OutsideFolder {
        /// The index file.
        index: PathBuf,
        /// The shard name in the index.
        shard: String,
        /// One tensor the index maps to it.
        tensor: String,
        /// The folder shards must lie in (for a Hugging Face cache snapshot, the
        /// repository's folder, whose blobs the snapshot links to).
        folder: PathBuf,
    },

    /// An index entry whose shard's header does not hold the tensor.
    #[error(
        "{}: the index maps tensor `{tensor}` to {}, but that shard's header has no such \
         tensor{}",
        .index.display(), .shard.display(),
        .found_in.as_ref().map_or_else(String::new, |f| format!(" (it is in {})", f.display()))
    )]
    NotInShard {
        /// The index file.
        index: PathBuf,
        /// The shard the index names.
        shard: PathBuf,
        /// The tensor.
        tensor: String,
        /// The shard that does hold it, if any.
        found_in: Option<PathBuf>,
    },

    /// A tensor in a shard's header that the index does not list.
    #[error(
        "{}: shard {} holds tensor `{tensor}`, which the index does not list: the index and \
         the shards disagree",
        .index.display(), .shard.display()
    )]
    NotInIndex {
        /// The index file.
        index: PathBuf,
        /// The shard holding the tensor.
        shard: PathBuf,
        /// The tensor.
        tensor: String,
    },

    /// An output file that already exists (outputs never overwrite anything).
    #[error("{}: already exists; reefknot never overwrites a file", .path.display())]
    OutputExists {
        /// The file.
        path: PathBuf,
    },

    /// Not enough disk space for an output file.
    #[error(
        "{}: not enough disk space: this output file needs {needed} bytes",
        .path.display()
    )]
    OutOfSpace {
        /// The output file.
        path: PathBuf,
        /// Its size in bytes.
        needed: u64,
    },

    /// An output tensor list that cannot be written.
    #[error("{}: cannot write tensor `{tensor}`: {what}", .path.display())]
    BadOutput {
        /// The output folder.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// What is wrong.
        what: String,
    },
}

impl IoError {
    /// The file (or folder) the error is about. For a duplicate tensor, the second
    /// file; for index problems, the index.
    pub fn path(&self) -> &Path {
        match self {
            IoError::Io { path, .. }
            | IoError::NotFound { path }
            | IoError::NoWeights { path }
            | IoError::PickleOnly { path, .. }
            | IoError::AmbiguousWeights { path, .. }
            | IoError::TooShort { path, .. }
            | IoError::HeaderTooLarge { path, .. }
            | IoError::HeaderPastEnd { path, .. }
            | IoError::HeaderNotUtf8 { path, .. }
            | IoError::HeaderJson { path, .. }
            | IoError::BadMetadata { path, .. }
            | IoError::BadEntry { path, .. }
            | IoError::UnsupportedDtype { path, .. }
            | IoError::SizeMismatch { path, .. }
            | IoError::ReversedOffsets { path, .. }
            | IoError::OutOfBounds { path, .. }
            | IoError::Overlap { path, .. }
            | IoError::Gap { path, .. }
            | IoError::TrailingData { path, .. }
            | IoError::BadIndex { path, .. }
            | IoError::OutputExists { path }
            | IoError::OutOfSpace { path, .. }
            | IoError::BadOutput { path, .. } => path,
            IoError::DuplicateTensor { second, .. } => second,
            IoError::NotAFile { path, .. } => path,
            IoError::MissingShard { index, .. }
            | IoError::OutsideFolder { index, .. }
            | IoError::NotInShard { index, .. }
            | IoError::NotInIndex { index, .. } => index,
        }
    }

    /// The tensor the error is about, where there is one.
    pub fn tensor(&self) -> Option<&str> {
        match self {
            IoError::BadEntry { tensor, .. }
            | IoError::UnsupportedDtype { tensor, .. }
            | IoError::SizeMismatch { tensor, .. }
            | IoError::ReversedOffsets { tensor, .. }
            | IoError::OutOfBounds { tensor, .. }
            | IoError::Overlap { tensor, .. }
            | IoError::Gap { tensor, .. }
            | IoError::DuplicateTensor { tensor, .. }
            | IoError::MissingShard { tensor, .. }
            | IoError::NotInShard { tensor, .. }
            | IoError::NotInIndex { tensor, .. }
            | IoError::BadOutput { tensor, .. } => Some(tensor),
            _ => None,
        }
    }

    pub(crate) fn io(path: &Path, action: &'static str, source: std::io::Error) -> IoError {
        if source.kind() == std::io::ErrorKind::NotFound {
            IoError::NotFound {
                path: path.to_path_buf(),
            }
        } else {
            IoError::Io {
                path: path.to_path_buf(),
                action,
                source,
            }
        }
    }
}

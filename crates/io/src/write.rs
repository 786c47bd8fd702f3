//! Writing a checkpoint in place: lay out, create at final size, map, fill, finish.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use memmap2::MmapMut;

use crate::read::{INDEX_NAME, SINGLE_NAME};
use crate::{mmap, Dtype, IoError};

/// The default shard size: 5 GB of tensor data per file, as `transformers` uses.
pub const DEFAULT_SHARD_SIZE: u64 = 5_000_000_000;

/// A tensor to write: its name, dtype and shape (its bytes come later).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputTensor {
    /// The tensor's name.
    pub name: String,
    /// Its element type in the output.
    pub dtype: Dtype,
    /// Its shape.
    pub shape: Vec<usize>,
}

impl OutputTensor {
    /// Number of elements (1 for a scalar).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Number of bytes of data.
    pub fn nbytes(&self) -> usize {
        self.numel() * self.dtype.size()
    }
}

/// How [`ModelWriter`] lays out its files.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Most bytes of tensor data per shard (a tensor larger than this gets a shard of its
    /// own). Default [`DEFAULT_SHARD_SIZE`] (5 GB).
    pub shard_size: u64,
    /// Extra `__metadata__` entries written into every file's header, next to
    /// `"format": "pt"` (e.g. the recipe, for provenance). An entry `format` here
    /// replaces the default `"pt"`.
    pub metadata: BTreeMap<String, String>,
    /// Make the files durable: sync them to disk while they are written and in
    /// [`ModelWriter::finish`], and sync the folder. Off by default: the files are
    /// complete in the page cache when `finish` returns (what every reader sees), and
    /// the kernel writes them back in its own time, as `cp` leaves a copy; syncing costs
    /// about as long again as writing into the page cache, and only matters if the
    /// machine loses power before write-back.
    pub durable: bool,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            shard_size: DEFAULT_SHARD_SIZE,
            metadata: BTreeMap::new(),
            durable: false,
        }
    }
}

/// Where one output tensor lives.
#[derive(Debug, Clone, Copy)]
struct Place {
    file: usize,
    /// Absolute byte range in the file.
    start: usize,
    end: usize,
}

#[derive(Debug)]
struct Shard {
    path: PathBuf,
    file: Arc<File>,
    /// Bytes written with [`ModelWriter::write_at`] so far.
    written: AtomicU64,
    /// The file mapped for writing, once [`ModelWriter::data_mut`] or
    /// [`ModelWriter::data_mut_all`] asked for it.
    map: Option<MmapMut>,
    /// Where the data area starts (8 + header length).
    data_start: usize,
}

impl Shard {
    fn map(&mut self) -> &mut MmapMut {
        let (file, path) = (&self.file, &self.path);
        self.map.get_or_insert_with(|| {
            mmap::map_write(file)
                .unwrap_or_else(|e| panic!("cannot memory-map {} for writing: {e}", path.display()))
        })
    }
}

/// Positional writes hand a shard to the background syncer every time this many more
/// bytes of it have been written.
const SYNC_EVERY: u64 = 128 << 20;

/// A thread that syncs shards to disk while the merge goes on, so that the data is
/// mostly on disk when [`ModelWriter::finish`] makes it durable.
#[derive(Debug)]
struct Syncer {
    requests: mpsc::Sender<usize>,
    thread: std::thread::JoinHandle<Result<(), (usize, std::io::Error)>>,
}

impl Syncer {
    fn start(files: Vec<Arc<File>>) -> Syncer {
        let (tx, rx) = mpsc::channel::<usize>();
        let thread = std::thread::spawn(move || {
            let mut first_error = Ok(());
            for shard in rx {
                if let Err(e) = files[shard].sync_data() {
                    if first_error.is_ok() {
                        first_error = Err((shard, e));
                    }
                }
            }
            first_error
        });
        Syncer {
            requests: tx,
            thread,
        }
    }

    fn request(&self, shard: usize) {
        // The thread runs until the writer finishes, so the send cannot fail before.
        let _ = self.requests.send(shard);
    }

    /// Waits for the syncs under way; the first error, if any, names its shard.
    fn stop(self) -> Result<(), (usize, std::io::Error)> {
        let Syncer { requests, thread } = self;
        drop(requests);
        thread
            .join()
            .unwrap_or_else(|_| Err((0, std::io::Error::other("the sync thread panicked"))))
    }
}

/// Writes a safetensors checkpoint whose layout is fixed up front.
///
/// [`ModelWriter::create`] lays the tensors out into shards and creates every file at
/// its final size with its header written; workers then fill each tensor's bytes in
/// place, either with positional writes from their own buffers
/// ([`ModelWriter::write_at`], which takes `&self` and may be called from many threads)
/// or through memory maps ([`ModelWriter::data_mut`], [`ModelWriter::data_mut_all`]);
/// and [`ModelWriter::finish`] writes the index (and, when
/// [`WriterOptions::durable`], flushes and syncs everything). Tensors never written read
/// back as zeros.
///
/// Positional writes are the fast path for streaming: writing through a map first
/// faults every page in (and the kernel zero-fills it), which costs more than the
/// copy a `pwrite` does. When the writer is durable, a background thread syncs each
/// shard to disk every 128 MiB written while they go on, so that the final sync in
/// `finish` has little left to do.
///
/// Dropping a writer without `finish` leaves incomplete files behind: write into a
/// temporary folder and rename it into place after `finish` succeeds.
#[derive(Debug)]
pub struct ModelWriter {
    dir: PathBuf,
    tensors: Vec<OutputTensor>,
    places: Vec<Place>,
    shards: Vec<Shard>,
    /// The reserved index file, when there are several shards.
    index: Option<(PathBuf, File)>,
    total_size: u64,
    /// The background syncer, when durable.
    syncer: Option<Syncer>,
}

impl ModelWriter {
    /// Lays the tensors out (in the given order) into shards of at most
    /// `opts.shard_size` bytes of data (a tensor larger than a shard gets its own
    /// shard), creates every file in `dir` (an existing folder, normally empty) at its
    /// final size, writes the headers, and memory-maps the files for writing.
    ///
    /// One shard is written as `model.safetensors`; several as
    /// `model-00001-of-0000N.safetensors` plus `model.safetensors.index.json`
    /// (written by [`ModelWriter::finish`], but reserved now). No existing file is ever
    /// overwritten: if one of these names exists, this fails with
    /// [`IoError::OutputExists`]. On error, the files created so far are removed.
    pub fn create(
        dir: &Path,
        tensors: Vec<OutputTensor>,
        opts: &WriterOptions,
    ) -> Result<ModelWriter, IoError> {
        let meta = fs::metadata(dir).map_err(|e| IoError::io(dir, "read the output folder", e))?;
        if !meta.is_dir() {
            return Err(IoError::Io {
                path: dir.to_path_buf(),
                action: "write into the output folder",
                source: std::io::Error::other("not a folder"),
            });
        }
        let sizes = validate(dir, &tensors)?;
        let layout = ranges(&shard_layout(&sizes, opts.shard_size));
        let n = layout.len();
        let names = shard_names(n);

        let mut metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        metadata.extend(opts.metadata.iter().map(|(k, v)| (k.clone(), v.clone())));

        let mut created = Created(Vec::new());
        let index = if n > 1 {
            let path = dir.join(INDEX_NAME);
            let file = create_new(&path)?;
            created.0.push(path.clone());
            Some((path, file))
        } else {
            None
        };

        let mut places = Vec::with_capacity(tensors.len());
        let mut shards = Vec::with_capacity(n);
        for (file_index, (range, name)) in layout.iter().zip(&names).enumerate() {
            let members = &tensors[range.clone()];
            let header = header_bytes(members, &sizes[range.clone()], &metadata);
            let data_start = 8 + header.len();
            let data_len: usize = sizes[range.clone()].iter().sum();
            let path = dir.join(name);
            let file = create_new(&path)?;
            created.0.push(path.clone());
            let file_len = data_start + data_len;
            preallocate(&file, &path, file_len as u64)?;
            let mut head = Vec::with_capacity(data_start);
            head.extend_from_slice(&(header.len() as u64).to_le_bytes());
            head.extend_from_slice(&header);
            write_all_at(&file, &head, 0).map_err(|e| IoError::io(&path, "write the header", e))?;
            let mut offset = data_start;
            for &size in &sizes[range.clone()] {
                places.push(Place {
                    file: file_index,
                    start: offset,
                    end: offset + size,
                });
                offset += size;
            }
            shards.push(Shard {
                path,
                file: Arc::new(file),
                written: AtomicU64::new(0),
                map: None,
                data_start,
            });
        }
        created.0.clear();
        let total_size = sizes.iter().map(|&s| s as u64).sum();
        let syncer = opts
            .durable
            .then(|| Syncer::start(shards.iter().map(|s| Arc::clone(&s.file)).collect()));
        Ok(ModelWriter {
            dir: dir.to_path_buf(),
            tensors,
            places,
            shards,
            index,
            total_size,
            syncer,
        })
    }

    /// The tensors, in the order given to [`ModelWriter::create`].
    pub fn tensors(&self) -> &[OutputTensor] {
        &self.tensors
    }

    /// The output files (shards, then the index when sharded).
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self.shards.iter().map(|s| s.path.clone()).collect();
        files.extend(self.index.as_ref().map(|(p, _)| p.clone()));
        files
    }

    /// The output folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Total bytes of tensor data (the index's `total_size`).
    pub fn total_size(&self) -> u64 {
        self.total_size
    }

    /// The bytes of tensor `index` (in [`ModelWriter::tensors`] order) in its mapped
    /// file, to be filled little-endian (e.g. with [`crate::from_f32`]).
    ///
    /// # Panics
    /// If `index` is out of range, or if the file cannot be memory-mapped (the map is
    /// made on first use).
    pub fn data_mut(&mut self, index: usize) -> &mut [u8] {
        let p = self.places[index];
        &mut self.shards[p.file].map()[p.start..p.end]
    }

    /// Writes `bytes` at byte `offset` of tensor `index` (in [`ModelWriter::tensors`]
    /// order) with a positional write. Safe to call from many threads at once for
    /// disjoint ranges.
    ///
    /// # Panics
    /// If the range lies outside the tensor (a caller bug).
    pub fn write_at(&self, index: usize, offset: usize, bytes: &[u8]) -> Result<(), IoError> {
        let p = self.places[index];
        assert!(
            offset + bytes.len() <= p.end - p.start,
            "write past the end of tensor `{}`",
            self.tensors[index].name
        );
        let shard = &self.shards[p.file];
        write_all_at(&shard.file, bytes, (p.start + offset) as u64).map_err(|e| {
            if e.raw_os_error() == Some(28) {
                IoError::OutOfSpace {
                    path: shard.path.clone(),
                    needed: bytes.len() as u64,
                }
            } else {
                IoError::io(&shard.path, "write the output file", e)
            }
        })?;
        let len = bytes.len() as u64;
        let after = shard.written.fetch_add(len, Ordering::Relaxed) + len;
        if let Some(syncer) = &self.syncer {
            if (after - len) / SYNC_EVERY != after / SYNC_EVERY {
                syncer.request(p.file);
            }
        }
        Ok(())
    }

    /// Disjoint mutable slices for every tensor, in [`ModelWriter::tensors`] order, so
    /// that parallel workers can each fill their own tensors.
    ///
    /// # Panics
    /// If a file cannot be memory-mapped (the maps are made on first use).
    pub fn data_mut_all(&mut self) -> Vec<&mut [u8]> {
        let mut rests: Vec<&mut [u8]> = self
            .shards
            .iter_mut()
            .map(|s| {
                let start = s.data_start;
                &mut s.map()[start..]
            })
            .collect();
        let mut out = Vec::with_capacity(self.places.len());
        for p in &self.places {
            let rest = std::mem::take(&mut rests[p.file]);
            let (head, tail) = rest.split_at_mut(p.end - p.start);
            rests[p.file] = tail;
            out.push(head);
        }
        out
    }

    /// Writes `model.safetensors.index.json` when sharded and returns the files written
    /// (shards, then the index). When durable, first flushes the maps and syncs the
    /// files, and at the end the folder, to disk.
    pub fn finish(self) -> Result<Vec<PathBuf>, IoError> {
        let durable = self.syncer.is_some();
        if let Some(Err((shard, e))) = self.syncer.map(Syncer::stop) {
            return Err(IoError::io(
                &self.shards[shard].path,
                "sync the output file",
                e,
            ));
        }
        let mut written = Vec::with_capacity(self.shards.len() + 1);
        let mut weight_map = BTreeMap::new();
        for (t, p) in self.tensors.iter().zip(&self.places) {
            let shard = &self.shards[p.file].path;
            weight_map.insert(t.name.as_str(), file_name(shard));
        }
        for shard in self.shards {
            if durable {
                if let Some(map) = shard.map {
                    map.flush()
                        .map_err(|e| IoError::io(&shard.path, "flush the output file", e))?;
                }
                shard
                    .file
                    .sync_all()
                    .map_err(|e| IoError::io(&shard.path, "sync the output file", e))?;
            }
            written.push(shard.path);
        }
        if let Some((path, mut file)) = self.index {
            let index = serde_json::json!({
                "metadata": { "total_size": self.total_size },
                "weight_map": weight_map,
            });
            let mut text = serde_json::to_string_pretty(&index).expect("JSON of strings");
            text.push('\n');
            file.write_all(text.as_bytes())
                .and_then(|()| if durable { file.sync_all() } else { Ok(()) })
                .map_err(|e| IoError::io(&path, "write the index", e))?;
            written.push(path);
        }
        if durable {
            sync_dir(&self.dir);
        }
        Ok(written)
    }
}

/// Writes all of `bytes` at `offset` (positional, so threads do not share a cursor).
fn write_all_at(file: &File, bytes: &[u8], offset: u64) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::write_all_at(file, bytes, offset)
    }
    #[cfg(windows)]
    {
        let mut done = 0;
        while done < bytes.len() {
            let n = std::os::windows::fs::FileExt::seek_write(
                file,
                &bytes[done..],
                offset + done as u64,
            )?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            done += n;
        }
        Ok(())
    }
}

/// Files created by a `create` in progress; removed if it fails.
struct Created(Vec<PathBuf>);

impl Drop for Created {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = fs::remove_file(path);
        }
    }
}

/// Checks the names and computes every tensor's byte size.
fn validate(dir: &Path, tensors: &[OutputTensor]) -> Result<Vec<usize>, IoError> {
    let bad = |tensor: &str, what: String| IoError::BadOutput {
        path: dir.to_path_buf(),
        tensor: tensor.to_string(),
        what,
    };
    let mut names = HashSet::with_capacity(tensors.len());
    let mut sizes = Vec::with_capacity(tensors.len());
    for t in tensors {
        if t.name == "__metadata__" {
            return Err(bad(
                &t.name,
                "the name is reserved for the header's metadata".into(),
            ));
        }
        if !names.insert(t.name.as_str()) {
            return Err(bad(&t.name, "the tensor list has it twice".into()));
        }
        let size = t
            .shape
            .iter()
            .try_fold(t.dtype.size(), |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| {
                bad(
                    &t.name,
                    format!("shape {:?} of {} is too large to address", t.shape, t.dtype),
                )
            })?;
        sizes.push(size);
    }
    Ok(sizes)
}

/// Splits tensors (by size, in order) into consecutive shards of at most `shard_size`
/// bytes; a tensor larger than `shard_size` gets a shard of its own. Always at least
/// one shard (possibly empty).
/// The shard of each tensor, for tensors of `sizes` bytes written in order into shards
/// of at most `shard_size` bytes of data: a shard is closed when the next tensor would
/// overflow it, and a tensor larger than `shard_size` gets a shard of its own. This is
/// the one definition of the layout; [`ModelWriter::create`] follows it and merge plans
/// record it.
pub fn shard_layout(sizes: &[usize], shard_size: u64) -> Vec<usize> {
    let mut shard = 0;
    let mut bytes = 0u64;
    sizes
        .iter()
        .enumerate()
        .map(|(i, &size)| {
            let size = size as u64;
            if i > 0 && bytes + size > shard_size {
                shard += 1;
                bytes = 0;
            }
            bytes += size;
            shard
        })
        .collect()
}

/// The file names of `n` shards: `model.safetensors` for one, else
/// `model-00001-of-0000N.safetensors`, ... (with `model.safetensors.index.json`).
pub fn shard_names(n: usize) -> Vec<String> {
    if n <= 1 {
        vec![SINGLE_NAME.to_string()]
    } else {
        (1..=n)
            .map(|i| format!("model-{i:05}-of-{n:05}.safetensors"))
            .collect()
    }
}

/// The tensor ranges of each shard, from each tensor's shard (nondecreasing, from 0).
fn ranges(shards: &[usize]) -> Vec<std::ops::Range<usize>> {
    let mut out: Vec<std::ops::Range<usize>> = Vec::new();
    for (i, &s) in shards.iter().enumerate() {
        match out.get_mut(s) {
            Some(r) => r.end = i + 1,
            None => out.push(i..i + 1),
        }
    }
    if out.is_empty() {
        out.push(0..0);
    }
    out
}

/// The header JSON of one shard, padded with spaces to a multiple of 8 bytes so that
/// the data area starts 8-aligned.
fn header_bytes(
    tensors: &[OutputTensor],
    sizes: &[usize],
    metadata: &BTreeMap<String, String>,
) -> Vec<u8> {
    let mut json = String::with_capacity(64 + tensors.len() * 96);
    json.push_str("{\"__metadata__\":");
    json.push_str(&serde_json::to_string(metadata).expect("JSON of strings"));
    let mut offset = 0usize;
    for (t, &size) in tensors.iter().zip(sizes) {
        json.push(',');
        json.push_str(&serde_json::to_string(&t.name).expect("JSON string"));
        json.push_str(":{\"dtype\":\"");
        json.push_str(t.dtype.safetensors_name());
        json.push_str("\",\"shape\":");
        json.push_str(&serde_json::to_string(&t.shape).expect("JSON numbers"));
        json.push_str(&format!(",\"data_offsets\":[{offset},{}]}}", offset + size));
        offset += size;
    }
    json.push('}');
    while !json.len().is_multiple_of(8) {
        json.push(' ');
    }
    json.into_bytes()
}

/// Sizes a new file and, where the platform can, reserves its disk blocks, so that a
/// full disk fails here with [`IoError::OutOfSpace`] rather than later, as a SIGBUS
/// while writing through the map.
fn preallocate(file: &File, path: &Path, len: u64) -> Result<(), IoError> {
    file.set_len(len)
        .map_err(|e| IoError::io(path, "size the output file", e))?;
    #[cfg(target_os = "linux")]
    if len > 0 {
        use rustix::io::Errno;
        match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, len) {
            Ok(()) => {}
            Err(Errno::NOSPC | Errno::DQUOT | Errno::FBIG) => {
                return Err(IoError::OutOfSpace {
                    path: path.to_path_buf(),
                    needed: len,
                })
            }
            // File systems without fallocate keep the sparse file.
            Err(e) => tracing::debug!(file = %path.display(), error = %e, "fallocate unavailable"),
        }
    }
    Ok(())
}

fn create_new(path: &Path) -> Result<File, IoError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                IoError::OutputExists {
                    path: path.to_path_buf(),
                }
            } else {
                IoError::io(path, "create the output file", e)
            }
        })
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Makes the new directory entries durable (best effort; not every platform can
/// sync a folder).
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_rules() {
        assert_eq!(ranges(&shard_layout(&[], 10)), vec![0..0]);
        assert_eq!(ranges(&shard_layout(&[4, 4, 4], 10)), vec![0..2, 2..3]);
        assert_eq!(
            ranges(&shard_layout(&[4, 20, 4], 10)),
            vec![0..1, 1..2, 2..3]
        );
        assert_eq!(ranges(&shard_layout(&[20], 10)), vec![0..1]);
        assert_eq!(ranges(&shard_layout(&[5, 5, 5, 5], 10)), vec![0..2, 2..4]);
        assert_eq!(ranges(&shard_layout(&[0, 0, 10, 0], 10)), vec![0..4]);
    }

    #[test]
    fn header_is_padded() {
        let t = vec![OutputTensor {
            name: "a".into(),
            dtype: Dtype::BF16,
            shape: vec![3],
        }];
        for extra in 0..16 {
            let meta = BTreeMap::from([("k".to_string(), "x".repeat(extra))]);
            let h = header_bytes(&t, &[6], &meta);
            assert_eq!(h.len() % 8, 0);
        }
    }
}

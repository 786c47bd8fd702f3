//! The floor: the time this machine needs to move a merge's bytes, with no merging.
//!
//! It uses as many threads as reefknot does by default (one per core). The threads read
//! every input file once, in 8 MiB pieces with `pread(2)`, and sum the 64-bit words (so
//! the reads cannot be optimised away). Then the output is written twice into the page
//! cache, as `reefknot merge` leaves it, each time followed by an `fsync` when the
//! benchmark measures `reefknot merge --sync` (which syncs its output before renaming
//! it into place), and the faster way counts:
//! - `pwrite`: a new file preallocated to its final size (`fallocate`, as reefknot-io
//!   does: on ext4 a write into allocated blocks is 2–3× cheaper than one that allocates
//!   as it goes), filled in 8 MiB pieces from one buffer by one thread (parallel writes
//!   into one file contend on its inode lock and are slower);
//! - `mmap`: reefknot-io's own [`ModelWriter`] creating the merge's exact output file
//!   (same tensors, header and size), filled by copying into the map in 8 MiB pieces.
//!
//! Every part is timed on its own.

use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::Context as _;
use reefknot_io::{ModelWriter, OutputTensor, WriterOptions};
use serde::{Deserialize, Serialize};

/// The buffer for reads and writes.
const BUF: usize = 8 << 20;

/// One way of writing the output, timed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WritePart {
    /// "pwrite" or "mmap".
    pub method: String,
    /// Seconds to create the file and fill it (into the page cache).
    pub write_s: f64,
    /// Seconds for the flush and `fsync` that follow (0 when not synced).
    pub sync_s: f64,
}

impl WritePart {
    /// Write + sync.
    pub fn total_s(&self) -> f64 {
        self.write_s + self.sync_s
    }
}

/// The measured floor (`threads` is the readers' and the `mmap` writers' count).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Floor {
    /// The threads that read and wrote.
    pub threads: usize,
    /// Bytes read (every input file, headers included).
    pub read_bytes: u64,
    /// Seconds to read them.
    pub read_s: f64,
    /// Bytes written (the merge's output file).
    pub write_bytes: u64,
    /// Seconds to write them into the page cache, the faster way.
    pub write_s: f64,
    /// Seconds for the `fsync` that follows, the faster way (0 when not synced).
    pub sync_s: f64,
    /// Whether the writes were synced to disk (the benchmark's `--sync`).
    #[serde(default)]
    pub synced: bool,
    /// Both ways of writing, the faster first.
    pub writes: Vec<WritePart>,
    /// The wrapping sum of the 64-bit words read (proof of work; meaningless otherwise).
    pub checksum: u64,
}

impl Floor {
    /// Read + write + sync: the floor a merge is compared with.
    pub fn total_s(&self) -> f64 {
        self.read_s + self.write_s + self.sync_s
    }
}

impl Floor {
    /// The best of several measurements: the fastest read, and the fastest way of
    /// writing (write + sync) seen in any of them. `None` when `floors` is empty.
    pub fn best(floors: Vec<Floor>) -> Option<Floor> {
        let mut best = floors
            .iter()
            .min_by(|a, b| a.read_s.total_cmp(&b.read_s))?
            .clone();
        let mut writes: Vec<WritePart> = floors.into_iter().flat_map(|f| f.writes).collect();
        writes.sort_by(|a, b| a.total_s().total_cmp(&b.total_s()));
        // The fastest of each method, fastest first.
        let mut seen = Vec::new();
        writes.retain(|w| {
            let new = !seen.contains(&w.method);
            seen.push(w.method.clone());
            new
        });
        best.write_s = writes[0].write_s;
        best.sync_s = writes[0].sync_s;
        best.writes = writes;
        Some(best)
    }
}

/// Reads `files` once with `threads` threads, each taking the next 8 MiB piece;
/// returns the bytes read, their word sum and the seconds.
pub fn read_all(files: &[PathBuf], threads: usize) -> anyhow::Result<(u64, u64, f64)> {
    let start = Instant::now();
    let opened = files
        .iter()
        .map(|p| File::open(p).with_context(|| format!("opening {}", p.display())))
        .collect::<anyhow::Result<Vec<File>>>()?;
    let mut pieces: Vec<(usize, u64, usize)> = Vec::new();
    for (i, f) in opened.iter().enumerate() {
        let len = f.metadata()?.len();
        let mut at = 0;
        while at < len {
            let n = (len - at).min(BUF as u64) as usize;
            pieces.push((i, at, n));
            at += n as u64;
        }
    }
    let next = AtomicUsize::new(0);
    let results = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads.max(1))
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<(u64, u64)> {
                    let mut buf = vec![0u8; BUF];
                    let (mut bytes, mut sum) = (0u64, 0u64);
                    while let Some(&(i, at, n)) = pieces.get(next.fetch_add(1, Ordering::Relaxed)) {
                        opened[i]
                            .read_exact_at(&mut buf[..n], at)
                            .with_context(|| format!("reading {}", files[i].display()))?;
                        sum = sum.wrapping_add(word_sum(&buf[..n]));
                        bytes += n as u64;
                    }
                    Ok((bytes, sum))
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("a reader thread panicked"))
            .collect::<Vec<_>>()
    });
    let (mut bytes, mut sum) = (0u64, 0u64);
    for r in results {
        let (b, s) = r?;
        bytes += b;
        sum = sum.wrapping_add(s);
    }
    Ok((
        bytes,
        std::hint::black_box(sum),
        start.elapsed().as_secs_f64(),
    ))
}

/// The wrapping sum of the little-endian 64-bit words of `bytes` (a short tail counts
/// as one zero-padded word).
fn word_sum(bytes: &[u8]) -> u64 {
    let mut words = bytes.chunks_exact(8);
    let mut sum = words
        .by_ref()
        .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
        .fold(0u64, u64::wrapping_add);
    let tail = words.remainder();
    if !tail.is_empty() {
        let mut last = [0u8; 8];
        last[..tail.len()].copy_from_slice(tail);
        sum = sum.wrapping_add(u64::from_le_bytes(last));
    }
    sum
}

/// Measures the floor with `threads` threads (one for `pwrite`): reads `inputs`, then
/// writes the output file of the tensors `layout` both ways in the folder `scratch`
/// (created and removed again), each followed by an `fsync` when `sync`.
pub fn measure(
    inputs: &[PathBuf],
    layout: &[OutputTensor],
    scratch: &Path,
    threads: usize,
    sync: bool,
) -> anyhow::Result<Floor> {
    let threads = threads.max(1);
    let (read_bytes, checksum, read_s) = read_all(inputs, threads)?;

    // Non-zero, data-dependent content, so no layer can treat the file as sparse.
    let mut buf = vec![0u8; BUF];
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (checksum as usize).wrapping_add(i.wrapping_mul(31)) as u8 | 1;
    }
    let _ = std::fs::remove_dir_all(scratch);
    std::fs::create_dir_all(scratch).with_context(|| format!("creating {}", scratch.display()))?;

    let (mapped, write_bytes) = write_mapped(layout, &buf, scratch, threads, sync)?;
    std::fs::remove_dir_all(scratch).with_context(|| format!("removing {}", scratch.display()))?;
    std::fs::create_dir_all(scratch)?;
    // One sequential writer: parallel writes into one file contend on its inode lock.
    let plain = write_plain(
        write_bytes,
        &buf,
        &scratch.join("model.safetensors"),
        1,
        sync,
    )?;
    std::fs::remove_dir_all(scratch).with_context(|| format!("removing {}", scratch.display()))?;

    let mut writes = vec![plain, mapped];
    writes.sort_by(|a, b| a.total_s().total_cmp(&b.total_s()));
    Ok(Floor {
        threads,
        read_bytes,
        read_s,
        write_bytes,
        write_s: writes[0].write_s,
        sync_s: writes[0].sync_s,
        synced: sync,
        writes,
        checksum,
    })
}

/// `fallocate`, then `pwrite(2)` of `bytes` bytes in 8 MiB pieces by `threads`
/// threads, then `fsync` when `sync`.
fn write_plain(
    bytes: u64,
    buf: &[u8],
    path: &Path,
    threads: usize,
    sync: bool,
) -> anyhow::Result<WritePart> {
    let start = Instant::now();
    let f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    if bytes > 0 {
        // A file system without fallocate keeps writing as it allocates.
        let _ = rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, bytes);
    }
    let pieces = bytes.div_ceil(buf.len() as u64) as usize;
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| -> std::io::Result<()> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= pieces {
                            return Ok(());
                        }
                        let at = i as u64 * buf.len() as u64;
                        let n = (bytes - at).min(buf.len() as u64) as usize;
                        f.write_all_at(&buf[..n], at)?;
                    }
                })
            })
            .collect();
        for w in workers {
            w.join()
                .expect("a writer thread panicked")
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    })?;
    let write_s = start.elapsed().as_secs_f64();
    let sync_s = if sync {
        let start = Instant::now();
        f.sync_all()
            .with_context(|| format!("syncing {}", path.display()))?;
        start.elapsed().as_secs_f64()
    } else {
        0.0
    };
    Ok(WritePart {
        method: "pwrite".into(),
        write_s,
        sync_s,
    })
}

/// reefknot-io's [`ModelWriter`]: the output file created at its final size and mapped,
/// filled by `threads` threads copying 8 MiB pieces into the map, then `finish` (with
/// `sync`, durable: flush + `fsync`). Returns the timing and the file's size.
fn write_mapped(
    layout: &[OutputTensor],
    buf: &[u8],
    dir: &Path,
    threads: usize,
    sync: bool,
) -> anyhow::Result<(WritePart, u64)> {
    let start = Instant::now();
    let opts = WriterOptions {
        shard_size: u64::MAX,
        durable: sync,
        ..WriterOptions::default()
    };
    let mut writer =
        ModelWriter::create(dir, layout.to_vec(), &opts).context("creating the floor's output")?;
    {
        // Deal the pieces out round-robin: neighbouring pieces go to different threads.
        let mut shares: Vec<Vec<&mut [u8]>> = (0..threads).map(|_| Vec::new()).collect();
        let pieces = writer
            .data_mut_all()
            .into_iter()
            .flat_map(|data| data.chunks_mut(buf.len()));
        for (i, piece) in pieces.enumerate() {
            shares[i % threads].push(piece);
        }
        std::thread::scope(|scope| {
            for share in shares {
                scope.spawn(move || {
                    for piece in share {
                        let n = piece.len();
                        piece.copy_from_slice(&buf[..n]);
                    }
                });
            }
        });
    }
    let mut write_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let files = writer.finish().context("finishing the floor's output")?;
    let mut sync_s = start.elapsed().as_secs_f64();
    if !sync {
        // Not durable: `finish` only unmaps and closes, part of writing.
        write_s += sync_s;
        sync_s = 0.0;
    }
    let bytes = files
        .iter()
        .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
        .sum();
    Ok((
        WritePart {
            method: "mmap".into(),
            write_s,
            sync_s,
        },
        bytes,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_sum_counts_every_byte() {
        assert_eq!(word_sum(&[]), 0);
        assert_eq!(word_sum(&[1, 0, 0, 0, 0, 0, 0, 0, 2]), 3);
        assert_eq!(word_sum(&[0xff; 16]), u64::MAX.wrapping_add(u64::MAX));
    }

    #[test]
    fn measures_a_small_copy() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let input = dir.join("in");
        std::fs::write(&input, vec![1u8; 1000]).unwrap();
        let layout = vec![OutputTensor {
            name: "w".into(),
            dtype: reefknot_io::Dtype::BF16,
            shape: vec![100, 30],
        }];
        let f = measure(&[input.clone(), input], &layout, &dir.join("out"), 2, true).unwrap();
        assert_eq!(f.read_bytes, 2000);
        // The data plus the header.
        assert!(f.write_bytes > 6000 && f.write_bytes < 6200, "{f:?}");
        assert_eq!(f.checksum, 2 * 125 * 0x0101_0101_0101_0101u64);
        assert!(!dir.join("out").exists());
        assert_eq!(f.writes.len(), 2);
        assert!(f.total_s() > 0.0);
        let again = measure(&[dir.join("in")], &layout, &dir.join("out"), 1, false).unwrap();
        assert!(f.synced && !again.synced);
        assert_eq!(again.sync_s, 0.0);
        let best = Floor::best(vec![f.clone(), again.clone()]).unwrap();
        assert_eq!(best.read_s, f.read_s.min(again.read_s));
        assert_eq!(best.writes.len(), 2);
        assert!(best.write_s + best.sync_s <= f.write_s + f.sync_s);
        assert!(Floor::best(Vec::new()).is_none());
    }
}

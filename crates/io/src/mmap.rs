//! The only place that memory-maps files (and so the only `unsafe` of the crate).

use std::fs::File;
use std::io;

use memmap2::{Mmap, MmapMut};

/// Maps `file` read-only.
///
/// The caller opened `file` for reading and keeps the map alive no longer than the
/// `Checkpoint` that owns it.
pub(crate) fn map_read(file: &File) -> io::Result<Mmap> {
    // SAFETY: memmap2 requires that the file not be modified or truncated while mapped,
    // which no Rust-level invariant can guarantee: another process could still do so.
    // reefknot treats its inputs as read-only and never writes them (outputs go to a
    // fresh sibling folder and inputs are never overwritten), so within reefknot the
    // bytes do not change under the map. If another program truncates an input while a
    // merge runs, reading the vanished pages raises SIGBUS and the process dies; if it
    // rewrites bytes in place, the merge reads a mix of old and new data. Both are
    // outside our control and documented as "do not modify models while merging".
    // All slices handed out are bounds-checked against the map's length, which was
    // validated against the header when the file was opened.
    unsafe { Mmap::map(file) }
}

/// Maps `file` read-write (shared, so writes land in the file).
///
/// The caller created `file` itself (`create_new`) and sized it before mapping.
pub(crate) fn map_write(file: &File) -> io::Result<MmapMut> {
    // SAFETY: the file was created by this process with `create_new` in the output
    // folder, so no other handle of ours aliases it, and nothing else has a reason to
    // touch a file that did not exist a moment ago. As for any mapping, another process
    // truncating it while mapped would make our writes fault (SIGBUS); the output folder
    // is a private temporary sibling until the merge finishes, which keeps that window
    // out of users' way. Each tensor's byte range is handed out at most once per
    // `&mut` borrow, so Rust's aliasing rules hold for the mapped memory.
    unsafe { MmapMut::map_mut(file) }
}

//! The output folder: written beside its destination, renamed into place at the end,
//! so that nothing a user has is ever lost.
//!
//! Architecture invariants:
//! - **Outputs never replace or contain an input.** Inputs are known by the files the
//!   merge opened — their canonical paths and, on Unix, their device and inode — not by
//!   the paths the recipe wrote, so a symlinked weight file, an index entry that leads
//!   elsewhere or a hard link is caught; this holds with `--force` too.
//! - **Only a complete output appears.** A merge writes into a hidden sibling
//!   `.NAME.reefknot-partial-PID` and renames it to `NAME` at the end.
//! - **What appears meanwhile is never deleted without `--force`.** The final rename
//!   refuses to replace anything (Linux: `renameat2(RENAME_NOREPLACE)`); with `--force`
//!   it swaps the new folder with the old one atomically (`RENAME_EXCHANGE`) after the
//!   old one is checked again for inputs, then deletes the old one.
//! - **One merge per output at a time.** Each merge holds an exclusive lock on
//!   `.NAME.reefknot-lock` beside the output until it ends; a second merge into the
//!   same folder fails at once instead of racing the first.
//! - **Interruptions leave nothing behind.** Every partial folder in progress is
//!   registered; [`abandon_outputs`] (which the command line calls on SIGINT, SIGTERM
//!   and SIGHUP) removes them. Every change to that list is also told to the watcher
//!   set with [`watch_outputs`]: the command line's watchdog process, which removes
//!   what is still listed when this process dies (a plugin's crash, `kill -9`, the
//!   out-of-memory killer). Leftovers of a merge that died without a watchdog are
//!   reported by later merges into the same parent folder and removed by the next
//!   merge into the same output.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use crate::{Error, ErrorKind};

/// An output folder being written.
#[derive(Debug)]
pub struct Staging {
    target: PathBuf,
    partial: PathBuf,
    force: bool,
    inputs: Inputs,
    lock: Option<Lock>,
    done: bool,
}

/// The partial folders and lock files of the merges in progress in this process.
static ACTIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// A change to the list of the paths a merge in progress would leave behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputChange<'a> {
    /// A partial folder or a lock file was created: remove it if the process dies.
    Added(&'a Path),
    /// It was renamed into place or removed: leave it alone.
    Removed(&'a Path),
}

/// The watcher [`watch_outputs`] set.
type Watcher = Box<dyn Fn(OutputChange<'_>) + Send + Sync>;
static WATCHER: OnceLock<Watcher> = OnceLock::new();

/// Tells `watcher` of every path added to or removed from the list of what a merge in
/// progress would leave behind, in the order the changes happen (each is told while
/// the list is held). The command line's watchdog process listens this way. Only the
/// first call takes effect; returns whether it did.
pub fn watch_outputs(watcher: impl Fn(OutputChange<'_>) + Send + Sync + 'static) -> bool {
    WATCHER.set(Box::new(watcher)).is_ok()
}

fn tell(change: OutputChange<'_>) {
    if let Some(w) = WATCHER.get() {
        w(change);
    }
}

/// Removes the partial folder and the lock file of every merge in progress in this
/// process, for a process about to exit on a signal. Safe to call from any thread at
/// any time: a merge that finishes meanwhile has already unregistered its folder.
/// Returns how many folders and files it removed.
pub fn abandon_outputs() -> usize {
    abandon_where(|_| true)
}

fn abandon_where(chosen: impl Fn(&Path) -> bool) -> usize {
    let mut active = ACTIVE.lock().unwrap_or_else(|e| e.into_inner());
    let before = active.len();
    active.retain(|path| {
        if chosen(path) {
            let _ = remove_any(path);
            tell(OutputChange::Removed(path));
            false
        } else {
            true
        }
    });
    before - active.len()
}

fn register(path: &Path) {
    let mut active = ACTIVE.lock().unwrap_or_else(|e| e.into_inner());
    active.push(path.to_path_buf());
    tell(OutputChange::Added(path));
}

fn unregister(path: &Path) {
    let mut active = ACTIVE.lock().unwrap_or_else(|e| e.into_inner());
    let before = active.len();
    active.retain(|p| p != path);
    if active.len() < before {
        tell(OutputChange::Removed(path));
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ErrorKind + '_ {
    move |source| ErrorKind::Output {
        path: path.to_path_buf(),
        source,
    }
}

/// The absolute, symlink-free form of `path`, even when it does not exist yet
/// (its deepest existing ancestor is canonicalised and the rest appended).
fn resolve(path: &Path) -> PathBuf {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    };
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(c) = existing.canonicalize() {
            let mut out = c;
            for part in rest.iter().rev() {
                out.push(part);
            }
            return out;
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return absolute,
        }
    }
}

/// A file's identity on its file system: device and inode (Unix only).
type FileId = (u64, u64);

#[cfg(unix)]
fn file_id(meta: &fs::Metadata) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt as _;
    Some((meta.dev(), meta.ino()))
}

#[cfg(not(unix))]
fn file_id(_: &fs::Metadata) -> Option<FileId> {
    None
}

/// The inputs of a merge: each path as the recipe gave it, its canonical form, and
/// the identity of the file or folder behind it.
#[derive(Debug)]
struct Inputs {
    paths: Vec<(PathBuf, PathBuf)>,
    ids: HashSet<FileId>,
    by_id: Vec<(FileId, PathBuf)>,
}

impl Inputs {
    fn new(inputs: &[PathBuf]) -> Inputs {
        let mut paths = Vec::new();
        let mut ids = HashSet::new();
        let mut by_id = Vec::new();
        for input in inputs {
            paths.push((input.clone(), resolve(input)));
            if let Some(id) = fs::metadata(input).ok().as_ref().and_then(file_id) {
                if ids.insert(id) {
                    by_id.push((id, input.clone()));
                }
            }
        }
        Inputs { paths, ids, by_id }
    }

    /// The input that `target` would replace or contain, if any: an input at or under
    /// its canonical path, or a file or folder inside it that is an input under
    /// another name (a hard link, a bind mount).
    fn collision(&self, target: &Path) -> Option<PathBuf> {
        let resolved = resolve(target);
        for (given, canonical) in &self.paths {
            if canonical.starts_with(&resolved) {
                return Some(given.clone());
            }
        }
        if self.ids.is_empty() {
            return None;
        }
        let mut stack = vec![target.to_path_buf()];
        while let Some(path) = stack.pop() {
            // Not following symlinks: deleting a link leaves what it points at alone.
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            if let Some(id) = file_id(&meta).filter(|id| self.ids.contains(id)) {
                let input = self.by_id.iter().find(|(i, _)| *i == id);
                return input.map(|(_, p)| p.clone()).or(Some(path));
            }
            if meta.is_dir() {
                if let Ok(entries) = fs::read_dir(&path) {
                    stack.extend(entries.flatten().map(|e| e.path()));
                }
            }
        }
        None
    }
}

/// An exclusive lock on `.NAME.reefknot-lock` beside the output, held while a merge
/// writes it; the file is removed when the lock is released.
#[derive(Debug)]
struct Lock {
    path: PathBuf,
    _file: fs::File,
}

impl Lock {
    fn take(path: PathBuf, target: &Path) -> Result<Lock, Error> {
        // A merge that ends unlinks the file while holding the lock, so a lock won on a
        // file that is no longer at `path` is worth nothing: open again.
        for _ in 0..16 {
            let file = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(io_err(&path))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(fs::TryLockError::WouldBlock) => {
                    let holder = fs::read_to_string(&path)
                        .ok()
                        .and_then(|s| s.trim().parse::<u32>().ok());
                    return Err(ErrorKind::OutputBusy {
                        output: target.to_path_buf(),
                        lock: path,
                        pid: holder,
                    }
                    .into());
                }
                Err(fs::TryLockError::Error(e)) => return Err(io_err(&path)(e).into()),
            }
            let same = match (file.metadata(), fs::metadata(&path)) {
                (Ok(held), Ok(now)) => file_id(&held) == file_id(&now),
                _ => false,
            };
            if same {
                let _ = file.set_len(0);
                let _ = (&file).write_all_at_start(std::process::id());
                register(&path);
                return Ok(Lock { path, _file: file });
            }
        }
        Err(io_err(&path)(std::io::Error::other(
            "the lock file keeps being replaced: another merge into this folder keeps starting",
        ))
        .into())
    }
}

trait WritePid {
    fn write_all_at_start(self, pid: u32) -> std::io::Result<()>;
}

impl WritePid for &fs::File {
    fn write_all_at_start(mut self, pid: u32) -> std::io::Result<()> {
        use std::io::{Seek as _, Write as _};
        self.seek(std::io::SeekFrom::Start(0))?;
        writeln!(self, "{pid}")
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // Unlinked while still held (the file closes after this), see `Lock::take`.
        let _ = fs::remove_file(&self.path);
        unregister(&self.path);
    }
}

/// The hidden names beside output `name`: the lock file, and the prefixes of partial
/// folders and of old outputs moved aside.
fn lock_name(name: &str) -> String {
    format!(".{name}.reefknot-lock")
}
fn partial_prefix(name: &str) -> String {
    format!(".{name}.reefknot-partial-")
}
fn replaced_prefix(name: &str) -> String {
    format!(".{name}.reefknot-replaced-")
}

impl Staging {
    /// Checks `target` against the inputs and the `force` flag, takes the output's lock
    /// and creates the hidden partial folder beside it. `inputs` are every file and
    /// folder the merge reads.
    pub fn begin(target: &Path, force: bool, inputs: &[PathBuf]) -> Result<Staging, Error> {
        let inputs = Inputs::new(inputs);
        let resolved = resolve(target);
        if let Some(input) = inputs.collision(target) {
            return Err(ErrorKind::OutputIsInput {
                output: target.to_path_buf(),
                input,
            }
            .into());
        }
        let name = resolved
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "output".to_string());
        let parent = resolved.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(parent).map_err(io_err(parent))?;
        let lock = Lock::take(parent.join(lock_name(&name)), target)?;
        tidy_leftovers(parent, &name, &resolved);
        let exists = fs::symlink_metadata(target).is_ok();
        if exists && !force {
            return Err(ErrorKind::OutputExists(target.to_path_buf()).into());
        }
        if exists && !target.is_dir() {
            return Err(ErrorKind::Output {
                path: target.to_path_buf(),
                source: std::io::Error::other("it exists and is not a folder"),
            }
            .into());
        }
        let partial = parent.join(format!("{}{}", partial_prefix(&name), std::process::id()));
        fs::create_dir(&partial).map_err(io_err(&partial))?;
        register(&partial);
        Ok(Staging {
            target: target.to_path_buf(),
            partial,
            force,
            inputs,
            lock: Some(lock),
            done: false,
        })
    }

    /// The folder to write into.
    pub fn path(&self) -> &Path {
        &self.partial
    }

    /// Moves the finished output into place. Without `force` nothing that appeared at
    /// the output meanwhile is replaced; with it, an existing output is swapped out
    /// (after checking it again for inputs) and deleted. With `durable`, first syncs
    /// every file of the output and the folder, and after the rename the parent
    /// folder, so that the output survives a power loss.
    pub fn commit(mut self, durable: bool) -> Result<PathBuf, Error> {
        if durable {
            sync_tree(&self.partial)?;
        }
        {
            // Holding the registry: a signal's clean-up waits for the rename, then finds
            // the folder gone from its list (or, after a swap, the old output to delete).
            let mut active = ACTIVE.lock().unwrap_or_else(|e| e.into_inner());
            let old = self.place()?;
            active.retain(|p| p != &self.partial);
            tell(OutputChange::Removed(&self.partial));
            if let Some(old) = &old {
                active.push(old.clone());
                tell(OutputChange::Added(old));
            }
            self.done = true;
            drop(active);
            if let Some(old) = old {
                remove_any(&old).map_err(io_err(&old))?;
                unregister(&old);
            }
        }
        if durable {
            if let Some(parent) = self.target.parent() {
                sync_path(parent)?;
            }
        }
        self.lock.take();
        Ok(self.target.clone())
    }

    /// Renames the partial folder to the target; returns where the output it replaced
    /// now is, to be deleted.
    fn place(&self) -> Result<Option<PathBuf>, Error> {
        match rename_noreplace(&self.partial, &self.target) {
            Ok(()) => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(&self.target)(e).into()),
        }
        // Something is at the target: the output this merge was told to replace, or
        // something that appeared while it ran.
        if !self.force {
            return Err(ErrorKind::OutputAppeared(self.target.clone()).into());
        }
        if let Some(input) = self.inputs.collision(&self.target) {
            return Err(ErrorKind::OutputIsInput {
                output: self.target.clone(),
                input,
            }
            .into());
        }
        match rename_exchange(&self.partial, &self.target) {
            // The old output now sits at the partial folder's name.
            Ok(()) => Ok(Some(self.partial.clone())),
            Err(e) if e.kind() == std::io::ErrorKind::Unsupported => self.place_in_two_steps(),
            Err(e) => Err(io_err(&self.target)(e).into()),
        }
    }

    /// Where the file system cannot swap two names: moves the old output aside, then
    /// the new one in. A merge killed between the two leaves the old output at the
    /// `-replaced-` name, which the next merge into the same output puts back.
    fn place_in_two_steps(&self) -> Result<Option<PathBuf>, Error> {
        let old = self.partial.with_file_name(
            self.partial
                .file_name()
                .map(|n| n.to_string_lossy().replace("-partial-", "-replaced-"))
                .unwrap_or_default(),
        );
        fs::rename(&self.target, &old).map_err(io_err(&self.target))?;
        if let Err(e) = rename_noreplace(&self.partial, &self.target) {
            // Put the previous output back: nothing the user had is lost.
            let _ = fs::rename(&old, &self.target);
            return Err(io_err(&self.target)(e).into());
        }
        Ok(Some(old))
    }
}

/// Renames `from` to `to` unless `to` exists (an `AlreadyExists` error then).
fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use rustix::fs::{renameat_with, RenameFlags, CWD};
        match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
            Ok(()) => return Ok(()),
            Err(e) if e == rustix::io::Errno::EXIST => {
                return Err(std::io::ErrorKind::AlreadyExists.into())
            }
            // A file system without renameat2's flags: check, then rename.
            Err(e) if e != rustix::io::Errno::INVAL && e != rustix::io::Errno::NOSYS => {
                return Err(e.into())
            }
            Err(_) => {}
        }
    }
    if fs::symlink_metadata(to).is_ok() {
        return Err(std::io::ErrorKind::AlreadyExists.into());
    }
    fs::rename(from, to)
}

/// Swaps the names `a` and `b` atomically (`Unsupported` where that cannot be done).
fn rename_exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use rustix::fs::{renameat_with, RenameFlags, CWD};
        match renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE) {
            Ok(()) => Ok(()),
            Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => {
                Err(std::io::ErrorKind::Unsupported.into())
            }
            Err(e) => Err(e.into()),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (a, b);
        Err(std::io::ErrorKind::Unsupported.into())
    }
}

/// Removes a folder with everything in it, or a file.
fn remove_any(path: &Path) -> std::io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Syncs every file under `dir` (files already synced cost nothing), then `dir`.
fn sync_tree(dir: &Path) -> Result<(), Error> {
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        if path.is_dir() {
            sync_tree(&path)?;
        } else {
            sync_path(&path)?;
        }
    }
    sync_path(dir)
}

/// Syncs one file or folder to disk. An empty path is the current folder: the parent
/// of a relative output such as `-o merged` (`tests/cli/merge.rs` merges into one).
fn sync_path(path: &Path) -> Result<(), Error> {
    let path = if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    };
    fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_err(path)(e).into())
}

/// With the lock on output `name` held: removes the partial folders earlier merges
/// into it left (no other merge can be writing them), puts back an old output that a
/// merge killed mid-replacement left moved aside, and reports the leftovers of killed
/// merges into other outputs of `parent`.
fn tidy_leftovers(parent: &Path, name: &str, target: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    let own_partial = partial_prefix(name);
    let own_replaced = replaced_prefix(name);
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if file_name.starts_with(&own_partial) {
            tracing::warn!(
                "removing {}, left by an interrupted merge into {}",
                path.display(),
                target.display()
            );
            let _ = remove_any(&path);
        } else if file_name.starts_with(&own_replaced) {
            if fs::symlink_metadata(target).is_err() && fs::rename(&path, target).is_ok() {
                tracing::warn!(
                    "put back {}: the output a merge was replacing when it was interrupted",
                    target.display()
                );
            } else {
                tracing::warn!(
                    "removing {}, an old output already replaced by an interrupted merge",
                    path.display()
                );
                let _ = remove_any(&path);
            }
        } else if let Some((output, pid)) = leftover_of(&file_name) {
            if pid != std::process::id() && !process_alive(pid) {
                tracing::warn!(
                    "{} is left by an interrupted merge into {}; the next merge into it \
                     removes it, or delete it yourself",
                    path.display(),
                    parent.join(output).display()
                );
            }
        }
    }
}

/// The output name and process of a hidden partial or replaced folder's name.
fn leftover_of(file_name: &str) -> Option<(&str, u32)> {
    let rest = file_name.strip_prefix('.')?;
    for marker in [".reefknot-partial-", ".reefknot-replaced-"] {
        if let Some((output, pid)) = rest.rsplit_once(marker) {
            return pid.parse().ok().map(|pid| (output, pid));
        }
    }
    None
}

/// Whether process `pid` still runs (conservatively true where that cannot be told).
fn process_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new("/proc").join(pid.to_string()).exists()
    } else {
        true
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.done {
            let _ = remove_any(&self.partial);
            unregister(&self.partial);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_inputs_and_existing_folders() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base");
        fs::create_dir(&base).unwrap();
        let err = Staging::begin(&base, true, std::slice::from_ref(&base)).unwrap_err();
        assert!(
            matches!(err.kind(), ErrorKind::OutputIsInput { .. }),
            "{err}"
        );
        // An output that contains an input would delete it when replaced.
        let err = Staging::begin(dir.path(), true, std::slice::from_ref(&base)).unwrap_err();
        assert!(
            matches!(err.kind(), ErrorKind::OutputIsInput { .. }),
            "{err}"
        );
        let out = dir.path().join("out");
        fs::create_dir(&out).unwrap();
        let err = Staging::begin(&out, false, std::slice::from_ref(&base)).unwrap_err();
        assert!(matches!(err.kind(), ErrorKind::OutputExists(_)), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn an_input_hard_linked_into_the_output_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("model.safetensors");
        fs::write(&input, "weights").unwrap();
        let out = dir.path().join("out");
        fs::create_dir_all(out.join("deep")).unwrap();
        fs::hard_link(&input, out.join("deep").join("copy")).unwrap();
        let err = Staging::begin(&out, true, std::slice::from_ref(&input)).unwrap_err();
        assert!(
            matches!(err.kind(), ErrorKind::OutputIsInput { input: i, .. } if *i == input),
            "{err}"
        );
        // A symlink to the input inside the output is fine: deleting it loses nothing.
        fs::remove_file(out.join("deep").join("copy")).unwrap();
        std::os::unix::fs::symlink(&input, out.join("link")).unwrap();
        let staging = Staging::begin(&out, true, std::slice::from_ref(&input)).unwrap();
        staging.commit(false).unwrap();
        assert_eq!(fs::read_to_string(&input).unwrap(), "weights");
    }

    #[test]
    fn partial_folders_of_dead_merges_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let dead = dir.path().join(".out.reefknot-partial-99999999");
        fs::create_dir(&dead).unwrap();
        let other = dir.path().join(".other.reefknot-partial-99999999");
        fs::create_dir(&other).unwrap();
        let staging = Staging::begin(&dir.path().join("out"), false, &[]).unwrap();
        assert!(!dead.exists());
        assert!(
            other.exists(),
            "only the same output's leftovers are touched"
        );
        drop(staging);
    }

    #[test]
    fn an_output_moved_aside_by_a_killed_merge_is_put_back() {
        let dir = tempfile::tempdir().unwrap();
        let aside = dir.path().join(".out.reefknot-replaced-99999999");
        fs::create_dir(&aside).unwrap();
        fs::write(aside.join("precious.txt"), "x").unwrap();
        let out = dir.path().join("out");
        // Put back first, so the merge then finds the output there.
        let err = Staging::begin(&out, false, &[]).unwrap_err();
        assert!(matches!(err.kind(), ErrorKind::OutputExists(_)), "{err}");
        assert_eq!(fs::read_to_string(out.join("precious.txt")).unwrap(), "x");
        assert!(!aside.exists());
    }

    #[test]
    fn commit_replaces_and_drop_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        fs::create_dir(&out).unwrap();
        fs::write(out.join("old.txt"), "old").unwrap();
        let staging = Staging::begin(&out, true, &[]).unwrap();
        fs::write(staging.path().join("new.txt"), "new").unwrap();
        staging.commit(false).unwrap();
        assert!(out.join("new.txt").exists());
        assert!(!out.join("old.txt").exists());

        let failed = dir.path().join("failed");
        let staging = Staging::begin(&failed, false, &[]).unwrap();
        fs::write(staging.path().join("x"), "x").unwrap();
        drop(staging);
        assert!(!failed.exists());
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "only `out` remains: {leftovers:?}");
    }

    #[test]
    fn what_appears_during_a_merge_is_kept_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let staging = Staging::begin(&out, false, &[]).unwrap();
        fs::write(staging.path().join("model.safetensors"), "new").unwrap();
        fs::create_dir(&out).unwrap();
        fs::write(out.join("precious.txt"), "x").unwrap();
        let err = staging.commit(false).unwrap_err();
        assert!(matches!(err.kind(), ErrorKind::OutputAppeared(_)), "{err}");
        assert_eq!(fs::read_to_string(out.join("precious.txt")).unwrap(), "x");
        assert!(!out.join("model.safetensors").exists());
        // Even an empty folder that appeared is not replaced.
        fs::remove_dir_all(&out).unwrap();
        let staging = Staging::begin(&out, false, &[]).unwrap();
        fs::create_dir(&out).unwrap();
        assert!(staging.commit(false).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn with_force_an_input_that_appears_at_the_output_meanwhile_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("model.safetensors");
        fs::write(&input, "weights").unwrap();
        let out = dir.path().join("out");
        let staging = Staging::begin(&out, true, std::slice::from_ref(&input)).unwrap();
        fs::create_dir(&out).unwrap();
        fs::hard_link(&input, out.join("model.safetensors")).unwrap();
        let err = staging.commit(false).unwrap_err();
        assert!(
            matches!(err.kind(), ErrorKind::OutputIsInput { .. }),
            "{err}"
        );
        assert_eq!(
            fs::read_to_string(out.join("model.safetensors")).unwrap(),
            "weights"
        );
    }

    #[test]
    fn a_second_merge_into_the_same_output_fails_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let first = Staging::begin(&out, false, &[]).unwrap();
        let err = Staging::begin(&out, true, &[]).unwrap_err();
        assert!(matches!(err.kind(), ErrorKind::OutputBusy { .. }), "{err}");
        first.commit(false).unwrap();
        let lock = dir.path().join(lock_name("out"));
        assert!(!lock.exists(), "the lock file goes with the merge");
        // Free again once the first is done.
        Staging::begin(&out, true, &[])
            .unwrap()
            .commit(false)
            .unwrap();
    }

    #[test]
    fn abandoning_removes_partial_folders_and_locks() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("abandoned");
        let staging = Staging::begin(&out, false, &[]).unwrap();
        fs::write(staging.path().join("x"), "x").unwrap();
        let partial = staging.path().to_path_buf();
        // Tests run side by side in one process: abandon this test's merge alone, as
        // `abandon_outputs` abandons all.
        abandon_where(|p| p.starts_with(dir.path()));
        assert!(!partial.exists());
        assert!(!dir.path().join(lock_name("abandoned")).exists());
        drop(staging);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn durable_commit_syncs_nested_files() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("durable");
        let staging = Staging::begin(&out, false, &[]).unwrap();
        fs::create_dir(staging.path().join("sub")).unwrap();
        fs::write(staging.path().join("sub").join("a.txt"), "a").unwrap();
        fs::write(staging.path().join("b.txt"), "b").unwrap();
        assert_eq!(staging.commit(true).unwrap(), out);
        assert_eq!(
            fs::read_to_string(out.join("sub").join("a.txt")).unwrap(),
            "a"
        );
        assert_eq!(fs::read_to_string(out.join("b.txt")).unwrap(), "b");
    }
}

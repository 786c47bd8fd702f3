//! The output folder: written beside its destination, renamed into place at the end.
//!
//! Architecture invariant: outputs never overwrite inputs. A merge writes into a hidden
//! sibling `.NAME.reefknot-partial-PID`; only a complete output is renamed to `NAME`, so
//! a failed or interrupted merge never leaves a folder that looks complete (the hidden
//! folder of a merge that was killed is removed by the next merge into the same place,
//! once its process is gone). With `--force`, an existing `NAME` is moved aside first
//! and deleted only after the new one is in place.

use std::fs;
use std::path::{Path, PathBuf};

use crate::{Error, ErrorKind};

/// An output folder being written.
#[derive(Debug)]
pub struct Staging {
    target: PathBuf,
    partial: PathBuf,
    done: bool,
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

impl Staging {
    /// Checks `target` against the inputs and the `force` flag, and creates the hidden
    /// partial folder beside it.
    pub fn begin(target: &Path, force: bool, inputs: &[PathBuf]) -> Result<Staging, Error> {
        let resolved = resolve(target);
        for input in inputs {
            let input_resolved = resolve(input);
            if input_resolved == resolved || input_resolved.starts_with(&resolved) {
                return Err(ErrorKind::OutputIsInput {
                    output: target.to_path_buf(),
                    input: input.clone(),
                }
                .into());
            }
        }
        if target.exists() && !force {
            return Err(ErrorKind::OutputExists(target.to_path_buf()).into());
        }
        if target.exists() && !target.is_dir() {
            return Err(ErrorKind::Output {
                path: target.to_path_buf(),
                source: std::io::Error::other("it exists and is not a folder"),
            }
            .into());
        }
        let name = resolved
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "output".to_string());
        let parent = resolved.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(parent).map_err(io_err(parent))?;
        remove_abandoned(parent, &name);
        let partial = parent.join(format!(".{name}.reefknot-partial-{}", std::process::id()));
        if partial.exists() {
            fs::remove_dir_all(&partial).map_err(io_err(&partial))?;
        }
        fs::create_dir(&partial).map_err(io_err(&partial))?;
        Ok(Staging {
            target: target.to_path_buf(),
            partial,
            done: false,
        })
    }

    /// The folder to write into.
    pub fn path(&self) -> &Path {
        &self.partial
    }

    /// Moves the finished output into place (replacing an existing one when forced).
    /// With `durable`, first syncs every file of the output and the folder, and after
    /// the rename the parent folder, so that the output survives a power loss.
    pub fn commit(mut self, durable: bool) -> Result<PathBuf, Error> {
        if durable {
            sync_tree(&self.partial)?;
        }
        let old = self.partial.with_file_name(
            self.partial
                .file_name()
                .map(|n| n.to_string_lossy().replace("-partial-", "-replaced-"))
                .unwrap_or_default(),
        );
        let replacing = self.target.exists();
        if replacing {
            fs::rename(&self.target, &old).map_err(io_err(&self.target))?;
        }
        if let Err(e) = fs::rename(&self.partial, &self.target) {
            if replacing {
                // Put the previous output back: nothing the user had is lost.
                let _ = fs::rename(&old, &self.target);
            }
            return Err(io_err(&self.target)(e).into());
        }
        self.done = true;
        if replacing {
            fs::remove_dir_all(&old).map_err(io_err(&old))?;
        }
        if durable {
            if let Some(parent) = self.target.parent() {
                sync_path(parent)?;
            }
        }
        Ok(self.target.clone())
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

/// Removes the partial folders of earlier merges into `parent/name` whose process is
/// gone (a merge killed before it could clean up). Best effort: a folder whose process
/// might still run is left alone.
fn remove_abandoned(parent: &Path, name: &str) {
    let prefix = format!(".{name}.reefknot-partial-");
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(pid) = file_name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !process_alive(pid) {
            tracing::info!(
                "removing {}, left by an interrupted merge",
                entry.path().display()
            );
            let _ = fs::remove_dir_all(entry.path());
        }
    }
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
            let _ = fs::remove_dir_all(&self.partial);
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

    #[test]
    fn partial_folders_of_dead_merges_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        // PIDs above the kernel's maximum (4194304) never run.
        let dead = dir.path().join(".out.reefknot-partial-99999999");
        fs::create_dir(&dead).unwrap();
        let other = dir.path().join(".other.reefknot-partial-99999999");
        fs::create_dir(&other).unwrap();
        let staging = Staging::begin(&dir.path().join("out"), false, &[]).unwrap();
        if cfg!(target_os = "linux") {
            assert!(!dead.exists());
        }
        assert!(
            other.exists(),
            "only the same output's leftovers are touched"
        );
        drop(staging);
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
    fn durable_commit_syncs_nested_files() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("durable");
        let staging = Staging::begin(&out, false, &[]).unwrap();
        fs::create_dir(staging.path().join("sub")).unwrap();
        fs::write(staging.path().join("sub").join("a.txt"), "a").unwrap();
        fs::write(staging.path().join("b.txt"), "b").unwrap();
        assert_eq!(staging.commit(true).unwrap(), resolve(&out));
        assert_eq!(
            fs::read_to_string(out.join("sub").join("a.txt")).unwrap(),
            "a"
        );
        assert_eq!(fs::read_to_string(out.join("b.txt")).unwrap(), "b");
    }
}

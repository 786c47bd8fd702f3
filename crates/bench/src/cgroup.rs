//! Memory-limited runs in a cgroup v1 memory group.
//!
//! A group is created as a child of the benchmark's own memory cgroup (read from
//! `/proc/self/cgroup`; the hierarchy's root when that fails, or `--cgroup-parent`),
//! its `memory.limit_in_bytes` set (and `memory.memsw.limit_in_bytes` where swap is
//! accounted, so the limit cannot be dodged by swapping), the child joins it before it
//! execs (see [`crate::measure::Job::cgroup_procs`]), and the group is removed after
//! the run. When the limit is reached and nothing can be reclaimed, the kernel's OOM
//! killer sends the child SIGKILL and counts an `oom_kill` in `memory.oom_control`.
//!
//! Page cache is charged to the group that first touches a page: the inputs, read
//! before the run, stay charged to the benchmark's group; the output's pages are
//! charged to the run's group, and the kernel reclaims them (clean ones at once, dirty
//! ones after writeback) when the group nears its limit. So `memory.max_usage_in_bytes`
//! (page cache included) sits near the limit for any run that writes more than it; the
//! anonymous peak is what decides whether a run fits.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where the cgroup v1 memory controller is mounted on Linux.
const V1_MEMORY: &str = "/sys/fs/cgroup/memory";

/// A memory cgroup, removed when dropped.
#[derive(Debug)]
pub struct MemoryCgroup {
    dir: PathBuf,
}

/// The counters of a memory cgroup after a run.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct CgroupStats {
    /// `memory.max_usage_in_bytes`: the peak charge, page cache included.
    pub max_usage_bytes: Option<u64>,
    /// `memory.failcnt`: how often the limit was hit (and reclaim ran).
    pub failcnt: Option<u64>,
    /// `oom_kill` of `memory.oom_control`: processes the OOM killer killed.
    pub oom_kills: Option<u64>,
}

impl MemoryCgroup {
    /// Creates a group called `name` with a `limit` in bytes, under `parent` or, when
    /// `None`, under this process's own memory cgroup (else the hierarchy's root).
    ///
    /// The error explains what is missing: no cgroup v1 memory controller (cgroup v2
    /// machines), or no permission to create or configure a group.
    pub fn create(name: &str, limit: u64, parent: Option<&Path>) -> Result<Self, String> {
        let root = Path::new(V1_MEMORY);
        if !root.join("memory.limit_in_bytes").exists() && parent.is_none() {
            let why = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
                "this machine mounts cgroup v2 (the unified hierarchy), and the benchmark \
                 drives the cgroup v1 memory controller; on cgroup v2, run a merge under a \
                 limit with e.g. `systemd-run --user --scope -p MemoryMax=1G -p MemorySwapMax=0 \
                 reefknot merge ...`"
            } else {
                "no cgroup v1 memory controller is mounted at /sys/fs/cgroup/memory"
            };
            return Err(why.into());
        }
        let candidates: Vec<PathBuf> = match parent {
            Some(p) => vec![p.to_path_buf()],
            None => {
                let mut c = Vec::new();
                if let Some(own) = own_memory_cgroup() {
                    let own = root.join(own.trim_start_matches('/'));
                    if own != root {
                        c.push(own);
                    }
                }
                c.push(root.to_path_buf());
                c
            }
        };
        let mut errors = Vec::new();
        for base in &candidates {
            let dir = base.join(name);
            match std::fs::create_dir(&dir) {
                Ok(()) => {
                    let group = MemoryCgroup { dir };
                    group.configure(limit)?;
                    return Ok(group);
                }
                Err(e) => errors.push(format!("{}: {e}", dir.display())),
            }
        }
        Err(format!(
            "cannot create a memory cgroup ({}). Creating one needs root, or a group delegated \
             to you: `sudo mkdir {V1_MEMORY}/reefknot-bench && sudo chown -R $USER \
             {V1_MEMORY}/reefknot-bench`, then pass `--cgroup-parent {V1_MEMORY}/reefknot-bench`",
            errors.join("; ")
        ))
    }

    fn configure(&self, limit: u64) -> Result<(), String> {
        let limit_file = self.dir.join("memory.limit_in_bytes");
        std::fs::write(&limit_file, limit.to_string())
            .map_err(|e| format!("cannot set {}: {e}", limit_file.display()))?;
        let set = std::fs::read_to_string(&limit_file)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        if set.is_none_or(|s| s > limit) {
            return Err(format!(
                "{} reads {set:?} after writing {limit}",
                limit_file.display()
            ));
        }
        // With swap accounting, also forbid swapping past the limit (a missing file
        // means no swap accounting: nothing to do).
        let memsw = self.dir.join("memory.memsw.limit_in_bytes");
        if memsw.exists() {
            std::fs::write(&memsw, limit.to_string())
                .map_err(|e| format!("cannot set {}: {e}", memsw.display()))?;
        }
        Ok(())
    }

    /// The group's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file a process writes its PID into to join the group.
    pub fn procs(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// Reads the group's counters.
    pub fn stats(&self) -> CgroupStats {
        let num = |file: &str| -> Option<u64> {
            std::fs::read_to_string(self.dir.join(file))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        let oom_kills = std::fs::read_to_string(self.dir.join("memory.oom_control"))
            .ok()
            .and_then(|text| {
                text.lines().find_map(|l| {
                    l.strip_prefix("oom_kill ")
                        .and_then(|n| n.trim().parse().ok())
                })
            });
        CgroupStats {
            max_usage_bytes: num("memory.max_usage_in_bytes"),
            failcnt: num("memory.failcnt"),
            oom_kills,
        }
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // A group can be removed once its last task has exited; give stragglers a moment.
        for _ in 0..100 {
            if std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        eprintln!(
            "warning: could not remove the cgroup {} (processes left in it?)",
            self.dir.display()
        );
    }
}

/// This process's memory cgroup path relative to the hierarchy's root, from the
/// `N:memory:/path` line of `/proc/self/cgroup`.
fn own_memory_cgroup() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let _id = parts.next()?;
        let controllers = parts.next()?;
        let path = parts.next()?;
        controllers
            .split(',')
            .any(|c| c == "memory")
            .then(|| path.to_string())
    })
}

//! Running a command as a child process and measuring it: wall time, CPU time and
//! memory, sampled from `/proc/PID/status` while it runs.
//!
//! Memory is reported three ways, because a merge that memory-maps its inputs has a
//! resident set far larger than the memory it allocates:
//! - `peak_anon`: the largest `RssAnon` seen (anonymous pages: heap, stacks, private
//!   buffers) — what the process itself holds and what a memory limit must leave room for;
//! - `peak_rss`: the largest `VmRSS` seen (anonymous + file-backed + shared pages);
//! - `vm_hwm`: the kernel's own high-water mark of `VmRSS` (`VmHWM`), exact but, like
//!   `VmRSS`, counting every mapped page of the input files that was touched.
//!
//! Sampled values can miss a spike shorter than the polling interval; `VmHWM` cannot.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// A command to run and measure.
#[derive(Clone, Debug)]
pub struct Job {
    /// The executable.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// The working directory (default: the benchmark's).
    pub cwd: Option<PathBuf>,
    /// Where the child's stdout and stderr go.
    pub log: PathBuf,
    /// A cgroup's `cgroup.procs` file: the child joins that cgroup before it execs
    /// the program (through `/bin/sh -c 'echo $$ > procs && exec "$@"'`).
    pub cgroup_procs: Option<PathBuf>,
    /// Also measure the child's descendants (for programs started through wrappers or
    /// that start workers, such as Python entry points behind a pyenv shim).
    pub follow_children: bool,
    /// The sampling interval.
    pub poll: Duration,
}

/// What one run of a [`Job`] measured.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Measured {
    /// Wall-clock seconds from spawning the child to its exit.
    pub wall_s: f64,
    /// The exit code, when the child exited normally.
    pub exit_code: Option<i32>,
    /// The signal that killed the child, when one did (9: SIGKILL, e.g. the OOM killer).
    pub signal: Option<i32>,
    /// The largest sum of `RssAnon` over the process tree seen while sampling, in bytes.
    pub peak_anon_bytes: u64,
    /// The largest sum of `VmRSS` (anonymous + file pages) seen while sampling, in bytes.
    pub peak_rss_bytes: u64,
    /// The kernel's `VmHWM` (peak `VmRSS`, file pages included) of the largest process, in bytes.
    pub vm_hwm_bytes: u64,
    /// User CPU seconds of the child (and the descendants it waited for).
    pub cpu_user_s: f64,
    /// System CPU seconds of the child (and the descendants it waited for).
    pub cpu_sys_s: f64,
    /// How many times memory was sampled.
    pub samples: u64,
    /// CPU seconds the rest of the machine used while the child ran (all busy time in
    /// `/proc/stat` minus the child's): other work competing for the cores. Divided by
    /// the wall time, it is how many cores were busy with something else.
    #[serde(default)]
    pub others_cpu_s: f64,
}

impl Measured {
    /// Whether the command succeeded (exit code 0).
    pub fn ok(&self) -> bool {
        self.exit_code == Some(0)
    }

    /// "ok", "exit 1" or "killed by signal 9 (SIGKILL)".
    pub fn outcome(&self) -> String {
        match (self.exit_code, self.signal) {
            (Some(0), _) => "ok".into(),
            (Some(c), _) => format!("exit {c}"),
            (None, Some(9)) => "killed by SIGKILL".into(),
            (None, Some(s)) => format!("killed by signal {s}"),
            (None, None) => "unknown exit".into(),
        }
    }
}

/// Runs `job` to completion and measures it.
pub fn run(job: &Job) -> anyhow::Result<Measured> {
    let log = File::create(&job.log).with_context(|| format!("creating {}", job.log.display()))?;
    let mut cmd = match &job.cgroup_procs {
        Some(procs) => {
            let mut c = Command::new("/bin/sh");
            c.arg("-c")
                .arg(r#"echo $$ > "$REEFKNOT_BENCH_CGROUP_PROCS" && exec "$@""#)
                .arg("sh")
                .arg(&job.program)
                .args(&job.args)
                .env("REEFKNOT_BENCH_CGROUP_PROCS", procs);
            c
        }
        None => {
            let mut c = Command::new(&job.program);
            c.args(&job.args);
            c
        }
    };
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().context("duplicating the log file")?)
        .stderr(log);
    if let Some(dir) = &job.cwd {
        cmd.current_dir(dir);
    }

    let (user0, sys0) = children_cpu_seconds();
    let busy0 = machine_busy_seconds();
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", job.program.display()))?;
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    // The waiter reaps the child and notes the exit time; this thread samples memory.
    let waiter = std::thread::spawn(move || {
        let status = child.wait();
        let _ = tx.send((status, Instant::now()));
    });

    let mut tree: Vec<u32> = vec![pid];
    let mut last_scan = start;
    let mut hwm: HashMap<u32, u64> = HashMap::new();
    let (mut peak_anon, mut peak_rss, mut samples) = (0u64, 0u64, 0u64);
    let (status, end) = loop {
        if job.follow_children && last_scan.elapsed() >= Duration::from_millis(200) {
            tree = descendants(pid);
            last_scan = Instant::now();
        }
        let (mut anon, mut rss) = (0u64, 0u64);
        for &p in &tree {
            if let Some(m) = read_status(p) {
                anon += m.anon;
                rss += m.rss;
                let h = hwm.entry(p).or_default();
                *h = (*h).max(m.hwm);
            }
        }
        peak_anon = peak_anon.max(anon);
        peak_rss = peak_rss.max(rss);
        samples += 1;
        match rx.recv_timeout(job.poll) {
            Ok(done) => break done,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                anyhow::bail!("the thread waiting for the child died")
            }
        }
    };
    let _ = waiter.join();
    let status = status.context("waiting for the child")?;
    let (user1, sys1) = children_cpu_seconds();
    let busy = machine_busy_seconds() - busy0;
    let (cpu_user_s, cpu_sys_s) = (user1 - user0, sys1 - sys0);
    use std::os::unix::process::ExitStatusExt as _;
    Ok(Measured {
        wall_s: end.duration_since(start).as_secs_f64(),
        exit_code: status.code(),
        signal: status.signal(),
        peak_anon_bytes: peak_anon,
        peak_rss_bytes: peak_rss,
        vm_hwm_bytes: hwm.values().copied().max().unwrap_or(0),
        cpu_user_s,
        cpu_sys_s,
        samples,
        others_cpu_s: (busy - cpu_user_s - cpu_sys_s).max(0.0),
    })
}

/// One sample of a process's memory, in bytes.
struct StatusSample {
    anon: u64,
    rss: u64,
    hwm: u64,
}

/// Reads `RssAnon`, `VmRSS` and `VmHWM` of `pid`; `None` once it has exited (a
/// zombie has no memory lines).
fn read_status(pid: u32) -> Option<StatusSample> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let (mut anon, mut rss, mut hwm) = (None, None, None);
    for line in text.lines() {
        let slot = if line.starts_with("RssAnon:") {
            &mut anon
        } else if line.starts_with("VmRSS:") {
            &mut rss
        } else if line.starts_with("VmHWM:") {
            &mut hwm
        } else {
            continue;
        };
        *slot = parse_kb(line);
    }
    Some(StatusSample {
        anon: anon?,
        rss: rss.unwrap_or(0),
        hwm: hwm.unwrap_or(0),
    })
}

/// `"RssAnon:\t  1234 kB"` → 1234 × 1024.
fn parse_kb(line: &str) -> Option<u64> {
    let mut parts = line.split_whitespace().skip(1);
    let n: u64 = parts.next()?.parse().ok()?;
    Some(n * 1024)
}

/// `pid` and every process descending from it, by scanning `/proc/*/stat`.
fn descendants(pid: u32) -> Vec<u32> {
    let mut parent_of: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(pp) = parent_pid(p) {
                parent_of.push((p, pp));
            }
        }
    }
    let mut tree: HashSet<u32> = HashSet::from([pid]);
    // Parents may be listed after their children: iterate to a fixed point.
    loop {
        let before = tree.len();
        for &(p, pp) in &parent_of {
            if tree.contains(&pp) {
                tree.insert(p);
            }
        }
        if tree.len() == before {
            break;
        }
    }
    let mut out: Vec<u32> = tree.into_iter().collect();
    out.sort_unstable();
    out
}

/// The parent of `pid` from `/proc/PID/stat` (the field after the state, which
/// follows the parenthesised command name).
fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Linux reports times in `/proc` in clock ticks of `USER_HZ`, 100 on every
/// architecture the kernel's ABI fixes it for.
const USER_HZ: f64 = 100.0;

/// The user and system CPU seconds of this process's reaped children
/// (`cutime`, `cstime` of `/proc/self/stat`).
fn children_cpu_seconds() -> (f64, f64) {
    let read = || -> Option<(f64, f64)> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // Field 16 (cutime) and 17 (cstime) of proc(5); `rest` starts at field 3.
        let cutime: f64 = fields.get(13)?.parse().ok()?;
        let cstime: f64 = fields.get(14)?.parse().ok()?;
        Some((cutime / USER_HZ, cstime / USER_HZ))
    };
    read().unwrap_or((0.0, 0.0))
}

/// The machine's busy CPU seconds since boot, all cores together: every field of the
/// `cpu` line of `/proc/stat` but idle and iowait (guest time is already in user).
pub fn machine_busy_seconds() -> f64 {
    let read = || -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal (guest guest_nice)
        let busy: u64 = v
            .iter()
            .take(8)
            .enumerate()
            .filter(|&(i, _)| i != 3 && i != 4)
            .map(|(_, x)| x)
            .sum();
        Some(busy as f64 / USER_HZ)
    };
    read().unwrap_or(0.0)
}

/// Waits until the rest of the machine is quiet: until one `window` in which other
/// processes kept fewer than `max_cores` cores busy, or `patience` has passed.
/// Returns the cores busy in the last window.
pub fn wait_quiet(window: Duration, max_cores: f64, patience: Duration) -> f64 {
    let start = Instant::now();
    loop {
        let b0 = machine_busy_seconds();
        let t0 = Instant::now();
        std::thread::sleep(window);
        let cores = (machine_busy_seconds() - b0) / t0.elapsed().as_secs_f64();
        if cores < max_cores || start.elapsed() >= patience {
            return cores;
        }
    }
}

/// The total size of the regular files under `path` (recursively), in bytes.
pub fn dir_bytes(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if meta.is_file() {
        return meta.len();
    }
    if !meta.is_dir() {
        return 0;
    }
    std::fs::read_dir(path)
        .map(|d| d.flatten().map(|e| dir_bytes(&e.path())).sum())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_a_process_that_allocates() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let job = Job {
            program: "/bin/sh".into(),
            args: vec![
                "-c".into(),
                "x=$(head -c 3000000 /dev/zero | tr '\\0' a); sleep 0.2; exit 3".into(),
            ],
            cwd: None,
            log: dir.join("log"),
            cgroup_procs: None,
            follow_children: true,
            poll: Duration::from_millis(5),
        };
        let m = run(&job).unwrap();
        assert_eq!(m.exit_code, Some(3));
        assert_eq!(m.outcome(), "exit 3");
        assert!(m.wall_s >= 0.2, "{m:?}");
        assert!(m.samples > 5, "{m:?}");
        // The shell holds the 3 MB string.
        assert!(m.peak_anon_bytes > 2_000_000, "{m:?}");
        assert!(m.vm_hwm_bytes >= m.peak_anon_bytes / 2, "{m:?}");
    }

    #[test]
    fn parses_status_lines() {
        assert_eq!(parse_kb("RssAnon:\t    2048 kB"), Some(2048 * 1024));
        assert_eq!(parse_kb("RssAnon:"), None);
        let me = read_status(std::process::id()).unwrap();
        assert!(me.anon > 0 && me.rss >= me.anon && me.hwm >= me.rss / 2);
        assert_eq!(
            parent_pid(std::process::id()),
            Some(std::os::unix::process::parent_id())
        );
    }
}

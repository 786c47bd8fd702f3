//! Finding mergekit and caching its (slow) measurements.
//!
//! A mergekit run of the benchmark family takes minutes, so every measurement is
//! stored in `DIR/mergekit.json` as soon as it is taken, keyed by the method, the
//! scale, the memory limit, mergekit's version and the exact configuration text. A
//! later run with the same key reuses it (unless `--rerun-mergekit`), and a run without
//! `--mergekit` still prints the ratios from it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::cgroup::CgroupStats;
use crate::measure::Measured;
use crate::methods::Method;
use crate::Machine;

/// The mergekit command line tool the benchmark runs.
#[derive(Clone, Debug)]
pub struct Mergekit {
    /// The `mergekit-yaml` executable (possibly a pyenv shim).
    pub program: PathBuf,
    /// `mergekit`'s version as its Python package reports it.
    pub version: String,
}

impl Mergekit {
    /// Finds `cmd` (a path, or a name looked up in `PATH`) and asks its Python for
    /// mergekit's version.
    pub fn find(cmd: &str) -> anyhow::Result<Mergekit> {
        let program = which(cmd).with_context(|| {
            format!("`{cmd}` is not on PATH (install mergekit: `pip install mergekit`)")
        })?;
        // The script's interpreter, from its `#!` line; a shim (pyenv) is a shell
        // script, whose `python3` is the same shim family: use `python3` then.
        let python = std::fs::read_to_string(&program)
            .ok()
            .and_then(|text| {
                let first = text.lines().next()?.strip_prefix("#!")?.trim().to_string();
                first.contains("python").then_some(first)
            })
            .unwrap_or_else(|| "python3".into());
        let mut parts = python.split_whitespace();
        let interpreter = parts.next().unwrap_or("python3");
        let out = Command::new(interpreter)
            .args(parts)
            .args([
                "-c",
                "import importlib.metadata as m; print(m.version('mergekit'))",
            ])
            .output()
            .with_context(|| format!("running {interpreter} to read mergekit's version"))?;
        anyhow::ensure!(
            out.status.success(),
            "cannot read mergekit's version with {interpreter}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(Mergekit {
            program,
            version: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        })
    }

    /// The arguments after the program: config, output folder and the flags used.
    pub fn args(config: &str, out: &str) -> Vec<String> {
        vec![
            config.into(),
            out.into(),
            "--no-copy-tokenizer".into(),
            "--random-seed".into(),
            "0".into(),
        ]
    }
}

/// `cmd` itself when it contains a `/`, else the first executable file of that name
/// in `PATH`.
fn which(cmd: &str) -> Option<PathBuf> {
    if cmd.contains('/') {
        let p = PathBuf::from(cmd);
        return p.is_file().then_some(p);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(cmd))
        .find(|p| p.is_file())
}

/// One mergekit measurement.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    /// The merge.
    pub method: Method,
    /// The family's scale.
    pub scale: usize,
    /// The cgroup memory limit it ran under, if any.
    pub memory_limit_bytes: Option<u64>,
    /// mergekit's version.
    pub mergekit_version: String,
    /// The configuration file's text.
    pub config: String,
    /// The command line after `mergekit-yaml`.
    pub args: Vec<String>,
    /// What was measured.
    pub measured: Measured,
    /// The cgroup's counters, for a run under a memory limit.
    pub cgroup: Option<CgroupStats>,
    /// When (UTC).
    pub date: String,
    /// Where.
    pub machine: Machine,
    /// Whether this entry was read from the cache instead of measured by this run.
    #[serde(default)]
    pub from_cache: bool,
}

/// The cache file's content.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Cache {
    /// Every measurement kept, the newest last.
    pub entries: Vec<Entry>,
}

impl Cache {
    /// Loads `path`, or an empty cache when it does not exist.
    pub fn load(path: &Path) -> anyhow::Result<Cache> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Cache::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// The newest entry for this key (any mergekit version when `version` is `None`).
    pub fn find(
        &self,
        method: Method,
        scale: usize,
        limit: Option<u64>,
        version: Option<&str>,
        config: Option<&str>,
    ) -> Option<Entry> {
        self.entries
            .iter()
            .rev()
            .find(|e| {
                e.method == method
                    && e.scale == scale
                    && e.memory_limit_bytes == limit
                    && version.is_none_or(|v| e.mergekit_version == v)
                    && config.is_none_or(|c| e.config == c)
            })
            .map(|e| Entry {
                from_cache: true,
                ..e.clone()
            })
    }

    /// Adds `entry` (replacing one with the same key) and writes the file at once.
    pub fn store(&mut self, path: &Path, entry: Entry) -> anyhow::Result<()> {
        self.entries.retain(|e| {
            !(e.method == entry.method
                && e.scale == entry.scale
                && e.memory_limit_bytes == entry.memory_limit_bytes
                && e.mergekit_version == entry.mergekit_version
                && e.config == entry.config)
        });
        self.entries.push(Entry {
            from_cache: false,
            ..entry
        });
        let text = serde_json::to_string_pretty(self).expect("the cache serializes");
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
    }
}

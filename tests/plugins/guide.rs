//! `docs/plugins.md` is executed: its example plugin is written from the guide's code
//! blocks into an empty folder, built with the guide's command, and loaded and run with
//! the guide's commands; its C snippets are the shipped C plugin's code.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use reefknot_io::{Checkpoint, Dtype};

use crate::build;
use crate::util::*;

/// The guide's fenced blocks that carry a `title=...`, by title, and its untitled
/// blocks of `lang`.
fn blocks() -> (BTreeMap<String, String>, Vec<(String, String)>) {
    let text = std::fs::read_to_string(build::root().join("docs/plugins.md")).unwrap();
    let mut titled = BTreeMap::new();
    let mut untitled = Vec::new();
    let mut current: Option<(String, Option<String>, String)> = None;
    for line in text.lines() {
        match &mut current {
            None => {
                if let Some(info) = line.strip_prefix("```") {
                    let mut words = info.split_whitespace();
                    let lang = words.next().unwrap_or("").to_string();
                    let title = words
                        .find_map(|w| w.strip_prefix("title="))
                        .map(String::from);
                    current = Some((lang, title, String::new()));
                }
            }
            Some(_) if line.starts_with("```") => {
                let (lang, title, body) = current.take().unwrap();
                match title {
                    Some(t) => {
                        assert!(
                            titled.insert(t.clone(), body).is_none(),
                            "two blocks titled {t}"
                        );
                    }
                    None => untitled.push((lang, body)),
                }
            }
            Some((_, _, body)) => {
                body.push_str(line);
                body.push('\n');
            }
        }
    }
    (titled, untitled)
}

/// Runs the shell lines of a block in `dir`, with the `reefknot` under test and the
/// test's `cargo` first on the PATH.
fn run_block(dir: &Path, block: &str) {
    let bin = Path::new(env!("CARGO_BIN_EXE_reefknot"))
        .parent()
        .unwrap()
        .to_path_buf();
    let mut path = vec![bin];
    if let Some(cargo) = std::env::var_os("CARGO") {
        path.push(Path::new(&cargo).parent().unwrap().to_path_buf());
    }
    path.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    for line in block.lines().filter(|l| !l.trim().is_empty()) {
        let out = Command::new("sh")
            .arg("-c")
            .arg(line)
            .current_dir(dir)
            .env("PATH", std::env::join_paths(&path).unwrap())
            .env("CARGO_NET_OFFLINE", "true")
            .env_remove("REEFKNOT_PLUGIN_PATH")
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "`{line}` failed:\n{stdout}\n{stderr}");
    }
}

#[test]
#[cfg(unix)]
fn the_guide_builds_loads_and_runs_its_example_plugin() {
    let (titled, untitled) = blocks();
    let ws = Workspace::new(Dtype::F32, None);
    // The guide's layout: the plugin in `soft/`, a reefknot checkout in `reefknot/`.
    #[cfg(unix)]
    std::os::unix::fs::symlink(build::root(), ws.path().join("reefknot")).unwrap();
    for (title, body) in &titled {
        if title.contains('/') || title.ends_with(".yaml") {
            let file = ws.path().join(title);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, body).unwrap();
        }
    }
    // The example is the promised size.
    let lines = titled["soft/src/lib.rs"].lines().count();
    assert!(lines <= 40, "the guide's plugin has {lines} lines");

    for block in [
        "build", "run", "run-more", "test", "debug", "build-c", "new",
    ] {
        run_block(ws.path(), &titled[block]);
    }

    // The merge equals soft thresholding then task arithmetic, computed here.
    let base = Checkpoint::open(&ws.model("base")).unwrap();
    let models: Vec<Checkpoint> = TASKS
        .iter()
        .map(|t| Checkpoint::open(&ws.model(t)).unwrap())
        .collect();
    let merged = Checkpoint::open(&ws.path().join("merged")).unwrap();
    let tau = 0.001f64 as f32;
    let mut zeroed = 0usize;
    for t in base.tensors() {
        let b = values(&base, &t.name);
        let ms: Vec<Vec<f32>> = models.iter().map(|m| values(m, &t.name)).collect();
        let got = values(&merged, &t.name);
        for j in 0..b.len() {
            let delta = ms.iter().fold(0f32, |acc, m| {
                let x = m[j] - b[j];
                zeroed += usize::from(x.abs() <= tau);
                acc + (x.abs() - tau).max(0.0).copysign(x)
            });
            assert_eq!(
                got[j].to_bits(),
                (b[j] + delta).to_bits(),
                "{}[{j}]",
                t.name
            );
        }
    }
    assert!(zeroed > 0);
    assert_eq!(
        tensors(&ws.path().join("merged")),
        tensors(&ws.path().join("merged-flag"))
    );

    // The C snippets are the shipped C plugin's own code.
    let robust = std::fs::read_to_string(build::root().join("plugins/robust/robust.c")).unwrap();
    let c: Vec<&String> = untitled
        .iter()
        .filter(|(lang, _)| lang == "c")
        .map(|(_, b)| b)
        .collect();
    assert!(!c.is_empty());
    for snippet in c {
        assert!(
            robust.contains(snippet.as_str()),
            "not in robust.c:\n{snippet}"
        );
    }
    assert!(ws.path().join("librobust.so").exists() || !cfg!(target_os = "linux"));
}

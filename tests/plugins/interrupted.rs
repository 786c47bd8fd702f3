//! A merge that is still running — its operator is the `SLOW` fixture, 50 ms a chunk —
//! when it is interrupted, or when something else takes the place of its output: it
//! removes its partial folder on SIGINT, SIGTERM and SIGHUP (and its watchdog removes it
//! after a SIGKILL, which the merge cannot see), never deletes what
//! appeared at its output without `--force`, and shares its output with no other merge.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reefknot_io::Dtype;

use crate::build;
use crate::util::*;

fn slow_plugin() -> PathBuf {
    build::misbehaving("SLOW", &[])
}

/// Starts `reefknot merge r.yaml -o out` with the slow operator in `ws`.
fn start(ws: &Workspace, extra: &[&str]) -> Child {
    ws.recipe("r.yaml", &recipe_with("misbehaving::twice |> mean"));
    reefknot()
        .args(["merge", "r.yaml", "-o", "out", "--threads", "1", "--plugin"])
        .arg(slow_plugin())
        .args(extra)
        .current_dir(ws.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the reefknot binary runs")
}

/// The hidden entries of `dir` a merge into `out` makes while it runs.
fn hidden(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".out.reefknot-"))
        .collect();
    v.sort();
    v
}

/// Waits until the merge has created its partial folder.
fn wait_until_writing(ws: &Workspace, child: &mut Child) {
    let start = Instant::now();
    while !hidden(ws.path()).iter().any(|n| n.contains("-partial-")) {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
            panic!("the merge ended before it wrote anything ({status}):\n{stderr}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the merge never started writing"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[cfg(unix)]
#[test]
fn interrupted_merges_leave_nothing_behind() {
    for (name, number) in [("INT", 2), ("TERM", 15), ("HUP", 1)] {
        let ws = Workspace::new(Dtype::F32, None);
        let mut child = start(&ws, &[]);
        wait_until_writing(&ws, &mut child);
        assert_eq!(hidden(ws.path()).len(), 2, "a lock and a partial folder");
        signal(&child, name);
        let out = child.wait_with_output().unwrap();
        let stderr = fails(&out, 128 + number);
        assert!(stderr.contains("interrupted"), "{stderr}");
        assert_eq!(
            ws.entries(),
            ["family", "fisher", "models", "r.yaml"],
            "SIG{name} left something behind:\n{stderr}"
        );
    }
}

#[cfg(unix)]
#[test]
fn a_merge_killed_outright_leaves_nothing_behind() {
    let ws = Workspace::new(Dtype::F32, None);
    let mut child = start(&ws, &[]);
    wait_until_writing(&ws, &mut child);
    signal(&child, "KILL");
    assert_eq!(child.wait().unwrap().code(), None, "killed by the signal");
    // The watchdog notices the end of the merge and removes its leftovers.
    let start = Instant::now();
    while ws.entries() != ["family", "fisher", "models", "r.yaml"] {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "SIGKILL left {:?} behind",
            ws.entries()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(unix)]
#[test]
fn what_appears_at_the_output_during_a_merge_is_kept() {
    let ws = Workspace::new(Dtype::F32, None);
    let mut child = start(&ws, &[]);
    wait_until_writing(&ws, &mut child);
    let out_dir = ws.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    std::fs::write(out_dir.join("precious.txt"), "mine").unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = fails(&out, 1);
    assert!(stderr.contains("appeared while the merge ran"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(out_dir.join("precious.txt")).unwrap(),
        "mine"
    );
    assert_eq!(
        ws.entries(),
        ["family", "fisher", "models", "out", "r.yaml"],
        "{stderr}"
    );
}

#[cfg(unix)]
#[test]
fn two_merges_into_one_output_cannot_both_succeed() {
    let ws = Workspace::new(Dtype::F32, None);
    let mut first = start(&ws, &[]);
    wait_until_writing(&ws, &mut first);
    let second = run_in(
        ws.path(),
        &[
            "merge",
            "r.yaml",
            "-o",
            "out",
            "--force",
            "--plugin",
            slow_plugin().to_str().unwrap(),
        ],
    );
    let stderr = fails(&second, 1);
    assert!(
        stderr.contains("another merge is writing out (process"),
        "{stderr}"
    );
    ok(&first.wait_with_output().unwrap());
    assert_eq!(
        ws.entries(),
        ["family", "fisher", "models", "out", "r.yaml"]
    );
}

//! What a command-line tool is expected to do: end quietly when its reader goes away,
//! keep escape codes out of piped logs, take the usual verbosity flags.

use std::process::Stdio;

use reefknot_io::Dtype;

use crate::util::*;

/// `reefknot ops | head -1`, `reefknot check r.yaml --json | head`: the reader closes
/// the pipe before the output is written; reefknot ends with success, no panic.
#[test]
fn a_closed_pipe_ends_the_output_quietly() {
    let ws = Workspace::new(Dtype::BF16, None);
    ws.recipe("r.yaml", &recipe_with("ties"));
    for args in [
        &["ops"][..],
        &["ops", "--markdown"],
        &["check", "r.yaml"],
        &["check", "r.yaml", "--json"],
    ] {
        let mut child = reefknot()
            .args(args)
            .current_dir(ws.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Close the reading end before reefknot writes.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// Logs on stderr are plain text when stderr is not a terminal; `-v` turns on info
/// lines, as `RUST_LOG` does.
#[test]
fn piped_logs_carry_no_escape_codes_and_verbose_flags_work() {
    let ws = Workspace::new(Dtype::BF16, None);
    ws.recipe("r.yaml", &recipe_with("ties"));
    let quiet = run_in(ws.path(), &["merge", "r.yaml", "-o", "a", "--quiet"]);
    assert!(text(&quiet).1.is_empty(), "{}", text(&quiet).1);
    let verbose = run_in(ws.path(), &["-v", "merge", "r.yaml", "-o", "b", "--quiet"]);
    let from_env = reefknot()
        .args(["merge", "r.yaml", "-o", "c", "--quiet"])
        .env("RUST_LOG", "info")
        .env_remove("REEFKNOT_LOG")
        .current_dir(ws.path())
        .output()
        .unwrap();
    for out in [&verbose, &from_env] {
        ok(out);
        let stderr = text(out).1;
        assert!(stderr.contains("INFO"), "{stderr}");
        assert!(!stderr.contains('\u{1b}'), "escape codes in {stderr:?}");
    }
}

/// `reefknot completions SHELL` prints a script that knows the commands and flags; the
/// bash one is valid bash.
#[test]
fn completions_know_the_commands() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = ok(&run_in(dir.path(), &["completions", shell]));
        for word in ["merge", "check", "--allow-nonfinite", "--scan"] {
            assert!(script.contains(word), "{shell}: no {word}");
        }
    }
    let script = dir.path().join("reefknot.bash");
    std::fs::write(&script, ok(&run_in(dir.path(), &["completions", "bash"]))).unwrap();
    if let Ok(out) = std::process::Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
    {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `merge --json` prints a summary a script can read, and nothing else on stdout.
#[test]
fn merge_json_is_a_summary() {
    let ws = Workspace::new(Dtype::BF16, None);
    ws.recipe("r.yaml", &recipe_with("ties"));
    let stdout = ok(&run_in(
        ws.path(),
        &["merge", "r.yaml", "-o", "out", "--json"],
    ));
    let summary: serde_json::Value = serde_json::from_str(&stdout).expect(&stdout);
    assert!(
        summary["output"].as_str().unwrap().ends_with("out"),
        "{summary}"
    );
    assert_eq!(summary["files"], serde_json::json!(["model.safetensors"]));
    assert_eq!(summary["tensors"], 21);
    assert!(summary["parameters"].as_u64().unwrap() > 100_000);
    assert!(summary["seconds"].as_f64().unwrap() >= 0.0);
}

/// What has no effect is a warning pointing into the recipe; `--strict` makes it an
/// error (exit 2), and a recipe where everything counts stays quiet.
#[test]
fn check_warns_about_what_has_no_effect() {
    let ws = Workspace::new(Dtype::BF16, None);
    ws.recipe(
        "w.yaml",
        "base: models/base\nmodels:\n  - path: models/code\n    params: { densty: 0.3 }\n  \
         - path: models/math\nparams: { density: 0.2, unused: 1 }\n\
         merge: ties(trim($density), elect, disjoint)\noverrides:\n  \
         - match: \"model.layers.*.mlpp.*\"\n    merge: sum\n  - layers: 1..40\n    \
         params: { density: 0.4 }\n  - layers: 1\n    merge: mean\n",
    );
    let out = run_in(ws.path(), &["check", "w.yaml"]);
    ok(&out);
    insta::assert_snapshot!("no_effect_warnings", text(&out).1);
    let stderr = fails(&run_in(ws.path(), &["check", "w.yaml", "--strict"]), 2);
    assert!(
        stderr.contains("5 warnings about the recipe, and --strict makes them errors"),
        "{stderr}"
    );
    // Merging warns too, and --strict refuses before anything is written.
    fails(
        &run_in(ws.path(), &["merge", "w.yaml", "-o", "out", "--strict"]),
        2,
    );
    assert!(!ws.path().join("out").exists());

    ws.recipe("r.yaml", &recipe_with("ties(trim(0.2), elect, disjoint)"));
    let clean = run_in(ws.path(), &["check", "r.yaml", "--strict"]);
    ok(&clean);
    assert!(text(&clean).1.is_empty(), "{}", text(&clean).1);
}

/// `--help` ends with examples, the exit codes and the environment it reads.
#[test]
fn long_help_shows_examples_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let help = ok(&run_in(dir.path(), &["--help"]));
    for part in [
        "Examples:",
        "reefknot merge recipe.yaml -o merged",
        "Exit codes:",
        "REEFKNOT_LOG",
    ] {
        assert!(help.contains(part), "no {part:?} in\n{help}");
    }
    // -h stays short.
    let short = ok(&run_in(dir.path(), &["-h"]));
    assert!(!short.contains("Exit codes:"), "{short}");
}

/// `-q` (any command, before or after it) leaves errors and warnings only: `check -q`
/// answers by its exit code, as `grep -q` does.
#[test]
fn quiet_leaves_only_errors_and_warnings() {
    let ws = Workspace::new(Dtype::BF16, None);
    ws.recipe("r.yaml", &recipe_with("ties"));
    for args in [&["check", "r.yaml", "-q"][..], &["-q", "check", "r.yaml"]] {
        let out = run_in(ws.path(), args);
        ok(&out);
        assert_eq!(text(&out), (String::new(), String::new()), "{args:?}");
    }
    let out = run_in(ws.path(), &["merge", "r.yaml", "-o", "m", "-q"]);
    ok(&out);
    assert_eq!(text(&out), (String::new(), String::new()));
    // A warning still shows; an error still fails.
    ws.recipe(
        "w.yaml",
        &format!("{}params: {{ unused: 1 }}\n", recipe_with("ties")),
    );
    let out = run_in(ws.path(), &["check", "w.yaml", "-q"]);
    let stdout = ok(&out);
    let stderr = text(&out).1;
    assert!(
        stdout.is_empty() && stderr.contains("unused"),
        "{stdout}{stderr}"
    );
    ws.recipe("e.yaml", &recipe_with("trim(0.2) |> disjoint"));
    let stderr = fails(&run_in(ws.path(), &["check", "e.yaml", "-q"]), 2);
    assert!(stderr.contains("disjoint"), "{stderr}");
}

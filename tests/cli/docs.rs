//! The documentation is executed: every command of a shell block runs on a fresh copy
//! of the repository, every expression in a `merge` block compiles, every full recipe
//! in a `yaml` block passes `reefknot check` on a synthetic family, and the operator
//! reference is what the operators' definitions generate.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use reefknot_io::Dtype;

use crate::util::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every Markdown file the project documents itself with.
fn documents() -> Vec<PathBuf> {
    let mut v = vec![root().join("README.md")];
    for e in fs::read_dir(root().join("docs")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "md") {
            v.push(p);
        }
    }
    v.sort();
    v
}

/// The fenced blocks of `lang` in a Markdown file, with their line numbers. As
/// CommonMark reads fences: ```` ``` ```` or `~~~`, three or more; the info string's
/// first word is the language (```` ```sh title=build ````); a block ends at a fence
/// of the same character at least as long, with nothing after it; the opening fence's
/// indentation is taken off the block's lines (blocks inside list items).
fn blocks(path: &Path, lang: &str) -> Vec<(usize, String)> {
    let text = fs::read_to_string(path).unwrap();
    let mut out = Vec::new();
    // The open block: its fence character and length, indent, language, start, body.
    let mut open: Option<(char, usize, usize, bool, usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let fence = trimmed
            .chars()
            .next()
            .filter(|c| *c == '`' || *c == '~')
            .map(|c| (c, trimmed.chars().take_while(|x| *x == c).count()))
            .filter(|(_, n)| *n >= 3);
        match (&mut open, fence) {
            (None, Some((c, n))) => {
                let info = trimmed[n..].split_whitespace().next().unwrap_or("");
                open = Some((c, n, indent, info == lang, i + 1, String::new()));
            }
            (None, None) => {}
            (Some((c, n, ..)), Some((c2, n2)))
                if c2 == *c && n2 >= *n && trimmed[n2..].trim().is_empty() =>
            {
                let (_, _, _, wanted, start, body) = open.take().unwrap();
                if wanted {
                    out.push((start, body));
                }
            }
            (Some((_, _, strip, _, _, body)), _) => {
                let keep = line.len() - line.trim_start().len();
                body.push_str(&line[keep.min(*strip)..]);
                body.push('\n');
            }
        }
    }
    out
}

#[test]
fn every_documented_expression_compiles() {
    let registry = reefknot_ops::Registry::builtin();
    let mut n = 0;
    for doc in documents() {
        for (line, expr) in blocks(&doc, "merge") {
            if let Err(e) = reefknot_lang::compile(&expr, &registry) {
                panic!("{}:{line}: {e}\n{expr}", doc.display());
            }
            n += 1;
        }
    }
    assert!(n >= 5, "only {n} expressions found");
}

#[test]
fn every_documented_recipe_checks() {
    let ws = Workspace::new(Dtype::BF16, None);
    // The LoRA adapter docs/recipes.md applies.
    let code = reefknot_io::Checkpoint::open(&ws.model("code")).unwrap();
    crate::lora::write_adapter(
        &ws.path().join("loras/code"),
        &code,
        4,
        r#"{"peft_type": "LORA", "r": 4, "lora_alpha": 8}"#,
    );
    // Vocabularies that differ, for docs/recipes.md's tokenizers.
    for (name, tokens) in ["base", "code", "math"]
        .iter()
        .zip(crate::tokenizer::vocabularies())
    {
        crate::tokenizer::write_tokenizer(&ws.model(name), &tokens);
    }
    let mut n = 0;
    for doc in documents() {
        if run_elsewhere(&doc).is_some() {
            continue;
        }
        for (line, yaml) in blocks(&doc, "yaml") {
            // Fragments (a few keys to illustrate one point) are not whole recipes.
            if !yaml.lines().any(|l| l.starts_with("base:")) {
                continue;
            }
            let name = format!("doc-{n}.yaml");
            ws.recipe(&name, &yaml);
            let out = run_in(ws.path(), &["check", &name]);
            let (stdout, stderr) = text(&out);
            assert!(
                out.status.success(),
                "{}:{line} does not check:\n{yaml}\n{stdout}{stderr}",
                doc.display()
            );
            n += 1;
        }
    }
    assert!(n >= 5, "only {n} recipes found");
}

#[test]
fn the_operator_reference_is_generated_from_the_definitions() {
    let generated = ok(&reefknot().args(["ops", "--markdown"]).output().unwrap());
    let path = root().join("docs/operators.md");
    if std::env::var_os("REEFKNOT_BLESS").is_some() {
        fs::write(&path, &generated).unwrap();
    }
    let committed = fs::read_to_string(&path).unwrap();
    assert!(
        committed == generated,
        "docs/operators.md is stale: run `cargo run -- ops --markdown > docs/operators.md` \
         (or this test with REEFKNOT_BLESS=1)"
    );
    // Every built-in of operators.md is registered (inventory entries vanish silently
    // when a crate is not linked).
    for op in BUILTIN_OPERATORS {
        assert!(
            generated.contains(&format!("\n## {op}\n")),
            "{op} is not registered"
        );
    }
}

/// Documented commands the suite does not run (matched by how the line starts), and
/// why. Everything else in a shell block runs.
const NOT_RUN: &[(&str, &str)] = &[
    ("cargo test --workspace", "the test suite: this is it"),
    (
        "cargo install --path . --locked",
        "a release build of the code under test (minutes); the suite checks it is --locked",
    ),
    (
        "cargo build --release --workspace",
        "a release build of the code under test (minutes)",
    ),
    (
        "target/release/reefknot-bench",
        "the benchmark: 6 GB of scratch space and minutes per merge",
    ),
    (
        "cargo run --release -p reefknot-engine --example plan_scaling",
        "a benchmark of minutes",
    ),
    (
        "python3 scripts/quality/run.py",
        "trains four models with torch: about 10 minutes",
    ),
    ("rustup toolchain install", "installs a toolchain"),
    ("cargo install cargo-fuzz", "installs a tool"),
    (
        "cargo +nightly fuzz",
        "fuzzing: nightly Rust and 30 minutes a target",
    ),
    (
        "fuzz/target/",
        "fuzzing: nightly Rust and 30 minutes a target",
    ),
];

/// Documented commands that run only where python3 has what they import (matched by
/// how the line starts): the import line, and what the note says otherwise.
const NEEDS_PYTHON: &[(&str, &str)] = &[
    (
        "python3 scripts/fisher.py",
        "import torch, transformers, safetensors",
    ),
    ("python3 ", "import json"),
];

/// Documented commands run as the equivalent command of the suite's own build.
const STAND_INS: &[(&str, &str)] = &[("cargo run -- ", "reefknot ")];

/// The documents whose blocks another test runs: the plugin guide's commands need its
/// plugin written out and built first (tests/plugins/guide.rs runs its shell blocks by
/// these titles, and checks its recipe).
const RUN_ELSEWHERE: &[(&str, &[&str])] = &[(
    "docs/plugins.md",
    &[
        "new", "build", "run", "run-more", "test", "build-c", "debug",
    ],
)];

/// The titles of the shell blocks another test runs, for a document of RUN_ELSEWHERE.
fn run_elsewhere(doc: &Path) -> Option<&'static [&'static str]> {
    let relative = doc.strip_prefix(root()).ok()?.to_str()?;
    RUN_ELSEWHERE
        .iter()
        .find(|(d, _)| *d == relative)
        .map(|(_, titles)| *titles)
}

/// A fresh copy of the repository, as a clone would have it: the files in git's index
/// (nothing ignored or untracked, so no build output, no models a developer kept, no
/// leftovers of following the docs by hand).
fn fresh_copy(to: &Path) {
    let listed = Command::new("git")
        .args(["ls-files", "-z", "--cached"])
        .current_dir(root())
        .output()
        .expect(
            "this test copies the repository's files as git lists them: run it in a git checkout",
        );
    assert!(
        listed.status.success(),
        "git ls-files failed: run the test in a git checkout"
    );
    for name in listed.stdout.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = std::str::from_utf8(name).unwrap();
        let from = root().join(name);
        if !from.is_file() {
            continue; // deleted in the work tree, not yet committed
        }
        let dest = to.join(name);
        fs::create_dir_all(dest.parent().unwrap()).unwrap();
        fs::copy(&from, &dest).unwrap();
    }
}

/// A document's shell commands, one per line (continuation lines joined), with the
/// lines the suite does not run replaced by a note.
fn script(block: &str, skipped: &mut Vec<String>, has_python: &dyn Fn(&str) -> bool) -> String {
    // Lines ending in `\` go on on the next line, as bash reads them (not in comments).
    let mut lines = Vec::new();
    let mut pending = String::new();
    for line in block.lines() {
        match line.strip_suffix('\\') {
            Some(head) if !line.trim_start().starts_with('#') => pending.push_str(head),
            _ => {
                pending.push_str(line);
                lines.push(std::mem::take(&mut pending));
            }
        }
    }
    assert!(
        pending.is_empty(),
        "a block ends in a continuation:\n{block}"
    );
    let mut out = String::new();
    for line in lines {
        let command = line.trim();
        if command.starts_with("cargo install") {
            assert!(
                command.contains("--locked"),
                "`{command}`: install --locked"
            );
        }
        if let Some((_, why)) = NOT_RUN.iter().find(|(p, _)| command.starts_with(p)) {
            skipped.push(format!("`{command}`: {why}"));
            out.push_str(": not run\n");
            continue;
        }
        if let Some((_, imports)) = NEEDS_PYTHON.iter().find(|(p, _)| command.starts_with(p)) {
            if !has_python(imports) {
                skipped.push(format!("`{command}`: python3 cannot `{imports}` here"));
                out.push_str(": not run\n");
                continue;
            }
        }
        let mut command = command.to_string();
        for (from, to) in STAND_INS {
            if let Some(rest) = command.strip_prefix(from) {
                command = format!("{to}{rest}");
            }
        }
        // A build or a benchmark anywhere in a line (`cd x && cargo …`, `VAR=1 cargo …`)
        // is either a stand-in or listed, never run unawares.
        assert!(
            !command
                .split_whitespace()
                .any(|w| w == "cargo" || w.starts_with("target/")),
            "`{command}` is neither run nor listed in NOT_RUN"
        );
        out.push_str(&command);
        out.push('\n');
    }
    out
}

/// Runs a shell block with bash (`-e -u -o pipefail`) in `dir`, the `reefknot` under
/// test first on the PATH and `HOME` a fresh folder.
fn run_script(dir: &Path, home: &Path, script: &str) -> std::process::Output {
    let bin = tempfile::tempdir().unwrap();
    let exe = std::env::var_os("REEFKNOT_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_reefknot")));
    std::os::unix::fs::symlink(exe, bin.path().join("reefknot")).unwrap();
    let mut path = vec![bin.path().to_path_buf()];
    path.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    let mut command = Command::new("bash");
    // Python packages installed for the user stay visible under the fresh HOME.
    if let (None, Some(real)) = (std::env::var_os("PYTHONUSERBASE"), std::env::var_os("HOME")) {
        command.env("PYTHONUSERBASE", Path::new(&real).join(".local"));
    }
    command
        .args(["-e", "-u", "-o", "pipefail", "-c", script])
        .current_dir(dir)
        .env("PATH", std::env::join_paths(&path).unwrap())
        .env("HOME", home)
        .env_remove("REEFKNOT_LOG")
        .env_remove("RUST_LOG")
        .env_remove("REEFKNOT_PLUGIN_PATH")
        .output()
        .unwrap()
}

#[test]
#[cfg(unix)]
fn every_documented_command_runs_on_a_fresh_copy() {
    let mut skipped = Vec::new();
    let mut ran = 0;
    let has_python = |imports: &str| {
        let scratch = tempfile::tempdir().unwrap();
        run_script(
            scratch.path(),
            scratch.path(),
            &format!("python3 -c '{imports}'"),
        )
        .status
        .success()
    };
    for doc in documents() {
        let relative = doc
            .strip_prefix(root())
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let sh = blocks(&doc, "sh");
        if let Some(titles) = run_elsewhere(&doc) {
            // Every shell block there has a title that test runs.
            let text = fs::read_to_string(&doc).unwrap();
            let found: Vec<&str> = text
                .lines()
                .filter_map(|l| l.strip_prefix("```sh title="))
                .collect();
            assert_eq!(found.len(), sh.len(), "{relative}: untitled shell blocks");
            assert_eq!(found, *titles, "{relative}: shell blocks");
            continue;
        }
        if sh.is_empty() {
            continue;
        }
        // Each document starts from a fresh copy. The README sets up its own family;
        // the other documents read as if its steps were followed, so the family the
        // example recipes expect is laid out first.
        let copy = tempfile::tempdir().unwrap();
        let home = tempfile::tempdir().unwrap();
        fresh_copy(copy.path());
        if relative != "README.md" {
            let out = run_script(copy.path(), home.path(), "reefknot demo --keep recipes");
            ok(&out);
        }
        for (line, block) in sh {
            let script = script(&block, &mut skipped, &has_python);
            let out = run_script(copy.path(), home.path(), &script);
            let (stdout, stderr) = text(&out);
            assert!(
                out.status.success(),
                "{relative}:{line} fails ({:?}):\n{script}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
                out.status.code()
            );
            ran += 1;
        }
    }
    eprintln!("not run:\n  {}", skipped.join("\n  "));
    assert!(ran >= 5, "only {ran} blocks ran");
}

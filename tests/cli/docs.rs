//! The documentation is executed: every expression in a `merge` block compiles, every
//! full recipe in a `yaml` block passes `reefknot check` on a synthetic family, and the
//! operator reference is what the operators' definitions generate.

use std::fs;
use std::path::{Path, PathBuf};

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

/// The fenced blocks of `lang` in a Markdown file, with their line numbers.
fn blocks(path: &Path, lang: &str) -> Vec<(usize, String)> {
    let text = fs::read_to_string(path).unwrap();
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        match &mut current {
            None if trimmed.strip_prefix("```") == Some(lang) => {
                current = Some((i + 1, String::new()))
            }
            Some(_) if trimmed.starts_with("```") => out.push(current.take().unwrap()),
            Some((_, body)) => {
                body.push_str(line);
                body.push('\n');
            }
            None => {}
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
    let mut n = 0;
    for doc in documents() {
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

//! The bodies of reefknot's fuzzing targets, one function per target.
//!
//! Each takes arbitrary bytes, runs them through one of reefknot's front doors — the
//! merge language, the recipe, a safetensors file, a shard index — and renders any
//! error the way the command line does. A panic, a hang or a blow-up in memory is a
//! finding; an error is the expected answer to nonsense.
//!
//! `cargo fuzz run TARGET` (nightly) drives them with libFuzzer; the main workspace's
//! `cargo test` replays every seed and every kept regression through the same
//! functions on stable (`tests/fuzz.rs` includes this file), so a crash once found
//! stays fixed. See `docs/fuzzing.md`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use miette::Diagnostic;

/// Renders `d` as the command line does (cut long lines, then miette's graphical
/// handler), so that the renderer is fuzzed too.
fn render(d: &dyn Diagnostic) -> String {
    let mut out = String::new();
    let clipped = reefknot_lang::Clipped::new(d);
    miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
        .with_width(100)
        .render_report(&mut out, &clipped)
        .expect("rendering into a String cannot fail");
    out
}

fn registry() -> &'static reefknot_ops::Registry {
    static REGISTRY: OnceLock<reefknot_ops::Registry> = OnceLock::new();
    REGISTRY.get_or_init(reefknot_ops::Registry::builtin)
}

/// The merge language: parse and check an expression against the built-in operators,
/// for one to three models; errors are rendered alone and relocated into a YAML line.
pub fn lang(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match reefknot_lang::compile(text, registry()) {
        Ok(pipeline) => {
            for models in 1..=3 {
                if let Err(e) = reefknot_lang::check_models(text, &pipeline, models) {
                    render(&e);
                }
            }
            if let Err(e) = reefknot_lang::check_weights(text, &pipeline, "weight") {
                render(&e);
            }
        }
        Err(e) => {
            render(&e);
            let prefix = "base: b\nmodels: [m]\nmerge: ";
            let file = format!("{prefix}{text}\n");
            render(&e.offset(prefix.len(), file, "fuzz.yaml"));
        }
    }
}

/// The recipe: YAML parsed and validated, every expression compiled with its errors
/// pointed into the file.
pub fn recipe(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match reefknot_recipe::Recipe::parse(text, Path::new(""), "fuzz.yaml") {
        Ok(recipe) => {
            let exprs = std::iter::once(&recipe.merge)
                .chain(recipe.overrides.iter().filter_map(|o| o.merge.as_ref()));
            for expr in exprs {
                if let Err(e) = reefknot_engine::compile_expr(&recipe, expr, registry()) {
                    render(&e);
                }
            }
        }
        Err(e) => {
            render(&e);
        }
    }
}

/// A safetensors file's bytes: the header validated as a checkpoint's files are.
pub fn header(data: &[u8]) {
    if let Err(e) = reefknot_io::check_header(Path::new("fuzz.safetensors"), data) {
        let _ = e.to_string();
    }
}

/// A shard index (`model.safetensors.index.json`) over two small valid shards: the
/// folder opened as a sharded checkpoint.
pub fn index(data: &[u8]) {
    let dir = index_folder();
    let index = dir.join(reefknot_io::INDEX_NAME);
    std::fs::write(&index, data).expect("the fuzzing folder is writable");
    if let Err(e) = reefknot_io::Checkpoint::open(dir) {
        let _ = e.to_string();
    }
}

/// A folder with two shards, `a.safetensors` (tensor `a`) and `b.safetensors`
/// (tensor `b`), made once per process; a process-wide temporary folder, removed
/// when the process ends normally.
fn index_folder() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, path) = DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary folder");
        for name in ["a", "b"] {
            std::fs::write(dir.path().join(format!("{name}.safetensors")), shard(name))
                .expect("the fuzzing folder is writable");
        }
        let path = dir.path().to_path_buf();
        (dir, path)
    });
    path
}

/// A safetensors file holding one F32 tensor `name` of two elements.
pub fn shard(name: &str) -> Vec<u8> {
    let header =
        format!(r#"{{"{name}":{{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}}}"#).into_bytes();
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&header);
    bytes.extend_from_slice(&[0; 8]);
    bytes
}

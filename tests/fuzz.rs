//! Replays the fuzzing seeds and every kept regression input (`fuzz/seeds/TARGET/`,
//! `fuzz/regressions/TARGET/`) through the fuzzing targets' bodies, on stable, so that
//! a crash the fuzzer once found stays fixed. See docs/fuzzing.md.

#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code, missing_docs)]
mod targets;

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut count = 0;
    for kind in ["seeds", "regressions"] {
        let dir = root.join(kind).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            {
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            eprintln!("{target}: {}", path.display());
            run(&bytes);
            count += 1;
        }
    }
    assert!(count > 0, "no seed for the fuzzing target {target}");
}

#[test]
fn lang_inputs_replay() {
    replay("lang", targets::lang);
}

#[test]
fn recipe_inputs_replay() {
    replay("recipe", targets::recipe);
}

#[test]
fn header_inputs_replay() {
    replay("header", targets::header);
}

#[test]
fn index_inputs_replay() {
    replay("index", targets::index);
}

/// The index target opens its folder: the seed of two shards must open, or the target
/// would fuzz nothing but the first error.
#[test]
fn the_index_target_reaches_a_valid_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["a", "b"] {
        std::fs::write(
            dir.path().join(format!("{name}.safetensors")),
            targets::shard(name),
        )
        .unwrap();
    }
    let seed = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/index/two-shards.json");
    std::fs::copy(seed, dir.path().join(reefknot_io::INDEX_NAME)).unwrap();
    let checkpoint = reefknot_io::Checkpoint::open(dir.path()).unwrap();
    assert_eq!(checkpoint.tensors().len(), 2);
}

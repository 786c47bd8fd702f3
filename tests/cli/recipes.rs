//! Every recipe in `recipes/` (and every mergekit configuration, `.yml`) is checked
//! and run on a synthetic family.

use std::fs;
use std::path::Path;

use reefknot_io::{Checkpoint, Dtype};

use crate::util::*;

#[test]
fn every_example_recipe_checks_and_merges() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes");
    let mut seen = 0;
    let ws = Workspace::new(Dtype::BF16, Some(100_000));
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml" && e != "yml") {
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        fs::copy(&path, ws.path().join(&name)).unwrap();
        // Every part of an example counts: --strict finds nothing without effect.
        ok(&run_in(ws.path(), &["check", &name, "--strict"]));
        let out = format!("out-{name}");
        ok(&run_in(ws.path(), &["merge", &name, "-o", &out, "--quiet"]));
        let base = Checkpoint::open(&ws.model("base")).unwrap();
        let merged = Checkpoint::open(&ws.path().join(&out)).unwrap();
        assert_eq!(base.tensors().len(), merged.tensors().len(), "{name}");
        for t in base.tensors() {
            let m = merged
                .get(&t.name)
                .unwrap_or_else(|| panic!("{name}: {}", t.name));
            assert_eq!(m.shape, t.shape, "{name}: {}", t.name);
        }
        seen += 1;
    }
    assert!(seen >= 5, "found {seen} recipes");
}

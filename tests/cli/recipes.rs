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
        // A layer stack has its own layer count (in its config.json); every tensor is
        // shaped as the base's of the same module.
        let layers = |dir: &Path| {
            let config = fs::read_to_string(dir.join("config.json")).unwrap();
            let config: serde_json::Value = serde_json::from_str(&config).unwrap();
            config["num_hidden_layers"].as_u64().unwrap() as usize
        };
        let (l_in, l_out) = (layers(&ws.model("base")), layers(&ws.path().join(&out)));
        let per_layer = base
            .tensors()
            .iter()
            .filter(|t| reefknot_recipe::layer_index(&t.name).is_some())
            .count()
            / l_in;
        assert_eq!(
            merged.tensors().len(),
            base.tensors().len() + (l_out - l_in) * per_layer,
            "{name}"
        );
        for m in merged.tensors() {
            let like = reefknot_recipe::with_layer(&m.name, 0).unwrap_or(m.name.clone());
            let t = base
                .get(&like)
                .unwrap_or_else(|| panic!("{name}: {}", m.name));
            assert_eq!(m.shape, t.shape, "{name}: {}", m.name);
        }
        seen += 1;
    }
    assert!(seen >= 5, "found {seen} recipes");
}

//! What a merged model says about the plugins that made it: the model card and the
//! safetensors metadata name each plugin with its version and the SHA-256 of its
//! library, `check` names each plugin operator's provider, and a saved plan runs only
//! with the build it was made with.

use std::io::Write as _;
use std::path::Path;

use reefknot_io::{Checkpoint, Dtype};
use sha2::Digest as _;

use crate::build;
use crate::util::*;

fn sha256(path: &Path) -> String {
    sha2::Sha256::digest(std::fs::read(path).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn the_card_the_metadata_and_the_plan_name_each_plugin_build() {
    let ws = Workspace::new(Dtype::F32, None);
    let lib = ws.path().join(build::lib_name("robust"));
    std::fs::copy(build::robust(), &lib).unwrap();
    let hash = sha256(&lib);
    ws.recipe(
        "r.yaml",
        &recipe_with("robust::clip(max_abs=0.5) |> robust::median"),
    );
    let plugin = ["--plugin", lib.to_str().unwrap()];

    let plan = ok(&run_in(
        ws.path(),
        &[&["check", "r.yaml"][..], &plugin].concat(),
    ));
    let line = plan
        .lines()
        .find(|l| l.starts_with("plugin   robust"))
        .unwrap_or_else(|| panic!("no plugin line:\n{plan}"));
    assert!(
        line.contains(&format!("(sha256 {hash}): robust::clip, robust::median")),
        "{line}"
    );

    ok(&run_in(
        ws.path(),
        &[&["merge", "r.yaml", "-o", "out", "--quiet"][..], &plugin].concat(),
    ));
    let card = std::fs::read_to_string(ws.path().join("out/README.md")).unwrap();
    assert!(
        card.contains(&format!(
            "- `robust` 0.1.0 (`{}`, sha256 `{hash}`): `robust::clip`, `robust::median`",
            build::lib_name("robust")
        )),
        "{card}"
    );
    let merged = Checkpoint::open(&ws.path().join("out")).unwrap();
    let listed: serde_json::Value =
        serde_json::from_str(&merged.metadata()["reefknot_plugins"]).unwrap();
    assert_eq!(
        listed,
        serde_json::json!([{"name": "robust", "version": "0.1.0", "sha256": hash}])
    );

    // A saved plan runs with the same build only.
    let json = ok(&run_in(
        ws.path(),
        &[&["check", "r.yaml", "--json"][..], &plugin].concat(),
    ));
    std::fs::write(ws.path().join("plan.json"), json).unwrap();
    let from_plan = |out: &str| {
        run_in(
            ws.path(),
            &[
                &["merge", "--plan", "plan.json", "-o", out, "--quiet"][..],
                &plugin,
            ]
            .concat(),
        )
    };
    ok(&from_plan("again"));
    // Trailing bytes change the hash, not the library.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&lib)
        .unwrap()
        .write_all(b"rebuilt")
        .unwrap();
    let stderr = fails(&from_plan("changed"), 2);
    assert!(
        stderr.contains("the plugin `robust` is not the build the plan was made with")
            && stderr.contains(&hash)
            && stderr.contains(&sha256(&lib)),
        "{stderr}"
    );
    assert!(!ws.path().join("changed").exists());
}

//! Models named by Hugging Face repo id, found in the local cache (offline), as
//! `huggingface-cli download` lays it out.

use std::fs;
use std::path::Path;

use reefknot_io::Dtype;

use crate::util::*;

/// Moves `models/NAME` into `hub` as repo `org/NAME` at `commit`, with `refs/REF`.
fn into_cache(ws: &Workspace, hub: &Path, name: &str, reference: &str, commit: &str) {
    let repo = hub.join(format!("models--org--{name}"));
    fs::create_dir_all(repo.join("refs")).unwrap();
    fs::create_dir_all(repo.join("snapshots")).unwrap();
    fs::write(repo.join("refs").join(reference), format!("{commit}\n")).unwrap();
    fs::rename(ws.model(name), repo.join("snapshots").join(commit)).unwrap();
}

#[test]
fn repo_ids_resolve_in_the_local_cache() {
    let ws = Workspace::new(Dtype::BF16, None);
    let hub = ws.path().join("hub");
    into_cache(&ws, &hub, "base", "main", "c0ffee");
    into_cache(&ws, &hub, "code", "v1", "beef01");
    ws.recipe(
        "r.yaml",
        "base: org/base\nmodels:\n  - path: \"org/code@v1\"\n  - path: models/math\n\
         merge: ties(trim(0.2), elect, disjoint)\n",
    );
    let run = |args: &[&str]| {
        reefknot()
            .args(args)
            .current_dir(ws.path())
            .env("HF_HUB_CACHE", &hub)
            .output()
            .unwrap()
    };
    let plan = ok(&run(&["check", "r.yaml"]));
    assert!(
        plan.contains("models--org--base/snapshots/c0ffee"),
        "{plan}"
    );
    assert!(
        plan.contains("models--org--code/snapshots/beef01"),
        "{plan}"
    );
    ok(&run(&["merge", "r.yaml", "-o", "out", "--quiet"]));
    assert!(ws.path().join("out/model.safetensors").is_file());
    // The model card names the repos, as the Hub's `base_model` expects.
    let card = fs::read_to_string(ws.path().join("out/README.md")).unwrap();
    assert!(
        card.contains("base_model:\n- org/base\n- org/code\n- math\n"),
        "{card}"
    );

    // A revision the cache does not hold: where it looked, how to get it, a caret.
    ws.recipe(
        "missing.yaml",
        "base: org/base\nmodels:\n  - path: org/code@v2\nmerge: sum\n",
    );
    let stderr = fails(&run(&["check", "missing.yaml"]), 1);
    assert!(
        stderr.contains("`org/code` is not a folder here")
            && stderr.contains("revision `v2` is not in the Hugging Face cache")
            && stderr.contains("models--org--code")
            && stderr.contains("huggingface-cli download org/code")
            && stderr.contains("missing.yaml:3:11"),
        "{stderr}"
    );

    // A repo the cache never held is a local path that does not exist.
    ws.recipe(
        "absent.yaml",
        "base: org/base\nmodels:\n  - path: org/nope\nmerge: sum\n",
    );
    let stderr = fails(&run(&["check", "absent.yaml"]), 1);
    assert!(
        stderr.contains("org/nope: no such file or folder"),
        "{stderr}"
    );
}

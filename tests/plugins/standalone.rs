//! The SDK crate builds on its own: a plugin author copies or vendors
//! `crates/plugin-api` and builds against it without reefknot's workspace.

use crate::build;

/// Copies the files of `from` (recursively) into `to`.
fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn the_plugin_api_crate_builds_outside_the_workspace() {
    // Outside the repository, so that cargo finds no workspace above the copy.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("reefknot-plugin-api");
    copy_tree(&build::root().join("crates/plugin-api"), &copy);
    build::run(
        build::cargo()
            .current_dir(&copy)
            .args(["build", "--quiet", "--offline"])
            .env("CARGO_TARGET_DIR", dir.path().join("target")),
    );
    let manifest = std::fs::read_to_string(copy.join("Cargo.toml")).unwrap();
    assert!(
        manifest.contains(&format!("\nversion = \"{}\"\n", env!("CARGO_PKG_VERSION"))),
        "the SDK's version is the workspace's"
    );
}

//! Plugins that misbehave: each is refused or fails the merge with a message naming
//! what went wrong, the right exit code (2: the plugin could not be loaded; 1: an
//! operator failed during the merge), and nothing written.

use std::path::Path;

use reefknot_io::Dtype;
use reefknot_plugin_api::{REEFKNOT_ABI_MAJOR, REEFKNOT_ABI_MINOR};

use crate::build;
use crate::util::*;

/// Merges the workspace's family with `merge`, loading `plugin`; expects exit `code`
/// and no output, and returns stderr.
fn merge_fails(merge: &str, plugin: &Path, code: i32) -> String {
    merge_fails_with(merge, plugin, code, &[])
}

/// As [`merge_fails`], with more arguments to `merge`.
fn merge_fails_with(merge: &str, plugin: &Path, code: i32, extra: &[&str]) -> String {
    let ws = Workspace::new(Dtype::F32, None);
    ws.recipe("r.yaml", &recipe_with(merge));
    let args = [
        &[
            "merge",
            "r.yaml",
            "-o",
            "out",
            "--plugin",
            plugin.to_str().unwrap(),
        ][..],
        extra,
    ]
    .concat();
    let out = run_in(ws.path(), &args);
    let stderr = fails(&out, code);
    assert_eq!(
        ws.entries(),
        ["family", "fisher", "models", "r.yaml"],
        "something was left behind:\n{stderr}"
    );
    // Nothing panicked on the host side (a plugin's own panic hook may print).
    assert!(!stderr.contains("panicked at crates/"), "{stderr}");
    assert!(
        stderr.contains("Error: ") || stderr.contains("×"),
        "not rendered as an error:\n{stderr}"
    );
    stderr
}

/// Loading `plugin` for a `trim` merge is refused with exit code 2.
fn refused(plugin: &Path) -> String {
    merge_fails("trim(0.5) |> sum", plugin, 2)
}

#[test]
fn another_major_abi_version_is_refused_naming_both() {
    let stderr = refused(&build::misbehaving("ABI_MAJOR", &[]));
    let plugin = format!("ABI {}.0", REEFKNOT_ABI_MAJOR + 1);
    let host = format!("ABI {REEFKNOT_ABI_MAJOR}.{REEFKNOT_ABI_MINOR}");
    assert!(
        stderr.contains(&plugin) && stderr.contains(&host),
        "{stderr}"
    );
    assert!(stderr.contains("rebuild the plugin"), "{stderr}");
}

#[test]
fn a_newer_minor_abi_version_is_refused_naming_both() {
    let stderr = refused(&build::misbehaving("ABI_MINOR", &[]));
    let plugin = format!("ABI {REEFKNOT_ABI_MAJOR}.{}", REEFKNOT_ABI_MINOR + 1);
    let host = format!("ABI {REEFKNOT_ABI_MAJOR}.{REEFKNOT_ABI_MINOR}");
    assert!(
        stderr.contains(&plugin) && stderr.contains(&host),
        "{stderr}"
    );
    assert!(stderr.contains("needs a newer reefknot"), "{stderr}");
}

#[test]
fn a_missing_symbol_is_refused() {
    let stderr = refused(&build::misbehaving("NO_DESCRIPTOR", &[]));
    assert!(
        stderr.contains("is not a reefknot plugin")
            && stderr.contains("does not export `reefknot_plugin_descriptor`"),
        "{stderr}"
    );
}

#[test]
fn a_name_that_is_not_utf8_is_refused() {
    let stderr = refused(&build::misbehaving("BAD_UTF8", &[]));
    assert!(
        stderr.contains("the name of operator 1 is not valid UTF-8"),
        "{stderr}"
    );
}

#[test]
fn duplicate_operator_names_are_refused() {
    let stderr = refused(&build::misbehaving("DUPLICATE", &[]));
    assert!(
        stderr.contains("two operators are named `twice`"),
        "{stderr}"
    );
}

#[test]
fn a_clash_with_a_built_in_is_refused() {
    let stderr = refused(&build::misbehaving("CLASH", &[]));
    assert!(
        stderr
            .contains("operator `trim` of plugin `misbehaving` clashes with the built-in operator"),
        "{stderr}"
    );
}

#[test]
fn a_default_outside_its_range_is_refused() {
    let stderr = refused(&build::misbehaving("BAD_DEFAULT", &[]));
    assert!(
        stderr.contains("operator `twice`: parameter `k`: its default 2 is outside its range"),
        "{stderr}"
    );
}

#[test]
fn a_file_that_is_not_a_shared_library_is_refused() {
    let dir = build::scratch().join("not-a-library");
    std::fs::create_dir_all(&dir).unwrap();
    let fake = dir.join(build::lib_name("fake"));
    std::fs::write(&fake, "this is not a shared library\n").unwrap();
    let stderr = refused(&fake);
    assert!(
        stderr.contains("cannot open the plugin") && stderr.contains("as a shared library"),
        "{stderr}"
    );
    let stderr = refused(&dir.join("missing.so"));
    assert!(stderr.contains("no such file"), "{stderr}");
}

#[test]
fn an_operator_returning_an_error_fails_the_merge() {
    let plugin = build::misbehaving("FAILS", &[]);
    let stderr = merge_fails("misbehaving::twice |> sum", &plugin, 1);
    assert!(
        stderr.contains("operator `misbehaving::twice` of plugin `misbehaving` failed")
            && stderr.contains("this operator always fails")
            && stderr.contains("(tensor `"),
        "{stderr}"
    );
}

#[test]
fn a_rust_operator_returning_an_error_fails_the_merge() {
    let stderr = merge_fails("fixture::refuse", build::fixture(), 1);
    assert!(
        stderr.contains("operator `fixture::refuse` of plugin `fixture` failed")
            && stderr.contains("refusing ")
            && stderr.contains("(tensor `"),
        "{stderr}"
    );
}

#[test]
fn an_operator_that_panics_fails_the_merge_without_aborting() {
    let stderr = merge_fails("fixture::boom |> sum", build::fixture(), 1);
    assert!(
        stderr.contains("operator `fixture::boom` of plugin `fixture` failed")
            && stderr.contains("panicked: boom at element 0 of")
            && stderr.contains("(tensor `"),
        "{stderr}"
    );
}

#[test]
fn load_problems_stop_check_and_ops_too() {
    let ws = Workspace::new(Dtype::F32, None);
    ws.recipe("r.yaml", &recipe_with("sum"));
    let bad = build::misbehaving("ABI_MAJOR", &[]);
    let stderr = fails(
        &run_in(
            ws.path(),
            &["check", "r.yaml", "--plugin", bad.to_str().unwrap()],
        ),
        2,
    );
    assert!(stderr.contains("was built for plugin ABI"), "{stderr}");
    let stderr = fails(
        &run_in(ws.path(), &["ops", "--plugin", bad.to_str().unwrap()]),
        2,
    );
    assert!(stderr.contains("was built for plugin ABI"), "{stderr}");
}

#[test]
fn the_sdk_refuses_to_build_a_plugin_with_panic_abort() {
    let out = build::cargo()
        .current_dir(build::root())
        .args([
            "rustc",
            "--quiet",
            "-p",
            "reefknot-test-plugin",
            "--target-dir",
        ])
        .arg(build::scratch().join("cargo-abort"))
        .args(["--", "-C", "panic=abort"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a panic = \"abort\" plugin was built"
    );
    assert!(
        stderr.contains("reefknot plugins must be built with panic = \"unwind\""),
        "{stderr}"
    );
}

/// A plugin that faults inside a call: the message names the plugin, the operator, the
/// tensor and the signal; exit code 1; the partial output is gone.
fn crashes(variant: &str, signal: &str) {
    let plugin = build::misbehaving(variant, &[]);
    let stderr = merge_fails("misbehaving::twice |> sum", &plugin, 1);
    assert!(
        stderr.contains("Error: the operator `misbehaving::twice` of plugin `misbehaving` (")
            && stderr.contains(") crashed on tensor `")
            && stderr.contains(signal)
            && stderr.contains("The merge was stopped and its partial output removed."),
        "{stderr}"
    );
}

#[test]
fn a_segfault_in_a_plugin_is_reported_and_leaves_nothing() {
    crashes("SEGFAULT", "SIGSEGV, an invalid memory access");
}

#[test]
fn an_abort_in_a_plugin_is_reported_and_leaves_nothing() {
    crashes("ABORT", "SIGABRT: it called abort()");
}

#[test]
fn nan_written_by_a_plugin_fails_the_merge_naming_the_stage() {
    let plugin = build::misbehaving("WRITES_NAN", &[]);
    let stderr = merge_fails("misbehaving::twice |> sum", &plugin, 1);
    assert!(
        stderr.contains("NaN") && stderr.contains("misbehaving::twice"),
        "{stderr}"
    );
}

#[test]
fn signs_other_than_plus_or_minus_one_fail_the_merge() {
    let plugin = build::misbehaving("BAD_SIGNS", &[]);
    let stderr = merge_fails("misbehaving::twice |> disjoint", &plugin, 1);
    assert!(
        stderr.contains("operator `misbehaving::twice` of plugin `misbehaving` failed")
            && stderr.contains("it elected the sign ")
            && stderr.contains("a Voted output's signs must be +1 or -1"),
        "{stderr}"
    );
}

#[cfg(unix)]
#[test]
fn isolated_crashes_fail_the_merge_with_an_error() {
    for (variant, signal) in [("SEGFAULT", "SIGSEGV"), ("ABORT", "SIGABRT")] {
        let plugin = build::misbehaving(variant, &[]);
        let stderr = merge_fails_with(
            "misbehaving::twice |> sum",
            &plugin,
            1,
            &["--isolate-plugins"],
        );
        assert!(
            stderr.contains("operator `misbehaving::twice` of plugin `misbehaving` failed")
                && stderr.contains(&format!("it crashed its helper process ({signal}"))
                && stderr.contains("(tensor `"),
            "{stderr}"
        );
    }
}

#[cfg(unix)]
#[test]
fn an_isolated_call_that_hangs_is_stopped_at_the_timeout() {
    let plugin = build::misbehaving("HANG", &[]);
    let start = std::time::Instant::now();
    let stderr = merge_fails_with(
        "misbehaving::twice |> sum",
        &plugin,
        1,
        &[
            "--isolate-plugins",
            "--plugin-timeout",
            "0.5",
            "--threads",
            "2",
        ],
    );
    assert!(
        stderr.contains(
            "it did not return within 0.5 s (--plugin-timeout), so its helper process was stopped"
        ),
        "{stderr}"
    );
    assert!(start.elapsed() < std::time::Duration::from_secs(30));
}

#[cfg(unix)]
#[test]
fn isolated_errors_and_panics_are_reported_as_in_process() {
    let stderr = merge_fails_with(
        "misbehaving::twice |> sum",
        &build::misbehaving("FAILS", &[]),
        1,
        &["--isolate-plugins"],
    );
    assert!(stderr.contains("this operator always fails"), "{stderr}");
    let stderr = merge_fails_with(
        "fixture::boom |> sum",
        build::fixture(),
        1,
        &["--isolate-plugins"],
    );
    assert!(
        stderr.contains("panicked: boom at element 0 of"),
        "{stderr}"
    );
    let stderr = merge_fails_with(
        "misbehaving::twice |> disjoint",
        &build::misbehaving("BAD_SIGNS", &[]),
        1,
        &["--isolate-plugins"],
    );
    assert!(
        stderr.contains("a Voted output's signs must be +1 or -1"),
        "{stderr}"
    );
}

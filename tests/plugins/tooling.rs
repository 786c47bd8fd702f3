//! `reefknot plugin test` (every operator of a library on synthetic tensors, through
//! the SDK's test kit) and `reefknot plugin new` (a project that builds and passes it).

use std::path::Path;

use crate::build;
use crate::util::*;

/// `reefknot plugin test LIB` in `dir`.
fn plugin_test(lib: &Path) -> std::process::Output {
    reefknot()
        .args(["plugin", "test"])
        .arg(lib)
        .output()
        .unwrap()
}

#[test]
fn the_example_plugins_pass_plugin_test() {
    for (lib, checks) in [(build::robust(), 9), (build::rows(), 6), (build::tall(), 3)] {
        let out = ok(&plugin_test(lib));
        assert!(
            out.contains(&format!("{checks} passed, 0 failed")) && !out.contains("FAIL"),
            "{out}"
        );
        assert!(out.contains("ABI 1.1, sha256 "), "{out}");
    }
}

#[test]
fn plugin_test_names_what_a_plugin_gets_wrong() {
    let out = plugin_test(&build::misbehaving("BAD_SIGNS", &[]));
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains("FAIL  misbehaving::twice Stack→Voted on ")
            && stdout.contains("the sign of element 0 is 0: elected signs are +1 or -1")
            && stderr.contains("3 checks of the plugin `misbehaving` failed"),
        "{stdout}{stderr}"
    );
    let out = plugin_test(&build::misbehaving("WRITES_NAN", &[]));
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).0.contains("is not finite"), "{:?}", text(&out));
    // A panic is a failed check, not a crash.
    let out = plugin_test(build::fixture());
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("FAIL  fixture::boom") && stdout.contains("the operator panicked: boom"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ok    fixture::echo Delta→Delta"),
        "{stdout}"
    );
}

#[test]
fn plugin_test_reports_a_crash_with_the_operator_and_the_check() {
    for (variant, signal) in [("SEGFAULT", "SIGSEGV"), ("ABORT", "SIGABRT")] {
        let out = plugin_test(&build::misbehaving(variant, &[]));
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("Error: the operator `misbehaving::twice` of plugin `misbehaving`")
                && stderr.contains("(a synthetic Stack→Stack test)")
                && stderr.contains(signal)
                && stderr.contains("The run was stopped."),
            "{stderr}"
        );
    }
}

#[test]
fn plugin_test_fails_a_plugin_that_hangs() {
    let out = reefknot()
        .args(["plugin", "test", "--timeout", "0.5"])
        .arg(build::misbehaving("HANG", &[]))
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains("did not return within 0.5 s (--timeout)")
            && stderr.contains("hung in a check"),
        "{stdout}{stderr}"
    );
}

#[test]
fn plugin_new_writes_a_rust_project_that_passes_plugin_test() {
    // Outside the repository: the project is a workspace of its own.
    let dir = tempfile::tempdir().unwrap();
    let made = ok(&run_in(dir.path(), &["plugin", "new", "mine"]));
    assert!(
        made.contains("wrote the plugin `mine` (Rust) into mine"),
        "{made}"
    );
    let project = dir.path().join("mine");
    let target = dir.path().join("target");
    for args in [
        &["test", "--quiet", "--offline"][..],
        &["build", "--quiet", "--offline"],
    ] {
        build::run(
            build::cargo()
                .current_dir(&project)
                .args(args)
                .env("CARGO_TARGET_DIR", &target),
        );
    }
    let lib = target.join("debug").join(build::lib_name("mine"));
    let out = ok(&plugin_test(&lib));
    assert!(out.contains("3 passed, 0 failed (1 operator)"), "{out}");
    // Its operator merges.
    let ws = Workspace::new(reefknot_io::Dtype::F32, None);
    ws.recipe("r.yaml", &recipe_with("mine::shrink(tau=0.001) |> sum"));
    ok(&run_in(
        ws.path(),
        &[
            "merge",
            "r.yaml",
            "-o",
            "out",
            "--quiet",
            "--plugin",
            lib.to_str().unwrap(),
        ],
    ));
}

#[test]
fn plugin_new_writes_a_c_project_that_passes_plugin_test() {
    let dir = tempfile::tempdir().unwrap();
    ok(&run_in(
        dir.path(),
        &["plugin", "new", "cmine", "--lang", "c"],
    ));
    let project = dir.path().join("cmine");
    let lib = project.join(build::lib_name("cmine"));
    build::cc(&project.join("cmine.c"), &lib, &[]);
    let out = ok(&plugin_test(&lib));
    assert!(out.contains("3 passed, 0 failed (1 operator)"), "{out}");
    assert!(std::fs::read_to_string(project.join("Makefile"))
        .unwrap()
        .contains("plugin test"));
}

#[test]
fn plugin_new_refuses_a_bad_name_or_an_existing_folder() {
    let dir = tempfile::tempdir().unwrap();
    let stderr = fails(&run_in(dir.path(), &["plugin", "new", "my-plugin"]), 2);
    assert!(
        stderr.contains("`my-plugin` cannot name a plugin"),
        "{stderr}"
    );
    std::fs::create_dir(dir.path().join("taken")).unwrap();
    let stderr = fails(&run_in(dir.path(), &["plugin", "new", "taken"]), 2);
    assert!(stderr.contains("taken exists already"), "{stderr}");
}

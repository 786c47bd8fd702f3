//! Where plugins come from (`--plugin`, the recipe's `plugins:`, `REEFKNOT_PLUGIN_PATH`),
//! how their operators are named, listed and checked.

use std::path::{Path, PathBuf};

use reefknot_io::Dtype;

use crate::build;
use crate::util::*;

/// Copies `lib` into `dir` (created) and returns the copy.
fn copy_into(lib: &Path, dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let to = dir.join(lib.file_name().unwrap());
    std::fs::copy(lib, &to).unwrap();
    to
}

#[test]
fn plugins_come_from_the_search_path_flags_and_the_recipe() {
    let ws = Workspace::new(Dtype::F32, None);
    // REEFKNOT_PLUGIN_PATH: two folders (and an empty entry and a missing folder,
    // which are skipped); only shared libraries are loaded.
    let a = ws.path().join("plugin-path-a");
    let b = ws.path().join("plugin-path-b");
    copy_into(build::tall(), &a);
    copy_into(build::robust(), &b);
    std::fs::write(a.join("README.txt"), "not a library").unwrap();
    let search =
        std::env::join_paths([a.clone(), PathBuf::new(), ws.path().join("nowhere"), b]).unwrap();
    let ops = reefknot()
        .arg("ops")
        .env("REEFKNOT_PLUGIN_PATH", &search)
        .output()
        .unwrap();
    let listing = ok(&ops);
    assert!(
        listing.contains("tall::consensus(k=2, lambda=0.6)")
            && listing.contains("[plugin tall]")
            && listing.contains("robust::median")
            && listing.contains("robust::clip(max_abs)")
            && listing.contains("[plugin robust]"),
        "{listing}"
    );
    // Unqualified names resolve when unambiguous.
    ws.recipe("r.yaml", &recipe_with("consensus(k=2) |> median"));
    let merged = reefknot()
        .args(["merge", "r.yaml", "-o", "from-env", "--quiet"])
        .current_dir(ws.path())
        .env("REEFKNOT_PLUGIN_PATH", &search)
        .output()
        .unwrap();
    ok(&merged);

    // --plugin, repeated.
    let out = run_in(
        ws.path(),
        &[
            "merge",
            "r.yaml",
            "-o",
            "from-flags",
            "--quiet",
            "--plugin",
            build::tall().to_str().unwrap(),
            "--plugin",
            build::robust().to_str().unwrap(),
        ],
    );
    ok(&out);
    assert_eq!(
        tensors(&ws.path().join("from-env")),
        tensors(&ws.path().join("from-flags"))
    );

    // The recipe's `plugins:`, relative to the recipe's folder; a library also given
    // with --plugin is loaded once.
    copy_into(build::tall(), &ws.path().join("libs"));
    copy_into(build::robust(), &ws.path().join("libs"));
    let tall_name = build::lib_name("tall");
    let robust_name = build::lib_name("robust");
    ws.recipe(
        "r2.yaml",
        &format!(
            "{}plugins: [libs/{tall_name}, libs/{robust_name}]\n",
            recipe_with("consensus(k=2) |> median")
        ),
    );
    let libs_tall = ws.path().join("libs").join(&tall_name);
    ok(&run_in(
        ws.path(),
        &[
            "merge",
            "r2.yaml",
            "-o",
            "from-recipe",
            "--quiet",
            "--plugin",
            libs_tall.to_str().unwrap(),
        ],
    ));
    assert_eq!(
        tensors(&ws.path().join("from-env")),
        tensors(&ws.path().join("from-recipe"))
    );
}

#[test]
fn check_validates_plugin_arguments_like_built_ins() {
    let ws = Workspace::new(Dtype::F32, None);
    let tall = build::tall().to_str().unwrap().to_string();
    let check = |merge: &str| {
        ws.recipe("r.yaml", &recipe_with(merge));
        run_in(ws.path(), &["check", "r.yaml", "--plugin", &tall])
    };
    let plan = ok(&check("tall::consensus(k=3, lambda=0.5) |> sum"));
    assert!(
        plan.contains("tall::consensus(k=3, lambda=0.5) |> sum"),
        "{plan}"
    );
    let stderr = fails(&check("tall::consensus(k=-1) |> sum"), 2);
    assert!(
        stderr.contains("k") && stderr.contains("[0, ∞)"),
        "{stderr}"
    );
    let stderr = fails(&check("tall::consensus(mode=1) |> sum"), 2);
    assert!(stderr.contains("mode"), "{stderr}");
    // The flow is type-checked: consensus returns a Stack, not a Delta.
    let stderr = fails(&check("tall::consensus"), 2);
    assert!(stderr.contains("Stack"), "{stderr}");
    // An unknown operator of a plugin suggests the close names.
    let stderr = fails(&check("tall::consensu |> sum"), 2);
    assert!(stderr.contains("tall::consensus"), "{stderr}");
}

#[test]
fn plugin_names_are_namespaced_and_ambiguity_is_reported() {
    let ws = Workspace::new(Dtype::F32, None);
    let one = build::misbehaving("VALID", &[]);
    let two = build::misbehaving("VALID", &["PLUGIN_NAME=\"other\""]);
    ws.recipe("r.yaml", &recipe_with("twice |> sum"));
    let both = [
        "--plugin",
        one.to_str().unwrap(),
        "--plugin",
        two.to_str().unwrap(),
    ];
    let stderr = fails(
        &run_in(ws.path(), &[&["check", "r.yaml"][..], &both].concat()),
        2,
    );
    assert!(
        stderr.contains("misbehaving::twice") && stderr.contains("other::twice"),
        "{stderr}"
    );
    ws.recipe(
        "r.yaml",
        &recipe_with("other::twice |> misbehaving::twice |> sum"),
    );
    ok(&run_in(
        ws.path(),
        &[&["merge", "r.yaml", "-o", "out", "--quiet"][..], &both].concat(),
    ));

    // Two libraries declaring the same plugin name are refused.
    let copy = copy_into(&one, &ws.path().join("copy"));
    let stderr = fails(
        &run_in(
            ws.path(),
            &[
                "ops",
                "--plugin",
                one.to_str().unwrap(),
                "--plugin",
                copy.to_str().unwrap(),
            ],
        ),
        2,
    );
    assert!(
        stderr.contains("two plugins are named `misbehaving`"),
        "{stderr}"
    );
}

#[test]
fn ops_shows_a_plugin_operators_documentation_and_origin() {
    let robust = build::robust().to_str().unwrap().to_string();
    let doc = ok(&reefknot()
        .args(["ops", "robust::clip", "--plugin", &robust])
        .output()
        .unwrap());
    assert!(
        doc.contains("robust::clip(max_abs)")
            && doc.contains("plugin `robust`")
            && doc.contains("Stack→Stack, Delta→Delta")
            && doc.contains("a number in (0, ∞); required")
            && doc.contains("Magnitude clipping"),
        "{doc}"
    );
    // Unqualified, as in expressions.
    let doc2 = ok(&reefknot()
        .args(["ops", "clip", "--plugin", &robust])
        .output()
        .unwrap());
    assert_eq!(doc, doc2);
}

#[test]
fn loads_are_traced_with_reefknot_log_debug() {
    let out = reefknot()
        .args(["ops", "--plugin", build::tall().to_str().unwrap()])
        .env("REEFKNOT_LOG", "debug")
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    let abi = format!(
        "plugin ABI {}.{}",
        reefknot_plugin_api::REEFKNOT_ABI_MAJOR,
        reefknot_plugin_api::REEFKNOT_ABI_MINOR
    );
    assert!(
        stderr.contains(&abi) && stderr.contains("loaded plugin `tall`"),
        "{stderr}"
    );
}

#[test]
fn a_broken_library_on_the_search_path_is_skipped_unless_its_namespace_is_used() {
    let ws = Workspace::new(Dtype::F32, None);
    let dir = ws.path().join("plugin-path");
    copy_into(build::robust(), &dir);
    // Versioned names count as libraries; this one is not a library at all.
    std::fs::write(
        dir.join(format!("{}.1", build::lib_name("mycorp"))),
        "not a shared library",
    )
    .unwrap();
    let run = |expr: &str| {
        ws.recipe("r.yaml", &recipe_with(expr));
        reefknot()
            .args(["check", "r.yaml"])
            .current_dir(ws.path())
            .env("REEFKNOT_PLUGIN_PATH", &dir)
            .output()
            .unwrap()
    };
    // Built-ins and the working plugin run; the broken library is a warning.
    let out = run("robust::clip(1.0) |> sum");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("skipped the plugin")
            && stderr.contains(&format!("{}.1", build::lib_name("mycorp")))
            && stderr.contains("cannot open the plugin"),
        "{stderr}"
    );
    // A recipe that uses its namespace gets the load error.
    let stderr = fails(&run("mycorp::magic |> sum"), 2);
    assert!(
        stderr.contains("for the operators `mycorp::` names")
            && stderr.contains("cannot open the plugin"),
        "{stderr}"
    );
}

#[test]
fn an_operator_of_a_plugin_that_is_not_loaded_says_so() {
    let ws = Workspace::new(Dtype::F32, None);
    ws.recipe("r.yaml", &recipe_with("acme::merge |> sum"));
    let stderr = fails(&run_in(ws.path(), &["check", "r.yaml"]), 2);
    assert!(
        stderr.contains("unknown operator `acme::merge`: no plugin `acme` is loaded")
            && stderr.contains("load the plugin `acme` with --plugin PATH"),
        "{stderr}"
    );
}

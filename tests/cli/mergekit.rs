//! mergekit configurations through the binary: `merge`, `check` and `convert`, the
//! warnings about what mergekit ignores, and `--strict`.

use reefknot_io::Dtype;

use crate::util::*;

const CONFIG: &str = "merge_method: ties
base_model: models/base
models:
  - model: models/code
    parameters: { weight: 1.0, densty: 0.3 }
  - model: models/math
    parameters: { weight: 0.5 }
parameters:
  density: 0.4
dtype: float32
";

#[test]
fn a_config_merges_as_the_recipe_convert_prints() {
    let ws = Workspace::new(Dtype::BF16, None);
    ws.recipe("config.yml", CONFIG);
    let out = run_in(ws.path(), &["convert", "config.yml"]);
    let recipe = ok(&out);
    let (_, stderr) = text(&out);
    assert!(
        recipe.contains("merge: trim(0.4) |> elect |> disjoint\n"),
        "{recipe}"
    );
    assert!(
        stderr.contains("reefknot::mergekit::ignored")
            && stderr.contains("did you mean `density`?"),
        "{stderr}"
    );
    ws.recipe("converted.yaml", &recipe);
    ok(&run_in(
        ws.path(),
        &["merge", "config.yml", "-o", "direct", "--quiet"],
    ));
    ok(&run_in(
        ws.path(),
        &[
            "merge",
            "converted.yaml",
            "-o",
            "converted",
            "--quiet",
            "--strict",
        ],
    ));
    assert_eq!(
        tensors(&ws.path().join("direct")),
        tensors(&ws.path().join("converted"))
    );
    // `check` shows the plan and the same warning.
    let out = run_in(ws.path(), &["check", "config.yml"]);
    let plan = ok(&out);
    assert!(plan.contains("trim(k=0.4"), "{plan}");
    assert!(text(&out).1.contains("`densty`"));
}

#[test]
fn strict_refuses_what_mergekit_would_ignore_and_writes_nothing() {
    let ws = Workspace::new(Dtype::BF16, None);
    ws.recipe("config.yml", CONFIG);
    let before = ws.entries();
    let err = fails(
        &run_in(
            ws.path(),
            &["merge", "config.yml", "-o", "out", "--quiet", "--strict"],
        ),
        2,
    );
    assert!(err.contains("--strict makes them errors"), "{err}");
    assert_eq!(ws.entries(), before, "nothing written");
    fails(
        &run_in(ws.path(), &["convert", "config.yml", "--strict"]),
        2,
    );
    fails(&run_in(ws.path(), &["check", "config.yml", "--strict"]), 2);
}

#[test]
fn convert_refuses_a_reefknot_recipe_and_names_what_is_not_supported() {
    let ws = Workspace::new(Dtype::BF16, None);
    ws.recipe("r.yaml", &recipe_with("sum"));
    let err = fails(&run_in(ws.path(), &["convert", "r.yaml"]), 2);
    assert!(err.contains("not a mergekit configuration"), "{err}");
    ws.recipe(
        "lora.yml",
        "merge_method: linear\nmodels:\n  - model: models/code+loras/code\n    parameters: { weight: 1.0 }\n",
    );
    let err = fails(
        &run_in(ws.path(), &["merge", "lora.yml", "-o", "out", "--quiet"]),
        2,
    );
    assert!(
        err.contains("reefknot::recipe::unsupported") && err.contains("lora.yml:3:12"),
        "{err}"
    );
}

#[test]
fn one_slice_over_every_layer_merges_and_part_of_the_layers_is_refused() {
    let ws = Workspace::new(Dtype::BF16, None);
    let sliced = |end: usize| {
        format!(
            "merge_method: ties\nbase_model: models/base\nparameters: {{ weight: 1.0, density: 0.4 }}\n\
             slices:\n  - sources:\n      - {{ model: models/code, layer_range: [0, {end}] }}\n      \
             - {{ model: models/math, layer_range: [0, {end}] }}\n"
        )
    };
    // The family has 2 layers (its config.json says so): [0, 2] is every layer, and
    // the local check leaves nothing to warn about.
    ws.recipe("whole.yml", &sliced(2));
    ok(&run_in(
        ws.path(),
        &["merge", "whole.yml", "-o", "sliced", "--quiet", "--strict"],
    ));
    ws.recipe("part.yml", &sliced(1));
    let err = fails(
        &run_in(ws.path(), &["merge", "part.yml", "-o", "part", "--quiet"]),
        2,
    );
    assert!(
        err.contains("reefknot::recipe::unsupported")
            && err.contains("`layer_range: [0, 1]` of models with 2 layers"),
        "{err}"
    );
    assert!(!ws.path().join("part").exists());
}

#[test]
fn relative_paths_resolve_against_the_current_directory_as_in_mergekit() {
    let ws = Workspace::new(Dtype::BF16, None);
    std::fs::create_dir(ws.path().join("configs")).unwrap();
    ws.recipe("configs/c.yml", &CONFIG.replace(", densty: 0.3", ""));
    // `mergekit-yaml configs/c.yml` reads `models/...` in the current directory.
    ok(&run_in(
        ws.path(),
        &["merge", "configs/c.yml", "-o", "out", "--quiet", "--strict"],
    ));
    let recipe = ok(&run_in(ws.path(), &["convert", "configs/c.yml"]));
    assert!(
        recipe.contains("base: \"../models/base\"") && recipe.contains("path: \"../models/code\""),
        "paths relative to the configuration's folder:\n{recipe}"
    );
    ws.recipe("configs/converted.yaml", &recipe);
    ok(&run_in(
        ws.path(),
        &["merge", "configs/converted.yaml", "-o", "again", "--quiet"],
    ));
    assert_eq!(
        tensors(&ws.path().join("out")),
        tensors(&ws.path().join("again"))
    );
}

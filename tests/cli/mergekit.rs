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

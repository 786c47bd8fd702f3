//! mergekit configurations through the binary: `merge`, `check` and `convert`, the
//! warnings about what mergekit ignores, and `--strict`.

use std::path::Path;

use reefknot_io::{Checkpoint, Dtype};

use crate::util::*;

/// Tensor `name` of the model folder `dir`, as float32.
fn at(dir: &Path, name: &str) -> Vec<f32> {
    values(&Checkpoint::open(dir).unwrap(), name)
}

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
        "steps.yml",
        "merge_method: linear\nmodels:\n  - model: models/code\n    parameters: { weight: [low, high] }\n",
    );
    let err = fails(
        &run_in(ws.path(), &["merge", "steps.yml", "-o", "out", "--quiet"]),
        2,
    );
    assert!(
        err.contains("reefknot::recipe::unsupported") && err.contains("steps.yml:4:27"),
        "{err}"
    );
}

#[test]
fn one_slice_over_every_layer_merges_and_part_of_the_layers_is_a_shorter_stack() {
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
    assert!(!ok(&run_in(ws.path(), &["convert", "whole.yml"])).contains("slices:"));
    // [0, 1]: the first layer alone, merged, with its embeddings and head.
    ws.recipe("part.yml", &sliced(1));
    ok(&run_in(
        ws.path(),
        &["merge", "part.yml", "-o", "part", "--quiet", "--strict"],
    ));
    let names: Vec<String> = tensors(&ws.path().join("part"))
        .into_iter()
        .map(|t| t.0)
        .collect();
    assert!(names.iter().any(|n| n.starts_with("model.layers.0.")));
    assert!(!names.iter().any(|n| n.starts_with("model.layers.1.")));
    assert!(names.contains(&"lm_head.weight".to_string()), "{names:?}");
    let config = std::fs::read_to_string(ws.path().join("part/config.json")).unwrap();
    assert!(config.contains("\"num_hidden_layers\": 1"), "{config}");
    // Layer 0 merged alone is layer 0 of the whole merge, to the bit.
    let (whole, part) = (
        at(
            &ws.path().join("sliced"),
            "model.layers.0.mlp.up_proj.weight",
        ),
        at(&ws.path().join("part"), "model.layers.0.mlp.up_proj.weight"),
    );
    assert_eq!(whole, part);
}

#[test]
fn a_frankenmerge_of_three_models_stacks_renumbers_and_scales() {
    let ws = Workspace::new(Dtype::BF16, None);
    ws.recipe(
        "stack.yml",
        "merge_method: passthrough\nslices:\n\
         \x20 - sources: [{ model: models/code, layer_range: [0, 2] }]\n\
         \x20 - sources: [{ model: models/math, layer_range: [1, 2] }]\n\
         \x20 - sources: [{ model: models/chat, layer_range: [0, 2], parameters: { scale: [{ filter: o_proj, value: 0.5 }, { value: 1 }] } }]\n",
    );
    ok(&run_in(
        ws.path(),
        &["merge", "stack.yml", "-o", "out", "--quiet", "--strict"],
    ));
    let out = ws.path().join("out");
    let config = std::fs::read_to_string(out.join("config.json")).unwrap();
    assert!(config.contains("\"num_hidden_layers\": 5"), "{config}");
    let model = |m: &str, name: &str| at(&ws.model(m), name);
    let at = |dir: &Path, name: &str| at(dir, name);
    let q = "self_attn.q_proj.weight";
    assert_eq!(
        at(&out, &format!("model.layers.1.{q}")),
        model("code", &format!("model.layers.1.{q}"))
    );
    assert_eq!(
        at(&out, &format!("model.layers.2.{q}")),
        model("math", &format!("model.layers.1.{q}"))
    );
    assert_eq!(
        at(&out, &format!("model.layers.4.{q}")),
        model("chat", &format!("model.layers.1.{q}"))
    );
    let o = "self_attn.o_proj.weight";
    let halved: Vec<f32> = model("chat", &format!("model.layers.0.{o}"))
        .iter()
        .map(|x| 0.5 * x)
        .collect();
    assert_eq!(at(&out, &format!("model.layers.3.{o}")), halved);
    // The embeddings from the first slice, the head from the last.
    assert_eq!(
        at(&out, "model.embed_tokens.weight"),
        model("code", "model.embed_tokens.weight")
    );
    assert_eq!(at(&out, "lm_head.weight"), model("chat", "lm_head.weight"));

    // A slice beyond its model's layers is refused before anything is written.
    ws.recipe(
        "beyond.yml",
        "merge_method: passthrough\nslices:\n\
         \x20 - sources: [{ model: models/code, layer_range: [0, 2] }]\n\
         \x20 - sources: [{ model: models/math, layer_range: [1, 3] }]\n",
    );
    let err = fails(
        &run_in(ws.path(), &["merge", "beyond.yml", "-o", "beyond"]),
        2,
    );
    assert!(
        err.contains("slice 2 takes layers 1..3, but the model 1 (")
            && err.contains("has 2 layers")
            && err.contains("beyond its 2 layers"),
        "{err}"
    );
    assert!(!ws.path().join("beyond").exists());
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

#[test]
fn a_slice_whose_sources_take_other_layers_merges_each_model_s_own() {
    let ws = Workspace::new(Dtype::F32, None);
    ws.recipe(
        "offset.yml",
        "merge_method: task_arithmetic\nbase_model: models/base\nslices:\n  - sources:\n      \
         - { model: models/base, layer_range: [0, 1] }\n      \
         - { model: models/code, layer_range: [0, 1], parameters: { weight: 0.5 } }\n      \
         - { model: models/math, layer_range: [1, 2], parameters: { weight: 0.5 } }\n\
         dtype: float32\n",
    );
    let recipe = ok(&run_in(ws.path(), &["convert", "offset.yml"]));
    assert!(
        recipe.contains("  - layers: 0..1\n    layers_of: { \"models/math\": 1..2 }\n"),
        "{recipe}"
    );
    ok(&run_in(
        ws.path(),
        &["merge", "offset.yml", "-o", "out", "--quiet"],
    ));
    let out = ws.path().join("out");
    let name = |l: usize| format!("model.layers.{l}.mlp.up_proj.weight");
    let (b, c, m) = (
        at(&ws.model("base"), &name(0)),
        at(&ws.model("code"), &name(0)),
        at(&ws.model("math"), &name(1)),
    );
    let got = at(&out, &name(0));
    for k in 0..got.len() {
        let want = b[k] + 0.5 * (c[k] - b[k]) + 0.5 * (m[k] - b[k]);
        assert!(
            (got[k] - want).abs() < 1e-6,
            "element {k}: {} vs {want}",
            got[k]
        );
    }
    assert!(
        Checkpoint::open(&out).unwrap().get(&name(1)).is_none(),
        "one layer"
    );
    // A model's layers beyond its depth are refused at the slice.
    ws.recipe(
        "beyond.yaml",
        "base: models/base\nmodels:\n  - path: models/code\nmerge: mean\nslices:\n  - layers: 0..2\n    \
         layers_of: { models/code: 1..3 }\n",
    );
    let err = fails(&run_in(ws.path(), &["check", "beyond.yaml"]), 2);
    assert!(err.contains("takes layers 1..3, but the model 1"), "{err}");
}

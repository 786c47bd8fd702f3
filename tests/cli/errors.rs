//! Bad input: each case gives a precise message and exit code, and leaves nothing
//! behind (no output folder, no partial folder, inputs untouched).

use std::fs;
use std::path::Path;

use reefknot_io::{Checkpoint, Dtype, ModelWriter, OutputTensor, WriterOptions};

use crate::util::*;

/// Runs `merge r.yaml -o out` and checks the failure: exit code, message fragments,
/// and that the workspace holds exactly what it held before.
#[track_caller]
fn merge_fails(ws: &Workspace, code: i32, expected: &[&str]) -> String {
    let before = ws.entries();
    let stderr = fails(&run_in(ws.path(), &["merge", "r.yaml", "-o", "out"]), code);
    for e in expected {
        assert!(stderr.contains(e), "expected {e:?} in:\n{stderr}");
    }
    assert_eq!(
        ws.entries(),
        before,
        "the failed merge left something behind"
    );
    stderr
}

/// Rewrites model `name` as a single f32 file through `edit` of its tensor list.
fn rewrite_model(ws: &Workspace, name: &str, edit: impl Fn(&mut Vec<OutputTensor>)) {
    let dir = ws.model(name);
    let src = Checkpoint::open(&dir).unwrap();
    let mut list: Vec<OutputTensor> = src
        .tensors()
        .iter()
        .map(|t| OutputTensor {
            name: t.name.clone(),
            dtype: Dtype::F32,
            shape: t.shape.clone(),
        })
        .collect();
    edit(&mut list);
    let tmp = ws.path().join("rewrite.tmp");
    fs::create_dir(&tmp).unwrap();
    let w = ModelWriter::create(&tmp, list, &WriterOptions::default()).unwrap();
    w.finish().unwrap();
    drop(src);
    for entry in fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        if p.extension()
            .is_some_and(|e| e == "safetensors" || e == "json")
            && !p.ends_with("config.json")
        {
            fs::remove_file(p).unwrap();
        }
    }
    fs::rename(tmp.join("model.safetensors"), dir.join("model.safetensors")).unwrap();
    fs::remove_dir_all(tmp).unwrap();
}

fn shard(dir: &Path) -> std::path::PathBuf {
    dir.join("model.safetensors")
}

#[test]
fn truncated_safetensors_file() {
    let ws = Workspace::new(Dtype::F32, None);
    ws.recipe("r.yaml", &recipe_with("ties"));
    let f = shard(&ws.model("math"));
    let len = fs::metadata(&f).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    merge_fails(&ws, 1, &["model 2", "models/math", "truncated"]);
}

#[test]
fn header_offsets_that_lie() {
    let ws = Workspace::new(Dtype::F32, None);
    ws.recipe("r.yaml", &recipe_with("ties"));
    let f = shard(&ws.model("code"));
    let mut bytes = fs::read(&f).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(bytes[8..8 + n].to_vec()).unwrap();
    // Move the last tensor's end far past the end of the file, keeping the length.
    let mut json: serde_json::Value = serde_json::from_str(header.trim_end()).unwrap();
    let (name, last_end) = json
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| (k.clone(), v["data_offsets"][1].as_u64().unwrap()))
        .max_by_key(|(_, e)| *e)
        .unwrap();
    json[&name]["data_offsets"][1] = (last_end + 4096).into();
    let mut new = serde_json::to_string(&json).unwrap();
    assert!(new.len() <= n, "the edited header fits");
    new.push_str(&" ".repeat(n - new.len()));
    bytes[8..8 + n].copy_from_slice(new.as_bytes());
    fs::write(&f, bytes).unwrap();
    merge_fails(&ws, 1, &["models/code", &name]);
}

#[test]
fn tensor_missing_from_one_model() {
    let ws = Workspace::new(Dtype::F32, None);
    ws.recipe("r.yaml", &recipe_with("ties"));
    rewrite_model(&ws, "chat", |l| {
        l.retain(|t| t.name != "model.layers.1.mlp.up_proj.weight")
    });
    merge_fails(
        &ws,
        1,
        &[
            "model.layers.1.mlp.up_proj.weight",
            "missing from model 3 (models/chat)",
        ],
    );
}

#[test]
fn mismatched_shapes() {
    let ws = Workspace::new(Dtype::F32, None);
    ws.recipe("r.yaml", &recipe_with("ties"));
    rewrite_model(&ws, "code", |l| {
        let t = l
            .iter_mut()
            .find(|t| t.name == "model.norm.weight")
            .unwrap();
        t.shape = vec![t.shape[0] + 1];
    });
    merge_fails(
        &ws,
        1,
        &[
            "model.norm.weight",
            "shape [65]",
            "[64] in the base",
            "model 1",
        ],
    );
}

#[test]
fn unsupported_dtype() {
    let ws = Workspace::new(Dtype::F32, None);
    ws.recipe("r.yaml", &recipe_with("ties"));
    let f = shard(&ws.model("math"));
    let bytes = fs::read(&f).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(bytes[8..8 + n].to_vec()).unwrap();
    let edited = header.replacen("\"F32\"", "\"Q4K\"", 1);
    let mut out = bytes.clone();
    out[8..8 + n].copy_from_slice(edited.as_bytes());
    fs::write(&f, out).unwrap();
    merge_fails(&ws, 1, &["models/math", "Q4K"]);

    // And an output dtype that cannot be written.
    let ws = Workspace::new(Dtype::F32, None);
    ws.recipe("r.yaml", &recipe_with("ties"));
    let before = ws.entries();
    let stderr = fails(
        &run_in(
            ws.path(),
            &["merge", "r.yaml", "-o", "out", "--dtype", "int8"],
        ),
        2,
    );
    assert!(
        stderr.contains("int8") && stderr.contains("bfloat16"),
        "{stderr}"
    );
    assert_eq!(ws.entries(), before);
}

#[test]
fn syntax_error_in_the_expression() {
    let ws = Workspace::new(Dtype::F32, None);
    ws.recipe("r.yaml", &recipe_with("trim(0.2) |> elect |>"));
    // The caret points into the recipe file: line 6, the column after the last `|>`.
    let stderr = merge_fails(&ws, 2, &["r.yaml:6:29", "expected an operator name"]);
    assert!(stderr.contains("merge: trim(0.2) |> elect |>"), "{stderr}");
}

#[test]
fn unknown_operator_suggests_the_closest() {
    let ws = Workspace::new(Dtype::F32, None);
    ws.recipe("r.yaml", &recipe_with("trim(0.2) |> elect |> disjiont"));
    merge_fails(&ws, 2, &["disjiont", "disjoint"]);
}

#[test]
fn type_error_in_the_pipeline() {
    let ws = Workspace::new(Dtype::F32, None);
    ws.recipe("r.yaml", &recipe_with("trim(0.2) |> disjoint"));
    merge_fails(&ws, 2, &["disjoint", "elect"]);
}

#[test]
fn a_method_given_the_wrong_number_of_models() {
    let ws = Workspace::new(Dtype::F32, None);
    // slerp and nearswap take one fine-tune; the recipe has three.
    ws.recipe("r.yaml", &recipe_with("trim(0.5) |> slerp(0.3)"));
    let stderr = merge_fails(
        &ws,
        2,
        &[
            "reefknot::model_count",
            "r.yaml:6:21",
            "`slerp` takes exactly 1 fine-tuned model, but the recipe merges 3",
            "list one model under `models:`",
        ],
    );
    assert!(
        stderr.contains("merge: trim(0.5) |> slerp(0.3)"),
        "{stderr}"
    );
    ws.recipe("r.yaml", &recipe_with("nearswap(0.01)"));
    merge_fails(&ws, 2, &["`nearswap` takes exactly 1 fine-tuned model"]);
    // model_stock needs two at least.
    let one = "base: models/base\nmodels:\n  - path: models/code\nmerge: model_stock\n";
    ws.recipe("r.yaml", one);
    merge_fails(
        &ws,
        2,
        &["`model_stock` takes at least 2 fine-tuned models, but the recipe merges 1 fine-tuned model"],
    );
}

#[test]
fn weights_no_stage_reads_are_refused() {
    let ws = Workspace::new(Dtype::F32, None);
    let weighted = recipe_with("karcher").replace(
        "  - path: models/math\n",
        "  - path: models/math\n    weight: 0.5\n",
    );
    ws.recipe("r.yaml", &weighted);
    let stderr = merge_fails(
        &ws,
        2,
        &[
            "reefknot::ignored_weights",
            "`karcher` ignores the models' weights, but model 2",
            "has `weight: 0.5`",
            "r.yaml:7:8",
        ],
    );
    assert!(stderr.contains("merge: karcher"), "{stderr}");
    // With a sparsifier first, the caret is on the stage that combines the models.
    ws.recipe(
        "r.yaml",
        &weighted.replace("merge: karcher", "merge: trim(0.5) |> sce"),
    );
    merge_fails(
        &ws,
        2,
        &["`sce` ignores the models' weights", "r.yaml:7:21"],
    );
    // An override that reads them makes them count.
    let with_override = format!("{weighted}overrides:\n  - group: mlp\n    merge: ties(0.3)\n");
    ws.recipe("r.yaml", &with_override);
    ok(&run_in(ws.path(), &["check", "r.yaml"]));
}

#[test]
fn unknown_recipe_key() {
    let ws = Workspace::new(Dtype::F32, None);
    ws.recipe("r.yaml", &recipe_with("ties").replace("models:", "modles:"));
    merge_fails(&ws, 2, &["modles", "models"]);
}

#[test]
fn undefined_variable_and_out_of_range_values() {
    let ws = Workspace::new(Dtype::F32, None);
    ws.recipe(
        "r.yaml",
        &recipe_with("ties(trim($density), elect, disjoint)"),
    );
    merge_fails(&ws, 2, &["$density", "not defined"]);
    ws.recipe(
        "r.yaml",
        &format!(
            "{}params: {{ p: 1.5 }}\n",
            recipe_with("dare($p) |> elect |> disjoint")
        ),
    );
    merge_fails(&ws, 2, &["1.5", "[0, 1)"]);
}

#[test]
fn fisher_operators_need_fisher_files() {
    let ws = Workspace::new(Dtype::F32, None);
    ws.recipe(
        "r.yaml",
        &recipe_with("trim(0.2) |> elect(fisher) |> disjoint"),
    );
    merge_fails(&ws, 2, &["elect", "Fisher", "model 1"]);
}

#[test]
fn output_folder_that_exists() {
    let ws = Workspace::new(Dtype::F32, None);
    ws.recipe("r.yaml", &recipe_with("ties"));
    fs::create_dir(ws.path().join("out")).unwrap();
    fs::write(ws.path().join("out/keep.txt"), "mine").unwrap();
    merge_fails(&ws, 2, &["out", "already exists", "--force"]);
    assert_eq!(
        fs::read_to_string(ws.path().join("out/keep.txt")).unwrap(),
        "mine"
    );
}

#[test]
fn output_folder_that_is_an_input() {
    let ws = Workspace::new(Dtype::F32, None);
    ws.recipe("r.yaml", &recipe_with("ties"));
    let before = tensors(&ws.model("math"));
    for target in ["models/math", "models", "./models/../models/math"] {
        let stderr = fails(
            &run_in(ws.path(), &["merge", "r.yaml", "-o", target, "--force"]),
            2,
        );
        assert!(stderr.contains("would overwrite the input"), "{stderr}");
    }
    assert_eq!(tensors(&ws.model("math")), before);
}

/// An error about an input points at the recipe line that names it: a path that does
/// not exist, a fine-tune that lacks a tensor of the base.
#[test]
fn errors_about_models_point_into_the_recipe() {
    let ws = Workspace::new(Dtype::BF16, None);
    ws.recipe(
        "r.yaml",
        "base: models/base\nmodels:\n  - path: models/code\n  - path: models/maths\nmerge: sum\n",
    );
    let stderr = fails(&run_in(ws.path(), &["check", "r.yaml"]), 1);
    insta::assert_snapshot!("model_path_in_recipe", stderr);

    // A fine-tune without one of the base's tensors.
    let base = Checkpoint::open(&ws.model("base")).unwrap();
    let code = Checkpoint::open(&ws.model("code")).unwrap();
    let kept: Vec<OutputTensor> = code
        .tensors()
        .iter()
        .filter(|t| !t.name.contains("layers.1.mlp.up_proj"))
        .map(|t| OutputTensor {
            name: t.name.clone(),
            dtype: t.dtype,
            shape: t.shape.clone(),
        })
        .collect();
    let dir = ws.path().join("models/partial");
    fs::create_dir(&dir).unwrap();
    let mut w = ModelWriter::create(&dir, kept.clone(), &WriterOptions::default()).unwrap();
    for (i, t) in kept.iter().enumerate() {
        w.data_mut(i)
            .copy_from_slice(code.data(code.get(&t.name).unwrap()));
    }
    w.finish().unwrap();
    drop(base);
    ws.recipe(
        "p.yaml",
        "base: models/base\nmodels:\n  - path: models/code\n  - path: models/partial\nmerge: sum\n",
    );
    let stderr = fails(&run_in(ws.path(), &["check", "p.yaml"]), 1);
    assert!(
        stderr.contains("is missing from model 2")
            && stderr.contains("p.yaml:4:11")
            && stderr.contains("╰── model 2"),
        "{stderr}"
    );
}

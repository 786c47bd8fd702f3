//! Merges that succeed: the output folder, its files and its numbers.

use std::fs;
use std::path::Path;

use reefknot_io::{Checkpoint, Dtype};

use crate::util::*;

#[test]
fn merges_a_sharded_bf16_family_into_a_sharded_hf_folder() {
    let ws = Workspace::new(Dtype::BF16, Some(60_000));
    assert!(ws
        .model("base")
        .join("model.safetensors.index.json")
        .exists());
    ws.recipe("r.yaml", &recipe_with("ties(trim(0.2), elect, disjoint)"));
    let stdout = ok(&run_in(
        ws.path(),
        &["merge", "r.yaml", "-o", "out", "--shard-size", "100KB"],
    ));
    assert!(stdout.contains("merged"), "{stdout}");

    let out = ws.path().join("out");
    let index: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(out.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let shards: std::collections::BTreeSet<&str> = index["weight_map"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(shards.len() > 1, "{shards:?}");
    for s in &shards {
        assert!(s.starts_with("model-0000") && s.contains("-of-0000"), "{s}");
        assert!(out.join(s).exists());
    }

    // The set of tensors, names, shapes equals the base's; dtypes are bf16.
    let base = tensors(&ws.model("base"));
    let merged = tensors(&out);
    assert_eq!(base.len(), merged.len());
    let mut changed = 0;
    for (b, m) in base.iter().zip(&merged) {
        assert_eq!((&b.0, &b.2), (&m.0, &m.2));
        assert_eq!(m.1, Dtype::BF16);
        changed += usize::from(b.3 != m.3);
    }
    assert_eq!(changed, base.len(), "every tensor moved away from the base");

    // Non-weight files, the config's dtype, the model card, the metadata.
    assert_eq!(
        fs::read_to_string(out.join("tokenizer.json")).unwrap(),
        "{\"version\": \"1.0\"}\n"
    );
    let config: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "LlamaForCausalLM");
    let card = fs::read_to_string(out.join("README.md")).unwrap();
    assert!(
        card.contains("reefknot") && card.contains("ties(trim(0.2), elect, disjoint)"),
        "{card}"
    );
    let ckpt = Checkpoint::open(&out).unwrap();
    assert_eq!(
        ckpt.metadata().get("format").map(String::as_str),
        Some("pt")
    );
    assert!(ckpt.metadata()["reefknot_recipe"].contains("merge: ties"));

    // Nothing else was left beside the output.
    assert_eq!(
        ws.entries(),
        ["family", "fisher", "models", "out", "r.yaml"]
    );
}

#[test]
fn task_arithmetic_through_the_binary_is_exact() {
    let ws = Workspace::new(Dtype::BF16, None);
    ws.recipe("r.yaml", &format!("{}dtype: float32\n", recipe_with("sum")));
    ok(&run_in(
        ws.path(),
        &["merge", "r.yaml", "-o", "out", "--quiet"],
    ));
    let out = Checkpoint::open(&ws.path().join("out")).unwrap();
    let (base, models) = ws.family();
    let config: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(ws.path().join("out/config.json")).unwrap())
            .unwrap();
    assert_eq!(config["torch_dtype"], "float32");
    for t in base.tensors() {
        let b = values(&base, &t.name);
        let ms: Vec<Vec<f32>> = models.iter().map(|m| values(m, &t.name)).collect();
        let got = values(&out, &t.name);
        assert_eq!(out.get(&t.name).unwrap().dtype, Dtype::F32);
        for j in 0..b.len() {
            let delta = ms.iter().fold(0f32, |acc, m| acc + (m[j] - b[j]));
            assert_eq!(
                got[j].to_bits(),
                (b[j] + delta).to_bits(),
                "{} [{j}]",
                t.name
            );
        }
    }
}

#[test]
fn threads_chunks_and_sync_leave_the_bytes_unchanged() {
    let ws = Workspace::new(Dtype::BF16, Some(60_000));
    ws.recipe(
        "r.yaml",
        &recipe_with("dare(p=0.7, rescale=l1) |> trim(0.5) |> elect(count) |> disjoint"),
    );
    ok(&run_in(
        ws.path(),
        &["merge", "r.yaml", "-o", "one", "--threads", "1", "--quiet"],
    ));
    ok(&run_in(
        ws.path(),
        &[
            "merge",
            "r.yaml",
            "-o",
            "two",
            "--threads",
            "2",
            "--quiet",
            "--chunk",
            "8192",
            // Durable writing (background and final syncs) changes no byte.
            "--sync",
        ],
    ));
    assert_eq!(
        tensors(&ws.path().join("one")),
        tensors(&ws.path().join("two"))
    );
    // Another seed gives other drops.
    ok(&run_in(
        ws.path(),
        &["merge", "r.yaml", "-o", "seeded", "--seed", "7", "--quiet"],
    ));
    assert_ne!(
        tensors(&ws.path().join("one")),
        tensors(&ws.path().join("seeded"))
    );
}

#[test]
fn force_replaces_an_existing_output() {
    let ws = Workspace::new(Dtype::F32, None);
    ws.recipe("r.yaml", &recipe_with("mean"));
    fs::create_dir(ws.path().join("out")).unwrap();
    fs::write(ws.path().join("out/stale.txt"), "old").unwrap();
    ok(&run_in(
        ws.path(),
        &[
            "merge", "r.yaml", "-o", "out", "--force", "--quiet", "--dtype", "bf16",
        ],
    ));
    assert!(!ws.path().join("out/stale.txt").exists());
    let out = Checkpoint::open(&ws.path().join("out")).unwrap();
    assert!(out.tensors().iter().all(|t| t.dtype == Dtype::BF16));
}

#[test]
fn check_prints_the_plan_without_writing() {
    let ws = Workspace::new(Dtype::BF16, None);
    ws.recipe(
        "r.yaml",
        &format!(
            "{}params: {{ density: 0.2 }}\noverrides:\n  - group: mlp\n    params: {{ density: [0.1, 0.5] }}\n  - group: embed\n    merge: mean\n",
            recipe_with("ties(trim($density), elect, disjoint)")
        ),
    );
    let stdout = ok(&run_in(ws.path(), &["check", "r.yaml"]));
    assert!(
        stdout.contains("trim(k=0.2, rescale=none) |> elect(by=mass) |> disjoint(by=mean)"),
        "{stdout}"
    );
    // The MLP density follows the gradient over the two layers: 0.1, then 0.5.
    assert!(
        stdout.contains("trim(k=0.1,") && stdout.contains("trim(k=0.5,"),
        "{stdout}"
    );
    assert!(
        stdout.contains("overrides[1] (group: embed): mean"),
        "{stdout}"
    );
    assert!(stdout.contains("model.embed_tokens.weight"), "{stdout}");
    assert!(stdout.contains("ok"), "{stdout}");
    assert_eq!(ws.entries(), ["family", "fisher", "models", "r.yaml"]);
}

#[test]
fn ops_lists_every_operator_and_documents_each() {
    let stdout = ok(&reefknot().arg("ops").output().unwrap());
    for op in BUILTIN_OPERATORS {
        assert!(
            stdout.lines().any(|l| l.starts_with(op)),
            "{op} missing:\n{stdout}"
        );
    }
    let stdout = ok(&reefknot().args(["ops", "topk"]).output().unwrap());
    assert!(
        stdout.starts_with("trim(k=0.2, rescale=none)") && stdout.contains("radix"),
        "{stdout}"
    );
    let stderr = fails(&reefknot().args(["ops", "dsjoint"]).output().unwrap(), 2);
    assert!(stderr.contains("did you mean `disjoint`"), "{stderr}");
}

#[test]
fn the_demo_measures_each_tasks_loss_and_keeps_the_family_the_recipes_expect() {
    let dir = tempfile::tempdir().unwrap();
    let stdout = ok(&reefknot()
        .args(["demo", "--keep"])
        .arg(dir.path())
        .output()
        .unwrap());
    // The table: each row's relative loss on code, math, chat, and their mean.
    let row = |name: &str| -> Vec<f64> {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("{name}  ")))
            .unwrap_or_else(|| panic!("no row {name}:\n{stdout}"));
        let numbers: Vec<f64> = line[name.len()..]
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        numbers[..4].to_vec()
    };
    let all = |name: &str| row(name)[3];
    assert_eq!(row("the base"), [1.0; 4]);
    assert_eq!(row("the code model")[0], 0.0);
    // What the demo argues, on its own numbers: TIES beats averaging and task
    // arithmetic on every task; DARE at the same density loses to TIES; Fisher merging,
    // the exact optimum of these losses, beats everything.
    for other in ["averaging", "task arithmetic"] {
        for t in 0..3 {
            assert!(row("TIES")[t] < row(other)[t], "TIES vs {other}:\n{stdout}");
        }
    }
    assert!(all("DARE-TIES") > all("TIES"), "{stdout}");
    for other in [
        "averaging",
        "task arithmetic",
        "TIES",
        "DARE-TIES",
        "Fisher-TIES",
    ] {
        assert!(all("Fisher merging") < all(other), "{other}:\n{stdout}");
    }
    assert!(
        stdout.contains("Without data, TIES keeps the tasks best"),
        "{stdout}"
    );
    // The numbers are the same on any machine: everything but the timings is pinned.
    let pinned: String = stdout
        .lines()
        .map(|l| {
            let l = match l.find(" (made in ") {
                Some(i) => &l[..i],
                None => l,
            };
            l.strip_suffix(" ms")
                .and_then(|l| l.rsplit_once(' '))
                .map_or(l, |(rest, _)| rest.trim_end())
                .to_string()
        })
        .filter(|l| {
            !l.starts_with("The family is in") && !l.starts_with("Measure its task vectors")
        })
        .collect::<Vec<_>>()
        .join("\n");
    insta::assert_snapshot!("demo", pinned);
    // The analysis the demo suggests runs on what it kept.
    let suggested = stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix("Measure its task vectors before choosing a density: reefknot analyze ")
        })
        .and_then(|l| l.strip_suffix(" (docs/analyze.md)."))
        .unwrap_or_else(|| panic!("no analyze line:\n{stdout}"));
    let analysis = ok(&reefknot().args(["analyze", suggested]).output().unwrap());
    assert!(analysis.contains("Whole model: "), "{analysis}");
    // The README shows the same table.
    let readme =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let table: Vec<&str> = pinned
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("expression"))
        .take_while(|l| !l.is_empty())
        .collect();
    assert_eq!(table.len(), 9, "{pinned}");
    for line in table {
        assert!(
            readme.contains(&format!("\n{line}\n")),
            "README.md lacks:\n{line}"
        );
    }

    // Kept as the example recipes expect it: every recipe of recipes/ checks against it
    // with nothing left without effect.
    for model in ["base", "code", "math", "chat"] {
        assert!(dir
            .path()
            .join("models")
            .join(model)
            .join("config.json")
            .exists());
    }
    for task in TASKS {
        assert!(dir
            .path()
            .join(format!("fisher/{task}.safetensors"))
            .exists());
    }
    assert!(dir
        .path()
        .join("demo/merged/ties/model.safetensors")
        .exists());
    assert!(dir.path().join("demo/fisher-merging.yaml").exists());
    let recipes = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes");
    for entry in fs::read_dir(&recipes).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let copy = dir.path().join(path.file_name().unwrap());
            fs::copy(&path, &copy).unwrap();
            ok(&reefknot()
                .arg("check")
                .arg(&copy)
                .arg("--strict")
                .output()
                .unwrap());
        }
    }
    // A second demo into the same folder replaces nothing.
    let again = reefknot()
        .args(["demo", "--keep"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = fails(&again, 1);
    assert!(stderr.contains("already exists"), "{stderr}");
}

/// `scaled/model.safetensors`: the code model's Fisher file times 1000.
fn scaled_code_fisher(ws: &Workspace) {
    let code = Checkpoint::open(&ws.path().join("fisher/code.safetensors")).unwrap();
    let tensors: Vec<reefknot_io::OutputTensor> = code
        .tensors()
        .iter()
        .map(|t| reefknot_io::OutputTensor {
            name: t.name.clone(),
            dtype: Dtype::F32,
            shape: t.shape.clone(),
        })
        .collect();
    let dir = ws.path().join("scaled");
    fs::create_dir(&dir).unwrap();
    let w = reefknot_io::ModelWriter::create(&dir, tensors, &reefknot_io::WriterOptions::default())
        .unwrap();
    for (i, t) in code.tensors().iter().enumerate() {
        let scaled: Vec<f32> = values(&code, &t.name).iter().map(|x| x * 1000.0).collect();
        let mut bytes = vec![0u8; scaled.len() * 4];
        reefknot_io::from_f32(Dtype::F32, &scaled, &mut bytes);
        w.write_at(i, 0, &bytes).unwrap();
    }
    w.finish().unwrap();
}

#[test]
fn fisher_normalize_makes_each_models_fisher_scale_free() {
    // `fisher(normalize=true)` divides each model's Fisher by its mean over the whole
    // model: scaling one model's Fisher file by 1000 must not change the merge, while
    // plain Fisher merging follows the scale.
    let ws = Workspace::new(Dtype::F32, None);
    scaled_code_fisher(&ws);
    let recipe = |fisher_code: &str, merge: &str| {
        format!(
            "base: models/base\nmodels:\n  - path: models/code\n    fisher: {fisher_code}\n  - path: models/math\n    fisher: fisher/math.safetensors\n  - path: models/chat\n    fisher: fisher/chat.safetensors\nmerge: {merge}\ndtype: float32\n"
        )
    };
    let merged = |name: &str, text: String| {
        ws.recipe(&format!("{name}.yaml"), &text);
        ok(&run_in(
            ws.path(),
            &["merge", &format!("{name}.yaml"), "-o", name, "--quiet"],
        ));
        Checkpoint::open(&ws.path().join(name)).unwrap()
    };
    let plain = "fisher(normalize=true)";
    let a = merged("a", recipe("fisher/code.safetensors", plain));
    let b = merged("b", recipe("scaled/model.safetensors", plain));
    let c = merged("c", recipe("fisher/code.safetensors", "fisher"));
    let d = merged("d", recipe("scaled/model.safetensors", "fisher"));
    let name = "model.layers.0.mlp.up_proj.weight";
    let (va, vb, vc, vd) = (
        values(&a, name),
        values(&b, name),
        values(&c, name),
        values(&d, name),
    );
    let close = |x: &[f32], y: &[f32]| {
        x.iter()
            .zip(y)
            .all(|(p, q)| (p - q).abs() <= 1e-6 * (1.0 + p.abs().max(q.abs())))
    };
    assert!(
        close(&va, &vb),
        "normalized Fisher merging depends on a Fisher's scale"
    );
    assert!(
        !close(&vc, &vd),
        "plain Fisher merging ignored a Fisher's scale"
    );
}

#[test]
fn a_slice_merges_its_own_models_with_their_own_fisher_files() {
    // A slice that lists some of the recipe's models, in another order, merges exactly
    // those: with `fisher(normalize=true)` each model's Fisher mean must follow it (code's
    // Fisher is scaled by 1000 to tell the means apart), so the output equals the merge of
    // a recipe of those models alone, bit for bit.
    let ws = Workspace::new(Dtype::F32, None);
    scaled_code_fisher(&ws);
    let layers = reefknot_synth::FamilySpec::tiny().layers;
    let sliced = format!(
        "base: models/base\nmodels:\n  - path: models/code\n    fisher: scaled/model.safetensors\n  - path: models/math\n    fisher: fisher/math.safetensors\n  - path: models/chat\n    fisher: fisher/chat.safetensors\nmerge: fisher(normalize=true)\nslices:\n  - layers: 0..{layers}\n    models: [models/chat, models/code]\ndtype: float32\n"
    );
    let alone = "base: models/base\nmodels:\n  - path: models/chat\n    fisher: fisher/chat.safetensors\n  - path: models/code\n    fisher: scaled/model.safetensors\nmerge: fisher(normalize=true)\ndtype: float32\n";
    ws.recipe("sliced.yaml", &sliced);
    ws.recipe("alone.yaml", alone);
    for name in ["sliced", "alone"] {
        ok(&run_in(
            ws.path(),
            &["merge", &format!("{name}.yaml"), "-o", name, "--quiet"],
        ));
    }
    let (a, b) = (
        tensors(&ws.path().join("sliced")),
        tensors(&ws.path().join("alone")),
    );
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert!(x == y, "{} differs from the merge of its models alone", x.0);
    }

    // The expression must take each slice's models; analyze's figures are per model of
    // `models:`, so it refuses a slice over other models.
    let slerp = sliced.replace("fisher(normalize=true)", "slerp(0.5)");
    ws.recipe("slerp.yaml", &slerp);
    let stderr = fails(&run_in(ws.path(), &["check", "slerp.yaml"]), 2);
    assert!(
        stderr.contains("takes exactly 1 fine-tuned model") && stderr.contains("merges 2"),
        "{stderr}"
    );
    let stderr = fails(&run_in(ws.path(), &["analyze", "sliced.yaml"]), 2);
    assert!(stderr.contains("slice 1 merges other inputs"), "{stderr}");
}

#[test]
fn passthrough_copies_the_fine_tune_bit_for_bit() {
    let ws = Workspace::new(Dtype::F32, None);
    ws.recipe(
        "r.yaml",
        "base: models/base\nmodels:\n  - path: models/code\nmerge: passthrough\n",
    );
    ok(&run_in(
        ws.path(),
        &["merge", "r.yaml", "-o", "out", "--quiet"],
    ));
    assert_eq!(tensors(&ws.path().join("out")), tensors(&ws.model("code")));
    // The plan says so: every tensor is copied from the model.
    let json = ok(&run_in(ws.path(), &["check", "r.yaml", "--json"]));
    assert!(json.contains("\"kind\": \"copy\"") && !json.contains("\"kind\": \"pipeline\""));
}

#[test]
fn conditions_give_each_tensor_its_own_weight_and_value() {
    let ws = Workspace::new(Dtype::F32, None);
    ws.recipe(
        "r.yaml",
        r#"base: models/base
models:
  - path: models/code
    weight:
      - { match: "*.mlp.*", value: 0.5 }
  - path: models/math
    weight: [{ match: "*.self_attn.*", value: 0.0 }, { value: 2.0 }]
  - path: models/chat
params:
  s: [{ match: "lm_head.*", value: 0.0 }, { value: 1.0 }]
merge: sum |> scale($s)
"#,
    );
    ok(&run_in(
        ws.path(),
        &["merge", "r.yaml", "-o", "out", "--quiet", "--strict"],
    ));
    let out = Checkpoint::open(&ws.path().join("out")).unwrap();
    let (base, models) = ws.family();
    let mut seen = [false; 3];
    for t in base.tensors() {
        let name = &t.name;
        let w = [
            if name.contains(".mlp.") { 0.5 } else { 1.0 },
            if name.contains(".self_attn.") {
                0.0
            } else {
                2.0
            },
            1.0,
        ];
        let s = if name.starts_with("lm_head.") {
            0.0
        } else {
            1.0
        };
        seen[0] |= name.contains(".mlp.");
        seen[1] |= name.contains(".self_attn.");
        seen[2] |= name.starts_with("lm_head.");
        let b = values(&base, name);
        let ms: Vec<Vec<f32>> = models.iter().map(|m| values(m, name)).collect();
        let got = values(&out, name);
        for j in 0..b.len() {
            let delta: f64 = (0..3).map(|i| w[i] * f64::from(ms[i][j] - b[j])).sum();
            let want = f64::from(b[j]) + s * delta;
            assert!(
                (f64::from(got[j]) - want).abs() <= 1e-6 * want.abs().max(1e-3),
                "{name} [{j}]: {} vs {want}",
                got[j]
            );
        }
    }
    assert_eq!(
        seen, [true; 3],
        "the family has every part the test selects"
    );
}

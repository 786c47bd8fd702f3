//! Plans as data: `reefknot check --json` prints the plan, `reefknot merge --plan` runs
//! it to the same bytes as the recipe, and refuses inputs that changed.

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use reefknot_io::Dtype;

use crate::util::*;

/// The plan JSON with the machine's paths and the files' modification times replaced,
/// so that a snapshot holds on any checkout.
fn portable(json: &str, roots: &[(&Path, &str)]) -> String {
    let mut s = json.to_string();
    for (root, name) in roots {
        for form in [root.to_path_buf(), root.canonicalize().unwrap()] {
            s = s.replace(&form.display().to_string(), name);
        }
    }
    s.lines()
        .map(|l| match l.find("\"modified_ns\": ") {
            Some(i) if !l.ends_with("null,") => format!("{}\"modified_ns\": \"[mtime]\",", &l[..i]),
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A plan in a few lines: its inputs, expressions and layout, then one line per output
/// tensor with what produces it (every resolved argument and weight). The golden cases'
/// plans are snapshotted in this form; the example recipes' in full.
fn digest(json: &str) -> String {
    use serde_json::Value;
    let plan: Value = serde_json::from_str(json).expect("the plan is JSON");
    let compact = |v: &Value| serde_json::to_string(v).unwrap();
    let mut out = format!("format {} seed {}\n", plan["format"], plan["seed"]);
    for (i, input) in plan["inputs"].as_array().unwrap().iter().enumerate() {
        let files = input["files"].as_array().unwrap();
        let hashes: Vec<&str> = files
            .iter()
            .map(|f| &f["header_sha256"].as_str().unwrap()[..12])
            .collect();
        out += &format!(
            "input {i}: {} {} ({} files, headers {})\n",
            compact(&input["role"]),
            input["path"].as_str().unwrap(),
            files.len(),
            hashes.join(" ")
        );
    }
    for e in plan["expressions"].as_array().unwrap() {
        out += &format!(
            "expression {}: {}\n",
            e["label"].as_str().unwrap(),
            e["text"].as_str().unwrap()
        );
    }
    let o = &plan["output"];
    out += &format!(
        "output: dtype {} shards {} files_from {}\n",
        o["dtype"], o["shards"], o["files_from"]
    );
    if let Some(config) = o.get("config") {
        out += &format!("output config: {config}\n");
    }
    if let Some(t) = o.get("tokenizer") {
        out += &format!("output tokenizer: {}\n", compact(t));
    }
    if let Some(t) = o.get("chat_template") {
        out += &format!("output chat template: {t}\n");
    }
    if let Some(v) = plan.get("vocabulary") {
        out += &format!(
            "vocabulary: {} rows, runs {}, fill {}\n",
            v["size"],
            compact(&v["rows"]),
            compact(&v["fill"])
        );
    }
    // What a tensor reference adds to the stored tensor: an adapter's update, a
    // permutation into the vocabulary.
    let extras = |r: &Value| -> String {
        let mut e = String::new();
        if let Some(l) = r.get("lora") {
            e += &format!(" +lora{}", compact(l));
        }
        if r.get("vocabulary").is_some() {
            e += " permuted";
        }
        e
    };
    for t in plan["tensors"].as_array().unwrap() {
        let p = &t["producer"];
        let what = match p["kind"].as_str().unwrap() {
            "pipeline" => {
                let stages: Vec<String> = p["stages"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| {
                        let args: Vec<String> = s["args"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|a| {
                                format!("{}={}", a["name"].as_str().unwrap(), compact(&a["value"]))
                            })
                            .collect();
                        format!("{}({})", s["op"].as_str().unwrap(), args.join(", "))
                    })
                    .collect();
                let reads: String = std::iter::once(&p["base"])
                    .chain(p["models"].as_array().unwrap())
                    .filter_map(|r| {
                        let mut e = extras(r);
                        if r["tensor"] != t["name"] {
                            e += &format!(" reads {}", r["tensor"].as_str().unwrap());
                        }
                        (!e.is_empty()).then(|| format!(" [input {}{e}]", r["input"]))
                    })
                    .collect();
                format!(
                    "expression {} weights {} fisher {}: {}{reads}",
                    p["expression"],
                    compact(&p["weights"]),
                    compact(&p["fisher"]),
                    stages.join(" |> ")
                )
            }
            _ => compact(p),
        };
        out += &format!(
            "{} {} {} layer {} shard {}: {what}\n",
            t["name"].as_str().unwrap(),
            t["dtype"].as_str().unwrap(),
            compact(&t["shape"]),
            t["layer"],
            t["shard"]
        );
    }
    out
}

fn plan_json(dir: &Path, recipe: &str) -> String {
    ok(&run_in(dir, &["check", recipe, "--json"]))
}

/// Every example recipe: its plan (a snapshot), and the plan run through
/// `merge --plan` gives the bytes of `merge RECIPE`.
#[test]
fn every_example_recipe_has_a_plan_that_merges_to_the_same_bytes() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes");
    let ws = Workspace::new(Dtype::BF16, Some(100_000));
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    names.sort();
    assert!(names.len() >= 5, "{names:?}");
    for name in &names {
        fs::copy(dir.join(name), ws.path().join(name)).unwrap();
        let json = plan_json(ws.path(), name);
        insta::assert_snapshot!(
            format!("plan_{}", name.trim_end_matches(".yaml")),
            portable(&json, &[(ws.path(), "[workspace]")])
        );
        let plan = format!("{name}.plan.json");
        fs::write(ws.path().join(&plan), &json).unwrap();
        let (direct, planned) = (format!("direct-{name}"), format!("planned-{name}"));
        ok(&run_in(
            ws.path(),
            &["merge", name, "-o", &direct, "--quiet"],
        ));
        ok(&run_in(
            ws.path(),
            &["merge", "--plan", &plan, "-o", &planned, "--quiet"],
        ));
        assert_same_weights(&ws.path().join(&direct), &ws.path().join(&planned), name);
    }
}

/// Every golden case: its plan (a snapshot of its digest), merged through `--plan` to
/// the bytes of the recipe's merge, which the golden tests compare with mergekit.
#[test]
fn every_golden_case_has_a_plan_that_merges_to_the_same_bytes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden");
    let tmp = tempfile::tempdir().unwrap();
    let mut cases: Vec<String> = fs::read_dir(&root)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("recipe.yaml").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    cases.sort();
    let mut planned = 0;
    for case in &cases {
        let recipe = root.join(case).join("recipe.yaml");
        let recipe = recipe.to_str().unwrap();
        let json = ok(&run_in(tmp.path(), &["check", recipe, "--json"]));
        insta::assert_snapshot!(
            format!("golden_plan_{case}"),
            digest(&portable(&json, &[(&root, "[golden]")]))
        );
        let plan = tmp.path().join(format!("{case}.plan.json"));
        fs::write(&plan, &json).unwrap();
        let (direct, via_plan) = (
            tmp.path().join(case),
            tmp.path().join(format!("{case}-plan")),
        );
        ok(&run_in(
            tmp.path(),
            &["merge", recipe, "-o", direct.to_str().unwrap(), "--quiet"],
        ));
        ok(&run_in(
            tmp.path(),
            &[
                "merge",
                "--plan",
                plan.to_str().unwrap(),
                "-o",
                via_plan.to_str().unwrap(),
                "--quiet",
            ],
        ));
        assert_same_weights(&direct, &via_plan, case);
        planned += 1;
    }
    assert!(planned >= 30, "planned {planned} of {cases:?}");
}

/// The weight files of two outputs, byte for byte.
fn assert_same_weights(a: &Path, b: &Path, what: &str) {
    let files = |d: &Path| {
        let mut v: Vec<String> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".safetensors") || n.ends_with(".json"))
            .collect();
        v.sort();
        v
    };
    assert_eq!(files(a), files(b), "{what}: the files of the two outputs");
    for f in files(a) {
        assert!(
            fs::read(a.join(&f)).unwrap() == fs::read(b.join(&f)).unwrap(),
            "{what}: {f} differs between the recipe's merge and the plan's"
        );
    }
}

/// A plan refuses to run once an input was modified, replaced or resharded, naming the
/// input and the file, and leaves nothing behind.
#[test]
fn a_plan_refuses_inputs_that_changed() {
    let ws = Workspace::new(Dtype::BF16, None);
    ws.recipe("r.yaml", &recipe_with("ties(trim(0.2), elect, disjoint)"));
    let json = plan_json(ws.path(), "r.yaml");
    ws.recipe("p.json", &json);
    let merge = |out: &str| run_in(ws.path(), &["merge", "--plan", "p.json", "-o", out]);
    ok(&merge("before"));

    // Same bytes, another modification time.
    let file = ws.model("math").join("model.safetensors");
    let f = fs::File::options().write(true).open(&file).unwrap();
    f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000))
        .unwrap();
    drop(f);
    let before = ws.entries();
    let err = fails(&merge("after"), 1);
    assert!(
        err.contains("model 2") && err.contains("changed since the plan was made"),
        "{err}"
    );
    assert!(
        err.contains("model.safetensors") && err.contains("modified"),
        "{err}"
    );
    assert_eq!(ws.entries(), before, "nothing is written");

    // Another checkpoint in its place: the base's file, same size and header.
    let code = ws.model("code").join("model.safetensors");
    fs::copy(ws.model("base").join("model.safetensors"), &code).unwrap();
    let err = fails(&merge("after"), 1);
    assert!(
        err.contains("model 1") && err.contains("changed since"),
        "{err}"
    );

    // Another layout: a smaller file.
    let tmp = tempfile::tempdir().unwrap();
    let tensors = vec![reefknot_io::OutputTensor {
        name: "w".into(),
        dtype: Dtype::F32,
        shape: vec![2],
    }];
    let w = reefknot_io::ModelWriter::create(tmp.path(), tensors, &Default::default()).unwrap();
    w.finish().unwrap();
    fs::copy(tmp.path().join("model.safetensors"), &code).unwrap();
    let err = fails(&merge("after"), 1);
    assert!(
        err.contains("model 1") && err.contains("its size is"),
        "{err}"
    );

    // A plan of another format is refused as such.
    ws.recipe(
        "old.json",
        &json.replacen("\"format\": 1", "\"format\": 0", 1),
    );
    let err = fails(
        &run_in(ws.path(), &["merge", "--plan", "old.json", "-o", "x"]),
        2,
    );
    assert!(err.contains("format 0"), "{err}");
}

/// A plan naming an operator that is not loaded, or an argument out of its range, is
/// refused before anything is read or written.
#[test]
fn a_plan_is_checked_against_the_operators() {
    let ws = Workspace::new(Dtype::F32, None);
    ws.recipe("r.yaml", &recipe_with("ties(trim(0.2), elect, disjoint)"));
    let json = plan_json(ws.path(), "r.yaml");

    ws.recipe(
        "p.json",
        &json.replace("\"op\": \"elect\"", "\"op\": \"vendor::elect\""),
    );
    let err = fails(
        &run_in(ws.path(), &["merge", "--plan", "p.json", "-o", "o"]),
        2,
    );
    assert!(
        err.contains("`vendor::elect`, which is not loaded"),
        "{err}"
    );

    let k = json.find("\"number\": [\n").expect("trim's k in the plan");
    let mut bad = json.clone();
    let end = k + bad[k..].find(']').unwrap();
    bad.replace_range(k..=end, "\"number\": [-0.5]");
    ws.recipe("p.json", &bad);
    let err = fails(
        &run_in(ws.path(), &["merge", "--plan", "p.json", "-o", "o"]),
        2,
    );
    assert!(
        err.contains("does not fit the operator") && err.contains("`k`"),
        "{err}"
    );

    let err = fails(
        &run_in(
            ws.path(),
            &["merge", "--plan", "p.json", "r.yaml", "-o", "o"],
        ),
        2,
    );
    assert!(err.contains("cannot be used with"), "{err}");
    assert!(!ws.path().join("o").exists());
}

/// docs/plans.md shows every field a plan has (a field added to the format must be
/// documented).
#[test]
fn the_plan_format_is_documented_field_by_field() {
    let ws = Workspace::new(Dtype::F32, None);
    ws.recipe(
        "r.yaml",
        &recipe_with("dare(0.5) |> elect(fisher) |> disjoint |> scale(0.5)")
            .replace(
                "- path: models/code",
                "- path: models/code\n    fisher: fisher/code.safetensors",
            )
            .replace(
                "- path: models/math",
                "- path: models/math\n    fisher: fisher/math.safetensors",
            )
            .replace(
                "- path: models/chat",
                "- path: models/chat\n    fisher: fisher/chat.safetensors",
            ),
    );
    let json: serde_json::Value = serde_json::from_str(&plan_json(ws.path(), "r.yaml")).unwrap();
    fn keys(v: &serde_json::Value, out: &mut std::collections::BTreeSet<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    out.insert(k.clone());
                    keys(v, out);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| keys(v, out)),
            _ => {}
        }
    }
    let mut found = std::collections::BTreeSet::new();
    keys(&json, &mut found);
    // Metadata keys are the output's, not the format's.
    found.remove("reefknot_version");
    found.remove("reefknot_recipe");
    let doc =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/plans.md")).unwrap();
    let missing: Vec<&String> = found
        .iter()
        .filter(|k| !doc.contains(&format!("\"{k}\"")))
        .collect();
    assert!(missing.is_empty(), "docs/plans.md lacks {missing:?}");
}

//! `reefknot analyze`: its figures against numpy's (the fixtures of
//! `scripts/golden/make_analysis_golden.py`), the same bytes for any thread count and
//! chunk size, nothing written, and its errors.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::util::{fails, ok, reefknot, run_in, Workspace};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn cases() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("tests/fixtures/analysis"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("expected.json").is_file())
        .collect();
    v.sort();
    assert!(v.len() >= 2, "the analysis fixtures are missing");
    v
}

fn analyze_json(recipe: &Path, extra: &[&str]) -> Value {
    let out = reefknot()
        .arg("analyze")
        .arg(recipe)
        .arg("--json")
        .args(extra)
        .output()
        .unwrap();
    serde_json::from_str(&ok(&out)).expect("analyze --json prints JSON")
}

/// Every set of the output by the fixture's key: `model`, `group:NAME`, `layer:N`.
fn sets(got: &Value) -> Vec<(String, Value)> {
    let mut v = vec![("model".to_string(), got["model"].clone())];
    for g in got["groups"].as_array().unwrap() {
        v.push((format!("group:{}", g["group"].as_str().unwrap()), g.clone()));
    }
    for l in got["layers"].as_array().unwrap() {
        v.push((format!("layer:{}", l["layer"]), l.clone()));
    }
    v
}

/// Compares `expected` (numpy's) with `got` field by field: numbers to 1e-6 relative,
/// integers and nulls exactly; the suggested density may be one 0.01 step above the
/// exact smallest (it keeps the share it promises, from a histogram's lower bound).
fn compare(path: &str, expected: &Value, got: &Value, worst: &mut f64) {
    match expected {
        Value::Object(fields) => {
            for (k, e) in fields {
                if k == "exact_density" {
                    let got = got["suggested_density"].as_f64();
                    let exact = e.as_f64();
                    match (exact, got) {
                        (Some(x), Some(y)) => assert!(
                            (y - x).abs() < 1e-9 || (y - x - 0.01).abs() < 1e-9,
                            "{path}: suggested density {y}, the exact smallest is {x}"
                        ),
                        (x, y) => assert_eq!(x, y, "{path}.suggested_density"),
                    }
                    continue;
                }
                let g = got
                    .get(k)
                    .unwrap_or_else(|| panic!("{path}: no field `{k}` in {got}"));
                compare(&format!("{path}.{k}"), e, g, worst);
            }
        }
        Value::Array(items) => {
            let g = got.as_array().unwrap();
            assert_eq!(items.len(), g.len(), "{path}: length");
            for (i, (e, g)) in items.iter().zip(g).enumerate() {
                compare(&format!("{path}[{i}]"), e, g, worst);
            }
        }
        Value::Number(n) if n.is_u64() => {
            assert_eq!(Some(n.as_u64()), Some(got.as_u64()), "{path}")
        }
        Value::Number(n) => {
            let (e, g) = (n.as_f64().unwrap(), got.as_f64().unwrap());
            let rel = (e - g).abs() / e.abs().max(1e-300);
            *worst = worst.max(rel);
            assert!(
                rel <= 1e-6,
                "{path}: numpy {e}, reefknot {g} ({rel:e} relative)"
            );
        }
        other => assert_eq!(other, got, "{path}"),
    }
}

#[test]
fn analyze_agrees_with_numpy_per_group_layer_and_model() {
    for case in cases() {
        let expected: Value =
            serde_json::from_str(&std::fs::read_to_string(case.join("expected.json")).unwrap())
                .unwrap();
        let got = analyze_json(&case.join("recipe.yaml"), &[]);
        let got_sets = sets(&got);
        let names: Vec<&str> = got_sets.iter().map(|(k, _)| k.as_str()).collect();
        let want: Vec<&str> = expected["sets"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut sorted_names = names.clone();
        sorted_names.sort();
        let mut sorted_want = want.clone();
        sorted_want.sort();
        assert_eq!(sorted_names, sorted_want, "{}: the sets", case.display());
        let mut worst = 0f64;
        for (key, set) in &got_sets {
            compare(
                &format!("{}:{key}", case.display()),
                &expected["sets"][key],
                set,
                &mut worst,
            );
        }
        // The comparison compared something: numbers that are not all exact zeros.
        assert!(got["model"]["models"][0]["norm"].as_f64().unwrap() > 0.0);
        eprintln!("{}: worst relative difference {worst:e}", case.display());
    }
}

#[test]
fn analyze_gives_the_same_figures_for_any_thread_count_and_chunk() {
    let recipe = cases()[0].join("recipe.yaml");
    let one = analyze_json(&recipe, &["--threads", "1"]);
    for extra in [
        &["--threads", "3"][..],
        &["--threads", "2", "--chunk", "4096"],
        &["--chunk", "1000000"],
    ] {
        assert_eq!(one, analyze_json(&recipe, extra), "{extra:?}");
    }
}

#[test]
fn analyze_reports_in_text_and_writes_nothing() {
    let ws = Workspace::new(reefknot_io::Dtype::BF16, Some(40_000));
    ws.recipe(
        "r.yaml",
        "base: models/base\nmodels:\n  - path: models/code\n  - path: models/math\n\
         merge: ties(trim(0.3), elect, disjoint)\n\
         overrides:\n  - group: embed\n    merge: mean\n",
    );
    let before = ws.entries();
    let out = ok(&run_in(ws.path(), &["analyze", "r.yaml"]));
    for needle in [
        "model 0  ",
        "Whole model: ",
        "Group attention: ",
        "Group mlp: ",
        "top 20%",
        "(k=0.3)",
        "pair",
        "0-1",
    ] {
        assert!(out.contains(needle), "`{needle}` missing from:\n{out}");
    }
    // The embeddings trim nothing: their election is measured at the default density.
    assert!(out.contains("else k=0.2"), "{out}");
    assert_eq!(before, ws.entries(), "analyze wrote something");
}

#[test]
fn analyze_refuses_bad_fractions_before_reading() {
    let recipe = cases()[0].join("recipe.yaml");
    for (flag, value) in [("--density", "0"), ("--density", "1.5"), ("--keep", "nan")] {
        let out = reefknot()
            .args(["analyze", recipe.to_str().unwrap(), flag, value])
            .output()
            .unwrap();
        let err = fails(&out, 2);
        assert!(err.contains(flag) && err.contains("fraction"), "{err}");
    }
}

#[test]
fn analyze_draws_its_picture_as_svg_or_png() {
    let recipe = cases()[0].join("recipe.yaml");
    let dir = tempfile::tempdir().unwrap();
    for name in ["a.svg", "a.png"] {
        let path = dir.path().join(name);
        let out = reefknot()
            .args(["analyze", recipe.to_str().unwrap(), "--plot"])
            .arg(&path)
            .output()
            .unwrap();
        // The report is printed as without --plot.
        assert!(ok(&out).contains("Whole model: "));
        let bytes = std::fs::read(&path).unwrap();
        if name.ends_with(".png") {
            assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "a PNG file");
            assert!(
                bytes.len() > 10_000,
                "a drawn picture: {} bytes",
                bytes.len()
            );
        } else {
            let text = String::from_utf8(bytes).unwrap();
            assert!(text.starts_with("<svg"), "{}", &text[..100.min(text.len())]);
            for label in [
                "model 0",
                "model 2",
                "0-1",
                "1-2",
                "layer",
                "90% of the energy",
            ] {
                assert!(text.contains(label), "no `{label}` in the SVG");
            }
        }
    }
    // A name of another format is refused before anything is read.
    let out = reefknot()
        .args(["analyze", recipe.to_str().unwrap(), "--plot", "a.jpg"])
        .output()
        .unwrap();
    let err = fails(&out, 2);
    assert!(err.contains("must end in .svg or .png"), "{err}");
    // A folder that does not exist fails the command, naming the file.
    let missing = dir.path().join("no/such/a.png");
    let out = reefknot()
        .args(["analyze", recipe.to_str().unwrap(), "--plot"])
        .arg(&missing)
        .output()
        .unwrap();
    let err = fails(&out, 1);
    assert!(err.contains("a.png"), "{err}");
}

#[test]
fn a_mergekit_configuration_is_analyzed_as_its_recipe() {
    // LoRA updates, a layer stack of merged slices, sharded bf16: read as the merge
    // reads them, the same figures from the recipe and from mergekit's configuration.
    let golden = root().join("tests/fixtures/golden");
    for case in ["lora_ties", "slices_merged", "ties_bf16"] {
        let recipe = analyze_json(&golden.join(case).join("recipe.yaml"), &[]);
        let config = analyze_json(&golden.join(case).join("mergekit.yml"), &[]);
        for set in ["model", "groups", "layers"] {
            assert_eq!(recipe[set], config[set], "{case}: {set}");
        }
        assert!(recipe["model"]["models"][0]["norm"].as_f64().unwrap() > 0.0);
    }
}

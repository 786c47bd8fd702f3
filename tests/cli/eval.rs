//! `reefknot eval` from the command line: its report and JSON on the transformers
//! fixtures (`scripts/golden/make_eval_golden.py`; the numbers themselves are checked in
//! `crates/eval/tests/transformers.rs`), several data files, and its errors.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::util::{fails, ok, reefknot};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/eval")
}

fn eval(args: &[&str]) -> std::process::Output {
    reefknot()
        .arg("eval")
        .args(args)
        .current_dir(fixtures())
        .output()
        .unwrap()
}

fn expected_loss(model: &str, file: &str) -> f64 {
    let text = fs::read_to_string(fixtures().join("expected.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["models"][model][file]["loss"].as_f64().unwrap()
}

#[test]
fn the_report_and_the_json() {
    let out = eval(&["gpt2_f32", "--data", "tokens.json", "--context", "24"]);
    let report = ok(&out);
    let want = expected_loss("gpt2_f32", "tokens.json");
    assert!(report.starts_with("gpt2_f32 (gpt2, "), "{report}");
    assert!(report.contains("windows of 24 tokens"), "{report}");
    let row = report
        .lines()
        .find(|l| l.starts_with("tokens.json"))
        .unwrap();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[1..3], ["93", "5"], "{row}");
    assert_eq!(cells[3], format!("{want:.4}"), "{row}");
    assert_eq!(cells[4], format!("{:.3}", want.exp()), "{row}");

    let out = eval(&[
        "llama_f32",
        "--data",
        "tokens.json",
        "--context",
        "24",
        "--json",
    ]);
    let json: Value = serde_json::from_str(&ok(&out)).unwrap();
    assert_eq!(json["family"], "llama");
    assert_eq!(json["context"], 24);
    let file = &json["data"][0];
    assert_eq!(
        (file["tokens"].as_u64(), file["windows"].as_u64()),
        (Some(93), Some(5))
    );
    assert_eq!(file["tokenized"], false);
    let loss = file["loss"].as_f64().unwrap();
    assert!((loss - expected_loss("llama_f32", "tokens.json")).abs() < 1e-5);
    assert_eq!(json["mean_loss"].as_f64(), Some(loss));
}

#[test]
fn several_files_score_their_mean_and_text_is_tokenized() {
    let out = eval(&[
        "llama_text",
        "--data",
        "text.txt",
        "--data",
        "text.txt",
        "--context",
        "24",
        "--json",
    ]);
    let json: Value = serde_json::from_str(&ok(&out)).unwrap();
    let want = expected_loss("llama_text", "text.txt");
    for file in json["data"].as_array().unwrap() {
        assert_eq!(file["tokenized"], true);
        assert!((file["loss"].as_f64().unwrap() - want).abs() < 1e-5);
    }
    assert!((json["mean_loss"].as_f64().unwrap() - want).abs() < 1e-5);
    // The report has a mean row for several files.
    let report = ok(&eval(&[
        "llama_text",
        "--data",
        "text.txt",
        "--data",
        "text.txt",
    ]));
    assert!(report.lines().any(|l| l.starts_with("mean ")), "{report}");
    // Without --context the window is the model's own 64 tokens here (under 1024).
    assert!(report.contains("windows of 64 tokens"), "{report}");
}

/// A copy of a fixture model whose config.json `edit` changes.
fn edited(name: &str, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in fs::read_dir(fixtures().join(name)).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    let path = dir.path().join("config.json");
    let mut config: serde_json::Map<String, Value> =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut config);
    fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    dir
}

fn eval_at(model: &Path, args: &[&str]) -> std::process::Output {
    reefknot()
        .arg("eval")
        .arg(model)
        .args(args)
        .current_dir(fixtures())
        .output()
        .unwrap()
}

#[test]
fn what_eval_cannot_run_is_named() {
    let data = ["--data", "tokens.json"];
    let phi = edited("llama_f32", |c| {
        c.insert("model_type".into(), "phi".into());
    });
    let err = fails(&eval_at(phi.path(), &data), 2);
    assert!(
        err.contains("model_type `phi`: eval runs llama, mistral, qwen2 and gpt2"),
        "{err}"
    );
    let yarn = edited("llama_f32", |c| {
        c.insert(
            "rope_parameters".into(),
            serde_json::json!({"rope_type": "yarn", "factor": 8.0}),
        );
    });
    let err = fails(&eval_at(yarn.path(), &data), 2);
    assert!(
        err.contains("`yarn` RoPE: eval runs plain, linear and llama3 RoPE"),
        "{err}"
    );
    let partial = edited("llama_f32", |c| {
        c.insert(
            "rope_scaling".into(),
            serde_json::json!({"type": "llama3", "factor": 8.0}),
        );
    });
    let err = fails(&eval_at(partial.path(), &data), 2);
    assert!(
        err.contains("`llama3` RoPE needs `low_freq_factor`"),
        "{err}"
    );
    let small = edited("llama_f32", |c| {
        c.insert("vocab_size".into(), 50.into());
    });
    // The checkpoint's embeddings have 96 rows: a shape error, naming the tensor.
    let err = fails(&eval_at(small.path(), &data), 1);
    assert!(
        err.contains("tensor `model.embed_tokens.weight`: has shape [96, 32], expected [50, 32]"),
        "{err}"
    );
    let broken = edited("gpt2_f32", |c| {
        c.insert("n_layer".into(), 3.into());
    });
    let err = fails(&eval_at(broken.path(), &data), 1);
    assert!(
        err.contains("tensor `transformer.h.2.ln_1.weight`: missing from the checkpoint"),
        "{err}"
    );

    let err = fails(
        &eval(&["llama_f32", "--data", "tokens.json", "--context", "65"]),
        2,
    );
    assert!(
        err.contains("--context 65: a window must hold 2 to 64 tokens"),
        "{err}"
    );
    let err = fails(&eval(&["llama_f32", "--data", "missing.json"]), 2);
    assert!(err.contains("missing.json: cannot read"), "{err}");
    let err = fails(&eval(&["llama_f32", "--data", "text.txt"]), 2);
    assert!(
        err.contains("text needs the model's tokenizer.json"),
        "{err}"
    );
    // An id at the vocabulary's size is refused, naming its position.
    let ids = tempfile::tempdir().unwrap();
    let file = ids.path().join("ids.json");
    fs::write(&file, "[[1, 2], [3, 96]]").unwrap();
    let err = fails(&eval(&["llama_f32", "--data", file.to_str().unwrap()]), 2);
    assert!(
        err.contains("token 3 is id 96, but the model's vocabulary has 96 tokens"),
        "{err}"
    );
}

/// A model named by Hugging Face repo id is read from the local cache, as recipes read
/// theirs; a revision the cache lacks is named with where it was looked for.
#[test]
fn a_repo_id_is_read_from_the_local_cache() {
    let hub = tempfile::tempdir().unwrap();
    let repo = hub.path().join("models--org--tiny");
    let snapshot = repo.join("snapshots/0a1b2c");
    fs::create_dir_all(&snapshot).unwrap();
    fs::create_dir_all(repo.join("refs")).unwrap();
    fs::write(repo.join("refs/main"), "0a1b2c\n").unwrap();
    for entry in fs::read_dir(fixtures().join("llama_f32")).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), snapshot.join(entry.file_name())).unwrap();
    }
    let run = |model: &str| {
        reefknot()
            .args([
                "eval",
                model,
                "--data",
                "tokens.json",
                "--context",
                "24",
                "--json",
            ])
            .current_dir(fixtures())
            .env("HF_HUB_CACHE", hub.path())
            .output()
            .unwrap()
    };
    let report: Value = serde_json::from_str(&ok(&run("org/tiny"))).unwrap();
    let loss = report["mean_loss"].as_f64().unwrap();
    let want = expected_loss("llama_f32", "tokens.json");
    assert!((loss - want).abs() <= 1e-5, "{loss} vs {want}");

    let err = fails(&run("org/tiny@v2"), 1);
    assert!(
        err.contains("revision `v2` is not in the Hugging Face cache")
            && err.contains("models--org--tiny"),
        "{err}"
    );
}

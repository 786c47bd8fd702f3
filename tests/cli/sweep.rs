//! `reefknot sweep` end to end with an external scorer and with the built-in evaluator:
//! every point merged and scored, CSV and JSON results, only the best model kept, and a
//! sweep run again resumes without redoing what it finished.

use std::fs;

use reefknot_io::Dtype;
use serde_json::Value;

use crate::util::*;

const RECIPE: &str = "base: models/base
models:
  - path: models/code
  - path: models/math
params: { density: 0.2, lambda: 1.0 }
merge: ties(trim($density), elect, disjoint) |> scale($lambda)
";

/// Scores a model by two bytes of its weights (so that points differ), logging each
/// call next to the sweep's folder, and failing while a `fail` file is there.
const SCORER: &str = "test ! -e fail && echo {model} >> evals.log && \
                      od -An -tu2 -j 200000 -N 2 {model}/model.safetensors";

fn sweep(ws: &Workspace, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "sweep",
        "r.yaml",
        "--grid",
        "density=0.1,0.5",
        "--grid",
        "lambda=0.5,2",
        "--eval-cmd",
        SCORER,
        "-o",
        "sw",
        "--quiet",
    ];
    args.extend_from_slice(extra);
    run_in(ws.path(), &args)
}

fn results(ws: &Workspace) -> Vec<Value> {
    let text = fs::read_to_string(ws.path().join("sw/results.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn evals(ws: &Workspace) -> usize {
    fs::read_to_string(ws.path().join("evals.log"))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

#[test]
fn a_sweep_scores_every_point_and_keeps_the_best() {
    let ws = Workspace::new(Dtype::F32, None);
    ws.recipe("r.yaml", RECIPE);
    ok(&sweep(&ws, &[]));
    let r = results(&ws);
    assert_eq!(r.len(), 4);
    assert_eq!(evals(&ws), 4);
    // Grid order, the first axis slowest.
    let params: Vec<(f64, f64)> = r
        .iter()
        .map(|e| {
            (
                e["params"]["density"].as_f64().unwrap(),
                e["params"]["lambda"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(params, [(0.1, 0.5), (0.1, 2.0), (0.5, 0.5), (0.5, 2.0)]);
    let scores: Vec<f64> = r.iter().map(|e| e["score"].as_f64().unwrap()).collect();
    assert!(
        scores.windows(2).any(|w| w[0] != w[1]),
        "the points should differ: {scores:?}"
    );
    let best = (0..4)
        .min_by(|&a, &b| scores[a].total_cmp(&scores[b]))
        .unwrap();
    // Only the best point's model is kept.
    let kept: Vec<usize> = (0..4).filter(|&i| !r[i]["model"].is_null()).collect();
    assert_eq!(kept, [best]);
    let entries: Vec<String> = fs::read_dir(ws.path().join("sw/points"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let (d, l) = params[best];
    assert_eq!(entries, [format!("density={d},lambda={l}")]);
    // The kept model is the merge of its point: the same bytes as merging with --set.
    ok(&run_in(
        ws.path(),
        &[
            "merge",
            "r.yaml",
            "-o",
            "one",
            "--quiet",
            "--set",
            &format!("density={d}"),
            "--set",
            &format!("lambda={l}"),
        ],
    ));
    let name = format!("sw/points/{}/model.safetensors", entries[0]);
    assert_eq!(
        tensors(&ws.path().join(&name)),
        tensors(&ws.path().join("one/model.safetensors"))
    );
    // The CSV holds the same rows.
    let csv = fs::read_to_string(ws.path().join("sw/results.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "density,lambda,score");
    assert_eq!(lines.len(), 5);
    assert!(lines[1].starts_with("0.1,0.5,"), "{csv}");
    // --maximize picks the other end; --plot draws the scores.
    fs::remove_dir_all(ws.path().join("sw")).unwrap();
    ok(&sweep(
        &ws,
        &["--maximize", "--keep-all", "--plot", "scores.svg"],
    ));
    let svg = fs::read_to_string(ws.path().join("scores.svg")).unwrap();
    for label in [
        "Score over the grid",
        "density",
        "lambda=0.5",
        "lambda=2",
        "best",
    ] {
        assert!(svg.contains(label), "no `{label}` in the picture");
    }
    let r = results(&ws);
    assert!(
        r.iter().all(|e| !e["model"].is_null()),
        "--keep-all keeps every model"
    );
    // Another grid into the same folder adds its points and keeps the earlier ones.
    ok(&run_in(
        ws.path(),
        &[
            "sweep",
            "r.yaml",
            "--grid",
            "density=0.3",
            "--eval-cmd",
            SCORER,
            "-o",
            "sw",
            "--quiet",
        ],
    ));
    let r = results(&ws);
    assert_eq!(r.len(), 5);
    assert_eq!(r[0]["params"]["density"].as_f64(), Some(0.3));
    let csv = fs::read_to_string(ws.path().join("sw/results.csv")).unwrap();
    assert_eq!(csv.lines().next(), Some("density,score"));
    assert_eq!(csv.lines().count(), 6, "{csv}");
}

#[test]
fn an_interrupted_sweep_resumes_without_redoing_finished_points() {
    let ws = Workspace::new(Dtype::F32, None);
    ws.recipe("r.yaml", RECIPE);
    // The scorer fails from the third point on: the sweep stops, naming it.
    let log = ws.path().join("evals.log");
    let fail_after_two = format!(
        "test $(wc -l < {} 2>/dev/null || echo 0) -lt 2 || touch fail; {SCORER}",
        log.display()
    );
    let out = run_in(
        ws.path(),
        &[
            "sweep",
            "r.yaml",
            "--grid",
            "density=0.1,0.5",
            "--grid",
            "lambda=0.5,2",
            "--eval-cmd",
            &fail_after_two,
            "-o",
            "sw",
            "--quiet",
        ],
    );
    let err = fails(&out, 1);
    assert!(err.contains("scoring density=0.5,lambda=0.5"), "{err}");
    assert_eq!(results(&ws).len(), 2);
    assert_eq!(evals(&ws), 2);
    // Run again: the two scored points are not merged or scored again.
    fs::remove_file(ws.path().join("fail")).unwrap();
    ok(&sweep(&ws, &[]));
    assert_eq!(results(&ws).len(), 4);
    assert_eq!(evals(&ws), 4);
    // A finished sweep run again does nothing.
    ok(&sweep(&ws, &[]));
    assert_eq!(evals(&ws), 4);
}

#[test]
fn a_sweep_refuses_what_it_cannot_run() {
    let ws = Workspace::new(Dtype::F32, None);
    ws.recipe("r.yaml", RECIPE);
    let run = |args: &[&str]| {
        let mut all = vec!["sweep", "r.yaml", "-o", "sw", "--quiet"];
        all.extend_from_slice(args);
        run_in(ws.path(), &all)
    };
    let cases: &[(&[&str], i32, &str)] = &[
        (
            &[
                "--grid",
                "density=0.1",
                "--grid",
                "density=0.2",
                "--eval-cmd",
                "echo 1 {model}",
            ],
            2,
            "given twice",
        ),
        (
            &["--grid", "density=0.1", "--eval-cmd", "echo 1"],
            2,
            "{model}",
        ),
        (
            &["--grid", "density=0.1,x", "--eval-cmd", "echo {model}"],
            2,
            "not a finite number",
        ),
        (
            &["--grid", "densty=0.1", "--eval-cmd", "echo {model}"],
            2,
            "no expression of the recipe reads",
        ),
        (
            &["--grid", "density=1.5", "--eval-cmd", "echo {model}"],
            2,
            "out of range",
        ),
        (
            &[
                "--grid",
                "density=0.1",
                "--eval-cmd",
                "echo no score {model}",
            ],
            1,
            "not a finite number or JSON",
        ),
        (
            &["--grid", "density=0.1", "--eval-cmd", "false {model}"],
            1,
            "it failed",
        ),
        (
            &[
                "--grid",
                "density=0.1",
                "--eval-cmd",
                "echo 1 {model}",
                "--plot",
                "a.gif",
            ],
            2,
            "must end in .svg or .png",
        ),
        (&["--grid", "density=0.1"], 2, "no scorer"),
        (
            &["--grid", "density=0.1", "--eval-data", "none.json"],
            2,
            "--eval-data none.json: no such file",
        ),
        (
            &[
                "--grid",
                "density=0.1",
                "--eval-data",
                "r.yaml",
                "--maximize",
            ],
            2,
            "the built-in score is a loss",
        ),
        (
            &[
                "--grid",
                "density=0.1",
                "--eval-data",
                "r.yaml",
                "--eval-cmd",
                "echo {model}",
            ],
            2,
            "cannot be used with",
        ),
        (
            &["--grid", "density=0.1", "--eval-data", "r.yaml"],
            2,
            "tokenizer.json: cannot load",
        ),
    ];
    for (args, code, needle) in cases {
        let err = fails(&run(args), *code);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    // JSON scores: a number, or an object with `score`.
    let json = r#"echo '{"score": 0.25, "acc": 1}' {model} >/dev/null; echo '{"score": 0.25}'"#;
    ok(&run(&["--grid", "density=0.1", "--eval-cmd", json]));
    assert_eq!(results(&ws)[0]["score"].as_f64(), Some(0.25));
}

/// Token documents for the tiny family (vocabulary 256), different per file.
fn write_tokens(ws: &Workspace, name: &str, seed: u32) {
    let doc = |n: u32| -> Vec<u32> { (0..40).map(|i| (i * 37 + n * 11 + seed) % 256).collect() };
    let docs = vec![doc(1), doc(2)];
    fs::write(ws.path().join(name), serde_json::to_string(&docs).unwrap()).unwrap();
}

#[test]
fn a_sweep_scored_by_the_built_in_evaluator_keeps_the_lowest_mean_loss() {
    let ws = Workspace::new(Dtype::F32, None);
    ws.recipe("r.yaml", RECIPE);
    write_tokens(&ws, "a.json", 0);
    write_tokens(&ws, "b.json", 100);
    let args = [
        "sweep",
        "r.yaml",
        "--grid",
        "density=0.1,0.5",
        "--grid",
        "lambda=0.5,3",
        "--eval-data",
        "a.json",
        "--eval-data",
        "b.json",
        "--context",
        "16",
        "-o",
        "sw",
    ];
    let table = ok(&run_in(ws.path(), &args));
    assert!(
        table.contains("scores from the mean loss on a.json, b.json (lower is better)"),
        "{table}"
    );
    let r = results(&ws);
    assert_eq!(r.len(), 4);
    let scores: Vec<f64> = r.iter().map(|e| e["score"].as_f64().unwrap()).collect();
    for e in &r {
        let losses = e["losses"].as_object().unwrap();
        assert_eq!(losses.len(), 2, "{e}");
        let mean = losses.values().map(|v| v.as_f64().unwrap()).sum::<f64>() / 2.0;
        assert_eq!(mean, e["score"].as_f64().unwrap());
    }
    assert!(scores.windows(2).any(|w| w[0] != w[1]), "{scores:?}");
    let best = (0..4)
        .min_by(|&a, &b| scores[a].total_cmp(&scores[b]))
        .unwrap();
    let kept: Vec<&Value> = r.iter().filter(|e| !e["model"].is_null()).collect();
    assert_eq!(kept.len(), 1, "only the best model is kept");
    let model = kept[0]["model"].as_str().unwrap();
    assert_eq!(kept[0]["score"], r[best]["score"]);
    assert_eq!(
        fs::read_dir(ws.path().join("sw/points")).unwrap().count(),
        1
    );
    // The sweep's score is what `reefknot eval` says of the kept model.
    let out = run_in(
        ws.path(),
        &[
            "eval",
            model,
            "--data",
            "a.json",
            "--data",
            "b.json",
            "--context",
            "16",
            "--json",
        ],
    );
    let eval: Value = serde_json::from_str(&ok(&out)).unwrap();
    assert_eq!(eval["mean_loss"], r[best]["score"]);
    // No scratch folder is left; one a killed sweep left is removed when it runs again.
    let names = |dir: &str| -> Vec<String> {
        fs::read_dir(ws.path().join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    assert!(
        !names("sw").iter().any(|n| n.starts_with('.')),
        "{:?}",
        names("sw")
    );
    fs::create_dir_all(ws.path().join("sw/.scoring-killed")).unwrap();
    fs::write(ws.path().join("sw/.scoring-killed/config.json"), "{}").unwrap();
    // Run again: every point is done, nothing is merged or scored again.
    let again = ok(&run_in(ws.path(), &args));
    assert_eq!(again.matches("(done)").count(), 4, "{again}");
    assert_eq!(results(&ws), r);
    assert!(
        !names("sw").iter().any(|n| n.starts_with('.')),
        "{:?}",
        names("sw")
    );
    // The points were scored from memory, the best written at the end; merged to disk
    // and loaded back, they score the same, bit for bit.
    let mut to_disk: Vec<&str> = args
        .iter()
        .map(|a| if *a == "sw" { "sw-disk" } else { a })
        .collect();
    to_disk.push("--to-disk");
    let table_on_disk = ok(&run_in(ws.path(), &to_disk));
    assert!(
        table.contains("; merges scored in memory, the best written at the end"),
        "{table}"
    );
    assert!(!table_on_disk.contains("in memory"), "{table_on_disk}");
    let text = fs::read_to_string(ws.path().join("sw-disk/results.json")).unwrap();
    let disk: Vec<Value> = serde_json::from_str(&text).unwrap();
    let scores_on_disk: Vec<f64> = disk.iter().map(|e| e["score"].as_f64().unwrap()).collect();
    assert_eq!(scores_on_disk, scores);
}

#[test]
fn a_recipe_s_sweep_section_is_the_default_grid_and_scorer() {
    let ws = Workspace::new(Dtype::F32, None);
    write_tokens(&ws, "a.json", 0);
    let section = "sweep:
  grid: { lambda: [0.5, 3], density: [0.1, 0.5] }
  eval_data: [../a.json]
  context: 16
";
    fs::create_dir(ws.path().join("recipes")).unwrap();
    let recipe = RECIPE.replace("models/", "../models/") + section;
    fs::write(ws.path().join("recipes/r.yaml"), &recipe).unwrap();
    // merge and check ignore it.
    ok(&run_in(ws.path(), &["check", "recipes/r.yaml"]));
    ok(&run_in(
        ws.path(),
        &["sweep", "recipes/r.yaml", "-o", "sw", "--quiet"],
    ));
    let r = results(&ws);
    // The recipe's axis order: lambda varies slowest.
    let params: Vec<(f64, f64)> = r
        .iter()
        .map(|e| {
            (
                e["params"]["lambda"].as_f64().unwrap(),
                e["params"]["density"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(params, [(0.5, 0.1), (0.5, 0.5), (3.0, 0.1), (3.0, 0.5)]);
    assert!(r
        .iter()
        .all(|e| e["losses"].as_object().unwrap().len() == 1));
    // The command line's grid and scorer replace the recipe's.
    let out = run_in(
        ws.path(),
        &[
            "sweep",
            "recipes/r.yaml",
            "--grid",
            "density=0.2",
            "--eval-cmd",
            "test -d {model} && echo 7",
            "-o",
            "sw2",
            "--quiet",
        ],
    );
    ok(&out);
    let text = fs::read_to_string(ws.path().join("sw2/results.csv")).unwrap();
    assert_eq!(text, "density,score\n0.2,7.0\n");

    let bad = [
        (
            "sweep:\n  grid: { density: [0.1] }\n  eval_data: [a.json]\n  eval_cmd: echo {model}\n",
            "this sweep has both `eval_data` and `eval_cmd`",
        ),
        (
            "sweep:\n  grid: { density: 0.1 }\n  eval_data: [a.json]\n",
            "a non-empty list of numbers",
        ),
        (
            "sweep:\n  grid: { density: [0.1] }\n  data: [a.json]\n",
            "eval_data",
        ),
        (
            "sweep:\n  eval_data: [a.json]\n",
            "this sweep has no `grid`",
        ),
        (
            "sweep:\n  grid: { density: [0.1] }\n  context: 1\n",
            "`context` is not a number of tokens",
        ),
    ];
    for (section, needle) in bad {
        ws.recipe("bad.yaml", &(RECIPE.to_string() + section));
        let err = fails(&run_in(ws.path(), &["check", "bad.yaml"]), 2);
        assert!(err.contains(needle), "{section}: {err}");
    }
    ws.recipe("none.yaml", RECIPE);
    let err = fails(&run_in(ws.path(), &["sweep", "none.yaml", "-o", "sw3"]), 2);
    assert!(err.contains("no grid: give --grid"), "{err}");
    let err = fails(
        &run_in(
            ws.path(),
            &["sweep", "none.yaml", "--grid", "density=0.1", "-o", "sw3"],
        ),
        2,
    );
    assert!(
        err.contains("no scorer: give --eval-data FILE or --eval-cmd"),
        "{err}"
    );
}

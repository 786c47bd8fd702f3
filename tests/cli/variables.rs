//! `--set NAME=VALUE`: a `$variable` set from the command line, above every level of
//! the recipe, recorded in the output; the mistakes it can hold, refused.

use reefknot_io::{Checkpoint, Dtype};
use serde_json::Value;

use crate::util::*;

const RECIPE: &str = "base: models/base
models:
  - path: models/code
    params: { density: 0.3 }
  - path: models/math
params: { density: 0.2 }
merge: ties(trim($density), elect, disjoint) |> scale($lambda)
overrides:
  - group: mlp
    params: { density: [0.1, 0.4] }
";

fn plan(ws: &Workspace, args: &[&str]) -> Value {
    let mut all = vec!["check", "r.yaml", "--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&ok(&run_in(ws.path(), &all))).unwrap()
}

/// Every stage's arguments of every merged tensor.
fn stage_args(plan: &Value) -> Vec<Value> {
    plan["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["producer"]["kind"] == "pipeline")
        .flat_map(|t| t["producer"]["stages"].as_array().unwrap().clone())
        .map(|s| s["args"].clone())
        .collect()
}

#[test]
fn set_replaces_a_variable_at_every_level() {
    let ws = Workspace::new(Dtype::F32, None);
    ws.recipe(
        "r.yaml",
        &format!("{RECIPE}  - group: attention\n    params: {{ lambda: 2.0 }}\n"),
    );
    ws.recipe(
        "same.yaml",
        "base: models/base\nmodels:\n  - path: models/code\n  - path: models/math\n\
         params: { density: 0.35, lambda: 0.5 }\n\
         merge: ties(trim($density), elect, disjoint) |> scale($lambda)\n",
    );
    let set = plan(&ws, &["--set", "density=0.35", "--set", "lambda=0.5"]);
    let same: Value =
        serde_json::from_str(&ok(&run_in(ws.path(), &["check", "same.yaml", "--json"]))).unwrap();
    // The model's, the overrides' and the recipe's values all gave way.
    assert_eq!(stage_args(&set), stage_args(&same));
    assert!(stage_args(&set)
        .iter()
        .any(|a| a.to_string().contains("0.35")));
    // Without --set the recipe's own values hold.
    let own = plan(&ws, &["--set", "lambda=1"]);
    assert_ne!(stage_args(&own), stage_args(&set));
}

#[test]
fn a_merge_records_what_was_set() {
    let ws = Workspace::new(Dtype::F32, None);
    ws.recipe("r.yaml", RECIPE);
    ok(&run_in(
        ws.path(),
        &[
            "merge",
            "r.yaml",
            "-o",
            "out",
            "--quiet",
            "--set",
            "lambda=0.5",
            "--set",
            "density=0.25",
        ],
    ));
    let out = Checkpoint::open(&ws.path().join("out")).unwrap();
    assert_eq!(
        out.metadata().get("reefknot_set").map(String::as_str),
        Some("density=0.25, lambda=0.5")
    );
    let card = std::fs::read_to_string(ws.path().join("out/README.md")).unwrap();
    assert!(
        card.contains(
            "With variables set when merging, above the recipe's values: density=0.25, lambda=0.5."
        ),
        "{card}"
    );
}

#[test]
fn set_refuses_what_it_cannot_mean() {
    let ws = Workspace::new(Dtype::F32, None);
    ws.recipe("r.yaml", RECIPE);
    let cases: &[(&[&str], &str)] = &[
        (
            &["--set", "lambda=1", "--set", "densty=0.3"],
            "no expression of the recipe reads `$densty`",
        ),
        (&[], "or on the command line with `--set NAME=VALUE`"),
        (&["--set", "density"], "is not NAME=VALUE"),
        (&["--set", "9x=1"], "is not a variable name"),
        (&["--set", "density=inf"], "is not a finite number"),
        (
            &["--set", "density=1.5", "--set", "lambda=1"],
            "(from --set density=1.5)",
        ),
    ];
    for (args, needle) in cases {
        let mut all = vec!["check", "r.yaml"];
        all.extend_from_slice(args);
        let err = fails(&run_in(ws.path(), &all), 2);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    ok(&run_in(
        ws.path(),
        &["check", "r.yaml", "--json", "--set", "lambda=1"],
    ));
    std::fs::write(
        ws.path().join("p.json"),
        ok(&run_in(
            ws.path(),
            &["check", "r.yaml", "--json", "--set", "lambda=1"],
        )),
    )
    .unwrap();
    // A saved plan holds its values already.
    let err = fails(
        &run_in(
            ws.path(),
            &["merge", "--plan", "p.json", "-o", "o", "--set", "lambda=2"],
        ),
        2,
    );
    assert!(err.contains("--set"), "{err}");
}

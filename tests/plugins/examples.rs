//! The example plugins of `plugins/` and the fixture operators, loaded by the binary:
//! their merges equal numbers computed here, independently, bit for bit.

use std::path::Path;

use reefknot_io::{Checkpoint, Dtype};
use reefknot_ops::rng::Stream;

use crate::build;
use crate::util::*;

/// A float32 recipe over the workspace's family with `merge`, loading `plugins`.
fn recipe(ws: &Workspace, merge: &str, plugins: &[&Path], extra: &str) -> String {
    let list: Vec<String> = plugins
        .iter()
        .map(|p| format!("{:?}", ship(ws, p)))
        .collect();
    format!(
        "{}dtype: float32\nplugins: [{}]\n{extra}",
        recipe_with(merge),
        list.join(", ")
    )
}

/// Copies a built plugin into the workspace's `plugins/` folder, as a recipe's plugins
/// are shipped beside it (a recipe loads plugins only from its own folder or the plugin
/// path), and returns the path the recipe names it by.
fn ship(ws: &Workspace, lib: &Path) -> String {
    let dir = ws.path().join("plugins");
    std::fs::create_dir_all(&dir).unwrap();
    let name = lib.file_name().unwrap();
    std::fs::copy(lib, dir.join(name)).unwrap();
    format!("plugins/{}", name.to_string_lossy())
}

/// For every tensor: the base, the task vectors `δ_i = θ_i − θ_base` (f32) and the
/// merged output, read back.
fn each_tensor(ws: &Workspace, out: &str, mut f: impl FnMut(&str, &[f32], &[Vec<f32>], &[f32])) {
    let base = Checkpoint::open(&ws.model("base")).unwrap();
    let models: Vec<Checkpoint> = TASKS
        .iter()
        .map(|t| Checkpoint::open(&ws.model(t)).unwrap())
        .collect();
    let merged = Checkpoint::open(&ws.path().join(out)).unwrap();
    for t in base.tensors() {
        let b = values(&base, &t.name);
        let deltas: Vec<Vec<f32>> = models
            .iter()
            .map(|m| {
                values(m, &t.name)
                    .iter()
                    .zip(&b)
                    .map(|(x, y)| x - y)
                    .collect()
            })
            .collect();
        assert_eq!(merged.get(&t.name).unwrap().dtype, Dtype::F32);
        f(&t.name, &b, &deltas, &values(&merged, &t.name));
    }
}

#[track_caller]
fn same_bits(name: &str, j: usize, got: f32, want: f32) {
    assert_eq!(
        got.to_bits(),
        want.to_bits(),
        "{name}[{j}]: got {got}, want {want}"
    );
}

/// TALL consensus as the paper (and plugins/tall's documentation) defines it.
fn consensus_mask(deltas: &[Vec<f32>], j: usize, k: usize, lambda: &[f32]) -> bool {
    let total = deltas.iter().fold(0f32, |acc, d| acc + d[j]);
    let votes = deltas
        .iter()
        .zip(lambda)
        .filter(|(d, &l)| d[j].abs() >= l * (total - d[j]).abs())
        .count();
    votes >= k
}

#[test]
fn tall_consensus_then_sum_is_consensus_task_arithmetic() {
    let ws = Workspace::new(Dtype::BF16, None);
    let tall = build::tall();
    ws.recipe(
        "r.yaml",
        &recipe(&ws, "tall::consensus(k=2, lambda=0.6) |> sum", &[tall], ""),
    );
    ok(&run_in(
        ws.path(),
        &["merge", "r.yaml", "-o", "out", "--quiet"],
    ));
    let (mut kept, mut total) = (0usize, 0usize);
    each_tensor(&ws, "out", |name, b, deltas, got| {
        for j in 0..b.len() {
            let keep = consensus_mask(deltas, j, 2, &[0.6; 3]);
            kept += usize::from(keep);
            total += 1;
            let delta = deltas
                .iter()
                .fold(0f32, |acc, d| acc + if keep { d[j] } else { 0.0 });
            same_bits(name, j, got[j], b[j] + delta);
        }
    });
    // The mask is neither everything nor nothing on this family.
    let share = kept as f64 / total as f64;
    assert!((0.05..0.95).contains(&share), "kept {share}");
}

#[test]
fn tall_lambda_per_model_comes_from_the_models_params() {
    let ws = Workspace::new(Dtype::F32, None);
    let tall = build::tall();
    let text = format!(
        "base: models/base\nmodels:\n  - path: models/code\n    params: {{ lambda: 0.3 }}\n  \
         - path: models/math\n    params: {{ lambda: 0.6 }}\n  - path: models/chat\n    \
         params: {{ lambda: 0.9 }}\nmerge: tall::consensus(k=1, lambda=$lambda) |> sum\n\
         dtype: float32\nplugins: [{:?}]\n",
        ship(&ws, tall)
    );
    ws.recipe("r.yaml", &text);
    let plan = ok(&run_in(ws.path(), &["check", "r.yaml"]));
    assert!(
        plan.contains("tall::consensus(k=1, lambda=[0.3, 0.6, 0.9])"),
        "{plan}"
    );
    ok(&run_in(
        ws.path(),
        &["merge", "r.yaml", "-o", "out", "--quiet"],
    ));
    let lambda = [0.3f64 as f32, 0.6f64 as f32, 0.9f64 as f32];
    each_tensor(&ws, "out", |name, b, deltas, got| {
        for j in 0..b.len() {
            let keep = consensus_mask(deltas, j, 1, &lambda);
            let delta = deltas
                .iter()
                .fold(0f32, |acc, d| acc + if keep { d[j] } else { 0.0 });
            same_bits(name, j, got[j], b[j] + delta);
        }
    });
}

#[test]
fn robust_median_and_clip_written_in_c() {
    let ws = Workspace::new(Dtype::BF16, None);
    let robust = build::robust();
    // Weighted models: the median is over u_i = w_i·δ_i; `clip` resolves unqualified.
    let text = "base: models/base\nmodels:\n  - path: models/code\n    weight: 1.0\n  \
         - path: models/math\n    weight: 0.5\n  - path: models/chat\n    weight: 2.0\n\
         merge: robust::median |> clip(max_abs=0.001)\ndtype: float32\n";
    ws.recipe("r.yaml", text);
    ok(&run_in(
        ws.path(),
        &[
            "merge",
            "r.yaml",
            "-o",
            "out",
            "--quiet",
            "--plugin",
            robust.to_str().unwrap(),
        ],
    ));
    let w = [1.0f32, 0.5, 2.0];
    let c = 0.001f64 as f32;
    each_tensor(&ws, "out", |name, b, deltas, got| {
        for j in 0..b.len() {
            let mut u: Vec<f32> = deltas.iter().zip(&w).map(|(d, w)| w * d[j]).collect();
            u.sort_by(f32::total_cmp);
            let delta = u[1].clamp(-c, c);
            same_bits(name, j, got[j], b[j] + delta);
        }
    });

    // On a stack, with one bound per model, then task arithmetic.
    let text = "base: models/base\nmodels:\n  - path: models/code\n    params: { cap: 0.001 }\n  \
         - path: models/math\n    params: { cap: 0.002 }\n  - path: models/chat\n    \
         params: { cap: 0.004 }\nmerge: robust::clip(max_abs=$cap) |> sum\ndtype: float32\n";
    ws.recipe("r2.yaml", text);
    ok(&run_in(
        ws.path(),
        &[
            "merge",
            "r2.yaml",
            "-o",
            "out2",
            "--quiet",
            "--plugin",
            robust.to_str().unwrap(),
        ],
    ));
    let caps = [0.001f64 as f32, 0.002f64 as f32, 0.004f64 as f32];
    each_tensor(&ws, "out2", |name, b, deltas, got| {
        for j in 0..b.len() {
            let delta = deltas
                .iter()
                .zip(&caps)
                .fold(0f32, |acc, (d, &c)| acc + d[j].clamp(-c, c));
            same_bits(name, j, got[j], b[j] + delta);
        }
    });
}

#[test]
fn random_plugin_operators_are_deterministic_under_chunking_and_threads() {
    let ws = Workspace::new(Dtype::BF16, None);
    let fixture = build::fixture();
    ws.recipe(
        "r.yaml",
        &recipe(
            &ws,
            "fixture::jitter(amount=0.001) |> sum",
            &[fixture],
            "seed: 5\n",
        ),
    );
    ok(&run_in(
        ws.path(),
        &[
            "merge",
            "r.yaml",
            "-o",
            "one",
            "--quiet",
            "--threads",
            "1",
            "--chunk",
            "4096",
        ],
    ));
    ok(&run_in(
        ws.path(),
        &[
            "merge",
            "r.yaml",
            "-o",
            "two",
            "--quiet",
            "--threads",
            "2",
            "--chunk",
            "16384",
        ],
    ));
    assert_eq!(
        tensors(&ws.path().join("one")),
        tensors(&ws.path().join("two"))
    );
    each_tensor(&ws, "one", |name, b, deltas, got| {
        let streams: Vec<Stream> = (0..3).map(|i| Stream::new(5, name, i)).collect();
        for j in 0..b.len() {
            let delta = deltas.iter().zip(&streams).fold(0f32, |acc, (d, s)| {
                let u = f64::from(s.draw(j as u64)) / 4_294_967_296.0;
                acc + (d[j] + (0.001 * (2.0 * u - 1.0)) as f32)
            });
            same_bits(name, j, got[j], b[j] + delta);
        }
    });
}

#[test]
fn whole_tensor_operators_see_the_whole_tensor() {
    let ws = Workspace::new(Dtype::F32, None);
    let fixture = build::fixture();
    ws.recipe(
        "r.yaml",
        &recipe(&ws, "sum |> fixture::center", &[fixture], ""),
    );
    // Chunks of 4096 elements: every tensor but the norms spans several chunks, and
    // `center` refuses to run on less than a whole tensor.
    ok(&run_in(
        ws.path(),
        &[
            "merge",
            "r.yaml",
            "-o",
            "out",
            "--quiet",
            "--chunk",
            "4096",
            "--threads",
            "2",
        ],
    ));
    each_tensor(&ws, "out", |name, b, deltas, got| {
        let sum: Vec<f32> = (0..b.len())
            .map(|j| deltas.iter().fold(0f32, |acc, d| acc + d[j]))
            .collect();
        let mean = sum.iter().map(|&x| f64::from(x)).sum::<f64>() / sum.len() as f64;
        for j in 0..b.len() {
            same_bits(name, j, got[j], b[j] + (sum[j] - mean as f32));
        }
    });
}

#[test]
fn operators_may_read_the_base_and_the_fisher() {
    let ws = Workspace::new(Dtype::F32, None);
    let fixture = build::fixture();
    let models: String = TASKS
        .iter()
        .map(|t| format!("  - path: models/{t}\n    fisher: fisher/{t}.safetensors\n"))
        .collect();
    ws.recipe(
        "r.yaml",
        &format!(
            "base: models/base\nmodels:\n{models}merge: fixture::anchor(decay=0.01)\n\
             dtype: float32\nplugins: [{:?}]\n",
            ship(&ws, fixture)
        ),
    );
    ok(&run_in(
        ws.path(),
        &["merge", "r.yaml", "-o", "out", "--quiet"],
    ));
    let fishers: Vec<Checkpoint> = TASKS
        .iter()
        .map(|t| Checkpoint::open(&ws.path().join(format!("fisher/{t}.safetensors"))).unwrap())
        .collect();
    let decay = 0.01f64 as f32;
    each_tensor(&ws, "out", |name, b, deltas, got| {
        let f: Vec<Vec<f32>> = fishers.iter().map(|c| values(c, name)).collect();
        for j in 0..b.len() {
            let (mut num, mut den) = (0f32, 0f32);
            for i in 0..3 {
                num += f[i][j] * deltas[i][j];
                den += f[i][j];
            }
            let mean = if den > 0.0 { num / den } else { 0.0 };
            same_bits(name, j, got[j], b[j] + (mean - decay * b[j]));
        }
    });

    // Without Fisher files the recipe is refused before anything is read.
    ws.recipe("r2.yaml", &recipe(&ws, "fixture::anchor", &[fixture], ""));
    let stderr = fails(&run_in(ws.path(), &["check", "r2.yaml"]), 2);
    assert!(
        stderr.contains("`fixture::anchor` needs each model's Fisher information"),
        "{stderr}"
    );
}

/// `rows::keep` as plugins/rows documents it, on one run of `n` values.
fn keep_run(v: &[f32], density: f64, rescale: bool) -> Vec<f32> {
    let k = ((density * v.len() as f64).ceil() as usize).clamp(1, v.len());
    let mut mags: Vec<f32> = v.iter().map(|x| x.abs()).collect();
    mags.sort_by(|a, b| b.total_cmp(a));
    let threshold = mags[k - 1];
    let scale = if rescale { (1.0 / density) as f32 } else { 1.0 };
    v.iter()
        .map(|&x| if x.abs() >= threshold { x * scale } else { 0.0 })
        .collect()
}

/// Columns of a tensor seen as a `[rows, columns]` matrix (its outermost dimension).
fn columns(base: &Checkpoint, name: &str) -> usize {
    let t = base.get(name).unwrap();
    match t.shape.first() {
        Some(&rows) if rows > 0 => t.numel() / rows,
        _ => t.numel(),
    }
}

#[test]
fn rows_keep_reads_the_tensor_shape() {
    let ws = Workspace::new(Dtype::F32, None);
    let base = Checkpoint::open(&ws.model("base")).unwrap();
    for (scope, rowwise) in [("rows", true), ("tensor", false)] {
        let merge = format!("rows::keep(density=0.3, scope={scope}, rescale=true) |> sum");
        ws.recipe("r.yaml", &recipe(&ws, &merge, &[build::rows()], ""));
        let out = format!("out-{scope}");
        ok(&run_in(
            ws.path(),
            &["merge", "r.yaml", "-o", &out, "--quiet"],
        ));
        each_tensor(&ws, &out, |name, b, deltas, got| {
            let cols = if rowwise {
                columns(&base, name)
            } else {
                b.len()
            };
            let trimmed: Vec<Vec<f32>> = deltas
                .iter()
                .map(|d| {
                    d.chunks(cols)
                        .flat_map(|row| keep_run(row, 0.3, true))
                        .collect()
                })
                .collect();
            for j in 0..b.len() {
                let delta = trimmed.iter().fold(0f32, |acc, t| acc + t[j]);
                same_bits(name, j, got[j], b[j] + delta);
            }
        });
    }
}

#[test]
fn rows_agree_is_a_voted_to_voted_stage() {
    let ws = Workspace::new(Dtype::F32, None);
    let base = Checkpoint::open(&ws.model("base")).unwrap();
    let merge = "elect |> rows::agree(min_share=0.6) |> disjoint(sum)";
    ws.recipe("r.yaml", &recipe(&ws, merge, &[build::rows()], ""));
    ok(&run_in(
        ws.path(),
        &["merge", "r.yaml", "-o", "out", "--quiet"],
    ));
    let mut zeroed = 0;
    each_tensor(&ws, "out", |name, b, deltas, got| {
        let cols = columns(&base, name);
        // The elected sign: that of the summed task vectors (+1 at zero).
        let sign: Vec<f32> = (0..b.len())
            .map(|j| {
                let score = deltas.iter().fold(0f32, |acc, d| acc + d[j]);
                if score >= 0.0 {
                    1.0
                } else {
                    -1.0
                }
            })
            .collect();
        let kept: Vec<Vec<f32>> = deltas
            .iter()
            .map(|d| {
                let mut out = d.clone();
                for (r, row) in out.chunks_mut(cols).enumerate() {
                    let s = &sign[r * cols..(r + 1) * cols];
                    let nonzero = row.iter().filter(|x| **x != 0.0).count();
                    let agreeing = row
                        .iter()
                        .zip(s)
                        .filter(|(x, s)| **x != 0.0 && (**x > 0.0) == (**s > 0.0))
                        .count();
                    if nonzero > 0 && (agreeing as f64) < 0.6 * nonzero as f64 {
                        row.fill(0.0);
                        zeroed += 1;
                    }
                }
                out
            })
            .collect();
        for j in 0..b.len() {
            let delta = kept
                .iter()
                .filter(|k| k[j] * sign[j] > 0.0)
                .fold(0f32, |acc, k| acc + k[j]);
            same_bits(name, j, got[j], b[j] + delta);
        }
    });
    assert!(zeroed > 0, "no row was zeroed: the test shows nothing");
}

#[test]
fn a_plugin_built_for_abi_1_0_still_runs() {
    let ws = Workspace::new(Dtype::F32, None);
    let old = build::misbehaving("ABI_1_0", &[]);
    ws.recipe(
        "r.yaml",
        &recipe(&ws, "misbehaving::twice |> sum", &[&old], ""),
    );
    ok(&run_in(
        ws.path(),
        &["merge", "r.yaml", "-o", "out", "--quiet"],
    ));
    each_tensor(&ws, "out", |name, b, deltas, got| {
        for j in 0..b.len() {
            let delta = deltas.iter().fold(0f32, |acc, d| acc + d[j]);
            same_bits(name, j, got[j], b[j] + delta);
        }
    });
}

#[test]
fn a_delta_stage_may_read_the_task_vectors_and_the_layer() {
    let ws = Workspace::new(Dtype::F32, None);
    // `trim` first: the task vectors the stage sees are the trimmed ones.
    let merge = "trim(0.5) |> sum |> fixture::echo";
    ws.recipe("r.yaml", &recipe(&ws, merge, &[build::fixture()], ""));
    ok(&run_in(
        ws.path(),
        &["merge", "r.yaml", "-o", "out", "--quiet"],
    ));
    ws.recipe("t.yaml", &recipe(&ws, "trim(0.5) |> sum", &[], ""));
    ok(&run_in(
        ws.path(),
        &["merge", "t.yaml", "-o", "trimmed", "--quiet"],
    ));
    let trimmed = Checkpoint::open(&ws.path().join("trimmed")).unwrap();
    let mut layered = 0;
    each_tensor(&ws, "out", |name, b, _, got| {
        let layer = name
            .strip_prefix("model.layers.")
            .and_then(|rest| rest.split('.').next())
            .map_or(0, |n| n.parse::<usize>().unwrap());
        layered += usize::from(layer > 0);
        let sum = values(&trimmed, name);
        // Σ δ' of the trimmed task vectors is what `sum` merged: θ − θ_base.
        for j in 0..b.len() {
            let delta = sum[j] - b[j];
            let want = b[j] + (delta + layer as f32 * delta);
            assert!(
                (got[j] - want).abs() <= 1e-6 * (1.0 + want.abs()),
                "{name}[{j}]: got {}, want {want}",
                got[j]
            );
        }
    });
    assert!(layered > 0);
}

#[cfg(unix)]
#[test]
fn isolated_plugin_calls_give_the_same_bits() {
    let ws = Workspace::new(Dtype::F32, None);
    let merge = "rows::keep(density=0.4) |> robust::median |> fixture::echo";
    let plugins = [build::rows(), build::robust(), build::fixture()];
    ws.recipe("r.yaml", &recipe(&ws, merge, &plugins, ""));
    ws.recipe(
        "v.yaml",
        &recipe(&ws, "elect |> rows::agree |> disjoint", &plugins, ""),
    );
    for recipe in ["r.yaml", "v.yaml"] {
        ok(&run_in(
            ws.path(),
            &["merge", recipe, "-o", "in-process", "--quiet", "--force"],
        ));
        ok(&run_in(
            ws.path(),
            &[
                "merge",
                recipe,
                "-o",
                "isolated",
                "--quiet",
                "--force",
                "--isolate-plugins",
            ],
        ));
        assert_eq!(
            tensors(&ws.path().join("in-process")),
            tensors(&ws.path().join("isolated")),
            "{recipe}"
        );
    }
}

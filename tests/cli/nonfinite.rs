//! NaN and infinities (issue: hostile input): refused where they are read, made or
//! written, with the tensor, the element and where they came from; statistics that
//! would spread one over a whole tensor refuse it too; `--allow-nonfinite` keeps
//! them; `check --scan` finds them before a merge; numbers beyond f32 are refused
//! where they are written; F64 tensors are merged (at f32 precision), not copied.

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use reefknot_io::{Checkpoint, Dtype};

use crate::util::*;

/// Sets element `element` of the first tensor of `model` whose name contains `part`
/// to `value` (in the tensor's dtype), in place; returns the tensor's name.
fn poke(model: &Path, part: &str, element: usize, value: f32) -> String {
    let c = Checkpoint::open(model).unwrap();
    let info = c
        .tensors()
        .iter()
        .find(|t| t.name.contains(part))
        .unwrap_or_else(|| panic!("no tensor with {part}"))
        .clone();
    let file = c.files()[info.file].clone();
    drop(c);
    let mut bytes = vec![0u8; info.dtype.size()];
    reefknot_io::from_f32(info.dtype, &[value], &mut bytes);
    let mut f = fs::OpenOptions::new().write(true).open(file).unwrap();
    f.seek(SeekFrom::Start((info.start + element * bytes.len()) as u64))
        .unwrap();
    f.write_all(&bytes).unwrap();
    info.name
}

const TENSOR: &str = "layers.0.mlp.up_proj";

#[test]
fn an_infinity_in_a_fine_tune_fails_the_merge_naming_tensor_model_and_element() {
    let ws = Workspace::new(Dtype::BF16, None);
    let tensor = poke(&ws.model("math"), TENSOR, 5, f32::INFINITY);
    ws.recipe("r.yaml", &recipe_with("dare(0.5, rescale=l1) |> sum"));
    let before = ws.entries();
    let stderr = fails(&run_in(ws.path(), &["merge", "r.yaml", "-o", "out"]), 1);
    assert!(
        stderr.contains("model 2")
            && stderr.contains("math")
            && stderr.contains(&tensor)
            && stderr.contains("element 5")
            && stderr.contains("inf")
            && stderr.contains("--allow-nonfinite"),
        "{stderr}"
    );
    // Nothing written, nothing left behind.
    assert_eq!(ws.entries(), before);
}

#[test]
fn a_nan_in_the_base_is_named_as_the_base() {
    let ws = Workspace::new(Dtype::F32, None);
    let tensor = poke(&ws.model("base"), TENSOR, 0, f32::NAN);
    ws.recipe("r.yaml", &recipe_with("ties(trim(0.2), elect, disjoint)"));
    let stderr = fails(&run_in(ws.path(), &["merge", "r.yaml", "-o", "out"]), 1);
    assert!(
        stderr.contains("the base")
            && stderr.contains(&tensor)
            && stderr.contains("NaN")
            && stderr.contains("element 0"),
        "{stderr}"
    );
}

/// One Inf (or NaN) that `dare` drops used to rescale every kept entry of the tensor
/// (by 5.6e12, or 0.643): the L1 norm absorbed it. Even when non-finite values are
/// allowed, the norm refuses to be used.
#[test]
fn the_l1_rescale_never_spreads_a_bad_value_over_the_tensor() {
    let ws = Workspace::new(Dtype::F32, None);
    for (value, shown) in [(f32::INFINITY, "inf"), (f32::NAN, "NaN")] {
        poke(&ws.model("math"), TENSOR, 3, value);
        for expr in [
            "dare(0.9, rescale=l1) |> sum",
            "trim(0.2, rescale=l1) |> sum",
            "della(0.5, 0.1) |> sum",
        ] {
            ws.recipe("r.yaml", &recipe_with(expr));
            let out = run_in(
                ws.path(),
                &["merge", "r.yaml", "-o", "out", "--allow-nonfinite"],
            );
            let stderr = fails(&out, 1);
            assert!(
                stderr.contains("L1 norm of task vector 2") && stderr.contains(shown),
                "{expr}, {shown}: {stderr}"
            );
            assert!(!ws.path().join("out").exists());
        }
    }
}

#[test]
fn allow_nonfinite_writes_them_through() {
    let ws = Workspace::new(Dtype::F32, None);
    let tensor = poke(&ws.model("code"), TENSOR, 7, f32::NEG_INFINITY);
    ws.recipe("r.yaml", &recipe_with("sum"));
    ok(&run_in(
        ws.path(),
        &[
            "merge",
            "r.yaml",
            "-o",
            "out",
            "--allow-nonfinite",
            "--quiet",
        ],
    ));
    let merged = Checkpoint::open(&ws.path().join("out")).unwrap();
    let v = values(&merged, &tensor);
    assert_eq!(v[7], f32::NEG_INFINITY);
    assert!(v.iter().enumerate().all(|(i, x)| i == 7 || x.is_finite()));
}

#[test]
fn a_nan_in_a_fisher_file_is_named_whether_summed_or_merged() {
    let ws = Workspace::new(Dtype::F32, None);
    let tensor = poke(
        &ws.path().join("fisher/math.safetensors"),
        TENSOR,
        4,
        f32::NAN,
    );
    let models: String = TASKS
        .iter()
        .map(|t| format!("  - path: models/{t}\n    fisher: fisher/{t}.safetensors\n"))
        .collect();
    for merge in ["fisher", "fisher(normalize=true)"] {
        ws.recipe(
            "r.yaml",
            &format!("base: models/base\nmodels:\n{models}merge: {merge}\n"),
        );
        let stderr = fails(&run_in(ws.path(), &["merge", "r.yaml", "-o", "out"]), 1);
        assert!(
            stderr.contains("the Fisher values of model 2")
                && stderr.contains("fisher/math.safetensors")
                && stderr.contains(&format!("NaN at element 4 of `{tensor}`")),
            "{merge}: {stderr}"
        );
    }
}

#[test]
fn an_f64_value_beyond_f32_is_named_as_such() {
    let ws = Workspace::new(Dtype::F64, None);
    let c = Checkpoint::open(&ws.model("chat")).unwrap();
    let info = c
        .tensors()
        .iter()
        .find(|t| t.name.contains(TENSOR))
        .unwrap()
        .clone();
    let file = c.files()[info.file].clone();
    drop(c);
    let mut f = fs::OpenOptions::new().write(true).open(file).unwrap();
    f.seek(SeekFrom::Start((info.start + 8 * 9) as u64))
        .unwrap();
    f.write_all(&1e300f64.to_le_bytes()).unwrap();
    ws.recipe("r.yaml", &recipe_with("sum"));
    let stderr = fails(&run_in(ws.path(), &["merge", "r.yaml", "-o", "out"]), 1);
    assert!(
        stderr.contains("model 3")
            && stderr.contains("holds 1e300 at element 9")
            && stderr.contains("beyond the range of f32"),
        "{stderr}"
    );
}

#[test]
fn a_stage_that_overflows_is_named() {
    let ws = Workspace::new(Dtype::F32, None);
    ws.recipe("r.yaml", &recipe_with("sum |> scale(3e38) |> scale(1000)"));
    let stderr = fails(&run_in(ws.path(), &["merge", "r.yaml", "-o", "out"]), 1);
    assert!(
        stderr.contains("stage 3 of the pipeline (`scale(lambda=1000)`)")
            && stderr.contains("from finite values"),
        "{stderr}"
    );
}

#[test]
fn a_sum_that_overflows_is_named() {
    let ws = Workspace::new(Dtype::F32, None);
    // Task vectors of 1e38 each: the merged 1.5e38 is finite, the base plus it is not.
    let tensor = poke(&ws.model("base"), TENSOR, 2, 2e38);
    for m in TASKS {
        poke(&ws.model(m), TENSOR, 2, 3e38);
    }
    ws.recipe("r.yaml", &recipe_with("sum |> scale(0.5)"));
    let stderr = fails(&run_in(ws.path(), &["merge", "r.yaml", "-o", "out"]), 1);
    assert!(
        stderr.contains("adding the merged task vector to the base gives inf")
            && stderr.contains(&format!("element 2 of `{tensor}`")),
        "{stderr}"
    );
}

#[test]
fn a_merged_value_the_output_dtype_cannot_hold_is_refused() {
    let ws = Workspace::new(Dtype::F32, None);
    ws.recipe("r.yaml", &recipe_with("sum |> scale(1e8)"));
    let stderr = fails(
        &run_in(
            ws.path(),
            &["merge", "r.yaml", "-o", "out", "--dtype", "float16"],
        ),
        1,
    );
    assert!(
        stderr.contains("is beyond the range of F16: it would be written as an infinity"),
        "{stderr}"
    );
    // In float32 the same merge is fine.
    ok(&run_in(
        ws.path(),
        &["merge", "r.yaml", "-o", "out", "--quiet"],
    ));
}

#[test]
fn weights_and_numbers_beyond_f32_are_refused_where_they_are_written() {
    let ws = Workspace::new(Dtype::F32, None);
    ws.recipe(
        "w.yaml",
        "base: models/base\nmodels:\n  - path: models/code\n    weight: 1e39\n  - path: models/math\nmerge: linear\n",
    );
    let stderr = fails(&run_in(ws.path(), &["check", "w.yaml"]), 2);
    assert!(
        stderr.contains("`weight` is too large: merges compute in 32-bit floats")
            && stderr.contains("largest 32-bit float"),
        "{stderr}"
    );
    ws.recipe("s.yaml", &recipe_with("sum |> scale(1e39)"));
    let stderr = fails(&run_in(ws.path(), &["check", "s.yaml"]), 2);
    assert!(
        stderr.contains("`1e39` is too large") && stderr.contains("32-bit floats"),
        "{stderr}"
    );
    ws.recipe(
        "p.yaml",
        &format!(
            "{}params: {{ f: 1.0e39 }}\n",
            recipe_with("sum |> scale($f)")
        ),
    );
    let stderr = fails(&run_in(ws.path(), &["check", "p.yaml"]), 2);
    assert!(stderr.contains("too large"), "{stderr}");
}

#[test]
fn f64_tensors_are_merged_at_f32_precision_not_copied() {
    let f64s = Workspace::new(Dtype::F64, None);
    let f32s = Workspace::new(Dtype::F32, None);
    for ws in [&f64s, &f32s] {
        ws.recipe("r.yaml", &recipe_with("ties(trim(0.2), elect, disjoint)"));
    }
    let plan = ok(&run_in(f64s.path(), &["check", "r.yaml"]));
    assert!(
        plan.contains("F64 tensors are merged at f32 precision") && !plan.contains("copied"),
        "{plan}"
    );
    for ws in [&f64s, &f32s] {
        ok(&run_in(
            ws.path(),
            &["merge", "r.yaml", "-o", "out", "--quiet"],
        ));
    }
    // The same family in F64 (its values are f32 values) merges to the same numbers.
    let a = Checkpoint::open(&f64s.path().join("out")).unwrap();
    let b = Checkpoint::open(&f32s.path().join("out")).unwrap();
    let base = Checkpoint::open(&f64s.model("base")).unwrap();
    let mut changed = 0;
    for t in b.tensors() {
        assert_eq!(a.get(&t.name).unwrap().dtype, Dtype::F64, "{}", t.name);
        assert_eq!(values(&a, &t.name), values(&b, &t.name), "{}", t.name);
        changed += usize::from(values(&a, &t.name) != values(&base, &t.name));
    }
    assert!(changed > 0, "the F64 tensors were merged");
}

#[test]
fn check_scan_finds_them_before_a_merge() {
    let ws = Workspace::new(Dtype::BF16, None);
    ws.recipe("r.yaml", &recipe_with("ties(trim(0.2), elect, disjoint)"));
    let clean = ok(&run_in(ws.path(), &["check", "r.yaml", "--scan"]));
    assert!(
        clean.contains("scanned: no NaN or infinite values"),
        "{clean}"
    );

    let tensor = poke(&ws.model("code"), TENSOR, 11, f32::NAN);
    poke(&ws.model("code"), TENSOR, 12, f32::INFINITY);
    poke(&ws.model("code"), TENSOR, 40, f32::NAN);
    let stderr = fails(&run_in(ws.path(), &["check", "r.yaml", "--scan"]), 1);
    assert!(
        stderr.contains(&format!(
            "models/code): `{tensor}`: 2 NaN, 1 infinite, the first at element 11"
        )) && stderr.contains("model 1 (")
            && stderr.contains("1 tensor that the merge reads holds NaN"),
        "{stderr}"
    );
    let out = run_in(
        ws.path(),
        &["check", "r.yaml", "--scan", "--allow-nonfinite"],
    );
    let stdout = ok(&out);
    assert!(
        stdout.contains("merge --allow-nonfinite writes them"),
        "{stdout}"
    );
    // Without --scan, check reads no tensor data and says nothing about them.
    ok(&run_in(ws.path(), &["check", "r.yaml"]));
}

#[test]
fn threads_and_chunks_out_of_range_are_refused() {
    let ws = Workspace::new(Dtype::F32, None);
    ws.recipe("r.yaml", &recipe_with("sum"));
    for threads in ["1000000", "0"] {
        let stderr = fails(
            &run_in(
                ws.path(),
                &["merge", "r.yaml", "-o", "out", "--threads", threads],
            ),
            2,
        );
        assert!(stderr.contains("8 per CPU"), "{threads}: {stderr}");
    }
    for chunk in ["18446744073709551615", "18446744073709551600", "0"] {
        let stderr = fails(
            &run_in(
                ws.path(),
                &["merge", "r.yaml", "-o", "out", "--chunk", chunk],
            ),
            2,
        );
        assert!(
            stderr.contains("chunks are 1 to 16777216 elements"),
            "{chunk}: {stderr}"
        );
    }
    assert!(!ws.path().join("out").exists());
}

/// Chunks run in parallel, but the value reported is the input's first bad one.
#[test]
fn the_first_bad_value_is_reported_whatever_the_threads() {
    let ws = Workspace::new(Dtype::F32, None);
    let c = Checkpoint::open(&ws.model("math")).unwrap();
    let info = c
        .tensors()
        .iter()
        .find(|t| t.name.contains(TENSOR))
        .unwrap()
        .clone();
    drop(c);
    let n = info.numel();
    for k in [n - 1, n / 2, 40] {
        poke(&ws.model("math"), TENSOR, k, f32::NAN);
    }
    ws.recipe("r.yaml", &recipe_with("sum"));
    for threads in ["1", "2", "4"] {
        let stderr = fails(
            &run_in(
                ws.path(),
                &[
                    "merge",
                    "r.yaml",
                    "-o",
                    "out",
                    "--threads",
                    threads,
                    "--chunk",
                    "16",
                ],
            ),
            1,
        );
        assert!(
            stderr.contains("NaN at element 40 of"),
            "{threads}: {stderr}"
        );
    }
}

/// Tensors run in parallel, but the tensor reported is the first failing one in the
/// output's order.
#[test]
fn the_first_bad_tensor_is_reported_whatever_the_threads() {
    let ws = Workspace::new(Dtype::F32, None);
    let c = Checkpoint::open(&ws.model("code")).unwrap();
    let names: Vec<String> = c.tensors().iter().map(|t| t.name.clone()).collect();
    drop(c);
    let (first, last) = (&names[1], &names[names.len() - 1]);
    poke(&ws.model("code"), last, 0, f32::NAN);
    poke(&ws.model("code"), first, 0, f32::NAN);
    ws.recipe("r.yaml", &recipe_with("sum"));
    for threads in ["1", "2", "4"] {
        let stderr = fails(
            &run_in(
                ws.path(),
                &["merge", "r.yaml", "-o", "out", "--threads", threads],
            ),
            1,
        );
        assert!(
            stderr.contains(&format!("element 0 of `{first}`")),
            "{threads}: {stderr}"
        );
    }
}

//! Golden tests of the subspace operators (`tsv`, `iso`, `iso_cts`) against
//! FusionBench's implementations of TSV-M, Iso-C and Iso-CTS.
//!
//! `scripts/golden/make_subspace_golden.py` ran FusionBench 0.2.33's functions, in
//! float64, on the golden float32 Llama family and wrote, per case,
//! `tests/fixtures/subspace/<case>/expected.safetensors` (the float32 base plus the
//! merged task vector rounded to float32) and the equivalent reefknot `recipe.yaml`.
//! Each case is merged by the reefknot binary and compared tensor by tensor. SVDs
//! from two libraries agree to rounding, not bit for bit: a matrix passes when
//! `max_j |a_j − b_j| ≤ 2e-6 · max_j |b_j − base_j|` (relative to the size of its
//! merged task vector; measured: at most 1e-6, the float32 rounding of the output),
//! a tensor that is not a matrix (a norm: the plain mean in both tools) at `1e-6`.
//! The family's task vectors are full rank: where a matrix has no rank in some
//! directions, reefknot leaves them out and FusionBench's SVD completes them
//! arbitrarily, so the two are not compared there.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use safetensors::{Dtype, SafeTensors};

/// Every case folder the generator writes.
const CASES: &[&str] = &[
    "tsv",
    "tsv_weighted",
    "tsv_alpha",
    "iso",
    "iso_scaled",
    "iso_exclude_embeddings",
    "iso_cts",
    "iso_cts_half",
    "iso_weighted",
    "iso_cts_weighted",
    "iso_cts_two",
    "tsv_two",
];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Every tensor of a float32 safetensors file, with its shape.
fn read(path: &Path) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), Dtype::F32, "{name}");
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name, (view.shape().to_vec(), values))
        })
        .collect()
}

#[test]
fn subspace_operators_give_fusionbenchs_numbers() {
    let base = read(&fixtures().join("golden/llama_f32/base/model.safetensors"));
    let mut report = Vec::new();
    for case in CASES {
        let dir = fixtures().join("subspace").join(case);
        let out = tempfile::tempdir().unwrap();
        let merged = out.path().join("out");
        let status = Command::new(env!("CARGO_BIN_EXE_reefknot"))
            .arg("merge")
            .arg(dir.join("recipe.yaml"))
            .arg("-o")
            .arg(&merged)
            .arg("-q")
            .output()
            .unwrap();
        assert!(
            status.status.success(),
            "{case}: {}",
            String::from_utf8_lossy(&status.stderr)
        );
        let ours = read(&merged.join("model.safetensors"));
        let theirs = read(&dir.join("expected.safetensors"));
        assert_eq!(
            ours.keys().collect::<Vec<_>>(),
            theirs.keys().collect::<Vec<_>>(),
            "{case}: tensor names"
        );
        let mut worst = 0f64;
        for (name, (shape, b)) in &theirs {
            let (our_shape, a) = &ours[name];
            assert_eq!(our_shape, shape, "{case}: {name}");
            let theta = &base[name].1;
            let scale = b
                .iter()
                .zip(theta)
                .map(|(b, t)| f64::from((b - t).abs()))
                .fold(0f64, f64::max)
                .max(f64::MIN_POSITIVE);
            let diff = a
                .iter()
                .zip(b)
                .map(|(a, b)| f64::from((a - b).abs()))
                .fold(0f64, f64::max);
            let rel = diff / scale;
            let tolerance = if shape.len() == 2 { 2e-6 } else { 1e-6 };
            assert!(
                rel <= tolerance,
                "{case}: {name} differs from FusionBench by {rel:.2e} of its merged task vector"
            );
            if shape.len() == 2 {
                worst = worst.max(rel);
            }
        }
        report.push(format!("{case}: worst matrix {worst:.1e}"));
    }
    eprintln!("{}", report.join("\n"));
}

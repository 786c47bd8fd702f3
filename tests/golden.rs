//! Golden tests: `reefknot merge` against mergekit's output for the same merge.
//!
//! Each folder `tests/fixtures/golden/<case>/` holds a reefknot `recipe.yaml`, the
//! equivalent `mergekit.yml`, mergekit's merged tensors (`expected.safetensors`) and
//! `golden.json` (the input folders and, for sparsifying cases, where the sparsifier
//! cuts). `scripts/golden/make_golden.py` makes them; `tests/fixtures/golden/README.md`
//! lists the cases.
//!
//! For each case the test runs `reefknot merge <case>/recipe.yaml -o <tmp>/out --quiet
//! --strict` and, through the mergekit front-end, `reefknot merge <case>/mergekit.yml`
//! (whose `reefknot convert` output, merged again, must write the same files byte for
//! byte), reads every shard of the output and compares tensor by tensor: the set of names,
//! each shape and dtype must be equal, and the values must agree:
//!
//! * float32: element `j` passes when `|a_j - b_j| <= 1e-6 * max(|b_j|, s_j)`, where `b`
//!   is mergekit's value, `a` reefknot's and `s_j` the largest `|value|` element `j`
//!   has in the base or any fine-tune. `s_j` is the scale of the operands every
//!   float32 formula combines at `j`: an algebraically equal formula (mergekit's
//!   `linear` averages whole models, reefknot's `mean` averages task vectors) differs
//!   by a few ulps of it, while a wrong choice of entry moves the result by a task
//!   vector entry, ~1e-2 of it.
//! * bfloat16: bit-identical or one ulp apart (one rounding of a float32 result a few
//!   float32 ulps away); the number of one-ulp differences is printed.
//! * Where the sparsifier's cut falls between entries of equal `|δ|`, mergekit's
//!   unstable sort keeps an arbitrary subset of the tied entries. At those positions
//!   (computed here from the inputs and the cut ranks in `golden.json`: every position
//!   whose `|δ_i|` equals the values on both sides of a cut of model `i`) any value is
//!   accepted, and the differences there are counted and printed. So is any value at
//!   the `borderline` positions `golden.json` lists (arcee_fusion: an importance within
//!   2e-3 of the threshold, where mergekit's float32 KL divergence, which cancels when
//!   the two softmaxes are close, may fall on either side).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use half::bf16;
use safetensors::{Dtype, SafeTensors};

/// Relative tolerance for float32 outputs (see the module docs for the scale).
const F32_RTOL: f64 = 1e-6;
/// Largest accepted distance, in bfloat16 ulps, outside tied positions.
const BF16_MAX_ULP: u32 = 1;

/// Every case folder `make_golden.py` writes.
const CASES: &[&str] = &[
    "ties_norm",
    "ties_sum",
    "ties_weights",
    "task_arithmetic",
    "linear",
    "ties_gradient_mlp",
    "ties_gradient_all",
    "ties_bf16",
    "dare_ties_d1",
    "breadcrumbs",
    "breadcrumbs_ties",
    "ties_rescale",
    "slerp",
    "slerp_bf16",
    "nearswap",
    "model_stock",
    "model_stock_rows_bf16",
    "della_d1_bf16",
    "linear_base_sum",
    "passthrough",
    "ram",
    "ramplus_tl_bf16",
    "nuslerp",
    "nuslerp_rows",
    "nuslerp_columns_bf16",
    "multislerp",
    "karcher",
    "karcher_with_base_bf16",
    "sce",
    "sce_all_bf16",
    "arcee_fusion",
    "dare_linear_stats",
    "della_linear_stats",
    "ties_example",
    "slerp_filters",
    "task_arithmetic_negation",
    "breadcrumbs_ties_global",
    "ties_fallthrough",
    "linear_base_listed",
    "slerp_slices",
    "frankenmerge_44",
    "frankenmerge_scaled",
    "slices_merged",
    "frankenmerge_empty_last",
    "slices_offset",
    "slices_varied_ties",
    "slices_varied_base",
    "slices_varied_linear",
    "lora_linear",
    "lora_ties",
    "lora_passthrough",
    "tokenizer_union_linear",
    "tokenizer_union_ties",
    "tokenizer_model",
    "tokenizer_base_permuted",
    "tokenizer_dict_union",
    "tokenizer_padded",
    "tokenizer_tokens",
    "tokenizer_slices",
];

fn golden_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden")
}

// ---------------------------------------------------------------------------
// tensors and model folders
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
enum Values {
    F32(Vec<f32>),
    /// bfloat16 bit patterns
    Bf16(Vec<u16>),
}

#[derive(Clone, Debug, PartialEq)]
struct Tensor {
    shape: Vec<usize>,
    values: Values,
}

impl Tensor {
    fn dtype_name(&self) -> &'static str {
        match self.values {
            Values::F32(_) => "F32",
            Values::Bf16(_) => "BF16",
        }
    }

    fn len(&self) -> usize {
        match &self.values {
            Values::F32(v) => v.len(),
            Values::Bf16(v) => v.len(),
        }
    }

    fn to_f32(&self) -> Vec<f32> {
        match &self.values {
            Values::F32(v) => v.clone(),
            Values::Bf16(v) => v.iter().map(|&b| bf16::from_bits(b).to_f32()).collect(),
        }
    }
}

type Model = BTreeMap<String, Tensor>;

fn read_safetensors(path: &Path) -> Result<Model, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Model::new();
    for (name, view) in st.tensors() {
        let data = view.data();
        let values = match view.dtype() {
            Dtype::F32 => Values::F32(
                data.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
            Dtype::BF16 => Values::Bf16(
                data.chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .collect(),
            ),
            other => {
                return Err(format!(
                    "{}: tensor {name}: dtype {other:?} is not F32 or BF16",
                    path.display()
                ))
            }
        };
        let shape = view.shape().to_vec();
        out.insert(name, Tensor { shape, values });
    }
    Ok(out)
}

/// Every tensor of a Hugging Face model folder: `model.safetensors`, or the shards
/// named by `model.safetensors.index.json` (which must agree with the shards).
fn read_model_dir(dir: &Path) -> Result<Model, String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!("{}: no .safetensors file", dir.display()));
    }
    let index_path = dir.join("model.safetensors.index.json");
    let index: Option<BTreeMap<String, String>> = if index_path.exists() {
        let text = std::fs::read_to_string(&index_path)
            .map_err(|e| format!("{}: {e}", index_path.display()))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", index_path.display()))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| format!("{}: no weight_map object", index_path.display()))?;
        let mut weight_map = BTreeMap::new();
        for (k, v) in map {
            let file = v
                .as_str()
                .ok_or_else(|| format!("{}: {k}: not a file name", index_path.display()))?;
            weight_map.insert(k.clone(), file.to_string());
        }
        Some(weight_map)
    } else {
        if files.len() > 1 {
            return Err(format!(
                "{}: {} .safetensors files but no model.safetensors.index.json",
                dir.display(),
                files.len()
            ));
        }
        None
    };
    let mut out = Model::new();
    for file in &files {
        let file_name = file
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        for (name, tensor) in read_safetensors(file)? {
            if let Some(map) = &index {
                match map.get(&name) {
                    Some(f) if *f == file_name => {}
                    Some(f) => {
                        return Err(format!(
                            "{}: tensor {name} is in {file_name} but the index says {f}",
                            dir.display()
                        ))
                    }
                    None => {
                        return Err(format!(
                            "{}: tensor {name} ({file_name}) is not in the index",
                            dir.display()
                        ))
                    }
                }
            }
            if out.insert(name.clone(), tensor).is_some() {
                return Err(format!("{}: tensor {name} appears twice", dir.display()));
            }
        }
    }
    if let Some(map) = &index {
        let missing: Vec<&String> = map.keys().filter(|k| !out.contains_key(*k)).collect();
        if !missing.is_empty() {
            return Err(format!(
                "{}: the index names tensors no shard holds: {missing:?}",
                dir.display()
            ));
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// golden.json and what the comparison derives from the inputs
// ---------------------------------------------------------------------------

struct Golden {
    base: PathBuf,
    models: Vec<PathBuf>,
    /// tensor -> per model -> cut ranks (in order of decreasing |δ|)
    cuts: BTreeMap<String, Vec<Vec<usize>>>,
    /// tensor -> flat indices where mergekit's float32 arithmetic may decide either way
    /// (arcee_fusion's importance within 2e-3 of its threshold)
    borderline: BTreeMap<String, Vec<usize>>,
    /// A random method, compared by statistics: `(density, epsilon)`.
    statistics: Option<(f64, f64)>,
    /// output tensor -> the input tensor it is made of, where the names differ (a
    /// layer stack renumbers layers)
    renamed: BTreeMap<String, String>,
    /// The output vocabulary of a case with a tokenizer, in mergekit's id order.
    vocabulary: Option<Vec<VocabToken>>,
    /// output tensor -> each model's input tensor, where a model reads another layer
    /// than the base (a slice's sources at other layers)
    renamed_models: BTreeMap<String, Vec<String>>,
    /// The rows of its vocabulary tensors when padded beyond the tokens
    /// (`pad_to_multiple_of`): each padding row the mean of the token rows.
    padded_rows: Option<usize>,
    /// The rows a tokenizer's `tokens` gives: token -> (the input folder and row it is
    /// read from, `None` for zeros; whether inputs that have the token take it too).
    token_rows: BTreeMap<String, (Option<(PathBuf, usize)>, bool)>,
}

/// A token of an output vocabulary: its text and, for every input that has it, its id
/// there (by the input's folder).
struct VocabToken {
    token: String,
    ids: BTreeMap<PathBuf, usize>,
}

/// Whether `name` is a vocabulary tensor (one row per token).
fn is_vocabulary_tensor(name: &str) -> bool {
    name.contains("embed_tokens") || name.starts_with("lm_head")
}

/// An input's vocabulary tensor `t` (of input `input`) with its rows in the output's
/// order: its own row where it has the token, else the row mergekit stands in (the
/// one holder's; the base's; the mean of the holders', models first).
fn permuted_rows(
    golden: &Golden,
    inputs: &BTreeMap<PathBuf, Vec<f32>>,
    cols: usize,
    input: &Path,
) -> Vec<f32> {
    let vocabulary = golden
        .vocabulary
        .as_ref()
        .expect("a case with a vocabulary");
    let row = |p: &Path, r: usize| &inputs[p][r * cols..(r + 1) * cols];
    let mut out = Vec::with_capacity(vocabulary.len() * cols);
    for t in vocabulary {
        let rule = golden.token_rows.get(&t.token);
        let forced = rule.is_some_and(|(_, force)| *force);
        if let (Some(&r), false) = (t.ids.get(input), forced) {
            out.extend_from_slice(row(input, r));
            continue;
        }
        if let Some((from, _)) = rule {
            match from {
                Some((p, r)) => out.extend_from_slice(row(p, *r)),
                None => out.extend(std::iter::repeat_n(0f32, cols)),
            }
            continue;
        }
        let holders: Vec<&Path> = golden
            .models
            .iter()
            .chain(std::iter::once(&golden.base))
            .map(PathBuf::as_path)
            .filter(|p| t.ids.contains_key(*p))
            .collect();
        let from: Vec<&Path> = if holders.len() > 1 && t.ids.contains_key(&golden.base) {
            vec![&golden.base]
        } else {
            holders
        };
        let mut sum = vec![0f32; cols];
        for p in &from {
            sum.iter_mut()
                .zip(row(p, t.ids[*p]))
                .for_each(|(s, x)| *s += x);
        }
        if from.len() > 1 {
            sum.iter_mut().for_each(|s| *s /= from.len() as f32);
        }
        out.extend_from_slice(&sum);
    }
    // Padding rows: the mean of the token rows (summed in float64).
    let tokens = vocabulary.len();
    for _ in tokens..golden.padded_rows.unwrap_or(tokens) {
        for c in 0..cols {
            let sum: f64 = (0..tokens).map(|r| f64::from(out[r * cols + c])).sum();
            out.push((sum / tokens as f64) as f32);
        }
    }
    out
}

fn load_golden(case_dir: &Path) -> Golden {
    let path = case_dir.join("golden.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run scripts/golden/make_golden.py)",
            path.display()
        )
    });
    let json: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let rel = |v: &serde_json::Value| -> PathBuf {
        case_dir.join(
            v.as_str()
                .unwrap_or_else(|| panic!("{}: path expected", path.display())),
        )
    };
    let base = rel(&json["base"]);
    let models = json["models"]
        .as_array()
        .unwrap_or_else(|| panic!("{}: models must be a list", path.display()))
        .iter()
        .map(rel)
        .collect();
    let mut cuts = BTreeMap::new();
    if let Some(map) = json["cuts"].as_object() {
        for (name, per_model) in map {
            let per_model: Vec<Vec<usize>> = serde_json::from_value(per_model.clone())
                .unwrap_or_else(|e| panic!("{}: cuts of {name}: {e}", path.display()));
            cuts.insert(name.clone(), per_model);
        }
    }
    let mut borderline = BTreeMap::new();
    if let Some(map) = json["borderline"].as_object() {
        for (name, indices) in map {
            let indices: Vec<usize> = serde_json::from_value(indices.clone())
                .unwrap_or_else(|e| panic!("{}: borderline of {name}: {e}", path.display()));
            borderline.insert(name.clone(), indices);
        }
    }
    let statistics = json.get("statistics").map(|st| {
        let get = |k: &str| st[k].as_f64().unwrap_or(0.0);
        (get("density"), get("epsilon"))
    });
    let renamed = match json.get("renamed") {
        Some(map) => serde_json::from_value(map.clone())
            .unwrap_or_else(|e| panic!("{}: renamed: {e}", path.display())),
        None => BTreeMap::new(),
    };
    let vocabulary = json.get("tokens").map(|tokens| {
        let tokens: Vec<(usize, String, BTreeMap<String, usize>)> =
            serde_json::from_value(tokens.clone())
                .unwrap_or_else(|e| panic!("{}: tokens: {e}", path.display()));
        tokens
            .into_iter()
            .enumerate()
            .map(|(i, (id, token, ids))| {
                assert_eq!(i, id, "{}: tokens in id order", path.display());
                VocabToken {
                    token,
                    ids: ids
                        .into_iter()
                        .map(|(p, id)| (case_dir.join(p), id))
                        .collect(),
                }
            })
            .collect()
    });
    let renamed_models = match json.get("renamed_models") {
        Some(map) => serde_json::from_value(map.clone())
            .unwrap_or_else(|e| panic!("{}: renamed_models: {e}", path.display())),
        None => BTreeMap::new(),
    };
    let padded_rows = json
        .get("padded_rows")
        .map(|v| v.as_u64().expect("padded_rows is a count") as usize);
    let token_rows = json
        .get("token_rows")
        .and_then(serde_json::Value::as_object)
        .into_iter()
        .flatten()
        .map(|(token, rule)| {
            let from = rule["from"].as_array().map(|f| {
                let folder = f[0].as_str().expect("token_rows: a folder");
                let row = f[1].as_u64().expect("token_rows: a row") as usize;
                (case_dir.join(folder), row)
            });
            let force = rule["force"].as_bool().expect("token_rows: force");
            (token.clone(), (from, force))
        })
        .collect();
    Golden {
        base,
        models,
        cuts,
        borderline,
        statistics,
        renamed,
        vocabulary,
        padded_rows,
        renamed_models,
        token_rows,
    }
}

/// Positions where a sparsifier cutting model `i`'s `|δ_i|` (sorted decreasingly) at
/// rank `c` may keep or drop an entry, because the entries on both sides of the cut
/// have the same magnitude: every position whose `|δ_i|` equals that magnitude.
/// Ties at magnitude 0 are ignored (a kept zero adds nothing).
fn tied_positions(deltas: &[Vec<f32>], cuts: &[Vec<usize>]) -> Vec<bool> {
    let n = deltas.first().map_or(0, Vec::len);
    let mut tied = vec![false; n];
    for (delta, model_cuts) in deltas.iter().zip(cuts) {
        let mut desc: Vec<f32> = delta.iter().map(|d| d.abs()).collect();
        desc.sort_by(|a, b| b.total_cmp(a));
        for &c in model_cuts {
            assert!(c > 0 && c < n, "cut rank {c} outside 1..{n}");
            let (above, below) = (desc[c - 1], desc[c]);
            if above == below && below != 0.0 {
                for (t, d) in tied.iter_mut().zip(delta) {
                    if d.abs() == below {
                        *t = true;
                    }
                }
            }
        }
    }
    tied
}

/// What the comparison of one tensor needs besides the two tensors.
struct Allowance {
    /// per element: the largest |value| in the base or any fine-tune
    scale: Vec<f32>,
    /// per element: an unstable sort may legitimately have chosen otherwise here
    tied: Vec<bool>,
}

fn allowances(golden: &Golden, names: &BTreeSet<String>) -> BTreeMap<String, Allowance> {
    let base = read_model_dir(&golden.base).unwrap_or_else(|e| panic!("fixture input: {e}"));
    let models: Vec<Model> = golden
        .models
        .iter()
        .map(|m| read_model_dir(m).unwrap_or_else(|e| panic!("fixture input: {e}")))
        .collect();
    let mut out = BTreeMap::new();
    for name in names {
        let input = golden.renamed.get(name).unwrap_or(name);
        let get = |m: &Model, which: &Path, input: &str| -> Vec<f32> {
            m.get(input)
                .unwrap_or_else(|| panic!("fixture input {}: no tensor {input}", which.display()))
                .to_f32()
        };
        let mut b = get(&base, &golden.base, input);
        let per_model = golden.renamed_models.get(name);
        let mut thetas: Vec<Vec<f32>> = models
            .iter()
            .zip(&golden.models)
            .enumerate()
            .map(|(i, (m, p))| get(m, p, per_model.map_or(input.as_str(), |n| n[i].as_str())))
            .collect();
        if golden.vocabulary.is_some() && is_vocabulary_tensor(name) {
            // Every input's rows in the output's order, as the merge saw them.
            let cols = base[input].shape[1];
            let inputs: BTreeMap<PathBuf, Vec<f32>> =
                std::iter::once((golden.base.clone(), b.clone()))
                    .chain(golden.models.iter().cloned().zip(thetas.iter().cloned()))
                    .collect();
            b = permuted_rows(golden, &inputs, cols, &golden.base);
            thetas = golden
                .models
                .iter()
                .map(|m| permuted_rows(golden, &inputs, cols, m))
                .collect();
        }
        let mut scale: Vec<f32> = b.iter().map(|x| x.abs()).collect();
        for theta in &thetas {
            for (s, x) in scale.iter_mut().zip(theta) {
                *s = s.max(x.abs());
            }
        }
        if let (Some(v), Some(_), true) = (
            &golden.vocabulary,
            golden.padded_rows,
            is_vocabulary_tensor(name),
        ) {
            // A padding row is a mean: its rounding is that of the sum, so its scale is
            // the largest |value| of its column among the token rows.
            let cols = base[input].shape[1];
            for c in 0..cols {
                let top = (0..v.len())
                    .map(|r| scale[r * cols + c])
                    .fold(0f32, f32::max);
                for r in v.len()..scale.len() / cols {
                    scale[r * cols + c] = scale[r * cols + c].max(top);
                }
            }
        }
        let tied = match golden.cuts.get(name) {
            Some(cuts) => {
                let deltas: Vec<Vec<f32>> = thetas
                    .iter()
                    .map(|t| t.iter().zip(&b).map(|(x, y)| x - y).collect())
                    .collect();
                tied_positions(&deltas, cuts)
            }
            None => vec![false; b.len()],
        };
        let mut tied = tied;
        for &j in golden.borderline.get(name).into_iter().flatten() {
            tied[j] = true;
        }
        out.insert(name.clone(), Allowance { scale, tied });
    }
    out
}

// ---------------------------------------------------------------------------
// the comparison
// ---------------------------------------------------------------------------

#[derive(Default, Debug)]
struct Report {
    failures: Vec<String>,
    elements: usize,
    /// bf16 elements exactly one ulp apart (outside tied positions)
    bf16_one_ulp: usize,
    /// elements that differ at a tied position (accepted)
    tie_differences: usize,
    /// tied positions in all
    tied: usize,
    /// largest |a - b| / max(|b|, s) over float32 elements outside tied positions
    worst_f32: f64,
}

impl Report {
    fn ok(&self) -> bool {
        self.failures.is_empty()
    }

    fn summary(&self) -> String {
        format!(
            "{} elements; worst float32 error {:.3e} of its scale (limit {F32_RTOL:e}); \
             bfloat16 elements one ulp apart: {}; tied positions: {} ({} of them differ, accepted)",
            self.elements, self.worst_f32, self.bf16_one_ulp, self.tied, self.tie_differences
        )
    }
}

fn index_string(shape: &[usize], mut flat: usize) -> String {
    let mut idx = vec![0; shape.len()];
    for (i, &d) in shape.iter().enumerate().rev() {
        if d > 0 {
            idx[i] = flat % d;
            flat /= d;
        }
    }
    format!("{idx:?}")
}

/// Order-preserving map of bfloat16 bits onto integers (+0 and -0 both map to 0),
/// so that the distance in ulps is a difference.
fn bf16_ordinal(bits: u16) -> i32 {
    let magnitude = i32::from(bits & 0x7fff);
    if bits & 0x8000 != 0 {
        -magnitude
    } else {
        magnitude
    }
}

fn bf16_is_nan(bits: u16) -> bool {
    bits & 0x7f80 == 0x7f80 && bits & 0x007f != 0
}

fn compare_tensor(
    name: &str,
    expected: &Tensor,
    actual: &Tensor,
    allow: &Allowance,
    report: &mut Report,
) {
    if expected.dtype_name() != actual.dtype_name() {
        report.failures.push(format!(
            "{name}: dtype {} but mergekit wrote {}",
            actual.dtype_name(),
            expected.dtype_name()
        ));
        return;
    }
    if expected.shape != actual.shape || expected.len() != actual.len() {
        report.failures.push(format!(
            "{name}: shape {:?} but mergekit wrote {:?}",
            actual.shape, expected.shape
        ));
        return;
    }
    assert_eq!(allow.scale.len(), expected.len(), "{name}: input size");
    report.elements += expected.len();
    report.tied += allow.tied.iter().filter(|t| **t).count();
    match (&expected.values, &actual.values) {
        (Values::F32(b), Values::F32(a)) => {
            let mut bad = 0usize;
            // (excess over the limit, index, |diff|, limit)
            let mut worst: Option<(f64, usize, f64, f64)> = None;
            for j in 0..b.len() {
                let (bj, aj) = (f64::from(b[j]), f64::from(a[j]));
                let reference = bj.abs().max(f64::from(allow.scale[j]));
                let limit = F32_RTOL * reference;
                let diff = (aj - bj).abs();
                let fine = !aj.is_nan() && !bj.is_nan() && (aj == bj || diff <= limit);
                if allow.tied[j] {
                    if aj.to_bits() != bj.to_bits() {
                        report.tie_differences += 1;
                    }
                    continue;
                }
                if fine && diff > 0.0 {
                    report.worst_f32 = report.worst_f32.max(diff / reference);
                }
                if !fine {
                    bad += 1;
                    let excess = if diff.is_nan() {
                        f64::INFINITY
                    } else {
                        diff / limit
                    };
                    if worst.is_none_or(|w| excess > w.0) {
                        worst = Some((excess, j, diff, limit));
                    }
                }
            }
            if let Some((_, j, diff, limit)) = worst {
                report.failures.push(format!(
                    "{name}: {bad} of {} elements off; worst at {} (flat {j}): \
                     reefknot {:e}, mergekit {:e}, |diff| {diff:e} > allowed {limit:e} \
                     (1e-6 x max(|mergekit|, largest |input| {:e}))",
                    b.len(),
                    index_string(&expected.shape, j),
                    a[j],
                    b[j],
                    allow.scale[j],
                ));
            }
        }
        (Values::Bf16(b), Values::Bf16(a)) => {
            let mut bad = 0usize;
            let mut worst: Option<(u32, usize)> = None;
            for j in 0..b.len() {
                let nan = bf16_is_nan(a[j]) || bf16_is_nan(b[j]);
                let ulps = bf16_ordinal(a[j]).abs_diff(bf16_ordinal(b[j]));
                if allow.tied[j] {
                    if a[j] != b[j] {
                        report.tie_differences += 1;
                    }
                    continue;
                }
                if nan || ulps > BF16_MAX_ULP {
                    bad += 1;
                    let size = if nan { u32::MAX } else { ulps };
                    if worst.is_none_or(|w| size > w.0) {
                        worst = Some((size, j));
                    }
                } else if ulps == 1 {
                    report.bf16_one_ulp += 1;
                }
            }
            if let Some((ulps, j)) = worst {
                report.failures.push(format!(
                    "{name}: {bad} of {} elements more than {BF16_MAX_ULP} ulp apart; worst at {} \
                     (flat {j}): reefknot {} ({:#06x}), mergekit {} ({:#06x}), {} ulps apart",
                    b.len(),
                    index_string(&expected.shape, j),
                    bf16::from_bits(a[j]),
                    a[j],
                    bf16::from_bits(b[j]),
                    b[j],
                    if ulps == u32::MAX {
                        "NaN".to_string()
                    } else {
                        ulps.to_string()
                    },
                ));
            }
        }
        _ => unreachable!("dtypes compared above"),
    }
}

fn compare_models(
    expected: &Model,
    actual: &Model,
    allowances: &BTreeMap<String, Allowance>,
) -> Report {
    let mut report = Report::default();
    let missing: Vec<&String> = expected
        .keys()
        .filter(|k| !actual.contains_key(*k))
        .collect();
    let extra: Vec<&String> = actual
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .collect();
    if !missing.is_empty() {
        report.failures.push(format!(
            "tensors missing from reefknot's output: {missing:?}"
        ));
    }
    if !extra.is_empty() {
        report
            .failures
            .push(format!("tensors mergekit did not write: {extra:?}"));
    }
    for (name, e) in expected {
        if let Some(a) = actual.get(name) {
            let allow = allowances
                .get(name)
                .unwrap_or_else(|| panic!("no allowance computed for {name}"));
            compare_tensor(name, e, a, allow, &mut report);
        }
    }
    report
}

// ---------------------------------------------------------------------------
// the golden cases
// ---------------------------------------------------------------------------

struct Fixture {
    dir: PathBuf,
    expected: Model,
    allowances: BTreeMap<String, Allowance>,
    golden: Golden,
}

fn load_fixture(case: &str) -> Fixture {
    let dir = golden_root().join(case);
    assert!(
        dir.join("recipe.yaml").is_file(),
        "{}: no recipe.yaml (run scripts/golden/make_golden.py)",
        dir.display()
    );
    let expected = read_safetensors(&dir.join("expected.safetensors"))
        .unwrap_or_else(|e| panic!("fixture: {e}"));
    let golden = load_golden(&dir);
    let names: BTreeSet<String> = expected.keys().cloned().collect();
    let allowances = allowances(&golden, &names);
    Fixture {
        dir,
        expected,
        allowances,
        golden,
    }
}

/// Runs `reefknot ARGS` in `dir` and returns stdout, failing the test with the output
/// otherwise.
fn reefknot(case: &str, dir: &Path, args: &[&std::ffi::OsStr]) -> Vec<u8> {
    let run = Command::new(env!("CARGO_BIN_EXE_reefknot"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run the reefknot binary");
    assert!(
        run.status.success(),
        "golden {case}: `reefknot {}` failed ({})\nstdout:\n{}\nstderr:\n{}",
        args.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" "),
        run.status,
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr),
    );
    run.stdout
}

/// Merges `file` (a reefknot recipe or a mergekit config in the case folder) into
/// `out`, with `--strict`: the fixtures hold nothing that has no effect.
fn merge(case: &str, file: &Path, out: &Path) {
    let args = [
        "merge".as_ref(),
        file.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
        "--quiet".as_ref(),
        "--strict".as_ref(),
    ];
    // relative paths in the recipe resolve against the recipe's folder, not here
    reefknot(case, out.parent().expect("a folder"), &args);
}

/// Merges the case's `file` and compares the output with mergekit's; the output is
/// `out` in the returned folder.
fn run_case(case: &str, file: &str) -> tempfile::TempDir {
    let fixture = load_fixture(case);
    let tmp = tempfile::tempdir().expect("temporary folder");
    let out = tmp.path().join("out");
    merge(case, &fixture.dir.join(file), &out);
    let mut actual =
        read_model_dir(&out).unwrap_or_else(|e| panic!("golden {case}: reefknot's output: {e}"));
    let mut vocabulary_failures = Vec::new();
    if let Some(vocabulary) = &fixture.golden.vocabulary {
        vocabulary_failures =
            in_mergekit_order(vocabulary, fixture.golden.padded_rows, &out, &mut actual);
    }
    if let Some((density, epsilon)) = fixture.golden.statistics {
        compare_statistics(case, &fixture, &actual, density, epsilon);
        return tmp;
    }
    let mut report = compare_models(&fixture.expected, &actual, &fixture.allowances);
    report.failures.extend(vocabulary_failures);
    // The output's configuration counts the layers mergekit wrote.
    let layers: BTreeSet<usize> = fixture
        .expected
        .keys()
        .filter_map(|n| n.split('.').nth(2).and_then(|l| l.parse().ok()))
        .collect();
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("config.json")).expect("the output's config.json"),
    )
    .expect("the output's config.json is JSON");
    if config["num_hidden_layers"].as_u64() != Some(layers.len() as u64) {
        report.failures.push(format!(
            "config.json has num_hidden_layers {}, but the output has {} layers",
            config["num_hidden_layers"],
            layers.len()
        ));
    }
    eprintln!("golden {case} ({file}): {}", report.summary());
    if !report.ok() {
        let mut msg = format!(
            "golden {case}: reefknot ({file}) disagrees with mergekit ({})\n",
            fixture.dir.join("mergekit.yml").display()
        );
        for f in &report.failures {
            let _ = writeln!(msg, "  {f}");
        }
        panic!("{msg}");
    }
    tmp
}

/// Checks reefknot's output vocabulary (its `tokenizer.json` and `vocab_size`) against
/// mergekit's, token by token, and puts the rows of `actual`'s vocabulary tensors in
/// mergekit's order (mergekit numbers a union's new tokens in a hash map's order, which
/// changes between its runs; the rows of each token are what must agree).
fn in_mergekit_order(
    vocabulary: &[VocabToken],
    padded_rows: Option<usize>,
    out: &Path,
    actual: &mut Model,
) -> Vec<String> {
    let mut failures = Vec::new();
    let json = |name: &str| -> serde_json::Value {
        let path = out.join(name);
        serde_json::from_str(&std::fs::read_to_string(&path).expect("the output's file"))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let tokenizer = json("tokenizer.json");
    let mut ids: BTreeMap<String, usize> = tokenizer["model"]["vocab"]
        .as_object()
        .expect("a vocabulary")
        .iter()
        .map(|(t, id)| (t.clone(), id.as_u64().unwrap() as usize))
        .collect();
    for t in tokenizer["added_tokens"].as_array().into_iter().flatten() {
        ids.insert(
            t["content"].as_str().unwrap().to_string(),
            t["id"].as_u64().unwrap() as usize,
        );
    }
    let size = json("config.json")["vocab_size"].as_u64();
    let rows = padded_rows.unwrap_or(vocabulary.len());
    if size != Some(rows as u64) || ids.len() != vocabulary.len() {
        failures.push(format!(
            "the output has {} tokens and vocab_size {size:?}; mergekit's has {}",
            ids.len(),
            vocabulary.len()
        ));
    }
    let Some(reef): Option<Vec<usize>> = vocabulary
        .iter()
        .map(|t| ids.get(&t.token).copied())
        .collect()
    else {
        let missing: Vec<&str> = vocabulary
            .iter()
            .filter(|t| !ids.contains_key(&t.token))
            .map(|t| t.token.as_str())
            .collect();
        failures.push(format!(
            "tokens missing from reefknot's vocabulary: {missing:?}"
        ));
        return failures;
    };
    for (name, t) in actual.iter_mut() {
        if !is_vocabulary_tensor(name) || t.shape.len() != 2 || t.shape[0] != rows {
            continue;
        }
        let cols = t.shape[1];
        let Values::F32(v) = &t.values else {
            panic!("{name}: the vocabulary cases are float32")
        };
        let mut rows = Vec::with_capacity(v.len());
        for &r in &reef {
            rows.extend_from_slice(&v[r * cols..(r + 1) * cols]);
        }
        // Padding rows stand for no token: they stay where they are.
        rows.extend_from_slice(&v[reef.len() * cols..]);
        t.values = Values::F32(rows);
    }
    failures
}

/// `reefknot merge mergekit.yml` agrees with mergekit, and `reefknot convert
/// mergekit.yml`, saved next to it and merged, writes the same files byte for byte.
fn run_mergekit_config(case: &str) {
    let direct_dir = run_case(case, "mergekit.yml");
    let direct = direct_dir.path().join("out");
    let root = golden_root();
    let config = root.join(case).join("mergekit.yml");
    let recipe = reefknot(case, &root, &["convert".as_ref(), config.as_os_str()]);
    // The recipe's paths are the config's (`../llama_f32/...`): a folder laid out as
    // the fixtures are, with the families linked in.
    let tmp = tempfile::tempdir().expect("temporary folder");
    // The families are the fixture folders that are not cases.
    for entry in std::fs::read_dir(&root).expect("tests/fixtures/golden") {
        let family = entry.expect("a fixture folder").path();
        if family.is_dir() && !family.join("recipe.yaml").exists() {
            let name = family.file_name().expect("a folder name");
            std::os::unix::fs::symlink(&family, tmp.path().join(name)).expect("link a family");
        }
    }
    let dir = tmp.path().join(case);
    std::fs::create_dir(&dir).unwrap();
    let converted = dir.join("converted.yaml");
    std::fs::write(&converted, &recipe).unwrap();
    let out = tmp.path().join("out");
    merge(case, &converted, &out);
    let files = |d: &Path| {
        let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let (a, b) = (files(&direct), files(&out));
    assert_eq!(
        a.iter().map(|f| &f.0).collect::<Vec<_>>(),
        b.iter().map(|f| &f.0).collect::<Vec<_>>(),
        "golden {case}: the converted recipe writes other files"
    );
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert!(
            x == y,
            "golden {case}: {name} differs after `reefknot convert`"
        );
    }
}

/// Statistics of a one-model random merge over the entries the fine-tune changed
/// (`Δ_out = out − base` against `δ = θ_1 − base`).
#[derive(Debug)]
struct MergeStats {
    /// `(observed, expected, standard error)` of the keep rate over all changed
    /// entries, the smaller half of each row by `|δ|`, and the larger half; an entry of
    /// rank `q` (0 the smallest) in a row of `r` is kept with probability
    /// `(d − ε) + 2ε·q/(r − 1)`.
    rates: [(f64, f64, f64); 3],
    /// The worst per-tensor `|1 − ‖Δ_out‖₁/‖δ‖₁|` (0 when the L1 norm is restored).
    l1_error: f64,
}

fn merge_stats(golden: &Golden, merged: &Model, density: f64, epsilon: f64) -> MergeStats {
    let base = read_model_dir(&golden.base).unwrap_or_else(|e| panic!("fixture input: {e}"));
    let model = read_model_dir(&golden.models[0]).unwrap_or_else(|e| panic!("fixture input: {e}"));
    // [kept, Σp, Σp(1−p), n] for all, smaller half, larger half
    let mut acc = [[0f64; 4]; 3];
    let mut l1_error = 0f64;
    for (name, out) in merged {
        let b = base[name].to_f32();
        let x = model[name].to_f32();
        let o = out.to_f32();
        let r = *out.shape.last().unwrap_or(&1);
        let (mut l1_out, mut l1_delta) = (0f64, 0f64);
        for row in 0..b.len() / r {
            let at = row * r;
            let delta: Vec<f32> = (0..r).map(|q| x[at + q] - b[at + q]).collect();
            let mut order: Vec<usize> = (0..r).collect();
            order.sort_by(|&i, &j| delta[i].abs().total_cmp(&delta[j].abs()).then(i.cmp(&j)));
            for (rank, &q) in order.iter().enumerate() {
                let d_out = o[at + q] - b[at + q];
                l1_out += f64::from(d_out.abs());
                l1_delta += f64::from(delta[q].abs());
                if delta[q] == 0.0 {
                    continue;
                }
                let p = (density - epsilon) + 2.0 * epsilon * rank as f64 / (r.max(2) - 1) as f64;
                let kept = f64::from(u8::from(d_out != 0.0));
                let half = if (rank as f64) < r as f64 / 2.0 { 1 } else { 2 };
                for a in [0, half] {
                    acc[a][0] += kept;
                    acc[a][1] += p;
                    acc[a][2] += p * (1.0 - p);
                    acc[a][3] += 1.0;
                }
            }
        }
        l1_error = l1_error.max((1.0 - l1_out / l1_delta).abs());
    }
    let rate = |a: [f64; 4]| (a[0] / a[3], a[1] / a[3], a[2].sqrt() / a[3]);
    MergeStats {
        rates: [rate(acc[0]), rate(acc[1]), rate(acc[2])],
        l1_error,
    }
}

/// A random method: mergekit's output and reefknot's each within 5 standard errors of
/// the expected keep rates, within 5·√2 of each other, and both restoring the L1 norm.
fn compare_statistics(case: &str, fixture: &Fixture, actual: &Model, density: f64, epsilon: f64) {
    let names: BTreeSet<&String> = fixture.expected.keys().collect();
    assert_eq!(
        names,
        actual.keys().collect::<BTreeSet<_>>(),
        "golden {case}: tensor names"
    );
    let mk = merge_stats(&fixture.golden, &fixture.expected, density, epsilon);
    let rk = merge_stats(&fixture.golden, actual, density, epsilon);
    let mut failures = Vec::new();
    for (k, what) in ["kept", "kept, smaller half", "kept, larger half"]
        .iter()
        .enumerate()
    {
        let (m, expected, se) = mk.rates[k];
        let (r, _, _) = rk.rates[k];
        eprintln!(
            "golden {case}: {what}: mergekit {m:.4}, reefknot {r:.4}, expected {expected:.4} ± {:.4} (5 se)",
            5.0 * se
        );
        for (who, x) in [("mergekit", m), ("reefknot", r)] {
            if (x - expected).abs() > 5.0 * se {
                failures.push(format!("{what}: {who} {x:.4}, expected {expected:.4}"));
            }
        }
        if (m - r).abs() > 5.0 * std::f64::consts::SQRT_2 * se {
            failures.push(format!(
                "{what}: mergekit {m:.4} and reefknot {r:.4} differ"
            ));
        }
    }
    eprintln!(
        "golden {case}: L1 ratio error: mergekit {:.1e}, reefknot {:.1e}",
        mk.l1_error, rk.l1_error
    );
    for (who, e) in [("mergekit", mk.l1_error), ("reefknot", rk.l1_error)] {
        if e > 1e-4 {
            failures.push(format!("{who} does not restore the L1 norm ({e:.1e})"));
        }
    }
    assert!(
        failures.is_empty(),
        "golden {case}: {}",
        failures.join("; ")
    );
}

macro_rules! golden_cases {
    ($($(#[$attr:meta])* $case:ident),* $(,)?) => {
        $(
            mod $case {
                /// The reefknot recipe against mergekit's output.
                #[test]
                $(#[$attr])*
                fn recipe() {
                    super::run_case(stringify!($case), "recipe.yaml");
                }

                /// The mergekit config itself, and its conversion.
                #[test]
                $(#[$attr])*
                fn mergekit_config() {
                    super::run_mergekit_config(stringify!($case));
                }
            }
        )*
    };
}

golden_cases!(
    ties_norm,
    ties_sum,
    ties_weights,
    task_arithmetic,
    linear,
    ties_gradient_mlp,
    ties_gradient_all,
    ties_bf16,
    dare_ties_d1,
    breadcrumbs,
    breadcrumbs_ties,
    ties_rescale,
    slerp,
    slerp_bf16,
    nearswap,
    model_stock,
    model_stock_rows_bf16,
    della_d1_bf16,
    linear_base_sum,
    passthrough,
    ram,
    ramplus_tl_bf16,
    nuslerp,
    nuslerp_rows,
    nuslerp_columns_bf16,
    multislerp,
    karcher,
    karcher_with_base_bf16,
    sce,
    sce_all_bf16,
    arcee_fusion,
    dare_linear_stats,
    della_linear_stats,
    ties_example,
    slerp_filters,
    task_arithmetic_negation,
    breadcrumbs_ties_global,
    ties_fallthrough,
    linear_base_listed,
    slerp_slices,
    frankenmerge_44,
    frankenmerge_scaled,
    slices_merged,
    frankenmerge_empty_last,
    slices_offset,
    slices_varied_ties,
    slices_varied_base,
    slices_varied_linear,
    lora_linear,
    lora_ties,
    lora_passthrough,
    tokenizer_union_linear,
    tokenizer_union_ties,
    tokenizer_model,
    tokenizer_base_permuted,
    tokenizer_dict_union,
    tokenizer_padded,
    tokenizer_tokens,
    tokenizer_slices,
);

/// The fixture folder and the list of tested cases stay in step.
#[test]
fn every_case_folder_is_tested() {
    let mut found: Vec<String> = std::fs::read_dir(golden_root())
        .expect("tests/fixtures/golden")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("recipe.yaml").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    let mut listed: Vec<String> = CASES.iter().map(|c| c.to_string()).collect();
    listed.sort();
    assert_eq!(found, listed, "case folders vs CASES in tests/golden.rs");
}

// ---------------------------------------------------------------------------
// the comparison itself is tested: it must fail when results differ
// ---------------------------------------------------------------------------

fn f32_tensor(v: &[f32]) -> Tensor {
    Tensor {
        shape: vec![v.len()],
        values: Values::F32(v.to_vec()),
    }
}

fn bf16_tensor(v: &[u16]) -> Tensor {
    Tensor {
        shape: vec![v.len()],
        values: Values::Bf16(v.to_vec()),
    }
}

fn no_ties(scale: &[f32]) -> Allowance {
    Allowance {
        scale: scale.to_vec(),
        tied: vec![false; scale.len()],
    }
}

fn check(expected: &Tensor, actual: &Tensor, allow: &Allowance) -> Report {
    let mut r = Report::default();
    compare_tensor("t", expected, actual, allow, &mut r);
    r
}

#[test]
fn f32_tolerance_is_relative_to_the_operands() {
    let b = [1.0f32, -0.5, 2.0e-4, 0.0];
    let scale = [1.0f32, 0.6, 0.1, 0.0];
    let allow = no_ties(&scale);
    // identical
    assert!(check(&f32_tensor(&b), &f32_tensor(&b), &allow).ok());
    // 0.9e-6 relative: fine
    let a = [1.0 + 0.9e-6, -0.5, 2.0e-4, 0.0];
    assert!(check(&f32_tensor(&b), &f32_tensor(&a), &allow).ok());
    // 2e-6 relative: caught
    let a = [1.0 + 2.0e-6, -0.5, 2.0e-4, 0.0];
    let r = check(&f32_tensor(&b), &f32_tensor(&a), &allow);
    assert!(!r.ok());
    assert!(r.failures[0].contains("[0]"), "{:?}", r.failures);
    // near-zero result from inputs of magnitude 0.1: 5e-8 absolute is rounding ...
    let a = [1.0, -0.5, 2.0e-4 + 5.0e-8, 0.0];
    assert!(check(&f32_tensor(&b), &f32_tensor(&a), &allow).ok());
    // ... 5e-7 absolute is not
    let a = [1.0, -0.5, 2.0e-4 + 5.0e-7, 0.0];
    assert!(!check(&f32_tensor(&b), &f32_tensor(&a), &allow).ok());
    // all operands zero: only an exact zero passes
    let a = [1.0, -0.5, 2.0e-4, 1.0e-30];
    assert!(!check(&f32_tensor(&b), &f32_tensor(&a), &allow).ok());
    let a = [1.0, -0.5, 2.0e-4, -0.0];
    assert!(check(&f32_tensor(&b), &f32_tensor(&a), &allow).ok());
    // NaN never passes
    let a = [f32::NAN, -0.5, 2.0e-4, 0.0];
    assert!(!check(&f32_tensor(&b), &f32_tensor(&a), &allow).ok());
}

#[test]
fn f32_failure_names_the_worst_element() {
    let b = [1.0f32; 6];
    let mut a = b;
    a[2] += 1.0e-4;
    a[4] += 1.0e-2;
    let mut t_b = f32_tensor(&b);
    let mut t_a = f32_tensor(&a);
    t_b.shape = vec![2, 3];
    t_a.shape = vec![2, 3];
    let r = check(&t_b, &t_a, &no_ties(&[1.0; 6]));
    assert_eq!(r.failures.len(), 1);
    let msg = &r.failures[0];
    assert!(msg.contains("2 of 6 elements off"), "{msg}");
    assert!(msg.contains("[1, 1] (flat 4)"), "{msg}");
}

#[test]
fn bf16_allows_one_ulp_and_counts_it() {
    let one = bf16::from_f32(1.0).to_bits();
    let minus = bf16::from_f32(-0.75).to_bits();
    let b = [one, minus, 0x0000, 0x8000];
    let allow = no_ties(&[1.0; 4]);
    assert!(check(&bf16_tensor(&b), &bf16_tensor(&b), &allow).ok());
    // one ulp up on a positive value, one ulp towards zero on a negative one
    let a = [one + 1, minus - 1, 0x8000, 0x0000];
    let r = check(&bf16_tensor(&b), &bf16_tensor(&a), &allow);
    assert!(r.ok(), "{:?}", r.failures);
    assert_eq!(r.bf16_one_ulp, 2, "+0 and -0 are the same value");
    // two ulps: caught
    let a = [one + 2, minus, 0x0000, 0x8000];
    let r = check(&bf16_tensor(&b), &bf16_tensor(&a), &allow);
    assert!(!r.ok());
    assert!(r.failures[0].contains("2 ulps apart"), "{:?}", r.failures);
    // across zero: the smallest subnormals of either sign are two ulps apart
    let r = check(
        &bf16_tensor(&[0x0001]),
        &bf16_tensor(&[0x8001]),
        &no_ties(&[1.0]),
    );
    assert!(!r.ok());
    // NaN is caught
    let r = check(
        &bf16_tensor(&[one]),
        &bf16_tensor(&[0x7fc0]),
        &no_ties(&[1.0]),
    );
    assert!(!r.ok());
}

#[test]
fn tied_positions_accept_anything_and_are_counted() {
    let b = [1.0f32, 2.0, 3.0];
    let a = [1.5f32, 2.0, 3.0];
    let allow = Allowance {
        scale: vec![1.0; 3],
        tied: vec![true, false, false],
    };
    let r = check(&f32_tensor(&b), &f32_tensor(&a), &allow);
    assert!(r.ok());
    assert_eq!((r.tie_differences, r.tied), (1, 1));
    // but not next to them
    let a = [1.0f32, 2.5, 3.0];
    assert!(!check(&f32_tensor(&b), &f32_tensor(&a), &allow).ok());
    let one = bf16::from_f32(1.0).to_bits();
    let r = check(
        &bf16_tensor(&[one, one]),
        &bf16_tensor(&[one + 9, one]),
        &Allowance {
            scale: vec![1.0; 2],
            tied: vec![true, false],
        },
    );
    assert!(r.ok());
    assert_eq!(r.tie_differences, 1);
}

#[test]
fn tie_detection_finds_equal_magnitudes_across_a_cut() {
    // |δ| sorted: 5, 3, 3, 3, 1, 0, 0 ; keep 2 -> the cut between rank 1 and 2 splits
    // the three 3s: they are all ambiguous; nothing else is.
    let d = vec![3.0f32, -5.0, 0.0, -3.0, 1.0, 3.0, 0.0];
    assert_eq!(
        tied_positions(std::slice::from_ref(&d), &[vec![2]]),
        vec![true, false, false, true, false, true, false]
    );
    // keep 4: all three 3s are kept whatever the order; no ambiguity
    assert_eq!(
        tied_positions(std::slice::from_ref(&d), &[vec![4]]),
        vec![false; 7]
    );
    // keep 6: the cut splits the two zeros, which contribute nothing either way
    assert_eq!(
        tied_positions(std::slice::from_ref(&d), &[vec![6]]),
        vec![false; 7]
    );
    // two cuts (breadcrumbs: drop 1 outlier, keep 2) and a second model
    let e = vec![1.0f32, 1.0, 2.0, 0.5, 0.0, 0.0, 0.0];
    let tied = tied_positions(&[d, e], &[vec![1, 3], vec![1]]);
    // model 0: cut 1 between 5 and 3: no tie; cut 3 between 3 and 3: tie on the 3s
    // model 1: cut 1 between 2 and 1: no tie
    assert_eq!(tied, vec![true, false, false, true, false, true, false]);
}

#[test]
fn name_and_dtype_mismatches_are_reported() {
    let mut expected = Model::new();
    expected.insert("a".into(), f32_tensor(&[1.0, 2.0]));
    expected.insert("b".into(), f32_tensor(&[1.0]));
    let mut actual = Model::new();
    actual.insert("a".into(), bf16_tensor(&[0x3f80, 0x4000]));
    actual.insert("c".into(), f32_tensor(&[1.0]));
    let mut allowances = BTreeMap::new();
    allowances.insert("a".to_string(), no_ties(&[1.0, 2.0]));
    allowances.insert("b".to_string(), no_ties(&[1.0]));
    let r = compare_models(&expected, &actual, &allowances);
    let all = r.failures.join("\n");
    assert!(all.contains("missing") && all.contains("\"b\""), "{all}");
    assert!(
        all.contains("did not write") && all.contains("\"c\""),
        "{all}"
    );
    assert!(all.contains("a: dtype BF16"), "{all}");
    let mut wrong_shape = f32_tensor(&[1.0, 2.0]);
    wrong_shape.shape = vec![2, 1];
    let r = check(
        &f32_tensor(&[1.0, 2.0]),
        &wrong_shape,
        &no_ties(&[1.0, 2.0]),
    );
    assert!(!r.ok() && r.failures[0].contains("shape"));
}

/// On the real fixtures: mergekit's output agrees with itself, and a single
/// perturbed element is caught (float32 and bfloat16), while a change at a tied
/// position is accepted. Needs no reefknot binary.
#[test]
fn perturbed_fixture_is_caught() {
    // float32
    let fx = load_fixture("ties_norm");
    let r = compare_models(&fx.expected, &fx.expected, &fx.allowances);
    assert!(
        r.ok() && r.worst_f32 == 0.0 && r.elements > 0,
        "{:?}",
        r.failures
    );
    let name = "model.layers.1.mlp.down_proj.weight";
    let mut actual = fx.expected.clone();
    let j = 17;
    let scale = fx.allowances[name].scale[j];
    if let Some(Tensor {
        values: Values::F32(v),
        ..
    }) = actual.get_mut(name)
    {
        v[j] += 2.0e-6 * v[j].abs().max(scale);
    }
    let r = compare_models(&fx.expected, &actual, &fx.allowances);
    assert!(!r.ok(), "a 2e-6 relative change went unnoticed");
    assert!(r.failures[0].starts_with(name), "{:?}", r.failures);
    assert!(r.failures[0].contains("(flat 17)"), "{:?}", r.failures);

    // bfloat16, sharded inputs
    let fx = load_fixture("ties_bf16");
    let r = compare_models(&fx.expected, &fx.expected, &fx.allowances);
    assert!(r.ok(), "{:?}", r.failures);
    assert!(
        r.tied > 0,
        "the bf16 fixture is expected to contain tied positions"
    );
    let (tname, allow) = fx
        .allowances
        .iter()
        .find(|(_, a)| a.tied.iter().any(|t| *t))
        .expect("a tensor with tied positions");
    let tied_j = allow.tied.iter().position(|t| *t).unwrap();
    let free_j = allow.tied.iter().position(|t| !*t).unwrap();
    let bump = |by: u16, at: usize| {
        let mut m = fx.expected.clone();
        if let Some(Tensor {
            values: Values::Bf16(v),
            ..
        }) = m.get_mut(tname)
        {
            // away from zero: one more ulp of magnitude
            v[at] += by;
        }
        compare_models(&fx.expected, &m, &fx.allowances)
    };
    let r = bump(1, free_j);
    assert!(r.ok() && r.bf16_one_ulp == 1, "{:?}", r.failures);
    let r = bump(2, free_j);
    assert!(!r.ok(), "a 2-ulp change went unnoticed");
    let r = bump(40, tied_j);
    assert!(r.ok() && r.tie_differences == 1, "{:?}", r.failures);
}

//! Fixtures and helpers shared by the end-to-end tests.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use reefknot_io::{Checkpoint, Dtype, ModelWriter, OutputTensor, WriterOptions};
use reefknot_synth::FamilySpec;

/// The binary under test: this build's, or the one `REEFKNOT_TEST_BIN` names (to run
/// the suite against an older build, e.g. to show that a new test fails before its fix).
pub fn reefknot() -> Command {
    match std::env::var_os("REEFKNOT_TEST_BIN") {
        Some(bin) => Command::new(bin),
        None => Command::new(env!("CARGO_BIN_EXE_reefknot")),
    }
}

/// Runs `reefknot ARGS` in `dir`.
pub fn run_in(dir: &Path, args: &[&str]) -> Output {
    reefknot()
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the reefknot binary runs")
}

/// Stdout and stderr as text.
pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asserts the command succeeded, printing its output otherwise.
#[track_caller]
pub fn ok(out: &Output) -> String {
    let (stdout, stderr) = text(out);
    assert!(
        out.status.success(),
        "failed ({:?}):\n{stdout}\n{stderr}",
        out.status.code()
    );
    stdout
}

/// Asserts the command failed with `code`, and returns stderr.
#[track_caller]
pub fn fails(out: &Output, code: i32) -> String {
    let (stdout, stderr) = text(out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "expected exit {code}:\n{stdout}\n{stderr}"
    );
    stderr
}

/// A workspace: a temporary folder with a family laid out as the example recipes
/// expect (`models/{base,code,math,chat}`, `fisher/{code,math,chat}.safetensors`).
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

pub const TASKS: [&str; 3] = ["code", "math", "chat"];

impl Workspace {
    /// A tiny Llama-shaped family in `dtype`, sharded when `shard_size` is given.
    pub fn new(dtype: Dtype, shard_size: Option<u64>) -> Workspace {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let spec = FamilySpec {
            dtype,
            shard_size,
            ..FamilySpec::tiny()
        };
        let family = reefknot_synth::generate(&spec, &dir.path().join("family")).expect("generate");
        let models = dir.path().join("models");
        fs::create_dir(&models).unwrap();
        fs::rename(&family.base, models.join("base")).unwrap();
        for (task, name) in family.tasks.iter().zip(TASKS) {
            fs::rename(task, models.join(name)).unwrap();
        }
        // A tokenizer file, to check that non-weight files are copied.
        fs::write(
            models.join("base/tokenizer.json"),
            "{\"version\": \"1.0\"}\n",
        )
        .unwrap();
        let ws = Workspace { dir };
        ws.write_fishers();
        ws
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn model(&self, name: &str) -> PathBuf {
        self.path().join("models").join(name)
    }

    /// Synthetic diagonal Fishers: positive, mostly 1e-8..1e-6 as measured on real
    /// models, one file per fine-tune with the base's tensor names.
    fn write_fishers(&self) {
        let base = Checkpoint::open(&self.model("base")).unwrap();
        let dir = self.path().join("fisher");
        fs::create_dir(&dir).unwrap();
        for (m, name) in TASKS.iter().enumerate() {
            let tmp = dir.join(format!("{name}.tmp"));
            fs::create_dir(&tmp).unwrap();
            let tensors: Vec<OutputTensor> = base
                .tensors()
                .iter()
                .map(|t| OutputTensor {
                    name: t.name.clone(),
                    dtype: Dtype::F32,
                    shape: t.shape.clone(),
                })
                .collect();
            let mut w = ModelWriter::create(&tmp, tensors, &WriterOptions::default()).unwrap();
            for (i, bytes) in w.data_mut_all().into_iter().enumerate() {
                for (j, b) in bytes.chunks_exact_mut(4).enumerate() {
                    let h =
                        (j as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((i * 31 + m) as u64);
                    let f = 1e-8 * (1.0 + (h % 1000) as f32);
                    b.copy_from_slice(&f.to_le_bytes());
                }
            }
            w.finish().unwrap();
            fs::rename(
                tmp.join("model.safetensors"),
                dir.join(format!("{name}.safetensors")),
            )
            .unwrap();
            fs::remove_dir_all(&tmp).unwrap();
        }
    }

    /// Writes `text` as a recipe file and returns its name.
    pub fn recipe(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path().join(name);
        fs::write(&p, text).unwrap();
        p
    }

    /// The base and the fine-tunes (in [`TASKS`] order), opened.
    pub fn family(&self) -> (Checkpoint, Vec<Checkpoint>) {
        let open = |name: &str| Checkpoint::open(&self.model(name)).unwrap();
        (open("base"), TASKS.iter().map(|t| open(t)).collect())
    }

    /// The folder's entries (names), sorted: to check nothing was left behind.
    pub fn entries(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

/// A recipe over the workspace's family with the given expression.
pub fn recipe_with(merge: &str) -> String {
    format!(
        "base: models/base\nmodels:\n  - path: models/code\n  - path: models/math\n  - path: models/chat\nmerge: {merge}\n"
    )
}

/// Every tensor of a checkpoint as (name, dtype, shape, bytes).
pub fn tensors(path: &Path) -> Vec<(String, Dtype, Vec<usize>, Vec<u8>)> {
    let c = Checkpoint::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut v: Vec<_> = c
        .tensors()
        .iter()
        .map(|t| (t.name.clone(), t.dtype, t.shape.clone(), c.data(t).to_vec()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// A tensor as f32.
pub fn values(c: &Checkpoint, name: &str) -> Vec<f32> {
    let t = c.get(name).unwrap_or_else(|| panic!("no tensor {name}"));
    let mut out = vec![0f32; t.numel()];
    reefknot_io::to_f32(t.dtype, c.data(t), &mut out);
    out
}

/// Every built-in operator (inventory entries vanish silently when a crate is not
/// linked, so the tests name them).
pub const BUILTIN_OPERATORS: &[&str] = &[
    "trim",
    "breadcrumbs",
    "dare",
    "della",
    "elect",
    "disjoint",
    "sum",
    "mean",
    "linear",
    "fisher",
    "tsv",
    "iso",
    "iso_cts",
    "passthrough",
    "scale",
    "ties",
    "slerp",
    "nearswap",
    "model_stock",
    "nuslerp",
    "multislerp",
    "karcher",
    "ram",
    "ramplus_tl",
    "sce",
    "arcee_fusion",
];

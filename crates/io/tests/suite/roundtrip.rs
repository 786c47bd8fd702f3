//! Writing with ModelWriter, reading back with Checkpoint and with the `safetensors` crate.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use reefknot_io::{from_f32, Checkpoint, Dtype, IoError, ModelWriter, OutputTensor, WriterOptions};
use safetensors::SafeTensors;

use crate::common::pattern;

fn out(name: &str, dtype: Dtype, shape: &[usize]) -> OutputTensor {
    OutputTensor {
        name: name.to_string(),
        dtype,
        shape: shape.to_vec(),
    }
}

/// A small mixed model: 8 + 24 + 64 + 16 + 24 + 6 + 40 + 2 bytes.
fn mixed_tensors() -> Vec<OutputTensor> {
    vec![
        out("model.embed_tokens.weight", Dtype::BF16, &[2, 2]),
        out("model.layers.0.attn.q.weight", Dtype::F32, &[2, 3]),
        out("model.layers.0.mlp.up.weight", Dtype::F16, &[4, 8]),
        out("model.layers.0.pos", Dtype::I64, &[2]),
        out("model.layers.1.attn.q.weight", Dtype::BF16, &[3, 4]),
        out("model.layers.1.mask", Dtype::Bool, &[6]),
        out("lm_head.weight", Dtype::F32, &[10]),
        out("scalar", Dtype::BF16, &[]),
    ]
}

fn write_model(dir: &Path, tensors: Vec<OutputTensor>, opts: &WriterOptions) -> Vec<PathBuf> {
    let mut w = ModelWriter::create(dir, tensors, opts).unwrap();
    let sizes: Vec<usize> = w.tensors().iter().map(|t| t.nbytes()).collect();
    for (i, slot) in w.data_mut_all().into_iter().enumerate() {
        assert_eq!(slot.len(), sizes[i]);
        slot.copy_from_slice(&pattern(slot.len(), i as u8));
    }
    w.finish().unwrap()
}

fn header_len(path: &Path) -> u64 {
    let bytes = fs::read(path).unwrap();
    u64::from_le_bytes(bytes[..8].try_into().unwrap())
}

#[test]
fn sharded_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let opts = WriterOptions {
        shard_size: 40,
        metadata: BTreeMap::from([("recipe".to_string(), "merge: sum".to_string())]),
        // The durable path: background syncs, final syncs of shards and index.
        durable: true,
    };
    let tensors = mixed_tensors();
    let files = write_model(dir.path(), tensors.clone(), &opts);

    // 8+24 | 64 (own shard) | 16+24 | 6 | 40 | 2  → 6 shards.
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let expected: Vec<String> = (1..=6)
        .map(|i| format!("model-{i:05}-of-00006.safetensors"))
        .chain(["model.safetensors.index.json".to_string()])
        .collect();
    assert_eq!(names, expected);

    // The index.
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.path().join("model.safetensors.index.json")).unwrap())
            .unwrap();
    assert_eq!(
        index["metadata"]["total_size"],
        8 + 24 + 64 + 16 + 24 + 6 + 40 + 2
    );
    assert_eq!(
        index["weight_map"]["model.layers.0.mlp.up.weight"],
        "model-00002-of-00006.safetensors"
    );
    assert_eq!(
        index["weight_map"]["scalar"],
        "model-00006-of-00006.safetensors"
    );
    assert_eq!(
        index["weight_map"].as_object().unwrap().len(),
        tensors.len()
    );

    // Every shard loads with the reference `safetensors` crate, is 8-aligned and carries
    // the metadata.
    for shard in &files[..6] {
        assert_eq!(header_len(shard) % 8, 0);
        let bytes = fs::read(shard).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        assert!(!st.is_empty());
        let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
        let meta = meta.metadata().clone().unwrap();
        assert_eq!(meta.get("format").map(String::as_str), Some("pt"));
        assert_eq!(meta.get("recipe").map(String::as_str), Some("merge: sum"));
    }

    // Reading back gives the same names, order, dtypes, shapes and bytes.
    let ck = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(ck.files(), &files[..6]);
    assert_eq!(ck.tensors().len(), tensors.len());
    for (i, (t, info)) in tensors.iter().zip(ck.tensors()).enumerate() {
        assert_eq!(t.name, info.name);
        assert_eq!(t.dtype, info.dtype);
        assert_eq!(t.shape, info.shape);
        assert_eq!(info.start % 8, 0, "shard data areas are 8-aligned");
        assert_eq!(ck.data(info), pattern(t.nbytes(), i as u8));
    }
    assert_eq!(
        ck.metadata().get("recipe").map(String::as_str),
        Some("merge: sum")
    );
    assert_eq!(ck.total_bytes(), 184);
}

#[test]
fn single_shard_is_model_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let files = write_model(dir.path(), mixed_tensors(), &WriterOptions::default());
    assert_eq!(files, [dir.path().join("model.safetensors")]);
    assert!(!dir.path().join("model.safetensors.index.json").exists());
    let bytes = fs::read(&files[0]).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let view = st.tensor("model.layers.0.mlp.up.weight").unwrap();
    assert_eq!(view.dtype(), safetensors::Dtype::F16);
    assert_eq!(view.shape(), [4, 8]);
    assert_eq!(view.data(), pattern(64, 2));
    let ck = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(ck.metadata().get("format").map(String::as_str), Some("pt"));
    assert_eq!(ck.metadata().len(), 1);
}

#[test]
fn data_mut_writes_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let tensors = vec![out("a", Dtype::BF16, &[3]), out("b", Dtype::F16, &[2])];
    let mut w = ModelWriter::create(dir.path(), tensors, &WriterOptions::default()).unwrap();
    from_f32(Dtype::F16, &[1.5, -2.0], w.data_mut(1));
    from_f32(Dtype::BF16, &[1.0, 2.0, 3.0], w.data_mut(0));
    assert_eq!(w.files(), [dir.path().join("model.safetensors")]);
    assert_eq!(w.total_size(), 10);
    w.finish().unwrap();
    let ck = Checkpoint::open(&dir.path().join("model.safetensors")).unwrap();
    let mut v = vec![0.0; 3];
    reefknot_io::to_f32(Dtype::BF16, ck.data(ck.get("a").unwrap()), &mut v);
    assert_eq!(v, [1.0, 2.0, 3.0]);
    let mut v = vec![0.0; 2];
    reefknot_io::to_f32(Dtype::F16, ck.data(ck.get("b").unwrap()), &mut v);
    assert_eq!(v, [1.5, -2.0]);
}

#[test]
fn no_tensors_writes_an_empty_model() {
    let dir = tempfile::tempdir().unwrap();
    let files = write_model(dir.path(), vec![], &WriterOptions::default());
    assert_eq!(files, [dir.path().join("model.safetensors")]);
    let bytes = fs::read(&files[0]).unwrap();
    assert!(SafeTensors::deserialize(&bytes).unwrap().is_empty());
    assert!(Checkpoint::open(dir.path()).unwrap().tensors().is_empty());
}

#[test]
fn never_overwrites_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    // The third shard's name is taken: creation fails and removes what it created.
    let taken = dir.path().join("model-00003-of-00003.safetensors");
    fs::write(&taken, b"precious").unwrap();
    let tensors = vec![
        out("a", Dtype::U8, &[8]),
        out("b", Dtype::U8, &[8]),
        out("c", Dtype::U8, &[8]),
    ];
    let opts = WriterOptions {
        shard_size: 8,
        ..WriterOptions::default()
    };
    let e = ModelWriter::create(dir.path(), tensors, &opts).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}: already exists; reefknot never overwrites a file",
            taken.display()
        )
    );
    let left: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(left, std::slice::from_ref(&taken));
    assert_eq!(fs::read(&taken).unwrap(), b"precious");
}

#[test]
fn rejects_bad_tensor_lists() {
    let dir = tempfile::tempdir().unwrap();
    let e = ModelWriter::create(
        dir.path(),
        vec![out("a", Dtype::U8, &[1]), out("a", Dtype::U8, &[1])],
        &WriterOptions::default(),
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}: cannot write tensor `a`: the tensor list has it twice",
            dir.path().display()
        )
    );
    let e = ModelWriter::create(
        dir.path(),
        vec![out("__metadata__", Dtype::U8, &[1])],
        &WriterOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, IoError::BadOutput { .. }), "{e:?}");
    let e = ModelWriter::create(
        &dir.path().join("missing"),
        vec![],
        &WriterOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, IoError::NotFound { .. }), "{e:?}");
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn reads_files_written_by_the_safetensors_crate() {
    use safetensors::tensor::TensorView;
    let dir = tempfile::tempdir().unwrap();
    let a = pattern(24, 1);
    let b = pattern(6, 2);
    let views = vec![
        (
            "zeta",
            TensorView::new(safetensors::Dtype::F32, vec![2, 3], &a).unwrap(),
        ),
        (
            "alpha",
            TensorView::new(safetensors::Dtype::BF16, vec![3], &b).unwrap(),
        ),
    ];
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    let path = dir.path().join("model.safetensors");
    safetensors::serialize_to_file(views, Some(meta), &path).unwrap();
    let ck = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(ck.data(ck.get("zeta").unwrap()), a);
    assert_eq!(ck.data(ck.get("alpha").unwrap()), b);
    assert_eq!(ck.get("zeta").unwrap().shape, [2, 3]);
}

/// Checks with Python that the `safetensors` library and `transformers` load a sharded
/// output. Needs python3 with torch, safetensors and transformers; run with
/// `cargo test -p reefknot-io -- --ignored python`.
#[test]
#[ignore = "needs python3 with torch, safetensors and transformers"]
fn python_loads_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let tensors = vec![
        out("a.weight", Dtype::BF16, &[4, 4]),
        out("b.weight", Dtype::F16, &[8]),
        out("c.weight", Dtype::F32, &[3, 2]),
        out("d.ids", Dtype::I64, &[2]),
    ];
    let opts = WriterOptions {
        shard_size: 32,
        metadata: BTreeMap::from([("reefknot.recipe".to_string(), "x: \"1\"".to_string())]),
        durable: false,
    };
    let mut w = ModelWriter::create(dir.path(), tensors, &opts).unwrap();
    let values: Vec<f32> = (0..16).map(|i| i as f32 * 0.25 - 1.0).collect();
    from_f32(Dtype::BF16, &values, w.data_mut(0));
    from_f32(Dtype::F16, &values[..8], w.data_mut(1));
    from_f32(Dtype::F32, &values[..6], w.data_mut(2));
    w.data_mut(3)
        .copy_from_slice(&[7, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0]);
    w.finish().unwrap();
    let script = r#"
import json, sys, os, torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers.modeling_utils import load_state_dict
d = sys.argv[1]
index = json.load(open(os.path.join(d, "model.safetensors.index.json")))
sd = {}
for shard in sorted(set(index["weight_map"].values())):
    p = os.path.join(d, shard)
    with safe_open(p, framework="pt") as f:
        assert f.metadata()["format"] == "pt", f.metadata()
        assert f.metadata()["reefknot.recipe"] == 'x: "1"'
    sd.update(load_file(p))
    sd2 = load_state_dict(p)
    assert set(sd2) == set(load_file(p))
v = torch.arange(16, dtype=torch.float32) * 0.25 - 1.0
assert sd["a.weight"].dtype == torch.bfloat16 and torch.equal(sd["a.weight"].float().flatten(), v)
assert sd["b.weight"].dtype == torch.float16 and torch.equal(sd["b.weight"].float(), v[:8])
assert torch.equal(sd["c.weight"], v[:6].reshape(3, 2))
assert sd["d.ids"].tolist() == [7, 9]
print("ok")
"#;
    let outp = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(dir.path())
        .output()
        .expect("python3");
    assert!(
        outp.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&outp.stdout),
        String::from_utf8_lossy(&outp.stderr)
    );
}

//! Opening checkpoints: layouts that work, and every kind of bad input with its message.

use std::fs;
use std::path::Path;

use reefknot_io::{Checkpoint, Dtype, IoError};

use crate::common::{bf16, index_file, pattern, raw_file, st_file, T};

fn open_err(path: &Path) -> IoError {
    match Checkpoint::open(path) {
        Ok(_) => panic!("{} opened but should not have", path.display()),
        Err(e) => e,
    }
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

// ---------------------------------------------------------------- layouts that open

#[test]
fn single_file_with_metadata_and_storage_order() {
    let dir = tmp();
    // Header order differs from storage order: storage order wins.
    let header = r#"{"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]},"__metadata__":{"format":"pt","x":"y"},"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}"#;
    let path = raw_file(dir.path(), "w.safetensors", header, 12);
    let ck = Checkpoint::open(&path).unwrap();
    assert_eq!(ck.path(), path);
    assert_eq!(ck.folder(), None);
    assert_eq!(ck.files(), std::slice::from_ref(&path));
    let names: Vec<&str> = ck.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    let header_end = 8 + header.len();
    let a = ck.get("a").unwrap();
    assert_eq!(
        (a.dtype, a.shape.as_slice(), a.file),
        (Dtype::U8, &[4][..], 0)
    );
    assert_eq!((a.start, a.end), (header_end, header_end + 4));
    assert_eq!(ck.data(a), [0, 1, 2, 3]);
    let b = ck.get("b").unwrap();
    assert_eq!((b.numel(), b.nbytes()), (2, 8));
    assert_eq!(ck.data(b), [4, 5, 6, 7, 8, 9, 10, 11]);
    assert_eq!(ck.metadata().get("x").map(String::as_str), Some("y"));
    assert_eq!(ck.total_bytes(), 12);
    assert!(ck.get("c").is_none());
}

#[test]
fn folder_with_model_safetensors() {
    let dir = tmp();
    st_file(dir.path(), "model.safetensors", &[bf16("w", &[2, 3], 1)]);
    fs::write(dir.path().join("config.json"), "{}").unwrap();
    let ck = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(ck.folder(), Some(dir.path()));
    assert_eq!(ck.index(), None);
    assert_eq!(ck.files(), [dir.path().join("model.safetensors")]);
    assert_eq!(ck.data(ck.get("w").unwrap()), pattern(12, 1));
}

#[test]
fn folder_with_one_oddly_named_file() {
    let dir = tmp();
    st_file(dir.path(), "weights.safetensors", &[bf16("w", &[2], 1)]);
    let ck = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(ck.files(), [dir.path().join("weights.safetensors")]);
}

#[test]
fn sharded_folder_and_index_path() {
    let dir = tmp();
    let s1 = st_file(
        dir.path(),
        "model-00001-of-00002.safetensors",
        &[bf16("a", &[4], 1), bf16("b", &[2, 2], 2)],
    );
    let s2 = st_file(
        dir.path(),
        "model-00002-of-00002.safetensors",
        &[bf16("c", &[3], 3)],
    );
    let index = index_file(
        dir.path(),
        &[
            ("c", "model-00002-of-00002.safetensors"),
            ("a", "model-00001-of-00002.safetensors"),
            ("b", "model-00001-of-00002.safetensors"),
        ],
    );
    for path in [dir.path(), index.as_path()] {
        let ck = Checkpoint::open(path).unwrap();
        assert_eq!(ck.files(), [s1.clone(), s2.clone()]);
        assert_eq!(ck.folder(), Some(dir.path()));
        assert_eq!(ck.index(), Some(index.as_path()));
        let names: Vec<(&str, usize)> = ck
            .tensors()
            .iter()
            .map(|t| (t.name.as_str(), t.file))
            .collect();
        assert_eq!(names, [("a", 0), ("b", 0), ("c", 1)]);
        assert_eq!(ck.data(ck.get("c").unwrap()), pattern(6, 3));
        assert_eq!(ck.total_bytes(), 8 + 8 + 6);
    }
}

#[test]
fn empty_file_and_zero_sized_tensors() {
    let dir = tmp();
    let path = raw_file(dir.path(), "empty.safetensors", "{}", 0);
    let ck = Checkpoint::open(&path).unwrap();
    assert!(ck.tensors().is_empty());
    let header = r#"{"z":{"dtype":"F16","shape":[0,4],"data_offsets":[2,2]},"s":{"dtype":"BF16","shape":[],"data_offsets":[0,2]},"e":{"dtype":"I8","shape":[0],"data_offsets":[2,2]}}"#;
    let path = raw_file(dir.path(), "zero.safetensors", header, 2);
    let ck = Checkpoint::open(&path).unwrap();
    assert_eq!(ck.get("s").unwrap().numel(), 1);
    assert_eq!(ck.get("z").unwrap().nbytes(), 0);
    assert!(ck.data(ck.get("e").unwrap()).is_empty());
}

#[test]
fn checkpoint_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Checkpoint>();
}

// ---------------------------------------------------------------- bad files

#[test]
fn file_shorter_than_8_bytes() {
    let dir = tmp();
    let path = dir.path().join("short.safetensors");
    fs::write(&path, [1, 2, 3, 4, 5]).unwrap();
    let e = open_err(&path);
    assert!(matches!(e, IoError::TooShort { len: 5, .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!(
            "{}: the file is 5 bytes long, too short for a safetensors file (which starts with \
             an 8-byte header length): the file is empty or truncated",
            path.display()
        )
    );
    fs::write(&path, []).unwrap();
    assert!(matches!(open_err(&path), IoError::TooShort { len: 0, .. }));
}

#[test]
fn absurd_header_length() {
    let dir = tmp();
    let path = dir.path().join("big.safetensors");
    let mut bytes = (1u64 << 40).to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    fs::write(&path, bytes).unwrap();
    let e = open_err(&path);
    assert_eq!(
        e.to_string(),
        format!(
            "{}: its first 8 bytes, read as a safetensors header length, give more than the \
             limit of 100000000 bytes: this is not a safetensors file, or its start is corrupt",
            path.display()
        )
    );
}

#[test]
fn header_length_past_end_of_file() {
    let dir = tmp();
    let path = dir.path().join("cut.safetensors");
    let mut bytes = 1000u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(br#"{"a":{"dtype":"#);
    fs::write(&path, &bytes).unwrap();
    let e = open_err(&path);
    assert!(
        matches!(
            e,
            IoError::HeaderPastEnd {
                header_len: 1000,
                file_len: 22,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        format!(
            "{}: its first 8 bytes, read as a safetensors header length, run past the end of \
             the file (22 bytes): the file is truncated or not a safetensors file",
            path.display()
        )
    );
}

#[test]
fn header_not_utf8() {
    let dir = tmp();
    let path = dir.path().join("bin.safetensors");
    let mut bytes = 4u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(&[b'{', 0xff, 0xfe, b'}']);
    fs::write(&path, &bytes).unwrap();
    let e = open_err(&path);
    assert!(
        matches!(e, IoError::HeaderNotUtf8 { offset: 1, .. }),
        "{e:?}"
    );
    assert!(e
        .to_string()
        .contains("the header is not valid UTF-8 (bad byte at offset 1"));
}

#[test]
fn header_bad_json() {
    let dir = tmp();
    let path = raw_file(
        dir.path(),
        "json.safetensors",
        r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]"#,
        4,
    );
    let e = open_err(&path);
    assert!(matches!(e, IoError::HeaderJson { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!(
            "{}: the header is not valid safetensors JSON: EOF while parsing an object at line 1 column",
            path.display()
        )),
        "{msg}"
    );

    let path = raw_file(dir.path(), "array.safetensors", "[1, 2]", 0);
    let msg = open_err(&path).to_string();
    assert!(
        msg.contains("expected a JSON object mapping tensor names to {dtype, shape, data_offsets}"),
        "{msg}"
    );
}

#[test]
fn header_padding_with_spaces_is_fine() {
    let dir = tmp();
    let path = raw_file(
        dir.path(),
        "pad.safetensors",
        r#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}        "#,
        2,
    );
    assert!(Checkpoint::open(&path).is_ok());
}

#[test]
fn unsupported_dtype() {
    let dir = tmp();
    let path = raw_file(
        dir.path(),
        "dt.safetensors",
        r#"{"w":{"dtype":"F7","shape":[2],"data_offsets":[0,2]}}"#,
        2,
    );
    let e = open_err(&path);
    assert_eq!(e.tensor(), Some("w"));
    assert_eq!(
        e.to_string(),
        format!(
            "{}: tensor `w` has dtype `F7`, which the safetensors format does not define; \
             supported dtypes: F64, F32, F16, BF16, I64, I32, I16, I8, U64, U32, U16, U8, BOOL, \
             F8_E4M3, F8_E5M2, F8_E4M3FNUZ, F8_E5M2FNUZ, F8_E8M0, C64",
            path.display()
        )
    );
    let path = raw_file(
        dir.path(),
        "f4.safetensors",
        r#"{"w":{"dtype":"F4","shape":[2],"data_offsets":[0,1]}}"#,
        1,
    );
    let msg = open_err(&path).to_string();
    assert!(
        msg.contains(
            "has dtype `F4`, a sub-byte type that reefknot does not support; supported dtypes: F64"
        ),
        "{msg}"
    );
}

#[test]
fn shape_and_size_mismatch() {
    let dir = tmp();
    let path = raw_file(
        dir.path(),
        "size.safetensors",
        r#"{"w":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,10]}}"#,
        10,
    );
    let e = open_err(&path);
    assert_eq!(
        e.to_string(),
        format!(
            "{}: tensor `w` has shape [2, 3] of BF16, which needs 12 bytes, but its \
             data_offsets 0..10 span 10 bytes",
            path.display()
        )
    );
}

#[test]
fn header_offsets_past_the_data_area() {
    let dir = tmp();
    let path = raw_file(
        dir.path(),
        "lie.safetensors",
        r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[16],"data_offsets":[16,80]}}"#,
        32,
    );
    let e = open_err(&path);
    assert!(
        matches!(
            e,
            IoError::OutOfBounds {
                start: 16,
                end: 80,
                data_len: 32,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        format!(
            "{}: tensor `b`: the header says bytes 16..80 but the data area is only 32 bytes: \
             the file is truncated or its header lies",
            path.display()
        )
    );
}

#[test]
fn truncated_file() {
    let dir = tmp();
    let path = st_file(
        dir.path(),
        "model.safetensors",
        &[bf16("first", &[8], 1), bf16("last", &[8], 2)],
    );
    let len = fs::metadata(&path).unwrap().len();
    let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len - 3).unwrap();
    drop(f);
    let e = open_err(dir.path());
    assert_eq!(e.tensor(), Some("last"));
    assert_eq!(
        e.to_string(),
        format!(
            "{}: tensor `last`: the header says bytes 16..32 but the data area is only 29 \
             bytes: the file is truncated or its header lies",
            path.display()
        )
    );
}

#[test]
fn overlapping_offsets() {
    let dir = tmp();
    let path = raw_file(
        dir.path(),
        "overlap.safetensors",
        r#"{"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},"b":{"dtype":"U8","shape":[8],"data_offsets":[4,12]}}"#,
        12,
    );
    let e = open_err(&path);
    assert_eq!(
        e.to_string(),
        format!(
            "{}: tensor `b` (bytes 4..12) overlaps tensor `a` (bytes 0..8): each tensor must \
             have its own bytes",
            path.display()
        )
    );
}

#[test]
fn gap_between_tensors() {
    let dir = tmp();
    let path = raw_file(
        dir.path(),
        "gap.safetensors",
        r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[6,10]}}"#,
        10,
    );
    assert_eq!(
        open_err(&path).to_string(),
        format!(
            "{}: tensor `b` starts at byte 6 of the data area but the previous tensor `a` ends \
             at byte 4: tensors must be contiguous, 2 bytes belong to no tensor",
            path.display()
        )
    );
    let path = raw_file(
        dir.path(),
        "gap0.safetensors",
        r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}"#,
        6,
    );
    assert!(open_err(&path)
        .to_string()
        .contains("but nothing ends at byte 0"));
}

#[test]
fn trailing_bytes() {
    let dir = tmp();
    let path = raw_file(
        dir.path(),
        "trail.safetensors",
        r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}"#,
        7,
    );
    assert_eq!(
        open_err(&path).to_string(),
        format!(
            "{}: the data area is 7 bytes but the tensors end at byte 4: 3 trailing bytes \
             belong to no tensor",
            path.display()
        )
    );
}

#[test]
fn reversed_offsets() {
    let dir = tmp();
    let path = raw_file(
        dir.path(),
        "rev.safetensors",
        r#"{"a":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}}"#,
        4,
    );
    assert_eq!(
        open_err(&path).to_string(),
        format!(
            "{}: tensor `a` has data_offsets 4..0, which end before they start",
            path.display()
        )
    );
}

#[test]
fn malformed_entries() {
    let dir = tmp();
    let cases = [
        (
            r#"{"a":{"shape":[1],"data_offsets":[0,1]}}"#,
            "tensor `a`: the entry has no `dtype`",
        ),
        (
            r#"{"a":{"dtype":"U8","data_offsets":[0,1]}}"#,
            "tensor `a`: the entry has no `shape`",
        ),
        (
            r#"{"a":{"dtype":"U8","shape":[1]}}"#,
            "tensor `a`: the entry has no `data_offsets`",
        ),
        (
            r#"{"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}}"#,
            "tensor `a`: `shape` must be an array of non-negative integers, found [-1]",
        ),
        (
            r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1,2]}}"#,
            "tensor `a`: `data_offsets` must be an array of two non-negative integers [start, end], found [0,1,2]",
        ),
        (
            r#"{"a":{"dtype":8,"shape":[1],"data_offsets":[0,1]}}"#,
            "tensor `a`: `dtype` must be a string such as \"BF16\", found 8",
        ),
        (
            r#"{"a":[1]}"#,
            "tensor `a`: expected an object {\"dtype\", \"shape\", \"data_offsets\"}, found array [1]",
        ),
        (
            r#"{"a":{"dtype":"U8","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,1]}}"#,
            "tensor `a`: shape [4294967296, 4294967296, 4294967296] of U8 has more bytes than this machine can address",
        ),
        (
            r#"{"__metadata__":{"format":"pt","n":3},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#,
            "the header's __metadata__ must be a JSON object of string values: key `n` has the number 3, expected a string",
        ),
    ];
    for (i, (header, expected)) in cases.into_iter().enumerate() {
        let path = raw_file(dir.path(), &format!("m{i}.safetensors"), header, 1);
        let msg = open_err(&path).to_string();
        assert_eq!(msg, format!("{}: {expected}", path.display()));
    }
}

#[test]
fn duplicate_tensor_in_one_header() {
    let dir = tmp();
    let path = raw_file(
        dir.path(),
        "dup.safetensors",
        r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}"#,
        2,
    );
    let p = path.display();
    assert_eq!(
        open_err(&path).to_string(),
        format!("tensor `a` appears in both {p} and {p}: a checkpoint must hold each tensor once")
    );
}

#[test]
fn duplicate_tensor_across_shards() {
    let dir = tmp();
    let s1 = st_file(
        dir.path(),
        "model-00001-of-00002.safetensors",
        &[bf16("a", &[2], 1), bf16("shared", &[2], 2)],
    );
    let s2 = st_file(
        dir.path(),
        "model-00002-of-00002.safetensors",
        &[bf16("shared", &[2], 3), bf16("b", &[2], 4)],
    );
    index_file(
        dir.path(),
        &[
            ("a", "model-00001-of-00002.safetensors"),
            ("shared", "model-00001-of-00002.safetensors"),
            ("b", "model-00002-of-00002.safetensors"),
        ],
    );
    let e = open_err(dir.path());
    assert_eq!(
        e.to_string(),
        format!(
            "tensor `shared` appears in both {} and {}: a checkpoint must hold each tensor once",
            s1.display(),
            s2.display()
        )
    );
}

#[test]
fn index_naming_a_missing_shard() {
    let dir = tmp();
    st_file(
        dir.path(),
        "model-00001-of-00002.safetensors",
        &[bf16("a", &[2], 1)],
    );
    let index = index_file(
        dir.path(),
        &[
            ("a", "model-00001-of-00002.safetensors"),
            ("b", "model-00002-of-00002.safetensors"),
            ("c", "model-00002-of-00002.safetensors"),
        ],
    );
    let e = open_err(dir.path());
    assert!(matches!(e, IoError::MissingShard { count: 2, .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!(
            "{}: the index maps 2 tensor(s) (e.g. `b`) to shard model-00002-of-00002.safetensors, \
             but {} does not exist: the download is incomplete",
            index.display(),
            dir.path()
                .join("model-00002-of-00002.safetensors")
                .display()
        )
    );
}

#[test]
fn index_and_shards_disagree() {
    let dir = tmp();
    let s1 = st_file(
        dir.path(),
        "model-00001-of-00002.safetensors",
        &[bf16("a", &[2], 1)],
    );
    let s2 = st_file(
        dir.path(),
        "model-00002-of-00002.safetensors",
        &[bf16("b", &[2], 2), bf16("extra", &[2], 3)],
    );
    // The index lists `ghost`, which no shard has.
    let index = index_file(
        dir.path(),
        &[
            ("a", "model-00001-of-00002.safetensors"),
            ("b", "model-00002-of-00002.safetensors"),
            ("extra", "model-00002-of-00002.safetensors"),
            ("ghost", "model-00001-of-00002.safetensors"),
        ],
    );
    assert_eq!(
        open_err(dir.path()).to_string(),
        format!(
            "{}: the index maps tensor `ghost` to {}, but that shard's header has no such tensor",
            index.display(),
            s1.display()
        )
    );
    // The index puts `b` in the wrong shard.
    index_file(
        dir.path(),
        &[
            ("a", "model-00001-of-00002.safetensors"),
            ("b", "model-00001-of-00002.safetensors"),
            ("extra", "model-00002-of-00002.safetensors"),
        ],
    );
    assert_eq!(
        open_err(dir.path()).to_string(),
        format!(
            "{}: the index maps tensor `b` to {}, but that shard's header has no such tensor \
             (it is in {})",
            index.display(),
            s1.display(),
            s2.display()
        )
    );
    // A shard holds `extra`, which the index does not list.
    index_file(
        dir.path(),
        &[
            ("a", "model-00001-of-00002.safetensors"),
            ("b", "model-00002-of-00002.safetensors"),
        ],
    );
    assert_eq!(
        open_err(dir.path()).to_string(),
        format!(
            "{}: shard {} holds tensor `extra`, which the index does not list: the index and \
             the shards disagree",
            index.display(),
            s2.display()
        )
    );
}

#[test]
fn bad_index_files() {
    let dir = tmp();
    st_file(
        dir.path(),
        "model-00001-of-00001.safetensors",
        &[bf16("a", &[2], 1)],
    );
    let index = dir.path().join("model.safetensors.index.json");
    let cases = [
        (
            "{not json",
            "not JSON: key must be a string at line 1 column 2",
        ),
        (
            "[]",
            "expected a JSON object {\"metadata\": .., \"weight_map\": {tensor: file}}",
        ),
        (
            r#"{"metadata": {}}"#,
            "it has no \"weight_map\" object mapping tensor names to shard files",
        ),
        (
            r#"{"weight_map": {"a": 3}}"#,
            "weight_map maps `a` to 3, expected a file name string",
        ),
        (r#"{"weight_map": {}}"#, "its weight_map is empty"),
    ];
    for (text, what) in cases {
        fs::write(&index, text).unwrap();
        assert_eq!(
            open_err(dir.path()).to_string(),
            format!("{}: invalid index file: {what}", index.display())
        );
    }
}

// ---------------------------------------------------------------- bad folders

#[test]
fn folder_with_only_pytorch_bin() {
    let dir = tmp();
    fs::write(dir.path().join("pytorch_model.bin"), b"PK").unwrap();
    fs::write(dir.path().join("training_args.bin"), b"PK").unwrap();
    fs::write(dir.path().join("config.json"), b"{}").unwrap();
    let e = open_err(dir.path());
    assert!(matches!(&e, IoError::PickleOnly { file, .. } if file == "pytorch_model.bin"));
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!(
            "{}: this model has only PyTorch pickle weights (pytorch_model.bin); reefknot reads \
             safetensors only",
            dir.path().display()
        )),
        "{msg}"
    );
    assert!(msg.contains("safe_serialization=True"));
    // Given the pickle directly.
    let e = open_err(&dir.path().join("pytorch_model.bin"));
    assert!(matches!(e, IoError::PickleOnly { .. }), "{e:?}");
}

#[test]
fn folder_without_weights() {
    let dir = tmp();
    fs::write(dir.path().join("config.json"), b"{}").unwrap();
    assert_eq!(
        open_err(dir.path()).to_string(),
        format!(
            "{}: no model weights in this folder: expected model.safetensors, \
             model.safetensors.index.json or a single *.safetensors file",
            dir.path().display()
        )
    );
}

#[test]
fn folder_with_several_files_and_no_index() {
    let dir = tmp();
    st_file(dir.path(), "a.safetensors", &[bf16("a", &[2], 1)]);
    st_file(dir.path(), "b.safetensors", &[bf16("b", &[2], 1)]);
    assert_eq!(
        open_err(dir.path()).to_string(),
        format!(
            "{}: 2 .safetensors files (a.safetensors, b.safetensors) but no \
             model.safetensors.index.json saying which belong to the model; add the index or \
             give the path of one file",
            dir.path().display()
        )
    );
}

#[test]
fn missing_path() {
    let dir = tmp();
    let path = dir.path().join("nope");
    let e = open_err(&path);
    assert_eq!(
        e.to_string(),
        format!("{}: no such file or folder", path.display())
    );
    assert_eq!(e.path(), path);
}

#[test]
fn every_tensor_dtype_reads() {
    let dir = tmp();
    let tensors: Vec<T> = Dtype::ALL
        .iter()
        .enumerate()
        .map(|(i, d)| T {
            name: d.safetensors_name(),
            dtype: d.safetensors_name(),
            shape: &[3],
            data: pattern(3 * d.size(), i as u8),
        })
        .collect();
    let path = st_file(dir.path(), "all.safetensors", &tensors);
    let ck = Checkpoint::open(&path).unwrap();
    for (i, d) in Dtype::ALL.iter().enumerate() {
        let t = ck.get(d.safetensors_name()).unwrap();
        assert_eq!(t.dtype, *d);
        assert_eq!(ck.data(t), pattern(3 * d.size(), i as u8));
    }
}

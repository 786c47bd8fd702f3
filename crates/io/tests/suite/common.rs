//! Helpers shared by the integration tests: safetensors files built from code.

use std::fs;
use std::path::{Path, PathBuf};

/// Writes a file made of an 8-byte header length, `header` verbatim, and `data_len`
/// bytes of data (a counting pattern).
pub fn raw_file(dir: &Path, name: &str, header: &str, data_len: usize) -> PathBuf {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend((0..data_len).map(|i| i as u8));
    let path = dir.join(name);
    fs::write(&path, bytes).unwrap();
    path
}

/// A tensor for [`st_file`]: name, safetensors dtype, shape and its bytes.
pub struct T<'a> {
    pub name: &'a str,
    pub dtype: &'a str,
    pub shape: &'a [usize],
    pub data: Vec<u8>,
}

/// `n` bytes with a pattern that depends on `seed`.
pub fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Writes a valid safetensors file holding `tensors` contiguously, in the given order.
pub fn st_file(dir: &Path, name: &str, tensors: &[T]) -> PathBuf {
    let mut entries = Vec::new();
    let mut offset = 0;
    for t in tensors {
        entries.push(format!(
            "\"{}\":{{\"dtype\":\"{}\",\"shape\":{:?},\"data_offsets\":[{},{}]}}",
            t.name,
            t.dtype,
            t.shape,
            offset,
            offset + t.data.len()
        ));
        offset += t.data.len();
    }
    let header = format!(
        "{{\"__metadata__\":{{\"format\":\"pt\"}},{}}}",
        entries.join(",")
    );
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    for t in tensors {
        bytes.extend_from_slice(&t.data);
    }
    let path = dir.join(name);
    fs::write(&path, bytes).unwrap();
    path
}

/// A small bf16 tensor: `numel` elements.
pub fn bf16<'a>(name: &'a str, shape: &'a [usize], seed: u8) -> T<'a> {
    let n: usize = shape.iter().product();
    T {
        name,
        dtype: "BF16",
        shape,
        data: pattern(n * 2, seed),
    }
}

/// Writes an index file mapping each (tensor, shard) pair.
pub fn index_file(dir: &Path, map: &[(&str, &str)]) -> PathBuf {
    let entries: Vec<String> = map
        .iter()
        .map(|(t, f)| format!("\"{t}\": \"{f}\""))
        .collect();
    let text = format!(
        "{{\"metadata\": {{\"total_size\": 0}}, \"weight_map\": {{{}}}}}",
        entries.join(", ")
    );
    let path = dir.join("model.safetensors.index.json");
    fs::write(&path, text).unwrap();
    path
}

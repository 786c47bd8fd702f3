//! Parsing and strict validation of a safetensors header.
//!
//! Layout of a safetensors file: an 8-byte little-endian header length `N`, `N` bytes
//! of UTF-8 JSON (`{"__metadata__": {..}, "name": {"dtype", "shape", "data_offsets"}}`),
//! then the data area. `data_offsets` are relative to the data area; the tensors must
//! tile it exactly: no overlap, no gap, nothing after the last one.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::Path;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;

use crate::{Dtype, IoError};

/// The largest header accepted (the same limit as the reference implementation).
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// One tensor of a parsed header, offsets absolute within the file.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub start: usize,
    pub end: usize,
}

/// A validated header.
#[derive(Debug)]
pub(crate) struct Header {
    pub metadata: BTreeMap<String, String>,
    /// In storage order (by offset).
    pub entries: Vec<Entry>,
}

/// The header's top-level object, keys in file order (duplicates kept so they can be
/// reported instead of silently overwritten).
struct RawHeader(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for RawHeader {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RawVisitor;
        impl<'de> Visitor<'de> for RawVisitor {
            type Value = RawHeader;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object mapping tensor names to {dtype, shape, data_offsets}")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawHeader, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some(key) = map.next_key::<String>()? {
                    let value: Value = map.next_value()?;
                    entries.push((key, value));
                }
                Ok(RawHeader(entries))
            }
        }
        deserializer.deserialize_map(RawVisitor)
    }
}

/// Validates the bytes of a whole safetensors file as [`crate::Checkpoint::open`] does
/// each file it opens (errors name the file `path`), and returns how many tensors it
/// holds. For tools that have the bytes already, and for the fuzzing targets.
pub fn check_header(path: &Path, bytes: &[u8]) -> Result<usize, IoError> {
    parse(path, bytes).map(|h| h.entries.len())
}

/// Parses and validates the header of the safetensors file whose bytes are `bytes`.
pub(crate) fn parse(path: &Path, bytes: &[u8]) -> Result<Header, IoError> {
    let file_len = bytes.len() as u64;
    let Some(prefix) = bytes.get(..8) else {
        return Err(IoError::TooShort {
            path: path.to_path_buf(),
            len: file_len,
        });
    };
    let header_len = u64::from_le_bytes(prefix.try_into().expect("8 bytes"));
    if header_len > MAX_HEADER_LEN {
        return Err(IoError::HeaderTooLarge {
            path: path.to_path_buf(),
            header_len,
            limit: MAX_HEADER_LEN,
        });
    }
    if header_len > file_len - 8 {
        return Err(IoError::HeaderPastEnd {
            path: path.to_path_buf(),
            header_len,
            file_len,
        });
    }
    let data_start = 8 + header_len as usize;
    let header_bytes = &bytes[8..data_start];
    let text = std::str::from_utf8(header_bytes).map_err(|e| IoError::HeaderNotUtf8 {
        path: path.to_path_buf(),
        offset: e.valid_up_to(),
    })?;
    let raw: RawHeader = serde_json::from_str(text).map_err(|e| IoError::HeaderJson {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let data_len = bytes.len() - data_start;

    let mut metadata = BTreeMap::new();
    let mut seen_metadata = false;
    let mut names = HashSet::with_capacity(raw.0.len());
    // (name, dtype, shape, start, end) with offsets relative to the data area.
    let mut entries = Vec::with_capacity(raw.0.len());
    for (name, value) in raw.0 {
        if name == "__metadata__" {
            if seen_metadata {
                return Err(IoError::BadMetadata {
                    path: path.to_path_buf(),
                    what: "the header has two __metadata__ entries".into(),
                });
            }
            seen_metadata = true;
            metadata = parse_metadata(path, value)?;
            continue;
        }
        if !names.insert(name.clone()) {
            return Err(IoError::DuplicateTensor {
                tensor: name,
                first: path.to_path_buf(),
                second: path.to_path_buf(),
            });
        }
        let entry = parse_entry(path, name, value)?;
        if entry.end > data_len {
            return Err(IoError::OutOfBounds {
                path: path.to_path_buf(),
                tensor: entry.name,
                start: entry.start,
                end: entry.end,
                data_len,
            });
        }
        entries.push(entry);
    }

    // The tensors must tile the data area exactly.
    entries.sort_by_key(|e| (e.start, e.end));
    let mut expected = 0usize;
    for (i, e) in entries.iter().enumerate() {
        if e.start < expected {
            let prev = &entries[i - 1];
            return Err(IoError::Overlap {
                path: path.to_path_buf(),
                tensor: e.name.clone(),
                start: e.start,
                end: e.end,
                previous: prev.name.clone(),
                previous_start: prev.start,
                previous_end: prev.end,
            });
        }
        if e.start > expected {
            return Err(IoError::Gap {
                path: path.to_path_buf(),
                tensor: e.name.clone(),
                start: e.start,
                expected,
                previous: i.checked_sub(1).map(|p| entries[p].name.clone()),
            });
        }
        expected = e.end;
    }
    if expected != data_len {
        return Err(IoError::TrailingData {
            path: path.to_path_buf(),
            end: expected,
            data_len,
        });
    }
    for e in &mut entries {
        e.start += data_start;
        e.end += data_start;
    }
    Ok(Header { metadata, entries })
}

fn parse_metadata(path: &Path, value: Value) -> Result<BTreeMap<String, String>, IoError> {
    let bad = |what: String| IoError::BadMetadata {
        path: path.to_path_buf(),
        what,
    };
    match value {
        Value::Object(map) => map
            .into_iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k, s)),
                other => Err(bad(format!(
                    "key `{k}` has the {} {other}, expected a string",
                    json_kind(&other)
                ))),
            })
            .collect(),
        Value::Null => Ok(BTreeMap::new()),
        other => Err(bad(format!("found {} {other}", json_kind(&other)))),
    }
}

/// Validates one tensor entry; offsets stay relative to the data area.
fn parse_entry(path: &Path, name: String, value: Value) -> Result<Entry, IoError> {
    let bad = |name: &str, what: String| IoError::BadEntry {
        path: path.to_path_buf(),
        tensor: name.to_string(),
        what,
    };
    let Value::Object(mut obj) = value else {
        return Err(bad(
            &name,
            format!(
                "expected an object {{\"dtype\", \"shape\", \"data_offsets\"}}, found {} {value}",
                json_kind(&value)
            ),
        ));
    };
    for key in obj.keys() {
        if !matches!(key.as_str(), "dtype" | "shape" | "data_offsets") {
            tracing::debug!(file = %path.display(), tensor = %name, key = %key, "ignoring unknown key in tensor entry");
        }
    }
    let dtype_str = match obj.remove("dtype") {
        Some(Value::String(s)) => s,
        Some(other) => {
            return Err(bad(
                &name,
                format!("`dtype` must be a string such as \"BF16\", found {other}"),
            ))
        }
        None => return Err(bad(&name, "the entry has no `dtype`".into())),
    };
    let Some(dtype) = Dtype::from_safetensors_name(&dtype_str) else {
        let reason = match dtype_str.as_str() {
            "F4" | "F6_E2M3" | "F6_E3M2" => "a sub-byte type that reefknot does not support",
            _ => "which the safetensors format does not define",
        };
        return Err(IoError::UnsupportedDtype {
            path: path.to_path_buf(),
            tensor: name,
            dtype: dtype_str,
            reason,
        });
    };
    let shape = match obj.remove("shape") {
        Some(v) => usize_array(&v).ok_or_else(|| {
            bad(
                &name,
                format!("`shape` must be an array of non-negative integers, found {v}"),
            )
        })?,
        None => return Err(bad(&name, "the entry has no `shape`".into())),
    };
    let (start, end) = match obj.remove("data_offsets") {
        Some(v) => match usize_array(&v).as_deref() {
            Some(&[start, end]) => (start, end),
            _ => {
                return Err(bad(
                    &name,
                    format!(
                        "`data_offsets` must be an array of two non-negative integers [start, end], found {v}"
                    ),
                ))
            }
        },
        None => return Err(bad(&name, "the entry has no `data_offsets`".into())),
    };
    if end < start {
        return Err(IoError::ReversedOffsets {
            path: path.to_path_buf(),
            tensor: name,
            start,
            end,
        });
    }
    let expected = shape
        .iter()
        .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| {
            bad(
                &name,
                format!("shape {shape:?} of {dtype} has more bytes than this machine can address"),
            )
        })?;
    if end - start != expected {
        return Err(IoError::SizeMismatch {
            path: path.to_path_buf(),
            tensor: name,
            dtype,
            shape,
            expected,
            actual: end - start,
            start,
            end,
        });
    }
    Ok(Entry {
        name,
        dtype,
        shape,
        start,
        end,
    })
}

fn usize_array(v: &Value) -> Option<Vec<usize>> {
    v.as_array()?
        .iter()
        .map(|x| x.as_u64().and_then(|n| usize::try_from(n).ok()))
        .collect()
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

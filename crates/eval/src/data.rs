//! Evaluation data: token files and text.
//!
//! - `*.json`: token ids, either one array (`[1, 15, 9]`, one document) or an array of
//!   arrays (several documents);
//! - `*.jsonl`: one document per line, each `{"text": "…"}`, `{"input_ids": […]}` or a
//!   bare array of ids;
//! - anything else: UTF-8 text, one document.
//!
//! Text is tokenized with the model's own `tokenizer.json`, special tokens added as
//! `transformers`' `tokenizer(text)` adds them (a Llama tokenizer's BOS, say).
//! Documents are evaluated separately: no window spans two of them.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tokenizers::Tokenizer;

use crate::EvalError;

/// The token ids of one data file, by document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Documents {
    /// The file they were read from.
    pub path: PathBuf,
    /// Each document's token ids.
    pub docs: Vec<Vec<u32>>,
    /// Whether the file was text, tokenized with the model's tokenizer.
    pub tokenized: bool,
}

impl Documents {
    /// All the documents' tokens.
    pub fn tokens(&self) -> usize {
        self.docs.iter().map(Vec::len).sum()
    }

    /// Fails on the first token id not below `vocab`.
    pub fn check_vocab(&self, vocab: usize) -> Result<(), EvalError> {
        let mut position = 0;
        for doc in &self.docs {
            if let Some(i) = doc.iter().position(|&id| id as usize >= vocab) {
                return Err(EvalError::TokenOutOfRange {
                    path: self.path.clone(),
                    position: position + i,
                    id: doc[i],
                    vocab,
                });
            }
            position += doc.len();
        }
        Ok(())
    }
}

/// Reads `path` (see the module doc); text is tokenized with `model_dir/tokenizer.json`.
pub fn read_documents(path: &Path, model_dir: &Path) -> Result<Documents, EvalError> {
    let bad = |message: String| EvalError::Data {
        path: path.to_path_buf(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        bad(format!(
            "not UTF-8 at byte {}: eval reads token files (.json, .jsonl) and text",
            e.utf8_error().valid_up_to()
        ))
    })?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let mut tokenizer = Lazy::new(model_dir);
    let docs = match ext {
        "json" => {
            let value: Value =
                serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
            match &value {
                Value::Array(items) if items.iter().all(Value::is_array) && !items.is_empty() => {
                    items
                        .iter()
                        .enumerate()
                        .map(|(i, d)| ids(d).map_err(|m| bad(format!("document {i}: {m}"))))
                        .collect::<Result<_, _>>()?
                }
                _ => vec![ids(&value).map_err(bad)?],
            }
        }
        "jsonl" => {
            let mut docs = Vec::new();
            for (n, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let at = |m: String| bad(format!("line {}: {m}", n + 1));
                let value: Value =
                    serde_json::from_str(line).map_err(|e| at(format!("not JSON: {e}")))?;
                let doc = match &value {
                    Value::Array(_) => ids(&value).map_err(at)?,
                    Value::Object(o) => match (o.get("input_ids"), o.get("text")) {
                        (Some(v), _) => ids(v).map_err(at)?,
                        (None, Some(Value::String(t))) => tokenizer.encode(t)?,
                        _ => {
                            return Err(at(
                                "expected an object with \"text\" (a string) or \"input_ids\""
                                    .into(),
                            ))
                        }
                    },
                    _ => return Err(at("expected an array of token ids or an object".into())),
                };
                docs.push(doc);
            }
            docs
        }
        _ => vec![tokenizer.encode(&text)?],
    };
    Ok(Documents {
        path: path.to_path_buf(),
        docs,
        tokenized: tokenizer.used,
    })
}

/// An array of token ids.
fn ids(value: &Value) -> Result<Vec<u32>, String> {
    let Value::Array(items) = value else {
        return Err("expected an array of token ids".into());
    };
    items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_u64()
                .and_then(|id| u32::try_from(id).ok())
                .ok_or_else(|| format!("item {i} ({v}) is not a token id"))
        })
        .collect()
}

/// The model's tokenizer, loaded when text first needs it.
struct Lazy<'a> {
    dir: &'a Path,
    tokenizer: Option<Tokenizer>,
    used: bool,
}

impl<'a> Lazy<'a> {
    fn new(dir: &'a Path) -> Self {
        Lazy {
            dir,
            tokenizer: None,
            used: false,
        }
    }

    fn encode(&mut self, text: &str) -> Result<Vec<u32>, EvalError> {
        let path = self.dir.join("tokenizer.json");
        let bad = |message: String| EvalError::Data {
            path: path.clone(),
            message,
        };
        if self.tokenizer.is_none() {
            if !path.is_file() {
                return Err(bad(
                    "text needs the model's tokenizer.json (or give token ids as .json/.jsonl)"
                        .into(),
                ));
            }
            let t = Tokenizer::from_file(&path).map_err(|e| bad(format!("cannot load: {e}")))?;
            self.tokenizer = Some(t);
        }
        self.used = true;
        let tokenizer = self.tokenizer.as_ref().expect("loaded above");
        let encoding = tokenizer
            .encode(text, true)
            .map_err(|e| bad(format!("cannot tokenize: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(name: &str, body: &str) -> Result<Documents, EvalError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        read_documents(&path, dir.path())
    }

    #[test]
    fn token_files() {
        assert_eq!(
            read("a.json", "[1, 2, 3]").unwrap().docs,
            vec![vec![1, 2, 3]]
        );
        assert_eq!(
            read("a.json", "[[1, 2], [3]]").unwrap().docs,
            vec![vec![1, 2], vec![3]]
        );
        let d = read("a.jsonl", "[1, 2]\n\n{\"input_ids\": [4, 5]}\n").unwrap();
        assert_eq!(d.docs, vec![vec![1, 2], vec![4, 5]]);
        assert!(!d.tokenized);
        assert_eq!(d.tokens(), 4);
    }

    #[test]
    fn bad_token_files_say_where() {
        let e = read("a.json", "[1, -2]").unwrap_err().to_string();
        assert!(e.ends_with("item 1 (-2) is not a token id"), "{e}");
        let e = read("a.jsonl", "[1]\n{\"txt\": 1}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2: expected an object"), "{e}");
        let e = read("a.txt", "some words").unwrap_err().to_string();
        assert!(e.contains("text needs the model's tokenizer.json"), "{e}");
    }

    #[test]
    fn ids_beyond_the_vocabulary_are_refused() {
        let d = read("a.json", "[[1, 2], [3, 9]]").unwrap();
        assert!(d.check_vocab(10).is_ok());
        let e = d.check_vocab(9).unwrap_err().to_string();
        assert!(
            e.ends_with("token 3 is id 9, but the model's vocabulary has 9 tokens"),
            "{e}"
        );
    }
}

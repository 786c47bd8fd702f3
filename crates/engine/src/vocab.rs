//! Output vocabularies other than the base's row for row (`tokenizer: base | union |
//! PATH`), as mergekit 0.1.5 builds them.
//!
//! Each input's vocabulary is read from its `tokenizer.json` (the model's vocabulary
//! and its added tokens, every id below the `vocab_size` of its `config.json`). The
//! output's is the base's, one input's, or the union: the base's tokens at their ids,
//! then the other inputs' regular tokens the base lacks (input by input, in id order),
//! then their added tokens the base lacks, with the settings of their first holder.
//! mergekit appends the same tokens in the iteration order of a hash map, which can
//! change from run to run; reefknot's order is fixed, and every token's row the same.
//!
//! Every vocabulary tensor (an `embed` or `lm_head` tensor with one row per token) of
//! every input is permuted into the output's vocabulary before the merge. A token an
//! input lacks takes, in mergekit's order of rules: the row of the one input that has
//! it; else the base's row, where the base has it; else the mean of the rows of the
//! inputs that have it. A recipe's `tokenizer.tokens` adds tokens and gives rows
//! of its own: another input's row of the token (or of another token, or an id), or
//! zeros, for the inputs that lack it, or for every input (`force`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use reefknot_io::Checkpoint;
use reefknot_plan as plan;
use serde_json::Value;

/// One input's vocabulary, as its tokenizer files give it.
#[derive(Clone, Debug)]
pub(crate) struct InputVocab {
    /// Its rows: `vocab_size` of its `config.json`.
    pub(crate) rows: usize,
    /// Every token with an id below `rows`, by text.
    ids: HashMap<String, usize>,
    /// The token of each id below `rows` (`None` where there is none: padding rows).
    by_id: Vec<Option<String>>,
    /// How many tokens of the tokenizer have an id at or beyond `rows`.
    beyond: usize,
    /// Its regular tokens (the tokenizer model's vocabulary), in id order.
    regular: Vec<(usize, String)>,
    /// Its added tokens, in id order.
    added: Vec<plan::AddedToken>,
    /// Read from SentencePiece's `tokenizer.model`: the folder has no `tokenizer.json`
    /// that tokens could be added to.
    slow: bool,
}

impl InputVocab {
    /// Reads the vocabulary of the model folder `folder` (`tokenizer.json`, and
    /// `config.json` for the row count). The error is a sentence.
    pub(crate) fn read(folder: &Path) -> Result<InputVocab, String> {
        let json = |name: &str| -> Result<Value, String> {
            let path = folder.join(name);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            serde_json::from_str(&text)
                .map_err(|e| format!("{} is not valid JSON: {e}", path.display()))
        };
        // A folder with only SentencePiece's model (a "slow" tokenizer): its pieces,
        // and the tokens added after them in tokenizer_config.json.
        let slow =
            !folder.join("tokenizer.json").exists() && folder.join("tokenizer.model").is_file();
        let tokenizer = if slow {
            let path = folder.join("tokenizer.model");
            let bytes =
                std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let pieces = sentencepiece_pieces(&bytes)
                .map_err(|e| format!("{} is not a SentencePiece model: {e}", path.display()))?;
            let added: Vec<Value> = match json("tokenizer_config.json") {
                Ok(c) => (c.get("added_tokens_decoder").and_then(Value::as_object))
                    .into_iter()
                    .flatten()
                    .filter_map(|(id, t)| {
                        let mut t = t.clone();
                        t["id"] = id.parse::<u64>().ok()?.into();
                        Some(t)
                    })
                    .collect(),
                Err(_) => Vec::new(),
            };
            let vocab: serde_json::Map<String, Value> = (pieces.into_iter().enumerate())
                .map(|(id, p)| (p, Value::from(id as u64)))
                .collect();
            serde_json::json!({ "model": { "vocab": vocab }, "added_tokens": added })
        } else {
            json("tokenizer.json")?
        };
        let mut all: Vec<(usize, String)> = Vec::new();
        match tokenizer.pointer("/model/vocab") {
            Some(Value::Object(map)) => {
                for (token, id) in map {
                    let id = id.as_u64().ok_or(format!(
                        "tokenizer.json: the id of `{token}` is not a number"
                    ))?;
                    all.push((id as usize, token.clone()));
                }
            }
            // Unigram: `[token, score]` pairs, the id being the position.
            Some(Value::Array(pieces)) => {
                for (id, piece) in pieces.iter().enumerate() {
                    let token = piece
                        .get(0)
                        .and_then(Value::as_str)
                        .ok_or("tokenizer.json: a Unigram piece is not [token, score]")?;
                    all.push((id, token.to_string()));
                }
            }
            _ => return Err("tokenizer.json has no `model.vocab`".into()),
        }
        let mut added = Vec::new();
        for t in tokenizer
            .get("added_tokens")
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice)
        {
            let flag = |k: &str| t.get(k).and_then(Value::as_bool).unwrap_or(false);
            let (Some(id), Some(content)) = (
                t.get("id").and_then(Value::as_u64),
                t.get("content").and_then(Value::as_str),
            ) else {
                return Err("tokenizer.json: an added token has no `id` or `content`".into());
            };
            added.push(plan::AddedToken {
                id: id as usize,
                content: content.to_string(),
                special: flag("special"),
                normalized: t
                    .get("normalized")
                    .and_then(Value::as_bool)
                    .unwrap_or(!flag("special")),
                lstrip: flag("lstrip"),
                rstrip: flag("rstrip"),
                single_word: flag("single_word"),
            });
        }
        // The rows: `vocab_size` (a multimodal model's `text_config`'s), else one past
        // the highest id.
        let config = match json("config.json") {
            Ok(c) => Some(c),
            Err(e) if folder.join("config.json").exists() => return Err(e),
            Err(_) => None,
        };
        let declared = config.as_ref().and_then(|c| {
            c.get("vocab_size")
                .or_else(|| c.pointer("/text_config/vocab_size"))?
                .as_u64()
        });
        let highest = all
            .iter()
            .map(|(id, _)| *id)
            .chain(added.iter().map(|t| t.id))
            .max();
        let rows = declared.map_or(highest.map_or(0, |h| h + 1), |n| n as usize);
        all.sort();
        added.sort_by_key(|t| t.id);
        let beyond = all.iter().filter(|(id, _)| *id >= rows).count()
            + added.iter().filter(|t| t.id >= rows).count();
        all.retain(|(id, _)| *id < rows);
        added.retain(|t| t.id < rows);
        // An added token wins an id it shares with a regular one, as the tokenizer
        // itself resolves it.
        let mut ids = HashMap::with_capacity(all.len() + added.len());
        let mut by_id: Vec<Option<String>> = vec![None; rows];
        for (id, token) in &all {
            by_id[*id] = Some(token.clone());
        }
        for t in &added {
            by_id[t.id] = Some(t.content.clone());
        }
        for (id, token) in by_id.iter().enumerate() {
            if let Some(t) = token {
                ids.entry(t.clone()).or_insert(id);
            }
        }
        let added_contents: HashSet<&str> = added.iter().map(|a| a.content.as_str()).collect();
        let regular = all
            .iter()
            .filter(|(id, token)| {
                !added_contents.contains(token.as_str()) && by_id[*id].as_ref() == Some(token)
            })
            .cloned()
            .collect();
        Ok(InputVocab {
            rows,
            ids,
            by_id,
            beyond,
            regular,
            added,
            slow,
        })
    }

    /// The id of `token`, if this vocabulary has it.
    pub(crate) fn id(&self, token: &str) -> Option<usize> {
        self.ids.get(token).copied()
    }
}

/// The pieces of a SentencePiece model (`ModelProto`, protocol buffers), in id order:
/// field 1 repeats `SentencePiece`, whose field 1 is the piece. Every other field is
/// skipped by its wire type.
fn sentencepiece_pieces(bytes: &[u8]) -> Result<Vec<String>, String> {
    /// One field of a message: its number, its wire type and its payload (a varint's
    /// or a fixed field's payload is its bytes).
    type Field<'b> = (u64, u8, &'b [u8]);
    fn fields(mut b: &[u8]) -> Result<Vec<Field<'_>>, String> {
        fn varint(b: &mut &[u8]) -> Result<u64, String> {
            let mut v = 0u64;
            for shift in (0..64).step_by(7) {
                let (&byte, rest) = b.split_first().ok_or("truncated")?;
                *b = rest;
                v |= u64::from(byte & 0x7f) << shift;
                if byte & 0x80 == 0 {
                    return Ok(v);
                }
            }
            Err("a varint longer than 10 bytes".into())
        }
        let mut out = Vec::new();
        while !b.is_empty() {
            let key = varint(&mut b)?;
            let wire = (key & 7) as u8;
            let len = match wire {
                0 => {
                    let before = b;
                    varint(&mut b)?;
                    out.push((key >> 3, wire, &before[..before.len() - b.len()]));
                    continue;
                }
                1 => 8,
                2 => usize::try_from(varint(&mut b)?).map_err(|_| "a length too large")?,
                5 => 4,
                w => return Err(format!("wire type {w}")),
            };
            if len > b.len() {
                return Err("truncated".into());
            }
            out.push((key >> 3, wire, &b[..len]));
            b = &b[len..];
        }
        Ok(out)
    }
    let mut pieces = Vec::new();
    for (number, wire, piece) in fields(bytes)? {
        if number != 1 || wire != 2 {
            continue;
        }
        let text = fields(piece)?
            .into_iter()
            .find(|&(n, w, _)| n == 1 && w == 2)
            .map(|(_, _, t)| t)
            .ok_or("a piece without its text")?;
        pieces.push(String::from_utf8(text.to_vec()).map_err(|_| "a piece that is not UTF-8")?);
    }
    if pieces.is_empty() {
        return Err("no pieces".into());
    }
    Ok(pieces)
}

/// What the output's vocabulary is built from.
pub(crate) enum Source {
    /// One input's vocabulary (the base's, or a model's).
    Input(usize),
    /// The union of every input's.
    Union,
}

/// An output vocabulary: how every input maps into it, and the tokenizer files.
pub(crate) struct Built {
    pub(crate) vocabulary: plan::Vocabulary,
    pub(crate) files: Option<plan::TokenizerFiles>,
    /// The base's rows: its vocabulary tensors are those with this many.
    pub(crate) base_rows: usize,
}

/// A token whose rows the recipe gives (`tokenizer.tokens`), resolved to inputs.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Rule {
    /// The token.
    pub(crate) token: String,
    /// The `[input, row]` its row is read from; `None`: zeros.
    pub(crate) from: Option<[usize; 2]>,
    /// Whether the inputs that have the token take this row too.
    pub(crate) force: bool,
}

/// A token that `tokenizer.tokens` adds to the output's vocabulary, as a tokenizer's
/// `add_tokens` adds it: a token of its own, not special, normalized.
fn added_token(id: usize, content: &str) -> plan::AddedToken {
    plan::AddedToken {
        id,
        content: content.to_string(),
        special: false,
        normalized: true,
        lstrip: false,
        rstrip: false,
        single_word: false,
    }
}

/// Builds the output vocabulary of `vocabs` (one per input taking part, indexed by
/// input: the base is input 0, and `order` lists the inputs in the order mergekit sums
/// a mean over them), with the rows `rules` give. The error is a sentence.
pub(crate) fn build(
    vocabs: &BTreeMap<usize, InputVocab>,
    source: Source,
    order: &[usize],
    pad_to_multiple_of: Option<usize>,
    rules: &[Rule],
) -> Result<Built, String> {
    let base = &vocabs[&0];
    let from = match source {
        Source::Input(i) => i,
        Source::Union => 0,
    };
    // The output's tokens by id.
    let (mut tokens, mut files): (Vec<String>, Option<plan::TokenizerFiles>) = match source {
        Source::Input(i) => {
            let v = &vocabs[&i];
            let tokens = contiguous(v, i)?;
            let files = (i != 0).then_some(plan::TokenizerFiles {
                from: i,
                added: Vec::new(),
            });
            (tokens, files)
        }
        Source::Union => {
            if base.beyond > 0 {
                return Err(format!(
                    "the base's tokenizer.json has {} token(s) at or beyond its vocab_size {}; a \
                     union would give new tokens their ids (reefknot does not strip them yet)",
                    base.beyond, base.rows
                ));
            }
            let mut tokens = contiguous(base, 0)?;
            let mut have: HashMap<String, usize> = tokens
                .iter()
                .enumerate()
                .map(|(i, t)| (t.clone(), i))
                .collect();
            // mergekit takes every input's added tokens aside (the first holder's
            // settings), then appends the regular tokens the base lacks, then those.
            let mut added_info: Vec<&plan::AddedToken> = Vec::new();
            for v in vocabs.values() {
                for a in &v.added {
                    if !added_info.iter().any(|b| b.content == a.content) {
                        added_info.push(a);
                    }
                }
            }
            let mut added = Vec::new();
            let mut push =
                |token: &str, info: Option<&plan::AddedToken>, tokens: &mut Vec<String>| {
                    if have.contains_key(token) {
                        return;
                    }
                    let id = tokens.len();
                    have.insert(token.to_string(), id);
                    tokens.push(token.to_string());
                    added.push(match info {
                        Some(a) => plan::AddedToken { id, ..a.clone() },
                        None => added_token(id, token),
                    });
                };
            let added_contents: HashSet<&str> =
                added_info.iter().map(|a| a.content.as_str()).collect();
            for (&i, v) in vocabs {
                if i == 0 {
                    continue;
                }
                for (_, token) in &v.regular {
                    if !added_contents.contains(token.as_str()) {
                        push(token, None, &mut tokens);
                    }
                }
            }
            for a in &added_info {
                push(&a.content, Some(a), &mut tokens);
            }
            let files = Some(plan::TokenizerFiles { from: 0, added });
            (tokens, files)
        }
    };

    // The recipe's tokens the vocabulary lacks are added after its own, in order.
    for rule in rules {
        if !tokens.contains(&rule.token) {
            let id = tokens.len();
            tokens.push(rule.token.clone());
            files
                .get_or_insert_with(|| plan::TokenizerFiles {
                    from,
                    added: Vec::new(),
                })
                .added
                .push(added_token(id, &rule.token));
        }
    }
    if let Some(f) = files.as_ref().filter(|f| !f.added.is_empty()) {
        if vocabs.get(&f.from).is_some_and(|v| v.slow) {
            return Err(format!(
                "the output's tokenizer is input {}'s, which has only SentencePiece's \
                 tokenizer.model: reefknot adds tokens ({} here) to a tokenizer.json only",
                f.from,
                f.added.len()
            ));
        }
    }
    let ruled: HashMap<&str, &Rule> = rules.iter().map(|r| (r.token.as_str(), r)).collect();
    let mut rows = BTreeMap::new();
    let mut lacking: Vec<bool> = vec![false; tokens.len()];
    for (&i, v) in vocabs {
        let mut runs: Vec<[usize; 3]> = Vec::new();
        for (o, token) in tokens.iter().enumerate() {
            let forced = ruled.get(token.as_str()).is_some_and(|r| r.force);
            let Some(r) = v.id(token).filter(|_| !forced) else {
                lacking[o] = true;
                continue;
            };
            match runs.last_mut() {
                Some(last) if last[0] + last[2] == o && last[1] + last[2] == r => last[2] += 1,
                _ => runs.push([o, r, 1]),
            }
        }
        rows.insert(i, runs);
    }
    let mut fill = BTreeMap::new();
    for (o, token) in tokens.iter().enumerate().filter(|&(o, _)| lacking[o]) {
        if let Some(rule) = ruled.get(token.as_str()) {
            fill.insert(o, rule.from.into_iter().collect());
            continue;
        }
        let has: Vec<usize> = order
            .iter()
            .copied()
            .filter(|i| vocabs[i].id(token).is_some())
            .collect();
        let from: Vec<usize> = if has.len() > 1 && has.contains(&0) {
            vec![0]
        } else {
            has
        };
        if from.is_empty() {
            tracing::warn!("token {token:?} is in no input's vocabulary; its rows are zero");
        }
        fill.insert(
            o,
            from.iter()
                .map(|&i| [i, vocabs[&i].id(token).expect("has it")])
                .collect(),
        );
    }
    let size = match pad_to_multiple_of.filter(|&m| m > 0) {
        Some(m) => tokens.len().div_ceil(m) * m,
        None => tokens.len(),
    };
    Ok(Built {
        vocabulary: plan::Vocabulary {
            size,
            rows,
            fill,
            padded_from: (size > tokens.len()).then_some(tokens.len()),
        },
        files,
        base_rows: base.rows,
    })
}

/// The tokens of `v` by id, which must run from 0 without a gap; rows after the last
/// token (a `vocab_size` padded beyond the tokenizer, as Qwen's and Phi-3's are) are
/// left out, as mergekit leaves them out of the output.
fn contiguous(v: &InputVocab, input: usize) -> Result<Vec<String>, String> {
    let count = v
        .by_id
        .iter()
        .rposition(Option::is_some)
        .map_or(0, |i| i + 1);
    v.by_id[..count]
        .iter()
        .enumerate()
        .map(|(id, t)| {
            t.clone().ok_or_else(|| {
                format!(
                    "the vocabulary of input {input} has no token with id {id}, though it has \
                     tokens after it; reefknot builds vocabularies from tokenizers whose ids \
                     run from 0 without a gap"
                )
            })
        })
        .collect()
}

/// Whether `info` is a vocabulary tensor of `c`: in group `embed` or `lm_head`, with
/// one row per token.
pub(crate) fn is_vocabulary_tensor(
    recipe: &reefknot_recipe::Recipe,
    info: &reefknot_io::TensorInfo,
    rows: usize,
) -> bool {
    info.shape.len() == 2
        && info.shape[0] == rows
        && (recipe.groups.contains("embed", &info.name)
            || recipe.groups.contains("lm_head", &info.name))
}

/// The folder of an opened checkpoint, whose tokenizer files the output may get (none
/// for a single `.safetensors` file, as the output's other files).
pub(crate) fn folder_of(c: &Checkpoint) -> Result<&Path, String> {
    c.folder().ok_or_else(|| {
        format!(
            "{} is a single .safetensors file, without the tokenizer files of a model folder",
            c.path().display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab(rows: usize, regular: &[(&str, usize)], added: &[(&str, usize, bool)]) -> InputVocab {
        let mut ids = HashMap::new();
        for &(t, i) in regular {
            ids.insert(t.to_string(), i);
        }
        for &(t, i, _) in added {
            ids.insert(t.to_string(), i);
        }
        let mut by_id = vec![None; rows];
        for (t, &i) in &ids {
            by_id[i] = Some(t.clone());
        }
        InputVocab {
            rows,
            ids,
            by_id,
            beyond: 0,
            regular: regular.iter().map(|&(t, i)| (i, t.to_string())).collect(),
            slow: false,
            added: added
                .iter()
                .map(|&(t, i, special)| plan::AddedToken {
                    id: i,
                    content: t.into(),
                    special,
                    normalized: !special,
                    lstrip: false,
                    rstrip: false,
                    single_word: false,
                })
                .collect(),
        }
    }

    /// The union keeps the base's ids, appends regular tokens then added ones, and
    /// fills a missing row from the one holder, the base, or the mean of the holders.
    #[test]
    fn a_union_appends_what_the_base_lacks_and_fills_by_mergekit_s_rules() {
        let mut v = BTreeMap::new();
        v.insert(0, vocab(3, &[("a", 1), ("b", 2)], &[("<s>", 0, true)]));
        v.insert(
            1,
            vocab(4, &[("b", 0), ("a", 1), ("c", 2)], &[("<s>", 3, true)]),
        );
        v.insert(
            2,
            vocab(4, &[("a", 0), ("c", 1), ("d", 2)], &[("<im>", 3, true)]),
        );
        let built = build(&v, Source::Union, &[1, 2, 0], None, &[]).unwrap();
        let files = built.files.unwrap();
        let added: Vec<(usize, &str, bool)> = files
            .added
            .iter()
            .map(|a| (a.id, a.content.as_str(), a.special))
            .collect();
        assert_eq!(added, [(3, "c", false), (4, "d", false), (5, "<im>", true)]);
        let voc = built.vocabulary;
        assert_eq!(voc.size, 6);
        // Model 1: <s> at 3, a at 1, b at 0, c at 2.
        let rows = |i: usize| (0..6).map(|o| voc.row_of(i, o)).collect::<Vec<_>>();
        assert_eq!(rows(1), [Some(3), Some(1), Some(0), Some(2), None, None]);
        assert_eq!(rows(2), [None, Some(0), None, Some(1), Some(2), Some(3)]);
        // <s> and b: the base has them; c: models 1 and 2, averaged; d, <im>: model 2.
        assert_eq!(voc.fill[&0], [[0, 0]]);
        assert_eq!(voc.fill[&2], [[0, 2]]);
        assert_eq!(voc.fill[&3], [[1, 2], [2, 1]]);
        assert_eq!(voc.fill[&4], [[2, 2]]);
        assert_eq!(voc.fill[&5], [[2, 3]]);
    }

    /// A folder with only SentencePiece's `tokenizer.model` is read as SentencePiece
    /// reads it: every piece at its id (`scripts/golden/make_slow_tokenizer_golden.py`),
    /// then the tokens tokenizer_config.json adds.
    #[test]
    fn a_sentencepiece_model_is_read_piece_by_piece() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/slow_tokenizer");
        let expected: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap())
                .unwrap();
        let pieces: Vec<&str> = expected["pieces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        let v = InputVocab::read(&dir).unwrap();
        assert!(v.slow);
        assert_eq!(v.rows, pieces.len() + 2);
        for (id, piece) in pieces.iter().enumerate() {
            assert_eq!(v.id(piece), Some(id), "{piece}");
        }
        let added: Vec<(usize, &str, bool)> = v
            .added
            .iter()
            .map(|a| (a.id, a.content.as_str(), a.special))
            .collect();
        assert_eq!(added, [(320, "<|im_start|>", true), (321, "<tool>", false)]);
        // The output may keep such a tokenizer, but not add tokens to it.
        let mut vocabs = BTreeMap::new();
        vocabs.insert(0, v);
        let rule = Rule {
            token: "<new>".into(),
            from: None,
            force: false,
        };
        let e = build(&vocabs, Source::Input(0), &[0], None, &[rule])
            .err()
            .unwrap();
        assert!(e.contains("only SentencePiece's tokenizer.model"), "{e}");
        assert!(build(&vocabs, Source::Input(0), &[0], None, &[]).is_ok());
        assert!(
            sentencepiece_pieces(&[0x0a, 0x05, 0x0a]).is_err(),
            "truncated"
        );
    }

    /// A gap between tokens is refused; rows after the last token (a padded
    /// `vocab_size`) are left out of the output.
    #[test]
    fn a_gap_is_refused_and_trailing_rows_are_left_out() {
        let mut v = BTreeMap::new();
        v.insert(0, vocab(4, &[("a", 0), ("b", 2)], &[]));
        let e = build(&v, Source::Input(0), &[0], None, &[]).err().unwrap();
        assert!(e.contains("no token with id 1"), "{e}");
        let mut v = BTreeMap::new();
        v.insert(0, vocab(6, &[("a", 0), ("b", 1), ("c", 2)], &[]));
        let built = build(&v, Source::Input(0), &[0], None, &[]).unwrap();
        assert_eq!(built.vocabulary.size, 3);
        assert_eq!(built.vocabulary.rows[&0], [[0, 0, 3]]);
    }
}

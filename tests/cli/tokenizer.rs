//! Output vocabularies other than the base's row for row: `tokenizer: union`, a model's
//! vocabulary, and mergekit's `tokenizer_source`, with the rows each token gets.

use std::fs;
use std::path::Path;

use reefknot_io::{Checkpoint, Dtype};
use serde_json::{json, Value};

use crate::util::*;

const VOCAB: usize = 256;
const TENSORS: [&str; 2] = ["model.embed_tokens.weight", "lm_head.weight"];

/// Writes a word-level `tokenizer.json` whose token of id `i` is `tokens[i]` (id 0 an
/// added special token), and a `tokenizer_config.json` that lists it.
pub(crate) fn write_tokenizer(dir: &Path, tokens: &[String]) {
    let vocab: serde_json::Map<String, Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let t = json!({
        "version": "1.0",
        "added_tokens": [{"id": 0, "content": tokens[0], "single_word": false, "lstrip": false,
                          "rstrip": false, "normalized": false, "special": true}],
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": tokens[0]},
    });
    fs::write(dir.join("tokenizer.json"), t.to_string()).unwrap();
    fs::write(
        dir.join("tokenizer_config.json"),
        json!({"added_tokens_decoder": {"0": {"content": tokens[0], "special": true}}}).to_string(),
    )
    .unwrap();
}

/// The base's tokens; code's, with `t5` and `t7` swapped and `t9` replaced by `code9`;
/// math's, with `t9` replaced by `math9` and `t11` by `code9`.
pub(crate) fn vocabularies() -> [Vec<String>; 3] {
    let base: Vec<String> = std::iter::once("<unk>".to_string())
        .chain((1..VOCAB).map(|i| format!("t{i}")))
        .collect();
    let mut code = base.clone();
    code.swap(5, 7);
    code[9] = "code9".into();
    let mut math = base.clone();
    math[9] = "math9".into();
    math[11] = "code9".into();
    [base, code, math]
}

fn row(c: &Checkpoint, name: &str, r: usize) -> Vec<f32> {
    let v = values(c, name);
    let cols = v.len() / c.get(name).unwrap().shape[0];
    v[r * cols..(r + 1) * cols].to_vec()
}

fn mean(rows: &[Vec<f32>]) -> Vec<f32> {
    let mut m = rows[0].clone();
    for r in &rows[1..] {
        m.iter_mut().zip(r).for_each(|(a, b)| *a += b);
    }
    m.iter_mut().for_each(|a| *a /= rows.len() as f32);
    m
}

/// A JSON file's value.
fn json_file(path: &Path) -> Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

/// `got` and `want` element for element within `tolerance`.
fn assert_close(got: &[f32], want: &[f32], tolerance: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let worst = got
        .iter()
        .zip(want)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(worst < tolerance, "{what}: off by {worst}");
}

fn workspace() -> Workspace {
    let ws = Workspace::new(Dtype::F32, None);
    for (name, tokens) in ["base", "code", "math"].iter().zip(vocabularies()) {
        write_tokenizer(&ws.model(name), &tokens);
    }
    ws
}

#[test]
fn a_union_holds_every_token_each_row_filled_as_mergekit_fills_it() {
    let ws = workspace();
    ws.recipe(
        "union.yaml",
        "base: models/base\nmodels:\n  - path: models/code\n  - path: models/math\nmerge: mean\ntokenizer: union\n",
    );
    ok(&run_in(
        ws.path(),
        &["merge", "union.yaml", "-o", "out", "--quiet"],
    ));
    let out = Checkpoint::open(&ws.path().join("out")).unwrap();
    let (base, models) = ws.family();
    let (code, math) = (&models[0], &models[1]);
    // The base's 256 tokens keep their ids; code9 then math9 follow (input order).
    let config: Value = json_file(&ws.path().join("out/config.json"));
    assert_eq!(config["vocab_size"], 258);
    let tj: Value = json_file(&ws.path().join("out/tokenizer.json"));
    let added: Vec<(u64, &str)> = tj["added_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["id"].as_u64().unwrap(), t["content"].as_str().unwrap()))
        .collect();
    assert_eq!(added, [(0, "<unk>"), (256, "code9"), (257, "math9")]);
    let tc: Value = json_file(&ws.path().join("out/tokenizer_config.json"));
    assert_eq!(tc["added_tokens_decoder"]["257"]["content"], "math9");
    for name in TENSORS {
        assert_eq!(out.get(name).unwrap().shape[0], 258, "{name}");
        let (b, c, m) = (
            |r| row(&base, name, r),
            |r| row(code, name, r),
            |r| row(math, name, r),
        );
        // `mean` of the two models' rows (each permuted or filled) against the base's.
        let merged = |rb: Vec<f32>, rc: Vec<f32>, rm: Vec<f32>| -> Vec<f32> {
            (0..rb.len())
                .map(|k| rb[k] + ((rc[k] - rb[k]) + (rm[k] - rb[k])) / 2.0)
                .collect()
        };
        let expect = [
            // A token everyone has, at another id in code.
            (5, merged(b(5), c(7), m(5))),
            // t9, which only the base has: every input takes the base's row.
            (9, b(9)),
            // t11, which code and the base have: math takes the base's row.
            (11, merged(b(11), c(11), b(11))),
            // code9, which code and math have but not the base: the base takes the mean.
            (256, {
                let fill = mean(&[c(9), m(11)]);
                merged(fill, c(9), m(11))
            }),
            // math9, which only math has: math's row for everyone.
            (257, m(9)),
        ];
        for (r, want) in expect {
            let got = row(&out, name, r);
            assert_close(&got, &want, 1e-7, &format!("{name} row {r}"));
        }
    }
    // `check` says what the vocabulary is; mergekit's form is the same merge.
    let shown = ok(&run_in(ws.path(), &["check", "union.yaml"]));
    assert!(
        shown.contains("vocabulary 258 tokens: the base model's tokenizer and 2 tokens it lacks"),
        "{shown}"
    );
    ws.recipe(
        "mergekit.yml",
        "merge_method: task_arithmetic\nbase_model: models/base\nmodels:\n  - model: models/code\n    \
         parameters: { weight: 0.5 }\n  - model: models/math\n    parameters: { weight: 0.5 }\n\
         tokenizer_source: union\ndtype: float32\n",
    );
    ok(&run_in(
        ws.path(),
        &["merge", "mergekit.yml", "-o", "mk", "--quiet"],
    ));
    let mk = Checkpoint::open(&ws.path().join("mk")).unwrap();
    for name in TENSORS {
        let (a, b) = (values(&out, name), values(&mk, name));
        assert_close(&a, &b, 1e-6, name);
    }
}

#[test]
fn tokens_give_their_rows_add_what_is_missing_and_errors_point_at_the_token() {
    let ws = workspace();
    let recipe = |tokens: &str| {
        format!(
            "base: models/base\nmodels:\n  - path: models/code\n  - path: models/math\nmerge: mean\ntokenizer:\n  source: union\n  tokens:\n{tokens}"
        )
    };
    ws.recipe(
        "tokens.yaml",
        &recipe(
            "    t9: { source: zero }\n    code9: { source: { model: base, token_id: 3 }, force: true }\n    \"<new>\": { source: { model: models/code, token: t5 } }\n",
        ),
    );
    ok(&run_in(
        ws.path(),
        &["merge", "tokens.yaml", "-o", "out", "--quiet"],
    ));
    let out = Checkpoint::open(&ws.path().join("out")).unwrap();
    let (base, models) = ws.family();
    let code = &models[0];
    // `<new>` is in no vocabulary: added after the union's 258 tokens.
    let config: Value = json_file(&ws.path().join("out/config.json"));
    assert_eq!(config["vocab_size"], 259);
    let tj: Value = json_file(&ws.path().join("out/tokenizer.json"));
    let last = tj["added_tokens"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(
        (last["id"].as_u64(), last["content"].as_str()),
        (Some(258), Some("<new>"))
    );
    assert_eq!(
        (last["special"].as_bool(), last["normalized"].as_bool()),
        (Some(false), Some(true))
    );
    for name in TENSORS {
        let b = |r| row(&base, name, r);
        // t9: the base keeps its row, code and math (which lack it) are zero, so the
        // mean of their task vectors is -b.
        let zero = vec![0f32; b(9).len()];
        assert_close(&row(&out, name, 9), &zero, 1e-7, &format!("{name} t9"));
        // code9, forced: every input has the base's row 3, so the merge is that row.
        assert_close(&row(&out, name, 256), &b(3), 1e-7, &format!("{name} code9"));
        // <new>: code's row of t5 (its id 7) for every input.
        assert_close(
            &row(&out, name, 258),
            &row(code, name, 7),
            1e-7,
            &format!("{name} <new>"),
        );
    }
    // A source that lacks the token, and an id beyond the rows, point at the token.
    ws.recipe("lacks.yaml", &recipe("    math9: { source: base }\n"));
    let stderr = fails(&run_in(ws.path(), &["check", "lacks.yaml"]), 1);
    assert!(
        stderr.contains("base model (models/base) has no token")
            && stderr.contains("has no token `math9`")
            && stderr.contains("9 │     math9"),
        "{stderr}"
    );
    ws.recipe(
        "beyond.yaml",
        &recipe("    x: { source: { model: models/code, token_id: 9999 } }\n"),
    );
    let stderr = fails(&run_in(ws.path(), &["check", "beyond.yaml"]), 1);
    assert!(stderr.contains("so no row 9999"), "{stderr}");
}

#[test]
fn a_model_s_vocabulary_reorders_the_others_and_errors_point_at_the_tokenizer() {
    let ws = workspace();
    ws.recipe(
        "code.yaml",
        "base: models/base\nmodels:\n  - path: models/code\n  - path: models/math\nmerge: mean\ntokenizer: models/code\n",
    );
    ok(&run_in(
        ws.path(),
        &["merge", "code.yaml", "-o", "out", "--quiet"],
    ));
    let out = Checkpoint::open(&ws.path().join("out")).unwrap();
    let (base, models) = ws.family();
    let (code, math) = (&models[0], &models[1]);
    let name = TENSORS[0];
    assert_eq!(out.get(name).unwrap().shape[0], VOCAB);
    let (b, c, m) = (
        |r| row(&base, name, r),
        |r| row(code, name, r),
        |r| row(math, name, r),
    );
    let merged = |rb: Vec<f32>, rc: Vec<f32>, rm: Vec<f32>| -> Vec<f32> {
        (0..rb.len())
            .map(|k| rb[k] + ((rc[k] - rb[k]) + (rm[k] - rb[k])) / 2.0)
            .collect()
    };
    // Code's order: t7 at 5; code9 at 9, which the base lacks (the mean of code's and
    // math's rows stands in); t11 (math's code9) at 11.
    let fill = mean(&[c(9), m(11)]);
    for (r, want) in [
        (5, merged(b(7), c(5), m(7))),
        (9, merged(fill, c(9), m(11))),
    ] {
        let got = row(&out, name, r);
        assert_close(&got, &want, 1e-7, &format!("row {r}"));
    }
    // The tokenizer files are code's.
    assert_eq!(
        fs::read(ws.path().join("out/tokenizer.json")).unwrap(),
        fs::read(ws.model("code").join("tokenizer.json")).unwrap()
    );

    for (tokenizer, says) in [
        ("models/chat", "is neither the base nor a model"),
        (
            "union\nslices:\n  - from: base\n    layers: 0..2",
            "with `slices:`",
        ),
    ] {
        ws.recipe(
            "bad.yaml",
            &format!("base: models/base\nmodels:\n  - path: models/math\nmerge: passthrough\ntokenizer: {tokenizer}\n"),
        );
        let err = fails(&run_in(ws.path(), &["check", "bad.yaml"]), 1);
        assert!(
            err.contains(says) && err.contains("this tokenizer"),
            "{err}"
        );
    }
    fs::remove_file(ws.model("base").join("tokenizer.json")).unwrap();
    ws.recipe(
        "bad.yaml",
        "base: models/base\nmodels:\n  - path: models/math\nmerge: mean\ntokenizer: union\n",
    );
    let err = fails(&run_in(ws.path(), &["check", "bad.yaml"]), 1);
    assert!(
        err.contains("the base model's vocabulary: cannot read"),
        "{err}"
    );
}

#[test]
fn a_chat_template_is_written_once_auto_takes_the_most_common() {
    let ws = workspace();
    let set = |name: &str, template: &str| {
        let path = ws.model(name).join("tokenizer_config.json");
        let mut c: Value = json_file(&path);
        c["chat_template"] = template.into();
        fs::write(&path, c.to_string()).unwrap();
    };
    let (ours, theirs) = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}",
        "{% for m in messages %}{{ m['content'] }}\n{% endfor %}",
    );
    set("base", theirs);
    set("code", ours);
    set("math", ours);
    let merge = |template: &str| {
        ws.recipe(
            "chat.yaml",
            &format!("base: models/base\nmodels:\n  - path: models/code\n  - path: models/math\nmerge: mean\nchat_template: {template}\n"),
        );
        let _ = fs::remove_dir_all(ws.path().join("out"));
        run_in(ws.path(), &["merge", "chat.yaml", "-o", "out", "--quiet"])
    };
    let written = || fs::read_to_string(ws.path().join("out/chat_template.jinja")).unwrap();
    ok(&merge("auto"));
    assert_eq!(written(), ours);
    let config: Value = json_file(&ws.path().join("out/tokenizer_config.json"));
    assert!(
        config.get("chat_template").is_none(),
        "one template: {config}"
    );
    ok(&merge("chatml"));
    assert!(written().contains("<|im_start|>"));
    ok(&merge("exaone"));
    assert!(written().contains("[|endofturn|]"));
    let err = fails(&merge("chatlm"), 2);
    assert!(
        err.contains("is neither") && err.contains("this template"),
        "{err}"
    );
    assert!(!ws.path().join("out").exists());
}

#[test]
fn a_padded_vocabulary_fills_its_padding_with_the_mean_row() {
    let ws = workspace();
    ws.recipe(
        "padded.yaml",
        "base: models/base\nmodels:\n  - path: models/code\n  - path: models/math\nmerge: mean\n\
         tokenizer: { source: union, pad_to_multiple_of: 16 }\n",
    );
    ok(&run_in(
        ws.path(),
        &["merge", "padded.yaml", "-o", "out", "--quiet"],
    ));
    let out = Checkpoint::open(&ws.path().join("out")).unwrap();
    let config: Value = json_file(&ws.path().join("out/config.json"));
    assert_eq!(config["vocab_size"], 272);
    for name in TENSORS {
        assert_eq!(out.get(name).unwrap().shape[0], 272, "{name}");
        // `mean` is linear, so the merged padding is the mean of the merged token rows.
        let tokens: Vec<Vec<f32>> = (0..258).map(|r| row(&out, name, r)).collect();
        let want = mean(&tokens);
        for r in 258..272 {
            assert_close(&row(&out, name, r), &want, 1e-6, &format!("{name} row {r}"));
        }
    }
    let shown = ok(&run_in(ws.path(), &["check", "padded.yaml"]));
    assert!(
        shown.contains("vocabulary 258 tokens, padded to 272 rows"),
        "{shown}"
    );
    ws.recipe(
        "bad.yaml",
        "base: models/base\nmodels:\n  - path: models/code\nmerge: mean\n\
         tokenizer: { source: union, pad_to_multiple_of: 0 }\n",
    );
    let err = fails(&run_in(ws.path(), &["check", "bad.yaml"]), 2);
    assert!(
        err.contains("`pad_to_multiple_of` is not a positive integer"),
        "{err}"
    );
}

#[test]
fn a_tokenizer_over_slices_needs_every_input_in_the_end_slices() {
    let ws = workspace();
    let recipe = |slices: &str| {
        format!(
            "base: models/base\nmodels:\n  - path: models/code\nmerge: mean\ntokenizer: union\nslices:\n{slices}"
        )
    };
    // Merged slices over every input: the rows are the union's, as without slices.
    ws.recipe(
        "merged.yaml",
        &recipe("  - layers: 0..1\n  - layers: 1..2\n"),
    );
    let shown = ok(&run_in(ws.path(), &["check", "merged.yaml"]));
    assert!(shown.contains("vocabulary 257 tokens"), "{shown}");
    // A frankenmerge's embeddings come from one input: refused, naming the slice.
    ws.recipe(
        "copied.yaml",
        &recipe("  - from: base\n    layers: 0..1\n  - layers: 1..2\n"),
    );
    let err = fails(&run_in(ws.path(), &["check", "copied.yaml"]), 1);
    assert!(
        err.contains("but slice 1 copies an input's layers or merges others"),
        "{err}"
    );
}

/// SentencePiece's `tokenizer.model` with `pieces` at their ids: a `ModelProto`
/// (protocol buffers) of `SentencePiece { piece, score, type }`, written by hand.
fn write_sentencepiece(dir: &Path, pieces: &[String]) {
    fn varint(mut v: usize, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8 & 0x7f) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    let mut model = Vec::new();
    for (i, p) in pieces.iter().enumerate() {
        let mut piece = vec![0x0a];
        varint(p.len(), &mut piece);
        piece.extend_from_slice(p.as_bytes());
        piece.push(0x15); // score: a float
        piece.extend_from_slice(&(-(i as f32)).to_le_bytes());
        piece.extend_from_slice(&[0x18, if i == 0 { 2 } else { 1 }]); // UNKNOWN, NORMAL
        model.push(0x0a);
        varint(piece.len(), &mut model);
        model.extend_from_slice(&piece);
    }
    fs::write(dir.join("tokenizer.model"), model).unwrap();
}

#[test]
fn a_model_with_only_a_sentencepiece_model_takes_part_in_a_union() {
    let ws = workspace();
    let recipe = "base: models/base\nmodels:\n  - path: models/code\n  - path: models/math\nmerge: mean\ntokenizer: union\n";
    ws.recipe("union.yaml", recipe);
    ok(&run_in(
        ws.path(),
        &["merge", "union.yaml", "-o", "fast", "--quiet"],
    ));
    // math's vocabulary, now only as SentencePiece's model: the same merge.
    let math = ws.model("math");
    write_sentencepiece(&math, &crate::tokenizer::vocabularies()[2]);
    fs::remove_file(math.join("tokenizer.json")).unwrap();
    let out = run_in(ws.path(), &["merge", "union.yaml", "-o", "slow"]);
    ok(&out);
    let (_, stderr) = text(&out);
    assert!(!stderr.contains("taken to be the base's"), "{stderr}");
    assert_eq!(
        tensors(&ws.path().join("fast")),
        tensors(&ws.path().join("slow"))
    );
    // Its vocabulary as the output's: kept as it is, but no tokens added to it.
    ws.recipe(
        "math.yaml",
        "base: models/base\nmodels:\n  - path: models/math\nmerge: mean\ntokenizer: models/math\n",
    );
    ok(&run_in(ws.path(), &["check", "math.yaml"]));
    ws.recipe(
        "added.yaml",
        "base: models/base\nmodels:\n  - path: models/math\nmerge: mean\ntokenizer:\n  source: models/math\n  tokens:\n    \"<new>\": { source: zero }\n",
    );
    let err = fails(&run_in(ws.path(), &["check", "added.yaml"]), 1);
    assert!(
        err.contains("only SentencePiece's tokenizer.model"),
        "{err}"
    );
}

#[test]
fn a_tokenizer_with_fisher_files_is_refused_at_the_tokenizer() {
    let ws = workspace();
    ws.recipe(
        "fisher.yaml",
        "base: models/base\nmodels:\n  - path: models/code\n    fisher: fisher/code.safetensors\n\
         merge: fisher\ntokenizer: union\n",
    );
    let err = fails(&run_in(ws.path(), &["check", "fisher.yaml"]), 1);
    assert!(
        err.contains("has a Fisher file") && err.contains("this tokenizer"),
        "{err}"
    );
}

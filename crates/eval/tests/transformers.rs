//! The loss of every model of `tests/fixtures/eval` equals what transformers computed
//! for it (`scripts/golden/make_eval_golden.py`), and text is tokenized to the same ids.

use std::path::PathBuf;

use reefknot_eval::{evaluate, read_documents, Model};
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/eval")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixtures().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn losses_equal_transformers() {
    let expected = expected();
    let models = expected["models"].as_object().unwrap();
    assert!(models.len() >= 10, "the eval fixtures are missing");
    for (name, files) in models {
        let dir = fixtures().join(name);
        let mut model = Model::load(&dir).unwrap_or_else(|e| panic!("{name}: {e}"));
        for (file, want) in files.as_object().unwrap() {
            let docs = read_documents(&fixtures().join(file), &dir).unwrap();
            docs.check_vocab(model.vocab_size()).unwrap();
            let context = want["context"].as_u64().unwrap() as usize;
            let score = evaluate(&mut model, &docs, context, &mut |_, _| {}).unwrap();
            let case = format!("{name} on {file}");
            assert_eq!(
                score.tokens as u64,
                want["tokens"].as_u64().unwrap(),
                "{case}"
            );
            assert_eq!(
                score.windows as u64,
                want["windows"].as_u64().unwrap(),
                "{case}"
            );
            let loss = want["loss"].as_f64().unwrap();
            let diff = (score.loss() - loss).abs();
            // The bar is 1e-4; f32 arithmetic in another order gives ~1e-7.
            assert!(
                diff < 1e-5,
                "{case}: {} against transformers' {loss}",
                score.loss()
            );
        }
    }
}

#[test]
fn text_is_tokenized_as_transformers_does() {
    let expected = expected();
    let dir = fixtures().join("llama_text");
    let docs = read_documents(&fixtures().join("text.txt"), &dir).unwrap();
    assert!(docs.tokenized);
    let want: Vec<u32> = expected["text_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(docs.docs, vec![want]);
}

#[test]
fn families_and_sizes() {
    let cases = [
        ("llama_f32", "llama"),
        ("llama_bf16_tied", "llama"),
        ("mistral_window", "mistral"),
        ("qwen2_f32", "qwen2"),
        ("qwen2_f16", "qwen2"),
        ("gpt2_f32", "gpt2"),
        ("gpt2_bf16_unprefixed", "gpt2"),
    ];
    for (name, family) in cases {
        let model = Model::load(&fixtures().join(name)).unwrap();
        assert_eq!(model.family().name(), family, "{name}");
        assert_eq!(
            (model.vocab_size(), model.max_context()),
            (96, 64),
            "{name}"
        );
        assert!(model.parameters() > 10_000, "{name}");
    }
}

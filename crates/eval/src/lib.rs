//! The held-out loss of a Hugging Face causal language model, on the CPU: what
//! `reefknot eval` prints and what `reefknot sweep` scores merges by.
//!
//! A model folder (`config.json` and safetensors, sharded or not, f32, bf16 or f16) is
//! read through [`reefknot_io::Checkpoint`] and run by [candle](https://github.com/huggingface/candle),
//! always in f32 (as `transformers` runs a checkpoint loaded with its default dtype):
//!
//! - Llama, Mistral and Qwen2 by [`llama`], a decoder written on candle's operations
//!   with a rotary table of its own (plain, `linear` and `llama3` RoPE), the biases,
//!   `head_dim` and sliding window the config gives;
//! - GPT-2 by [`gpt2`], written on candle's tensor operations because candle ships no
//!   GPT-2 and its GPT-2-like GPTBigCode returns only the last position's logits.
//!
//! The loss of a token sequence ([`evaluate`]) cuts it into consecutive windows of at
//! most `context` tokens; each window predicts its tokens after the first, so the loss
//! is the mean of −log p(tᵢ | the window's tokens before tᵢ) over those tokens, in nats,
//! which is `transformers`' `model(ids, labels=ids).loss` per window, weighted by the
//! number of tokens it predicts. [`data`] reads token files and text.

pub mod data;
mod error;
pub mod gpt2;
pub mod llama;
mod model;
pub mod weights;

pub use data::{read_documents, Documents};
pub use error::EvalError;
pub use model::{Family, Model};
pub use weights::Stored;

/// The loss of a model on some tokens: the sum of −log p over the predicted tokens.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Score {
    /// How many tokens were predicted (each window's tokens after its first).
    pub tokens: usize,
    /// How many windows the model ran on.
    pub windows: usize,
    /// Σ −log p(token), in nats, accumulated in f64.
    pub nll: f64,
}

impl Score {
    /// Nats per predicted token (NaN when nothing was predicted).
    pub fn loss(&self) -> f64 {
        self.nll / self.tokens as f64
    }

    /// exp(loss).
    pub fn perplexity(&self) -> f64 {
        self.loss().exp()
    }

    /// Both scores' tokens and windows together.
    pub fn add(&mut self, other: Score) {
        self.tokens += other.tokens;
        self.windows += other.windows;
        self.nll += other.nll;
    }
}

/// The windows `evaluate` runs `tokens` in: consecutive slices of at most `context`
/// tokens, without the last one when it is a single token (it predicts nothing).
///
/// # Panics
/// If `context` < 2.
pub fn windows(tokens: &[u32], context: usize) -> impl Iterator<Item = &[u32]> {
    assert!(context >= 2, "a window predicts nothing under 2 tokens");
    tokens.chunks(context).filter(|w| w.len() >= 2)
}

/// The loss of `model` on each document of `documents`, in windows of `context` tokens
/// (see the crate's doc). `progress` is called after each window with the tokens done
/// so far and in all.
pub fn evaluate(
    model: &mut Model,
    documents: &Documents,
    context: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Score, EvalError> {
    let context = context.clamp(2, model.max_context());
    let total: usize = documents.docs.iter().map(Vec::len).sum();
    let mut score = Score::default();
    let mut before = 0;
    for doc in &documents.docs {
        let mut done = before;
        for window in windows(doc, context) {
            score.add(Score {
                tokens: window.len() - 1,
                windows: 1,
                nll: model.window_nll(window)?,
            });
            done += window.len();
            progress(done, total);
        }
        before += doc.len();
    }
    Ok(score)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cover_the_tokens_and_drop_a_lone_last_token() {
        let t: Vec<u32> = (0..7).collect();
        let w: Vec<&[u32]> = windows(&t, 3).collect();
        assert_eq!(w, vec![&[0, 1, 2][..], &[3, 4, 5]]);
        let w: Vec<&[u32]> = windows(&t, 4).collect();
        assert_eq!(w, vec![&[0, 1, 2, 3][..], &[4, 5, 6]]);
        assert_eq!(windows(&t[..1], 4).count(), 0);
    }

    #[test]
    fn scores_add_and_average() {
        let mut s = Score {
            tokens: 2,
            windows: 1,
            nll: 3.0,
        };
        s.add(Score {
            tokens: 4,
            windows: 2,
            nll: 3.0,
        });
        assert_eq!((s.tokens, s.windows), (6, 3));
        assert_eq!(s.loss(), 1.0);
        assert_eq!(s.perplexity(), 1f64.exp());
    }
}

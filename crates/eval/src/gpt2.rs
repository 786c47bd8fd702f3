//! GPT-2 (`GPT2LMHeadModel`) on candle's tensor operations.
//!
//! candle-transformers has no GPT-2, and its GPTBigCode (the same blocks with Linear
//! instead of Conv1D weights) returns only the last position's logits, so this module
//! wires candle's layer norm, matmul, softmax and GELU into the GPT-2 forward pass:
//! learned position embeddings, pre-norm blocks of causal multi-head attention
//! (fused `c_attn`, scaled by 1/√d) and a GELU MLP, a final layer norm and the LM head
//! tied to the token embeddings. Conv1D weights are stored `[in, out]` and multiply
//! from the right as they are.

use candle_core::{Device, Tensor};

/// One layer norm's weight and bias.
struct Norm {
    weight: Tensor,
    bias: Tensor,
}

/// One Conv1D: `x · weight + bias`, weight `[in, out]`.
struct Conv1D {
    weight: Tensor,
    bias: Tensor,
}

struct Block {
    ln_1: Norm,
    c_attn: Conv1D,
    attn_proj: Conv1D,
    ln_2: Norm,
    c_fc: Conv1D,
    mlp_proj: Conv1D,
}

/// The activation between the MLP's two projections (`activation_function`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `gelu_new` / `gelu_pytorch_tanh`: the tanh approximation.
    GeluTanh,
    /// `gelu`: the exact, erf form.
    Gelu,
    /// `relu`.
    Relu,
}

impl Activation {
    /// From config.json's `activation_function`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Some(Activation::GeluTanh),
            "gelu" => Some(Activation::Gelu),
            "relu" => Some(Activation::Relu),
            _ => None,
        }
    }

    fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Activation::GeluTanh => x.gelu(),
            Activation::Gelu => x.gelu_erf(),
            Activation::Relu => x.relu(),
        }
    }
}

/// The shape of a GPT-2 model (config.json's `n_embd`, `n_head`, `n_layer`…).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `vocab_size`.
    pub vocab: usize,
    /// `n_positions`.
    pub positions: usize,
    /// `n_embd`.
    pub hidden: usize,
    /// `n_inner` (default 4 × `n_embd`).
    pub inner: usize,
    /// `n_layer`.
    pub layers: usize,
    /// `n_head`.
    pub heads: usize,
    /// `layer_norm_epsilon`.
    pub eps: f64,
    /// `activation_function`.
    pub activation: Activation,
}

/// A GPT-2 model's weights, in f32.
pub struct Gpt2 {
    config: Config,
    wte: Tensor,
    wpe: Tensor,
    blocks: Vec<Block>,
    ln_f: Norm,
    lm_head: Tensor,
}

impl Gpt2 {
    /// Reads the weights through `get(name, shape)`; `prefix` is `"transformer."` for
    /// checkpoints saved from `GPT2LMHeadModel`, `""` for the original ones. The LM head
    /// is `lm_head.weight` when present, else the token embeddings.
    pub fn load<E>(
        config: Config,
        prefix: &str,
        has: impl Fn(&str) -> bool,
        get: impl Fn(&str, &[usize]) -> Result<Tensor, E>,
    ) -> Result<Self, E> {
        let (h, i, v) = (config.hidden, config.inner, config.vocab);
        let norm = |name: &str| -> Result<Norm, E> {
            Ok(Norm {
                weight: get(&format!("{prefix}{name}.weight"), &[h])?,
                bias: get(&format!("{prefix}{name}.bias"), &[h])?,
            })
        };
        let conv = |name: &str, inp: usize, out: usize| -> Result<Conv1D, E> {
            Ok(Conv1D {
                weight: get(&format!("{prefix}{name}.weight"), &[inp, out])?,
                bias: get(&format!("{prefix}{name}.bias"), &[out])?,
            })
        };
        let blocks = (0..config.layers)
            .map(|l| {
                Ok(Block {
                    ln_1: norm(&format!("h.{l}.ln_1"))?,
                    c_attn: conv(&format!("h.{l}.attn.c_attn"), h, 3 * h)?,
                    attn_proj: conv(&format!("h.{l}.attn.c_proj"), h, h)?,
                    ln_2: norm(&format!("h.{l}.ln_2"))?,
                    c_fc: conv(&format!("h.{l}.mlp.c_fc"), h, i)?,
                    mlp_proj: conv(&format!("h.{l}.mlp.c_proj"), i, h)?,
                })
            })
            .collect::<Result<_, E>>()?;
        let wte = get(&format!("{prefix}wte.weight"), &[v, h])?;
        let lm_head = if has("lm_head.weight") {
            get("lm_head.weight", &[v, h])?
        } else {
            wte.clone()
        };
        Ok(Gpt2 {
            wpe: get(&format!("{prefix}wpe.weight"), &[config.positions, h])?,
            ln_f: norm("ln_f")?,
            blocks,
            wte,
            lm_head,
            config,
        })
    }

    /// The model's shape.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The logits `[tokens, vocab]` at every position of `ids` (at most `n_positions`).
    pub fn forward(&self, ids: &[u32]) -> candle_core::Result<Tensor> {
        let t = ids.len();
        let (h, heads) = (self.config.hidden, self.config.heads);
        let d = h / heads;
        let eps = self.config.eps as f32;
        let ids = Tensor::new(ids, &Device::Cpu)?;
        let mut x = self
            .wte
            .index_select(&ids, 0)?
            .add(&self.wpe.narrow(0, 0, t)?)?;
        let mask = crate::llama::mask(t, None)?;
        let scale = 1.0 / (d as f64).sqrt();
        let split = |m: &Tensor| -> candle_core::Result<Tensor> {
            m.reshape((t, heads, d))?.transpose(0, 1)?.contiguous()
        };
        for b in &self.blocks {
            let y = layer_norm(&x, &b.ln_1, eps)?;
            let qkv = conv1d(&y, &b.c_attn)?;
            let q = split(&qkv.narrow(1, 0, h)?)?;
            let k = split(&qkv.narrow(1, h, h)?)?;
            let v = split(&qkv.narrow(1, 2 * h, h)?)?;
            let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&mask)?;
            let p = candle_nn::ops::softmax_last_dim(&scores)?;
            let y = p.matmul(&v)?.transpose(0, 1)?.reshape((t, h))?;
            x = x.add(&conv1d(&y, &b.attn_proj)?)?;
            let y = layer_norm(&x, &b.ln_2, eps)?;
            let y = self.config.activation.apply(&conv1d(&y, &b.c_fc)?)?;
            x = x.add(&conv1d(&y, &b.mlp_proj)?)?;
        }
        let x = layer_norm(&x, &self.ln_f, eps)?;
        x.matmul(&self.lm_head.t()?)
    }
}

fn conv1d(x: &Tensor, c: &Conv1D) -> candle_core::Result<Tensor> {
    x.matmul(&c.weight)?.broadcast_add(&c.bias)
}

fn layer_norm(x: &Tensor, n: &Norm, eps: f32) -> candle_core::Result<Tensor> {
    candle_nn::ops::layer_norm(&x.contiguous()?, &n.weight, &n.bias, eps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activations_by_name() {
        assert_eq!(
            Activation::from_name("gelu_new"),
            Some(Activation::GeluTanh)
        );
        assert_eq!(Activation::from_name("gelu"), Some(Activation::Gelu));
        assert_eq!(Activation::from_name("swish"), None);
        let x = Tensor::new(&[-1f32, 0.0, 2.0], &Device::Cpu).unwrap();
        let r: Vec<f32> = Activation::Relu.apply(&x).unwrap().to_vec1().unwrap();
        assert_eq!(r, vec![0.0, 0.0, 2.0]);
    }
}

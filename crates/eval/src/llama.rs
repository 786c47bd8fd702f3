//! The Llama family's decoder (Llama, Mistral, Qwen2) on candle's tensor operations.
//!
//! candle-transformers has these decoders, but each computes its rotary table inside,
//! from `rope_theta` alone, so a checkpoint with scaled RoPE (Llama 3.1 and 3.2's
//! `llama3` frequencies, linear position interpolation) would run with the wrong
//! angles. This module wires candle's RMS norm, matmul, softmax and rotary kernels into
//! the transformers forward pass with a rotary table of its own ([`Rope`]): token
//! embeddings, pre-norm blocks of grouped-query causal attention (optionally within a
//! sliding window, with optional biases) and a gated MLP, a final norm and the LM head.

use std::f64::consts::PI;

use candle_core::{Device, Tensor};
use candle_nn::Module;

/// How RoPE's frequencies are scaled (`rope_scaling`, or transformers 5's
/// `rope_parameters`).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// `default`: `θ^(−2i/d)`.
    None,
    /// `linear`: every frequency divided by `factor` (position interpolation).
    Linear {
        /// `factor`.
        factor: f64,
    },
    /// `llama3`: long wavelengths divided by `factor`, short ones kept, those between
    /// interpolated (Llama 3.1 and 3.2).
    Llama3 {
        /// `factor`.
        factor: f64,
        /// `low_freq_factor`.
        low_freq_factor: f64,
        /// `high_freq_factor`.
        high_freq_factor: f64,
        /// `original_max_position_embeddings`.
        original_max_position_embeddings: f64,
    },
}

/// RoPE's base and scaling.
#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    /// `rope_theta`.
    pub theta: f64,
    /// The scaling of its frequencies.
    pub scaling: RopeScaling,
}

impl Rope {
    /// The `head_dim / 2` inverse frequencies, as transformers computes them
    /// (`ROPE_INIT_FUNCTIONS`), in f64.
    pub fn inverse_frequencies(&self, head_dim: usize) -> Vec<f64> {
        let plain =
            (0..head_dim / 2).map(|i| 1.0 / self.theta.powf((2 * i) as f64 / head_dim as f64));
        match self.scaling {
            RopeScaling::None => plain.collect(),
            RopeScaling::Linear { factor } => plain.map(|f| f / factor).collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old,
            } => {
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                plain
                    .map(|f| {
                        let wavelen = 2.0 * PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        }
    }
}

/// The shape of a decoder (config.json's `hidden_size`, `num_attention_heads`…).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `vocab_size`.
    pub vocab: usize,
    /// `hidden_size`.
    pub hidden: usize,
    /// `intermediate_size`.
    pub inner: usize,
    /// `num_hidden_layers`.
    pub layers: usize,
    /// `num_attention_heads`.
    pub heads: usize,
    /// `num_key_value_heads`.
    pub kv_heads: usize,
    /// `head_dim` (default `hidden_size / num_attention_heads`).
    pub head_dim: usize,
    /// `rms_norm_eps`.
    pub eps: f64,
    /// A position attends to the `window` positions up to itself (Mistral's
    /// `sliding_window`: `i − j < window`); `None`: to all before it.
    pub window: Option<usize>,
    /// RoPE.
    pub rope: Rope,
    /// `hidden_act`.
    pub activation: candle_nn::Activation,
    /// Whether q, k and v have biases (Qwen2; Llama's `attention_bias`, which gives
    /// the output projection one too).
    pub qkv_bias: bool,
    /// Whether the attention's output projection has a bias (Llama's
    /// `attention_bias`).
    pub o_bias: bool,
    /// Whether the MLP's projections have biases (Llama's `mlp_bias`).
    pub mlp_bias: bool,
}

/// `x · weightᵀ (+ bias)`.
struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = x.matmul(&self.weight.t()?)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

struct Layer {
    input_norm: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    post_norm: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// A decoder's weights, in f32, with its rotary table.
pub struct Decoder {
    config: Config,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Tensor,
    /// `[positions, head_dim / 2]`: cos and sin of every position's angles.
    cos: Tensor,
    sin: Tensor,
}

impl Decoder {
    /// Reads the weights through `get(name, shape)` (names as transformers saves them,
    /// `model.` prefixed); `lm_head` is the LM head's tensor name (`lm_head.weight`, or
    /// the token embeddings when they are tied). The rotary table covers `positions`.
    pub fn load<E>(
        config: Config,
        positions: usize,
        lm_head: &str,
        get: impl Fn(&str, &[usize]) -> Result<Tensor, E>,
    ) -> Result<Self, E> {
        let (h, i, d) = (config.hidden, config.inner, config.head_dim);
        let (q_out, kv_out) = (config.heads * d, config.kv_heads * d);
        let linear = |name: &str, inp: usize, out: usize, bias: bool| -> Result<Linear, E> {
            Ok(Linear {
                weight: get(&format!("{name}.weight"), &[out, inp])?,
                bias: if bias {
                    Some(get(&format!("{name}.bias"), &[out])?)
                } else {
                    None
                },
            })
        };
        let layers = (0..config.layers)
            .map(|l| {
                let p = format!("model.layers.{l}");
                let attn = |m: &str| format!("{p}.self_attn.{m}");
                let mlp = |m: &str| format!("{p}.mlp.{m}");
                Ok(Layer {
                    input_norm: get(&format!("{p}.input_layernorm.weight"), &[h])?,
                    q: linear(&attn("q_proj"), h, q_out, config.qkv_bias)?,
                    k: linear(&attn("k_proj"), h, kv_out, config.qkv_bias)?,
                    v: linear(&attn("v_proj"), h, kv_out, config.qkv_bias)?,
                    o: linear(&attn("o_proj"), q_out, h, config.o_bias)?,
                    post_norm: get(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                    gate: linear(&mlp("gate_proj"), h, i, config.mlp_bias)?,
                    up: linear(&mlp("up_proj"), h, i, config.mlp_bias)?,
                    down: linear(&mlp("down_proj"), i, h, config.mlp_bias)?,
                })
            })
            .collect::<Result<_, E>>()?;
        let inv = config.rope.inverse_frequencies(d);
        let angles: Vec<f64> = (0..positions)
            .flat_map(|p| inv.iter().map(move |f| p as f64 * f))
            .collect();
        let table = |f: fn(f64) -> f64| {
            let v: Vec<f32> = angles.iter().map(|&a| f(a) as f32).collect();
            Tensor::from_vec(v, (positions, d / 2), &Device::Cpu)
                .expect("positions × head_dim / 2 angles")
        };
        Ok(Decoder {
            embed: get("model.embed_tokens.weight", &[config.vocab, h])?,
            norm: get("model.norm.weight", &[h])?,
            lm_head: get(lm_head, &[config.vocab, h])?,
            layers,
            cos: table(f64::cos),
            sin: table(f64::sin),
            config,
        })
    }

    /// The model's shape.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The logits `[tokens, vocab]` at every position of `ids` (at most the positions
    /// the rotary table covers).
    pub fn forward(&self, ids: &[u32]) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let t = ids.len();
        let d = c.head_dim;
        let group = c.heads / c.kv_heads;
        let eps = c.eps as f32;
        let (cos, sin) = (self.cos.narrow(0, 0, t)?, self.sin.narrow(0, 0, t)?);
        let mask = mask(t, c.window)?;
        let scale = 1.0 / (d as f64).sqrt();
        // [t, n·d] → [1, n, t, d], as the rotary kernel takes it.
        let heads = |m: Tensor, n: usize| -> candle_core::Result<Tensor> {
            m.reshape((1, t, n, d))?.transpose(1, 2)?.contiguous()
        };
        let ids = Tensor::new(ids, &Device::Cpu)?;
        let mut x = self.embed.index_select(&ids, 0)?;
        for l in &self.layers {
            let y = candle_nn::ops::rms_norm(&x, &l.input_norm, eps)?;
            let q = heads(l.q.forward(&y)?, c.heads)?;
            let k = heads(l.k.forward(&y)?, c.kv_heads)?;
            let v = heads(l.v.forward(&y)?, c.kv_heads)?;
            let q = candle_nn::rotary_emb::rope(&q, &cos, &sin)?.squeeze(0)?;
            let k = candle_nn::rotary_emb::rope(&k, &cos, &sin)?.squeeze(0)?;
            let v = v.squeeze(0)?;
            // Each key/value head serves `group` consecutive query heads.
            let (k, v) = if group > 1 {
                let repeat = |m: Tensor| -> candle_core::Result<Tensor> {
                    m.unsqueeze(1)?
                        .expand((c.kv_heads, group, t, d))?
                        .reshape((c.heads, t, d))
                };
                (repeat(k)?, repeat(v)?)
            } else {
                (k, v)
            };
            let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&mask)?;
            let p = candle_nn::ops::softmax_last_dim(&scores)?;
            let y = p.matmul(&v)?.transpose(0, 1)?.reshape((t, c.heads * d))?;
            x = x.add(&l.o.forward(&y)?)?;
            let y = candle_nn::ops::rms_norm(&x, &l.post_norm, eps)?;
            let gated = c.activation.forward(&l.gate.forward(&y)?)?;
            let y = gated.mul(&l.up.forward(&y)?)?;
            x = x.add(&l.down.forward(&y)?)?;
        }
        let x = candle_nn::ops::rms_norm(&x, &self.norm, eps)?;
        x.matmul(&self.lm_head.t()?)
    }
}

/// `[t, t]`: 0 where position `i` may attend to `j` (`j ≤ i`, and `i − j < window`),
/// −∞ elsewhere.
pub(crate) fn mask(t: usize, window: Option<usize>) -> candle_core::Result<Tensor> {
    let mask: Vec<f32> = (0..t * t)
        .map(|k| {
            let (i, j) = (k / t, k % t);
            if j > i || window.is_some_and(|w| i - j >= w) {
                f32::NEG_INFINITY
            } else {
                0.0
            }
        })
        .collect();
    Tensor::from_vec(mask, (t, t), &Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mask_is_causal_within_its_window() {
        let inf = f32::NEG_INFINITY;
        let m: Vec<Vec<f32>> = mask(3, Some(2)).unwrap().to_vec2().unwrap();
        assert_eq!(
            m,
            vec![
                vec![0.0, inf, inf],
                vec![0.0, 0.0, inf],
                vec![inf, 0.0, 0.0]
            ]
        );
        let m: Vec<Vec<f32>> = mask(2, None).unwrap().to_vec2().unwrap();
        assert_eq!(m, vec![vec![0.0, inf], vec![0.0, 0.0]]);
    }

    /// Llama 3's scaling keeps the short wavelengths, divides the long ones by the
    /// factor and interpolates between (transformers' `_compute_llama3_parameters`).
    #[test]
    fn llama3_frequencies_keep_short_divide_long_and_blend_between() {
        let plain = Rope {
            theta: 500000.0,
            scaling: RopeScaling::None,
        };
        let scaled = Rope {
            scaling: RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192.0,
            },
            ..plain.clone()
        };
        let (p, s) = (
            plain.inverse_frequencies(128),
            scaled.inverse_frequencies(128),
        );
        assert_eq!(p.len(), 64);
        let wavelen = |f: f64| 2.0 * PI / f;
        let (mut short, mut long, mut between) = (0, 0, 0);
        for (&a, &b) in p.iter().zip(&s) {
            if wavelen(a) < 8192.0 / 4.0 {
                assert_eq!(a, b);
                short += 1;
            } else if wavelen(a) > 8192.0 {
                assert_eq!(b, a / 8.0);
                long += 1;
            } else {
                assert!(b < a && b > a / 8.0, "{a} → {b}");
                between += 1;
            }
        }
        assert!(short > 0 && long > 0 && between > 0);
        let linear = Rope {
            scaling: RopeScaling::Linear { factor: 2.0 },
            ..plain.clone()
        };
        assert_eq!(
            linear.inverse_frequencies(4)[1],
            plain.inverse_frequencies(4)[1] / 2.0
        );
    }
}

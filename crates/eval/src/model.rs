//! A model folder's architecture, from its `config.json`, loaded for evaluation.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, D};
use serde_json::{Map, Value};

use crate::gpt2::{self, Gpt2};
use crate::llama::{self, Decoder, Rope, RopeScaling};
use crate::weights::{Stored, Weights};
use crate::EvalError;

/// The architectures eval runs (config.json's `model_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `llama`.
    Llama,
    /// `mistral`.
    Mistral,
    /// `qwen2`.
    Qwen2,
    /// `gpt2`.
    Gpt2,
}

impl Family {
    /// config.json's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Mistral => "mistral",
            Family::Qwen2 => "qwen2",
            Family::Gpt2 => "gpt2",
        }
    }
}

enum Net {
    /// Llama, Mistral and Qwen2.
    Decoder(Box<Decoder>),
    Gpt2(Box<Gpt2>),
}

/// A causal LM ready to score token windows.
pub struct Model {
    dir: PathBuf,
    family: Family,
    vocab: usize,
    max_context: usize,
    parameters: usize,
    net: Net,
}

impl Model {
    /// Loads the model in `dir` (config.json and safetensors) in f32.
    pub fn load(dir: &Path) -> Result<Model, EvalError> {
        Self::build(dir, &|| Weights::open(dir))
    }

    /// The model whose tensors are `tensors` (by name) and whose config.json (and
    /// tokenizer) are in `dir`: a merge scored without writing its weights.
    pub fn from_memory(dir: &Path, tensors: HashMap<String, Stored>) -> Result<Model, EvalError> {
        let tensors = std::sync::Mutex::new(Some(tensors));
        Self::build(dir, &|| {
            let t = tensors
                .lock()
                .expect("not poisoned")
                .take()
                .unwrap_or_default();
            Ok(Weights::in_memory(dir, t))
        })
    }

    fn build(
        dir: &Path,
        weights: &dyn Fn() -> Result<Weights, EvalError>,
    ) -> Result<Model, EvalError> {
        let path = dir.join("config.json");
        let bad = |message: String| EvalError::Config {
            path: path.clone(),
            message,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| bad(format!("cannot read: {e}")))?;
        let config: Map<String, Value> =
            serde_json::from_str(&text).map_err(|e| bad(format!("not a JSON object: {e}")))?;
        let cfg = Fields {
            path: &path,
            map: &config,
        };
        let model_type = cfg.string("model_type")?;
        let family = match model_type.as_str() {
            "llama" => Family::Llama,
            "mistral" => Family::Mistral,
            "qwen2" => Family::Qwen2,
            "gpt2" => Family::Gpt2,
            other => {
                return Err(EvalError::Unsupported {
                    path: path.clone(),
                    what: format!(
                        "model_type `{other}`: eval runs llama, mistral, qwen2 and gpt2 models"
                    ),
                })
            }
        };
        let (net, vocab, max_context, parameters) = if family == Family::Gpt2 {
            let c = gpt2_config(&cfg)?;
            let weights = weights()?;
            let parameters = weights.parameters();
            let prefix = if weights.contains("transformer.wte.weight") {
                "transformer."
            } else {
                ""
            };
            let (vocab, positions) = (c.vocab, c.positions);
            let net = Gpt2::load(
                c,
                prefix,
                |n| weights.contains(n),
                |n, s| weights.tensor(n, Some(s)),
            )?;
            (Net::Gpt2(Box::new(net)), vocab, positions, parameters)
        } else {
            let (c, positions, tied) = decoder_config(&cfg, family)?;
            let weights = weights()?;
            let parameters = weights.parameters();
            let head = if weights.contains("lm_head.weight") {
                "lm_head.weight"
            } else if tied {
                "model.embed_tokens.weight"
            } else {
                return Err(EvalError::Tensor {
                    dir: dir.to_path_buf(),
                    tensor: "lm_head.weight".into(),
                    message: "missing, and tie_word_embeddings is false".into(),
                });
            };
            let vocab = c.vocab;
            let net = Decoder::load(c, positions, head, |n, s| weights.tensor(n, Some(s)))?;
            (Net::Decoder(Box::new(net)), vocab, positions, parameters)
        };
        Ok(Model {
            dir: dir.to_path_buf(),
            family,
            vocab,
            max_context,
            parameters,
            net,
        })
    }

    /// The model folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The architecture.
    pub fn family(&self) -> Family {
        self.family
    }

    /// The vocabulary size: token ids must be below it.
    pub fn vocab_size(&self) -> usize {
        self.vocab
    }

    /// The longest window the model takes (`max_position_embeddings`, `n_positions`).
    pub fn max_context(&self) -> usize {
        self.max_context
    }

    /// The number of parameters the checkpoint holds.
    pub fn parameters(&self) -> usize {
        self.parameters
    }

    /// Σ −log p(tᵢ | t₀…tᵢ₋₁) over i ≥ 1 for one window of at most
    /// [`max_context`](Self::max_context) tokens, in nats (f64 sum of f32 terms).
    pub fn window_nll(&mut self, tokens: &[u32]) -> Result<f64, EvalError> {
        assert!(
            tokens.len() <= self.max_context,
            "a window longer than the model's context"
        );
        if tokens.len() < 2 {
            return Ok(0.0);
        }
        let dir = &self.dir;
        let err = |source| EvalError::Candle {
            dir: dir.clone(),
            context: "running the model",
            source,
        };
        let logits = match &mut self.net {
            Net::Decoder(net) => net.forward(tokens).map_err(err)?,
            Net::Gpt2(net) => net.forward(tokens).map_err(err)?,
        };
        nll(&logits, tokens).map_err(err)
    }
}

/// Σ −log softmax(logits[i])[tokens[i + 1]] over the window's positions but the last.
fn nll(logits: &Tensor, tokens: &[u32]) -> candle_core::Result<f64> {
    let n = tokens.len() - 1;
    let logp = candle_nn::ops::log_softmax(&logits.narrow(0, 0, n)?, D::Minus1)?;
    let targets = Tensor::new(&tokens[1..], &Device::Cpu)?.unsqueeze(1)?;
    let picked: Vec<f32> = logp.gather(&targets, 1)?.squeeze(1)?.to_vec1()?;
    Ok(-picked.iter().map(|&x| f64::from(x)).sum::<f64>())
}

/// config.json's fields, with errors naming the file.
struct Fields<'a> {
    path: &'a Path,
    map: &'a Map<String, Value>,
}

impl Fields<'_> {
    fn bad(&self, message: String) -> EvalError {
        EvalError::Config {
            path: self.path.to_path_buf(),
            message,
        }
    }

    fn unsupported(&self, what: String) -> EvalError {
        EvalError::Unsupported {
            path: self.path.to_path_buf(),
            what,
        }
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn usize(&self, key: &str) -> Result<usize, EvalError> {
        self.usize_or(key, None)
    }

    fn usize_or(&self, key: &str, default: Option<usize>) -> Result<usize, EvalError> {
        match self.get(key) {
            Some(v) => v
                .as_u64()
                .filter(|&n| n > 0)
                .map(|n| n as usize)
                .ok_or_else(|| self.bad(format!("`{key}` is {v}, not a positive integer"))),
            None => default.ok_or_else(|| self.bad(format!("`{key}` is missing"))),
        }
    }

    fn f64_or(&self, key: &str, default: f64) -> Result<f64, EvalError> {
        match self.get(key) {
            Some(v) => v
                .as_f64()
                .ok_or_else(|| self.bad(format!("`{key}` is {v}, not a number"))),
            None => Ok(default),
        }
    }

    fn bool_or(&self, key: &str, default: bool) -> Result<bool, EvalError> {
        match self.get(key) {
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.bad(format!("`{key}` is {v}, not true or false"))),
            None => Ok(default),
        }
    }

    fn string(&self, key: &str) -> Result<String, EvalError> {
        self.string_or(key, None)
    }

    fn string_or(&self, key: &str, default: Option<&str>) -> Result<String, EvalError> {
        match self.get(key) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(v) => Err(self.bad(format!("`{key}` is {v}, not a string"))),
            None => default
                .map(str::to_string)
                .ok_or_else(|| self.bad(format!("`{key}` is missing"))),
        }
    }

    /// Fails when `key` is set to anything but `allowed` (absent and null are fine).
    fn refuse_unless(&self, key: &str, allowed: &Value, why: &str) -> Result<(), EvalError> {
        match self.get(key) {
            Some(v) if v != allowed => Err(self.unsupported(format!("`{key}: {v}`: {why}"))),
            _ => Ok(()),
        }
    }
}

/// The decoder's configuration for a Llama, Mistral or Qwen2 config.json, with
/// transformers' defaults for each family, its positions (`max_position_embeddings`)
/// and whether the LM head is tied to the embeddings; options the decoder cannot run
/// are refused.
fn decoder_config(
    cfg: &Fields<'_>,
    family: Family,
) -> Result<(llama::Config, usize, bool), EvalError> {
    let hidden = cfg.usize("hidden_size")?;
    let heads = cfg.usize("num_attention_heads")?;
    let kv_heads = cfg.usize_or("num_key_value_heads", Some(heads))?;
    if heads % kv_heads != 0 {
        return Err(cfg.bad(format!(
            "num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
        )));
    }
    let head_dim = match cfg.get("head_dim") {
        Some(_) => cfg.usize("head_dim")?,
        None if hidden % heads == 0 => hidden / heads,
        None => {
            return Err(cfg.bad(format!(
                "hidden_size {hidden} is not a multiple of num_attention_heads {heads}, and there is no head_dim"
            )))
        }
    };
    if head_dim % 2 != 0 {
        return Err(cfg.bad(format!("head_dim {head_dim} is odd: RoPE rotates pairs")));
    }
    let rope = rope(cfg)?;
    let (qkv_bias, o_bias, mlp_bias) = match family {
        Family::Qwen2 => (true, false, false),
        _ => {
            let attention = cfg.bool_or("attention_bias", false)?;
            (attention, attention, cfg.bool_or("mlp_bias", false)?)
        }
    };
    let hidden_act = cfg.string_or("hidden_act", Some("silu"))?;
    let activation: candle_nn::Activation =
        serde_json::from_value(Value::String(hidden_act.clone()))
            .map_err(|_| cfg.unsupported(format!("`hidden_act: {hidden_act}`")))?;
    let positions = cfg.usize_or("max_position_embeddings", Some(2048))?;
    let window = match family {
        Family::Mistral => cfg.get("sliding_window").and_then(Value::as_u64),
        Family::Qwen2 if cfg.bool_or("use_sliding_window", false)? => {
            return Err(cfg.unsupported(
                "`use_sliding_window: true`: eval runs Qwen2 with full attention only".into(),
            ))
        }
        _ => None,
    };
    let config = llama::Config {
        vocab: cfg.usize("vocab_size")?,
        hidden,
        inner: cfg.usize("intermediate_size")?,
        layers: cfg.usize("num_hidden_layers")?,
        heads,
        kv_heads,
        head_dim,
        eps: cfg.f64_or("rms_norm_eps", 1e-6)?,
        window: window.filter(|&w| w > 0).map(|w| w as usize),
        rope,
        activation,
        qkv_bias,
        o_bias,
        mlp_bias,
    };
    Ok((
        config,
        positions,
        cfg.bool_or("tie_word_embeddings", false)?,
    ))
}

/// RoPE: `rope_theta` and `rope_scaling` (transformers 4), or `rope_parameters` (5);
/// where a config has both, `rope_scaling`'s entries override. Plain, `linear` and
/// `llama3` RoPE run; other scalings (`dynamic`, `yarn`, `longrope`…) are refused by
/// name.
fn rope(cfg: &Fields<'_>) -> Result<Rope, EvalError> {
    let mut map = Map::new();
    for key in ["rope_parameters", "rope_scaling"] {
        match cfg.get(key) {
            Some(Value::Object(m)) => {
                map.extend(m.clone());
                // transformers 4 wrote `type` in older configs, `rope_type` in newer.
                if let (Some(t), None) = (m.get("type"), m.get("rope_type")) {
                    map.insert("rope_type".into(), t.clone());
                }
            }
            Some(v) => return Err(cfg.bad(format!("`{key}` is {v}, not an object"))),
            None => {}
        }
    }
    let p = Fields {
        path: cfg.path,
        map: &map,
    };
    let theta = p.f64_or("rope_theta", cfg.f64_or("rope_theta", 10000.0)?)?;
    let kind = p.string_or("rope_type", Some("default"))?;
    let number = |key: &str| -> Result<f64, EvalError> {
        match p.get(key) {
            Some(_) => p.f64_or(key, 0.0),
            None => Err(cfg.bad(format!("`{kind}` RoPE needs `{key}`"))),
        }
    };
    let scaling = match kind.as_str() {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear {
            factor: number("factor")?,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: number("factor")?,
            low_freq_factor: number("low_freq_factor")?,
            high_freq_factor: number("high_freq_factor")?,
            original_max_position_embeddings: number("original_max_position_embeddings")?,
        },
        other => {
            return Err(cfg.unsupported(format!(
                "`{other}` RoPE: eval runs plain, linear and llama3 RoPE"
            )))
        }
    };
    Ok(Rope { theta, scaling })
}

/// A GPT-2 config.json, with transformers' defaults.
fn gpt2_config(cfg: &Fields<'_>) -> Result<gpt2::Config, EvalError> {
    let hidden = cfg.usize_or("n_embd", Some(768))?;
    let heads = cfg.usize_or("n_head", Some(12))?;
    if hidden % heads != 0 {
        return Err(cfg.bad(format!(
            "n_embd {hidden} is not a multiple of n_head {heads}"
        )));
    }
    let yes = Value::Bool(true);
    let no = Value::Bool(false);
    cfg.refuse_unless(
        "scale_attn_weights",
        &yes,
        "eval runs attention scaled by 1/√d",
    )?;
    cfg.refuse_unless("scale_attn_by_inverse_layer_idx", &no, "not supported")?;
    cfg.refuse_unless("reorder_and_upcast_attn", &no, "not supported")?;
    let act = cfg.string_or("activation_function", Some("gelu_new"))?;
    let activation = gpt2::Activation::from_name(&act).ok_or_else(|| {
        cfg.unsupported(format!(
            "`activation_function: {act}`: eval runs gelu_new, gelu_pytorch_tanh, gelu and relu"
        ))
    })?;
    Ok(gpt2::Config {
        vocab: cfg.usize_or("vocab_size", Some(50257))?,
        positions: cfg.usize_or("n_positions", Some(1024))?,
        hidden,
        inner: cfg.usize_or("n_inner", Some(4 * hidden))?,
        layers: cfg.usize_or("n_layer", Some(12))?,
        heads,
        eps: cfg.f64_or("layer_norm_epsilon", 1e-5)?,
        activation,
    })
}

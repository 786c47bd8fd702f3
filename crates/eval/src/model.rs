//! A model folder's architecture, from its `config.json`, loaded for evaluation.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, D};
use candle_transformers::models::qwen2;
use serde_json::{Map, Value};

use crate::gpt2::{self, Gpt2};
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
    /// Llama, Mistral and Qwen2: candle's Qwen2 decoder and the LM head.
    Decoder {
        model: Box<qwen2::Model>,
        lm_head: candle_nn::Linear,
    },
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

/// The q/k/v biases of the Qwen2 decoder, zero for Llama and Mistral.
const QKV_BIASES: &[&str] = &["q_proj.bias", "k_proj.bias", "v_proj.bias"];

impl Model {
    /// Loads the model in `dir` (config.json and safetensors) in f32.
    pub fn load(dir: &Path) -> Result<Model, EvalError> {
        Self::build(dir, &|zeros| Weights::open(dir, zeros))
    }

    /// The model whose tensors are `tensors` (by name) and whose config.json (and
    /// tokenizer) are in `dir`: a merge scored without writing its weights.
    pub fn from_memory(dir: &Path, tensors: HashMap<String, Stored>) -> Result<Model, EvalError> {
        let tensors = std::sync::Mutex::new(Some(tensors));
        Self::build(dir, &|zeros| {
            let t = tensors
                .lock()
                .expect("not poisoned")
                .take()
                .unwrap_or_default();
            Ok(Weights::in_memory(dir, t, zeros))
        })
    }

    fn build(
        dir: &Path,
        weights: &dyn Fn(&'static [&'static str]) -> Result<Weights, EvalError>,
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
        let candle = |context: &'static str| {
            move |source: candle_core::Error| EvalError::Candle {
                dir: dir.to_path_buf(),
                context,
                source,
            }
        };
        let (net, vocab, max_context, parameters) = if family == Family::Gpt2 {
            let c = gpt2_config(&cfg)?;
            let weights = weights(&[])?;
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
            let c = decoder_config(&cfg, family)?;
            let weights = weights(QKV_BIASES)?;
            let parameters = weights.parameters();
            let head = if weights.contains("lm_head.weight") {
                "lm_head.weight"
            } else if c.tie_word_embeddings {
                "model.embed_tokens.weight"
            } else {
                return Err(EvalError::Tensor {
                    dir: dir.to_path_buf(),
                    tensor: "lm_head.weight".into(),
                    message: "missing, and tie_word_embeddings is false".into(),
                });
            };
            let lm_head = weights.tensor(head, Some(&[c.vocab_size, c.hidden_size]))?;
            let vb = weights.var_builder();
            let model = qwen2::Model::new(&c, vb).map_err(candle("building the decoder"))?;
            let net = Net::Decoder {
                model: Box::new(model),
                lm_head: candle_nn::Linear::new(lm_head, None),
            };
            (net, c.vocab_size, c.max_position_embeddings, parameters)
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
            Net::Decoder { model, lm_head } => {
                let ids = Tensor::new(tokens, &Device::Cpu)
                    .and_then(|t| t.unsqueeze(0))
                    .map_err(err)?;
                let hidden = model.forward(&ids, 0, None);
                model.clear_kv_cache();
                hidden
                    .and_then(|h| h.squeeze(0))
                    .and_then(|h| candle_core::Module::forward(lm_head, &h))
                    .map_err(err)?
            }
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

/// The Qwen2 decoder's configuration for a Llama, Mistral or Qwen2 config.json, with
/// transformers' defaults for each family; options the decoder cannot run are refused.
fn decoder_config(cfg: &Fields<'_>, family: Family) -> Result<qwen2::Config, EvalError> {
    let hidden_size = cfg.usize("hidden_size")?;
    let heads = cfg.usize("num_attention_heads")?;
    let kv_heads = cfg.usize_or("num_key_value_heads", Some(heads))?;
    if hidden_size % heads != 0 || heads % kv_heads != 0 {
        return Err(cfg.bad(format!(
            "hidden_size {hidden_size}, num_attention_heads {heads} and num_key_value_heads {kv_heads} do not divide"
        )));
    }
    if let Some(h) = cfg.get("head_dim") {
        if h.as_u64() != Some((hidden_size / heads) as u64) {
            return Err(cfg.unsupported(format!(
                "`head_dim: {h}` differs from hidden_size / num_attention_heads = {}; eval runs only the usual head size",
                hidden_size / heads
            )));
        }
    }
    let rope_theta = rope_theta(cfg)?;
    let no = Value::Bool(false);
    cfg.refuse_unless(
        "attention_bias",
        &no,
        "eval runs Llama without attention biases",
    )?;
    cfg.refuse_unless("mlp_bias", &no, "eval runs Llama without MLP biases")?;
    let hidden_act = cfg.string_or("hidden_act", Some("silu"))?;
    let hidden_act: candle_nn::Activation =
        serde_json::from_value(Value::String(hidden_act.clone()))
            .map_err(|_| cfg.unsupported(format!("`hidden_act: {hidden_act}`")))?;
    let max_position_embeddings = cfg.usize_or("max_position_embeddings", Some(2048))?;
    // The decoder masks j when j + window < i; transformers' window W keeps i − j < W.
    let window = match family {
        Family::Mistral => cfg.get("sliding_window").and_then(Value::as_u64),
        Family::Qwen2 if cfg.bool_or("use_sliding_window", false)? => {
            return Err(cfg.unsupported(
                "`use_sliding_window: true`: eval runs Qwen2 with full attention only".into(),
            ))
        }
        _ => None,
    };
    let sliding_window = match window {
        Some(w) if w > 0 => (w as usize - 1).min(max_position_embeddings),
        _ => max_position_embeddings,
    };
    Ok(qwen2::Config {
        vocab_size: cfg.usize("vocab_size")?,
        hidden_size,
        intermediate_size: cfg.usize("intermediate_size")?,
        num_hidden_layers: cfg.usize("num_hidden_layers")?,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        max_position_embeddings,
        sliding_window,
        max_window_layers: 0,
        tie_word_embeddings: cfg.bool_or("tie_word_embeddings", false)?,
        rope_theta,
        rms_norm_eps: cfg.f64_or("rms_norm_eps", 1e-6)?,
        use_sliding_window: false,
        hidden_act,
    })
}

/// RoPE's base: `rope_theta`, or `rope_parameters.rope_theta` as transformers 5
/// writes it. Scaled RoPE (`rope_scaling`, a `rope_type` other than `default`) is
/// refused: the decoder runs plain RoPE only.
fn rope_theta(cfg: &Fields<'_>) -> Result<f64, EvalError> {
    let plain = "eval runs plain RoPE only (no scaled or extended RoPE)";
    cfg.refuse_unless("rope_scaling", &Value::Null, plain)?;
    let Some(params) = cfg.get("rope_parameters") else {
        return cfg.f64_or("rope_theta", 10000.0);
    };
    let Value::Object(map) = params else {
        return Err(cfg.bad(format!("`rope_parameters` is {params}, not an object")));
    };
    let inner = Fields {
        path: cfg.path,
        map,
    };
    inner.refuse_unless(
        "rope_type",
        &Value::String("default".into()),
        &format!("in `rope_parameters`: {plain}"),
    )?;
    match inner.get("rope_theta") {
        Some(_) => inner.f64_or("rope_theta", 10000.0),
        None => cfg.f64_or("rope_theta", 10000.0),
    }
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

//! What a family looks like: sizes, the Llama tensor layout and the JSON files
//! that `transformers` reads.

use reefknot_io::{Dtype, OutputTensor};
use serde_json::{json, Value};

use crate::SynthError;

/// The shape of a synthetic model family: the Llama architecture of every model,
/// how many fine-tunes, how they are stored and how their task vectors look.
///
/// Build one from a preset and change what you need:
/// `FamilySpec { tasks: 2, ..FamilySpec::tiny() }`.
#[derive(Clone, Debug, PartialEq)]
pub struct FamilySpec {
    /// `hidden_size`: the width of the residual stream.
    pub hidden: usize,
    /// `num_hidden_layers`.
    pub layers: usize,
    /// `intermediate_size`: the width of the MLP.
    pub intermediate: usize,
    /// `vocab_size`: rows of the embedding (and of `lm_head`).
    pub vocab: usize,
    /// `num_attention_heads`; must divide `hidden`, and `hidden / heads` must be even.
    pub heads: usize,
    /// `num_key_value_heads`; must divide `heads` (fewer than `heads` is grouped-query attention).
    pub kv_heads: usize,
    /// How many fine-tunes (`task_0 ..`) to write beside the base.
    pub tasks: usize,
    /// The storage dtype of every model: bf16, f16, f32 or f64.
    pub dtype: Dtype,
    /// The largest shard in bytes, or `None` for one `model.safetensors` per model.
    pub shard_size: Option<u64>,
    /// Seeds every value; the same spec and seed always give the same bytes.
    pub seed: u64,
    /// Tie `lm_head` to the embedding (no `lm_head.weight` is written).
    pub tie_embeddings: bool,
    /// The root-mean-square of a task's important entries (norm weights get ten times
    /// this, see the crate documentation).
    pub delta_scale: f32,
    /// The fraction of entries, per task and tensor, that the task changes strongly
    /// ("important" entries), in `(0, 1]`.
    pub density: f32,
    /// The probability that an entry important to two tasks has opposite signs in
    /// them, in `[0, 0.5]` (`0.5`: the tasks' signs are independent).
    pub conflict: f32,
}

impl FamilySpec {
    /// A few hundred thousand parameters, f32, three tasks: for unit tests.
    pub fn tiny() -> Self {
        FamilySpec {
            hidden: 64,
            layers: 2,
            intermediate: 176,
            vocab: 256,
            heads: 4,
            kv_heads: 2,
            tasks: 3,
            dtype: Dtype::F32,
            shard_size: None,
            seed: 0,
            tie_embeddings: false,
            delta_scale: 2e-3,
            density: 0.2,
            conflict: 0.3,
        }
    }

    /// About four million parameters in bf16, three tasks: what `reefknot demo`
    /// synthesizes (tens of milliseconds to generate).
    pub fn demo() -> Self {
        FamilySpec {
            hidden: 256,
            layers: 4,
            intermediate: 704,
            vocab: 2048,
            heads: 4,
            kv_heads: 2,
            tasks: 3,
            dtype: Dtype::BF16,
            shard_size: None,
            seed: 0,
            tie_embeddings: false,
            delta_scale: 2e-3,
            density: 0.2,
            conflict: 0.3,
        }
    }

    /// The benchmark family: a base and three fine-tunes of 0.54 B parameters each
    /// (hidden 2048, 8 layers, intermediate 5632, vocab 32000, bf16; 4.3 GB in all).
    pub fn bench() -> Self {
        FamilySpec {
            hidden: 2048,
            layers: 8,
            intermediate: 5632,
            vocab: 32_000,
            heads: 32,
            kv_heads: 32,
            tasks: 3,
            dtype: Dtype::BF16,
            shard_size: None,
            seed: 0,
            tie_embeddings: false,
            delta_scale: 2e-3,
            density: 0.2,
            conflict: 0.3,
        }
    }

    /// `hidden / heads`.
    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads.max(1)
    }

    /// The number of parameters of each model of the family.
    pub fn params_per_model(&self) -> u64 {
        tensor_layout(self).iter().map(TensorSpec::numel).sum()
    }

    /// The bytes of weights of each model (`params_per_model` times the dtype's size).
    pub fn bytes_per_model(&self) -> u64 {
        self.params_per_model() * self.dtype.size() as u64
    }

    /// Checks every field; generation refuses a spec that fails.
    pub fn validate(&self) -> Result<(), SynthError> {
        let bad = |why: String| Err(SynthError::InvalidSpec(why));
        for (name, v) in [
            ("hidden", self.hidden),
            ("layers", self.layers),
            ("intermediate", self.intermediate),
            ("heads", self.heads),
            ("kv_heads", self.kv_heads),
            ("tasks", self.tasks),
        ] {
            if v == 0 {
                return bad(format!("{name} must be at least 1"));
            }
        }
        if self.vocab < 3 {
            return bad(format!(
                "vocab must be at least 3 (bos 1, eos 2), got {}",
                self.vocab
            ));
        }
        if !self.hidden.is_multiple_of(self.heads) {
            return bad(format!(
                "hidden ({}) must be a multiple of heads ({})",
                self.hidden, self.heads
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return bad(format!(
                "the head dimension hidden/heads = {} must be even (rotary embeddings)",
                self.head_dim()
            ));
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return bad(format!(
                "heads ({}) must be a multiple of kv_heads ({})",
                self.heads, self.kv_heads
            ));
        }
        if !self.dtype.is_computable() {
            return bad(format!(
                "dtype must be bf16, f16, f32 or f64, got {:?}",
                self.dtype
            ));
        }
        if self.shard_size == Some(0) {
            return bad("shard_size must be positive (None for one file)".into());
        }
        if !(self.delta_scale.is_finite() && self.delta_scale >= 0.0) {
            return bad(format!(
                "delta_scale must be finite and non-negative, got {}",
                self.delta_scale
            ));
        }
        if !(self.density > 0.0 && self.density <= 1.0) {
            return bad(format!("density must be in (0, 1], got {}", self.density));
        }
        if !(0.0..=0.5).contains(&self.conflict) {
            return bad(format!(
                "conflict must be in [0, 0.5], got {}",
                self.conflict
            ));
        }
        Ok(())
    }

    /// The probability that a task flips the shared sign of an important entry.
    ///
    /// Two tasks that each flip independently with probability `p` disagree with
    /// probability `2p(1-p)`; this solves `2p(1-p) = conflict` for `p ≤ 1/2`.
    pub fn flip_probability(&self) -> f64 {
        let c = f64::from(self.conflict).clamp(0.0, 0.5);
        (1.0 - (1.0 - 2.0 * c).sqrt()) / 2.0
    }
}

/// The role of a tensor, which decides how its values are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TensorKind {
    /// `model.embed_tokens.weight`.
    Embedding,
    /// An attention or MLP projection.
    Linear,
    /// An RMSNorm scale (`*_layernorm.weight`, `model.norm.weight`).
    Norm,
    /// `lm_head.weight` (absent when embeddings are tied).
    LmHead,
}

/// One tensor of a synthetic model: its Llama name, shape and role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    /// The exact `transformers` state-dict name.
    pub name: String,
    /// The shape, outermost dimension first.
    pub shape: Vec<usize>,
    /// How its values are drawn.
    pub kind: TensorKind,
}

impl TensorSpec {
    /// The number of elements.
    pub fn numel(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product()
    }

    /// This tensor as a checkpoint writer's output in `dtype`.
    pub fn output(&self, dtype: Dtype) -> OutputTensor {
        OutputTensor {
            name: self.name.clone(),
            dtype,
            shape: self.shape.clone(),
        }
    }
}

/// Every tensor of a model of `spec`, in the order `transformers` lists a
/// `LlamaForCausalLM` state dict: the embedding, each layer's norms and projections,
/// the final norm, and `lm_head` unless embeddings are tied.
pub fn tensor_layout(spec: &FamilySpec) -> Vec<TensorSpec> {
    let (h, i, v) = (spec.hidden, spec.intermediate, spec.vocab);
    let kv = spec.kv_heads * spec.head_dim();
    let t = |name: String, shape: Vec<usize>, kind| TensorSpec { name, shape, kind };
    let mut out = Vec::with_capacity(spec.layers * 9 + 3);
    out.push(t(
        "model.embed_tokens.weight".into(),
        vec![v, h],
        TensorKind::Embedding,
    ));
    for l in 0..spec.layers {
        let p = format!("model.layers.{l}.");
        out.push(t(
            format!("{p}input_layernorm.weight"),
            vec![h],
            TensorKind::Norm,
        ));
        out.push(t(
            format!("{p}self_attn.q_proj.weight"),
            vec![h, h],
            TensorKind::Linear,
        ));
        out.push(t(
            format!("{p}self_attn.k_proj.weight"),
            vec![kv, h],
            TensorKind::Linear,
        ));
        out.push(t(
            format!("{p}self_attn.v_proj.weight"),
            vec![kv, h],
            TensorKind::Linear,
        ));
        out.push(t(
            format!("{p}self_attn.o_proj.weight"),
            vec![h, h],
            TensorKind::Linear,
        ));
        out.push(t(
            format!("{p}post_attention_layernorm.weight"),
            vec![h],
            TensorKind::Norm,
        ));
        out.push(t(
            format!("{p}mlp.gate_proj.weight"),
            vec![i, h],
            TensorKind::Linear,
        ));
        out.push(t(
            format!("{p}mlp.up_proj.weight"),
            vec![i, h],
            TensorKind::Linear,
        ));
        out.push(t(
            format!("{p}mlp.down_proj.weight"),
            vec![h, i],
            TensorKind::Linear,
        ));
    }
    out.push(t("model.norm.weight".into(), vec![h], TensorKind::Norm));
    if !spec.tie_embeddings {
        out.push(t("lm_head.weight".into(), vec![v, h], TensorKind::LmHead));
    }
    out
}

/// The names of [`tensor_layout`], in order.
pub fn tensor_names(spec: &FamilySpec) -> Vec<String> {
    tensor_layout(spec).into_iter().map(|t| t.name).collect()
}

/// The `config.json` of every model of the family: a complete `LlamaForCausalLM`
/// configuration that `transformers` loads as is.
pub fn config_json(spec: &FamilySpec) -> Value {
    json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": spec.hidden,
        "intermediate_size": spec.intermediate,
        "num_hidden_layers": spec.layers,
        "num_attention_heads": spec.heads,
        "num_key_value_heads": spec.kv_heads,
        "head_dim": spec.head_dim(),
        "vocab_size": spec.vocab,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "rope_scaling": null,
        "hidden_act": "silu",
        "initializer_range": BASE_STD,
        "attention_bias": false,
        "attention_dropout": 0.0,
        "mlp_bias": false,
        "pretraining_tp": 1,
        "tie_word_embeddings": spec.tie_embeddings,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": spec.dtype.torch_name(),
        "use_cache": true,
    })
}

/// The `generation_config.json` of every model of the family.
pub fn generation_config_json() -> Value {
    json!({
        "_from_model_config": true,
        "bos_token_id": 1,
        "eos_token_id": 2,
    })
}

/// The standard deviation of base projection and embedding weights.
pub const BASE_STD: f32 = 0.02;
/// The standard deviation of base norm weights around 1.
pub const NORM_STD: f32 = 0.05;
/// Norm tensors get task vectors this many times larger than projections: their
/// base values sit near 1, where a bf16 step is 0.004–0.008.
pub const NORM_DELTA_GAIN: f32 = 10.0;
/// The dense noise of a task vector, relative to the scale of its important entries.
pub const NOISE_RATIO: f32 = 0.25;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_has_the_advertised_size() {
        let p = FamilySpec::bench().params_per_model();
        assert!((530_000_000..550_000_000).contains(&p), "{p}");
        let d = FamilySpec::demo().params_per_model();
        assert!((3_000_000..6_000_000).contains(&d), "{d}");
    }

    #[test]
    fn validation_rejects_nonsense() {
        assert!(FamilySpec::tiny().validate().is_ok());
        assert!(FamilySpec::demo().validate().is_ok());
        assert!(FamilySpec::bench().validate().is_ok());
        let bad = [
            FamilySpec {
                heads: 3,
                ..FamilySpec::tiny()
            },
            FamilySpec {
                kv_heads: 3,
                ..FamilySpec::tiny()
            },
            FamilySpec {
                density: 0.0,
                ..FamilySpec::tiny()
            },
            FamilySpec {
                conflict: 0.6,
                ..FamilySpec::tiny()
            },
            FamilySpec {
                vocab: 2,
                ..FamilySpec::tiny()
            },
            FamilySpec {
                tasks: 0,
                ..FamilySpec::tiny()
            },
            FamilySpec {
                shard_size: Some(0),
                ..FamilySpec::tiny()
            },
        ];
        for s in bad {
            assert!(
                matches!(s.validate(), Err(SynthError::InvalidSpec(_))),
                "{s:?}"
            );
        }
    }

    #[test]
    fn flip_probability_solves_the_conflict_rate() {
        for c in [0.0f32, 0.1, 0.3, 0.5] {
            let s = FamilySpec {
                conflict: c,
                ..FamilySpec::tiny()
            };
            let p = s.flip_probability();
            assert!((2.0 * p * (1.0 - p) - f64::from(c)).abs() < 1e-6);
        }
    }
}

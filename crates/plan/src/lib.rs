//! The merge plan as plain data.
//!
//! A [`MergePlan`] fully determines a merge: which files it reads (each with a
//! [fingerprint](FileFingerprint), so that a plan never runs against files that changed
//! since it was made), the seed, the output layout — every output tensor's name, dtype,
//! shape, layer and shard — and, for every output tensor, its [`Producer`]: a copy of a
//! tensor of some input, or a pipeline of operator stages with their resolved arguments,
//! weights and Fisher sources.
//!
//! Front-ends make plans (a reefknot recipe today); executors run them (the streaming CPU
//! executor of `reefknot-engine`, into a model folder or any other sink). Between the two
//! a plan can be saved as JSON ([`MergePlan::to_json`]), inspected, edited, split or
//! shipped to another machine, and read back ([`MergePlan::from_json`]), which checks
//! that it is well-formed: every index in range, every pipeline over the same models.
//! Whether its operators exist and its inputs are still the files it was made from is
//! the executor's to check, since only it knows the operators and opens the files.
//!
//! This crate depends on serde and nothing of reefknot: it is the contract between the
//! parts, and it names operators, dtypes and types by their names.
//!
//! ```
//! use reefknot_plan::*;
//! let plan = MergePlan {
//!     format: FORMAT,
//!     made_by: "reefknot 0.1.0".into(),
//!     seed: 0,
//!     inputs: vec![Input {
//!         role: Role::Base,
//!         path: "base".into(),
//!         files: vec![],
//!     }],
//!     expressions: vec![],
//!     output: OutputLayout {
//!         dtype: None,
//!         shard_size: 5_000_000_000,
//!         shards: vec!["model.safetensors".into()],
//!         files_from: Some(0),
//!         metadata: Default::default(),
//!         config: Default::default(),
//!         tokenizer: None,
//!         chat_template: None,
//!     },
//!     vocabulary: None,
//!     plugins: vec![],
//!     tensors: vec![OutputTensor {
//!         name: "lm_head.weight".into(),
//!         dtype: "F32".into(),
//!         shape: vec![4, 2],
//!         layer: None,
//!         shard: 0,
//!         producer: Producer::Copy {
//!             from: TensorRef::new(0, "lm_head.weight"),
//!             scale: 1.0,
//!         },
//!     }],
//! };
//! let json = plan.to_json();
//! assert_eq!(MergePlan::from_json(&json)?, plan);
//! # Ok::<(), reefknot_plan::PlanError>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The version of the plan format this crate reads and writes. A plan of another
/// version is refused rather than guessed at.
pub const FORMAT: u32 = 1;

/// A merge, fully resolved: everything an executor needs, nothing it must look up.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MergePlan {
    /// The plan format ([`FORMAT`]).
    pub format: u32,
    /// The program that made the plan, e.g. `reefknot 0.1.0` (informational).
    pub made_by: String,
    /// The seed of the random operators (a pipeline's draws are keyed by it, the
    /// tensor's name and the element).
    pub seed: u64,
    /// Every file set the merge reads. Indices into this list are what
    /// [`TensorRef::input`] holds.
    pub inputs: Vec<Input>,
    /// The expressions the plan's pipelines came from (for messages and summaries).
    pub expressions: Vec<Expression>,
    /// How the output is written.
    pub output: OutputLayout,
    /// The output's vocabulary, when it is not the base's row for row: how each
    /// input's vocabulary tensors (embeddings, LM head) are permuted into it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vocabulary: Option<Vocabulary>,
    /// Every output tensor, in output order (the order of the shards and of the
    /// tensors inside them).
    pub tensors: Vec<OutputTensor>,
    /// The plugins whose operators the stages use, in order of first use: a plan runs
    /// only with the same builds of them (their libraries' SHA-256).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<PluginUse>,
}

/// A plugin a plan's stages use.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginUse {
    /// Its name: the namespace of its operators.
    pub name: String,
    /// Its own version, as its descriptor states it (may be empty).
    pub version: String,
    /// The library it was loaded from, as given.
    pub library: String,
    /// The SHA-256 of the library file, in lowercase hex.
    pub sha256: String,
    /// The operators of it the stages use (canonical names), in order of first use.
    pub operators: Vec<String>,
}

/// One input of a merge: a checkpoint (a model folder, a `.safetensors` file or an
/// index) and what it is to the merge.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// What the input is.
    pub role: Role,
    /// Where it is: a folder or a file, as the front-end resolved it.
    pub path: String,
    /// Every weight file read from it, fingerprinted when the plan was made.
    pub files: Vec<FileFingerprint>,
}

/// What an input is to the merge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Role {
    /// The base model, whose parameters the task vectors are taken against.
    Base,
    /// A fine-tuned model, the `model`-th of the merge (from 0).
    Model {
        /// Its position among the models.
        model: usize,
    },
    /// The diagonal Fisher information of model `model`.
    Fisher {
        /// The model it belongs to.
        model: usize,
    },
    /// A PEFT LoRA adapter applied to model `model` (to the base when `None`) as its
    /// tensors are read.
    Lora {
        /// The model it is applied to; `None`: the base.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<usize>,
    },
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Base => f.write_str("base model"),
            Role::Model { model } => write!(f, "model {}", model + 1),
            Role::Fisher { model } => write!(f, "Fisher file of model {}", model + 1),
            Role::Lora { model: None } => f.write_str("LoRA adapter of the base model"),
            Role::Lora { model: Some(m) } => write!(f, "LoRA adapter of model {}", m + 1),
        }
    }
}

/// How a plan recognises a file it was made from.
///
/// The header (every tensor's name, dtype, shape and byte range) is hashed, and the
/// size and modification time recorded. Hashing the tensor data itself would make
/// planning as slow as a merge (it would read every byte); the header hash catches a
/// file replaced by another checkpoint, the size a truncated or extended one, and the
/// modification time a file rewritten in place with the same layout — the rule `make`
/// and `rsync` use. A file that was only touched is reported as changed too: make a
/// new plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileFingerprint {
    /// The file, relative to the input's folder (its file name when the input is a
    /// single file).
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its modification time, in nanoseconds since the Unix epoch (`None` where the
    /// file system does not keep one).
    pub modified_ns: Option<u64>,
    /// The SHA-256 of its header (the 8-byte length and the JSON), in lowercase hex.
    pub header_sha256: String,
}

/// A merge expression a plan's pipelines came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expression {
    /// Where it was written, e.g. `merge` or `overrides[0] (group: embed)`.
    pub label: String,
    /// The checked expression, with the sugar expanded and the defaults written out.
    pub text: String,
}

/// How the output is written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputLayout {
    /// The dtype requested for the merged tensors (`bfloat16`, `float16`, `float32`),
    /// written into `config.json`; `None` when every tensor keeps its input's dtype.
    pub dtype: Option<String>,
    /// The most bytes of tensor data in one shard.
    pub shard_size: u64,
    /// The weight files, in order: `model.safetensors`, or
    /// `model-00001-of-0000N.safetensors`... . [`OutputTensor::shard`] indexes this.
    pub shards: Vec<String>,
    /// The input whose non-weight files (config, tokenizer) the output gets.
    pub files_from: Option<usize>,
    /// Metadata written into every shard's header, besides `format: pt`.
    pub metadata: BTreeMap<String, String>,
    /// Keys set in the output's `config.json` (copied from [`OutputLayout::files_from`])
    /// besides `torch_dtype`: `num_hidden_layers` for an output with another layer
    /// count than its inputs. Empty when the configuration is copied as it is.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, serde_json::Value>,
    /// Where the output's tokenizer files come from, when not from
    /// [`OutputLayout::files_from`] as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<TokenizerFiles>,
    /// The output's chat template (a Jinja template, written as `chat_template.jinja`),
    /// when it is not the tokenizer's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template: Option<String>,
}

/// The output's tokenizer files: those of input `from`, with `added` appended to its
/// `tokenizer.json` (and `tokenizer_config.json`) as added tokens.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerFiles {
    /// The input whose tokenizer files are copied.
    pub from: usize,
    /// Tokens the output's vocabulary has beyond that tokenizer's, by id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub added: Vec<AddedToken>,
}

/// A token added to a tokenizer (an entry of `tokenizer.json`'s `added_tokens`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddedToken {
    /// Its id.
    pub id: usize,
    /// Its text.
    pub content: String,
    /// Whether it is special (skipped when decoding).
    pub special: bool,
    /// Whether it is matched after normalisation.
    pub normalized: bool,
    /// Whether it eats the whitespace on its left.
    pub lstrip: bool,
    /// Whether it eats the whitespace on its right.
    pub rstrip: bool,
    /// Whether it matches whole words only.
    pub single_word: bool,
}

/// An output vocabulary that is not the base's row for row (a tokenizer union, or
/// another model's vocabulary): every vocabulary tensor of the output has `size` rows,
/// and an input's vocabulary tensor read for it (a [`TensorRef`] with `vocabulary`) is
/// permuted: output row `o` is the input's row given by `rows`, or, where the input
/// lacks the token, the mean of the `fill` rows (zero when `fill` names none).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vocabulary {
    /// The output's token count.
    pub size: usize,
    /// For each permuted input (an index into [`MergePlan::inputs`]), the runs of
    /// output rows it has: `[output row, input row, count]`, in order.
    pub rows: BTreeMap<usize, Vec<[usize; 3]>>,
    /// For each output row that some permuted input lacks: the `[input, row]`s whose
    /// mean it takes, from the same tensor of those inputs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fill: BTreeMap<usize, Vec<[usize; 2]>>,
    /// Where padding starts: rows from here to `size` stand for no token and are the
    /// mean of each tensor's rows before (mergekit's `pad_to_multiple_of`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub padded_from: Option<usize>,
}

impl Vocabulary {
    /// Input `input`'s row for output row `row`, if it has the token.
    pub fn row_of(&self, input: usize, row: usize) -> Option<usize> {
        let runs = self.rows.get(&input)?;
        let i = runs.partition_point(|r| r[0] + r[2] <= row);
        runs.get(i)
            .filter(|r| r[0] <= row)
            .map(|r| r[1] + (row - r[0]))
    }
}

/// One output tensor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputTensor {
    /// Its name.
    pub name: String,
    /// Its dtype, as safetensors names it (`BF16`, `F16`, `F32`, ...).
    pub dtype: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// The transformer layer it belongs to, if any (what depth gradients were
    /// evaluated at, and what layer-aware operators are told).
    pub layer: Option<usize>,
    /// The shard it is written to (an index into [`OutputLayout::shards`]).
    pub shard: usize,
    /// How it is made.
    pub producer: Producer,
}

impl OutputTensor {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A tensor of one of the plan's inputs, as it is read: its stored values, plus a LoRA
/// adapter's update when one is applied to that input.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorRef {
    /// The input (an index into [`MergePlan::inputs`]).
    pub input: usize,
    /// The tensor's name in that input.
    pub tensor: String,
    /// The low-rank update added to the values as they are read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraUpdate>,
    /// Whether its rows are permuted into the output's vocabulary
    /// ([`MergePlan::vocabulary`]; not together with a LoRA update).
    #[serde(default, skip_serializing_if = "is_false")]
    pub vocabulary: bool,
}

impl TensorRef {
    /// Tensor `tensor` of input `input`, as it is stored.
    pub fn new(input: usize, tensor: impl Into<String>) -> TensorRef {
        TensorRef {
            input,
            tensor: tensor.into(),
            lora: None,
            vocabulary: false,
        }
    }
}

/// A LoRA adapter's update of one tensor `W` (shape `[rows, cols]`): `W + scale · B·A`,
/// with `B` of shape `[rows, r]` and `A` of shape `[r, cols]`; or, `transposed`,
/// `W + scale · (B·A)ᵀ`, with `B` `[cols, r]` and `A` `[r, rows]` (an embedding's
/// `lora_embedding_A/B`, or a layer saved with PEFT's `fan_in_fan_out`). The update is
/// computed in float32 chunk by chunk as the tensor is read: no merged copy of the
/// model exists, on disk or in memory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraUpdate {
    /// The adapter (an index into [`MergePlan::inputs`], whose role is
    /// [`Role::Lora`]).
    pub input: usize,
    /// The name of `A` in the adapter.
    pub a: String,
    /// The name of `B` in the adapter.
    pub b: String,
    /// `lora_alpha / r` (`lora_alpha / √r` with rsLoRA).
    pub scale: f32,
    /// Whether the update is `(B·A)ᵀ`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub transposed: bool,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's `skip_serializing_if` passes a reference
fn is_false(b: &bool) -> bool {
    !*b
}

/// How an output tensor is made. Later producers (stacked experts) are further
/// variants.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Producer {
    /// A tensor of an input, under any name: as it is (converted when the output's
    /// dtype differs), or multiplied by `scale` in float32 (mergekit's `passthrough`
    /// with a `scale`).
    Copy {
        /// The tensor copied.
        from: TensorRef,
        /// The factor (1: the tensor's own bits, when the dtypes agree).
        #[serde(default = "one", skip_serializing_if = "is_one")]
        scale: f32,
    },
    /// The base tensor plus the delta a pipeline makes of the task vectors.
    Pipeline(Pipeline),
}

fn one() -> f32 {
    1.0
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's `skip_serializing_if` passes a reference
fn is_one(x: &f32) -> bool {
    *x == 1.0
}

/// A pipeline over one tensor: `θ_base + Δ`, where `Δ` is what the stages make of the
/// task vectors `δ_i = θ_i − θ_base`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    /// The expression it came from (an index into [`MergePlan::expressions`]).
    pub expression: usize,
    /// The base tensor.
    pub base: TensorRef,
    /// Each model's tensor, in model order.
    pub models: Vec<TensorRef>,
    /// Each model's Fisher tensor, when a stage reads Fisher values.
    pub fisher: Option<Vec<TensorRef>>,
    /// Each model's weight for this tensor.
    pub weights: Vec<f32>,
    /// The stages, in order.
    pub stages: Vec<Stage>,
}

/// One stage of a pipeline with its arguments resolved for one tensor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    /// The operator's canonical name (`trim`, `tall::consensus`).
    pub op: String,
    /// The type it receives.
    pub input: Flow,
    /// The type it hands on.
    pub output: Flow,
    /// Every parameter's value, in the operator's parameter order.
    pub args: Vec<Arg>,
}

/// The kinds of value that flow through a pipeline (the language's types).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Flow {
    /// The stack of task vectors.
    Stack,
    /// The stack and one elected sign per element.
    Voted,
    /// One merged delta.
    Delta,
}

/// One argument of a stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Arg {
    /// The parameter.
    pub name: String,
    /// Its value for this tensor.
    pub value: Value,
}

/// A resolved argument value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Value {
    /// A number: one for every model, or one per model.
    Number(Vec<f64>),
    /// One of a choice parameter's identifiers.
    Choice(String),
    /// A boolean.
    Bool(bool),
    /// A string.
    Text(String),
}

/// A plan that cannot be read, or does not hold together.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// Not JSON of a plan.
    #[error("not a reefknot plan: {0}")]
    Json(#[from] serde_json::Error),
    /// A plan of another format version.
    #[error("a plan of format {found}, but this reefknot reads format {FORMAT}: make the plan again with this version")]
    Format {
        /// The version found.
        found: u32,
    },
    /// An index, count or name that does not fit the rest of the plan.
    #[error("inconsistent plan: {0}")]
    Inconsistent(String),
}

impl MergePlan {
    /// The plan as pretty-printed JSON (with a final newline).
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("a plan is plain data");
        s.push('\n');
        s
    }

    /// Reads a plan from JSON and checks that it holds together ([`MergePlan::validate`]).
    pub fn from_json(text: &str) -> Result<MergePlan, PlanError> {
        // Look at the format first, so that a plan of another version gets that message
        // rather than one about a field this version does not know.
        let value: serde_json::Value = serde_json::from_str(text)?;
        if let Some(found) = value.get("format").and_then(serde_json::Value::as_u64) {
            if found != u64::from(FORMAT) {
                return Err(PlanError::Format {
                    found: u32::try_from(found).unwrap_or(u32::MAX),
                });
            }
        }
        let plan = MergePlan::deserialize(value)?;
        plan.validate()?;
        Ok(plan)
    }

    /// Checks what the plan alone can tell: the format, every input, expression and
    /// shard index in range, shards in output order, unique output names, and every
    /// pipeline over at least one model with one weight (and one Fisher tensor, if any)
    /// per model. Pipelines may merge different numbers of models (a recipe's slices
    /// over other models).
    pub fn validate(&self) -> Result<(), PlanError> {
        let bad = |m: String| Err(PlanError::Inconsistent(m));
        if self.format != FORMAT {
            return Err(PlanError::Format { found: self.format });
        }
        let input = |r: &TensorRef, what: &str, tensor: &str| {
            let n = self.inputs.len();
            let bad = |m: String| Err(PlanError::Inconsistent(format!("tensor `{tensor}`: {m}")));
            if r.input >= n {
                return bad(format!(
                    "its {what} names input {}, but the plan has {n} inputs",
                    r.input
                ));
            }
            match &r.lora {
                Some(l) if l.input >= n => bad(format!(
                    "its {what}'s LoRA update names input {}, but the plan has {n} inputs",
                    l.input
                )),
                Some(l) if !matches!(self.inputs[l.input].role, Role::Lora { .. }) => bad(format!(
                    "its {what}'s LoRA update reads input {}, which is the {}, not an adapter",
                    l.input, self.inputs[l.input].role
                )),
                Some(l) if !l.scale.is_finite() => {
                    bad(format!("its {what}'s LoRA update has a non-finite scale"))
                }
                _ if r.vocabulary
                    && !self
                        .vocabulary
                        .as_ref()
                        .is_some_and(|v| v.rows.contains_key(&r.input)) =>
                {
                    bad(format!(
                        "its {what} is read through the vocabulary, which does not map input {}",
                        r.input
                    ))
                }
                _ => Ok(()),
            }
        };
        if let Some(v) = &self.vocabulary {
            self.check_vocabulary(v)?;
        }
        if let Some(t) = &self.output.tokenizer {
            if t.from >= self.inputs.len() {
                return bad(format!(
                    "output.tokenizer.from names input {}, but the plan has {} inputs",
                    t.from,
                    self.inputs.len()
                ));
            }
        }
        if let Some(i) = self.output.files_from {
            if i >= self.inputs.len() {
                return bad(format!(
                    "output.files_from names input {i}, but the plan has {} inputs",
                    self.inputs.len()
                ));
            }
        }
        if self.output.shards.is_empty() && !self.tensors.is_empty() {
            return bad("the output has tensors but no shard".into());
        }
        let mut names = std::collections::HashSet::with_capacity(self.tensors.len());
        let mut last_shard = 0;
        for t in &self.tensors {
            if !names.insert(t.name.as_str()) {
                return bad(format!("the output has two tensors called `{}`", t.name));
            }
            if t.shard >= self.output.shards.len() || t.shard < last_shard {
                return bad(format!(
                    "tensor `{}` is in shard {} of {}: shards must be in range and in output order",
                    t.name,
                    t.shard,
                    self.output.shards.len()
                ));
            }
            last_shard = t.shard;
            match &t.producer {
                Producer::Copy { from, scale } => {
                    input(from, "source", &t.name)?;
                    if !scale.is_finite() {
                        return bad(format!(
                            "tensor `{}` copies with a non-finite scale",
                            t.name
                        ));
                    }
                }
                Producer::Pipeline(p) => {
                    if p.expression >= self.expressions.len() {
                        return bad(format!(
                            "tensor `{}` names expression {}, but the plan has {}",
                            t.name,
                            p.expression,
                            self.expressions.len()
                        ));
                    }
                    input(&p.base, "base", &t.name)?;
                    for m in &p.models {
                        input(m, "model", &t.name)?;
                    }
                    let n = p.models.len();
                    if n == 0 {
                        return bad(format!("tensor `{}`: a pipeline needs models", t.name));
                    }
                    if p.weights.len() != n || p.weights.iter().any(|w| !w.is_finite()) {
                        return bad(format!(
                            "tensor `{}` needs {n} finite weights, one per model",
                            t.name
                        ));
                    }
                    if let Some(f) = &p.fisher {
                        if f.len() != n {
                            return bad(format!(
                                "tensor `{}` needs {n} Fisher tensors, one per model",
                                t.name
                            ));
                        }
                        for r in f {
                            input(r, "Fisher tensor", &t.name)?;
                            if r.lora.is_some() || r.vocabulary {
                                return bad(format!(
                                    "tensor `{}`: a Fisher tensor is read as it is stored (no \
                                     LoRA update, no vocabulary)",
                                    t.name
                                ));
                            }
                        }
                    }
                    if p.stages.is_empty() {
                        return bad(format!("tensor `{}`: a pipeline needs stages", t.name));
                    }
                }
            }
        }
        Ok(())
    }

    /// Every run of a vocabulary inside its output and in order, every fill row
    /// inside the output and taken from mapped inputs.
    fn check_vocabulary(&self, v: &Vocabulary) -> Result<(), PlanError> {
        let bad = |m: String| Err(PlanError::Inconsistent(format!("vocabulary: {m}")));
        for (&input, runs) in &v.rows {
            if input >= self.inputs.len() {
                return bad(format!(
                    "it maps input {input}, but the plan has {} inputs",
                    self.inputs.len()
                ));
            }
            let mut next = 0;
            for &[out, _, count] in runs {
                if out < next || count == 0 || out.checked_add(count).is_none_or(|e| e > v.size) {
                    return bad(format!(
                        "input {input}'s runs must be non-empty, in order and within its {} rows",
                        v.size
                    ));
                }
                next = out + count;
            }
        }
        if v.padded_from.is_some_and(|p| p == 0 || p > v.size) {
            return bad(format!(
                "padding must start within its {} rows, after one",
                v.size
            ));
        }
        for (&row, sources) in &v.fill {
            if row >= v.size || sources.iter().any(|[i, _]| !v.rows.contains_key(i)) {
                return bad(format!(
                    "row {row}'s fill must be within {} rows and from mapped inputs",
                    v.size
                ));
            }
        }
        Ok(())
    }

    /// The number of fine-tunes the plan merges: its inputs of role
    /// [`Role::Model`] (0 when no tensor is merged). Each pipeline merges all of them,
    /// or, in a recipe's slice over other models, some of them.
    pub fn models(&self) -> usize {
        let merges = self
            .tensors
            .iter()
            .any(|t| matches!(t.producer, Producer::Pipeline(_)));
        if !merges {
            return 0;
        }
        self.inputs
            .iter()
            .filter(|i| matches!(i.role, Role::Model { .. }))
            .count()
    }

    /// The plugin namespaces its stages use (`tall` for `tall::consensus`), each once,
    /// in order of first use.
    pub fn namespaces(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for op in self.plugin_operators() {
            if let Some((ns, _)) = op.split_once("::") {
                if !out.contains(&ns) {
                    out.push(ns);
                }
            }
        }
        out
    }

    /// The plugin operators (`ns::op`) its stages use, each once, in order of first use.
    pub fn plugin_operators(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for t in &self.tensors {
            if let Producer::Pipeline(p) = &t.producer {
                for stage in &p.stages {
                    if stage.op.contains("::") && !out.contains(&stage.op.as_str()) {
                        out.push(&stage.op);
                    }
                }
            }
        }
        out
    }

    /// The indices of the output tensors that are written to the given shards.
    pub fn tensors_in_shards(&self, shards: &[usize]) -> Vec<usize> {
        (0..self.tensors.len())
            .filter(|&i| shards.contains(&self.tensors[i].shard))
            .collect()
    }

    /// Total number of elements of the output.
    pub fn total_elements(&self) -> u64 {
        self.tensors.iter().map(|t| t.numel() as u64).sum()
    }
}

//! The recipe of a reefknot merge: a YAML file naming the base model, the fine-tunes, the
//! merge expression and where parts of the model get another expression or other values.
//!
//! [`Recipe::parse`] (or [`Recipe::load`] for a file) checks everything that can be
//! checked without the models: every key is known (a typo is an error with the closest
//! key suggested), every value has the right type and range, globs compile, groups
//! exist. Each problem is a [`RecipeError`] that miette renders with the file name and a
//! caret under the offending token. The merge expression itself is the language crate's
//! to parse: the recipe keeps it as an [`Expr`] that knows where its text sits in the
//! file, so the language's errors can point into the YAML too.
//!
//! ```
//! use std::path::Path;
//! use reefknot_recipe::{Number, Recipe, Selector, Weight};
//!
//! let yaml = r#"
//! base: models/base
//! models:
//!   - path: models/code
//!     weight: [1.0, 0.5]
//!   - path: models/math
//! params: { density: 0.2 }
//! merge: ties(trim($density), elect, disjoint)
//! overrides:
//!   - group: lm_head
//!     merge: sum
//!   - layers: 0..4
//!     params: { density: 0.5 }
//! "#;
//! let recipe = Recipe::parse(yaml, Path::new("recipes"), "example.yaml")?;
//! assert_eq!(recipe.base, Path::new("recipes/models/base"));
//! assert_eq!(recipe.models[0].weight, Weight::Number(Number::Gradient(vec![1.0, 0.5])));
//! assert_eq!(recipe.models[1].weight, Weight::ONE);
//! let off = recipe.merge.offset_in_source.unwrap();
//! assert_eq!(&recipe.source[off..off + 5], "ties(");
//! assert_eq!(recipe.override_for("lm_head.weight"), Some(0));
//! assert_eq!(recipe.override_for("model.layers.2.mlp.up_proj.weight"), Some(1));
//! assert_eq!(recipe.override_for("model.layers.9.mlp.up_proj.weight"), None);
//! assert_eq!(recipe.overrides[1].selector, Selector::Layers { start: 0, end: 4 });
//! # Ok::<(), reefknot_recipe::RecipeError>(())
//! ```
//!
//! The recipe format is documented for users in `docs/recipes.md`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod error;
mod expr;
mod groups;
pub mod mergekit;
mod validate;
mod value;
mod yaml;

pub use error::{closest, ErrorKind, Label, RecipeError, RecipeWarning};
pub use expr::Expr;
pub use groups::{depth_t, layer_index, with_layer, Groups, BUILTIN_GROUPS};
pub use validate::parse_size;
pub use value::{Condition, Number, Param, ParamValue, Params, Weight};

/// A span of the recipe's source text ([`Recipe::source`]).
///
/// `offset` and `len` are in bytes (they index `source` directly and are what miette
/// labels take); `line` and `column` are 1-based, the column counted in characters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Loc {
    /// The byte offset of the span's first byte.
    pub offset: usize,
    /// The span's length in bytes (0 for a position between two characters).
    pub len: usize,
    /// The 1-based line of the first byte.
    pub line: usize,
    /// The 1-based column of the first byte, in characters.
    pub column: usize,
}

impl Loc {
    /// The span as a byte range of the source.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len
    }
}

impl From<Loc> for miette::SourceSpan {
    fn from(loc: Loc) -> miette::SourceSpan {
        (loc.offset, loc.len).into()
    }
}

/// One fine-tuned model of `models:`.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelEntry {
    /// The model: an HF folder or a `.safetensors` file, resolved against the recipe's
    /// folder.
    pub path: PathBuf,
    /// Its weight `w_i` (default 1.0); a gradient varies it over depth, conditions
    /// over tensors ([`Recipe::weight`]).
    pub weight: Weight,
    /// Its diagonal Fisher (same tensor names), resolved, for `elect(fisher)`,
    /// `disjoint(fisher)` and `fisher`.
    pub fisher: Option<PathBuf>,
    /// A PEFT LoRA adapter applied to it as its tensors are read (`lora:`).
    pub lora: Option<Adapter>,
    /// Its values for `$variables`; they take precedence over the recipe's and the
    /// overrides'.
    pub params: Params,
    /// Where the entry's `path` value is written: the place to point at for an error
    /// about this model.
    pub location: Loc,
    /// Where its `fisher` value is written, when it has one.
    pub fisher_location: Option<Loc>,
}

/// A PEFT LoRA adapter (`adapter_config.json` and `adapter_model.safetensors`) named by
/// a recipe.
#[derive(Clone, Debug, PartialEq)]
pub struct Adapter {
    /// Its folder, resolved against the recipe's folder.
    pub path: PathBuf,
    /// Where the path is written.
    pub location: Loc,
}

/// Where the output's vocabulary and tokenizer files come from (`tokenizer:`).
#[derive(Clone, Debug, PartialEq)]
pub enum TokenizerSource {
    /// `base`: the base's vocabulary; every other input's embedding and LM-head rows
    /// are permuted into it by token.
    Base,
    /// `union`: the base's tokens, then every other input's that the base lacks.
    Union,
    /// The vocabulary and tokenizer files of one of the recipe's inputs (its path,
    /// resolved).
    Model(PathBuf),
}

/// A recipe's `tokenizer:`.
#[derive(Clone, Debug, PartialEq)]
pub struct Tokenizer {
    /// What it is.
    pub source: TokenizerSource,
    /// Rows of the vocabulary tensors padded to a multiple of this
    /// (`pad_to_multiple_of`), each padding row the mean of the real rows.
    pub pad_to_multiple_of: Option<usize>,
    /// The tokens whose rows the recipe gives (`tokens:`), in the order written; each
    /// is added to the output's vocabulary if it lacks it.
    pub tokens: Vec<TokenRow>,
    /// Where it is written.
    pub location: Loc,
}

/// One entry of a tokenizer's `tokens:`: where a token's embedding and LM-head rows
/// come from, for every input that lacks the token (every input, with `force`).
#[derive(Clone, Debug, PartialEq)]
pub struct TokenRow {
    /// The token, as the tokenizer writes it.
    pub token: String,
    /// Its row.
    pub source: TokenRowSource,
    /// Whether inputs that have the token take this row too (`force: true`).
    pub force: bool,
    /// Where the token is written.
    pub location: Loc,
}

/// Where a [`TokenRow`]'s row comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum TokenRowSource {
    /// `source: INPUT`: that input's row for the same token (`None`: the base; else a
    /// model's path, resolved).
    Input(Option<PathBuf>),
    /// `source: { model: INPUT, token: T }` or `{ model: INPUT, token_id: N }`: that
    /// input's row of another token, or of an id.
    Token {
        /// The input (`None`: the base).
        input: Option<PathBuf>,
        /// The token it reads, or
        token: Option<String>,
        /// the id.
        id: Option<usize>,
    },
    /// `source: zero`: a row of zeros.
    Zero,
}

/// A recipe's `sweep:`: what `reefknot sweep` runs when its command line gives no grid
/// (and no scorer). Merges and checks ignore it.
#[derive(Clone, Debug, PartialEq)]
pub struct Sweep {
    /// Each axis: a variable and its values, in the recipe's order.
    pub grid: Vec<(String, Vec<f64>)>,
    /// Held-out data files (`eval_data:`), resolved against the recipe's folder.
    pub eval_data: Vec<PathBuf>,
    /// An external scorer (`eval_cmd:`), `{model}` standing for the merged folder.
    pub eval_cmd: Option<String>,
    /// The evaluation window in tokens (`context:`).
    pub context: Option<usize>,
    /// Higher scores are better (`maximize: true`).
    pub maximize: bool,
    /// Where it is written.
    pub location: Loc,
}

/// A recipe's `chat_template:`: `auto`, a built-in name or a Jinja template.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatTemplate {
    /// The value as written.
    pub text: String,
    /// Where it is written.
    pub location: Loc,
}

/// Which tensors an [`Override`] is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    /// `match: GLOB`: a glob over the whole tensor name, where `.` is an ordinary
    /// character and `*` matches any run of characters, dots included.
    Match(String),
    /// `group: NAME`: a built-in or custom group ([`Groups`]).
    Group(String),
    /// `layers: a..b` (half-open) or `layers: i` (`i..i+1`): tensors whose
    /// [`layer_index`] is in the range. Tensors outside the layer stack never match.
    Layers {
        /// The first layer.
        start: usize,
        /// One past the last layer (`start < end`).
        end: usize,
    },
}

impl fmt::Display for Selector {
    /// As written in the recipe: `match: "*.bias"`, `group: mlp`, `layers: 0..4`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Match(glob) => write!(f, "match: {glob:?}"),
            Selector::Group(name) => write!(f, "group: {name}"),
            Selector::Layers { start, end } => write!(f, "layers: {start}..{end}"),
        }
    }
}

/// One entry of `overrides:`: for the tensors it selects, another expression and/or
/// other values for `$variables`.
#[derive(Clone, Debug, PartialEq)]
pub struct Override {
    /// Which tensors.
    pub selector: Selector,
    /// The expression for them, replacing the recipe's `merge` (`None`: keep it).
    pub merge: Option<Expr>,
    /// Values for them, taking precedence over the recipe's `params` (a model's own
    /// `params` still come first). Not empty when `merge` is `None`.
    pub params: Params,
    /// Where the selector's value is written (`lm_head` in `group: lm_head`).
    pub loc: Loc,
}

/// An input of the recipe that a slice copies layers from (`from:`), or that a merged
/// slice takes as its base or merges (`base:`, `models:`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SliceInput {
    /// `from: base` (or the base's path).
    Base,
    /// A model of `models:`, by its index.
    Model(usize),
}

/// What a [`Slice`] does with its layers.
#[derive(Clone, Debug, PartialEq)]
pub enum SliceSource {
    /// `from: INPUT`: the layers are that input's, copied (multiplied by `scale`, a
    /// number or conditions over the output tensor names; 1.0 where none matches).
    Copy {
        /// The input.
        input: SliceInput,
        /// The factor, mergekit's `passthrough` `scale`.
        scale: Weight,
        /// Where the `from` value is written.
        loc: Loc,
    },
    /// No `from`: each output layer merges the slice's base's layer with the same
    /// layer of each of its models (by default the recipe's base and every model) by
    /// the recipe's expression (and overrides), with the slice's `params` between the
    /// overrides' and the recipe's.
    Merge {
        /// Values for `$variables` in this slice.
        params: Params,
        /// The inputs whose layers start elsewhere than the base's (`layers_of:`), with
        /// their first layer; the run has the slice's length.
        starts: BTreeMap<SliceInput, usize>,
        /// The slice's base (`base:`): the recipe's unless it names a model.
        base: SliceInput,
        /// The fine-tunes the slice merges (`models:`), in order, with their values
        /// for this slice; `None`: every model of the recipe, with its own.
        models: Option<Vec<SliceModel>>,
    },
}

/// A fine-tune as a merged slice lists it (`models:` of a slice).
#[derive(Clone, Debug, PartialEq)]
pub struct SliceModel {
    /// The input: a model of the recipe's `models:`, or its base when the slice's base
    /// is a model.
    pub input: SliceInput,
    /// Its weight in this slice; `None`: its `weight` in `models:` (1.0 for the base).
    pub weight: Option<Weight>,
    /// Its values for `$variables` in this slice, before its own `params`.
    pub params: Params,
    /// Where its path is written.
    pub loc: Loc,
}

/// One entry of `slices:`: a run of the output's layers, taken from input layers
/// `start..end`. The output's layers are the slices' in order, renumbered from 0.
#[derive(Clone, Debug, PartialEq)]
pub struct Slice {
    /// The first input layer.
    pub start: usize,
    /// One past the last input layer (`start <= end`; an empty slice, first or last,
    /// only says where the tensors outside the layer stack come from).
    pub end: usize,
    /// Copied or merged.
    pub source: SliceSource,
    /// Where its `layers` value is written.
    pub loc: Loc,
}

impl Slice {
    /// The number of layers it gives the output.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// Whether it gives no layer (never true of a validated recipe's slices).
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

/// The dtype of the output tensors (`dtype:`); without it the output keeps the base's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OutputDtype {
    /// `bfloat16` (also `bf16`).
    BFloat16,
    /// `float16` (also `fp16`, `f16`, `half`).
    Float16,
    /// `float32` (also `fp32`, `f32`, `float`).
    Float32,
}

impl OutputDtype {
    /// The name `transformers` uses in `config.json`'s `torch_dtype`.
    pub fn torch_name(self) -> &'static str {
        match self {
            OutputDtype::BFloat16 => "bfloat16",
            OutputDtype::Float16 => "float16",
            OutputDtype::Float32 => "float32",
        }
    }
}

impl fmt::Display for OutputDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.torch_name())
    }
}

/// A parsed and validated recipe.
#[derive(Clone, Debug)]
pub struct Recipe {
    /// The recipe file, if loaded from one.
    pub path: Option<PathBuf>,
    /// The YAML text: every [`Loc`] indexes it; kept for diagnostics and written into
    /// the output's metadata for provenance.
    pub source: String,
    /// The base model (`base:`), resolved against the recipe's folder.
    pub base: PathBuf,
    /// Where the `base` value is written: the place to point at for an error about it.
    pub base_location: Loc,
    /// A LoRA adapter applied to the base as its tensors are read (`base_lora:`).
    pub base_lora: Option<Adapter>,
    /// The fine-tunes (`models:`), at least one, in the order written.
    pub models: Vec<ModelEntry>,
    /// The recipe-wide values for `$variables` (`params:`).
    pub params: Params,
    /// Values for `$variables` given from outside the recipe (`--set NAME=VALUE`),
    /// above every level of the recipe: they replace a model's, an override's, a
    /// slice's and the recipe's value on every tensor.
    pub set: Params,
    /// The merge expression (`merge:`).
    pub merge: Expr,
    /// The overrides, in the order written; the first that matches a tensor wins.
    pub overrides: Vec<Override>,
    /// The output's layer stack (`slices:`), in order; empty: the base's layers, each
    /// merged with the same layer of every model.
    pub slices: Vec<Slice>,
    /// The built-in groups and the recipe's own (`groups:`).
    pub groups: Groups,
    /// The output's vocabulary (`tokenizer:`); `None`: the base's tensors and files as
    /// they are, every model's vocabulary tensors of the base's shape.
    pub tokenizer: Option<Tokenizer>,
    /// The output's chat template (`chat_template:`); `None` keeps the tokenizer's.
    pub chat_template: Option<ChatTemplate>,
    /// The output dtype (`dtype:`); `None` keeps the base's.
    pub dtype: Option<OutputDtype>,
    /// The seed of the random operators (`seed:`, default 0).
    pub seed: u64,
    /// Plugin libraries to load (`plugins:`), resolved.
    pub plugins: Vec<PathBuf>,
    /// The output shard size in bytes (`shard_size:`); `None`: the writer's default,
    /// 5 GB (`reefknot_io::DEFAULT_SHARD_SIZE`).
    pub shard_size: Option<u64>,
    /// The recipe's `sweep:`, if any.
    pub sweep: Option<Sweep>,
    /// Whether the file was a mergekit configuration, translated ([`mergekit`]):
    /// [`Recipe::source`] is then the translated recipe.
    pub from_mergekit: bool,
    /// What the file holds that has no effect, found while reading it (a mergekit
    /// configuration's ignored keys); the plan adds its own.
    pub warnings: Vec<RecipeWarning>,
}

impl Recipe {
    /// The recipe's text as a miette source, named by its file (or `recipe`), for
    /// diagnostics that point into it.
    pub fn named_source(&self) -> miette::NamedSource<Arc<str>> {
        let mut name = self
            .path
            .as_ref()
            .map_or_else(|| "recipe".to_string(), |p| p.display().to_string());
        if self.from_mergekit {
            name.push_str(" (as a reefknot recipe)");
        }
        miette::NamedSource::new(name, Arc::from(self.source.as_str())).with_language("yaml")
    }

    /// Reads and validates the recipe file at `path`; relative paths in it resolve
    /// against the file's folder, and errors name the file as `path` is written.
    pub fn load(path: &Path) -> Result<Recipe, RecipeError> {
        let source =
            std::fs::read_to_string(path).map_err(|e| RecipeError::io(path.to_path_buf(), e))?;
        let dir = path.parent().unwrap_or(Path::new(""));
        let name = path.display().to_string();
        let mut recipe = Recipe::parse_inner(source, dir, &name, Some(path))?;
        recipe.path = Some(path.to_path_buf());
        Ok(recipe)
    }

    /// Validates the recipe text `source`. Relative paths resolve against `dir` (the
    /// recipe's folder; `""` leaves them relative); `name` is the file name that
    /// diagnostics show.
    pub fn parse(source: &str, dir: &Path, name: &str) -> Result<Recipe, RecipeError> {
        Recipe::parse_inner(source.to_owned(), dir, name, None)
    }

    fn parse_inner(
        source: String,
        dir: &Path,
        name: &str,
        path: Option<&Path>,
    ) -> Result<Recipe, RecipeError> {
        let shared: Arc<str> = Arc::from(source.as_str());
        let fail = |errors: Vec<RecipeError>| RecipeError::finish(errors, name, &shared, path);
        let root = yaml::parse_yaml(&source).map_err(|e| fail(vec![e]))?;
        if mergekit::is_config_root(&root) {
            let converted = mergekit::convert_parsed(&source, &shared, &root, name, dir, path)?;
            let translated = format!("{name} (as a reefknot recipe)");
            let mut recipe = Recipe::parse_inner(converted.recipe, dir, &translated, path)?;
            recipe.from_mergekit = true;
            recipe.warnings = converted.warnings;
            return Ok(recipe);
        }
        let parts = validate::Checker::new(&source, dir)
            .recipe(&root)
            .map_err(fail)?;
        let mut groups = parts.groups;
        let mut globs: Vec<&str> = Vec::new();
        for o in &parts.overrides {
            if let Selector::Match(glob) = &o.selector {
                globs.push(glob);
            }
            globs.extend(condition_globs(&o.params));
        }
        globs.extend(condition_globs(&parts.params));
        for s in &parts.slices {
            match &s.source {
                SliceSource::Merge { params, models, .. } => {
                    globs.extend(condition_globs(params));
                    for m in models.iter().flatten() {
                        globs.extend(condition_globs(&m.params));
                        if let Some(Weight::Conditions(c)) = &m.weight {
                            globs.extend(c.iter().filter_map(|c| c.glob.as_deref()));
                        }
                    }
                }
                SliceSource::Copy {
                    scale: Weight::Conditions(c),
                    ..
                } => globs.extend(c.iter().filter_map(|c| c.glob.as_deref())),
                SliceSource::Copy { .. } => {}
            }
        }
        for m in &parts.models {
            globs.extend(condition_globs(&m.params));
            if let Weight::Conditions(c) = &m.weight {
                globs.extend(c.iter().filter_map(|c| c.glob.as_deref()));
            }
        }
        for glob in globs {
            if let Ok(g) = groups::compile_glob(glob) {
                groups.remember_glob(glob, &g);
            }
        }
        Ok(Recipe {
            path: None,
            source,
            base: parts.base,
            base_location: parts.base_location,
            base_lora: parts.base_lora,
            models: parts.models,
            params: parts.params,
            set: Params::new(),
            merge: parts.merge,
            overrides: parts.overrides,
            slices: parts.slices,
            groups,
            tokenizer: parts.tokenizer,
            chat_template: parts.chat_template,
            dtype: parts.dtype,
            seed: parts.seed,
            plugins: parts.plugins,
            shard_size: parts.shard_size,
            sweep: parts.sweep,
            from_mergekit: false,
            warnings: Vec::new(),
        })
    }

    /// The index in [`Recipe::overrides`] of the first override that selects `tensor`
    /// (first match wins), if any.
    pub fn override_for(&self, tensor: &str) -> Option<usize> {
        self.overrides
            .iter()
            .position(|o| self.selects(&o.selector, tensor))
    }

    /// Whether `selector` selects `tensor`, with this recipe's groups.
    pub fn selects(&self, selector: &Selector, tensor: &str) -> bool {
        match selector {
            Selector::Match(glob) => self.groups.glob_matches(glob, tensor),
            Selector::Group(name) => self.groups.contains(name, tensor),
            Selector::Layers { start, end } => {
                layer_index(tensor).is_some_and(|i| (*start..*end).contains(&i))
            }
        }
    }

    /// Sets `$name` to `value` on every tensor for every model, above the recipe's own
    /// values (`--set NAME=VALUE`).
    pub fn set_param(&mut self, name: &str, value: ParamValue) {
        self.set.insert(
            name.to_string(),
            Param {
                value,
                loc: Loc::default(),
                key_loc: Loc::default(),
            },
        );
    }

    /// The expression for the tensors of override `index` (from [`Recipe::override_for`]):
    /// the override's `merge`, else the recipe's.
    pub fn merge_for(&self, index: Option<usize>) -> &Expr {
        index
            .and_then(|i| self.overrides.get(i))
            .and_then(|o| o.merge.as_ref())
            .unwrap_or(&self.merge)
    }

    /// The value of `$name` for model `model` (an index into [`Recipe::models`]; `None`
    /// for a value not tied to a model) and tensor `tensor` under override `index`, in
    /// the order operators.md gives: a value set from outside ([`Recipe::set`]), the
    /// model's `params`, then the override's, then the recipe's. A value given as
    /// conditions is the first entry that matches the tensor; where none matches, the
    /// next map is looked at.
    pub fn param(
        &self,
        name: &str,
        model: Option<usize>,
        index: Option<usize>,
        tensor: &str,
    ) -> Option<&ParamValue> {
        self.param_in(name, model, index, None, tensor, tensor)
    }

    /// As [`Recipe::param`], for output tensor `tensor` of slice `slice` (an index
    /// into [`Recipe::slices`]), made of the models' tensor `input` (another layer's,
    /// in a layer stack). `model` is the fine-tune's place among those the slice
    /// merges ([`Recipe::merged_inputs`]; without slices, or in a slice without
    /// `models:`, its index in `models:`). Its values in the slice's `models:` come
    /// first, then its own `params`; a merged slice's `params` come after the
    /// override's and before the recipe's. The model's own conditions (in the slice
    /// and in `models:`) see the model's name for the tensor (as mergekit matches a
    /// model's filters), the others the output's.
    pub fn param_in(
        &self,
        name: &str,
        model: Option<usize>,
        index: Option<usize>,
        slice: Option<usize>,
        tensor: &str,
        input: &str,
    ) -> Option<&ParamValue> {
        if let Some(p) = self.set.get(name) {
            return Some(&p.value);
        }
        let (listed, of) = match model {
            Some(m) => self.member(slice, m),
            None => (None, None),
        };
        let from_listed = listed.and_then(|l| l.params.get(name));
        let from_model = match of {
            Some(SliceInput::Model(m)) => self.models.get(m).and_then(|m| m.params.get(name)),
            _ => None,
        };
        let from_override = index
            .and_then(|i| self.overrides.get(i))
            .and_then(|o| o.params.get(name));
        let from_slice = slice
            .and_then(|s| self.slices.get(s))
            .and_then(|s| match &s.source {
                SliceSource::Merge { params, .. } => params.get(name),
                SliceSource::Copy { .. } => None,
            });
        [from_listed, from_model]
            .into_iter()
            .flatten()
            .find_map(|p| self.on_tensor(&p.value, input))
            .or_else(|| {
                [from_override, from_slice, self.params.get(name)]
                    .into_iter()
                    .flatten()
                    .find_map(|p| self.on_tensor(&p.value, tensor))
            })
    }

    /// The inputs a tensor merged in slice `slice` is made of (`None`: a recipe without
    /// slices): the slice's base and the fine-tunes it merges, in order. Without
    /// slices, or for a slice without `base:` and `models:`, the recipe's base and
    /// every model.
    pub fn merged_inputs(&self, slice: Option<usize>) -> (SliceInput, Vec<SliceInput>) {
        let every = || (0..self.models.len()).map(SliceInput::Model).collect();
        match slice.and_then(|s| self.slices.get(s)).map(|s| &s.source) {
            Some(SliceSource::Merge { base, models, .. }) => (
                *base,
                models
                    .as_ref()
                    .map_or_else(every, |ms| ms.iter().map(|m| m.input).collect()),
            ),
            _ => (SliceInput::Base, every()),
        }
    }

    /// The `models:` entry of slice `slice` for its `model`-th fine-tune, if the slice
    /// lists them, and the input that fine-tune is (`None`: no such fine-tune).
    fn member(
        &self,
        slice: Option<usize>,
        model: usize,
    ) -> (Option<&SliceModel>, Option<SliceInput>) {
        match slice.and_then(|s| self.slices.get(s)).map(|s| &s.source) {
            Some(SliceSource::Merge {
                models: Some(ms), ..
            }) => {
                let listed = ms.get(model);
                (listed, listed.map(|l| l.input))
            }
            _ => (
                None,
                (model < self.models.len()).then_some(SliceInput::Model(model)),
            ),
        }
    }

    /// `value` on `tensor`: itself, or the value of its first condition that matches.
    fn on_tensor<'r>(&self, value: &'r ParamValue, tensor: &str) -> Option<&'r ParamValue> {
        match value {
            ParamValue::Conditions(entries) => entries
                .iter()
                .find(|c| self.condition_holds(c.glob.as_deref(), tensor))
                .map(|c| &c.value),
            other => Some(other),
        }
    }

    fn condition_holds(&self, glob: Option<&str>, tensor: &str) -> bool {
        glob.is_none_or(|g| self.groups.glob_matches(g, tensor))
    }

    /// The weight of model `model` on `tensor`: its `weight`, or the value of the first
    /// of its conditions that matches the tensor (1.0 where none does).
    pub fn weight(&self, model: usize, tensor: &str) -> &Number {
        self.on_tensor_or_one(&self.models[model].weight, tensor)
    }

    /// The weight of the `model`-th fine-tune slice `slice` merges (as in
    /// [`Recipe::param_in`]) on its tensor `tensor`: its weight in the slice's
    /// `models:`, else its `weight` in `models:` (1.0 for the base), on that tensor.
    pub fn weight_in(&self, slice: Option<usize>, model: usize, tensor: &str) -> &Number {
        const ONE: Number = Number::Scalar(1.0);
        match self.member(slice, model) {
            (
                Some(SliceModel {
                    weight: Some(w), ..
                }),
                _,
            ) => self.on_tensor_or_one(w, tensor),
            (_, Some(SliceInput::Model(m))) => self.weight(m, tensor),
            _ => &ONE,
        }
    }

    /// A weight or a copied slice's `scale` on `tensor` (1.0 where no condition holds):
    /// both are matched against the input's own name for the tensor.
    pub fn on_tensor_or_one<'r>(&self, weight: &'r Weight, tensor: &str) -> &'r Number {
        const ONE: Number = Number::Scalar(1.0);
        match weight {
            Weight::Number(n) => n,
            Weight::Conditions(entries) => entries
                .iter()
                .find(|c| self.condition_holds(c.glob.as_deref(), tensor))
                .map_or(&ONE, |c| &c.value),
        }
    }

    /// The recipe-wide values under override `index`: the recipe's `params` with the
    /// override's on top (conditions unresolved).
    pub fn params_for(&self, index: Option<usize>) -> Params {
        let mut params = self.params.clone();
        if let Some(o) = index.and_then(|i| self.overrides.get(i)) {
            params.extend(o.params.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        params
    }
}

/// The globs of the conditions among `params`' values.
fn condition_globs(params: &Params) -> impl Iterator<Item = &str> {
    params.values().flat_map(|p| match &p.value {
        ParamValue::Conditions(c) => c.iter().filter_map(|c| c.glob.as_deref()).collect(),
        _ => Vec::new(),
    })
}

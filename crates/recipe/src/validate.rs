//! From the YAML tree to a [`Recipe`]'s parts: every rule of the recipe, each error
//! located at the token it is about. Independent problems are all collected, so one
//! run reports every misspelt key.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use crate::error::{closest, list, ErrorKind, RecipeError};
use crate::expr::Expr;
use crate::groups::{compile_glob, Groups, BUILTIN_GROUPS};
use crate::value::{Condition, Number, Param, ParamValue, Params, Weight};
use crate::yaml::{Kind, Node};
use crate::{
    Adapter, ChatTemplate, Loc, ModelEntry, OutputDtype, Override, Selector, Slice, SliceInput,
    SliceModel, SliceSource, Sweep, TokenRow, TokenRowSource, Tokenizer, TokenizerSource,
};

/// Everything of a recipe but its file and text.
pub(crate) struct Parts {
    pub(crate) base: PathBuf,
    pub(crate) base_location: Loc,
    pub(crate) base_lora: Option<Adapter>,
    pub(crate) models: Vec<ModelEntry>,
    pub(crate) params: Params,
    pub(crate) merge: Expr,
    pub(crate) overrides: Vec<Override>,
    pub(crate) slices: Vec<Slice>,
    pub(crate) groups: Groups,
    pub(crate) tokenizer: Option<Tokenizer>,
    pub(crate) chat_template: Option<ChatTemplate>,
    pub(crate) dtype: Option<OutputDtype>,
    pub(crate) seed: u64,
    pub(crate) plugins: Vec<PathBuf>,
    pub(crate) shard_size: Option<u64>,
    pub(crate) sweep: Option<Sweep>,
}

/// The keys of one kind of mapping, and hints for keys people write by mistake.
struct Schema {
    /// How messages name a mapping of this kind: "the recipe", "a model entry".
    what: &'static str,
    keys: &'static [&'static str],
    /// Keys that are not valid here but that we know why someone wrote: the key, the
    /// valid key it stands for (if any), and advice.
    hints: &'static [(&'static str, Option<&'static str>, &'static str)],
}

const TOP: Schema = Schema {
    what: "the recipe",
    keys: &[
        "base",
        "base_lora",
        "models",
        "params",
        "merge",
        "overrides",
        "slices",
        "groups",
        "tokenizer",
        "chat_template",
        "dtype",
        "seed",
        "plugins",
        "shard_size",
        "sweep",
    ],
    hints: &[
        ("base_model", Some("base"), "the base model is `base:`"),
        (
            "merge_method",
            Some("merge"),
            "reefknot has no merge methods by name: write the method as an expression in \
             `merge:`, e.g. `merge: ties(trim(0.2), elect, disjoint)`",
        ),
        (
            "parameters",
            Some("params"),
            "values for `$variables` go in `params:`",
        ),
        ("out_dtype", Some("dtype"), "the output dtype is `dtype:`"),
        ("random_seed", Some("seed"), "the seed is `seed:`"),
        ("path", None, "`path` belongs in an entry of `models:`"),
        ("weight", None, "`weight` belongs in an entry of `models:`"),
        ("fisher", None, "`fisher` belongs in an entry of `models:`"),
        (
            "lora",
            None,
            "a model's LoRA adapter is `lora:` in its entry of `models:`; the base's is \
             `base_lora:`",
        ),
        ("match", None, "`match` belongs in an entry of `overrides:`"),
        (
            "group",
            None,
            "`group` belongs in an entry of `overrides:`; custom groups are defined in `groups:`",
        ),
        (
            "layers",
            None,
            "`layers` belongs in an entry of `overrides:`",
        ),
    ],
};

const MODEL: Schema = Schema {
    what: "a model entry",
    keys: &["path", "lora", "weight", "fisher", "params"],
    hints: &[
        ("model", Some("path"), "a model's folder or file is `path:`"),
        (
            "adapter",
            Some("lora"),
            "a PEFT LoRA adapter's folder is `lora:`",
        ),
        (
            "parameters",
            Some("params"),
            "per-model values for `$variables` go in `params:`",
        ),
        (
            "merge",
            None,
            "the expression is per recipe or per override, not per model; \
             per-model values go in the model's `params:`",
        ),
    ],
};

const SWEEP: Schema = Schema {
    what: "a sweep",
    keys: &["grid", "eval_data", "eval_cmd", "context", "maximize"],
    hints: &[
        (
            "data",
            Some("eval_data"),
            "the held-out data files are `eval_data:`",
        ),
        (
            "eval",
            Some("eval_cmd"),
            "an external scorer is `eval_cmd:`",
        ),
    ],
};

const TOKENIZER: Schema = Schema {
    what: "a tokenizer",
    keys: &["source", "pad_to_multiple_of", "tokens"],
    hints: &[],
};

const TOKEN_ROW: Schema = Schema {
    what: "a token's row",
    keys: &["source", "force"],
    hints: &[],
};

const TOKEN_OF: Schema = Schema {
    what: "a row of another token",
    keys: &["model", "token", "token_id"],
    hints: &[
        (
            "kind",
            None,
            "reefknot's form has no `kind`: `{ model: PATH, token: T }`, or `zero`",
        ),
        (
            "path",
            Some("model"),
            "the input whose row is read is `model:`",
        ),
    ],
};

const OVERRIDE: Schema = Schema {
    what: "an override",
    keys: &["match", "group", "layers", "merge", "params"],
    hints: &[
        (
            "filter",
            Some("match"),
            "a glob over tensor names is `match:`",
        ),
        (
            "parameters",
            Some("params"),
            "values for `$variables` go in `params:`",
        ),
    ],
};

const SLICE: Schema = Schema {
    what: "a slice",
    keys: &[
        "layers",
        "from",
        "scale",
        "params",
        "layers_of",
        "base",
        "models",
    ],
    hints: &[
        (
            "layer_range",
            Some("layers"),
            "a slice's input layers are `layers: a..b` (half-open)",
        ),
        (
            "model",
            Some("from"),
            "the input a slice copies is `from:` (`base` or a model's path)",
        ),
        (
            "sources",
            None,
            "a reefknot slice merges its `base`'s `layers` with the same layers of its \
             `models` (`layers_of` places the models that take others) or copies one input's \
             (`from:`); `reefknot convert` translates mergekit's `sources`",
        ),
        (
            "parameters",
            Some("params"),
            "a merged slice's values for `$variables` go in `params:`",
        ),
        (
            "merge",
            None,
            "a merged slice uses the recipe's `merge` and its overrides; give it other values \
             in `params:`",
        ),
        (
            "base_model",
            Some("base"),
            "a merged slice's own base is `base:` (`base` or a model's path)",
        ),
    ],
};

const SLICE_MODEL: Schema = Schema {
    what: "a slice's model",
    keys: &["path", "weight", "params"],
    hints: &[
        (
            "model",
            Some("path"),
            "the model is `path:`, a path of `models:`",
        ),
        (
            "parameters",
            Some("params"),
            "its values for `$variables` in this slice go in `params:`",
        ),
        (
            "lora",
            None,
            "a model's adapter is given once, under the recipe's `models:`",
        ),
        (
            "fisher",
            None,
            "a model's Fisher file is given once, under the recipe's `models:`",
        ),
    ],
};

const CONDITION: Schema = Schema {
    what: "a condition",
    keys: &["match", "value"],
    hints: &[(
        "filter",
        Some("match"),
        "a condition's tensors are a glob over the whole name, `match:` (mergekit's \
         `filter: mlp` is `match: \"*mlp*\"`)",
    )],
};

/// The accepted spellings of each output dtype (compared case-insensitively).
const DTYPES: &[(&str, OutputDtype)] = &[
    ("bfloat16", OutputDtype::BFloat16),
    ("bf16", OutputDtype::BFloat16),
    ("float16", OutputDtype::Float16),
    ("fp16", OutputDtype::Float16),
    ("f16", OutputDtype::Float16),
    ("half", OutputDtype::Float16),
    ("float32", OutputDtype::Float32),
    ("fp32", OutputDtype::Float32),
    ("f32", OutputDtype::Float32),
    ("float", OutputDtype::Float32),
];

/// The keys of a mapping that passed the key checks, by name (first occurrence).
struct Fields<'n> {
    /// The mapping, for errors about it as a whole (a missing key); `None` for the
    /// recipe itself, where no token stands for the whole.
    at: Option<Loc>,
    entries: BTreeMap<&'n str, (&'n Node, &'n Node)>,
    /// Valid keys that an unknown key probably stands for (`modles` for `models`): a
    /// missing-key error about them would only repeat the unknown-key error.
    suggested: Vec<&'static str>,
}

impl<'n> Fields<'n> {
    /// The value of `key`; `None` when absent or null (`key:` alone means "not given").
    fn get(&self, key: &str) -> Option<&'n Node> {
        self.entries
            .get(key)
            .map(|(_, v)| *v)
            .filter(|v| !matches!(v.kind, Kind::Null))
    }

    fn key_loc(&self, key: &str) -> Option<Loc> {
        self.entries.get(key).map(|(k, _)| k.loc)
    }
}

pub(crate) struct Checker<'a> {
    source: &'a str,
    dir: &'a Path,
    errors: Vec<RecipeError>,
}

impl<'a> Checker<'a> {
    pub(crate) fn new(source: &'a str, dir: &'a Path) -> Checker<'a> {
        Checker {
            source,
            dir,
            errors: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, e: RecipeError) {
        self.errors.push(e);
    }

    /// How many problems were found so far.
    pub(crate) fn error_count(&self) -> usize {
        self.errors.len()
    }

    /// The problems found so far, in the order found.
    pub(crate) fn into_errors(self) -> Vec<RecipeError> {
        self.errors
    }

    /// Checks the whole recipe; `Err` holds every problem found, in source order.
    pub(crate) fn recipe(mut self, root: &Node) -> Result<Parts, Vec<RecipeError>> {
        let parts = self.top(root);
        match parts {
            Some(parts) if self.errors.is_empty() => Ok(parts),
            _ => {
                let mut errors = self.errors;
                if errors.is_empty() {
                    // Unreachable in practice: every `None` pushed an error.
                    errors.push(RecipeError::new(ErrorKind::NotARecipe, "invalid recipe"));
                }
                errors.sort_by_key(|e| e.loc().map_or(usize::MAX, |l| l.offset));
                Err(errors)
            }
        }
    }

    fn top(&mut self, root: &Node) -> Option<Parts> {
        match &root.kind {
            Kind::Map(_) => {}
            Kind::Null => {
                self.push(
                    RecipeError::new(ErrorKind::NotARecipe, "the recipe is empty").help(
                        "a recipe needs at least `base:`, `models:` and `merge:`; \
                         see docs/recipes.md",
                    ),
                );
                return None;
            }
            other => {
                self.push(
                    RecipeError::new(
                        ErrorKind::NotARecipe,
                        format!(
                            "a recipe is a mapping of keys (`base:`, `models:`, `merge:`, ...), \
                             but this file holds {}",
                            other.describe()
                        ),
                    )
                    .label(root.loc, "expected `key: value` lines"),
                );
                return None;
            }
        }
        let f = self.fields(root, &TOP)?;

        // `groups` before `overrides`, which refer to them.
        let groups = self.groups(&f);

        let base_location = f.get("base").map(|n| n.loc);
        let base_lora = self.adapter(f.get("base_lora"), "base_lora");
        let base = match f.get("base") {
            Some(node) => self.path(node, "base"),
            None => {
                self.missing(
                    &f,
                    "base",
                    "the recipe has no `base` (the base model)",
                    Some(
                        "add e.g. `base: models/base` (an HF model folder or a .safetensors file)",
                    ),
                );
                None
            }
        };
        let models = self.models(&f);
        let params = match f.get("params") {
            Some(node) => self.params(node, "the recipe"),
            None => Some(Params::new()),
        };
        let merge = match f.get("merge") {
            Some(node) => self.expr(node, "merge"),
            None => {
                self.missing(
                    &f,
                    "merge",
                    "the recipe has no `merge` (the merge expression)",
                    Some("add e.g. `merge: ties(trim(0.2), elect, disjoint)`"),
                );
                None
            }
        };
        let overrides = self.overrides(&f, groups.as_ref());
        let slices = match f.get("slices") {
            Some(n) => self.slices(
                n,
                base.as_deref(),
                base_lora.as_ref().and_then(Option::as_ref),
                models.as_deref(),
            ),
            None => Some(Vec::new()),
        };
        let dtype = match f.get("dtype") {
            Some(n) => self.dtype(n).map(Some),
            None => Some(None),
        };
        let seed = match f.get("seed") {
            Some(n) => self.seed(n),
            None => Some(0),
        };
        let tokenizer = match f.get("tokenizer") {
            Some(n) => self.tokenizer(n).map(Some),
            None => Some(None),
        };
        let chat_template = match f.get("chat_template") {
            Some(n) => self
                .string(
                    n,
                    "`auto`, a template's name or a Jinja template",
                    "`chat_template`",
                )
                .map(|text| {
                    Some(ChatTemplate {
                        text: text.to_string(),
                        location: n.loc,
                    })
                }),
            None => Some(None),
        };
        let plugins = match f.get("plugins") {
            Some(n) => self.paths(n, "plugins", "a list of plugin libraries"),
            None => Some(Vec::new()),
        };
        let shard_size = match f.get("shard_size") {
            Some(n) => self.shard_size(n).map(Some),
            None => Some(None),
        };
        let sweep = match f.get("sweep") {
            Some(n) => self.sweep(n).map(Some),
            None => Some(None),
        };

        Some(Parts {
            base: base?,
            base_location: base_location?,
            base_lora: base_lora?,
            models: models?,
            params: params?,
            merge: merge?,
            overrides: overrides?,
            slices: slices?,
            groups: groups?,
            tokenizer: tokenizer?,
            chat_template: chat_template?,
            dtype: dtype?,
            seed: seed?,
            plugins: plugins?,
            shard_size: shard_size?,
            sweep: sweep?,
        })
    }

    // ---- mappings and keys -------------------------------------------------------

    /// Checks that `node` is a mapping whose keys are all names valid for `schema`,
    /// each given once.
    fn fields<'n>(&mut self, node: &'n Node, schema: &Schema) -> Option<Fields<'n>> {
        let Kind::Map(entries) = &node.kind else {
            self.push(
                RecipeError::new(
                    ErrorKind::WrongType,
                    format!(
                        "expected {} (a mapping of `key: value`), found {}",
                        schema.what,
                        node.kind.describe()
                    ),
                )
                .label(
                    node.loc,
                    format!("expected keys: {}", schema.keys.join(", ")),
                )
                .help(format!(
                    "the keys of {} are {}",
                    schema.what,
                    list(schema.keys)
                )),
            );
            return None;
        };
        let mut out: BTreeMap<&str, (&Node, &Node)> = BTreeMap::new();
        let mut suggested = Vec::new();
        for (key, value) in entries {
            let Some(name) = self.key_name(key) else {
                continue;
            };
            if let Some((first, _)) = out.get(name) {
                self.push(
                    RecipeError::new(
                        ErrorKind::DuplicateKey,
                        format!("`{name}` is given twice in {}", schema.what),
                    )
                    .label(key.loc, "given again here")
                    .label(first.loc, "first given here")
                    .help("keep one of them"),
                );
                continue;
            }
            if !schema.keys.contains(&name) {
                suggested.extend(self.unknown_key(key.loc, name, schema));
                continue;
            }
            out.insert(name, (key, value));
        }
        Some(Fields {
            at: (schema.what != TOP.what).then(|| map_loc(node)),
            entries: out,
            suggested,
        })
    }

    /// The text of a key, or an error when a key is not a string.
    fn key_name<'n>(&mut self, key: &'n Node) -> Option<&'n str> {
        match &key.kind {
            Kind::Str(s) => Some(s.as_str()),
            other => {
                self.push(
                    RecipeError::new(
                        ErrorKind::WrongType,
                        format!("keys are names, but this key is {}", other.describe()),
                    )
                    .label(key.loc, "not a name"),
                );
                None
            }
        }
    }

    /// Reports an unknown key; returns the valid key it probably stands for.
    fn unknown_key(&mut self, loc: Loc, name: &str, schema: &Schema) -> Option<&'static str> {
        let mut e = RecipeError::new(
            ErrorKind::UnknownKey,
            format!("unknown key `{name}` in {}", schema.what),
        );
        let valid = format!("the keys of {} are {}", schema.what, list(schema.keys));
        let mut stands_for = None;
        if let Some((_, target, hint)) = schema.hints.iter().find(|(k, _, _)| *k == name) {
            stands_for = *target;
            e = e.label(loc, "unknown key").help(format!("{hint}; {valid}"));
        } else if let Some(best) = closest(name, schema.keys.iter().copied()) {
            stands_for = Some(best);
            e = e
                .label(loc, format!("did you mean `{best}`?"))
                .help(format!("did you mean `{best}`? {}", capitalize(&valid)));
        } else if schema.keys.contains(&"params") && is_identifier(name) {
            e = e.label(loc, "unknown key").help(format!(
                "{}; if `{name}` is a value for `${name}`, put it in `params:` \
                 (params: {{ {name}: ... }})",
                capitalize(&valid)
            ));
        } else {
            e = e.label(loc, "unknown key").help(capitalize(&valid));
        }
        self.push(e);
        stands_for
    }

    fn missing(&mut self, f: &Fields, key: &str, message: &str, help: Option<&str>) {
        if f.suggested.contains(&key) {
            return;
        }
        // A key given with no value reads as absent: point at it.
        let mut e = RecipeError::new(ErrorKind::MissingKey, message);
        if let Some(loc) = f.key_loc(key) {
            e = e.label(loc, "no value given");
        } else if let Some(at) = f.at {
            e = e.label(at, format!("this has no `{key}`"));
        }
        if let Some(h) = help {
            e = e.help(h);
        }
        self.push(e);
    }

    pub(crate) fn wrong_type(&mut self, node: &Node, expected: &str, what: &str) -> RecipeError {
        RecipeError::new(
            ErrorKind::WrongType,
            format!(
                "{what} must be {expected}, but this is {}",
                node.kind.describe()
            ),
        )
        .label(node.loc, format!("expected {expected}"))
    }

    // ---- scalars ----------------------------------------------------------------

    /// A string value, or an error naming what was expected.
    pub(crate) fn string<'n>(
        &mut self,
        node: &'n Node,
        expected: &str,
        what: &str,
    ) -> Option<&'n str> {
        match &node.kind {
            Kind::Str(s) => Some(s.as_str()),
            _ => {
                let e = self.wrong_type(node, expected, what);
                self.push(e);
                None
            }
        }
    }

    /// A path, resolved against the recipe's folder.
    fn path(&mut self, node: &Node, what: &str) -> Option<PathBuf> {
        let text = self.string(node, "a path (a string)", &format!("`{what}`"))?;
        if text.trim().is_empty() {
            self.push(
                RecipeError::new(ErrorKind::InvalidValue, format!("`{what}` is empty"))
                    .label(node.loc, "expected a path"),
            );
            return None;
        }
        if text == "~" || text.starts_with("~/") {
            self.push(
                RecipeError::new(
                    ErrorKind::InvalidValue,
                    format!("`{what}` starts with `~`, which reefknot does not expand"),
                )
                .label(node.loc, "`~` is not expanded")
                .help("write an absolute path, or a path relative to the recipe's folder"),
            );
            return None;
        }
        Some(resolve(self.dir, Path::new(text)))
    }

    /// `tokenizer:`: `base`, `union` or a path (checked against the inputs when the
    /// plan is made), or a mapping `{source, pad_to_multiple_of}`.
    fn tokenizer(&mut self, node: &Node) -> Option<Tokenizer> {
        const WHAT: &str = "`base`, `union` or a model's path";
        let mut tokens = Vec::new();
        let (source_node, pad) = if let Kind::Map(_) = &node.kind {
            let f = self.fields(node, &TOKENIZER)?;
            if let Some(n) = f.get("tokens") {
                tokens = self.token_rows(n)?;
            }
            let pad = match f.get("pad_to_multiple_of") {
                Some(n) => match &n.kind {
                    Kind::Int(i) if *i > 0 => usize::try_from(*i).ok(),
                    _ => {
                        self.push(
                            RecipeError::new(
                                ErrorKind::InvalidValue,
                                "`pad_to_multiple_of` is not a positive integer",
                            )
                            .label(n.loc, "expected e.g. 64"),
                        );
                        return None;
                    }
                },
                None => None,
            };
            let Some(source) = f.get("source") else {
                self.missing(
                    &f,
                    "source",
                    "this tokenizer has no `source`",
                    Some("add e.g. `source: union`"),
                );
                return None;
            };
            (source, pad)
        } else {
            (node, None)
        };
        let text = self.string(source_node, WHAT, "`tokenizer`")?;
        let source = match text {
            "base" => TokenizerSource::Base,
            "union" => TokenizerSource::Union,
            _ => TokenizerSource::Model(self.path(source_node, "tokenizer")?),
        };
        Some(Tokenizer {
            source,
            pad_to_multiple_of: pad,
            tokens,
            location: source_node.loc,
        })
    }

    /// A tokenizer's `tokens:`, a mapping from a token to its row.
    fn token_rows(&mut self, node: &Node) -> Option<Vec<TokenRow>> {
        const EXAMPLE: &str =
            "tokens:\n  \"<|im_end|>\": { source: models/chat }\n  \"<pad>\": { source: zero }";
        let Kind::Map(entries) = &node.kind else {
            let e = self
                .wrong_type(node, "a mapping from a token to its row", "`tokens`")
                .help(format!("write e.g.\n{EXAMPLE}"));
            self.push(e);
            return None;
        };
        let mut out: Vec<TokenRow> = Vec::new();
        let mut ok = true;
        for (k, v) in entries {
            let Some(token) = self.string(k, "a token", "a key of `tokens`") else {
                ok = false;
                continue;
            };
            let token = token.to_string();
            let Some(f) = self.fields(v, &TOKEN_ROW) else {
                ok = false;
                continue;
            };
            let force = match f.get("force") {
                Some(n) => match &n.kind {
                    Kind::Bool(b) => Some(*b),
                    _ => {
                        let e = self.wrong_type(n, "true or false", "`force`");
                        self.push(e);
                        None
                    }
                },
                None => Some(false),
            };
            let source = match f.get("source") {
                Some(n) => self.token_source(n),
                None => {
                    if !f.suggested.contains(&"source") {
                        self.missing(
                            &f,
                            "source",
                            &format!("the row of `{token}` has no `source`"),
                            Some(
                                "add e.g. `source: zero`, `source: base` or `source: models/chat`",
                            ),
                        );
                    }
                    None
                }
            };
            match (source, force) {
                (Some(source), Some(force)) => out.push(TokenRow {
                    token,
                    source,
                    force,
                    location: k.loc,
                }),
                _ => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// A token row's `source`: `zero`, an input (`base` or a model's path), or
    /// `{ model, token | token_id }`.
    fn token_source(&mut self, node: &Node) -> Option<TokenRowSource> {
        let input = |c: &mut Self, n: &Node, what: &str| -> Option<Option<PathBuf>> {
            let text = c.string(n, "`base` or a model's path", what)?;
            if text == "base" {
                return Some(None);
            }
            c.path(n, what).map(Some)
        };
        match &node.kind {
            Kind::Str(s) if s == "zero" => Some(TokenRowSource::Zero),
            Kind::Map(_) => {
                let f = self.fields(node, &TOKEN_OF)?;
                let Some(m) = f.get("model") else {
                    if !f.suggested.contains(&"model") {
                        self.missing(
                            &f,
                            "model",
                            "this row has no `model` (whose row it reads)",
                            None,
                        );
                    }
                    return None;
                };
                let model = input(self, m, "`model`");
                let token = match f.get("token") {
                    Some(n) => self
                        .string(n, "a token", "`token`")
                        .map(|t| Some(t.to_string())),
                    None => Some(None),
                };
                let id = match f.get("token_id") {
                    Some(n) => match &n.kind {
                        Kind::Int(i) if *i >= 0 => usize::try_from(*i).ok().map(Some),
                        _ => {
                            let e = self.wrong_type(
                                n,
                                "a token id (an integer, 0 or more)",
                                "`token_id`",
                            );
                            self.push(e);
                            None
                        }
                    },
                    None => Some(None),
                };
                let (model, token, id) = (model?, token?, id?);
                if token.is_some() == id.is_some() {
                    self.push(
                        RecipeError::new(
                            ErrorKind::InvalidValue,
                            "a row of another token gives exactly one of `token` and `token_id`",
                        )
                        .label(node.loc, if token.is_some() { "both" } else { "neither" })
                        .help("write e.g. `{ model: models/chat, token: \"</s>\" }`"),
                    );
                    return None;
                }
                Some(TokenRowSource::Token {
                    input: model,
                    token,
                    id,
                })
            }
            _ => input(self, node, "`source`").map(TokenRowSource::Input),
        }
    }

    /// An optional LoRA adapter's folder (`lora:`, `base_lora:`).
    fn adapter(&mut self, node: Option<&Node>, what: &str) -> Option<Option<Adapter>> {
        match node {
            None => Some(None),
            Some(n) => self.path(n, what).map(|path| {
                Some(Adapter {
                    path,
                    location: n.loc,
                })
            }),
        }
    }

    /// A list of paths (`plugins:`).
    fn paths(&mut self, node: &Node, what: &str, expected: &str) -> Option<Vec<PathBuf>> {
        let Kind::Seq(items) = &node.kind else {
            let e = self
                .wrong_type(node, expected, &format!("`{what}`"))
                .help(format!("write a list: {what}: [path/one.so, path/two.so]"));
            self.push(e);
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for item in items {
            match self.path(item, &format!("an entry of `{what}`")) {
                Some(p) => out.push(p),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// A finite number, with `what` naming it in messages.
    fn finite(&mut self, node: &Node, what: &str) -> Option<f64> {
        let v = match node.kind {
            Kind::Int(i) => i as f64,
            Kind::Float(f) => f,
            _ => return None,
        };
        if !v.is_finite() {
            self.push(
                RecipeError::new(ErrorKind::InvalidValue, format!("{what} must be finite"))
                    .label(node.loc, "not a finite number"),
            );
            return None;
        }
        // Merges compute in f32: a value beyond its range would be applied as infinity.
        if !(v as f32).is_finite() {
            self.push(
                RecipeError::new(
                    ErrorKind::InvalidValue,
                    format!("{what} is too large: merges compute in 32-bit floats"),
                )
                .label(node.loc, "beyond ±3.4e38, the largest 32-bit float"),
            );
            return None;
        }
        Some(v)
    }

    /// A number or a gradient (a list of two or more numbers).
    pub(crate) fn number(&mut self, node: &Node, what: &str) -> Option<Number> {
        match &node.kind {
            Kind::Int(_) | Kind::Float(_) => self.finite(node, what).map(Number::Scalar),
            Kind::Seq(items) => self.gradient(node, items, what).map(Number::Gradient),
            _ => {
                let mut e =
                    self.wrong_type(node, "a number or a list of numbers (a gradient)", what);
                if let Kind::Str(s) = &node.kind {
                    if s.trim().parse::<f64>().is_ok() {
                        e = e.help("remove the quotes: a quoted number is a string in YAML");
                    }
                }
                self.push(e);
                None
            }
        }
    }

    fn gradient(&mut self, node: &Node, items: &[Node], what: &str) -> Option<Vec<f64>> {
        let mut values = Vec::with_capacity(items.len());
        let mut ok = true;
        for item in items {
            match item.kind {
                Kind::Int(_) | Kind::Float(_) => match self.finite(item, what) {
                    Some(v) => values.push(v),
                    None => ok = false,
                },
                _ => {
                    self.push(
                        RecipeError::new(
                            ErrorKind::InvalidGradient,
                            format!(
                                "a gradient is a list of numbers, but this entry of {what} is {}",
                                item.kind.describe()
                            ),
                        )
                        .label(item.loc, "expected a number"),
                    );
                    ok = false;
                }
            }
        }
        if ok && values.len() < 2 {
            let mut e = RecipeError::new(
                ErrorKind::InvalidGradient,
                format!(
                    "a gradient needs at least two numbers, but {what} has {}",
                    values.len()
                ),
            )
            .label(node.loc, "too short for a gradient");
            e = match values.first() {
                Some(v) => e.help(format!("for the same value at every depth write `{v}`")),
                None => e.help("write a number, or a list like [0.2, 0.6] that varies over depth"),
            };
            self.push(e);
            return None;
        }
        ok.then_some(values)
    }

    /// A merge expression.
    fn expr(&mut self, node: &Node, what: &str) -> Option<Expr> {
        let text = match &node.kind {
            Kind::Str(s) => s,
            _ => {
                let e = self
                    .wrong_type(node, "a merge expression (a string)", &format!("`{what}`"))
                    .help("e.g. `merge: ties(trim(0.2), elect, disjoint)`");
                self.push(e);
                return None;
            }
        };
        if text.trim().is_empty() {
            self.push(
                RecipeError::new(
                    ErrorKind::InvalidValue,
                    format!("`{what}` is an empty expression"),
                )
                .label(node.loc, "empty")
                .help("e.g. `merge: ties(trim(0.2), elect, disjoint)`"),
            );
            return None;
        }
        Some(Expr::new(text.clone(), node.def, self.source))
    }

    // ---- params -----------------------------------------------------------------

    /// A `params:` mapping of `$variable` values. `whose` names the owner in messages.
    fn params(&mut self, node: &Node, whose: &str) -> Option<Params> {
        let Kind::Map(entries) = &node.kind else {
            let e = self
                .wrong_type(
                    node,
                    "a mapping of names to values",
                    &format!("the `params` of {whose}"),
                )
                .help("e.g. params: { density: 0.3, rescale: l1 }");
            self.push(e);
            return None;
        };
        let mut out = Params::new();
        let mut ok = true;
        for (key, value) in entries {
            let Some(name) = self.key_name(key) else {
                ok = false;
                continue;
            };
            if !is_identifier(name) {
                self.push(
                    RecipeError::new(
                        ErrorKind::InvalidName,
                        format!("`{name}` is not a valid parameter name"),
                    )
                    .label(key.loc, "not an identifier")
                    .help(
                        "a parameter is used as `$name` in the expression: letters, digits \
                         and `_`, not starting with a digit",
                    ),
                );
                ok = false;
                continue;
            }
            if let Some(first) = out.get(name) {
                self.push(
                    RecipeError::new(
                        ErrorKind::DuplicateKey,
                        format!("parameter `{name}` is given twice in the `params` of {whose}"),
                    )
                    .label(key.loc, "given again here")
                    .label(first.key_loc, "first given here")
                    .help("keep one of them"),
                );
                ok = false;
                continue;
            }
            let what = format!("parameter `{name}`");
            let v = match &value.kind {
                Kind::Seq(items) if is_conditions(items) => self
                    .conditions(items, &what, |c, n| c.param_value(n, &what))
                    .map(ParamValue::Conditions),
                Kind::Null => {
                    self.push(
                        RecipeError::new(
                            ErrorKind::MissingKey,
                            format!("parameter `{name}` has no value"),
                        )
                        .label(key.loc, "no value given")
                        .help(format!(
                            "give it a number, a list of numbers, a string or a boolean: {name}: 0.3"
                        )),
                    );
                    None
                }
                _ => self.param_value(value, &what),
            };
            match v {
                Some(v) => {
                    out.insert(
                        name.to_owned(),
                        Param {
                            value: v,
                            loc: value.loc,
                            key_loc: key.loc,
                        },
                    );
                }
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// A parameter's value that is not a list of conditions.
    fn param_value(&mut self, value: &Node, what: &str) -> Option<ParamValue> {
        match &value.kind {
            Kind::Int(_) | Kind::Float(_) => self.number(value, what).map(ParamValue::Number),
            Kind::Seq(items) if is_conditions(items) => {
                self.push(
                    RecipeError::new(
                        ErrorKind::WrongType,
                        format!("the value of a condition of {what} is itself conditions"),
                    )
                    .label(value.loc, "conditions inside a condition")
                    .help("give each condition a number, a gradient, a string or a boolean"),
                );
                None
            }
            Kind::Seq(_) => self.number(value, what).map(ParamValue::Number),
            Kind::Str(s) => Some(ParamValue::Text(s.clone())),
            Kind::Bool(b) => Some(ParamValue::Bool(*b)),
            Kind::Null | Kind::Map(_) => {
                let e = self.wrong_type(
                    value,
                    "a number, a list of numbers, a string or a boolean",
                    what,
                );
                self.push(e);
                None
            }
        }
    }

    /// A list of conditions `[{match: GLOB, value: V}, ..., {value: V}]`, each value
    /// read by `value`.
    fn conditions<T>(
        &mut self,
        items: &[Node],
        what: &str,
        mut value: impl FnMut(&mut Self, &Node) -> Option<T>,
    ) -> Option<Vec<Condition<T>>> {
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        let mut catch_all: Option<Loc> = None;
        for item in items {
            let Some(f) = self.fields(item, &CONDITION) else {
                ok = false;
                continue;
            };
            if !f.suggested.is_empty() {
                // A misspelt `match` (reported): not a catch-all.
                ok = false;
                continue;
            }
            let glob = match f.get("match") {
                Some(n) => match self.glob(n, "a condition's `match`") {
                    Some((text, _)) => Some(text),
                    None => {
                        ok = false;
                        continue;
                    }
                },
                None => None,
            };
            if let Some(first) = catch_all {
                self.push(
                    RecipeError::new(
                        ErrorKind::InvalidValue,
                        format!("a condition of {what} follows one that matches every tensor"),
                    )
                    .label(map_loc(item), "never used")
                    .label(first, "this entry has no `match`, so it takes every tensor")
                    .help("put the entry without `match` last"),
                );
                ok = false;
                continue;
            }
            let Some(v) = f.get("value") else {
                self.missing(&f, "value", "this condition has no `value`", None);
                ok = false;
                continue;
            };
            match value(self, v) {
                Some(v) => {
                    if glob.is_none() {
                        catch_all = Some(map_loc(item));
                    }
                    out.push(Condition {
                        glob,
                        value: v,
                        loc: map_loc(item),
                    });
                }
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    // ---- models -----------------------------------------------------------------

    fn models(&mut self, f: &Fields) -> Option<Vec<ModelEntry>> {
        let Some(node) = f.get("models") else {
            self.missing(
                f,
                "models",
                "the recipe has no `models` (the fine-tunes to merge)",
                Some("add e.g.\nmodels:\n  - path: models/code\n  - path: models/math"),
            );
            return None;
        };
        let Kind::Seq(items) = &node.kind else {
            let e = self.wrong_type(node, "a list of models", "`models`").help(
                "write one entry per model:\nmodels:\n  - path: models/code\n  - path: models/math",
            );
            self.push(e);
            return None;
        };
        if items.is_empty() {
            self.push(
                RecipeError::new(ErrorKind::NoModels, "`models` is empty: nothing to merge")
                    .label(node.loc, "no models")
                    .help("list at least one fine-tune: models: [{ path: models/code }]"),
            );
            return None;
        }
        let mut out = Vec::new();
        let mut ok = true;
        for item in items {
            match self.model(item) {
                Some(m) => out.push(m),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn model(&mut self, node: &Node) -> Option<ModelEntry> {
        if let Kind::Str(s) = &node.kind {
            self.push(
                RecipeError::new(
                    ErrorKind::WrongType,
                    "a model entry is a mapping with a `path`, but this is a string",
                )
                .label(node.loc, "expected `path: ...`")
                .help(format!("write `- path: {s}`")),
            );
            return None;
        }
        let f = self.fields(node, &MODEL)?;
        let path_node = f.get("path");
        let path = match path_node {
            Some(n) => self.path(n, "path"),
            None => {
                self.missing(&f, "path", "this model entry has no `path`", None);
                None
            }
        };
        let weight = match f.get("weight") {
            Some(Node {
                kind: Kind::Seq(items),
                ..
            }) if is_conditions(items) => self
                .conditions(items, "`weight`", |c, n| c.number(n, "`weight`"))
                .map(Weight::Conditions),
            Some(n) => self.number(n, "`weight`").map(Weight::Number),
            None => Some(Weight::ONE),
        };
        let fisher_location = f.get("fisher").map(|n| n.loc);
        let fisher = match f.get("fisher") {
            Some(n) => self.path(n, "fisher").map(Some),
            None => Some(None),
        };
        let lora = self.adapter(f.get("lora"), "lora");
        let params = match f.get("params") {
            Some(n) => self.params(n, "this model"),
            None => Some(Params::new()),
        };
        Some(ModelEntry {
            path: path?,
            weight: weight?,
            lora: lora?,
            fisher: fisher?,
            fisher_location,
            params: params?,
            location: path_node?.loc,
        })
    }

    // ---- slices -------------------------------------------------------------------

    /// `slices:`, a non-empty list; `from` values are resolved against `base` and
    /// `models` (when those are valid: otherwise they are not checked).
    fn slices(
        &mut self,
        node: &Node,
        base: Option<&Path>,
        base_lora: Option<&Adapter>,
        models: Option<&[ModelEntry]>,
    ) -> Option<Vec<Slice>> {
        const EXAMPLE: &str =
            "slices:\n  - from: base\n    layers: 0..24\n  - from: models/math\n    layers: 8..32";
        let items = match &node.kind {
            Kind::Seq(items) if !items.is_empty() => items,
            Kind::Seq(_) => {
                self.push(
                    RecipeError::new(ErrorKind::InvalidValue, "`slices` is empty: the output would have no layers")
                        .label(node.loc, "no slices")
                        .help(format!("list the output's layers, or leave `slices` out to merge layer by layer:\n{EXAMPLE}")),
                );
                return None;
            }
            _ => {
                let e = self
                    .wrong_type(node, "a list of slices", "`slices`")
                    .help(format!("write one entry per run of layers:\n{EXAMPLE}"));
                self.push(e);
                return None;
            }
        };
        let mut out: Vec<Slice> = Vec::new();
        let mut ok = true;
        for item in items {
            match self.slice(item, base, base_lora, models) {
                Some(s) => out.push(s),
                None => ok = false,
            }
        }
        // An empty slice only picks where the embeddings (first) or the final norm and
        // LM head (last) come from, as mergekit's empty last slice does.
        let last = out.len().saturating_sub(1);
        for (i, s) in out.iter().enumerate() {
            if s.is_empty() && i != 0 && i != last && ok {
                self.push(
                    RecipeError::new(
                        ErrorKind::InvalidLayers,
                        "an empty slice between others has no effect",
                    )
                    .label(s.loc, "no layers")
                    .help(
                        "an empty slice first picks the input of the embeddings, last the \
                         input of the final norm and LM head; elsewhere, drop it",
                    ),
                );
                ok = false;
            }
        }
        if ok && out.iter().all(Slice::is_empty) {
            self.push(
                RecipeError::new(
                    ErrorKind::InvalidValue,
                    "every slice is empty: the output would have no layers",
                )
                .label(node.loc, "no layers")
                .help(format!("list the output's layers:\n{EXAMPLE}")),
            );
            ok = false;
        }
        ok.then_some(out)
    }

    fn slice(
        &mut self,
        node: &Node,
        base: Option<&Path>,
        base_lora: Option<&Adapter>,
        models: Option<&[ModelEntry]>,
    ) -> Option<Slice> {
        let f = self.fields(node, &SLICE)?;
        let range = match f.get("layers") {
            Some(n) => self.layers(n, true).map(|r| (r, n.loc)),
            None => {
                if !f.suggested.contains(&"layers") {
                    self.missing(
                        &f,
                        "layers",
                        "this slice has no `layers` (the input layers it takes)",
                        Some("add e.g. `layers: 0..24`"),
                    );
                }
                None
            }
        };
        let scale = match f.get("scale") {
            Some(Node {
                kind: Kind::Seq(items),
                ..
            }) if is_conditions(items) => self
                .conditions(items, "`scale`", |c, n| c.number(n, "`scale`"))
                .map(Weight::Conditions),
            Some(n) => self.number(n, "`scale`").map(Weight::Number),
            None => Some(Weight::ONE),
        };
        let params = match f.get("params") {
            Some(n) => self.params(n, "this slice"),
            None => Some(Params::new()),
        };
        let source = match f.get("from") {
            Some(n) => {
                if let Some((key, p)) = ["params", "base", "models"]
                    .into_iter()
                    .find_map(|k| f.get(k).map(|p| (k, p)))
                {
                    self.push(
                        RecipeError::new(
                            ErrorKind::InvalidValue,
                            format!("a slice that copies an input (`from`) merges nothing, so it has no `{key}`"),
                        )
                        .label(p.loc, "never read")
                        .label(n.loc, "copied from here")
                        .help(format!("drop `from` to merge the slice's layers, or drop `{key}`")),
                    );
                    None
                } else {
                    let input = self.slice_input(n, "from", base, base_lora, models);
                    match (input, scale) {
                        (Some(input), Some(scale)) => Some(SliceSource::Copy {
                            input,
                            scale,
                            loc: n.loc,
                        }),
                        _ => None,
                    }
                }
            }
            None => match f.get("scale") {
                Some(n) => {
                    self.push(
                        RecipeError::new(
                            ErrorKind::InvalidValue,
                            "`scale` multiplies a copied slice, but this slice has no `from`",
                        )
                        .label(n.loc, "no input to scale")
                        .help("add `from: base` or `from: <a model's path>`, or scale in the merge expression (`... |> scale(0.5)`)"),
                    );
                    None
                }
                None => {
                    let len = range.map(|((a, b), _)| b - a);
                    self.merged_slice(&f, params, len, base, base_lora, models)
                }
            },
        };
        if let (Some(n), Some(SliceSource::Copy { loc, .. })) = (f.get("layers_of"), &source) {
            self.push(
                RecipeError::new(
                    ErrorKind::InvalidValue,
                    "`layers_of` places a merged slice's models, but this slice copies one input (`from`)",
                )
                .label(n.loc, "never read")
                .label(*loc, "copied from here")
                .help("give `from` the layers to copy in `layers`, or drop `from` to merge"),
            );
            return None;
        }
        let ((start, end), loc) = range?;
        Some(Slice {
            start,
            end,
            source: source?,
            loc,
        })
    }

    /// A merged slice (no `from`): its `base` and `models` (by default the recipe's),
    /// its `params` (already read: `None` if they were wrong) and its `layers_of`, each
    /// input of which must be one the slice merges.
    fn merged_slice(
        &mut self,
        f: &Fields,
        params: Option<Params>,
        len: Option<usize>,
        base: Option<&Path>,
        base_lora: Option<&Adapter>,
        models: Option<&[ModelEntry]>,
    ) -> Option<SliceSource> {
        let own_base = match f.get("base") {
            Some(n) => self
                .slice_input(n, "base", base, base_lora, models)
                .map(|b| (b, Some(n))),
            None => Some((SliceInput::Base, None)),
        };
        let listed = match f.get("models") {
            Some(n) => self.slice_models(n, base, base_lora, models).map(Some),
            None => Some(None),
        };
        let (placed, mut ok) = match f.get("layers_of") {
            Some(n) => self.layers_of(n, base, base_lora, models, len),
            None => (Vec::new(), true),
        };
        let ((own_base, base_node), listed) = (own_base?, listed?);
        if let (Some(b), None) = (base_node, &listed) {
            if own_base != SliceInput::Base {
                self.push(
                    RecipeError::new(
                        ErrorKind::InvalidValue,
                        "this slice's base is one of the recipe's models, so it lists the models it merges",
                    )
                    .label(b.loc, "a model as the base")
                    .help("add `models:` to the slice: the fine-tunes it merges onto its base (the recipe's base may be one of them, as `base`)"),
                );
                ok = false;
            }
        }
        if let (Some(ms), Some(n)) = (&listed, f.get("models")) {
            if ms.is_empty() {
                self.push(
                    RecipeError::new(
                        ErrorKind::NoModels,
                        "the slice's `models` is empty: nothing to merge",
                    )
                    .label(n.loc, "no models")
                    .help(
                        "list the models this slice merges, or drop `models` to merge every model",
                    ),
                );
                ok = false;
            }
        }
        let mut starts = BTreeMap::new();
        for (input, start, loc) in placed {
            let merged = match &listed {
                Some(ms) => ms.iter().any(|m| m.input == input),
                None => matches!(input, SliceInput::Model(_)),
            };
            if input == own_base {
                self.push(
                    RecipeError::new(
                        ErrorKind::InvalidValue,
                        "the base's layers of a slice are its `layers`",
                    )
                    .label(loc, "the base")
                    .help("`layers_of` places the models whose layers differ from the base's"),
                );
                ok = false;
            } else if !merged {
                self.push(
                    RecipeError::new(
                        ErrorKind::InvalidValue,
                        "`layers_of` places an input this slice does not merge",
                    )
                    .label(loc, "not one of the slice's models")
                    .help("list it in the slice's `models`, or drop it from `layers_of`"),
                );
                ok = false;
            }
            starts.insert(input, start);
        }
        params.filter(|_| ok).map(|params| SliceSource::Merge {
            params,
            starts,
            base: own_base,
            models: listed,
        })
    }

    /// A merged slice's `models:`: a list of the recipe's inputs, each a path (as
    /// `from` names it) or `{ path, weight, params }`, none twice.
    fn slice_models(
        &mut self,
        node: &Node,
        base: Option<&Path>,
        base_lora: Option<&Adapter>,
        models: Option<&[ModelEntry]>,
    ) -> Option<Vec<SliceModel>> {
        let Kind::Seq(items) = &node.kind else {
            let e = self
                .wrong_type(
                    node,
                    "a list of the recipe's models",
                    "the slice's `models`",
                )
                .help("write e.g. `models: [models/code, { path: models/math, weight: 0.5 }]`");
            self.push(e);
            return None;
        };
        let mut out: Vec<SliceModel> = Vec::new();
        let mut ok = true;
        for item in items {
            let (path_node, weight, params) = match &item.kind {
                Kind::Map(_) => {
                    let Some(f) = self.fields(item, &SLICE_MODEL) else {
                        ok = false;
                        continue;
                    };
                    let weight = match f.get("weight") {
                        Some(Node {
                            kind: Kind::Seq(items),
                            ..
                        }) if is_conditions(items) => self
                            .conditions(items, "`weight`", |c, n| c.number(n, "`weight`"))
                            .map(|c| Some(Weight::Conditions(c))),
                        Some(n) => self.number(n, "`weight`").map(|w| Some(Weight::Number(w))),
                        None => Some(None),
                    };
                    let params = match f.get("params") {
                        Some(n) => self.params(n, "this slice's model"),
                        None => Some(Params::new()),
                    };
                    let Some(path) = f.get("path") else {
                        if !f.suggested.contains(&"path") {
                            self.missing(&f, "path", "this slice's model has no `path`", None);
                        }
                        ok = false;
                        continue;
                    };
                    (path, weight, params)
                }
                _ => (item, Some(None), Some(Params::new())),
            };
            let input = self.slice_input(path_node, "path", base, base_lora, models);
            let (Some(input), Some(weight), Some(params)) = (input, weight, params) else {
                ok = false;
                continue;
            };
            if let Some(first) = out.iter().find(|m| m.input == input) {
                self.push(
                    RecipeError::new(
                        ErrorKind::InvalidValue,
                        "this input is listed twice in the slice's `models`",
                    )
                    .label(path_node.loc, "listed again")
                    .label(first.loc, "first listed here")
                    .help("list each model once"),
                );
                ok = false;
                continue;
            }
            out.push(SliceModel {
                input,
                weight,
                params,
                loc: path_node.loc,
            });
        }
        ok.then_some(out)
    }

    /// A merged slice's `layers_of`: a mapping from an input's path (as `from` names
    /// it) to the range of its layers the slice merges, as long as the slice (`len`,
    /// when its `layers` are valid).
    fn layers_of(
        &mut self,
        node: &Node,
        base: Option<&Path>,
        base_lora: Option<&Adapter>,
        models: Option<&[ModelEntry]>,
        len: Option<usize>,
    ) -> (Vec<(SliceInput, usize, Loc)>, bool) {
        let Kind::Map(entries) = &node.kind else {
            let e = self
                .wrong_type(
                    node,
                    "a mapping from a model's path to its layers",
                    "`layers_of`",
                )
                .help("write e.g. `layers_of: { models/math: 8..16 }`");
            self.push(e);
            return (Vec::new(), false);
        };
        let mut starts = Vec::new();
        let mut ok = true;
        for (k, v) in entries {
            let input = self.slice_input(k, "layers_of", base, base_lora, models);
            let range = self.layers(v, true);
            match (input, range) {
                (Some(input), Some((a, b))) => {
                    if len.is_some_and(|len| b - a != len) {
                        self.push(
                            RecipeError::new(
                                ErrorKind::InvalidLayers,
                                format!(
                                    "`{a}..{b}` is {} layers, but the slice's `layers` are {}",
                                    b - a,
                                    len.unwrap_or(0)
                                ),
                            )
                            .label(v.loc, "another length")
                            .help(
                                "every input of a merged slice gives it the same number of layers",
                            ),
                        );
                        ok = false;
                    }
                    starts.push((input, a, k.loc));
                }
                _ => ok = false,
            }
        }
        (starts, ok)
    }

    /// A slice's `from`: `base`, the base's path or a model's path, as written or as
    /// resolved.
    fn slice_input(
        &mut self,
        node: &Node,
        key: &str,
        base: Option<&Path>,
        base_lora: Option<&Adapter>,
        models: Option<&[ModelEntry]>,
    ) -> Option<SliceInput> {
        let text = self.string(node, "`base` or a model's path", &format!("`{key}`"))?;
        if text == "base" {
            return Some(SliceInput::Base);
        }
        // Without a valid base and models, nothing to check against (already reported).
        let (Some(base), Some(models)) = (base, models) else {
            return None;
        };
        let path = resolve(self.dir, Path::new(text));
        // The inputs of that path, with the adapter each is read with.
        let adapter = |a: Option<&Adapter>| a.map(|a| a.path.clone());
        let found: Vec<(SliceInput, Option<PathBuf>)> = (path == base)
            .then(|| (SliceInput::Base, adapter(base_lora)))
            .into_iter()
            .chain(
                (models.iter().enumerate())
                    .filter(|(_, m)| m.path == path)
                    .map(|(i, m)| (SliceInput::Model(i), adapter(m.lora.as_ref()))),
            )
            .collect();
        if let Some((first, lora)) = found.first() {
            if found.iter().any(|(_, l)| l != lora) {
                self.push(
                    RecipeError::new(
                        ErrorKind::InvalidValue,
                        format!(
                            "`{key}: {text}` is ambiguous: that model is an input twice, with \
                             different LoRA adapters"
                        ),
                    )
                    .label(node.loc, "which of them?")
                    .help("give one of them a folder of its own (a link to it will do)"),
                );
                return None;
            }
            return Some(*first);
        }
        let written: Vec<&str> = std::iter::once("base")
            .chain(
                models
                    .iter()
                    .filter_map(|m| self.source.get(m.location.range()))
                    .map(|t| t.trim_matches(|c| c == '"' || c == '\'')),
            )
            .collect();
        let mut e = RecipeError::new(
            ErrorKind::UnknownSource,
            format!("`{key}: {text}` names neither the base nor a model of `models:`"),
        );
        let verb = if key == "from" { "copies" } else { "reads" };
        let valid = format!(
            "a slice {verb} `base` or one of `models:` ({})",
            list(&written[1..])
        );
        e = match closest(text, written.iter().copied()) {
            Some(best) => e
                .label(node.loc, format!("did you mean `{best}`?"))
                .help(format!("did you mean `{best}`? {}", capitalize(&valid))),
            None => e
                .label(node.loc, "not an input of the recipe")
                .help(format!(
                    "{}; to {} layers of another model, add it to `models:`",
                    capitalize(&valid),
                    if key == "from" { "copy" } else { "merge" }
                )),
        };
        self.push(e);
        None
    }

    // ---- groups and overrides -----------------------------------------------------

    fn groups(&mut self, f: &Fields) -> Option<Groups> {
        let mut groups = Groups::builtin();
        let Some(node) = f.get("groups") else {
            return Some(groups);
        };
        let Kind::Map(entries) = &node.kind else {
            let e = self
                .wrong_type(
                    node,
                    "a mapping of group names to lists of globs",
                    "`groups`",
                )
                .help("e.g. groups: { qk: [\"*.q_proj.*\", \"*.k_proj.*\"] }");
            self.push(e);
            return None;
        };
        let mut ok = true;
        let mut seen: BTreeMap<&str, Loc> = BTreeMap::new();
        for (key, value) in entries {
            let Some(name) = self.key_name(key) else {
                ok = false;
                continue;
            };
            if Groups::is_builtin(name) {
                self.push(
                    RecipeError::new(
                        ErrorKind::BuiltinGroupRedefined,
                        format!("`{name}` is a built-in group and cannot be redefined"),
                    )
                    .label(key.loc, "built-in group")
                    .help(format!(
                        "a group name means the same thing in every recipe; give yours another \
                         name (the built-in groups are {})",
                        list(&BUILTIN_GROUPS)
                    )),
                );
                ok = false;
                continue;
            }
            if !is_group_name(name) {
                self.push(
                    RecipeError::new(
                        ErrorKind::InvalidName,
                        format!("`{name}` is not a valid group name"),
                    )
                    .label(key.loc, "not a group name")
                    .help("use letters, digits, `_` and `-`, starting with a letter or `_`"),
                );
                ok = false;
                continue;
            }
            if let Some(first) = seen.get(name) {
                self.push(
                    RecipeError::new(
                        ErrorKind::DuplicateKey,
                        format!("group `{name}` is defined twice"),
                    )
                    .label(key.loc, "defined again here")
                    .label(*first, "first defined here")
                    .help("keep one of them, or merge their globs into one list"),
                );
                ok = false;
                continue;
            }
            seen.insert(name, key.loc);
            let what = format!("group `{name}`");
            let items = match &value.kind {
                Kind::Seq(items) if !items.is_empty() => items,
                Kind::Seq(_) => {
                    self.push(
                        RecipeError::new(
                            ErrorKind::InvalidValue,
                            format!("{what} has no globs: it would contain no tensor"),
                        )
                        .label(value.loc, "empty list"),
                    );
                    ok = false;
                    continue;
                }
                _ => {
                    let e = self
                        .wrong_type(value, "a list of globs", &what)
                        .help(format!("e.g. {name}: [\"model.layers.*.mlp.*\"]"));
                    self.push(e);
                    ok = false;
                    continue;
                }
            };
            let mut globs = Vec::new();
            for item in items {
                match self.glob(item, &format!("a glob of {what}")) {
                    Some(g) => globs.push(g),
                    None => ok = false,
                }
            }
            if ok {
                groups.define(name.to_owned(), globs);
            }
        }
        ok.then_some(groups)
    }

    /// A glob over tensor names, compiled.
    fn glob(&mut self, node: &Node, what: &str) -> Option<(String, globset::Glob)> {
        let text = self.string(node, "a glob (a string)", what)?;
        if text.is_empty() {
            self.push(
                RecipeError::new(ErrorKind::InvalidGlob, format!("{what} is empty"))
                    .label(node.loc, "empty glob"),
            );
            return None;
        }
        match compile_glob(text) {
            Ok(g) => Some((text.to_owned(), g)),
            Err(err) => {
                self.push(
                    RecipeError::new(
                        ErrorKind::InvalidGlob,
                        format!("invalid glob `{text}`: {}", err.kind()),
                    )
                    .label(node.loc, "invalid glob")
                    .help(
                        "globs match whole tensor names: `*` any characters (dots included), \
                         `?` one character, `[0-9]` a class, `{a,b}` alternatives, `\\` escapes",
                    ),
                );
                None
            }
        }
    }

    fn overrides(&mut self, f: &Fields, groups: Option<&Groups>) -> Option<Vec<Override>> {
        let Some(node) = f.get("overrides") else {
            return Some(Vec::new());
        };
        let Kind::Seq(items) = &node.kind else {
            let e = self
                .wrong_type(node, "a list of overrides", "`overrides`")
                .help(
                    "write one entry per override:\noverrides:\n  - group: lm_head\n    merge: sum",
                );
            self.push(e);
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for item in items {
            match self.override_entry(item, groups) {
                Some(o) => out.push(o),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn override_entry(&mut self, node: &Node, groups: Option<&Groups>) -> Option<Override> {
        let f = self.fields(node, &OVERRIDE)?;
        let given: Vec<&str> = ["match", "group", "layers"]
            .into_iter()
            .filter(|k| f.get(k).is_some())
            .collect();
        let merge = match f.get("merge") {
            Some(n) => self.expr(n, "merge").map(Some),
            None => Some(None),
        };
        let params = match f.get("params") {
            Some(n) => self.params(n, "this override"),
            None => Some(Params::new()),
        };
        let selector = match given.as_slice() {
            [] if ["match", "group", "layers"]
                .iter()
                .any(|k| f.suggested.contains(k)) =>
            {
                None
            }
            [] => {
                let mut e = RecipeError::new(
                    ErrorKind::InvalidSelector,
                    "this override does not say which tensors it is for",
                )
                .help("give it one of `match: \"glob\"`, `group: name` or `layers: a..b`");
                if let Some(at) = f.at {
                    e = e.label(at, "no `match`, `group` or `layers`");
                }
                self.push(e);
                None
            }
            [key] => self.selector(key, f.get(key)?, groups),
            [first, rest @ ..] => {
                let mut e = RecipeError::new(
                    ErrorKind::InvalidSelector,
                    format!(
                        "an override has one selector, but this one has {}",
                        list(&given)
                    ),
                );
                for k in rest {
                    e = e.label(f.key_loc(k)?, "second selector");
                }
                e = e.label(f.key_loc(first)?, "first selector").help(
                    "split it into one override per selector; the first that matches a tensor wins",
                );
                self.push(e);
                None
            }
        };
        let (selector, loc) = selector?;
        let (merge, params) = (merge?, params?);
        if merge.is_none() && params.is_empty() {
            if f.suggested.contains(&"merge") || f.suggested.contains(&"params") {
                return None;
            }
            self.push(
                RecipeError::new(
                    ErrorKind::IneffectiveOverride,
                    "this override changes nothing: it has neither `merge` nor `params`",
                )
                .label(loc, "the tensors it selects")
                .help(
                    "add `merge: <expression>` and/or `params: { name: value }`; \
                     an override that changes nothing would still stop later overrides \
                     from matching these tensors",
                ),
            );
            return None;
        }
        Some(Override {
            selector,
            merge,
            params,
            loc,
        })
    }

    fn selector(
        &mut self,
        key: &str,
        node: &Node,
        groups: Option<&Groups>,
    ) -> Option<(Selector, Loc)> {
        match key {
            "match" => {
                let (text, _) = self.glob(node, "`match`")?;
                Some((Selector::Match(text), node.loc))
            }
            "group" => {
                let name = self.string(node, "a group name (a string)", "`group`")?;
                // With broken `groups:`, only the built-in names are known for sure.
                let known = match groups {
                    Some(g) => g.exists(name),
                    None => true,
                };
                if !known {
                    let names = groups.map(|g| g.names()).unwrap_or_default();
                    let mut e = RecipeError::new(
                        ErrorKind::UnknownGroup,
                        format!("unknown group `{name}`"),
                    );
                    let valid = format!(
                        "the groups are {}; define your own in `groups:`",
                        list(&names)
                    );
                    e = match closest(name, names.iter().copied()) {
                        Some(best) => e
                            .label(node.loc, format!("did you mean `{best}`?"))
                            .help(format!("did you mean `{best}`? {}", capitalize(&valid))),
                        None => e.label(node.loc, "unknown group").help(capitalize(&valid)),
                    };
                    self.push(e);
                    return None;
                }
                Some((Selector::Group(name.to_owned()), node.loc))
            }
            _ => self
                .layers(node, false)
                .map(|(start, end)| (Selector::Layers { start, end }, node.loc)),
        }
    }

    /// `layers: a..b` (half-open, `a < b`, or `a <= b` with `empty`) or `layers: i`
    /// (that layer alone).
    fn layers(&mut self, node: &Node, empty: bool) -> Option<(usize, usize)> {
        const HELP: &str = "write `layers: a..b` for layers a to b-1 (half-open, like Rust \
                            ranges), or `layers: i` for layer i alone";
        let err = |msg: String, label: &str| {
            RecipeError::new(ErrorKind::InvalidLayers, msg)
                .label(node.loc, label)
                .help(HELP)
        };
        let text = match &node.kind {
            Kind::Int(i) => {
                return match usize::try_from(*i) {
                    Ok(i) if i < usize::MAX => Some((i, i + 1)),
                    _ => {
                        self.push(err(
                            format!("`layers: {i}` is not a layer index"),
                            "expected a non-negative index",
                        ));
                        None
                    }
                };
            }
            Kind::Str(s) => s.trim(),
            _ => {
                let e = self.wrong_type(node, "a range `a..b` or a layer index", "`layers`");
                self.push(e.help(HELP));
                return None;
            }
        };
        if let Ok(i) = text.parse::<usize>() {
            if i < usize::MAX {
                return Some((i, i + 1));
            }
        }
        let Some((a, b)) = text.split_once("..") else {
            self.push(err(
                format!("`{text}` is not a layer range"),
                "expected `a..b` or an index",
            ));
            return None;
        };
        if let Some(b) = b.strip_prefix('=') {
            self.push(
                err(
                    format!("`{text}`: inclusive ranges are not accepted"),
                    "use a half-open range",
                )
                .help(format!(
                    "ranges are half-open: `{}..{}` selects layers {} to {}",
                    a.trim(),
                    b.trim()
                        .parse::<usize>()
                        .map_or("b+1".to_owned(), |b| (b + 1).to_string()),
                    a.trim(),
                    b.trim()
                )),
            );
            return None;
        }
        let (Ok(start), Ok(end)) = (a.trim().parse::<usize>(), b.trim().parse::<usize>()) else {
            self.push(err(
                format!("`{text}` is not a layer range"),
                "expected two non-negative integers `a..b`",
            ));
            return None;
        };
        if start > end || (start == end && !empty) {
            self.push(err(
                format!("`{text}` selects no layer: the end is excluded, so it must be greater than the start"),
                "empty range",
            ));
            return None;
        }
        Some((start, end))
    }

    // ---- output settings ----------------------------------------------------------

    fn dtype(&mut self, node: &Node) -> Option<OutputDtype> {
        let names: Vec<&str> = DTYPES.iter().map(|(n, _)| *n).collect();
        let text = match &node.kind {
            Kind::Str(s) => s,
            _ => {
                let e = self
                    .wrong_type(node, "a dtype name", "`dtype`")
                    .help(format!("accepted: {}", list(&names)));
                self.push(e);
                return None;
            }
        };
        let lower = text.trim().to_ascii_lowercase();
        if let Some((_, d)) = DTYPES.iter().find(|(n, _)| *n == lower) {
            return Some(*d);
        }
        let mut e = RecipeError::new(ErrorKind::InvalidDtype, format!("unknown dtype `{text}`"));
        e = match closest(&lower, names.iter().copied()) {
            Some(best) => e.label(node.loc, format!("did you mean `{best}`?")),
            None => e.label(node.loc, "unknown dtype"),
        };
        self.push(e.help(format!(
            "accepted: {} (leave `dtype` out to keep the base's dtype)",
            list(&names)
        )));
        None
    }

    fn seed(&mut self, node: &Node) -> Option<u64> {
        if let Kind::Int(i) = node.kind {
            if let Ok(seed) = u64::try_from(i) {
                return Some(seed);
            }
        }
        let found = match &node.kind {
            Kind::Int(i) if *i < 0 => "a negative number".to_owned(),
            Kind::Int(_) => "too large for 64 bits".to_owned(),
            Kind::Float(_) => "a number with a fraction or an exponent".to_owned(),
            other => other.describe().to_owned(),
        };
        self.push(
            RecipeError::new(
                ErrorKind::InvalidSeed,
                format!("`seed` must be a non-negative integer, but this is {found}"),
            )
            .label(
                node.loc,
                "expected an integer from 0 to 18446744073709551615",
            ),
        );
        None
    }

    /// `sweep:`: the grid `reefknot sweep` runs when given no `--grid`, and its scorer.
    fn sweep(&mut self, node: &Node) -> Option<Sweep> {
        let f = self.fields(node, &SWEEP)?;
        let mut ok = true;
        let mut grid = Vec::new();
        match f.get("grid") {
            Some(g) => match &g.kind {
                Kind::Map(axes) if !axes.is_empty() => {
                    for (name, values) in axes {
                        let Some(name) = self.string(name, "a variable's name", "a grid axis")
                        else {
                            ok = false;
                            continue;
                        };
                        let what = format!("the values of grid axis `{name}`");
                        let list = match &values.kind {
                            Kind::Seq(items) if !items.is_empty() => items
                                .iter()
                                .map(|v| match v.kind {
                                    Kind::Int(_) | Kind::Float(_) => self.finite(v, &what),
                                    _ => {
                                        let e = self.wrong_type(v, "a number", &what);
                                        self.push(e);
                                        None
                                    }
                                })
                                .collect::<Option<Vec<f64>>>(),
                            _ => {
                                let e = self
                                    .wrong_type(values, "a non-empty list of numbers", &what)
                                    .help(format!("e.g. `{name}: [0.1, 0.2, 0.3]`"));
                                self.push(e);
                                None
                            }
                        };
                        match list {
                            Some(l) => grid.push((name.to_string(), l)),
                            None => ok = false,
                        }
                    }
                }
                _ => {
                    let e = self
                        .wrong_type(g, "a mapping of variables to lists of values", "`grid`")
                        .help("e.g. `grid: { density: [0.1, 0.2], lambda: [0.5, 1.0] }`");
                    self.push(e);
                    ok = false;
                }
            },
            None => {
                self.missing(
                    &f,
                    "grid",
                    "this sweep has no `grid`",
                    Some("add e.g. `grid: { density: [0.1, 0.2, 0.3] }`"),
                );
                ok = false;
            }
        }
        let eval_data = match f.get("eval_data") {
            Some(n) => self.paths(n, "eval_data", "a list of data files"),
            None => Some(Vec::new()),
        };
        let eval_cmd = match f.get("eval_cmd") {
            Some(n) => self
                .string(n, "a shell command (a string)", "`eval_cmd`")
                .map(|s| Some(s.to_string())),
            None => Some(None),
        };
        let context = match f.get("context") {
            Some(n) => match n.kind {
                Kind::Int(i) if i >= 2 => usize::try_from(i).ok().map(Some),
                _ => {
                    self.push(
                        RecipeError::new(
                            ErrorKind::InvalidValue,
                            "`context` is not a number of tokens of at least 2",
                        )
                        .label(n.loc, "expected e.g. 1024"),
                    );
                    None
                }
            },
            None => Some(None),
        };
        let maximize = match f.get("maximize") {
            Some(n) => match n.kind {
                Kind::Bool(b) => Some(b),
                _ => {
                    let e = self.wrong_type(n, "true or false", "`maximize`");
                    self.push(e);
                    None
                }
            },
            None => Some(false),
        };
        let (eval_data, eval_cmd, context, maximize) = (eval_data?, eval_cmd?, context?, maximize?);
        if !eval_data.is_empty() && eval_cmd.is_some() {
            self.push(
                RecipeError::new(
                    ErrorKind::InvalidValue,
                    "this sweep has both `eval_data` and `eval_cmd`",
                )
                .label(node.loc, "one scorer")
                .help("score by the held-out loss on `eval_data`, or by the command `eval_cmd`"),
            );
            return None;
        }
        ok.then_some(Sweep {
            grid,
            eval_data,
            eval_cmd,
            context,
            maximize,
            location: node.loc,
        })
    }

    fn shard_size(&mut self, node: &Node) -> Option<u64> {
        const HELP: &str = "a number of bytes (`5000000000`) or a size with a unit: \
                            `5GB`, `500MB`, `2GiB` (B, KB, MB, GB, TB are powers of 1000; \
                            KiB, MiB, GiB, TiB powers of 1024)";
        let size = match &node.kind {
            Kind::Int(i) => u64::try_from(*i).ok().filter(|&n| n > 0),
            Kind::Float(f) if f.is_finite() && f.fract() == 0.0 && *f >= 1.0 && *f < 1.8e19 => {
                Some(*f as u64)
            }
            Kind::Str(s) => parse_size(s),
            _ => None,
        };
        if size.is_none() {
            let what = match &node.kind {
                Kind::Str(s) => format!("`{s}` is not a size"),
                Kind::Int(_) | Kind::Float(_) => {
                    "`shard_size` must be a positive whole number of bytes".to_owned()
                }
                other => format!(
                    "`shard_size` must be a size, but this is {}",
                    other.describe()
                ),
            };
            self.push(
                RecipeError::new(ErrorKind::InvalidShardSize, what)
                    .label(node.loc, "expected a size such as 5GB")
                    .help(HELP),
            );
        }
        size
    }
}

/// Parses `5GB`, `500 MB`, `2GiB`, `1.5GB`, `1024`: a positive number of bytes (B, KB,
/// MB, GB, TB are powers of 1000; KiB, MiB, GiB, TiB powers of 1024). The recipe's
/// `shard_size:` and the command line's sizes all read this way.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit: u128 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return None,
    };
    let number = number.replace('_', "");
    let (int, frac) = number.split_once('.').unwrap_or((&number, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    if !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if frac.len() > 18 || int.len() > 20 {
        return None;
    }
    let digits: u128 = format!("{int}{frac}").parse().ok()?;
    let scale = 10u128.pow(frac.len() as u32);
    let bytes = digits.checked_mul(unit)? / scale;
    u64::try_from(bytes).ok().filter(|&b| b > 0)
}

/// `dir.join(path)` for a relative path (without `./` components), `path` if absolute.
fn resolve(dir: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        return path.to_path_buf();
    }
    let mut out = dir.to_path_buf();
    for c in path.components() {
        if c != Component::CurDir {
            out.push(c);
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

/// Whether a list is conditions (its entries mappings) rather than a gradient.
pub(crate) fn is_conditions(items: &[Node]) -> bool {
    items
        .first()
        .is_some_and(|n| matches!(n.kind, Kind::Map(_)))
}

/// Where a mapping is, for an error about it as a whole: its first key (or its `{`).
pub(crate) fn map_loc(node: &Node) -> Loc {
    match &node.kind {
        Kind::Map(entries) if node.loc.len == 0 => entries
            .first()
            .map(|(k, _)| k.loc)
            .filter(|k| k.offset == node.loc.offset)
            .unwrap_or(node.loc),
        _ => node.loc,
    }
}

/// `[A-Za-z_][A-Za-z0-9_]*`: the names a `$variable` can have.
pub(crate) fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// An identifier that may also contain `-`.
fn is_group_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("5GB"), Some(5_000_000_000));
        assert_eq!(parse_size("5gb"), Some(5_000_000_000));
        assert_eq!(parse_size("500MB"), Some(500_000_000));
        assert_eq!(parse_size("500 MB"), Some(500_000_000));
        assert_eq!(parse_size("2GiB"), Some(2 << 30));
        assert_eq!(parse_size("1.5GB"), Some(1_500_000_000));
        assert_eq!(parse_size("0.5KiB"), Some(512));
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("1024B"), Some(1024));
        assert_eq!(parse_size("10TB"), Some(10_000_000_000_000));
        assert_eq!(parse_size("1_000MB"), Some(1_000_000_000));
        assert_eq!(parse_size(".5KB"), Some(500));
        assert_eq!(parse_size("0GB"), None);
        assert_eq!(parse_size("0.0001B"), None);
        assert_eq!(parse_size("GB"), None);
        assert_eq!(parse_size("5 G"), None);
        assert_eq!(parse_size("5XB"), None);
        assert_eq!(parse_size("-5GB"), None);
        assert_eq!(parse_size("1.2.3GB"), None);
        assert_eq!(parse_size("99999999999TB"), None);
        assert_eq!(parse_size(""), None);
    }

    #[test]
    fn identifiers() {
        for ok in ["density", "_x", "k2", "A_b"] {
            assert!(is_identifier(ok), "{ok}");
        }
        for bad in ["", "2k", "my-density", "$density", "dé", "a b"] {
            assert!(!is_identifier(bad), "{bad}");
        }
        assert!(is_group_name("late-mlp"));
        assert!(!is_group_name("-x"));
    }

    #[test]
    fn paths_resolve_against_the_recipe_folder() {
        let dir = Path::new("recipes");
        assert_eq!(
            resolve(dir, Path::new("models/base")),
            Path::new("recipes/models/base")
        );
        assert_eq!(
            resolve(dir, Path::new("./models/base")),
            Path::new("recipes/models/base")
        );
        assert_eq!(resolve(dir, Path::new("../m")), Path::new("recipes/../m"));
        assert_eq!(resolve(Path::new(""), Path::new("m")), Path::new("m"));
        assert_eq!(resolve(Path::new(""), Path::new(".")), Path::new("."));
        let abs = if cfg!(windows) {
            r"C:\models\base"
        } else {
            "/models/base"
        };
        assert_eq!(resolve(dir, Path::new(abs)), Path::new(abs));
    }
}

//! mergekit's configuration files, read as reefknot recipes.
//!
//! A YAML file with a top-level `merge_method:` is a mergekit configuration
//! (mergekit 0.1.5's schema). [`convert`] translates it into the text of the reefknot
//! recipe that computes the same merge; [`crate::Recipe::load`] parses that text, so
//! `reefknot merge config.yml` and `reefknot convert config.yml > recipe.yaml` followed
//! by `reefknot merge recipe.yaml` run the same recipe, byte for byte.
//!
//! What mergekit accepts silently but does nothing with (an unknown key, a misspelt
//! parameter, a global parameter under a model, a weight the method ignores) becomes a
//! warning with a caret into the configuration; what reefknot cannot do yet
//! (`passthrough` slices of several sources, `modules:`, slices whose merges differ in
//! form) is an [`ErrorKind::Unsupported`] error. The rules, key by key, are in `docs/mergekit.md`.
//!
//! How the values map (mergekit's `ConfigReader.parameter` order): for a model, its own
//! `parameters`, then the top-level `parameters`, then the method's default. A value
//! given as `{filter, value}` conditions falls through to the next level where no
//! filter matches, which a reefknot recipe expresses as [`crate::Condition`]s whose
//! last entry is the next level's value; a `filter` (a substring of the tensor name)
//! becomes the glob `*filter*`.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use miette::NamedSource;

use crate::error::{closest, list, ErrorKind, RecipeError, RecipeWarning};
use crate::validate::{is_conditions, map_loc, Checker};
use crate::yaml::{parse_yaml, Kind, Node};
use crate::{Loc, Number};

/// A model reference's model and LoRA adapter (`model+lora`, as mergekit names it).
fn split_ref(reference: &str) -> (&str, Option<&str>) {
    match reference.split_once('+') {
        Some((model, lora)) => (model, Some(lora)),
        None => (reference, None),
    }
}

/// The code of the warnings about what mergekit would ignore.
pub const IGNORED: &str = "reefknot::mergekit::ignored";

/// A mergekit configuration translated into a reefknot recipe.
#[derive(Clone, Debug)]
pub struct Converted {
    /// The recipe's YAML text. Its paths are the configuration's, so it resolves them
    /// against the configuration's folder.
    pub recipe: String,
    /// What the configuration holds that mergekit would ignore.
    pub warnings: Vec<RecipeWarning>,
}

/// Whether `source` is a mergekit configuration: a YAML mapping with a `merge_method`
/// key. Text that does not parse is not (the recipe parser reports its syntax).
pub fn is_config(source: &str) -> bool {
    parse_yaml(source).is_ok_and(|root| is_config_root(&root))
}

pub(crate) fn is_config_root(root: &Node) -> bool {
    match &root.kind {
        Kind::Map(entries) => entries
            .iter()
            .any(|(k, _)| matches!(&k.kind, Kind::Str(s) if s == "merge_method")),
        _ => false,
    }
}

/// Translates the mergekit configuration `source` (shown as `name` in diagnostics, read
/// from `path` when it came from a file).
/// Relative model paths resolve against `dir` (the configuration's folder).
pub fn convert(
    source: &str,
    name: &str,
    dir: &Path,
    path: Option<&Path>,
) -> Result<Converted, RecipeError> {
    let shared: Arc<str> = Arc::from(source);
    let root = parse_yaml(source).map_err(|e| RecipeError::finish(vec![e], name, &shared, path))?;
    convert_parsed(source, &shared, &root, name, dir, path)
}

/// [`convert`] of a configuration already parsed (`root`, from `source`, also as
/// `shared` for diagnostics).
pub(crate) fn convert_parsed(
    source: &str,
    shared: &Arc<str>,
    root: &Node,
    name: &str,
    dir: &Path,
    path: Option<&Path>,
) -> Result<Converted, RecipeError> {
    let fail = |errors: Vec<RecipeError>| RecipeError::finish(errors, name, shared, path);
    let named = NamedSource::new(name, Arc::clone(shared)).with_language("yaml");
    let mut t = Translator {
        check: Checker::new(source, Path::new("")),
        dir,
        warnings: Vec::new(),
        named,
        stacked: Vec::new(),
        low_precision: None,
        tokenizer: None,
        chat_template: None,
    };
    let file_name = path
        .and_then(Path::file_name)
        .map_or_else(|| name.to_string(), |f| f.to_string_lossy().into_owned());
    let recipe = t.config(root, &file_name);
    let mut errors = t.check.into_errors();
    match recipe {
        Some(recipe) if errors.is_empty() => {
            let mut warnings = t.warnings;
            warnings.sort_by_key(|w| w.loc().offset);
            Ok(Converted { recipe, warnings })
        }
        _ => {
            if errors.is_empty() {
                errors.push(RecipeError::new(
                    ErrorKind::NotARecipe,
                    "invalid mergekit configuration",
                ));
            }
            errors.sort_by_key(|e| e.loc().map_or(usize::MAX, |l| l.offset));
            Err(fail(errors))
        }
    }
}

// ---------------------------------------------------------------------------
// mergekit's methods and their parameters
// ---------------------------------------------------------------------------

/// A parameter's default; `Required` where mergekit errors without a value.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Default {
    Required,
    Number(f64),
    Bool(bool),
}

/// One parameter a method declares.
#[derive(Clone, Copy, Debug)]
struct Declared {
    name: &'static str,
    default: Default,
}

const fn req(name: &'static str) -> Declared {
    Declared {
        name,
        default: Default::Required,
    }
}

const fn num(name: &'static str, v: f64) -> Declared {
    Declared {
        name,
        default: Default::Number(v),
    }
}

const fn flag(name: &'static str, v: bool) -> Declared {
    Declared {
        name,
        default: Default::Bool(v),
    }
}

/// The sparsification of a generalised-task-arithmetic method.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Sparsifier {
    None,
    Magnitude,
    Random,
    MagnitudeOutliers,
    DellaMagprune,
}

/// How a method computes, as far as the translation cares.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Family {
    /// mergekit's `GeneralizedTaskArithmeticMerge`: `consensus` is the TIES sign vote.
    Gta {
        consensus: bool,
        sparsifier: Sparsifier,
    },
    Linear,
    Slerp,
    Nuslerp,
    Multislerp,
    Karcher,
    ModelStock,
    Sce,
    Ram,
    RamplusTl,
    Nearswap,
    ArceeFusion,
    Passthrough,
}

/// Whether the method needs a `base_model`.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Base {
    Required,
    Optional,
    /// `passthrough`: one model and nothing else.
    None,
}

/// One `merge_method` mergekit 0.1.5 registers.
#[derive(Clone, Copy, Debug)]
pub struct Method {
    /// mergekit's name.
    pub name: &'static str,
    family: Family,
    base: Base,
    /// Parameters looked up without a model (`normalize`, `t`, `lambda`).
    globals: &'static [Declared],
    /// Parameters looked up per model (`weight`, `density`).
    per_model: &'static [Declared],
}

impl Method {
    /// The names of the method's parameters: global ones first, then per-model ones.
    pub fn parameters(&self) -> impl Iterator<Item = &'static str> {
        self.globals
            .iter()
            .chain(self.per_model.iter())
            .map(|d| d.name)
    }

    fn uses_weight(&self) -> bool {
        self.per_model.iter().any(|d| d.name == "weight")
    }
}

const fn gta(
    name: &'static str,
    consensus: bool,
    sparsifier: Sparsifier,
    globals: &'static [Declared],
    per_model: &'static [Declared],
) -> Method {
    let family = Family::Gta {
        consensus,
        sparsifier,
    };
    other(name, family, Base::Required, globals, per_model)
}

const fn other(
    name: &'static str,
    family: Family,
    base: Base,
    globals: &'static [Declared],
    per_model: &'static [Declared],
) -> Method {
    Method {
        name,
        family,
        base,
        globals,
        per_model,
    }
}

const GTA_WD: &[Declared] = &[req("weight"), num("density", 1.0)];
const GTA_WDG: &[Declared] = &[req("weight"), num("density", 1.0), num("gamma", 0.01)];
const GTA_WDE: &[Declared] = &[req("weight"), num("density", 1.0), num("epsilon", 0.15)];

/// `int8_mask`, `normalize`, `rescale`, `lambda` with a method's defaults.
macro_rules! gta_globals {
    ($normalize:expr, $rescale:expr) => {
        &[
            flag("int8_mask", false),
            flag("normalize", $normalize),
            flag("rescale", $rescale),
            num("lambda", 1.0),
        ]
    };
}

/// Every method mergekit 0.1.5 registers, in its registry's order, with the
/// parameters it declares and their defaults (`docs/mergekit.md`).
pub const METHODS: &[Method] = &[
    other(
        "linear",
        Family::Linear,
        Base::Optional,
        &[flag("normalize", true)],
        &[req("weight")],
    ),
    other("slerp", Family::Slerp, Base::Required, &[req("t")], &[]),
    other(
        "nuslerp",
        Family::Nuslerp,
        Base::Optional,
        &[
            flag("nuslerp_row_wise", false),
            flag("nuslerp_flatten", true),
        ],
        &[req("weight")],
    ),
    other(
        "multislerp",
        Family::Multislerp,
        Base::Optional,
        &[flag("normalize_weights", true), num("eps", 1e-8)],
        &[req("weight")],
    ),
    other(
        "karcher",
        Family::Karcher,
        Base::Optional,
        &[num("max_iter", 10.0), num("tol", 1e-5)],
        &[],
    ),
    gta(
        "task_arithmetic",
        false,
        Sparsifier::None,
        gta_globals!(false, false),
        GTA_WD,
    ),
    gta(
        "ties",
        true,
        Sparsifier::Magnitude,
        gta_globals!(true, false),
        GTA_WD,
    ),
    gta(
        "dare_ties",
        true,
        Sparsifier::Random,
        gta_globals!(false, true),
        GTA_WD,
    ),
    gta(
        "dare_linear",
        false,
        Sparsifier::Random,
        gta_globals!(false, true),
        GTA_WD,
    ),
    gta(
        "breadcrumbs",
        false,
        Sparsifier::MagnitudeOutliers,
        gta_globals!(false, false),
        GTA_WDG,
    ),
    gta(
        "breadcrumbs_ties",
        true,
        Sparsifier::MagnitudeOutliers,
        gta_globals!(false, false),
        GTA_WDG,
    ),
    gta(
        "della",
        true,
        Sparsifier::DellaMagprune,
        gta_globals!(true, true),
        GTA_WDE,
    ),
    gta(
        "della_linear",
        false,
        Sparsifier::DellaMagprune,
        gta_globals!(false, true),
        GTA_WDE,
    ),
    other(
        "model_stock",
        Family::ModelStock,
        Base::Required,
        &[flag("filter_wise", false)],
        &[],
    ),
    other(
        "sce",
        Family::Sce,
        Base::Required,
        &[flag("int8_mask", false), num("select_topk", 1.0)],
        &[],
    ),
    other(
        "ram",
        Family::Ram,
        Base::Required,
        &[num("epsilon", 1e-5)],
        &[],
    ),
    other(
        "ramplus_tl",
        Family::RamplusTl,
        Base::Required,
        &[num("r", 0.1), num("alpha", 0.2), num("epsilon", 1e-5)],
        &[],
    ),
    other(
        "nearswap",
        Family::Nearswap,
        Base::Required,
        &[req("t")],
        &[],
    ),
    other(
        "arcee_fusion",
        Family::ArceeFusion,
        Base::Required,
        &[],
        &[],
    ),
    other(
        "passthrough",
        Family::Passthrough,
        Base::None,
        &[],
        &[Declared {
            name: "scale",
            default: Default::Number(1.0),
        }],
    ),
];

/// The method mergekit registers as `name`.
pub fn method(name: &str) -> Option<&'static Method> {
    METHODS.iter().find(|m| m.name == name)
}

/// Every top-level key of mergekit 0.1.5's `MergeConfiguration`.
pub const TOP_LEVEL_KEYS: &[&str] = &[
    "merge_method",
    "base_model",
    "models",
    "slices",
    "modules",
    "parameters",
    "dtype",
    "out_dtype",
    "tokenizer_source",
    "tokenizer",
    "chat_template",
];

/// The keys of an entry of `models:`.
pub const MODEL_KEYS: &[&str] = &["model", "parameters"];

// ---------------------------------------------------------------------------
// values
// ---------------------------------------------------------------------------

/// A parameter value as mergekit reads it.
#[derive(Clone, Debug, PartialEq)]
enum Val {
    Num(f64),
    Grad(Vec<f64>),
    Bool(bool),
    Str(String),
    /// `{filter, value}` entries, first match wins: `(glob, value)`, `None` for every
    /// tensor. Never nested.
    Cond(Vec<(Option<String>, Val)>),
}

impl Val {
    /// Applies `f` to every number (gradient anchors and condition values included).
    fn map_numbers(&self, f: &dyn Fn(f64) -> f64) -> Val {
        match self {
            Val::Num(x) => Val::Num(f(*x)),
            Val::Grad(v) => Val::Grad(v.iter().map(|x| f(*x)).collect()),
            Val::Cond(entries) => Val::Cond(
                entries
                    .iter()
                    .map(|(g, v)| (g.clone(), v.map_numbers(f)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    /// Every number in it.
    fn numbers(&self) -> Vec<f64> {
        match self {
            Val::Num(x) => vec![*x],
            Val::Grad(v) => v.clone(),
            Val::Cond(entries) => entries.iter().flat_map(|(_, v)| v.numbers()).collect(),
            _ => Vec::new(),
        }
    }

    /// As YAML (flow style).
    fn yaml(&self) -> String {
        match self {
            Val::Num(x) => fmt_num(*x),
            Val::Grad(v) => format!(
                "[{}]",
                v.iter().map(|x| fmt_num(*x)).collect::<Vec<_>>().join(", ")
            ),
            Val::Bool(b) => b.to_string(),
            Val::Str(s) => quote(s),
            Val::Cond(entries) => {
                let items: Vec<String> = entries
                    .iter()
                    .map(|(g, v)| match g {
                        Some(g) => format!("{{ match: {}, value: {} }}", quote(g), v.yaml()),
                        None => format!("{{ value: {} }}", v.yaml()),
                    })
                    .collect();
                format!("[{}]", items.join(", "))
            }
        }
    }
}

impl From<Default> for Option<Val> {
    fn from(d: Default) -> Option<Val> {
        match d {
            Default::Number(x) => Some(Val::Num(x)),
            Default::Bool(b) => Some(Val::Bool(b)),
            Default::Required => None,
        }
    }
}

/// A number as the shortest text that reads back as the same `f64`.
fn fmt_num(x: f64) -> String {
    let s = format!("{x}");
    // `1e-8` prints as `0.00000001`: fine for YAML and expressions alike.
    if s == "-0" {
        "0".into()
    } else {
        s
    }
}

/// DARE's drop probability for a density: `1 − d`, rounded to 12 decimals so that
/// `1 − 0.8` reads `0.2` (far below what a float32 merge can tell apart).
fn drop_probability(d: f64) -> f64 {
    let rounded = ((1.0 - d) * 1e12).round() / 1e12;
    if rounded < 1.0 {
        rounded
    } else {
        1.0 - d
    }
}

/// A YAML double-quoted string.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The glob that matches the tensor names containing `filter`, as mergekit's
/// substring test does (`*` and an empty filter match every name).
fn filter_glob(filter: &str) -> Option<String> {
    if filter.is_empty() || filter == "*" {
        return None;
    }
    let mut g = String::from("*");
    for c in filter.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '{' | '}' | '\\') {
            g.push('\\');
        }
        g.push(c);
    }
    g.push('*');
    Some(g)
}

/// A value with where it is written.
#[derive(Clone, Debug)]
struct Given {
    val: Val,
    loc: Loc,
}

/// The value mergekit finds by looking at `levels` in order, then the default: the
/// first plain value, with the conditions met on the way in front of it.
fn resolve(levels: &[Option<&Given>], default: Option<Val>) -> Option<Val> {
    let mut entries: Vec<(Option<String>, Val)> = Vec::new();
    let finish = |mut entries: Vec<(Option<String>, Val)>, last: Val| {
        if entries.is_empty() {
            last
        } else {
            entries.push((None, last));
            Val::Cond(entries)
        }
    };
    for level in levels.iter().flatten() {
        match &level.val {
            Val::Cond(es) => {
                for (glob, v) in es {
                    if glob.is_none() {
                        return Some(finish(entries, v.clone()));
                    }
                    entries.push((glob.clone(), v.clone()));
                }
            }
            plain => return Some(finish(entries, plain.clone())),
        }
    }
    match default {
        Some(d) => Some(finish(entries, d)),
        None if entries.is_empty() => None,
        None => Some(Val::Cond(entries)),
    }
}

// ---------------------------------------------------------------------------
// the translation
// ---------------------------------------------------------------------------

struct Translator<'a> {
    check: Checker<'a>,
    /// The configuration's folder, against which relative model paths resolve.
    dir: &'a Path,
    warnings: Vec<RecipeWarning>,
    named: NamedSource<Arc<str>>,
    /// The slices of a stack of merged slices (empty otherwise).
    stacked: Vec<Stacked>,
    /// A half-precision `dtype` mergekit computes in, not yet warned about.
    low_precision: Option<(&'static str, Loc)>,
    /// The recipe's `tokenizer:` (`base`, `union` or a model), with where the
    /// configuration gives it.
    tokenizer: Option<(String, Loc)>,
    /// The recipe's `chat_template:`, as the configuration gives it.
    chat_template: Option<String>,
}

/// `[a, b]`, two integers.
fn int_pair(node: &Node) -> Option<(i128, i128)> {
    match &node.kind {
        Kind::Seq(items) => match items.as_slice() {
            [Node {
                kind: Kind::Int(a), ..
            }, Node {
                kind: Kind::Int(b), ..
            }] => Some((*a, *b)),
            _ => None,
        },
        _ => None,
    }
}

/// The `model` and `parameters` of a model entry or a slice's source, as read.
#[derive(Default)]
struct EntryFields<'n> {
    model: Option<(String, Loc)>,
    /// Whether a `model` key with a value is there (it may have been invalid).
    seen_model: bool,
    params: Vec<(&'n str, Loc, Given)>,
}

/// The one slice of a `slices:` that is a merge of whole models.
struct Slice<'n> {
    sources: Vec<Entry<'n>>,
    params: Vec<(&'n str, Loc, Given)>,
    base: Option<(String, Loc)>,
}

/// A slice as read: each source with its `layer_range` and where that is written.
struct RawSlice<'n> {
    sources: Vec<(Entry<'n>, i128, i128, Loc)>,
    params: Vec<(&'n str, Loc, Given)>,
    base: Option<(String, Loc)>,
}

/// One slice of a merged stack: input layers `start..end`, with the slice's values
/// of the method's global parameters.
struct Stacked {
    start: usize,
    end: usize,
    params: Vec<(String, Val)>,
    /// Each source's model and first layer (sources may take other layers than the
    /// first's, as many as it does).
    starts: Vec<(String, usize)>,
}

/// One slice of a `passthrough` stack: its source's layers `start..end`.
struct Copied<'n> {
    source: Entry<'n>,
    params: Vec<(&'n str, Loc, Given)>,
    start: usize,
    end: usize,
}

/// What `slices:` is.
enum Sliced<'n> {
    /// A merge of whole models.
    Whole(Slice<'n>),
    /// A stack of merged layer ranges, every slice over the same models: the first
    /// slice's sources and base, each slice's layers and global values.
    Merged(Slice<'n>, Vec<Stacked>),
    /// A stack of copied layer ranges.
    Stack(Vec<Copied<'n>>),
    /// A stack of merged layer ranges whose slices differ in their models, base or
    /// per-model values: each slice as read, with its layers.
    Varied(Vec<(RawSlice<'n>, Stacked)>),
}

/// The keys of a slice.
pub const SLICE_KEYS: &[&str] = &["sources", "base_model", "parameters", "residual_weight"];

/// `first`'s parameters in front of `then`'s: each name's value is looked up in
/// `first`, then in `then` (conditions in `first` fall through to `then`'s value).
fn layered<'n>(
    first: Vec<(&'n str, Loc, Given)>,
    then: Vec<(&'n str, Loc, Given)>,
) -> Vec<(&'n str, Loc, Given)> {
    let mut out = Vec::new();
    for (name, kloc, g) in &first {
        let below = then.iter().find(|(n, _, _)| n == name).map(|(_, _, g)| g);
        let val = resolve(&[Some(g), below], None).unwrap_or_else(|| g.val.clone());
        out.push((*name, *kloc, Given { val, loc: g.loc }));
    }
    for entry in then {
        if !first.iter().any(|(n, _, _)| *n == entry.0) {
            out.push(entry);
        }
    }
    out
}

/// The path from the folder `from` to `to`, both absolute and canonical (`None` when
/// they share no root, or a name is not UTF-8).
fn relative_path(from: &Path, to: &Path) -> Option<std::path::PathBuf> {
    let a: Vec<_> = from.components().collect();
    let b: Vec<_> = to.components().collect();
    let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    if common == 0 {
        return None;
    }
    let mut out = std::path::PathBuf::new();
    for _ in common..a.len() {
        out.push("..");
    }
    for c in &b[common..] {
        out.push(c.as_os_str().to_str()?);
    }
    Some(out)
}

/// `num_hidden_layers` of the model folder `dir`, when it has a readable config.json.
fn num_hidden_layers(dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json.get("num_hidden_layers")
        .or_else(|| json.get("text_config")?.get("num_hidden_layers"))
        .and_then(serde_json::Value::as_u64)
}

/// One entry of `models:`.
#[derive(Clone)]
struct Entry<'n> {
    model: String,
    loc: Loc,
    params: Vec<(&'n str, Loc, Given)>,
}

impl Entry<'_> {
    fn param(&self, name: &str) -> Option<&Given> {
        self.params
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, _, g)| g)
    }
}

impl<'a> Translator<'a> {
    fn error(&mut self, kind: ErrorKind, loc: Loc, message: String, label: &str) -> RecipeError {
        RecipeError::new(kind, message).label(loc, label)
    }

    /// Records an error of `kind` at `loc`.
    fn reject(&mut self, kind: ErrorKind, loc: Loc, message: String, label: &str) {
        let e = self.error(kind, loc, message, label);
        self.check.push(e);
    }

    fn unsupported(&mut self, loc: Loc, message: String, label: &str, help: &str) {
        let e = self
            .error(ErrorKind::Unsupported, loc, message, label)
            .help(help);
        self.check.push(e);
    }

    fn warn(&mut self, loc: Loc, message: String, label: &str, help: Option<String>) {
        let mut w = RecipeWarning::in_source(self.named.clone(), loc, message, label).code(IGNORED);
        if let Some(h) = help {
            w = w.help(h);
        }
        self.warnings.push(w);
    }

    /// The top-level mapping's entries, with duplicate keys reported.
    fn entries<'n>(&mut self, node: &'n Node, what: &str) -> Option<Vec<(&'n str, &'n Node, Loc)>> {
        let Kind::Map(map) = &node.kind else {
            let e = self.check.wrong_type(node, "a mapping", what);
            self.check.push(e);
            return None;
        };
        let mut out: Vec<(&str, &Node, Loc)> = Vec::new();
        for (k, v) in map {
            let Kind::Str(key) = &k.kind else {
                let e = self
                    .check
                    .wrong_type(k, "a string key", &format!("a key of {what}"));
                self.check.push(e);
                continue;
            };
            if let Some((_, _, first)) = out.iter().find(|(n, _, _)| n == key) {
                let e = RecipeError::new(
                    ErrorKind::DuplicateKey,
                    format!("`{key}` is given twice in {what}"),
                )
                .label(k.loc, "given again here")
                .label(*first, "first given here");
                self.check.push(e);
                continue;
            }
            out.push((key.as_str(), v, k.loc));
        }
        Some(out)
    }

    /// A model reference: a path or a Hugging Face repo id (`org/name`, `org/name@rev`,
    /// resolved as recipe paths are), with a LoRA adapter applied as mergekit writes it
    /// (`model+lora`, or the dict form `{model, lora}`). The result is the reference
    /// as mergekit names it (`model` or `model+lora`); [`split_ref`] takes it apart.
    fn model_ref(&mut self, node: &Node, what: &str) -> Option<String> {
        if let Kind::Map(entries) = &node.kind {
            let key = |k: &str| {
                entries
                    .iter()
                    .find(|(n, _)| matches!(&n.kind, Kind::Str(s) if s == k))
                    .map(|(_, v)| v)
            };
            let Some(model) = key("model") else {
                self.reject(
                    ErrorKind::MissingKey,
                    map_loc(node),
                    format!("{what} is mergekit's dict form (`{{model, lora}}`) without a `model`"),
                    "no `model`",
                );
                return None;
            };
            let model = self.model_ref(model, what)?;
            let lora = match key("lora").filter(|v| !matches!(v.kind, Kind::Null)) {
                None => return Some(model),
                Some(v) => self.adapter_ref(v, what)?,
            };
            if model.contains('+') {
                self.unsupported(
                    node.loc,
                    format!("{what} gives a LoRA adapter twice (`+` in `model` and a `lora`)"),
                    "two adapters on one model",
                    "merge one adapter into its model first and name that folder",
                );
                return None;
            }
            return Some(format!("{model}+{lora}"));
        }
        let text = self
            .check
            .string(node, "a model path or repo id (a string)", what)?;
        let text = text.trim();
        if text.is_empty() {
            self.reject(
                ErrorKind::InvalidValue,
                node.loc,
                format!("{what} is empty"),
                "expected a path",
            );
            return None;
        }
        if let Some((model, lora)) = text.split_once('+') {
            let (model, lora) = (model.trim(), lora.trim());
            if model.is_empty() || lora.is_empty() || lora.contains('+') {
                self.reject(
                    ErrorKind::InvalidValue,
                    node.loc,
                    format!("{what} is not `model+lora` (one model, one LoRA adapter)"),
                    "expected `model+lora`",
                );
                return None;
            }
            return Some(format!("{model}+{lora}"));
        }
        Some(text.to_string())
    }

    /// The `lora` of a model reference's dict form: a path or repo id.
    fn adapter_ref(&mut self, node: &Node, what: &str) -> Option<String> {
        let text = self
            .check
            .string(node, "a LoRA adapter's path or repo id (a string)", what)?
            .trim();
        if text.is_empty() || text.contains('+') {
            self.reject(
                ErrorKind::InvalidValue,
                node.loc,
                format!("the `lora` of {what} is not one adapter's path"),
                "expected a path",
            );
            return None;
        }
        Some(text.to_string())
    }

    /// A parameter value: a scalar, a gradient or `{filter, value}` conditions.
    fn value(&mut self, node: &Node, what: &str, nested: bool) -> Option<Val> {
        match &node.kind {
            Kind::Bool(b) => Some(Val::Bool(*b)),
            Kind::Str(s) => Some(Val::Str(s.clone())),
            Kind::Int(_) | Kind::Float(_) => match self.check.number(node, what)? {
                Number::Scalar(x) => Some(Val::Num(x)),
                Number::Gradient(v) => Some(Val::Grad(v)),
            },
            Kind::Seq(items) if is_conditions(items) => {
                if nested {
                    let e = self.check.wrong_type(
                        node,
                        "a number, a gradient, a string or a boolean",
                        &format!("the value of a condition of {what}"),
                    );
                    self.check.push(e);
                    return None;
                }
                self.conditions(items, what)
            }
            Kind::Seq(items) if items.iter().all(|n| matches!(n.kind, Kind::Str(_))) => {
                self.unsupported(
                    node.loc,
                    format!("{what} is a list of strings, mergekit's step function over depth"),
                    "a step function",
                    "reefknot's gradients are numbers; give one value, or overrides by `layers:` in a reefknot recipe",
                );
                None
            }
            Kind::Seq(_) => match self.check.number(node, what)? {
                Number::Scalar(x) => Some(Val::Num(x)),
                Number::Gradient(v) => Some(Val::Grad(v)),
            },
            _ => {
                let e = self.check.wrong_type(
                    node,
                    "a number, a gradient, a string, a boolean or a list of {filter, value}",
                    what,
                );
                self.check.push(e);
                None
            }
        }
    }

    fn conditions(&mut self, items: &[Node], what: &str) -> Option<Val> {
        let mut out = Vec::new();
        let mut ok = true;
        for item in items {
            let Some(fields) = self.entries(item, &format!("a condition of {what}")) else {
                ok = false;
                continue;
            };
            let mut filter = None;
            let mut value = None;
            for (key, v, kloc) in fields {
                match key {
                    "filter" => match &v.kind {
                        Kind::Str(s) => filter = Some(s.clone()),
                        Kind::Null => {}
                        _ => {
                            let e = self.check.wrong_type(v, "a string", "`filter`");
                            self.check.push(e);
                            ok = false;
                        }
                    },
                    "value" => value = Some(v),
                    other => self.warn(
                        kloc,
                        format!("mergekit ignores the key `{other}` in a condition"),
                        "ignored",
                        Some(closest(other, ["filter", "value"]).map_or_else(
                            || "a condition has `filter` and `value`".to_string(),
                            |c| format!("did you mean `{c}`?"),
                        )),
                    ),
                }
            }
            let Some(value) = value.filter(|v| !matches!(v.kind, Kind::Null)) else {
                self.reject(
                    ErrorKind::MissingKey,
                    map_loc(item),
                    format!("a condition of {what} has no `value`"),
                    "this has no `value`",
                );
                ok = false;
                continue;
            };
            match self.value(value, what, true) {
                Some(v) => out.push((filter.as_deref().and_then(filter_glob), v)),
                None => ok = false,
            }
        }
        ok.then_some(Val::Cond(out))
    }

    /// A `parameters:` mapping.
    fn params<'n>(&mut self, node: &'n Node, what: &str) -> Vec<(&'n str, Loc, Given)> {
        if matches!(node.kind, Kind::Null) {
            return Vec::new();
        }
        let Some(fields) = self.entries(node, what) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (key, v, kloc) in fields {
            if matches!(v.kind, Kind::Null) {
                continue;
            }
            // A value that is refused (already reported) stands in as 1, so that it is
            // not reported again as missing.
            let val = self
                .value(v, &format!("`{key}`"), false)
                .unwrap_or(Val::Num(1.0));
            out.push((key, kloc, Given { val, loc: v.loc }));
        }
        out
    }

    fn dtype(&mut self, node: &Node, key: &str) -> Option<&'static str> {
        let text = self
            .check
            .string(node, "a dtype name", &format!("`{key}`"))?;
        let bare = text.strip_prefix("torch.").unwrap_or(text);
        match bare {
            "bfloat16" => Some("bfloat16"),
            "float16" => Some("float16"),
            "float32" => Some("float32"),
            "int64" => {
                self.unsupported(
                    node.loc,
                    format!("`{key}: {text}`: reefknot writes floating-point outputs"),
                    "an integer dtype",
                    "use bfloat16, float16 or float32",
                );
                None
            }
            _ => {
                let hint = closest(bare, ["bfloat16", "float16", "float32", "int64"]);
                let e = self
                    .error(
                        ErrorKind::InvalidDtype,
                        node.loc,
                        format!("`{key}: {text}` is not a dtype mergekit accepts"),
                        "unknown dtype",
                    )
                    .help(match hint {
                        Some(h) => format!("did you mean `{h}`? mergekit accepts bfloat16, float16, float32 and int64, optionally as `torch.NAME`"),
                        None => "mergekit accepts bfloat16, float16, float32 and int64, optionally as `torch.NAME`".into(),
                    });
                self.check.push(e);
                None
            }
        }
    }

    /// The whole configuration; `None` when something was reported as an error.
    fn config(&mut self, root: &Node, file_name: &str) -> Option<String> {
        let fields = self.entries(root, "the mergekit configuration")?;
        let get = |k: &str| {
            fields
                .iter()
                .find(|(n, _, _)| *n == k)
                .map(|(_, v, l)| (*v, *l))
                .filter(|(v, _)| !matches!(v.kind, Kind::Null))
        };

        // Keys mergekit ignores, and keys reefknot does not do yet.
        for (key, _, kloc) in &fields {
            if !TOP_LEVEL_KEYS.contains(key) {
                let help = closest(key, TOP_LEVEL_KEYS.iter().copied()).map_or_else(
                    || format!("mergekit's keys are {}", list(TOP_LEVEL_KEYS)),
                    |c| format!("did you mean `{c}`?"),
                );
                self.warn(
                    *kloc,
                    format!("mergekit ignores the key `{key}`"),
                    "unknown key",
                    Some(help),
                );
            }
        }
        if let (Some(_), Some((_, kloc))) = (get("models"), get("slices")) {
            let e = self
                .error(
                    ErrorKind::InvalidValue,
                    kloc,
                    "`models` and `slices` are both given".into(),
                    "choose one",
                )
                .help("mergekit takes exactly one of `models`, `slices` and `modules`");
            self.check.push(e);
        }
        if let Some((_, kloc)) = get("modules") {
            self.unsupported(
                kloc,
                "`modules:` (multi-module architectures) is not supported yet".into(),
                "modules",
                "write the merge of a single-module model with `models:`",
            );
        }
        if let Some((v, _)) = get("tokenizer_source") {
            self.tokenizer = self.tokenizer_source(v, "`tokenizer_source`");
        }
        if let Some((v, _)) = get("tokenizer") {
            self.tokenizer(v);
        }
        if let (Some(_), Some((_, kloc))) = (get("tokenizer_source"), get("tokenizer")) {
            self.reject(
                ErrorKind::InvalidValue,
                kloc,
                "`tokenizer_source` and `tokenizer` are both given".into(),
                "choose one",
            );
        }
        if let Some((v, _)) = get("chat_template") {
            if let Some(text) = self.check.string(
                v,
                "a template's name or a Jinja template",
                "`chat_template`",
            ) {
                self.chat_template = Some(text.to_string());
            }
        }

        // The method.
        let Some((method_node, _)) = get("merge_method") else {
            self.reject(
                ErrorKind::MissingKey,
                root.loc,
                "`merge_method` is empty".into(),
                "no method",
            );
            return None;
        };
        let method_name = self
            .check
            .string(method_node, "a method name", "`merge_method`")?;
        let Some(method) = method(method_name) else {
            let names = METHODS.iter().map(|m| m.name);
            let help = closest(method_name, names.clone()).map_or_else(
                || {
                    format!(
                        "mergekit 0.1.5's methods are {}",
                        list(&names.collect::<Vec<_>>())
                    )
                },
                |c| format!("did you mean `{c}`?"),
            );
            let e = self
                .error(
                    ErrorKind::InvalidValue,
                    method_node.loc,
                    format!("mergekit has no merge method `{method_name}`"),
                    "unknown method",
                )
                .help(help);
            self.check.push(e);
            return None;
        };

        // dtypes: reefknot computes in float32 and writes `out_dtype or dtype`.
        let dtype = get("dtype").and_then(|(v, _)| self.dtype(v, "dtype").map(|d| (d, v.loc)));
        let out_dtype = get("out_dtype").and_then(|(v, _)| self.dtype(v, "out_dtype"));
        if let Some((d @ ("bfloat16" | "float16"), loc)) = dtype {
            self.low_precision = Some((d, loc));
            // `passthrough` computes only where it scales (it says so then).
            if method.family != Family::Passthrough {
                self.warn_low_precision();
            }
        }
        let output_dtype = out_dtype.or(dtype.map(|(d, _)| d));

        let top = match get("parameters") {
            Some((v, _)) => self.params(v, "`parameters`"),
            None => Vec::new(),
        };
        let mut top = top;
        let mut base = match get("base_model") {
            Some((v, _)) => self.model_ref(v, "`base_model`").map(|m| (m, v.loc)),
            None => None,
        };
        let mut entries: Vec<Entry> = Vec::new();
        if let (Some((v, _)), None) = (get("slices"), get("models")) {
            let slice = match self.slices(v, method)? {
                Sliced::Whole(slice) => slice,
                Sliced::Merged(slice, stacked) => {
                    self.stacked = stacked;
                    slice
                }
                Sliced::Varied(slices) => {
                    if get("base_model").is_some() && base.is_none() {
                        return None;
                    }
                    return self.varied_recipe(
                        method,
                        base.as_ref(),
                        &top,
                        &slices,
                        output_dtype,
                        file_name,
                    );
                }
                Sliced::Stack(stack) => {
                    let sources: Vec<Entry> = stack
                        .iter()
                        .map(|c| Entry {
                            model: c.source.model.clone(),
                            loc: c.source.loc,
                            params: c
                                .source
                                .params
                                .iter()
                                .chain(&c.params)
                                .map(|(n, l, g)| (*n, *l, g.clone()))
                                .collect(),
                        })
                        .collect();
                    self.check_names(method, &top, &sources);
                    if let Some((_, loc)) = &base {
                        self.warn(
                            *loc,
                            "`passthrough` copies the slices' sources: mergekit never reads `base_model`".into(),
                            "never read",
                            None,
                        );
                    }
                    return self.stack_recipe(&stack, &top, output_dtype, file_name);
                }
            };
            if let Some(b) = slice.base {
                base = Some(b);
            }
            // The slice's parameters come before the top-level ones (mergekit's
            // order), falling through to them where their conditions match nothing.
            top = layered(slice.params, top);
            entries = slice.sources;
        }
        match get("models") {
            Some((v, _)) => {
                let Kind::Seq(items) = &v.kind else {
                    let e = self.check.wrong_type(v, "a list of models", "`models`");
                    self.check.push(e);
                    return None;
                };
                for (i, item) in items.iter().enumerate() {
                    if let Some(e) = self.entry(item, i) {
                        entries.push(e);
                    }
                }
                if entries.len() != items.len() {
                    return None;
                }
            }
            None if get("slices").is_some() && !entries.is_empty() => {}
            None if get("slices").is_some() || get("modules").is_some() => return None,
            None => {
                self.reject(
                    ErrorKind::MissingKey,
                    map_loc(root),
                    "the configuration has no `models:`".into(),
                    "no models",
                );
                return None;
            }
        }
        if entries.is_empty() {
            self.reject(
                ErrorKind::NoModels,
                get("models").map_or(root.loc, |(v, _)| v.loc),
                "`models:` is empty".into(),
                "no models",
            );
            return None;
        }
        if get("base_model").is_some() && base.is_none() {
            return None;
        }
        let entries = self.unique(entries, "");
        self.check_names(method, &top, &entries);
        self.translate(method, base, &entries, &top, output_dtype, file_name)
    }

    /// `slices:`. One slice whose sources all take every layer is the same merge as
    /// `models:` (a gradient's depth is the slice's, which is then the model's). With
    /// `passthrough`, slices of one source each stack layer ranges (a frankenmerge):
    /// a recipe with `slices:`. Other stacks are not supported yet.
    fn slices<'n>(&mut self, node: &'n Node, method: &Method) -> Option<Sliced<'n>> {
        let Kind::Seq(items) = &node.kind else {
            let e = self.check.wrong_type(node, "a list of slices", "`slices`");
            self.check.push(e);
            return None;
        };
        if items.is_empty() {
            self.reject(
                ErrorKind::NoModels,
                node.loc,
                "`slices` is empty".into(),
                "no slices",
            );
            return None;
        }
        let errors_before = self.check.error_count();
        let raw: Vec<RawSlice> = items.iter().filter_map(|s| self.slice(s)).collect();
        if raw.len() != items.len() || self.check.error_count() > errors_before {
            return None;
        }
        if method.name == "passthrough" {
            return self.stack(raw).map(Sliced::Stack);
        }
        // One slice over every layer of its models (as far as a local config.json
        // tells: the first local source's) is a merge of whole models.
        let layers = |e: &Entry| {
            let here = Path::new(&e.model);
            num_hidden_layers(here).or_else(|| num_hidden_layers(&self.dir.join(here)))
        };
        let known = raw[0].sources.iter().find_map(|(e, ..)| layers(e));
        let whole = raw.len() == 1
            && raw[0]
                .sources
                .iter()
                .all(|(_, a, b, _)| *a == 0 && *b > 0 && known.is_none_or(|n| n == *b as u64));
        if !whole {
            return self.merged_stack(raw, method);
        }
        let slice = raw.into_iter().next().expect("one slice");
        let (_, _, b, rloc) = slice.sources[0];
        if known.is_none() {
            self.warn(
                rloc,
                format!("cannot check that `[0, {b}]` is every layer: no source is a local folder with a config.json"),
                "unchecked",
                Some(format!("reefknot merges every layer of the models; mergekit merges layers 0 to {}", b - 1)),
            );
        }
        Some(Sliced::Whole(Slice {
            sources: slice.sources.into_iter().map(|(e, ..)| e).collect(),
            params: slice.params,
            base: slice.base,
        }))
    }

    /// Slices that each merge the same models (in the same order, with the same
    /// per-model values and base), differing at most in the method's global numbers:
    /// a recipe with merged `slices:` that hold those values in their `params`. Other
    /// stacks ([`Sliced::Varied`]) give each slice its own `base` and `models`.
    fn merged_stack<'n>(&mut self, raw: Vec<RawSlice<'n>>, method: &Method) -> Option<Sliced<'n>> {
        let first_models: Vec<&str> = raw[0]
            .sources
            .iter()
            .map(|(e, ..)| e.model.as_str())
            .collect();
        let same_params = |a: &Entry, b: &Entry| {
            a.params.len() == b.params.len()
                && a.params
                    .iter()
                    .zip(&b.params)
                    .all(|(x, y)| x.0 == y.0 && x.2.val == y.2.val)
        };
        let global_number = |name: &str, g: &Given| {
            method.globals.iter().any(|d| d.name == name)
                && !matches!(g.val, Val::Bool(_) | Val::Str(_))
                && !matches!(&g.val, Val::Cond(es) if es.iter().any(|(_, v)| matches!(v, Val::Bool(_) | Val::Str(_))))
        };
        let varied = raw.iter().any(|slice| {
            let models: Vec<&str> = slice
                .sources
                .iter()
                .map(|(e, ..)| e.model.as_str())
                .collect();
            models != first_models
                || slice.base.as_ref().map(|b| &b.0) != raw[0].base.as_ref().map(|b| &b.0)
                || slice
                    .sources
                    .iter()
                    .zip(&raw[0].sources)
                    .any(|((x, ..), (y, ..))| !same_params(x, y))
                || slice.params.iter().any(|(n, _, g)| !global_number(n, g))
        });
        let mut stacked = Vec::with_capacity(raw.len());
        for slice in &raw {
            let (_, a, b, rloc) = &slice.sources[0];
            if let Some((_, x, y, loc)) = slice.sources.iter().find(|(_, x, y, _)| y - x != b - a) {
                self.reject(
                    ErrorKind::InvalidValue,
                    *loc,
                    format!("the sources of a slice take different numbers of layers ([{a}, {b}] and [{x}, {y}])"),
                    "another number of layers",
                );
                return None;
            }
            if let Some((_, x, y, loc)) = slice
                .sources
                .iter()
                .find(|(_, x, y, _)| *x < 0 || y < x || usize::try_from(*y).is_err())
            {
                let (message, label) = if *x < 0 || y < x {
                    (
                        format!("`layer_range: [{x}, {y}]` is not a range of layers"),
                        "not a range",
                    )
                } else {
                    (
                        format!("`layer_range: [{x}, {y}]` is too large"),
                        "too large",
                    )
                };
                self.reject(ErrorKind::InvalidValue, *loc, message, label);
                return None;
            }
            if *a < 0 || b < a {
                self.reject(
                    ErrorKind::InvalidValue,
                    *rloc,
                    format!("`layer_range: [{a}, {b}]` is not a range of layers"),
                    "not a range",
                );
                return None;
            }
            let (Ok(start), Ok(end)) = (usize::try_from(*a), usize::try_from(*b)) else {
                self.reject(
                    ErrorKind::InvalidValue,
                    *rloc,
                    format!("`layer_range: [{a}, {b}]` is too large"),
                    "too large",
                );
                return None;
            };
            let params = slice
                .params
                .iter()
                .map(|(name, _, g)| (name.to_string(), g.val.clone()))
                .collect();
            let starts = slice
                .sources
                .iter()
                .map(|(e, x, ..)| (e.model.clone(), usize::try_from(*x).unwrap_or(0)))
                .collect();
            stacked.push(Stacked {
                start,
                end,
                params,
                starts,
            });
        }
        if varied {
            return Some(Sliced::Varied(raw.into_iter().zip(stacked).collect()));
        }
        let first = raw.into_iter().next().expect("a slice");
        Some(Sliced::Merged(
            Slice {
                sources: first.sources.into_iter().map(|(e, ..)| e).collect(),
                params: Vec::new(),
                base: first.base,
            },
            stacked,
        ))
    }

    /// Warns, once, that mergekit computes in the configuration's half-precision
    /// `dtype` where reefknot computes in float32.
    fn warn_low_precision(&mut self) {
        if let Some((d, loc)) = self.low_precision.take() {
            self.warn(
                loc,
                format!("reefknot computes in float32 where mergekit computes in `{d}`"),
                "computed in float32",
                Some(format!(
                    "the output is written in {d}, rounded once from float32; mergekit rounds \
                     every step, so values can differ from its by a {d} rounding"
                )),
            );
        }
    }

    /// One entry of `slices:`, as read.
    fn slice<'n>(&mut self, slice: &'n Node) -> Option<RawSlice<'n>> {
        let errors_before = self.check.error_count();
        let fields = self.entries(slice, "a slice")?;
        let mut out = RawSlice {
            sources: Vec::new(),
            params: Vec::new(),
            base: None,
        };
        let mut sources = None;
        for (key, v, kloc) in fields {
            match key {
                "sources" => sources = Some(v),
                "base_model" => {
                    out.base = self
                        .model_ref(v, "the slice's `base_model`")
                        .map(|m| (m, v.loc))
                }
                "parameters" => out.params = self.params(v, "the slice's `parameters`"),
                "residual_weight" => self.warn(
                    kloc,
                    "mergekit reads `residual_weight` and never uses it".into(),
                    "never used",
                    None,
                ),
                other => self.warn(
                    kloc,
                    format!("mergekit ignores the key `{other}` in a slice"),
                    "unknown key",
                    Some(closest(other, SLICE_KEYS.iter().copied()).map_or_else(
                        || format!("a slice has {}", list(SLICE_KEYS)),
                        |c| format!("did you mean `{c}`?"),
                    )),
                ),
            }
        }
        let Some(sources) = sources else {
            self.reject(
                ErrorKind::MissingKey,
                map_loc(slice),
                "the slice has no `sources`".into(),
                "no sources",
            );
            return None;
        };
        let Kind::Seq(items) = &sources.kind else {
            let e = self
                .check
                .wrong_type(sources, "a list of sources", "`sources`");
            self.check.push(e);
            return None;
        };
        if items.is_empty() {
            self.reject(
                ErrorKind::NoModels,
                sources.loc,
                "the slice's `sources` is empty".into(),
                "no sources",
            );
            return None;
        }
        for (i, item) in items.iter().enumerate() {
            let what = format!("source {}", i + 1);
            let Some(fields) = self.entries(item, &format!("a slice's {what}")) else {
                continue;
            };
            let mut entry = EntryFields::default();
            let mut this_range = None;
            for (key, v, kloc) in fields {
                match key {
                    "model" | "parameters" => self.entry_field(&mut entry, key, v, &what),
                    "layer_range" => match int_pair(v) {
                        Some((a, b)) => this_range = Some((a, b, v.loc)),
                        None => {
                            let e = self.check.wrong_type(
                                v,
                                "two integers `[start, end]`",
                                "`layer_range`",
                            );
                            self.check.push(e);
                        }
                    },
                    other => self.warn(
                        kloc,
                        format!("mergekit ignores the key `{other}` in a source"),
                        "unknown key",
                        Some("a source has `model`, `layer_range` and `parameters`".into()),
                    ),
                }
            }
            let Some(entry) = self.finish_entry(entry, item, &what) else {
                continue;
            };
            let Some((a, b, rloc)) = this_range else {
                self.reject(
                    ErrorKind::MissingKey,
                    entry.loc,
                    format!("{what} has no `layer_range`"),
                    "no layer_range",
                );
                continue;
            };
            out.sources.push((entry, a, b, rloc));
        }
        (self.check.error_count() == errors_before).then_some(out)
    }

    /// A `passthrough` stack: every slice one source, copied (times its `scale`).
    fn stack<'n>(&mut self, raw: Vec<RawSlice<'n>>) -> Option<Vec<Copied<'n>>> {
        let mut out = Vec::with_capacity(raw.len());
        for slice in raw {
            if slice.sources.len() != 1 {
                let loc = slice.sources[1].0.loc;
                self.reject(
                    ErrorKind::InvalidValue,
                    loc,
                    format!(
                        "`passthrough` takes exactly one source per slice, but this slice has {}",
                        slice.sources.len()
                    ),
                    "a second source",
                );
                continue;
            }
            if let Some((_, loc)) = &slice.base {
                self.warn(
                    *loc,
                    "`passthrough` copies its one source: mergekit never reads the slice's `base_model`".into(),
                    "never read",
                    None,
                );
            }
            let (source, a, b, rloc) = slice.sources.into_iter().next().expect("one source");
            if a < 0 || b < a {
                self.reject(
                    ErrorKind::InvalidValue,
                    rloc,
                    format!("`layer_range: [{a}, {b}]` is not a range of layers"),
                    "not a range",
                );
                continue;
            }
            let (Ok(start), Ok(end)) = (usize::try_from(a), usize::try_from(b)) else {
                self.reject(
                    ErrorKind::InvalidValue,
                    rloc,
                    format!("`layer_range: [{a}, {b}]` is too large"),
                    "too large",
                );
                continue;
            };
            out.push(Copied {
                source,
                params: slice.params,
                start,
                end,
            });
        }
        (out.len() == out.capacity()).then_some(out)
    }

    /// The recipe of a `passthrough` stack: the first slice's model is the base, the
    /// other models in the order they first appear; each slice copies its model's
    /// layers, scaled by its `scale` (the source's, the slice's, the top level's).
    fn stack_recipe(
        &mut self,
        stack: &[Copied],
        top: &[(&str, Loc, Given)],
        dtype: Option<&str>,
        file_name: &str,
    ) -> Option<String> {
        let base = stack[0].source.model.clone();
        let mut models: Vec<&str> = Vec::new();
        for c in stack {
            if c.source.model != base && !models.contains(&c.source.model.as_str()) {
                models.push(&c.source.model);
            }
        }
        let top_get = |name: &str| top.iter().find(|(n, _, _)| *n == name).map(|(_, _, g)| g);
        let file_name: String = file_name
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# The mergekit configuration {file_name} (merge_method: passthrough) as a reefknot\n\
             # recipe, written by `reefknot convert`. Relative paths resolve against the\n\
             # configuration's folder."
        );
        self.write_model(&mut out, &base, "base", "base_lora");
        out.push_str("models:\n");
        if models.is_empty() {
            // Every slice is the base's: it stands in as the one model the recipe needs.
            self.write_model(&mut out, &base, "  - path", "    lora");
        }
        for m in &models {
            self.write_model(&mut out, m, "  - path", "    lora");
        }
        out.push_str("merge: passthrough\nslices:\n");
        for c in stack {
            let from = if c.source.model == base {
                "base".to_string()
            } else {
                quote(&self.local(split_ref(&c.source.model).0))
            };
            let _ = writeln!(out, "  - from: {from}\n    layers: {}..{}", c.start, c.end);
            let slice_get = |name: &str| {
                c.params
                    .iter()
                    .find(|(n, _, _)| *n == name)
                    .map(|(_, _, g)| g)
            };
            let levels = [
                c.source.param("scale"),
                slice_get("scale"),
                top_get("scale"),
            ];
            match resolve(&levels, None) {
                None | Some(Val::Num(1.0)) => {}
                Some(v @ (Val::Num(_) | Val::Grad(_) | Val::Cond(_))) => {
                    self.warn_low_precision();
                    let _ = writeln!(out, "    scale: {}", v.yaml());
                }
                Some(v) => {
                    let loc = levels
                        .iter()
                        .flatten()
                        .next()
                        .map_or(c.source.loc, |g| g.loc);
                    let e = self.error(
                        ErrorKind::WrongType,
                        loc,
                        format!(
                            "`scale` must be a number, a gradient or conditions, but this is {}",
                            describe(&v)
                        ),
                        "expected a number",
                    );
                    self.check.push(e);
                    return None;
                }
            }
        }
        self.write_tokenizer(&mut out);
        if let Some(d) = dtype {
            let _ = writeln!(out, "dtype: {d}");
        }
        Some(out)
    }

    /// `tokenizer_source` (or `tokenizer.source`): `union`, `base` or a model.
    fn tokenizer_source(&mut self, v: &Node, what: &str) -> Option<(String, Loc)> {
        match &v.kind {
            Kind::Str(s) if s == "base" || s == "union" => Some((s.clone(), v.loc)),
            Kind::Str(_) | Kind::Map(_) => {
                let model = self.model_ref(v, what)?;
                let (path, lora) = split_ref(&model);
                if lora.is_some() {
                    self.unsupported(
                        v.loc,
                        format!("{what} names a model with a LoRA adapter"),
                        "a tokenizer with an adapter",
                        "name the model alone: an adapter does not change its tokenizer",
                    );
                    return None;
                }
                Some((quote(&self.local(path)), v.loc))
            }
            _ => {
                let e = self.check.wrong_type(v, "a string", what);
                self.check.push(e);
                None
            }
        }
    }

    fn tokenizer(&mut self, v: &Node) {
        let Some(fields) = self.entries(v, "`tokenizer`") else {
            return;
        };
        // mergekit's default source is the union.
        let mut source = Some(("union".to_string(), v.loc));
        let mut pad = None;
        let mut tokens: Option<Vec<String>> = Some(Vec::new());
        for (key, val, kloc) in &fields {
            match *key {
                "source" => source = self.tokenizer_source(val, "`tokenizer.source`"),
                "pad_to_multiple_of" => match &val.kind {
                    Kind::Int(i) if *i > 0 => pad = Some(*i),
                    _ => {
                        let e = self.check.wrong_type(
                            val,
                            "a positive integer",
                            "`tokenizer.pad_to_multiple_of`",
                        );
                        self.check.push(e);
                    }
                },
                "tokens" => tokens = self.token_rows(val),
                other => self.warn(
                    *kloc,
                    format!("mergekit ignores the key `{other}` in `tokenizer`"),
                    "unknown key",
                    Some("`tokenizer` has `source`, `tokens` and `pad_to_multiple_of`".into()),
                ),
            }
        }
        let (Some((source, loc)), Some(tokens)) = (source, tokens) else {
            return;
        };
        self.tokenizer = Some(if tokens.is_empty() {
            match pad {
                Some(m) => (
                    format!("{{ source: {source}, pad_to_multiple_of: {m} }}"),
                    loc,
                ),
                None => (source, loc),
            }
        } else {
            let mut t = format!("\n  source: {source}\n");
            if let Some(m) = pad {
                let _ = writeln!(t, "  pad_to_multiple_of: {m}");
            }
            t.push_str("  tokens:");
            for line in tokens {
                t.push_str("\n    ");
                t.push_str(&line);
            }
            (t, loc)
        });
    }

    /// `tokenizer.tokens`: each token's row as a line of the recipe's `tokens:`
    /// (`"TOKEN": { source: ..., force: true }`); `None` after an error.
    fn token_rows(&mut self, v: &Node) -> Option<Vec<String>> {
        let entries = self.entries(v, "`tokenizer.tokens`")?;
        let mut out = Vec::with_capacity(entries.len());
        let mut ok = true;
        for (token, cfg, kloc) in entries {
            let Some(fields) = self.entries(cfg, "a token's embedding") else {
                ok = false;
                continue;
            };
            let mut source = None;
            let mut force = false;
            for (key, val, loc) in &fields {
                match *key {
                    "source" => source = Some(val),
                    "force" => match &val.kind {
                        Kind::Bool(b) => force = *b,
                        _ => {
                            let e = self.check.wrong_type(val, "true or false", "`force`");
                            self.check.push(e);
                            ok = false;
                        }
                    },
                    other => self.warn(
                        *loc,
                        format!("mergekit ignores the key `{other}` in a token's embedding"),
                        "unknown key",
                        Some("a token's embedding has `source` and `force`".into()),
                    ),
                }
            }
            let Some(source) = source.filter(|s| !matches!(s.kind, Kind::Null)) else {
                self.reject(
                    ErrorKind::MissingKey,
                    kloc,
                    format!(
                        "`{token}` has no `source`: mergekit fails on it (NotImplementedError)"
                    ),
                    "no source",
                );
                ok = false;
                continue;
            };
            let Some(text) = self.token_source(source) else {
                ok = false;
                continue;
            };
            let force = if force { ", force: true" } else { "" };
            out.push(format!("{}: {{ source: {text}{force} }}", quote(token)));
        }
        ok.then_some(out)
    }

    /// A token embedding's `source`: a model, `{kind: zero}`, or `{kind: model_token,
    /// model, token | token_id}`, as the recipe writes it.
    fn token_source(&mut self, v: &Node) -> Option<String> {
        let model = |t: &mut Self, n: &Node| -> Option<String> {
            let m = t.model_ref(n, "a token's `source`")?;
            let (path, lora) = split_ref(&m);
            if lora.is_some() {
                t.unsupported(
                    n.loc,
                    "a token's `source` names a model with a LoRA adapter".into(),
                    "an adapter",
                    "name the model alone",
                );
                return None;
            }
            Some(quote(&t.local(path)))
        };
        let Kind::Map(entries) = &v.kind else {
            return model(self, v);
        };
        let get = |k: &str| {
            entries
                .iter()
                .find(|(n, _)| matches!(&n.kind, Kind::Str(s) if s == k))
                .map(|(_, v)| v)
        };
        match get("kind").map(|k| &k.kind) {
            None => model(self, v),
            Some(Kind::Str(k)) if k == "zero" => Some("zero".into()),
            Some(Kind::Str(k)) if k == "model_token" => {
                let Some(m) = get("model") else {
                    self.reject(
                        ErrorKind::MissingKey,
                        map_loc(v),
                        "a `model_token` embedding has no `model`".into(),
                        "no model",
                    );
                    return None;
                };
                let m = model(self, m)?;
                match (get("token"), get("token_id")) {
                    (
                        Some(Node {
                            kind: Kind::Str(t), ..
                        }),
                        None,
                    ) => Some(format!("{{ model: {m}, token: {} }}", quote(t))),
                    (
                        None,
                        Some(Node {
                            kind: Kind::Int(i), ..
                        }),
                    ) if *i >= 0 => Some(format!("{{ model: {m}, token_id: {i} }}")),
                    _ => {
                        self.reject(
                            ErrorKind::InvalidValue,
                            map_loc(v),
                            "a `model_token` embedding gives exactly one of `token` (a string) and `token_id` (an id)".into(),
                            "token or token_id",
                        );
                        None
                    }
                }
            }
            Some(_) => {
                let loc = get("kind").map_or(v.loc, |k| k.loc);
                self.reject(
                    ErrorKind::InvalidValue,
                    loc,
                    "a token embedding's `kind` is `zero` or `model_token`".into(),
                    "unknown kind",
                );
                None
            }
        }
    }

    /// The recipe's `tokenizer:` line, if any.
    fn write_tokenizer(&self, out: &mut String) {
        if let Some((t, _)) = &self.tokenizer {
            let gap = if t.starts_with('\n') { "" } else { " " };
            let _ = writeln!(out, "tokenizer:{gap}{t}");
        }
        if let Some(t) = &self.chat_template {
            let _ = writeln!(out, "chat_template: {}", quote(t));
        }
    }

    fn entry<'n>(&mut self, item: &'n Node, i: usize) -> Option<Entry<'n>> {
        let what = format!("model {}", i + 1);
        if let Kind::Str(_) = item.kind {
            let e = self
                .check
                .wrong_type(
                    item,
                    "a mapping with `model:`",
                    &format!("an entry of `models` ({what})"),
                )
                .help("write `- model: org/name`");
            self.check.push(e);
            return None;
        }
        let fields = self.entries(item, &format!("an entry of `models` ({what})"))?;
        let mut entry = EntryFields::default();
        for (key, v, kloc) in fields {
            match key {
                "model" | "parameters" => self.entry_field(&mut entry, key, v, &what),
                other => {
                    let help = closest(other, MODEL_KEYS.iter().copied()).map_or_else(
                        || "an entry of `models` has `model` and `parameters`".to_string(),
                        |c| format!("did you mean `{c}`?"),
                    );
                    self.warn(
                        kloc,
                        format!("mergekit ignores the key `{other}` in an entry of `models`"),
                        "unknown key",
                        Some(help),
                    );
                }
            }
        }
        self.finish_entry(entry, item, &what)
    }

    /// Reads the `model` or `parameters` key of a model entry or a slice's source.
    fn entry_field<'n>(&mut self, entry: &mut EntryFields<'n>, key: &str, v: &'n Node, what: &str) {
        if key == "model" {
            entry.seen_model = !matches!(v.kind, Kind::Null);
            entry.model = self
                .model_ref(v, &format!("the `model` of {what}"))
                .map(|m| (m, v.loc));
        } else {
            entry.params = self.params(v, &format!("the `parameters` of {what}"));
        }
    }

    /// The entry, or an error where it has no `model` (one that is there but invalid
    /// was reported already).
    fn finish_entry<'n>(
        &mut self,
        entry: EntryFields<'n>,
        item: &Node,
        what: &str,
    ) -> Option<Entry<'n>> {
        if !entry.seen_model {
            self.reject(
                ErrorKind::MissingKey,
                map_loc(item),
                format!("{what} has no `model`"),
                "no `model`",
            );
        }
        let (model, loc) = entry.model?;
        Some(Entry {
            model,
            loc,
            params: entry.params,
        })
    }

    /// Warns about parameters mergekit would never read.
    /// `model` as the recipe writes it, resolving against the configuration's folder:
    /// mergekit reads a relative path against the current directory, so where one
    /// exists there (and the configuration is elsewhere), the path from the
    /// configuration's folder to it; otherwise as written (a path relative to the
    /// configuration, or a Hugging Face repo id).
    /// The recipe lines naming the model `reference`: `{key}: MODEL`, then
    /// `{lora_key}: ADAPTER` when a LoRA adapter is applied to it.
    fn write_model(&self, out: &mut String, reference: &str, key: &str, lora_key: &str) {
        let (model, lora) = split_ref(reference);
        let _ = writeln!(out, "{key}: {}", quote(&self.local(model)));
        if let Some(lora) = lora {
            let _ = writeln!(out, "{lora_key}: {}", quote(&self.local(lora)));
        }
    }

    fn local(&self, model: &str) -> String {
        let path = Path::new(model);
        if path.is_absolute() || self.dir.as_os_str().is_empty() || !path.exists() {
            return model.to_string();
        }
        let (Ok(target), Ok(dir)) = (path.canonicalize(), self.dir.canonicalize()) else {
            return model.to_string();
        };
        if self.dir.join(path).canonicalize().ok().as_ref() == Some(&target) {
            return model.to_string();
        }
        relative_path(&dir, &target)
            .map_or_else(|| target.display().to_string(), |p| p.display().to_string())
    }

    fn check_names(&mut self, method: &Method, top: &[(&str, Loc, Given)], entries: &[Entry]) {
        let known: Vec<&str> = method.parameters().collect();
        let describe = |method: &Method| {
            if known.is_empty() {
                format!("`{}` takes no parameters", method.name)
            } else {
                format!("`{}` reads {}", method.name, list(&known))
            }
        };
        let unknown = |t: &mut Translator, name: &str, loc: Loc| {
            if name == "weight" {
                t.warn(
                    loc,
                    format!(
                        "`{}` gives every model the same say: mergekit ignores `weight`",
                        method.name
                    ),
                    "never read",
                    Some(describe(method)),
                );
                return;
            }
            let help = closest(name, known.iter().copied()).map_or_else(
                || describe(method),
                |c| format!("did you mean `{c}`? {}", describe(method)),
            );
            t.warn(
                loc,
                format!(
                    "`{}` does not read the parameter `{name}`: mergekit ignores it",
                    method.name
                ),
                "never read",
                Some(help),
            );
        };
        for (name, loc, _) in top {
            if !known.contains(name) {
                unknown(self, name, *loc);
            }
        }
        for e in entries {
            for (name, loc, _) in &e.params {
                if method.globals.iter().any(|d| d.name == *name) {
                    self.warn(
                        *loc,
                        format!("`{name}` is a parameter of the whole merge: under a model, mergekit ignores it"),
                        "a global parameter under a model",
                        Some("move it to the top-level `parameters`".into()),
                    );
                } else if !known.contains(name) {
                    unknown(self, name, *loc);
                }
            }
        }
        // `task_arithmetic` declares `density` but never sparsifies.
        if method.family
            == (Family::Gta {
                consensus: false,
                sparsifier: Sparsifier::None,
            })
        {
            let given = top
                .iter()
                .chain(entries.iter().flat_map(|e| e.params.iter()))
                .find(|(n, _, _)| *n == "density");
            if let Some((_, loc, _)) = given {
                self.warn(
                    *loc,
                    "`task_arithmetic` does not sparsify: mergekit ignores `density`".into(),
                    "never used",
                    Some("for a sparsified sum use `ties`, `dare_linear` or `breadcrumbs`".into()),
                );
            }
        }
    }

    /// The recipe's text.
    fn translate(
        &mut self,
        method: &Method,
        base: Option<(String, Loc)>,
        entries: &[Entry],
        top: &[(&str, Loc, Given)],
        dtype: Option<&str>,
        file_name: &str,
    ) -> Option<String> {
        let built = self.build(method, base.as_ref(), entries, top, false)?;
        let mut out = self.header(file_name, method);
        self.write_model(&mut out, &built.base, "base", "base_lora");
        out.push_str("models:\n");
        for (i, m) in built.models.iter().enumerate() {
            self.write_model(&mut out, m, "  - path", "    lora");
            built.write_model_values(&mut out, i, "    ");
        }
        write_params(&mut out, "", &built.values.all);
        let _ = writeln!(out, "merge: {}", built.expr);
        if !self.stacked.is_empty() {
            out.push_str("slices:\n");
            let stacked = std::mem::take(&mut self.stacked);
            for s in &stacked {
                let base_loc = base.as_ref().map_or(entries[0].loc, |(_, l)| *l);
                let base_start = self.base_start(s, &built.base, base_loc)?;
                let _ = writeln!(
                    out,
                    "  - layers: {base_start}..{}",
                    base_start + s.end - s.start
                );
                self.write_layers_of(&mut out, s, base_start, &built.models, &built.base);
                write_params(&mut out, "    ", &s.params);
            }
        }
        self.write_tokenizer(&mut out);
        if let Some(d) = dtype {
            let _ = writeln!(out, "dtype: {d}");
        }
        Some(out)
    }

    /// `entries` with each model once: mergekit keys its inputs by model reference, so
    /// a model listed twice is one input, with the first entry's parameters (a warning
    /// says so; `place` says where, e.g. " in this slice").
    fn unique<'n>(&mut self, entries: Vec<Entry<'n>>, place: &str) -> Vec<Entry<'n>> {
        let mut unique: Vec<Entry> = Vec::with_capacity(entries.len());
        for e in entries {
            match unique.iter().find(|u| u.model == e.model) {
                Some(first) => {
                    let line = first.loc.line;
                    self.warn(
                        e.loc,
                        format!("`{}` is listed twice{place}: mergekit merges it once, with the parameters of its first entry (line {line})", e.model),
                        "listed again",
                        Some("remove this entry".into()),
                    );
                }
                None => unique.push(e),
            }
        }
        unique
    }

    /// A stack of merged slices that differ in their models, base or per-model values:
    /// each slice is translated as a merge of its own (its `base_model` or the
    /// configuration's, its `parameters` before the top-level ones), every value a
    /// `$variable`, and all must give the same expression. The recipe's base is the
    /// configuration's `base_model` (else the first slice's base), its `models:` every
    /// other input, and each slice names its `base` (where it is another) and its
    /// `models` with their values.
    fn varied_recipe(
        &mut self,
        method: &Method,
        base: Option<&(String, Loc)>,
        top: &[(&str, Loc, Given)],
        slices: &[(RawSlice, Stacked)],
        dtype: Option<&str>,
        file_name: &str,
    ) -> Option<String> {
        let mut built: Vec<Built> = Vec::with_capacity(slices.len());
        for (raw, _) in slices {
            let sources = raw.sources.iter().map(|(e, ..)| e.clone()).collect();
            let entries = self.unique(sources, " in this slice");
            let own_top = layered(raw.params.clone(), top.to_vec());
            self.check_names(method, &own_top, &entries);
            let own_base = raw.base.as_ref().or(base);
            built.push(self.build(method, own_base, &entries, &own_top, true)?);
        }
        if let Some(k) = built.iter().position(|b| b.expr != built[0].expr) {
            self.unsupported(
                slices[k].0.sources[0].0.loc,
                format!(
                    "this slice merges by `{}`, the first slice by `{}`: a reefknot recipe merges every slice by one expression",
                    built[k].expr, built[0].expr
                ),
                "another merge",
                "give every slice the same options of the method (`normalize`, `rescale`, ...), and a base_model to all or none",
            );
            return None;
        }
        let recipe_base = base.map_or_else(|| built[0].base.clone(), |(b, _)| b.clone());
        let mut models: Vec<String> = Vec::new();
        for b in &built {
            for m in std::iter::once(&b.base).chain(&b.models) {
                if *m != recipe_base && !models.contains(m) {
                    models.push(m.clone());
                }
            }
        }
        let named = |t: &Self, m: &str| {
            if m == recipe_base {
                "base".to_string()
            } else {
                quote(&t.local(split_ref(m).0))
            }
        };
        let mut out = self.header(file_name, method);
        self.write_model(&mut out, &recipe_base, "base", "base_lora");
        out.push_str("models:\n");
        for m in &models {
            self.write_model(&mut out, m, "  - path", "    lora");
        }
        let _ = writeln!(out, "merge: {}", built[0].expr);
        out.push_str("slices:\n");
        for ((raw, st), b) in slices.iter().zip(&built) {
            let base_loc = raw
                .base
                .as_ref()
                .or(base)
                .map_or(raw.sources[0].0.loc, |(_, l)| *l);
            let base_start = self.base_start(st, &b.base, base_loc)?;
            let _ = writeln!(
                out,
                "  - layers: {base_start}..{}",
                base_start + st.end - st.start
            );
            if b.base != recipe_base {
                let _ = writeln!(out, "    base: {}", named(self, &b.base));
            }
            out.push_str("    models:\n");
            for (i, m) in b.models.iter().enumerate() {
                let _ = writeln!(out, "      - path: {}", named(self, m));
                b.write_model_values(&mut out, i, "        ");
            }
            self.write_layers_of(&mut out, st, base_start, &b.models, &recipe_base);
            write_params(&mut out, "    ", &b.values.all);
        }
        self.write_tokenizer(&mut out);
        if let Some(d) = dtype {
            let _ = writeln!(out, "dtype: {d}");
        }
        Some(out)
    }

    /// The first line of a recipe `reefknot convert` writes.
    fn header(&self, file_name: &str, method: &Method) -> String {
        let file_name: String = file_name
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        format!(
            "# The mergekit configuration {file_name} (merge_method: {}) as a reefknot recipe,\n\
             # written by `reefknot convert`. Relative paths resolve against the configuration's\n\
             # folder.\n",
            method.name
        )
    }

    /// The base's first layer in slice `s` of a merged stack: the slice's, or, where
    /// its sources take other layers, the base's own source's.
    fn base_start(&mut self, s: &Stacked, base: &str, base_loc: Loc) -> Option<usize> {
        let start_of = |m: &str| s.starts.iter().find(|(x, _)| x == m).map(|(_, a)| *a);
        let differ = s.starts.iter().any(|(_, a)| *a != s.start);
        match start_of(base) {
            Some(a) => Some(a),
            None if !differ => Some(s.start),
            None => {
                self.reject(
                    ErrorKind::InvalidValue,
                    base_loc,
                    "the sources of a slice take different layers, and the base model is not one of them: which of its layers would the slice merge?".into(),
                    "not among the slice's sources",
                );
                None
            }
        }
    }

    /// A merged slice's `layers_of`: the models among `models` whose source in slice
    /// `s` takes other layers than the base's.
    /// `recipe_base` (the recipe's base, one of them in a slice whose base is a model)
    /// is written `base`.
    fn write_layers_of(
        &self,
        out: &mut String,
        s: &Stacked,
        base_start: usize,
        models: &[String],
        recipe_base: &str,
    ) {
        let len = s.end - s.start;
        let moved: Vec<String> = models
            .iter()
            .filter_map(|m| {
                let a = s.starts.iter().find(|(x, _)| x == m).map(|(_, a)| *a)?;
                (a != base_start).then(|| {
                    let path = if m == recipe_base {
                        "base".to_string()
                    } else {
                        quote(&self.local(split_ref(m).0))
                    };
                    format!("{path}: {a}..{}", a + len)
                })
            })
            .collect();
        if !moved.is_empty() {
            let _ = writeln!(out, "    layers_of: {{ {} }}", moved.join(", "));
        }
    }

    /// The merge of `entries` (with the configuration's `base` and `top`-level values)
    /// as a reefknot expression with its values. `vary`: every value is a
    /// `$variable` and no stage is left out for its value (a stack whose slices each
    /// give their own values, but must share the expression).
    fn build(
        &mut self,
        method: &Method,
        base: Option<&(String, Loc)>,
        entries: &[Entry],
        top: &[(&str, Loc, Given)],
        vary: bool,
    ) -> Option<Built> {
        let base = base.cloned();
        let top_get = |name: &str| top.iter().find(|(n, _, _)| *n == name).map(|(_, _, g)| g);
        let base_index = base
            .as_ref()
            .and_then(|(b, _)| entries.iter().position(|e| e.model == *b));

        // The reefknot base, the fine-tunes, and the flags that depend on whether
        // mergekit has a base.
        let (reef_base, models): (String, Vec<&Entry>) = match (method.base, &base) {
            (Base::Required, None) => {
                let e = self
                    .error(
                        ErrorKind::MissingKey,
                        entries[0].loc,
                        format!("`{}` needs a `base_model`", method.name),
                        "no base_model",
                    )
                    .help("add `base_model:` with the model the fine-tunes started from");
                self.check.push(e);
                return None;
            }
            (Base::None, _) => {
                let inputs = entries.len() + usize::from(base.is_some() && base_index.is_none());
                if inputs != 1 {
                    let e = self.error(
                        ErrorKind::InvalidValue,
                        match (entries.get(1), &base) {
                            (Some(e), _) => e.loc,
                            (None, Some((_, loc))) => *loc,
                            (None, None) => entries[0].loc,
                        },
                        format!("`passthrough` takes exactly one model, but this configuration gives it {inputs}"),
                        "one model too many",
                    )
                    .help("stacking layers of several models (`slices:`) is not supported yet");
                    self.check.push(e);
                    return None;
                }
                (entries[0].model.clone(), vec![&entries[0]])
            }
            (_, Some((b, _))) => (
                b.clone(),
                entries
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| Some(*i) != base_index)
                    .map(|(_, e)| e)
                    .collect(),
            ),
            // No base: the first model lends its names and config files; every model
            // is an input and the operator ignores the base.
            (Base::Optional, None) => (entries[0].model.clone(), entries.iter().collect()),
        };
        let has_base = base.is_some();
        let two = matches!(
            method.family,
            Family::Slerp | Family::Nearswap | Family::ArceeFusion
        );
        if two && models.len() != 1 {
            self.reject(
                ErrorKind::InvalidValue,
                entries[0].loc,
                format!(
                    "`{}` merges the base_model with exactly one other model, but this configuration has {}",
                    method.name,
                    models.len()
                ),
                "the models",
            );
            return None;
        }
        if method.family == Family::Nuslerp && models.len() != 2 {
            self.reject(
                ErrorKind::InvalidValue,
                entries[0].loc,
                format!(
                    "`nuslerp` merges exactly two models besides the base_model, but this configuration has {}",
                    models.len()
                ),
                "the models",
            );
            return None;
        }
        if models.is_empty() {
            self.reject(
                ErrorKind::NoModels,
                entries[0].loc,
                "the only model is the base_model: there is nothing to merge".into(),
                "the base model",
            );
            return None;
        }

        // A per-model value for every model (model's own, top-level, default).
        let ok = std::cell::Cell::new(true);
        let per_model = |t: &mut Translator, name: &str| -> Option<Vec<Option<Val>>> {
            let d = method
                .per_model
                .iter()
                .find(|d| d.name == name)
                .map(|d| d.default)?;
            let vals: Vec<Option<Val>> = models
                .iter()
                .map(|e| resolve(&[e.param(name), top_get(name)], d.into()))
                .collect();
            // Every per-model parameter is a number (mergekit would fail on a string).
            for (e, v) in models.iter().zip(&vals) {
                let mut found = None;
                if let Some(v) = v {
                    let plain: Vec<&Val> = match v {
                        Val::Cond(es) => es.iter().map(|(_, v)| v).collect(),
                        other => vec![other],
                    };
                    found = plain
                        .into_iter()
                        .find(|v| matches!(v, Val::Bool(_) | Val::Str(_)));
                }
                if let Some(bad) = found {
                    let loc = e.param(name).or(top_get(name)).map_or(e.loc, |g| g.loc);
                    let err = t
                        .error(
                            ErrorKind::WrongType,
                            loc,
                            format!(
                                "`{name}` must be a number or a gradient, but this is {}",
                                describe(bad)
                            ),
                            "expected a number",
                        )
                        .help("a quoted number is a string in YAML: remove the quotes");
                    t.check.push(err);
                    ok.set(false);
                    return None;
                }
            }
            if d == Default::Required {
                for (e, v) in models.iter().zip(&vals) {
                    let uncovered =
                        matches!(v, Some(Val::Cond(es)) if es.iter().all(|(g, _)| g.is_some()));
                    if v.is_none() || uncovered {
                        let err = t
                            .error(
                                ErrorKind::MissingKey,
                                e.loc,
                                if v.is_none() {
                                    format!("`{}` needs a `{name}` for `{}`", method.name, e.model)
                                } else {
                                    format!(
                                        "`{}` needs a `{name}` for `{}` on every tensor, and its conditions end with a filter",
                                        method.name, e.model
                                    )
                                },
                                "no value",
                            )
                            .help(format!(
                                "give it under the model's `parameters`, or once in the top-level `parameters` for every model (mergekit fails with \"Missing required parameter {name}\")"
                            ));
                        t.check.push(err);
                        ok.set(false);
                    }
                }
            }
            Some(vals)
        };

        let weights = if method.uses_weight() {
            per_model(self, "weight")
        } else {
            None
        };
        let global = |name: &str| -> Option<Val> {
            let d = method.globals.iter().find(|d| d.name == name)?.default;
            resolve(&[top_get(name)], d.into())
        };

        let mut recipe = Builder {
            vary,
            ..Builder::default()
        };
        let flag_of = |t: &mut Translator, name: &str| -> bool {
            match global(name) {
                Some(Val::Bool(b)) => b,
                // pydantic reads 0 and 1 as booleans.
                Some(Val::Num(x)) if x == 0.0 || x == 1.0 => x == 1.0,
                Some(other) => {
                    let loc = top_get(name).map_or(entries[0].loc, |g| g.loc);
                    t.unsupported(
                        loc,
                        format!(
                            "`{name}` must be true or false here, but this is {}",
                            describe(&other)
                        ),
                        "expected true or false",
                        "mergekit reads it once for the whole merge",
                    );
                    false
                }
                None => false,
            }
        };
        let sliced: Vec<String> = self
            .stacked
            .iter()
            .flat_map(|s| s.params.iter().map(|(n, _)| n.clone()))
            .collect();
        let number = |t: &mut Translator, recipe: &mut Builder, name: &str| -> Option<String> {
            if sliced.iter().any(|n| n == name) {
                // Slices give their own values: a variable, with the top level's (or the
                // default) for the slices that do not.
                if let Some(v) = global(name) {
                    recipe.all.push((name.to_string(), v));
                }
                return Some(format!("${name}"));
            }
            let v = global(name)?;
            recipe.global(t, name, v, top_get(name).map(|g| g.loc))
        };

        let expr = match method.family {
            Family::Gta {
                consensus,
                sparsifier,
            } => {
                let normalize = flag_of(self, "normalize");
                let rescale = flag_of(self, "rescale");
                let _ = flag_of(self, "int8_mask");
                let mut stages = Vec::new();
                let densities = per_model(self, "density").unwrap_or_default();
                let densities: Vec<Val> = densities.into_iter().flatten().collect();
                let all_one = densities
                    .iter()
                    .all(|v| v.numbers().iter().all(|x| *x >= 1.0));
                let l1 = |on: bool| if on { ", rescale=l1" } else { "" };
                match sparsifier {
                    Sparsifier::None => {}
                    _ if all_one && !vary && sparsifier != Sparsifier::MagnitudeOutliers => {}
                    Sparsifier::Magnitude => {
                        let k = self.clamped(&densities, models.as_slice(), "density", &ok);
                        let k = recipe.per_model(self, "density", k)?;
                        stages.push(format!("trim({k}{})", l1(rescale)));
                    }
                    Sparsifier::Random => {
                        let p: Vec<Val> = self
                            .clamped(&densities, models.as_slice(), "density", &ok)
                            .iter()
                            .map(|v| v.map_numbers(&drop_probability))
                            .collect();
                        let p = recipe.per_model(self, "p", p)?;
                        let r = if rescale { "l1" } else { "none" };
                        stages.push(format!("dare({p}, rescale={r})"));
                    }
                    Sparsifier::MagnitudeOutliers => {
                        let k = self.clamped(&densities, models.as_slice(), "density", &ok);
                        let k = recipe.per_model(self, "density", k)?;
                        let g = per_model(self, "gamma").unwrap_or_default();
                        let g =
                            recipe.per_model(self, "gamma", g.into_iter().flatten().collect())?;
                        let g = if g == "0.01" {
                            String::new()
                        } else {
                            format!(", gamma={g}")
                        };
                        stages.push(format!("breadcrumbs({k}{g}{})", l1(rescale)));
                    }
                    Sparsifier::DellaMagprune => {
                        let k = recipe.per_model(self, "density", densities.clone())?;
                        let e = per_model(self, "epsilon").unwrap_or_default();
                        let e =
                            recipe.per_model(self, "epsilon", e.into_iter().flatten().collect())?;
                        let e = if e == "0.15" {
                            String::new()
                        } else {
                            format!(", eps={e}")
                        };
                        let r = if rescale { "" } else { ", rescale=none" };
                        stages.push(format!("della({k}{e}{r})"));
                    }
                }
                match (consensus, normalize) {
                    (true, true) => stages.push("elect |> disjoint".into()),
                    (true, false) => stages.push("elect |> disjoint(sum)".into()),
                    (false, true) => stages.push("mean".into()),
                    (false, false) => stages.push("sum".into()),
                }
                if let Some(l) = number(self, &mut recipe, "lambda") {
                    if l != "1" {
                        stages.push(format!("scale({l})"));
                    }
                }
                stages.join(" |> ")
            }
            Family::Linear => {
                let normalize = flag_of(self, "normalize");
                let mut args = Vec::new();
                if !normalize {
                    args.push("normalize=false".to_string());
                }
                if has_base {
                    // The base is averaged in with its own weight (or the top-level one).
                    let own = base_index.and_then(|b| entries[b].param("weight"));
                    let w = resolve(&[own, top_get("weight")], None);
                    let (_, base_loc) = base.as_ref().expect("has a base");
                    match w {
                        Some(w) => {
                            let w = recipe.global(
                                self,
                                "base_weight",
                                w,
                                Some(own.map_or(*base_loc, |g| g.loc)),
                            )?;
                            if w != "0" {
                                args.push(format!("base_weight={w}"));
                            }
                        }
                        None => {
                            let loc = base_index.map_or(*base_loc, |b| entries[b].loc);
                            let e = self
                                .error(
                                    ErrorKind::MissingKey,
                                    loc,
                                    "`linear` averages the base_model too, and it has no `weight`".into(),
                                    "no weight",
                                )
                                .help("give it a weight under `models:`, or one for every model in the top-level `parameters`, or leave `base_model` out (mergekit fails with \"Missing required parameter weight\")");
                            self.check.push(e);
                            ok.set(false);
                        }
                    }
                }
                call("linear", &args)
            }
            Family::Slerp => {
                let t = number(self, &mut recipe, "t");
                let t = self.required(t, "t", method, entries[0].loc, &ok);
                format!("slerp({t})")
            }
            Family::Nearswap => {
                let t = number(self, &mut recipe, "t");
                let t = self.required(t, "t", method, entries[0].loc, &ok);
                format!("nearswap({t})")
            }
            Family::ArceeFusion => "arcee_fusion".into(),
            Family::Nuslerp => {
                let mut args = Vec::new();
                if !flag_of(self, "nuslerp_flatten") {
                    args.push("flatten=false".into());
                }
                if flag_of(self, "nuslerp_row_wise") {
                    args.push("row_wise=true".into());
                }
                if !has_base {
                    args.push("centered=false".into());
                }
                call("nuslerp", &args)
            }
            Family::Multislerp => {
                let mut args = Vec::new();
                if !flag_of(self, "normalize_weights") {
                    args.push("normalize=false".into());
                }
                if let Some(e) = number(self, &mut recipe, "eps") {
                    if e != "0.00000001" {
                        args.push(format!("eps={e}"));
                    }
                }
                if !has_base {
                    args.push("centered=false".into());
                }
                call("multislerp", &args)
            }
            Family::Karcher => {
                let mut args = Vec::new();
                if let Some(n) = number(self, &mut recipe, "max_iter") {
                    if n != "10" {
                        args.push(format!("max_iter={n}"));
                    }
                }
                if let Some(n) = number(self, &mut recipe, "tol") {
                    if n != "0.00001" {
                        args.push(format!("tol={n}"));
                    }
                }
                if has_base {
                    args.push("with_base=true".into());
                }
                call("karcher", &args)
            }
            Family::ModelStock => {
                if flag_of(self, "filter_wise") {
                    "model_stock(filter_wise=true)".into()
                } else {
                    "model_stock".into()
                }
            }
            Family::Sce => {
                let _ = flag_of(self, "int8_mask");
                match number(self, &mut recipe, "select_topk") {
                    Some(k) if k != "1" => format!("sce({k})"),
                    _ => "sce".into(),
                }
            }
            Family::Ram => match number(self, &mut recipe, "epsilon") {
                Some(e) if e != "0.00001" => format!("ram(epsilon={e})"),
                _ => "ram".into(),
            },
            Family::RamplusTl => {
                let mut args = Vec::new();
                for (name, default) in [("r", "0.1"), ("alpha", "0.2"), ("epsilon", "0.00001")] {
                    if let Some(v) = number(self, &mut recipe, name) {
                        if v != default {
                            args.push(format!("{name}={v}"));
                        }
                    }
                }
                call("ramplus_tl", &args)
            }
            Family::Passthrough => {
                let scale = per_model(self, "scale").unwrap_or_default();
                match scale.into_iter().flatten().next() {
                    Some(v) if v != Val::Num(1.0) => {
                        self.warn_low_precision();
                        let s = recipe.per_model(self, "scale", vec![v])?;
                        format!("passthrough({s})")
                    }
                    _ => "passthrough".into(),
                }
            }
        };

        if !ok.get() {
            return None;
        }
        Some(Built {
            base: reef_base,
            models: models.iter().map(|e| e.model.clone()).collect(),
            weights: weights.unwrap_or_default(),
            values: recipe,
            expr,
        })
    }

    /// A required global's text, or an error.
    fn required(
        &mut self,
        v: Option<String>,
        name: &str,
        method: &Method,
        loc: Loc,
        ok: &std::cell::Cell<bool>,
    ) -> String {
        v.unwrap_or_else(|| {
            let e = self
                .error(
                    ErrorKind::MissingKey,
                    loc,
                    format!("`{}` needs the parameter `{name}`", method.name),
                    "no value",
                )
                .help(format!(
                    "add it to the top-level `parameters`: `{name}: 0.5`"
                ));
            self.check.push(e);
            ok.set(false);
            String::new()
        })
    }

    /// Densities as a keep fraction in `(0, 1]`: mergekit keeps everything from 1 up;
    /// 0 or less (mergekit: one entry kept by `ties`, none by `dare`) is refused.
    fn clamped(
        &mut self,
        values: &[Val],
        models: &[&Entry],
        name: &str,
        ok: &std::cell::Cell<bool>,
    ) -> Vec<Val> {
        values
            .iter()
            .zip(models)
            .map(|(v, e)| {
                let clamp = |v: &Val| match v {
                    _ if v.numbers().iter().any(|x| *x <= 0.0) => None,
                    Val::Grad(g) if g.iter().any(|x| *x > 1.0) && g.iter().any(|x| *x < 1.0) => None,
                    other => Some(other.map_numbers(&|x| x.min(1.0))),
                };
                let out = match v {
                    Val::Cond(entries) => entries
                        .iter()
                        .map(|(g, v)| clamp(v).map(|v| (g.clone(), v)))
                        .collect::<Option<Vec<_>>>()
                        .map(Val::Cond),
                    other => clamp(other),
                };
                out.unwrap_or_else(|| {
                    let loc = e.param(name).map_or(e.loc, |g| g.loc);
                    if v.numbers().iter().any(|x| *x <= 0.0) {
                        self.unsupported(
                            loc,
                            format!("a `{name}` of 0 or less: mergekit keeps one entry of each tensor (`ties`) or none (`dare`)"),
                            "0 or less",
                            "leave the model out, or give it a small positive density",
                        );
                    } else {
                        self.unsupported(
                            loc,
                            format!("a `{name}` gradient that crosses 1: mergekit keeps everything where the interpolated value is 1 or more, which a reefknot gradient cannot express"),
                            "crosses 1",
                            "cap the anchors at 1",
                        );
                    }
                    ok.set(false);
                    v.clone()
                })
            })
            .collect()
    }
}

fn describe(v: &Val) -> &'static str {
    match v {
        Val::Num(_) => "a number",
        Val::Grad(_) => "a gradient",
        Val::Bool(_) => "a boolean",
        Val::Str(_) => "a string",
        Val::Cond(_) => "a list of conditions",
    }
}

/// `name` or `name(a, b)`.
fn call(name: &str, args: &[String]) -> String {
    if args.is_empty() {
        name.to_string()
    } else {
        format!("{name}({})", args.join(", "))
    }
}

/// The `params` of the recipe being written.
#[derive(Default)]
struct Builder {
    /// Recipe-wide values.
    all: Vec<(String, Val)>,
    /// Per-model values, one per model.
    each: Vec<(String, Vec<Val>)>,
    /// Every value is a `$variable`, even a number all models share.
    vary: bool,
}

/// A merge as [`Translator::build`] makes it.
struct Built {
    /// The reefknot base: mergekit's `base_model`, or the first model without one.
    base: String,
    /// The fine-tunes, as mergekit references them.
    models: Vec<String>,
    /// Each fine-tune's weight (none: the method reads no weight).
    weights: Vec<Option<Val>>,
    /// The `$variables` the expression reads.
    values: Builder,
    /// The expression.
    expr: String,
}

impl Built {
    /// Fine-tune `i`'s `weight` (where it is not 1) and `params` lines, indented by
    /// `indent`.
    fn write_model_values(&self, out: &mut String, i: usize, indent: &str) {
        if let Some(w) = self.weights.get(i).and_then(Option::as_ref) {
            if *w != Val::Num(1.0) {
                let _ = writeln!(out, "{indent}weight: {}", w.yaml());
            }
        }
        let params: Vec<String> = (self.values.each.iter())
            .map(|(name, vals)| format!("{name}: {}", vals[i].yaml()))
            .collect();
        if !params.is_empty() {
            let _ = writeln!(out, "{indent}params: {{ {} }}", params.join(", "));
        }
    }
}

/// A `params:` block of `values` (none when empty), its key indented by `indent`.
fn write_params(out: &mut String, indent: &str, values: &[(String, Val)]) {
    if values.is_empty() {
        return;
    }
    let _ = writeln!(out, "{indent}params:");
    for (name, v) in values {
        let _ = writeln!(out, "{indent}  {name}: {}", v.yaml());
    }
}

impl Builder {
    /// The text standing for a global value in the expression: a literal for a number,
    /// `$name` (with a recipe-wide entry) for a gradient or conditions.
    fn global(
        &mut self,
        t: &mut Translator,
        name: &str,
        v: Val,
        loc: Option<Loc>,
    ) -> Option<String> {
        match v {
            Val::Num(x) if !self.vary => Some(fmt_num(x)),
            Val::Num(_) | Val::Grad(_) | Val::Cond(_) => {
                self.all.push((name.to_string(), v));
                Some(format!("${name}"))
            }
            Val::Bool(_) | Val::Str(_) => {
                let mut e = RecipeError::new(
                    ErrorKind::WrongType,
                    format!(
                        "`{name}` must be a number, a gradient or conditions, but this is {}",
                        describe(&v)
                    ),
                );
                if let Some(loc) = loc {
                    e = e.label(loc, "expected a number");
                }
                t.check.push(e);
                None
            }
        }
    }

    /// The text standing for a per-model value: a literal when every model has the
    /// same number, `$name` otherwise.
    fn per_model(&mut self, t: &mut Translator, name: &str, vals: Vec<Val>) -> Option<String> {
        if let Some(bad) = vals
            .iter()
            .find(|v| matches!(v, Val::Bool(_) | Val::Str(_)))
        {
            let e = RecipeError::new(
                ErrorKind::WrongType,
                format!(
                    "`{name}` must be a number, a gradient or conditions, but one is {}",
                    describe(bad)
                ),
            );
            t.check.push(e);
            return None;
        }
        let first = vals.first()?.clone();
        if !self.vary && vals.iter().all(|v| *v == first) {
            return self.global(t, name, first, None);
        }
        self.each.push((name.to_string(), vals));
        Some(format!("${name}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_fall_through_to_the_next_level() {
        let mlp = Given {
            val: Val::Cond(vec![(Some("*mlp*".into()), Val::Num(0.5))]),
            loc: Loc::default(),
        };
        let top = Given {
            val: Val::Grad(vec![0.1, 0.2]),
            loc: Loc::default(),
        };
        assert_eq!(
            resolve(&[Some(&mlp), Some(&top)], Some(Val::Num(1.0))),
            Some(Val::Cond(vec![
                (Some("*mlp*".into()), Val::Num(0.5)),
                (None, Val::Grad(vec![0.1, 0.2])),
            ]))
        );
        assert_eq!(
            resolve(&[None, None], Some(Val::Num(1.0))),
            Some(Val::Num(1.0))
        );
        assert_eq!(resolve(&[None, Some(&top)], None), Some(top.val.clone()));
        assert_eq!(resolve(&[Some(&mlp)], None), Some(mlp.val.clone()));
    }

    #[test]
    fn filters_become_globs_that_match_the_substring() {
        assert_eq!(filter_glob("mlp").as_deref(), Some("*mlp*"));
        assert_eq!(filter_glob("*"), None);
        assert_eq!(filter_glob("a[0]").as_deref(), Some("*a\\[0\\]*"));
    }

    #[test]
    fn the_table_has_every_method_of_mergekit_0_1_5() {
        assert_eq!(METHODS.len(), 20);
    }
}

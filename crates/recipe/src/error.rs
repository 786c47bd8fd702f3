//! The error of the recipe: what is wrong, where (a caret in the YAML file), and what to do.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use miette::{Diagnostic, LabeledSpan, NamedSource, SourceCode};

use crate::Loc;

/// The category of a [`RecipeError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The recipe file could not be read (missing, unreadable, not UTF-8).
    Io,
    /// The text is not valid YAML (or is more than one YAML document).
    Syntax,
    /// The recipe is empty or is not a mapping of keys.
    NotARecipe,
    /// A key that is not valid at that place (`modles:` for `models:`).
    UnknownKey,
    /// A required key is absent (`base`, `models`, `merge`, a model's `path`).
    MissingKey,
    /// The same key twice in one mapping.
    DuplicateKey,
    /// A value of the wrong sort: a list where a string is expected, ...
    WrongType,
    /// A value of the right sort that is not acceptable: an empty path, a weight
    /// that is not finite, an empty expression, ...
    InvalidValue,
    /// A list of numbers that is not a valid gradient (fewer than two numbers, or
    /// something else than numbers in it).
    InvalidGradient,
    /// A parameter or group name that is not an identifier.
    InvalidName,
    /// `models:` is an empty list.
    NoModels,
    /// An override with no selector, or more than one (`match`, `group`, `layers`).
    InvalidSelector,
    /// An override that sets neither `merge` nor `params`.
    IneffectiveOverride,
    /// A `layers:` value that is not a range `a..b` with `a < b` or one index.
    InvalidLayers,
    /// A glob that does not compile.
    InvalidGlob,
    /// `group:` names a group that is neither built in nor defined in `groups:`.
    UnknownGroup,
    /// `groups:` redefines a built-in group.
    BuiltinGroupRedefined,
    /// A `dtype` that is not one of the accepted names.
    InvalidDtype,
    /// A `seed` that is not a non-negative integer.
    InvalidSeed,
    /// A `shard_size` that is not a positive size.
    InvalidShardSize,
    /// A slice's `from:` names neither the base nor a model of `models:`.
    UnknownSource,
    /// A mergekit configuration uses something reefknot does not do yet (slices whose
    /// sources read different layers, LoRA inputs, a tokenizer other than the base's),
    /// or that reefknot cannot express exactly.
    Unsupported,
}

impl ErrorKind {
    /// A stable code for the category, shown by miette, e.g. `reefknot::recipe::unknown_key`.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::Io => "reefknot::recipe::io",
            ErrorKind::Syntax => "reefknot::recipe::syntax",
            ErrorKind::NotARecipe => "reefknot::recipe::not_a_recipe",
            ErrorKind::UnknownKey => "reefknot::recipe::unknown_key",
            ErrorKind::MissingKey => "reefknot::recipe::missing_key",
            ErrorKind::DuplicateKey => "reefknot::recipe::duplicate_key",
            ErrorKind::WrongType => "reefknot::recipe::wrong_type",
            ErrorKind::InvalidValue => "reefknot::recipe::invalid_value",
            ErrorKind::InvalidGradient => "reefknot::recipe::invalid_gradient",
            ErrorKind::InvalidName => "reefknot::recipe::invalid_name",
            ErrorKind::NoModels => "reefknot::recipe::no_models",
            ErrorKind::InvalidSelector => "reefknot::recipe::invalid_selector",
            ErrorKind::IneffectiveOverride => "reefknot::recipe::ineffective_override",
            ErrorKind::InvalidLayers => "reefknot::recipe::invalid_layers",
            ErrorKind::InvalidGlob => "reefknot::recipe::invalid_glob",
            ErrorKind::UnknownGroup => "reefknot::recipe::unknown_group",
            ErrorKind::BuiltinGroupRedefined => "reefknot::recipe::builtin_group_redefined",
            ErrorKind::InvalidDtype => "reefknot::recipe::invalid_dtype",
            ErrorKind::InvalidSeed => "reefknot::recipe::invalid_seed",
            ErrorKind::InvalidShardSize => "reefknot::recipe::invalid_shard_size",
            ErrorKind::UnknownSource => "reefknot::recipe::unknown_source",
            ErrorKind::Unsupported => "reefknot::recipe::unsupported",
        }
    }
}

/// A label of a [`RecipeError`]: a span of the recipe and what it says about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Label {
    /// The span in the recipe's source.
    pub loc: Loc,
    /// The text shown under the caret.
    pub text: String,
}

/// Why a recipe was rejected.
///
/// One error is the primary problem; when validation found several independent
/// problems (two misspelt keys, say), the others are in [`RecipeError::others`] and
/// miette prints them after it, so one run shows every mistake.
///
/// It renders with [`miette`]: the file name, the line, a caret under the offending
/// token, the message and a help line. [`fmt::Display`] gives the message alone (the
/// location is [`RecipeError::loc`]).
pub struct RecipeError {
    inner: Box<Inner>,
}

/// Boxed, so that `Result<_, RecipeError>` stays one pointer wide on the error side.
struct Inner {
    kind: ErrorKind,
    message: String,
    labels: Vec<Label>,
    help: Option<String>,
    name: String,
    path: Option<PathBuf>,
    source: Option<NamedSource<Arc<str>>>,
    cause: Option<std::io::Error>,
    related: Vec<RecipeError>,
}

impl RecipeError {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> RecipeError {
        RecipeError {
            inner: Box::new(Inner {
                kind,
                message: message.into(),
                labels: Vec::new(),
                help: None,
                name: String::new(),
                path: None,
                source: None,
                cause: None,
                related: Vec::new(),
            }),
        }
    }

    pub(crate) fn io(path: PathBuf, cause: std::io::Error) -> RecipeError {
        let message = format!("cannot read the recipe `{}`: {cause}", path.display());
        let mut err = RecipeError::new(ErrorKind::Io, message);
        err.inner.name = path.display().to_string();
        err.inner.path = Some(path);
        err.inner.cause = Some(cause);
        err
    }

    pub(crate) fn label(mut self, loc: Loc, text: impl Into<String>) -> RecipeError {
        self.inner.labels.push(Label {
            loc,
            text: text.into(),
        });
        self
    }

    pub(crate) fn help(mut self, help: impl Into<String>) -> RecipeError {
        self.inner.help = Some(help.into());
        self
    }

    /// Attaches the file name and text; for the errors collected during validation,
    /// the first becomes the primary error and the rest its related errors.
    pub(crate) fn finish(
        mut errors: Vec<RecipeError>,
        name: &str,
        source: &Arc<str>,
        path: Option<&std::path::Path>,
    ) -> RecipeError {
        let named = NamedSource::new(name, Arc::clone(source)).with_language("yaml");
        for e in &mut errors {
            e.inner.name = name.to_owned();
            e.inner.path = path.map(|p| p.to_path_buf());
        }
        let mut first = errors.remove(0);
        first.inner.source = Some(named);
        first.inner.related = errors;
        first
    }

    /// The category.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// The message, without location.
    pub fn message(&self) -> &str {
        &self.inner.message
    }

    /// The labelled spans; the first is the primary location.
    pub fn spans(&self) -> &[Label] {
        &self.inner.labels
    }

    /// The primary location in the recipe's source, if the error has one.
    pub fn loc(&self) -> Option<Loc> {
        self.inner.labels.first().map(|l| l.loc)
    }

    /// What to do about it, if there is advice.
    pub fn help_text(&self) -> Option<&str> {
        self.inner.help.as_deref()
    }

    /// The recipe file, when the recipe was loaded from one.
    pub fn path(&self) -> Option<&std::path::Path> {
        self.inner.path.as_deref()
    }

    /// The other problems found in the same recipe, after this one.
    pub fn others(&self) -> &[RecipeError] {
        &self.inner.related
    }

    /// This error and its related errors, in order.
    pub fn all(&self) -> impl Iterator<Item = &RecipeError> {
        std::iter::once(self).chain(self.inner.related.iter())
    }
}

impl fmt::Debug for RecipeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecipeError")
            .field("kind", &self.inner.kind)
            .field("message", &self.inner.message)
            .field("labels", &self.inner.labels)
            .field("help", &self.inner.help)
            .field("name", &self.inner.name)
            .field("related", &self.inner.related)
            .finish()
    }
}

impl fmt::Display for RecipeError {
    /// The message alone: the location is in [`RecipeError::loc`] and in the rendered
    /// diagnostic's snippet.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inner.message)
    }
}

impl std::error::Error for RecipeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner
            .cause
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl Diagnostic for RecipeError {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(self.inner.kind.code()))
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.inner
            .help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        self.inner.source.as_ref().map(|s| s as &dyn SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        if self.inner.labels.is_empty() {
            return None;
        }
        Some(Box::new(self.inner.labels.iter().enumerate().map(
            |(i, l)| {
                let text = (!l.text.is_empty()).then(|| l.text.clone());
                let span = (l.loc.offset, l.loc.len);
                if i == 0 {
                    LabeledSpan::new_primary_with_span(text, span)
                } else {
                    LabeledSpan::new_with_span(text, span)
                }
            },
        )))
    }

    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn Diagnostic> + 'a>> {
        if self.inner.related.is_empty() {
            return None;
        }
        Some(Box::new(
            self.inner.related.iter().map(|e| e as &dyn Diagnostic),
        ))
    }
}

/// The closest of `candidates` to `word`, if one is close enough to be a likely typo.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = word.to_lowercase();
    let candidates: Vec<&str> = candidates.into_iter().collect();
    // A cut-off name (`bfloat` for `bfloat16`) beats a closer edit that drops letters.
    if lower.chars().count() >= 3 {
        let prefixed = candidates
            .iter()
            .filter(|c| c.to_lowercase().starts_with(&lower))
            .min_by_key(|c| c.len());
        if let Some(c) = prefixed {
            return Some(c);
        }
    }
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        let d = strsim::damerau_levenshtein(&lower, &c.to_lowercase());
        let limit = (c.chars().count() / 3).max(1);
        if d <= limit && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c)
}

/// `a, b and c`, each in backticks.
pub(crate) fn list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("`{s}`")).collect();
    match quoted.len() {
        0 => String::new(),
        1 => quoted[0].clone(),
        n => format!("{} and {}", quoted[..n - 1].join(", "), quoted[n - 1]),
    }
}

/// Something in a recipe that has no effect: an override that selects no tensor, a
/// layer range beyond the model, a `params` entry no expression reads. Rendered as a
/// miette warning pointing into the recipe; `reefknot check --strict` fails on one.
#[derive(Debug, Clone)]
pub struct RecipeWarning {
    code: &'static str,
    message: String,
    label: Label,
    help: Option<String>,
    source: NamedSource<Arc<str>>,
}

impl RecipeWarning {
    /// A warning about `loc` of `recipe`'s source.
    pub fn new(
        recipe: &crate::Recipe,
        loc: Loc,
        message: impl Into<String>,
        label: impl Into<String>,
    ) -> RecipeWarning {
        RecipeWarning::in_source(recipe.named_source(), loc, message, label)
    }

    /// A warning about `loc` of `source`.
    pub(crate) fn in_source(
        source: NamedSource<Arc<str>>,
        loc: Loc,
        message: impl Into<String>,
        label: impl Into<String>,
    ) -> RecipeWarning {
        RecipeWarning {
            code: "reefknot::no_effect",
            message: message.into(),
            label: Label {
                loc,
                text: label.into(),
            },
            help: None,
            source,
        }
    }

    /// The same warning under another code (`reefknot::mergekit::ignored`).
    pub(crate) fn code(mut self, code: &'static str) -> RecipeWarning {
        self.code = code;
        self
    }

    /// Where in the source it points.
    pub fn loc(&self) -> Loc {
        self.label.loc
    }

    /// Adds advice.
    pub fn help(mut self, help: impl Into<String>) -> RecipeWarning {
        self.help = Some(help.into());
        self
    }

    /// What it says.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for RecipeWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RecipeWarning {}

impl Diagnostic for RecipeWarning {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(self.code))
    }

    fn severity(&self) -> Option<miette::Severity> {
        Some(miette::Severity::Warning)
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        Some(&self.source)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let text = (!self.label.text.is_empty()).then(|| self.label.text.clone());
        let span = (self.label.loc.offset, self.label.loc.len);
        Some(Box::new(std::iter::once(
            LabeledSpan::new_primary_with_span(text, span),
        )))
    }
}

//! The error of the language: one message, a caret in the source, and what to do.

use std::fmt;

use miette::{Diagnostic, LabeledSpan, NamedSource, SourceCode};

use crate::pipeline::Span;

/// The category of a [`LangError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The text does not follow the grammar.
    Syntax,
    /// The expression has no stage (nothing but whitespace and comments).
    Empty,
    /// A positional argument written after a named one.
    PositionalAfterNamed,
    /// No operator has this name.
    UnknownOperator,
    /// Several plugin operators share this unqualified name.
    AmbiguousOperator,
    /// `name = value` where the operator has no parameter `name`.
    UnknownParameter,
    /// The same parameter given twice.
    DuplicateArgument,
    /// More positional arguments than the operator has parameters.
    TooManyArguments,
    /// A parameter without default that was not given.
    MissingArgument,
    /// A value of the wrong sort: a string for a number, a variable for a choice,
    /// an operator call outside `ties(...)`, ...
    ArgumentType,
    /// A number outside the parameter's range.
    OutOfRange,
    /// An identifier that is not one of a choice parameter's options.
    UnknownChoice,
    /// A gradient with fewer than two numbers.
    ShortGradient,
    /// A stage that does not accept the type flowing into it.
    StageMismatch,
    /// The pipeline does not end with a merged delta.
    UnfinishedPipeline,
    /// A part of `ties(...)` that is not the stage that position needs.
    TiesPart,
    /// A stage given another number of fine-tuned models than its operator takes.
    ModelCount,
    /// Model weights given to a pipeline no stage of which reads them.
    IgnoredWeights,
    /// An expression longer, or of more stages, than the language allows
    /// ([`crate::MAX_SOURCE_LEN`], [`crate::MAX_STAGES`]).
    TooLarge,
}

impl ErrorKind {
    /// A stable code for the category, shown by miette, e.g. `reefknot::unknown_operator`.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::Syntax => "reefknot::syntax",
            ErrorKind::Empty => "reefknot::empty",
            ErrorKind::PositionalAfterNamed => "reefknot::positional_after_named",
            ErrorKind::UnknownOperator => "reefknot::unknown_operator",
            ErrorKind::AmbiguousOperator => "reefknot::ambiguous_operator",
            ErrorKind::UnknownParameter => "reefknot::unknown_parameter",
            ErrorKind::DuplicateArgument => "reefknot::duplicate_argument",
            ErrorKind::TooManyArguments => "reefknot::too_many_arguments",
            ErrorKind::MissingArgument => "reefknot::missing_argument",
            ErrorKind::ArgumentType => "reefknot::argument_type",
            ErrorKind::OutOfRange => "reefknot::out_of_range",
            ErrorKind::UnknownChoice => "reefknot::unknown_choice",
            ErrorKind::ShortGradient => "reefknot::short_gradient",
            ErrorKind::StageMismatch => "reefknot::stage_mismatch",
            ErrorKind::UnfinishedPipeline => "reefknot::unfinished_pipeline",
            ErrorKind::TiesPart => "reefknot::ties_part",
            ErrorKind::ModelCount => "reefknot::model_count",
            ErrorKind::IgnoredWeights => "reefknot::ignored_weights",
            ErrorKind::TooLarge => "reefknot::too_large",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// The source text an error points into, optionally with a name (a file, or
/// `recipe.yaml: merge`).
#[derive(Clone, Debug)]
enum Source {
    Plain(String),
    Named(NamedSource<String>),
}

impl Source {
    fn text(&self) -> &str {
        match self {
            Source::Plain(s) => s,
            Source::Named(n) => n.inner(),
        }
    }
}

/// An error in a merge expression: what is wrong, where (a span of the source, shown
/// with a caret), and what to do about it.
///
/// It implements [`miette::Diagnostic`]: render it with a miette handler to show the
/// source line, the caret and the help text. [`LangError::offset`] relocates it into
/// a larger file (the YAML recipe the expression was taken from).
#[derive(Clone, Debug, thiserror::Error)]
#[error("{}", .0.message)]
pub struct LangError(Box<Inner>);

/// The fields of a [`LangError`], boxed to keep `Result<_, LangError>` small.
#[derive(Clone, Debug)]
struct Inner {
    kind: ErrorKind,
    message: String,
    span: Span,
    label: String,
    secondary: Vec<(Span, String)>,
    help: Option<String>,
    src: Source,
}

impl LangError {
    /// A new error of `kind` at `span` of `source`; the label under the caret starts
    /// empty, see [`LangError::with_label`].
    pub(crate) fn new(
        kind: ErrorKind,
        source: &str,
        span: Span,
        message: impl Into<String>,
    ) -> Self {
        LangError(Box::new(Inner {
            kind,
            message: message.into(),
            span,
            label: String::new(),
            secondary: Vec::new(),
            help: None,
            src: Source::Plain(source.to_string()),
        }))
    }

    /// Sets the text shown under the caret.
    pub(crate) fn with_label(mut self, label: impl Into<String>) -> Self {
        self.0.label = label.into();
        self
    }

    /// Sets the help text (what to do).
    pub(crate) fn with_help(mut self, help: impl Into<String>) -> Self {
        self.0.help = Some(help.into());
        self
    }

    /// Adds a secondary labelled span (e.g. where the models were combined).
    pub(crate) fn with_note_at(mut self, span: Span, label: impl Into<String>) -> Self {
        self.0.secondary.push((span, label.into()));
        self
    }

    /// Names the source, e.g. `recipe.yaml: merge`; renderers show it above the snippet.
    pub fn with_source_name(mut self, name: impl AsRef<str>) -> Self {
        let text = match std::mem::replace(&mut self.0.src, Source::Plain(String::new())) {
            Source::Plain(s) => s,
            Source::Named(n) => n.inner().clone(),
        };
        self.0.src = Source::Named(NamedSource::new(name, text));
        self
    }

    /// Relocates the error into a larger text: every span moves `by` bytes further,
    /// and the source becomes `full_source` named `name`.
    ///
    /// The recipe layer uses it when the expression was taken from byte `by` of a YAML
    /// file, so that the caret lands in the file itself.
    pub fn offset(mut self, by: usize, full_source: String, name: impl AsRef<str>) -> Self {
        let shift = |s: Span| Span::new(s.start + by, s.end + by);
        self.0.span = shift(self.0.span);
        for (span, _) in &mut self.0.secondary {
            *span = shift(*span);
        }
        self.0.src = Source::Named(NamedSource::new(name, full_source));
        self
    }

    /// The category of the error.
    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    /// The main message (one line, no source excerpt).
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// The span the caret points at.
    pub fn span(&self) -> Span {
        self.0.span
    }

    /// The text shown under the caret.
    pub fn label(&self) -> &str {
        &self.0.label
    }

    /// What to do about it, if there is advice.
    pub fn help_text(&self) -> Option<&str> {
        self.0.help.as_deref()
    }

    /// Other spans the error points at, with their labels.
    pub fn notes(&self) -> &[(Span, String)] {
        &self.0.secondary
    }

    /// The source text the spans index into.
    pub fn source_text(&self) -> &str {
        self.0.src.text()
    }

    /// The source's name, if one was given.
    pub fn source_name(&self) -> Option<&str> {
        match &self.0.src {
            Source::Plain(_) => None,
            Source::Named(n) => Some(n.name()),
        }
    }
}

impl Diagnostic for LangError {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(self.0.kind.code()))
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.0
            .help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display + 'a>)
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        Some(match &self.0.src {
            Source::Plain(s) => s as &dyn SourceCode,
            Source::Named(n) => n as &dyn SourceCode,
        })
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let label = (!self.0.label.is_empty()).then(|| self.0.label.clone());
        let primary = LabeledSpan::new_primary_with_span(label, to_miette(self.0.span));
        let notes =
            self.0.secondary.iter().map(|(span, text)| {
                LabeledSpan::new_with_span(Some(text.clone()), to_miette(*span))
            });
        Some(Box::new(std::iter::once(primary).chain(notes)))
    }
}

fn to_miette(span: Span) -> miette::SourceSpan {
    (span.start, span.len()).into()
}

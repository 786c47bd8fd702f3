//! The reefknot merge language: grammar, parser, operator specifications and the
//! type checker.
//!
//! An expression such as `ties(trim(0.2), elect, disjoint) |> dare(0.9)` is
//! [`parse`]d into a syntax tree ([`ast`]) and [`compile`]d against a [`Catalog`] of
//! operator specifications into a checked [`Pipeline`]: every name resolved, every
//! argument bound, range-checked and defaulted, `ties(...)` expanded, and the types
//! shown to flow from the stack of task vectors ([`Ty::Stack`]) to one merged delta
//! ([`Ty::Delta`]). Anything wrong becomes a [`LangError`] that points at the
//! offending span and says what to do.
//!
//! Architecture invariant: this crate never touches tensor data.
//!
//! # Example
//!
//! ```
//! use reefknot_lang::{
//!     compile, parse, Catalog, DefaultValue, Lookup, Models, OpSpec, ParamKind, ParamSpec,
//!     Signature, Ty, TIES,
//! };
//!
//! static TRIM: OpSpec = OpSpec {
//!     name: "trim",
//!     aliases: &["topk"],
//!     signatures: &[
//!         Signature::new(Ty::Stack, Ty::Stack),
//!         Signature::new(Ty::Delta, Ty::Delta),
//!     ],
//!     params: &[ParamSpec {
//!         name: "k",
//!         kind: ParamKind::Number {
//!             min: reefknot_lang::Bound::Inclusive(0.0),
//!             max: reefknot_lang::Bound::Unbounded,
//!         },
//!         default: Some(DefaultValue::Number(0.2)),
//!         doc: "fraction of entries kept",
//!     }],
//!     models: Models::ANY,
//!     weighted: true,
//!     summary: "keep the largest entries",
//!     doc: "",
//! };
//! static ELECT: OpSpec = OpSpec {
//!     name: "elect",
//!     aliases: &[],
//!     signatures: &[Signature::new(Ty::Stack, Ty::Voted)],
//!     params: &[ParamSpec {
//!         name: "by",
//!         kind: ParamKind::Choice(&["mass", "count"]),
//!         default: Some(DefaultValue::Choice("mass")),
//!         doc: "how the sign is elected",
//!     }],
//!     models: Models::ANY,
//!     weighted: true,
//!     summary: "elect a sign per element",
//!     doc: "",
//! };
//! static DISJOINT: OpSpec = OpSpec {
//!     name: "disjoint",
//!     aliases: &[],
//!     signatures: &[Signature::new(Ty::Voted, Ty::Delta)],
//!     params: &[],
//!     models: Models::ANY,
//!     weighted: true,
//!     summary: "mean of the entries that agree with the elected sign",
//!     doc: "",
//! };
//!
//! /// A catalog of three built-ins and the `ties` sugar.
//! struct Builtins;
//!
//! impl Catalog for Builtins {
//!     fn lookup(&self, name: &str) -> Lookup {
//!         for spec in [&TRIM, &ELECT, &DISJOINT, &TIES] {
//!             if spec.name == name || spec.aliases.contains(&name) {
//!                 return Lookup::Found { qualified: spec.name.to_string(), spec };
//!             }
//!         }
//!         Lookup::NotFound
//!     }
//!
//!     fn names(&self) -> Vec<String> {
//!         ["trim", "topk", "elect", "disjoint", "ties"].map(String::from).to_vec()
//!     }
//! }
//!
//! // The syntax tree keeps what was written, with spans.
//! let ast = parse("ties(topk(0.3), elect(count), disjoint)")?;
//! assert_eq!(ast.stages[0].name.text, "ties");
//!
//! // Compiling resolves aliases, expands the sugar and fills the defaults; the
//! // Display of a pipeline is its canonical form.
//! let pipeline = compile("ties(topk(0.3), elect(count), disjoint)", &Builtins)?;
//! assert_eq!(
//!     pipeline.to_string(),
//!     "trim(k=0.3) |> elect(by=count) |> disjoint"
//! );
//! assert_eq!(pipeline.output(), Ty::Delta);
//!
//! // Errors point at the span and say what to do.
//! let err = compile("trim(0.2) |> disjoint", &Builtins).unwrap_err();
//! assert_eq!(
//!     err.message(),
//!     "`disjoint` needs an elected sign (Voted) but receives the stack of task vectors (Stack)"
//! );
//! assert_eq!(err.span(), reefknot_lang::Span::new(13, 21));
//! assert_eq!(err.help_text(), Some("put `elect` before it: `elect |> disjoint`"));
//! # Ok::<(), reefknot_lang::LangError>(())
//! ```
//!
//! # The language
//!
//! ```text
//! pipeline := stage ("|>" stage)*
//! stage    := NAME | NAME "(" [arg ("," arg)* [","]] ")"
//! arg      := NAME "=" value | value            # positional first, then named
//! value    := NUMBER | STRING | NAME | "$" NAME | "[" NUMBER ("," NUMBER)* [","] "]" | stage
//! ```
//!
//! - Whitespace and newlines are free; `#` starts a comment that runs to the end of
//!   the line.
//! - `NAME` is an identifier (`[A-Za-z_][A-Za-z0-9_]*`) or identifiers joined by `::`
//!   (`plugin::op`).
//! - `NUMBER`: an optional sign, digits with an optional fraction, or a fraction
//!   alone, and an optional exponent: `1`, `-0.5`, `+2`, `.5`, `1e-12`, `2.5E3`.
//!   `5.` (a point without digits after it), `inf`, `nan`, `0x10` and `1_000` are
//!   not numbers. A literal beyond the range of `f32` (about 3.4e38), which merges
//!   compute in, is an error.
//! - `STRING`: double quotes, on one line, with the escapes `\\ \" \' \n \r \t \0`
//!   and `\u{hex}`.
//! - A trailing comma is accepted in argument lists and gradients
//!   (`ties(trim(0.2), elect, disjoint,)`), so that one argument per line reads well.
//! - A stage as an argument value is only allowed in `ties(...)` (see [`TIES`]).
//!
//! The grammar is `grammar/merge.pest` at the root of the repository.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod ast;
mod check;
mod clip;
mod error;
mod parser;
pub mod pipeline;
pub mod spec;
mod sugar;
mod suggest;

pub use clip::Clipped;
pub use error::{ErrorKind, LangError};
pub use parser::{MAX_SOURCE_LEN, MAX_STAGES};
pub use pipeline::{Arg, ArgValue, Call, Pipeline, Span};
pub use spec::{
    Bound, Catalog, DefaultValue, Lookup, Models, OpSpec, ParamKind, ParamSpec, Signature, Ty,
};
pub use sugar::TIES;

/// Parses an expression into its syntax tree, without resolving names or checking
/// anything but the syntax.
///
/// Errors: [`ErrorKind::Syntax`] (with the expected tokens in words),
/// [`ErrorKind::Empty`] for an expression with no stage, and
/// [`ErrorKind::PositionalAfterNamed`].
pub fn parse(source: &str) -> Result<ast::Pipeline, LangError> {
    parser::parse(source)
}

/// Parses and checks an expression against `catalog`: the checked [`Pipeline`] the
/// engine runs, or the first error found (reading left to right).
///
/// Checking resolves each operator name (aliases and `plugin::op` included), expands
/// `ties(...)`, binds the arguments to the operator's parameters (positional, then
/// named), checks each value's kind and range, fills the defaults, and picks each
/// stage's signature from the type flowing into it, starting from [`Ty::Stack`] and
/// ending on [`Ty::Delta`].
pub fn compile(source: &str, catalog: &dyn Catalog) -> Result<Pipeline, LangError> {
    let ast = parser::parse(source)?;
    check::Checker { source, catalog }.pipeline(&ast)
}

/// Whether some stage of `pipeline` reads the models' weights ([`OpSpec::weighted`]).
pub fn reads_weights(pipeline: &Pipeline) -> bool {
    pipeline.stages.iter().any(|s| s.spec.weighted)
}

/// Refuses `pipeline` (compiled from `source`) when no stage reads the models' weights,
/// which the recipe sets (`given` says how, e.g. "model 2 has weight 0.5"); the error
/// points at the stage that combines the models.
pub fn check_weights(source: &str, pipeline: &Pipeline, given: &str) -> Result<(), LangError> {
    if reads_weights(pipeline) {
        return Ok(());
    }
    let stage = pipeline
        .stages
        .iter()
        .find(|s| s.signature.input == Ty::Stack && s.signature.output != Ty::Stack)
        .or(pipeline.stages.last())
        .expect("a checked pipeline has a stage");
    Err(LangError::new(
        ErrorKind::IgnoredWeights,
        source,
        stage.span,
        format!("`{}` ignores the models' weights, but {given}", stage.op),
    )
    .with_label("weighs the models its own way")
    .with_help(format!(
        "remove the `weight:`s (they would change nothing), or combine with an operator that \
         weighs models by them, such as `mean`, `sum` or `multislerp` (see `reefknot ops {}`)",
        stage.op
    )))
}

/// Checks that every stage of `pipeline` (compiled from `source`) takes `models`
/// fine-tuned models, as its operator's [`OpSpec::models`] says; the error points at
/// the first stage that does not.
pub fn check_models(source: &str, pipeline: &Pipeline, models: usize) -> Result<(), LangError> {
    let Some(stage) = pipeline
        .stages
        .iter()
        .find(|s| !s.spec.models.admits(models))
    else {
        return Ok(());
    };
    let noun = if models == 1 { "model" } else { "models" };
    Err(LangError::new(
        ErrorKind::ModelCount,
        source,
        stage.span,
        format!(
            "`{}` takes {}, but the recipe merges {models} fine-tuned {noun}",
            stage.op, stage.spec.models
        ),
    )
    .with_label(format!("takes {}", stage.spec.models))
    .with_help(match stage.spec.models.max {
        Some(1) => format!(
            "`{}` merges the base with one fine-tune: list one model under `models:` (the \
             base is `base:`), or merge several with `mean`, `sum` or `ties`",
            stage.op
        ),
        _ => format!(
            "list {} under `models:`, besides the base",
            stage.spec.models
        ),
    }))
}

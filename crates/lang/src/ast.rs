//! The syntax tree of an expression, as written: before names are resolved, sugar is
//! expanded or arguments are checked.
//!
//! Every node carries the [`Span`] (byte range in the source) it was parsed from.
//! [`crate::parse`] builds it; [`crate::compile`] checks it into a
//! [`crate::Pipeline`]. The [`fmt::Display`] of a node writes it back as source text
//! (normalised spacing, comments dropped), which parses to the same tree.

use std::fmt;

use crate::pipeline::Span;
use crate::spec::format_number;

/// A whole expression: stages joined by `|>`.
#[derive(Clone, Debug, PartialEq)]
pub struct Pipeline {
    /// The stages, in order (never empty).
    pub stages: Vec<Stage>,
    /// From the first character of the first stage to the last of the last stage.
    pub span: Span,
}

impl Pipeline {
    /// The plugin namespaces its operator names use (`tall` for `tall::consensus`), in
    /// order of first use, each once; nested calls (`ties(mycorp::trim(0.2), ...)`)
    /// included.
    pub fn namespaces(&self) -> Vec<&str> {
        fn visit<'a>(stage: &'a Stage, out: &mut Vec<&'a str>) {
            note(&stage.name, out);
            for arg in stage.args() {
                match &arg.value {
                    Value::Stage(inner) => visit(inner, out),
                    Value::Name(name) => note(name, out),
                    _ => {}
                }
            }
        }
        fn note<'a>(name: &'a Name, out: &mut Vec<&'a str>) {
            if let Some((ns, _)) = name.text.split_once("::") {
                if !out.contains(&ns) {
                    out.push(ns);
                }
            }
        }
        let mut out = Vec::new();
        for stage in &self.stages {
            visit(stage, &mut out);
        }
        out
    }
}

/// One stage: `name` or `name(args)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Stage {
    /// The operator name as written (plain, alias or `plugin::op`).
    pub name: Name,
    /// The arguments; `None` when written without parentheses (`elect`), `Some` (maybe
    /// empty) when written with them (`elect()`, `elect(count)`).
    pub args: Option<Vec<Arg>>,
    /// The name and its parenthesised arguments.
    pub span: Span,
}

impl Stage {
    /// The arguments, empty when there are no parentheses.
    pub fn args(&self) -> &[Arg] {
        self.args.as_deref().unwrap_or(&[])
    }
}

/// A name: an identifier, or identifiers joined by `::`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Name {
    /// The text, e.g. `trim` or `tall::consensus`.
    pub text: String,
    /// Where it is written.
    pub span: Span,
}

/// One argument: `value` (positional) or `name = value` (named).
#[derive(Clone, Debug, PartialEq)]
pub struct Arg {
    /// The parameter name, for a named argument.
    pub name: Option<Name>,
    /// The value.
    pub value: Value,
    /// The whole argument (name, `=` and value).
    pub span: Span,
}

/// A number literal.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Number {
    /// Its value (always finite).
    pub value: f64,
    /// Where it is written.
    pub span: Span,
}

/// An argument value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `0.2`, `-1`, `1e-12`.
    Number(Number),
    /// `"text"`, with its escapes resolved.
    Str {
        /// The text between the quotes, unescaped.
        value: String,
        /// The literal, quotes included.
        span: Span,
    },
    /// A bare name: `mass`, `true`, or an operator without arguments (`elect`).
    Name(Name),
    /// `$name`.
    Var {
        /// The name after the `$`.
        name: String,
        /// The `$` and the name.
        span: Span,
    },
    /// `[0.1, 0.5]`: at least one number (the checker asks for two).
    Gradient {
        /// The numbers.
        items: Vec<Number>,
        /// The brackets and what is between them.
        span: Span,
    },
    /// An operator call with parentheses, e.g. `trim(0.2)` inside `ties(...)`.
    Stage(Stage),
}

impl Value {
    /// Where the value is written.
    pub fn span(&self) -> Span {
        match self {
            Value::Number(n) => n.span,
            Value::Str { span, .. } | Value::Var { span, .. } | Value::Gradient { span, .. } => {
                *span
            }
            Value::Name(n) => n.span,
            Value::Stage(s) => s.span,
        }
    }
}

impl fmt::Display for Pipeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, stage) in self.stages.iter().enumerate() {
            if i > 0 {
                f.write_str(" |> ")?;
            }
            write!(f, "{stage}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name.text)?;
        if let Some(args) = &self.args {
            f.write_str("(")?;
            for (i, arg) in args.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{arg}")?;
            }
            f.write_str(")")?;
        }
        Ok(())
    }
}

impl fmt::Display for Arg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(name) = &self.name {
            write!(f, "{}=", name.text)?;
        }
        write!(f, "{}", self.value)
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Number(n) => f.write_str(&format_number(n.value)),
            Value::Str { value, .. } => write!(f, "{value:?}"),
            Value::Name(n) => f.write_str(&n.text),
            Value::Var { name, .. } => write!(f, "${name}"),
            Value::Gradient { items, .. } => {
                f.write_str("[")?;
                for (i, n) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    f.write_str(&format_number(n.value))?;
                }
                f.write_str("]")
            }
            Value::Stage(s) => write!(f, "{s}"),
        }
    }
}

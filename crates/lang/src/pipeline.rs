//! A type-checked pipeline: what the engine executes.
//!
//! Produced by [`crate::compile`]. Every stage names a known operator, has picked one
//! of its signatures, and carries one argument per parameter of the operator (in the
//! operator's order, defaults filled in). Variables and gradients are kept symbolic:
//! the engine resolves them per tensor and per model, before reading tensor data.

use std::fmt;

use crate::spec::{format_number, OpSpec, ParamSpec, Signature, Ty};

/// A byte range in the expression source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Span {
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
}

impl Span {
    /// The range `start..end`.
    pub const fn new(start: usize, end: usize) -> Self {
        Span { start, end }
    }

    /// Its length in bytes.
    pub const fn len(&self) -> usize {
        self.end - self.start
    }

    /// Whether it covers no byte.
    pub const fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

/// The value of one argument after checking.
#[derive(Clone, Debug, PartialEq)]
pub enum ArgValue {
    /// A number.
    Number(f64),
    /// A gradient over layer depth (at least two numbers).
    Gradient(Vec<f64>),
    /// `$name`: resolved later from the model's or the recipe's `params`.
    Var(String),
    /// An identifier of a `Choice` parameter (the spec's own string).
    Choice(&'static str),
    /// A boolean.
    Bool(bool),
    /// A string literal.
    Text(String),
}

impl fmt::Display for ArgValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgValue::Number(x) => f.write_str(&format_number(*x)),
            ArgValue::Gradient(v) => {
                f.write_str("[")?;
                for (i, x) in v.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    f.write_str(&format_number(*x))?;
                }
                f.write_str("]")
            }
            ArgValue::Var(name) => write!(f, "${name}"),
            ArgValue::Choice(c) => f.write_str(c),
            ArgValue::Bool(b) => write!(f, "{b}"),
            ArgValue::Text(t) => write!(f, "{t:?}"),
        }
    }
}

/// One argument of a checked stage.
#[derive(Clone, Debug, PartialEq)]
pub struct Arg {
    /// The parameter it binds.
    pub param: &'static ParamSpec,
    /// Its value.
    pub value: ArgValue,
    /// Where it was written; `None` when the default was used.
    pub span: Option<Span>,
}

/// One checked stage of a pipeline.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    /// The canonical operator name (`trim`, or `plugin::op` for plugin operators),
    /// never an alias.
    pub op: String,
    /// The operator's definition.
    pub spec: &'static OpSpec,
    /// The signature this stage uses (picked by the type flowing into it).
    pub signature: Signature,
    /// One argument per parameter of `spec`, in `spec.params` order.
    pub args: Vec<Arg>,
    /// The stage in the source (for `ties(...)` sugar: the whole `ties(...)` call).
    pub span: Span,
}

impl Call {
    /// The argument bound to parameter `name`.
    pub fn arg(&self, name: &str) -> Option<&Arg> {
        self.args.iter().find(|a| a.param.name == name)
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.op)?;
        if self.args.is_empty() {
            return Ok(());
        }
        f.write_str("(")?;
        for (i, a) in self.args.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}={}", a.param.name, a.value)?;
        }
        f.write_str(")")
    }
}

/// A checked pipeline: starts from the stack of task vectors, ends with a delta.
#[derive(Clone, Debug, PartialEq)]
pub struct Pipeline {
    /// The stages, in order (`ties(...)` already expanded).
    pub stages: Vec<Call>,
}

impl Pipeline {
    /// The type flowing out of the last stage (always [`Ty::Delta`] for a checked pipeline).
    pub fn output(&self) -> Ty {
        self.stages.last().map_or(Ty::Stack, |s| s.signature.output)
    }

    /// Every variable the pipeline reads, in order of first use.
    pub fn variables(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for stage in &self.stages {
            for arg in &stage.args {
                if let ArgValue::Var(name) = &arg.value {
                    if !out.contains(&name.as_str()) {
                        out.push(name);
                    }
                }
            }
        }
        out
    }
}

/// The canonical form: every stage with every argument, e.g.
/// `trim(k=0.2) |> elect(by=mass) |> disjoint(by=mean)`.
impl fmt::Display for Pipeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.stages.iter().enumerate() {
            if i > 0 {
                f.write_str(" |> ")?;
            }
            write!(f, "{s}")?;
        }
        Ok(())
    }
}

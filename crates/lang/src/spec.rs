//! Operator specifications: the one definition of an operator's name, parameters,
//! types and documentation.
//!
//! The parser's checks, `reefknot ops` and the language reference are all driven by
//! these values. Built-in operators declare them as `static`s; plugin operators build
//! them from the plugin's descriptor table (whose strings live as long as the process,
//! because plugins are never unloaded).

use std::fmt;

/// The three kinds of value that flow through a pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Ty {
    /// The `T` task vectors `δ_i = θ_i − θ_base`, one per fine-tune.
    Stack,
    /// The stack plus one elected sign per element.
    Voted,
    /// One merged delta `Δ`.
    Delta,
}

impl Ty {
    /// The name users see in signatures and messages.
    pub fn name(self) -> &'static str {
        match self {
            Ty::Stack => "Stack",
            Ty::Voted => "Voted",
            Ty::Delta => "Delta",
        }
    }
}

impl fmt::Display for Ty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One way an operator can be used: the type it takes and the type it returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Signature {
    /// What the stage receives.
    pub input: Ty,
    /// What the stage hands on.
    pub output: Ty,
}

impl Signature {
    /// A signature from `input` to `output`.
    pub const fn new(input: Ty, output: Ty) -> Self {
        Signature { input, output }
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}→{}", self.input, self.output)
    }
}

/// An end of a numeric range.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Bound {
    /// No limit on this side.
    Unbounded,
    /// The value itself is allowed.
    Inclusive(f64),
    /// The value itself is not allowed.
    Exclusive(f64),
}

impl Bound {
    fn admits_above(self, x: f64) -> bool {
        match self {
            Bound::Unbounded => true,
            Bound::Inclusive(b) => x >= b,
            Bound::Exclusive(b) => x > b,
        }
    }

    fn admits_below(self, x: f64) -> bool {
        match self {
            Bound::Unbounded => true,
            Bound::Inclusive(b) => x <= b,
            Bound::Exclusive(b) => x < b,
        }
    }
}

/// What values a parameter accepts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ParamKind {
    /// A real number in `[min, max]` (each end inclusive, exclusive or open).
    /// A number parameter also accepts a `$variable` and a gradient `[a, b, ...]`.
    Number {
        /// Lower end.
        min: Bound,
        /// Upper end.
        max: Bound,
    },
    /// One identifier among a fixed set, e.g. `rescale = inverse | l1 | none`.
    Choice(&'static [&'static str]),
    /// `true` or `false` (written as the identifiers `true` / `false`).
    Bool,
    /// A string literal (for plugin operators that take a label or a path).
    Text,
}

impl ParamKind {
    /// A number in the closed interval `[min, max]`.
    pub const fn closed(min: f64, max: f64) -> Self {
        ParamKind::Number {
            min: Bound::Inclusive(min),
            max: Bound::Inclusive(max),
        }
    }

    /// Any number.
    pub const fn any_number() -> Self {
        ParamKind::Number {
            min: Bound::Unbounded,
            max: Bound::Unbounded,
        }
    }

    /// Whether `x` lies in the range of a `Number` parameter (false for other kinds).
    /// Merges compute in f32, so `x` must be finite as an f32 too.
    pub fn admits(&self, x: f64) -> bool {
        match *self {
            ParamKind::Number { min, max } => {
                (x as f32).is_finite() && min.admits_above(x) && max.admits_below(x)
            }
            _ => false,
        }
    }

    /// A short human description of the accepted values, e.g. `a number in [0, 1)`.
    pub fn describe(&self) -> String {
        match *self {
            ParamKind::Number { min, max } => {
                let lo = match min {
                    Bound::Unbounded => "(-∞".to_string(),
                    Bound::Inclusive(b) => format!("[{b}"),
                    Bound::Exclusive(b) => format!("({b}"),
                };
                let hi = match max {
                    Bound::Unbounded => "∞)".to_string(),
                    Bound::Inclusive(b) => format!("{b}]"),
                    Bound::Exclusive(b) => format!("{b})"),
                };
                if matches!((min, max), (Bound::Unbounded, Bound::Unbounded)) {
                    "a number".to_string()
                } else {
                    format!("a number in {lo}, {hi}")
                }
            }
            ParamKind::Choice(options) => {
                let quoted: Vec<String> = options.iter().map(|o| format!("`{o}`")).collect();
                format!("one of {}", quoted.join(", "))
            }
            ParamKind::Bool => "`true` or `false`".to_string(),
            ParamKind::Text => "a string".to_string(),
        }
    }
}

/// A parameter's default value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DefaultValue {
    /// A number.
    Number(f64),
    /// An identifier of a `Choice` parameter.
    Choice(&'static str),
    /// A boolean.
    Bool(bool),
    /// A string.
    Text(&'static str),
}

impl fmt::Display for DefaultValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DefaultValue::Number(x) => f.write_str(&format_number(*x)),
            DefaultValue::Choice(c) => f.write_str(c),
            DefaultValue::Bool(b) => write!(f, "{b}"),
            DefaultValue::Text(t) => write!(f, "{t:?}"),
        }
    }
}

/// Formats a number the way a user would write it: `0.2`, `1e-12`, `100`.
pub fn format_number(x: f64) -> String {
    let a = x.abs();
    if a != 0.0 && !(1e-4..1e9).contains(&a) {
        format!("{x:e}")
    } else {
        format!("{x}")
    }
}

/// One parameter of an operator.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ParamSpec {
    /// Its name, as written in `name = value`.
    pub name: &'static str,
    /// What it accepts.
    pub kind: ParamKind,
    /// Its default; `None` makes it required.
    pub default: Option<DefaultValue>,
    /// One line of documentation.
    pub doc: &'static str,
}

/// How many fine-tuned models (besides the base) a stage of an operator takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Models {
    /// The fewest.
    pub min: usize,
    /// The most, if bounded.
    pub max: Option<usize>,
}

impl Models {
    /// Any number of fine-tunes (at least one).
    pub const ANY: Models = Models { min: 1, max: None };

    /// Exactly `n` fine-tunes.
    pub const fn exactly(n: usize) -> Models {
        Models {
            min: n,
            max: Some(n),
        }
    }

    /// At least `n` fine-tunes.
    pub const fn at_least(n: usize) -> Models {
        Models { min: n, max: None }
    }

    /// Whether `n` fine-tunes will do.
    pub fn admits(&self, n: usize) -> bool {
        n >= self.min && self.max.is_none_or(|m| n <= m)
    }

    /// Whether the operator takes any number of fine-tunes.
    pub fn is_any(&self) -> bool {
        *self == Models::ANY
    }
}

impl fmt::Display for Models {
    /// `exactly 1 fine-tuned model`, `at least 2 fine-tuned models`, `1 to 3 …`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let noun = |n: usize| if n == 1 { "model" } else { "models" };
        match self.max {
            Some(m) if m == self.min => write!(f, "exactly {m} fine-tuned {}", noun(m)),
            Some(m) => write!(f, "{} to {m} fine-tuned models", self.min),
            None if self.min <= 1 => f.write_str("any number of fine-tuned models"),
            None => write!(f, "at least {} fine-tuned models", self.min),
        }
    }
}

/// The single definition of an operator.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OpSpec {
    /// The name used in expressions (for plugin operators, without the namespace).
    pub name: &'static str,
    /// Other names accepted for it (e.g. `topk` for `trim`).
    pub aliases: &'static [&'static str],
    /// The ways it can be used; a stage picks the one whose input matches.
    pub signatures: &'static [Signature],
    /// Its parameters, in positional order.
    pub params: &'static [ParamSpec],
    /// How many fine-tunes a stage takes (`slerp`: exactly one); a recipe that gives
    /// another number is refused before any tensor is read.
    pub models: Models,
    /// Whether a stage reads the models' weights `w_i` (`sum`, `elect`, `disjoint`,
    /// …; not the sparsifiers, nor methods that weigh models their own way, such as
    /// `karcher`). A recipe that sets weights no stage reads is refused.
    pub weighted: bool,
    /// One line for `reefknot ops`.
    pub summary: &'static str,
    /// Full documentation (Markdown), for `reefknot ops NAME` and the reference.
    pub doc: &'static str,
}

impl OpSpec {
    /// The parameter called `name`, if any.
    pub fn param(&self, name: &str) -> Option<&ParamSpec> {
        self.params.iter().find(|p| p.name == name)
    }

    /// The signature whose input is `input`, if any.
    pub fn signature_for(&self, input: Ty) -> Option<Signature> {
        self.signatures.iter().copied().find(|s| s.input == input)
    }

    /// `trim(k=0.2)`-style rendering of the parameters with their defaults.
    pub fn usage(&self) -> String {
        if self.params.is_empty() {
            return self.name.to_string();
        }
        let params: Vec<String> = self
            .params
            .iter()
            .map(|p| match p.default {
                Some(d) => format!("{}={d}", p.name),
                None => p.name.to_string(),
            })
            .collect();
        format!("{}({})", self.name, params.join(", "))
    }

    /// The signatures joined for display, e.g. `Stack→Stack, Delta→Delta`.
    pub fn signature_list(&self) -> String {
        let sigs: Vec<String> = self.signatures.iter().map(|s| s.to_string()).collect();
        sigs.join(", ")
    }
}

/// Where the checker finds operators: the built-in registry plus loaded plugins.
pub trait Catalog {
    /// Looks up an operator by the name written in the expression: a plain name,
    /// an alias, or a namespaced `plugin::op`.
    fn lookup(&self, name: &str) -> Lookup;

    /// Every name that could be written (for "did you mean" suggestions).
    fn names(&self) -> Vec<String>;
}

/// The answer of [`Catalog::lookup`].
#[derive(Clone, Debug)]
pub enum Lookup {
    /// Exactly one operator has this name. `qualified` is the canonical name
    /// (`trim`, or `tall::consensus` for a plugin operator).
    Found {
        /// The canonical name, used in plans and messages.
        qualified: String,
        /// Its definition.
        spec: &'static OpSpec,
    },
    /// Several plugin operators share this unqualified name; these are the candidates.
    Ambiguous(Vec<String>),
    /// No operator has this name.
    NotFound,
}

//! The safe side of the SDK: the [`Operator`] trait a Rust plugin implements, and the
//! `const` builders that turn it into the ABI's descriptor structs.

use std::mem::size_of;

use crate::abi::*;
use crate::call::{Input, Output};

/// The three kinds of value that flow through a pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Type {
    /// The `T` task vectors.
    Stack,
    /// The task vectors plus one elected sign per element.
    Voted,
    /// One merged delta.
    Delta,
}

impl Type {
    /// The type of an `RK_TYPE_*` value.
    pub fn from_raw(raw: u32) -> Option<Type> {
        match raw {
            RK_TYPE_STACK => Some(Type::Stack),
            RK_TYPE_VOTED => Some(Type::Voted),
            RK_TYPE_DELTA => Some(Type::Delta),
            _ => None,
        }
    }

    /// The `RK_TYPE_*` value.
    pub const fn raw(self) -> u32 {
        match self {
            Type::Stack => RK_TYPE_STACK,
            Type::Voted => RK_TYPE_VOTED,
            Type::Delta => RK_TYPE_DELTA,
        }
    }
}

/// One way an operator can be used: the five signatures of the language.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Signature {
    /// `Stack→Stack`: transforms the task vectors (a sparsifier, a mask).
    StackToStack,
    /// `Stack→Voted`: elects a sign per element.
    StackToVoted,
    /// `Voted→Delta`: combines the task vectors under the elected sign.
    VotedToDelta,
    /// `Stack→Delta`: combines the task vectors into one delta.
    StackToDelta,
    /// `Delta→Delta`: transforms the merged delta.
    DeltaToDelta,
    /// `Voted→Voted` (ABI 1.1): rewrites the task vectors and the elected signs, e.g.
    /// a mask that depends on the vote. The output has both: write every task vector
    /// ([`crate::Output::model_mut`]) and every sign ([`crate::Output::sign_mut`]).
    VotedToVoted,
}

impl Signature {
    /// Every signature, in `RK_SIG_*` bit order.
    pub const ALL: [Signature; 6] = [
        Signature::StackToStack,
        Signature::StackToVoted,
        Signature::VotedToDelta,
        Signature::StackToDelta,
        Signature::DeltaToDelta,
        Signature::VotedToVoted,
    ];

    /// The `RK_SIG_*` bit.
    pub const fn bit(self) -> u32 {
        match self {
            Signature::StackToStack => RK_SIG_STACK_STACK,
            Signature::StackToVoted => RK_SIG_STACK_VOTED,
            Signature::VotedToDelta => RK_SIG_VOTED_DELTA,
            Signature::StackToDelta => RK_SIG_STACK_DELTA,
            Signature::DeltaToDelta => RK_SIG_DELTA_DELTA,
            Signature::VotedToVoted => RK_SIG_VOTED_VOTED,
        }
    }

    /// What the stage receives.
    pub const fn input(self) -> Type {
        match self {
            Signature::StackToStack | Signature::StackToVoted | Signature::StackToDelta => {
                Type::Stack
            }
            Signature::VotedToDelta | Signature::VotedToVoted => Type::Voted,
            Signature::DeltaToDelta => Type::Delta,
        }
    }

    /// What the stage hands on.
    pub const fn output(self) -> Type {
        match self {
            Signature::StackToStack => Type::Stack,
            Signature::StackToVoted | Signature::VotedToVoted => Type::Voted,
            Signature::VotedToDelta | Signature::StackToDelta | Signature::DeltaToDelta => {
                Type::Delta
            }
        }
    }

    /// The `RK_SIG_*` bits of a list of signatures.
    pub const fn bits(list: &[Signature]) -> u32 {
        let mut bits = 0;
        let mut i = 0;
        while i < list.len() {
            bits |= list[i].bit();
            i += 1;
        }
        bits
    }
}

/// An operator's `RK_OP_*` flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Flags(pub u32);

impl Flags {
    /// Neither elementwise nor needing extra inputs: the host gathers the whole tensor
    /// (the stage's input for every element) and calls the operator once per tensor.
    pub const WHOLE_TENSOR: Flags = Flags(0);
    /// The output of element `j` depends on element `j` of the inputs only: the host
    /// calls the operator on chunks of the tensor, in parallel.
    pub const ELEMENTWISE: Flags = Flags(RK_OP_ELEMENTWISE);
    /// The call reads the base model's values.
    pub const NEEDS_BASE: Flags = Flags(RK_OP_NEEDS_BASE);
    /// The call reads each model's diagonal Fisher (the recipe must give `fisher:` files).
    pub const NEEDS_FISHER: Flags = Flags(RK_OP_NEEDS_FISHER);
    /// A `Delta→Delta` call also reads the task vectors, as the stages before the
    /// combiner left them ([`crate::Input::task`]).
    pub const NEEDS_TASKS: Flags = Flags(RK_OP_NEEDS_TASKS);

    /// Both sets of flags: `Flags::ELEMENTWISE.with(Flags::NEEDS_BASE)`.
    pub const fn with(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }
}

/// A parameter of an operator, built with `const` functions:
/// `Param::number("k", "how many tasks must agree").default(2.0).min(0.0)`.
pub type Param = RkParam;

impl RkParam {
    const fn base(name: &'static str, doc: &'static str, kind: u32) -> RkParam {
        RkParam {
            size: size_of::<RkParam>(),
            name: RkStr::new(name),
            doc: RkStr::new(doc),
            kind,
            has_default: 0,
            min_bound: RK_BOUND_NONE,
            max_bound: RK_BOUND_NONE,
            min: 0.0,
            max: 0.0,
            default_number: 0.0,
            default_bool: 0,
            reserved: 0,
            default_text: RkStr::EMPTY,
            choices: std::ptr::null(),
            choice_count: 0,
        }
    }

    /// A required number parameter (any real number until bounded).
    pub const fn number(name: &'static str, doc: &'static str) -> RkParam {
        RkParam::base(name, doc, RK_PARAM_NUMBER)
    }

    /// A required parameter taking one of `choices` (identifiers).
    pub const fn choice(
        name: &'static str,
        doc: &'static str,
        choices: &'static [RkStr],
    ) -> RkParam {
        let mut p = RkParam::base(name, doc, RK_PARAM_CHOICE);
        p.choices = choices.as_ptr();
        p.choice_count = choices.len();
        p
    }

    /// A required boolean parameter.
    pub const fn boolean(name: &'static str, doc: &'static str) -> RkParam {
        RkParam::base(name, doc, RK_PARAM_BOOL)
    }

    /// A required string parameter.
    pub const fn text(name: &'static str, doc: &'static str) -> RkParam {
        RkParam::base(name, doc, RK_PARAM_TEXT)
    }

    /// Gives a number parameter a default.
    pub const fn default(mut self, value: f64) -> RkParam {
        self.has_default = 1;
        self.default_number = value;
        self
    }

    /// Gives a choice parameter its default identifier.
    pub const fn default_choice(mut self, value: &'static str) -> RkParam {
        self.has_default = 1;
        self.default_text = RkStr::new(value);
        self
    }

    /// Gives a boolean parameter a default.
    pub const fn default_bool(mut self, value: bool) -> RkParam {
        self.has_default = 1;
        self.default_bool = value as u32;
        self
    }

    /// Gives a string parameter a default.
    pub const fn default_text(mut self, value: &'static str) -> RkParam {
        self.has_default = 1;
        self.default_text = RkStr::new(value);
        self
    }

    /// The smallest value allowed (inclusive).
    pub const fn min(mut self, value: f64) -> RkParam {
        self.min_bound = RK_BOUND_INCLUSIVE;
        self.min = value;
        self
    }

    /// A lower bound the value must exceed.
    pub const fn above(mut self, value: f64) -> RkParam {
        self.min_bound = RK_BOUND_EXCLUSIVE;
        self.min = value;
        self
    }

    /// The largest value allowed (inclusive).
    pub const fn max(mut self, value: f64) -> RkParam {
        self.max_bound = RK_BOUND_INCLUSIVE;
        self.max = value;
        self
    }

    /// An upper bound the value must stay below.
    pub const fn below(mut self, value: f64) -> RkParam {
        self.max_bound = RK_BOUND_EXCLUSIVE;
        self.max = value;
        self
    }
}

/// An operator written in Rust: its specification as associated constants and its
/// math as [`Operator::call`]. [`crate::export_plugin!`] exports a list of them.
///
/// `call` may run on several threads at once, on different chunks; it must not start
/// threads or thread pools of its own (the host does all parallelism). A panic in it is
/// caught and reported as an error naming the plugin, the operator and the tensor.
pub trait Operator {
    /// The name within the plugin (an identifier); users write `plugin::NAME`, or
    /// `NAME` alone when no built-in and no other plugin has it.
    const NAME: &'static str;
    /// One line for `reefknot ops`.
    const SUMMARY: &'static str;
    /// Full documentation (Markdown) for `reefknot ops plugin::NAME`.
    const DOC: &'static str = "";
    /// The ways it can be used (at most one per input type).
    const SIGNATURES: &'static [Signature];
    /// Its parameters, in positional order.
    const PARAMS: &'static [Param] = &[];
    /// `Flags::ELEMENTWISE` (the default) or `Flags::WHOLE_TENSOR`, combined with
    /// `NEEDS_BASE`, `NEEDS_FISHER` and `NEEDS_TASKS` as required:
    /// `Flags::WHOLE_TENSOR.with(Flags::NEEDS_BASE)`.
    const FLAGS: Flags = Flags::ELEMENTWISE;

    /// Computes the stage's output for the element range of `input` into `output`.
    /// An `Err` fails the merge with its message.
    fn call(input: &Input<'_>, output: &mut Output<'_>) -> Result<(), String>;
}

impl RkOperator {
    /// The descriptor of operator `T`, with the SDK's panic-catching entry point.
    pub const fn of<T: Operator>() -> RkOperator {
        RkOperator {
            size: size_of::<RkOperator>(),
            name: RkStr::new(T::NAME),
            summary: RkStr::new(T::SUMMARY),
            doc: RkStr::new(T::DOC),
            params: T::PARAMS.as_ptr(),
            param_count: T::PARAMS.len(),
            signatures: Signature::bits(T::SIGNATURES),
            flags: T::FLAGS.0,
            call: Some(crate::call::entry::<T>),
            data: std::ptr::null(),
        }
    }
}

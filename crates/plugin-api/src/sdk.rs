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
///
/// The builders check what they can while the plugin compiles (an operator's `PARAMS`
/// is a constant, so a failed check is a compile error, not a refusal at load time):
/// names are identifiers, `.default(..)`, `.min(..)`, `.max(..)`, `.above(..)` and
/// `.below(..)` apply to numbers, the default lies in the range, `.default_choice(..)`
/// names one of the choices, `.default_bool(..)` is for booleans and
/// `.default_text(..)` for strings.
///
/// ```
/// use reefknot_plugin_api::{Param, RkStr};
/// const MODES: &[RkStr] = &[RkStr::new("fast"), RkStr::new("exact")];
/// const OK: &[Param] = &[
///     Param::number("k", "a share").min(0.0).max(1.0).default(0.2),
///     Param::choice("mode", "how", MODES).default_choice("exact"),
///     Param::boolean("rescale", "divide by k").default_bool(false),
/// ];
/// ```
///
/// A number's default on a choice does not compile:
///
/// ```compile_fail
/// use reefknot_plugin_api::{Param, RkStr};
/// const MODES: &[RkStr] = &[RkStr::new("fast")];
/// const BAD: Param = Param::choice("mode", "how", MODES).default(1.0);
/// ```
///
/// nor does a default outside the range, or a default choice that is not a choice:
///
/// ```compile_fail
/// use reefknot_plugin_api::Param;
/// const BAD: Param = Param::number("k", "a share").default(2.0).max(1.0);
/// ```
///
/// ```compile_fail
/// use reefknot_plugin_api::{Param, RkStr};
/// const MODES: &[RkStr] = &[RkStr::new("fast")];
/// const BAD: Param = Param::choice("mode", "how", MODES).default_choice("slow");
/// ```
pub type Param = RkParam;

/// Whether `s` is an identifier, `[A-Za-z_][A-Za-z0-9_]*` (usable in `const`).
pub(crate) const fn is_identifier(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() || !(b[0].is_ascii_alphabetic() || b[0] == b'_') {
        return false;
    }
    let mut i = 1;
    while i < b.len() {
        if !(b[i].is_ascii_alphanumeric() || b[i] == b'_') {
            return false;
        }
        i += 1;
    }
    true
}

/// Whether two descriptor strings made by `RkStr::new` are equal (usable in `const`).
#[allow(unsafe_code)]
const fn same_str(a: RkStr, b: RkStr) -> bool {
    if a.len != b.len {
        return false;
    }
    if a.len == 0 {
        return true;
    }
    // SAFETY: both were made by `RkStr::new` from `&'static str`s: `len` bytes at `ptr`.
    unsafe {
        same(
            std::slice::from_raw_parts(a.ptr, a.len),
            std::slice::from_raw_parts(b.ptr, b.len),
        )
    }
}

/// Whether two strings are equal (usable in `const`).
const fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

impl RkParam {
    const fn base(name: &'static str, doc: &'static str, kind: u32) -> RkParam {
        assert!(
            is_identifier(name),
            "a parameter's name must be an identifier ([A-Za-z_][A-Za-z0-9_]*)"
        );
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
        assert!(
            !choices.is_empty(),
            "a choice parameter needs at least one choice"
        );
        let mut i = 0;
        while i < choices.len() {
            assert!(choices[i].len > 0, "a choice must not be empty");
            i += 1;
        }
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

    /// Gives a number parameter a default (a compile error on other kinds: use
    /// `default_choice`, `default_bool` or `default_text`).
    pub const fn default(mut self, value: f64) -> RkParam {
        assert!(
            self.kind == RK_PARAM_NUMBER,
            ".default(..) is for number parameters: use .default_choice, .default_bool or .default_text"
        );
        assert!(!value.is_nan(), "a default must not be NaN");
        self.has_default = 1;
        self.default_number = value;
        self.check_default_in_range()
    }

    /// Gives a choice parameter its default identifier, one of its choices.
    #[allow(unsafe_code)]
    pub const fn default_choice(mut self, value: &'static str) -> RkParam {
        assert!(
            self.kind == RK_PARAM_CHOICE,
            ".default_choice(..) is for choice parameters"
        );
        let mut found = false;
        let mut i = 0;
        while i < self.choice_count {
            // SAFETY: `choices` is the `&'static [RkStr]` given to `Param::choice`, of
            // `choice_count` elements, each made by `RkStr::new` from a `&'static str`.
            let c = unsafe { *self.choices.add(i) };
            // SAFETY: as above: `len` bytes of a `&'static str` at `ptr`.
            let bytes = unsafe { std::slice::from_raw_parts(c.ptr, c.len) };
            found |= same(bytes, value.as_bytes());
            i += 1;
        }
        assert!(
            found,
            "a choice parameter's default must be one of its choices"
        );
        self.has_default = 1;
        self.default_text = RkStr::new(value);
        self
    }

    /// Gives a boolean parameter a default.
    pub const fn default_bool(mut self, value: bool) -> RkParam {
        assert!(
            self.kind == RK_PARAM_BOOL,
            ".default_bool(..) is for boolean parameters"
        );
        self.has_default = 1;
        self.default_bool = value as u32;
        self
    }

    /// Gives a string parameter a default.
    pub const fn default_text(mut self, value: &'static str) -> RkParam {
        assert!(
            self.kind == RK_PARAM_TEXT,
            ".default_text(..) is for string parameters (a choice takes .default_choice)"
        );
        self.has_default = 1;
        self.default_text = RkStr::new(value);
        self
    }

    /// Refuses a number default outside the bounds set so far (bounds and default may
    /// be given in any order: each builder checks).
    const fn check_default_in_range(self) -> RkParam {
        if self.kind != RK_PARAM_NUMBER || self.has_default == 0 {
            return self;
        }
        let x = self.default_number;
        let low = match self.min_bound {
            RK_BOUND_INCLUSIVE => x >= self.min,
            RK_BOUND_EXCLUSIVE => x > self.min,
            _ => true,
        };
        let high = match self.max_bound {
            RK_BOUND_INCLUSIVE => x <= self.max,
            RK_BOUND_EXCLUSIVE => x < self.max,
            _ => true,
        };
        assert!(
            low && high,
            "a number parameter's default lies outside its range"
        );
        self
    }

    const fn number_only(self) -> RkParam {
        assert!(
            self.kind == RK_PARAM_NUMBER,
            "bounds (.min, .max, .above, .below) are for number parameters"
        );
        self
    }

    /// The smallest value allowed (inclusive).
    pub const fn min(self, value: f64) -> RkParam {
        let mut p = self.number_only();
        assert!(!value.is_nan(), "a bound must not be NaN");
        p.min_bound = RK_BOUND_INCLUSIVE;
        p.min = value;
        p.check_default_in_range()
    }

    /// A lower bound the value must exceed.
    pub const fn above(self, value: f64) -> RkParam {
        let mut p = self.number_only();
        assert!(!value.is_nan(), "a bound must not be NaN");
        p.min_bound = RK_BOUND_EXCLUSIVE;
        p.min = value;
        p.check_default_in_range()
    }

    /// The largest value allowed (inclusive).
    pub const fn max(self, value: f64) -> RkParam {
        let mut p = self.number_only();
        assert!(!value.is_nan(), "a bound must not be NaN");
        p.max_bound = RK_BOUND_INCLUSIVE;
        p.max = value;
        p.check_default_in_range()
    }

    /// An upper bound the value must stay below.
    pub const fn below(self, value: f64) -> RkParam {
        let mut p = self.number_only();
        assert!(!value.is_nan(), "a bound must not be NaN");
        p.max_bound = RK_BOUND_EXCLUSIVE;
        p.max = value;
        p.check_default_in_range()
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
    ///
    /// What the host would refuse at load time and a constant can show is refused
    /// here, while the plugin compiles: a name that is not an identifier, an empty or
    /// multi-line summary, no signature or two taking the same input type,
    /// `NEEDS_TASKS` without `DeltaToDelta`, two parameters of one name.
    ///
    /// ```compile_fail
    /// use reefknot_plugin_api::{Input, Operator, Output, RkOperator, Signature};
    /// struct Two;
    /// impl Operator for Two {
    ///     const NAME: &'static str = "two";
    ///     const SUMMARY: &'static str = "two signatures from a Stack";
    ///     const SIGNATURES: &'static [Signature] =
    ///         &[Signature::StackToStack, Signature::StackToDelta];
    ///     fn call(_: &Input<'_>, _: &mut Output<'_>) -> Result<(), String> { Ok(()) }
    /// }
    /// const OP: RkOperator = RkOperator::of::<Two>();
    /// ```
    pub const fn of<T: Operator>() -> RkOperator {
        assert!(
            is_identifier(T::NAME),
            "an operator's NAME must be an identifier ([A-Za-z_][A-Za-z0-9_]*)"
        );
        let summary = T::SUMMARY.as_bytes();
        assert!(!summary.is_empty(), "an operator needs a one-line SUMMARY");
        let mut i = 0;
        while i < summary.len() {
            assert!(
                summary[i] != b'\n',
                "SUMMARY is one line: put details in DOC"
            );
            i += 1;
        }
        let sigs = T::SIGNATURES;
        assert!(!sigs.is_empty(), "an operator needs at least one signature");
        let mut a = 0;
        while a < sigs.len() {
            let mut b = a + 1;
            while b < sigs.len() {
                assert!(
                    sigs[a].input().raw() != sigs[b].input().raw(),
                    "two signatures take the same input type: a stage picks its signature by its input"
                );
                b += 1;
            }
            a += 1;
        }
        if T::FLAGS.0 & RK_OP_NEEDS_TASKS != 0 {
            assert!(
                Signature::bits(T::SIGNATURES) & RK_SIG_DELTA_DELTA != 0,
                "Flags::NEEDS_TASKS is for an operator with the signature DeltaToDelta"
            );
        }
        let params = T::PARAMS;
        let mut a = 0;
        while a < params.len() {
            let mut b = a + 1;
            while b < params.len() {
                assert!(
                    !same_str(params[a].name, params[b].name),
                    "two parameters have the same name"
                );
                b += 1;
            }
            a += 1;
        }
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

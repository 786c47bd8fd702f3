//! Validation of a plugin's descriptors, and their translation into the language's
//! [`OpSpec`]s.
//!
//! Rules: every string is UTF-8; the plugin's, operators' and parameters' names are
//! identifiers (`[A-Za-z_][A-Za-z0-9_]*`, what the language can call); operator names
//! are unique within the plugin and parameter names within an operator; an operator has
//! a one-line summary, one to five signatures from the language's five with at most one
//! per input type, only known flags and an entry point; a parameter has a known kind,
//! number ranges are well formed (bounds known, finite, `min ≤ max`) and hold the
//! default, choice lists are non-empty unique identifiers holding the default, booleans
//! are 0 or 1, and reserved fields are 0.
//!
//! The translated specs are leaked once per load (plugins are never unloaded), and
//! their strings are the plugin's own static bytes.

use std::collections::HashSet;

use reefknot_lang::{Bound, DefaultValue, OpSpec, ParamKind, ParamSpec, Signature, Ty};
use reefknot_plugin_api::{
    RkCallFn, RK_BOUND_EXCLUSIVE, RK_BOUND_INCLUSIVE, RK_BOUND_NONE, RK_OP_ELEMENTWISE,
    RK_OP_NEEDS_BASE, RK_OP_NEEDS_FISHER, RK_OP_NEEDS_TASKS, RK_PARAM_BOOL, RK_PARAM_CHOICE,
    RK_PARAM_NUMBER, RK_PARAM_TEXT, RK_SIG_DELTA_DELTA, RK_SIG_STACK_DELTA, RK_SIG_STACK_STACK,
    RK_SIG_STACK_VOTED, RK_SIG_VOTED_DELTA, RK_SIG_VOTED_VOTED,
};

use crate::ffi::{Descriptor, OpData, RawOperator, RawParam, RawPlugin};

/// The signatures a plugin operator may have, with their ABI bits (`Voted→Voted` since
/// ABI 1.1).
const SIGNATURES: [(u32, Signature); 6] = [
    (RK_SIG_STACK_STACK, Signature::new(Ty::Stack, Ty::Stack)),
    (RK_SIG_STACK_VOTED, Signature::new(Ty::Stack, Ty::Voted)),
    (RK_SIG_VOTED_DELTA, Signature::new(Ty::Voted, Ty::Delta)),
    (RK_SIG_STACK_DELTA, Signature::new(Ty::Stack, Ty::Delta)),
    (RK_SIG_DELTA_DELTA, Signature::new(Ty::Delta, Ty::Delta)),
    (RK_SIG_VOTED_VOTED, Signature::new(Ty::Voted, Ty::Voted)),
];

/// Every signature bit.
const KNOWN_SIGNATURES: u32 = RK_SIG_STACK_STACK
    | RK_SIG_STACK_VOTED
    | RK_SIG_VOTED_DELTA
    | RK_SIG_STACK_DELTA
    | RK_SIG_DELTA_DELTA
    | RK_SIG_VOTED_VOTED;

const KNOWN_FLAGS: u32 =
    RK_OP_ELEMENTWISE | RK_OP_NEEDS_BASE | RK_OP_NEEDS_FISHER | RK_OP_NEEDS_TASKS;

/// A validated plugin table.
pub(crate) struct Described {
    pub name: &'static str,
    pub version: &'static str,
    pub description: &'static str,
    pub operators: Vec<DescribedOp>,
}

/// A validated operator.
pub(crate) struct DescribedOp {
    pub spec: &'static OpSpec,
    pub flags: u32,
    pub call: RkCallFn,
    pub data: OpData,
    pub descriptor: Descriptor,
}

/// Whether `s` is an identifier the language can call.
pub(crate) fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn text(bytes: &'static [u8], what: &str) -> Result<&'static str, String> {
    std::str::from_utf8(bytes).map_err(|e| {
        format!(
            "{what} is not valid UTF-8 (bytes {:?}: {e})",
            String::from_utf8_lossy(bytes)
        )
    })
}

fn identifier(bytes: &'static [u8], what: &str) -> Result<&'static str, String> {
    let s = text(bytes, what)?;
    if s.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if !is_identifier(s) {
        return Err(format!(
            "{what} `{s}` is not an identifier (letters, digits and `_`, not starting \
             with a digit)"
        ));
    }
    Ok(s)
}

/// Validates the table and builds the operators' specs.
pub(crate) fn describe(raw: RawPlugin) -> Result<Described, String> {
    let name = identifier(raw.name, "its name")?;
    let version = text(raw.version, "its version")?;
    let description = text(raw.description, "its description")?;
    if raw.operators.is_empty() {
        return Err(format!("plugin `{name}` declares no operators"));
    }
    let mut seen = HashSet::new();
    let mut operators = Vec::with_capacity(raw.operators.len());
    for (i, op) in raw.operators.into_iter().enumerate() {
        let op_name = identifier(op.name, &format!("the name of operator {}", i + 1))?;
        if !seen.insert(op_name) {
            return Err(format!(
                "two operators are named `{op_name}` (operator names must be unique in a plugin)"
            ));
        }
        let d = operator(op_name, op).map_err(|e| format!("operator `{op_name}`: {e}"))?;
        operators.push(d);
    }
    Ok(Described {
        name,
        version,
        description,
        operators,
    })
}

fn operator(name: &'static str, op: RawOperator) -> Result<DescribedOp, String> {
    let summary = text(op.summary, "its summary")?.trim();
    if summary.is_empty() {
        return Err("its summary is empty (give one line for `reefknot ops`)".into());
    }
    if summary.contains('\n') {
        return Err("its summary has several lines (put details in `doc`)".into());
    }
    let doc = text(op.doc, "its doc")?;
    if op.signatures == 0 || op.signatures & !KNOWN_SIGNATURES != 0 {
        return Err(format!(
            "its signatures {:#x} are not a non-empty set of the six RK_SIG_* bits",
            op.signatures
        ));
    }
    let signatures: Vec<Signature> = SIGNATURES
        .iter()
        .filter(|(bit, _)| op.signatures & bit != 0)
        .map(|(_, s)| *s)
        .collect();
    for ty in [Ty::Stack, Ty::Voted, Ty::Delta] {
        let same: Vec<String> = signatures
            .iter()
            .filter(|s| s.input == ty)
            .map(|s| s.to_string())
            .collect();
        if same.len() > 1 {
            return Err(format!(
                "it has several signatures taking a {ty} ({}): a stage picks its signature \
                 by its input, so keep one",
                same.join(", ")
            ));
        }
    }
    if op.flags & !KNOWN_FLAGS != 0 {
        return Err(format!(
            "unknown flags {:#x} (known: RK_OP_ELEMENTWISE, RK_OP_NEEDS_BASE, RK_OP_NEEDS_FISHER, \
             RK_OP_NEEDS_TASKS)",
            op.flags & !KNOWN_FLAGS
        ));
    }
    if op.flags & RK_OP_NEEDS_TASKS != 0 && op.signatures & RK_SIG_DELTA_DELTA == 0 {
        return Err(
            "it has RK_OP_NEEDS_TASKS without the signature Delta→Delta (the only stage \
             whose input lacks the task vectors)"
                .into(),
        );
    }
    let call = op
        .call
        .ok_or_else(|| "its entry point `call` is null".to_string())?;
    let mut seen = HashSet::new();
    let mut params = Vec::with_capacity(op.params.len());
    for (k, p) in op.params.into_iter().enumerate() {
        let pname = identifier(p.name, &format!("the name of parameter {}", k + 1))?;
        if !seen.insert(pname) {
            return Err(format!("two parameters are named `{pname}`"));
        }
        params.push(param(pname, p).map_err(|e| format!("parameter `{pname}`: {e}"))?);
    }
    let spec = OpSpec {
        name,
        aliases: &[],
        signatures: Box::leak(signatures.into_boxed_slice()),
        params: Box::leak(params.into_boxed_slice()),
        // ABI 1 has no way to declare a model count: a plugin operator takes any.
        models: reefknot_lang::Models::ANY,
        weighted: true,
        summary,
        doc: if doc.trim().is_empty() { summary } else { doc },
    };
    Ok(DescribedOp {
        spec: Box::leak(Box::new(spec)),
        flags: op.flags,
        call,
        data: op.data,
        descriptor: op.descriptor,
    })
}

fn bound(kind: u32, value: f64, end: &str) -> Result<Bound, String> {
    match kind {
        RK_BOUND_NONE => Ok(Bound::Unbounded),
        RK_BOUND_INCLUSIVE | RK_BOUND_EXCLUSIVE if value.is_nan() => {
            Err(format!("its {end} bound is NaN"))
        }
        RK_BOUND_INCLUSIVE => Ok(Bound::Inclusive(value)),
        RK_BOUND_EXCLUSIVE => Ok(Bound::Exclusive(value)),
        other => Err(format!(
            "its {end} bound kind {other} is not RK_BOUND_NONE, _INCLUSIVE or _EXCLUSIVE"
        )),
    }
}

fn param(name: &'static str, p: RawParam) -> Result<ParamSpec, String> {
    let doc = text(p.doc, "its doc")?;
    if p.has_default > 1 {
        return Err(format!("has_default is {} (0 or 1)", p.has_default));
    }
    if p.reserved != 0 {
        return Err(format!("its reserved field is {} (must be 0)", p.reserved));
    }
    let has_default = p.has_default == 1;
    let (kind, default) = match p.kind {
        RK_PARAM_NUMBER => {
            let min = bound(p.min_bound, p.min, "lower")?;
            let max = bound(p.max_bound, p.max, "upper")?;
            let lo = match min {
                Bound::Inclusive(x) | Bound::Exclusive(x) => Some(x),
                Bound::Unbounded => None,
            };
            let hi = match max {
                Bound::Inclusive(x) | Bound::Exclusive(x) => Some(x),
                Bound::Unbounded => None,
            };
            if let (Some(lo), Some(hi)) = (lo, hi) {
                let empty = lo > hi
                    || (lo == hi
                        && !(matches!(min, Bound::Inclusive(_))
                            && matches!(max, Bound::Inclusive(_))));
                if empty {
                    return Err(format!("its range is empty ({lo} to {hi})"));
                }
            }
            let kind = ParamKind::Number { min, max };
            let default = if has_default {
                let x = p.default_number;
                if x.is_finite() && (x as f32).is_infinite() {
                    return Err(format!(
                        "its default {x:e} is beyond the range of 32-bit floats, which merges \
                         compute in"
                    ));
                }
                if !kind.admits(x) {
                    return Err(format!(
                        "its default {x} is outside its range: {}",
                        kind.describe()
                    ));
                }
                Some(DefaultValue::Number(x))
            } else {
                None
            };
            (kind, default)
        }
        RK_PARAM_CHOICE => {
            if p.choices.is_empty() {
                return Err("a choice parameter with no choices".into());
            }
            let mut choices = Vec::with_capacity(p.choices.len());
            for (c, bytes) in p.choices.iter().enumerate() {
                let choice = identifier(bytes, &format!("choice {}", c + 1))?;
                if choices.contains(&choice) {
                    return Err(format!("choice `{choice}` is listed twice"));
                }
                choices.push(choice);
            }
            let default = if has_default {
                let d = text(p.default_text, "its default")?;
                let Some(&d) = choices.iter().find(|c| **c == d) else {
                    return Err(format!(
                        "its default `{d}` is not one of its choices ({})",
                        choices.join(", ")
                    ));
                };
                Some(DefaultValue::Choice(d))
            } else {
                None
            };
            (
                ParamKind::Choice(Box::leak(choices.into_boxed_slice())),
                default,
            )
        }
        RK_PARAM_BOOL => {
            let default = if has_default {
                match p.default_bool {
                    0 => Some(DefaultValue::Bool(false)),
                    1 => Some(DefaultValue::Bool(true)),
                    other => return Err(format!("its default_bool is {other} (0 or 1)")),
                }
            } else {
                None
            };
            (ParamKind::Bool, default)
        }
        RK_PARAM_TEXT => {
            let default = if has_default {
                Some(DefaultValue::Text(text(p.default_text, "its default")?))
            } else {
                None
            };
            (ParamKind::Text, default)
        }
        other => {
            return Err(format!(
                "its kind {other} is not RK_PARAM_NUMBER, _CHOICE, _BOOL or _TEXT"
            ))
        }
    };
    Ok(ParamSpec {
        name,
        kind,
        default,
        doc,
    })
}

#[cfg(test)]
mod tests {
    use reefknot_plugin_api::{RkCall, RkOutput};

    use super::*;

    extern "C" fn noop(_call: *const RkCall, _out: *mut RkOutput) -> u32 {
        0
    }

    fn number(name: &'static str) -> RawParam {
        RawParam {
            name: name.as_bytes(),
            doc: b"a number",
            kind: RK_PARAM_NUMBER,
            has_default: 0,
            min_bound: RK_BOUND_NONE,
            max_bound: RK_BOUND_NONE,
            min: 0.0,
            max: 0.0,
            default_number: 0.0,
            default_bool: 0,
            reserved: 0,
            default_text: b"",
            choices: Vec::new(),
        }
    }

    fn op(name: &'static str, params: Vec<RawParam>) -> RawOperator {
        RawOperator {
            name: name.as_bytes(),
            summary: b"an operator",
            doc: b"",
            params,
            signatures: RK_SIG_STACK_STACK | RK_SIG_DELTA_DELTA,
            flags: RK_OP_ELEMENTWISE,
            call: Some(noop),
            data: OpData::null(),
            descriptor: Descriptor::of_call(noop),
        }
    }

    fn plugin(operators: Vec<RawOperator>) -> RawPlugin {
        RawPlugin {
            name: b"demo",
            version: b"1.0",
            description: b"",
            operators,
        }
    }

    fn error(operators: Vec<RawOperator>) -> String {
        match describe(plugin(operators)) {
            Ok(_) => panic!("accepted"),
            Err(e) => e,
        }
    }

    #[test]
    fn a_valid_table_becomes_specs() {
        let mut k = number("k");
        k.has_default = 1;
        k.default_number = 0.5;
        k.min_bound = RK_BOUND_INCLUSIVE;
        k.max_bound = RK_BOUND_EXCLUSIVE;
        k.max = 1.0;
        let mut mode = number("mode");
        mode.kind = RK_PARAM_CHOICE;
        mode.choices = vec![b"fast", b"exact"];
        mode.has_default = 1;
        mode.default_text = b"exact";
        let d = describe(plugin(vec![op("shrink", vec![k, mode])])).unwrap();
        assert_eq!(d.name, "demo");
        let spec = d.operators[0].spec;
        assert_eq!(spec.name, "shrink");
        assert_eq!(spec.usage(), "shrink(k=0.5, mode=exact)");
        assert_eq!(spec.signature_list(), "Stack→Stack, Delta→Delta");
        assert_eq!(spec.doc, "an operator");
        assert_eq!(spec.params[0].kind.describe(), "a number in [0, 1)");
    }

    #[test]
    fn names_must_be_unique_identifiers() {
        assert!(
            error(vec![op("a", vec![]), op("a", vec![])]).contains("two operators are named `a`")
        );
        assert!(error(vec![op("", vec![])]).contains("is empty"));
        assert!(error(vec![op("1x", vec![])]).contains("is not an identifier"));
        assert!(error(vec![op("a::b", vec![])]).contains("is not an identifier"));
        assert!(error(vec![op("a", vec![number("k"), number("k")])])
            .contains("two parameters are named `k`"));
        assert!(error(vec![]).contains("declares no operators"));
        let mut p = plugin(vec![op("a", vec![])]);
        p.name = b"my-plugin";
        assert!(describe(p).err().unwrap().contains("its name `my-plugin`"));
    }

    #[test]
    fn signatures_flags_and_entry_points_are_checked() {
        let mut o = op("a", vec![]);
        o.signatures = 0;
        assert!(error(vec![o]).contains("not a non-empty set"));
        let mut o = op("a", vec![]);
        o.signatures = 1 << 7;
        assert!(error(vec![o]).contains("not a non-empty set"));
        let mut o = op("a", vec![]);
        o.signatures = RK_SIG_STACK_STACK | RK_SIG_STACK_DELTA;
        assert!(error(vec![o]).contains("several signatures taking a Stack"));
        let mut o = op("a", vec![]);
        o.flags = 1 << 9;
        assert!(error(vec![o]).contains("unknown flags 0x200"));
        let mut o = op("a", vec![]);
        o.call = None;
        assert!(error(vec![o]).contains("entry point `call` is null"));
        let mut o = op("a", vec![]);
        o.summary = b"  ";
        assert!(error(vec![o]).contains("summary is empty"));
        let mut o = op("a", vec![]);
        o.summary = b"two\nlines";
        assert!(error(vec![o]).contains("several lines"));
        let mut o = op("a", vec![]);
        o.doc = b"\xc3\x28";
        assert!(error(vec![o]).contains("its doc is not valid UTF-8"));
    }

    #[test]
    fn parameter_specs_are_checked() {
        let check = |f: &dyn Fn(&mut RawParam)| {
            let mut p = number("k");
            f(&mut p);
            error(vec![op("a", vec![p])])
        };
        assert!(check(&|p| p.kind = 9).contains("its kind 9"));
        assert!(check(&|p| p.min_bound = 5).contains("lower bound kind 5"));
        assert!(check(&|p| {
            p.min_bound = RK_BOUND_INCLUSIVE;
            p.min = f64::NAN;
        })
        .contains("lower bound is NaN"));
        assert!(check(&|p| {
            p.min_bound = RK_BOUND_INCLUSIVE;
            p.min = 2.0;
            p.max_bound = RK_BOUND_INCLUSIVE;
            p.max = 1.0;
        })
        .contains("range is empty"));
        assert!(check(&|p| {
            p.min_bound = RK_BOUND_EXCLUSIVE;
            p.min = 1.0;
            p.max_bound = RK_BOUND_INCLUSIVE;
            p.max = 1.0;
        })
        .contains("range is empty"));
        assert!(check(&|p| {
            p.has_default = 1;
            p.default_number = f64::INFINITY;
        })
        .contains("outside its range"));
        assert!(check(&|p| p.has_default = 2).contains("has_default is 2"));
        assert!(check(&|p| p.reserved = 1).contains("reserved field is 1"));
        assert!(check(&|p| p.kind = RK_PARAM_CHOICE).contains("no choices"));
        assert!(check(&|p| {
            p.kind = RK_PARAM_CHOICE;
            p.choices = vec![b"x", b"x"];
        })
        .contains("`x` is listed twice"));
        assert!(check(&|p| {
            p.kind = RK_PARAM_CHOICE;
            p.choices = vec![b"x", b"y z"];
        })
        .contains("choice 2 `y z` is not an identifier"));
        assert!(check(&|p| {
            p.kind = RK_PARAM_CHOICE;
            p.choices = vec![b"x"];
            p.has_default = 1;
            p.default_text = b"w";
        })
        .contains("default `w` is not one of its choices"));
        assert!(check(&|p| {
            p.kind = RK_PARAM_BOOL;
            p.has_default = 1;
            p.default_bool = 3;
        })
        .contains("default_bool is 3"));
        assert!(check(&|p| {
            p.kind = RK_PARAM_TEXT;
            p.has_default = 1;
            p.default_text = b"\xff";
        })
        .contains("its default is not valid UTF-8"));
    }
}

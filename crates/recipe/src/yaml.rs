//! The only place that parses YAML: [`parse_yaml`] turns the recipe text into a tree of
//! [`Node`]s, each with its location, and reports syntax errors with theirs.
//!
//! serde-saphyr does the parsing (see `docs/recipes.md` for why not serde_yaml). We do
//! not deserialize into typed structs: a generic tree with a location on every key and
//! value lets the validator reject unknown keys with a suggestion, point at the exact
//! token of every bad value, and report several problems at once.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{Location, Spanned};

use crate::error::{ErrorKind, RecipeError};
use crate::Loc;

/// A YAML value with where it was written.
#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub(crate) kind: Kind,
    /// Where the value is used: for an alias `*a`, the alias.
    pub(crate) loc: Loc,
    /// Where the value's text is: for an alias, the anchored definition; else `loc`.
    pub(crate) def: Loc,
}

/// The sorts of YAML values a recipe can hold.
#[derive(Clone, Debug)]
pub(crate) enum Kind {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Entries in document order; duplicate keys are kept (the validator reports them).
    Map(Vec<(Node, Node)>),
}

impl Kind {
    /// How a message names this sort of value: "found a list".
    pub(crate) fn describe(&self) -> &'static str {
        match self {
            Kind::Null => "nothing (null)",
            Kind::Bool(_) => "a boolean",
            Kind::Int(_) => "an integer",
            Kind::Float(_) => "a number",
            Kind::Str(_) => "a string",
            Kind::Seq(_) => "a list",
            Kind::Map(_) => "a mapping",
        }
    }
}

/// Parses `source` as one YAML document.
///
/// Options: YAML 1.2 booleans only (`yes`, `no`, `y`, `n` are strings), unknown tags
/// rejected, duplicate keys passed through to the validator (which reports both
/// places), `.inf`/`.nan` passed through (the validator rejects them where a finite
/// number is needed), and a budget far above any real recipe but small enough that a
/// hostile file cannot exhaust memory.
pub(crate) fn parse_yaml(source: &str) -> Result<Node, RecipeError> {
    let mut options = serde_saphyr::Options::default();
    options.strict_booleans = true;
    options.reject_unsupported_tags = true;
    options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::PassThrough;
    options.non_finite_float_policy = serde_saphyr::NonFiniteFloatPolicy::PassThrough;
    options.with_snippet = false;
    options.budget = serde_saphyr::budget! {
        max_events: 200_000,
        max_nodes: 100_000,
        max_depth: 32,
        max_total_scalar_bytes: 16 * 1024 * 1024,
    };
    options.emit_comments = false;
    match serde_saphyr::from_str_with_options::<Spanned<Raw>>(source, options) {
        Ok(raw) => Ok(convert(source, raw)),
        Err(err) => Err(syntax_error(source, &err)),
    }
}

/// The tree as serde-saphyr gives it; converted to [`Node`] once the text is at hand.
struct Raw(RawKind);

enum RawKind {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<Raw>>),
    Map(Vec<(Spanned<Raw>, Spanned<Raw>)>),
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a YAML value")
    }

    fn visit_unit<E>(self) -> Result<Raw, E> {
        Ok(Raw(RawKind::Null))
    }

    fn visit_none<E>(self) -> Result<Raw, E> {
        Ok(Raw(RawKind::Null))
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Raw, D::Error> {
        Raw::deserialize(deserializer)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Raw, E> {
        Ok(Raw(RawKind::Bool(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Raw, E> {
        Ok(Raw(RawKind::Int(v.into())))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Raw, E> {
        Ok(Raw(RawKind::Int(v.into())))
    }

    fn visit_i128<E>(self, v: i128) -> Result<Raw, E> {
        Ok(Raw(RawKind::Int(v)))
    }

    fn visit_u128<E>(self, v: u128) -> Result<Raw, E> {
        // Beyond i128 only as a float: no recipe value is that large anyway.
        Ok(match i128::try_from(v) {
            Ok(i) => Raw(RawKind::Int(i)),
            Err(_) => Raw(RawKind::Float(v as f64)),
        })
    }

    fn visit_f64<E>(self, v: f64) -> Result<Raw, E> {
        Ok(Raw(RawKind::Float(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Raw, E> {
        Ok(Raw(RawKind::Str(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Raw, E> {
        Ok(Raw(RawKind::Str(v)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Raw(RawKind::Seq(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry()? {
            entries.push(entry);
        }
        Ok(Raw(RawKind::Map(entries)))
    }
}

fn convert(source: &str, raw: Spanned<Raw>) -> Node {
    let loc = to_loc(source, &raw.referenced);
    let def = to_loc(source, &raw.defined);
    let kind = match raw.value.0 {
        RawKind::Null => Kind::Null,
        RawKind::Bool(b) => Kind::Bool(b),
        RawKind::Int(i) => Kind::Int(i),
        RawKind::Float(f) => Kind::Float(f),
        RawKind::Str(s) => Kind::Str(s),
        RawKind::Seq(items) => Kind::Seq(items.into_iter().map(|i| convert(source, i)).collect()),
        RawKind::Map(entries) => Kind::Map(
            entries
                .into_iter()
                .map(|(k, v)| (convert(source, k), convert(source, v)))
                .collect(),
        ),
    };
    let loc = collection_extent(source, loc, &kind);
    let def = if raw.defined == raw.referenced {
        loc
    } else {
        def
    };
    Node { kind, loc, def }
}

/// serde-saphyr locates a collection by its first token alone (`[`, `{`, or with zero
/// length at the first `-` or key of a block collection). Widen that to what a caret
/// should underline: a flow collection up to its closing bracket, a block sequence's
/// first `-`, a block mapping's first key. An alias (`*a`) keeps its own span.
fn collection_extent(source: &str, loc: Loc, kind: &Kind) -> Loc {
    let children: Vec<&Node> = match kind {
        Kind::Seq(items) => items.iter().collect(),
        Kind::Map(entries) => entries.iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => return loc,
    };
    let rest = &source[loc.offset..];
    let end_of_children = children
        .iter()
        .filter(|c| c.loc.offset >= loc.offset)
        .map(|c| c.loc.offset + c.loc.len)
        .max();
    let len = match rest.as_bytes().first() {
        Some(&open @ (b'[' | b'{')) => {
            let close = if open == b'[' { b']' } else { b'}' };
            let from = end_of_children
                .unwrap_or(loc.offset + 1)
                .max(loc.offset + 1);
            match closing_bracket(source, from, close) {
                Some(end) => end + 1 - loc.offset,
                None => end_of_children.map_or(1, |e| e - loc.offset),
            }
        }
        Some(b'-') if matches!(kind, Kind::Seq(_)) => 1,
        _ => match kind {
            Kind::Map(entries) => entries
                .first()
                .filter(|(k, _)| k.loc.offset == loc.offset)
                .map_or(loc.len, |(k, _)| k.loc.len),
            _ => loc.len,
        },
    };
    Loc { len, ..loc }
}

/// The offset of `close` when only blanks, line breaks, commas and comments separate it
/// from `from`.
fn closing_bracket(source: &str, from: usize, close: u8) -> Option<usize> {
    let bytes = source.as_bytes();
    let mut i = from;
    while let Some(&b) = bytes.get(i) {
        match b {
            b' ' | b'\t' | b'\r' | b'\n' | b',' => i += 1,
            b'#' => {
                while bytes.get(i).is_some_and(|&b| b != b'\n') {
                    i += 1;
                }
            }
            _ if b == close => return Some(i),
            _ => return None,
        }
    }
    None
}

/// A serde-saphyr location as a [`Loc`] in `source`: byte offsets when serde-saphyr has
/// them, else computed from its character offset.
fn to_loc(source: &str, location: &Location) -> Loc {
    if *location == Location::UNKNOWN {
        return Loc {
            offset: 0,
            len: 0,
            line: 1,
            column: 1,
        };
    }
    let span = location.span();
    let (offset, len) = match (span.byte_offset(), span.byte_len()) {
        (Some(o), Some(l)) => (o as usize, l as usize),
        _ => {
            let start = char_to_byte(source, span.offset() as usize);
            let end = char_to_byte(source, (span.offset() + span.len()) as usize);
            (start, end - start)
        }
    };
    let offset = offset.min(source.len());
    let len = len.min(source.len() - offset);
    Loc {
        offset,
        len,
        line: location.line() as usize,
        column: location.column() as usize,
    }
}

/// The byte offset of the `chars`-th character of `source` (its length past the end).
fn char_to_byte(source: &str, chars: usize) -> usize {
    source
        .char_indices()
        .nth(chars)
        .map_or(source.len(), |(i, _)| i)
}

/// A YAML error as a located [`RecipeError`].
fn syntax_error(source: &str, err: &serde_saphyr::Error) -> RecipeError {
    use serde_saphyr::MessageFormatter;
    let inner = err.without_snippet();
    let raw = serde_saphyr::DefaultMessageFormatter.format_message(inner);
    let mut message = String::with_capacity(raw.len());
    for c in raw.chars() {
        if c.is_control() {
            message.extend(c.escape_debug());
        } else {
            message.push(c);
        }
    }
    let mut help: Option<String> = None;
    let mut label = "here".to_owned();
    match inner {
        serde_saphyr::Error::MultipleDocuments { .. } => {
            message = "a recipe is a single YAML document, but a second one starts here".into();
            help = Some("remove the `---` line and merge the two parts into one mapping".into());
            label = "second document".into();
        }
        serde_saphyr::Error::UnknownAnchor { .. } => {
            help = Some(
                "a plain YAML value cannot start with `*` (it means an alias); \
                 quote globs that do: match: \"*.bias\""
                    .into(),
            );
            label = "`*` starts an alias in YAML".into();
        }
        serde_saphyr::Error::UnsupportedTag { .. } => {
            help = Some("a recipe uses no YAML tags (`!name`); remove it".into());
        }
        serde_saphyr::Error::Budget { .. } => {
            help = Some("a recipe is small; this file is far larger or deeper than any".into());
        }
        _ => {}
    }
    let mut e = RecipeError::new(ErrorKind::Syntax, format!("invalid YAML: {message}"));
    if let Some(location) = err.location() {
        let mut loc = to_loc(source, &location);
        if loc.len == 0 && loc.offset < source.len() {
            // A caret on the character itself reads better than one between two.
            let next = source[loc.offset..]
                .chars()
                .next()
                .map_or(0, char::len_utf8);
            if !source[loc.offset..].starts_with('\n') {
                loc.len = next;
            }
        }
        e = e.label(loc, label);
    }
    if let Some(h) = help {
        e = e.help(h);
    }
    e
}

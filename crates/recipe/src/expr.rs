//! A merge expression as written in the recipe, and the map from its text back into the
//! YAML file, so that the language's errors can point into the recipe.

use std::ops::Range;

use crate::Loc;

/// A merge expression as written in the recipe: the text the language crate parses, and
/// where it came from.
///
/// Positions the language reports are byte offsets in [`Expr::text`]; turn them into
/// offsets in [`crate::Recipe::source`] with [`Expr::source_offset`] /
/// [`Expr::source_range`] to show the caret in the YAML file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expr {
    /// The expression, as the YAML scalar's value (quotes removed, escapes and block
    /// scalars resolved).
    pub text: String,
    /// The YAML scalar in the source, quotes included. For a scalar reached through an
    /// alias (`merge: *m`) this is the anchored scalar, where the text is written.
    pub loc: Loc,
    /// The byte offset of `text[0]` in the source when the scalar maps 1:1 onto the file
    /// (`&source[off..off + text.len()] == text`): a plain scalar on one line, or a
    /// single- or double-quoted one on one line without escapes (`''` or `\`). `None`
    /// otherwise; [`Expr::source_offset`] still maps multi-line scalars.
    pub offset_in_source: Option<usize>,
}

impl Expr {
    /// Builds the expression of a YAML scalar whose value is `text` and which occupies
    /// `loc` in `source`, working out `offset_in_source`.
    pub fn new(text: String, loc: Loc, source: &str) -> Expr {
        let offset_in_source = one_to_one(&text, loc, source);
        Expr {
            text,
            loc,
            offset_in_source,
        }
    }

    /// The byte offset in `source` (the recipe's [`crate::Recipe::source`]) of the byte at
    /// `text_offset` in [`Expr::text`]; `text.len()` maps just past the last character.
    ///
    /// Exact for every non-blank character of one-line scalars, multi-line plain scalars
    /// and block scalars (`|`, `>`): each text line is found verbatim in the file. A blank
    /// that YAML made up (a line break folded into a space, an indentation) maps to the
    /// end of the text before it. `None` when the offset is past the text, or the scalar
    /// is quoted over several lines or has escapes, where the text is not in the file as
    /// such.
    pub fn source_offset(&self, source: &str, text_offset: usize) -> Option<usize> {
        if text_offset > self.text.len() {
            return None;
        }
        if let Some(off) = self.offset_in_source {
            return Some(off + text_offset);
        }
        let segments = segments(&self.text, self.loc, source)?;
        let mut previous_end = segments.first().map(|s| s.source)?;
        for s in &segments {
            if text_offset < s.text {
                return Some(previous_end);
            }
            if text_offset < s.text + s.len {
                return Some(s.source + (text_offset - s.text));
            }
            previous_end = s.source + s.len;
        }
        Some(previous_end)
    }

    /// [`Expr::source_offset`] of both ends of a range of [`Expr::text`]; a range that
    /// became empty (or reversed) when mapped is widened to the start's character.
    pub fn source_range(&self, source: &str, range: Range<usize>) -> Option<Range<usize>> {
        let start = self.source_offset(source, range.start)?;
        let mut end = self.source_offset(source, range.end)?;
        if range.end > range.start && end <= start {
            end = start + source[start..].chars().next().map_or(0, char::len_utf8);
        }
        Some(start..end.max(start))
    }
}

/// `offset_in_source` (see [`Expr::offset_in_source`]).
fn one_to_one(text: &str, loc: Loc, source: &str) -> Option<usize> {
    let raw = source.get(loc.offset..loc.offset + loc.len)?;
    if raw == text {
        return Some(loc.offset);
    }
    let quote = raw.chars().next().filter(|c| matches!(c, '\'' | '"'))?;
    let inner = raw.strip_prefix(quote)?.strip_suffix(quote)?;
    (inner == text).then_some(loc.offset + 1)
}

/// A run of `len` bytes at `text` in the expression that is at `source` in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Segment {
    text: usize,
    source: usize,
    len: usize,
}

/// The text of a scalar as runs of the file: each source line of the scalar, blanks
/// trimmed, must appear in the text in order, separated by blanks and line breaks only,
/// and together cover every non-blank character of the text.
fn segments(text: &str, loc: Loc, source: &str) -> Option<Vec<Segment>> {
    let raw = source.get(loc.offset..loc.offset + loc.len)?;
    if raw.starts_with(['\'', '"']) {
        return None;
    }
    let blank = |c: char| c == ' ' || c == '\t';
    let mut out = Vec::new();
    let mut cursor = 0;
    let mut line_start = loc.offset;
    for line in raw.split('\n') {
        let line_len = line.len();
        let line = line.strip_suffix('\r').unwrap_or(line);
        let trimmed = line.trim_matches(blank);
        if !trimmed.is_empty() {
            let lead = line.len() - line.trim_start_matches(blank).len();
            let found = cursor + text[cursor..].find(trimmed)?;
            if !text[cursor..found].chars().all(|c| blank(c) || c == '\n') {
                return None;
            }
            out.push(Segment {
                text: found,
                source: line_start + lead,
                len: trimmed.len(),
            });
            cursor = found + trimmed.len();
        }
        line_start += line_len + 1;
    }
    if out.is_empty() || !text[cursor..].chars().all(|c| blank(c) || c == '\n') {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expr_at(source: &str, needle: &str, text: &str) -> Expr {
        let offset = source.find(needle).unwrap();
        let loc = Loc {
            offset,
            len: needle.len(),
            line: 1,
            column: 1,
        };
        Expr::new(text.to_owned(), loc, source)
    }

    #[test]
    fn plain_and_quoted_map_one_to_one() {
        let src = "merge: sum |> scale(0.5)\n";
        let e = expr_at(src, "sum |> scale(0.5)", "sum |> scale(0.5)");
        assert_eq!(e.offset_in_source, Some(7));
        let src = "merge: 'sum'\n";
        assert_eq!(expr_at(src, "'sum'", "sum").offset_in_source, Some(8));
        let src = "merge: \"sum\"\n";
        assert_eq!(expr_at(src, "\"sum\"", "sum").offset_in_source, Some(8));
    }

    #[test]
    fn escapes_do_not_map_one_to_one() {
        let src = "merge: 'it''s'\n";
        let e = expr_at(src, "'it''s'", "it's");
        assert_eq!(e.offset_in_source, None);
        assert_eq!(e.source_offset(src, 0), None);
        let src = "merge: \"a\\tb\"\n";
        assert_eq!(expr_at(src, "\"a\\tb\"", "a\tb").offset_in_source, None);
    }

    #[test]
    fn literal_block_maps_line_by_line() {
        let src = "merge: |\n  trim(0.2)\n    |> elect\n";
        let body = "trim(0.2)\n    |> elect\n";
        let e = expr_at(src, body, "trim(0.2)\n  |> elect\n");
        assert_eq!(e.offset_in_source, None);
        let at = |i: usize| e.source_offset(src, i).unwrap();
        assert_eq!(&src[at(0)..at(0) + 4], "trim");
        let elect = e.text.find("elect").unwrap();
        assert_eq!(&src[at(elect)..at(elect) + 5], "elect");
        let pipe = e.text.find("|>").unwrap();
        assert_eq!(&src[at(pipe)..at(pipe) + 2], "|>");
        // A blank YAML made up maps to the end of the text before it.
        assert_eq!(at(9), src.find("(0.2)").unwrap() + 5);
        assert_eq!(at(e.text.len()), src.len() - 1);
        assert_eq!(e.source_offset(src, e.text.len() + 1), None);
    }

    #[test]
    fn folded_and_multiline_plain_map_line_by_line() {
        let src = "merge: trim(0.2)\n  |> elect  \n  |> disjoint\nseed: 1\n";
        let raw = "trim(0.2)\n  |> elect  \n  |> disjoint";
        let e = expr_at(src, raw, "trim(0.2) |> elect |> disjoint");
        let d = e.text.find("disjoint").unwrap();
        let at = e.source_offset(src, d).unwrap();
        assert_eq!(&src[at..at + 8], "disjoint");
        let r = e.source_range(src, d..d + 8).unwrap();
        assert_eq!(&src[r], "disjoint");
    }

    #[test]
    fn mismatched_text_maps_nowhere() {
        let src = "merge: abc\n";
        let e = expr_at(src, "abc", "abd");
        assert_eq!(e.offset_in_source, None);
        assert_eq!(e.source_offset(src, 0), None);
    }
}

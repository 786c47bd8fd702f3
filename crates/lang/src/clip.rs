//! Diagnostics made fit to print: long source lines cut around their carets.
//!
//! A renderer shows every line a label touches in full, so an error on a line of a
//! hundred thousand characters (a generated expression, a minified YAML file) prints
//! the whole line, and past column 65 535 miette's graphical renderer panics outright.
//! [`Clipped`] is an owned copy of any diagnostic — message, code, help, labels,
//! related diagnostics and causes — whose source keeps each long line only around the
//! labels on it, with `…` where text was cut, and whose labels are moved to match.

use std::fmt;
use std::ops::Range;

use miette::{
    Diagnostic, LabeledSpan, MietteError, MietteSpanContents, Severity, SourceCode, SourceSpan,
    SpanContents,
};

/// Lines up to this many bytes are shown whole.
pub const MAX_LINE: usize = 240;

/// Bytes kept on each side of the labels of a long line.
const CONTEXT: usize = 60;

/// Bytes kept of one label longer than the window.
const MAX_LABEL: usize = 120;

/// An owned, printable copy of a diagnostic, its source lines cut to at most about
/// [`MAX_LINE`] bytes around the labels (see the module documentation).
#[derive(Debug)]
pub struct Clipped {
    message: String,
    code: Option<String>,
    severity: Option<Severity>,
    help: Option<String>,
    url: Option<String>,
    source: Option<ClippedSource>,
    labels: Vec<LabeledSpan>,
    related: Vec<Clipped>,
    inner: Option<Box<Clipped>>,
    cause: Option<Box<Cause>>,
}

/// One link of the chain of [`std::error::Error::source`]s, as text.
#[derive(Debug)]
struct Cause {
    message: String,
    next: Option<Box<Cause>>,
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.next
            .as_deref()
            .map(|c| c as &(dyn std::error::Error + 'static))
    }
}

impl Clipped {
    /// Copies `diagnostic`, cutting the long lines of its source (and of its related
    /// diagnostics' sources) around their labels.
    pub fn new(diagnostic: &dyn Diagnostic) -> Clipped {
        Clipped::copy(diagnostic, None)
    }

    fn copy(d: &dyn Diagnostic, parent_source: Option<&dyn SourceCode>) -> Clipped {
        let own = d.source_code();
        let code_of = own.or(parent_source);
        let labels: Vec<LabeledSpan> = d.labels().map(|l| l.collect()).unwrap_or_default();
        let (source, labels) = match code_of.and_then(whole_text) {
            Some((name, text)) => {
                let spans: Vec<Range<usize>> = labels
                    .iter()
                    .map(|l| clamp(l.offset(), l.len(), text.len()))
                    .collect();
                let (text, map) = cut(&text, &spans);
                let labels = labels
                    .iter()
                    .zip(&spans)
                    .map(|(l, s)| {
                        let start = map.place(s.start);
                        let end = map.place(s.end).max(start);
                        let span = SourceSpan::from((start, end - start));
                        LabeledSpan::new_with_span(l.label().map(str::to_owned), span)
                            .with_primary(l.primary())
                    })
                    .collect();
                (Some(ClippedSource { name, text, map }), labels)
            }
            None => (None, labels),
        };
        let related = d
            .related()
            .map(|r| r.map(|r| Clipped::copy(r, code_of)).collect())
            .unwrap_or_default();
        Clipped {
            message: d.to_string(),
            code: d.code().map(|c| c.to_string()),
            severity: d.severity(),
            help: d.help().map(|h| h.to_string()),
            url: d.url().map(|u| u.to_string()),
            source,
            labels,
            related,
            inner: d
                .diagnostic_source()
                .map(|i| Box::new(Clipped::copy(i, code_of))),
            cause: causes(d.source()),
        }
    }
}

trait WithPrimary {
    fn with_primary(self, primary: bool) -> Self;
}

impl WithPrimary for LabeledSpan {
    fn with_primary(self, primary: bool) -> Self {
        if primary {
            LabeledSpan::new_primary_with_span(self.label().map(str::to_owned), *self.inner())
        } else {
            self
        }
    }
}

fn causes(source: Option<&(dyn std::error::Error + 'static)>) -> Option<Box<Cause>> {
    source.map(|e| {
        Box::new(Cause {
            message: e.to_string(),
            next: causes(e.source()),
        })
    })
}

/// The name and the whole text of a source.
fn whole_text(code: &dyn SourceCode) -> Option<(String, String)> {
    let contents = code
        .read_span(&SourceSpan::from((0, 0)), 0, usize::MAX)
        .ok()?;
    let text = String::from_utf8_lossy(contents.data()).into_owned();
    let name = contents.name().unwrap_or_default().to_owned();
    Some((name, text))
}

fn clamp(offset: usize, len: usize, total: usize) -> Range<usize> {
    let start = offset.min(total);
    start..offset.saturating_add(len).min(total)
}

/// Where each byte of the original text went: the kept pieces, in order.
struct OffsetMap {
    kept: Vec<Piece>,
}

/// A kept piece of the original text: its range there, where it starts in the cut
/// text, and where its line starts in the original.
struct Piece {
    from: Range<usize>,
    to: usize,
    line_start: usize,
}

impl OffsetMap {
    /// The offset in the cut text of original offset `at` (a cut-out offset goes to
    /// the nearest kept byte).
    fn place(&self, at: usize) -> usize {
        let mut last = 0;
        for p in &self.kept {
            if at < p.from.start {
                return p.to;
            }
            if at <= p.from.end {
                return p.to + (at - p.from.start);
            }
            last = p.to + p.from.len();
        }
        last
    }

    /// The column (in bytes, as miette counts) in the original text of offset `at` of
    /// the cut text.
    fn original_column(&self, at: usize) -> usize {
        let piece = self
            .kept
            .iter()
            .take_while(|p| p.to <= at)
            .last()
            .or(self.kept.first());
        piece.map_or(0, |p| {
            let within = at.saturating_sub(p.to).min(p.from.len());
            p.from.start + within - p.line_start
        })
    }
}

/// The cut source, which reports the columns of the original text (the header line
/// of a diagnostic, `recipe.yaml:7:70022`, stays true).
#[derive(Debug)]
struct ClippedSource {
    name: String,
    text: String,
    map: OffsetMap,
}

impl fmt::Debug for OffsetMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OffsetMap({} pieces)", self.kept.len())
    }
}

impl SourceCode for ClippedSource {
    fn read_span<'a>(
        &'a self,
        span: &SourceSpan,
        context_lines_before: usize,
        context_lines_after: usize,
    ) -> Result<Box<dyn SpanContents<'a> + 'a>, MietteError> {
        let inner = self
            .text
            .read_span(span, context_lines_before, context_lines_after)?;
        let column = if context_lines_before == 0 {
            self.map.original_column(span.offset())
        } else {
            inner.column()
        };
        let (data, at, line, lines) = (
            inner.data(),
            *inner.span(),
            inner.line(),
            inner.line_count(),
        );
        Ok(Box::new(if self.name.is_empty() {
            MietteSpanContents::new(data, at, line, column, lines)
        } else {
            MietteSpanContents::new_named(self.name.clone(), data, at, line, column, lines)
        }))
    }
}

/// `text` with every line longer than [`MAX_LINE`] cut to a window around the parts of
/// `spans` on it.
fn cut(text: &str, spans: &[Range<usize>]) -> (String, OffsetMap) {
    let mut out = String::with_capacity(text.len().min(1 << 16));
    let mut kept = Vec::new();
    let mut line_start = 0;
    for line in text.split_inclusive('\n') {
        let range = line_start..line_start + line.len();
        line_start = range.end;
        let body = line.strip_suffix('\n').unwrap_or(line);
        if body.len() <= MAX_LINE {
            kept.push(Piece {
                from: range.clone(),
                to: out.len(),
                line_start: range.start,
            });
            out.push_str(line);
            continue;
        }
        // The labels on this line, or its start when none is.
        let on_line: Vec<&Range<usize>> = spans
            .iter()
            .filter(|s| s.start <= range.start + body.len() && s.end >= range.start)
            .collect();
        let (lo, hi) = match on_line.iter().map(|s| s.start).min() {
            Some(lo) => {
                let hi = on_line.iter().map(|s| s.end).max().unwrap_or(lo);
                let lo = lo.max(range.start) - range.start;
                let hi = hi.min(range.start + body.len()) - range.start;
                (lo, hi.min(lo + MAX_LABEL).max(lo))
            }
            None => (0, 0),
        };
        let from = floor_boundary(body, lo.saturating_sub(CONTEXT));
        let to = ceil_boundary(body, (hi + CONTEXT).min(body.len()));
        if from > 0 {
            out.push('…');
        }
        kept.push(Piece {
            from: range.start + from..range.start + to,
            to: out.len(),
            line_start: range.start,
        });
        out.push_str(&body[from..to]);
        if to < body.len() {
            out.push('…');
        }
        if line.ends_with('\n') {
            out.push('\n');
        }
    }
    (out, OffsetMap { kept })
}

fn floor_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

impl fmt::Display for Clipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Clipped {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause
            .as_deref()
            .map(|c| c as &(dyn std::error::Error + 'static))
    }
}

impl Diagnostic for Clipped {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.code
            .as_ref()
            .map(|c| Box::new(c) as Box<dyn fmt::Display>)
    }

    fn severity(&self) -> Option<Severity> {
        self.severity
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn url<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.url
            .as_ref()
            .map(|u| Box::new(u) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        self.source.as_ref().map(|s| s as &dyn SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        if self.labels.is_empty() {
            return None;
        }
        Some(Box::new(self.labels.iter().cloned()))
    }

    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn Diagnostic> + 'a>> {
        if self.related.is_empty() {
            return None;
        }
        Some(Box::new(self.related.iter().map(|r| r as &dyn Diagnostic)))
    }

    fn diagnostic_source(&self) -> Option<&dyn Diagnostic> {
        self.inner.as_deref().map(|i| i as &dyn Diagnostic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(d: &dyn Diagnostic) -> String {
        let mut out = String::new();
        miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
            .with_width(400)
            .render_report(&mut out, d)
            .unwrap();
        out
    }

    #[test]
    fn a_caret_far_along_a_line_renders_near_its_text() {
        // Past column 65 535 the renderer itself would panic.
        let prefix = format!("merge: \"{}", " ".repeat(100_000));
        let expr = "trim(0.2) |> ,";
        let file = format!("{prefix}{expr}\"\n");
        let err = crate::parse(expr)
            .unwrap_err()
            .offset(prefix.len(), file, "recipe.yaml");
        let text = render(&Clipped::new(&err));
        assert!(text.contains("recipe.yaml:1:100022"), "{text}");
        assert!(text.contains("trim(0.2) |> ,"), "{text}");
        assert!(text.len() < 2_000, "{} bytes", text.len());
        // The caret stands under the comma.
        let code = text.lines().find(|l| l.contains("|> ,")).unwrap();
        let caret = text
            .lines()
            .find(|l| l.contains('┬') || l.contains('▲'))
            .unwrap();
        let column = |l: &str, at: usize| l[..at].chars().count();
        let comma = column(code, code.rfind(',').unwrap());
        let mark = caret
            .char_indices()
            .find(|(_, c)| matches!(c, '┬' | '▲'))
            .unwrap()
            .0;
        assert_eq!(column(caret, mark), comma, "{text}");
    }

    #[test]
    fn short_lines_stay_whole_and_labels_keep_their_place() {
        let text = "line one\nmerge: nope\n";
        let (cut_text, map) = cut(text, std::slice::from_ref(&(15..19)));
        assert_eq!(cut_text, text);
        assert_eq!(map.place(15), 15);
        let long = format!("a: {}x{}\nb\n", "y".repeat(500), "z".repeat(500));
        let x = long.find('x').unwrap();
        let (cut_text, map) = cut(&long, std::slice::from_ref(&(x..x + 1)));
        let placed = map.place(x);
        assert_eq!(&cut_text[placed..placed + 1], "x");
        assert!(
            cut_text.starts_with('…') && cut_text.ends_with("…\nb\n"),
            "{cut_text}"
        );
        assert!(cut_text.len() < 2 * CONTEXT + 16);
    }
}

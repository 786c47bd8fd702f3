//! Text → [`ast::Pipeline`], with pest doing the recognising and this module turning
//! pest's pairs into the typed tree and pest's errors into [`LangError`]s.

use pest::error::{ErrorVariant, InputLocation};
use pest::iterators::Pair;
use pest::Parser as _;
use pest_derive::Parser;

use crate::ast::{self, Name, Number, Value};
use crate::error::{ErrorKind, LangError};
use crate::pipeline::Span;

/// The grammar lives at the repository root (`grammar/merge.pest`); pest_derive
/// resolves the path against this crate's manifest directory.
#[derive(Parser)]
#[grammar = "../../grammar/merge.pest"]
struct MergeParser;

/// How deeply parentheses and brackets may nest. Real expressions need two levels
/// (`ties(trim(0.2))`); the limit keeps hostile input from exhausting the stack.
pub(crate) const MAX_DEPTH: usize = 32;

/// Parses `source` into a syntax tree (no names resolved, nothing checked).
pub(crate) fn parse(source: &str) -> Result<ast::Pipeline, LangError> {
    check_nesting(source)?;
    let mut pairs = match MergeParser::parse(Rule::pipeline, source) {
        Ok(pairs) => pairs,
        Err(err) => {
            if MergeParser::parse(Rule::empty, source).is_ok() {
                return Err(empty_error(source));
            }
            return Err(syntax_error(source, &err));
        }
    };
    let pipeline = pairs.next().expect("grammar: one pipeline");
    let b = Builder { source };
    let mut stages = Vec::new();
    for pair in pipeline.into_inner() {
        if pair.as_rule() == Rule::stage {
            stages.push(b.stage(pair)?);
        }
    }
    let span = Span::new(stages[0].span.start, stages[stages.len() - 1].span.end);
    Ok(ast::Pipeline { stages, span })
}

struct Builder<'s> {
    source: &'s str,
}

impl Builder<'_> {
    fn span(&self, pair: &Pair<'_, Rule>) -> Span {
        let s = pair.as_span();
        Span::new(s.start(), s.end())
    }

    fn name(&self, pair: Pair<'_, Rule>) -> Name {
        Name {
            text: pair.as_str().to_string(),
            span: self.span(&pair),
        }
    }

    fn stage(&self, pair: Pair<'_, Rule>) -> Result<ast::Stage, LangError> {
        let mut inner = pair.into_inner();
        let name = self.name(inner.next().expect("grammar: a stage starts with a name"));
        // pest's span of `stage` takes in the whitespace skipped while looking for
        // `(`; end the span at the name or the closing parenthesis instead.
        let (args, end) = match inner.next() {
            Some(args) => {
                let end = args.as_span().end();
                (Some(self.args(args)?), end)
            }
            None => (None, name.span.end),
        };
        let span = Span::new(name.span.start, end);
        Ok(ast::Stage { name, args, span })
    }

    fn args(&self, pair: Pair<'_, Rule>) -> Result<Vec<ast::Arg>, LangError> {
        let mut out: Vec<ast::Arg> = Vec::new();
        for p in pair.into_inner().filter(|p| p.as_rule() == Rule::arg) {
            let arg = self.arg(p)?;
            if arg.name.is_none() {
                if let Some(named) = out.iter().find(|a| a.name.is_some()) {
                    return Err(LangError::new(
                        ErrorKind::PositionalAfterNamed,
                        self.source,
                        arg.span,
                        "positional argument after a named one",
                    )
                    .with_label("positional argument")
                    .with_note_at(named.span, "named argument")
                    .with_help(
                        "write the positional arguments first, or give this one its \
                         parameter name (`name = value`)",
                    ));
                }
            }
            out.push(arg);
        }
        Ok(out)
    }

    fn arg(&self, pair: Pair<'_, Rule>) -> Result<ast::Arg, LangError> {
        let start = pair.as_span().start();
        let inner = pair
            .into_inner()
            .next()
            .expect("grammar: an arg has one child");
        match inner.as_rule() {
            Rule::named => {
                let mut parts = inner.into_inner();
                let name = self.name(parts.next().expect("grammar: named arg name"));
                let value = parts
                    .find(|p| p.as_rule() == Rule::value)
                    .expect("grammar: named arg value");
                let value = self.value(value)?;
                // End at the value, not at whitespace pest skipped after it.
                let span = Span::new(start, value.span().end);
                Ok(ast::Arg {
                    name: Some(name),
                    value,
                    span,
                })
            }
            _ => {
                let value = self.value(inner)?;
                let span = Span::new(start, value.span().end);
                Ok(ast::Arg {
                    name: None,
                    value,
                    span,
                })
            }
        }
    }

    fn value(&self, pair: Pair<'_, Rule>) -> Result<Value, LangError> {
        let inner = pair
            .into_inner()
            .next()
            .expect("grammar: a value has one child");
        let span = self.span(&inner);
        Ok(match inner.as_rule() {
            Rule::number => Value::Number(self.number(inner)?),
            Rule::string => Value::Str {
                value: self.unescape(inner.as_str(), span.start)?,
                span,
            },
            Rule::variable => Value::Var {
                name: inner.as_str()[1..].to_string(),
                span,
            },
            Rule::gradient => {
                let mut items = Vec::new();
                for p in inner.into_inner().filter(|p| p.as_rule() == Rule::number) {
                    items.push(self.number(p)?);
                }
                Value::Gradient { items, span }
            }
            Rule::stage => {
                let stage = self.stage(inner)?;
                match stage.args {
                    None => Value::Name(stage.name),
                    Some(_) => Value::Stage(stage),
                }
            }
            rule => unreachable!("grammar: unexpected value {rule:?}"),
        })
    }

    fn number(&self, pair: Pair<'_, Rule>) -> Result<Number, LangError> {
        let span = self.span(&pair);
        let text = pair.as_str();
        match text.parse::<f64>() {
            Ok(value) if value.is_finite() => Ok(Number { value, span }),
            _ => Err(LangError::new(
                ErrorKind::Syntax,
                self.source,
                span,
                format!("`{text}` is too large to be a number"),
            )
            .with_label("too large")
            .with_help("numbers must be finite 64-bit floats (at most about 1.8e308 in size)")),
        }
    }

    /// Resolves the escapes of a string literal (quotes included in `lit`, which
    /// starts at byte `at` of the source).
    fn unescape(&self, lit: &str, at: usize) -> Result<String, LangError> {
        let body = &lit[1..lit.len() - 1];
        let mut out = String::with_capacity(body.len());
        let mut chars = body.char_indices();
        while let Some((_, c)) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            let (i, e) = chars.next().expect("grammar: escape has a character");
            out.push(match e {
                'n' => '\n',
                'r' => '\r',
                't' => '\t',
                '0' => '\0',
                'u' => {
                    // `u{hex}`: the grammar guarantees the braces and 1-6 hex digits.
                    let rest = &body[i + 2..];
                    let close = rest.find('}').expect("grammar: \\u{..} is closed");
                    let hex = &rest[..close];
                    for _ in 0..close + 2 {
                        chars.next();
                    }
                    let code = u32::from_str_radix(hex, 16).expect("grammar: hex digits");
                    match char::from_u32(code) {
                        Some(ch) => ch,
                        None => {
                            let start = at + 1 + i - 1;
                            let end = at + 1 + i + 2 + close + 1;
                            return Err(LangError::new(
                                ErrorKind::Syntax,
                                self.source,
                                Span::new(start, end),
                                format!("`\\u{{{hex}}}` is not a Unicode character"),
                            )
                            .with_label("invalid escape")
                            .with_help(
                                "a `\\u{...}` escape takes the hexadecimal code of a Unicode \
                                 scalar value (not a surrogate, at most 10FFFF)",
                            ));
                        }
                    }
                }
                other => other, // `\\`, `\"`, `\'`
            });
        }
        Ok(out)
    }
}

fn empty_error(source: &str) -> LangError {
    LangError::new(
        ErrorKind::Empty,
        source,
        Span::new(0, 0),
        "the merge expression is empty",
    )
    .with_label("no stage here")
    .with_help("write at least one stage, e.g. `ties(0.2)` or `trim(0.2) |> elect |> disjoint`")
}

/// Refuses parentheses and brackets nested more than [`MAX_DEPTH`] deep, skipping
/// strings and comments.
fn check_nesting(source: &str) -> Result<(), LangError> {
    let mut depth = 0usize;
    let mut chars = source.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '#' => {
                for (_, c) in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '"' => skip_string(&mut chars),
            '(' | '[' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(LangError::new(
                        ErrorKind::Syntax,
                        source,
                        Span::new(i, i + 1),
                        format!("the expression is nested more than {MAX_DEPTH} levels deep"),
                    )
                    .with_label("too deep")
                    .with_help("chain stages with `|>` instead of nesting them"));
                }
            }
            ')' | ']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// How a rule is named in "expected ..." messages, and where it sorts among them.
fn describe(rule: Rule) -> (u8, &'static str) {
    match rule {
        Rule::stage => (0, "an operator"),
        Rule::name => (1, "an operator name"),
        Rule::arg => (2, "an argument"),
        Rule::value => (3, "a value"),
        Rule::number => (4, "a number"),
        Rule::string => (5, "a string"),
        Rule::variable => (6, "a `$variable`"),
        Rule::gradient => (7, "a list of numbers"),
        Rule::assign => (8, "`=`"),
        Rule::lparen => (9, "`(`"),
        Rule::lbracket => (10, "`[`"),
        Rule::comma => (11, "`,`"),
        Rule::rbracket => (12, "`]`"),
        Rule::rparen => (13, "`)`"),
        Rule::pipe => (14, "`|>`"),
        Rule::EOI => (15, "the end of the expression"),
        Rule::named => (16, "a named argument"),
        Rule::args => (17, "arguments"),
        _ => (18, "an expression"),
    }
}

/// Joins phrases as `a`, `a or b`, `a, b or c`.
pub(crate) fn or_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// What sits at byte `pos`: a description for "found ...", and its span.
fn found_at(source: &str, pos: usize) -> (String, Span) {
    let rest = &source[pos..];
    let Some(first) = rest.chars().next() else {
        return ("the end of the expression".into(), Span::new(pos, pos));
    };
    let word_len = |pred: fn(char) -> bool| -> usize {
        rest.char_indices()
            .find(|&(_, c)| !pred(c))
            .map_or(rest.len(), |(i, _)| i)
    };
    let len = if first.is_ascii_alphabetic() || first == '_' {
        word_len(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    } else if first.is_ascii_digit() {
        word_len(|c| c.is_ascii_alphanumeric() || c == '.')
    } else if rest.starts_with("|>") || rest.starts_with("::") {
        2
    } else {
        first.len_utf8()
    };
    let text = &rest[..len];
    let shown = if first == '\n' {
        "a line break".to_string()
    } else {
        format!("`{text}`")
    };
    (shown, Span::new(pos, pos + len))
}

/// Converts a pest error into our own: the caret at the offending token, the
/// expected tokens in words.
fn syntax_error(source: &str, err: &pest::error::Error<Rule>) -> LangError {
    let pos = match err.location {
        InputLocation::Pos(p) => p,
        InputLocation::Span((start, _)) => start,
    };
    let mut rules: Vec<Rule> = match &err.variant {
        ErrorVariant::ParsingError { positives, .. } => positives.clone(),
        ErrorVariant::CustomError { .. } => Vec::new(),
    };
    // After a complete name, `(` and `=` are possible too, but a missing `,`, `)` or
    // `|>` is by far the likelier mistake: name only the closers then.
    let closers = [
        Rule::comma,
        Rule::rparen,
        Rule::rbracket,
        Rule::pipe,
        Rule::EOI,
    ];
    if rules.iter().any(|r| closers.contains(r)) {
        rules.retain(|r| !matches!(r, Rule::lparen | Rule::assign));
    }
    let mut described: Vec<(u8, &str)> = rules.into_iter().map(describe).collect();
    described.sort();
    described.dedup();
    let expected: Vec<String> = described.iter().map(|(_, d)| d.to_string()).collect();
    let expected = if expected.is_empty() {
        "something else".to_string()
    } else {
        or_list(&expected)
    };

    let (found, mut span) = found_at(source, pos);
    if pos >= source.len() {
        // Put the caret right after the last token rather than after trailing
        // whitespace and comments (possibly on a line of its own).
        let end = last_token_end(source);
        span = Span::new(end, end);
    }
    let mut error = LangError::new(
        ErrorKind::Syntax,
        source,
        span,
        format!("expected {expected}, found {found}"),
    )
    .with_label(format!("expected {expected}"));
    if let Some(help) = syntax_help(source, pos, &expected) {
        error = error.with_help(help);
    }
    if pos >= source.len() || (rest_is_pipe(source, pos) && expected.contains("`)`")) {
        if let Some(open) = unclosed(&source[..pos]) {
            error = error.with_note_at(Span::new(open, open + 1), "opened here and not closed");
        }
    }
    error
}

fn rest_is_pipe(source: &str, pos: usize) -> bool {
    source[pos..].starts_with("|>")
}

/// The innermost `(` or `[` left open at the end of `source` (strings and comments
/// skipped).
fn unclosed(source: &str) -> Option<usize> {
    let mut open = Vec::new();
    let mut chars = source.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '#' => {
                for (_, c) in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '"' => skip_string(&mut chars),
            '(' | '[' => open.push(i),
            ')' | ']' => {
                open.pop();
            }
            _ => {}
        }
    }
    open.pop()
}

/// The end of the last character that is neither whitespace nor in a comment.
fn last_token_end(source: &str) -> usize {
    let mut end = 0;
    let mut chars = source.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '#' => {
                for (_, c) in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '"' => {
                skip_string(&mut chars);
                end = chars.clone().next().map_or(source.len(), |(j, _)| j);
            }
            c if c.is_whitespace() => {}
            c => end = i + c.len_utf8(),
        }
    }
    end
}

/// Advances past the rest of a string literal (the opening quote already taken).
fn skip_string(chars: &mut std::str::CharIndices<'_>) {
    while let Some((_, c)) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '"' | '\n' => break,
            _ => {}
        }
    }
}

/// Advice for the common slips.
fn syntax_help(source: &str, pos: usize, expected: &str) -> Option<String> {
    let rest = &source[pos..];
    let before = source[..pos].trim_end();
    if (rest.starts_with('|') && !rest.starts_with("|>")) || rest.starts_with('>') {
        return Some("stages are chained with `|>`".into());
    }
    if rest.starts_with("|>") && (expected.contains("`)`") || expected.contains("`]`")) {
        return Some("close the parenthesis before `|>`".into());
    }
    if rest.starts_with(',') && expected.contains("`|>`") {
        return Some("stages are chained with `|>`, not `,`".into());
    }
    if let Some(after_quote) = rest.strip_prefix('"') {
        let line = after_quote.split('\n').next().unwrap_or("");
        return Some(if line.contains('"') {
            "a string may only use the escapes \\\\ \\\" \\' \\n \\r \\t \\0 and \\u{hex}".into()
        } else {
            "this string is not closed: end it with `\"` on the same line".into()
        });
    }
    if rest.starts_with('$') {
        return Some("a variable is `$` followed by a name, e.g. `$density`".into());
    }
    if rest.starts_with('.') && before.ends_with(|c: char| c.is_ascii_digit()) {
        return Some("a decimal point must be followed by digits: write `1.0` or `1`".into());
    }
    if rest.starts_with("::") {
        return Some(
            "`::` joins a plugin's name and an operator's name, e.g. `tall::consensus`".into(),
        );
    }
    if before.ends_with("|>") {
        return Some("`|>` must be followed by another stage".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(src: &str) -> ast::Pipeline {
        parse(src).unwrap_or_else(|e| panic!("{src}: {e:?}"))
    }

    fn err(src: &str) -> LangError {
        parse(src).expect_err(src)
    }

    #[test]
    fn stages_and_args() {
        let p = ok("ties(trim(0.2), elect, disjoint) |> dare(p=0.9, rescale=l1)");
        assert_eq!(p.stages.len(), 2);
        assert_eq!(p.span, Span::new(0, 59));
        let ties = &p.stages[0];
        assert_eq!(ties.name.text, "ties");
        assert_eq!(ties.span, Span::new(0, 32));
        let args = ties.args();
        assert_eq!(args.len(), 3);
        match &args[0].value {
            Value::Stage(s) => {
                assert_eq!(s.name.text, "trim");
                assert_eq!(s.span, Span::new(5, 14));
                assert!(
                    matches!(s.args()[0].value, Value::Number(Number { value, .. }) if value == 0.2)
                );
            }
            v => panic!("{v:?}"),
        }
        assert!(
            matches!(&args[1].value, Value::Name(n) if n.text == "elect" && n.span == Span::new(16, 21))
        );
        let dare = &p.stages[1];
        assert_eq!(dare.args()[1].name.as_ref().unwrap().text, "rescale");
        assert_eq!(dare.args()[1].span, Span::new(48, 58));
        assert_eq!(dare.args()[1].value.span(), Span::new(56, 58));
    }

    #[test]
    fn stage_spans_exclude_trailing_whitespace() {
        let p = ok("sum   |> scale(0.5)  # done\n");
        assert_eq!(p.stages[0].span, Span::new(0, 3));
        assert_eq!(p.stages[1].span, Span::new(9, 19));
        assert_eq!(p.span, Span::new(0, 19));
        let p = ok("ties(elect \n, disjoint )");
        match &p.stages[0].args()[0].value {
            Value::Name(n) => assert_eq!(n.span, Span::new(5, 10)),
            v => panic!("{v:?}"),
        }
        assert_eq!(p.stages[0].args()[0].span, Span::new(5, 10));
    }

    #[test]
    fn bare_and_empty_parens_differ() {
        assert_eq!(ok("elect").stages[0].args, None);
        assert_eq!(ok("elect()").stages[0].args, Some(vec![]));
    }

    #[test]
    fn numbers() {
        let cases = [
            ("1", 1.0),
            ("-0.5", -0.5),
            ("+2", 2.0),
            (".5", 0.5),
            ("-.5", -0.5),
            ("1e-12", 1e-12),
            ("2.5E3", 2500.0),
            ("1e+2", 100.0),
        ];
        for (text, want) in cases {
            let p = ok(&format!("f({text})"));
            match p.stages[0].args()[0].value {
                Value::Number(n) => assert_eq!(n.value, want, "{text}"),
                ref v => panic!("{text}: {v:?}"),
            }
        }
        for bad in ["f(5.)", "f(1e)", "f(- 1)", "f(inf)x", "f(0x10)", "f(1_000)"] {
            assert_eq!(err(bad).kind(), ErrorKind::Syntax, "{bad}");
        }
        assert_eq!(
            err("f(1e999)").message(),
            "`1e999` is too large to be a number"
        );
    }

    #[test]
    fn strings_variables_gradients() {
        let p = ok(r#"f("a \"b\" \\ \n \u{e9}", $x_1, [0.1, 0.5, 1,])"#);
        let args = p.stages[0].args();
        assert!(matches!(&args[0].value, Value::Str { value, .. } if value == "a \"b\" \\ \n é"));
        assert!(
            matches!(&args[1].value, Value::Var { name, span } if name == "x_1" && *span == Span::new(26, 30))
        );
        match &args[2].value {
            Value::Gradient { items, .. } => assert_eq!(items.len(), 3),
            v => panic!("{v:?}"),
        }
        let e = err(r#"f("ab\u{d800}")"#);
        assert_eq!(e.kind(), ErrorKind::Syntax);
        assert_eq!(e.span(), Span::new(5, 13));
        assert_eq!(e.message(), "`\\u{d800}` is not a Unicode character");
        assert_eq!(err(r#"f("open)"#).kind(), ErrorKind::Syntax);
        assert_eq!(err("f([])").kind(), ErrorKind::Syntax);
    }

    #[test]
    fn namespaced_names() {
        let p = ok("tall::consensus(0.5) |> a::b::c");
        assert_eq!(p.stages[0].name.text, "tall::consensus");
        assert_eq!(p.stages[1].name.text, "a::b::c");
        assert_eq!(err("tall::(1)").kind(), ErrorKind::Syntax);
    }

    #[test]
    fn comments_whitespace_trailing_commas() {
        let p = ok("# TIES\n  ties(\n    trim(0.2),  # density\n    elect,\n    disjoint,\n  )\n|> scale(0.8) # done");
        assert_eq!(p.stages.len(), 2);
        assert_eq!(p.stages[0].args().len(), 3);
        assert_eq!(err("f(,)").kind(), ErrorKind::Syntax);
        assert_eq!(err("f(1,,)").kind(), ErrorKind::Syntax);
    }

    #[test]
    fn empty() {
        for src in ["", "   ", "# nothing\n  # at all"] {
            assert_eq!(err(src).kind(), ErrorKind::Empty, "{src:?}");
        }
    }

    #[test]
    fn positional_after_named() {
        let e = err("dare(p=0.9, l1)");
        assert_eq!(e.kind(), ErrorKind::PositionalAfterNamed);
        assert_eq!(e.span(), Span::new(12, 14));
    }

    #[test]
    fn syntax_messages() {
        let e = err("trim(0.2) elect");
        assert_eq!(
            e.message(),
            "expected `|>` or the end of the expression, found `elect`"
        );
        assert_eq!(e.span(), Span::new(10, 15));
        let e = err("trim(0.2 0.3)");
        assert_eq!(e.message(), "expected `,` or `)`, found `0.3`");
        let e = err("trim |> ");
        assert_eq!(
            e.message(),
            "expected an operator name, found the end of the expression"
        );
        assert_eq!(e.span(), Span::new(7, 7));
        let e = err("trim(k=)");
        assert_eq!(e.message(), "expected a value, found `)`");
        let e = err("trim | elect");
        assert_eq!(e.help_text(), Some("stages are chained with `|>`"));
        let e = err("f([0.1, $x])");
        assert_eq!(e.message(), "expected a number or `]`, found `$`");
    }

    #[test]
    fn nesting_is_limited() {
        let deep = format!("{}{}", "f(".repeat(40), ")".repeat(40));
        let e = err(&deep);
        assert_eq!(e.kind(), ErrorKind::Syntax);
        assert_eq!(e.span(), Span::new(65, 66));
        let fine = format!("{}{}", "f(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        ok(&fine);
    }

    #[test]
    fn display_reparses() {
        let src =
            r#"ties( trim(.5), elect(count),disjoint ) |> x::y(a="q\"", b=$v, c=[1, 2e3],) # c"#;
        let p = ok(src);
        let shown = p.to_string();
        assert_eq!(
            shown,
            r#"ties(trim(0.5), elect(count), disjoint) |> x::y(a="q\"", b=$v, c=[1, 2000])"#
        );
        let again = ok(&shown);
        assert_eq!(again.to_string(), shown);
    }
}

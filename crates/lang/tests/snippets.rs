//! Data-driven tests: every `.merge` file under `tests/snippets/good` must compile and
//! every one under `tests/snippets/bad` must fail; the syntax tree and canonical
//! pipeline (good) or the rendered diagnostic (bad) are snapshot-tested with insta.
//!
//! To accept changed snapshots without `cargo insta`:
//! `INSTA_UPDATE=always cargo test -p reefknot-lang --test snippets`, then review the
//! `.snap` files.

mod common;

use std::fmt::Write as _;
use std::path::Path;

use common::TestCatalog;
use reefknot_lang::spec::format_number;
use reefknot_lang::{ast, compile, parse, ArgValue, Pipeline, Span};

fn show_span(s: Span) -> String {
    format!("{}..{}", s.start, s.end)
}

fn dump_value(out: &mut String, v: &ast::Value, depth: usize) {
    let pad = "  ".repeat(depth);
    match v {
        ast::Value::Number(n) => writeln!(
            out,
            "{pad}number {} @{}",
            format_number(n.value),
            show_span(n.span)
        ),
        ast::Value::Str { value, span } => {
            writeln!(out, "{pad}string {value:?} @{}", show_span(*span))
        }
        ast::Value::Name(n) => writeln!(out, "{pad}name {} @{}", n.text, show_span(n.span)),
        ast::Value::Var { name, span } => writeln!(out, "{pad}var ${name} @{}", show_span(*span)),
        ast::Value::Gradient { items, span } => {
            let items: Vec<String> = items.iter().map(|n| format_number(n.value)).collect();
            writeln!(
                out,
                "{pad}gradient [{}] @{}",
                items.join(", "),
                show_span(*span)
            )
        }
        ast::Value::Stage(s) => {
            dump_stage(out, s, depth);
            Ok(())
        }
    }
    .unwrap();
}

fn dump_stage(out: &mut String, s: &ast::Stage, depth: usize) {
    let pad = "  ".repeat(depth);
    let parens = if s.args.is_some() { "()" } else { "" };
    writeln!(
        out,
        "{pad}stage {}{parens} @{}",
        s.name.text,
        show_span(s.span)
    )
    .unwrap();
    for a in s.args() {
        match &a.name {
            Some(n) => writeln!(out, "{pad}  arg {}= @{}", n.text, show_span(a.span)),
            None => writeln!(out, "{pad}  arg @{}", show_span(a.span)),
        }
        .unwrap();
        dump_value(out, &a.value, depth + 2);
    }
}

/// The checked pipeline, one stage per line: canonical form, signature, where each
/// argument came from.
fn dump_pipeline(out: &mut String, p: &Pipeline) {
    for call in &p.stages {
        let args: Vec<String> = call
            .args
            .iter()
            .map(|a| match a.span {
                Some(s) => format!("{}={} @{}", a.param.name, a.value, show_span(s)),
                None => format!("{}={} (default)", a.param.name, a.value),
            })
            .collect();
        writeln!(
            out,
            "{} : {} @{}{}{}",
            call.op,
            call.signature,
            show_span(call.span),
            if args.is_empty() { "" } else { " | " },
            args.join(", ")
        )
        .unwrap();
    }
}

fn render(err: &reefknot_lang::LangError) -> String {
    let handler =
        miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
            .with_width(100);
    let mut out = String::new();
    handler.render_report(&mut out, err).unwrap();
    out
}

/// The pipeline with every span erased, to compare pipelines parsed from different text.
fn without_spans(p: &Pipeline) -> Pipeline {
    let mut p = p.clone();
    for call in &mut p.stages {
        call.span = Span::default();
        for arg in &mut call.args {
            arg.span = None;
        }
    }
    p
}

fn check(path: &Path) -> String {
    let source = std::fs::read_to_string(path).unwrap();
    let good = path
        .parent()
        .and_then(|p| p.file_name())
        .is_some_and(|n| n == "good");
    let mut out = String::new();
    match compile(&source, &TestCatalog) {
        Ok(pipeline) => {
            assert!(
                good,
                "{} should fail but compiled to {pipeline}",
                path.display()
            );
            let canonical = pipeline.to_string();
            // The canonical form compiles to the same pipeline, and is a fixed point.
            let again = compile(&canonical, &TestCatalog)
                .unwrap_or_else(|e| panic!("canonical form `{canonical}` fails: {e}"));
            assert_eq!(without_spans(&again), without_spans(&pipeline));
            assert_eq!(again.to_string(), canonical);
            // Every variable is an argument of the pipeline.
            for var in pipeline.variables() {
                assert!(pipeline
                    .stages
                    .iter()
                    .flat_map(|c| &c.args)
                    .any(|a| a.value == ArgValue::Var(var.to_string())));
            }
            let ast = parse(&source).unwrap();
            writeln!(out, "canonical: {canonical}\n").unwrap();
            writeln!(out, "checked:").unwrap();
            dump_pipeline(&mut out, &pipeline);
            writeln!(out, "\nsyntax:").unwrap();
            for stage in &ast.stages {
                dump_stage(&mut out, stage, 1);
            }
        }
        Err(err) => {
            assert!(
                !good,
                "{} should compile but fails:\n{}",
                path.display(),
                render(&err)
            );
            writeln!(out, "kind: {:?}", err.kind()).unwrap();
            writeln!(out, "span: {}", show_span(err.span())).unwrap();
            out.push_str(&render(&err));
        }
    }
    out
}

#[test]
fn snippets() {
    insta::glob!("snippets/**/*.merge", |path| {
        let source = std::fs::read_to_string(path).unwrap();
        let out = check(path);
        insta::with_settings!({
            description => source.trim_end(),
            omit_expression => true,
            prepend_module_to_snapshot => false,
        }, {
            insta::assert_snapshot!(out);
        });
    });
}

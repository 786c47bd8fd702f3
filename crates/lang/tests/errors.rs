//! The error type's contract: kinds and spans for each category, the accessors, the
//! miette rendering, and relocating an error into the file the expression came from.

mod common;

use common::TestCatalog;
use miette::Diagnostic;
use reefknot_lang::{compile, ErrorKind, LangError, Span};

fn err(src: &str) -> LangError {
    compile(src, &TestCatalog).expect_err(src)
}

fn render(e: &LangError) -> String {
    let mut out = String::new();
    miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
        .with_width(100)
        .render_report(&mut out, e)
        .unwrap();
    out
}

#[test]
fn every_kind_at_its_span() {
    // (source, kind, the text the caret covers)
    let cases: &[(&str, ErrorKind, &str)] = &[
        ("trim(0.2) elect", ErrorKind::Syntax, "elect"),
        ("  # only a comment", ErrorKind::Empty, ""),
        (
            "dare(p=0.9, l1) |> sum",
            ErrorKind::PositionalAfterNamed,
            "l1",
        ),
        (
            "trim |> elct |> disjoint",
            ErrorKind::UnknownOperator,
            "elct",
        ),
        (
            "consensus |> sum",
            ErrorKind::AmbiguousOperator,
            "consensus",
        ),
        ("dare(q=0.5) |> sum", ErrorKind::UnknownParameter, "q"),
        (
            "dare(0.5, p=0.6) |> sum",
            ErrorKind::DuplicateArgument,
            "p=0.6",
        ),
        (
            "elect(mass, count) |> disjoint",
            ErrorKind::TooManyArguments,
            "count",
        ),
        ("sum |> scale", ErrorKind::MissingArgument, "scale"),
        ("trim(\"0.2\") |> sum", ErrorKind::ArgumentType, "\"0.2\""),
        ("dare(1) |> sum", ErrorKind::OutOfRange, "1"),
        ("elect(mas) |> disjoint", ErrorKind::UnknownChoice, "mas"),
        ("trim([0.2]) |> sum", ErrorKind::ShortGradient, "[0.2]"),
        ("trim |> disjoint", ErrorKind::StageMismatch, "disjoint"),
        ("trim |> elect", ErrorKind::UnfinishedPipeline, "elect"),
        ("ties(elect, elect, disjoint)", ErrorKind::TiesPart, "elect"),
    ];
    for (src, kind, covered) in cases {
        let e = err(src);
        assert_eq!(e.kind(), *kind, "{src}: {}", e.message());
        let Span { start, end } = e.span();
        assert_eq!(&src[start..end], *covered, "{src}");
        assert_eq!(e.source_text(), *src);
        assert_eq!(e.to_string(), e.message());
        let code = e.code().expect("every error has a code").to_string();
        assert_eq!(code, kind.code());
    }
}

#[test]
fn disjoint_without_elect_says_what_to_do() {
    let e = err("trim(0.2) |> disjoint");
    assert_eq!(
        e.message(),
        "`disjoint` needs an elected sign (Voted) but receives the stack of task vectors (Stack)"
    );
    assert_eq!(e.span(), Span::new(13, 21));
    let help = e.help_text().unwrap();
    assert!(help.starts_with("put `elect`"), "{help}");
    assert_eq!(e.help().unwrap().to_string(), help);
}

#[test]
fn combined_too_early_points_at_the_combining_stage() {
    let e = err("trim |> sum |> scale(2) |> elect |> disjoint");
    assert_eq!(e.kind(), ErrorKind::StageMismatch);
    assert_eq!(e.span(), Span::new(27, 32));
    assert_eq!(
        e.notes(),
        &[(Span::new(8, 11), "models combined here".to_string())]
    );
    assert!(e.help_text().unwrap().contains("combined by `sum`"));
}

#[test]
fn unknown_operator_lists_at_most_three_closest() {
    let e = err("tie");
    assert_eq!(e.help_text(), Some("did you mean `ties`?"));
    let e = err("dsjoint");
    assert_eq!(e.help_text(), Some("did you mean `disjoint`?"));
    let e = err("ama");
    let help = e.help_text().unwrap();
    assert!(help.matches('`').count() <= 6, "{help}");
}

#[test]
fn ambiguous_lists_the_qualified_candidates() {
    let e = err("consensus |> sum");
    assert_eq!(
        e.help_text(),
        Some("write one of `tall::consensus` or `wide::consensus`")
    );
    assert!(compile("tall::consensus |> sum", &TestCatalog).is_ok());
}

#[test]
fn named_source() {
    let e = err("trim |> disjoint").with_source_name("recipe.yaml: merge");
    assert_eq!(e.source_name(), Some("recipe.yaml: merge"));
    assert_eq!(e.source_text(), "trim |> disjoint");
    assert!(
        render(&e).contains("[recipe.yaml: merge:1:9]"),
        "{}",
        render(&e)
    );
    // Renaming again keeps the text.
    let e = e.with_source_name("other");
    assert_eq!(e.source_text(), "trim |> disjoint");
}

#[test]
fn offset_relocates_into_the_recipe_file() {
    let yaml = "base: models/base\nmodels:\n  - path: a\nmerge: trim(0.2) |> disjoint\n";
    let at = yaml.find("trim").unwrap();
    let expr = &yaml[at..yaml.len() - 1];
    let e = compile(expr, &TestCatalog)
        .unwrap_err()
        .offset(at, yaml.to_string(), "recipe.yaml");
    assert_eq!(e.kind(), ErrorKind::StageMismatch);
    assert_eq!(&yaml[e.span().start..e.span().end], "disjoint");
    assert_eq!(e.source_name(), Some("recipe.yaml"));
    assert_eq!(e.source_text(), yaml);
    let shown = render(&e);
    assert!(shown.contains("[recipe.yaml:4:21]"), "{shown}");
    assert!(
        shown.contains(" 4 │ merge: trim(0.2) |> disjoint"),
        "{shown}"
    );

    // Secondary labels move too.
    let yaml = "merge: sum |> elect |> disjoint\n";
    let e = compile(&yaml[7..yaml.len() - 1], &TestCatalog)
        .unwrap_err()
        .offset(7, yaml.to_string(), "r.yaml");
    let (note, _) = &e.notes()[0];
    assert_eq!(&yaml[note.start..note.end], "sum");
}

#[test]
fn errors_are_small_and_cloneable() {
    assert!(std::mem::size_of::<LangError>() <= 16);
    let e = err("sum |> scale");
    let c = e.clone();
    assert_eq!(c.message(), e.message());
}

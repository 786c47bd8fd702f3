//! Property tests: random well-typed expressions (in random layouts: positional or
//! named arguments, optional parentheses, comments, line breaks) compile, and the
//! canonical Display of the checked pipeline compiles back to the same pipeline.
//! Random text never makes the parser or checker panic, and every error's span lies
//! inside the source.

mod common;

use common::*;
use proptest::prelude::*;
use reefknot_lang::spec::format_number;
use reefknot_lang::{compile, parse, Bound, OpSpec, ParamKind, ParamSpec, Pipeline, Span, TIES};

/// The pipeline with every span erased.
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

/// Text between two tokens.
fn gap() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => Just(String::new()),
        4 => Just(" ".to_string()),
        1 => Just("\n    ".to_string()),
        1 => Just("  # a comment, with |> and ( inside\n".to_string()),
        1 => Just("\t\r\n".to_string()),
    ]
}

/// A number in the range of `kind`, written in one of the accepted forms.
fn number(kind: ParamKind) -> BoxedStrategy<String> {
    let ParamKind::Number { min, max } = kind else {
        unreachable!()
    };
    let lo = match min {
        Bound::Unbounded => -1e6,
        Bound::Inclusive(b) | Bound::Exclusive(b) => b,
    };
    let hi = match max {
        Bound::Unbounded => lo.max(0.0) + 1e6,
        Bound::Inclusive(b) | Bound::Exclusive(b) => b,
    };
    let special = prop_oneof![Just(lo), Just(hi), Just(0.0), Just(1e-12), Just(0.2)];
    prop_oneof![
        3 => (0.0f64..1.0).prop_map(move |t| lo + t * (hi - lo)),
        1 => special,
    ]
    .prop_filter("in range", move |x| kind.admits(*x))
    .prop_flat_map(|x| {
        prop_oneof![
            Just(format_number(x)),
            Just(format!("{x}")),
            Just(format!("{x:e}")),
            Just(format!("{x:E}")),
            Just(if x >= 0.0 {
                format!("+{x}")
            } else {
                format!("{x}")
            }),
        ]
    })
    .boxed()
}

fn variable() -> impl Strategy<Value = String> {
    "[a-z_][a-z0-9_]{0,6}".prop_map(|n| format!("${n}"))
}

/// A literal for `param`.
fn literal(param: &'static ParamSpec) -> BoxedStrategy<String> {
    match param.kind {
        ParamKind::Number { .. } => prop_oneof![
            4 => number(param.kind),
            1 => variable(),
            1 => (prop::collection::vec(number(param.kind), 2..5), any::<bool>()).prop_map(
                |(items, trailing)| format!("[{}{}]", items.join(", "), if trailing { "," } else { "" })
            ),
        ]
        .boxed(),
        ParamKind::Choice(options) => prop::sample::select(options).prop_map(String::from).boxed(),
        ParamKind::Bool => any::<bool>().prop_map(|b| b.to_string()).boxed(),
        ParamKind::Text => prop::collection::vec(any::<char>(), 0..8)
            .prop_map(|cs| format!("{:?}", cs.into_iter().collect::<String>()))
            .boxed(),
    }
}

/// A call of `spec` written as `name`, with a random subset of its parameters (the
/// required ones always), the first few positionally and the rest named in any order.
fn call(names: Vec<String>, spec: &'static OpSpec) -> BoxedStrategy<String> {
    let params: Vec<BoxedStrategy<Option<String>>> = spec
        .params
        .iter()
        .map(|p| {
            if p.default.is_some() {
                prop::option::of(literal(p)).boxed()
            } else {
                literal(p).prop_map(Some).boxed()
            }
        })
        .collect();
    (
        prop::sample::select(names),
        params,
        0..=spec.params.len(),
        any::<prop::sample::Index>(),
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec(gap(), 16),
    )
        .prop_map(
            move |(name, values, npos, shuffle, parens, trailing, gaps)| {
                let mut gaps = gaps.into_iter().cycle();
                let given: Vec<(usize, String)> = values
                    .into_iter()
                    .enumerate()
                    .filter_map(|(i, v)| v.map(|v| (i, v)))
                    .collect();
                // Leading parameters that are all given may be positional.
                let npos = given
                    .iter()
                    .enumerate()
                    .take_while(|(j, (i, _))| j == i)
                    .count()
                    .min(npos);
                let mut args: Vec<String> = given[..npos].iter().map(|(_, v)| v.clone()).collect();
                let mut named: Vec<String> = given[npos..]
                    .iter()
                    .map(|(i, v)| {
                        format!(
                            "{}{}={}{v}",
                            spec.params[*i].name,
                            gaps.next().unwrap(),
                            gaps.next().unwrap()
                        )
                    })
                    .collect();
                if !named.is_empty() {
                    let k = shuffle.index(named.len());
                    named.rotate_left(k);
                }
                args.extend(named);
                if args.is_empty() && !parens {
                    return name;
                }
                let mut out = format!("{name}{}(", gaps.next().unwrap());
                for (i, a) in args.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&gaps.next().unwrap());
                    out.push_str(a);
                }
                if trailing && !args.is_empty() {
                    out.push(',');
                }
                out.push_str(&gaps.next().unwrap());
                out.push(')');
                out
            },
        )
        .boxed()
}

fn names(spec: &OpSpec, extra: &[&str]) -> Vec<String> {
    let mut v = vec![spec.name.to_string()];
    v.extend(spec.aliases.iter().map(|a| a.to_string()));
    v.extend(extra.iter().map(|a| a.to_string()));
    v
}

fn sparsifier() -> BoxedStrategy<String> {
    prop_oneof![
        call(names(&TRIM, &[]), &TRIM),
        call(names(&DARE, &[]), &DARE),
        call(vec!["tall::consensus".into()], &TALL_CONSENSUS),
    ]
    .boxed()
}

fn elector() -> BoxedStrategy<String> {
    prop_oneof![
        3 => call(names(&ELECT, &[]), &ELECT),
        1 => call(vec!["vote".into(), "tall::vote".into()], &TALL_VOTE),
    ]
    .boxed()
}

fn combiner() -> BoxedStrategy<String> {
    call(names(&DISJOINT, &[]), &DISJOINT)
}

fn stack_to_delta() -> BoxedStrategy<String> {
    prop_oneof![
        call(names(&SUM, &[]), &SUM),
        call(names(&MEAN, &[]), &MEAN),
        call(names(&FISHER, &[]), &FISHER),
        call(vec!["wide::consensus".into()], &WIDE_CONSENSUS),
        (elector(), gap(), combiner()).prop_map(|(e, g, d)| format!("{e}{g}|>{g}{d}")),
        ties(),
    ]
    .boxed()
}

fn ties() -> BoxedStrategy<String> {
    let k = &TIES.params[0];
    prop_oneof![
        Just("ties".to_string()),
        Just("ties()".to_string()),
        literal(k).prop_map(|k| format!("ties({k})")),
        literal(k).prop_map(|k| format!("ties(k = {k})")),
        (sparsifier(), gap()).prop_map(|(s, g)| format!("ties({g}{s}{g})")),
        (literal(k), elector()).prop_map(|(k, e)| format!("ties({k}, {e})")),
        (sparsifier(), elector(), combiner(), any::<bool>()).prop_map(|(s, e, d, t)| {
            format!("ties({s}, {e}, {d}{})", if t { "," } else { "" })
        }),
    ]
    .boxed()
}

fn delta_to_delta() -> BoxedStrategy<String> {
    prop_oneof![
        call(names(&TRIM, &[]), &TRIM),
        call(names(&DARE, &[]), &DARE),
        call(names(&SCALE, &[]), &SCALE),
        call(vec!["wide::tag".into(), "tag".into()], &WIDE_TAG),
    ]
    .boxed()
}

/// A well-typed expression: sparsifiers, one stage that combines, Delta→Delta stages.
fn expression() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(sparsifier(), 0..3),
        stack_to_delta(),
        prop::collection::vec(delta_to_delta(), 0..3),
        prop::collection::vec(gap(), 8),
    )
        .prop_map(|(pre, mid, post, gaps)| {
            let stages: Vec<String> = pre.into_iter().chain([mid]).chain(post).collect();
            let mut out = gaps[0].clone();
            for (i, s) in stages.iter().enumerate() {
                if i > 0 {
                    out.push_str(&gaps[i % gaps.len()]);
                    out.push_str("|>");
                    out.push_str(&gaps[(i + 3) % gaps.len()]);
                }
                out.push_str(s);
            }
            out.push_str(&gaps[7]);
            out
        })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: Some(Box::new(
            prop::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..ProptestConfig::default()
    })]

    #[test]
    fn canonical_form_round_trips(src in expression()) {
        let pipeline = compile(&src, &TestCatalog)
            .unwrap_or_else(|e| panic!("`{src}` does not compile: {e:?}"));
        let canonical = pipeline.to_string();
        let again = compile(&canonical, &TestCatalog)
            .unwrap_or_else(|e| panic!("canonical `{canonical}` of `{src}` does not compile: {e:?}"));
        prop_assert_eq!(without_spans(&again), without_spans(&pipeline));
        prop_assert_eq!(again.to_string(), canonical);
    }

    #[test]
    fn syntax_tree_display_round_trips(src in expression()) {
        let ast = parse(&src).unwrap();
        let shown = ast.to_string();
        let reparsed = parse(&shown).unwrap();
        prop_assert_eq!(reparsed.to_string(), shown.clone());
        let a = compile(&src, &TestCatalog).unwrap();
        let b = compile(&shown, &TestCatalog).unwrap();
        prop_assert_eq!(without_spans(&a), without_spans(&b));
    }

    #[test]
    fn token_soup_never_panics(tokens in prop::collection::vec(prop::sample::select(vec![
        "trim", "ties", "elect", "disjoint", "sum", "scale", "tall::", "consensus", "x",
        "(", ")", "[", "]", ",", "|>", "|", "=", "$", "$k", "0.5", "-1", "1e", ".", "\"s\"",
        "\"", "\\", "#c\n", " ", "\n", "é", "k", "true",
    ]), 0..24)) {
        let src: String = tokens.concat();
        check_error_invariants(&src);
    }

    #[test]
    fn arbitrary_text_never_panics(src in any::<String>()) {
        check_error_invariants(&src);
    }
}

/// Compiling `src` does not panic; an error's spans lie inside the source on
/// character boundaries, and it renders.
fn check_error_invariants(src: &str) {
    if let Err(e) = compile(src, &TestCatalog) {
        let spans = std::iter::once(e.span()).chain(e.notes().iter().map(|(s, _)| *s));
        for span in spans {
            assert!(
                span.start <= span.end && span.end <= src.len(),
                "{src:?}: {span:?}"
            );
            assert!(src.is_char_boundary(span.start) && src.is_char_boundary(span.end));
        }
        assert!(!e.message().is_empty());
        let mut out = String::new();
        miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
            .render_report(&mut out, &e)
            .unwrap();
    }
}

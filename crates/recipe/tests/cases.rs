//! Data-driven tests: every recipe in `cases/bad` is rejected, and the rendered
//! diagnostic is snapshot-tested; every recipe in `cases/good` is accepted, and a
//! readable dump of the parsed recipe is snapshot-tested.

use std::fmt::Write as _;
use std::path::Path;

use miette::{GraphicalReportHandler, GraphicalTheme};
use reefknot_recipe::{Condition, Expr, Number, ParamValue, Params, Recipe, Weight};

fn render(err: &reefknot_recipe::RecipeError) -> String {
    let mut out = String::new();
    GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor())
        .with_width(100)
        .render_report(&mut out, err)
        .unwrap();
    out
}

fn case_name(path: &Path) -> String {
    let dir = path
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy();
    let file = path.file_name().unwrap().to_string_lossy();
    format!("{dir}/{file}")
}

#[test]
fn bad_recipes_are_rejected_with_located_messages() {
    insta::glob!("cases/bad/*.yaml", |path| {
        let source = std::fs::read_to_string(path).unwrap();
        let name = case_name(path);
        let err = match Recipe::parse(&source, Path::new("recipes"), &name) {
            Ok(_) => panic!("{name} was accepted"),
            Err(e) => e,
        };
        for e in err.all() {
            for label in e.spans() {
                let l = label.loc;
                assert!(
                    l.offset + l.len <= source.len(),
                    "{name}: label out of range"
                );
                assert!(
                    source.is_char_boundary(l.offset),
                    "{name}: label inside a char"
                );
                // line/column agree with the byte offset.
                let before = &source[..l.offset];
                let line = before.matches('\n').count() + 1;
                let col = before.rsplit('\n').next().unwrap().chars().count() + 1;
                assert_eq!((l.line, l.column), (line, col), "{name}: {label:?}");
            }
        }
        let kinds: Vec<String> = err.all().map(|e| format!("{:?}", e.kind())).collect();
        insta::assert_snapshot!(format!("kinds: {}\n\n{}", kinds.join(", "), render(&err)));
    });
}

#[test]
fn good_recipes_are_accepted() {
    insta::glob!("cases/good/*.yaml", |path| {
        let source = std::fs::read_to_string(path).unwrap();
        let name = case_name(path);
        let recipe = match Recipe::parse(&source, Path::new("recipes"), &name) {
            Ok(r) => r,
            Err(e) => panic!("{name} was rejected:\n{}", render(&e)),
        };
        insta::assert_snapshot!(dump(&recipe));
    });
}

/// The parsed recipe in a form that reads well in a snapshot: values, resolved paths,
/// and for every location the `line:column` and the text it covers.
fn dump(r: &Recipe) -> String {
    let mut s = String::new();
    let at = |loc: reefknot_recipe::Loc| {
        format!("{}:{} {:?}", loc.line, loc.column, &r.source[loc.range()])
    };
    writeln!(s, "base: {}", r.base.display()).unwrap();
    if let Some(a) = &r.base_lora {
        writeln!(s, "base_lora: {}  @ {}", a.path.display(), at(a.location)).unwrap();
    }
    writeln!(s, "models:").unwrap();
    for m in &r.models {
        writeln!(s, "  - path: {}  @ {}", m.path.display(), at(m.location)).unwrap();
        match &m.weight {
            Weight::Number(n) => writeln!(s, "    weight: {}", number(n)).unwrap(),
            Weight::Conditions(c) => {
                writeln!(s, "    weight:").unwrap();
                for c in c {
                    writeln!(
                        s,
                        "      {}: {}  @ {}",
                        glob(c),
                        number(&c.value),
                        at(c.loc)
                    )
                    .unwrap();
                }
            }
        }
        if let Some(a) = &m.lora {
            writeln!(s, "    lora: {}  @ {}", a.path.display(), at(a.location)).unwrap();
        }
        if let Some(f) = &m.fisher {
            writeln!(s, "    fisher: {}", f.display()).unwrap();
        }
        params(&mut s, "    ", &m.params, r);
    }
    params(&mut s, "", &r.params, r);
    expr(&mut s, "", "merge", &r.merge, r);
    if !r.overrides.is_empty() {
        writeln!(s, "overrides:").unwrap();
        for o in &r.overrides {
            writeln!(s, "  - {}  @ {}", o.selector, at(o.loc)).unwrap();
            if let Some(e) = &o.merge {
                expr(&mut s, "    ", "merge", e, r);
            }
            params(&mut s, "    ", &o.params, r);
        }
    }
    if !r.slices.is_empty() {
        writeln!(s, "slices:").unwrap();
        for sl in &r.slices {
            write!(s, "  - layers {}..{}  @ {}", sl.start, sl.end, at(sl.loc)).unwrap();
            match &sl.source {
                reefknot_recipe::SliceSource::Copy { input, scale, .. } => {
                    writeln!(s, "  copied from {input:?}, scale {scale:?}").unwrap();
                }
                reefknot_recipe::SliceSource::Merge {
                    params: p,
                    starts,
                    base,
                    models,
                } => {
                    let input = |i: &reefknot_recipe::SliceInput| match i {
                        reefknot_recipe::SliceInput::Base => "base".to_string(),
                        reefknot_recipe::SliceInput::Model(m) => format!("model {m}"),
                    };
                    writeln!(s, "  merged").unwrap();
                    if *base != reefknot_recipe::SliceInput::Base {
                        writeln!(s, "    base: {}", input(base)).unwrap();
                    }
                    for m in models.iter().flatten() {
                        writeln!(s, "    merges {}  @ {}", input(&m.input), at(m.loc)).unwrap();
                        if let Some(w) = &m.weight {
                            writeln!(s, "      weight: {w:?}").unwrap();
                        }
                        params(&mut s, "      ", &m.params, r);
                    }
                    for (model, start) in starts {
                        writeln!(s, "    {} from layer {start}", input(model)).unwrap();
                    }
                    params(&mut s, "    ", p, r);
                }
            }
        }
    }
    let custom: Vec<_> = r
        .groups
        .names()
        .into_iter()
        .filter_map(|g| r.groups.globs(g).map(|globs| (g, globs)))
        .collect();
    if !custom.is_empty() {
        writeln!(s, "groups:").unwrap();
        for (g, globs) in custom {
            writeln!(s, "  {g}: {globs:?}").unwrap();
        }
    }
    writeln!(s, "dtype: {:?}", r.dtype).unwrap();
    writeln!(s, "seed: {}", r.seed).unwrap();
    let plugins: Vec<_> = r.plugins.iter().map(|p| p.display().to_string()).collect();
    writeln!(s, "plugins: {plugins:?}").unwrap();
    writeln!(s, "shard_size: {:?}", r.shard_size).unwrap();
    s
}

fn number(n: &Number) -> String {
    match n {
        Number::Scalar(v) => format!("{v:?}"),
        Number::Gradient(v) => format!("gradient {v:?}"),
    }
}

fn plain(v: &ParamValue) -> String {
    match v {
        ParamValue::Number(n) => number(n),
        ParamValue::Text(t) => format!("text {t:?}"),
        ParamValue::Bool(b) => format!("bool {b}"),
        ParamValue::Conditions(_) => unreachable!("conditions never nest"),
    }
}

fn glob<T>(c: &Condition<T>) -> String {
    c.glob
        .as_deref()
        .map_or_else(|| "every tensor".to_string(), |g| format!("match {g:?}"))
}

fn params(s: &mut String, indent: &str, p: &Params, r: &Recipe) {
    if p.is_empty() {
        return;
    }
    writeln!(s, "{indent}params:").unwrap();
    for (name, param) in p {
        let value = match &param.value {
            ParamValue::Conditions(c) => c
                .iter()
                .map(|c| format!("{} => {}", glob(c), plain(&c.value)))
                .collect::<Vec<_>>()
                .join("; "),
            other => plain(other),
        };
        let (k, v) = (param.key_loc, param.loc);
        writeln!(
            s,
            "{indent}  {name}: {value}  @ key {}:{} {:?}, value {}:{} {:?}",
            k.line,
            k.column,
            &r.source[k.range()],
            v.line,
            v.column,
            &r.source[v.range()]
        )
        .unwrap();
    }
}

/// Dumps an expression and checks its mapping into the source.
fn expr(s: &mut String, indent: &str, key: &str, e: &Expr, r: &Recipe) {
    writeln!(s, "{indent}{key}: {:?}", e.text).unwrap();
    writeln!(
        s,
        "{indent}  scalar @ {}:{} {:?}",
        e.loc.line,
        e.loc.column,
        &r.source[e.loc.range()]
    )
    .unwrap();
    match e.offset_in_source {
        Some(off) => {
            assert_eq!(&r.source[off..off + e.text.len()], e.text);
            writeln!(s, "{indent}  offset_in_source: {off}").unwrap();
        }
        None => writeln!(s, "{indent}  offset_in_source: None").unwrap(),
    }
    // Every non-blank character of the text maps onto the same character of the file,
    // or (a quoted scalar over several lines) none does.
    let mut mapped = 0;
    let mut unmapped = 0;
    for (i, c) in e.text.char_indices().filter(|(_, c)| !c.is_whitespace()) {
        match e.source_offset(&r.source, i) {
            Some(o) => {
                assert!(r.source[o..].starts_with(c), "{c:?} at {i} maps to {o}");
                mapped += 1;
            }
            None => unmapped += 1,
        }
    }
    let how = match (mapped, unmapped) {
        (_, 0) => "every character",
        (0, _) => "none (not in the file as such)",
        _ => panic!("partly mapped expression {:?}", e.text),
    };
    writeln!(s, "{indent}  maps into the source: {how}").unwrap();
}

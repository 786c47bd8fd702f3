//! The recipe's API as the engine uses it: loading, overrides, parameters, locations.

use std::path::{Path, PathBuf};

use reefknot_recipe::{
    ErrorKind, Groups, Number, OutputDtype, ParamValue, Recipe, RecipeError, Selector, SliceInput,
    SliceSource, Weight,
};

fn parse(yaml: &str) -> Recipe {
    match Recipe::parse(yaml, Path::new("r"), "test.yaml") {
        Ok(r) => r,
        Err(e) => panic!("rejected: {e:?}"),
    }
}

fn parse_err(yaml: &str) -> RecipeError {
    match Recipe::parse(yaml, Path::new("r"), "test.yaml") {
        Ok(_) => panic!("accepted:\n{yaml}"),
        Err(e) => e,
    }
}

const HEAD: &str = "base: b\nmodels:\n  - path: m\nmerge: sum\n";

#[test]
fn load_resolves_paths_against_the_recipe_folder() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("recipes");
    std::fs::create_dir(&sub).unwrap();
    let file = sub.join("ties.yaml");
    std::fs::write(
        &file,
        "base: ../models/base\nmodels:\n  - path: ./code\n    fisher: f.safetensors\n  - path: /abs/math\nmerge: ties\nplugins: [lib/p.so]\n",
    )
    .unwrap();
    let r = Recipe::load(&file).unwrap();
    assert_eq!(r.path.as_deref(), Some(file.as_path()));
    assert_eq!(r.base, sub.join("../models/base"));
    assert_eq!(r.models[0].path, sub.join("code"));
    assert_eq!(r.models[0].fisher, Some(sub.join("f.safetensors")));
    assert_eq!(r.models[1].path, PathBuf::from("/abs/math"));
    assert_eq!(r.plugins, [sub.join("lib/p.so")]);
    assert_eq!(r.source, std::fs::read_to_string(&file).unwrap());
}

#[test]
fn load_reports_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.yaml");
    let e = Recipe::load(&missing).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io);
    assert!(e.message().contains("nope.yaml"), "{}", e.message());
    assert_eq!(e.path(), Some(missing.as_path()));
    assert!(std::error::Error::source(&e).is_some());

    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, format!("{HEAD}dtype: int4\n")).unwrap();
    let e = Recipe::load(&bad).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidDtype);
    assert_eq!(e.path(), Some(bad.as_path()));
    let loc = e.loc().unwrap();
    assert_eq!((loc.line, loc.column), (5, 8));
    // The rendered report names the file as given.
    let mut out = String::new();
    miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
        .render_report(&mut out, &e)
        .unwrap();
    assert!(out.contains(&bad.display().to_string()), "{out}");
}

#[test]
fn parse_with_an_empty_dir_keeps_paths_relative() {
    let r = Recipe::parse(HEAD, Path::new(""), "x").unwrap();
    assert_eq!(r.base, Path::new("b"));
    assert_eq!(r.models[0].path, Path::new("m"));
    assert_eq!(r.path, None);
}

#[test]
fn defaults() {
    let r = parse(HEAD);
    assert_eq!(r.seed, 0);
    assert_eq!(r.dtype, None);
    assert_eq!(r.shard_size, None);
    assert!(r.params.is_empty());
    assert!(r.overrides.is_empty());
    assert!(r.plugins.is_empty());
    assert_eq!(r.models[0].weight, Weight::ONE);
    assert_eq!(r.models[0].fisher, None);
    // Optional keys with no value are the same as absent.
    let r = parse(&format!(
        "{HEAD}params:\noverrides:\ngroups:\nplugins:\ndtype:\nseed:\nshard_size:\n"
    ));
    assert_eq!((r.seed, r.dtype, r.shard_size), (0, None, None));
}

#[test]
fn first_matching_override_wins() {
    let r = parse(&format!(
        "{HEAD}groups:\n  qk: [\"*.q_proj.*\", \"*.k_proj.*\"]\noverrides:\n\
         \x20 - group: lm_head\n    merge: mean\n\
         \x20 - match: \"model.layers.*.mlp.*\"\n    params: {{ density: 0.4 }}\n\
         \x20 - layers: 0..4\n    merge: sum |> scale(0.5)\n\
         \x20 - group: qk\n    merge: ties\n\
         \x20 - layers: 30\n    merge: mean\n"
    ));
    let cases = [
        ("lm_head.weight", Some(0)),
        ("model.layers.2.mlp.up_proj.weight", Some(1)),
        ("model.layers.20.mlp.up_proj.weight", Some(1)),
        ("model.layers.2.self_attn.q_proj.weight", Some(2)),
        ("model.layers.3.input_layernorm.weight", Some(2)),
        ("model.layers.4.self_attn.q_proj.weight", Some(3)),
        ("model.layers.4.self_attn.v_proj.weight", None),
        ("model.layers.30.self_attn.v_proj.weight", Some(4)),
        ("model.layers.31.self_attn.v_proj.weight", None),
        ("model.embed_tokens.weight", None),
        ("model.norm.weight", None),
    ];
    for (tensor, expected) in cases {
        assert_eq!(r.override_for(tensor), expected, "{tensor}");
    }
    assert_eq!(r.merge_for(Some(0)).text, "mean");
    // Override 1 only sets params: the recipe's expression stays.
    assert_eq!(r.merge_for(Some(1)).text, "sum");
    assert_eq!(r.merge_for(None).text, "sum");
    assert_eq!(
        r.overrides[4].selector,
        Selector::Layers { start: 30, end: 31 }
    );
    assert_eq!(r.overrides[4].selector.to_string(), "layers: 30..31");
    assert_eq!(
        r.overrides[1].selector.to_string(),
        "match: \"model.layers.*.mlp.*\""
    );
}

#[test]
fn override_for_follows_edits_to_the_selectors() {
    let mut r = parse(&format!(
        "{HEAD}overrides:\n  - match: \"*.bias\"\n    merge: mean\n"
    ));
    assert_eq!(r.override_for("a.bias"), Some(0));
    r.overrides[0].selector = Selector::Match("*.weight".into());
    assert_eq!(r.override_for("a.bias"), None);
    assert_eq!(r.override_for("a.weight"), Some(0));
}

#[test]
fn parameter_lookup_order() {
    let r = parse(
        "base: b\nmodels:\n  - path: m1\n    params: { density: 0.1 }\n  - path: m2\n\
         params: { density: 0.2, k: 3 }\nmerge: ties(trim($density), elect, disjoint)\n\
         overrides:\n  - group: mlp\n    params: { density: 0.4, extra: on }\n",
    );
    let value = |name: &str, model: Option<usize>, ov: Option<usize>| {
        r.param(name, model, ov, "model.layers.0.mlp.up_proj.weight")
            .cloned()
    };
    let num = |v: f64| Some(ParamValue::Number(Number::Scalar(v)));
    assert_eq!(value("density", Some(0), Some(0)), num(0.1));
    assert_eq!(value("density", Some(1), Some(0)), num(0.4));
    assert_eq!(value("density", Some(1), None), num(0.2));
    assert_eq!(value("density", None, None), num(0.2));
    assert_eq!(value("k", Some(0), Some(0)), num(3.0));
    assert_eq!(
        value("extra", None, Some(0)),
        Some(ParamValue::Text("on".into()))
    );
    assert_eq!(value("extra", None, None), None);
    assert_eq!(value("missing", Some(0), Some(0)), None);
    let merged = r.params_for(Some(0));
    assert_eq!(merged.keys().collect::<Vec<_>>(), ["density", "extra", "k"]);
    assert_eq!(
        merged["density"].value,
        ParamValue::Number(Number::Scalar(0.4))
    );
    // Each value keeps where it is written.
    let p = &r.overrides[0].params["density"];
    assert_eq!(&r.source[p.loc.range()], "0.4");
    assert_eq!(&r.source[p.key_loc.range()], "density");
}

#[test]
fn dtype_spellings() {
    let cases = [
        ("bfloat16", OutputDtype::BFloat16),
        ("bf16", OutputDtype::BFloat16),
        ("BF16", OutputDtype::BFloat16),
        ("float16", OutputDtype::Float16),
        ("fp16", OutputDtype::Float16),
        ("f16", OutputDtype::Float16),
        ("half", OutputDtype::Float16),
        ("float32", OutputDtype::Float32),
        ("fp32", OutputDtype::Float32),
        ("f32", OutputDtype::Float32),
        ("float", OutputDtype::Float32),
        ("Float32", OutputDtype::Float32),
    ];
    for (name, dtype) in cases {
        let r = parse(&format!("{HEAD}dtype: {name}\n"));
        assert_eq!(r.dtype, Some(dtype), "{name}");
    }
    assert_eq!(OutputDtype::BFloat16.torch_name(), "bfloat16");
    assert_eq!(OutputDtype::Float16.to_string(), "float16");
    for bad in ["int8", "float64", "\"\"", "16", "[bf16]"] {
        let e = parse_err(&format!("{HEAD}dtype: {bad}\n"));
        assert!(
            matches!(e.kind(), ErrorKind::InvalidDtype | ErrorKind::WrongType),
            "{bad}: {e:?}"
        );
    }
}

#[test]
fn seeds_and_shard_sizes() {
    assert_eq!(parse(&format!("{HEAD}seed: 42\n")).seed, 42);
    assert_eq!(parse(&format!("{HEAD}seed: 0x10\n")).seed, 16);
    for bad in ["-1", "1.0", "\"3\"", "true", "18446744073709551616"] {
        let e = parse_err(&format!("{HEAD}seed: {bad}\n"));
        assert_eq!(e.kind(), ErrorKind::InvalidSeed, "{bad}");
    }
    let size = |s: &str| parse(&format!("{HEAD}shard_size: {s}\n")).shard_size;
    assert_eq!(size("1000"), Some(1000));
    assert_eq!(size("5e9"), Some(5_000_000_000));
    assert_eq!(size("5GB"), Some(5_000_000_000));
    assert_eq!(size("\"2 GiB\""), Some(2 << 30));
    assert_eq!(size("500mb"), Some(500_000_000));
    for bad in ["0", "-5", "1.5", "5 gigs", "[5]", "true"] {
        let e = parse_err(&format!("{HEAD}shard_size: {bad}\n"));
        assert_eq!(e.kind(), ErrorKind::InvalidShardSize, "{bad}");
    }
}

#[test]
fn gradients() {
    let r = parse("base: b\nmodels:\n  - path: m\n    weight: [1, 0.5]\n    params: { d: [0.1, 0.2, 0.3] }\nmerge: sum\n");
    assert_eq!(
        r.models[0].weight,
        Weight::Number(Number::Gradient(vec![1.0, 0.5]))
    );
    assert!(r.weight(0, "x").is_gradient());
    assert_eq!(r.weight(0, "x").at(0.5), 0.75);
    let ParamValue::Number(d) = &r.models[0].params["d"].value else {
        panic!("not a number")
    };
    assert_eq!(d, &Number::Gradient(vec![0.1, 0.2, 0.3]));
    for bad in [
        "[]",
        "[1]",
        "[1, a]",
        "[1, [2]]",
        "[1, .nan]",
        "{a: 1}",
        "true",
    ] {
        let e = parse_err(&format!(
            "base: b\nmodels:\n  - path: m\n    weight: {bad}\nmerge: sum\n"
        ));
        assert!(
            matches!(
                e.kind(),
                ErrorKind::InvalidGradient | ErrorKind::InvalidValue | ErrorKind::WrongType
            ),
            "{bad}: {e:?}"
        );
    }
}

#[test]
fn yaml_12_booleans() {
    let r = parse(&format!(
        "{HEAD}params: {{ a: true, b: yes, c: no, d: on, e: False }}\n"
    ));
    let v = |k: &str| r.params[k].value.clone();
    assert_eq!(v("a"), ParamValue::Bool(true));
    assert_eq!(v("b"), ParamValue::Text("yes".into()));
    assert_eq!(v("c"), ParamValue::Text("no".into()));
    assert_eq!(v("d"), ParamValue::Text("on".into()));
    assert_eq!(v("e"), ParamValue::Bool(false));
    // `y` and `n` are keys like any other, not booleans.
    let r = parse(&format!("{HEAD}params: {{ y: 1, n: 2 }}\n"));
    assert_eq!(r.params.keys().collect::<Vec<_>>(), ["n", "y"]);
}

#[test]
fn errors_display_the_message_and_locate_it() {
    let e = parse_err(&format!("{HEAD}modles: []\n"));
    assert_eq!(e.kind(), ErrorKind::UnknownKey);
    assert_eq!(e.to_string(), "unknown key `modles` in the recipe");
    assert_eq!(e.kind().code(), "reefknot::recipe::unknown_key");
    let loc = e.loc().unwrap();
    assert_eq!(
        (loc.line, loc.column, loc.offset, loc.len),
        (5, 1, HEAD.len(), 6)
    );
    assert!(e.help_text().unwrap().contains("did you mean `models`?"));
    assert!(e.others().is_empty());
    assert_eq!(e.spans()[0].text, "did you mean `models`?");

    let e = parse_err(&format!("{HEAD}dtype: x\nseed: -1\ncolour: 1\n"));
    let kinds: Vec<ErrorKind> = e.all().map(|e| e.kind()).collect();
    assert_eq!(
        kinds,
        [
            ErrorKind::InvalidDtype,
            ErrorKind::InvalidSeed,
            ErrorKind::UnknownKey
        ]
    );
    assert_eq!(e.others().len(), 2);
}

#[test]
fn expression_offsets_are_exact_for_one_line_scalars() {
    for (yaml_value, text) in [
        ("sum |> scale(0.5)", "sum |> scale(0.5)"),
        ("'sum |> scale(0.5)'", "sum |> scale(0.5)"),
        ("\"sum |> scale(0.5)\"", "sum |> scale(0.5)"),
        (
            "  ties(trim(0.2), elect, disjoint)   # a YAML comment",
            "ties(trim(0.2), elect, disjoint)",
        ),
        (
            "'dare(p=0.9, rescale=\"l1\")'",
            "dare(p=0.9, rescale=\"l1\")",
        ),
        (
            "\"trim(0.2) |> elect # a language comment\"",
            "trim(0.2) |> elect # a language comment",
        ),
        ("'façade(0.2)'", "façade(0.2)"),
    ] {
        let src = format!("base: b\nmodels:\n  - path: m\nmerge: {yaml_value}\noverrides:\n  - group: mlp\n    merge: {yaml_value}\n");
        let r = parse(&src);
        for e in [&r.merge, r.overrides[0].merge.as_ref().unwrap()] {
            assert_eq!(e.text, text);
            let off = e
                .offset_in_source
                .unwrap_or_else(|| panic!("no offset for {yaml_value}"));
            assert_eq!(&src[off..off + e.text.len()], text);
            assert_eq!(e.source_offset(&src, 3), Some(off + 3));
        }
    }
}

#[test]
fn expression_offsets_are_none_where_the_text_is_not_in_the_file() {
    for (yaml_value, text) in [
        ("'it''s'", "it's"),
        ("\"a\\tb\"", "a\tb"),
        ("\"sum |> \\\n  scale(2)\"", "sum |> scale(2)"),
    ] {
        let src = format!("{HEAD}overrides:\n  - group: mlp\n    merge: {yaml_value}\n");
        let r = parse(&src);
        let e = r.overrides[0].merge.as_ref().unwrap();
        assert_eq!(e.text, text);
        assert_eq!(e.offset_in_source, None, "{yaml_value}");
    }
}

#[test]
fn block_scalar_expressions_map_line_by_line() {
    let src = "base: b\nmodels:\n  - path: m\nmerge: |\n  trim(0.2)\n    |> elect   # kept: part of the text\n    |> disjoint\n";
    let r = parse(src);
    let e = &r.merge;
    assert_eq!(e.offset_in_source, None);
    let i = e.text.find("disjoint").unwrap();
    let range = e.source_range(src, i..i + 8).unwrap();
    assert_eq!(&src[range], "disjoint");
    let i = e.text.find("# kept").unwrap();
    let at = e.source_offset(src, i).unwrap();
    assert!(src[at..].starts_with("# kept"));
    // A language error at the end of the text lands after the last character.
    let end = e.source_offset(src, e.text.len()).unwrap();
    assert_eq!(&src[end - 8..end], "disjoint");
}

#[test]
fn aliased_expressions_point_at_their_definition() {
    let src = "base: b\nmodels:\n  - path: m\nmerge: &m ties(0.3)\noverrides:\n  - layers: 0..2\n    merge: *m\n";
    let r = parse(src);
    let e = r.overrides[0].merge.as_ref().unwrap();
    assert_eq!(e.text, "ties(0.3)");
    let off = e.offset_in_source.unwrap();
    assert_eq!(off, src.find("ties(0.3)").unwrap());
    assert_eq!(e.loc.line, 4);
}

#[test]
fn crlf_and_byte_order_mark() {
    let src = "\u{feff}base: b\r\nmodels:\r\n  - path: m\r\nmerge: sum |> scale(2)\r\n";
    let r = parse(src);
    let off = r.merge.offset_in_source.unwrap();
    assert_eq!(&src[off..off + r.merge.text.len()], "sum |> scale(2)");
    assert_eq!((r.merge.loc.line, r.merge.loc.column), (4, 8));
    let e = parse_err("base: b\r\nmodels:\r\n  - path: m\r\nmerge: sum\r\nseed: x\r\n");
    let loc = e.loc().unwrap();
    assert_eq!((loc.line, loc.column), (5, 7));
    assert_eq!(
        &"base: b\r\nmodels:\r\n  - path: m\r\nmerge: sum\r\nseed: x\r\n"[loc.range()],
        "x"
    );
}

#[test]
fn model_location_points_at_its_path() {
    let src = "base: b\nmodels:\n  - weight: 2\n    path: models/x\nmerge: sum\n";
    let r = parse(src);
    assert_eq!(&src[r.models[0].location.range()], "models/x");
    assert_eq!(r.models[0].weight, Weight::Number(Number::Scalar(2.0)));
}

#[test]
fn builtin_groups_through_the_recipe() {
    let r = parse(&format!("{HEAD}groups:\n  late: [\"model.layers.3?.*\"]\n"));
    assert_eq!(
        r.groups.names(),
        ["embed", "attention", "mlp", "norm", "lm_head", "late"]
    );
    assert_eq!(
        r.groups.groups_of("model.layers.31.mlp.down_proj.weight"),
        ["mlp", "late"]
    );
    assert!(Groups::builtin().contains("lm_head", "lm_head.weight"));
}

#[test]
fn unknown_keys_everywhere() {
    let cases = [
        format!("{HEAD}extra: 1\n"),
        "base: b\nmodels:\n  - path: m\n    extra: 1\nmerge: sum\n".to_owned(),
        format!("{HEAD}overrides:\n  - group: mlp\n    merge: mean\n    extra: 1\n"),
    ];
    for src in cases {
        let e = parse_err(&src);
        assert_eq!(e.kind(), ErrorKind::UnknownKey, "{src}");
        assert_eq!(&src[e.loc().unwrap().range()], "extra");
    }
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the expression text, a one-line plain, single- or double-quoted scalar
        /// either maps exactly onto the file or says it does not.
        #[test]
        fn offset_in_source_is_exact(
            text in "[a-z0-9_(),.=$|> '\"\\\\#-]{1,40}",
            style in 0usize..3,
        ) {
            let value = match style {
                0 => text.clone(),
                1 => format!("'{}'", text.replace('\'', "''")),
                _ => format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\"")),
            };
            let src = format!("base: b\nmodels:\n  - path: m\nmerge: {value}\n");
            // Plain scalars that YAML reads as something else are not expressions.
            let Ok(r) = Recipe::parse(&src, Path::new(""), "p.yaml") else { return Ok(()); };
            let e = &r.merge;
            if let Some(off) = e.offset_in_source {
                prop_assert_eq!(&src[off..off + e.text.len()], e.text.as_str());
            }
            if style > 0 {
                prop_assert_eq!(&e.text, &text);
                let escaped = value.len() != text.len() + 2;
                prop_assert_eq!(e.offset_in_source.is_some(), !escaped);
            }
        }
    }
}

#[test]
fn conditions_pick_the_first_match_and_fall_through() {
    let r = parse(
        "base: b\nmodels:\n  - path: m1\n    weight: [{ match: \"*.mlp.*\", value: 0.5 }]\n    \
         params: { d: [{ match: \"*.self_attn.*\", value: 0.9 }] }\n  - path: m2\n\
         params:\n  d: [{ match: \"lm_head.*\", value: 0.1 }, { value: [0.2, 0.4] }]\n\
         merge: trim($d) |> sum\n",
    );
    let mlp = "model.layers.0.mlp.up_proj.weight";
    let attn = "model.layers.0.self_attn.q_proj.weight";
    assert_eq!(r.weight(0, mlp), &Number::Scalar(0.5));
    assert_eq!(r.weight(0, attn), &Number::Scalar(1.0), "no match: 1.0");
    assert_eq!(r.weight(1, mlp), &Number::Scalar(1.0));
    let d = |m: usize, t: &str| r.param("d", Some(m), None, t).cloned();
    let num = |v: f64| Some(ParamValue::Number(Number::Scalar(v)));
    assert_eq!(d(0, attn), num(0.9));
    assert_eq!(
        d(0, "lm_head.weight"),
        num(0.1),
        "falls through to the recipe's"
    );
    assert_eq!(
        d(0, mlp),
        Some(ParamValue::Number(Number::Gradient(vec![0.2, 0.4])))
    );
    assert_eq!(d(1, attn), d(0, mlp));
}

#[test]
fn a_slice_s_params_sit_between_the_override_s_and_the_recipe_s() {
    let r = parse(
        "base: b\nmodels:\n  - path: m1\n    params: { d: [{ match: \"model.layers.3.*\", value: 0.9 }] }\n\
         params: { d: 0.1, e: 0.2 }\nmerge: trim($d) |> sum |> scale($e)\n\
         overrides:\n  - group: mlp\n    params: { d: 0.3 }\n\
         slices:\n  - layers: 2..4\n    params: { d: 0.5, e: [0, 1] }\n  - from: m1\n    layers: 3\n    scale: 0.25\n",
    );
    assert_eq!(r.slices.len(), 2);
    assert_eq!(
        (r.slices[0].start, r.slices[0].end, r.slices[0].len()),
        (2, 4, 2)
    );
    assert!(matches!(
        r.slices[1].source,
        SliceSource::Copy {
            input: SliceInput::Model(0),
            scale: Weight::Number(Number::Scalar(s)),
            ..
        } if s == 0.25
    ));
    let num = |v: f64| Some(ParamValue::Number(Number::Scalar(v)));
    // Output layer 1 is the models' layer 3: the model's condition sees its own name.
    let out = "model.layers.1.self_attn.q_proj.weight";
    let input = "model.layers.3.self_attn.q_proj.weight";
    let d =
        |model, over, slice, t: &str, i: &str| r.param_in("d", model, over, slice, t, i).cloned();
    assert_eq!(d(Some(0), None, Some(0), out, input), num(0.9));
    assert_eq!(
        d(Some(0), None, Some(0), input, out),
        num(0.5),
        "not the output's name"
    );
    // The override before the slice, the slice before the recipe.
    let mlp = "model.layers.1.mlp.up_proj.weight";
    let over = r.override_for(mlp);
    assert_eq!(d(None, over, Some(0), mlp, mlp), num(0.3));
    assert_eq!(d(None, None, Some(0), mlp, mlp), num(0.5));
    assert_eq!(d(None, None, None, mlp, mlp), num(0.1));
    // A copied slice has no params: the recipe's.
    assert_eq!(d(None, None, Some(1), mlp, mlp), num(0.1));
    assert_eq!(
        r.param_in("e", None, None, Some(0), mlp, mlp).cloned(),
        Some(ParamValue::Number(Number::Gradient(vec![0.0, 1.0])))
    );
}

//! `reefknot analyze`: the recipe's task vectors measured, as a report or JSON.

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::Args as ClapArgs;
use reefknot_engine::{Analysis, DensityFrom};
use reefknot_ops::analysis::{TensorStats, SHARES};
use serde_json::{json, Value};

use crate::{Failure, Overrides};

#[derive(ClapArgs)]
pub(crate) struct AnalyzeArgs {
    /// The recipe (YAML) or mergekit configuration: its base and models are measured,
    /// over the tensors it merges. Nothing is written.
    recipe: PathBuf,
    /// The density the election is measured at, for every tensor (default: the `k` of
    /// each tensor's `trim` stage, else 0.2).
    #[arg(long, value_name = "K")]
    density: Option<f64>,
    /// The share of each task vector's energy the suggested density keeps.
    #[arg(long, value_name = "SHARE", default_value_t = 0.9)]
    keep: f64,
    /// Print the figures as JSON on stdout (every group, layer and tensor).
    #[arg(long)]
    json: bool,
    /// Also draw a picture (`.svg` or `.png`): each model's energy kept against the
    /// density, and a map of the sign conflicts per layer and pair of models.
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Elements per chunk of work (advanced; results do not depend on it).
    #[arg(long, default_value_t = reefknot_engine::DEFAULT_CHUNK, hide = true)]
    chunk: usize,
    #[command(flatten)]
    overrides: Overrides,
}

pub(crate) fn run(args: &AnalyzeArgs, quiet: bool) -> Result<(), Failure> {
    let fraction = |name: &str, v: f64| {
        if v.is_finite() && v > 0.0 && v <= 1.0 {
            Ok(())
        } else {
            Err(crate::usage(anyhow::anyhow!(
                "{name} {v} is not a fraction in (0, 1]"
            )))
        }
    };
    if let Some(k) = args.density {
        fraction("--density", k)?;
    }
    fraction("--keep", args.keep)?;
    if let Some(path) = &args.plot {
        crate::plot::Format::of(path).map_err(|e| crate::usage(anyhow::anyhow!(e)))?;
    }
    let (plan, recipe) = crate::load_plan_and_recipe(
        &args.recipe,
        &args.overrides,
        None,
        None,
        true,
        &reefknot_engine::Opened::default(),
    )?;
    // The figures are per model of `models:` against `base:`: a slice that merges other
    // inputs would mix them up.
    if let Some(s) = (0..recipe.slices.len())
        .find(|&s| recipe.merged_inputs(Some(s)) != recipe.merged_inputs(None))
    {
        return Err(crate::usage(anyhow::anyhow!(
            "slice {} merges other inputs than the recipe's base and models (its `base:` or \
             `models:`), which analyze cannot attribute to one model: analyze a recipe \
             without them",
            s + 1
        )));
    }
    let groups = |name: &str| -> Vec<String> {
        recipe
            .groups
            .groups_of(name)
            .into_iter()
            .map(str::to_string)
            .collect()
    };
    let bar = crate::bar(quiet || args.json, "measuring");
    let analysis =
        reefknot_engine::analyze(&plan, &groups, args.density, args.threads, args.chunk, &bar)?;
    if let Some(path) = &args.plot {
        crate::plot::draw(path, &analysis, args.keep)
            .map_err(|e| Failure::from(anyhow::anyhow!("drawing {}: {e}", path.display())))?;
    }
    let order = recipe.groups.names();
    if args.json {
        let json = to_json(&analysis, &order, args.keep);
        outln!("{}", serde_json::to_string_pretty(&json).expect("JSON"));
    } else {
        out!("{}", report(&analysis, &order, args.keep));
    }
    Ok(())
}

/// One set of figures (a tensor, a group, a layer, the model) as JSON.
fn stats_json(s: &TensorStats, keep: f64) -> Value {
    let models: Vec<Value> = s
        .models
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let shares: serde_json::Map<String, Value> = SHARES
                .iter()
                .enumerate()
                .map(|(k, f)| (format!("{f}"), json!(s.energy_share(i, k))))
                .collect();
            json!({
                "model": i,
                "norm": s.norm(i),
                "relative_norm": s.relative_norm(i),
                "l1": m.l1,
                "nonzero": m.nonzero,
                "nonfinite": m.nonfinite,
                "energy_share": shares,
                "energy_curve": m.curve.iter().map(|&e| (m.energy > 0.0).then(|| e / m.energy)).collect::<Vec<_>>(),
                "suggested_density": s.suggested_density(i, keep),
                "ties": {
                    "density": if m.mixed_density { Value::Null } else { json!(m.density) },
                    "kept": m.kept,
                    "kept_energy_share": s.kept_energy_share(i),
                    "discarded_share": s.discarded_share(i),
                },
            })
        })
        .collect();
    let pairs: Vec<Value> = s
        .pairs
        .iter()
        .map(|p| {
            json!({
                "a": p.a,
                "b": p.b,
                "cosine": s.cosine(p),
                "sign_agreement": p.sign_agreement(),
                "top_overlap": s.top_overlap(p),
                "top_sign_agreement": p.top_sign_agreement(),
            })
        })
        .collect();
    json!({
        "tensors": s.tensors,
        "elements": s.numel,
        "base_norm": s.base_energy.sqrt(),
        "models": models,
        "pairs": pairs,
    })
}

fn to_json(a: &Analysis, order: &[&str], keep: f64) -> Value {
    let density_from = |d: DensityFrom| match d {
        DensityFrom::Recipe => "recipe",
        DensityFrom::Given => "given",
        DensityFrom::Default => "default",
    };
    json!({
        "base": a.base,
        "models": a.models,
        "keep": keep,
        "copied_tensors": a.copied,
        "model": stats_json(&a.whole(), keep),
        "groups": a.groups(order).iter().map(|(g, s)| {
            let mut v = stats_json(s, keep);
            v["group"] = json!(g);
            v
        }).collect::<Vec<_>>(),
        "layers": a.layers().iter().map(|(l, s)| {
            let mut v = stats_json(s, keep);
            v["layer"] = json!(l);
            v
        }).collect::<Vec<_>>(),
        "tensors": a.tensors.iter().map(|t| {
            let mut v = stats_json(&t.stats, keep);
            v["name"] = json!(t.name);
            v["layer"] = json!(t.layer);
            v["groups"] = json!(t.groups);
            v["density_from"] = json!(density_from(t.density_from));
            v
        }).collect::<Vec<_>>(),
    })
}

fn pct(v: Option<f64>) -> String {
    match v {
        Some(v) => format!("{:.1}%", 100.0 * v),
        None => "-".to_string(),
    }
}

fn num(v: Option<f64>) -> String {
    match v {
        Some(v) if v != 0.0 && (v.abs() < 1e-3 || v.abs() >= 1e5) => format!("{v:.3e}"),
        Some(v) => format!("{v:.4}"),
        None => "-".to_string(),
    }
}

/// The figures of one set, as a table per model and per pair.
fn section(out: &mut String, title: &str, s: &TensorStats, keep: f64) {
    let _ = writeln!(
        out,
        "\n{title}: {} tensor{}, {} parameters",
        s.tensors,
        if s.tensors == 1 { "" } else { "s" },
        reefknot_engine::human_count(s.numel)
    );
    let shares: String = SHARES
        .iter()
        .map(|f| format!("  {:>7}", format!("top {}%", f * 100.0)))
        .collect();
    let _ = writeln!(
        out,
        "  model  {:>10}  {:>9}{shares}  {:>10}  {:>10}",
        "‖δ‖",
        "‖δ‖/‖θ‖",
        format!("k for {}%", keep * 100.0),
        "TIES drops",
    );
    for (i, m) in s.models.iter().enumerate() {
        let tops: String = (0..SHARES.len())
            .map(|k| format!("  {:>7}", pct(s.energy_share(i, k))))
            .collect();
        let density = if m.mixed_density {
            String::new()
        } else {
            format!("  (k={})", m.density)
        };
        let _ = writeln!(
            out,
            "  {i:>5}  {:>10}  {:>9}{tops}  {:>10}  {:>10}{density}",
            num(Some(s.norm(i))),
            num(s.relative_norm(i)),
            s.suggested_density(i, keep)
                .map(|k| format!("{k:.2}"))
                .unwrap_or_else(|| "-".into()),
            pct(s.discarded_share(i)),
        );
        if m.nonfinite > 0 {
            let _ = writeln!(
                out,
                "         {} NaN or infinite entries (left out of every figure)",
                m.nonfinite
            );
        }
    }
    if !s.pairs.is_empty() {
        let _ = writeln!(
            out,
            "  pair   {:>8}  {:>11}  {:>11}  {:>15}",
            "cosine", "signs agree", "top overlap", "top signs agree"
        );
        for p in &s.pairs {
            let _ = writeln!(
                out,
                "  {:>5}  {:>8}  {:>11}  {:>11}  {:>15}",
                format!("{}-{}", p.a, p.b),
                num(s.cosine(p)),
                pct(p.sign_agreement()),
                pct(s.top_overlap(p)),
                pct(p.top_sign_agreement()),
            );
        }
    }
}

/// The terminal report: the models, the whole model, each group, and the densities
/// that keep `keep` of the energy.
fn report(a: &Analysis, order: &[&str], keep: f64) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "base     {}", a.base);
    for (i, m) in a.models.iter().enumerate() {
        let _ = writeln!(out, "model {i}  {m}");
    }
    let whole = a.whole();
    let _ = writeln!(
        out,
        "{} merged tensors measured ({} parameters per model){}",
        whole.tensors,
        reefknot_engine::human_count(whole.numel),
        match a.copied {
            0 => String::new(),
            n => format!(", {n} copied tensors not measured"),
        }
    );
    let from: Vec<DensityFrom> = {
        let mut v: Vec<DensityFrom> = a.tensors.iter().map(|t| t.density_from).collect();
        v.sort();
        v.dedup();
        v
    };
    let _ = writeln!(
        out,
        "TIES is measured at {}",
        match from.as_slice() {
            [DensityFrom::Recipe] => "the recipe's trim density".to_string(),
            [DensityFrom::Given] => "the density given (--density)".to_string(),
            [DensityFrom::Default] => format!(
                "k={} (the recipe trims nothing; --density chooses)",
                reefknot_engine::DEFAULT_DENSITY
            ),
            _ => format!(
                "the recipe's trim density where it trims, else k={}",
                reefknot_engine::DEFAULT_DENSITY
            ),
        }
    );
    section(&mut out, "Whole model", &whole, keep);
    let groups = a.groups(order);
    for (g, s) in &groups {
        section(&mut out, &format!("Group {g}"), s, keep);
    }
    let _ = writeln!(
        out,
        "\nDensities that keep {}% of each task vector's energy:",
        keep * 100.0
    );
    let models: String = (0..whole.models.len())
        .map(|i| format!("  {:>8}", format!("model {i}")))
        .collect();
    let _ = writeln!(out, "  {:<16}{models}", "group");
    let rows = std::iter::once(("whole model".to_string(), whole.clone())).chain(groups);
    for (name, s) in rows {
        let ks: String = (0..s.models.len())
            .map(|i| {
                let k = s.suggested_density(i, keep);
                format!("  {:>8}", k.map_or("-".to_string(), |k| format!("{k:.2}")))
            })
            .collect();
        let _ = writeln!(out, "  {name:<16}{ks}");
    }
    let _ = writeln!(
        out,
        "\ntop s%: the share of the task vector's energy (‖δ‖²) in its largest s% of entries, \
         per tensor.\nk for {k}%: the smallest density, in steps of 0.01, at which trimming \
         keeps {k}% of the energy.\nTIES drops: the share of the kept entries' L1 mass whose \
         sign loses the election (at the density shown).\nsigns agree: over the entries \
         non-zero in both; top: over the entries both keep (overlap: their share of the \
         smaller kept set).",
        k = keep * 100.0
    );
    out
}

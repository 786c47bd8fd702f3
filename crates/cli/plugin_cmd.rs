//! `reefknot plugin test LIB`: every operator of a plugin, each signature, on synthetic
//! tensors, through the test kit of `reefknot-plugin-api` (the checks a plugin's own
//! tests run, `testing::check_raw`), so a C plugin is checked as a Rust one is.
//! `reefknot plugin new` (in `template`) writes a plugin project.

use std::path::Path;

use reefknot_lang::{Bound, ParamKind, Ty};
use reefknot_plugin_api::testing::{self, Case, Subject};
use reefknot_plugins::PluginOperator;

use crate::{usage, Failure};

/// The synthetic tensors every signature is checked on: (tensor, shape, layer, models).
const TENSORS: [(&str, &[u64], Option<u64>, usize); 3] = [
    ("model.layers.3.mlp.up_proj.weight", &[24, 40], Some(3), 3),
    ("model.norm.weight", &[7], None, 1),
    ("lm_head.weight", &[9, 5], None, 2),
];

/// Runs the checks and prints one line per operator, signature and tensor. A check
/// that does not return within `timeout` fails the run at once (the stuck call cannot
/// be stopped, and what the plugin's state is after it nobody knows).
pub(crate) fn test(library: &Path, timeout: std::time::Duration) -> Result<(), Failure> {
    // A crash is reported naming the operator and the check (no merge output to mind).
    #[cfg(unix)]
    reefknot_plugins::contain_crashes(None);
    let plugin = reefknot_plugins::load(library).map_err(|e| usage(e.into()))?;
    outln!(
        "plugin `{}` {} ({}), ABI {}.{}, sha256 {}",
        plugin.name,
        plugin.version,
        library.display(),
        plugin.abi.0,
        plugin.abi.1,
        plugin.sha256
    );
    let (mut passed, mut failed) = (0, 0);
    for op in &plugin.operators {
        let spec = reefknot_ops::Operator::spec(op);
        for signature in spec.signatures {
            for (k, &(tensor, shape, layer, models)) in TENSORS.iter().enumerate() {
                let case = synthetic(op, signature.input, tensor, shape, layer, models, k);
                let what = format!("{tensor} (a synthetic {signature} test)");
                let (send, receive) = std::sync::mpsc::channel();
                let (runner, what_now) = (op.clone(), what.clone());
                std::thread::spawn(move || {
                    let result = runner.guarded(&what_now, || {
                        testing::check_raw(Subject::new(runner.descriptor()), &case)
                    });
                    let _ = send.send(result);
                });
                let Ok(result) = receive.recv_timeout(timeout) else {
                    outln!(
                        "FAIL  {} {signature} on {tensor} {shape:?}: did not return within {:.1} s (--timeout)",
                        op.qualified(),
                        timeout.as_secs_f64()
                    );
                    return Err(Failure::Other {
                        code: 1,
                        error: anyhow::anyhow!(
                            "the plugin `{}` hung in a check; the other checks were not run",
                            plugin.name
                        ),
                    });
                };
                let shown = format!(
                    "{} {signature} on {tensor} {shape:?}, {} model{}",
                    op.qualified(),
                    models,
                    if models == 1 { "" } else { "s" }
                );
                match result {
                    Ok(_) => {
                        passed += 1;
                        outln!(
                            "ok    {shown}: {}",
                            if op.is_elementwise() {
                                "deterministic, every element written, finite, the same bits in every chunking"
                            } else {
                                "deterministic, every element written, finite (whole tensor)"
                            }
                        );
                    }
                    Err(e) => {
                        failed += 1;
                        outln!("FAIL  {shown}: {e}");
                    }
                }
            }
        }
    }
    outln!(
        "\n{passed} passed, {failed} failed ({} operator{})",
        plugin.operators.len(),
        if plugin.operators.len() == 1 { "" } else { "s" }
    );
    if failed > 0 {
        return Err(Failure::Other {
            code: 1,
            error: anyhow::anyhow!(
                "{failed} check{} of the plugin `{}` failed",
                if failed == 1 { "" } else { "s" },
                plugin.name
            ),
        });
    }
    Ok(())
}

/// Values in [-0.01, 0.01], a tenth of them zero, from a small counter hash.
fn values(n: usize, seed: u64) -> Vec<f32> {
    (0..n as u64)
        .map(|j| {
            let mut x = (j ^ (seed << 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            x ^= x >> 29;
            if x.is_multiple_of(10) {
                0.0
            } else {
                ((x % 20_001) as f32 / 1_000_000.0) - 0.01
            }
        })
        .collect()
}

/// The inputs of one check: a stage input of `ty` on a tensor of `shape`, the base,
/// the Fisher and the weights, and a valid value for every parameter without default.
fn synthetic(
    op: &PluginOperator,
    ty: Ty,
    tensor: &str,
    shape: &[u64],
    layer: Option<u64>,
    models: usize,
    seed: usize,
) -> Case {
    let n = shape.iter().product::<u64>() as usize;
    let seed = seed as u64 * 16;
    let stack: Vec<Vec<f32>> = (0..models as u64).map(|i| values(n, seed + i)).collect();
    let sum: Vec<f32> = (0..n)
        .map(|j| stack.iter().fold(0f32, |acc, m| acc + m[j]))
        .collect();
    let mut case = match ty {
        Ty::Stack => Case::stack(stack),
        Ty::Voted => {
            let sign = sum
                .iter()
                .map(|&s| if s >= 0.0 { 1.0 } else { -1.0 })
                .collect();
            Case::voted(stack, sign)
        }
        Ty::Delta => Case::delta(sum).tasks(stack),
    };
    case = case
        .tensor(tensor)
        .shape(shape)
        .layer(layer)
        .seed(42)
        .base(values(n, seed + 9).iter().map(|x| x * 100.0).collect())
        .fisher(
            (0..models as u64)
                .map(|i| values(n, seed + 10 + i).iter().map(|x| x.abs()).collect())
                .collect(),
        )
        .weights((0..models).map(|i| 1.0 - 0.25 * i as f32).collect());
    for p in reefknot_ops::Operator::spec(op).params {
        if p.default.is_some() {
            continue;
        }
        case = match p.kind {
            ParamKind::Number { min, max } => case.number(p.name, inside(min, max)),
            ParamKind::Choice(choices) => case.choice(p.name, choices[0]),
            ParamKind::Bool => case.boolean(p.name, false),
            ParamKind::Text => case.text(p.name, ""),
        };
    }
    case
}

/// A value inside a number parameter's range: its middle, or one step from its bound.
fn inside(min: Bound, max: Bound) -> f64 {
    let end = |b: Bound| match b {
        Bound::Unbounded => None,
        Bound::Inclusive(x) | Bound::Exclusive(x) => Some(x),
    };
    match (end(min), end(max)) {
        (Some(a), Some(b)) => (a + b) / 2.0,
        (Some(a), None) => a + 0.5,
        (None, Some(b)) => b - 0.5,
        (None, None) => 0.5,
    }
}

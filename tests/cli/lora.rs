//! LoRA adapters as inputs: applied as the tensors are read (reefknot recipes' `lora:`
//! and `base_lora:`, mergekit's `model+lora`), and refused with the reason when they
//! cannot be.

use std::fs;
use std::path::Path;

use reefknot_io::{Checkpoint, Dtype, ModelWriter, OutputTensor, WriterOptions};

use crate::util::*;

const Q: &str = "model.layers.0.self_attn.q_proj";
const EMBED: &str = "model.embed_tokens";

/// A value in [-0.05, 0.05) from a counter: the factors' entries.
fn factor_value(k: usize, salt: usize) -> f32 {
    let h = ((k * 31 + salt) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
    (h % 1000) as f32 / 10_000.0 - 0.05
}

/// Writes a PEFT adapter folder `dir` for `model`: rank-`r` factors for `q_proj` of
/// layer 0 (`lora_A`/`lora_B`) and for the embeddings (`lora_embedding_A`/`_B`), each
/// under PEFT's `base_model.model.` prefix, with `config` as `adapter_config.json`.
pub(crate) fn write_adapter(dir: &Path, model: &Checkpoint, r: usize, config: &str) {
    write_adapter_with(dir, model, r, config, false);
}

/// [`write_adapter`], and with `stored`, a copy of the embeddings as PEFT saves an
/// adapted embedding (`base_layer.weight`), each value the model's plus 0.5.
fn write_adapter_with(dir: &Path, model: &Checkpoint, r: usize, config: &str, stored: bool) {
    let shape = |name: &str| model.get(&format!("{name}.weight")).unwrap().shape.clone();
    let (q, e) = (shape(Q), shape(EMBED));
    let mut factors = vec![
        (format!("base_model.model.{Q}.lora_A.weight"), vec![r, q[1]]),
        (format!("base_model.model.{Q}.lora_B.weight"), vec![q[0], r]),
        (
            format!("base_model.model.{EMBED}.lora_embedding_A"),
            vec![r, e[0]],
        ),
        (
            format!("base_model.model.{EMBED}.lora_embedding_B"),
            vec![e[1], r],
        ),
    ];
    if stored {
        factors.push((
            format!("base_model.model.{EMBED}.base_layer.weight"),
            e.clone(),
        ));
    }
    let embed = values(model, &format!("{EMBED}.weight"));
    let tmp = dir.with_extension("tmp");
    fs::create_dir_all(&tmp).unwrap();
    let tensors = factors
        .iter()
        .map(|(name, shape)| OutputTensor {
            name: name.clone(),
            dtype: Dtype::F32,
            shape: shape.clone(),
        })
        .collect();
    let mut w = ModelWriter::create(&tmp, tensors, &WriterOptions::default()).unwrap();
    for (i, bytes) in w.data_mut_all().into_iter().enumerate() {
        for (k, b) in bytes.chunks_exact_mut(4).enumerate() {
            let v = if i == 4 {
                embed[k] + 0.5
            } else {
                factor_value(k, i)
            };
            b.copy_from_slice(&v.to_le_bytes());
        }
    }
    w.finish().unwrap();
    fs::create_dir_all(dir).unwrap();
    fs::rename(
        tmp.join("model.safetensors"),
        dir.join("adapter_model.safetensors"),
    )
    .unwrap();
    fs::remove_dir_all(&tmp).unwrap();
    fs::write(dir.join("adapter_config.json"), config).unwrap();
}

/// `W + scale·B·A` (`transposed`: `+ scale·(B·A)ᵀ`) in float64, from the adapter file.
fn updated(w: &[f32], shape: &[usize], adapter: &Checkpoint, module: &str, scale: f64) -> Vec<f64> {
    let (rows, cols) = (shape[0], shape[1]);
    let embedding = module == EMBED;
    let (a, b) = if embedding {
        ("lora_embedding_A", "lora_embedding_B")
    } else {
        ("lora_A.weight", "lora_B.weight")
    };
    let a = values(adapter, &format!("base_model.model.{module}.{a}"));
    let b = values(adapter, &format!("base_model.model.{module}.{b}"));
    let r = a.len() / if embedding { rows } else { cols };
    (0..rows * cols)
        .map(|k| {
            let (row, col) = (k / cols, k % cols);
            let update: f64 = (0..r)
                .map(|j| {
                    let (bv, av) = if embedding {
                        (b[col * r + j], a[j * rows + row])
                    } else {
                        (b[row * r + j], a[j * cols + col])
                    };
                    f64::from(bv) * f64::from(av)
                })
                .sum();
            f64::from(w[k]) + scale * update
        })
        .collect()
}

#[test]
fn an_adapter_updates_its_model_as_it_is_read_and_mergekit_s_form_is_the_same_merge() {
    let ws = Workspace::new(Dtype::F32, None);
    let code = Checkpoint::open(&ws.model("code")).unwrap();
    // rsLoRA, and a pattern giving q_proj another alpha.
    write_adapter(
        &ws.path().join("loras/code"),
        &code,
        4,
        r#"{"peft_type": "LORA", "r": 4, "lora_alpha": 16, "use_rslora": true,
            "alpha_pattern": {"q_proj": 2}, "target_modules": ["q_proj", "embed_tokens"]}"#,
    );
    ws.recipe(
        "lora.yaml",
        "base: models/base\nmodels:\n  - path: models/code\n    lora: loras/code\nmerge: passthrough\n",
    );
    ok(&run_in(
        ws.path(),
        &["merge", "lora.yaml", "-o", "out", "--quiet"],
    ));
    let out = Checkpoint::open(&ws.path().join("out")).unwrap();
    let adapter = Checkpoint::open(&ws.path().join("loras/code")).unwrap();
    for (module, alpha) in [(Q, 2.0), (EMBED, 16.0)] {
        let name = format!("{module}.weight");
        let shape = code.get(&name).unwrap().shape.clone();
        let want = updated(&values(&code, &name), &shape, &adapter, module, alpha / 2.0);
        let got = values(&out, &name);
        let scale = want.iter().fold(0f64, |m, x| m.max(x.abs()));
        let worst = got
            .iter()
            .zip(&want)
            .map(|(&g, &w)| (f64::from(g) - w).abs())
            .fold(0f64, f64::max);
        assert!(worst <= 1e-6 * scale, "{name}: off by {worst} of {scale}");
        assert_ne!(got, values(&code, &name), "{name} is updated");
    }
    // Every other tensor is the model's, bit for bit.
    for t in code.tensors() {
        if t.name != format!("{Q}.weight") && t.name != format!("{EMBED}.weight") {
            assert_eq!(
                out.data(out.get(&t.name).unwrap()),
                code.data(t),
                "{}",
                t.name
            );
        }
    }
    // `check` names the adapter; the plan records the update.
    let shown = ok(&run_in(ws.path(), &["check", "lora.yaml"]));
    assert!(
        shown.contains("lora loras/code (2 tensors updated)"),
        "{shown}"
    );
    let plan = ok(&run_in(ws.path(), &["check", "lora.yaml", "--json"]));
    assert!(
        plan.contains("\"kind\": \"lora\"") && plan.contains("lora_embedding_A"),
        "{plan}"
    );
    // An adapter saved with the embedding's own weight (PEFT's default when it adapts
    // one) is read with that weight in place of the model's.
    write_adapter_with(
        &ws.path().join("loras/stored"),
        &code,
        4,
        r#"{"r": 4, "lora_alpha": 8}"#,
        true,
    );
    ws.recipe(
        "stored.yaml",
        "base: models/base\nmodels:\n  - path: models/code\n    lora: loras/stored\nmerge: passthrough\n",
    );
    ok(&run_in(
        ws.path(),
        &["merge", "stored.yaml", "-o", "stored", "--quiet"],
    ));
    let stored = Checkpoint::open(&ws.path().join("stored")).unwrap();
    let stored_adapter = Checkpoint::open(&ws.path().join("loras/stored")).unwrap();
    let name = format!("{EMBED}.weight");
    let shifted: Vec<f32> = values(&code, &name).iter().map(|x| x + 0.5).collect();
    let want = updated(
        &shifted,
        &code.get(&name).unwrap().shape,
        &stored_adapter,
        EMBED,
        2.0,
    );
    let worst = values(&stored, &name)
        .iter()
        .zip(&want)
        .map(|(&g, &w)| (f64::from(g) - w).abs())
        .fold(0f64, f64::max);
    assert!(
        worst < 1e-6,
        "the stored embedding, updated: off by {worst}"
    );
    // mergekit's `model+lora` is the same merge, byte for byte.
    ws.recipe(
        "mergekit.yml",
        "merge_method: passthrough\nmodels:\n  - model: models/code+loras/code\ndtype: float32\n",
    );
    ok(&run_in(
        ws.path(),
        &["merge", "mergekit.yml", "-o", "mk", "--quiet"],
    ));
    assert_eq!(
        tensors(&ws.path().join("out")),
        tensors(&ws.path().join("mk"))
    );
}

#[test]
fn an_adapter_that_cannot_be_applied_is_refused_with_its_reason_and_nothing_written() {
    let ws = Workspace::new(Dtype::BF16, None);
    let code = Checkpoint::open(&ws.model("code")).unwrap();
    let good = r#"{"peft_type": "LORA", "r": 4, "lora_alpha": 8}"#;
    let cases = [
        ("dora", r#"{"r": 4, "use_dora": true}"#, "DoRA"),
        ("ia3", r#"{"peft_type": "IA3", "r": 4}"#, "IA3 adapter"),
        (
            "rank",
            r#"{"r": 8, "lora_alpha": 8}"#,
            "rank 8, but its lora_A has 4 rows",
        ),
        ("noconfig", "", "adapter_config.json"),
    ];
    for (name, config, _) in &cases {
        write_adapter(&ws.path().join("loras").join(name), &code, 4, config);
        if config.is_empty() {
            fs::remove_file(
                ws.path()
                    .join("loras")
                    .join(name)
                    .join("adapter_config.json"),
            )
            .unwrap();
        }
    }
    // An adapter made for another architecture: it adapts a module the model lacks.
    write_adapter(&ws.path().join("loras/other"), &code, 4, good);
    let file = ws.path().join("loras/other/adapter_model.safetensors");
    let mut bytes = fs::read(&file).unwrap();
    let header = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let renamed = std::str::from_utf8(&bytes[8..header])
        .unwrap()
        .replace("q_proj", "x_proj");
    bytes[8..header].copy_from_slice(renamed.as_bytes());
    fs::write(&file, bytes).unwrap();
    let cases = cases.iter().map(|&(n, _, says)| (n, says)).chain([(
        "other",
        "the model has no tensor `model.layers.0.self_attn.x_proj.weight`",
    )]);
    for (name, says) in cases {
        let recipe = format!(
            "base: models/base\nmodels:\n  - path: models/code\n    lora: loras/{name}\n  - path: models/math\nmerge: mean\n"
        );
        ws.recipe("bad.yaml", &recipe);
        let before = ws.entries();
        let err = fails(&run_in(ws.path(), &["merge", "bad.yaml", "-o", "out"]), 1);
        assert!(
            err.contains("cannot apply the LoRA adapter of model 1"),
            "{name}: {err}"
        );
        assert!(err.contains(says), "{name}: {err}");
        assert!(
            err.contains(&format!("lora: loras/{name}")) && err.contains("this adapter"),
            "{name}: {err}"
        );
        assert_eq!(ws.entries(), before, "{name}: nothing is left behind");
    }
}

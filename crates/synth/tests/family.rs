//! Generated families: determinism, layout, configs, sharding, statistics, scoring.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use reefknot_io::{from_f32, to_f32, Checkpoint, Dtype, ModelWriter, OutputTensor, WriterOptions};
use reefknot_ops::analysis::{Probe, ProbeSpec, TensorStats, SHARES};
use reefknot_synth::{
    generate, sample_tensor, score, tensor_layout, Family, FamilySpec, SynthError, TensorSampler,
};
use serde_json::Value;

/// Bigger than `tiny`: tensors of more than one 64 Ki-element chunk, with a partial
/// last chunk (640·128 and 1000·128 elements), grouped-query attention, bf16.
fn small() -> FamilySpec {
    FamilySpec {
        hidden: 128,
        layers: 2,
        intermediate: 640,
        vocab: 1000,
        heads: 4,
        kv_heads: 2,
        dtype: Dtype::BF16,
        ..FamilySpec::tiny()
    }
}

fn with_threads<T: Send>(n: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build()
        .unwrap()
        .install(f)
}

/// Every file under `dir`, by relative path.
fn dir_bytes(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(
                    p.strip_prefix(dir).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    out
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn tensor_f32(ck: &Checkpoint, name: &str) -> Vec<f32> {
    let t = ck.get(name).unwrap();
    let mut v = vec![0.0; t.numel()];
    to_f32(t.dtype, ck.data(t), &mut v);
    v
}

#[test]
fn bytes_do_not_depend_on_threads() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = FamilySpec {
        shard_size: Some(200_000),
        ..small()
    };
    let a = with_threads(1, || generate(&spec, &tmp.path().join("a"))).unwrap();
    let b = with_threads(2, || generate(&spec, &tmp.path().join("b"))).unwrap();
    let c = with_threads(3, || generate(&spec, &tmp.path().join("c"))).unwrap();
    let (a, b, c) = (dir_bytes(&a.root), dir_bytes(&b.root), dir_bytes(&c.root));
    assert!(
        a.len() > 4 * 4,
        "expected several shards per model: {:?}",
        a.keys()
    );
    assert_eq!(a, b);
    assert_eq!(a, c);

    let other = generate(&FamilySpec { seed: 1, ..spec }, &tmp.path().join("seed1")).unwrap();
    let d = dir_bytes(&other.root);
    let weights = a
        .keys()
        .find(|p| p.starts_with("base") && p.extension().is_some_and(|e| e == "safetensors"))
        .unwrap();
    assert_ne!(a[weights], d[weights]);
}

/// The tensors a `LlamaForCausalLM` with this `config.json` has, written out from the
/// config alone (independently of the crate's layout code).
fn llama_tensors(config: &Value) -> BTreeMap<String, Vec<usize>> {
    let get = |k: &str| config[k].as_u64().unwrap() as usize;
    let (h, i, v, l) = (
        get("hidden_size"),
        get("intermediate_size"),
        get("vocab_size"),
        get("num_hidden_layers"),
    );
    let kv = get("num_key_value_heads") * (h / get("num_attention_heads"));
    let mut out = BTreeMap::new();
    out.insert("model.embed_tokens.weight".to_string(), vec![v, h]);
    out.insert("model.norm.weight".to_string(), vec![h]);
    if !config["tie_word_embeddings"].as_bool().unwrap() {
        out.insert("lm_head.weight".to_string(), vec![v, h]);
    }
    for n in 0..l {
        let p = format!("model.layers.{n}");
        for (name, shape) in [
            ("input_layernorm", vec![h]),
            ("post_attention_layernorm", vec![h]),
            ("self_attn.q_proj", vec![h, h]),
            ("self_attn.k_proj", vec![kv, h]),
            ("self_attn.v_proj", vec![kv, h]),
            ("self_attn.o_proj", vec![h, h]),
            ("mlp.gate_proj", vec![i, h]),
            ("mlp.up_proj", vec![i, h]),
            ("mlp.down_proj", vec![h, i]),
        ] {
            out.insert(format!("{p}.{name}.weight"), shape);
        }
    }
    out
}

#[test]
fn names_and_shapes_match_the_llama_config() {
    let tmp = tempfile::tempdir().unwrap();
    for (k, spec) in [
        FamilySpec::tiny(),
        FamilySpec {
            tie_embeddings: true,
            ..small()
        },
    ]
    .into_iter()
    .enumerate()
    {
        let family = generate(&spec, &tmp.path().join(k.to_string())).unwrap();
        for dir in std::iter::once(&family.base).chain(&family.tasks) {
            let config = read_json(&dir.join("config.json"));
            let want = llama_tensors(&config);
            let ck = Checkpoint::open(dir).unwrap();
            let got: BTreeMap<String, Vec<usize>> = ck
                .tensors()
                .iter()
                .map(|t| (t.name.clone(), t.shape.clone()))
                .collect();
            assert_eq!(got, want, "{}", dir.display());
            assert!(ck.tensors().iter().all(|t| t.dtype == spec.dtype));
            assert_eq!(ck.metadata().get("format").map(String::as_str), Some("pt"));
            assert_eq!(
                ck.tensors().len(),
                tensor_layout(&spec).len(),
                "layout and files agree"
            );
        }
        assert_eq!(
            spec.params_per_model(),
            llama_tensors(&read_json(&family.base.join("config.json")))
                .values()
                .map(|s| s.iter().product::<usize>() as u64)
                .sum::<u64>()
        );
    }
}

#[test]
fn config_json_is_a_llama_config() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = small();
    let family = generate(&spec, tmp.path()).unwrap();
    assert_eq!(family, Family::at(tmp.path(), 3));
    for dir in std::iter::once(&family.base).chain(&family.tasks) {
        let c = read_json(&dir.join("config.json"));
        assert_eq!(c["architectures"], serde_json::json!(["LlamaForCausalLM"]));
        assert_eq!(c["model_type"], "llama");
        assert_eq!(c["hidden_size"], 128);
        assert_eq!(c["intermediate_size"], 640);
        assert_eq!(c["num_hidden_layers"], 2);
        assert_eq!(c["num_attention_heads"], 4);
        assert_eq!(c["num_key_value_heads"], 2);
        assert_eq!(c["head_dim"], 32);
        assert_eq!(c["vocab_size"], 1000);
        assert_eq!(c["torch_dtype"], "bfloat16");
        assert_eq!(c["tie_word_embeddings"], false);
        assert_eq!(c["hidden_act"], "silu");
        assert_eq!(c["bos_token_id"], 1);
        assert_eq!(c["eos_token_id"], 2);
        assert!(c["max_position_embeddings"].as_u64().unwrap() > 0);
        assert!(c["rms_norm_eps"].as_f64().unwrap() > 0.0);
        assert!(c["rope_theta"].as_f64().unwrap() > 0.0);
        let g = read_json(&dir.join("generation_config.json"));
        assert_eq!(g["bos_token_id"], 1);
        assert_eq!(g["eos_token_id"], 2);
    }
    let f = read_json(&tmp.path().join("family.json"));
    assert_eq!(f["params_per_model"], spec.params_per_model());
    assert_eq!(
        f["models"],
        serde_json::json!(["base", "task_0", "task_1", "task_2"])
    );
}

#[test]
fn sharding_splits_files_and_keeps_values() {
    let tmp = tempfile::tempdir().unwrap();
    let one = generate(&small(), &tmp.path().join("one")).unwrap();
    let spec = FamilySpec {
        shard_size: Some(300_000),
        ..small()
    };
    let sharded = generate(&spec, &tmp.path().join("sharded")).unwrap();
    let files = dir_bytes(&sharded.base);
    let shards: Vec<_> = files
        .keys()
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    assert!(shards.len() >= 3, "{shards:?}");
    assert!(!files.contains_key(Path::new("model.safetensors")));
    let index = read_json(&sharded.base.join("model.safetensors.index.json"));
    let map = index["weight_map"].as_object().unwrap();
    assert_eq!(map.len(), tensor_layout(&spec).len());
    assert_eq!(
        index["metadata"]["total_size"].as_u64().unwrap(),
        spec.bytes_per_model()
    );
    for (a, b) in [
        (&one.base, &sharded.base),
        (&one.tasks[2], &sharded.tasks[2]),
    ] {
        let (a, b) = (Checkpoint::open(a).unwrap(), Checkpoint::open(b).unwrap());
        assert!(b.files().len() >= 3);
        for t in a.tensors() {
            assert_eq!(a.data(t), b.data(b.get(&t.name).unwrap()), "{}", t.name);
        }
    }
}

#[test]
fn stored_values_are_the_sampled_values() {
    let tmp = tempfile::tempdir().unwrap();
    for (k, spec) in [
        FamilySpec {
            dtype: Dtype::F32,
            ..small()
        },
        small(),
        FamilySpec {
            dtype: Dtype::F16,
            ..small()
        },
    ]
    .into_iter()
    .enumerate()
    {
        let family = generate(&spec, &tmp.path().join(k.to_string())).unwrap();
        let base = Checkpoint::open(&family.base).unwrap();
        let tasks: Vec<_> = family
            .tasks
            .iter()
            .map(|p| Checkpoint::open(p).unwrap())
            .collect();
        for name in [
            "model.layers.1.mlp.up_proj.weight",
            "lm_head.weight",
            "model.layers.0.input_layernorm.weight",
        ] {
            let t = base.get(name).unwrap();
            let (b, deltas) = sample_tensor(&spec, name, 0, t.numel()).unwrap();
            let mut want = vec![0u8; t.nbytes()];
            from_f32(spec.dtype, &b, &mut want);
            assert!(
                base.data(t) == want.as_slice(),
                "{name} base ({})",
                spec.dtype
            );
            for (ck, d) in tasks.iter().zip(&deltas) {
                let sum: Vec<f32> = b.iter().zip(d).map(|(b, d)| b + d).collect();
                from_f32(spec.dtype, &sum, &mut want);
                assert!(
                    ck.data(ck.get(name).unwrap()) == want.as_slice(),
                    "{name} task"
                );
            }
        }
    }
}

/// Zero bases and the exact (f32) task vectors of every tensor of `spec`.
/// What `reefknot analyze` measures of in-memory tensors (`base[k]` and `tasks[i][k]`:
/// tensor `k`), each tensor's top set its `max(1, ⌊0.2·n⌋)` largest entries.
fn measure_vectors(base: &[Vec<f32>], tasks: &[Vec<Vec<f32>>]) -> TensorStats {
    let mut total = TensorStats::default();
    for (k, b) in base.iter().enumerate() {
        let models: Vec<Vec<f32>> = tasks
            .iter()
            .map(|t| t[k].iter().zip(b).map(|(d, x)| x + d).collect())
            .collect();
        let source = reefknot_engine::InMemory {
            base: b,
            models: models.iter().map(Vec::as_slice).collect(),
            fisher: Vec::new(),
        };
        let weights = vec![1.0; tasks.len()];
        let job = reefknot_engine::TensorJob {
            name: "t",
            shape: &[b.len()],
            numel: b.len(),
            layer: None,
            models: tasks.len(),
            source: &source,
            fisher: false,
            stages: &[],
            weights: &weights,
            seed: 0,
            fisher_means: None,
            check_finite: false,
        };
        let spec = ProbeSpec {
            density: vec![0.2; tasks.len()],
        };
        let mut probe = Probe::new(&spec, b.len());
        reefknot_engine::observe_tensor(&job, reefknot_engine::DEFAULT_CHUNK, &mut probe).unwrap();
        total.add(probe.stats());
    }
    total
}

/// What `reefknot analyze` measures of a family's files, over every tensor.
fn measure_family(family: &Family) -> TensorStats {
    let mut text = format!("base: {}\nmodels:\n", family.base.display());
    for t in &family.tasks {
        text.push_str(&format!("  - path: {}\n", t.display()));
    }
    text.push_str("merge: ties(trim(0.2), elect, disjoint)\n");
    let recipe = reefknot_recipe::Recipe::parse(&text, Path::new("."), "family.yaml").unwrap();
    let registry = reefknot_ops::Registry::builtin();
    let plan = reefknot_engine::Plan::build(&recipe, &registry, &Default::default()).unwrap();
    let groups = |_: &str| Vec::new();
    reefknot_engine::analyze(
        &plan,
        &groups,
        None,
        None,
        reefknot_engine::DEFAULT_CHUNK,
        &reefknot_engine::NoProgress,
    )
    .unwrap()
    .whole()
}

/// The share of task `i`'s energy in its top 20 %.
fn top_share(s: &TensorStats, i: usize) -> f64 {
    let fifth = SHARES.iter().position(|&s| s == 0.2).unwrap();
    s.energy_share(i, fifth).unwrap_or(0.0)
}

fn demo_vectors(spec: &FamilySpec) -> (Vec<Vec<f32>>, Vec<Vec<Vec<f32>>>) {
    let mut base = Vec::new();
    let mut tasks = vec![Vec::new(); spec.tasks];
    for t in tensor_layout(spec) {
        let (b, d) = sample_tensor(spec, &t.name, 0, t.numel() as usize).unwrap();
        base.push(vec![0.0; b.len()]);
        for (all, d) in tasks.iter_mut().zip(d) {
            all.push(d);
        }
    }
    (base, tasks)
}

#[test]
fn task_vectors_are_heavy_tailed() {
    // Exact f32 task vectors of the demo family (4 M entries per task).
    let spec = FamilySpec::demo();
    let (zeros, tasks) = demo_vectors(&spec);
    let exact = measure_vectors(&zeros, &tasks);
    for (i, t) in exact.models.iter().enumerate() {
        // Measured 0.853–0.856; a Gaussian vector has 0.65 in its top 20 %.
        assert!((0.83..0.88).contains(&top_share(&exact, i)), "{t:?}");
    }
    // The same property as stored (bf16, `task − base` after rounding both).
    let tmp = tempfile::tempdir().unwrap();
    let family = generate(&spec, tmp.path()).unwrap();
    let stored = measure_family(&family);
    for (i, (s, e)) in stored.models.iter().zip(&exact.models).enumerate() {
        assert!((0.83..0.88).contains(&top_share(&stored, i)), "{s:?}");
        assert!(
            (stored.norm(i) / exact.norm(i) - 1.0).abs() < 0.01,
            "{s:?} vs {e:?}"
        );
    }
}

#[test]
fn a_gaussian_is_not_heavy_tailed() {
    // Calibrates the assertion above: N(0, 1) puts 65 % of its energy in its top 20 %
    // (|z| > 1.28), the generator's bounded normal-like variate 63 %.
    let spec = FamilySpec::tiny();
    let n = 200_000;
    let (g, _) = sample_tensor(&spec, "model.layers.0.mlp.up_proj.weight", 0, n).unwrap();
    let s = measure_vectors(&[vec![0.0; n]], &[vec![g]]);
    assert!((0.60..0.66).contains(&top_share(&s, 0)), "{s:?}");
}

#[test]
fn important_entries_conflict_at_the_requested_rate() {
    for conflict in [0.0f32, 0.3, 0.5] {
        let spec = FamilySpec {
            conflict,
            ..FamilySpec::demo()
        };
        let layout = tensor_layout(&spec);
        let t = layout.iter().find(|t| t.name == "lm_head.weight").unwrap();
        let n = t.numel() as usize;
        let sampler = TensorSampler::new(&spec, t);
        let (_, d) = sample_tensor(&spec, &t.name, 0, n).unwrap();
        let (mut important, mut both, mut opposite) = (0u64, 0u64, 0u64);
        for (j, (x, y)) in d[0].iter().zip(&d[1]).enumerate() {
            let (a, b) = (
                sampler.is_important(0, j as u64),
                sampler.is_important(1, j as u64),
            );
            important += u64::from(a);
            if a && b {
                both += 1;
                opposite += u64::from((*x > 0.0) != (*y > 0.0));
            }
        }
        let density = important as f64 / n as f64;
        let overlap = both as f64 / important as f64;
        let rate = opposite as f64 / both as f64;
        assert!((density - 0.2).abs() < 0.005, "{density}");
        assert!((overlap - 0.2).abs() < 0.01, "{overlap}");
        assert!(
            (rate - f64::from(conflict)).abs() < 0.015,
            "conflict {conflict}: measured {rate} over {both} shared entries"
        );
    }
}

#[test]
fn stored_top_sets_overlap_and_conflict() {
    // What an analysis of the files sees: top-20 % sets by |δ| (so also the largest
    // noise entries, whose signs are independent). Measured: overlap 0.20; conflict
    // 0.41 and cosine +0.045 at `conflict = 0.3`, 0.27 and +0.11 at `conflict = 0`.
    let tmp = tempfile::tempdir().unwrap();
    for (conflict, range, cosine) in [
        (0.3f32, 0.37..0.45, 0.02..0.07),
        (0.0, 0.23..0.31, 0.08..0.14),
    ] {
        let spec = FamilySpec {
            conflict,
            ..FamilySpec::demo()
        };
        let family = generate(&spec, &tmp.path().join(conflict.to_string())).unwrap();
        let stats = measure_family(&family);
        assert_eq!(stats.pairs.len(), 3);
        for p in &stats.pairs {
            assert!(
                (0.18..0.22).contains(&stats.top_overlap(p).unwrap()),
                "{p:?}"
            );
            assert!(range.contains(&p.top_conflict().unwrap()), "{p:?}");
            assert!(cosine.contains(&stats.cosine(p).unwrap()), "{p:?}");
        }
    }
}

/// Writes a model with the base's tensors, `f(name, base, task vectors)` giving each
/// merged f32 tensor.
fn write_merge(
    family: &Family,
    out: &Path,
    f: impl Fn(&[f32], &[Vec<f32>]) -> Vec<f32>,
) -> PathBuf {
    let base = Checkpoint::open(&family.base).unwrap();
    let tasks: Vec<_> = family
        .tasks
        .iter()
        .map(|p| Checkpoint::open(p).unwrap())
        .collect();
    let outputs: Vec<OutputTensor> = base
        .tensors()
        .iter()
        .map(|t| OutputTensor {
            name: t.name.clone(),
            dtype: Dtype::F32,
            shape: t.shape.clone(),
        })
        .collect();
    std::fs::create_dir_all(out).unwrap();
    let mut w = ModelWriter::create(out, outputs, &WriterOptions::default()).unwrap();
    for (i, t) in base.tensors().iter().enumerate() {
        let b = tensor_f32(&base, &t.name);
        let deltas: Vec<Vec<f32>> = tasks
            .iter()
            .map(|ck| {
                tensor_f32(ck, &t.name)
                    .iter()
                    .zip(&b)
                    .map(|(x, b)| x - b)
                    .collect()
            })
            .collect();
        let merged: Vec<f32> = f(&b, &deltas).iter().zip(&b).map(|(d, b)| b + d).collect();
        from_f32(Dtype::F32, &merged, w.data_mut(i));
    }
    w.finish().unwrap();
    out.to_path_buf()
}

#[test]
fn score_of_a_task_against_itself_and_the_base() {
    let tmp = tempfile::tempdir().unwrap();
    let family = generate(&small(), &tmp.path().join("f")).unwrap();
    let stats = measure_family(&family);

    let s = score(&family.base, &family.tasks, &family.tasks[0]).unwrap();
    assert_eq!(s.len(), 3);
    assert!((s[0].cosine - 1.0).abs() < 1e-9, "{:?}", s[0]);
    assert_eq!(s[0].sign_kept, 1.0);
    assert!((s[0].norm_ratio - 1.0).abs() < 1e-12);
    assert!((s[0].retained - 1.0).abs() < 1e-9);
    for (i, pair) in [(1, 0), (2, 1)] {
        assert!(
            (s[i].cosine - stats.cosine(&stats.pairs[pair]).unwrap()).abs() < 1e-9,
            "{:?}",
            s[i]
        );
        assert!((0.4..0.7).contains(&s[i].sign_kept), "{:?}", s[i]);
    }

    let s = score(&family.base, &family.tasks, &family.base).unwrap();
    for t in &s {
        assert_eq!(
            (t.cosine, t.sign_kept, t.norm_ratio),
            (0.0, 0.0, 0.0),
            "{t:?}"
        );
    }

    // A merged model stored in another dtype (f32) than the inputs (bf16).
    let copy = write_merge(&family, &tmp.path().join("copy1"), |_, d| d[1].clone());
    let s = score(&family.base, &family.tasks, &copy).unwrap();
    assert!((s[1].cosine - 1.0).abs() < 1e-9);
    assert_eq!(s[1].sign_kept, 1.0);
}

/// TIES as the paper defines it, per tensor: keep each task's top 20 % by |δ|, elect
/// the sign of the sum, average the entries that agree with it.
fn ties(_: &[f32], deltas: &[Vec<f32>]) -> Vec<f32> {
    let n = deltas[0].len();
    let k = ((n as f64 * 0.2) as usize).max(1);
    let trimmed: Vec<Vec<f32>> = deltas
        .iter()
        .map(|d| {
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&a, &b| d[b].abs().total_cmp(&d[a].abs()).then(a.cmp(&b)));
            let mut t = vec![0.0; n];
            for &j in &order[..k] {
                t[j] = d[j];
            }
            t
        })
        .collect();
    (0..n)
        .map(|j| {
            let sum: f32 = trimmed.iter().map(|t| t[j]).sum();
            let sign = if sum >= 0.0 { 1.0 } else { -1.0 };
            let agree: Vec<f32> = trimmed
                .iter()
                .map(|t| t[j])
                .filter(|&x| x != 0.0 && x.signum() == sign)
                .collect();
            if agree.is_empty() {
                0.0
            } else {
                agree.iter().sum::<f32>() / agree.len() as f32
            }
        })
        .collect()
}

#[test]
fn ties_keeps_more_of_each_task_than_averaging() {
    let tmp = tempfile::tempdir().unwrap();
    let family = generate(&small(), &tmp.path().join("f")).unwrap();
    let mean = write_merge(&family, &tmp.path().join("mean"), |_, d| {
        (0..d[0].len())
            .map(|j| d.iter().map(|t| t[j]).sum::<f32>() / d.len() as f32)
            .collect()
    });
    let ties = write_merge(&family, &tmp.path().join("ties"), ties);
    let m = score(&family.base, &family.tasks, &mean).unwrap();
    let t = score(&family.base, &family.tasks, &ties).unwrap();
    for (m, t) in m.iter().zip(&t) {
        eprintln!("ties {t:?}\nmean {m:?}");
        assert!(t.sign_kept > m.sign_kept + 0.01, "ties {t:?} mean {m:?}");
        assert!(t.retained > m.retained, "ties {t:?} mean {m:?}");
        assert!(m.sign_kept > 0.7, "{m:?}");
    }
}

#[test]
fn errors_name_what_is_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = FamilySpec {
        conflict: 0.7,
        ..FamilySpec::tiny()
    };
    let err = generate(&bad, &tmp.path().join("bad")).unwrap_err();
    assert!(matches!(err, SynthError::InvalidSpec(_)), "{err}");
    assert!(err.to_string().contains("conflict"), "{err}");
    assert!(
        !tmp.path().join("bad").exists(),
        "nothing is created for a bad spec"
    );

    let family = generate(&FamilySpec::tiny(), &tmp.path().join("f")).unwrap();
    let again = generate(&FamilySpec::tiny(), &tmp.path().join("f")).unwrap_err();
    assert!(again.to_string().contains("exists"), "{again}");
    assert!(
        family.base.join("model.safetensors").exists(),
        "the first family is intact"
    );

    let tied = generate(
        &FamilySpec {
            tie_embeddings: true,
            ..FamilySpec::tiny()
        },
        &tmp.path().join("tied"),
    )
    .unwrap();
    let err = score(&family.base, &family.tasks, &tied.base).unwrap_err();
    assert!(err.to_string().contains("lm_head.weight"), "{err}");
    let wide = generate(
        &FamilySpec {
            hidden: 128,
            ..FamilySpec::tiny()
        },
        &tmp.path().join("wide"),
    )
    .unwrap();
    let err = score(&family.base, &family.tasks, &wide.base).unwrap_err();
    assert!(err.to_string().contains("shape"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_range_draws_the_same_values(start in 0u64..200_000, len in 1usize..3000, seed in any::<u64>()) {
        let spec = FamilySpec { seed, ..FamilySpec::tiny() };
        let name = "model.layers.0.mlp.down_proj.weight";
        let (b, d) = sample_tensor(&spec, name, start, len).unwrap();
        let cut = len / 3;
        let (b1, d1) = sample_tensor(&spec, name, start, cut).unwrap();
        let (b2, d2) = sample_tensor(&spec, name, start + cut as u64, len - cut).unwrap();
        prop_assert_eq!(&b[..cut], &b1[..]);
        prop_assert_eq!(&b[cut..], &b2[..]);
        for t in 0..spec.tasks {
            prop_assert_eq!(&d[t][..cut], &d1[t][..]);
            prop_assert_eq!(&d[t][cut..], &d2[t][..]);
        }
    }

    #[test]
    fn top_energy_matches_a_sort(values in prop::collection::vec(-8i32..8, 1..400)) {
        // Small integers: many ties at the threshold.
        let d: Vec<f32> = values.iter().map(|&v| v as f32 * 0.5).collect();
        let s = measure_vectors(&[vec![0.0; d.len()]], &[vec![d.clone()]]);
        let k = ((d.len() as f64 * 0.2).floor() as usize).max(1);
        let mut e: Vec<f64> = d.iter().map(|x| f64::from(*x).powi(2)).collect();
        e.sort_by(|a, b| b.total_cmp(a));
        let total: f64 = e.iter().sum();
        let want = if total == 0.0 { 0.0 } else { e[..k].iter().sum::<f64>() / total };
        let got = top_share(&s, 0);
        prop_assert!((got - want).abs() < 1e-12);
    }
}

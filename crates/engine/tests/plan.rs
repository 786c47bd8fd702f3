//! The plan as data, through the library: made from a recipe, serialised, read back,
//! edited, and run — whole, in part, and into a model folder.

use std::path::Path;

use reefknot_engine::{
    execute_into, lay_out, merge, MemoryOutput, MergeOptions, MergePlan, NoProgress, Plan,
    PlanOptions,
};
use reefknot_io::{Checkpoint, Dtype};
use reefknot_ops::Registry;
use reefknot_plan::{OutputTensor, Producer, Role, TensorRef};
use reefknot_recipe::Recipe;
use reefknot_synth::FamilySpec;

/// A tiny bf16 family and a TIES recipe over it.
fn family(dir: &Path, expression: &str) -> Recipe {
    let spec = FamilySpec {
        dtype: Dtype::BF16,
        ..FamilySpec::tiny()
    };
    reefknot_synth::generate(&spec, &dir.join("family")).unwrap();
    let text = format!(
        "base: family/base\nmodels:\n  - path: family/task_0\n  - path: family/task_1\n    weight: [1.0, 0.5]\n  - path: family/task_2\nmerge: {expression}\ndtype: float32\nseed: 7\n"
    );
    Recipe::parse(&text, dir, "r.yaml").unwrap()
}

fn in_memory(plan: &Plan, selection: Option<&[usize]>, threads: usize) -> Vec<Vec<u8>> {
    let out = MemoryOutput::for_plan(plan);
    let opts = MergeOptions {
        threads: Some(threads),
        ..MergeOptions::default()
    };
    execute_into(plan, selection, &out, &opts, &NoProgress).unwrap();
    out.into_tensors()
}

/// Built, serialised, read back and run: the same bytes as the plan made directly, on
/// one thread or two, in full or for a chosen subset of tensors.
#[test]
fn a_plan_read_back_runs_to_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = family(
        dir.path(),
        "dare(p=0.5, rescale=l1) |> elect |> disjoint |> scale(0.9)",
    );
    let registry = Registry::builtin();
    let direct = Plan::build(&recipe, &registry, &PlanOptions::default()).unwrap();
    let json = direct.data().to_json();
    let data = MergePlan::from_json(&json).unwrap();
    assert_eq!(&data, direct.data(), "JSON keeps every field");
    let loaded = Plan::load(data, &registry).unwrap();

    let expected = in_memory(&direct, None, 2);
    assert_eq!(in_memory(&loaded, None, 2), expected);
    assert_eq!(in_memory(&loaded, None, 1), expected);

    let some: Vec<usize> = (0..expected.len()).step_by(3).collect();
    let part = in_memory(&loaded, Some(&some), 2);
    for (i, bytes) in part.iter().enumerate() {
        if some.contains(&i) {
            assert_eq!(bytes, &expected[i], "tensor {i}");
        } else {
            assert!(bytes.iter().all(|&b| b == 0), "tensor {i} was not selected");
        }
    }
    // The weights' gradient was evaluated per tensor and the plan kept it.
    let first_layer = direct.data().tensors.iter().find(|t| t.layer == Some(0));
    let last_layer = direct.data().tensors.iter().find(|t| t.layer == Some(1));
    let weight = |t: Option<&OutputTensor>| match &t.unwrap().producer {
        Producer::Pipeline(p) => p.weights[1],
        Producer::Copy { .. } => unreachable!(),
    };
    assert_eq!((weight(first_layer), weight(last_layer)), (1.0, 0.5));
}

/// An output tensor copied from a model other than the base, under another name (what
/// frankenmerges do), and one converted from bf16 to f32 on the way: the merged folder
/// has both, readable by the repository's own reader, with the source's values.
#[test]
fn an_output_tensor_can_be_copied_from_any_input_under_another_name() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = family(dir.path(), "ties(trim(0.2), elect, disjoint)");
    let registry = Registry::builtin();
    let (mut data, _) =
        reefknot_engine::plan_recipe(&recipe, &registry, &PlanOptions::default()).unwrap();
    let math = data
        .inputs
        .iter()
        .position(|i| i.role == Role::Model { model: 2 })
        .unwrap();
    let source = "model.layers.1.mlp.down_proj.weight";
    let shape = data
        .tensors
        .iter()
        .find(|t| t.name == source)
        .unwrap()
        .shape
        .clone();
    for (name, dtype, scale) in [
        ("extra.copied.weight", "BF16", 1.0),
        ("extra.widened.weight", "F32", 1.0),
        ("extra.scaled.weight", "BF16", -0.5),
    ] {
        data.tensors.push(OutputTensor {
            name: name.into(),
            dtype: dtype.into(),
            shape: shape.clone(),
            layer: None,
            shard: 0,
            producer: Producer::Copy {
                from: TensorRef::new(math, source),
                scale,
            },
        });
    }
    data.output.shard_size = 200_000;
    lay_out(&mut data).unwrap();
    assert!(data.output.shards.len() > 1, "{:?}", data.output.shards);
    let data = MergePlan::from_json(&data.to_json()).unwrap();
    let plan = Plan::load(data, &registry).unwrap();
    let out = dir.path().join("out");
    merge(&plan, &out, &MergeOptions::default(), &NoProgress).unwrap();

    // The last shard alone, as a machine given only that part of the merge makes it.
    let last = plan.data().output.shards.len() - 1;
    let part = plan.data().tensors_in_shards(&[last]);
    assert!(!part.is_empty() && part.len() < plan.data().tensors.len());
    let alone = in_memory(&plan, Some(&part), 2);
    let folder = Checkpoint::open(&out).unwrap();
    for &i in &part {
        let t = folder.get(&plan.data().tensors[i].name).unwrap();
        assert_eq!(alone[i], folder.data(t), "{}", t.name);
    }

    let merged = Checkpoint::open(&out).unwrap();
    let task = Checkpoint::open(&dir.path().join("family/task_2")).unwrap();
    let original = task.get(source).unwrap();
    let copied = merged.get("extra.copied.weight").unwrap();
    assert_eq!(copied.dtype, Dtype::BF16);
    assert_eq!(
        merged.data(copied),
        task.data(original),
        "copied byte for byte"
    );
    let widened = merged.get("extra.widened.weight").unwrap();
    assert_eq!((widened.dtype, &widened.shape), (Dtype::F32, &shape));
    let mut want = vec![0f32; original.numel()];
    reefknot_io::to_f32(original.dtype, task.data(original), &mut want);
    let mut got = vec![0f32; widened.numel()];
    reefknot_io::to_f32(widened.dtype, merged.data(widened), &mut got);
    assert_eq!(got, want);
    // Scaled by −0.5 in float32 and rounded to bf16 (exact here: a power of two).
    let scaled = merged.get("extra.scaled.weight").unwrap();
    reefknot_io::to_f32(scaled.dtype, merged.data(scaled), &mut got);
    let halved: Vec<f32> = want.iter().map(|x| -0.5 * x).collect();
    assert_eq!(got, halved);
    assert!(got.iter().any(|&x| x != 0.0));
    // The base's tensors are all there too, merged.
    let base = Checkpoint::open(&dir.path().join("family/base")).unwrap();
    assert_eq!(merged.tensors().len(), base.tensors().len() + 3);
}

/// What a plan cannot do is refused when it is readied, with the tensor named.
#[test]
fn an_inconsistent_plan_is_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = family(dir.path(), "ties(trim(0.2), elect, disjoint)");
    let registry = Registry::builtin();
    let (data, _) =
        reefknot_engine::plan_recipe(&recipe, &registry, &PlanOptions::default()).unwrap();
    let refuse = |edit: &dyn Fn(&mut MergePlan), expect: &str| {
        let mut d = data.clone();
        edit(&mut d);
        let e = match Plan::load(d, &registry) {
            Ok(_) => panic!("accepted a plan that should fail with {expect:?}"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains(expect), "{e}\nexpected: {expect}");
    };
    refuse(
        &|d| d.tensors[0].producer = copy(0, "no.such.tensor"),
        "tensor `no.such.tensor` of the base model, does not exist",
    );
    refuse(&|d| d.tensors[1].producer = copy(9, "x"), "names input 9");
    refuse(
        &|d| d.tensors[0].shape = vec![3],
        "not a float of shape [3]",
    );
    refuse(
        &|d| {
            if let Producer::Pipeline(p) = &mut d.tensors[0].producer {
                p.stages.swap(0, 1);
            }
        },
        "takes Stack but the stage before hands on Voted",
    );
    refuse(
        &|d| {
            if let Producer::Pipeline(p) = &mut d.tensors[0].producer {
                p.stages.pop();
            }
        },
        "ends with Voted",
    );
    refuse(
        &|d| {
            if let Producer::Pipeline(p) = &mut d.tensors[0].producer {
                p.stages[1].args[0].value = reefknot_plan::Value::Choice("most".into());
            }
        },
        "`by`",
    );
    refuse(
        &|d| {
            if let Producer::Pipeline(p) = &mut d.tensors[0].producer {
                p.weights.pop();
            }
        },
        "finite weights",
    );
    refuse(
        &|d| {
            d.tensors[0].producer = Producer::Copy {
                from: TensorRef::new(0, d.tensors[0].name.clone()),
                scale: f32::NAN,
            }
        },
        "non-finite scale",
    );
    // A vocabulary whose runs overflow, or one no tensor may be read through from a
    // Fisher file.
    let vocabulary = |runs: Vec<[usize; 3]>| reefknot_plan::Vocabulary {
        size: 3,
        rows: [(1, runs)].into_iter().collect(),
        fill: Default::default(),
        padded_from: None,
    };
    refuse(
        &|d| d.vocabulary = Some(vocabulary(vec![[0, usize::MAX, 1], [1, 0, usize::MAX]])),
        "runs must be non-empty, in order and within",
    );
    refuse(
        &|d| {
            d.vocabulary = Some(vocabulary(vec![[0, 255, 3]]));
            let mut r = TensorRef::new(1, d.tensors[0].name.clone());
            r.vocabulary = true;
            d.tensors[0].producer = Producer::Copy {
                from: r,
                scale: 1.0,
            };
        },
        "reads beyond",
    );
}

fn copy(input: usize, tensor: &str) -> Producer {
    Producer::Copy {
        from: TensorRef::new(input, tensor),
        scale: 1.0,
    }
}

/// The operator reference's table of mergekit's methods (`reefknot_ops`) and the
/// mergekit front-end's (`reefknot_recipe::mergekit`) name the same methods in the
/// same order.
#[test]
fn the_mergekit_tables_agree() {
    let reference: Vec<&str> = reefknot_ops::MERGEKIT_METHODS
        .iter()
        .map(|m| m.name)
        .collect();
    let front_end: Vec<&str> = reefknot_recipe::mergekit::METHODS
        .iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(reference, front_end);
}

/// Plans of one recipe at several settings (a sweep's points) made with one
/// [`reefknot_engine::Opened`] share their inputs, opened once, and run as plans made
/// on their own do.
#[test]
fn plans_made_together_share_their_opened_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let mut recipe = family(dir.path(), "ties(trim($density), elect, disjoint)");
    let registry = Registry::builtin();
    let opened = reefknot_engine::Opened::default();
    let mut plans = Vec::new();
    for density in [0.1, 0.3] {
        recipe.set_param(
            "density",
            reefknot_recipe::ParamValue::Number(reefknot_recipe::Number::Scalar(density)),
        );
        let shared =
            Plan::build_with(&recipe, &registry, &PlanOptions::default(), &opened).unwrap();
        let alone = Plan::build(&recipe, &registry, &PlanOptions::default()).unwrap();
        assert_eq!(in_memory(&shared, None, 2), in_memory(&alone, None, 2));
        plans.push(shared);
    }
    // The base and three models, each opened once.
    assert_eq!(opened.len(), 4);
    for (a, b) in plans[0].inputs().iter().zip(plans[1].inputs()) {
        assert!(
            std::sync::Arc::ptr_eq(a, b),
            "{} opened twice",
            a.path().display()
        );
    }
    assert_ne!(in_memory(&plans[0], None, 1), in_memory(&plans[1], None, 1));
}

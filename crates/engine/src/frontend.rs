//! The recipe front-end: a reefknot recipe becomes a [`MergePlan`].
//!
//! Every expression of the recipe is compiled, every checkpoint opened (headers only)
//! and fingerprinted, and for every tensor the first matching override picked and each
//! stage's arguments resolved — a `$variable` through [`Recipe::param`] (the one place
//! that knows the order: the model's `params`, the override's, the recipe's), a
//! gradient at the tensor's depth. What the plan alone shows (every referenced tensor
//! there with the base's shape and a fitting dtype, every argument accepted by its
//! operator for this tensor, every Fisher tensor usable) is checked once, when the plan
//! is readied ([`crate::Plan::build`] does both). Nothing reads tensor data.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use reefknot_io::{Checkpoint, Dtype};
use reefknot_lang::{ArgValue, Call, ParamKind, Pipeline, Ty};
use reefknot_ops::{Args, Operator, Registry, Value};
use reefknot_plan as plan;
use reefknot_recipe::{OutputDtype, ParamValue, Recipe, RecipeWarning, Selector};

use crate::error::InRecipe;
use crate::{chat, lora, vocab, Error, ErrorKind};

/// Settings that override the recipe (from the command line).
#[derive(Clone, Debug, Default)]
pub struct PlanOptions {
    /// Overrides the recipe's `seed`.
    pub seed: Option<u64>,
    /// Overrides the recipe's `dtype` (`bfloat16`, `float16`, `float32`, or aliases).
    pub dtype: Option<String>,
    /// Overrides the recipe's `shard_size` (bytes).
    pub shard_size: Option<u64>,
}

/// The metadata key of the recipe text in every output shard (and in the plan).
pub const RECIPE_METADATA: &str = "reefknot_recipe";

/// The safetensors metadata key holding the `$variables` set from outside the recipe
/// (`--set`), as `name=value` pairs separated by `, `; absent when none were.
pub const SET_METADATA: &str = "reefknot_set";

/// A `$variable`'s value as a command line writes it.
fn param_text(v: &reefknot_recipe::ParamValue) -> String {
    use reefknot_recipe::{Number, ParamValue};
    match v {
        ParamValue::Number(Number::Scalar(x)) => x.to_string(),
        ParamValue::Number(Number::Gradient(g)) => {
            let parts: Vec<String> = g.iter().map(f64::to_string).collect();
            format!("[{}]", parts.join(", "))
        }
        ParamValue::Text(t) => t.clone(),
        ParamValue::Bool(b) => b.to_string(),
        ParamValue::Conditions(_) => "(conditions)".to_string(),
    }
}

/// One compiled expression: the recipe's `merge`, or an override's.
struct Rule {
    label: String,
    /// The checked expression, as plans and messages show it.
    text: String,
    pipeline: Pipeline,
    operators: Vec<Arc<dyn Operator>>,
}

/// How a model is named in messages.
pub(crate) fn model_label(i: usize, path: &Path) -> String {
    format!("model {} ({})", i + 1, path.display())
}

/// Makes the plan of `recipe`, returning it with the checkpoints it opened (in the
/// plan's input order), so that a merge that follows does not open them again. The
/// plan is checked against the checkpoints and the operators when it is readied
/// ([`crate::Plan::with_inputs`]).
pub fn plan_recipe(
    recipe: &Recipe,
    registry: &Registry,
    opts: &PlanOptions,
) -> Result<(plan::MergePlan, Vec<Arc<Checkpoint>>), Error> {
    plan_and_warn(recipe, registry, opts, &crate::Opened::default())
        .map(|(plan, inputs, _)| (plan, inputs))
}

/// A plan as the front-end makes it: with the checkpoints it opened (in the plan's input
/// order) and the recipe's parts that had no effect.
pub(crate) type Planned = (plan::MergePlan, Vec<Arc<Checkpoint>>, Vec<RecipeWarning>);

/// As [`plan_recipe`], with the recipe's parts that have no effect on this model
/// (overrides that select nothing, layer ranges beyond it, `params` no expression reads).
/// Checkpoints are taken from `held` where it has them, and kept there.
pub(crate) fn plan_and_warn(
    recipe: &Recipe,
    registry: &Registry,
    opts: &PlanOptions,
    held: &crate::Opened,
) -> Result<Planned, Error> {
    let rules = compile_rules(recipe, registry)?;
    // What had an effect: overrides that selected a tensor, and were chosen for one;
    // variables read, with the override they were read under.
    let mut selected = vec![false; recipe.overrides.len()];
    let mut chosen = vec![false; recipe.overrides.len()];
    let read: RefCell<HashSet<(String, Option<usize>)>> = RefCell::default();
    let mut next = 1;
    let rule_of_override: Vec<Option<usize>> = recipe
        .overrides
        .iter()
        .map(|o| {
            o.merge.as_ref().map(|_| {
                next += 1;
                next - 1
            })
        })
        .collect();

    let dtype = match opts.dtype.as_deref() {
        Some(name) => Some(parse_output_dtype(name)?),
        None => recipe.dtype.map(|d| match d {
            OutputDtype::BFloat16 => Dtype::BF16,
            OutputDtype::Float16 => Dtype::F16,
            OutputDtype::Float32 => Dtype::F32,
        }),
    };
    let seed = opts.seed.unwrap_or(recipe.seed);

    // Inputs: the base, the models in recipe order, then the Fisher files.
    // Errors about an input point at the recipe line that names it. A path that does
    // not exist but reads as a Hugging Face repo id is looked up in the local cache.
    let in_recipe = |e, loc, label: String| {
        Error::from(ErrorKind::InRecipe(InRecipe::new(e, recipe, loc, label)))
    };
    let open = |path: &Path, role: String, loc: reefknot_recipe::Loc| {
        let path = match hub_model(recipe, path, loc) {
            Ok(p) => p,
            Err(e) => return Err(in_recipe(*e, loc, "not found".into())),
        };
        held.open(&path).map_err(|source| {
            let label = role.split(" (").next().unwrap_or_default().to_string();
            in_recipe(ErrorKind::Checkpoint { role, source }, loc, label)
        })
    };
    let mut opened = vec![open(
        &recipe.base,
        input_label(recipe, 0),
        recipe.base_location,
    )?];
    let mut roles = vec![plan::Role::Base];
    for (i, m) in recipe.models.iter().enumerate() {
        opened.push(open(&m.path, model_label(i, &m.path), m.location)?);
        roles.push(plan::Role::Model { model: i });
    }
    let mut fisher_input = vec![None; recipe.models.len()];
    for (i, m) in recipe.models.iter().enumerate() {
        if let Some(f) = &m.fisher {
            let role = format!("Fisher file of {}", model_label(i, &m.path));
            fisher_input[i] = Some(opened.len());
            opened.push(open(f, role, m.fisher_location.unwrap_or(m.location))?);
            roles.push(plan::Role::Fisher { model: i });
        }
    }
    // LoRA adapters last, each with the tensors of its model (input 0 or i + 1) it
    // updates.
    let mut updates: Vec<Option<lora::Updates>> = vec![None; 1 + recipe.models.len()];
    let mut adapter_input = vec![usize::MAX; 1 + recipe.models.len()];
    let adapters = std::iter::once((None, recipe.base_lora.as_ref())).chain(
        recipe
            .models
            .iter()
            .enumerate()
            .map(|(i, m)| (Some(i), m.lora.as_ref())),
    );
    for (model, adapter) in adapters {
        let Some(adapter) = adapter else { continue };
        let role = plan::Role::Lora { model };
        let c = open(
            &adapter.path,
            format!("{role} ({})", adapter.path.display()),
            adapter.location,
        )?;
        let of = model.map_or(0, |i| i + 1);
        let mut found = lora::updates(&c, &opened[of]).map_err(|message| {
            let e = ErrorKind::Adapter {
                adapter: format!("{role} ({})", adapter.path.display()),
                message,
            };
            in_recipe(e, adapter.location, "this adapter".into())
        })?;
        for u in found.lora.values_mut() {
            u.input = opened.len();
        }
        updates[of] = Some(found);
        adapter_input[of] = opened.len();
        opened.push(c);
        roles.push(role);
    }
    let built = (recipe.tokenizer.as_ref())
        .map(|t| vocabulary(recipe, t, &opened, &updates))
        .transpose()?;
    let base_rows = built.as_ref().map_or(0, |b| b.base_rows);
    let (tokenizer_files, vocabulary) =
        built.map_or((None, None), |b| (b.files, Some(b.vocabulary)));
    // A tensor of input `input` as the plan reads it: with its adapter's update, if
    // any; permuted into the output's vocabulary when it is a vocabulary tensor.
    // A tensor the adapter holds a whole copy of is read from the adapter.
    let operand = |input: usize, tensor: &str, permuted: bool| {
        let adapted = updates.get(input).and_then(Option::as_ref);
        let (from, name) = match adapted.and_then(|u| u.stored.get(tensor)) {
            Some(name) => (adapter_input[input], name.clone()),
            None => (input, tensor.to_string()),
        };
        plan::TensorRef {
            input: from,
            tensor: name,
            lora: adapted.and_then(|u| u.lora.get(tensor).cloned()),
            vocabulary: permuted,
        }
    };
    let base = &opened[0];
    let models = &opened[1..=recipe.models.len()];
    let label = |i: usize| model_label(i, &recipe.models[i].path);
    let fisher_of = |m: reefknot_recipe::SliceInput| match m {
        reefknot_recipe::SliceInput::Model(i) => fisher_input[i],
        reefknot_recipe::SliceInput::Base => None,
    };

    let layers = layer_count(base);
    let (items, out_layers) = output_items(recipe, &opened, layers)?;

    let mut tensors = Vec::with_capacity(items.len());
    for item in &items {
        let info = item.info;
        let permuted = vocabulary.is_some() && vocab::is_vocabulary_tensor(recipe, info, base_rows);
        let mut shape = info.shape.clone();
        if let (true, Some(v)) = (permuted, &vocabulary) {
            shape[0] = v.size;
        }
        for (o, over) in recipe.overrides.iter().enumerate() {
            selected[o] |= recipe.selects(&over.selector, &item.name);
        }
        let output = |dtype: Dtype, producer| plan::OutputTensor {
            name: item.name.clone(),
            dtype: dtype.safetensors_name().to_string(),
            shape: shape.clone(),
            layer: item.layer,
            shard: 0,
            producer,
        };
        let slice = match item.how {
            How::Copy { input, scale } => {
                // Non-float tensors keep their dtype and bits.
                let (dtype, scale) = if info.dtype.is_computable() {
                    (dtype.unwrap_or(info.dtype), scale)
                } else {
                    (info.dtype, 1.0)
                };
                tensors.push(output(
                    dtype,
                    plan::Producer::Copy {
                        from: operand(input, &info.name, permuted),
                        scale,
                    },
                ));
                continue;
            }
            How::Merge { slice } => slice,
        };
        // The inputs merged: the slice's base and fine-tunes (the recipe's, without
        // slices), as inputs of the plan.
        let (own_base, members) = recipe.merged_inputs(slice);
        let base_input = input_index(own_base);
        let base_ref = operand(base_input, &info.name, permuted);
        let member_label = |pos: usize| input_label(recipe, input_index(members[pos]));
        // Each model's name for the tensor: the base's, or, in a slice whose `layers_of`
        // places the model elsewhere, the same tensor of its own layer.
        let model_names: Vec<String> = members
            .iter()
            .map(|&m| model_tensor(recipe, slice, m, &info.name))
            .collect();
        if !info.dtype.is_computable() {
            // Copied from the base, but the models must have it too (a readied plan
            // checks only what its producers read).
            for (pos, &m) in members.iter().enumerate() {
                let Some(mt) = opened[input_index(m)].get(&model_names[pos]) else {
                    return Err(ErrorKind::MissingTensor {
                        tensor: model_names[pos].clone(),
                        model: member_label(pos),
                    }
                    .into());
                };
                check_compatible(info, mt, &member_label(pos))?;
            }
            tensors.push(output(
                info.dtype,
                plan::Producer::Copy {
                    from: base_ref,
                    scale: 1.0,
                },
            ));
            continue;
        }

        let t = item.t;
        let over = recipe.override_for(&item.name);
        if let Some(o) = over {
            chosen[o] = true;
        }
        let rule_index = over.and_then(|o| rule_of_override[o]).unwrap_or(0);
        let rule = &rules[rule_index];
        let lookup = |name: &str, i: usize| {
            read.borrow_mut().insert((name.to_string(), over));
            recipe
                .param_in(name, Some(i), over, slice, &item.name, &model_names[i])
                .cloned()
        };
        let resolver = Resolver {
            lookup: &lookup,
            label: &member_label,
            set: Some(&recipe.set),
            models: members.len(),
            tensor: &item.name,
            expression: &rule.text,
            t,
        };
        let mut stages = Vec::with_capacity(rule.pipeline.stages.len());
        let mut needs_fisher = false;
        let mut copies_model = rule.operators.len() == 1;
        for (call, op) in rule.pipeline.stages.iter().zip(&rule.operators) {
            let args = resolver.args(call)?;
            copies_model &= op.copies_model(&args);
            if op.needs_fisher(&args) {
                needs_fisher = true;
                if let Some(pos) = (0..members.len()).find(|&p| fisher_of(members[p]).is_none()) {
                    return Err(ErrorKind::NoFisher {
                        op: call.op.clone(),
                        model: member_label(pos),
                    }
                    .into());
                }
            }
            stages.push(plan::Stage {
                op: call.op.clone(),
                input: flow(call.signature.input),
                output: flow(call.signature.output),
                args: args
                    .iter()
                    .map(|(name, v)| plan::Arg {
                        name: name.to_string(),
                        value: plan_value(v),
                    })
                    .collect(),
            });
        }
        let fisher = needs_fisher.then(|| {
            members
                .iter()
                .zip(&model_names)
                .map(|(&m, name)| {
                    plan::TensorRef::new(fisher_of(m).expect("checked above"), name.clone())
                })
                .collect()
        });
        // A pipeline that gives the fine-tune's tensor unchanged copies it, so that it
        // is its exact bits (θ_b + (θ_1 − θ_b) need not be θ_1 in float32).
        let producer = if copies_model {
            plan::Producer::Copy {
                from: operand(input_index(members[0]), &model_names[0], permuted),
                scale: 1.0,
            }
        } else {
            plan::Producer::Pipeline(plan::Pipeline {
                expression: rule_index,
                base: base_ref,
                models: (members.iter().zip(&model_names))
                    .map(|(&m, name)| operand(input_index(m), name, permuted))
                    .collect(),
                fisher,
                weights: (0..members.len())
                    .map(|pos| recipe.weight_in(slice, pos, &model_names[pos]).at(t) as f32)
                    .collect(),
                stages,
            })
        };
        tensors.push(output(dtype.unwrap_or(info.dtype), producer));
    }

    for (i, m) in models.iter().enumerate() {
        let extra = m
            .tensors()
            .iter()
            .filter(|t| base.get(&t.name).is_none())
            .count();
        if extra > 0 {
            tracing::warn!(
                "{} has {extra} tensor(s) the base lacks; the output keeps the base's tensors",
                label(i)
            );
        }
    }

    let mut metadata = BTreeMap::new();
    metadata.insert(
        "reefknot_version".to_string(),
        env!("CARGO_PKG_VERSION").to_string(),
    );
    metadata.insert(RECIPE_METADATA.to_string(), recipe.source.clone());
    if !recipe.set.is_empty() {
        let set: Vec<String> = recipe
            .set
            .iter()
            .map(|(name, p)| format!("{name}={}", param_text(&p.value)))
            .collect();
        metadata.insert(SET_METADATA.to_string(), set.join(", "));
    }
    let inputs = opened
        .iter()
        .zip(&roles)
        .map(|(c, role)| input_of(c, *role))
        .collect();
    let mut merge_plan = plan::MergePlan {
        format: plan::FORMAT,
        made_by: concat!("reefknot ", env!("CARGO_PKG_VERSION")).to_string(),
        seed,
        inputs,
        expressions: rules
            .iter()
            .map(|r| plan::Expression {
                label: r.label.clone(),
                text: r.text.clone(),
            })
            .collect(),
        output: plan::OutputLayout {
            dtype: dtype.map(|d| d.torch_name().to_string()),
            shard_size: opts
                .shard_size
                .or(recipe.shard_size)
                .unwrap_or(reefknot_io::DEFAULT_SHARD_SIZE),
            shards: Vec::new(),
            files_from: Some(0),
            metadata,
            config: BTreeMap::new(),
            tokenizer: tokenizer_files,
            chat_template: None,
        },
        vocabulary,
        tensors,
        plugins: Vec::new(),
    };
    record_plugins(&mut merge_plan, registry);
    if let Some(c) = &recipe.chat_template {
        let inputs: Vec<&Checkpoint> = opened[..=recipe.models.len()]
            .iter()
            .map(|c| &**c)
            .collect();
        merge_plan.output.chat_template = chat::resolve(&c.text, &inputs).map_err(|message| {
            let e = ErrorKind::ChatTemplate { message };
            in_recipe(e, c.location, "this template".into())
        })?;
        if merge_plan.output.chat_template.is_none() {
            tracing::warn!(
                "chat_template: auto: no input has a chat template; the output keeps the tokenizer's files as they are"
            );
        }
    }
    if let Some(v) = &merge_plan.vocabulary {
        merge_plan
            .output
            .config
            .insert("vocab_size".to_string(), v.size.into());
    }
    crate::lay_out(&mut merge_plan)?;
    if !recipe.slices.is_empty() {
        merge_plan
            .output
            .config
            .insert("num_hidden_layers".to_string(), out_layers.into());
    }
    let read = read.into_inner();
    // A value given from outside the recipe that nothing reads is a mistake, not a
    // part of the recipe without effect: refused, naming what is read.
    if let Some(name) = recipe
        .set
        .keys()
        .find(|n| !read.iter().any(|(r, _)| r == *n))
    {
        let mut names: Vec<&str> = read.iter().map(|(n, _)| n.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        return Err(ErrorKind::UnreadSet {
            name: name.clone(),
            read: names.iter().map(|n| format!("${n}")).collect(),
        }
        .into());
    }
    let warnings = no_effect(recipe, out_layers, &selected, &chosen, &read);
    Ok((merge_plan, opened, warnings))
}

/// The plan's input of a recipe input: the base is input 0, model `i` input `i + 1`.
fn input_index(input: reefknot_recipe::SliceInput) -> usize {
    match input {
        reefknot_recipe::SliceInput::Base => 0,
        reefknot_recipe::SliceInput::Model(i) => i + 1,
    }
}

/// How input `input` (the base is 0, model `i` is `i + 1`) is named in messages.
fn input_label(recipe: &Recipe, input: usize) -> String {
    match input {
        0 => format!("base model ({})", recipe.base.display()),
        i => model_label(i - 1, &recipe.models[i - 1].path),
    }
}

/// The input (the base is 0, model `i` is `i + 1`) that a recipe path names: the base's
/// or a model's, as resolved.
fn input_at(recipe: &Recipe, path: &Path) -> Option<usize> {
    if path == recipe.base {
        return Some(0);
    }
    recipe
        .models
        .iter()
        .position(|m| m.path == path)
        .map(|i| i + 1)
}

/// Input `i`'s name for the slice base's tensor `name` merged in slice `slice`: `name`,
/// or its layer moved by the slice's `layers_of` offset for that input.
fn model_tensor(
    recipe: &Recipe,
    slice: Option<usize>,
    i: reefknot_recipe::SliceInput,
    name: &str,
) -> String {
    use reefknot_recipe::SliceSource;
    let Some(s) = slice.map(|s| &recipe.slices[s]) else {
        return name.to_string();
    };
    let (SliceSource::Merge { starts, .. }, Some(layer)) =
        (&s.source, reefknot_recipe::layer_index(name))
    else {
        return name.to_string();
    };
    match starts.get(&i) {
        Some(&start) => reefknot_recipe::with_layer(name, layer - s.start + start)
            .expect("a tensor of a layer has a layer number"),
        None => name.to_string(),
    }
}

/// The output vocabulary `t` asks for, over the base (input 0) and the models
/// (inputs 1..=n).
fn vocabulary(
    recipe: &Recipe,
    t: &reefknot_recipe::Tokenizer,
    opened: &[Arc<Checkpoint>],
    updates: &[Option<lora::Updates>],
) -> Result<vocab::Built, Error> {
    use reefknot_recipe::{SliceSource, TokenizerSource};
    let fail = |message: String| {
        let e = ErrorKind::Vocabulary { message };
        Error::from(ErrorKind::InRecipe(InRecipe::new(
            e,
            recipe,
            t.location,
            "this tokenizer".to_string(),
        )))
    };
    // The embeddings come from the first slice and the LM head from the last; mergekit
    // fills a missing row from the inputs of that slice only, which is this
    // vocabulary's rule where that slice merges every input.
    if let Some(s) = [0, recipe.slices.len().saturating_sub(1)]
        .into_iter()
        .filter(|&s| s < recipe.slices.len())
        .find(|&s| {
            matches!(recipe.slices[s].source, SliceSource::Copy { .. })
                || recipe.merged_inputs(Some(s)) != recipe.merged_inputs(None)
        })
    {
        return Err(fail(format!(
            "with `slices:`, a tokenizer other than the base's as it is needs the first and the \
             last slice to merge the recipe's base and every model, but slice {} copies an \
             input's layers or merges others (not supported yet: mergekit fills its \
             vocabulary rows from that slice's inputs alone)",
            s + 1
        )));
    }
    let n = recipe.models.len();
    let mut vocabs = BTreeMap::new();
    let base = vocab::folder_of(&opened[0])
        .and_then(vocab::InputVocab::read)
        .map_err(|e| fail(format!("the base model's vocabulary: {e}")))?;
    vocabs.insert(0, base);
    for (i, (c, m)) in opened[1..=n].iter().zip(&recipe.models).enumerate() {
        let v = match vocab::folder_of(c).and_then(vocab::InputVocab::read) {
            Ok(v) => v,
            Err(e) => {
                // mergekit's rule: a model whose tokenizer does not load shares the
                // base's.
                tracing::warn!(
                    "{}: {e}; its vocabulary is taken to be the base's, as mergekit does",
                    model_label(i, &m.path)
                );
                vocabs[&0].clone()
            }
        };
        vocabs.insert(i + 1, v);
    }
    let source = match &t.source {
        TokenizerSource::Base => vocab::Source::Input(0),
        TokenizerSource::Union => vocab::Source::Union,
        TokenizerSource::Model(path) => {
            if let Some(i) = input_at(recipe, path) {
                vocab::Source::Input(i)
            } else {
                return Err(fail(format!(
                    "`{}` is neither the base nor a model of `models:`; the tokenizer is one \
                     of the recipe's inputs, `base` or `union`",
                    path.display()
                )));
            }
        }
    };
    // An adapter's update of a vocabulary tensor would have to be permuted too.
    for (input, u) in updates.iter().enumerate() {
        let rows = vocabs[&input].rows;
        if let Some(name) = u.iter().flat_map(|u| u.lora.keys()).find(|name| {
            opened[input]
                .get(name)
                .is_some_and(|info| vocab::is_vocabulary_tensor(recipe, info, rows))
        }) {
            return Err(fail(format!(
                "a LoRA adapter updates the vocabulary tensor `{name}`, which reefknot does \
                 not permute yet"
            )));
        }
    }
    if let vocab::Source::Input(i) = source {
        if opened[i].folder().is_none() {
            return Err(fail(format!(
                "the tokenizer's input {} is a single .safetensors file, without tokenizer files",
                opened[i].path().display()
            )));
        }
    }
    if let Some(m) = recipe.models.iter().position(|m| m.fisher.is_some()) {
        return Err(fail(format!(
            "{} has a Fisher file, whose vocabulary rows reefknot does not permute yet",
            model_label(m, &recipe.models[m].path)
        )));
    }
    let rules = token_rules(recipe, t, &vocabs)?;
    let order: Vec<usize> = (1..=n).chain([0]).collect();
    vocab::build(&vocabs, source, &order, t.pad_to_multiple_of, &rules).map_err(fail)
}

/// The rows a tokenizer's `tokens:` gives, read from the inputs' vocabularies `vocabs`
/// (the base is input 0, model `i` input `i + 1`); an error points at the token.
fn token_rules(
    recipe: &Recipe,
    t: &reefknot_recipe::Tokenizer,
    vocabs: &BTreeMap<usize, vocab::InputVocab>,
) -> Result<Vec<vocab::Rule>, Error> {
    use reefknot_recipe::TokenRowSource;
    let who = |i: usize| input_label(recipe, i);
    let mut rules = Vec::with_capacity(t.tokens.len());
    for r in &t.tokens {
        let fail = |message: String| {
            Error::from(ErrorKind::InRecipe(InRecipe::new(
                ErrorKind::Vocabulary { message },
                recipe,
                r.location,
                "this token".to_string(),
            )))
        };
        let input = |path: &Option<PathBuf>| {
            match path {
            None => Ok(0),
            Some(p) => input_at(recipe, p).ok_or_else(|| {
                let p = p.display();
                fail(format!(
                    "the row of `{}` is read from `{p}`, which is neither the base nor a model of `models:`",
                    r.token
                ))
            }),
        }
        };
        let from = match &r.source {
            TokenRowSource::Zero => None,
            TokenRowSource::Input(path) => {
                let i = input(path)?;
                let row = vocabs[&i].id(&r.token).ok_or_else(|| {
                    fail(format!(
                        "{} has no token `{}` whose row it could give",
                        who(i),
                        r.token
                    ))
                })?;
                Some([i, row])
            }
            TokenRowSource::Token {
                input: path,
                token,
                id,
            } => {
                let i = input(path)?;
                let v = &vocabs[&i];
                let row = match (token, id) {
                    (Some(other), _) => v
                        .id(other)
                        .ok_or_else(|| fail(format!("{} has no token `{other}`", who(i))))?,
                    (None, Some(id)) if *id < v.rows => *id,
                    (None, Some(id)) => {
                        return Err(fail(format!(
                            "{} has {} vocabulary rows, so no row {id}",
                            who(i),
                            v.rows
                        )))
                    }
                    (None, None) => unreachable!("the recipe gives a token or an id"),
                };
                Some([i, row])
            }
        };
        rules.push(vocab::Rule {
            token: r.token.clone(),
            from,
            force: r.force,
        });
    }
    Ok(rules)
}

/// The number of layers of a checkpoint: one past its highest layer index.
fn layer_count(c: &Checkpoint) -> usize {
    c.tensors()
        .iter()
        .filter_map(|t| reefknot_recipe::layer_index(&t.name))
        .max()
        .map_or(0, |m| m + 1)
}

/// One output tensor to plan, and what it is made of.
struct Item<'c> {
    /// The output tensor's name.
    name: String,
    /// Its layer in the output.
    layer: Option<usize>,
    /// The input tensor it is made of: in the base and every model for a merge, in
    /// the copied input for a copy.
    info: &'c reefknot_io::TensorInfo,
    /// Its depth for gradients.
    t: f64,
    how: How,
}

#[derive(Clone, Copy)]
enum How {
    /// Merged from the base's and every model's tensor, in slice `slice` if any.
    Merge { slice: Option<usize> },
    /// Input `input`'s tensor times `scale`.
    Copy { input: usize, scale: f32 },
}

/// The output tensors, in output order, with the output's layer count.
///
/// Without `slices`, the base's tensors, each merged. With them, the output's layers
/// are the slices' in order, renumbered from 0, at depth `t = i/(n−1)` within a slice
/// of `n` layers (`t = 1` when `n = 1`), as mergekit evaluates gradients; the tensors
/// before the layer stack (group `embed`) come from the first slice and the others
/// outside it (final norm, `lm_head`) from the last, at `t = 0`: mergekit's rule.
fn output_items<'c>(
    recipe: &Recipe,
    opened: &'c [Arc<Checkpoint>],
    layers: usize,
) -> Result<(Vec<Item<'c>>, usize), Error> {
    use reefknot_recipe::SliceSource;
    let base = &opened[0];
    if recipe.slices.is_empty() {
        let items = base
            .tensors()
            .iter()
            .map(|info| {
                let layer = reefknot_recipe::layer_index(&info.name);
                Item {
                    name: info.name.clone(),
                    layer,
                    info,
                    t: reefknot_recipe::depth_t(layer, layers),
                    how: How::Merge { slice: None },
                }
            })
            .collect();
        return Ok((items, layers));
    }
    // The input whose tensors a slice's are: the one it copies, or its base.
    let input_of = |s: &reefknot_recipe::Slice| match s.source {
        SliceSource::Copy { input, .. } | SliceSource::Merge { base: input, .. } => {
            input_index(input)
        }
    };
    let who = |input: usize| input_label(recipe, input);
    let item = |s: usize,
                info: &'c reefknot_io::TensorInfo,
                name: String,
                layer,
                t|
     -> Result<Item<'c>, Error> {
        let slice = &recipe.slices[s];
        let how = match &slice.source {
            SliceSource::Merge { .. } => How::Merge { slice: Some(s) },
            SliceSource::Copy { scale, .. } => {
                let input = input_of(slice);
                if input != 0 {
                    // A copied tensor sits beside the base's: the same architecture.
                    let like = reefknot_recipe::with_layer(&info.name, 0);
                    let like = like.as_deref().unwrap_or(&info.name);
                    if let Some(b) = base.get(like) {
                        let mut b = b.clone();
                        b.name.clone_from(&info.name);
                        check_compatible(&b, info, &who(input))
                            .map_err(|e| point_into_recipe(recipe, e))?;
                    }
                }
                How::Copy {
                    input,
                    scale: recipe.on_tensor_or_one(scale, &info.name).at(t) as f32,
                }
            }
        };
        Ok(Item {
            name,
            layer,
            info,
            t,
            how,
        })
    };
    let outside = |s: usize, pre: bool| {
        opened[input_of(&recipe.slices[s])]
            .tensors()
            .iter()
            .filter(move |t| {
                reefknot_recipe::layer_index(&t.name).is_none()
                    && recipe.groups.contains("embed", &t.name) == pre
            })
    };
    let mut items = Vec::new();
    for info in outside(0, true) {
        items.push(item(0, info, info.name.clone(), None, 0.0)?);
    }
    // Slice `s` takes layers `start..` of `input`: they must exist.
    let within = |s: usize, input: usize, start: usize| -> Result<(), Error> {
        let slice = &recipe.slices[s];
        let have = layer_count(&opened[input]);
        if start + slice.len() <= have {
            return Ok(());
        }
        let kind = ErrorKind::SliceBeyond {
            slice: s + 1,
            input: who(input),
            start,
            end: start + slice.len(),
            layers: have,
        };
        let label = format!("beyond its {have} layers");
        Err(ErrorKind::InRecipe(InRecipe::new(kind, recipe, slice.loc, label)).into())
    };
    let mut out = 0;
    for (s, slice) in recipe.slices.iter().enumerate() {
        let input = input_of(slice);
        let c = &opened[input];
        within(s, input, slice.start)?;
        if let SliceSource::Merge { starts, .. } = &slice.source {
            let (_, members) = recipe.merged_inputs(Some(s));
            for m in members {
                let start = starts.get(&m).copied().unwrap_or(slice.start);
                within(s, input_index(m), start)?;
            }
        }
        let mut by_layer: Vec<Vec<&reefknot_io::TensorInfo>> = vec![Vec::new(); slice.len()];
        for info in c.tensors() {
            if let Some(l) = reefknot_recipe::layer_index(&info.name) {
                if (slice.start..slice.end).contains(&l) {
                    by_layer[l - slice.start].push(info);
                }
            }
        }
        let n = slice.len();
        for (i, layer) in by_layer.into_iter().enumerate() {
            let t = reefknot_recipe::depth_t(Some(i), n);
            for info in layer {
                let name = reefknot_recipe::with_layer(&info.name, out + i)
                    .expect("a tensor of a layer has a layer number");
                items.push(item(s, info, name, Some(out + i), t)?);
            }
        }
        out += n;
    }
    for info in outside(recipe.slices.len() - 1, false) {
        items.push(item(
            recipe.slices.len() - 1,
            info,
            info.name.clone(),
            None,
            0.0,
        )?);
    }
    Ok((items, out))
}

/// `path` itself, or, when it does not exist and the recipe wrote it as a Hugging Face
/// repo id (`org/name`, `org/name@revision`) of a repo the local cache holds, the
/// snapshot of that revision.
fn hub_model(
    recipe: &Recipe,
    path: &Path,
    loc: reefknot_recipe::Loc,
) -> Result<PathBuf, Box<ErrorKind>> {
    let written = recipe
        .source
        .get(loc.offset..loc.offset + loc.len)
        .unwrap_or_default()
        .trim_matches(|c| c == '"' || c == '\'');
    crate::hub::resolve(written, path)
}

/// Points an error about one model's tensors (missing, of another shape or dtype, a
/// Fisher entry that does not fit) at the recipe line that names the model.
pub(crate) fn point_into_recipe(recipe: &Recipe, e: Error) -> Error {
    let (model, fisher) = match e.kind() {
        ErrorKind::MissingTensor { model, .. }
        | ErrorKind::ShapeMismatch { model, .. }
        | ErrorKind::DtypeMismatch { model, .. } => (model, false),
        ErrorKind::FisherTensor { model, .. } => (model, true),
        _ => return e,
    };
    // Messages name model `i` as `model_label(i, path)`.
    let Some((i, m)) = recipe
        .models
        .iter()
        .enumerate()
        .find(|(i, m)| *model == model_label(*i, &m.path))
    else {
        return e;
    };
    let (loc, label) = match (fisher, m.fisher_location) {
        (true, Some(loc)) => (loc, format!("the Fisher file of model {}", i + 1)),
        _ => (m.location, format!("model {}", i + 1)),
    };
    let kind = *e.into_kind();
    ErrorKind::InRecipe(InRecipe::new(kind, recipe, loc, label)).into()
}

/// The warnings about what had no effect (see [`plan_and_warn`]).
fn no_effect(
    recipe: &Recipe,
    layers: usize,
    selected: &[bool],
    chosen: &[bool],
    read: &HashSet<(String, Option<usize>)>,
) -> Vec<RecipeWarning> {
    let mut warnings = Vec::new();
    for (o, over) in recipe.overrides.iter().enumerate() {
        let beyond = match over.selector {
            Selector::Layers { start, end } if end > layers => Some((start.max(layers), end)),
            _ => None,
        };
        if !selected[o] {
            let mut w = RecipeWarning::new(
                recipe,
                over.loc,
                format!("override {} selects no tensor of the base", o + 1),
                "matches nothing",
            );
            if beyond.is_some() {
                w = w.help(format!("the model has {layers} layers, 0..{layers}"));
            }
            warnings.push(w);
        } else if !chosen[o] {
            warnings.push(
                RecipeWarning::new(
                    recipe,
                    over.loc,
                    format!("override {} applies to no merged tensor", o + 1),
                    "no effect",
                )
                .help(
                    "the first matching override wins: earlier ones take every tensor this \
                     one selects (or it selects only tensors copied from the base)",
                ),
            );
        } else if let Some((from, end)) = beyond {
            warnings.push(
                RecipeWarning::new(
                    recipe,
                    over.loc,
                    format!(
                        "layers {from}..{end} of override {} are beyond the model's {layers} layers",
                        o + 1
                    ),
                    "partly beyond the model",
                )
                .help(format!("the model has {layers} layers, 0..{layers}")),
            );
        }
    }
    let unread = |name: &str, under: Option<Option<usize>>| {
        !read
            .iter()
            .any(|(n, o)| n == name && under.is_none_or(|u| u == *o))
    };
    let names: Vec<&str> = read.iter().map(|(n, _)| n.as_str()).collect();
    let mut param = |p: &reefknot_recipe::Param, name: &str, whose: String| {
        let help = match reefknot_recipe::closest(name, names.iter().copied()) {
            Some(c) if c != name => format!("did you mean `{c}`? The expressions read `${c}`"),
            _ => format!("remove it, or read it in an expression as `${name}`"),
        };
        warnings.push(
            RecipeWarning::new(
                recipe,
                p.key_loc,
                format!("no expression reads `${name}` ({whose})"),
                "never read",
            )
            .help(help),
        );
    };
    for (name, p) in &recipe.params {
        if unread(name, None) {
            param(p, name, "the recipe's params".into());
        }
    }
    for (i, m) in recipe.models.iter().enumerate() {
        for (name, p) in &m.params {
            if unread(name, None) {
                param(p, name, format!("params of model {}", i + 1));
            }
        }
    }
    for (s, slice) in recipe.slices.iter().enumerate() {
        let reefknot_recipe::SliceSource::Merge { params, models, .. } = &slice.source else {
            continue;
        };
        for (name, p) in params {
            if unread(name, None) {
                param(p, name, format!("params of slice {}", s + 1));
            }
        }
        for (k, m) in models.iter().flatten().enumerate() {
            for (name, p) in &m.params {
                if unread(name, None) {
                    param(
                        p,
                        name,
                        format!("params of slice {}'s model {}", s + 1, k + 1),
                    );
                }
            }
        }
    }
    for (o, over) in recipe.overrides.iter().enumerate() {
        for (name, p) in &over.params {
            if chosen[o] && unread(name, Some(Some(o))) {
                param(p, name, format!("params of override {}", o + 1));
            }
        }
    }
    warnings
}

/// The plan's description of an opened checkpoint: its path and every file's
/// fingerprint.
pub(crate) fn input_of(c: &Checkpoint, role: plan::Role) -> plan::Input {
    plan::Input {
        role,
        path: absolute(c.path()).display().to_string(),
        files: c
            .files()
            .iter()
            .zip(c.stamps())
            .map(|(f, s)| plan::FileFingerprint {
                name: file_name_in(c, f),
                size: s.size,
                modified_ns: s.modified,
                header_sha256: s.header_hex(),
            })
            .collect(),
    }
}

/// `path` relative to the checkpoint's folder (its file name for a single file).
pub(crate) fn file_name_in(c: &Checkpoint, path: &Path) -> String {
    c.folder()
        .and_then(|d| path.strip_prefix(d).ok())
        .unwrap_or_else(|| Path::new(path.file_name().unwrap_or(path.as_os_str())))
        .display()
        .to_string()
}

/// `path` made absolute against the working directory (symlinks kept, so that a plan
/// names what the user named).
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Whether a model's tensor can be merged with (or copied beside) the base's.
pub(crate) fn check_compatible(
    base: &reefknot_io::TensorInfo,
    other: &reefknot_io::TensorInfo,
    who: &str,
) -> Result<(), Error> {
    if other.shape != base.shape {
        return Err(ErrorKind::ShapeMismatch {
            tensor: base.name.clone(),
            model: who.to_string(),
            expected: base.shape.clone(),
            found: other.shape.clone(),
        }
        .into());
    }
    if other.dtype.is_computable() != base.dtype.is_computable()
        || (!base.dtype.is_computable() && other.dtype != base.dtype)
    {
        return Err(ErrorKind::DtypeMismatch {
            tensor: base.name.clone(),
            model: who.to_string(),
            expected: base.dtype.safetensors_name().to_string(),
            found: other.dtype.safetensors_name().to_string(),
        }
        .into());
    }
    Ok(())
}

/// The position of `tensor` in a Fisher file, when it is a float entry of `shape`.
pub(crate) fn check_fisher(
    fisher: &Checkpoint,
    tensor: &str,
    shape: &[usize],
    model: &str,
) -> Result<usize, Error> {
    let found = fisher.position(tensor);
    let problem = match found.map(|i| &fisher.tensors()[i]) {
        None => "has no entry".to_string(),
        Some(ft) if ft.shape != shape => {
            format!("has shape {:?} instead of {shape:?}", ft.shape)
        }
        Some(ft) if !ft.dtype.is_computable() => {
            format!("is {}, not a float", ft.dtype.safetensors_name())
        }
        Some(_) => return Ok(found.expect("matched Some")),
    };
    Err(ErrorKind::FisherTensor {
        model: model.to_string(),
        tensor: tensor.to_string(),
        problem,
    }
    .into())
}

pub(crate) fn flow(ty: Ty) -> plan::Flow {
    match ty {
        Ty::Stack => plan::Flow::Stack,
        Ty::Voted => plan::Flow::Voted,
        Ty::Delta => plan::Flow::Delta,
    }
}

fn plan_value(v: &Value) -> plan::Value {
    match v {
        Value::Number(xs) => plan::Value::Number(xs.clone()),
        Value::Choice(c) => plan::Value::Choice(c.to_string()),
        Value::Bool(b) => plan::Value::Bool(*b),
        Value::Text(t) => plan::Value::Text(t.clone()),
    }
}

fn parse_output_dtype(name: &str) -> Result<Dtype, Error> {
    match Dtype::parse_user(name) {
        // Merges compute in f32: an F64 output would only widen f32 values.
        Some(d) if d.is_computable() && d != Dtype::F64 => Ok(d),
        _ => Err(ErrorKind::OutputDtype(name.to_string()).into()),
    }
}

/// The key of the safetensors metadata naming the plugins a merge used (JSON: a list
/// of `{name, version, sha256}`).
pub const PLUGINS_METADATA: &str = "reefknot_plugins";

/// Records in `plan` the plugins its stages use, with their versions and the SHA-256
/// of their libraries, and names them in the output's metadata.
fn record_plugins(plan: &mut plan::MergePlan, registry: &Registry) {
    let mut uses: Vec<plan::PluginUse> = Vec::new();
    for op in plan.plugin_operators() {
        let Some(p) = registry.provider(op) else {
            continue;
        };
        match uses.iter_mut().find(|u| u.name == p.name) {
            Some(u) => u.operators.push(op.to_string()),
            None => uses.push(plan::PluginUse {
                name: p.name.clone(),
                version: p.version.clone(),
                library: p.path.display().to_string(),
                sha256: p.sha256.clone(),
                operators: vec![op.to_string()],
            }),
        }
    }
    if !uses.is_empty() {
        let listed: Vec<serde_json::Value> = uses
            .iter()
            .map(|u| serde_json::json!({"name": u.name, "version": u.version, "sha256": u.sha256}))
            .collect();
        plan.output.metadata.insert(
            PLUGINS_METADATA.to_string(),
            serde_json::Value::Array(listed).to_string(),
        );
    }
    plan.plugins = uses;
}

fn compile_rules(recipe: &Recipe, registry: &Registry) -> Result<Vec<Rule>, Error> {
    let mut rules = Vec::new();
    let mut compile = |label: String, expr: &reefknot_recipe::Expr| -> Result<(), Error> {
        let pipeline = crate::compile_expr(recipe, expr, registry)?;
        let operators = operators_of(&pipeline, registry);
        rules.push(Rule {
            label,
            text: pipeline.to_string(),
            pipeline,
            operators,
        });
        Ok(())
    };
    compile("merge".to_string(), &recipe.merge)?;
    for (i, o) in recipe.overrides.iter().enumerate() {
        if let Some(expr) = &o.merge {
            compile(format!("overrides[{i}] ({})", o.selector), expr)?;
        }
    }
    // Weights that no expression reads would silently change nothing.
    let shown = |w: &reefknot_recipe::Weight| match w {
        reefknot_recipe::Weight::Number(reefknot_recipe::Number::Scalar(x)) => {
            reefknot_lang::spec::format_number(*x)
        }
        reefknot_recipe::Weight::Number(reefknot_recipe::Number::Gradient(v)) => format!("{v:?}"),
        reefknot_recipe::Weight::Conditions(_) => "conditions".to_string(),
    };
    let in_slices = recipe.slices.iter().enumerate().find_map(|(s, slice)| {
        let reefknot_recipe::SliceSource::Merge {
            models: Some(ms), ..
        } = &slice.source
        else {
            return None;
        };
        ms.iter().find_map(|m| match &m.weight {
            Some(w) if *w != reefknot_recipe::Weight::ONE => Some(format!(
                "slice {} gives a model `weight: {}`",
                s + 1,
                shown(w)
            )),
            _ => None,
        })
    });
    let weighted = recipe
        .models
        .iter()
        .position(|m| m.weight != reefknot_recipe::Weight::ONE)
        .map(|i| {
            format!(
                "model {} ({}) has `weight: {}`",
                i + 1,
                recipe.models[i].path.display(),
                shown(&recipe.models[i].weight)
            )
        })
        .or(in_slices);
    if let Some(given) = weighted {
        if !rules
            .iter()
            .any(|r| reefknot_lang::reads_weights(&r.pipeline))
        {
            reefknot_lang::check_weights(&recipe.merge.text, &rules[0].pipeline, &given)
                .map_err(|e| crate::locate(recipe, &recipe.merge, e))?;
        }
    }
    Ok(rules)
}

fn operators_of(pipeline: &Pipeline, registry: &Registry) -> Vec<Arc<dyn Operator>> {
    pipeline
        .stages
        .iter()
        .map(|s| {
            registry
                .get(&s.op)
                .and_then(|e| e.operator.clone())
                .expect("the checker only returns registered operators")
        })
        .collect()
}

/// Resolves one tensor's arguments.
struct Resolver<'a> {
    /// The value of `$name` for model `i`, if any.
    lookup: &'a dyn Fn(&str, usize) -> Option<ParamValue>,
    /// How model `i` is named in messages.
    label: &'a dyn Fn(usize) -> String,
    /// The variables set from outside the recipe (`--set`), named as such in messages.
    set: Option<&'a reefknot_recipe::Params>,
    models: usize,
    tensor: &'a str,
    /// The whole expression, for messages.
    expression: &'a str,
    /// Depth of the tensor in `[0, 1]`, for gradients.
    t: f64,
}

impl Resolver<'_> {
    fn args(&self, call: &Call) -> Result<Args, Error> {
        let mut values = Vec::with_capacity(call.args.len());
        for arg in &call.args {
            let out_of_range = |value: f64, from: String| ErrorKind::OutOfRange {
                op: call.op.clone(),
                param: arg.param.name.to_string(),
                value,
                from,
                tensor: self.tensor.to_string(),
                expected: arg.param.kind.describe(),
            };
            let value = match &arg.value {
                ArgValue::Number(x) => Value::Number(vec![*x]),
                ArgValue::Gradient(g) => {
                    let x = reefknot_recipe::Number::Gradient(g.clone()).at(self.t);
                    if !arg.param.kind.admits(x) {
                        return Err(
                            out_of_range(x, format!(" (gradient {g:?} at this depth)")).into()
                        );
                    }
                    Value::Number(vec![x])
                }
                ArgValue::Var(name) => {
                    let mut xs = Vec::with_capacity(self.models);
                    for i in 0..self.models {
                        let Some(v) = (self.lookup)(name, i) else {
                            return Err(ErrorKind::UndefinedVariable {
                                name: name.clone(),
                                model: (self.label)(i),
                                tensor: self.tensor.to_string(),
                                expression: self.expression.to_string(),
                            }
                            .into());
                        };
                        let x = match v {
                            ParamValue::Number(n) => n.at(self.t),
                            other => {
                                return Err(ErrorKind::VariableKind {
                                    name: name.clone(),
                                    op: call.op.clone(),
                                    param: arg.param.name.to_string(),
                                    found: describe_param_value(&other),
                                    expected: arg.param.kind.describe(),
                                }
                                .into())
                            }
                        };
                        if !arg.param.kind.admits(x) {
                            let from = if self.set.is_some_and(|s| s.contains_key(name)) {
                                format!(" (from --set {name}={x})")
                            } else {
                                format!(" (from ${name} of {})", (self.label)(i))
                            };
                            return Err(out_of_range(x, from).into());
                        }
                        xs.push(x);
                    }
                    if xs.iter().all(|&x| x == xs[0]) {
                        xs.truncate(1);
                    } else if call.signature.input == Ty::Delta {
                        return Err(ErrorKind::PerModelOnDelta {
                            op: call.op.clone(),
                            name: name.clone(),
                            tensor: self.tensor.to_string(),
                        }
                        .into());
                    }
                    Value::Number(xs)
                }
                ArgValue::Choice(c) => Value::Choice(c),
                ArgValue::Bool(b) => Value::Bool(*b),
                ArgValue::Text(t) => Value::Text(t.clone()),
            };
            if let (Value::Number(xs), ParamKind::Number { .. }) = (&value, &arg.param.kind) {
                if let Some(&x) = xs.iter().find(|&&x| !arg.param.kind.admits(x)) {
                    return Err(out_of_range(x, String::new()).into());
                }
            }
            values.push((arg.param.name, value));
        }
        Ok(Args::new(values))
    }
}

/// Binds a checked pipeline outside a recipe (tests, tools): literal arguments as
/// written, and `$variables` from `vars` (one value for every model, or one per model).
pub fn bind_pipeline(
    pipeline: &Pipeline,
    registry: &Registry,
    vars: &BTreeMap<String, Vec<f64>>,
    models: usize,
    tensor: &str,
) -> Result<Vec<crate::Stage>, Error> {
    let operators = operators_of(pipeline, registry);
    let lookup = |name: &str, i: usize| {
        vars.get(name).map(|v| {
            let x = if v.len() == 1 { v[0] } else { v[i] };
            ParamValue::Number(reefknot_recipe::Number::Scalar(x))
        })
    };
    let label = |i: usize| format!("model {}", i + 1);
    let resolver = Resolver {
        lookup: &lookup,
        label: &label,
        set: None,
        models,
        tensor,
        expression: &pipeline.to_string(),
        t: 0.0,
    };
    pipeline
        .stages
        .iter()
        .zip(operators)
        .map(|(call, operator)| {
            Ok(crate::Stage {
                op: call.op.clone(),
                operator,
                signature: call.signature,
                args: resolver.args(call)?,
            })
        })
        .collect()
}

fn describe_param_value(v: &ParamValue) -> String {
    match v {
        ParamValue::Number(_) => "a number".into(),
        ParamValue::Text(t) => format!("the string {t:?}"),
        ParamValue::Bool(b) => format!("the boolean {b}"),
        ParamValue::Conditions(_) => "conditions".into(),
    }
}

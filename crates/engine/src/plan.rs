//! From a recipe to a plan: every output tensor with its job, resolved before any
//! tensor data is read.
//!
//! Building a plan compiles every expression of the recipe, opens every checkpoint
//! (headers only), checks that every model has every base tensor with the same shape,
//! and resolves, for every tensor, its pipeline's arguments (variables, gradients over
//! depth, per-model values) and the models' weights. `reefknot check` prints a plan;
//! `reefknot merge` executes one.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use reefknot_io::{Checkpoint, Dtype};
use reefknot_lang::spec::format_number;
use reefknot_lang::{ArgValue, Call, ParamKind, Pipeline, Ty};
use reefknot_ops::{Args, Operator, Registry, Value};
use reefknot_recipe::{OutputDtype, ParamValue, Recipe};

use crate::{Error, ErrorKind};

/// Settings that override the recipe (from the command line).
#[derive(Clone, Debug, Default)]
pub struct PlanOptions {
    /// Overrides the recipe's `seed`.
    pub seed: Option<u64>,
    /// Overrides the recipe's `dtype` (`bfloat16`, `float16`, `float32`, or aliases).
    pub dtype: Option<String>,
}

/// One compiled expression: the recipe's `merge`, or an override's.
#[derive(Clone)]
pub struct Rule {
    /// `merge`, or `overrides[i]` with its selector.
    pub label: String,
    /// The checked pipeline.
    pub pipeline: Pipeline,
    /// Each stage's implementation.
    pub operators: Vec<Arc<dyn Operator>>,
}

/// One stage bound to one tensor's resolved arguments.
#[derive(Clone)]
pub struct Stage {
    /// The canonical operator name.
    pub op: String,
    /// The implementation.
    pub operator: Arc<dyn Operator>,
    /// The checked call (signature, spans).
    pub call: Call,
    /// Resolved arguments for this tensor.
    pub args: Args,
}

/// What happens to one output tensor.
#[derive(Clone)]
pub enum Job {
    /// Copied byte for byte from the base (dtypes that are not merged).
    Copy,
    /// Merged by a pipeline.
    Merge(MergeJob),
}

/// A tensor merged by a pipeline.
#[derive(Clone)]
pub struct MergeJob {
    /// Index into [`Plan::rules`].
    pub rule: usize,
    /// The stages with this tensor's arguments.
    pub stages: Vec<Stage>,
    /// The models' weights for this tensor.
    pub weights: Vec<f32>,
    /// Index of the tensor in each model's [`Checkpoint::tensors`].
    pub model_tensors: Vec<usize>,
    /// Index of the tensor in each model's Fisher file, when a stage reads Fisher values.
    pub fisher_tensors: Option<Vec<usize>>,
    /// Layer index parsed from the name, if any.
    pub layer: Option<usize>,
}

/// One output tensor.
#[derive(Clone)]
pub struct TensorPlan {
    /// Its name (as in the base).
    pub name: String,
    /// Index in the base's [`Checkpoint::tensors`].
    pub base_tensor: usize,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Number of elements.
    pub numel: usize,
    /// The dtype written.
    pub dtype: Dtype,
    /// What is done to it.
    pub job: Job,
}

/// The role of an input, for messages.
fn model_label(i: usize, path: &Path) -> String {
    format!("model {} ({})", i + 1, path.display())
}

/// A fully resolved merge.
pub struct Plan {
    /// The recipe it came from.
    pub recipe: Recipe,
    /// The base checkpoint.
    pub base: Checkpoint,
    /// The fine-tuned checkpoints, in recipe order.
    pub models: Vec<Checkpoint>,
    /// Each model's Fisher file, when the recipe gives one.
    pub fishers: Vec<Option<Checkpoint>>,
    /// Rule 0 is the recipe's `merge`; rule `i + 1` is override `i`'s `merge`, if it has one.
    pub rules: Vec<Rule>,
    /// Every output tensor, in the base's storage order.
    pub tensors: Vec<TensorPlan>,
    /// The seed random operators use.
    pub seed: u64,
    /// The output dtype requested (`None`: each tensor keeps the base's dtype).
    pub dtype: Option<Dtype>,
    /// Number of transformer layers (from the tensor names), for gradients.
    pub layers: usize,
    /// Whether some stage needs each model's Fisher mean over the whole model.
    pub needs_fisher_means: bool,
}

impl Plan {
    /// Builds the plan of `recipe`: compiles, opens, checks and resolves everything
    /// without reading tensor data.
    pub fn build(recipe: Recipe, registry: &Registry, opts: &PlanOptions) -> Result<Plan, Error> {
        let rules = compile_rules(&recipe, registry)?;
        let rule_of_override: Vec<Option<usize>> = {
            let mut next = 1;
            recipe
                .overrides
                .iter()
                .map(|o| {
                    o.merge.as_ref().map(|_| {
                        next += 1;
                        next - 1
                    })
                })
                .collect()
        };

        let dtype = match opts.dtype.as_deref() {
            Some(name) => Some(parse_output_dtype(name)?),
            None => recipe.dtype.map(|d| match d {
                OutputDtype::BFloat16 => Dtype::BF16,
                OutputDtype::Float16 => Dtype::F16,
                OutputDtype::Float32 => Dtype::F32,
            }),
        };
        let seed = opts.seed.unwrap_or(recipe.seed);

        let base = Checkpoint::open(&recipe.base).map_err(|source| ErrorKind::Checkpoint {
            role: format!("base model ({})", recipe.base.display()),
            source,
        })?;
        let models = recipe
            .models
            .iter()
            .enumerate()
            .map(|(i, m)| {
                Checkpoint::open(&m.path).map_err(|source| {
                    Error::from(ErrorKind::Checkpoint {
                        role: model_label(i, &m.path),
                        source,
                    })
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let fishers = recipe
            .models
            .iter()
            .enumerate()
            .map(|(i, m)| {
                m.fisher
                    .as_ref()
                    .map(|f| {
                        Checkpoint::open(f).map_err(|source| {
                            Error::from(ErrorKind::Checkpoint {
                                role: format!("Fisher file of {}", model_label(i, &m.path)),
                                source,
                            })
                        })
                    })
                    .transpose()
            })
            .collect::<Result<Vec<_>, _>>()?;

        let layers = base
            .tensors()
            .iter()
            .filter_map(|t| reefknot_recipe::layer_index(&t.name))
            .max()
            .map_or(0, |m| m + 1);

        let mut needs_fisher_means = false;
        let mut tensors = Vec::with_capacity(base.tensors().len());
        for (bi, info) in base.tensors().iter().enumerate() {
            let mut model_tensors = Vec::with_capacity(models.len());
            for (i, m) in models.iter().enumerate() {
                let label = || model_label(i, &recipe.models[i].path);
                let Some(mi) = m.tensors().iter().position(|t| t.name == info.name) else {
                    return Err(ErrorKind::MissingTensor {
                        tensor: info.name.clone(),
                        model: label(),
                    }
                    .into());
                };
                let mt = &m.tensors()[mi];
                if mt.shape != info.shape {
                    return Err(ErrorKind::ShapeMismatch {
                        tensor: info.name.clone(),
                        model: label(),
                        expected: info.shape.clone(),
                        found: mt.shape.clone(),
                    }
                    .into());
                }
                if mt.dtype.is_computable() != info.dtype.is_computable()
                    || (!info.dtype.is_computable() && mt.dtype != info.dtype)
                {
                    return Err(ErrorKind::DtypeMismatch {
                        tensor: info.name.clone(),
                        model: label(),
                        expected: info.dtype.safetensors_name().to_string(),
                        found: mt.dtype.safetensors_name().to_string(),
                    }
                    .into());
                }
                model_tensors.push(mi);
            }

            if !info.dtype.is_computable() {
                tensors.push(TensorPlan {
                    name: info.name.clone(),
                    base_tensor: bi,
                    shape: info.shape.clone(),
                    numel: info.numel(),
                    dtype: info.dtype,
                    job: Job::Copy,
                });
                continue;
            }

            let layer = reefknot_recipe::layer_index(&info.name);
            let t = reefknot_recipe::depth_t(layer, layers);
            let over = recipe.override_for(&info.name);
            let rule = over.and_then(|o| rule_of_override[o]).unwrap_or(0);
            // A variable's value: the model's params, else the matching override's,
            // else the recipe's.
            let lookup = |name: &str, i: usize| {
                recipe.models[i]
                    .params
                    .get(name)
                    .or_else(|| over.and_then(|o| recipe.overrides[o].params.get(name)))
                    .or_else(|| recipe.params.get(name))
                    .map(|p| p.value.clone())
            };
            let label = |i: usize| model_label(i, &recipe.models[i].path);
            let stages = Resolver {
                lookup: &lookup,
                label: &label,
                models: models.len(),
                tensor: &info.name,
                t,
                pipeline: &rules[rule].pipeline,
                operators: &rules[rule].operators,
            }
            .stages()?;

            let mut needs_fisher = false;
            for s in &stages {
                if s.operator.needs_fisher(&s.args) {
                    needs_fisher = true;
                    if let Some(i) = fishers.iter().position(Option::is_none) {
                        return Err(ErrorKind::NoFisher {
                            op: s.op.clone(),
                            model: model_label(i, &recipe.models[i].path),
                        }
                        .into());
                    }
                }
                needs_fisher_means |= s.operator.needs_fisher_means(&s.args);
            }
            let fisher_tensors = if needs_fisher {
                let mut idx = Vec::with_capacity(models.len());
                for (i, f) in fishers.iter().enumerate() {
                    let f = f.as_ref().expect("checked above");
                    let problem = match f.tensors().iter().position(|x| x.name == info.name) {
                        None => Some("has no entry".to_string()),
                        Some(fi) => {
                            let ft = &f.tensors()[fi];
                            if ft.shape != info.shape {
                                Some(format!(
                                    "has shape {:?} instead of {:?}",
                                    ft.shape, info.shape
                                ))
                            } else if !ft.dtype.is_computable() {
                                Some(format!("is {}, not a float", ft.dtype.safetensors_name()))
                            } else {
                                idx.push(fi);
                                None
                            }
                        }
                    };
                    if let Some(problem) = problem {
                        return Err(ErrorKind::FisherTensor {
                            model: model_label(i, &recipe.models[i].path),
                            tensor: info.name.clone(),
                            problem,
                        }
                        .into());
                    }
                }
                Some(idx)
            } else {
                None
            };

            let weights = recipe
                .models
                .iter()
                .map(|m| m.weight.at(t) as f32)
                .collect();

            tensors.push(TensorPlan {
                name: info.name.clone(),
                base_tensor: bi,
                shape: info.shape.clone(),
                numel: info.numel(),
                dtype: dtype.unwrap_or(info.dtype),
                job: Job::Merge(MergeJob {
                    rule,
                    stages,
                    weights,
                    model_tensors,
                    fisher_tensors,
                    layer,
                }),
            });
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
                    model_label(i, &recipe.models[i].path)
                );
            }
        }

        Ok(Plan {
            recipe,
            base,
            models,
            fishers,
            rules,
            tensors,
            seed,
            dtype,
            layers,
            needs_fisher_means,
        })
    }

    /// Every input path (base, models, Fisher files): the output must not touch them.
    pub fn inputs(&self) -> Vec<PathBuf> {
        let mut v = vec![self.recipe.base.clone()];
        for m in &self.recipe.models {
            v.push(m.path.clone());
            v.extend(m.fisher.clone());
        }
        v
    }

    /// Total number of elements of the output.
    pub fn total_elements(&self) -> u64 {
        self.tensors.iter().map(|t| t.numel as u64).sum()
    }

    /// A human summary: inputs, output, and each distinct resolved pipeline with the
    /// tensors that get it (what `reefknot check` prints).
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let params: u64 = self.base.tensors().iter().map(|t| t.numel() as u64).sum();
        let _ = writeln!(
            out,
            "base     {} ({} tensors, {} parameters)",
            self.recipe.base.display(),
            self.base.tensors().len(),
            human_count(params)
        );
        for (i, m) in self.recipe.models.iter().enumerate() {
            let _ = write!(out, "model {}  {}", i + 1, m.path.display());
            match &m.weight {
                reefknot_recipe::Number::Scalar(w) => {
                    let _ = write!(out, "  weight {w}");
                }
                reefknot_recipe::Number::Gradient(g) => {
                    let _ = write!(out, "  weight {g:?} over depth");
                }
            }
            if let Some(f) = &m.fisher {
                let _ = write!(out, "  fisher {}", f.display());
            }
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "output   {}, seed {}, {} layers",
            self.dtype.map_or("the base's dtypes".to_string(), |d| d
                .torch_name()
                .to_string()),
            self.seed,
            self.layers
        );

        // Group tensors by rule and resolved stages.
        let mut groups: BTreeMap<(usize, String), Vec<&str>> = BTreeMap::new();
        let mut copied = Vec::new();
        for t in &self.tensors {
            match &t.job {
                Job::Copy => copied.push(t.name.as_str()),
                Job::Merge(m) => {
                    let mut key = describe_stages(&m.stages);
                    if m.weights.iter().any(|&w| w != 1.0) {
                        let _ = write!(key, "   weights {:?}", m.weights);
                    }
                    groups.entry((m.rule, key)).or_default().push(&t.name);
                }
            }
        }
        let mut last_rule = usize::MAX;
        for ((rule, key), names) in &groups {
            if *rule != last_rule {
                let r = &self.rules[*rule];
                let _ = writeln!(out, "\n{}: {}", r.label, r.pipeline);
                last_rule = *rule;
            }
            let _ = writeln!(out, "  {key}");
            let _ = writeln!(out, "    {}", list_names(names));
        }
        if !copied.is_empty() {
            let _ = writeln!(out, "\ncopied from the base (not floating point):");
            let _ = writeln!(out, "    {}", list_names(&copied));
        }
        out
    }
}

fn human_count(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2} B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.2} M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1} K", n as f64 / 1e3),
        n => n.to_string(),
    }
}

fn list_names(names: &[&str]) -> String {
    const SHOW: usize = 4;
    let mut s = names
        .iter()
        .take(SHOW)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOW {
        let _ = write!(s, ", … ({} tensors)", names.len());
    } else {
        let _ = write!(
            s,
            " ({} tensor{})",
            names.len(),
            if names.len() == 1 { "" } else { "s" }
        );
    }
    s
}

/// `trim(k=0.2) |> elect(by=mass)`, with per-model values as lists.
pub fn describe_stages(stages: &[Stage]) -> String {
    let mut s = String::new();
    for (i, st) in stages.iter().enumerate() {
        if i > 0 {
            s.push_str(" |> ");
        }
        s.push_str(&st.op);
        let args: Vec<String> = st
            .args
            .iter()
            .map(|(name, v)| {
                let v = match v {
                    Value::Number(xs) if xs.len() == 1 => format_number(xs[0]),
                    Value::Number(xs) => {
                        let v: Vec<String> = xs.iter().map(|&x| format_number(x)).collect();
                        format!("[{}]", v.join(", "))
                    }
                    Value::Choice(c) => c.to_string(),
                    Value::Bool(b) => b.to_string(),
                    Value::Text(t) => format!("{t:?}"),
                };
                format!("{name}={v}")
            })
            .collect();
        if !args.is_empty() {
            let _ = write!(s, "({})", args.join(", "));
        }
    }
    s
}

fn parse_output_dtype(name: &str) -> Result<Dtype, Error> {
    match Dtype::parse_user(name) {
        Some(d) if d.is_computable() => Ok(d),
        _ => Err(ErrorKind::OutputDtype(name.to_string()).into()),
    }
}

fn compile_rules(recipe: &Recipe, registry: &Registry) -> Result<Vec<Rule>, Error> {
    let mut rules = Vec::new();
    let mut compile = |label: String, expr: &reefknot_recipe::Expr| -> Result<(), Error> {
        let pipeline = crate::compile_expr(recipe, expr, registry)?;
        let operators = pipeline
            .stages
            .iter()
            .map(|s| {
                registry
                    .get(&s.op)
                    .and_then(|e| e.operator.clone())
                    .expect("the checker only returns registered operators")
            })
            .collect();
        rules.push(Rule {
            label,
            pipeline,
            operators,
        });
        Ok(())
    };
    compile("merge".to_string(), &recipe.merge)?;
    for (i, o) in recipe.overrides.iter().enumerate() {
        if let Some(expr) = &o.merge {
            compile(
                format!("overrides[{i}] ({})", selector_label(&o.selector)),
                expr,
            )?;
        }
    }
    Ok(rules)
}

fn selector_label(s: &reefknot_recipe::Selector) -> String {
    match s {
        reefknot_recipe::Selector::Match(glob) => format!("match: {glob}"),
        reefknot_recipe::Selector::Group(g) => format!("group: {g}"),
        reefknot_recipe::Selector::Layers { start, end } => format!("layers: {start}..{end}"),
    }
}

/// Resolves one tensor's arguments.
struct Resolver<'a> {
    /// The value of `$name` for model `i`, if any.
    lookup: &'a dyn Fn(&str, usize) -> Option<ParamValue>,
    /// How model `i` is named in messages.
    label: &'a dyn Fn(usize) -> String,
    models: usize,
    tensor: &'a str,
    /// Depth of the tensor in `[0, 1]`, for gradients.
    t: f64,
    pipeline: &'a Pipeline,
    operators: &'a [Arc<dyn Operator>],
}

impl Resolver<'_> {
    fn stages(&self) -> Result<Vec<Stage>, Error> {
        self.pipeline
            .stages
            .iter()
            .zip(self.operators)
            .map(|(call, op)| {
                let args = self.args(call)?;
                Ok(Stage {
                    op: call.op.clone(),
                    operator: Arc::clone(op),
                    call: call.clone(),
                    args,
                })
            })
            .collect()
    }

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
                                expression: self.pipeline.to_string(),
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
                            return Err(out_of_range(
                                x,
                                format!(" (from ${name} of {})", (self.label)(i)),
                            )
                            .into());
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
) -> Result<Vec<Stage>, Error> {
    let operators: Vec<Arc<dyn Operator>> = pipeline
        .stages
        .iter()
        .map(|s| {
            registry
                .get(&s.op)
                .and_then(|e| e.operator.clone())
                .expect("the checker only returns registered operators")
        })
        .collect();
    let lookup = |name: &str, i: usize| {
        vars.get(name).map(|v| {
            let x = if v.len() == 1 { v[0] } else { v[i] };
            ParamValue::Number(reefknot_recipe::Number::Scalar(x))
        })
    };
    let label = |i: usize| format!("model {}", i + 1);
    Resolver {
        lookup: &lookup,
        label: &label,
        models,
        tensor,
        t: 0.0,
        pipeline,
        operators: &operators,
    }
    .stages()
}

fn describe_param_value(v: &ParamValue) -> String {
    match v {
        ParamValue::Number(_) => "a number".into(),
        ParamValue::Text(t) => format!("the string {t:?}"),
        ParamValue::Bool(b) => format!("the boolean {b}"),
    }
}

//! A [`MergePlan`] made ready to run: its inputs opened (and checked against their
//! fingerprints), its operators bound by name from a registry, every argument checked.
//!
//! [`Plan::build`] makes one from a recipe (through the recipe front-end),
//! [`Plan::load`] from a plan read back from JSON. Either way everything that can be
//! checked without tensor data has been checked when it returns: a merge that starts
//! fails only on I/O or inside an operator.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use reefknot_io::{Checkpoint, Dtype};
use reefknot_lang::spec::format_number;
use reefknot_lang::{OpSpec, ParamKind, Signature, Ty};
use reefknot_ops::{Args, BindCtx, Operator, Registry, Value};
use reefknot_plan::{self as data, MergePlan, Producer, Role};
use reefknot_recipe::{Recipe, RecipeWarning};

use crate::frontend::{self, check_compatible, check_fisher, PlanOptions};
use crate::{Error, ErrorKind};

/// One stage bound to one tensor's resolved arguments.
#[derive(Clone)]
pub struct Stage {
    /// The canonical operator name.
    pub op: String,
    /// The implementation.
    pub operator: Arc<dyn Operator>,
    /// The signature the stage is used with.
    pub signature: Signature,
    /// Resolved arguments for this tensor.
    pub args: Args,
}

/// A tensor of an opened input: `(input, position in its Checkpoint::tensors)`.
pub type Located = (usize, usize);

/// A LoRA adapter's update of an input tensor, bound to the adapter's factors (see
/// [`data::LoraUpdate`]).
#[derive(Clone, Copy, Debug)]
pub struct Lora {
    /// `A`.
    pub a: Located,
    /// `B`.
    pub b: Located,
    /// The factor of `B·A`.
    pub scale: f32,
    /// Whether the update is `(B·A)ᵀ`.
    pub transposed: bool,
}

/// An input tensor as a job reads it: its stored values, plus an adapter's update, its
/// rows permuted into the output's vocabulary.
#[derive(Clone, Copy, Debug)]
pub struct Operand {
    /// The tensor.
    pub at: Located,
    /// The update added to it as it is read.
    pub lora: Option<Lora>,
    /// Whether its rows are read through the plan's vocabulary.
    pub permuted: bool,
}

/// What the executor does for one output tensor.
#[derive(Clone)]
pub enum Job {
    /// Copy an input tensor, converting its dtype when `convert`.
    Copy {
        /// The tensor copied.
        from: Operand,
        /// Whether it goes through float32: its dtype differs from the output's, it
        /// is scaled, or an adapter updates it (both dtypes are floats then).
        convert: bool,
        /// The factor its values are multiplied by (1: none).
        scale: f32,
    },
    /// Merge by a pipeline.
    Merge(MergeJob),
}

/// A tensor merged by a pipeline.
#[derive(Clone)]
pub struct MergeJob {
    /// The base tensor.
    pub base: Operand,
    /// Each model's tensor.
    pub models: Vec<Operand>,
    /// Each model's Fisher tensor, when a stage reads Fisher values.
    pub fisher: Option<Vec<Located>>,
    /// The stages with this tensor's arguments.
    pub stages: Vec<Stage>,
    /// The models' weights for this tensor.
    pub weights: Vec<f32>,
}

/// A merge ready to run.
pub struct Plan {
    data: MergePlan,
    inputs: Vec<Arc<Checkpoint>>,
    jobs: Vec<Job>,
    dtypes: Vec<Dtype>,
    needs_fisher_means: bool,
    warnings: Vec<RecipeWarning>,
}

/// Checkpoints opened once and shared by every plan made with them
/// ([`Plan::build_with`]), by the path the recipe resolved them to. The files must not
/// change while they are held (as for any opened checkpoint).
#[derive(Debug, Default)]
pub struct Opened {
    by_path: Mutex<HashMap<PathBuf, Arc<Checkpoint>>>,
}

impl Opened {
    /// The checkpoint at `path`, opened now unless it already was.
    pub(crate) fn open(&self, path: &Path) -> Result<Arc<Checkpoint>, reefknot_io::IoError> {
        let mut held = self.by_path.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = held.get(path) {
            return Ok(Arc::clone(c));
        }
        let c = Arc::new(Checkpoint::open(path)?);
        held.insert(path.to_path_buf(), Arc::clone(&c));
        Ok(c)
    }

    /// How many checkpoints are held.
    pub fn len(&self) -> usize {
        self.by_path.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Plan {
    /// Makes the plan of `recipe` (compiling, opening and resolving everything without
    /// reading tensor data) and readies it.
    pub fn build(recipe: &Recipe, registry: &Registry, opts: &PlanOptions) -> Result<Plan, Error> {
        Plan::build_with(recipe, registry, opts, &Opened::default())
    }

    /// As [`Plan::build`], taking the checkpoints from `opened` where it holds them and
    /// keeping there those it opens: plans of one recipe at several settings (a sweep's
    /// points) share their inputs, opened once.
    pub fn build_with(
        recipe: &Recipe,
        registry: &Registry,
        opts: &PlanOptions,
        opened: &Opened,
    ) -> Result<Plan, Error> {
        let point = |e| frontend::point_into_recipe(recipe, e);
        let (data, inputs, warnings) =
            frontend::plan_and_warn(recipe, registry, opts, opened).map_err(point)?;
        let mut plan = Plan::with_inputs(data, inputs, registry).map_err(point)?;
        plan.warnings = recipe.warnings.iter().cloned().chain(warnings).collect();
        Ok(plan)
    }

    /// Readies a plan read back from JSON: opens every input, refuses one whose files
    /// are not those the plan was made from, binds every operator by name from
    /// `registry` and checks every argument and tensor.
    pub fn load(data: MergePlan, registry: &Registry) -> Result<Plan, Error> {
        // Before any file is opened: the inputs' indices are trusted below.
        data.validate().map_err(ErrorKind::Plan)?;
        let mut inputs = Vec::with_capacity(data.inputs.len());
        for input in &data.inputs {
            let path = PathBuf::from(&input.path);
            let c = Checkpoint::open(&path).map_err(|source| ErrorKind::Checkpoint {
                role: format!("{} ({})", input.role, input.path),
                source,
            })?;
            verify(input, &c)?;
            inputs.push(Arc::new(c));
        }
        Plan::ready(data, inputs, registry)
    }

    /// Readies `data` over checkpoints already opened, parallel to `data.inputs` (as
    /// the recipe front-end returns them).
    pub fn with_inputs(
        data: MergePlan,
        inputs: Vec<Arc<Checkpoint>>,
        registry: &Registry,
    ) -> Result<Plan, Error> {
        data.validate().map_err(ErrorKind::Plan)?;
        assert_eq!(inputs.len(), data.inputs.len(), "one checkpoint per input");
        Plan::ready(data, inputs, registry)
    }

    /// Readies a validated plan over its opened inputs.
    fn ready(
        data: MergePlan,
        inputs: Vec<Arc<Checkpoint>>,
        registry: &Registry,
    ) -> Result<Plan, Error> {
        let dtypes = crate::dtypes_of(&data)?;
        let (shards, names) = crate::shards_of(&data, &dtypes);
        if data.tensors.iter().zip(&shards).any(|(t, &s)| t.shard != s)
            || names != data.output.shards
        {
            return Err(
                ErrorKind::Plan(reefknot_plan::PlanError::Inconsistent(format!(
                    "the shards do not follow from the shard size {} (lay the output out again)",
                    data.output.shard_size
                )))
                .into(),
            );
        }
        let mut binder = Binder {
            registry,
            inputs: &inputs,
            data: &data,
            specs: BTreeMap::new(),
        };
        let mut jobs = Vec::with_capacity(data.tensors.len());
        let mut needs_fisher_means = false;
        for (t, &dtype) in data.tensors.iter().zip(&dtypes) {
            let job = binder.job(t, dtype)?;
            if let Job::Merge(m) = &job {
                needs_fisher_means |= m
                    .stages
                    .iter()
                    .any(|s| s.operator.needs_fisher_means(&s.args));
            }
            jobs.push(job);
        }
        // Every operator is loaded (the jobs bound): each plugin must be the build the
        // plan was made with.
        for used in &data.plugins {
            let loaded = used
                .operators
                .iter()
                .find_map(|op| registry.provider(op))
                .filter(|p| p.name == used.name);
            if let Some(p) = loaded {
                if p.sha256 != used.sha256 {
                    return Err(ErrorKind::PluginChanged {
                        name: used.name.clone(),
                        planned: format!("{} {}", used.library, used.version),
                        planned_sha256: used.sha256.clone(),
                        loaded: format!("{} {}", p.path.display(), p.version),
                        loaded_sha256: p.sha256.clone(),
                    }
                    .into());
                }
            }
        }
        Ok(Plan {
            data,
            inputs,
            jobs,
            dtypes,
            needs_fisher_means,
            warnings: Vec::new(),
        })
    }

    /// `  lora PATH (N tensors)` for the adapter applied to model `model` (the base
    /// when `None`); empty without one.
    fn lora_note(&self, model: Option<usize>) -> String {
        let Some(input) = self.input_of(Role::Lora { model }) else {
            return String::new();
        };
        let updated: BTreeSet<&str> = self
            .data
            .tensors
            .iter()
            .flat_map(|t| match &t.producer {
                Producer::Copy { from, .. } => vec![from],
                Producer::Pipeline(p) => std::iter::once(&p.base).chain(&p.models).collect(),
            })
            .filter(|r| r.lora.as_ref().is_some_and(|l| l.input == input))
            .map(|r| r.tensor.as_str())
            .collect();
        format!(
            "  lora {} ({} updated)",
            self.inputs[input].path().display(),
            counted(updated.len(), "tensor")
        )
    }

    /// What in the recipe had no effect on this model (an override that selects no
    /// tensor, a layer range beyond the model, a `params` entry no expression reads),
    /// when the plan was made from a recipe ([`Plan::build`]).
    pub fn warnings(&self) -> &[RecipeWarning] {
        &self.warnings
    }

    /// The plan as data.
    pub fn data(&self) -> &MergePlan {
        &self.data
    }

    /// The opened inputs, parallel to `data().inputs`.
    pub fn inputs(&self) -> &[Arc<Checkpoint>] {
        &self.inputs
    }

    /// What to do for each output tensor, parallel to `data().tensors`.
    pub fn jobs(&self) -> &[Job] {
        &self.jobs
    }

    /// Each output tensor's dtype.
    pub fn dtypes(&self) -> &[Dtype] {
        &self.dtypes
    }

    /// Whether some stage needs each model's Fisher mean over the whole model.
    pub fn needs_fisher_means(&self) -> bool {
        self.needs_fisher_means
    }

    /// The input of `role`, if the plan has one.
    pub fn input_of(&self, role: Role) -> Option<usize> {
        self.data.inputs.iter().position(|i| i.role == role)
    }

    /// Every input path (the files opened and their folders): the output must not
    /// touch them.
    pub fn input_paths(&self) -> Vec<PathBuf> {
        let mut v = Vec::new();
        for c in &self.inputs {
            v.push(c.path().to_path_buf());
            v.extend(c.folder().map(|f| f.to_path_buf()));
            v.extend(c.index().map(|f| f.to_path_buf()));
            v.extend(c.files().iter().cloned());
        }
        v
    }

    /// Total number of elements of the output.
    pub fn total_elements(&self) -> u64 {
        self.data.total_elements()
    }

    /// A human summary: inputs, output, and each distinct resolved pipeline with the
    /// tensors that get it (what `reefknot check` prints).
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let d = &self.data;
        for (input, c) in d.inputs.iter().zip(&self.inputs) {
            match input.role {
                Role::Base => {
                    let params: u64 = c.tensors().iter().map(|t| t.numel() as u64).sum();
                    let _ = write!(
                        out,
                        "base     {} ({} tensors, {} parameters)",
                        c.path().display(),
                        c.tensors().len(),
                        human_count(params)
                    );
                    out.push_str(&self.lora_note(None));
                    out.push('\n');
                }
                Role::Model { model } => {
                    let _ = write!(out, "model {}  {}", model + 1, c.path().display());
                    let mut weights = self.jobs.iter().filter_map(|j| match j {
                        Job::Merge(m) => m.weights.get(model).copied(),
                        Job::Copy { .. } => None,
                    });
                    if let Some(first) = weights.next() {
                        if weights.all(|w| w == first) {
                            let _ = write!(out, "  weight {first}");
                        } else {
                            let _ = write!(out, "  weight varies over depth");
                        }
                    }
                    if let Some(f) = self.input_of(Role::Fisher { model }) {
                        let _ = write!(out, "  fisher {}", self.inputs[f].path().display());
                    }
                    out.push_str(&self.lora_note(Some(model)));
                    out.push('\n');
                }
                Role::Fisher { .. } | Role::Lora { .. } => {}
            }
        }
        let layers = d
            .tensors
            .iter()
            .filter_map(|t| t.layer)
            .max()
            .map_or(0, |m| m + 1);
        let _ = writeln!(
            out,
            "output   {}, seed {}, {} layers",
            d.output.dtype.as_deref().unwrap_or("the base's dtypes"),
            d.seed,
            layers
        );

        if let Some(v) = &d.vocabulary {
            let permuted = self
                .jobs
                .iter()
                .filter(|j| match j {
                    Job::Copy { from, .. } => from.permuted,
                    Job::Merge(m) => m.base.permuted,
                })
                .count();
            match v.padded_from {
                Some(tokens) => {
                    let _ = write!(out, "vocabulary {tokens} tokens, padded to {} rows", v.size);
                }
                None => {
                    let _ = write!(out, "vocabulary {} tokens", v.size);
                }
            }
            if let Some(t) = &d.output.tokenizer {
                let from = match d.inputs[t.from].role {
                    Role::Base => "the base model's".to_string(),
                    role => format!("{role}'s"),
                };
                let _ = write!(out, ": {from} tokenizer");
                if !t.added.is_empty() {
                    let _ = write!(out, " and {} it lacks", counted(t.added.len(), "token"));
                }
            }
            let _ = writeln!(
                out,
                "; {} permuted into it, {} filled",
                counted(permuted, "vocabulary tensor"),
                counted(v.fill.len(), "row")
            );
        }

        for p in &d.plugins {
            let _ = writeln!(
                out,
                "plugin   {}{} from {} (sha256 {}): {}",
                p.name,
                if p.version.is_empty() {
                    String::new()
                } else {
                    format!(" {}", p.version)
                },
                p.library,
                p.sha256,
                p.operators.join(", ")
            );
        }

        if let Some(t) = &d.output.chat_template {
            let _ = writeln!(
                out,
                "chat     the recipe's template ({} lines), written as chat_template.jinja",
                t.lines().count()
            );
        }

        // Group tensors by expression and resolved stages, copies by source and scale.
        let mut groups: BTreeMap<(usize, String), Vec<&str>> = BTreeMap::new();
        let mut copied: BTreeMap<(usize, String), Vec<&str>> = BTreeMap::new();
        for (t, job) in d.tensors.iter().zip(&self.jobs) {
            match (&t.producer, job) {
                (Producer::Pipeline(p), Job::Merge(m)) => {
                    let mut key = describe_stages(&m.stages);
                    if m.weights.iter().any(|&w| w != 1.0) {
                        let _ = write!(key, "   weights {:?}", m.weights);
                    }
                    groups.entry((p.expression, key)).or_default().push(&t.name);
                }
                (_, Job::Copy { from, scale, .. }) => {
                    let mut scaled = if *scale == 1.0 {
                        String::new()
                    } else {
                        format!(", scaled by {scale}")
                    };
                    if from.lora.is_some() {
                        scaled.push_str(", with its LoRA update");
                    }
                    if from.permuted {
                        scaled.push_str(", permuted into the output's vocabulary");
                    }
                    copied.entry((from.at.0, scaled)).or_default().push(&t.name);
                }
                _ => unreachable!("a readied plan's jobs follow its producers"),
            }
        }
        let mut last = usize::MAX;
        for ((expression, key), names) in &groups {
            if *expression != last {
                let e = &d.expressions[*expression];
                let _ = writeln!(out, "\n{}: {}", e.label, e.text);
                last = *expression;
            }
            let _ = writeln!(out, "  {key}");
            let _ = writeln!(out, "    {}", list_names(names));
        }
        let f64_merged = self
            .jobs
            .iter()
            .filter(|j| {
                let f64 = |o: &Operand| self.inputs[o.at.0].tensors()[o.at.1].dtype == Dtype::F64;
                match j {
                    // Any F64 input of a merged tensor is read at f32 precision.
                    Job::Merge(m) => f64(&m.base) || m.models.iter().any(f64),
                    Job::Copy { .. } => false,
                }
            })
            .count();
        if f64_merged > 0 {
            let _ = writeln!(
                out,
                "\n{f64_merged} F64 tensor{} merged at f32 precision: values are rounded to f32 \
                 when read (the merge computes in f32)",
                if f64_merged == 1 { " is" } else { "s are" }
            );
        }
        for ((input, scaled), names) in &copied {
            let what = if *input == 0
                && scaled.is_empty()
                && names.iter().all(|n| {
                    self.inputs[0]
                        .get(n)
                        .is_some_and(|info| !info.dtype.is_computable())
                }) {
                " (not floating point)"
            } else {
                ""
            };
            let from = match d.inputs[*input].role {
                Role::Base => "the base model".to_string(),
                role => role.to_string(),
            };
            let _ = writeln!(out, "\ncopied from {from}{scaled}{what}:");
            let _ = writeln!(out, "    {}", list_names(names));
        }
        out
    }
}

fn plan_err(tensor: &str, message: String) -> Error {
    ErrorKind::PlanTensor {
        tensor: tensor.to_string(),
        message,
    }
    .into()
}

/// Refuses an input whose files are not those the plan was made from.
fn verify(input: &data::Input, c: &Checkpoint) -> Result<(), Error> {
    let changed = |file: &str, what: String| -> Error {
        ErrorKind::InputChanged {
            role: input.role.to_string(),
            path: input.path.clone(),
            file: file.to_string(),
            what,
        }
        .into()
    };
    let now: Vec<(String, &reefknot_io::FileStamp)> = c
        .files()
        .iter()
        .map(|f| frontend::file_name_in(c, f))
        .zip(c.stamps())
        .collect();
    if now.len() != input.files.len()
        || now.iter().zip(&input.files).any(|((n, _), f)| *n != f.name)
    {
        let names: Vec<&str> = now.iter().map(|(n, _)| n.as_str()).collect();
        let was: Vec<&str> = input.files.iter().map(|f| f.name.as_str()).collect();
        return Err(changed(
            "",
            format!("its weight files are now {names:?}, the plan's were {was:?}"),
        ));
    }
    for ((name, stamp), f) in now.iter().zip(&input.files) {
        if stamp.size != f.size {
            return Err(changed(
                name,
                format!(
                    "its size is {} bytes, the plan's was {}",
                    stamp.size, f.size
                ),
            ));
        }
        if stamp.header_hex() != f.header_sha256 {
            return Err(changed(
                name,
                "its header (tensor names, shapes, dtypes or offsets) is not the plan's".into(),
            ));
        }
        if stamp.modified != f.modified_ns {
            return Err(changed(
                name,
                "it was modified after the plan was made".into(),
            ));
        }
    }
    Ok(())
}

/// Binds a plan's producers to opened inputs and registered operators.
struct Binder<'a> {
    registry: &'a Registry,
    inputs: &'a [Arc<Checkpoint>],
    data: &'a MergePlan,
    specs: BTreeMap<String, (Arc<dyn Operator>, &'static OpSpec)>,
}

impl Binder<'_> {
    fn locate(&self, r: &data::TensorRef, what: &str, out: &str) -> Result<Located, Error> {
        let c = &self.inputs[r.input];
        c.position(&r.tensor).map(|i| (r.input, i)).ok_or_else(|| {
            let role = self.data.inputs[r.input].role;
            if r.tensor == out {
                ErrorKind::MissingTensor {
                    tensor: r.tensor.clone(),
                    model: self.who(r.input),
                }
                .into()
            } else {
                plan_err(
                    out,
                    format!(
                        "its {what}, tensor `{}` of the {role}, does not exist",
                        r.tensor
                    ),
                )
            }
        })
    }

    /// [`Binder::locate`], with the adapter's factors located and checked against the
    /// tensor's shape.
    fn operand(
        &self,
        r: &data::TensorRef,
        what: &str,
        out: &str,
    ) -> Result<(Operand, reefknot_io::TensorInfo), Error> {
        let at = self.locate(r, what, out)?;
        let mut seen = self.info(at).clone();
        if r.vocabulary {
            seen.shape = self.permuted_shape(r, at, what, out)?;
        }
        let Some(u) = &r.lora else {
            return Ok((
                Operand {
                    at,
                    lora: None,
                    permuted: r.vocabulary,
                },
                seen,
            ));
        };
        if r.vocabulary {
            return Err(plan_err(
                out,
                format!("its {what} has a LoRA update and is permuted: not supported"),
            ));
        }
        let info = self.info(at);
        let adapter = &self.inputs[u.input];
        let factor = |name: &str| {
            adapter.position(name).map(|i| (u.input, i)).ok_or_else(|| {
                plan_err(
                    out,
                    format!(
                        "its {what}'s LoRA factor `{name}` is not in the {}",
                        self.data.inputs[u.input].role
                    ),
                )
            })
        };
        let (a, b) = (factor(&u.a)?, factor(&u.b)?);
        let (ai, bi) = (self.info(a), self.info(b));
        let (rows, cols) = match info.shape[..] {
            [rows, cols] if rows > 0 && cols > 0 => (rows, cols),
            _ => {
                return Err(plan_err(
                    out,
                    format!(
                        "an adapter updates `{}`, of shape {:?}: only non-empty matrices take \
                         LoRA updates",
                        info.name, info.shape
                    ),
                ))
            }
        };
        let (a_rows, b_rows) = if u.transposed {
            (rows, cols)
        } else {
            (cols, rows)
        };
        let rank = ai.shape.first().copied().unwrap_or(0);
        let floats = [info, ai, bi].iter().all(|t| t.dtype.is_computable());
        if !floats || ai.shape != [rank, a_rows] || bi.shape != [b_rows, rank] {
            return Err(plan_err(
                out,
                format!(
                    "`{}` is {} {:?}, but its LoRA factors are A {} {:?} and B {} {:?} \
                     (expected floats A [r, {a_rows}] and B [{b_rows}, r]{})",
                    info.name,
                    info.dtype.safetensors_name(),
                    info.shape,
                    ai.dtype.safetensors_name(),
                    ai.shape,
                    bi.dtype.safetensors_name(),
                    bi.shape,
                    if u.transposed {
                        ", the update transposed"
                    } else {
                        ""
                    }
                ),
            ));
        }
        Ok((
            Operand {
                at,
                lora: Some(Lora {
                    a,
                    b,
                    scale: u.scale,
                    transposed: u.transposed,
                }),
                permuted: false,
            },
            seen,
        ))
    }

    /// The shape of a vocabulary tensor permuted into the output's vocabulary, after
    /// checking that the rows it reads exist: its own, and those its missing rows are
    /// filled from.
    fn permuted_shape(
        &self,
        r: &data::TensorRef,
        at: Located,
        what: &str,
        out: &str,
    ) -> Result<Vec<usize>, Error> {
        let v = self
            .data
            .vocabulary
            .as_ref()
            .expect("validated: a vocabulary maps it");
        let info = self.info(at);
        let bad = |m: String| Err(plan_err(out, format!("its {what}, permuted: {m}")));
        let [rows, cols] = info.shape[..] else {
            return bad(format!("`{}` is not a matrix", info.name));
        };
        if !info.dtype.is_computable() {
            return bad(format!("`{}` is not a float", info.name));
        }
        if v.rows[&r.input]
            .iter()
            .any(|&[_, row, n]| row.checked_add(n).is_none_or(|e| e > rows))
        {
            return bad(format!("the vocabulary reads beyond its {rows} rows"));
        }
        for sources in v.fill.values() {
            for &[input, row] in sources {
                let fits = self.inputs[input].get(&r.tensor).is_some_and(|t| {
                    t.dtype.is_computable()
                        && t.shape.len() == 2
                        && t.shape[1] == cols
                        && row < t.shape[0]
                });
                if !fits {
                    return bad(format!(
                        "a row it is filled from, row {row} of `{}` of the {}, is not a float \
                         row of {cols} values",
                        r.tensor, self.data.inputs[input].role
                    ));
                }
            }
        }
        Ok(vec![v.size, cols])
    }

    fn info(&self, l: Located) -> &reefknot_io::TensorInfo {
        &self.inputs[l.0].tensors()[l.1]
    }

    fn who(&self, input: usize) -> String {
        let role = self.data.inputs[input].role;
        match role {
            Role::Model { model } => frontend::model_label(model, self.inputs[input].path()),
            _ => format!("{role} ({})", self.inputs[input].path().display()),
        }
    }

    fn operator(&mut self, op: &str) -> Result<(Arc<dyn Operator>, &'static OpSpec), Error> {
        if let Some(found) = self.specs.get(op) {
            return Ok(found.clone());
        }
        let entry = self
            .registry
            .get(op)
            .and_then(|e| e.operator.clone().map(|o| (o, e.spec)))
            .ok_or_else(|| ErrorKind::UnknownPlanOperator { op: op.to_string() })?;
        self.specs.insert(op.to_string(), entry.clone());
        Ok(entry)
    }

    fn job(&mut self, t: &data::OutputTensor, dtype: Dtype) -> Result<Job, Error> {
        match &t.producer {
            Producer::Copy { from, scale } => {
                let (from, info) = self.operand(from, "source", &t.name)?;
                let info = &info;
                if info.shape != t.shape {
                    return Err(plan_err(
                        &t.name,
                        format!(
                            "it has shape {:?} but copies `{}`, of shape {:?}",
                            t.shape, info.name, info.shape
                        ),
                    ));
                }
                let convert =
                    info.dtype != dtype || *scale != 1.0 || from.lora.is_some() || from.permuted;
                if convert && !(info.dtype.is_computable() && dtype.is_computable()) {
                    let what = if info.dtype == dtype {
                        "only floats scale"
                    } else {
                        "only floats convert"
                    };
                    return Err(plan_err(
                        &t.name,
                        format!(
                            "it is {} but copies `{}`, which is {}: {what}",
                            t.dtype,
                            info.name,
                            info.dtype.safetensors_name()
                        ),
                    ));
                }
                Ok(Job::Copy {
                    from,
                    convert,
                    scale: *scale,
                })
            }
            Producer::Pipeline(p) => self.pipeline(t, p, dtype).map(Job::Merge),
        }
    }

    fn pipeline(
        &mut self,
        t: &data::OutputTensor,
        p: &data::Pipeline,
        dtype: Dtype,
    ) -> Result<MergeJob, Error> {
        if !dtype.is_computable() {
            return Err(plan_err(
                &t.name,
                format!("a merged tensor is written as a float, not {}", t.dtype),
            ));
        }
        let (base, base_info) = self.operand(&p.base, "base", &t.name)?;
        if base_info.shape != t.shape || !base_info.dtype.is_computable() {
            return Err(plan_err(
                &t.name,
                format!(
                    "its base tensor `{}` is {} {:?}, not a float of shape {:?}",
                    base_info.name,
                    base_info.dtype.safetensors_name(),
                    base_info.shape,
                    t.shape
                ),
            ));
        }
        let mut models = Vec::with_capacity(p.models.len());
        for r in &p.models {
            let (o, info) = self.operand(r, "model tensor", &t.name)?;
            check_compatible(&base_info, &info, &self.who(r.input))?;
            models.push(o);
        }
        let fisher = match &p.fisher {
            None => None,
            Some(refs) => {
                let mut v = Vec::with_capacity(refs.len());
                for (r, m) in refs.iter().zip(&p.models) {
                    let fisher = &self.inputs[r.input];
                    let at = check_fisher(fisher, &r.tensor, &t.shape, &self.who(m.input))?;
                    v.push((r.input, at));
                }
                Some(v)
            }
        };

        let mut stages = Vec::with_capacity(p.stages.len());
        let mut flowing = Ty::Stack;
        for s in &p.stages {
            let (operator, spec) = self.operator(&s.op)?;
            let signature = Signature::new(ty(s.input), ty(s.output));
            let stage_err = |message: String| -> Error {
                ErrorKind::PlanStage {
                    tensor: t.name.clone(),
                    op: s.op.clone(),
                    message,
                }
                .into()
            };
            if signature.input != flowing {
                return Err(stage_err(format!(
                    "it takes {} but the stage before hands on {flowing}",
                    signature.input
                )));
            }
            if !spec.signatures.contains(&signature) {
                return Err(stage_err(format!(
                    "it has no signature {signature} (it has {})",
                    spec.signature_list()
                )));
            }
            if !spec.models.admits(p.models.len()) {
                return Err(stage_err(format!(
                    "it takes {}, and the pipeline has {}",
                    spec.models,
                    p.models.len()
                )));
            }
            flowing = signature.output;
            let args = bind_args(spec, s, p.models.len()).map_err(stage_err)?;
            let ctx = BindCtx {
                tensor: &t.name,
                shape: &t.shape,
                numel: t.numel(),
                layer: t.layer,
                models: p.models.len(),
                seed: self.data.seed,
                signature,
                fisher_means: None,
            };
            operator
                .check(&args, &ctx)
                .map_err(|error| ErrorKind::Operator {
                    tensor: t.name.clone(),
                    error,
                })?;
            if operator.needs_fisher(&args) && fisher.is_none() {
                return Err(stage_err(
                    "it reads Fisher values, but the pipeline has none".into(),
                ));
            }
            stages.push(Stage {
                op: s.op.clone(),
                operator,
                signature,
                args,
            });
        }
        if flowing != Ty::Delta {
            return Err(plan_err(
                &t.name,
                format!("its pipeline ends with {flowing}, not a merged Delta"),
            ));
        }
        Ok(MergeJob {
            base,
            models,
            fisher,
            stages,
            weights: p.weights.clone(),
        })
    }
}

fn ty(f: data::Flow) -> Ty {
    match f {
        data::Flow::Stack => Ty::Stack,
        data::Flow::Voted => Ty::Voted,
        data::Flow::Delta => Ty::Delta,
    }
}

/// A stage's arguments from the plan, bound to the operator's parameters in order and
/// checked against their kinds and ranges.
fn bind_args(spec: &'static OpSpec, stage: &data::Stage, models: usize) -> Result<Args, String> {
    if let Some(a) = stage.args.iter().find(|a| spec.param(&a.name).is_none()) {
        return Err(format!("it has no parameter `{}`", a.name));
    }
    let mut values = Vec::with_capacity(spec.params.len());
    for param in spec.params {
        let Some(arg) = stage.args.iter().find(|a| a.name == param.name) else {
            return Err(format!("the plan gives no value for `{}`", param.name));
        };
        let wrong = || {
            format!(
                "`{}` = {:?} is not {}",
                param.name,
                arg.value,
                param.kind.describe()
            )
        };
        let value = match (&arg.value, &param.kind) {
            (data::Value::Number(xs), ParamKind::Number { .. }) => {
                let counts =
                    xs.len() == 1 || (xs.len() == models && stage.input != data::Flow::Delta);
                if !counts || xs.iter().any(|&x| !param.kind.admits(x)) {
                    return Err(wrong());
                }
                Value::Number(xs.clone())
            }
            (data::Value::Choice(c), ParamKind::Choice(options)) => {
                match options.iter().find(|o| **o == c.as_str()) {
                    Some(o) => Value::Choice(o),
                    None => return Err(wrong()),
                }
            }
            (data::Value::Bool(b), ParamKind::Bool) => Value::Bool(*b),
            (data::Value::Text(s), ParamKind::Text) => Value::Text(s.clone()),
            _ => return Err(wrong()),
        };
        values.push((param.name, value));
    }
    Ok(Args::new(values))
}

/// `1 row`, `2 rows`.
fn counted(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// A count for people: `542.15 M`, `16.4 K`, `12`.
pub fn human_count(n: u64) -> String {
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

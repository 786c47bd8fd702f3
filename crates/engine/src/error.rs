//! Everything that can stop a merge, with the context to act on it.

use std::path::PathBuf;

use miette::Diagnostic;

/// Why a plan could not be built or a merge could not finish.
///
/// A box around [`ErrorKind`], so that results stay small on the hot paths.
/// [`Error::exit_code`] sorts errors into the CLI's classes: 2 for a problem with the
/// recipe or the command line, 1 for a merge that failed on its inputs or its output.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[error(transparent)]
#[diagnostic(transparent)]
pub struct Error(Box<ErrorKind>);

impl Error {
    /// What went wrong.
    pub fn kind(&self) -> &ErrorKind {
        &self.0
    }

    pub(crate) fn kind_mut(&mut self) -> &mut ErrorKind {
        &mut self.0
    }

    pub(crate) fn into_kind(self) -> Box<ErrorKind> {
        self.0
    }

    /// The CLI exit code: 2 for recipe and usage errors, 1 for failed merges.
    pub fn exit_code(&self) -> i32 {
        self.0.exit_code()
    }
}

impl<E: Into<ErrorKind>> From<E> for Error {
    fn from(e: E) -> Self {
        Error(Box::new(e.into()))
    }
}

/// Every way a plan or a merge can fail.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum ErrorKind {
    /// The recipe file is invalid.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Recipe(#[from] reefknot_recipe::RecipeError),

    /// A merge expression is invalid.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Lang(#[from] reefknot_lang::LangError),

    /// An error caused by a line of the recipe (a model's path, say), shown there.
    #[error(transparent)]
    #[diagnostic(transparent)]
    InRecipe(InRecipe),

    /// A model named by Hugging Face repo id is neither a local folder nor in the cache.
    #[error(
        "`{repo}` is not a folder here ({}) and revision `{revision}` is not in the Hugging Face cache ({})",
        .local.display(), .looked.display()
    )]
    #[diagnostic(help(
        "download it first (`huggingface-cli download {repo}`), or set HF_HUB_CACHE or HF_HOME \
         to the cache that holds it; reefknot reads the cache offline"
    ))]
    NotInCache {
        /// `org/name`.
        repo: String,
        /// The revision asked for (`main` by default).
        revision: String,
        /// The local path it was also taken as.
        local: PathBuf,
        /// The repo's folder in the cache.
        looked: PathBuf,
    },

    /// A checkpoint could not be read.
    #[error("cannot read the {role}")]
    Checkpoint {
        /// Which input: `base model`, `model 2 (models/math)`, `Fisher of model 1`.
        role: String,
        /// What went wrong.
        #[source]
        source: reefknot_io::IoError,
    },

    /// A LoRA adapter cannot be applied to its model.
    #[error("cannot apply the {adapter}: {message}")]
    #[diagnostic(help(
        "reefknot applies PEFT LoRA adapters (adapter_config.json and \
         adapter_model.safetensors) made for this model"
    ))]
    Adapter {
        /// Which adapter: `LoRA adapter of model 2 (path)`.
        adapter: String,
        /// What is wrong with it.
        message: String,
    },

    /// `chat_template:` names no template.
    #[error("`chat_template`: {message}")]
    #[diagnostic(help(
        "`auto` takes the most common template among the inputs; `alpaca`, `chatml`, `llama3` \
         and `mistral` are built in; anything else is the Jinja template itself"
    ))]
    ChatTemplate {
        /// Why.
        message: String,
    },

    /// The output vocabulary cannot be built.
    #[error("cannot build the output's vocabulary: {message}")]
    #[diagnostic(help(
        "`tokenizer:` reads each input's tokenizer.json (and the vocab_size of its \
         config.json)"
    ))]
    Vocabulary {
        /// Why.
        message: String,
    },

    /// A slice takes layers its input does not have.
    #[error("slice {slice} takes layers {start}..{end}, but the {input} has {layers} layers")]
    #[diagnostic(help(
        "a slice's `layers` are input layers, a half-open range within 0..{layers}"
    ))]
    SliceBeyond {
        /// The slice, from 1.
        slice: usize,
        /// The input it reads: `base model (path)`, `model 2 (path)`.
        input: String,
        /// Its first layer.
        start: usize,
        /// One past its last.
        end: usize,
        /// The input's layer count.
        layers: usize,
    },

    /// A base tensor is absent from a model.
    #[error("tensor `{tensor}` of the base is missing from {model}")]
    #[diagnostic(help(
        "every fine-tune must have every tensor of the base, with the same shape; \
         is this a fine-tune of a different architecture?"
    ))]
    MissingTensor {
        /// The tensor.
        tensor: String,
        /// The model that lacks it.
        model: String,
    },

    /// A model's tensor has another shape than the base's.
    #[error("tensor `{tensor}` has shape {found:?} in {model} but {expected:?} in the base")]
    ShapeMismatch {
        /// The tensor.
        tensor: String,
        /// The model.
        model: String,
        /// The base's shape.
        expected: Vec<usize>,
        /// The model's shape.
        found: Vec<usize>,
    },

    /// A tensor is a float in the base but not in a model (or the reverse).
    #[error("tensor `{tensor}` is {found} in {model} but {expected} in the base")]
    #[diagnostic(help("floating-point tensors (F32, F16, BF16, F64) are merged; others are copied from the base and must have the same dtype everywhere"))]
    DtypeMismatch {
        /// The tensor.
        tensor: String,
        /// The model.
        model: String,
        /// The base's dtype.
        expected: String,
        /// The model's dtype.
        found: String,
    },

    /// A `$variable` has no value for some tensor and model.
    #[error("variable `${name}` is not defined for {model} (tensor `{tensor}`, expression `{expression}`)")]
    #[diagnostic(help(
        "give it a value in the recipe's `params:`, in the model's `params:`, in the `params:` of an override that matches this tensor, or on the command line with `--set NAME=VALUE`"
    ))]
    UndefinedVariable {
        /// The variable, without `$`.
        name: String,
        /// The model the value was looked up for.
        model: String,
        /// The tensor.
        tensor: String,
        /// The expression that reads it.
        expression: String,
    },

    /// A `$variable` set from outside the recipe (`--set`) that no expression reads.
    #[error("--set {name}: no expression of the recipe reads `${name}`")]
    #[diagnostic(help("{}", if read.is_empty() {
        "the recipe's expressions read no variables".to_string()
    } else {
        format!("its expressions read {}", read.join(", "))
    }))]
    UnreadSet {
        /// The variable, without `$`.
        name: String,
        /// The variables the expressions read, with `$`.
        read: Vec<String>,
    },

    /// A resolved argument is outside what the operator accepts.
    #[error("`{op}` parameter `{param}` = {value} is out of range for tensor `{tensor}`{from}: expected {expected}")]
    OutOfRange {
        /// The operator.
        op: String,
        /// The parameter.
        param: String,
        /// The value.
        value: f64,
        /// Where the value came from (` (from $density of model 2)`), or empty.
        from: String,
        /// The tensor.
        tensor: String,
        /// The accepted range.
        expected: String,
    },

    /// A `$variable` resolved to a value of the wrong kind.
    #[error("variable `${name}` is {found} but `{op}` parameter `{param}` needs {expected}")]
    VariableKind {
        /// The variable.
        name: String,
        /// The operator.
        op: String,
        /// The parameter.
        param: String,
        /// What it holds.
        found: String,
        /// What the parameter accepts.
        expected: String,
    },

    /// A per-model value reached an operator acting on the merged delta.
    #[error(
        "`{op}` acts on the merged delta, but `${name}` differs between models (tensor `{tensor}`)"
    )]
    #[diagnostic(help("per-model values only make sense before the models are combined; set `{name}` in the recipe's `params:` instead"))]
    PerModelOnDelta {
        /// The operator.
        op: String,
        /// The variable.
        name: String,
        /// The tensor.
        tensor: String,
    },

    /// A stage reads Fisher information that a model does not provide.
    #[error("`{op}` needs each model's Fisher information, but {model} has no `fisher:` file")]
    #[diagnostic(help("add `fisher: path/to/fisher.safetensors` to the model in the recipe (a diagonal Fisher with the model's tensor names)"))]
    NoFisher {
        /// The operator.
        op: String,
        /// The model.
        model: String,
    },

    /// A Fisher file lacks a tensor or has the wrong shape for it.
    #[error("the Fisher file of {model} {problem} for tensor `{tensor}`")]
    FisherTensor {
        /// The model.
        model: String,
        /// The tensor.
        tensor: String,
        /// `has no entry` / `has shape [..] instead of [..]` / `is I64, not a float`.
        problem: String,
    },

    /// The requested output dtype cannot be written.
    #[error("cannot write the output as `{0}`")]
    #[diagnostic(help("merged tensors are written as bfloat16, float16 or float32"))]
    OutputDtype(String),

    /// An operator refused its arguments or failed while merging.
    #[error("{error} (tensor `{tensor}`)")]
    Operator {
        /// The tensor being merged.
        tensor: String,
        /// What the operator reported (part of the message, not a separate cause, so
        /// that it is printed once).
        error: reefknot_ops::OpError,
    },

    /// The output folder exists and `--force` was not given.
    #[error("the output folder {0} already exists")]
    #[diagnostic(help("choose another folder, or pass --force to replace it"))]
    OutputExists(PathBuf),

    /// The output would overwrite or contain an input.
    #[error("the output folder {output} would overwrite the input {input}")]
    #[diagnostic(help("write the merge to a new folder; reefknot never overwrites its inputs"))]
    OutputIsInput {
        /// The output folder.
        output: PathBuf,
        /// The input it collides with.
        input: PathBuf,
    },

    /// Another merge holds the output's lock.
    #[error("another merge is writing {}{}", .output.display(), .pid.map(|p| format!(" (process {p})")).unwrap_or_default())]
    #[diagnostic(help(
        "wait for it to finish, or choose another folder; the lock is {}, held only while that merge runs",
        .lock.display()
    ))]
    OutputBusy {
        /// The output folder.
        output: PathBuf,
        /// The lock file.
        lock: PathBuf,
        /// The process holding it, as it wrote in the lock file.
        pid: Option<u32>,
    },

    /// Something appeared at the output while the merge ran, and `--force` was not
    /// given: it is left as it is, and the merged model is discarded.
    #[error("{0} appeared while the merge ran; it was left untouched and the merge discarded")]
    #[diagnostic(help("merge again into another folder, or pass --force to replace it"))]
    OutputAppeared(PathBuf),

    /// Writing the output failed.
    #[error("cannot write the output in {path}")]
    Output {
        /// Where.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },

    /// Writing the output's tensors failed.
    #[error("cannot write the merged tensors")]
    Writer(#[source] reefknot_io::IoError),

    /// A plan read back does not hold together.
    #[error(transparent)]
    #[diagnostic(help("make the plan again: `reefknot check RECIPE --json > plan.json`"))]
    Plan(reefknot_plan::PlanError),

    /// A plan's output tensor cannot be made as the plan says.
    #[error("the plan cannot make tensor `{tensor}`: {message}")]
    PlanTensor {
        /// The tensor.
        tensor: String,
        /// What does not fit.
        message: String,
    },

    /// A stage of a plan does not fit its operator.
    #[error("the plan's stage `{op}` for tensor `{tensor}` does not fit the operator: {message}")]
    PlanStage {
        /// The tensor.
        tensor: String,
        /// The operator.
        op: String,
        /// What does not fit.
        message: String,
    },

    /// A plan names an operator that is not registered.
    #[error("the plan uses operator `{op}`, which is not loaded")]
    #[diagnostic(help(
        "an operator of a plugin needs the plugin: pass it with --plugin, or put it in REEFKNOT_PLUGIN_PATH"
    ))]
    UnknownPlanOperator {
        /// The operator's canonical name.
        op: String,
    },

    /// A plugin the plan uses is loaded from another build than the plan was made with.
    #[error(
        "the plugin `{name}` is not the build the plan was made with: the plan used {planned} \
         (sha256 {planned_sha256}), this run loaded {loaded} (sha256 {loaded_sha256})"
    )]
    #[diagnostic(help(
        "a plan runs only with the plugins it was made with; load that build, or make the plan again from the recipe"
    ))]
    PluginChanged {
        /// The plugin's name.
        name: String,
        /// The library and version the plan names.
        planned: String,
        /// Its SHA-256.
        planned_sha256: String,
        /// The library and version loaded now.
        loaded: String,
        /// Its SHA-256.
        loaded_sha256: String,
    },

    /// An input is not the file set the plan was made from.
    #[error("the {role} ({path}) changed since the plan was made: {}{what}", if file.is_empty() { String::new() } else { format!("`{file}`: ") })]
    #[diagnostic(help(
        "a plan runs only against the files it was made from; make the plan again from the recipe"
    ))]
    InputChanged {
        /// Which input.
        role: String,
        /// Its path.
        path: String,
        /// The file that differs (empty when the set of files differs).
        file: String,
        /// How it differs.
        what: String,
    },

    /// A NaN or an infinity in an input or a merged value (and `--allow-nonfinite` was
    /// not given).
    #[error("{}", nonfinite_message(tensor, *element, *value, at, input.as_deref()))]
    #[diagnostic(help(
        "reefknot does not merge NaN or infinite values: repair the input, change the \
         arguments that overflow or choose a wider --dtype; --allow-nonfinite writes them anyway"
    ))]
    NonFinite {
        /// The tensor.
        tensor: String,
        /// The element (flat index into the tensor).
        element: usize,
        /// The value found there (NaN, an infinity, or the finite value that overflows).
        value: f64,
        /// Where it was found.
        at: NonFiniteAt,
        /// The input it came from, when it came from one (its role and path).
        input: Option<String>,
    },

    /// The chunk size is out of range.
    #[error("a chunk of {0} elements is out of range: chunks are 1 to {max} elements", max = crate::MAX_CHUNK)]
    #[diagnostic(help("leave --chunk out: results do not depend on it"))]
    Chunk(usize),

    /// The thread pool could not be built.
    #[error("cannot start {threads} worker threads: {message}")]
    Threads {
        /// How many were asked for.
        threads: usize,
        /// The reason.
        message: String,
    },
}

/// An error with the place in the recipe that caused it: the error's message, help
/// and causes, and the recipe's line with a caret under `span`.
#[derive(Debug)]
pub struct InRecipe {
    error: Box<ErrorKind>,
    recipe: miette::NamedSource<std::sync::Arc<str>>,
    span: miette::SourceSpan,
    label: String,
}

impl InRecipe {
    /// `error`, pointed at `loc` of `recipe` with `label` under the caret.
    pub fn new(
        error: ErrorKind,
        recipe: &reefknot_recipe::Recipe,
        loc: reefknot_recipe::Loc,
        label: impl Into<String>,
    ) -> InRecipe {
        InRecipe {
            error: Box::new(error),
            recipe: recipe.named_source(),
            span: (loc.offset, loc.len).into(),
            label: label.into(),
        }
    }

    /// The error itself.
    pub fn error(&self) -> &ErrorKind {
        &self.error
    }
}

impl std::fmt::Display for InRecipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for InRecipe {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.source()
    }
}

impl Diagnostic for InRecipe {
    fn code<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        self.error.code()
    }

    fn help<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        self.error.help()
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        Some(&self.recipe)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = miette::LabeledSpan> + '_>> {
        Some(Box::new(std::iter::once(
            miette::LabeledSpan::new_primary_with_span(Some(self.label.clone()), self.span),
        )))
    }
}

/// Where a NaN or an infinity was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NonFiniteAt {
    /// In the base's values.
    Base,
    /// In model `i`'s values (from 0).
    Model(usize),
    /// In model `i`'s task vector only: its value minus the base's is beyond `f32`.
    TaskVector(usize),
    /// In model `i`'s Fisher values.
    Fisher(usize),
    /// Made by stage `number` (from 1), `stage` as resolved, from finite values.
    Stage {
        /// Its position in the pipeline, from 1.
        number: usize,
        /// The stage with its arguments, e.g. `scale(factor=1e30)`.
        stage: String,
    },
    /// In the sum `θ_base + Δ`.
    Sum,
    /// A finite merged value that the output dtype cannot hold (it would be written as
    /// an infinity).
    Overflow {
        /// The output dtype.
        dtype: reefknot_io::Dtype,
    },
    /// A finite value of a copied tensor that the output dtype cannot hold.
    Convert {
        /// The tensor's dtype.
        from: reefknot_io::Dtype,
        /// The output dtype.
        to: reefknot_io::Dtype,
    },
    /// A finite `F64` input value beyond the range of `f32`, which merges compute in
    /// (read as an infinity), at the input `0` says.
    BeyondF32(Box<NonFiniteAt>),
}

/// `value` as a message shows it: plainly, or in scientific notation when very large
/// or very small.
fn show(value: f64) -> String {
    if value.is_finite() && value != 0.0 && !(1e-6..1e16).contains(&value.abs()) {
        format!("{value:e}")
    } else {
        format!("{value}")
    }
}

fn nonfinite_message(
    tensor: &str,
    element: usize,
    value: f64,
    at: &NonFiniteAt,
    input: Option<&str>,
) -> String {
    let value = show(value);
    let from = |what: String| match input {
        Some(input) => format!("{what} ({input})"),
        None => what,
    };
    let place = format!("element {element} of `{tensor}`");
    // The input a value was read from, as the messages name it.
    let who = |at: &NonFiniteAt| match *at {
        NonFiniteAt::Base => "the base".to_string(),
        NonFiniteAt::Model(i) | NonFiniteAt::TaskVector(i) => format!("model {}", i + 1),
        NonFiniteAt::Fisher(i) => format!("the Fisher values of model {}", i + 1),
        _ => "an input".to_string(),
    };
    match at {
        NonFiniteAt::Base | NonFiniteAt::Model(_) => {
            format!("{} holds {value} at {place}", from(who(at)))
        }
        NonFiniteAt::TaskVector(_) => format!(
            "the task vector of {} is {value} at {place}: its value minus the base's is beyond f32",
            from(who(at))
        ),
        NonFiniteAt::Fisher(_) => format!("{} hold {value} at {place}", from(who(at))),
        NonFiniteAt::Stage { number, stage } => format!(
            "stage {number} of the pipeline (`{stage}`) made {value} at {place} from finite values"
        ),
        NonFiniteAt::Sum => {
            format!("adding the merged task vector to the base gives {value} at {place}")
        }
        NonFiniteAt::Overflow { dtype } => format!(
            "the merged value {value} at {place} is beyond the range of {dtype}: it would be \
             written as an infinity"
        ),
        NonFiniteAt::Convert { from, to } => format!(
            "the value {value} at {place} (copied, {from}) is beyond the range of {to}: it \
             would be written as an infinity"
        ),
        NonFiniteAt::BeyondF32(of) => format!(
            "{} holds {value} at {place}, beyond the range of f32, which merges compute in",
            from(who(of))
        ),
    }
}

impl ErrorKind {
    /// The CLI exit code: 2 for recipe and usage errors, 1 for failed merges.
    pub fn exit_code(&self) -> i32 {
        match self {
            ErrorKind::Recipe(_)
            | ErrorKind::Lang(_)
            | ErrorKind::UndefinedVariable { .. }
            | ErrorKind::UnreadSet { .. }
            | ErrorKind::OutOfRange { .. }
            | ErrorKind::VariableKind { .. }
            | ErrorKind::PerModelOnDelta { .. }
            | ErrorKind::NoFisher { .. }
            | ErrorKind::SliceBeyond { .. }
            | ErrorKind::ChatTemplate { .. }
            | ErrorKind::OutputDtype(_)
            | ErrorKind::OutputExists(_)
            | ErrorKind::OutputIsInput { .. }
            | ErrorKind::Threads { .. }
            | ErrorKind::Chunk(_)
            | ErrorKind::Plan(_)
            | ErrorKind::PlanTensor { .. }
            | ErrorKind::PlanStage { .. }
            | ErrorKind::UnknownPlanOperator { .. }
            | ErrorKind::PluginChanged { .. } => 2,
            ErrorKind::InRecipe(e) => e.error.exit_code(),
            ErrorKind::NotInCache { .. }
            | ErrorKind::Checkpoint { .. }
            | ErrorKind::Adapter { .. }
            | ErrorKind::Vocabulary { .. }
            | ErrorKind::MissingTensor { .. }
            | ErrorKind::ShapeMismatch { .. }
            | ErrorKind::DtypeMismatch { .. }
            | ErrorKind::FisherTensor { .. }
            | ErrorKind::Operator { .. }
            | ErrorKind::InputChanged { .. }
            | ErrorKind::Output { .. }
            | ErrorKind::OutputBusy { .. }
            | ErrorKind::OutputAppeared(_)
            | ErrorKind::NonFinite { .. }
            | ErrorKind::Writer(_) => 1,
        }
    }
}

//! `reefknot eval`: the held-out loss of a causal LM on token files or text.

use std::path::{Path, PathBuf};

use clap::Args as ClapArgs;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reefknot_eval::{Documents, EvalError, Model, Score};
use serde_json::{json, Value};

use crate::Failure;

/// The window when `--context` is not given (or the model's own, if shorter).
pub(crate) const DEFAULT_CONTEXT: usize = 1024;

#[derive(ClapArgs)]
pub(crate) struct EvalArgs {
    /// The model folder (config.json and safetensors): a Llama, Mistral, Qwen2 or
    /// GPT-2 causal LM, f32, bf16 or f16; or a Hugging Face repo id (`org/name`,
    /// `org/name@revision`) in the local cache.
    model: PathBuf,
    /// A data file: token ids (`.json`: an array, or an array of documents; `.jsonl`:
    /// one document per line, `{"text": …}` or `{"input_ids": […]}`), or text, which the
    /// model's tokenizer.json tokenizes. Repeat for several; the score is their mean.
    #[arg(long, value_name = "FILE", required = true)]
    data: Vec<PathBuf>,
    /// The evaluation window in tokens: each document is cut into consecutive windows
    /// of this many tokens (default: 1024, or the model's context if shorter).
    #[arg(long, value_name = "TOKENS")]
    context: Option<usize>,
    /// Print the figures as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

/// One data file's result.
pub(crate) struct FileScore {
    pub(crate) path: PathBuf,
    pub(crate) score: Score,
    pub(crate) tokenized: bool,
}

/// The loss of `model` on each of `data`, with a progress bar of tokens unless `quiet`.
pub(crate) fn score_files(
    model: &mut Model,
    data: &[PathBuf],
    context: usize,
    quiet: bool,
) -> Result<Vec<FileScore>, Failure> {
    let docs = read_data(model, data)?;
    score_documents(model, &docs, context, quiet)
}

/// The data files' tokens, text tokenized with `model`'s tokenizer.
pub(crate) fn read_data(model: &Model, data: &[PathBuf]) -> Result<Vec<Documents>, Failure> {
    data.iter()
        .map(|path| reefknot_eval::read_documents(path, model.dir()).map_err(failure))
        .collect()
}

/// The loss of `model` on each file's documents, with a progress bar of tokens unless
/// `quiet`; an id beyond the model's vocabulary is refused first.
pub(crate) fn score_documents(
    model: &mut Model,
    docs: &[Documents],
    context: usize,
    quiet: bool,
) -> Result<Vec<FileScore>, Failure> {
    for d in docs {
        d.check_vocab(model.vocab_size()).map_err(failure)?;
    }
    let total: usize = docs.iter().map(|d| d.tokens()).sum();
    let bar = token_bar(quiet, total);
    let mut scores = Vec::with_capacity(docs.len());
    let mut before = 0;
    for d in docs {
        let score = reefknot_eval::evaluate(model, d, context, &mut |done, _| {
            bar.set_position((before + done) as u64)
        })
        .map_err(failure)?;
        before += d.tokens();
        scores.push(FileScore {
            path: d.path.clone(),
            score,
            tokenized: d.tokenized,
        });
    }
    bar.finish_and_clear();
    Ok(scores)
}

/// The mean of the files' losses (each file counts once, whatever its length).
pub(crate) fn mean_loss(scores: &[FileScore]) -> f64 {
    scores.iter().map(|s| s.score.loss()).sum::<f64>() / scores.len() as f64
}

/// Loads a model for evaluation.
pub(crate) fn load(dir: &Path) -> Result<Model, Failure> {
    Model::load(dir).map_err(failure)
}

/// The window for `model`: `--context`, checked against the model, or the default.
pub(crate) fn context_for(model: &Model, context: Option<usize>) -> Result<usize, Failure> {
    match context {
        Some(n) if n < 2 || n > model.max_context() => Err(crate::usage(anyhow::anyhow!(
            "--context {n}: a window must hold 2 to {} tokens for this model",
            model.max_context()
        ))),
        Some(n) => Ok(n),
        None => Ok(DEFAULT_CONTEXT.min(model.max_context())),
    }
}

/// Input errors (the model's config, the data) exit 2; running errors exit 1.
pub(crate) fn failure(e: EvalError) -> Failure {
    let input = matches!(
        e,
        EvalError::Config { .. }
            | EvalError::Unsupported { .. }
            | EvalError::Data { .. }
            | EvalError::TokenOutOfRange { .. }
    );
    let error = anyhow::Error::new(e);
    if input {
        crate::usage(error)
    } else {
        Failure::from(error)
    }
}

fn token_bar(quiet: bool, total: usize) -> ProgressBar {
    let target = if quiet {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    };
    let pb = ProgressBar::with_draw_target(Some(total as u64), target);
    pb.set_style(
        ProgressStyle::with_template(
            "{spinner} evaluating [{bar:40}] {percent:>3}%  {human_pos}/{human_len} tokens  {per_sec}  (eta {eta})",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    pb
}

pub(crate) fn run(args: &EvalArgs, quiet: bool) -> Result<(), Failure> {
    if let Some(n) = args.threads {
        set_threads(n)?;
    }
    let start = std::time::Instant::now();
    let dir = reefknot_engine::locate_model(&args.model)?;
    let mut model = load(&dir)?;
    let loaded = start.elapsed().as_secs_f64();
    let context = context_for(&model, args.context)?;
    let start = std::time::Instant::now();
    let scores = score_files(&mut model, &args.data, context, quiet || args.json)?;
    let seconds = start.elapsed().as_secs_f64();
    let tokens: usize = scores.iter().map(|s| s.score.tokens).sum();
    if args.json {
        let files: Vec<Value> = scores
            .iter()
            .map(|s| {
                json!({
                    "file": s.path.display().to_string(),
                    "tokenized": s.tokenized,
                    "windows": s.score.windows,
                    "tokens": s.score.tokens,
                    "loss": s.score.loss(),
                    "perplexity": s.score.perplexity(),
                })
            })
            .collect();
        let json = json!({
            "model": args.model.display().to_string(),
            "family": model.family().name(),
            "parameters": model.parameters(),
            "context": context,
            "data": files,
            "mean_loss": mean_loss(&scores),
        });
        outln!("{}", serde_json::to_string_pretty(&json).expect("JSON"));
        return Ok(());
    }
    outln!(
        "{} ({}, {} parameters, computed in f32), windows of {context} tokens",
        args.model.display(),
        model.family().name(),
        model.parameters()
    );
    let width = scores
        .iter()
        .map(|s| s.path.display().to_string().chars().count())
        .max()
        .unwrap_or(4)
        .max(4);
    outln!(
        "{:<width$}  {:>9}  {:>7}  {:>9}  {:>11}",
        "data",
        "tokens",
        "windows",
        "loss",
        "perplexity"
    );
    for s in &scores {
        outln!(
            "{:<width$}  {:>9}  {:>7}  {:>9.4}  {:>11.3}",
            s.path.display(),
            s.score.tokens,
            s.score.windows,
            s.score.loss(),
            s.score.perplexity()
        );
    }
    if scores.len() > 1 {
        let mean = mean_loss(&scores);
        outln!("{:<width$}  {:>9}  {:>7}  {mean:>9.4}", "mean", "", "");
    }
    outln!("loss: nats per predicted token");
    if !quiet {
        eprintln!(
            "loaded in {loaded:.2} s; {tokens} tokens in {seconds:.2} s ({:.0} tokens/s)",
            tokens as f64 / seconds.max(1e-9)
        );
    }
    Ok(())
}

/// Runs candle's kernels and rayon's pool on `n` threads: both read
/// `RAYON_NUM_THREADS` (candle at each operation, rayon when its pool starts), and
/// nothing has started a thread pool when a command's arguments are read.
pub(crate) fn set_threads(n: usize) -> Result<(), Failure> {
    if n == 0 {
        return Err(crate::usage(anyhow::anyhow!(
            "--threads must be at least 1"
        )));
    }
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    Ok(())
}

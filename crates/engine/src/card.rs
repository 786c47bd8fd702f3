//! The non-weight files of the output: the base's files (with `config.json`'s dtype
//! updated) and a model card.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use reefknot_plan::Role;

use crate::frontend::{RECIPE_METADATA, SET_METADATA};
use crate::plan::Plan;
use crate::{Error, ErrorKind};

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ErrorKind + '_ {
    move |source| ErrorKind::Output {
        path: path.to_path_buf(),
        source,
    }
}

/// Copies the base folder's non-weight files ([`base_files`]: no weights, no model card;
/// tokenizer files, `generation_config.json`, ...); `config.json` gets the output dtype
/// and the plan's configuration keys (`num_hidden_layers` of a layer stack).
pub(crate) fn copy_base_files(plan: &Plan, out: &Path) -> Result<(), Error> {
    let dtype = plan.data().output.dtype.as_deref();
    let edits = &plan.data().output.config;
    let added = plan
        .data()
        .output
        .tokenizer
        .as_ref()
        .map(|t| t.added.as_slice())
        .filter(|a| !a.is_empty());
    let template = plan.data().output.chat_template.as_deref();
    for (path, name) in base_files(plan)? {
        let dest = out.join(&name);
        if template.is_some() && (name == "chat_template.jinja" || name == "chat_template.json") {
            // The plan's template replaces the tokenizer's.
            continue;
        }
        if name == "config.json" {
            let text = fs::read_to_string(&path).map_err(io_err(&path))?;
            match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(mut config) => {
                    if let (Some(dtype), Some(map)) = (dtype, config.as_object_mut()) {
                        map.insert("torch_dtype".into(), dtype.into());
                        // Newer transformers spell it `dtype`; keep both in step.
                        if map.contains_key("dtype") {
                            map.insert("dtype".into(), dtype.into());
                        }
                    }
                    if let Some(map) = config.as_object_mut() {
                        for (key, value) in edits {
                            map.insert(key.clone(), value.clone());
                        }
                    }
                    let mut text = serde_json::to_string_pretty(&config)
                        .expect("a parsed JSON value serialises");
                    text.push('\n');
                    fs::write(&dest, text).map_err(io_err(&dest))?;
                }
                Err(e) if !edits.is_empty() => {
                    // The output's layout differs from the input's: a configuration left
                    // as it is would describe another model.
                    let keys: Vec<&str> = edits.keys().map(String::as_str).collect();
                    return Err(io_err(&path)(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!(
                            "not valid JSON ({e}), so {} cannot be set in it",
                            keys.join(", ")
                        ),
                    ))
                    .into());
                }
                Err(e) => {
                    tracing::warn!("{}: not valid JSON ({e}); copied unchanged", path.display());
                    fs::copy(&path, &dest).map_err(io_err(&path))?;
                }
            }
        } else if (added.is_some() && is_added_to(&name))
            || (template.is_some() && name == "tokenizer_config.json")
        {
            let text = fs::read_to_string(&path).map_err(io_err(&path))?;
            let mut json: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                io_err(&path)(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "not valid JSON ({e}), so the output's tokenizer cannot be made from it"
                    ),
                ))
            })?;
            if let Some(added) = added {
                add_tokens(&mut json, &name, added);
            }
            if let (Some(_), Some(map)) = (template, json.as_object_mut()) {
                // One template, in chat_template.jinja.
                map.remove("chat_template");
            }
            let mut text =
                serde_json::to_string_pretty(&json).expect("a parsed JSON value serialises");
            text.push('\n');
            fs::write(&dest, text).map_err(io_err(&dest))?;
        } else {
            fs::copy(&path, &dest).map_err(io_err(&path))?;
        }
    }
    if let Some(t) = template {
        let dest = out.join("chat_template.jinja");
        fs::write(&dest, t).map_err(io_err(&dest))?;
    }
    Ok(())
}

/// Whether `name` lists a tokenizer's added tokens.
fn is_added_to(name: &str) -> bool {
    name == "tokenizer.json" || name == "tokenizer_config.json"
}

/// Appends `added` to a `tokenizer.json`'s `added_tokens`, or to a
/// `tokenizer_config.json`'s `added_tokens_decoder` (where it has one).
fn add_tokens(json: &mut serde_json::Value, name: &str, added: &[reefknot_plan::AddedToken]) {
    use serde_json::json;
    let entry = |t: &reefknot_plan::AddedToken| {
        json!({
            "content": t.content,
            "single_word": t.single_word,
            "lstrip": t.lstrip,
            "rstrip": t.rstrip,
            "normalized": t.normalized,
            "special": t.special,
        })
    };
    if name == "tokenizer.json" {
        let with_id = added.iter().map(|t| {
            let mut e = entry(t);
            e["id"] = t.id.into();
            e
        });
        match json.get_mut("added_tokens").and_then(|v| v.as_array_mut()) {
            Some(list) => list.extend(with_id),
            None => {
                if let Some(map) = json.as_object_mut() {
                    map.insert("added_tokens".into(), with_id.collect());
                }
            }
        }
    } else if let Some(map) = json
        .get_mut("added_tokens_decoder")
        .and_then(|v| v.as_object_mut())
    {
        for t in added {
            map.insert(t.id.to_string(), entry(t));
        }
    }
}

/// The non-weight files of the plan's `files_from` input that the output gets (config,
/// tokenizer, generation config...), with their names: regular files only, and only
/// those inside the model's folder once symlinks are resolved (a Hugging Face cache
/// snapshot's links into its repository's blobs are inside). Anything else is left
/// out with a warning: a link to a file elsewhere is not the model's to hand on.
///
/// When the plan's tokenizer comes from another input, its tokenizer files
/// ([`is_tokenizer_file`]) replace those of `files_from`.
pub(crate) fn base_files(plan: &Plan) -> Result<Vec<(PathBuf, String)>, Error> {
    let output = &plan.data().output;
    let mut files = match output.files_from {
        Some(i) => files_of(plan, i)?,
        None => Vec::new(),
    };
    if let Some(t) = output
        .tokenizer
        .as_ref()
        .filter(|t| Some(t.from) != output.files_from)
    {
        files.retain(|(_, name)| !is_tokenizer_file(name));
        files.extend(
            files_of(plan, t.from)?
                .into_iter()
                .filter(|(_, name)| is_tokenizer_file(name)),
        );
        files.sort_by(|a, b| a.1.cmp(&b.1));
    }
    Ok(files)
}

/// Whether a model folder's file belongs to its tokenizer.
fn is_tokenizer_file(name: &str) -> bool {
    name.starts_with("tokenizer")
        || [
            "special_tokens_map.json",
            "added_tokens.json",
            "vocab.json",
            "vocab.txt",
            "merges.txt",
            "spiece.model",
            "chat_template.jinja",
            "chat_template.json",
        ]
        .contains(&name)
}

/// The non-weight files of input `input`'s folder (see [`base_files`]).
fn files_of(plan: &Plan, input: usize) -> Result<Vec<(PathBuf, String)>, Error> {
    let Some(folder) = plan.inputs()[input].folder() else {
        return Ok(Vec::new());
    };
    let root = reefknot_io::model_root(folder);
    let mut files = Vec::new();
    let entries = fs::read_dir(folder).map_err(io_err(folder))?;
    for entry in entries {
        let entry = entry.map_err(io_err(folder))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if reefknot_io::is_weight_file(&name) || name == "README.md" {
            continue;
        }
        // `metadata` follows symlinks, as the Hugging Face cache uses them.
        match fs::metadata(&path) {
            Ok(meta) if meta.is_file() => {}
            Ok(meta) if meta.is_dir() => continue,
            _ => {
                tracing::warn!("{}: not a regular file; not copied", path.display());
                continue;
            }
        }
        if !reefknot_io::within(&root, &path) {
            tracing::warn!(
                "{}: links outside the model's folder {}; not copied",
                path.display(),
                root.display()
            );
            continue;
        }
        files.push((path, name));
    }
    files.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(files)
}

/// Writes `README.md`: a Hugging Face model card naming the inputs and the recipe.
pub(crate) fn write_card(plan: &Plan, out: &Path) -> Result<(), Error> {
    let data = plan.data();
    let path_of = |role: Role| {
        data.inputs
            .iter()
            .find(|i| i.role == role)
            .map(|i| display_name(Path::new(&i.path)))
    };
    let base = path_of(Role::Base).unwrap_or_else(|| "(none)".into());
    let models: Vec<String> = (0..data.models())
        .filter_map(|model| path_of(Role::Model { model }))
        .collect();
    let mut s = String::new();
    s.push_str("---\nlibrary_name: transformers\ntags:\n- merge\n- reefknot\n");
    let _ = writeln!(s, "base_model:\n- {base}");
    for m in &models {
        let _ = writeln!(s, "- {m}");
    }
    s.push_str("---\n\n# Merged model\n\n");
    let _ = writeln!(
        s,
        "This model was merged with [reefknot](https://github.com/reefknot/reefknot) {} \
         from the base `{base}` and {} fine-tune{}:\n",
        env!("CARGO_PKG_VERSION"),
        models.len(),
        if models.len() == 1 { "" } else { "s" }
    );
    for (model, m) in models.iter().enumerate() {
        let _ = write!(s, "- `{m}`");
        if let Some(a) = path_of(Role::Lora { model: Some(model) }) {
            let _ = write!(s, " with the LoRA adapter `{a}` applied");
        }
        s.push('\n');
    }
    if let Some(a) = path_of(Role::Lora { model: None }) {
        let _ = writeln!(s, "\nThe base is read with the LoRA adapter `{a}` applied.");
    }
    s.push_str("\n## Merge\n\n");
    for e in &data.expressions {
        let _ = writeln!(s, "- {}: `{}`", e.label, e.text);
    }
    if !data.plugins.is_empty() {
        s.push_str("\nOperators of these plugins made it:\n\n");
        for p in &data.plugins {
            let library = Path::new(&p.library)
                .file_name()
                .map_or_else(|| p.library.clone(), |n| n.to_string_lossy().into_owned());
            let _ = writeln!(
                s,
                "- `{}`{} (`{library}`, sha256 `{}`): {}",
                p.name,
                if p.version.is_empty() {
                    String::new()
                } else {
                    format!(" {}", p.version)
                },
                p.sha256,
                p.operators
                    .iter()
                    .map(|o| format!("`{o}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let _ = writeln!(
        s,
        "\nOutput dtype: {}. Seed: {}.",
        data.output.dtype.as_deref().unwrap_or("as the base"),
        data.seed,
    );
    if let Some(recipe) = data.output.metadata.get(RECIPE_METADATA) {
        let _ = writeln!(
            s,
            "\n## Recipe\n\n```yaml\n{recipe}{}```",
            if recipe.ends_with('\n') { "" } else { "\n" }
        );
    }
    if let Some(set) = data.output.metadata.get(SET_METADATA) {
        let _ = writeln!(
            s,
            "\nWith variables set when merging, above the recipe's values: {set}."
        );
    }
    let path = out.join("README.md");
    fs::write(&path, s).map_err(io_err(&path))?;
    Ok(())
}

/// The repo id of a Hugging Face cache snapshot, else the last path component (what
/// identifies a model to a reader), or the whole path.
fn display_name(p: &Path) -> String {
    crate::hub::repo_of_snapshot(p)
        .or_else(|| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| p.display().to_string())
}

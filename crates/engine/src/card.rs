//! The non-weight files of the output: the base's files (with `config.json`'s dtype
//! updated) and a model card.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use reefknot_plan::Role;

use crate::frontend::RECIPE_METADATA;
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
    for (path, name) in base_files(plan)? {
        let dest = out.join(&name);
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
        } else {
            fs::copy(&path, &dest).map_err(io_err(&path))?;
        }
    }
    Ok(())
}

/// The non-weight files of the plan's `files_from` input that the output gets (config,
/// tokenizer, generation config...), with their names: regular files only, and only
/// those inside the model's folder once symlinks are resolved (a Hugging Face cache
/// snapshot's links into its repository's blobs are inside). Anything else is left
/// out with a warning: a link to a file elsewhere is not the model's to hand on.
pub(crate) fn base_files(plan: &Plan) -> Result<Vec<(PathBuf, String)>, Error> {
    let Some(folder) = plan
        .data()
        .output
        .files_from
        .and_then(|i| plan.inputs()[i].folder())
    else {
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

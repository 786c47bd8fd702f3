//! The non-weight files of the output: the base's files (with `config.json`'s dtype
//! updated) and a model card.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

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

/// Copies every regular file of the base folder except weights and its model card
/// (tokenizer files, `generation_config.json`, ...); `config.json` gets the output dtype.
pub(crate) fn copy_base_files(plan: &Plan, out: &Path) -> Result<(), Error> {
    let Some(folder) = plan
        .data()
        .output
        .files_from
        .and_then(|i| plan.inputs()[i].folder())
    else {
        return Ok(());
    };
    let dtype = plan.data().output.dtype.as_deref();
    let entries = fs::read_dir(folder).map_err(io_err(folder))?;
    for entry in entries {
        let entry = entry.map_err(io_err(folder))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        // `metadata` follows symlinks, as the Hugging Face cache uses them.
        let is_file = fs::metadata(&path).map(|m| m.is_file()).unwrap_or(false);
        if !is_file || reefknot_io::is_weight_file(&name) || name == "README.md" {
            continue;
        }
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
                    let mut text = serde_json::to_string_pretty(&config)
                        .expect("a parsed JSON value serialises");
                    text.push('\n');
                    fs::write(&dest, text).map_err(io_err(&dest))?;
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
    for m in &models {
        let _ = writeln!(s, "- `{m}`");
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

/// The last path component (what identifies a model to a reader), or the whole path.
fn display_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

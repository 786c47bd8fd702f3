//! The non-weight files of the output: the base's files (with `config.json`'s dtype
//! updated) and a model card.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

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
    let Some(folder) = plan.base.folder() else {
        return Ok(());
    };
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
                    if let (Some(dtype), Some(map)) = (plan.dtype, config.as_object_mut()) {
                        map.insert("torch_dtype".into(), dtype.torch_name().into());
                        // Newer transformers spell it `dtype`; keep both in step.
                        if map.contains_key("dtype") {
                            map.insert("dtype".into(), dtype.torch_name().into());
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
    let recipe = &plan.recipe;
    let mut s = String::new();
    s.push_str("---\nlibrary_name: transformers\ntags:\n- merge\n- reefknot\n");
    let _ = writeln!(s, "base_model:\n- {}", display_name(&recipe.base));
    for m in &recipe.models {
        let _ = writeln!(s, "- {}", display_name(&m.path));
    }
    s.push_str("---\n\n# Merged model\n\n");
    let _ = writeln!(
        s,
        "This model was merged with [reefknot](https://github.com/reefknot/reefknot) {} \
         from the base `{}` and {} fine-tune{}:\n",
        env!("CARGO_PKG_VERSION"),
        display_name(&recipe.base),
        recipe.models.len(),
        if recipe.models.len() == 1 { "" } else { "s" }
    );
    for m in &recipe.models {
        let _ = writeln!(s, "- `{}`", display_name(&m.path));
    }
    s.push_str("\n## Merge\n\n");
    for rule in &plan.rules {
        let _ = writeln!(s, "- {}: `{}`", rule.label, rule.pipeline);
    }
    let _ = writeln!(
        s,
        "\nOutput dtype: {}. Seed: {}.\n\n## Recipe\n\n```yaml\n{}{}```",
        plan.dtype.map_or("as the base", |d| d.torch_name()),
        plan.seed,
        recipe.source,
        if recipe.source.ends_with('\n') {
            ""
        } else {
            "\n"
        }
    );
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

//! Plugin discovery: the libraries of `REEFKNOT_PLUGIN_PATH`'s folders, `--plugin`
//! flags and the recipe's `plugins:` list, loaded once each into the registry.

use std::path::{Path, PathBuf};

use clap::Args as ClapArgs;
use reefknot_ops::Registry;
use reefknot_plugins::{Loader, PLUGIN_PATH_VAR};

use crate::{usage, Failure};

/// `--plugin PATH`, repeatable.
#[derive(ClapArgs, Clone, Debug, Default)]
pub(crate) struct PluginArgs {
    /// Load the operators of a plugin library (repeatable). Plugins also come from the
    /// recipe's `plugins:` list and from the folders in REEFKNOT_PLUGIN_PATH.
    #[arg(long = "plugin", value_name = "PATH")]
    pub(crate) plugins: Vec<PathBuf>,
}

/// The built-in operators plus every plugin's: first the libraries in the folders of
/// `REEFKNOT_PLUGIN_PATH`, then `--plugin` flags, then the recipe's `plugins:`.
/// A library named twice is loaded once. A library of `REEFKNOT_PLUGIN_PATH` that
/// cannot be loaded is skipped with a warning, unless its file name's namespace
/// (`mycorp` for `libmycorp.so`) is among `wanted`, the namespaces the recipe or plan
/// uses; any other problem is a usage error (exit code 2).
///
/// A recipe is data a user may have downloaded, and loading a library runs its code:
/// the recipe's `plugins:` may name libraries inside the recipe's folder (`recipe_dir`)
/// or inside a `REEFKNOT_PLUGIN_PATH` folder, and any other only when the same library
/// is also given with `--plugin`.
pub(crate) fn registry(
    args: &PluginArgs,
    recipe: &[PathBuf],
    recipe_dir: Option<&Path>,
    wanted: &[&str],
    isolation: Option<reefknot_plugins::Isolation>,
) -> Result<Registry, Failure> {
    let mut loader = match isolation {
        Some(i) => Loader::isolated(i),
        None => Loader::new(),
    };
    let mut trusted_dirs: Vec<PathBuf> = recipe_dir.into_iter().filter_map(canonical).collect();
    if let Some(value) = std::env::var_os(PLUGIN_PATH_VAR) {
        trusted_dirs.extend(std::env::split_paths(&value).filter_map(|d| canonical(&d)));
        for path in reefknot_plugins::search_path(&value).map_err(|e| usage(e.into()))? {
            let Err(e) = loader.load(&path) else {
                continue;
            };
            match reefknot_plugins::namespace_of(&path).filter(|ns| wanted.contains(ns)) {
                Some(ns) => {
                    return Err(usage(anyhow::Error::new(e).context(format!(
                        "loading {} (found in {PLUGIN_PATH_VAR}) for the operators `{ns}::` \
                         names",
                        path.display()
                    ))))
                }
                None => tracing::warn!(
                    "skipped the plugin {} (found in {PLUGIN_PATH_VAR}): {}",
                    path.display(),
                    anyhow::Error::new(e)
                        .chain()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(": ")
                ),
            }
        }
    }
    let given: Vec<PathBuf> = args.plugins.iter().filter_map(|p| canonical(p)).collect();
    for path in &args.plugins {
        loader.load(path).map_err(|e| usage(e.into()))?;
    }
    for path in recipe {
        let trusted = canonical(path)
            .is_none_or(|c| given.contains(&c) || trusted_dirs.iter().any(|d| c.starts_with(d)));
        if !trusted {
            return Err(usage(anyhow::anyhow!(
                "the recipe's plugin {} lies outside the recipe's folder and {PLUGIN_PATH_VAR}; \
                 a recipe loads plugins only from there, since loading a library runs its \
                 code. If you trust it, pass it as well: --plugin {}",
                path.display(),
                path.display()
            )));
        }
        loader.load(path).map_err(|e| {
            usage(anyhow::Error::new(e).context("loading a plugin of the recipe's `plugins:`"))
        })?;
    }
    loader.registry().map_err(|e| usage(e.into()))
}

fn canonical(path: &Path) -> Option<PathBuf> {
    path.canonicalize().ok()
}

//! Plugin discovery: the libraries of `REEFKNOT_PLUGIN_PATH`'s folders, `--plugin`
//! flags and the recipe's `plugins:` list, loaded once each into the registry.

use std::path::PathBuf;

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
/// A library named twice is loaded once; any problem is a usage error (exit code 2).
pub(crate) fn registry(args: &PluginArgs, recipe: &[PathBuf]) -> Result<Registry, Failure> {
    let mut loader = Loader::new();
    if let Some(value) = std::env::var_os(PLUGIN_PATH_VAR) {
        for path in reefknot_plugins::search_path(&value).map_err(|e| usage(e.into()))? {
            loader.load(&path).map_err(|e| {
                usage(anyhow::Error::new(e).context(format!(
                    "loading {} (found in {PLUGIN_PATH_VAR})",
                    path.display()
                )))
            })?;
        }
    }
    for path in &args.plugins {
        loader.load(path).map_err(|e| usage(e.into()))?;
    }
    for path in recipe {
        loader.load(path).map_err(|e| {
            usage(anyhow::Error::new(e).context("loading a plugin of the recipe's `plugins:`"))
        })?;
    }
    loader.registry().map_err(|e| usage(e.into()))
}

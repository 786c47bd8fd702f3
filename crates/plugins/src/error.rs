//! Why a plugin could not be loaded.

use std::path::PathBuf;

/// A plugin library could not be found, opened, or accepted.
///
/// Every variant is a usage problem (the CLI exits with code 2): the library, the ABI
/// version or a descriptor is wrong, not the merge.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The path does not name a file.
    #[error("cannot load the plugin {path}: {reason}")]
    NotFound {
        /// The path as given.
        path: PathBuf,
        /// `no such file`, `it is a folder`, ...
        reason: String,
    },

    /// The dynamic loader refused the file (not a shared library, missing dependencies,
    /// wrong architecture...).
    #[error("cannot open the plugin {path} as a shared library: {message}")]
    Open {
        /// The library.
        path: PathBuf,
        /// What the loader said.
        message: String,
    },

    /// One of the two symbols every plugin exports is absent.
    #[error(
        "{path} is not a reefknot plugin: it does not export `{symbol}` \
         (build it with the SDK's export_plugin! macro, or define the function as \
         reefknot_plugin.h declares it)"
    )]
    MissingSymbol {
        /// The library.
        path: PathBuf,
        /// The missing symbol.
        symbol: &'static str,
    },

    /// The plugin was built for an ABI this host cannot run.
    #[error(
        "the plugin {path} was built for plugin ABI {plugin_major}.{plugin_minor}, \
         but this reefknot speaks ABI {host_major}.{host_minor}: {advice}"
    )]
    AbiVersion {
        /// The library.
        path: PathBuf,
        /// The plugin's major version.
        plugin_major: u32,
        /// The plugin's minor version.
        plugin_minor: u32,
        /// The host's major version.
        host_major: u32,
        /// The host's minor version.
        host_minor: u32,
        /// What to do about it.
        advice: &'static str,
    },

    /// A descriptor of the plugin is malformed.
    #[error("the plugin {path} is invalid: {problem}")]
    Invalid {
        /// The library.
        path: PathBuf,
        /// What is wrong, and where (`operator 2 (`mask`): parameter `k`: ...`).
        problem: String,
    },

    /// Two different libraries declare the same plugin name.
    #[error(
        "two plugins are named `{name}`: {first} and {second} (a plugin's name is the \
         namespace of its operators, so it must be unique)"
    )]
    DuplicateName {
        /// The plugin name.
        name: String,
        /// The library loaded first.
        first: PathBuf,
        /// The library loaded second.
        second: PathBuf,
    },

    /// A plugin operator has the name of a built-in operator (or of the same operator
    /// of another plugin's namespace).
    #[error("cannot load the plugin {path}: {clash}")]
    Clash {
        /// The library.
        path: PathBuf,
        /// The clash.
        clash: reefknot_ops::Clash,
    },

    /// A folder of `REEFKNOT_PLUGIN_PATH` could not be listed.
    #[error("cannot list the plugin folder {path} (from REEFKNOT_PLUGIN_PATH)")]
    SearchPath {
        /// The folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

//! Loads reefknot operator plugins and adds their operators to a [`Registry`].
//!
//! A plugin is a shared library speaking the C ABI of `reefknot-plugin-api`. Loading
//! one ([`load`]):
//!
//! 1. opens it with `RTLD_NOW | RTLD_LOCAL` and never unloads it;
//! 2. looks up both exported symbols, `reefknot_plugin_abi_version` and
//!    `reefknot_plugin_descriptor` (a library lacking one is not a plugin);
//! 3. checks the version: the plugin's major must equal the host's, and its minor must
//!    not exceed the host's (an older minor is fine: structs carry their size, and the
//!    host reads what an older plugin provides); a refusal names both versions;
//! 4. reads and validates every descriptor (see the `describe` rules: UTF-8,
//!    identifier names, unique operators and parameters, well-formed parameter specs,
//!    signatures among the language's five, known flags);
//! 5. turns each operator into a [`PluginOperator`] whose spec the language checks
//!    calls against exactly as it checks built-ins'.
//!
//! [`Plugin::register`] then adds the operators to a registry as `plugin::name` (also
//! callable as `name` when no other operator has that name); a name equal to a
//! built-in's is refused, never shadowed.
//!
//! [`Loader`] loads a list of libraries once each (a library named twice, say by the
//! recipe and on the command line, is loaded once; two libraries declaring the same
//! plugin name are refused), and [`search_path`] lists the libraries of the folders in
//! `REEFKNOT_PLUGIN_PATH`.
//!
//! Architecture invariant: `unsafe` lives only in the `ffi` module, each block with a
//! `// SAFETY:` comment; the host does all parallelism and owns every buffer.
//!
//! ```no_run
//! let mut registry = reefknot_ops::Registry::builtin();
//! let plugin = reefknot_plugins::load("plugins/libtall.so".as_ref())?;
//! plugin.register(&mut registry)?;
//! assert!(registry.get("tall::consensus").is_some());
//! # Ok::<(), reefknot_plugins::PluginError>(())
//! ```

mod describe;
mod error;
mod ffi;
mod operator;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use reefknot_ops::{Provider, Registry};
use reefknot_plugin_api::{REEFKNOT_ABI_MAJOR, REEFKNOT_ABI_MINOR};

pub use error::PluginError;
#[cfg(unix)]
pub use ffi::isolate::{serve as serve_isolated, Isolation};
#[cfg(unix)]
pub use ffi::{contain_crashes, Watchdog};

/// How isolated plugin calls are run (a no-op type where isolation is not supported).
#[cfg(not(unix))]
#[derive(Clone, Debug)]
pub struct Isolation;
pub use operator::PluginOperator;

/// The environment variable naming folders whose shared libraries are loaded as plugins
/// (`:`-separated; `;` on Windows).
pub const PLUGIN_PATH_VAR: &str = "REEFKNOT_PLUGIN_PATH";

/// A loaded, validated plugin.
#[derive(Clone, Debug)]
pub struct Plugin {
    /// Its name: the namespace of its operators.
    pub name: &'static str,
    /// Its own version (free text).
    pub version: &'static str,
    /// One line about it (may be empty).
    pub description: &'static str,
    /// The library it was loaded from, as given.
    pub path: PathBuf,
    /// The ABI version it was built for (major, minor).
    pub abi: (u32, u32),
    /// The SHA-256 of the library file (lowercase hex): which build made a model.
    pub sha256: String,
    /// Its operators, in the order it declares them.
    pub operators: Vec<PluginOperator>,
}

/// Opens, checks and validates the plugin library at `path`.
pub fn load(path: &Path) -> Result<Plugin, PluginError> {
    load_with(path, None)
}

/// As [`load`]; with `isolation`, its operators' calls run in helper processes.
fn load_with(path: &Path, isolation: Option<&Isolation>) -> Result<Plugin, PluginError> {
    tracing::debug!("loading plugin {}", path.display());
    let not_found = |reason: &str| PluginError::NotFound {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(not_found("no such file"))
        }
        Err(e) => return Err(not_found(&e.to_string())),
        Ok(m) if m.is_dir() => return Err(not_found("it is a folder, not a library")),
        // dlopen of a FIFO would wait for a writer forever.
        Ok(m) if !m.is_file() => {
            return Err(not_found(
                "it is not a regular file (a FIFO, a device or a socket)",
            ))
        }
        Ok(_) => {}
    }
    // A bare file name would make the loader search its own path list; make it a path.
    let open_path = if path.components().count() == 1 {
        Path::new(".").join(path)
    } else {
        path.to_path_buf()
    };
    // Hashed before it is opened: the bytes whose code runs are the bytes named.
    let sha256 = sha256_of(path)?;
    let lib = ffi::open(&open_path, path)?;
    let version = lib.abi_version(path)?;
    let descriptor = lib.descriptor_fn(path)?;
    tracing::debug!(
        "{}: plugin ABI {}.{} (this host: {REEFKNOT_ABI_MAJOR}.{REEFKNOT_ABI_MINOR})",
        path.display(),
        version.major,
        version.minor
    );
    let refuse = |advice| PluginError::AbiVersion {
        path: path.to_path_buf(),
        plugin_major: version.major,
        plugin_minor: version.minor,
        host_major: REEFKNOT_ABI_MAJOR,
        host_minor: REEFKNOT_ABI_MINOR,
        advice,
    };
    if version.major != REEFKNOT_ABI_MAJOR {
        return Err(refuse(
            "a different major version is incompatible; rebuild the plugin against this \
             reefknot's reefknot-plugin-api (or reefknot_plugin.h)",
        ));
    }
    if version.minor > REEFKNOT_ABI_MINOR {
        return Err(refuse(
            "the plugin needs a newer reefknot; upgrade reefknot, or rebuild the plugin \
             against this reefknot's reefknot-plugin-api",
        ));
    }
    let invalid = |problem: String| PluginError::Invalid {
        path: path.to_path_buf(),
        problem,
    };
    let raw = ffi::read_table(descriptor).map_err(invalid)?;
    let described = describe::describe(raw).map_err(invalid)?;
    let operators: Vec<PluginOperator> = described
        .operators
        .into_iter()
        .enumerate()
        .map(|(index, op)| {
            #[cfg(unix)]
            let isolated = isolation.map(|i| ffi::isolate::Target {
                isolation: i.clone(),
                library: path.canonicalize().unwrap_or_else(|_| path.to_path_buf()),
                sha256: sha256.clone(),
                index,
            });
            #[cfg(not(unix))]
            let _ = (index, isolation);
            PluginOperator::new(
                described.name,
                path,
                op.spec,
                op.flags,
                op.call,
                op.data,
                op.descriptor,
                #[cfg(unix)]
                isolated,
            )
        })
        .collect();
    for op in &operators {
        tracing::debug!(
            "  {}{}: {}",
            op.qualified(),
            if op.is_elementwise() {
                ""
            } else {
                " (whole tensor)"
            },
            reefknot_ops::Operator::spec(op).summary
        );
    }
    tracing::debug!(
        "loaded plugin `{}` {} from {} ({} operator{})",
        described.name,
        described.version,
        path.display(),
        operators.len(),
        if operators.len() == 1 { "" } else { "s" }
    );
    Ok(Plugin {
        name: described.name,
        version: described.version,
        description: described.description,
        path: path.to_path_buf(),
        abi: (version.major, version.minor),
        sha256,
        operators,
    })
}

/// The SHA-256 of the file at `path`, in lowercase hex.
fn sha256_of(path: &Path) -> Result<String, PluginError> {
    use sha2::Digest as _;
    let mut file = std::fs::File::open(path).map_err(|e| PluginError::NotFound {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(|e| PluginError::NotFound {
        path: path.to_path_buf(),
        reason: format!("cannot read it: {e}"),
    })?;
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

impl Plugin {
    /// What the registry records as the origin of its operators.
    pub fn provider(&self) -> Arc<Provider> {
        Arc::new(Provider {
            name: self.name.to_string(),
            version: self.version.to_string(),
            path: self.path.clone(),
            sha256: self.sha256.clone(),
        })
    }

    /// Adds the plugin's operators to `registry` as `name::op`.
    pub fn register(&self, registry: &mut Registry) -> Result<(), PluginError> {
        let provider = self.provider();
        for op in &self.operators {
            registry
                .add_plugin(&provider, Arc::new(op.clone()))
                .map_err(|clash| PluginError::Clash {
                    path: self.path.clone(),
                    clash,
                })?;
        }
        Ok(())
    }
}

/// Loads plugins once each and registers them.
#[derive(Debug, Default)]
pub struct Loader {
    plugins: Vec<(PathBuf, Plugin)>,
    isolation: Option<Isolation>,
}

impl Loader {
    /// No plugin loaded yet.
    pub fn new() -> Loader {
        Loader::default()
    }

    /// A loader whose plugins' calls run in helper processes (`--isolate-plugins`).
    pub fn isolated(isolation: Isolation) -> Loader {
        Loader {
            plugins: Vec::new(),
            isolation: Some(isolation),
        }
    }

    /// Loads the library at `path` unless it is loaded already, and returns it. It is
    /// refused when another loaded plugin has its name, or when one of its operators
    /// clashes with a registered one.
    pub fn load(&mut self, path: &Path) -> Result<&Plugin, PluginError> {
        let key = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        if let Some(i) = self.plugins.iter().position(|(k, _)| *k == key) {
            tracing::debug!("{} is loaded already", path.display());
            return Ok(&self.plugins[i].1);
        }
        let plugin = load_with(path, self.isolation.as_ref())?;
        if let Some((_, other)) = self.plugins.iter().find(|(_, p)| p.name == plugin.name) {
            return Err(PluginError::DuplicateName {
                name: plugin.name.to_string(),
                first: other.path.clone(),
                second: plugin.path,
            });
        }
        // A clash with a built-in is this library's problem, found when it loads.
        plugin.register(&mut self.registry()?)?;
        self.plugins.push((key, plugin));
        Ok(&self.plugins.last().expect("just pushed").1)
    }

    /// The plugins loaded, in load order.
    pub fn plugins(&self) -> impl Iterator<Item = &Plugin> {
        self.plugins.iter().map(|(_, p)| p)
    }

    /// The built-in registry plus every loaded plugin's operators.
    pub fn registry(&self) -> Result<Registry, PluginError> {
        let mut registry = Registry::builtin();
        for p in self.plugins() {
            p.register(&mut registry)?;
        }
        Ok(registry)
    }
}

/// Whether `path` names a shared library of this platform: its extension (`.so`,
/// `.dylib`, `.dll`), or on other Unix systems than macOS a versioned `.so.N` name
/// (`libmycorp.so.1`, `libmycorp.so.1.2.0`).
pub fn is_library(path: &Path) -> bool {
    let ext = std::env::consts::DLL_EXTENSION;
    if path.extension().is_some_and(|e| e == ext) {
        return true;
    }
    let Some(name) = path.file_name().and_then(OsStr::to_str) else {
        return false;
    };
    cfg!(all(unix, not(target_os = "macos")))
        && name.split_once(".so.").is_some_and(|(stem, version)| {
            !stem.is_empty()
                && version
                    .split('.')
                    .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
}

/// The plugin namespace a library's file name suggests: `mycorp` for `libmycorp.so`,
/// `libmycorp.so.1` or `mycorp.dll`. A library that cannot be loaded cannot tell its
/// name, so this is how a broken library is matched with the namespace a recipe uses.
pub fn namespace_of(path: &Path) -> Option<&str> {
    let name = path.file_name()?.to_str()?;
    let name = name
        .strip_prefix(std::env::consts::DLL_PREFIX)
        .unwrap_or(name);
    let stem = name.split('.').next()?;
    (!stem.is_empty()).then_some(stem)
}

/// The shared libraries in the folders of a `REEFKNOT_PLUGIN_PATH` value, folder by
/// folder in the order given, each folder's libraries sorted by name. Empty entries and
/// folders that do not exist are skipped (with a warning for the latter).
pub fn search_path(value: &OsStr) -> Result<Vec<PathBuf>, PluginError> {
    let mut found = Vec::new();
    for dir in std::env::split_paths(value) {
        if dir.as_os_str().is_empty() {
            continue;
        }
        if !dir.is_dir() {
            tracing::warn!(
                "{PLUGIN_PATH_VAR} names {}, which is not a folder; skipped",
                dir.display()
            );
            continue;
        }
        let entries = std::fs::read_dir(&dir).map_err(|source| PluginError::SearchPath {
            path: dir.clone(),
            source,
        })?;
        let mut libs = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| PluginError::SearchPath {
                path: dir.clone(),
                source,
            })?;
            let path = entry.path();
            if path.is_file() && is_library(&path) {
                libs.push(path);
            }
        }
        libs.sort();
        tracing::debug!(
            "{PLUGIN_PATH_VAR}: {} librar{} in {}",
            libs.len(),
            if libs.len() == 1 { "y" } else { "ies" },
            dir.display()
        );
        found.extend(libs);
    }
    Ok(found)
}

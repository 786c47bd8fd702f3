//! The registry of operators: the built-ins collected through `inventory`, the `ties`
//! sugar, and operators added at run time (plugins). It is the [`Catalog`] the
//! language checks expressions against, and the source of `reefknot ops`.

use std::fmt;
use std::sync::Arc;

use reefknot_lang::{Catalog, Lookup, OpSpec};

use crate::kernel::Operator;

/// A built-in operator, submitted with [`crate::builtin!`].
pub struct Builtin(pub &'static dyn Operator);

inventory::collect!(Builtin);

/// Registers a built-in operator (a value implementing [`Operator`]) with the registry.
#[macro_export]
macro_rules! builtin {
    ($op:expr) => {
        ::inventory::submit! { $crate::Builtin(&$op) }
    };
}

/// Where an operator comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Compiled into reefknot.
    Builtin,
    /// Syntax sugar expanded by the language (`ties`).
    Sugar,
    /// Loaded from a plugin library.
    Plugin(Arc<Provider>),
}

/// The plugin an operator comes from: what a merged model's provenance names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Provider {
    /// The plugin's name (its namespace).
    pub name: String,
    /// Its own version, as its descriptor states it (may be empty).
    pub version: String,
    /// The library it was loaded from.
    pub path: std::path::PathBuf,
    /// The SHA-256 of the library file, in lowercase hex.
    pub sha256: String,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Builtin => f.write_str("built-in"),
            Origin::Sugar => f.write_str("built-in (sugar)"),
            Origin::Plugin(p) => {
                write!(f, "plugin `{}`", p.name)?;
                if !p.version.is_empty() {
                    write!(f, " {}", p.version)?;
                }
                write!(f, " ({})", p.path.display())
            }
        }
    }
}

/// One registered operator.
#[derive(Clone)]
pub struct Entry {
    /// Canonical name: `trim`, or `plugin::op`.
    pub qualified: String,
    /// Its definition.
    pub spec: &'static OpSpec,
    /// Where it comes from.
    pub origin: Origin,
    /// Its implementation (`None` for sugar, which the language expands away).
    pub operator: Option<Arc<dyn Operator>>,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("qualified", &self.qualified)
            .field("origin", &self.origin)
            .finish()
    }
}

/// A name clash between a plugin operator and an operator already registered.
#[derive(Debug, thiserror::Error)]
#[error(
    "operator `{name}` of plugin `{plugin}` clashes with the {existing} operator of the same name"
)]
pub struct Clash {
    /// The clashing name.
    pub name: String,
    /// The plugin that brought it.
    pub plugin: String,
    /// Where the existing one comes from.
    pub existing: Origin,
}

/// Every operator the language can call.
#[derive(Clone, Debug)]
pub struct Registry {
    entries: Vec<Entry>,
}

struct StaticOp(&'static dyn Operator);

impl Operator for StaticOp {
    fn spec(&self) -> &'static OpSpec {
        self.0.spec()
    }
    fn needs_fisher(&self, args: &crate::Args) -> bool {
        self.0.needs_fisher(args)
    }
    fn needs_fisher_means(&self, args: &crate::Args) -> bool {
        self.0.needs_fisher_means(args)
    }
    fn whole_rows(&self, args: &crate::Args) -> bool {
        self.0.whole_rows(args)
    }
    fn copies_model(&self, args: &crate::Args) -> bool {
        self.0.copies_model(args)
    }
    fn check(&self, args: &crate::Args, ctx: &crate::BindCtx<'_>) -> Result<(), crate::OpError> {
        self.0.check(args, ctx)
    }
    fn bind(
        &self,
        args: &crate::Args,
        ctx: &crate::BindCtx<'_>,
    ) -> Result<Box<dyn crate::Kernel>, crate::OpError> {
        self.0.bind(args, ctx)
    }
}

impl Registry {
    /// The built-in operators and the `ties` sugar.
    pub fn builtin() -> Registry {
        let mut entries: Vec<Entry> = inventory::iter::<Builtin>
            .into_iter()
            .map(|b| Entry {
                qualified: b.0.spec().name.to_string(),
                spec: b.0.spec(),
                origin: Origin::Builtin,
                operator: Some(Arc::new(StaticOp(b.0)) as Arc<dyn Operator>),
            })
            .collect();
        entries.push(Entry {
            qualified: reefknot_lang::TIES.name.to_string(),
            spec: &reefknot_lang::TIES,
            origin: Origin::Sugar,
            operator: None,
        });
        entries.sort_by(|a, b| a.qualified.cmp(&b.qualified));
        Registry { entries }
    }

    /// Every operator, built-ins first (by name), then plugin operators in load order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Adds a plugin operator as `plugin::name`. A plugin operator whose unqualified name
    /// equals a built-in's (or an alias) is refused: it would be shadowed silently.
    pub fn add_plugin(
        &mut self,
        provider: &Arc<Provider>,
        operator: Arc<dyn Operator>,
    ) -> Result<(), Clash> {
        let plugin = provider.name.as_str();
        let spec = operator.spec();
        let qualified = format!("{plugin}::{}", spec.name);
        let clashes = |e: &&Entry| {
            e.qualified == qualified
                || (!matches!(e.origin, Origin::Plugin(_))
                    && (e.spec.name == spec.name || e.spec.aliases.contains(&spec.name)))
        };
        if let Some(existing) = self.entries.iter().find(clashes) {
            return Err(Clash {
                name: spec.name.to_string(),
                plugin: plugin.to_string(),
                existing: existing.origin.clone(),
            });
        }
        self.entries.push(Entry {
            qualified,
            spec,
            origin: Origin::Plugin(Arc::clone(provider)),
            operator: Some(operator),
        });
        Ok(())
    }

    /// The entry of a canonical name.
    pub fn get(&self, qualified: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.qualified == qualified)
    }

    /// The plugin that provides canonical name `qualified` (`None` for built-ins).
    pub fn provider(&self, qualified: &str) -> Option<&Provider> {
        match &self.get(qualified)?.origin {
            Origin::Plugin(p) => Some(p),
            Origin::Builtin | Origin::Sugar => None,
        }
    }

    /// The implementation of a canonical name (`None` for sugar and unknown names).
    pub fn operator(&self, qualified: &str) -> Option<&dyn Operator> {
        self.get(qualified).and_then(|e| e.operator.as_deref())
    }
}

impl Catalog for Registry {
    fn lookup(&self, name: &str) -> Lookup {
        let found = |e: &Entry| Lookup::Found {
            qualified: e.qualified.clone(),
            spec: e.spec,
        };
        if let Some(e) = self.entries.iter().find(|e| e.qualified == name) {
            return found(e);
        }
        if let Some(e) = self
            .entries
            .iter()
            .find(|e| !matches!(e.origin, Origin::Plugin(_)) && e.spec.aliases.contains(&name))
        {
            return found(e);
        }
        if name.contains("::") {
            return Lookup::NotFound;
        }
        let candidates: Vec<&Entry> = self
            .entries
            .iter()
            .filter(|e| {
                matches!(e.origin, Origin::Plugin(_))
                    && (e.spec.name == name || e.spec.aliases.contains(&name))
            })
            .collect();
        match candidates.as_slice() {
            [] => Lookup::NotFound,
            [one] => found(one),
            many => Lookup::Ambiguous(many.iter().map(|e| e.qualified.clone()).collect()),
        }
    }

    fn names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for e in &self.entries {
            names.push(e.qualified.clone());
            if let Origin::Plugin(_) = e.origin {
                names.push(e.spec.name.to_string());
            }
            names.extend(e.spec.aliases.iter().map(|a| a.to_string()));
        }
        names.sort();
        names.dedup();
        names
    }
}

//! The built-in operators of operators.md, each defined once and registered through
//! `inventory`.

mod combine;
mod dare;
mod tiles;
mod trim;
mod vote;

pub use combine::{Fisher, Mean, Scale, Sum};
pub(crate) use dare::release_spare_masks;
pub use dare::Dare;
pub use trim::{Trim, MAX_CANDIDATES};
pub use vote::{Disjoint, Elect, FISHER_EPS};

crate::builtin!(Trim);
crate::builtin!(Dare);
crate::builtin!(Elect);
crate::builtin!(Disjoint);
crate::builtin!(Sum);
crate::builtin!(Mean);
crate::builtin!(Fisher);
crate::builtin!(Scale);

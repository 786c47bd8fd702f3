//! The built-in operators of operators.md, each defined once and registered through
//! `inventory`.

mod combine;
mod dare;
mod della;
mod geometry;
mod tiles;
mod trim;
mod vote;

pub use combine::{Fisher, Mean, Scale, Sum};
pub(crate) use dare::release_spare_masks;
pub use dare::Dare;
pub use della::Della;
pub use geometry::{ModelStock, Nearswap, Slerp};
pub use trim::{Breadcrumbs, Trim, MAX_CANDIDATES};
pub use vote::{Disjoint, Elect, FISHER_EPS};

crate::builtin!(Trim);
crate::builtin!(Breadcrumbs);
crate::builtin!(Dare);
crate::builtin!(Della);
crate::builtin!(Elect);
crate::builtin!(Disjoint);
crate::builtin!(Sum);
crate::builtin!(Mean);
crate::builtin!(Fisher);
crate::builtin!(Scale);
crate::builtin!(Slerp);
crate::builtin!(Nearswap);
crate::builtin!(ModelStock);

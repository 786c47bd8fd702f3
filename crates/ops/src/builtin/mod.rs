//! The built-in operators of operators.md, each defined once and registered through
//! `inventory`.

mod combine;
mod dare;
mod della;
mod geometry;
mod masks;
mod ram;
mod sce;
pub(crate) mod select;
mod sphere;
mod subspace;
mod tiles;
mod trim;
mod vote;

use reefknot_lang::Ty;

use crate::kernel::{Args, BindCtx, NumberParam, Param};

pub use combine::{Fisher, Linear, Mean, Passthrough, Scale, Sum};
pub use dare::Dare;
pub use della::Della;
pub use geometry::{ModelStock, Nearswap, Slerp};
pub(crate) use masks::release_spare_masks;
pub use ram::{Ram, RamPlus};
pub use sce::{ArceeFusion, Sce};
pub use select::MAX_CANDIDATES;
pub use sphere::{Karcher, Multislerp, Nuslerp};
pub use subspace::{Iso, IsoCts, Tsv};
pub use trim::{Breadcrumbs, Trim};
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
crate::builtin!(Linear);
crate::builtin!(Passthrough);
crate::builtin!(Ram);
crate::builtin!(RamPlus);
crate::builtin!(Nuslerp);
crate::builtin!(Multislerp);
crate::builtin!(Karcher);
crate::builtin!(Sce);
crate::builtin!(ArceeFusion);
crate::builtin!(Tsv);
crate::builtin!(Iso);
crate::builtin!(IsoCts);

/// A number argument per vector a Stack→Stack / Delta→Delta stage transforms: one per
/// model on a stack, one for the merged delta.
pub(crate) fn per_vector(args: &Args, p: Param<NumberParam>, ctx: &BindCtx<'_>) -> Vec<f64> {
    if ctx.input() == Ty::Delta {
        vec![args.number(p)]
    } else {
        args.per_model(p, ctx.models)
    }
}

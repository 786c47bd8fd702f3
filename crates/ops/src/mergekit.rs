//! mergekit's merge methods, each with a reefknot expression that computes it: the
//! table `reefknot ops --markdown` prints in the operator reference. The translation
//! of a whole mergekit configuration, parameters and defaults included, is
//! `reefknot_recipe::mergekit`; a test holds the two tables to the same methods.

/// One method `mergekit.merge_methods.registry` registers (mergekit 0.1.5).
#[derive(Clone, Copy, Debug)]
pub struct MergekitMethod {
    /// mergekit's `merge_method`.
    pub name: &'static str,
    /// A reefknot `merge:` expression computing it, with mergekit's defaults written
    /// out (densities and the like as examples).
    pub expression: &'static str,
    /// How many fine-tunes (besides the base) the example takes.
    pub models: usize,
    /// How mergekit's parameters map, and what differs.
    pub note: &'static str,
}

/// Every method mergekit 0.1.5 registers, in its registry's order.
pub const MERGEKIT_METHODS: &[MergekitMethod] = &[
    MergekitMethod {
        name: "linear",
        expression: "mean",
        models: 3,
        note: "`normalize: false` is `linear(normalize=false)`; a base model listed among the \
               models with weight `w` is `linear(base_weight=w)`",
    },
    MergekitMethod {
        name: "slerp",
        expression: "slerp(0.5)",
        models: 1,
        note: "mergekit's two models are reefknot's `base` and its one model; `t` may be a \
               gradient (`slerp($t)`)",
    },
    MergekitMethod {
        name: "nuslerp",
        expression: "nuslerp",
        models: 2,
        note: "`nuslerp_flatten`, `nuslerp_row_wise` are `flatten`, `row_wise`; without a \
               `base_model`, `nuslerp(centered=false)`",
    },
    MergekitMethod {
        name: "multislerp",
        expression: "multislerp",
        models: 3,
        note: "`normalize_weights` is `normalize`; without a `base_model`, \
               `multislerp(centered=false)`",
    },
    MergekitMethod {
        name: "karcher",
        expression: "karcher",
        models: 3,
        note: "mergekit averages its `base_model` too when the config names one: \
               `karcher(with_base=true)`",
    },
    MergekitMethod {
        name: "task_arithmetic",
        expression: "sum |> scale(1.0)",
        models: 3,
        note: "`lambda` is the `scale`; `normalize: true` is `mean |> scale(λ)`",
    },
    MergekitMethod {
        name: "ties",
        expression: "trim(0.2) |> elect |> disjoint",
        models: 3,
        note: "the same as `ties(0.2)`; `density` is `trim`'s `k`, `normalize: false` is \
               `disjoint(sum)`, `rescale: true` is `trim(k, rescale=l1)`, `lambda` a final \
               `scale(λ)`; `int8_mask` changes nothing but memory",
    },
    MergekitMethod {
        name: "dare_ties",
        expression: "dare(0.7, rescale=l1) |> elect |> disjoint(sum)",
        models: 3,
        note: "`p = 1 − density`; mergekit's `rescale` restores the L1 norm (`rescale=l1`, \
               its default), `normalize: true` is `disjoint`",
    },
    MergekitMethod {
        name: "dare_linear",
        expression: "dare(0.7, rescale=l1) |> sum",
        models: 3,
        note: "`p = 1 − density`; `normalize: true` is `mean` in place of `sum`",
    },
    MergekitMethod {
        name: "breadcrumbs",
        expression: "breadcrumbs(0.9, gamma=0.01) |> sum",
        models: 3,
        note: "`density` and `gamma` are `k` and `gamma`; `rescale: true` is \
               `rescale=l1`",
    },
    MergekitMethod {
        name: "breadcrumbs_ties",
        expression: "breadcrumbs(0.9, gamma=0.01) |> elect |> disjoint(sum)",
        models: 3,
        note: "as `breadcrumbs`, with the TIES vote; `normalize: true` is `disjoint`",
    },
    MergekitMethod {
        name: "della",
        expression: "della(0.5, eps=0.15) |> elect |> disjoint",
        models: 3,
        note: "`density` and `epsilon` are `k` and `eps`; mergekit's defaults normalise \
               (`disjoint`) and rescale (`rescale=l1`)",
    },
    MergekitMethod {
        name: "della_linear",
        expression: "della(0.5, eps=0.15) |> sum",
        models: 3,
        note: "`normalize: true` is `mean` in place of `sum`",
    },
    MergekitMethod {
        name: "model_stock",
        expression: "model_stock",
        models: 3,
        note: "`filter_wise: true` is `model_stock(filter_wise=true)`",
    },
    MergekitMethod {
        name: "sce",
        expression: "sce(1.0)",
        models: 3,
        note: "`select_topk` is its argument",
    },
    MergekitMethod {
        name: "ram",
        expression: "ram",
        models: 3,
        note: "`epsilon` is its argument",
    },
    MergekitMethod {
        name: "ramplus_tl",
        expression: "ramplus_tl",
        models: 3,
        note: "`r`, `alpha`, `epsilon` are its arguments",
    },
    MergekitMethod {
        name: "nearswap",
        expression: "nearswap(0.001)",
        models: 1,
        note: "the base and one model, as `slerp`",
    },
    MergekitMethod {
        name: "arcee_fusion",
        expression: "arcee_fusion",
        models: 1,
        note: "the base and one model; quantiles exact, where mergekit samples 10⁶ elements \
               of larger tensors at random",
    },
    MergekitMethod {
        name: "passthrough",
        expression: "passthrough",
        models: 1,
        note: "one model's tensors, scaled by its `scale`; layer slices from several models \
               (frankenmerges) are a recipe's `slices:`",
    },
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Registry;

    #[test]
    fn every_method_compiles_with_its_model_count() {
        let registry = Registry::builtin();
        assert_eq!(
            MERGEKIT_METHODS.len(),
            20,
            "mergekit 0.1.5 registers 20 methods"
        );
        for m in MERGEKIT_METHODS {
            let p = reefknot_lang::compile(m.expression, &registry)
                .unwrap_or_else(|e| panic!("{}: {}: {e}", m.name, m.expression));
            reefknot_lang::check_models(m.expression, &p, m.models)
                .unwrap_or_else(|e| panic!("{}: {e}", m.name));
        }
    }
}

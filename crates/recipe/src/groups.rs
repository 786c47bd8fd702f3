//! Named groups of tensors, layer indices and depth.
//!
//! The built-in groups are rules over the dot-separated components of a tensor name,
//! not lists of full names, so they hold for every family listed in `docs/recipes.md`
//! and whatever prefix a checkpoint puts in front (`language_model.` in Gemma 3's
//! multimodal checkpoints, no `transformer.` in the original GPT-2 files).

use std::collections::BTreeMap;

use globset::{Glob, GlobBuilder, GlobMatcher, GlobSet, GlobSetBuilder};

/// The built-in group names, in the order [`Groups::names`] lists them.
pub const BUILTIN_GROUPS: [&str; 5] = ["embed", "attention", "mlp", "norm", "lm_head"];

/// The component names that introduce the layer stack: `model.layers.12.…`,
/// GPT-2's `transformer.h.3.…`, `blocks.N`, `block.N`, `layer.N`.
const STACK_NAMES: [&str; 5] = ["layers", "h", "blocks", "block", "layer"];

/// The layer index in a tensor name: the number after the first `layers`, `h`,
/// `blocks`, `block` or `layer` component that is followed by a component of digits.
///
/// `model.layers.12.mlp.up_proj.weight` → 12, `transformer.h.3.attn.c_attn.weight` → 3,
/// `h.3.ln_1.weight` → 3, `model.embed_tokens.weight` → `None`. Expert numbers in MoE
/// names (`mlp.experts.7.…`) are not layers.
pub fn layer_index(tensor: &str) -> Option<usize> {
    layer_position(tensor).map(|(_, index)| index)
}

/// `tensor` with its layer number replaced by `layer` (`model.layers.3.mlp.up_proj.weight`
/// → `model.layers.7.mlp.up_proj.weight`); `None` outside the layer stack.
pub fn with_layer(tensor: &str, layer: usize) -> Option<String> {
    let (pos, _) = layer_position(tensor)?;
    let parts: Vec<String> = tensor
        .split('.')
        .enumerate()
        .map(|(i, p)| {
            if i == pos {
                layer.to_string()
            } else {
                p.to_string()
            }
        })
        .collect();
    Some(parts.join("."))
}

/// The component position of the layer number in `tensor`, and the number.
fn layer_position(tensor: &str) -> Option<(usize, usize)> {
    let mut parts = tensor.split('.').enumerate().peekable();
    while let Some((_, part)) = parts.next() {
        if STACK_NAMES.contains(&part) {
            if let Some(&(pos, next)) = parts.peek() {
                if !next.is_empty() && next.bytes().all(|b| b.is_ascii_digit()) {
                    if let Ok(index) = next.parse() {
                        return Some((pos, index));
                    }
                }
            }
        }
    }
    None
}

/// The depth `t` of a tensor in `[0, 1]`, the argument of [`crate::Number::at`]:
/// `t = i/(L-1)` for layer `i` of a model with `L` layers, `t = 1` when `L <= 1`, and
/// `t = 0` outside the layer stack (`layer` is `None`: embeddings, final norm, lm_head).
///
/// A layer index at or past `L - 1` gives 1 (it is clamped, not extrapolated).
pub fn depth_t(layer: Option<usize>, num_layers: usize) -> f64 {
    match layer {
        None => 0.0,
        Some(_) if num_layers <= 1 => 1.0,
        Some(i) => (i as f64 / (num_layers - 1) as f64).min(1.0),
    }
}

/// Compiles a glob the way the recipe uses globs: matched against the whole tensor
/// name, `.` an ordinary character, `*` any run of characters (dots included), `?` one
/// character, `[...]` a class, `{a,b}` alternatives, `\` escapes; case-sensitive.
pub(crate) fn compile_glob(glob: &str) -> Result<Glob, globset::Error> {
    GlobBuilder::new(glob)
        .literal_separator(false)
        .backslash_escape(true)
        .case_insensitive(false)
        .build()
}

/// Whether a built-in group contains `tensor`; `None` when `group` is not built in.
fn builtin_contains(group: &str, tensor: &str) -> Option<bool> {
    let parts: Vec<&str> = tensor.split('.').collect();
    let layer = layer_position(tensor).map(|(pos, _)| pos);
    // The module right under the layer: `self_attn`, `mlp`, `input_layernorm`, ...
    let in_layer = |names: &[&str]| {
        layer
            .and_then(|pos| parts.get(pos + 1))
            .is_some_and(|m| names.contains(m))
    };
    // Components before the last (the last is the parameter: `weight`, `bias`, ...).
    let modules = &parts[..parts.len().saturating_sub(1)];
    Some(match group {
        "embed" => {
            layer.is_none()
                && modules
                    .iter()
                    .any(|p| matches!(*p, "embed_tokens" | "wte" | "wpe"))
        }
        "attention" => in_layer(&["self_attn", "attn"]),
        "mlp" => in_layer(&["mlp", "block_sparse_moe"]),
        "norm" => modules.iter().any(|p| is_norm_module(p)),
        "lm_head" => layer.is_none() && modules.contains(&"lm_head"),
        _ => return None,
    })
}

/// `norm`, `q_norm`, `input_layernorm`, `final_layernorm`, `post_feedforward_layernorm`,
/// GPT-2's `ln_1`, `ln_2`, `ln_f`.
fn is_norm_module(name: &str) -> bool {
    name.ends_with("norm") || matches!(name, "ln_1" | "ln_2" | "ln_f")
}

/// A group a recipe defines in `groups:`.
#[derive(Clone, Debug)]
struct CustomGroup {
    name: String,
    globs: Vec<String>,
    set: GlobSet,
}

/// The named groups of tensors a recipe can refer to: the built-in ones and the
/// recipe's own (`groups: {name: [globs]}`).
///
/// A tensor may be in several groups (Qwen 3's `self_attn.q_norm` is in `attention`
/// and `norm`); an override list decides by order, first match wins. A custom group may
/// not reuse a built-in name (the recipe is rejected), so a group name means the same
/// thing in every recipe.
///
/// `Groups` also keeps the compiled globs of the recipe's `match:` overrides, so
/// [`crate::Recipe::override_for`] does not compile a glob per tensor.
#[derive(Clone, Debug, Default)]
pub struct Groups {
    custom: Vec<CustomGroup>,
    matchers: BTreeMap<String, GlobMatcher>,
}

impl Groups {
    /// The built-in groups only: `embed`, `attention`, `mlp`, `norm`, `lm_head`.
    pub fn builtin() -> Groups {
        Groups::default()
    }

    /// Whether `name` is a built-in group.
    pub fn is_builtin(name: &str) -> bool {
        BUILTIN_GROUPS.contains(&name)
    }

    /// Whether `tensor` belongs to `group`; false for a group that does not exist.
    pub fn contains(&self, group: &str, tensor: &str) -> bool {
        if let Some(yes) = builtin_contains(group, tensor) {
            return yes;
        }
        self.custom
            .iter()
            .find(|g| g.name == group)
            .is_some_and(|g| g.set.is_match(tensor))
    }

    /// Whether a group of this name exists (built in or defined by the recipe).
    pub fn exists(&self, group: &str) -> bool {
        Groups::is_builtin(group) || self.custom.iter().any(|g| g.name == group)
    }

    /// Every group name: the built-in ones, then the recipe's in the order written.
    pub fn names(&self) -> Vec<&str> {
        BUILTIN_GROUPS
            .iter()
            .copied()
            .chain(self.custom.iter().map(|g| g.name.as_str()))
            .collect()
    }

    /// The names of the groups `tensor` belongs to, in the order of [`Groups::names`].
    pub fn groups_of(&self, tensor: &str) -> Vec<&str> {
        self.names()
            .into_iter()
            .filter(|g| self.contains(g, tensor))
            .collect()
    }

    /// The globs of a group the recipe defined; `None` for a built-in or unknown group.
    pub fn globs(&self, group: &str) -> Option<&[String]> {
        self.custom
            .iter()
            .find(|g| g.name == group)
            .map(|g| g.globs.as_slice())
    }

    /// Adds a custom group; the caller has checked the name and that the globs compile.
    pub(crate) fn define(&mut self, name: String, globs: Vec<(String, Glob)>) {
        let mut builder = GlobSetBuilder::new();
        for (_, glob) in &globs {
            builder.add(glob.clone());
        }
        // The globs compiled one by one; a set of them only fails on size limits.
        let set = builder.build().unwrap_or_else(|_| GlobSet::empty());
        self.custom.push(CustomGroup {
            name,
            globs: globs.into_iter().map(|(g, _)| g).collect(),
            set,
        });
    }

    /// Remembers the compiled matcher of a `match:` glob.
    pub(crate) fn remember_glob(&mut self, text: &str, glob: &Glob) {
        self.matchers
            .entry(text.to_owned())
            .or_insert_with(|| glob.compile_matcher());
    }

    /// Whether the glob `glob` matches `tensor`, compiling it if it was not remembered
    /// (an invalid glob matches nothing).
    pub(crate) fn glob_matches(&self, glob: &str, tensor: &str) -> bool {
        match self.matchers.get(glob) {
            Some(m) => m.is_match(tensor),
            None => compile_glob(glob).is_ok_and(|g| g.compile_matcher().is_match(tensor)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups(tensor: &str) -> Vec<&'static str> {
        let g = Groups::builtin();
        BUILTIN_GROUPS
            .iter()
            .copied()
            .filter(|name| g.contains(name, tensor))
            .collect()
    }

    /// Each case: a tensor name and exactly the built-in groups it is in.
    fn check(cases: &[(&str, &[&str])]) {
        for (tensor, expected) in cases {
            assert_eq!(groups(tensor), *expected, "groups of `{tensor}`");
            assert_eq!(Groups::builtin().groups_of(tensor), *expected);
        }
    }

    #[test]
    fn llama_and_mistral() {
        check(&[
            ("model.embed_tokens.weight", &["embed"]),
            ("model.layers.0.self_attn.q_proj.weight", &["attention"]),
            ("model.layers.0.self_attn.k_proj.weight", &["attention"]),
            ("model.layers.0.self_attn.v_proj.weight", &["attention"]),
            ("model.layers.31.self_attn.o_proj.weight", &["attention"]),
            ("model.layers.7.mlp.gate_proj.weight", &["mlp"]),
            ("model.layers.7.mlp.up_proj.weight", &["mlp"]),
            ("model.layers.7.mlp.down_proj.weight", &["mlp"]),
            ("model.layers.7.input_layernorm.weight", &["norm"]),
            ("model.layers.7.post_attention_layernorm.weight", &["norm"]),
            ("model.norm.weight", &["norm"]),
            ("lm_head.weight", &["lm_head"]),
            // Older Llama checkpoints carry the rotary buffer.
            (
                "model.layers.2.self_attn.rotary_emb.inv_freq",
                &["attention"],
            ),
        ]);
    }

    #[test]
    fn mixtral_experts() {
        check(&[
            ("model.layers.3.block_sparse_moe.gate.weight", &["mlp"]),
            (
                "model.layers.3.block_sparse_moe.experts.5.w1.weight",
                &["mlp"],
            ),
            (
                "model.layers.3.block_sparse_moe.experts.5.w2.weight",
                &["mlp"],
            ),
        ]);
        assert_eq!(
            layer_index("model.layers.3.block_sparse_moe.experts.5.w1.weight"),
            Some(3)
        );
    }

    #[test]
    fn qwen2_and_qwen3() {
        check(&[
            ("model.embed_tokens.weight", &["embed"]),
            ("model.layers.4.self_attn.q_proj.bias", &["attention"]),
            ("model.layers.4.self_attn.k_proj.bias", &["attention"]),
            ("model.layers.4.self_attn.v_proj.bias", &["attention"]),
            (
                "model.layers.4.self_attn.q_norm.weight",
                &["attention", "norm"],
            ),
            (
                "model.layers.4.self_attn.k_norm.weight",
                &["attention", "norm"],
            ),
            ("model.layers.4.mlp.down_proj.weight", &["mlp"]),
            ("model.layers.4.mlp.experts.12.up_proj.weight", &["mlp"]),
            (
                "model.layers.4.mlp.shared_expert.gate_proj.weight",
                &["mlp"],
            ),
            ("model.layers.4.mlp.shared_expert_gate.weight", &["mlp"]),
            ("model.layers.4.mlp.gate.weight", &["mlp"]),
            ("model.norm.weight", &["norm"]),
            ("lm_head.weight", &["lm_head"]),
        ]);
    }

    #[test]
    fn gemma_1_2_3() {
        check(&[
            ("model.embed_tokens.weight", &["embed"]),
            ("model.layers.0.self_attn.q_proj.weight", &["attention"]),
            ("model.layers.0.mlp.gate_proj.weight", &["mlp"]),
            ("model.layers.0.input_layernorm.weight", &["norm"]),
            ("model.layers.0.post_attention_layernorm.weight", &["norm"]),
            ("model.layers.0.pre_feedforward_layernorm.weight", &["norm"]),
            (
                "model.layers.0.post_feedforward_layernorm.weight",
                &["norm"],
            ),
            (
                "model.layers.0.self_attn.q_norm.weight",
                &["attention", "norm"],
            ),
            (
                "model.layers.0.self_attn.k_norm.weight",
                &["attention", "norm"],
            ),
            ("model.norm.weight", &["norm"]),
            // Gemma 3 multimodal checkpoints prefix the language model.
            ("language_model.model.embed_tokens.weight", &["embed"]),
            (
                "language_model.model.layers.5.self_attn.o_proj.weight",
                &["attention"],
            ),
            ("language_model.model.norm.weight", &["norm"]),
        ]);
        assert_eq!(
            layer_index("language_model.model.layers.5.self_attn.o_proj.weight"),
            Some(5)
        );
    }

    #[test]
    fn phi_2_and_3() {
        check(&[
            // Phi-2 (transformers' PhiForCausalLM names).
            ("model.embed_tokens.weight", &["embed"]),
            ("model.layers.1.self_attn.q_proj.weight", &["attention"]),
            ("model.layers.1.self_attn.q_proj.bias", &["attention"]),
            ("model.layers.1.self_attn.dense.weight", &["attention"]),
            ("model.layers.1.self_attn.dense.bias", &["attention"]),
            ("model.layers.1.mlp.fc1.weight", &["mlp"]),
            ("model.layers.1.mlp.fc2.bias", &["mlp"]),
            ("model.layers.1.input_layernorm.weight", &["norm"]),
            ("model.layers.1.input_layernorm.bias", &["norm"]),
            ("model.final_layernorm.weight", &["norm"]),
            ("model.final_layernorm.bias", &["norm"]),
            ("lm_head.weight", &["lm_head"]),
            ("lm_head.bias", &["lm_head"]),
            // Phi-3.
            ("model.layers.2.self_attn.qkv_proj.weight", &["attention"]),
            ("model.layers.2.self_attn.o_proj.weight", &["attention"]),
            ("model.layers.2.mlp.gate_up_proj.weight", &["mlp"]),
            ("model.layers.2.mlp.down_proj.weight", &["mlp"]),
            ("model.layers.2.post_attention_layernorm.weight", &["norm"]),
        ]);
    }

    #[test]
    fn gpt2_with_and_without_prefix() {
        for prefix in ["transformer.", ""] {
            let cases: Vec<(String, &[&str])> = vec![
                (format!("{prefix}wte.weight"), &["embed"]),
                (format!("{prefix}wpe.weight"), &["embed"]),
                (format!("{prefix}h.3.ln_1.weight"), &["norm"]),
                (format!("{prefix}h.3.ln_1.bias"), &["norm"]),
                (format!("{prefix}h.3.attn.c_attn.weight"), &["attention"]),
                (format!("{prefix}h.3.attn.c_attn.bias"), &["attention"]),
                (format!("{prefix}h.3.attn.c_proj.weight"), &["attention"]),
                (format!("{prefix}h.3.attn.bias"), &["attention"]),
                (format!("{prefix}h.3.attn.masked_bias"), &["attention"]),
                (format!("{prefix}h.3.ln_2.weight"), &["norm"]),
                (format!("{prefix}h.3.mlp.c_fc.weight"), &["mlp"]),
                (format!("{prefix}h.3.mlp.c_proj.weight"), &["mlp"]),
                (format!("{prefix}h.3.mlp.c_proj.bias"), &["mlp"]),
                (format!("{prefix}ln_f.weight"), &["norm"]),
                (format!("{prefix}ln_f.bias"), &["norm"]),
            ];
            let cases: Vec<(&str, &[&str])> = cases.iter().map(|(t, g)| (t.as_str(), *g)).collect();
            check(&cases);
            assert_eq!(
                layer_index(&format!("{prefix}h.3.attn.c_attn.weight")),
                Some(3)
            );
            assert_eq!(layer_index(&format!("{prefix}wte.weight")), None);
        }
        check(&[("lm_head.weight", &["lm_head"])]);
    }

    #[test]
    fn tensors_in_no_group() {
        check(&[
            ("model.rotary_emb.inv_freq", &[]),
            ("score.weight", &[]),
            ("model.layers.0.weight", &[]),
            ("", &[]),
        ]);
    }

    #[test]
    fn layer_indices() {
        let cases = [
            ("model.layers.12.mlp.up_proj.weight", Some(12)),
            ("model.layers.0.input_layernorm.weight", Some(0)),
            ("transformer.h.3.attn.c_attn.weight", Some(3)),
            ("h.11.mlp.c_fc.bias", Some(11)),
            ("blocks.4.attn.qkv.weight", Some(4)),
            ("encoder.block.2.layer.1.DenseReluDense.wi.weight", Some(2)),
            ("bert.encoder.layer.9.attention.self.query.weight", Some(9)),
            // Old Phi-1.5 layout: `layers.N` with no prefix.
            ("layers.5.mixer.Wqkv.weight", Some(5)),
            ("model.layers.3.mlp.experts.7.up_proj.weight", Some(3)),
            ("model.embed_tokens.weight", None),
            ("model.norm.weight", None),
            ("lm_head.weight", None),
            ("model.layers.x.mlp.weight", None),
            ("model.layers.", None),
            ("model.layers", None),
            ("model.layers.+1.weight", None),
            ("model.mylayers.3.weight", None),
            // A number too large for usize is not a layer.
            ("model.layers.99999999999999999999999.weight", None),
        ];
        for (tensor, expected) in cases {
            assert_eq!(layer_index(tensor), expected, "layer of `{tensor}`");
        }
    }

    #[test]
    fn depth() {
        assert_eq!(depth_t(None, 32), 0.0);
        assert_eq!(depth_t(Some(0), 32), 0.0);
        assert_eq!(depth_t(Some(31), 32), 1.0);
        assert_eq!(depth_t(Some(1), 3), 0.5);
        assert_eq!(depth_t(Some(0), 1), 1.0);
        assert_eq!(depth_t(Some(0), 0), 1.0);
        assert_eq!(depth_t(None, 1), 0.0);
        assert_eq!(depth_t(Some(40), 32), 1.0);
        assert!((depth_t(Some(10), 32) - 10.0 / 31.0).abs() < 1e-15);
    }

    #[test]
    fn globs_treat_dots_as_ordinary_characters() {
        let m = |glob: &str, tensor: &str| {
            compile_glob(glob)
                .unwrap()
                .compile_matcher()
                .is_match(tensor)
        };
        assert!(m(
            "model.layers.*.mlp.*",
            "model.layers.3.mlp.up_proj.weight"
        ));
        assert!(m(
            "model.layers.*.mlp.*",
            "model.layers.31.mlp.experts.2.w1.weight"
        ));
        assert!(!m(
            "model.layers.*.mlp.*",
            "model.layers.3.self_attn.q_proj.weight"
        ));
        assert!(m("*.bias", "model.layers.3.self_attn.q_proj.bias"));
        assert!(m("*norm*", "model.norm.weight"));
        assert!(m("model.layers.?.*", "model.layers.7.mlp.up_proj.weight"));
        assert!(!m("model.layers.?.*", "model.layers.17.mlp.up_proj.weight"));
        assert!(m(
            "model.layers.1[0-5].*",
            "model.layers.12.mlp.up_proj.weight"
        ));
        assert!(m(
            "*.{q,k}_proj.weight",
            "model.layers.1.self_attn.k_proj.weight"
        ));
        assert!(!m(
            "*.{q,k}_proj.weight",
            "model.layers.1.self_attn.v_proj.weight"
        ));
        // Whole-name match, case-sensitive.
        assert!(!m("mlp", "model.layers.1.mlp.up_proj.weight"));
        assert!(!m("LM_HEAD.weight", "lm_head.weight"));
        // `**` is the same as `*` here.
        assert!(m("model.**.weight", "model.layers.1.mlp.up_proj.weight"));
        // A backslash escapes.
        assert!(m(r"a\*b", "a*b"));
        assert!(!m(r"a\*b", "axb"));
        assert!(compile_glob("model.[layers").is_err());
    }

    #[test]
    fn custom_groups() {
        let mut g = Groups::builtin();
        let globs = ["*.q_proj.*", "*.k_proj.*"]
            .iter()
            .map(|s| (s.to_string(), compile_glob(s).unwrap()))
            .collect();
        g.define("qk".into(), globs);
        assert!(g.exists("qk"));
        assert!(!g.exists("qkv"));
        assert!(g.contains("qk", "model.layers.1.self_attn.q_proj.weight"));
        assert!(!g.contains("qk", "model.layers.1.self_attn.v_proj.weight"));
        assert!(!g.contains("nope", "model.layers.1.self_attn.q_proj.weight"));
        assert_eq!(
            g.names(),
            ["embed", "attention", "mlp", "norm", "lm_head", "qk"]
        );
        assert_eq!(
            g.groups_of("model.layers.1.self_attn.q_proj.weight"),
            ["attention", "qk"]
        );
        assert_eq!(g.globs("qk").unwrap(), ["*.q_proj.*", "*.k_proj.*"]);
        assert_eq!(g.globs("mlp"), None);
        assert!(Groups::is_builtin("lm_head"));
        assert!(!Groups::is_builtin("qk"));
    }
}

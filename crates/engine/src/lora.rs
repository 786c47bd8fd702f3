//! PEFT LoRA adapters as inputs: which tensors of a model an adapter updates, and by
//! how much.
//!
//! An adapter folder holds `adapter_config.json` and `adapter_model.safetensors`. For
//! each adapted module `m` of the model, the file has two factors, `lora_A` (`r` rows)
//! and `lora_B` (`r` columns), and the module's weight `m.weight` becomes
//! `W + s·B·A` with `s = lora_alpha / r` (`lora_alpha / √r` with rsLoRA), as PEFT's
//! `merge_and_unload` computes it. An embedding's factors are `lora_embedding_A`
//! (`[r, vocab]`) and `lora_embedding_B` (`[hidden, r]`) and its update is `(B·A)ᵀ`, as is
//! a layer's saved with `fan_in_fan_out`.
//!
//! This module only reads the config and the file's header and maps each adapted
//! weight to a [`plan::LoraUpdate`]; the executor computes the update as it reads the
//! weight, chunk by chunk ([`crate::exec`]), and the plan's binder checks the factors'
//! shapes against the weight's.

use std::collections::BTreeMap;
use std::path::Path;

use reefknot_io::Checkpoint;
use reefknot_plan as plan;
use serde_json::Value;

/// The prefix PEFT puts before every module name of the model it wraps.
const PEFT_PREFIX: &str = "base_model.model.";

/// What an adapter changes in its model.
#[derive(Clone, Debug, Default)]
pub(crate) struct Updates {
    /// Each updated tensor of the model, by name, with its update (whose `input` the
    /// caller sets: it knows the adapter's place among the inputs).
    pub(crate) lora: BTreeMap<String, plan::LoraUpdate>,
    /// Tensors of the model the adapter holds a copy of, by the model's name, with the
    /// adapter's name for it: PEFT saves an adapted embedding's whole weight as
    /// `base_layer.weight` (and loads it in place of the model's), so it is read from
    /// the adapter instead.
    pub(crate) stored: BTreeMap<String, String>,
}

/// Reads the adapter `adapter` (its folder, or its `.safetensors` file beside its
/// config) against `model`, the checkpoint it is applied to. The error is a sentence
/// about the adapter.
pub(crate) fn updates(adapter: &Checkpoint, model: &Checkpoint) -> Result<Updates, String> {
    let folder = adapter
        .folder()
        .or_else(|| adapter.path().parent())
        .unwrap_or(Path::new("."));
    let config_path = folder.join("adapter_config.json");
    let text = std::fs::read_to_string(&config_path).map_err(|e| {
        format!(
            "cannot read {}: {e} (a PEFT adapter folder has adapter_config.json and \
             adapter_model.safetensors)",
            config_path.display()
        )
    })?;
    let invalid =
        |e: serde_json::Error| format!("{} is not valid JSON: {e}", config_path.display());
    let value: Value = serde_json::from_str(&text).map_err(invalid)?;
    let order: Patterns = serde_json::from_str(&text).map_err(invalid)?;
    let mut config = Config::read(&value)?;
    config.in_file_order(&order);

    // Pair the factors by module.
    let mut factors: BTreeMap<&str, Factors<'_>> = BTreeMap::new();
    let mut stored = BTreeMap::new();
    for t in adapter.tensors() {
        let name = t.name.strip_prefix(PEFT_PREFIX).unwrap_or(&t.name);
        if let Some(module) = name.strip_suffix(".base_layer.weight") {
            let weight = format!("{module}.weight");
            let Some(own) = model.get(&weight) else {
                return Err(format!(
                    "it holds a copy of `{weight}` (`{}`), which the model does not have",
                    t.name
                ));
            };
            if own.shape != t.shape {
                return Err(format!(
                    "its copy of `{weight}` has shape {:?}, the model's {:?}: the adapter was \
                     trained on a resized model (a vocabulary grown for new tokens?), which \
                     reefknot does not rebuild",
                    t.shape, own.shape
                ));
            }
            stored.insert(weight, t.name.clone());
            continue;
        }
        let Some((module, kind)) = FACTOR_SUFFIXES
            .iter()
            .find_map(|&(suffix, kind)| name.strip_suffix(suffix).map(|m| (m, kind)))
        else {
            return Err(format!(
                "tensor `{}` is not a LoRA factor (lora_A, lora_B, lora_embedding_A or \
                 lora_embedding_B) nor an adapted layer's saved weight \
                 (base_layer.weight){}; reefknot applies LoRA factors only",
                t.name,
                config.why_other_tensors()
            ));
        };
        let entry = factors.entry(module).or_default();
        let slot = match kind {
            Factor::A | Factor::EmbeddingA => &mut entry.a,
            Factor::B | Factor::EmbeddingB => &mut entry.b,
        };
        if slot.replace(t.name.as_str()).is_some() {
            return Err(format!("module `{module}` has two {kind:?} factors"));
        }
        let embedding = matches!(kind, Factor::EmbeddingA | Factor::EmbeddingB);
        if *entry.embedding.get_or_insert(embedding) != embedding {
            return Err(format!(
                "module `{module}` mixes a linear layer's factors with an embedding's"
            ));
        }
    }
    if factors.is_empty() {
        return Err("its adapter_model.safetensors holds no LoRA factors".into());
    }

    let mut out = BTreeMap::new();
    for (module, f) in factors {
        let (Some(a), Some(b)) = (f.a, f.b) else {
            let missing = if f.a.is_none() { "A" } else { "B" };
            return Err(format!("module `{module}` has no lora_{missing} factor"));
        };
        let weight = format!("{module}.weight");
        if model.get(&weight).is_none() {
            return Err(format!(
                "it adapts module `{module}`, but the model has no tensor `{weight}` (an \
                 adapter for another architecture?)"
            ));
        }
        let a_info = adapter.get(a).expect("named by the adapter's own tensors");
        if a_info.shape.len() != 2 {
            return Err(format!(
                "module `{module}`'s lora_A has shape {:?}: reefknot applies adapters of \
                 linear layers and embeddings (2-D factors) only",
                a_info.shape
            ));
        }
        let rank = a_info.shape[0];
        let (r, alpha) = config.rank_and_alpha(module);
        if r != rank {
            return Err(format!(
                "adapter_config.json gives module `{module}` rank {r}, but its lora_A has \
                 {rank} rows"
            ));
        }
        let scale = if config.rslora {
            alpha / (rank as f64).sqrt()
        } else {
            alpha / rank as f64
        };
        // Which way round: an embedding's update is transposed; a linear layer's is
        // when its factors fit the weight only that way (PEFT decides `fan_in_fan_out`
        // per layer type: Conv1D layers are stored transposed), the config's flag
        // deciding a square weight.
        let w = &model.get(&weight).expect("checked above").shape;
        let b_rows = adapter
            .get(b)
            .expect("named by the adapter's own tensors")
            .shape
            .first()
            .copied();
        let transposed = match (f.embedding == Some(true), &w[..]) {
            (true, _) => true,
            (false, [rows, cols]) if rows != cols => {
                a_info.shape[1] == *rows && b_rows == Some(*cols)
            }
            _ => config.fan_in_fan_out,
        };
        out.insert(
            weight,
            plan::LoraUpdate {
                input: usize::MAX,
                a: a.to_string(),
                b: b.to_string(),
                scale: scale as f32,
                transposed,
            },
        );
    }
    Ok(Updates { lora: out, stored })
}

/// The adapter tensor name suffixes PEFT writes, and what each is.
const FACTOR_SUFFIXES: [(&str, Factor); 4] = [
    (".lora_A.weight", Factor::A),
    (".lora_B.weight", Factor::B),
    (".lora_embedding_A", Factor::EmbeddingA),
    (".lora_embedding_B", Factor::EmbeddingB),
];

#[derive(Clone, Copy, Debug)]
enum Factor {
    A,
    B,
    EmbeddingA,
    EmbeddingB,
}

/// One module's factors, as found.
#[derive(Default)]
struct Factors<'a> {
    a: Option<&'a str>,
    b: Option<&'a str>,
    embedding: Option<bool>,
}

/// What of `adapter_config.json` the update depends on.
struct Config {
    r: usize,
    alpha: f64,
    rslora: bool,
    fan_in_fan_out: bool,
    rank_pattern: Vec<(String, usize)>,
    alpha_pattern: Vec<(String, f64)>,
    modules_to_save: bool,
    bias: String,
}

/// `rank_pattern` and `alpha_pattern` as the file orders their keys: PEFT takes the
/// first key that matches a module, in that order (serde_json's maps sort them).
#[derive(serde::Deserialize)]
struct Patterns {
    #[serde(default)]
    rank_pattern: Option<InOrder>,
    #[serde(default)]
    alpha_pattern: Option<InOrder>,
}

/// A JSON object's keys in the order written.
struct InOrder(Vec<String>);

impl<'de> serde::Deserialize<'de> for InOrder {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<InOrder, D::Error> {
        struct Keys;
        impl<'de> serde::de::Visitor<'de> for Keys {
            type Value = InOrder;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut m: M,
            ) -> Result<InOrder, M::Error> {
                let mut keys = Vec::new();
                while let Some((k, _)) = m.next_entry::<String, serde::de::IgnoredAny>()? {
                    keys.push(k);
                }
                Ok(InOrder(keys))
            }
            fn visit_unit<E>(self) -> Result<InOrder, E> {
                Ok(InOrder(Vec::new()))
            }
        }
        d.deserialize_any(Keys)
    }
}

impl Config {
    /// Orders the patterns as the file writes them.
    fn in_file_order(&mut self, order: &Patterns) {
        fn sort<T>(pattern: &mut [(String, T)], order: Option<&InOrder>) {
            let keys = order.map_or(&[][..], |o| o.0.as_slice());
            pattern.sort_by_key(|(k, _)| keys.iter().position(|o| o == k));
        }
        sort(&mut self.rank_pattern, order.rank_pattern.as_ref());
        sort(&mut self.alpha_pattern, order.alpha_pattern.as_ref());
    }

    fn read(v: &Value) -> Result<Config, String> {
        let peft_type = v.get("peft_type").and_then(Value::as_str).unwrap_or("LORA");
        if !peft_type.eq_ignore_ascii_case("LORA") {
            return Err(format!(
                "it is a {peft_type} adapter; reefknot applies LoRA adapters only"
            ));
        }
        let truthy = |key: &str| v.get(key).is_some_and(|x| x.as_bool() == Some(true));
        for (key, what) in [
            ("use_dora", "DoRA (a magnitude vector per weight)"),
            ("lora_bias", "a bias on lora_B"),
        ] {
            if truthy(key) {
                return Err(format!(
                    "it uses {what} (`{key}: true`), which reefknot does not apply yet"
                ));
            }
        }
        for key in ["layer_replication", "trainable_token_indices"] {
            if v.get(key).is_some_and(|x| !x.is_null()) {
                return Err(format!(
                    "it sets `{key}`, which reefknot does not apply yet"
                ));
            }
        }
        let r = v
            .get("r")
            .and_then(Value::as_u64)
            .filter(|&r| r > 0)
            .ok_or("adapter_config.json has no positive integer `r`")?;
        let alpha = match v.get("lora_alpha") {
            None | Some(Value::Null) => 8.0, // PEFT's default
            Some(x) => x.as_f64().ok_or("`lora_alpha` is not a number")?,
        };
        let pattern = |key: &str| -> Result<Vec<(String, f64)>, String> {
            match v.get(key) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::Object(map)) => map
                    .iter()
                    .map(|(k, x)| {
                        let x = x.as_f64().ok_or(format!("`{key}.{k}` is not a number"))?;
                        if k.contains(['*', '?', '[', '(', '|', '^', '$', '+', '\\', '{']) {
                            return Err(format!(
                                "`{key}` key `{k}` is a regular expression; reefknot matches \
                                 module names and their dotted suffixes only"
                            ));
                        }
                        Ok((k.clone(), x))
                    })
                    .collect(),
                Some(_) => Err(format!("`{key}` is not a mapping")),
            }
        };
        let rank_pattern = pattern("rank_pattern")?
            .into_iter()
            .map(|(k, x)| (k, x as usize))
            .collect();
        Ok(Config {
            r: r as usize,
            alpha,
            rslora: truthy("use_rslora"),
            fan_in_fan_out: truthy("fan_in_fan_out"),
            rank_pattern,
            alpha_pattern: pattern("alpha_pattern")?,
            modules_to_save: v
                .get("modules_to_save")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty()),
            bias: v
                .get("bias")
                .and_then(Value::as_str)
                .unwrap_or("none")
                .to_string(),
        })
    }

    /// The rank and alpha PEFT gives `module`: the first pattern key that is the
    /// module's name or a dotted suffix of it, else the config's `r` and `lora_alpha`.
    fn rank_and_alpha(&self, module: &str) -> (usize, f64) {
        let matches = |key: &str| {
            module == key
                || module
                    .strip_suffix(key)
                    .is_some_and(|rest| rest.ends_with('.'))
        };
        let r = self
            .rank_pattern
            .iter()
            .find(|(k, _)| matches(k))
            .map_or(self.r, |&(_, r)| r);
        let alpha = self
            .alpha_pattern
            .iter()
            .find(|(k, _)| matches(k))
            .map_or(self.alpha, |&(_, a)| a);
        (r, alpha)
    }

    /// Why an adapter file may hold tensors other than factors, from its config.
    fn why_other_tensors(&self) -> String {
        let mut why = Vec::new();
        if self.modules_to_save {
            why.push("`modules_to_save` keeps whole modules".to_string());
        }
        if self.bias != "none" {
            why.push(format!("`bias: {}` trains biases", self.bias));
        }
        if why.is_empty() {
            String::new()
        } else {
            format!(" ({})", why.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(v: &str) -> Result<Config, String> {
        Config::read(&serde_json::from_str(v).unwrap())
    }

    #[test]
    fn patterns_match_a_module_or_a_dotted_suffix() {
        let c = config(
            r#"{"r": 8, "lora_alpha": 16, "rank_pattern": {"up_proj": 4},
                "alpha_pattern": {"layers.1.mlp.up_proj": 2}}"#,
        )
        .unwrap();
        assert_eq!(c.rank_and_alpha("model.layers.0.mlp.up_proj"), (4, 16.0));
        assert_eq!(c.rank_and_alpha("model.layers.1.mlp.up_proj"), (4, 2.0));
        assert_eq!(
            c.rank_and_alpha("model.layers.0.mlp.gate_up_proj"),
            (8, 16.0)
        );
        assert_eq!(
            c.rank_and_alpha("model.layers.0.self_attn.q_proj"),
            (8, 16.0)
        );
    }

    /// PEFT takes the first pattern that matches, in the file's order.
    #[test]
    fn the_first_pattern_in_the_file_wins() {
        let text = r#"{"r": 8, "lora_alpha": 16, "alpha_pattern": {"up_proj": 2, "layers.1.mlp.up_proj": 6}}"#;
        let mut c = config(text).unwrap();
        c.in_file_order(&serde_json::from_str(text).unwrap());
        assert_eq!(c.rank_and_alpha("model.layers.1.mlp.up_proj"), (8, 2.0));
        let text = r#"{"r": 8, "lora_alpha": 16, "alpha_pattern": {"layers.1.mlp.up_proj": 6, "up_proj": 2}}"#;
        let mut c = config(text).unwrap();
        c.in_file_order(&serde_json::from_str(text).unwrap());
        assert_eq!(c.rank_and_alpha("model.layers.1.mlp.up_proj"), (8, 6.0));
    }

    #[test]
    fn what_is_not_applied_is_named() {
        for (text, says) in [
            (r#"{"peft_type": "IA3", "r": 8}"#, "IA3 adapter"),
            (r#"{"r": 8, "use_dora": true}"#, "DoRA"),
            (
                r#"{"r": 8, "layer_replication": [[0, 2]]}"#,
                "layer_replication",
            ),
            (r#"{"lora_alpha": 8}"#, "positive integer `r`"),
            (
                r#"{"r": 8, "alpha_pattern": {"layers\\.0.*": 2}}"#,
                "regular expression",
            ),
        ] {
            let e = config(text).err().expect(text);
            assert!(e.contains(says), "{text}: {e}");
        }
        let c = config(r#"{"r": 4, "bias": "all", "modules_to_save": ["lm_head"]}"#).unwrap();
        assert_eq!(
            c.why_other_tensors(),
            " (`modules_to_save` keeps whole modules, `bias: all` trains biases)"
        );
    }
}

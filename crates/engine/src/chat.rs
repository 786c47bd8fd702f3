//! The output's chat template (`chat_template:`), resolved when the plan is made: the
//! most common template among the inputs (`auto`), a built-in format, or a Jinja
//! template given in full.

use std::path::Path;

use reefknot_io::Checkpoint;
use serde_json::Value;

/// The built-in formats: reefknot's own templates of them.
const BUILT_IN: [(&str, &str); 4] = [
    (
        "chatml",
        concat!(
            "{%- for message in messages -%}\n",
            "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}\n",
            "{%- endfor -%}\n",
            "{%- if add_generation_prompt -%}\n",
            "{{- '<|im_start|>assistant\\n' -}}\n",
            "{%- endif -%}\n",
        ),
    ),
    (
        "llama3",
        concat!(
            "{{- bos_token -}}\n",
            "{%- for message in messages -%}\n",
            "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + ",
            "message['content'] | trim + '<|eot_id|>' -}}\n",
            "{%- endfor -%}\n",
            "{%- if add_generation_prompt -%}\n",
            "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}\n",
            "{%- endif -%}\n",
        ),
    ),
    (
        // Stanford Alpaca's prompt: an optional system text, then `### Instruction:` and
        // `### Response:` blocks separated by blank lines.
        "alpaca",
        concat!(
            "{%- for message in messages -%}\n",
            "{%- if message['role'] == 'system' -%}\n",
            "{{- message['content'] | trim + '\n\n' -}}\n",
            "{%- elif message['role'] == 'user' -%}\n",
            "{{- '### Instruction:\n' + message['content'] | trim + '\n\n' -}}\n",
            "{%- elif message['role'] == 'assistant' -%}\n",
            "{{- '### Response:\n' + message['content'] | trim + eos_token + '\n\n' -}}\n",
            "{%- endif -%}\n",
            "{%- endfor -%}\n",
            "{%- if add_generation_prompt -%}\n",
            "{{- '### Response:\n' -}}\n",
            "{%- endif -%}\n",
        ),
    ),
    (
        // Mistral's instruction format: `[INST] … [/INST]` around each user turn, the
        // system text before the first.
        "mistral",
        concat!(
            "{{- bos_token -}}\n",
            "{%- set system = messages[0]['content'] if messages and messages[0]['role'] == 'system' else none -%}\n",
            "{%- for message in messages if message['role'] != 'system' -%}\n",
            "{%- if message['role'] == 'user' -%}\n",
            "{%- if loop.first and system -%}\n",
            "{{- '[INST] ' + system + '\n\n' + message['content'] + ' [/INST]' -}}\n",
            "{%- else -%}\n",
            "{{- '[INST] ' + message['content'] + ' [/INST]' -}}\n",
            "{%- endif -%}\n",
            "{%- else -%}\n",
            "{{- ' ' + message['content'] + eos_token -}}\n",
            "{%- endif -%}\n",
            "{%- endfor -%}\n",
        ),
    ),
];

/// mergekit's other built-in names, which reefknot does not carry.
const NOT_BUILT_IN: [&str; 1] = ["exaone"];

/// The template `value` names, over the inputs `inputs` (for `auto`): `Ok(None)` when
/// `auto` finds no input with a template. The error is a sentence.
pub(crate) fn resolve(value: &str, inputs: &[&Checkpoint]) -> Result<Option<String>, String> {
    if value == "auto" {
        // The most common among the inputs (mergekit's rule); on a tie, the first met
        // (mergekit's choice then depends on a set's order).
        let mut found: Vec<(String, usize)> = Vec::new();
        for c in inputs {
            let Some(t) = crate::vocab::folder_of(c).ok().and_then(template_of) else {
                continue;
            };
            match found.iter_mut().find(|(text, _)| *text == t) {
                Some((_, n)) => *n += 1,
                None => found.push((t, 1)),
            }
        }
        let best = found.iter().map(|(_, n)| *n).max();
        return Ok(found
            .into_iter()
            .find(|(_, n)| Some(*n) == best)
            .map(|(t, _)| t));
    }
    if let Some((_, t)) = BUILT_IN.iter().find(|(name, _)| *name == value) {
        return Ok(Some((*t).to_string()));
    }
    let names = "`auto`, `alpaca`, `chatml`, `llama3` or `mistral`";
    if NOT_BUILT_IN.contains(&value) {
        return Err(format!(
            "`{value}` is not one of reefknot's built-in templates ({names}); give the \
             template itself"
        ));
    }
    if value.len() < 20 || !value.contains('{') {
        return Err(format!(
            "`{value}` is neither {names} nor a Jinja template (at least 20 characters, \
             with `{{`)"
        ));
    }
    Ok(Some(value.to_string()))
}

/// A model folder's chat template: `chat_template.jinja`, else `tokenizer_config.json`'s
/// `chat_template` (a string, or the `default` of a list of named templates), trimmed.
fn template_of(folder: &Path) -> Option<String> {
    if let Ok(t) = std::fs::read_to_string(folder.join("chat_template.jinja")) {
        return Some(t.trim().to_string()).filter(|t| !t.is_empty());
    }
    let text = std::fs::read_to_string(folder.join("tokenizer_config.json")).ok()?;
    let config: Value = serde_json::from_str(&text).ok()?;
    let t = match config.get("chat_template")? {
        Value::String(s) => s.clone(),
        Value::Array(named) => named
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))?
            .get("template")?
            .as_str()?
            .to_string(),
        _ => return None,
    };
    Some(t.trim().to_string()).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_templates_are_told_apart() {
        assert!(resolve("chatml", &[])
            .unwrap()
            .unwrap()
            .contains("<|im_start|>"));
        assert!(resolve("llama3", &[])
            .unwrap()
            .unwrap()
            .contains("<|eot_id|>"));
        let literal = "{% for m in messages %}{{ m['content'] }}{% endfor %}";
        assert_eq!(resolve(literal, &[]).unwrap().as_deref(), Some(literal));
        for (name, marker) in [("mistral", "[INST]"), ("alpaca", "### Response:")] {
            assert!(
                resolve(name, &[]).unwrap().unwrap().contains(marker),
                "{name}"
            );
        }
        assert!(resolve("exaone", &[])
            .unwrap_err()
            .contains("give the template itself"));
        assert!(resolve("chatlm", &[]).unwrap_err().contains("neither"));
        assert_eq!(resolve("auto", &[]).unwrap(), None);
    }
}

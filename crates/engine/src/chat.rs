//! The output's chat template (`chat_template:`), resolved when the plan is made: the
//! most common template among the inputs (`auto`), a built-in format, or a Jinja
//! template given in full.

use std::path::Path;

use reefknot_io::Checkpoint;
use serde_json::Value;

/// The built-in formats: reefknot's own templates of them.
const BUILT_IN: [(&str, &str); 5] = [
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
    (
        // LG's EXAONE: `[|role|]` before each turn, `[|endofturn|]` after every turn but
        // the user's (a newline), and an empty system turn when the conversation has none.
        "exaone",
        concat!(
            "{%- for message in messages -%}\n",
            "{%- if loop.first and message['role'] != 'system' -%}\n",
            "{{- '[|system|][|endofturn|]\\n' -}}\n",
            "{%- endif -%}\n",
            "{{- '[|' + message['role'] + '|]' + message['content'] -}}\n",
            "{{- '\\n' if message['role'] == 'user' else '[|endofturn|]\\n' -}}\n",
            "{%- endfor -%}\n",
            "{%- if add_generation_prompt -%}\n",
            "{{- '[|assistant|]' -}}\n",
            "{%- endif -%}\n",
        ),
    ),
];

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
    let names = "`auto`, `alpaca`, `chatml`, `exaone`, `llama3` or `mistral`";
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
        assert!(resolve("chatlm", &[]).unwrap_err().contains("neither"));
        assert_eq!(resolve("auto", &[]).unwrap(), None);
    }

    /// Each built-in template renders its format's prompt, as transformers renders chat
    /// templates (Jinja with `trim_blocks` and `lstrip_blocks`).
    #[test]
    fn the_built_in_templates_render_their_formats() {
        let render = |name: &str, system: bool| {
            let mut env = minijinja::Environment::new();
            env.set_syntax(
                minijinja::syntax::SyntaxConfig::builder()
                    .trim_blocks(true)
                    .lstrip_blocks(true)
                    .build()
                    .unwrap(),
            );
            let text = resolve(name, &[]).unwrap().unwrap();
            env.add_template("t", &text).unwrap();
            let mut messages = Vec::new();
            if system {
                messages.push(minijinja::context! { role => "system", content => "Be brief." });
            }
            messages.push(minijinja::context! { role => "user", content => "Hi" });
            messages.push(minijinja::context! { role => "assistant", content => "Hello." });
            messages.push(minijinja::context! { role => "user", content => "Why?" });
            env.get_template("t")
                .unwrap()
                .render(minijinja::context! {
                    messages => messages,
                    add_generation_prompt => true,
                    bos_token => "<s>",
                    eos_token => "</s>",
                })
                .unwrap()
        };
        let cases = [
            (
                "chatml",
                "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
                 <|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nWhy?<|im_end|>\n\
                 <|im_start|>assistant\n",
            ),
            (
                "llama3",
                "<s><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>\
                 <|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>\
                 <|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>\
                 <|start_header_id|>user<|end_header_id|>\n\nWhy?<|eot_id|>\
                 <|start_header_id|>assistant<|end_header_id|>\n\n",
            ),
            (
                "mistral",
                "<s>[INST] Be brief.\n\nHi [/INST] Hello.</s>[INST] Why? [/INST]",
            ),
            (
                "alpaca",
                "Be brief.\n\n### Instruction:\nHi\n\n### Response:\nHello.</s>\n\n\
                 ### Instruction:\nWhy?\n\n### Response:\n",
            ),
            (
                "exaone",
                "[|system|]Be brief.[|endofturn|]\n[|user|]Hi\n[|assistant|]Hello.[|endofturn|]\n\
                 [|user|]Why?\n[|assistant|]",
            ),
        ];
        for (name, want) in cases {
            assert_eq!(render(name, true), want, "{name}");
        }
        // EXAONE opens with an empty system turn when the conversation has none.
        assert!(render("exaone", false).starts_with("[|system|][|endofturn|]\n[|user|]Hi\n"));
    }
}

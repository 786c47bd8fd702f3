//! Every recipe shown in `docs/recipes.md`, and every recipe in `recipes/`, is valid.

use std::path::{Path, PathBuf};

use reefknot_recipe::Recipe;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The ```yaml blocks of a Markdown text, dedented, with their first line number.
fn yaml_blocks(markdown: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, usize, String)> = None;
    for (n, line) in markdown.lines().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        match &mut current {
            None if trimmed == "```yaml" => current = Some((n + 2, indent, String::new())),
            None => {}
            Some(_) if trimmed == "```" => {
                let (start, _, text) = current.take().unwrap();
                blocks.push((start, text));
            }
            Some((_, fence, text)) => {
                text.push_str(line.get(*fence..).unwrap_or(""));
                text.push('\n');
            }
        }
    }
    assert!(current.is_none(), "unclosed code block");
    blocks
}

#[test]
fn examples_in_the_recipe_reference_are_valid() {
    let path = workspace().join("docs/recipes.md");
    let markdown = std::fs::read_to_string(&path).unwrap();
    let blocks = yaml_blocks(&markdown);
    assert!(blocks.len() >= 7, "found only {} examples", blocks.len());
    for (line, yaml) in blocks {
        let name = format!("docs/recipes.md:{line}");
        if let Err(e) = Recipe::parse(&yaml, Path::new("docs"), &name) {
            panic!("the example at {name} is rejected: {e:?}");
        }
    }
}

#[test]
fn example_recipes_are_valid() {
    let dir = workspace().join("recipes");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            if let Err(e) = Recipe::load(&path) {
                panic!("{} is rejected: {e:?}", path.display());
            }
        }
    }
}

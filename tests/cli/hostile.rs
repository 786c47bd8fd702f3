//! Hostile or unlucky input (issue: nothing a user has is ever lost): weight files that
//! live in the output folder behind symlinks, hard links or index entries; index
//! entries and copied files that lead outside the model; FIFOs where files belong;
//! plugins a recipe should not load; absurd limits. Each is refused with a message
//! and nothing the user had is touched.

use std::fs;
use std::path::Path;

use reefknot_io::Dtype;

use crate::util::*;

/// Moves `models/code/model.safetensors` to `store/code.safetensors` and leaves a
/// symlink (absolute, as the Hugging Face cache's are relative) in its place.
#[cfg(unix)]
fn symlink_code_weights_into(ws: &Workspace, store: &str) -> std::path::PathBuf {
    let store = ws.path().join(store);
    fs::create_dir_all(&store).unwrap();
    let moved = store.join("code.safetensors");
    fs::rename(ws.model("code").join("model.safetensors"), &moved).unwrap();
    std::os::unix::fs::symlink(&moved, ws.model("code").join("model.safetensors")).unwrap();
    moved
}

#[cfg(unix)]
#[test]
fn a_weight_file_symlinked_from_the_output_folder_is_never_deleted() {
    let ws = Workspace::new(Dtype::F32, None);
    ws.recipe("r.yaml", &recipe_with("ties"));
    let moved = symlink_code_weights_into(&ws, "store");
    let before = fs::read(&moved).unwrap();
    let stderr = fails(
        &run_in(ws.path(), &["merge", "r.yaml", "-o", "store", "--force"]),
        2,
    );
    assert!(stderr.contains("would overwrite the input"), "{stderr}");
    assert_eq!(fs::read(&moved).unwrap(), before);
}

#[cfg(unix)]
#[test]
fn a_weight_file_hard_linked_into_the_output_folder_is_refused() {
    let ws = Workspace::new(Dtype::F32, None);
    ws.recipe("r.yaml", &recipe_with("ties"));
    fs::create_dir(ws.path().join("out")).unwrap();
    fs::hard_link(
        ws.model("math").join("model.safetensors"),
        ws.path().join("out/old.safetensors"),
    )
    .unwrap();
    let stderr = fails(
        &run_in(ws.path(), &["merge", "r.yaml", "-o", "out", "--force"]),
        2,
    );
    assert!(
        stderr.contains("would overwrite the input") && stderr.contains("math"),
        "{stderr}"
    );
    assert!(ws.path().join("out/old.safetensors").exists());
}

/// Writes an index for model `name` mapping each of `tensors` to `shard`.
fn index_to(ws: &Workspace, name: &str, tensors: &[String], shard: &str) {
    let dir = ws.model(name);
    let map: serde_json::Map<String, serde_json::Value> = tensors
        .iter()
        .map(|t| (t.clone(), serde_json::Value::from(shard)))
        .collect();
    let index = serde_json::json!({ "metadata": {}, "weight_map": map });
    fs::write(dir.join(reefknot_io::INDEX_NAME), index.to_string()).unwrap();
}

#[test]
fn index_entries_that_leave_the_model_folder_are_refused() {
    let ws = Workspace::new(Dtype::F32, None);
    ws.recipe("r.yaml", &recipe_with("ties"));
    fs::create_dir(ws.path().join("out")).unwrap();
    let names: Vec<String> = tensors(&ws.model("code"))
        .into_iter()
        .map(|t| t.0)
        .collect();
    fs::rename(
        ws.model("code").join("model.safetensors"),
        ws.path().join("out/code.safetensors"),
    )
    .unwrap();
    let outside = ws.path().join("out/code.safetensors").display().to_string();
    for entry in ["../../out/code.safetensors", outside.as_str()] {
        index_to(&ws, "code", &names, entry);
        let stderr = fails(
            &run_in(ws.path(), &["merge", "r.yaml", "-o", "out", "--force"]),
            1,
        );
        assert!(
            stderr.contains("lies outside the model's folder"),
            "{entry}: {stderr}"
        );
        assert!(ws.path().join("out/code.safetensors").exists());
    }
}

#[test]
fn errors_about_files_that_are_not_safetensors_do_not_quote_them() {
    let ws = Workspace::new(Dtype::F32, None);
    ws.recipe("r.yaml", &recipe_with("ties"));
    let secret = ws.path().join("secret.txt");
    fs::write(&secret, "root:*:19000:0:99999:7:::\n").unwrap();
    let weights = ws.model("code").join("model.safetensors");
    fs::remove_file(&weights).unwrap();
    fs::copy(&secret, &weights).unwrap();
    let stderr = fails(&run_in(ws.path(), &["check", "r.yaml"]), 1);
    let first8 = u64::from_le_bytes(*b"root:*:1").to_string();
    assert!(!stderr.contains(&first8), "{stderr}");
    assert!(!stderr.contains("root:"), "{stderr}");
    assert!(stderr.contains("not a safetensors file"), "{stderr}");
}

#[cfg(unix)]
#[test]
fn base_files_are_copied_only_from_inside_the_base_folder() {
    let ws = Workspace::new(Dtype::F32, None);
    ws.recipe("r.yaml", &recipe_with("ties"));
    let secret = ws.path().join("secret.txt");
    fs::write(&secret, "not the model's").unwrap();
    std::os::unix::fs::symlink(&secret, ws.model("base").join("tokenizer.model")).unwrap();
    // A link inside the folder is fine.
    std::os::unix::fs::symlink("tokenizer.json", ws.model("base").join("vocab.json")).unwrap();
    let (_, stderr) = text(&run_in(ws.path(), &["merge", "r.yaml", "-o", "out"]));
    assert!(ws.path().join("out/model.safetensors").exists(), "{stderr}");
    assert!(!ws.path().join("out/tokenizer.model").exists());
    assert!(
        stderr.contains("links outside the model's folder"),
        "{stderr}"
    );
    let copied = ws.path().join("out/vocab.json");
    assert!(copied.is_file() && !copied.is_symlink());
}

#[cfg(unix)]
fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

/// A FIFO where a weight file, a model folder or a plugin belongs is refused at once
/// (each command runs under a deadline: before, `open` waited for a writer forever).
#[cfg(unix)]
#[test]
fn fifos_are_refused_without_blocking() {
    let ws = Workspace::new(Dtype::F32, None);
    mkfifo(&ws.path().join("fifo"));
    let weights = ws.model("code").join("model.safetensors");
    fs::remove_file(&weights).unwrap();
    mkfifo(&weights);
    let cases = [
        (
            recipe_with("ties"),
            "models/code/model.safetensors: not a regular file (a FIFO)",
        ),
        (
            recipe_with("ties").replace("models/code", "fifo"),
            "fifo: not a regular file (a FIFO)",
        ),
        (
            format!("{}plugins: [fifo]\n", recipe_with("ties")),
            "not a regular file",
        ),
    ];
    for (recipe, expected) in cases {
        ws.recipe("r.yaml", &recipe);
        let mut child = reefknot()
            .args(["check", "r.yaml"])
            .current_dir(ws.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                child.kill().unwrap();
                panic!("`check` blocked on a FIFO: {expected}");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            stderr.contains(expected),
            "expected {expected:?}:\n{stderr}"
        );
    }
}

#[test]
fn plugins_load_only_after_the_expressions_parse() {
    let ws = Workspace::new(Dtype::F32, None);
    ws.recipe(
        "r.yaml",
        &format!(
            "{}plugins: [missing.so]\n",
            recipe_with("ties(trim(0.2) |>")
        ),
    );
    let stderr = fails(&run_in(ws.path(), &["check", "r.yaml"]), 2);
    assert!(stderr.contains("reefknot::syntax"), "{stderr}");
    assert!(!stderr.contains("cannot load"), "{stderr}");
}

#[test]
fn a_recipe_loads_no_plugin_from_outside_its_folder() {
    let ws = Workspace::new(Dtype::F32, None);
    let elsewhere = tempfile::tempdir().unwrap();
    let lib = elsewhere.path().join("libevil.so");
    fs::write(&lib, "not even a library").unwrap();
    for path in [lib.display().to_string(), "../x/libevil.so".to_string()] {
        if path.starts_with("..") {
            fs::create_dir_all(ws.path().join("../x")).ok();
            fs::copy(&lib, ws.path().join("../x/libevil.so")).ok();
        }
        ws.recipe(
            "r.yaml",
            &format!("{}plugins: [\"{path}\"]\n", recipe_with("ties")),
        );
        let stderr = fails(&run_in(ws.path(), &["check", "r.yaml"]), 2);
        assert!(
            stderr.contains("lies outside the recipe's folder") && stderr.contains("--plugin"),
            "{stderr}"
        );
        // Named on the command line as well, it is trusted (and then fails to load
        // as the non-library it is).
        let stderr = fails(
            &run_in(ws.path(), &["check", "r.yaml", "--plugin", &path]),
            2,
        );
        assert!(!stderr.contains("lies outside"), "{stderr}");
    }
    let _ = fs::remove_dir_all(ws.path().join("../x"));
}

/// The Hugging Face cache keeps a snapshot's files as relative symlinks into the
/// repository's blob store: a sharded base laid out so merges, and its non-weight
/// files are copied, although every link leads out of the snapshot folder.
#[cfg(unix)]
#[test]
fn hugging_face_cache_snapshots_link_into_their_blobs() {
    let ws = Workspace::new(Dtype::F32, Some(60_000));
    let repo = ws.path().join("hub/models--org--base");
    let snapshot = repo.join("snapshots/0123abcd");
    fs::create_dir_all(repo.join("blobs")).unwrap();
    fs::create_dir_all(&snapshot).unwrap();
    for (i, entry) in fs::read_dir(ws.model("base")).unwrap().enumerate() {
        let path = entry.unwrap().path();
        let blob = format!("blob{i:04}");
        fs::rename(&path, repo.join("blobs").join(&blob)).unwrap();
        std::os::unix::fs::symlink(
            Path::new("../../blobs").join(&blob),
            snapshot.join(path.file_name().unwrap()),
        )
        .unwrap();
    }
    assert!(snapshot.join(reefknot_io::INDEX_NAME).is_symlink());
    ws.recipe(
        "r.yaml",
        &recipe_with("ties").replace("models/base", "hub/models--org--base/snapshots/0123abcd"),
    );
    let (_, stderr) = text(&run_in(ws.path(), &["merge", "r.yaml", "-o", "out"]));
    assert!(ws.path().join("out/config.json").is_file(), "{stderr}");
    assert_eq!(
        fs::read_to_string(ws.path().join("out/tokenizer.json")).unwrap(),
        "{\"version\": \"1.0\"}\n"
    );
    assert!(!stderr.contains("not copied"), "{stderr}");
}

/// An expression of 100 000 stages took 2.9 GB and 19 s to check: now one past the
/// length or stage limit is refused at once, with a short message.
#[test]
fn expressions_past_the_limits_are_refused() {
    let ws = Workspace::new(Dtype::F32, None);
    let huge = format!("sum{}", " |> scale(1)".repeat(100_000));
    ws.recipe("huge.yaml", &recipe_with(&huge));
    let stderr = fails(&run_in(ws.path(), &["check", "huge.yaml"]), 2);
    assert!(
        stderr.contains("reefknot::too_large")
            && stderr.contains(&format!("the expression is {} bytes long", huge.len()))
            && stderr.len() < 4_000,
        "{}",
        &stderr[..stderr.len().min(4_000)]
    );
    let long = format!("sum{}", " |> scale(1)".repeat(64));
    ws.recipe("long.yaml", &recipe_with(&long));
    let stderr = fails(&run_in(ws.path(), &["check", "long.yaml"]), 2);
    assert!(
        stderr.contains("the pipeline has more than 64 stages"),
        "{stderr}"
    );
}

/// A mistake past column 65 535 of a recipe line made the diagnostic renderer panic
/// (exit 101): the line is cut around the caret, and the header gives the true column.
#[test]
fn an_error_past_column_65535_renders_without_a_panic() {
    let ws = Workspace::new(Dtype::F32, None);
    let pad = " ".repeat(100_000);
    ws.recipe(
        "r.yaml",
        &format!("{}dtype:{pad}bogus\n", recipe_with("sum")),
    );
    let stderr = fails(&run_in(ws.path(), &["check", "r.yaml"]), 2);
    assert!(
        !stderr.contains("panicked")
            && stderr.contains(&format!("r.yaml:7:{}", 100_000 + 7))
            && stderr.contains("bogus")
            && stderr.len() < 4_000,
        "{}",
        &stderr[..stderr.len().min(4_000)]
    );
}

//! Models named by Hugging Face repo id (`org/name`, `org/name@revision`), found in the
//! local Hugging Face cache, offline: the layout `huggingface-cli download` and
//! `transformers` write (`HUB/models--org--name/refs/REVISION` holding a commit hash,
//! `HUB/models--org--name/snapshots/COMMIT/` the files).

use std::path::{Path, PathBuf};

/// A repo id and revision as a recipe writes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RepoId<'a> {
    /// `org/name`.
    pub(crate) repo: &'a str,
    /// A branch, tag or commit (`main` when not given).
    pub(crate) revision: &'a str,
}

impl<'a> RepoId<'a> {
    /// `text` as a repo id, when it has the shape of one: two names of letters, digits,
    /// `.`, `_` and `-` joined by one `/`, then optionally `@` and a revision.
    pub(crate) fn parse(text: &'a str) -> Option<RepoId<'a>> {
        let (repo, revision) = match text.split_once('@') {
            Some((repo, revision)) => (repo, revision),
            None => (text, "main"),
        };
        let name = |s: &str| {
            !s.is_empty()
                && !s.starts_with(['.', '-'])
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        };
        let (org, model) = repo.split_once('/')?;
        let revision_ok = !revision.is_empty()
            && !revision
                .split('/')
                .any(|p| p.is_empty() || p == "." || p == "..")
            && revision
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'));
        (name(org) && name(model) && revision_ok).then_some(RepoId { repo, revision })
    }
}

/// Where a model is: `local` itself when it exists; else, when `written` (the name as
/// the user wrote it) is a Hugging Face repo id of a repo the local cache holds, the
/// snapshot of that revision; else `local`, for the caller to report missing. A repo the
/// cache holds without the revision asked for is an error naming where it looked.
pub(crate) fn resolve(written: &str, local: &Path) -> Result<PathBuf, Box<crate::ErrorKind>> {
    if local.exists() {
        return Ok(local.to_path_buf());
    }
    let (Some(id), Some(hub)) = (RepoId::parse(written), cache_dir()) else {
        return Ok(local.to_path_buf());
    };
    match snapshot(&hub, &id) {
        // Not a repo the cache knows: a local path after all, reported as such.
        None => Ok(local.to_path_buf()),
        Some(found) => found.map_err(|looked| {
            Box::new(crate::ErrorKind::NotInCache {
                repo: id.repo.to_string(),
                revision: id.revision.to_string(),
                local: local.to_path_buf(),
                looked,
            })
        }),
    }
}

/// The Hugging Face hub cache: `HF_HUB_CACHE`, else `HF_HOME/hub`, else
/// `XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`.
pub(crate) fn cache_dir() -> Option<PathBuf> {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("HF_HUB_CACHE")
        .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
        .or_else(|| var("HF_HOME").map(|h| h.join("hub")))
        .or_else(|| var("XDG_CACHE_HOME").map(|c| c.join("huggingface/hub")))
        .or_else(|| var("HOME").map(|h| h.join(".cache/huggingface/hub")))
}

/// Where `id` is in the cache `hub`: the snapshot folder of its revision; `None` when
/// the cache has no such repo (then the name was likely a local path), `Some(Err)` with
/// the repo's folder when it lacks the revision.
pub(crate) fn snapshot(hub: &Path, id: &RepoId<'_>) -> Option<Result<PathBuf, PathBuf>> {
    let repo = hub.join(format!("models--{}", id.repo.replace('/', "--")));
    if !repo.is_dir() {
        return None;
    }
    let commit = std::fs::read_to_string(repo.join("refs").join(id.revision))
        .map(|c| c.trim().to_string())
        .unwrap_or_else(|_| id.revision.to_string());
    let snapshot = repo.join("snapshots").join(commit);
    Some(if snapshot.is_dir() {
        Ok(snapshot)
    } else {
        Err(repo)
    })
}

/// The repo id of a cache snapshot folder (`…/models--org--name/snapshots/COMMIT` →
/// `org/name`), what a model card's `base_model` names.
pub(crate) fn repo_of_snapshot(path: &Path) -> Option<String> {
    let parent = path.parent()?;
    if parent.file_name()? != "snapshots" {
        return None;
    }
    let repo = parent
        .parent()?
        .file_name()?
        .to_str()?
        .strip_prefix("models--")?;
    let (org, name) = repo.split_once("--")?;
    Some(format!("{org}/{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_and_what_is_not_one() {
        let id = RepoId::parse("meta-llama/Llama-3.2-1B").unwrap();
        assert_eq!((id.repo, id.revision), ("meta-llama/Llama-3.2-1B", "main"));
        let id = RepoId::parse("org/m@v1.0").unwrap();
        assert_eq!((id.repo, id.revision), ("org/m", "v1.0"));
        for not in [
            "models/base/x",
            "/abs/path",
            "./rel",
            "../up/one",
            "name",
            "org/",
            "org/m@",
            "org/m@../x",
            "a b/c",
        ] {
            assert_eq!(RepoId::parse(not), None, "{not}");
        }
    }

    #[test]
    fn snapshots_name_their_repo() {
        let p = Path::new("/c/hub/models--meta-llama--Llama-3.2-1B/snapshots/0abc");
        assert_eq!(
            repo_of_snapshot(p).as_deref(),
            Some("meta-llama/Llama-3.2-1B")
        );
        assert_eq!(repo_of_snapshot(Path::new("/m/models/base")), None);
    }

    #[test]
    fn a_revision_is_a_ref_or_a_commit() {
        let hub = tempfile::tempdir().unwrap();
        let repo = hub.path().join("models--org--m");
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::create_dir_all(repo.join("snapshots/abc123")).unwrap();
        std::fs::write(repo.join("refs/main"), "abc123\n").unwrap();
        let main = RepoId::parse("org/m").unwrap();
        let found = Some(Ok(repo.join("snapshots/abc123")));
        assert_eq!(snapshot(hub.path(), &main), found);
        let commit = RepoId::parse("org/m@abc123").unwrap();
        assert_eq!(snapshot(hub.path(), &commit), found);
        let missing = RepoId::parse("org/m@v2").unwrap();
        assert_eq!(snapshot(hub.path(), &missing), Some(Err(repo)));
        let absent = RepoId::parse("org/other").unwrap();
        assert_eq!(snapshot(hub.path(), &absent), None);
    }
}

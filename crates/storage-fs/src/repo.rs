//! Repository identity: which project owns which repository key.
//!
//! Prodigy named a project's namespace after the base name of its directory,
//! so `~/work/api` and `~/oss/api` silently shared one. Here the first
//! project to register a base name gets it as its key; the registration
//! (`repos/<key>.json`) records the canonical project path. Another project
//! with the same base name gets `<name>-<8 hex>`, where the hex digits are
//! the start of the BLAKE3 hash of its canonical path; if even that is taken
//! (by a hash-prefix collision) it gets 16, then 64 hex digits. The result is
//! stable: a project always finds its own registration again, and keys are
//! never reassigned. Registration happens under `locks/repos.lock`.
//!
//! A base name that is not a valid identifier is mapped to one by a fixed
//! rule (leading dots and whitespace dropped, separators, control characters
//! and Unicode bidirectional controls replaced by `_`, cut to 160 bytes,
//! trailing whitespace dropped, `root` if nothing is left) before the steps
//! above.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use storage_core::{Error, LockKey, LockWait, RepoKey, Result};

use crate::layout::Layout;
use crate::lock::{FileLock, this_process};
use crate::{fsx, time};

/// A registration: `repos/<key>.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoRecord {
    /// The key.
    pub key: RepoKey,
    /// The canonical project path (lossy UTF-8, for people).
    pub project: String,
    /// BLAKE3 of the canonical path's bytes: what identity is compared by.
    pub project_id: String,
    /// When the key was registered.
    pub registered_at: String,
}

/// The project's canonical path and its identity hash. A git worktree is
/// its main repository (see [`main_worktree`]).
pub(crate) fn identify(project: &Path) -> Result<(PathBuf, String)> {
    let canonical = std::fs::canonicalize(project)
        .map_err(|e| Error::io("resolve project directory", project, e))?;
    let canonical = main_worktree(&canonical).unwrap_or(canonical);
    let id = blake3::hash(canonical.as_os_str().as_bytes())
        .to_hex()
        .to_string();
    Ok((canonical, id))
}

/// The main working tree of the git worktree at `dir`, or `None` if `dir`
/// is not a linked worktree.
///
/// Prodigy runs MapReduce agents in git worktrees (`session-<uuid>`) and
/// passes a worktree as the project root; each would otherwise register as
/// a repository of its own. A linked worktree has a `.git` *file* holding
/// `gitdir: <main>/.git/worktrees/<name>`, and that directory's `commondir`
/// names the main repository's git directory (relative to it, usually
/// `../..`), whose parent is the main working tree. Read the way git does
/// (`git rev-parse --git-common-dir`), without running git. Anything that
/// does not fit this shape (a submodule's `.git` file has no `commondir`; a
/// bare main repository has no working tree) is not resolved: the project is
/// then itself.
#[must_use]
pub fn main_worktree(dir: &Path) -> Option<PathBuf> {
    let dot_git = dir.join(".git"); // git: a repository's own files, not the store
    if !std::fs::symlink_metadata(&dot_git).ok()?.is_file() {
        return None;
    }
    let text = std::fs::read_to_string(&dot_git).ok()?;
    let gitdir = text.lines().next()?.strip_prefix("gitdir:")?.trim();
    let gitdir = if Path::new(gitdir).is_absolute() {
        PathBuf::from(gitdir)
    } else {
        dir.join(gitdir) // git: a repository's own files, not the store
    };
    let common = std::fs::read_to_string(gitdir.join("commondir")).ok()?; // git: a repository's own files, not the store
    let common = common.trim_end_matches(['\n', '\r']);
    let common = if Path::new(common).is_absolute() {
        PathBuf::from(common)
    } else {
        gitdir.join(common) // git: a repository's own files, not the store
    };
    let common = std::fs::canonicalize(common).ok()?;
    if common.file_name()? != ".git" {
        return None;
    }
    let main = common.parent()?.to_path_buf();
    main.is_dir().then_some(main)
}

/// The base key for a canonical project path (see the module docs).
#[must_use]
pub fn base_key(canonical: &Path) -> RepoKey {
    let raw = canonical
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mapped: String = raw
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c.is_control() || storage_core::is_bidi_control(c) {
                '_'
            } else {
                c
            }
        })
        .collect();
    let mut s = mapped
        .trim_start_matches(|c: char| c == '.' || c.is_whitespace())
        .to_owned();
    while s.len() > 160 {
        s.pop();
    }
    s.truncate(s.trim_end().len());
    if s.is_empty() {
        "root".clone_into(&mut s);
    }
    RepoKey::new(s).expect("the mapping rule only produces valid keys")
}

fn candidates(base: &RepoKey, id: &str) -> Vec<RepoKey> {
    let mut out = vec![base.clone()];
    for n in [8, 16, 64] {
        out.push(RepoKey::new(format!("{base}-{}", &id[..n])).expect("suffix keeps it valid"));
    }
    out
}

fn read_record(layout: &Layout, key: &RepoKey) -> Result<Option<RepoRecord>> {
    let path = layout.repo_record(key);
    match fsx::read_optional(&path)? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Corrupt {
                path,
                line: None,
                reason: e.to_string(),
            }),
    }
}

/// Looks a project's key up without registering it.
pub(crate) fn find(layout: &Layout, project: &Path) -> Result<Option<RepoKey>> {
    let (canonical, id) = identify(project)?;
    for key in candidates(&base_key(&canonical), &id) {
        match read_record(layout, &key)? {
            Some(r) if r.project_id == id => return Ok(Some(key)),
            Some(_) => {}
            None => return Ok(None),
        }
    }
    Ok(None)
}

/// The key [`register`] would give `project`, without writing anything.
pub(crate) fn proposed(layout: &Layout, project: &Path) -> Result<RepoKey> {
    let (canonical, id) = identify(project)?;
    for key in candidates(&base_key(&canonical), &id) {
        match read_record(layout, &key)? {
            Some(r) if r.project_id != id => {}
            _ => return Ok(key),
        }
    }
    Ok(RepoKey::new(format!("{}-{id}", base_key(&canonical))).expect("valid"))
}

/// The project's key, registering it if it has none.
pub(crate) fn register(layout: &Layout, project: &Path) -> Result<RepoKey> {
    if let Some(key) = find(layout, project)? {
        return Ok(key);
    }
    let (canonical, id) = identify(project)?;
    let lock_key = LockKey::new("repos").expect("a fixed valid key");
    let _lock = FileLock::acquire(
        &layout.internal_lock(&lock_key),
        &lock_key,
        &this_process("repos"),
        LockWait::Timeout(std::time::Duration::from_secs(30)),
    )?;
    for key in candidates(&base_key(&canonical), &id) {
        match read_record(layout, &key)? {
            Some(r) if r.project_id == id => return Ok(key),
            Some(_) => {}
            None => {
                let record = RepoRecord {
                    key: key.clone(),
                    project: canonical.to_string_lossy().into_owned(),
                    project_id: id,
                    registered_at: time::now(),
                };
                fsx::create_dir_all(&layout.repos_dir())?;
                let bytes = serde_json::to_vec_pretty(&record).expect("serializable");
                fsx::write_atomic(&layout.repo_record(&key), &bytes)?;
                tracing::info!(key = %key, project = %record.project, "registered repository");
                return Ok(key);
            }
        }
    }
    // Only reachable if `repos/` was edited by hand: the 64-hex key is the
    // whole hash of this project's path.
    Err(Error::Corrupt {
        path: layout.repos_dir(),
        line: None,
        reason: format!(
            "every key for `{}` is registered to another project; remove the stale registrations",
            canonical.display()
        ),
    })
}

/// Every registration, sorted by key.
pub(crate) fn all(layout: &Layout) -> Result<Vec<RepoRecord>> {
    let mut out = Vec::new();
    for entry in fsx::read_dir_sorted(&layout.repos_dir())? {
        let name = entry.name.to_string_lossy();
        let Some(key) = name
            .strip_suffix(".json")
            .and_then(|k| RepoKey::new(k).ok())
        else {
            continue;
        };
        if let Some(r) = read_record(layout, &key)? {
            out.push(r);
        }
    }
    Ok(out)
}

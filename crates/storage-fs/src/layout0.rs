//! Prodigy's older layout ("layout 0") as the store *reads* it: the one
//! module of `storage-fs` that knows where layout 0 keeps a document the
//! current layout keeps somewhere else.
//!
//! # Why the store reads two layouts
//!
//! Prodigy adopts the store one module at a time, and users run an older
//! Prodigy beside a newer one, so one root holds both layouts at once,
//! written by two generations of code: an unported module (or an older
//! binary) goes on writing dead letters to their layout-0 path after the
//! ported ones started reading the current one. Refusing such a root, or
//! reading only the current paths, hides those records. So
//! [`FsStorage`](crate::FsStorage) serves a root in either layout or both:
//!
//! - **Reads** reach both. A document that exists at both paths is read
//!   from the one modified last (the current path on a tie): whichever
//!   generation wrote it last wrote the newer version. The other copy stays
//!   on disk, untouched, and `prodigy-storage upgrade` keeps it in its
//!   backup; nothing is hidden for good.
//! - **Writes** go to the current layout only; nothing is created or
//!   rewritten at a layout-0 path.
//! - **Deletes** remove the document at both paths: a dead letter that was
//!   reprocessed must not come back from its older copy. The exception is a
//!   repository's `session_state.json`: the older Prodigy's one live file
//!   for whichever session it runs, rewritten by rename at any moment, so
//!   it is never removed by the store (a deleted session it names is read
//!   from it again until the older Prodigy moves on or the upgrade imports
//!   it).
//!
//! The documents layout 0 keeps elsewhere (the rest of layout 0 is where the
//! current layout reads it already; see `docs/storage-layout.md`):
//!
//! | document | layout 0 | current |
//! |---|---|---|
//! | dead letter | `dlq/<repo>/<job>/mapreduce/dlq/<job>/items/<item>.json` | `dlq/<repo>/<job>/items/<item>.json` |
//! | dead-letter index | `dlq/<repo>/<job>/mapreduce/dlq/<job>/index.json` | `dlq/<repo>/<job>/index.json` |
//! | a session's workflow checkpoint | `state/<session>/checkpoints/<wf>.checkpoint.json`, read so only without `layout.json` and with a unified session of that id (with `layout.json`, that directory is a repository's) | `sessions/<session>/checkpoints/<wf>.checkpoint.json` |
//! | a repository's session record | `state/<repo>/sessions/session_state.json` (keyed by its `session_id`) | `state/<repo>/sessions/<session>.json` |
//!
//! A job's log rotated at 100 MB (`events-<ts>.<ts2>.jsonl.gz`, plain text
//! despite its name) is read in place as the part of the log named
//! `events-<ts>.<ts2>.jsonl`, the name the upgrade renames it to (so that a
//! reader's cursor into it stays valid across the upgrade; where both names
//! exist, the renamed one is read). A real gzip file of that name is not a
//! part of the log.
//!
//! Not read in place: what the API has no home for (reduce-phase
//! checkpoints, archives, orphan registries, agent logs), which stays
//! Prodigy's.
//!
//! It is the cargo feature `layout-0` (on by default): without it, every
//! function here answers "layout 0 keeps nothing elsewhere", and
//! [`FsStorage::open`](crate::FsStorage::open) refuses a root holding
//! layout-0 data ([`Error::UpgradeRequired`](storage_core::Error)) as it
//! did before the store could read one. The CLI enables it with its
//! `legacy-import`, so `cargo xtask size` counts it there.

/// Whether this build reads layout 0 in place (feature `layout-0`).
pub(crate) const ENABLED: bool = cfg!(feature = "layout-0");

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use storage_core::{DocKey, RepoKey, Result, Scope, SessionId};

use crate::fsx;
use crate::layout::{self, Layout};

/// Where layout 0 may keep the document `key`, if it keeps that kind of
/// document somewhere other than the current layout (whether or not a file
/// is there). For a session, a repository's `session_state.json`, which is
/// that session's only if its bytes say so ([`accepts`]).
#[must_use]
fn older_path(layout: &Layout, key: &DocKey) -> Option<PathBuf> {
    if !ENABLED {
        return None;
    }
    match key {
        DocKey::DeadLetter { repo, job, item } => Some(
            nested_dlq(layout, repo, job.as_str())
                .join("items")
                .join(format!("{item}.json")),
        ),
        DocKey::DeadLetterIndex { repo, job } => {
            Some(nested_dlq(layout, repo, job.as_str()).join("index.json"))
        }
        DocKey::SessionWorkflowCheckpoint { session, workflow } => {
            session_slot(layout, session).map(|d| d.join(format!("{workflow}.checkpoint.json")))
        }
        DocKey::Session { repo, .. } => Some(session_state_file(layout, repo)),
        _ => None,
    }
}

/// Whether `bytes`, read from `key`'s layout-0 path, are `key`'s document:
/// always, but for a repository's `session_state.json`, which an older
/// Prodigy rewrites for whichever session it runs (what it named when
/// another check ran may have changed since).
fn accepts(key: &DocKey, bytes: &[u8]) -> bool {
    match key {
        DocKey::Session { session, .. } => session_id_in(bytes).as_ref() == Some(session),
        _ => true,
    }
}

/// The current path and, when layout 0 has a file for `key` too, its
/// layout-0 path, the one to read first (the one modified last; the
/// current one on a tie) first. One failed `stat` when layout 0 has none.
fn candidates(layout: &Layout, key: &DocKey) -> Vec<PathBuf> {
    let current = layout.document(key);
    let Some(older) = older_path(layout, key) else {
        return vec![current];
    };
    let Some(older_time) = modified(&older) else {
        return vec![current];
    };
    match modified(&current) {
        Some(current_time) if current_time >= older_time => vec![current, older],
        _ => vec![older, current],
    }
}

/// `key`'s document as the store reads it, with the file it came from:
/// from the layout-0 path or the current one, whichever was modified last
/// (see the module docs); from the other if that one is gone by the time
/// it is read, or is another session's `session_state.json`.
pub(crate) fn read(layout: &Layout, key: &DocKey) -> Result<Option<(PathBuf, Vec<u8>)>> {
    let current = layout.document(key);
    for path in candidates(layout, key) {
        if let Some(bytes) = fsx::read_optional(&path)?
            && (path == current || accepts(key, &bytes))
        {
            return Ok(Some((path, bytes)));
        }
    }
    Ok(None)
}

/// The file [`read`] would read `key` from (for its size and time), without
/// reading it unless that is a `session_state.json` to check.
#[must_use]
pub(crate) fn winner(layout: &Layout, key: &DocKey) -> PathBuf {
    let current = layout.document(key);
    for path in candidates(layout, key) {
        let ours = path == current
            || !matches!(key, DocKey::Session { .. })
            || fsx::read_optional(&path)
                .ok()
                .flatten()
                .is_some_and(|bytes| accepts(key, &bytes));
        if ours {
            return path;
        }
    }
    current
}

/// The layout-0 copy of `key` a deletion removes too (a reprocessed dead
/// letter must not come back from it); never an older Prodigy's live
/// `session_state.json` (see the module docs).
#[must_use]
pub(crate) fn older_copy_to_delete(layout: &Layout, key: &DocKey) -> Option<PathBuf> {
    match key {
        DocKey::Session { .. } => None,
        _ => older_path(layout, key),
    }
}

/// The keys of `scope` that layout 0 holds at its own paths.
pub(crate) fn older_keys(layout: &Layout, scope: &Scope) -> Result<Vec<DocKey>> {
    if !ENABLED {
        return Ok(Vec::new());
    }
    let dir = match scope {
        Scope::DeadLetters(repo, job) => nested_dlq(layout, repo, job.as_str()).join("items"),
        Scope::SessionWorkflowCheckpoints(session) => match session_slot(layout, session) {
            Some(dir) => dir,
            None => return Ok(Vec::new()),
        },
        Scope::Sessions(repo) => {
            let id = session_state_id(&session_state_file(layout, repo));
            return Ok(id
                .map(|session| DocKey::Session {
                    repo: repo.clone(),
                    session,
                })
                .into_iter()
                .collect());
        }
        _ => return Ok(Vec::new()),
    };
    Ok(fsx::read_dir_sorted(&dir)?
        .into_iter()
        .filter(|e| e.file_type.is_file())
        .filter_map(|e| layout::key_for_name(scope, &e.name.to_string_lossy()))
        .collect())
}

/// Whether `key`, as the current layout's listing of `scope` names it, is
/// really a layout-0 file standing for another key: a repository's
/// `session_state.json` is listed as a session called `session_state`,
/// and is the session its `session_id` names.
#[must_use]
pub(crate) fn is_alias(layout: &Layout, key: &DocKey) -> bool {
    if !ENABLED {
        return false;
    }
    match key {
        DocKey::Session { repo, session } if session.as_str() == "session_state" => {
            session_state_id(&session_state_file(layout, repo)).is_some()
        }
        _ => false,
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::symlink_metadata(path)
        .ok()
        .filter(std::fs::Metadata::is_file)?
        .modified()
        .ok()
}

/// `dlq/<repo>/<job>/mapreduce/dlq/<job>/`: the doubly nested job directory
/// layout 0 wrote (joining two base paths by accident).
fn nested_dlq(layout: &Layout, repo: &RepoKey, job: &str) -> PathBuf {
    layout
        .dlq_repo_dir(repo)
        .join(job)
        .join("mapreduce")
        .join("dlq")
        .join(job)
}

/// `state/<session>/checkpoints/`: layout 0 keyed a session's workflow
/// checkpoints by putting the session id in the repository slot. In the
/// current layout that directory is a repository's own workflow
/// checkpoints, so it is read as a session's only where the root has no
/// `layout.json` (layout 0 alone wrote it) and the store has a unified
/// session of that id (the upgrade's rule); never for a session id that
/// cannot be a repository key.
fn session_slot(layout: &Layout, session: &SessionId) -> Option<PathBuf> {
    let slot = RepoKey::new(session.as_str()).ok()?;
    if std::fs::symlink_metadata(layout.version_file()).is_ok() {
        return None;
    }
    let unified = layout.document(&DocKey::UnifiedSession {
        session: session.clone(),
    });
    let has_session = std::fs::symlink_metadata(&unified).is_ok()
        || std::fs::symlink_metadata(layout.unified_session_dir(session)).is_ok();
    has_session.then(|| layout.workflow_checkpoints_dir(&slot))
}

/// `state/<repo>/sessions/session_state.json`: layout 0's one session
/// record per repository.
fn session_state_file(layout: &Layout, repo: &RepoKey) -> PathBuf {
    layout.sessions_dir(repo).join("session_state.json")
}

/// The session a repository's `session_state.json` holds, if it names a
/// valid one other than `session_state` (which the current layout's
/// listing names already).
fn session_state_id(path: &Path) -> Option<SessionId> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.is_file() || meta.len() > 64 * 1024 * 1024 {
        return None;
    }
    let id = session_id_in(&fsx::read_optional(path).ok()??)?;
    (id.as_str() != "session_state").then_some(id)
}

/// The valid `session_id` a JSON document names, if any.
fn session_id_in(bytes: &[u8]) -> Option<SessionId> {
    let doc: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    SessionId::new(doc.get("session_id")?.as_str()?).ok()
}

/// The name under which the file `name` at `path` in a job's event-log
/// directory is a part of the log, if it is a log rotated by an older
/// Prodigy: `<stem>.jsonl.gz` holding plain text (not gzip) is read as
/// `<stem>.jsonl` (module docs). Reads the file's first two bytes.
pub(crate) fn rotated_log_name(name: &str, path: &Path) -> Option<String> {
    if !ENABLED || name.starts_with('.') {
        return None;
    }
    let logical = name.strip_suffix(".gz")?;
    // Reason: the older Prodigy names them exactly so.
    #[allow(clippy::case_sensitive_file_extension_comparisons)]
    let is_jsonl = logical.ends_with(".jsonl");
    if !is_jsonl {
        return None;
    }
    let mut magic = [0u8; 2];
    let mut file = std::fs::File::open(path).ok()?;
    let n = std::io::Read::read(&mut file, &mut magic).ok()?;
    (n < 2 || magic != [0x1f, 0x8b]).then(|| logical.to_owned())
}

//! How the store's keys become columns and numbers.
//!
//! - A [`DocKey`] becomes `(kind, repo, parent, id, version)`, the primary
//!   key of `documents`: `repo` is `''` for the global kinds (unified
//!   sessions and what belongs to them), `parent` is what the document
//!   belongs to within its repository (a job, a session, an extension
//!   kind), and the columns a kind does not use hold `''` (or `0`), which
//!   no valid identifier can be, so two keys never share a row.
//! - A [`LockKey`] becomes a 64-bit advisory lock id, and an event log a
//!   notification channel name: both are hashes (BLAKE3) of the PostgreSQL
//!   schema and the key, so two stores in one database never share a lock or
//!   a channel. A collision of two ids could only make two locks contend
//!   (never let two holders in) and a channel wake a follower for nothing.

use std::fmt::Write as _;

use storage_core::{
    DocKey, DocName, ExtKind, ItemId, JobId, LockKey, RepoKey, Scope, SessionId, WorkflowId,
};

/// The `kind` column of each [`DocKey`] variant (also the schema's `CHECK`).
pub(crate) const SESSION: &str = "session";
pub(crate) const JOB_CHECKPOINT: &str = "job_checkpoint";
pub(crate) const JOB_METADATA: &str = "job_metadata";
pub(crate) const WORKFLOW_CHECKPOINT: &str = "workflow_checkpoint";
pub(crate) const DEAD_LETTER: &str = "dead_letter";
pub(crate) const DEAD_LETTER_INDEX: &str = "dead_letter_index";
pub(crate) const SESSION_JOB: &str = "session_job";
pub(crate) const UNIFIED_SESSION: &str = "unified_session";
pub(crate) const SESSION_CHECKPOINT: &str = "session_checkpoint";
pub(crate) const SESSION_WORKFLOW_CHECKPOINT: &str = "session_workflow_checkpoint";
pub(crate) const EXTENSION: &str = "extension";

/// A document's primary key as the `documents` table stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DocColumns<'a> {
    pub kind: &'static str,
    /// `''` for the global kinds.
    pub repo: &'a str,
    /// The job, session or extension kind it belongs to; `''` for none.
    pub parent: &'a str,
    pub id: &'a str,
    pub version: i64,
}

/// Why a key has no columns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum KeyProblem {
    /// A checkpoint version over `i64::MAX` (PostgreSQL's `bigint`).
    VersionTooLarge(u64),
    /// A kind of key newer than this build (`DocKey` is `#[non_exhaustive]`).
    UnknownKind(String),
}

fn doc<'a>(
    kind: &'static str,
    repo: Option<&'a RepoKey>,
    parent: &'a str,
    id: &'a str,
    version: i64,
) -> DocColumns<'a> {
    DocColumns {
        kind,
        repo: repo.map_or("", RepoKey::as_str),
        parent,
        id,
        version,
    }
}

/// The columns of `key`.
pub(crate) fn columns(key: &DocKey) -> Result<DocColumns<'_>, KeyProblem> {
    Ok(match key {
        DocKey::Session { repo, session } => doc(SESSION, Some(repo), "", session.as_str(), 0),
        DocKey::JobCheckpoint { repo, job, version } => doc(
            JOB_CHECKPOINT,
            Some(repo),
            job.as_str(),
            "",
            i64::try_from(*version).map_err(|_| KeyProblem::VersionTooLarge(*version))?,
        ),
        DocKey::JobMetadata { repo, job } => doc(JOB_METADATA, Some(repo), job.as_str(), "", 0),
        DocKey::WorkflowCheckpoint { repo, workflow } => {
            doc(WORKFLOW_CHECKPOINT, Some(repo), "", workflow.as_str(), 0)
        }
        DocKey::DeadLetter { repo, job, item } => {
            doc(DEAD_LETTER, Some(repo), job.as_str(), item.as_str(), 0)
        }
        DocKey::DeadLetterIndex { repo, job } => {
            doc(DEAD_LETTER_INDEX, Some(repo), job.as_str(), "", 0)
        }
        DocKey::SessionJob { repo, session } => {
            doc(SESSION_JOB, Some(repo), "", session.as_str(), 0)
        }
        DocKey::UnifiedSession { session } => doc(UNIFIED_SESSION, None, "", session.as_str(), 0),
        DocKey::SessionCheckpoint { session } => {
            doc(SESSION_CHECKPOINT, None, "", session.as_str(), 0)
        }
        DocKey::SessionWorkflowCheckpoint { session, workflow } => doc(
            SESSION_WORKFLOW_CHECKPOINT,
            None,
            session.as_str(),
            workflow.as_str(),
            0,
        ),
        DocKey::Extension { repo, kind, name } => {
            doc(EXTENSION, Some(repo), kind.as_str(), name.as_str(), 0)
        }
        other => return Err(KeyProblem::UnknownKind(other.kind().to_owned())),
    })
}

/// The `(kind, repo, parent)` a listing of `scope` selects (`''` for the
/// columns its kind does not use), or `None` for a kind of scope newer
/// than this build (`Scope` is `#[non_exhaustive]`).
pub(crate) fn scope_columns(scope: &Scope) -> Option<(&'static str, &str, &str)> {
    Some(match scope {
        Scope::Sessions(r) => (SESSION, r.as_str(), ""),
        Scope::JobCheckpoints(r, j) => (JOB_CHECKPOINT, r.as_str(), j.as_str()),
        Scope::WorkflowCheckpoints(r) => (WORKFLOW_CHECKPOINT, r.as_str(), ""),
        Scope::DeadLetters(r, j) => (DEAD_LETTER, r.as_str(), j.as_str()),
        Scope::SessionJobs(r) => (SESSION_JOB, r.as_str(), ""),
        Scope::UnifiedSessions => (UNIFIED_SESSION, "", ""),
        Scope::SessionWorkflowCheckpoints(s) => (SESSION_WORKFLOW_CHECKPOINT, "", s.as_str()),
        Scope::Extension(r, k) => (EXTENSION, r.as_str(), k.as_str()),
        _ => return None,
    })
}

/// The key of a listed row of `scope`: its `id` and `version` columns
/// (the others are the scope's). An error names the value that is not a
/// valid identifier (a row written by hand).
pub(crate) fn key_in_scope(scope: &Scope, id: &str, version: i64) -> Result<DocKey, String> {
    let bad = |e: storage_core::IdError| e.to_string();
    Ok(match scope {
        Scope::Sessions(repo) => DocKey::Session {
            repo: repo.clone(),
            session: SessionId::new(id).map_err(bad)?,
        },
        Scope::JobCheckpoints(repo, job) => DocKey::JobCheckpoint {
            repo: repo.clone(),
            job: job.clone(),
            version: u64::try_from(version).map_err(|_| format!("negative version {version}"))?,
        },
        Scope::WorkflowCheckpoints(repo) => DocKey::WorkflowCheckpoint {
            repo: repo.clone(),
            workflow: WorkflowId::new(id).map_err(bad)?,
        },
        Scope::DeadLetters(repo, job) => DocKey::DeadLetter {
            repo: repo.clone(),
            job: job.clone(),
            item: ItemId::new(id).map_err(bad)?,
        },
        Scope::SessionJobs(repo) => DocKey::SessionJob {
            repo: repo.clone(),
            session: SessionId::new(id).map_err(bad)?,
        },
        Scope::UnifiedSessions => DocKey::UnifiedSession {
            session: SessionId::new(id).map_err(bad)?,
        },
        Scope::SessionWorkflowCheckpoints(session) => DocKey::SessionWorkflowCheckpoint {
            session: session.clone(),
            workflow: WorkflowId::new(id).map_err(bad)?,
        },
        Scope::Extension(repo, kind) => DocKey::Extension {
            repo: repo.clone(),
            kind: kind.clone(),
            name: DocName::new(id).map_err(bad)?,
        },
        other => return Err(format!("a scope this build does not know: {other:?}")),
    })
}

/// A repository named by a row (an error names an invalid one).
pub(crate) fn repo_from_row(repo: &str) -> Result<RepoKey, String> {
    RepoKey::new(repo).map_err(|e| e.to_string())
}

/// An extension kind named by a row (an error names an invalid one).
pub(crate) fn kind_from_row(kind: &str) -> Result<ExtKind, String> {
    ExtKind::new(kind).map_err(|e| e.to_string())
}

/// A job named by a row (an error names an invalid one).
pub(crate) fn job_from_row(job: &str) -> Result<JobId, String> {
    JobId::new(job).map_err(|e| e.to_string())
}

fn hash(parts: &[&str]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    for p in parts {
        // Length-prefixed, so that ("ab", "c") and ("a", "bc") differ.
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    *h.finalize().as_bytes()
}

/// The advisory lock id of resume lock `key` in `schema`.
pub(crate) fn lock_id(schema: &str, key: &LockKey) -> i64 {
    let h = hash(&["prodigy lock", schema, key.as_str()]);
    i64::from_le_bytes(h[..8].try_into().expect("8 bytes"))
}

/// The transaction-level advisory lock id that serialises schema migrations of `schema`.
pub(crate) fn migration_lock_id(schema: &str) -> i64 {
    let h = hash(&["prodigy schema migration", schema]);
    i64::from_le_bytes(h[..8].try_into().expect("8 bytes"))
}

/// The halves of an advisory lock id as `pg_locks` shows them
/// (`classid` the high 32 bits, `objid` the low 32 bits).
pub(crate) fn lock_id_halves(id: i64) -> (i64, i64) {
    let bits = id.cast_unsigned();
    (
        i64::from(u32::try_from(bits >> 32).expect("32 bits")),
        i64::from(u32::try_from(bits & 0xffff_ffff).expect("32 bits")),
    )
}

/// The notification channel of the event log of `repo`/`job` in `schema`:
/// `prodigy_events_` and 24 hex digits, a valid identifier well under
/// PostgreSQL's 63 bytes (a repo and a job id may be 255 bytes each).
pub(crate) fn channel(schema: &str, repo: &RepoKey, job: &JobId) -> String {
    let h = hash(&["prodigy events", schema, repo.as_str(), job.as_str()]);
    let mut name = String::from("prodigy_events_");
    for b in &h[..12] {
        let _ = write!(name, "{b:02x}");
    }
    name
}

#[cfg(test)]
mod tests;

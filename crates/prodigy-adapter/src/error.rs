//! The adapter's error: the store's errors as they are, and the refusals
//! that belong to the components (a missing checkpoint version, a session
//! that exists already, a status change Prodigy's lifecycle forbids).

use storage_core::{JobId, LockHolder, RepoKey, SessionId};

use crate::sessions::SessionStatus;

/// Errors from the adapter's components.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store failed or refused (a held lock is
    /// [`storage_core::Error::Locked`], naming its holder).
    #[error(transparent)]
    Storage(#[from] storage_core::Error),

    /// The job has no checkpoint, or not the version asked for.
    #[error(
        "job `{job}` of repository `{repo}` has no checkpoint{}; {}",
        version.map_or_else(String::new, |v| format!(" version {v}")),
        kept_text(kept)
    )]
    CheckpointNotFound {
        /// The repository.
        repo: RepoKey,
        /// The job.
        job: JobId,
        /// The version asked for; `None` for the latest.
        version: Option<u64>,
        /// The versions the store keeps for the job, oldest first.
        kept: Vec<u64>,
    },

    /// No session has this id.
    #[error("there is no session `{0}`; list the sessions to see which exist")]
    SessionNotFound(SessionId),

    /// A session with this id exists already.
    #[error(
        "session `{0}` exists already; load and update it, or create the new one under another id"
    )]
    SessionExists(SessionId),

    /// Prodigy's session lifecycle does not allow this status change.
    #[error("session `{session}` cannot go from {from} to {to}")]
    InvalidTransition {
        /// The session.
        session: SessionId,
        /// Its status now, as stored (it may be one this build does not know).
        from: String,
        /// The status asked for.
        to: SessionStatus,
    },
}

fn kept_text(kept: &[u64]) -> String {
    if kept.is_empty() {
        "it has none: it never saved one, or it was deleted".to_owned()
    } else {
        let list: Vec<String> = kept.iter().map(u64::to_string).collect();
        format!("the versions kept are {}", list.join(", "))
    }
}

impl Error {
    /// Whether this is a refusal to lock because another process holds it.
    #[must_use]
    pub fn is_locked(&self) -> bool {
        matches!(self, Error::Storage(storage_core::Error::Locked { .. }))
    }

    /// Who holds the lock, when this is a refusal to lock and the holder
    /// left its description.
    #[must_use]
    pub fn lock_holder(&self) -> Option<&LockHolder> {
        match self {
            Error::Storage(storage_core::Error::Locked { holder, .. }) => holder.as_ref(),
            _ => None,
        }
    }
}

/// `Result` with the adapter's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

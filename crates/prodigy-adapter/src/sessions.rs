//! [`SessionManager`]: Prodigy's unified sessions (`unified_session/`:
//! `storage.rs`, `manager.rs`, `lifecycle.rs`), global and keyed by id.
//!
//! A session is kept as the JSON Prodigy serializes (`UnifiedSession`), so
//! the manager touches only the fields its operations are about: `status`,
//! `updated_at`, `completed_at`. A status change follows Prodigy's
//! lifecycle (`validate_transition`): from `Initializing` to anything; from
//! `Running` to `Paused`, `Completed` or `Failed`; from `Paused` back to
//! `Running` or to `Completed` or `Failed`; from `Failed` back to `Running`
//! (a retry, which clears `completed_at`); to the same status always;
//! never out of `Completed` or `Cancelled`. `Completed` and `Failed` set
//! `completed_at`.
//!
//! An update reads, changes and saves the session in one call on the
//! blocking pool, serialized within the manager. Prodigy resumes a session
//! in one process at a time (its resume lock), which is what keeps two
//! processes from updating one session at once.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use serde_json::{Map, Value, json};
use storage_core::{SessionId, Skipped, StorageExt, UnifiedSession};
use storage_tokio::AsyncStorage;

use crate::error::{Error, Result};
use crate::time::rfc3339;

/// A unified session's status (Prodigy's `SessionStatus`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SessionStatus {
    /// Created, not started.
    Initializing,
    /// Running.
    Running,
    /// Paused (interrupted), resumable.
    Paused,
    /// Finished successfully.
    Completed,
    /// Finished with an error; may be retried.
    Failed,
    /// Cancelled by the user.
    Cancelled,
}

impl SessionStatus {
    /// The name Prodigy writes.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            SessionStatus::Initializing => "Initializing",
            SessionStatus::Running => "Running",
            SessionStatus::Paused => "Paused",
            SessionStatus::Completed => "Completed",
            SessionStatus::Failed => "Failed",
            SessionStatus::Cancelled => "Cancelled",
        }
    }

    /// The status a stored name stands for.
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        [
            SessionStatus::Initializing,
            SessionStatus::Running,
            SessionStatus::Paused,
            SessionStatus::Completed,
            SessionStatus::Failed,
            SessionStatus::Cancelled,
        ]
        .into_iter()
        .find(|s| s.as_str() == name)
    }

    /// Whether Prodigy's lifecycle allows going from `self` to `to`.
    #[must_use]
    pub fn may_become(self, to: SessionStatus) -> bool {
        use SessionStatus::{Completed, Failed, Initializing, Paused, Running};
        // Nothing leaves `Completed` or `Cancelled` but to itself.
        self == to
            || matches!(
                (self, to),
                (Initializing, Running | Paused | Completed | Failed)
                    | (Running | Paused, Completed | Failed)
                    | (Running, Paused)
                    | (Paused | Failed, Running)
            )
    }
}

impl std::fmt::Display for SessionStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a new session runs, for [`new_session`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionKind {
    /// A workflow run: its id and name.
    Workflow {
        /// `workflow_id`.
        workflow_id: String,
        /// `workflow_name`.
        workflow_name: String,
    },
    /// A MapReduce job.
    MapReduce {
        /// `job_id`.
        job_id: String,
    },
}

/// A new session in the shape Prodigy's `UnifiedSession::new_workflow` and
/// `new_mapreduce` give it: `Initializing`, started and updated `now`.
pub fn new_session(id: &SessionId, kind: &SessionKind, now: SystemTime) -> Result<UnifiedSession> {
    let now = rfc3339(now);
    let (session_type, workflow_data, mapreduce_data) = match kind {
        SessionKind::Workflow {
            workflow_id,
            workflow_name,
        } => (
            "Workflow",
            json!({
                "workflow_id": workflow_id, "workflow_name": workflow_name,
                "current_step": 0, "total_steps": 0, "completed_steps": [],
                "variables": {}, "iterations_completed": 0, "files_changed": 0,
                "worktree_name": null
            }),
            Value::Null,
        ),
        SessionKind::MapReduce { job_id } => (
            "MapReduce",
            Value::Null,
            json!({
                "job_id": job_id, "total_items": 0, "processed_items": 0,
                "failed_items": 0, "agent_count": 0, "phase": "Setup",
                "reduce_results": null
            }),
        ),
    };
    let doc = json!({
        "id": id.as_str(),
        "session_type": session_type,
        "status": SessionStatus::Initializing.as_str(),
        "started_at": now,
        "updated_at": now,
        "completed_at": null,
        "metadata": {},
        "checkpoints": [],
        "timings": {},
        "error": null,
        "workflow_data": workflow_data,
        "mapreduce_data": mapreduce_data,
    });
    Ok(UnifiedSession::from_json(doc).map_err(storage_core::Error::from)?)
}

/// Every session that loads, and the ones skipped, with why.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct Sessions {
    /// The sessions, sorted by id.
    pub sessions: Vec<UnifiedSession>,
    /// Unparsable sessions, or sessions filed under another id.
    pub skipped: Vec<Skipped>,
}

/// Creates, updates, loads, lists and deletes unified sessions.
#[derive(Clone, Debug)]
pub struct SessionManager {
    store: AsyncStorage,
    updating: Arc<Mutex<()>>,
}

impl SessionManager {
    /// The sessions of `store`.
    #[must_use]
    pub fn new(store: AsyncStorage) -> Self {
        Self {
            store,
            updating: Arc::new(Mutex::new(())),
        }
    }

    /// Saves a new session; one with its id already there is
    /// [`Error::SessionExists`].
    pub async fn create(&self, session: &UnifiedSession) -> Result<()> {
        let (session, updating) = (session.clone(), Arc::clone(&self.updating));
        self.store
            .run(move |s| {
                let _one_at_a_time = updating.lock().unwrap_or_else(PoisonError::into_inner);
                if s.load_unified_session(session.id())?.is_some() {
                    return Err(Error::SessionExists(session.id().clone()));
                }
                Ok(s.save_unified_session(&session)?)
            })
            .await
    }

    /// The session `id`; a missing one is [`Error::SessionNotFound`].
    pub async fn load(&self, id: &SessionId) -> Result<UnifiedSession> {
        self.store
            .load_unified_session(id)
            .await?
            .ok_or_else(|| Error::SessionNotFound(id.clone()))
    }

    /// Changes the session's status as Prodigy's lifecycle allows, setting
    /// `updated_at` (and `completed_at`, see the module docs); returns the
    /// session as saved.
    pub async fn update_status(&self, id: &SessionId, to: SessionStatus) -> Result<UnifiedSession> {
        let session = id.clone();
        self.update(id, move |json| {
            let from = json
                .get("status")
                .and_then(Value::as_str)
                .unwrap_or("no status");
            if !SessionStatus::parse(from).is_some_and(|f| f.may_become(to)) {
                return Err(Error::InvalidTransition {
                    session,
                    from: from.to_owned(),
                    to,
                });
            }
            let now = rfc3339(SystemTime::now());
            if from == SessionStatus::Failed.as_str() && to == SessionStatus::Running {
                json.insert("completed_at".into(), Value::Null);
            }
            if matches!(to, SessionStatus::Completed | SessionStatus::Failed) {
                json.insert("completed_at".into(), Value::String(now));
            }
            json.insert("status".into(), Value::String(to.as_str().to_owned()));
            Ok(())
        })
        .await
    }

    /// Changes the session's JSON with `change` and sets `updated_at`, as
    /// one read-change-save; returns the session as saved. `change` must
    /// keep the `id`.
    pub async fn update<F>(&self, id: &SessionId, change: F) -> Result<UnifiedSession>
    where
        F: FnOnce(&mut Map<String, Value>) -> Result<()> + Send + 'static,
    {
        let (id, updating) = (id.clone(), Arc::clone(&self.updating));
        self.store
            .run(move |s| {
                let _one_at_a_time = updating.lock().unwrap_or_else(PoisonError::into_inner);
                let session = s
                    .load_unified_session(&id)?
                    .ok_or_else(|| Error::SessionNotFound(id.clone()))?;
                let mut json = session.json().clone();
                change(&mut json)?;
                json.insert(
                    "updated_at".into(),
                    Value::String(rfc3339(SystemTime::now())),
                );
                let session = UnifiedSession::from_json(Value::Object(json))
                    .map_err(storage_core::Error::from)?;
                if session.id() != &id {
                    return Err(storage_core::Error::KeyMismatch {
                        record: UnifiedSession::LABEL,
                        expected: id.to_string(),
                        found: session.id().to_string(),
                    }
                    .into());
                }
                s.save_unified_session(&session)?;
                Ok(session)
            })
            .await
    }

    /// Every session that loads, and the ones skipped with why (Prodigy
    /// skips unparsable session files silently).
    pub async fn list(&self) -> Result<Sessions> {
        let (sessions, skipped) = self.store.unified_sessions().await?;
        Ok(Sessions { sessions, skipped })
    }

    /// Removes the session, its checkpoint and its workflow checkpoints;
    /// `false` if there was none.
    pub async fn delete(&self, id: &SessionId) -> Result<bool> {
        Ok(self.store.delete_unified_session(id).await?)
    }
}

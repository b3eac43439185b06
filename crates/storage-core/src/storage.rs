//! The `Storage` trait: the one API for every storage operation.
//!
//! The trait is deliberately small and untyped (documents are JSON values
//! addressed by a [`DocKey`]); [`StorageExt`] adds the typed record methods on
//! top of it for every implementation at once, so an implementation cannot
//! get the typed layer wrong.
//!
//! All methods take `&self`: implementations synchronise internally, and the
//! on-disk one also across processes.

use std::time::Duration;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::id::{ItemId, JobId, LockKey, RepoKey, SessionId, WorkflowId};
use crate::record::{
    DeadLetterItem, EventRecord, JobCheckpoint, LockHolder, SessionJobMapping, SessionRecord,
    WorkflowCheckpoint,
};

/// The address of one JSON document in the store.
///
/// Deliberately exhaustive: every implementation must store every kind of
/// document, so a new kind is a breaking change that the compiler points out.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DocKey {
    /// A session's state.
    Session {
        /// Repository.
        repo: RepoKey,
        /// Session.
        session: SessionId,
    },
    /// Version `version` of a MapReduce job's state.
    JobCheckpoint {
        /// Repository.
        repo: RepoKey,
        /// Job.
        job: JobId,
        /// Checkpoint version (`checkpoint-v<N>`).
        version: u64,
    },
    /// A job's checkpoint metadata (`{path, version, created_at, size_bytes}`).
    JobMetadata {
        /// Repository.
        repo: RepoKey,
        /// Job.
        job: JobId,
    },
    /// A workflow checkpoint.
    WorkflowCheckpoint {
        /// Repository.
        repo: RepoKey,
        /// Workflow.
        workflow: WorkflowId,
    },
    /// A dead-lettered item of a job.
    DeadLetter {
        /// Repository.
        repo: RepoKey,
        /// Job.
        job: JobId,
        /// Item.
        item: ItemId,
    },
    /// The dead-letter index of a job (`{item_count, item_ids, job_id, updated_at}`).
    DeadLetterIndex {
        /// Repository.
        repo: RepoKey,
        /// Job.
        job: JobId,
    },
    /// The job a session runs.
    SessionJob {
        /// Repository.
        repo: RepoKey,
        /// Session.
        session: SessionId,
    },
}

impl DocKey {
    /// The repository the document belongs to.
    #[must_use]
    pub fn repo(&self) -> &RepoKey {
        match self {
            DocKey::Session { repo, .. }
            | DocKey::JobCheckpoint { repo, .. }
            | DocKey::JobMetadata { repo, .. }
            | DocKey::WorkflowCheckpoint { repo, .. }
            | DocKey::DeadLetter { repo, .. }
            | DocKey::DeadLetterIndex { repo, .. }
            | DocKey::SessionJob { repo, .. } => repo,
        }
    }
}

/// A family of documents to list; listings are sorted by key. Exhaustive, like [`DocKey`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every session of a repository.
    Sessions(RepoKey),
    /// Every checkpoint version of a job, oldest first.
    JobCheckpoints(RepoKey, JobId),
    /// Every workflow checkpoint of a repository.
    WorkflowCheckpoints(RepoKey),
    /// Every dead-lettered item of a job.
    DeadLetters(RepoKey, JobId),
    /// Every session-to-job mapping of a repository.
    SessionJobs(RepoKey),
}

/// How long to wait for a lock another process holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockWait {
    /// Fail at once with [`Error::Locked`].
    NoWait,
    /// Wait up to this long, then fail with [`Error::Locked`].
    Timeout(Duration),
}

/// What reading an event log found besides its records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EventLogSummary {
    /// Records delivered to the visitor.
    pub records: u64,
    /// Unterminated, unparsable last lines (a writer crashed mid-line), one per file at most.
    pub torn_tails: Vec<TornTail>,
}

/// An unterminated last line that is not valid JSON: reported, never an error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    /// The file, as the implementation names it.
    pub file: String,
    /// Its 1-based line number.
    pub line: u64,
    /// How many bytes it holds.
    pub bytes: u64,
}

/// A held lock; dropping it releases the lock.
///
/// The guard owns whatever keeps the lock (an open file with a kernel `flock`
/// for the on-disk store), so a process that dies releases its locks too.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct LockGuard {
    key: LockKey,
    _held: Box<dyn Send + Sync>,
}

impl LockGuard {
    /// Wraps `held`, whose drop releases the lock. For implementations.
    pub fn new(key: LockKey, held: Box<dyn Send + Sync>) -> Self {
        Self { key, _held: held }
    }

    /// The lock's key.
    #[must_use]
    pub fn key(&self) -> &LockKey {
        &self.key
    }

    /// Releases the lock now (the same as dropping the guard).
    pub fn release(self) {}
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGuard")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// The unified, synchronous storage API.
///
/// # Contract (checked by the `conformance` suite)
///
/// - `put` replaces a document atomically: a reader, or a crash, sees the old
///   or the new document, never a mix; `Ok` means it is durable.
/// - `get` returns exactly the JSON that was `put`, unknown fields included.
/// - `list` is sorted by key and never shows temp files or debris.
/// - `append_events` adds all of its records, in order, as whole lines, even
///   when other processes append to the same log at the same time.
/// - `read_events` delivers records in append order; a torn last line is
///   reported in the summary, a corrupt earlier line is [`Error::Corrupt`].
/// - `lock` is exclusive across threads and processes, and a lock whose holder
///   died is free again.
pub trait Storage: Send + Sync {
    /// Stores `doc` at `key`, replacing any earlier document atomically and durably.
    fn put(&self, key: &DocKey, doc: &Value) -> Result<()>;

    /// The document at `key`, or `None`.
    fn get(&self, key: &DocKey) -> Result<Option<Value>>;

    /// Removes the document at `key`; `false` if there was none.
    fn delete(&self, key: &DocKey) -> Result<bool>;

    /// The keys in `scope`, sorted.
    fn list(&self, scope: &Scope) -> Result<Vec<DocKey>>;

    /// The jobs of `repo` that have state (checkpoints or metadata), sorted.
    fn jobs(&self, repo: &RepoKey) -> Result<Vec<JobId>>;

    /// Appends `events` to the log of `job`, in order, durably.
    fn append_events(&self, repo: &RepoKey, job: &JobId, events: &[EventRecord]) -> Result<()>;

    /// Streams the log of `job` to `visit`, in order; memory does not grow with the log.
    fn read_events(
        &self,
        repo: &RepoKey,
        job: &JobId,
        visit: &mut dyn FnMut(EventRecord),
    ) -> Result<EventLogSummary>;

    /// The jobs of `repo` that have an event log, sorted.
    fn event_logs(&self, repo: &RepoKey) -> Result<Vec<JobId>>;

    /// Takes the exclusive lock `key`, recording `holder` for messages.
    fn lock(&self, key: &LockKey, holder: &LockHolder, wait: LockWait) -> Result<LockGuard>;
}

fn typed<R>(
    value: Option<Value>,
    parse: impl FnOnce(Value) -> Result<R, crate::record::RecordError>,
) -> Result<Option<R>> {
    value.map(|v| parse(v).map_err(Error::from)).transpose()
}

fn check_id(record: &'static str, expected: &str, found: &str) -> Result<()> {
    if expected == found {
        Ok(())
    } else {
        Err(Error::KeyMismatch {
            record,
            expected: expected.to_owned(),
            found: found.to_owned(),
        })
    }
}

/// Typed record methods for every [`Storage`].
pub trait StorageExt: Storage {
    /// Saves a session under its `session_id`.
    fn save_session(&self, repo: &RepoKey, session: &SessionRecord) -> Result<()> {
        let key = DocKey::Session {
            repo: repo.clone(),
            session: session.session_id().clone(),
        };
        self.put(&key, &Value::Object(session.json().clone()))
    }

    /// Loads a session.
    fn load_session(&self, repo: &RepoKey, session: &SessionId) -> Result<Option<SessionRecord>> {
        let key = DocKey::Session {
            repo: repo.clone(),
            session: session.clone(),
        };
        let rec = typed(self.get(&key)?, SessionRecord::from_json)?;
        if let Some(r) = &rec {
            check_id(
                SessionRecord::LABEL,
                session.as_str(),
                r.session_id().as_str(),
            )?;
        }
        Ok(rec)
    }

    /// Saves version `version` of a job's state.
    fn save_job_checkpoint(
        &self,
        repo: &RepoKey,
        version: u64,
        checkpoint: &JobCheckpoint,
    ) -> Result<()> {
        let key = DocKey::JobCheckpoint {
            repo: repo.clone(),
            job: checkpoint.job_id().clone(),
            version,
        };
        self.put(&key, &Value::Object(checkpoint.json().clone()))
    }

    /// Loads the newest checkpoint version of a job, with its version number.
    fn latest_job_checkpoint(
        &self,
        repo: &RepoKey,
        job: &JobId,
    ) -> Result<Option<(u64, JobCheckpoint)>> {
        let keys = self.list(&Scope::JobCheckpoints(repo.clone(), job.clone()))?;
        for key in keys.iter().rev() {
            if let DocKey::JobCheckpoint { version, .. } = key
                && let Some(cp) = typed(self.get(key)?, JobCheckpoint::from_json)?
            {
                return Ok(Some((*version, cp)));
            }
        }
        Ok(None)
    }

    /// Saves a workflow checkpoint under its `workflow_id`.
    fn save_workflow_checkpoint(&self, repo: &RepoKey, cp: &WorkflowCheckpoint) -> Result<()> {
        let key = DocKey::WorkflowCheckpoint {
            repo: repo.clone(),
            workflow: cp.workflow_id().clone(),
        };
        self.put(&key, &Value::Object(cp.json().clone()))
    }

    /// Loads a workflow checkpoint.
    fn load_workflow_checkpoint(
        &self,
        repo: &RepoKey,
        workflow: &WorkflowId,
    ) -> Result<Option<WorkflowCheckpoint>> {
        let key = DocKey::WorkflowCheckpoint {
            repo: repo.clone(),
            workflow: workflow.clone(),
        };
        typed(self.get(&key)?, WorkflowCheckpoint::from_json)
    }

    /// Saves a dead-lettered item of `job`.
    fn save_dead_letter(&self, repo: &RepoKey, job: &JobId, item: &DeadLetterItem) -> Result<()> {
        let key = DocKey::DeadLetter {
            repo: repo.clone(),
            job: job.clone(),
            item: item.item_id().clone(),
        };
        self.put(&key, &Value::Object(item.json().clone()))
    }

    /// Loads every dead-lettered item of `job`, sorted by item id.
    fn dead_letters(&self, repo: &RepoKey, job: &JobId) -> Result<Vec<DeadLetterItem>> {
        let mut out = Vec::new();
        for key in self.list(&Scope::DeadLetters(repo.clone(), job.clone()))? {
            if let Some(item) = typed(self.get(&key)?, DeadLetterItem::from_json)? {
                out.push(item);
            }
        }
        Ok(out)
    }

    /// Saves which job a session runs.
    fn save_session_job(&self, repo: &RepoKey, mapping: &SessionJobMapping) -> Result<()> {
        let key = DocKey::SessionJob {
            repo: repo.clone(),
            session: mapping.session_id().clone(),
        };
        self.put(&key, &Value::Object(mapping.json().clone()))
    }

    /// Loads which job a session runs.
    fn load_session_job(
        &self,
        repo: &RepoKey,
        session: &SessionId,
    ) -> Result<Option<SessionJobMapping>> {
        let key = DocKey::SessionJob {
            repo: repo.clone(),
            session: session.clone(),
        };
        typed(self.get(&key)?, SessionJobMapping::from_json)
    }
}

impl<S: Storage + ?Sized> StorageExt for S {}

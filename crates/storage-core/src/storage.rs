//! The `Storage` trait: the one API for every storage operation.
//!
//! The trait is deliberately small and untyped (documents are JSON values
//! addressed by a [`DocKey`]); [`StorageExt`] adds the typed record methods on
//! top of it for every implementation at once, so an implementation cannot
//! get the typed layer wrong.
//!
//! All methods take `&self`: implementations synchronise internally, and the
//! on-disk one also across processes.

use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::error::Result;
use crate::id::{DocName, ExtKind, ItemId, JobId, LockKey, RepoKey, SessionId, WorkflowId};
use crate::record::{EventRecord, LockHolder};

/// The address of one JSON document in the store.
///
/// `#[non_exhaustive]`: new kinds arrive in minor releases, so match with a
/// `_` arm. A kind the store does not know by name is an
/// [`DocKey::Extension`]: any consumer can add one without a new release.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
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
    /// A workflow checkpoint kept per repository.
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
    /// A unified session (Prodigy's live session store): global, keyed by id alone.
    UnifiedSession {
        /// Session.
        session: SessionId,
    },
    /// A unified session's own checkpoint (Prodigy's `sessions/<id>/checkpoint.json`).
    SessionCheckpoint {
        /// Session.
        session: SessionId,
    },
    /// A workflow checkpoint kept per session (how a workflow run resumes by session id).
    SessionWorkflowCheckpoint {
        /// Session.
        session: SessionId,
        /// Workflow.
        workflow: WorkflowId,
    },
    /// A document of a kind this crate does not know by name (phase and reduce
    /// checkpoints, or anything newer), kept per repository.
    Extension {
        /// Repository.
        repo: RepoKey,
        /// The kind, namespaced by its owner (`prodigy.reduce-checkpoint`).
        kind: ExtKind,
        /// The document's name within its kind.
        name: DocName,
    },
}

impl DocKey {
    /// The repository the document belongs to; `None` for global documents
    /// (unified sessions and what belongs to them).
    #[must_use]
    pub fn repo(&self) -> Option<&RepoKey> {
        match self {
            DocKey::Session { repo, .. }
            | DocKey::JobCheckpoint { repo, .. }
            | DocKey::JobMetadata { repo, .. }
            | DocKey::WorkflowCheckpoint { repo, .. }
            | DocKey::DeadLetter { repo, .. }
            | DocKey::DeadLetterIndex { repo, .. }
            | DocKey::SessionJob { repo, .. }
            | DocKey::Extension { repo, .. } => Some(repo),
            DocKey::UnifiedSession { .. }
            | DocKey::SessionCheckpoint { .. }
            | DocKey::SessionWorkflowCheckpoint { .. } => None,
        }
    }

    /// What kind of document this is, as statistics and listings name it
    /// (`session`, `job checkpoint`, …; an extension's own kind name).
    #[must_use]
    pub fn kind(&self) -> &str {
        match self {
            DocKey::Session { .. } => "session",
            DocKey::JobCheckpoint { .. } => "job checkpoint",
            DocKey::JobMetadata { .. } => "job metadata",
            DocKey::WorkflowCheckpoint { .. } => "workflow checkpoint",
            DocKey::DeadLetter { .. } => "dead letter",
            DocKey::DeadLetterIndex { .. } => "dead-letter index",
            DocKey::SessionJob { .. } => "session-job mapping",
            DocKey::UnifiedSession { .. } => "unified session",
            DocKey::SessionCheckpoint { .. } => "session checkpoint",
            DocKey::SessionWorkflowCheckpoint { .. } => "session workflow checkpoint",
            DocKey::Extension { kind, .. } => kind.as_str(),
        }
    }
}

/// A family of documents to list; listings are sorted by key.
/// `#[non_exhaustive]`, like [`DocKey`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
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
    /// Every unified session of the store.
    UnifiedSessions,
    /// Every workflow checkpoint of a session.
    SessionWorkflowCheckpoints(SessionId),
    /// Every document of an extension kind in a repository.
    Extension(RepoKey, ExtKind),
}

impl Scope {
    /// Whether `key` belongs to this scope.
    #[must_use]
    pub fn contains(&self, key: &DocKey) -> bool {
        match (self, key) {
            (Scope::Sessions(r), DocKey::Session { repo, .. })
            | (Scope::WorkflowCheckpoints(r), DocKey::WorkflowCheckpoint { repo, .. })
            | (Scope::SessionJobs(r), DocKey::SessionJob { repo, .. }) => r == repo,
            (Scope::JobCheckpoints(r, j), DocKey::JobCheckpoint { repo, job, .. })
            | (Scope::DeadLetters(r, j), DocKey::DeadLetter { repo, job, .. }) => {
                r == repo && j == job
            }
            (Scope::UnifiedSessions, DocKey::UnifiedSession { .. }) => true,
            (
                Scope::SessionWorkflowCheckpoints(s),
                DocKey::SessionWorkflowCheckpoint { session, .. },
            ) => s == session,
            (Scope::Extension(r, k), DocKey::Extension { repo, kind, .. }) => {
                r == repo && k == kind
            }
            _ => false,
        }
    }
}

/// A document's key with its size and modification time.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Entry {
    /// The document.
    pub key: DocKey,
    /// Its size in bytes, as stored.
    pub bytes: u64,
    /// When it was last written.
    pub modified: SystemTime,
}

impl Entry {
    /// An entry; for implementations.
    #[must_use]
    pub fn new(key: DocKey, bytes: u64, modified: SystemTime) -> Self {
        Self {
            key,
            bytes,
            modified,
        }
    }
}

/// The size and age of one job's event log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LogEntry {
    /// Bytes in all of its files.
    pub bytes: u64,
    /// When it was last appended to.
    pub modified: SystemTime,
    /// When its oldest part was last written (its first file's time).
    pub oldest: SystemTime,
}

impl LogEntry {
    /// A log entry; for implementations.
    #[must_use]
    pub fn new(bytes: u64, modified: SystemTime, oldest: SystemTime) -> Self {
        Self {
            bytes,
            modified,
            oldest,
        }
    }
}

/// A position in an event log: where a reader stopped, and where the next
/// read starts. Obtained from [`EventLogSummary::next`] or
/// [`Storage::event_log_end`]; [`EventCursor::START`] is the start of every log.
///
/// Its parts mean something only to the implementation that made it (the
/// file store: a file name, a byte offset, and the generation of the log's
/// identity; PostgreSQL: a sequence number and the log's generation; the
/// memory store: a record index and the log's generation), so a cursor can
/// be stored (it serializes) but not computed.
///
/// A cursor never stands for a position in another log, nor in another
/// incarnation of its own: the generation names the log's incarnation (a
/// log deleted and begun again gets a new one), never an inode number, which
/// a file system reuses. A cursor into a log that retention trimmed
/// continues with the first record kept after it; one that no longer fits
/// its log at all (the log was deleted and begun again, or the cursor is
/// past the log's end, or from another store) makes the read start at the
/// log's start and say so ([`EventLogSummary::restarted`]): a record may
/// then be delivered again, but none is ever skipped.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct EventCursor {
    /// The part of the log (a file name; empty for the start).
    pub segment: String,
    /// The position within it.
    pub offset: u64,
    /// Which incarnation of the segment the offset belongs to.
    pub generation: u64,
}

impl EventCursor {
    /// The start of a log.
    pub const START: EventCursor = EventCursor {
        segment: String::new(),
        offset: 0,
        generation: 0,
    };
}

/// How to treat an unparsable entry (a corrupt line inside a log, a
/// document that is not JSON).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReadMode {
    /// Fail with [`Error::Corrupt`](crate::Error::Corrupt), naming the file and line.
    #[default]
    Strict,
    /// Skip it and report it in the summary ([`Skipped`]), as Prodigy's own
    /// readers do.
    Lenient,
}

/// An entry a lenient read skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Skipped {
    /// The file (a log's file name, or a document's path or key).
    pub file: String,
    /// The 1-based line, for a line of a log.
    pub line: Option<u64>,
    /// Why it was skipped.
    pub reason: String,
}

impl Skipped {
    /// A skipped entry; for implementations.
    #[must_use]
    pub fn new(file: impl Into<String>, line: Option<u64>, reason: impl Into<String>) -> Self {
        Self {
            file: file.into(),
            line,
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(l) => write!(f, "{} line {l}: {}", self.file, self.reason),
            None => write!(f, "{}: {}", self.file, self.reason),
        }
    }
}

/// What to keep of a family of documents or of an event log. Every limit
/// that is set applies; the newest entries are kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Retention {
    /// Drop what is older than this.
    pub max_age: Option<Duration>,
    /// Keep at most this many (the newest).
    pub max_count: Option<u64>,
    /// Keep at most this many bytes (the newest entries that fit).
    pub max_bytes: Option<u64>,
}

impl Retention {
    /// Keeps everything (set limits with the `with_` methods).
    #[must_use]
    pub fn keep_all() -> Self {
        Self::default()
    }

    /// Also drops what is older than `age`.
    #[must_use]
    pub fn with_max_age(mut self, age: Duration) -> Self {
        self.max_age = Some(age);
        self
    }

    /// Also keeps at most `n` entries.
    #[must_use]
    pub fn with_max_count(mut self, n: u64) -> Self {
        self.max_count = Some(n);
        self
    }

    /// Also keeps at most `bytes` bytes.
    #[must_use]
    pub fn with_max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = Some(bytes);
        self
    }

    /// How many of `entries` (oldest first: `(bytes, time)`, the time `None`
    /// when unknown) to drop from the front so that what remains keeps to
    /// this policy at `now`. The kept part is always a suffix: an entry is
    /// dropped only if every entry before it is dropped too, so a log trimmed
    /// this way stays a log (no holes). An entry of unknown time is never
    /// dropped for its age.
    #[must_use]
    pub fn drop_count(&self, entries: &[(u64, Option<SystemTime>)], now: SystemTime) -> usize {
        let n = entries.len();
        let mut keep_from = 0usize;
        if let Some(max) = self.max_count {
            keep_from = keep_from.max(n.saturating_sub(usize::try_from(max).unwrap_or(usize::MAX)));
        }
        if let Some(max) = self.max_bytes {
            let mut total = 0u64;
            let mut first = n;
            for (i, (bytes, _)) in entries.iter().enumerate().rev() {
                total = total.saturating_add(*bytes);
                if total > max {
                    break;
                }
                first = i;
            }
            keep_from = keep_from.max(first);
        }
        if let Some(age) = self.max_age {
            let cutoff = now.checked_sub(age);
            // Drop the leading run of entries known to be older than the cutoff.
            let old = entries
                .iter()
                .take_while(|(_, t)| matches!((t, cutoff), (Some(t), Some(c)) if *t < c))
                .count();
            keep_from = keep_from.max(old);
        }
        keep_from
    }
}

/// How to trim an event log ([`Storage::retain_events`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct EventRetention {
    /// What to keep; a log is always trimmed from its start (see [`Retention::drop_count`]).
    pub keep: Retention,
    /// Keep the dropped records in a gzip archive (the default) or not.
    pub archive: bool,
    /// The time ages are measured from.
    pub now: SystemTime,
}

impl EventRetention {
    /// Trims by `keep`, archiving what is dropped, with ages measured from now.
    #[must_use]
    pub fn new(keep: Retention) -> Self {
        Self {
            keep,
            archive: true,
            now: SystemTime::now(),
        }
    }

    /// Drops without archiving.
    #[must_use]
    pub fn without_archive(mut self) -> Self {
        self.archive = false;
        self
    }

    /// Measures ages from `now` instead of the current time.
    #[must_use]
    pub fn at(mut self, now: SystemTime) -> Self {
        self.now = now;
        self
    }
}

/// What [`Storage::retain_events`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetentionReport {
    /// Records kept.
    pub kept: u64,
    /// Records dropped from the log, when the store counted them: always
    /// when it archives them (it reads them then); the file store does not
    /// read what it drops without an archive, so that a trim costs about
    /// what copying the kept part does, and leaves this `None`.
    pub dropped: Option<u64>,
    /// Bytes dropped from the log.
    pub dropped_bytes: u64,
    /// Where the dropped records were archived (gzip JSONL), if they were.
    pub archive: Option<String>,
}

/// How long to wait for a lock another process holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockWait {
    /// Fail at once with [`Error::Locked`](crate::Error::Locked).
    NoWait,
    /// Wait up to this long, then fail with [`Error::Locked`](crate::Error::Locked).
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
    /// Corrupt lines skipped by a [`ReadMode::Lenient`] read (a strict read fails on the first).
    pub skipped: Vec<Skipped>,
    /// Where a read that continues this one starts: after the last whole
    /// line read. An unterminated line at the very end of the log is not
    /// passed, so a follower reads it once its writer finishes it.
    pub next: EventCursor,
    /// The cursor read from did not fit the log (see [`EventCursor`]), so
    /// the read began at the log's start: records delivered before may have
    /// been delivered again. Never set for [`EventCursor::START`].
    pub restarted: bool,
}

/// What [`Storage::append_events_at`] did: either way the batch is in the
/// log exactly once, and `end` is where the next compare-and-append starts.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Appended {
    /// The batch was appended now.
    Now {
        /// The log's end after the batch.
        end: EventCursor,
    },
    /// The batch was already in the log at the expected position: a retry
    /// of an append that landed although its caller was told it might not
    /// have. Nothing was written.
    Already {
        /// The position just after that batch.
        end: EventCursor,
    },
}

impl Appended {
    /// The position just after the batch.
    #[must_use]
    pub fn end(&self) -> &EventCursor {
        match self {
            Appended::Now { end } | Appended::Already { end } => end,
        }
    }
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

/// What a store keeps a held lock with; see [`LockGuard::with_liveness`].
/// For implementations.
pub trait HeldLock: Send + Sync {
    /// The fencing token of this acquisition: larger than that of every
    /// earlier acquisition of the same key in the same store.
    fn token(&self) -> u64;

    /// Looks now (I/O) whether this holder still holds the lock; `false`
    /// once it is known lost (then for good).
    fn check(&self) -> Result<bool>;

    /// Whether the lock is known lost already, without I/O: a failed
    /// [`HeldLock::check`], or what the store watches in the background
    /// (PostgreSQL: a lock that has not been confirmed on its connection
    /// for its lease).
    fn known_lost(&self) -> bool;
}

/// The proof a write under a lock carries ([`Storage::put_fenced`],
/// [`Storage::append_events_fenced`]): the lock and the token of its
/// acquisition. The store refuses the write once the lock has been taken
/// again since (a larger token). Releasing a lock does not end its token:
/// write with it only while the guard lives.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Fence {
    /// The lock.
    pub key: LockKey,
    /// The token of the acquisition the writer holds.
    pub token: u64,
}

/// A held lock; dropping it releases the lock.
///
/// The guard owns whatever keeps the lock (an open file with a kernel `flock`
/// for the on-disk store, a connection for PostgreSQL), so a process that
/// dies releases its locks too.
///
/// A lock can be lost while its guard lives: a PostgreSQL lock with its
/// connection (a server restart, a terminated backend), a file lock when
/// its file is removed or replaced by someone else. [`LockGuard::is_lost`]
/// says so without I/O, [`LockGuard::check`] looks, and a write made with
/// [`LockGuard::fence`] is refused by the store once another holder has
/// taken the lock, so a stale holder cannot overwrite its successor's work.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct LockGuard {
    key: LockKey,
    held: Box<dyn HeldLock>,
}

/// A lock of a store that does not say whether it is still held (what it
/// holds is only kept, to be dropped with the guard).
struct Opaque {
    _held: Box<dyn Send + Sync>,
}

impl HeldLock for Opaque {
    fn token(&self) -> u64 {
        0
    }
    fn check(&self) -> Result<bool> {
        Err(crate::Error::Unsupported {
            op: "checking whether a lock is still held",
        })
    }
    fn known_lost(&self) -> bool {
        false
    }
}

impl LockGuard {
    /// Wraps `held`, whose drop releases the lock, for a store that cannot
    /// tell whether it still holds it (no token: [`LockGuard::fence`] is
    /// `None`). For implementations.
    pub fn new(key: LockKey, held: Box<dyn Send + Sync>) -> Self {
        Self {
            key,
            held: Box::new(Opaque { _held: held }),
        }
    }

    /// Wraps `held`, which knows its token and whether it is still held.
    /// For implementations.
    pub fn with_liveness(key: LockKey, held: Box<dyn HeldLock>) -> Self {
        Self { key, held }
    }

    /// The lock's key.
    #[must_use]
    pub fn key(&self) -> &LockKey {
        &self.key
    }

    /// The fencing token of this acquisition (0 for a store without tokens).
    #[must_use]
    pub fn token(&self) -> u64 {
        self.held.token()
    }

    /// What writes under this lock carry; `None` for a store without tokens.
    #[must_use]
    pub fn fence(&self) -> Option<Fence> {
        let token = self.held.token();
        (token > 0).then(|| Fence {
            key: self.key.clone(),
            token,
        })
    }

    /// Whether the lock is known lost, without I/O (see [`HeldLock::known_lost`]).
    #[must_use]
    pub fn is_lost(&self) -> bool {
        self.held.known_lost()
    }

    /// Looks now whether this guard still holds the lock.
    pub fn check(&self) -> Result<bool> {
        self.held.check()
    }

    /// Releases the lock now (the same as dropping the guard).
    pub fn release(self) {}
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGuard")
            .field("key", &self.key)
            .field("token", &self.held.token())
            .finish_non_exhaustive()
    }
}

/// The unified, synchronous storage API.
///
/// # Contract (checked by the `conformance` suite)
///
/// - `put` replaces a document atomically: a reader, or a crash, sees the old
///   or the new document, never a mix; `Ok` means it is durable.
/// - `get` returns the JSON that was `put`, unknown fields included (equal
///   as JSON; the order of an object's keys is the one `serde_json::Map`
///   gives, see `docs/adopting.md`).
/// - `put` and `append_events` refuse, before writing anything, a document
///   or event nested deeper than [`MAX_JSON_DEPTH`](crate::MAX_JSON_DEPTH)
///   ([`RecordError::TooDeep`](crate::RecordError::TooDeep), through
///   [`check_document`](crate::check_document) and
///   [`check_events`](crate::check_events)), and accept one at the limit:
///   what a store accepts, its readers can read.
/// - `list` is sorted by key and never shows temp files or debris;
///   `list_entries` adds each document's size and modification time.
/// - `delete` removes a document and any directory it leaves empty.
/// - `append_events` adds all of its records, in order, as whole lines, even
///   when other processes append to the same log at the same time.
/// - `read_events_from` delivers records in append order from a cursor and
///   returns the cursor to continue from; a torn last line is reported in the
///   summary; a corrupt earlier line is [`Error::Corrupt`](crate::Error::Corrupt)
///   in [`ReadMode::Strict`] and skipped (and reported) in [`ReadMode::Lenient`].
/// - `append_events_at` appends only if the log ends where the caller says,
///   and recognises a batch it already holds at that place: a retry after
///   an error that left the outcome unknown stores the batch exactly once.
/// - a read never delivers a record whose append failed, and a cursor never
///   skips a record (see [`EventCursor`]).
/// - `delete_event_log` and `retain_events` take the log's lock, so an
///   appender never loses events to them: its batch lands in the log
///   before the change or in the log that follows it.
/// - `lock` is exclusive across threads and processes, and a lock whose holder
///   died is free again. Each acquisition has a larger fencing token than
///   the one before, and a write fenced with a token that is no longer the
///   lock's newest is refused with [`Error::LockLost`](crate::Error::LockLost).
///
/// Methods added in later releases come with a default body, so an
/// implementation outside this workspace keeps compiling.
pub trait Storage: Send + Sync {
    /// Stores `doc` at `key`, replacing any earlier document atomically and durably.
    fn put(&self, key: &DocKey, doc: &Value) -> Result<()>;

    /// The document at `key`, or `None`.
    fn get(&self, key: &DocKey) -> Result<Option<Value>>;

    /// Removes the document at `key`, and the directories it leaves empty;
    /// `false` if there was none.
    fn delete(&self, key: &DocKey) -> Result<bool>;

    /// The keys in `scope`, sorted.
    fn list(&self, scope: &Scope) -> Result<Vec<DocKey>>;

    /// The documents in `scope` with their size and modification time, sorted by key.
    fn list_entries(&self, scope: &Scope) -> Result<Vec<Entry>>;

    /// Visits every document in `scope` with its size and modification
    /// time, in no particular order; memory does not grow with the number
    /// of documents (where `list_entries` holds them all, sorted).
    fn scan_entries(&self, scope: &Scope, visit: &mut dyn FnMut(Entry)) -> Result<()> {
        for e in self.list_entries(scope)? {
            visit(e);
        }
        Ok(())
    }

    /// The size and modification time of the document at `key`, or `None`.
    fn entry(&self, key: &DocKey) -> Result<Option<Entry>>;

    /// Every repository that has documents or event logs, sorted.
    fn repos(&self) -> Result<Vec<RepoKey>>;

    /// The jobs of `repo` that have state (checkpoints or metadata), sorted.
    fn jobs(&self, repo: &RepoKey) -> Result<Vec<JobId>>;

    /// The jobs of `repo` that have dead letters (items or an index), sorted.
    fn jobs_with_dead_letters(&self, repo: &RepoKey) -> Result<Vec<JobId>>;

    /// The extension kinds that have documents in `repo`, sorted.
    fn extension_kinds(&self, repo: &RepoKey) -> Result<Vec<ExtKind>>;

    /// Appends `events` to the log of `job`, in order, durably.
    fn append_events(&self, repo: &RepoKey, job: &JobId, events: &[EventRecord]) -> Result<()>;

    /// Where the log of `job` ends now: the cursor after its last whole
    /// record ([`EventCursor::START`] for a log that does not exist), equal
    /// to the [`EventLogSummary::next`] of a read to its end. What
    /// [`Storage::append_events_at`] expects.
    ///
    /// The default reads the whole log; stores answer it without reading.
    fn event_log_end(&self, repo: &RepoKey, job: &JobId) -> Result<EventCursor> {
        let s = self.read_events_from(
            repo,
            job,
            &EventCursor::START,
            ReadMode::Lenient,
            &mut |_| {},
        )?;
        Ok(s.next)
    }

    /// Compare-and-append: appends `events` to the log of `job` only if the
    /// log ends at `expected` (what [`Storage::event_log_end`] or the last
    /// append or read returned), in order, durably.
    ///
    /// If the log has moved on, and the records at `expected` are not
    /// exactly this batch, nothing is written and the result is
    /// [`Error::AppendConflict`](crate::Error::AppendConflict) with the
    /// log's end: read what was added and decide. If the records at
    /// `expected` are exactly this batch, it is [`Appended::Already`]: the
    /// earlier attempt landed. So a batch retried with the same `expected`
    /// after any error is stored exactly once, whoever else appends in
    /// between.
    ///
    /// The default refuses with [`Error::Unsupported`](crate::Error::Unsupported):
    /// every store of this workspace implements it.
    fn append_events_at(
        &self,
        repo: &RepoKey,
        job: &JobId,
        expected: &EventCursor,
        events: &[EventRecord],
    ) -> Result<Appended> {
        let _ = (repo, job, expected, events);
        Err(crate::Error::Unsupported {
            op: "compare-and-append (append_events_at)",
        })
    }

    /// Streams the log of `job` from `from` to `visit`, in order; memory does
    /// not grow with the log. [`EventLogSummary::next`] is where to continue.
    fn read_events_from(
        &self,
        repo: &RepoKey,
        job: &JobId,
        from: &EventCursor,
        mode: ReadMode,
        visit: &mut dyn FnMut(EventRecord),
    ) -> Result<EventLogSummary>;

    /// Streams the whole log of `job` to `visit`, strictly, in order.
    fn read_events(
        &self,
        repo: &RepoKey,
        job: &JobId,
        visit: &mut dyn FnMut(EventRecord),
    ) -> Result<EventLogSummary> {
        self.read_events_from(repo, job, &EventCursor::START, ReadMode::Strict, visit)
    }

    /// Waits until the log of `job` may hold something after `after`, for
    /// at most `timeout`; `true` if it does (or may: read to find out),
    /// `false` on timeout. Never spins: an idle follower costs nothing.
    fn wait_for_events(
        &self,
        repo: &RepoKey,
        job: &JobId,
        after: &EventCursor,
        timeout: Duration,
    ) -> Result<bool>;

    /// The jobs of `repo` that have an event log, sorted.
    fn event_logs(&self, repo: &RepoKey) -> Result<Vec<JobId>>;

    /// The size and age of the log of `job`, or `None` if it has none.
    fn event_log_entry(&self, repo: &RepoKey, job: &JobId) -> Result<Option<LogEntry>>;

    /// Removes the log of `job` under its lock; `false` if there was none.
    fn delete_event_log(&self, repo: &RepoKey, job: &JobId) -> Result<bool>;

    /// Trims the log of `job` from its start by `policy`, under its lock,
    /// archiving what it drops unless told not to.
    fn retain_events(
        &self,
        repo: &RepoKey,
        job: &JobId,
        policy: &EventRetention,
    ) -> Result<RetentionReport>;

    /// Takes the exclusive lock `key`, recording `holder` for messages.
    fn lock(&self, key: &LockKey, holder: &LockHolder, wait: LockWait) -> Result<LockGuard>;

    /// [`Storage::put`], only while `fence` is the newest acquisition of its
    /// lock: else nothing is written and the result is
    /// [`Error::LockLost`](crate::Error::LockLost). The check and the write
    /// are one step: no acquisition of the lock comes between them.
    fn put_fenced(&self, key: &DocKey, doc: &Value, fence: &Fence) -> Result<()> {
        let _ = (key, doc, fence);
        Err(crate::Error::Unsupported {
            op: "fenced writes (put_fenced)",
        })
    }

    /// [`Storage::append_events`], only while `fence` is the newest
    /// acquisition of its lock (see [`Storage::put_fenced`]).
    fn append_events_fenced(
        &self,
        repo: &RepoKey,
        job: &JobId,
        events: &[EventRecord],
        fence: &Fence,
    ) -> Result<()> {
        let _ = (repo, job, events, fence);
        Err(crate::Error::Unsupported {
            op: "fenced writes (append_events_fenced)",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A byte limit keeps the newest entries whose total is at most the
    /// limit: at exactly the limit, all of them (the boundary a `>=` would
    /// move by one entry).
    #[test]
    fn a_byte_limit_keeps_entries_that_fill_it_exactly() {
        let now = SystemTime::UNIX_EPOCH;
        let entries = [(10, None), (10, None), (10, None)];
        let keep = |max: u64| {
            Retention::keep_all()
                .with_max_bytes(max)
                .drop_count(&entries, now)
        };
        assert_eq!(keep(20), 1, "two entries of 10 fill 20 exactly");
        assert_eq!(keep(19), 2);
        assert_eq!(keep(30), 0);
        assert_eq!(keep(0), 3);
    }
}

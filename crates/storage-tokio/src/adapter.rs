//! [`AsyncStorage`]: the `Storage` and `StorageExt` methods as `async fn`s,
//! each one call on tokio's blocking pool.
//!
//! The methods keep the synchronous signatures (arguments by reference), so
//! moving a call site to async code is adding `.await`. The arguments are
//! cloned into the blocking task, which must own what it uses because it
//! may outlive the future (see the crate docs on cancellation); identifiers
//! are short strings, and a document is copied once, as the store copies it
//! again when it serializes it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use storage_core::{
    Appended, BlockingSection, DeadLetterItem, DocKey, Entry, EventCursor, EventRecord,
    EventRetention, ExtKind, Fence, ItemId, JobCheckpoint, JobId, KindStats, LockGuard, LockHolder,
    LockKey, LockWait, LogEntry, ReadMode, RepoKey, Result, Retention, RetentionReport, Scope,
    SessionId, SessionJobMapping, SessionRecord, Skipped, Storage, StorageExt, UnifiedSession,
    WorkflowCheckpoint, WorkflowId,
};
use tokio::task::JoinHandle;

use crate::stream::{self, EventStream, FollowStream};

/// The channel capacity of a stream unless set: records read ahead of the consumer.
const DEFAULT_CAPACITY: usize = 256;

/// How long a follower's blocking task waits for appends before it checks
/// whether its stream was dropped, unless set.
const DEFAULT_WAIT_SLICE: Duration = Duration::from_millis(200);

/// A [`Storage`] for async code: every call runs on tokio's blocking pool.
///
/// Cheap to clone (an `Arc` and two numbers). See the crate docs for what a
/// dropped future or stream does.
#[derive(Clone)]
pub struct AsyncStorage {
    store: Arc<dyn Storage>,
    capacity: usize,
    wait_slice: Duration,
}

impl std::fmt::Debug for AsyncStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncStorage")
            .field("capacity", &self.capacity)
            .field("wait_slice", &self.wait_slice)
            .finish_non_exhaustive()
    }
}

/// Generates one `async fn` per synchronous method: arguments before `;`
/// are passed by reference (cloned into the task), those after it by value.
macro_rules! forward {
    ($(
        $(#[$doc:meta])*
        fn $name:ident(&self $(, $arg:ident: &$ty:ty)* $(; $($val:ident: $vty:ty),+)?) -> $ret:ty;
    )+) => {
        $(
            $(#[$doc])*
            pub async fn $name(&self $(, $arg: &$ty)* $($(, $val: $vty)+)?) -> Result<$ret> {
                $(let $arg = $arg.to_owned();)*
                self.run(move |s| s.$name($(&$arg,)* $($($val),+)?)).await
            }
        )+
    };
}

impl AsyncStorage {
    /// Wraps `store`.
    pub fn new(store: impl Storage + 'static) -> Self {
        Self::from_arc(Arc::new(store))
    }

    /// Wraps a store that is shared already (with synchronous code, say).
    #[must_use]
    pub fn from_arc(store: Arc<dyn Storage>) -> Self {
        Self {
            store,
            capacity: DEFAULT_CAPACITY,
            wait_slice: DEFAULT_WAIT_SLICE,
        }
    }

    /// How many records a stream may read ahead of its consumer (256 unless
    /// set; at least 1). This, not the log's length, bounds a stream's memory.
    #[must_use]
    pub fn with_channel_capacity(mut self, records: usize) -> Self {
        self.capacity = records.max(1);
        self
    }

    /// How long a follower's blocking task waits for appends in one go
    /// (200 ms unless set). It bounds how long the task outlives a dropped
    /// [`FollowStream`], not how soon an append is seen: an append wakes the
    /// waiter at once. An idle follower wakes once per slice, which costs
    /// microseconds.
    #[must_use]
    pub fn with_wait_slice(mut self, slice: Duration) -> Self {
        self.wait_slice = slice;
        self
    }

    /// The store, for synchronous code (never call it from a runtime worker).
    #[must_use]
    pub fn store(&self) -> &Arc<dyn Storage> {
        &self.store
    }

    /// Runs `f` with the store on the blocking pool: several calls as one
    /// unit, which completes even if the returned future is dropped after
    /// its first poll (see the crate docs). This is how code that reads,
    /// decides and writes stays whole.
    pub async fn run<T, F>(&self, f: F) -> T
    where
        F: FnOnce(&dyn Storage) -> T + Send + 'static,
        T: Send + 'static,
    {
        let store = Arc::clone(&self.store);
        join(tokio::task::spawn_blocking(move || {
            let _may_block = BlockingSection::enter();
            f(&*store)
        }))
        .await
    }

    /// Streams the log of `job` from its start, strictly (a corrupt line
    /// ends the stream with [`Error::Corrupt`](storage_core::Error::Corrupt)).
    ///
    /// The read starts at once on the blocking pool and stays at most the
    /// channel's capacity ahead of the consumer.
    pub fn read_events(&self, repo: &RepoKey, job: &JobId) -> EventStream {
        self.read_events_from(repo, job, &EventCursor::START, ReadMode::Strict)
    }

    /// Streams the log of `job` from `from`, in `mode`; the stream's
    /// [`summary`](EventStream::summary) says where the next read starts.
    pub fn read_events_from(
        &self,
        repo: &RepoKey,
        job: &JobId,
        from: &EventCursor,
        mode: ReadMode,
    ) -> EventStream {
        stream::read(
            Arc::clone(&self.store),
            self.capacity,
            repo.clone(),
            job.clone(),
            from.clone(),
            mode,
        )
    }

    /// Follows the log of `job` from `from`: every record there, then every
    /// record appended later, for as long as the stream is kept. The read is
    /// lenient (a corrupt line is skipped and logged with `tracing`, as
    /// Prodigy's own follower does), and the stream ends only after
    /// yielding an error.
    pub fn follow(&self, repo: &RepoKey, job: &JobId, from: EventCursor) -> FollowStream {
        stream::follow(
            Arc::clone(&self.store),
            self.capacity,
            self.wait_slice,
            repo.clone(),
            job.clone(),
            from,
        )
    }

    /// [`StorageExt::save_job_checkpoint`] on the blocking pool.
    pub async fn save_job_checkpoint(
        &self,
        repo: &RepoKey,
        version: u64,
        checkpoint: &JobCheckpoint,
    ) -> Result<()> {
        let (repo, checkpoint) = (repo.clone(), checkpoint.clone());
        self.run(move |s| s.save_job_checkpoint(&repo, version, &checkpoint))
            .await
    }

    forward! {
        /// [`Storage::put`] on the blocking pool.
        fn put(&self, key: &DocKey, doc: &Value) -> ();
        /// [`Storage::get`] on the blocking pool.
        fn get(&self, key: &DocKey) -> Option<Value>;
        /// [`Storage::delete`] on the blocking pool.
        fn delete(&self, key: &DocKey) -> bool;
        /// [`Storage::list`] on the blocking pool.
        fn list(&self, scope: &Scope) -> Vec<DocKey>;
        /// [`Storage::list_entries`] on the blocking pool.
        fn list_entries(&self, scope: &Scope) -> Vec<Entry>;
        /// [`Storage::entry`] on the blocking pool.
        fn entry(&self, key: &DocKey) -> Option<Entry>;
        /// [`Storage::repos`] on the blocking pool.
        fn repos(&self) -> Vec<RepoKey>;
        /// [`Storage::jobs`] on the blocking pool.
        fn jobs(&self, repo: &RepoKey) -> Vec<JobId>;
        /// [`Storage::jobs_with_dead_letters`] on the blocking pool.
        fn jobs_with_dead_letters(&self, repo: &RepoKey) -> Vec<JobId>;
        /// [`Storage::extension_kinds`] on the blocking pool.
        fn extension_kinds(&self, repo: &RepoKey) -> Vec<ExtKind>;
        /// [`Storage::append_events`] on the blocking pool: the whole batch or none of it.
        fn append_events(&self, repo: &RepoKey, job: &JobId, events: &[EventRecord]) -> ();
        /// [`Storage::event_log_end`] on the blocking pool.
        fn event_log_end(&self, repo: &RepoKey, job: &JobId) -> EventCursor;
        /// [`Storage::append_events_at`] on the blocking pool: a retry with
        /// the same `expected` never stores the batch twice.
        fn append_events_at(&self, repo: &RepoKey, job: &JobId, expected: &EventCursor, events: &[EventRecord]) -> Appended;
        /// [`Storage::wait_for_events`] on the blocking pool (it holds a
        /// blocking thread while it waits; [`AsyncStorage::follow`] is the
        /// usual way to wait).
        fn wait_for_events(&self, repo: &RepoKey, job: &JobId, after: &EventCursor; timeout: Duration) -> bool;
        /// [`Storage::event_logs`] on the blocking pool.
        fn event_logs(&self, repo: &RepoKey) -> Vec<JobId>;
        /// [`Storage::event_log_entry`] on the blocking pool.
        fn event_log_entry(&self, repo: &RepoKey, job: &JobId) -> Option<LogEntry>;
        /// [`Storage::delete_event_log`] on the blocking pool.
        fn delete_event_log(&self, repo: &RepoKey, job: &JobId) -> bool;
        /// [`Storage::retain_events`] on the blocking pool.
        fn retain_events(&self, repo: &RepoKey, job: &JobId, policy: &EventRetention) -> RetentionReport;
        /// [`Storage::lock`] on the blocking pool. The guard releases the
        /// lock when dropped, on any thread (inside or outside the runtime:
        /// releasing is closing a file or taking a short mutex, never a
        /// wait). If this future is dropped while the call waits, a lock it
        /// then gets is released at once.
        fn lock(&self, key: &LockKey, holder: &LockHolder; wait: LockWait) -> LockGuard;
        /// [`Storage::put_fenced`] on the blocking pool.
        fn put_fenced(&self, key: &DocKey, doc: &Value, fence: &Fence) -> ();
        /// [`Storage::append_events_fenced`] on the blocking pool.
        fn append_events_fenced(&self, repo: &RepoKey, job: &JobId, events: &[EventRecord], fence: &Fence) -> ();

        /// [`StorageExt::save_session`] on the blocking pool.
        fn save_session(&self, repo: &RepoKey, session: &SessionRecord) -> ();
        /// [`StorageExt::load_session`] on the blocking pool.
        fn load_session(&self, repo: &RepoKey, session: &SessionId) -> Option<SessionRecord>;
        /// [`StorageExt::latest_job_checkpoint`] on the blocking pool.
        fn latest_job_checkpoint(&self, repo: &RepoKey, job: &JobId) -> Option<(u64, JobCheckpoint)>;
        /// [`StorageExt::load_job_checkpoint`] on the blocking pool.
        fn load_job_checkpoint(&self, repo: &RepoKey, job: &JobId; version: u64) -> Option<JobCheckpoint>;
        /// [`StorageExt::keep_newest_job_checkpoints`] on the blocking pool.
        fn keep_newest_job_checkpoints(&self, repo: &RepoKey, job: &JobId; keep: usize) -> Vec<u64>;
        /// [`StorageExt::delete_job`] on the blocking pool.
        fn delete_job(&self, repo: &RepoKey, job: &JobId) -> u64;
        /// [`StorageExt::save_workflow_checkpoint`] on the blocking pool.
        fn save_workflow_checkpoint(&self, repo: &RepoKey, cp: &WorkflowCheckpoint) -> ();
        /// [`StorageExt::load_workflow_checkpoint`] on the blocking pool.
        fn load_workflow_checkpoint(&self, repo: &RepoKey, workflow: &WorkflowId) -> Option<WorkflowCheckpoint>;
        /// [`StorageExt::save_dead_letter`] on the blocking pool.
        fn save_dead_letter(&self, repo: &RepoKey, job: &JobId, item: &DeadLetterItem) -> ();
        /// [`StorageExt::dead_letters`] on the blocking pool.
        fn dead_letters(&self, repo: &RepoKey, job: &JobId) -> Vec<DeadLetterItem>;
        /// [`StorageExt::dead_letters_lenient`] on the blocking pool.
        fn dead_letters_lenient(&self, repo: &RepoKey, job: &JobId) -> (Vec<DeadLetterItem>, Vec<Skipped>);
        /// [`StorageExt::delete_dead_letter`] on the blocking pool.
        fn delete_dead_letter(&self, repo: &RepoKey, job: &JobId, item: &ItemId) -> bool;
        /// [`StorageExt::delete_dead_letters`] on the blocking pool.
        fn delete_dead_letters(&self, repo: &RepoKey, job: &JobId) -> u64;
        /// [`StorageExt::delete_scope`] on the blocking pool.
        fn delete_scope(&self, scope: &Scope) -> u64;
        /// [`StorageExt::save_session_job`] on the blocking pool.
        fn save_session_job(&self, repo: &RepoKey, mapping: &SessionJobMapping) -> ();
        /// [`StorageExt::load_session_job`] on the blocking pool.
        fn load_session_job(&self, repo: &RepoKey, session: &SessionId) -> Option<SessionJobMapping>;
        /// [`StorageExt::session_for_job`] on the blocking pool.
        fn session_for_job(&self, repo: &RepoKey, job: &JobId) -> Option<SessionJobMapping>;
        /// [`StorageExt::save_unified_session`] on the blocking pool.
        fn save_unified_session(&self, session: &UnifiedSession) -> ();
        /// [`StorageExt::load_unified_session`] on the blocking pool.
        fn load_unified_session(&self, session: &SessionId) -> Option<UnifiedSession>;
        /// [`StorageExt::delete_unified_session`] on the blocking pool.
        fn delete_unified_session(&self, session: &SessionId) -> bool;
        /// [`StorageExt::unified_sessions`] on the blocking pool.
        fn unified_sessions(&self) -> (Vec<UnifiedSession>, Vec<Skipped>);
        /// [`StorageExt::save_session_workflow_checkpoint`] on the blocking pool.
        fn save_session_workflow_checkpoint(&self, session: &SessionId, cp: &WorkflowCheckpoint) -> ();
        /// [`StorageExt::load_session_workflow_checkpoint`] on the blocking pool.
        fn load_session_workflow_checkpoint(&self, session: &SessionId, workflow: &WorkflowId) -> Option<WorkflowCheckpoint>;
        /// [`StorageExt::tail_events`] on the blocking pool.
        fn tail_events(&self, repo: &RepoKey, job: &JobId; n: usize) -> Vec<EventRecord>;
        /// [`StorageExt::prune`] on the blocking pool.
        fn prune(&self, scope: &Scope, policy: &Retention; now: SystemTime) -> Vec<DocKey>;
        /// [`StorageExt::stats`] on the blocking pool.
        fn stats(&self) -> Vec<KindStats>;
    }
}

/// Waits for a blocking task. A panic in it is resumed here, as if the call
/// had run in place; a task the runtime cancelled (it is shutting down and
/// never ran it) is a panic too, since there is no result to give.
pub(crate) async fn join<T>(task: JoinHandle<T>) -> T {
    match task.await {
        Ok(value) => value,
        Err(e) => resume(e),
    }
}

/// Turns a failed blocking task into the panic it stands for.
pub(crate) fn resume(e: tokio::task::JoinError) -> ! {
    match e.try_into_panic() {
        Ok(payload) => std::panic::resume_unwind(payload),
        Err(e) => panic!(
            "a storage call was cancelled before it ran ({e}): the tokio runtime is shutting down"
        ),
    }
}

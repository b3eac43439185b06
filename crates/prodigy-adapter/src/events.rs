//! [`EventLogger`]: a job's events, buffered and appended in batches, as
//! Prodigy's `EventLogger` (`cook/execution/events/event_logger.rs`) does.
//!
//! Many agents log events; a durable append per event would cost an
//! `fsync` each. The logger buffers them and appends a batch when
//! [`FlushPolicy::max_records`] are waiting, when
//! [`FlushPolicy::interval`] passes (a tokio task with an interval), and
//! when it is closed or dropped.
//!
//! Order: records are appended in the order `log` took them. A flush takes
//! the buffer and appends it while holding the logger's append lock, so two
//! flushes (the timer's and a full buffer's) cannot reorder their batches.
//! A batch whose append fails goes back to the front of the buffer and is
//! tried again by the next flush; the store appends a batch whole or not
//! at all.
//!
//! Rotation: Prodigy's `JsonlEventWriter::with_rotation(path, size)` renames
//! a file that reached `size` aside and starts a new one. A job's log in
//! the store is one log that many processes append to, so renaming it is
//! not an option; its equivalent is the store's retention: with
//! [`FlushPolicy::with_rotation`] (or [`rotate_if_over`] after an append),
//! a log that reached the size has every record moved to a gzip archive of
//! the job (`archive/events/<repo>/<job>/` in the file store) and starts
//! empty, under the store's own rules: records appended meanwhile by other
//! processes are kept or archived whole, and followers' cursors go on
//! after the cut without skipping or repeating a record.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use storage_core::{
    EventCursor, EventRecord, EventRetention, JobId, RepoKey, Retention, RetentionReport, Storage,
};
use storage_tokio::{AsyncStorage, FollowStream};
use tokio::task::JoinHandle;

use crate::error::Result;

/// When the logger appends its buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FlushPolicy {
    /// Append as soon as this many records wait (Prodigy: 1,000).
    pub max_records: usize,
    /// Append what waits this often (Prodigy: 5 s).
    pub interval: Duration,
    /// After an append, archive the whole log once it holds this many bytes
    /// (see the module docs); `None` (the default) never rotates.
    pub rotate_at: Option<u64>,
}

impl Default for FlushPolicy {
    fn default() -> Self {
        Self {
            max_records: 1000,
            interval: Duration::from_secs(5),
            rotate_at: None,
        }
    }
}

impl FlushPolicy {
    /// Flushes at `max_records` (at least 1) or every `interval` (at least 1 ms).
    #[must_use]
    pub fn new(max_records: usize, interval: Duration) -> Self {
        Self {
            max_records: max_records.max(1),
            interval: interval.max(Duration::from_millis(1)),
            rotate_at: None,
        }
    }

    /// Also rotates the log once it holds `bytes` bytes (at least 1), as
    /// Prodigy's `with_rotation` does: see the module docs.
    #[must_use]
    pub fn with_rotation(mut self, bytes: u64) -> Self {
        self.rotate_at = Some(bytes.max(1));
        self
    }
}

/// Archives every record of the log of `job` in `repo` when it holds at
/// least `at_bytes` bytes, and returns what the store did (`None`: below
/// the size, or no such log). What Prodigy's size rotation becomes for a
/// log in the store (module docs). Blocking: call it on the blocking pool
/// (`AsyncStorage::run`), as the logger does.
pub fn rotate_if_over(
    s: &dyn Storage,
    repo: &RepoKey,
    job: &JobId,
    at_bytes: u64,
) -> storage_core::Result<Option<RetentionReport>> {
    match s.event_log_entry(repo, job)? {
        Some(entry) if entry.bytes >= at_bytes => {
            let all = EventRetention::new(Retention::keep_all().with_max_bytes(0));
            Ok(Some(s.retain_events(repo, job, &all)?))
        }
        _ => Ok(None),
    }
}

struct Shared {
    store: AsyncStorage,
    repo: RepoKey,
    job: JobId,
    rotate_at: Option<u64>,
    buffer: Mutex<Vec<EventRecord>>,
    /// Held while a batch is taken and appended (see the module docs).
    appending: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// Takes the buffer and appends it, in buffer order; a failed batch
    /// goes back to the front. Returns how many records were appended.
    fn flush_blocking(&self, s: &dyn Storage) -> storage_core::Result<usize> {
        let _in_order = lock(&self.appending);
        let batch = std::mem::take(&mut *lock(&self.buffer));
        if batch.is_empty() {
            return Ok(0);
        }
        match s.append_events(&self.repo, &self.job, &batch) {
            Ok(()) => {
                if let Some(at) = self.rotate_at
                    && let Err(e) = rotate_if_over(s, &self.repo, &self.job, at)
                {
                    // The batch is stored; the next flush tries again.
                    tracing::warn!(
                        repo = %self.repo, job = %self.job, error = %e,
                        "rotating the event log failed; it is tried again after the next append"
                    );
                }
                Ok(batch.len())
            }
            Err(e) => {
                let mut buffer = lock(&self.buffer);
                let newer = std::mem::replace(&mut *buffer, batch);
                buffer.extend(newer);
                Err(e)
            }
        }
    }

    async fn flush(self: &Arc<Self>) -> Result<usize> {
        let me = Arc::clone(self);
        Ok(self.store.run(move |s| me.flush_blocking(s)).await?)
    }
}

/// Buffers the events of one job and appends them in batches.
///
/// Must be created inside a tokio runtime (it spawns its timer task).
/// [`close`](EventLogger::close) it to append the rest on the blocking
/// pool and see any error; dropping it appends the rest synchronously on
/// the dropping thread (one append; an error is logged with `tracing`).
pub struct EventLogger {
    shared: Arc<Shared>,
    policy: FlushPolicy,
    timer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for EventLogger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLogger")
            .field("repo", &self.shared.repo)
            .field("job", &self.shared.job)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl EventLogger {
    /// A logger for the events of `job` in `repo`, flushing by `policy`.
    #[must_use]
    pub fn start(store: AsyncStorage, repo: RepoKey, job: JobId, policy: FlushPolicy) -> Self {
        let shared = Arc::new(Shared {
            store,
            repo,
            job,
            rotate_at: policy.rotate_at,
            buffer: Mutex::new(Vec::new()),
            appending: Mutex::new(()),
        });
        let ticking = Arc::clone(&shared);
        let timer = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(policy.interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await; // the first tick is immediate
            loop {
                ticks.tick().await;
                if lock(&ticking.buffer).is_empty() {
                    continue;
                }
                if let Err(e) = ticking.flush().await {
                    tracing::warn!(
                        repo = %ticking.repo, job = %ticking.job, error = %e,
                        "appending buffered events failed; they stay buffered for the next flush"
                    );
                }
            }
        });
        Self {
            shared,
            policy,
            timer: Some(timer),
        }
    }

    /// Buffers `event`; appends the buffer if it is full.
    pub async fn log(&self, event: EventRecord) -> Result<()> {
        let full = {
            let mut buffer = lock(&self.shared.buffer);
            buffer.push(event);
            buffer.len() >= self.policy.max_records
        };
        if full {
            self.shared.flush().await?;
        }
        Ok(())
    }

    /// Appends what is buffered now; returns how many records went.
    pub async fn flush(&self) -> Result<usize> {
        self.shared.flush().await
    }

    /// How many records wait in the buffer.
    #[must_use]
    pub fn pending(&self) -> usize {
        lock(&self.shared.buffer).len()
    }

    /// Follows this job's log (everything appended, by this logger or any
    /// other process), from `from`.
    pub fn follow(&self, from: EventCursor) -> FollowStream {
        self.shared
            .store
            .follow(&self.shared.repo, &self.shared.job, from)
    }

    /// Stops the timer and appends the rest.
    pub async fn close(mut self) -> Result<()> {
        if let Some(timer) = self.timer.take() {
            timer.abort();
        }
        self.shared.flush().await?;
        Ok(())
    }
}

impl Drop for EventLogger {
    fn drop(&mut self) {
        if let Some(timer) = self.timer.take() {
            // A flush the timer began runs to its end on the blocking pool.
            timer.abort();
        }
        let store = Arc::clone(self.shared.store.store());
        if let Err(e) = self.shared.flush_blocking(&*store) {
            tracing::error!(
                repo = %self.shared.repo, job = %self.shared.job, error = %e,
                lost = self.pending(),
                "the event logger was dropped and its last batch could not be appended"
            );
        }
    }
}

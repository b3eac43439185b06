//! Prodigy's storage for tokio code: [`AsyncStorage`] runs every
//! [`Storage`](storage_core::Storage) call on tokio's blocking pool, and
//! reads and follows event logs as [`Stream`](futures_core::Stream)s.
//!
//! The store is synchronous on purpose: a durable write is a handful of
//! system calls (`write`, `fsync`, `rename`) that no async runtime makes
//! cheaper, and one synchronous trait serves Prodigy's tokio code, its
//! tests and the command-line tools alike. What async code needs is that a
//! call never blocks a runtime worker. [`AsyncStorage`] gives exactly that
//! with `spawn_blocking`, with the trait's own signatures (add `.await`),
//! and works on the `current_thread` runtime too, which Prodigy's
//! `block_in_place` does not. Each call runs in a
//! [`BlockingSection`](storage_core::BlockingSection), which tells a store
//! whose client library blocks on a runtime of its own (the PostgreSQL
//! store) that it may do so on that thread.
//!
//! # Main types
//!
//! - [`AsyncStorage`]: a cheap-to-clone handle over an `Arc<dyn Storage>`;
//!   one `async fn` per method of `Storage` and `StorageExt`, and
//!   [`AsyncStorage::run`] for several calls as one unit.
//! - [`EventStream`] ([`AsyncStorage::read_events`]): one pass over a log,
//!   fed through a bounded channel, so memory holds at most the channel's
//!   capacity of records however long the log is; its
//!   [`summary`](EventStream::summary) says where to continue.
//! - [`FollowStream`] ([`AsyncStorage::follow`]): reads, then waits for
//!   appends with [`Storage::wait_for_events`](storage_core::Storage::wait_for_events)
//!   on the blocking pool, for as long as it is kept; each [`Followed`]
//!   record carries a cursor to resume from.
//!
//! # Cancellation
//!
//! Dropping a future or a stream never leaves a half-done write, because
//! the unit of work on the blocking pool is a whole call:
//!
//! - A method's future does nothing until it is first polled; from then its
//!   call runs to its end on the blocking pool even if the future is dropped
//!   (the result is discarded). So every call completes or never starts:
//!   `put` writes the whole document or nothing, `append_events` the whole
//!   batch, and multi-document operations (`delete_job`,
//!   `delete_dead_letters`, `keep_newest_job_checkpoints`, `prune`, and a
//!   closure given to [`AsyncStorage::run`]) finish every step they began.
//!   A dropped `lock` future whose call then gets the lock drops the guard at
//!   once: the lock is released, never leaked.
//! - A stream's blocking task checks, before each step (each read pass,
//!   each wait of at most [`AsyncStorage::with_wait_slice`]), whether its
//!   stream is still there, and ends when it is not. The trait's visitor
//!   cannot stop a read half-way, so a pass that is running finishes its
//!   walk of the log, sending nothing more and holding nothing.
//!
//! # Limitations
//!
//! - Calls must be made inside a tokio runtime (they call `spawn_blocking`);
//!   a call outside one panics, as tokio's own functions do.
//! - A panic in the store is resumed in the awaiting task (or in the task
//!   polling the stream), like any panic in a spawned task.
//!
//! # Example
//!
//! ```
//! use serde_json::json;
//! use storage_core::{EventCursor, EventRecord, JobId, MemoryStorage, RepoKey};
//! use storage_tokio::AsyncStorage;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
//! let store = AsyncStorage::new(MemoryStorage::new());
//! let (repo, job) = (RepoKey::new("api")?, JobId::new("mapreduce-1")?);
//! let mut follow = store.follow(&repo, &job, EventCursor::START);
//! let event = EventRecord::from_json(json!({"event": {"event_type": "agent_started"}}))?;
//! store.append_events(&repo, &job, &[event.clone()]).await?;
//! let seen = follow.next().await.expect("a follow stream ends only after an error")?;
//! assert_eq!(seen.record, event);
//! // `seen.cursor` is where a new follower resumes after this record.
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod adapter;
mod stream;

#[cfg(any(test, feature = "suite"))]
pub mod suite;

// The suite's macro names this crate by its name, as a user of it would.
#[cfg(test)]
extern crate self as storage_tokio;

pub use adapter::AsyncStorage;
pub use stream::{EventStream, FollowStream, Followed};

#[cfg(test)]
mod memory_suite {
    crate::async_storage_tests!(
        || crate::suite::TestStore::new(storage_core::MemoryStorage::new())
    );
}

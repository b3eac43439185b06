//! A worked example of adopting the storage API: the storage-facing
//! components Prodigy has today, written from their behaviour over
//! [`storage_tokio::AsyncStorage`], so that the change to Prodigy is a
//! change of what these types call, not of what its code around them does.
//!
//! Not published: it is the shape to copy (or to move into Prodigy whole),
//! and the test that the API has what Prodigy's call sites need
//! (`docs/adopting.md` maps every module).
//!
//! # Main types
//!
//! - [`JobStateManager`] (`cook/execution/state.rs`): MapReduce job
//!   checkpoints: the next version with the payload's `checkpoint_version`
//!   made to agree, the newest three kept, latest or a given version,
//!   resumable jobs across repositories, delete.
//! - [`DeadLetterQueue`] (`cook/execution/dlq.rs`): add and remove with the
//!   index refreshed, lenient listing, reprocessing of eligible items, purge.
//! - [`ResumeLock`] (`cook/execution/resume_lock.rs`): one resume per job or
//!   session, the holder named in the refusal, released on drop.
//! - [`EventLogger`] (`cook/execution/events/event_logger.rs`): batched
//!   appends, flushed by count, by time and on close or drop; and the
//!   job's log followed as a stream.
//! - [`SessionManager`] (`unified_session/`): create, status updates along
//!   Prodigy's lifecycle, load by id, lenient listing, delete.
//!
//! # Invariants
//!
//! - Depends on the trait only (`storage-core`, `storage-tokio`), never on a
//!   store: the same code runs on `MemoryStorage` in tests and on the file
//!   store (or a database) in Prodigy, and one generic suite
//!   (`adapter_tests!`, feature `suite`) checks it on each.
//! - Every operation that reads, decides and writes is one call on the
//!   blocking pool ([`AsyncStorage::run`](storage_tokio::AsyncStorage::run)):
//!   a dropped future never leaves it half done.
//! - Payloads stay Prodigy's JSON: a component changes only the fields its
//!   operation is about, and everything else round-trips.
//!
//! # Example
//!
//! ```
//! use serde_json::json;
//! use storage_core::{JobCheckpoint, JobId, MemoryStorage, RepoKey};
//! use storage_tokio::AsyncStorage;
//! use prodigy_adapter::JobStateManager;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
//! let store = AsyncStorage::new(MemoryStorage::new());
//! let jobs = JobStateManager::new(store, RepoKey::new("api")?);
//! let state = JobCheckpoint::from_json(json!({
//!     "job_id": "mapreduce-1", "checkpoint_version": 41, "is_complete": false
//! }))?;
//! assert_eq!(jobs.save(&state).await?, 0, "a job's first checkpoint is version 0");
//! let (version, saved) = jobs.load(&JobId::new("mapreduce-1")?, None).await?;
//! assert_eq!((version, saved.checkpoint_version()), (0, Some(0)));
//! assert_eq!(jobs.resumable_jobs_everywhere().await?.jobs.len(), 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#[cfg(feature = "fs")]
pub mod dirs;
mod dlq;
mod error;
mod events;
mod job_state;
mod resume_lock;
mod sessions;
mod time;

#[cfg(any(test, feature = "suite"))]
pub mod suite;

// The suite's macro names this crate by its name, as a user of it would.
#[cfg(test)]
extern crate self as prodigy_adapter;

pub use dlq::{DeadLetterQueue, DeadLetters, Reprocess, Reprocessed, is_eligible};
pub use error::{Error, Result};
pub use events::{EventLogger, FlushPolicy, rotate_if_over};
pub use job_state::{
    CheckpointPaths, CheckpointVersion, JobStateManager, KEEP_CHECKPOINTS, ResumableJob,
    ResumableJobs,
};
pub use resume_lock::{ResumeLock, ResumeTarget};
pub use sessions::{SessionKind, SessionManager, SessionStatus, Sessions, new_session};
pub use storage_tokio::{FollowStream, Followed};
pub use time::rfc3339;

#[cfg(test)]
mod memory_suite {
    crate::adapter_tests!(|| storage_tokio::suite::TestStore::new(
        storage_core::MemoryStorage::new()
    ));
}

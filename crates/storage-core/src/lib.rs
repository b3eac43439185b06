//! The types and the one API of Prodigy's storage, with no I/O.
//!
//! Prodigy once kept two stores, one inside each project (`.prodigy/`) and one
//! global (`~/.prodigy/`). This crate defines the single API that replaces
//! both; `storage-fs` implements it on disk, [`MemoryStorage`] in memory.
//!
//! # Main types
//!
//! - Identifiers ([`RepoKey`], [`JobId`], [`SessionId`], [`WorkflowId`],
//!   [`ItemId`], [`LockKey`]): every value that becomes a path component is
//!   validated once, at construction; hostile values are rejected, never
//!   rewritten.
//! - Records ([`SessionRecord`], [`JobCheckpoint`], [`WorkflowCheckpoint`],
//!   [`DeadLetterItem`], [`SessionJobMapping`], [`EventRecord`]): typed views
//!   that keep their whole JSON payload, so fields this crate does not know
//!   (or that old files lack) survive a round trip unchanged.
//! - [`Storage`]: documents (`put`/`get`/`delete`/`list`), event logs
//!   (`append_events`/`read_events`/`event_logs`) and exclusive locks
//!   (`lock`). [`StorageExt`] adds typed record methods on top.
//! - [`Error`]: one `#[non_exhaustive]` error type; disk variants carry the path.
//!
//! # Invariants
//!
//! - No I/O and no knowledge of paths on disk: only `storage-fs` knows the layout.
//! - Records are never re-shaped: what is saved is what is loaded.
//! - What a store accepts it can read back: every store refuses a document
//!   or event nested deeper than [`MAX_JSON_DEPTH`] ([`check_document`],
//!   [`check_events`]) instead of keeping what `serde_json` cannot read.
//!
//! # Example
//!
//! ```
//! use serde_json::json;
//! use storage_core::{MemoryStorage, RepoKey, SessionId, SessionRecord, StorageExt};
//!
//! let store = MemoryStorage::new();
//! let repo = RepoKey::new("prodigy")?;
//! let session = SessionRecord::from_json(json!({
//!     "session_id": "session-1", "status": "InProgress", "field_from_2026": 1
//! }))?;
//! store.save_session(&repo, &session)?;
//! let back = store.load_session(&repo, &SessionId::new("session-1")?)?;
//! assert_eq!(back, Some(session));
//! assert!(SessionId::new("../etc").is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod blocking;
mod depth;
mod error;
mod ext;
mod id;
mod memory;
mod record;
mod storage;
mod time;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

pub use blocking::BlockingSection;
pub use depth::{MAX_JSON_DEPTH, READER_JSON_DEPTH, check_document, check_events, json_depth};
pub use error::{Error, Result};
pub use ext::{KindStats, StorageExt};
pub use id::{
    DocName, ExtKind, IdError, IdProblem, ItemId, JobId, LockKey, MAX_ID_BYTES, RepoKey, SessionId,
    WorkflowId, check_component, is_bidi_control,
};
pub use memory::MemoryStorage;
pub use record::{
    DeadLetterItem, EventRecord, JobCheckpoint, LockHolder, RecordError, SessionJobMapping,
    SessionRecord, UnifiedSession, WorkflowCheckpoint,
};
pub use storage::{
    Appended, DocKey, Entry, EventCursor, EventLogSummary, EventRetention, Fence, HeldLock,
    LockGuard, LockWait, LogEntry, ReadMode, Retention, RetentionReport, Scope, Skipped, Storage,
    TornTail,
};
pub use time::parse_rfc3339;

#[cfg(test)]
mod memory_conformance {
    crate::storage_conformance_tests!(|check: &dyn Fn(&dyn crate::Storage)| {
        check(&crate::MemoryStorage::new());
    });
}

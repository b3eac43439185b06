//! The one error type of every `Storage` implementation.
//!
//! Variants are what a caller can act on: retry later (`Locked`), report the
//! exact file (`Io`, `Corrupt`), upgrade the tool (`UnsupportedLayout`,
//! `UnsupportedSchema`), or fix
//! its input (`InvalidId`, `InvalidRecord`). Every disk variant carries the
//! path as a field, and the underlying error as a `#[source]`.

use std::path::PathBuf;
use std::time::Duration;

use crate::id::{IdError, JobId, LockKey, RepoKey};
use crate::record::{LockHolder, RecordError};
use crate::storage::EventCursor;

/// Errors from storage operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An identifier broke the path-component rules.
    #[error(transparent)]
    InvalidId(#[from] IdError),

    /// A payload cannot be filed as the record it claims to be.
    #[error(transparent)]
    InvalidRecord(#[from] RecordError),

    /// A document's key and its payload disagree (e.g. a session saved under another id).
    #[error("the {record} payload names `{found}` but is filed as `{expected}`")]
    KeyMismatch {
        /// The record type.
        record: &'static str,
        /// The id the key gives.
        expected: String,
        /// The id the payload gives.
        found: String,
    },

    /// Another process holds the lock.
    #[error("{} is locked{}{}", lock_name(.key), holder_text(.holder.as_ref()), waited_text(*.waited))]
    Locked {
        /// The lock.
        key: LockKey,
        /// What the holder wrote about itself, if it could be read (a hint only).
        holder: Option<LockHolder>,
        /// How long the caller waited before giving up.
        waited: Option<Duration>,
    },

    /// A stored file cannot be parsed.
    #[error("`{}`{} is corrupt: {reason}", .path.display(), line_text(*.line))]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The 1-based line, for line-oriented files.
        line: Option<u64>,
        /// What is wrong.
        reason: String,
    },

    /// The store on disk was written by a newer layout than this build
    /// understands (for a database store: [`Error::UnsupportedSchema`]).
    #[error(
        "the store at `{}` has layout version {found}, this build understands up to {supported}; \
         upgrade prodigy-storage, or point --home / PRODIGY_HOME elsewhere",
        .path.display()
    )]
    UnsupportedLayout {
        /// The store's root.
        path: PathBuf,
        /// The version found on disk.
        found: u64,
        /// The newest version this build reads.
        supported: u64,
    },

    /// The database store (PostgreSQL) was migrated to a newer schema than
    /// this build understands: a newer build wrote to it. Nothing was
    /// written or guessed at. The database counterpart of
    /// [`Error::UnsupportedLayout`], whose way out (`--home`) is the file
    /// store's.
    #[error(
        "the store `{store}` has schema version {found}, this build understands up to {supported}; \
         upgrade prodigy-storage, or connect to another database or PostgreSQL schema"
    )]
    UnsupportedSchema {
        /// The store, as its connection string shows it without a password.
        store: String,
        /// The version found in the database.
        found: u64,
        /// The newest version this build reads.
        supported: u64,
    },

    /// The store holds data in the layout Prodigy's own code wrote before
    /// this storage layer ("layout 0": no `layout.json`), and this build
    /// cannot read it in place (the file store without its feature
    /// `layout-0`). Nothing is written to it until it is upgraded, so that
    /// no data becomes unreachable.
    #[error(
        "the store at `{}` holds Prodigy data in the layout older Prodigy versions wrote (layout 0) \
         and has not been upgraded yet; nothing was written. Run `prodigy-storage upgrade` \
         (Prodigy's start-up does it too); `prodigy-storage status` shows what it would do",
        .path.display()
    )]
    UpgradeRequired {
        /// The store's root.
        path: PathBuf,
    },

    /// No store location could be determined.
    #[error(
        "cannot find the home directory to put the store in; set PRODIGY_HOME or pass --home DIR"
    )]
    NoStoreLocation,

    /// A database server (the PostgreSQL store) could not be reached, or
    /// refused or failed an operation. The error of the server or of the
    /// client library is the source; `next` names what the user can do
    /// about it, when there is something.
    #[error("cannot {op} `{store}`{}", next_text(*.next))]
    Database {
        /// What was being done, ending in its preposition (`"connect to"`,
        /// `"append events to"`, ...).
        op: &'static str,
        /// The store, as its connection string shows it without a password.
        store: String,
        /// The next step for the user, if the error tells one.
        next: Option<&'static str>,
        /// The server's or the client library's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A compare-and-append found the log somewhere else than expected, and
    /// the batch is not at the expected place: another writer appended
    /// first. Nothing was written.
    #[error(
        "the event log of job `{job}` in `{repo}` no longer ends where this append expected: \
         another writer appended first; nothing was written. Read what was added since, \
         then append again at the log's end"
    )]
    AppendConflict {
        /// Repository.
        repo: RepoKey,
        /// Job.
        job: JobId,
        /// Where the log ends now.
        end: EventCursor,
    },

    /// A write under a lock was refused: the lock has been taken again
    /// since the writer's acquisition (a larger token), or the record of
    /// its tokens is gone (its fence file or row was removed). Nothing was
    /// written.
    #[error(
        "the lock {} is no longer held by this writer (its token {token}{}); nothing was written. \
         Stop the work it guarded: another process may hold it now",
        lock_name(.key),
        current_text(*.current)
    )]
    LockLost {
        /// The lock.
        key: LockKey,
        /// The writer's token.
        token: u64,
        /// The lock's newest token, if its record is there.
        current: Option<u64>,
    },

    /// The store does not implement an operation (a `Storage` written
    /// outside this workspace, before the operation existed).
    #[error("this store does not support {op}")]
    Unsupported {
        /// The operation.
        op: &'static str,
    },

    /// A system call on a path failed.
    #[error("cannot {op} `{}`", .path.display())]
    Io {
        /// What was being done (`"create"`, `"fsync"`, `"rename into"`, ...).
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

fn lock_name(key: &LockKey) -> String {
    format!("`{key}`")
}

fn holder_text(holder: Option<&LockHolder>) -> String {
    holder.map_or_else(String::new, |h| format!(" by {h}"))
}

fn waited_text(waited: Option<Duration>) -> String {
    waited.map_or_else(
        || "; try again when it finishes".to_owned(),
        |w| {
            format!(
                " (waited {:.1}s); try again when it finishes",
                w.as_secs_f64()
            )
        },
    )
}

fn next_text(next: Option<&str>) -> String {
    next.map_or_else(String::new, |n| format!("; {n}"))
}

fn current_text(current: Option<u64>) -> String {
    current.map_or_else(
        || "; the lock's file or row is gone".to_owned(),
        |c| format!(", the lock's is {c}"),
    )
}

fn line_text(line: Option<u64>) -> String {
    line.map_or_else(String::new, |l| format!(" at line {l}"))
}

impl Error {
    /// Builds an [`Error::Io`].
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

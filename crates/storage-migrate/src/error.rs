//! The migration's error type: what stopped it, with the path and the next step.
//!
//! A migration that can partly succeed reports through
//! [`MigrationReport`](crate::MigrationReport); errors are only for what stops it.
//! Every error leaves the legacy files where they were (or restorable from a
//! verified backup) and the store without a half-published migration.

use std::path::PathBuf;

/// Errors from migration, verification and rollback.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store failed (I/O with its path, a lock held, a corrupt file, ...).
    #[error(transparent)]
    Store(#[from] storage_core::Error),

    /// The command will not run for this project; nothing was changed.
    #[error("refusing to {action} `{}`: {reason}", .path.display())]
    Refused {
        /// What was refused: `migrate`, `roll back`, `verify`.
        action: &'static str,
        /// The path the refusal is about.
        path: PathBuf,
        /// Why, and what to do instead.
        reason: String,
    },

    /// A staged file did not match its source; nothing was published.
    #[error(
        "verification failed for `{}`: {what}; nothing was published and the legacy files are untouched",
        .path.display()
    )]
    Verify {
        /// The file that failed verification.
        path: PathBuf,
        /// What did not match.
        what: String,
    },

    /// Rollback would lose data, so it did not start; nothing was changed.
    #[error("cannot roll back: {reason}")]
    RollbackRefused {
        /// What is in the way and how to proceed.
        reason: String,
        /// The paths concerned.
        paths: Vec<PathBuf>,
    },

    /// The migration stopped after it began publishing. Nothing is lost:
    /// the store holds verified copies, and each legacy file is in the
    /// project or in the backup. Both ways out are named.
    #[error(
        "migration {txid} of `{}` stopped half-way (it had begun publishing); nothing is lost. \
         To finish it, run `{finish}`; to undo it, run `{undo}`",
        .project.display()
    )]
    Unfinished {
        /// The migration.
        txid: String,
        /// The project.
        project: PathBuf,
        /// The command that finishes it.
        finish: String,
        /// The command that undoes it.
        undo: String,
        /// What stopped it.
        #[source]
        source: Box<Error>,
    },

    /// One `migrate` migrates the project's `.prodigy/` and its
    /// sub-directories' one transaction each: one failed after others had
    /// committed. What committed stays migrated (and verified); the failed
    /// one left everything of its own as it was.
    #[error(
        "the legacy storage in `{}` could not be migrated; the {} migration(s) before it in this run          ({}) were committed and stay migrated. Fix what the cause below says and run          `prodigy-storage migrate` again (it picks up what is left), or `prodigy-storage rollback`          to undo what was migrated",
        .dir.display(),
        .committed.len(),
        .committed.join(", ")
    )]
    PartlyMigrated {
        /// The legacy directory that failed.
        dir: PathBuf,
        /// The transactions of this run that committed.
        committed: Vec<String>,
        /// Why it failed.
        #[source]
        source: Box<Error>,
    },

    /// A link (or a file) stands where the legacy storage had a directory;
    /// nothing is ever written through it.
    #[error(
        "`{}` is a symbolic link or not a directory, where the legacy storage had a directory; \
         prodigy-storage never writes through links: move it away and run the command again",
        .path.display()
    )]
    Link {
        /// The link.
        path: PathBuf,
    },

    /// A migration journal or manifest cannot be read.
    #[error("cannot read migration record `{}`: {reason}; {next}", .path.display())]
    Record {
        /// The journal or manifest.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
        /// What the user can do.
        next: String,
    },
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Store(storage_core::Error::io(op, path, source))
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

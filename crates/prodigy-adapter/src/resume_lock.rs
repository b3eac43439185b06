//! [`ResumeLock`]: one resume at a time per job or session, as Prodigy's
//! `ResumeLockManager` (`cook/execution/resume_lock.rs`) promises.
//!
//! Prodigy creates `<id>.lock` with `O_EXCL`, writes who holds it, and
//! decides whether a leftover file is stale by asking whether its process
//! id still runs (which a reused pid defeats, and which cannot be asked
//! across hosts). The store's lock is a kernel lock instead: a holder that
//! dies releases it, and the holder's description is a hint for the
//! refusal's message, never the lock itself. A refusal is
//! [`storage_core::Error::Locked`], whose message names the holder
//! (`` `mapreduce-1` is locked by process 4711 on build-3 since …; try again
//! when it finishes ``).

use std::time::SystemTime;

use storage_core::{IdError, JobId, LockGuard, LockHolder, LockKey, LockWait, SessionId};
use storage_tokio::AsyncStorage;

use crate::error::Result;
use crate::time::rfc3339;

/// What a resume lock guards.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResumeTarget {
    /// A MapReduce job (`prodigy resume-job`).
    Job(JobId),
    /// A session (`prodigy resume`).
    Session(SessionId),
}

impl ResumeTarget {
    /// The id, as Prodigy names the lock (`<id>.lock`).
    #[must_use]
    pub fn as_str(&self) -> &str {
        match self {
            ResumeTarget::Job(j) => j.as_str(),
            ResumeTarget::Session(s) => s.as_str(),
        }
    }

    fn key(&self) -> Result<LockKey, IdError> {
        LockKey::new(self.as_str())
    }
}

/// A held resume lock; dropping it (on any thread) releases it.
#[derive(Debug)]
#[must_use = "the lock is released as soon as it is dropped"]
pub struct ResumeLock {
    guard: LockGuard,
    holder: LockHolder,
}

impl ResumeLock {
    /// Takes the resume lock of `target` for this process on `hostname`,
    /// waiting as `wait` says. Held elsewhere:
    /// [`Error::Storage`](crate::Error::Storage)`(`[`Locked`](storage_core::Error::Locked)`)`,
    /// naming the holder.
    pub async fn acquire(
        store: &AsyncStorage,
        target: &ResumeTarget,
        hostname: &str,
        wait: LockWait,
    ) -> Result<Self> {
        let key = target.key().map_err(storage_core::Error::from)?;
        let holder = LockHolder {
            job_id: target.as_str().to_owned(),
            process_id: std::process::id(),
            hostname: hostname.to_owned(),
            acquired_at: rfc3339(SystemTime::now()),
        };
        let guard = store.lock(&key, &holder, wait).await?;
        Ok(Self { guard, holder })
    }

    /// Who holds it (this process).
    #[must_use]
    pub fn holder(&self) -> &LockHolder {
        &self.holder
    }

    /// The lock's key.
    #[must_use]
    pub fn key(&self) -> &LockKey {
        self.guard.key()
    }

    /// Releases the lock now (the same as dropping it).
    pub fn release(self) {}
}

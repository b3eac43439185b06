//! An in-memory [`Storage`] for Prodigy's own unit tests.
//!
//! It keeps the same contract as the on-disk store within one process (the
//! conformance suite runs on both), so code tested against it behaves the
//! same against the real store. It is not persistent and not shared between
//! processes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::id::{JobId, LockKey, RepoKey};
use crate::record::{EventRecord, LockHolder};
use crate::storage::{DocKey, EventLogSummary, LockGuard, LockWait, Scope, Storage};

#[derive(Default)]
struct Locks {
    held: Mutex<BTreeMap<LockKey, LockHolder>>,
    freed: Condvar,
}

/// A [`Storage`] held in memory.
#[derive(Default)]
pub struct MemoryStorage {
    docs: Mutex<BTreeMap<DocKey, Value>>,
    events: Mutex<BTreeMap<(RepoKey, JobId), Vec<EventRecord>>>,
    locks: Arc<Locks>,
}

impl MemoryStorage {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }
}

fn guard<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in another test thread must not hide this store's data.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn in_scope(key: &DocKey, scope: &Scope) -> bool {
    match (scope, key) {
        (Scope::Sessions(r), DocKey::Session { repo, .. })
        | (Scope::WorkflowCheckpoints(r), DocKey::WorkflowCheckpoint { repo, .. })
        | (Scope::SessionJobs(r), DocKey::SessionJob { repo, .. }) => r == repo,
        (Scope::JobCheckpoints(r, j), DocKey::JobCheckpoint { repo, job, .. })
        | (Scope::DeadLetters(r, j), DocKey::DeadLetter { repo, job, .. }) => r == repo && j == job,
        _ => false,
    }
}

struct Held {
    key: LockKey,
    locks: Arc<Locks>,
}

impl Drop for Held {
    fn drop(&mut self) {
        guard(&self.locks.held).remove(&self.key);
        self.locks.freed.notify_all();
    }
}

impl Storage for MemoryStorage {
    fn put(&self, key: &DocKey, doc: &Value) -> Result<()> {
        guard(&self.docs).insert(key.clone(), doc.clone());
        Ok(())
    }

    fn get(&self, key: &DocKey) -> Result<Option<Value>> {
        Ok(guard(&self.docs).get(key).cloned())
    }

    fn delete(&self, key: &DocKey) -> Result<bool> {
        Ok(guard(&self.docs).remove(key).is_some())
    }

    fn list(&self, scope: &Scope) -> Result<Vec<DocKey>> {
        Ok(guard(&self.docs)
            .keys()
            .filter(|k| in_scope(k, scope))
            .cloned()
            .collect())
    }

    fn jobs(&self, repo: &RepoKey) -> Result<Vec<JobId>> {
        let jobs: BTreeSet<JobId> = guard(&self.docs)
            .keys()
            .filter_map(|k| match k {
                DocKey::JobCheckpoint { repo: r, job, .. }
                | DocKey::JobMetadata { repo: r, job }
                    if r == repo =>
                {
                    Some(job.clone())
                }
                _ => None,
            })
            .collect();
        Ok(jobs.into_iter().collect())
    }

    fn append_events(&self, repo: &RepoKey, job: &JobId, events: &[EventRecord]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        guard(&self.events)
            .entry((repo.clone(), job.clone()))
            .or_default()
            .extend_from_slice(events);
        Ok(())
    }

    fn read_events(
        &self,
        repo: &RepoKey,
        job: &JobId,
        visit: &mut dyn FnMut(EventRecord),
    ) -> Result<EventLogSummary> {
        // Copy out first so a visitor that touches the store cannot deadlock.
        let records = guard(&self.events)
            .get(&(repo.clone(), job.clone()))
            .cloned()
            .unwrap_or_default();
        let mut summary = EventLogSummary::default();
        for r in records {
            summary.records += 1;
            visit(r);
        }
        Ok(summary)
    }

    fn event_logs(&self, repo: &RepoKey) -> Result<Vec<JobId>> {
        Ok(guard(&self.events)
            .keys()
            .filter(|(r, _)| r == repo)
            .map(|(_, j)| j.clone())
            .collect())
    }

    fn lock(&self, key: &LockKey, holder: &LockHolder, wait: LockWait) -> Result<LockGuard> {
        let start = Instant::now();
        let deadline = match wait {
            LockWait::NoWait => start,
            LockWait::Timeout(d) => start + d,
        };
        let mut held = guard(&self.locks.held);
        loop {
            if !held.contains_key(key) {
                held.insert(key.clone(), holder.clone());
                let h = Held {
                    key: key.clone(),
                    locks: Arc::clone(&self.locks),
                };
                return Ok(LockGuard::new(key.clone(), Box::new(h)));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Locked {
                    key: key.clone(),
                    holder: held.get(key).cloned(),
                    waited: matches!(wait, LockWait::Timeout(_)).then(|| now - start),
                });
            }
            let timeout = (deadline - now).min(Duration::from_millis(50));
            held = self
                .locks
                .freed
                .wait_timeout(held, timeout)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

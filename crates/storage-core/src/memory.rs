//! An in-memory [`Storage`] for Prodigy's own unit tests.
//!
//! It keeps the same contract as the on-disk store within one process (the
//! conformance suite runs on both), so code tested against it behaves the
//! same against the real store. It is not persistent and not shared between
//! processes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::id::{ExtKind, JobId, LockKey, RepoKey};
use crate::record::{EventRecord, LockHolder};
use crate::storage::{
    Appended, DocKey, Entry, EventCursor, EventLogSummary, EventRetention, Fence, HeldLock,
    LockGuard, LockWait, LogEntry, ReadMode, RetentionReport, Scope, Storage,
};

#[derive(Default)]
struct Locks {
    held: Mutex<LockTable>,
    freed: Condvar,
}

/// Who holds each lock, and each lock's newest fencing token.
#[derive(Default)]
struct LockTable {
    holders: BTreeMap<LockKey, LockHolder>,
    tokens: BTreeMap<LockKey, u64>,
}

impl LockTable {
    /// Refuses a write fenced with anything but `fence.key`'s newest token.
    fn check(&self, fence: &Fence) -> Result<()> {
        let current = self.tokens.get(&fence.key).copied();
        if current == Some(fence.token) {
            Ok(())
        } else {
            Err(Error::LockLost {
                key: fence.key.clone(),
                token: fence.token,
                current,
            })
        }
    }
}

/// One stored document: its JSON, its size as the file store would write
/// it, and when it was written.
struct Doc {
    value: Value,
    bytes: u64,
    modified: SystemTime,
}

/// One event log. `base` is the absolute index of `records[0]`: retention
/// drops from the front and raises it, so a cursor (an absolute index)
/// stays meaningful.
struct Log {
    /// This incarnation of the log: a log deleted and begun again gets a
    /// new one, so a cursor of the old one never fits the new one.
    generation: u64,
    base: u64,
    records: Vec<(EventRecord, u64)>,
    oldest: SystemTime,
    modified: SystemTime,
}

#[derive(Default)]
struct Logs {
    by_job: Mutex<BTreeMap<(RepoKey, JobId), Log>>,
    appended: Condvar,
    /// The last generation given to a log.
    last_generation: std::sync::atomic::AtomicU64,
}

impl Log {
    fn push(&mut self, events: &[EventRecord]) {
        self.records
            .extend(events.iter().map(|e| (e.clone(), line_bytes(e))));
        self.modified = SystemTime::now();
    }

    fn end(&self) -> u64 {
        self.base + self.records.len() as u64
    }

    fn cursor(&self, at: u64) -> EventCursor {
        EventCursor {
            segment: String::new(),
            offset: at,
            generation: self.generation,
        }
    }

    /// Where a read from `from` starts, and whether that is a restart: at
    /// the cursor if it is this incarnation's and inside the log, at the
    /// first record kept if retention trimmed what it pointed at, and at the
    /// start (a restart) for a cursor of another incarnation or past the end.
    fn start_of(&self, from: &EventCursor) -> (u64, bool) {
        if *from == EventCursor::START {
            (self.base, false)
        } else if from.generation == self.generation && from.offset <= self.end() {
            (from.offset.max(self.base), false)
        } else {
            (self.base, true)
        }
    }
}

/// A [`Storage`] held in memory.
#[derive(Default)]
pub struct MemoryStorage {
    docs: Mutex<BTreeMap<DocKey, Doc>>,
    events: Logs,
    archives: Mutex<Vec<(String, Vec<EventRecord>)>>,
    locks: Arc<Locks>,
}

impl MemoryStorage {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The records archived by [`Storage::retain_events`] under `name` (the
    /// report's `archive`), for tests.
    #[must_use]
    pub fn archived(&self, name: &str) -> Option<Vec<EventRecord>> {
        guard(&self.archives)
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, r)| r.clone())
    }
}

fn guard<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in another test thread must not hide this store's data.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn line_bytes(e: &EventRecord) -> u64 {
    serde_json::to_vec(e.json()).map_or(0, |v| v.len() as u64 + 1)
}

struct Held {
    key: LockKey,
    token: u64,
    locks: Arc<Locks>,
}

impl Drop for Held {
    fn drop(&mut self) {
        guard(&self.locks.held).holders.remove(&self.key);
        self.locks.freed.notify_all();
    }
}

impl HeldLock for Held {
    fn token(&self) -> u64 {
        self.token
    }
    // A lock in memory is lost only with its guard.
    fn check(&self) -> Result<bool> {
        Ok(true)
    }
    fn known_lost(&self) -> bool {
        false
    }
}

impl MemoryStorage {
    fn keys_where(&self, f: impl Fn(&DocKey) -> Option<JobId>) -> Vec<JobId> {
        let jobs: BTreeSet<JobId> = guard(&self.docs).keys().filter_map(f).collect();
        jobs.into_iter().collect()
    }

    /// The log of `job`, begun (with a new generation) if it does not exist.
    fn log_for_append<'a>(
        &self,
        logs: &'a mut BTreeMap<(RepoKey, JobId), Log>,
        repo: &RepoKey,
        job: &JobId,
    ) -> &'a mut Log {
        logs.entry((repo.clone(), job.clone())).or_insert_with(|| {
            let now = SystemTime::now();
            Log {
                generation: self
                    .events
                    .last_generation
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    + 1,
                base: 0,
                records: Vec::new(),
                oldest: now,
                modified: now,
            }
        })
    }
}

impl Storage for MemoryStorage {
    fn put(&self, key: &DocKey, doc: &Value) -> Result<()> {
        // Refused here too, though this store could keep it: code tested
        // against it must meet the refusal the other stores give.
        crate::depth::check_document(doc)?;
        let bytes = serde_json::to_vec_pretty(doc).map_or(0, |v| v.len() as u64);
        guard(&self.docs).insert(
            key.clone(),
            Doc {
                value: doc.clone(),
                bytes,
                modified: SystemTime::now(),
            },
        );
        Ok(())
    }

    fn get(&self, key: &DocKey) -> Result<Option<Value>> {
        Ok(guard(&self.docs).get(key).map(|d| d.value.clone()))
    }

    fn delete(&self, key: &DocKey) -> Result<bool> {
        Ok(guard(&self.docs).remove(key).is_some())
    }

    fn list(&self, scope: &Scope) -> Result<Vec<DocKey>> {
        Ok(guard(&self.docs)
            .keys()
            .filter(|k| scope.contains(k))
            .cloned()
            .collect())
    }

    fn list_entries(&self, scope: &Scope) -> Result<Vec<Entry>> {
        Ok(guard(&self.docs)
            .iter()
            .filter(|(k, _)| scope.contains(k))
            .map(|(k, d)| Entry::new(k.clone(), d.bytes, d.modified))
            .collect())
    }

    fn entry(&self, key: &DocKey) -> Result<Option<Entry>> {
        Ok(guard(&self.docs)
            .get(key)
            .map(|d| Entry::new(key.clone(), d.bytes, d.modified)))
    }

    fn repos(&self) -> Result<Vec<RepoKey>> {
        let mut repos: BTreeSet<RepoKey> = guard(&self.docs)
            .keys()
            .filter_map(|k| k.repo().cloned())
            .collect();
        repos.extend(guard(&self.events.by_job).keys().map(|(r, _)| r.clone()));
        Ok(repos.into_iter().collect())
    }

    fn jobs(&self, repo: &RepoKey) -> Result<Vec<JobId>> {
        Ok(self.keys_where(|k| match k {
            DocKey::JobCheckpoint { repo: r, job, .. } | DocKey::JobMetadata { repo: r, job }
                if r == repo =>
            {
                Some(job.clone())
            }
            _ => None,
        }))
    }

    fn jobs_with_dead_letters(&self, repo: &RepoKey) -> Result<Vec<JobId>> {
        Ok(self.keys_where(|k| match k {
            DocKey::DeadLetter { repo: r, job, .. } | DocKey::DeadLetterIndex { repo: r, job }
                if r == repo =>
            {
                Some(job.clone())
            }
            _ => None,
        }))
    }

    fn extension_kinds(&self, repo: &RepoKey) -> Result<Vec<ExtKind>> {
        let kinds: BTreeSet<ExtKind> = guard(&self.docs)
            .keys()
            .filter_map(|k| match k {
                DocKey::Extension { repo: r, kind, .. } if r == repo => Some(kind.clone()),
                _ => None,
            })
            .collect();
        Ok(kinds.into_iter().collect())
    }

    fn append_events(&self, repo: &RepoKey, job: &JobId, events: &[EventRecord]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        crate::depth::check_events(events)?;
        let mut logs = guard(&self.events.by_job);
        self.log_for_append(&mut logs, repo, job).push(events);
        drop(logs);
        self.events.appended.notify_all();
        Ok(())
    }

    fn event_log_end(&self, repo: &RepoKey, job: &JobId) -> Result<EventCursor> {
        Ok(guard(&self.events.by_job)
            .get(&(repo.clone(), job.clone()))
            .map_or(EventCursor::START, |log| log.cursor(log.end())))
    }

    fn append_events_at(
        &self,
        repo: &RepoKey,
        job: &JobId,
        expected: &EventCursor,
        events: &[EventRecord],
    ) -> Result<Appended> {
        crate::depth::check_events(events)?;
        let mut logs = guard(&self.events.by_job);
        let end = logs
            .get(&(repo.clone(), job.clone()))
            .map_or(EventCursor::START, |log| log.cursor(log.end()));
        if *expected != end {
            // Is the batch already at `expected`? (An earlier attempt landed.)
            if let Some(log) = logs.get(&(repo.clone(), job.clone()))
                && (expected.generation == log.generation || *expected == EventCursor::START)
                && expected.offset >= log.base
            {
                let at = usize::try_from(expected.offset - log.base).unwrap_or(usize::MAX);
                let there = log.records.get(at..at.saturating_add(events.len()));
                if there.is_some_and(|r| r.iter().map(|(e, _)| e).eq(events.iter())) {
                    return Ok(Appended::Already {
                        end: log.cursor(expected.offset + events.len() as u64),
                    });
                }
            }
            return Err(Error::AppendConflict {
                repo: repo.clone(),
                job: job.clone(),
                end,
            });
        }
        if events.is_empty() {
            return Ok(Appended::Now { end });
        }
        let log = self.log_for_append(&mut logs, repo, job);
        log.push(events);
        let end = log.cursor(log.end());
        drop(logs);
        self.events.appended.notify_all();
        Ok(Appended::Now { end })
    }

    fn read_events_from(
        &self,
        repo: &RepoKey,
        job: &JobId,
        from: &EventCursor,
        _mode: ReadMode,
        visit: &mut dyn FnMut(EventRecord),
    ) -> Result<EventLogSummary> {
        // Copy out first so a visitor that touches the store cannot deadlock.
        let mut summary = EventLogSummary::default();
        let (next, records) = match guard(&self.events.by_job).get(&(repo.clone(), job.clone())) {
            None => {
                summary.restarted = *from != EventCursor::START;
                (EventCursor::START, Vec::new())
            }
            Some(log) => {
                let (at, restarted) = log.start_of(from);
                summary.restarted = restarted;
                let skip = usize::try_from(at - log.base).expect("within the log");
                (
                    log.cursor(log.end()),
                    log.records[skip..].iter().map(|(e, _)| e.clone()).collect(),
                )
            }
        };
        for r in records {
            summary.records += 1;
            visit(r);
        }
        summary.next = next;
        Ok(summary)
    }

    fn wait_for_events(
        &self,
        repo: &RepoKey,
        job: &JobId,
        after: &EventCursor,
        timeout: Duration,
    ) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        let mut logs = guard(&self.events.by_job);
        loop {
            match logs.get(&(repo.clone(), job.clone())) {
                Some(log) if log.start_of(after) != (log.end(), false) => return Ok(true),
                // Deleted: a cursor into it does not fit what comes next.
                None if *after != EventCursor::START => return Ok(true),
                _ => {}
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            logs = self
                .events
                .appended
                .wait_timeout(logs, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn event_logs(&self, repo: &RepoKey) -> Result<Vec<JobId>> {
        Ok(guard(&self.events.by_job)
            .keys()
            .filter(|(r, _)| r == repo)
            .map(|(_, j)| j.clone())
            .collect())
    }

    fn event_log_entry(&self, repo: &RepoKey, job: &JobId) -> Result<Option<LogEntry>> {
        Ok(guard(&self.events.by_job)
            .get(&(repo.clone(), job.clone()))
            .map(|log| {
                let bytes = log.records.iter().map(|(_, b)| b).sum();
                LogEntry::new(bytes, log.modified, log.oldest)
            }))
    }

    fn delete_event_log(&self, repo: &RepoKey, job: &JobId) -> Result<bool> {
        let gone = guard(&self.events.by_job)
            .remove(&(repo.clone(), job.clone()))
            .is_some();
        self.events.appended.notify_all();
        Ok(gone)
    }

    fn retain_events(
        &self,
        repo: &RepoKey,
        job: &JobId,
        policy: &EventRetention,
    ) -> Result<RetentionReport> {
        let mut logs = guard(&self.events.by_job);
        let Some(log) = logs.get_mut(&(repo.clone(), job.clone())) else {
            return Ok(RetentionReport::default());
        };
        let shape: Vec<(u64, Option<SystemTime>)> = log
            .records
            .iter()
            .map(|(e, b)| (*b, e.timestamp()))
            .collect();
        let cut = policy.keep.drop_count(&shape, policy.now);
        let dropped: Vec<(EventRecord, u64)> = log.records.drain(..cut).collect();
        log.base += cut as u64;
        let mut report = RetentionReport {
            kept: log.records.len() as u64,
            dropped: Some(cut as u64),
            dropped_bytes: dropped.iter().map(|(_, b)| b).sum(),
            archive: None,
        };
        drop(logs);
        if policy.archive && !dropped.is_empty() {
            let mut archives = guard(&self.archives);
            let name = format!("memory:{repo}/{job}/{}", archives.len() + 1);
            archives.push((name.clone(), dropped.into_iter().map(|(e, _)| e).collect()));
            report.archive = Some(name);
        }
        Ok(report)
    }

    fn lock(&self, key: &LockKey, holder: &LockHolder, wait: LockWait) -> Result<LockGuard> {
        let start = Instant::now();
        let deadline = match wait {
            LockWait::NoWait => start,
            LockWait::Timeout(d) => start + d,
        };
        let mut held = guard(&self.locks.held);
        loop {
            if !held.holders.contains_key(key) {
                held.holders.insert(key.clone(), holder.clone());
                let token = held.tokens.entry(key.clone()).or_insert(0);
                *token += 1;
                let h = Held {
                    key: key.clone(),
                    token: *token,
                    locks: Arc::clone(&self.locks),
                };
                return Ok(LockGuard::with_liveness(key.clone(), Box::new(h)));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Locked {
                    key: key.clone(),
                    holder: held.holders.get(key).cloned(),
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

    fn put_fenced(&self, key: &DocKey, doc: &Value, fence: &Fence) -> Result<()> {
        // The lock table stays locked through the write: no acquisition
        // comes between the check and the write.
        let held = guard(&self.locks.held);
        held.check(fence)?;
        self.put(key, doc)
    }

    fn append_events_fenced(
        &self,
        repo: &RepoKey,
        job: &JobId,
        events: &[EventRecord],
        fence: &Fence,
    ) -> Result<()> {
        let held = guard(&self.locks.held);
        held.check(fence)?;
        self.append_events(repo, job, events)
    }
}

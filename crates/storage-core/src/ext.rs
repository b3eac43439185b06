//! [`StorageExt`]: typed record methods, and the operations built from the
//! trait's primitives (retention of documents, statistics, lenient loads),
//! written once for every [`Storage`].

use std::collections::VecDeque;
use std::time::SystemTime;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::id::{ItemId, JobId, RepoKey, SessionId, WorkflowId};
use crate::record::{
    DeadLetterItem, EventRecord, JobCheckpoint, RecordError, SessionJobMapping, SessionRecord,
    UnifiedSession, WorkflowCheckpoint,
};
use crate::storage::{DocKey, Entry, EventCursor, ReadMode, Retention, Scope, Skipped, Storage};

fn typed<R>(
    value: Option<Value>,
    parse: impl FnOnce(Value) -> Result<R, RecordError>,
) -> Result<Option<R>> {
    value.map(|v| parse(v).map_err(Error::from)).transpose()
}

fn check_id(record: &'static str, expected: &str, found: &str) -> Result<()> {
    if expected == found {
        Ok(())
    } else {
        Err(Error::KeyMismatch {
            record,
            expected: expected.to_owned(),
            found: found.to_owned(),
        })
    }
}

/// Typed record methods for every [`Storage`].
pub trait StorageExt: Storage {
    /// Saves a session under its `session_id`.
    fn save_session(&self, repo: &RepoKey, session: &SessionRecord) -> Result<()> {
        let key = DocKey::Session {
            repo: repo.clone(),
            session: session.session_id().clone(),
        };
        self.put(&key, &Value::Object(session.json().clone()))
    }

    /// Loads a session.
    fn load_session(&self, repo: &RepoKey, session: &SessionId) -> Result<Option<SessionRecord>> {
        let key = DocKey::Session {
            repo: repo.clone(),
            session: session.clone(),
        };
        let rec = typed(self.get(&key)?, SessionRecord::from_json)?;
        if let Some(r) = &rec {
            check_id(
                SessionRecord::LABEL,
                session.as_str(),
                r.session_id().as_str(),
            )?;
        }
        Ok(rec)
    }

    /// Saves version `version` of a job's state.
    fn save_job_checkpoint(
        &self,
        repo: &RepoKey,
        version: u64,
        checkpoint: &JobCheckpoint,
    ) -> Result<()> {
        let key = DocKey::JobCheckpoint {
            repo: repo.clone(),
            job: checkpoint.job_id().clone(),
            version,
        };
        self.put(&key, &Value::Object(checkpoint.json().clone()))
    }

    /// Loads the newest checkpoint version of a job, with its version number.
    fn latest_job_checkpoint(
        &self,
        repo: &RepoKey,
        job: &JobId,
    ) -> Result<Option<(u64, JobCheckpoint)>> {
        let keys = self.list(&Scope::JobCheckpoints(repo.clone(), job.clone()))?;
        for key in keys.iter().rev() {
            if let DocKey::JobCheckpoint { version, .. } = key
                && let Some(cp) = typed(self.get(key)?, JobCheckpoint::from_json)?
            {
                return Ok(Some((*version, cp)));
            }
        }
        Ok(None)
    }

    /// Saves a workflow checkpoint under its `workflow_id`.
    fn save_workflow_checkpoint(&self, repo: &RepoKey, cp: &WorkflowCheckpoint) -> Result<()> {
        let key = DocKey::WorkflowCheckpoint {
            repo: repo.clone(),
            workflow: cp.workflow_id().clone(),
        };
        self.put(&key, &Value::Object(cp.json().clone()))
    }

    /// Loads a workflow checkpoint.
    fn load_workflow_checkpoint(
        &self,
        repo: &RepoKey,
        workflow: &WorkflowId,
    ) -> Result<Option<WorkflowCheckpoint>> {
        let key = DocKey::WorkflowCheckpoint {
            repo: repo.clone(),
            workflow: workflow.clone(),
        };
        typed(self.get(&key)?, WorkflowCheckpoint::from_json)
    }

    /// Saves a dead-lettered item of `job`.
    fn save_dead_letter(&self, repo: &RepoKey, job: &JobId, item: &DeadLetterItem) -> Result<()> {
        let key = DocKey::DeadLetter {
            repo: repo.clone(),
            job: job.clone(),
            item: item.item_id().clone(),
        };
        self.put(&key, &Value::Object(item.json().clone()))
    }

    /// Loads every dead-lettered item of `job`, sorted by item id.
    fn dead_letters(&self, repo: &RepoKey, job: &JobId) -> Result<Vec<DeadLetterItem>> {
        let mut out = Vec::new();
        for key in self.list(&Scope::DeadLetters(repo.clone(), job.clone()))? {
            if let Some(item) = typed(self.get(&key)?, DeadLetterItem::from_json)? {
                out.push(item);
            }
        }
        Ok(out)
    }

    /// Saves which job a session runs.
    fn save_session_job(&self, repo: &RepoKey, mapping: &SessionJobMapping) -> Result<()> {
        let key = DocKey::SessionJob {
            repo: repo.clone(),
            session: mapping.session_id().clone(),
        };
        self.put(&key, &Value::Object(mapping.json().clone()))
    }

    /// Loads which job a session runs.
    fn load_session_job(
        &self,
        repo: &RepoKey,
        session: &SessionId,
    ) -> Result<Option<SessionJobMapping>> {
        let key = DocKey::SessionJob {
            repo: repo.clone(),
            session: session.clone(),
        };
        typed(self.get(&key)?, SessionJobMapping::from_json)
    }

    /// Removes one dead-lettered item; `false` if there was none.
    fn delete_dead_letter(&self, repo: &RepoKey, job: &JobId, item: &ItemId) -> Result<bool> {
        self.delete(&DocKey::DeadLetter {
            repo: repo.clone(),
            job: job.clone(),
            item: item.clone(),
        })
    }

    /// Removes every dead-lettered item of `job` and its index; returns how
    /// many documents went.
    fn delete_dead_letters(&self, repo: &RepoKey, job: &JobId) -> Result<u64> {
        let mut n = self.delete_scope(&Scope::DeadLetters(repo.clone(), job.clone()))?;
        let index = DocKey::DeadLetterIndex {
            repo: repo.clone(),
            job: job.clone(),
        };
        n += u64::from(self.delete(&index)?);
        Ok(n)
    }

    /// Every dead-lettered item of `job` that parses, and the ones skipped
    /// (not JSON, or not a dead-letter item), each with its file and why.
    fn dead_letters_lenient(
        &self,
        repo: &RepoKey,
        job: &JobId,
    ) -> Result<(Vec<DeadLetterItem>, Vec<Skipped>)> {
        let (items, skipped) = load_lenient(
            self,
            &Scope::DeadLetters(repo.clone(), job.clone()),
            DeadLetterItem::from_json,
        )?;
        Ok((items.into_iter().map(|(_, item)| item).collect(), skipped))
    }

    /// Removes every document of `scope`; returns how many went.
    fn delete_scope(&self, scope: &Scope) -> Result<u64> {
        let mut n = 0;
        for key in self.list(scope)? {
            n += u64::from(self.delete(&key)?);
        }
        Ok(n)
    }

    /// Removes a job's whole state: every checkpoint version and its metadata.
    /// Its dead letters and event log are separate ([`delete_dead_letters`],
    /// [`Storage::delete_event_log`]). Returns how many documents went.
    ///
    /// [`delete_dead_letters`]: StorageExt::delete_dead_letters
    fn delete_job(&self, repo: &RepoKey, job: &JobId) -> Result<u64> {
        let mut n = self.delete_scope(&Scope::JobCheckpoints(repo.clone(), job.clone()))?;
        let meta = DocKey::JobMetadata {
            repo: repo.clone(),
            job: job.clone(),
        };
        n += u64::from(self.delete(&meta)?);
        Ok(n)
    }

    /// Keeps the newest `keep` checkpoint versions of a job (by version
    /// number) and removes the rest; returns the versions removed.
    fn keep_newest_job_checkpoints(
        &self,
        repo: &RepoKey,
        job: &JobId,
        keep: usize,
    ) -> Result<Vec<u64>> {
        let keys = self.list(&Scope::JobCheckpoints(repo.clone(), job.clone()))?;
        let excess = keys.len().saturating_sub(keep);
        let mut removed = Vec::new();
        for key in &keys[..excess] {
            if let DocKey::JobCheckpoint { version, .. } = key
                && self.delete(key)?
            {
                removed.push(*version);
            }
        }
        Ok(removed)
    }

    /// Loads version `version` of a job's state.
    fn load_job_checkpoint(
        &self,
        repo: &RepoKey,
        job: &JobId,
        version: u64,
    ) -> Result<Option<JobCheckpoint>> {
        let key = DocKey::JobCheckpoint {
            repo: repo.clone(),
            job: job.clone(),
            version,
        };
        typed(self.get(&key)?, JobCheckpoint::from_json)
    }

    /// Applies `policy` to the documents of `scope`, newest kept (by
    /// modification time, then key); returns the keys removed.
    fn prune(&self, scope: &Scope, policy: &Retention, now: SystemTime) -> Result<Vec<DocKey>> {
        let mut entries = self.list_entries(scope)?;
        entries.sort_by(|a, b| a.modified.cmp(&b.modified).then_with(|| a.key.cmp(&b.key)));
        let shape: Vec<(u64, Option<SystemTime>)> = entries
            .iter()
            .map(|e| (e.bytes, Some(e.modified)))
            .collect();
        let drop = policy.drop_count(&shape, now);
        let mut removed = Vec::new();
        for e in entries.into_iter().take(drop) {
            if self.delete(&e.key)? {
                removed.push(e.key);
            }
        }
        Ok(removed)
    }

    /// The session that runs `job` in `repo`, found through the
    /// session-to-job mappings (the first by session id if several do).
    fn session_for_job(&self, repo: &RepoKey, job: &JobId) -> Result<Option<SessionJobMapping>> {
        for key in self.list(&Scope::SessionJobs(repo.clone()))? {
            if let Some(m) = typed(self.get(&key)?, SessionJobMapping::from_json)?
                && m.job_id().as_ref() == Some(job)
            {
                return Ok(Some(m));
            }
        }
        Ok(None)
    }

    /// Saves a unified session under its `id` (global: no repository).
    fn save_unified_session(&self, session: &UnifiedSession) -> Result<()> {
        let key = DocKey::UnifiedSession {
            session: session.id().clone(),
        };
        self.put(&key, &Value::Object(session.json().clone()))
    }

    /// Loads a unified session by its id alone.
    fn load_unified_session(&self, session: &SessionId) -> Result<Option<UnifiedSession>> {
        let key = DocKey::UnifiedSession {
            session: session.clone(),
        };
        let rec = typed(self.get(&key)?, UnifiedSession::from_json)?;
        if let Some(r) = &rec {
            check_id(UnifiedSession::LABEL, session.as_str(), r.id().as_str())?;
        }
        Ok(rec)
    }

    /// Removes a unified session, its own checkpoint and its workflow
    /// checkpoints; `false` if there was no session document.
    fn delete_unified_session(&self, session: &SessionId) -> Result<bool> {
        self.delete_scope(&Scope::SessionWorkflowCheckpoints(session.clone()))?;
        self.delete(&DocKey::SessionCheckpoint {
            session: session.clone(),
        })?;
        self.delete(&DocKey::UnifiedSession {
            session: session.clone(),
        })
    }

    /// Every unified session that loads, sorted by id, and the ones skipped
    /// (a torn file, or filed under another id), each with why.
    fn unified_sessions(&self) -> Result<(Vec<UnifiedSession>, Vec<Skipped>)> {
        let (all, mut skipped) =
            load_lenient(self, &Scope::UnifiedSessions, UnifiedSession::from_json)?;
        let mut out = Vec::with_capacity(all.len());
        for (key, s) in all {
            match key {
                DocKey::UnifiedSession { session } if &session != s.id() => {
                    skipped.push(Skipped::new(
                        format!("unified session {session}"),
                        None,
                        format!("it names `{}` but is filed as `{session}`", s.id()),
                    ));
                }
                _ => out.push(s),
            }
        }
        Ok((out, skipped))
    }

    /// Saves a workflow checkpoint of a session under its `workflow_id`.
    fn save_session_workflow_checkpoint(
        &self,
        session: &SessionId,
        cp: &WorkflowCheckpoint,
    ) -> Result<()> {
        let key = DocKey::SessionWorkflowCheckpoint {
            session: session.clone(),
            workflow: cp.workflow_id().clone(),
        };
        self.put(&key, &Value::Object(cp.json().clone()))
    }

    /// Loads a workflow checkpoint of a session.
    fn load_session_workflow_checkpoint(
        &self,
        session: &SessionId,
        workflow: &WorkflowId,
    ) -> Result<Option<WorkflowCheckpoint>> {
        let key = DocKey::SessionWorkflowCheckpoint {
            session: session.clone(),
            workflow: workflow.clone(),
        };
        typed(self.get(&key)?, WorkflowCheckpoint::from_json)
    }

    /// The last `n` records of the log of `job` (fewer if it is shorter), in
    /// order; memory holds `n` records, whatever the log's length.
    fn tail_events(&self, repo: &RepoKey, job: &JobId, n: usize) -> Result<Vec<EventRecord>> {
        let mut last: VecDeque<EventRecord> = VecDeque::with_capacity(n.min(4096));
        if n == 0 {
            return Ok(Vec::new());
        }
        self.read_events_from(
            repo,
            job,
            &EventCursor::START,
            ReadMode::Lenient,
            &mut |e| {
                if last.len() == n {
                    last.pop_front();
                }
                last.push_back(e);
            },
        )?;
        Ok(last.into())
    }

    /// Visits every document of the store with its size and time: each
    /// unified session with its checkpoint and workflow checkpoints, then,
    /// per repository, sessions, workflow checkpoints, mappings, job
    /// checkpoints and metadata, dead letters and their index, extension
    /// kinds. One scope at a time: memory holds one scope's entries. Stops
    /// at the first error `visit` returns.
    fn for_each_document(&self, visit: &mut dyn FnMut(Entry) -> Result<()>) -> Result<()> {
        let single =
            |key: DocKey, visit: &mut dyn FnMut(Entry) -> Result<()>| match self.entry(&key)? {
                Some(e) => visit(e),
                None => Ok(()),
            };
        for e in self.list_entries(&Scope::UnifiedSessions)? {
            let session = match &e.key {
                DocKey::UnifiedSession { session } => Some(session.clone()),
                _ => None,
            };
            visit(e)?;
            if let Some(session) = session {
                single(
                    DocKey::SessionCheckpoint {
                        session: session.clone(),
                    },
                    visit,
                )?;
                for w in self.list_entries(&Scope::SessionWorkflowCheckpoints(session))? {
                    visit(w)?;
                }
            }
        }
        for repo in self.repos()? {
            for scope in [
                Scope::Sessions(repo.clone()),
                Scope::WorkflowCheckpoints(repo.clone()),
                Scope::SessionJobs(repo.clone()),
            ] {
                for e in self.list_entries(&scope)? {
                    visit(e)?;
                }
            }
            for job in self.jobs(&repo)? {
                for e in self.list_entries(&Scope::JobCheckpoints(repo.clone(), job.clone()))? {
                    visit(e)?;
                }
                let repo = repo.clone();
                single(DocKey::JobMetadata { repo, job }, visit)?;
            }
            for job in self.jobs_with_dead_letters(&repo)? {
                for e in self.list_entries(&Scope::DeadLetters(repo.clone(), job.clone()))? {
                    visit(e)?;
                }
                let repo = repo.clone();
                single(DocKey::DeadLetterIndex { repo, job }, visit)?;
            }
            for kind in self.extension_kinds(&repo)? {
                for e in self.list_entries(&Scope::Extension(repo.clone(), kind))? {
                    visit(e)?;
                }
            }
        }
        Ok(())
    }

    /// Bytes, counts and oldest/newest times per repository and kind of
    /// document, and of event logs (kind `event log`, one per job), across
    /// the whole store; global documents have no repository. Sorted by
    /// repository, then kind.
    fn stats(&self) -> Result<Vec<KindStats>> {
        let mut acc: std::collections::BTreeMap<(Option<RepoKey>, String), KindStats> =
            std::collections::BTreeMap::new();
        let mut add = |repo: Option<&RepoKey>,
                       kind: &str,
                       bytes: u64,
                       oldest: SystemTime,
                       newest: SystemTime| {
            let s = acc
                .entry((repo.cloned(), kind.to_owned()))
                .or_insert_with(|| KindStats {
                    repo: repo.cloned(),
                    kind: kind.to_owned(),
                    count: 0,
                    bytes: 0,
                    oldest: None,
                    newest: None,
                });
            s.count += 1;
            s.bytes += bytes;
            s.oldest = Some(s.oldest.map_or(oldest, |o| o.min(oldest)));
            s.newest = Some(s.newest.map_or(newest, |n| n.max(newest)));
        };
        self.for_each_document(&mut |e| {
            add(e.key.repo(), e.key.kind(), e.bytes, e.modified, e.modified);
            Ok(())
        })?;
        for repo in self.repos()? {
            for job in self.event_logs(&repo)? {
                if let Some(log) = self.event_log_entry(&repo, &job)? {
                    add(
                        Some(&repo),
                        "event log",
                        log.bytes,
                        log.oldest,
                        log.modified,
                    );
                }
            }
        }
        Ok(acc.into_values().collect())
    }
}

impl<S: Storage + ?Sized> StorageExt for S {}

/// Bytes, count and age of one kind of document in one repository ([`StorageExt::stats`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct KindStats {
    /// The repository; `None` for global documents (unified sessions).
    pub repo: Option<RepoKey>,
    /// The kind ([`DocKey::kind`], or `event log`).
    pub kind: String,
    /// How many documents (or logs).
    pub count: u64,
    /// Their bytes.
    pub bytes: u64,
    /// The oldest modification time among them.
    pub oldest: Option<SystemTime>,
    /// The newest modification time among them.
    pub newest: Option<SystemTime>,
}

/// What a lenient load found: each record with its key, and what it skipped.
type Lenient<R> = (Vec<(DocKey, R)>, Vec<Skipped>);

/// Loads every document of `scope` with `parse`, skipping (and reporting)
/// those that are corrupt or do not parse as the record.
fn load_lenient<S: Storage + ?Sized, R>(
    s: &S,
    scope: &Scope,
    parse: impl Fn(Value) -> Result<R, RecordError>,
) -> Result<Lenient<R>> {
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for key in s.list(scope)? {
        match s.get(&key) {
            Ok(Some(v)) => match parse(v) {
                Ok(r) => out.push((key, r)),
                Err(e) => skipped.push(Skipped::new(describe(&key), None, e.to_string())),
            },
            Ok(None) => {}
            Err(Error::Corrupt { path, line, reason }) => {
                skipped.push(Skipped::new(path.display().to_string(), line, reason));
            }
            Err(e) => return Err(e),
        }
    }
    Ok((out, skipped))
}

fn describe(key: &DocKey) -> String {
    format!("{key:?}")
}

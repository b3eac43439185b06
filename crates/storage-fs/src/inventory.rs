//! What a user can see of their store: every document and event log the
//! `Storage` API reaches, with its kind, repository, ids, size and
//! modification time (`prodigy-storage list`).
//!
//! It reads directory listings and one `stat` per file, never a file's
//! content (but the first two bytes of a log part named `.gz`, to tell a
//! log an older Prodigy rotated from a real gzip file). Repositories are the valid names found under `state/`, `dlq/`
//! and `events/` (registered or not: an upgraded layout-0 store has data
//! under base names no project registered yet).

use std::path::{Path, PathBuf};

use serde::Serialize;
use storage_core::{DocKey, JobId, RepoKey, Result, Scope, Storage};

use crate::fsx;
use crate::store::FsStorage;

/// One document or event log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Listed {
    /// `session`, `job checkpoint`, `job metadata`, `workflow checkpoint`,
    /// `dead letter`, `dead-letter index`, `session-job mapping`, `unified
    /// session`, `session checkpoint`, `session workflow checkpoint`, `event
    /// log`, or an extension kind's own name ([`DocKey::kind`]).
    pub kind: String,
    /// The repository key; `None` for global documents (unified sessions
    /// and what belongs to them).
    pub repo: Option<String>,
    /// The job, for job state, dead letters and event logs.
    pub job: Option<String>,
    /// The session, workflow, item, checkpoint version or log file name.
    pub id: Option<String>,
    /// Where it is on disk (a string; `hex:<bytes>` when not UTF-8).
    #[serde(serialize_with = "lossless")]
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Its modification time (RFC 3339 UTC).
    pub modified: String,
}

impl FsStorage {
    /// Every repository key that has data in the store, sorted.
    pub fn repos_with_data(&self) -> Result<Vec<RepoKey>> {
        let mut out = std::collections::BTreeSet::new();
        let mut roots = self.layout().data_roots();
        roots.push(self.layout().ext_root());
        for dir in roots {
            for e in fsx::read_dir_sorted(&dir)? {
                if e.file_type.is_dir()
                    && let Ok(repo) = RepoKey::new(e.name.to_string_lossy())
                {
                    out.insert(repo);
                }
            }
        }
        Ok(out.into_iter().collect())
    }

    /// Every document and event log of `repo` (of every repository with
    /// `None`), in a stable order: repository, kind, job, id.
    pub fn inventory(&self, repo: Option<&RepoKey>) -> Result<Vec<Listed>> {
        let repos = match repo {
            Some(r) => vec![r.clone()],
            None => self.repos_with_data()?,
        };
        let mut out = Vec::new();
        if repo.is_none() {
            for key in self.list(&Scope::UnifiedSessions)? {
                self.push_doc(&mut out, &key)?;
                if let DocKey::UnifiedSession { session } = &key {
                    self.push_doc(
                        &mut out,
                        &DocKey::SessionCheckpoint {
                            session: session.clone(),
                        },
                    )?;
                    for k in self.list(&Scope::SessionWorkflowCheckpoints(session.clone()))? {
                        self.push_doc(&mut out, &k)?;
                    }
                }
            }
        }
        for repo in &repos {
            for kind in self.extension_kinds(repo)? {
                for key in self.list(&Scope::Extension(repo.clone(), kind))? {
                    self.push_doc(&mut out, &key)?;
                }
            }
            for scope in [
                Scope::Sessions(repo.clone()),
                Scope::WorkflowCheckpoints(repo.clone()),
                Scope::SessionJobs(repo.clone()),
            ] {
                for key in self.list(&scope)? {
                    self.push_doc(&mut out, &key)?;
                }
            }
            for job in self.jobs(repo)? {
                for key in self.list(&Scope::JobCheckpoints(repo.clone(), job.clone()))? {
                    self.push_doc(&mut out, &key)?;
                }
                let meta = DocKey::JobMetadata {
                    repo: repo.clone(),
                    job: job.clone(),
                };
                self.push_doc(&mut out, &meta)?;
            }
            for e in fsx::read_dir_sorted(&self.layout().dlq_repo_dir(repo))? {
                let Ok(job) = JobId::new(e.name.to_string_lossy()) else {
                    continue;
                };
                if !e.file_type.is_dir() {
                    continue;
                }
                for key in self.list(&Scope::DeadLetters(repo.clone(), job.clone()))? {
                    self.push_doc(&mut out, &key)?;
                }
                let index = DocKey::DeadLetterIndex {
                    repo: repo.clone(),
                    job,
                };
                self.push_doc(&mut out, &index)?;
            }
            for job in self.event_logs(repo)? {
                let dir = self.layout().events_job_dir(repo, &job);
                // The parts the log reader reads (`events::log_files`),
                // a part an older Prodigy rotated (`….jsonl.gz`) included.
                for f in crate::events::log_files(&dir)? {
                    push(
                        &mut out,
                        "event log",
                        Some(repo),
                        Some(job.as_str()),
                        Some(&f.path.file_name().unwrap_or_default().to_string_lossy()),
                        &f.path,
                    )?;
                }
            }
        }
        Ok(out)
    }

    fn push_doc(&self, out: &mut Vec<Listed>, key: &DocKey) -> Result<()> {
        // Where the store reads it: a layout-0 path for a document only
        // layout 0 holds, or holds in a newer copy.
        let path = crate::layout0::winner(self.layout(), key);
        let (job, id) = columns(key);
        push(
            out,
            key.kind(),
            key.repo(),
            job.as_deref(),
            id.as_deref(),
            &path,
        )
    }
}

/// The JOB and ID of `key` as [`Listed`] has them (`list`'s columns): the
/// job of job state, dead letters and logs; the session, workflow, item,
/// `v<N>` of a checkpoint version, or `<session>/<workflow>`.
#[must_use]
pub fn columns(key: &DocKey) -> (Option<String>, Option<String>) {
    match key {
        DocKey::Session { session, .. }
        | DocKey::SessionJob { session, .. }
        | DocKey::UnifiedSession { session }
        | DocKey::SessionCheckpoint { session } => (None, Some(session.to_string())),
        DocKey::JobCheckpoint { job, version, .. } => {
            (Some(job.to_string()), Some(format!("v{version}")))
        }
        DocKey::JobMetadata { job, .. } | DocKey::DeadLetterIndex { job, .. } => {
            (Some(job.to_string()), None)
        }
        DocKey::WorkflowCheckpoint { workflow, .. } => (None, Some(workflow.to_string())),
        DocKey::SessionWorkflowCheckpoint { session, workflow } => {
            (None, Some(format!("{session}/{workflow}")))
        }
        DocKey::DeadLetter { job, item, .. } => (Some(job.to_string()), Some(item.to_string())),
        DocKey::Extension { name, .. } => (None, Some(name.to_string())),
        _ => (None, None),
    }
}

/// Adds `path` if it is a regular file (a missing metadata or index file
/// is simply not there).
fn push(
    out: &mut Vec<Listed>,
    kind: &str,
    repo: Option<&RepoKey>,
    job: Option<&str>,
    id: Option<&str>,
    path: &Path,
) -> Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_file() => m,
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(storage_core::Error::io("stat", path, e)),
    };
    out.push(Listed {
        kind: kind.to_owned(),
        repo: repo.map(RepoKey::to_string),
        job: job.map(str::to_owned),
        id: id.map(str::to_owned),
        path: path.to_owned(),
        size: meta.len(),
        modified: meta
            .modified()
            .map(crate::time::rfc3339)
            .unwrap_or_default(),
    });
    Ok(())
}

/// A path as a string when it is UTF-8, else `hex:` and its bytes: never
/// lossy, never a serialization error.
fn lossless<S: serde::Serializer>(path: &Path, s: S) -> std::result::Result<S::Ok, S::Error> {
    use std::os::unix::ffi::OsStrExt;
    if let Some(text) = path.to_str() {
        return s.serialize_str(text);
    }
    let mut hex = String::from("hex:");
    for b in path.as_os_str().as_bytes() {
        use std::fmt::Write as _;
        let _ = write!(hex, "{b:02x}");
    }
    s.serialize_str(&hex)
}

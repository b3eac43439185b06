//! The on-disk layout: the only module that joins path segments.
//!
//! Every path in the store is built here from validated identifiers, so a
//! hostile identifier can never name a path outside its directory, and the
//! whole layout can be read (and changed) in one place. The layout is
//! documented, path by path, in `docs/storage-layout.md`; keep the two in step.
//!
//! ```text
//! <root>/layout.json                                       {"layout_version": 2}
//! <root>/repos/<repo>.json                                 which project owns <repo>
//! <root>/sessions/<session>.json                           unified sessions (global)
//! <root>/sessions/<session>/checkpoint.json                a unified session's checkpoint
//! <root>/sessions/<session>/checkpoints/<workflow>.checkpoint.json
//! <root>/ext/<repo>/<kind>/<name>.json                     extension kinds
//! <root>/archive/events/<repo>/<job>/events-<ts>.jsonl.gz  what retention dropped
//! <root>/state/<repo>/sessions/<session>.json
//! <root>/state/<repo>/mappings/<session>.json              session -> job
//! <root>/state/<repo>/checkpoints/<workflow>.checkpoint.json
//! <root>/state/<repo>/mapreduce/jobs/<job>/checkpoint-v<N>.json, metadata.json
//! <root>/dlq/<repo>/<job>/items/<item>.json, index.json
//! <root>/events/<repo>/<job>/*.jsonl                       read in name order
//! <root>/legacy/<repo>/...                                 legacy files kept verbatim
//! <root>/migrations/<repo>/...                             journal, staging, backups
//! <root>/resume_locks/<key>.lock                           flock; holder JSON for messages
//! <root>/resume_locks/<key>.fence                          the lock's newest fencing token
//! <root>/locks/<name>.lock                                 the store's own flock locks
//! ```
//!
//! The only other names in the store are siblings that the file-system
//! wrapper gives a file it writes: `.tmp-<pid>-<n>-<name>` temp files
//! (`fsx::temp_name`; `flock`ed by their writer, see `fsx::create_temp`) and a log's `<log>.torn-<offset>[-<n>]` side files
//! ([`torn_tail_file`]).
//!
//! Differences from the layout Prodigy wrote before this crate: dead letters
//! are no longer nested `dlq/<repo>/<job>/mapreduce/dlq/<job>/`, nothing under
//! `events/` other than repository directories (retention archives live in
//! `archive/events/`), and a session's workflow checkpoints live with the
//! session (`sessions/<session>/checkpoints/`), not in a repository's slot.

use std::path::{Component, Path, PathBuf};

use storage_core::{DocKey, ExtKind, JobId, LockKey, RepoKey, Scope, SessionId};

/// The layout version this build writes and reads.
///
/// 2 added unified sessions (`sessions/`), extension kinds (`ext/`) and
/// retention archives (`archive/`); a layout-1 store is upgraded to it.
pub const LAYOUT_VERSION: u64 = 2;

/// The name of the active event log file that appends go to.
pub const ACTIVE_EVENT_LOG: &str = "events.jsonl";

/// Paths inside a store rooted at one directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// The top-level directories that Prodigy's own code (layout 0) wrote
    /// data into; `worktrees/` and `config.yml` are Prodigy's and the
    /// user's, never part of an upgrade.
    pub const LAYOUT_0_DATA_DIRS: [&'static str; 7] = [
        "events",
        "dlq",
        "state",
        "sessions",
        "resume_locks",
        "orphaned_worktrees",
        "logs",
    ];

    /// Where the upgrade of a layout-0 store keeps what the API has no home
    /// for yet, under its layout-0 path (`legacy/.layout-0/`; no repository
    /// key can start with a dot).
    #[must_use]
    pub fn layout_0_area(&self) -> PathBuf {
        self.root.join("legacy").join(".layout-0")
    }

    /// The directories whose subdirectories are repositories:
    /// `state/`, `dlq/`, `events/`.
    #[must_use]
    pub fn data_roots(&self) -> Vec<PathBuf> {
        ["state", "dlq", "events"]
            .iter()
            .map(|d| self.root.join(d))
            .collect()
    }

    /// The paths of [`Layout::LAYOUT_0_DATA_DIRS`] in this store.
    #[must_use]
    pub fn layout_0_data_dirs(&self) -> Vec<PathBuf> {
        Self::LAYOUT_0_DATA_DIRS
            .iter()
            .map(|d| self.root.join(d))
            .collect()
    }

    /// The records of the layout-0 upgrade (`migrations/.layout-0/`).
    #[must_use]
    pub fn layout_0_upgrade_dir(&self) -> PathBuf {
        self.root.join("migrations").join(".layout-0")
    }

    /// The layout of the store at `root`.
    #[must_use]
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The store's root.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `layout.json`, which records the layout version.
    #[must_use]
    pub fn version_file(&self) -> PathBuf {
        self.root.join("layout.json")
    }

    /// Where the store's own temp files can be, and how many directory
    /// levels below each a sweep may look (`None`: all of them).
    ///
    /// Two places hold other people's bytes under their own names, and a
    /// legacy file may well be called `.tmp-<pid>-…`: `legacy/` (legacy
    /// files kept verbatim) and the `staging/` and `backup/` trees of
    /// `migrations/<repo>/<txid>/`. Sweeps never enter them: `legacy/` is
    /// not listed, and `migrations/` is swept two levels deep only (the
    /// migration writes its temp files in `<repo>/` and `<txid>/`). Every
    /// other directory holds validated names only, which never start with
    /// `.`. `worktrees/` is Prodigy's.
    #[must_use]
    pub fn temp_file_dirs(&self) -> Vec<(PathBuf, Option<usize>)> {
        let mut out: Vec<(PathBuf, Option<usize>)> = [
            "repos",
            "state",
            "dlq",
            "events",
            "resume_locks",
            "locks",
            "sessions",
            "ext",
            "archive",
        ]
        .iter()
        .map(|d| (self.root.join(d), None))
        .collect();
        out.push((self.root.join("migrations"), Some(2)));
        out
    }

    fn state(&self, repo: &RepoKey) -> PathBuf {
        self.root.join("state").join(repo.as_str())
    }

    /// `sessions/`: unified sessions, global.
    #[must_use]
    pub fn unified_sessions_dir(&self) -> PathBuf {
        self.root.join("sessions")
    }

    /// `sessions/<session>/`: what belongs to one unified session.
    #[must_use]
    pub fn unified_session_dir(&self, session: &SessionId) -> PathBuf {
        self.unified_sessions_dir().join(session.as_str())
    }

    /// `sessions/<session>/checkpoints/`: a session's workflow checkpoints.
    #[must_use]
    pub fn session_workflow_checkpoints_dir(&self, session: &SessionId) -> PathBuf {
        self.unified_session_dir(session).join("checkpoints")
    }

    /// `ext/`: extension kinds, per repository.
    #[must_use]
    pub fn ext_root(&self) -> PathBuf {
        self.root.join("ext")
    }

    /// `ext/<repo>/`: extension kinds of a repository.
    #[must_use]
    pub fn ext_repo_dir(&self, repo: &RepoKey) -> PathBuf {
        self.ext_root().join(repo.as_str())
    }

    /// `ext/<repo>/<kind>/`.
    #[must_use]
    pub fn ext_dir(&self, repo: &RepoKey, kind: &ExtKind) -> PathBuf {
        self.ext_repo_dir(repo).join(kind.as_str())
    }

    /// `archive/events/<repo>/<job>/`: gzip archives of what retention dropped from a log.
    #[must_use]
    pub fn event_archive_dir(&self, repo: &RepoKey, job: &JobId) -> PathBuf {
        self.root
            .join("archive")
            .join("events")
            .join(repo.as_str())
            .join(job.as_str())
    }

    /// `migrations/.copy-store/<id>/`: the journal of a copy of this store
    /// into another one (`id` names the destination).
    #[must_use]
    pub fn copy_store_dir(&self, id: &str) -> PathBuf {
        self.root.join("migrations").join(".copy-store").join(id)
    }

    /// `state/<repo>/sessions/`.
    #[must_use]
    pub fn sessions_dir(&self, repo: &RepoKey) -> PathBuf {
        self.state(repo).join("sessions")
    }

    /// `state/<repo>/mappings/`.
    #[must_use]
    pub fn mappings_dir(&self, repo: &RepoKey) -> PathBuf {
        self.state(repo).join("mappings")
    }

    /// `state/<repo>/checkpoints/`.
    #[must_use]
    pub fn workflow_checkpoints_dir(&self, repo: &RepoKey) -> PathBuf {
        self.state(repo).join("checkpoints")
    }

    /// `state/<repo>/mapreduce/jobs/`.
    #[must_use]
    pub fn jobs_dir(&self, repo: &RepoKey) -> PathBuf {
        self.state(repo).join("mapreduce").join("jobs")
    }

    /// `state/<repo>/mapreduce/jobs/<job>/`.
    #[must_use]
    pub fn job_dir(&self, repo: &RepoKey, job: &JobId) -> PathBuf {
        self.jobs_dir(repo).join(job.as_str())
    }

    /// `dlq/<repo>/`.
    #[must_use]
    pub fn dlq_repo_dir(&self, repo: &RepoKey) -> PathBuf {
        self.root.join("dlq").join(repo.as_str())
    }

    /// `dlq/<repo>/<job>/` (holds `index.json` and `items/`).
    #[must_use]
    pub fn dlq_job_dir(&self, repo: &RepoKey, job: &JobId) -> PathBuf {
        self.dlq_repo_dir(repo).join(job.as_str())
    }

    /// `dlq/<repo>/<job>/items/`.
    #[must_use]
    pub fn dlq_items_dir(&self, repo: &RepoKey, job: &JobId) -> PathBuf {
        self.dlq_job_dir(repo, job).join("items")
    }

    /// `events/<repo>/`.
    #[must_use]
    pub fn events_repo_dir(&self, repo: &RepoKey) -> PathBuf {
        self.root.join("events").join(repo.as_str())
    }

    /// `events/<repo>/<job>/events.jsonl`: the file new events are appended to.
    #[must_use]
    pub fn active_event_log(&self, repo: &RepoKey, job: &JobId) -> PathBuf {
        self.events_job_dir(repo, job).join(ACTIVE_EVENT_LOG)
    }

    /// The default store root for a home directory: `<home>/.prodigy`.
    #[must_use]
    pub fn default_root(home: &Path) -> PathBuf {
        home.join(".prodigy")
    }

    /// `events/<repo>/<job>/`: every `*.jsonl` in it is part of the job's log.
    #[must_use]
    pub fn events_job_dir(&self, repo: &RepoKey, job: &JobId) -> PathBuf {
        self.events_repo_dir(repo).join(job.as_str())
    }

    /// `legacy/<repo>/`: legacy files kept verbatim by the migration.
    #[must_use]
    pub fn legacy_dir(&self, repo: &RepoKey) -> PathBuf {
        self.root.join("legacy").join(repo.as_str())
    }

    /// `migrations/<repo>/`: the migration's journal, staging area and backups.
    #[must_use]
    pub fn migrations_dir(&self, repo: &RepoKey) -> PathBuf {
        self.root.join("migrations").join(repo.as_str())
    }

    /// `repos/`.
    #[must_use]
    pub fn repos_dir(&self) -> PathBuf {
        self.root.join("repos")
    }

    /// `repos/<repo>.json`.
    #[must_use]
    pub fn repo_record(&self, repo: &RepoKey) -> PathBuf {
        self.repos_dir().join(format!("{repo}.json"))
    }

    /// `resume_locks/<key>.lock`.
    #[must_use]
    pub fn resume_lock(&self, key: &LockKey) -> PathBuf {
        self.root.join("resume_locks").join(format!("{key}.lock"))
    }

    /// `locks/<name>.lock`, for the store's own locks (`repos`, `migrate-<repo>`).
    #[must_use]
    pub fn internal_lock(&self, name: &LockKey) -> PathBuf {
        self.root.join("locks").join(format!("{name}.lock"))
    }

    /// The file of a document.
    #[must_use]
    pub fn document(&self, key: &DocKey) -> PathBuf {
        match key {
            DocKey::Session { repo, session } => {
                self.sessions_dir(repo).join(format!("{session}.json"))
            }
            DocKey::JobCheckpoint { repo, job, version } => self
                .job_dir(repo, job)
                .join(format!("checkpoint-v{version}.json")),
            DocKey::JobMetadata { repo, job } => self.job_dir(repo, job).join("metadata.json"),
            DocKey::WorkflowCheckpoint { repo, workflow } => self
                .workflow_checkpoints_dir(repo)
                .join(format!("{workflow}.checkpoint.json")),
            DocKey::DeadLetter { repo, job, item } => {
                self.dlq_items_dir(repo, job).join(format!("{item}.json"))
            }
            DocKey::DeadLetterIndex { repo, job } => self.dlq_job_dir(repo, job).join("index.json"),
            DocKey::SessionJob { repo, session } => {
                self.mappings_dir(repo).join(format!("{session}.json"))
            }
            DocKey::UnifiedSession { session } => {
                self.unified_sessions_dir().join(format!("{session}.json"))
            }
            DocKey::SessionCheckpoint { session } => {
                self.unified_session_dir(session).join("checkpoint.json")
            }
            DocKey::SessionWorkflowCheckpoint { session, workflow } => self
                .session_workflow_checkpoints_dir(session)
                .join(format!("{workflow}.checkpoint.json")),
            DocKey::Extension { repo, kind, name } => {
                self.ext_dir(repo, kind).join(format!("{name}.json"))
            }
            // A kind added to storage-core without a home here yet: fail
            // loudly in development; never reached in a release build of
            // this workspace (every kind above is matched).
            other => unreachable!("no layout for document kind {other:?}"),
        }
    }

    /// The directories [`FsStorage::delete`](crate::FsStorage) may remove
    /// when a deletion empties them: from the document's directory up to,
    /// not including, the top-level directory of its kind.
    #[must_use]
    pub fn removable_dirs(&self, key: &DocKey) -> Vec<PathBuf> {
        let doc = self.document(key);
        let stop: PathBuf = match key {
            DocKey::UnifiedSession { .. } => return Vec::new(),
            DocKey::SessionCheckpoint { .. } | DocKey::SessionWorkflowCheckpoint { .. } => {
                self.unified_sessions_dir()
            }
            DocKey::Extension { .. } => self.root.join("ext"),
            DocKey::DeadLetter { .. } | DocKey::DeadLetterIndex { .. } => self.root.join("dlq"),
            _ => self.root.join("state"),
        };
        let mut out = Vec::new();
        let mut dir = doc.parent();
        while let Some(d) = dir {
            if d == stop || !d.starts_with(&stop) {
                break;
            }
            out.push(d.to_path_buf());
            dir = d.parent();
        }
        out
    }

    /// The directory that holds the documents of `scope`.
    #[must_use]
    pub fn scope_dir(&self, scope: &Scope) -> PathBuf {
        match scope {
            Scope::Sessions(repo) => self.sessions_dir(repo),
            Scope::JobCheckpoints(repo, job) => self.job_dir(repo, job),
            Scope::WorkflowCheckpoints(repo) => self.workflow_checkpoints_dir(repo),
            Scope::DeadLetters(repo, job) => self.dlq_items_dir(repo, job),
            Scope::SessionJobs(repo) => self.mappings_dir(repo),
            Scope::UnifiedSessions => self.unified_sessions_dir(),
            Scope::SessionWorkflowCheckpoints(session) => {
                self.session_workflow_checkpoints_dir(session)
            }
            Scope::Extension(repo, kind) => self.ext_dir(repo, kind),
            other => unreachable!("no layout for scope {other:?}"),
        }
    }

    /// `base` joined with `relative`, which must consist of plain names only
    /// (no `..`, no root, no `.`): used to place legacy files under the store.
    #[must_use]
    pub fn under(base: &Path, relative: &Path) -> Option<PathBuf> {
        // Sized once: pushing name by name would grow it several times.
        let mut out =
            PathBuf::with_capacity(base.as_os_str().len() + relative.as_os_str().len() + 1);
        out.push(base);
        let mut any = false;
        for c in relative.components() {
            match c {
                Component::Normal(name) => {
                    out.push(name);
                    any = true;
                }
                _ => return None,
            }
        }
        any.then_some(out)
    }
}

/// The key a file name in a scope's directory stands for, or `None` for
/// anything else (temp files, debris, foreign files).
#[must_use]
pub fn key_for_name(scope: &Scope, name: &str) -> Option<DocKey> {
    use storage_core::{DocName, ItemId, WorkflowId};
    match scope {
        Scope::Sessions(repo) => Some(DocKey::Session {
            repo: repo.clone(),
            session: SessionId::new(name.strip_suffix(".json")?).ok()?,
        }),
        Scope::SessionJobs(repo) => Some(DocKey::SessionJob {
            repo: repo.clone(),
            session: SessionId::new(name.strip_suffix(".json")?).ok()?,
        }),
        Scope::JobCheckpoints(repo, job) => Some(DocKey::JobCheckpoint {
            repo: repo.clone(),
            job: job.clone(),
            version: checkpoint_version(name)?,
        }),
        Scope::WorkflowCheckpoints(repo) => Some(DocKey::WorkflowCheckpoint {
            repo: repo.clone(),
            workflow: WorkflowId::new(name.strip_suffix(".checkpoint.json")?).ok()?,
        }),
        Scope::DeadLetters(repo, job) => Some(DocKey::DeadLetter {
            repo: repo.clone(),
            job: job.clone(),
            item: ItemId::new(name.strip_suffix(".json")?).ok()?,
        }),
        Scope::UnifiedSessions => Some(DocKey::UnifiedSession {
            session: SessionId::new(name.strip_suffix(".json")?).ok()?,
        }),
        Scope::SessionWorkflowCheckpoints(session) => Some(DocKey::SessionWorkflowCheckpoint {
            session: session.clone(),
            workflow: WorkflowId::new(name.strip_suffix(".checkpoint.json")?).ok()?,
        }),
        Scope::Extension(repo, kind) => Some(DocKey::Extension {
            repo: repo.clone(),
            kind: kind.clone(),
            name: DocName::new(name.strip_suffix(".json")?).ok()?,
        }),
        _ => None,
    }
}

/// Where the torn last line of `log` (starting at byte `offset`) is kept
/// when an appender cuts it off: `<log>.torn-<offset>` beside the log for
/// the first fragment at that offset (`n` = 1), `<log>.torn-<offset>-<n>`
/// for the `n`th different one (a later crash can tear a line at the same
/// offset again; a side file is never replaced).
#[must_use]
pub fn torn_tail_file(log: &Path, offset: u64, n: u32) -> PathBuf {
    let name = log
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if n <= 1 {
        log.with_file_name(format!("{name}.torn-{offset}"))
    } else {
        log.with_file_name(format!("{name}.torn-{offset}-{n}"))
    }
}

/// The `n`th name for a retention archive stamped `stamp` in `dir` (the
/// log's archive directory): `<stamp>.jsonl.gz`, then `<stamp>-<n>.jsonl.gz`.
#[must_use]
pub fn event_archive_file(dir: &Path, stamp: &str, n: u32) -> PathBuf {
    if n <= 1 {
        dir.join(format!("{stamp}.jsonl.gz"))
    } else {
        dir.join(format!("{stamp}-{n}.jsonl.gz"))
    }
}

/// The journal of a copy of the store, in its directory
/// ([`Layout::copy_store_dir`]): `done.jsonl`.
#[must_use]
pub fn copy_store_journal(dir: &Path) -> PathBuf {
    dir.join("done.jsonl")
}

/// The fence file of the lock whose file is `lock` (`<key>.lock` →
/// `<key>.fence`): its newest fencing token.
#[must_use]
pub fn lock_fence_file(lock: &Path) -> PathBuf {
    lock.with_extension("fence")
}

/// A file named `name` in the directory of a job's log.
#[must_use]
pub fn log_file(log_dir: &Path, name: &str) -> PathBuf {
    log_dir.join(name)
}

/// `N` of `checkpoint-v<N>.json` (digits only, no sign, no leading `+`).
#[must_use]
pub fn checkpoint_version(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("checkpoint-v")?.strip_suffix(".json")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_names_parse_strictly() {
        assert_eq!(checkpoint_version("checkpoint-v12.json"), Some(12));
        for bad in [
            "checkpoint-v.json",
            "checkpoint-v+1.json",
            "checkpoint-v1.tmp",
            ".tmp-1-0-checkpoint-v1.json",
        ] {
            assert_eq!(checkpoint_version(bad), None, "{bad}");
        }
    }

    #[test]
    fn under_refuses_anything_but_plain_names() {
        let base = Path::new("/store/legacy/p");
        assert_eq!(
            Layout::under(base, Path::new("cache/a.json")),
            Some(PathBuf::from("/store/legacy/p/cache/a.json"))
        );
        for bad in ["../x", "/etc/passwd", "a/../../b", "", "."] {
            assert_eq!(Layout::under(base, Path::new(bad)), None, "{bad}");
        }
    }
}

//! [`JobStateManager`]: MapReduce job checkpoints, as Prodigy's
//! `CheckpointManager` and `DefaultJobStateManager` keep them
//! (`cook/execution/state.rs`).
//!
//! Prodigy writes `checkpoint-v<N>.json` with `N` taken from the state's own
//! `checkpoint_version`, then `metadata.json`, then removes all but the
//! newest three versions. Here the store's listing decides the version: a
//! save files the state as version `N + 1` (0 for a job's first) and writes
//! that number into the payload's `checkpoint_version`, so the key and the
//! payload cannot disagree, whatever the caller's counter says. The whole
//! save (version, checkpoint, metadata, pruning) is one call on the blocking
//! pool: it completes even if the caller's future is dropped.
//!
//! A job is *complete* when its latest checkpoint says `"is_complete":
//! true`, the field Prodigy sets when the job ends (`mark_complete`); a job
//! is *resumable* when its latest checkpoint says `false`. A checkpoint
//! without that boolean cannot be judged (Prodigy would fail to load it and
//! leave it out); it is left out here too, and reported.
//!
//! One process works on a job at a time (Prodigy holds the job's resume
//! lock, [`ResumeLock`](crate::ResumeLock)); saves from one manager are
//! serialized.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use serde_json::{Value, json};
use storage_core::{
    DocKey, Error as StoreError, JobCheckpoint, JobId, RepoKey, Scope, Skipped, Storage, StorageExt,
};
use storage_tokio::AsyncStorage;

use crate::error::{Error, Result};
use crate::time::rfc3339;

/// How many checkpoint versions a job keeps (Prodigy's `MAX_CHECKPOINTS`).
pub const KEEP_CHECKPOINTS: usize = 3;

/// Where a store keeps a job's checkpoint version, for callers whose
/// public API names files (see [`JobStateManager::with_checkpoint_paths`]).
pub type CheckpointPaths = Arc<dyn Fn(&RepoKey, &JobId, u64) -> PathBuf + Send + Sync>;

/// Saves, loads, lists and deletes the MapReduce job checkpoints of one repository.
#[derive(Clone)]
pub struct JobStateManager {
    store: AsyncStorage,
    repo: RepoKey,
    keep: usize,
    saving: Arc<Mutex<()>>,
    paths: Option<CheckpointPaths>,
}

impl std::fmt::Debug for JobStateManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobStateManager")
            .field("store", &self.store)
            .field("repo", &self.repo)
            .field("keep", &self.keep)
            .field("paths", &self.paths.is_some())
            .finish_non_exhaustive()
    }
}

/// One stored checkpoint version of a job.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckpointVersion {
    /// The version.
    pub version: u64,
    /// Its size as stored.
    pub bytes: u64,
    /// When it was written.
    pub modified: SystemTime,
}

/// A job whose latest checkpoint is not complete (Prodigy's `ResumableJob`).
/// The counts are the payload's, `None` where it lacks them.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ResumableJob {
    /// The repository.
    pub repo: RepoKey,
    /// The job.
    pub job: JobId,
    /// Its latest checkpoint version.
    pub version: u64,
    /// `started_at`.
    pub started_at: Option<String>,
    /// `updated_at`.
    pub updated_at: Option<String>,
    /// `total_items`.
    pub total_items: Option<u64>,
    /// `successful_count`.
    pub completed_items: Option<u64>,
    /// `failed_count`.
    pub failed_items: Option<u64>,
}

/// The resumable jobs, and the jobs that could not be judged, with why.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ResumableJobs {
    /// Jobs to resume, by repository and job.
    pub jobs: Vec<ResumableJob>,
    /// Jobs left out because their latest checkpoint is unreadable or says
    /// nothing about completion.
    pub skipped: Vec<Skipped>,
}

fn guard(m: &Mutex<()>) -> std::sync::MutexGuard<'_, ()> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn version_of(key: &DocKey) -> Option<u64> {
    match key {
        DocKey::JobCheckpoint { version, .. } => Some(*version),
        _ => None,
    }
}

impl JobStateManager {
    /// The checkpoints of `repo`'s jobs, keeping [`KEEP_CHECKPOINTS`] versions of each.
    #[must_use]
    pub fn new(store: AsyncStorage, repo: RepoKey) -> Self {
        Self {
            store,
            repo,
            keep: KEEP_CHECKPOINTS,
            saving: Arc::new(Mutex::new(())),
            paths: None,
        }
    }

    /// Names, in each metadata document, the file of the version it points
    /// to (`"path"`), as Prodigy's `CheckpointInfo` does: an older Prodigy
    /// reading the same store finds the latest checkpoint through that
    /// field, and refuses metadata without it. `paths` says where the store
    /// keeps a version (for the file store, `dirs::checkpoint_file`);
    /// nothing here reads the field back.
    #[must_use]
    pub fn with_checkpoint_paths(mut self, paths: CheckpointPaths) -> Self {
        self.paths = Some(paths);
        self
    }

    /// Where the store keeps `version` of `job`, if this manager was given
    /// [`with_checkpoint_paths`](Self::with_checkpoint_paths).
    #[must_use]
    pub fn checkpoint_path(&self, job: &JobId, version: u64) -> Option<PathBuf> {
        self.paths.as_ref().map(|p| p(&self.repo, job, version))
    }

    /// Keeps `versions` versions of each job instead (at least 1).
    #[must_use]
    pub fn keeping(mut self, versions: usize) -> Self {
        self.keep = versions.max(1);
        self
    }

    /// Saves `state` as the job's next version and returns that version;
    /// the payload's `checkpoint_version` is set to it. Also writes the
    /// job's metadata (`{version, created_at, size_bytes}`) and removes
    /// versions beyond the newest kept.
    ///
    /// The metadata has no `path`: where the store files a document is the
    /// store's business, and the latest version is found by listing.
    pub async fn save(&self, state: &JobCheckpoint) -> Result<u64> {
        self.save_version(state, None).await
    }

    /// Saves `state` as version `version`, the caller's choice (Prodigy's
    /// `save_checkpoint` files a state under its own `checkpoint_version`),
    /// replacing a version of that number; the metadata then names it as
    /// the latest, whatever the other versions' numbers, and versions
    /// beyond the newest kept (by number) are removed, as Prodigy does. The
    /// payload is stored as given.
    pub async fn save_as(&self, state: &JobCheckpoint, version: u64) -> Result<()> {
        self.save_version(state, Some(version)).await.map(drop)
    }

    async fn save_version(&self, state: &JobCheckpoint, chosen: Option<u64>) -> Result<u64> {
        let (repo, keep, saving) = (self.repo.clone(), self.keep, Arc::clone(&self.saving));
        let paths = self.paths.clone();
        let state = state.clone();
        self.store
            .run(move |s| {
                let _one_at_a_time = guard(&saving);
                let job = state.job_id().clone();
                let (version, state) = if let Some(v) = chosen {
                    (v, state)
                } else {
                    let keys = s.list(&Scope::JobCheckpoints(repo.clone(), job.clone()))?;
                    let version = keys
                        .iter()
                        .filter_map(version_of)
                        .max()
                        .map_or(0, |v| v + 1);
                    let mut json = state.json().clone();
                    json.insert("checkpoint_version".into(), json!(version));
                    let state =
                        JobCheckpoint::from_json(Value::Object(json)).map_err(StoreError::from)?;
                    (version, state)
                };
                let size_bytes = serde_json::to_vec_pretty(state.json()).map_or(0, |b| b.len());
                s.save_job_checkpoint(&repo, version, &state)?;
                let mut meta = json!({
                    "version": version,
                    "created_at": rfc3339(SystemTime::now()),
                    "size_bytes": size_bytes,
                });
                if let Some(paths) = &paths {
                    meta["path"] = json!(paths(&repo, &job, version));
                }
                s.put(
                    &DocKey::JobMetadata {
                        repo: repo.clone(),
                        job: job.clone(),
                    },
                    &meta,
                )?;
                s.keep_newest_job_checkpoints(&repo, &job, keep)?;
                Ok(version)
            })
            .await
    }

    /// The latest checkpoint of `job`, with its version; `None` if it has
    /// none. The latest is the version the job's metadata names, as
    /// Prodigy defines it: the one saved last, whatever its number. A
    /// checkpoint that no readable metadata names is not a state to resume
    /// from (a save writes the checkpoint, then the metadata; a crash
    /// between leaves the metadata naming the version before), so without
    /// readable metadata, or with metadata naming a version that is gone,
    /// there is no latest.
    pub async fn load_latest(&self, job: &JobId) -> Result<Option<(u64, JobCheckpoint)>> {
        let (repo, job) = (self.repo.clone(), job.clone());
        self.store
            .run(move |s| {
                let Some(v) = named_version(s, &repo, &job)? else {
                    return Ok(None);
                };
                Ok(s.load_job_checkpoint(&repo, &job, v)?.map(|cp| (v, cp)))
            })
            .await
    }

    /// Version `version` of `job`, or its newest for `None` (Prodigy's
    /// `load_checkpoint_by_version`); a missing one is
    /// [`Error::CheckpointNotFound`], naming the versions kept.
    pub async fn load(&self, job: &JobId, version: Option<u64>) -> Result<(u64, JobCheckpoint)> {
        let found = match version {
            None => self.load_latest(job).await?,
            Some(v) => self
                .store
                .load_job_checkpoint(&self.repo, job, v)
                .await?
                .map(|cp| (v, cp)),
        };
        match found {
            Some(found) => Ok(found),
            None => Err(Error::CheckpointNotFound {
                repo: self.repo.clone(),
                job: job.clone(),
                version,
                kept: self
                    .versions(job)
                    .await?
                    .iter()
                    .rev()
                    .map(|v| v.version)
                    .collect(),
            }),
        }
    }

    /// The stored versions of `job`, newest first (as Prodigy lists them),
    /// with their size and time.
    pub async fn versions(&self, job: &JobId) -> Result<Vec<CheckpointVersion>> {
        let scope = Scope::JobCheckpoints(self.repo.clone(), job.clone());
        let mut out: Vec<CheckpointVersion> = self
            .store
            .list_entries(&scope)
            .await?
            .into_iter()
            .filter_map(|e| {
                version_of(&e.key).map(|version| CheckpointVersion {
                    version,
                    bytes: e.bytes,
                    modified: e.modified,
                })
            })
            .collect();
        out.sort_by_key(|v| std::cmp::Reverse(v.version));
        Ok(out)
    }

    /// The resumable jobs of this manager's repository.
    pub async fn resumable_jobs(&self) -> Result<ResumableJobs> {
        let repo = self.repo.clone();
        self.store
            .run(move |s| resumable_in(s, std::slice::from_ref(&repo)))
            .await
    }

    /// The resumable jobs of every repository in the store.
    pub async fn resumable_jobs_everywhere(&self) -> Result<ResumableJobs> {
        self.store
            .run(|s| {
                let repos = s.repos()?;
                resumable_in(s, &repos)
            })
            .await
    }

    /// Removes all but the `keep` highest versions of `job`, as Prodigy's
    /// `cleanup_old_checkpoints` does; returns the versions removed.
    pub async fn keep_newest(&self, job: &JobId, keep: usize) -> Result<Vec<u64>> {
        let (repo, job) = (self.repo.clone(), job.clone());
        Ok(self
            .store
            .run(move |s| s.keep_newest_job_checkpoints(&repo, &job, keep))
            .await?)
    }

    /// Whether `job` has metadata (Prodigy's `has_checkpoint`).
    pub async fn has_metadata(&self, job: &JobId) -> Result<bool> {
        let key = DocKey::JobMetadata {
            repo: self.repo.clone(),
            job: job.clone(),
        };
        Ok(self.store.entry(&key).await?.is_some())
    }

    /// Removes every checkpoint version of `job` and its metadata (its dead
    /// letters and event log are the queue's and the log's); returns how
    /// many documents went.
    pub async fn delete_job(&self, job: &JobId) -> Result<u64> {
        Ok(self.store.delete_job(&self.repo, job).await?)
    }
}

/// The version `job`'s metadata names as its latest, if the metadata is
/// there and readable.
fn named_version(
    s: &dyn Storage,
    repo: &RepoKey,
    job: &JobId,
) -> storage_core::Result<Option<u64>> {
    let meta = DocKey::JobMetadata {
        repo: repo.clone(),
        job: job.clone(),
    };
    match s.get(&meta) {
        Ok(Some(m)) => Ok(m.get("version").and_then(Value::as_u64)),
        Ok(None) | Err(StoreError::Corrupt { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

fn resumable_in(s: &dyn Storage, repos: &[RepoKey]) -> Result<ResumableJobs> {
    let mut out = ResumableJobs::default();
    for repo in repos {
        for job in s.jobs(repo)? {
            let keys = s.list(&Scope::JobCheckpoints(repo.clone(), job.clone()))?;
            if keys.is_empty() {
                continue; // metadata without a checkpoint: nothing to resume from
            }
            // The latest is what the metadata names (Prodigy's rule).
            let named = named_version(s, repo, &job)?
                .filter(|v| keys.iter().any(|k| version_of(k) == Some(*v)));
            let Some(version) = named else {
                out.skipped.push(Skipped::new(
                    format!("job `{job}` of repository `{repo}`"),
                    None,
                    "no readable metadata names one of its checkpoints as the latest",
                ));
                continue;
            };
            let key = &DocKey::JobCheckpoint {
                repo: repo.clone(),
                job: job.clone(),
                version,
            };
            let name = format!("job `{job}` of repository `{repo}` (checkpoint version {version})");
            let cp = match s.get(key) {
                Ok(Some(v)) => match JobCheckpoint::from_json(v) {
                    Ok(cp) => cp,
                    Err(e) => {
                        out.skipped.push(Skipped::new(name, None, e.to_string()));
                        continue;
                    }
                },
                Ok(None) => continue, // deleted since the listing
                Err(StoreError::Corrupt { reason, .. }) => {
                    out.skipped.push(Skipped::new(name, None, reason));
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            match cp.json().get("is_complete").and_then(Value::as_bool) {
                Some(true) => {}
                Some(false) => {
                    let text = |f: &str| cp.str_field(f).map(str::to_owned);
                    let count = |f: &str| cp.json().get(f).and_then(Value::as_u64);
                    out.jobs.push(ResumableJob {
                        repo: repo.clone(),
                        job: job.clone(),
                        version,
                        started_at: text("started_at"),
                        updated_at: text("updated_at"),
                        total_items: count("total_items"),
                        completed_items: count("successful_count"),
                        failed_items: count("failed_count"),
                    });
                }
                None => out.skipped.push(Skipped::new(
                    name,
                    None,
                    "it has no boolean `is_complete`, so whether the job finished is unknown",
                )),
            }
        }
    }
    Ok(out)
}

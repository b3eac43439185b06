//! Prodigy's constructors take directories; the store takes a root and a
//! repository key. This module maps one onto the other, call site by call
//! site, and opens the file store there (feature `fs`).
//!
//! Every mapping is a pure function of the path the caller passes (no file
//! system access, no environment), so the same directory always lands in
//! the same place, and a test can state it. The shapes are the ones
//! Prodigy's own `GlobalStorage` builds (`storage/global.rs`):
//!
//! | Prodigy constructor | it is passed | store root | repository |
//! |---|---|---|---|
//! | `DeadLetterQueue::new(job, base)` | `<home>/dlq/<repo>/<job>` (`get_dlq_dir`) | `<home>` | `<repo>` |
//! | the same | any other directory (a project root, a test's directory) | that directory | [`LOCAL_REPO`] |
//! | `CheckpointManager::new(base)` | `<home>/state/<repo>/mapreduce` (`get_state_dir(repo, "mapreduce")`) | `<home>` | `<repo>` |
//! | the same | `<home>/state/<repo>` (what `cli/commands/resume.rs` derives from a job's directory) | `<home>` | `<repo>` |
//! | the same | any other directory | that directory | [`LOCAL_REPO`] |
//! | `ResumeLockManager::new(dir)` | `<home>` (`get_default_storage_dir`), or a test's directory | that directory | (locks are global) |
//! | `JsonlEventWriter::new(path)` | `<home>/events/<repo>/<job>/events-<ts>.jsonl` (`create_global_event_logger`) | `<home>` | `<repo>`, the job's log |
//! | the same | any other path | none: a plain file, written as before ([`EventFile::Plain`]) | |
//!
//! A directory that is not one of `GlobalStorage`'s shapes becomes a store
//! of its own, so that two callers that share a directory (a test's
//! temporary directory, a project root handed to both the dead-letter
//! queue and the job state) share one store, as they shared files before.
//! In the store's layout that puts a job's checkpoints under
//! `<dir>/state/local/mapreduce/jobs/<job>/` where Prodigy's `jobs_dir()`
//! said `<dir>/jobs/`: [`checkpoint_file`] and [`jobs_dir`] name the real
//! places.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use storage_core::{JobId, RepoKey};
use storage_fs::{FsStorage, Layout};
use storage_tokio::AsyncStorage;

use crate::error::Result;

/// The repository key of a store that a directory of its own became (see
/// the module docs).
pub const LOCAL_REPO: &str = "local";

/// Where a directory a Prodigy constructor was given lands.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Home {
    /// The store's root.
    pub root: PathBuf,
    /// The repository the caller's data belongs to.
    pub repo: RepoKey,
}

impl Home {
    fn local(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
            repo: RepoKey::new(LOCAL_REPO).expect("`local` is a valid repository key"),
        }
    }
}

/// The last `n` plain names of `path`, last first; `None` if it has fewer.
fn tail(path: &Path, n: usize) -> Option<(PathBuf, Vec<&str>)> {
    let mut names = Vec::with_capacity(n);
    let mut rest = path;
    while names.len() < n {
        match rest.components().next_back()? {
            Component::Normal(name) => names.push(name.to_str()?),
            _ => return None,
        }
        rest = rest.parent()?;
    }
    Some((rest.to_owned(), names))
}

/// Where `DeadLetterQueue::new(job, base_path)` keeps its items.
#[must_use]
pub fn dead_letter_home(base_path: &Path, job: &str) -> Home {
    if let Some((root, names)) = tail(base_path, 3)
        && let [slot, repo, "dlq"] = names.as_slice()
        && *slot == job
        && let Ok(repo) = RepoKey::new(*repo)
    {
        return Home { root, repo };
    }
    Home::local(base_path)
}

/// Where `CheckpointManager::new(base_dir)` keeps job checkpoints.
#[must_use]
pub fn checkpoint_home(base_dir: &Path) -> Home {
    if let Some((root, names)) = tail(base_dir, 3)
        && let ["mapreduce", repo, "state"] = names.as_slice()
        && let Ok(repo) = RepoKey::new(*repo)
    {
        return Home { root, repo };
    }
    // `cli/commands/resume.rs` derives `state/<repo>` from a job's
    // directory (one level short of `state/<repo>/mapreduce`): it means
    // the same repository's jobs.
    if let Some((root, names)) = tail(base_dir, 2)
        && let [repo, "state"] = names.as_slice()
        && let Ok(repo) = RepoKey::new(*repo)
    {
        return Home { root, repo };
    }
    Home::local(base_dir)
}

/// Where a `JsonlEventWriter` pointed at `path` writes.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventFile {
    /// A job's log in the store at `root`.
    Log {
        /// The store's root.
        root: PathBuf,
        /// The repository.
        repo: RepoKey,
        /// The job (or session) whose log it is.
        job: JobId,
    },
    /// Not a path in a store: the file itself, as before.
    Plain(PathBuf),
}

/// Where a `JsonlEventWriter::new(path)` writes: the job's log for a file
/// in a store's `events/<repo>/<job>/` (`create_global_event_logger`
/// names one per run, `events-<ts>.jsonl`; they are all the one log of
/// that job), the file itself otherwise.
#[must_use]
pub fn event_file(path: &Path) -> EventFile {
    if let Some((root, names)) = tail(path, 4)
        && let [file, job, repo, "events"] = names.as_slice()
        && Path::new(file).extension().is_some_and(|e| e == "jsonl")
        && let (Ok(repo), Ok(job)) = (RepoKey::new(*repo), JobId::new(*job))
    {
        return EventFile::Log { root, repo, job };
    }
    EventFile::Plain(path.to_owned())
}

/// The file of `version` of `job` in the store at `home` (what Prodigy's
/// `CheckpointInfo::path` names).
#[must_use]
pub fn checkpoint_file(home: &Home, job: &JobId, version: u64) -> PathBuf {
    Layout::new(&home.root).document(&storage_core::DocKey::JobCheckpoint {
        repo: home.repo.clone(),
        job: job.clone(),
        version,
    })
}

/// The directory of every job's checkpoints in the store at `home` (what
/// Prodigy's `CheckpointManager::jobs_dir` names).
#[must_use]
pub fn jobs_dir(home: &Home) -> PathBuf {
    Layout::new(&home.root).jobs_dir(&home.repo)
}

/// A [`CheckpointPaths`](crate::CheckpointPaths) for the file store at `root`.
#[must_use]
pub fn checkpoint_paths(root: &Path) -> crate::CheckpointPaths {
    let layout = Layout::new(root);
    Arc::new(move |repo, job, version| {
        layout.document(&storage_core::DocKey::JobCheckpoint {
            repo: repo.clone(),
            job: job.clone(),
            version,
        })
    })
}

/// Opens the file store at `root` on the calling thread (it creates
/// directories and may `fsync`): for synchronous constructors, never on a
/// runtime worker.
pub fn open_store_blocking(root: &Path) -> Result<AsyncStorage> {
    Ok(AsyncStorage::new(FsStorage::open(root)?))
}

/// Opens the file store at `root` on tokio's blocking pool: for async
/// constructors (no blocking I/O on a runtime worker).
pub async fn open_store(root: &Path) -> Result<AsyncStorage> {
    let root = root.to_owned();
    match tokio::task::spawn_blocking(move || open_store_blocking(&root)).await {
        Ok(out) => out,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(storage_core::Error::io(
            "open the store (its task was cancelled)",
            Path::new(""),
            std::io::Error::other(e.to_string()),
        )
        .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(s: &str) -> RepoKey {
        RepoKey::new(s).expect("valid")
    }

    #[test]
    fn global_storage_shapes_map_to_their_store_and_repository() {
        let home = Path::new("/home/u/.prodigy");
        assert_eq!(
            dead_letter_home(&home.join("dlq/api/mapreduce-1"), "mapreduce-1"),
            Home {
                root: home.to_owned(),
                repo: repo("api")
            }
        );
        assert_eq!(
            checkpoint_home(&home.join("state/api/mapreduce")),
            Home {
                root: home.to_owned(),
                repo: repo("api")
            }
        );
        assert_eq!(
            event_file(&home.join("events/api/session-1/events-20260101_120000.jsonl")),
            EventFile::Log {
                root: home.to_owned(),
                repo: repo("api"),
                job: JobId::new("session-1").expect("valid")
            }
        );
    }

    #[test]
    fn any_other_directory_is_a_store_of_its_own_and_any_other_file_is_plain() {
        let dir = Path::new("/tmp/t1");
        let local = Home {
            root: dir.to_owned(),
            repo: repo(LOCAL_REPO),
        };
        assert_eq!(dead_letter_home(dir, "job-1"), local);
        // The job slot must be the job's: another job's directory is not a queue's.
        let other = Path::new("/h/dlq/api/job-2");
        assert_eq!(dead_letter_home(other, "job-1").root, other);
        assert_eq!(checkpoint_home(dir), local);
        assert_eq!(
            checkpoint_home(Path::new("/h/state/api/other")).repo,
            repo(LOCAL_REPO)
        );
        assert_eq!(
            checkpoint_home(Path::new("/h/state/api")),
            Home {
                root: "/h".into(),
                repo: repo("api")
            },
            "resume.rs's one-level-short directory"
        );
        assert_eq!(
            event_file(&dir.join("events.jsonl")),
            EventFile::Plain(dir.join("events.jsonl"))
        );
        assert_eq!(
            event_file(Path::new("/h/events/api/job-1/notes.txt")),
            EventFile::Plain("/h/events/api/job-1/notes.txt".into())
        );
        assert_eq!(
            jobs_dir(&local),
            dir.join("state/local/mapreduce/jobs"),
            "where the jobs really are"
        );
        assert_eq!(
            checkpoint_file(&local, &JobId::new("job-1").expect("valid"), 3),
            dir.join("state/local/mapreduce/jobs/job-1/checkpoint-v3.json")
        );
    }
}

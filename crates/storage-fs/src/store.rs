//! `FsStorage`: the [`Storage`] trait on disk.

use std::path::{Path, PathBuf};

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use serde_json::Value;
use storage_core::{
    Appended, DocKey, Entry, Error, EventCursor, EventLogSummary, EventRecord, EventRetention,
    ExtKind, Fence, JobId, LockGuard, LockHolder, LockKey, LockWait, LogEntry, ReadMode, RepoKey,
    Result, RetentionReport, Scope, Storage,
};

use crate::layout::{self, LAYOUT_VERSION, Layout};
use crate::lock::{FencedLock, FileLock, this_process};
use crate::repo::{self, RepoRecord};
use crate::{events, fsx, layout0};

/// The global store on disk, rooted at one directory.
///
/// Cheap to clone; holds no open files between calls.
#[derive(Clone, Debug)]
pub struct FsStorage {
    layout: Layout,
}

/// What [`FsStorage::sweep`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SweepReport {
    /// Abandoned temp files removed (no writer held their lock).
    pub removed: Vec<PathBuf>,
    /// Temp files left because a writer holds their lock (it is writing them).
    pub kept_live: usize,
}

impl FsStorage {
    /// Opens the store at `root`, creating it (0700) and its `layout.json` if
    /// needed. A store written by a newer layout is refused with
    /// [`Error::UnsupportedLayout`], never guessed at.
    ///
    /// A root that Prodigy's own code wrote (layout 0), or still writes
    /// beside this store, is served as it is: reads reach both layouts,
    /// writes go to the current one (see `docs/storage-layout.md`, "One
    /// root, two layouts"), and no `layout.json` is stamped onto it until
    /// `prodigy-storage upgrade` has moved what layout 0 keeps elsewhere.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let store = Self::peek(root)?;
        store.create()?;
        Ok(store)
    }

    /// Creates the store's root (0700) and `layout.json` if they do not
    /// exist yet; does nothing to an existing store. [`FsStorage::open`]
    /// does this; a handle from [`FsStorage::peek`] does it on demand, so a
    /// caller can refuse a request before creating anything.
    pub fn create(&self) -> Result<()> {
        fsx::create_dir_all(self.layout.root())?;
        // A writer killed while creating the store or registering a project
        // leaves its temp file here; nothing else sweeps these two places.
        for dir in [self.layout.root().to_owned(), self.layout.repos_dir()] {
            for path in fsx::sweep_temp_files_here(&dir)? {
                tracing::info!(path = %path.display(), "swept a dead writer's temp file");
            }
        }
        match read_layout_version(&self.layout)? {
            Some(found) if found > LAYOUT_VERSION => Err(Error::UnsupportedLayout {
                path: self.layout.root().to_owned(),
                found,
                supported: LAYOUT_VERSION,
            }),
            // Layout 2 only added directories (unified sessions, extension
            // kinds, retention archives): every layout-1 path means the same
            // in layout 2, so the upgrade is the new version number alone.
            Some(found) if found < LAYOUT_VERSION => {
                tracing::info!(
                    from = found,
                    to = LAYOUT_VERSION,
                    "upgraded the store's layout version"
                );
                self.stamp_layout_version()
            }
            Some(_) => Ok(()),
            // Data in Prodigy's older layout and no version: served as it is
            // (reads reach both layouts, writes go to the current one; see
            // `layout0`), and no version is stamped, so that the upgrade,
            // which moves what layout 0 keeps elsewhere, stays due.
            None if has_layout_0_data(self.layout.root())? => {
                if !layout0::ENABLED {
                    // This build cannot read it: nothing is written until it is upgraded.
                    return Err(Error::UpgradeRequired {
                        path: self.layout.root().to_owned(),
                    });
                }
                tracing::debug!(root = %self.layout.root().display(), "the store holds data in Prodigy's older layout (layout 0): reading both layouts until `prodigy-storage upgrade`");
                Ok(())
            }
            None => self.stamp_layout_version(),
        }
    }

    /// Writes `layout.json` with this build's version. For the upgrade of
    /// a layout-0 store, which calls it last, as its commit; everyone else
    /// gets it from [`FsStorage::create`].
    pub fn stamp_layout_version(&self) -> Result<()> {
        fsx::write_atomic(&self.layout.version_file(), &version_doc())
    }

    /// [`FsStorage::stamp_layout_version`], made durable by `batch`'s
    /// `finish` (see [`fsx::Batch::write_atomic_with`]): for the upgrade's
    /// commit, which finishes the batch before it removes its journal.
    pub fn stamp_layout_version_in(&self, batch: &fsx::Batch) -> Result<()> {
        let bytes = version_doc();
        batch.write_atomic_with(&self.layout.version_file(), |f| {
            std::io::Write::write_all(f, &bytes)
        })
    }

    /// Removes `layout.json`, for the downgrade of an upgraded layout-0
    /// store (an older Prodigy reads such a store without it).
    pub fn remove_layout_version(&self) -> Result<()> {
        fsx::remove_file_durable(&self.layout.version_file())?;
        Ok(())
    }

    /// A handle on the store at `root` for read-only use (`status`, dry runs):
    /// checks the layout version if there is one, and creates nothing.
    pub fn peek(root: impl Into<PathBuf>) -> Result<Self> {
        let layout = Layout::new(root);
        match read_layout_version(&layout)? {
            Some(found) if found > LAYOUT_VERSION => Err(Error::UnsupportedLayout {
                path: layout.root().to_owned(),
                found,
                supported: LAYOUT_VERSION,
            }),
            _ => Ok(Self { layout }),
        }
    }

    /// The store's root directory.
    #[must_use]
    pub fn root(&self) -> &Path {
        self.layout.root()
    }

    /// The store's layout (paths of everything in it).
    #[must_use]
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The repository key of `project`, registering it on first use
    /// (see [`crate::repo`] for the rule).
    pub fn repo_key(&self, project: &Path) -> Result<RepoKey> {
        repo::register(&self.layout, project)
    }

    /// The repository key of `project` if it is registered; registers nothing.
    pub fn find_repo_key(&self, project: &Path) -> Result<Option<RepoKey>> {
        repo::find(&self.layout, project)
    }

    /// The key [`FsStorage::repo_key`] would give `project`; registers nothing.
    pub fn proposed_repo_key(&self, project: &Path) -> Result<RepoKey> {
        repo::proposed(&self.layout, project)
    }

    /// Every registered repository (`repos/<key>.json`), sorted by key.
    /// `Storage::repos` is every repository that has data, registered or not.
    pub fn registrations(&self) -> Result<Vec<RepoRecord>> {
        repo::all(&self.layout)
    }

    /// Takes one of the store's own locks (`locks/<name>.lock`).
    pub fn lock_internal(&self, name: &LockKey, wait: LockWait) -> Result<FileLock> {
        FileLock::acquire(
            &self.layout.internal_lock(name),
            name,
            &this_process(name.as_str()),
            wait,
        )
    }

    /// Removes abandoned temp files: those whose `flock` no writer holds
    /// (a writer holds it for as long as it writes; the kernel drops it when
    /// the writer dies). Never decided by pid, which is per namespace. Never
    /// touches `worktrees/` or anything that is not one of the store's temp
    /// files.
    pub fn sweep(&self) -> Result<SweepReport> {
        let mut report = SweepReport::default();
        report
            .removed
            .extend(fsx::sweep_temp_files_here(self.layout.root())?);
        for (dir, levels) in self.layout.temp_file_dirs() {
            report.removed.extend(match levels {
                None => fsx::sweep_temp_files(&dir)?,
                Some(levels) => fsx::sweep_temp_files_within(&dir, levels)?,
            });
        }
        for (dir, levels) in self.layout.temp_file_dirs() {
            report.kept_live += count_temp_files(&dir, levels)?;
        }
        report.removed.sort();
        for path in &report.removed {
            tracing::info!(path = %path.display(), "swept a dead writer's temp file");
        }
        Ok(report)
    }
}

/// How many of the store's temp files are under `dir`, at most `levels`
/// directories down (after a sweep: live ones).
fn count_temp_files(dir: &Path, levels: Option<usize>) -> Result<usize> {
    let mut n = 0;
    let mut stack = vec![(dir.to_owned(), 0usize)];
    while let Some((d, depth)) = stack.pop() {
        for entry in fsx::read_dir_sorted(&d)? {
            if entry.file_type.is_dir() {
                if levels.is_none_or(|max| depth < max) {
                    stack.push((entry.path, depth + 1));
                }
            } else if fsx::temp_owner(&entry.name.to_string_lossy()).is_some() {
                n += 1;
            }
        }
    }
    Ok(n)
}

/// The content of `layout.json` this build writes.
fn version_doc() -> Vec<u8> {
    let doc = serde_json::json!({ "layout_version": LAYOUT_VERSION });
    serde_json::to_vec_pretty(&doc).expect("serializable")
}

/// The layout version recorded at `layout`'s root, if any.
fn read_layout_version(layout: &Layout) -> Result<Option<u64>> {
    let path = layout.version_file();
    let Some(bytes) = fsx::read_optional(&path)? else {
        return Ok(None);
    };
    // What to do is part of the reason: without a readable version the
    // store cannot be opened, and without the file at all an upgraded
    // store would look like layout 0 and be upgraded again.
    let corrupt = |reason: String| Error::Corrupt {
        path: path.clone(),
        line: None,
        reason: format!(
            "{reason}. It holds only the store's layout version: restore it from a backup, or, \
             if this store was created or upgraded by a prodigy-storage of layout version \
             {LAYOUT_VERSION}, write `{{\"layout_version\": {LAYOUT_VERSION}}}` into it \
             (docs/storage-layout.md); never delete it"
        ),
    };
    let doc: Value = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    match doc.get("layout_version").and_then(Value::as_u64) {
        None => Err(corrupt("no integer `layout_version`".to_owned())),
        // Versions start at 1: a 0 was written by hand or by something else.
        Some(0) => Err(corrupt(
            "`layout_version` is 0; versions start at 1".to_owned(),
        )),
        Some(v) => Ok(Some(v)),
    }
}

/// The layout version of the store at `root`, without creating anything:
/// `None` if there is no store (or no `layout.json`) there.
pub fn layout_version(root: &Path) -> Result<Option<u64>> {
    read_layout_version(&Layout::new(root))
}

/// Whether `root` holds data in the layout Prodigy's own code wrote before
/// this storage layer ("layout 0") and has no `layout.json`: a file (or
/// link) somewhere under one of the directories it wrote data into. Stops
/// at the first one. A root with only the user's `config.yml`, Prodigy's
/// `worktrees/` or empty directories needs no upgrade.
pub fn has_layout_0_data(root: &Path) -> Result<bool> {
    let layout = Layout::new(root);
    if fsx::read_optional(&layout.version_file())?.is_some() {
        return Ok(false);
    }
    let mut stack: Vec<PathBuf> = layout.layout_0_data_dirs();
    while let Some(dir) = stack.pop() {
        match std::fs::symlink_metadata(&dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("stat", &dir, e)),
        }
        for e in fsx::read_dir_sorted(&dir)? {
            if !e.file_type.is_dir() {
                return Ok(true);
            }
            stack.push(e.path);
        }
    }
    Ok(false)
}

fn subdirs(dir: &Path) -> Result<Vec<fsx::Entry>> {
    Ok(fsx::read_dir_sorted(dir)?
        .into_iter()
        .filter(|e| e.file_type.is_dir())
        .collect())
}

/// The entry of the file at `path` for `key`, or `None` if it is gone.
fn stat_entry(key: DocKey, path: &Path) -> Result<Option<Entry>> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_file() => {
            let modified = m.modified().map_err(|e| Error::io("stat", path, e))?;
            Ok(Some(Entry::new(key, m.size(), modified)))
        }
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("stat", path, e)),
    }
}

/// The valid job ids among the subdirectories of `dir` that hold a file
/// `has(name)` accepts.
fn job_dirs(dir: &Path, has: impl Fn(&str) -> bool) -> Result<Vec<JobId>> {
    let mut jobs = Vec::new();
    for d in subdirs(dir)? {
        let Ok(job) = JobId::new(d.name.to_string_lossy()) else {
            continue;
        };
        let found = fsx::read_dir_sorted(&d.path)?
            .iter()
            .any(|e| e.file_type.is_file() && has(&e.name.to_string_lossy()));
        if found {
            jobs.push(job);
        }
    }
    Ok(jobs)
}

impl Storage for FsStorage {
    fn put(&self, key: &DocKey, doc: &Value) -> Result<()> {
        // What `get` could not parse back is refused before it is written.
        storage_core::check_document(doc)?;
        let path = self.layout.document(key);
        let bytes = serde_json::to_vec_pretty(doc).expect("a JSON value always serializes");
        // A deletion may remove an emptied directory between our creating
        // it and writing into it: create it again. Each try loses only to a
        // deletion that emptied the directory in that very window, so this
        // ends; on two busy cores it took more than 8 tries (the bound it
        // had), so after a few each try first yields to the deleter.
        let mut tries = 0u32;
        loop {
            match fsx::write_atomic(&path, &bytes) {
                Err(Error::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound && tries < 10_000 =>
                {
                    tries += 1;
                    if tries > 8 {
                        std::thread::yield_now();
                    }
                    match fsx::create_dir_all(fsx::parent(&path)) {
                        // A deletion removed an emptied parent meanwhile: again.
                        Err(Error::Io { source, .. })
                            if source.kind() == std::io::ErrorKind::NotFound => {}
                        other => other?,
                    }
                }
                other => return other,
            }
        }
    }

    fn get(&self, key: &DocKey) -> Result<Option<Value>> {
        let Some((path, bytes)) = layout0::read(&self.layout, key)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Corrupt {
                path,
                line: Some(e.line() as u64),
                reason: e.to_string(),
            })
    }

    fn delete(&self, key: &DocKey) -> Result<bool> {
        let removed = fsx::remove_file_durable(&self.layout.document(key))?;
        if removed {
            fsx::remove_empty_dirs(&self.layout.removable_dirs(key))?;
        }
        let older = match layout0::older_copy_to_delete(&self.layout, key) {
            Some(path) => fsx::remove_file_durable(&path)?,
            None => false,
        };
        Ok(removed || older)
    }

    fn list(&self, scope: &Scope) -> Result<Vec<DocKey>> {
        let mut keys: Vec<DocKey> = fsx::read_dir_sorted(&self.layout.scope_dir(scope))?
            .into_iter()
            .filter(|e| e.file_type.is_file())
            .filter_map(|e| layout::key_for_name(scope, &e.name.to_string_lossy()))
            .filter(|k| !layout0::is_alias(&self.layout, k))
            .collect();
        keys.extend(layout0::older_keys(&self.layout, scope)?);
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    fn list_entries(&self, scope: &Scope) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        for key in self.list(scope)? {
            if let Some(e) = self.entry(&key)? {
                out.push(e);
            }
        }
        Ok(out)
    }

    fn scan_entries(&self, scope: &Scope, visit: &mut dyn FnMut(Entry)) -> Result<()> {
        if !layout0::older_keys(&self.layout, scope)?.is_empty() {
            // Both layouts: each key once, from the copy `get` reads.
            for e in self.list_entries(scope)? {
                visit(e);
            }
            return Ok(());
        }
        let dir = self.layout.scope_dir(scope);
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io("list", &dir, e)),
        };
        for entry in rd {
            let entry = entry.map_err(|e| Error::io("list", &dir, e))?;
            let Some(key) = layout::key_for_name(scope, &entry.file_name().to_string_lossy())
            else {
                continue;
            };
            if layout0::is_alias(&self.layout, &key) {
                continue;
            }
            if let Some(e) = stat_entry(key, &entry.path())? {
                visit(e);
            }
        }
        Ok(())
    }

    fn entry(&self, key: &DocKey) -> Result<Option<Entry>> {
        stat_entry(key.clone(), &layout0::winner(&self.layout, key))
    }

    fn repos(&self) -> Result<Vec<RepoKey>> {
        self.repos_with_data()
    }

    fn jobs(&self, repo: &RepoKey) -> Result<Vec<JobId>> {
        job_dirs(&self.layout.jobs_dir(repo), |n| {
            n == "metadata.json" || layout::checkpoint_version(n).is_some()
        })
    }

    fn jobs_with_dead_letters(&self, repo: &RepoKey) -> Result<Vec<JobId>> {
        let mut jobs = Vec::new();
        for d in subdirs(&self.layout.dlq_repo_dir(repo))? {
            let Ok(job) = JobId::new(d.name.to_string_lossy()) else {
                continue;
            };
            let index = DocKey::DeadLetterIndex {
                repo: repo.clone(),
                job: job.clone(),
            };
            let has_index = self.entry(&index)?.is_some();
            if has_index
                || !self
                    .list(&Scope::DeadLetters(repo.clone(), job.clone()))?
                    .is_empty()
            {
                jobs.push(job);
            }
        }
        Ok(jobs)
    }

    fn extension_kinds(&self, repo: &RepoKey) -> Result<Vec<ExtKind>> {
        let mut kinds = Vec::new();
        for d in subdirs(&self.layout.ext_repo_dir(repo))? {
            if let Ok(kind) = ExtKind::new(d.name.to_string_lossy())
                && !self
                    .list(&Scope::Extension(repo.clone(), kind.clone()))?
                    .is_empty()
            {
                kinds.push(kind);
            }
        }
        Ok(kinds)
    }

    fn append_events(&self, repo: &RepoKey, job: &JobId, records: &[EventRecord]) -> Result<()> {
        // A line no strict reader could pass is refused before the batch is written.
        storage_core::check_events(records)?;
        events::append(
            &self.layout.events_job_dir(repo, job),
            &self.layout.active_event_log(repo, job),
            records,
        )
    }

    fn event_log_end(&self, repo: &RepoKey, job: &JobId) -> Result<EventCursor> {
        events::end(&self.layout.events_job_dir(repo, job))
    }

    fn append_events_at(
        &self,
        repo: &RepoKey,
        job: &JobId,
        expected: &EventCursor,
        records: &[EventRecord],
    ) -> Result<Appended> {
        storage_core::check_events(records)?;
        events::append_at(
            &self.layout.events_job_dir(repo, job),
            &self.layout.active_event_log(repo, job),
            (repo, job),
            expected,
            records,
        )
    }

    fn read_events_from(
        &self,
        repo: &RepoKey,
        job: &JobId,
        from: &EventCursor,
        mode: ReadMode,
        visit: &mut dyn FnMut(EventRecord),
    ) -> Result<EventLogSummary> {
        events::read_from(&self.layout.events_job_dir(repo, job), from, mode, visit)
    }

    fn wait_for_events(
        &self,
        repo: &RepoKey,
        job: &JobId,
        after: &EventCursor,
        timeout: Duration,
    ) -> Result<bool> {
        events::wait(&self.layout.events_job_dir(repo, job), after, timeout)
    }

    // Reason: logs are `.jsonl` exactly, as the appender names them.
    #[allow(clippy::case_sensitive_file_extension_comparisons)]
    fn event_logs(&self, repo: &RepoKey) -> Result<Vec<JobId>> {
        job_dirs(&self.layout.events_repo_dir(repo), |n| {
            !n.starts_with('.') && n.ends_with(".jsonl")
        })
    }

    fn event_log_entry(&self, repo: &RepoKey, job: &JobId) -> Result<Option<LogEntry>> {
        events::entry(&self.layout.events_job_dir(repo, job))
    }

    fn delete_event_log(&self, repo: &RepoKey, job: &JobId) -> Result<bool> {
        events::delete(&self.layout.events_job_dir(repo, job))
    }

    fn retain_events(
        &self,
        repo: &RepoKey,
        job: &JobId,
        policy: &EventRetention,
    ) -> Result<RetentionReport> {
        events::retain(
            &self.layout.events_job_dir(repo, job),
            &self.layout.event_archive_dir(repo, job),
            policy,
        )
    }

    fn lock(&self, key: &LockKey, holder: &LockHolder, wait: LockWait) -> Result<LockGuard> {
        let lock = FencedLock::acquire(&self.layout.resume_lock(key), key, holder, wait)?;
        Ok(LockGuard::with_liveness(key.clone(), Box::new(lock)))
    }

    fn put_fenced(&self, key: &DocKey, doc: &Value, fence: &Fence) -> Result<()> {
        crate::lock::with_fence(&self.layout.resume_lock(&fence.key), fence, || {
            self.put(key, doc)
        })
    }

    fn append_events_fenced(
        &self,
        repo: &RepoKey,
        job: &JobId,
        records: &[EventRecord],
        fence: &Fence,
    ) -> Result<()> {
        crate::lock::with_fence(&self.layout.resume_lock(&fence.key), fence, || {
            self.append_events(repo, job, records)
        })
    }
}

#[cfg(test)]
mod tests;

//! The migration protocol: lock → plan → journal → stage → verify → publish
//! → retire → commit, with recovery from a crash at any step.
//!
//! # Why this order
//!
//! - Nothing outside `migrations/<repo>/` changes until verification has
//!   proved the staged copy equal to the legacy files. A crash before that is
//!   undone by deleting the staging area: the legacy tree was never touched.
//! - Publishing only ever *adds* files (rename with `RENAME_NOREPLACE`). A
//!   target that exists with other content is a conflict: both are kept.
//! - Legacy files leave the project only after publishing is durable, and
//!   only into the backup, which is verified when it is a copy.
//! - From `Publishing` on, recovery rolls *forward*: the verified staging
//!   area and the untouched or backed-up legacy files are enough to finish.
//!
//! Durability comes from one `syncfs` per phase instead of an `fsync` per
//! file: the journal change that starts the next phase is only written after
//! the `syncfs` that makes the previous phase durable.

use std::collections::BTreeMap;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use storage_core::{LockKey, LockWait, RepoKey};
use storage_fs::{FsStorage, Layout, fsx};

use crate::copy::{self, AtPath, open_regular, probe};
use crate::error::{Error, Result};
use crate::fault::{self, Fault};
use crate::manifest::{
    self, Category, Entry, Fate, Fingerprint, HistoryEntry, Journal, Left, Manifest, Output, Phase,
    Produce, RelPath, Source, Summary,
};
use crate::marker;
use crate::plan::rel_in_store;
use crate::progress::{Progress, Step};
use crate::split;

/// The files of one repository's migrations (`migrations/<repo>/`).
#[derive(Clone, Debug)]
pub(crate) struct Paths {
    pub dir: PathBuf,
}

impl Paths {
    pub fn new(layout: &Layout, repo: &RepoKey) -> Self {
        Self {
            dir: layout.migrations_dir(repo),
        }
    }
    pub fn journal(&self) -> PathBuf {
        self.dir.join("journal.json")
    }
    pub fn history(&self) -> PathBuf {
        self.dir.join("history.jsonl")
    }
    pub fn tx(&self, txid: &str) -> PathBuf {
        self.dir.join(txid)
    }
    pub fn manifest(&self, txid: &str) -> PathBuf {
        self.tx(txid).join("manifest.json")
    }
    pub fn entries(&self, txid: &str) -> PathBuf {
        self.tx(txid).join("entries.jsonl")
    }
    pub fn report(&self, txid: &str) -> PathBuf {
        self.tx(txid).join("report.json")
    }
    pub fn staging(&self, txid: &str) -> PathBuf {
        self.tx(txid).join("staging")
    }
    pub fn backup(&self, txid: &str) -> PathBuf {
        self.tx(txid).join("backup")
    }
    pub fn reserve(&self, txid: &str) -> PathBuf {
        self.tx(txid).join("undo-reserve")
    }
}

/// Bytes set aside in the store while a migration publishes (see `Tx::reserve`).
const UNDO_RESERVE: usize = 256 * 1024;

fn join(base: &Path, rel: &RelPath) -> Result<PathBuf> {
    Layout::under(base, rel.as_path()).ok_or_else(|| Error::Record {
        path: base.to_owned(),
        reason: format!("`{}` is not a plain relative path", rel.as_path().display()),
        next: "the manifest was edited by hand; restore it from the backup directory".into(),
    })
}

fn conflict_alt(layout: &Layout, area: &Path, txid: &str, dest: &RelPath) -> RelPath {
    let alt = area.join("conflicts").join(txid).join(dest.as_path());
    rel_in_store(layout, &alt)
}

/// Whose old layout a transaction imports: one project's `.prodigy/`, or
/// the store's own layout 0. The protocol is the same; what differs is
/// here: the lock, where kept-verbatim files and conflicts go, the records.
#[derive(Clone, Debug)]
pub(crate) enum Owner {
    /// A project's legacy `.prodigy/`, imported into repository `0`.
    Project(RepoKey),
    /// The store itself, written by Prodigy's own code (layout 0).
    Store,
}

impl Owner {
    /// Where files kept verbatim, conflicts and displaced files go.
    pub fn area(&self, layout: &Layout) -> PathBuf {
        match self {
            Owner::Project(repo) => layout.legacy_dir(repo),
            Owner::Store => layout.layout_0_area(),
        }
    }

    /// The records of its transactions.
    pub fn paths(&self, layout: &Layout) -> Paths {
        match self {
            Owner::Project(repo) => Paths::new(layout, repo),
            Owner::Store => Paths {
                dir: layout.layout_0_upgrade_dir(),
            },
        }
    }

    /// The lock its transactions take.
    fn lock_key(&self) -> Result<LockKey> {
        let name = match self {
            Owner::Project(repo) => format!("migrate-{repo}"),
            Owner::Store => "upgrade-layout-0".to_owned(),
        };
        Ok(LockKey::new(name).map_err(storage_core::Error::from)?)
    }
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    fsx::create_dir_all(fsx::parent(path))?;
    // Streamed: a manifest of a large tree is never built in memory.
    Ok(fsx::write_atomic_with(path, |f| {
        let mut w = std::io::BufWriter::with_capacity(64 * 1024, f);
        serde_json::to_writer_pretty(&mut w, value).map_err(std::io::Error::other)?;
        w.flush()
    })?)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path, next: &str) -> Result<Option<T>> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("open", path, e)),
    };
    let reader = std::io::BufReader::with_capacity(64 * 1024, file);
    serde_json::from_reader(reader)
        .map(Some)
        .map_err(|e| Error::Record {
            path: path.to_owned(),
            reason: e.to_string(),
            next: next.to_owned(),
        })
}

pub(crate) fn read_journal(paths: &Paths) -> Result<Option<Journal>> {
    read_json(
        &paths.journal(),
        "it is written atomically, so it was damaged by hand or by the disk; restore it, or write it again as \
         docs/migration.md (Troubleshooting) says; never move it away, which leaves the migration half done",
    )
}

pub(crate) fn read_manifest(paths: &Paths, txid: &str) -> Result<Manifest> {
    let path = paths.manifest(txid);
    let m: Manifest = read_json(&path, manifest::DAMAGED)?.ok_or_else(|| Error::Record {
        path: path.clone(),
        reason: "it does not exist".into(),
        next: "the migration's records were removed; nothing can be done automatically".into(),
    })?;
    if m.format_version != manifest::MANIFEST_VERSION {
        return Err(Error::Record {
            path,
            reason: format!(
                "it has format version {}; this prodigy-storage reads version {}",
                m.format_version,
                manifest::MANIFEST_VERSION
            ),
            next: "use the prodigy-storage that wrote it".into(),
        });
    }
    Ok(m)
}

fn set_journal(paths: &Paths, txid: &str, phase: Phase, force: bool) -> Result<()> {
    write_json(
        &paths.journal(),
        &Journal {
            txid: txid.to_owned(),
            phase,
            force,
        },
    )
}

pub(crate) fn read_history(paths: &Paths) -> Result<Vec<HistoryEntry>> {
    let Some(bytes) = fsx::read_optional(&paths.history())? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (n, line) in bytes.split(|&b| b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice(line) {
            Ok(e) => out.push(e),
            // A torn last line is a crashed append: the journal still holds the state.
            Err(_) if n + 1 == bytes.split(|&b| b == b'\n').count() => {}
            Err(e) => {
                return Err(Error::Record {
                    path: paths.history(),
                    reason: format!("line {}: {e}", n + 1),
                    next: "remove the damaged line by hand".into(),
                });
            }
        }
    }
    Ok(out)
}

pub(crate) fn append_history(paths: &Paths, entry: &HistoryEntry) -> Result<()> {
    if read_history(paths)?
        .iter()
        .any(|e| e.txid == entry.txid && e.event == entry.event)
    {
        return Ok(());
    }
    let mut line = serde_json::to_vec(entry).expect("serializable");
    line.push(b'\n');
    Ok(storage_fs::events::append_lines(&paths.history(), &line)?)
}

fn sync(path: &Path) -> Result<()> {
    Ok(fsx::syncfs(path)?)
}

/// Directories known to exist, so that creating the parents of thousands
/// of files costs one `mkdir` per directory, not per file.
#[derive(Default)]
struct Dirs(std::collections::HashSet<PathBuf>);

impl Dirs {
    /// Creates `dir` once; made durable by the phase's `syncfs`.
    fn ensure(&mut self, dir: &Path) -> Result<()> {
        if !self.0.contains(dir) {
            fsx::create_dir_all_unsynced(dir)?;
            self.0.insert(dir.to_owned());
        }
        Ok(())
    }
}

/// Typed documents larger than this are copied without the JSON check.
const MAX_VALIDATE: u64 = 64 * 1024 * 1024;

/// What staging one entry produced (applied to the entry afterwards).
struct Staged {
    src_hash: blake3::Hash,
    /// Hashes of the identical copies (`sources[1..]`).
    dup_hashes: Vec<blake3::Hash>,
    /// (output, size, hash) of each output written.
    done: Vec<(usize, u64, blake3::Hash)>,
    new_outputs: Vec<Output>,
    retarget: Option<(usize, RelPath)>,
    /// The output was copied verbatim instead of transformed.
    as_copy: bool,
    split_lines: Option<u64>,
    warnings: Vec<String>,
}

impl Staged {
    fn apply(self, e: &mut Entry) {
        e.sources[0].hash = Some(self.src_hash.to_hex().to_string());
        for (s, h) in e.sources[1..].iter_mut().zip(self.dup_hashes) {
            s.hash = Some(h.to_hex().to_string());
        }
        if self.as_copy
            && let Some((o, ..)) = self.done.first()
        {
            e.outputs[*o].produce = Produce::Copy;
        }
        for (o, size, hash) in self.done {
            e.outputs[o].size = Some(size);
            e.outputs[o].hash = Some(hash.to_hex().to_string());
        }
        if let Some((o, dest)) = self.retarget {
            e.outputs[o].dest = dest;
            e.outputs[o].category = Category::LegacyPreserved;
        }
        if let Some(lines) = self.split_lines {
            e.sources[0].split_lines = Some(lines);
        }
        e.outputs.extend(self.new_outputs);
    }
}

/// Runs `f` over `items` on up to four threads (each with its own `init()`
/// state), returning the results in item order, or the first error.
fn par_map<I: Sync, S, T: Send>(
    items: &[I],
    init: impl Fn() -> S + Sync,
    f: impl Fn(&mut S, &I) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    par_map_beside(0, items, init, f)
}

/// [`par_map`], leaving `busy` cores to threads that run beside it.
fn par_map_beside<I: Sync, S, T: Send>(
    busy: usize,
    items: &[I],
    init: impl Fn() -> S + Sync,
    f: impl Fn(&mut S, &I) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZero::get)
        .clamp(1, 4)
        .saturating_sub(busy)
        .max(1)
        .min(items.len().max(1));
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let mut parts: Vec<Vec<(usize, Result<T>)>> = Vec::new();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut state = init();
                    let mut out = Vec::new();
                    while !failed.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break };
                        let r = f(&mut state, item);
                        if r.is_err() {
                            failed.store(true, Ordering::Relaxed);
                        }
                        out.push((i, r));
                    }
                    out
                })
            })
            .collect();
        for h in handles {
            parts.push(
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            );
        }
    });
    let mut all: Vec<(usize, Result<T>)> = parts.into_iter().flatten().collect();
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, r)| r).collect()
}

/// What retiring one legacy file did.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Retired {
    /// In the backup as verified (renamed now, or by an earlier run).
    Moved,
    /// Copied into the backup; the source is removed after the `syncfs` if
    /// it is still unchanged then.
    CopiedKeepSource,
    /// Not in the backup as verified: see [`Left`].
    Left(Left),
}

/// A legacy file now, compared with its verified fingerprint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Now {
    Missing,
    Unchanged,
    Changed,
}

/// Compares `path` with the fingerprint taken when it was planned: any
/// write changes the change time, which no user call can set back.
fn now_of(path: &Path, s: &Source) -> Result<Now> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_file() && Fingerprint::of(&meta) == s.fingerprint => Ok(Now::Unchanged),
        Ok(_) => Ok(Now::Changed),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Now::Missing),
        Err(e) => Err(Error::io("stat", path, e)),
    }
}

/// Whether a file renamed into the backup is still the version verified:
/// same inode, size and modification time (a rename changes the change time).
fn moved_as_verified(meta: &std::fs::Metadata, s: &Source) -> bool {
    std::os::unix::fs::MetadataExt::ino(meta) == s.fingerprint.ino
        && meta.len() == s.size
        && copy::mtime_of(meta) == s.mtime
}

fn crosses_devices(e: &storage_core::Error) -> bool {
    matches!(e, storage_core::Error::Io { source, .. } if source.kind() == std::io::ErrorKind::CrossesDevices)
}

fn is_kind(e: &storage_core::Error, kind: std::io::ErrorKind) -> bool {
    matches!(e, storage_core::Error::Io { source, .. } if source.kind() == kind)
}

/// What recovery did.
pub(crate) struct Recovered {
    /// In words, for reports.
    pub what: String,
    /// The migration it finished (rolled forward), if any.
    pub finished: Option<String>,
}

/// Everything one protocol run needs.
pub(crate) struct Tx<'a> {
    pub store: &'a FsStorage,
    pub owner: Owner,
    pub paths: Paths,
    pub progress: &'a dyn Progress,
}

impl Tx<'_> {
    fn layout(&self) -> &Layout {
        self.store.layout()
    }

    /// The repository of a project import (only those split event logs).
    fn repo(&self) -> &RepoKey {
        match &self.owner {
            Owner::Project(repo) => repo,
            Owner::Store => unreachable!("a layout-0 upgrade splits no log"),
        }
    }

    /// Takes the repository's migration lock.
    pub fn lock(&self, wait: Duration) -> Result<storage_fs::FileLock> {
        let name = self.owner.lock_key()?;
        let wait = if wait.is_zero() {
            LockWait::NoWait
        } else {
            LockWait::Timeout(wait)
        };
        Ok(self.store.lock_internal(&name, wait)?)
    }

    // ---- staging -------------------------------------------------------

    /// Copies every source into staging, filling in sizes and hashes, on
    /// all cores. The global event logs, the big files, are split on a
    /// thread of their own from the start (their entries go at the end of
    /// the rewritten file); the other files stream through a chunk of
    /// entries at a time, the biggest of each chunk first. `splits` are the
    /// entries of the logs to split, as planned. Returns the new totals.
    pub fn stage(
        &self,
        m: &mut Manifest,
        planned: &Summary,
        splits: Vec<Entry>,
    ) -> Result<Summary> {
        let staging = self.paths.staging(&m.txid);
        fsx::create_dir_all(&staging)?;
        self.progress
            .start(Step::Copy, planned.sources, planned.source_bytes);
        let legacy = m.legacy_dir.0.clone();
        let txid = m.txid.clone();
        let entries = self.paths.entries(&txid);
        let first = std::sync::Once::new();
        let stage_entry = |dirs: &mut Dirs, e: &Entry| -> Result<Staged> {
            let r = self.stage_one(&legacy, &txid, &staging, dirs, e)?;
            tracing::debug!(file = %e.source().rel.as_path().display(), "staged");
            self.progress.advance(
                e.sources.len() as u64,
                e.sources.iter().map(|s| s.size).sum(),
            );
            first.call_once(|| fault::point("mid-staging"));
            Ok(r)
        };
        let mut staged = Summary::default();
        let mut reader = manifest::EntryReader::open(&entries)?;
        let splitting = std::sync::atomic::AtomicBool::new(!splits.is_empty());
        std::thread::scope(|scope| {
            let logs = scope.spawn(|| -> Result<Vec<(Entry, Staged)>> {
                let mut dirs = Dirs::default();
                let r = splits
                    .into_iter()
                    .map(|e| stage_entry(&mut dirs, &e).map(|r| (e, r)))
                    .collect();
                splitting.store(false, std::sync::atomic::Ordering::Relaxed);
                r
            });
            manifest::write_entries(&entries, |push| {
                let mut done = |m: &mut Manifest, e: &mut Entry, r: Staged| -> Result<()> {
                    for w in &r.warnings {
                        m.warn(w.clone());
                    }
                    r.apply(e);
                    staged.add(e);
                    push(e)
                };
                loop {
                    let mut chunk = reader.next_chunk(manifest::CHUNK)?;
                    if chunk.is_empty() {
                        break;
                    }
                    chunk.retain(|e| !e.source().split);
                    let mut order: Vec<usize> = (0..chunk.len()).collect();
                    order.sort_by_key(|&i| std::cmp::Reverse(chunk[i].source().size));
                    let shared: &[Entry] = &chunk;
                    // One core stays with the logs while they are being split.
                    let busy = usize::from(splitting.load(std::sync::atomic::Ordering::Relaxed));
                    let results = par_map_beside(busy, &order, Dirs::default, |dirs, &i| {
                        stage_entry(dirs, &shared[i])
                    })?;
                    // Applied in entry order, so warnings do not depend on scheduling.
                    let mut results: Vec<(usize, Staged)> =
                        order.into_iter().zip(results).collect();
                    results.sort_by_key(|(i, _)| *i);
                    for (i, r) in results {
                        done(m, &mut chunk[i], r)?;
                    }
                }
                let logs = logs
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
                for (mut e, r) in logs {
                    done(m, &mut e, r)?;
                }
                Ok(())
            })
        })?;
        self.progress.finish(Step::Copy);
        Ok(staged)
    }

    fn stage_one(
        &self,
        legacy: &Path,
        txid: &str,
        staging: &Path,
        dirs: &mut Dirs,
        e: &Entry,
    ) -> Result<Staged> {
        let source = e.source();
        let path = join(legacy, &source.rel)?;
        let mut r = Staged {
            src_hash: blake3::hash(b""),
            dup_hashes: Vec::new(),
            done: Vec::new(),
            new_outputs: Vec::new(),
            retarget: None,
            as_copy: false,
            split_lines: None,
            warnings: Vec::new(),
        };
        if source.split {
            self.stage_split(txid, e, &path, staging, dirs, &mut r)?;
            return Ok(r);
        }
        let oi = 0;
        let out = e.outputs.first().ok_or_else(|| Error::Record {
            path: self.paths.entries(txid),
            reason: format!("`{}` has no output", source.rel.as_path().display()),
            next: "the migration's records are damaged; run migrate again".into(),
        })?;
        let (mut file, meta) = open_regular(&path)?;
        match &out.produce {
            // Kept verbatim, or an event log (JSONL, never one JSON document).
            Produce::Copy
                if matches!(out.category, Category::LegacyPreserved | Category::Events) =>
            {
                let dest = join(staging, &out.dest)?;
                dirs.ensure(fsx::parent(&dest))?;
                let (size, hash) = copy::copy_new(&mut file, &path, &dest, source.mtime)?;
                r.src_hash = hash;
                r.done.push((oi, size, hash));
            }
            produce if meta.len() > MAX_VALIDATE => {
                // Too large to hold in memory: check the JSON by streaming it,
                // then stream the bytes; never rewritten at this size.
                let valid = serde_json::from_reader::<_, serde::de::IgnoredAny>(
                    std::io::BufReader::with_capacity(256 * 1024, &mut file),
                )
                .is_ok();
                std::io::Seek::rewind(&mut file).map_err(|e| Error::io("read", &path, e))?;
                let dest_rel = self.typed_dest(&mut r, (oi, out), source.rel.as_path(), valid);
                if valid && *produce == Produce::RewriteMetadataPath {
                    r.warnings.push(format!(
                        "`{}` is too large to rewrite its `path`; copied verbatim",
                        source.rel.as_path().display()
                    ));
                }
                r.as_copy = *produce != Produce::Copy;
                let dest = join(staging, &dest_rel)?;
                dirs.ensure(fsx::parent(&dest))?;
                let (size, hash) = copy::copy_new(&mut file, &path, &dest, source.mtime)?;
                r.src_hash = hash;
                r.done.push((oi, size, hash));
            }
            produce => {
                // Typed documents are read whole: a torn or corrupt one must not
                // land where Prodigy loads it, so it goes to the legacy area.
                let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
                file.read_to_end(&mut bytes)
                    .map_err(|e| Error::io("read", &path, e))?;
                r.src_hash = blake3::hash(&bytes);
                let valid = serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_ok();
                let dest_rel = self.typed_dest(&mut r, (oi, out), source.rel.as_path(), valid);
                let mut content = std::borrow::Cow::Borrowed(&bytes[..]);
                if valid && *produce == Produce::RewriteMetadataPath {
                    let new_dir = fsx::parent(&join(self.layout().root(), &out.dest)?).to_owned();
                    let (rewritten, warning) = rewrite_metadata_path(&bytes, &new_dir);
                    if let Some(w) = warning {
                        r.warnings.push(format!(
                            "`{}`: {w}; copied verbatim",
                            source.rel.as_path().display()
                        ));
                    }
                    content = std::borrow::Cow::Owned(rewritten);
                }
                let dest = join(staging, &dest_rel)?;
                dirs.ensure(fsx::parent(&dest))?;
                let hash = copy::write_new(&dest, &content, source.mtime)?;
                r.done.push((oi, content.len() as u64, hash));
            }
        }
        // Identical duplicates (sessions) are hashed so verification covers them.
        for d in &e.sources[1..] {
            let (_, h) = copy::hash_file(&join(legacy, &d.rel)?)?;
            r.dup_hashes.push(h);
        }
        Ok(r)
    }

    /// Where a typed document is staged: its typed place when it is whole
    /// JSON; otherwise the legacy area (a torn or corrupt document must not
    /// land where Prodigy loads it), with a warning and the output re-targeted.
    fn typed_dest(
        &self,
        r: &mut Staged,
        (oi, out): (usize, &Output),
        rel: &Path,
        valid: bool,
    ) -> RelPath {
        if valid {
            return out.dest.clone();
        }
        let area = self.owner.area(self.layout());
        let dest = rel_in_store(
            self.layout(),
            &Layout::under(&area, rel).expect("walked paths are relative names"),
        );
        r.warnings.push(format!(
            "`{}` is not valid JSON (a torn or corrupt write); kept verbatim in the legacy area",
            rel.display()
        ));
        r.retarget = Some((oi, dest.clone()));
        dest
    }

    /// Routes every line of a global event log to its job's staged log.
    fn stage_split(
        &self,
        txid: &str,
        e: &Entry,
        path: &Path,
        staging: &Path,
        dirs: &mut Dirs,
        r: &mut Staged,
    ) -> Result<()> {
        let source = e.source();
        let dest_of = |route: &split::Route| -> RelPath {
            crate::plan::split_dest(
                self.layout(),
                self.repo(),
                txid,
                e.index,
                source.rel.as_path(),
                route.as_ref(),
            )
        };
        let mut writers: BTreeMap<split::Route, (PathBuf, BufWriter<std::fs::File>)> =
            BTreeMap::new();
        let mut whole = blake3::Hasher::new();
        let (file, _) = open_regular(path)?;
        let totals = split::for_each_line(file, path, |route, line| {
            whole.update(line);
            if !writers.contains_key(route) {
                let dest = join(staging, &dest_of(route))?;
                dirs.ensure(fsx::parent(&dest))?;
                // A log may fan out to hundreds of jobs at once: 8 KiB
                // buffers for the first 64, 1 KiB for the rest, so memory
                // hardly grows with the number of jobs.
                let capacity = if writers.len() < 64 { 8 * 1024 } else { 1024 };
                let w = BufWriter::with_capacity(capacity, fsx::create_new(&dest)?);
                writers.insert(route.clone(), (dest, w));
            }
            let (dest, w) = writers.get_mut(route).expect("inserted above");
            w.write_all(line).map_err(|e| Error::io("write", &*dest, e))
        })?;
        for (_, (dest, w)) in writers {
            let f = w
                .into_inner()
                .map_err(|e| Error::io("write", &dest, e.into_error()))?;
            copy::set_mtime(&f, &dest, source.mtime)?;
        }
        r.src_hash = whole.finalize();
        r.split_lines = Some(totals.values().map(|t| t.lines).sum());
        for (route, t) in totals {
            if route.is_none() {
                r.warnings.push(crate::plan::unrouted_warning(
                    t.lines,
                    source.rel.as_path(),
                    &dest_of(&route),
                ));
            }
            r.new_outputs.push(Output {
                dest: dest_of(&route),
                produce: Produce::SplitEvents {
                    job: route.map(|j| j.to_string()),
                },
                category: Category::Events,
                size: Some(t.bytes),
                hash: t.hash.map(|h| h.to_hex().to_string()),
                lines: Some(t.lines),
                fate: Fate::Pending,
            });
        }
        Ok(())
    }

    // ---- verification --------------------------------------------------

    /// Proves the staged files equal to the legacy files (see the module docs).
    pub fn verify_staged(&self, m: &Manifest, staged: &Summary) -> Result<()> {
        let legacy = &m.legacy_dir.0;
        let staging = self.paths.staging(&m.txid);
        let total: u64 = staged.categories.values().map(|(_, bytes)| bytes).sum();
        self.progress
            .start(Step::Verify, staged.sources + staged.outputs, total);
        let mut corrupt = fault::armed(&Fault::CorruptStaged);
        manifest::for_each_chunk(&self.paths.entries(&m.txid), |chunk| {
            if corrupt && let Some(o) = chunk.iter().find_map(|e| e.outputs.first()) {
                corrupt_one_byte(&join(&staging, &o.dest)?)?;
                corrupt = false;
            }
            for s in chunk.iter().flat_map(|e| &e.sources) {
                // The bytes staged were hashed as they were read; an unchanged
                // fingerprint proves no one wrote the file meanwhile.
                let path = join(legacy, &s.rel)?;
                let now = std::fs::symlink_metadata(&path)
                    .map(|meta| Fingerprint::of(&meta))
                    .map_err(|e| Error::io("stat", &path, e))?;
                if now != s.fingerprint || s.hash.is_none() {
                    return Err(Error::Verify {
                        path,
                        what: format!(
                            "the legacy file changed while it was being migrated (size {} then {}); \
                             stop the Prodigy process that writes it and run again",
                            s.size, now.size
                        ),
                    });
                }
                self.progress.advance(1, 0);
            }
            // Output by output, so a split log's big per-job files spread over the cores.
            let outputs: Vec<(&Entry, &Output)> = chunk
                .iter()
                .flat_map(|e| e.outputs.iter().map(move |o| (e, o)))
                .collect();
            par_map(
                &outputs,
                || (),
                |(), (e, o)| self.verify_output(legacy, &staging, e.source(), o),
            )?;
            for e in chunk {
                verify_split(legacy, e)?;
            }
            Ok(())
        })?;
        self.progress.finish(Step::Verify);
        Ok(())
    }

    /// Re-hashes a staged output, and re-runs the metadata rewrite over its source.
    fn verify_output(
        &self,
        legacy: &Path,
        staging: &Path,
        source: &Source,
        o: &Output,
    ) -> Result<()> {
        let path = join(staging, &o.dest)?;
        let (size, hash) = copy::hash_file(&path)?;
        if Some(hash.to_hex().to_string()) != o.hash || Some(size) != o.size {
            return Err(Error::Verify {
                path,
                what: "the staged copy does not match what was read from the legacy file".into(),
            });
        }
        match &o.produce {
            Produce::Copy if o.hash != source.hash => {
                return Err(Error::Verify {
                    path,
                    what: "the staged copy differs from its legacy file".into(),
                });
            }
            Produce::RewriteMetadataPath => {
                let src = join(legacy, &source.rel)?;
                let bytes = std::fs::read(&src).map_err(|e| Error::io("read", &src, e))?;
                let new_dir = fsx::parent(&join(self.layout().root(), &o.dest)?).to_owned();
                let (expected, _) = rewrite_metadata_path(&bytes, &new_dir);
                if Some(blake3::hash(&expected).to_hex().to_string()) != o.hash {
                    return Err(Error::Verify {
                        path,
                        what: "the rewritten metadata does not match its legacy file".into(),
                    });
                }
            }
            Produce::Copy | Produce::SplitEvents { .. } => {}
        }
        self.progress.advance(1, size);
        Ok(())
    }

    // ---- publishing ----------------------------------------------------

    /// Moves every staged output into the store without overwriting anything.
    ///
    /// A staged directory whose target does not exist yet is moved with one
    /// `RENAME_NOREPLACE` (a new repository's `state/<repo>/` is one rename);
    /// elsewhere files are published one by one. Either way a file's fate is
    /// read back from the disk, so a crash half-way is finished the same way.
    pub fn publish(&self, m: &Manifest, staged: &Summary) -> Result<Summary> {
        let staging = self.paths.staging(&m.txid);
        let root = self.layout().root().to_owned();
        self.progress.start(Step::Publish, staged.outputs, 0);
        let mut moved = Vec::new();
        publish_dirs(&staging, &root, Path::new(""), &mut moved)?;
        if !moved.is_empty() {
            fault::point("mid-publish");
        }
        let mut dirs = Dirs::default();
        let mut first = moved.is_empty();
        let mut published = Summary::default();
        manifest::rewrite_entries(&self.paths.entries(&m.txid), |chunk| {
            for e in chunk.iter_mut() {
                for o in &mut e.outputs {
                    o.fate = self.publish_one(m, &staging, &root, &moved, &mut dirs, o)?;
                    self.progress.advance(1, 0);
                    if first {
                        first = false;
                        fault::point("mid-publish");
                    }
                }
                published.add(e);
            }
            Ok(())
        })?;
        sync(&root)?;
        self.progress.finish(Step::Publish);
        Ok(published)
    }

    /// Publishes one output (or finds where an earlier run published it).
    fn publish_one(
        &self,
        m: &Manifest,
        staging: &Path,
        root: &Path,
        moved: &[PathBuf],
        dirs: &mut Dirs,
        o: &Output,
    ) -> Result<Fate> {
        let staged = join(staging, &o.dest)?;
        let target = join(root, &o.dest)?;
        let alt_rel = conflict_alt(
            self.layout(),
            &self.owner.area(self.layout()),
            &m.txid,
            &o.dest,
        );
        let alt = join(root, &alt_rel)?;
        let same =
            |at: AtPath| matches!(at, AtPath::File(h) if Some(h.to_hex().to_string()) == o.hash);
        Ok(if moved.iter().any(|d| o.dest.as_path().starts_with(d)) {
            // Moved with its whole directory just now.
            Fate::Published
        } else if std::fs::symlink_metadata(&staged).is_ok() {
            // A rename, or where a part of the store is another mount, a
            // verified durable copy (see `move_file`).
            match probe(&target)? {
                AtPath::Missing => {
                    dirs.ensure(fsx::parent(&target))?;
                    move_file(&staged, &target, o.hash.as_deref())?;
                    Fate::Published
                }
                at if same(at) => Fate::AlreadyPresent,
                _ => {
                    if !same(probe(&alt)?) {
                        fsx::create_dir_all_unsynced(fsx::parent(&alt))?;
                        move_file(&staged, &alt, o.hash.as_deref())?;
                    }
                    Fate::Conflict { alt: alt_rel }
                }
            }
        } else if same(probe(&target)?) {
            Fate::Published
        } else if same(probe(&alt)?) {
            Fate::Conflict { alt: alt_rel }
        } else {
            return Err(Error::Record {
                path: target,
                reason: "its staged copy is gone but it was not published".into(),
                next: "the legacy files are untouched; remove the journal and run migrate again"
                    .into(),
            });
        })
    }

    // ---- retiring ------------------------------------------------------

    /// Moves the legacy storage files into the backup.
    ///
    /// Each move is decided by trying: a rename (whole storage directories
    /// first, then file by file), and where the rename says "another file
    /// system" (a bind mount, a docker volume, another disk) a copy that is
    /// hashed against the verified hash, made durable with one `syncfs` per
    /// chunk, and only then is the source removed. A source that changed
    /// after verification (an older Prodigy still writing) is never moved
    /// or removed: it stays in the project, is recorded ([`Left`]) and
    /// reported, and the store keeps the verified version.
    pub fn retire(&self, m: &mut Manifest, published: &Summary) -> Result<()> {
        let legacy = m.legacy_dir.0.clone();
        let txid = m.txid.clone();
        let backup = self.paths.backup(&txid);
        let entries = self.paths.entries(&txid);
        fsx::create_dir_all(&backup)?;
        self.progress
            .start(Step::Retire, published.sources, published.source_bytes);
        let first = std::sync::Once::new();
        let moved = self.retire_dirs(m, &entries, &legacy, &backup)?;
        let modes = dir_modes(m);
        let mut copied_any = false;
        let mut warnings = Vec::new();
        manifest::rewrite_entries(&entries, |chunk| {
            let sources: Vec<&Source> = chunk.iter().flat_map(|e| &e.sources).collect();
            let mut outcomes = par_map(&sources, Dirs::default, |dirs, s| {
                let r = if moved.iter().any(|d| s.rel.as_path().starts_with(d)) {
                    self.check_moved(&txid, &legacy, &backup, &modes, s)?
                } else {
                    self.retire_one(&txid, &legacy, &backup, &modes, dirs, s)?
                };
                tracing::debug!(file = %s.rel.as_path().display(), outcome = ?r, "moved into the backup");
                self.progress.advance(1, s.size);
                first.call_once(|| fault::point("mid-retire"));
                Ok(r)
            })?;
            // Copies are made durable with one `syncfs`; a source is removed
            // only after it, and only if it is still the version verified.
            if outcomes.contains(&Retired::CopiedKeepSource) {
                copied_any = true;
                sync(&backup)?;
                for (s, outcome) in sources.iter().zip(outcomes.iter_mut()) {
                    if *outcome != Retired::CopiedKeepSource {
                        continue;
                    }
                    let src = join(&legacy, &s.rel)?;
                    *outcome = match now_of(&src, s)? {
                        Now::Unchanged => {
                            fsx::remove_file_durable(&src)?;
                            Retired::Moved
                        }
                        Now::Missing => Retired::Moved,
                        Now::Changed => Retired::Left(Left::InProject),
                    };
                }
            }
            let outcomes: Vec<Option<Left>> = outcomes
                .into_iter()
                .map(|o| match o {
                    Retired::Left(l) => Some(l),
                    Retired::Moved | Retired::CopiedKeepSource => None,
                })
                .collect();
            let mut outcomes = outcomes.into_iter();
            for s in chunk.iter_mut().flat_map(|e| &mut e.sources) {
                s.left = outcomes.next().expect("one outcome per source");
                if let Some(left) = &s.left {
                    warnings.push(left_warning(&s.rel, left));
                }
            }
            Ok(())
        })?;
        for w in warnings {
            m.warn(w);
        }
        // Remove the storage directories that this emptied, deepest first.
        let mut dirs: Vec<&RelPath> = m.dirs.iter().map(|(d, _)| d).collect();
        dirs.sort_by_key(|d| std::cmp::Reverse(d.as_path().components().count()));
        for d in dirs {
            let parts: Vec<&str> = d.as_path().iter().filter_map(|c| c.to_str()).collect();
            // A layout-0 upgrade plans only the directories its sources leave.
            if matches!(self.owner, Owner::Store) || crate::legacy::is_storage_dir(&parts) {
                let _ = std::fs::remove_dir(join(&legacy, d)?);
            }
        }
        sync(self.layout().root())?;
        if copied_any {
            sync(&legacy)?;
        }
        self.progress.finish(Step::Retire);
        Ok(())
    }

    /// Moves (or, where a rename cannot, copies) one legacy file into the backup.
    fn retire_one(
        &self,
        txid: &str,
        legacy: &Path,
        backup: &Path,
        modes: &BTreeMap<PathBuf, u32>,
        dirs: &mut Dirs,
        s: &Source,
    ) -> Result<Retired> {
        let src = join(legacy, &s.rel)?;
        let bak = join(backup, &s.rel)?;
        dirs.ensure(fsx::parent(&bak))?;
        let bak_meta = std::fs::symlink_metadata(&bak).ok();
        match (now_of(&src, s)?, bak_meta) {
            (Now::Changed, _) => Ok(Retired::Left(Left::InProject)),
            (Now::Missing, Some(meta)) => {
                // An earlier run moved it. A renamed file keeps its inode; a
                // copy has another one, and was hashed before it was renamed in.
                if std::os::unix::fs::MetadataExt::ino(&meta) == s.fingerprint.ino
                    && !moved_as_verified(&meta, s)
                {
                    return self.put_back(txid, legacy, &bak, modes, s);
                }
                Ok(Retired::Moved)
            }
            (Now::Missing, None) => Ok(Retired::Left(Left::Gone)),
            (Now::Unchanged, Some(_)) => {
                // An earlier run's copy whose `syncfs` may have failed: a
                // retried sync proves nothing (the kernel may have dropped the
                // pages and cleared the error), so the copy is made again.
                fsx::remove_file_durable(&bak)?;
                self.copy_to_backup(txid, &src, &bak, s)
            }
            (Now::Unchanged, None) => match fsx::rename_noreplace(&src, &bak) {
                Ok(()) => {
                    let meta =
                        std::fs::symlink_metadata(&bak).map_err(|e| Error::io("stat", &bak, e))?;
                    if moved_as_verified(&meta, s) {
                        Ok(Retired::Moved)
                    } else {
                        // Written between the check and the rename.
                        self.put_back(txid, legacy, &bak, modes, s)
                    }
                }
                Err(e) if crosses_devices(&e) => self.copy_to_backup(txid, &src, &bak, s),
                Err(e) if is_kind(&e, std::io::ErrorKind::NotFound) => {
                    Ok(Retired::Left(Left::Gone))
                }
                Err(e) => Err(e.into()),
            },
        }
    }

    /// A file moved into the backup with its whole directory: still the
    /// version verified, or put back into the project.
    fn check_moved(
        &self,
        txid: &str,
        legacy: &Path,
        backup: &Path,
        modes: &BTreeMap<PathBuf, u32>,
        s: &Source,
    ) -> Result<Retired> {
        let bak = join(backup, &s.rel)?;
        match std::fs::symlink_metadata(&bak) {
            Ok(meta) if moved_as_verified(&meta, s) => Ok(Retired::Moved),
            Ok(_) => self.put_back(txid, legacy, &bak, modes, s),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Retired::Left(Left::Gone)),
            Err(e) => Err(Error::io("stat", &bak, e)),
        }
    }

    /// Puts a file that changed after verification back into the project
    /// (it is the newest version of the user's data); where the project
    /// has a new file of that name, into the store's legacy area instead.
    fn put_back(
        &self,
        txid: &str,
        legacy: &Path,
        bak: &Path,
        modes: &BTreeMap<PathBuf, u32>,
        s: &Source,
    ) -> Result<Retired> {
        let src = join(legacy, &s.rel)?;
        make_dirs(
            legacy,
            s.rel.as_path().parent(),
            modes,
            project_owner(legacy),
        )?;
        match move_file(bak, &src, None) {
            Ok(()) => Ok(Retired::Left(Left::InProject)),
            Err(e) if is_kind(&e, std::io::ErrorKind::AlreadyExists) => {
                let at = self.displaced(txid, s.rel.as_path());
                let abs = join(self.layout().root(), &at)?;
                fsx::create_dir_all(fsx::parent(&abs))?;
                move_file(bak, &abs, None)?;
                Ok(Retired::Left(Left::Displaced { at }))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Where a changed legacy file that cannot go back into the project is kept.
    fn displaced(&self, txid: &str, rel: &Path) -> RelPath {
        let abs = self
            .owner
            .area(self.layout())
            .join("changed-during-migration")
            .join(txid)
            .join(rel);
        rel_in_store(self.layout(), &abs)
    }

    /// Copies a legacy file into the backup (temp file in the transaction's
    /// directory, where sweeps look, then hashed and renamed in without
    /// replacing); the caller makes it durable and removes the source. A
    /// source whose bytes are no longer the verified ones stays where it is.
    fn copy_to_backup(&self, txid: &str, src: &Path, bak: &Path, s: &Source) -> Result<Retired> {
        // Locked until renamed: a concurrent sweep leaves it alone.
        let (tmp, mut out) = fsx::create_temp(&self.paths.tx(txid), "backup")?;
        let (mut f, _) = open_regular(src)?;
        let (_, hash) = copy::copy_into(&mut f, src, &mut out, &tmp, s.mtime)?;
        if Some(hash.to_hex().to_string()) != s.hash {
            fsx::remove_file_durable(&tmp)?;
            return Ok(Retired::Left(Left::InProject));
        }
        copy::set_mode_of(&tmp, s.mode)?;
        fsx::rename_noreplace(&tmp, bak)?;
        Ok(Retired::CopiedKeepSource)
    }

    /// Moves each storage directory that holds exactly its planned storage
    /// files into the backup with one rename. Returns the directories moved,
    /// relative to the legacy directory.
    ///
    /// "Exactly" is checked without holding the names: the count of files
    /// and an order-independent sum of their names' hashes must match the
    /// plan's, before the rename and again after it, inside the backup: a
    /// file written in between is put back into the project (its content is
    /// checked file by file by [`Tx::check_moved`]).
    fn retire_dirs(
        &self,
        m: &mut Manifest,
        entries: &Path,
        legacy: &Path,
        backup: &Path,
    ) -> Result<Vec<PathBuf>> {
        if m.pure_dirs.is_empty() {
            return Ok(Vec::new());
        }
        let mut planned = vec![(0u64, 0u128); m.pure_dirs.len()];
        manifest::for_each_chunk(entries, |chunk| {
            for s in chunk.iter().flat_map(|e| &e.sources) {
                if let Some(k) = m
                    .pure_dirs
                    .iter()
                    .position(|d| s.rel.as_path().starts_with(d.as_path()))
                {
                    planned[k].0 += 1;
                    planned[k].1 = planned[k].1.wrapping_add(name_digest(s.rel.as_path()));
                }
            }
            Ok(())
        })?;
        let mut moved = Vec::new();
        let pure: Vec<RelPath> = m.pure_dirs.clone();
        for (d, want) in pure.iter().zip(planned) {
            let src = join(legacy, d)?;
            let bak = join(backup, d)?;
            if std::fs::symlink_metadata(&bak).is_ok() {
                continue; // a re-run: the per-file pass finishes what is left
            }
            if files_digest(legacy, d.as_path()) != Some(want) {
                continue;
            }
            fsx::create_dir_all_unsynced(fsx::parent(&bak))?;
            if fsx::rename_noreplace(&src, &bak).is_err() {
                continue; // another file system, or in use: file by file
            }
            moved.push(d.as_path().to_owned());
            if files_digest(backup, d.as_path()) != Some(want) {
                self.put_back_extras(m, entries, legacy, backup, d)?;
            }
        }
        Ok(moved)
    }

    /// Puts back into the project every entry of the moved directory `d`
    /// that the plan does not name (written while it was being moved).
    fn put_back_extras(
        &self,
        m: &mut Manifest,
        entries: &Path,
        legacy: &Path,
        backup: &Path,
        d: &RelPath,
    ) -> Result<()> {
        let mut names = std::collections::HashSet::new();
        manifest::for_each_chunk(entries, |chunk| {
            for s in chunk.iter().flat_map(|e| &e.sources) {
                if s.rel.as_path().starts_with(d.as_path()) {
                    names.insert(s.rel.0.clone());
                }
            }
            Ok(())
        })?;
        let modes = dir_modes(m);
        let owner = project_owner(legacy);
        let mut stack = vec![d.as_path().to_owned()];
        while let Some(rel) = stack.pop() {
            for e in fsx::read_dir_sorted(&backup.join(&rel))? {
                let r = rel.join(&e.name);
                if e.file_type.is_dir() {
                    stack.push(r);
                    continue;
                }
                if names.contains(&r) {
                    continue;
                }
                make_dirs(legacy, r.parent(), &modes, owner)?;
                let to = legacy.join(&r);
                let warning = match move_file(&e.path, &to, None) {
                    Ok(()) => format!(
                        "`{}` was written while its directory was being moved into the backup; put back into the project",
                        r.display()
                    ),
                    Err(err) if is_kind(&err, std::io::ErrorKind::AlreadyExists) => {
                        let at = self.displaced(&m.txid, &r);
                        let abs = join(self.layout().root(), &at)?;
                        fsx::create_dir_all(fsx::parent(&abs))?;
                        move_file(&e.path, &abs, None)?;
                        format!(
                            "`{}` was written while its directory was being moved into the backup; kept at `{}`",
                            r.display(),
                            at.as_path().display()
                        )
                    }
                    Err(err) => return Err(err.into()),
                };
                m.warn(warning);
            }
        }
        Ok(())
    }

    // ---- commit --------------------------------------------------------

    pub fn commit(
        &self,
        m: &Manifest,
        summary: &Summary,
        report: &crate::MigrationReport,
    ) -> Result<()> {
        set_journal(&self.paths, &m.txid, Phase::Committed, false)?;
        fault::point("after-commit-journal");
        self.finish_commit(m, summary, Some(report))
    }

    fn finish_commit(
        &self,
        m: &Manifest,
        summary: &Summary,
        report: Option<&crate::MigrationReport>,
    ) -> Result<()> {
        if let Some(r) = report {
            write_json(&self.paths.report(&m.txid), r)?;
        }
        append_history(
            &self.paths,
            &HistoryEntry {
                txid: m.txid.clone(),
                event: "migrated".into(),
                at: storage_fs::time::now(),
                files: summary.outputs,
                bytes: summary.source_bytes,
            },
        )?;
        remove_dir_all_if_exists(&self.paths.staging(&m.txid))?;
        self.release_reserve(&m.txid)?;
        match self.owner {
            Owner::Project(_) => marker::remove(self.store, &m.legacy_dir.0)?,
            // The upgrade's commit: from now on the store is the current layout.
            Owner::Store => self.store.stamp_layout_version()?,
        }
        fsx::remove_file_durable(&self.paths.journal())?;
        Ok(())
    }

    // ---- recovery ------------------------------------------------------

    /// Finishes or undoes the transaction a crash left behind; returns what
    /// it did.
    pub fn recover(&self) -> Result<Option<String>> {
        Ok(self.recover_tx()?.map(|r| r.what))
    }

    /// [`Tx::recover`], also naming the migration it finished, if it did.
    pub fn recover_tx(&self) -> Result<Option<Recovered>> {
        // Under the migration lock no live writer has temp files here: any
        // are a crashed writer's (e.g. a journal replaced half-way).
        // Only `migrations/<repo>/` and `<txid>/` hold them: `staging/` and
        // `backup/` hold legacy files under their own names, which may look
        // like temp files.
        let temps = self.sweep_temps()?;
        let Some(journal) = read_journal(&self.paths)? else {
            return Ok(self.sweep_debris(temps)?.map(|what| Recovered {
                what,
                finished: None,
            }));
        };
        let mut finished = None;
        let txid = journal.txid.clone();
        let what = match journal.phase {
            Phase::Staging => {
                // The marker is written at the end of this phase.
                if let Ok(m) = read_manifest(&self.paths, &txid) {
                    marker::remove(self.store, &m.legacy_dir.0)?;
                }
                remove_dir_all_if_exists(&self.paths.tx(&txid))?;
                fsx::remove_file_durable(&self.paths.journal())?;
                format!(
                    "undid interrupted migration {txid} (nothing had been published; legacy files untouched)"
                )
            }
            Phase::Publishing | Phase::Retiring => {
                let mut m = read_manifest(&self.paths, &txid)?;
                let project = m.project.0.clone();
                let wrap = |e| self.unfinished(&txid, &project, e);
                let mut summary = manifest::summarize(&self.paths.entries(&txid))?;
                if journal.phase == Phase::Publishing {
                    summary = self.publish(&m, &summary).map_err(wrap)?;
                    set_journal(&self.paths, &txid, Phase::Retiring, false).map_err(wrap)?;
                }
                self.retire(&mut m, &summary).map_err(wrap)?;
                write_json(&self.paths.manifest(&txid), &m).map_err(wrap)?;
                let report = crate::report::from_manifest(
                    self.store,
                    &self.paths,
                    &m,
                    &summary,
                    crate::Outcome::Migrated,
                    None,
                );
                set_journal(&self.paths, &txid, Phase::Committed, false)?;
                self.finish_commit(&m, &summary, Some(&report))?;
                finished = Some(txid.clone());
                format!("finished interrupted migration {txid}")
            }
            Phase::Committed => {
                let m = read_manifest(&self.paths, &txid)?;
                let summary = manifest::summarize(&self.paths.entries(&txid))?;
                self.finish_commit(&m, &summary, None)?;
                finished = Some(txid.clone());
                format!("cleaned up after migration {txid}")
            }
            Phase::RollingBack => {
                let m = read_manifest(&self.paths, &txid)?;
                self.finish_rollback(&m, journal.force)?;
                format!("finished interrupted rollback of {txid}")
            }
        };
        tracing::warn!("{what}");
        Ok(Some(Recovered { what, finished }))
    }

    /// Removes crashed writers' temp files from `migrations/<repo>/` and
    /// `<txid>/` (call under the migration lock).
    pub fn sweep_temps(&self) -> Result<Vec<PathBuf>> {
        let mut swept = fsx::sweep_temp_files_within(&self.paths.dir, 1)?;
        if matches!(self.owner, Owner::Store) {
            // The upgrade's commit writes `layout.json` at the store's root.
            swept.extend(fsx::sweep_temp_files_here(self.layout().root())?);
        }
        Ok(swept)
    }

    /// With no transaction in progress, removes what only a crash can leave:
    /// staging areas (a journal always names the one in use), besides the
    /// temp files `recover` swept already. Backups are never touched.
    fn sweep_debris(&self, temps: Vec<PathBuf>) -> Result<Option<String>> {
        let mut swept = temps;
        for tx in fsx::read_dir_sorted(&self.paths.dir)? {
            if !tx.file_type.is_dir() {
                continue;
            }
            let staging = tx.path.join("staging");
            if std::fs::symlink_metadata(&staging).is_ok() {
                remove_dir_all_if_exists(&staging)?;
                swept.push(staging);
            }
        }
        if swept.is_empty() {
            return Ok(None);
        }
        let what = format!(
            "removed {} leftover(s) of an earlier crash, first `{}`",
            swept.len(),
            swept[0].display()
        );
        tracing::warn!("{what}");
        Ok(Some(what))
    }

    // ---- the whole migration -------------------------------------------

    /// Plans (through `plan`, which hands each entry to the function it is
    /// given) and migrates. Returns `None`, with nothing left behind, when
    /// the plan holds no legacy file.
    pub fn run(
        &self,
        txid: &str,
        plan: impl FnOnce(&mut dyn FnMut(&Entry) -> Result<()>) -> Result<Manifest>,
    ) -> Result<Option<(Manifest, Summary)>> {
        // The journal comes first: everything under `<txid>/` is covered by it.
        set_journal(&self.paths, txid, Phase::Staging, false)?;
        let mut legacy = PathBuf::new();
        let staged = (|| {
            let mut planned = Summary::default();
            // The few logs to split are staged first, on their own thread.
            let mut splits = Vec::new();
            self.progress.start(Step::Plan, 0, 0);
            let mut m = manifest::write_entries(&self.paths.entries(txid), |push| {
                plan(&mut |e| {
                    planned.add(e);
                    if e.source().split {
                        splits.push(e.clone());
                    }
                    push(e)
                })
            })?;
            self.progress.finish(Step::Plan);
            legacy.clone_from(&m.legacy_dir.0);
            if planned.sources == 0 {
                return Ok(None);
            }
            tracing::info!(project = %m.project.as_path().display(), files = planned.sources, txid, "migrating legacy storage");
            write_json(&self.paths.manifest(txid), &m)?;
            fault::point("after-journal");
            let staged = self.stage(&mut m, &planned, splits)?;
            sync(self.layout().root())?;
            write_json(&self.paths.manifest(txid), &m)?;
            fault::point("after-staging");
            self.verify_staged(&m, &staged)?;
            // The marker names this store in the project before anything is
            // published; writing it shows whether renames reach the project.
            let owner = project_owner(&m.legacy_dir.0);
            let renames = match &self.owner {
                Owner::Project(repo) => marker::write(
                    self.store,
                    &self.paths.tx(txid),
                    &m.legacy_dir.0,
                    repo.as_str(),
                    txid,
                    owner,
                )?,
                // Within the store: renames are tried file by file.
                Owner::Store => true,
            };
            if !renames {
                self.check_space(&m, &staged)?;
            }
            self.reserve(txid)?;
            Ok(Some((m, staged)))
        })();
        let (mut m, staged) = match staged {
            Ok(Some(done)) => done,
            // Nothing is published: undo the staging area, keep the legacy tree.
            Ok(None) => {
                remove_dir_all_if_exists(&self.paths.tx(txid))?;
                fsx::remove_file_durable(&self.paths.journal())?;
                return Ok(None);
            }
            Err(e) => {
                let _ = marker::remove(self.store, &legacy);
                let _ = remove_dir_all_if_exists(&self.paths.tx(txid));
                let _ = fsx::remove_file_durable(&self.paths.journal());
                return Err(e);
            }
        };
        fault::point("after-verify");
        set_journal(&self.paths, txid, Phase::Publishing, false)?;
        let project = m.project.0.clone();
        let wrap = |e| self.unfinished(txid, &project, e);
        let published = self.publish(&m, &staged).map_err(wrap)?;
        fault::point("after-publish");
        set_journal(&self.paths, txid, Phase::Retiring, false).map_err(wrap)?;
        self.retire(&mut m, &published).map_err(wrap)?;
        write_json(&self.paths.manifest(txid), &m).map_err(wrap)?;
        fault::point("after-retire");
        Ok(Some((m, published)))
    }

    /// Sets aside a little space in the store before publishing, which an
    /// undo frees first: undoing must work when finishing failed because
    /// the store's disk is full (it needs a journal and a history line).
    fn reserve(&self, txid: &str) -> Result<()> {
        let path = self.paths.reserve(txid);
        let _ = std::fs::remove_file(&path);
        let mut f = fsx::create_new(&path)?;
        f.write_all(&vec![0u8; UNDO_RESERVE])
            .and_then(|()| f.sync_all())
            .map_err(|e| Error::io("write", &path, e))?;
        Ok(())
    }

    /// Frees the space [`Tx::reserve`] set aside.
    pub fn release_reserve(&self, txid: &str) -> Result<()> {
        fsx::remove_file_durable(&self.paths.reserve(txid))?;
        Ok(())
    }

    /// The error for a migration that stopped after it began publishing:
    /// it names both ways out.
    fn unfinished(&self, txid: &str, project: &Path, source: Error) -> Error {
        let home = crate::shell_quote(self.layout().root());
        let project_q = crate::shell_quote(project);
        Error::Unfinished {
            txid: txid.to_owned(),
            project: project.to_owned(),
            finish: format!("prodigy-storage --home {home} migrate {project_q}"),
            undo: format!("prodigy-storage --home {home} rollback {project_q}"),
            source: Box::new(source),
        }
    }

    /// Refuses to publish when the backup copies (needed where legacy files
    /// cannot be renamed into the store) would not fit, with a margin, on
    /// the store's file system.
    fn check_space(&self, m: &Manifest, staged: &Summary) -> Result<()> {
        let tx = self.paths.tx(&m.txid);
        let need = staged.source_bytes + (staged.source_bytes / 100).max(16 << 20);
        let free = marker::free_bytes(&tx)?;
        if free < need {
            return Err(Error::Refused {
                action: "migrate",
                path: m.project.0.clone(),
                reason: format!(
                    "its legacy files must be copied into the backup (they are on another file system \
                     than the store), which needs {need} bytes with a margin on the store's file system \
                     (`{}`), and only {free} are free; nothing was changed: free some space and run again",
                    self.layout().root().display()
                ),
            });
        }
        Ok(())
    }

    // ---- rollback ------------------------------------------------------

    /// How many files of migration `txid`'s backup hold bytes found nowhere
    /// else: neither in the project at their place nor published unchanged
    /// (as a byte-for-byte copy) in the store.
    pub fn files_only_in_backup(&self, txid: &str) -> Result<u64> {
        let Ok(m) = read_manifest(&self.paths, txid) else {
            // No records to compare with: everything counts as unique.
            return Ok(1);
        };
        let backup = self.paths.backup(txid);
        let root = self.layout().root();
        let mut only = 0;
        manifest::for_each_chunk(&self.paths.entries(txid), |chunk| {
            for e in chunk {
                let copies: Vec<&RelPath> = e
                    .outputs
                    .iter()
                    .filter(|o| o.produce == Produce::Copy)
                    .filter_map(|o| match &o.fate {
                        Fate::Published | Fate::AlreadyPresent => Some(&o.dest),
                        Fate::Conflict { alt } => Some(alt),
                        Fate::Pending => None,
                    })
                    .collect();
                for s in &e.sources {
                    let bak = join(&backup, &s.rel)?;
                    let AtPath::File(h) = probe(&bak)? else {
                        continue;
                    };
                    let here = |p: &Path| -> Result<bool> {
                        Ok(matches!(probe(p)?, AtPath::File(x) if x == h))
                    };
                    let mut found = here(&join(&m.legacy_dir.0, &s.rel)?)?;
                    for c in &copies {
                        found = found || here(&join(root, c)?)?;
                    }
                    if !found {
                        only += 1;
                    }
                }
            }
            Ok(())
        })?;
        Ok(only)
    }

    /// Checks that rolling `m` back loses nothing; returns changed published files.
    pub fn rollback_check(&self, m: &Manifest) -> Result<Vec<PathBuf>> {
        let backup = self.paths.backup(&m.txid);
        let legacy = &m.legacy_dir.0;
        real_dir(legacy)?;
        let root = self.layout().root();
        let mut missing = Vec::new();
        let mut blocked = Vec::new();
        let mut changed = Vec::new();
        manifest::for_each_chunk(&self.paths.entries(&m.txid), |chunk| {
            for s in chunk.iter().flat_map(|e| &e.sources) {
                if s.left.is_some() {
                    continue; // not in the backup; not restored (see `Left`)
                }
                // Refused before anything changes: a link where a directory was.
                no_links(legacy, s.rel.as_path().parent())?;
                let bak = join(&backup, &s.rel)?;
                let at_legacy = probe(&join(legacy, &s.rel)?)?;
                let same = |at: AtPath| matches!(at, AtPath::File(h) if Some(h.to_hex().to_string()) == s.hash);
                if same(at_legacy) {
                    continue; // already restored
                }
                if at_legacy != AtPath::Missing {
                    blocked.push(join(legacy, &s.rel)?);
                }
                if !same(probe(&bak)?) {
                    missing.push(bak);
                }
            }
            for o in chunk.iter().flat_map(|e| &e.outputs) {
                let rel = match &o.fate {
                    Fate::Published => &o.dest,
                    Fate::Conflict { alt } => alt,
                    Fate::AlreadyPresent | Fate::Pending => continue,
                };
                let path = join(root, rel)?;
                if !matches!(probe(&path)?, AtPath::File(h) if Some(h.to_hex().to_string()) == o.hash)
                {
                    changed.push(path);
                }
            }
            Ok(())
        })?;
        if !missing.is_empty() {
            return Err(Error::RollbackRefused {
                reason: format!(
                    "the backup of migration {} is missing or damaged ({} file(s), first `{}`); \
                     it may have been pruned. The migrated data is still in the store",
                    m.txid,
                    missing.len(),
                    missing[0].display()
                ),
                paths: missing,
            });
        }
        if !blocked.is_empty() {
            return Err(Error::RollbackRefused {
                reason: format!(
                    "{} legacy file(s) exist again with other content (an older Prodigy wrote them?), first `{}`; \
                     run `prodigy-storage migrate` to import them first, or move them away",
                    blocked.len(),
                    blocked[0].display()
                ),
                paths: blocked,
            });
        }
        Ok(changed)
    }

    /// Rolls `m` back; returns the totals of its entries.
    pub fn start_rollback(&self, m: &Manifest, force: bool) -> Result<Summary> {
        set_journal(&self.paths, &m.txid, Phase::RollingBack, force)?;
        self.finish_rollback(m, force)
    }

    fn finish_rollback(&self, m: &Manifest, force: bool) -> Result<Summary> {
        let backup = self.paths.backup(&m.txid);
        let entries = self.paths.entries(&m.txid);
        let legacy = m.legacy_dir.0.clone();
        real_dir(&legacy)?;
        let modes = dir_modes(m);
        let owner = project_owner(&legacy);
        let summary = manifest::summarize(&entries)?;
        self.progress
            .start(Step::Restore, summary.sources, summary.source_bytes);
        // Restored copies are written in a directory of this rollback's own,
        // then renamed into place: a crash leaves them there, where the next
        // run removes them whole, never beside the user's files (whose names
        // could look like ours).
        let restoring = legacy.join(format!(".prodigy-storage-restoring-{}", m.txid));
        remove_dir_all_if_exists(&restoring)?;
        fsx::create_dir_all(&restoring)?;
        let mut first = true;
        let mut n = 0u64;
        manifest::for_each_chunk(&entries, |chunk| {
            for s in chunk.iter().flat_map(|e| &e.sources) {
                // What did not go into the backup is not restored from it
                // (a newer version stays in the project; see `Left`).
                if s.left.is_some() {
                    self.progress.advance(1, s.size);
                    continue;
                }
                let dest = join(&legacy, &s.rel)?;
                make_dirs(&legacy, s.rel.as_path().parent(), &modes, owner)?;
                let same = matches!(probe(&dest)?, AtPath::File(h) if Some(h.to_hex().to_string()) == s.hash);
                if !same {
                    n += 1;
                    restore_one(
                        &join(&backup, &s.rel)?,
                        &restoring.join(n.to_string()),
                        &dest,
                        s,
                        owner,
                    )?;
                }
                tracing::debug!(file = %s.rel.as_path().display(), already_there = same, "restored from the backup");
                self.progress.advance(1, s.size);
                if std::mem::take(&mut first) {
                    fault::point("mid-rollback-restore");
                }
            }
            Ok(())
        })?;
        sync(&legacy)?;
        std::fs::remove_dir(&restoring).map_err(|e| Error::io("remove", &restoring, e))?;
        fsx::fsync_dir(&legacy)?;
        self.progress.finish(Step::Restore);
        fault::point("after-rollback-restore");
        let root = self.layout().root().to_owned();
        let staging = self.paths.staging(&m.txid);
        let displaced = self
            .owner
            .area(self.layout())
            .join("rollback-displaced")
            .join(&m.txid);
        let mut first = true;
        manifest::for_each_chunk(&entries, |chunk| {
            // The store keeps what a source that is not in the backup was
            // verified as: it may hold bytes found nowhere else.
            let outputs = chunk
                .iter()
                .filter(|e| e.sources.iter().all(|s| s.left.is_none()))
                .flat_map(|e| &e.outputs);
            for o in outputs {
                let rel = match &o.fate {
                    Fate::Published => o.dest.clone(),
                    Fate::Conflict { alt } => alt.clone(),
                    Fate::AlreadyPresent => continue,
                    // An unfinished migration being undone: what left staging was published.
                    Fate::Pending => {
                        if std::fs::symlink_metadata(join(&staging, &o.dest)?).is_ok() {
                            continue;
                        }
                        let alt = conflict_alt(
                            self.layout(),
                            &self.owner.area(self.layout()),
                            &m.txid,
                            &o.dest,
                        );
                        let ours = |rel: &RelPath| -> Result<bool> {
                            Ok(
                                matches!(probe(&join(&root, rel)?)?, AtPath::File(h) if Some(h.to_hex().to_string()) == o.hash),
                            )
                        };
                        if ours(&o.dest)? {
                            o.dest.clone()
                        } else if ours(&alt)? {
                            alt
                        } else {
                            continue;
                        }
                    }
                };
                let rel = &rel;
                let path = join(&root, rel)?;
                // A downgrade gives back the exact layout-0 tree: directories
                // the upgrade created go too (also when a crashed run already
                // removed the file).
                let tidy = || {
                    if matches!(self.owner, Owner::Store) {
                        remove_empty_parents(&root, rel.as_path(), &modes);
                    }
                };
                match probe(&path)? {
                    AtPath::Missing => tidy(),
                    AtPath::File(h) if Some(h.to_hex().to_string()) == o.hash => {
                        fsx::remove_file_durable(&path)?;
                        tracing::debug!(file = %rel.as_path().display(), "removed from the store");
                        tidy();
                    }
                    _ if force => {
                        let aside = join(&displaced, rel)?;
                        fsx::create_dir_all(fsx::parent(&aside))?;
                        fsx::rename_noreplace(&path, &aside)?;
                    }
                    _ => {
                        tracing::warn!(path = %path.display(), "changed since migration; left in place");
                    }
                }
                if std::mem::take(&mut first) {
                    fault::point("mid-rollback-remove");
                }
            }
            Ok(())
        })?;
        remove_dir_all_if_exists(&staging)?;
        self.release_reserve(&m.txid)?;
        sync(&root)?;
        fault::point("after-rollback-remove");
        match self.owner {
            Owner::Project(_) => marker::remove(self.store, &legacy)?,
            // A downgrade: the store is layout 0 again.
            Owner::Store => self.store.remove_layout_version()?,
        }
        append_history(
            &self.paths,
            &HistoryEntry {
                txid: m.txid.clone(),
                event: "rolled_back".into(),
                at: storage_fs::time::now(),
                files: summary.sources,
                bytes: summary.source_bytes,
            },
        )?;
        fsx::remove_file_durable(&self.paths.journal())?;
        Ok(summary)
    }
}

/// Copies the backup `bak` to `tmp`, with the source's mode and mtime, and
/// renames it to `dest` without replacing anything. Where `dest` is on
/// another file system than `tmp` (a mount inside `.prodigy/`), the copy is
/// made beside `dest` instead.
fn restore_one(
    bak: &Path,
    tmp: &Path,
    dest: &Path,
    s: &Source,
    owner: Option<(u32, u32)>,
) -> Result<()> {
    let copy_to = |tmp: &Path| -> Result<()> {
        let (mut f, _) = open_regular(bak)?;
        copy::copy_new(&mut f, bak, tmp, s.mtime)?;
        set_mode(tmp, s.mode)?;
        chown(tmp, owner)
    };
    copy_to(tmp)?;
    match fsx::rename_noreplace(tmp, dest) {
        Err(storage_core::Error::Io { source, .. })
            if source.kind() == std::io::ErrorKind::CrossesDevices =>
        {
            fsx::remove_file_durable(tmp)?;
            let beside = fsx::parent(dest).join(fsx::temp_name("restore"));
            copy_to(&beside)?;
            Ok(fsx::rename_noreplace(&beside, dest)?)
        }
        other => Ok(other?),
    }
}

/// Checks that the per-job logs of a split log hold every byte and line of
/// it exactly once (their hashes were checked against the staged files).
fn verify_split(legacy: &Path, e: &Entry) -> Result<()> {
    let source = e.source();
    if !source.split {
        return Ok(());
    }
    let bytes: u64 = e.outputs.iter().filter_map(|o| o.size).sum();
    let lines: u64 = e.outputs.iter().filter_map(|o| o.lines).sum();
    let planned = source.split_lines;
    if bytes != source.size || Some(lines) != planned {
        return Err(Error::Verify {
            path: join(legacy, &source.rel)?,
            what: format!(
                "the per-job logs do not account for every line exactly once \
                 ({} bytes and {planned:?} lines in the source, {bytes} bytes and {lines} lines staged)",
                source.size
            ),
        });
    }
    Ok(())
}

/// The count of regular files under `base/d` and the sum of their names'
/// digests; `None` if it holds anything else or cannot be listed.
fn files_digest(base: &Path, d: &Path) -> Option<(u64, u128)> {
    let mut found = (0u64, 0u128);
    let mut stack = vec![d.to_owned()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(base.join(&rel)).ok()? {
            let e = e.ok()?;
            let r = rel.join(e.file_name());
            let t = e.file_type().ok()?;
            if t.is_dir() {
                stack.push(r);
            } else if t.is_file() {
                found.0 += 1;
                found.1 = found.1.wrapping_add(name_digest(&r));
            } else {
                return None;
            }
        }
    }
    Some(found)
}

/// 128 bits of the BLAKE3 hash of a relative path.
fn name_digest(rel: &Path) -> u128 {
    use std::os::unix::ffi::OsStrExt;
    let h = blake3::hash(rel.as_os_str().as_bytes());
    let mut first = [0u8; 16];
    first.copy_from_slice(&h.as_bytes()[..16]);
    u128::from_le_bytes(first)
}

/// Moves staged directories whose target does not exist into the store,
/// each with one no-replace rename; descends where the target exists.
/// Records the directories it moved (relative to the store root) in `moved`.
fn publish_dirs(staging: &Path, root: &Path, rel: &Path, moved: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fsx::read_dir_sorted(&staging.join(rel))? {
        if !entry.file_type.is_dir() {
            continue;
        }
        let sub = rel.join(&entry.name);
        let target = root.join(&sub);
        if std::fs::symlink_metadata(&target).is_err() {
            match fsx::rename_noreplace(&entry.path, &target) {
                Ok(()) => {
                    moved.push(sub);
                    continue;
                }
                // Someone created it meanwhile: publish inside it instead.
                Err(storage_core::Error::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::AlreadyExists
                        || source.kind() == std::io::ErrorKind::DirectoryNotEmpty => {}
                // Its parent is another mount: create it there and publish
                // inside it, file by file.
                Err(e) if crosses_devices(&e) => fsx::create_dir_all(&target)?,
                Err(e) => return Err(e.into()),
            }
        }
        publish_dirs(staging, root, &sub, moved)?;
    }
    Ok(())
}

/// Points `path` in a legacy `metadata.json` at `new_dir`; returns the new
/// bytes and a warning when the file had to be copied verbatim instead.
pub(crate) fn rewrite_metadata_path(bytes: &[u8], new_dir: &Path) -> (Vec<u8>, Option<String>) {
    let mut doc = match serde_json::from_slice(bytes) {
        Ok(serde_json::Value::Object(doc)) => doc,
        Ok(_) => return (bytes.to_vec(), Some("not a JSON object".into())),
        Err(e) => return (bytes.to_vec(), Some(format!("not decodable as JSON ({e})"))),
    };
    let Some(old) = doc.get("path").and_then(serde_json::Value::as_str) else {
        return (bytes.to_vec(), Some("no string `path` field".into()));
    };
    let Some(name) = Path::new(old).file_name() else {
        return (bytes.to_vec(), Some("`path` names no file".into()));
    };
    // Only a file of this job's own legacy directory moves with it; any
    // other `path` (`/etc/passwd`) is not the job's and stays as written.
    let job = new_dir.file_name();
    let dir = Path::new(old).parent();
    let in_job = dir.is_none_or(|d| d.as_os_str().is_empty())
        || job.is_some()
            && dir.and_then(Path::file_name) == job
            && dir.and_then(Path::parent).and_then(Path::file_name)
                == Some(std::ffi::OsStr::new("jobs"));
    if !in_job {
        return (
            bytes.to_vec(),
            Some(format!(
                "`path` (`{old}`) points outside the job's own directory"
            )),
        );
    }
    let new = new_dir.join(name);
    doc.insert(
        "path".into(),
        serde_json::Value::String(new.to_string_lossy().into_owned()),
    );
    let mut out = serde_json::to_vec_pretty(&doc).expect("a JSON map serializes");
    if bytes.ends_with(b"\n") {
        out.push(b'\n');
    }
    (out, None)
}

fn corrupt_one_byte(path: &Path) -> Result<()> {
    let mut bytes = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
    match bytes.first_mut() {
        Some(b) => *b ^= 0x01,
        None => bytes.push(b'!'),
    }
    std::fs::write(path, bytes).map_err(|e| Error::io("write", path, e))
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io("set permissions of", path, e))
}

/// The recorded mode of each legacy directory.
fn dir_modes(m: &Manifest) -> BTreeMap<PathBuf, u32> {
    m.dirs
        .iter()
        .map(|(d, mode)| (d.0.clone(), *mode))
        .collect()
}

/// Checks that `dir` is a directory and not a link to one.
fn real_dir(dir: &Path) -> Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(Error::Link {
            path: dir.to_owned(),
        }),
        Err(e) => Err(Error::io("stat", dir, e)),
    }
}

/// Removes the empty ancestors of `rel` under `base` that are not
/// recorded directories of the old layout, deepest first (best effort:
/// stops at the first that is not empty).
fn remove_empty_parents(base: &Path, rel: &Path, recorded: &BTreeMap<PathBuf, u32>) {
    let mut p = rel.parent();
    while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
        if recorded.contains_key(d) {
            return;
        }
        match std::fs::remove_dir(base.join(d)) {
            // Gone already (an earlier, interrupted run): look further up.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(_) => return,
            Ok(()) => {}
        }
        p = d.parent();
    }
}

/// Checks that every existing ancestor of `rel` under `base` is a real
/// directory (a missing one is created later, without following links).
fn no_links(base: &Path, rel: Option<&Path>) -> Result<()> {
    let Some(rel) = rel else { return Ok(()) };
    let mut dir = base.to_owned();
    for c in rel.components() {
        dir.push(c);
        match std::fs::symlink_metadata(&dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(Error::Link { path: dir }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io("stat", &dir, e)),
        }
    }
    Ok(())
}

/// Creates the missing ancestors of `rel` under `base` with their recorded
/// modes (and, when run as root, the owner of `base`). Never follows a
/// link: a link (or a file) where a directory belongs is refused by name.
fn make_dirs(
    base: &Path,
    rel: Option<&Path>,
    modes: &BTreeMap<PathBuf, u32>,
    owner: Option<(u32, u32)>,
) -> Result<()> {
    real_dir(base)?;
    let Some(rel) = rel else { return Ok(()) };
    let mut cur = PathBuf::new();
    for c in rel.components() {
        cur.push(c);
        let dir = base.join(&cur);
        match std::fs::symlink_metadata(&dir) {
            Ok(meta) if meta.is_dir() => continue,
            Ok(_) => return Err(Error::Link { path: dir }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("stat", &dir, e)),
        }
        match std::fs::create_dir(&dir) {
            Ok(()) => {
                set_mode(&dir, modes.get(&cur).copied().unwrap_or(0o755))?;
                chown(&dir, owner)?;
                fsx::fsync_dir(fsx::parent(&dir))?;
            }
            // Created meanwhile: checked again (a link is refused).
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => real_dir(&dir)?,
            Err(e) => return Err(Error::io("create directory", &dir, e)),
        }
    }
    Ok(())
}

/// The owner that files created in the project must get: `Some` only when
/// this process runs as root and the legacy directory belongs to someone
/// else (a root-owned file in a user's project breaks their old Prodigy).
pub(crate) fn project_owner(legacy: &Path) -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    if !rustix::process::geteuid().is_root() {
        return None;
    }
    let meta = std::fs::symlink_metadata(legacy).ok()?;
    (meta.uid() != 0).then(|| (meta.uid(), meta.gid()))
}

/// Gives `path` (not following a link) to `owner`, if any.
fn chown(path: &Path, owner: Option<(u32, u32)>) -> Result<()> {
    let Some((uid, gid)) = owner else {
        return Ok(());
    };
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .map_err(|e| Error::io("change the owner of", path, e))
}

/// Moves a file to `to` without replacing anything, by trying a rename
/// first; where the rename says "another file system", by a durable copy
/// beside `to` (mode and mtime kept; its BLAKE3 checked against `expect`
/// when given), a no-replace rename, then removing `from`.
fn move_file(from: &Path, to: &Path, expect: Option<&str>) -> storage_core::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fn io<'a>(
        op: &'static str,
        p: &'a Path,
    ) -> impl FnOnce(std::io::Error) -> storage_core::Error + 'a {
        move |e| storage_core::Error::io(op, p, e)
    }
    match fsx::rename_noreplace(from, to) {
        Err(e) if crosses_devices(&e) => {}
        other => return other,
    }
    let meta = std::fs::symlink_metadata(from).map_err(io("stat", from))?;
    let tmp = fsx::parent(to).join(fsx::temp_name("move"));
    let copied = (|| {
        let (mut f, _) = open_regular(from).map_err(|e| match e {
            Error::Store(e) => e,
            other => {
                storage_core::Error::io("open", from, std::io::Error::other(other.to_string()))
            }
        })?;
        let mut out = fsx::create_new(&tmp)?;
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = f.read(&mut buf).map_err(io("read", from))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(io("write", &tmp))?;
        }
        if expect.is_some_and(|want| hasher.finalize().to_hex().as_str() != want) {
            return Err(storage_core::Error::io(
                "copy into",
                &tmp,
                std::io::Error::other("the copy does not match the verified hash"),
            ));
        }
        out.set_permissions(std::fs::Permissions::from_mode(meta.permissions().mode()))
            .map_err(io("set permissions of", &tmp))?;
        out.set_modified(meta.modified().map_err(io("stat", from))?)
            .map_err(io("set the modification time of", &tmp))?;
        out.sync_all().map_err(io("fsync", &tmp))?;
        fsx::rename_noreplace(&tmp, to)
    })();
    if let Err(e) = copied {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    fsx::fsync_dir(fsx::parent(to))?;
    fsx::remove_file_durable(from)?;
    Ok(())
}

/// The warning for a legacy file that did not go into the backup.
fn left_warning(rel: &RelPath, left: &Left) -> String {
    let rel = rel.as_path().display();
    match left {
        Left::InProject => format!(
            "`{rel}` changed after it was verified (is an older Prodigy still running?); the newer version stays in the project, the store holds the verified one: run migrate again to import the newer one"
        ),
        Left::Displaced { at } => format!(
            "`{rel}` changed after it was verified and the project has a new file of that name; the changed version is kept at `{}`",
            at.as_path().display()
        ),
        Left::Gone => format!(
            "`{rel}` left the project before it could be backed up (another store or a person moved it); the store holds its verified copy, which a rollback keeps"
        ),
    }
}

pub(crate) fn remove_dir_all_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", path, e)),
    }
}

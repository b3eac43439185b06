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
    self, Category, Entry, Fate, Fingerprint, HistoryEntry, Journal, Manifest, Output, Phase,
    Produce, RelPath, Source, Summary,
};
use crate::plan::{preserved_dest, rel_in_store};
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
}

fn join(base: &Path, rel: &RelPath) -> Result<PathBuf> {
    Layout::under(base, rel.as_path()).ok_or_else(|| Error::Record {
        path: base.to_owned(),
        reason: format!("`{}` is not a plain relative path", rel.as_path().display()),
        next: "the manifest was edited by hand; restore it from the backup directory".into(),
    })
}

fn conflict_alt(layout: &Layout, repo: &RepoKey, txid: &str, dest: &RelPath) -> RelPath {
    let alt = layout
        .legacy_dir(repo)
        .join("conflicts")
        .join(txid)
        .join(dest.as_path());
    rel_in_store(layout, &alt)
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
        "it is written atomically, so it was changed by hand; restore it, or move it away after checking `migrations/` by hand",
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

fn append_history(paths: &Paths, entry: &HistoryEntry) -> Result<()> {
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

fn same_device(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev(),
        _ => false,
    }
}

/// Directories known to exist, so that creating the parents of thousands
/// of files costs one `mkdir` per directory, not per file.
#[derive(Default)]
struct Dirs(std::collections::HashSet<PathBuf>);

impl Dirs {
    fn ensure(&mut self, dir: &Path) -> Result<()> {
        if !self.0.contains(dir) {
            fsx::create_dir_all(dir)?;
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Retired {
    /// Renamed into the backup.
    Moved,
    /// Renamed, but it had changed since verification (warned).
    ChangedAfterVerify,
    /// Copied into the backup; the source is removed after the `syncfs`.
    CopiedKeepSource,
    /// Already in the backup (a re-run after a crash).
    Already,
    /// In both places with different content: both kept (warned).
    DiffersFromBackup,
}

/// Everything one protocol run needs.
pub(crate) struct Tx<'a> {
    pub store: &'a FsStorage,
    pub repo: RepoKey,
    pub paths: Paths,
    pub progress: &'a dyn Progress,
}

impl Tx<'_> {
    fn layout(&self) -> &Layout {
        self.store.layout()
    }

    /// Takes the repository's migration lock.
    pub fn lock(&self, wait: Duration) -> Result<storage_fs::FileLock> {
        let name =
            LockKey::new(format!("migrate-{}", self.repo)).map_err(storage_core::Error::from)?;
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
            Produce::Copy if out.category == Category::LegacyPreserved => {
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
        let dest = preserved_dest(self.layout(), &self.repo, rel);
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
                &self.repo,
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
        let alt_rel = conflict_alt(self.layout(), &self.repo, &m.txid, &o.dest);
        let alt = join(root, &alt_rel)?;
        let same =
            |at: AtPath| matches!(at, AtPath::File(h) if Some(h.to_hex().to_string()) == o.hash);
        Ok(if moved.iter().any(|d| o.dest.as_path().starts_with(d)) {
            // Moved with its whole directory just now.
            Fate::Published
        } else if std::fs::symlink_metadata(&staged).is_ok() {
            match probe(&target)? {
                AtPath::Missing => {
                    dirs.ensure(fsx::parent(&target))?;
                    fsx::rename_noreplace(&staged, &target)?;
                    Fate::Published
                }
                at if same(at) => Fate::AlreadyPresent,
                _ => {
                    if !same(probe(&alt)?) {
                        fsx::create_dir_all(fsx::parent(&alt))?;
                        fsx::rename_noreplace(&staged, &alt)?;
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

    /// Moves the legacy storage files into the backup (verified when copied).
    pub fn retire(&self, m: &mut Manifest, published: &Summary) -> Result<()> {
        let legacy = m.legacy_dir.0.clone();
        let txid = m.txid.clone();
        let backup = self.paths.backup(&txid);
        let entries = self.paths.entries(&txid);
        fsx::create_dir_all(&backup)?;
        let cross_device = !same_device(&legacy, &backup);
        self.progress
            .start(Step::Retire, published.sources, published.source_bytes);
        let first = std::sync::Once::new();
        let moved = if cross_device {
            Vec::new()
        } else {
            retire_dirs(m, &entries, &legacy, &backup)?
        };
        manifest::for_each_chunk(&entries, |chunk| {
            let sources: Vec<&Source> = chunk.iter().flat_map(|e| &e.sources).collect();
            let outcomes = par_map(&sources, Dirs::default, |dirs, s| {
                if moved.iter().any(|d| s.rel.as_path().starts_with(d)) {
                    self.progress.advance(1, s.size);
                    return Ok(Retired::Moved);
                }
                let r = self.retire_one(&txid, &legacy, &backup, dirs, s, cross_device)?;
                tracing::debug!(file = %s.rel.as_path().display(), outcome = ?r, "moved into the backup");
                self.progress.advance(1, s.size);
                first.call_once(|| fault::point("mid-retire"));
                Ok(r)
            })?;
            // Across file systems each chunk is copied first and the copies
            // made durable with one `syncfs`; only then are the sources removed.
            if cross_device && outcomes.contains(&Retired::CopiedKeepSource) {
                sync(&backup)?;
                for (s, outcome) in sources.iter().zip(&outcomes) {
                    if *outcome == Retired::CopiedKeepSource {
                        fsx::remove_file_durable(&join(&legacy, &s.rel)?)?;
                    }
                }
            }
            for (s, outcome) in sources.iter().zip(outcomes) {
                match outcome {
                    Retired::ChangedAfterVerify => m.warn(format!(
                        "`{}` changed after it was verified; the store holds the verified version, the backup the newer one",
                        s.rel.as_path().display()
                    )),
                    Retired::DiffersFromBackup => m.warn(format!(
                        "`{}` differs from its backup; both kept",
                        s.rel.as_path().display()
                    )),
                    Retired::Moved | Retired::CopiedKeepSource | Retired::Already => {}
                }
            }
            Ok(())
        })?;
        // Remove the storage directories that this emptied, deepest first.
        let mut dirs: Vec<&RelPath> = m.dirs.iter().map(|(d, _)| d).collect();
        dirs.sort_by_key(|d| std::cmp::Reverse(d.as_path().components().count()));
        for d in dirs {
            let parts: Vec<&str> = d.as_path().iter().filter_map(|c| c.to_str()).collect();
            if crate::legacy::is_storage_dir(&parts) {
                let _ = std::fs::remove_dir(join(&legacy, d)?);
            }
        }
        sync(self.layout().root())?;
        if cross_device {
            sync(&legacy)?;
        }
        self.progress.finish(Step::Retire);
        Ok(())
    }

    /// Moves (or, across file systems, copies) one legacy file into the backup.
    fn retire_one(
        &self,
        txid: &str,
        legacy: &Path,
        backup: &Path,
        dirs: &mut Dirs,
        s: &crate::manifest::Source,
        cross_device: bool,
    ) -> Result<Retired> {
        let src = join(legacy, &s.rel)?;
        let bak = join(backup, &s.rel)?;
        dirs.ensure(fsx::parent(&bak))?;
        if !cross_device {
            match fsx::rename_noreplace(&src, &bak) {
                Ok(()) => {
                    let now =
                        std::fs::symlink_metadata(&bak).map_err(|e| Error::io("stat", &bak, e))?;
                    // A rename changes the change time, so compare the rest.
                    let same = std::os::unix::fs::MetadataExt::ino(&now) == s.fingerprint.ino
                        && now.len() == s.size
                        && copy::mtime_of(&now) == s.mtime;
                    return Ok(if same {
                        Retired::Moved
                    } else {
                        Retired::ChangedAfterVerify
                    });
                }
                Err(storage_core::Error::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::CrossesDevices => {}
                Err(storage_core::Error::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound
                        || source.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e.into()),
            }
        }
        let src_here = std::fs::symlink_metadata(&src).is_ok();
        let bak_here = std::fs::symlink_metadata(&bak).is_ok();
        match (src_here, bak_here) {
            (true, false) => {
                Self::copy_to_backup(&self.paths.tx(txid), &src, &bak, s)?;
                Ok(Retired::CopiedKeepSource)
            }
            (false, true) => Ok(Retired::Already),
            (true, true) => {
                // A crash after the backup was complete (it is renamed into
                // place whole): the source goes only if it is equal.
                let (_, hb) = copy::hash_file(&bak)?;
                let (_, hs) = copy::hash_file(&src)?;
                if hb == hs {
                    if cross_device {
                        return Ok(Retired::CopiedKeepSource);
                    }
                    fsx::remove_file_durable(&src)?;
                    Ok(Retired::Already)
                } else {
                    Ok(Retired::DiffersFromBackup)
                }
            }
            (false, false) => Err(Error::Record {
                path: src,
                reason: "it is neither in the project nor in the backup".into(),
                next: format!(
                    "the store holds its verified copy (see `{}`); report this as a bug",
                    self.paths.entries(txid).display()
                ),
            }),
        }
    }

    /// Copies a legacy file into the backup (temp file in the transaction's
    /// directory, where sweeps look, then verified hash and no-replace
    /// rename); the caller makes it durable and removes the source.
    fn copy_to_backup(
        tx_dir: &Path,
        src: &Path,
        bak: &Path,
        s: &crate::manifest::Source,
    ) -> Result<()> {
        // Locked until renamed: a concurrent sweep leaves it alone.
        let (tmp, mut out) = fsx::create_temp(tx_dir, "backup")?;
        let (mut f, _) = open_regular(src)?;
        let (_, hash) = copy::copy_into(&mut f, src, &mut out, &tmp, s.mtime)?;
        if Some(hash.to_hex().to_string()) != s.hash {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::Verify {
                path: src.to_owned(),
                what: "it changed after verification; it was left in place, run migrate again"
                    .into(),
            });
        }
        copy::set_mode_of(&tmp, s.mode)?;
        fsx::rename_noreplace(&tmp, bak)?;
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
        fsx::remove_file_durable(&self.paths.journal())?;
        Ok(())
    }

    // ---- recovery ------------------------------------------------------

    /// Finishes or undoes the transaction a crash left behind; returns what it did.
    pub fn recover(&self) -> Result<Option<String>> {
        // Under the migration lock no live writer has temp files here: any
        // are a crashed writer's (e.g. a journal replaced half-way).
        // Only `migrations/<repo>/` and `<txid>/` hold them: `staging/` and
        // `backup/` hold legacy files under their own names, which may look
        // like temp files.
        let temps = fsx::sweep_temp_files_within(&self.paths.dir, 1)?;
        let Some(journal) = read_journal(&self.paths)? else {
            return self.sweep_debris(temps);
        };
        let txid = journal.txid.clone();
        let what = match journal.phase {
            Phase::Staging => {
                remove_dir_all_if_exists(&self.paths.tx(&txid))?;
                fsx::remove_file_durable(&self.paths.journal())?;
                format!(
                    "undid interrupted migration {txid} (nothing had been published; legacy files untouched)"
                )
            }
            Phase::Publishing | Phase::Retiring => {
                let mut m = read_manifest(&self.paths, &txid)?;
                let mut summary = manifest::summarize(&self.paths.entries(&txid))?;
                if journal.phase == Phase::Publishing {
                    summary = self.publish(&m, &summary)?;
                    set_journal(&self.paths, &txid, Phase::Retiring, false)?;
                }
                self.retire(&mut m, &summary)?;
                write_json(&self.paths.manifest(&txid), &m)?;
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
                format!("finished interrupted migration {txid}")
            }
            Phase::Committed => {
                let m = read_manifest(&self.paths, &txid)?;
                let summary = manifest::summarize(&self.paths.entries(&txid))?;
                self.finish_commit(&m, &summary, None)?;
                format!("cleaned up after migration {txid}")
            }
            Phase::RollingBack => {
                let m = read_manifest(&self.paths, &txid)?;
                self.finish_rollback(&m, journal.force)?;
                format!("finished interrupted rollback of {txid}")
            }
        };
        tracing::warn!("{what}");
        Ok(Some(what))
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
                let _ = remove_dir_all_if_exists(&self.paths.tx(txid));
                let _ = fsx::remove_file_durable(&self.paths.journal());
                return Err(e);
            }
        };
        fault::point("after-verify");
        set_journal(&self.paths, txid, Phase::Publishing, false)?;
        let published = self.publish(&m, &staged)?;
        fault::point("after-publish");
        set_journal(&self.paths, txid, Phase::Retiring, false)?;
        self.retire(&mut m, &published)?;
        write_json(&self.paths.manifest(txid), &m)?;
        fault::point("after-retire");
        Ok(Some((m, published)))
    }

    // ---- rollback ------------------------------------------------------

    /// Checks that rolling `m` back loses nothing; returns changed published files.
    pub fn rollback_check(&self, m: &Manifest) -> Result<Vec<PathBuf>> {
        let backup = self.paths.backup(&m.txid);
        let legacy = &m.legacy_dir.0;
        let root = self.layout().root();
        let mut missing = Vec::new();
        let mut blocked = Vec::new();
        let mut changed = Vec::new();
        manifest::for_each_chunk(&self.paths.entries(&m.txid), |chunk| {
            for s in chunk.iter().flat_map(|e| &e.sources) {
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
        let modes: BTreeMap<&Path, u32> = m
            .dirs
            .iter()
            .map(|(d, mode)| (d.as_path(), *mode))
            .collect();
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
                let dest = join(&legacy, &s.rel)?;
                let same = matches!(probe(&dest)?, AtPath::File(h) if Some(h.to_hex().to_string()) == s.hash);
                if !same {
                    make_dirs(&legacy, s.rel.as_path().parent(), &modes)?;
                    n += 1;
                    restore_one(
                        &join(&backup, &s.rel)?,
                        &restoring.join(n.to_string()),
                        &dest,
                        s,
                    )?;
                }
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
        let displaced = self
            .layout()
            .legacy_dir(&self.repo)
            .join("rollback-displaced")
            .join(&m.txid);
        let mut first = true;
        manifest::for_each_chunk(&entries, |chunk| {
            for o in chunk.iter().flat_map(|e| &e.outputs) {
                let rel = match &o.fate {
                    Fate::Published => &o.dest,
                    Fate::Conflict { alt } => alt,
                    Fate::AlreadyPresent | Fate::Pending => continue,
                };
                let path = join(&root, rel)?;
                match probe(&path)? {
                    AtPath::Missing => {}
                    AtPath::File(h) if Some(h.to_hex().to_string()) == o.hash => {
                        fsx::remove_file_durable(&path)?;
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
        sync(&root)?;
        fault::point("after-rollback-remove");
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
fn restore_one(bak: &Path, tmp: &Path, dest: &Path, s: &Source) -> Result<()> {
    let copy_to = |tmp: &Path| -> Result<()> {
        let (mut f, _) = open_regular(bak)?;
        copy::copy_new(&mut f, bak, tmp, s.mtime)?;
        set_mode(tmp, s.mode)
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

/// Moves each storage directory that still holds exactly its planned
/// storage files (listed again now, so a file an old Prodigy wrote meanwhile
/// is never swept into the backup unseen) into the backup with one rename.
/// Returns the directories moved, relative to the legacy directory.
///
/// "Exactly" is checked without holding the names: the count of files and
/// an order-independent sum of their names' hashes must match the plan's.
fn retire_dirs(m: &Manifest, entries: &Path, legacy: &Path, backup: &Path) -> Result<Vec<PathBuf>> {
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
    for (d, want) in m.pure_dirs.iter().zip(planned) {
        let src = join(legacy, d)?;
        let bak = join(backup, d)?;
        if std::fs::symlink_metadata(&bak).is_ok() {
            continue; // a re-run: the per-file pass finishes what is left
        }
        let mut found = (0u64, 0u128);
        let mut only_files = true;
        let mut stack = vec![d.as_path().to_owned()];
        'walk: while let Some(rel) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(legacy.join(&rel)) else {
                only_files = false;
                break;
            };
            for e in entries {
                let Ok(e) = e else {
                    only_files = false;
                    break 'walk;
                };
                let r = rel.join(e.file_name());
                match e.file_type() {
                    Ok(t) if t.is_dir() => stack.push(r),
                    Ok(t) if t.is_file() => {
                        found.0 += 1;
                        found.1 = found.1.wrapping_add(name_digest(&r));
                    }
                    _ => {
                        only_files = false;
                        break 'walk;
                    }
                }
            }
        }
        if !only_files || found != want {
            continue;
        }
        fsx::create_dir_all(fsx::parent(&bak))?;
        if fsx::rename_noreplace(&src, &bak).is_ok() {
            moved.push(d.as_path().to_owned());
        }
    }
    Ok(moved)
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
    let Ok(serde_json::Value::Object(mut doc)) = serde_json::from_slice(bytes) else {
        return (bytes.to_vec(), Some("not a JSON object".into()));
    };
    let Some(old) = doc.get("path").and_then(serde_json::Value::as_str) else {
        return (bytes.to_vec(), Some("no string `path` field".into()));
    };
    let Some(name) = Path::new(old).file_name() else {
        return (bytes.to_vec(), Some("`path` names no file".into()));
    };
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

/// Creates the missing ancestors of `rel` under `base` with their recorded modes.
fn make_dirs(base: &Path, rel: Option<&Path>, modes: &BTreeMap<&Path, u32>) -> Result<()> {
    let Some(rel) = rel else { return Ok(()) };
    let mut cur = PathBuf::new();
    for c in rel.components() {
        cur.push(c);
        let dir = base.join(&cur);
        if std::fs::symlink_metadata(&dir).is_err() {
            std::fs::create_dir(&dir).map_err(|e| Error::io("create directory", &dir, e))?;
            set_mode(&dir, modes.get(cur.as_path()).copied().unwrap_or(0o755))?;
        }
    }
    Ok(())
}

pub(crate) fn remove_dir_all_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", path, e)),
    }
}

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
//! Durability comes from one [`fsx::Batch`] per transaction, finished once
//! per phase instead of an `fsync` per file as it is written: on Linux
//! [`Batch::finish`](fsx::Batch::finish) is one `syncfs`; elsewhere each
//! file is `fsync`ed (`F_FULLFSYNC` on macOS) as it is written and each
//! directory changed once at the end of the phase. Every change a phase
//! makes goes through the batch (`Tx::batch`) or is recorded in it. The
//! journal change that starts the next phase is only written after the
//! `finish` that makes the previous phase durable.
//!
//! # One engine, two sources
//!
//! The same transaction imports a project's `.prodigy/` ([`Owner::Project`],
//! planned by `plan`) and upgrades the store's own layout 0
//! ([`Owner::Store`], planned by `layout0`). What differs is in [`Owner`]:
//! the lock, where kept-verbatim files go, and the marker (projects only).
//!
//! # The journal's state machine
//!
//! | journal | entered after | a crash is recovered by | the way out |
//! |---|---|---|---|
//! | (none) | — | sweeping temp files and stray staging areas | — |
//! | `staging` | the lock, before planning (durable with staging's `syncfs`) | deleting `<txid>/` (nothing published) | — |
//! | `publishing` | staging's `syncfs` (the reserve with it), verification, the marker | publishing again (found by hash), then retiring | `migrate` finishes, `rollback` undoes |
//! | `retiring` | publishing's `syncfs` | retiring the rest (copies made again) | `migrate` finishes, `rollback` undoes |
//! | `committed` | retiring's `syncfs` and the manifest | writing the report and history, removing the journal | — |
//! | `rolling_back` | a rollback's checks | finishing the rollback | — |
//!
//! # Files
//!
//! `stage`, `verify`, `publish`, `retire`, `recover` (commit and recovery)
//! and `rollback` are the phases, in order; `fs` holds the file-system steps
//! they share (moving by trying, directories without following links).

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
pub(crate) use crate::manifest::Paths;
use crate::manifest::{
    self, Category, Entry, Fate, Fingerprint, HistoryEntry, Journal, Left, Manifest, Output, Phase,
    Produce, RelPath, Source, Summary,
};
use crate::marker;
use crate::plan::rel_in_store;
use crate::progress::{Progress, Step};
use crate::split;

mod fs;
mod publish;
mod recover;
mod retire;
mod rollback;
mod stage;
mod verify;

use fs::{crosses_devices, dir_modes, free_bytes, is_kind, make_dirs, move_file, real_dir};

pub(crate) use fs::{project_owner, remove_dir_all_if_exists, rewrite_metadata_path};

/// Bytes set aside in the store while a migration publishes (see `Tx::reserve`).
const UNDO_RESERVE: usize = 256 * 1024;

fn join(base: &Path, rel: &RelPath) -> Result<PathBuf> {
    Layout::under(base, rel.as_path()).ok_or_else(|| Error::Record {
        path: base.to_owned(),
        reason: format!("`{}` is not a plain relative path", rel.as_path().display()),
        next: "the manifest was edited by hand; restore it from the backup directory".into(),
    })
}

/// Whether `path` is the very file that the source `s` was staged as a
/// hard link to (a layout-0 upgrade, see `stage`): its device and inode.
/// Its bytes may have changed since, written in place by either name.
fn is_linked_inode(path: &Path, s: &Source) -> bool {
    use std::os::unix::fs::MetadataExt;
    s.linked
        && std::fs::symlink_metadata(path).is_ok_and(|m| {
            m.is_file() && (m.dev(), m.ino()) == (s.fingerprint.dev, s.fingerprint.ino)
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
                root: layout.root().to_owned(),
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
    Ok(fsx::write_atomic_with(path, |f| write_pretty(f, value))?)
}

/// [`write_json`], made durable by `batch`'s `finish` instead (see
/// [`fsx::Batch::write_atomic_with`]): only for records that recovery never
/// reads before that `finish`.
fn write_json_in(batch: &fsx::Batch, path: &Path, value: &impl Serialize) -> Result<()> {
    batch.create_dir_all(fsx::parent(path))?;
    Ok(batch.write_atomic_with(path, |f| write_pretty(f, value))?)
}

fn write_pretty(f: &mut std::fs::File, value: &impl Serialize) -> std::io::Result<()> {
    // Streamed: a manifest of a large tree is never built in memory.
    let mut w = std::io::BufWriter::with_capacity(64 * 1024, f);
    serde_json::to_writer_pretty(&mut w, value).map_err(std::io::Error::other)?;
    w.flush()
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
    read_manifest_if_any(paths, txid)?.ok_or_else(|| Error::Record {
        path: paths.manifest(txid),
        reason: "it does not exist".into(),
        next: "the migration's records were removed; nothing can be done automatically".into(),
    })
}

/// The manifest of `txid`, or `None` only if it does not exist: a damaged
/// one, or one of another format version, is an error.
pub(crate) fn read_manifest_if_any(paths: &Paths, txid: &str) -> Result<Option<Manifest>> {
    let path = paths.manifest(txid);
    let Some(m) = read_json::<Manifest>(&path, manifest::DAMAGED)? else {
        return Ok(None);
    };
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
    Ok(Some(m.placed(&paths.root)))
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

/// Directories known to exist, so that creating the parents of thousands
/// of files costs one `mkdir` per directory, not per file.
#[derive(Default)]
struct Dirs(std::collections::HashSet<PathBuf>);

impl Dirs {
    /// Creates `dir` once; made durable by the phase's `batch`.
    fn ensure(&mut self, batch: &fsx::Batch, dir: &Path) -> Result<()> {
        if !self.0.contains(dir) {
            batch.create_dir_all(dir)?;
            self.0.insert(dir.to_owned());
        }
        Ok(())
    }
}

/// Directories (relative paths), found by any path below them: a hash
/// look-up of each of the path's leading parts, where comparing it with
/// every directory cost a component-by-component comparison per directory
/// and file (most of the CPU time of publishing and retiring 2,300 files).
/// The paths are the records' own, made of plain names joined by `/`.
struct DirSet(std::collections::HashMap<Vec<u8>, usize>);

impl DirSet {
    fn new<'a>(dirs: impl IntoIterator<Item = &'a Path>) -> Self {
        use std::os::unix::ffi::OsStrExt;
        Self(
            dirs.into_iter()
                .enumerate()
                .map(|(i, d)| (d.as_os_str().as_bytes().to_owned(), i))
                .collect(),
        )
    }

    /// The index of the outermost directory that `path` is in (or is), if any.
    fn find(&self, path: &Path) -> Option<usize> {
        use std::os::unix::ffi::OsStrExt;
        if self.0.is_empty() {
            return None;
        }
        let bytes = path.as_os_str().as_bytes();
        bytes
            .iter()
            .enumerate()
            .filter(|&(_, &b)| b == b'/')
            .map(|(i, _)| &bytes[..i])
            .chain(std::iter::once(bytes))
            .find_map(|lead| self.0.get(lead).copied())
    }
}

/// The files planned under each of `pure`, from those of each directory
/// (see [`Manifest::pure_dir_files`]).
fn pure_dir_files(
    pure: &[RelPath],
    by_dir: &std::collections::HashMap<PathBuf, (u64, u128)>,
) -> Vec<(u64, String)> {
    let set = DirSet::new(pure.iter().map(RelPath::as_path));
    let mut files = vec![(0u64, 0u128); pure.len()];
    for (dir, (n, sum)) in by_dir {
        if let Some(k) = set.find(dir) {
            files[k].0 += n;
            files[k].1 = files[k].1.wrapping_add(*sum);
        }
    }
    files
        .into_iter()
        .map(|(n, sum)| (n, format!("{sum:032x}")))
        .collect()
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
    /// Makes each phase's changes durable at once (see the module docs).
    /// Created with the store's root before the transaction writes
    /// anything; a phase that writes on another file system (the
    /// project's) covers it first (`fsx::Batch::cover`).
    pub batch: fsx::Batch,
}

impl Tx<'_> {
    fn layout(&self) -> &Layout {
        self.store.layout()
    }

    /// Makes every change of the phase durable (`syncfs` of the file system
    /// holding `path` on Linux, through the descriptor the batch opened
    /// before writing there; see [`fsx::Batch`]).
    fn sync(&self, path: &Path) -> Result<()> {
        Ok(self.batch.finish(path)?)
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

    /// Plans (through `plan`, which hands each entry to the function it is
    /// given) and migrates. Returns `None`, with nothing left behind, when
    /// the plan holds no legacy file.
    pub fn run(
        &self,
        txid: &str,
        plan: impl FnOnce(&mut dyn FnMut(&Entry) -> Result<()>) -> Result<Manifest>,
    ) -> Result<Option<(Manifest, Summary)>> {
        // The journal comes first: everything under `<txid>/` is covered by
        // it. It is made durable by staging's `syncfs`, with the rest of
        // staging: until then nothing outside `<txid>/` has changed, and a
        // power loss that takes it leaves a `<txid>/` that no journal and
        // no history line names, which the next run removes as debris
        // (docs/reliability.md, "Durability barriers").
        write_json_in(
            &self.batch,
            &self.paths.journal(),
            &Journal {
                txid: txid.to_owned(),
                phase: Phase::Staging,
                force: false,
            },
        )?;
        let mut legacy = PathBuf::new();
        let staged = (|| {
            let mut planned = Summary::default();
            // The few logs to split are staged first, on their own thread.
            let mut splits = Vec::new();
            // The planned files of each directory (see `Manifest::pure_dir_files`).
            let mut by_dir: std::collections::HashMap<PathBuf, (u64, u128)> =
                std::collections::HashMap::new();
            self.progress.start(Step::Plan, 0, 0);
            // The transaction's records are written through the batch until
            // staging's `syncfs`, which makes them durable with the staged
            // files: recovery of a transaction still staging deletes them
            // unread (docs/reliability.md, "Durability barriers").
            let mut m =
                manifest::write_entries(&self.paths.entries(txid), Some(&self.batch), |push| {
                    plan(&mut |e| {
                        planned.add(e);
                        if e.source().split {
                            splits.push(e.clone());
                        }
                        for s in &e.sources {
                            let dir = s.rel.as_path().parent().unwrap_or(Path::new(""));
                            let (n, sum) = match by_dir.get_mut(dir) {
                                Some(counts) => counts,
                                None => by_dir.entry(dir.to_owned()).or_default(),
                            };
                            *n += 1;
                            *sum = sum.wrapping_add(retire::name_digest(s.rel.as_path()));
                        }
                        push(e)
                    })
                })?;
            m.pure_dir_files = pure_dir_files(&m.pure_dirs, &by_dir);
            self.progress.finish(Step::Plan);
            legacy.clone_from(&m.legacy_dir.0);
            if planned.sources == 0 {
                return Ok(None);
            }
            tracing::info!(project = %m.project.as_path().display(), files = planned.sources, txid, "migrating legacy storage");
            write_json_in(&self.batch, &self.paths.manifest(txid), &m.to_disk())?;
            fault::point("after-journal");
            let written = m.clone();
            let staged = self.stage(&mut m, &planned, splits)?;
            if m != written {
                // Staging's warnings.
                write_json_in(&self.batch, &self.paths.manifest(txid), &m.to_disk())?;
            }
            self.reserve(txid)?;
            // Verification only reads (the staged copies, the legacy files'
            // metadata), so it runs while staging is made durable: it reads
            // the same bytes before or after the `syncfs` (the page cache),
            // and nothing that depends on either (the marker, the journal's
            // `publishing`) starts before both are done. The `syncfs` stays
            // on this thread, where every other barrier of the transaction
            // is (the fault tests count a thread's calls).
            fault::point("before-verify");
            let (synced, verified) = std::thread::scope(|scope| {
                let verify = scope.spawn(|| self.verify_staged(&m, &staged));
                let synced = self.sync(self.layout().root());
                let verified = verify
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                (synced, verified)
            });
            synced?;
            fault::point("after-staging");
            verified?;
            // The marker names this store in the project before anything is
            // published; writing it shows whether renames reach the project.
            let owner = project_owner(&m.legacy_dir.0);
            let renames = match &self.owner {
                // The store's own documents set aside before an import
                // (`supersede`): within the store, as for `Owner::Store`.
                Owner::Project(_) if m.in_store => true,
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
                return Err(self.full_while_staging(e));
            }
        };
        fault::point("after-verify");
        set_journal(&self.paths, txid, Phase::Publishing, false)?;
        let project = m.project.0.clone();
        let wrap = |e| self.unfinished(txid, &project, e);
        let published = self.publish(&m, &staged).map_err(wrap)?;
        fault::point("after-publish");
        set_journal(&self.paths, txid, Phase::Retiring, false).map_err(wrap)?;
        let written = m.clone();
        // The staging area holds nothing the store does not (every output
        // was published, or found there already, and the fates are
        // durable), and nothing reads it from here on, rollback included:
        // it is removed beside retiring, on a thread of its own.
        // The commit's `syncfs` makes the removal durable; until then a
        // crash leaves what remains to recovery, which removes it too.
        let staging = self.paths.staging(txid);
        std::thread::scope(|scope| {
            let removal = scope.spawn(|| remove_dir_all_if_exists(&staging));
            let retired = self.retire(&mut m, &published);
            let removed = removal
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            retired.and(removed)
        })
        .map_err(wrap)?;
        if m != written {
            // Retiring's warnings (a file changed after verification); as
            // written otherwise, and durable since staging's `syncfs`.
            write_json(&self.paths.manifest(txid), &m.to_disk()).map_err(wrap)?;
        }
        fault::point("after-retire");
        Ok(Some((m, published)))
    }

    /// Sets aside a little space in the store before publishing, which an
    /// undo frees first: undoing must work when finishing failed because
    /// the store's disk is full (it needs a journal and a history line).
    /// Written while staging, and made durable by staging's `syncfs`.
    fn reserve(&self, txid: &str) -> Result<()> {
        let path = self.paths.reserve(txid);
        let _ = std::fs::remove_file(&path);
        let mut f = fsx::create_new(&path)?;
        f.write_all(&vec![0u8; UNDO_RESERVE])
            .map_err(|e| Error::io("write", &path, e))?;
        Ok(self.batch.file_written(&f, &path)?)
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
        // An upgrade of the store is finished by `upgrade` and undone by
        // `downgrade` (`migrate` and `rollback` of the store's root would
        // take it for a project).
        let (finish, undo) = match self.owner {
            Owner::Project(_) => (
                format!("prodigy-storage --home {home} migrate {project_q}"),
                format!("prodigy-storage --home {home} rollback {project_q}"),
            ),
            Owner::Store => (
                format!("prodigy-storage --home {home} upgrade"),
                format!("prodigy-storage --home {home} downgrade"),
            ),
        };
        Error::Unfinished {
            txid: txid.to_owned(),
            project: project.to_owned(),
            finish,
            undo,
            source: Box::new(source),
        }
    }

    /// A disk full while staging, said with what happened and what to do
    /// (it was "cannot write `…/staging/…`: No space left on device").
    fn full_while_staging(&self, e: Error) -> Error {
        let full = matches!(&e, Error::Store(storage_core::Error::Io { source, .. })
            if source.kind() == std::io::ErrorKind::StorageFull || source.raw_os_error() == Some(28));
        if !full {
            return e;
        }
        let (action, command, what) = match &self.owner {
            Owner::Project(_) => (
                "migrate into",
                "migrate",
                "the project's legacy files stay where they are",
            ),
            Owner::Store => (
                "upgrade",
                "upgrade",
                "the store is as it was before the upgrade",
            ),
        };
        Error::Refused {
            action,
            path: self.layout().root().to_owned(),
            reason: format!(
                "the store's file system is full: staging copies the legacy files into the store \
                 before anything is published, and it ran out of space ({e}: No space left on \
                 device). Nothing was published and the staging area was removed; {what}. Free \
                 space on the file system that holds the store (or choose another store with \
                 --home) and run `prodigy-storage {command}` again"
            ),
        }
    }

    /// Refuses to publish when the backup copies (needed where legacy files
    /// cannot be renamed into the store) would not fit, with a margin, on
    /// the store's file system.
    fn check_space(&self, m: &Manifest, staged: &Summary) -> Result<()> {
        let tx = self.paths.tx(&m.txid);
        let need = staged.source_bytes + (staged.source_bytes / 100).max(16 << 20);
        let free = free_bytes(&tx)?;
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
}

#[cfg(test)]
mod tests {
    use super::{DirSet, Path};

    #[test]
    fn a_dir_set_finds_the_outermost_directory_a_path_is_in() {
        let set = DirSet::new(["a/b", "a/b/c/d", "x"].map(Path::new));
        assert_eq!(set.find(Path::new("a/b/c/d/f.json")), Some(0));
        assert_eq!(set.find(Path::new("a/b")), Some(0));
        assert_eq!(set.find(Path::new("x/y/z")), Some(2));
        assert_eq!(set.find(Path::new("a/bc/f")), None, "components, not bytes");
        assert_eq!(set.find(Path::new("a")), None);
        assert_eq!(DirSet::new([]).find(Path::new("a/b")), None);
    }
}

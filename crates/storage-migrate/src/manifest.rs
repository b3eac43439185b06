//! The journal and the manifest: what a migration plans, did, and can undo.
//!
//! The **journal** (`migrations/<repo>/journal.json`) is tiny and names the
//! one transaction in progress and its state; it is replaced atomically at
//! each state change, so a crash leaves the previous or the next state. The
//! **manifest** is two files in `migrations/<repo>/<txid>/`: `manifest.json`
//! holds what is small (the project, the directories, links, warnings) and
//! `entries.jsonl` one line per legacy file (size, mtime, mode, hash) with the
//! outputs made from it (where each goes, its hash, what became of it).
//!
//! # Why the entries are a file, not a vector
//!
//! Every phase streams the entries in chunks of [`CHUNK`] and rewrites the
//! file atomically when it changed them, so a migration's memory does not
//! grow with the number of legacy files: a tree ten times larger costs ten
//! times the disk reads, not ten times the memory. Paths relative to the
//! legacy directory or the store root are stored losslessly, non-UTF-8 ones
//! as hex.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{BufRead, BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use storage_core::RepoKey;
use storage_fs::{Layout, fsx};

use crate::error::{Error, Result};

/// How many entries a phase holds in memory at once.
pub(crate) const CHUNK: usize = 1024;

/// How many warnings (and conflicts) a manifest or report lists; the rest are counted.
pub(crate) const MAX_LISTED: usize = 1000;

/// The manifest format this version writes and reads.
pub(crate) const MANIFEST_VERSION: u32 = 2;

/// A relative path, stored as a string, or as hex bytes when not UTF-8.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelPath(pub PathBuf);

impl Serialize for RelPath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_path(&self.0, s)
    }
}

/// Writes a path losslessly: as a string when it is UTF-8, else as `hex:`
/// and its bytes in lowercase hex. Records and reports use this form for
/// every path, so no path fails to serialise.
pub(crate) fn serialize_path<P: AsRef<Path>, S: serde::Serializer>(
    p: &P,
    s: S,
) -> Result<S::Ok, S::Error> {
    let p = p.as_ref();
    if let Some(text) = p.to_str() {
        return s.serialize_str(text);
    }
    let mut hex = String::from("hex:");
    for b in p.as_os_str().as_bytes() {
        use std::fmt::Write as _;
        let _ = write!(hex, "{b:02x}");
    }
    s.serialize_str(&hex)
}

impl<'de> Deserialize<'de> for RelPath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if let Some(hex) = text.strip_prefix("hex:") {
            let bytes: Option<Vec<u8>> = (0..hex.len())
                .step_by(2)
                .map(|i| {
                    hex.get(i..i + 2)
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                })
                .collect();
            let bytes = bytes.ok_or_else(|| serde::de::Error::custom("bad hex path"))?;
            return Ok(RelPath(PathBuf::from(OsStr::from_bytes(&bytes))));
        }
        Ok(RelPath(PathBuf::from(text)))
    }
}

impl RelPath {
    /// The path.
    #[must_use]
    pub fn as_path(&self) -> &Path {
        &self.0
    }
}

/// The report categories.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// Session state files.
    Sessions,
    /// Event logs (split per job).
    Events,
    /// MapReduce job checkpoints and metadata.
    JobState,
    /// Dead-lettered items and their index.
    DeadLetters,
    /// Workflow checkpoints.
    Checkpoints,
    /// Other legacy storage files, kept verbatim.
    LegacyPreserved,
}

impl Category {
    /// All categories, in report order.
    pub const ALL: [Category; 6] = [
        Category::Sessions,
        Category::Events,
        Category::JobState,
        Category::DeadLetters,
        Category::Checkpoints,
        Category::LegacyPreserved,
    ];

    /// A label for people.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Category::Sessions => "sessions",
            Category::Events => "events",
            Category::JobState => "job state",
            Category::DeadLetters => "dead letters",
            Category::Checkpoints => "checkpoints",
            Category::LegacyPreserved => "preserved legacy files",
        }
    }
}

/// One legacy storage file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// Path relative to the legacy directory.
    pub rel: RelPath,
    /// Size at planning time.
    pub size: u64,
    /// Modification time (seconds, nanoseconds since the epoch).
    pub mtime: (i64, u32),
    /// Permission bits.
    pub mode: u32,
    /// BLAKE3 of the content, filled in while staging.
    pub hash: Option<String>,
    /// Whether this is a global event log that is split per job.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub split: bool,
    /// For a split log: its lines, counted while staging (or previewing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_lines: Option<u64>,
    /// Inode, size and change time at planning: any write changes the
    /// change time, so an equal fingerprint after staging proves the file
    /// was not written while it was copied.
    pub fingerprint: Fingerprint,
    /// Staged as a hard link to this very file (a layout-0 upgrade, see
    /// `protocol::stage`): `fingerprint` was taken after linking, and from
    /// then on it is compared without its change time, which the store's
    /// own links and renames of the shared inode move (see `retire::now_of`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub linked: bool,
    /// Where retiring left it, when that is not the backup (`None`: in the
    /// backup, as verified).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left: Option<Left>,
    /// For a split log an earlier migration imported and left in the
    /// project (it grew after verification, [`Left::InProject`]): the bytes
    /// at its start whose lines that migration imported (up to the last
    /// whole line of the version it verified, checked unchanged while
    /// planning). Only what follows is split; the whole file goes into
    /// the backup as usual.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip: Option<u64>,
}

/// Where a legacy file that did not go into the backup as verified is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "left", rename_all = "snake_case")]
pub enum Left {
    /// It changed after verification (an older Prodigy still writing): the
    /// newer version stays in the project, the store holds the verified one.
    InProject,
    /// It changed after verification and the project has a new file of that
    /// name: the changed version was put at `at` (relative to the store root).
    Displaced {
        /// Where it is.
        at: RelPath,
    },
    /// It left the project before it could be backed up (another store or a
    /// person moved it): the store holds its verified copy.
    Gone,
}

/// What identifies one version of a file without reading it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
    /// Size.
    pub size: u64,
    /// Change time (seconds, nanoseconds); no user call can set it back.
    pub ctime: (i64, i64),
}

impl Fingerprint {
    /// The fingerprint of `meta`.
    #[must_use]
    pub fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// How an output is produced from its source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Produce {
    /// A byte-for-byte copy.
    Copy,
    /// `metadata.json` with its `path` pointed at the new checkpoint location.
    RewriteMetadataPath,
    /// The lines of a global event log that belong to `job` (or to no job).
    SplitEvents {
        /// The job, or `None` for lines with no valid job id.
        job: Option<String>,
    },
}

/// What publishing did with an output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Fate {
    /// Not published yet.
    Pending,
    /// Published by this migration at `dest`.
    Published,
    /// `dest` already held identical content; nothing was written.
    AlreadyPresent,
    /// `dest` held different content; this output was published at `alt`.
    Conflict {
        /// Where this output went instead (relative to the store root).
        alt: RelPath,
    },
}

/// One file to publish into the store, made from its entry's first source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    /// Destination relative to the store root.
    pub dest: RelPath,
    /// How it is produced.
    pub produce: Produce,
    /// Report category.
    pub category: Category,
    /// Size and hash, filled in while staging.
    pub size: Option<u64>,
    /// BLAKE3 of the content.
    pub hash: Option<String>,
    /// Lines, for split event logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lines: Option<u64>,
    /// What publishing did.
    pub fate: Fate,
}

/// A link, FIFO, socket or device found in the legacy tree: reported, left alone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Special {
    /// Path relative to the legacy directory.
    pub rel: RelPath,
    /// `symlink`, `fifo`, `socket`, `block device`, `char device`.
    pub kind: String,
    /// A link's target, as stored in the link (any path, kept losslessly).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<RelPath>,
}

/// One line of `entries.jsonl`: a legacy file and what is published from it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Its place in the walk of the legacy tree (names a split log's outputs).
    pub index: usize,
    /// The legacy file read; after it, identical copies (sessions) stored once with it.
    pub sources: Vec<Source>,
    /// The files published from the first source (split logs get theirs while staging).
    pub outputs: Vec<Output>,
}

impl Entry {
    /// The legacy file the outputs are made from.
    #[must_use]
    pub fn source(&self) -> &Source {
        &self.sources[0]
    }
}

/// The files of one repository's migrations (`migrations/<repo>/`).
#[derive(Clone, Debug)]
pub(crate) struct Paths {
    pub dir: PathBuf,
    /// The store's root, where it is now: what a manifest of the store's
    /// own files ([`Manifest::in_store`]) is read against.
    pub root: PathBuf,
}

impl Paths {
    pub fn new(layout: &Layout, repo: &RepoKey) -> Self {
        Self {
            dir: layout.migrations_dir(repo),
            root: layout.root().to_owned(),
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

/// The small part of a transaction's records (`manifest.json`); the legacy
/// files and outputs are in `entries.jsonl` beside it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version of this file.
    #[serde(rename = "manifest_version")]
    pub format_version: u32,
    /// The transaction id (`YYYYmmddTHHMMSSZ-<hex>`), sortable by time.
    pub txid: String,
    /// The project directory (canonical).
    pub project: RelPath,
    /// The legacy directory (canonical).
    pub legacy_dir: RelPath,
    /// The repository key.
    pub repo: String,
    /// When it was planned (RFC 3339).
    pub created_at: String,
    /// Modes of the legacy directories that held sources (to recreate on rollback).
    pub dirs: Vec<(RelPath, u32)>,
    /// Storage directories holding only storage files, moved whole when retiring.
    #[serde(default)]
    pub pure_dirs: Vec<RelPath>,
    /// For each of `pure_dirs`, what retiring checks it holds before and
    /// after moving it whole: the count of planned files under it and the
    /// sum of 128 bits of their paths' BLAKE3 (hex), taken while planning.
    /// Empty in records written before it was kept here: retiring then
    /// reads the entries for it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pure_dir_files: Vec<(u64, String)>,
    /// Directories of the old layout that exist whatever happens (an
    /// upgrade records every one, so a downgrade removes only directories
    /// the upgrade created).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kept_dirs: Vec<RelPath>,
    /// Links and special files, reported and left in place.
    pub specials: Vec<Special>,
    /// How many of the user's own files were left untouched.
    pub user_files: u64,
    /// Things worth knowing that did not stop the migration (the first [`MAX_LISTED`]).
    pub warnings: Vec<String>,
    /// Warnings beyond those listed.
    #[serde(default)]
    pub warnings_omitted: u64,
    /// When one `migrate` imported several legacy directories (the
    /// project's and sub-directories'), one transaction each: the id of the
    /// first, the same in all of them, so that `rollback` undoes them together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// The transaction moves the store's own files (the store's older
    /// copies set aside before an import): `legacy_dir` is the store
    /// itself. An upgrade's (`repo` is `<repo>`) is so too, and its
    /// `project` as well. Such paths are written as `.` and read as the
    /// store where it is now, so that a store copied or moved undoes and
    /// finishes its own transactions, never the original's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub in_store: bool,
}

impl Manifest {
    /// Whether `legacy_dir` and `project` are the store itself.
    fn store_relative(&self) -> (bool, bool) {
        let upgrade = self.repo == crate::layout0::REPO_LABEL;
        (upgrade || self.in_store, upgrade)
    }

    /// What is written to disk: the store's own paths as `.`.
    #[must_use]
    pub(crate) fn to_disk(&self) -> Manifest {
        let mut m = self.clone();
        let (legacy, project) = self.store_relative();
        if legacy {
            m.legacy_dir = RelPath(PathBuf::from("."));
        }
        if project {
            m.project = RelPath(PathBuf::from("."));
        }
        m
    }

    /// A manifest read from disk, its store-relative paths placed at the
    /// store's `root` where it is now (canonical, as they were recorded;
    /// records written before they were relative named the root they were
    /// made in, which a copy or a move makes wrong).
    #[must_use]
    pub(crate) fn placed(mut self, root: &Path) -> Manifest {
        let (legacy, project) = self.store_relative();
        if legacy || project {
            let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_owned());
            if legacy {
                self.legacy_dir = RelPath(root.clone());
            }
            if project {
                self.project = RelPath(root);
            }
        }
        self
    }
    /// The manifest of a new transaction, with nothing planned yet.
    #[must_use]
    pub fn new(txid: &str, project: &Path, legacy_dir: &Path, repo: &str) -> Self {
        Self {
            format_version: MANIFEST_VERSION,
            txid: txid.to_owned(),
            project: RelPath(project.to_owned()),
            legacy_dir: RelPath(legacy_dir.to_owned()),
            repo: repo.to_owned(),
            created_at: storage_fs::time::now(),
            dirs: Vec::new(),
            pure_dirs: Vec::new(),
            pure_dir_files: Vec::new(),
            kept_dirs: Vec::new(),
            specials: Vec::new(),
            user_files: 0,
            warnings: Vec::new(),
            warnings_omitted: 0,
            run: None,
            in_store: false,
        }
    }

    /// Records a warning, listing at most [`MAX_LISTED`] of them.
    pub fn warn(&mut self, warning: String) {
        if self.warnings.len() < MAX_LISTED {
            self.warnings.push(warning);
        } else {
            self.warnings_omitted += 1;
        }
    }
}

/// Totals over a manifest's entries, gathered in one pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Legacy storage files.
    pub sources: u64,
    /// Their bytes.
    pub source_bytes: u64,
    /// Outputs.
    pub outputs: u64,
    /// Files and bytes per category.
    pub categories: BTreeMap<Category, (u64, u64)>,
    /// Outputs published at their destination or beside it (conflicts).
    pub published: u64,
    /// Outputs whose destination already held the same content.
    pub already_present: u64,
    /// Identical copies stored once with another file.
    pub duplicates: u64,
    /// Conflicts as (destination, where this output went instead), the first [`MAX_LISTED`].
    pub conflicts: Vec<(RelPath, RelPath)>,
    /// Conflicts beyond those listed.
    pub conflicts_omitted: u64,
}

impl Summary {
    /// Adds one entry.
    pub fn add(&mut self, e: &Entry) {
        self.sources += e.sources.len() as u64;
        self.source_bytes += e.sources.iter().map(|s| s.size).sum::<u64>();
        self.duplicates += e.sources.len().saturating_sub(1) as u64;
        for o in &e.outputs {
            self.outputs += 1;
            let c = self.categories.entry(o.category).or_default();
            c.0 += 1;
            c.1 += o.size.unwrap_or(0);
            match &o.fate {
                Fate::Published => self.published += 1,
                Fate::AlreadyPresent => self.already_present += 1,
                Fate::Conflict { alt } => {
                    self.published += 1;
                    if self.conflicts.len() < MAX_LISTED {
                        self.conflicts.push((o.dest.clone(), alt.clone()));
                    } else {
                        self.conflicts_omitted += 1;
                    }
                }
                Fate::Pending => {}
            }
        }
    }
}

/// The next step for damaged records of a transaction.
pub(crate) const DAMAGED: &str =
    "the migration's records are damaged; the backup directory beside them holds the legacy files";

fn damaged(path: &Path, reason: String) -> Error {
    Error::Record {
        path: path.to_owned(),
        reason,
        next: DAMAGED.into(),
    }
}

/// Reads `entries.jsonl` a chunk at a time.
pub(crate) struct EntryReader {
    path: PathBuf,
    reader: std::io::BufReader<std::fs::File>,
    number: u64,
}

impl EntryReader {
    /// Opens the entries at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => damaged(path, "it does not exist".into()),
            _ => Error::io("open", path, e),
        })?;
        Ok(Self {
            path: path.to_owned(),
            reader: std::io::BufReader::with_capacity(64 * 1024, file),
            number: 0,
        })
    }

    /// The next entries, at most `max`; empty at the end.
    ///
    /// The lines are read first and parsed after, on every core when there
    /// are many: the entries are read back whole by five phases of a
    /// transaction, and parsing them was a fifth of an upgrade's CPU time.
    pub fn next_chunk(&mut self, max: usize) -> Result<Vec<Entry>> {
        let mut lines: Vec<Vec<u8>> = Vec::with_capacity(max.min(CHUNK));
        let first = self.number + 1;
        while lines.len() < max {
            let mut line = Vec::new();
            let n = self
                .reader
                .read_until(b'\n', &mut line)
                .map_err(|e| Error::io("read", &self.path, e))?;
            if n == 0 {
                break;
            }
            self.number += 1;
            lines.push(line);
        }
        // Written whole and renamed into place: a bad line is damage, never a torn write.
        let parse = |(i, line): (usize, &Vec<u8>)| -> Result<Entry> {
            serde_json::from_slice(line)
                .map_err(|e| damaged(&self.path, format!("line {}: {e}", first + i as u64)))
        };
        let threads = std::thread::available_parallelism()
            .map_or(1, std::num::NonZero::get)
            .clamp(1, 4);
        if threads == 1 || lines.len() < 256 {
            return lines.iter().enumerate().map(parse).collect();
        }
        let per = lines.len().div_ceil(threads);
        std::thread::scope(|scope| {
            let parts: Vec<_> = lines
                .chunks(per)
                .enumerate()
                .map(|(k, part)| {
                    scope.spawn(move || {
                        part.iter()
                            .enumerate()
                            .map(|(i, line)| parse((k * per + i, line)))
                            .collect::<Result<Vec<Entry>>>()
                    })
                })
                .collect();
            let mut out = Vec::with_capacity(lines.len());
            for part in parts {
                out.extend(
                    part.join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?,
                );
            }
            Ok(out)
        })
    }
}

/// Calls `f` with each chunk of the entries at `path`, in order.
pub(crate) fn for_each_chunk(path: &Path, mut f: impl FnMut(&[Entry]) -> Result<()>) -> Result<()> {
    let mut reader = EntryReader::open(path)?;
    loop {
        let chunk = reader.next_chunk(CHUNK)?;
        if chunk.is_empty() {
            return Ok(());
        }
        f(&chunk)?;
    }
}

/// The totals of the entries at `path`.
pub(crate) fn summarize(path: &Path) -> Result<Summary> {
    let mut s = Summary::default();
    for_each_chunk(path, |chunk| {
        for e in chunk {
            s.add(e);
        }
        Ok(())
    })?;
    Ok(s)
}

/// Writes entries to `path` atomically and durably: `fill` gets a function
/// that appends one entry. Returns what `fill` returned.
///
/// With a `batch`, the new file is made durable by the batch's `finish`
/// instead of `fsync`s of its own (see [`fsx::Batch::write_atomic_with`]):
/// only for entries that recovery never reads before that `finish` (those
/// of a transaction that is still staging, which recovery deletes).
pub(crate) fn write_entries<T>(
    path: &Path,
    batch: Option<&fsx::Batch>,
    fill: impl FnOnce(&mut dyn FnMut(&Entry) -> Result<()>) -> Result<T>,
) -> Result<T> {
    match batch {
        Some(batch) => batch.create_dir_all(fsx::parent(path))?,
        None => fsx::create_dir_all(fsx::parent(path))?,
    }
    let put = |write: Writer<'_>| match batch {
        Some(batch) => batch.write_atomic_with(path, write),
        None => fsx::write_atomic_with(path, write),
    };
    write_entries_via(path, put, fill).map(|(t, ())| t)
}

/// What writes the new entries into the file it is given.
type Writer<'a> = Box<dyn FnOnce(&mut std::fs::File) -> std::io::Result<()> + 'a>;

/// Writes entries through `put`, which creates the new file, calls the
/// writer it is given on it, and puts it in place (or beside); returns what
/// `fill` and `put` returned.
fn write_entries_via<T, W>(
    path: &Path,
    put: impl FnOnce(Writer<'_>) -> storage_core::Result<W>,
    fill: impl FnOnce(&mut dyn FnMut(&Entry) -> Result<()>) -> Result<T>,
) -> Result<(T, W)> {
    let mut outcome: Option<Result<T>> = None;
    let write = |file: &mut std::fs::File| {
        let mut w = BufWriter::with_capacity(64 * 1024, file);
        let mut push = |e: &Entry| -> Result<()> {
            serde_json::to_writer(&mut w, e)
                .map_err(|e| Error::io("write", path, std::io::Error::other(e)))?;
            w.write_all(b"\n").map_err(|e| Error::io("write", path, e))
        };
        let r = fill(&mut push);
        let failed = r.is_err();
        outcome = Some(r);
        if failed {
            return Err(std::io::Error::other("stopped"));
        }
        w.flush()
    };
    let written = put(Box::new(write)).map_err(Error::from);
    match outcome {
        Some(Ok(t)) => written.map(|w| (t, w)),
        Some(Err(e)) => Err(e),
        // `fill` never ran: creating the temp file failed.
        None => written.and_then(|_| {
            Err(Error::io(
                "write",
                path,
                std::io::Error::other("nothing was written"),
            ))
        }),
    }
}

/// Rewrites the entries at `path` a chunk at a time through `f`, atomically
/// and durably, when `f` changed any of them (it says whether it changed a
/// chunk); when it changed none (a retire that put every file into the
/// backup as verified), the file is left as it is: nothing is written, and
/// it is as durable as it was.
pub(crate) fn rewrite_entries(
    path: &Path,
    f: impl FnMut(&mut [Entry]) -> Result<bool>,
) -> Result<()> {
    rewrite_entries_via(path, |write| fsx::write_atomic_with(path, write), f).map(|_| ())
}

/// [`rewrite_entries`], the new file written beside the old one and made
/// durable by `batch`'s `finish` (see [`fsx::Batch::write_beside`]): the
/// caller renames it into place after that `finish`, so that the entries
/// are the old ones or the new ones, durably, whatever happens, and one
/// `syncfs` makes both them and the phase's other changes durable.
/// `None` when `f` changed nothing.
pub(crate) fn rewrite_entries_beside(
    path: &Path,
    batch: &fsx::Batch,
    f: impl FnMut(&mut [Entry]) -> Result<bool>,
) -> Result<Option<fsx::Beside>> {
    rewrite_entries_via(path, |write| batch.write_beside(path, write), f)
}

fn rewrite_entries_via<W>(
    path: &Path,
    put: impl FnOnce(Writer<'_>) -> storage_core::Result<W>,
    mut f: impl FnMut(&mut [Entry]) -> Result<bool>,
) -> Result<Option<W>> {
    let mut reader = EntryReader::open(path)?;
    // Read only, until a chunk comes back changed.
    let mut unchanged = 0;
    let changed = loop {
        let mut chunk = reader.next_chunk(CHUNK)?;
        if chunk.is_empty() {
            return Ok(None);
        }
        if f(&mut chunk)? {
            break chunk;
        }
        unchanged += 1;
    };
    let ((), put) = write_entries_via(path, put, |push| {
        // The chunks before it, read again as they are.
        let mut again = EntryReader::open(path)?;
        for _ in 0..unchanged {
            for e in &again.next_chunk(CHUNK)? {
                push(e)?;
            }
        }
        for e in &changed {
            push(e)?;
        }
        loop {
            let mut chunk = reader.next_chunk(CHUNK)?;
            if chunk.is_empty() {
                return Ok(());
            }
            f(&mut chunk)?;
            for e in &chunk {
                push(e)?;
            }
        }
    })?;
    Ok(Some(put))
}

/// The state of the one transaction in progress for a repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Copying into staging and verifying: nothing is published; recovery undoes.
    Staging,
    /// Publishing verified files: recovery finishes publishing.
    Publishing,
    /// Moving legacy files into the backup: recovery finishes.
    Retiring,
    /// Done; recovery only removes staging and the journal.
    Committed,
    /// A rollback is restoring legacy files: recovery finishes the rollback.
    RollingBack,
}

/// `migrations/<repo>/journal.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// The transaction.
    pub txid: String,
    /// Its state.
    pub phase: Phase,
    /// For a rollback: whether changed published files are moved aside.
    #[serde(default)]
    pub force: bool,
}

/// One line of `migrations/<repo>/history.jsonl`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The transaction.
    pub txid: String,
    /// `migrated` or `rolled_back`.
    pub event: String,
    /// When (RFC 3339).
    pub at: String,
    /// Files published (migrated) or restored (rolled back).
    pub files: u64,
    /// Bytes of legacy storage concerned.
    pub bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_utf8_paths_round_trip() {
        let raw = OsStr::from_bytes(b"cache/\xff\xfe.json");
        let p = RelPath(PathBuf::from(raw));
        let text = serde_json::to_string(&p).expect("ser");
        assert_eq!(
            text,
            r#""hex:63616368652fff fe2e6a736f6e""#.replace(' ', "")
        );
        let back: RelPath = serde_json::from_str(&text).expect("de");
        assert_eq!(back, p);
        let plain: RelPath = serde_json::from_str(r#""a/b.json""#).expect("de");
        assert_eq!(plain.0, PathBuf::from("a/b.json"));
    }
}

#[cfg(test)]
mod entry_tests {
    use super::*;

    fn entry(index: usize, fate: Fate) -> Entry {
        Entry {
            index,
            sources: vec![Source {
                rel: RelPath(PathBuf::from(format!("cache/{index}.json"))),
                size: 3,
                mtime: (1, 2),
                mode: 0o644,
                hash: None,
                split: false,
                split_lines: None,
                fingerprint: Fingerprint::default(),
                linked: false,
                left: None,
                skip: None,
            }],
            outputs: vec![Output {
                dest: RelPath(PathBuf::from(format!("legacy/r/cache/{index}.json"))),
                produce: Produce::Copy,
                category: Category::LegacyPreserved,
                size: Some(3),
                hash: None,
                lines: None,
                fate,
            }],
        }
    }

    /// Chunks are parsed on several threads: the entries come back in
    /// order, and a damaged line is named by its own number.
    #[test]
    fn entries_parsed_in_parallel_keep_their_order_and_line_numbers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("entries.jsonl");
        let n = CHUNK + 300;
        write_entries(&path, None, |push| {
            for i in 0..n {
                push(&entry(i, Fate::Pending))?;
            }
            Ok(())
        })
        .expect("write");
        let mut seen = Vec::new();
        for_each_chunk(&path, |chunk| {
            seen.extend(chunk.iter().map(|e| e.index));
            Ok(())
        })
        .expect("read");
        assert_eq!(seen, (0..n).collect::<Vec<_>>());
        let text = std::fs::read_to_string(&path).expect("read");
        let mut lines: Vec<&str> = text.lines().collect();
        lines[CHUNK + 200] = "{\"index\": oops";
        std::fs::write(&path, lines.join("\n") + "\n").expect("damage");
        let err = for_each_chunk(&path, |_| Ok(())).expect_err("damaged");
        let want = format!("line {}:", CHUNK + 201);
        assert!(err.to_string().contains(&want), "{err}");
    }

    #[test]
    fn entries_stream_across_chunks_and_rewrite_in_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("entries.jsonl");
        let n = CHUNK * 2 + 7;
        write_entries(&path, None, |push| {
            for i in 0..n {
                push(&entry(i, Fate::Pending))?;
            }
            Ok(())
        })
        .expect("write");
        let mut chunks = Vec::new();
        rewrite_entries(&path, |chunk| {
            chunks.push(chunk.len());
            for e in chunk.iter_mut() {
                e.outputs[0].fate = Fate::Published;
            }
            Ok(true)
        })
        .expect("rewrite");
        assert_eq!(chunks, [CHUNK, CHUNK, 7]);
        let s = summarize(&path).expect("summary");
        assert_eq!(
            (s.sources, s.outputs, s.published),
            (n as u64, n as u64, n as u64)
        );
        let mut seen = Vec::new();
        for_each_chunk(&path, |chunk| {
            seen.extend(chunk.iter().map(|e| e.index));
            Ok(())
        })
        .expect("read");
        assert_eq!(seen, (0..n).collect::<Vec<_>>(), "order kept");
    }

    #[test]
    fn a_rewrite_that_changes_nothing_leaves_the_file_and_one_that_changes_a_late_chunk_keeps_the_rest()
     {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("entries.jsonl");
        let n = CHUNK * 2 + 7;
        write_entries(&path, None, |push| {
            for i in 0..n {
                push(&entry(i, Fate::Pending))?;
            }
            Ok(())
        })
        .expect("write");
        let before = std::fs::read(&path).expect("read");
        let inode = std::fs::metadata(&path).expect("stat").ino();
        let mut seen = 0;
        rewrite_entries(&path, |chunk| {
            seen += chunk.len();
            Ok(false)
        })
        .expect("rewrite");
        assert_eq!(seen, n, "every entry went through");
        assert_eq!(
            std::fs::metadata(&path).expect("stat").ino(),
            inode,
            "not replaced"
        );
        // Only the last chunk changes: the ones before it are kept as they were.
        rewrite_entries(&path, |chunk| {
            let mut changed = false;
            for e in chunk.iter_mut().filter(|e| e.index == n - 1) {
                e.outputs[0].fate = Fate::Published;
                changed = true;
            }
            Ok(changed)
        })
        .expect("rewrite");
        let after = std::fs::read(&path).expect("read");
        let lines = |b: &[u8]| {
            b.split(|&c| c == b'\n')
                .map(<[u8]>::to_vec)
                .collect::<Vec<_>>()
        };
        let (old, new) = (lines(&before), lines(&after));
        assert_eq!(old.len(), new.len());
        assert_eq!(
            old[..n - 1],
            new[..n - 1],
            "the unchanged entries, byte for byte"
        );
        assert_ne!(old[n - 1], new[n - 1]);
        let mut fates = Vec::new();
        for_each_chunk(&path, |chunk| {
            fates.extend(chunk.iter().map(|e| (e.index, e.outputs[0].fate.clone())));
            Ok(())
        })
        .expect("read");
        assert_eq!(fates.len(), n);
        assert!(fates.iter().enumerate().all(|(i, (index, fate))| *index == i
            && (*fate == Fate::Published) == (i == n - 1)));
    }

    #[test]
    fn a_failed_rewrite_leaves_the_entries_as_they_were() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("entries.jsonl");
        write_entries(&path, None, |push| push(&entry(0, Fate::Pending))).expect("write");
        let before = std::fs::read(&path).expect("read");
        let err = rewrite_entries(&path, |chunk| {
            chunk[0].outputs[0].fate = Fate::Published;
            Err(Error::io("stop at", &path, std::io::Error::other("test")))
        })
        .expect_err("fails");
        assert!(
            err.to_string().contains("stop at"),
            "the callback's error: {err}"
        );
        assert_eq!(std::fs::read(&path).expect("read"), before);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["entries.jsonl"], "no temp file left");
    }

    #[test]
    fn a_damaged_entry_is_an_error_that_names_the_file_and_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("entries.jsonl");
        let mut text = serde_json::to_string(&entry(0, Fate::Pending)).expect("ser");
        text.push_str("\n{\"index\": 1, \"sources\": [\n");
        std::fs::write(&path, text).expect("write");
        let err = summarize(&path).expect_err("damaged");
        let msg = err.to_string();
        assert!(
            msg.contains("entries.jsonl") && msg.contains("line 2"),
            "{msg}"
        );
    }

    #[test]
    fn warnings_and_conflicts_past_the_limit_are_counted_not_listed() {
        let mut m = Manifest::new("t", Path::new("/p"), Path::new("/p/.prodigy"), "r");
        for i in 0..MAX_LISTED + 5 {
            m.warn(format!("warning {i}"));
        }
        assert_eq!((m.warnings.len(), m.warnings_omitted), (MAX_LISTED, 5));
        let mut s = Summary::default();
        for i in 0..MAX_LISTED + 3 {
            s.add(&entry(
                i,
                Fate::Conflict {
                    alt: RelPath(PathBuf::from("alt")),
                },
            ));
        }
        assert_eq!((s.conflicts.len(), s.conflicts_omitted), (MAX_LISTED, 3));
        assert_eq!(s.published, (MAX_LISTED + 3) as u64);
    }

    #[test]
    fn a_manifest_of_another_format_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = Paths {
            dir: dir.path().to_owned(),
            root: dir.path().to_owned(),
        };
        std::fs::create_dir_all(paths.tx("t")).expect("mkdir");
        let mut doc = serde_json::json!({
            "manifest_version": 1, "txid": "t", "project": "/p", "legacy_dir": "/p/.prodigy",
            "repo": "r", "created_at": "now", "dirs": [], "specials": [], "user_files": 0,
            "warnings": [], "sources": [], "outputs": []
        });
        std::fs::write(paths.manifest("t"), doc.to_string()).expect("write");
        let err = crate::protocol::read_manifest(&paths, "t").expect_err("old format");
        assert!(err.to_string().contains("format version 1"), "{err}");
        doc["manifest_version"] = MANIFEST_VERSION.into();
        std::fs::write(paths.manifest("t"), doc.to_string()).expect("write");
        crate::protocol::read_manifest(&paths, "t").expect("this format");
    }
}

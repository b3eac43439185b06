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
    Category, Fate, HistoryEntry, Journal, Manifest, Output, Phase, Produce, RelPath, Special,
};
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
    RelPath(
        alt.strip_prefix(layout.root())
            .expect("under root")
            .to_owned(),
    )
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    fsx::create_dir_all(fsx::parent(path))?;
    let bytes = serde_json::to_vec_pretty(value).expect("migration records serialize");
    Ok(fsx::write_atomic(path, &bytes)?)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path, next: &str) -> Result<Option<T>> {
    let Some(bytes) = fsx::read_optional(path)? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
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
    read_json(&paths.manifest(txid), "the migration's records are damaged; the backup directory beside it holds the legacy files")?
        .ok_or_else(|| Error::Record {
            path: paths.manifest(txid),
            reason: "it does not exist".into(),
            next: "the migration's records were removed; nothing can be done automatically".into(),
        })
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

    /// Copies every source into staging, filling in sizes and hashes.
    pub fn stage(&self, m: &mut Manifest) -> Result<()> {
        let legacy = m.legacy_dir.0.clone();
        let staging = self.paths.staging(&m.txid);
        fsx::create_dir_all(&staging)?;
        let total_bytes: u64 = m.sources.iter().map(|s| s.size).sum();
        self.progress
            .start(Step::Copy, m.sources.len() as u64, total_bytes);
        // Outputs grouped by source: a split log produces several from one pass.
        let mut by_source: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (i, o) in m.outputs.iter().enumerate() {
            by_source.entry(o.source).or_default().push(i);
        }
        let mut first = true;
        for (src, outs) in by_source {
            let rel = m.sources[src].rel.clone();
            let path = join(&legacy, &rel)?;
            let mtime = m.sources[src].mtime;
            let src_hash = match &m.outputs[outs[0]].produce {
                Produce::Copy => {
                    let dest = join(&staging, &m.outputs[outs[0]].dest)?;
                    fsx::create_dir_all(fsx::parent(&dest))?;
                    let (mut f, _) = open_regular(&path)?;
                    let (size, hash) = copy::copy_new(&mut f, &path, &dest, mtime)?;
                    let o = &mut m.outputs[outs[0]];
                    o.size = Some(size);
                    o.hash = Some(hash.to_hex().to_string());
                    hash
                }
                Produce::RewriteMetadataPath => {
                    let (mut f, _) = open_regular(&path)?;
                    let mut bytes = Vec::new();
                    f.read_to_end(&mut bytes)
                        .map_err(|e| Error::io("read", &path, e))?;
                    let out = &m.outputs[outs[0]];
                    let new_dir = fsx::parent(&join(self.layout().root(), &out.dest)?).to_owned();
                    let (rewritten, warning) = rewrite_metadata_path(&bytes, &new_dir);
                    if let Some(w) = warning {
                        m.warnings.push(format!(
                            "`{}`: {w}; copied verbatim",
                            rel.as_path().display()
                        ));
                    }
                    let dest = join(&staging, &out.dest)?;
                    fsx::create_dir_all(fsx::parent(&dest))?;
                    let hash = copy::write_new(&dest, &rewritten, mtime)?;
                    let o = &mut m.outputs[outs[0]];
                    o.size = Some(rewritten.len() as u64);
                    o.hash = Some(hash.to_hex().to_string());
                    blake3::hash(&bytes)
                }
                Produce::SplitEvents { .. } => Self::stage_split(m, &path, &staging, &outs, mtime)?,
            };
            m.sources[src].hash = Some(src_hash.to_hex().to_string());
            // Identical duplicates (sessions) are hashed so verification covers them.
            for o in &outs {
                for d in m.outputs[*o].duplicates.clone() {
                    let dpath = join(&legacy, &m.sources[d].rel)?;
                    let (_, h) = copy::hash_file(&dpath)?;
                    m.sources[d].hash = Some(h.to_hex().to_string());
                }
            }
            self.progress.advance(1, m.sources[src].size);
            if first {
                fault::point("mid-staging");
                first = false;
            }
        }
        self.progress.finish(Step::Copy);
        Ok(())
    }

    fn stage_split(
        m: &mut Manifest,
        path: &Path,
        staging: &Path,
        outs: &[usize],
        mtime: (i64, u32),
    ) -> Result<blake3::Hash> {
        let mut dests: BTreeMap<Option<String>, (usize, PathBuf)> = BTreeMap::new();
        for &o in outs {
            if let Produce::SplitEvents { job } = &m.outputs[o].produce {
                dests.insert(job.clone(), (o, join(staging, &m.outputs[o].dest)?));
            }
        }
        let mut writers: BTreeMap<Option<String>, BufWriter<std::fs::File>> = BTreeMap::new();
        let mut whole = blake3::Hasher::new();
        let (file, _) = open_regular(path)?;
        let totals = split::for_each_line(file, path, |route, line| {
            whole.update(line);
            let key = route.as_ref().map(ToString::to_string);
            let (_, dest) = dests.get(&key).ok_or_else(|| Error::Verify {
                path: path.to_owned(),
                what: "a line routes to a job that planning did not see (the log changed during migration)".into(),
            })?;
            if !writers.contains_key(&key) {
                fsx::create_dir_all(fsx::parent(dest))?;
                writers.insert(
                    key.clone(),
                    BufWriter::with_capacity(64 * 1024, fsx::create_new(dest)?),
                );
            }
            let w = writers.get_mut(&key).expect("inserted above");
            w.write_all(line).map_err(|e| Error::io("write", dest, e))
        })?;
        for (key, w) in writers {
            let dest = &dests[&key].1;
            let f = w
                .into_inner()
                .map_err(|e| Error::io("write", dest, e.into_error()))?;
            copy::set_mtime(&f, dest, mtime)?;
        }
        for (route, t) in totals {
            let key = route.map(|j| j.to_string());
            let (o, _) = dests.get(&key).ok_or_else(|| Error::Verify {
                path: path.to_owned(),
                what: "the log changed during migration".into(),
            })?;
            let out = &mut m.outputs[*o];
            out.size = Some(t.bytes);
            out.lines = Some(t.lines);
            out.hash = t.hash.map(|h| h.to_hex().to_string());
        }
        // A planned route with no lines now means the log changed under us.
        if m.outputs
            .iter()
            .enumerate()
            .any(|(i, o)| outs.contains(&i) && o.hash.is_none())
        {
            return Err(Error::Verify {
                path: path.to_owned(),
                what: "the log changed during migration".into(),
            });
        }
        Ok(whole.finalize())
    }

    // ---- verification --------------------------------------------------

    /// Proves the staged files equal to the legacy files (see the module docs).
    pub fn verify_staged(&self, m: &Manifest) -> Result<()> {
        let legacy = &m.legacy_dir.0;
        let staging = self.paths.staging(&m.txid);
        let total: u64 = m.sources.iter().map(|s| s.size).sum::<u64>()
            + m.outputs.iter().filter_map(|o| o.size).sum::<u64>();
        self.progress.start(
            Step::Verify,
            (m.sources.len() + m.outputs.len()) as u64,
            total,
        );
        if fault::armed(&Fault::CorruptStaged)
            && let Some(o) = m.outputs.first()
        {
            corrupt_one_byte(&join(&staging, &o.dest)?)?;
        }
        for s in &m.sources {
            let path = join(legacy, &s.rel)?;
            let (size, hash) = copy::hash_file(&path)?;
            if Some(hash.to_hex().to_string()) != s.hash {
                return Err(Error::Verify {
                    path,
                    what: format!(
                        "the legacy file changed while it was being migrated (size {} then {size}); \
                         stop the Prodigy process that writes it and run again",
                        s.size
                    ),
                });
            }
            self.progress.advance(1, size);
        }
        for o in &m.outputs {
            let path = join(&staging, &o.dest)?;
            let (size, hash) = copy::hash_file(&path)?;
            if Some(hash.to_hex().to_string()) != o.hash || Some(size) != o.size {
                return Err(Error::Verify {
                    path,
                    what: "the staged copy does not match what was read from the legacy file"
                        .into(),
                });
            }
            if o.produce == Produce::Copy && o.hash != m.sources[o.source].hash {
                return Err(Error::Verify {
                    path,
                    what: "the staged copy differs from its legacy file".into(),
                });
            }
            self.progress.advance(1, size);
        }
        self.verify_transforms(m)?;
        self.progress.finish(Step::Verify);
        Ok(())
    }

    /// Re-runs the metadata rewrite and the log split over the sources and
    /// compares with what was staged: every log line accounted for exactly once.
    fn verify_transforms(&self, m: &Manifest) -> Result<()> {
        let legacy = &m.legacy_dir.0;
        let mut splits: BTreeMap<usize, Vec<&Output>> = BTreeMap::new();
        for o in &m.outputs {
            match &o.produce {
                Produce::SplitEvents { .. } => splits.entry(o.source).or_default().push(o),
                Produce::RewriteMetadataPath => {
                    let path = join(legacy, &m.sources[o.source].rel)?;
                    let bytes = std::fs::read(&path).map_err(|e| Error::io("read", &path, e))?;
                    let new_dir = fsx::parent(&join(self.layout().root(), &o.dest)?).to_owned();
                    let (expected, _) = rewrite_metadata_path(&bytes, &new_dir);
                    if Some(blake3::hash(&expected).to_hex().to_string()) != o.hash {
                        return Err(Error::Verify {
                            path: join(&self.paths.staging(&m.txid), &o.dest)?,
                            what: "the rewritten metadata does not match its legacy file".into(),
                        });
                    }
                }
                Produce::Copy => {}
            }
        }
        for (src, outs) in splits {
            let path = join(legacy, &m.sources[src].rel)?;
            let (file, _) = open_regular(&path)?;
            let totals = split::for_each_line(file, &path, |_, _| Ok(()))?;
            let lines: u64 = totals.values().map(|t| t.lines).sum();
            let staged_lines: u64 = outs.iter().filter_map(|o| o.lines).sum();
            let all_match = totals.len() == outs.len()
                && outs.iter().all(|o| {
                    let Produce::SplitEvents { job } = &o.produce else {
                        return false;
                    };
                    totals.iter().any(|(r, t)| {
                        r.as_ref().map(ToString::to_string) == *job
                            && t.hash.map(|h| h.to_hex().to_string()) == o.hash
                    })
                });
            if !all_match || lines != staged_lines {
                return Err(Error::Verify {
                    path,
                    what: format!(
                        "the per-job logs do not account for every line exactly once ({lines} source lines, {staged_lines} staged)"
                    ),
                });
            }
        }
        Ok(())
    }

    // ---- publishing ----------------------------------------------------

    /// Moves every staged output into the store without overwriting anything.
    pub fn publish(&self, m: &mut Manifest) -> Result<()> {
        let staging = self.paths.staging(&m.txid);
        let root = self.layout().root().to_owned();
        self.progress
            .start(Step::Publish, m.outputs.len() as u64, 0);
        for i in 0..m.outputs.len() {
            let o = &m.outputs[i];
            let staged = join(&staging, &o.dest)?;
            let target = join(&root, &o.dest)?;
            let alt_rel = conflict_alt(self.layout(), &self.repo, &m.txid, &o.dest);
            let alt = join(&root, &alt_rel)?;
            let want = o.hash.clone();
            let same =
                |at: AtPath| matches!(at, AtPath::File(h) if Some(h.to_hex().to_string()) == want);
            let fate = if std::fs::symlink_metadata(&staged).is_ok() {
                match probe(&target)? {
                    AtPath::Missing => {
                        fsx::create_dir_all(fsx::parent(&target))?;
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
                    next:
                        "the legacy files are untouched; remove the journal and run migrate again"
                            .into(),
                });
            };
            m.outputs[i].fate = fate;
            self.progress.advance(1, 0);
            if i == 0 {
                fault::point("mid-publish");
            }
        }
        sync(&root)?;
        self.progress.finish(Step::Publish);
        Ok(())
    }

    // ---- retiring ------------------------------------------------------

    /// Moves the legacy storage files into the backup (verified when copied).
    pub fn retire(&self, m: &mut Manifest) -> Result<()> {
        let legacy = m.legacy_dir.0.clone();
        let backup = self.paths.backup(&m.txid);
        fsx::create_dir_all(&backup)?;
        let cross_device = !same_device(&legacy, &backup);
        self.progress.start(Step::Retire, m.sources.len() as u64, 0);
        for i in 0..m.sources.len() {
            let s = m.sources[i].clone();
            let src = join(&legacy, &s.rel)?;
            let bak = join(&backup, &s.rel)?;
            fsx::create_dir_all(fsx::parent(&bak))?;
            let src_here = std::fs::symlink_metadata(&src).is_ok();
            let bak_here = std::fs::symlink_metadata(&bak).is_ok();
            match (src_here, bak_here) {
                (true, false) if !cross_device => match fsx::rename_noreplace(&src, &bak) {
                    Ok(()) => {
                        let meta = std::fs::symlink_metadata(&bak)
                            .map_err(|e| Error::io("stat", &bak, e))?;
                        if meta.len() != s.size || copy::mtime_of(&meta) != s.mtime {
                            m.warnings.push(format!(
                                "`{}` changed after it was verified; the store holds the verified version, the backup the newer one",
                                s.rel.as_path().display()
                            ));
                        }
                    }
                    Err(storage_core::Error::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::CrossesDevices =>
                    {
                        Self::copy_to_backup(&src, &bak, &s)?;
                    }
                    Err(e) => return Err(e.into()),
                },
                (true, false) => Self::copy_to_backup(&src, &bak, &s)?,
                (false, true) => {}
                (true, true) => {
                    // A crash after the backup copy was complete: the backup is
                    // whole (renamed into place); drop the source only if equal.
                    let (_, hb) = copy::hash_file(&bak)?;
                    let (_, hs) = copy::hash_file(&src)?;
                    if hb == hs {
                        fsx::remove_file_durable(&src)?;
                    } else {
                        m.warnings.push(format!(
                            "`{}` differs from its backup; both kept",
                            s.rel.as_path().display()
                        ));
                    }
                }
                (false, false) => {
                    return Err(Error::Record {
                        path: src,
                        reason: "it is neither in the project nor in the backup".into(),
                        next: format!(
                            "the store holds its verified copy (see `{}`); report this as a bug",
                            self.paths.manifest(&m.txid).display()
                        ),
                    });
                }
            }
            set_private(&bak)?;
            self.progress.advance(1, s.size);
            if i == 0 {
                fault::point("mid-retire");
            }
        }
        // Remove the storage directories that this emptied, deepest first.
        let mut dirs: Vec<&RelPath> = m.dirs.iter().map(|(d, _)| d).collect();
        dirs.sort_by_key(|d| std::cmp::Reverse(d.as_path().components().count()));
        for d in dirs {
            if crate::legacy::is_storage_dir(
                &d.as_path()
                    .iter()
                    .filter_map(|c| c.to_str())
                    .collect::<Vec<_>>(),
            ) {
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

    fn copy_to_backup(src: &Path, bak: &Path, s: &crate::manifest::Source) -> Result<()> {
        let tmp = fsx::parent(bak).join(fsx::temp_name("backup"));
        let (mut f, _) = open_regular(src)?;
        let (_, hash) = copy::copy_new(&mut f, src, &tmp, s.mtime)?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io("fsync", &tmp, e))?;
        if Some(hash.to_hex().to_string()) != s.hash {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::Verify {
                path: src.to_owned(),
                what: "it changed after verification; it was left in place, run migrate again"
                    .into(),
            });
        }
        fsx::rename_noreplace(&tmp, bak)?;
        fsx::fsync_dir(fsx::parent(bak))?;
        fsx::remove_file_durable(src)?;
        Ok(())
    }

    // ---- commit --------------------------------------------------------

    pub fn commit(&self, m: &Manifest, report: &crate::MigrationReport) -> Result<()> {
        set_journal(&self.paths, &m.txid, Phase::Committed, false)?;
        fault::point("after-commit-journal");
        self.finish_commit(m, Some(report))
    }

    fn finish_commit(&self, m: &Manifest, report: Option<&crate::MigrationReport>) -> Result<()> {
        if let Some(r) = report {
            write_json(&self.paths.report(&m.txid), r)?;
        }
        append_history(
            &self.paths,
            &HistoryEntry {
                txid: m.txid.clone(),
                event: "migrated".into(),
                at: storage_fs::time::now(),
                files: m.outputs.len() as u64,
                bytes: m.sources.iter().map(|s| s.size).sum(),
            },
        )?;
        remove_dir_all_if_exists(&self.paths.staging(&m.txid))?;
        fsx::remove_file_durable(&self.paths.journal())?;
        Ok(())
    }

    // ---- recovery ------------------------------------------------------

    /// Finishes or undoes the transaction a crash left behind; returns what it did.
    pub fn recover(&self) -> Result<Option<String>> {
        let Some(journal) = read_journal(&self.paths)? else {
            return Ok(None);
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
                if journal.phase == Phase::Publishing {
                    self.publish(&mut m)?;
                    write_json(&self.paths.manifest(&txid), &m)?;
                    set_journal(&self.paths, &txid, Phase::Retiring, false)?;
                }
                self.retire(&mut m)?;
                write_json(&self.paths.manifest(&txid), &m)?;
                let report = crate::report::from_manifest(
                    self.store,
                    &self.paths,
                    &m,
                    crate::Outcome::Migrated,
                    None,
                );
                set_journal(&self.paths, &txid, Phase::Committed, false)?;
                self.finish_commit(&m, Some(&report))?;
                format!("finished interrupted migration {txid}")
            }
            Phase::Committed => {
                let m = read_manifest(&self.paths, &txid)?;
                self.finish_commit(&m, None)?;
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

    // ---- the whole migration -------------------------------------------

    pub fn run(&self, m: &mut Manifest) -> Result<()> {
        set_journal(&self.paths, &m.txid, Phase::Staging, false)?;
        write_json(&self.paths.manifest(&m.txid), &*m)?;
        fault::point("after-journal");
        let staged = (|| {
            self.stage(m)?;
            sync(self.layout().root())?;
            write_json(&self.paths.manifest(&m.txid), &*m)?;
            fault::point("after-staging");
            self.verify_staged(m)
        })();
        if let Err(e) = staged {
            // Nothing is published: undo the staging area, keep the legacy tree.
            let _ = remove_dir_all_if_exists(&self.paths.tx(&m.txid));
            let _ = fsx::remove_file_durable(&self.paths.journal());
            return Err(e);
        }
        fault::point("after-verify");
        set_journal(&self.paths, &m.txid, Phase::Publishing, false)?;
        self.publish(m)?;
        write_json(&self.paths.manifest(&m.txid), &*m)?;
        fault::point("after-publish");
        set_journal(&self.paths, &m.txid, Phase::Retiring, false)?;
        self.retire(m)?;
        write_json(&self.paths.manifest(&m.txid), &*m)?;
        fault::point("after-retire");
        Ok(())
    }

    // ---- rollback ------------------------------------------------------

    /// Checks that rolling `m` back loses nothing; returns changed published files.
    pub fn rollback_check(&self, m: &Manifest) -> Result<Vec<PathBuf>> {
        let backup = self.paths.backup(&m.txid);
        let legacy = &m.legacy_dir.0;
        let mut missing = Vec::new();
        let mut blocked = Vec::new();
        for s in &m.sources {
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
        let root = self.layout().root();
        let mut changed = Vec::new();
        for o in &m.outputs {
            let rel = match &o.fate {
                Fate::Published => &o.dest,
                Fate::Conflict { alt } => alt,
                Fate::AlreadyPresent | Fate::Pending => continue,
            };
            let path = join(root, rel)?;
            if !matches!(probe(&path)?, AtPath::File(h) if Some(h.to_hex().to_string()) == o.hash) {
                changed.push(path);
            }
        }
        Ok(changed)
    }

    pub fn start_rollback(&self, m: &Manifest, force: bool) -> Result<()> {
        set_journal(&self.paths, &m.txid, Phase::RollingBack, force)?;
        self.finish_rollback(m, force)
    }

    fn finish_rollback(&self, m: &Manifest, force: bool) -> Result<()> {
        let backup = self.paths.backup(&m.txid);
        let legacy = m.legacy_dir.0.clone();
        let modes: BTreeMap<&Path, u32> = m
            .dirs
            .iter()
            .map(|(d, mode)| (d.as_path(), *mode))
            .collect();
        self.progress.start(
            Step::Restore,
            m.sources.len() as u64,
            m.sources.iter().map(|s| s.size).sum(),
        );
        for (i, s) in m.sources.iter().enumerate() {
            let dest = join(&legacy, &s.rel)?;
            let same =
                matches!(probe(&dest)?, AtPath::File(h) if Some(h.to_hex().to_string()) == s.hash);
            if !same {
                make_dirs(&legacy, s.rel.as_path().parent(), &modes)?;
                let bak = join(&backup, &s.rel)?;
                let tmp = fsx::parent(&dest).join(fsx::temp_name("restore"));
                let (mut f, _) = open_regular(&bak)?;
                copy::copy_new(&mut f, &bak, &tmp, s.mtime)?;
                set_mode(&tmp, s.mode)?;
                fsx::rename_noreplace(&tmp, &dest)?;
            }
            self.progress.advance(1, s.size);
            if i == 0 {
                fault::point("mid-rollback-restore");
            }
        }
        sync(&legacy)?;
        self.progress.finish(Step::Restore);
        fault::point("after-rollback-restore");
        let root = self.layout().root().to_owned();
        let displaced = self
            .layout()
            .legacy_dir(&self.repo)
            .join("rollback-displaced")
            .join(&m.txid);
        for (i, o) in m.outputs.iter().enumerate() {
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
            if i == 0 {
                fault::point("mid-rollback-remove");
            }
        }
        sync(&root)?;
        fault::point("after-rollback-remove");
        append_history(
            &self.paths,
            &HistoryEntry {
                txid: m.txid.clone(),
                event: "rolled_back".into(),
                at: storage_fs::time::now(),
                files: m.sources.len() as u64,
                bytes: m.sources.iter().map(|s| s.size).sum(),
            },
        )?;
        fsx::remove_file_durable(&self.paths.journal())?;
        Ok(())
    }
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

fn set_private(path: &Path) -> Result<()> {
    set_mode(path, fsx::FILE_MODE)
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

/// The specials of a manifest, for reports.
pub(crate) fn specials(m: &Manifest) -> Vec<Special> {
    m.specials.clone()
}

/// Totals per category, from the manifest's outputs.
pub(crate) fn category_totals(m: &Manifest) -> BTreeMap<Category, (u64, u64)> {
    let mut t: BTreeMap<Category, (u64, u64)> = BTreeMap::new();
    for o in &m.outputs {
        let e = t.entry(o.category).or_default();
        e.0 += 1;
        e.1 += o.size.unwrap_or(0);
    }
    t
}

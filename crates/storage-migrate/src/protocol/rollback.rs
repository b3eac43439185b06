//! Rollback (and downgrade): the legacy files restored from the backup,
//! what the transaction published removed; never through a link.

use std::collections::BTreeSet;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;

use rustix::fs::{Mode, OFlags};

use super::{
    AtPath, BTreeMap, Error, Fate, HistoryEntry, Manifest, Owner, Path, PathBuf, Phase, Produce,
    RelPath, Result, Source, Step, Summary, Tx, append_history, conflict_alt, copy, dir_modes,
    fault, fsx, is_linked_inode, join, manifest, marker, open_regular, probe, project_owner,
    read_manifest, real_dir, remove_dir_all_if_exists, set_journal,
};

/// Restores the backup `bak` of transaction `txid` as `name` in the directory `parent` (opened
/// without following links, see [`open_dir_beneath`]): copied, with the
/// source's mode and mtime, to `restoring/<tmp>` (this rollback's own
/// directory), then linked into place without replacing anything (a link
/// fails where the name exists) and the temp name removed. Where `parent`
/// is on another file system (a mount inside `.prodigy/`), the copy is
/// made beside the target instead, through the same directory descriptor,
/// and `fsync`ed (no `syncfs` of the project covers another mount).
pub(super) fn restore_one(
    batch: &fsx::Batch,
    (bak, txid): (&Path, &str),
    (restoring, tmp): (&OwnedFd, &str),
    (parent, name): (&OwnedFd, &std::ffi::OsStr),
    dest: &Path,
    s: &Source,
    owner: Option<(u32, u32)>,
) -> Result<()> {
    use rustix::fs::{AtFlags, linkat, unlinkat};
    let io = |op: &'static str, path: &Path| {
        let path = path.to_owned();
        move |e: rustix::io::Errno| Error::io(op, path, e.into())
    };
    let fill = |dir: &OwnedFd, file: &str| -> Result<()> {
        let (mut from, _) = open_regular(bak)?;
        let fd = rustix::fs::openat(
            dir,
            file,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::RUSR | Mode::WUSR,
        )
        .map_err(io("create", dest))?;
        let mut out = std::fs::File::from(fd);
        copy::copy_into(&mut from, bak, &mut out, dest, s.mtime)?;
        // std's mode is a `u32` on every Unix (rustix's is a `u16` on macOS).
        out.set_permissions(std::fs::Permissions::from_mode(s.mode))
            .map_err(|e| Error::io("set permissions of", dest, e))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&out, Some(uid), Some(gid))
                .map_err(|e| Error::io("change the owner of", dest, e))?;
        }
        Ok(batch.file_written(&out, dest)?)
    };
    fill(restoring, tmp)?;
    match linkat(restoring, tmp, parent, name, AtFlags::empty()) {
        Ok(()) => {
            unlinkat(restoring, tmp, AtFlags::empty()).map_err(io("remove", dest))?;
            batch.dir_changed(fsx::parent(dest));
            Ok(())
        }
        Err(rustix::io::Errno::XDEV) => {
            unlinkat(restoring, tmp, AtFlags::empty()).map_err(io("remove", dest))?;
            let beside = beside_name(txid, name);
            // A crashed run's temp file of that name is ours: gone first.
            let _ = unlinkat(parent, beside.as_str(), AtFlags::empty());
            fill(parent, &beside)?;
            let f = rustix::fs::openat(
                parent,
                beside.as_str(),
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(io("open", dest))?;
            rustix::fs::fsync(&f).map_err(io("fsync", dest))?;
            let linked = linkat(parent, beside.as_str(), parent, name, AtFlags::empty())
                .map_err(io("link into place", dest));
            unlinkat(parent, beside.as_str(), AtFlags::empty()).map_err(io("remove", dest))?;
            linked?;
            rustix::fs::fsync(parent).map_err(io("fsync directory", dest))?;
            Ok(())
        }
        Err(e) => {
            let _ = unlinkat(restoring, tmp, AtFlags::empty());
            Err(io("link into place", dest)(e))
        }
    }
}

/// What rolling back did besides restoring: the files it removed from the
/// store, and the ones it left because they changed since they were
/// published (without `--force`; with it they are moved aside instead).
#[derive(Debug)]
pub(crate) struct Undone {
    /// The totals of the transaction's entries.
    pub summary: Summary,
    /// Files removed from the store.
    pub removed: u64,
    /// Files it had published that changed since: left where they are.
    pub kept: Vec<PathBuf>,
}

/// The temp name beside the restored file `name` where it is copied in
/// across file systems: the same for every run of the rollback of `txid`
/// (not the process's id), so that a run finishing a killed one finds and
/// removes what the killed one left (the name's hash keeps it short).
fn beside_name(txid: &str, name: &std::ffi::OsStr) -> String {
    let h = blake3::hash(std::os::unix::ffi::OsStrExt::as_bytes(name)).to_hex();
    format!(".prodigy-storage-restore-{txid}-{}", &h[..16])
}

/// Opens `base`, then each component of `rel` below it, as directories and
/// **without following any link** (`openat` with `O_NOFOLLOW|O_DIRECTORY`
/// at every step), creating missing ones with their recorded mode (and,
/// run as root, the owner of `.prodigy`). A link or a file where a
/// directory belongs is refused by name, whenever it appears.
pub(super) fn open_dir_beneath(
    base: &Path,
    rel: Option<&Path>,
    modes: &BTreeMap<PathBuf, u32>,
    owner: Option<(u32, u32)>,
) -> Result<OwnedFd> {
    use rustix::io::Errno;
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let refuse = |path: PathBuf, e: Errno| {
        if e == Errno::LOOP || e == Errno::NOTDIR {
            Error::Link { path }
        } else {
            Error::io("open", path, e.into())
        }
    };
    let mut fd = rustix::fs::openat(rustix::fs::CWD, base, flags, Mode::empty())
        .map_err(|e| refuse(base.to_owned(), e))?;
    let Some(rel) = rel else { return Ok(fd) };
    let mut cur = PathBuf::new();
    for c in rel.components() {
        cur.push(c);
        let name = c.as_os_str();
        let next = match rustix::fs::openat(&fd, name, flags, Mode::empty()) {
            Ok(next) => next,
            Err(Errno::NOENT) => {
                let mode = modes.get(&cur).copied().unwrap_or(0o755);
                // Private until its recorded mode is set on the descriptor.
                match rustix::fs::mkdirat(&fd, name, Mode::RWXU) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(Error::io("create directory", base.join(&cur), e.into())),
                }
                let next = rustix::fs::openat(&fd, name, flags, Mode::empty())
                    .map_err(|e| refuse(base.join(&cur), e))?;
                let next = std::fs::File::from(next);
                next.set_permissions(std::fs::Permissions::from_mode(mode))
                    .map_err(|e| Error::io("set permissions of", base.join(&cur), e))?;
                let next = OwnedFd::from(next);
                if let Some((uid, gid)) = owner {
                    std::os::unix::fs::fchown(&next, Some(uid), Some(gid))
                        .map_err(|e| Error::io("change the owner of", base.join(&cur), e))?;
                }
                rustix::fs::fsync(&fd)
                    .map_err(|e| Error::io("fsync directory", base.join(&cur), e.into()))?;
                next
            }
            Err(e) => return Err(refuse(base.join(&cur), e)),
        };
        fd = next;
    }
    Ok(fd)
}

/// Removes the empty ancestors of `rel` under `base` that are not
/// recorded directories of the old layout, deepest first (best effort:
/// stops at the first that is not empty).
pub(super) fn remove_empty_parents(
    batch: &fsx::Batch,
    base: &Path,
    rel: &Path,
    recorded: &BTreeMap<PathBuf, u32>,
    kept: &std::collections::HashSet<&Path>,
) {
    let mut p = rel.parent();
    while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
        if recorded.contains_key(d) || kept.contains(d) {
            return;
        }
        match std::fs::remove_dir(base.join(d)) {
            // Gone already (an earlier, interrupted run): look further up.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(_) => return,
            Ok(()) => batch.dir_changed(fsx::parent(&base.join(d))),
        }
        p = d.parent();
    }
}

/// Checks that every existing ancestor of `rel` under `base` is a real
/// directory (a missing one is created later, without following links).
pub(super) fn no_links(base: &Path, rel: Option<&Path>) -> Result<()> {
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

impl Tx<'_> {
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
        self.rollback_check_keeping(m, false)
            .map(|(changed, _)| changed)
    }

    /// [`Tx::rollback_check`]; with `keep_newer` (a downgrade), a legacy
    /// path that holds other content again (an older Prodigy, still
    /// running, wrote a newer version there) is not a refusal: the newer
    /// version stays, the original stays in the backup (as rolling back
    /// does for one written during the rollback), and the path is returned
    /// second.
    pub fn rollback_check_keeping(
        &self,
        m: &Manifest,
        keep_newer: bool,
    ) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
        self.rollback_check_freeing(m, keep_newer, &BTreeSet::new())
    }

    /// [`Tx::rollback_check_keeping`] for a transaction of a run whose
    /// later transactions are undone first: `freed` (relative to the store
    /// root) is what those publish and their rollback removes, so a
    /// document this one set aside (`supersede`) may be restored there.
    pub fn rollback_check_freeing(
        &self,
        m: &Manifest,
        keep_newer: bool,
        freed: &BTreeSet<PathBuf>,
    ) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
        // A project's transaction over the store's own files: the store's
        // older copies set aside (`supersede`), not a layout-0 upgrade.
        let in_store = m.in_store;
        let backup = self.paths.backup(&m.txid);
        let legacy = &m.legacy_dir.0;
        real_dir(legacy)?;
        let root = self.layout().root();
        let mut missing = Vec::new();
        let mut blocked = Vec::new();
        let mut not_files = Vec::new();
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
                if is_linked_inode(&join(legacy, &s.rel)?, s) {
                    // Never retired (an upgrade interrupted before), and
                    // written in place since: the layout-0 name holds it.
                    continue;
                }
                match at_legacy {
                    AtPath::Missing => {}
                    _ if in_store && freed.contains(s.rel.as_path()) => {}
                    // A link, a directory or a special file: no legacy
                    // file, and `migrate` never takes one (it follows no
                    // link): only moving it away frees the place.
                    AtPath::NotAFile => not_files.push(join(legacy, &s.rel)?),
                    // The store wrote that document again after it was set
                    // aside (`supersede`): a change since, which `--force`
                    // moves aside, not a legacy file to import.
                    AtPath::File(_) if in_store => changed.push(join(legacy, &s.rel)?),
                    AtPath::File(_) => blocked.push(join(legacy, &s.rel)?),
                }
                // The backup is the inode a layout-0 upgrade linked to its
                // published name (see `stage`), now with other bytes: written
                // in place through that name. Not damaged but changed (the
                // published name is reported as changed); the write left no
                // other version, so a forced downgrade restores this one.
                if !same(probe(&bak)?) && !is_linked_inode(&bak, s) {
                    missing.push(bak);
                }
            }
            for o in chunk.iter().flat_map(|e| &e.outputs) {
                let pending;
                let rel = match &o.fate {
                    Fate::Published => &o.dest,
                    Fate::Conflict { alt } => alt,
                    Fate::AlreadyPresent => continue,
                    // An unfinished migration: what left staging was published.
                    Fate::Pending => match self.published_pending(m, o)? {
                        Some(at) => {
                            pending = at;
                            &pending
                        }
                        None => continue,
                    },
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
        if !not_files.is_empty() {
            return Err(Error::RollbackRefused {
                reason: format!(
                    "{} place(s) where a legacy file is to be restored hold a link, a directory or a \
                     special file now, first `{}`; migration never takes those, so move them away \
                     (nothing of the legacy files is in them) and run the rollback again",
                    not_files.len(),
                    not_files[0].display()
                ),
                paths: not_files,
            });
        }
        if keep_newer {
            return Ok((changed, blocked));
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
        Ok((changed, Vec::new()))
    }

    /// Rolls `m` back; returns the totals of its entries.
    pub fn start_rollback(&self, m: &Manifest, force: bool) -> Result<Undone> {
        set_journal(&self.paths, &m.txid, Phase::RollingBack, force)?;
        self.finish_rollback(m, force, false)
    }

    /// Restores and removes; `distrust` (finishing an interrupted rollback)
    /// makes every restored copy again rather than trust it.
    pub(super) fn finish_rollback(
        &self,
        m: &Manifest,
        force: bool,
        distrust: bool,
    ) -> Result<Undone> {
        let backup = self.paths.backup(&m.txid);
        let entries = self.paths.entries(&m.txid);
        let legacy = m.legacy_dir.0.clone();
        real_dir(&legacy)?;
        let in_store = m.in_store;
        let displaced_area = self
            .owner
            .area(self.layout())
            .join("rollback-displaced")
            .join(&m.txid);
        // Restored files are written on the project's file system and made
        // durable by its `syncfs`: its descriptor is opened before they are
        // (see `fsx::Batch::cover`).
        self.batch.cover(&legacy)?;
        let modes = dir_modes(m);
        let kept_dirs: std::collections::HashSet<&Path> =
            m.kept_dirs.iter().map(RelPath::as_path).collect();
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
        let restoring_fd = open_dir_beneath(&restoring, None, &modes, None)?;
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
                let parent = open_dir_beneath(&legacy, s.rel.as_path().parent(), &modes, owner)?;
                if distrust {
                    // Finishing a killed rollback: its temp file beside
                    // this one, if it left one (a copy across file systems).
                    let name = s.rel.as_path().file_name().unwrap_or_default();
                    let _ = rustix::fs::unlinkat(
                        &parent,
                        beside_name(&m.txid, name).as_str(),
                        rustix::fs::AtFlags::empty(),
                    );
                }
                let bak = join(&backup, &s.rel)?;
                let at_dest = probe(&dest)?;
                let same =
                    matches!(at_dest, AtPath::File(h) if Some(h.to_hex().to_string()) == s.hash);
                if !same && at_dest != AtPath::Missing {
                    if in_store && force && matches!(at_dest, AtPath::File(_)) {
                        // The store's own newer write of a document set
                        // aside: moved aside as `--force` asked, and the
                        // older copy restored in its place.
                        let aside = join(&displaced_area, &s.rel)?;
                        fsx::create_dir_all(fsx::parent(&aside))?;
                        self.batch.rename_noreplace(&dest, &aside)?;
                    } else {
                        // Written since this rollback began (the checks
                        // before it found nothing there): an old Prodigy's
                        // newer version, which stays; the backup keeps the
                        // original.
                        tracing::warn!(file = %dest.display(), "written since the rollback began; the newer version is kept, the original stays in the backup");
                        self.progress.advance(1, s.size);
                        continue;
                    }
                }
                // Finishing an interrupted rollback, a restored copy is made
                // again: its `syncfs` may have failed, and a retried sync
                // proves nothing. (Only where the backup still holds it.)
                let redo = same
                    && distrust
                    && matches!(probe(&bak)?, AtPath::File(h) if Some(h.to_hex().to_string()) == s.hash);
                if redo {
                    fsx::remove_file_durable(&dest)?;
                }
                if !same || redo {
                    n += 1;
                    let name = s.rel.as_path().file_name().unwrap_or_default();
                    restore_one(
                        &self.batch,
                        (&bak, &m.txid),
                        (&restoring_fd, &n.to_string()),
                        (&parent, name),
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
        self.sync(&legacy)?;
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
        let (mut removed, mut kept) = (0u64, Vec::new());
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
                    Fate::Pending => match self.published_pending(m, o)? {
                        Some(at) => at,
                        None => continue,
                    },
                };
                let rel = &rel;
                let path = join(&root, rel)?;
                // A downgrade gives back the exact layout-0 tree: directories
                // the upgrade created go too (also when a crashed run already
                // removed the file).
                let tidy = || {
                    if matches!(self.owner, Owner::Store) {
                        remove_empty_parents(&self.batch, &root, rel.as_path(), &modes, &kept_dirs);
                    }
                };
                match probe(&path)? {
                    AtPath::Missing => tidy(),
                    AtPath::File(h) if Some(h.to_hex().to_string()) == o.hash => {
                        fsx::remove_file_durable(&path)?;
                        removed += 1;
                        tracing::debug!(file = %rel.as_path().display(), "removed from the store");
                        tidy();
                    }
                    _ if force => {
                        let aside = join(&displaced, rel)?;
                        fsx::create_dir_all(fsx::parent(&aside))?;
                        self.batch.rename_noreplace(&path, &aside)?;
                    }
                    _ => {
                        tracing::warn!(path = %path.display(), "changed since migration; left in place");
                        kept.push(path);
                    }
                }
                if std::mem::take(&mut first) {
                    fault::point("mid-rollback-remove");
                }
            }
            Ok(())
        })?;
        remove_dir_all_if_exists(&staging)?;
        self.batch.dir_changed(fsx::parent(&staging));
        self.release_reserve(&m.txid)?;
        self.sync(&root)?;
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
        Ok(Undone {
            summary,
            removed,
            kept,
        })
    }

    /// Where an output of an unfinished transaction (its fate still
    /// `Pending`) was published, relative to the store root: `None` while
    /// staging still holds it (never published), or if nothing is at
    /// either place. Publishing moves it out of staging to its
    /// destination, or to its conflict place where the destination was
    /// taken: the conflict place if a file is there, else the destination.
    pub(super) fn published_pending(
        &self,
        m: &Manifest,
        o: &manifest::Output,
    ) -> Result<Option<RelPath>> {
        let staging = self.paths.staging(&m.txid);
        if std::fs::symlink_metadata(join(&staging, &o.dest)?).is_ok() {
            return Ok(None);
        }
        let root = self.layout().root();
        let alt = conflict_alt(
            self.layout(),
            &self.owner.area(self.layout()),
            &m.txid,
            &o.dest,
        );
        let ours = |rel: &RelPath| -> Result<bool> {
            Ok(
                matches!(probe(&join(root, rel)?)?, AtPath::File(h) if Some(h.to_hex().to_string()) == o.hash),
            )
        };
        let exists = |rel: &RelPath| -> Result<bool> {
            Ok(std::fs::symlink_metadata(join(root, rel)?).is_ok())
        };
        Ok(if ours(&o.dest)? {
            Some(o.dest.clone())
        } else if ours(&alt)? || exists(&alt)? {
            Some(alt)
        } else if exists(&o.dest)? {
            Some(o.dest.clone())
        } else {
            None
        })
    }
}

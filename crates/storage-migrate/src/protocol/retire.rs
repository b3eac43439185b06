//! Retiring: the legacy files moved into the backup, deciding by trying;
//! a file changed after verification is never moved or removed.

use super::{
    BTreeMap, DirSet, Dirs, Error, Fingerprint, Left, Manifest, Owner, Path, PathBuf, RelPath,
    Result, Source, Step, Summary, Tx, copy, crosses_devices, dir_modes, fault, fsx, is_kind, join,
    make_dirs, manifest, move_file, open_regular, par_map, project_owner, rel_in_store,
};

/// What retiring one legacy file did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Retired {
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
pub(super) enum Now {
    Missing,
    Unchanged,
    Changed,
}

/// Compares `path` with the fingerprint taken when it was planned: any
/// write changes the change time, which no user call can set back.
///
/// A source staged as a hard link (`stage`, a layout-0 upgrade) is compared
/// by device, inode, size and modification time instead: publishing renamed
/// the inode it shares with its published name, which moves the change
/// time. A write in place changes the modification time; and since the
/// published file is that same inode, such a write is never lost with the
/// backup: it is in the store too.
pub(super) fn now_of(path: &Path, s: &Source) -> Result<Now> {
    let unchanged = |meta: &std::fs::Metadata| {
        if s.linked {
            use std::os::unix::fs::MetadataExt;
            let fp = &s.fingerprint;
            (meta.dev(), meta.ino(), meta.len()) == (fp.dev, fp.ino, fp.size)
                && copy::mtime_of(meta) == s.mtime
        } else {
            Fingerprint::of(meta) == s.fingerprint
        }
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_file() && unchanged(&meta) => Ok(Now::Unchanged),
        // Another inode or change time, the verified bytes: the store (or
        // the project) was copied since (`cp -a` keeps the times it can set,
        // not the inode or the change time), or the file was rewritten with
        // the same content. Nothing to lose: it is the version verified.
        Ok(meta) if meta.is_file() && same_content(path, &meta, s)? => Ok(Now::Unchanged),
        Ok(_) => Ok(Now::Changed),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Now::Missing),
        Err(e) => Err(Error::io("stat", path, e)),
    }
}

/// Whether a file renamed into the backup is still the version verified:
/// same inode, size and modification time (a rename changes the change time).
pub(super) fn moved_as_verified(meta: &std::fs::Metadata, s: &Source) -> bool {
    std::os::unix::fs::MetadataExt::ino(meta) == s.fingerprint.ino
        && meta.len() == s.size
        && copy::mtime_of(meta) == s.mtime
}

/// Whether the file at `path` (described by `meta`) holds the bytes `s` was
/// verified as: its size, then its BLAKE3. Asked only when the fingerprint
/// says "another file" (a copied store or project has new inodes).
fn same_content(path: &Path, meta: &std::fs::Metadata, s: &Source) -> Result<bool> {
    if meta.len() != s.size || s.hash.is_none() {
        return Ok(false);
    }
    let (_, h) = copy::hash_file(path)?;
    Ok(Some(h.to_hex().to_string()) == s.hash)
}

/// [`moved_as_verified`], or, for another inode (a copy), the same bytes.
fn is_verified_version(path: &Path, meta: &std::fs::Metadata, s: &Source) -> Result<bool> {
    Ok(moved_as_verified(meta, s) || (meta.is_file() && same_content(path, meta, s)?))
}

/// The count of regular files under `base/d` and the sum of their names'
/// digests; `None` if it holds anything else or cannot be listed.
pub(super) fn files_digest(base: &Path, d: &Path) -> Option<(u64, u128)> {
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
pub(super) fn name_digest(rel: &Path) -> u128 {
    use std::os::unix::ffi::OsStrExt;
    let h = blake3::hash(rel.as_os_str().as_bytes());
    let mut first = [0u8; 16];
    first.copy_from_slice(&h.as_bytes()[..16]);
    u128::from_le_bytes(first)
}

/// The warning for a legacy file that did not go into the backup (`store`:
/// a layout-0 upgrade, whose legacy files are the store's own).
pub(super) fn left_warning(rel: &RelPath, left: &Left, store: bool) -> String {
    let rel = rel.as_path().display();
    match left {
        Left::InProject if store => format!(
            "`{rel}` changed after it was verified (is an older Prodigy still running?); it stays at its layout-0 path and is not in the backup. The store holds the version verified, or this very file where the upgrade moved it by a link and it was written in place"
        ),
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

impl Tx<'_> {
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
        // The phase changes the project's file system (removals) and the
        // backup's, and syncs each: their descriptors are opened before it
        // writes there (see `fsx::Batch::cover`).
        self.batch.cover(&legacy)?;
        self.batch.cover(&backup)?;
        self.batch.create_dir_all(&backup)?;
        self.progress
            .start(Step::Retire, published.sources, published.source_bytes);
        let first = std::sync::Once::new();
        let moved = self.retire_dirs(m, &entries, &legacy, &backup)?;
        let moved = DirSet::new(moved.iter().map(PathBuf::as_path));
        let modes = dir_modes(m);
        let mut copied_any = false;
        let mut warnings = Vec::new();
        manifest::rewrite_entries(&entries, |chunk| {
            let sources: Vec<&Source> = chunk.iter().flat_map(|e| &e.sources).collect();
            let mut outcomes = par_map(&sources, Dirs::default, |dirs, s| {
                let r = if moved.find(s.rel.as_path()).is_some() {
                    self.check_moved(&txid, &legacy, &backup, &modes, s)?
                } else {
                    self.retire_one(&txid, &legacy, &backup, &modes, dirs, s)?
                };
                tracing::debug!(file = %s.rel.as_path().display(), outcome = ?r, "moved into the backup");
                self.progress.advance(1, s.size);
                first.call_once(|| fault::point("mid-retire"));
                Ok(r)
            })?;
            // Copies are made durable at once (one `syncfs` on Linux); a source is removed
            // only after it, and only if it is still the version verified.
            if outcomes.contains(&Retired::CopiedKeepSource) {
                copied_any = true;
                self.sync(&backup)?;
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
            let mut changed = false;
            for s in chunk.iter_mut().flat_map(|e| &mut e.sources) {
                let left = outcomes.next().expect("one outcome per source");
                changed |= s.left != left;
                s.left = left;
                if let Some(left) = &s.left {
                    warnings.push(left_warning(
                        &s.rel,
                        left,
                        matches!(self.owner, Owner::Store),
                    ));
                }
            }
            Ok(changed)
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
                let dir = join(&legacy, d)?;
                if std::fs::remove_dir(&dir).is_ok() {
                    self.batch.dir_changed(fsx::parent(&dir));
                }
            }
        }
        self.sync(self.layout().root())?;
        if copied_any {
            self.sync(&legacy)?;
        }
        self.progress.finish(Step::Retire);
        Ok(())
    }

    /// Moves (or, where a rename cannot, copies) one legacy file into the backup.
    pub(super) fn retire_one(
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
        dirs.ensure(&self.batch, fsx::parent(&bak))?;
        let bak_meta = std::fs::symlink_metadata(&bak).ok();
        match (now_of(&src, s)?, bak_meta) {
            (Now::Changed, _) => Ok(Retired::Left(Left::InProject)),
            (Now::Missing, Some(meta)) => {
                // An earlier run moved it. A renamed file keeps its inode and
                // is checked by its fingerprint; anything else (a copy, or a
                // file an old Prodigy renamed over it before its directory
                // moved) is checked by content.
                let as_verified = if std::os::unix::fs::MetadataExt::ino(&meta) == s.fingerprint.ino
                {
                    moved_as_verified(&meta, s)
                } else {
                    let (_, h) = copy::hash_file(&bak)?;
                    Some(h.to_hex().to_string()) == s.hash
                };
                if as_verified {
                    Ok(Retired::Moved)
                } else {
                    self.put_back(txid, legacy, &bak, modes, s)
                }
            }
            (Now::Missing, None) => Ok(Retired::Left(Left::Gone)),
            (Now::Unchanged, Some(_)) => {
                // An earlier run's copy whose `syncfs` may have failed: a
                // retried sync proves nothing (the kernel may have dropped the
                // pages and cleared the error), so the copy is made again.
                fsx::remove_file_durable(&bak)?;
                self.copy_to_backup(txid, &src, &bak, s)
            }
            (Now::Unchanged, None) => match self.batch.rename_noreplace(&src, &bak) {
                Ok(()) => {
                    let meta =
                        std::fs::symlink_metadata(&bak).map_err(|e| Error::io("stat", &bak, e))?;
                    if is_verified_version(&bak, &meta, s)? {
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
    pub(super) fn check_moved(
        &self,
        txid: &str,
        legacy: &Path,
        backup: &Path,
        modes: &BTreeMap<PathBuf, u32>,
        s: &Source,
    ) -> Result<Retired> {
        let bak = join(backup, &s.rel)?;
        match std::fs::symlink_metadata(&bak) {
            Ok(meta) if is_verified_version(&bak, &meta, s)? => Ok(Retired::Moved),
            Ok(_) => self.put_back(txid, legacy, &bak, modes, s),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Retired::Left(Left::Gone)),
            Err(e) => Err(Error::io("stat", &bak, e)),
        }
    }

    /// Puts a file that changed after verification back into the project
    /// (it is the newest version of the user's data); where the project
    /// has a new file of that name, into the store's legacy area instead.
    pub(super) fn put_back(
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
        match move_file(&self.batch, bak, &src, None) {
            Ok(()) => Ok(Retired::Left(Left::InProject)),
            Err(e) if is_kind(&e, std::io::ErrorKind::AlreadyExists) => {
                let at = self.displaced(txid, s.rel.as_path());
                let abs = join(self.layout().root(), &at)?;
                fsx::create_dir_all(fsx::parent(&abs))?;
                move_file(&self.batch, bak, &abs, None)?;
                Ok(Retired::Left(Left::Displaced { at }))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Where a changed legacy file that cannot go back into the project is kept.
    pub(super) fn displaced(&self, txid: &str, rel: &Path) -> RelPath {
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
    pub(super) fn copy_to_backup(
        &self,
        txid: &str,
        src: &Path,
        bak: &Path,
        s: &Source,
    ) -> Result<Retired> {
        // Locked until renamed: a concurrent sweep leaves it alone.
        let (tmp, mut out) = fsx::create_temp(&self.paths.tx(txid), "backup")?;
        let (mut f, _) = open_regular(src)?;
        let (_, hash) = copy::copy_into(&mut f, src, &mut out, &tmp, s.mtime)?;
        if Some(hash.to_hex().to_string()) != s.hash {
            fsx::remove_file_durable(&tmp)?;
            return Ok(Retired::Left(Left::InProject));
        }
        copy::set_mode_of(&tmp, s.mode)?;
        self.batch.file_written(&out, &tmp)?;
        self.batch.rename_noreplace(&tmp, bak)?;
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
    pub(super) fn retire_dirs(
        &self,
        m: &mut Manifest,
        entries: &Path,
        legacy: &Path,
        backup: &Path,
    ) -> Result<Vec<PathBuf>> {
        if m.pure_dirs.is_empty() {
            return Ok(Vec::new());
        }
        let recorded: Option<Vec<(u64, u128)>> = m
            .pure_dir_files
            .iter()
            .map(|(n, sum)| Some((*n, u128::from_str_radix(sum, 16).ok()?)))
            .collect();
        let planned = match recorded {
            Some(planned) if planned.len() == m.pure_dirs.len() => planned,
            // Records written before planning kept them.
            _ => {
                let mut planned = vec![(0u64, 0u128); m.pure_dirs.len()];
                let pure = DirSet::new(m.pure_dirs.iter().map(RelPath::as_path));
                manifest::for_each_chunk(entries, |chunk| {
                    for s in chunk.iter().flat_map(|e| &e.sources) {
                        if let Some(k) = pure.find(s.rel.as_path()) {
                            planned[k].0 += 1;
                            planned[k].1 = planned[k].1.wrapping_add(name_digest(s.rel.as_path()));
                        }
                    }
                    Ok(())
                })?;
                planned
            }
        };
        let mut moved = Vec::new();
        let pure: Vec<RelPath> = m.pure_dirs.clone();
        for (d, want) in pure.iter().zip(planned) {
            let src = join(legacy, d)?;
            let bak = join(backup, d)?;
            if std::fs::symlink_metadata(&bak).is_ok() {
                // A re-run: an earlier run moved it whole and may have died
                // before checking it; files written in between go back.
                if files_digest(backup, d.as_path()) != Some(want) {
                    self.put_back_extras(m, entries, legacy, backup, d)?;
                }
                continue; // the per-file pass checks the rest
            }
            if files_digest(legacy, d.as_path()) != Some(want) {
                continue;
            }
            self.batch.create_dir_all(fsx::parent(&bak))?;
            if self.batch.rename_noreplace(&src, &bak).is_err() {
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
    pub(super) fn put_back_extras(
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
                let warning = match move_file(&self.batch, &e.path, &to, None) {
                    Ok(()) => format!(
                        "`{}` was written while its directory was being moved into the backup; put back into the project",
                        r.display()
                    ),
                    Err(err) if is_kind(&err, std::io::ErrorKind::AlreadyExists) => {
                        let at = self.displaced(&m.txid, &r);
                        let abs = join(self.layout().root(), &at)?;
                        fsx::create_dir_all(fsx::parent(&abs))?;
                        move_file(&self.batch, &e.path, &abs, None)?;
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
}

//! Rollback (and downgrade): the legacy files restored from the backup,
//! what the transaction published removed; never through a link.

use super::{
    AtPath, BTreeMap, Error, Fate, HistoryEntry, Manifest, Owner, Path, PathBuf, Phase, Produce,
    RelPath, Result, Source, Step, Summary, Tx, append_history, chown, conflict_alt, copy,
    dir_modes, fault, fsx, join, make_dirs, manifest, marker, open_regular, probe, project_owner,
    read_manifest, real_dir, remove_dir_all_if_exists, set_journal, set_mode,
};

/// Copies the backup `bak` to `tmp`, with the source's mode and mtime, and
/// renames it to `dest` without replacing anything. Where `dest` is on
/// another file system than `tmp` (a mount inside `.prodigy/`), the copy is
/// made beside `dest` instead.
pub(super) fn restore_one(
    batch: &fsx::Batch,
    bak: &Path,
    tmp: &Path,
    dest: &Path,
    s: &Source,
    owner: Option<(u32, u32)>,
) -> Result<()> {
    let copy_to = |tmp: &Path| -> Result<()> {
        let (mut f, _) = open_regular(bak)?;
        let mut out = fsx::create_new(tmp)?;
        copy::copy_into(&mut f, bak, &mut out, tmp, s.mtime)?;
        set_mode(tmp, s.mode)?;
        chown(tmp, owner)?;
        Ok(batch.file_written(&out, tmp)?)
    };
    copy_to(tmp)?;
    match batch.rename_noreplace(tmp, dest) {
        Err(storage_core::Error::Io { source, .. })
            if source.kind() == std::io::ErrorKind::CrossesDevices =>
        {
            fsx::remove_file_durable(tmp)?;
            let beside = fsx::parent(dest).join(fsx::temp_name("restore"));
            copy_to(&beside)?;
            Ok(batch.rename_noreplace(&beside, dest)?)
        }
        other => Ok(other?),
    }
}

/// Removes the empty ancestors of `rel` under `base` that are not
/// recorded directories of the old layout, deepest first (best effort:
/// stops at the first that is not empty).
pub(super) fn remove_empty_parents(
    batch: &fsx::Batch,
    base: &Path,
    rel: &Path,
    recorded: &BTreeMap<PathBuf, u32>,
) {
    let mut p = rel.parent();
    while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
        if recorded.contains_key(d) {
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

    pub(super) fn finish_rollback(&self, m: &Manifest, force: bool) -> Result<Summary> {
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
                        &self.batch,
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
                        remove_empty_parents(&self.batch, &root, rel.as_path(), &modes);
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
                        self.batch.rename_noreplace(&path, &aside)?;
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
        Ok(summary)
    }
}

//! Staging: every legacy file (or its per-job log lines) copied into
//! `<txid>/staging/`, hashed as it is read; made durable at once by the
//! transaction's batch (one `syncfs` on Linux).
//!
//! # Links instead of copies, in a layout-0 upgrade
//!
//! A layout-0 upgrade moves the store's own files within the store, so a
//! file whose bytes do not change is staged as a **hard link** to itself
//! ([`Tx::link_source`]) instead of a copy: nothing is written but a
//! directory entry, and the data the upgrade makes durable is a few
//! records instead of the whole store. Everything else stays as it is:
//! the link is published by rename, and retiring renames the layout-0
//! name into the backup, so the backup keeps the very inode (bytes, mode,
//! owner, mtime) that `downgrade` restores. The store never writes a
//! document in place (it replaces it by rename), so a later write leaves
//! the backup's inode alone; event logs, which it appends to in place, are
//! therefore still copied.
//!
//! Deciding by trying: where the link fails (the file is on another mount
//! than `migrations/`, a file system without hard links, a file of another
//! owner under `protected_hardlinks`) or the file changed since it was
//! opened, it is copied as before. A file that already has another name is
//! copied too: linking it moves the change time that the other name's
//! checks compare. A project's import always copies: its
//! files live in the user's working tree, where editors and an older
//! Prodigy write in place, and such a write must not reach the store.

use super::{
    BTreeMap, BufWriter, Category, Dirs, Entry, Error, Fate, Fingerprint, Layout, Manifest, Output,
    Owner, Path, PathBuf, Produce, RelPath, Result, Step, Summary, Tx, Write, copy, fault, fsx,
    join, manifest, open_regular, par_map_beside, rel_in_store, rewrite_metadata_path, split,
};

/// Typed documents larger than this are copied without the JSON check.
pub(super) const MAX_VALIDATE: u64 = 64 * 1024 * 1024;

/// What staging one entry produced (applied to the entry afterwards).
pub(super) struct Staged {
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
    /// Staged as a hard link to the source: its fingerprint after linking.
    linked: Option<Fingerprint>,
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
        if let Some(fingerprint) = self.linked {
            e.sources[0].fingerprint = fingerprint;
            e.sources[0].linked = true;
        }
        e.outputs.extend(self.new_outputs);
    }
}

/// `order` with its second half interleaved into its first (`a0 b0 a1 b1
/// …`): the threads that take the next item in turn then work far apart in
/// the walk, in different directories, instead of queueing on the lock of
/// the one directory they both create files in (files of a size are in
/// walk order, and a directory's files are of one size or two).
fn interleave_halves(order: &[usize]) -> Vec<usize> {
    let (first, second) = order.split_at(order.len().div_ceil(2));
    let mut out = Vec::with_capacity(order.len());
    for (i, &a) in first.iter().enumerate() {
        out.push(a);
        out.extend(second.get(i));
    }
    out
}

impl Tx<'_> {
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
        self.batch.create_dir_all(&staging)?;
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
            manifest::write_entries(&entries, Some(&self.batch), |push| {
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
                    let order = interleave_halves(&order);
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

    pub(super) fn stage_one(
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
            linked: None,
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
        // Linked only if it is still the file planned, and has no other name
        // (see the module docs): a link changes the change time that the
        // checks of every name of the file compare.
        let may_link = matches!(self.owner, Owner::Store)
            && Fingerprint::of(&meta) == source.fingerprint
            && std::os::unix::fs::MetadataExt::nlink(&meta) == 1;
        match &out.produce {
            // Kept verbatim, or an event log (JSONL, never one JSON document).
            Produce::Copy
                if matches!(out.category, Category::LegacyPreserved | Category::Events) =>
            {
                // Event logs are appended to in place: never shared with the backup.
                let link = may_link && out.category != Category::Events;
                let dest = join(staging, &out.dest)?;
                self.stage_verbatim(
                    &mut r,
                    dirs,
                    (&mut file, &path, &meta),
                    (oi, &dest, source.mtime),
                    link,
                )?;
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
                self.stage_verbatim(
                    &mut r,
                    dirs,
                    (&mut file, &path, &meta),
                    (oi, &dest, source.mtime),
                    may_link,
                )?;
            }
            produce => {
                // Typed documents are read whole: a torn or corrupt one must not
                // land where Prodigy loads it, so it goes to the legacy area.
                let bytes = copy::read_whole(&mut file, &path, meta.len())?;
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
                dirs.ensure(&self.batch, fsx::parent(&dest))?;
                let verbatim = matches!(content, std::borrow::Cow::Borrowed(_));
                r.linked = if may_link && verbatim {
                    self.link_source(&file, &path, &meta, &dest)?
                } else {
                    None
                };
                let hash = if r.linked.is_some() {
                    r.src_hash
                } else {
                    copy::write_new(&dest, &content, source.mtime, &self.batch)?
                };
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

    /// Stages the legacy file `file` (at `path`, `meta` when opened) at
    /// `dest` byte for byte as output `oi`: as a hard link if `link` and
    /// [`link_source`](Self::link_source) succeeds, else as a copy dated
    /// `mtime` (the planned one). Records its size and hash in `r`.
    fn stage_verbatim(
        &self,
        r: &mut Staged,
        dirs: &mut Dirs,
        (file, path, meta): (&mut std::fs::File, &Path, &std::fs::Metadata),
        (oi, dest, mtime): (usize, &Path, (i64, u32)),
        link: bool,
    ) -> Result<()> {
        dirs.ensure(&self.batch, fsx::parent(dest))?;
        let mut done = None;
        if link {
            let read = copy::hash_reader(&mut *file, path)?;
            r.linked = self.link_source(file, path, meta, dest)?;
            if r.linked.is_some() {
                done = Some(read);
            } else {
                std::io::Seek::rewind(file).map_err(|e| Error::io("read", path, e))?;
            }
        }
        let (size, hash) = match done {
            Some(read) => read,
            None => copy::copy_new(file, path, dest, mtime, &self.batch)?,
        };
        r.src_hash = hash;
        r.done.push((oi, size, hash));
        Ok(())
    }

    /// Stages `dest` as a hard link to the legacy file `file` at `path`,
    /// whose bytes the caller has just read; `meta` is its `fstat` from
    /// when it was opened. Returns the file's fingerprint after linking (the
    /// link moves its change time), or `None` where it cannot be linked
    /// (another file system, no hard links there, not ours to link) or it
    /// changed since it was opened: the caller copies what it read instead.
    ///
    /// From the fingerprint on, a write to the file (by either name) is
    /// seen by verification as a change of the legacy file, and the upgrade
    /// stops before anything is published.
    fn link_source(
        &self,
        file: &std::fs::File,
        path: &Path,
        meta: &std::fs::Metadata,
        dest: &Path,
    ) -> Result<Option<Fingerprint>> {
        if let Err(e) = std::fs::hard_link(path, dest) {
            tracing::debug!(file = %path.display(), error = %e, "not linked; copied");
            return Ok(None);
        }
        // Written since it was opened: the bytes read are copied instead.
        // (Replaced by another file since then: `dest` is that other file,
        // which verification refuses, since it is not the inode
        // fingerprinted here.)
        let now = file.metadata().map_err(|e| Error::io("stat", path, e))?;
        if (now.len(), copy::mtime_of(&now)) != (meta.len(), copy::mtime_of(meta)) {
            std::fs::remove_file(dest).map_err(|e| Error::io("remove", dest, e))?;
            return Ok(None);
        }
        // On the portable path the source's data may never have been
        // `fsync`ed by whoever wrote it: it is now, as a copy would be.
        self.batch.file_written(file, dest)?;
        Ok(Some(Fingerprint::of(&now)))
    }

    /// Where a typed document is staged: its typed place when it is whole
    /// JSON; otherwise the legacy area (a torn or corrupt document must not
    /// land where Prodigy loads it), with a warning and the output re-targeted.
    pub(super) fn typed_dest(
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
    pub(super) fn stage_split(
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
        let (mut file, _) = open_regular(path)?;
        if let Some(skip) = source.skip {
            // Imported by an earlier migration (checked while planning):
            // hashed with the rest, as the file is retired whole, not split.
            let copied = std::io::copy(&mut std::io::Read::take(&mut file, skip), &mut whole)
                .map_err(|e| Error::io("read", path, e))?;
            if copied != skip {
                return Err(Error::io(
                    "read",
                    path,
                    std::io::Error::other("the log is shorter than what was imported of it"),
                ));
            }
        }
        let totals = split::for_each_line(file, path, |route, line| {
            whole.update(line);
            if !writers.contains_key(route) {
                let dest = join(staging, &dest_of(route))?;
                dirs.ensure(&self.batch, fsx::parent(&dest))?;
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
            self.batch.file_written(&f, &dest)?;
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
}

//! A newer version of a document the store already holds: an older
//! Prodigy (or a module of Prodigy not ported yet) wrote it again, at its
//! legacy path, after the store's copy was written.
//!
//! Publishing never overwrites, so an import run again would keep the
//! newer version aside as a conflict and go on serving the older one. The
//! rule is the one `storage-fs` reads both layouts by: the copy modified
//! last wins. So before such an import, the store's older copies move to a
//! `superseded/<txid>/` area in a transaction of their own (staged,
//! verified, published, backed up and undone like any other), and the
//! import then publishes the newer versions where they were. Nothing is
//! dropped: the older copy is in the superseded area, and a rollback of
//! the two transactions (one run) gives back exactly what the store held.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use storage_fs::{Layout, fsx};

use crate::error::{Error, Result};
use crate::manifest::{Category, Entry, Fate, Manifest, Produce, RelPath};
use crate::plan::rel_in_store;

/// A legacy file that is a newer version of the store's document at `dest`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Newer {
    /// The legacy file (absolute).
    pub source: PathBuf,
    /// The store's document, relative to the store root.
    pub dest: PathBuf,
    /// The import rewrites it (a job's `metadata.json`, whose `path` names
    /// its new place): compare the rewritten bytes, not the file's.
    pub rewrite: bool,
}

/// How the legacy file at `source` compares with the document at
/// `root/dest`: `None` if there is no such document (or no such file);
/// otherwise whether it holds other bytes than the import would publish,
/// and whether `source` was modified after it.
fn compare(source: &Path, root: &Path, dest: &Path, rewrite: bool) -> Result<Option<(bool, bool)>> {
    let target = root.join(dest);
    let dest_meta = match std::fs::symlink_metadata(&target) {
        Ok(m) if m.is_file() => m,
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            return Err(not_a_directory(root, dest));
        }
        Err(e) => return Err(Error::io("stat", &target, e)),
    };
    let src_meta = match std::fs::symlink_metadata(source) {
        Ok(m) if m.is_file() => m,
        // Gone since it was listed (a concurrent import took it): the
        // import decides about it, not this.
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("stat", source, e)),
    };
    let newer = match (src_meta.modified(), dest_meta.modified()) {
        (Ok(s), Ok(d)) => s > d,
        _ => false,
    };
    if !rewrite && src_meta.len() != dest_meta.len() {
        return Ok(Some((true, newer)));
    }
    let read = |p: &Path| std::fs::read(p).map_err(|e| Error::io("read", p, e));
    let mut published = read(source)?;
    if rewrite {
        let new_dir = fsx::parent(&target).to_owned();
        published = crate::protocol::rewrite_metadata_path(&published, &new_dir).0;
    }
    Ok(Some((published != read(&target)?, newer)))
}

/// Refuses, while planning (nothing changed yet), a destination below a
/// file where the store needs a directory: publishing would stop half-way.
fn not_a_directory(root: &Path, dest: &Path) -> Error {
    let mut at = root.to_owned();
    for c in dest.parent().into_iter().flat_map(Path::components) {
        at.push(c);
        if std::fs::symlink_metadata(&at).is_ok_and(|m| !m.is_dir()) {
            break;
        }
    }
    Error::Refused {
        action: "import into",
        path: root.to_owned(),
        reason: format!(
            "`{}` is a file where the store needs a directory (for `{}`); nothing was changed: \
             move that file away and run the command again",
            at.display(),
            dest.display()
        ),
    }
}

/// Whether the legacy file at `source` is a newer version of the document
/// at `root/dest`: that document exists, holds other bytes than the import
/// would publish, and was modified before `source`.
pub(crate) fn supersedes(source: &Path, root: &Path, dest: &Path, rewrite: bool) -> Result<bool> {
    Ok(compare(source, root, dest, rewrite)?.is_some_and(|(differs, newer)| differs && newer))
}

/// What a dry run shows of `e` (its legacy file under `base`) where the
/// real run would not publish it as planned: a destination holding other,
/// not older, bytes is a conflict (kept under `area/conflicts/<txid>/`, as
/// publishing would); returns the entry so marked, and whether it is a
/// newer version that the real run imports in the store copy's place.
pub(crate) fn preview(
    e: &Entry,
    base: &Path,
    layout: &Layout,
    area: &Path,
    txid: &str,
) -> Result<(Option<Entry>, bool)> {
    let ([source], [output]) = (e.sources.as_slice(), e.outputs.as_slice()) else {
        return Ok((None, false));
    };
    let rewrite = match output.produce {
        Produce::Copy => false,
        Produce::RewriteMetadataPath => true,
        Produce::SplitEvents { .. } => return Ok((None, false)),
    };
    let from = base.join(source.rel.as_path());
    match compare(&from, layout.root(), output.dest.as_path(), rewrite)? {
        Some((true, true)) => Ok((None, true)),
        Some((true, false)) => {
            let mut marked = e.clone();
            let alt = area
                .join("conflicts")
                .join(txid)
                .join(output.dest.as_path());
            marked.outputs[0].fate = Fate::Conflict {
                alt: rel_in_store(layout, &alt),
            };
            Ok((Some(marked), false))
        }
        _ => Ok((None, false)),
    }
}

/// Plans moving each document of `newer` that (decided again here, under
/// the transaction's lock) a newer legacy version supersedes to
/// `area/<dest>`, in the manifest `m` (whose sources are relative to the
/// store root): the transaction that runs before the import that
/// publishes the newer versions in their place. `who` says who wrote them,
/// for the report.
pub(crate) fn plan(
    layout: &Layout,
    area: &Path,
    m: &Manifest,
    newer: &[Newer],
    who: &str,
    sink: &mut dyn FnMut(&Entry) -> Result<()>,
) -> Result<Manifest> {
    let root = layout.root();
    let mut m = m.clone();
    m.in_store = true;
    let mut dirs: BTreeMap<PathBuf, u32> = BTreeMap::new();
    let mut index = 0;
    for n in newer {
        // Again, inside the transaction (its lock held): the store may have
        // written the document since the probe, and then it is the newer
        // one and stays. A write after this is caught by its fingerprint.
        if !supersedes(&n.source, root, &n.dest, n.rewrite)? {
            continue;
        }
        let path = root.join(&n.dest);
        let meta = std::fs::symlink_metadata(&path).map_err(|e| Error::io("stat", &path, e))?;
        let mut p = n.dest.parent();
        while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
            if !dirs.contains_key(d) {
                let dm = std::fs::symlink_metadata(root.join(d))
                    .map_err(|e| Error::io("stat", root.join(d), e))?;
                dirs.insert(d.to_owned(), dm.mode() & 0o7777);
            }
            p = d.parent();
        }
        let abs = Layout::under(area, &n.dest).expect("planned paths are relative");
        index += 1;
        sink(&crate::layout0::copy_entry(
            index - 1,
            &n.dest,
            &meta,
            rel_in_store(layout, &abs).0,
            Produce::Copy,
            Category::LegacyPreserved,
        ))?;
    }
    m.dirs = dirs
        .iter()
        .map(|(d, mode)| (RelPath(d.clone()), *mode))
        .collect();
    m.kept_dirs = dirs.keys().map(|d| RelPath(d.clone())).collect();
    let kept = rel_in_store(layout, area);
    m.warn(format!(
        "{index} document(s) in the store were older than the versions {who}: kept under \
         `{}/`, and the newer versions imported in their place",
        kept.0.display()
    ));
    Ok(m)
}

/// The documents of the store that the files of a project's `legacy`
/// directory, imported again, would supersede: what the import plans as a
/// whole-file copy (or a rewritten `metadata.json`) onto a document the
/// store holds, older and with other bytes. Walks and plans as the import
/// does (no file's content read but those two's), writes nothing.
pub(crate) fn probe_project(
    project: &Path,
    legacy: &Path,
    layout: &Layout,
    repo: &storage_core::RepoKey,
    imported: &crate::plan::Imported,
) -> Result<Vec<Newer>> {
    let root = layout.root();
    let mut out = Vec::new();
    // Nothing of the repository in the store (a first import): no document
    // to supersede, and no second walk of the legacy tree.
    let state = fsx::parent(&layout.sessions_dir(repo)).to_owned(); // state/<repo>
    if [state, layout.dlq_repo_dir(repo), layout.legacy_dir(repo)]
        .iter()
        .all(|d| std::fs::symlink_metadata(d).is_err())
    {
        return Ok(out);
    }
    crate::plan::plan(
        project,
        legacy,
        layout,
        repo,
        "probe",
        false,
        imported,
        &mut |e| {
            let ([source], [output]) = (e.sources.as_slice(), e.outputs.as_slice()) else {
                return Ok(());
            };
            let rewrite = match output.produce {
                Produce::Copy => false,
                Produce::RewriteMetadataPath => true,
                Produce::SplitEvents { .. } => return Ok(()),
            };
            let source = legacy.join(source.rel.as_path());
            if supersedes(&source, root, output.dest.as_path(), rewrite)? {
                out.push(Newer {
                    source,
                    dest: output.dest.0.clone(),
                    rewrite,
                });
            }
            Ok(())
        },
    )?;
    Ok(out)
}

/// Puts back where the store reads it each document that a committed
/// setting aside of the latest run of `paths` (a manifest [`Manifest::in_store`])
/// moved away and that nothing replaced since: the import that was to
/// publish the newer version did not (the legacy file left the project, or
/// a crash, then nothing left to import). The set-aside copy is linked
/// back (copied where a link cannot be made), never over anything: a place
/// that holds a file is left alone. Returns a warning per document put
/// back. Safe to repeat; a later rollback of the setting aside finds the
/// document already where it restores it.
pub(crate) fn restore_unreplaced(
    store: &storage_fs::FsStorage,
    paths: &crate::manifest::Paths,
    batch: &fsx::Batch,
) -> Result<Vec<String>> {
    let root = store.root();
    let mut out = Vec::new();
    // Only the latest run can hold such a setting aside: every run checks
    // its own when it ends (start-up included), so older ones were checked.
    for txid in crate::latest_run(paths)? {
        let Some(m) = crate::protocol::read_manifest_if_any(paths, &txid)? else {
            continue;
        };
        if !m.in_store {
            continue;
        }
        crate::manifest::for_each_chunk(&paths.entries(&txid), |chunk| {
            for e in chunk {
                let (Some(source), Some(output)) = (e.sources.first(), e.outputs.first()) else {
                    continue;
                };
                let place = root.join(source.rel.as_path());
                let kept = root.join(output.dest.as_path());
                if std::fs::symlink_metadata(&place).is_ok() || !kept.is_file() {
                    continue;
                }
                fsx::create_dir_all(fsx::parent(&place))?;
                match std::fs::hard_link(&kept, &place) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                    Err(_) => {
                        // Another file system (a mount inside the store):
                        // a copy, renamed into place without replacing.
                        let bytes =
                            std::fs::read(&kept).map_err(|e| Error::io("read", &kept, e))?;
                        let dir = fsx::parent(&place);
                        let name = place
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default();
                        let (tmp, mut f) = fsx::create_temp(dir, &name)?;
                        std::io::Write::write_all(&mut f, &bytes)
                            .map_err(|e| Error::io("write", &tmp, e))?;
                        f.sync_all().map_err(|e| Error::io("fsync", &tmp, e))?;
                        drop(f);
                        if let Err(e) = fsx::rename_noreplace(&tmp, &place) {
                            let _ = std::fs::remove_file(&tmp);
                            if matches!(&e, storage_core::Error::Io { source, .. }
                                if source.kind() == std::io::ErrorKind::AlreadyExists)
                            {
                                continue;
                            }
                            return Err(e.into());
                        }
                    }
                }
                batch.dir_changed(fsx::parent(&place));
                out.push(format!(
                    "`{}` was set aside for a newer version that was not imported (it left the \
                     project); it is back where the store reads it (a copy stays at `{}`)",
                    source.rel.as_path().display(),
                    output.dest.as_path().display()
                ));
            }
            Ok(())
        })?;
    }
    if !out.is_empty() {
        batch.finish(root)?;
    }
    Ok(out)
}

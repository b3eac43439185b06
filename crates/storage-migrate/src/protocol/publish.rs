//! Publishing: staged files moved into the store's layout without
//! overwriting anything (conflicts kept aside).

use super::{
    AtPath, DirSet, Dirs, Error, Fate, Manifest, Output, Owner, Path, PathBuf, Result, Source,
    Step, Summary, Tx, conflict_alt, crosses_devices, fault, fsx, is_linked_inode, join, manifest,
    move_file, probe,
};

/// Moves staged directories whose target does not exist into the store,
/// each with one no-replace rename; descends where the target exists.
/// Records the directories it moved (relative to the store root) in `moved`.
pub(super) fn publish_dirs(
    batch: &fsx::Batch,
    staging: &Path,
    root: &Path,
    rel: &Path,
    moved: &mut Vec<PathBuf>,
) -> Result<()> {
    for entry in fsx::read_dir_sorted(&staging.join(rel))? {
        if !entry.file_type.is_dir() {
            continue;
        }
        let sub = rel.join(&entry.name);
        let target = root.join(&sub);
        if std::fs::symlink_metadata(&target).is_err() {
            match batch.rename_noreplace(&entry.path, &target) {
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
        publish_dirs(batch, staging, root, &sub, moved)?;
    }
    Ok(())
}

impl Tx<'_> {
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
        publish_dirs(&self.batch, &staging, &root, Path::new(""), &mut moved)?;
        if !moved.is_empty() {
            fault::point("mid-publish");
        }
        let mut first = moved.is_empty();
        let moved = DirSet::new(moved.iter().map(PathBuf::as_path));
        let mut dirs = Dirs::default();
        let mut published = Summary::default();
        // The fates are written beside the entries, made durable by the same
        // `syncfs` as the files published, and renamed into place after it:
        // one barrier for both, and the entries are the old ones or the new
        // ones whatever happens (docs/reliability.md, "Durability barriers").
        let fates =
            manifest::rewrite_entries_beside(&self.paths.entries(&m.txid), &self.batch, |chunk| {
                let mut changed = false;
                for e in chunk.iter_mut() {
                    let source = &e.sources[0];
                    for o in &mut e.outputs {
                        let fate =
                            self.publish_one(m, &staging, &root, &moved, &mut dirs, (source, o))?;
                        changed |= o.fate != fate;
                        o.fate = fate;
                        self.progress.advance(1, 0);
                        if first {
                            first = false;
                            fault::point("mid-publish");
                        }
                    }
                    published.add(e);
                }
                Ok(changed)
            })?;
        self.sync(&root)?;
        if let Some(fates) = fates {
            fates.rename_durably()?;
        }
        self.progress.finish(Step::Publish);
        Ok(published)
    }

    /// Publishes one output (or finds where an earlier run published it).
    pub(super) fn publish_one(
        &self,
        m: &Manifest,
        staging: &Path,
        root: &Path,
        moved: &DirSet,
        dirs: &mut Dirs,
        (source, o): (&Source, &Output),
    ) -> Result<Fate> {
        if moved.find(o.dest.as_path()).is_some() {
            // Moved with its whole directory just now.
            return Ok(Fate::Published);
        }
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
        Ok(if std::fs::symlink_metadata(&staged).is_ok() {
            // A rename, or where a part of the store is another mount, a
            // verified durable copy (see `move_file`).
            match probe(&target)? {
                AtPath::Missing => {
                    dirs.ensure(&self.batch, fsx::parent(&target))?;
                    move_file(&self.batch, &staged, &target, o.hash.as_deref())?;
                    Fate::Published
                }
                at if same(at) => Fate::AlreadyPresent,
                _ => {
                    if !same(probe(&alt)?) {
                        self.batch.create_dir_all(fsx::parent(&alt))?;
                        move_file(&self.batch, &staged, &alt, o.hash.as_deref())?;
                    }
                    Fate::Conflict { alt: alt_rel }
                }
            }
        } else if same(probe(&target)?) {
            Fate::Published
        } else if same(probe(&alt)?) {
            Fate::Conflict { alt: alt_rel }
        } else if is_linked_inode(&target, source) {
            // Published as a link to its source by an earlier run, and
            // written in place since (through its layout-0 name, say):
            // ours, with newer bytes; retiring reports the source changed.
            Fate::Published
        } else {
            let again = match self.owner {
                Owner::Project(_) => "migrate",
                Owner::Store => "upgrade",
            };
            return Err(Error::Record {
                path: target,
                reason: "its staged copy is gone but it was not published".into(),
                next: format!(
                    "the legacy files are untouched; remove the journal and run {again} again"
                ),
            });
        })
    }
}

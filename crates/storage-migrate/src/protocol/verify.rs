//! Verification: the staged files proved equal to what was read, before
//! anything outside `migrations/` changes.

use super::{
    Entry, Error, Fault, Fingerprint, Manifest, Output, Path, PathBuf, Produce, Result, Source,
    Step, Summary, Tx, copy, fault, fsx, join, manifest, par_map, rewrite_metadata_path,
};

/// Checks that the per-job logs of a split log hold every byte and line of
/// it exactly once (their hashes were checked against the staged files).
pub(super) fn verify_split(legacy: &Path, e: &Entry) -> Result<()> {
    let source = e.source();
    if !source.split {
        return Ok(());
    }
    let bytes: u64 = e.outputs.iter().filter_map(|o| o.size).sum();
    let lines: u64 = e.outputs.iter().filter_map(|o| o.lines).sum();
    let planned = source.split_lines;
    // Bytes an earlier migration imported already are not split again.
    let bytes = bytes + source.skip.unwrap_or(0);
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

/// The size of the staged output at `path` if it is the hard link to
/// `source` that staging made (see `stage`): the very inode fingerprinted
/// after linking, checked here by that name, change time included (any
/// write to it since its bytes were hashed, by either name, moved that),
/// and its modification time still the planned one (a write in the same
/// clock tick as the link leaves the change time alone, not that). `None`
/// if the output is not such a link; the caller then hashes it.
fn linked_size(legacy: &Path, path: &Path, source: &Source, o: &Output) -> Result<Option<u64>> {
    if !source.linked || o.hash != source.hash {
        return Ok(None);
    }
    let meta = std::fs::symlink_metadata(path).map_err(|e| Error::io("stat", path, e))?;
    let now = Fingerprint::of(&meta);
    // Another inode: the legacy name was replaced between staging's open
    // and its link, so the link is to a file that was never read.
    if !meta.is_file() || now != source.fingerprint || copy::mtime_of(&meta) != source.mtime {
        return Err(changed_while_migrated(
            join(legacy, &source.rel)?,
            source,
            &now,
        ));
    }
    Ok(Some(meta.len()))
}

/// The error for a legacy file written while it was being migrated.
fn changed_while_migrated(path: PathBuf, s: &Source, now: &Fingerprint) -> Error {
    Error::Verify {
        path,
        what: format!(
            "the legacy file changed while it was being migrated (size {} then {}); \
             stop the Prodigy process that writes it and run again",
            s.size, now.size
        ),
    }
}

/// Flips one byte of the staged file at `path` (the corrupt-staged fault):
/// a new file renamed over it, never a write in place, which would reach
/// the legacy file through a link (see `stage`).
pub(super) fn corrupt_one_byte(path: &Path) -> Result<()> {
    let mut bytes = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
    match bytes.first_mut() {
        Some(b) => *b ^= 0x01,
        None => bytes.push(b'!'),
    }
    Ok(fsx::write_atomic(path, &bytes)?)
}

impl Tx<'_> {
    /// Proves the staged files equal to the legacy files (see the module docs).
    pub fn verify_staged(&self, m: &Manifest, staged: &Summary) -> Result<()> {
        let legacy = &m.legacy_dir.0;
        let staging = self.paths.staging(&m.txid);
        let total: u64 = staged.categories.values().map(|(_, bytes)| bytes).sum();
        self.progress.start(Step::Verify, staged.outputs, total);
        let mut corrupt = fault::armed(&Fault::CorruptStaged);
        manifest::for_each_chunk(&self.paths.entries(&m.txid), |chunk| {
            if corrupt && let Some(o) = chunk.iter().find_map(|e| e.outputs.first()) {
                corrupt_one_byte(&join(&staging, &o.dest)?)?;
                corrupt = false;
            }
            for s in chunk.iter().flat_map(|e| &e.sources) {
                if s.linked {
                    // Checked through its staged name, the same inode (`linked_size`).
                    continue;
                }
                // The bytes staged were hashed as they were read; an unchanged
                // fingerprint proves no one wrote the file meanwhile.
                let path = join(legacy, &s.rel)?;
                let now = std::fs::symlink_metadata(&path)
                    .map(|meta| Fingerprint::of(&meta))
                    .map_err(|e| Error::io("stat", &path, e))?;
                if now != s.fingerprint || s.hash.is_none() {
                    return Err(changed_while_migrated(path, s, &now));
                }
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
    pub(super) fn verify_output(
        &self,
        legacy: &Path,
        staging: &Path,
        source: &Source,
        o: &Output,
    ) -> Result<()> {
        let path = join(staging, &o.dest)?;
        // A hard link to its source, whose fingerprint (change time
        // included) proves it unwritten since its bytes were hashed.
        let (size, hash) = if let Some(size) = linked_size(legacy, &path, source, o)? {
            (size, o.hash.clone())
        } else {
            let (size, hash) = copy::hash_file(&path)?;
            (size, Some(hash.to_hex().to_string()))
        };
        if hash != o.hash || Some(size) != o.size {
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
}

#[cfg(test)]
mod tests {
    use super::{Fingerprint, Output, Path, Produce, Source, linked_size};
    use crate::manifest::{Category, Fate, RelPath};

    fn linked_source(legacy: &Path, rel: &str) -> Source {
        let meta = std::fs::symlink_metadata(legacy.join(rel)).expect("stat");
        Source {
            rel: RelPath(rel.into()),
            size: meta.len(),
            mtime: crate::copy::mtime_of(&meta),
            mode: 0o644,
            hash: Some("h".into()),
            split: false,
            split_lines: None,
            fingerprint: Fingerprint::of(&meta),
            linked: true,
            left: None,
            skip: None,
        }
    }

    fn output(s: &Source) -> Output {
        Output {
            dest: s.rel.clone(),
            produce: Produce::Copy,
            category: Category::DeadLetters,
            size: Some(s.size),
            hash: s.hash.clone(),
            lines: None,
            fate: Fate::Pending,
        }
    }

    /// A linked output is verified by its inode: the very file fingerprinted
    /// passes without being read; another file with the same bytes (the
    /// legacy name replaced between staging's open and its link) and the
    /// same file written since (same size, so only the times tell) fail.
    #[test]
    fn a_linked_output_must_be_the_fingerprinted_inode_unwritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (legacy, staging) = (dir.path().join("legacy"), dir.path().join("staging"));
        std::fs::create_dir_all(&legacy).expect("mkdir");
        std::fs::create_dir_all(&staging).expect("mkdir");
        std::fs::write(legacy.join("a.json"), b"{\"a\": 1}").expect("write");
        std::fs::hard_link(legacy.join("a.json"), staging.join("a.json")).expect("link");
        let s = linked_source(&legacy, "a.json");
        let o = output(&s);
        let at = staging.join("a.json");
        assert_eq!(linked_size(&legacy, &at, &s, &o).expect("ok"), Some(8));

        // Another inode with the same bytes, and even the same modification
        // time (`cp -p`, `touch -r`): only the fingerprint tells.
        std::fs::remove_file(&at).expect("rm");
        std::fs::write(&at, b"{\"a\": 1}").expect("write");
        let (secs, nanos) = s.mtime;
        std::fs::File::options()
            .write(true)
            .open(&at)
            .expect("open")
            .set_modified(
                std::time::UNIX_EPOCH
                    + std::time::Duration::new(u64::try_from(secs).expect("after 1970"), nanos),
            )
            .expect("mtime");
        let err = linked_size(&legacy, &at, &s, &o).expect_err("another inode");
        assert!(
            err.to_string()
                .contains("changed while it was being migrated"),
            "{err}"
        );

        // The same inode, written in place with bytes of the same length.
        std::fs::remove_file(&at).expect("rm");
        std::fs::hard_link(legacy.join("a.json"), &at).expect("link");
        let s = linked_source(&legacy, "a.json");
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&at, b"{\"a\": 2}").expect("rewrite");
        assert!(
            linked_size(&legacy, &at, &s, &o).is_err(),
            "written in place"
        );
    }
}

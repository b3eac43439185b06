//! Making many changes durable at once, on every platform: [`Batch`].
//!
//! A bulk writer (the migration's staging, publishing, backup and
//! rollback) writes thousands of files and only then needs them all
//! durable, before the journal moves on. An `fsync` per file and per
//! directory is what a durable write costs one at a time; the batch lets a
//! platform do better where it can:
//!
//! - **Linux**: nothing happens while the phase writes; [`Batch::finish`]
//!   is one `syncfs` of the file system (every dirty page and every
//!   metadata change on it, data and directories alike).
//! - **Elsewhere** (macOS, FreeBSD; and on Linux with the cargo feature
//!   `portable-durability`, so that this path is tested): `syncfs` does not
//!   exist, so the batch keeps the same promise the long way. Each file is
//!   `fsync`ed as its writer finishes it ([`Batch::file_written`]; on macOS
//!   with `fcntl(F_FULLFSYNC)`, see [`sync_file`]), and every directory
//!   whose entries changed (a file or directory created, renamed in or out,
//!   removed) is recorded and `fsync`ed once by [`Batch::finish`].
//!
//! Either way the promise is the same: once `finish` returns, every change
//! made through the batch (or recorded in it) survives a power loss. The
//! writer's code is the same on every platform; only this module knows the
//! difference. A batch belongs to one transaction: a failed `fsync` is
//! reported by the `finish` of the batch that recorded the directory, never
//! swallowed by another's.
//!
//! A writer that changes a directory with a plain `std::fs` call (removing
//! a tree, say) records it with [`Batch::dir_changed`]; on Linux that costs
//! nothing.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{Result, create_dir_all_unsynced, create_dirs, create_temp, parent, rename_noreplace};

/// Whether changes are made durable one by one (see the module docs):
/// everywhere but Linux, and on Linux with `portable-durability`.
pub const PORTABLE: bool = cfg!(any(
    not(target_os = "linux"),
    feature = "portable-durability"
));

/// The changes of one phase of a bulk writer, made durable together by
/// [`Batch::finish`] (see the module docs). Shared by the phase's threads.
#[derive(Debug, Default)]
pub struct Batch {
    /// Directories whose entries changed since the last `finish` (portable
    /// path only; always empty on Linux).
    dirs: Mutex<BTreeSet<PathBuf>>,
}

impl Batch {
    /// An empty batch.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The writer is done with the new file `file` at `path`: on the
    /// portable path it is `fsync`ed now and its directory recorded.
    pub fn file_written(&self, file: &File, path: &Path) -> Result<()> {
        if PORTABLE {
            super::sync_file(file, path)?;
            self.dir_changed(parent(path));
        }
        Ok(())
    }

    /// An entry of `dir` was created, renamed or removed by the writer.
    pub fn dir_changed(&self, dir: &Path) {
        if PORTABLE {
            self.lock().insert(dir.to_owned());
        }
    }

    /// Creates `dir` and its missing parents (0700); made durable by
    /// [`finish`](Self::finish).
    pub fn create_dir_all(&self, dir: &Path) -> Result<()> {
        if PORTABLE {
            create_dirs(dir, |d| {
                self.dir_changed(parent(d));
                Ok(())
            })
        } else {
            create_dir_all_unsynced(dir)
        }
    }

    /// [`rename_noreplace`], made durable by [`finish`](Self::finish).
    pub fn rename_noreplace(&self, from: &Path, to: &Path) -> Result<()> {
        rename_noreplace(from, to)?;
        self.dir_changed(parent(from));
        self.dir_changed(parent(to));
        Ok(())
    }

    /// Replaces `path` with what `fill` writes, through a locked temp file
    /// beside it renamed over it ([`super::write_atomic_with`] without its
    /// two `fsync`s): readers in this and other processes see the old or the
    /// new file, and [`finish`](Self::finish) makes the new one durable.
    ///
    /// Until then a crash (a power loss, not a killed process) may leave
    /// either version or a damaged one, so this is only for records that
    /// nothing reads after a crash before the batch's `finish` (the
    /// migration's records while it stages, which recovery deletes unread).
    pub fn write_atomic_with(
        &self,
        path: &Path,
        fill: impl FnOnce(&mut File) -> std::io::Result<()>,
    ) -> Result<()> {
        let pending = self.write_beside(path, fill)?;
        pending.rename()?;
        self.dir_changed(parent(path));
        Ok(())
    }

    /// Writes what `fill` writes to a locked temp file beside `path`, made
    /// durable by [`finish`](Self::finish) (on the portable path, `fsync`ed
    /// now), and not yet renamed over `path`: the caller renames it with
    /// [`Beside::rename_durably`] once the batch is finished, so that `path`
    /// holds the old content or the new, durable one, whatever happens, at
    /// the cost of an `fsync` of the directory instead of one of the file.
    pub fn write_beside(
        &self,
        path: &Path,
        fill: impl FnOnce(&mut File) -> std::io::Result<()>,
    ) -> Result<Beside> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (tmp, created) = create_temp(parent(path), &name)?;
        let mut beside = Beside {
            tmp,
            path: path.to_owned(),
            file: Some(created),
        };
        // On an error the temp file goes with `beside`.
        let out = beside.file.as_mut().expect("just created");
        fill(out).map_err(|e| storage_core::Error::io("write", &beside.tmp, e))?;
        self.file_written(out, &beside.tmp)?;
        Ok(beside)
    }

    /// Makes every change of the batch so far durable: one `syncfs` of the
    /// file system holding `path` on Linux, an `fsync` of each recorded
    /// directory elsewhere (a recorded directory removed since is skipped:
    /// its removal is recorded in its parent). The batch is empty afterwards.
    ///
    /// A failed `fsync` is returned, never retried.
    pub fn finish(&self, path: &Path) -> Result<()> {
        if PORTABLE {
            let dirs = std::mem::take(&mut *self.lock());
            for dir in dirs {
                match super::fsync_dir(&dir) {
                    Err(storage_core::Error::Io { ref source, .. })
                        if source.kind() == std::io::ErrorKind::NotFound => {}
                    other => other?,
                }
            }
            Ok(())
        } else {
            whole_file_system(path)
        }
    }

    /// The directories recorded and not yet made durable (empty on Linux).
    #[must_use]
    pub fn pending(&self) -> Vec<PathBuf> {
        self.lock().iter().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<PathBuf>> {
        // A panic while holding the lock leaves a valid set: take it anyway.
        self.dirs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(target_os = "linux")]
fn whole_file_system(path: &Path) -> Result<()> {
    super::syncfs(path)
}

#[cfg(not(target_os = "linux"))]
fn whole_file_system(_path: &Path) -> Result<()> {
    unreachable!("only Linux has syncfs; PORTABLE is true elsewhere")
}

/// A new version of a file, written beside it by [`Batch::write_beside`]
/// and not yet in place; its temp file stays locked (no sweep takes it)
/// until it is renamed, and is removed if it is dropped unrenamed.
#[derive(Debug)]
pub struct Beside {
    tmp: PathBuf,
    path: PathBuf,
    /// Holds the temp file's lock.
    file: Option<File>,
}

impl Beside {
    /// Renames the new version over the file (call it after the batch's
    /// `finish`, which made its content durable), then `fsync`s the
    /// directory: durable when it returns.
    pub fn rename_durably(self) -> Result<()> {
        let dir = parent(&self.path).to_owned();
        self.rename()?;
        super::fsync_dir(&dir)
    }

    fn rename(mut self) -> Result<()> {
        std::fs::rename(&self.tmp, &self.path)
            .map_err(|e| storage_core::Error::io("rename into place", &self.path, e))?;
        self.file = None; // in place: unlocked, and nothing to remove
        Ok(())
    }
}

impl Drop for Beside {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            // Best effort: the temp file is ours; a sweep removes it if this fails too.
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

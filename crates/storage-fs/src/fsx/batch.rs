//! Making many changes durable at once, on every platform: [`Batch`].
//!
//! A bulk writer (the migration's staging, publishing, backup and
//! rollback) writes thousands of files and only then needs them all
//! durable, before the journal moves on. An `fsync` per file and per
//! directory is what a durable write costs one at a time; the batch lets a
//! platform do better where it can:
//!
//! - **Linux** (5.8 and later): nothing happens while the phase writes;
//!   [`Batch::finish`] is one `syncfs` of the file system (every dirty page
//!   and every metadata change on it, data and directories alike), through
//!   a descriptor the batch opened **before** it wrote anything there (see
//!   "Whose error it is" below).
//! - **Elsewhere** (macOS, FreeBSD; Linux before 5.8, whose `syncfs` does
//!   not report write-back errors; and Linux with the cargo feature
//!   `portable-durability`, so that this path is tested): the batch keeps
//!   the same promise the long way. Each file is `fsync`ed as its writer
//!   finishes it, through the descriptor it was written with
//!   ([`Batch::file_written`]; on macOS with `fcntl(F_FULLFSYNC)`, see
//!   [`sync_file`](super::sync_file)), and every directory whose entries
//!   changed (a file or directory created, renamed in or out, removed) is
//!   recorded and `fsync`ed once by [`Batch::finish`].
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
//!
//! # Whose error it is: the descriptor `syncfs` goes through
//!
//! When a dirty page cannot be written back (`EIO`; `ENOSPC` on thin or
//! loop-backed storage), the kernel marks the page clean and records the
//! error; the data may be gone. Since Linux 5.8 `syncfs` reports such
//! errors through the superblock's `errseq_t` (`s_wb_err`: the latest
//! error, a change counter and a "seen" flag). Each *open file description*
//! samples it when it is opened, and `syncfs(fd)` fails if the value moved
//! since that description's sample, then advances the sample to it. The
//! sample taken at `open` counts an error nobody has seen yet as new, but
//! once any `syncfs` has reported the error (any process, any descriptor on
//! that file system), it is marked seen, and a descriptor opened *after*
//! that is told nothing.
//!
//! So a `syncfs` through a descriptor opened at `finish` (what this module
//! did until item 8 of issue 20) could return `Ok` over this batch's lost
//! writes: another transaction's, or another program's, `syncfs` had
//! written the pages back, been told of the failure, and marked it seen.
//!
//! A descriptor opened before the batch's first write there sampled the
//! `errseq_t` before any of the batch's pages could fail to be written:
//! every write-back error since then moves the value away from its sample,
//! and is reported to it whoever else has been told. That is why the batch
//! opens one when it is created ([`Batch::new`]) and, for each further file
//! system it will write to, before it writes there ([`Batch::cover`]), and
//! keeps them: `finish` syncs through the one of the file system asked
//! for, and a file system the batch holds none for is an error, never a
//! descriptor opened late. Each `finish` advances the sample, so the next
//! one answers for what happened since. The answer errs on the safe side
//! only: an error of another file on the same file system since the batch
//! began fails the batch too, and so does an error from before it began
//! that nobody had seen yet.
//!
//! Before Linux 5.8, `syncfs` returned only what writing back the block
//! device's own page cache returned (the file system's `sync_fs` result
//! was ignored), never a failed write-back of a file's pages: no
//! descriptor, early or late, would have been told, and `Ok` would mean
//! nothing. There a batch takes the
//! portable path instead (decided from `uname`'s release, once): the
//! `fsync` of each file goes through the descriptor it was written with,
//! and `fsync` reports through the file's own `errseq_t` (since Linux
//! 4.13), sampled when that descriptor was opened, before the writes, so
//! no one else can take the error from it either. Before 4.13 even `fsync`
//! told only the first caller to look, and nothing in user space can
//! guarantee durability there.
//!
//! The portable path `fsync`s a changed *directory* through a descriptor
//! opened at `finish`. A directory whose own blocks failed to be written,
//! and whose error another process was told first, would go unreported;
//! on journaling file systems (ext4, XFS, btrfs) a directory's change is
//! written through the journal, whose failure fails every later `fsync`.

use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use storage_core::Error;

use super::{Result, create_dir_all_unsynced, create_dirs, create_temp, parent, rename_noreplace};

/// Whether every batch makes changes durable one by one (see the module
/// docs): everywhere but Linux, and on Linux with `portable-durability`.
/// On Linux before 5.8 batches do too ([`Batch::portable`]).
pub const PORTABLE: bool = cfg!(any(
    not(target_os = "linux"),
    feature = "portable-durability"
));

/// The changes of one phase of a bulk writer, made durable together by
/// [`Batch::finish`] (see the module docs). Shared by the phase's threads.
#[derive(Debug)]
pub struct Batch {
    /// Whether this batch takes the portable path (see [`Batch::portable`]).
    portable: bool,
    /// Directories whose entries changed since the last `finish` (portable
    /// path only; always empty otherwise).
    dirs: Mutex<BTreeSet<PathBuf>>,
    /// One descriptor per file system the batch writes to, opened before it
    /// wrote there (the `syncfs` path only; always empty otherwise).
    file_systems: Mutex<Vec<Held>>,
}

/// A descriptor `finish` syncs through, and the file system it is on.
#[derive(Debug)]
struct Held {
    /// `st_dev` of the file system.
    dev: u64,
    file: File,
}

impl Batch {
    /// An empty batch for changes on the file system holding `path` (or,
    /// if `path` does not exist yet, its nearest existing ancestor). On the
    /// `syncfs` path it opens that file system's descriptor now: create the
    /// batch before anything it covers is written (see the module docs).
    pub fn new(path: &Path) -> Result<Self> {
        let batch = Self {
            portable: PORTABLE || !syncfs_reports_write_back_errors(),
            dirs: Mutex::default(),
            file_systems: Mutex::default(),
        };
        batch.cover(path)?;
        Ok(batch)
    }

    /// The batch will also change the file system holding `path` (or its
    /// nearest existing ancestor): call it before anything is written
    /// there through the batch, so that [`finish`](Self::finish) is told
    /// of every write-back error since (see the module docs). Costs an
    /// `open` on the `syncfs` path, nothing on the portable one; a file
    /// system the batch covers already keeps the descriptor it has.
    pub fn cover(&self, path: &Path) -> Result<()> {
        if self.portable {
            return Ok(());
        }
        let (at, file) = nearest_existing(path, "open", |p| File::open(p))?;
        let dev = file.metadata().map_err(|e| Error::io("stat", at, e))?.dev();
        let mut held = lock(&self.file_systems);
        if !held.iter().any(|h| h.dev == dev) {
            held.push(Held { dev, file });
        }
        Ok(())
    }

    /// Whether this batch makes each change durable by itself (an `fsync`
    /// per file and per changed directory) rather than by one `syncfs`:
    /// where [`PORTABLE`] is set, and on Linux before 5.8.
    #[must_use]
    pub fn portable(&self) -> bool {
        self.portable
    }

    /// The writer is done with the new file `file` at `path`: on the
    /// portable path it is `fsync`ed now and its directory recorded.
    pub fn file_written(&self, file: &File, path: &Path) -> Result<()> {
        if self.portable {
            super::sync_file(file, path)?;
            self.dir_changed(parent(path));
        }
        Ok(())
    }

    /// An entry of `dir` was created, renamed or removed by the writer.
    pub fn dir_changed(&self, dir: &Path) {
        if self.portable {
            self.lock().insert(dir.to_owned());
        }
    }

    /// Creates `dir` and its missing parents (0700); made durable by
    /// [`finish`](Self::finish).
    pub fn create_dir_all(&self, dir: &Path) -> Result<()> {
        if self.portable {
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
    /// file system holding `path`, through the descriptor the batch opened
    /// for it before writing there (an error if it holds none: see
    /// [`cover`](Self::cover)); on the portable path an `fsync` of each
    /// recorded directory (a recorded directory removed since is skipped:
    /// its removal is recorded in its parent). The batch is empty afterwards.
    ///
    /// A failed `syncfs` or `fsync` is returned, never retried.
    pub fn finish(&self, path: &Path) -> Result<()> {
        if self.portable {
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
            let (_, meta) = nearest_existing(path, "stat", |p| std::fs::metadata(p))?;
            let held = lock(&self.file_systems);
            let Some(h) = held.iter().find(|h| h.dev == meta.dev()) else {
                return Err(Error::io(
                    "syncfs",
                    path,
                    io::Error::other(
                        "the batch opened no descriptor of this file system before writing \
                         to it (`Batch::cover`), so a write-back error could go unreported",
                    ),
                ));
            };
            syncfs(&h.file).map_err(|e| Error::io("syncfs", path, e))
        }
    }

    /// The directories recorded and not yet made durable (empty on the
    /// `syncfs` path).
    #[must_use]
    pub fn pending(&self) -> Vec<PathBuf> {
        self.lock().iter().cloned().collect()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeSet<PathBuf>> {
        lock(&self.dirs)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves a valid value: take it anyway.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `op` on `path`, or, where it does not exist, on its nearest existing
/// ancestor (which holds what will be created there); returns where it
/// succeeded.
fn nearest_existing<'p, T>(
    path: &'p Path,
    what: &'static str,
    op: impl Fn(&Path) -> io::Result<T>,
) -> Result<(&'p Path, T)> {
    let mut at = path;
    loop {
        match op(at) {
            Ok(t) => return Ok((at, t)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => match at.parent() {
                Some(p) if !p.as_os_str().is_empty() => at = p,
                _ => return Err(Error::io(what, at, e)),
            },
            Err(e) => return Err(Error::io(what, at, e)),
        }
    }
}

/// Writes back every dirty page of the file system holding `file`, and
/// reports any write-back error on it since `file` was opened or last
/// synced (Linux 5.8 and later; see the module docs).
#[cfg(target_os = "linux")]
fn syncfs(file: &File) -> io::Result<()> {
    rustix::fs::syncfs(file).map_err(io::Error::from)
}

#[cfg(not(target_os = "linux"))]
fn syncfs(_file: &File) -> io::Result<()> {
    unreachable!("only Linux has syncfs; every batch is portable elsewhere")
}

/// Whether `syncfs` reports write-back errors here: Linux 5.8 and later
/// (the superblock's `errseq_t`, see the module docs). Read from `uname`
/// once; a release it cannot read counts as older (the portable path is
/// slower, never wrong).
pub(crate) fn syncfs_reports_write_back_errors() -> bool {
    #[cfg(target_os = "linux")]
    {
        static ANSWER: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ANSWER.get_or_init(|| {
            let uname = rustix::system::uname();
            let release = uname.release().to_string_lossy();
            let yes = release_at_least(&release, (5, 8));
            if !yes {
                tracing::debug!(%release, "syncfs reports no write-back errors before Linux 5.8: bulk writes are fsynced file by file");
            }
            yes
        })
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// Whether the kernel release `release` (as `uname -r` prints it:
/// `6.1.0-18-amd64`, `4.18.0-553.el8_10.x86_64`) is `major.minor` or
/// later; `false` if it does not start with two numbers. (Only Linux asks.)
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) fn release_at_least(release: &str, (major, minor): (u32, u32)) -> bool {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let mut number = || parts.next().and_then(|p| p.parse::<u32>().ok());
    match (number(), number()) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => false,
    }
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

//! Cross-process locks: kernel `flock` on dedicated lock files.
//!
//! # Why `flock`, and why dedicated files
//!
//! A `flock` belongs to an open file description; the kernel drops it when
//! the last descriptor closes, which includes the holder being killed. So a
//! crashed holder never leaves a lock that someone must delete by hand (the
//! failure mode of pid files and `O_EXCL` lock files). The lock file is never
//! replaced or deleted while the store exists: a lock on a file that is later
//! renamed over would guard a dead inode.
//!
//! After taking the lock, the holder writes who it is (pid, host, time) into
//! the file. That text is a hint for messages ("locked by process 4711 on
//! build-3"), never the lock itself.
//!
//! # Modes and order
//!
//! All locks are exclusive. Today no code path holds two of them at once:
//! registering a repository takes and releases `locks/repos.lock` before a
//! migration takes `locks/migrate-<repo>.lock`, and resume locks are
//! Prodigy's, taken on their own. Code that ever needs several must take
//! them in this order: migration lock, registry, resume locks; then no two
//! processes can deadlock.
//!
//! # Limitations
//!
//! `flock` is not reliable on some network file systems (older NFS); the store
//! is meant for a local disk.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use storage_core::{Error, LockHolder, LockKey, LockWait, Result};

use crate::fsx;

/// A held `flock`; dropping it releases the lock (the file stays).
#[derive(Debug)]
#[must_use = "the lock is released as soon as this is dropped"]
pub struct FileLock {
    file: File,
    path: PathBuf,
}

impl FileLock {
    /// Takes the exclusive lock on `path`, creating the file (0600) and its
    /// directory (0700) if needed, waiting as `wait` says. On success the
    /// holder's description is written into the file for messages.
    pub fn acquire(
        path: &Path,
        key: &LockKey,
        holder: &LockHolder,
        wait: LockWait,
    ) -> Result<Self> {
        fsx::create_dir_all(fsx::parent(path))?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(fsx::FILE_MODE)
            .open(path)
            .map_err(|e| Error::io("open lock file", path, e))?;
        let start = Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) => {}
                Err(TryLockError::Error(e)) => return Err(Error::io("lock", path, e)),
            }
            let waited = start.elapsed();
            let limit = match wait {
                LockWait::NoWait => Duration::ZERO,
                LockWait::Timeout(d) => d,
            };
            if waited >= limit {
                return Err(Error::Locked {
                    key: key.clone(),
                    holder: read_holder(path),
                    waited: matches!(wait, LockWait::Timeout(_)).then_some(waited),
                });
            }
            std::thread::sleep(pause.min(limit.saturating_sub(waited)));
            pause = (pause * 2).min(Duration::from_millis(50));
        }
        let mut lock = Self {
            file,
            path: path.to_owned(),
        };
        lock.write_holder(holder)?;
        Ok(lock)
    }

    fn write_holder(&mut self, holder: &LockHolder) -> Result<()> {
        let text = serde_json::to_vec(holder).expect("a LockHolder always serializes");
        // In place, never by rename: see the module docs. Not fsynced: a hint.
        (|| {
            self.file.set_len(0)?;
            self.file.seek(SeekFrom::Start(0))?;
            self.file.write_all(&text)
        })()
        .map_err(|e| Error::io("write lock holder to", &self.path, e))
    }

    /// The lock file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// What the current (or last) holder of the lock at `path` wrote, if readable.
#[must_use]
pub fn read_holder(path: &Path) -> Option<LockHolder> {
    let mut text = Vec::new();
    File::open(path).ok()?.read_to_end(&mut text).ok()?;
    serde_json::from_slice(&text).ok()
}

/// This process's description for a lock it takes on `key`.
#[must_use]
pub fn this_process(key: &str) -> LockHolder {
    LockHolder {
        job_id: key.to_owned(),
        process_id: std::process::id(),
        hostname: hostname(),
        acquired_at: crate::time::now(),
    }
}

fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

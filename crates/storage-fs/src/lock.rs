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
//! # Fencing tokens and lost locks
//!
//! A resume lock ([`FencedLock`]) also has a fencing token: a number larger
//! than that of every earlier acquisition of the same key, written into the
//! lock file beside the holder's description (`"fence"`). It is the larger
//! of the file's last token plus one and the current time in microseconds,
//! so it keeps growing even when the lock file is removed and made again
//! (only a clock set back by more than the time between two acquisitions
//! could break that; the time is a floor, the file's count the rule). A
//! write made with a token ([`with_fence`]) is refused unless the token is
//! the one in the lock file, and the check and the write happen under a
//! shared `flock` on the locks' directory, which an acquisition takes
//! exclusively while it writes its token: no acquisition comes between the
//! check and the write.
//!
//! A `flock` is not lost while its holder lives, but its *file* can be: a
//! person or a program that removes or replaces `resume_locks/<key>.lock`
//! lets the next process lock a new file while the old holder still holds
//! the old one. [`FencedLock`]'s check compares the locked descriptor with
//! the path (same inode on the same device, still linked: a descriptor
//! held open keeps its inode from being reused), and its successor's token
//! refuses the old holder's fenced writes.
//!
//! # Limitations
//!
//! `flock` is not reliable on some network file systems (older NFS); the store
//! is meant for a local disk. On NFS, a client that loses its lease loses
//! its locks without being told; fenced writes are then refused only once
//! another holder has written its token.

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
        self.write_holder_with(holder, None)
    }

    /// Writes the holder's description, and its fencing token if any.
    fn write_holder_with(&mut self, holder: &LockHolder, fence: Option<u64>) -> Result<()> {
        let mut value = serde_json::to_value(holder).expect("a LockHolder always serializes");
        if let (Some(token), Some(map)) = (fence, value.as_object_mut()) {
            map.insert("fence".to_owned(), token.into());
        }
        let text = serde_json::to_vec(&value).expect("JSON always serializes");
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

/// A resume lock with its fencing token; see the module docs.
#[derive(Debug)]
pub struct FencedLock {
    lock: FileLock,
    token: u64,
    lost: std::sync::atomic::AtomicBool,
}

impl FencedLock {
    /// Takes the lock on `path` like [`FileLock::acquire`], then gives it
    /// the next fencing token, under the exclusive `flock` of the locks'
    /// directory.
    pub fn acquire(
        path: &Path,
        key: &LockKey,
        holder: &LockHolder,
        wait: LockWait,
    ) -> Result<Self> {
        let mut lock = FileLock::acquire(path, key, holder, wait)?;
        let dir = DirLock::exclusive(fsx::parent(path))?;
        let last = read_fence(path).unwrap_or(0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let token = last.saturating_add(1).max(now);
        lock.write_holder_with(holder, Some(token))?;
        // Durable before any write relies on it: a token that a power loss
        // could take back could be handed out twice.
        lock.file
            .sync_data()
            .map_err(|e| Error::io("fsync", &lock.path, e))?;
        drop(dir);
        Ok(Self {
            lock,
            token,
            lost: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The token of this acquisition.
    #[must_use]
    pub fn token(&self) -> u64 {
        self.token
    }

    /// Whether the locked file is still the one at the lock's path; once
    /// not, for good.
    pub fn check(&self) -> Result<bool> {
        use std::os::unix::fs::MetadataExt;
        use std::sync::atomic::Ordering;
        if self.lost.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let path = &self.lock.path;
        let held = self
            .lock
            .file
            .metadata()
            .map_err(|e| Error::io("stat", path, e))?;
        let same = match std::fs::symlink_metadata(path) {
            Ok(now) => held.nlink() > 0 && now.ino() == held.ino() && now.dev() == held.dev(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(Error::io("stat", path, e)),
        };
        if !same {
            self.lost.store(true, Ordering::Relaxed);
            tracing::warn!(lock = %path.display(), "a held lock's file was removed or replaced: the lock is lost");
        }
        Ok(same)
    }

    /// Whether [`FencedLock::check`] found the lock lost.
    #[must_use]
    pub fn known_lost(&self) -> bool {
        self.lost.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl storage_core::HeldLock for FencedLock {
    fn token(&self) -> u64 {
        self.token
    }
    fn check(&self) -> Result<bool> {
        FencedLock::check(self)
    }
    fn known_lost(&self) -> bool {
        FencedLock::known_lost(self)
    }
}

/// A `flock` on a directory, released when dropped.
struct DirLock {
    _held: File,
}

impl DirLock {
    fn exclusive(dir: &Path) -> Result<Self> {
        let f = File::open(dir).map_err(|e| Error::io("open", dir, e))?;
        f.lock().map_err(|e| Error::io("lock", dir, e))?;
        Ok(Self { _held: f })
    }

    fn shared(dir: &Path) -> Result<Self> {
        let f = File::open(dir).map_err(|e| Error::io("open", dir, e))?;
        f.lock_shared().map_err(|e| Error::io("lock", dir, e))?;
        Ok(Self { _held: f })
    }
}

/// The fencing token in the lock file at `path`, if it has one.
fn read_fence(path: &Path) -> Option<u64> {
    let mut text = Vec::new();
    File::open(path).ok()?.read_to_end(&mut text).ok()?;
    serde_json::from_slice::<serde_json::Value>(&text)
        .ok()?
        .get("fence")?
        .as_u64()
}

/// Runs `write` only if `fence` is the newest acquisition of the lock whose
/// file is `path` (see the module docs); else [`Error::LockLost`].
pub fn with_fence<T>(
    path: &Path,
    fence: &storage_core::Fence,
    write: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let dir = fsx::parent(path);
    let held = match DirLock::shared(dir) {
        Ok(d) => d,
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::LockLost {
                key: fence.key.clone(),
                token: fence.token,
                current: None,
            });
        }
        Err(e) => return Err(e),
    };
    let current = read_fence(path);
    if current != Some(fence.token) {
        return Err(Error::LockLost {
            key: fence.key.clone(),
            token: fence.token,
            current,
        });
    }
    let out = write();
    drop(held);
    out
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

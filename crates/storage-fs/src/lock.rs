//! Cross-process locks: kernel `flock` on dedicated lock files.
//!
//! # Why `flock`, and why dedicated files
//!
//! A `flock` belongs to an open file description; the kernel drops it when
//! the last descriptor closes, which includes the holder being killed. So a
//! crashed holder never leaves a lock that someone must delete by hand (the
//! failure mode of pid files and `O_EXCL` lock files). Whoever takes a lock
//! checks, once it holds the `flock`, that the file it locked is still the
//! one at the path ([`fsx::is_linked_at`]), and locks the file now there if
//! not: a lock on a file that was removed or renamed over guards a dead
//! inode.
//!
//! That check is what makes removing a lock file safe, and a resume lock
//! ([`FencedLock`]) removes its file when it is released, while it still
//! holds the `flock`, as Prodigy's own resume locks always did (its code
//! and its tests look for the file to tell a held lock). A process that
//! opened the file before the removal and waits for its `flock` then finds
//! it unlinked and starts again on a new file. A holder killed before its
//! release leaves the file behind, unlocked: the next process locks it and
//! overwrites the holder it names. The store's own locks (`locks/`) stay.
//!
//! # Next to an older Prodigy
//!
//! Prodigy before this store takes a resume lock by creating its file with
//! `O_EXCL`, writing `{job_id, process_id, hostname, acquired_at}`, and
//! removing the file to release it; it takes no `flock`. So a `flock` alone
//! would let this store take a lock an older Prodigy holds. A resume lock
//! file whose holder has no `"fence"` (every holder this store writes has
//! one) was written by an older Prodigy: it is honoured as that Prodigy
//! honours it, held while its `process_id` is a live process on this
//! machine, stale (taken over) once it is not. Both directions are covered:
//! an older Prodigy reads this store's holder (the same four fields) and
//! sees a live process. Left open, because an older Prodigy's own
//! takeover is not atomic (it reads a dead pid, then removes the file,
//! then creates its own): an older Prodigy that read the stale holder
//! before this store replaced it removes this store's file afterwards and
//! holds the lock too (the same race two older Prodigies have with each
//! other); and one that has created its file but not yet written it looks,
//! for those microseconds, like a free lock. After writing its holder this
//! store checks its file is still the one at the path (and starts again if
//! not), so the window is that of the older Prodigy's own steps; past it,
//! the guard's `check` reports the lock lost and fenced writes are refused
//! (a fenced write also checks that the lock file still carries its
//! token).
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
//! than that of every earlier acquisition of the same key, kept in the
//! key's fence file `resume_locks/<key>.fence` (and copied into the lock
//! file's description as `"fence"`, for people). It is the larger of the
//! fence file's last token plus one and the current time in microseconds:
//! the count is the rule, so a clock set back changes nothing while the
//! fence file exists, and the time is the floor that keeps tokens growing
//! if someone removes it. A write made with a token ([`with_fence`]) holds
//! the fence file's `flock` shared while it checks the token and writes;
//! an acquisition holds it exclusively while it writes the next token, so
//! no acquisition comes between a check and its write. Only the same key's
//! acquisition waits for a fenced write (a stale holder's, finishing);
//! other keys never do.
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
        let mut lock = Self::take(path, key, wait)?;
        lock.write_holder(holder)?;
        Ok(lock)
    }

    /// Takes the lock like [`FileLock::acquire`] without writing a holder.
    ///
    /// Once it holds the `flock`, it checks that the file it locked is still
    /// the one at `path` ([`fsx::is_linked_at`]): an older Prodigy releases
    /// a resume lock by removing its file, and a process that waited on the
    /// removed file would otherwise hold a lock nobody else can see while the
    /// next process locks a new file. Then it locks the file now at `path`.
    fn take(path: &Path, key: &LockKey, wait: LockWait) -> Result<Self> {
        let start = Instant::now();
        let limit = match wait {
            LockWait::NoWait => Duration::ZERO,
            LockWait::Timeout(d) => d,
        };
        loop {
            fsx::create_dir_all(fsx::parent(path))?;
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(fsx::FILE_MODE)
                .open(path)
                .map_err(|e| Error::io("open lock file", path, e))?;
            let mut pause = Duration::from_millis(1);
            loop {
                match file.try_lock() {
                    Ok(()) => break,
                    Err(TryLockError::WouldBlock) => {}
                    Err(TryLockError::Error(e)) => return Err(Error::io("lock", path, e)),
                }
                let waited = start.elapsed();
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
            if fsx::is_linked_at(&file, path)? {
                return Ok(Self {
                    file,
                    path: path.to_owned(),
                });
            }
            tracing::debug!(lock = %path.display(), "the lock file was removed while this waited for it; locking the one there now");
        }
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
    /// the next fencing token, under the exclusive `flock` of the key's
    /// fence file.
    pub fn acquire(
        path: &Path,
        key: &LockKey,
        holder: &LockHolder,
        wait: LockWait,
    ) -> Result<Self> {
        let start = Instant::now();
        loop {
            let Some(lock) = Self::take_once(path, key, holder, wait, start)? else {
                continue;
            };
            // An older Prodigy taking over a stale file removes it and
            // creates its own: if that happened while this wrote its
            // holder, the file this locked is gone: start again.
            if fsx::is_linked_at(&lock.lock.file, path)? {
                return Ok(lock);
            }
            tracing::debug!(lock = %path.display(), "the lock file was replaced while this took it; taking the one there now");
        }
    }

    fn take_once(
        path: &Path,
        key: &LockKey,
        holder: &LockHolder,
        wait: LockWait,
        start: Instant,
    ) -> Result<Option<Self>> {
        let mut lock = loop {
            let lock = FileLock::take(path, key, wait)?;
            let Some(older) = older_prodigys_holder(path) else {
                break lock;
            };
            // An older Prodigy holds it (see the module docs): wait on, or refuse.
            drop(lock);
            let limit = match wait {
                LockWait::NoWait => Duration::ZERO,
                LockWait::Timeout(d) => d,
            };
            let waited = start.elapsed();
            if waited >= limit {
                return Err(Error::Locked {
                    key: key.clone(),
                    holder: Some(older),
                    waited: matches!(wait, LockWait::Timeout(_)).then_some(waited),
                });
            }
            std::thread::sleep(Duration::from_millis(50).min(limit.saturating_sub(waited)));
        };
        let fence_path = crate::layout::lock_fence_file(path);
        let fence = Fence::open(&fence_path, true)?.expect("created if missing");
        fence
            .0
            .lock()
            .map_err(|e| Error::io("lock", &fence_path, e))?;
        let fence = fence.still_linked(&fence_path, true)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let token = fence
            .token(&fence_path)?
            .unwrap_or(0)
            .saturating_add(1)
            .max(now);
        // Durable before any write relies on it: a token that a power loss
        // could take back could be handed out twice.
        fence.write(&fence_path, token)?;
        // Once more, right before writing: an older Prodigy may have created
        // and written its file while this made the token durable (an empty
        // file, its first moment, looked free). The outer loop then waits
        // or refuses as for any holder.
        if older_prodigys_holder(path).is_some() {
            drop(fence);
            return Ok(None);
        }
        lock.write_holder_with(holder, Some(token))?;
        drop(fence);
        Ok(Some(Self {
            lock,
            token,
            lost: std::sync::atomic::AtomicBool::new(false),
        }))
    }
}

impl Drop for FencedLock {
    /// Releases the lock by removing its file first, under the `flock` (see
    /// the module docs); a file that is no longer the one at the path (it
    /// was removed or replaced: the lock was lost) is not ours to remove.
    fn drop(&mut self) {
        match fsx::is_linked_at(&self.lock.file, &self.lock.path) {
            Ok(true) => {
                if let Err(e) = std::fs::remove_file(&self.lock.path)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    // Still released (the `flock` goes with the file's
                    // descriptor); the next holder overwrites the file.
                    tracing::warn!(lock = %self.lock.path.display(), error = %e, "could not remove a released lock's file");
                }
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(lock = %self.lock.path.display(), error = %e, "could not check a released lock's file");
            }
        }
    }
}

/// The holder an older Prodigy wrote into the lock file at `path`, if it
/// did (a holder without `"fence"`) and its process is alive on this
/// machine; `None` for a free file, one this store wrote, or a stale one.
/// Like Prodigy, it looks at the process id alone, whatever the host.
fn older_prodigys_holder(path: &Path) -> Option<LockHolder> {
    let value = holder_json(path)?;
    if value.get("fence").is_some() {
        return None;
    }
    let holder: LockHolder = serde_json::from_value(value).ok()?;
    process_alive(holder.process_id).then_some(holder)
}

/// Whether a process with id `pid` exists in this pid namespace (`kill(pid,
/// 0)`: a process of another user answers `EPERM`, and is alive).
fn process_alive(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    match rustix::process::test_kill_process(pid) {
        Ok(()) => true,
        Err(e) => e == rustix::io::Errno::PERM,
    }
}

impl storage_core::HeldLock for FencedLock {
    fn token(&self) -> u64 {
        self.token
    }

    /// Whether the locked file is still the one at the lock's path; once
    /// not, for good.
    fn check(&self) -> Result<bool> {
        use std::sync::atomic::Ordering;
        if self.lost.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let same = fsx::is_linked_at(&self.lock.file, &self.lock.path)?;
        if !same {
            self.lost.store(true, Ordering::Relaxed);
            tracing::warn!(lock = %self.lock.path.display(), "a held lock's file was removed or replaced: the lock is lost");
        }
        Ok(same)
    }

    fn known_lost(&self) -> bool {
        self.lost.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A key's fence file, open: its token as decimal text.
struct Fence(File);

impl Fence {
    /// Opens the fence file at `path`, creating it if `create`; `None` if
    /// it does not exist and is not to be created.
    fn open(path: &Path, create: bool) -> Result<Option<Self>> {
        match OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .mode(fsx::FILE_MODE)
            .open(path)
        {
            Ok(f) => Ok(Some(Self(f))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !create => Ok(None),
            Err(e) => Err(Error::io("open", path, e)),
        }
    }

    /// Makes sure the locked fence file is still the one at `path` (someone
    /// may have removed it while this waited); if not, an acquisition
    /// (`create`) locks a new one, and a fenced write gets `None`.
    fn still_linked(self, path: &Path, create: bool) -> Result<Self> {
        let mut fence = self;
        for _ in 0..64 {
            if fsx::is_linked_at(&fence.0, path)? {
                return Ok(fence);
            }
            if !create {
                break;
            }
            fence = Self::open(path, true)?.expect("created");
            fence.0.lock().map_err(|e| Error::io("lock", path, e))?;
        }
        Err(Error::io(
            "lock (it kept being removed)",
            path,
            std::io::Error::other("the fence file was removed while waiting for it"),
        ))
    }

    /// The token written in it, if any.
    fn token(&self, path: &Path) -> Result<Option<u64>> {
        let mut text = String::new();
        (&self.0)
            .read_to_string(&mut text)
            .map_err(|e| Error::io("read", path, e))?;
        Ok(text.trim().parse().ok())
    }

    /// Writes `token` in place and `fdatasync`s it.
    fn write(&self, path: &Path, token: u64) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let text = format!("{token}\n");
        self.0
            .set_len(0)
            .and_then(|()| self.0.write_all_at(text.as_bytes(), 0))
            .and_then(|()| self.0.sync_data())
            .map_err(|e| Error::io("write", path, e))
    }
}

/// Runs `write` only if `fence` is the newest acquisition of the lock whose
/// file is `path` (see the module docs); else [`Error::LockLost`].
pub fn with_fence<T>(
    path: &Path,
    fence: &storage_core::Fence,
    write: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let lost = |current| Error::LockLost {
        key: fence.key.clone(),
        token: fence.token,
        current,
    };
    let fence_path = crate::layout::lock_fence_file(path);
    let Some(file) = Fence::open(&fence_path, false)? else {
        return Err(lost(None));
    };
    file.0
        .lock_shared()
        .map_err(|e| Error::io("lock", &fence_path, e))?;
    if !fsx::is_linked_at(&file.0, &fence_path)? {
        return Err(lost(None));
    }
    let current = file.token(&fence_path)?;
    if current != Some(fence.token) {
        return Err(lost(current));
    }
    // The lock file must still be the holder's: an older Prodigy that took
    // the lock over (it removes a file it thinks stale and creates its own,
    // which has no `fence`) leaves the fence file alone. An acquisition
    // writes its holder before it lets go of the fence file, so the holder
    // of the newest token is there by now.
    let holder_fence = holder_json(path).and_then(|v| v.get("fence")?.as_u64());
    if holder_fence != Some(fence.token) {
        return Err(lost(current));
    }
    let out = write();
    drop(file);
    out
}

/// What the current (or last) holder of the lock at `path` wrote, if readable.
#[must_use]
pub fn read_holder(path: &Path) -> Option<LockHolder> {
    serde_json::from_value(holder_json(path)?).ok()
}

/// The JSON the lock file at `path` holds, if it is readable JSON: the
/// holder's description, and `"fence"` when this store wrote it.
fn holder_json(path: &Path) -> Option<serde_json::Value> {
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

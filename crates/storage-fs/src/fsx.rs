//! The file-system wrapper: every call names its path in the error, and the
//! durable-write protocol lives here once.
//!
//! Rules kept here (see `docs/storage-layout.md`, "Durability"):
//!
//! - **Atomic replace**: a temp file is created beside the target with
//!   `O_CREAT|O_EXCL` and mode 0600, written, `fsync`ed, renamed over the
//!   target, and the directory is `fsync`ed before success is reported. A
//!   crash at any point leaves the old or the new file, never a torn one.
//! - A failed `fsync` is reported, never retried (the kernel may have dropped
//!   the dirty pages already, so a retry could "succeed" over lost data).
//! - Directories are created 0700, files 0600, at creation (never widened later).
//! - A created directory is made durable by an `fsync` of its parent
//!   ([`create_dir_all`]): the entries written into it later are fsynced with
//!   it, but the directory's own entry in its parent would otherwise be
//!   durable only on file systems that order metadata.
//! - Temp names start with `.tmp-`, which no identifier can start with, so
//!   listings never show them. They carry the writer's pid, as a hint for
//!   people only.
//! - **Abandoned is decided by a lock, not a pid**: a writer holds an
//!   exclusive `flock` on its temp file for as long as it writes it
//!   ([`create_temp`]), and a sweep removes a temp file only if it can take
//!   that lock without waiting. Pids are per namespace (two containers
//!   sharing one store see different ones) and get reused; a lock is
//!   released by the kernel exactly when its writer is gone or done.
//! - **Bulk writers** (the migration) make many changes durable at once
//!   through a [`Batch`]: one `syncfs` on Linux, through a descriptor the
//!   batch opened before its writes (one opened later may never be told of
//!   a write-back error another process was told of first; see the docs of
//!   `fsx/batch.rs`), and an `fsync` per file and per changed
//!   directory on macOS (`F_FULLFSYNC`), FreeBSD and Linux before 5.8. Only
//!   this module (with [`rename_noreplace`] and [`sync_file`]) knows which
//!   platform it runs on.

use std::ffi::OsString;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use storage_core::{Error, Result};

/// Mode of every directory the store creates.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file the store creates.
pub const FILE_MODE: u32 = 0o600;
/// Prefix of every temp file the store writes.
pub const TEMP_PREFIX: &str = ".tmp-";

/// Creates `dir` and its missing parents with mode 0700, durably: after
/// each directory it creates, it `fsync`s that directory's parent, so the
/// new entry survives a power loss on any file system (not only on those
/// that order metadata). Existing directories cost one `stat` each and no
/// `fsync`.
///
/// It walks up to the first existing ancestor and creates downwards; a
/// directory another process creates meanwhile is taken as it is (its
/// creator makes it durable).
pub fn create_dir_all(dir: &Path) -> Result<()> {
    create_dirs(dir, |d| fsync_dir(parent(d)))
}

/// Creates `dir` and its missing parents with mode 0700, calling `created`
/// after each directory it creates (top down).
fn create_dirs(dir: &Path, mut created: impl FnMut(&Path) -> Result<()>) -> Result<()> {
    let mut missing = Vec::new();
    let mut cur = dir;
    loop {
        match fs::metadata(cur) {
            Ok(m) if m.is_dir() => break,
            Ok(_) => {
                return Err(Error::io(
                    "create directory",
                    cur,
                    io::Error::new(
                        io::ErrorKind::NotADirectory,
                        "it exists and is not a directory",
                    ),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                missing.push(cur);
                match cur.parent() {
                    Some(p) if !p.as_os_str().is_empty() => cur = p,
                    _ => break,
                }
            }
            Err(e) => return Err(Error::io("stat", cur, e)),
        }
    }
    for d in missing.into_iter().rev() {
        match DirBuilder::new().mode(DIR_MODE).create(d) {
            Ok(()) => created(d)?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && d.is_dir() => {}
            Err(e) => return Err(Error::io("create directory", d, e)),
        }
    }
    Ok(())
}

/// Creates `dir` and its missing parents with mode 0700, **without**
/// `fsync`ing their parents: for bulk writers that make the whole tree
/// durable with a [`Batch`] afterwards, before anything depends on it (the
/// migration's staging, publishing and backup; see [`Batch::create_dir_all`]).
/// Everyone else uses [`create_dir_all`].
pub fn create_dir_all_unsynced(dir: &Path) -> Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|e| Error::io("create directory", dir, e))
}

/// `fsync`s a directory, making renames and creations in it durable.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    #[cfg(test)]
    tests::note_dir_fsync(dir);
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io("fsync directory", dir, e))
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh temp-file name for a write to `target_name`: `.tmp-<pid>-<n>-<target>`.
#[must_use]
pub fn temp_name(target_name: &str) -> String {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut short = target_name;
    while short.len() > 96 {
        let mut cut = 96;
        while !short.is_char_boundary(cut) {
            cut -= 1;
        }
        short = &short[..cut];
    }
    format!("{TEMP_PREFIX}{}-{n}-{short}", std::process::id())
}

/// The writer pid encoded in a temp name, if `name` is one of ours.
#[must_use]
pub fn temp_owner(name: &str) -> Option<u32> {
    name.strip_prefix(TEMP_PREFIX)?
        .split('-')
        .next()?
        .parse()
        .ok()
}

/// Creates `path` exclusively with mode 0600 for writing.
pub fn create_new(path: &Path) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
        .map_err(|e| Error::io("create", path, e))
}

/// Whether `file`, held open (and usually just locked), is still the file
/// at `path`: the same inode on the same device, and not unlinked. This is
/// the one re-check after waiting for a lock on a file that someone may
/// remove or replace meanwhile (a log's `.log`, a resume lock, a fence
/// file, a journal); the inode compared cannot have been reused, because
/// the open descriptor keeps it alive. A link at `path` is not followed.
pub fn is_linked_at(file: &File, path: &Path) -> Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let held = file.metadata().map_err(|e| Error::io("stat", path, e))?;
    match fs::symlink_metadata(path) {
        Ok(now) => Ok(held.nlink() > 0 && now.ino() == held.ino() && now.dev() == held.dev()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io("stat", path, e)),
    }
}

/// Creates a fresh temp file in `dir` for a write to `target_name` (see
/// [`temp_name`]) and takes an exclusive `flock` on it, held until the
/// returned file is closed: while it is held, no sweep removes the file.
///
/// A sweep may take the file between its creation and the lock; then the
/// file is gone by the time the lock is ours (no links left), and a new one
/// is made.
pub fn create_temp(dir: &Path, target_name: &str) -> Result<(PathBuf, File)> {
    loop {
        let tmp = dir.join(temp_name(target_name));
        let f = create_new(&tmp)?;
        f.lock().map_err(|e| Error::io("lock", &tmp, e))?;
        if is_linked_at(&f, &tmp)? {
            return Ok((tmp, f));
        }
    }
}

/// Replaces `path` with `bytes` atomically and durably (see the module docs).
///
/// The parent directory must exist.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

/// Like [`write_atomic`], but `fill` writes the content into the temp file
/// (wrap it in a `BufWriter` to stream a large document).
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<()> {
    let dir = parent(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Sibling: the temp file beside its target, locked until renamed.
    let (tmp, mut f) = create_temp(dir, &name)?;
    let result = (|| {
        fill(&mut f).map_err(|e| Error::io("write", &tmp, e))?;
        f.sync_all().map_err(|e| Error::io("fsync", &tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| Error::io("rename into place", path, e))
    })();
    drop(f);
    if result.is_err() {
        // Best effort: the temp file is ours; a sweep removes it if this fails too.
        let _ = fs::remove_file(&tmp);
        return result;
    }
    fsync_dir(dir)
}

/// Writes a new file durably under the first free name of `name(1)`,
/// `name(2)`, …, never replacing an existing file: a temp file beside them
/// is filled by `fill`, `fsync`ed, and renamed into place with
/// [`rename_noreplace`]; the directory is `fsync`ed before success.
///
/// If a file under one of the names already holds exactly the same bytes,
/// nothing new is kept (the same bytes need not be stored twice). Returns
/// the path that holds the bytes and whether it was written now. All names
/// must be in one directory.
pub fn write_new_unique(
    name: impl Fn(u32) -> PathBuf,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<(PathBuf, bool)> {
    let first = name(1);
    let dir = parent(&first);
    let base = first
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Locked until it is renamed into place or removed (dropped at the end).
    let (tmp, mut f) = create_temp(dir, &base)?;
    let result = (|| {
        fill(&mut f).map_err(|e| Error::io("write", &tmp, e))?;
        f.sync_all().map_err(|e| Error::io("fsync", &tmp, e))?;
        let mut n = 1;
        loop {
            let target = name(n);
            match rename_noreplace(&tmp, &target) {
                Ok(()) => return Ok((target, true)),
                Err(Error::Io { ref source, .. })
                    if source.kind() == io::ErrorKind::AlreadyExists =>
                {
                    if same_contents(&tmp, &target)? {
                        remove_file_durable(&tmp)?;
                        return Ok((target, false));
                    }
                    n += 1;
                }
                Err(e) => return Err(e),
            }
        }
    })();
    drop(f);
    match result {
        Ok((path, true)) => {
            fsync_dir(dir)?;
            Ok((path, true))
        }
        Ok(done) => Ok(done),
        Err(e) => {
            // Best effort: the temp file is ours; a sweep removes it if this fails too.
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Whether the files `a` and `b` hold the same bytes (compared in bounded blocks).
fn same_contents(a: &Path, b: &Path) -> Result<bool> {
    let open = |p: &Path| File::open(p).map_err(|e| Error::io("open", p, e));
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    let len = |f: &File, p: &Path| {
        f.metadata()
            .map(|m| m.len())
            .map_err(|e| Error::io("stat", p, e))
    };
    if len(&fa, a)? != len(&fb, b)? {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let n = read_full(&mut fa, &mut ba).map_err(|e| Error::io("read", a, e))?;
        let m = read_full(&mut fb, &mut bb).map_err(|e| Error::io("read", b, e))?;
        if ba[..n] != bb[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

/// Reads until `buf` is full or the end of the file; returns how much was read.
fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// The parent of `path`, or `.` for a bare name.
#[must_use]
pub fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// The contents of `path`, or `None` if it does not exist.
pub fn read_optional(path: &Path) -> Result<Option<Vec<u8>>> {
    match File::open(path) {
        Ok(mut f) => {
            let mut buf = Vec::new();
            f.read_to_end(&mut buf)
                .map_err(|e| Error::io("read", path, e))?;
            Ok(Some(buf))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("open", path, e)),
    }
}

/// `fsync`s `dir`, or, if another process removed it meanwhile (a deletion
/// removing emptied directories), the nearest ancestor that still exists:
/// the change being made durable is then that removal, recorded there.
pub fn fsync_dir_or_ancestor(dir: &Path) -> Result<()> {
    let mut at = dir;
    loop {
        match fsync_dir(at) {
            Err(Error::Io { ref source, .. })
                if source.kind() == io::ErrorKind::NotFound && at.parent().is_some() =>
            {
                at = parent(at);
            }
            other => return other,
        }
    }
}

/// Removes `path` and makes the removal durable; `false` if it did not exist.
pub fn remove_file_durable(path: &Path) -> Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => {
            fsync_dir_or_ancestor(parent(path))?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io("remove", path, e)),
    }
}

/// Removes each directory of `dirs` in order (deepest first) while it is
/// empty, making each removal durable; stops at the first that is not
/// empty or not there. A directory another process fills meanwhile is
/// simply kept (`rmdir` refuses a non-empty directory atomically).
pub fn remove_empty_dirs(dirs: &[PathBuf]) -> Result<()> {
    for dir in dirs {
        match fs::remove_dir(dir) {
            Ok(()) => fsync_dir_or_ancestor(parent(dir))?,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::DirectoryNotEmpty
                ) || e.raw_os_error() == Some(rustix::io::Errno::EXIST.raw_os_error()) =>
            {
                return Ok(());
            }
            Err(e) => return Err(Error::io("remove directory", dir, e)),
        }
    }
    Ok(())
}

/// One entry of a directory listing.
#[derive(Debug)]
pub struct Entry {
    /// The entry's name.
    pub name: OsString,
    /// Its full path.
    pub path: PathBuf,
    /// Its type, as the directory reports it (links are not followed).
    pub file_type: fs::FileType,
}

/// The entries of `dir`, sorted by name; a missing directory is empty.
pub fn read_dir_sorted(dir: &Path) -> Result<Vec<Entry>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("list", dir, e)),
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| Error::io("list", dir, e))?;
        let file_type = entry
            .file_type()
            .map_err(|e| Error::io("stat", entry.path(), e))?;
        out.push(Entry {
            name: entry.file_name(),
            path: entry.path(),
            file_type,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Renames `from` to `to`, failing with `AlreadyExists` instead of replacing `to`.
///
/// - Linux: `renameat2(RENAME_NOREPLACE)`; macOS: `renamex_np(RENAME_EXCL)`
///   (both through rustix's `renameat_with`). Where the file system refuses
///   the flag (some overlay and network file systems), it falls back to
///   [`rename_noreplace_by_link`].
/// - Elsewhere (FreeBSD): [`rename_noreplace_by_link`] always.
pub fn rename_noreplace(from: &Path, to: &Path) -> Result<()> {
    #[cfg(any(target_os = "linux", target_vendor = "apple"))]
    {
        use rustix::fs::{CWD, RenameFlags, renameat_with};
        match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
            Ok(()) => Ok(()),
            Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => {
                rename_noreplace_by_link(from, to)
            }
            #[cfg(target_vendor = "apple")]
            Err(e) if e == rustix::io::Errno::NOTSUP => rename_noreplace_by_link(from, to),
            Err(e) => Err(Error::io("rename into place", to, e.into())),
        }
    }
    #[cfg(not(any(target_os = "linux", target_vendor = "apple")))]
    {
        rename_noreplace_by_link(from, to)
    }
}

/// The no-replace rename where the kernel has no flag for it: a file is
/// moved by `link` (which never replaces) and `unlink`; a crash between the
/// two leaves it under both names, never under neither.
///
/// A directory cannot be hard-linked: it is renamed after checking that
/// `to` does not exist. `rename` never replaces a file or a non-empty
/// directory with a directory (`ENOTDIR`, `ENOTEMPTY`), so the only thing a
/// racing process could lose in the gap is an empty directory it created at
/// `to` at that instant.
pub fn rename_noreplace_by_link(from: &Path, to: &Path) -> Result<()> {
    let meta = fs::symlink_metadata(from).map_err(|e| Error::io("stat", from, e))?;
    if meta.is_dir() {
        match fs::symlink_metadata(to) {
            Ok(_) => {
                return Err(Error::io(
                    "rename into place",
                    to,
                    io::Error::from(io::ErrorKind::AlreadyExists),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("stat", to, e)),
        }
        return fs::rename(from, to).map_err(|e| Error::io("rename into place", to, e));
    }
    fs::hard_link(from, to).map_err(|e| Error::io("link into place", to, e))?;
    fs::remove_file(from).map_err(|e| Error::io("remove", from, e))
}

/// `fsync`s `file` all the way to stable storage: on macOS with
/// `fcntl(F_FULLFSYNC)` (as SQLite's `fullfsync`; a plain `fsync` there
/// leaves the data in the drive's cache), elsewhere with `fsync`.
pub fn sync_file(file: &File, path: &Path) -> Result<()> {
    #[cfg(target_vendor = "apple")]
    let r = rustix::fs::fcntl_fullfsync(file).map_err(io::Error::from);
    #[cfg(not(target_vendor = "apple"))]
    let r = file.sync_all();
    r.map_err(|e| Error::io("fsync", path, e))
}

/// Removes the store's temp files under `dir` (recursively) that no writer
/// holds (see [`create_temp`]); returns them.
pub fn sweep_temp_files(dir: &Path) -> Result<Vec<PathBuf>> {
    sweep(dir, None)
}

/// Like [`sweep_temp_files`], for `dir` itself only (not its subdirectories).
pub fn sweep_temp_files_here(dir: &Path) -> Result<Vec<PathBuf>> {
    sweep(dir, Some(0))
}

/// Like [`sweep_temp_files`], looking at most `levels` directories below
/// `dir` (0: `dir` itself only): for trees whose deeper levels hold files
/// under names that are not the store's (see [`Layout::temp_file_dirs`]).
///
/// [`Layout::temp_file_dirs`]: crate::Layout::temp_file_dirs
pub fn sweep_temp_files_within(dir: &Path, levels: usize) -> Result<Vec<PathBuf>> {
    sweep(dir, Some(levels))
}

fn sweep(dir: &Path, levels: Option<usize>) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let mut stack = vec![(dir.to_owned(), 0usize)];
    while let Some((d, depth)) = stack.pop() {
        for entry in read_dir_sorted(&d)? {
            if entry.file_type.is_dir() {
                if levels.is_none_or(|max| depth < max) {
                    stack.push((entry.path, depth + 1));
                }
                continue;
            }
            let name = entry.name.to_string_lossy();
            if temp_owner(&name).is_none() || !entry.file_type.is_file() {
                continue;
            }
            // Removed while we hold its lock, so no writer can be using it.
            if let Some(_claimed) = claim_abandoned(&entry.path)?
                && remove_file_durable(&entry.path)?
            {
                removed.push(entry.path);
            }
        }
    }
    removed.sort();
    Ok(removed)
}

/// Opens the temp file `path` and takes its lock without waiting: `Some`
/// (holding the lock) if no writer holds it and `path` still names the file
/// locked, `None` if a writer holds it or it is gone.
fn claim_abandoned(path: &Path) -> Result<Option<File>> {
    use std::fs::TryLockError;
    use std::os::unix::fs::MetadataExt;
    let f = match OpenOptions::new()
        .read(true)
        .custom_flags(nofollow_nonblock())
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        // Another user's file: we cannot tell whether it is in use, so it stays.
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return Ok(None),
        Err(e) => return Err(Error::io("open", path, e)),
    };
    match f.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => return Ok(None),
        Err(TryLockError::Error(e)) => return Err(Error::io("lock", path, e)),
    }
    // The writer may have renamed it into place, and a new temp file taken
    // the name, between our listing and our lock.
    let held = f.metadata().map_err(|e| Error::io("stat", path, e))?;
    match fs::symlink_metadata(path) {
        Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => Ok(Some(f)),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("stat", path, e)),
    }
}

/// `O_NOFOLLOW | O_NONBLOCK`: a sweep never follows a link or waits on a FIFO.
fn nofollow_nonblock() -> i32 {
    (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK)
        .bits()
        .cast_signed()
}

mod batch;

pub use batch::{Batch, Beside, PORTABLE};

#[cfg(test)]
pub(crate) mod tests;

//! Reading legacy files safely, and copying them with their hash and mtime.
//!
//! Legacy files are opened with `O_NOFOLLOW | O_NONBLOCK` and checked with
//! `fstat` on the open descriptor: a symbolic link fails to open, a FIFO does
//! not block, and anything that is not a regular file is refused before a
//! byte is read. `std::fs::copy` follows links and blocks on FIFOs, so it is
//! never used on user trees.

use std::fs::{File, FileTimes, Metadata, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use storage_fs::fsx::Batch;

use crate::error::{Error, Result};

/// Size of the one reusable I/O buffer per thread.
const BUF_SIZE: usize = 256 * 1024;

thread_local! {
    // Reused for every file: allocating (and zeroing) a fresh buffer per
    // file cost more than the copying itself on trees of small files.
    static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; BUF_SIZE]);
}

/// Runs `f` with this thread's I/O buffer.
fn with_buf<T>(f: impl FnOnce(&mut [u8]) -> T) -> T {
    BUF.with(|b| f(&mut b.borrow_mut()))
}

/// Opens a regular file without following links or blocking; errors name the path.
pub fn open_regular(path: &Path) -> Result<(File, Metadata)> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc_flags())
        .open(path)
        .map_err(|e| Error::io("open", path, e))?;
    let meta = file.metadata().map_err(|e| Error::io("stat", path, e))?;
    if !meta.is_file() {
        return Err(Error::Refused {
            action: "migrate",
            path: path.to_owned(),
            reason: "it is not a regular file (it changed while being migrated?)".into(),
        });
    }
    Ok((file, meta))
}

fn libc_flags() -> i32 {
    use rustix::fs::OFlags;
    i32::try_from((OFlags::NOFOLLOW | OFlags::NONBLOCK).bits()).expect("flags fit in i32")
}

/// The modification time of `meta` as (seconds, nanoseconds).
#[must_use]
pub fn mtime_of(meta: &Metadata) -> (i64, u32) {
    (meta.mtime(), u32::try_from(meta.mtime_nsec()).unwrap_or(0))
}

/// (seconds, nanoseconds) since the epoch as a `SystemTime`.
#[must_use]
pub fn system_time((secs, nanos): (i64, u32)) -> SystemTime {
    let n = Duration::from_nanos(u64::from(nanos));
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs()) + n
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + n
    }
}

/// Streams `src` into `dest` (created exclusively, 0600), hashing as it goes,
/// and sets `dest`'s mtime. Made durable through `batch` (on Linux by the
/// phase's one `syncfs`; elsewhere `fsync`ed now). Returns (bytes, hash).
pub fn copy_new(
    src: &mut impl Read,
    src_path: &Path,
    dest: &Path,
    mtime: (i64, u32),
    batch: &Batch,
) -> Result<(u64, blake3::Hash)> {
    let mut out = storage_fs::fsx::create_new(dest)?;
    let done = copy_into(src, src_path, &mut out, dest, mtime)?;
    batch.file_written(&out, dest)?;
    Ok(done)
}

/// Like [`copy_new`], into the already open new file `out` at `dest` (a
/// locked temp file from `fsx::create_temp`, say); the caller passes it to
/// `Batch::file_written` when it is done with it.
pub fn copy_into(
    src: &mut impl Read,
    src_path: &Path,
    out: &mut File,
    dest: &Path,
    mtime: (i64, u32),
) -> Result<(u64, blake3::Hash)> {
    let mut hasher = blake3::Hasher::new();
    let mut total = 0u64;
    with_buf(|buf| -> Result<()> {
        loop {
            let n = src.read(buf).map_err(|e| Error::io("read", src_path, e))?;
            if n == 0 {
                return Ok(());
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])
                .map_err(|e| Error::io("write", dest, e))?;
            total += n as u64;
        }
    })?;
    set_mtime(out, dest, mtime)?;
    Ok((total, hasher.finalize()))
}

/// The content of `file` (at `path`), which `fstat` said holds `len`
/// bytes: read into a buffer of that size, stopping once `len` bytes are
/// in, without the extra `read` that would only confirm the end of the
/// file (one system call per file saved on trees of small files). A file
/// that grew or shrank since its `fstat` is seen by the fingerprint check
/// that every caller makes afterwards (its size changed), never trusted.
pub fn read_whole(file: &mut File, path: &Path, len: u64) -> Result<Vec<u8>> {
    let want = usize::try_from(len).unwrap_or(usize::MAX);
    let mut bytes = vec![0u8; want];
    let mut got = 0;
    while got < want {
        match file.read(&mut bytes[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("read", path, e)),
        }
    }
    bytes.truncate(got);
    Ok(bytes)
}

/// Writes `bytes` to a new file `dest` (0600) with `mtime`, made durable
/// through `batch` (see [`copy_new`]).
pub fn write_new(
    dest: &Path,
    bytes: &[u8],
    mtime: (i64, u32),
    batch: &Batch,
) -> Result<blake3::Hash> {
    let mut out = storage_fs::fsx::create_new(dest)?;
    out.write_all(bytes)
        .map_err(|e| Error::io("write", dest, e))?;
    set_mtime(&out, dest, mtime)?;
    batch.file_written(&out, dest)?;
    Ok(blake3::hash(bytes))
}

/// Sets the modification time of an open file.
pub fn set_mtime(file: &File, path: &Path, mtime: (i64, u32)) -> Result<()> {
    file.set_times(FileTimes::new().set_modified(system_time(mtime)))
        .map_err(|e| Error::io("set modification time of", path, e))
}

/// BLAKE3 and size of the regular file at `path` (not following links).
pub fn hash_file(path: &Path) -> Result<(u64, blake3::Hash)> {
    let (mut f, _) = open_regular(path)?;
    hash_reader(&mut f, path)
}

/// Size and BLAKE3 of what `src` (read from `path`) holds from its position on.
pub fn hash_reader(src: &mut impl Read, path: &Path) -> Result<(u64, blake3::Hash)> {
    let mut hasher = blake3::Hasher::new();
    let mut total = 0u64;
    with_buf(|buf| {
        loop {
            let n = src.read(buf).map_err(|e| Error::io("read", path, e))?;
            if n == 0 {
                return Ok((total, hasher.finalize()));
            }
            hasher.update(&buf[..n]);
            total += n as u64;
        }
    })
}

/// What is at a path, by content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AtPath {
    /// Nothing.
    Missing,
    /// A regular file with this BLAKE3 hash.
    File(blake3::Hash),
    /// A directory, link or special file.
    NotAFile,
}

/// What is at `path` (links are not followed).
pub fn probe(path: &Path) -> Result<AtPath> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AtPath::Missing),
        Err(e) => Err(Error::io("stat", path, e)),
        Ok(m) if !m.is_file() => Ok(AtPath::NotAFile),
        Ok(_) => hash_file(path).map(|(_, h)| AtPath::File(h)),
    }
}

/// Sets the permission bits of `path`.
pub fn set_mode_of(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io("set permissions of", path, e))
}

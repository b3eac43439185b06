//! A log's own file, `.log`: its lock and its identity.
//!
//! # Why a file of its own
//!
//! A log is one or more `*.jsonl` files, any of which may be missing: a
//! migrated job has only `events-0-legacy-*.jsonl`, a layout-0 log only
//! Prodigy's `events-<ts>.jsonl`, and retention replaces the file it cuts.
//! A lock on one of them would guard nothing once that file is replaced or
//! while it does not exist (retention of a log without `events.jsonl` used
//! to take no lock at all, and two of them lost records). So every writer
//! (append, retention, deletion) takes an exclusive `flock` on `.log`, a
//! file that is created once per log and never replaced; a reader takes it
//! shared for the instant it opens the log's files and reads their lengths.
//! A writer that waited for it checks that the file it locked is still the
//! one at the path (a deletion removes it), and opens it again if not; the
//! comparison is between an open descriptor and the path, so the inode it
//! compares cannot have been reused meanwhile.
//!
//! # Why readers lock
//!
//! An append writes its batch, then `fdatasync`s it; if that fails, the
//! batch is cut back off. A reader that saw the bytes in between would
//! deliver events whose append reported failure (and then find the log
//! shorter than its cursor). A reader takes its snapshot (the lock record,
//! the files, their lengths) under the shared lock, so it sees a batch only
//! once the append holding the exclusive lock has finished, one way or the
//! other; it reads those lengths afterwards without the lock.
//!
//! # Identity
//!
//! Inode numbers are reused by the file system, so a cursor never names a
//! file by one. `.log` holds a random id made when the log begins and an
//! epoch that each retention which rewrites a file raises; a cursor's
//! `generation` is a hash of the two. A log deleted and begun again has a
//! new id, so no old cursor fits it; a cursor of the epoch just before a
//! retention is carried over the cut (`.log` records which file it cut and
//! how many bytes it dropped), and an older one starts again at the log's
//! start (the read says so). A log whose `.log` does not exist (written by
//! an older Prodigy, or migrated and never appended to since) has the
//! generation 0; when a writer of this store first locks it, `.log` records
//! that its epoch 0 is that state, so those cursors keep fitting.
//!
//! The record is one fixed-size block (JSON padded with spaces), rewritten
//! in place under the exclusive lock and `fdatasync`ed; readers read it
//! under the shared lock, so they never see it half written.

use std::fs::{File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use storage_core::{Error, Result};

use crate::fsx;

/// The name of a log's own file in its directory.
pub const LOG_FILE: &str = ".log";

/// The size of the record in [`LOG_FILE`].
const RECORD_BYTES: usize = 1024;

/// The record's format version.
const FORMAT: u32 = 1;

/// What `.log` holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    /// The record's format.
    pub format: u32,
    /// The log's identity: random, made when it began.
    pub id: String,
    /// Raised by every retention that rewrites a file.
    pub epoch: u64,
    /// The log had files before `.log` was made: its epoch 0 is the state
    /// that readers saw as generation 0.
    #[serde(default)]
    pub adopted: bool,
    /// What the retention that began this epoch cut, if it rewrote a file.
    #[serde(default)]
    pub cut: Option<Cut>,
}

/// A file that retention rewrote from a cut.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Cut {
    /// The file's name.
    pub segment: String,
    /// The bytes dropped from its start.
    pub dropped: u64,
    /// How many of the rewritten file's first bytes `head` covers (at most
    /// [`HEAD_BYTES`]).
    pub head_len: u64,
    /// A hash of them: a reader checks that the file at `segment` is the
    /// rewritten one before carrying a cursor over the cut.
    pub head: String,
}

/// How many of a rewritten file's first bytes its [`Cut`] fingerprints.
pub(crate) const HEAD_BYTES: u64 = 4096;

/// The fingerprint of the first `len` bytes of `file` ([`Cut::head`]); a
/// file shorter than that has another fingerprint than any of that length.
pub(crate) fn head_of(file: &File, path: &Path, len: u64) -> Result<String> {
    let mut buf = vec![0u8; usize::try_from(len.min(HEAD_BYTES)).expect("small")];
    let got = read_prefix(file, path, &mut buf)?;
    let mut h = blake3::Hasher::new();
    h.update(&(got as u64).to_le_bytes());
    h.update(&buf[..got]);
    Ok(h.finalize().to_hex()[..32].to_owned())
}

impl Record {
    /// The generation of a cursor made at `epoch` of this log.
    pub(crate) fn generation_at(&self, epoch: u64) -> u64 {
        if epoch == 0 && self.adopted {
            return 0;
        }
        let mut h = blake3::Hasher::new();
        h.update(b"prodigy-storage event log\0");
        h.update(self.id.as_bytes());
        h.update(&epoch.to_le_bytes());
        let bytes = h.finalize();
        let g = u64::from_le_bytes(bytes.as_bytes()[..8].try_into().expect("8 bytes"));
        // 0 is the generation of a log without identity.
        g.max(1)
    }

    /// The generation of cursors made now.
    pub(crate) fn generation(&self) -> u64 {
        self.generation_at(self.epoch)
    }
}

/// A held lock on a log's `.log`, with its record.
#[derive(Debug)]
pub(crate) struct LogLock {
    file: File,
    path: PathBuf,
    pub(crate) record: Record,
}

impl LogLock {
    /// Takes the exclusive lock of the log in `dir`, creating `.log` (and
    /// `dir`) if needed.
    pub(crate) fn exclusive(dir: &Path) -> Result<Self> {
        let path = crate::layout::log_file(dir, LOG_FILE);
        let mut last = None;
        // A few rounds at most: each retry follows a deletion that finished
        // while this writer waited.
        for _ in 0..64 {
            let file = match open_rw(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    match create(dir, &path) {
                        Ok(()) => {}
                        // A deletion removed the directory meanwhile: again.
                        Err(Error::Io { source, .. })
                            if source.kind() == io::ErrorKind::NotFound =>
                        {
                            last = Some(source);
                        }
                        Err(e) => return Err(e),
                    }
                    continue;
                }
                Err(e) => return Err(Error::io("open", &path, e)),
            };
            file.lock().map_err(|e| Error::io("lock", &path, e))?;
            if fsx::is_linked_at(&file, &path)? {
                let record = read_record(&file, &path)?;
                return Ok(Self { file, path, record });
            }
            last = Some(io::Error::other(
                "the log was deleted while waiting for its lock",
            ));
        }
        Err(Error::io(
            "lock (it kept being deleted)",
            &path,
            last.unwrap_or_else(|| io::Error::other("retries exhausted")),
        ))
    }

    /// Takes the shared lock of the log in `dir` if it has a `.log`; `None`
    /// if it has none (a log no writer of this store has touched).
    pub(crate) fn shared(dir: &Path) -> Result<Option<Self>> {
        let path = crate::layout::log_file(dir, LOG_FILE);
        for _ in 0..64 {
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::NotADirectory => return Ok(None),
                Err(e) => return Err(Error::io("open", &path, e)),
            };
            file.lock_shared()
                .map_err(|e| Error::io("lock", &path, e))?;
            if fsx::is_linked_at(&file, &path)? {
                let record = read_record(&file, &path)?;
                return Ok(Some(Self { file, path, record }));
            }
        }
        Err(Error::io(
            "lock (it kept being deleted)",
            &path,
            io::Error::other("retries exhausted"),
        ))
    }

    /// Begins a new epoch, durably, for a retention that rewrites a file
    /// from `cut` (dropping whole files needs none: a cursor into a file
    /// that is gone goes on with the next).
    pub(crate) fn begin_epoch(&mut self, cut: Cut) -> Result<()> {
        let mut next = self.record.clone();
        next.epoch += 1;
        next.cut = Some(cut);
        write_record(&self.file, &self.path, &next)?;
        self.file
            .sync_data()
            .map_err(|e| Error::io("fsync", &self.path, e))?;
        self.record = next;
        Ok(())
    }

    /// The path of `.log`.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Releases the lock now and hands back the file (to be closed later).
    pub(crate) fn into_file(self) -> File {
        let _ = self.file.unlock();
        self.file
    }
}

fn open_rw(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits().cast_signed())
        .open(path)
}

/// Creates `dir/.log` with a new identity, never replacing one: a temp file
/// is filled, synced and renamed into place without replacing. Whether the
/// log already had files decides `adopted`.
fn create(dir: &Path, path: &Path) -> Result<()> {
    fsx::create_dir_all(dir)?;
    let adopted = super::log_files(dir)?
        .iter()
        .any(|f| std::fs::metadata(&f.path).is_ok_and(|m| m.len() > 0));
    let record = Record {
        format: FORMAT,
        id: random_id(),
        epoch: 0,
        adopted,
        cut: None,
    };
    let (tmp, f) = fsx::create_temp(dir, LOG_FILE)?;
    let written = write_record(&f, &tmp, &record)
        .and_then(|()| f.sync_all().map_err(|e| Error::io("fsync", &tmp, e)))
        .and_then(|()| fsx::rename_noreplace(&tmp, path));
    drop(f);
    match written {
        Ok(()) => fsx::fsync_dir(dir),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            match e {
                // Another writer made it first: use theirs.
                Error::Io { ref source, .. } if source.kind() == io::ErrorKind::AlreadyExists => {
                    Ok(())
                }
                e => Err(e),
            }
        }
    }
}

/// Reads the first bytes of `file` into `buf` (fewer at its end); returns how many.
fn read_prefix(file: &File, path: &Path, buf: &mut [u8]) -> Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("read", path, e)),
        }
    }
    Ok(got)
}

fn read_record(file: &File, path: &Path) -> Result<Record> {
    let mut buf = vec![0u8; RECORD_BYTES];
    let got = read_prefix(file, path, &mut buf)?;
    let record: Record = serde_json::from_slice(&buf[..got]).map_err(|e| Error::Corrupt {
        path: path.to_owned(),
        line: None,
        reason: format!(
            "the log's identity record does not parse ({e}); move the file aside (the log's \
             records are not in it) and the next append makes a new one"
        ),
    })?;
    if record.format > FORMAT {
        return Err(Error::Corrupt {
            path: path.to_owned(),
            line: None,
            reason: format!(
                "the log's identity record has format {}, this build reads up to {FORMAT}: a \
                 newer prodigy-storage wrote it; upgrade this one",
                record.format
            ),
        });
    }
    Ok(record)
}

/// Writes `record` as one padded block at offset 0 (the caller makes it durable).
fn write_record(file: &File, path: &Path, record: &Record) -> Result<()> {
    let mut buf = serde_json::to_vec(record).expect("a record serializes");
    if buf.len() >= RECORD_BYTES {
        return Err(Error::io(
            "write",
            path,
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the log's identity record needs {} bytes, over {RECORD_BYTES} (a file name \
                     that long cannot be cut)",
                    buf.len()
                ),
            ),
        ));
    }
    buf.resize(RECORD_BYTES - 1, b' ');
    buf.push(b'\n');
    file.write_all_at(&buf, 0)
        .map_err(|e| Error::io("write", path, e))
}

/// 128 random bits as hex, from the standard library's per-process random
/// hash keys (seeded by the operating system) mixed with the time, the
/// process and a counter: unique without another dependency.
pub(crate) fn random_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = blake3::Hasher::new();
    for _ in 0..2 {
        let mut s = std::collections::hash_map::RandomState::new().build_hasher();
        s.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        h.update(&s.finish().to_le_bytes());
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    h.update(&now.as_nanos().to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    h.finalize().to_hex()[..32].to_owned()
}

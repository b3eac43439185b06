//! JSONL event logs that many processes append to at once.
//!
//! # The log's lock and identity
//!
//! Every writer (append, retention, deletion) holds the exclusive lock of
//! the log's own file `.log`, and every reader takes it shared while it
//! opens the log's files and reads their lengths; `.log` also holds the
//! log's identity, from which cursors take their generation. Why, and what
//! that promises, is in [`ident`].
//!
//! # Appending
//!
//! An append takes the log's lock, opens its active file (`events.jsonl`)
//! with `O_APPEND`, writes the whole batch with one `write_all`,
//! `fdatasync`s, and unlocks. The lock makes each batch contiguous even
//! when a write is split by the kernel, so lines of concurrent writers never
//! interleave; `O_APPEND` alone does not promise that for large writes.
//! Deleting a log and trimming it by retention happen under the same lock,
//! so an appender's batch lands in the log before the change or in the log
//! after it, never in a file that has left the log.
//!
//! A compare-and-append (`append_at`) first compares the log's end with
//! the position its caller expects, under the lock; if they differ, it
//! compares the bytes at the expected position with the batch's, so a retry
//! of a batch that landed is recognised and not written again.
//!
//! If the write fails half-way (disk full), or the `fdatasync` after it
//! fails (I/O error), the writer truncates the file back to where its batch
//! began and syncs that before reporting the error and releasing the lock,
//! so the log never keeps a batch whose append reported failure, and no
//! reader ever saw it (readers wait for the lock). If
//! that cut-back fails too, the error says so (the log may then hold part of
//! the batch; a compare-and-append retried with the same expected position
//! finds out which). If a writer was
//! killed mid-batch, the file ends in a torn line; the next appender moves
//! those bytes into a side file `events.jsonl.torn-<offset>` (kept, never
//! deleted or replaced: a different fragment torn at the same offset later
//! goes to `events.jsonl.torn-<offset>-2`, `-3`, …; the same bytes again are
//! not stored twice) and truncates the log to its last complete line before appending,
//! so a torn fragment can never become a corrupt line in the middle of a log.
//!
//! # Reading
//!
//! A read starts at an [`EventCursor`] (a file name, a byte offset and the
//! generation of the log's identity) and returns the cursor after the last
//! whole line it read; an unterminated line at the end of the log is not
//! passed, so a follower reads it once it is finished. A cursor of the
//! epoch before a retention is carried over its cut; one whose file is gone
//! (retention dropped it) continues with the next file; one of another
//! incarnation of the log, or past its end, starts over at the log's start
//! and the summary says so (`restarted`).
//! `wait` sleeps until the log changes: on Linux the kernel wakes it
//! (`inotify` on the log's directory, so an idle follower costs nothing);
//! elsewhere, or before the log's directory exists, it looks at the log's
//! files every 10 ms.
//!
//! Every `*.jsonl` file of the job directory is read in name order, one line
//! at a time into a reused buffer that never holds more than
//! [`MAX_LINE_BYTES`] (memory is bounded whatever the file holds). An
//! unterminated last line that does not parse, or is longer than that, is
//! reported as a torn tail and skipped without being loaded; any other line
//! that does not parse, or is longer than that, is an [`Error::Corrupt`]
//! naming the file and line.
//!
//! # Memory
//!
//! A torn tail can be huge: a power loss often leaves a run of NUL bytes
//! without a newline at the end of a log. Finding its start (backwards) and
//! moving it aside both go through one 64 KiB block, and all-zero blocks
//! become holes in the side file, so neither memory nor disk use grows with
//! the tail.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use storage_core::{
    Appended, Error, EventCursor, EventLogSummary, EventRecord, JobId, LogEntry, ReadMode, RepoKey,
    Result, Skipped, TornTail,
};

use crate::fsx;

pub mod ident;
mod retain;
use ident::{LogLock, Record};
pub(crate) use retain::retain;

/// The longest line a reader holds in memory (16 MiB): a longer one is
/// skipped as a torn tail if unterminated, else reported as corrupt, and an
/// appender refuses an event that would serialize to one.
pub const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

/// The block size of the torn-tail search and copy, and of the reader's buffer.
const BLOCK: usize = 64 * 1024;

/// One block of NULs, to recognize such blocks by comparison.
static ZEROS: [u8; BLOCK] = [0; BLOCK];

/// Serializes `events` as JSONL lines.
fn serialize(log: &Path, events: &[EventRecord]) -> Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(events.len() * 320);
    for e in events {
        let start = buf.len();
        serde_json::to_writer(&mut buf, e.json()).expect("a JSON map always serializes");
        buf.push(b'\n');
        if buf.len() - start > MAX_LINE_BYTES {
            return Err(Error::io(
                "append to",
                log,
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "an event serializes to {} bytes, over the {MAX_LINE_BYTES} bytes a \
                         reader holds in memory; store the large payload elsewhere and refer to it",
                        buf.len() - start
                    ),
                ),
            ));
        }
    }
    Ok(buf)
}

/// Appends `events` to the log in `dir` (its active file `active`).
pub(crate) fn append(dir: &Path, active: &Path, events: &[EventRecord]) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let buf = serialize(active, events)?;
    let lock = LogLock::exclusive(dir)?;
    write_batch(&lock, active, &buf)?;
    Ok(())
}

/// Compare-and-append ([`storage_core::Storage::append_events_at`]) to the
/// log in `dir`, whose active file is `active`.
pub(crate) fn append_at(
    dir: &Path,
    active: &Path,
    ids: (&RepoKey, &JobId),
    expected: &EventCursor,
    events: &[EventRecord],
) -> Result<Appended> {
    let buf = serialize(active, events)?;
    // Nothing to lock for a log that does not exist and is not expected to.
    if events.is_empty() && *expected == EventCursor::START && !dir.exists() {
        return Ok(Appended::Now {
            end: EventCursor::START,
        });
    }
    let lock = LogLock::exclusive(dir)?;
    let snap = Snapshot::open(dir, Some(&lock.record))?;
    let end = snap.end_cursor();
    if end != *expected {
        if let Some(at) = snap.batch_at(expected, &buf)? {
            return Ok(Appended::Already { end: at });
        }
        return Err(Error::AppendConflict {
            repo: ids.0.clone(),
            job: ids.1.clone(),
            end,
        });
    }
    if events.is_empty() {
        return Ok(Appended::Now { end });
    }
    let after = write_batch(&lock, active, &buf)?;
    let name = ACTIVE_NAME;
    let end = if snap.files.iter().all(|f| f.name.as_str() <= name) {
        EventCursor {
            segment: name.to_owned(),
            offset: after,
            generation: lock.record.generation(),
        }
    } else {
        // The active file is not the log's last (a file named after it by
        // someone else): its end is that file's.
        Snapshot::open(dir, Some(&lock.record))?.end_cursor()
    };
    Ok(Appended::Now { end })
}

/// The active file's name.
const ACTIVE_NAME: &str = crate::layout::ACTIVE_EVENT_LOG;

/// The operation named when a failed append cannot be undone: the log may
/// then hold the batch, whole or in part, and the caller must look before
/// appending it again.
const CUT_BACK_FAILED: &str = "cut a failed append back off (the log may still hold part or all \
     of that batch, and the next append moves a torn end aside: read the log, or retry with \
     append_events_at at the same expected position, which never stores it twice)";

/// Writes `buf` (whole lines) at the end of `active` under the log's lock;
/// returns the file's length after it.
fn write_batch(_lock: &LogLock, active: &Path, buf: &[u8]) -> Result<u64> {
    debug_assert!(buf.ends_with(b"\n"));
    let (file, created) = match OpenOptions::new()
        .read(true)
        .append(true)
        .mode(fsx::FILE_MODE)
        .open(active)
    {
        Ok(f) => (f, false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => (
            OpenOptions::new()
                .read(true)
                .append(true)
                .create(true)
                .mode(fsx::FILE_MODE)
                .open(active)
                .map_err(|e| Error::io("create", active, e))?,
            true,
        ),
        Err(e) => return Err(Error::io("open", active, e)),
    };
    write_at_end(&file, active, created, buf)
}

/// Writes `buf` (whole lines) at the end of `file` (at `path`, created now
/// if `created`), whose lock the caller holds: a torn end is moved aside
/// first, and a write or `fdatasync` that fails is cut back off before the
/// error is returned. Returns the file's length after the batch.
fn write_at_end(file: &File, path: &Path, created: bool, buf: &[u8]) -> Result<u64> {
    let start = file
        .metadata()
        .map_err(|e| Error::io("stat", path, e))?
        .len();
    let start = repair_torn_tail(file, path, start)?;
    let written = (&*file)
        .write_all(buf)
        .map_err(|e| Error::io("append to", path, e))
        .and_then(|()| file.sync_data().map_err(|e| Error::io("fsync", path, e)));
    if let Err(failed) = written {
        // Take the batch (or the part written) back out, so the log ends on a
        // whole line and a retry of the same batch cannot duplicate it. The
        // cut-back is synced on its own: its metadata change is new, so an
        // error on it is reported afresh (the failed sync is never retried
        // for the data itself, which this removes). Readers wait for the
        // lock, so none saw the batch.
        return match file.set_len(start).and_then(|()| file.sync_data()) {
            Ok(()) => Err(failed),
            Err(e) => {
                tracing::error!(log = %path.display(), error = %failed, "an append failed and its batch could not be cut back off");
                Err(Error::io(CUT_BACK_FAILED, path, e))
            }
        };
    }
    if created {
        fsx::fsync_dir(fsx::parent(path))?;
    }
    Ok(start + buf.len() as u64)
}

/// Appends complete JSONL lines (`buf` must end with `\n`) to the single
/// file `path` under an exclusive `flock` on it (a journal of the store's
/// own, not a job's log).
pub fn append_lines(path: &Path, buf: &[u8]) -> Result<()> {
    debug_assert!(buf.ends_with(b"\n"));
    let open = |create: bool| {
        OpenOptions::new()
            .read(true)
            .append(true)
            .create(create)
            .mode(fsx::FILE_MODE)
            .open(path)
    };
    let (file, created) = open_locked(path, &open)?;
    write_at_end(&file, path, created, buf).map(|_| ())
}

/// Opens the file at `path` (creating it and its directory if needed) and
/// takes its lock, making sure the locked file is still the one at `path`.
/// Returns whether this call created the file.
fn open_locked(path: &Path, open: &dyn Fn(bool) -> io::Result<File>) -> Result<(File, bool)> {
    let mut last = None;
    for _ in 0..64 {
        let (file, created) = match open(false) {
            Ok(f) => (f, false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                match fsx::create_dir_all(fsx::parent(path)) {
                    Ok(()) => {}
                    Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                        last = Some(source);
                        continue;
                    }
                    Err(e) => return Err(e),
                }
                match open(true) {
                    Ok(f) => (f, true),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        last = Some(e);
                        continue;
                    }
                    Err(e) => return Err(Error::io("create", path, e)),
                }
            }
            Err(e) => return Err(Error::io("open", path, e)),
        };
        file.lock().map_err(|e| Error::io("lock", path, e))?;
        if fsx::is_linked_at(&file, path)? {
            return Ok((file, created));
        }
        last = Some(io::Error::other(
            "the file was replaced while waiting for its lock",
        ));
    }
    Err(Error::io(
        "open (it kept being replaced or deleted)",
        path,
        last.unwrap_or_else(|| io::Error::other("retries exhausted")),
    ))
}

/// If the log does not end in `\n`, saves the torn bytes beside it and cuts
/// them off; returns the new length. Caller holds the log's lock.
fn repair_torn_tail(file: &File, path: &Path, len: u64) -> Result<u64> {
    let cut = whole_line_end(file, path, len)?;
    if cut == len {
        return Ok(len);
    }
    let mut block = vec![0u8; BLOCK];
    // Never over an earlier fragment: a later crash can tear a line at the
    // same offset again, and every fragment is kept. Streamed through one
    // block: a torn tail can be a gigabyte of NULs after a power loss.
    let (side, _) = fsx::write_new_unique(
        |n| crate::layout::torn_tail_file(path, cut, n),
        |f| copy_range(file, cut, len, &mut block, f),
    )?;
    tracing::warn!(log = %path.display(), saved = %side.display(), bytes = len - cut, "moved a torn last line aside");
    file.set_len(cut)
        .map_err(|e| Error::io("truncate", path, e))?;
    file.sync_data().map_err(|e| Error::io("fsync", path, e))?;
    Ok(cut)
}

/// Copies bytes `from..to` of `src` to the end of `dst` through `block`,
/// leaving holes for all-zero blocks (a run of NULs stays sparse).
fn copy_range(src: &File, from: u64, to: u64, block: &mut [u8], dst: &mut File) -> io::Result<()> {
    use std::io::{Seek, SeekFrom};
    let mut at = from;
    while at < to {
        let n = usize::try_from(to - at).map_or(block.len(), |left| left.min(block.len()));
        let chunk = &mut block[..n];
        src.read_exact_at(chunk, at)?;
        if *chunk == ZEROS[..n] {
            dst.seek(SeekFrom::Start(at - from + n as u64))?;
        } else {
            dst.write_all(chunk)?;
        }
        at += n as u64;
    }
    // A trailing hole: give the file its full length.
    dst.set_len(to - from)
}

/// One file of a log.
#[derive(Debug)]
pub(crate) struct LogFile {
    pub(crate) name: String,
    pub(crate) path: PathBuf,
}

/// The files of the log in `dir`, in reading order (name order).
///
/// A part an older Prodigy rotated (`….jsonl.gz`, plain text) is listed
/// under the name the upgrade gives it (`layout0::rotated_log_name`); where
/// both exist, the renamed file is the one listed.
pub(crate) fn log_files(dir: &Path) -> Result<Vec<LogFile>> {
    let mut rotated = false;
    let mut files: Vec<(LogFile, bool)> = fsx::read_dir_sorted(dir)?
        .into_iter()
        .filter_map(|e| {
            let name = e.name.to_str()?.to_owned();
            if !e.file_type.is_file() || name.starts_with('.') {
                return None;
            }
            // Reason: logs are `.jsonl` exactly, as the appender names them.
            #[allow(clippy::case_sensitive_file_extension_comparisons)]
            if name.ends_with(".jsonl") {
                return Some((LogFile { name, path: e.path }, false));
            }
            let name = crate::layout0::rotated_log_name(&name, &e.path)?;
            rotated = true;
            Some((LogFile { name, path: e.path }, true))
        })
        .collect();
    if rotated {
        files.sort_by(|(a, a_rotated), (b, b_rotated)| {
            (&a.name, a_rotated).cmp(&(&b.name, b_rotated))
        });
        files.dedup_by(|(later, _), (first, _)| later.name == first.name);
    }
    Ok(files.into_iter().map(|(f, _)| f).collect())
}

/// One file of a [`Snapshot`]: open, with its length when the snapshot was
/// taken and where its last whole line ended then.
///
/// A reader reads only up to `whole`: the bytes after it (a torn tail) are
/// cut off by the next appender, which writes its batch in their place, on
/// this very inode, before that batch is committed. Everything before
/// `whole` is committed and never rewritten in place (retention replaces a
/// file by rename; a failed batch is cut back only from where it began).
#[derive(Debug)]
struct SnapFile {
    name: String,
    path: PathBuf,
    file: File,
    len: u64,
    whole: u64,
}

/// A log as one reader or writer sees it: its identity record and its
/// files, opened and measured under the log's lock (shared for a reader),
/// so that no append, retention or deletion is half seen. Reading the
/// files afterwards needs no lock: only bytes up to `len` are read.
#[derive(Debug)]
pub(crate) struct Snapshot {
    record: Option<Record>,
    files: Vec<SnapFile>,
}

impl Snapshot {
    /// A reader's snapshot of the log in `dir`.
    pub(crate) fn read(dir: &Path) -> Result<Self> {
        loop {
            let shared = LogLock::shared(dir)?;
            let record = shared.as_ref().map(|l| l.record.clone());
            let snap = Self::open(dir, record.as_ref())?;
            if shared.is_some() {
                return Ok(snap);
            }
            // No `.log`: no writer of this store had touched the log. One
            // makes `.log` before it writes, so if there is still none now,
            // nothing this snapshot saw was a batch in flight; if there is,
            // look again under its lock.
            if !crate::layout::log_file(dir, ident::LOG_FILE).exists() {
                return Ok(snap);
            }
        }
    }

    /// The files of the log in `dir`, for a caller that holds its lock (or
    /// through [`Snapshot::read`]) and has read `record`.
    fn open(dir: &Path, record: Option<&Record>) -> Result<Self> {
        let listed = match log_files(dir) {
            Ok(l) => l,
            Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let mut files = Vec::with_capacity(listed.len());
        for f in listed {
            let file = match File::open(&f.path) {
                Ok(file) => file,
                // Removed between the listing and now (by an older Prodigy's
                // clean-up: this store's writers wait for the lock).
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("open", &f.path, e)),
            };
            let len = file
                .metadata()
                .map_err(|e| Error::io("stat", &f.path, e))?
                .len();
            let whole = whole_line_end(&file, &f.path, len)?;
            files.push(SnapFile {
                name: f.name,
                path: f.path,
                file,
                len,
                whole,
            });
        }
        Ok(Self {
            record: record.cloned(),
            files,
        })
    }

    /// The generation of cursors made from this snapshot.
    fn generation(&self) -> u64 {
        self.record.as_ref().map_or(0, Record::generation)
    }

    fn cursor(&self, i: usize, offset: u64) -> EventCursor {
        EventCursor {
            segment: self.files[i].name.clone(),
            offset,
            generation: self.generation(),
        }
    }

    /// Where the log ends: after the last whole line of its last file;
    /// [`EventCursor::START`] if it has no file.
    fn end_cursor(&self) -> EventCursor {
        let Some(last) = self.files.len().checked_sub(1) else {
            return EventCursor::START;
        };
        // A log of empty files (an empty `events.jsonl` left by a first
        // append that failed) holds nothing: it ends at its start, so a
        // compare-and-append retried at the start still fits.
        if self.is_empty() {
            return EventCursor::START;
        }
        self.cursor(last, self.files[last].whole)
    }

    /// Whether the log holds no whole line at all.
    fn is_empty(&self) -> bool {
        self.files.iter().all(|f| f.whole == 0)
    }

    /// Where a read from `from` starts: a file's index and an offset in it,
    /// and whether that is a restart at the log's start because `from` does
    /// not fit this log (see [`EventCursor`]).
    fn locate(&self, from: &EventCursor) -> Result<(usize, u64, bool)> {
        if *from == EventCursor::START {
            return Ok((0, 0, false));
        }
        if from.segment.is_empty() {
            // Not a cursor of a file store.
            return Ok((0, 0, true));
        }
        let Some(offset) = self.carry(from)? else {
            return Ok((0, 0, true));
        };
        match self.files.iter().position(|f| f.name == from.segment) {
            Some(i) if offset <= self.files[i].whole => Ok((i, offset, false)),
            // Past the end of its file: not a position this log ever had.
            Some(_) => Ok((0, 0, true)),
            // Its file is gone (retention dropped it): the next one.
            None => Ok((
                self.files
                    .iter()
                    .position(|f| f.name > from.segment)
                    .unwrap_or(self.files.len()),
                0,
                false,
            )),
        }
    }

    /// `from`'s offset in the log as it is now, or `None` if `from` is not a
    /// cursor of this log's incarnation (nor of the epoch before the last
    /// retention, which is carried over its cut).
    fn carry(&self, from: &EventCursor) -> Result<Option<u64>> {
        let Some(r) = &self.record else {
            return Ok((from.generation == 0).then_some(from.offset));
        };
        if from.generation == r.generation() {
            return Ok(Some(from.offset));
        }
        if r.epoch == 0 || from.generation != r.generation_at(r.epoch - 1) {
            return Ok(None);
        }
        match &r.cut {
            Some(cut) if cut.segment == from.segment => {
                // The retention recorded its cut before it put the rewritten
                // file in place: make sure it did (a crash between the two
                // leaves the old file, where the cut does not apply).
                let Some(f) = self.files.iter().find(|f| f.name == cut.segment) else {
                    return Ok(Some(0));
                };
                if ident::head_of(&f.file, &f.path, cut.head_len)? == cut.head {
                    Ok(Some(from.offset.saturating_sub(cut.dropped)))
                } else {
                    Ok(None)
                }
            }
            _ => Ok(Some(from.offset)),
        }
    }

    /// The cursor after `buf` if the log holds exactly those bytes at `at`
    /// (a batch that landed), else `None`.
    fn batch_at(&self, at: &EventCursor, buf: &[u8]) -> Result<Option<EventCursor>> {
        let (mut i, mut offset, restarted) = self.locate(at)?;
        if restarted || *at == EventCursor::START && !self.files.is_empty() && buf.is_empty() {
            return Ok(None);
        }
        // The end of one file is the start of the next.
        while i + 1 < self.files.len() && offset == self.files[i].whole {
            i += 1;
            offset = 0;
        }
        let Some(f) = self.files.get(i) else {
            return Ok(None);
        };
        if f.whole < offset + buf.len() as u64 {
            return Ok(None);
        }
        let mut there = vec![0u8; buf.len()];
        f.file
            .read_exact_at(&mut there, offset)
            .map_err(|e| Error::io("read", &f.path, e))?;
        Ok((there == buf).then(|| self.cursor(i, offset + buf.len() as u64)))
    }
}

/// Whether the torn tail of `f` (after its last whole line) is only
/// whitespace (not reported). A long one is not read through: only its
/// first 4 KiB are looked at.
fn tail_is_blank(f: &SnapFile) -> Result<bool> {
    if f.len - f.whole > 4096 {
        return Ok(false);
    }
    let mut buf = vec![0u8; usize::try_from(f.len - f.whole).expect("at most 4 KiB")];
    // The tail may have been cut off since the snapshot (an appender moved
    // it aside): then it was not blank to that appender either.
    let got = f
        .file
        .read_at(&mut buf, f.whole)
        .map_err(|e| Error::io("read", &f.path, e))?;
    Ok(got == buf.len() && buf.iter().all(u8::is_ascii_whitespace))
}

/// The offset after the last `\n` of the first `len` bytes of `file`; 0 if
/// there is none.
fn whole_line_end(file: &File, path: &Path, len: u64) -> Result<u64> {
    if len == 0 {
        return Ok(0);
    }
    let mut last = [0u8; 1];
    file.read_exact_at(&mut last, len - 1)
        .map_err(|e| Error::io("read", path, e))?;
    if last[0] == b'\n' {
        return Ok(len);
    }
    let mut end = len;
    let mut block = vec![0u8; BLOCK];
    while end > 0 {
        let from = end.saturating_sub(block.len() as u64);
        let chunk = &mut block[..usize::try_from(end - from).expect("block fits")];
        file.read_exact_at(chunk, from)
            .map_err(|e| Error::io("read", path, e))?;
        if chunk != &ZEROS[..chunk.len()]
            && let Some(i) = chunk.iter().rposition(|&b| b == b'\n')
        {
            return Ok(from + i as u64 + 1);
        }
        end = from;
    }
    Ok(0)
}

/// Where the log in `dir` ends ([`storage_core::Storage::event_log_end`]).
pub(crate) fn end(dir: &Path) -> Result<EventCursor> {
    Ok(Snapshot::read(dir)?.end_cursor())
}

/// Streams every `*.jsonl` file in `dir`, in name order, to `visit`.
pub(crate) fn read(dir: &Path, visit: &mut dyn FnMut(EventRecord)) -> Result<EventLogSummary> {
    read_from(dir, &EventCursor::START, ReadMode::Strict, visit)
}

/// Streams the log in `dir` from `from`, in order, to `visit`.
pub(crate) fn read_from(
    dir: &Path,
    from: &EventCursor,
    mode: ReadMode,
    visit: &mut dyn FnMut(EventRecord),
) -> Result<EventLogSummary> {
    let snap = Snapshot::read(dir)?;
    let mut summary = EventLogSummary::default();
    if snap.files.is_empty() {
        summary.restarted = *from != EventCursor::START;
        return Ok(summary);
    }
    let (first, offset, restarted) = snap.locate(from)?;
    summary.restarted = restarted;
    summary.next = snap.end_cursor();
    for (i, f) in snap.files.iter().enumerate().skip(first) {
        let start = if i == first { offset } else { 0 };
        let end = read_file(f, start, mode, &mut summary, visit)?;
        summary.next = snap.cursor(i, end);
    }
    if snap.is_empty() {
        summary.next = EventCursor::START;
    }
    Ok(summary)
}

/// [`read`] for the fuzz targets (not a stable API).
#[doc(hidden)]
pub fn read_dir_for_fuzzing(
    dir: &Path,
    visit: &mut dyn FnMut(EventRecord),
) -> Result<EventLogSummary> {
    read(dir, visit)
}

/// Reads the snapshot's file `f` from byte `start` to the end of its last
/// whole line then (see [`SnapFile`]); returns that offset. What follows it
/// (an unterminated last line: a writer's crash, or a line being written)
/// is reported as a torn tail, never read as records.
fn read_file(
    f: &SnapFile,
    start: u64,
    mode: ReadMode,
    summary: &mut EventLogSummary,
    visit: &mut dyn FnMut(EventRecord),
) -> Result<u64> {
    let (path, name) = (f.path.as_path(), f.name.as_str());
    let mut file = &f.file;
    file.seek(SeekFrom::Start(start))
        .map_err(|e| Error::io("seek", path, e))?;
    let file = file.take(f.whole.saturating_sub(start));
    let mut reader = BufReader::with_capacity(BLOCK, file);
    let mut line = Vec::with_capacity(1024);
    // Line numbers are known when reading from the start of the file; from
    // the middle, a problem is located by its byte offset instead.
    let numbered = start == 0;
    let mut number = 0u64;
    let mut pos = start;
    loop {
        line.clear();
        let read = read_line_bounded(&mut reader, &mut line, MAX_LINE_BYTES)
            .map_err(|e| Error::io("read", path, e))?;
        if read.bytes == 0 {
            if f.len > f.whole && !tail_is_blank(f)? {
                summary.torn_tails.push(TornTail {
                    file: name.to_owned(),
                    line: number + 1,
                    bytes: f.len - f.whole,
                });
            }
            return Ok(pos);
        }
        number += 1;
        let at = pos;
        let line_no = numbered.then_some(number);
        let where_ = |reason: String| {
            if numbered {
                reason
            } else {
                format!("at byte {at}: {reason}")
            }
        };
        if read.over_limit {
            // Not loaded: a torn tail this long is a run of garbage (NULs
            // after a power loss); a whole line this long was not written by
            // this store, which refuses such events.
            if read.terminated {
                let reason = where_(format!(
                    "the line is {} bytes, over the {MAX_LINE_BYTES} bytes a reader holds in \
                     memory; move it out of the log",
                    read.bytes
                ));
                if mode == ReadMode::Lenient {
                    summary.skipped.push(Skipped::new(name, line_no, reason));
                    pos += read.bytes;
                    continue;
                }
                return Err(Error::Corrupt {
                    path: path.to_owned(),
                    line: line_no,
                    reason,
                });
            }
            unreachable!("a read bounded at the last newline ends on one");
        }
        let terminated = read.terminated;
        let body = line.strip_suffix(b"\n").unwrap_or(&line);
        let body = body.strip_suffix(b"\r").unwrap_or(body);
        if body.iter().all(u8::is_ascii_whitespace) {
            pos += read.bytes;
            continue;
        }
        let parsed = serde_json::from_slice(body)
            .map_err(|e| e.to_string())
            .and_then(|v| EventRecord::from_json(v).map_err(|e| e.to_string()));
        debug_assert!(terminated, "a read bounded at the last newline ends on one");
        match parsed {
            Ok(record) => {
                pos += read.bytes;
                summary.records += 1;
                visit(record);
            }
            Err(reason) if mode == ReadMode::Lenient => {
                summary
                    .skipped
                    .push(Skipped::new(name, line_no, where_(reason)));
                pos += read.bytes;
            }
            Err(reason) => {
                return Err(Error::Corrupt {
                    path: path.to_owned(),
                    line: line_no,
                    reason: where_(reason),
                });
            }
        }
    }
}

/// The state [`wait`] watches: each file's name, inode and length.
fn snapshot(dir: &Path) -> Result<Vec<(String, u64, u64)>> {
    let mut out = Vec::new();
    for f in log_files(dir)? {
        match std::fs::metadata(&f.path) {
            Ok(m) => out.push((f.name, m.ino(), m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("stat", &f.path, e)),
        }
    }
    Ok(out)
}

/// How often [`wait`] looks at the log where it cannot be told of changes
/// (not Linux, or the log's directory does not exist yet).
const POLL: Duration = Duration::from_millis(10);

/// How long a [`wait`] told of changes by the kernel sleeps at most between
/// two looks anyway (a safety net for a change it was not told of, such as
/// the log's directory being replaced).
const RECHECK: Duration = Duration::from_secs(1);

/// An `inotify` watch on a log's directory: the kernel wakes a waiting
/// follower when a file in it is written, created, renamed or removed, so
/// an idle follower uses no CPU at all.
#[cfg(target_os = "linux")]
struct Watch(std::os::fd::OwnedFd);

#[cfg(target_os = "linux")]
impl Watch {
    fn new(dir: &Path) -> Option<Self> {
        use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
        let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK).ok()?;
        let flags = WatchFlags::MODIFY
            | WatchFlags::CREATE
            | WatchFlags::MOVED_TO
            | WatchFlags::MOVED_FROM
            | WatchFlags::DELETE
            | WatchFlags::DELETE_SELF
            | WatchFlags::MOVE_SELF;
        inotify::add_watch(&fd, dir, flags).ok()?;
        Some(Self(fd))
    }

    /// Sleeps until the kernel reports a change or `timeout` passes, then
    /// drains what it reported.
    fn sleep(&self, timeout: Duration) {
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        let ts = Timespec {
            tv_sec: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        let mut fds = [PollFd::new(&self.0, PollFlags::IN)];
        if poll(&mut fds, Some(&ts)).unwrap_or(0) > 0 {
            let mut buf = [0u8; 4096];
            while rustix::io::read(&self.0, &mut buf).is_ok_and(|n| n > 0) {}
        }
    }
}

#[cfg(not(target_os = "linux"))]
struct Watch;

#[cfg(not(target_os = "linux"))]
impl Watch {
    fn new(_dir: &Path) -> Option<Self> {
        None
    }

    fn sleep(&self, _timeout: Duration) {}
}

/// Waits until the log in `dir` may hold a whole line after `after`, or
/// `timeout` passes. A torn last line (a crashed writer's) does not count:
/// the wait then returns when the log next changes, so a follower never
/// spins on it.
pub(crate) fn wait(dir: &Path, after: &EventCursor, timeout: Duration) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    // Watch first, then look: a change between the two is then reported.
    let watch = Watch::new(dir);
    let first = snapshot(dir)?;
    if has_whole_line_after(dir, after)? {
        return Ok(true);
    }
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        match &watch {
            Some(w) => w.sleep(RECHECK.min(deadline - now)),
            None => std::thread::sleep(POLL.min(deadline - now)),
        }
        if snapshot(dir)? != first {
            return Ok(true);
        }
    }
}

/// Whether the log in `dir` holds a whole line past `after`, or `after`
/// does not fit it (a read then starts again at the start).
fn has_whole_line_after(dir: &Path, after: &EventCursor) -> Result<bool> {
    let snap = Snapshot::read(dir)?;
    if snap.files.is_empty() {
        return Ok(false);
    }
    let (i, offset, restarted) = snap.locate(after)?;
    if restarted {
        return Ok(!snap.is_empty());
    }
    let Some(f) = snap.files.get(i) else {
        return Ok(false);
    };
    Ok(f.whole > offset || snap.files[i + 1..].iter().any(|f| f.whole > 0))
}

/// The size and times of the log in `dir`, or `None` if it has no file.
pub(crate) fn entry(dir: &Path) -> Result<Option<LogEntry>> {
    let files = log_files(dir)?;
    let mut bytes = 0u64;
    let mut newest: Option<SystemTime> = None;
    let mut oldest: Option<SystemTime> = None;
    for f in &files {
        let m = match std::fs::metadata(&f.path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("stat", &f.path, e)),
        };
        let t = m.modified().map_err(|e| Error::io("stat", &f.path, e))?;
        bytes += m.len();
        newest = Some(newest.map_or(t, |n| n.max(t)));
        oldest = Some(oldest.map_or(t, |o| o.min(t)));
    }
    Ok(newest.zip(oldest).map(|(n, o)| LogEntry::new(bytes, n, o)))
}

/// Deletes the log in `dir` (its files, the side files of torn tails and
/// `.log`) under its lock, then the directory if that leaves it empty.
/// `false` if there was no log.
pub(crate) fn delete(dir: &Path) -> Result<bool> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io("stat", dir, e)),
    }
    let lock = LogLock::exclusive(dir)?;
    let doomed: Vec<fsx::Entry> = fsx::read_dir_sorted(dir)?
        .into_iter()
        .filter(|e| {
            let n = e.name.to_string_lossy();
            e.file_type.is_file()
                && !n.starts_with('.')
                && (n.ends_with(".jsonl")
                    || n.contains(".jsonl.torn-")
                    || crate::layout0::rotated_log_name(&n, &e.path).is_some())
        })
        .collect();
    for e in &doomed {
        match std::fs::remove_file(&e.path) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(Error::io("remove", &e.path, err)),
        }
    }
    // Last, still under its lock: a writer that waited for it finds it
    // unlinked and begins a new log, with a new identity.
    match std::fs::remove_file(lock.path()) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(Error::io("remove", lock.path(), err)),
    }
    fsx::fsync_dir(dir)?;
    drop(lock);
    fsx::remove_empty_dirs(&[dir.to_owned(), fsx::parent(dir).to_owned()])?;
    Ok(!doomed.is_empty())
}

/// What [`read_line_bounded`] found.
struct LineRead {
    /// Bytes the line spans in the file, its `\n` included.
    bytes: u64,
    /// Whether it ends in `\n` (else it runs to the end of the file).
    terminated: bool,
    /// Whether it is longer than the limit (then `line` holds only its start).
    over_limit: bool,
}

/// Reads one line into `line` like `read_until(b'\n')`, but keeps at most
/// `max` bytes of it in memory; the rest of an over-long line is skipped
/// (counted, not stored). Uses `read_until` on bounded views so the newline
/// search is std's `memchr`.
fn read_line_bounded(
    reader: &mut impl BufRead,
    line: &mut Vec<u8>,
    max: usize,
) -> io::Result<LineRead> {
    let limit = max as u64 + 1;
    let n = reader.by_ref().take(limit).read_until(b'\n', line)?;
    let mut read = LineRead {
        bytes: n as u64,
        terminated: line.last() == Some(&b'\n'),
        over_limit: false,
    };
    if read.terminated || (n as u64) < limit {
        // Whole line, or the end of the file within the limit.
        read.over_limit = read.bytes > max as u64;
        return Ok(read);
    }
    // Over the limit: count the rest of the line through a small scratch buffer.
    read.over_limit = true;
    line.truncate(max.min(line.len()));
    let mut scratch = Vec::with_capacity(BLOCK);
    loop {
        scratch.clear();
        let k = reader
            .by_ref()
            .take(BLOCK as u64)
            .read_until(b'\n', &mut scratch)?;
        read.bytes += k as u64;
        if scratch.last() == Some(&b'\n') {
            read.terminated = true;
            return Ok(read);
        }
        if k == 0 {
            return Ok(read);
        }
    }
}

#[cfg(test)]
mod tests;

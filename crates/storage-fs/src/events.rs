//! JSONL event logs that many processes append to at once.
//!
//! # Appending
//!
//! An append opens the job's active log (`events.jsonl`) with `O_APPEND`,
//! takes an exclusive `flock` on it, writes the whole batch with one
//! `write_all`, `fsync`s, and unlocks. The lock makes each batch contiguous
//! even when a write is split by the kernel, so lines of concurrent writers
//! never interleave; `O_APPEND` alone does not promise that for large writes.
//!
//! Deleting a log and trimming it by retention (`retain`) replace or
//! unlink the file *while holding its lock*. An appender that opened the
//! old file and waited for the lock therefore checks, once it holds it,
//! that the file is still the one at the path (same inode, still linked);
//! if not, it opens the path again. So an appender never writes into a file
//! that has left the log: its batch lands in the log before the change or
//! in the log after it.
//!
//! If the write fails half-way (disk full), or the `fdatasync` after it
//! fails (I/O error), the writer truncates the file back to where its batch
//! began and syncs that before reporting the error, so the log never keeps
//! a batch whose append reported failure and a retry never duplicates it. If
//! that cut-back fails too, the error says so (the log may then hold part of
//! the batch; read it before appending the batch again). If a writer was
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
//! file's inode) and returns the cursor after the last whole line it read;
//! an unterminated line at the end of the log is not passed, so a follower
//! reads it once it is finished. A cursor whose file was replaced (another
//! inode: retention rewrote it) or is shorter than its offset starts over
//! at the log's start; one whose file is gone continues with the next file.
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
    Error, EventCursor, EventLogSummary, EventRecord, LogEntry, ReadMode, Result, Skipped, TornTail,
};

use crate::fsx;

mod retain;
pub(crate) use retain::retain;

/// The longest line a reader holds in memory (16 MiB): a longer one is
/// skipped as a torn tail if unterminated, else reported as corrupt, and an
/// appender refuses an event that would serialize to one.
pub const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

/// The block size of the torn-tail search and copy, and of the reader's buffer.
const BLOCK: usize = 64 * 1024;

/// One block of NULs, to recognize such blocks by comparison.
static ZEROS: [u8; BLOCK] = [0; BLOCK];

/// Serializes `events` as JSONL and appends them to the log file `log`.
pub(crate) fn append(log: &Path, events: &[EventRecord]) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
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
    append_lines(log, &buf)
}

/// The operation named when a failed append cannot be undone: the log may
/// then hold the batch, whole or in part, and the caller must look before
/// appending it again.
const CUT_BACK_FAILED: &str = "cut a failed append back off (the log may still hold part or all \
     of that batch, and the next append moves a torn end aside: read the log before appending \
     the batch again)";

/// Appends complete JSONL lines (`buf` must end with `\n`) to `path` under its lock.
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
    let start = file
        .metadata()
        .map_err(|e| Error::io("stat", path, e))?
        .len();
    let start = repair_torn_tail(&file, path, start)?;
    let written = (&file)
        .write_all(buf)
        .map_err(|e| Error::io("append to", path, e))
        .and_then(|()| file.sync_data().map_err(|e| Error::io("fsync", path, e)));
    if let Err(failed) = written {
        // Take the batch (or the part written) back out, so the log ends on a
        // whole line and a retry of the same batch cannot duplicate it. The
        // cut-back is synced on its own: its metadata change is new, so an
        // error on it is reported afresh (the failed sync is never retried
        // for the data itself, which this removes).
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
    Ok(())
}

/// Opens the log at `path` (creating it and its directory if needed) and
/// takes its lock, making sure the locked file is still the one at `path`:
/// a deletion or a retention may have unlinked or replaced it while this
/// process waited for the lock. Returns whether this call created the file.
fn open_locked(path: &Path, open: &dyn Fn(bool) -> io::Result<File>) -> Result<(File, bool)> {
    // A few rounds at most: each retry follows a deletion or a trim that
    // finished while this appender waited.
    let mut last = None;
    for _ in 0..64 {
        let (file, created) = match open(false) {
            Ok(f) => (f, false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                match fsx::create_dir_all(fsx::parent(path)) {
                    Ok(()) => {}
                    // A deletion removed an emptied parent while this created
                    // the directories below it: create them again.
                    Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                        last = Some(source);
                        continue;
                    }
                    Err(e) => return Err(e),
                }
                match open(true) {
                    Ok(f) => (f, true),
                    // The directory was removed (the log deleted) between the two steps.
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
        let held = file.metadata().map_err(|e| Error::io("stat", path, e))?;
        match std::fs::metadata(path) {
            Ok(now) if held.nlink() > 0 && now.ino() == held.ino() && now.dev() == held.dev() => {
                return Ok((file, created));
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("stat", path, e)),
        }
        last = Some(io::Error::other(
            "the log was replaced while waiting for its lock",
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
    if len == 0 {
        return Ok(0);
    }
    let mut last = [0u8; 1];
    file.read_exact_at(&mut last, len - 1)
        .map_err(|e| Error::io("read", path, e))?;
    if last[0] == b'\n' {
        return Ok(len);
    }
    // Find the start of the torn line, reading backwards in blocks.
    let mut cut = 0;
    let mut end = len;
    let mut block = vec![0u8; BLOCK];
    'search: while end > 0 {
        let from = end.saturating_sub(block.len() as u64);
        let chunk = &mut block[..usize::try_from(end - from).expect("block fits")];
        file.read_exact_at(chunk, from)
            .map_err(|e| Error::io("read", path, e))?;
        // A block of NULs (`memcmp`, fast even unoptimized) holds no newline.
        if chunk == &ZEROS[..chunk.len()] {
            end = from;
            continue;
        }
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            cut = from + i as u64 + 1;
            break 'search;
        }
        end = from;
    }
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
pub(crate) fn log_files(dir: &Path) -> Result<Vec<LogFile>> {
    Ok(fsx::read_dir_sorted(dir)?
        .into_iter()
        .filter_map(|e| {
            let name = e.name.to_str()?.to_owned();
            // Reason: logs are `.jsonl` exactly, as the appender names them.
            #[allow(clippy::case_sensitive_file_extension_comparisons)]
            let is_log = name.ends_with(".jsonl");
            (e.file_type.is_file() && !name.starts_with('.') && is_log)
                .then_some(LogFile { name, path: e.path })
        })
        .collect())
}

/// Where reading starts for `from`: the index of a file and an offset in it.
fn locate(files: &[LogFile], from: &EventCursor) -> Result<(usize, u64)> {
    if from.segment.is_empty() {
        return Ok((0, 0));
    }
    match files.iter().position(|f| f.name == from.segment) {
        Some(i) => {
            let meta = match std::fs::metadata(&files[i].path) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((i + 1, 0)),
                Err(e) => return Err(Error::io("stat", &files[i].path, e)),
            };
            if meta.ino() == from.generation && from.offset <= meta.len() {
                Ok((i, from.offset))
            } else {
                // Replaced (retention rewrote it) or begun again: from the start.
                Ok((0, 0))
            }
        }
        // Its file is gone (retention dropped it): the next one.
        None => Ok((
            files
                .iter()
                .position(|f| f.name > from.segment)
                .unwrap_or(files.len()),
            0,
        )),
    }
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
    let files = log_files(dir)?;
    let (first, offset) = locate(&files, from)?;
    let mut summary = EventLogSummary::default();
    if !files.is_empty() {
        summary.next = from.clone();
    }
    let last = files.len().saturating_sub(1);
    for (i, f) in files.iter().enumerate().skip(first) {
        let start = if i == first { offset } else { 0 };
        let (end, ino) = read_file(
            &f.path,
            &f.name,
            start,
            mode,
            i == last,
            &mut summary,
            visit,
        )?;
        summary.next = EventCursor {
            segment: f.name.clone(),
            offset: end,
            generation: ino,
        };
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

/// Reads `path` from byte `start`; returns the offset after the last whole
/// line consumed (an unterminated end of the last file is not consumed) and
/// the file's inode.
fn read_file(
    path: &Path,
    name: &str,
    start: u64,
    mode: ReadMode,
    last_file: bool,
    summary: &mut EventLogSummary,
    visit: &mut dyn FnMut(EventRecord),
) -> Result<(u64, u64)> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        // Dropped by retention between the listing and now: nothing to read.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((start, 0)),
        Err(e) => return Err(Error::io("open", path, e)),
    };
    let ino = file
        .metadata()
        .map_err(|e| Error::io("stat", path, e))?
        .ino();
    if start > 0 {
        file.seek(SeekFrom::Start(start))
            .map_err(|e| Error::io("seek", path, e))?;
    }
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
            return Ok((pos, ino));
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
            summary.torn_tails.push(TornTail {
                file: name.to_owned(),
                line: number,
                bytes: read.bytes,
            });
            return Ok((if last_file { pos } else { pos + read.bytes }, ino));
        }
        let terminated = read.terminated;
        let body = line.strip_suffix(b"\n").unwrap_or(&line);
        let body = body.strip_suffix(b"\r").unwrap_or(body);
        if body.iter().all(u8::is_ascii_whitespace) {
            if terminated || !last_file {
                pos += read.bytes;
            }
            continue;
        }
        let parsed = serde_json::from_slice(body)
            .map_err(|e| e.to_string())
            .and_then(|v| EventRecord::from_json(v).map_err(|e| e.to_string()));
        match parsed {
            // Whole JSON but no newline at the end of the log: its writer
            // has not finished the line (or was killed), and the next
            // appender moves it aside as torn; reading it now and passing
            // it could hand a follower a cursor into the next line.
            Ok(_) if !terminated && last_file => {
                summary.torn_tails.push(TornTail {
                    file: name.to_owned(),
                    line: number,
                    bytes: body.len() as u64,
                });
            }
            Ok(record) => {
                pos += read.bytes;
                summary.records += 1;
                visit(record);
            }
            Err(_) if !terminated => {
                summary.torn_tails.push(TornTail {
                    file: name.to_owned(),
                    line: number,
                    bytes: body.len() as u64,
                });
                if !last_file {
                    pos += read.bytes;
                }
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
    if has_whole_line_after(dir, &first, after)? {
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

/// Whether the files in `snap` hold a whole line past `after`.
fn has_whole_line_after(
    dir: &Path,
    snap: &[(String, u64, u64)],
    after: &EventCursor,
) -> Result<bool> {
    let Some(i) = snap.iter().position(|(n, _, _)| *n == after.segment) else {
        // Its file is gone or it is the start: anything there is new.
        return Ok(snap
            .iter()
            .any(|(n, _, len)| *len > 0 && (after.segment.is_empty() || *n > after.segment)));
    };
    let (name, ino, len) = &snap[i];
    if *ino != after.generation || after.offset > *len {
        return Ok(true);
    }
    if snap[i + 1..].iter().any(|(_, _, len)| *len > 0) {
        return Ok(true);
    }
    if *len == after.offset {
        return Ok(false);
    }
    // Bytes after the cursor: whole lines, or only a torn tail? Look for a
    // newline in the first MiB of them (a torn line longer than that is
    // treated as torn until the log changes).
    let path = crate::layout::log_file(dir, name);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(Error::io("open", &path, e)),
    };
    let n = usize::try_from((len - after.offset).min(1 << 20)).expect("at most a MiB");
    let mut buf = vec![0u8; n];
    let got = file
        .read_at(&mut buf, after.offset)
        .map_err(|e| Error::io("read", &path, e))?;
    Ok(buf[..got].contains(&b'\n'))
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

/// Deletes the log in `dir` (its files and the side files of torn tails)
/// under the lock of its active file `active`, then the directory if that
/// leaves it empty. `false` if there was no log.
pub(crate) fn delete(dir: &Path, active: &Path) -> Result<bool> {
    let held = match OpenOptions::new().read(true).append(true).open(active) {
        Ok(f) => {
            f.lock().map_err(|e| Error::io("lock", active, e))?;
            Some(f)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io("open", active, e)),
    };
    let doomed: Vec<fsx::Entry> = fsx::read_dir_sorted(dir)?
        .into_iter()
        .filter(|e| {
            let n = e.name.to_string_lossy();
            e.file_type.is_file()
                && !n.starts_with('.')
                && (n.ends_with(".jsonl") || n.contains(".jsonl.torn-"))
        })
        .collect();
    if doomed.is_empty() {
        return Ok(false);
    }
    for e in &doomed {
        match std::fs::remove_file(&e.path) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(Error::io("remove", &e.path, err)),
        }
    }
    fsx::fsync_dir(dir)?;
    drop(held);
    fsx::remove_empty_dirs(&[dir.to_owned(), fsx::parent(dir).to_owned()])?;
    Ok(true)
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

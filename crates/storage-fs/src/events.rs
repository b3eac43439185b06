//! JSONL event logs that many processes append to at once.
//!
//! # Appending
//!
//! An append opens the job's active log (`events.jsonl`) with `O_APPEND`,
//! takes an exclusive `flock` on it, writes the whole batch with one
//! `write_all`, `fsync`s, and unlocks. The lock makes each batch contiguous
//! even when a write is split by the kernel, so lines of concurrent writers
//! never interleave; `O_APPEND` alone does not promise that for large writes.
//! The log file is never replaced, so locking it directly is sound.
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
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use storage_core::{Error, EventLogSummary, EventRecord, Result, TornTail};

use crate::fsx;

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
    let (file, created) = match open(false) {
        Ok(f) => (f, false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fsx::create_dir_all(fsx::parent(path))?;
            (open(true).map_err(|e| Error::io("create", path, e))?, true)
        }
        Err(e) => return Err(Error::io("open", path, e)),
    };
    file.lock().map_err(|e| Error::io("lock", path, e))?;
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

/// Streams every `*.jsonl` file in `dir`, in name order, to `visit`.
pub(crate) fn read(dir: &Path, visit: &mut dyn FnMut(EventRecord)) -> Result<EventLogSummary> {
    let mut summary = EventLogSummary::default();
    for entry in fsx::read_dir_sorted(dir)? {
        let name = entry.name.to_string_lossy();
        if !entry.file_type.is_file() || name.starts_with('.') || !name.ends_with(".jsonl") {
            continue;
        }
        read_file(&entry.path, &name, &mut summary, visit)?;
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

fn read_file(
    path: &Path,
    name: &str,
    summary: &mut EventLogSummary,
    visit: &mut dyn FnMut(EventRecord),
) -> Result<()> {
    let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
    let mut reader = BufReader::with_capacity(BLOCK, file);
    let mut line = Vec::with_capacity(1024);
    let mut number = 0u64;
    loop {
        line.clear();
        let read = read_line_bounded(&mut reader, &mut line, MAX_LINE_BYTES)
            .map_err(|e| Error::io("read", path, e))?;
        if read.bytes == 0 {
            return Ok(());
        }
        number += 1;
        if read.over_limit {
            // Not loaded: a torn tail this long is a run of garbage (NULs
            // after a power loss); a whole line this long was not written by
            // this store, which refuses such events.
            if read.terminated {
                return Err(Error::Corrupt {
                    path: path.to_owned(),
                    line: Some(number),
                    reason: format!(
                        "the line is {} bytes, over the {MAX_LINE_BYTES} bytes a reader holds in \
                         memory; move it out of the log",
                        read.bytes
                    ),
                });
            }
            summary.torn_tails.push(TornTail {
                file: name.to_owned(),
                line: number,
                bytes: read.bytes,
            });
            return Ok(());
        }
        let terminated = read.terminated;
        let body = line.strip_suffix(b"\n").unwrap_or(&line);
        let body = body.strip_suffix(b"\r").unwrap_or(body);
        if body.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let parsed = serde_json::from_slice(body)
            .map_err(|e| e.to_string())
            .and_then(|v| EventRecord::from_json(v).map_err(|e| e.to_string()));
        match parsed {
            Ok(record) => {
                summary.records += 1;
                visit(record);
            }
            Err(_) if !terminated => summary.torn_tails.push(TornTail {
                file: name.to_owned(),
                line: number,
                bytes: body.len() as u64,
            }),
            Err(reason) => {
                return Err(Error::Corrupt {
                    path: path.to_owned(),
                    line: Some(number),
                    reason,
                });
            }
        }
    }
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

//! Retention: trimming a log from its start, archiving what is dropped.
//!
//! A log is trimmed only from its start, so what stays is still a log (no
//! holes) and every kept record keeps its order. The cut is found without
//! reading what is kept more than once and without holding it in memory:
//!
//! 1. by age: a forward scan through the leading run of records older than
//!    the cutoff (a record whose `timestamp` is unreadable stops it: it is
//!    kept rather than guessed at);
//! 2. by count and size: a backward scan from the end of the log, counting
//!    whole lines until one more would break a limit or cross the age cut.
//!
//! Then, holding the lock of the active file (appenders wait; see the
//! parent module for how they find the file again afterwards):
//!
//! 1. the dropped part is streamed into a gzip archive
//!    (`archive/events/<repo>/<job>/events-<time>.jsonl.gz`), `fsync`ed and
//!    put in place without replacing anything, before anything is removed;
//! 2. files wholly before the cut are unlinked;
//! 3. the file the cut falls in is rewritten from the cut (a temp file
//!    beside it, `fsync`, `rename` over it, `fsync` of the directory).
//!
//! A crash after step 1 leaves records both in the archive and in the log
//! (a retry archives them again); never in neither.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::time::SystemTime;

use storage_core::{Error, EventRetention, Result, RetentionReport};

use super::{BLOCK, LogFile, log_files};
use crate::fsx;

/// A position in the log: a file's index and an offset in it.
type Pos = (usize, u64);

/// Trims the log in `dir` by `policy`; see the module docs.
pub(crate) fn retain(
    dir: &Path,
    active: &Path,
    archive_dir: &Path,
    policy: &EventRetention,
) -> Result<RetentionReport> {
    let _held = lock_existing(active)?;
    let files = log_files(dir)?;
    let mut lens = Vec::with_capacity(files.len());
    for f in &files {
        lens.push(
            std::fs::metadata(&f.path)
                .map_err(|e| Error::io("stat", &f.path, e))?
                .len(),
        );
    }
    if files.is_empty() {
        return Ok(RetentionReport::default());
    }
    let age_cut = match policy.keep.max_age {
        Some(age) => match policy.now.checked_sub(age) {
            Some(cutoff) => Some(age_cut(&files, &lens, cutoff)?),
            None => None,
        },
        None => None,
    };
    let (cut, kept) = backward_cut(&files, &lens, policy, age_cut.unwrap_or((0, 0)))?;
    let mut report = RetentionReport::default();
    report.kept = kept;
    if cut == (0, 0) {
        return Ok(report);
    }
    // Count (and archive) what goes, then make the archive durable before
    // anything leaves the log.
    let (dropped, dropped_bytes, archive) = if policy.archive {
        let name = format!(
            "events-{}",
            crate::time::rfc3339(SystemTime::now()).replace(':', "")
        );
        fsx::create_dir_all(archive_dir)?;
        let mut counts = (0, 0);
        let (path, _) = fsx::write_new_unique(
            |n| crate::layout::event_archive_file(archive_dir, &name, n),
            |out| {
                let mut gz = flate2::write::GzEncoder::new(
                    io::BufWriter::with_capacity(BLOCK, out),
                    flate2::Compression::fast(),
                );
                counts = stream_dropped(&files, &lens, cut, &mut gz)?;
                gz.finish()?.flush()
            },
        )?;
        (counts.0, counts.1, Some(path.display().to_string()))
    } else {
        let (lines, bytes) = stream_dropped(&files, &lens, cut, &mut io::sink())
            .map_err(|e| Error::io("read", dir, e))?;
        (lines, bytes, None)
    };
    report.dropped = dropped;
    report.dropped_bytes = dropped_bytes;
    report.archive = archive;
    for f in &files[..cut.0] {
        match std::fs::remove_file(&f.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove", &f.path, e)),
        }
    }
    if cut.0 < files.len() && cut.1 > 0 {
        let f = &files[cut.0];
        fsx::write_atomic_with(&f.path, |out| {
            let mut src = File::open(&f.path)?;
            src.seek(SeekFrom::Start(cut.1))?;
            // `io::copy` between files uses `copy_file_range` on Linux.
            io::copy(&mut src, out).map(|_| ())
        })?;
    } else {
        fsx::fsync_dir(dir)?;
    }
    Ok(report)
}

/// Opens and locks the active file if it exists, making sure the locked
/// file is still the one at the path (a deletion may have unlinked it).
fn lock_existing(active: &Path) -> Result<Option<File>> {
    loop {
        let f = match OpenOptions::new().read(true).append(true).open(active) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("open", active, e)),
        };
        f.lock().map_err(|e| Error::io("lock", active, e))?;
        let held = f.metadata().map_err(|e| Error::io("stat", active, e))?;
        match std::fs::metadata(active) {
            Ok(now) if held.nlink() > 0 && now.ino() == held.ino() => return Ok(Some(f)),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("stat", active, e)),
        }
    }
}

/// Where the leading run of records older than `cutoff` ends.
fn age_cut(files: &[LogFile], lens: &[u64], cutoff: SystemTime) -> Result<Pos> {
    let mut line = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let file = File::open(&f.path).map_err(|e| Error::io("open", &f.path, e))?;
        let mut reader = BufReader::with_capacity(BLOCK, file.take(lens[i]));
        let mut pos = 0u64;
        loop {
            line.clear();
            let n = reader
                .read_until(b'\n', &mut line)
                .map_err(|e| Error::io("read", &f.path, e))?;
            if n == 0 || line.last() != Some(&b'\n') {
                break;
            }
            if !is_older(&line, cutoff) {
                return Ok((i, pos));
            }
            pos += n as u64;
        }
    }
    let last = files.len() - 1;
    Ok((last, lens[last]))
}

/// Whether the event on `line` has a readable `timestamp` before `cutoff`.
fn is_older(line: &[u8], cutoff: SystemTime) -> bool {
    #[derive(serde::Deserialize)]
    struct Stamp<'a> {
        #[serde(borrow)]
        timestamp: Option<std::borrow::Cow<'a, str>>,
    }
    serde_json::from_slice::<Stamp<'_>>(line)
        .ok()
        .and_then(|s| s.timestamp)
        .and_then(|t| storage_core::parse_rfc3339(&t))
        .is_some_and(|t| t < cutoff)
}

/// Scans back from the end of the log counting whole lines while the
/// policy's count and size limits hold and the age cut is not crossed;
/// returns the cut (the start of the first kept line) and how many whole
/// lines are kept. The unterminated end of the last file, if any, is kept
/// and not counted.
fn backward_cut(
    files: &[LogFile],
    lens: &[u64],
    policy: &EventRetention,
    floor: Pos,
) -> Result<(Pos, u64)> {
    let max_count = policy.keep.max_count.unwrap_or(u64::MAX);
    let max_bytes = policy.keep.max_bytes.unwrap_or(u64::MAX);
    let (mut kept, mut kept_bytes) = (0u64, 0u64);
    let mut block = vec![0u8; BLOCK];
    let last = files.len() - 1;
    // The start of the kept part so far.
    let mut cut: Pos = (last, lens[last]);
    for i in (0..files.len()).rev() {
        let path = &files[i].path;
        let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
        // The end of the line being considered; in the last file, what
        // follows its last newline is an unterminated end: kept, not counted.
        let mut e = lens[i];
        let mut tail_pending = i == last;
        let mut end = lens[i];
        while end > 0 {
            let from = end.saturating_sub(block.len() as u64);
            let chunk = &mut block[..usize::try_from(end - from).expect("block fits")];
            file.read_exact_at(chunk, from)
                .map_err(|err| Error::io("read", path, err))?;
            for k in (0..chunk.len()).rev().filter(|&k| chunk[k] == b'\n') {
                let p = from + k as u64;
                if tail_pending {
                    tail_pending = false;
                    e = p + 1;
                    cut = (i, e);
                    continue;
                }
                if p + 1 == e {
                    // The newline that ends the line being considered.
                    continue;
                }
                // The line [p + 1, e) would be kept next.
                if (i, p + 1) < floor
                    || !accept(&mut kept, &mut kept_bytes, e - p - 1, max_count, max_bytes)
                {
                    return Ok((cut, kept));
                }
                e = p + 1;
                cut = (i, e);
            }
            end = from;
        }
        if tail_pending {
            // No newline at all in the last file: all of it is unterminated.
            cut = (i, 0);
            continue;
        }
        if e > 0 {
            // The file's first line, [0, e).
            if (i, 0) < floor || !accept(&mut kept, &mut kept_bytes, e, max_count, max_bytes) {
                return Ok((cut, kept));
            }
            cut = (i, 0);
        }
    }
    Ok((cut, kept))
}

/// Counts one more kept line of `bytes` if the limits allow it.
fn accept(
    kept: &mut u64,
    kept_bytes: &mut u64,
    bytes: u64,
    max_count: u64,
    max_bytes: u64,
) -> bool {
    if *kept + 1 > max_count || kept_bytes.saturating_add(bytes) > max_bytes {
        return false;
    }
    *kept += 1;
    *kept_bytes += bytes;
    true
}

/// Writes the part of the log before `cut` to `out`; returns its lines and bytes.
fn stream_dropped(
    files: &[LogFile],
    lens: &[u64],
    cut: Pos,
    out: &mut dyn Write,
) -> io::Result<(u64, u64)> {
    let mut lines = 0u64;
    let mut bytes = 0u64;
    let mut block = vec![0u8; BLOCK];
    for (i, f) in files.iter().enumerate().take(cut.0 + 1) {
        let upto = if i == cut.0 { cut.1 } else { lens[i] };
        let mut src = File::open(&f.path)?.take(upto);
        loop {
            let n = src.read(&mut block)?;
            if n == 0 {
                break;
            }
            // A plain filter-count vectorizes well enough here; the
            // Reason: the `bytecount` crate is not worth a dependency for it.
            #[allow(clippy::naive_bytecount)]
            let newlines = block[..n].iter().filter(|&&b| b == b'\n').count();
            lines += newlines as u64;
            out.write_all(&block[..n])?;
            bytes += n as u64;
        }
    }
    Ok((lines, bytes))
}

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
//! Then, holding the log's lock (`.log`: appenders and readers wait; see
//! [`super::ident`]):
//!
//! 1. the dropped part is streamed into a gzip archive
//!    (`archive/events/<repo>/<job>/events-<time>.jsonl.gz`), `fsync`ed and
//!    put in place without replacing anything, before anything is removed;
//! 2. files wholly before the cut are unlinked;
//! 3. the file the cut falls in is rewritten from the cut: a temp file
//!    beside it, `fsync`; then `.log` begins a new epoch that records the
//!    cut (the file, the bytes dropped, a fingerprint of the rewritten
//!    file's start), durably; then `rename` over the file, `fsync` of the
//!    directory.
//!
//! A crash after step 1 leaves records both in the archive and in the log
//! (a retry archives them again); never in neither. A crash between the
//! new epoch and the rename leaves the old file under a record of a cut it
//! did not get: a cursor of the epoch before is then not carried over
//! (the fingerprint differs) but starts again at the log's start, so
//! records may be delivered twice, never skipped.
//!
//! Freeing what was dropped (the kernel does it at the last close of an
//! unlinked file, a few hundred milliseconds for a few hundred megabytes)
//! happens on a short-lived thread, after the lock is released: the trim
//! is complete and durable before `retain` returns; only the freeing is
//! not waited for.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::SystemTime;

use storage_core::{Error, EventRetention, Result, RetentionReport};

use super::ident::{self, LogLock};
use super::{BLOCK, LogFile, log_files};
use crate::fsx;

/// A position in the log: a file's index and an offset in it.
type Pos = (usize, u64);

/// Trims the log in `dir` by `policy`; see the module docs.
pub(crate) fn retain(
    dir: &Path,
    archive_dir: &Path,
    policy: &EventRetention,
) -> Result<RetentionReport> {
    match log_files(dir) {
        Ok(files) if !files.is_empty() => {}
        Ok(_) => return Ok(RetentionReport::default()),
        Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Ok(RetentionReport::default());
        }
        Err(e) => return Err(e),
    }
    // Every file of the log, whatever its name, under the log's own lock.
    let mut held = LogLock::exclusive(dir)?;
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
        (Some(counts.0), counts.1, Some(path.display().to_string()))
    } else {
        // Not read: the bytes dropped are known from the offsets alone.
        (None, dropped_bytes(&lens, cut), None)
    };
    report.dropped = dropped;
    report.dropped_bytes = dropped_bytes;
    report.archive = archive;
    // Descriptors of the files leaving the log, closed off the caller's
    // thread (see `release_in_background`).
    let mut leaving = Vec::new();
    for f in &files[..cut.0] {
        if let Ok(fd) = File::open(&f.path) {
            leaving.push(fd);
        }
        match std::fs::remove_file(&f.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove", &f.path, e)),
        }
    }
    if cut.0 < files.len() && cut.1 >= lens[cut.0] {
        // Nothing of the file is kept: removed like the files before it (a
        // rewrite to nothing would leave a fingerprint of no bytes, which
        // any file matches).
        let f = &files[cut.0];
        if let Ok(fd) = File::open(&f.path) {
            leaving.push(fd);
        }
        match std::fs::remove_file(&f.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove", &f.path, e)),
        }
        fsx::fsync_dir(dir)?;
    } else if cut.0 < files.len() && cut.1 > 0 {
        let f = &files[cut.0];
        if let Ok(fd) = File::open(&f.path) {
            leaving.push(fd);
        }
        rewrite_from(&mut held, f, cut.1)?;
    } else {
        fsx::fsync_dir(dir)?;
    }
    // Appenders and readers waiting for the lock go on now, with the new file.
    leaving.push(held.into_file());
    release_in_background(leaving);
    Ok(report)
}

/// Closes `files` on a short-lived thread of its own.
///
/// The last close of a file that is no longer linked is when the kernel
/// frees its pages and blocks: for a log of a few hundred megabytes that is
/// a few hundred milliseconds, which the caller need not wait for (the
/// trim is complete and durable before this). If the thread cannot be
/// started, they are closed here.
fn release_in_background(files: Vec<File>) {
    if files.is_empty() {
        return;
    }
    let spare = std::sync::Arc::new(std::sync::Mutex::new(Some(files)));
    let theirs = std::sync::Arc::clone(&spare);
    let started = std::thread::Builder::new()
        .name("prodigy-storage-release".into())
        .spawn(move || drop(theirs.lock().map(|mut f| f.take())));
    if started.is_err() {
        drop(spare.lock().map(|mut f| f.take()));
    }
}

/// Replaces `f` with its bytes from `from` on (step 3 of the module docs):
/// the new epoch, recording the cut, is durable before the rename.
fn rewrite_from(held: &mut LogLock, f: &LogFile, from: u64) -> Result<()> {
    let dir = fsx::parent(&f.path);
    let (tmp, mut out) = fsx::create_temp(dir, &f.name)?;
    let result = (|| {
        let filled = (|| {
            let mut src = File::open(&f.path)?;
            src.seek(SeekFrom::Start(from))?;
            // `io::copy` between files uses `copy_file_range` on Linux.
            io::copy(&mut src, &mut out)?;
            out.sync_all()
        })();
        filled.map_err(|e| Error::io("write", &tmp, e))?;
        let kept = out
            .metadata()
            .map_err(|e| Error::io("stat", &tmp, e))?
            .len();
        let head_len = kept.min(ident::HEAD_BYTES);
        let written = File::open(&tmp).map_err(|e| Error::io("open", &tmp, e))?;
        let fingerprint = ident::head_of(&written, &tmp, head_len)?;
        held.begin_epoch(ident::Cut {
            segment: f.name.clone(),
            dropped: from,
            head_len,
            head: fingerprint,
        })?;
        std::fs::rename(&tmp, &f.path).map_err(|e| Error::io("rename into place", &f.path, e))
    })();
    drop(out);
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    fsx::fsync_dir(dir)
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
            // Fast path: when every line that starts in this block fits the
            // limits, take them all at once (a newline count and the first
            // newline), without visiting them one by one.
            if !tail_pending {
                let Some(first) = chunk.iter().position(|&b| b == b'\n') else {
                    // The line being considered starts further back.
                    end = from;
                    continue;
                };
                let mut lines = count_newlines(chunk);
                if e == end && chunk.last() == Some(&b'\n') {
                    // That newline ends the line being considered.
                    lines -= 1;
                }
                let start = from + first as u64 + 1;
                if lines > 0
                    && (i, start) >= floor
                    && kept + lines <= max_count
                    && kept_bytes.saturating_add(e - start) <= max_bytes
                {
                    kept += lines;
                    kept_bytes += e - start;
                    e = start;
                    cut = (i, e);
                    end = from;
                    continue;
                }
            }
            let mut scan_end = chunk.len();
            while let Some(k) = chunk[..scan_end].iter().rposition(|&b| b == b'\n') {
                scan_end = k;
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

/// The bytes of the log before `cut`.
fn dropped_bytes(lens: &[u64], cut: Pos) -> u64 {
    lens[..cut.0].iter().sum::<u64>() + cut.1
}

/// How many `\n` bytes `chunk` holds, eight at a time: a byte of `w ^
/// 0x0a…0a` is zero exactly where `w` has a newline, and the classic
/// has-zero-byte test marks each such byte in its top bit.
fn count_newlines(chunk: &[u8]) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut words = chunk.chunks_exact(8);
    let mut n = 0u64;
    for w in &mut words {
        let x = u64::from_ne_bytes(w.try_into().expect("eight bytes")) ^ (ONES * u64::from(b'\n'));
        // The top bit of each byte of `x` that is zero; exact, because the
        // low seven bits are added on their own and cannot carry across bytes.
        let zero = !(((x & !HIGH) + !HIGH) | x) & HIGH;
        n += u64::from(zero.count_ones());
    }
    n + words
        .remainder()
        .iter()
        .map(|&b| u64::from(b == b'\n'))
        .sum::<u64>()
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
            lines += count_newlines(&block[..n]);
            out.write_all(&block[..n])?;
            bytes += n as u64;
        }
    }
    Ok((lines, bytes))
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use storage_core::{EventRetention, Retention};

    use super::{count_newlines, retain};

    const OLD: &[u8] = b"{\"timestamp\":\"2020-01-01T00:00:00Z\",\"pad\":\"";
    const NEW: &[u8] = b"{\"timestamp\":\"2030-01-01T00:00:00Z\",\"pad\":\"";

    /// A small deterministic generator (xorshift), so a failure reproduces.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Random logs (several files, lines from 2 bytes to past a 64 KiB
    /// block, an unterminated end or not) trimmed by random limits keep
    /// exactly what `Retention::drop_count` (the memory store's rule) keeps.
    #[test]
    fn the_cut_matches_the_reference_rule_on_random_logs() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for round in 0..60 {
            let dir = tempfile::tempdir().expect("tempdir");
            let names = ["events-1.jsonl", "events-2.jsonl", "events.jsonl"];
            let files = 1 + usize::try_from(rng.below(3)).expect("small");
            let mut lines: Vec<Vec<u8>> = Vec::new();
            let mut contents: Vec<Vec<u8>> = vec![Vec::new(); files];
            for (f, content) in contents.iter_mut().enumerate() {
                for _ in 0..rng.below(40) {
                    let _ = &lines;
                    let len = match rng.below(10) {
                        0 => 70_000 + rng.below(70_000),
                        1..=3 => 1 + rng.below(3),
                        _ => 10 + rng.below(400),
                    };
                    // Old (2020) or new (2030): the leading run is mostly old.
                    let old = rng.below(4) != 0 && lines.iter().all(|l| l.starts_with(OLD));
                    let mut line = if old { OLD.to_vec() } else { NEW.to_vec() };
                    line.extend(std::iter::repeat_n(
                        b'x',
                        usize::try_from(len).expect("small"),
                    ));
                    line.extend_from_slice(b"\"}\n");
                    content.extend_from_slice(&line);
                    lines.push(line);
                }
                let _ = f;
            }
            let tail = if rng.below(2) == 0 {
                b"{\"torn".to_vec()
            } else {
                Vec::new()
            };
            contents[files - 1].extend_from_slice(&tail);
            for (f, content) in contents.iter().enumerate() {
                let name = names[names.len() - files + f];
                std::fs::write(dir.path().join(name), content).expect("write");
            }
            let total: u64 = lines.iter().map(|l| l.len() as u64).sum();
            let mut keep = Retention::keep_all();
            if rng.below(3) != 0 {
                keep = keep.with_max_count(rng.below(lines.len() as u64 + 3));
            }
            if rng.below(3) != 0 {
                keep = keep.with_max_bytes(rng.below(total + 10));
            }
            if rng.below(2) == 0 {
                keep = keep.with_max_age(std::time::Duration::from_secs(86_400 * 365));
            }
            let now = storage_core::parse_rfc3339("2026-01-01T00:00:00Z").expect("time");
            let time = |l: &[u8]| {
                let t = if l.starts_with(OLD) {
                    "2020-01-01T00:00:00Z"
                } else {
                    "2030-01-01T00:00:00Z"
                };
                storage_core::parse_rfc3339(t)
            };
            let shape: Vec<(u64, Option<SystemTime>)> =
                lines.iter().map(|l| (l.len() as u64, time(l))).collect();
            let drop = keep.drop_count(&shape, now);
            let report = retain(
                dir.path(),
                &dir.path().join("archive"),
                &EventRetention::new(keep).without_archive().at(now),
            )
            .expect("retain");
            let mut left = Vec::new();
            for name in names {
                if let Ok(bytes) = std::fs::read(dir.path().join(name)) {
                    left.extend_from_slice(&bytes);
                }
            }
            let mut expected: Vec<u8> = lines[drop..].concat();
            expected.extend_from_slice(&tail);
            assert_eq!(
                report.kept,
                (lines.len() - drop) as u64,
                "round {round}: {keep:?}"
            );
            assert_eq!(left.len(), expected.len(), "round {round}: {keep:?}");
            assert!(left == expected, "round {round}: {keep:?}");
            let dropped: u64 = lines[..drop].iter().map(|l| l.len() as u64).sum();
            assert_eq!(report.dropped_bytes, if drop == 0 { 0 } else { dropped });
        }
    }

    #[test]
    fn newlines_are_counted_exactly() {
        let mut bytes: Vec<u8> = (0..=255u8).cycle().take(10_007).collect();
        bytes.extend_from_slice(b"\n\n\x0b\x09\x8a\n");
        let naive: u64 = bytes.iter().map(|&b| u64::from(b == b'\n')).sum();
        for start in 0..9 {
            let slice = &bytes[start..];
            assert_eq!(
                count_newlines(slice),
                slice.iter().map(|&b| u64::from(b == b'\n')).sum::<u64>()
            );
        }
        assert_eq!(count_newlines(&bytes), naive);
    }
}

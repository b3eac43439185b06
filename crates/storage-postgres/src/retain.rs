//! Retention: trimming a log from its start, archiving what is dropped.
//!
//! All of it is one transaction that holds the log's `event_logs` row lock
//! from its first statement (`SELECT … FOR UPDATE`) to its commit, so
//! appenders wait for it (their upsert takes the same lock) and their
//! batches land after what is kept; readers are not blocked (MVCC) and see
//! the log before the trim or after it, never in between.
//!
//! The cut follows [`Retention::drop_count`](storage_core::Retention::drop_count),
//! the reference rule, without loading the log: the kept part is always a
//! suffix, so the cut is the furthest of
//!
//! - by count: `next_seq - max_count`;
//! - by size: the first line of the longest run at the end whose bytes (a
//!   newline each counted, as the other stores count a line) fit, summed by
//!   the server (`sql::bytes_cut`);
//! - by age: the end of the leading run of lines whose `timestamp` is older
//!   than the cutoff, read page by page from the start (a line without a
//!   readable time stops the run: it is kept rather than guessed at).
//!
//! Then, if the policy archives, the dropped lines are streamed page by page
//! into a gzip encoder (JSONL, a newline after each line, as the file store
//! archives) and stored in one `event_archives` row, before they leave the
//! log: the archive and the trim commit together, or neither does. The
//! compressed archive is held in memory until it is sent (a `bytea`
//! parameter), about a tenth of what is dropped for event JSON.

use std::io::Write as _;
use std::time::SystemTime;

use storage_core::{EventRetention, JobId, RepoKey, RetentionReport};

use crate::pool::{Conn, PgResult};
use crate::sql::{self, LogState};
use crate::store::{PAGE_BYTES, PAGE_ROWS, PgStorage};

/// Trims the log of `repo`/`job` by `policy`, in the caller's transaction.
pub(crate) fn retain(
    conn: &mut Conn,
    schema: &str,
    repo: &RepoKey,
    job: &JobId,
    policy: &EventRetention,
) -> PgResult<RetentionReport> {
    let (r, j) = (repo.as_str(), job.as_str());
    let Some(log) = sql::lock_log(conn, r, j)? else {
        return Ok(RetentionReport::default());
    };
    let mut cut = log.first;
    if let Some(max) = policy.keep.max_count {
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        cut = cut.max(log.next.saturating_sub(max));
    }
    if let Some(max) = policy.keep.max_bytes {
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        cut = cut.max(sql::bytes_cut(conn, r, j, log.first, max)?.unwrap_or(log.next));
    }
    if let Some(cutoff) = policy
        .keep
        .max_age
        .and_then(|age| policy.now.checked_sub(age))
    {
        cut = cut.max(age_cut(conn, r, j, log, cutoff)?);
    }
    let cut = cut.min(log.next);
    let mut report = RetentionReport::default();
    report.kept = u64::try_from(log.next - cut).expect("cut <= next");
    report.dropped = Some(0);
    if cut == log.first {
        return Ok(report);
    }
    if policy.archive {
        let (gzip, bytes) = compress(conn, r, j, log, cut)?;
        let id = sql::insert_archive(conn, r, j, (log.generation, log.first, cut), bytes, &gzip)?;
        report.archive = Some(format!("postgres:{schema}.event_archives/{id}"));
    }
    let (lines, bytes) = sql::trim_log(conn, r, j, cut)?;
    report.dropped = Some(u64::try_from(lines).expect("a count"));
    report.dropped_bytes = u64::try_from(bytes).expect("a size");
    Ok(report)
}

/// Calls `each(seq, line)` for the lines `from..end` of the log, page by
/// page, until it returns `false`; returns where it stopped (the `seq` it
/// refused, or the first one missing, or `end`).
fn scan(
    conn: &mut Conn,
    (repo, job): (&str, &str),
    (from, end): (i64, i64),
    each: &mut dyn FnMut(i64, &str) -> bool,
) -> PgResult<i64> {
    let mut pos = from;
    while pos < end {
        let Some(page) = sql::read_events_page(conn, repo, job, (pos, end), PAGE_ROWS, PAGE_BYTES)?
        else {
            return Ok(pos);
        };
        if page.lines.is_empty() {
            return Ok(pos);
        }
        for (seq, line) in &page.lines {
            if *seq != pos || !each(*seq, line) {
                return Ok(pos);
            }
            pos += 1;
        }
    }
    Ok(pos)
}

/// Where the leading run of lines older than `cutoff` ends.
fn age_cut(
    conn: &mut Conn,
    repo: &str,
    job: &str,
    log: LogState,
    cutoff: SystemTime,
) -> PgResult<i64> {
    scan(conn, (repo, job), (log.first, log.next), &mut |_, line| {
        PgStorage::parse_line(line)
            .ok()
            .and_then(|e| e.timestamp())
            .is_some_and(|t| t < cutoff)
    })
}

/// The lines `log.first..cut`, gzip-compressed as JSONL, and their bytes
/// uncompressed.
fn compress(
    conn: &mut Conn,
    repo: &str,
    job: &str,
    log: LogState,
    cut: i64,
) -> PgResult<(Vec<u8>, i64)> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut bytes = 0i64;
    scan(conn, (repo, job), (log.first, cut), &mut |_, line| {
        gz.write_all(line.as_bytes())
            .and_then(|()| gz.write_all(b"\n"))
            .expect("compressing into memory cannot fail");
        bytes += i64::try_from(line.len()).expect("at most 16 MiB") + 1;
        true
    })?;
    let gzip = gz.finish().expect("compressing into memory cannot fail");
    Ok((gzip, bytes))
}

//! Splitting Prodigy's one global event log into per-job logs.
//!
//! Legacy Prodigy wrote the events of *all* jobs into
//! `mapreduce/events/global/events.jsonl` (rotated to `events.<ts>.jsonl.gz`,
//! which is plain text despite its name). The store keeps one log per job, so
//! each line is routed by its `event.job_id` and copied byte for byte, in
//! order, with its newline. Lines with no valid job id, lines that are not
//! JSON, and a torn last line are routed to "unrouted" and kept verbatim;
//! nothing is dropped. Routing is a pure function of the line, so
//! verification re-runs it over the source and compares hashes: every source
//! line is then accounted for exactly once.
//!
//! Memory is bounded whatever the input: a line is never held whole. A line
//! of up to [`PREFIX`] bytes is routed by parsing it; a longer one (a run of
//! NUL bytes after a power loss, a huge payload) is routed by its first
//! [`PREFIX`] bytes when they reach its `event.job_id`, and to "unrouted"
//! otherwise, and its bytes are streamed through in pieces.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{BufRead, BufReader, ErrorKind, Read};
use std::path::Path;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use storage_core::JobId;

use crate::error::{Error, Result};

/// Where a line goes: a job's log, or the unrouted file (`None`).
pub type Route = Option<JobId>;

#[derive(Deserialize)]
struct Probe {
    event: Option<EventProbe>,
}

#[derive(Deserialize)]
struct EventProbe {
    job_id: Option<String>,
}

/// The route of one line (with or without its newline).
#[must_use]
pub fn route(line: &[u8]) -> Route {
    let body = line.strip_suffix(b"\n").unwrap_or(line);
    let probe: Probe = serde_json::from_slice(body).ok()?;
    JobId::new(probe.event?.job_id?).ok()
}

/// Lines longer than this many bytes (newline included) are routed by their
/// first `PREFIX` bytes and streamed through without being held whole.
pub const PREFIX: usize = 64 * 1024;

/// The route of a line longer than [`PREFIX`], from its first bytes: the
/// `event.job_id` when the prefix reaches it, else unrouted.
fn route_prefix(prefix: &[u8]) -> Route {
    let mut found = None;
    let mut de = serde_json::Deserializer::from_slice(prefix);
    // The prefix is cut mid-line, so the parse always ends in an error: what
    // matters is whether it met the job id first.
    let _ = Probing::Line(&mut found).deserialize(&mut de);
    JobId::new(found?).ok()
}

/// A partial parse of a line's prefix that records the first
/// `event.job_id` it meets and then stops.
enum Probing<'a> {
    /// The top-level object.
    Line(&'a mut Option<String>),
    /// The value of its `event` field.
    Event(&'a mut Option<String>),
}

impl<'de> DeserializeSeed<'de> for Probing<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Probing<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an event object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
        let (found, top) = match self {
            Probing::Line(found) => (found, true),
            Probing::Event(found) => (found, false),
        };
        while let Some(key) = map.next_key::<String>()? {
            match (top, key.as_str()) {
                (true, "event") => {
                    map.next_value_seed(Probing::Event(&mut *found))?;
                    return Err(de::Error::custom("stop: the event was probed"));
                }
                (false, "job_id") => {
                    *found = map.next_value::<Option<String>>()?;
                    return Err(de::Error::custom("stop: the job id was found"));
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// Per-route totals of one pass over a log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteTotals {
    /// Lines.
    pub lines: u64,
    /// Bytes, newlines included.
    pub bytes: u64,
    /// BLAKE3 of the concatenated lines.
    pub hash: Option<blake3::Hash>,
}

/// Streams `reader` line by line, calling `sink(route, bytes)` with every
/// byte of every line exactly once and in order, and returns per-route totals.
/// A line of up to [`PREFIX`] bytes comes in one call; a longer one in
/// several consecutive calls with the same route. Memory is bounded: at most
/// [`PREFIX`] bytes of a line are held, plus a fixed read buffer.
pub fn for_each_line(
    reader: impl Read,
    path: &Path,
    mut sink: impl FnMut(&Route, &[u8]) -> Result<()>,
) -> Result<BTreeMap<Route, RouteTotals>> {
    let mut reader = BufReader::with_capacity(256 * 1024, reader);
    let mut hashers: BTreeMap<Route, (u64, u64, blake3::Hasher)> = BTreeMap::new();
    let mut head = Vec::with_capacity(1024);
    loop {
        head.clear();
        let whole = read_head(&mut reader, &mut head, path)?;
        if head.is_empty() {
            break;
        }
        if whole {
            // The common case: one whole line, its route moved into the totals.
            let r = route(&head);
            sink(&r, &head)?;
            let entry = hashers
                .entry(r)
                .or_insert_with(|| (0, 0, blake3::Hasher::new()));
            entry.0 += 1;
            entry.1 += head.len() as u64;
            entry.2.update(&head);
            continue;
        }
        let r = route_prefix(&head);
        let entry = hashers
            .entry(r.clone())
            .or_insert_with(|| (0, 0, blake3::Hasher::new()));
        entry.0 += 1;
        sink(&r, &head)?;
        entry.1 += head.len() as u64;
        entry.2.update(&head);
        // The rest of a long line, one read buffer at a time.
        {
            loop {
                let buf = fill(&mut reader, path)?;
                if buf.is_empty() {
                    break;
                }
                let (n, end) = match buf.iter().position(|&b| b == b'\n') {
                    Some(i) => (i + 1, true),
                    None => (buf.len(), false),
                };
                sink(&r, &buf[..n])?;
                entry.1 += n as u64;
                entry.2.update(&buf[..n]);
                reader.consume(n);
                if end {
                    break;
                }
            }
        }
    }
    Ok(hashers
        .into_iter()
        .map(|(r, (lines, bytes, h))| {
            (
                r,
                RouteTotals {
                    lines,
                    bytes,
                    hash: Some(h.finalize()),
                },
            )
        })
        .collect())
}

/// Reads the next line into `head`, up to [`PREFIX`] bytes. Returns whether
/// `head` holds the whole line (it ended with a newline or the input within
/// [`PREFIX`] bytes); an empty `head` is the end of the input.
fn read_head(reader: &mut impl BufRead, head: &mut Vec<u8>, path: &Path) -> Result<bool> {
    // `read_until` finds the newline with `memchr`; `take` bounds the line.
    let n = reader
        .by_ref()
        .take(PREFIX as u64)
        .read_until(b'\n', head)
        .map_err(|e| Error::io("read", path, e))?;
    if n == 0 || head.last() == Some(&b'\n') || head.len() < PREFIX {
        return Ok(true);
    }
    // Exactly `PREFIX` bytes and no newline yet: whole only at the end of the input.
    Ok(fill(reader, path)?.is_empty())
}

/// The buffered bytes of `reader`, reading more if none are (empty at the end).
fn fill<'r>(reader: &'r mut impl BufRead, path: &Path) -> Result<&'r [u8]> {
    loop {
        match reader.fill_buf() {
            Ok(_) => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("read", path, e)),
        }
    }
    reader.fill_buf().map_err(|e| Error::io("read", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_routed_by_event_job_id_and_nothing_is_dropped() {
        let log = concat!(
            r#"{"id":"1","event":{"event_type":"job_started","job_id":"mapreduce-1"}}"#,
            "\n",
            r#"{"id":"2","event":{"event_type":"agent_started","job_id":"mapreduce-20250906_082000"}}"#,
            "\n",
            r#"{"id":"3","event":{"event_type":"x"}}"#,
            "\n",
            "not json at all\n",
            r#"{"id":"4","event":{"job_id":"../../etc"}}"#,
            "\n",
            r#"{"id":"5","event":{"job_id":"mapreduce-1"}}"#,
            "\n",
            r#"{"id":"6","event":{"job_id":"mapre"#,
        );
        let mut seen: Vec<(Route, Vec<u8>)> = Vec::new();
        let totals = for_each_line(log.as_bytes(), Path::new("events.jsonl"), |r, l| {
            seen.push((r.clone(), l.to_vec()));
            Ok(())
        })
        .expect("split");
        let j1 = Some(JobId::new("mapreduce-1").expect("v"));
        assert_eq!(totals[&j1].lines, 2);
        assert_eq!(
            totals[&None].lines, 4,
            "no job, not JSON, hostile id, torn tail"
        );
        let all: Vec<u8> = seen.iter().flat_map(|(_, l)| l.clone()).collect();
        assert_eq!(all, log.as_bytes(), "every byte, in order");
        let total: u64 = totals.values().map(|t| t.bytes).sum();
        assert_eq!(total, log.len() as u64);
    }

    /// Collects the pieces `for_each_line` hands out, checking that no piece
    /// is larger than the prefix or the read buffer (no line held whole).
    type Pieces = Vec<(Route, Vec<u8>)>;

    fn split_all(log: &[u8]) -> (BTreeMap<Route, RouteTotals>, Pieces) {
        let mut seen: Vec<(Route, Vec<u8>)> = Vec::new();
        let totals = for_each_line(log, Path::new("events.jsonl"), |r, piece| {
            assert!(
                piece.len() <= 256 * 1024,
                "a piece of {} bytes",
                piece.len()
            );
            seen.push((r.clone(), piece.to_vec()));
            Ok(())
        })
        .expect("split");
        (totals, seen)
    }

    #[test]
    fn a_line_longer_than_the_prefix_is_routed_by_its_prefix_and_streamed_in_pieces() {
        let mut log = br#"{"id":"1","event":{"job_id":"mapreduce-1","data":""#.to_vec();
        log.extend(std::iter::repeat_n(b'a', 3 << 20));
        log.extend(b"\"}}\n");
        let first_line = log.len();
        log.extend(br#"{"id":"2","event":{"job_id":"mapreduce-2"}}"#);
        log.push(b'\n');
        // A power-loss tail: NULs, no newline, no job id.
        log.extend(std::iter::repeat_n(0u8, PREFIX * 5 + 17));
        let (totals, seen) = split_all(&log);
        let j1 = Some(JobId::new("mapreduce-1").expect("v"));
        let j2 = Some(JobId::new("mapreduce-2").expect("v"));
        assert_eq!(totals[&j1].lines, 1);
        assert_eq!(totals[&j1].bytes, first_line as u64);
        assert_eq!(totals[&j1].hash, Some(blake3::hash(&log[..first_line])));
        assert_eq!(totals[&j2].lines, 1);
        assert_eq!(totals[&None].lines, 1, "the NUL tail is one unrouted line");
        assert_eq!(totals[&None].bytes, PREFIX as u64 * 5 + 17);
        assert!(
            seen.iter().filter(|(r, _)| *r == j1).count() > 1,
            "streamed in pieces"
        );
        let all: Vec<u8> = seen.iter().flat_map(|(_, l)| l.clone()).collect();
        assert_eq!(all, log, "every byte once, in order");
    }

    #[test]
    fn the_prefix_bound_is_exact_and_a_long_line_without_a_job_id_in_its_prefix_is_unrouted() {
        let line = |len: usize| {
            let mut l = br#"{"event":{"job_id":"mapreduce-1"},"pad":""#.to_vec();
            l.resize(len - 3, b'x');
            l.extend(b"\"}\n");
            l
        };
        let j1 = Some(JobId::new("mapreduce-1").expect("v"));
        for len in [PREFIX - 1, PREFIX, PREFIX + 1, PREFIX + 2] {
            let (totals, _) = split_all(&line(len));
            assert_eq!(totals[&j1].bytes, len as u64, "a line of {len} bytes");
        }
        // The job id only after the first PREFIX bytes: not found, kept unrouted.
        let mut late = br#"{"pad":""#.to_vec();
        late.resize(PREFIX + 10, b'x');
        late.extend(br#"","event":{"job_id":"mapreduce-1"}}"#);
        late.push(b'\n');
        let (totals, _) = split_all(&late);
        assert_eq!(totals.keys().collect::<Vec<_>>(), [&None]);
        assert_eq!(totals[&None].bytes, late.len() as u64);
        // The same fields within the bound route by a full parse.
        let mut short = late.clone();
        short.drain(10..PREFIX);
        let (totals, _) = split_all(&short);
        assert_eq!(totals[&j1].lines, 1);
    }
}

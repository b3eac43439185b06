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

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use serde::Deserialize;
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

/// Streams `reader` line by line, calling `sink(route, line)` for each line
/// in order, and returns per-route totals. Memory is bounded by the longest line.
pub fn for_each_line(
    reader: impl Read,
    path: &Path,
    mut sink: impl FnMut(&Route, &[u8]) -> Result<()>,
) -> Result<BTreeMap<Route, RouteTotals>> {
    let mut reader = BufReader::with_capacity(256 * 1024, reader);
    let mut hashers: BTreeMap<Route, (u64, u64, blake3::Hasher)> = BTreeMap::new();
    let mut line = Vec::with_capacity(1024);
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| Error::io("read", path, e))?;
        if n == 0 {
            break;
        }
        let r = route(&line);
        sink(&r, &line)?;
        let entry = hashers
            .entry(r)
            .or_insert_with(|| (0, 0, blake3::Hasher::new()));
        entry.0 += 1;
        entry.1 += line.len() as u64;
        entry.2.update(&line);
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
}

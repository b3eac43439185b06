//! Entry points for the fuzz targets in `fuzz/`: every reader of legacy
//! data and of the migration's own records, from bytes. Not a stable API.
//!
//! Each function must never panic and must use memory bounded by its input;
//! the targets also assert each reader's own promise (no byte lost by the
//! log split, a rewritten metadata file is still JSON).

use std::path::Path;

use crate::manifest::{Entry, HistoryEntry, Journal, Manifest};

/// Splits a global event log; returns (total bytes routed, lines).
#[must_use]
pub fn split_log(bytes: &[u8]) -> (u64, u64) {
    let totals = crate::split::for_each_line(bytes, Path::new("fuzz.jsonl"), |_, _| Ok(()))
        .expect("reading from memory cannot fail");
    (
        totals.values().map(|t| t.bytes).sum(),
        totals.values().map(|t| t.lines).sum(),
    )
}

/// The route of one line (a job id or none).
#[must_use]
pub fn route(line: &[u8]) -> Option<String> {
    crate::split::route(line).map(|j| j.to_string())
}

/// Rewrites a legacy `metadata.json`; returns the new bytes and whether it was rewritten.
#[must_use]
pub fn rewrite_metadata(bytes: &[u8]) -> (Vec<u8>, bool) {
    let (out, warning) =
        crate::protocol::rewrite_metadata_path(bytes, Path::new("/store/state/r/mapreduce/jobs/j"));
    (out, warning.is_none())
}

/// The session id a `session_state.json` would be filed under, if any.
#[must_use]
pub fn session_id(bytes: &[u8]) -> Option<String> {
    crate::plan::session_id_in(bytes).map(|s| s.to_string())
}

/// Classifies a legacy path (components separated by `/`).
#[must_use]
pub fn classify(path: &[u8]) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let p = Path::new(std::ffi::OsStr::from_bytes(path));
    let parts: Vec<Option<&str>> = p.iter().map(|c| c.to_str()).collect();
    crate::legacy::classify(&parts).is_storage()
}

/// Parses a manifest, an entry, a journal and a history line from the same bytes.
pub fn parse_records(bytes: &[u8]) {
    let _ = serde_json::from_slice::<Manifest>(bytes);
    let _ = serde_json::from_slice::<Entry>(bytes);
    let _ = serde_json::from_slice::<Journal>(bytes);
    let _ = serde_json::from_slice::<HistoryEntry>(bytes);
}

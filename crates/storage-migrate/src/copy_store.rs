//! Copying a whole file store into another `Storage` (a team's database
//! store), with a migration's guarantees: nothing is removed from the
//! source, every item is verified in the destination after it is written,
//! and a copy that was killed resumes where it stopped.
//!
//! # Items and the journal
//!
//! The copy walks every document the API reaches (unified sessions and
//! what belongs to them, then each repository's sessions, workflow
//! checkpoints, mappings, job checkpoints and metadata, dead letters and
//! their index, extension kinds) and every event log. An item is named by
//! a stable id (its kind and key). When an item is copied *and verified*,
//! its id is appended to the journal `migrations/.copy-store/<dest>/done.jsonl`
//! in the source store (`fsync`ed every 256 items and at the end); a run
//! skips the ids it finds there. An item done but not yet journalled when
//! the copy was killed is done again:
//!
//! - a document is found in the destination, equal to the source's, and
//!   is journalled without being written again (see below);
//! - an event log is not appended twice: the destination's log is read
//!   first, and if it is a prefix of the source's log (same records, in
//!   order: compared by count and a running BLAKE3 of each record), only
//!   the rest is appended. A destination log that is not a prefix of the
//!   source's is refused, naming it: it was written by something else.
//!
//! Memory holds the journal's ids, one scope's keys and one batch of
//! events (1,000), never a whole log.
//!
//! # A document the destination already has
//!
//! Before a document is written, the destination's document at the same
//! key is read. Equal to the source's (`==` on JSON): nothing is written,
//! the item is journalled and counted in `already_equal`; this is also what
//! a run resumed after a kill finds for an item the killed run had written
//! but not journalled yet. Absent: the document is copied. Different, or
//! not readable as JSON: it is someone else's data, so it is **not**
//! overwritten. It is listed in the report's `conflicts` (its key, the
//! source's file, why), is not journalled (the next run looks again), and
//! the copy goes on with the other items; the CLI then exits with status
//! 1 and says what to do: compare the two, then delete the destination's
//! document or run again with `--overwrite`
//! ([`CopyOptions::overwrite`]), which replaces it with the source's and
//! still lists it (`overwritten: true`). The look and the write are two
//! calls, not one transaction: a document someone writes into the
//! destination between them is replaced.
//!
//! # What is verified
//!
//! A document is read back from the destination and compared with the
//! source (`==` on JSON: a store may format it differently). An event log
//! is read back and compared by record count and the running hash of its
//! records. A mismatch stops the copy with the item named; the source is
//! never changed, and the next run resumes.

use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::path::PathBuf;

use serde::Serialize;
use storage_core::{
    DocKey, EventCursor, EventRecord, JobId, LockKey, LockWait, ReadMode, RepoKey, Storage,
    StorageExt,
};
use storage_fs::{FsStorage, fsx};

use crate::error::{Error, Result};
use crate::progress::{Progress, Step};

/// The schema of [`CopyReport`] as JSON. 2: `already_equal` and
/// `conflicts`; a copy with a conflict left is not complete, which a reader
/// of version 1 would not know to look for.
pub const COPY_REPORT_SCHEMA_VERSION: u32 = 2;

/// How many events are appended to the destination at once.
const BATCH: usize = 1000;

/// How many journal lines are written between two `fsync`s.
const SYNC_EVERY: usize = 256;

/// What [`copy_store`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct CopyReport {
    /// The JSON schema of this report.
    pub schema_version: u32,
    /// The source store's root.
    pub source: PathBuf,
    /// The destination, as the caller named it (a URL without its password).
    pub destination: String,
    /// Documents copied and verified by this run (overwritten ones included).
    pub documents: u64,
    /// Documents the destination already held, equal to the source's:
    /// verified and journalled, not written again.
    pub already_equal: u64,
    /// Event logs copied and verified by this run.
    pub event_logs: u64,
    /// Events appended by this run.
    pub events: u64,
    /// Items a previous run had copied and verified (skipped).
    pub already_done: u64,
    /// Documents that disappeared from the source while the copy ran (not copied).
    pub vanished: u64,
    /// Documents that could not be read as JSON (torn files) and event-log
    /// lines that are not JSON (interleaved writers): left in the source and
    /// not copied. A later run tries such documents again.
    pub skipped: Vec<SkippedItem>,
    /// Documents the destination already held with other content (or
    /// unreadable): left as they were and not copied, unless
    /// [`CopyOptions::overwrite`] replaced them. See the module docs.
    pub conflicts: Vec<CopyConflict>,
    /// The journal of this copy (in the source store).
    pub journal: PathBuf,
}

impl CopyReport {
    /// The conflicts left: destination documents that differ from the
    /// source's and were not overwritten. The copy is complete only when
    /// there are none.
    pub fn conflicts_left(&self) -> impl Iterator<Item = &CopyConflict> {
        self.conflicts.iter().filter(|c| !c.overwritten)
    }
}

/// A document the destination already held with other content than the
/// source's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CopyConflict {
    /// The document (its kind and key, as the journal names it).
    pub item: String,
    /// The source's file of it.
    pub path: PathBuf,
    /// How the destination's document differs.
    pub reason: String,
    /// Whether [`CopyOptions::overwrite`] replaced it with the source's
    /// (then it was copied and verified); else it was left as it was.
    pub overwritten: bool,
}

/// A source document or event-log line that was not copied, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SkippedItem {
    /// The item (its kind and key).
    pub item: String,
    /// The file in the source store.
    pub path: PathBuf,
    /// Why it could not be read, or why the destination refused it.
    pub reason: String,
}

/// Options for [`copy_store`].
#[derive(Clone, Copy)]
pub struct CopyOptions<'a> {
    /// Names the destination in the report and keys its journal: the same
    /// destination must get the same label (a URL without its password).
    pub destination: &'a str,
    /// Where progress goes.
    pub progress: &'a dyn Progress,
    /// Replace a destination document that differs from the source's
    /// instead of leaving it and reporting a conflict (it is still listed
    /// in [`CopyReport::conflicts`], as overwritten).
    pub overwrite: bool,
}

/// Copies every document and event log of `source` into `dest`; see the
/// module docs. Safe to run again after a kill: it resumes.
pub fn copy_store(
    source: &FsStorage,
    dest: &dyn Storage,
    opts: &CopyOptions<'_>,
) -> Result<CopyReport> {
    let lock_name = LockKey::new("copy-store").expect("a valid lock name");
    let _lock = source.lock_internal(&lock_name, LockWait::NoWait)?;
    let id = blake3::hash(opts.destination.as_bytes()).to_hex();
    let dir = source.layout().copy_store_dir(&id[..16]);
    fsx::create_dir_all(&dir)?;
    let journal = storage_fs::layout::copy_store_journal(&dir);
    let done = read_journal(&journal)?;
    let mut report = CopyReport {
        schema_version: COPY_REPORT_SCHEMA_VERSION,
        source: source.root().to_owned(),
        destination: opts.destination.to_owned(),
        journal: journal.clone(),
        ..CopyReport::default()
    };
    let mut out = Journal::open(&journal)?;

    opts.progress.start(Step::CopyStore, 0, 0);
    // The visitor speaks the store's error type; this copy's own refusals
    // are kept aside and returned once the walk has stopped.
    let mut failed: Option<Error> = None;
    let walked = source.for_each_document(&mut |entry| match copy_document(
        source,
        dest,
        &entry.key,
        &done,
        opts.overwrite,
        &mut out,
        &mut report,
    ) {
        Ok(()) => {
            opts.progress.advance(1, 0);
            Ok(())
        }
        Err(e) => {
            failed = Some(e);
            Err(storage_core::Error::io(
                "copy",
                source.root(),
                std::io::Error::other("stopped"),
            ))
        }
    });
    if let Some(e) = failed {
        return Err(e);
    }
    walked?;
    for repo in source.repos()? {
        for job in source.event_logs(&repo)? {
            let item = format!("log {repo}/{job}");
            if done.contains(&item) {
                report.already_done += 1;
                continue;
            }
            report.events += copy_log(source, dest, &repo, &job, &item, &mut report.skipped)?;
            out.done(&item)?;
            report.event_logs += 1;
            opts.progress.advance(1, 0);
        }
    }
    out.sync()?;
    opts.progress.finish(Step::CopyStore);
    Ok(report)
}

/// Copies one document unless the journal has it or the destination holds
/// it already (equal: journalled; different: a conflict, left unless
/// `overwrite`), then verifies it.
fn copy_document(
    source: &FsStorage,
    dest: &dyn Storage,
    key: &DocKey,
    done: &HashSet<String>,
    overwrite: bool,
    out: &mut Journal,
    report: &mut CopyReport,
) -> Result<()> {
    let item = format!("doc {key:?}");
    if done.contains(&item) {
        report.already_done += 1;
        return Ok(());
    }
    let value = match source.get(key) {
        Ok(Some(v)) => v,
        Ok(None) => {
            report.vanished += 1;
            return Ok(());
        }
        // A torn file (an older Prodigy wrote it non-atomically): it is
        // not JSON, so it cannot be a document anywhere else; it stays
        // in the source, and the report names it.
        Err(storage_core::Error::Corrupt { path, line, reason }) => {
            report.skipped.push(SkippedItem {
                item,
                path,
                reason: match line {
                    Some(l) => format!("line {l}: {reason}"),
                    None => reason,
                },
            });
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    let differs = match dest.get(key) {
        Ok(None) => None,
        Ok(Some(there)) if there == value => {
            // Copied before (by a run killed before it journalled it, or
            // by someone else): the same document, so nothing to write.
            out.done(&item)?;
            report.already_equal += 1;
            return Ok(());
        }
        Ok(Some(_)) => Some("the destination holds a different document at this key".to_owned()),
        // Unreadable in the destination: not the source's either, and
        // maybe someone's data a repair would recover; never replaced
        // silently.
        Err(storage_core::Error::Corrupt { path, line, reason }) => Some(format!(
            "the destination's document cannot be read as JSON (`{}`{}: {reason})",
            path.display(),
            line.map_or_else(String::new, |l| format!(" line {l}"))
        )),
        Err(e) => return Err(e.into()),
    };
    let source_path = || source.layout().document(key);
    if let Some(reason) = &differs
        && !overwrite
    {
        report.conflicts.push(CopyConflict {
            item,
            path: source_path(),
            reason: reason.clone(),
            overwritten: false,
        });
        return Ok(());
    }
    match dest.put(key, &value) {
        Ok(()) => {}
        // The destination refuses what it could not read back (nested too
        // deep): the document stays in the source, named, and the copy
        // goes on.
        Err(storage_core::Error::InvalidRecord(refused)) => {
            report.skipped.push(SkippedItem {
                item,
                path: source_path(),
                reason: format!("the destination refuses it: {refused}"),
            });
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    }
    match dest.get(key)? {
        Some(back) if back == value => {}
        Some(_) => return Err(mismatch(&item, "the destination returns other JSON")),
        None => return Err(mismatch(&item, "the destination does not return it")),
    }
    out.done(&item)?;
    report.documents += 1;
    if let Some(reason) = differs {
        report.conflicts.push(CopyConflict {
            item,
            path: source_path(),
            reason,
            overwritten: true,
        });
    }
    Ok(())
}

fn mismatch(item: &str, what: &str) -> Error {
    Error::Refused {
        action: "copy",
        path: PathBuf::from(item),
        reason: format!(
            "{what} after it was written; the source is unchanged. Look at the destination, \
             then run copy-store again: it resumes"
        ),
    }
}

/// The count and running hash of a log's records (each record's compact
/// JSON, then a newline, fed to one BLAKE3 hasher).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Digest {
    records: u64,
    hash: [u8; 32],
}

struct Running {
    records: u64,
    hasher: blake3::Hasher,
}

impl Running {
    fn new() -> Self {
        Self {
            records: 0,
            hasher: blake3::Hasher::new(),
        }
    }

    fn add(&mut self, e: &EventRecord) {
        let bytes = serde_json::to_vec(e.json()).expect("a JSON map always serializes");
        self.hasher.update(&bytes);
        self.hasher.update(b"\n");
        self.records += 1;
    }

    fn digest(&self) -> Digest {
        Digest {
            records: self.records,
            hash: *self.hasher.finalize().as_bytes(),
        }
    }
}

/// The digest of a log's records; read leniently, as the copy reads the
/// source (a corrupt line is not a record anywhere).
fn digest_of(store: &dyn Storage, repo: &RepoKey, job: &JobId) -> Result<Digest> {
    let mut r = Running::new();
    store.read_events_from(
        repo,
        job,
        &EventCursor::START,
        ReadMode::Lenient,
        &mut |e| {
            r.add(&e);
        },
    )?;
    Ok(r.digest())
}

/// Copies one log (only what the destination lacks), then verifies it;
/// returns how many events were appended. Lines of the source that are not
/// JSON (two writers of an older Prodigy interleaved) and torn lines (a
/// writer stopped mid-line, in the middle of a log or at its end) are
/// skipped, stay in the source, and are added to `skipped`.
fn copy_log(
    source: &FsStorage,
    dest: &dyn Storage,
    repo: &RepoKey,
    job: &JobId,
    item: &str,
    skipped: &mut Vec<SkippedItem>,
) -> Result<u64> {
    let have = digest_of(dest, repo, job)?;
    // The source's first `have.records` records must be what the
    // destination holds: then only the rest is appended.
    let mut prefix = Running::new();
    let mut batch: Vec<EventRecord> = Vec::with_capacity(BATCH);
    let mut appended = 0u64;
    let mut failed: Option<Error> = None;
    let mut checked_prefix = have.records == 0;
    let mut flush = |batch: &mut Vec<EventRecord>, failed: &mut Option<Error>| {
        if failed.is_none() && !batch.is_empty() {
            match dest.append_events(repo, job, batch) {
                Ok(()) => appended += batch.len() as u64,
                // An event the destination refuses (nested too deep, from
                // an older build): the error names the log, which the
                // store's own error cannot.
                Err(storage_core::Error::InvalidRecord(refused)) => {
                    *failed = Some(Error::Refused {
                        action: "copy",
                        path: PathBuf::from(item),
                        reason: format!(
                            "the destination refuses an event of this log: {refused}. Nothing \
                             of that batch was appended; the log cannot be copied while the \
                             source holds that event"
                        ),
                    });
                }
                Err(e) => *failed = Some(e.into()),
            }
        }
        batch.clear();
    };
    let mut not_prefix = false;
    let summary = source.read_events_from(
        repo,
        job,
        &EventCursor::START,
        ReadMode::Lenient,
        &mut |e| {
            if failed.is_some() || not_prefix {
                return;
            }
            if prefix.records < have.records {
                prefix.add(&e);
                if prefix.records == have.records {
                    if prefix.digest() == have {
                        checked_prefix = true;
                    } else {
                        not_prefix = true;
                    }
                }
                return;
            }
            batch.push(e);
            if batch.len() == BATCH {
                flush(&mut batch, &mut failed);
            }
        },
    )?;
    if !not_prefix && checked_prefix {
        flush(&mut batch, &mut failed);
    }
    if let Some(e) = failed {
        return Err(e);
    }
    let dir = source.layout().events_job_dir(repo, job);
    // A torn line (a writer killed mid-line, or two older writers
    // interleaved) is no record: not copied, and listed like a corrupt one.
    for t in &summary.torn_tails {
        skipped.push(SkippedItem {
            item: item.to_owned(),
            path: storage_fs::layout::log_file(&dir, &t.file),
            reason: format!(
                "line {}: a torn line of {} byte(s) (its writer stopped mid-line); not copied, \
                 left in the source",
                t.line, t.bytes
            ),
        });
    }
    for s in summary.skipped {
        skipped.push(SkippedItem {
            item: item.to_owned(),
            path: storage_fs::layout::log_file(&dir, &s.file),
            reason: match s.line {
                Some(l) => format!("line {l}: {}", s.reason),
                None => s.reason,
            },
        });
    }
    if not_prefix || !checked_prefix {
        return Err(Error::Refused {
            action: "copy",
            path: PathBuf::from(item),
            reason: format!(
                "the destination already has {} event(s) in this log that are not the start of \
                 the source's log; something else wrote them. Nothing was appended; move that \
                 log aside in the destination and run copy-store again",
                have.records
            ),
        });
    }
    let want = digest_of(source, repo, job)?;
    let got = digest_of(dest, repo, job)?;
    if want != got {
        return Err(mismatch(
            item,
            &format!(
                "the destination's log has {} record(s), the source's {} (or they differ)",
                got.records, want.records
            ),
        ));
    }
    Ok(appended)
}

/// The ids a previous run journalled (a torn last line is ignored: that
/// item is done again).
fn read_journal(path: &std::path::Path) -> Result<HashSet<String>> {
    let Some(bytes) = fsx::read_optional(path)? else {
        return Ok(HashSet::new());
    };
    let mut done = HashSet::new();
    for line in bytes.lines() {
        let line = line.map_err(|e| storage_core::Error::io("read", path, e))?;
        if let Ok(id) = serde_json::from_str::<String>(&line) {
            done.insert(id);
        }
    }
    Ok(done)
}

/// The journal, appended to and `fsync`ed every [`SYNC_EVERY`] lines.
struct Journal {
    file: std::fs::File,
    path: PathBuf,
    unsynced: usize,
}

impl Journal {
    fn open(path: &std::path::Path) -> Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let existed = path.exists();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(fsx::FILE_MODE)
            .open(path)
            .map_err(|e| storage_core::Error::io("open", path, e))?;
        if !existed {
            fsx::fsync_dir(fsx::parent(path))?;
        }
        Ok(Self {
            file,
            path: path.to_owned(),
            unsynced: 0,
        })
    }

    fn done(&mut self, item: &str) -> Result<()> {
        let mut line = serde_json::to_vec(item).expect("a string always serializes");
        line.push(b'\n');
        self.file
            .write_all(&line)
            .map_err(|e| storage_core::Error::io("append to", &self.path, e))?;
        self.unsynced += 1;
        if self.unsynced >= SYNC_EVERY {
            self.sync()?;
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        fsx::sync_file(&self.file, &self.path)?;
        self.unsynced = 0;
        Ok(())
    }
}

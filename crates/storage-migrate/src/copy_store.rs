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
//! - a document is `put` again (a replace: idempotent);
//! - an event log is not appended twice: the destination's log is read
//!   first, and if it is a prefix of the source's log (same records, in
//!   order: compared by count and a running BLAKE3 of each record), only
//!   the rest is appended. A destination log that is not a prefix of the
//!   source's is refused, naming it: it was written by something else.
//!
//! Memory holds the journal's ids, one scope's keys and one batch of
//! events (1,000), never a whole log.
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

/// The schema of [`CopyReport`] as JSON.
pub const COPY_REPORT_SCHEMA_VERSION: u32 = 1;

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
    /// Documents copied and verified by this run.
    pub documents: u64,
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
    /// The journal of this copy (in the source store).
    pub journal: PathBuf,
}

/// A source document that was not copied, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SkippedItem {
    /// The item (its kind and key).
    pub item: String,
    /// The file in the source store.
    pub path: PathBuf,
    /// Why it could not be read.
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

    opts.progress.start(Step::Copy, 0, 0);
    // The visitor speaks the store's error type; this copy's own refusals
    // are kept aside and returned once the walk has stopped.
    let mut failed: Option<Error> = None;
    let walked = source.for_each_document(&mut |entry| match copy_document(
        source,
        dest,
        &entry.key,
        &done,
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
    opts.progress.finish(Step::Copy);
    Ok(report)
}

/// Copies one document unless the journal has it, then verifies it.
fn copy_document(
    source: &FsStorage,
    dest: &dyn Storage,
    key: &DocKey,
    done: &HashSet<String>,
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
    dest.put(key, &value)?;
    match dest.get(key)? {
        Some(back) if back == value => {}
        Some(_) => return Err(mismatch(&item, "the destination returns other JSON")),
        None => return Err(mismatch(&item, "the destination does not return it")),
    }
    out.done(&item)?;
    report.documents += 1;
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
/// JSON (two writers of an older Prodigy interleaved) are skipped, stay in
/// the source, and are added to `skipped`.
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

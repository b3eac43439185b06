//! `copy_store`: a whole file store into another `Storage`, verified,
//! resumable after an interruption, the source untouched.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use storage_core::{
    DocKey, DocName, Entry, EventCursor, EventLogSummary, EventRecord, EventRetention, ExtKind,
    JobId, LockGuard, LockHolder, LockKey, LockWait, LogEntry, MemoryStorage, ReadMode, RepoKey,
    Result, RetentionReport, Scope, Storage, StorageExt,
};
use storage_fs::FsStorage;
use storage_migrate::{CopyOptions, NoProgress, copy_store};

fn event(job: &str, n: u64) -> EventRecord {
    EventRecord::from_json(json!({
        "id": format!("e{n}"), "timestamp": "2025-09-06T08:31:02.907114Z",
        "event": {"event_type": "agent_completed", "job_id": job, "n": n}
    }))
    .expect("object")
}

/// A store with every kind of document and two event logs.
fn source(dir: &std::path::Path) -> FsStorage {
    let s = FsStorage::open(dir).expect("open");
    let repo = RepoKey::new("api").expect("repo");
    let job = JobId::new("mapreduce-1").expect("job");
    let put = |k: DocKey, v: Value| s.put(&k, &v).expect("put");
    put(
        DocKey::UnifiedSession {
            session: "session-1".parse().expect("id"),
        },
        json!({"id": "session-1", "status": "Running"}),
    );
    put(
        DocKey::SessionCheckpoint {
            session: "session-1".parse().expect("id"),
        },
        json!({"step": 3}),
    );
    put(
        DocKey::SessionWorkflowCheckpoint {
            session: "session-1".parse().expect("id"),
            workflow: "wf-1".parse().expect("id"),
        },
        json!({"workflow_id": "wf-1"}),
    );
    put(
        DocKey::Session {
            repo: repo.clone(),
            session: "cook-7".parse().expect("id"),
        },
        json!({"session_id": "cook-7", "ünïcødé": [1, 2.5, null]}),
    );
    for v in 1..=3 {
        put(
            DocKey::JobCheckpoint {
                repo: repo.clone(),
                job: job.clone(),
                version: v,
            },
            json!({"job_id": "mapreduce-1", "checkpoint_version": v}),
        );
    }
    put(
        DocKey::JobMetadata {
            repo: repo.clone(),
            job: job.clone(),
        },
        json!({"version": 3}),
    );
    put(
        DocKey::DeadLetter {
            repo: repo.clone(),
            job: job.clone(),
            item: "item-1".parse().expect("id"),
        },
        json!({"item_id": "item-1"}),
    );
    put(
        DocKey::DeadLetterIndex {
            repo: repo.clone(),
            job: job.clone(),
        },
        json!({"item_count": 1}),
    );
    put(
        DocKey::Extension {
            repo: repo.clone(),
            kind: ExtKind::new("prodigy.reduce-checkpoint").expect("kind"),
            name: DocName::new("v1").expect("name"),
        },
        json!({"phase": "reduce"}),
    );
    let batch: Vec<EventRecord> = (0..2500).map(|n| event("mapreduce-1", n)).collect();
    s.append_events(&repo, &job, &batch).expect("append");
    let other = JobId::new("mapreduce-2").expect("job");
    s.append_events(&repo, &other, &[event("mapreduce-2", 0)])
        .expect("append");
    s
}

fn events(s: &dyn Storage, repo: &str, job: &str) -> Vec<EventRecord> {
    let mut out = Vec::new();
    s.read_events(
        &RepoKey::new(repo).expect("repo"),
        &JobId::new(job).expect("job"),
        &mut |e| out.push(e),
    )
    .expect("read");
    out
}

/// Every document and log of `a` is in `b`, equal.
fn assert_same(a: &FsStorage, b: &dyn Storage) {
    let stats = a.stats().expect("stats");
    assert_eq!(
        stats
            .iter()
            .map(|k| (k.repo.clone(), k.kind.clone(), k.count))
            .collect::<Vec<_>>(),
        b.stats()
            .expect("stats")
            .iter()
            .map(|k| (k.repo.clone(), k.kind.clone(), k.count))
            .collect::<Vec<_>>()
    );
    for (repo, job) in [("api", "mapreduce-1"), ("api", "mapreduce-2")] {
        assert_eq!(events(a, repo, job), events(b, repo, job), "{repo}/{job}");
    }
    let key = DocKey::Session {
        repo: RepoKey::new("api").expect("repo"),
        session: "cook-7".parse().expect("id"),
    };
    assert_eq!(a.get(&key).expect("get"), b.get(&key).expect("get"));
}

#[test]
fn a_store_is_copied_whole_verified_and_the_source_is_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = source(&dir.path().join("store"));
    let before = storage_tests::tree(&dir.path().join("store").join("state"));
    let dest = MemoryStorage::new();
    let opts = CopyOptions {
        destination: "memory",
        progress: &NoProgress,
        overwrite: false,
    };
    let r = copy_store(&src, &dest, &opts).expect("copy");
    assert_eq!(
        (r.documents, r.event_logs, r.events),
        (11, 2, 2501),
        "{r:?}"
    );
    assert_same(&src, &dest);
    assert_eq!(
        storage_tests::tree(&dir.path().join("store").join("state")),
        before,
        "the source is not changed"
    );
    // Again: everything is journalled as done, nothing is copied twice.
    let again = copy_store(&src, &dest, &opts).expect("again");
    assert_eq!(
        (again.documents, again.event_logs, again.already_done),
        (0, 0, 13)
    );
    assert_eq!(events(&dest, "api", "mapreduce-1").len(), 2500);
}

/// A destination that fails after a budget of writes (a kill, a lost connection).
struct Flaky<'a> {
    inner: &'a dyn Storage,
    budget: AtomicU64,
}

impl Flaky<'_> {
    fn spend(&self) -> Result<()> {
        if self
            .budget
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| b.checked_sub(1))
            .is_err()
        {
            return Err(storage_core::Error::io(
                "write to",
                "flaky",
                std::io::Error::other("injected"),
            ));
        }
        Ok(())
    }
}

impl Storage for Flaky<'_> {
    fn put(&self, key: &DocKey, doc: &Value) -> Result<()> {
        self.spend()?;
        self.inner.put(key, doc)
    }
    fn get(&self, key: &DocKey) -> Result<Option<Value>> {
        self.inner.get(key)
    }
    fn delete(&self, key: &DocKey) -> Result<bool> {
        self.inner.delete(key)
    }
    fn list(&self, scope: &Scope) -> Result<Vec<DocKey>> {
        self.inner.list(scope)
    }
    fn list_entries(&self, scope: &Scope) -> Result<Vec<Entry>> {
        self.inner.list_entries(scope)
    }
    fn entry(&self, key: &DocKey) -> Result<Option<Entry>> {
        self.inner.entry(key)
    }
    fn repos(&self) -> Result<Vec<RepoKey>> {
        self.inner.repos()
    }
    fn jobs(&self, repo: &RepoKey) -> Result<Vec<JobId>> {
        self.inner.jobs(repo)
    }
    fn jobs_with_dead_letters(&self, repo: &RepoKey) -> Result<Vec<JobId>> {
        self.inner.jobs_with_dead_letters(repo)
    }
    fn extension_kinds(&self, repo: &RepoKey) -> Result<Vec<ExtKind>> {
        self.inner.extension_kinds(repo)
    }
    fn append_events(&self, repo: &RepoKey, job: &JobId, events: &[EventRecord]) -> Result<()> {
        self.spend()?;
        self.inner.append_events(repo, job, events)
    }
    fn read_events_from(
        &self,
        repo: &RepoKey,
        job: &JobId,
        from: &EventCursor,
        mode: ReadMode,
        visit: &mut dyn FnMut(EventRecord),
    ) -> Result<EventLogSummary> {
        self.inner.read_events_from(repo, job, from, mode, visit)
    }
    fn wait_for_events(
        &self,
        repo: &RepoKey,
        job: &JobId,
        after: &EventCursor,
        timeout: Duration,
    ) -> Result<bool> {
        self.inner.wait_for_events(repo, job, after, timeout)
    }
    fn event_logs(&self, repo: &RepoKey) -> Result<Vec<JobId>> {
        self.inner.event_logs(repo)
    }
    fn event_log_entry(&self, repo: &RepoKey, job: &JobId) -> Result<Option<LogEntry>> {
        self.inner.event_log_entry(repo, job)
    }
    fn delete_event_log(&self, repo: &RepoKey, job: &JobId) -> Result<bool> {
        self.inner.delete_event_log(repo, job)
    }
    fn retain_events(
        &self,
        repo: &RepoKey,
        job: &JobId,
        policy: &EventRetention,
    ) -> Result<RetentionReport> {
        self.inner.retain_events(repo, job, policy)
    }
    fn lock(&self, key: &LockKey, holder: &LockHolder, wait: LockWait) -> Result<LockGuard> {
        self.inner.lock(key, holder, wait)
    }
}

#[test]
fn an_interrupted_copy_resumes_without_duplicating_events() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = source(&dir.path().join("store"));
    let real = FsStorage::open(dir.path().join("dest")).expect("dest");
    let opts = CopyOptions {
        destination: "file:dest",
        progress: &NoProgress,
        overwrite: false,
    };
    // Each run may write `budget` times, then fails (as a kill would stop
    // it). 11 documents, then the 2,500-event log in 3 batches of 1,000,
    // then a 1-event log: run 3 stops after the log's first batch, run 4
    // after its second, so runs 4 and 5 find a destination log that is a
    // prefix of the source's and append only the rest.
    let mut outcomes = Vec::new();
    for budget in [0u64, 3, 9, 1, 1, 1] {
        let flaky = Flaky {
            inner: &real,
            budget: AtomicU64::new(budget),
        };
        outcomes.push(copy_store(&src, &flaky, &opts).map(|r| (r.documents, r.events)));
    }
    let done: Vec<bool> = outcomes.iter().map(Result::is_ok).collect();
    assert_eq!(
        done,
        [false, false, false, false, false, true],
        "{outcomes:?}"
    );
    assert_eq!(
        events(&real, "api", "mapreduce-1").len(),
        2500,
        "no event twice"
    );
    let r = copy_store(&src, &real, &opts).expect("a last run finds it all done");
    assert_eq!(
        (r.documents, r.event_logs, r.already_done),
        (0, 0, 13),
        "{r:?}"
    );
    assert_same(&src, &real);
}

#[test]
fn a_destination_log_that_is_not_the_source_s_start_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = source(&dir.path().join("store"));
    let dest = MemoryStorage::new();
    let repo = RepoKey::new("api").expect("repo");
    dest.append_events(
        &repo,
        &JobId::new("mapreduce-1").expect("job"),
        &[event("someone-else", 99)],
    )
    .expect("append");
    let opts = CopyOptions {
        destination: "memory",
        progress: &NoProgress,
        overwrite: false,
    };
    let err = copy_store(&src, &dest, &opts).expect_err("refused");
    let text = err.to_string();
    assert!(text.contains("not the start of the source's log"), "{text}");
    assert_eq!(
        events(&dest, "api", "mapreduce-1").len(),
        1,
        "nothing appended"
    );
}

fn cook_7() -> DocKey {
    DocKey::Session {
        repo: RepoKey::new("api").expect("repo"),
        session: "cook-7".parse().expect("id"),
    }
}

fn unified_1() -> DocKey {
    DocKey::UnifiedSession {
        session: "session-1".parse().expect("id"),
    }
}

#[test]
fn a_destination_document_that_differs_is_left_as_it_is_and_reported_and_the_rest_copied() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = source(&dir.path().join("store"));
    let dest = FsStorage::open(dir.path().join("dest")).expect("dest");
    // A teammate's session at a key the source has too, one document equal
    // to the source's, and one the destination cannot read.
    let theirs = json!({"session_id": "cook-7", "owner": "teammate", "status": "Running"});
    dest.put(&cook_7(), &theirs).expect("put");
    dest.put(
        &unified_1(),
        &src.get(&unified_1()).expect("get").expect("doc"),
    )
    .expect("put");
    let checkpoint = DocKey::SessionCheckpoint {
        session: "session-1".parse().expect("id"),
    };
    dest.put(&checkpoint, &json!({})).expect("put");
    let torn = dest.layout().document(&checkpoint);
    std::fs::write(&torn, "{\"step\": 3, \"tor").expect("write");
    let theirs_bytes = std::fs::read(dest.layout().document(&cook_7())).expect("read");

    let opts = CopyOptions {
        destination: "file:dest",
        progress: &NoProgress,
        overwrite: false,
    };
    let r = copy_store(&src, &dest, &opts).expect("the copy goes on past a conflict");
    assert_eq!(
        (r.documents, r.already_equal, r.event_logs, r.events),
        (8, 1, 2, 2501),
        "{r:?}"
    );
    let items: Vec<(&str, bool)> = r
        .conflicts
        .iter()
        .map(|c| (c.item.as_str(), c.overwritten))
        .collect();
    assert_eq!(
        items,
        [
            (
                "doc SessionCheckpoint { session: SessionId(\"session-1\") }",
                false
            ),
            (
                "doc Session { repo: RepoKey(\"api\"), session: SessionId(\"cook-7\") }",
                false
            ),
        ],
        "{r:?}"
    );
    assert!(
        r.conflicts[0].reason.contains("cannot be read as JSON"),
        "{r:?}"
    );
    assert!(
        r.conflicts[1].reason.contains("different document"),
        "{r:?}"
    );
    assert_eq!(r.conflicts[1].path, src.layout().document(&cook_7()));
    assert_eq!(r.conflicts_left().count(), 2);
    assert_eq!(
        std::fs::read(dest.layout().document(&cook_7())).expect("read"),
        theirs_bytes,
        "the teammate's document is unchanged, byte for byte"
    );
    assert_eq!(std::fs::read(&torn).expect("read"), b"{\"step\": 3, \"tor");
    assert_eq!(events(&dest, "api", "mapreduce-1").len(), 2500);

    // Not journalled: the next run looks at them again, and only at them.
    let again = copy_store(&src, &dest, &opts).expect("again");
    assert_eq!(
        (again.documents, again.already_done, again.conflicts.len()),
        (0, 11, 2),
        "{again:?}"
    );

    // Told to, it replaces them, and says so; then the copy is whole.
    let overwrite = CopyOptions {
        overwrite: true,
        ..opts
    };
    let r = copy_store(&src, &dest, &overwrite).expect("overwrite");
    assert_eq!((r.documents, r.conflicts.len()), (2, 2), "{r:?}");
    assert!(r.conflicts.iter().all(|c| c.overwritten), "{r:?}");
    assert_eq!(r.conflicts_left().count(), 0);
    assert_same(&src, &dest);
    let last = copy_store(&src, &dest, &opts).expect("last");
    assert_eq!(
        (last.already_done, last.conflicts.len()),
        (13, 0),
        "{last:?}"
    );
}

#[test]
fn a_copy_resumed_after_its_journal_was_lost_finds_its_own_documents_equal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = source(&dir.path().join("store"));
    let dest = FsStorage::open(dir.path().join("dest")).expect("dest");
    let opts = CopyOptions {
        destination: "file:dest",
        progress: &NoProgress,
        overwrite: false,
    };
    let first = copy_store(&src, &dest, &opts).expect("copy");
    // As if every item had been written but none journalled when the copy
    // was killed: each is in the destination, equal, and no conflict.
    std::fs::remove_file(&first.journal).expect("remove the journal");
    let r = copy_store(&src, &dest, &opts).expect("resume");
    assert_eq!(
        (r.documents, r.already_equal, r.event_logs, r.events),
        (0, 11, 2, 0),
        "{r:?}"
    );
    assert!(r.conflicts.is_empty(), "{r:?}");
    assert_same(&src, &dest);
    assert_eq!(
        events(&dest, "api", "mapreduce-1").len(),
        2500,
        "no event twice"
    );
}

#[test]
fn a_source_document_the_destination_refuses_as_too_deep_is_skipped_and_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = source(&dir.path().join("store"));
    // Readable (under serde_json's 128) but over the stores' limit: an
    // older build wrote it.
    let levels = storage_core::MAX_JSON_DEPTH + 10;
    let deep = format!(
        "{{\"session_id\": \"cook-7\", \"deep\": {}1{}}}",
        "[".repeat(levels - 1),
        "]".repeat(levels - 1)
    );
    std::fs::write(src.layout().document(&cook_7()), deep).expect("write");
    let dest = MemoryStorage::new();
    let opts = CopyOptions {
        destination: "memory",
        progress: &NoProgress,
        overwrite: false,
    };
    let r = copy_store(&src, &dest, &opts).expect("the copy goes on");
    assert_eq!((r.documents, r.event_logs), (10, 2), "{r:?}");
    assert_eq!(r.skipped.len(), 1, "{r:?}");
    assert_eq!(r.skipped[0].path, src.layout().document(&cook_7()));
    assert!(
        r.skipped[0]
            .reason
            .contains("the destination refuses it: a document is nested 110 levels deep"),
        "{r:?}"
    );
    assert_eq!(dest.get(&cook_7()).expect("get"), None);
}

#[test]
fn a_source_event_the_destination_refuses_as_too_deep_stops_the_copy_naming_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = source(&dir.path().join("store"));
    let (repo, job) = (
        RepoKey::new("api").expect("repo"),
        JobId::new("mapreduce-2").expect("job"),
    );
    let levels = storage_core::MAX_JSON_DEPTH + 10;
    let line = format!(
        "{{\"id\": \"deep\", \"deep\": {}1{}}}\n",
        "[".repeat(levels - 1),
        "]".repeat(levels - 1)
    );
    storage_fs::events::append_lines(&src.layout().active_event_log(&repo, &job), line.as_bytes())
        .expect("an older build's line");
    let dest = MemoryStorage::new();
    let opts = CopyOptions {
        destination: "memory",
        progress: &NoProgress,
        overwrite: false,
    };
    let err = copy_store(&src, &dest, &opts).expect_err("refused");
    let text = err.to_string();
    assert!(
        text.contains("log api/mapreduce-2") && text.contains("nested 110 levels deep"),
        "{text}"
    );
    assert_eq!(
        events(&dest, "api", "mapreduce-1").len(),
        2500,
        "the other log was copied"
    );
}

/// Issue 21, item 17: a torn line in the middle of a source log (an older
/// writer stopped mid-line, then the log went on in the next file) is not
/// copied, and is listed as skipped; it used to vanish from the report.
#[test]
fn a_torn_line_in_the_middle_of_a_log_is_listed_not_dropped_silently() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = source(&dir.path().join("store"));
    let (repo, job) = (
        RepoKey::new("api").expect("repo"),
        JobId::new("mapreduce-9").expect("job"),
    );
    let log_dir = src.layout().events_job_dir(&repo, &job);
    std::fs::create_dir_all(&log_dir).expect("mkdir");
    let line = |n: u64| {
        format!(
            "{}\n",
            Value::Object(event("mapreduce-9", n).json().clone())
        )
    };
    // Prodigy's rotated file ends mid-line; the log goes on after it.
    std::fs::write(
        log_dir.join("events-20250906_082000.jsonl"),
        format!("{}{{\"id\":\"e1\",\"torn", line(0)),
    )
    .expect("write");
    std::fs::write(log_dir.join("events-20250906_083000.jsonl"), line(2)).expect("write");
    let dest = MemoryStorage::new();
    let opts = CopyOptions {
        destination: "memory",
        progress: &NoProgress,
        overwrite: false,
    };
    let r = copy_store(&src, &dest, &opts).expect("copy");
    let ns: Vec<u64> = events(&dest, "api", "mapreduce-9")
        .iter()
        .map(|e| e.json()["event"]["n"].as_u64().expect("n"))
        .collect();
    assert_eq!(ns, [0, 2], "the whole records");
    let torn: Vec<_> = r
        .skipped
        .iter()
        .filter(|s| s.reason.contains("torn line"))
        .collect();
    assert_eq!(torn.len(), 1, "{r:?}");
    assert_eq!(torn[0].path, log_dir.join("events-20250906_082000.jsonl"));
    assert!(torn[0].reason.starts_with("line 2:"), "{}", torn[0].reason);
}

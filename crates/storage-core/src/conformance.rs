//! Checks every [`Storage`] implementation must pass.
//!
//! Each check is a plain function over `&dyn Storage` that panics on failure,
//! and [`storage_conformance_tests!`](crate::storage_conformance_tests)
//! turns all of them into `#[test]` functions:
//!
//! ```ignore
//! storage_core::storage_conformance_tests!(|check| {
//!     let dir = tempfile::tempdir().unwrap();
//!     check(&FsStorage::open(dir.path()).unwrap());
//! });
//! ```

use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;

use crate::depth::MAX_JSON_DEPTH;
use crate::error::Error;
use crate::ext::StorageExt;
use crate::id::{DocName, ExtKind, ItemId, JobId, LockKey, RepoKey, SessionId, WorkflowId};
use crate::record::{
    DeadLetterItem, EventRecord, JobCheckpoint, LockHolder, RecordError, SessionJobMapping,
    SessionRecord, UnifiedSession, WorkflowCheckpoint,
};
use crate::storage::{
    Appended, DocKey, EventCursor, EventRetention, Fence, LockWait, ReadMode, Retention, Scope,
    Storage,
};

/// Generates one `#[test]` per conformance check; `$with` is called with each
/// check and must run it against a fresh, empty store.
#[macro_export]
macro_rules! storage_conformance_tests {
    ($with:expr) => {
        $crate::storage_conformance_tests!(@each $with;
            documents_round_trip_unknown_fields,
            put_replaces_the_whole_document,
            missing_documents_are_none_and_delete_reports_presence,
            listings_are_sorted_and_scoped,
            jobs_lists_jobs_with_state,
            typed_records_round_trip,
            a_session_filed_under_another_id_is_refused,
            events_stream_in_append_order_per_job,
            an_empty_append_creates_no_log,
            locks_are_exclusive_until_dropped,
            a_waiting_locker_gets_the_lock_when_it_is_freed,
            a_timed_out_locker_names_the_holder,
            unified_sessions_are_global_and_keyed_by_id,
            workflow_checkpoints_are_scoped_by_session,
            deleting_a_job_removes_its_state_and_emptied_listings,
            dead_letters_are_listed_by_job_and_deleted,
            entries_carry_size_and_modification_time,
            a_cursor_continues_where_a_read_stopped,
            a_waiting_follower_is_woken_by_an_append,
            tail_returns_the_last_records,
            retention_trims_a_log_from_its_start,
            retention_by_age_keeps_recent_and_undated_events,
            a_deleted_event_log_is_gone_and_can_begin_again,
            extension_kinds_need_no_new_release,
            statistics_cover_every_kind,
            prune_keeps_the_newest_documents,
            a_session_is_found_by_its_job,
            a_scan_visits_what_a_listing_lists,
            compare_and_append_stores_a_retried_batch_once,
            the_log_end_is_where_a_read_to_the_end_stops,
            a_cursor_of_a_deleted_log_never_skips_its_successor,
            a_cursor_is_carried_over_retention_without_a_skip,
            a_cursor_past_the_end_restarts_and_says_so,
            json_nested_deeper_than_the_limit_is_refused_at_write,
            a_stale_holders_fenced_writes_are_refused,
        );
    };
    (@each $with:expr; $($check:ident),+ $(,)?) => {
        $(
            #[test]
            fn $check() {
                let with: &dyn Fn(&dyn Fn(&dyn $crate::Storage)) = &$with;
                with(&$crate::conformance::$check);
            }
        )+
    };
}

fn repo(s: &str) -> RepoKey {
    RepoKey::new(s).expect("valid test repo")
}
fn job(s: &str) -> JobId {
    JobId::new(s).expect("valid test job")
}
fn session(s: &str) -> SessionId {
    SessionId::new(s).expect("valid test session")
}
fn holder(pid: u32) -> LockHolder {
    LockHolder {
        job_id: "mapreduce-1".into(),
        process_id: pid,
        hostname: "test-host".into(),
        acquired_at: "2025-09-06T08:31:02.907114Z".into(),
    }
}
fn session_key(r: &str, s: &str) -> DocKey {
    DocKey::Session {
        repo: repo(r),
        session: session(s),
    }
}
fn event(job_id: &str, n: u64) -> EventRecord {
    EventRecord::from_json(json!({
        "id": format!("e{n}"),
        "timestamp": "2025-09-06T08:31:02.907114Z",
        "event": {"event_type": "agent_completed", "job_id": job_id, "n": n},
        "metadata": {"host": "h", "pid": 1}
    }))
    .expect("object")
}

/// `get` returns what `put` stored, unknown fields included.
pub fn documents_round_trip_unknown_fields(s: &dyn Storage) {
    let doc = json!({
        "session_id": "session-1",
        "zeta": 1,
        "alpha": {"unknown": [true, null, 1.5, "ünïcødé"]},
        "iteration_timings": [[1, {"secs": 3, "nanos": 5}]]
    });
    let key = session_key("proj", "session-1");
    s.put(&key, &doc).expect("put");
    let back = s.get(&key).expect("get").expect("present");
    assert_eq!(back, doc);
}

/// A second `put` replaces the first document entirely.
pub fn put_replaces_the_whole_document(s: &dyn Storage) {
    let key = session_key("proj", "session-1");
    s.put(
        &key,
        &json!({"session_id": "session-1", "old": "x".repeat(10_000)}),
    )
    .expect("put");
    s.put(&key, &json!({"session_id": "session-1", "new": 1}))
        .expect("put");
    assert_eq!(
        s.get(&key).expect("get"),
        Some(json!({"session_id": "session-1", "new": 1}))
    );
}

/// Absent documents are `None`; `delete` says whether there was one.
pub fn missing_documents_are_none_and_delete_reports_presence(s: &dyn Storage) {
    let key = DocKey::WorkflowCheckpoint {
        repo: repo("proj"),
        workflow: WorkflowId::new("workflow-1").expect("valid"),
    };
    assert_eq!(s.get(&key).expect("get"), None);
    assert!(!s.delete(&key).expect("delete absent"));
    s.put(&key, &json!({"workflow_id": "workflow-1"}))
        .expect("put");
    assert!(s.delete(&key).expect("delete present"));
    assert_eq!(s.get(&key).expect("get"), None);
    assert!(
        s.list(&Scope::WorkflowCheckpoints(repo("proj")))
            .expect("list")
            .is_empty()
    );
}

/// Listings are sorted, stable and limited to their scope.
pub fn listings_are_sorted_and_scoped(s: &dyn Storage) {
    for id in ["session-c", "session-a", "cook-7", "session-b"] {
        s.put(&session_key("proj", id), &json!({"session_id": id}))
            .expect("put");
    }
    s.put(
        &session_key("other", "session-z"),
        &json!({"session_id": "session-z"}),
    )
    .expect("put");
    for v in [10, 2, 1] {
        let key = DocKey::JobCheckpoint {
            repo: repo("proj"),
            job: job("mapreduce-1"),
            version: v,
        };
        s.put(
            &key,
            &json!({"job_id": "mapreduce-1", "checkpoint_version": v}),
        )
        .expect("put");
    }
    for item in ["item_2", "item_10", "item_1"] {
        let key = DocKey::DeadLetter {
            repo: repo("proj"),
            job: job("mapreduce-1"),
            item: ItemId::new(item).expect("valid"),
        };
        s.put(&key, &json!({"item_id": item})).expect("put");
    }
    let sessions = s.list(&Scope::Sessions(repo("proj"))).expect("list");
    let names: Vec<String> = sessions
        .iter()
        .map(|k| match k {
            DocKey::Session { session, .. } => session.to_string(),
            other => panic!("unexpected key {other:?}"),
        })
        .collect();
    assert_eq!(names, ["cook-7", "session-a", "session-b", "session-c"]);
    assert_eq!(
        sessions,
        s.list(&Scope::Sessions(repo("proj"))).expect("list again")
    );

    let versions: Vec<u64> = s
        .list(&Scope::JobCheckpoints(repo("proj"), job("mapreduce-1")))
        .expect("list")
        .iter()
        .map(|k| match k {
            DocKey::JobCheckpoint { version, .. } => *version,
            other => panic!("unexpected key {other:?}"),
        })
        .collect();
    assert_eq!(versions, [1, 2, 10], "versions sort numerically");

    let items: Vec<String> = s
        .list(&Scope::DeadLetters(repo("proj"), job("mapreduce-1")))
        .expect("list")
        .iter()
        .map(|k| match k {
            DocKey::DeadLetter { item, .. } => item.to_string(),
            other => panic!("unexpected key {other:?}"),
        })
        .collect();
    assert_eq!(items, ["item_1", "item_10", "item_2"]);
    assert!(
        s.list(&Scope::DeadLetters(repo("proj"), job("mapreduce-2")))
            .expect("list")
            .is_empty()
    );
}

/// `jobs` lists the jobs that have checkpoints or metadata, sorted.
pub fn jobs_lists_jobs_with_state(s: &dyn Storage) {
    assert!(s.jobs(&repo("proj")).expect("jobs").is_empty());
    s.put(
        &DocKey::JobMetadata {
            repo: repo("proj"),
            job: job("mapreduce-2"),
        },
        &json!({"version": 1}),
    )
    .expect("put");
    s.put(
        &DocKey::JobCheckpoint {
            repo: repo("proj"),
            job: job("mapreduce-1"),
            version: 1,
        },
        &json!({"job_id": "mapreduce-1"}),
    )
    .expect("put");
    assert_eq!(
        s.jobs(&repo("proj")).expect("jobs"),
        [job("mapreduce-1"), job("mapreduce-2")]
    );
    assert!(s.jobs(&repo("other")).expect("jobs").is_empty());
}

/// Every typed record survives a save/load round trip through `StorageExt`.
pub fn typed_records_round_trip(s: &dyn Storage) {
    let r = repo("proj");
    let sess = SessionRecord::from_json(json!({
        "session_id": "session-1", "status": "Completed", "legacy_only": 1
    }))
    .expect("valid");
    s.save_session(&r, &sess).expect("save");
    assert_eq!(
        s.load_session(&r, &session("session-1")).expect("load"),
        Some(sess)
    );

    let cp1 = JobCheckpoint::from_json(json!({"job_id": "mapreduce-1", "checkpoint_version": 1}))
        .expect("valid");
    let cp2 = JobCheckpoint::from_json(json!({"job_id": "mapreduce-1", "checkpoint_version": 2}))
        .expect("valid");
    s.save_job_checkpoint(&r, 2, &cp2).expect("save");
    s.save_job_checkpoint(&r, 1, &cp1).expect("save");
    assert_eq!(
        s.latest_job_checkpoint(&r, &job("mapreduce-1"))
            .expect("load"),
        Some((2, cp2))
    );

    let wf = WorkflowCheckpoint::from_json(json!({"workflow_id": "workflow-1", "version": 1}))
        .expect("valid");
    s.save_workflow_checkpoint(&r, &wf).expect("save");
    let wid = WorkflowId::new("workflow-1").expect("valid");
    assert_eq!(
        s.load_workflow_checkpoint(&r, &wid).expect("load"),
        Some(wf)
    );

    let item =
        DeadLetterItem::from_json(json!({"item_id": "item_1", "failure_count": 3})).expect("valid");
    s.save_dead_letter(&r, &job("mapreduce-1"), &item)
        .expect("save");
    assert_eq!(
        s.dead_letters(&r, &job("mapreduce-1")).expect("load"),
        [item]
    );

    let map =
        SessionJobMapping::from_json(json!({"session_id": "session-1", "job_id": "mapreduce-1"}))
            .expect("valid");
    s.save_session_job(&r, &map).expect("save");
    let back = s
        .load_session_job(&r, &session("session-1"))
        .expect("load")
        .expect("present");
    assert_eq!(back.job_id(), Some(job("mapreduce-1")));
}

/// A session document whose `session_id` differs from its key is refused on load.
pub fn a_session_filed_under_another_id_is_refused(s: &dyn Storage) {
    s.put(
        &session_key("proj", "session-1"),
        &json!({"session_id": "session-2"}),
    )
    .expect("put");
    let err = s
        .load_session(&repo("proj"), &session("session-1"))
        .expect_err("mismatch");
    assert!(matches!(err, Error::KeyMismatch { .. }), "{err:?}");
}

/// Events come back in append order, separately per job.
pub fn events_stream_in_append_order_per_job(s: &dyn Storage) {
    let r = repo("proj");
    let (a, b) = (job("mapreduce-1"), job("mapreduce-2"));
    let batch: Vec<EventRecord> = (0..50).map(|n| event("mapreduce-1", n)).collect();
    s.append_events(&r, &a, &batch[..20]).expect("append");
    s.append_events(&r, &b, &[event("mapreduce-2", 0)])
        .expect("append");
    s.append_events(&r, &a, &batch[20..]).expect("append");
    let mut seen = Vec::new();
    let summary = s.read_events(&r, &a, &mut |e| seen.push(e)).expect("read");
    assert_eq!(summary.records, 50);
    assert!(summary.torn_tails.is_empty());
    assert_eq!(seen, batch);
    assert_eq!(s.event_logs(&r).expect("logs"), [a, b]);
    let mut none = 0;
    let summary = s
        .read_events(&r, &job("mapreduce-9"), &mut |_| none += 1)
        .expect("reading an absent log is empty");
    assert_eq!((summary.records, none), (0, 0));
}

/// Appending nothing does not create a log.
pub fn an_empty_append_creates_no_log(s: &dyn Storage) {
    s.append_events(&repo("proj"), &job("mapreduce-1"), &[])
        .expect("append");
    assert!(s.event_logs(&repo("proj")).expect("logs").is_empty());
}

/// A held lock refuses a second locker; dropping the guard frees it.
pub fn locks_are_exclusive_until_dropped(s: &dyn Storage) {
    let key = LockKey::new("mapreduce-1").expect("valid");
    let g = s.lock(&key, &holder(1), LockWait::NoWait).expect("first");
    assert_eq!(g.key(), &key);
    let err = s
        .lock(&key, &holder(2), LockWait::NoWait)
        .expect_err("held");
    assert!(matches!(err, Error::Locked { .. }), "{err:?}");
    let other = LockKey::new("mapreduce-2").expect("valid");
    drop(
        s.lock(&other, &holder(3), LockWait::NoWait)
            .expect("other keys are independent"),
    );
    g.release();
    drop(
        s.lock(&key, &holder(2), LockWait::NoWait)
            .expect("released"),
    );
}

/// A caller waiting with a timeout gets the lock once the holder lets go.
pub fn a_waiting_locker_gets_the_lock_when_it_is_freed(s: &dyn Storage) {
    let key = LockKey::new("session-1").expect("valid");
    let g = s.lock(&key, &holder(1), LockWait::NoWait).expect("first");
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let start = Instant::now();
            let got = s.lock(&key, &holder(2), LockWait::Timeout(Duration::from_secs(20)));
            tx.send((got.is_ok(), start.elapsed())).expect("send");
        });
        std::thread::sleep(Duration::from_millis(150));
        g.release();
        let (ok, waited) = rx.recv().expect("recv");
        assert!(ok, "the waiter got the lock");
        assert!(
            waited >= Duration::from_millis(100),
            "it waited: {waited:?}"
        );
    });
}

/// A caller that times out gets `Locked` with the holder's self-description.
pub fn a_timed_out_locker_names_the_holder(s: &dyn Storage) {
    let key = LockKey::new("session-1").expect("valid");
    let _g = s.lock(&key, &holder(41), LockWait::NoWait).expect("first");
    let err = s
        .lock(
            &key,
            &holder(2),
            LockWait::Timeout(Duration::from_millis(100)),
        )
        .expect_err("held");
    match err {
        Error::Locked {
            holder: Some(h),
            waited: Some(w),
            ..
        } => {
            assert_eq!(h.process_id, 41);
            assert!(w >= Duration::from_millis(100));
        }
        other => panic!("expected Locked with holder and wait, got {other:?}"),
    }
}

fn read_all(
    s: &dyn Storage,
    r: &RepoKey,
    j: &JobId,
    from: &EventCursor,
) -> (Vec<u64>, EventCursor) {
    let mut ns = Vec::new();
    let summary = s
        .read_events_from(r, j, from, ReadMode::Strict, &mut |e| {
            ns.push(e.json()["event"]["n"].as_u64().expect("n"));
        })
        .expect("read");
    (ns, summary.next)
}

/// Like [`read_all`], with whether the read restarted.
fn read_all_restarted(
    s: &dyn Storage,
    r: &RepoKey,
    j: &JobId,
    from: &EventCursor,
) -> (Vec<u64>, EventCursor, bool) {
    let mut ns = Vec::new();
    let summary = s
        .read_events_from(r, j, from, ReadMode::Strict, &mut |e| {
            ns.push(e.json()["event"]["n"].as_u64().expect("n"));
        })
        .expect("read");
    (ns, summary.next, summary.restarted)
}

fn unified(id: &str, status: &str) -> UnifiedSession {
    UnifiedSession::from_json(json!({
        "id": id, "session_type": "Workflow", "status": status,
        "started_at": "2025-09-06T08:31:02.907114Z", "workflow_data": {"step": 2}
    }))
    .expect("valid")
}

/// Unified sessions live outside every repository and load by id alone.
pub fn unified_sessions_are_global_and_keyed_by_id(s: &dyn Storage) {
    let (a, b) = (
        unified("session-b", "Running"),
        unified("session-a", "Completed"),
    );
    s.save_unified_session(&a).expect("save");
    s.save_unified_session(&b).expect("save");
    assert_eq!(
        s.load_unified_session(&session("session-b")).expect("load"),
        Some(a.clone())
    );
    let (all, skipped) = s.unified_sessions().expect("list");
    assert_eq!(all, [b.clone(), a.clone()], "sorted by id");
    assert!(skipped.is_empty());
    assert!(
        s.repos().expect("repos").is_empty(),
        "no repository owns them"
    );

    // One filed under another id is skipped by the listing and refused by a load.
    s.put(
        &DocKey::UnifiedSession {
            session: session("session-c"),
        },
        &json!({"id": "session-x"}),
    )
    .expect("put");
    let (all, skipped) = s.unified_sessions().expect("list");
    assert_eq!(all.len(), 2);
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert!(matches!(
        s.load_unified_session(&session("session-c")),
        Err(Error::KeyMismatch { .. })
    ));

    // Deleting a session takes its checkpoints with it.
    let wf = WorkflowCheckpoint::from_json(json!({"workflow_id": "wf-1"})).expect("valid");
    s.save_session_workflow_checkpoint(&session("session-b"), &wf)
        .expect("save");
    s.put(
        &DocKey::SessionCheckpoint {
            session: session("session-b"),
        },
        &json!({"step": 3}),
    )
    .expect("put");
    assert!(
        s.delete_unified_session(&session("session-b"))
            .expect("delete")
    );
    assert_eq!(
        s.load_unified_session(&session("session-b")).expect("load"),
        None
    );
    assert!(
        s.list(&Scope::SessionWorkflowCheckpoints(session("session-b")))
            .expect("list")
            .is_empty()
    );
    assert_eq!(
        s.get(&DocKey::SessionCheckpoint {
            session: session("session-b")
        })
        .expect("get"),
        None
    );
    assert!(
        !s.delete_unified_session(&session("session-b"))
            .expect("again")
    );
}

/// A workflow checkpoint saved for a session is found by that session only.
pub fn workflow_checkpoints_are_scoped_by_session(s: &dyn Storage) {
    let wf =
        WorkflowCheckpoint::from_json(json!({"workflow_id": "wf-1", "step": 1})).expect("valid");
    let wid = WorkflowId::new("wf-1").expect("valid");
    s.save_session_workflow_checkpoint(&session("session-1"), &wf)
        .expect("save");
    assert_eq!(
        s.load_session_workflow_checkpoint(&session("session-1"), &wid)
            .expect("load"),
        Some(wf)
    );
    assert_eq!(
        s.load_session_workflow_checkpoint(&session("session-2"), &wid)
            .expect("load"),
        None
    );
    assert_eq!(
        s.list(&Scope::SessionWorkflowCheckpoints(session("session-1")))
            .expect("list"),
        [DocKey::SessionWorkflowCheckpoint {
            session: session("session-1"),
            workflow: wid,
        }]
    );
}

/// `delete_job` removes every checkpoint and the metadata, nothing else.
pub fn deleting_a_job_removes_its_state_and_emptied_listings(s: &dyn Storage) {
    let r = repo("proj");
    for v in 1..=4 {
        let cp =
            JobCheckpoint::from_json(json!({"job_id": "mapreduce-1", "checkpoint_version": v}))
                .expect("valid");
        s.save_job_checkpoint(&r, v, &cp).expect("save");
    }
    s.put(
        &DocKey::JobMetadata {
            repo: r.clone(),
            job: job("mapreduce-1"),
        },
        &json!({"version": 4}),
    )
    .expect("put");
    assert_eq!(
        s.keep_newest_job_checkpoints(&r, &job("mapreduce-1"), 3)
            .expect("keep"),
        [1]
    );
    assert_eq!(
        s.load_job_checkpoint(&r, &job("mapreduce-1"), 2)
            .expect("load")
            .and_then(|c| c.checkpoint_version()),
        Some(2)
    );
    let item = DeadLetterItem::from_json(json!({"item_id": "item_1"})).expect("valid");
    s.save_dead_letter(&r, &job("mapreduce-1"), &item)
        .expect("save");
    assert_eq!(s.delete_job(&r, &job("mapreduce-1")).expect("delete"), 4);
    assert!(s.jobs(&r).expect("jobs").is_empty());
    assert_eq!(
        s.latest_job_checkpoint(&r, &job("mapreduce-1"))
            .expect("load"),
        None
    );
    assert_eq!(
        s.dead_letters(&r, &job("mapreduce-1")).expect("kept").len(),
        1,
        "dead letters are not the job's state"
    );
    assert_eq!(s.delete_job(&r, &job("mapreduce-1")).expect("again"), 0);
    // A job saved again after its deletion is an ordinary job.
    let cp = JobCheckpoint::from_json(json!({"job_id": "mapreduce-1"})).expect("valid");
    s.save_job_checkpoint(&r, 1, &cp).expect("save again");
    assert_eq!(s.jobs(&r).expect("jobs"), [job("mapreduce-1")]);
}

/// Jobs with dead letters are listed per repository; items go one by one or all at once.
pub fn dead_letters_are_listed_by_job_and_deleted(s: &dyn Storage) {
    let r = repo("proj");
    for (j, item) in [
        ("mapreduce-2", "item_1"),
        ("mapreduce-1", "item_1"),
        ("mapreduce-1", "item_2"),
    ] {
        let it = DeadLetterItem::from_json(json!({"item_id": item})).expect("valid");
        s.save_dead_letter(&r, &job(j), &it).expect("save");
    }
    s.put(
        &DocKey::DeadLetterIndex {
            repo: r.clone(),
            job: job("mapreduce-1"),
        },
        &json!({"item_count": 2}),
    )
    .expect("put");
    assert_eq!(
        s.jobs_with_dead_letters(&r).expect("jobs"),
        [job("mapreduce-1"), job("mapreduce-2")]
    );
    assert!(
        s.jobs_with_dead_letters(&repo("other"))
            .expect("jobs")
            .is_empty()
    );
    let one = ItemId::new("item_1").expect("valid");
    assert!(
        s.delete_dead_letter(&r, &job("mapreduce-1"), &one)
            .expect("delete")
    );
    assert!(
        !s.delete_dead_letter(&r, &job("mapreduce-1"), &one)
            .expect("again")
    );
    assert_eq!(
        s.delete_dead_letters(&r, &job("mapreduce-1"))
            .expect("purge"),
        2
    );
    assert_eq!(
        s.jobs_with_dead_letters(&r).expect("jobs"),
        [job("mapreduce-2")]
    );
    // Lenient loading skips what does not parse as an item, and says so.
    s.put(
        &DocKey::DeadLetter {
            repo: r.clone(),
            job: job("mapreduce-2"),
            item: ItemId::new("item_9").expect("valid"),
        },
        &json!(["not", "an", "item"]),
    )
    .expect("put");
    let (items, skipped) = s
        .dead_letters_lenient(&r, &job("mapreduce-2"))
        .expect("load");
    assert_eq!(items.len(), 1);
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert!(
        s.dead_letters(&r, &job("mapreduce-2")).is_err(),
        "strict refuses"
    );
}

/// Listings can carry each document's size and modification time.
pub fn entries_carry_size_and_modification_time(s: &dyn Storage) {
    let before = SystemTime::now() - Duration::from_secs(2);
    let key = session_key("proj", "session-1");
    s.put(
        &key,
        &json!({"session_id": "session-1", "pad": "x".repeat(1000)}),
    )
    .expect("put");
    let entries = s
        .list_entries(&Scope::Sessions(repo("proj")))
        .expect("list");
    assert_eq!(entries.len(), 1);
    let e = &entries[0];
    assert_eq!(e.key, key);
    assert!(e.bytes > 1000, "{}", e.bytes);
    assert!(e.modified >= before && e.modified <= SystemTime::now() + Duration::from_secs(2));
    assert_eq!(s.entry(&key).expect("entry").as_ref(), Some(e));
    assert_eq!(
        s.entry(&session_key("proj", "session-2")).expect("entry"),
        None
    );
}

/// A read returns the cursor to continue from; reading from it gets only what came after.
pub fn a_cursor_continues_where_a_read_stopped(s: &dyn Storage) {
    let (r, j) = (repo("proj"), job("mapreduce-1"));
    let (none, start) = read_all(s, &r, &j, &EventCursor::START);
    assert!(none.is_empty());
    let batch: Vec<EventRecord> = (0..8).map(|n| event("mapreduce-1", n)).collect();
    s.append_events(&r, &j, &batch[..5]).expect("append");
    let (first, next) = read_all(s, &r, &j, &start);
    assert_eq!(first, [0, 1, 2, 3, 4]);
    let (empty, same) = read_all(s, &r, &j, &next);
    assert!(empty.is_empty());
    assert_eq!(same, next, "nothing new: the cursor stays");
    s.append_events(&r, &j, &batch[5..]).expect("append");
    let (rest, end) = read_all(s, &r, &j, &next);
    assert_eq!(rest, [5, 6, 7]);
    assert_ne!(end, next);
}

/// A follower waiting on a log wakes when another thread appends, and times out otherwise.
pub fn a_waiting_follower_is_woken_by_an_append(s: &dyn Storage) {
    let (r, j) = (repo("proj"), job("mapreduce-1"));
    s.append_events(&r, &j, &[event("mapreduce-1", 0)])
        .expect("append");
    let (_, at) = read_all(s, &r, &j, &EventCursor::START);
    let start = Instant::now();
    assert!(
        !s.wait_for_events(&r, &j, &at, Duration::from_millis(150))
            .expect("wait")
    );
    assert!(start.elapsed() >= Duration::from_millis(140), "it waited");
    std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(Duration::from_millis(100));
            s.append_events(&r, &j, &[event("mapreduce-1", 1)])
                .expect("append");
        });
        assert!(
            s.wait_for_events(&r, &j, &at, Duration::from_secs(20))
                .expect("wait")
        );
    });
    let (got, _) = read_all(s, &r, &j, &at);
    assert_eq!(got, [1]);
}

/// `tail_events` returns the last records in order.
pub fn tail_returns_the_last_records(s: &dyn Storage) {
    let (r, j) = (repo("proj"), job("mapreduce-1"));
    let batch: Vec<EventRecord> = (0..10).map(|n| event("mapreduce-1", n)).collect();
    s.append_events(&r, &j, &batch).expect("append");
    assert_eq!(s.tail_events(&r, &j, 3).expect("tail"), batch[7..]);
    assert_eq!(s.tail_events(&r, &j, 50).expect("tail"), batch);
    assert!(s.tail_events(&r, &j, 0).expect("tail").is_empty());
}

/// Retention keeps the newest records, drops from the start, and a stale cursor restarts.
pub fn retention_trims_a_log_from_its_start(s: &dyn Storage) {
    let (r, j) = (repo("proj"), job("mapreduce-1"));
    let batch: Vec<EventRecord> = (0..10).map(|n| event("mapreduce-1", n)).collect();
    s.append_events(&r, &j, &batch[..6]).expect("append");
    s.append_events(&r, &j, &batch[6..]).expect("append");
    let (_, end) = read_all(s, &r, &j, &EventCursor::START);
    let report = s
        .retain_events(
            &r,
            &j,
            &EventRetention::new(Retention::keep_all().with_max_count(3)),
        )
        .expect("retain");
    assert_eq!((report.kept, report.dropped), (3, Some(7)));
    assert!(report.dropped_bytes > 0);
    assert!(
        report.archive.is_some(),
        "dropped records are archived by default"
    );
    assert_eq!(read_all(s, &r, &j, &EventCursor::START).0, [7, 8, 9]);
    // An append after the trim lands after what was kept.
    s.append_events(&r, &j, &[event("mapreduce-1", 10)])
        .expect("append");
    assert_eq!(read_all(s, &r, &j, &EventCursor::START).0, [7, 8, 9, 10]);
    let _ = end;
    let report = s
        .retain_events(
            &r,
            &j,
            &EventRetention::new(Retention::keep_all().with_max_count(1)).without_archive(),
        )
        .expect("retain");
    assert_eq!((report.kept, report.archive.as_deref()), (1, None));
    assert!(report.dropped.is_none_or(|d| d == 3), "{report:?}");
    assert!(report.dropped_bytes > 0);
    assert_eq!(read_all(s, &r, &j, &EventCursor::START).0, [10]);
    let nothing = s
        .retain_events(
            &r,
            &job("mapreduce-9"),
            &EventRetention::new(Retention::keep_all()),
        )
        .expect("no log");
    assert_eq!((nothing.kept, nothing.dropped_bytes), (0, 0));
    assert!(nothing.dropped.is_none_or(|d| d == 0));
}

/// Retention by age drops old events and keeps recent ones and those without a time.
pub fn retention_by_age_keeps_recent_and_undated_events(s: &dyn Storage) {
    let (r, j) = (repo("proj"), job("mapreduce-1"));
    let at = |n: u64, ts: &str| {
        EventRecord::from_json(json!({
            "timestamp": ts, "event": {"job_id": "mapreduce-1", "n": n}
        }))
        .expect("object")
    };
    s.append_events(
        &r,
        &j,
        &[
            at(0, "2025-01-01T00:00:00Z"),
            at(1, "2025-01-02T00:00:00Z"),
            at(2, "not a time"),
            at(3, "2025-01-01T00:00:00Z"),
            at(4, "2025-03-01T00:00:00Z"),
        ],
    )
    .expect("append");
    let now = crate::time::parse_rfc3339("2025-03-02T00:00:00Z").expect("time");
    let policy =
        EventRetention::new(Retention::keep_all().with_max_age(Duration::from_secs(86_400 * 30)))
            .at(now)
            .without_archive();
    let report = s.retain_events(&r, &j, &policy).expect("retain");
    assert!(
        report.dropped.is_none_or(|d| d == 2),
        "the leading old ones; an undated one stops the cut: {report:?}"
    );
    assert_eq!(read_all(s, &r, &j, &EventCursor::START).0, [2, 3, 4]);
}

/// A deleted log reads as empty, is no longer listed, and a new append begins it again.
pub fn a_deleted_event_log_is_gone_and_can_begin_again(s: &dyn Storage) {
    let (r, j) = (repo("proj"), job("mapreduce-1"));
    s.append_events(&r, &j, &[event("mapreduce-1", 0), event("mapreduce-1", 1)])
        .expect("append");
    assert!(
        s.event_log_entry(&r, &j)
            .expect("entry")
            .is_some_and(|e| e.bytes > 0)
    );
    let (_, old) = read_all(s, &r, &j, &EventCursor::START);
    assert!(s.delete_event_log(&r, &j).expect("delete"));
    assert!(!s.delete_event_log(&r, &j).expect("again"));
    assert!(s.event_logs(&r).expect("logs").is_empty());
    assert_eq!(s.event_log_entry(&r, &j).expect("entry"), None);
    assert!(read_all(s, &r, &j, &EventCursor::START).0.is_empty());
    s.append_events(&r, &j, &[event("mapreduce-1", 7)])
        .expect("append");
    assert_eq!(read_all(s, &r, &j, &EventCursor::START).0, [7]);
    assert_eq!(
        read_all(s, &r, &j, &old).0,
        [7],
        "a stale cursor starts over"
    );
}

/// A kind this crate does not name is stored, listed and counted like the others.
pub fn extension_kinds_need_no_new_release(s: &dyn Storage) {
    let kind = ExtKind::new("prodigy.reduce-checkpoint").expect("valid");
    let key = |n: &str| DocKey::Extension {
        repo: repo("proj"),
        kind: kind.clone(),
        name: DocName::new(n).expect("valid"),
    };
    s.put(&key("v2"), &json!({"phase": "reduce", "v": 2}))
        .expect("put");
    s.put(&key("v1"), &json!({"phase": "reduce", "v": 1}))
        .expect("put");
    assert_eq!(
        s.get(&key("v2")).expect("get"),
        Some(json!({"phase": "reduce", "v": 2}))
    );
    assert_eq!(
        s.list(&Scope::Extension(repo("proj"), kind.clone()))
            .expect("list"),
        [key("v1"), key("v2")]
    );
    assert_eq!(
        s.extension_kinds(&repo("proj")).expect("kinds"),
        std::slice::from_ref(&kind)
    );
    assert_eq!(s.repos().expect("repos"), [repo("proj")]);
    assert_eq!(key("v1").kind(), "prodigy.reduce-checkpoint");
    assert!(ExtKind::new(".hidden").is_err() && ExtKind::new("a/b").is_err());
}

/// Statistics count every kind of document and every log, per repository.
pub fn statistics_cover_every_kind(s: &dyn Storage) {
    let r = repo("proj");
    s.save_unified_session(&unified("session-1", "Running"))
        .expect("save");
    s.put(
        &session_key("proj", "session-1"),
        &json!({"session_id": "session-1"}),
    )
    .expect("put");
    let cp = JobCheckpoint::from_json(json!({"job_id": "mapreduce-1"})).expect("valid");
    s.save_job_checkpoint(&r, 1, &cp).expect("save");
    s.save_job_checkpoint(&r, 2, &cp).expect("save");
    s.put(
        &DocKey::JobMetadata {
            repo: r.clone(),
            job: job("mapreduce-1"),
        },
        &json!({"version": 2}),
    )
    .expect("put");
    s.append_events(&r, &job("mapreduce-1"), &[event("mapreduce-1", 0)])
        .expect("append");
    let stats = s.stats().expect("stats");
    let find = |repo: Option<&str>, kind: &str| {
        stats
            .iter()
            .find(|k| k.repo.as_ref().map(RepoKey::as_str) == repo && k.kind == kind)
            .unwrap_or_else(|| panic!("no {kind} in {stats:?}"))
    };
    assert_eq!(find(None, "unified session").count, 1);
    assert_eq!(find(Some("proj"), "session").count, 1);
    assert_eq!(find(Some("proj"), "job checkpoint").count, 2);
    assert_eq!(find(Some("proj"), "job metadata").count, 1);
    let log = find(Some("proj"), "event log");
    assert_eq!(log.count, 1);
    assert!(log.bytes > 0 && log.oldest.is_some() && log.newest.is_some());
    assert_eq!(stats.len(), 5, "{stats:?}");
}

/// `prune` keeps the newest documents of a scope by count.
pub fn prune_keeps_the_newest_documents(s: &dyn Storage) {
    for id in ["session-1", "session-2", "session-3"] {
        s.put(&session_key("proj", id), &json!({"session_id": id}))
            .expect("put");
        std::thread::sleep(Duration::from_millis(20));
    }
    let removed = s
        .prune(
            &Scope::Sessions(repo("proj")),
            &Retention::keep_all().with_max_count(1),
            SystemTime::now(),
        )
        .expect("prune");
    assert_eq!(
        removed,
        [
            session_key("proj", "session-1"),
            session_key("proj", "session-2")
        ]
    );
    assert_eq!(
        s.list(&Scope::Sessions(repo("proj"))).expect("list"),
        [session_key("proj", "session-3")]
    );
}

/// A session-to-job mapping is found from the job as well as the session.
pub fn a_session_is_found_by_its_job(s: &dyn Storage) {
    let r = repo("proj");
    for (sess, j) in [("session-1", "mapreduce-1"), ("session-2", "mapreduce-2")] {
        let m =
            SessionJobMapping::from_json(json!({"session_id": sess, "job_id": j})).expect("valid");
        s.save_session_job(&r, &m).expect("save");
    }
    let m = s
        .session_for_job(&r, &job("mapreduce-2"))
        .expect("find")
        .expect("found");
    assert_eq!(m.session_id(), &session("session-2"));
    assert_eq!(
        s.session_for_job(&r, &job("mapreduce-3")).expect("find"),
        None
    );
}

/// `scan_entries` visits exactly the documents `list_entries` lists.
pub fn a_scan_visits_what_a_listing_lists(s: &dyn Storage) {
    for id in ["session-2", "session-1", "session-3"] {
        s.put(&session_key("proj", id), &json!({"session_id": id}))
            .expect("put");
    }
    s.put(
        &session_key("other", "session-9"),
        &json!({"session_id": "session-9"}),
    )
    .expect("put");
    let scope = Scope::Sessions(repo("proj"));
    let mut seen = Vec::new();
    s.scan_entries(&scope, &mut |e| seen.push(e)).expect("scan");
    seen.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(seen, s.list_entries(&scope).expect("list"));
    assert_eq!(seen.len(), 3);
    let mut none = 0;
    s.scan_entries(&Scope::Sessions(repo("absent")), &mut |_| none += 1)
        .expect("scan an absent scope");
    assert_eq!(none, 0);
}

/// A compare-and-append lands only at the expected end; a retry of a batch
/// that landed (even after others appended behind it) is recognised and not
/// stored again; a batch that did not land is refused with the log's end.
pub fn compare_and_append_stores_a_retried_batch_once(s: &dyn Storage) {
    let (r, j) = (repo("proj"), job("mapreduce-1"));
    let ev = |n: u64| event("mapreduce-1", n);
    let start = s.event_log_end(&r, &j).expect("end");
    assert_eq!(
        start,
        EventCursor::START,
        "a log that does not exist ends at its start"
    );
    let a = [ev(0), ev(1)];
    let first = s.append_events_at(&r, &j, &start, &a).expect("append");
    let Appended::Now { end: after_a } = first.clone() else {
        panic!("expected Now, got {first:?}");
    };
    assert_eq!(s.event_log_end(&r, &j).expect("end"), after_a);
    // The caller was told the outcome was unknown and retries: stored once.
    let again = s.append_events_at(&r, &j, &start, &a).expect("retry");
    assert_eq!(
        again,
        Appended::Already {
            end: after_a.clone()
        }
    );
    // Another writer appends; a retry of the first batch is still recognised.
    s.append_events(&r, &j, &[ev(2)]).expect("append");
    let late = s.append_events_at(&r, &j, &start, &a).expect("late retry");
    assert_eq!(
        late,
        Appended::Already {
            end: after_a.clone()
        }
    );
    // A different batch at a stale position: refused, nothing written.
    let err = s
        .append_events_at(&r, &j, &after_a, &[ev(9)])
        .expect_err("the log moved on");
    let Error::AppendConflict { end, .. } = &err else {
        panic!("expected AppendConflict, got {err:?}");
    };
    assert_eq!(*end, s.event_log_end(&r, &j).expect("end"));
    assert!(
        err.to_string().contains("another writer appended first"),
        "{err}"
    );
    // At the end it names, the append lands.
    let at_end = s.append_events_at(&r, &j, end, &[ev(3)]).expect("append");
    assert!(matches!(at_end, Appended::Now { .. }), "{at_end:?}");
    assert_eq!(read_all(s, &r, &j, &EventCursor::START).0, [0, 1, 2, 3]);
    // An empty batch at the end is a no-op that reports the end.
    let end = s.event_log_end(&r, &j).expect("end");
    assert_eq!(
        s.append_events_at(&r, &j, &end, &[]).expect("empty"),
        Appended::Now { end: end.clone() }
    );
    // The expected end of a log that does not exist is its start, and only that.
    let other = job("mapreduce-2");
    assert!(matches!(
        s.append_events_at(&r, &other, &end, &[ev(5)]),
        Err(Error::AppendConflict { .. })
    ));
    assert!(read_all(s, &r, &other, &EventCursor::START).0.is_empty());
}

/// `event_log_end` is the cursor a read to the end returns, so a follower's
/// cursor is a compare-and-append's expected position.
pub fn the_log_end_is_where_a_read_to_the_end_stops(s: &dyn Storage) {
    let (r, j) = (repo("proj"), job("mapreduce-1"));
    for n in 0..3 {
        s.append_events(&r, &j, &[event("mapreduce-1", n)])
            .expect("append");
        let (_, next) = read_all(s, &r, &j, &EventCursor::START);
        assert_eq!(s.event_log_end(&r, &j).expect("end"), next);
        let landed = s
            .append_events_at(&r, &j, &next, &[event("mapreduce-1", 10 + n)])
            .expect("append at a follower's cursor");
        assert!(matches!(landed, Appended::Now { .. }), "{landed:?}");
        assert_eq!(*landed.end(), s.event_log_end(&r, &j).expect("end"));
    }
    assert_eq!(
        read_all(s, &r, &j, &EventCursor::START).0,
        [0, 10, 1, 11, 2, 12]
    );
}

/// A cursor of a log that was deleted and begun again (with records of the
/// same sizes) never resumes inside the new log: the read starts over and
/// says so, and every new record is delivered.
pub fn a_cursor_of_a_deleted_log_never_skips_its_successor(s: &dyn Storage) {
    let (r, j) = (repo("proj"), job("mapreduce-1"));
    let batch: Vec<EventRecord> = (0..12).map(|n| event("mapreduce-1", n)).collect();
    s.append_events(&r, &j, &batch[..2]).expect("append");
    let (_, old) = read_all(s, &r, &j, &EventCursor::START);
    assert!(s.delete_event_log(&r, &j).expect("delete"));
    // The same bytes again, and more: a cursor by position alone would skip two.
    s.append_events(&r, &j, &batch).expect("append");
    let (got, next, restarted) = read_all_restarted(s, &r, &j, &old);
    assert_eq!(got, (0..12).collect::<Vec<_>>(), "nothing skipped");
    assert!(restarted, "the read says it started over");
    let (none, _, again) = read_all_restarted(s, &r, &j, &next);
    assert!(none.is_empty() && !again);
    // Deleted and not begun again: nothing, and a restart.
    assert!(s.delete_event_log(&r, &j).expect("delete"));
    let (none, _, restarted) = read_all_restarted(s, &r, &j, &next);
    assert!(none.is_empty() && restarted);
}

/// A cursor into a log that retention trimmed (once, then again) never
/// skips a record that is still in the log; where the store carries it over
/// the cut (not `restarted`), it delivers exactly the records after it.
pub fn a_cursor_is_carried_over_retention_without_a_skip(s: &dyn Storage) {
    let (r, j) = (repo("proj"), job("mapreduce-1"));
    let batch: Vec<EventRecord> = (0..40).map(|n| event("mapreduce-1", n)).collect();
    let keep =
        |n: u64| EventRetention::new(Retention::keep_all().with_max_count(n)).without_archive();
    s.append_events(&r, &j, &batch[..6]).expect("append");
    let (_, after5) = read_all(s, &r, &j, &EventCursor::START);
    s.append_events(&r, &j, &batch[6..20]).expect("append");
    s.retain_events(&r, &j, &keep(15)).expect("retain"); // keeps 5..20
    s.append_events(&r, &j, &batch[20..30]).expect("append");
    let (got, next, restarted) = read_all_restarted(s, &r, &j, &after5);
    let expect: Vec<u64> = (6..30).collect();
    if restarted {
        assert!(
            expect.iter().all(|n| got.contains(n)),
            "nothing skipped: {got:?}"
        );
    } else {
        assert_eq!(got, expect, "carried over the cut");
    }
    // Three more trims with appends between them, the follower asleep.
    s.retain_events(&r, &j, &keep(12)).expect("retain"); // keeps 18..30
    s.append_events(&r, &j, &batch[30..35]).expect("append");
    s.retain_events(&r, &j, &keep(8)).expect("retain"); // keeps 27..35
    s.append_events(&r, &j, &batch[35..]).expect("append");
    let (got, _, restarted) = read_all_restarted(s, &r, &j, &next);
    let expect: Vec<u64> = (30..40).collect();
    if restarted {
        assert!(
            expect.iter().all(|n| got.contains(n)),
            "nothing skipped: {got:?}"
        );
    } else {
        assert_eq!(got, expect, "carried over two cuts");
    }
    // A cursor into what retention dropped: the first record kept is next.
    s.retain_events(&r, &j, &keep(3)).expect("retain"); // keeps 37..40
    let (got, _, restarted) = read_all_restarted(s, &r, &j, &after5);
    assert!(restarted || got == [37, 38, 39], "{got:?}");
    assert!(got.ends_with(&[37, 38, 39]), "{got:?}");
}

/// A cursor past a log's end (from a longer incarnation) starts over, says
/// so, and delivers everything.
pub fn a_cursor_past_the_end_restarts_and_says_so(s: &dyn Storage) {
    let (r, j) = (repo("proj"), job("mapreduce-1"));
    let batch: Vec<EventRecord> = (0..12).map(|n| event("mapreduce-1", n)).collect();
    s.append_events(&r, &j, &batch).expect("append");
    let (_, long) = read_all(s, &r, &j, &EventCursor::START);
    assert!(s.delete_event_log(&r, &j).expect("delete"));
    s.append_events(&r, &j, &batch[..3]).expect("append");
    let (got, _, restarted) = read_all_restarted(s, &r, &j, &long);
    assert_eq!(got, [0, 1, 2]);
    assert!(restarted);
    assert!(
        s.wait_for_events(&r, &j, &long, Duration::from_millis(10))
            .expect("wait"),
        "a follower at such a cursor is told to read"
    );
}

/// `levels` arrays around `1`, parsed from text. Kept far below the depth
/// at which `Value`'s own (recursive) drop and serialization would need a
/// big stack.
fn nested_arrays(levels: usize) -> serde_json::Value {
    let text = format!("{}1{}", "[".repeat(levels), "]".repeat(levels));
    serde_json::from_str(&text).expect("nested arrays")
}

/// `put` and `append_events` refuse a document or event nested deeper than
/// [`MAX_JSON_DEPTH`], before writing anything, with an error naming the
/// limit; one exactly at the limit is accepted and reads back equal.
pub fn json_nested_deeper_than_the_limit_is_refused_at_write(s: &dyn Storage) {
    let key = session_key("proj", "session-deep");
    // An object around `levels - 1` arrays: `levels` deep.
    let doc =
        |levels: usize| json!({"session_id": "session-deep", "deep": nested_arrays(levels - 1)});
    let at = doc(MAX_JSON_DEPTH);
    s.put(&key, &at)
        .expect("a document at the limit is accepted");
    assert_eq!(s.get(&key).expect("get"), Some(at.clone()));
    let err = s
        .put(&key, &doc(MAX_JSON_DEPTH + 1))
        .expect_err("a document over the limit is refused");
    assert!(
        matches!(&err, Error::InvalidRecord(RecordError::TooDeep { what: "document", depth })
            if *depth == MAX_JSON_DEPTH + 1),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains(&format!("over the {MAX_JSON_DEPTH} levels")),
        "{err}"
    );
    assert_eq!(
        s.get(&key).expect("get"),
        Some(at),
        "the earlier document is kept"
    );
    let fresh = session_key("proj", "session-never");
    assert!(s.put(&fresh, &doc(MAX_JSON_DEPTH + 1)).is_err());
    assert_eq!(s.get(&fresh).expect("get"), None, "nothing was written");

    let (r, j) = (repo("proj"), job("mapreduce-1"));
    let deep_event = |n: u64, levels: usize| {
        EventRecord::from_json(json!({
            "id": format!("e{n}"),
            "event": {"event_type": "agent_completed", "job_id": "mapreduce-1", "n": n},
            "deep": nested_arrays(levels - 1)
        }))
        .expect("object")
    };
    let accepted = [event("mapreduce-1", 0), deep_event(1, MAX_JSON_DEPTH)];
    s.append_events(&r, &j, &accepted)
        .expect("an event at the limit is accepted");
    let err = s
        .append_events(
            &r,
            &j,
            &[event("mapreduce-1", 2), deep_event(3, MAX_JSON_DEPTH + 1)],
        )
        .expect_err("a batch with an event over the limit is refused");
    assert!(
        matches!(&err, Error::InvalidRecord(RecordError::TooDeep { what: "event", depth })
            if *depth == MAX_JSON_DEPTH + 1),
        "{err:?}"
    );
    s.append_events(&r, &j, &[event("mapreduce-1", 4)])
        .expect("append after a refusal");
    let mut seen = Vec::new();
    let summary = s
        .read_events_from(&r, &j, &EventCursor::START, ReadMode::Strict, &mut |e| {
            seen.push(e);
        })
        .expect("a strict read passes what was accepted");
    assert_eq!(summary.records, 3);
    assert_eq!(seen[..2], accepted, "accepted events read back equal");
    assert_eq!(
        seen[2].json()["event"]["n"],
        4,
        "nothing of the refused batch was written"
    );
}

/// Every acquisition of a lock has a larger fencing token than the one
/// before; a write fenced with an older token is refused and writes
/// nothing, one fenced with the newest is made; a held lock checks as held.
pub fn a_stale_holders_fenced_writes_are_refused(s: &dyn Storage) {
    let key = LockKey::new("mapreduce-1").expect("valid");
    let (r, j) = (repo("proj"), job("mapreduce-1"));
    let doc = session_key("proj", "session-1");
    let first = s.lock(&key, &holder(1), LockWait::NoWait).expect("lock");
    let Some(old) = first.fence() else {
        // A store without tokens (none in this workspace) says so.
        assert!(matches!(first.check(), Err(Error::Unsupported { .. })));
        return;
    };
    assert!(first.check().expect("check"), "held");
    assert!(!first.is_lost());
    s.put_fenced(&doc, &json!({"session_id": "session-1", "by": "a"}), &old)
        .expect("the holder writes");
    s.append_events_fenced(&r, &j, &[event("mapreduce-1", 0)], &old)
        .expect("the holder appends");
    drop(first);
    let second = s
        .lock(&key, &holder(2), LockWait::NoWait)
        .expect("lock again");
    let new = second.fence().expect("a token");
    assert!(new.token > old.token, "{} then {}", old.token, new.token);
    s.put_fenced(&doc, &json!({"session_id": "session-1", "by": "b"}), &new)
        .expect("the new holder writes");
    // The old holder, not told: refused, nothing written.
    let err = s
        .put_fenced(
            &doc,
            &json!({"session_id": "session-1", "by": "a, late"}),
            &old,
        )
        .expect_err("stale");
    match &err {
        Error::LockLost { token, current, .. } => {
            assert_eq!((*token, *current), (old.token, Some(new.token)));
        }
        other => panic!("expected LockLost, got {other:?}"),
    }
    assert!(
        err.to_string().contains("no longer held by this writer"),
        "{err}"
    );
    let err = s
        .append_events_fenced(&r, &j, &[event("mapreduce-1", 9)], &old)
        .expect_err("stale");
    assert!(matches!(err, Error::LockLost { .. }), "{err:?}");
    assert_eq!(
        s.get(&doc).expect("get"),
        Some(json!({"session_id": "session-1", "by": "b"}))
    );
    assert_eq!(read_all(s, &r, &j, &EventCursor::START).0, [0]);
    // A token of another lock is not this lock's.
    let other = Fence {
        key: LockKey::new("mapreduce-2").expect("valid"),
        token: new.token,
    };
    assert!(matches!(
        s.put_fenced(&doc, &json!({"session_id": "session-1"}), &other),
        Err(Error::LockLost { .. })
    ));
    drop(second);
}

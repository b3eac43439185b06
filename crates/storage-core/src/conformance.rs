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
use std::time::{Duration, Instant};

use serde_json::json;

use crate::error::Error;
use crate::id::{ItemId, JobId, LockKey, RepoKey, SessionId, WorkflowId};
use crate::record::{
    DeadLetterItem, EventRecord, JobCheckpoint, LockHolder, SessionJobMapping, SessionRecord,
    WorkflowCheckpoint,
};
use crate::storage::{DocKey, LockWait, Scope, Storage, StorageExt};

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

/// `get` returns exactly what `put` stored, unknown fields and field order included.
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
    let order: Vec<&String> = back.as_object().expect("object").keys().collect();
    assert_eq!(order, ["session_id", "zeta", "alpha", "iteration_timings"]);
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

//! Real processes appending, saving, locking and being killed with SIGKILL.

use std::collections::BTreeMap;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use storage_core::{
    Error, JobId, LockHolder, LockKey, LockWait, RepoKey, SessionId, Storage, StorageExt,
};

use crate::support::{TestDb, Worker, worker};

fn repo() -> RepoKey {
    RepoKey::new("proj").expect("valid")
}

/// `(writer, seq)` of a worker's event.
fn origin(e: &storage_core::EventRecord) -> (u64, u64) {
    let ev = &e.json()["event"];
    (
        ev["writer"].as_u64().expect("writer"),
        ev["seq"].as_u64().expect("seq"),
    )
}

#[test]
fn eight_processes_appending_a_thousand_events_each_give_every_reader_one_order_without_gaps() {
    let Some(db) = TestDb::new() else { return };
    let job = JobId::new("mapreduce-1757146800123").expect("valid");
    let start = Instant::now();
    let (followed, children_ok) = std::thread::scope(|s| {
        // Two followers read while the processes append: each checks that
        // it sees seq 0, 1, 2, … (no gap: `deliver` would refuse one).
        let followers: Vec<_> = (0..2)
            .map(|_| {
                let store = db.reopen();
                let job = &job;
                s.spawn(move || {
                    let mut f = store
                        .follow(&repo(), job, &storage_core::EventCursor::START)
                        .expect("follow");
                    let mut seen = Vec::new();
                    let deadline = Instant::now() + Duration::from_secs(300);
                    while seen.len() < 8000 && Instant::now() < deadline {
                        f.next(Duration::from_secs(1), &mut |seq, e| {
                            assert_eq!(seq, seen.len() as u64, "a gap or a repeat");
                            seen.push(origin(&e));
                        })
                        .expect("follow");
                    }
                    seen
                })
            })
            .collect();
        let children: Vec<Child> = (0..8)
            .map(|w| {
                let mut args = db.worker_args("append");
                let w = w.to_string();
                args.extend([job.as_str(), "1000", &w]);
                worker(&args).stdout(Stdio::null()).spawn().expect("spawn")
            })
            .collect();
        let ok = children
            .into_iter()
            .all(|mut c| c.wait().expect("wait").success());
        let followed: Vec<Vec<(u64, u64)>> = followers
            .into_iter()
            .map(|f| f.join().expect("follower"))
            .collect();
        (followed, ok)
    });
    assert!(children_ok, "a writer failed");
    let mut order = Vec::new();
    let summary = db
        .store
        .read_events(&repo(), &job, &mut |e| order.push(origin(&e)))
        .expect("read");
    eprintln!(
        "faults: 8 processes x 1000 appends to one PostgreSQL log: {} records in {:.1}s, one order, no gaps",
        summary.records,
        start.elapsed().as_secs_f64()
    );
    assert_eq!(summary.records, 8000);
    assert!(summary.torn_tails.is_empty());
    let mut next: BTreeMap<u64, u64> = BTreeMap::new();
    for (w, seq) in &order {
        let expected = next.entry(*w).or_insert(0);
        assert_eq!(seq, expected, "writer {w} out of its own order");
        *expected += 1;
    }
    assert_eq!(next.len(), 8);
    assert!(next.values().all(|n| *n == 1000), "{next:?}");
    for f in &followed {
        assert_eq!(f, &order, "a follower saw another order than the log has");
    }
    // The rows themselves: seq 0..8000 exactly, and the log's length.
    let mut raw = db.raw();
    let row = raw
        .query_one(
            "SELECT count(*), min(seq), max(seq), (SELECT next_seq FROM event_logs) FROM events",
            &[],
        )
        .expect("count");
    let counts: (i64, i64, i64, i64) = (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(counts, (8000, 0, 7999, 8000));
}

#[test]
fn three_savers_and_a_reader_of_one_session_never_see_a_torn_document() {
    let Some(db) = TestDb::new() else { return };
    let savers: Vec<Worker> = [(1, 10), (2, 100_000), (3, 1_000_000)]
        .iter()
        .map(|(w, pad)| {
            let (w, pad) = (w.to_string(), pad.to_string());
            let mut args = db.worker_args("save-loop");
            args.extend(["session-1", &w, &pad]);
            Worker::start(&args, "saving")
        })
        .collect();
    let session = SessionId::new("session-1").expect("valid");
    let mut reads = 0;
    let mut by_writer = BTreeMap::<u64, u64>::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let rec = db
            .store
            .load_session(&repo(), &session)
            .expect("a read never sees a torn document")
            .expect("present");
        let pad = rec.json()["pad"].as_str().expect("pad").len();
        assert_eq!(pad as u64, rec.json()["pad_len"].as_u64().expect("pad_len"));
        *by_writer
            .entry(rec.json()["writer"].as_u64().expect("writer"))
            .or_default() += 1;
        reads += 1;
    }
    for w in savers {
        w.kill();
    }
    assert!(reads > 10, "only {reads} reads");
    assert!(by_writer.len() >= 2, "saw only {by_writer:?}");
    eprintln!(
        "faults: 3 PostgreSQL savers and a reader: {reads} whole reads, {by_writer:?} by writer"
    );
    // One row, whole, whatever the kills interrupted.
    let mut raw = db.raw();
    let n: i64 = raw
        .query_one("SELECT count(*) FROM documents", &[])
        .expect("count")
        .get(0);
    assert_eq!(n, 1);
}

fn me(pid: u32) -> LockHolder {
    LockHolder {
        job_id: "mapreduce-1".into(),
        process_id: pid,
        hostname: "test-host".into(),
        acquired_at: "2026-12-01T00:00:00Z".into(),
    }
}

#[test]
fn a_lock_holder_killed_with_sigkill_frees_the_lock_for_a_waiter_at_once() {
    let Some(db) = TestDb::new() else { return };
    let holder = Worker::start(
        &[db.worker_args("hold-lock"), vec!["mapreduce-1"]].concat(),
        "locked",
    );
    let pid = holder.child.id();
    let key = LockKey::new("mapreduce-1").expect("valid");
    match db.store.lock(&key, &me(1), LockWait::NoWait) {
        Err(Error::Locked {
            holder: Some(h),
            waited: None,
            ..
        }) => assert_eq!(h.process_id, pid, "the holder is named"),
        other => panic!("expected Locked naming the holder, got {other:?}"),
    }
    let (got, waited) = std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            let start = Instant::now();
            let got = db
                .store
                .lock(&key, &me(2), LockWait::Timeout(Duration::from_secs(30)));
            (got.map(|g| g.key().clone()), start.elapsed())
        });
        std::thread::sleep(Duration::from_millis(300));
        let killed_at = Instant::now();
        holder.kill();
        let (got, _) = waiter.join().expect("waiter");
        (got, killed_at.elapsed())
    });
    assert_eq!(got.expect("the waiter got the lock"), key);
    eprintln!(
        "faults: PostgreSQL lock holder SIGKILLed; the waiter had the lock {:.0} ms later",
        waited.as_secs_f64() * 1000.0
    );
    assert!(waited < Duration::from_secs(5), "took {waited:?}");
    // Free again once the waiter let go.
    let g = db
        .store
        .lock(&key, &me(3), LockWait::NoWait)
        .expect("free after the waiter let go");
    drop(g);
}

//! Following a log: what is there, then what comes, and nothing in between.

use std::time::{Duration, Instant};

use serde_json::json;
use storage_core::{EventCursor, EventRecord, JobId, RepoKey, Storage};

use crate::support::TestDb;

fn event(n: u64) -> EventRecord {
    EventRecord::from_json(json!({"event": {"event_type": "x", "n": n}})).expect("object")
}

fn ids() -> (RepoKey, JobId) {
    (
        RepoKey::new("proj").expect("valid"),
        JobId::new("mapreduce-1").expect("valid"),
    )
}

/// `(pid, state_change)` of every server process of the store (found by
/// its `application_name`, the schema's name), but the one asking.
fn activity(db: &TestDb) -> Vec<(i32, String)> {
    let mut raw = db.raw();
    raw.query(
        "SELECT pid, coalesce(state_change::text, '') FROM pg_stat_activity \
         WHERE application_name = $1 AND pid <> pg_backend_pid() ORDER BY pid",
        &[&db.schema],
    )
    .expect("pg_stat_activity")
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

#[test]
fn a_follower_delivers_the_log_then_new_appends_and_runs_no_query_while_idle() {
    let Some(db) = TestDb::new() else { return };
    let (repo, job) = ids();
    // The log need not exist yet.
    let mut f = db
        .store
        .follow(&repo, &job, &EventCursor::START)
        .expect("follow");
    let mut seen = Vec::new();
    let n = f
        .next(Duration::from_millis(200), &mut |seq, e| {
            seen.push((seq, e));
        })
        .expect("nothing yet");
    assert_eq!(n, 0);
    db.store
        .append_events(&repo, &job, &[event(0), event(1), event(2)])
        .expect("append");
    let n = f
        .next(Duration::from_secs(5), &mut |seq, e| seen.push((seq, e)))
        .expect("next");
    assert_eq!(n, 3);
    assert_eq!(seen.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [0, 1, 2]);
    assert_eq!(seen[2].1, event(2));
    assert_eq!(f.seq(), 3);
    assert_eq!(
        f.cursor(),
        db.store.event_log_end(&repo, &job).expect("end")
    );

    // Idle: once the follower waits (after its one read), no statement runs
    // on any of the store's connections until the timeout.
    let (n, waited, before, after) = std::thread::scope(|s| {
        let follower = s.spawn(|| {
            let start = Instant::now();
            let n = f
                .next(Duration::from_secs(3), &mut |_, _| {})
                .expect("idle");
            (n, start.elapsed())
        });
        std::thread::sleep(Duration::from_millis(700));
        let before = activity(&db);
        std::thread::sleep(Duration::from_millis(1500));
        let after = activity(&db);
        let (n, waited) = follower.join().expect("follower");
        (n, waited, before, after)
    });
    assert_eq!(n, 0);
    assert!(waited >= Duration::from_secs(3), "{waited:?}");
    assert_eq!(after, before, "a query ran while the follower waited");

    // An append from another handle wakes it at once.
    let other = db.reopen();
    let (woke, latency) = std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(300));
            other
                .append_events(&repo, &job, &[event(3), event(4)])
                .expect("append");
        });
        let start = Instant::now();
        let mut got = Vec::new();
        let n = f
            .next(Duration::from_secs(30), &mut |seq, _| got.push(seq))
            .expect("woken");
        assert_eq!(got, (3..3 + n).collect::<Vec<_>>());
        (n, start.elapsed())
    });
    assert!(woke >= 1);
    assert!(latency < Duration::from_secs(5), "woke after {latency:?}");
    eprintln!(
        "follow: woken {:.0} ms after a 300 ms delay",
        latency.as_secs_f64() * 1000.0
    );
}

#[test]
fn a_new_follower_resumes_from_a_cursor() {
    let Some(db) = TestDb::new() else { return };
    let (repo, job) = ids();
    let batch: Vec<EventRecord> = (0..10).map(event).collect();
    db.store
        .append_events(&repo, &job, &batch[..7])
        .expect("append");
    let at7 = db.store.event_log_end(&repo, &job).expect("end");
    db.store
        .append_events(&repo, &job, &batch[7..])
        .expect("append");
    let mut f = db.store.follow(&repo, &job, &at7).expect("follow");
    let mut got = Vec::new();
    f.next(Duration::ZERO, &mut |seq, e| got.push((seq, e)))
        .expect("next");
    assert_eq!(got, (7..10).map(|n| (n, event(n))).collect::<Vec<_>>());
}

/// Issue 20, item 2: a follower resumed from its saved cursor after the log
/// was deleted and begun again delivers every new event (its cursor names
/// the log's incarnation), and one past the end starts at the first line.
#[test]
fn a_resumed_follower_never_skips_into_another_incarnation() {
    let Some(db) = TestDb::new() else { return };
    let (repo, job) = ids();
    let batch: Vec<EventRecord> = (0..12).map(event).collect();
    db.store
        .append_events(&repo, &job, &batch[..10])
        .expect("append");
    let mut f = db
        .store
        .follow(&repo, &job, &EventCursor::START)
        .expect("follow");
    f.next(Duration::ZERO, &mut |_, _| {}).expect("read 10");
    let saved = f.cursor();
    drop(f);
    assert!(db.store.delete_event_log(&repo, &job).expect("delete"));
    db.store
        .append_events(&repo, &job, &batch)
        .expect("append 12");
    let mut f = db.store.follow(&repo, &job, &saved).expect("resume");
    let mut got = Vec::new();
    f.next(Duration::ZERO, &mut |seq, _| got.push(seq))
        .expect("next");
    assert_eq!(got, (0..12).collect::<Vec<_>>(), "all 12 new events");
    // A cursor past the end of this incarnation (from a longer one): from the start.
    let past = EventCursor {
        segment: String::new(),
        offset: 50,
        generation: f.cursor().generation,
    };
    let mut f = db.store.follow(&repo, &job, &past).expect("follow");
    let mut got = Vec::new();
    f.next(Duration::ZERO, &mut |seq, _| got.push(seq))
        .expect("next");
    assert_eq!(got, (0..12).collect::<Vec<_>>(), "not silently nothing");
}

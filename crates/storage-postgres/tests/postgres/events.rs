//! Event logs beyond the conformance suite: retention against the memory
//! store's rule, archives, cursors across trims and deletions, lenient
//! reads of tampered rows, sizes and times, a waiting call that runs no
//! query, and appenders at work during trims and deletions.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;
use storage_core::{
    EventCursor, EventRecord, EventRetention, JobId, MemoryStorage, ReadMode, RepoKey, Retention,
    Storage,
};

use crate::support::TestDb;

fn repo() -> RepoKey {
    RepoKey::new("proj").expect("valid")
}
fn job(s: &str) -> JobId {
    JobId::new(s).expect("valid")
}

/// Event `n`, `pad` bytes of padding, with `timestamp` if given.
fn event(n: u64, pad: usize, timestamp: Option<&str>) -> EventRecord {
    let mut v = json!({"event": {"event_type": "x", "n": n}, "pad": "p".repeat(pad)});
    if let Some(t) = timestamp {
        v["timestamp"] = json!(t);
    }
    EventRecord::from_json(v).expect("object")
}

fn numbers(s: &dyn Storage, j: &JobId, from: &EventCursor) -> (Vec<u64>, EventCursor) {
    let mut ns = Vec::new();
    let summary = s
        .read_events_from(&repo(), j, from, ReadMode::Strict, &mut |e| {
            ns.push(e.json()["event"]["n"].as_u64().expect("n"));
        })
        .expect("read");
    (ns, summary.next)
}

fn gunzip(bytes: &[u8]) -> String {
    let mut text = String::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_string(&mut text)
        .expect("gzip");
    text
}

#[test]
fn retention_keeps_what_the_memory_store_keeps_for_every_policy_and_archives_the_rest() {
    let Some(db) = TestDb::new() else { return };
    let memory = MemoryStorage::new();
    let times = [
        Some("2025-01-01T00:00:00Z"),
        Some("2025-01-03T00:00:00Z"),
        Some("2025-01-02T00:00:00Z"),
        None,
        Some("not a time"),
        Some("2025-01-01T00:00:00Z"),
        Some("2025-02-01T00:00:00Z"),
        Some("2025-03-01T00:00:00Z"),
    ];
    let events: Vec<EventRecord> = (0..40u64)
        .map(|n| {
            let n_us = usize::try_from(n).expect("small");
            let t = if n < 20 {
                Some("2024-12-01T00:00:00Z")
            } else {
                times[n_us % times.len()]
            };
            event(n, (n_us * 37) % 300, t)
        })
        .collect();
    let now = storage_core::parse_rfc3339("2025-03-02T00:00:00Z").expect("time");
    let day = Duration::from_secs(86_400);
    let policies = [
        Retention::keep_all(),
        Retention::keep_all().with_max_count(0),
        Retention::keep_all().with_max_count(7),
        Retention::keep_all().with_max_count(100),
        Retention::keep_all().with_max_bytes(0),
        Retention::keep_all().with_max_bytes(1),
        Retention::keep_all().with_max_bytes(2_000),
        Retention::keep_all().with_max_bytes(1_000_000),
        Retention::keep_all().with_max_age(day * 30),
        Retention::keep_all().with_max_age(day * 365 * 10),
        Retention::keep_all().with_max_age(Duration::ZERO),
        Retention::keep_all()
            .with_max_age(day * 60)
            .with_max_count(25)
            .with_max_bytes(4_000),
    ];
    for (i, keep) in policies.iter().enumerate() {
        let j = job(&format!("mapreduce-{i}"));
        for s in [&db.store as &dyn Storage, &memory] {
            for chunk in events.chunks(9) {
                s.append_events(&repo(), &j, chunk).expect("append");
            }
        }
        let policy = EventRetention::new(*keep).at(now);
        let ours = db
            .store
            .retain_events(&repo(), &j, &policy)
            .expect("retain");
        let theirs = memory.retain_events(&repo(), &j, &policy).expect("retain");
        assert_eq!(
            (ours.kept, ours.dropped, ours.dropped_bytes),
            (theirs.kept, theirs.dropped, theirs.dropped_bytes),
            "policy {keep:?}"
        );
        let (kept, _) = numbers(&db.store, &j, &EventCursor::START);
        assert_eq!(
            kept,
            numbers(&memory, &j, &EventCursor::START).0,
            "policy {keep:?}"
        );
        let dropped = usize::try_from(ours.dropped.expect("counted")).expect("small");
        match (&ours.archive, &theirs.archive) {
            (Some(name), Some(_)) => {
                assert!(
                    name.starts_with(&format!("postgres:{}.event_archives/", db.schema)),
                    "{name}"
                );
                let gz = db
                    .store
                    .event_archive(name)
                    .expect("read")
                    .expect("archived");
                let expected: String = events[..dropped]
                    .iter()
                    .map(|e| serde_json::to_string(e.json()).expect("json") + "\n")
                    .collect();
                assert_eq!(gunzip(&gz), expected, "policy {keep:?}");
            }
            (None, None) => assert_eq!(dropped, 0, "policy {keep:?}"),
            other => panic!("policy {keep:?}: archives differ: {other:?}"),
        }
        // The log's size follows the trim.
        let entry = db
            .store
            .event_log_entry(&repo(), &j)
            .expect("entry")
            .expect("still a log");
        let mem = memory
            .event_log_entry(&repo(), &j)
            .expect("entry")
            .expect("still a log");
        assert_eq!(entry.bytes, mem.bytes, "policy {keep:?}");
        // An append after the trim goes on after what was kept.
        db.store
            .append_events(&repo(), &j, &[event(99, 0, None)])
            .expect("append");
        let (after, _) = numbers(&db.store, &j, &EventCursor::START);
        assert_eq!(after.last(), Some(&99));
        assert_eq!(after.len(), kept.len() + 1);
    }
    assert_eq!(
        db.store
            .event_archive("postgres:other.event_archives/1")
            .expect("read"),
        None
    );
    assert_eq!(db.store.event_archive("nonsense").expect("read"), None);
}

#[test]
fn a_cursor_before_a_trim_goes_on_at_the_new_start_and_one_of_a_deleted_log_starts_over() {
    let Some(db) = TestDb::new() else { return };
    let j = job("mapreduce-1");
    let batch: Vec<EventRecord> = (0..10).map(|n| event(n, 10, None)).collect();
    db.store
        .append_events(&repo(), &j, &batch[..5])
        .expect("append");
    let (first, at5) = numbers(&db.store, &j, &EventCursor::START);
    assert_eq!(first, [0, 1, 2, 3, 4]);
    db.store
        .append_events(&repo(), &j, &batch[5..])
        .expect("append");
    let policy = EventRetention::new(Retention::keep_all().with_max_count(3)).without_archive();
    db.store
        .retain_events(&repo(), &j, &policy)
        .expect("retain");
    assert!(
        db.store
            .wait_for_events(&repo(), &j, &at5, Duration::ZERO)
            .expect("wait"),
        "lines after the trimmed cursor"
    );
    let (rest, end) = numbers(&db.store, &j, &at5);
    assert_eq!(
        rest,
        [7, 8, 9],
        "the lines dropped are skipped, the kept ones read once"
    );
    assert!(
        !db.store
            .wait_for_events(&repo(), &j, &end, Duration::from_millis(50))
            .expect("wait")
    );
    assert!(db.store.delete_event_log(&repo(), &j).expect("delete"));
    assert!(
        !db.store
            .wait_for_events(&repo(), &j, &end, Duration::from_millis(50))
            .expect("wait"),
        "a deleted log has nothing to read"
    );
    db.store
        .append_events(&repo(), &j, &batch[..2])
        .expect("append");
    // The new log is shorter than the old cursor's offset, and longer than
    // `at5`'s would allow nothing: the generation tells them apart.
    assert!(
        db.store
            .wait_for_events(&repo(), &j, &end, Duration::ZERO)
            .expect("wait")
    );
    assert_eq!(numbers(&db.store, &j, &end).0, [0, 1]);
    // A cursor of the old log at an offset inside the new one starts over too.
    let inside = EventCursor {
        offset: 1,
        ..end.clone()
    };
    assert_eq!(numbers(&db.store, &j, &inside).0, [0, 1]);
}

#[test]
fn a_lenient_read_skips_and_reports_a_tampered_row_and_a_missing_one() {
    let Some(db) = TestDb::new() else { return };
    let j = job("mapreduce-1");
    let batch: Vec<EventRecord> = (0..5).map(|n| event(n, 10, None)).collect();
    db.store.append_events(&repo(), &j, &batch).expect("append");
    let mut raw = db.raw();
    raw.execute("UPDATE events SET line = '{not json' WHERE seq = 1", &[])
        .expect("tamper");
    raw.execute("UPDATE events SET line = '[1, 2]' WHERE seq = 2", &[])
        .expect("tamper");
    raw.execute("DELETE FROM events WHERE seq = 3", &[])
        .expect("remove");
    let mut got = Vec::new();
    let summary = db
        .store
        .read_events_from(
            &repo(),
            &j,
            &EventCursor::START,
            ReadMode::Lenient,
            &mut |e| got.push(e.json()["event"]["n"].as_u64().expect("n")),
        )
        .expect("lenient");
    assert_eq!(got, [0, 4]);
    assert_eq!(summary.records, 2);
    let lines: Vec<Option<u64>> = summary.skipped.iter().map(|s| s.line).collect();
    assert_eq!(lines, [Some(2), Some(3), Some(4)], "{:?}", summary.skipped);
    assert!(summary.skipped[2].reason.contains("seq 3 is missing"));
    assert!(
        summary.skipped[0]
            .file
            .contains("events of `proj`/`mapreduce-1`")
    );
    assert_eq!(summary.next.offset, 5);
    // A strict read stops at the first.
    let err = db
        .store
        .read_events(&repo(), &j, &mut |_| {})
        .expect_err("strict");
    assert!(
        matches!(err, storage_core::Error::Corrupt { line: Some(2), .. }),
        "{err:?}"
    );
    // The tail of a log skips them too (it reads leniently).
    assert_eq!(
        storage_core::StorageExt::tail_events(&db.store, &repo(), &j, 5)
            .expect("tail")
            .len(),
        2
    );
}

#[test]
fn a_log_entry_counts_its_lines_bytes_and_the_times_of_its_first_kept_and_last_appends() {
    let Some(db) = TestDb::new() else { return };
    let memory = MemoryStorage::new();
    let j = job("mapreduce-1");
    let before = SystemTime::now() - Duration::from_secs(2);
    let first: Vec<EventRecord> = (0..3).map(|n| event(n, 100, None)).collect();
    for s in [&db.store as &dyn Storage, &memory] {
        s.append_events(&repo(), &j, &first).expect("append");
    }
    let one = db
        .store
        .event_log_entry(&repo(), &j)
        .expect("entry")
        .expect("a log");
    assert_eq!(
        one.bytes,
        memory
            .event_log_entry(&repo(), &j)
            .expect("entry")
            .expect("a log")
            .bytes
    );
    assert!(one.oldest >= before && one.oldest <= one.modified);
    std::thread::sleep(Duration::from_millis(1100));
    db.store
        .append_events(&repo(), &j, &[event(3, 5, None)])
        .expect("append");
    let two = db
        .store
        .event_log_entry(&repo(), &j)
        .expect("entry")
        .expect("a log");
    assert_eq!(two.oldest, one.oldest);
    assert!(
        two.modified >= one.modified + Duration::from_secs(1),
        "{two:?}"
    );
    let policy = EventRetention::new(Retention::keep_all().with_max_count(1)).without_archive();
    let report = db
        .store
        .retain_events(&repo(), &j, &policy)
        .expect("retain");
    let three = db
        .store
        .event_log_entry(&repo(), &j)
        .expect("entry")
        .expect("a log");
    assert_eq!(three.bytes, two.bytes - report.dropped_bytes);
    assert_eq!(three.oldest, two.modified, "the first kept line's append");
    assert_eq!(three.modified, two.modified);
    // Every line dropped: the log stays (as in the other stores), empty.
    let policy = EventRetention::new(Retention::keep_all().with_max_count(0)).without_archive();
    db.store
        .retain_events(&repo(), &j, &policy)
        .expect("retain");
    let four = db
        .store
        .event_log_entry(&repo(), &j)
        .expect("entry")
        .expect("a log");
    assert_eq!((four.bytes, four.oldest), (0, four.modified));
    assert_eq!(db.store.event_logs(&repo()).expect("logs"), [j]);
}

/// `(pid, state_change)` of every server process of the store but the one asking.
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
fn a_waiting_call_runs_no_query_while_idle_and_wakes_at_an_append() {
    let Some(db) = TestDb::new() else { return };
    let j = job("mapreduce-1");
    db.store
        .append_events(&repo(), &j, &[event(0, 1, None)])
        .expect("append");
    let (_, at) = numbers(&db.store, &j, &EventCursor::START);
    let (woke, waited, before, after) = std::thread::scope(|s| {
        let call = s.spawn(|| {
            let start = Instant::now();
            let woke = db
                .store
                .wait_for_events(&repo(), &j, &at, Duration::from_secs(3))
                .expect("wait");
            (woke, start.elapsed())
        });
        std::thread::sleep(Duration::from_millis(700));
        let before = activity(&db);
        std::thread::sleep(Duration::from_millis(1500));
        let after = activity(&db);
        let (woke, waited) = call.join().expect("waiting call");
        (woke, waited, before, after)
    });
    assert!(!woke);
    assert!(waited >= Duration::from_secs(3), "{waited:?}");
    assert_eq!(after, before, "a query ran while the call waited");
    let other = db.reopen();
    let latency = std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(300));
            other
                .append_events(&repo(), &j, &[event(1, 1, None)])
                .expect("append");
        });
        let start = Instant::now();
        assert!(
            db.store
                .wait_for_events(&repo(), &j, &at, Duration::from_secs(30))
                .expect("wait")
        );
        start.elapsed()
    });
    assert!(latency < Duration::from_secs(5), "woke after {latency:?}");
    eprintln!(
        "wait_for_events: woken {:.0} ms after a 300 ms delay",
        latency.as_secs_f64() * 1000.0
    );
    assert_eq!(numbers(&db.store, &j, &at).0, [1]);
}

#[test]
fn a_follower_goes_on_after_a_trim_and_starts_over_after_a_deletion() {
    let Some(db) = TestDb::new() else { return };
    let j = job("mapreduce-1");
    let batch: Vec<EventRecord> = (0..10).map(|n| event(n, 1, None)).collect();
    db.store
        .append_events(&repo(), &j, &batch[..5])
        .expect("append");
    let mut f = db
        .store
        .follow(&repo(), &j, &storage_core::EventCursor::START)
        .expect("follow");
    let mut seen = Vec::new();
    let take = |f: &mut storage_postgres::Follower, seen: &mut Vec<(u64, u64)>| {
        f.next(Duration::from_secs(5), &mut |seq, e| {
            seen.push((seq, e.json()["event"]["n"].as_u64().expect("n")));
        })
        .expect("next")
    };
    assert_eq!(take(&mut f, &mut seen), 5);
    db.store
        .append_events(&repo(), &j, &batch[5..])
        .expect("append");
    let policy = EventRetention::new(Retention::keep_all().with_max_count(2)).without_archive();
    db.store
        .retain_events(&repo(), &j, &policy)
        .expect("retain");
    seen.clear();
    assert_eq!(take(&mut f, &mut seen), 2);
    assert_eq!(seen, [(8, 8), (9, 9)]);
    db.store.delete_event_log(&repo(), &j).expect("delete");
    db.store
        .append_events(&repo(), &j, &batch[..3])
        .expect("append");
    seen.clear();
    assert_eq!(take(&mut f, &mut seen), 3);
    assert_eq!(seen, [(0, 0), (1, 1), (2, 2)]);
    assert_eq!(f.seq(), 3);
}

/// Appenders, batches each, events per batch, in the tests with appenders at work.
const WRITERS: u64 = 4;
const BATCHES: u64 = 60;
const SIZE: u64 = 5;

/// `(writer, n)` of an appender's event.
fn origin(e: &serde_json::Map<String, serde_json::Value>) -> (u64, u64) {
    (
        e["event"]["writer"].as_u64().expect("writer"),
        e["event"]["n"].as_u64().expect("n"),
    )
}

fn writer_batch(writer: u64, batch: u64, size: u64) -> Vec<EventRecord> {
    (0..size)
        .map(|i| {
            EventRecord::from_json(json!({
                "event": {"event_type": "x", "writer": writer, "n": batch * size + i}
            }))
            .expect("object")
        })
        .collect()
}

#[test]
fn appenders_at_work_lose_nothing_to_trims_every_line_is_archived_or_kept_once_in_order() {
    let Some(db) = TestDb::new() else { return };
    let j = job("mapreduce-1");
    let done = AtomicBool::new(false);
    let archives = std::thread::scope(|s| {
        let trimmer = s.spawn(|| {
            let mut names = Vec::new();
            let policy = EventRetention::new(Retention::keep_all().with_max_count(7));
            while !done.load(Ordering::Relaxed) {
                let report = db
                    .store
                    .retain_events(&repo(), &j, &policy)
                    .expect("retain");
                names.extend(report.archive);
                std::thread::sleep(Duration::from_millis(15));
            }
            names
        });
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let store = db.reopen();
                let j = &j;
                s.spawn(move || {
                    for b in 0..BATCHES {
                        store
                            .append_events(&repo(), j, &writer_batch(w, b, SIZE))
                            .expect("append");
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().expect("writer");
        }
        done.store(true, Ordering::Relaxed);
        trimmer.join().expect("trimmer")
    });
    assert!(
        archives.len() > 3,
        "only {} trims archived anything",
        archives.len()
    );
    // The archives in the order they were made, then what the log kept:
    // every line exactly once, each batch whole, each writer in order.
    let mut all = Vec::new();
    for name in &archives {
        let gz = db.store.event_archive(name).expect("read").expect("kept");
        for line in gunzip(&gz).lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("json");
            all.push(origin(v.as_object().expect("an object")));
        }
    }
    let mut kept = Vec::new();
    db.store
        .read_events(&repo(), &j, &mut |e| kept.push(origin(e.json())))
        .expect("read");
    assert!(kept.len() >= 7);
    all.extend(kept);
    assert_eq!(all.len() as u64, WRITERS * BATCHES * SIZE);
    let mut next: BTreeMap<u64, u64> = BTreeMap::new();
    for (i, (w, n)) in all.iter().enumerate() {
        let expected = next.entry(*w).or_insert(0);
        assert_eq!(n, expected, "writer {w} out of order at {i}");
        if n % SIZE != 0 {
            assert_eq!(all[i - 1], (*w, n - 1), "a batch split at {i}");
        }
        *expected += 1;
    }
}

#[test]
fn appenders_at_work_during_deletions_land_whole_before_or_after_each() {
    let Some(db) = TestDb::new() else { return };
    let j = job("mapreduce-1");
    let done = AtomicBool::new(false);
    let deletions = std::thread::scope(|s| {
        let deleter = s.spawn(|| {
            let mut n = 0;
            while !done.load(Ordering::Relaxed) {
                n += u32::from(db.store.delete_event_log(&repo(), &j).expect("delete"));
                std::thread::sleep(Duration::from_millis(15));
            }
            n
        });
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let store = db.reopen();
                let j = &j;
                s.spawn(move || {
                    for b in 0..BATCHES {
                        store
                            .append_events(&repo(), j, &writer_batch(w, b, SIZE))
                            .expect("append");
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().expect("writer");
        }
        done.store(true, Ordering::Relaxed);
        deleter.join().expect("deleter")
    });
    assert!(deletions > 3, "only {deletions} deletions found a log");
    // After the last deletion: every batch appended since is there, and
    // what the log holds is whole batches, each writer in order, seq from 0.
    for w in 0..WRITERS {
        db.store
            .append_events(&repo(), &j, &writer_batch(w, BATCHES, SIZE))
            .expect("append");
    }
    let mut all = Vec::new();
    db.store
        .read_events(&repo(), &j, &mut |e| all.push(origin(e.json())))
        .expect("read");
    let mut raw = db.raw();
    let first: i64 = raw
        .query_one("SELECT min(seq) FROM events", &[])
        .expect("min")
        .get(0);
    assert_eq!(first, 0, "a new log starts at 0");
    let mut last: BTreeMap<u64, u64> = BTreeMap::new();
    for (i, (w, n)) in all.iter().enumerate() {
        if n % SIZE != 0 {
            assert_eq!(all[i - 1], (*w, n - 1), "a batch split at {i}");
        } else {
            assert!(
                i + usize::try_from(SIZE).expect("small") <= all.len(),
                "a batch cut off at {i}"
            );
        }
        if let Some(prev) = last.insert(*w, *n) {
            assert!(*n > prev, "writer {w} out of order at {i}");
        }
    }
    for w in 0..WRITERS {
        assert_eq!(
            last.get(&w),
            Some(&(BATCHES * SIZE + SIZE - 1)),
            "writer {w}'s last batch"
        );
    }
}

//! Event logs: torn tails, corrupt lines, repair before append, file order.

use std::fs;

use serde_json::json;

use super::*;

fn ev(n: u64) -> EventRecord {
    EventRecord::from_json(json!({"id": n, "event": {"job_id": "mapreduce-1"}})).expect("object")
}

fn collect(dir: &Path) -> Result<(Vec<EventRecord>, EventLogSummary)> {
    let mut seen = Vec::new();
    let s = read(dir, &mut |e| seen.push(e))?;
    Ok((seen, s))
}

#[test]
fn a_torn_last_line_is_reported_and_earlier_records_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(
        dir.path().join("events.jsonl"),
        "{\"id\":1}\n{\"id\":2}\n{\"id\":3,\"eve",
    )
    .expect("write");
    let (seen, summary) = collect(dir.path()).expect("read");
    assert_eq!(seen.len(), 2);
    assert_eq!(
        summary.torn_tails,
        [TornTail {
            file: "events.jsonl".into(),
            line: 3,
            bytes: 12
        }]
    );
}

#[test]
fn a_corrupt_middle_line_is_an_error_with_its_line_number() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("events.jsonl");
    fs::write(&log, "{\"id\":1}\nnot json\n{\"id\":3}\n").expect("write");
    let err = collect(dir.path()).expect_err("corrupt");
    match &err {
        Error::Corrupt { path, line, .. } => {
            assert_eq!(path, &log);
            assert_eq!(*line, Some(2));
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(err.to_string().contains("at line 2 is corrupt"), "{err}");
}

#[test]
fn an_append_after_a_crash_moves_the_torn_fragment_aside() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("events.jsonl");
    fs::write(&log, "{\"id\":1}\n{\"id\":2,\"tor").expect("write");
    append(dir.path(), &dir.path().join("events.jsonl"), &[ev(3)]).expect("append");
    let (seen, summary) = collect(dir.path()).expect("read");
    assert_eq!(seen.len(), 2, "records 1 and 3");
    assert!(summary.torn_tails.is_empty());
    let side = dir.path().join("events.jsonl.torn-9");
    assert_eq!(fs::read(&side).expect("side file kept"), b"{\"id\":2,\"tor");
}

#[test]
fn files_are_read_in_name_order_and_others_ignored() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(
        dir.path().join("events-20250906_082000.jsonl"),
        "{\"id\":1}\n",
    )
    .expect("w");
    fs::write(dir.path().join("events.jsonl"), "{\"id\":2}\n").expect("w");
    fs::write(dir.path().join(".tmp-1-0-x.jsonl"), "garbage").expect("w");
    fs::write(dir.path().join("events.jsonl.torn-5"), "garbage").expect("w");
    let (seen, _) = collect(dir.path()).expect("read");
    let ids: Vec<_> = seen.iter().map(|e| e.json()["id"].clone()).collect();
    assert_eq!(ids, [json!(1), json!(2)]);
}

#[test]
fn a_later_torn_fragment_at_the_same_offset_never_replaces_a_kept_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("events.jsonl");
    let side = |name: &str| fs::read(dir.path().join(name)).expect(name);
    // Crash 1 tears a line at offset 9; the next append moves it aside.
    fs::write(&log, "{\"id\":1}\n{\"id\":2,\"first").expect("write");
    append(dir.path(), &log, &[ev(3)]).expect("append");
    // Crash 2 tears a different line at the same offset (the log was cut back
    // to 9 bytes by hand, as a restore from backup would).
    fs::write(&log, "{\"id\":1}\n{\"id\":4,\"second").expect("write");
    append(dir.path(), &log, &[ev(5)]).expect("append");
    // Crash 3 leaves the same bytes as crash 1: kept once is enough.
    fs::write(&log, "{\"id\":1}\n{\"id\":2,\"first").expect("write");
    append(dir.path(), &log, &[ev(6)]).expect("append");
    assert_eq!(side("events.jsonl.torn-9"), b"{\"id\":2,\"first");
    assert_eq!(side("events.jsonl.torn-9-2"), b"{\"id\":4,\"second");
    let mut names: Vec<_> = fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf8"))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            ".log",
            "events.jsonl",
            "events.jsonl.torn-9",
            "events.jsonl.torn-9-2"
        ],
        "no temp file left, no duplicate of the same fragment"
    );
}

#[test]
fn lines_over_the_limit_are_never_loaded_and_never_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("events.jsonl");
    let huge = "x".repeat(MAX_LINE_BYTES + 10);
    // As a torn tail: skipped and counted, earlier records kept.
    fs::write(&log, format!("{{\"id\":1}}\n{{\"id\":2,\"p\":\"{huge}")).expect("write");
    let (seen, summary) = collect(dir.path()).expect("read");
    assert_eq!(seen.len(), 1);
    assert_eq!(summary.torn_tails.len(), 1);
    assert_eq!(summary.torn_tails[0].bytes, huge.len() as u64 + 13);
    // As a whole line in the middle: corrupt, with its line number.
    fs::write(&log, format!("{{\"id\":1}}\n{huge}\n{{\"id\":3}}\n")).expect("write");
    let err = collect(dir.path()).expect_err("over-huge line");
    assert!(
        matches!(err, Error::Corrupt { line: Some(2), .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("move it out of the log"), "{err}");
    // Exactly at the limit (newline included) is a normal line.
    let fits = format!("{{\"p\":\"{}\"}}\n", "y".repeat(MAX_LINE_BYTES - 9));
    assert_eq!(fits.len(), MAX_LINE_BYTES);
    fs::write(&log, &fits).expect("write");
    assert_eq!(collect(dir.path()).expect("read").0.len(), 1);
    // The appender refuses what a reader would not load.
    let big = EventRecord::from_json(json!({"p": huge})).expect("object");
    let err = append(dir.path(), &log, &[big]).expect_err("too huge");
    assert!(err.to_string().contains("cannot append to"), "{err}");
    assert_eq!(fs::read(&log).expect("read"), fits.as_bytes());
}

fn read_on(dir: &Path, from: &EventCursor) -> (Vec<u64>, EventLogSummary) {
    let mut ns = Vec::new();
    let s = read_from(dir, from, ReadMode::Strict, &mut |e| {
        ns.push(e.json()["id"].as_u64().expect("id"));
    })
    .expect("read");
    (ns, s)
}

/// `ident`'s promise for a crash between a retention's new epoch and its
/// rename: the cut is recorded but the old file stays, so a cursor of the
/// epoch before must not be carried over the cut (it would land inside the
/// old file and skip records): its fingerprint differs, and the read
/// starts over and says so, delivering every record.
#[test]
fn a_cut_recorded_but_never_made_restarts_old_cursors_instead_of_skipping() {
    let dir = tempfile::tempdir().expect("tempdir");
    let active = dir.path().join("events.jsonl");
    append(dir.path(), &active, &(0..10).map(ev).collect::<Vec<_>>()).expect("append");
    let (_, at_end) = read_on(dir.path(), &EventCursor::START);
    // What a retention keeping the last 5 records would record, fingerprint
    // included; the crash comes before its rename.
    let bytes = fs::read(&active).expect("log");
    let dropped = bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .nth(4)
        .map(|(i, _)| i as u64 + 1)
        .expect("five lines");
    let kept = dir.path().join("kept");
    fs::write(&kept, &bytes[usize::try_from(dropped).expect("small")..]).expect("write");
    let head_len = (bytes.len() as u64 - dropped).min(ident::HEAD_BYTES);
    let head = ident::head_of(&File::open(&kept).expect("open"), &kept, head_len).expect("head");
    let mut lock = LogLock::exclusive(dir.path()).expect("lock");
    lock.begin_epoch(ident::Cut {
        segment: "events.jsonl".into(),
        dropped,
        head_len,
        head,
    })
    .expect("epoch");
    drop(lock);
    append(dir.path(), &active, &[ev(10), ev(11)]).expect("append");
    let (got, summary) = read_on(dir.path(), &at_end.next);
    assert!(
        summary.restarted,
        "not carried over a cut that was never made"
    );
    assert_eq!(got, (0..12).collect::<Vec<_>>(), "nothing skipped");
}

/// `ident`'s promise for a log that had files before its `.log` (an older
/// Prodigy's, or a migrated one): cursors read from it before (generation
/// 0) keep fitting once this store's first append makes `.log`.
#[test]
fn cursors_of_a_log_without_identity_keep_fitting_once_it_gets_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(
        dir.path().join("events-20250906_082000.jsonl"),
        "{\"id\":0}\n{\"id\":1}\n{\"id\":2}\n",
    )
    .expect("write");
    let (seen, before) = read_on(dir.path(), &EventCursor::START);
    assert_eq!((seen.len(), before.next.generation), (3, 0));
    append(dir.path(), &dir.path().join("events.jsonl"), &[ev(3)]).expect("append");
    let (got, summary) = read_on(dir.path(), &before.next);
    assert!(!summary.restarted, "the old cursor still fits");
    assert_eq!(got, [3], "exactly what came after it");
}

//! A global event log that names more jobs than the split keeps big write
//! buffers for is still split completely, line for line.

use std::fmt::Write as _;

use storage_fs::FsStorage;
use storage_migrate::{MigrateOptions, Outcome, migrate};
use storage_tests::Sandbox;

#[test]
fn a_log_naming_two_hundred_jobs_is_split_line_for_line() {
    let sb = Sandbox::new();
    let log = sb
        .project()
        .join(".prodigy/mapreduce/events/global/events.jsonl");
    fs_err::create_dir_all(log.parent().expect("parent")).expect("mkdir");
    let jobs = 200;
    let mut text = String::new();
    for n in 0..jobs * 5 {
        let _ = writeln!(
            text,
            "{{\"id\":\"evt-{n}\",\"event\":{{\"job_id\":\"mapreduce-{:05}\"}}}}",
            n % jobs
        );
    }
    fs_err::write(&log, &text).expect("write");
    let store = FsStorage::open(sb.store()).expect("open");
    let r = migrate(&store, &sb.project(), &MigrateOptions::default()).expect("migrate");
    assert_eq!(r.outcome, Outcome::Migrated);
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    let events = sb.store().join("events/project");
    let mut found = 0;
    for j in 0..jobs {
        let dir = events.join(format!("mapreduce-{j:05}"));
        let files: Vec<_> = fs_err::read_dir(&dir)
            .expect("a job's events")
            .map(|e| e.expect("entry").path())
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
        let body = fs_err::read_to_string(&files[0]).expect("read");
        let job = format!("\"mapreduce-{j:05}\"");
        let want: Vec<&str> = text.lines().filter(|l| l.contains(&job)).collect();
        let got: Vec<&str> = body.lines().collect();
        assert!(body.ends_with('\n'), "job {j}: whole lines");
        assert_eq!(got, want, "job {j}: its lines, in order");
        found += body.lines().count();
    }
    assert_eq!(found, jobs * 5);
}

//! Property tests: random legacy trees (storage and user files, unicode
//! names, sizes from empty to 256 KiB, nested and empty directories).
//! Migration keeps every byte (checked by manifest: path and content), and
//! rollback restores the exact tree (types, modes, mtimes, bytes).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use proptest::prelude::*;
use storage_fs::FsStorage;
use storage_migrate::{MigrateOptions, Outcome, RollbackOptions, legacy};
use storage_tests::Sandbox;
use storage_tests::fixture::snapshot;

/// Path templates: storage files Prodigy wrote, and files users keep there.
fn path_strategy() -> impl Strategy<Value = String> {
    let name = "[a-z0-9_é名-]{1,12}";
    prop_oneof![
        name.prop_map(|n| format!("session-{n}.json")),
        Just("session_state.json".to_owned()),
        name.prop_map(|n| format!("mapreduce/jobs/mapreduce-{n}/checkpoint-v1.json")),
        name.prop_map(|n| format!("mapreduce/jobs/mapreduce-{n}/metadata.json")),
        name.prop_map(|n| format!("mapreduce/dlq/mapreduce-1/items/item_{n}.json")),
        name.prop_map(|n| format!("mapreduce/unknown/{n}")),
        name.prop_map(|n| format!("history/{n}.json")),
        name.prop_map(|n| format!("cache/{n}.tmp")),
        name.prop_map(|n| format!("checkpoints/workflow-{n}.checkpoint.json")),
        name.prop_map(|n| format!("events/{n}/{n}.jsonl")),
        Just("mapreduce/events/global/events.jsonl".to_owned()),
        name.prop_map(|n| format!("{n}.md")),
        name.prop_map(|n| format!("context/{n}.json")),
        name.prop_map(|n| format!("history/{n}.txt")),
        name.prop_map(|n| format!("deep/{n}/{n}/{n}.py")),
    ]
}

fn content_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        proptest::collection::vec(any::<u8>(), 0..512),
        "[ -~]{0,200}".prop_map(
            |s| format!("{{\"session_id\": \"session-x\", \"s\": \"{s}\"}}").into_bytes()
        ),
        "[a-z_0-9-]{1,10}".prop_map(|j| format!(
            "{{\"event\":{{\"job_id\":\"mapreduce-{j}\"}}}}\n{{\"x\":1}}\n"
        )
        .into_bytes()),
        (0usize..262_144).prop_map(|n| vec![b'x'; n]),
    ]
}

fn tree_strategy() -> impl Strategy<Value = (BTreeMap<String, Vec<u8>>, Vec<String>)> {
    (
        proptest::collection::btree_map(path_strategy(), content_strategy(), 1..24),
        proptest::collection::vec("[a-z]{1,6}(/[a-z]{1,6}){0,2}", 0..3),
    )
}

fn files(root: &std::path::Path) -> BTreeMap<PathBuf, Vec<u8>> {
    snapshot(root)
        .into_iter()
        .filter_map(|(p, n)| n.content.map(|c| (p, c)))
        .collect()
}

/// One step of an older Prodigy's life beside `migrate` (issue 19).
#[derive(Clone, Debug)]
enum Step {
    /// It appends `.1` lines of job `.0` to the project's global event log.
    Appends(u8, u8),
    /// `migrate` (what Prodigy's start-up runs too).
    Migrate,
    /// `rollback` of the latest migration.
    Rollback,
}

fn step_strategy() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0u8..3, 1u8..6).prop_map(|(j, n)| Step::Appends(j, n)),
        2 => Just(Step::Migrate),
        1 => Just(Step::Rollback),
    ]
}

/// How many times each `"id":"l<N>"` line is where a reader finds it: in
/// the store's event logs (`events/`) and in the project's legacy log.
fn line_counts(store: &std::path::Path, project: &std::path::Path) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let mut count = |bytes: &[u8]| {
        for line in bytes.split(|b| *b == b'\n') {
            let text = String::from_utf8_lossy(line);
            if let Some(rest) = text.strip_prefix("{\"id\":\"l")
                && let Some(end) = rest.find('"')
            {
                *out.entry(format!("l{}", &rest[..end])).or_default() += 1;
            }
        }
    };
    if store.join("events").is_dir() {
        for (_, bytes) in files(&store.join("events")) {
            count(&bytes);
        }
    }
    if let Ok(bytes) = fs_err::read(project.join(".prodigy/mapreduce/events/global/events.jsonl")) {
        count(&bytes);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(24),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn migrate_keeps_every_byte_and_rollback_restores_the_exact_tree((tree, empty_dirs) in tree_strategy()) {
        let sb = Sandbox::new();
        let legacy_dir = sb.project().join(".prodigy");
        for (rel, bytes) in &tree {
            let path = legacy_dir.join(rel);
            // A name may be both a file and a directory prefix; keep the first.
            if path.ancestors().skip(1).any(std::path::Path::is_file) {
                continue;
            }
            if fs_err::create_dir_all(path.parent().expect("parent")).is_ok() && !path.is_dir() {
                fs_err::write(&path, bytes).expect("write");
            }
        }
        for d in &empty_dirs {
            let _ = std::fs::create_dir_all(legacy_dir.join("empty").join(d));
        }
        let before = snapshot(&sb.project());
        let before_files = files(&legacy_dir);
        let store = FsStorage::open(sb.store()).expect("open");
        let report = storage_migrate::migrate(&store, &sb.project(), &MigrateOptions::default()).expect("migrate");

        // Content equality by manifest: every storage file is in the backup
        // byte for byte; every user file is where it was.
        let storage: Vec<&PathBuf> = before_files
            .keys()
            .filter(|p| legacy::classify(&p.iter().map(|c| c.to_str()).collect::<Vec<_>>()).is_storage())
            .collect();
        prop_assert_eq!(report.legacy_files, storage.len() as u64);
        if report.outcome == Outcome::Migrated {
            let backup = report.backup.clone().expect("backup");
            let backed_up = files(&backup);
            for p in &storage {
                prop_assert_eq!(backed_up.get(*p), before_files.get(*p), "{}", p.display());
            }
        }
        let after_files = files(&legacy_dir);
        for (p, bytes) in &after_files {
            prop_assert_eq!(Some(bytes), before_files.get(p), "{} changed", p.display());
        }
        prop_assert_eq!(after_files.len() + storage.len(), before_files.len());

        if report.outcome == Outcome::Migrated {
            storage_migrate::rollback(&store, &sb.project(), &RollbackOptions::default()).expect("rollback");
        }
        let after = snapshot(&sb.project());
        let diff: Vec<_> = before.iter().filter(|(k, v)| after.get(*k) != Some(*v)).map(|(k, _)| k.clone())
            .chain(after.keys().filter(|k| !before.contains_key(*k)).cloned()).collect();
        prop_assert!(diff.is_empty(), "differs after rollback: {:?}", diff);
    }

    /// Issue 19: an older Prodigy appending to a project's legacy global
    /// event log between any number of migrations and rollbacks. After
    /// every step, every line it wrote is in exactly one place a reader
    /// looks: the store's job logs or the project's log, once.
    #[test]
    fn every_line_an_older_prodigy_appends_is_found_exactly_once(
        steps in proptest::collection::vec(step_strategy(), 1..12)
    ) {
        let sb = Sandbox::new();
        let project = sb.project();
        let log = project.join(".prodigy/mapreduce/events/global/events.jsonl");
        let store = FsStorage::open(sb.store()).expect("open");
        let mut written = 0u32;
        for step in &steps {
            match step {
                Step::Appends(job, n) => {
                    fs_err::create_dir_all(log.parent().expect("parent")).expect("mkdir");
                    let mut text = String::new();
                    for _ in 0..*n {
                        let _ = writeln!(
                            text,
                            "{{\"id\":\"l{written}\",\"event\":{{\"job_id\":\"mapreduce-{job}\"}}}}"
                        );
                        written += 1;
                    }
                    std::io::Write::write_all(
                        &mut fs_err::OpenOptions::new().create(true).append(true).open(&log).expect("open"),
                        text.as_bytes(),
                    )
                    .expect("append");
                }
                Step::Migrate => {
                    storage_migrate::migrate(&store, &project, &MigrateOptions::default())
                        .expect("migrate");
                }
                Step::Rollback => {
                    // Refused (nothing to undo, or the log exists again with
                    // newer lines): then nothing changed, which the check
                    // below sees as well.
                    let _ = storage_migrate::rollback(&store, &project, &RollbackOptions::default());
                }
            }
            let counts = line_counts(&sb.store(), &project);
            for n in 0..written {
                let id = format!("l{n}");
                prop_assert_eq!(counts.get(&id).copied().unwrap_or(0), 1, "{} after {:?}", id, step);
            }
        }
    }
}

/// One step of an older Prodigy's life beside this one, with the start-up
/// hook, rewritten documents and appends during a migration (issue 19).
#[derive(Clone, Debug)]
enum Life {
    /// It appends `.1` lines of job `.0` to the project's global event log.
    Appends(u8, u8),
    /// It writes its job checkpoint again: the next version, written later.
    Rewrite,
    /// `migrate`.
    Migrate,
    /// Prodigy's start-up hook (`ensure_migrated`).
    StartUp,
    /// `rollback` of the latest migration (or run).
    Rollback,
    /// `migrate` while it goes on appending on another thread.
    MigrateWhileAppending(u8),
}

fn life_strategy() -> impl Strategy<Value = Life> {
    prop_oneof![
        3 => (0u8..3, 1u8..6).prop_map(|(j, n)| Life::Appends(j, n)),
        2 => Just(Life::Rewrite),
        2 => Just(Life::Migrate),
        2 => Just(Life::StartUp),
        1 => Just(Life::Rollback),
        2 => (1u8..40).prop_map(Life::MigrateWhileAppending),
    ]
}

/// Appends lines `l<first>`… (`n` of them, one write each) to `log`.
fn append_lines(log: &std::path::Path, job: u8, first: u32, n: u32) {
    fs_err::create_dir_all(log.parent().expect("parent")).expect("mkdir");
    for id in first..first + n {
        let line = format!("{{\"id\":\"l{id}\",\"event\":{{\"job_id\":\"mapreduce-{job}\"}}}}\n");
        std::io::Write::write_all(
            &mut fs_err::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .expect("open"),
            line.as_bytes(),
        )
        .expect("append");
    }
}

/// Every file under `dir` whose bytes are `bytes` (none if `dir` is absent).
fn holders(dir: &std::path::Path, bytes: &[u8]) -> usize {
    if !dir.is_dir() {
        return 0;
    }
    files(dir)
        .values()
        .filter(|b| b.as_slice() == bytes)
        .count()
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(16),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Issue 19: an older Prodigy appending to its legacy global log (also
    /// while a migration runs) and writing its job checkpoint again, between
    /// any number of migrations, start-ups and rollbacks. After every step no
    /// line is in the store twice and every line is somewhere a reader looks
    /// (the store's job logs, the project's log), and the last version of the
    /// checkpoint is what the store or the project serves; after a final
    /// `migrate`, every line is in the store exactly once, the store serves
    /// the last version, and every version the store ever served is kept.
    #[test]
    fn what_an_older_prodigy_writes_beside_migrations_and_start_ups_is_never_lost_or_doubled(
        steps in proptest::collection::vec(life_strategy(), 1..12)
    ) {
        let sb = Sandbox::new();
        let project = sb.project();
        let log = project.join(".prodigy/mapreduce/events/global/events.jsonl");
        let legacy_doc = project.join(".prodigy/mapreduce/jobs/mapreduce-7/checkpoint-v1.json");
        let store_doc = sb.store().join("state/project/mapreduce/jobs/mapreduce-7/checkpoint-v1.json");
        let store = FsStorage::open(sb.store()).expect("open");
        let mut written = 0u32;
        let mut versions = 0u32;
        let mut served: std::collections::BTreeSet<Vec<u8>> = std::collections::BTreeSet::new();
        let version = |v: u32| format!("{{\"job_id\":\"mapreduce-7\",\"v\":{v}}}").into_bytes();
        let check = |written: u32, versions: u32, step: &Life, served: &mut std::collections::BTreeSet<Vec<u8>>| -> Result<(), TestCaseError> {
            let in_store = {
                let mut only_store = BTreeMap::new();
                if sb.store().join("events").is_dir() {
                    for (_, bytes) in files(&sb.store().join("events")) {
                        for line in bytes.split(|b| *b == b'\n') {
                            let text = String::from_utf8_lossy(line);
                            if let Some(rest) = text.strip_prefix("{\"id\":\"l")
                                && let Some(end) = rest.find('"')
                            {
                                *only_store.entry(format!("l{}", &rest[..end])).or_insert(0usize) += 1;
                            }
                        }
                    }
                }
                only_store
            };
            let anywhere = line_counts(&sb.store(), &project);
            for n in 0..written {
                let id = format!("l{n}");
                prop_assert!(in_store.get(&id).copied().unwrap_or(0) <= 1, "{} twice in the store after {:?}", id, step);
                prop_assert!(anywhere.get(&id).copied().unwrap_or(0) >= 1, "{} lost after {:?}", id, step);
            }
            if versions > 0 {
                let last = version(versions - 1);
                let at_store = fs_err::read(&store_doc).ok();
                let at_project = fs_err::read(&legacy_doc).ok();
                prop_assert!(
                    at_store.as_ref() == Some(&last) || at_project.as_ref() == Some(&last),
                    "the last version is neither served nor in the project after {:?}: store {:?}",
                    step, at_store.map(|b| String::from_utf8_lossy(&b).into_owned())
                );
                if let Some(b) = at_store {
                    served.insert(b);
                }
            }
            Ok(())
        };
        for step in &steps {
            match step {
                Life::Appends(job, n) => {
                    append_lines(&log, *job, written, u32::from(*n));
                    written += u32::from(*n);
                }
                Life::Rewrite => {
                    fs_err::create_dir_all(legacy_doc.parent().expect("parent")).expect("mkdir");
                    fs_err::write(&legacy_doc, version(versions)).expect("write");
                    // Written later than every earlier version (a clock of
                    // its own: file times may not move within a millisecond).
                    fs_err::File::options().write(true).open(&legacy_doc).expect("open")
                        .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000 + u64::from(versions)))
                        .expect("mtime");
                    versions += 1;
                }
                Life::Migrate => {
                    storage_migrate::migrate(&store, &project, &MigrateOptions::default()).expect("migrate");
                }
                Life::StartUp => {
                    let out = storage_migrate::ensure_migrated(&store, &project);
                    prop_assert!(!matches!(out, storage_migrate::AutoOutcome::Failed(_)), "start-up: {:?}", out);
                }
                Life::Rollback => {
                    // Refused (nothing to undo, or a file exists again with
                    // newer content): then nothing changed.
                    let _ = storage_migrate::rollback(&store, &project, &RollbackOptions::default());
                }
                Life::MigrateWhileAppending(n) => {
                    let (log2, first, n) = (log.clone(), written, u32::from(*n));
                    let writer = std::thread::spawn(move || append_lines(&log2, 1, first, n));
                    let out = storage_migrate::migrate(&store, &project, &MigrateOptions::default());
                    writer.join().expect("writer");
                    written += n;
                    // A file changed while it was staged stops the run with
                    // nothing published; anything else is a failure.
                    if let Err(e) = out {
                        prop_assert!(matches!(e, storage_migrate::Error::Verify { .. }), "{}", e);
                    }
                }
            }
            check(written, versions, step, &mut served)?;
        }
        storage_migrate::migrate(&store, &project, &MigrateOptions::default()).expect("final migrate");
        let anywhere = line_counts(&sb.store(), &project);
        for n in 0..written {
            let id = format!("l{n}");
            prop_assert_eq!(anywhere.get(&id).copied().unwrap_or(0), 1, "{} after the final migrate", id);
        }
        prop_assert!(!log.exists(), "the project's log is imported");
        if versions > 0 {
            check(written, versions, &Life::Migrate, &mut served)?;
            prop_assert_eq!(fs_err::read(&store_doc).ok(), Some(version(versions - 1)));
            for v in &served {
                prop_assert!(holders(&sb.store(), v) + holders(&project, v) >= 1, "{} dropped", String::from_utf8_lossy(v));
            }
        }
    }
}

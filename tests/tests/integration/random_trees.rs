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

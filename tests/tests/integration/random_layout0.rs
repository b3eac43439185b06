//! Property tests: random stores in the layout Prodigy's own code wrote
//! (layout 0): every shape of `global-layout-0.md` with random repository,
//! job, session and item names (unicode and spaces included), random
//! contents, and files no Prodigy wrote. The upgrade keeps every byte
//! (checked by content: each file is where it was, or its bytes are at
//! exactly one new place outside the backup), and the downgrade gives back
//! the exact tree (types, modes, mtimes, bytes). And before any upgrade,
//! the store serves such a root as it is: what it reads there is what it
//! reads after the upgrade (one root, two layouts).

use std::collections::BTreeMap;
use std::path::PathBuf;

use proptest::prelude::*;
use storage_fs::FsStorage;
use storage_migrate::{DowngradeOptions, Outcome, UpgradeOptions};
use storage_tests::Sandbox;
use storage_tests::fixture::{Node, snapshot};

/// Path templates of layout 0, and files that are not Prodigy's.
fn path_strategy() -> impl Strategy<Value = String> {
    let id = "[a-z0-9é名 _-]{1,10}";
    prop_oneof![
        (id, id).prop_map(|(r, j)| format!(
            "events/{r}/mapreduce-{j}/events-20250906_0820{}.jsonl",
            j.len()
        )),
        (id, id).prop_map(|(r, j)| format!("events/{r}/mapreduce-{j}/events-1.2.jsonl.gz")),
        Just("events/archive/events_archive_20250901_000000.jsonl.gz".to_owned()),
        (id, id, id).prop_map(|(r, j, i)| format!(
            "dlq/{r}/mapreduce-{j}/mapreduce/dlq/mapreduce-{j}/items/item-{i}.json"
        )),
        (id, id).prop_map(|(r, j)| format!(
            "dlq/{r}/mapreduce-{j}/mapreduce/dlq/mapreduce-{j}/index.json"
        )),
        (id, id).prop_map(|(r, j)| format!(
            "state/{r}/mapreduce/jobs/mapreduce-{j}/checkpoint-v1.json"
        )),
        (id, id)
            .prop_map(|(r, j)| format!("state/{r}/mapreduce/jobs/mapreduce-{j}/checkpoint-v2.tmp")),
        (id, id).prop_map(|(r, w)| format!("state/{r}/checkpoints/workflow-{w}.checkpoint.json")),
        id.prop_map(|j| format!(
            "state/reduce_checkpoints/mapreduce-{j}/reduce-checkpoint-v1-20250906_083000.json"
        )),
        id.prop_map(|r| format!("state/{r}/sessions/session_state.json")),
        (id, id).prop_map(|(r, s)| format!("state/{r}/mappings/session-{s}.json")),
        id.prop_map(|s| format!("sessions/session-{s}.json")),
        id.prop_map(|s| format!("sessions/session-{s}/checkpoint.json")),
        id.prop_map(|k| format!("resume_locks/mapreduce-{k}.lock")),
        (id, id).prop_map(|(r, j)| format!("orphaned_worktrees/{r}/mapreduce-{j}.json")),
        (id, id).prop_map(|(r, f)| format!("logs/{r}/{f}.log")),
        id.prop_map(|f| format!("worktrees/api/session-1/{f}.rs")),
        Just("config.yml".to_owned()),
        (id, id).prop_map(|(r, f)| format!("state/{r}/{f}.md")),
        id.prop_map(|f| format!("{f}.txt")),
    ]
}

fn content_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        proptest::collection::vec(any::<u8>(), 0..256),
        "[a-z0-9-]{1,8}".prop_map(|s| format!("{{\"session_id\": \"session-{s}\"}}").into_bytes()),
        Just(b"\x1f\x8b\x08\x00gzip".to_vec()),
        (0usize..65_536).prop_map(|n| vec![b'{'; n]),
    ]
}

fn files(root: &std::path::Path) -> BTreeMap<PathBuf, Vec<u8>> {
    snapshot(root)
        .into_iter()
        .filter(|(p, _)| !p.starts_with("migrations") && !p.starts_with("locks"))
        .filter_map(|(p, n)| n.content.map(|c| (p, c)))
        .collect()
}

fn tree(root: &std::path::Path) -> BTreeMap<PathBuf, Node> {
    snapshot(root)
        .into_iter()
        .filter(|(p, _)| !p.starts_with("migrations") && !p.starts_with("locks"))
        .collect()
}

/// What `list` calls a document: kind, repository, job, id.
type Listed = (String, Option<String>, Option<String>, Option<String>);

/// Every document the store reads, by what `list` calls it, with its bytes.
fn visible(store: &FsStorage) -> BTreeMap<Listed, Vec<u8>> {
    store
        .inventory(None)
        .expect("inventory")
        .into_iter()
        .filter(|l| l.kind != "event log")
        .map(|l| {
            let bytes = fs_err::read(&l.path).expect("a listed file reads");
            ((l.kind, l.repo, l.job, l.id), bytes)
        })
        // A corrupt document is reported by reads in place, and kept aside
        // (`legacy/.layout-0/`) by the upgrade: compared are the readable ones.
        .filter(|(_, bytes)| serde_json::from_slice::<serde_json::Value>(bytes).is_ok())
        .collect()
}

/// One step of a rollout: an older Prodigy writing a dead letter at its
/// layout-0 path, or an upgrade (the first, or a re-run).
#[derive(Clone, Debug)]
enum Step {
    /// The older Prodigy writes version `.1` of item `.0`.
    OlderWrites(u8, u32),
    /// `upgrade` (also what Prodigy's start-up runs).
    Upgrade,
}

fn step_strategy() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0u8..4, 0u32..1000).prop_map(|(i, v)| Step::OlderWrites(i, v)),
        1 => Just(Step::Upgrade),
    ]
}

/// Writes `store_files` under `root`, skipping a path that a file earlier
/// in the map already blocks (a file where a directory is needed).
fn write_files(root: &std::path::Path, store_files: &BTreeMap<String, Vec<u8>>) {
    for (rel, bytes) in store_files {
        let path = root.join(rel);
        if path.ancestors().skip(1).any(std::path::Path::is_file) {
            continue;
        }
        if fs_err::create_dir_all(path.parent().expect("parent")).is_ok() && !path.is_dir() {
            fs_err::write(&path, bytes).expect("write");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(16),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn a_layout_0_root_reads_the_same_before_and_after_its_upgrade(
        store_files in proptest::collection::btree_map(path_strategy(), content_strategy(), 1..24)
    ) {
        let sb = Sandbox::new();
        let root = sb.store();
        write_files(&root, &store_files);
        let mut untouched = files(&root);
        let layout_0 = storage_fs::has_layout_0_data(&root).expect("probe");
        let store = FsStorage::open(&root).expect("a layout-0 root opens");
        let before = visible(&store);
        if !layout_0 {
            // Nothing of layout 0 (only a worktree, say): a new store, stamped.
            untouched.insert("layout.json".into(), fs_err::read(root.join("layout.json")).expect("stamped"));
        }
        prop_assert_eq!(files(&root), untouched, "opening and reading wrote nothing");
        storage_migrate::upgrade(&store, &UpgradeOptions::default()).expect("upgrade");
        let after = visible(&FsStorage::open(&root).expect("open"));
        // A repository slot that is a session's: the upgrade moves its
        // workflow checkpoints to the session (read there before, too).
        let moved = |k: &Listed| {
            k.0 == "workflow checkpoint"
                && k.1.as_ref().is_some_and(|slot| {
                    root.join("sessions").join(format!("{slot}.json")).exists()
                        || root.join("sessions").join(slot).exists()
                })
        };
        let before: BTreeMap<_, _> = before.into_iter().filter(|(k, _)| !moved(k)).collect();
        let after: BTreeMap<_, _> = after.into_iter().filter(|(k, _)| !moved(k)).collect();
        prop_assert_eq!(before, after);
    }

    #[test]
    fn upgrade_keeps_every_byte_and_downgrade_restores_the_exact_store(
        store_files in proptest::collection::btree_map(path_strategy(), content_strategy(), 1..24)
    ) {
        let sb = Sandbox::new();
        let root = sb.store();
        write_files(&root, &store_files);
        let before = tree(&root);
        let before_files = files(&root);
        let store = FsStorage::peek(&root).expect("peek");
        let report = storage_migrate::upgrade(&store, &UpgradeOptions::default()).expect("upgrade");
        let after_files = files(&root);
        // Every byte is kept: at its place, or at exactly one new place.
        for (p, bytes) in &before_files {
            if after_files.get(p) == Some(bytes) {
                continue;
            }
            let elsewhere = after_files.values().filter(|b| *b == bytes).count();
            prop_assert!(elsewhere >= 1, "{} is gone", p.display());
        }
        // Nothing outside Prodigy's data directories moved.
        for p in before_files.keys().filter(|p| {
            p.starts_with("worktrees") || p.components().count() == 1
        }) {
            prop_assert_eq!(after_files.get(p), before_files.get(p), "{} touched", p.display());
        }
        prop_assert!(storage_fs::FsStorage::open(&root).is_ok(), "usable after the upgrade");
        if report.outcome == Outcome::Migrated {
            storage_migrate::downgrade(&store, &DowngradeOptions::default()).expect("downgrade");
            let after = tree(&root);
            let diff: Vec<_> = before.iter().filter(|(k, v)| after.get(*k) != Some(*v)).map(|(k, _)| k.clone())
                .chain(after.keys().filter(|k| !before.contains_key(*k)).cloned()).collect();
            prop_assert!(diff.is_empty(), "differs after downgrade: {:?}", diff);
        }
    }

    /// Issue 19: an older Prodigy writing dead letters at their layout-0
    /// path between any number of upgrades. After every step, through the
    /// store, each item is listed once and reads as the version written
    /// last; after a final upgrade nothing is left to import; and the
    /// downgrade through every run leaves each item's last version at its
    /// layout-0 path, as the older Prodigy would read it.
    #[test]
    fn every_dead_letter_an_older_prodigy_writes_is_read_once_as_its_last_version(
        steps in proptest::collection::vec(step_strategy(), 1..10)
    ) {
        use storage_core::{DocKey, ItemId, JobId, RepoKey, Scope, Storage};
        let sb = Sandbox::new();
        let root = sb.store();
        let job = "mapreduce-1";
        let nested = root.join(format!("dlq/api/{job}/mapreduce/dlq/{job}/items"));
        let (repo, job_id) = (RepoKey::new("api").expect("valid"), JobId::new(job).expect("valid"));
        let mut last: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        // Modification times the older Prodigy's writes get: strictly
        // increasing, whatever the clock's granularity.
        let t0 = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_001);
        let mut tick = 0u64;
        for step in &steps {
            match step {
                Step::OlderWrites(i, v) => {
                    let id = format!("item-{i}");
                    let bytes = format!("{{\"item_id\": \"{id}\", \"v\": {v}}}").into_bytes();
                    fs_err::create_dir_all(&nested).expect("mkdir");
                    let path = nested.join(format!("{id}.json"));
                    fs_err::write(&path, &bytes).expect("write");
                    tick += 1;
                    std::fs::File::options().write(true).open(&path).expect("open")
                        .set_modified(t0 + std::time::Duration::from_secs(tick)).expect("mtime");
                    last.insert(id, bytes);
                }
                Step::Upgrade => {
                    let store = FsStorage::peek(&root).expect("peek");
                    storage_migrate::upgrade(&store, &UpgradeOptions::default()).expect("upgrade");
                }
            }
            let store = FsStorage::open(&root).expect("open");
            let listed = store.list(&Scope::DeadLetters(repo.clone(), job_id.clone())).expect("list");
            prop_assert_eq!(listed.len(), last.len(), "each item listed once: {:?}", listed);
            for (id, bytes) in &last {
                let key = DocKey::DeadLetter {
                    repo: repo.clone(), job: job_id.clone(), item: ItemId::new(id).expect("valid"),
                };
                let got = store.get(&key).expect("get").expect("found");
                let want: serde_json::Value = serde_json::from_slice(bytes).expect("json");
                prop_assert_eq!(got, want, "{} after {:?}", id, step);
            }
        }
        let store = FsStorage::peek(&root).expect("peek");
        storage_migrate::upgrade(&store, &UpgradeOptions::default()).expect("upgrade");
        prop_assert!(!storage_migrate::upgrade_due(&store).expect("due"), "nothing left to import");
        if last.is_empty() {
            return Ok(()); // never layout 0: nothing to downgrade
        }
        storage_migrate::downgrade(&store, &DowngradeOptions::default()).expect("downgrade");
        prop_assert!(!root.join("layout.json").exists());
        for (id, bytes) in &last {
            let back = fs_err::read(nested.join(format!("{id}.json"))).expect("at its layout-0 path");
            prop_assert_eq!(&back, bytes, "{} after the downgrade", id);
        }
    }
}

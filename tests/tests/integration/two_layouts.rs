//! One root, two layouts: Prodigy's ported modules (through
//! `prodigy_adapter::dirs`, as Prodigy's constructors call them) and an
//! older Prodigy writing layout 0 into the same root, at the same time.
//!
//! The older Prodigy here is its file formats and paths written as its
//! code writes them (`dlq.rs`'s `DLQStorage`, `state.rs`'s metadata, an
//! `O_EXCL` resume lock of a live process), byte for byte.

use std::path::Path;
use std::time::Duration;

use prodigy_adapter::dirs::{self, EventFile};
use prodigy_adapter::{DeadLetterQueue, JobStateManager, Reprocess, ResumeLock, ResumeTarget};
use serde_json::{Value, json};
use storage_core::{DeadLetterItem, JobCheckpoint, JobId, LockWait, RepoKey};

const JOB: &str = "mapreduce-1757146800123";

/// A dead letter as an older Prodigy writes it: `DLQStorage::persist`
/// under the doubly nested directory, pretty JSON, index refreshed.
fn older_prodigy_adds(root: &Path, item: &str) {
    let dir = root.join(format!("dlq/api/{JOB}/mapreduce/dlq/{JOB}"));
    fs_err::create_dir_all(dir.join("items")).expect("mkdir");
    let doc = json!({"item_id": item, "item_data": {"n": item}, "reprocess_eligible": true,
                     "last_attempt": "2026-12-07T10:00:00Z", "failure_count": 1});
    fs_err::write(
        dir.join(format!("items/{item}.json")),
        serde_json::to_string_pretty(&doc).expect("json"),
    )
    .expect("write");
    let ids: Vec<String> = fs_err::read_dir(dir.join("items"))
        .expect("list")
        .map(|e| {
            let name = e.expect("entry").file_name().to_string_lossy().into_owned();
            name.trim_end_matches(".json").to_owned()
        })
        .collect();
    fs_err::write(
        dir.join("index.json"),
        json!({"job_id": JOB, "item_count": ids.len(), "item_ids": ids}).to_string(),
    )
    .expect("index");
}

fn item(id: &str) -> DeadLetterItem {
    DeadLetterItem::from_json(json!({"item_id": id, "item_data": {"n": id},
        "reprocess_eligible": true, "last_attempt": "2026-12-07T11:00:00Z"}))
    .expect("an item")
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Dead letters: what the older Prodigy writes before and while the ported
/// queue works is read, the queue's own writes go to the current layout,
/// and reprocessing takes each item once, from whichever layout holds it.
#[test]
fn a_ported_queue_and_an_older_prodigy_share_one_root() {
    let home = tempfile::tempdir().expect("tempdir");
    let root = home.path();
    older_prodigy_adds(root, "item-1");
    // `create_global_dlq`: `GlobalStorage::get_dlq_dir(repo, job)`.
    let placed = dirs::dead_letter_home(&root.join(format!("dlq/api/{JOB}")), JOB);
    assert_eq!(placed.root, root);
    rt().block_on(async {
        let store = dirs::open_store(&placed.root)
            .await
            .expect("a root an older Prodigy wrote opens");
        let queue = DeadLetterQueue::new(store, placed.repo, JobId::new(JOB).expect("valid"));
        let ids = |items: &[DeadLetterItem]| -> Vec<String> {
            items.iter().map(|i| i.item_id().to_string()).collect()
        };
        assert_eq!(ids(&queue.list().await.expect("list").items), ["item-1"]);
        queue.add(&item("item-2")).await.expect("add");
        assert!(
            root.join(format!("dlq/api/{JOB}/items/item-2.json"))
                .is_file(),
            "written to the current layout"
        );
        older_prodigy_adds(root, "item-3"); // while the ported queue works
        assert_eq!(
            ids(&queue.list().await.expect("list").items),
            ["item-1", "item-2", "item-3"]
        );
        let taken = queue
            .reprocess(Reprocess::eligible())
            .await
            .expect("reprocess");
        assert_eq!(ids(&taken.items), ["item-1", "item-2", "item-3"]);
        assert!(
            queue.list().await.expect("list").items.is_empty(),
            "each item taken once, from either layout"
        );
        assert!(
            !root
                .join(format!(
                    "dlq/api/{JOB}/mapreduce/dlq/{JOB}/items/item-1.json"
                ))
                .exists()
        );
    });
}

/// Job checkpoints: the ported manager's metadata names the file of the
/// latest version (`"path"`), as Prodigy's `CheckpointInfo` does, so an
/// older Prodigy reading the same root finds and parses it.
#[test]
fn an_older_prodigy_finds_the_ported_managers_latest_checkpoint() {
    let home = tempfile::tempdir().expect("tempdir");
    let root = home.path();
    // `DefaultJobStateManager::new_with_global`: `get_state_dir(repo, "mapreduce")`.
    let placed = dirs::checkpoint_home(&root.join("state/api/mapreduce"));
    rt().block_on(async {
        let store = dirs::open_store(&placed.root).await.expect("open");
        let jobs = JobStateManager::new(store, placed.repo.clone())
            .with_checkpoint_paths(dirs::checkpoint_paths(&placed.root));
        let job = JobId::new(JOB).expect("valid");
        for v in [1, 2] {
            let state = JobCheckpoint::from_json(
                json!({"job_id": JOB, "checkpoint_version": v, "is_complete": false}),
            )
            .expect("state");
            jobs.save_as(&state, v).await.expect("save");
        }
        // What an older Prodigy does: metadata.json, then the file it names.
        let meta: Value = serde_json::from_slice(
            &fs_err::read(root.join(format!("state/api/mapreduce/jobs/{JOB}/metadata.json")))
                .expect("metadata"),
        )
        .expect("json");
        let path = meta["path"]
            .as_str()
            .expect("a path, as Prodigy's metadata has");
        let latest: Value =
            serde_json::from_slice(&fs_err::read(path).expect("the named file")).expect("json");
        assert_eq!(latest["checkpoint_version"], 2);
        assert_eq!(
            Path::new(path),
            dirs::checkpoint_file(&placed, &job, 2),
            "where the store keeps it"
        );
        assert!(dirs::jobs_dir(&placed).join(JOB).is_dir());
    });
}

/// Resume locks: a ported lock refuses while an older Prodigy's lock file
/// names a live process, and leaves no file when released, which an older
/// Prodigy then creates anew.
#[test]
fn a_ported_resume_lock_and_an_older_prodigys_exclude_each_other() {
    let home = tempfile::tempdir().expect("tempdir");
    let root = home.path();
    let path = root.join(format!("resume_locks/{JOB}.lock"));
    let mut older = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("a live process");
    rt().block_on(async {
        let store = dirs::open_store(root).await.expect("open");
        let target = ResumeTarget::Job(JobId::new(JOB).expect("valid"));
        // The older Prodigy's `acquire_lock`: create_new, then its holder.
        fs_err::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .expect("O_EXCL");
        std::io::Write::write_all(
            &mut f,
            json!({"job_id": JOB, "process_id": older.id(), "hostname": "h",
                   "acquired_at": "2026-12-07T10:00:00Z"})
            .to_string()
            .as_bytes(),
        )
        .expect("holder");
        let refused = ResumeLock::acquire(
            &store,
            &target,
            "here",
            LockWait::Timeout(Duration::from_millis(100)),
        )
        .await
        .expect_err("held by the older Prodigy");
        assert_eq!(
            refused.lock_holder().map(|h| h.process_id),
            Some(older.id()),
            "the refusal names its PID"
        );
        // It releases by removing its file; ours then holds.
        fs_err::remove_file(&path).expect("release");
        let ours = ResumeLock::acquire(&store, &target, "here", LockWait::NoWait)
            .await
            .expect("free");
        // The older Prodigy's `create_new` now fails, and its stale check
        // reads a live process (this one) in our holder: it is refused.
        let held: Value = serde_json::from_slice(&fs_err::read(&path).expect("read"))
            .expect("a holder an older Prodigy parses");
        assert_eq!(held["process_id"], std::process::id());
        assert!(
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .is_err()
        );
        drop(ours);
        assert!(!path.exists(), "released: no file left");
    });
    older.kill().expect("kill");
    older.wait().expect("reap");
}

/// Event files: one `create_global_event_logger` names per run is the
/// job's log in the store; any other path stays a plain file.
#[test]
fn event_files_in_a_store_are_its_job_logs() {
    let root = Path::new("/h/.prodigy");
    assert_eq!(
        dirs::event_file(&root.join(format!("events/api/{JOB}/events-20261207_101500.jsonl"))),
        EventFile::Log {
            root: root.to_owned(),
            repo: RepoKey::new("api").expect("valid"),
            job: JobId::new(JOB).expect("valid"),
        }
    );
    assert!(matches!(
        dirs::event_file(Path::new("/tmp/x/events.jsonl")),
        EventFile::Plain(_)
    ));
}

/// A job's log that an older Prodigy rotated at 100 MB
/// (`events-<ts>.<ts2>.jsonl.gz`, plain text despite the name) is read in
/// place, before its newer part, and a cursor into it stays valid across
/// the upgrade that renames it; a real gzip file of such a name is not read.
#[test]
fn a_log_an_older_prodigy_rotated_is_read_in_place_and_across_the_upgrade() {
    use storage_core::{EventCursor, EventRecord, ReadMode, Storage};
    let home = tempfile::tempdir().expect("tempdir");
    let root = home.path().join(".prodigy");
    let dir = root.join(format!("events/api/{JOB}"));
    fs_err::create_dir_all(&dir).expect("mkdir");
    let line =
        |n: u32| format!("{{\"id\":\"e{n}\",\"event\":{{\"job_id\":\"{JOB}\",\"n\":{n}}}}}\n");
    fs_err::write(
        dir.join("events-20261207_101500.20261207_111500.jsonl.gz"),
        format!("{}{}", line(0), line(1)),
    )
    .expect("rotated part");
    fs_err::write(dir.join("events-20261207_101500.jsonl"), line(2)).expect("live part");
    // A gzip member's header (magic, deflate, no flags), then anything.
    let mut gz = vec![0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 0, 0xff];
    gz.extend_from_slice(line(9).as_bytes());
    fs_err::write(dir.join("events-20261206_101500.archive.jsonl.gz"), gz).expect("real gzip");
    let (repo, job) = (
        RepoKey::new("api").expect("repo"),
        JobId::new(JOB).expect("job"),
    );
    let read = |store: &storage_fs::FsStorage, from: &EventCursor| {
        let mut ns = Vec::new();
        let summary = store
            .read_events_from(
                &repo,
                &job,
                from,
                ReadMode::Strict,
                &mut |e: EventRecord| {
                    ns.push(e.json()["event"]["n"].as_u64().expect("n"));
                },
            )
            .expect("read");
        (ns, summary.next)
    };
    let store = storage_fs::FsStorage::open(&root).expect("open");
    let (ns, after_first) = read(&store, &EventCursor::START);
    assert_eq!(
        ns,
        [0, 1, 2],
        "the rotated part first, the real gzip not at all"
    );
    let listed: Vec<String> = store
        .inventory(Some(&repo))
        .expect("list")
        .into_iter()
        .filter(|i| i.kind == "event log")
        .filter_map(|i| i.id)
        .collect();
    assert_eq!(
        listed,
        [
            "events-20261207_101500.20261207_111500.jsonl.gz",
            "events-20261207_101500.jsonl"
        ],
        "`list` shows what is read, the rotated part included"
    );
    // A cursor in the middle of the rotated part.
    let mut middle = after_first.clone();
    middle.segment = "events-20261207_101500.20261207_111500.jsonl".to_owned();
    middle.offset = line(0).len() as u64;
    assert_eq!(
        read(&store, &middle).0,
        [1, 2],
        "a cursor names the part as upgraded"
    );
    store
        .append_events(
            &repo,
            &job,
            &[
                EventRecord::from_json(json!({"id": "e3", "event": {"job_id": JOB, "n": 3}}))
                    .expect("record"),
            ],
        )
        .expect("append");
    let report = storage_migrate::upgrade(&store, &storage_migrate::UpgradeOptions::default())
        .expect("upgrade");
    assert_eq!(
        report.outcome,
        storage_migrate::Outcome::Migrated,
        "{report:?}"
    );
    assert!(
        dir.join("events-20261207_101500.20261207_111500.jsonl")
            .is_file(),
        "renamed"
    );
    let store = storage_fs::FsStorage::open(&root).expect("open");
    assert_eq!(read(&store, &EventCursor::START).0, [0, 1, 2, 3]);
    assert_eq!(
        read(&store, &middle).0,
        [1, 2, 3],
        "the same cursor, after the upgrade"
    );
    let (ns, _) = read(&store, &after_first);
    assert_eq!(
        ns,
        [3],
        "the end cursor taken before the upgrade goes on from there"
    );
    // Deleting the log removes every part, the rotated one included.
    assert!(store.delete_event_log(&repo, &job).expect("delete"));
    assert!(read(&store, &EventCursor::START).0.is_empty());
}

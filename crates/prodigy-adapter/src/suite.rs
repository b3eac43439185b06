//! One test suite for every component, generic over the store.
//!
//! Each check is an `async fn` over an `Arc<dyn Storage>` that panics on
//! failure; [`adapter_tests!`](crate::adapter_tests) turns all of them into
//! `#[tokio::test]`s for a store constructor, so another store runs them
//! with one line (and this crate with `suite` as a dev-dependency):
//!
//! ```ignore
//! prodigy_adapter::adapter_tests!(|| {
//!     let dir = tempfile::tempdir().expect("a scratch directory");
//!     let store = storage_fs::FsStorage::open(dir.path()).expect("a new store opens");
//!     prodigy_adapter::suite::TestStore::keeping(store, dir)
//! });
//! ```
//!
//! Malformed documents are made with plain `put`s of JSON that is not the
//! record (a string, an object without its id), which every store accepts,
//! so the lenient paths are checked on every store.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use storage_core::{
    DeadLetterItem, DocKey, EventCursor, EventRecord, ItemId, JobCheckpoint, JobId, LockWait,
    RepoKey, SessionId, Storage, UnifiedSession,
};
use storage_tokio::AsyncStorage;
#[doc(hidden)]
pub use storage_tokio::suite::tokio;
pub use storage_tokio::suite::{IntoTestStore, TestStore};

use crate::{
    DeadLetterQueue, Error, EventLogger, FlushPolicy, JobStateManager, Reprocess, ResumeLock,
    ResumeTarget, SessionKind, SessionManager, SessionStatus, new_session,
};

/// Generates one `#[tokio::test]` per check of [`suite`](crate::suite);
/// `$make` is a closure that returns a fresh, empty [`TestStore`], or an
/// `Option<TestStore>` that is `None` to skip the check (see
/// [`storage_tokio::async_storage_tests!`]).
#[macro_export]
macro_rules! adapter_tests {
    ($make:expr) => {
        $crate::adapter_tests!(@each $make;
            a_checkpoint_is_the_next_version_and_says_so,
            only_the_newest_checkpoints_are_kept,
            a_missing_checkpoint_names_the_versions_kept,
            a_callers_version_is_kept_and_the_latest_is_what_the_metadata_names,
            resumable_jobs_are_the_incomplete_ones_in_every_repository,
            deleting_a_job_removes_its_checkpoints_and_metadata,
            adding_and_removing_dead_letters_refresh_the_index,
            listing_dead_letters_skips_and_reports_bad_items,
            reprocessing_takes_eligible_matching_items_out,
            a_full_queue_evicts_its_oldest_tenth_first,
            purging_empties_the_queue_or_drops_old_items,
            a_resume_lock_is_exclusive_and_names_its_holder,
            a_resume_lock_is_released_on_drop,
            the_logger_appends_when_its_batch_is_full,
            the_logger_appends_on_its_interval,
            closing_or_dropping_the_logger_appends_the_rest,
            logged_events_keep_their_order,
            a_follower_sees_what_the_logger_appends,
            a_log_that_reaches_its_rotation_size_is_archived_whole,
            a_session_is_created_once_and_loaded_by_id,
            status_updates_follow_prodigys_lifecycle,
            listing_sessions_skips_and_reports_unparsable_ones,
            deleting_a_session_removes_it,
        );
    };
    (@each $make:expr; $($check:ident),+ $(,)?) => {
        $(
            #[$crate::suite::tokio::test(crate = "prodigy_adapter::suite::tokio")]
            async fn $check() {
                let make: &dyn Fn() -> _ = &$make;
                let Some(test_store) = $crate::suite::IntoTestStore::into_test_store(make()) else {
                    return;
                };
                $crate::suite::$check(test_store.store()).await;
            }
        )+
    };
}

/// How long a check waits for what should take milliseconds.
const PATIENCE: Duration = Duration::from_secs(10);

fn repo(s: &str) -> RepoKey {
    RepoKey::new(s).expect("valid test repo")
}
fn job(s: &str) -> JobId {
    JobId::new(s).expect("valid test job")
}
fn session(s: &str) -> SessionId {
    SessionId::new(s).expect("valid test session")
}
fn item_id(s: &str) -> ItemId {
    ItemId::new(s).expect("valid test item")
}
fn state(job: &str, complete: bool, counter: u64) -> JobCheckpoint {
    JobCheckpoint::from_json(json!({
        "job_id": job,
        "checkpoint_version": counter,
        "is_complete": complete,
        "started_at": "2025-09-06T08:31:02.907114Z",
        "updated_at": "2025-09-06T08:40:00.000000Z",
        "total_items": 10,
        "successful_count": 4,
        "failed_count": 1,
        "a_field_from_the_future": {"kept": true},
    }))
    .expect("a job state")
}
fn dead_letter(id: &str, eligible: bool, last_attempt: &str) -> DeadLetterItem {
    DeadLetterItem::from_json(json!({
        "item_id": id,
        "item_data": {"file": format!("{id}.rs")},
        "failure_count": 3,
        "last_attempt": last_attempt,
        "error_signature": "CommandFailed::exit 1",
        "reprocess_eligible": eligible,
        "manual_review_required": false,
    }))
    .expect("a dead letter")
}
fn event(n: u64) -> EventRecord {
    EventRecord::from_json(json!({
        "id": format!("evt-{n}"),
        "timestamp": "2025-09-06T08:31:02.907114Z",
        "event": {"event_type": "agent_completed", "job_id": "mapreduce-1", "n": n},
    }))
    .expect("an object")
}
fn number(e: &EventRecord) -> u64 {
    e.json()["event"]["n"]
        .as_u64()
        .expect("a numbered test event")
}
fn log_numbers(store: &dyn Storage, r: &RepoKey, j: &JobId) -> Vec<u64> {
    let mut out = Vec::new();
    store
        .read_events(r, j, &mut |e| out.push(number(&e)))
        .expect("read");
    out
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < PATIENCE, "{what} within {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A save files the state as the job's next version (0 first) and writes
/// that version into the payload, whatever the caller's counter said;
/// unknown fields survive, and the metadata names the version.
pub async fn a_checkpoint_is_the_next_version_and_says_so(store: Arc<dyn Storage>) {
    let (r, j) = (repo("api"), job("mapreduce-1"));
    let jobs = JobStateManager::new(AsyncStorage::from_arc(Arc::clone(&store)), r.clone());
    assert_eq!(
        jobs.save(&state("mapreduce-1", false, 7))
            .await
            .expect("save"),
        0
    );
    assert_eq!(
        jobs.save(&state("mapreduce-1", false, 7))
            .await
            .expect("save"),
        1
    );
    let (version, cp) = jobs.load(&j, None).await.expect("latest");
    assert_eq!(version, 1);
    assert_eq!(
        cp.checkpoint_version(),
        Some(1),
        "the payload agrees with its key"
    );
    assert_eq!(cp.json()["a_field_from_the_future"], json!({"kept": true}));
    let (_, first) = jobs.load(&j, Some(0)).await.expect("version 0");
    assert_eq!(first.checkpoint_version(), Some(0));
    let meta = store
        .get(&DocKey::JobMetadata {
            repo: r,
            job: j.clone(),
        })
        .expect("get")
        .expect("metadata written");
    assert_eq!(meta["version"], json!(1));
    assert!(meta["size_bytes"].as_u64().is_some_and(|n| n > 0));
    let created = meta["created_at"].as_str().expect("created_at");
    assert!(storage_core::parse_rfc3339(created).is_some(), "{created}");
    assert_eq!(
        jobs.load_latest(&j).await.expect("latest").map(|(v, _)| v),
        Some(1)
    );
}

/// The newest three versions are kept, listed newest first with their size.
pub async fn only_the_newest_checkpoints_are_kept(store: Arc<dyn Storage>) {
    let j = job("mapreduce-1");
    let jobs = JobStateManager::new(AsyncStorage::from_arc(store), repo("api"));
    for _ in 0..5 {
        jobs.save(&state("mapreduce-1", false, 0))
            .await
            .expect("save");
    }
    let versions = jobs.versions(&j).await.expect("versions");
    assert_eq!(
        versions.iter().map(|v| v.version).collect::<Vec<_>>(),
        [4, 3, 2]
    );
    assert!(versions.iter().all(|v| v.bytes > 0));
    let two = jobs.clone().keeping(2);
    assert_eq!(
        two.save(&state("mapreduce-1", false, 0))
            .await
            .expect("save"),
        5
    );
    assert_eq!(two.versions(&j).await.expect("versions").len(), 2);
}

/// Loading a version that is not kept fails naming the versions that are.
pub async fn a_missing_checkpoint_names_the_versions_kept(store: Arc<dyn Storage>) {
    let jobs = JobStateManager::new(AsyncStorage::from_arc(store), repo("api"));
    let none = jobs
        .load(&job("mapreduce-9"), None)
        .await
        .expect_err("no job");
    assert_eq!(
        none.to_string(),
        "job `mapreduce-9` of repository `api` has no checkpoint; it has none: it never saved one, or it was deleted"
    );
    for _ in 0..4 {
        jobs.save(&state("mapreduce-1", false, 0))
            .await
            .expect("save");
    }
    let err = jobs
        .load(&job("mapreduce-1"), Some(0))
        .await
        .expect_err("pruned");
    assert!(matches!(&err, Error::CheckpointNotFound { kept, .. } if kept == &[1, 2, 3]));
    assert_eq!(
        err.to_string(),
        "job `mapreduce-1` of repository `api` has no checkpoint version 0; the versions kept are 1, 2, 3"
    );
}

/// Resumable jobs are those whose latest checkpoint is not complete, in
/// every repository; a job whose checkpoint cannot be judged is reported.
pub async fn resumable_jobs_are_the_incomplete_ones_in_every_repository(store: Arc<dyn Storage>) {
    let s = AsyncStorage::from_arc(Arc::clone(&store));
    let api = JobStateManager::new(s.clone(), repo("api"));
    let web = JobStateManager::new(s.clone(), repo("web"));
    api.save(&state("mapreduce-1", false, 0))
        .await
        .expect("save");
    api.save(&state("mapreduce-2", false, 0))
        .await
        .expect("save");
    api.save(&state("mapreduce-2", true, 1))
        .await
        .expect("a finished job");
    web.save(&state("mapreduce-3", false, 0))
        .await
        .expect("save");
    // Finished once, then a retry began: the latest decides.
    web.save(&state("mapreduce-4", true, 0))
        .await
        .expect("save");
    web.save(&state("mapreduce-4", false, 1))
        .await
        .expect("save");
    let unknown = JobCheckpoint::from_json(json!({"job_id": "mapreduce-5"})).expect("record");
    web.save(&unknown).await.expect("save");
    store
        .put(
            &DocKey::JobCheckpoint {
                repo: repo("web"),
                job: job("mapreduce-6"),
                version: 0,
            },
            &json!("not a checkpoint"),
        )
        .expect("put");
    store
        .put(
            &DocKey::JobMetadata {
                repo: repo("web"),
                job: job("mapreduce-6"),
            },
            &json!({"version": 0}),
        )
        .expect("put");
    // A checkpoint no metadata names (a crash before the metadata was written).
    store
        .put(
            &DocKey::JobCheckpoint {
                repo: repo("web"),
                job: job("mapreduce-7"),
                version: 0,
            },
            &json!({"job_id": "mapreduce-7", "is_complete": false}),
        )
        .expect("put");

    let everywhere = api.resumable_jobs_everywhere().await.expect("list");
    let found: Vec<(String, String, u64)> = everywhere
        .jobs
        .iter()
        .map(|j| (j.repo.to_string(), j.job.to_string(), j.version))
        .collect();
    assert_eq!(
        found,
        [
            ("api".into(), "mapreduce-1".into(), 0),
            ("web".into(), "mapreduce-3".into(), 0),
            ("web".into(), "mapreduce-4".into(), 1),
        ]
    );
    let first = &everywhere.jobs[0];
    assert_eq!(
        (first.total_items, first.completed_items, first.failed_items),
        (Some(10), Some(4), Some(1))
    );
    assert_eq!(
        first.started_at.as_deref(),
        Some("2025-09-06T08:31:02.907114Z")
    );
    let skipped: Vec<String> = everywhere.skipped.iter().map(ToString::to_string).collect();
    assert_eq!(skipped.len(), 3, "{skipped:?}");
    assert!(skipped[0].contains("mapreduce-5") && skipped[0].contains("is_complete"));
    assert!(skipped[1].contains("mapreduce-6") && skipped[1].contains("JSON object"));
    assert!(skipped[2].contains("mapreduce-7") && skipped[2].contains("metadata"));

    let here = api.resumable_jobs().await.expect("list");
    assert_eq!(here.jobs.len(), 1);
    assert!(here.skipped.is_empty());
}

/// A caller's version (Prodigy files a state under its own
/// `checkpoint_version`) is stored as given, the metadata names it, and it
/// is the latest even when a higher version exists; the newest three by
/// number are kept. Without metadata there is no latest.
pub async fn a_callers_version_is_kept_and_the_latest_is_what_the_metadata_names(
    store: Arc<dyn Storage>,
) {
    let r = repo("api");
    let jobs = JobStateManager::new(AsyncStorage::from_arc(Arc::clone(&store)), r.clone());
    let j = job("mapreduce-1");
    for v in [5, 7, 6] {
        jobs.save_as(&state("mapreduce-1", false, v), v)
            .await
            .expect("save");
    }
    let (version, latest) = jobs.load(&j, None).await.expect("latest");
    assert_eq!(version, 6, "the one saved last, not the highest");
    assert_eq!(latest.checkpoint_version(), Some(6), "stored as given");
    jobs.save_as(&state("mapreduce-1", true, 2), 2)
        .await
        .expect("save");
    let kept: Vec<u64> = jobs
        .versions(&j)
        .await
        .expect("versions")
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(kept, [7, 6, 5], "the three highest numbers are kept");
    assert!(
        jobs.load(&j, None).await.is_err(),
        "the metadata names version 2, which was not kept: no latest"
    );
    assert!(jobs.has_metadata(&j).await.expect("metadata"));
    assert_eq!(jobs.keep_newest(&j, 1).await.expect("prune"), [5, 6]);
    assert!(
        jobs.checkpoint_path(&j, 7).is_none(),
        "no paths unless given"
    );

    let orphan = job("mapreduce-2");
    store
        .put(
            &DocKey::JobCheckpoint {
                repo: r.clone(),
                job: orphan.clone(),
                version: 0,
            },
            &json!({"job_id": "mapreduce-2", "is_complete": false}),
        )
        .expect("put");
    assert_eq!(
        jobs.load_latest(&orphan).await.expect("load"),
        None,
        "a checkpoint no metadata names is not a latest"
    );
    assert!(!jobs.has_metadata(&orphan).await.expect("metadata"));
}

/// Deleting a job removes every version and the metadata, nothing else.
pub async fn deleting_a_job_removes_its_checkpoints_and_metadata(store: Arc<dyn Storage>) {
    let (r, j) = (repo("api"), job("mapreduce-1"));
    let s = AsyncStorage::from_arc(Arc::clone(&store));
    let jobs = JobStateManager::new(s.clone(), r.clone());
    for _ in 0..2 {
        jobs.save(&state("mapreduce-1", false, 0))
            .await
            .expect("save");
    }
    jobs.save(&state("mapreduce-2", false, 0))
        .await
        .expect("save");
    let queue = DeadLetterQueue::new(s, r.clone(), j.clone());
    queue
        .add(&dead_letter("item_1", true, "2025-09-06T08:31:02Z"))
        .await
        .expect("add");
    assert_eq!(jobs.delete_job(&j).await.expect("delete"), 3);
    assert!(jobs.load_latest(&j).await.expect("load").is_none());
    assert_eq!(store.jobs(&r).expect("jobs"), [job("mapreduce-2")]);
    assert_eq!(
        queue.list().await.expect("list").items.len(),
        1,
        "dead letters stay"
    );
}

/// Adding and removing items keep the index `{item_count, item_ids,
/// job_id, updated_at}` in step; an emptied queue has no index.
pub async fn adding_and_removing_dead_letters_refresh_the_index(store: Arc<dyn Storage>) {
    let (r, j) = (repo("api"), job("mapreduce-1"));
    let s = AsyncStorage::from_arc(store);
    let queue = DeadLetterQueue::new(s.clone(), r.clone(), j.clone());
    assert_eq!(queue.index().await.expect("index"), None);
    for id in ["item_2", "item_1"] {
        queue
            .add(&dead_letter(id, true, "2025-09-06T08:31:02Z"))
            .await
            .expect("add");
    }
    let index = queue.index().await.expect("index").expect("written");
    assert_eq!(index["item_count"], json!(2));
    assert_eq!(index["item_ids"], json!(["item_1", "item_2"]));
    assert_eq!(index["job_id"], json!("mapreduce-1"));
    let updated = index["updated_at"].as_str().expect("updated_at");
    assert!(storage_core::parse_rfc3339(updated).is_some(), "{updated}");
    assert_eq!(DeadLetterQueue::jobs(&s, &r).await.expect("jobs"), [j]);

    assert!(queue.remove(&item_id("item_1")).await.expect("remove"));
    assert!(
        !queue
            .remove(&item_id("item_1"))
            .await
            .expect("gone already")
    );
    let index = queue.index().await.expect("index").expect("still there");
    assert_eq!(
        (&index["item_count"], &index["item_ids"]),
        (&json!(1), &json!(["item_2"]))
    );
    assert!(queue.remove(&item_id("item_2")).await.expect("remove"));
    assert_eq!(queue.index().await.expect("index"), None);
}

/// A listing returns the items that parse and reports the others.
pub async fn listing_dead_letters_skips_and_reports_bad_items(store: Arc<dyn Storage>) {
    let (r, j) = (repo("api"), job("mapreduce-1"));
    let queue = DeadLetterQueue::new(
        AsyncStorage::from_arc(Arc::clone(&store)),
        r.clone(),
        j.clone(),
    );
    let good = dead_letter("item_1", true, "2025-09-06T08:31:02Z");
    queue.add(&good).await.expect("add");
    for (id, doc) in [
        ("item_2", json!("torn")),
        ("item_3", json!({"no_item_id": 1})),
    ] {
        let key = DocKey::DeadLetter {
            repo: r.clone(),
            job: j.clone(),
            item: item_id(id),
        };
        store.put(&key, &doc).expect("put");
    }
    let listing = queue.list().await.expect("list");
    assert_eq!(listing.items, [good]);
    assert_eq!(listing.skipped.len(), 2, "{:?}", listing.skipped);
    queue.refresh_index().await.expect("refresh");
    let index = queue.index().await.expect("index").expect("written");
    assert_eq!(
        index["item_count"],
        json!(3),
        "the index counts every item file"
    );
}

/// Reprocessing takes out the eligible items the predicate accepts, leaves
/// the rest, and counts the ineligible ones; forcing takes those too.
pub async fn reprocessing_takes_eligible_matching_items_out(store: Arc<dyn Storage>) {
    let (r, j) = (repo("api"), job("mapreduce-1"));
    let queue = DeadLetterQueue::new(AsyncStorage::from_arc(store), r, j);
    for (id, eligible) in [
        ("item_1", true),
        ("item_2", false),
        ("item_3", true),
        ("item_4", true),
    ] {
        queue
            .add(&dead_letter(id, eligible, "2025-09-06T08:31:02Z"))
            .await
            .expect("add");
    }
    let not_4 = |i: &DeadLetterItem| i.item_id().as_str() != "item_4";
    let preview = queue
        .eligible(Reprocess::matching(not_4))
        .await
        .expect("eligible");
    assert_eq!(preview.len(), 2);
    assert_eq!(
        queue.list().await.expect("list").items.len(),
        4,
        "a preview takes nothing"
    );

    let done = queue
        .reprocess(Reprocess::matching(not_4))
        .await
        .expect("reprocess");
    let ids: Vec<&str> = done.items.iter().map(|i| i.item_id().as_str()).collect();
    assert_eq!(ids, ["item_1", "item_3"]);
    assert_eq!(
        done.items[0].json()["item_data"],
        json!({"file": "item_1.rs"})
    );
    assert_eq!(done.ineligible, 1);
    let left = queue.index().await.expect("index").expect("index");
    assert_eq!(left["item_ids"], json!(["item_2", "item_4"]));

    let forced = queue
        .reprocess(Reprocess::eligible().force())
        .await
        .expect("force");
    assert_eq!(forced.items.len(), 2);
    assert!(queue.list().await.expect("list").items.is_empty());
    assert_eq!(queue.index().await.expect("index"), None);
}

/// A queue with a capacity evicts the oldest tenth of it (by
/// `last_attempt`, at least one item) before an add to a full queue, as
/// Prodigy's `evict_oldest` does; replacing an item evicts nothing; a
/// reprocess by ids takes the eligible ones among them.
pub async fn a_full_queue_evicts_its_oldest_tenth_first(store: Arc<dyn Storage>) {
    let (r, j) = (repo("api"), job("mapreduce-1"));
    let queue = DeadLetterQueue::new(AsyncStorage::from_arc(store), r, j).with_capacity(3);
    for (id, when) in [
        ("item_b", "2025-09-06T08:00:02Z"),
        ("item_a", "2025-09-06T08:00:03Z"),
        ("item_c", "2025-09-06T08:00:01Z"),
    ] {
        let evicted = queue
            .add_evicting(&dead_letter(id, true, when))
            .await
            .expect("add");
        assert!(evicted.is_empty(), "room left");
    }
    let evicted = queue
        .add_evicting(&dead_letter("item_a", false, "2025-09-06T09:00:00Z"))
        .await
        .expect("replace");
    assert!(evicted.is_empty(), "a replacement takes no room");
    let evicted = queue
        .add_evicting(&dead_letter("item_d", true, "2025-09-06T09:00:00Z"))
        .await
        .expect("add to a full queue");
    assert_eq!(evicted, [item_id("item_c")], "the oldest last attempt goes");
    let left = queue.index().await.expect("index").expect("index");
    assert_eq!(left["item_ids"], json!(["item_a", "item_b", "item_d"]));

    let done = queue
        .reprocess(Reprocess::ids([item_id("item_a"), item_id("item_d")]))
        .await
        .expect("reprocess");
    let ids: Vec<&str> = done.items.iter().map(|i| i.item_id().as_str()).collect();
    assert_eq!(ids, ["item_d"], "item_a is not eligible any more");
    assert_eq!(done.ineligible, 1);
}

/// Purging removes every item and the index; purging by age removes the
/// items last attempted before the cutoff and keeps undated ones.
pub async fn purging_empties_the_queue_or_drops_old_items(store: Arc<dyn Storage>) {
    let (r, j) = (repo("api"), job("mapreduce-1"));
    let queue = DeadLetterQueue::new(AsyncStorage::from_arc(store), r, j);
    queue
        .add(&dead_letter("item_old", true, "2020-01-01T00:00:00Z"))
        .await
        .expect("add");
    queue
        .add(&dead_letter("item_new", true, "2030-01-01T00:00:00Z"))
        .await
        .expect("add");
    queue
        .add(&dead_letter("item_undated", true, "yesterday"))
        .await
        .expect("add");
    let cutoff = storage_core::parse_rfc3339("2025-01-01T00:00:00Z").expect("time");
    let removed = queue.purge_older_than(cutoff).await.expect("purge old");
    assert_eq!(removed, [item_id("item_old")]);
    assert_eq!(
        queue.index().await.expect("index").expect("index")["item_count"],
        json!(2)
    );
    assert_eq!(
        queue.purge().await.expect("purge"),
        3,
        "two items and the index"
    );
    assert!(queue.list().await.expect("list").items.is_empty());
    assert_eq!(queue.index().await.expect("index"), None);
}

/// A second resume of the same job is refused with a message naming the
/// first; other jobs and sessions are not affected.
pub async fn a_resume_lock_is_exclusive_and_names_its_holder(store: Arc<dyn Storage>) {
    let s = AsyncStorage::from_arc(store);
    let target = ResumeTarget::Job(job("mapreduce-1"));
    let held = ResumeLock::acquire(&s, &target, "build-3", LockWait::NoWait)
        .await
        .expect("first");
    assert_eq!(held.holder().process_id, std::process::id());
    assert_eq!(held.key().as_str(), "mapreduce-1");
    let refused = ResumeLock::acquire(&s, &target, "build-4", LockWait::NoWait)
        .await
        .expect_err("held");
    assert!(matches!(
        refused,
        Error::Storage(storage_core::Error::Locked { .. })
    ));
    assert_eq!(
        refused.lock_holder().map(|h| h.hostname.as_str()),
        Some("build-3")
    );
    let message = refused.to_string();
    assert!(
        message.contains("`mapreduce-1` is locked by process")
            && message.contains("on build-3 since")
            && message.ends_with("try again when it finishes"),
        "{message}"
    );
    let other = ResumeTarget::Session(session("session-1"));
    let _other = ResumeLock::acquire(&s, &other, "build-3", LockWait::NoWait)
        .await
        .expect("another target");
}

/// Dropping (or releasing) a resume lock frees it.
pub async fn a_resume_lock_is_released_on_drop(store: Arc<dyn Storage>) {
    let s = AsyncStorage::from_arc(store);
    let target = ResumeTarget::Session(session("session-1"));
    let held = ResumeLock::acquire(&s, &target, "build-3", LockWait::NoWait)
        .await
        .expect("first");
    drop(held);
    let again = ResumeLock::acquire(&s, &target, "build-3", LockWait::NoWait)
        .await
        .expect("free after drop");
    again.release();
    let waited = ResumeLock::acquire(
        &s,
        &target,
        "build-3",
        LockWait::Timeout(Duration::from_secs(1)),
    )
    .await;
    assert!(waited.is_ok(), "free after release");
}

/// The logger appends as soon as its batch is full, not before.
pub async fn the_logger_appends_when_its_batch_is_full(store: Arc<dyn Storage>) {
    let (r, j) = (repo("api"), job("mapreduce-1"));
    let policy = FlushPolicy::new(3, Duration::from_secs(3600));
    let logger = EventLogger::start(
        AsyncStorage::from_arc(Arc::clone(&store)),
        r.clone(),
        j.clone(),
        policy,
    );
    logger.log(event(0)).await.expect("log");
    logger.log(event(1)).await.expect("log");
    assert_eq!(logger.pending(), 2);
    assert!(log_numbers(&*store, &r, &j).is_empty(), "not yet");
    logger.log(event(2)).await.expect("log");
    assert_eq!(logger.pending(), 0);
    assert_eq!(log_numbers(&*store, &r, &j), [0, 1, 2]);
    logger.close().await.expect("close");
}

/// The logger appends what waits when its interval passes.
pub async fn the_logger_appends_on_its_interval(store: Arc<dyn Storage>) {
    let (r, j) = (repo("api"), job("mapreduce-1"));
    let policy = FlushPolicy::new(1000, Duration::from_millis(50));
    let logger = EventLogger::start(
        AsyncStorage::from_arc(Arc::clone(&store)),
        r.clone(),
        j.clone(),
        policy,
    );
    logger.log(event(0)).await.expect("log");
    let start = Instant::now();
    eventually("the timer appends", || log_numbers(&*store, &r, &j) == [0]).await;
    assert!(start.elapsed() >= Duration::from_millis(20), "not at once");
    logger.log(event(1)).await.expect("log");
    eventually("the timer appends again", || {
        log_numbers(&*store, &r, &j) == [0, 1]
    })
    .await;
    assert_eq!(logger.pending(), 0);
    drop(logger);
}

/// Closing appends the rest; so does dropping, synchronously.
pub async fn closing_or_dropping_the_logger_appends_the_rest(store: Arc<dyn Storage>) {
    let (r, j) = (repo("api"), job("mapreduce-1"));
    let s = AsyncStorage::from_arc(Arc::clone(&store));
    let policy = FlushPolicy::new(1000, Duration::from_secs(3600));
    let logger = EventLogger::start(s.clone(), r.clone(), j.clone(), policy);
    logger.log(event(0)).await.expect("log");
    logger.close().await.expect("close");
    assert_eq!(log_numbers(&*store, &r, &j), [0]);
    let logger = EventLogger::start(s, r.clone(), j.clone(), policy);
    logger.log(event(1)).await.expect("log");
    logger.log(event(2)).await.expect("log");
    drop(logger);
    assert_eq!(
        log_numbers(&*store, &r, &j),
        [0, 1, 2],
        "appended by the drop itself"
    );
}

/// Events from many tasks all land, each task's in the order it logged
/// them, across size-triggered and timed flushes.
pub async fn logged_events_keep_their_order(store: Arc<dyn Storage>) {
    let (r, j) = (repo("api"), job("mapreduce-1"));
    let policy = FlushPolicy::new(7, Duration::from_millis(5));
    let logger = Arc::new(EventLogger::start(
        AsyncStorage::from_arc(Arc::clone(&store)),
        r.clone(),
        j.clone(),
        policy,
    ));
    let mut tasks = Vec::new();
    for t in 0..4u64 {
        let logger = Arc::clone(&logger);
        tasks.push(tokio::spawn(async move {
            for n in 0..50u64 {
                logger.log(event(t * 1000 + n)).await.expect("log");
                if n % 10 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let logger = Arc::into_inner(logger).expect("the tasks are done");
    logger.close().await.expect("close");
    let all = log_numbers(&*store, &r, &j);
    assert_eq!(all.len(), 200);
    for t in 0..4u64 {
        let mine: Vec<u64> = all.iter().copied().filter(|n| n / 1000 == t).collect();
        assert_eq!(mine, (0..50).map(|n| t * 1000 + n).collect::<Vec<_>>());
    }
}

/// A follower of the logger's job sees what the logger appends.
pub async fn a_follower_sees_what_the_logger_appends(store: Arc<dyn Storage>) {
    let (r, j) = (repo("api"), job("mapreduce-1"));
    let policy = FlushPolicy::new(2, Duration::from_secs(3600));
    let logger = EventLogger::start(AsyncStorage::from_arc(store), r, j, policy);
    let mut follow = logger.follow(EventCursor::START);
    for n in 0..4 {
        logger.log(event(n)).await.expect("log");
    }
    for n in 0..4 {
        let seen = tokio::time::timeout(PATIENCE, follow.next())
            .await
            .expect("in time")
            .expect("some")
            .expect("ok");
        assert_eq!(number(&seen.record), n);
    }
    logger.close().await.expect("close");
}

/// Prodigy's size rotation, on a log in the store: below the size nothing
/// happens; at it, every record goes to the job's archive and the log
/// starts empty; a logger with a rotation size keeps its log under that
/// size plus one batch, and every record it logged is in the log or was
/// counted into an archive, once.
pub async fn a_log_that_reaches_its_rotation_size_is_archived_whole(store: Arc<dyn Storage>) {
    let (r, j) = (repo("api"), job("mapreduce-1"));
    let batch: Vec<EventRecord> = (0..3).map(event).collect();
    store.append_events(&r, &j, &batch).expect("append");
    let size = store
        .event_log_entry(&r, &j)
        .expect("entry")
        .expect("a log")
        .bytes;
    let below = crate::rotate_if_over(&*store, &r, &j, size + 1).expect("rotate");
    assert_eq!(below, None, "below the size");
    assert_eq!(log_numbers(&*store, &r, &j), [0, 1, 2]);
    let at = crate::rotate_if_over(&*store, &r, &j, size)
        .expect("rotate")
        .expect("rotated");
    assert_eq!(at.dropped, Some(3), "{at:?}");
    assert!(at.archive.is_some(), "archived, not dropped: {at:?}");
    assert!(log_numbers(&*store, &r, &j).is_empty(), "starts empty");
    store.append_events(&r, &j, &[event(3)]).expect("append");
    assert_eq!(log_numbers(&*store, &r, &j), [3]);

    let j2 = job("mapreduce-2");
    let one = size / 3;
    let policy = FlushPolicy::new(2, Duration::from_secs(3600)).with_rotation(one * 5);
    let logger = EventLogger::start(
        AsyncStorage::from_arc(Arc::clone(&store)),
        r.clone(),
        j2.clone(),
        policy,
    );
    for n in 0..20 {
        logger.log(event(n)).await.expect("log");
        let bytes = store
            .event_log_entry(&r, &j2)
            .expect("entry")
            .map_or(0, |e| e.bytes);
        assert!(
            bytes < one * 5 + one * 3,
            "rotated: {bytes} bytes after {n}"
        );
    }
    logger.close().await.expect("close");
    let kept = log_numbers(&*store, &r, &j2);
    assert!(kept.len() < 20, "some were rotated: {kept:?}");
    assert_eq!(
        kept,
        ((20 - kept.len() as u64)..20).collect::<Vec<_>>(),
        "the log holds the newest records, in order"
    );
}

/// A session is created once (a second create is refused) and loaded by id
/// alone, unknown fields included.
pub async fn a_session_is_created_once_and_loaded_by_id(store: Arc<dyn Storage>) {
    let sessions = SessionManager::new(AsyncStorage::from_arc(store));
    let id = session("session-6f1c");
    let kind = SessionKind::Workflow {
        workflow_id: "workflow-1".into(),
        workflow_name: "fix-lints".into(),
    };
    let mut json = new_session(&id, &kind, SystemTime::now())
        .expect("a session")
        .into_json();
    json["a_field_from_the_future"] = json!(1);
    let created = UnifiedSession::from_json(json).expect("a session");
    sessions.create(&created).await.expect("create");
    let again = sessions.create(&created).await.expect_err("exists");
    assert!(matches!(again, Error::SessionExists(_)), "{again}");
    let loaded = sessions.load(&id).await.expect("load");
    assert_eq!(loaded, created);
    assert_eq!(loaded.status(), Some("Initializing"));
    assert_eq!(loaded.session_type(), Some("Workflow"));
    let missing = sessions
        .load(&session("session-none"))
        .await
        .expect_err("none");
    assert_eq!(
        missing.to_string(),
        "there is no session `session-none`; list the sessions to see which exist"
    );
    let mapreduce = new_session(
        &session("session-2"),
        &SessionKind::MapReduce {
            job_id: "mapreduce-1".into(),
        },
        SystemTime::now(),
    )
    .expect("a session");
    assert_eq!(
        mapreduce.json()["mapreduce_data"]["job_id"],
        json!("mapreduce-1")
    );
}

/// Status changes follow Prodigy's lifecycle, set `updated_at`, and set or
/// clear `completed_at`; a forbidden change is refused and changes nothing.
pub async fn status_updates_follow_prodigys_lifecycle(store: Arc<dyn Storage>) {
    let sessions = SessionManager::new(AsyncStorage::from_arc(store));
    let id = session("session-1");
    let long_ago = storage_core::parse_rfc3339("2020-01-01T00:00:00Z").expect("time");
    let kind = SessionKind::MapReduce {
        job_id: "mapreduce-1".into(),
    };
    sessions
        .create(&new_session(&id, &kind, long_ago).expect("session"))
        .await
        .expect("create");
    let running = sessions
        .update_status(&id, SessionStatus::Running)
        .await
        .expect("start");
    assert_eq!(running.status(), Some("Running"));
    let updated = running.str_field("updated_at").expect("updated_at");
    assert!(
        storage_core::parse_rfc3339(updated).is_some_and(|t| t > long_ago),
        "updated_at moved: {updated}"
    );
    assert_eq!(
        running.str_field("started_at"),
        Some("2020-01-01T00:00:00.000000Z")
    );
    let failed = sessions
        .update_status(&id, SessionStatus::Failed)
        .await
        .expect("fail");
    assert!(failed.str_field("completed_at").is_some());
    let retried = sessions
        .update_status(&id, SessionStatus::Running)
        .await
        .expect("retry");
    assert_eq!(retried.json()["completed_at"], Value::Null);
    let done = sessions
        .update_status(&id, SessionStatus::Completed)
        .await
        .expect("done");
    assert!(done.str_field("completed_at").is_some());
    let refused = sessions
        .update_status(&id, SessionStatus::Running)
        .await
        .expect_err("completed is final");
    assert_eq!(
        refused.to_string(),
        "session `session-1` cannot go from Completed to Running"
    );
    assert_eq!(
        sessions.load(&id).await.expect("load"),
        done,
        "nothing changed"
    );
    let missing = sessions
        .update_status(&session("session-9"), SessionStatus::Running)
        .await
        .expect_err("none");
    assert!(matches!(missing, Error::SessionNotFound(_)));
}

/// A listing returns the sessions that load and reports the others.
pub async fn listing_sessions_skips_and_reports_unparsable_ones(store: Arc<dyn Storage>) {
    let sessions = SessionManager::new(AsyncStorage::from_arc(Arc::clone(&store)));
    let now = SystemTime::now();
    let kind = SessionKind::MapReduce {
        job_id: "mapreduce-1".into(),
    };
    for id in ["session-b", "session-a"] {
        sessions
            .create(&new_session(&session(id), &kind, now).expect("session"))
            .await
            .expect("create");
    }
    for (id, doc) in [
        ("session-c", json!("torn")),
        ("session-d", json!({"id": "session-elsewhere"})),
    ] {
        store
            .put(
                &DocKey::UnifiedSession {
                    session: session(id),
                },
                &doc,
            )
            .expect("put");
    }
    let listing = sessions.list().await.expect("list");
    let ids: Vec<&str> = listing.sessions.iter().map(|s| s.id().as_str()).collect();
    assert_eq!(ids, ["session-a", "session-b"]);
    assert_eq!(listing.skipped.len(), 2, "{:?}", listing.skipped);
}

/// Deleting a session removes it; a second delete finds nothing.
pub async fn deleting_a_session_removes_it(store: Arc<dyn Storage>) {
    let sessions = SessionManager::new(AsyncStorage::from_arc(store));
    let id = session("session-1");
    let kind = SessionKind::MapReduce {
        job_id: "mapreduce-1".into(),
    };
    sessions
        .create(&new_session(&id, &kind, SystemTime::now()).expect("session"))
        .await
        .expect("create");
    assert!(sessions.delete(&id).await.expect("delete"));
    assert!(!sessions.delete(&id).await.expect("delete again"));
    assert!(matches!(
        sessions.load(&id).await,
        Err(Error::SessionNotFound(_))
    ));
    assert!(sessions.list().await.expect("list").sessions.is_empty());
}

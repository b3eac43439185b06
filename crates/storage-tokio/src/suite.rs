//! Checks every store must pass through [`AsyncStorage`], as `#[tokio::test]`s.
//!
//! Each check is an `async fn` over an `Arc<dyn Storage>` that panics on
//! failure, and [`async_storage_tests!`](crate::async_storage_tests) turns
//! all of them into tests for a store constructor, so one line runs them
//! against another store (the caller needs this crate with the `suite`
//! feature as a dev-dependency, nothing else):
//!
//! ```ignore
//! storage_tokio::async_storage_tests!(|| {
//!     let dir = tempfile::tempdir().expect("a scratch directory");
//!     let store = storage_fs::FsStorage::open(dir.path()).expect("a new store opens");
//!     storage_tokio::suite::TestStore::keeping(store, dir)
//! });
//! ```
//!
//! Some checks wrap the store in a [`Probe`] that counts what passes
//! through it; the probe forwards every call, so what is checked is still
//! the store's own behaviour.

use std::any::Any;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use storage_core::{
    DeadLetterItem, DocKey, Entry, Error, EventCursor, EventLogSummary, EventRecord,
    EventRetention, ExtKind, ItemId, JobCheckpoint, JobId, LockGuard, LockHolder, LockKey,
    LockWait, LogEntry, ReadMode, RepoKey, Result, Retention, RetentionReport, Scope, SessionId,
    SessionJobMapping, SessionRecord, Storage, StorageExt, UnifiedSession, WorkflowCheckpoint,
    WorkflowId,
};
#[doc(hidden)]
pub use tokio;

use crate::AsyncStorage;

/// A store for one check, and whatever must live as long as it (a scratch
/// directory, say).
pub struct TestStore {
    store: Arc<dyn Storage>,
    _keep: Box<dyn Any + Send>,
}

impl TestStore {
    /// A store that needs nothing else.
    pub fn new(store: impl Storage + 'static) -> Self {
        Self::keeping(store, ())
    }

    /// A store that needs `keep` (dropped after the check).
    pub fn keeping(store: impl Storage + 'static, keep: impl Any + Send) -> Self {
        Self {
            store: Arc::new(store),
            _keep: Box::new(keep),
        }
    }

    /// The store.
    #[must_use]
    pub fn store(&self) -> Arc<dyn Storage> {
        Arc::clone(&self.store)
    }
}

/// What a store constructor of [`async_storage_tests!`](crate::async_storage_tests)
/// returns: a [`TestStore`], or `None` to skip the check.
pub trait IntoTestStore {
    /// The store, or `None` to skip.
    fn into_test_store(self) -> Option<TestStore>;
}

impl IntoTestStore for TestStore {
    fn into_test_store(self) -> Option<TestStore> {
        Some(self)
    }
}

impl IntoTestStore for Option<TestStore> {
    fn into_test_store(self) -> Option<TestStore> {
        self
    }
}

/// Generates one `#[tokio::test]` per check of [`suite`](crate::suite);
/// `$make` is a closure that returns a fresh, empty [`TestStore`], or an
/// `Option<TestStore>` that is `None` when the check cannot run here (a
/// store that needs a server which is not there: the closure reports the
/// skip, and the test passes without running the check).
#[macro_export]
macro_rules! async_storage_tests {
    ($make:expr) => {
        $crate::async_storage_tests!(@each $make;
            every_operation_round_trips,
            a_read_stream_yields_every_record_then_its_summary,
            a_read_stream_continues_from_a_cursor,
            a_read_stream_holds_bounded_memory,
            dropping_a_read_stream_stops_its_blocking_task,
            follow_sees_appends_from_another_task,
            follow_resumes_from_a_cursor,
            dropping_a_follow_stream_stops_its_blocking_task,
            a_follower_backs_off_when_the_store_keeps_saying_maybe,
            a_follow_stream_yields_a_read_error_and_ends,
            a_dropped_call_still_completes,
            a_dropped_lock_call_never_leaves_the_lock_held,
            a_lock_guard_releases_on_any_thread,
            run_keeps_several_calls_together,
            every_call_runs_in_a_blocking_section,
        );
    };
    (@each $make:expr; $($check:ident),+ $(,)?) => {
        $(
            #[$crate::suite::tokio::test(crate = "storage_tokio::suite::tokio")]
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

/// How long a check waits for something that should take milliseconds
/// before it fails instead of hanging.
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
fn holder(pid: u32) -> LockHolder {
    LockHolder {
        job_id: "mapreduce-1".into(),
        process_id: pid,
        hostname: "test-host".into(),
        acquired_at: "2025-09-06T08:31:02.907114Z".into(),
    }
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

/// Waits until `f` holds, or fails naming `what`.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < PATIENCE, "{what} within {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn within<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(PATIENCE, f)
        .await
        .unwrap_or_else(|_| panic!("{what} within {PATIENCE:?}"))
}

/// Every method of `AsyncStorage` gives what the synchronous call gives.
pub async fn every_operation_round_trips(store: Arc<dyn Storage>) {
    let s = AsyncStorage::from_arc(Arc::clone(&store));
    let (r, j) = (repo("proj"), job("mapreduce-1"));
    let sid = session("session-1");
    let key = DocKey::Extension {
        repo: r.clone(),
        kind: ExtKind::new("prodigy.test").expect("kind"),
        name: storage_core::DocName::new("doc-1").expect("name"),
    };
    let doc = json!({"b": 1, "a": {"nested": [1, 2]}, "unknown_field": true});
    s.put(&key, &doc).await.expect("put");
    assert_eq!(s.get(&key).await.expect("get"), Some(doc.clone()));
    assert_eq!(
        s.entry(&key).await.expect("entry").map(|e| e.key),
        Some(key.clone())
    );
    let scope = Scope::Extension(r.clone(), ExtKind::new("prodigy.test").expect("kind"));
    assert_eq!(
        s.list(&scope).await.expect("list"),
        std::slice::from_ref(&key)
    );
    let entries: Vec<Entry> = s.list_entries(&scope).await.expect("entries");
    assert_eq!(entries, store.list_entries(&scope).expect("entries"));
    assert_eq!(s.extension_kinds(&r).await.expect("kinds").len(), 1);

    let rec = SessionRecord::from_json(json!({"session_id": "session-1", "status": "InProgress"}))
        .expect("session");
    s.save_session(&r, &rec).await.expect("save session");
    assert_eq!(s.load_session(&r, &sid).await.expect("load"), Some(rec));

    let cp = |v: u64| {
        JobCheckpoint::from_json(json!({"job_id": "mapreduce-1", "checkpoint_version": v}))
            .expect("checkpoint")
    };
    for v in 0..4 {
        s.save_job_checkpoint(&r, v, &cp(v)).await.expect("save cp");
    }
    assert_eq!(s.jobs(&r).await.expect("jobs"), std::slice::from_ref(&j));
    assert_eq!(
        s.latest_job_checkpoint(&r, &j).await.expect("latest"),
        Some((3, cp(3)))
    );
    assert_eq!(
        s.load_job_checkpoint(&r, &j, 1).await.expect("v1"),
        Some(cp(1))
    );
    assert_eq!(
        s.keep_newest_job_checkpoints(&r, &j, 2)
            .await
            .expect("keep"),
        [0, 1]
    );
    assert_eq!(s.delete_job(&r, &j).await.expect("delete job"), 2);
    assert!(s.jobs(&r).await.expect("jobs").is_empty());

    let wf = WorkflowCheckpoint::from_json(json!({"workflow_id": "workflow-1", "step": 2}))
        .expect("workflow");
    let wid = WorkflowId::new("workflow-1").expect("workflow id");
    s.save_workflow_checkpoint(&r, &wf).await.expect("save wf");
    assert_eq!(
        s.load_workflow_checkpoint(&r, &wid).await.expect("load wf"),
        Some(wf.clone())
    );
    s.save_session_workflow_checkpoint(&sid, &wf)
        .await
        .expect("save session wf");
    assert_eq!(
        s.load_session_workflow_checkpoint(&sid, &wid)
            .await
            .expect("load session wf"),
        Some(wf)
    );

    let item = DeadLetterItem::from_json(json!({"item_id": "item_1", "reprocess_eligible": true}))
        .expect("item");
    s.save_dead_letter(&r, &j, &item).await.expect("save dl");
    assert_eq!(
        s.dead_letters(&r, &j).await.expect("dls"),
        std::slice::from_ref(&item)
    );
    assert_eq!(
        s.dead_letters_lenient(&r, &j).await.expect("lenient"),
        (vec![item], vec![])
    );
    assert_eq!(
        s.jobs_with_dead_letters(&r).await.expect("dl jobs"),
        std::slice::from_ref(&j)
    );
    let iid = ItemId::new("item_1").expect("item id");
    assert!(s.delete_dead_letter(&r, &j, &iid).await.expect("delete dl"));
    assert_eq!(s.delete_dead_letters(&r, &j).await.expect("purge"), 0);

    let mapping =
        SessionJobMapping::from_json(json!({"session_id": "session-1", "job_id": "mapreduce-1"}))
            .expect("mapping");
    s.save_session_job(&r, &mapping)
        .await
        .expect("save mapping");
    assert_eq!(
        s.load_session_job(&r, &sid).await.expect("load mapping"),
        Some(mapping.clone())
    );
    assert_eq!(
        s.session_for_job(&r, &j).await.expect("by job"),
        Some(mapping)
    );

    let unified = UnifiedSession::from_json(json!({"id": "session-1", "status": "Running"}))
        .expect("unified");
    s.save_unified_session(&unified)
        .await
        .expect("save unified");
    assert_eq!(
        s.load_unified_session(&sid).await.expect("load unified"),
        Some(unified.clone())
    );
    assert_eq!(
        s.unified_sessions().await.expect("all"),
        (vec![unified], vec![])
    );
    assert!(
        s.delete_unified_session(&sid)
            .await
            .expect("delete unified")
    );

    let batch: Vec<EventRecord> = (0..5).map(event).collect();
    s.append_events(&r, &j, &batch).await.expect("append");
    assert_eq!(
        s.event_logs(&r).await.expect("logs"),
        std::slice::from_ref(&j)
    );
    assert!(
        s.event_log_entry(&r, &j)
            .await
            .expect("log entry")
            .is_some()
    );
    assert_eq!(s.tail_events(&r, &j, 2).await.expect("tail"), batch[3..]);
    let mut read = s.read_events(&r, &j);
    let mut got = Vec::new();
    while let Some(e) = read.next().await {
        got.push(e.expect("record"));
    }
    assert_eq!(got, batch);
    let next = read.summary().expect("ended").next.clone();
    assert!(
        !s.wait_for_events(&r, &j, &next, Duration::from_millis(20))
            .await
            .expect("wait")
    );
    let report: RetentionReport = s
        .retain_events(
            &r,
            &j,
            &EventRetention::new(Retention::keep_all().with_max_count(3)).without_archive(),
        )
        .await
        .expect("retain");
    assert_eq!(report.kept, 3);
    assert!(report.dropped.is_none_or(|d| d == 2), "{report:?}");
    assert!(s.delete_event_log(&r, &j).await.expect("delete log"));

    let stats = s.stats().await.expect("stats");
    assert_eq!(stats, store.stats().expect("stats"));
    let removed = s
        .prune(
            &scope,
            &Retention::keep_all().with_max_count(0),
            SystemTime::now(),
        )
        .await
        .expect("prune");
    assert_eq!(removed, std::slice::from_ref(&key));
    assert!(!s.delete(&key).await.expect("delete"));
    assert_eq!(
        s.delete_scope(&Scope::Sessions(r.clone()))
            .await
            .expect("scope"),
        1
    );
    assert!(s.repos().await.expect("repos").contains(&r));

    let lock = LockKey::new("mapreduce-1").expect("lock key");
    let guard = s
        .lock(&lock, &holder(1), LockWait::NoWait)
        .await
        .expect("lock");
    assert_eq!(guard.key(), &lock);
}

/// A read stream yields the log in order, then ends with a summary whose
/// cursor continues after the last record.
pub async fn a_read_stream_yields_every_record_then_its_summary(store: Arc<dyn Storage>) {
    let s = AsyncStorage::from_arc(store).with_channel_capacity(4);
    let (r, j) = (repo("proj"), job("mapreduce-1"));
    let mut empty = s.read_events(&r, &j);
    assert!(empty.next().await.is_none(), "a missing log is empty");
    assert_eq!(empty.summary().map(|x| x.records), Some(0));

    let batch: Vec<EventRecord> = (0..50).map(event).collect();
    s.append_events(&r, &j, &batch).await.expect("append");
    let mut read = s.read_events(&r, &j);
    assert!(read.summary().is_none(), "no summary before the end");
    let mut got = Vec::new();
    while let Some(e) = read.next().await {
        got.push(e.expect("record"));
    }
    assert_eq!(got, batch);
    assert_eq!(read.summary().map(|x| x.records), Some(50));
    assert!(read.next().await.is_none(), "an ended stream stays ended");
}

/// A read from a summary's cursor yields only what was appended since.
pub async fn a_read_stream_continues_from_a_cursor(store: Arc<dyn Storage>) {
    let s = AsyncStorage::from_arc(store);
    let (r, j) = (repo("proj"), job("mapreduce-1"));
    s.append_events(&r, &j, &[event(0), event(1)])
        .await
        .expect("append");
    let mut first = s.read_events(&r, &j);
    while first.next().await.is_some() {}
    let next = first.summary().expect("ended").next.clone();
    s.append_events(&r, &j, &[event(2)]).await.expect("append");
    let mut rest = s.read_events_from(&r, &j, &next, ReadMode::Lenient);
    let mut got = Vec::new();
    while let Some(e) = rest.next().await {
        got.push(number(&e.expect("record")));
    }
    assert_eq!(got, [2]);
}

/// A stream over 100,000 events stays at most its channel's capacity ahead
/// of a consumer that does not read: memory is bounded by the capacity.
pub async fn a_read_stream_holds_bounded_memory(store: Arc<dyn Storage>) {
    const EVENTS: u64 = 100_000;
    const CAPACITY: usize = 64;
    let (r, j) = (repo("proj"), job("mapreduce-1"));
    for chunk in (0..EVENTS).collect::<Vec<_>>().chunks(5_000) {
        let batch: Vec<EventRecord> = chunk.iter().copied().map(event).collect();
        store.append_events(&r, &j, &batch).expect("append");
    }
    let probe = Arc::new(Probe::new(store));
    let s = AsyncStorage::from_arc(probe.clone()).with_channel_capacity(CAPACITY);
    let mut read = s.read_events(&r, &j);
    let first = within("the first record", read.next()).await;
    assert_eq!(number(&first.expect("some").expect("record")), 0);
    // Give the reader every chance to run ahead.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ahead = probe.visited.load(Ordering::SeqCst);
    // The channel's capacity, the record blocked in `send`, the one taken.
    assert!(
        ahead <= CAPACITY as u64 + 2,
        "the reader ran {ahead} records ahead with a channel of {CAPACITY}"
    );
    let mut expected = 1;
    while let Some(e) = within("the next record", read.next()).await {
        assert_eq!(number(&e.expect("record")), expected);
        expected += 1;
    }
    assert_eq!(expected, EVENTS);
}

/// Dropping a read stream ends its blocking task (which holds the store).
pub async fn dropping_a_read_stream_stops_its_blocking_task(store: Arc<dyn Storage>) {
    let (r, j) = (repo("proj"), job("mapreduce-1"));
    let batch: Vec<EventRecord> = (0..2_000).map(event).collect();
    store.append_events(&r, &j, &batch).expect("append");
    let s = AsyncStorage::from_arc(Arc::clone(&store)).with_channel_capacity(8);
    let idle = Arc::strong_count(&store);
    let mut read = s.read_events(&r, &j);
    within("a record", read.next()).await;
    assert_eq!(
        Arc::strong_count(&store),
        idle + 1,
        "the task holds the store"
    );
    drop(read);
    eventually("the read task ends", || Arc::strong_count(&store) == idle).await;
}

/// A follower sees every append of another task, promptly and in order.
pub async fn follow_sees_appends_from_another_task(store: Arc<dyn Storage>) {
    let s = AsyncStorage::from_arc(store);
    let (r, j) = (repo("proj"), job("mapreduce-1"));
    s.append_events(&r, &j, &[event(0)]).await.expect("append");
    let mut follow = s.follow(&r, &j, EventCursor::START);
    let writer = {
        let (s, r, j) = (s.clone(), r.clone(), j.clone());
        tokio::spawn(async move {
            for n in 1..=20 {
                tokio::time::sleep(Duration::from_millis(10)).await;
                s.append_events(&r, &j, &[event(n)]).await.expect("append");
            }
        })
    };
    let mut slowest = Duration::ZERO;
    for n in 0..=20 {
        let start = Instant::now();
        let seen = within("the next appended record", follow.next())
            .await
            .expect("a follow stream does not end")
            .expect("record");
        slowest = slowest.max(start.elapsed());
        assert_eq!(number(&seen.record), n);
    }
    writer.await.expect("writer");
    assert!(
        slowest < Duration::from_secs(2),
        "an append took {slowest:?} to be seen"
    );
}

/// A follower started from a record's cursor yields what follows it (an
/// exact cursor) or that record's read pass again (a pass-start cursor).
pub async fn follow_resumes_from_a_cursor(store: Arc<dyn Storage>) {
    let s = AsyncStorage::from_arc(store);
    let (r, j) = (repo("proj"), job("mapreduce-1"));
    s.append_events(&r, &j, &[event(0), event(1), event(2)])
        .await
        .expect("append");
    let mut follow = s.follow(&r, &j, EventCursor::START);
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(
            within("a record", follow.next())
                .await
                .expect("some")
                .expect("ok"),
        );
    }
    drop(follow);
    assert_eq!(
        seen.iter().map(|f| number(&f.record)).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    let last = seen.last().expect("three");
    assert!(
        last.exact,
        "the last record of a pass carries the cursor after it"
    );
    assert!(
        seen.iter()
            .all(|f| f.exact || f.cursor == EventCursor::START),
        "the others carry their pass's start"
    );
    s.append_events(&r, &j, &[event(3)]).await.expect("append");
    let mut resumed = s.follow(&r, &j, last.cursor.clone());
    let next = within("the record after the cursor", resumed.next())
        .await
        .expect("some")
        .expect("ok");
    assert_eq!(number(&next.record), 3);
}

/// Dropping a follow stream ends its blocking task within a wait slice.
pub async fn dropping_a_follow_stream_stops_its_blocking_task(store: Arc<dyn Storage>) {
    let s = AsyncStorage::from_arc(Arc::clone(&store)).with_wait_slice(Duration::from_millis(50));
    let (r, j) = (repo("proj"), job("mapreduce-1"));
    let idle = Arc::strong_count(&store);
    let follow = s.follow(&r, &j, EventCursor::START);
    eventually("the follow task starts", || {
        Arc::strong_count(&store) == idle + 1
    })
    .await;
    // Let it settle into waiting for appends.
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(follow);
    let dropped = Instant::now();
    eventually("the follow task ends", || Arc::strong_count(&store) == idle).await;
    assert!(
        dropped.elapsed() < Duration::from_secs(2),
        "the task outlived its stream by {:?}",
        dropped.elapsed()
    );
}

/// A store whose wait always says "maybe" (and whose reads then find
/// nothing) is read a few times a second, not in a busy loop.
pub async fn a_follower_backs_off_when_the_store_keeps_saying_maybe(store: Arc<dyn Storage>) {
    let probe = Arc::new(Probe::new(store));
    probe.always_maybe.store(true, Ordering::SeqCst);
    let s = AsyncStorage::from_arc(probe.clone()).with_wait_slice(Duration::from_millis(100));
    let (r, j) = (repo("proj"), job("mapreduce-1"));
    let follow = s.follow(&r, &j, EventCursor::START);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let reads = probe.reads.load(Ordering::SeqCst);
    drop(follow);
    assert!(reads >= 2, "it kept reading ({reads})");
    assert!(reads <= 40, "{reads} reads in one second: a busy loop");
}

/// A read error reaches the follower's consumer, and the stream then ends.
pub async fn a_follow_stream_yields_a_read_error_and_ends(store: Arc<dyn Storage>) {
    let probe = Arc::new(Probe::new(store));
    probe.fail_reads.store(true, Ordering::SeqCst);
    let s = AsyncStorage::from_arc(probe);
    let (r, j) = (repo("proj"), job("mapreduce-1"));
    let mut follow = s.follow(&r, &j, EventCursor::START);
    let first = within("the error", follow.next()).await;
    assert!(
        matches!(first, Some(Err(Error::Corrupt { .. }))),
        "got {first:?}"
    );
    assert!(within("the end", follow.next()).await.is_none());
}

/// A call whose future is dropped after its first poll still completes.
pub async fn a_dropped_call_still_completes(store: Arc<dyn Storage>) {
    let probe = Arc::new(Probe::new(Arc::clone(&store)));
    // Slow enough that the future is surely dropped while the call runs.
    probe.put_delay_ms.store(100, Ordering::SeqCst);
    let s = AsyncStorage::from_arc(probe);
    let key = DocKey::UnifiedSession {
        session: session("session-1"),
    };
    let doc = json!({"id": "session-1", "status": "Running"});
    let mut call = Box::pin(s.put(&key, &doc));
    let first = std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await;
    assert!(first.is_pending(), "the call is running when it is dropped");
    drop(call);
    assert_eq!(store.get(&key).expect("get"), None, "not written yet");
    eventually("the dropped put lands", || {
        store.get(&key).expect("get").as_ref() == Some(&doc)
    })
    .await;
}

/// A lock call dropped while it waits, which then gets the lock, releases it.
pub async fn a_dropped_lock_call_never_leaves_the_lock_held(store: Arc<dyn Storage>) {
    let s = AsyncStorage::from_arc(Arc::clone(&store));
    let key = LockKey::new("mapreduce-1").expect("lock key");
    let first = s
        .lock(&key, &holder(1), LockWait::NoWait)
        .await
        .expect("lock");
    let second = holder(2);
    let waiting = s.lock(&key, &second, LockWait::Timeout(Duration::from_secs(5)));
    assert!(
        tokio::time::timeout(Duration::from_millis(50), waiting)
            .await
            .is_err(),
        "the lock is held, so the call waits"
    );
    drop(first);
    let mut again = None;
    eventually("the lock is free again", || {
        again = store.lock(&key, &holder(3), LockWait::NoWait).ok();
        again.is_some()
    })
    .await;
}

/// A guard dropped on a thread outside the runtime releases its lock.
pub async fn a_lock_guard_releases_on_any_thread(store: Arc<dyn Storage>) {
    let s = AsyncStorage::from_arc(store);
    let key = LockKey::new("session-1").expect("lock key");
    let guard: LockGuard = s
        .lock(&key, &holder(1), LockWait::NoWait)
        .await
        .expect("lock");
    let refused = s.lock(&key, &holder(2), LockWait::NoWait).await;
    assert!(matches!(refused, Err(Error::Locked { .. })), "{refused:?}");
    std::thread::spawn(move || drop(guard))
        .join()
        .expect("the thread drops the guard");
    let again = s.lock(&key, &holder(2), LockWait::NoWait).await;
    assert!(again.is_ok(), "free after the guard was dropped: {again:?}");
}

/// `run` gives a closure the store for several calls on the blocking pool.
pub async fn run_keeps_several_calls_together(store: Arc<dyn Storage>) {
    let s = AsyncStorage::from_arc(store);
    let (r, j) = (repo("proj"), job("mapreduce-1"));
    let (in_repo, of_job) = (r.clone(), j.clone());
    let versions = s
        .run(move |st| -> Result<Option<u64>> {
            for v in 0..3 {
                let cp = JobCheckpoint::from_json(json!({"job_id": "mapreduce-1"}))?;
                st.save_job_checkpoint(&in_repo, v, &cp)?;
            }
            Ok(st.latest_job_checkpoint(&in_repo, &of_job)?.map(|(v, _)| v))
        })
        .await
        .expect("run");
    assert_eq!(versions, Some(2));
    assert_eq!(s.jobs(&r).await.expect("jobs"), [j]);
}

/// Every call the adapter runs on the blocking pool (single calls, `run`,
/// read and follow streams) is made in a
/// [`BlockingSection`](storage_core::BlockingSection), so a store that
/// blocks on a runtime of its own may do so there.
pub async fn every_call_runs_in_a_blocking_section(store: Arc<dyn Storage>) {
    let probe = Arc::new(Probe::new(store));
    let s = AsyncStorage::from_arc(probe.clone());
    let (r, j) = (repo("proj"), job("mapreduce-1"));
    let key = DocKey::UnifiedSession {
        session: session("session-1"),
    };
    s.put(&key, &json!({"id": "session-1"})).await.expect("put");
    assert!(s.get(&key).await.expect("get").is_some());
    s.run(move |st| st.get(&key).map(|d| d.is_some()))
        .await
        .expect("run");
    s.append_events(&r, &j, &[event(0)]).await.expect("append");
    let mut read = s.read_events(&r, &j);
    while within("the next record", read.next()).await.is_some() {}
    let mut follow = s.follow(&r, &j, EventCursor::START);
    within("a record", follow.next())
        .await
        .expect("some")
        .expect("ok");
    drop(follow);
    let guard = s
        .lock(
            &LockKey::new("mapreduce-1").expect("lock key"),
            &holder(1),
            LockWait::NoWait,
        )
        .await
        .expect("lock");
    drop(guard);
    assert_eq!(probe.outside_sections.load(Ordering::SeqCst), 0);
}

/// A store that forwards every call to another and counts what passes:
/// records visited by reads, read passes; it can also answer every wait
/// with "maybe", or fail every read.
pub struct Probe {
    inner: Arc<dyn Storage>,
    /// Records the inner store has handed to readers so far.
    pub visited: AtomicU64,
    /// Read passes started.
    pub reads: AtomicU64,
    /// Answer every `wait_for_events` with `Ok(true)` at once.
    pub always_maybe: AtomicBool,
    /// Fail every read with `Error::Corrupt`.
    pub fail_reads: AtomicBool,
    /// Sleep this many milliseconds before each `put`.
    pub put_delay_ms: AtomicU64,
    /// Calls (`put`, `get`, reads, waits, locks) made outside a
    /// [`BlockingSection`](storage_core::BlockingSection).
    pub outside_sections: AtomicU64,
}

impl Probe {
    /// Wraps `inner`, counting from zero and changing nothing.
    #[must_use]
    pub fn new(inner: Arc<dyn Storage>) -> Self {
        Self {
            inner,
            visited: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            always_maybe: AtomicBool::new(false),
            fail_reads: AtomicBool::new(false),
            put_delay_ms: AtomicU64::new(0),
            outside_sections: AtomicU64::new(0),
        }
    }

    fn note_section(&self) {
        if !storage_core::BlockingSection::is_entered() {
            self.outside_sections.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Storage for Probe {
    fn put(&self, key: &DocKey, doc: &Value) -> Result<()> {
        self.note_section();
        let delay = self.put_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay));
        }
        self.inner.put(key, doc)
    }
    fn get(&self, key: &DocKey) -> Result<Option<Value>> {
        self.note_section();
        self.inner.get(key)
    }
    fn delete(&self, key: &DocKey) -> Result<bool> {
        self.inner.delete(key)
    }
    fn list(&self, scope: &Scope) -> Result<Vec<DocKey>> {
        self.inner.list(scope)
    }
    fn list_entries(&self, scope: &Scope) -> Result<Vec<Entry>> {
        self.inner.list_entries(scope)
    }
    fn entry(&self, key: &DocKey) -> Result<Option<Entry>> {
        self.inner.entry(key)
    }
    fn repos(&self) -> Result<Vec<RepoKey>> {
        self.inner.repos()
    }
    fn jobs(&self, repo: &RepoKey) -> Result<Vec<JobId>> {
        self.inner.jobs(repo)
    }
    fn jobs_with_dead_letters(&self, repo: &RepoKey) -> Result<Vec<JobId>> {
        self.inner.jobs_with_dead_letters(repo)
    }
    fn extension_kinds(&self, repo: &RepoKey) -> Result<Vec<ExtKind>> {
        self.inner.extension_kinds(repo)
    }
    fn append_events(&self, repo: &RepoKey, job: &JobId, events: &[EventRecord]) -> Result<()> {
        self.inner.append_events(repo, job, events)
    }
    fn read_events_from(
        &self,
        repo: &RepoKey,
        job: &JobId,
        from: &EventCursor,
        mode: ReadMode,
        visit: &mut dyn FnMut(EventRecord),
    ) -> Result<EventLogSummary> {
        self.note_section();
        self.reads.fetch_add(1, Ordering::SeqCst);
        if self.fail_reads.load(Ordering::SeqCst) {
            return Err(Error::Corrupt {
                path: "probe".into(),
                line: Some(1),
                reason: "the probe fails every read".into(),
            });
        }
        self.inner
            .read_events_from(repo, job, from, mode, &mut |e| {
                self.visited.fetch_add(1, Ordering::SeqCst);
                visit(e);
            })
    }
    fn wait_for_events(
        &self,
        repo: &RepoKey,
        job: &JobId,
        after: &EventCursor,
        timeout: Duration,
    ) -> Result<bool> {
        self.note_section();
        if self.always_maybe.load(Ordering::SeqCst) {
            return Ok(true);
        }
        self.inner.wait_for_events(repo, job, after, timeout)
    }
    fn event_logs(&self, repo: &RepoKey) -> Result<Vec<JobId>> {
        self.inner.event_logs(repo)
    }
    fn event_log_entry(&self, repo: &RepoKey, job: &JobId) -> Result<Option<LogEntry>> {
        self.inner.event_log_entry(repo, job)
    }
    fn delete_event_log(&self, repo: &RepoKey, job: &JobId) -> Result<bool> {
        self.inner.delete_event_log(repo, job)
    }
    fn retain_events(
        &self,
        repo: &RepoKey,
        job: &JobId,
        policy: &EventRetention,
    ) -> Result<RetentionReport> {
        self.inner.retain_events(repo, job, policy)
    }
    fn lock(&self, key: &LockKey, holder: &LockHolder, wait: LockWait) -> Result<LockGuard> {
        self.note_section();
        self.inner.lock(key, holder, wait)
    }
}

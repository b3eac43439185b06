//! The store tree after a typical session, as an insta snapshot.

use serde_json::json;
use storage_core::{
    DocKey, EventRecord, ItemId, JobId, LockKey, LockWait, SessionId, Storage, WorkflowId,
};
use storage_fs::FsStorage;
use storage_tests::{Sandbox, tree};

#[test]
fn store_tree_after_a_typical_session() {
    let sb = Sandbox::new();
    let store = FsStorage::open(sb.store()).expect("open");
    let repo = store.repo_key(&sb.project()).expect("key");
    let job = JobId::new("mapreduce-1757146800123").expect("valid");
    let session = SessionId::new("session-0b9f3c9e-6f2d-4d57-a3c4-5a8e2b1d7f10").expect("valid");
    store
        .put(
            &DocKey::Session {
                repo: repo.clone(),
                session: session.clone(),
            },
            &json!({"session_id": session.as_str(), "status": "InProgress"}),
        )
        .expect("session");
    store
        .put(
            &DocKey::SessionJob {
                repo: repo.clone(),
                session: session.clone(),
            },
            &json!({"session_id": session.as_str(), "job_id": job.as_str()}),
        )
        .expect("mapping");
    for version in 1..=2 {
        store
            .put(
                &DocKey::JobCheckpoint {
                    repo: repo.clone(),
                    job: job.clone(),
                    version,
                },
                &json!({"job_id": job.as_str(), "checkpoint_version": version}),
            )
            .expect("checkpoint");
    }
    store
        .put(
            &DocKey::JobMetadata {
                repo: repo.clone(),
                job: job.clone(),
            },
            &json!({"version": 2}),
        )
        .expect("metadata");
    store
        .put(
            &DocKey::WorkflowCheckpoint {
                repo: repo.clone(),
                workflow: WorkflowId::new("workflow-1757850041656").expect("valid"),
            },
            &json!({"workflow_id": "workflow-1757850041656"}),
        )
        .expect("workflow");
    store
        .put(
            &DocKey::DeadLetter {
                repo: repo.clone(),
                job: job.clone(),
                item: ItemId::new("item_12").expect("valid"),
            },
            &json!({"item_id": "item_12"}),
        )
        .expect("dlq");
    store
        .put(
            &DocKey::DeadLetterIndex {
                repo: repo.clone(),
                job: job.clone(),
            },
            &json!({"item_ids": ["item_12"]}),
        )
        .expect("index");
    let event = EventRecord::from_json(
        json!({"event": {"event_type": "job_started", "job_id": job.as_str()}}),
    )
    .expect("object");
    store.append_events(&repo, &job, &[event]).expect("events");
    let key = LockKey::new(job.as_str()).expect("valid");
    drop(
        store
            .lock(
                &key,
                &storage_fs::lock::this_process(job.as_str()),
                LockWait::NoWait,
            )
            .expect("lock"),
    );
    store.sweep().expect("sweep");

    // Sizes of files that hold times, pids or paths vary: keep names and modes only.
    let listing: String = tree(&sb.store())
        .lines()
        .map(|l| match l.rsplit_once(' ') {
            Some((head, size)) if size.ends_with('B') => format!("{head}\n"),
            _ => format!("{l}\n"),
        })
        .collect();
    insta::assert_snapshot!(listing);
    insta::assert_snapshot!(
        "layout_json",
        fs_err::read_to_string(sb.store().join("layout.json")).expect("layout.json")
    );
}

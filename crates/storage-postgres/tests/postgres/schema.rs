//! The schema the crate creates and migrates, and what it refuses.

use storage_core::Error;
use storage_postgres::{PgOptions, PgStorage, SCHEMA_VERSION};

use crate::support::{TestDb, url, with_app_name};

#[test]
fn a_schema_written_by_a_newer_version_is_refused_with_both_versions() {
    let Some(db) = TestDb::new() else { return };
    db.raw()
        .execute(
            "INSERT INTO schema_version (version, applied_by) VALUES ($1, 'the future')",
            &[&(SCHEMA_VERSION + 1)],
        )
        .expect("pretend a newer build migrated it");
    let err = PgStorage::connect_with(&db.url, PgOptions::default().schema(&db.schema))
        .expect_err("refused");
    match &err {
        Error::UnsupportedSchema {
            found, supported, ..
        } => {
            assert_eq!(*found, u64::try_from(SCHEMA_VERSION + 1).expect("positive"));
            assert_eq!(*supported, u64::try_from(SCHEMA_VERSION).expect("positive"));
        }
        other => panic!("expected UnsupportedSchema, got {other:?}"),
    }
    let text = err.to_string();
    assert_eq!(
        text,
        format!(
            "the store `{}` has schema version {}, this build understands up to {}; upgrade \
             prodigy-storage, or connect to another database or PostgreSQL schema",
            db.store.store(),
            SCHEMA_VERSION + 1,
            SCHEMA_VERSION
        )
    );
    assert!(!text.contains("--home"), "{text}");
}

/// Version 1 as the previous release created it (frozen here, so that a
/// change to the migrations in `sql.rs` cannot make this test agree with it).
const V1: &str = r#"
CREATE TABLE schema_version (version integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now(), applied_by text NOT NULL);
CREATE TABLE documents (
    kind text COLLATE "C" NOT NULL CHECK (kind IN ('session', 'job_checkpoint',
        'job_metadata', 'workflow_checkpoint', 'dead_letter', 'dead_letter_index',
        'session_job')),
    repo text COLLATE "C" NOT NULL,
    job text COLLATE "C" NOT NULL,
    id text COLLATE "C" NOT NULL,
    version bigint NOT NULL CHECK (version >= 0),
    body text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, repo, job, id, version)
);
CREATE TABLE event_logs (
    repo text COLLATE "C" NOT NULL,
    job text COLLATE "C" NOT NULL,
    next_seq bigint NOT NULL CHECK (next_seq > 0),
    PRIMARY KEY (repo, job)
);
CREATE TABLE events (
    repo text COLLATE "C" NOT NULL,
    job text COLLATE "C" NOT NULL,
    seq bigint NOT NULL CHECK (seq >= 0),
    line text NOT NULL,
    PRIMARY KEY (repo, job, seq)
);
CREATE TABLE locks (
    key text COLLATE "C" PRIMARY KEY,
    holder text NOT NULL,
    backend_pid integer NOT NULL,
    acquired_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO schema_version (version, applied_by) VALUES (1, 'storage-postgres 0.1.0');
INSERT INTO documents (kind, repo, job, id, version, body, updated_at) VALUES
    ('session', 'proj', '', 'session-1', 0, '{"session_id":"session-1","old":true}', '2026-01-01T00:00:00Z'),
    ('job_checkpoint', 'proj', 'mapreduce-1', '', 2, '{"job_id":"mapreduce-1"}', '2026-01-01T00:00:00Z'),
    ('dead_letter', 'other', 'mapreduce-1', 'item_1', 0, '{"item_id":"item_1"}', '2026-01-01T00:00:00Z');
INSERT INTO event_logs (repo, job, next_seq) VALUES ('proj', 'mapreduce-1', 3), ('logs-only', 'mapreduce-2', 1);
INSERT INTO events (repo, job, seq, line) VALUES
    ('proj', 'mapreduce-1', 0, '{"event":{"n":0}}'),
    ('proj', 'mapreduce-1', 1, '{"event":{"n":1}}'),
    ('proj', 'mapreduce-1', 2, '{"event":{"n":2}}'),
    ('logs-only', 'mapreduce-2', 0, '{"event":{"n":0}}');
"#;

#[test]
fn a_store_at_the_previous_schema_version_is_migrated_and_its_data_means_the_same() {
    use serde_json::json;
    use storage_core::{
        DocKey, EventCursor, EventRetention, ExtKind, JobId, ReadMode, RepoKey, Retention, Scope,
        SessionId, Storage, StorageExt,
    };
    let Some(db) = TestDb::new() else { return };
    let old = format!("{}_v1", db.schema);
    let mut raw = db.raw();
    raw.batch_execute(&format!(
        "CREATE SCHEMA \"{old}\"; SET search_path TO \"{old}\"; {V1}"
    ))
    .expect("a version-1 store");
    let store =
        PgStorage::connect_with(&db.url, PgOptions::default().schema(&old)).expect("migrated");
    let versions: Vec<i32> = raw
        .query(
            &format!("SELECT version FROM \"{old}\".schema_version ORDER BY 1"),
            &[],
        )
        .expect("versions")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, (1..=SCHEMA_VERSION).collect::<Vec<_>>());
    let proj = RepoKey::new("proj").expect("valid");
    let job = JobId::new("mapreduce-1").expect("valid");
    // Documents: the same keys, text and times.
    let session = DocKey::Session {
        repo: proj.clone(),
        session: SessionId::new("session-1").expect("valid"),
    };
    assert_eq!(
        store.get(&session).expect("get"),
        Some(json!({"session_id": "session-1", "old": true}))
    );
    let entry = store.entry(&session).expect("entry").expect("present");
    assert_eq!(entry.bytes, 37);
    assert_eq!(
        entry.modified,
        storage_core::parse_rfc3339("2026-01-01T00:00:00Z").expect("time")
    );
    assert_eq!(
        store
            .latest_job_checkpoint(&proj, &job)
            .expect("load")
            .map(|(v, _)| v),
        Some(2)
    );
    let other = RepoKey::new("other").expect("valid");
    assert_eq!(
        store.jobs_with_dead_letters(&other).expect("jobs"),
        std::slice::from_ref(&job)
    );
    let names: Vec<String> = store
        .repos()
        .expect("repos")
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(names, ["logs-only", "other", "proj"]);
    // Event logs: the same lines, a size counted from them, cursors of their own.
    let mut ns = Vec::new();
    let summary = store
        .read_events_from(
            &proj,
            &job,
            &EventCursor::START,
            ReadMode::Strict,
            &mut |e| {
                ns.push(e.json()["event"]["n"].as_u64().expect("n"));
            },
        )
        .expect("read");
    assert_eq!(ns, [0, 1, 2]);
    assert_eq!(summary.next.offset, 3);
    assert!(summary.next.generation > 0);
    let log = store
        .event_log_entry(&proj, &job)
        .expect("entry")
        .expect("a log");
    assert_eq!(log.bytes, 3 * 18);
    store
        .append_events(
            &proj,
            &job,
            &[storage_core::EventRecord::from_json(json!({"event": {"n": 3}})).expect("object")],
        )
        .expect("append");
    let report = store
        .retain_events(
            &proj,
            &job,
            &EventRetention::new(Retention::keep_all().with_max_count(2)),
        )
        .expect("retain");
    assert_eq!((report.kept, report.dropped), (2, Some(2)));
    // The new kinds of documents, and the old ones beside them.
    let kind = ExtKind::new("prodigy.reduce-checkpoint").expect("valid");
    store
        .put(
            &DocKey::Extension {
                repo: proj.clone(),
                kind: kind.clone(),
                name: storage_core::DocName::new("v1").expect("valid"),
            },
            &json!({"v": 1}),
        )
        .expect("put");
    store
        .put(
            &DocKey::UnifiedSession {
                session: SessionId::new("session-9").expect("valid"),
            },
            &json!({"id": "session-9"}),
        )
        .expect("put");
    assert_eq!(store.extension_kinds(&proj).expect("kinds"), [kind]);
    assert_eq!(store.list(&Scope::UnifiedSessions).expect("list").len(), 1);
    assert_eq!(store.list(&Scope::Sessions(proj)).expect("list"), [session]);
    drop(store);
    raw.batch_execute(&format!("DROP SCHEMA \"{old}\" CASCADE"))
        .expect("drop");
}

#[test]
fn processes_opening_a_new_store_at_once_create_it_once() {
    let Some(db) = TestDb::new() else { return };
    let schema = format!("{}_new", db.schema);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                PgStorage::connect_with(&db.url, PgOptions::default().schema(&schema))
                    .expect("every opener succeeds")
            });
        }
    });
    let mut raw = db.raw();
    let rows = raw
        .query(
            &format!("SELECT version, applied_by FROM \"{schema}\".schema_version"),
            &[],
        )
        .expect("versions");
    assert_eq!(
        rows.len(),
        usize::try_from(SCHEMA_VERSION).expect("positive")
    );
    let by: String = rows[0].get(1);
    assert!(by.starts_with("storage-postgres "), "{by}");
    raw.batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .expect("drop");
}

#[test]
fn a_database_that_is_not_utf8_is_refused() {
    let Some(db) = TestDb::new() else { return };
    let name = format!("{}_ascii", db.schema);
    let mut raw = db.raw();
    raw.batch_execute(&format!(
        "CREATE DATABASE \"{name}\" ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
    ))
    .expect("create database");
    let base = url().expect("checked");
    let base = base.split('?').next().expect("split gives one");
    let (server, _db) = base.rsplit_once('/').expect("a database in the URL");
    let other = with_app_name(&format!("{server}/{name}"), &db.schema);
    let err = PgStorage::connect(&other).expect_err("refused");
    let text = format!(
        "{err}: {}",
        std::error::Error::source(&err)
            .map(ToString::to_string)
            .unwrap_or_default()
    );
    assert!(
        text.contains("UTF8") && text.contains("SQL_ASCII"),
        "{text}"
    );
    raw.batch_execute(&format!("DROP DATABASE \"{name}\""))
        .expect("drop database");
}

/// Needs no server: refused before connecting.
#[test]
fn a_schema_name_that_is_not_plain_is_refused_before_connecting() {
    let err = PgStorage::connect_with(
        "postgresql://u:secret@127.0.0.1:1/db",
        PgOptions::default().schema("Robert'); DROP TABLE students;--"),
    )
    .expect_err("refused");
    let text = format!(
        "{err}: {}",
        std::error::Error::source(&err)
            .map(ToString::to_string)
            .unwrap_or_default()
    );
    assert!(text.contains("lowercase"), "{text}");
    assert!(!text.contains("secret"), "{text}");
}

/// Needs no server: nothing listens on port 1.
#[test]
fn an_unreachable_server_is_named_without_the_password_with_the_next_step() {
    let err =
        PgStorage::connect("postgresql://alice:secret@127.0.0.1:1/team").expect_err("no server");
    let text = err.to_string();
    assert!(
        matches!(
            err,
            Error::Database {
                op: "connect to",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        text,
        "cannot connect to `postgresql://alice@127.0.0.1:1/team (schema prodigy)`; check that the \
         server is running and reachable at that address; the next call connects again"
    );
}

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
        Error::UnsupportedLayout {
            found, supported, ..
        } => {
            assert_eq!(*found, u64::try_from(SCHEMA_VERSION + 1).expect("positive"));
            assert_eq!(*supported, u64::try_from(SCHEMA_VERSION).expect("positive"));
        }
        other => panic!("expected UnsupportedLayout, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains(&db.schema) && text.contains("upgrade"),
        "{text}"
    );
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

//! `FsStorage` specifics: layout versions, debris in listings, sweeping, corrupt documents.

use std::fs;

use serde_json::json;
use storage_core::SessionId;

use super::*;

#[test]
fn a_newer_layout_is_refused_with_the_versions_and_the_next_step() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("layout.json"), r#"{"layout_version": 7}"#).expect("write");
    let err = FsStorage::open(dir.path()).expect_err("newer");
    assert!(
        matches!(
            err,
            Error::UnsupportedLayout {
                found: 7,
                supported: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("upgrade prodigy-storage"), "{err}");
    fs::write(dir.path().join("layout.json"), "{oops").expect("write");
    let err = FsStorage::open(dir.path()).expect_err("corrupt");
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
    assert_eq!(
        layout_version(&dir.path().join("absent")).expect("absent"),
        None
    );
}

#[test]
fn listings_skip_temp_files_and_foreign_names_and_sweep_removes_dead_writers_debris() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FsStorage::open(dir.path()).expect("open");
    let repo = RepoKey::new("proj").expect("valid");
    let key = DocKey::Session {
        repo: repo.clone(),
        session: SessionId::new("session-1").expect("valid"),
    };
    store
        .put(&key, &json!({"session_id": "session-1"}))
        .expect("put");
    let sessions = store.layout().sessions_dir(&repo);
    // Abandoned: nobody holds its lock. In flight: a writer holds it.
    let dead = sessions.join(".tmp-4194305-0-session-2.json");
    fs::write(&dead, "{\"session_id\": \"sess").expect("debris");
    let (live, _writing) = crate::fsx::create_temp(&sessions, "session-3.json").expect("in flight");
    fs::write(sessions.join("notes.txt"), "user junk").expect("foreign");
    fs::write(sessions.join("session-4.json.bak"), "{}").expect("foreign");
    assert_eq!(
        store.list(&Scope::Sessions(repo.clone())).expect("list"),
        [key]
    );
    let report = store.sweep().expect("sweep");
    assert_eq!(report.removed, std::slice::from_ref(&dead));
    assert_eq!(report.kept_live, 1);
    assert!(!dead.exists() && live.exists());
    assert!(
        sessions.join("notes.txt").exists(),
        "sweep removes only temp files"
    );
}

#[test]
fn a_corrupt_document_names_its_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FsStorage::open(dir.path()).expect("open");
    let repo = RepoKey::new("proj").expect("valid");
    let key = DocKey::Session {
        repo: repo.clone(),
        session: SessionId::new("session-1").expect("valid"),
    };
    store.put(&key, &json!({})).expect("put");
    fs::write(store.layout().document(&key), "{\n  \"session_id\": tor").expect("corrupt");
    let err = store.get(&key).expect_err("corrupt");
    assert!(
        err.to_string()
            .contains("session-1.json` at line 2 is corrupt"),
        "{err}"
    );
}

#[test]
fn an_unlocked_temp_file_is_swept_even_if_its_pid_is_alive() {
    // Pids are per namespace and get reused: only the lock says "in use".
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FsStorage::open(dir.path()).expect("open");
    let sessions = store
        .layout()
        .sessions_dir(&RepoKey::new("proj").expect("valid"));
    fs::create_dir_all(&sessions).expect("mkdir");
    let ours = std::process::id();
    let abandoned = sessions.join(format!(".tmp-{ours}-1-session-1.json"));
    fs::write(&abandoned, "{").expect("w");
    let (fresh, _writing) = crate::fsx::create_temp(&sessions, "session-2.json").expect("temp");
    let report = store.sweep().expect("sweep");
    assert_eq!(report.removed, std::slice::from_ref(&abandoned));
    assert_eq!(report.kept_live, 1);
    assert!(fresh.exists(), "a live writer's temp file stays");
}

#[test]
fn directories_created_by_puts_registrations_and_locks_are_fsynced_in_their_parents() {
    use crate::fsx::tests::take_dir_fsyncs;
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("home/store");
    take_dir_fsyncs();
    let store = FsStorage::open(&root).expect("open");
    let synced = take_dir_fsyncs();
    for d in [dir.path().to_owned(), dir.path().join("home")] {
        assert!(
            synced.contains(&d),
            "{} not fsynced: {synced:?}",
            d.display()
        );
    }
    let project = dir.path().join("proj");
    fs::create_dir(&project).expect("mkdir");
    let repo = store.repo_key(&project).expect("register");
    let synced = take_dir_fsyncs();
    // `locks/` (for `repos.lock`) and `repos/` are new entries of the root.
    assert!(
        synced.iter().filter(|d| **d == root).count() >= 2,
        "{synced:?}"
    );
    let key = DocKey::Session {
        repo: repo.clone(),
        session: SessionId::new("session-1").expect("valid"),
    };
    store
        .put(&key, &json!({"session_id": "session-1"}))
        .expect("put");
    let synced = take_dir_fsyncs();
    for d in [
        root.clone(),
        root.join("state"),
        root.join("state").join(repo.as_str()),
    ] {
        assert!(
            synced.contains(&d),
            "{} not fsynced: {synced:?}",
            d.display()
        );
    }
}

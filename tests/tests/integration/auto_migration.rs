//! Prodigy's start-up hook: cheap when idle, once under concurrency, failures reported.

use std::process::{Command, Stdio};

use storage_fs::FsStorage;
use storage_migrate::{AutoOutcome, ensure_migrated};
use storage_tests::{Sandbox, fixture};

use crate::worker_bin;

#[test]
fn a_project_without_legacy_storage_costs_nothing_and_writes_nothing() {
    let sb = Sandbox::new();
    let store = FsStorage::open(sb.store()).expect("open");
    let before = storage_tests::tree(&sb.store());
    assert!(matches!(
        ensure_migrated(&store, &sb.project()),
        AutoOutcome::NothingToDo
    ));
    fs_err::create_dir_all(sb.project().join(".prodigy")).expect("mkdir");
    fs_err::write(sb.project().join(".prodigy/config.yml"), "x: 1\n").expect("w");
    fs_err::create_dir_all(sb.project().join(".prodigy/history")).expect("mkdir");
    fs_err::write(sb.project().join(".prodigy/history/NOTES.md"), "mine\n").expect("w");
    assert!(matches!(
        ensure_migrated(&store, &sb.project()),
        AutoOutcome::NothingToDo
    ));
    assert_eq!(
        storage_tests::tree(&sb.store()),
        before,
        "not even a registration"
    );
}

#[test]
fn legacy_storage_is_migrated_once_then_nothing_to_do() {
    let sb = Sandbox::new();
    fixture::legacy_project(&sb.project());
    let store = FsStorage::open(sb.store()).expect("open");
    match ensure_migrated(&store, &sb.project()) {
        AutoOutcome::Migrated(r) => assert!(r.legacy_files > 20, "{r:?}"),
        other => panic!("expected a migration, got {other:?}"),
    }
    assert!(matches!(
        ensure_migrated(&store, &sb.project()),
        AutoOutcome::NothingToDo
    ));
    assert!(sb.project().join(".prodigy/config.yml").exists());
}

/// A person rolled the migration back: the hook does not redo it at the next
/// start, and says how to migrate again; an explicit `migrate` re-arms it.
#[test]
fn after_an_explicit_rollback_the_hook_skips_until_migrate_is_run_by_hand() {
    let sb = Sandbox::new();
    fixture::legacy_project(&sb.project());
    let store = FsStorage::open(sb.store()).expect("open");
    assert!(matches!(
        ensure_migrated(&store, &sb.project()),
        AutoOutcome::Migrated(_)
    ));
    storage_migrate::rollback(
        &store,
        &sb.project(),
        &storage_migrate::RollbackOptions::default(),
    )
    .expect("rollback");
    let before = storage_tests::tree(sb.path());
    for _ in 0..2 {
        match ensure_migrated(&store, &sb.project()) {
            AutoOutcome::Skipped { reason } => {
                assert!(reason.contains("was rolled back"), "{reason}");
                assert!(reason.contains(" migrate "), "names the command: {reason}");
            }
            other => panic!("expected a skip after a rollback, got {other:?}"),
        }
    }
    assert_eq!(
        storage_tests::tree(sb.path()),
        before,
        "the skip changes nothing"
    );
    let report = storage_migrate::migrate(
        &store,
        &sb.project(),
        &storage_migrate::MigrateOptions::default(),
    )
    .expect("migrate by hand");
    assert_eq!(report.outcome, storage_migrate::Outcome::Migrated);
    assert!(matches!(
        ensure_migrated(&store, &sb.project()),
        AutoOutcome::NothingToDo
    ));
}

#[test]
fn a_worktree_inside_the_store_is_skipped_not_failed() {
    let sb = Sandbox::new();
    let wt = sb.store().join("worktrees/project/session-1");
    fs_err::create_dir_all(&wt).expect("mkdir");
    fixture::legacy_project(&wt);
    let store = FsStorage::open(sb.store()).expect("open");
    match ensure_migrated(&store, &wt) {
        AutoOutcome::Skipped { reason } => assert!(reason.contains("inside the store"), "{reason}"),
        other => panic!("expected a skip, got {other:?}"),
    }
}

#[test]
fn a_failure_is_reported_to_the_caller_and_changes_nothing() {
    let sb = Sandbox::new();
    fixture::legacy_project(&sb.project());
    let store = FsStorage::open(sb.store()).expect("open");
    // Another migration holds the lock: the hook reports, it does not hang forever or panic.
    let repo = store.repo_key(&sb.project()).expect("key");
    let name = storage_core::LockKey::new(format!("migrate-{repo}")).expect("valid");
    let _held = store
        .lock_internal(&name, storage_core::LockWait::NoWait)
        .expect("lock");
    let before = storage_tests::tree(&sb.project());
    let opts = storage_migrate::MigrateOptions {
        wait: std::time::Duration::ZERO,
        ..storage_migrate::MigrateOptions::default()
    };
    let err = storage_migrate::migrate(&store, &sb.project(), &opts).expect_err("locked");
    assert!(err.to_string().contains("is locked by process"), "{err}");
    assert_eq!(storage_tests::tree(&sb.project()), before);
}

#[test]
fn processes_starting_together_migrate_exactly_once() {
    let sb = Sandbox::new();
    fixture::legacy_project(&sb.project());
    let (root, project) = (sb.store(), sb.project());
    let children: Vec<_> = (0..4)
        .map(|_| {
            Command::new(worker_bin())
                .args([
                    "ensure",
                    root.to_str().expect("utf8"),
                    project.to_str().expect("utf8"),
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    let mut said: Vec<String> = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().expect("wait");
            assert!(out.status.success());
            String::from_utf8(out.stdout)
                .expect("utf8")
                .trim()
                .split(' ')
                .next()
                .expect("word")
                .to_owned()
        })
        .collect();
    said.sort();
    assert_eq!(said, ["migrated", "nothing", "nothing", "nothing"]);
}

#[test]
fn a_damaged_journal_fails_the_hook_with_its_path_and_changes_nothing() {
    let sb = Sandbox::new();
    fixture::legacy_project(&sb.project());
    let store = FsStorage::open(sb.store()).expect("open");
    let repo = store.repo_key(&sb.project()).expect("key");
    let journal = store.layout().migrations_dir(&repo).join("journal.json");
    fs_err::create_dir_all(journal.parent().expect("parent")).expect("mkdir");
    fs_err::write(&journal, "{not json").expect("w");
    let before = storage_tests::tree(&sb.project());
    match ensure_migrated(&store, &sb.project()) {
        AutoOutcome::Failed(e) => {
            let text = e.to_string();
            assert!(text.contains("journal.json"), "{text}");
            assert!(text.contains("cannot read migration record"), "{text}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    assert_eq!(storage_tests::tree(&sb.project()), before);
}

/// A process that waited for another's migration finds the work done and
/// answers without writing anything: not even a journal (which would leave
/// `migrations/<repo>/` behind for a project that has nothing there).
#[test]
fn a_migrate_that_waited_and_finds_the_work_done_writes_no_journal() {
    use storage_core::{LockKey, LockWait};
    let sb = Sandbox::new();
    let legacy = sb.project().join(".prodigy");
    fs_err::create_dir_all(&legacy).expect("mkdir");
    fs_err::write(
        legacy.join("session_state.json"),
        br#"{"session_id": "s-1"}"#,
    )
    .expect("write");
    let store = FsStorage::open(sb.store()).expect("open");
    let repo = store.repo_key(&sb.project()).expect("register");
    // Stand in for the process that is migrating: hold its lock.
    let key = LockKey::new(format!("migrate-{repo}")).expect("key");
    let held = store.lock_internal(&key, LockWait::NoWait).expect("lock");
    let project = sb.project();
    let waiter = std::thread::spawn(move || {
        let store = FsStorage::open(sb.store()).expect("open");
        let r = storage_migrate::migrate(
            &store,
            &project,
            &storage_migrate::MigrateOptions::default(),
        );
        (sb, r)
    });
    // Let it pass the unlocked check and block on the lock, then "finish".
    std::thread::sleep(std::time::Duration::from_millis(500));
    fs_err::remove_file(legacy.join("session_state.json")).expect("remove");
    drop(held);
    let (sb, r) = waiter.join().expect("no panic");
    let r = r.expect("migrate");
    assert_eq!(r.outcome, storage_migrate::Outcome::NothingToMigrate);
    let dir = sb.store().join("migrations").join(repo.as_str());
    assert!(!dir.exists(), "nothing written under {}", dir.display());
}

//! Legacy files whose names look like the store's own temp files
//! (`.tmp-<pid>-…`) are the user's bytes: no sweep may take them for debris.

use std::path::{Path, PathBuf};

use storage_fs::FsStorage;
use storage_migrate::{MigrateOptions, Outcome, RollbackOptions, migrate, rollback};
use storage_tests::{Sandbox, fixture};

/// A pid that no process has now, so a sweep would judge its temp files dead.
fn dead_pid() -> u32 {
    (1..100_000)
        .map(|n| 4_000_000 - n)
        .find(|p| !Path::new(&format!("/proc/{p}")).exists())
        .expect("some pid is free")
}

/// Every file under `root` whose name is `name`.
fn find(root: &Path, name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs_err::read_dir(&d).expect("list") {
            let e = e.expect("entry");
            let t = e.file_type().expect("type");
            if t.is_dir() {
                stack.push(e.path());
            } else if e.file_name() == name {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn legacy_files_named_like_temp_files_survive_every_sweep() {
    let sb = Sandbox::new();
    fixture::legacy_project(&sb.project());
    let name = format!(".tmp-{}-0-notes.json", dead_pid());
    let legacy_file = sb.project().join(".prodigy/mapreduce").join(&name);
    fs_err::write(&legacy_file, b"the user's bytes\n").expect("write");
    let store = FsStorage::open(sb.store()).expect("open");
    let r = migrate(&store, &sb.project(), &MigrateOptions::default()).expect("migrate");
    assert_eq!(r.outcome, Outcome::Migrated);
    let copies = find(&sb.store(), &name);
    assert_eq!(
        copies.len(),
        2,
        "published in the legacy area and backed up: {copies:?}"
    );

    // The store's sweep, and the sweep a later migration's recovery runs.
    let swept = store.sweep().expect("sweep");
    assert!(swept.removed.is_empty(), "{:?}", swept.removed);
    // Something new for the next run to migrate (an old Prodigy wrote it).
    fs_err::write(sb.project().join(".prodigy/cache/later.json"), b"{}").expect("write");
    let again = migrate(&store, &sb.project(), &MigrateOptions::default()).expect("migrate");
    assert_eq!(again.outcome, Outcome::Migrated);
    assert_eq!(
        find(&sb.store(), &name),
        copies,
        "both copies are still there"
    );

    // Rolling back both migrations puts the file back, byte for byte.
    rollback(&store, &sb.project(), &RollbackOptions::default()).expect("rollback later");
    rollback(&store, &sb.project(), &RollbackOptions::default()).expect("rollback first");
    assert_eq!(
        fs_err::read(&legacy_file).expect("restored"),
        b"the user's bytes\n"
    );
}

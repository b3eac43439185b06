//! What migrate refuses before changing anything.

use crate::support::{Sandbox, assert_same_tree, cmd, fixture, run, snapshot_without_locks};

fn stderr_of(sb: &Sandbox, cwd: &std::path::Path, args: &[&str]) -> String {
    let out = cmd(sb, cwd, args).output().expect("run");
    assert!(!out.status.success(), "{args:?} should fail");
    String::from_utf8(out.stderr).expect("utf8")
}

#[test]
fn a_missing_or_non_directory_project_is_refused_by_name() {
    let sb = Sandbox::new();
    let err = stderr_of(&sb, sb.path(), &["migrate", "no-such-project"]);
    assert!(
        err.starts_with(
            "error: refusing to migrate `no-such-project`: the project directory cannot be read"
        ),
        "{err}"
    );
    fs_err::write(sb.path().join("file"), "x").expect("w");
    let err = stderr_of(&sb, sb.path(), &["migrate", "file"]);
    assert!(err.contains("it is not a directory"), "{err}");
}

#[test]
fn a_worktree_inside_the_store_is_refused_before_anything_changes() {
    let sb = Sandbox::new();
    let wt = sb
        .store()
        .join("worktrees/project/session-0b9f3c9e-6f2d-4d57-a3c4-5a8e2b1d7f10");
    fs_err::create_dir_all(&wt).expect("mkdir");
    fixture::legacy_project(&wt);
    let before = snapshot_without_locks(sb.path());
    let err = stderr_of(&sb, &wt, &["migrate", "."]);
    assert!(err.contains("it is inside the store"), "{err}");
    assert!(
        err.contains("migrate the original project instead"),
        "{err}"
    );
    assert_same_tree(&snapshot_without_locks(sb.path()), &before, "unchanged");
}

#[test]
fn running_from_home_never_migrates_the_store_into_itself() {
    let sb = Sandbox::new();
    // The store is ~/.prodigy; running in ~ makes `.prodigy` the store itself.
    run(&sb, &["status"], true);
    let out = cmd(&sb, &sb.home(), &["migrate", "."])
        .env_remove("PRODIGY_HOME")
        .output()
        .expect("run");
    // Through --home the store is ~/.prodigy too.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("is the store itself"), "{err}");
}

#[test]
fn a_symlinked_prodigy_directory_is_not_followed() {
    let sb = Sandbox::new();
    fs_err::create_dir_all(sb.path().join("elsewhere-project")).expect("mkdir");
    fixture::legacy_project(&sb.path().join("elsewhere-project"));
    std::os::unix::fs::symlink(
        sb.path().join("elsewhere-project/.prodigy"),
        sb.project().join(".prodigy"),
    )
    .expect("link");
    let before = snapshot_without_locks(sb.path());
    let err = stderr_of(&sb, &sb.project(), &["migrate"]);
    assert!(
        err.contains("it is a symbolic link, which migration never follows"),
        "{err}"
    );
    assert_same_tree(&snapshot_without_locks(sb.path()), &before, "unchanged");
}

#[test]
fn a_project_without_legacy_storage_has_nothing_to_migrate() {
    let sb = Sandbox::new();
    fs_err::create_dir_all(sb.project().join(".prodigy")).expect("mkdir");
    fs_err::write(sb.project().join(".prodigy/config.yml"), "x: 1\n").expect("w");
    let text = String::from_utf8(run(&sb, &["migrate"], true).stdout).expect("utf8");
    assert!(text.contains("nothing to migrate"), "{text}");
    assert!(
        text.contains("1 file(s) of yours there were left untouched"),
        "{text}"
    );
}

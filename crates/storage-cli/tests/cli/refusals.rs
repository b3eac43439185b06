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

/// A mistyped project path is an error for `status` too, not a report that
/// exits 0 saying it "cannot be read".
#[test]
fn status_of_a_missing_project_fails_and_names_the_path() {
    let sb = Sandbox::new();
    let out = cmd(&sb, sb.path(), &["status", "no-such-project"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).expect("utf8");
    assert!(
        err.starts_with("error: the project `no-such-project` does not exist; check the path"),
        "{err}"
    );
    fs_err::write(sb.path().join("file"), "x").expect("w");
    let err = stderr_of(&sb, sb.path(), &["status", "file"]);
    assert!(err.contains("`file` is not a directory"), "{err}");
}

/// `--home` naming a file: every command says the store is a file and that
/// `--home` is what to change (not "Not a directory" on `layout.json`, and
/// not "not created yet").
#[test]
fn a_store_that_is_a_file_is_refused_naming_the_option_that_chose_it() {
    let sb = Sandbox::new();
    let file = sb.path().join("file");
    fs_err::write(&file, "x").expect("w");
    let project = sb.project();
    let project = project.to_str().expect("utf-8");
    for args in [
        &["status", project][..],
        &["layout"],
        &["migrate", project],
        &["backups", "list"],
    ] {
        let out = std::process::Command::new(crate::support::bin())
            .arg("--home")
            .arg(&file)
            .args(args)
            .current_dir(sb.path())
            .env("HOME", sb.home())
            .env("NO_COLOR", "1")
            .output()
            .expect("run");
        let err = sb.redact(&String::from_utf8_lossy(&out.stderr));
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            err.starts_with(
                "error: the store `[SANDBOX]/file` (chosen by --home) is a file, not a directory; pass a directory to `--home`"
            ),
            "{args:?}: {err}"
        );
    }
    let out = crate::support::cmd(&sb, sb.path(), &["layout"])
        .env("PRODIGY_HOME", file.join("store"))
        .output()
        .expect("run");
    assert!(out.status.success(), "--home still wins over PRODIGY_HOME");
    let out = std::process::Command::new(crate::support::bin())
        .arg("layout")
        .env("PRODIGY_HOME", file.join("store"))
        .env("HOME", sb.home())
        .output()
        .expect("run");
    let err = sb.redact(&String::from_utf8_lossy(&out.stderr));
    assert!(
        err.contains(
            "cannot be a directory: `[SANDBOX]/file` is a file; set `PRODIGY_HOME` to a directory"
        ),
        "{err}"
    );
}

/// A store inside the project's `.prodigy` is refused with that reason, not
/// as "this `.prodigy` is the store itself".
#[test]
fn a_store_inside_the_legacy_directory_is_refused_as_such() {
    let sb = Sandbox::new();
    fixture::legacy_project(&sb.project());
    let store = sb.project().join(".prodigy/store");
    let out = std::process::Command::new(crate::support::bin())
        .arg("--home")
        .arg(&store)
        .arg("migrate")
        .arg(sb.project())
        .env("HOME", sb.home())
        .env("NO_COLOR", "1")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = sb.redact(&String::from_utf8_lossy(&out.stderr));
    assert!(
        err.contains("the store `[SANDBOX]/project/.prodigy/store` is inside this `.prodigy`"),
        "{err}"
    );
    assert!(!err.contains("is the store itself"), "{err}");
}

/// `layout_version: 0` is not a version: refused by name.
#[test]
fn a_layout_version_of_zero_is_refused() {
    let sb = Sandbox::new();
    fs_err::create_dir_all(sb.store()).expect("mkdir");
    fs_err::write(sb.store().join("layout.json"), b"{\"layout_version\": 0}").expect("w");
    let err = stderr_of(&sb, &sb.project(), &["status"]);
    assert!(
        err.contains("`layout_version` is 0; versions start at 1"),
        "{err}"
    );
}

/// Issue 22, item 1: a store value with another scheme (`mysql://`,
/// `http://`) or `key=value` words that are not a PostgreSQL connection
/// string is refused before anything is written (it was taken as a
/// directory: `migrate` built a store inside the project and printed the
/// password in its path); no message shows a password; a URL given to
/// `--home` or `PRODIGY_HOME` is refused too.
#[test]
fn a_store_value_that_is_neither_a_directory_nor_postgresql_is_refused_without_its_password() {
    let sb = crate::support::fixture_sandbox();
    let before = crate::support::snapshot(sb.path());
    let bare = |args: &[&str], env: &[(&str, &str)]| {
        let mut c = std::process::Command::new(crate::support::bin());
        c.args(args)
            .current_dir(sb.project())
            .env("HOME", sb.home())
            .env_remove("PRODIGY_HOME")
            .env_remove("PRODIGY_STORE")
            .env("NO_COLOR", "1");
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().expect("run prodigy-storage")
    };
    for (args, env) in [
        (
            vec!["--store", "mysql://bob:s3cret@db/prodigy", "migrate"],
            vec![],
        ),
        (
            vec!["--store", "http://bob:s3cret@example.com/store", "status"],
            vec![],
        ),
        (
            vec!["--store", "host=db db=prodigy password=s3cret", "migrate"],
            vec![],
        ),
        (
            vec!["migrate"],
            vec![("PRODIGY_STORE", "mysql://bob:s3cret@db/x")],
        ),
        (
            vec!["--home", "postgres://bob:s3cret@db/x", "migrate"],
            vec![],
        ),
        (
            vec!["migrate"],
            vec![("PRODIGY_HOME", "https://bob:s3cret@h/x")],
        ),
    ] {
        let out = bare(&args, &env);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?} {env:?}: {err}");
        assert!(!err.contains("s3cret"), "a password shown: {err}");
        assert!(err.contains("***") || err.contains("refused"), "{err}");
    }
    // --schema names a PostgreSQL schema: with the file store, a mistake.
    let out = bare(&["--schema", "team_a", "status"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--schema names the PostgreSQL schema"),
        "{out:?}"
    );
    assert_eq!(
        crate::support::snapshot(sb.path()),
        before,
        "nothing written anywhere"
    );
}

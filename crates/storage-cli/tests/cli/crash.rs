//! A crash (abort) at every named step of migrate, rollback and recovery, then the invariants.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;

use crate::support::{
    Sandbox, assert_same_tree, cmd, files, fixture_sandbox, run, run_json, snapshot,
};

/// The protocol's own list, so a new crash point is tested without editing this file.
fn points(rollback: bool) -> Vec<&'static str> {
    storage_migrate::CRASH_POINTS
        .iter()
        .copied()
        .filter(|p| p.contains("rollback") == rollback)
        .collect()
}

pub fn crash(sb: &Sandbox, args: &[&str], point: &str) {
    let out = cmd(sb, &sb.project(), args)
        .env("PRODIGY_STORAGE_CRASH_AT", point)
        .output()
        .expect("run");
    assert_eq!(
        out.status.signal(),
        Some(6),
        "{point}: expected an abort, got {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// I1 at the moment of the crash: every legacy storage file is, byte for
/// byte, in the project or in some backup of the store.
pub fn nothing_lost(sb: &Sandbox, original: &BTreeMap<PathBuf, Vec<u8>>, point: &str) {
    let legacy: BTreeMap<_, _> = files(&sb.project().join(".prodigy")).into_iter().collect();
    let mut backups: Vec<BTreeMap<PathBuf, Vec<u8>>> = Vec::new();
    if let Ok(dirs) = fs_err::read_dir(sb.store().join("migrations/project")) {
        for d in dirs {
            let b = d.expect("entry").path().join("backup");
            if b.exists() {
                backups.push(files(&b).into_iter().collect());
            }
        }
    }
    for (rel, bytes) in original {
        let here =
            legacy.get(rel) == Some(bytes) || backups.iter().any(|b| b.get(rel) == Some(bytes));
        assert!(
            here,
            "{point}: `{}` is neither in the project nor in a backup",
            rel.display()
        );
    }
}

pub fn project_without_git(sb: &Sandbox) -> BTreeMap<PathBuf, storage_tests::fixture::Node> {
    snapshot(&sb.project())
        .into_iter()
        .filter(|(p, _)| !p.starts_with(".git"))
        .collect()
}

/// After recovery: migrated, verified, no debris, and rollback gives back the original tree.
pub fn converged(
    sb: &Sandbox,
    original_tree: &BTreeMap<PathBuf, storage_tests::fixture::Node>,
    point: &str,
) {
    let v = run_json(sb, &["verify"]);
    assert_eq!(v["problems"], serde_json::json!([]), "{point}: {v:#}");
    let debris: Vec<_> = snapshot(&sb.store())
        .into_keys()
        .filter(|p| {
            let s = p.to_string_lossy();
            s.contains("/staging") || s.ends_with("journal.json") || s.contains(".tmp-")
        })
        .collect();
    assert!(debris.is_empty(), "{point}: debris {debris:?}");
    let second = run_json(sb, &["migrate"]);
    assert_eq!(
        second["outcome"], "nothing_to_migrate",
        "{point}: a further run changes nothing"
    );
    run(sb, &["rollback"], true);
    assert_same_tree(&project_without_git(sb), original_tree, point);
}

#[test]
fn a_crash_at_every_step_of_migration_is_recovered_by_the_next_run() {
    for point in points(false) {
        let sb = fixture_sandbox();
        let original = files(&sb.project().join(".prodigy")).into_iter().collect();
        let original_tree = project_without_git(&sb);
        crash(&sb, &["migrate"], point);
        nothing_lost(&sb, &original, point);
        // I7: the tool still starts and explains the state.
        let status = String::from_utf8(run(&sb, &["status"], true).stdout).expect("utf8");
        if point != "after-lock" {
            assert!(status.contains("interrupted: "), "{point}: {status}");
        }
        let report = run_json(&sb, &["migrate"]);
        if point != "after-lock" {
            assert!(report["recovered"].is_string(), "{point}: {report:#}");
        }
        converged(&sb, &original_tree, point);
    }
}

#[test]
fn a_crash_at_every_step_of_rollback_is_finished_by_the_next_run() {
    for point in points(true) {
        let sb = fixture_sandbox();
        let original_tree = project_without_git(&sb);
        run(&sb, &["migrate"], true);
        crash(&sb, &["rollback"], point);
        let status = String::from_utf8(run(&sb, &["status"], true).stdout).expect("utf8");
        assert!(
            status.contains("interrupted: RollingBack"),
            "{point}: {status}"
        );
        let report = run_json(&sb, &["rollback"]);
        assert!(report["recovered"].is_string(), "{point}: {report:#}");
        assert_same_tree(&project_without_git(&sb), &original_tree, point);
    }
}

#[test]
fn a_crash_during_recovery_is_recovered_too() {
    for (first, second) in [
        ("after-publish", "mid-retire"),
        ("mid-publish", "mid-publish"),
        ("after-verify", "mid-publish"),
    ] {
        let sb = fixture_sandbox();
        let original = files(&sb.project().join(".prodigy")).into_iter().collect();
        let original_tree = project_without_git(&sb);
        crash(&sb, &["migrate"], first);
        crash(&sb, &["migrate"], second);
        nothing_lost(&sb, &original, second);
        run(&sb, &["migrate"], true);
        converged(&sb, &original_tree, second);
    }
    let sb = fixture_sandbox();
    let original_tree = project_without_git(&sb);
    run(&sb, &["migrate"], true);
    crash(&sb, &["rollback"], "mid-rollback-restore");
    crash(&sb, &["rollback"], "mid-rollback-remove");
    run(&sb, &["rollback"], true);
    assert_same_tree(
        &project_without_git(&sb),
        &original_tree,
        "rollback after crashes in recovery",
    );
}

/// A directory of storage files is moved into the backup whole only if it
/// still holds exactly the files planned: one an old Prodigy wrote after
/// planning (here: between a crash and the recovery) is never swept into
/// the backup unseen; it stays, and the next plan migrates it.
#[test]
fn a_file_written_into_a_storage_directory_after_planning_is_not_swept_away() {
    let sb = Sandbox::new();
    let cache = sb.project().join(".prodigy/cache");
    fs_err::create_dir_all(&cache).expect("mkdir");
    fs_err::write(cache.join("a.json"), b"{\"a\": 1}").expect("write");
    fs_err::write(cache.join("b.json"), b"{\"b\": 2}").expect("write");
    crash(&sb, &["migrate"], "after-publish");
    fs_err::write(cache.join("late.json"), b"{\"late\": 3}").expect("write");
    let report = run_json(&sb, &["migrate"]);
    assert_eq!(report["outcome"], "migrated", "{report:#}");
    assert!(report["recovered"].is_string(), "{report:#}");
    assert_eq!(
        report["legacy_files"], 1,
        "the late file, planned now: {report:#}"
    );
    assert_eq!(
        fs_err::read(sb.store().join("legacy/project/cache/late.json")).expect("migrated"),
        b"{\"late\": 3}"
    );
    run(&sb, &["verify"], true);
}

/// The troubleshooting path for a damaged journal after a crash while the
/// legacy files were being moved into the backup (`docs/migration.md`):
/// write the journal again naming the unfinished migration and `Retiring`,
/// run `migrate`; then `rollback` restores the exact project (before, moving
/// the journal away left a backup that rollback ignored).
#[test]
fn a_damaged_journal_repaired_as_documented_ends_in_a_correct_state() {
    let sb = fixture_sandbox();
    let original_tree = project_without_git(&sb);
    crash(&sb, &["migrate"], "mid-retire");
    let journal = sb.store().join("migrations/project/journal.json");
    let txid =
        serde_json::from_slice::<serde_json::Value>(&fs_err::read(&journal).expect("journal"))
            .expect("json")["txid"]
            .as_str()
            .expect("txid")
            .to_owned();
    fs_err::write(&journal, b"{\"txid\": ").expect("damage it");
    let out = run(&sb, &["migrate"], false);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("write it again"),
        "the error names the documented repair: {err}"
    );
    // The documented repair: the migration not in history.jsonl, phase `retiring`.
    fs_err::write(
        &journal,
        format!("{{\"txid\": \"{txid}\", \"phase\": \"retiring\"}}"),
    )
    .expect("repair");
    run(&sb, &["migrate"], true);
    assert!(
        run_json(&sb, &["verify"])["problems"]
            .as_array()
            .expect("problems")
            .is_empty()
    );
    run(&sb, &["rollback"], true);
    assert_same_tree(
        &project_without_git(&sb),
        &original_tree,
        "after repair and rollback",
    );
}

//! Legacy `.prodigy/` directories below the project root (an old Prodigy run
//! from `services/worker/` wrote `services/worker/.prodigy/`): found by
//! `status`, imported by `migrate`, checked by `verify`, put back by `rollback`.

use std::path::Path;

use crate::support::{Sandbox, assert_same_tree, fixture_sandbox, run, run_json, snapshot};

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
}

/// Legacy storage in `services/worker/.prodigy/` (and a file of the user's
/// there), plus `.prodigy/` directories the walk must not see: inside
/// `.git`, behind a symbolic link, and in a nested repository.
fn plant(sb: &Sandbox) {
    let p = sb.project();
    let worker = p.join("services/worker/.prodigy");
    write(&worker.join("state.json"), r#"{"worker": true}"#);
    write(&worker.join("cache/item.json"), r#"{"cached": 1}"#);
    write(&worker.join("history/run-1.json"), r#"{"run": 1}"#);
    write(&worker.join("config.yml"), "mine: true\n");
    write(&p.join(".git/sub/.prodigy/state.json"), r#"{"git": true}"#);
    let outside = sb.path().join("outside");
    write(&outside.join(".prodigy/state.json"), r#"{"outside": true}"#);
    std::os::unix::fs::symlink(&outside, p.join("linked")).expect("symlink");
    write(&p.join("vendor/other/.git/HEAD"), "ref: refs/heads/main\n");
    write(
        &p.join("vendor/other/.prodigy/state.json"),
        r#"{"nested": true}"#,
    );
}

fn legacy_dirs(report: &serde_json::Value) -> Vec<String> {
    std::iter::once(report)
        .chain(report["subdirectories"].as_array().into_iter().flatten())
        .map(|r| r["legacy_dir"].as_str().expect("legacy_dir").to_owned())
        .collect()
}

#[test]
fn status_and_dry_run_report_each_legacy_directory_below_the_root() {
    let sb = fixture_sandbox();
    plant(&sb);
    let status = run_json(&sb, &["status"]);
    let dirs = legacy_dirs(&status["project"]["legacy"]);
    let root = sb.project().canonicalize().expect("canonical");
    assert_eq!(
        dirs,
        [
            root.join(".prodigy").display().to_string(),
            root.join("services/worker/.prodigy").display().to_string()
        ],
        "the root's and the sub-directory's, nothing in .git, behind links or in another repository"
    );
    assert_eq!(
        status["project"]["legacy"]["subdirectories"][0]["legacy_files"],
        3
    );
    let human = String::from_utf8_lossy(&run(&sb, &["status"], true).stdout).into_owned();
    assert!(
        human.contains("legacy storage: 3 file(s)") && human.contains("services/worker/.prodigy"),
        "{human}"
    );
}

#[test]
fn migrate_imports_sub_directories_and_rollback_puts_every_file_back() {
    let sb = fixture_sandbox();
    plant(&sb);
    let p = sb.project();
    let before = snapshot(&p);

    let report = run_json(&sb, &["migrate"]);
    assert_eq!(report["outcome"], "migrated");
    let sub = &report["subdirectories"][0];
    assert_eq!(sub["outcome"], "migrated", "{report:#}");
    assert_eq!(sub["legacy_files"], 3);
    assert_eq!(sub["user_files_untouched"], 1);
    assert_eq!(report["subdirectories"].as_array().map(Vec::len), Some(1));
    let worker = p.join("services/worker/.prodigy");
    assert!(!worker.join("state.json").exists());
    assert!(worker.join("config.yml").exists(), "the user's file stays");
    // Kept verbatim under its own sub-directory: no clash with the root's files.
    let kept = sb
        .store()
        .join("legacy/project/subdirs/services/worker/state.json");
    assert_eq!(
        std::fs::read_to_string(&kept).expect("kept"),
        r#"{"worker": true}"#
    );
    for untouched in [
        ".git/sub/.prodigy/state.json",
        "linked/.prodigy/state.json",
        "vendor/other/.prodigy/state.json",
    ] {
        assert!(p.join(untouched).exists(), "{untouched} was moved");
    }

    let verify = run_json(&sb, &["verify"]);
    assert_eq!(verify["problems"], serde_json::json!([]), "{verify:#}");
    assert_eq!(verify["legacy_files_left"], 0);

    let rollback = run_json(&sb, &["rollback"]);
    assert_eq!(
        rollback["also_undone"].as_array().map(Vec::len),
        Some(1),
        "{rollback:#}"
    );
    assert_same_tree(&before, &snapshot(&p), "project after rollback");
}

#[test]
fn a_project_whose_only_legacy_storage_is_in_a_sub_directory_is_migrated() {
    let sb = Sandbox::new();
    let p = sb.project();
    write(&p.join("README.md"), "hello\n");
    write(&p.join("tools/.prodigy/progress/p.json"), r#"{"p": 1}"#);
    let before = snapshot(&p);
    let dry = run_json(&sb, &["migrate", "--dry-run"]);
    assert_eq!(dry["outcome"], "dry_run", "{dry:#}");
    let report = run_json(&sb, &["migrate"]);
    assert_eq!(report["outcome"], "migrated", "{report:#}");
    assert!(!p.join("tools/.prodigy/progress/p.json").exists());
    let human = String::from_utf8_lossy(&run(&sb, &["verify"], true).stdout).into_owned();
    assert!(!human.contains("not migrated yet"), "{human}");
    run_json(&sb, &["rollback"]);
    assert_same_tree(&before, &snapshot(&p), "project after rollback");
}

/// A store of this tool in `<dir>` (it has `layout.json`), with an event log.
fn plant_store(
    dir: &Path,
) -> std::collections::BTreeMap<std::path::PathBuf, crate::support::fixture::Node> {
    let store = storage_fs::FsStorage::open(dir).expect("a store");
    let (repo, job) = (
        storage_core::RepoKey::new("tools").expect("valid"),
        storage_core::JobId::new("mapreduce-1").expect("valid"),
    );
    let e = storage_core::EventRecord::from_json(serde_json::json!({"n": 1})).expect("event");
    storage_core::Storage::append_events(&store, &repo, &job, &[e]).expect("append");
    snapshot(dir)
}

/// Issue 21, item 3: a store of this tool nested in the project (`PRODIGY_HOME`
/// once pointed at `tools/.prodigy`) is not a legacy directory: `migrate`
/// and start-up leave it exactly as it is (its log used to vanish into the
/// project's migration).
#[test]
fn a_store_nested_in_the_project_is_never_migrated() {
    let sb = fixture_sandbox();
    let nested = sb.project().join("tools/.prodigy");
    let before = plant_store(&nested);
    let r = run_json(&sb, &["migrate"]);
    assert_eq!(
        legacy_dirs(&r).len(),
        1,
        "only the project's own .prodigy: {r:#}"
    );
    assert_same_tree(&snapshot(&nested), &before, "the nested store is untouched");
    let status = run_json(&sb, &["status"]);
    assert!(
        !status.to_string().contains("tools/.prodigy"),
        "status does not offer it: {status:#}"
    );
}

/// The project's own `.prodigy` being a store of this tool (not the one in
/// use) is refused with the reason, and nothing in it changes.
#[test]
fn a_project_whose_own_prodigy_is_a_store_is_refused_with_the_reason() {
    let sb = Sandbox::new();
    let own = sb.project().join(".prodigy");
    let before = plant_store(&own);
    let out = run(&sb, &["migrate"], false);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is a prodigy-storage store") && err.contains("--home"),
        "{err}"
    );
    assert_same_tree(&snapshot(&own), &before, "untouched");
}

/// Issue 21, item 7: `backups prune` keeps every backup the latest
/// migration's rollback needs, the root's and its sub-directories' (it used
/// to keep only the newest transaction's, so the root's went and `rollback`
/// was then impossible).
#[test]
fn prune_keeps_every_backup_of_the_latest_run_and_rollback_still_works() {
    let sb = Sandbox::new();
    // Only typed legacy files, published unchanged: no backup holds a file
    // found nowhere else, so only the rollback rule can keep them.
    for (dir, job) in [
        (".prodigy", "mapreduce-1"),
        ("services/api/.prodigy", "mapreduce-77"),
    ] {
        write(
            &sb.project()
                .join(dir)
                .join(format!("mapreduce/dlq/{job}/items/item_1.json")),
            r#"{"item_id": "item_1", "failure_count": 1}"#,
        );
    }
    let before = snapshot(&sb.project());
    let report = run_json(&sb, &["migrate"]);
    assert_eq!(report["subdirectories"].as_array().map(Vec::len), Some(1));
    let pruned = run_json(&sb, &["backups", "prune", "--older-than", "0s"]);
    assert_eq!(pruned["pruned"], serde_json::json!([]), "{pruned:#}");
    assert_eq!(
        pruned["kept"].as_array().map(Vec::len),
        Some(2),
        "the root's and the sub-directory's: {pruned:#}"
    );
    run_json(&sb, &["rollback"]);
    assert_same_tree(&before, &snapshot(&sb.project()), "project after rollback");
}

/// Issue 21, item 10: a sub-directory whose migration fails after the
/// project's own transaction committed: the error says what committed and
/// stays migrated (it claimed everything was as it was), and the next
/// `migrate` picks up what is left.
#[test]
fn a_sub_directory_failing_after_the_root_committed_says_what_stays_migrated() {
    use std::process::Stdio;
    let sb = fixture_sandbox();
    let item = sb
        .project()
        .join("services/api/.prodigy/mapreduce/dlq/mapreduce-77/items/item_1.json");
    write(&item, r#"{"item_id": "item_1", "failure_count": 1}"#);
    let pause = sb.path().join("paused");
    let wait_for_pause = || {
        let start = std::time::Instant::now();
        while !pause.exists() {
            assert!(start.elapsed().as_secs() < 60, "never paused");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    };
    let child = crate::support::cmd(&sb, &sb.project(), &["migrate"])
        .env("PRODIGY_STORAGE_PAUSE_AT", "before-verify")
        .env("PRODIGY_STORAGE_PAUSE_FILE", &pause)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // The project's own transaction: let it go on.
    wait_for_pause();
    std::fs::remove_file(&pause).expect("go on");
    // The sub-directory's: its staged copy is damaged before verification.
    wait_for_pause();
    let records = sb.store().join("migrations/project");
    let staged: Vec<_> = crate::support::files(&records)
        .into_iter()
        .map(|(p, _)| records.join(p))
        .filter(|p| p.to_string_lossy().contains("staging") && p.ends_with("item_1.json"))
        .collect();
    assert_eq!(staged.len(), 1, "{staged:?}");
    std::fs::write(&staged[0], "damaged").expect("damage");
    std::fs::remove_file(&pause).expect("go on");
    let out = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("could not be migrated")
            && err.contains("were committed and stay migrated")
            && err.contains("prodigy-storage rollback"),
        "{err}"
    );
    assert!(
        item.exists(),
        "the failed sub-directory's file is where it was"
    );
    assert!(
        !sb.project().join(".prodigy/session_state.json").exists(),
        "the project's own files stay migrated"
    );
    let again = run_json(&sb, &["migrate"]);
    assert_eq!(again["outcome"], "migrated", "{again:#}");
    assert!(!item.exists(), "picked up by the next run");
}

//! The fixture project migrated by the real binary: reports, store tree, rollback, re-runs.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::support::{
    Sandbox, assert_same_tree, files, fixture, fixture_sandbox, redact, run, run_json, snapshot,
    snapshot_without_locks,
};

/// The store's tree with modes, redacted, without the lock files (their
/// holder text changes on every run).
fn store_tree(sb: &Sandbox) -> String {
    let mut out = String::new();
    for l in redact(sb, &storage_tests::tree(&sb.store())).lines() {
        if l.starts_with("locks/") {
            continue;
        }
        // Records holding times, inodes and paths vary in size: keep name and mode.
        let varies =
            (l.starts_with("migrations/") && !l.contains("/backup/")) || l.starts_with("repos/");
        match l.rsplit_once(' ') {
            Some((head, size)) if varies && size.ends_with('B') => out.push_str(head),
            _ => out.push_str(l),
        }
        out.push('\n');
    }
    out
}

fn legacy_storage_files(
    before: &BTreeMap<PathBuf, Vec<u8>>,
    after: &BTreeMap<PathBuf, Vec<u8>>,
) -> Vec<PathBuf> {
    before
        .keys()
        .filter(|k| !after.contains_key(*k))
        .cloned()
        .collect()
}

#[test]
fn the_fixture_migrates_completely_and_the_users_files_stay() {
    let sb = fixture_sandbox();
    let legacy = sb.project().join(".prodigy");
    let before: BTreeMap<_, _> = files(&legacy).into_iter().collect();
    let report = run_json(&sb, &["migrate"]);
    insta::assert_snapshot!(
        "fixture_report",
        redact(&sb, &serde_json::to_string_pretty(&report).expect("json"))
    );
    insta::assert_snapshot!("fixture_store_tree", store_tree(&sb));
    insta::assert_snapshot!(
        "fixture_project_after",
        redact(&sb, &storage_tests::tree(&sb.project().join(".prodigy")))
    );

    // The user's files: untouched, byte for byte, with their times.
    let after: BTreeMap<_, _> = files(&legacy).into_iter().collect();
    for (rel, bytes) in &after {
        assert_eq!(before.get(rel), Some(bytes), "{} changed", rel.display());
    }
    assert_eq!(report["user_files_untouched"], after.len());
    let git = std::process::Command::new("git")
        .args(["status", "--porcelain", "--", ".prodigy"])
        .current_dir(sb.project())
        .output()
        .expect("git");
    assert!(
        !String::from_utf8_lossy(&git.stdout).contains(" D "),
        "git sees deletions"
    );

    // Every storage file is in the backup, byte for byte (I1).
    let txid = report["txid"].as_str().expect("txid");
    let backup = PathBuf::from(report["backup"].as_str().expect("backup"));
    assert!(backup.ends_with(format!("migrations/project/{txid}/backup")));
    let moved = legacy_storage_files(&before, &after);
    assert_eq!(
        moved.len() as u64,
        report["legacy_files"].as_u64().expect("n")
    );
    for rel in &moved {
        assert_eq!(
            &fs_err::read(backup.join(rel)).expect("in backup"),
            &before[rel],
            "{}",
            rel.display()
        );
    }

    // Every event line is in exactly one per-job or unrouted file, in order.
    let store = sb.store();
    let mut source_lines: Vec<Vec<u8>> = Vec::new();
    for log in [
        "mapreduce/events/global/events.20250906_082000.jsonl.gz",
        "mapreduce/events/global/events.jsonl",
    ] {
        source_lines.extend(
            before[Path::new(log)]
                .split_inclusive(|&b| b == b'\n')
                .map(<[u8]>::to_vec),
        );
    }
    let mut migrated_lines: Vec<Vec<u8>> = Vec::new();
    for (rel, bytes) in files(&store) {
        let s = rel.to_string_lossy();
        if (s.starts_with("events/") && s.ends_with(".jsonl")) || s.contains("unrouted-events") {
            migrated_lines.extend(bytes.split_inclusive(|&b| b == b'\n').map(<[u8]>::to_vec));
        }
    }
    source_lines.sort();
    migrated_lines.sort();
    assert_eq!(source_lines, migrated_lines, "every line exactly once");

    // Modification times are preserved; the metadata path now points into the store.
    let session = store.join(format!(
        "state/project/sessions/{}.json",
        fixture::SESSION_A
    ));
    assert_eq!(
        u64::try_from(fs_err::metadata(&session).expect("session").mtime()).expect("positive"),
        fixture::OLD_MTIME
    );
    let meta: serde_json::Value = serde_json::from_slice(
        &fs_err::read(store.join(format!(
            "state/project/mapreduce/jobs/{}/metadata.json",
            fixture::JOB
        )))
        .expect("metadata"),
    )
    .expect("json");
    let target = PathBuf::from(meta["path"].as_str().expect("path"));
    assert!(
        target.starts_with(store.canonicalize().expect("canonical")),
        "{}",
        target.display()
    );
    assert!(target.exists());

    // I5: everything the migration created in the store is private.
    for (rel, node) in snapshot(&store) {
        let in_backup = rel
            .components()
            .skip_while(|c| c.as_os_str() != "backup")
            .nth(1)
            .is_some();
        if in_backup {
            // The backup holds the legacy files and directories as they were
            // moved, with their own modes, inside the store's 0700 tree.
            continue;
        }
        let want = if node.kind == "d" { 0o700 } else { 0o600 };
        assert_eq!(node.mode, want, "{} is {:o}", rel.display(), node.mode);
    }
    // I6: no staging area, journal or temp file is left.
    let leftovers: Vec<_> = snapshot(&store)
        .into_keys()
        .filter(|p| {
            let s = p.to_string_lossy();
            s.contains("staging") || s.ends_with("journal.json") || s.contains(".tmp-")
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_second_run_finds_nothing_and_changes_nothing() {
    let sb = fixture_sandbox();
    run(&sb, &["migrate"], true);
    let store_before = store_tree(&sb);
    let files_before = files(&sb.store());
    let report = run_json(&sb, &["migrate"]);
    assert_eq!(report["outcome"], "nothing_to_migrate");
    assert_eq!(store_tree(&sb), store_before);
    let files_after: Vec<_> = files(&sb.store())
        .into_iter()
        .filter(|(p, _)| !p.starts_with("locks"))
        .collect();
    let files_before: Vec<_> = files_before
        .into_iter()
        .filter(|(p, _)| !p.starts_with("locks"))
        .collect();
    assert_eq!(files_after, files_before);
    let text = String::from_utf8(run(&sb, &["migrate"], true).stdout).expect("utf8");
    assert!(text.starts_with("No legacy storage in "), "{text}");
}

#[test]
fn rollback_restores_the_exact_legacy_tree_and_empties_the_store() {
    let sb = fixture_sandbox();
    let before = snapshot_without_locks(&sb.project());
    run(&sb, &["migrate"], true);
    let report = run_json(&sb, &["rollback"]);
    assert_eq!(
        report["restored_files"],
        report["restored_files"].as_u64().expect("n")
    );
    let after = snapshot(&sb.project());
    let strip = |m: &BTreeMap<PathBuf, fixture::Node>| -> BTreeMap<PathBuf, fixture::Node> {
        m.iter()
            .filter(|(p, _)| !p.starts_with(".git"))
            .map(|(p, n)| (p.clone(), n.clone()))
            .collect()
    };
    assert_same_tree(
        &strip(&after),
        &strip(&before),
        "kinds, modes, sizes, mtimes and bytes",
    );
    for dir in ["state/project", "dlq/project", "events/project"] {
        let left: Vec<_> = files(&sb.store().join(dir));
        assert!(left.is_empty(), "{dir}: {left:?}");
    }
    // The backup stays until pruned, and a new migration works again.
    let list = run_json(&sb, &["backups", "list"]);
    assert_eq!(list["backups"][0]["rolled_back"], true);
    let again = run_json(&sb, &["migrate"]);
    assert_eq!(again["outcome"], "migrated");
}

#[test]
fn a_dry_run_changes_nothing_at_all() {
    let sb = fixture_sandbox();
    let before = snapshot_without_locks(sb.path());
    let text = String::from_utf8(run(&sb, &["migrate", "--dry-run"], true).stdout).expect("utf8");
    assert!(text.contains("Would migrate "), "{text}");
    assert!(text.ends_with("Nothing was changed (dry run).\n"), "{text}");
    let report = run_json(&sb, &["migrate", "--dry-run"]);
    assert_eq!(report["outcome"], "dry_run");
    assert_same_tree(&snapshot_without_locks(sb.path()), &before, "unchanged");
    assert!(!sb.store().exists(), "the store is not even created");
}

/// Sets the modification time of `path` to `secs` after the epoch.
fn set_mtime(path: &Path, secs: u64) {
    fs_err::File::options()
        .write(true)
        .open(path)
        .expect("open")
        .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .expect("mtime");
}

/// What an old Prodigy writes again after a migration is imported by the
/// next one: a document it wrote again after the store's copy was written
/// is imported as the newer version (the store's older copy kept under
/// `legacy/<repo>/superseded/<txid>/`); one older than the store's copy is
/// kept aside as a conflict; one rollback undoes both transactions.
#[test]
fn files_an_old_prodigy_writes_again_are_migrated_as_newer_versions() {
    let sb = fixture_sandbox();
    run(&sb, &["migrate"], true);
    let store = sb.store();
    let job_dir = format!("state/project/mapreduce/jobs/{}", fixture::JOB);
    let v3 = store.join(&job_dir).join("checkpoint-v3.json");
    let v2 = store.join(&job_dir).join("checkpoint-v2.json");
    let (v3_before, v2_before) = (
        fs_err::read(&v3).expect("v3"),
        fs_err::read(&v2).expect("v2"),
    );
    let legacy = sb.project().join(".prodigy");
    fs_err::write(
        legacy.join("session_state.json"),
        br#"{"session_id": "session-new", "status": "Completed"}"#,
    )
    .expect("w");
    let jobs = legacy.join(format!("mapreduce/jobs/{}", fixture::JOB));
    fs_err::create_dir_all(&jobs).expect("mkdir");
    // Written again, after the store's copy: the newer version.
    fs_err::write(jobs.join("checkpoint-v3.json"), b"{\"job_id\": \"newer\"}").expect("w");
    // Written again, but the store's copy was written after it.
    fs_err::write(jobs.join("checkpoint-v2.json"), b"{\"job_id\": \"older\"}").expect("w");
    set_mtime(&jobs.join("checkpoint-v2.json"), 1_000_000_000);
    fs_err::create_dir_all(legacy.join("mapreduce/events/global")).expect("mkdir");
    fs_err::write(
        legacy.join("mapreduce/events/global/events.jsonl"),
        format!(
            "{{\"event\":{{\"job_id\":\"{}\",\"event_type\":\"job_started\"}}}}\n",
            fixture::JOB
        ),
    )
    .expect("w");
    // The dry run shows what the real run finds (issue 21, item 14: it
    // listed no conflict where the real run kept one).
    let preview = run_json(&sb, &["migrate", "--dry-run"]);
    assert_eq!(preview["outcome"], "dry_run", "{preview:#}");
    let predicted = preview["conflicts"].as_array().expect("list");
    assert_eq!(predicted.len(), 1, "{preview:#}");
    assert!(
        predicted[0]["dest"]
            .as_str()
            .is_some_and(|d| d.ends_with("checkpoint-v2.json")),
        "{preview:#}"
    );
    assert!(
        preview["warnings"].to_string().contains("superseded"),
        "{preview:#}"
    );
    let report = run_json(&sb, &["migrate"]);
    assert_eq!(report["outcome"], "migrated");
    assert_eq!(report["legacy_files"], 4);
    assert_eq!(
        report["conflicts"][0]["dest"], predicted[0]["dest"],
        "the conflict the dry run predicted"
    );
    assert!(
        report["warnings"].to_string().contains("superseded"),
        "the report says the store's copy was set aside: {report:#}"
    );
    assert_eq!(
        fs_err::read(&v3).expect("v3"),
        b"{\"job_id\": \"newer\"}",
        "the newer version is what the store serves"
    );
    let superseded = || -> Vec<(PathBuf, Vec<u8>)> {
        files(&store.join("legacy/project"))
            .into_iter()
            .filter(|(p, _)| p.starts_with("superseded"))
            .collect()
    };
    let kept = superseded();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(
        kept[0].0.ends_with(format!("{job_dir}/checkpoint-v3.json")),
        "{kept:?}"
    );
    assert_eq!(kept[0].1, v3_before, "the older one is kept");
    let conflicts = report["conflicts"].as_array().expect("list");
    assert_eq!(conflicts.len(), 1, "{report:#}");
    assert_eq!(
        fs_err::read(&v2).expect("v2"),
        v2_before,
        "never overwritten"
    );
    let kept = store.join(conflicts[0]["kept_at"].as_str().expect("kept_at"));
    assert_eq!(
        fs_err::read(kept).expect("kept"),
        b"{\"job_id\": \"older\"}"
    );
    assert!(
        store
            .join("state/project/sessions/session-new.json")
            .exists()
    );
    let logs: Vec<_> = fs_err::read_dir(store.join("events/project").join(fixture::JOB))
        .expect("events")
        .map(|e| e.expect("e").file_name())
        .collect();
    assert_eq!(
        logs.len(),
        3,
        "two earlier sources and the new one: {logs:?}"
    );
    // One rollback undoes the import and the setting aside: the store
    // serves what it did before, the project has what the old Prodigy wrote.
    let undone = run_json(&sb, &["rollback"]);
    assert_eq!(
        undone["also_undone"].as_array().map(Vec::len),
        Some(1),
        "{undone:#}"
    );
    assert_eq!(fs_err::read(&v3).expect("v3"), v3_before);
    assert_eq!(fs_err::read(&v2).expect("v2"), v2_before);
    assert_eq!(
        fs_err::read(jobs.join("checkpoint-v3.json")).expect("legacy v3"),
        b"{\"job_id\": \"newer\"}"
    );
    assert_eq!(superseded(), Vec::new(), "nothing left aside");
}

#[test]
fn a_corrupted_staged_byte_is_caught_and_nothing_is_published() {
    let sb = fixture_sandbox();
    let before = snapshot_without_locks(&sb.project());
    let out = crate::support::cmd(&sb, &sb.project(), &["migrate"])
        .env("PRODIGY_STORAGE_FAULT", "corrupt-staged")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.lines()
            .any(|l| l.starts_with("error: verification failed for `")),
        "{err}"
    );
    assert!(err.contains("/staging/"), "names the staged file: {err}");
    assert!(
        err.contains("nothing was published and the legacy files are untouched"),
        "{err}"
    );
    assert_same_tree(&snapshot_without_locks(&sb.project()), &before, "unchanged");
    for dir in [
        "state/project",
        "dlq/project",
        "events/project",
        "legacy/project",
    ] {
        assert!(!sb.store().join(dir).exists(), "{dir} was published");
    }
    assert!(!sb.store().join("migrations/project/journal.json").exists());
    assert!(
        files(&sb.store().join("migrations")).is_empty(),
        "staging removed"
    );
    run(&sb, &["migrate"], true);
}

#[test]
fn rollback_refuses_when_published_files_changed_and_force_moves_them_aside() {
    let sb = fixture_sandbox();
    run(&sb, &["migrate"], true);
    let session = sb.store().join(format!(
        "state/project/sessions/{}.json",
        fixture::SESSION_A
    ));
    fs_err::write(&session, br#"{"session_id": "changed by prodigy"}"#).expect("w");
    let before = snapshot_without_locks(sb.path());
    let out = run(&sb, &["rollback"], false);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("have changed since"), "{err}");
    assert!(err.contains("run with --force"), "{err}");
    assert_same_tree(
        &snapshot_without_locks(sb.path()),
        &before,
        "a refused rollback changes nothing",
    );
    let report = run_json(&sb, &["rollback", "--force"]);
    assert_eq!(report["displaced"].as_array().expect("list").len(), 1);
    let displaced = sb
        .store()
        .join("legacy/project/rollback-displaced")
        .join(report["txid"].as_str().expect("txid"))
        .join(format!(
            "state/project/sessions/{}.json",
            fixture::SESSION_A
        ));
    assert_eq!(
        fs_err::read(displaced).expect("kept"),
        br#"{"session_id": "changed by prodigy"}"#
    );
    assert!(sb.project().join(".prodigy/session_state.json").exists());
}

#[test]
fn verify_and_backups_report_what_is_there() {
    let sb = fixture_sandbox();
    let out = run(&sb, &["verify", "--json"], false);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json even on failure");
    assert_eq!(v["legacy_files_left"].as_u64().map(|n| n > 0), Some(true));
    assert_eq!(v["problems"].as_array().map(Vec::len), Some(1));
    run(&sb, &["migrate"], true);
    let v = run_json(&sb, &["verify"]);
    assert_eq!(v["problems"], serde_json::json!([]));
    assert_eq!(v["published_changed"], 0);
    assert!(String::from_utf8_lossy(&run(&sb, &["verify"], true).stdout).ends_with("OK\n"));
    // A damaged backup is a problem: rollback would be impossible.
    let txid = v["txid"].as_str().expect("txid").to_owned();
    let backup = sb
        .store()
        .join("migrations/project")
        .join(&txid)
        .join("backup");
    fs_err::write(backup.join("state.json"), b"damaged").expect("w");
    let out = run(&sb, &["verify"], false);
    assert!(String::from_utf8_lossy(&out.stdout).contains("problem: 1 backup file(s)"));
    let err = String::from_utf8_lossy(&run(&sb, &["rollback"], false).stderr).into_owned();
    assert!(err.contains("is missing or damaged"), "{err}");
    // Pruning: a backup holding bytes found nowhere else (the damaged file
    // here; a split log, a rewritten metadata.json) is kept without
    // --force; a dry run deletes nothing; 0s --force prunes everything.
    let kept = run_json(&sb, &["backups", "prune", "--older-than", "0s"]);
    assert_eq!(kept["pruned"], serde_json::json!([]), "{kept:#}");
    assert_eq!(kept["kept"].as_array().expect("kept").len(), 1, "{kept:#}");
    assert!(
        kept["kept"][0]["reason"]
            .as_str()
            .expect("reason")
            .contains("found nowhere else"),
        "{kept:#}"
    );
    assert!(backup.exists());
    let list = run_json(
        &sb,
        &[
            "backups",
            "prune",
            "--older-than",
            "0s",
            "--dry-run",
            "--force",
        ],
    );
    assert_eq!(list["pruned"].as_array().expect("list").len(), 1);
    assert!(backup.exists());
    run_json(&sb, &["backups", "prune", "--older-than", "0s", "--force"]);
    assert!(!backup.exists());
    assert_eq!(run_json(&sb, &["verify"])["backup_pruned"], true);
    let none = run_json(&sb, &["backups", "prune", "--older-than", "30d"]);
    assert_eq!(none["pruned"], serde_json::json!([]));
}

#[test]
fn rolling_back_a_later_migration_leaves_what_an_earlier_one_published() {
    let sb = fixture_sandbox();
    let legacy = sb.project().join(".prodigy");
    let session_state = fs_err::read(legacy.join("session_state.json")).expect("fixture");
    run(&sb, &["migrate"], true);
    let published = sb.store().join(format!(
        "state/project/sessions/{}.json",
        fixture::SESSION_A
    ));
    // An old Prodigy writes the very same session file again.
    fs_err::write(legacy.join("session_state.json"), &session_state).expect("w");
    let second = run_json(&sb, &["migrate"]);
    assert_eq!(second["outcome"], "migrated");
    assert_eq!(second["already_present"], 1, "{second:#}");
    run(&sb, &["rollback"], true);
    // The legacy file is back, and the store keeps the first migration's copy.
    assert_eq!(
        fs_err::read(legacy.join("session_state.json")).expect("restored"),
        session_state
    );
    assert_eq!(
        fs_err::read(&published).expect("still published"),
        session_state
    );
    // `verify` now checks the first migration: nothing it published is
    // missing, and the restored legacy file is waiting to be migrated again,
    // counted, not a problem: the rollback on request put it back.
    let v = run_json(&sb, &["verify"]);
    assert_eq!(v["published_missing"], 0, "{v:#}");
    assert_eq!(v["legacy_files_left"], 1, "{v:#}");
    assert_eq!(v["problems"], serde_json::json!([]), "{v:#}");
}

/// A project directory whose name is not UTF-8: reports carry the path
/// losslessly (`hex:<bytes>` in JSON), human output shows it escaped, and
/// nothing fails on the encoding. Writing the report once failed after the
/// originals had been moved, and `status` panicked.
#[test]
fn a_project_whose_directory_name_is_not_utf8_migrates_reports_and_rolls_back() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let sb = Sandbox::new();
    let name = OsStr::from_bytes(b"proj-\xff");
    let project = sb.path().join(name);
    fixture::legacy_project(&project);
    let before = snapshot(&project);
    let hex = |p: &Path| {
        let bytes = p.as_os_str().as_bytes();
        bytes.iter().fold(String::from("hex:"), |mut s, b| {
            use std::fmt::Write as _;
            let _ = write!(s, "{b:02x}");
            s
        })
    };
    let canonical = fs_err::canonicalize(&project).expect("canonical");
    let run_on = |args: &[&str]| {
        let out = crate::support::cmd(&sb, sb.path(), args)
            .arg(&project)
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    let json = |args: &[&str]| -> serde_json::Value {
        serde_json::from_slice(&run_on(args).stdout).expect("one JSON document")
    };

    let status = json(&["status", "--json"]);
    assert_eq!(status["project"]["project"], hex(&canonical), "{status:#}");
    let human = String::from_utf8_lossy(&run_on(&["status"]).stdout).into_owned();
    assert!(human.contains("proj-\u{fffd}"), "escaped lossily: {human}");

    let report = json(&["migrate", "--json"]);
    assert_eq!(report["outcome"], "migrated", "{report:#}");
    assert_eq!(report["project"], hex(&canonical));
    assert_eq!(report["legacy_dir"], hex(&canonical.join(".prodigy")));
    let backup = report["backup"].as_str().expect("backup");
    let backup = backup.strip_prefix("hex:").map_or_else(
        || PathBuf::from(backup),
        |h| {
            let bytes: Vec<u8> = (0..h.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&h[i..i + 2], 16).expect("hex"))
                .collect();
            PathBuf::from(OsStr::from_bytes(&bytes))
        },
    );
    assert!(
        backup.is_dir(),
        "the report's backup path round-trips: {backup:?}"
    );
    let rollback_command = report["rollback_command"].as_str().expect("command");
    assert!(
        rollback_command.ends_with(r"/proj-\xff'"),
        "{rollback_command}"
    );

    let verify = json(&["verify", "--json"]);
    assert_eq!(verify["problems"], serde_json::json!([]), "{verify:#}");
    assert_eq!(verify["project"], hex(&canonical));
    run_on(&["verify"]);
    run_on(&["status"]);
    let listed = json(&["status", "--json"]);
    assert_eq!(listed["backups"][0]["path"], report["backup"]);

    // The report's rollback command, run as printed, names the project exactly.
    let bin_dir = crate::support::bin().parent().expect("dir").to_owned();
    let path = std::env::join_paths(std::iter::once(bin_dir).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .expect("PATH");
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!("{rollback_command} --json"))
        .env("PATH", path)
        .env("HOME", sb.home())
        .env_remove("PRODIGY_HOME")
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rolled: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(rolled["project"], hex(&canonical), "{rolled:#}");
    assert_same_tree(
        &snapshot(&project),
        &before,
        "rollback restores the exact tree",
    );
}

/// After a rollback `verify` says so (not "no migration recorded"); after
/// a prune, `rollback` says the backup was pruned (not "missing or damaged
/// ... may have been pruned").
#[test]
fn verify_after_a_rollback_and_rollback_after_a_prune_say_what_happened() {
    let sb = fixture_sandbox();
    let txid = run_json(&sb, &["migrate"])["txid"]
        .as_str()
        .expect("txid")
        .to_owned();
    run(&sb, &["rollback"], true);
    let out = crate::support::cmd(&sb, &sb.project(), &["verify"])
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(&format!(
            "{} (repository `project`): migration {txid} was rolled back; its legacy files are back in the project.",
            fs_err::canonicalize(sb.project()).expect("canonical").display()
        )),
        "{text}"
    );
    let out = crate::support::cmd(&sb, &sb.project(), &["verify", "--json"])
        .output()
        .expect("run");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["rolled_back"], txid.as_str(), "{json:#}");
    // Issue 23, item 6: a rollback on request is no problem: exit 0, and
    // the legacy files it put back are counted, not reported as waiting.
    assert!(out.status.success(), "{json:#}");
    assert_eq!(json["problems"], serde_json::json!([]), "{json:#}");
    assert!(json["legacy_files_left"].as_u64() > Some(0), "{json:#}");

    run(&sb, &["migrate"], true);
    run(
        &sb,
        &["backups", "prune", "--older-than", "0s", "--force"],
        true,
    );
    let out = run(&sb, &["rollback"], false);
    let err = redact(&sb, &String::from_utf8_lossy(&out.stderr));
    assert!(
        err.starts_with("error: cannot roll back: the backup of migration [TXID] was pruned (`prodigy-storage backups prune` deleted `[SANDBOX]/home/.prodigy/migrations/project/[TXID]/backup`), so this migration can no longer be rolled back"),
        "{err}"
    );
}

/// `backups prune --older-than 0s` without `--force` keeps the backup of
/// the latest migration, the only way to roll it back, and says so.
#[test]
fn pruning_the_latest_migrations_backup_needs_force() {
    let sb = Sandbox::new();
    let legacy = sb.project().join(".prodigy");
    fs_err::create_dir_all(legacy.join("cache")).expect("mkdir");
    fs_err::write(legacy.join("cache/a.json"), b"{\"a\": 1}\n").expect("w");
    let txid = run_json(&sb, &["migrate"])["txid"]
        .as_str()
        .expect("txid")
        .to_owned();
    let kept = run_json(&sb, &["backups", "prune", "--older-than", "0s"]);
    assert_eq!(kept["pruned"], serde_json::json!([]), "{kept:#}");
    let reason = kept["kept"][0]["reason"].as_str().expect("reason");
    assert_eq!(
        reason,
        format!(
            "it is needed to roll back migration {txid}, the latest of repository `project`; \
             prune with --force to delete it anyway (that migration can then no longer be rolled back)"
        )
    );
    let human = String::from_utf8_lossy(
        &run(&sb, &["backups", "prune", "--older-than", "0s"], true).stdout,
    )
    .into_owned();
    assert!(human.contains("prune with --force"), "{human}");
    run(&sb, &["rollback"], true);
    // Rolled back: its backup is no longer the way back; pruned without --force.
    let pruned = run_json(&sb, &["backups", "prune", "--older-than", "0s"]);
    assert_eq!(pruned["pruned"][0]["txid"], txid.as_str(), "{pruned:#}");
    run(&sb, &["migrate"], true);
    let forced = run_json(&sb, &["backups", "prune", "--older-than", "0s", "--force"]);
    assert_eq!(
        forced["pruned"].as_array().expect("pruned").len(),
        1,
        "{forced:#}"
    );
}

/// The dry run shows what the real run does: the same categories, files
/// and bytes (a rewritten metadata.json included), the same warnings in the
/// same order, and no made-up transaction id; the counts add up.
#[test]
fn the_dry_run_matches_the_real_run_and_the_counts_add_up() {
    let sb = fixture_sandbox();
    let dry = run_json(&sb, &["migrate", "--dry-run"]);
    let human_dry =
        String::from_utf8_lossy(&run(&sb, &["migrate", "--dry-run"], true).stdout).into_owned();
    let real = run_json(&sb, &["migrate"]);
    let txid = real["txid"].as_str().expect("txid");
    assert_eq!(dry["txid"], serde_json::Value::Null, "{dry:#}");
    assert_eq!(dry["categories"], real["categories"]);
    let real_warnings: Vec<String> = real["warnings"]
        .as_array()
        .expect("warnings")
        .iter()
        .map(|w| w.as_str().expect("str").replace(txid, "<txid>"))
        .collect();
    assert_eq!(dry["warnings"], serde_json::json!(real_warnings));
    assert!(
        real_warnings
            .iter()
            .any(|w| w.contains("unrouted-events/<txid>/")),
        "{real_warnings:?}"
    );
    // Files in the store (categories) = published files verify checks;
    // legacy files = files in the backup; the report says why they differ.
    let in_store: u64 = real["categories"]
        .as_array()
        .expect("categories")
        .iter()
        .map(|c| c["files"].as_u64().expect("files"))
        .sum();
    let verify = run_json(&sb, &["verify"]);
    assert_eq!(verify["published_intact"].as_u64(), Some(in_store));
    assert_eq!(verify["backup_intact"], real["legacy_files"]);
    assert!(
        human_dry.contains(&format!(
            "  = {in_store} file(s) in the store from {} legacy file(s) (event logs split per job)\n",
            real["legacy_files"]
        )),
        "{human_dry}"
    );
}

/// A legacy `metadata.json` whose `path` is not the job's own file is kept
/// as written, with a warning; one that is not decodable says so.
#[test]
fn metadata_pointing_outside_its_job_is_kept_verbatim_and_undecodable_json_is_named() {
    let sb = Sandbox::new();
    let jobs = sb.project().join(".prodigy/mapreduce/jobs");
    let outside = b"{\"path\": \"/etc/passwd\", \"version\": 1}\n";
    fs_err::create_dir_all(jobs.join("job-a")).expect("mkdir");
    fs_err::write(jobs.join("job-a/metadata.json"), outside).expect("w");
    fs_err::create_dir_all(jobs.join("job-b")).expect("mkdir");
    fs_err::write(
        jobs.join("job-b/metadata.json"),
        b"{\"path\": \"\\ud800\"}\n",
    )
    .expect("w");
    let report = run_json(&sb, &["migrate"]);
    let warnings = report["warnings"].to_string();
    assert!(
        warnings.contains(
            "`mapreduce/jobs/job-a/metadata.json`: `path` (`/etc/passwd`) points outside the job's own directory; copied verbatim"
        ),
        "{warnings}"
    );
    assert!(
        warnings.contains("`mapreduce/jobs/job-b/metadata.json`: not decodable as JSON"),
        "{warnings}"
    );
    assert!(!warnings.contains("not a JSON object"), "{warnings}");
    let stored = fs_err::read(
        sb.store()
            .join("state/project/mapreduce/jobs/job-a/metadata.json"),
    )
    .expect("published");
    assert_eq!(stored, outside);
}

/// `backups list` has a header naming its columns.
#[test]
fn backups_list_has_a_header() {
    let sb = fixture_sandbox();
    run(&sb, &["migrate"], true);
    let out = String::from_utf8_lossy(&run(&sb, &["backups", "list"], true).stdout).into_owned();
    let mut lines = out.lines();
    let header = lines.next().expect("header");
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        [
            "REPOSITORY",
            "MIGRATION",
            "FILES",
            "SIZE",
            "AGE",
            "STATE",
            "BACKUP"
        ],
        "{out}"
    );
    let row = lines.next().expect("row");
    assert!(row.starts_with("project "), "{out}");
    assert!(row.contains(" 25 ") && row.contains(" migrated "), "{out}");
}

/// Issue 21, item 16: a dangling symbolic link where a legacy file is to
/// be restored. `rollback` said to run `migrate`, which (following no link)
/// found nothing: a loop. It now says to move it away, and once that is
/// done the rollback restores the project exactly.
#[test]
fn a_link_where_a_legacy_file_is_to_be_restored_is_named_with_a_way_out() {
    let sb = fixture_sandbox();
    let before = snapshot(&sb.project());
    run(&sb, &["migrate"], true);
    let place = sb.project().join(".prodigy/session_state.json");
    std::os::unix::fs::symlink("/nowhere/at/all", &place).expect("symlink");
    let out = run(&sb, &["rollback"], false);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("hold a link, a directory or a special file")
            && err.contains("move them away"),
        "{err}"
    );
    assert!(
        !err.contains("prodigy-storage migrate"),
        "no advice that loops: {err}"
    );
    assert!(run_json(&sb, &["migrate"])["outcome"] == "nothing_to_migrate");
    fs_err::remove_file(&place).expect("move it away");
    run(&sb, &["rollback"], true);
    assert_same_tree(&snapshot(&sb.project()), &before, "after rollback");
}

/// Issue 19: a crash at every step of a re-import whose first transaction
/// sets the store's older copy aside, and at every step of rolling the two
/// back, is recovered by the next run: the store then serves the newer
/// version with the older one kept, and after the rollback the older one
/// again, with the project holding what the old Prodigy wrote.
#[test]
fn a_crash_at_every_step_of_a_superseding_re_import_is_recovered() {
    for point in storage_migrate::CRASH_POINTS {
        let sb = fixture_sandbox();
        run(&sb, &["migrate"], true);
        let store = sb.store();
        let v3 = store.join(format!(
            "state/project/mapreduce/jobs/{}/checkpoint-v3.json",
            fixture::JOB
        ));
        let before = fs_err::read(&v3).expect("v3");
        let jobs = sb
            .project()
            .join(format!(".prodigy/mapreduce/jobs/{}", fixture::JOB));
        fs_err::create_dir_all(&jobs).expect("mkdir");
        let newer = b"{\"job_id\": \"newer\"}".to_vec();
        fs_err::write(jobs.join("checkpoint-v3.json"), &newer).expect("old Prodigy");
        let in_rollback = point.contains("rollback");
        if in_rollback {
            run(&sb, &["migrate"], true);
            crate::crash::crash(&sb, &["rollback"], point);
        } else {
            crate::crash::crash(&sb, &["migrate"], point);
            let report = run_json(&sb, &["migrate"]);
            assert_eq!(
                report["conflicts"],
                serde_json::json!([]),
                "{point}: {report:#}"
            );
            assert_eq!(fs_err::read(&v3).expect("v3"), newer, "{point}");
            let kept: Vec<_> = files(&store.join("legacy/project"))
                .into_iter()
                .filter(|(p, b)| p.starts_with("superseded") && *b == before)
                .collect();
            assert_eq!(kept.len(), 1, "{point}: the older copy is kept");
        }
        let undone = run_json(&sb, &["rollback"]);
        // Recovery may have finished the interrupted rollback of the import:
        // the next one undoes what is left of the run.
        if in_rollback && fs_err::read(&v3).ok().as_ref() != Some(&before) {
            run(&sb, &["rollback"], true);
        }
        assert_eq!(
            fs_err::read(&v3).unwrap_or_else(|e| panic!("{point}: {e}; {undone:#}")),
            before,
            "{point}"
        );
        assert_eq!(
            fs_err::read(jobs.join("checkpoint-v3.json")).expect("legacy"),
            newer,
            "{point}"
        );
    }
}

/// Mutation found (issue 21): a backup whose manifest cannot be read (a
/// newer build's format, damage) has nothing to prove its files are
/// elsewhere, so `backups prune` keeps it without `--force` (counted as 0
/// files found nowhere else, it was deleted though it is the only copy).
#[test]
fn a_backup_whose_records_cannot_be_read_is_never_pruned_without_force() {
    let sb = fixture_sandbox();
    run(&sb, &["migrate"], true);
    let txid = fs_err::read_dir(sb.store().join("migrations/project"))
        .expect("records")
        .find_map(|e| {
            let name = e.expect("entry").file_name().to_string_lossy().into_owned();
            name.starts_with("20").then_some(name)
        })
        .expect("the migration's records");
    // Rolled back and migrated again, so the first is not the latest
    // (whose backup prune keeps anyway) and no live run needs its records.
    run(&sb, &["rollback"], true);
    run(&sb, &["migrate"], true);
    let tx = sb.store().join("migrations/project").join(&txid);
    let mut m: serde_json::Value =
        serde_json::from_slice(&fs_err::read(tx.join("manifest.json")).expect("read"))
            .expect("json");
    m["manifest_version"] = 99.into();
    fs_err::write(tx.join("manifest.json"), m.to_string()).expect("a newer build's");
    let out = run(
        &sb,
        &["backups", "prune", "--older-than", "0s", "--json"],
        true,
    );
    let report = crate::support::json_of(&out);
    assert!(tx.join("backup").is_dir(), "kept: {report:#}");
    assert!(
        report["kept"]
            .as_array()
            .expect("kept")
            .iter()
            .any(|k| k["txid"] == txid.as_str()),
        "{report:#}"
    );
}

/// Issue 21, item 9: undoing a migration that stopped after it began
/// publishing counts what it removes, and a file it published that
/// changed since is not silently kept: the rollback refuses, naming it,
/// and `--force` moves it aside (before, it stayed, and the report said
/// 0 removed).
#[test]
fn undoing_an_unfinished_migration_accounts_for_every_published_file() {
    let sb = fixture_sandbox();
    let before = snapshot_without_locks(&sb.project());
    crate::crash::crash(&sb, &["migrate"], "mid-publish");
    let v3 = sb.store().join(format!(
        "state/project/mapreduce/jobs/{}/checkpoint-v3.json",
        fixture::JOB
    ));
    assert!(v3.is_file(), "published before the crash");
    fs_err::write(&v3, b"{\"changed\": \"by Prodigy since\"}").expect("write");
    let refused = run(&sb, &["rollback"], false);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("checkpoint-v3.json"), "{err}");
    let report = run_json(&sb, &["rollback", "--force"]);
    let displaced = report["displaced"].as_array().expect("displaced");
    assert_eq!(displaced.len(), 1, "{report:#}");
    assert!(
        report["removed_from_store"].as_u64().is_some_and(|n| n > 0),
        "{report:#}"
    );
    assert!(!v3.exists(), "moved aside");
    let aside: Vec<_> = files(&sb.store().join("legacy/project/rollback-displaced"))
        .into_iter()
        .filter(|(_, b)| b.as_slice() == b"{\"changed\": \"by Prodigy since\"}")
        .collect();
    assert_eq!(aside.len(), 1, "the change is kept aside");
    assert_same_tree(
        &snapshot_without_locks(&sb.project()),
        &before,
        "the project, back",
    );
}

/// Runs `migrate` pausing at `point`; at its `n`th pause (1-based) calls
/// `at_pause`, which says whether to go on (`true`) or kill it there.
fn migrate_pausing(
    sb: &Sandbox,
    point: &str,
    n: usize,
    at_pause: impl FnOnce() -> bool,
) -> Option<std::process::Output> {
    let pause = sb.home().join("pause");
    let mut child = crate::support::cmd(sb, &sb.project(), &["migrate", "--json"])
        .env("PRODIGY_STORAGE_PAUSE_AT", point)
        .env("PRODIGY_STORAGE_PAUSE_FILE", &pause)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let wait = |child: &mut std::process::Child| {
        let start = std::time::Instant::now();
        while !pause.exists() {
            assert!(
                child.try_wait().expect("poll").is_none(),
                "exited before pausing"
            );
            assert!(start.elapsed() < std::time::Duration::from_secs(60));
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    };
    for _ in 1..n {
        wait(&mut child);
        fs_err::remove_file(&pause).expect("go on");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    wait(&mut child);
    if at_pause() {
        // Let it go on through every later pause at that point too.
        while child.try_wait().expect("poll").is_none() {
            let _ = std::fs::remove_file(&pause);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        Some(child.wait_with_output().expect("wait"))
    } else {
        child.kill().expect("kill");
        let _ = child.wait();
        let _ = fs_err::remove_file(&pause);
        None
    }
}

/// The fixture migrated, then its checkpoint v3 written again in the
/// project by an old Prodigy: (the store's v3 path, its bytes, the project's).
fn newer_v3(sb: &Sandbox) -> (PathBuf, Vec<u8>, PathBuf) {
    run(sb, &["migrate"], true);
    let v3 = sb.store().join(format!(
        "state/project/mapreduce/jobs/{}/checkpoint-v3.json",
        fixture::JOB
    ));
    let before = fs_err::read(&v3).expect("v3");
    let jobs = sb
        .project()
        .join(format!(".prodigy/mapreduce/jobs/{}", fixture::JOB));
    fs_err::create_dir_all(&jobs).expect("mkdir");
    fs_err::write(jobs.join("checkpoint-v3.json"), b"{\"job_id\": \"newer\"}").expect("w");
    (v3, before, jobs.join("checkpoint-v3.json"))
}

/// Review finding: the newer version leaves the project between the
/// setting aside and the import: the store's copy goes back where the store
/// reads it (it stayed only under `superseded/`, and `verify` said OK).
#[test]
fn a_set_aside_copy_whose_newer_version_left_goes_back() {
    let sb = fixture_sandbox();
    let (v3, before, legacy) = newer_v3(&sb);
    let out = migrate_pausing(&sb, "after-retire", 1, || {
        fs_err::remove_file(&legacy).expect("an old Prodigy removes it");
        true
    })
    .expect("finished");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs_err::read(&v3).expect("back"), before);
    let report = crate::support::json_of(&out);
    assert!(
        report["warnings"]
            .to_string()
            .contains("is back where the store reads it"),
        "{report:#}"
    );
    run(&sb, &["verify"], true);
    run(&sb, &["rollback"], true);
    assert_eq!(fs_err::read(&v3).expect("v3"), before);
}

/// Review finding: the store writes the document again between the setting
/// aside and the import: the import keeps the project's version as a
/// conflict; a rollback then refuses as for any change since, and
/// `--force` moves the store's newer write aside (it said "legacy files
/// exist again … run migrate", which could not help).
#[test]
fn a_store_write_between_setting_aside_and_import_is_a_change_a_rollback_names() {
    let sb = fixture_sandbox();
    let (v3, before, legacy) = newer_v3(&sb);
    let written = b"{\"job_id\": \"the store, meanwhile\"}".to_vec();
    let out = migrate_pausing(&sb, "after-commit-journal", 1, || {
        let tmp = v3.with_extension("tmp-put");
        fs_err::write(&tmp, &written).expect("w");
        fs_err::rename(&tmp, &v3).expect("renamed over, as a put does");
        true
    })
    .expect("finished");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        fs_err::read(&v3).expect("v3"),
        written,
        "the store's newest write stays"
    );
    let refused = run(&sb, &["rollback"], false);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("changed since") && err.contains("--force"),
        "{err}"
    );
    assert!(!err.contains("run `prodigy-storage migrate`"), "{err}");
    run(&sb, &["rollback", "--force"], true);
    assert_eq!(
        fs_err::read(&v3).expect("v3"),
        before,
        "the store's copy before the run"
    );
    assert_eq!(
        fs_err::read(&legacy).expect("project"),
        b"{\"job_id\": \"newer\"}"
    );
    let aside: Vec<_> = files(&sb.store().join("legacy/project/rollback-displaced"))
        .into_iter()
        .filter(|(_, b)| *b == written)
        .collect();
    assert_eq!(aside.len(), 1, "the store's newest write is kept aside");
}

/// Review finding: the import of a superseding run killed while
/// publishing; one `rollback` undoes it and the setting aside (it undid
/// only the import, and the store's copy stayed missing).
#[test]
fn one_rollback_undoes_a_superseding_run_whose_import_was_killed() {
    let sb = fixture_sandbox();
    let (v3, before, legacy) = newer_v3(&sb);
    assert!(migrate_pausing(&sb, "mid-publish", 2, || false).is_none());
    let report = crate::support::run_json(&sb, &["rollback"]);
    assert_eq!(
        report["also_undone"].as_array().map(Vec::len),
        Some(1),
        "{report:#}"
    );
    assert_eq!(fs_err::read(&v3).expect("v3"), before);
    assert_eq!(
        fs_err::read(&legacy).expect("project"),
        b"{\"job_id\": \"newer\"}"
    );
}

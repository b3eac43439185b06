//! Upgrading the store an older Prodigy wrote (layout 0), and the way back.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use storage_core::{JobId, RepoKey, SessionId, StorageExt};
use storage_tests::layout0::{self, JOB, SESSION};

use crate::crash::crash;
use crate::support::{Sandbox, assert_same_tree, cmd, fixture, json_of, run, run_json, snapshot};

/// A sandbox whose store is a layout-0 store.
fn layout0_sandbox() -> Sandbox {
    let sb = Sandbox::new();
    layout0::store(&sb.store());
    sb
}

/// The store's tree without what the upgrade keeps for itself (its records
/// and its lock), which an older Prodigy never reads.
fn store_tree(sb: &Sandbox) -> BTreeMap<PathBuf, fixture::Node> {
    snapshot(&sb.store())
        .into_iter()
        .filter(|(p, _)| !p.starts_with("migrations") && !p.starts_with("locks"))
        .collect()
}

#[test]
fn a_layout_0_store_is_recognised_served_as_it_is_and_never_stamped_with_a_version() {
    let sb = layout0_sandbox();
    let before = snapshot(&sb.store());
    let out = run(&sb, &["status"], true);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("layout 0, written by an older Prodigy: an upgrade is due"),
        "{text}"
    );
    // Opened, it is served as it is: its doubly nested dead letters and its
    // `session_state.json` are read where layout 0 keeps them; nothing is
    // written, no version stamped (the upgrade stays due).
    let store = storage_fs::FsStorage::open(sb.store()).expect("served");
    let (repo, job) = (
        RepoKey::new("api").expect("valid"),
        JobId::new(JOB).expect("valid"),
    );
    assert_eq!(store.dead_letters(&repo, &job).expect("read").len(), 2);
    assert!(storage_migrate::upgrade_due(&store).expect("due"));
    assert_same_tree(&snapshot(&sb.store()), &before, "nothing written");
}

#[test]
fn upgrade_moves_what_is_elsewhere_and_touches_nothing_else() {
    let sb = layout0_sandbox();
    let before = store_tree(&sb);
    let report = run_json(&sb, &["upgrade"]);
    assert_eq!(report["outcome"], "migrated", "{report:#}");
    assert_eq!(report["legacy_files"], 12, "{report:#}");
    let after = store_tree(&sb);
    // What was already where the store reads it: the very same files.
    for rel in [
        "events/api/mapreduce-20250906_082000/events-20250906_082000.jsonl".to_owned(),
        format!("state/api/mapreduce/jobs/{JOB}/metadata.json"),
        format!("state/api/mapreduce/jobs/{JOB}/checkpoint-v3.json"),
        format!("state/api/mappings/{SESSION}.json"),
        format!("sessions/{SESSION}.json"),
        format!("resume_locks/{JOB}.lock"),
        "worktrees/api/session-0a1b/.prodigy/session_state.json".to_owned(),
        "worktrees/api/cleanup.log".to_owned(),
        "config.yml".to_owned(),
        "notes.txt".to_owned(),
        "state/api/notes.md".to_owned(),
    ] {
        let rel = PathBuf::from(rel);
        assert_eq!(after.get(&rel), before.get(&rel), "{}", rel.display());
        assert!(after.contains_key(&rel), "{}", rel.display());
    }
    // Moved to where the API reads them, byte for byte.
    for (from, to) in [
        (
            format!("dlq/api/{JOB}/mapreduce/dlq/{JOB}/items/item-1.json"),
            format!("dlq/api/{JOB}/items/item-1.json"),
        ),
        (
            "state/api/sessions/session_state.json".to_owned(),
            format!("state/api/sessions/{SESSION}.json"),
        ),
        (
            "events/api/mapreduce-20250906_082000/events-20250906_070000.20250906_080000.jsonl.gz"
                .to_owned(),
            "events/api/mapreduce-20250906_082000/events-20250906_070000.20250906_080000.jsonl"
                .to_owned(),
        ),
        (
            format!("state/{SESSION}/checkpoints/workflow-2.checkpoint.json"),
            format!("sessions/{SESSION}/checkpoints/workflow-2.checkpoint.json"),
        ),
        (
            "events/archive/events_archive_20250901_000000.jsonl.gz".to_owned(),
            "legacy/.layout-0/events/archive/events_archive_20250901_000000.jsonl.gz".to_owned(),
        ),
    ] {
        let (from, to) = (PathBuf::from(from), PathBuf::from(to));
        assert!(!after.contains_key(&from), "still at {}", from.display());
        assert_eq!(
            after.get(&to).and_then(|n| n.content.clone()),
            before.get(&from).and_then(|n| n.content.clone()),
            "{} -> {}",
            from.display(),
            to.display()
        );
    }
    // Reachable through the API now.
    let store = storage_fs::FsStorage::open(sb.store()).expect("opens once upgraded");
    let repo = RepoKey::new("api").expect("key");
    let job = JobId::new(JOB).expect("job");
    assert_eq!(store.dead_letters(&repo, &job).expect("dlq").len(), 2);
    let session = SessionId::new(SESSION).expect("id");
    assert!(store.load_session(&repo, &session).expect("load").is_some());
    // Unified sessions (a torn one skipped and reported) and a session's
    // workflow checkpoints, by session id alone.
    let (unified, skipped) = store.unified_sessions().expect("unified sessions");
    assert_eq!(unified.len(), 1, "{skipped:?}");
    assert_eq!(skipped.len(), 1, "the torn one: {skipped:?}");
    let wf = storage_core::WorkflowId::new("workflow-2").expect("id");
    assert!(
        store
            .load_session_workflow_checkpoint(&session, &wf)
            .expect("load")
            .is_some()
    );
    // `list` shows what the API reaches, with sizes and times.
    let list = run_json(&sb, &["list", "--repo", "api"]);
    let items = list["items"].as_array().expect("items");
    let kinds = |k: &str| items.iter().filter(|i| i["kind"] == k).count();
    assert_eq!(kinds("dead letter"), 2, "{list:#}");
    assert_eq!(kinds("session"), 1, "{list:#}");
    assert_eq!(kinds("event log"), 2, "{list:#}");
    assert!(
        items
            .iter()
            .all(|i| i["size"].as_u64().is_some_and(|n| n > 0))
    );
    // A second upgrade changes nothing.
    let again = run_json(&sb, &["upgrade"]);
    assert_eq!(again["outcome"], "nothing_to_migrate", "{again:#}");
    assert_same_tree(&store_tree(&sb), &after, "second upgrade");
}

/// The backup of the upgrade `sb` ran: `migrations/.layout-0/<txid>/backup/`.
fn upgrade_backup(sb: &Sandbox) -> PathBuf {
    let dir = sb.store().join("migrations/.layout-0");
    fs_err::read_dir(&dir)
        .expect("the upgrade's records")
        .map(|e| e.expect("entry").path().join("backup"))
        .find(|p| p.is_dir())
        .expect("a backup")
}

/// An upgrade moves by linking: a file whose bytes do not change is
/// published as the very inode it was (mode and mtime with it), and the
/// backup is that inode too, so nothing is written but names; a log, which
/// the store appends to in place, is copied, so the backup keeps its bytes.
#[test]
fn what_moves_unchanged_is_linked_and_a_log_is_copied() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let sb = layout0_sandbox();
    let item = format!("dlq/api/{JOB}/mapreduce/dlq/{JOB}/items/item-1.json");
    let log = format!(
        "events/api/{}/events-20250906_070000.20250906_080000.jsonl.gz",
        layout0::EVENT_JOB
    );
    let old_item = sb.store().join(&item);
    fs_err::set_permissions(&old_item, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let meta = |p: &std::path::Path| fs_err::symlink_metadata(p).expect("stat");
    let (item_ino, item_mtime) = (meta(&old_item).ino(), meta(&old_item).mtime());
    let log_ino = meta(&sb.store().join(&log)).ino();
    run(&sb, &["upgrade"], true);
    let backup = upgrade_backup(&sb);
    let published = meta(&sb.store().join(format!("dlq/api/{JOB}/items/item-1.json")));
    assert_eq!(published.ino(), item_ino, "published as the same inode");
    assert_eq!(published.mode() & 0o777, 0o640, "with its mode");
    assert_eq!(published.mtime(), item_mtime, "and its mtime");
    assert_eq!(
        meta(&backup.join(&item)).ino(),
        item_ino,
        "the backup is it too"
    );
    let moved_log = sb.store().join(log.trim_end_matches(".gz"));
    assert_ne!(meta(&moved_log).ino(), log_ino, "a log is a copy");
    assert_eq!(
        meta(&backup.join(&log)).ino(),
        log_ino,
        "the original is backed up"
    );
}

/// A part of the store on another mount (`dlq/` on a tmpfs, as a docker
/// volume would be): linking its files into the staging area says `EXDEV`,
/// so they are copied, published into the mount by a verified copy and
/// backed up by copy. The dead letters are reachable, and `downgrade` gives
/// back the exact layout-0 store.
#[test]
fn a_mount_inside_a_layout_0_store_is_upgraded_by_copying_and_downgraded_exactly() {
    let sb = Sandbox::new();
    let Some(_dlq) = crate::support::Mount::tmpfs(&sb.store().join("dlq"), "64m") else {
        return;
    };
    layout0::store(&sb.store());
    let before = store_tree(&sb);
    let report = run_json(&sb, &["upgrade"]);
    assert_eq!(report["outcome"], "migrated", "{report:#}");
    let store = storage_fs::FsStorage::open(sb.store()).expect("opens once upgraded");
    let repo = RepoKey::new("api").expect("key");
    let job = JobId::new(JOB).expect("job");
    assert_eq!(store.dead_letters(&repo, &job).expect("dlq").len(), 2);
    drop(store);
    run(&sb, &["downgrade"], true);
    assert_same_tree(&store_tree(&sb), &before, "after downgrade");
}

/// An older Prodigy rewrites a dead letter in place during the upgrade,
/// before the upgrade reads it, after it linked it, or after verification
/// (the upgrade held at that moment by a test hook). Before verification,
/// the upgrade stops with nothing published and names the change, the
/// rewrite is where the older Prodigy wrote it, and the next upgrade takes
/// it. After verification, the rewrite reached the one file that is also
/// the published one: the store has it, it stays at its layout-0 path
/// (not in the backup), and the report says so.
#[test]
fn a_file_rewritten_in_place_while_it_is_linked_stops_the_upgrade_and_is_kept() {
    let newer = b"{\"item_id\": \"item-1\", \"failure_count\": 12345}";
    for point in ["after-journal", "before-verify", "after-verify"] {
        let sb = layout0_sandbox();
        let item = sb.store().join(format!(
            "dlq/api/{JOB}/mapreduce/dlq/{JOB}/items/item-1.json"
        ));
        let published = sb.store().join(format!("dlq/api/{JOB}/items/item-1.json"));
        let pause = sb.path().join("paused");
        let child = cmd(&sb, &sb.project(), &["upgrade", "--json"])
            .env("PRODIGY_STORAGE_PAUSE_AT", point)
            .env("PRODIGY_STORAGE_PAUSE_FILE", &pause)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let start = std::time::Instant::now();
        while !pause.exists() {
            assert!(start.elapsed().as_secs() < 30, "never reached `{point}`");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let staged = fs_err::read_dir(sb.store().join("migrations/.layout-0"))
            .expect("records")
            .flatten()
            .map(|e| {
                e.path()
                    .join(format!("staging/dlq/api/{JOB}/items/item-1.json"))
            })
            .find(|p| p.exists());
        if point != "after-journal" {
            use std::os::unix::fs::MetadataExt;
            let staged = staged.expect("staged");
            let ino = |p: &std::path::Path| fs_err::metadata(p).expect("stat").ino();
            assert_eq!(ino(&staged), ino(&item), "staged as a link");
        }
        // In place, as `fs::write` does: the same inode, truncated and rewritten.
        fs_err::write(&item, newer).expect("rewrite in place");
        fs_err::remove_file(&pause).expect("go on");
        let out = child.wait_with_output().expect("wait");
        let err = String::from_utf8_lossy(&out.stderr);
        let what = format!("written at `{point}`");
        if point == "after-verify" {
            assert!(out.status.success(), "{what}: {err}");
            let report = json_of(&out);
            let warned = report["warnings"]
                .as_array()
                .expect("warnings")
                .iter()
                .any(|w| {
                    w.as_str()
                        .is_some_and(|w| w.contains("stays at its layout-0 path"))
                });
            assert!(warned, "{what}: {report:#}");
            assert_eq!(fs_err::read(&item).expect("read"), newer, "{what}");
            assert_eq!(fs_err::read(&published).expect("read"), newer, "{what}");
            continue;
        }
        assert!(!out.status.success(), "{what}: the upgrade went on");
        assert!(
            err.contains("changed while it was being migrated"),
            "{what}: {err}"
        );
        assert!(
            !sb.store().join("layout.json").exists(),
            "{what}: committed"
        );
        assert_eq!(fs_err::read(&item).expect("read"), newer, "{what}");
        run(&sb, &["upgrade"], true);
        assert_eq!(fs_err::read(&published).expect("read"), newer, "{what}");
    }
}

/// Review finding: an upgrade killed while publishing, then a dead letter
/// it had published (as a link) rewritten in place through its layout-0
/// name. The next `upgrade` used to stop for good ("its staged copy is gone
/// but it was not published"), and `downgrade` called the backup damaged;
/// now the upgrade finishes, keeps the newer bytes in the store and at the
/// layout-0 path, says so, and `downgrade --force` works. (The same
/// `upgrade` then imports what is left at layout-0 paths, as any re-run
/// does: the layout-0 name holds bytes the store already has, so that name
/// goes into the backup and nothing is published twice.)
#[test]
fn a_file_rewritten_in_place_after_a_crash_while_publishing_does_not_block_recovery() {
    let newer = b"{\"item_id\": \"item-1\", \"failure_count\": 777}";
    let sb = layout0_sandbox();
    let item = sb.store().join(format!(
        "dlq/api/{JOB}/mapreduce/dlq/{JOB}/items/item-1.json"
    ));
    let published = sb.store().join(format!("dlq/api/{JOB}/items/item-1.json"));
    crash(&sb, &["upgrade"], "mid-publish");
    assert!(published.exists(), "published before the crash");
    fs_err::write(&item, newer).expect("rewrite in place");
    let report = run_json(&sb, &["upgrade"]);
    assert_eq!(report["outcome"], "migrated", "{report:#}");
    assert_eq!(fs_err::read(&published).expect("read"), newer);
    assert!(
        !item.exists(),
        "imported by the same run: one copy, the store's"
    );
    let out = run(&sb, &["downgrade"], false);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("have changed since"), "{err}");
    run(&sb, &["downgrade", "--force"], true);
    assert_eq!(
        fs_err::read(&item).expect("read"),
        newer,
        "kept at its layout-0 path"
    );
}

/// Review finding: two layout-0 files that are one file with two names
/// (hard links). Linking the first moved the change time the second's
/// check compares, so every upgrade stopped blaming a writer that did not
/// exist. A file with another name is copied, not linked.
#[test]
fn files_that_already_have_two_names_are_upgraded_and_downgraded_exactly() {
    let sb = layout0_sandbox();
    let a = sb.store().join(format!(
        "dlq/api/{JOB}/mapreduce/dlq/{JOB}/items/item-1.json"
    ));
    let b = sb.store().join(format!(
        "dlq/api/{JOB}/mapreduce/dlq/{JOB}/items/item-3.json"
    ));
    fs_err::remove_file(&b).ok();
    fs_err::hard_link(&a, &b).expect("link");
    let before = store_tree(&sb);
    let report = run_json(&sb, &["upgrade"]);
    assert_eq!(report["outcome"], "migrated", "{report:#}");
    run(&sb, &["downgrade"], true);
    assert_same_tree(&store_tree(&sb), &before, "after downgrade");
}

#[test]
fn downgrade_gives_back_the_exact_layout_0_store() {
    let sb = layout0_sandbox();
    let before = store_tree(&sb);
    run(&sb, &["upgrade"], true);
    let r = run_json(&sb, &["downgrade"]);
    assert_eq!(r["restored_files"], 12, "{r:#}");
    assert_same_tree(&store_tree(&sb), &before, "after downgrade");
    // Start-up leaves a store a person downgraded alone; `upgrade` by hand works.
    let project = sb.project();
    fixture::legacy_project(&project);
    let out = run(&sb, &["migrate"], false);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("downgraded to layout 0 on request"), "{err}");
    run(&sb, &["upgrade"], true);
    run(&sb, &["migrate"], true);
}

/// A dead letter changed after the upgrade, the way the store writes (a
/// new file renamed over it) or in place (an editor that truncates and
/// rewrites): `downgrade` refuses and names `--force`; `--force` moves the
/// change aside. The store's way leaves the original in the backup, so the
/// layout-0 file is the original again; in place, the change reached the
/// one inode the upgrade moved (it links, it does not copy), so the
/// changed version is the only one and is what comes back.
#[test]
fn downgrade_refuses_when_upgraded_data_changed_and_force_moves_it_aside() {
    let changed = b"{\"item_id\": \"item-1\", \"failure_count\": 4}";
    for in_place in [false, true] {
        let sb = layout0_sandbox();
        let old_path = sb.store().join(format!(
            "dlq/api/{JOB}/mapreduce/dlq/{JOB}/items/item-1.json"
        ));
        let original = fs_err::read(&old_path).expect("layout-0 item");
        run(&sb, &["upgrade"], true);
        let moved = sb.store().join(format!("dlq/api/{JOB}/items/item-1.json"));
        if in_place {
            fs_err::write(&moved, changed).expect("write");
        } else {
            let tmp = moved.with_extension("tmp");
            fs_err::write(&tmp, changed).expect("write");
            fs_err::rename(&tmp, &moved).expect("rename");
        }
        let out = run(&sb, &["downgrade"], false);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("have changed since") && err.contains("--force"),
            "in place: {in_place}: {err}"
        );
        assert!(sb.store().join("layout.json").exists(), "nothing changed");
        let r = run_json(&sb, &["downgrade", "--force"]);
        assert_eq!(r["displaced"].as_array().map(Vec::len), Some(1), "{r:#}");
        let aside: Vec<_> = crate::support::files(&sb.store().join("legacy"))
            .into_iter()
            .filter(|(_, b)| b.ends_with(b"4}"))
            .collect();
        assert_eq!(aside.len(), 1, "the changed file is kept aside");
        let back = fs_err::read(&old_path).expect("restored");
        if in_place {
            assert_eq!(back, changed, "the only version left comes back");
        } else {
            assert_eq!(back, original, "the original comes back");
        }
    }
}

#[test]
fn migrate_upgrades_a_layout_0_store_first_and_says_so() {
    let sb = layout0_sandbox();
    fixture::legacy_project(&sb.project());
    let out = run(&sb, &["migrate", "--json"], true);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("first, Upgraded the store"), "{err}");
    assert_eq!(json_of(&out)["outcome"], "migrated");
}

#[test]
fn a_crash_at_every_step_of_an_upgrade_is_recovered_and_downgrade_is_exact() {
    let points: Vec<&str> = storage_migrate::CRASH_POINTS
        .iter()
        .copied()
        .filter(|p| !p.contains("rollback"))
        .collect();
    for point in points {
        let sb = layout0_sandbox();
        let before = store_tree(&sb);
        crash(&sb, &["upgrade"], point);
        let report = run_json(&sb, &["upgrade"]);
        assert_eq!(report["outcome"], "migrated", "{point}: {report:#}");
        run(&sb, &["downgrade"], true);
        assert_same_tree(&store_tree(&sb), &before, point);
    }
    for point in storage_migrate::CRASH_POINTS
        .iter()
        .filter(|p| p.contains("rollback"))
    {
        let sb = layout0_sandbox();
        let before = store_tree(&sb);
        run(&sb, &["upgrade"], true);
        crash(&sb, &["downgrade"], point);
        run(&sb, &["downgrade"], true);
        assert_same_tree(&store_tree(&sb), &before, point);
    }
}

/// An upgrade interrupted after publishing by a prodigy-storage that did
/// not record the planned files of the directories moved whole
/// (`pure_dir_files`) is finished from its entries.
#[test]
fn an_upgrade_whose_records_lack_the_planned_directory_counts_is_finished() {
    let sb = layout0_sandbox();
    let before = store_tree(&sb);
    crash(&sb, &["upgrade"], "after-publish");
    let dir = sb.store().join("migrations/.layout-0");
    let manifests: Vec<PathBuf> = fs_err::read_dir(&dir)
        .expect("list")
        .map(|e| e.expect("entry").path().join("manifest.json"))
        .filter(|p| p.exists())
        .collect();
    assert_eq!(manifests.len(), 1, "{manifests:?}");
    let mut m: serde_json::Value =
        serde_json::from_slice(&fs_err::read(&manifests[0]).expect("read")).expect("json");
    let pure = m["pure_dirs"].as_array().map_or(0, Vec::len);
    assert!(pure > 0, "the fixture has directories moved whole: {m:#}");
    let recorded = m
        .as_object_mut()
        .expect("an object")
        .remove("pure_dir_files");
    assert_eq!(
        recorded.and_then(|r| r.as_array().map(Vec::len)),
        Some(pure),
        "one count per directory"
    );
    fs_err::write(&manifests[0], m.to_string()).expect("write");
    let report = run_json(&sb, &["upgrade"]);
    assert_eq!(report["outcome"], "migrated", "{report:#}");
    assert!(
        !sb.store().join(format!("dlq/api/{JOB}/mapreduce")).exists(),
        "moved into the backup"
    );
    run(&sb, &["downgrade"], true);
    assert_same_tree(&store_tree(&sb), &before, "after downgrade");
}

/// A crash after the journal said `committed` and before the report was
/// written: recovery writes the report from the records.
#[test]
fn a_report_lost_in_the_commit_is_written_again_by_recovery() {
    let sb = layout0_sandbox();
    crash(&sb, &["upgrade"], "after-commit-journal");
    let dir = sb.store().join("migrations/.layout-0");
    let reports = || -> Vec<PathBuf> {
        fs_err::read_dir(&dir)
            .expect("list")
            .map(|e| e.expect("entry").path().join("report.json"))
            .filter(|p| p.exists())
            .collect()
    };
    assert!(reports().is_empty(), "the crash came before the report");
    run(&sb, &["upgrade"], true);
    let written = reports();
    assert_eq!(written.len(), 1, "{written:?}");
    let r: serde_json::Value =
        serde_json::from_slice(&fs_err::read(&written[0]).expect("read")).expect("json");
    assert_eq!(r["outcome"], "migrated", "{r:#}");
}

#[test]
fn eight_processes_upgrading_at_once_upgrade_once() {
    let sb = layout0_sandbox();
    let children: Vec<_> = (0..8)
        .map(|_| {
            cmd(&sb, &sb.project(), &["upgrade", "--json"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    let mut outcomes: Vec<String> = children
        .into_iter()
        .map(|c| {
            json_of(&c.wait_with_output().expect("wait"))["outcome"]
                .as_str()
                .expect("outcome")
                .to_owned()
        })
        .collect();
    outcomes.sort();
    assert_eq!(
        outcomes.iter().filter(|o| *o == "migrated").count(),
        1,
        "{outcomes:?}"
    );
    assert!(sb.store().join("layout.json").exists());
}

/// `prodigy-storage --home <store> <args>` under `strace`, killed with
/// `SIGKILL` at its `n`th call in `set` (`n = 0`: counted, not killed);
/// returns how many calls it made.
fn traced_upgrade(sb: &Sandbox, set: &str, n: u64, args: &[&str]) -> u64 {
    let log = sb.path().join(format!("strace-{n}"));
    let mut c = Command::new("strace");
    c.args(["-f", "-qq", "-o"])
        .arg(&log)
        .arg("-e")
        .arg(format!("trace={set}"));
    if n > 0 {
        c.arg("-e")
            .arg(format!("inject={set}:signal=KILL:when={n}"));
    }
    let _ = c
        .arg("--")
        .arg(crate::support::bin())
        .arg("--home")
        .arg(sb.store())
        .args(args)
        .env("HOME", sb.home())
        .env("NO_COLOR", "1")
        .env_remove("PRODIGY_HOME")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("strace");
    let text = fs_err::read_to_string(&log).unwrap_or_default();
    text.lines()
        .filter(|l| l.contains('(') && !l.contains("+++") && !l.contains("---"))
        .count() as u64
}

/// `SIGKILL` at every rename (and link), fsync and unlink of an upgrade and of a
/// downgrade (a spread sample in the quick tier, every index in the
/// exhaustive one): the next run finishes or undoes it, and a downgrade
/// then gives back the exact layout-0 store.
#[test]
fn sigkill_at_every_rename_fsync_and_unlink_of_upgrade_and_downgrade() {
    if Command::new("strace").arg("-V").output().is_err() {
        crate::support::skip("`strace` is not available here; the test did not run");
        return;
    }
    let exhaustive = std::env::var_os("PRODIGY_FAULTS_EXHAUSTIVE").is_some();
    for set in [
        "rename,renameat,renameat2,link,linkat",
        "fsync,fdatasync,syncfs",
        "unlink,unlinkat,rmdir",
    ] {
        for downgrading in [false, true] {
            let args: &[&str] = if downgrading {
                &["downgrade"]
            } else {
                &["upgrade"]
            };
            let probe = layout0_sandbox();
            if downgrading {
                run(&probe, &["upgrade"], true);
            }
            let total = traced_upgrade(&probe, set, 0, args);
            let picks: Vec<u64> = if exhaustive {
                (1..=total).collect()
            } else {
                let mut v = vec![1, 2, 3, total / 2, total.saturating_sub(1), total];
                v.retain(|n| (1..=total).contains(n));
                v.sort_unstable();
                v.dedup();
                v
            };
            for n in &picks {
                let sb = layout0_sandbox();
                let before = store_tree(&sb);
                if downgrading {
                    run(&sb, &["upgrade"], true);
                }
                traced_upgrade(&sb, set, *n, args);
                let what = format!("{} killed at {set} #{n}", args[0]);
                // Whatever state the kill left: it starts and explains, and
                // both ways out work.
                run(&sb, &["status"], true);
                let out = cmd(&sb, &sb.project(), args).output().expect("re-run");
                assert!(
                    out.status.success(),
                    "{what}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                if !downgrading {
                    run(&sb, &["downgrade"], true);
                }
                assert_same_tree(&store_tree(&sb), &before, &what);
            }
            eprintln!(
                "faults: SIGKILL at {set} of {}: {} of {total} indices",
                args[0],
                picks.len()
            );
        }
    }
}

/// `SIGKILL` at a random moment of the upgrade of a large layout-0 store
/// (the benchmark's: about 2,550 files, 16 MB), 2 rounds (40 in the
/// exhaustive tier; the seed is printed): the next `upgrade` finishes or
/// undoes it, and `downgrade` then gives back the exact layout-0 store.
#[test]
fn sigkill_at_random_moments_of_a_large_upgrade() {
    let exhaustive = std::env::var_os("PRODIGY_FAULTS_EXHAUSTIVE").is_some();
    let rounds = if exhaustive { 40 } else { 2 };
    let template = Sandbox::new();
    let _ = storage_tests::layout0::large_store(&template.store(), 1);
    let before = store_tree(&template);
    let mut seed: u64 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_secs() ^ u64::from(d.subsec_nanos()));
    eprintln!("faults: random upgrade kills, seed {seed}");
    let mut killed = 0;
    for round in 0..rounds {
        let sb = Sandbox::new();
        let ok = Command::new("cp")
            .arg("-a")
            .arg(template.store())
            .arg(sb.store())
            .status()
            .expect("cp");
        assert!(ok.success());
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let delay = std::time::Duration::from_millis((seed >> 33) % 700);
        let mut child = cmd(&sb, &sb.project(), &["upgrade"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        std::thread::sleep(delay);
        if child.try_wait().expect("poll").is_none() {
            killed += 1;
        }
        let _ = child.kill();
        let _ = child.wait();
        let what = format!("round {round}, killed after {delay:?} (seed {seed})");
        run(&sb, &["status"], true);
        run(&sb, &["upgrade"], true);
        assert!(storage_fs::FsStorage::open(sb.store()).is_ok(), "{what}");
        run(&sb, &["downgrade"], true);
        assert_same_tree(&store_tree(&sb), &before, &what);
    }
    eprintln!(
        "faults: random upgrade kills: {rounds} rounds, {killed} killed mid-run, all recovered"
    );
}

/// Review finding: a start-up (any writing command) after an interrupted
/// downgrade finishes the downgrade and then leaves the store alone; it
/// used to upgrade it again at once.
#[test]
fn an_interrupted_downgrade_is_finished_and_then_respected() {
    let sb = layout0_sandbox();
    let before = store_tree(&sb);
    run(&sb, &["upgrade"], true);
    crash(&sb, &["downgrade"], "mid-rollback-remove");
    fixture::legacy_project(&sb.project());
    let out = run(&sb, &["migrate"], false);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("downgraded to layout 0 on request"), "{err}");
    assert_same_tree(&store_tree(&sb), &before, "downgraded, and left so");
}

/// Review finding: `--home` through a symbolic link: the downgrade used to
/// refuse the store itself as "a symbolic link".
#[test]
fn a_store_reached_through_a_link_upgrades_and_downgrades() {
    let sb = layout0_sandbox();
    let before = store_tree(&sb);
    let link = sb.path().join("store-link");
    std::os::unix::fs::symlink(sb.store(), &link).expect("link");
    let with_link = |args: &[&str]| {
        let out = std::process::Command::new(crate::support::bin())
            .arg("--home")
            .arg(&link)
            .args(args)
            .env("HOME", sb.home())
            .env_remove("PRODIGY_HOME")
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    with_link(&["upgrade"]);
    with_link(&["downgrade"]);
    assert_same_tree(&store_tree(&sb), &before, "through the link");
}

/// Review finding: an empty directory of layout 0 (an empty `items/`) is
/// part of the exact tree a downgrade gives back.
#[test]
fn downgrade_keeps_empty_directories_of_layout_0() {
    let sb = layout0_sandbox();
    fs_err::create_dir_all(sb.store().join(format!("dlq/api/{JOB}/items"))).expect("mkdir");
    let before = store_tree(&sb);
    run(&sb, &["upgrade"], true);
    run(&sb, &["downgrade"], true);
    assert_same_tree(&store_tree(&sb), &before, "after downgrade");
}

#[test]
fn list_shows_every_kind_the_api_reaches_with_its_documented_shape() {
    use serde_json::json;
    use storage_core::{DocKey, DocName, ExtKind, Storage, UnifiedSession, WorkflowCheckpoint};
    let sb = Sandbox::new();
    let store = storage_fs::FsStorage::open(sb.store()).expect("open");
    let repo = RepoKey::new("api").expect("key");
    let session = SessionId::new("session-1").expect("id");
    store
        .save_unified_session(
            &UnifiedSession::from_json(json!({"id": "session-1", "status": "Running"}))
                .expect("valid"),
        )
        .expect("save");
    store
        .save_session_workflow_checkpoint(
            &session,
            &WorkflowCheckpoint::from_json(json!({"workflow_id": "wf-1"})).expect("valid"),
        )
        .expect("save");
    store
        .put(
            &DocKey::Extension {
                repo: repo.clone(),
                kind: ExtKind::new("prodigy.reduce-checkpoint").expect("kind"),
                name: DocName::new("v1").expect("name"),
            },
            &json!({"phase": "reduce"}),
        )
        .expect("put");
    let list = run_json(&sb, &["list"]);
    assert_eq!(list["schema_version"], 2);
    let items: Vec<serde_json::Value> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| {
            assert!(i["size"].as_u64().is_some_and(|n| n > 0), "{i}");
            assert!(
                i["modified"].as_str().is_some_and(|t| t.ends_with('Z')),
                "{i}"
            );
            json!({"kind": i["kind"], "repo": i["repo"], "job": i["job"], "id": i["id"],
                   "path": sb.redact(i["path"].as_str().expect("path"))})
        })
        .collect();
    insta::assert_json_snapshot!("list_json_kinds", items);
    // With --repo, only that repository's documents (no global ones).
    let only = run_json(&sb, &["list", "--repo", "api"]);
    assert_eq!(
        only["items"].as_array().expect("items").len(),
        1,
        "{only:#}"
    );
}

#[test]
fn copy_store_copies_everything_verified_and_a_second_run_copies_nothing() {
    let sb = layout0_sandbox();
    let dest = sb.path().join("team-store");
    let dest_arg = dest.to_str().expect("utf-8").to_owned();
    let report = run_json(&sb, &["copy-store", "--to", &dest_arg]);
    assert_eq!(report["schema_version"], 2, "{report:#}");
    assert_eq!(report["conflicts"], serde_json::json!([]), "{report:#}");
    let docs = report["documents"].as_u64().expect("documents");
    let logs = report["event_logs"].as_u64().expect("event logs");
    assert!(docs > 0 && logs > 0, "{report:#}");
    // What an older Prodigy tore stays in the source, named: the torn
    // unified session, the line two writers interleaved in a log, and that
    // log's torn last line.
    let skipped: Vec<&str> = report["skipped"]
        .as_array()
        .expect("skipped")
        .iter()
        .map(|s| s["path"].as_str().expect("path"))
        .collect();
    assert_eq!(skipped.len(), 3, "{report:#}");
    assert!(
        skipped[0].ends_with("sessions/session-torn.json"),
        "{report:#}"
    );
    assert!(
        skipped[1..].iter().all(|p| p.contains("/events/api/")),
        "{report:#}"
    );
    assert!(
        report["skipped"][1]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("a torn line")),
        "{report:#}"
    );
    // The source was upgraded first (it was layout 0) and is otherwise unchanged.
    let source = storage_fs::FsStorage::open(sb.store()).expect("source");
    let copy = storage_fs::FsStorage::open(&dest).expect("destination");
    let count = |s: &storage_fs::FsStorage| {
        s.inventory(None)
            .expect("inventory")
            .iter()
            .map(|i| (i.kind.clone(), i.repo.clone(), i.job.clone(), i.id.clone()))
            .filter(|k| k.0 != "event log" && k.3.as_deref() != Some("session-torn"))
            .collect::<Vec<_>>()
    };
    assert_eq!(count(&source), count(&copy));
    let again = run_json(&sb, &["copy-store", "--to", &dest_arg]);
    assert_eq!(again["documents"], 0, "{again:#}");
    assert_eq!(
        again["already_done"].as_u64(),
        Some(docs + logs),
        "{again:#}"
    );
    // Into itself: refused.
    let out = run(
        &sb,
        &["copy-store", "--to", sb.store().to_str().expect("utf-8")],
        false,
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("into itself"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn copy_store_leaves_a_destination_document_that_differs_reports_it_and_exits_1() {
    use storage_core::{DocKey, Storage};
    let sb = Sandbox::new();
    let source = storage_fs::FsStorage::open(sb.store()).expect("source");
    let key = |id: &str| DocKey::Session {
        repo: RepoKey::new("api").expect("repo"),
        session: SessionId::new(id).expect("id"),
    };
    for id in ["session-1", "session-2", "session-3"] {
        source
            .put(
                &key(id),
                &serde_json::json!({"session_id": id, "from": "me"}),
            )
            .expect("put");
    }
    let dest = sb.path().join("team-store");
    let dest_arg = dest.to_str().expect("utf-8").to_owned();
    let team = storage_fs::FsStorage::open(&dest).expect("destination");
    // A teammate's session-2; session-1 as this store has it.
    team.put(
        &key("session-2"),
        &serde_json::json!({"session_id": "session-2", "from": "teammate"}),
    )
    .expect("put");
    team.put(
        &key("session-1"),
        &source.get(&key("session-1")).expect("get").expect("doc"),
    )
    .expect("put");
    let theirs = std::fs::read(team.layout().document(&key("session-2"))).expect("read");

    let out = run(&sb, &["copy-store", "--to", &dest_arg, "--json"], false);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the report");
    assert_eq!(
        (&report["documents"], &report["already_equal"]),
        (&serde_json::json!(1), &serde_json::json!(1)),
        "{report:#}"
    );
    let conflicts = report["conflicts"].as_array().expect("conflicts");
    assert_eq!(conflicts.len(), 1, "{report:#}");
    assert!(
        conflicts[0]["item"]
            .as_str()
            .expect("item")
            .contains("session-2"),
        "{report:#}"
    );
    assert_eq!(conflicts[0]["overwritten"], false, "{report:#}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("1 document(s) in the destination differ")
            && stderr.contains("--overwrite"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(team.layout().document(&key("session-2"))).expect("read"),
        theirs,
        "the teammate's document is unchanged"
    );
    // The human report names it too.
    let out = run(&sb, &["copy-store", "--to", &dest_arg], false);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("conflict (left as it is in the destination, not copied): doc Session"),
        "{text}"
    );
    // --overwrite replaces it, says so, and succeeds.
    let report = run_json(&sb, &["copy-store", "--to", &dest_arg, "--overwrite"]);
    assert_eq!(report["conflicts"][0]["overwritten"], true, "{report:#}");
    assert_eq!(
        team.get(&key("session-2")).expect("get"),
        source.get(&key("session-2")).expect("get")
    );
}

#[test]
fn store_selects_a_directory_like_home_and_a_database_needs_the_postgres_build() {
    let sb = Sandbox::new();
    let dir = sb.path().join("elsewhere");
    let dir_arg = dir.to_str().expect("utf-8").to_owned();
    // `--store` without `--home`: the sandbox's runner adds `--home`, so build the command here.
    let bare = |args: &[&str], env: &[(&str, &str)]| {
        let mut c = Command::new(crate::support::bin());
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
    let s = json_of(&bare(&["--store", &dir_arg, "status", "--json"], &[]));
    assert_eq!(s["store_source"], "store_flag", "{s:#}");
    assert_eq!(s["store"].as_str(), Some(dir_arg.as_str()), "{s:#}");
    let s = json_of(&bare(&["status", "--json"], &[("PRODIGY_STORE", &dir_arg)]));
    assert_eq!(s["store_source"], "store_env", "{s:#}");
    // --home beats PRODIGY_STORE (an option beats a variable).
    let home_arg = sb.store().to_str().expect("utf-8").to_owned();
    let s = json_of(&bare(
        &["--home", &home_arg, "status", "--json"],
        &[("PRODIGY_STORE", &dir_arg)],
    ));
    assert_eq!(s["store_source"], "flag", "{s:#}");
    let out = bare(&["--store", &dir_arg, "--home", &dir_arg, "status"], &[]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot be used with"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = bare(
        &["--store", "postgres://prodigy@127.0.0.1:1/x", "status"],
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("no PostgreSQL support") || err.contains("cannot connect"),
        "without the feature it says so; with it, the connection fails: {err}"
    );
}

/// Issue 21, item 2: a manifest that cannot be read (here a newer build's
/// format) is not "an upgrade that moved nothing": `downgrade` stops with
/// the reason before it changes anything, and works once the manifest is
/// readable again.
#[test]
fn downgrade_refuses_a_manifest_it_cannot_read_and_changes_nothing() {
    let sb = layout0_sandbox();
    let before = store_tree(&sb);
    run(&sb, &["upgrade"], true);
    let manifest = upgrade_backup(&sb).with_file_name("manifest.json");
    let text = fs_err::read_to_string(&manifest).expect("manifest");
    let mut newer: serde_json::Value = serde_json::from_str(&text).expect("json");
    newer["manifest_version"] = 99.into();
    fs_err::write(&manifest, newer.to_string()).expect("write");
    let upgraded = store_tree(&sb);
    let out = run(&sb, &["downgrade"], false);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("format version 99"), "{err}");
    assert!(sb.store().join("layout.json").exists(), "still upgraded");
    assert_same_tree(&store_tree(&sb), &upgraded, "nothing changed");
    fs_err::write(&manifest, text).expect("restore");
    let r = run_json(&sb, &["downgrade"]);
    assert_eq!(r["restored_files"], 12, "{r:#}");
    assert_same_tree(&store_tree(&sb), &before, "after downgrade");
}

/// Issue 21, item 5: a repository's `session_state.json` whose session is
/// itself called `session_state` is already where the store reads it: it
/// stays in place (it used to be moved onto itself and then retired, so it
/// was left only in the backup), is listed, and downgrade is exact.
#[test]
fn a_session_named_session_state_stays_where_it_is() {
    let sb = layout0_sandbox();
    let path = sb.store().join("state/web/sessions/session_state.json");
    let text = r#"{"session_id": "session_state", "status": "InProgress"}"#;
    fs_err::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    fs_err::write(&path, text).expect("write");
    let before = store_tree(&sb);
    run(&sb, &["upgrade"], true);
    assert_eq!(fs_err::read_to_string(&path).expect("still there"), text);
    let store = storage_fs::FsStorage::open(sb.store()).expect("open");
    let web = RepoKey::new("web").expect("valid");
    let id = SessionId::new("session_state").expect("valid");
    let keys = storage_core::Storage::list(&store, &storage_core::Scope::Sessions(web.clone()))
        .expect("list");
    assert_eq!(keys.len(), 1, "the API lists it: {keys:?}");
    assert!(
        store.load_session(&web, &id).expect("load").is_some(),
        "and reads it"
    );
    run(&sb, &["downgrade"], true);
    assert_same_tree(&store_tree(&sb), &before, "after downgrade");
}

/// Issue 21, item 4: dead letters of other jobs nested under one job's
/// directory (`dlq/R/J1/mapreduce/dlq/J2/…` and `…/J3/…`, the same item
/// names) made every upgrade fail with "File exists" in staging; they are
/// kept aside, and downgrade is exact.
#[test]
fn dead_letters_of_other_jobs_nested_under_a_job_are_kept_aside() {
    let sb = layout0_sandbox();
    for inner in ["mapreduce-2", "mapreduce-3"] {
        let dir = sb
            .store()
            .join(format!("dlq/api/mapreduce-1/mapreduce/dlq/{inner}"));
        fs_err::create_dir_all(dir.join("items")).expect("mkdir");
        fs_err::write(
            dir.join("items/item-1.json"),
            format!(r#"{{"item_id": "item-1", "job": "{inner}"}}"#),
        )
        .expect("write");
        fs_err::write(dir.join("index.json"), r#"{"item_count": 1}"#).expect("write");
    }
    let before = store_tree(&sb);
    let r = run_json(&sb, &["upgrade"]);
    assert_eq!(r["outcome"], "migrated", "{r:#}");
    let kept = crate::support::files(&sb.store().join("legacy"));
    for inner in ["mapreduce-2", "mapreduce-3"] {
        assert!(
            kept.iter().any(|(p, b)| p.to_string_lossy().contains(inner)
                && b.ends_with(format!("\"{inner}\"}}").as_bytes())),
            "{inner} kept aside: {:?}",
            kept.iter().map(|(p, _)| p).collect::<Vec<_>>()
        );
    }
    run(&sb, &["downgrade"], true);
    assert_same_tree(&store_tree(&sb), &before, "after downgrade");
}

/// Issue 21, item 18: `migrate --wait 1` behind another process's upgrade
/// gives up after about a second (it waited the upgrade's own 120 s), and a
/// command that waited while another process upgraded says nothing of an
/// upgrade it did not make (it printed "first, … needs no upgrade").
#[test]
fn a_command_waits_for_an_upgrade_as_its_wait_says_and_reports_only_its_own() {
    let sb = layout0_sandbox();
    fixture::legacy_project(&sb.project());
    let pause = sb.path().join("paused");
    let upgrading = cmd(&sb, &sb.project(), &["upgrade", "--json"])
        .env("PRODIGY_STORAGE_PAUSE_AT", "after-lock")
        .env("PRODIGY_STORAGE_PAUSE_FILE", &pause)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let start = std::time::Instant::now();
    while !pause.exists() {
        assert!(start.elapsed().as_secs() < 30, "never reached `after-lock`");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let t = std::time::Instant::now();
    let out = run(&sb, &["migrate", "--wait", "1"], false);
    let waited = t.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(waited.as_secs() < 10, "waited {waited:?}: {err}");
    assert!(err.contains("locked"), "{err}");
    // Now one that waits long enough: the upgrade is the other process's.
    let waiting = cmd(&sb, &sb.project(), &["migrate", "--wait", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    std::thread::sleep(std::time::Duration::from_millis(300));
    fs_err::remove_file(&pause).expect("let the upgrade go on");
    assert!(
        upgrading
            .wait_with_output()
            .expect("upgrade")
            .status
            .success()
    );
    let out = waiting.wait_with_output().expect("migrate");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        !err.contains("first,"),
        "no upgrade of its own to report: {err}"
    );
}

/// Issue 19: an older Prodigy goes on writing layout 0 after the upgrade.
/// What it writes is read where it is; the next `upgrade` imports what the
/// store reads in a new place, never twice and never dropping a newer
/// version (the store's older copy goes aside first), leaves what the
/// store has no home for where the older code uses it, and says "needs no
/// upgrade" only when nothing is left; `downgrade` undoes every run.
#[test]
fn upgrade_runs_again_to_import_what_an_older_prodigy_wrote_since() {
    let sb = layout0_sandbox();
    let root = sb.store();
    let nested = root.join(format!("dlq/api/{JOB}/mapreduce/dlq/{JOB}/items"));
    run(&sb, &["upgrade"], true);
    let current = root.join(format!("dlq/api/{JOB}/items"));
    let moved_v1 = fs_err::read(current.join("item-1.json")).expect("moved by the first upgrade");

    // The older Prodigy, after the upgrade: a new dead letter, a newer
    // version of one the upgrade moved, a session, an agent log.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let v2 = br#"{"item_id": "item-1", "failure_count": 9}"#;
    // (`DLQStorage::persist` creates its directories, as every writer here.)
    fs_err::create_dir_all(&nested).expect("mkdir");
    fs_err::create_dir_all(root.join("state/api/sessions")).expect("mkdir");
    fs_err::create_dir_all(root.join("logs/api")).expect("mkdir");
    fs_err::write(nested.join("item-1.json"), v2).expect("newer version");
    fs_err::write(nested.join("item-9.json"), br#"{"item_id": "item-9"}"#).expect("new item");
    fs_err::write(
        root.join("state/api/sessions/session_state.json"),
        br#"{"session_id": "session-late", "status": "running"}"#,
    )
    .expect("session");
    fs_err::write(root.join("logs/api/late.log"), b"agent output\n").expect("log");

    // Read where they are, before any import.
    let store = storage_fs::FsStorage::open(&root).expect("open");
    let (repo, job) = (
        RepoKey::new("api").expect("valid"),
        JobId::new(JOB).expect("valid"),
    );
    let item = |id: &str| storage_core::DocKey::DeadLetter {
        repo: repo.clone(),
        job: job.clone(),
        item: storage_core::ItemId::new(id).expect("valid"),
    };
    let get = |id: &str| {
        storage_core::Storage::get(&store, &item(id))
            .expect("get")
            .expect("found")
    };
    assert_eq!(get("item-1")["failure_count"], 9, "the newer copy is read");
    assert_eq!(get("item-9")["item_id"], "item-9");
    assert!(storage_migrate::upgrade_due(&store).expect("due"));
    let status = run(&sb, &["status"], true);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("an older Prodigy wrote files since the upgrade"),
        "status says so: {text}"
    );

    let r = run_json(&sb, &["upgrade"]);
    assert_eq!(r["outcome"], "migrated", "{r:#}");
    assert_eq!(fs_err::read(current.join("item-1.json")).expect("read"), v2);
    assert!(current.join("item-9.json").is_file());
    assert!(
        root.join("state/api/sessions/session-late.json").is_file(),
        "the session is imported under its id"
    );
    assert!(
        root.join("logs/api/late.log").is_file(),
        "what the store has no home for stays where the older code reads it"
    );
    let superseded: Vec<_> = crate::support::files(&root.join("legacy/.layout-0/superseded"))
        .into_iter()
        .filter(|(_, b)| *b == moved_v1)
        .collect();
    assert_eq!(superseded.len(), 1, "the store's older copy is kept aside");
    assert!(
        !nested.exists() || crate::support::files(&nested).is_empty(),
        "nothing left to import twice"
    );
    assert!(!storage_migrate::upgrade_due(&store).expect("due"));
    let again = run_json(&sb, &["upgrade"]);
    assert_eq!(again["outcome"], "nothing_to_migrate", "{again:#}");
    assert_eq!(get("item-1")["failure_count"], 9);
    assert_eq!(
        storage_core::StorageExt::dead_letters(&store, &repo, &job)
            .expect("read")
            .len(),
        3,
        "each dead letter once"
    );

    // The new Prodigy writes a session's workflow checkpoint, a place only
    // the current layout has.
    let session = storage_core::SessionId::new(SESSION).expect("valid");
    storage_core::StorageExt::save_session_workflow_checkpoint(
        &store,
        &session,
        &storage_core::WorkflowCheckpoint::from_json(serde_json::json!({
            "workflow_id": "wf-1", "step": 3
        }))
        .expect("a checkpoint"),
    )
    .expect("save");

    // Down through every run: no layout.json, nothing left in the current
    // layout's new places, every layout-0 file the older Prodigy wrote back.
    let d = run_json(&sb, &["downgrade"]);
    assert_eq!(
        d["not_read_by_older"], 1,
        "the downgrade says what an older Prodigy will not see: {d:#}"
    );
    assert_eq!(d["also_undone"].as_array().map(Vec::len), Some(2), "{d:#}");
    assert!(!root.join("layout.json").exists());
    assert_eq!(
        fs_err::read(nested.join("item-9.json")).expect("back"),
        br#"{"item_id": "item-9"}"#
    );
    assert!(root.join("state/api/sessions/session_state.json").is_file());
    assert!(!current.join("item-9.json").exists());
    // Layout 0 holds one version per path: the newer ones the older
    // Prodigy wrote stay, the first upgrade's originals stay in its backup.
    assert_eq!(fs_err::read(nested.join("item-1.json")).expect("back"), v2);
    let first = &d["also_undone"][1];
    assert_eq!(
        first["kept_newer"].as_array().map(Vec::len),
        Some(2),
        "{first:#}"
    );
    assert!(
        crate::support::files(&root.join("migrations"))
            .iter()
            .any(|(_, b)| *b == moved_v1),
        "the original is in the backup"
    );
}

/// Issue 19: a crash at every step of a re-run of the upgrade (one that
/// only imports new files, and one whose first transaction puts a
/// superseded copy aside) is recovered by the next run: each dead letter
/// then reads as the version the older Prodigy wrote last, nothing is left
/// to import, and the downgrade leaves those versions at their layout-0
/// paths.
#[test]
fn a_crash_at_every_step_of_a_re_run_is_recovered() {
    let points: Vec<&str> = storage_migrate::CRASH_POINTS
        .iter()
        .copied()
        .filter(|p| !p.contains("rollback"))
        .collect();
    for superseding in [false, true] {
        for point in &points {
            let sb = layout0_sandbox();
            let root = sb.store();
            run(&sb, &["upgrade"], true);
            let nested = root.join(format!("dlq/api/{JOB}/mapreduce/dlq/{JOB}/items"));
            fs_err::create_dir_all(&nested).expect("mkdir");
            let mut want = vec![("item-7", br#"{"item_id": "item-7"}"#.to_vec())];
            if superseding {
                std::thread::sleep(std::time::Duration::from_millis(20));
                want.push((
                    "item-1",
                    br#"{"item_id": "item-1", "failure_count": 5}"#.to_vec(),
                ));
            }
            for (id, bytes) in &want {
                fs_err::write(nested.join(format!("{id}.json")), bytes).expect("older Prodigy");
            }
            crash(&sb, &["upgrade"], point);
            let report = run_json(&sb, &["upgrade"]);
            let case = format!("{point} (superseding: {superseding})");
            assert_eq!(report["outcome"], "migrated", "{case}: {report:#}");
            let store = storage_fs::FsStorage::open(&root).expect("open");
            assert!(
                !storage_migrate::upgrade_due(&store).expect("due"),
                "{case}"
            );
            let current = root.join(format!("dlq/api/{JOB}/items"));
            for (id, bytes) in &want {
                assert_eq!(
                    &fs_err::read(current.join(format!("{id}.json"))).expect("imported"),
                    bytes,
                    "{case}"
                );
            }
            run(&sb, &["downgrade"], true);
            for (id, bytes) in &want {
                assert_eq!(
                    &fs_err::read(nested.join(format!("{id}.json"))).expect("back"),
                    bytes,
                    "{case}"
                );
            }
            assert!(!root.join("layout.json").exists(), "{case}");
        }
    }
}

/// `cp -a` of the store at `from` to the store of `to` (which has none).
fn copy_store(from: &Sandbox, to: &Sandbox) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(from.store())
        .arg(to.store())
        .status()
        .expect("cp");
    assert!(st.success(), "cp -a");
}

/// Issue 21, item 1: a store copied (`cp -a`) or moved after its upgrade,
/// or in the middle of one, undoes and finishes its own transactions where
/// it is, and never touches the original (the records named the store's
/// absolute path, and a copy's downgrade moved the original's files).
#[test]
fn a_copied_or_moved_store_undoes_and_finishes_its_own_upgrade() {
    // Copied after the upgrade.
    let sb = layout0_sandbox();
    let before = store_tree(&sb);
    run(&sb, &["upgrade"], true);
    let upgraded = snapshot(&sb.store());
    let copy = Sandbox::new();
    copy_store(&sb, &copy);
    run(&copy, &["downgrade"], true);
    assert_same_tree(
        &store_tree(&copy),
        &before,
        "the copy is downgraded where it is",
    );
    assert_same_tree(
        &snapshot(&sb.store()),
        &upgraded,
        "the original is untouched",
    );
    run(&sb, &["downgrade"], true);
    assert_same_tree(
        &store_tree(&sb),
        &before,
        "the original downgrades on its own",
    );

    // Moved after the upgrade.
    let sb = layout0_sandbox();
    let before = store_tree(&sb);
    run(&sb, &["upgrade"], true);
    let moved = Sandbox::new();
    fs_err::rename(sb.store(), moved.store()).expect("mv");
    run(&moved, &["downgrade"], true);
    assert_same_tree(
        &store_tree(&moved),
        &before,
        "the moved store is downgraded",
    );

    // Copied in the middle of an upgrade, at every step: each store
    // finishes its own, and gives back its own layout-0 tree.
    for point in storage_migrate::CRASH_POINTS
        .iter()
        .filter(|p| !p.contains("rollback"))
    {
        let sb = layout0_sandbox();
        let before = store_tree(&sb);
        crash(&sb, &["upgrade"], point);
        let halfway = snapshot(&sb.store());
        let copy = Sandbox::new();
        copy_store(&sb, &copy);
        let report = run_json(&copy, &["upgrade"]);
        assert_eq!(report["outcome"], "migrated", "{point}: {report:#}");
        assert_eq!(
            report["warnings"].as_array().map(|w| w
                .iter()
                .filter(|w| w.as_str().is_some_and(|w| w.contains("changed after")))
                .count()),
            Some(0),
            "{point}: {report:#}"
        );
        assert_same_tree(&snapshot(&sb.store()), &halfway, point);
        run(&copy, &["downgrade"], true);
        assert_same_tree(
            &store_tree(&copy),
            &before,
            &format!("{point}: the copy, downgraded"),
        );
        run(&sb, &["upgrade"], true);
        run(&sb, &["downgrade"], true);
        assert_same_tree(
            &store_tree(&sb),
            &before,
            &format!("{point}: the original, downgraded"),
        );
    }
}

/// Issue 21, item 20: a downgrade that copies files back across file
/// systems (the dead letters' directory is a mount), killed at every
/// link, rename, unlink and fsync (a spread sample in the quick tier): the
/// next run finishes it and leaves no temp file beside a restored one (a
/// killed run's `.prodigy-storage-restore-…` stayed in the layout-0 tree).
#[test]
fn a_downgrade_across_file_systems_killed_anywhere_leaves_no_temp_file() {
    if Command::new("strace").arg("-V").output().is_err() {
        crate::support::skip("`strace` is not available here; the test did not run");
        return;
    }
    let exhaustive = std::env::var_os("PRODIGY_FAULTS_EXHAUSTIVE").is_some();
    let set = "link,linkat,rename,renameat,renameat2,unlink,unlinkat,fsync,fdatasync";
    let prepare = || -> Option<(Sandbox, crate::support::Mount)> {
        let sb = Sandbox::new();
        let mount = crate::support::Mount::tmpfs(&sb.store().join("dlq"), "16m")?;
        layout0::store(&sb.store());
        Some((sb, mount))
    };
    let Some((probe, _m)) = prepare() else {
        return;
    };
    run(&probe, &["upgrade"], true);
    let total = traced_upgrade(&probe, set, 0, &["downgrade"]);
    let picks: Vec<u64> = if exhaustive {
        (1..=total).collect()
    } else {
        (1..=total).step_by(7).collect()
    };
    let mut left = Vec::new();
    for n in &picks {
        let Some((sb, _mount)) = prepare() else {
            return;
        };
        let before = store_tree(&sb);
        run(&sb, &["upgrade"], true);
        traced_upgrade(&sb, set, *n, &["downgrade"]);
        run(&sb, &["downgrade"], true);
        let temps: Vec<PathBuf> = snapshot(&sb.store())
            .into_keys()
            .filter(|p| {
                p.file_name()
                    .is_some_and(|f| f.to_string_lossy().starts_with(".prodigy-storage-restore-"))
            })
            .collect();
        if !temps.is_empty() {
            left.push((*n, temps));
        }
        assert_same_tree(
            &store_tree(&sb)
                .into_iter()
                .filter(|(p, _)| {
                    !p.file_name().is_some_and(|f| {
                        f.to_string_lossy().starts_with(".prodigy-storage-restore-")
                    })
                })
                .collect(),
            &before,
            &format!("downgrade killed at {set} #{n}"),
        );
    }
    assert_eq!(left, Vec::new(), "temp files left after the re-run");
    eprintln!(
        "faults: SIGKILL in a downgrade across file systems: {} of {total} indices",
        picks.len()
    );
}

/// Issue 21, item 19: an upgrade's backup is listed by `backups list` (as
/// repository `(upgrade)`) and pruned like a migration's: kept while a
/// downgrade needs it, pruned once downgraded (the copies a downgrade
/// restored doubled the store's size until then), and `--force` prunes a
/// live one, after which `downgrade` refuses, naming the pruned backup.
#[test]
fn upgrade_backups_are_listed_and_pruned_with_the_same_safety() {
    let sb = layout0_sandbox();
    run(&sb, &["upgrade"], true);
    let list = run_json(&sb, &["backups", "list"]);
    let ours: Vec<&serde_json::Value> = list["backups"]
        .as_array()
        .expect("list")
        .iter()
        .filter(|b| b["repo"] == "(upgrade)")
        .collect();
    assert_eq!(ours.len(), 1, "{list:#}");
    let path = PathBuf::from(ours[0]["path"].as_str().expect("path"));
    assert!(path.is_dir());
    let status = run_json(&sb, &["status"]);
    assert!(
        status["backups"]
            .as_array()
            .expect("backups")
            .iter()
            .any(|b| b["repo"] == "(upgrade)"),
        "status lists it too: {status:#}"
    );
    let kept = run_json(&sb, &["backups", "prune", "--older-than", "0s"]);
    assert_eq!(kept["pruned"], serde_json::json!([]), "{kept:#}");
    assert!(
        kept["kept"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("needed to downgrade")),
        "{kept:#}"
    );
    run(&sb, &["downgrade"], true);
    let pruned = run_json(&sb, &["backups", "prune", "--older-than", "0s"]);
    assert_eq!(
        pruned["pruned"].as_array().map(Vec::len),
        Some(1),
        "{pruned:#}"
    );
    assert!(!path.exists(), "a downgraded upgrade's backup is pruned");

    // --force prunes a live one; the downgrade then says why it cannot.
    run(&sb, &["upgrade"], true);
    run_json(&sb, &["backups", "prune", "--older-than", "0s", "--force"]);
    let out = run(&sb, &["downgrade"], false);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pruned"), "{err}");
}

/// Issue 21, item 13: an upgrade killed half-way, or a downgrade, is what
/// `status` says (text and `--json`'s `upgrade_interrupted`), with the
/// command that finishes it; `list` warns that it may be incomplete meanwhile.
#[test]
fn status_and_list_say_an_upgrade_or_downgrade_was_interrupted() {
    let sb = layout0_sandbox();
    crash(&sb, &["upgrade"], "mid-retire");
    let s = run_json(&sb, &["status"]);
    assert_eq!(s["upgrade_interrupted"]["phase"], "retiring", "{s:#}");
    assert_eq!(s["upgrade_interrupted"]["downgrade"], false, "{s:#}");
    let text = String::from_utf8_lossy(&run(&sb, &["status"], true).stdout).into_owned();
    assert!(
        text.contains("was interrupted while retiring: run `prodigy-storage upgrade`"),
        "{text}"
    );
    run(&sb, &["upgrade"], true);
    assert_eq!(
        run_json(&sb, &["status"])["upgrade_interrupted"],
        serde_json::Value::Null
    );

    crash(&sb, &["downgrade"], "mid-rollback-restore");
    let s = run_json(&sb, &["status"]);
    assert_eq!(s["upgrade_interrupted"]["downgrade"], true, "{s:#}");
    let text = String::from_utf8_lossy(&run(&sb, &["status"], true).stdout).into_owned();
    assert!(text.contains("a downgrade ("), "{text}");
    assert!(
        !text.contains("an older Prodigy wrote files since"),
        "not mistaken for new layout-0 files: {text}"
    );
    let listed = run(&sb, &["list"], true);
    assert!(
        String::from_utf8_lossy(&listed.stderr).contains("what is listed may be incomplete"),
        "{listed:?}"
    );
    run(&sb, &["downgrade"], true);
    assert_eq!(
        run_json(&sb, &["status"])["upgrade_interrupted"],
        serde_json::Value::Null
    );
}

/// Issue 21, item 8: a file where the store needs a directory is refused
/// while planning, with nothing changed (it stopped half-way); an upgrade
/// that does stop half-way names `upgrade` and `downgrade` as the ways
/// out, which work (it named `migrate` and `rollback` of the store's root).
#[test]
fn an_upgrade_names_its_own_ways_out() {
    let sb = layout0_sandbox();
    let items = sb.store().join(format!("dlq/api/{JOB}/items"));
    fs_err::write(&items, b"not a directory").expect("a file in the way");
    let before = store_tree(&sb);
    let out = run(&sb, &["upgrade"], false);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is a file where the store needs a directory"),
        "{err}"
    );
    assert_same_tree(&store_tree(&sb), &before, "nothing changed");
    fs_err::remove_file(&items).expect("moved away");
    run(&sb, &["upgrade"], true);

    if Command::new("strace").arg("-V").output().is_err() {
        crate::support::skip("`strace` is not available here; the rest did not run");
        return;
    }
    let sb = layout0_sandbox();
    let before = store_tree(&sb);
    let out = Command::new("strace")
        .args(["-f", "-qq", "-o", "/dev/null", "-e", "trace=renameat2"])
        .args(["-e", "inject=renameat2:error=EIO:when=3+"])
        .arg(crate::support::bin())
        .arg("--home")
        .arg(sb.store())
        .arg("upgrade")
        .env("HOME", sb.home())
        .env_remove("PRODIGY_HOME")
        .output()
        .expect("strace");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stopped half-way"), "{err}");
    let home = sb.store().display().to_string();
    assert!(err.contains(&format!("--home {home} upgrade`")), "{err}");
    assert!(err.contains(&format!("--home {home} downgrade`")), "{err}");
    assert!(
        !err.contains(" rollback ") && !err.contains(" migrate "),
        "{err}"
    );
    run(&sb, &["downgrade"], true);
    assert_same_tree(&store_tree(&sb), &before, "the named way out works");
}

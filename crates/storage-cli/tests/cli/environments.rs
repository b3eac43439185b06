//! The environments users really have, not only crashes: a project reached
//! through a bind mount, a mount inside the store, an old Prodigy writing
//! while a migration runs (every `syncfs` slowed down with `strace`), a
//! retried sync, two stores. Each test is the regression test of one item
//! of the issue "Every exit is safe" and fails without its fix.
//!
//! Tests that need root (`mount`) or `strace` print `SKIP: <test>: <reason>` and return (and fail under `PRODIGY_REQUIRE_ALL_TESTS=1`)
//! where the machine cannot do it.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{Mount, Sandbox, assert_same_tree, bin, cmd, files, json_of, snapshot};

fn have_strace() -> bool {
    let ok = Command::new("strace")
        .args(["-qq", "-e", "trace=none", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        crate::support::skip("`strace` is not available here; the test did not run");
    }
    ok
}

/// `prodigy-storage --home <store> <args> <project>` under `strace -e inject=<inject>`.
fn traced(sb: &Sandbox, inject: &str, args: &[&str], project: &Path) -> Command {
    let mut c = Command::new("strace");
    c.args(["-f", "-qq", "-o", "/dev/null", "-e"])
        .arg(format!("inject={inject}"))
        .arg("--")
        .arg(bin())
        .arg("--home")
        .arg(sb.store())
        .args(args)
        .arg(project)
        .env("HOME", sb.home())
        .env("NO_COLOR", "1")
        .env_remove("PRODIGY_HOME")
        .env_remove("PRODIGY_STORAGE_CRASH_AT")
        .env_remove("PRODIGY_STORAGE_FAULT")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

const JOB: &str = "mapreduce-1757146800123";

fn event(n: u32) -> String {
    format!(
        "{{\"id\":\"{n}\",\"event\":{{\"event_type\":\"agent_completed\",\"job_id\":\"{JOB}\"}}}}\n"
    )
}

/// A small legacy project: a global event log (split per job), a cache
/// directory (moved into the backup whole), a user file.
fn small_project(project: &Path) {
    let p = project.join(".prodigy");
    fs_err::create_dir_all(p.join("mapreduce/events/global")).expect("mkdir");
    fs_err::create_dir_all(p.join("cache")).expect("mkdir");
    let log: String = (0..20).map(event).collect();
    fs_err::write(p.join("mapreduce/events/global/events.jsonl"), log).expect("write");
    fs_err::write(p.join("cache/a.json"), b"{\"a\": 1}\n").expect("write");
    fs_err::write(p.join("cache/b.json"), b"{\"b\": 2}\n").expect("write");
    fs_err::write(p.join("config.yml"), b"user: file\n").expect("write");
}

/// The small project on a `tmpfs` of its own (another file system than the
/// store's), or `None` (printed) where mounting is not allowed.
fn project_on_another_file_system(sb: &Sandbox) -> Option<(Mount, PathBuf)> {
    let mnt = sb.path().join("tmpfs");
    let mount = Mount::tmpfs(&mnt, "64m")?;
    let project = mnt.join("api");
    small_project(&project);
    Some((mount, project))
}

fn finish(child: Child) -> std::process::Output {
    child.wait_with_output().expect("wait")
}

/// Every file under `dir` whose bytes contain `needle`, except in backups.
fn holders(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    files(dir)
        .into_iter()
        .filter(|(p, bytes)| {
            !p.components().any(|c| c.as_os_str() == "backup")
                && bytes.windows(needle.len()).any(|w| w == needle)
        })
        .map(|(p, _)| p)
        .collect()
}

/// How many lines `"id":"<id>"` the store's event logs hold.
fn line_copies(store: &Path, id: &str) -> usize {
    let needle = format!("\"id\":\"{id}\"");
    files(&store.join("events"))
        .into_iter()
        .map(|(_, b)| {
            b.windows(needle.len())
                .filter(|w| *w == needle.as_bytes())
                .count()
        })
        .sum()
}

/// Waits until `cond` holds (a process is at a known step), at most 20 s.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn backup_has(sb: &Sandbox, rel: &str) -> bool {
    let Ok(txs) = std::fs::read_dir(sb.store().join("migrations")) else {
        return false;
    };
    txs.flatten().any(|repo| {
        std::fs::read_dir(repo.path()).is_ok_and(|d| {
            d.flatten()
                .any(|tx| tx.path().join("backup").join(rel).exists())
        })
    })
}

/// Item 1: a project reached through a bind mount of the store's own file
/// system. `st_dev` is equal but `rename` says `EXDEV`: the legacy files
/// must still leave the project (copied, synced, then removed), once.
#[test]
fn a_project_through_a_bind_mount_is_migrated_once() {
    let sb = Sandbox::new();
    let real = sb.path().join("real");
    small_project(&real.join("api"));
    let before = snapshot(&real.join("api"));
    let Some(_bind) = Mount::bind(&real, &sb.path().join("bind")) else {
        return;
    };
    let project = sb.path().join("bind/api");
    for run in 0..3 {
        let out = cmd(&sb, &project, &["migrate", "--json", "."])
            .output()
            .expect("run");
        let report = json_of(&out);
        let want = if run == 0 {
            "migrated"
        } else {
            "nothing_to_migrate"
        };
        assert_eq!(report["outcome"], want, "run {run}: {report:#}");
    }
    assert!(
        !project
            .join(".prodigy/mapreduce/events/global/events.jsonl")
            .exists(),
        "the legacy log left the project"
    );
    // Every event is in the store exactly once.
    let lines: usize = files(&sb.store().join("events"))
        .iter()
        .map(|(_, b)| b.split(|&c| c == b'\n').filter(|l| !l.is_empty()).count())
        .sum();
    assert_eq!(lines, 20, "20 events, each stored once");
    let v = cmd(&sb, &project, &["verify", "."]).output().expect("run");
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
    let r = cmd(&sb, &project, &["rollback", "."])
        .output()
        .expect("run");
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_same_tree(&snapshot(&real.join("api")), &before, "rollback");
}

/// Item 2: across file systems, an old Prodigy appends to the legacy log
/// while the backup's `syncfs` runs (slowed down to 2 s). The appended
/// line must survive: the changed source stays in the project.
#[test]
fn a_line_appended_during_the_backup_sync_across_devices_is_kept() {
    if !have_strace() {
        return;
    }
    let sb = Sandbox::new();
    let Some((_tmpfs, project)) = project_on_another_file_system(&sb) else {
        return;
    };
    let log = project.join(".prodigy/mapreduce/events/global/events.jsonl");
    // syncfs #1 makes staging durable, #2 publishing, #3 the backup copies.
    let child = traced(
        &sb,
        "syncfs:delay_enter=2000000:when=3",
        &["migrate", "--json"],
        &project,
    )
    .spawn()
    .expect("spawn");
    wait_for("the backup copy of the log", || {
        backup_has(&sb, "mapreduce/events/global/events.jsonl")
    });
    let late = b"{\"id\":\"late\",\"event\":{\"job_id\":\"mapreduce-1757146800123\"}}\n";
    {
        use std::io::Write;
        let mut f = fs_err::OpenOptions::new()
            .append(true)
            .open(&log)
            .expect("open");
        f.write_all(late).expect("append");
    }
    let out = finish(child);
    let report = json_of(&out);
    assert_eq!(report["outcome"], "migrated", "{report:#}");
    let mut found = holders(&project, b"\"id\":\"late\"");
    found.extend(holders(&sb.store(), b"\"id\":\"late\""));
    assert!(
        !found.is_empty(),
        "the appended line is in neither the project nor the store"
    );
    let warnings = report["warnings"].to_string();
    assert!(
        warnings.contains("changed after it was verified"),
        "{report:#}"
    );
    // The next run imports the newer version.
    let again = json_of(
        &cmd(&sb, &project, &["migrate", "--json", "."])
            .output()
            .expect("run"),
    );
    assert_eq!(again["outcome"], "migrated", "{again:#}");
    assert!(!holders(&sb.store(), b"\"id\":\"late\"").is_empty());
    // Issue 19: only what was appended is imported the second time; the
    // lines the first run imported are in the job's log once.
    let copies = |id: &str| line_copies(&sb.store(), id);
    for n in [0, 7, 19] {
        assert_eq!(
            copies(&n.to_string()),
            1,
            "line {n} stored twice: {again:#}"
        );
    }
    assert_eq!(copies("late"), 1);
}

/// Items 3 and 7 on one file system: a file of a directory that is moved
/// into the backup whole is written while publishing's `syncfs` runs. It
/// must not survive only in the backup (where `verify` calls the backup
/// damaged and rollback refuses): it goes back into the project.
#[test]
fn a_file_changed_before_its_directory_is_moved_goes_back_into_the_project() {
    if !have_strace() {
        return;
    }
    let sb = Sandbox::new();
    let project = sb.project();
    small_project(&project);
    let cache = project.join(".prodigy/cache/a.json");
    let child = traced(
        &sb,
        "syncfs:delay_enter=2000000:when=2",
        &["migrate", "--json"],
        &project,
    )
    .spawn()
    .expect("spawn");
    wait_for("publishing", || sb.store().join("legacy").exists());
    std::thread::sleep(Duration::from_millis(200));
    fs_err::write(&cache, b"{\"a\": \"newer\"}\n").expect("write");
    let report = json_of(&finish(child));
    assert_eq!(report["outcome"], "migrated", "{report:#}");
    assert_eq!(
        fs_err::read(&cache).expect("the newer version is in the project"),
        b"{\"a\": \"newer\"}\n"
    );
    let v = cmd(&sb, &project, &["verify", "--json", "."])
        .output()
        .expect("run");
    let v: serde_json::Value = serde_json::from_slice(&v.stdout).expect("one JSON document");
    assert_eq!(v["backup_damaged"], serde_json::json!([]), "{v:#}");
    assert_eq!(v["legacy_files_left"], 1, "the newer version: {v:#}");
    let r = cmd(&sb, &project, &["rollback", "."])
        .output()
        .expect("run");
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(fs_err::read(&cache).expect("kept"), b"{\"a\": \"newer\"}\n");
}

/// Item 4: a file is written into a storage directory after it was listed
/// and before it is renamed into the backup whole (every rename slowed
/// down by 200 ms; the file is written as soon as the journal says the
/// legacy files are being retired). It must end up in the project or the
/// store, never only in the backup, unrecorded.
#[test]
fn a_file_written_while_its_directory_is_moved_is_never_only_in_the_backup() {
    if !have_strace() {
        return;
    }
    let sb = Sandbox::new();
    let project = sb.project();
    small_project(&project);
    let child = traced(
        &sb,
        "rename,renameat,renameat2:delay_enter=200000",
        &["migrate", "--json"],
        &project,
    )
    .spawn()
    .expect("spawn");
    let journal = sb.store().join("migrations/project/journal.json");
    wait_for("the retiring phase", || {
        std::fs::read(&journal).is_ok_and(|b| String::from_utf8_lossy(&b).contains("retiring"))
    });
    let late = project.join(".prodigy/cache/late.json");
    let written = std::fs::write(&late, b"{\"late\": true}").is_ok();
    let out = finish(child);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        written,
        "the directory was moved before the file could be written"
    );
    let mut found = holders(&project, b"{\"late\": true}");
    found.extend(holders(&sb.store(), b"{\"late\": true}"));
    assert!(
        !found.is_empty(),
        "`late.json` was written during the migration and is now only in the backup"
    );
}

/// Item 5: after `EIO` on the backup's `syncfs`, the next run must not
/// trust the copies it made (a retried sync proves nothing): it makes them
/// again before removing any source.
#[test]
fn after_a_failed_backup_sync_the_copies_are_made_again() {
    if !have_strace() {
        return;
    }
    let sb = Sandbox::new();
    let Some((_tmpfs, project)) = project_on_another_file_system(&sb) else {
        return;
    };
    let out = traced(
        &sb,
        "syncfs:error=EIO:when=3",
        &["migrate", "--json"],
        &project,
    )
    .output()
    .expect("run");
    assert!(!out.status.success(), "the failed sync is reported");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("rollback"), "names the way back: {stderr}");
    let log = project.join(".prodigy/mapreduce/events/global/events.jsonl");
    assert!(log.exists(), "no source removed after a failed sync");
    let copy = |sb: &Sandbox| {
        let mut found = None;
        for tx in fs_err::read_dir(sb.store().join("migrations/api"))
            .expect("migrations")
            .flatten()
        {
            let p = tx
                .path()
                .join("backup/mapreduce/events/global/events.jsonl");
            if let Ok(m) = std::fs::metadata(&p) {
                // A copy made again has a new change time (its inode number
                // may well be reused).
                found = Some((m.ino(), m.ctime(), m.ctime_nsec()));
            }
        }
        found
    };
    let first = copy(&sb).expect("the first run copied the log into the backup");
    let report = json_of(
        &cmd(&sb, &project, &["migrate", "--json", "."])
            .output()
            .expect("run"),
    );
    assert!(report["recovered"].is_string(), "{report:#}");
    assert!(!log.exists());
    assert_ne!(
        copy(&sb),
        Some(first),
        "the backup copy made before the failed sync was trusted"
    );
}

fn crash_at(sb: &Sandbox, project: &Path, args: &[&str], point: &str) {
    use std::os::unix::process::ExitStatusExt;
    let out = cmd(sb, project, args)
        .env("PRODIGY_STORAGE_CRASH_AT", point)
        .output()
        .expect("run");
    assert_eq!(
        out.status.signal(),
        Some(6),
        "{point}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Item 7: across file systems, a legacy file changed after a crash in the
/// publish phase. Recovery used to stop for good with a verification error
/// claiming "nothing was published"; now the changed file stays in the
/// project, the migration finishes, and the next run imports it.
#[test]
fn a_file_changed_after_a_crash_while_publishing_does_not_block_recovery() {
    let sb = Sandbox::new();
    let Some((_tmpfs, project)) = project_on_another_file_system(&sb) else {
        return;
    };
    crash_at(&sb, &project, &["migrate", "."], "after-publish");
    let a = project.join(".prodigy/cache/a.json");
    fs_err::write(&a, b"{\"a\": \"changed\"}\n").expect("write");
    let out = cmd(&sb, &project, &["migrate", "--json", "."])
        .output()
        .expect("run");
    let report = json_of(&out);
    // The interrupted migration is finished (the changed file left in the
    // project), then the same run migrates the changed file.
    assert!(report["recovered"].is_string(), "{report:#}");
    assert_eq!(report["outcome"], "migrated", "{report:#}");
    assert!(!holders(&sb.store(), b"\"changed\"").is_empty());
    assert!(!holders(&sb.store(), b"{\"a\": 1}").is_empty());
    assert!(!a.exists());
    let v = cmd(&sb, &project, &["verify", "."]).output().expect("run");
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
}

/// Item 8: a part of the store (`events/`, where the split log goes) is
/// another mount. Publishing used to rename only, fail with `EXDEV`, and
/// stay in `publishing` for good; now it copies there, verified.
#[test]
fn a_mount_inside_the_store_is_published_into() {
    let sb = Sandbox::new();
    small_project(&sb.project());
    let before = snapshot(&sb.project());
    let Some(_tmpfs) = Mount::tmpfs(&sb.store().join("events"), "64m") else {
        return;
    };
    let report = json_of(
        &cmd(&sb, &sb.project(), &["migrate", "--json"])
            .output()
            .expect("run"),
    );
    assert_eq!(report["outcome"], "migrated", "{report:#}");
    let lines: usize = files(&sb.store().join("events"))
        .iter()
        .map(|(_, b)| b.split(|&c| c == b'\n').filter(|l| !l.is_empty()).count())
        .sum();
    assert_eq!(lines, 20);
    let v = cmd(&sb, &sb.project(), &["verify"]).output().expect("run");
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
    let r = cmd(&sb, &sb.project(), &["rollback"])
        .output()
        .expect("run");
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_same_tree(&snapshot(&sb.project()), &before, "rollback");
}

/// Item 9: two stores and one project (sudo with another home, a changed
/// `PRODIGY_HOME`). While store B's migration is unfinished, store A refuses
/// and names B; and B's recovery is never stuck when the files are gone.
#[test]
fn a_second_store_refuses_a_project_with_an_unfinished_migration_elsewhere() {
    let sb = Sandbox::new();
    small_project(&sb.project());
    let other = sb.path().join("other-home/.prodigy");
    let with = |store: &Path, args: &[&str]| with_home(&sb, store, args);
    let out = with(&other, &["migrate"])
        .env("PRODIGY_STORAGE_CRASH_AT", "after-publish")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let out = cmd(&sb, &sb.project(), &["migrate"]).output().expect("run");
    assert!(!out.status.success(), "store A must refuse");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unfinished") && err.contains(&*other.to_string_lossy()),
        "{err}"
    );
    // B finishes; then A has nothing to do.
    let out = with(&other, &["migrate", "--json"]).output().expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let a = json_of(
        &cmd(&sb, &sb.project(), &["migrate", "--json"])
            .output()
            .expect("run"),
    );
    assert_eq!(a["outcome"], "nothing_to_migrate", "{a:#}");
}

/// Item 9, the state older versions left: store B crashed after publishing
/// (no marker), store A then migrated the project. B's recovery used to
/// fail for ever ("neither in the project nor in the backup"); now it
/// finishes and says where the files are.
#[test]
fn recovery_finishes_when_another_store_took_the_files() {
    let sb = Sandbox::new();
    small_project(&sb.project());
    let other = sb.path().join("other-home/.prodigy");
    let with = |store: &Path, args: &[&str]| with_home(&sb, store, args);
    let out = with(&other, &["migrate"])
        .env("PRODIGY_STORAGE_CRASH_AT", "after-publish")
        .output()
        .expect("run");
    assert!(!out.status.success());
    fs_err::remove_file(
        sb.project()
            .join(".prodigy/.prodigy-storage-migration.json"),
    )
    .expect("the marker");
    run_ok(cmd(&sb, &sb.project(), &["migrate"]));
    let out = with(&other, &["migrate", "--json"]).output().expect("run");
    let report = json_of(&out);
    assert!(report["recovered"].is_string(), "{report:#}");
    assert_eq!(
        report["outcome"], "migrated",
        "the finished migration's report: {report:#}"
    );
    assert!(
        report["warnings"]
            .to_string()
            .contains("left the project before it could be backed up"),
        "{report:#}"
    );
}

/// `prodigy-storage --home <store> <args>` in the project, like `cmd` with another store.
fn with_home(sb: &Sandbox, store: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.arg("--home")
        .arg(store)
        .args(args)
        .current_dir(sb.project())
        .env("HOME", sb.home())
        .env_remove("PRODIGY_HOME")
        .env_remove("PRODIGY_STORAGE_CRASH_AT")
        .env_remove("PRODIGY_STORAGE_FAULT")
        .env("NO_COLOR", "1");
    c
}

fn run_ok(mut c: Command) -> std::process::Output {
    let out = c.output().expect("run");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Item 10: the store's disk is full while legacy files are being copied
/// into the backup (a crash mid-backup, then the disk filled up). Rollback
/// used to finish the backup first and fail with ENOSPC; undoing needs no
/// space in the store, so it now works, and restores the exact tree.
#[test]
fn an_unfinished_migration_is_undone_on_a_full_store() {
    let sb = Sandbox::new();
    let a = sb.path().join("a");
    let b = sb.home();
    let Some(_project_fs) = Mount::tmpfs(&a, "64m") else {
        return;
    };
    let Some(_store_fs) = Mount::tmpfs(&b, "64m") else {
        return;
    };
    let project = a.join("api");
    small_project(&project);
    let before = snapshot(&project);
    crash_at(&sb, &project, &["migrate", "."], "mid-retire");
    // Fill the store's file system to the last byte.
    {
        use std::io::Write;
        let mut filler = fs_err::File::create(b.join("filler")).expect("create");
        let block = vec![0u8; 64 * 1024];
        while filler.write_all(&block).is_ok() {}
        while filler.write_all(&[0u8; 512]).is_ok() {}
    }
    let out = cmd(&sb, &project, &["migrate", "."]).output().expect("run");
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("rollback"), "names the way back: {err}");
    }
    let r = cmd(&sb, &project, &["rollback", "--json", "."])
        .output()
        .expect("run");
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_same_tree(&snapshot(&project), &before, "undone on a full store");
}

/// Item 10, before anything is published: across file systems, a store
/// without room for the backup copies is refused, and nothing changes.
#[test]
fn a_store_without_room_for_the_backup_is_refused_before_publishing() {
    let sb = Sandbox::new();
    let a = sb.path().join("a");
    let Some(_project_fs) = Mount::tmpfs(&a, "64m") else {
        return;
    };
    let Some(_store_fs) = Mount::tmpfs(&sb.home(), "24m") else {
        return;
    };
    let project = a.join("api");
    small_project(&project);
    // 10 MiB of legacy data: staging fits, staging plus backup do not.
    fs_err::write(project.join(".prodigy/cache/big.json"), {
        let mut v = b"[".to_vec();
        v.extend(std::iter::repeat_n(b'0', 10 << 20));
        v.extend(b"]");
        v
    })
    .expect("write");
    let before = snapshot(&project);
    let out = cmd(&sb, &project, &["migrate", "."]).output().expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("free"), "{err}");
    assert_same_tree(&snapshot(&project), &before, "nothing changed");
    assert!(!sb.store().join("state").exists() && !sb.store().join("legacy").exists());
}

/// Item 11: `--home` at a bind mount of the project's own `.prodigy`. The
/// paths differ, the directory is the same: refused.
#[test]
fn a_store_that_is_the_projects_legacy_directory_by_another_path_is_refused() {
    let sb = Sandbox::new();
    small_project(&sb.project());
    let alias = sb.path().join("alias");
    let Some(_bind) = Mount::bind(&sb.project().join(".prodigy"), &alias) else {
        return;
    };
    let out = with_home(&sb, &alias, &["migrate"]).output().expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is the store itself"), "{err}");
    assert!(!sb.project().join(".prodigy/layout.json").exists());
}

/// Item 12: a `migrate` started while a rollback holds the lock but has not
/// written its journal yet (every rename slowed down by 1 s; the migrate
/// starts when the journal's temp file appears) waits for the rollback,
/// then migrates what it restored; it used to answer "nothing to migrate"
/// at once.
#[test]
fn a_migrate_during_a_rollback_waits_for_it() {
    if !have_strace() {
        return;
    }
    let sb = Sandbox::new();
    small_project(&sb.project());
    run_ok(cmd(&sb, &sb.project(), &["migrate"]));
    let rollback = traced(
        &sb,
        "rename,renameat,renameat2:delay_enter=1000000",
        &["rollback"],
        &sb.project(),
    )
    .spawn()
    .expect("spawn");
    let dir = sb.store().join("migrations/project");
    wait_for("the rollback's journal temp file", || {
        std::fs::read_dir(&dir).is_ok_and(|d| {
            d.flatten().any(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with(".tmp-") && name.ends_with("journal.json")
            })
        })
    });
    let m = json_of(
        &cmd(&sb, &sb.project(), &["migrate", "--json"])
            .output()
            .expect("run"),
    );
    let r = finish(rollback);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(m["outcome"], "migrated", "{m:#}");
}

/// Item 13: run as root on a project and a store owned by another user,
/// migrate and rollback leave every entry of `.prodigy` and of the store
/// owned by that user (a root-owned file makes their Prodigy fail with
/// "Permission denied").
#[test]
fn root_restores_files_with_the_projects_owner() {
    if !rustix::process::geteuid().is_root() {
        crate::support::skip("not root; the ownership test did not run");
        return;
    }
    let sb = Sandbox::new();
    small_project(&sb.project());
    let legacy = sb.project().join(".prodigy");
    let chown_all = |dir: &Path| {
        for (p, _) in snapshot(dir) {
            std::os::unix::fs::lchown(dir.join(p), Some(65534), Some(65534)).expect("chown");
        }
        std::os::unix::fs::lchown(dir, Some(65534), Some(65534)).expect("chown");
    };
    chown_all(&legacy);
    // The user's store, reached by root (`sudo` keeping PRODIGY_HOME).
    fs_err::create_dir_all(sb.store()).expect("mkdir");
    chown_all(&sb.store());
    run_ok(cmd(&sb, &sb.project(), &["migrate"]));
    let root_owned = |dir: &Path| -> Vec<PathBuf> {
        snapshot(dir)
            .into_keys()
            .filter(|p| {
                !p.starts_with("worktrees")
                    && std::fs::symlink_metadata(dir.join(p)).map(|m| m.uid()).ok() != Some(65534)
            })
            .collect()
    };
    let in_store = root_owned(&sb.store());
    assert!(
        in_store.is_empty(),
        "root-owned in the user's store: {in_store:?}"
    );
    run_ok(cmd(&sb, &sb.project(), &["rollback"]));
    let in_store = root_owned(&sb.store());
    assert!(
        in_store.is_empty(),
        "root-owned in the user's store after rollback: {in_store:?}"
    );
    let wrong: Vec<PathBuf> = snapshot(&legacy)
        .into_keys()
        .filter(|p| {
            std::fs::symlink_metadata(legacy.join(p))
                .map(|m| m.uid())
                .ok()
                != Some(65534)
        })
        .collect();
    assert!(wrong.is_empty(), "owned by someone else now: {wrong:?}");
}

/// Item 14: a rollback killed while writing its journal leaves a temp file
/// in `migrations/<repo>/`; the next `migrate`, with nothing to migrate,
/// used to answer without sweeping it.
#[test]
fn a_journal_temp_file_of_a_killed_rollback_is_swept_by_the_next_migrate() {
    let sb = Sandbox::new();
    small_project(&sb.project());
    run_ok(cmd(&sb, &sb.project(), &["migrate"]));
    let temp = sb
        .store()
        .join("migrations/project/.tmp-999999-0-journal.json");
    fs_err::write(&temp, b"{\"txid\": ").expect("write");
    run_ok(cmd(&sb, &sb.project(), &["migrate"]));
    assert!(
        !temp.exists(),
        "the killed rollback's temp file is still there"
    );
}

/// Item 6: after a migration, `.prodigy/cache` no longer exists; a link
/// planted there (a `git pull` of a repository that tracks one) must not
/// be written through by rollback.
#[test]
fn rollback_never_writes_through_a_planted_link() {
    let sb = Sandbox::new();
    small_project(&sb.project());
    run_ok(cmd(&sb, &sb.project(), &["migrate"]));
    let outside = sb.path().join("outside");
    fs_err::create_dir_all(&outside).expect("mkdir");
    let cache = sb.project().join(".prodigy/cache");
    assert!(
        !cache.exists(),
        "the migration removed the emptied directory"
    );
    std::os::unix::fs::symlink(&outside, &cache).expect("link");
    let out = cmd(&sb, &sb.project(), &["rollback"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cache"), "names the link: {err}");
    assert!(
        !sb.store().join("migrations/project/journal.json").exists(),
        "refused before anything changed"
    );
    assert_eq!(
        fs_err::read_dir(&outside).expect("list").count(),
        0,
        "nothing written outside the project"
    );
    // The way out the message names: move the link away, roll back.
    fs_err::remove_file(&cache).expect("unlink");
    run_ok(cmd(&sb, &sb.project(), &["rollback"]));
    assert_eq!(
        fs_err::read(cache.join("a.json")).expect("restored"),
        b"{\"a\": 1}\n"
    );
}

fn exhaustive() -> bool {
    std::env::var_os("PRODIGY_FAULTS_EXHAUSTIVE").is_some()
}

/// An old Prodigy appending event lines (creating the log again if it is
/// gone, as Prodigy did) at random moments of a migration whose every
/// `syncfs` is slowed down by 300 ms, on one file system and across two.
/// After one more `migrate` for what arrived late, every line ever written
/// is in the project or the store (never only in a backup), and `verify`
/// is clean. 2 rounds per setting (10 in the exhaustive tier); the seed is
/// printed.
#[test]
fn an_old_prodigy_appending_at_random_moments_loses_nothing() {
    if !have_strace() {
        return;
    }
    let rounds = if exhaustive() { 10 } else { 2 };
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_secs() ^ u64::from(d.subsec_nanos()) << 20)
        | 1;
    eprintln!("faults: random appends seed {seed}");
    let mut rng = seed;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut written_total = 0;
    let mut refused = 0;
    for cross in [false, true] {
        for round in 0..rounds {
            let sb = Sandbox::new();
            let _tmpfs;
            let project = if cross {
                let Some((m, project)) = project_on_another_file_system(&sb) else {
                    return;
                };
                _tmpfs = m;
                project
            } else {
                small_project(&sb.project());
                sb.project()
            };
            let log = project.join(".prodigy/mapreduce/events/global/events.jsonl");
            let start_after = Duration::from_millis(next() % 1800);
            let child = traced(
                &sb,
                "syncfs:delay_enter=300000",
                &["migrate", "--json"],
                &project,
            )
            .spawn()
            .expect("spawn");
            std::thread::sleep(start_after);
            let mut ids = Vec::new();
            let mut child = Some(child);
            let mut out = None;
            for k in 0.. {
                if let Some(c) = child.as_mut()
                    && c.try_wait().expect("wait").is_some()
                {
                    out = Some(finish(child.take().expect("child")));
                }
                let id = format!("w-{round}-{k}");
                let line = format!("{{\"id\":\"{id}\",\"event\":{{\"job_id\":\"{JOB}\"}}}}\n");
                if std::fs::create_dir_all(log.parent().expect("parent")).is_ok()
                    && std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&log)
                        .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()))
                        .is_ok()
                {
                    ids.push(id);
                }
                if out.is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50 + next() % 300));
            }
            let out = out.expect("finished");
            // A write while the file was being copied stops the run before
            // anything is published (the other safe exit).
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() || stderr.contains("changed while it was being migrated"),
                "seed {seed} round {round} cross {cross}: {stderr}"
            );
            if !out.status.success() {
                refused += 1;
            }
            // What arrived late is imported by the next run.
            run_ok({
                let mut c = cmd(&sb, &project, &["migrate", "."]);
                c.stdout(Stdio::null());
                c
            });
            let v = cmd(&sb, &project, &["verify", "."]).output().expect("run");
            assert!(
                v.status.success(),
                "seed {seed} round {round} cross {cross}: {}",
                String::from_utf8_lossy(&v.stdout)
            );
            let mut everything = files(&sb.store());
            everything.retain(|(p, _)| !p.components().any(|c| c.as_os_str() == "backup"));
            everything.extend(files(&project));
            for id in &ids {
                let needle = format!("\"id\":\"{id}\"");
                assert!(
                    everything
                        .iter()
                        .any(|(_, b)| b.windows(needle.len()).any(|w| w == needle.as_bytes())),
                    "seed {seed} round {round} cross {cross}: line {id} is lost (or only in a backup)"
                );
            }
            written_total += ids.len();
        }
    }
    eprintln!(
        "faults: random appends: {written_total} lines written during {} migrations \
         ({refused} stopped before publishing because a file changed while it was copied), none lost",
        rounds * 2
    );
}

/// Item 5 for rollback: after `EIO` on the `syncfs` that makes restored
/// files durable, finishing the rollback must not trust the copies it made
/// (their pages may be gone): it restores them again from the backup.
#[test]
fn after_a_failed_sync_during_rollback_the_restored_copies_are_made_again() {
    if !have_strace() {
        return;
    }
    let sb = Sandbox::new();
    small_project(&sb.project());
    run_ok(cmd(&sb, &sb.project(), &["migrate"]));
    let out = traced(&sb, "syncfs:error=EIO:when=1", &["rollback"], &sb.project())
        .output()
        .expect("run");
    assert!(!out.status.success(), "the failed sync is reported");
    let a = sb.project().join(".prodigy/cache/a.json");
    let id = |p: &Path| {
        let m = std::fs::metadata(p).expect("restored");
        (m.ino(), m.ctime(), m.ctime_nsec())
    };
    let first = id(&a);
    run_ok(cmd(&sb, &sb.project(), &["rollback"]));
    assert_eq!(fs_err::read(&a).expect("restored"), b"{\"a\": 1}\n");
    assert_ne!(
        id(&a),
        first,
        "the copy restored before the failed sync was trusted"
    );
}

/// Item 6, the race: while a rollback restores (every link and rename slowed down),
/// the directory it is restoring into is swapped for a link to a directory
/// outside the project. Every component is opened without following links
/// and held open, so nothing is ever written outside.
#[test]
fn a_directory_swapped_for_a_link_during_rollback_is_never_written_through() {
    if !have_strace() {
        return;
    }
    let sb = Sandbox::new();
    small_project(&sb.project());
    run_ok(cmd(&sb, &sb.project(), &["migrate"]));
    let outside = sb.path().join("outside");
    fs_err::create_dir_all(&outside).expect("mkdir");
    let cache = sb.project().join(".prodigy/cache");
    let child = traced(
        &sb,
        "linkat,link,rename,renameat,renameat2:delay_enter=300000",
        &["rollback"],
        &sb.project(),
    )
    .spawn()
    .expect("spawn");
    wait_for("the rollback to recreate `cache/`", || cache.is_dir());
    fs_err::rename(&cache, sb.project().join(".prodigy/cache-moved")).expect("move away");
    std::os::unix::fs::symlink(&outside, &cache).expect("plant the link");
    let _ = finish(child);
    assert_eq!(
        fs_err::read_dir(&outside).expect("list").count(),
        0,
        "a restored file was written through the link"
    );
}

/// Review finding: after a crash during retire, a file renamed over a
/// verified one in a directory moved whole (a new inode, other bytes) was
/// taken for a verified copy; it is checked by content and put back.
#[test]
fn after_a_crash_in_retire_a_replaced_file_in_a_moved_directory_goes_back() {
    let sb = Sandbox::new();
    small_project(&sb.project());
    crash_at(&sb, &sb.project(), &["migrate"], "mid-retire");
    let moved = backup_path(&sb, "cache/a.json").expect("moved into the backup");
    let newer = moved.with_file_name("a.json.new");
    fs_err::write(&newer, b"{\"a\": \"newer\"}\n").expect("write");
    fs_err::rename(&newer, &moved).expect("rename over");
    run_ok(cmd(&sb, &sb.project(), &["migrate"]));
    // Recovery puts it back into the project; the same run then imports it
    // (a conflict with the verified version, both kept).
    assert!(
        !holders(&sb.store(), b"\"newer\"").is_empty(),
        "the newer bytes are only in the backup"
    );
    let v = cmd(&sb, &sb.project(), &["verify", "--json"])
        .output()
        .expect("run");
    let v: serde_json::Value = serde_json::from_slice(&v.stdout).expect("json");
    assert_eq!(v["backup_damaged"], serde_json::json!([]), "{v:#}");
}

/// Review finding: a file swept into the backup with its directory, then a
/// crash before the directory was checked: the re-run checks it again and
/// puts the file back (before, it stayed in the backup unrecorded, and
/// `backups prune` deleted it).
#[test]
fn after_a_crash_in_retire_a_file_swept_in_with_its_directory_goes_back() {
    let sb = Sandbox::new();
    small_project(&sb.project());
    crash_at(&sb, &sb.project(), &["migrate"], "mid-retire");
    let a = backup_path(&sb, "cache/a.json").expect("moved into the backup");
    fs_err::write(a.with_file_name("late.json"), b"{\"late\": 1}").expect("write");
    run_ok(cmd(&sb, &sb.project(), &["migrate"]));
    // Recovery puts it back into the project; the same run then imports it.
    assert_eq!(
        fs_err::read(sb.store().join("legacy/project/cache/late.json")).expect("imported"),
        b"{\"late\": 1}"
    );
    run_ok(cmd(&sb, &sb.project(), &["verify"]));
}

/// Review finding: a rollback interrupted after restoring files, then an
/// old Prodigy rewrites a restored file: finishing the rollback used to
/// fail for ever ("File exists"); the newer version is kept.
#[test]
fn an_interrupted_rollback_finishes_when_a_restored_file_was_rewritten() {
    let sb = Sandbox::new();
    small_project(&sb.project());
    run_ok(cmd(&sb, &sb.project(), &["migrate"]));
    crash_at(&sb, &sb.project(), &["rollback"], "after-rollback-restore");
    let a = sb.project().join(".prodigy/cache/a.json");
    fs_err::write(&a, b"{\"a\": \"old prodigy\"}\n").expect("write");
    run_ok(cmd(&sb, &sb.project(), &["rollback"]));
    assert_eq!(
        fs_err::read(&a).expect("kept"),
        b"{\"a\": \"old prodigy\"}\n"
    );
    run_ok(cmd(&sb, &sb.project(), &["status"]));
}

/// The file of `rel` in the (only) backup of the sandbox's project.
fn backup_path(sb: &Sandbox, rel: &str) -> Option<PathBuf> {
    let dir = sb.store().join("migrations/project");
    std::fs::read_dir(&dir)
        .ok()?
        .flatten()
        .map(|tx| tx.path().join("backup").join(rel))
        .find(|p| p.exists())
}

/// The marker knows its store by device and inode, not by path: a
/// migration interrupted through `--home` at a link to the store is
/// finished through the store's real path (a path comparison would take it
/// for another store and refuse for ever).
#[test]
fn the_same_store_by_another_path_finishes_its_own_migration() {
    let sb = Sandbox::new();
    small_project(&sb.project());
    fs_err::create_dir_all(sb.store()).expect("mkdir");
    let link = sb.path().join("store-link");
    std::os::unix::fs::symlink(sb.store(), &link).expect("link");
    let out = with_home(&sb, &link, &["migrate"])
        .env("PRODIGY_STORAGE_CRASH_AT", "after-publish")
        .output()
        .expect("run");
    assert!(!out.status.success(), "crashed");
    assert!(
        sb.project()
            .join(".prodigy/.prodigy-storage-migration.json")
            .exists()
    );
    let report = json_of(
        &cmd(&sb, &sb.project(), &["migrate", "--json"])
            .output()
            .expect("run"),
    );
    assert_eq!(report["outcome"], "migrated", "{report:#}");
    assert!(report["recovered"].is_string(), "{report:#}");
    assert!(
        !sb.project()
            .join(".prodigy/.prodigy-storage-migration.json")
            .exists()
    );
}

/// Issue 21, item 6: a directory of the user's deeper than `PATH_MAX` inside
/// `.prodigy/` is skipped with a note, as documented; `status` and
/// `migrate` used to exit 1 with "File name too long" and a 4 KB path.
#[test]
fn a_user_directory_deeper_than_path_max_is_left_alone() {
    use rustix::fs::{Mode, OFlags, mkdirat, openat};
    let sb = crate::support::fixture_sandbox();
    // 20 levels of 250-byte names: about 5 KB, past PATH_MAX (4,096).
    let name = "d".repeat(250);
    let mut dir = openat(
        rustix::fs::CWD,
        sb.project().join(".prodigy"),
        OFlags::DIRECTORY | OFlags::RDONLY,
        Mode::empty(),
    )
    .expect("open .prodigy");
    for _ in 0..20 {
        mkdirat(&dir, name.as_str(), Mode::from_raw_mode(0o755)).expect("mkdirat");
        dir = openat(
            &dir,
            name.as_str(),
            OFlags::DIRECTORY | OFlags::RDONLY,
            Mode::empty(),
        )
        .expect("openat");
    }
    drop(dir);
    crate::support::run(&sb, &["status"], true);
    let r = crate::support::run_json(&sb, &["migrate"]);
    assert_eq!(r["outcome"], "migrated", "{r:#}");
    assert!(
        r.to_string().contains("File name too long"),
        "the note says what was left alone: {r:#}"
    );
    assert!(
        sb.project().join(".prodigy").join(&name).is_dir(),
        "the user's directory stays"
    );
}

/// Issue 19: an older Prodigy appends to the legacy global log after the
/// migration verified it (so the log stays in the project, grown), then
/// appends more. The next `migrate` imports only what follows the version
/// the first one imported (each line is in the store once) and its
/// rollback gives the whole grown log back; a log rewritten instead of
/// appended to is kept verbatim aside, not imported a second time.
#[test]
fn a_log_that_grew_after_its_import_contributes_only_what_was_appended() {
    for rewritten in [false, true] {
        let sb = Sandbox::new();
        let project = sb.project();
        small_project(&project);
        let log = project.join(".prodigy/mapreduce/events/global/events.jsonl");
        let append = |line: &str| {
            use std::io::Write;
            let mut f = fs_err::OpenOptions::new()
                .append(true)
                .open(&log)
                .expect("open");
            f.write_all(line.as_bytes()).expect("append");
        };
        let pause = sb.path().join("paused");
        let child = cmd(&sb, &project, &["migrate", "--json"])
            .env("PRODIGY_STORAGE_PAUSE_AT", "after-publish")
            .env("PRODIGY_STORAGE_PAUSE_FILE", &pause)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        wait_for("the pause after publishing", || pause.exists());
        append(&format!(
            "{{\"id\":\"late\",\"event\":{{\"job_id\":\"{JOB}\"}}}}\n"
        ));
        fs_err::remove_file(&pause).expect("go on");
        let first = json_of(&finish(child));
        assert_eq!(first["outcome"], "migrated", "{first:#}");
        assert!(log.is_file(), "grown after verification: it stays");
        if rewritten {
            let text = fs_err::read_to_string(&log).expect("read");
            fs_err::write(&log, text.replacen("\"id\":\"0\"", "\"id\":\"zero\"", 1))
                .expect("rewrite");
        } else {
            append(&format!(
                "{{\"id\":\"later\",\"event\":{{\"job_id\":\"{JOB}\"}}}}\n"
            ));
        }
        let grown = fs_err::read(&log).expect("read");
        let again = json_of(
            &cmd(&sb, &project, &["migrate", "--json"])
                .output()
                .expect("run"),
        );
        assert_eq!(again["outcome"], "migrated", "{again:#}");
        let copies = |id: &str| line_copies(&sb.store(), id);
        for n in [0, 7, 19] {
            assert_eq!(copies(&n.to_string()), 1, "line {n}: {again:#}");
        }
        let warnings = again["warnings"].to_string();
        if rewritten {
            assert!(warnings.contains("changed (not only grew)"), "{again:#}");
            assert_eq!(copies("late"), 0, "not imported from a rewritten log");
            assert_eq!(
                holders(&sb.store().join("legacy"), b"\"id\":\"zero\"").len(),
                1,
                "the rewritten log is kept verbatim"
            );
        } else {
            assert!(
                warnings.contains("only what follows is imported"),
                "{again:#}"
            );
            assert_eq!(copies("late"), 1);
            assert_eq!(copies("later"), 1);
        }
        assert!(!log.exists(), "in the backup now");
        let back = cmd(&sb, &project, &["rollback", "."])
            .output()
            .expect("run");
        assert!(
            back.status.success(),
            "{}",
            String::from_utf8_lossy(&back.stderr)
        );
        assert_eq!(
            fs_err::read(&log).expect("restored"),
            grown,
            "byte for byte"
        );
        for n in [0, 7, 19] {
            assert_eq!(copies(&n.to_string()), 1, "after the rollback, line {n}");
        }
    }
}

/// Mutation found (issue 21): a file changed after verification stays in
/// the project and is not in the backup; the store's copy of the verified
/// version may be its only copy, so a rollback keeps it (it removed it).
#[test]
fn a_rollback_keeps_the_stores_copy_of_a_file_that_changed_after_verification() {
    let sb = Sandbox::new();
    let project = sb.project();
    small_project(&project);
    let a = project.join(".prodigy/cache/a.json");
    let pause = sb.path().join("paused");
    let child = cmd(&sb, &project, &["migrate", "--json"])
        .env("PRODIGY_STORAGE_PAUSE_AT", "after-publish")
        .env("PRODIGY_STORAGE_PAUSE_FILE", &pause)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_for("the pause after publishing", || pause.exists());
    fs_err::write(&a, b"{\"a\": \"newer\"}\n").expect("an old Prodigy writes");
    fs_err::remove_file(&pause).expect("go on");
    let report = json_of(&finish(child));
    assert_eq!(report["outcome"], "migrated", "{report:#}");
    assert_eq!(fs_err::read(&a).expect("stays"), b"{\"a\": \"newer\"}\n");
    let verified = holders(&sb.store(), b"{\"a\": 1}");
    assert_eq!(verified.len(), 1, "the store holds the verified version");
    let back = cmd(&sb, &project, &["rollback", "."])
        .output()
        .expect("run");
    assert!(
        back.status.success(),
        "{}",
        String::from_utf8_lossy(&back.stderr)
    );
    assert_eq!(
        holders(&sb.store(), b"{\"a\": 1}"),
        verified,
        "the verified version is found nowhere else: kept"
    );
    assert_eq!(fs_err::read(&a).expect("project"), b"{\"a\": \"newer\"}\n");
}

/// Mutation found (issue 21): recovery sweeps a crash's transaction
/// directories that no history line names, but never one holding a
/// backup (it may be a legacy file's only copy).
#[test]
fn recovery_never_sweeps_a_transaction_directory_that_holds_a_backup() {
    let sb = Sandbox::new();
    let project = sb.project();
    small_project(&project);
    let ok = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ok(cmd(&sb, &project, &["migrate", "."]).output().expect("run"));
    let records = sb.store().join("migrations/project");
    let kept = records.join("20991231T000000Z-abcdef/backup/cache/only-copy.json");
    fs_err::create_dir_all(kept.parent().expect("parent")).expect("mkdir");
    fs_err::write(&kept, b"{}").expect("write");
    let debris = records.join("20991231T000001Z-123456/staging");
    fs_err::create_dir_all(&debris).expect("mkdir");
    ok(cmd(&sb, &project, &["migrate", "."]).output().expect("run"));
    assert!(kept.is_file(), "a backup is never swept");
    assert!(
        !debris.parent().expect("tx").exists(),
        "an unrecorded transaction without a backup is"
    );
}

/// Mutation found (issue 21): the commit makes the report, the removals
/// and `layout.json` durable (one `syncfs` of the store) before it
/// removes the journal: a crash before that barrier must still
/// find the journal and redo them.
#[test]
fn the_commit_syncs_before_it_removes_the_journal() {
    if Command::new("strace").arg("-V").output().is_err() {
        crate::support::skip("`strace` is not available here; the test did not run");
        return;
    }
    let sb = Sandbox::new();
    let project = sb.project();
    small_project(&project);
    let log = sb.path().join("strace");
    let st = Command::new("strace")
        .args(["-f", "-qq", "-y", "-o"])
        .arg(&log)
        .args([
            "-e",
            "trace=syncfs,fsync,fdatasync,unlink,unlinkat,rename,renameat,renameat2",
        ])
        .arg(bin())
        .arg("--home")
        .arg(sb.store())
        .args(["migrate", "."])
        .current_dir(&project)
        .env("HOME", sb.home())
        .env_remove("PRODIGY_HOME")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("strace");
    assert!(st.success());
    let text = fs_err::read_to_string(&log).expect("trace");
    let lines: Vec<&str> = text.lines().collect();
    let removal = lines
        .iter()
        .rposition(|l| l.contains("unlink") && l.contains("journal.json\""))
        .unwrap_or_else(|| panic!("no removal of the journal:\n{text}"));
    let pid = lines[removal].split_whitespace().next().unwrap_or_default();
    let before = lines[..removal]
        .iter()
        .rev()
        .find(|l| l.split_whitespace().next() == Some(pid))
        .unwrap_or_else(|| panic!("nothing before the journal's removal:\n{text}"));
    // (On Linux the barrier is one `syncfs` of the store; the portable
    // path's `fsync`s are not what this checks.)
    assert!(
        before.contains("syncfs("),
        "the journal is removed right after the store's `syncfs`, not after `{before}`"
    );
}

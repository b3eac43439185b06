//! The environments users really have, not only crashes: a project reached
//! through a bind mount, a mount inside the store, an old Prodigy writing
//! while a migration runs (every `syncfs` slowed down with `strace`), a
//! retried sync, two stores. Each test is the regression test of one item
//! of the issue "Every exit is safe" and fails without its fix.
//!
//! Tests that need root (`mount`) or `strace` print `SKIP:` and return
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
        eprintln!("SKIP: `strace` is not available here; the test did not run");
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
    let mnt = sb.path().join("tmpfs");
    let Some(_tmpfs) = Mount::tmpfs(&mnt, "64m") else {
        return;
    };
    let project = mnt.join("api");
    small_project(&project);
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
    let mnt = sb.path().join("tmpfs");
    let Some(_tmpfs) = Mount::tmpfs(&mnt, "64m") else {
        return;
    };
    let project = mnt.join("api");
    small_project(&project);
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

//! Real processes appending, saving, locking and being killed with SIGKILL.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use storage_core::{Error, JobId, LockKey, LockWait, SessionId, Storage, StorageExt};
use storage_fs::FsStorage;
use storage_tests::Sandbox;

use crate::worker_bin;

fn worker(args: &[&str]) -> Command {
    let mut c = Command::new(worker_bin());
    c.args(args).stdin(Stdio::null()).stderr(Stdio::inherit());
    c
}

/// Starts a worker and waits for its first stdout line (`ready`).
fn start(args: &[&str], ready: &str) -> Child {
    let mut child = worker(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn worker");
    let out = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(out)
        .read_line(&mut line)
        .expect("read worker");
    assert_eq!(line.trim(), ready, "worker said {line:?}");
    child
}

fn kill(mut child: Child) {
    // SIGKILL: no destructors, no cleanup; exactly what a crash does.
    child.kill().expect("kill");
    child.wait().expect("reap");
}

/// A store with the sandbox's project registered, shared by the processes
/// of a test (registered first, so that workers agree on the key without
/// racing on it); the paths as strings for the workers' command lines.
/// Bind `sb` to a name (`sb: _sb`) to keep the sandbox for the whole test.
struct Shared {
    sb: Sandbox,
    store: FsStorage,
    repo: storage_core::RepoKey,
    root: String,
    project: String,
}

fn shared() -> Shared {
    let sb = Sandbox::new();
    let store = FsStorage::open(sb.store()).expect("open");
    let repo = store.repo_key(&sb.project()).expect("key");
    let root = sb.store().to_str().expect("utf8").to_owned();
    let project = sb.project().to_str().expect("utf8").to_owned();
    Shared {
        sb,
        store,
        repo,
        root,
        project,
    }
}

#[test]
fn eight_processes_appending_a_thousand_events_each_lose_and_interleave_nothing() {
    let Shared {
        sb: _sb,
        store,
        repo,
        root: root_s,
        project: project_s,
    } = shared();
    let (root_s, project_s) = (root_s.as_str(), project_s.as_str());
    let children: Vec<Child> = (0..8)
        .map(|w| {
            worker(&[
                "append",
                root_s,
                project_s,
                "mapreduce-1757146800123",
                "1000",
                &w.to_string(),
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn")
        })
        .collect();
    for mut c in children {
        assert!(c.wait().expect("wait").success(), "a writer failed");
    }
    let job = JobId::new("mapreduce-1757146800123").expect("valid");
    let mut next: BTreeMap<u64, u64> = BTreeMap::new();
    let summary = store
        .read_events(&repo, &job, &mut |e| {
            let ev = &e.json()["event"];
            let w = ev["writer"].as_u64().expect("writer");
            let seq = ev["seq"].as_u64().expect("seq");
            let expected = next.entry(w).or_insert(0);
            assert_eq!(seq, *expected, "writer {w} out of order");
            *expected += 1;
        })
        .expect("every line parses");
    assert_eq!(summary.records, 8000);
    eprintln!("faults: 8 processes x 1000 appends: 8000 records, none lost or interleaved");
    assert!(summary.torn_tails.is_empty());
    assert_eq!(next.len(), 8);
    assert!(next.values().all(|n| *n == 1000), "{next:?}");
    // Byte-level check too: every line is a whole JSON object.
    let raw = fs_err::read_to_string(
        store
            .layout()
            .events_job_dir(&repo, &job)
            .join("events.jsonl"),
    )
    .expect("log");
    assert_eq!(raw.lines().count(), 8000);
    assert!(raw.ends_with('\n'));
}

#[test]
fn concurrent_saves_of_one_session_are_never_read_torn() {
    let Shared {
        sb: _sb,
        store,
        repo,
        root: root_s,
        project: project_s,
    } = shared();
    let (root_s, project_s) = (root_s.as_str(), project_s.as_str());
    let writers: Vec<Child> = [(1, 10), (2, 100_000), (3, 1_000_000)]
        .iter()
        .map(|(w, pad)| {
            start(
                &[
                    "save-loop",
                    root_s,
                    project_s,
                    "session-1",
                    &w.to_string(),
                    &pad.to_string(),
                ],
                "saving",
            )
        })
        .collect();
    let session = SessionId::new("session-1").expect("valid");
    let mut reads = 0;
    let mut by_writer = BTreeMap::<u64, u64>::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let rec = store
            .load_session(&repo, &session)
            .expect("a read never sees a torn document")
            .expect("present");
        let pad = rec.json()["pad"].as_str().expect("pad").len();
        assert_eq!(pad as u64, rec.json()["pad_len"].as_u64().expect("pad_len"));
        *by_writer
            .entry(rec.json()["writer"].as_u64().expect("w"))
            .or_default() += 1;
        reads += 1;
    }
    for w in writers {
        kill(w);
    }
    assert!(reads > 10, "only {reads} reads");
    assert!(by_writer.len() >= 2, "saw only {by_writer:?}");
    // The killed writers' temp files are debris; a sweep removes them all.
    let report = store.sweep().expect("sweep");
    assert_eq!(report.kept_live, 0);
    let left: Vec<_> = fs_err::read_dir(store.layout().sessions_dir(&repo))
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(left, ["session-1.json"]);
}

#[test]
fn a_holder_killed_with_sigkill_does_not_block_the_next_holder() {
    let sb = Sandbox::new();
    let root = sb.store();
    let child = start(
        &["hold-lock", root.to_str().expect("utf8"), "mapreduce-1"],
        "locked",
    );
    let pid = child.id();
    let store = FsStorage::open(&root).expect("open");
    let key = LockKey::new("mapreduce-1").expect("valid");
    let me = storage_fs::lock::this_process("mapreduce-1");
    let err = store
        .lock(&key, &me, LockWait::NoWait)
        .expect_err("held by the child");
    match &err {
        Error::Locked {
            holder: Some(h), ..
        } => assert_eq!(h.process_id, pid),
        other => panic!("expected Locked naming the child, got {other:?}"),
    }
    assert!(err.to_string().contains(&format!("process {pid}")), "{err}");
    kill(child);
    let guard = store
        .lock(&key, &me, LockWait::Timeout(Duration::from_secs(5)))
        .expect("the kernel released the dead holder's lock");
    assert_eq!(guard.key(), &key);
}

#[test]
fn a_writer_killed_mid_replace_leaves_the_old_or_the_new_document() {
    let Shared {
        sb: _sb,
        store,
        repo,
        root: root_s,
        project: project_s,
    } = shared();
    let (root_s, project_s) = (root_s.as_str(), project_s.as_str());
    let session = SessionId::new("session-1").expect("valid");
    let rounds: u64 = if std::env::var_os("PRODIGY_FAULTS_EXHAUSTIVE").is_some() {
        100
    } else {
        12
    };
    for round in 0..rounds {
        // Alternate large and small documents so a torn write would show.
        let pad = if round % 2 == 0 { 4_000_000 } else { 3 };
        let child = start(
            &[
                "save-loop",
                root_s,
                project_s,
                "session-1",
                &round.to_string(),
                &pad.to_string(),
            ],
            "saving",
        );
        std::thread::sleep(Duration::from_millis(5 + round * 7));
        kill(child);
        let rec = store
            .load_session(&repo, &session)
            .expect("parses after SIGKILL")
            .expect("present");
        let pad_len = rec.json()["pad"].as_str().expect("pad").len() as u64;
        assert_eq!(pad_len, rec.json()["pad_len"].as_u64().expect("pad_len"));
        assert_eq!(
            rec.json()["writer"].as_u64(),
            Some(round),
            "the latest writer's whole document"
        );
    }
    eprintln!(
        "faults: {rounds} writers killed mid-replace with SIGKILL; every read found a whole document"
    );
    store.sweep().expect("sweep");
    assert_eq!(
        storage_tests::tree(&store.layout().sessions_dir(&repo)),
        "session-1.json f600 ".to_owned()
            + &fs_err::metadata(store.layout().sessions_dir(&repo).join("session-1.json"))
                .expect("stat")
                .len()
                .to_string()
            + "B\n"
    );
}

/// A batch that hits a full disk half-way is cut back off before the error
/// is returned: the log still ends on a whole line and every earlier batch
/// is intact. Produced for real on a tiny tmpfs.
#[test]
fn an_append_that_fills_the_disk_leaves_only_whole_batches() {
    let sb = Sandbox::new();
    fs_err::create_dir_all(sb.store()).expect("mkdir");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(sb.store())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        storage_tests::skip(
            "cannot mount a tmpfs here (needs root); the disk-full append test did not run",
        );
        return;
    }
    let result = std::panic::catch_unwind(|| {
        let store = FsStorage::open(sb.store()).expect("open");
        let repo = storage_core::RepoKey::new("proj").expect("valid");
        let job = JobId::new("mapreduce-1").expect("valid");
        let batch: Vec<_> = (0..50)
            .map(|n| {
                storage_core::EventRecord::from_json(serde_json::json!({
                    "id": n, "event": {"job_id": "mapreduce-1", "pad": "p".repeat(300)}
                }))
                .expect("object")
            })
            .collect();
        let mut ok_batches = 0u64;
        let err = loop {
            match store.append_events(&repo, &job, &batch) {
                Ok(()) => ok_batches += 1,
                Err(e) => break e,
            }
            assert!(ok_batches < 1000, "the disk never filled");
        };
        match &err {
            Error::Io { source, .. } => {
                assert_eq!(source.kind(), std::io::ErrorKind::StorageFull, "{err}");
            }
            other => panic!("expected an I/O error, got {other:?}"),
        }
        let summary = store
            .read_events(&repo, &job, &mut |_| {})
            .expect("the log parses");
        assert!(
            summary.torn_tails.is_empty(),
            "a partial batch was left: {:?}",
            summary.torn_tails
        );
        assert_eq!(summary.records, ok_batches * 50);
        assert!(ok_batches > 0);
    });
    let _ = Command::new("umount").arg("-l").arg(sb.store()).status();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// Runs the worker with `STORE_WORKER_PEAK=1`; returns its other stdout
/// lines and its peak resident set in KiB.
fn run_measured(args: &[&str]) -> (Vec<String>, u64) {
    let out = worker(args)
        .env("STORE_WORKER_PEAK", "1")
        .output()
        .expect("run worker");
    assert!(out.status.success(), "worker {args:?} failed");
    let mut lines: Vec<String> = String::from_utf8(out.stdout)
        .expect("utf8")
        .lines()
        .map(str::to_owned)
        .collect();
    let peak = lines
        .pop()
        .and_then(|l| l.strip_prefix("peak-rss-kib ")?.parse().ok())
        .expect("the worker reports its peak");
    (lines, peak)
}

/// A power loss often leaves a long run of NUL bytes, without a newline, at
/// the end of a log. Reading the log and repairing it before an append must
/// not load that run: both stay within a bounded buffer. The gigabyte is a
/// sparse file (`set_len`), so it costs no disk space, and the side file it
/// is moved to stays sparse too.
#[test]
fn a_gigabyte_of_nuls_at_the_end_of_a_log_is_read_and_moved_aside_in_bounded_memory() {
    const GIB: u64 = 1 << 30;
    const LIMIT_KIB: u64 = 64 * 1024;
    let Shared {
        sb: _sb,
        store,
        repo,
        root,
        project,
    } = shared();
    let job = JobId::new("mapreduce-1").expect("valid");
    let one = storage_core::EventRecord::from_json(serde_json::json!({
        "id": "first", "event": {"job_id": "mapreduce-1"}
    }))
    .expect("object");
    store.append_events(&repo, &job, &[one]).expect("append");
    let log = store.layout().active_event_log(&repo, &job);
    let good = fs_err::metadata(&log).expect("stat").len();
    fs_err::OpenOptions::new()
        .write(true)
        .open(&log)
        .and_then(|f| f.set_len(good + GIB))
        .expect("a sparse gigabyte of NULs");

    let started = Instant::now();
    let (lines, peak) = run_measured(&["read", &root, &project, "mapreduce-1"]);
    eprintln!(
        "faults: read a log ending in 1 GiB of NULs: peak RSS {peak} KiB in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(lines, [format!("records 1 torn {GIB}")]);
    assert!(peak < LIMIT_KIB, "reading held {peak} KiB");

    let started = Instant::now();
    let (_, peak) = run_measured(&["append", &root, &project, "mapreduce-1", "1", "7"]);
    eprintln!(
        "faults: append after 1 GiB of NULs: peak RSS {peak} KiB in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert!(peak < LIMIT_KIB, "repairing held {peak} KiB");
    let summary = store
        .read_events(&repo, &job, &mut |_| {})
        .expect("the log parses");
    assert_eq!((summary.records, summary.torn_tails.len()), (2, 0));
    let side = store
        .layout()
        .events_job_dir(&repo, &job)
        .join(format!("events.jsonl.torn-{good}"));
    let meta = fs_err::metadata(&side).expect("the NULs are kept aside");
    assert_eq!(meta.len(), GIB);
    assert!(
        std::os::unix::fs::MetadataExt::blocks(&meta) * 512 < 1 << 20,
        "the side file is sparse ({} blocks)",
        std::os::unix::fs::MetadataExt::blocks(&meta)
    );
}

/// Whether `strace` can trace a child here; prints why not.
fn have_strace() -> bool {
    let ok = Command::new("strace")
        .args(["-qq", "-o", "/dev/null", "--", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!(
            "SKIP: `strace` cannot trace a process here; the fault-injection test did not run"
        );
    }
    ok
}

/// The worker under `strace -f` with the given `-e inject=…` rules;
/// returns whether it succeeded and its stderr.
fn run_injected(inject: &[&str], args: &[&str]) -> (bool, String) {
    let mut c = Command::new("strace");
    c.args(["-f", "-qq", "-o", "/dev/null"]);
    for rule in inject {
        c.arg("-e").arg(format!("inject={rule}"));
    }
    let out = c
        .arg("--")
        .arg(worker_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("strace");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An append whose `fdatasync` fails (EIO, injected for real into the
/// worker process) takes its batch back out before reporting: the log holds
/// no trace of it, and retrying the batch gives exactly one copy. If the
/// cut-back fails too, the error says the log may hold the batch.
#[test]
fn an_append_whose_fdatasync_fails_leaves_no_trace_and_a_retry_one_copy() {
    if !have_strace() {
        return;
    }
    let Shared {
        sb: _sb,
        store,
        repo,
        root,
        project,
    } = shared();
    let job = JobId::new("mapreduce-1").expect("valid");
    let first = storage_core::EventRecord::from_json(serde_json::json!({
        "id": "first", "event": {"job_id": "mapreduce-1"}
    }))
    .expect("object");
    store.append_events(&repo, &job, &[first]).expect("append");
    let log = store.layout().active_event_log(&repo, &job);
    let before = fs_err::read_to_string(&log).expect("log");
    let args = ["append", &root, &project, "mapreduce-1", "1", "5"];

    let (ok, stderr) = run_injected(&["fdatasync:error=EIO:when=1"], &args);
    assert!(!ok, "the append must report the failed fdatasync");
    assert!(stderr.contains("cannot fsync"), "{stderr}");
    assert_eq!(
        fs_err::read_to_string(&log).expect("log"),
        before,
        "the failed batch was left in the log"
    );
    eprintln!(
        "faults: fdatasync EIO on append: reported, log back to {} bytes",
        before.len()
    );

    let ids = || {
        let mut ids = Vec::new();
        store
            .read_events(&repo, &job, &mut |e| {
                ids.push(e.json()["id"].as_str().expect("id").to_owned());
            })
            .expect("the log parses");
        ids
    };
    let (ok, stderr) = run_injected(&[], &args);
    assert!(ok, "the retry succeeds: {stderr}");
    assert_eq!(ids(), ["first", "w5-0"], "exactly one copy after the retry");

    // The cut-back (ftruncate) fails as well: the error must say so.
    let (ok, stderr) = run_injected(
        &["fdatasync:error=EIO:when=1", "ftruncate:error=EIO"],
        &args,
    );
    assert!(!ok);
    assert!(
        stderr.contains("cannot cut a failed append back off")
            && stderr.contains("read the log, or retry with append_events_at")
            && stderr.contains("events.jsonl"),
        "{stderr}"
    );
    eprintln!(
        "faults: fdatasync and ftruncate EIO on append: {}",
        stderr.trim()
    );
}

/// Abandoned is decided by a lock, not a pid: a temp file that a live
/// writer in another process holds is kept even under a name whose pid is
/// not alive here (pids are per namespace: a writer in another container),
/// and an unlocked one is swept even under this process's own pid.
#[test]
fn a_sweep_keeps_a_locked_temp_file_whatever_its_pid_and_removes_an_unlocked_one() {
    let Shared {
        sb: _sb,
        store,
        repo,
        root,
        project: _,
    } = shared();
    let sessions = store.layout().sessions_dir(&repo);
    fs_err::create_dir_all(&sessions).expect("mkdir");
    let held = sessions.join(".tmp-4194305-0-session-9.json");
    let writer = start(
        &[
            "hold-temp",
            &root,
            sessions.to_str().expect("utf8"),
            ".tmp-4194305-0-session-9.json",
        ],
        "holding",
    );
    let unlocked = sessions.join(format!(".tmp-{}-77-session-8.json", std::process::id()));
    fs_err::write(&unlocked, "{\"session_id\": \"sess").expect("debris");
    let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let report = store.sweep().expect("sweep");
        assert_eq!(report.removed, std::slice::from_ref(&unlocked));
        assert_eq!(report.kept_live, 1);
        assert!(held.exists(), "a live writer's temp file was swept");
    }));
    // Killed whatever happened, so a failure cannot leave it running.
    kill(writer);
    if let Err(panic) = checked {
        std::panic::resume_unwind(panic);
    }
    let report = store.sweep().expect("sweep");
    assert_eq!(
        report.removed,
        [held],
        "the kernel dropped the dead writer's lock"
    );
    assert_eq!(report.kept_live, 0);
}

//! A legacy project as Prodigy really left it (see the legacy-layout page):
//! storage files of every kind, the user's own files beside them (some
//! tracked by git), links, a FIFO, torn and non-UTF-8 data, misleading
//! `.gz` names. Every file's mtime is set to 2025-09-06 so that tests can
//! tell preserved times from new ones.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::FileTimes;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};

/// 2025-09-06T08:31:02Z, the mtime of every fixture file.
pub const OLD_MTIME: u64 = 1_757_147_462;

/// A session id used by the fixture.
pub const SESSION_A: &str = "session-0b9f3c9e-6f2d-4d57-a3c4-5a8e2b1d7f10";
/// A second session, whose copy is torn.
pub const SESSION_B: &str = "session-7d2c1a40-91be-4c1f-8e0a-3f5b6c7d8e9f";
/// The MapReduce job of the fixture.
pub const JOB: &str = "mapreduce-1757146800123";
/// The same job's events under Prodigy's other id spelling.
pub const JOB_TS: &str = "mapreduce-20250906_082000";

fn write(root: &Path, rel: impl AsRef<Path>, bytes: &[u8]) {
    let path = root.join(rel);
    fs_err::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    fs_err::write(&path, bytes).expect("write fixture file");
    let f = fs_err::File::options()
        .write(true)
        .open(&path)
        .expect("open");
    f.file()
        .set_times(FileTimes::new().set_modified(UNIX_EPOCH + Duration::from_secs(OLD_MTIME)))
        .expect("set mtime");
}

fn session(id: &str, status: &str) -> String {
    format!(
        r#"{{
  "session_id": "{id}",
  "status": "{status}",
  "started_at": "2025-09-06T08:31:02.907114Z",
  "ended_at": null,
  "iterations_completed": 2,
  "files_changed": 5,
  "errors": [],
  "working_directory": "/home/dev/work/api",
  "worktree_name": null,
  "workflow_state": {{"current_step": 1, "completed_steps": [0]}},
  "iteration_timings": [[1, {{"secs": 31, "nanos": 500000000}}]],
  "command_timings": [],
  "last_checkpoint": null,
  "workflow_hash": "abc123",
  "workflow_type": "MapReduce"
}}"#
    )
}

fn event(n: u32, job: &str, kind: &str) -> String {
    format!(
        r#"{{"id":"evt-{n}","timestamp":"2025-09-06T08:3{}:02.907114Z","correlation_id":"c-1","event":{{"event_type":"{kind}","job_id":"{job}","agent_id":"agent_{n}","duration":[12,5000]}},"metadata":{{"host":"build-3","pid":4711}}}}"#,
        n % 10
    ) + "\n"
}

/// Builds the legacy project in `project` (which must exist).
///
/// # Panics
/// If a file cannot be written.
pub fn legacy_project(project: &Path) {
    let p = project.join(".prodigy");
    let abs = p.canonicalize().unwrap_or_else(|_| p.clone());
    // --- the user's files -------------------------------------------------
    write(project, "src/main.rs", b"fn main() {}\n");
    write(&p, "config.yml", b"commands:\n  - claude: /lint\n");
    write(&p, "workflow.yml", b"name: fix-everything\n");
    write(&p, "PROJECT.md", b"# API\n");
    write(&p, "ARCHITECTURE.md", b"# Architecture\n");
    write(&p, "context/analysis.json", br#"{"hotspots": []}"#);
    write(&p, "metrics/current.json", br#"{"coverage": 0.81}"#);
    write(&p, "book-analysis/chapters.json", b"[]");
    write(&p, "validation-result.json", br#"{"ok": true}"#);
    write(&p, "plan-1.md", b"- do it\n");
    write(&p, "map-results.json", b"[]");
    write(&p, "helper.py", b"print('hi')\n");
    write(&p, "history/NOTES.md", b"my notes about history\n");
    write(&p, "cache/README", b"user readme in cache\n");
    fs_err::create_dir_all(p.join("empty-dir")).expect("mkdir");

    // --- storage: sessions -------------------------------------------------
    let a = session(SESSION_A, "InProgress");
    write(&p, "session_state.json", a.as_bytes());
    write(&p, format!("{SESSION_A}.json"), a.as_bytes()); // identical copy
    let b = session(SESSION_B, "Interrupted");
    write(
        &p,
        format!("{SESSION_B}.json"),
        &b.as_bytes()[..b.len() / 2],
    ); // torn
    write(
        &p,
        "session_state.tmp.1757146800123456789",
        &a.as_bytes()[..40],
    );
    write(&p, "state.json", br#"{"last_run": "2025-09-01"}"#);
    write(&p, "state.json.corrupted.1757146800", b"{\"last_ru");
    write(
        &p,
        "history/20250906_082000_0a1b2c3d.json",
        br#"{"iterations": 3}"#,
    );
    write(&p, "cache/analysis.json", br#"{"k": 1}"#);
    write(&p, "cache/analysis.tmp", b"");
    write(&p, "cache/wëird näme.json", b"{}");
    let raw_name = OsStr::from_bytes(b"cache/bad-\xff.json");
    write(&p, PathBuf::from(raw_name), b"{\"non-utf8 name\": true}");
    write(&p, format!("progress/{JOB}.json"), br#"{"done": 3}"#);
    write(&p, format!("progress/{JOB}_history.json"), b"[]");

    // --- storage: workflow checkpoints ---------------------------------------
    write(
        &p,
        "checkpoints/workflow-1757850041656.checkpoint.json",
        br#"{"workflow_id": "workflow-1757850041656", "execution_state": {"current_step_index": 2, "total_steps": 5, "status": "Running"}, "variable_state": {"out": "/home/dev/work/api/out.txt"}, "version": 1}"#,
    );
    write(
        &p,
        "checkpoints/workflow-1757850041657.checkpoint.tmp",
        b"{\"workflow_id\"",
    );

    // --- storage: MapReduce state ---------------------------------------------
    let job_dir = format!("mapreduce/jobs/{JOB}");
    for v in 1..=3 {
        let cp = format!(
            r#"{{"job_id": "{JOB}", "config": {{"input": "items.json", "max_parallel": 4}}, "work_items": [{{"id": 1}}], "agent_results": {{}}, "checkpoint_version": {v}, "is_complete": false}}"#
        );
        write(&p, format!("{job_dir}/checkpoint-v{v}.json"), cp.as_bytes());
    }
    write(&p, format!("{job_dir}/checkpoint-v4.tmp"), b"");
    write(
        &p,
        format!("{job_dir}/checkpoint-v0.json"),
        b"\xff\xfe not utf-8 \x00",
    );
    let meta = format!(
        "{{\n  \"path\": \"{}/{job_dir}/checkpoint-v3.json\",\n  \"version\": 3,\n  \"created_at\": \"2025-09-06T08:31:02.907114Z\",\n  \"size_bytes\": 180\n}}",
        abs.display()
    );
    write(&p, format!("{job_dir}/metadata.json"), meta.as_bytes());

    // --- storage: the global event log ------------------------------------------
    let mut log = String::new();
    for n in 0..12 {
        let job = if n % 3 == 0 { JOB_TS } else { JOB };
        log.push_str(&event(
            n,
            job,
            if n == 5 {
                "d_l_q_item_added"
            } else {
                "agent_completed"
            },
        ));
    }
    log.push_str("{\"id\":\"no-job\",\"event\":{\"event_type\":\"system\"}}\n");
    log.push_str(&event(99, JOB, "agent_failed")[..60]); // torn last line
    write(&p, "mapreduce/events/global/events.jsonl", log.as_bytes());
    let rotated: String = (100..104).map(|n| event(n, JOB, "job_started")).collect();
    write(
        &p,
        "mapreduce/events/global/events.20250906_082000.jsonl.gz",
        rotated.as_bytes(),
    );
    // A real gzip (retention archive): magic bytes, kept verbatim.
    write(
        &p,
        "events/archive/events_archive_20250906_082000.jsonl.gz",
        &[
            0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0x03, 0x00, 0, 0, 0, 0, 0,
            0, 0, 0,
        ],
    );

    // --- storage: dead letters ---------------------------------------------------
    write(
        &p,
        format!("mapreduce/dlq/{JOB}/items/item_12.json"),
        br#"{
  "item_id": "item_12",
  "item_data": {"file": "src/lib.rs"},
  "first_attempt": "2025-09-06T08:31:02.907114Z",
  "failure_count": 2,
  "failure_history": [{"attempt_number": 1, "error_type": "Timeout", "error_message": "agent timed out", "agent_id": "agent_3", "duration_ms": 30000}],
  "reprocess_eligible": true,
  "manual_review_required": false
}"#,
    );
    write(
        &p,
        format!("mapreduce/dlq/{JOB}/index.json"),
        format!(r#"{{"item_count": 1, "item_ids": ["item_12"], "job_id": "{JOB}", "updated_at": "2025-09-06T08:31:02.907114Z"}}"#).as_bytes(),
    );

    // --- links and special files ----------------------------------------------------
    std::os::unix::fs::symlink("/etc", p.join("context/etc")).expect("symlink");
    std::os::unix::fs::symlink("..", p.join("mapreduce/loop")).expect("symlink");
    std::os::unix::fs::symlink("nowhere/at/all", p.join("cache/dangling.json")).expect("symlink");
    std::os::unix::fs::symlink(
        "/etc/passwd",
        p.join("history/20250101_000000_deadbeef.json"),
    )
    .expect("symlink");
    let fifo = p.join("mapreduce/pipe");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .expect("mkfifo");
    // A read-only storage file: its mode must come back on rollback.
    fs_err::set_permissions(p.join("state.json"), std::fs::Permissions::from_mode(0o444))
        .expect("chmod");

    // Git-tracked user files in .prodigy (the files Prodigy's old migration deleted).
    git_track(project);
}

fn git_track(project: &Path) {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(project)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if git(&["init", "-q"]) {
        git(&[
            "add",
            ".prodigy/config.yml",
            ".prodigy/PROJECT.md",
            "src/main.rs",
        ]);
        git(&["commit", "-qm", "init"]);
    }
}

/// One entry of a [`snapshot`]: type, mode, size, mtime and content hash.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Node {
    /// `f`, `d`, `l` (with target), `p` (fifo), `?`.
    pub kind: String,
    /// Permission bits.
    pub mode: u32,
    /// Size in bytes (files).
    pub size: u64,
    /// mtime, seconds and nanoseconds (files only; directories change).
    pub mtime: Option<(i64, i64)>,
    /// BLAKE3-free content fingerprint: the bytes themselves for small files.
    pub content: Option<Vec<u8>>,
}

/// Every entry under `root` (links not followed), keyed by relative path.
///
/// # Panics
/// If the tree cannot be read.
#[must_use]
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in fs_err::read_dir(root.join(&rel)).expect("read dir") {
            let e = e.expect("entry");
            let r = rel.join(e.file_name());
            let m = fs_err::symlink_metadata(e.path()).expect("stat");
            let ft = m.file_type();
            let (kind, content, mtime) = if ft.is_dir() {
                stack.push(r.clone());
                ("d".to_owned(), None, None)
            } else if ft.is_symlink() {
                let t = fs_err::read_link(e.path()).expect("readlink");
                (format!("l -> {}", t.display()), None, None)
            } else if ft.is_file() {
                (
                    "f".to_owned(),
                    Some(fs_err::read(e.path()).expect("read")),
                    Some((m.mtime(), m.mtime_nsec())),
                )
            } else {
                ("p".to_owned(), None, None)
            };
            out.insert(
                r,
                Node {
                    kind,
                    mode: m.mode() & 0o7777,
                    size: if ft.is_file() { m.len() } else { 0 },
                    mtime,
                    content,
                },
            );
        }
    }
    out
}

/// What [`large_legacy_project`] wrote.
#[derive(Clone, Copy, Debug, Default)]
pub struct LargeTree {
    /// Regular files under `.prodigy/`.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Lines of the global event log.
    pub event_lines: u64,
}

/// A large legacy project for benchmarks: at `scale` 1, about 3,000 files and
/// 30 MB under `.prodigy/`, with a 60,000-line global event log across 24
/// jobs; every count grows linearly with `scale`.
///
/// # Panics
/// If a file cannot be written.
#[must_use]
pub fn large_legacy_project(project: &Path, scale: u64) -> LargeTree {
    use std::fmt::Write as _;
    use std::io::Write as _;
    let p = project.join(".prodigy");
    let mut t = LargeTree::default();
    let mut put = |rel: String, bytes: &[u8]| {
        let path = p.join(rel);
        fs_err::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs_err::write(&path, bytes).expect("write");
        t.files += 1;
        t.bytes += bytes.len() as u64;
    };
    let filler = |n: usize, seed: u64| -> String {
        let mut s = String::with_capacity(n);
        let mut x = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        while s.len() < n {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let _ = write!(s, "{x:016x}");
        }
        s.truncate(n);
        s
    };
    let jobs: Vec<String> = (0..24 * scale)
        .map(|j| format!("mapreduce-17571468{j:05}"))
        .collect();
    for (j, job) in jobs.iter().enumerate() {
        let j = j as u64;
        for v in 1..=3 {
            let body = format!(
                r#"{{"job_id": "{job}", "checkpoint_version": {v}, "work_items": "{}"}}"#,
                filler(100_000, j * 10 + v)
            );
            put(
                format!("mapreduce/jobs/{job}/checkpoint-v{v}.json"),
                body.as_bytes(),
            );
        }
        let meta = format!(
            r#"{{"path": "{}/mapreduce/jobs/{job}/checkpoint-v3.json", "version": 3}}"#,
            p.display()
        );
        put(
            format!("mapreduce/jobs/{job}/metadata.json"),
            meta.as_bytes(),
        );
        for i in 0..40 {
            let item = format!(
                r#"{{"item_id": "item_{i}", "item_data": "{}", "failure_count": 1}}"#,
                filler(900, j * 1000 + i)
            );
            put(
                format!("mapreduce/dlq/{job}/items/item_{i}.json"),
                item.as_bytes(),
            );
        }
        put(
            format!("mapreduce/dlq/{job}/index.json"),
            br#"{"item_count": 40}"#,
        );
        put(format!("progress/{job}.json"), br#"{"done": 1}"#);
        put(format!("progress/{job}_history.json"), b"[]");
    }
    for i in 0..200 * scale {
        let id = format!("session-{i:08x}-6f2d-4d57-a3c4-5a8e2b1d7f10");
        let body = format!(
            r#"{{"session_id": "{id}", "status": "Completed", "notes": "{}"}}"#,
            filler(2_000, i)
        );
        put(format!("{id}.json"), body.as_bytes());
    }
    for i in 0..600 * scale {
        put(
            format!("history/20250906_{:06}_{i:08x}.json", i % 1_000_000),
            filler(1_000, i + 7).as_bytes(),
        );
        put(
            format!("cache/key-{i}.json"),
            filler(4_000, i + 9).as_bytes(),
        );
    }
    for i in 0..100 * scale {
        let body = format!(
            r#"{{"workflow_id": "workflow-{i}", "variable_state": "{}"}}"#,
            filler(20_000, i + 11)
        );
        put(
            format!("checkpoints/workflow-{i}.checkpoint.json"),
            body.as_bytes(),
        );
    }
    for i in 0..500 * scale {
        put(
            format!("context/analysis-{i}.json"),
            filler(2_000, i + 13).as_bytes(),
        );
    }
    // The global event log: 60,000 lines per scale unit across the jobs.
    let path = p.join("mapreduce/events/global/events.jsonl");
    fs_err::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    let mut w = std::io::BufWriter::new(fs_err::File::create(&path).expect("create"));
    let mut bytes = 0u64;
    for n in 0..60_000 * scale {
        let job = &jobs[usize::try_from(n).expect("fits in memory") % jobs.len()];
        let line = format!(
            "{{\"id\":\"evt-{n}\",\"timestamp\":\"2025-09-06T08:31:02.907114Z\",\"correlation_id\":\"c-1\",\"event\":{{\"event_type\":\"agent_completed\",\"job_id\":\"{job}\",\"agent_id\":\"agent_{}\",\"duration\":[12,5000],\"pad\":\"{}\"}},\"metadata\":{{\"host\":\"build-3\",\"pid\":4711}}}}\n",
            n % 16,
            &filler(80, n)[..80]
        );
        w.write_all(line.as_bytes()).expect("write");
        bytes += line.len() as u64;
    }
    w.flush().expect("flush");
    t.files += 1;
    t.bytes += bytes;
    t.event_lines = 60_000 * scale;
    t
}

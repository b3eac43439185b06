//! A store as Prodigy's own code wrote it before this storage layer
//! ("layout 0"), with every shape of `global-layout-0.md`: torn and
//! interleaved event lines, a rotated log named `.gz` that is plain text, a
//! real gzip archive, a repository called `archive`, a repository name with
//! a space and one in unicode, a worktree (with its own live `.prodigy/`)
//! as a repository, doubly nested dead letters, the per-repository
//! `session_state.json`, session-keyed and reduce-phase checkpoints, unified
//! sessions (one torn), resume locks, the orphan registry, agent logs, the
//! user's `config.yml`, and files no Prodigy wrote.

use std::fmt::Write as _;
use std::path::Path;

fn write(root: &Path, rel: &str, bytes: &[u8]) {
    let path = root.join(rel);
    fs_err::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    fs_err::write(&path, bytes).expect("write");
}

/// A MapReduce job id as the state manager writes it.
pub const JOB: &str = "mapreduce-1757146800123";
/// The same job as the event logger names it.
pub const EVENT_JOB: &str = "mapreduce-20250906_082000";
/// A session id.
pub const SESSION: &str = "session-7d2c1a40-91be-4c1f-8e0a-3f5b6c7d8e9f";

fn event(n: u32, job: &str) -> String {
    format!(
        "{{\"id\":\"e{n}\",\"timestamp\":\"2025-09-06T08:31:0{}Z\",\"event\":{{\"event_type\":\"agent_completed\",\"job_id\":\"{job}\"}}}}\n",
        n % 10
    )
}

/// Writes a layout-0 store at `root`.
pub fn store(root: &Path) {
    let abs = root.display().to_string();
    // Event logs: interleaved writers leave a torn line inside, a crash a torn last line.
    let mut log: String = (0..6).map(|n| event(n, EVENT_JOB)).collect();
    log.push_str("{\"id\":\"e6\",\"event\":{\"job_");
    log.push_str(&event(7, EVENT_JOB));
    log.push_str(&event(8, EVENT_JOB)[..30]);
    write(
        root,
        &format!("events/api/{EVENT_JOB}/events-20250906_082000.jsonl"),
        log.as_bytes(),
    );
    let rotated: String = (10..14).map(|n| event(n, EVENT_JOB)).collect();
    write(
        root,
        &format!("events/api/{EVENT_JOB}/events-20250906_070000.20250906_080000.jsonl.gz"),
        rotated.as_bytes(),
    );
    write(
        root,
        &format!("events/api/{EVENT_JOB}/events-20250905_070000.20250905_080000.jsonl.gz"),
        b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03real gzip bytes",
    );
    write(
        root,
        "events/archive/events_archive_20250901_000000.jsonl.gz",
        b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03archive",
    );
    write(
        root,
        "events/archive/mapreduce-1/events-20250906_090000.jsonl",
        event(20, "mapreduce-1").as_bytes(),
    );
    write(
        root,
        &format!("events/session-0a1b/{SESSION}/events-20250906_100000.jsonl"),
        event(21, SESSION).as_bytes(),
    );
    write(
        root,
        "events/my project/mapreduce-2/events-20250906_110000.jsonl",
        event(22, "mapreduce-2").as_bytes(),
    );
    write(
        root,
        "events/données/mapreduce-3/events-20250906_120000.jsonl",
        event(23, "mapreduce-3").as_bytes(),
    );
    // Dead letters, doubly nested by accident.
    let dlq = format!("dlq/api/{JOB}/mapreduce/dlq/{JOB}");
    write(
        root,
        &format!("{dlq}/items/item-1.json"),
        b"{\n  \"item_id\": \"item-1\",\n  \"failure_count\": 3\n}",
    );
    write(
        root,
        &format!("{dlq}/items/item-2.json"),
        b"{\n  \"item_id\": \"item-2\",\n  \"failure_count\": 1\n}",
    );
    write(
        root,
        &format!("{dlq}/index.json"),
        format!(
            "{{\"item_count\": 2, \"item_ids\": [\"item-1\", \"item-2\"], \"job_id\": \"{JOB}\"}}"
        )
        .as_bytes(),
    );
    // Job state: newest three checkpoints, metadata with an absolute path, a crash leftover.
    let jobs = format!("state/api/mapreduce/jobs/{JOB}");
    for v in 1..=3 {
        write(
            root,
            &format!("{jobs}/checkpoint-v{v}.json"),
            format!("{{\"version\": {v}, \"job_id\": \"{JOB}\"}}").as_bytes(),
        );
    }
    write(
        root,
        &format!("{jobs}/metadata.json"),
        format!("{{\n  \"path\": \"{abs}/{jobs}/checkpoint-v3.json\",\n  \"version\": 3\n}}")
            .as_bytes(),
    );
    write(
        root,
        &format!("{jobs}/checkpoint-v4.tmp"),
        b"{\"version\": 4, \"job_",
    );
    write(
        root,
        "state/api/checkpoints/workflow-1.checkpoint.json",
        b"{\"workflow_id\": \"workflow-1\", \"step\": 2}",
    );
    write(
        root,
        &format!("state/{SESSION}/checkpoints/workflow-2.checkpoint.json"),
        b"{\"workflow_id\": \"workflow-2\", \"step\": 5}",
    );
    write(
        root,
        "state/reduce_checkpoints/mapreduce-1/reduce-checkpoint-v1-20250906_083000.json",
        b"{\"phase\": \"reduce\"}",
    );
    write(
        root,
        "state/api/sessions/session_state.json",
        format!("{{\"session_id\": \"{SESSION}\", \"status\": \"Completed\"}}").as_bytes(),
    );
    write(
        root,
        &format!("state/api/mappings/{SESSION}.json"),
        format!("{{\"session_id\": \"{SESSION}\", \"job_id\": \"{JOB}\", \"workflow_name\": \"w\", \"created_at\": \"2025-09-06T08:20:00Z\"}}").as_bytes(),
    );
    // Unified sessions: global, keyed by id; written non-atomically.
    write(
        root,
        &format!("sessions/{SESSION}.json"),
        format!(
            "{{\"id\": \"{SESSION}\", \"session_type\": \"MapReduce\", \"status\": \"Running\"}}"
        )
        .as_bytes(),
    );
    write(
        root,
        "sessions/session-torn.json",
        b"{\"id\": \"session-torn\", \"sta",
    );
    write(
        root,
        &format!("sessions/{SESSION}/checkpoint.json"),
        b"{\"checkpoint\": 1}",
    );
    write(
        root,
        &format!("resume_locks/{JOB}.lock"),
        format!("{{\"job_id\": \"{JOB}\", \"process_id\": 4242, \"hostname\": \"build-3\", \"acquired_at\": \"2025-09-06T08:20:00Z\"}}").as_bytes(),
    );
    // Prodigy's worktrees and their state: never touched.
    let wt = "worktrees/api/session-0a1b";
    write(
        root,
        &format!("{wt}/.git"),
        b"gitdir: /home/dev/api/.git/worktrees/session-0a1b\n",
    );
    write(root, &format!("{wt}/src/main.rs"), b"fn main() {}\n");
    write(
        root,
        &format!("{wt}/.prodigy/session_state.json"),
        format!("{{\"session_id\": \"{SESSION}\"}}").as_bytes(),
    );
    write(
        root,
        "worktrees/api/.metadata/session-0a1b.json",
        b"{\"branch\": \"prodigy-session\"}",
    );
    write(root, "worktrees/api/cleanup.log", b"cleaned\n");
    write(root, "worktrees/api/.gitignore", b"*\n");
    write(
        root,
        "orphaned_worktrees/api/mapreduce-1.json",
        b"[{\"path\": \"/tmp/x\", \"agent_id\": \"a1\", \"item_id\": \"item-1\", \"failed_at\": \"2025-09-06T08:40:00Z\", \"error\": \"boom\"}]",
    );
    write(root, "logs/api/agent-1.log", b"agent output\n");
    // The user's own files.
    write(root, "config.yml", b"default_model: opus\n");
    write(root, "notes.txt", b"mine\n");
    write(root, "state/api/notes.md", b"also mine\n");
}

/// What [`large_store`] wrote.
#[derive(Debug, Default)]
pub struct LargeStore {
    /// Files written.
    pub files: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Event lines written.
    pub event_lines: u64,
}

/// A layout-0 store for the upgrade benchmark: `6 * scale` repositories ×
/// 8 jobs (three checkpoints and metadata, 46 doubly nested dead letters
/// and an index, a 190-line event log of ~1.6 KB lines each), the
/// per-repository `session_state.json`, and `60 * scale` unified sessions.
/// At scale 1: about 2,550 files and 16 MB.
#[must_use = "the totals describe what was written"]
pub fn large_store(root: &Path, scale: u64) -> LargeStore {
    let mut t = LargeStore::default();
    let mut put = |rel: String, bytes: &[u8]| {
        let path = root.join(rel);
        fs_err::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs_err::write(&path, bytes).expect("write");
        t.files += 1;
        t.bytes += bytes.len() as u64;
    };
    let pad = "x".repeat(1500);
    let state = "y".repeat(8000);
    let mut lines = 0;
    for r in 0..6 * scale {
        let repo = format!("repo-{r}");
        for j in 0..8 {
            let job = format!("mapreduce-17571468{r:03}{j:02}");
            for v in 1..=3 {
                put(
                    format!("state/{repo}/mapreduce/jobs/{job}/checkpoint-v{v}.json"),
                    format!("{{\"version\": {v}, \"job_id\": \"{job}\", \"state\": \"{state}\"}}")
                        .as_bytes(),
                );
            }
            put(
                format!("state/{repo}/mapreduce/jobs/{job}/metadata.json"),
                b"{\"version\": 3}",
            );
            for i in 0..46 {
                put(
                    format!("dlq/{repo}/{job}/mapreduce/dlq/{job}/items/item-{i}.json"),
                    format!("{{\"item_id\": \"item-{i}\", \"failure_count\": 1}}").as_bytes(),
                );
            }
            put(
                format!("dlq/{repo}/{job}/mapreduce/dlq/{job}/index.json"),
                b"{\"item_count\": 40}",
            );
            let mut log = String::new();
            for n in 0..190 {
                let _ = writeln!(
                    log,
                    "{{\"id\":\"{n}\",\"event\":{{\"job_id\":\"{job}\",\"pad\":\"{pad}\"}}}}"
                );
                lines += 1;
            }
            put(
                format!("events/{repo}/{job}/events-20250906_082000.jsonl"),
                log.as_bytes(),
            );
        }
        put(
            format!("state/{repo}/sessions/session_state.json"),
            format!("{{\"session_id\": \"session-{r}\"}}").as_bytes(),
        );
    }
    for s in 0..60 * scale {
        put(
            format!("sessions/session-{s}.json"),
            format!("{{\"id\": \"session-{s}\", \"status\": \"Completed\"}}").as_bytes(),
        );
    }
    t.event_lines = lines;
    t
}

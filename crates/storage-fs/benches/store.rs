#![allow(clippy::cast_precision_loss)] // Reason: KiB figures are far below 2^52.
//! Store benchmarks, each side by side with its raw-syscall baseline in one run.
//!
//! `cargo bench -p storage-fs` (or `cargo xtask bench`). Set `BENCH_DIR` to
//! run on another file system (e.g. a fresh loop-mounted ext4 for stable
//! figures). Output: one line per benchmark with both medians and the ratio;
//! with `--json`, one JSON object per line.
//!
//! - `append`: 100,000 events of ~300 bytes in batches of 100 through
//!   `FsStorage::append_events`, against `write` of the same bytes to a file
//!   opened with `O_APPEND`, with an `fsync` per batch (same durability).
//! - `append-at`: the same through `append_events_at` (compare-and-append,
//!   each batch at the end the previous one returned), against
//!   `append_events` in the same rounds: the cost of a retry-safe append.
//! - `save`: durable session saves through `put`, against the bare sequence
//!   (create temp, write, fsync, rename, fsync dir).
//! - `read-rss`: peak RSS of a child process streaming a 100,000- and a
//!   1,000,000-record log through `read_events` (flat memory = same peak).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use storage_core::{DocKey, EventRecord, JobId, RepoKey, SessionId, Storage};
use storage_fs::FsStorage;

const EVENTS: usize = 100_000;
const BATCH: usize = 100;
const SAVES: usize = 400;
const ROUNDS: usize = 5;

fn event(n: usize) -> EventRecord {
    EventRecord::from_json(json!({
        "id": format!("evt-{n:08}"),
        "timestamp": "2025-09-06T08:31:02.907114Z",
        "correlation_id": "corr-0001",
        "event": {"event_type": "agent_completed", "job_id": "mapreduce-1757146800123",
                  "agent_id": format!("agent_{}", n % 16), "item_id": format!("item_{n}"),
                  "duration": [12, 345_678_901], "commits": ["0123456789abcdef01234567"]},
        "metadata": {"host": "build-3", "pid": 4711, "thread": "tokio-runtime-worker"}
    }))
    .expect("object")
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn scratch(base: &Path, name: &str) -> PathBuf {
    let p = base.join(name);
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).expect("scratch");
    p
}

fn open_append(dir: &Path) -> File {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(dir.join("events.jsonl"))
        .expect("open")
}

fn bench_append(base: &Path) -> (Duration, Duration, Duration, Duration) {
    let events: Vec<EventRecord> = (0..EVENTS).map(event).collect();
    let lines: Vec<Vec<u8>> = events
        .chunks(BATCH)
        .map(|chunk| {
            let mut b = Vec::new();
            for e in chunk {
                serde_json::to_writer(&mut b, e.json()).expect("json");
                b.push(b'\n');
            }
            b
        })
        .collect();
    let avg = lines.iter().map(Vec::len).sum::<usize>() / EVENTS;
    eprintln!("append: {EVENTS} events, {avg} bytes each on average, batches of {BATCH}");
    let (mut ours, mut raw, mut bytes_only, mut at) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let repo = RepoKey::new("bench").expect("valid");
    let job = JobId::new("mapreduce-1757146800123").expect("valid");
    for round in 0..ROUNDS {
        // Rotate the order each round so that no side always runs after
        // another side's writeback.
        for side in (0..4).map(|i| (i + round) % 4) {
            match side {
                0 => {
                    let dir = scratch(base, "append-store");
                    let store = FsStorage::open(&dir).expect("open");
                    let t = Instant::now();
                    for chunk in events.chunks(BATCH) {
                        store.append_events(&repo, &job, chunk).expect("append");
                    }
                    ours.push(t.elapsed());
                }
                1 => {
                    // Baseline: what a caller does by hand with the same records:
                    // serialize each batch, write it to one open O_APPEND file,
                    // fsync (the same number of fsyncs).
                    let dir = scratch(base, "append-raw");
                    let t = Instant::now();
                    let mut f = open_append(&dir);
                    let mut b = Vec::new();
                    for chunk in events.chunks(BATCH) {
                        b.clear();
                        for e in chunk {
                            serde_json::to_writer(&mut b, e.json()).expect("json");
                            b.push(b'\n');
                        }
                        f.write_all(&b).expect("write");
                        f.sync_data().expect("fsync");
                    }
                    raw.push(t.elapsed());
                }
                3 => {
                    let dir = scratch(base, "append-at-store");
                    let store = FsStorage::open(&dir).expect("open");
                    let t = Instant::now();
                    let mut end = storage_core::EventCursor::START;
                    for chunk in events.chunks(BATCH) {
                        end = store
                            .append_events_at(&repo, &job, &end, chunk)
                            .expect("append at")
                            .end()
                            .clone();
                    }
                    at.push(t.elapsed());
                }
                _ => {
                    // Floor: the same bytes already serialized (no JSON work at all).
                    let dir = scratch(base, "append-bytes");
                    let t = Instant::now();
                    let mut f = open_append(&dir);
                    for b in &lines {
                        f.write_all(b).expect("write");
                        f.sync_data().expect("fsync");
                    }
                    bytes_only.push(t.elapsed());
                }
            }
        }
    }
    (median(ours), median(raw), median(bytes_only), median(at))
}

fn bench_save(base: &Path) -> (Duration, Duration, Duration, u32) {
    let doc = json!({
        "session_id": "session-0b9f3c9e-6f2d-4d57-a3c4-5a8e2b1d7f10", "status": "InProgress",
        "started_at": "2025-09-06T08:31:02.907114Z", "iterations_completed": 3,
        "files_changed": 12, "errors": [], "working_directory": "/home/u/work/api",
        "workflow_state": {"current_step": 2, "completed_steps": [0, 1]},
        "iteration_timings": [[1, {"secs": 30, "nanos": 5}]]
    });
    let bytes = serde_json::to_vec_pretty(&doc).expect("json");
    let repo = RepoKey::new("bench").expect("valid");
    let key = DocKey::Session {
        repo,
        session: SessionId::new("session-0b9f3c9e-6f2d-4d57-a3c4-5a8e2b1d7f10").expect("valid"),
    };
    let (mut ours, mut raw, mut aw) = (Vec::new(), Vec::new(), Vec::new());
    let mut aw_mode = 0;
    for _ in 0..ROUNDS {
        // The `atomicwrites` crate, for comparison: it also fsyncs file and
        // directory, but creates a temp directory per write and leaves 0644.
        let dir = scratch(base, "save-atomicwrites");
        let target = dir.join("session.json");
        let t = Instant::now();
        for _ in 0..SAVES {
            atomicwrites::AtomicFile::new(&target, atomicwrites::AllowOverwrite)
                .write(|f| f.write_all(&bytes))
                .expect("atomicwrites");
        }
        aw.push(t.elapsed());
        aw_mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&target).expect("stat").permissions(),
        ) & 0o777;
        let dir = scratch(base, "save-store");
        let store = FsStorage::open(&dir).expect("open");
        store
            .put(&key, &doc)
            .expect("first put creates the directory");
        let t = Instant::now();
        for _ in 0..SAVES {
            store.put(&key, &doc).expect("put");
        }
        ours.push(t.elapsed());

        let dir = scratch(base, "save-raw");
        let target = dir.join("session.json");
        let tmp = dir.join(".tmp-session.json");
        let t = Instant::now();
        for _ in 0..SAVES {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .expect("tmp");
            f.write_all(&bytes).expect("write");
            f.sync_all().expect("fsync");
            drop(f);
            std::fs::rename(&tmp, &target).expect("rename");
            File::open(&dir)
                .and_then(|d| d.sync_all())
                .expect("fsync dir");
        }
        raw.push(t.elapsed());
    }
    (median(ours), median(raw), median(aw), aw_mode)
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Child mode: stream the log at `dir` and print records and peak RSS.
fn read_child(dir: &Path) {
    let store = FsStorage::open(dir).expect("open");
    let repo = RepoKey::new("bench").expect("valid");
    let job = JobId::new("mapreduce-1757146800123").expect("valid");
    let mut bytes = 0usize;
    let s = store
        .read_events(&repo, &job, &mut |e| bytes += e.json().len())
        .expect("read");
    println!("{} {}", s.records, peak_rss_kib());
}

fn bench_read_rss(base: &Path) -> Vec<(usize, u64)> {
    let repo = RepoKey::new("bench").expect("valid");
    let job = JobId::new("mapreduce-1757146800123").expect("valid");
    let mut out = Vec::new();
    for n in [100_000usize, 1_000_000] {
        let dir = scratch(base, "read");
        let store = FsStorage::open(&dir).expect("open");
        let batch: Vec<EventRecord> = (0..10_000).map(event).collect();
        for _ in 0..n / batch.len() {
            store.append_events(&repo, &job, &batch).expect("append");
        }
        let exe = std::env::current_exe().expect("self");
        let o = std::process::Command::new(exe)
            .arg("--read-child")
            .arg(&dir)
            .output()
            .expect("child");
        let text = String::from_utf8_lossy(&o.stdout);
        let mut it = text.split_whitespace();
        let records: usize = it.next().and_then(|s| s.parse().ok()).expect("records");
        let rss: u64 = it.next().and_then(|s| s.parse().ok()).expect("rss");
        assert_eq!(records, n);
        out.push((n, rss));
    }
    out
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--read-child") {
        read_child(Path::new(&args[i + 1]));
        return;
    }
    let json = args.iter().any(|a| a == "--json");
    let base = std::env::var_os("BENCH_DIR").map_or_else(
        || std::env::temp_dir().join("prodigy-store-bench"),
        PathBuf::from,
    );
    std::fs::create_dir_all(&base).expect("bench dir");
    let ms = |d: Duration| d.as_secs_f64() * 1e3;

    let (ours, raw, bytes, at) = bench_append(&base);
    let ratio = ours.as_secs_f64() / raw.as_secs_f64();
    let floor = ours.as_secs_f64() / bytes.as_secs_f64();
    if json {
        println!(
            r#"{{"bench":"store-append","ours_ms":{:.1},"baseline_ms":{:.1},"ratio":{ratio:.3},"target":1.3,"bytes_only_ms":{:.1},"ratio_to_bytes_only":{floor:.3}}}"#,
            ms(ours),
            ms(raw),
            ms(bytes)
        );
    } else {
        println!(
            "store append 100k events  FsStorage {:>9.1} ms   serialize+write+fsync {:>7.1} ms   ratio {ratio:.2}x (target <= 1.3x); pre-serialized bytes {:.1} ms ({floor:.2}x)",
            ms(ours),
            ms(raw),
            ms(bytes)
        );
    }
    let keyed = at.as_secs_f64() / ours.as_secs_f64();
    if json {
        println!(
            r#"{{"bench":"store-append-at","ours_ms":{:.1},"baseline_ms":{:.1},"ratio":{keyed:.3},"target":1.1}}"#,
            ms(at),
            ms(ours)
        );
    } else {
        println!(
            "store append-at 100k      append_events_at {:>7.1} ms   append_events {:>7.1} ms   ratio {keyed:.2}x (target <= 1.1x)",
            ms(at),
            ms(ours)
        );
    }
    let (ours, raw, aw, aw_mode) = bench_save(&base);
    let ratio = ours.as_secs_f64() / raw.as_secs_f64();
    if json {
        println!(
            r#"{{"bench":"store-save","ours_ms":{:.1},"baseline_ms":{:.1},"ratio":{ratio:.3},"target":1.2,"atomicwrites_ms":{:.1},"atomicwrites_mode":"{aw_mode:o}"}}"#,
            ms(ours),
            ms(raw),
            ms(aw)
        );
    } else {
        println!(
            "store save x{SAVES}           FsStorage {:>9.1} ms   raw tmp+fsync+rename+fsync {:>6.1} ms   ratio {ratio:.2}x (target <= 1.2x); atomicwrites crate {:.1} ms, leaves mode {aw_mode:o}",
            ms(ours),
            ms(raw),
            ms(aw)
        );
    }
    let rss = bench_read_rss(&base);
    let growth = rss[1].1 as f64 / rss[0].1 as f64;
    if json {
        println!(
            r#"{{"bench":"store-read-rss","records":[{},{}],"peak_rss_kib":[{},{}],"ratio":{growth:.3}}}"#,
            rss[0].0, rss[1].0, rss[0].1, rss[1].1
        );
    } else {
        println!(
            "store read log            peak RSS {} KiB at {} records, {} KiB at {} records: {growth:.2}x for 10x the log",
            rss[0].1, rss[0].0, rss[1].1, rss[1].0
        );
    }
    let _ = std::fs::remove_dir_all(&base);
}

#![allow(clippy::cast_precision_loss)] // Reason: millisecond and MiB figures are far below 2^52.
//! Retention benchmark: a 1,000,000-line event log trimmed to its newest
//! 10%, side by side with `cp <the kept part> <dst> && sync` of the same
//! bytes, in one run, on the same file system.
//!
//! `cargo bench -p storage-fs --bench retention` (`BENCH_DIR` to choose the
//! file system; `BENCH_LINES` to change the size). Both sides start from a
//! log in the page cache; each round builds the log afresh. Printed: both
//! medians and the ratio, without and with the gzip archive, and the peak
//! memory of the process (the log is never held in memory: it stays flat
//! whatever the log's length).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use storage_core::{EventRetention, JobId, RepoKey, Retention, Storage};
use storage_fs::FsStorage;

const ROUNDS: usize = 3;

fn line(n: u64) -> String {
    format!(
        "{{\"id\":\"evt-{n:08}\",\"timestamp\":\"2025-09-06T08:31:02.907114Z\",\"correlation_id\":\"corr-0001\",\"event\":{{\"event_type\":\"agent_completed\",\"job_id\":\"mapreduce-1\",\"agent_id\":\"agent_{}\",\"item_id\":\"item_{n}\",\"duration\":[12,345678901]}},\"metadata\":{{\"host\":\"build-3\",\"pid\":4711}}}}\n",
        n % 16
    )
}

/// Writes the log and, beside it, a file holding its last `keep` lines.
fn build(dir: &Path, lines: u64, keep: u64) -> (std::path::PathBuf, u64) {
    let log_dir = dir.join("store/events/proj/job-1");
    std::fs::create_dir_all(&log_dir).expect("mkdir");
    let mut log = BufWriter::new(File::create(log_dir.join("events.jsonl")).expect("log"));
    let kept = dir.join("kept.jsonl");
    let mut tail = BufWriter::new(File::create(&kept).expect("kept"));
    let mut kept_bytes = 0;
    for n in 0..lines {
        let l = line(n);
        log.write_all(l.as_bytes()).expect("write");
        if n >= lines - keep {
            tail.write_all(l.as_bytes()).expect("write");
            kept_bytes += l.len() as u64;
        }
    }
    log.flush().expect("flush");
    tail.flush().expect("flush");
    (kept, kept_bytes)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let base = std::env::var_os("BENCH_DIR").map_or_else(
        || std::env::temp_dir().join("prodigy-retention-bench"),
        std::path::PathBuf::from,
    );
    let lines: u64 = std::env::var("BENCH_LINES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let keep = lines / 10;
    let (repo, job) = (
        RepoKey::new("proj").expect("repo"),
        JobId::new("job-1").expect("job"),
    );
    for archive in [false, true] {
        let (mut ours, mut cp) = (Vec::new(), Vec::new());
        let mut bytes = 0;
        for _ in 0..ROUNDS {
            let _ = std::fs::remove_dir_all(&base);
            std::fs::create_dir_all(&base).expect("bench dir");
            let store = FsStorage::open(base.join("store")).expect("open");
            let (kept, kept_bytes) = build(&base, lines, keep);
            bytes = kept_bytes;
            let policy = EventRetention::new(Retention::keep_all().with_max_count(keep));
            let policy = if archive {
                policy
            } else {
                policy.without_archive()
            };
            let _ = Command::new("sync").status();
            let t = Instant::now();
            let r = store.retain_events(&repo, &job, &policy).expect("retain");
            ours.push(t.elapsed());
            assert_eq!(r.kept, keep);
            assert!(r.dropped.is_none_or(|d| d == lines - keep));
            let _ = Command::new("sync").status();
            let t = Instant::now();
            let ok = Command::new("sh")
                .arg("-c")
                .arg("cp \"$1\" \"$2\" && sync")
                .arg("sh")
                .arg(&kept)
                .arg(base.join("copy.jsonl"))
                .status()
                .expect("cp")
                .success();
            cp.push(t.elapsed());
            assert!(ok);
        }
        let (o, c) = (median(ours), median(cp));
        println!(
            "retention{} of {lines} lines keeping {keep} ({:.1} MB kept): {:.1} ms; cp + sync of the kept part: {:.1} ms; ratio {:.2}x",
            if archive { " with gzip archive" } else { "" },
            bytes as f64 / 1e6,
            o.as_secs_f64() * 1e3,
            c.as_secs_f64() * 1e3,
            o.as_secs_f64() / c.as_secs_f64()
        );
    }
    println!(
        "peak memory of this process: {:.1} MiB",
        peak_rss_kib() as f64 / 1024.0
    );
    let _ = std::fs::remove_dir_all(&base);
}

#![allow(clippy::cast_precision_loss)] // Reason: MiB and millisecond figures are far below 2^52.
//! Listing benchmark: peak memory of a child process that visits every
//! document of a scope with its size and modification time
//! (`Storage::scan_entries`), at 100,000 documents and at ten times that,
//! side by side with `list_entries` (which holds them all, sorted).
//!
//! `cargo bench -p storage-fs --bench listing` (`BENCH_DIR` to choose the
//! file system; `BENCH_DOCS` to change the smaller count). Flat memory: the
//! scan's peak is the same at both sizes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use storage_core::{RepoKey, Scope, Storage};
use storage_fs::FsStorage;

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

/// Child mode: `--child <store> <scan|list>`; prints `count peak_kib millis`.
fn child(store: &Path, how: &str) {
    let store = FsStorage::open(store).expect("open");
    let scope = Scope::Sessions(RepoKey::new("proj").expect("repo"));
    let t = Instant::now();
    let (mut n, mut bytes) = (0u64, 0u64);
    if how == "scan" {
        store
            .scan_entries(&scope, &mut |e| {
                n += 1;
                bytes += e.bytes;
            })
            .expect("scan");
    } else {
        for e in store.list_entries(&scope).expect("list") {
            n += 1;
            bytes += e.bytes;
        }
    }
    assert!(bytes > 0);
    println!("{n} {} {}", peak_rss_kib(), t.elapsed().as_millis());
}

fn build(store: &Path, docs: u64) {
    FsStorage::open(store).expect("open");
    let dir = store.join("state/proj/sessions");
    std::fs::create_dir_all(&dir).expect("mkdir");
    for i in 0..docs {
        std::fs::write(
            dir.join(format!("session-{i:08}.json")),
            format!("{{\"session_id\": \"session-{i:08}\", \"status\": \"Completed\"}}"),
        )
        .expect("write");
    }
}

fn run(store: &Path, how: &str) -> (u64, u64, u64) {
    let out = Command::new(std::env::current_exe().expect("self"))
        .arg("--child")
        .arg(store)
        .arg(how)
        .output()
        .expect("child");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Vec<u64> = text
        .split_whitespace()
        .map(|s| s.parse().expect("number"))
        .collect();
    (v[0], v[1], v[2])
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        child(Path::new(&args[2]), &args[3]);
        return;
    }
    let base = std::env::var_os("BENCH_DIR").map_or_else(
        || std::env::temp_dir().join("prodigy-listing-bench"),
        PathBuf::from,
    );
    let docs: u64 = std::env::var("BENCH_DOCS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let _ = std::fs::remove_dir_all(&base);
    for count in [docs, docs * 10] {
        let store = base.join(format!("store-{count}"));
        build(&store, count);
        let (n, scan_kib, scan_ms) = run(&store, "scan");
        let (m, list_kib, list_ms) = run(&store, "list");
        assert_eq!((n, m), (count, count));
        println!(
            "listing {count} documents with sizes and times: scan_entries peak {:.1} MiB in {scan_ms} ms; list_entries peak {:.1} MiB in {list_ms} ms",
            scan_kib as f64 / 1024.0,
            list_kib as f64 / 1024.0
        );
        let _ = std::fs::remove_dir_all(&store);
    }
}

//! One root, two layouts: what serving a root an older Prodigy wrote, as it
//! is, costs next to serving it upgraded.
//!
//! `cargo bench -p storage-migrate --bench two_layouts` (or `cargo xtask
//! bench`). From one layout-0 store (the upgrade benchmark's, about 2,550
//! files at scale 1), two copies: one left in layout 0, one upgraded. Then:
//!
//! - `list` (`FsStorage::inventory`, what `prodigy-storage list` prints) of
//!   each, alternated, 21 pairs: the median of the per-pair ratios and
//!   their range (target: layout 0 ≤ 1.2× upgraded);
//! - its peak memory in a child process on the layout-0 copy at 1× and 10×
//!   every count, and on the 10× copy upgraded (a listing holds its rows,
//!   so it grows with them either way; reading layout 0 must add nothing);
//! - the start-up check on the upgraded copy, unchanged
//!   (`storage_migrate::upgrade_due`, which Prodigy's start-up runs): its
//!   system calls, counted by `strace -c` against a child that does
//!   nothing, and that it writes nothing (the tree is compared).

#![allow(clippy::cast_precision_loss)] // Reason: millisecond and KiB figures are far below 2^52.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{child_run, in_child, peak_rss_kib, sh};
use storage_fs::FsStorage;
use storage_migrate::UpgradeOptions;

fn list(store: &Path) -> usize {
    FsStorage::peek(store)
        .expect("peek")
        .inventory(None)
        .expect("inventory")
        .len()
}

/// The file names and sizes under `dir`, for the "writes nothing" check.
fn tree(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir") {
            let e = e.expect("entry");
            let meta = e.metadata().expect("stat");
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                out.push((e.path(), meta.len()));
            }
        }
    }
    out.sort();
    out
}

/// System calls of a child run of this benchmark in `mode` on `store`
/// (`strace -f -c`), or `None` where strace is missing.
fn syscalls(mode: &str, store: &Path) -> Option<u64> {
    let out = Command::new("strace")
        .args(["-f", "-c", "-o", "/dev/stdout"])
        .arg(std::env::current_exe().ok()?)
        .args([mode])
        .arg(store)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    // The summary's last line: `100.00 <secs> <usecs/call> <calls> <errors> total`.
    let total = text
        .lines()
        .rev()
        .find(|l| l.trim_end().ends_with("total"))?;
    let fields: Vec<&str> = total.split_whitespace().collect();
    fields.get(3)?.parse().ok()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--child") => {
            let store = PathBuf::from(&args[2]);
            child_run(|_| {
                let _ = list(&store);
            });
            return;
        }
        Some("--startup-check") => {
            let store = FsStorage::peek(&args[2]).expect("peek");
            assert!(!storage_migrate::upgrade_due(&store).expect("check"));
            return;
        }
        Some("--nothing") => {
            let _ = FsStorage::peek(&args[2]).expect("peek");
            return;
        }
        _ => {}
    }
    let json = args.iter().any(|a| a == "--json");
    let base = std::env::var_os("BENCH_DIR").map_or_else(
        || std::env::temp_dir().join("prodigy-two-layouts-bench"),
        PathBuf::from,
    );
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).expect("bench dir");
    let layout0 = base.join("layout0");
    let t = storage_tests::layout0::large_store(&layout0, 1);
    let upgraded = base.join("upgraded");
    sh(&format!(
        "cp -a '{}' '{}'",
        layout0.display(),
        upgraded.display()
    ));
    let store = FsStorage::peek(&upgraded).expect("peek");
    storage_migrate::upgrade(&store, &UpgradeOptions::default()).expect("upgrade");
    sh("sync");
    assert_eq!(
        list(&layout0),
        list(&upgraded),
        "the same documents and logs listed either way"
    );

    // Warm both, then alternate.
    let time = |p: &Path| {
        let t = Instant::now();
        std::hint::black_box(list(p));
        t.elapsed()
    };
    for _ in 0..3 {
        time(&layout0);
        time(&upgraded);
    }
    let mut ratios = Vec::new();
    let (mut l0, mut up) = (Vec::new(), Vec::new());
    for i in 0..21 {
        let (old, new) = if i % 2 == 0 {
            let old = time(&layout0);
            (old, time(&upgraded))
        } else {
            let new = time(&upgraded);
            (time(&layout0), new)
        };
        ratios.push(old.as_secs_f64() / new.as_secs_f64());
        l0.push(old);
        up.push(new);
    }
    ratios.sort_by(f64::total_cmp);
    let ratio = ratios[ratios.len() / 2];
    let (lo, hi) = (ratios[0], ratios[ratios.len() - 1]);
    let l0 = common::median(l0);
    let up = common::median(up);

    // Memory of `list` on a layout-0 root, at 1× and 10×.
    let (_, rss1) = in_child(&[&layout0]);
    let big = base.join("big");
    let _ = storage_tests::layout0::large_store(&big, 10);
    let (_, rss10) = in_child(&[&big]);
    // The same store upgraded, for comparison: a listing holds its rows.
    let big_store = FsStorage::peek(&big).expect("peek");
    storage_migrate::upgrade(&big_store, &UpgradeOptions::default()).expect("upgrade");
    let (_, rss10_upgraded) = in_child(&[&big]);

    // The start-up check on the unchanged upgraded copy.
    let before = tree(&upgraded);
    let calls = syscalls("--startup-check", &upgraded);
    let idle = syscalls("--nothing", &upgraded);
    assert_eq!(tree(&upgraded), before, "the start-up check wrote nothing");
    let check_calls = calls.zip(idle).map(|(c, i)| c.saturating_sub(i));
    let _ = std::fs::remove_dir_all(&base);
    let _ = peak_rss_kib();

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    if json {
        println!(
            r#"{{"bench":"list-layout-0","files":{},"ours_ms":{:.2},"baseline_ms":{:.2},"ratio":{ratio:.3},"ratio_min":{lo:.3},"ratio_max":{hi:.3},"target":1.2,"peak_rss_kib":{rss1},"peak_rss_kib_10x":{rss10},"peak_rss_kib_10x_upgraded":{rss10_upgraded},"startup_check_syscalls":{}}}"#,
            t.files,
            ms(l0),
            ms(up),
            check_calls.map_or_else(|| "null".to_owned(), |n| n.to_string())
        );
    } else {
        println!(
            "list of a {}-file layout-0 root {:>7.2} ms   upgraded {:>7.2} ms   ratio {ratio:.2}x (range {lo:.2}-{hi:.2}; target <= 1.2x)",
            t.files,
            ms(l0),
            ms(up)
        );
        println!(
            "list peak memory on layout 0   {:.1} MiB at 1x, {:.1} MiB at 10x (upgraded, 10x: {:.1} MiB)",
            rss1 as f64 / 1024.0,
            rss10 as f64 / 1024.0,
            rss10_upgraded as f64 / 1024.0
        );
        match check_calls {
            Some(n) => println!(
                "start-up check, upgraded root unchanged: {n} system calls beyond opening the store, no writes"
            ),
            None => println!("start-up check: strace not found; no system-call count"),
        }
    }
}

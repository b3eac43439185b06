//! Upgrade benchmark: a layout-0 store (the one Prodigy's own code wrote)
//! upgraded in place, side by side with `cp -a <store> <dst> && sync` of
//! the same store, on the same file system.
//!
//! `cargo bench -p storage-migrate --bench upgrade` (or `cargo xtask
//! bench`). At scale 1 the store has 6 repositories × 8 jobs, about 2,600
//! files and 16 MB; peak memory is measured in a child process (`VmHWM`) at
//! that size and at ten times every count. Each round runs on a fresh
//! loop-mounted ext4 when it can (root and `mkfs.ext4`).

#![allow(clippy::cast_precision_loss)] // Reason: millisecond and KiB figures are far below 2^52.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{FreshFs, child_run, in_child, sh, side_by_side};
use storage_fs::FsStorage;
use storage_migrate::{Outcome, UpgradeOptions};

/// Child mode: upgrade `store`.
fn child(store: &Path) {
    child_run(|progress| {
        let store = FsStorage::peek(store).expect("peek store");
        let opts = UpgradeOptions {
            progress,
            ..UpgradeOptions::default()
        };
        let r = storage_migrate::upgrade(&store, &opts).expect("upgrade");
        assert_eq!(r.outcome, Outcome::Migrated);
    });
}

fn upgrade_in_child(store: &Path) -> (Duration, u64) {
    in_child(&[store])
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        child(Path::new(&args[2]));
        return;
    }
    let json = args.iter().any(|a| a == "--json");
    let base = std::env::var_os("BENCH_DIR").map_or_else(
        || std::env::temp_dir().join("prodigy-upgrade-bench"),
        PathBuf::from,
    );
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).expect("bench dir");
    let template = base.join("template");
    let t = storage_tests::layout0::large_store(&template, 1);
    eprintln!(
        "layout-0 store: {} files, {:.1} MB, {} event lines",
        t.files,
        t.bytes as f64 / 1e6,
        t.event_lines
    );
    let (ours, cp, rss1) = side_by_side(
        &base,
        &template,
        512,
        ("store", "store-cp"),
        "store-cp",
        |dir| upgrade_in_child(&dir.join("store")),
    );
    let ratio = ours.as_secs_f64() / cp.as_secs_f64();

    let big_fs = FreshFs::new(&base, "big", 2048);
    let big = big_fs
        .as_ref()
        .map_or_else(|| base.join("big"), |f| f.mnt.clone());
    let _ = storage_tests::layout0::large_store(&big.join("store"), 10);
    sh("sync");
    let (_, rss10) = upgrade_in_child(&big.join("store"));
    drop(big_fs);
    let _ = std::fs::remove_dir_all(&base);

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    if json {
        println!(
            r#"{{"bench":"upgrade","files":{},"bytes":{},"ours_ms":{:.1},"baseline_ms":{:.1},"ratio":{ratio:.3},"target":1.0,"peak_rss_kib":{rss1},"peak_rss_kib_10x":{rss10}}}"#,
            t.files,
            t.bytes,
            ms(ours),
            ms(cp)
        );
    } else {
        println!(
            "upgrade {} files / {:.1} MB   prodigy-storage {:>8.1} ms   cp -a && sync {:>8.1} ms   ratio {ratio:.2}x (target <= 1.0x)",
            t.files,
            t.bytes as f64 / 1e6,
            ms(ours),
            ms(cp)
        );
        println!(
            "upgrade peak memory        {:.1} MiB at 1x, {:.1} MiB at 10x the store (target <= 64 MiB, flat)",
            rss1 as f64 / 1024.0,
            rss10 as f64 / 1024.0
        );
    }
}

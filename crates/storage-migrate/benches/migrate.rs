//! Migration benchmark, side by side with `cp -a <project>/.prodigy <dst> && sync`.
//!
//! `cargo bench -p storage-migrate` (or `cargo xtask bench`). At scale 1 the
//! legacy tree has about 3,000 files and 30 MB with a 60,000-line global
//! event log across 24 jobs. Peak memory is measured in a child process
//! (`VmHWM`) at that size and at ten times every count.
//! Each round runs on a fresh loop-mounted ext4 when it can (root and
//! `mkfs.ext4`); `BENCH_DIR` holds the images (default: the temp directory).

#![allow(clippy::cast_precision_loss)] // Reason: millisecond and KiB figures are far below 2^52.

use std::path::{Path, PathBuf};
use std::time::Duration;

use storage_fs::FsStorage;
use storage_migrate::{MigrateOptions, Outcome};

mod common;

use common::{FreshFs, child_run, in_child, sh, side_by_side};

/// Child mode: migrate `project` into `store`.
fn child(project: &Path, store: &Path) {
    child_run(|progress| {
        let store = FsStorage::open(store).expect("open store");
        let opts = MigrateOptions {
            progress,
            ..MigrateOptions::default()
        };
        let r = storage_migrate::migrate(&store, project, &opts).expect("migrate");
        assert_eq!(r.outcome, Outcome::Migrated);
    });
}

fn migrate_in_child(project: &Path, store: &Path) -> (Duration, u64) {
    in_child(&[project, store])
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        child(Path::new(&args[2]), Path::new(&args[3]));
        return;
    }
    let json = args.iter().any(|a| a == "--json");
    let base = std::env::var_os("BENCH_DIR").map_or_else(
        || std::env::temp_dir().join("prodigy-migrate-bench"),
        PathBuf::from,
    );
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).expect("bench dir");
    let template = base.join("template");
    let tree = storage_tests::fixture::large_legacy_project(&template, 1);
    eprintln!(
        "legacy tree: {} files, {:.1} MB, {} event lines across 24 jobs",
        tree.files,
        tree.bytes as f64 / 1e6,
        tree.event_lines
    );
    let (ours, cp, rss1) = side_by_side(
        &base,
        &template,
        1024,
        ("project", "project-cp"),
        "project-cp/.prodigy",
        |dir| migrate_in_child(&dir.join("project"), &dir.join("store")),
    );
    let ratio = ours.as_secs_f64() / cp.as_secs_f64();

    // Memory at ten times the tree.
    let big_fs = FreshFs::new(&base, "big", 4096);
    let big = big_fs
        .as_ref()
        .map_or_else(|| base.join("big"), |f| f.mnt.clone());
    let _ = storage_tests::fixture::large_legacy_project(&big.join("project"), 10);
    sh("sync");
    let (_, rss10) = migrate_in_child(&big.join("project"), &big.join("store"));
    drop(big_fs);
    let _ = std::fs::remove_dir_all(&base);

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    if json {
        println!(
            r#"{{"bench":"migrate","files":{},"bytes":{},"event_lines":{},"ours_ms":{:.1},"baseline_ms":{:.1},"ratio":{ratio:.3},"target":1.5,"peak_rss_kib":{rss1},"peak_rss_kib_10x":{rss10}}}"#,
            tree.files,
            tree.bytes,
            tree.event_lines,
            ms(ours),
            ms(cp)
        );
    } else {
        println!(
            "migrate {} files / {:.1} MB   prodigy-storage {:>8.1} ms   cp -a && sync {:>8.1} ms   ratio {ratio:.2}x (target <= 1.5x)",
            tree.files,
            tree.bytes as f64 / 1e6,
            ms(ours),
            ms(cp)
        );
        println!(
            "migrate peak memory        {:.1} MiB at 1x, {:.1} MiB at 10x the tree (target <= 64 MiB, flat)",
            rss1 as f64 / 1024.0,
            rss10 as f64 / 1024.0
        );
    }
}

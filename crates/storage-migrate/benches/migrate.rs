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
use std::process::Command;
use std::time::{Duration, Instant};

use storage_fs::FsStorage;
use storage_migrate::{MigrateOptions, Outcome};

mod common;

use common::{FreshFs, Phases, ROUNDS, median, peak_rss_kib, sh};

/// Child mode: migrate `project` into `store`, print elapsed ms and peak RSS.
fn child(project: &Path, store: &Path) {
    let t = Instant::now();
    let phases = Phases {
        start: t,
        last: std::sync::Mutex::new(t),
    };
    let quiet = storage_migrate::NoProgress;
    let progress: &dyn storage_migrate::Progress = if std::env::var_os("BENCH_PHASES").is_some() {
        &phases
    } else {
        &quiet
    };
    let store = FsStorage::open(store).expect("open store");
    let opts = MigrateOptions {
        progress,
        ..MigrateOptions::default()
    };
    let r = storage_migrate::migrate(&store, project, &opts).expect("migrate");
    assert_eq!(r.outcome, Outcome::Migrated);
    println!("{} {}", t.elapsed().as_micros(), peak_rss_kib());
}

fn migrate_in_child(project: &Path, store: &Path) -> (Duration, u64) {
    let out = Command::new(std::env::current_exe().expect("self"))
        .arg("--child")
        .arg(project)
        .arg(store)
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("child");
    assert!(out.status.success(), "the migration child failed");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text
        .split_whitespace()
        .map(|s| s.parse::<u64>().expect("number"));
    (
        Duration::from_micros(it.next().expect("us")),
        it.next().expect("rss"),
    )
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
    let (mut ours, mut cp, mut rss1) = (Vec::new(), Vec::new(), 0);
    let mut fresh = true;
    for round in 0..ROUNDS {
        let fs = FreshFs::new(&base, &format!("round-{round}"), 1024);
        if fs.is_none() && fresh {
            eprintln!(
                "note: cannot loop-mount a fresh ext4 here (needs root and mkfs.ext4); measuring in {} instead",
                base.display()
            );
            fresh = false;
        }
        let dir = fs
            .as_ref()
            .map_or_else(|| base.join(format!("round-{round}")), |f| f.mnt.clone());
        std::fs::create_dir_all(&dir).expect("round dir");
        // Each side gets its own pristine copy of the tree.
        for side in ["project", "project-cp"] {
            sh(&format!(
                "cp -a '{}' '{}' && sync",
                template.display(),
                dir.join(side).display()
            ));
        }
        // Start each timed run with no dirty pages from the previous one.
        let settle = || {
            sh("sync");
            std::thread::sleep(Duration::from_millis(500));
        };
        let run_ours = |ours: &mut Vec<Duration>, rss: &mut u64| {
            settle();
            let (t, r) = migrate_in_child(&dir.join("project"), &dir.join("store"));
            ours.push(t);
            *rss = (*rss).max(r);
        };
        let run_cp = |cp: &mut Vec<Duration>| {
            settle();
            let t = Instant::now();
            sh(&format!(
                "cp -a '{}' '{}' && sync",
                dir.join("project-cp/.prodigy").display(),
                dir.join("cp-dst").display()
            ));
            cp.push(t.elapsed());
        };
        // Alternate the order so neither side always pays the other's writeback.
        if round % 2 == 0 {
            run_ours(&mut ours, &mut rss1);
            run_cp(&mut cp);
        } else {
            run_cp(&mut cp);
            run_ours(&mut ours, &mut rss1);
        }
        if fs.is_none() {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    let (ours, cp) = (median(ours), median(cp));
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

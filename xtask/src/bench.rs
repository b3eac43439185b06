//! `cargo xtask bench`: runs the store and migration benchmarks and prints
//! one table of ratios against their baselines (raw writes for the store,
//! `cp -a … && sync` for the migration), so anyone can reproduce the
//! figures quoted in the docs.

use std::fmt::Write as _;

use anyhow::{Context, Result};

use crate::{cargo, output, root};

pub fn run_bench(args: &[String]) -> Result<()> {
    let json = args.iter().any(|a| a == "--json");
    let root = root();
    let mut rows = Vec::new();
    for (pkg, bench) in [
        ("storage-fs", "store"),
        ("storage-migrate", "migrate"),
        ("storage-migrate", "upgrade"),
        ("storage-migrate", "two_layouts"),
    ] {
        eprintln!("running {pkg} {bench} (a few minutes; release build)...");
        let out = output(
            cargo()
                .args([
                    "bench",
                    "--quiet",
                    "--package",
                    pkg,
                    "--bench",
                    bench,
                    "--",
                    "--json",
                ])
                .current_dir(&root),
        )?;
        for line in out.lines().filter(|l| l.starts_with('{')) {
            let v: serde_json::Value =
                serde_json::from_str(line).with_context(|| format!("bad bench line {line}"))?;
            rows.push(v);
        }
    }
    if json {
        for r in &rows {
            println!("{r}");
        }
        return Ok(());
    }
    print!("{}", render(&rows));
    Ok(())
}

fn render(rows: &[serde_json::Value]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16} {:>12} {:>12} {:>8} {:>8}",
        "benchmark", "ours ms", "baseline ms", "ratio", "target"
    );
    for r in rows {
        let name = r["bench"].as_str().unwrap_or("?");
        if name == "store-read-rss" {
            let _ = writeln!(
                out,
                "{name:<16} peak RSS {} KiB at {} records, {} KiB at {} records ({}x for 10x the log)",
                r["peak_rss_kib"][0],
                r["records"][0],
                r["peak_rss_kib"][1],
                r["records"][1],
                r["ratio"]
            );
            continue;
        }
        // `Value` ignores width flags: format each to a string first.
        let cell = |k: &str| r[k].to_string();
        let _ = writeln!(
            out,
            "{name:<16} {:>12} {:>12} {:>7}x {:>7}x",
            cell("ours_ms"),
            cell("baseline_ms"),
            cell("ratio"),
            cell("target")
        );
        if name == "migrate" {
            let _ = writeln!(
                out,
                "{:<16} peak RSS {} KiB; {} KiB at 10x the tree ({} files, {} bytes, {} event lines at 1x)",
                "",
                r["peak_rss_kib"],
                r["peak_rss_kib_10x"],
                r["files"],
                r["bytes"],
                r["event_lines"]
            );
        }
        if name == "list-layout-0" {
            let _ = writeln!(
                out,
                "{:<16} ratio range {}-{}; peak RSS {} KiB, {} KiB at 10x ({} KiB upgraded); start-up check: {} system calls",
                "",
                r["ratio_min"],
                r["ratio_max"],
                r["peak_rss_kib"],
                r["peak_rss_kib_10x"],
                r["peak_rss_kib_10x_upgraded"],
                r["startup_check_syscalls"]
            );
        }
        if let Some(a) = r.get("atomicwrites_ms") {
            let _ = writeln!(
                out,
                "{:<16} the atomicwrites crate: {a} ms, leaves files mode {}",
                "", r["atomicwrites_mode"]
            );
        }
        if let Some(b) = r.get("bytes_only_ms") {
            let _ = writeln!(
                out,
                "{:<16} against pre-serialized bytes: {b} ms, {}x",
                "", r["ratio_to_bytes_only"]
            );
        }
    }
    out
}

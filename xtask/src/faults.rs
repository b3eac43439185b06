//! `cargo xtask faults`: the exhaustive tier of the fault suite. Sweeps every
//! index of every traced syscall (kills, EIO, ENOSPC), every crash point,
//! many random kills on a large tree, the environments (bind mounts, mounts
//! inside the store, two stores, an old Prodigy writing during the run, one
//! root written by two generations of Prodigy),
//! and 500 random legacy trees; then
//! prints the counts that `docs/reliability.md` quotes.
//!
//! `cargo xtask fuzz [SECONDS]` runs each fuzz target (nightly `cargo fuzz`)
//! for SECONDS (default 60) on the committed corpus.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{cargo, root};

pub fn run_faults() -> Result<()> {
    let root = root();
    let mut summary = Vec::new();
    for (pkg, test, filter, env) in [
        (
            "storage-cli",
            "cli",
            "faults",
            ("PRODIGY_FAULTS_EXHAUSTIVE", "1"),
        ),
        (
            "storage-cli",
            "cli",
            "crash",
            ("PRODIGY_FAULTS_EXHAUSTIVE", "1"),
        ),
        (
            "storage-cli",
            "cli",
            "environments",
            ("PRODIGY_FAULTS_EXHAUSTIVE", "1"),
        ),
        (
            "storage-cli",
            "cli",
            "upgrade",
            ("PRODIGY_FAULTS_EXHAUSTIVE", "1"),
        ),
        (
            "storage-cli",
            "cli",
            "two_layouts",
            ("PRODIGY_FAULTS_EXHAUSTIVE", "1"),
        ),
        (
            "storage-tests",
            "integration",
            "random_trees",
            ("PROPTEST_CASES", "500"),
        ),
        (
            "storage-tests",
            "integration",
            "random_layout0",
            ("PROPTEST_CASES", "500"),
        ),
        (
            "storage-tests",
            "integration",
            "store_processes",
            ("PRODIGY_FAULTS_EXHAUSTIVE", "1"),
        ),
    ] {
        eprintln!("== {pkg} {filter} ({}={})", env.0, env.1);
        let out = cargo()
            .args([
                "test",
                "--quiet",
                "--package",
                pkg,
                "--test",
                test,
                filter,
                "--",
                "--nocapture",
                "--test-threads=2",
            ])
            .env(env.0, env.1)
            .current_dir(&root)
            .output()
            .context("cannot run cargo test")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        summary.extend(
            text.lines()
                .filter(|l| l.starts_with("faults:") || l.starts_with("SKIP:"))
                .map(str::to_owned),
        );
        summary.extend(
            text.lines()
                .filter(|l| l.starts_with("test result:"))
                .map(|l| format!("{pkg} {filter}: {l}")),
        );
        if !out.status.success() {
            eprintln!("{text}");
            bail!("the exhaustive {filter} tier failed");
        }
    }
    println!("{}", summary.join("\n"));
    Ok(())
}

pub fn run_fuzz(args: &[String]) -> Result<()> {
    let seconds: u64 = args
        .first()
        .map_or(Ok(60), |s| s.parse())
        .context("fuzz takes a number of seconds")?;
    let fuzz = root().join("fuzz");
    for target in ["event_lines", "legacy_json", "records", "store_events"] {
        eprintln!("== fuzz {target} for {seconds}s");
        // New inputs go to a scratch corpus; the committed one stays small.
        let scratch = crate::target_dir(&root()).join("fuzz-corpus").join(target);
        fs_err::create_dir_all(&scratch)?;
        let corpus = fuzz.join("corpus").join(target);
        let status = Command::new("cargo")
            .args(["+nightly", "fuzz", "run", target])
            .arg(&scratch)
            .arg(&corpus)
            .args([
                "--",
                &format!("-max_total_time={seconds}"),
                "-rss_limit_mb=512",
                "-max_len=65536",
            ])
            .current_dir(&fuzz)
            .status()
            .context(
                "cannot run `cargo +nightly fuzz` (install cargo-fuzz and a nightly toolchain)",
            )?;
        if !status.success() {
            bail!("fuzz target {target} found a failure; see fuzz/artifacts/{target}/");
        }
    }
    Ok(())
}

//! `cargo xtask`: project chores, run through the `.cargo/config.toml` alias.
//!
//! Depends on no workspace crate: it drives `cargo`, `git` and the built
//! binaries, as a user would.

mod bench;
mod demo;
mod faults;
mod postgres;
mod size;
mod tidy;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

const HELP: &str = "
cargo xtask <task>

tasks:
  demo                       copy samples/legacy-project into target/demo/ and migrate it
  size [--json] [--check] [--baseline REV]
                             release binary size with and without the legacy import
  tidy                       dependency edges, module docs, no unwrap, reasons on allows
  bench [--json]             the store and migration benchmarks, one table of ratios
  assets [DIR]               shell completions and the man pages (default: target/assets)
  faults                     the exhaustive fault tier (every syscall index, many kills, 500 random trees)
  fuzz [SECONDS]             each fuzz target for SECONDS (default 60); needs cargo-fuzz and nightly
  test-postgres [--bench] [-- ARGS]
                             the PostgreSQL store's tests (or benchmarks) against a throwaway server
";

/// Runs the task; an error is printed as its message and causes, never as
/// `anyhow`'s `Debug` form (which adds a backtrace under `RUST_BACKTRACE=1`).
fn main() -> std::process::ExitCode {
    match run_task() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_task() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest = args.get(1..).unwrap_or_default();
    match args.first().map(String::as_str) {
        Some("demo") => demo::run_demo(),
        Some("size") => size::run_size(rest),
        Some("tidy") => {
            let problems = tidy::check(&root())?;
            if problems.is_empty() {
                println!("tidy: ok");
                Ok(())
            } else {
                bail!(
                    "tidy found {} problem(s):\n  {}",
                    problems.len(),
                    problems.join("\n  ")
                )
            }
        }
        Some("bench") => bench::run_bench(rest),
        Some("faults") => faults::run_faults(),
        Some("fuzz") => faults::run_fuzz(rest),
        Some("test-postgres") => postgres::run_test_postgres(rest),
        Some("assets") => {
            let root = root();
            let dir = rest
                .first()
                .map_or_else(|| target_dir(&root).join("assets"), PathBuf::from);
            run(cargo()
                .args([
                    "run",
                    "--quiet",
                    "--package",
                    "storage-cli",
                    "--bin",
                    "prodigy-storage-assets",
                    "--",
                ])
                .arg(&dir)
                .current_dir(&root))
        }
        Some("help" | "--help" | "-h") | None => {
            println!("{}", HELP.trim());
            Ok(())
        }
        Some(other) => bail!("unknown task `{other}`\n\n{}", HELP.trim()),
    }
}

/// The workspace root (xtask lives one level below it).
#[must_use]
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_owned()
}

/// `cargo`, as the one running this task.
#[must_use]
pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Runs `cmd`, failing with its command line if it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// Runs `cmd` and returns its stdout.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed with {}:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The target directory, honouring `CARGO_TARGET_DIR` (as cargo does).
#[must_use]
pub fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            if d.is_absolute() { d } else { root.join(d) }
        }
        None => root.join("target"),
    }
}

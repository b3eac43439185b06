//! Shared support for the cross-crate integration tests.
//!
//! - [`Sandbox`]: a scratch directory with a fake home, a store root and a
//!   project directory; nothing touches the real home.
//! - [`tree`]: a stable text listing of a directory tree (types, modes,
//!   link targets) for insta snapshots, with the sandbox path redacted.
//! - The `store-worker` binary in this crate is the other process in
//!   multi-process tests (`env!("CARGO_BIN_EXE_store-worker")` in tests).
//! - [`skip`]: a test that cannot run here (no root, no `strace`) says so
//!   where `cargo test` shows it, and fails under `PRODIGY_REQUIRE_ALL_TESTS=1`.

pub mod fixture;
pub mod layout0;

/// Marks the calling test as not run here, for `reason` (what is missing):
/// prints `SKIP: <test>: <reason>` where the default `cargo test` output
/// shows it, and returns so the test can `return`.
///
/// libtest captures `print!`/`eprint!` of a passing test, so the line is
/// written straight to the process's stderr, which it does not capture.
///
/// # Panics
/// Under `PRODIGY_REQUIRE_ALL_TESTS=1` (CI sets it where root, `strace` and
/// mounts are available): a test CI means to run must not pass by skipping.
pub fn skip(reason: &str) {
    assert!(
        std::env::var_os("PRODIGY_REQUIRE_ALL_TESTS").is_none_or(|v| v != "1"),
        "this test would be skipped ({reason}), but PRODIGY_REQUIRE_ALL_TESTS=1 requires every test to run"
    );
    announce_skip(reason);
}

/// Like [`skip`] for a test that belongs to a longer tier than the one
/// running (e.g. `PRODIGY_FAULTS_EXHAUSTIVE=1`): printed, never an error.
pub fn skip_outside_tier(reason: &str) {
    announce_skip(reason);
}

fn announce_skip(reason: &str) {
    use std::io::Write as _;
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("a test");
    let _ = writeln!(std::io::stderr().lock(), "SKIP: {name}: {reason}");
}

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A scratch area: `<tmp>/home`, `<tmp>/home/.prodigy` (the store), `<tmp>/project`.
pub struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    /// A fresh sandbox with `home/` and `project/` created.
    ///
    /// # Panics
    /// If the temp directory cannot be created.
    #[must_use]
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("prodigy-test-")
            .tempdir()
            .expect("create sandbox");
        fs_err::create_dir_all(dir.path().join("home")).expect("home");
        fs_err::create_dir_all(dir.path().join("project")).expect("project");
        Self { dir }
    }

    /// The sandbox directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The fake home directory.
    #[must_use]
    pub fn home(&self) -> PathBuf {
        self.path().join("home")
    }

    /// The store root (`home/.prodigy`).
    #[must_use]
    pub fn store(&self) -> PathBuf {
        self.home().join(".prodigy")
    }

    /// The project directory.
    #[must_use]
    pub fn project(&self) -> PathBuf {
        self.path().join("project")
    }

    /// Replaces the sandbox path in `text` with `[SANDBOX]`.
    #[must_use]
    pub fn redact(&self, text: &str) -> String {
        let canonical = self
            .path()
            .canonicalize()
            .unwrap_or_else(|_| self.path().into());
        text.replace(&*canonical.to_string_lossy(), "[SANDBOX]")
            .replace(&*self.path().to_string_lossy(), "[SANDBOX]")
    }
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

/// A sorted listing of the tree under `root`: one line per entry with its
/// type and mode (`d700`, `f600`, `l -> target`), never following links.
///
/// # Panics
/// If the tree cannot be read.
#[must_use]
pub fn tree(root: &Path) -> String {
    let mut lines = Vec::new();
    walk(root, root, &mut lines);
    lines.sort();
    let mut out = String::new();
    for l in lines {
        writeln!(out, "{l}").expect("write to string");
    }
    out
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for entry in fs_err::read_dir(dir).expect("read dir") {
        let entry = entry.expect("entry");
        let path = entry.path();
        let rel = path
            .strip_prefix(root)
            .expect("under root")
            .display()
            .to_string();
        let meta = fs_err::symlink_metadata(&path).expect("stat");
        let mode = meta.permissions().mode() & 0o777;
        if meta.file_type().is_symlink() {
            let target = fs_err::read_link(&path).expect("readlink");
            out.push(format!("{rel} l -> {}", target.display()));
        } else if meta.is_dir() {
            out.push(format!("{rel}/ d{mode:o}"));
            walk(root, &path, out);
        } else {
            out.push(format!("{rel} f{mode:o} {}B", meta.len()));
        }
    }
}

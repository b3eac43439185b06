//! Running the binary in a sandbox, redactions, tree comparisons.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub use storage_tests::fixture::{self, snapshot};
pub use storage_tests::{Sandbox, skip, skip_outside_tier};

/// The binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_prodigy-storage"))
}

/// `prodigy-storage --home <store> <args>` run in `cwd`, with a fake HOME.
pub fn cmd(sb: &Sandbox, cwd: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.arg("--home")
        .arg(sb.store())
        .args(args)
        .current_dir(cwd)
        .env("HOME", sb.home())
        .env_remove("PRODIGY_HOME")
        .env_remove("PRODIGY_STORE")
        .env_remove("PRODIGY_STORAGE_CRASH_AT")
        .env_remove("PRODIGY_STORAGE_FAULT")
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1");
    c
}

/// Runs and returns the output; panics with both streams if the exit status is not `ok`.
pub fn run(sb: &Sandbox, args: &[&str], ok: bool) -> Output {
    let out = cmd(sb, &sb.project(), args)
        .output()
        .expect("run prodigy-storage");
    assert_eq!(
        out.status.success(),
        ok,
        "prodigy-storage {args:?} exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs with `--json` and parses stdout.
pub fn run_json(sb: &Sandbox, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    json_of(&run(sb, &all, true))
}

/// The one JSON document of a successful run (panics with its stderr otherwise).
pub fn json_of(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON document")
}

/// A sandbox holding the fixture project.
pub fn fixture_sandbox() -> Sandbox {
    let sb = Sandbox::new();
    fixture::legacy_project(&sb.project());
    sb
}

/// Redacts the sandbox path and transaction ids (`YYYYmmddTHHMMSSZ-xxxxxx`) and timestamps.
pub fn redact(sb: &Sandbox, text: &str) -> String {
    let text = sb.redact(text);
    let mut out = String::with_capacity(text.len());
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if is_txid(&bytes[i..]) {
            out.push_str("[TXID]");
            i += 23;
        } else if let Some(n) = timestamp_len(&bytes[i..]) {
            out.push_str("[TIME]");
            i += n;
        } else {
            let ch = text[i..].chars().next().expect("char");
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

fn is_txid(b: &[u8]) -> bool {
    // 20261129T195202Z-8af951
    b.len() >= 23
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'Z'
        && b[16] == b'-'
        && b[17..23].iter().all(u8::is_ascii_hexdigit)
}

fn timestamp_len(b: &[u8]) -> Option<usize> {
    // 2026-11-29T19:52:02.716114Z (only the store's own, current-year times)
    (b.len() >= 27
        && b.starts_with(b"20")
        && b[4] == b'-'
        && b[10] == b'T'
        && b[26] == b'Z'
        && !b.starts_with(b"2025-"))
    .then_some(27)
}

/// Every file under `root` with content, for "nothing lost" checks: (relative path, bytes).
pub fn files(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    snapshot(root)
        .into_iter()
        .filter_map(|(p, n)| n.content.map(|c| (p, c)))
        .collect()
}

/// Asserts two snapshots are equal, naming only the paths that differ.
#[track_caller]
pub fn assert_same_tree(
    a: &std::collections::BTreeMap<PathBuf, fixture::Node>,
    b: &std::collections::BTreeMap<PathBuf, fixture::Node>,
    what: &str,
) {
    let mut diff = Vec::new();
    for (k, v) in a {
        match b.get(k) {
            None => diff.push(format!("only in the first: {}", k.display())),
            Some(w) if w != v => diff.push(format!(
                "differs: {} ({} {:o} {}B vs {} {:o} {}B)",
                k.display(),
                v.kind,
                v.mode,
                v.size,
                w.kind,
                w.mode,
                w.size
            )),
            Some(_) => {}
        }
    }
    for k in b.keys().filter(|k| !a.contains_key(*k)) {
        diff.push(format!("only in the second: {}", k.display()));
    }
    assert!(diff.is_empty(), "{what}:\n  {}", diff.join("\n  "));
}

/// A snapshot without the store's lock files, whose holder text changes on every run.
pub fn snapshot_without_locks(root: &Path) -> std::collections::BTreeMap<PathBuf, fixture::Node> {
    snapshot(root)
        .into_iter()
        .filter(|(p, _)| !p.components().any(|c| c.as_os_str() == "locks"))
        .collect()
}

/// A tmpfs for the test's lifetime, or `None` (printed) where mounting is not allowed.
pub struct Mount(PathBuf);

impl Mount {
    pub fn tmpfs(at: &Path, size: &str) -> Option<Self> {
        fs_err::create_dir_all(at).expect("mkdir");
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Self(at.to_owned())).or_else(|| {
            skip("cannot mount a tmpfs here (needs root)");
            None
        })
    }

    /// A read-write bind mount of `src` at `at`: the same file system
    /// reached through another mount, where `rename` across says `EXDEV`
    /// although `st_dev` is equal (docker volumes, bind-mounted projects).
    pub fn bind(src: &Path, at: &Path) -> Option<Self> {
        fs_err::create_dir_all(at).expect("mkdir");
        let ok = std::process::Command::new("mount")
            .arg("--bind")
            .arg(src)
            .arg(at)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Self(at.to_owned())).or_else(|| {
            skip("cannot make a bind mount here (needs root)");
            None
        })
    }

    pub fn read_only_bind(src: &Path, at: &Path) -> Option<Self> {
        fs_err::create_dir_all(at).expect("mkdir");
        let ok = std::process::Command::new("mount")
            .arg("--bind")
            .arg(src)
            .arg(at)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
            && std::process::Command::new("mount")
                .args(["-o", "remount,bind,ro"])
                .arg(at)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
        if ok {
            Some(Self(at.to_owned()))
        } else {
            let _ = std::process::Command::new("umount").arg(at).status();
            skip("cannot make a read-only bind mount here (needs root)");
            None
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

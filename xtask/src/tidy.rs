//! `cargo xtask tidy` (also a `#[test]`, so plain `cargo test` runs it):
//! the rules in ARCHITECTURE.md that a compiler does not check.
//!
//! - dependency edges between workspace crates (`storage-core` depends on no
//!   workspace crate; only the CLI and the test crate depend on all of them;
//!   the async adapter only on the trait, never on a store; the adoption
//!   example on the trait and, for its `dirs` (feature `fs`), the file
//!   store; `xtask` on none);
//! - a `//!` doc at the top of every Rust file;
//! - no `.unwrap()` outside tests;
//! - every clippy `allow` carries a `Reason:`, in code and in `Cargo.toml`;
//! - in `storage-fs`, only `layout.rs` (and `layout0.rs`, the layout
//!   Prodigy's older code wrote, as the store reads it) joins path segments (paths inside a
//!   git repository, marked `// git:`, are not the store's; a temp file's
//!   name beside its target is marked `// sibling:`);
//! - `storage-core` does no I/O (no `std::fs`, no `std::process`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::{cargo, output};

/// The workspace crates each crate may depend on (normal dependencies).
const ALLOWED: &[(&str, &[&str])] = &[
    ("storage-core", &[]),
    ("storage-fs", &["storage-core"]),
    ("storage-migrate", &["storage-core", "storage-fs"]),
    ("storage-tokio", &["storage-core"]),
    // storage-fs: only `dirs`, behind the optional feature `fs`.
    (
        "prodigy-adapter",
        &["storage-core", "storage-tokio", "storage-fs"],
    ),
    ("storage-postgres", &["storage-core"]),
    (
        "storage-cli",
        &[
            "storage-core",
            "storage-fs",
            "storage-migrate",
            "storage-postgres",
        ],
    ),
    (
        "storage-tests",
        &["storage-core", "storage-fs", "storage-migrate"],
    ),
    ("xtask", &[]),
];

/// Every problem found, as one line each (empty: tidy).
pub fn check(root: &Path) -> Result<Vec<String>> {
    let mut problems = edges(root)?;
    for file in rust_files(root)? {
        let text = fs_err::read_to_string(&file)?;
        let rel = file
            .strip_prefix(root)
            .unwrap_or(&file)
            .display()
            .to_string();
        problems.extend(check_file(&rel, &text));
    }
    problems.extend(check_manifest_allows(&fs_err::read_to_string(
        root.join("Cargo.toml"),
    )?));
    Ok(problems)
}

fn edges(root: &Path) -> Result<Vec<String>> {
    let meta = output(
        cargo()
            .args(["metadata", "--format-version", "1", "--no-deps"])
            .current_dir(root),
    )?;
    let meta: serde_json::Value = serde_json::from_str(&meta)?;
    let allowed: BTreeMap<&str, BTreeSet<&str>> = ALLOWED
        .iter()
        .map(|(k, v)| (*k, v.iter().copied().collect()))
        .collect();
    let members: BTreeSet<String> = meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect();
    let mut problems = Vec::new();
    for p in meta["packages"].as_array().into_iter().flatten() {
        let name = p["name"].as_str().unwrap_or_default();
        let Some(ok) = allowed.get(name) else {
            problems.push(format!("{name}: a workspace crate tidy does not know; add it to ALLOWED in xtask/src/tidy.rs"));
            continue;
        };
        for d in p["dependencies"].as_array().into_iter().flatten() {
            let dep = d["name"].as_str().unwrap_or_default();
            let normal = d["kind"].is_null();
            if members.contains(dep) && normal && !ok.contains(dep) {
                problems.push(format!(
                    "{name} depends on {dep}, which ARCHITECTURE.md does not allow"
                ));
            }
            if name == "xtask" && members.contains(dep) {
                problems.push(format!("xtask depends on the workspace crate {dep}"));
            }
        }
    }
    Ok(problems)
}

fn rust_files(root: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = ["crates", "tests", "xtask"]
        .iter()
        .map(|d| root.join(d))
        .collect();
    while let Some(dir) = stack.pop() {
        for e in fs_err::read_dir(&dir)? {
            let path = e?.path();
            if path.is_dir() {
                if !path.ends_with("snapshots") {
                    stack.push(path);
                }
            } else if path.extension().is_some_and(|x| x == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The rules for one file's text (`rel` is for messages).
fn check_file(rel: &str, text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let first = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("#![") && !l.starts_with("// Reason:"));
    if !first.is_some_and(|l| l.starts_with("//!")) {
        problems.push(format!(
            "{rel}: starts without a `//!` doc saying what the module is for"
        ));
    }
    let test_file =
        rel.ends_with("/tests.rs") || rel.contains("/tests/") || rel.contains("/benches/");
    let layout_rule = rel.starts_with("crates/storage-fs/src/")
        && !rel.ends_with("/layout.rs")
        && !rel.ends_with("/layout0.rs")
        && !test_file;
    let no_io_rule = rel.starts_with("crates/storage-core/src/");
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.trim_start().starts_with("#[cfg(test)]") {
            break; // the rest of the file is tests
        }
        let code = line.split("//").next().unwrap_or_default();
        if layout_rule
            && outside_strings(code, ".join(")
            && !line.contains("// sibling:")
            && !line.contains("// git:")
            && !line.trim_start().starts_with("//")
        {
            problems.push(format!(
                "{rel}:{}: joins a path outside layout.rs; add a `Layout` method",
                i + 1
            ));
        }
        if no_io_rule && (outside_strings(code, "std::fs") || outside_strings(code, "std::process"))
        {
            problems.push(format!("{rel}:{}: storage-core does no I/O", i + 1));
        }
        if !test_file && outside_strings(code, ".unwrap()") {
            problems.push(format!(
                "{rel}:{}: `.unwrap()` outside tests; return the error or `expect` the invariant",
                i + 1
            ));
        }
    }
    for (i, line) in lines.iter().enumerate() {
        if outside_strings(line, "allow(clippy::") {
            let here = line.contains("Reason:");
            let above = i > 0 && lines[i - 1].contains("Reason:");
            if !here && !above {
                problems.push(format!(
                    "{rel}:{}: a clippy allow without a `// Reason:`",
                    i + 1
                ));
            }
        }
    }
    problems
}

/// Whether `needle` occurs in `code` outside a string literal (an even number
/// of `"` before it; good enough for this workspace's code).
fn outside_strings(code: &str, needle: &str) -> bool {
    code.match_indices(needle)
        .any(|(at, _)| code[..at].matches('"').count().is_multiple_of(2))
}

fn check_manifest_allows(manifest: &str) -> Vec<String> {
    let lines: Vec<&str> = manifest.lines().collect();
    let mut problems = Vec::new();
    let mut in_clippy = false;
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            in_clippy = t == "[workspace.lints.clippy]";
            continue;
        }
        if in_clippy && t.ends_with("= \"allow\"") {
            let reason = lines[..i]
                .iter()
                .rev()
                .take_while(|l| l.trim_start().starts_with('#'))
                .any(|l| l.contains("Reason:"));
            if !reason {
                problems.push(format!(
                    "Cargo.toml:{}: `{t}` without a `# Reason:` comment above it",
                    i + 1
                ));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workspace_is_tidy() {
        let problems = check(&crate::root()).expect("tidy runs");
        assert!(
            problems.is_empty(),
            "cargo xtask tidy:\n  {}",
            problems.join("\n  ")
        );
    }

    #[test]
    fn each_rule_catches_what_it_is_for() {
        let bad = "use x;\nfn f() { a.unwrap(); }\n#[allow(clippy::foo)]\nfn g() {}\n";
        let p = check_file("crates/a/src/lib.rs", bad);
        assert_eq!(p.len(), 3, "{p:?}");
        let ok = "//! Docs.\n// Reason: because.\n#[allow(clippy::foo)]\nfn g() { x.expect(\"y\"); }\n#[cfg(test)]\nmod tests { fn t() { a.unwrap(); } }\n";
        assert!(check_file("crates/a/src/lib.rs", ok).is_empty());
        assert!(
            check_file(
                "crates/a/src/x/tests.rs",
                "//! T.\nfn t() { a.unwrap(); }\n"
            )
            .is_empty()
        );
        let p = check_file(
            "crates/storage-fs/src/store.rs",
            "//! S.\nfn f() {\n    a.join(x);\n    b.join(c); // sibling: ok\n}\n",
        );
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            check_file(
                "crates/storage-fs/src/layout.rs",
                "//! L.\nfn f() { a.join(b); }\n"
            )
            .is_empty()
        );
        assert_eq!(
            check_file("crates/storage-core/src/x.rs", "//! X.\nuse std::fs;\n").len(),
            1
        );
        let manifest = "[workspace.lints.clippy]\npedantic = { level = \"warn\" }\nfoo = \"allow\"\n# Reason: fine.\nbar = \"allow\"\n";
        let p = check_manifest_allows(manifest);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("foo"));
    }
}

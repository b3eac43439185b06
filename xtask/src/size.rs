//! `cargo xtask size`: what the legacy import costs in the release binary.
//!
//! Builds `prodigy-storage` in release twice, with and without the
//! `legacy-import` feature, and reports the file size, the stripped size,
//! the `.text` size and each workspace crate's share of `.text` (attributed
//! from the symbol table: a symbol belongs to the first workspace crate its
//! demangled name mentions). `--baseline REV` builds another revision in a
//! temporary git worktree and compares; `--check` fails when the stripped
//! binary grows past the budget in `xtask/size-budget.json`. Every run also
//! checks that the binary it measures, the one users get, has no test hooks
//! (see `check_no_test_hooks`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{cargo, output, root, run, target_dir};

/// Workspace crates as they appear in symbol names, and their package names.
const CRATES: [(&str, &str); 5] = [
    ("storage_core", "storage-core"),
    ("storage_fs", "storage-fs"),
    ("storage_migrate", "storage-migrate"),
    ("storage_cli", "storage-cli"),
    ("prodigy_storage", "storage-cli"),
];

/// The sizes of one build.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sizes {
    /// The binary as built.
    pub file: u64,
    /// After `strip`.
    pub stripped: u64,
    /// The `.text` section.
    pub text: u64,
    /// `.text` bytes per workspace crate, plus `dependencies and std`.
    pub crates: BTreeMap<String, u64>,
}

pub fn run_size(args: &[String]) -> Result<()> {
    let json = args.iter().any(|a| a == "--json");
    let check = args.iter().any(|a| a == "--check");
    let baseline = args
        .iter()
        .position(|a| a == "--baseline")
        .map(|i| args.get(i + 1).context("--baseline needs a git revision"))
        .transpose()?;
    let root = root();
    let target = target_dir(&root);
    let shipped = build(&root, &target, true, "with")?;
    check_no_test_hooks(&shipped, &target.join("xtask-size/hooks-check"))?;
    let with = measure(&shipped)?;
    let without = measure(&build(&root, &target, false, "without")?)?;
    let base = match baseline {
        Some(rev) => Some((rev.clone(), measure_revision(&root, &target, rev)?)),
        None => None,
    };
    if json {
        println!("{}", to_json(&with, &without, base.as_ref()));
    } else {
        print!("{}", render(&with, &without, base.as_ref()));
    }
    if check {
        let budget = read_budget(&root)?;
        if with.stripped > budget {
            bail!(
                "prodigy-storage is {} bytes stripped, over the budget of {budget} in xtask/size-budget.json; \
                 find what grew (`cargo xtask size`), or raise the budget in the same commit with a reason",
                with.stripped
            );
        }
        println!("size check: {} <= budget {budget} bytes", with.stripped);
    }
    Ok(())
}

/// The test hooks' environment variables (`docs/reliability.md`).
/// (`PRODIGY_STORAGE_PAUSE_AT` needs `PRODIGY_STORAGE_PAUSE_FILE` too, and
/// would only delay: its name is what is checked.)
const TEST_HOOKS: [(&str, &str); 3] = [
    ("PRODIGY_STORAGE_CRASH_AT", "after-verify"),
    ("PRODIGY_STORAGE_FAULT", "corrupt-staged"),
    ("PRODIGY_STORAGE_PAUSE_AT", "before-verify"),
];

/// The binary users get must not obey the test hooks, which only test
/// builds have (`storage-migrate/fault-injection`): neither variable's name
/// is in it (the code that reads them compiled to nothing), and with each
/// one set, a tiny legacy project in `scratch` still migrates normally.
fn check_no_test_hooks(bin: &Path, scratch: &Path) -> Result<()> {
    let bytes = fs_err::read(bin)?;
    for (name, _) in TEST_HOOKS {
        if bytes.windows(name.len()).any(|w| w == name.as_bytes()) {
            bail!(
                "`{}` reads the test hook `{name}`: the release build has the \
                 `fault-injection` feature of storage-migrate; find what turns it on \
                 (`cargo tree -e features -i storage-migrate`)",
                bin.display()
            );
        }
    }
    if scratch.exists() {
        fs_err::remove_dir_all(scratch)?;
    }
    for (name, value) in TEST_HOOKS {
        let project = scratch.join(name);
        let log = project.join(".prodigy/mapreduce/events/global/events.jsonl");
        fs_err::create_dir_all(log.parent().context("a parent")?)?;
        fs_err::write(&log, "{\"event\":{\"job_id\":\"mapreduce-1\"}}\n")?;
        let out = Command::new(bin)
            .arg("--home")
            .arg(scratch.join("store"))
            .args(["migrate", "--json"])
            .arg(&project)
            .env(name, value)
            .env("HOME", scratch)
            .env_remove("PRODIGY_HOME")
            .output()
            .with_context(|| format!("cannot run `{}`", bin.display()))?;
        let report: Option<serde_json::Value> = serde_json::from_slice(&out.stdout).ok();
        if !out.status.success()
            || report.as_ref().map(|r| &r["outcome"]) != Some(&"migrated".into())
        {
            bail!(
                "`{}` obeyed the test hook {name}={value} (exit {}): the binary users get \
                 must ignore it\n{}",
                bin.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    fs_err::remove_dir_all(scratch)?;
    eprintln!("test hooks: absent from the release binary and ignored at run time");
    Ok(())
}

fn read_budget(root: &Path) -> Result<u64> {
    let path = root.join("xtask/size-budget.json");
    let text = fs_err::read_to_string(&path)?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("`{}` is not JSON", path.display()))?;
    v["max_stripped_bytes"]
        .as_u64()
        .with_context(|| format!("`{}` has no integer `max_stripped_bytes`", path.display()))
}

/// Builds the release binary and copies it to `target/xtask-size/<name>`.
fn build(workspace: &Path, target: &Path, legacy: bool, name: &str) -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args([
        "build",
        "--release",
        "--quiet",
        "--package",
        "storage-cli",
        "--bin",
        "prodigy-storage",
    ])
    .arg("--target-dir")
    .arg(target)
    .current_dir(workspace);
    if !legacy {
        cmd.arg("--no-default-features");
    }
    run(&mut cmd)?;
    let out_dir = target.join("xtask-size");
    fs_err::create_dir_all(&out_dir)?;
    let copy = out_dir.join(format!("prodigy-storage-{name}"));
    fs_err::copy(target.join("release/prodigy-storage"), &copy)?;
    Ok(copy)
}

fn measure_revision(root: &Path, target: &Path, rev: &str) -> Result<Sizes> {
    let tree = target.join("xtask-size/baseline-worktree");
    let _ = Command::new("git")
        .args(["worktree", "remove", "--force"])
        .arg(&tree)
        .current_dir(root)
        .status();
    run(Command::new("git")
        .args(["worktree", "add", "--detach", "--quiet"])
        .arg(&tree)
        .arg(rev)
        .current_dir(root))?;
    let result = build(
        &tree,
        &target.join("xtask-size/baseline-target"),
        true,
        "baseline",
    )
    .and_then(|b| measure(&b));
    let _ = Command::new("git")
        .args(["worktree", "remove", "--force"])
        .arg(&tree)
        .current_dir(root)
        .status();
    result.with_context(|| format!("cannot measure revision {rev}"))
}

/// Sizes of the binary at `bin`.
fn measure(bin: &Path) -> Result<Sizes> {
    let file = fs_err::metadata(bin)?.len();
    let stripped_copy = bin.with_extension("stripped");
    fs_err::copy(bin, &stripped_copy)?;
    run(Command::new("strip").arg(&stripped_copy))?;
    let stripped = fs_err::metadata(&stripped_copy)?.len();
    let text = output(Command::new("size").arg("-A").arg(bin))?
        .lines()
        .find_map(|l| {
            let mut it = l.split_whitespace();
            (it.next() == Some(".text"))
                .then(|| it.next().and_then(|s| s.parse().ok()))
                .flatten()
        })
        .context("`size -A` shows no .text section")?;
    let symbols = output(
        Command::new("nm")
            .args(["-S", "--size-sort", "-C"])
            .arg(bin),
    )?;
    Ok(Sizes {
        file,
        stripped,
        text,
        crates: attribute(&symbols),
    })
}

/// `.text` bytes per crate from `nm -S --size-sort -C` output.
fn attribute(nm: &str) -> BTreeMap<String, u64> {
    let mut out: BTreeMap<String, u64> = BTreeMap::new();
    for line in nm.lines() {
        let mut it = line.splitn(4, ' ');
        let (_, size, kind, name) = (it.next(), it.next(), it.next(), it.next());
        let (Some(size), Some(kind), Some(name)) = (size, kind, name) else {
            continue;
        };
        if !matches!(kind, "t" | "T") {
            continue;
        }
        let Ok(size) = u64::from_str_radix(size, 16) else {
            continue;
        };
        let owner = CRATES
            .iter()
            .filter_map(|(sym, pkg)| name.find(&format!("{sym}::")).map(|at| (at, *pkg)))
            .min()
            .map_or("dependencies and std", |(_, pkg)| pkg);
        *out.entry(owner.to_owned()).or_default() += size;
    }
    out
}

fn pct(diff: i128, of: u64) -> String {
    if of == 0 {
        return "n/a".to_owned();
    }
    #[allow(clippy::cast_precision_loss)] // Reason: a percentage of byte counts far below 2^52.
    let p = diff as f64 * 100.0 / of as f64;
    format!("{p:+.1}%")
}

fn row(out: &mut String, label: &str, a: u64, b: u64) {
    let diff = i128::from(b) - i128::from(a);
    let _ = writeln!(
        out,
        "{label:<24} {a:>14} {b:>14} {diff:>+12} {:>8}",
        pct(diff, a)
    );
}

/// The human report (snapshot-tested).
pub fn render(with: &Sizes, without: &Sizes, baseline: Option<&(String, Sizes)>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "prodigy-storage, release build, bytes");
    let _ = writeln!(
        out,
        "{:<24} {:>14} {:>14} {:>12} {:>8}",
        "", "with legacy", "without", "difference", ""
    );
    row(&mut out, "file size", with.file, without.file);
    row(&mut out, "stripped size", with.stripped, without.stripped);
    row(&mut out, ".text", with.text, without.text);
    let mut names: Vec<&String> = with.crates.keys().chain(without.crates.keys()).collect();
    names.sort();
    names.dedup();
    for name in names {
        let a = with.crates.get(name).copied().unwrap_or(0);
        let b = without.crates.get(name).copied().unwrap_or(0);
        row(&mut out, &format!("  {name}"), a, b);
    }
    let saved = i128::from(with.stripped) - i128::from(without.stripped);
    let _ = writeln!(
        out,
        "removing the legacy import saves {saved} bytes of the stripped binary ({})",
        pct(-saved, with.stripped)
    );
    if let Some((rev, base)) = baseline {
        let _ = writeln!(out, "\ncompared with {rev} (with legacy import):");
        row(&mut out, "stripped size", base.stripped, with.stripped);
        row(&mut out, ".text", base.text, with.text);
    }
    out
}

fn sizes_json(s: &Sizes) -> serde_json::Value {
    serde_json::json!({"file_bytes": s.file, "stripped_bytes": s.stripped, "text_bytes": s.text, "crates": s.crates})
}

/// The `--json` document.
pub fn to_json(
    with: &Sizes,
    without: &Sizes,
    baseline: Option<&(String, Sizes)>,
) -> serde_json::Value {
    let mut v = serde_json::json!({
        "with_legacy_bytes": with.stripped,
        "without_legacy_bytes": without.stripped,
        "difference_bytes": i128::from(with.stripped) - i128::from(without.stripped),
        "with_legacy": sizes_json(with),
        "without_legacy": sizes_json(without),
    });
    if let Some((rev, base)) = baseline {
        v["baseline"] = serde_json::json!({"revision": rev, "sizes": sizes_json(base)});
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes(scale: u64) -> Sizes {
        Sizes {
            file: 5_000_000 * scale,
            stripped: 2_000_000 * scale,
            text: 1_500_000 * scale,
            crates: [
                ("storage-core".to_owned(), 20_000 * scale),
                ("storage-migrate".to_owned(), 150_000 * scale),
                ("dependencies and std".to_owned(), 1_200_000),
            ]
            .into_iter()
            .collect(),
        }
    }

    #[test]
    fn symbols_are_attributed_to_the_first_workspace_crate_they_name() {
        let nm = "\
0000000000001000 0000000000000010 T storage_migrate::protocol::Tx::publish
0000000000002000 0000000000000020 t <storage_fs::FsStorage as storage_core::Storage>::put
0000000000003000 0000000000000040 T core::ptr::drop_in_place<storage_migrate::manifest::Manifest>
0000000000004000 0000000000000080 T serde_json::de::from_slice
0000000000005000 0000000000000100 D some_data
0000000000006000 0000000000000200 T prodigy_storage::main
";
        let got = attribute(nm);
        assert_eq!(got["storage-migrate"], 0x10 + 0x40);
        assert_eq!(got["storage-fs"], 0x20);
        assert_eq!(got["dependencies and std"], 0x80);
        assert_eq!(got["storage-cli"], 0x200);
        assert!(
            !got.contains_key("storage-core"),
            "the first crate named wins"
        );
    }

    #[test]
    fn the_report_format_is_stable() {
        // Sizes are synthetic (a real build takes minutes); the format is what is pinned.
        let with = sizes(2);
        let mut without = sizes(1);
        without.crates.remove("storage-migrate");
        let base = ("main~3".to_owned(), sizes(1));
        insta::assert_snapshot!(render(&with, &without, Some(&base)));
        insta::assert_snapshot!(
            serde_json::to_string_pretty(&to_json(&with, &without, None)).expect("json")
        );
    }
}

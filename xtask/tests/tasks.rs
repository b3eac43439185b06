//! The tasks as a contributor runs them: the real `xtask` binary, which
//! drives a real (nested) `cargo` on this workspace.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_owned()
}

/// `cargo`, as the one running these tests.
fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn xtask(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("run xtask")
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn an_error_is_its_message_without_a_backtrace_even_under_rust_backtrace() {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("no-such-task")
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run xtask");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("error: unknown task `no-such-task`"),
        "{stderr}"
    );
    assert!(!stderr.contains("backtrace"), "{stderr}");
}

#[test]
fn assets_writes_the_completions_and_man_pages() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = xtask(&["assets", dir.path().to_str().expect("utf-8 tmp")]);
    assert!(out.status.success(), "{}", text(&out));
    for f in [
        "prodigy-storage.bash",
        "_prodigy-storage",
        "prodigy-storage.fish",
        "prodigy-storage.1",
        "prodigy-storage-migrate.1",
    ] {
        assert!(dir.path().join(f).is_file(), "no {f}:\n{}", text(&out));
    }
    // The pages say what a man page says, and print as written.
    let top = fs_err::read_to_string(dir.path().join("prodigy-storage.1")).expect("page");
    for section in [
        ".SH ENVIRONMENT",
        ".SH \"EXIT STATUS\"",
        ".SH EXAMPLES\n.nf\n",
    ] {
        assert!(
            top.contains(section),
            "no {section:?} in prodigy-storage.1:\n{top}"
        );
    }
    assert!(
        top.contains("PRODIGY_HOME") && top.contains("PRODIGY_STORE"),
        "{top}"
    );
    for page in fs_err::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").path())
    {
        if page.extension().is_some_and(|e| e == "1") {
            let text = fs_err::read_to_string(&page).expect("page");
            assert!(
                !text.contains('`'),
                "a literal backtick in {}",
                page.display()
            );
            assert!(text.contains(".SH \"EXIT STATUS\""), "{}", page.display());
        }
    }
}

#[test]
fn cargo_run_of_the_cli_package_runs_prodigy_storage() {
    let out = cargo()
        .args([
            "run",
            "--quiet",
            "--package",
            "storage-cli",
            "--",
            "--version",
        ])
        .current_dir(root())
        .output()
        .expect("run cargo");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("prodigy-storage "),
        "{}",
        text(&out)
    );
}

#[test]
fn demo_says_it_is_building_before_the_build() {
    let out = xtask(&["demo"]);
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("building prodigy-storage"),
        "a cold build would be a silent minute:\n{stderr}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Migrated 25 legacy storage file(s)"),
        "{}",
        text(&out)
    );
}

#[test]
fn the_readme_starts_with_the_newcomer_commands_and_ci_runs_its_install_line() {
    let readme = fs_err::read_to_string(root().join("README.md")).expect("README");
    let first_block: Vec<&str> = readme
        .lines()
        .skip_while(|l| !l.starts_with("```"))
        .skip(1)
        .take_while(|l| !l.starts_with("```"))
        .collect();
    assert!(
        first_block[0].starts_with("cargo xtask demo "),
        "{first_block:?}"
    );
    assert!(
        first_block[1].starts_with("cargo test --workspace --locked "),
        "{first_block:?}"
    );
    let install = "cargo install --locked --path crates/storage-cli";
    assert!(
        readme.contains(&format!("{install}   #")),
        "the README says how to install"
    );
    let ci = fs_err::read_to_string(root().join(".ci/run")).expect(".ci/run");
    assert!(
        ci.lines()
            .any(|l| l.contains(install) && !l.trim_start().starts_with('#')),
        ".ci/run runs the README's install line"
    );
}

#[test]
fn test_postgres_refuses_an_unknown_flag_before_starting_a_server() {
    let out = xtask(&["test-postgres", "--no-such-flag"]);
    assert!(!out.status.success());
    let t = text(&out);
    assert!(t.contains("not `--no-such-flag`"), "{t}");
    assert!(!t.contains("data in"), "a server was started:\n{t}");
}

/// The harness's clean-up when the tests fail: a cargo argument that makes
/// `cargo test` fail at once, after the server started.
///
/// Not part of `cargo test --workspace`: it starts a PostgreSQL server (as
/// root it installs Debian's package first), which nobody expects from the
/// README's test command. `.ci/run` runs it in its PostgreSQL step.
#[test]
#[ignore = "starts a PostgreSQL server (installing it if missing); run with `cargo test -p xtask --test tasks -- --ignored`, as .ci/run does"]
fn test_postgres_stops_and_removes_its_server_when_the_tests_fail() {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let installed = std::fs::read_dir("/usr/lib/postgresql").is_ok_and(|mut d| d.next().is_some());
    if !root && !installed {
        assert!(
            std::env::var_os("PRODIGY_REQUIRE_ALL_TESTS").is_none_or(|v| v != "1"),
            "this test would be skipped (no PostgreSQL server programs, and not root to install them), \
             but PRODIGY_REQUIRE_ALL_TESTS=1 requires every test to run"
        );
        eprintln!(
            "SKIP: test_postgres_stops_and_removes_its_server_when_the_tests_fail: no PostgreSQL server programs, and not root to install them"
        );
        return;
    }
    let out = xtask(&["test-postgres", "--", "--no-such-cargo-flag"]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("tests failed"), "{t}");
    assert!(t.contains("the end of the test server's log"), "{t}");
    let dir = t
        .lines()
        .find_map(|l| l.split_once("data in ").map(|(_, d)| d.trim().to_owned()))
        .unwrap_or_else(|| panic!("no data directory named:\n{t}"));
    assert!(!Path::new(&dir).exists(), "{dir} is left behind");
    // No process runs on that directory any more.
    for proc_dir in std::fs::read_dir("/proc").expect("/proc").flatten() {
        if let Ok(cmdline) = std::fs::read(proc_dir.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            assert!(!cmdline.contains(&dir), "still running on {dir}: {cmdline}");
        }
    }
}

//! A test that cannot run here says so in the default `cargo test` output,
//! and fails instead under `PRODIGY_REQUIRE_ALL_TESTS=1` (what CI sets).
//! Checked by running this very test binary on a test that skips on demand.

use std::process::{Command, Output};

/// Skips when `PRODIGY_TEST_SKIP_ON_DEMAND` is set; otherwise passes. The
/// subject of the tests below, run by them in a child process.
#[test]
fn skips_on_demand() {
    if std::env::var_os("PRODIGY_TEST_SKIP_ON_DEMAND").is_some() {
        storage_tests::skip("asked to skip by the test of skips");
    }
}

fn run_skipping(require_all: bool) -> Output {
    let mut c = Command::new(std::env::current_exe().expect("the test binary"));
    c.args(["skips::skips_on_demand", "--exact", "--test-threads=1"])
        .env("PRODIGY_TEST_SKIP_ON_DEMAND", "1")
        .env_remove("PRODIGY_REQUIRE_ALL_TESTS");
    if require_all {
        c.env("PRODIGY_REQUIRE_ALL_TESTS", "1");
    }
    c.output().expect("run the test binary")
}

#[test]
fn a_skipped_test_is_named_with_its_reason_in_the_default_output() {
    let out = run_skipping(false);
    let all =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("SKIP: skips::skips_on_demand: asked to skip by the test of skips"),
        "the skip is not visible without --nocapture:\n{all}"
    );
}

#[test]
fn under_require_all_tests_a_skip_fails_the_run() {
    let out = run_skipping(true);
    let all =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a skip passed under PRODIGY_REQUIRE_ALL_TESTS=1:\n{all}"
    );
    assert!(all.contains("PRODIGY_REQUIRE_ALL_TESTS=1"), "{all}");
}

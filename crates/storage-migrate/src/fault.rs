//! Named crash points and injected faults, for the fault-injection tests.
//!
//! Every step of the protocol calls `point` with its name. When the test
//! harness has armed that name (the CLI arms it from
//! `PRODIGY_STORAGE_CRASH_AT`), the process aborts right there, as a power cut
//! or `SIGKILL` would stop it: no destructors, no cleanup. The tests then run
//! the real binary again and check the invariants. Unarmed, a point costs one
//! atomic load.
//!
//! [`Fault::CorruptStaged`] flips one byte of the first staged file just
//! before verification, to prove that verification refuses to publish.
//! [`Fault::PauseAt`] holds the process at a point instead, so that a test
//! can act at that exact moment (as an older Prodigy writing would).
//!
//! All of this exists only with the `fault-injection` feature, which test
//! builds turn on (as SQLite compiles its fault hooks only into test builds).
//! Without it ([`ENABLED`] is `false`), [`arm`] does nothing and the crash
//! points compile to nothing: the binary users get cannot be made to abort
//! or corrupt a staged file by its environment.

#[cfg(feature = "fault-injection")]
use std::sync::OnceLock;

/// Whether this build has the hooks (the `fault-injection` feature). The CLI
/// reads the test hooks' environment variables only when it is `true`.
pub const ENABLED: bool = cfg!(feature = "fault-injection");

/// A fault the tests can inject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Abort the process at the named crash point.
    CrashAt(String),
    /// Flip a byte in the first staged output before verification.
    CorruptStaged,
    /// At the named point, create the file and wait while it exists (at
    /// most a minute), then go on.
    PauseAt(String, std::path::PathBuf),
}

#[cfg(feature = "fault-injection")]
static ARMED: OnceLock<Fault> = OnceLock::new();

/// Every crash point, in protocol order (the tests loop over this list).
pub const CRASH_POINTS: &[&str] = &[
    "after-lock",
    "after-journal",
    "mid-staging",
    "before-verify",
    "after-staging",
    "after-verify",
    "mid-publish",
    "after-publish",
    "mid-retire",
    "after-retire",
    "after-commit-journal",
    "mid-rollback-restore",
    "after-rollback-restore",
    "mid-rollback-remove",
    "after-rollback-remove",
];

/// Arms a fault for this process; the first call wins. For tests and the CLI's
/// test hook only. Does nothing without the `fault-injection` feature.
#[doc(hidden)]
pub fn arm(fault: Fault) {
    #[cfg(feature = "fault-injection")]
    let _ = ARMED.set(fault);
    #[cfg(not(feature = "fault-injection"))]
    drop(fault);
}

/// Aborts here if this crash point is armed.
#[cfg(feature = "fault-injection")]
pub(crate) fn point(name: &'static str) {
    debug_assert!(CRASH_POINTS.contains(&name), "unlisted crash point {name}");
    if let Some(Fault::CrashAt(armed)) = ARMED.get()
        && armed == name
    {
        eprintln!("prodigy-storage: crash point `{name}` reached; aborting (test hook)");
        std::process::abort();
    }
    if let Some(Fault::PauseAt(armed, file)) = ARMED.get()
        && armed == name
    {
        let _ = std::fs::write(file, name);
        let start = std::time::Instant::now();
        while file.exists() && start.elapsed() < std::time::Duration::from_secs(60) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

/// A crash point of a build without the hooks: nothing.
#[cfg(not(feature = "fault-injection"))]
#[inline]
pub(crate) fn point(_name: &'static str) {}

/// Whether `fault` is armed.
#[cfg(feature = "fault-injection")]
pub(crate) fn armed(fault: &Fault) -> bool {
    ARMED.get() == Some(fault)
}

/// Whether `fault` is armed: never, in a build without the hooks.
#[cfg(not(feature = "fault-injection"))]
#[inline]
pub(crate) fn armed(_fault: &Fault) -> bool {
    false
}

/// Without the feature (`cargo test -p storage-migrate`), arming is ignored;
/// with it (`cargo test --workspace` turns it on through `storage-cli`'s
/// dev-dependency), the test would abort the harness, so it only exists in
/// the former.
#[cfg(all(test, not(feature = "fault-injection")))]
mod tests {
    use super::*;

    #[test]
    fn without_the_feature_an_armed_crash_point_or_fault_does_nothing() {
        const { assert!(!ENABLED) };
        arm(Fault::CrashAt("after-lock".into()));
        point("after-lock");
        assert!(!armed(&Fault::CrashAt("after-lock".into())));
        assert!(!armed(&Fault::CorruptStaged));
    }
}

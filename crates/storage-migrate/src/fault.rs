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

use std::sync::OnceLock;

/// A fault the tests can inject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Abort the process at the named crash point.
    CrashAt(String),
    /// Flip a byte in the first staged output before verification.
    CorruptStaged,
}

static ARMED: OnceLock<Fault> = OnceLock::new();

/// Every crash point, in protocol order (the tests loop over this list).
pub const CRASH_POINTS: &[&str] = &[
    "after-lock",
    "after-journal",
    "mid-staging",
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
/// test hook only.
#[doc(hidden)]
pub fn arm(fault: Fault) {
    let _ = ARMED.set(fault);
}

/// Aborts here if this crash point is armed.
pub(crate) fn point(name: &'static str) {
    debug_assert!(CRASH_POINTS.contains(&name), "unlisted crash point {name}");
    if let Some(Fault::CrashAt(armed)) = ARMED.get()
        && armed == name
    {
        eprintln!("prodigy-storage: crash point `{name}` reached; aborting (test hook)");
        std::process::abort();
    }
}

/// Whether `fault` is armed.
pub(crate) fn armed(fault: &Fault) -> bool {
    ARMED.get() == Some(fault)
}

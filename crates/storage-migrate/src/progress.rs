//! Progress callbacks, so a front end can draw bars without the library
//! knowing about terminals.

/// A step of a migration or rollback that reports progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Walking the legacy tree and deciding where every file goes (no totals).
    Plan,
    /// Copying legacy files into the staging area (a layout-0 upgrade
    /// links there what moves unchanged); labelled "staging".
    Copy,
    /// Re-reading sources and staged files to compare them.
    Verify,
    /// Moving staged files into the store.
    Publish,
    /// Moving legacy files into the backup.
    Retire,
    /// Restoring legacy files from the backup (rollback).
    Restore,
    /// `copy_store`: copying documents and event logs into another store
    /// (no totals: they are counted as they go); labelled "copying".
    CopyStore,
}

impl Step {
    /// A label for people.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Step::Plan => "planning",
            Step::Copy => "staging",
            Step::Verify => "verifying",
            Step::Publish => "publishing",
            Step::Retire => "backing up",
            Step::Restore => "restoring",
            Step::CopyStore => "copying",
        }
    }
}

/// Receives progress; every method has a no-op default.
pub trait Progress: Sync {
    /// A step starts with this many files and bytes to go.
    fn start(&self, step: Step, files: u64, bytes: u64) {
        let _ = (step, files, bytes);
    }
    /// This many more files and bytes are done.
    fn advance(&self, files: u64, bytes: u64) {
        let _ = (files, bytes);
    }
    /// The step is done.
    fn finish(&self, step: Step) {
        let _ = step;
    }
}

/// Progress that goes nowhere.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {}

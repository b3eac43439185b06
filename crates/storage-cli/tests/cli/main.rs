//! The real `prodigy-storage` binary, driven the way people and Prodigy use it.

// Shared helpers: run the binary in a sandbox, redact paths and ids.
mod support;
// Migrate a real-shaped legacy project; reports, store tree, rollback, re-runs.
mod migrate;
// Refusals: missing projects, worktrees inside the store, the store itself.
mod refusals;
// A crash at every named step of migrate, rollback and recovery.
mod crash;
// Several processes migrating one project at once; project and store on different file systems.
mod concurrency;
// The fault matrix: injected kills and I/O errors, full and read-only disks, real permission denials.
mod faults;
// What a person sees: help texts, progress on a terminal, plain logs, JSON documents.
mod ux;
// The environments users really have: bind mounts, mounts inside the store, an
// old Prodigy writing during the run, two stores, links planted before rollback.
mod environments;
// Upgrading the store an older Prodigy wrote (layout 0), and downgrading it.
mod upgrade;
// Legacy `.prodigy/` left in sub-directories by an old Prodigy run from there.
mod subdirs;
// One root written by two generations of Prodigy: an adversarial review's tests.
mod two_layouts;
// Reading back what the store holds: `show` and `events`.
mod read;
// What the docs say a command prints, checked against the command.
mod docs;

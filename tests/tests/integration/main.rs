//! Cross-crate integration tests: one binary, one module per area.

// Several processes appending, saving, locking and being killed.
mod store_processes;
// Hostile identifiers never become paths outside the store.
mod identifiers;
// Which project owns which repository key.
mod repo_identity;
// The store tree after a scenario, as an insta snapshot.
mod store_tree;

/// The path of the `store-worker` helper binary.
fn worker_bin() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_store-worker"))
}

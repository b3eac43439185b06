//! Cross-crate integration tests: one binary, one module per area.

// Several processes appending, saving, locking and being killed.
mod store_processes;
// Hostile identifiers never become paths outside the store.
mod identifiers;
// Which project owns which repository key.
mod repo_identity;
// The store tree after a scenario, as an insta snapshot.
mod store_tree;
// Prodigy's start-up hook: cheap, concurrent, never failing the caller.
mod auto_migration;
// Legacy files named like the store's temp files are never swept.
mod temp_like_names;
// A global event log naming many jobs is split completely.
mod many_jobs;
// Random legacy trees: migrate keeps every byte, rollback restores the exact tree.
mod random_trees;
// Random layout-0 stores: upgrade keeps every byte, downgrade restores the exact store.
mod random_layout0;
// One root, two layouts: ported modules beside an older Prodigy.
mod two_layouts;
// A test that cannot run here says so, and fails where every test must run.
mod skips;

/// The path of the `store-worker` helper binary.
fn worker_bin() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_store-worker"))
}

// copy_store: a whole store into another `Storage`, verified and resumable.
mod copy_store;

//! The PostgreSQL store against a real server.
//!
//! `cargo xtask test-postgres` starts a throwaway server and runs this
//! binary with `PRODIGY_TEST_POSTGRES_URL` set. Without it, every test that
//! needs the server prints `SKIP: <test>: <reason>` and passes (and fails
//! under `PRODIGY_REQUIRE_ALL_TESTS=1`). Each test gets its own PostgreSQL
//! schema, dropped at its end; the restart test runs alone.

// The conformance suite of storage-core, one test per check.
mod conformance;
// `prodigy-storage` with a team's store: copy-store --to, --store, status, upgrade.
mod cli;
// Exact document text, hostile identifiers, listings sorted like MemoryStorage, paging, corrupt rows.
mod documents;
// Following a log: existing lines, new ones, no queries while idle.
mod follow;
// Real processes: 8 appenders, 3 savers and a reader, a lock holder killed with SIGKILL.
mod processes;
// The server restarted mid-run: errors, nothing half-written, working again.
mod restart;
// Event logs: cursors, lenient reads, waiting, deletion and retention (with appenders at work).
mod events;
// The schema: versions, the migration from the previous one, concurrent creation, refusals.
mod schema;
// The async adapter's and the adoption example's suites (storage-tokio, prodigy-adapter).
mod suites;
// Test databases, skips, worker processes.
mod support;
// The other process of the multi-process tests: this binary, re-executed.
mod worker;

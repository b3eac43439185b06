//! Prodigy's store on PostgreSQL: the same [`Storage`](storage_core::Storage)
//! trait as the file store, for a team that shares one server.
//!
//! [`PgStorage`] keeps documents, event logs and resume locks in a few
//! tables of one PostgreSQL schema (`prodigy` unless [`PgOptions`] says
//! otherwise), which it creates and migrates itself. The conformance suite
//! of `storage-core` runs against it, as against the file store and the
//! memory store.
//!
//! # Guarantees, and what each rests on
//!
//! - **Documents** (every kind, the global ones and extension kinds
//!   included) are saved by one `INSERT … ON CONFLICT DO UPDATE`: a
//!   reader sees the old or the new document, never a mix (MVCC), and `Ok`
//!   means committed, durable as the server's WAL makes it (this crate's
//!   connections never run with `synchronous_commit = off`). The JSON text
//!   is stored as given (`text`, not `jsonb`), so field order and numbers
//!   come back exactly; an entry's size is that text's, its time the
//!   server's at the save.
//! - **Event logs**: an append is one statement, so one transaction (all or
//!   nothing); it takes the log's `event_logs` row lock, so appends to one
//!   log take turns and commit in `seq` order. Every reader sees one order,
//!   with no gap and no interleaving, and a log has no torn tail. Reads go
//!   page by page from a cursor (memory does not grow with the log); a
//!   cursor is a `seq` and the log's generation (its incarnation), so a
//!   cursor of a deleted log starts over and one before a trim goes on at
//!   the log's new start. Waiting for appends
//!   ([`Storage::wait_for_events`](storage_core::Storage::wait_for_events),
//!   a [`Follower`]) is `LISTEN`/`NOTIFY`, notified right after each
//!   append's commit ([`follow`]): no query runs while nothing happens.
//! - **Deleting and trimming a log** are one transaction each under the
//!   same row lock, so an appender's batch lands before them or after them,
//!   never lost; what a trim drops is archived (gzip JSONL) in the same
//!   transaction, in `event_archives`.
//! - **Locks** are session-level advisory locks on a connection the guard
//!   owns: the server releases them when the holder's session ends, however
//!   it ends ([`lock`]).
//! - **Versioned schema**: a `schema_version` table; a newer version than
//!   this build knows is refused ([`PgStorage::connect_with`]), an older one
//!   migrated in one transaction.
//! - **Async callers**: the client library blocks on a tokio runtime of its
//!   own, which tokio forbids on a thread that drives another runtime; a
//!   call made there (a guard dropped in async code, say) runs on a
//!   short-lived thread of its own instead of panicking.
//! - Every value is a query parameter; identifiers are validated by
//!   `storage-core`'s types before they get here.
//!
//! # Example
//!
//! ```no_run
//! use serde_json::json;
//! use storage_core::{EventRecord, JobId, RepoKey, Storage};
//! use storage_postgres::PgStorage;
//!
//! let store = PgStorage::connect("postgresql://prodigy@db.internal/prodigy")?;
//! let repo = RepoKey::new("api")?;
//! let job = JobId::new("mapreduce-1757146800123")?;
//! let event = EventRecord::from_json(json!({"event": {"event_type": "job_started"}}))?;
//! store.append_events(&repo, &job, &[event])?;
//! let mut follower = store.follow(&repo, &job, &storage_core::EventCursor::START)?;
//! let n = follower.next(std::time::Duration::from_secs(5), &mut |seq, e| {
//!     println!("{seq}: {:?}", e.event_type());
//! })?;
//! assert_eq!(n, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Limitations
//!
//! - No TLS yet (the client is built with `NoTls`): connect over a Unix
//!   socket, a private network, or a tunnel.
//! - If the connection is lost while an append's commit is in flight, the
//!   error cannot say whether the batch was committed (it is in the log
//!   whole, or not at all); the error says to read the log before appending
//!   it again. Reads and document saves are retried once on a new
//!   connection; appends, deletions and trims are not.
//! - Checkpoint versions above `i64::MAX` are refused (`bigint`).
//! - A trim's archive is built in memory before it is stored (compressed:
//!   about a tenth of the JSON it drops), and one archive holds at most
//!   1 GiB compressed (`bytea`).
//!
//! See `docs/postgres.md` for the schema, running it for a team, and figures.

pub mod follow;
pub mod lock;

mod error;
mod keys;
mod options;
mod pool;
mod retain;
mod runtime;
mod schema;
mod sql;
mod store;

pub use follow::Follower;
pub use lock::{KEEP_EVERY as LOCK_KEEP_EVERY, LEASE as LOCK_LEASE};
pub use options::{DEFAULT_SCHEMA, PgOptions};
pub use sql::SCHEMA_VERSION;
pub use store::{MAX_LINE_BYTES, PgStorage};

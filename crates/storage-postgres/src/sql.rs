//! Every SQL statement of the store, one function per operation.
//!
//! Values are always parameters (`$1`, …); the only text ever formatted into
//! SQL is the store's schema name (checked by `options::schema_problem`,
//! then quoted) and a channel name made of hex digits (`keys::channel`),
//! because `CREATE SCHEMA`, `SET search_path` and `LISTEN` take no
//! parameters. Each function takes a [`Conn`] and returns the client
//! library's error, which the caller maps with the operation's name.
//!
//! Statements run with the session's `search_path` set to the store's
//! schema alone ([`setup_session`]), so table names are unqualified here.

use std::time::Duration;

use postgres::error::SqlState;
use storage_core::Result;

use crate::keys::{self, DocColumns};
use crate::options::quoted;
use crate::pool::{Conn, PgResult};

/// The newest schema version this build knows.
pub const SCHEMA_VERSION: i32 = 1;

/// The migrations, in order: `MIGRATIONS[n]` goes from version `n` to `n + 1`.
pub(crate) const MIGRATIONS: &[&str] = &[V1];

/// Version 1: documents, event logs, lock holders.
const V1: &str = r#"
CREATE TABLE documents (
    kind text COLLATE "C" NOT NULL CHECK (kind IN ('session', 'job_checkpoint',
        'job_metadata', 'workflow_checkpoint', 'dead_letter', 'dead_letter_index',
        'session_job')),
    repo text COLLATE "C" NOT NULL,
    job text COLLATE "C" NOT NULL,
    id text COLLATE "C" NOT NULL,
    version bigint NOT NULL CHECK (version >= 0),
    body text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, repo, job, id, version)
);
COMMENT ON TABLE documents IS 'Prodigy storage: one JSON document per key, its text exactly as saved';

CREATE TABLE event_logs (
    repo text COLLATE "C" NOT NULL,
    job text COLLATE "C" NOT NULL,
    next_seq bigint NOT NULL CHECK (next_seq > 0),
    PRIMARY KEY (repo, job)
);
COMMENT ON TABLE event_logs IS 'Prodigy storage: one row per event log; next_seq is its length, and appenders lock this row';

CREATE TABLE events (
    repo text COLLATE "C" NOT NULL,
    job text COLLATE "C" NOT NULL,
    seq bigint NOT NULL CHECK (seq >= 0),
    line text NOT NULL,
    PRIMARY KEY (repo, job, seq)
);
COMMENT ON TABLE events IS 'Prodigy storage: event log lines; seq runs from 0 without gaps per log';

CREATE TABLE locks (
    key text COLLATE "C" PRIMARY KEY,
    holder text NOT NULL,
    backend_pid integer NOT NULL,
    acquired_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE locks IS 'Prodigy storage: who holds each resume lock (a hint; the lock is an advisory lock)';
"#;

/// Sets up a new connection: the search path (the store's schema only),
/// server-side TCP keepalives (a holder whose machine vanished releases its
/// locks within about two minutes), and durable commits: `synchronous_commit`
/// is raised to `on` if the server has it `off`. A database that is not
/// UTF-8 is refused (documents and identifiers are Unicode).
pub(crate) fn setup_session(conn: &mut Conn, schema: &str, store: &str) -> Result<()> {
    let map = |e| crate::error::database("set up a connection to", store, e);
    let row = conn
        .client()
        .query_one(
            "SELECT set_config('search_path', $1, false), \
                    set_config('tcp_keepalives_idle', '60', false), \
                    set_config('tcp_keepalives_interval', '10', false), \
                    set_config('tcp_keepalives_count', '6', false), \
                    current_setting('synchronous_commit'), \
                    current_setting('server_encoding'), \
                    current_setting('fsync')",
            &[&quoted(schema)],
        )
        .map_err(map)?;
    let synchronous_commit: String = row.get(4);
    let encoding: String = row.get(5);
    let fsync: String = row.get(6);
    if encoding != "UTF8" {
        return Err(crate::error::refused(
            "use the database of",
            store,
            Some(
                "create the database with `ENCODING 'UTF8'` (createdb -E UTF8) and connect to that",
            ),
            format!("its encoding is {encoding}, and the store needs UTF8"),
        ));
    }
    if synchronous_commit == "off" {
        tracing::warn!(
            store,
            "the server has synchronous_commit off; this store's connections set it on, so that a commit is durable when it returns"
        );
        conn.batch("SET synchronous_commit TO on").map_err(map)?;
    }
    if fsync == "off" {
        tracing::warn!(
            store,
            "the server runs with fsync off: a crash of its machine can lose committed data"
        );
    }
    Ok(())
}

// ---- schema ----------------------------------------------------------------

/// Takes the transaction-level lock that serialises migrations of `schema`.
pub(crate) fn lock_migrations(tx: &mut postgres::Transaction<'_>, schema: &str) -> PgResult<()> {
    tx.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&keys::migration_lock_id(schema)],
    )?;
    Ok(())
}

/// Creates `schema` if it does not exist (checked first: `CREATE SCHEMA IF
/// NOT EXISTS` needs the `CREATE` privilege on the database even when it
/// exists, which a role set up by hand may lack) and the version table in it.
pub(crate) fn create_schema(tx: &mut postgres::Transaction<'_>, schema: &str) -> PgResult<()> {
    let exists: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
            &[&schema],
        )?
        .get(0);
    if !exists {
        tx.batch_execute(&format!("CREATE SCHEMA {}", quoted(schema)))?;
    }
    tx.batch_execute(&format!(
        "SET LOCAL search_path TO {}; \
         CREATE TABLE IF NOT EXISTS schema_version (\
             version integer PRIMARY KEY, \
             applied_at timestamptz NOT NULL DEFAULT now(), \
             applied_by text NOT NULL)",
        quoted(schema)
    ))
}

/// The schema's version: the highest applied migration, 0 for none.
pub(crate) fn schema_version(tx: &mut postgres::Transaction<'_>) -> PgResult<i32> {
    Ok(tx
        .query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])?
        .get(0))
}

/// Applies migration `version` (1-based) and records it.
pub(crate) fn apply_migration(
    tx: &mut postgres::Transaction<'_>,
    version: i32,
    sql: &str,
) -> PgResult<()> {
    tx.batch_execute(sql)?;
    tx.execute(
        "INSERT INTO schema_version (version, applied_by) VALUES ($1, $2)",
        &[
            &version,
            &concat!("storage-postgres ", env!("CARGO_PKG_VERSION")),
        ],
    )?;
    Ok(())
}

// ---- documents -------------------------------------------------------------

/// Inserts or replaces a document: one statement, so one transaction.
pub(crate) fn put_document(conn: &mut Conn, k: &DocColumns<'_>, body: &str) -> PgResult<()> {
    conn.execute(
        "INSERT INTO documents (kind, repo, job, id, version, body) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (kind, repo, job, id, version) \
         DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at",
        &[&k.kind, &k.repo, &k.job, &k.id, &k.version, &body],
    )?;
    Ok(())
}

/// A document's text, if there is one.
pub(crate) fn get_document(conn: &mut Conn, k: &DocColumns<'_>) -> PgResult<Option<String>> {
    let rows = conn.query(
        "SELECT body FROM documents \
         WHERE kind = $1 AND repo = $2 AND job = $3 AND id = $4 AND version = $5",
        &[&k.kind, &k.repo, &k.job, &k.id, &k.version],
    )?;
    Ok(rows.first().map(|r| r.get(0)))
}

/// Removes a document; whether there was one.
pub(crate) fn delete_document(conn: &mut Conn, k: &DocColumns<'_>) -> PgResult<bool> {
    let n = conn.execute(
        "DELETE FROM documents \
         WHERE kind = $1 AND repo = $2 AND job = $3 AND id = $4 AND version = $5",
        &[&k.kind, &k.repo, &k.job, &k.id, &k.version],
    )?;
    Ok(n > 0)
}

/// The `(id, version)` of every document of a kind in `repo` (and `job`),
/// sorted as the keys sort (`COLLATE "C"`: by bytes, as Rust's `str`).
pub(crate) fn list_documents(
    conn: &mut Conn,
    kind: &str,
    repo: &str,
    job: &str,
) -> PgResult<Vec<(String, i64)>> {
    Ok(conn
        .query(
            "SELECT id, version FROM documents WHERE kind = $1 AND repo = $2 AND job = $3 \
             ORDER BY id, version",
            &[&kind, &repo, &job],
        )?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// The jobs of `repo` with a checkpoint or metadata, sorted.
pub(crate) fn jobs_with_state(conn: &mut Conn, repo: &str) -> PgResult<Vec<String>> {
    Ok(conn
        .query(
            "SELECT DISTINCT job FROM documents \
             WHERE repo = $1 AND kind IN ('job_checkpoint', 'job_metadata') ORDER BY job",
            &[&repo],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

// ---- event logs ------------------------------------------------------------

/// Appends `lines` to the log of `repo`/`job` as one statement (so one
/// transaction, all or nothing) and returns the log's new length.
///
/// The upsert of the log's `event_logs` row takes that row's lock, which
/// is held until the commit: appenders of one log take turns, each gets
/// the next `next_seq` range, and a later range is never committed before
/// an earlier one. So every reader sees the lines in `seq` order, with no
/// gap, and a batch's lines together.
///
/// No `NOTIFY` in this transaction: PostgreSQL serialises the commits of
/// every notifying transaction of the whole server (one lock, held until
/// the commit is flushed), which would make appends to different logs take
/// turns too. The caller notifies right after the commit ([`notify`]).
pub(crate) fn append_events(
    conn: &mut Conn,
    repo: &str,
    job: &str,
    lines: &[String],
) -> PgResult<i64> {
    let count = i64::try_from(lines.len()).expect("a batch fits in memory, so in an i64");
    let rows = conn.query(
        "WITH log AS ( \
             INSERT INTO event_logs AS l (repo, job, next_seq) VALUES ($1, $2, $3) \
             ON CONFLICT (repo, job) DO UPDATE SET next_seq = l.next_seq + excluded.next_seq \
             RETURNING l.next_seq \
         ), added AS ( \
             INSERT INTO events (repo, job, seq, line) \
             SELECT $1, $2, log.next_seq - $3 + t.n - 1, t.line \
             FROM log, unnest($4::text[]) WITH ORDINALITY AS t(line, n) \
         ) \
         SELECT next_seq FROM log",
        &[&repo, &job, &count, &lines],
    )?;
    Ok(rows
        .first()
        .map(|r| r.get(0))
        .expect("the upsert returns its row"))
}

/// Wakes the followers of a log's `channel`: its own transaction, which
/// writes no data, so its commit waits for no disk flush and the server's
/// notification lock is held for microseconds. `end` is the log's length.
pub(crate) fn notify(conn: &mut Conn, channel: &str, end: i64) -> PgResult<()> {
    conn.query("SELECT pg_notify($1, $2)", &[&channel, &end.to_string()])?;
    Ok(())
}

/// The length of the log of `repo`/`job` (its next `seq`), if it exists.
pub(crate) fn event_log_end(conn: &mut Conn, repo: &str, job: &str) -> PgResult<Option<i64>> {
    let rows = conn.query(
        "SELECT next_seq FROM event_logs WHERE repo = $1 AND job = $2",
        &[&repo, &job],
    )?;
    Ok(rows.first().map(|r| r.get(0)))
}

/// One page of a log: the lines with `from <= seq < end`, in order, at most
/// `max_rows` of them and no more than `max_bytes` of text (but always the
/// first one), so a reader's memory is bounded whatever the lines hold.
pub(crate) fn read_events_page(
    conn: &mut Conn,
    repo: &str,
    job: &str,
    from: i64,
    end: i64,
    max_rows: i64,
    max_bytes: i64,
) -> PgResult<Vec<(i64, String)>> {
    Ok(conn
        .query(
            "SELECT seq, line FROM ( \
                 SELECT seq, line, \
                        sum(octet_length(line)) OVER (ORDER BY seq) - octet_length(line) AS before \
                 FROM events WHERE repo = $1 AND job = $2 AND seq >= $3 AND seq < $4 \
                 ORDER BY seq LIMIT $5 \
             ) page WHERE before < $6 ORDER BY seq",
            &[&repo, &job, &from, &end, &max_rows, &max_bytes],
        )?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// The jobs of `repo` with an event log, sorted.
pub(crate) fn event_logs(conn: &mut Conn, repo: &str) -> PgResult<Vec<String>> {
    Ok(conn
        .query(
            "SELECT job FROM event_logs WHERE repo = $1 ORDER BY job",
            &[&repo],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Starts listening on a log's channel (made by `keys::channel`: hex digits).
pub(crate) fn listen(conn: &mut Conn, channel: &str) -> PgResult<()> {
    debug_assert!(
        channel
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    );
    conn.batch(&format!("LISTEN \"{channel}\""))
}

/// Stops listening on every channel (before a follower's connection is reused).
pub(crate) fn unlisten_all(conn: &mut Conn) -> PgResult<()> {
    conn.batch("UNLISTEN *")
}

// ---- locks -----------------------------------------------------------------

/// Tries the session-level advisory lock `id` without waiting.
pub(crate) fn try_lock(conn: &mut Conn, id: i64) -> PgResult<bool> {
    Ok(conn
        .query("SELECT pg_try_advisory_lock($1)", &[&id])?
        .first()
        .is_some_and(|r| r.get(0)))
}

/// Waits up to `timeout` for the session-level advisory lock `id`: the
/// server wakes the waiter when the holder lets go (no polling), and
/// `lock_timeout` ends the wait. `false` if it timed out.
pub(crate) fn lock_waiting(conn: &mut Conn, id: i64, timeout: Duration) -> PgResult<bool> {
    let ms = timeout.as_millis().clamp(1, 2_147_483_647);
    conn.query(
        "SELECT set_config('lock_timeout', $1, false)",
        &[&format!("{ms}ms")],
    )?;
    let got = conn.query("SELECT pg_advisory_lock($1)", &[&id]);
    let got = match got {
        Ok(_) => Ok(true),
        Err(e) if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => Ok(false),
        Err(e) => Err(e),
    };
    conn.batch("RESET lock_timeout")?;
    got
}

/// Records who holds lock `key` (called by the holder, on its connection).
pub(crate) fn record_holder(conn: &mut Conn, key: &str, holder: &str) -> PgResult<()> {
    conn.execute(
        "INSERT INTO locks (key, holder, backend_pid) VALUES ($1, $2, pg_backend_pid()) \
         ON CONFLICT (key) DO UPDATE SET holder = excluded.holder, \
             backend_pid = excluded.backend_pid, acquired_at = excluded.acquired_at",
        &[&key, &holder],
    )?;
    Ok(())
}

/// What the holder of lock `key` recorded, if the connection that recorded
/// it still holds the advisory lock `id` (a row left by a holder that died
/// names nobody).
pub(crate) fn holder(conn: &mut Conn, key: &str, id: i64) -> PgResult<Option<String>> {
    let (classid, objid) = keys::lock_id_halves(id);
    let rows = conn.query(
        "SELECT l.holder FROM locks l WHERE l.key = $1 AND EXISTS ( \
             SELECT 1 FROM pg_locks p \
             WHERE p.locktype = 'advisory' AND p.granted AND p.pid = l.backend_pid \
               AND p.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND p.classid::bigint = $2 AND p.objid::bigint = $3 AND p.objsubid = 1)",
        &[&key, &classid, &objid],
    )?;
    Ok(rows.first().map(|r| r.get(0)))
}

/// Removes this connection's holder row of `key` and releases lock `id`;
/// whether the lock was held.
pub(crate) fn unlock(conn: &mut Conn, key: &str, id: i64) -> PgResult<bool> {
    conn.execute(
        "DELETE FROM locks WHERE key = $1 AND backend_pid = pg_backend_pid()",
        &[&key],
    )?;
    Ok(conn
        .query("SELECT pg_advisory_unlock($1)", &[&id])?
        .first()
        .is_some_and(|r| r.get(0)))
}

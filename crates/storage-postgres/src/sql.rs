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

use std::time::{Duration, SystemTime};

use postgres::error::SqlState;
use storage_core::Result;

use crate::keys::{self, DocColumns};
use crate::options::quoted;
use crate::pool::{Conn, PgResult};

/// The newest schema version this build knows.
pub const SCHEMA_VERSION: i32 = 3;

/// The migrations, in order: `MIGRATIONS[n]` goes from version `n` to `n + 1`.
pub(crate) const MIGRATIONS: &[&str] = &[V1, V2, V3];

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

/// Version 2: the global and extension kinds of documents; each log's
/// incarnation, start, size and times (cursors, retention, statistics);
/// the archives of what retention drops.
///
/// Every version-1 row means the same in version 2: `documents.job` is
/// renamed `parent` (it holds a session or an extension kind too now),
/// logs get a generation each, start at 0, and their size is counted from
/// their lines. Times the version-1 tables did not keep (a log's last
/// append, each line's) are the migration's.
const V2: &str = r#"
ALTER TABLE documents RENAME COLUMN job TO parent;
ALTER TABLE documents DROP CONSTRAINT documents_kind_check;
ALTER TABLE documents ADD CONSTRAINT documents_kind_check CHECK (kind IN ('session',
    'job_checkpoint', 'job_metadata', 'workflow_checkpoint', 'dead_letter',
    'dead_letter_index', 'session_job', 'unified_session', 'session_checkpoint',
    'session_workflow_checkpoint', 'extension'));
ALTER TABLE documents ADD CONSTRAINT documents_global_check CHECK ((repo = '') =
    (kind IN ('unified_session', 'session_checkpoint', 'session_workflow_checkpoint')));
COMMENT ON COLUMN documents.repo IS 'the repository; empty for the global kinds (unified sessions and what belongs to them)';
COMMENT ON COLUMN documents.parent IS 'what the document belongs to: its job, its session (session workflow checkpoints) or its extension kind; empty for none';
COMMENT ON COLUMN documents.updated_at IS 'the server time of the last save';

CREATE SEQUENCE event_log_generations;
ALTER TABLE event_logs
    ADD COLUMN generation bigint NOT NULL DEFAULT nextval('event_log_generations'),
    ADD COLUMN first_seq bigint NOT NULL DEFAULT 0,
    ADD COLUMN bytes bigint NOT NULL DEFAULT 0,
    ADD COLUMN modified_at timestamptz NOT NULL DEFAULT now();
ALTER SEQUENCE event_log_generations OWNED BY event_logs.generation;
UPDATE event_logs l SET bytes = coalesce((SELECT sum(octet_length(e.line) + 1) FROM events e
    WHERE e.repo = l.repo AND e.job = l.job), 0);
ALTER TABLE event_logs ADD CONSTRAINT event_logs_range_check
    CHECK (first_seq >= 0 AND first_seq <= next_seq AND bytes >= 0);
COMMENT ON COLUMN event_logs.generation IS 'the log''s incarnation: a log deleted and begun again gets a new one, so old cursors start over';
COMMENT ON COLUMN event_logs.first_seq IS 'the first line still kept (retention raises it); the log holds seq first_seq to next_seq - 1';
COMMENT ON COLUMN event_logs.bytes IS 'the kept lines'' bytes, one newline each included';
COMMENT ON COLUMN event_logs.modified_at IS 'the server time of the last append';

ALTER TABLE events ADD COLUMN appended_at timestamptz NOT NULL DEFAULT now();
COMMENT ON COLUMN events.appended_at IS 'the server time of the append that added the line';

CREATE TABLE event_archives (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    repo text COLLATE "C" NOT NULL,
    job text COLLATE "C" NOT NULL,
    generation bigint NOT NULL,
    first_seq bigint NOT NULL,
    end_seq bigint NOT NULL CHECK (end_seq > first_seq),
    bytes bigint NOT NULL,
    archived_at timestamptz NOT NULL DEFAULT now(),
    gzip bytea NOT NULL
);
CREATE INDEX event_archives_log ON event_archives (repo, job, id);
COMMENT ON TABLE event_archives IS 'Prodigy storage: what event retention dropped, lines first_seq to end_seq - 1 of a log as gzip JSONL (bytes uncompressed)';
"#;

/// Version 3: each lock's fencing token. The `locks` row of a key now
/// stays when its lock is released (it names no holder then: a refused
/// caller reads a holder only while its session holds the lock), so the
/// token keeps growing.
const V3: &str = r"
ALTER TABLE locks ADD COLUMN fence bigint NOT NULL DEFAULT 0;
COMMENT ON COLUMN locks.fence IS 'the fencing token of the newest acquisition: larger than every earlier one; a write fenced with another is refused';
";

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
    // A server's `idle_session_timeout` (PostgreSQL 14 and later) ends idle
    // sessions, and with them the session-level advisory locks they hold:
    // off for this store's connections (an older server has no such setting).
    conn.client()
        .batch_execute(
            "DO $$ BEGIN \
               IF current_setting('server_version_num')::int >= 140000 THEN \
                 PERFORM set_config('idle_session_timeout', '0', false); \
               END IF; \
             END $$",
        )
        .map_err(map)?;
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

// ---- transactions ----------------------------------------------------------

/// Runs `f` in one transaction on `conn` (`BEGIN` … `COMMIT`, or
/// `ROLLBACK` if `f` fails), so that its statements keep the connection's
/// prepared statements.
pub(crate) fn in_transaction<T>(
    conn: &mut Conn,
    f: impl FnOnce(&mut Conn) -> PgResult<T>,
) -> PgResult<T> {
    conn.batch("BEGIN")?;
    match f(conn) {
        Ok(v) => {
            conn.batch("COMMIT")?;
            Ok(v)
        }
        Err(e) => {
            if !conn.is_lost() {
                // The server rolls back anyway if this fails (the
                // connection is then lost, and the pool drops it).
                let _ = conn.batch("ROLLBACK");
            }
            Err(e)
        }
    }
}

// ---- documents -------------------------------------------------------------

/// Inserts or replaces a document: one statement, so one transaction.
/// `updated_at` is the server's time.
pub(crate) fn put_document(conn: &mut Conn, k: &DocColumns<'_>, body: &str) -> PgResult<()> {
    conn.execute(
        "INSERT INTO documents (kind, repo, parent, id, version, body) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (kind, repo, parent, id, version) \
         DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at",
        &[&k.kind, &k.repo, &k.parent, &k.id, &k.version, &body],
    )?;
    Ok(())
}

/// A document's text, if there is one.
pub(crate) fn get_document(conn: &mut Conn, k: &DocColumns<'_>) -> PgResult<Option<String>> {
    let rows = conn.query(
        "SELECT body FROM documents \
         WHERE kind = $1 AND repo = $2 AND parent = $3 AND id = $4 AND version = $5",
        &[&k.kind, &k.repo, &k.parent, &k.id, &k.version],
    )?;
    Ok(rows.first().map(|r| r.get(0)))
}

/// A document's size (bytes of its text) and last save time, if there is one.
pub(crate) fn document_entry(
    conn: &mut Conn,
    k: &DocColumns<'_>,
) -> PgResult<Option<(i64, SystemTime)>> {
    let rows = conn.query(
        "SELECT octet_length(body)::bigint, updated_at FROM documents \
         WHERE kind = $1 AND repo = $2 AND parent = $3 AND id = $4 AND version = $5",
        &[&k.kind, &k.repo, &k.parent, &k.id, &k.version],
    )?;
    Ok(rows.first().map(|r| (r.get(0), r.get(1))))
}

/// Removes a document; whether there was one.
pub(crate) fn delete_document(conn: &mut Conn, k: &DocColumns<'_>) -> PgResult<bool> {
    let n = conn.execute(
        "DELETE FROM documents \
         WHERE kind = $1 AND repo = $2 AND parent = $3 AND id = $4 AND version = $5",
        &[&k.kind, &k.repo, &k.parent, &k.id, &k.version],
    )?;
    Ok(n > 0)
}

/// The `(id, version)` of every document of a kind in `repo` and `parent`,
/// sorted as the keys sort (`COLLATE "C"`: by bytes, as Rust's `str`).
pub(crate) fn list_documents(
    conn: &mut Conn,
    kind: &str,
    repo: &str,
    parent: &str,
) -> PgResult<Vec<(String, i64)>> {
    Ok(conn
        .query(
            "SELECT id, version FROM documents WHERE kind = $1 AND repo = $2 AND parent = $3 \
             ORDER BY id, version",
            &[&kind, &repo, &parent],
        )?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// One listed document: `(id, version, bytes, updated_at)`.
pub(crate) type EntryRow = (String, i64, i64, SystemTime);

/// Up to `limit` documents of a kind in `repo` and `parent` after
/// `(id, version)` `after` (keyset paging), in key order, with their size
/// and last save time.
pub(crate) fn document_entries(
    conn: &mut Conn,
    (kind, repo, parent): (&str, &str, &str),
    after: (&str, i64),
    limit: i64,
) -> PgResult<Vec<EntryRow>> {
    Ok(conn
        .query(
            "SELECT id, version, octet_length(body)::bigint, updated_at FROM documents \
             WHERE kind = $1 AND repo = $2 AND parent = $3 AND (id, version) > ($4, $5) \
             ORDER BY id, version LIMIT $6",
            &[&kind, &repo, &parent, &after.0, &after.1, &limit],
        )?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect())
}

/// Every repository with a document or an event log, sorted.
pub(crate) fn repos(conn: &mut Conn) -> PgResult<Vec<String>> {
    Ok(conn
        .query(
            "SELECT repo FROM documents WHERE repo <> '' \
             UNION SELECT repo FROM event_logs ORDER BY 1",
            &[],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// The distinct `parent`s of the documents of `kinds` in `repo`, sorted
/// (jobs with state, jobs with dead letters, extension kinds).
pub(crate) fn parents(conn: &mut Conn, repo: &str, kinds: &[&str]) -> PgResult<Vec<String>> {
    Ok(conn
        .query(
            "SELECT DISTINCT parent FROM documents \
             WHERE repo = $1 AND kind = ANY($2) ORDER BY parent",
            &[&repo, &kinds],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// The kinds whose `parent` is a job with state.
pub(crate) const JOB_STATE_KINDS: &[&str] = &[keys::JOB_CHECKPOINT, keys::JOB_METADATA];
/// The kinds whose `parent` is a job with dead letters.
pub(crate) const DEAD_LETTER_KINDS: &[&str] = &[keys::DEAD_LETTER, keys::DEAD_LETTER_INDEX];
/// The kind whose `parent` is an extension kind.
pub(crate) const EXTENSION_KINDS: &[&str] = &[keys::EXTENSION];

// ---- event logs ------------------------------------------------------------

/// Appends `lines` (of `bytes` bytes, a newline each counted) to the log
/// of `repo`/`job` as one statement (so one transaction, all or nothing)
/// and returns the log's new length.
///
/// The upsert of the log's `event_logs` row takes that row's lock, which
/// is held until the commit: appenders of one log take turns, each gets
/// the next `next_seq` range, and a later range is never committed before
/// an earlier one. So every reader sees the lines in `seq` order, with no
/// gap, and a batch's lines together. Deleting the log and trimming it
/// take the same row lock, so a batch lands before them or after them: a
/// batch that waited for a deletion finds no row and begins a new log
/// (`ON CONFLICT` inserts once the deleted row is gone), with a new
/// generation.
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
    bytes: i64,
) -> PgResult<i64> {
    let count = i64::try_from(lines.len()).expect("a batch fits in memory, so in an i64");
    let rows = conn.query(
        "WITH log AS ( \
             INSERT INTO event_logs AS l (repo, job, next_seq, bytes, modified_at) \
             VALUES ($1, $2, $3, $5, clock_timestamp()) \
             ON CONFLICT (repo, job) DO UPDATE SET next_seq = l.next_seq + excluded.next_seq, \
                 bytes = l.bytes + excluded.bytes, \
                 modified_at = greatest(l.modified_at, clock_timestamp()) \
             RETURNING l.next_seq, l.modified_at \
         ), added AS ( \
             INSERT INTO events (repo, job, seq, line, appended_at) \
             SELECT $1, $2, log.next_seq - $3 + t.n - 1, t.line, log.modified_at \
             FROM log, unnest($4::text[]) WITH ORDINALITY AS t(line, n) \
         ) \
         SELECT next_seq FROM log",
        &[&repo, &job, &count, &lines, &bytes],
    )?;
    Ok(rows
        .first()
        .map(|r| r.get(0))
        .expect("the upsert returns its row"))
}

/// Compare-and-append: appends `lines` to the log of `repo`/`job` only if
/// it stands at `expected` = `(generation, next_seq)`, or does not exist
/// when `expected` is `None` (the start of a log). One statement, so one
/// transaction; the `event_logs` row lock orders it with every other
/// append, as in [`append_events`]. Returns the log's `(generation,
/// next_seq)` after the batch, or `None` (nothing written) if the log was
/// not where expected.
pub(crate) fn append_events_at(
    conn: &mut Conn,
    repo: &str,
    job: &str,
    expected: Option<(i64, i64)>,
    lines: &[String],
    bytes: i64,
) -> PgResult<Option<(i64, i64)>> {
    let count = i64::try_from(lines.len()).expect("a batch fits in memory, so in an i64");
    let rows = match expected {
        // A log that does not exist yet: create it, or nothing if another
        // writer did first.
        None => conn.query(
            "WITH log AS ( \
                 INSERT INTO event_logs AS l (repo, job, next_seq, bytes, modified_at) \
                 VALUES ($1, $2, $3, $5, clock_timestamp()) \
                 ON CONFLICT (repo, job) DO NOTHING \
                 RETURNING l.generation, l.next_seq, l.modified_at \
             ), added AS ( \
                 INSERT INTO events (repo, job, seq, line, appended_at) \
                 SELECT $1, $2, log.next_seq - $3 + t.n - 1, t.line, log.modified_at \
                 FROM log, unnest($4::text[]) WITH ORDINALITY AS t(line, n) \
             ) \
             SELECT generation, next_seq FROM log",
            &[&repo, &job, &count, &lines, &bytes],
        )?,
        // This incarnation at this length, or nothing.
        Some((generation, next)) => conn.query(
            "WITH log AS ( \
                 UPDATE event_logs AS l SET next_seq = l.next_seq + $3, bytes = l.bytes + $5, \
                     modified_at = greatest(l.modified_at, clock_timestamp()) \
                 WHERE repo = $1 AND job = $2 AND generation = $6 AND next_seq = $7 \
                 RETURNING l.generation, l.next_seq, l.modified_at \
             ), added AS ( \
                 INSERT INTO events (repo, job, seq, line, appended_at) \
                 SELECT $1, $2, log.next_seq - $3 + t.n - 1, t.line, log.modified_at \
                 FROM log, unnest($4::text[]) WITH ORDINALITY AS t(line, n) \
             ) \
             SELECT generation, next_seq FROM log",
            &[&repo, &job, &count, &lines, &bytes, &generation, &next],
        )?,
    };
    Ok(rows.first().map(|r| (r.get(0), r.get(1))))
}

/// The lines `from <= seq < from + count` of the log of `repo`/`job`, and
/// the log's generation, as one statement saw them, if the log is the
/// incarnation `generation` (any, if `None`) and holds them all.
pub(crate) fn lines_at(
    conn: &mut Conn,
    repo: &str,
    job: &str,
    generation: Option<i64>,
    from: i64,
    count: i64,
) -> PgResult<Option<(i64, Vec<String>)>> {
    let rows = conn.query(
        "SELECT l.generation, e.line FROM event_logs l \
         JOIN events e ON e.repo = l.repo AND e.job = l.job \
         WHERE l.repo = $1 AND l.job = $2 AND ($3::bigint IS NULL OR l.generation = $3) \
           AND e.seq >= $4 AND e.seq < $4 + $5 \
         ORDER BY e.seq",
        &[&repo, &job, &generation, &from, &count],
    )?;
    let all = rows.len() as u64 == u64::try_from(count).unwrap_or(u64::MAX);
    Ok(rows
        .first()
        .filter(|_| all)
        .map(|first| (first.get(0), rows.iter().map(|r| r.get(1)).collect())))
}

/// Wakes the followers of a log's `channel`: its own transaction, which
/// writes no data, so its commit waits for no disk flush and the server's
/// notification lock is held for microseconds. `end` is the log's length.
pub(crate) fn notify(conn: &mut Conn, channel: &str, end: i64) -> PgResult<()> {
    conn.query("SELECT pg_notify($1, $2)", &[&channel, &end.to_string()])?;
    Ok(())
}

/// Where a log stands: its incarnation and the `seq` range it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LogState {
    /// The log's incarnation (`event_logs.generation`, never 0).
    pub generation: i64,
    /// The first line still kept.
    pub first: i64,
    /// The log's length: the `seq` its next line gets.
    pub next: i64,
}

impl LogState {
    /// From a row of `generation, first_seq, next_seq`.
    fn of(row: &postgres::Row) -> Self {
        Self {
            generation: row.get(0),
            first: row.get(1),
            next: row.get(2),
        }
    }
}

/// Where the log of `repo`/`job` stands, if it exists.
pub(crate) fn log_state(conn: &mut Conn, repo: &str, job: &str) -> PgResult<Option<LogState>> {
    let rows = conn.query(
        "SELECT generation, first_seq, next_seq FROM event_logs WHERE repo = $1 AND job = $2",
        &[&repo, &job],
    )?;
    Ok(rows.first().map(LogState::of))
}

/// One page of a log, and the log's incarnation and first kept line as
/// the same statement saw them: a page and the log row come from one
/// snapshot, so a reader can tell lines of another incarnation (the log
/// was deleted and begun again) or a trim (retention) from a gap.
#[derive(Debug)]
pub(crate) struct Page {
    pub generation: i64,
    pub first: i64,
    /// The log's length as the same statement saw it.
    pub next: i64,
    /// `(seq, line)` in `seq` order.
    pub lines: Vec<(i64, String)>,
}

/// The lines of the log of `repo`/`job` with `from <= seq < end`, in order,
/// at most `max_rows` of them and no more than `max_bytes` of text (but
/// always the first one), so a reader's memory is bounded whatever the
/// lines hold; `None` if the log does not exist.
pub(crate) fn read_events_page(
    conn: &mut Conn,
    repo: &str,
    job: &str,
    (from, end): (i64, i64),
    max_rows: i64,
    max_bytes: i64,
) -> PgResult<Option<Page>> {
    let rows = conn.query(
        "WITH log AS ( \
             SELECT generation, first_seq, next_seq FROM event_logs WHERE repo = $1 AND job = $2 \
         ), page AS ( \
             SELECT seq, line FROM ( \
                 SELECT seq, line, \
                        sum(octet_length(line)) OVER (ORDER BY seq) - octet_length(line) AS before \
                 FROM events WHERE repo = $1 AND job = $2 AND seq >= $3 AND seq < $4 \
                 ORDER BY seq LIMIT $5 \
             ) w WHERE before < $6 \
         ) \
         SELECT log.generation, log.first_seq, page.seq, page.line, log.next_seq \
         FROM log LEFT JOIN page ON true ORDER BY page.seq",
        &[&repo, &job, &from, &end, &max_rows, &max_bytes],
    )?;
    let Some(head) = rows.first() else {
        return Ok(None);
    };
    let mut page = Page {
        generation: head.get(0),
        first: head.get(1),
        next: head.get(4),
        lines: Vec::with_capacity(rows.len()),
    };
    for r in &rows {
        if let Some(seq) = r.get::<_, Option<i64>>(2) {
            page.lines.push((seq, r.get(3)));
        }
    }
    Ok(Some(page))
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

/// The kept bytes, the last append's time and the time of the append that
/// added the first kept line (the last append's, if retention kept none)
/// of the log of `repo`/`job`, if it exists.
pub(crate) fn event_log_entry(
    conn: &mut Conn,
    repo: &str,
    job: &str,
) -> PgResult<Option<(i64, SystemTime, SystemTime)>> {
    let rows = conn.query(
        "SELECT l.bytes, l.modified_at, coalesce(( \
             SELECT e.appended_at FROM events e \
             WHERE e.repo = l.repo AND e.job = l.job AND e.seq = l.first_seq), l.modified_at) \
         FROM event_logs l WHERE l.repo = $1 AND l.job = $2",
        &[&repo, &job],
    )?;
    Ok(rows.first().map(|r| (r.get(0), r.get(1), r.get(2))))
}

/// Deletes the log of `repo`/`job`, in the caller's transaction: its
/// `event_logs` row first (which takes the row's lock, so it waits for an
/// appender that holds it, and makes later appenders wait until the
/// commit), then its lines. Whether there was one. Archives are kept.
pub(crate) fn delete_event_log(conn: &mut Conn, repo: &str, job: &str) -> PgResult<bool> {
    let gone = conn.execute(
        "DELETE FROM event_logs WHERE repo = $1 AND job = $2",
        &[&repo, &job],
    )?;
    if gone == 0 {
        return Ok(false);
    }
    conn.execute(
        "DELETE FROM events WHERE repo = $1 AND job = $2",
        &[&repo, &job],
    )?;
    Ok(true)
}

/// Locks the `event_logs` row of `repo`/`job` until the caller's
/// transaction ends (appenders wait) and returns where the log stands.
pub(crate) fn lock_log(conn: &mut Conn, repo: &str, job: &str) -> PgResult<Option<LogState>> {
    let rows = conn.query(
        "SELECT generation, first_seq, next_seq FROM event_logs \
         WHERE repo = $1 AND job = $2 FOR UPDATE",
        &[&repo, &job],
    )?;
    Ok(rows.first().map(LogState::of))
}

/// The first line of the longest run at the end of the log (from `first`
/// on) whose bytes (a newline each counted) are at most `max`: where a
/// trim by size keeps from, as `Retention::drop_count` counts it. `None`
/// if not even the last line fits.
pub(crate) fn bytes_cut(
    conn: &mut Conn,
    repo: &str,
    job: &str,
    first: i64,
    max: i64,
) -> PgResult<Option<i64>> {
    Ok(conn
        .query(
            "SELECT min(seq) FROM ( \
                 SELECT seq, sum(octet_length(line) + 1) OVER (ORDER BY seq DESC) AS suffix \
                 FROM events WHERE repo = $1 AND job = $2 AND seq >= $3 \
             ) s WHERE suffix <= $4",
            &[&repo, &job, &first, &max],
        )?
        .first()
        .and_then(|r| r.get(0)))
}

/// Keeps `gzip` (the lines `first..end` of the log's incarnation
/// `generation`, `bytes` uncompressed) in `event_archives`; returns its id.
pub(crate) fn insert_archive(
    conn: &mut Conn,
    repo: &str,
    job: &str,
    (generation, first, end): (i64, i64, i64),
    bytes: i64,
    gzip: &[u8],
) -> PgResult<i64> {
    Ok(conn
        .query(
            "INSERT INTO event_archives (repo, job, generation, first_seq, end_seq, bytes, gzip) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
            &[&repo, &job, &generation, &first, &end, &bytes, &gzip],
        )?
        .first()
        .map(|r| r.get(0))
        .expect("an insert returns its row"))
}

/// Removes the lines before `cut` and makes `cut` the log's first line,
/// in the caller's transaction (which holds the log's row lock); returns
/// how many lines went and their bytes (a newline each counted).
pub(crate) fn trim_log(conn: &mut Conn, repo: &str, job: &str, cut: i64) -> PgResult<(i64, i64)> {
    let row = conn.query_one(
        "WITH gone AS ( \
             DELETE FROM events WHERE repo = $1 AND job = $2 AND seq < $3 \
             RETURNING octet_length(line) + 1 AS bytes \
         ), counted AS ( \
             SELECT count(*) AS lines, coalesce(sum(bytes), 0)::bigint AS bytes FROM gone \
         ), moved AS ( \
             UPDATE event_logs l SET first_seq = $3, bytes = l.bytes - counted.bytes \
             FROM counted WHERE l.repo = $1 AND l.job = $2 \
         ) \
         SELECT lines, bytes FROM counted",
        &[&repo, &job, &cut],
    )?;
    Ok((row.get(0), row.get(1)))
}

/// The gzip JSONL of archive `id`, if it exists.
pub(crate) fn archive(conn: &mut Conn, id: i64) -> PgResult<Option<Vec<u8>>> {
    Ok(conn
        .query("SELECT gzip FROM event_archives WHERE id = $1", &[&id])?
        .first()
        .map(|r| r.get(0)))
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
pub(crate) fn record_holder(conn: &mut Conn, key: &str, holder: &str) -> PgResult<i64> {
    // The token: one more than the last, and at least the server's time in
    // microseconds, so that it keeps growing even if the row is removed.
    let row = conn.query_one(
        "INSERT INTO locks AS l (key, holder, backend_pid, fence) \
         VALUES ($1, $2, pg_backend_pid(), \
                 (extract(epoch FROM clock_timestamp()) * 1000000)::bigint) \
         ON CONFLICT (key) DO UPDATE SET holder = excluded.holder, \
             backend_pid = excluded.backend_pid, acquired_at = excluded.acquired_at, \
             fence = greatest(l.fence + 1, excluded.fence) \
         RETURNING l.fence",
        &[&key, &holder],
    )?;
    Ok(row.get(0))
}

/// The newest fencing token of lock `key`, if it was ever taken, locked
/// against a new acquisition (`FOR SHARE`) until the transaction ends.
pub(crate) fn fence_for_share(conn: &mut Conn, key: &str) -> PgResult<Option<i64>> {
    let rows = conn.query("SELECT fence FROM locks WHERE key = $1 FOR SHARE", &[&key])?;
    Ok(rows.first().map(|r| r.get(0)))
}

/// Whether this connection's session holds the advisory lock `id`.
pub(crate) fn holds_lock(conn: &mut Conn, id: i64) -> PgResult<bool> {
    let (classid, objid) = keys::lock_id_halves(id);
    let row = conn.query_one(
        "SELECT EXISTS (SELECT 1 FROM pg_locks \
             WHERE locktype = 'advisory' AND granted AND pid = pg_backend_pid() \
               AND classid::bigint = $1 AND objid::bigint = $2 AND objsubid = 1)",
        &[&classid, &objid],
    )?;
    Ok(row.get(0))
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

/// Releases lock `id`; whether it was held. The lock's `locks` row stays
/// (its token must keep growing); it names nobody once the lock is free.
pub(crate) fn unlock(conn: &mut Conn, id: i64) -> PgResult<bool> {
    Ok(conn
        .query("SELECT pg_advisory_unlock($1)", &[&id])?
        .first()
        .is_some_and(|r| r.get(0)))
}

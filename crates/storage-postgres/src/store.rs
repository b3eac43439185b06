//! `PgStorage`: the [`Storage`] trait on PostgreSQL.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use storage_core::{
    Appended, DocKey, Entry, Error, EventCursor, EventLogSummary, EventRecord, EventRetention,
    ExtKind, Fence, JobId, LockGuard, LockHolder, LockKey, LockWait, LogEntry, ReadMode, RepoKey,
    Result, RetentionReport, Scope, Skipped, Storage,
};

use crate::error::{database, refused};
use crate::follow::Listener;
use crate::keys::{self, DocColumns, KeyProblem};
use crate::options::{PgOptions, describe, schema_problem};
use crate::pool::{Conn, PgResult, Pool};
use crate::runtime::off_runtime;
use crate::sql::{self, LogState};
use crate::{retain, schema};

/// The longest event line accepted (16 MiB), the file store's limit, so
/// that a log can move between the two stores either way.
pub const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

/// Lines per page of a log read, and the text a page holds at most (one
/// longer line is still read whole): a reader's memory does not grow with
/// the log.
pub(crate) const PAGE_ROWS: i64 = 1_000;
pub(crate) const PAGE_BYTES: i64 = 1024 * 1024;

/// Documents per page of [`Storage::scan_entries`].
const ENTRY_PAGE: i64 = 1_000;

/// Prodigy's store in a PostgreSQL database.
///
/// Cheap to clone (the pool is shared); `Send` and `Sync`.
#[derive(Clone)]
pub struct PgStorage {
    pub(crate) pool: Arc<Pool>,
}

impl std::fmt::Debug for PgStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStorage")
            .field("store", &self.pool.store())
            .finish_non_exhaustive()
    }
}

/// Where a read from `from` starts in a log that stands at `log`, and
/// whether that is a restart: at the cursor if it is one of this
/// incarnation's and inside the log, at the log's first kept line if the
/// cursor is before it (retention trimmed what it pointed at), and at the
/// log's start for [`EventCursor::START`]; any other cursor (one of an
/// earlier incarnation, past the end, of another store) restarts there.
pub(crate) fn start_of(log: LogState, from: &EventCursor) -> (i64, bool) {
    if *from == EventCursor::START {
        return (log.first, false);
    }
    let ours = from.segment.is_empty()
        && i64::try_from(from.generation) == Ok(log.generation)
        && i64::try_from(from.offset).is_ok_and(|o| o <= log.next);
    if ours {
        (
            i64::try_from(from.offset).expect("checked").max(log.first),
            false,
        )
    } else {
        (log.first, true)
    }
}

/// The cursor after `seq` `next` of the incarnation `generation`.
fn cursor(generation: i64, next: i64) -> EventCursor {
    EventCursor {
        segment: String::new(),
        offset: u64::try_from(next).expect("seq >= 0"),
        generation: u64::try_from(generation).expect("generations start at 1"),
    }
}

impl PgStorage {
    /// Connects to the store at `url` (`postgresql://user:password@host:port/db`
    /// or `host=… user=… dbname=…`) with the default [`PgOptions`]: see
    /// [`PgStorage::connect_with`].
    pub fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, PgOptions::default())
    }

    /// Connects to the store at `url` in the PostgreSQL schema
    /// `options.schema`, creating the schema and its tables, or migrating
    /// them, if needed. A schema written by a newer version of this crate is
    /// refused with [`Error::UnsupportedSchema`], never guessed at; a
    /// database that is not UTF-8 is refused too.
    pub fn connect_with(url: &str, options: PgOptions) -> Result<Self> {
        let PgOptions {
            schema,
            pool_size,
            pool_wait,
        } = options;
        let mut config: postgres::Config = url.parse().map_err(|e| {
            database(
                "parse the connection string",
                "(not shown: it may hold a password)",
                e,
            )
        })?;
        let store = describe(&config, &schema);
        if let Some(problem) = schema_problem(&schema) {
            return Err(refused(
                "use the PostgreSQL schema of",
                &store,
                Some("choose a plain lowercase name, e.g. `prodigy`"),
                format!("{schema:?} cannot be the store's schema: {problem}"),
            ));
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        if config.get_application_name().is_none() {
            config.application_name("prodigy-storage");
        }
        let pool = Pool::new(config, schema, store, pool_size, pool_wait);
        off_runtime(|| {
            let mut conn = pool.detach()?;
            schema::migrate(&mut conn, pool.schema(), pool.store())?;
            pool.attach(conn);
            Ok::<_, Error>(())
        })?;
        Ok(Self {
            pool: Arc::new(pool),
        })
    }

    /// The store as messages name it: its connection string without the
    /// password, and its PostgreSQL schema.
    #[must_use]
    pub fn store(&self) -> &str {
        self.pool.store()
    }

    /// The PostgreSQL schema the store's tables are in.
    #[must_use]
    pub fn schema(&self) -> &str {
        self.pool.schema()
    }

    /// The archive [`Storage::retain_events`] named `name` (its report's
    /// `archive`, `postgres:<schema>.event_archives/<id>`): the dropped
    /// lines as gzip-compressed JSONL, as the file store writes its
    /// archive files. `None` if this store has no such archive.
    pub fn event_archive(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let prefix = format!("postgres:{}.event_archives/", self.schema());
        let Some(id) = name
            .strip_prefix(&prefix)
            .and_then(|id| id.parse::<i64>().ok())
        else {
            return Ok(None);
        };
        self.run("read an event archive of", true, |c| sql::archive(c, id))
    }

    /// Runs `f` on a pooled connection. If `f` is `idempotent` (a read, or
    /// a write whose repetition changes nothing) and the connection turns
    /// out to be lost (an idle connection to a server that has since
    /// restarted), runs it once more on a new connection.
    pub(crate) fn run<T: Send>(
        &self,
        op: &'static str,
        idempotent: bool,
        mut f: impl FnMut(&mut Conn) -> PgResult<T> + Send,
    ) -> Result<T> {
        off_runtime(|| {
            // A write that is not repeated is sent only on a live connection.
            let mut conn = if idempotent {
                self.pool.checkout()?
            } else {
                self.pool.checkout_live()?
            };
            match f(&mut conn) {
                Ok(v) => Ok(v),
                Err(e) if idempotent && conn.is_lost() => {
                    drop(conn);
                    tracing::info!(store = %self.store(), op, error = %e, "retrying on a new connection");
                    let mut conn = self.pool.checkout()?;
                    f(&mut conn).map_err(|e| database(op, self.store(), e))
                }
                Err(e) => Err(database(op, self.store(), e)),
            }
        })
    }

    fn columns<'k>(&self, op: &'static str, key: &'k DocKey) -> Result<DocColumns<'k>> {
        keys::columns(key).map_err(|problem| self.key_problem(op, &problem))
    }

    fn key_problem(&self, op: &'static str, problem: &KeyProblem) -> Error {
        let reason = match problem {
            KeyProblem::VersionTooLarge(v) => format!(
                "checkpoint version {v} is over {}, the most PostgreSQL's bigint holds",
                i64::MAX
            ),
            KeyProblem::UnknownKind(kind) => {
                format!("this build of storage-postgres does not know documents of kind `{kind}`")
            }
        };
        refused(op, self.store(), None, reason)
    }

    fn scope_columns<'s>(
        &self,
        op: &'static str,
        scope: &'s Scope,
    ) -> Result<(&'static str, &'s str, &'s str)> {
        keys::scope_columns(scope).ok_or_else(|| {
            refused(
                op,
                self.store(),
                None,
                format!("this build of storage-postgres does not know the scope {scope:?}"),
            )
        })
    }

    /// `events` as the lines the `events` table holds, and their bytes (a
    /// newline each, as the file store counts them); an event over
    /// [`MAX_LINE_BYTES`] is refused.
    fn lines(&self, op: &'static str, events: &[EventRecord]) -> Result<(Vec<String>, i64)> {
        // A line no strict reader (a `Follower`) could pass is refused
        // before the batch is written.
        storage_core::check_events(events)?;
        let mut lines = Vec::with_capacity(events.len());
        let mut bytes = 0i64;
        for e in events {
            let line = serde_json::to_string(e.json()).expect("a JSON map always serializes");
            if line.len() > MAX_LINE_BYTES {
                return Err(refused(
                    op,
                    self.store(),
                    Some("store the large payload elsewhere and refer to it"),
                    format!(
                        "an event serializes to {} bytes, over the {MAX_LINE_BYTES} bytes a reader holds in memory",
                        line.len()
                    ),
                ));
            }
            bytes += i64::try_from(line.len()).expect("at most 16 MiB") + 1;
            lines.push(line);
        }
        Ok((lines, bytes))
    }

    /// Where a row is, for [`Error::Corrupt`] (which names a path).
    pub(crate) fn location(&self, what: std::fmt::Arguments<'_>) -> PathBuf {
        PathBuf::from(format!("{}: {what}", self.store()))
    }

    fn log_location(&self, repo: &RepoKey, job: &JobId) -> PathBuf {
        self.location(format_args!("events of `{repo}`/`{job}`"))
    }

    /// The record of line `seq`, or why it is none.
    pub(crate) fn parse_line(line: &str) -> std::result::Result<EventRecord, String> {
        serde_json::from_str(line)
            .map_err(|e| e.to_string())
            .and_then(|v| EventRecord::from_json(v).map_err(|e| e.to_string()))
    }

    /// Parses and delivers the line `seq`, expected to be `next`; returns
    /// the next `seq`. Strict: a gap or a line that is no record is
    /// [`Error::Corrupt`]. For a [`Follower`](crate::Follower).
    pub(crate) fn deliver(
        &self,
        repo: &RepoKey,
        job: &JobId,
        next: i64,
        seq: i64,
        line: &str,
        visit: &mut dyn FnMut(u64, EventRecord),
    ) -> Result<i64> {
        let corrupt = |reason: String| Error::Corrupt {
            path: self.log_location(repo, job),
            line: Some(u64::try_from(seq).expect("seq >= 0") + 1),
            reason,
        };
        if seq != next {
            return Err(corrupt(gap_reason(next, seq)));
        }
        let record = Self::parse_line(line).map_err(corrupt)?;
        visit(u64::try_from(seq).expect("seq >= 0"), record);
        Ok(seq + 1)
    }

    fn parse_rows<T>(
        &self,
        rows: &[String],
        table: &str,
        parse: impl Fn(&str) -> std::result::Result<T, String>,
    ) -> Result<Vec<T>> {
        rows.iter()
            .map(|v| {
                parse(v).map_err(|reason| Error::Corrupt {
                    path: self.location(format_args!("{table}")),
                    line: None,
                    reason,
                })
            })
            .collect()
    }
}

/// `Ok` if `current` (a lock's newest token) is `fence`'s, else [`Error::LockLost`].
fn fenced(fence: &Fence, current: Option<i64>) -> Result<()> {
    let current = current.and_then(|c| u64::try_from(c).ok());
    if current == Some(fence.token) {
        Ok(())
    } else {
        Err(Error::LockLost {
            key: fence.key.clone(),
            token: fence.token,
            current,
        })
    }
}

/// Why line `seq` is not the expected `next` (rows removed by hand:
/// appends never leave a gap, see `sql::append_events`).
fn gap_reason(next: i64, seq: i64) -> String {
    format!("seq {next} is missing, the log goes on at {seq}")
}

impl Storage for PgStorage {
    fn put(&self, key: &DocKey, doc: &Value) -> Result<()> {
        let op = "save a document in";
        // What `get` could not parse back is refused before it is written.
        storage_core::check_document(doc)?;
        let k = self.columns(op, key)?;
        // The JSON text is stored as it is, not as `jsonb` (which would
        // reorder fields and renormalise numbers): `get` parses exactly this.
        let body = serde_json::to_string(doc).expect("a JSON value always serializes");
        self.run(op, true, |c| sql::put_document(c, &k, &body))
    }

    fn get(&self, key: &DocKey) -> Result<Option<Value>> {
        let op = "load a document from";
        let k = self.columns(op, key)?;
        let Some(body) = self.run(op, true, |c| sql::get_document(c, &k))? else {
            return Ok(None);
        };
        serde_json::from_str(&body)
            .map(Some)
            .map_err(|e| Error::Corrupt {
                path: self.location(format_args!(
                    "documents ({}, `{}`, `{}`, `{}`, {})",
                    k.kind, k.repo, k.parent, k.id, k.version
                )),
                line: Some(e.line() as u64),
                reason: e.to_string(),
            })
    }

    fn delete(&self, key: &DocKey) -> Result<bool> {
        let op = "delete a document from";
        let k = self.columns(op, key)?;
        // Not retried: a retry after a commit whose answer was lost would say `false`.
        self.run(op, false, |c| sql::delete_document(c, &k))
    }

    fn list(&self, scope: &Scope) -> Result<Vec<DocKey>> {
        let op = "list documents in";
        let (kind, repo, parent) = self.scope_columns(op, scope)?;
        let rows = self.run(op, true, |c| sql::list_documents(c, kind, repo, parent))?;
        let mut keys = rows
            .iter()
            .map(|(id, version)| {
                keys::key_in_scope(scope, id, *version).map_err(|reason| Error::Corrupt {
                    path: self.location(format_args!("documents ({kind}, `{repo}`, `{parent}`)")),
                    line: None,
                    reason,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // Already in this order (`COLLATE "C"` sorts by bytes, as `str` does);
        // sorting again makes the contract this function's, not the server's.
        keys.sort();
        Ok(keys)
    }

    fn list_entries(&self, scope: &Scope) -> Result<Vec<Entry>> {
        let mut entries = Vec::new();
        self.scan_entries(scope, &mut |e| entries.push(e))?;
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(entries)
    }

    fn scan_entries(&self, scope: &Scope, visit: &mut dyn FnMut(Entry)) -> Result<()> {
        let op = "list documents in";
        let columns = self.scope_columns(op, scope)?;
        let (kind, repo, parent) = columns;
        // Keyset paging: each page is a query of its own, so memory holds
        // one page and a visitor may use the store.
        let mut after = (String::new(), -1i64);
        loop {
            let page = self.run(op, true, |c| {
                sql::document_entries(c, columns, (&after.0, after.1), ENTRY_PAGE)
            })?;
            let full = i64::try_from(page.len()).is_ok_and(|n| n == ENTRY_PAGE);
            for (id, version, bytes, modified) in page {
                let key =
                    keys::key_in_scope(scope, &id, version).map_err(|reason| Error::Corrupt {
                        path: self
                            .location(format_args!("documents ({kind}, `{repo}`, `{parent}`)")),
                        line: None,
                        reason,
                    })?;
                visit(Entry::new(
                    key,
                    u64::try_from(bytes).expect("a length"),
                    modified,
                ));
                after = (id, version);
            }
            if !full {
                return Ok(());
            }
        }
    }

    fn entry(&self, key: &DocKey) -> Result<Option<Entry>> {
        let op = "look at a document in";
        let k = self.columns(op, key)?;
        Ok(self
            .run(op, true, |c| sql::document_entry(c, &k))?
            .map(|(bytes, modified)| {
                Entry::new(
                    key.clone(),
                    u64::try_from(bytes).expect("a length"),
                    modified,
                )
            }))
    }

    fn repos(&self) -> Result<Vec<RepoKey>> {
        let rows = self.run("list repositories in", true, sql::repos)?;
        self.parse_rows(&rows, "documents, event_logs", keys::repo_from_row)
    }

    fn jobs(&self, repo: &RepoKey) -> Result<Vec<JobId>> {
        let rows = self.run("list jobs in", true, |c| {
            sql::parents(c, repo.as_str(), sql::JOB_STATE_KINDS)
        })?;
        self.parse_rows(&rows, "documents", keys::job_from_row)
    }

    fn jobs_with_dead_letters(&self, repo: &RepoKey) -> Result<Vec<JobId>> {
        let rows = self.run("list jobs with dead letters in", true, |c| {
            sql::parents(c, repo.as_str(), sql::DEAD_LETTER_KINDS)
        })?;
        self.parse_rows(&rows, "documents", keys::job_from_row)
    }

    fn extension_kinds(&self, repo: &RepoKey) -> Result<Vec<ExtKind>> {
        let rows = self.run("list extension kinds in", true, |c| {
            sql::parents(c, repo.as_str(), sql::EXTENSION_KINDS)
        })?;
        self.parse_rows(&rows, "documents", keys::kind_from_row)
    }

    fn append_events(&self, repo: &RepoKey, job: &JobId, events: &[EventRecord]) -> Result<()> {
        let op = "append events to";
        if events.is_empty() {
            return Ok(());
        }
        let (lines, bytes) = self.lines(op, events)?;
        let channel = keys::channel(self.schema(), repo, job);
        off_runtime(|| {
            // Never retried: if the connection was lost while the commit was
            // in flight, the batch may be in the log (whole) or not at all.
            // A connection that died while idle is found out before the
            // batch is sent (see `Pool::checkout_live`), so that case is
            // never ambiguous.
            let mut conn = self.pool.checkout_live()?;
            let end = match sql::append_events(
                &mut conn,
                repo.as_str(),
                job.as_str(),
                &lines,
                bytes,
            ) {
                Ok(end) => end,
                Err(e) => {
                    let mut err = database(op, self.store(), e);
                    if conn.is_lost()
                        && let Error::Database { next, .. } = &mut err
                    {
                        *next = Some(
                            "the connection was lost, so the batch may be in the log (whole) or \
                             not at all: read the log before appending it again, or append with \
                             append_events_at, whose retry never stores a batch twice",
                        );
                    }
                    return Err(err);
                }
            };
            // The batch is committed: a failed wake-up only delays followers
            // until their next read (their timeout), so it is not an error.
            if let Err(e) = sql::notify(&mut conn, &channel, end) {
                tracing::warn!(store = %self.store(), error = %e, "appended, but could not notify the log's followers; they see the lines at their next read");
            }
            Ok(())
        })
    }

    fn event_log_end(&self, repo: &RepoKey, job: &JobId) -> Result<EventCursor> {
        let log = self.run("read the end of an event log in", true, |c| {
            sql::log_state(c, repo.as_str(), job.as_str())
        })?;
        Ok(log.map_or(EventCursor::START, |l| cursor(l.generation, l.next)))
    }

    fn append_events_at(
        &self,
        repo: &RepoKey,
        job: &JobId,
        expected: &EventCursor,
        events: &[EventRecord],
    ) -> Result<Appended> {
        let op = "append events to";
        let (r, j) = (repo.as_str(), job.as_str());
        let (lines, bytes) = self.lines(op, events)?;
        let count = i64::try_from(lines.len()).expect("a batch fits in memory");
        // `None`: the start of a log that does not exist; else this
        // incarnation at this length. A cursor of another store never fits.
        let at = if *expected == EventCursor::START {
            None
        } else {
            match (
                i64::try_from(expected.generation),
                i64::try_from(expected.offset),
            ) {
                (Ok(g), Ok(o)) if expected.segment.is_empty() && g > 0 => Some((g, o)),
                _ => Some((0, -1)),
            }
        };
        let channel = keys::channel(self.schema(), repo, job);
        let landed = if events.is_empty() {
            let log = self.run(op, true, |c| sql::log_state(c, r, j))?;
            let now = log.map(|l| (l.generation, l.next));
            (now == at).then_some(now)
        } else {
            // Retried on a new connection when the connection was lost: the
            // comparison makes a repeat of a batch that landed a no-op, found
            // out below. The followers are woken on the same connection,
            // right after the commit (a failed wake-up only delays them
            // until their next read).
            self.run(op, true, |c| {
                let landed = sql::append_events_at(c, r, j, at, &lines, bytes)?;
                if let Some((_, next)) = landed
                    && let Err(e) = sql::notify(c, &channel, next)
                {
                    tracing::warn!(store = %self.store(), error = %e, "appended, but could not notify the log's followers; they see the lines at their next read");
                }
                Ok(landed)
            })?
            .map(Some)
        };
        if let Some(now) = landed {
            let end = now.map_or(EventCursor::START, |(g, n)| cursor(g, n));
            return Ok(Appended::Now { end });
        }
        // Not where expected: the batch itself, at that place (an earlier
        // attempt landed), or another writer's lines.
        let (generation, from) = at.map_or((None, 0), |(g, o)| (Some(g), o));
        if !events.is_empty() && from >= 0 {
            let there = self.run(op, true, |c| {
                sql::lines_at(c, r, j, generation, from, count)
            })?;
            if let Some((found, there)) = there
                && there == lines
            {
                return Ok(Appended::Already {
                    end: cursor(found, from + count),
                });
            }
        }
        Err(Error::AppendConflict {
            repo: repo.clone(),
            job: job.clone(),
            end: self.event_log_end(repo, job)?,
        })
    }

    fn read_events_from(
        &self,
        repo: &RepoKey,
        job: &JobId,
        from: &EventCursor,
        mode: ReadMode,
        visit: &mut dyn FnMut(EventRecord),
    ) -> Result<EventLogSummary> {
        let op = "read events from";
        let (r, j) = (repo.as_str(), job.as_str());
        let mut summary = EventLogSummary::default();
        // Where the log stands when the read starts: the read ends at its
        // length then, even while others append (it sees every line
        // committed before it began).
        let Some(log) = self.run(op, true, |c| sql::log_state(c, r, j))? else {
            summary.restarted = *from != EventCursor::START;
            return Ok(summary);
        };
        let file = || self.log_location(repo, job);
        let (mut pos, restarted) = start_of(log, from);
        summary.restarted = restarted;
        // One page per query, each on a connection checked out for that
        // query only (a visitor may use the store).
        while pos < log.next {
            let page = self.run(op, true, |c| {
                sql::read_events_page(c, r, j, (pos, log.next), PAGE_ROWS, PAGE_BYTES)
            })?;
            // Deleted (and perhaps begun again) since the read began: stop;
            // the cursor is this incarnation's, so the next read starts over.
            let Some(page) = page.filter(|p| p.generation == log.generation) else {
                break;
            };
            // Trimmed by retention since the read began: go on from its new start.
            if page.first > pos {
                pos = page.first;
                continue;
            }
            // A bad line at `seq` (a row that does not parse, or a missing
            // one: removed by hand, since appends leave no gap) is corrupt
            // in a strict read, skipped and reported in a lenient one.
            let bad = |summary: &mut EventLogSummary, seq: i64, reason| {
                let line = Some(u64::try_from(seq).expect("seq >= 0") + 1);
                if mode == ReadMode::Strict {
                    return Err(Error::Corrupt {
                        path: file(),
                        line,
                        reason,
                    });
                }
                let name = file().display().to_string();
                summary.skipped.push(Skipped::new(name, line, reason));
                Ok(())
            };
            if page.lines.is_empty() {
                bad(&mut summary, pos, gap_reason(pos, log.next))?;
                pos = log.next;
                continue;
            }
            for (seq, line) in page.lines {
                if seq != pos {
                    bad(&mut summary, pos, gap_reason(pos, seq))?;
                }
                match Self::parse_line(&line) {
                    Ok(record) => {
                        summary.records += 1;
                        visit(record);
                    }
                    Err(reason) => bad(&mut summary, seq, reason)?,
                }
                pos = seq + 1;
            }
        }
        // A transaction never leaves a torn line: `torn_tails` stays empty.
        summary.next = cursor(log.generation, pos);
        Ok(summary)
    }

    fn wait_for_events(
        &self,
        repo: &RepoKey,
        job: &JobId,
        after: &EventCursor,
        timeout: Duration,
    ) -> Result<bool> {
        let op = "wait for events in";
        let deadline = Instant::now() + timeout;
        off_runtime(|| {
            // Listen first, then look: an append committed between the two
            // still wakes this call.
            let mut listener = Listener::new(self, repo, job)?;
            loop {
                let log = sql::log_state(listener.conn(), repo.as_str(), job.as_str())
                    .map_err(|e| database(op, self.store(), e))?;
                if log.is_some_and(|log| log.next > start_of(log, after).0) {
                    return Ok(true);
                }
                let left = deadline.saturating_duration_since(Instant::now());
                // A notification that brought nothing (another log's
                // channel never reaches here; a deletion does not notify)
                // waits again for what is left of the timeout.
                if left.is_zero() || !listener.wait(left)? {
                    return Ok(false);
                }
            }
        })
    }

    fn event_logs(&self, repo: &RepoKey) -> Result<Vec<JobId>> {
        let rows = self.run("list event logs in", true, |c| {
            sql::event_logs(c, repo.as_str())
        })?;
        self.parse_rows(&rows, "event_logs", keys::job_from_row)
    }

    fn event_log_entry(&self, repo: &RepoKey, job: &JobId) -> Result<Option<LogEntry>> {
        Ok(self
            .run("look at an event log in", true, |c| {
                sql::event_log_entry(c, repo.as_str(), job.as_str())
            })?
            .map(|(bytes, modified, oldest)| {
                LogEntry::new(u64::try_from(bytes).expect("a size"), modified, oldest)
            }))
    }

    fn delete_event_log(&self, repo: &RepoKey, job: &JobId) -> Result<bool> {
        // One transaction under the log's row lock (see `sql::delete_event_log`).
        // Not retried: a retry after a commit whose answer was lost would say `false`.
        self.run("delete an event log in", false, |c| {
            sql::in_transaction(c, |c| sql::delete_event_log(c, repo.as_str(), job.as_str()))
        })
    }

    fn retain_events(
        &self,
        repo: &RepoKey,
        job: &JobId,
        policy: &EventRetention,
    ) -> Result<RetentionReport> {
        // Not retried: the report of a retry after a commit whose answer
        // was lost would describe a second, empty trim.
        self.run("trim an event log in", false, |c| {
            sql::in_transaction(c, |c| retain::retain(c, self.schema(), repo, job, policy))
        })
    }

    fn lock(&self, key: &LockKey, holder: &LockHolder, wait: LockWait) -> Result<LockGuard> {
        crate::lock::acquire(&self.pool, key, holder, wait)
    }

    fn put_fenced(&self, key: &DocKey, doc: &Value, fence: &Fence) -> Result<()> {
        let op = "save a document in";
        storage_core::check_document(doc)?;
        let k = self.columns(op, key)?;
        let body = serde_json::to_string(doc).expect("a JSON value always serializes");
        let token = i64::try_from(fence.token).unwrap_or(-1);
        // One transaction: the token read `FOR SHARE` holds off a new
        // acquisition until the write commits (see `lock.rs`). Not
        // repeated on a lost connection: a repeat after a commit whose
        // answer was lost could be refused by a newer holder's token.
        let current = self.run(op, false, |c| {
            sql::in_transaction(c, |c| {
                let current = sql::fence_for_share(c, fence.key.as_str())?;
                if current == Some(token) {
                    sql::put_document(c, &k, &body)?;
                }
                Ok(current)
            })
        })?;
        fenced(fence, current)
    }

    fn append_events_fenced(
        &self,
        repo: &RepoKey,
        job: &JobId,
        events: &[EventRecord],
        fence: &Fence,
    ) -> Result<()> {
        let op = "append events to";
        let (lines, bytes) = self.lines(op, events)?;
        let token = i64::try_from(fence.token).unwrap_or(-1);
        let (r, j) = (repo.as_str(), job.as_str());
        let current = self.run(op, false, |c| {
            sql::in_transaction(c, |c| {
                let current = sql::fence_for_share(c, fence.key.as_str())?;
                let end = if current == Some(token) && !lines.is_empty() {
                    Some(sql::append_events(c, r, j, &lines, bytes)?)
                } else {
                    None
                };
                Ok((current, end))
            })
        })?;
        if let (_, Some(end)) = current {
            let channel = keys::channel(self.schema(), repo, job);
            if let Err(e) = self.run("notify the followers of", true, |c| {
                sql::notify(c, &channel, end)
            }) {
                tracing::warn!(store = %self.store(), error = %e, "appended, but could not notify the log's followers; they see the lines at their next read");
            }
        }
        fenced(fence, current.0)
    }
}

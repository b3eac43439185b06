//! `PgStorage`: the [`Storage`] trait on PostgreSQL.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use storage_core::{
    DocKey, Error, EventLogSummary, EventRecord, JobId, LockGuard, LockHolder, LockKey, LockWait,
    RepoKey, Result, Scope, Storage,
};

use crate::error::{database, refused};
use crate::keys::{self, DocColumns};
use crate::options::{PgOptions, describe, schema_problem};
use crate::pool::{Conn, PgResult, Pool};
use crate::{schema, sql};

/// The longest event line accepted (16 MiB), the file store's limit, so
/// that a log can move between the two stores either way.
pub const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

/// Lines per page of a log read, and the text a page holds at most (one
/// longer line is still read whole): a reader's memory does not grow with
/// the log.
const PAGE_ROWS: i64 = 1_000;
const PAGE_BYTES: i64 = 1024 * 1024;

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
    /// refused with [`Error::UnsupportedLayout`], never guessed at; a
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
        let mut conn = pool.detach()?;
        schema::migrate(&mut conn, pool.schema(), pool.store())?;
        pool.attach(conn);
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

    /// Runs `f` on a pooled connection. If `f` is `idempotent` (a read, or
    /// a write whose repetition changes nothing) and the connection turns
    /// out to be lost (an idle connection to a server that has since
    /// restarted), runs it once more on a new connection.
    pub(crate) fn run<T>(
        &self,
        op: &'static str,
        idempotent: bool,
        mut f: impl FnMut(&mut Conn) -> PgResult<T>,
    ) -> Result<T> {
        let mut conn = self.pool.checkout()?;
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
    }

    fn columns<'k>(&self, op: &'static str, key: &'k DocKey) -> Result<DocColumns<'k>> {
        keys::columns(key).map_err(|keys::VersionTooLarge(v)| {
            refused(
                op,
                self.store(),
                None,
                format!(
                    "checkpoint version {v} is over {}, the most PostgreSQL's bigint holds",
                    i64::MAX
                ),
            )
        })
    }

    /// Where a row is, for [`Error::Corrupt`] (which names a path).
    pub(crate) fn location(&self, what: std::fmt::Arguments<'_>) -> PathBuf {
        PathBuf::from(format!("{}: {what}", self.store()))
    }

    /// Reads the log of `repo`/`job` from `seq` `from` up to `end`, one
    /// page per query, each on a connection checked out for that query
    /// only (so a visitor may use the store); returns the next `seq`.
    pub(crate) fn read_range(
        &self,
        repo: &RepoKey,
        job: &JobId,
        from: u64,
        end: i64,
        visit: &mut dyn FnMut(u64, EventRecord),
    ) -> Result<u64> {
        let mut next = i64::try_from(from).unwrap_or(i64::MAX);
        while next < end {
            let page = self.run("read events from", true, |c| {
                sql::read_events_page(
                    c,
                    repo.as_str(),
                    job.as_str(),
                    next,
                    end,
                    PAGE_ROWS,
                    PAGE_BYTES,
                )
            })?;
            if page.is_empty() {
                break;
            }
            for (seq, line) in page {
                next = self.deliver(repo, job, next, seq, &line, visit)?;
            }
        }
        Ok(u64::try_from(next).expect("seq >= 0"))
    }

    /// Parses and delivers the line `seq`, expected to be `next`; returns the next `seq`.
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
            path: self.location(format_args!("events of `{repo}`/`{job}`")),
            line: Some(u64::try_from(seq).expect("seq >= 0") + 1),
            reason,
        };
        if seq != next {
            // Appends never leave a gap (see `sql::append_events`): a row was
            // removed by hand.
            return Err(corrupt(format!(
                "seq {next} is missing, the log goes on at {seq}"
            )));
        }
        let record = serde_json::from_str(line)
            .map_err(|e| e.to_string())
            .and_then(|v| EventRecord::from_json(v).map_err(|e| e.to_string()))
            .map_err(corrupt)?;
        visit(u64::try_from(seq).expect("seq >= 0"), record);
        Ok(seq + 1)
    }
}

impl Storage for PgStorage {
    fn put(&self, key: &DocKey, doc: &Value) -> Result<()> {
        let op = "save a document in";
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
                    k.kind, k.repo, k.job, k.id, k.version
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
        let (kind, repo, job) = keys::scope_columns(scope);
        let rows = self.run("list documents in", true, |c| {
            sql::list_documents(c, kind, repo, job)
        })?;
        let mut keys = rows
            .iter()
            .map(|(id, version)| {
                keys::key_in_scope(scope, id, *version).map_err(|reason| Error::Corrupt {
                    path: self.location(format_args!("documents ({kind}, `{repo}`, `{job}`)")),
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

    fn jobs(&self, repo: &RepoKey) -> Result<Vec<JobId>> {
        let rows = self.run("list jobs in", true, |c| {
            sql::jobs_with_state(c, repo.as_str())
        })?;
        self.job_ids(&rows, "documents")
    }

    fn append_events(&self, repo: &RepoKey, job: &JobId, events: &[EventRecord]) -> Result<()> {
        let op = "append events to";
        if events.is_empty() {
            return Ok(());
        }
        let mut lines = Vec::with_capacity(events.len());
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
            lines.push(line);
        }
        let channel = keys::channel(self.schema(), repo, job);
        // Never retried: if the connection was lost while the commit was in
        // flight, the batch may be in the log (whole) or not at all.
        let mut conn = self.pool.checkout()?;
        let end = match sql::append_events(&mut conn, repo.as_str(), job.as_str(), &lines) {
            Ok(end) => end,
            Err(e) => {
                let mut err = database(op, self.store(), e);
                if conn.is_lost()
                    && let Error::Database { next, .. } = &mut err
                {
                    *next = Some(
                        "the connection was lost, so the batch may be in the log (whole) or not \
                         at all: read the log before appending it again",
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
    }

    fn read_events(
        &self,
        repo: &RepoKey,
        job: &JobId,
        visit: &mut dyn FnMut(EventRecord),
    ) -> Result<EventLogSummary> {
        // The log's length when the read starts: the read ends there, even
        // while others append (it sees every line committed before it began).
        let Some(end) = self.run("read events from", true, |c| {
            sql::event_log_end(c, repo.as_str(), job.as_str())
        })?
        else {
            return Ok(EventLogSummary::default());
        };
        let mut summary = EventLogSummary::default();
        self.read_range(repo, job, 0, end, &mut |_, record| {
            summary.records += 1;
            visit(record);
        })?;
        // A transaction never leaves a torn line: `torn_tails` stays empty.
        Ok(summary)
    }

    fn event_logs(&self, repo: &RepoKey) -> Result<Vec<JobId>> {
        let rows = self.run("list event logs in", true, |c| {
            sql::event_logs(c, repo.as_str())
        })?;
        self.job_ids(&rows, "event_logs")
    }

    fn lock(&self, key: &LockKey, holder: &LockHolder, wait: LockWait) -> Result<LockGuard> {
        crate::lock::acquire(&self.pool, key, holder, wait)
    }
}

impl PgStorage {
    fn job_ids(&self, rows: &[String], table: &str) -> Result<Vec<JobId>> {
        rows.iter()
            .map(|j| {
                keys::job_from_row(j).map_err(|reason| Error::Corrupt {
                    path: self.location(format_args!("{table}")),
                    line: None,
                    reason,
                })
            })
            .collect()
    }
}

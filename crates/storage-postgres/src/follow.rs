//! Following an event log: read from a cursor, then wait for appends.
//!
//! A [`Follower`] owns a connection (detached from the pool) that
//! `LISTEN`s on the log's channel. Every append notifies that channel right
//! after its commit (`pg_notify`, in a transaction of its own: see
//! `sql::notify` for why not in the append's), so an idle follower sleeps
//! in the client library until the server sends a notification or the
//! timeout passes: no query runs while nothing happens. It listens *before*
//! it reads, so an append committed between a read and the wait still
//! wakes it. An appender that dies between its commit and its notification
//! wakes nobody: its lines are seen at the followers' next read (at the
//! latest when their timeout passes and they are called again).
//!
//! The cursor is a `seq`: the number of lines before it. Lines come in
//! `seq` order without gaps (see `sql::append_events`), so a follower that
//! resumes from its [`Follower::cursor`] sees every line exactly once, even
//! across a lost connection: the call that finds the connection lost
//! returns the error, and the next call connects again and goes on from
//! the cursor.
//!
//! The `Storage` trait has no `follow` yet; this is the primitive its
//! implementation here will call.

use std::sync::Arc;
use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator;
use storage_core::{EventRecord, JobId, RepoKey, Result};

use crate::error::database;
use crate::pool::{Conn, Pool};
use crate::{PgStorage, keys, sql};

/// A reader of one event log that waits for new lines; see the module docs.
pub struct Follower {
    store: PgStorage,
    conn: Option<Conn>,
    repo: RepoKey,
    job: JobId,
    channel: String,
    cursor: u64,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower")
            .field("repo", &self.repo)
            .field("job", &self.job)
            .field("cursor", &self.cursor)
            .finish_non_exhaustive()
    }
}

impl PgStorage {
    /// Follows the event log of `repo`/`job` from `seq` `from` (0: from its
    /// first line; a follower's [`Follower::cursor`] to resume). The log
    /// need not exist yet.
    pub fn follow(&self, repo: &RepoKey, job: &JobId, from: u64) -> Result<Follower> {
        let mut follower = Follower {
            store: self.clone(),
            conn: None,
            repo: repo.clone(),
            job: job.clone(),
            channel: keys::channel(self.schema(), repo, job),
            cursor: from,
        };
        follower.connect()?;
        Ok(follower)
    }
}

impl Follower {
    /// The `seq` of the next line this follower delivers.
    #[must_use]
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    fn pool(&self) -> &Arc<Pool> {
        &self.store.pool
    }

    fn connect(&mut self) -> Result<()> {
        let op = "follow events in";
        let mut conn = self.pool().detach()?;
        if let Err(e) = sql::listen(&mut conn, &self.channel) {
            if !conn.is_lost() {
                return Err(database(op, self.store.store(), e));
            }
            // An idle connection to a server that has since restarted.
            conn = self.pool().connect()?;
            sql::listen(&mut conn, &self.channel)
                .map_err(|e| database(op, self.store.store(), e))?;
        }
        self.conn = Some(conn);
        Ok(())
    }

    /// Delivers the lines from the cursor on to `visit` (with their `seq`);
    /// if there are none, waits up to `timeout` for an append and delivers
    /// its lines. Returns how many lines were delivered: 0 when the timeout
    /// passed with nothing new.
    pub fn next(
        &mut self,
        timeout: Duration,
        visit: &mut dyn FnMut(u64, EventRecord),
    ) -> Result<u64> {
        let deadline = Instant::now() + timeout;
        if self.conn.as_ref().is_none_or(Conn::is_lost) {
            self.conn = None;
            self.connect()?;
        }
        loop {
            let n = self.read_available(visit)?;
            if n > 0 {
                return Ok(n);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            // Nothing new and no notification: no read after the timeout either.
            if left.is_zero() || !self.wait(left)? {
                return Ok(0);
            }
        }
    }

    /// Reads every committed line from the cursor on, on this follower's
    /// connection (a visitor may use the store).
    fn read_available(&mut self, visit: &mut dyn FnMut(u64, EventRecord)) -> Result<u64> {
        let op = "follow events in";
        let start = self.cursor;
        loop {
            let from = i64::try_from(self.cursor).unwrap_or(i64::MAX);
            let conn = self.conn.as_mut().expect("connected");
            let page = sql::read_events_page(
                conn,
                self.repo.as_str(),
                self.job.as_str(),
                from,
                i64::MAX,
                1_000,
                1024 * 1024,
            );
            let page = page.map_err(|e| database(op, self.store.store(), e))?;
            if page.is_empty() {
                return Ok(self.cursor - start);
            }
            let mut next = from;
            for (seq, line) in page {
                next = self
                    .store
                    .deliver(&self.repo, &self.job, next, seq, &line, visit)?;
                self.cursor = u64::try_from(next).expect("seq >= 0");
            }
        }
    }

    /// Blocks until a notification on the log's channel arrives (`true`),
    /// or `left` passes (`false`).
    fn wait(&mut self, left: Duration) -> Result<bool> {
        let op = "wait for events in";
        let conn = self.conn.as_mut().expect("connected");
        let got = conn.client().notifications().timeout_iter(left).next();
        let got = conn.noted(got);
        let store = self.store.store();
        match got {
            Ok(Some(_)) => {
                // Several appends may have notified: one read takes them all.
                let drained = conn.client().notifications().iter().count();
                conn.noted(drained).map_err(|e| database(op, store, e))?;
                Ok(true)
            }
            Ok(None) if conn.client().is_closed() => Err(crate::error::refused(
                op,
                store,
                Some("the next call connects again and goes on from the cursor"),
                "the server closed the connection".to_owned(),
            )),
            Ok(None) => Ok(false),
            Err(e) => Err(database(op, store, e)),
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        if let Some(mut conn) = self.conn.take()
            && !conn.is_lost()
            && sql::unlisten_all(&mut conn).is_ok()
        {
            self.store.pool.attach(conn);
        }
    }
}

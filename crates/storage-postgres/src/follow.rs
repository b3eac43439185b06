//! Following an event log: read from a cursor, then wait for appends.
//!
//! A listener owns a connection (detached from the pool) that
//! `LISTEN`s on one log's channel. Every append notifies that channel right
//! after its commit (`pg_notify`, in a transaction of its own: see
//! `sql::notify` for why not in the append's), so an idle listener sleeps
//! in the client library until the server sends a notification or the
//! timeout passes: no query runs while nothing happens. It listens *before*
//! its owner looks at the log, so an append committed between the look and
//! the wait still wakes it. An appender that dies between its commit and its
//! notification wakes nobody: its lines are seen at the next read (at the
//! latest when the waiter's timeout passes and it looks again).
//!
//! [`Storage::wait_for_events`](storage_core::Storage::wait_for_events)
//! is a listener for one call: listen, look at the log, wait, look again
//! after each notification. A [`Follower`] keeps one for as long as it
//! lives and reads on its connection.
//!
//! A follower's cursor is a `seq`: the number of lines before it in the
//! log's incarnation. Lines come in `seq` order without gaps (see
//! `sql::append_events`), so a follower that resumes from its
//! [`Follower::cursor`] sees every line exactly once, even across a lost
//! connection: the call that finds the connection lost returns the error,
//! and the next call connects again and goes on from the cursor. If
//! retention drops lines the follower has not read, it goes on at the
//! log's new start; if the log is deleted, it waits for the log to begin
//! again and reads that from its start.

use std::sync::Arc;
use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator;
use storage_core::{EventCursor, EventRecord, JobId, RepoKey, Result};

use crate::error::database;
use crate::pool::{Conn, Pool};
use crate::runtime::off_runtime;
use crate::store::{PAGE_BYTES, PAGE_ROWS};
use crate::{PgStorage, keys, sql};

/// A connection that listens on one log's channel; see the module docs.
pub(crate) struct Listener {
    pool: Arc<Pool>,
    conn: Option<Conn>,
    channel: String,
}

impl Listener {
    /// Listens on the channel of the log of `repo`/`job`.
    pub(crate) fn new(store: &PgStorage, repo: &RepoKey, job: &JobId) -> Result<Self> {
        let mut listener = Self {
            pool: Arc::clone(&store.pool),
            conn: None,
            channel: keys::channel(store.schema(), repo, job),
        };
        listener.connect()?;
        Ok(listener)
    }

    fn connect(&mut self) -> Result<()> {
        let op = "follow events in";
        let pool = &self.pool;
        let channel = &self.channel;
        let conn = off_runtime(|| {
            let mut conn = pool.detach()?;
            if let Err(e) = sql::listen(&mut conn, channel) {
                if !conn.is_lost() {
                    return Err(database(op, pool.store(), e));
                }
                // An idle connection to a server that has since restarted.
                conn = pool.connect()?;
                sql::listen(&mut conn, channel).map_err(|e| database(op, pool.store(), e))?;
            }
            Ok(conn)
        })?;
        self.conn = Some(conn);
        Ok(())
    }

    /// Connects again if the connection was lost (the next call after the
    /// one that found it lost).
    fn reconnect_if_lost(&mut self) -> Result<()> {
        if self.conn.as_ref().is_none_or(Conn::is_lost) {
            self.conn = None;
            self.connect()?;
        }
        Ok(())
    }

    /// The listening connection, for the owner's queries.
    pub(crate) fn conn(&mut self) -> &mut Conn {
        self.conn.as_mut().expect("connected")
    }

    /// Blocks until a notification on the channel arrives (`true`), or
    /// `left` passes (`false`).
    pub(crate) fn wait(&mut self, left: Duration) -> Result<bool> {
        let op = "wait for events in";
        let pool = &self.pool;
        let conn = self.conn.as_mut().expect("connected");
        off_runtime(|| {
            let got = conn.client().notifications().timeout_iter(left).next();
            let got = conn.noted(got);
            let store = pool.store();
            match got {
                Ok(Some(_)) => {
                    // Several appends may have notified: one look takes them all.
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
        })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            let pool = &self.pool;
            off_runtime(move || {
                // Stop listening, and forget what arrived meanwhile, before
                // the connection serves other calls.
                let clean = !conn.is_lost()
                    && sql::unlisten_all(&mut conn).is_ok()
                    && conn
                        .client()
                        .notifications()
                        .iter()
                        .count()
                        .map(|_| ())
                        .is_ok();
                if clean {
                    pool.attach(conn);
                }
            });
        }
    }
}

/// A reader of one event log that waits for new lines; see the module docs.
pub struct Follower {
    store: PgStorage,
    listener: Listener,
    repo: RepoKey,
    job: JobId,
    cursor: u64,
    /// The log incarnation the cursor belongs to, once seen.
    generation: Option<i64>,
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
    /// Follows the event log of `repo`/`job` from `from`:
    /// [`EventCursor::START`] for its first line, or a follower's
    /// [`Follower::cursor`] (or any cursor of this store's reads) to resume.
    /// The log need not exist yet. A cursor of another incarnation of the
    /// log (deleted and begun again), or past its end, starts at its first
    /// line: nothing is skipped.
    pub fn follow(&self, repo: &RepoKey, job: &JobId, from: &EventCursor) -> Result<Follower> {
        let (cursor, generation) = match (
            i64::try_from(from.generation),
            from.segment.is_empty() && *from != EventCursor::START,
        ) {
            (Ok(g), true) if g > 0 => (from.offset, Some(g)),
            // START, or not a cursor of this store: from the first line.
            _ => (0, None),
        };
        Ok(Follower {
            store: self.clone(),
            listener: Listener::new(self, repo, job)?,
            repo: repo.clone(),
            job: job.clone(),
            cursor,
            generation,
        })
    }
}

impl Follower {
    /// Where this follower stands: the cursor to resume from (with
    /// [`PgStorage::follow`], or any read of this store). It names the
    /// log's incarnation, so a resumed follower never continues in another.
    #[must_use]
    pub fn cursor(&self) -> EventCursor {
        match self.generation {
            Some(g) => EventCursor {
                segment: String::new(),
                offset: self.cursor,
                generation: u64::try_from(g).expect("generations start at 1"),
            },
            None if self.cursor == 0 => EventCursor::START,
            None => EventCursor {
                segment: String::new(),
                offset: self.cursor,
                generation: 0,
            },
        }
    }

    /// The `seq` of the next line this follower delivers.
    #[must_use]
    pub fn seq(&self) -> u64 {
        self.cursor
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
        self.listener.reconnect_if_lost()?;
        loop {
            let n = self.read_available(visit)?;
            if n > 0 {
                return Ok(n);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            // Nothing new and no notification: no read after the timeout either.
            if left.is_zero() || !self.listener.wait(left)? {
                return Ok(0);
            }
        }
    }

    /// Reads every committed line from the cursor on, on this follower's
    /// connection (a visitor may use the store).
    fn read_available(&mut self, visit: &mut dyn FnMut(u64, EventRecord)) -> Result<u64> {
        let op = "follow events in";
        let mut delivered = 0;
        loop {
            let from = i64::try_from(self.cursor).unwrap_or(i64::MAX);
            let (repo, job) = (self.repo.as_str(), self.job.as_str());
            let conn = self.listener.conn();
            let page = off_runtime(|| {
                sql::read_events_page(conn, repo, job, (from, i64::MAX), PAGE_ROWS, PAGE_BYTES)
            })
            .map_err(|e| database(op, self.store.store(), e))?;
            let Some(page) = page else {
                // No log (yet, or any more): the next one starts from its start.
                if self.generation.take().is_some() {
                    self.cursor = 0;
                }
                return Ok(delivered);
            };
            match self.generation {
                Some(g) if g != page.generation => {
                    // Deleted and begun again: its start.
                    self.generation = Some(page.generation);
                    self.cursor = u64::try_from(page.first).expect("seq >= 0");
                    continue;
                }
                None => self.generation = Some(page.generation),
                Some(_) => {}
            }
            if from > page.next {
                // Past the log's end: not a place this incarnation ever had
                // (a cursor from elsewhere): its start.
                self.cursor = u64::try_from(page.first).expect("seq >= 0");
                continue;
            }
            if page.first > from {
                // Retention dropped lines this follower had not read.
                self.cursor = u64::try_from(page.first).expect("seq >= 0");
                continue;
            }
            if page.lines.is_empty() {
                return Ok(delivered);
            }
            let mut next = from;
            for (seq, line) in page.lines {
                next = self
                    .store
                    .deliver(&self.repo, &self.job, next, seq, &line, visit)?;
                self.cursor = u64::try_from(next).expect("seq >= 0");
                delivered += 1;
            }
        }
    }
}

//! A small pool of connections, each with its prepared statements.
//!
//! # Why our own
//!
//! The store needs three things from a pool and no more: a bounded number of
//! connections shared by calls from many threads, connections set up once
//! (search path, keepalives, durability: see [`crate::sql::setup_session`]),
//! and connections that can *leave* the pool: a held lock and a follower
//! each own one for as long as they live (a session-level advisory lock and
//! a `LISTEN` belong to one connection), and they must not count against
//! the pool, or eight held locks would starve every other call. A `Mutex`
//! over a `Vec` and a `Condvar` do that in a page; `r2d2` would add a
//! dependency and a health-check thread for the same.
//!
//! # Lost connections
//!
//! A connection that reported a lost connection (see
//! [`crate::error::connection_lost`]) is dropped instead of being returned,
//! and so is every idle one: they were opened to the same server, which has
//! most likely restarted, and each would otherwise fail one more call. The
//! next call opens a fresh connection.
//!
//! # Prepared statements
//!
//! Every statement is prepared once per connection and cached by its SQL
//! text (all of it is `'static`, in [`crate::sql`]), so a call is one round
//! trip: `Bind`/`Execute`/`Sync`, no `Parse`.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use postgres::types::ToSql;
use postgres::{Client, NoTls, Row, Statement};
use storage_core::Result;

use crate::error::{connection_lost, database, refused};

/// One connection and the statements prepared on it.
pub(crate) struct Conn {
    /// Always `Some` until dropped (taken out to be closed off a runtime thread).
    client: Option<Client>,
    statements: HashMap<&'static str, Statement>,
    lost: bool,
    /// Since when it has been idle in the pool (`None` while in use).
    idle_since: Option<Instant>,
}

/// How long a connection may have been idle before a write that must not
/// be sent twice checks that it is still alive ([`Pool::checkout_live`]).
const CHECK_AFTER_IDLE: Duration = Duration::from_millis(100);

impl Drop for Conn {
    fn drop(&mut self) {
        // Closing a connection blocks on the client library's runtime: not
        // on a thread that drives tokio's (see `runtime.rs`).
        if let Some(client) = self.client.take() {
            crate::runtime::off_runtime(move || drop(client));
        }
    }
}

/// A result of the client library.
pub(crate) type PgResult<T> = std::result::Result<T, postgres::Error>;

impl Conn {
    fn statement(&mut self, sql: &'static str) -> PgResult<Statement> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client().prepare(sql);
        let s = self.note(s)?;
        self.statements.insert(sql, s.clone());
        Ok(s)
    }

    /// Remembers whether `r` lost the connection.
    fn note<T>(&mut self, r: PgResult<T>) -> PgResult<T> {
        if let Err(e) = &r
            && (connection_lost(e) || self.client().is_closed())
        {
            self.lost = true;
        }
        r
    }

    /// Runs the prepared statement `sql`, returning its rows.
    pub(crate) fn query(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> PgResult<Vec<Row>> {
        let s = self.statement(sql)?;
        let r = self.client().query(&s, params);
        self.note(r)
    }

    /// Runs the prepared statement `sql`, which returns exactly one row.
    pub(crate) fn query_one(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> PgResult<Row> {
        let s = self.statement(sql)?;
        let r = self.client().query_one(&s, params);
        self.note(r)
    }

    /// Runs the prepared statement `sql`, returning how many rows it changed.
    pub(crate) fn execute(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> PgResult<u64> {
        let s = self.statement(sql)?;
        let r = self.client().execute(&s, params);
        self.note(r)
    }

    /// Runs `sql` (statements without parameters) through the simple protocol.
    pub(crate) fn batch(&mut self, sql: &str) -> PgResult<()> {
        let r = self.client().batch_execute(sql);
        self.note(r)
    }

    /// The client, for a transaction or notifications. Errors on it are
    /// not noted: the caller passes them to [`Conn::noted`].
    pub(crate) fn client(&mut self) -> &mut Client {
        self.client.as_mut().expect("present until dropped")
    }

    /// [`Conn::note`] for results of [`Conn::client`].
    pub(crate) fn noted<T>(&mut self, r: PgResult<T>) -> PgResult<T> {
        self.note(r)
    }

    /// Whether the connection is lost (never to be reused).
    pub(crate) fn is_lost(&self) -> bool {
        self.lost || self.client.as_ref().is_none_or(Client::is_closed)
    }
}

struct State {
    idle: Vec<Conn>,
    /// Pooled connections: idle ones and checked-out ones.
    open: usize,
}

/// The pool of one store.
pub(crate) struct Pool {
    config: postgres::Config,
    schema: String,
    store: String,
    size: usize,
    wait: Duration,
    state: Mutex<State>,
    returned: Condvar,
}

fn guard(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic elsewhere must not stop every later call.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Pool {
    pub(crate) fn new(
        config: postgres::Config,
        schema: String,
        store: String,
        size: usize,
        wait: Duration,
    ) -> Self {
        Self {
            config,
            schema,
            store,
            size: size.max(1),
            wait,
            state: Mutex::new(State {
                idle: Vec::new(),
                open: 0,
            }),
            returned: Condvar::new(),
        }
    }

    /// The store's name for messages (no password).
    pub(crate) fn store(&self) -> &str {
        &self.store
    }

    /// The store's PostgreSQL schema.
    pub(crate) fn schema(&self) -> &str {
        &self.schema
    }

    /// Opens a new connection, set up for the store.
    pub(crate) fn connect(&self) -> Result<Conn> {
        crate::runtime::off_runtime(|| {
            let client = self
                .config
                .connect(NoTls)
                .map_err(|e| database("connect to", &self.store, e))?;
            let mut conn = Conn {
                client: Some(client),
                statements: HashMap::new(),
                lost: false,
                idle_since: None,
            };
            crate::sql::setup_session(&mut conn, &self.schema, &self.store)?;
            Ok(conn)
        })
    }

    /// A pooled connection, waiting up to the pool's wait for one to be free.
    pub(crate) fn checkout(&self) -> Result<Pooled<'_>> {
        let start = Instant::now();
        let mut state = guard(&self.state);
        loop {
            if let Some(conn) = state.idle.pop() {
                return Ok(Pooled {
                    pool: self,
                    conn: Some(conn),
                });
            }
            if state.open < self.size {
                state.open += 1;
                drop(state);
                return match self.connect() {
                    Ok(conn) => Ok(Pooled {
                        pool: self,
                        conn: Some(conn),
                    }),
                    Err(e) => {
                        guard(&self.state).open -= 1;
                        self.returned.notify_one();
                        Err(e)
                    }
                };
            }
            let waited = start.elapsed();
            if waited >= self.wait {
                return Err(refused(
                    "get a pooled connection to",
                    &self.store,
                    Some("raise the pool size, or look for calls that hold connections"),
                    format!(
                        "all {} pooled connections stayed in use for {:.1}s",
                        self.size,
                        waited.as_secs_f64()
                    ),
                ));
            }
            state = self
                .returned
                .wait_timeout(state, self.wait.saturating_sub(waited))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// A pooled connection known to be alive, for a write that is not
    /// repeated when its connection is lost (an append without an expected
    /// position, a deletion, a trim): one that was idle for
    /// [`CHECK_AFTER_IDLE`] or more is checked first with an empty query,
    /// and one found dead (the server restarted, or ended the idle session)
    /// is replaced before anything is sent. So the write fails as "may have
    /// happened" only if the connection is lost while it is in flight.
    pub(crate) fn checkout_live(&self) -> Result<Pooled<'_>> {
        for _ in 0..3 {
            let mut conn = self.checkout()?;
            let stale = conn
                .idle_since
                .is_some_and(|t| t.elapsed() >= CHECK_AFTER_IDLE);
            conn.idle_since = None;
            if !stale {
                return Ok(conn);
            }
            let alive = conn.client().is_valid(Duration::from_secs(10));
            if alive.is_ok() {
                return Ok(conn);
            }
            tracing::info!(store = %self.store, "an idle connection was found dead before a write; opening another");
            conn.lost = true;
        }
        self.checkout()
    }

    /// A connection that leaves the pool (an idle one, or a new one), for
    /// a lock or a follower; give it back with [`Pool::attach`].
    pub(crate) fn detach(&self) -> Result<Conn> {
        let idle = {
            let mut state = guard(&self.state);
            let conn = state.idle.pop();
            if conn.is_some() {
                state.open -= 1;
            }
            conn
        };
        match idle {
            Some(conn) => Ok(conn),
            None => self.connect(),
        }
    }

    /// Takes back a detached connection if the pool has room (else closes it).
    pub(crate) fn attach(&self, conn: Conn) {
        if conn.is_lost() {
            self.lost();
            return;
        }
        let mut conn = conn;
        conn.idle_since = Some(Instant::now());
        let mut state = guard(&self.state);
        if state.open < self.size {
            state.open += 1;
            state.idle.push(conn);
            drop(state);
            self.returned.notify_one();
        }
    }

    fn give_back(&self, conn: Conn) {
        let mut state = guard(&self.state);
        state.open -= 1;
        if conn.is_lost() {
            drop(state);
            drop(conn);
            self.lost();
            return;
        }
        state.open += 1;
        let mut conn = conn;
        conn.idle_since = Some(Instant::now());
        state.idle.push(conn);
        drop(state);
        self.returned.notify_one();
    }

    /// A connection was lost: drop the idle ones too (see the module docs).
    fn lost(&self) {
        let stale = {
            let mut state = guard(&self.state);
            state.open -= state.idle.len();
            std::mem::take(&mut state.idle)
        };
        if !stale.is_empty() {
            tracing::info!(store = %self.store, connections = stale.len(), "a connection was lost; reconnecting on the next calls");
        }
        drop(stale);
        self.returned.notify_all();
    }
}

/// A checked-out connection; dropping it returns it to the pool.
pub(crate) struct Pooled<'a> {
    pool: &'a Pool,
    conn: Option<Conn>,
}

impl std::ops::Deref for Pooled<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.conn.as_ref().expect("present until dropped")
    }
}

impl std::ops::DerefMut for Pooled<'_> {
    fn deref_mut(&mut self) -> &mut Conn {
        self.conn.as_mut().expect("present until dropped")
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.give_back(conn);
        }
    }
}

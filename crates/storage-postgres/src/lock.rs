//! Resume locks: session-level advisory locks, one connection per held lock.
//!
//! # Why advisory locks on their own connection
//!
//! A session-level advisory lock belongs to the server session that took
//! it: the server releases it when that session ends, whether the holder
//! let go, crashed, or was killed (its socket closes; across a network, the
//! server-side TCP keepalives set in `sql::setup_session` find a vanished
//! machine within about two minutes). So a dead holder never leaves a lock
//! that someone must clear by hand. The guard therefore owns the connection
//! that took the lock, detached from the pool for as long as it is held;
//! dropping the guard releases the lock and gives the connection back.
//!
//! The other side of that: a lock lasts as long as its connection. If the
//! server restarts or the connection breaks while the guard lives, the
//! server has released the lock, and another process can take it although
//! the guard still exists (see `docs/postgres.md`, Limitations).
//!
//! # Waiting
//!
//! [`LockWait::NoWait`] is `pg_try_advisory_lock`. [`LockWait::Timeout`]
//! is `pg_advisory_lock` under `lock_timeout`: the server wakes the waiter
//! the moment the holder lets go, with no polling.
//!
//! # The holder's description
//!
//! After taking the lock, the holder upserts its [`LockHolder`] into the
//! `locks` table with its server process id. A refused caller reads it back
//! only if that server process still holds the advisory lock (`pg_locks`),
//! so a row left behind by a holder that died names nobody. Like the file
//! store's, the description is a hint for messages, never the lock.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use storage_core::{Error, LockGuard, LockHolder, LockKey, LockWait, Result};

use crate::error::database;
use crate::keys;
use crate::pool::{Conn, PgResult, Pool};
use crate::sql;

/// What a [`LockGuard`] owns: the connection whose session holds the lock.
struct Held {
    pool: Arc<Pool>,
    conn: Mutex<Option<Conn>>,
    key: String,
    id: i64,
}

impl Drop for Held {
    fn drop(&mut self) {
        let conn = self
            .conn
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(conn) = conn else { return };
        // Dropped in async code too: off tokio's threads (see `runtime.rs`).
        crate::runtime::off_runtime(|| self.release(conn));
    }
}

impl Held {
    fn release(&self, mut conn: Conn) {
        match sql::unlock(&mut conn, &self.key, self.id) {
            Ok(true) => self.pool.attach(conn),
            Ok(false) => {
                tracing::warn!(store = %self.pool.store(), key = %self.key, "a released lock was not held by its connection; closing it");
            }
            // The session is gone already (the server restarted, the
            // connection broke): the server released the lock back then.
            Err(e) if conn.is_lost() => {
                tracing::warn!(store = %self.pool.store(), key = %self.key, error = %e, "the connection holding a lock was lost before the lock was released: the server released it when the connection was lost");
            }
            // Closing the connection ends its session, which releases the lock.
            Err(e) => {
                tracing::warn!(store = %self.pool.store(), key = %self.key, error = %e, "cannot release a lock; closing its connection releases it");
            }
        }
    }
}

/// Takes lock `key` for `holder`, waiting as `wait` says.
pub(crate) fn acquire(
    pool: &Arc<Pool>,
    key: &LockKey,
    holder: &LockHolder,
    wait: LockWait,
) -> Result<LockGuard> {
    crate::runtime::off_runtime(|| acquire_here(pool, key, holder, wait))
}

fn acquire_here(
    pool: &Arc<Pool>,
    key: &LockKey,
    holder: &LockHolder,
    wait: LockWait,
) -> Result<LockGuard> {
    let op = "take a lock in";
    let id = keys::lock_id(pool.schema(), key);
    let start = Instant::now();
    let mut conn = pool.detach()?;
    let mut got = attempt(&mut conn, id, wait, start);
    if got.is_err() && conn.is_lost() {
        // An idle connection to a server that has since restarted: its
        // session is gone, so it held nothing; try once on a new one.
        conn = pool.connect()?;
        got = attempt(&mut conn, id, wait, start);
    }
    let got = got.map_err(|e| database(op, pool.store(), e))?;
    if !got {
        let described = sql::holder(&mut conn, key.as_str(), id).ok().flatten();
        pool.attach(conn);
        return Err(Error::Locked {
            key: key.clone(),
            holder: described.and_then(|text| serde_json::from_str(&text).ok()),
            waited: matches!(wait, LockWait::Timeout(_)).then(|| start.elapsed()),
        });
    }
    let text = serde_json::to_string(holder).expect("a LockHolder always serializes");
    if let Err(e) = sql::record_holder(&mut conn, key.as_str(), &text) {
        // Dropping the connection releases the lock with its session.
        return Err(database("record a lock's holder in", pool.store(), e));
    }
    let held = Held {
        pool: Arc::clone(pool),
        conn: Mutex::new(Some(conn)),
        key: key.as_str().to_owned(),
        id,
    };
    Ok(LockGuard::new(key.clone(), Box::new(held)))
}

fn attempt(conn: &mut Conn, id: i64, wait: LockWait, start: Instant) -> PgResult<bool> {
    match wait {
        LockWait::NoWait => sql::try_lock(conn, id),
        LockWait::Timeout(limit) => {
            let left = limit.saturating_sub(start.elapsed());
            if left == Duration::ZERO {
                sql::try_lock(conn, id)
            } else {
                sql::lock_waiting(conn, id, left)
            }
        }
    }
}

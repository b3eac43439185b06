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
//! # Knowing that the lock is still held, and fencing
//!
//! A guard has a keeper: a thread that confirms, every second
//! ([`KEEP_EVERY`]), on the lock's own connection, that its session still
//! holds the advisory lock (`pg_locks`). That also keeps the connection
//! busy, so no idle timeout ends it (and every connection of the store
//! turns the server's `idle_session_timeout` off). A failed confirmation
//! (the backend terminated, the server restarted, the network broken)
//! marks the lock lost; so does a lease of [`LEASE`] without a
//! confirmation (a query that hangs on a vanished network). The holder
//! asks `LockGuard::is_lost` (no I/O) or `LockGuard::check` (a query).
//! Cost: one short statement per second per held lock.
//!
//! Each acquisition also takes the next fencing token, in the lock's
//! `locks` row (`fence`: one more than the last, and at least the server's
//! time in microseconds). A fenced write reads that token `FOR SHARE` in
//! the write's transaction and writes only if it is the writer's: a new
//! acquisition's update of the row waits for the write's commit, so no
//! acquisition comes between the check and the write.
//!
//! # The holder's description
//!
//! After taking the lock, the holder upserts its [`LockHolder`] into the
//! `locks` table with its server process id. A refused caller reads it back
//! only if that server process still holds the advisory lock (`pg_locks`),
//! so a row left behind by a holder that died names nobody. Like the file
//! store's, the description is a hint for messages, never the lock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant};

use storage_core::{Error, LockGuard, LockHolder, LockKey, LockWait, Result};

use crate::error::database;
use crate::keys;
use crate::pool::{Conn, PgResult, Pool};
use crate::sql;

/// How often a guard's keeper confirms that its lock is still held.
pub const KEEP_EVERY: Duration = Duration::from_secs(1);

/// How long a lock counts as held without a confirmation.
pub const LEASE: Duration = Duration::from_secs(2);

/// What a guard and its keeper share.
struct Shared {
    conn: Mutex<Option<Conn>>,
    id: i64,
    lost: AtomicBool,
    /// When the lock was last confirmed held.
    confirmed: Mutex<Instant>,
}

impl Shared {
    /// Asks the lock's session whether it still holds the lock; a lost
    /// connection or a "no" marks it lost for good.
    fn confirm(&self) -> bool {
        if self.lost.load(Ordering::Relaxed) {
            return false;
        }
        let mut conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(c) = conn.as_mut() else {
            return false;
        };
        let held = sql::holds_lock(c, self.id).unwrap_or(false);
        if held {
            *self
                .confirmed
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Instant::now();
        } else {
            self.lost.store(true, Ordering::Relaxed);
        }
        held
    }

    /// Lost for good once a confirmation failed or the lease ran out: a
    /// holder told so must not be told otherwise later (a confirmation
    /// that arrives after the lease, from a connection that hung, does not
    /// take it back).
    fn known_lost(&self) -> bool {
        if self.lost.load(Ordering::Relaxed) {
            return true;
        }
        let expired = self
            .confirmed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .elapsed()
            > LEASE;
        if expired {
            self.lost.store(true, Ordering::Relaxed);
        }
        expired
    }
}

/// What a [`LockGuard`] owns: the connection whose session holds the lock,
/// and the keeper that watches it.
struct Held {
    pool: Arc<Pool>,
    shared: Arc<Shared>,
    key: String,
    token: u64,
    stop: Option<mpsc::Sender<()>>,
    keeper: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Held {
    fn drop(&mut self) {
        // Stop the keeper first: it uses the connection.
        drop(self.stop.take());
        if let Some(k) = self.keeper.take() {
            let _ = k.join();
        }
        let conn = self
            .shared
            .conn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(conn) = conn else { return };
        // Dropped in async code too: off tokio's threads (see `runtime.rs`).
        crate::runtime::off_runtime(|| self.release(conn));
    }
}

impl storage_core::HeldLock for Held {
    fn token(&self) -> u64 {
        self.token
    }

    fn check(&self) -> Result<bool> {
        Ok(crate::runtime::off_runtime(|| self.shared.confirm()))
    }

    fn known_lost(&self) -> bool {
        self.shared.known_lost()
    }
}

impl Held {
    fn release(&self, mut conn: Conn) {
        match sql::unlock(&mut conn, self.shared.id) {
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

/// Starts the keeper of `shared`: it confirms the lock every
/// [`KEEP_EVERY`] until told to stop or the lock is lost.
fn keep(shared: &Arc<Shared>) -> (mpsc::Sender<()>, Option<std::thread::JoinHandle<()>>) {
    let (stop, stopped) = mpsc::channel::<()>();
    let theirs = Arc::clone(shared);
    let keeper = std::thread::Builder::new()
        .name("prodigy-storage-lock-keeper".into())
        .spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(KEEP_EVERY) {
                if !theirs.confirm() {
                    tracing::warn!(
                        "a held lock was lost (its connection's session no longer holds it)"
                    );
                    return;
                }
            }
        })
        .ok();
    (stop, keeper)
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
    let token = match sql::record_holder(&mut conn, key.as_str(), &text) {
        Ok(t) => u64::try_from(t).unwrap_or(0),
        // Dropping the connection releases the lock with its session.
        Err(e) => return Err(database("record a lock's holder in", pool.store(), e)),
    };
    let shared = Arc::new(Shared {
        conn: Mutex::new(Some(conn)),
        id,
        lost: AtomicBool::new(false),
        confirmed: Mutex::new(Instant::now()),
    });
    let (stop, keeper) = keep(&shared);
    let held = Held {
        pool: Arc::clone(pool),
        shared,
        key: key.as_str().to_owned(),
        token,
        stop: Some(stop),
        keeper,
    };
    Ok(LockGuard::with_liveness(key.clone(), Box::new(held)))
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

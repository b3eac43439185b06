//! Test support: a fresh store per test in its own PostgreSQL schema,
//! visible skips, and worker processes (this test binary, re-executed).

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};

use storage_postgres::{PgOptions, PgStorage};

/// The connection string of the test server (set by `cargo xtask test-postgres`).
pub const URL_VAR: &str = "PRODIGY_TEST_POSTGRES_URL";
/// A JSON argv that runs the test server's `pg_ctl` (set by the harness).
pub const PG_CTL_VAR: &str = "PRODIGY_TEST_POSTGRES_PG_CTL";
/// The arguments of a worker process (JSON array), see `worker.rs`.
pub const WORKER_VAR: &str = "PRODIGY_PG_WORKER";

/// Marks the calling test as not run, for `reason`: prints `SKIP: <test>:
/// <reason>` past libtest's capture; under `PRODIGY_REQUIRE_ALL_TESTS=1`,
/// fails instead (as `storage_tests::skip` does).
pub fn skip(reason: &str) {
    use std::io::Write as _;
    assert!(
        std::env::var_os("PRODIGY_REQUIRE_ALL_TESTS").is_none_or(|v| v != "1"),
        "this test would be skipped ({reason}), but PRODIGY_REQUIRE_ALL_TESTS=1 requires every test to run"
    );
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("a test");
    let _ = writeln!(std::io::stderr().lock(), "SKIP: {name}: {reason}");
}

/// The test server's URL, or a skip.
pub fn url() -> Option<String> {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            skip(&format!(
                "no PostgreSQL server: {URL_VAR} is not set (run `cargo xtask test-postgres`)"
            ));
            None
        }
    }
}

/// Tests share the server; the restart test takes it alone. A lock of
/// our own rather than `std::sync::RwLock`, whose guards are not `Send`:
/// the async suites hand their store (and this hold) to a tokio test.
struct Server {
    state: Mutex<(usize, bool)>, // (shared holders, held alone)
    changed: Condvar,
}

static SERVER: Server = Server {
    state: Mutex::new((0, false)),
    changed: Condvar::new(),
};

/// A test's hold on the server: shared, or alone.
struct Hold {
    alone: bool,
}

impl Hold {
    fn take(alone: bool) -> Self {
        let mut state = SERVER.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let (shared, held_alone) = *state;
            if !held_alone && (!alone || shared == 0) {
                break;
            }
            state = SERVER
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if alone {
            state.1 = true;
        } else {
            state.0 += 1;
        }
        Self { alone }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut state = SERVER.state.lock().unwrap_or_else(PoisonError::into_inner);
        if self.alone {
            state.1 = false;
        } else {
            state.0 -= 1;
        }
        SERVER.changed.notify_all();
    }
}

/// A store in a PostgreSQL schema of its own, dropped at the end.
pub struct TestDb {
    pub store: PgStorage,
    pub url: String,
    pub schema: String,
    _hold: Hold,
}

fn unique_schema() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .subsec_nanos();
    format!(
        "t_{}_{}_{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// `url` with `application_name` set, so that a test can find the store's
/// own server processes in `pg_stat_activity`.
pub fn with_app_name(url: &str, name: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}application_name={name}")
}

impl TestDb {
    /// A fresh store, or `None` after a skip.
    pub fn new() -> Option<Self> {
        let url = url()?;
        Some(Self::with(&url, Hold::take(false)))
    }

    /// A fresh store while no other test uses the server (for restarts).
    pub fn alone() -> Option<Self> {
        let url = url()?;
        Some(Self::with(&url, Hold::take(true)))
    }

    fn with(url: &str, hold: Hold) -> Self {
        let schema = unique_schema();
        let url = with_app_name(url, &schema);
        let store = PgStorage::connect_with(&url, PgOptions::default().schema(&schema))
            .expect("connect to the test server");
        Self {
            store,
            url,
            schema,
            _hold: hold,
        }
    }

    /// A fresh store for a check of the async suites (`None` after a skip),
    /// kept (with its schema) for as long as the check runs.
    pub fn for_suite() -> Option<storage_tokio::suite::TestStore> {
        let db = Self::new()?;
        Some(storage_tokio::suite::TestStore::keeping(
            db.store.clone(),
            db,
        ))
    }

    /// Another handle on the same store (a new pool), as another process would have.
    pub fn reopen(&self) -> PgStorage {
        PgStorage::connect_with(&self.url, PgOptions::default().schema(&self.schema))
            .expect("reopen")
    }

    /// The server processes of the store's connections (found by their
    /// `application_name`, the schema's name), but the one asking.
    pub fn session_pids(&self) -> Vec<i32> {
        self.raw()
            .query(
                "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND pid <> pg_backend_pid()",
                &[&self.schema],
            )
            .expect("pg_stat_activity")
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// Ends every session of the store on the server side (as a server
    /// restart or an administrator would); how many it ended.
    pub fn terminate_sessions(&self) -> i64 {
        self.raw()
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE application_name = $1 AND pid <> pg_backend_pid()",
                &[&self.schema],
            )
            .expect("terminate")
            .get(0)
    }

    /// A plain client with the search path on the store's schema, to look
    /// at (or tamper with) the tables directly.
    pub fn raw(&self) -> postgres::Client {
        let mut c = postgres::Client::connect(&self.url, postgres::NoTls).expect("raw client");
        c.batch_execute(&format!("SET search_path TO \"{}\"", self.schema))
            .expect("search path");
        c
    }

    /// The worker command line prefix for this store.
    pub fn worker_args<'a>(&'a self, verb: &'a str) -> Vec<&'a str> {
        vec![verb, &self.url, &self.schema]
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // On a thread of its own: an async check drops this in a tokio
        // task, where the client library must not block.
        let (url, schema) = (&self.url, &self.schema);
        std::thread::scope(|s| {
            s.spawn(|| {
                if let Ok(mut c) = postgres::Client::connect(url, postgres::NoTls) {
                    let _ = c.batch_execute(&format!(
                        "SET lock_timeout = '5s'; DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
                    ));
                }
            });
        });
    }
}

/// This test binary as a worker process running `args` (see `worker.rs`).
pub fn worker(args: &[&str]) -> Command {
    let mut c = Command::new(std::env::current_exe().expect("the test binary"));
    c.args([
        "worker::run_when_spawned",
        "--exact",
        "--nocapture",
        "--test-threads=1",
        "--quiet",
    ])
    .env(WORKER_VAR, serde_json::to_string(args).expect("json"))
    .env_remove("PRODIGY_REQUIRE_ALL_TESTS")
    .stdin(Stdio::null())
    .stderr(Stdio::inherit());
    c
}

/// A started worker and its output lines (`worker: …`, prefix removed).
pub struct Worker {
    pub child: Child,
    lines: std::io::Lines<BufReader<ChildStdout>>,
}

impl Worker {
    /// Starts a worker and waits until it says `ready`.
    pub fn start(args: &[&str], ready: &str) -> Self {
        let mut child = worker(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn worker");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut w = Self { child, lines };
        let first = w.line().expect("the worker said something");
        assert_eq!(first, ready, "worker said {first:?}");
        w
    }

    /// The worker's next line, without its `worker: ` prefix.
    pub fn line(&mut self) -> Option<String> {
        for line in self.lines.by_ref() {
            let line = line.expect("read worker");
            if let Some(rest) = line.strip_prefix("worker: ") {
                return Some(rest.to_owned());
            }
        }
        None
    }

    /// SIGKILL: no destructors, no clean-up; what a crash does.
    pub fn kill(mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("reap");
    }
}

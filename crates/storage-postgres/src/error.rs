//! From the client library's errors to [`storage_core::Error`]: which ones
//! mean the connection is gone (the pool then drops it, and every idle
//! connection with it), and which next step each kind of failure tells.

use postgres::error::SqlState;
use storage_core::Error;

/// The error of `op` on `store`, with the next step its kind tells.
pub(crate) fn database(op: &'static str, store: &str, e: postgres::Error) -> Error {
    let next = next_step(&e);
    Error::Database {
        op,
        store: store.to_owned(),
        next,
        source: Box::new(e),
    }
}

/// An error of ours (not the server's) in `op` on `store`.
pub(crate) fn refused(
    op: &'static str,
    store: &str,
    next: Option<&'static str>,
    reason: String,
) -> Error {
    Error::Database {
        op,
        store: store.to_owned(),
        next,
        source: reason.into(),
    }
}

/// Whether `e` means this connection can no longer be used: closed, an I/O
/// error, a connection-class SQLSTATE, or the server shutting down.
pub(crate) fn connection_lost(e: &postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        Some(code) => {
            let c = code.code();
            c.starts_with("08")
                || *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW
        }
        // No SQLSTATE: the client library failed (I/O, protocol, timeout).
        None => true,
    }
}

fn next_step(e: &postgres::Error) -> Option<&'static str> {
    let Some(code) = e.code() else {
        return Some(
            "check that the server is running and reachable at that address; the next call connects again",
        );
    };
    Some(match code.code() {
        "28P01" | "28000" => "check the user and password of the connection string",
        "3D000" => "create the database (`createdb`), or fix its name in the connection string",
        "3F000" => "the store's PostgreSQL schema is missing; connect again to create it",
        "42501" => "grant the role the privileges docs/postgres.md lists",
        "53300" => {
            "the server has no free connection: lower the pool size, or raise its `max_connections`"
        }
        "57P01" | "57P02" | "57P03" => {
            "the server is shutting down or restarting; the next call connects again"
        }
        c if c.starts_with("08") => {
            "the connection to the server was lost; the next call connects again"
        }
        _ => return None,
    })
}

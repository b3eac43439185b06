//! What a [`PgStorage`](crate::PgStorage) connects to and how: the
//! connection string, the PostgreSQL schema the store lives in, the pool.
//!
//! The store's name in messages is the connection string *without* its
//! password (user, hosts, ports, database, schema): errors and logs can be
//! pasted anywhere.

use std::fmt::Write as _;
use std::time::Duration;

use postgres::config::Host;

/// How a [`PgStorage`](crate::PgStorage) uses the server.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PgOptions {
    /// The PostgreSQL schema (namespace) that holds the store's tables,
    /// created on first use: lowercase ASCII letters, digits and `_`, not
    /// starting with a digit or `pg_`, at most 63 bytes. Default `prodigy`.
    pub schema: String,
    /// The most connections the pool keeps for documents and event logs
    /// (each held lock and each follower has one more of its own). Default 8.
    pub pool_size: usize,
    /// How long a call waits for a free connection before failing. Default 30 s.
    pub pool_wait: Duration,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            schema: DEFAULT_SCHEMA.to_owned(),
            pool_size: 8,
            pool_wait: Duration::from_secs(30),
        }
    }
}

impl PgOptions {
    /// The store in PostgreSQL schema `schema` (checked when connecting).
    #[must_use]
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// At most `size` pooled connections (at least 1).
    #[must_use]
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size.max(1);
        self
    }

    /// Wait at most `wait` for a free pooled connection.
    #[must_use]
    pub fn pool_wait(mut self, wait: Duration) -> Self {
        self.pool_wait = wait;
        self
    }
}

/// The PostgreSQL schema a store uses unless told otherwise.
pub const DEFAULT_SCHEMA: &str = "prodigy";

/// Why `name` cannot be the store's schema, if it cannot. The name is
/// written into SQL as a quoted identifier (`LISTEN`, `CREATE SCHEMA` and
/// `search_path` take no parameters), so only plain names are accepted.
pub(crate) fn schema_problem(name: &str) -> Option<&'static str> {
    let first_ok = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_');
    if name.is_empty() || name.len() > 63 {
        Some("it must be 1 to 63 bytes long")
    } else if !first_ok
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        Some("it may hold only lowercase ASCII letters, digits and `_`, and not start with a digit")
    } else if name.starts_with("pg_") {
        Some("names starting with `pg_` are PostgreSQL's own")
    } else {
        None
    }
}

/// `name` as a quoted SQL identifier (for a name [`schema_problem`] accepted).
pub(crate) fn quoted(name: &str) -> String {
    debug_assert!(schema_problem(name).is_none());
    format!("\"{name}\"")
}

/// The store as messages name it: `postgresql://user@host:port/db (schema s)`,
/// never with the password.
pub(crate) fn describe(config: &postgres::Config, schema: &str) -> String {
    let mut out = String::from("postgresql://");
    if let Some(user) = config.get_user() {
        let _ = write!(out, "{user}@");
    }
    let ports = config.get_ports();
    for (i, host) in config.get_hosts().iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match host {
            Host::Tcp(h) => out.push_str(h),
            Host::Unix(p) => out.push_str(&p.display().to_string()),
        }
        if let Some(port) = ports.get(i).or_else(|| ports.first()) {
            let _ = write!(out, ":{port}");
        }
    }
    out.push('/');
    if let Some(db) = config.get_dbname() {
        out.push_str(db);
    }
    let _ = write!(out, " (schema {schema})");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_identifiers() {
        for ok in ["prodigy", "t_123", "_x", "a1"] {
            assert_eq!(schema_problem(ok), None, "{ok}");
        }
        for bad in [
            "",
            "1abc",
            "Prodigy",
            "a-b",
            "a\"b",
            "pg_catalog",
            "ünï",
            &"x".repeat(64),
        ] {
            assert!(schema_problem(bad).is_some(), "{bad}");
        }
        assert_eq!(quoted("prodigy"), "\"prodigy\"");
    }

    #[test]
    fn the_store_is_named_without_its_password() {
        let c: postgres::Config = "postgresql://alice:s3cret@db.example:5433/team"
            .parse()
            .expect("valid");
        let d = describe(&c, "prodigy");
        assert_eq!(
            d,
            "postgresql://alice@db.example:5433/team (schema prodigy)"
        );
        let c: postgres::Config = "host=/run/postgresql user=bob password=s3cret dbname=x"
            .parse()
            .expect("valid");
        let d = describe(&c, "p");
        assert!(!d.contains("s3cret"), "{d}");
        assert_eq!(d, "postgresql://bob@/run/postgresql/x (schema p)");
    }
}

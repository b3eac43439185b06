//! The store's tables, created and migrated by the crate itself.
//!
//! `schema_version` holds one row per applied migration; the schema's
//! version is the highest. Opening a store runs, in one transaction under a
//! transaction-level advisory lock (so processes opening a new store at
//! once create it once): create the PostgreSQL schema if needed, read the
//! version, refuse a version newer than this build knows
//! ([`Error::UnsupportedSchema`], as the file store refuses a newer
//! `layout.json`: nothing is guessed at or written),
//! and apply the missing migrations. DDL is transactional in PostgreSQL, so
//! a migration that fails leaves the previous version whole.

use storage_core::{Error, Result};

use crate::pool::Conn;
use crate::sql::{self, MIGRATIONS, SCHEMA_VERSION};

/// Brings the store's schema to [`SCHEMA_VERSION`]; returns the version it found.
pub(crate) fn migrate(conn: &mut Conn, schema: &str, store: &str) -> Result<i32> {
    let map = |e| crate::error::database("create or migrate the tables of", store, e);
    let result = (|| {
        let mut tx = conn.client().transaction()?;
        sql::lock_migrations(&mut tx, schema)?;
        sql::create_schema(&mut tx, schema)?;
        let found = sql::schema_version(&mut tx)?;
        if found > SCHEMA_VERSION {
            return Ok(Err(found));
        }
        for (i, migration) in MIGRATIONS.iter().enumerate() {
            let version = i32::try_from(i + 1).expect("few migrations");
            if version > found {
                sql::apply_migration(&mut tx, version, migration)?;
            }
        }
        tx.commit()?;
        Ok(Ok(found))
    })();
    match conn.noted(result).map_err(map)? {
        Ok(found) => {
            if found < SCHEMA_VERSION {
                tracing::info!(
                    store,
                    from = found,
                    to = SCHEMA_VERSION,
                    "migrated the store's tables"
                );
            }
            Ok(found)
        }
        Err(found) => Err(Error::UnsupportedSchema {
            store: store.to_owned(),
            found: u64::try_from(found).expect("positive"),
            supported: u64::try_from(SCHEMA_VERSION).expect("positive"),
        }),
    }
}

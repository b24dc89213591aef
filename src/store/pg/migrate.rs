//! Migrations of a PostgreSQL registry database: the files of `migrations/postgres/`,
//! applied in order.
//!
//! Invariants:
//! - all pending migrations are applied in one transaction that first takes the
//!   transaction-scoped advisory lock [`MIGRATION_LOCK_KEY`], so services starting at
//!   once against one database apply each migration exactly once, and a failure leaves
//!   the database as it was;
//! - each applied version has one row in `schema_migrations` (created by migration 1,
//!   written in the same transaction as the migration itself);
//! - waiting for another migrator is bounded (`lock_timeout`, [`LOCK_WAIT`]);
//! - a database whose schema is newer than this build is refused, never altered.

use super::describe;
use crate::store::StoreError;
use postgres::Client;

/// The migrations, in order: version, file name, SQL. The test
/// `every_file_is_listed_in_order` keeps this list and `migrations/postgres/` in step.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "0001_init.sql",
        include_str!("../../../migrations/postgres/0001_init.sql"),
    ),
    (
        2,
        "0002_waiters.sql",
        include_str!("../../../migrations/postgres/0002_waiters.sql"),
    ),
];

/// Key of the advisory lock migrators take: "lockledg" in ASCII, so no other
/// application's key collides with it by accident.
pub const MIGRATION_LOCK_KEY: i64 = 0x6c6f_636b_6c65_6467;

/// Longest wait for another migrator's transaction (a PostgreSQL interval).
pub const LOCK_WAIT: &str = "60s";

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("postgresql migration failed: {}", describe(.0))]
    Postgres(#[from] postgres::Error),
    #[error("postgresql migration {version} ({name}) failed: {}", describe(.source))]
    Step {
        version: i32,
        name: &'static str,
        source: postgres::Error,
    },
    #[error(
        "the database has schema version {found}, newer than this lockledger knows \
         ({known}); run a newer lockledger"
    )]
    TooNew { found: i32, known: i32 },
}

impl From<MigrateError> for StoreError {
    fn from(e: MigrateError) -> StoreError {
        StoreError::Migration(e.to_string())
    }
}

/// Brings the database `client` is connected to up to the newest schema. Returns the
/// versions this call applied, in order (empty when the schema was current already,
/// e.g. because another service migrated it first).
pub fn migrate(client: &mut Client) -> Result<Vec<i32>, MigrateError> {
    let mut tx = client.transaction()?;
    tx.batch_execute(&format!("SET LOCAL lock_timeout = '{LOCK_WAIT}'"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])?;
    // Read after taking the lock: a migrator that held it before us has committed.
    let has_table: bool = tx
        .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])?
        .try_get(0)?;
    let mut done: Vec<i32> = Vec::new();
    if has_table {
        for row in tx.query("SELECT version FROM schema_migrations", &[])? {
            done.push(row.try_get(0)?);
        }
    }
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    if let Some(&found) = done.iter().max() {
        if found > known {
            return Err(MigrateError::TooNew { found, known });
        }
    }
    let mut applied = Vec::new();
    for &(version, name, sql) in MIGRATIONS {
        if done.contains(&version) {
            continue;
        }
        let step = |source| MigrateError::Step {
            version,
            name,
            source,
        };
        tx.batch_execute(sql).map_err(step)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, now())",
            &[&version],
        )
        .map_err(step)?;
        applied.push(version);
    }
    tx.commit()?;
    if !applied.is_empty() {
        log::info!("postgresql schema migrated: applied {applied:?}");
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_is_listed_in_order() {
        let on_disk = crate::store::migration_files("postgres");
        let listed: Vec<String> = MIGRATIONS.iter().map(|m| m.1.to_string()).collect();
        assert_eq!(on_disk, listed);
        for (i, (version, name, _)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(*version, i as i32 + 1, "{name}");
            assert!(name.starts_with(&format!("{version:04}_")), "{name}");
        }
    }

    #[test]
    fn the_lock_key_spells_lockledg() {
        assert_eq!(MIGRATION_LOCK_KEY.to_be_bytes(), *b"lockledg");
    }
}

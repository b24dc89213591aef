//! Connections to the registry database: settings, migrations and the read pool.
//!
//! Invariants:
//! - Every connection runs with WAL, `synchronous=NORMAL`, a busy timeout and foreign
//!   keys on (set per connection, since SQLite forgets them on close).
//! - Migrations run under an exclusive flock on `registry.migrate.lock`, so several
//!   processes starting on a fresh storage directory at once apply them exactly once.

use super::StoreError;
use crate::config::Config;
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{Connection, OpenFlags};
use rusqlite_migration::{Migrations, M};
use std::path::Path;
use std::time::{Duration, Instant};

/// The migrations, in order. `tests::every_migration_file_is_listed` keeps this list and
/// the `migrations/` directory in step.
pub const MIGRATIONS: &[(&str, &str)] = &[(
    "0001_init.sql",
    include_str!("../../migrations/0001_init.sql"),
)];

pub type ReadPool = r2d2::Pool<SqliteConnectionManager>;

/// Per-connection settings; SQLite keeps none of them across connections.
pub fn configure(conn: &Connection, busy_timeout: Duration) -> rusqlite::Result<()> {
    conn.busy_timeout(busy_timeout)?;
    conn.execute_batch("PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;")?;
    Ok(())
}

fn migrations() -> Migrations<'static> {
    Migrations::new(MIGRATIONS.iter().map(|(_, sql)| M::up(sql)).collect())
}

/// Opens (creating if needed) the database and brings its schema up to date.
pub fn open_and_migrate(config: &Config) -> Result<Connection, StoreError> {
    std::fs::create_dir_all(&config.storage_dir)?;
    let path = config.db_path();
    let migrate_lock = config.storage_dir.join("registry.migrate.lock");
    // Another process may be migrating right now: wait for it rather than race it.
    let _exclusive = crate::kernel::flock::acquire_until(
        &migrate_lock,
        Instant::now() + Duration::from_secs(60),
        &|| false,
    )
    .map_err(|e| StoreError::Migration(e.to_string()))?;
    let mut conn = Connection::open(&path).map_err(StoreError::from_sqlite)?;
    configure(&conn, config.busy_timeout).map_err(StoreError::from_sqlite)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(StoreError::from_sqlite)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Migration(format!(
            "the database refused WAL mode (journal_mode={mode})"
        )));
    }
    migrations()
        .to_latest(&mut conn)
        .map_err(|e| StoreError::Migration(e.to_string()))?;
    conn.execute(
        "INSERT INTO registry_settings (key, value) VALUES ('max_hold_ms', ?1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value WHERE value <> excluded.value",
        [config.max_hold.as_millis() as i64],
    )
    .map_err(StoreError::from_sqlite)?;
    Ok(conn)
}

pub fn read_pool(config: &Config, max_size: u32) -> Result<ReadPool, StoreError> {
    let busy = config.busy_timeout;
    let manager = SqliteConnectionManager::file(config.db_path())
        .with_flags(
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_URI,
        )
        .with_init(move |c| configure(c, busy));
    r2d2::Pool::builder()
        .max_size(max_size)
        .min_idle(Some(1))
        .connection_timeout(config.pool_timeout)
        .build(manager)
        .map_err(|_| StoreError::Busy)
}

/// A read-only connection for admin SQL: opened read-only, `query_only` on top.
pub fn open_read_only(db_path: &Path, busy_timeout: Duration) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        db_path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(StoreError::from_sqlite)?;
    conn.busy_timeout(busy_timeout)
        .map_err(StoreError::from_sqlite)?;
    conn.execute_batch("PRAGMA query_only = ON;")
        .map_err(StoreError::from_sqlite)?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_migration_file_is_listed_in_order() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        on_disk.sort();
        let listed: Vec<String> = MIGRATIONS.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(on_disk, listed);
        for (i, name) in listed.iter().enumerate() {
            assert!(name.starts_with(&format!("{:04}_", i + 1)), "{name}");
        }
        migrations().validate().unwrap();
    }

    #[test]
    fn migrating_twice_is_a_no_op_and_creates_the_views() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::defaults(dir.path());
        drop(open_and_migrate(&config).unwrap());
        let conn = open_and_migrate(&config).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        for view in ["current_locks", "stale_locks", "lock_history"] {
            let n: i64 = conn
                .query_row(&format!("SELECT count(*) FROM {view}"), [], |r| r.get(0))
                .unwrap();
            assert_eq!(n, 0, "{view}");
        }
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }
}

//! Connections to the registry database: settings, migrations and the read pool.
//!
//! Invariants:
//! - Every connection runs with WAL, `synchronous=NORMAL`, a busy timeout and foreign
//!   keys on (set per connection, since SQLite forgets them on close).
//! - Migrations run under an exclusive flock on `registry.migrate.lock`, so several
//!   processes starting on a fresh storage directory at once apply them exactly once.

use super::{busy_holder, StoreError};
use crate::config::Config;
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::OptionalExtension;
use rusqlite::{Connection, OpenFlags};
use rusqlite_migration::{Migrations, M};
use std::path::Path;
use std::time::{Duration, Instant};

/// The migrations, in order. `tests::every_migration_file_is_listed` keeps this list and
/// the `migrations/` directory in step.
pub const MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_init.sql",
        include_str!("../../migrations/0001_init.sql"),
    ),
    (
        "0002_file_identity.sql",
        include_str!("../../migrations/0002_file_identity.sql"),
    ),
    (
        "0003_event_inbox.sql",
        include_str!("../../migrations/0003_event_inbox.sql"),
    ),
    (
        "0004_holders_lease_index.sql",
        include_str!("../../migrations/0004_holders_lease_index.sql"),
    ),
    (
        "0005_inbox_check.sql",
        include_str!("../../migrations/0005_inbox_check.sql"),
    ),
    (
        "0006_log_check.sql",
        include_str!("../../migrations/0006_log_check.sql"),
    ),
];

pub type ReadPool = r2d2::Pool<SqliteConnectionManager>;

/// Per-connection settings; SQLite keeps none of them across connections.
pub fn configure(conn: &Connection, busy_timeout: Duration) -> rusqlite::Result<()> {
    conn.busy_timeout(busy_timeout)?;
    conn.execute_batch("PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;")?;
    Ok(())
}

fn migrations() -> Migrations<'static> {
    Migrations::new(
        MIGRATIONS
            .iter()
            .map(|&(name, sql)| match name {
                "0006_log_check.sql" => M::up_with_hook(sql, after_schema_edit),
                _ => M::up(sql),
            })
            .collect(),
    )
}

/// The end of 0006's edit of `event_log`'s text: checks it took and raises
/// `schema_version`, so every connection, in this process or another, reloads the schema.
fn after_schema_edit(tx: &rusqlite::Transaction) -> rusqlite_migration::HookResult {
    let sql: String = tx.query_row(
        "SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = 'event_log'",
        [],
        |r| r.get(0),
    )?;
    if !sql.contains("CONSTRAINT event_kind CHECK (CASE event") || sql.contains("event IN (") {
        return Err(rusqlite_migration::HookError::Hook(format!(
            "migration 0006: event_log's CHECK was not the one it rewrites: {sql}"
        )));
    }
    let version: i64 = tx.query_row("PRAGMA schema_version", [], |r| r.get(0))?;
    tx.execute_batch(&format!("PRAGMA schema_version = {}", version + 1))?;
    Ok(())
}

/// Page size of a database lockledger creates (an existing one keeps its own).
pub const PAGE_SIZE: u32 = 1024;

/// Mode of a storage directory lockledger creates.
pub const STORAGE_DIR_MODE: u32 = 0o700;
/// Mode of `registry.db` (SQLite gives its `-wal` and `-shm` files the same mode).
pub const DB_FILE_MODE: u32 = 0o600;

/// Creates `registry.db` with [`DB_FILE_MODE`] if it does not exist, so SQLite never
/// creates it (or its `-wal`/`-shm`) with the umask's wider default.
fn create_db_file(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(DB_FILE_MODE)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::Io(e)),
    }
}

/// Opens (creating if needed) the database and brings its schema up to date.
pub fn open_and_migrate(config: &Config) -> Result<Connection, StoreError> {
    crate::kernel::flock::ensure_dir(&config.storage_dir, STORAGE_DIR_MODE)?;
    let path = config.db_path();
    let migrate_lock = config.storage_dir.join("registry.migrate.lock");
    // Another process may be migrating right now: wait for it rather than race it.
    let _exclusive = crate::kernel::flock::acquire_until(
        &migrate_lock,
        DB_FILE_MODE,
        Instant::now() + Duration::from_secs(60),
        &|| false,
    )
    .map_err(|e| StoreError::Migration(e.to_string()))?;
    create_db_file(&path)?;
    let mut conn = Connection::open(&path).map_err(StoreError::from_sqlite)?;
    configure(&conn, config.busy_timeout).map_err(StoreError::from_sqlite)?;
    // A new database gets small pages: each commit of an acquire or release writes a few
    // pages to the WAL, and 1 KiB frames cost a fifth less CPU per pair than 4 KiB ones
    // (BENCHMARKS.md). Only possible before the first page is written.
    let pages: i64 = conn
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .map_err(StoreError::from_sqlite)?;
    if pages == 0 {
        conn.execute_batch(&format!("PRAGMA page_size = {PAGE_SIZE}"))
            .map_err(StoreError::from_sqlite)?;
    }
    // Only what must change is written, so a process can open a current database while
    // another one (stopped in the middle of a commit, say) holds its write lock.
    let current: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .map_err(StoreError::from_sqlite)?;
    let mode: String = if current.eq_ignore_ascii_case("wal") {
        current
    } else {
        conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(StoreError::from_sqlite)?
    };
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Migration(format!(
            "the database refused WAL mode (journal_mode={mode})"
        )));
    }
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(StoreError::from_sqlite)?;
    if version < MIGRATIONS.len() as i64 {
        migrations().to_latest(&mut conn).map_err(|e| match e {
            rusqlite_migration::Error::RusqliteError { err, .. } => {
                match StoreError::from_sqlite(err) {
                    StoreError::Busy => busy_holder(&path),
                    other => other,
                }
            }
            other => StoreError::Migration(other.to_string()),
        })?;
    }
    let max_hold = config.max_hold.as_millis() as i64;
    let stored: Option<i64> = conn
        .query_row(
            "SELECT value FROM registry_settings WHERE key = 'max_hold_ms'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(StoreError::from_sqlite)?;
    if stored != Some(max_hold) {
        conn.execute(
            "INSERT INTO registry_settings (key, value) VALUES ('max_hold_ms', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [max_hold],
        )
        .map_err(StoreError::from_sqlite)?;
    }
    Ok(conn)
}

/// How a pool's connections open the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The service and other processes that write.
    ReadWrite,
    /// A user who may read the storage but not write it (`lockledger status` run by an
    /// operator): opened read-only; if no other process has the database open (no
    /// `-wal`), as an immutable file, which needs no `-shm`.
    ReadOnly,
}

/// Whether the database can be read as `Access::ReadOnly` right now, and how.
fn read_only_uri(db_path: &Path) -> String {
    let mut wal = db_path.as_os_str().to_os_string();
    wal.push("-wal");
    let immutable = !Path::new(&wal).exists();
    let mut uri = String::from("file:");
    for b in db_path.as_os_str().as_encoded_bytes() {
        match b {
            b'?' | b'#' | b'%' => uri.push_str(&format!("%{b:02X}")),
            _ => uri.push(*b as char),
        }
    }
    uri.push_str(if immutable {
        "?mode=ro&immutable=1"
    } else {
        "?mode=ro"
    });
    uri
}

pub fn read_pool(config: &Config, max_size: u32, access: Access) -> Result<ReadPool, StoreError> {
    let busy = config.busy_timeout;
    let manager = match access {
        Access::ReadWrite => SqliteConnectionManager::file(config.db_path()).with_flags(
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_URI,
        ),
        Access::ReadOnly => SqliteConnectionManager::file(read_only_uri(&config.db_path()))
            .with_flags(
                OpenFlags::SQLITE_OPEN_READ_ONLY
                    | OpenFlags::SQLITE_OPEN_NO_MUTEX
                    | OpenFlags::SQLITE_OPEN_URI,
            ),
    }
    .with_init(move |c| {
        c.busy_timeout(busy)?;
        if access == Access::ReadWrite {
            configure(c, busy)?;
        }
        Ok(())
    });
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
        read_only_uri(db_path),
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
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
        let on_disk = crate::store::migration_files("");
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
        let page: i64 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .unwrap();
        assert_eq!(page, PAGE_SIZE as i64, "a new database gets small pages");
        for view in [
            "current_locks",
            "stale_locks",
            "lock_history",
            "lock_events",
        ] {
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

    #[test]
    fn migration_6_rewrites_the_log_check_in_place_for_every_connection() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::defaults(dir.path());
        std::fs::create_dir_all(dir.path()).unwrap();
        let mut old = Connection::open(config.db_path()).unwrap();
        configure(&old, Duration::from_secs(5)).unwrap();
        migrations().to_version(&mut old, 5).unwrap();
        old.execute_batch(
            "INSERT INTO locks (lock_id, namespace, owner, field, file, created_at)
             VALUES (1, 'n', 'o', 'f', 'f.lock', 1)",
        )
        .unwrap();
        let kinds = crate::store::history::EventKind::ALL.map(|k| k.as_str());
        let insert = "INSERT INTO event_log (event_id, at, lock_id, namespace, owner, field, event)
                      VALUES (?1, 1, 1, 'n', 'o', 'f', ?2)";
        for (i, kind) in kinds.iter().enumerate() {
            old.execute(insert, rusqlite::params![i as i64 + 1, kind])
                .unwrap();
        }
        // `old` stays open across the upgrade, as another process's connection would.
        let conn = open_and_migrate(&config).unwrap();
        let sql: String = conn
            .query_row(
                "SELECT sql FROM sqlite_schema WHERE name = 'event_log'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(
            sql.contains("CHECK (CASE event") && !sql.contains(" IN ("),
            "{sql}"
        );
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        let kept: Vec<String> = conn
            .prepare("SELECT event FROM event_log ORDER BY event_id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(kept, kinds, "every row is kept");
        for c in [&conn, &old] {
            let bogus = c.execute(insert, rusqlite::params![100, "bogus"]);
            let text = bogus.unwrap_err().to_string();
            assert!(
                text.contains("event_kind"),
                "the new check refuses it: {text}"
            );
            c.execute(insert, rusqlite::params![101, "acquired"])
                .unwrap();
            c.execute("DELETE FROM event_log WHERE event_id = 101", [])
                .unwrap();
        }
    }
}

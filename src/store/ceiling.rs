//! The token ceiling: a bound on every fencing token ever issued, kept in the database
//! *and* in a file beside it (`storage/token-ceiling`), so tokens never go backwards even
//! if `registry.db` is lost and created anew.
//!
//! Invariants:
//! - Every token issued is at most `registry_settings.token_ceiling`, and the file holds
//!   at least that value: the ceiling is raised (by [`BLOCK`]) in the file first —
//!   written, fsynced and renamed into place — and only then in the database, inside the
//!   write transaction that issues the token. So one fsync per million grants.
//! - A database created while the file exists starts every lock above the file's value
//!   (`registry_settings.token_floor`), so a token issued after the loss of a database is
//!   greater than every token issued before it.
//! - If the whole storage directory is lost, the ceiling goes with it; the running
//!   service notices that its database is gone and stops (see `writer`).

use super::StoreError;
use rusqlite::{Connection, OptionalExtension};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};

/// How far the ceiling is raised at a time.
pub const BLOCK: i64 = 1_000_000;

#[derive(Debug)]
pub struct Ceiling {
    file: PathBuf,
    /// The newest ceiling this process has seen in the database (a lower bound).
    known: AtomicI64,
}

fn setting(conn: &Connection, key: &str) -> rusqlite::Result<i64> {
    Ok(conn
        .query_row(
            "SELECT value FROM registry_settings WHERE key = ?1",
            [key],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0))
}

fn set(conn: &Connection, key: &str, value: i64) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO registry_settings (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )?;
    Ok(())
}

/// The value in the ceiling file, 0 if there is none.
pub fn read_file(path: &Path) -> Result<i64, StoreError> {
    match std::fs::read_to_string(path) {
        Ok(text) => text.trim().parse::<i64>().map_err(|_| {
            StoreError::Migration(format!(
                "{} does not hold a number; it is lockledger's token ceiling",
                path.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(StoreError::Io(e)),
    }
}

/// Writes the ceiling file durably: a temporary file, fsync, rename, fsync of the
/// directory. Mode 0600.
fn write_file(path: &Path, value: i64) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(".token-ceiling.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    writeln!(f, "{value}")?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

impl Ceiling {
    /// Sets up the ceiling for a freshly opened (and migrated) database: a new database
    /// starts above the file's ceiling; an older one makes sure the file is not behind it.
    pub fn open(conn: &Connection, file: PathBuf) -> Result<Ceiling, StoreError> {
        let in_file = read_file(&file)?;
        let in_db = setting(conn, "token_ceiling").map_err(StoreError::from_sqlite)?;
        let issued: i64 = conn
            .query_row("SELECT coalesce(max(last_token), 0) FROM locks", [], |r| {
                r.get(0)
            })
            .map_err(StoreError::from_sqlite)?;
        let floor = setting(conn, "token_floor").map_err(StoreError::from_sqlite)?;
        let fresh = issued == 0 && floor == 0;
        if fresh && in_file > 0 {
            log::warn!(
                "this registry database is new but a token ceiling of {in_file} is on record: \
                 tokens continue above it (was registry.db lost?)"
            );
            set(conn, "token_floor", in_file).map_err(StoreError::from_sqlite)?;
        }
        // Tokens issued before this version kept no ceiling: cover them now.
        let needed = in_db.max(in_file).max(issued).max(floor);
        if in_file < needed {
            write_file(&file, needed)?;
        }
        if in_db < needed {
            set(conn, "token_ceiling", needed).map_err(StoreError::from_sqlite)?;
        }
        Ok(Ceiling {
            file,
            known: AtomicI64::new(needed),
        })
    }

    /// Makes sure `token` is covered by the ceiling before the transaction that issues
    /// it commits. Runs inside that (IMMEDIATE) transaction, so processes sharing the
    /// database raise it one at a time.
    pub fn cover(&self, conn: &Connection, token: i64) -> Result<(), StoreError> {
        if token <= self.known.load(Ordering::Relaxed) {
            return Ok(());
        }
        let in_db = setting(conn, "token_ceiling").map_err(StoreError::from_sqlite)?;
        if token <= in_db {
            self.known.fetch_max(in_db, Ordering::Relaxed);
            return Ok(());
        }
        let raised = token + BLOCK;
        write_file(&self.file, raised)?;
        set(conn, "token_ceiling", raised).map_err(StoreError::from_sqlite)?;
        self.known.fetch_max(raised, Ordering::Relaxed);
        Ok(())
    }
}

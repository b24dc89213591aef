//! The store: everything that speaks SQL lives under this module, and nothing outside it
//! does (the admin console runs user SQL, read-only, from [`console`]).
//!
//! - [`db`]: opening connections with the registry's settings, migrations, the read pool;
//! - [`writer`]: the one group-committing writer every write goes through;
//! - [`records`]: rows of the tables and the statements that read and write them;
//! - [`console`]: read-only admin SQL, capped in rows and time;
//! - [`pg`]: the PostgreSQL store for several hosts (the registry's shared backend,
//!   `registry::backend`).
//!
//! Invariant: functions here run inside whatever transaction the caller opened and decide
//! nothing about locks; policy lives in `policy`, orchestration in `registry`.

pub mod ceiling;
pub mod console;
pub mod db;
pub mod history;
pub mod pg;
pub mod records;
pub mod sink;
pub mod writer;

pub use db::ReadPool;
pub use writer::Writer;

/// The `.sql` files of `migrations/{sub}` (the crate's), sorted: what the migration
/// lists must name, in order.
#[cfg(test)]
pub(crate) fn migration_files(sub: &str) -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(sub);
    let mut on_disk: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".sql"))
        .collect();
    on_disk.sort();
    on_disk
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database is busy; try again")]
    Busy,
    /// Busy because a named process holds the database's write lock.
    #[error("the database is busy: {0} holds its write lock; writes wait until it lets go")]
    Locked(String),
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot prepare storage directory: {0}")]
    Io(#[from] std::io::Error),
    #[error("database migration failed: {0}")]
    Migration(String),
    #[error("commit failed: {0}")]
    CommitFailed(String),
    #[error("a database job panicked; its changes were rolled back")]
    JobPanicked,
    #[error("the registry database is gone: {0}; lockledger stopped writing (restart it)")]
    Lost(String),
    #[error("the registry is open read-only here; this needs write access to the storage")]
    ReadOnly,
    /// The shared (PostgreSQL) registry database failed or could not be reached.
    #[error("shared registry database: {0}")]
    Shared(String),
    /// Only inside [`writer::no_wait`]: the write would have had to wait, so it was not
    /// made (nothing of it ran); the caller makes it again where waiting is allowed.
    #[error("the write would wait for the database; made again off the async thread")]
    WouldWait,
}

impl StoreError {
    /// Busy and locked errors become [`StoreError::Busy`] so callers can answer 503.
    pub fn from_sqlite(e: rusqlite::Error) -> StoreError {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy) | Some(rusqlite::ErrorCode::DatabaseLocked) => {
                StoreError::Busy
            }
            _ => StoreError::Sqlite(e),
        }
    }
}

/// Who holds the write lock of the database at `db_path`, as a busy error: SQLite's WAL
/// write lock is a POSIX lock on byte 120 of the `-shm` file, which `/proc/locks` shows
/// with its pid. `StoreError::Busy` when nobody is found (the lock was let go meanwhile).
pub fn busy_holder(db_path: &std::path::Path) -> StoreError {
    use crate::kernel::{flock, proc_locks::Snapshot, process};
    let mut shm = db_path.as_os_str().to_os_string();
    shm.push("-shm");
    let Ok(Some(id)) = flock::file_id(std::path::Path::new(&shm)) else {
        return StoreError::Busy;
    };
    let Ok(snapshot) = Snapshot::read() else {
        return StoreError::Busy;
    };
    let me = std::process::id() as i32;
    match snapshot
        .posix_writers(id, 120)
        .into_iter()
        .find(|&p| p != me)
    {
        Some(pid) => StoreError::Locked(process::describe(pid)),
        None => StoreError::Busy,
    }
}

/// Watches that the database this process opened is still the one at its path: a
/// `registry.db` deleted or replaced under a running process must not be written into
/// (its writes would vanish, and a fresh database elsewhere would hand out tokens again).
#[derive(Debug)]
pub struct Watch {
    path: std::path::PathBuf,
    id: crate::kernel::flock::FileId,
    lost: std::sync::OnceLock<String>,
}

impl Watch {
    /// Remembers the identity of the database file at `path` now.
    pub fn new(path: &std::path::Path) -> Result<Watch, StoreError> {
        let id = crate::kernel::flock::file_id(path)
            .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))?
            .ok_or_else(|| StoreError::Lost("registry.db is missing".into()))?;
        Ok(Watch {
            path: path.to_path_buf(),
            id,
            lost: std::sync::OnceLock::new(),
        })
    }

    /// Is the file still there and the same? Once lost, always lost (a restart opens the
    /// file that is there then).
    pub fn check(&self) -> Result<(), StoreError> {
        match self.gone() {
            None => Ok(()),
            Some(why) => Err(StoreError::Lost(why)),
        }
    }

    /// Why the database is gone, checking now; None while it is still there.
    pub fn gone(&self) -> Option<String> {
        if let Some(why) = self.lost.get() {
            return Some(why.clone());
        }
        let why = match crate::kernel::flock::file_id(&self.path) {
            Ok(Some(id)) if id == self.id => return None,
            Ok(Some(_)) => "registry.db was replaced by another file",
            Ok(None) => "registry.db was deleted (or its storage directory was)",
            Err(_) => "registry.db is no longer a regular file",
        };
        let why = self.lost.get_or_init(|| {
            log::error!("{why}: refusing every write from now on; restart lockledger");
            why.to_string()
        });
        Some(why.clone())
    }

    /// Why the database counts as lost, if it does.
    pub fn lost(&self) -> Option<&str> {
        self.lost.get().map(String::as_str)
    }
}

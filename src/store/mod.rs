//! The store: everything that speaks SQL lives under this module, and nothing outside it
//! does (the admin console runs user SQL, read-only, from [`console`]).
//!
//! - [`db`]: opening connections with the registry's settings, migrations, the read pool;
//! - [`writer`]: the one group-committing writer every write goes through;
//! - [`records`]: rows of the tables and the statements that read and write them;
//! - [`console`]: read-only admin SQL, capped in rows and time.
//!
//! Invariant: functions here run inside whatever transaction the caller opened and decide
//! nothing about locks; policy lives in `policy`, orchestration in `registry`.

pub mod console;
pub mod db;
pub mod history;
pub mod records;
pub mod writer;

pub use db::ReadPool;
pub use writer::Writer;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database is busy; try again")]
    Busy,
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

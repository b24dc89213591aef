//! lockledger: a SQLite-backed registry of file locks.
//!
//! Every lock is a kernel `flock` on a file in `storage/locks/` (so it interoperates with
//! Python's `filelock.FileLock`); every acquisition also writes a holder row and a history
//! event to SQLite, so held and stale locks can be seen, explained and cleared safely.
//!
//! Module map (each module's header states what it owns):
//! - [`config`]: settings and their validation; [`ids`]: lock identity and file names.
//! - [`flock`]: the only module that takes kernel locks.
//! - [`proc_locks`], [`process`]: what the kernel says about holders.
//! - [`stale`]: the only place staleness is decided (pure).
//! - [`db`], [`records`]: the SQLite store and its rows.
//! - [`registry`]: acquisition, status, clearing, reconciliation.
//! - [`sql_console`]: read-only admin SQL.

pub mod clock;
pub mod config;
pub mod db;
pub mod flock;
pub mod http;
pub mod ids;
pub mod proc_locks;
pub mod process;
pub mod records;
pub mod registry;
pub mod stale;
pub mod waitq;

pub use config::Config;
pub use ids::LockKey;
pub use registry::{AcquireOptions, LockGuard, LockReport, OwnerStatus, Registry, RegistryError};
pub mod cli;
pub mod export;
pub mod fence;
pub mod sql_console;

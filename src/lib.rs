//! lockledger: a SQLite-backed registry of file locks.
//!
//! Every lock is a kernel `flock` on a file in `storage/locks/` (so it interoperates with
//! Python's `filelock.FileLock`); every acquisition also writes a holder row and a history
//! event to SQLite, so held and stale locks can be seen, explained and cleared safely.
//!
//! Layout (each module's header states what it owns and its invariants):
//! - [`config`]: settings and their validation; [`ids`]: lock identity and file names;
//!   [`clock`]: the injectable clock and how times are shown.
//! - [`kernel`]: the only code that talks to the kernel about locks and processes.
//! - [`policy`]: pure decisions (staleness, clear plans, expiry).
//! - [`store`]: the only code with SQL (connections, the writer, rows, admin console).
//! - [`registry`]: orchestration of the three above: grants, leases, status, clears.
//! - [`fence`]: a data file guarded by fencing tokens (the store side of fencing).
//! - [`http`]: the service; [`cli`]: the command line; [`export`]: CSV and tables.

pub mod cli;
pub mod clock;
pub mod config;
pub mod export;
pub mod fault;
pub mod fence;
pub mod http;
pub mod ids;
pub mod kernel;
pub mod policy;
pub mod random;
pub mod registry;
pub mod store;

pub use config::Config;
pub use ids::LockKey;
pub use registry::{AcquireOptions, LockGuard, LockReport, OwnerStatus, Registry, RegistryError};

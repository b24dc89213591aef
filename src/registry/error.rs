//! Errors of the registry layer; each names the lock it is about.

use crate::ids::IdError;
use crate::kernel::flock::FlockError;
use crate::registry::report::LockReport;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    InvalidId(#[from] IdError),
    #[error("{message}")]
    Busy {
        message: String,
        holder: Option<Box<LockReport>>,
    },
    #[error("lock {lock} has token {current} now, not {given}: it changed since you looked")]
    TokenMismatch {
        lock: String,
        given: i64,
        current: i64,
    },
    #[error("lock {lock} cannot be cleared here: {reason}")]
    NotClearable { lock: String, reason: String },
    /// A registration refused because the process does not hold the lock file's flock.
    #[error("lock {lock} cannot be registered for pid {pid}: {reason}")]
    NotHolding {
        lock: String,
        pid: i32,
        reason: String,
    },
    #[error("lock {lock} is not held")]
    NotHeld { lock: String },
    #[error("lease {lease_id} has ended: {why}")]
    LeaseGone { lease_id: String, why: String },
    #[error("no lease {0} is known")]
    UnknownLease(String),
    #[error("lock {lock} was revoked by {by}: stop writing and let go")]
    Revoked { lock: String, by: String },
    #[error("invalid request: {0}")]
    BadRequest(String),
    #[error("lock {lock} has too many waiters ({why}); try again shortly")]
    TooManyWaiters { lock: String, why: String },
    /// Not available on this registry's database (yet); nothing was changed.
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Flock(#[from] FlockError),
}

impl From<rusqlite::Error> for RegistryError {
    fn from(e: rusqlite::Error) -> Self {
        RegistryError::Store(StoreError::from_sqlite(e))
    }
}

impl From<r2d2::Error> for RegistryError {
    fn from(_: r2d2::Error) -> Self {
        RegistryError::Store(StoreError::Busy)
    }
}

//! Running blocking work (database, kernel locks, /proc) off the async executor.
//!
//! Invariant: nothing that can block runs on an executor thread; handlers hand it to
//! tokio's blocking pool here and await the answer. The one exception is
//! [`now_or_blocking`]: a short registry call runs on the executor thread in the store's
//! no-wait mode, where any write that would wait fails unrun, and only then goes to the
//! blocking pool. It saves two thread hand-offs per request (tens of µs each here).

use super::error::{registry_error, ApiError};
use crate::registry::RegistryError;
use crate::store::StoreError;

/// Runs `f` on the blocking pool.
pub async fn off_thread<R, F>(f: F) -> Result<R, ApiError>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| ApiError::internal("a worker failed"))
}

/// Runs one blocking registry call on the blocking pool and maps its error.
pub async fn blocking<R, F>(f: F) -> Result<R, ApiError>
where
    F: FnOnce() -> Result<R, RegistryError> + Send + 'static,
    R: Send + 'static,
{
    off_thread(f).await?.map_err(registry_error)
}

/// Runs `f` here if it completes without waiting for the database, else on the blocking
/// pool (see the module header). `f` must be short apart from its writes: no waiting for
/// locks, no scans.
pub async fn now_or_blocking<R, F>(f: F) -> Result<R, ApiError>
where
    F: Fn() -> Result<R, RegistryError> + Send + 'static,
    R: Send + 'static,
{
    match crate::store::writer::no_wait(&f) {
        Err(RegistryError::Store(StoreError::WouldWait)) => blocking(f).await,
        other => other.map_err(registry_error),
    }
}

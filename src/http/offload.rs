//! Running blocking work (database, kernel locks, /proc) off the async executor.
//!
//! Invariant: nothing that can block runs on an executor thread; handlers hand it to
//! tokio's blocking pool here and await the answer.

use super::error::{registry_error, ApiError};
use crate::registry::RegistryError;

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

//! How the registry writes: every write goes through the store's one writer, with the
//! busy answers noted since the last write carried into the same transaction, and a
//! failing busy write noted for `write_trouble`.
//!
//! Invariants: a job never calls back into the writer; [`Registry::write_async`] is the
//! same write for the service's async threads (it never blocks them, see
//! `store::writer::drain`), and a busy row carried into a write that fails is put back.

use super::busy::{BusyRows, PendingBusy};
use super::{Registry, RegistryError};
use crate::store::StoreError;
use rusqlite::Connection;

impl Registry {
    /// Runs a job in the writer's transaction and returns once it is committed.
    pub(super) fn write<R, F>(&self, f: F) -> Result<R, RegistryError>
    where
        F: FnOnce(&Registry, &Connection) -> Result<R, RegistryError> + Send + 'static,
        R: Send + 'static,
    {
        let out = self.write_inner(f);
        self.note_write_trouble(&out);
        out
    }

    fn write_inner<R, F>(&self, f: F) -> Result<R, RegistryError>
    where
        F: FnOnce(&Registry, &Connection) -> Result<R, RegistryError> + Send + 'static,
        R: Send + 'static,
    {
        let Some(writer) = &self.inner.writer else {
            return Err(StoreError::ReadOnly.into());
        };
        let busy = self.take_busy();
        let outcome = writer.write(self.carrying(busy.clone(), f));
        self.settle_busy(busy, outcome)
    }

    /// [`Registry::write`] for async callers: the future answers once committed, and no
    /// thread waits for the commit meanwhile.
    pub(super) async fn write_async<R, F>(&self, f: F) -> Result<R, RegistryError>
    where
        F: FnOnce(&Registry, &Connection) -> Result<R, RegistryError> + Send + 'static,
        R: Send + 'static,
    {
        let Some(writer) = &self.inner.writer else {
            return Err(StoreError::ReadOnly.into());
        };
        let busy = self.take_busy();
        let outcome = writer.write_async(self.carrying(busy.clone(), f)).await;
        let out = self.settle_busy(busy, outcome);
        self.note_write_trouble(&out);
        out
    }

    /// The writer job of `f`, with the busy answers noted since the last write (if any)
    /// written first, in the same transaction.
    fn carrying<R, F>(
        &self,
        busy: Option<PendingBusy>,
        f: F,
    ) -> impl FnOnce(&Connection) -> Result<(R, Option<BusyRows>), RegistryError> + Send + 'static
    where
        F: FnOnce(&Registry, &Connection) -> Result<R, RegistryError> + Send + 'static,
        R: Send + 'static,
    {
        let me = self.clone();
        move |conn| {
            let rows = match &busy {
                Some(b) => Some(me.write_busy(conn, b)?),
                None => None,
            };
            Ok((f(&me, conn)?, rows))
        }
    }

    /// Remembers a write refused because the database is busy (for `write_trouble`).
    fn note_write_trouble<R>(&self, out: &Result<R, RegistryError>) {
        if let Err(RegistryError::Store(e @ (StoreError::Busy | StoreError::Locked(_)))) = out {
            *self
                .inner
                .last_write_busy
                .lock()
                .unwrap_or_else(|p| p.into_inner()) =
                Some((std::time::Instant::now(), e.to_string()));
        }
    }
}

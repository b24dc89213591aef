//! How the registry writes: every write goes through the store's one writer, with the
//! busy answers noted since the last write carried into the same transaction, and a
//! failing busy write noted for `write_trouble`.
//!
//! Invariants: a job never calls back into the writer; [`Registry::write_async`] is the
//! same write for the service's async threads (it never blocks them, see
//! `store::writer::drain`), and a busy row carried into a write that fails is put back.

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
        // Busy answers noted since the last write go first, in the same transaction.
        let Some(busy) = self.take_busy() else {
            let me = self.clone();
            return writer.write(move |conn| f(&me, conn));
        };
        let (me, carried) = (self.clone(), busy.clone());
        let outcome = writer.write(move |conn| {
            let rows = me.write_busy(conn, &carried)?;
            Ok((f(&me, conn)?, rows))
        });
        match outcome {
            Ok((out, rows)) => {
                self.busy_written(rows);
                Ok(out)
            }
            Err(e) => {
                self.restore_busy(busy);
                Err(e)
            }
        }
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
        let out = match self.take_busy() {
            None => {
                let me = self.clone();
                writer.write_async(move |conn| f(&me, conn)).await
            }
            Some(busy) => {
                let (me, carried) = (self.clone(), busy.clone());
                let outcome = writer
                    .write_async(move |conn| {
                        let rows = me.write_busy(conn, &carried)?;
                        Ok((f(&me, conn)?, rows))
                    })
                    .await;
                match outcome {
                    Ok((out, rows)) => {
                        self.busy_written(rows);
                        Ok(out)
                    }
                    Err(e) => {
                        self.restore_busy(busy);
                        Err(e)
                    }
                }
            }
        };
        self.note_write_trouble(&out);
        out
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

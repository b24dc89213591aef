//! Library holders in this process: [`Registry::acquire`] and the [`LockGuard`] that gives
//! their lock back.
//!
//! Invariants: the holder row and the `acquired` event are committed before `acquire`
//! returns; a guard releases on every path (return, `?`, panic unwinding, a dropped
//! future), committing its `released` event before the flock goes.

use super::grant::{AcquireOptions, GrantSpec};
use super::{check_label, close_record, renewal_is_sampled, LockRef, Registry, RegistryError};
use crate::ids::LockKey;
use crate::kernel::flock::HeldFlock;
use crate::kernel::process;
use crate::policy::stale::HolderKind;
use crate::store::history::{self, EventKind, NewEvent};
use crate::store::records;

impl Registry {
    /// Takes a lock for this process (a library holder). The holder row and the
    /// `acquired` event are committed before this returns.
    pub fn acquire(
        &self,
        key: &LockKey,
        opts: &AcquireOptions,
    ) -> Result<LockGuard, RegistryError> {
        check_label("holder", &opts.holder)?;
        check_label("operation", &opts.operation)?;
        let spec = GrantSpec {
            kind: HolderKind::Library,
            holder: opts.holder.clone(),
            operation: opts.operation.clone(),
            pid: Some(self.inner.me.0),
            pid_start: self.inner.me.1,
            host: process::hostname().to_string(),
            thread: Some(process::thread_label()),
            lease: None,
            locker: None,
            registration_id: None,
        };
        let granted = self.backend().acquire_guard(self, key, &spec, opts.wait)?;
        Ok(LockGuard {
            registry: self.clone(),
            key: key.clone(),
            lock_id: granted.lock_id,
            token: granted.token,
            flock: granted.flock,
        })
    }
}

/// A lock held by this process. Dropping it releases the lock on every path (return,
/// `?`, panic unwinding, a dropped future); [`LockGuard::release`] does the same and
/// reports errors.
#[derive(Debug)]
pub struct LockGuard {
    registry: Registry,
    key: LockKey,
    lock_id: i64,
    token: i64,
    flock: Option<HeldFlock>,
}

impl LockGuard {
    pub fn key(&self) -> &LockKey {
        &self.key
    }

    /// The fencing token of this grant: pass it with every write the lock protects.
    pub fn token(&self) -> i64 {
        self.token
    }

    /// Tells the registry this holder is alive and working (so it is not
    /// `held_too_long`). Fails with `Revoked` once an admin force-cleared it: stop
    /// writing and drop the guard.
    pub fn renew(&self) -> Result<(), RegistryError> {
        self.registry
            .backend()
            .renew_guard(&self.registry, &self.key, self.lock_id, self.token)
    }

    /// Releases now: commits the `released` event, then lets go of the flock.
    pub fn release(mut self) -> Result<(), RegistryError> {
        self.release_inner()
    }

    fn release_inner(&mut self) -> Result<(), RegistryError> {
        let Some(flock) = self.flock.take() else {
            return Ok(());
        };
        let res = self.registry.backend().release_guard(
            &self.registry,
            &self.key,
            self.lock_id,
            self.token,
        );
        // The flock goes last, whatever the database said: a record left behind is
        // repaired by reconciliation, a flock left behind would block everyone.
        drop(flock);
        self.registry
            .holdings()
            .remove_guard(self.lock_id, self.token);
        self.registry.let_go(&self.key);
        res
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Err(e) = self.release_inner() {
            log::warn!("releasing lock {}: {e}", self.key);
        }
    }
}

impl Registry {
    /// [`LockGuard::renew`] on SQLite.
    pub(super) fn sqlite_renew_guard(
        &self,
        key: &LockKey,
        lock_id: i64,
        token: i64,
    ) -> Result<(), RegistryError> {
        let key = key.clone();
        self.write(move |reg, conn| {
            let now = reg.now_ms();
            let row = records::find_lock(conn, &key)?;
            let holder = row
                .as_ref()
                .and_then(|r| r.holder.as_ref())
                .filter(|h| h.token == token);
            match holder {
                None => Err(RegistryError::Revoked {
                    lock: key.to_string(),
                    by: "a clear".into(),
                }),
                Some(h) if h.revoked_at.is_some() => Err(RegistryError::Revoked {
                    lock: key.to_string(),
                    by: h.revoked_by.clone().unwrap_or_else(|| "an admin".into()),
                }),
                Some(_) => {
                    records::renew_holder(conn, lock_id, token, now, None)?;
                    if let Some(row) = row.as_ref().filter(|r| renewal_is_sampled(r, now)) {
                        history::insert_event(
                            conn,
                            &NewEvent::about(row, EventKind::Renewed, now),
                        )?;
                    }
                    Ok(())
                }
            }
        })
    }

    /// The record half of a guard's release on SQLite: its `released` event.
    pub(super) fn sqlite_release_guard(
        &self,
        key: &LockKey,
        lock_id: i64,
        token: i64,
    ) -> Result<(), RegistryError> {
        let key = key.clone();
        self.write(move |reg, conn| {
            close_record(
                conn,
                LockRef::of(&key, lock_id),
                token,
                EventKind::Released,
                reg.now_ms(),
                None,
                None,
            )?;
            Ok(())
        })
    }
}

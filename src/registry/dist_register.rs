//! FileLock registrations on a shared (PostgreSQL) registry: a process of this host that
//! took a lock file's flock itself registers, and the registration is its grant across
//! hosts (a library holder whose locker is the registrant, no ttl).
//!
//! Invariants: `register` has already checked `/proc/locks` (this host's exclusion is
//! the registrant's own flock); the grant waits in the database's arrival order for at
//! most the caller's `wait`, among at most `MAX_PG_WAITERS` waiters of this service, and
//! is refused (busy) after it; a registration id names one grant and is known only to the
//! service that granted it; a registrant that dies is ended by this host's reap.

use super::dist::{lock, may_block, pg_error, Dist, WaiterSlot, MAX_PG_WAITERS};
use super::register::Registration;
use super::{Registry, RegistryError};
use crate::ids::LockKey;
use crate::policy::stale::HolderKind;
use crate::store::pg::GrantRequest;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// A process that took a lock file's flock itself and registers (see `register`).
pub(super) struct Registrant<'a> {
    pub pid: i32,
    pub start: u64,
    pub holder: &'a str,
    pub operation: &'a str,
}

impl Registry {
    /// A registration as the grant across hosts: the registrant holds this host's flock
    /// (checked by `register`), and waits here, up to `wait`, for the shared grant of a
    /// library holder whose locker is the registrant. Refused (busy) after that.
    pub(super) fn dist_register(
        &self,
        d: &Arc<Dist>,
        key: &LockKey,
        file: String,
        who: Registrant<'_>,
        registration_id: String,
        wait: Duration,
    ) -> Result<Registration, RegistryError> {
        may_block()?;
        if d.waiting.fetch_add(1, Ordering::Relaxed) >= MAX_PG_WAITERS {
            d.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(RegistryError::TooManyWaiters {
                lock: key.to_string(),
                why: format!("{MAX_PG_WAITERS} acquirers already wait on PostgreSQL here"),
            });
        }
        let _slot = WaiterSlot(Arc::clone(d));
        let req = GrantRequest {
            namespace: key.namespace().to_string(),
            owner: key.owner().to_string(),
            field: key.field().to_string(),
            file: file.clone(),
            holder: who.holder.to_string(),
            operation: who.operation.to_string(),
            pid: Some(who.pid),
            pid_start: Some(who.start),
            host: crate::kernel::process::hostname().to_string(),
            thread: None,
            locker_pid: who.pid,
            locker_start: Some(who.start),
            ttl_ms: None,
            kind: HolderKind::Library,
            lease_id: None,
        };
        let g = d
            .store
            .acquire_waiting(&req, wait, &d.listener)
            .map_err(pg_error)?
            .granted;
        lock(&d.registrations).insert(registration_id.clone(), (g.lock_id, g.token));
        Ok(Registration {
            registration_id,
            token: g.token,
            owner: key.owner().to_string(),
            field: key.field().to_string(),
            file,
        })
    }

    /// Ends a registration this service granted.
    pub(super) fn dist_unregister(
        &self,
        d: &Dist,
        registration_id: &str,
    ) -> Result<Option<i64>, RegistryError> {
        may_block()?;
        let Some((lock_id, token)) = lock(&d.registrations).remove(registration_id) else {
            return Err(RegistryError::LeaseGone {
                lease_id: registration_id.to_string(),
                why: "it was already unregistered or reconciled (or another service granted it)"
                    .into(),
            });
        };
        let released = d.store.release_by_token(lock_id, token).map_err(pg_error)?;
        Ok(Some(released.held_ms))
    }
}

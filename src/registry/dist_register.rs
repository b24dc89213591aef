//! FileLock registrations on a shared (PostgreSQL) registry: a process of this host that
//! took a lock file's flock itself registers, and the registration is its grant across
//! hosts (a library holder whose locker is the registrant, no ttl).
//!
//! Invariants: `register_async` has already checked `/proc/locks` (this host's exclusion
//! is the registrant's own flock); the grant waits as a future in the database's arrival
//! order until the caller's deadline, and is refused (busy) after it; a registration id names one grant and is known only to the
//! service that granted it; a registrant that dies is ended by this host's reap.

use super::dist::{lock, pg_error, Dist};
use super::register::{Registrant, Registration};
use super::{Registry, RegistryError};
use crate::ids::LockKey;
use crate::policy::stale::HolderKind;
use crate::store::pg::GrantRequest;
use std::sync::Arc;

impl Registry {
    /// A registration as the grant across hosts: the registrant holds this host's flock
    /// (checked), and waits here as a future, until `deadline`, for the shared grant of a
    /// library holder whose locker is the registrant. Refused (busy) after that.
    pub(super) async fn dist_register(
        &self,
        d: &Arc<Dist>,
        key: &LockKey,
        who: Registrant,
        holder: &str,
        operation: &str,
        deadline: tokio::time::Instant,
    ) -> Result<Registration, RegistryError> {
        let req = GrantRequest {
            namespace: key.namespace().to_string(),
            owner: key.owner().to_string(),
            field: key.field().to_string(),
            file: who.file.clone(),
            holder: holder.to_string(),
            operation: operation.to_string(),
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
        let g = self
            .dist_wait_in_line(d, req, deadline)
            .await?
            .map_err(pg_error)?;
        lock(&d.registrations).insert(who.registration_id.clone(), (g.lock_id, g.token));
        Ok(Registration {
            registration_id: who.registration_id,
            token: g.token,
            owner: key.owner().to_string(),
            field: key.field().to_string(),
            file: who.file,
        })
    }

    /// Ends a registration this service granted.
    pub(super) fn dist_unregister(
        &self,
        d: &Dist,
        registration_id: &str,
    ) -> Result<Option<i64>, RegistryError> {
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

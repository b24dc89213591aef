//! Blocking grants on a shared (PostgreSQL) registry: an in-process library holder
//! ([`Registry::acquire`], and so the CLI's `hold`) and a lease taken by the library
//! ([`Registry::acquire_lease`], the demo's streamed replies) take this host's flock,
//! then the grant across hosts, blocking the caller's thread as they do on SQLite.
//!
//! Invariants: the flock is taken first (this host's `FileLock` users are excluded and
//! seen; two services never wait for each other in a cycle), then the shared grant is
//! waited for in the database's arrival order (`PgStore::acquire_waiting`, woken by the
//! lock's free notification or a backoff tick) for what is left of the wait; a refusal
//! gives the flock back. The guard's `released` event is committed before its flock
//! goes (`LockGuard` drops the flock after `release_guard`).

use super::dist::{pg_error, Dist};
use super::grant::{take_turns, GrantSpec, Granted};
use super::{Registry, RegistryError};
use crate::ids::LockKey;
use crate::kernel::flock;
use crate::store::pg::{HolderRenewal, PgError};
use std::time::{Duration, Instant};

impl Registry {
    /// A grant of `spec` (a library holder of this process, or a lease) on the shared
    /// database, waiting up to `wait` (and while not `cancelled`). A lease's flock goes
    /// into the holdings with its slot; a library holder's comes back in the grant.
    pub(super) fn dist_grant_blocking(
        &self,
        d: &Dist,
        key: &LockKey,
        spec: &GrantSpec,
        wait: Duration,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Granted, RegistryError> {
        let file = self.file_of(key)?;
        let path = self.path_of_file(&file);
        let started = Instant::now();
        let deadline = started + wait;
        let ticket = self.join_queue(key, spec)?;
        let held = take_turns(&ticket, deadline, cancelled, || {
            Ok(flock::try_acquire(&path, self.file_mode())?)
        })?;
        let refused = |reg: &Registry, message: Option<String>| {
            let waited = started.elapsed();
            reg.note_busy(key, spec, waited, cancelled());
            if let Err(e) = reg.flush_busy() {
                log::warn!("could not record a busy answer: {e}");
            }
            match (reg.busy_error(key, waited), message) {
                (RegistryError::Busy { holder, .. }, Some(message)) => {
                    RegistryError::Busy { message, holder }
                }
                (other, _) => other,
            }
        };
        let Some(held) = held else {
            drop(ticket);
            return Err(refused(self, None));
        };
        let req = self.shared_request(key, &file, spec);
        let left = deadline.saturating_duration_since(Instant::now());
        match d.store.acquire_waiting(&req, left, &d.listener) {
            Ok(w) => {
                let g = w.granted;
                let flock = match spec.lease.clone() {
                    Some(terms) => {
                        self.insert_lease_slot(key, g.lock_id, g.token, held, terms);
                        None
                    }
                    None => {
                        self.holdings().add_guard(g.lock_id, g.token);
                        Some(held)
                    }
                };
                Ok(Granted {
                    key: key.clone(),
                    lease_id: g.lease_id,
                    lock_id: g.lock_id,
                    token: g.token,
                    expires_at_ms: g.expires_at,
                    flock,
                })
            }
            Err(e @ (PgError::Busy(_) | PgError::WaitTimeout { .. })) => {
                drop(held);
                drop(ticket);
                self.let_go(key);
                Err(refused(self, Some(e.to_string())))
            }
            Err(e) => Err(pg_error(e)),
        }
    }

    /// `LockGuard::renew` on the shared database.
    pub(super) fn dist_renew_guard(
        &self,
        d: &Dist,
        key: &LockKey,
        lock_id: i64,
        token: i64,
    ) -> Result<(), RegistryError> {
        let by = match d.store.renew_holder(lock_id, token).map_err(pg_error)? {
            HolderRenewal::Renewed => return Ok(()),
            HolderRenewal::Revoked { by } => by,
            HolderRenewal::Gone => "a clear".into(),
        };
        Err(RegistryError::Revoked {
            lock: key.to_string(),
            by,
        })
    }

    /// A guard's `released` event on the shared database (the guard lets go of its flock
    /// after this). A holder already ended by a clear has nothing left to release.
    pub(super) fn dist_release_guard(
        &self,
        d: &Dist,
        lock_id: i64,
        token: i64,
    ) -> Result<(), RegistryError> {
        match d.store.release_by_token(lock_id, token) {
            Ok(_) | Err(PgError::NotHolding { .. }) => Ok(()),
            Err(e) => Err(pg_error(e)),
        }
    }
}

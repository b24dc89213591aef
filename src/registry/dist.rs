//! The registry on PostgreSQL (`--database postgres://…`, DESIGN §9): the services of
//! several hosts share one lock table, so a conversation's lock is held on one host at a
//! time. Leases (grant, renewal, release, expiry), per-owner status and history go to the
//! shared database; the store calls are in `store::pg`.
//!
//! Invariants:
//! - The grant is the row: a lease exists once its holder row is committed in
//!   PostgreSQL (see `store::pg::leases`); fencing tokens come from that row's lock, so
//!   they increase across every service.
//! - This host's lock file is flocked first, then the shared grant is asked for, never the
//!   other way round: this host's plain `FileLock` users are excluded and seen, and two
//!   services can never wait for each other in a cycle. The flock lives in the holdings
//!   with the lease, as in SQLite mode, and goes only after the lease's end is committed.
//! - Lease ends are judged by the database clock (`expire_due`, run by every service's
//!   reaper); a service judges only the pids of its own clients on its own host; a lease
//!   this service granted but the database ended (expired elsewhere) loses its flock here
//!   at the next reap.
//! - A PostgreSQL call is short (the store sets statement and lock timeouts) and runs on
//!   the blocking pool. A waiting lease acquire holds no thread: it is a future in this
//!   service's queue, then in the database's line (`store::pg::line`), woken by the
//!   lock's free notification or a backoff tick; only its tries use the pool. A waiting
//!   FileLock registration waits the same way.
//! - What is not on PostgreSQL yet answers `unsupported` (HTTP 501) and changes nothing.

use super::grant::GrantSpec;
use super::lease::LeaseGrant;
use super::{Registry, RegistryError};
use crate::clock;
use crate::ids::lock_name;
use crate::ids::LockKey;
use crate::kernel::flock;
use crate::policy::stale::Liveness;
use crate::store::history::EventKind;
use crate::store::pg::{FreeListener, GrantRequest, PgError, PgStore};
use crate::store::records::LockRow;
use crate::store::StoreError;
use std::collections::HashMap;
use std::mem::ManuallyDrop;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Most expired leases one reap ends.
const EXPIRE_BATCH: usize = 256;

/// The shared database of this service.
pub(super) struct Dist {
    /// Dropped by `Drop for Dist`, on a plain thread.
    pub store: ManuallyDrop<PgStore>,
    /// Kept alive for its thread, which wakes this service's waiters (see `wakes`).
    pub(super) listener: FreeListener,
    /// Registrations this service granted: id -> (lock id, token).
    pub(super) registrations: Mutex<HashMap<String, (i64, i64)>>,
    /// Locks announced free since the last reap: a lease of this service on one of them
    /// may have been released or cleared through another service.
    freed: Arc<Mutex<std::collections::HashSet<i64>>>,
    /// The async waiter of each lock in this service (at most one: the head of the
    /// lock's local queue), woken when the lock is announced free.
    wakes: Arc<Mutex<HashMap<i64, Arc<tokio::sync::Notify>>>>,
}

impl std::fmt::Debug for Dist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dist")
            .field("service", &self.store.service())
            .finish()
    }
}

impl Drop for Dist {
    fn drop(&mut self) {
        // SAFETY: `store` is taken exactly once, here, and never used again (the struct
        // is being dropped).
        let store = unsafe { ManuallyDrop::take(&mut self.store) };
        // The postgres client blocks on a runtime of its own when its connections close,
        // which panics on a thread that drives async tasks (the service drops its
        // registry on one): the pool closes on a plain thread.
        match std::thread::Builder::new()
            .name("pg-close".into())
            .spawn(move || drop(store))
        {
            Ok(t) => {
                let _ = t.join();
            }
            Err(e) => log::warn!("cannot close the postgresql pool on a thread of its own: {e}"),
        }
    }
}

impl Dist {
    /// The wake-up of this service's async waiter of `lock_id`.
    pub(super) fn wake_for(&self, lock_id: i64) -> Arc<tokio::sync::Notify> {
        Arc::clone(lock(&self.wakes).entry(lock_id).or_default())
    }

    pub(super) fn forget_wake(&self, lock_id: i64) {
        lock(&self.wakes).remove(&lock_id);
    }

    /// Connects (migrating the schema if needed) and starts listening for freed locks.
    pub fn open(url: &str) -> Result<Dist, RegistryError> {
        let store = PgStore::open(url, 16).map_err(pg_error)?;
        let freed = Arc::new(Mutex::new(std::collections::HashSet::new()));
        let wakes: Arc<Mutex<HashMap<i64, Arc<tokio::sync::Notify>>>> = Arc::default();
        let (noted, woken) = (Arc::clone(&freed), Arc::clone(&wakes));
        let listener = FreeListener::start(store.session_config(), move |lock_id| {
            lock(&noted).insert(lock_id);
            if let Some(w) = lock(&woken).get(&lock_id) {
                // A permit is kept if the waiter is between two tries.
                w.notify_one();
            }
        })
        .map_err(pg_error)?;
        Ok(Dist {
            freed,
            wakes,
            store: ManuallyDrop::new(store),
            listener,
            registrations: Mutex::new(HashMap::new()),
        })
    }
}

/// A PostgreSQL error as a registry error: refusals stay refusals (busy, lease gone),
/// trouble with the database is a store error (503).
pub(super) fn pg_error(e: PgError) -> RegistryError {
    match e {
        PgError::Busy(_) | PgError::WaitTimeout { .. } => RegistryError::Busy {
            message: e.to_string(),
            holder: None,
        },
        PgError::LeaseGone { lease_id, why } => RegistryError::LeaseGone { lease_id, why },
        PgError::BadRequest(why) => RegistryError::BadRequest(why),
        PgError::NotHolding { lock_id, token } => RegistryError::NotHeld {
            lock: format!("{lock_id} (token {token})"),
        },
        PgError::WouldWait => RegistryError::Store(StoreError::WouldWait),
        other => RegistryError::Store(StoreError::Shared(other.to_string())),
    }
}

/// Runs a PostgreSQL call on the blocking pool.
pub(super) async fn off_thread<R: Send + 'static>(
    f: impl FnOnce() -> Result<R, RegistryError> + Send + 'static,
) -> Result<R, RegistryError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| RegistryError::Store(StoreError::JobPanicked))?
}

impl Registry {
    /// A lease on the shared database: this service's queue for the lock first (arrival
    /// order here, visible in `/api/v1/waiters`), then this host's flock (retried when
    /// the lock is let go here, and on a backoff of 1 ms doubling to 50 ms for other
    /// processes of this host), then the shared grant, waiting in the database's arrival
    /// order for what is left of `wait`. If this future is dropped, the wait stops within
    /// one backoff tick and a grant that lands meanwhile is given back.
    pub(super) async fn dist_acquire_lease(
        &self,
        d: &Arc<Dist>,
        key: &LockKey,
        spec: &GrantSpec,
        wait: Duration,
    ) -> Result<LeaseGrant, RegistryError> {
        let Some(terms) = spec.lease.clone() else {
            return Err(RegistryError::BadRequest(
                "a lease needs lease terms".into(),
            ));
        };
        let file = self.file_of(key)?;
        let path = self.path_of_file(&file);
        let started = tokio::time::Instant::now();
        let deadline = started + wait;
        let ticket = self.join_queue(key, spec)?;
        let mut pause = Duration::from_millis(1);
        let held = loop {
            if tokio::time::timeout_at(deadline, ticket.turn())
                .await
                .is_err()
            {
                return Err(self.dist_busy(key, spec, started.elapsed()).await);
            }
            if let Some(f) = flock::try_acquire(&path, self.file_mode())? {
                break f;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(self.dist_busy(key, spec, started.elapsed()).await);
            }
            let _ = tokio::time::timeout_at((now + pause).min(deadline), ticket.woken()).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        };
        let req = self.shared_request(key, &file, spec);
        let waited = self.dist_wait_in_line(d, req, deadline).await?;
        let g = match waited {
            Ok(g) => g,
            Err(e @ (PgError::Busy(_) | PgError::WaitTimeout { .. })) => {
                drop(held);
                let busy = self.dist_busy(key, spec, started.elapsed()).await;
                return Err(match busy {
                    RegistryError::Busy { holder, .. } => RegistryError::Busy {
                        message: e.to_string(),
                        holder,
                    },
                    other => other,
                });
            }
            Err(e) => return Err(pg_error(e)),
        };
        self.insert_lease_slot(key, g.lock_id, g.token, held, terms);
        drop(ticket);
        let expires_at_ms = g.expires_at.unwrap_or_else(|| self.now_ms());
        Ok(LeaseGrant {
            lease_id: g.lease_id.unwrap_or_default(),
            token: g.token,
            expires_at: clock::rfc3339(expires_at_ms),
            expires_at_ms,
        })
    }

    /// The shared grant `spec` asks for, on `key`'s lock file `file`: a lease (its terms
    /// give the ttl and id) or a library holder; the locker is the registrant named in
    /// `spec`, else this process.
    pub(super) fn shared_request(
        &self,
        key: &LockKey,
        file: &str,
        spec: &GrantSpec,
    ) -> GrantRequest {
        let (locker_pid, locker_start) = match spec.locker {
            Some(l) => (l.pid, Some(l.start)),
            None => self.inner.me,
        };
        GrantRequest {
            namespace: key.namespace().to_string(),
            owner: key.owner().to_string(),
            field: key.field().to_string(),
            file: file.to_string(),
            holder: spec.holder.clone(),
            operation: spec.operation.clone(),
            pid: spec.pid,
            pid_start: spec.pid_start,
            host: spec.host.clone(),
            thread: spec.thread.clone(),
            locker_pid,
            locker_start,
            ttl_ms: spec.lease.as_ref().map(|t| t.ttl.as_millis() as u64),
            kind: spec.kind,
            lease_id: spec.lease.as_ref().map(|t| t.lease_id.clone()),
        }
    }

    /// Renews a lease on the shared database, then moves its deadline here.
    pub(super) fn dist_renew(
        &self,
        d: &Dist,
        lease_id: &str,
        ttl: Option<Duration>,
    ) -> Result<LeaseGrant, RegistryError> {
        let r = match ttl {
            Some(ttl) => d.store.renew(lease_id, ttl.as_millis() as u64),
            None => d.store.renew_own_ttl(lease_id),
        }
        .map_err(pg_error)?;
        let now = self.monotonic();
        if let (Some(slot), Some(ttl)) = (self.holdings().lease_mut(lease_id), ttl) {
            slot.deadline = now + ttl;
            slot.renewed = now;
        }
        Ok(LeaseGrant {
            lease_id: lease_id.to_string(),
            token: r.token,
            expires_at: clock::rfc3339(r.expires_at),
            expires_at_ms: r.expires_at,
        })
    }

    /// Releases a lease on the shared database; this host's flock goes after the commit.
    pub(super) fn dist_release(
        &self,
        d: &Dist,
        lease_id: &str,
    ) -> Result<Option<i64>, RegistryError> {
        let released = d.store.release(lease_id);
        let slot = self.holdings().remove_lease(lease_id);
        if let Some(slot) = slot {
            self.close_slot(slot);
        }
        Ok(Some(released.map_err(pg_error)?.held_ms))
    }

    /// Ends every lease of this service (shutdown): each `released` event, with `why`,
    /// is committed before its flock goes.
    pub(super) fn dist_release_all(&self, d: &Dist, why: &str) -> Result<usize, RegistryError> {
        let mut n = 0;
        // (The holdings lock must not live across the loop: a temporary in the `for`
        // expression would, and each removal below takes it.)
        let ids = self.holdings().lease_ids();
        for id in ids {
            let Some(slot) = self.holdings().remove_lease(&id) else {
                continue;
            };
            let ended = d.store.clear(
                slot.lock_id,
                slot.token,
                "lockledger",
                why,
                EventKind::Released,
            );
            self.close_slot(slot);
            if ended.map_err(pg_error)?.is_some() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// One reap on the shared database: ends the leases past their end by the database
    /// clock (any service may), ends this service's leases whose client process died, and
    /// lets go of the flocks of leases the database no longer has. Returns the locks ended
    /// here.
    pub(super) fn dist_reap(&self, d: &Dist) -> Result<Vec<String>, RegistryError> {
        let mut ended = Vec::new();
        // Without auto_expire, expired leases stay (stale) until someone clears them.
        if self.inner.config.auto_expire {
            for e in d.store.expire_due(EXPIRE_BATCH).map_err(pg_error)? {
                // Its end is committed: a lease of this service lets go of its flock at
                // once, before the other queries of this reap.
                let slot = e
                    .lease_id
                    .as_deref()
                    .and_then(|id| self.holdings().remove_lease(id));
                if let Some(slot) = slot {
                    self.close_slot(slot);
                }
                ended.push(lock_name(&e.owner, &e.field));
            }
        }
        // This host's holders whose locking process died (a registrant, or a previous
        // incarnation of this service): only this host can tell, and it ends them.
        let host = crate::kernel::process::hostname();
        for row in d.store.holders_on_host(host).map_err(pg_error)? {
            let Some(h) = &row.holder else { continue };
            if self.liveness(h.locker_pid, h.locker_start) != Liveness::Dead {
                continue;
            }
            let reason = "holder_dead: its locking process died on this host";
            let cleared = d
                .store
                .clear(
                    row.lock_id,
                    h.token,
                    "lockledger",
                    reason,
                    EventKind::Reconciled,
                )
                .map_err(pg_error)?;
            if cleared.is_some() {
                lock(&d.registrations).retain(|_, v| *v != (row.lock_id, h.token));
                ended.push(lock_name(&row.owner, &row.field));
            }
        }
        let freed: std::collections::HashSet<i64> = std::mem::take(&mut *lock(&d.freed));
        let now = self.monotonic();
        let mine: Vec<(String, i64, i64, bool, bool)> = self
            .holdings()
            .leases()
            .map(|s| {
                let client_dead = s
                    .client_pid
                    .is_some_and(|pid| self.liveness(pid, s.client_start) == Liveness::Dead);
                (
                    s.lease_id.clone(),
                    s.lock_id,
                    s.token,
                    client_dead,
                    // Past its end here, or its lock was announced free (released or
                    // cleared through another service): ask the database.
                    now >= s.deadline || freed.contains(&s.lock_id),
                )
            })
            .collect();
        for (lease_id, lock_id, token, client_dead, past) in mine {
            if client_dead {
                let reason = "holder_dead: the client process exited";
                let cleared = d
                    .store
                    .clear(lock_id, token, "reaper", reason, EventKind::Expired)
                    .map_err(pg_error)?;
                if let Some(e) = cleared {
                    ended.push(lock_name(&e.owner, &e.field));
                }
            } else if !past {
                continue;
            }
            // Past its end here (or just ended): keep the flock only while the database
            // still names this grant.
            let still = d
                .store
                .lock(lock_id)
                .map_err(pg_error)?
                .and_then(|r| r.holder)
                .is_some_and(|h| h.token == token && !client_dead);
            if !still {
                let slot = self.holdings().remove_lease(&lease_id);
                if let Some(slot) = slot {
                    self.close_slot(slot);
                }
            }
        }
        Ok(ended)
    }

    /// The recorded locks of one owner in one namespace, from the shared database.
    pub(super) fn dist_owner_rows(
        &self,
        d: &Dist,
        namespace: &str,
        owner: &str,
    ) -> Result<Vec<LockRow>, RegistryError> {
        let rows = d.store.current(Some(owner)).map_err(pg_error)?;
        Ok(rows
            .into_iter()
            .filter(|r| r.namespace == namespace)
            .collect())
    }
}

/// The registrations map stays consistent through a panic (single inserts and removes).
pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

//! Service leases: the service takes the kernel lock for a client and keeps the handle
//! (in `holdings`) until the client releases, the lease expires or its client process
//! dies, or a clear revokes it.
//!
//! Invariants:
//! - A lease id names exactly one grant forever: renew, release and the reaper act on
//!   that grant's lock id and token only, never on a later grant of the same lock.
//! - Deadlines are monotonic: renewals move them by the ttl from now; the reaper ends a
//!   lease whose deadline passed (with `auto_expire`) or whose client died. The wall-clock
//!   times in the records are only for display and SQL.
//! - The holdings lock is never held across SQL: a renewal reads the slot, writes, then
//!   moves the deadline; the reaper closes an ended lease's handle before it writes its
//!   record (a database stalled by another process must not keep an expired lease's
//!   lock held).

use super::grant::{GrantSpec, Granted, LeaseTerms};
use super::holdings::{LeaseInfo, LeaseSlot};
use super::{check_label, close_record, renewal_is_sampled, LockRef, Registry, RegistryError};
use crate::clock;
use crate::ids::LockKey;
use crate::kernel::flock::HeldFlock;
use crate::kernel::process;
use crate::policy::clear;
use crate::policy::stale::{HolderKind, StaleReason};
use crate::store::history::{self, EventKind, NewEvent};
use crate::store::records;
use crate::store::StoreError;
use rusqlite::Connection;
use serde::Serialize;
use std::time::Duration;

/// A lease request from a client of the service.
#[derive(Debug, Clone)]
pub struct LeaseRequest {
    pub holder: String,
    pub operation: String,
    /// The client's pid, if it runs on this host: the lease ends soon after it dies.
    pub pid: Option<i32>,
    pub host: Option<String>,
    pub ttl: Option<Duration>,
    pub wait: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LeaseGrant {
    pub lease_id: String,
    pub token: i64,
    pub expires_at: String,
    #[serde(skip)]
    pub expires_at_ms: i64,
}

impl Registry {
    /// Puts a lease's handle in the holdings (inside the transaction of its grant).
    pub(super) fn insert_lease_slot(
        &self,
        key: &LockKey,
        lock_id: i64,
        token: i64,
        flock: HeldFlock,
        terms: LeaseTerms,
    ) {
        let now = self.monotonic();
        self.holdings().insert_lease(LeaseSlot {
            lease_id: terms.lease_id,
            key: key.clone(),
            lock_id,
            token,
            flock,
            ttl: terms.ttl,
            deadline: now + terms.ttl,
            renewed: now,
            client_pid: terms.client_pid,
            client_start: terms.client_start,
        });
    }

    /// Checks a lease request and turns it into the grant it asks for.
    fn lease_spec(&self, req: &LeaseRequest) -> Result<GrantSpec, RegistryError> {
        check_label("holder", &req.holder)?;
        check_label("operation", &req.operation)?;
        if let Some(h) = &req.host {
            check_label("host", h)?;
        }
        let cfg = &self.inner.config;
        let ttl = req.ttl.unwrap_or(cfg.default_lease_ttl);
        if ttl.is_zero() || ttl > cfg.max_lease_ttl {
            return Err(RegistryError::BadRequest(format!(
                "ttl_ms must be between 1 and {}",
                cfg.max_lease_ttl.as_millis()
            )));
        }
        let host = req
            .host
            .clone()
            .unwrap_or_else(|| process::hostname().to_string());
        let local = host == process::hostname();
        let pid_start = match (req.pid, local) {
            (Some(pid), true) => Some(process::start_ticks(pid).ok_or_else(|| {
                RegistryError::BadRequest(format!(
                    "pid {pid} is not a running process on this host"
                ))
            })?),
            _ => None,
        };
        // 128 random bits: a lease id is a bearer capability for renew and release.
        let lease_id = crate::random::hex(16)
            .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))?;
        Ok(GrantSpec {
            kind: HolderKind::Lease,
            holder: req.holder.clone(),
            operation: req.operation.clone(),
            pid: req.pid,
            pid_start,
            host,
            thread: None,
            lease: Some(LeaseTerms {
                lease_id,
                ttl,
                client_pid: if local { req.pid } else { None },
                client_start: pid_start,
            }),
            locker: None,
            registration_id: None,
        })
    }

    /// Takes a lock on behalf of a client; this process keeps the flock handle until the
    /// lease is released, expires or is revoked.
    pub fn acquire_lease(
        &self,
        key: &LockKey,
        req: &LeaseRequest,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<LeaseGrant, RegistryError> {
        let spec = self.lease_spec(req)?;
        self.backend()
            .acquire_lease(self, key, &spec, req.wait, cancelled)
    }

    /// The answer to a lease just granted.
    pub(super) fn lease_grant(&self, granted: &Granted) -> LeaseGrant {
        let expires_at_ms = granted.expires_at_ms.unwrap_or_else(|| self.now_ms());
        LeaseGrant {
            lease_id: granted.lease_id.clone().unwrap_or_default(),
            token: granted.token,
            expires_at: clock::rfc3339(expires_at_ms),
            expires_at_ms,
        }
    }

    /// Like [`Registry::acquire_lease`], waiting as a future that holds no thread (the
    /// service's way): see `grant_waiting_async`.
    pub async fn acquire_lease_async(
        &self,
        key: &LockKey,
        req: &LeaseRequest,
    ) -> Result<LeaseGrant, RegistryError> {
        let spec = self.lease_spec(req)?;
        self.backend()
            .acquire_lease_async(self, key, &spec, req.wait)
            .await
    }

    /// Extends a lease by its ttl. Fails with `LeaseGone` once it was revoked or expired.
    pub fn renew_lease(&self, lease_id: &str) -> Result<LeaseGrant, RegistryError> {
        self.backend().renew_lease(self, lease_id)
    }

    /// [`Registry::renew_lease`] on SQLite.
    pub(super) fn sqlite_renew_lease(&self, lease_id: &str) -> Result<LeaseGrant, RegistryError> {
        let gone = |why: &str| RegistryError::LeaseGone {
            lease_id: lease_id.to_string(),
            why: why.to_string(),
        };
        let (key, lock_id, token, ttl) = {
            let holdings = self.holdings();
            let slot = holdings
                .lease(lease_id)
                .ok_or_else(|| gone("it was released, expired or cleared"))?;
            if self.monotonic() >= slot.deadline {
                return Err(gone("it expired before this renewal"));
            }
            (slot.key.clone(), slot.lock_id, slot.token, slot.ttl)
        };
        let ttl_ms = ttl.as_millis() as i64;
        let k = key.clone();
        let expires_at = self.write(move |reg, conn| {
            let now = reg.now_ms();
            let expires_at = now + ttl_ms;
            let prev = records::find_lock(conn, &k)?;
            if !records::renew_holder(conn, lock_id, token, now, Some(expires_at))? {
                return Ok(None);
            }
            if let Some(prev) = prev.as_ref().filter(|p| renewal_is_sampled(p, now)) {
                history::insert_event(conn, &NewEvent::about(prev, EventKind::Renewed, now))?;
            }
            Ok(Some(expires_at))
        })?;
        let mut holdings = self.holdings();
        let Some(expires_at) = expires_at else {
            // The record was cleared behind this handle: let the lock go too.
            drop(holdings.remove_lease(lease_id));
            return Err(gone("its record was cleared"));
        };
        match holdings.lease_mut(lease_id) {
            Some(slot) if slot.token == token => {
                let now = self.monotonic();
                slot.deadline = now + ttl;
                slot.renewed = now;
            }
            // Ended (reaped, cleared) while the renewal was being written.
            _ => return Err(gone("it ended during this renewal")),
        }
        Ok(LeaseGrant {
            lease_id: lease_id.to_string(),
            token,
            expires_at: clock::rfc3339(expires_at),
            expires_at_ms: expires_at,
        })
    }

    /// Releases a lease: the record and a `released` event are committed, then the flock
    /// is let go.
    pub fn release_lease(&self, lease_id: &str) -> Result<Option<i64>, RegistryError> {
        self.backend().release_lease(self, lease_id)
    }

    /// [`Registry::release_lease`] on SQLite.
    pub(super) fn sqlite_release_lease(
        &self,
        lease_id: &str,
    ) -> Result<Option<i64>, RegistryError> {
        let released = self.write(release_job(lease_id.to_string()))?;
        Ok(self.after_release(released))
    }

    /// [`Registry::release_lease`] for the service's async threads: no thread waits for
    /// the commit. If this future is dropped before the answer, the release still commits
    /// and the flock still goes after it; only this process's waiters then learn of it by
    /// their next retry instead of at once.
    pub async fn release_lease_async(&self, lease_id: &str) -> Result<Option<i64>, RegistryError> {
        self.backend().release_lease_async(self, lease_id).await
    }

    /// [`Registry::release_lease_async`] on SQLite.
    pub(super) async fn sqlite_release_lease_async(
        &self,
        lease_id: &str,
    ) -> Result<Option<i64>, RegistryError> {
        let released = self.write_async(release_job(lease_id.to_string())).await?;
        Ok(self.after_release(released))
    }

    /// After the `released` event is committed: the flock goes (with the slot), then this
    /// process's waiters are told.
    fn after_release(&self, (slot, held_ms): (LeaseSlot, Option<i64>)) -> Option<i64> {
        self.close_slot(slot);
        held_ms
    }

    /// Closes a lease's handle taken out of the holdings (its flock goes), then tells
    /// this process's waiters for the lock.
    pub(super) fn close_slot(&self, slot: LeaseSlot) {
        let key = slot.key.clone();
        drop(slot);
        self.let_go(&key);
    }

    /// The leases this process holds.
    pub fn leases_held(&self) -> Vec<LeaseInfo> {
        let now = self.monotonic();
        self.holdings()
            .leases()
            .map(|s| LeaseInfo {
                lease_id: s.lease_id.clone(),
                key: s.key.clone(),
                token: s.token,
                remaining: s.deadline.saturating_duration_since(now),
            })
            .collect()
    }

    /// Ends this process's leases that expired (when `auto_expire`) or whose client
    /// process died. Returns the locks it ended.
    pub fn reap(&self) -> Result<Vec<String>, RegistryError> {
        self.backend().reap(self)
    }

    /// [`Registry::reap`] on SQLite: deadlines on this process's monotonic clock.
    pub(super) fn sqlite_reap(&self) -> Result<Vec<String>, RegistryError> {
        let auto = self.inner.config.auto_expire;
        let now = self.monotonic();
        // Deadlines are judged on the monotonic clock (`lease_end` compares two numbers on
        // one clock): milliseconds since `now`, negative when past.
        let candidates: Vec<(String, i64, Option<i32>, Option<u64>)> = self
            .holdings()
            .leases()
            .map(|s| {
                let past = now.saturating_duration_since(s.deadline).as_millis() as i64;
                let left = s.deadline.saturating_duration_since(now).as_millis() as i64;
                (
                    s.lease_id.clone(),
                    left - past,
                    s.client_pid,
                    s.client_start,
                )
            })
            .collect();
        let due: Vec<(String, &'static str)> = candidates
            .into_iter()
            .filter_map(|(id, deadline, pid, start)| {
                // Liveness reads /proc: outside the holdings lock.
                let client = pid.map(|p| process::liveness(p, start));
                let why = match clear::lease_end(client, 0, deadline, auto)? {
                    StaleReason::HolderDead => "holder_dead: the client process exited",
                    _ => "lease_expired: not renewed in time",
                };
                Some((id, why))
            })
            .collect();
        if due.is_empty() {
            return Ok(Vec::new());
        }
        // The kernel lock goes first, outside the database: a database stalled by another
        // process (one stopped in the middle of a commit) must not keep an expired lease's
        // lock held. The records follow as soon as the database lets us write; if it does
        // not, reconciliation closes them (this process no longer holds their handles).
        let ended: Vec<(LockKey, i64, i64, &'static str)> = {
            let mut holdings = self.holdings();
            due.into_iter()
                .filter_map(|(id, why)| {
                    let slot = holdings.remove_lease(&id)?;
                    Some((slot.key.clone(), slot.lock_id, slot.token, why))
                })
                .collect()
        };
        for (key, ..) in &ended {
            self.let_go(key);
        }
        self.write(move |reg, conn| {
            let now = reg.now_ms();
            let mut names = Vec::new();
            for (key, lock_id, token, why) in &ended {
                close_record(
                    conn,
                    LockRef::of(key, *lock_id),
                    *token,
                    EventKind::Expired,
                    now,
                    Some("reaper"),
                    Some(why),
                )?;
                names.push(key.to_string());
            }
            Ok(names)
        })
    }

    /// Releases every lease this process holds (graceful shutdown), recording why.
    pub fn release_all_leases(&self, why: &str) -> Result<usize, RegistryError> {
        self.backend().release_all_leases(self, why)
    }

    /// [`Registry::release_all_leases`] on SQLite: one transaction.
    pub(super) fn sqlite_release_all_leases(&self, why: &str) -> Result<usize, RegistryError> {
        let why = why.to_string();
        self.write(move |reg, conn| {
            let now = reg.now_ms();
            let slots: Vec<LeaseSlot> = {
                let mut holdings = reg.holdings();
                holdings
                    .lease_ids()
                    .iter()
                    .filter_map(|id| holdings.remove_lease(id))
                    .collect()
            };
            for slot in &slots {
                reg.let_go(&slot.key);
                close_record(
                    conn,
                    LockRef::of(&slot.key, slot.lock_id),
                    slot.token,
                    EventKind::Released,
                    now,
                    Some("lockledger"),
                    Some(&why),
                )?;
            }
            Ok(slots.len())
        })
    }

    /// The filesystem step of a clear: close this process's handle of a lease (only the
    /// grant with `token`; a newer grant of the same lock is left alone).
    pub(super) fn release_handle(&self, key: &LockKey, token: i64) {
        let slot = self.holdings().remove_grant(key, token);
        if let Some(slot) = slot {
            self.close_slot(slot);
        }
    }
}

/// The writer job of a lease's release: the slot leaves the holdings and its `released`
/// event is written; the slot (and with it the flock) is dropped only after the commit.
fn release_job(
    id: String,
) -> impl FnOnce(&Registry, &Connection) -> Result<(LeaseSlot, Option<i64>), RegistryError> {
    move |reg, conn| {
        let now = reg.now_ms();
        let Some(slot) = reg.holdings().remove_lease(&id) else {
            return Err(RegistryError::LeaseGone {
                lease_id: id,
                why: "it was already released, expired or cleared".into(),
            });
        };
        let held_ms = close_record(
            conn,
            LockRef::of(&slot.key, slot.lock_id),
            slot.token,
            EventKind::Released,
            now,
            None,
            None,
        )?;
        Ok((slot, held_ms))
    }
}

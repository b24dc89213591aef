//! Service leases: the service takes the kernel lock for a client and keeps the handle
//! until the client releases, the lease expires or its client process dies, or a clear
//! revokes it.
//!
//! Invariants: a lease's handle lives in the [`LeaseTable`] from the commit of its grant
//! until its record is closed (or, for the reaper, just before: the kernel lock goes
//! first so a stalled database cannot keep an expired lease's lock held).

use super::grant::{GrantSpec, Requester};
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
use serde::Serialize;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
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

/// A service lease held by this process: the flock handle lives here.
#[derive(Debug)]
pub(super) struct LeaseSlot {
    lease_id: String,
    token: i64,
    lock_id: i64,
    // Kept for its Drop, which releases the lease's flock.
    #[allow(dead_code)]
    flock: HeldFlock,
    expires_at: i64,
    ttl_ms: i64,
    client_pid: Option<i32>,
    client_start: Option<u64>,
}

#[derive(Debug, Default)]
pub(super) struct LeaseTable {
    pub(super) by_key: HashMap<LockKey, LeaseSlot>,
    pub(super) by_id: HashMap<String, LockKey>,
}

impl LeaseTable {
    pub(super) fn insert(&mut self, key: LockKey, slot: LeaseSlot) {
        self.by_id.insert(slot.lease_id.clone(), key.clone());
        self.by_key.insert(key, slot);
    }
    pub(super) fn remove(&mut self, key: &LockKey) -> Option<LeaseSlot> {
        let slot = self.by_key.remove(key)?;
        self.by_id.remove(&slot.lease_id);
        Some(slot)
    }
}

/// The lease handles of one storage directory are shared by every `Registry` of this
/// process opened on it, so "this process holds the lease's handle" means the same thing
/// to all of them.
pub(super) fn lease_table_for(storage_dir: &std::path::Path) -> Arc<Mutex<LeaseTable>> {
    static TABLES: Mutex<Option<HashMap<PathBuf, Arc<Mutex<LeaseTable>>>>> = Mutex::new(None);
    let dir = storage_dir
        .canonicalize()
        .unwrap_or_else(|_| storage_dir.to_path_buf());
    let mut tables = TABLES.lock().unwrap_or_else(|p| p.into_inner());
    Arc::clone(
        tables
            .get_or_insert_with(HashMap::new)
            .entry(dir)
            .or_default(),
    )
}

impl Registry {
    pub fn acquire_lease(
        &self,
        key: &LockKey,
        req: &LeaseRequest,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<LeaseGrant, RegistryError> {
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
            (Some(pid), true) => match process::start_ticks(pid) {
                Some(s) => Some(s),
                None => {
                    return Err(RegistryError::BadRequest(format!(
                        "pid {pid} is not a running process on this host"
                    )))
                }
            },
            _ => None,
        };
        let file = self.file_of(key)?;
        let flock = self.take_flock(
            key,
            &file,
            &Requester {
                holder: &req.holder,
                operation: &req.operation,
                pid: req.pid,
            },
            req.wait,
            cancelled,
        )?;
        // 128 random bits: a lease id is a bearer capability for renew and release.
        let lease_id = crate::random::hex(16)
            .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))?;
        let ttl_ms = ttl.as_millis() as i64;
        let spec = GrantSpec {
            kind: HolderKind::Lease,
            lease_id: Some(lease_id.clone()),
            holder: req.holder.clone(),
            operation: req.operation.clone(),
            pid: req.pid,
            pid_start,
            host,
            thread: None,
            ttl_ms: Some(ttl_ms),
        };
        let (k, f, id) = (key.clone(), file, lease_id.clone());
        let client_pid = if local { req.pid } else { None };
        let grant = self.write(move |reg, conn| {
            let (lock_id, token) = reg.record_grant(conn, &k, &f, spec)?;
            let expires_at = reg.now_ms() + ttl_ms;
            // The handle joins the table inside the transaction, so a clear in the same
            // batch sees record and handle together.
            reg.leases().insert(
                k.clone(),
                LeaseSlot {
                    lease_id: id.clone(),
                    token,
                    lock_id,
                    flock,
                    expires_at,
                    ttl_ms,
                    client_pid,
                    client_start: pid_start,
                },
            );
            Ok(LeaseGrant {
                lease_id: id,
                token,
                expires_at: clock::rfc3339(expires_at),
                expires_at_ms: expires_at,
            })
        });
        if grant.is_err() {
            // The commit failed after the job ran: drop the handle it stored.
            let stale_slot = {
                let mut t = self.leases();
                let key = t.by_id.get(&lease_id).cloned();
                key.and_then(|k| t.remove(&k))
            };
            drop(stale_slot);
        }
        grant
    }

    /// Extends a lease by its ttl. Fails with `LeaseGone` once it was revoked or expired.
    pub fn renew_lease(&self, lease_id: &str) -> Result<LeaseGrant, RegistryError> {
        let id = lease_id.to_string();
        self.write(move |reg, conn| {
            let now = reg.now_ms();
            let mut table = reg.leases();
            let Some(key) = table.by_id.get(&id).cloned() else {
                return Err(RegistryError::LeaseGone {
                    lease_id: id,
                    why: "it was released, expired or cleared".into(),
                });
            };
            let Some(slot) = table.by_key.get_mut(&key) else {
                return Err(RegistryError::UnknownLease(id));
            };
            if now >= slot.expires_at {
                return Err(RegistryError::LeaseGone {
                    lease_id: id,
                    why: "it expired before this renewal".into(),
                });
            }
            let expires_at = now + slot.ttl_ms;
            let prev = records::find_lock(conn, &key)?;
            let renewed =
                records::renew_holder(conn, slot.lock_id, slot.token, now, Some(expires_at))?;
            if !renewed {
                // The record was cleared behind this handle: let the lock go too.
                drop(table.remove(&key));
                return Err(RegistryError::LeaseGone {
                    lease_id: id,
                    why: "its record was cleared".into(),
                });
            }
            if let Some(prev) = prev.as_ref().filter(|p| renewal_is_sampled(p, now)) {
                history::insert_event(conn, &NewEvent::about(prev, EventKind::Renewed, now))?;
            }
            slot.expires_at = expires_at;
            Ok(LeaseGrant {
                lease_id: id,
                token: slot.token,
                expires_at: clock::rfc3339(expires_at),
                expires_at_ms: expires_at,
            })
        })
    }

    /// Releases a lease: the record and a `released` event are committed, then the flock
    /// is let go.
    pub fn release_lease(&self, lease_id: &str) -> Result<Option<i64>, RegistryError> {
        let id = lease_id.to_string();
        let (slot, held_ms) = self.write(move |reg, conn| {
            let now = reg.now_ms();
            let mut table = reg.leases();
            let Some(key) = table.by_id.get(&id).cloned() else {
                return Err(RegistryError::LeaseGone {
                    lease_id: id,
                    why: "it was already released, expired or cleared".into(),
                });
            };
            let slot = table.remove(&key);
            let mut held_ms = None;
            if let Some(slot) = slot.as_ref() {
                held_ms = close_record(
                    conn,
                    LockRef::of(&key, slot.lock_id),
                    slot.token,
                    EventKind::Released,
                    now,
                    None,
                    None,
                )?;
            }
            Ok((slot, held_ms))
        })?;
        drop(slot);
        Ok(held_ms)
    }

    /// Leases this process holds: (lease id, key, token, expires_at).
    pub fn leases_held(&self) -> Vec<(String, LockKey, i64, i64)> {
        let t = self.leases();
        t.by_key
            .iter()
            .map(|(k, s)| (s.lease_id.clone(), k.clone(), s.token, s.expires_at))
            .collect()
    }

    /// Ends this process's leases that expired (when `auto_expire`) or whose client
    /// process died. Returns the locks it ended.
    pub fn reap(&self) -> Result<Vec<String>, RegistryError> {
        let now = self.now_ms();
        let auto = self.inner.config.auto_expire;
        let due: Vec<(LockKey, i64, &'static str)> = {
            let t = self.leases();
            t.by_key
                .iter()
                .filter_map(|(k, s)| {
                    let client = s.client_pid.map(|p| process::liveness(p, s.client_start));
                    let why = match clear::lease_end(client, now, s.expires_at, auto)? {
                        StaleReason::HolderDead => "holder_dead: the client process exited",
                        _ => "lease_expired: not renewed in time",
                    };
                    Some((k.clone(), s.token, why))
                })
                .collect()
        };
        if due.is_empty() {
            return Ok(Vec::new());
        }
        // The kernel lock goes first, outside the database: a database stalled by another
        // process (one stopped in the middle of a commit) must not keep an expired lease's
        // lock held. The records follow as soon as the database lets us write; if it does
        // not, reconciliation closes them (this process no longer holds their handles).
        let ended: Vec<(LockKey, i64, i64, &'static str)> = {
            let mut t = self.leases();
            due.into_iter()
                .filter_map(|(key, token, why)| {
                    match t.by_key.get(&key) {
                        Some(s) if s.token == token => {}
                        _ => return None,
                    }
                    let slot = t.remove(&key)?;
                    let lock_id = slot.lock_id;
                    drop(slot);
                    Some((key, lock_id, token, why))
                })
                .collect()
        };
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
        let why = why.to_string();
        self.write(move |reg, conn| {
            let now = reg.now_ms();
            let slots: Vec<(LockKey, LeaseSlot)> = {
                let mut t = reg.leases();
                let keys: Vec<LockKey> = t.by_key.keys().cloned().collect();
                keys.into_iter()
                    .filter_map(|k| t.remove(&k).map(|s| (k, s)))
                    .collect()
            };
            for (key, slot) in &slots {
                close_record(
                    conn,
                    LockRef::of(key, slot.lock_id),
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
        let slot = {
            let mut t = self.leases();
            match t.by_key.get(key) {
                Some(s) if s.token == token => t.remove(key),
                _ => None,
            }
        };
        drop(slot);
    }
}

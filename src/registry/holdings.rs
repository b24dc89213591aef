//! What this process holds: the kernel handles of the service leases it granted, and the
//! grants of its live library guards.
//!
//! Invariants:
//! - A lease's flock handle lives here from the commit of its grant until its record is
//!   closed (or, for the reaper, just before). Leases are found by their id, and each id
//!   names exactly one grant (its lock id and token) forever: a later grant of the same
//!   lock never answers to an older id.
//! - At most one lease per lock lives here: a grant is refused while a live holder of the
//!   lock exists, even one whose lock file was replaced (see `grant`).
//! - Lease deadlines are monotonic instants: a wall-clock step neither ends a live lease
//!   nor keeps a dead one.
//! - Nothing here blocks or touches the database; callers never hold this lock across SQL.

use crate::ids::LockKey;
use crate::kernel::flock::HeldFlock;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A service lease held by this process: the flock handle lives here.
#[derive(Debug)]
pub(super) struct LeaseSlot {
    pub lease_id: String,
    pub key: LockKey,
    pub lock_id: i64,
    pub token: i64,
    // Dropping it releases the lease's flock.
    pub flock: HeldFlock,
    pub ttl: Duration,
    /// When the lease ends unless renewed (monotonic).
    pub deadline: Instant,
    /// The last grant or renewal (monotonic).
    pub renewed: Instant,
    pub client_pid: Option<i32>,
    pub client_start: Option<u64>,
}

/// A lease of this process, as the service reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    pub lease_id: String,
    pub key: LockKey,
    pub token: i64,
    /// Time left before it ends unless renewed.
    pub remaining: Duration,
}

#[derive(Debug, Default)]
pub(super) struct Holdings {
    leases: HashMap<String, LeaseSlot>,
    lease_of_key: HashMap<LockKey, String>,
    /// `(lock_id, token)` of the live library guards of this process.
    guards: HashSet<(i64, i64)>,
}

impl Holdings {
    pub fn insert_lease(&mut self, slot: LeaseSlot) {
        self.lease_of_key
            .insert(slot.key.clone(), slot.lease_id.clone());
        self.leases.insert(slot.lease_id.clone(), slot);
    }

    pub fn remove_lease(&mut self, lease_id: &str) -> Option<LeaseSlot> {
        let slot = self.leases.remove(lease_id)?;
        if self.lease_of_key.get(&slot.key).map(String::as_str) == Some(lease_id) {
            self.lease_of_key.remove(&slot.key);
        }
        Some(slot)
    }

    /// Removes the lease of `key` only if it is the grant with `token`.
    pub fn remove_grant(&mut self, key: &LockKey, token: i64) -> Option<LeaseSlot> {
        let id = self.lease_of_key.get(key)?.clone();
        match self.leases.get(&id) {
            Some(s) if s.token == token => self.remove_lease(&id),
            _ => None,
        }
    }

    pub fn lease(&self, lease_id: &str) -> Option<&LeaseSlot> {
        self.leases.get(lease_id)
    }

    pub fn lease_mut(&mut self, lease_id: &str) -> Option<&mut LeaseSlot> {
        self.leases.get_mut(lease_id)
    }

    pub fn leases(&self) -> impl Iterator<Item = &LeaseSlot> {
        self.leases.values()
    }

    pub fn lease_ids(&self) -> Vec<String> {
        self.leases.keys().cloned().collect()
    }

    pub fn add_guard(&mut self, lock_id: i64, token: i64) {
        self.guards.insert((lock_id, token));
    }

    pub fn remove_guard(&mut self, lock_id: i64, token: i64) {
        self.guards.remove(&(lock_id, token));
    }

    /// Does this process still hold the grant `token` of `lock_id` (as a lease whose
    /// handle is here, or a live library guard)?
    pub fn holds(&self, lock_id: i64, token: i64, lease_id: Option<&str>) -> bool {
        match lease_id {
            Some(id) => self
                .leases
                .get(id)
                .is_some_and(|s| s.lock_id == lock_id && s.token == token),
            None => self.guards.contains(&(lock_id, token)),
        }
    }
}

/// The holdings of one storage directory are shared by every `Registry` of this process
/// opened on it, so "this process holds it" means the same thing to all of them.
pub(super) fn holdings_for(storage_dir: &std::path::Path) -> Arc<Mutex<Holdings>> {
    static TABLES: Mutex<Option<HashMap<PathBuf, Arc<Mutex<Holdings>>>>> = Mutex::new(None);
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

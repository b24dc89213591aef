//! The lock registry: acquisition, status, clearing, reconciliation and history, tying
//! kernel locks (`flock`), holder records (`records`) and the staleness rules (`stale`)
//! together.
//!
//! Invariants:
//! - Exclusion comes from the kernel only. A holder row is written after its flock is
//!   taken and deleted before the flock is released, so a row without a flock means the
//!   holder let go without saying so (it died): that is what `holder_dead` detects.
//! - Every grant gets a fencing token strictly greater than all earlier grants of that
//!   lock (persisted in `locks.last_token`); a force clear bumps it too, so a revoked
//!   holder's token is never current again.
//! - Every `acquired` event is closed by exactly one of released / expired / cleared /
//!   force_cleared / reconciled. A force-cleared holder that later lets go writes no
//!   second closing event.
//! - Clearing re-checks each lock inside one IMMEDIATE transaction, performs the
//!   filesystem step (closing a lease's handle) there, and commits; a live holder is never
//!   touched by a safe clear, and nothing here ever deletes a lock file.
//! - A status read changes nothing: no file is created, no row is written.

use crate::clock::{self, Clock, SystemClock};
use crate::config::{Config, Namespace};
use crate::db::{self, ReadPool, StoreError, Writer};
use crate::flock::{self, FlockError, HeldFlock};
use crate::ids::{self, IdError, LockKey};
use crate::process;
use crate::records::{self, EventKind, HistoryQuery, LockRow, NewEvent, NewHolder};
use crate::stale::{
    self, HolderKind, Liveness, LockState, Observation, Policy, RecordFacts, StaleReason, Verdict,
};
use crate::waitq::{WaitQueues, WaiterInfo};
use rusqlite::Connection;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    InvalidId(#[from] IdError),
    #[error("{message}")]
    Busy {
        message: String,
        holder: Option<Box<LockReport>>,
    },
    #[error("lock {lock} has token {current} now, not {given}: it changed since you looked")]
    TokenMismatch {
        lock: String,
        given: i64,
        current: i64,
    },
    #[error("lock {lock} cannot be cleared here: {reason}")]
    NotClearable { lock: String, reason: String },
    #[error("lock {lock} is not held")]
    NotHeld { lock: String },
    #[error("lease {lease_id} has ended: {why}")]
    LeaseGone { lease_id: String, why: String },
    #[error("no lease {0} is known")]
    UnknownLease(String),
    #[error("lock {lock} was revoked by {by}: stop writing and let go")]
    Revoked { lock: String, by: String },
    #[error("invalid request: {0}")]
    BadRequest(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Flock(#[from] FlockError),
}

impl From<rusqlite::Error> for RegistryError {
    fn from(e: rusqlite::Error) -> Self {
        RegistryError::Store(StoreError::from_sqlite(e))
    }
}

impl From<r2d2::Error> for RegistryError {
    fn from(_: r2d2::Error) -> Self {
        RegistryError::Store(StoreError::Busy)
    }
}

/// One lock as every surface shows it (CLI `status --json`, the JSON API, the UI).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LockReport {
    pub namespace: String,
    pub owner: String,
    /// `""` for the main lock.
    pub field: String,
    /// Bare file name inside the locks directory; never a path.
    pub file: String,
    pub state: LockState,
    pub stale_reason: Option<StaleReason>,
    pub kind: Option<HolderKind>,
    pub holder: Option<String>,
    pub operation: Option<String>,
    pub pid: Option<i32>,
    pub host: Option<String>,
    pub thread: Option<String>,
    /// Command line of an external holder, from /proc.
    pub command: Option<String>,
    pub acquired_at: Option<String>,
    pub renewed_at: Option<String>,
    pub expires_at: Option<String>,
    pub age_s: Option<f64>,
    /// The holder's fencing token (pass it back to clear or force-clear exactly this grant).
    pub token: Option<i64>,
    /// A force clear asked this library holder to let go; it still holds the flock.
    pub revoke_requested: bool,
    /// Would a safe clear from here clear it?
    pub clearable: bool,
    /// One line for humans: who holds it, or why it is stale.
    pub note: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OwnerStatus {
    pub namespace: String,
    pub owner: String,
    pub locks: Vec<LockReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClearedLock {
    pub field: String,
    pub file: String,
    pub reason: StaleReason,
    pub token: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SkippedLock {
    pub field: String,
    pub file: String,
    pub reason: String,
    pub holder: Option<String>,
    pub pid: Option<i32>,
    pub operation: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ClearOutcome {
    pub cleared: Vec<ClearedLock>,
    pub skipped: Vec<SkippedLock>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ForceCleared {
    pub field: String,
    pub file: String,
    pub token: i64,
    pub new_token: i64,
    /// True when the holder was a live library holder that was asked to let go (it still
    /// holds the flock until it does).
    pub revocation_pending: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ReconcileReport {
    pub checked: usize,
    pub reconciled: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FenceCheck {
    pub current: bool,
    pub newest_token: i64,
}

/// How a library holder identifies itself.
#[derive(Debug, Clone)]
pub struct AcquireOptions {
    pub holder: String,
    pub operation: String,
    /// How long to wait for the lock before giving up with [`RegistryError::Busy`].
    pub wait: Duration,
}

impl AcquireOptions {
    pub fn new(holder: impl Into<String>, operation: impl Into<String>) -> Self {
        AcquireOptions {
            holder: holder.into(),
            operation: operation.into(),
            wait: Duration::from_secs(10),
        }
    }
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }
}

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

/// Longest holder label / operation name kept (longer ones are refused).
pub const MAX_LABEL_LEN: usize = 200;

fn check_label(what: &str, value: &str) -> Result<(), RegistryError> {
    if value.len() > MAX_LABEL_LEN || value.chars().any(|c| c.is_control()) {
        return Err(RegistryError::BadRequest(format!(
            "{what} must be at most {MAX_LABEL_LEN} bytes of printable text"
        )));
    }
    Ok(())
}

/// A service lease held by this process: the flock handle lives here.
#[derive(Debug)]
struct LeaseSlot {
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
struct LeaseTable {
    by_key: HashMap<LockKey, LeaseSlot>,
    by_id: HashMap<String, LockKey>,
}

impl LeaseTable {
    fn insert(&mut self, key: LockKey, slot: LeaseSlot) {
        self.by_id.insert(slot.lease_id.clone(), key.clone());
        self.by_key.insert(key, slot);
    }
    fn remove(&mut self, key: &LockKey) -> Option<LeaseSlot> {
        let slot = self.by_key.remove(key)?;
        self.by_id.remove(&slot.lease_id);
        Some(slot)
    }
}

#[derive(Debug)]
struct Inner {
    config: Config,
    locks_dir: PathBuf,
    clock: Arc<dyn Clock>,
    writer: Writer,
    readers: ReadPool,
    leases: Arc<Mutex<LeaseTable>>,
    waiters: Arc<WaitQueues>,
    me: (i32, Option<u64>),
}

/// The registry. Cheap to clone; all clones share one writer, pool and lease table.
#[derive(Debug, Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Writer")
    }
}

/// What a safe or forced clear decided for one lock, before touching anything.
enum Plan {
    Nothing,
    Skip(String),
    /// Remove the record; `release_slot` when this process holds the lease's handle.
    Clear {
        reason: StaleReason,
        release_slot: bool,
    },
}

/// The lease handles of one storage directory are shared by every `Registry` of this
/// process opened on it, so "this process holds the lease's handle" means the same thing
/// to all of them.
fn lease_table_for(storage_dir: &std::path::Path) -> Arc<Mutex<LeaseTable>> {
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
    /// Opens the registry on the real clock, migrating the database if needed.
    pub fn open(config: Config) -> Result<Registry, RegistryError> {
        Registry::open_with_clock(config, Arc::new(SystemClock))
    }

    pub fn open_with_clock(
        config: Config,
        clock: Arc<dyn Clock>,
    ) -> Result<Registry, RegistryError> {
        config
            .validate()
            .map_err(|e| RegistryError::BadRequest(e.to_string()))?;
        let locks_dir = flock::ensure_dir(&config.locks_dir()).map_err(StoreError::Io)?;
        let conn = db::open_and_migrate(&config)?;
        let writer = Writer::start(conn)?;
        let readers = db::read_pool(&config, 8)?;
        let leases = lease_table_for(&config.storage_dir);
        Ok(Registry {
            inner: Arc::new(Inner {
                config,
                locks_dir,
                clock,
                writer,
                readers,
                leases,
                waiters: Arc::new(WaitQueues::default()),
                me: process::current(),
            }),
        })
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn now_ms(&self) -> i64 {
        self.inner.clock.now_ms()
    }

    fn policy(&self) -> Policy {
        Policy {
            max_hold_ms: self.inner.config.max_hold.as_millis() as i64,
        }
    }

    fn leases(&self) -> MutexGuard<'_, LeaseTable> {
        // A panic while holding this lock cannot leave the table half-updated (every
        // mutation is a single insert/remove pair), so a poisoned lock is still usable.
        self.inner.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn namespace(&self, name: &str) -> Result<&Namespace, RegistryError> {
        Ok(ids::namespace_of(&self.inner.config, Some(name))?)
    }

    pub fn key(
        &self,
        namespace: Option<&str>,
        owner: &str,
        field: &str,
    ) -> Result<LockKey, RegistryError> {
        Ok(LockKey::in_config(
            &self.inner.config,
            namespace,
            owner,
            field,
        )?)
    }

    fn file_of(&self, key: &LockKey) -> Result<String, RegistryError> {
        Ok(key.file_name(self.namespace(key.namespace())?))
    }

    fn path_of_file(&self, file: &str) -> PathBuf {
        self.inner.locks_dir.join(file)
    }

    fn read<R>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R, RegistryError>,
    ) -> Result<R, RegistryError> {
        let conn = self.inner.readers.get()?;
        f(&conn)
    }

    /// Runs a job in the writer's transaction and returns once it is committed.
    fn write<R, F>(&self, f: F) -> Result<R, RegistryError>
    where
        F: FnOnce(&Registry, &Connection) -> Result<R, RegistryError> + Send + 'static,
        R: Send + 'static,
    {
        let me = self.clone();
        self.inner.writer.write(move |conn| f(&me, conn))
    }

    // ---------------------------------------------------------------- observation

    fn liveness(&self, pid: i32, start: Option<u64>) -> Liveness {
        if pid == self.inner.me.0 && (start.is_none() || start == self.inner.me.1) {
            return Liveness::Alive;
        }
        process::liveness(pid, start).into()
    }

    fn facts(&self, row: &LockRow) -> Option<RecordFacts> {
        let h = row.holder.as_ref()?;
        let client = match (h.pid, h.kind) {
            (Some(pid), HolderKind::Lease) if h.host == process::hostname() => {
                Some(self.liveness(pid, h.pid_start))
            }
            _ => None,
        };
        Some(RecordFacts {
            kind: h.kind,
            acquired_at_ms: h.acquired_at,
            renewed_at_ms: h.renewed_at,
            expires_at_ms: h.expires_at,
            locker: self.liveness(h.locker_pid, h.locker_start),
            client,
        })
    }

    fn observe(
        &self,
        row: Option<&LockRow>,
        file: &str,
        now: i64,
    ) -> Result<(bool, Verdict), RegistryError> {
        let flock_held = flock::probe(&self.path_of_file(file))?;
        let obs = Observation {
            flock_held,
            record: row.and_then(|r| self.facts(r)),
        };
        Ok((flock_held, stale::classify(&obs, now, &self.policy())))
    }

    fn is_mine(&self, h: &records::HolderRow) -> bool {
        h.locker_pid == self.inner.me.0 && h.locker_start == self.inner.me.1
    }

    /// Decides what a clear would do with one lock. `force` also takes live leases and
    /// hung holders (but never external ones).
    fn plan(
        &self,
        row: Option<&LockRow>,
        flock_held: bool,
        verdict: &Verdict,
        force: bool,
    ) -> Plan {
        let Some(h) = row.and_then(|r| r.holder.as_ref()) else {
            return if flock_held {
                Plan::Skip("held by a process lockledger does not manage (external); it cannot be cleared here — stop that process".into())
            } else {
                Plan::Nothing
            };
        };
        let locker_gone = self.liveness(h.locker_pid, h.locker_start) != Liveness::Alive;
        let holds_slot = h.kind == HolderKind::Lease
            && self.is_mine(h)
            && h.lease_id
                .as_deref()
                .is_some_and(|id| self.leases().by_id.contains_key(id));
        let reason = verdict.stale_reason;
        // A record whose flock is free, or whose locking process is gone, claims nothing
        // real: removing it cannot break exclusion.
        if locker_gone || !flock_held {
            return Plan::Clear {
                reason: StaleReason::HolderDead,
                release_slot: holds_slot,
            };
        }
        if h.kind == HolderKind::Lease && !holds_slot {
            return Plan::Skip(format!(
                "leased through the lockledger service (pid {}), which holds the lock file; clear it through that service",
                h.locker_pid
            ));
        }
        match (reason, force) {
            (Some(StaleReason::HolderDead), _) | (Some(StaleReason::LeaseExpired), _) if holds_slot => Plan::Clear {
                reason: reason.unwrap_or(StaleReason::HolderDead),
                release_slot: true,
            },
            (_, true) if holds_slot => Plan::Clear {
                reason: reason.unwrap_or(StaleReason::HeldTooLong),
                release_slot: true,
            },
            (Some(StaleReason::HeldTooLong), false) => Plan::Skip(format!(
                "held_too_long: {} is alive but has not renewed for longer than max_hold; a safe clear never touches a live holder (an admin may force-clear it)",
                holder_name(h)
            )),
            _ => Plan::Skip(format!(
                "held by a live holder ({}, {}) since {}; a safe clear never touches a live holder",
                holder_name(h),
                h.operation,
                clock::hms(h.acquired_at)
            )),
        }
    }

    fn report(
        &self,
        ns: &Namespace,
        owner: &str,
        field: &str,
        row: Option<&LockRow>,
        (flock_held, verdict): (bool, Verdict),
        now: i64,
    ) -> LockReport {
        let file = row.map(|r| r.file.clone()).unwrap_or_else(|| {
            ns.pattern
                .replace("{owner}", owner)
                .replace("{field}", field)
        });
        let holder = row.and_then(|r| r.holder.as_ref());
        let clearable = matches!(
            self.plan(row, flock_held, &verdict, false),
            Plan::Clear { .. }
        );
        let mut report = LockReport {
            namespace: ns.name.clone(),
            owner: owner.to_string(),
            field: field.to_string(),
            file,
            state: verdict.state,
            stale_reason: verdict.stale_reason,
            kind: verdict.kind,
            holder: holder.map(|h| h.holder.clone()),
            operation: holder.map(|h| h.operation.clone()),
            pid: holder.and_then(|h| h.pid),
            host: holder.map(|h| h.host.clone()),
            thread: holder.and_then(|h| h.thread.clone()),
            command: None,
            acquired_at: holder.map(|h| clock::rfc3339(h.acquired_at)),
            renewed_at: holder.map(|h| clock::rfc3339(h.renewed_at)),
            expires_at: holder.and_then(|h| h.expires_at.map(clock::rfc3339)),
            age_s: holder.map(|h| ((now - h.acquired_at).max(0) as f64) / 1000.0),
            token: holder.map(|h| h.token),
            revoke_requested: holder.is_some_and(|h| h.revoked_at.is_some()),
            clearable,
            note: String::new(),
        };
        if verdict.kind == Some(HolderKind::External) {
            let path = self.path_of_file(&report.file);
            let pid = external_holder_pid(&path);
            report.pid = pid;
            report.host = Some(process::hostname().to_string());
            report.command = pid.and_then(process::cmdline).map(|c| without_paths(&c));
        }
        report.note = note_for(&report);
        report
    }

    // ---------------------------------------------------------------- status

    /// Every configured lock of one owner, with its state. Changes nothing.
    pub fn status(
        &self,
        namespace: Option<&str>,
        owner: &str,
    ) -> Result<OwnerStatus, RegistryError> {
        let ns = ids::namespace_of(&self.inner.config, namespace)?.clone();
        ids::check_owner(owner)?;
        let now = self.now_ms();
        let ns_name = ns.name.clone();
        let owner_s = owner.to_string();
        let rows = self.read(|c| Ok(records::owner_locks(c, &ns_name, &owner_s)?))?;
        let mut locks = Vec::with_capacity(ns.fields.len());
        for field in &ns.fields {
            let mut row = rows.iter().find(|r| &r.field == field).cloned();
            let file = LockKey::new(&ns, owner, field)?.file_name(&ns);
            let (mut held, mut verdict) = self.observe(row.as_ref(), &file, now)?;
            let anomalous = row.as_ref().is_some_and(|r| r.holder.is_some()) != held;
            if anomalous {
                // A holder may have been between its flock and its commit while we
                // looked; one more read settles it.
                let key = LockKey::new(&ns, owner, field)?;
                row = self.read(|c| Ok(records::find_lock(c, &key)?))?;
                (held, verdict) = self.observe(row.as_ref(), &file, now)?;
            }
            locks.push(self.report(&ns, owner, field, row.as_ref(), (held, verdict), now));
        }
        Ok(OwnerStatus {
            namespace: ns.name.clone(),
            owner: owner.to_string(),
            locks,
        })
    }

    /// Known locks (those the registry has ever granted), with their state, by lock id.
    /// Returns the page and the cursor of the next page.
    pub fn list(
        &self,
        state: Option<LockState>,
        owner_prefix: Option<&str>,
        cursor: i64,
        limit: usize,
    ) -> Result<(Vec<LockReport>, Option<i64>), RegistryError> {
        let now = self.now_ms();
        let limit = limit.clamp(1, 1000);
        // Held and stale locks have records (externally held ones show in owner status).
        let only_recorded = matches!(state, Some(LockState::Stale | LockState::Held));
        let mut out = Vec::new();
        let mut after = cursor;
        loop {
            let prefix = owner_prefix.map(str::to_string);
            let page = self.read(|c| {
                Ok(records::list_locks(
                    c,
                    prefix.as_deref(),
                    after,
                    only_recorded,
                    256,
                )?)
            })?;
            let exhausted = page.len() < 256;
            for row in &page {
                after = row.lock_id;
                let Some(ns) = self.inner.config.namespace(&row.namespace) else {
                    continue;
                };
                let (held, verdict) = self.observe(Some(row), &row.file, now)?;
                if state.is_none_or(|s| s == verdict.state) {
                    out.push(self.report(
                        ns,
                        &row.owner,
                        &row.field,
                        Some(row),
                        (held, verdict),
                        now,
                    ));
                    if out.len() == limit {
                        return Ok((out, Some(after)));
                    }
                }
            }
            if exhausted {
                return Ok((out, None));
            }
        }
    }

    /// (held, stale) among the locks with a holder record, judged now.
    pub fn recorded_counts(&self) -> Result<(u64, u64), RegistryError> {
        let now = self.now_ms();
        let rows = self.read(|c| Ok(records::all_held(c)?))?;
        let (mut held, mut stale) = (0, 0);
        for row in &rows {
            match self.observe(Some(row), &row.file, now)?.1.state {
                LockState::Held => held += 1,
                LockState::Stale => stale += 1,
                LockState::Free => {}
            }
        }
        Ok((held, stale))
    }

    pub fn history(&self, q: &HistoryQuery) -> Result<Vec<records::EventRow>, RegistryError> {
        let mut q = q.clone();
        q.limit = q.limit.clamp(1, 10_000);
        self.read(|c| Ok(records::history(c, &q)?))
    }

    pub fn fence_check(&self, key: &LockKey, token: i64) -> Result<FenceCheck, RegistryError> {
        let row = self.read(|c| Ok(records::find_lock(c, key)?))?;
        let Some(row) = row else {
            return Ok(FenceCheck {
                current: false,
                newest_token: 0,
            });
        };
        let current = token == row.last_token
            && row
                .holder
                .as_ref()
                .is_some_and(|h| h.token == token && h.revoked_at.is_none());
        Ok(FenceCheck {
            current,
            newest_token: row.last_token,
        })
    }

    // ---------------------------------------------------------------- granting

    /// Records a grant for a lock whose flock the caller holds. Runs in the writer.
    fn record_grant(
        &self,
        conn: &Connection,
        key: &LockKey,
        file: &str,
        spec: GrantSpec,
    ) -> Result<(i64, i64), RegistryError> {
        let now = self.now_ms();
        let (lock_id, token) = records::grant_token(conn, key, file, now)?;
        if let Some(prev) = records::holder_token(conn, lock_id)? {
            // We hold the flock, so whoever this row names does not: close it.
            close_record(
                conn,
                LockRef::of(key, lock_id),
                prev,
                EventKind::Reconciled,
                now,
                Some("lockledger"),
                Some("superseded: its holder no longer held the lock file"),
            )?;
        }
        let expires_at = spec.ttl_ms.map(|t| now + t);
        let event = NewEvent {
            at: now,
            lock_id,
            namespace: key.namespace(),
            owner: key.owner(),
            field: key.field(),
            event: Some(EventKind::Acquired),
            token: Some(token),
            pid: spec.pid,
            host: Some(&spec.host),
            holder: Some(&spec.holder),
            operation: Some(&spec.operation),
            ..NewEvent::default()
        };
        let event_id = records::insert_event(conn, &event)?;
        records::insert_holder(
            conn,
            &NewHolder {
                lock_id,
                token,
                kind: spec.kind,
                lease_id: spec.lease_id.as_deref(),
                holder: &spec.holder,
                operation: &spec.operation,
                pid: spec.pid,
                pid_start: spec.pid_start,
                host: &spec.host,
                thread: spec.thread.as_deref(),
                locker_pid: self.inner.me.0,
                locker_start: self.inner.me.1,
                acquired_at: now,
                expires_at,
                acquired_event: event_id,
            },
        )?;
        Ok((lock_id, token))
    }

    fn busy_error(&self, key: &LockKey, waited: Duration) -> RegistryError {
        let report = self
            .status(Some(key.namespace()), key.owner())
            .ok()
            .and_then(|s| s.locks.into_iter().find(|l| l.field == key.field()));
        let who = match &report {
            Some(r) if r.state != LockState::Free => describe_holder(r),
            _ => "another holder".to_string(),
        };
        RegistryError::Busy {
            message: format!(
                "lock {key} is held by {who}; gave up after {} ms",
                waited.as_millis()
            ),
            holder: report.map(Box::new),
        }
    }

    fn record_wait_timeout(
        &self,
        key: &LockKey,
        who: &Requester<'_>,
        waited: Duration,
        gave_up: bool,
    ) {
        let key = key.clone();
        let file = match self.file_of(&key) {
            Ok(f) => f,
            Err(_) => return,
        };
        let (holder, operation, pid) = (who.holder.to_string(), who.operation.to_string(), who.pid);
        let res = self.write(move |reg, conn| {
            let now = reg.now_ms();
            let lock_id = records::ensure_lock(conn, &key, &file, now)?;
            let reason = if gave_up {
                format!("the waiter went away after {} ms", waited.as_millis())
            } else {
                format!("waited {} ms", waited.as_millis())
            };
            records::insert_event(
                conn,
                &NewEvent {
                    at: now,
                    lock_id,
                    namespace: key.namespace(),
                    owner: key.owner(),
                    field: key.field(),
                    event: Some(EventKind::WaitTimeout),
                    pid,
                    host: Some(process::hostname()),
                    holder: Some(&holder),
                    operation: Some(&operation),
                    reason: Some(&reason),
                    ..NewEvent::default()
                },
            )?;
            Ok(())
        });
        if let Err(e) = res {
            log::warn!("could not record a wait timeout: {e}");
        }
    }

    /// Waits in arrival order (among this process's waiters) for the flock, up to `wait`.
    fn take_flock(
        &self,
        key: &LockKey,
        file: &str,
        who: &Requester<'_>,
        wait: Duration,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<HeldFlock, RegistryError> {
        let started = Instant::now();
        let deadline = started + wait;
        let ticket = self
            .inner
            .waiters
            .join(key, who.holder, who.operation, self.now_ms());
        let got = if ticket.wait_turn(deadline, cancelled) {
            flock::acquire_until(&self.path_of_file(file), deadline, cancelled)
        } else {
            Err(FlockError::Timeout {
                name: file.to_string(),
                waited_ms: started.elapsed().as_millis() as u64,
            })
        };
        drop(ticket);
        match got {
            Ok(f) => Ok(f),
            Err(FlockError::Timeout { .. }) => {
                self.record_wait_timeout(key, who, started.elapsed(), cancelled());
                Err(self.busy_error(key, started.elapsed()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Acquirers waiting in this process, in queue order.
    pub fn waiters(&self) -> Vec<WaiterInfo> {
        self.inner.waiters.list()
    }

    pub fn waiting_count(&self) -> usize {
        self.inner.waiters.len()
    }

    /// Takes a lock for this process (a library holder). The holder row and the
    /// `acquired` event are committed before this returns.
    pub fn acquire(
        &self,
        key: &LockKey,
        opts: &AcquireOptions,
    ) -> Result<LockGuard, RegistryError> {
        check_label("holder", &opts.holder)?;
        check_label("operation", &opts.operation)?;
        let file = self.file_of(key)?;
        let who = Requester {
            holder: &opts.holder,
            operation: &opts.operation,
            pid: Some(self.inner.me.0),
        };
        let flock = self.take_flock(key, &file, &who, opts.wait, &|| false)?;
        let spec = GrantSpec {
            kind: HolderKind::Library,
            lease_id: None,
            holder: opts.holder.clone(),
            operation: opts.operation.clone(),
            pid: Some(self.inner.me.0),
            pid_start: self.inner.me.1,
            host: process::hostname().to_string(),
            thread: Some(process::thread_label()),
            ttl_ms: None,
        };
        let (k, f) = (key.clone(), file.clone());
        // On error the flock is dropped here, before returning.
        let (lock_id, token) = self.write(move |reg, conn| reg.record_grant(conn, &k, &f, spec))?;
        Ok(LockGuard {
            registry: self.clone(),
            key: key.clone(),
            lock_id,
            token,
            flock: Some(flock),
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
        let lease_id = new_lease_id()?;
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
                records::insert_event(conn, &NewEvent::about(prev, EventKind::Renewed, now))?;
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

    // ---------------------------------------------------------------- clearing

    /// Safe clear of one owner: only what cannot break exclusion. `tokens` maps a field
    /// (`""` or `main` for the main lock) to the token the caller was shown; a lock whose
    /// token changed since is skipped.
    pub fn clear(
        &self,
        namespace: Option<&str>,
        owner: &str,
        tokens: Option<BTreeMap<String, i64>>,
        actor: &str,
    ) -> Result<ClearOutcome, RegistryError> {
        let ns = ids::namespace_of(&self.inner.config, namespace)?.clone();
        ids::check_owner(owner)?;
        let mut expected: BTreeMap<String, i64> = BTreeMap::new();
        for (field, token) in tokens.unwrap_or_default() {
            let key = LockKey::new(&ns, owner, &field)?;
            expected.insert(key.field().to_string(), token);
        }
        let keys: Vec<LockKey> = ns
            .fields
            .iter()
            .map(|f| LockKey::new(&ns, owner, f))
            .collect::<Result<_, _>>()?;
        let actor = actor.to_string();
        let outcome = self.write(move |reg, conn| {
            let mut out = ClearOutcome::default();
            for key in &keys {
                let file = reg.file_of(key)?;
                reg.clear_one(
                    conn,
                    key,
                    &file,
                    expected.get(key.field()).copied(),
                    &actor,
                    &mut out,
                )?;
            }
            Ok(out)
        })?;
        Ok(outcome)
    }

    fn clear_one(
        &self,
        conn: &Connection,
        key: &LockKey,
        file: &str,
        expected_token: Option<i64>,
        actor: &str,
        out: &mut ClearOutcome,
    ) -> Result<(), RegistryError> {
        let now = self.now_ms();
        let row = records::find_lock(conn, key)?;
        let holder = row.as_ref().and_then(|r| r.holder.as_ref());
        if let Some(expected) = expected_token {
            if holder.map(|h| h.token) != Some(expected) {
                out.skipped.push(SkippedLock {
                    field: key.field().to_string(),
                    file: file.to_string(),
                    reason: format!(
                        "changed since you looked: token {expected} is no longer the holder's (now {})",
                        holder.map(|h| h.token.to_string()).unwrap_or_else(|| "free".into())
                    ),
                    holder: holder.map(|h| h.holder.clone()),
                    pid: holder.and_then(|h| h.pid),
                    operation: holder.map(|h| h.operation.clone()),
                });
                return Ok(());
            }
        }
        let (held, verdict) = self.observe(row.as_ref(), file, now)?;
        match self.plan(row.as_ref(), held, &verdict, false) {
            Plan::Nothing => {}
            Plan::Skip(reason) => {
                let external = holder.is_none();
                let mut skipped = SkippedLock {
                    field: key.field().to_string(),
                    file: file.to_string(),
                    reason,
                    holder: holder.map(|h| h.holder.clone()),
                    pid: holder.and_then(|h| h.pid),
                    operation: holder.map(|h| h.operation.clone()),
                };
                if external {
                    let pid = external_holder_pid(&self.path_of_file(file));
                    skipped.pid = pid;
                    if let Some(pid) = pid {
                        let cmd = process::cmdline(pid)
                            .map(|c| without_paths(&c))
                            .unwrap_or_default();
                        skipped.reason = format!("held by pid {pid} ({cmd}), a process lockledger does not manage; it cannot be cleared here — stop that process");
                    }
                    let lock_id = records::ensure_lock(conn, key, file, now)?;
                    records::insert_event(
                        conn,
                        &NewEvent {
                            at: now,
                            lock_id,
                            namespace: key.namespace(),
                            owner: key.owner(),
                            field: key.field(),
                            event: Some(EventKind::ObservedExternal),
                            pid,
                            host: Some(process::hostname()),
                            actor: Some(actor),
                            reason: Some("a clear found it held without a record"),
                            ..NewEvent::default()
                        },
                    )?;
                }
                out.skipped.push(skipped);
            }
            Plan::Clear {
                reason,
                release_slot,
            } => {
                let row = row.as_ref().ok_or_else(|| RegistryError::NotHeld {
                    lock: key.to_string(),
                })?;
                let token = row.holder.as_ref().map(|h| h.token).unwrap_or(0);
                if release_slot {
                    self.release_slot(key, token);
                }
                fault_point("clear_after_fs_step");
                close_record(
                    conn,
                    LockRef::row(row),
                    token,
                    EventKind::Cleared,
                    now,
                    Some(actor),
                    Some(reason.as_str()),
                )?;
                out.cleared.push(ClearedLock {
                    field: key.field().to_string(),
                    file: file.to_string(),
                    reason,
                    token,
                });
            }
        }
        Ok(())
    }

    /// The filesystem step of a clear: close this process's handle of a lease (only the
    /// grant with `token`; a newer grant of the same lock is left alone).
    fn release_slot(&self, key: &LockKey, token: i64) {
        let slot = {
            let mut t = self.leases();
            match t.by_key.get(key) {
                Some(s) if s.token == token => t.remove(key),
                _ => None,
            }
        };
        drop(slot);
    }

    /// Force clear (admin): revokes exactly the grant with `token`, live or not, and bumps
    /// the fencing token so the revoked holder's writes are refused.
    pub fn force_clear(
        &self,
        key: &LockKey,
        token: i64,
        reason: &str,
        actor: &str,
    ) -> Result<ForceCleared, RegistryError> {
        if reason.trim().is_empty() {
            return Err(RegistryError::BadRequest(
                "a force clear needs a reason".into(),
            ));
        }
        check_label("reason", reason)?;
        let file = self.file_of(key)?;
        let (key, reason, actor) = (key.clone(), reason.to_string(), actor.to_string());
        self.write(move |reg, conn| {
            let now = reg.now_ms();
            let row = records::find_lock(conn, &key)?;
            let (held, verdict) = reg.observe(row.as_ref(), &file, now)?;
            let Some((row, h)) = row.as_ref().and_then(|r| r.holder.as_ref().map(|h| (r, h))) else {
                return Err(if held {
                    RegistryError::NotClearable {
                        lock: key.to_string(),
                        reason: "it is held by a process lockledger does not manage (external); stop that process".into(),
                    }
                } else {
                    RegistryError::NotHeld { lock: key.to_string() }
                });
            };
            if h.token != token {
                return Err(RegistryError::TokenMismatch {
                    lock: key.to_string(),
                    given: token,
                    current: h.token,
                });
            }
            if h.revoked_at.is_some() {
                return Err(RegistryError::NotClearable {
                    lock: key.to_string(),
                    reason: "it was already force-cleared; its holder has been asked to let go".into(),
                });
            }
            let why = format!("{reason} (state was {})", verdict.stale_reason.map(|r| r.as_str()).unwrap_or(verdict.state.as_str()));
            let plan = reg.plan(Some(row), held, &verdict, true);
            let mut event = NewEvent::about(row, EventKind::ForceCleared, now);
            event.actor = Some(&actor);
            event.reason = Some(&why);
            let revocation_pending = match plan {
                Plan::Clear { release_slot, .. } => {
                    if release_slot {
                        reg.release_slot(&key, token);
                    }
                    fault_point("clear_after_fs_step");
                    records::delete_holder(conn, row.lock_id, token)?;
                    false
                }
                Plan::Skip(_) if h.kind == HolderKind::Library => {
                    // A live library holder keeps the flock until it lets go; the mark
                    // makes its guard fail on its next renewal.
                    records::mark_revoked(conn, row.lock_id, token, now, &actor)?;
                    true
                }
                Plan::Skip(why_not) => {
                    return Err(RegistryError::NotClearable {
                        lock: key.to_string(),
                        reason: why_not,
                    })
                }
                Plan::Nothing => return Err(RegistryError::NotHeld { lock: key.to_string() }),
            };
            records::insert_event(conn, &event)?;
            let new_token = records::next_token(conn, row.lock_id)?;
            Ok(ForceCleared {
                field: key.field().to_string(),
                file: row.file.clone(),
                token,
                new_token,
                revocation_pending,
            })
        })
    }

    // ---------------------------------------------------------------- upkeep

    /// Removes every record whose holder is gone (dead process, or flock no longer
    /// taken), with one `reconciled` event each. Idempotent; safe at any time.
    pub fn reconcile(&self, actor: &str) -> Result<ReconcileReport, RegistryError> {
        let actor = actor.to_string();
        self.write(move |reg, conn| {
            let now = reg.now_ms();
            let rows = records::all_held(conn)?;
            let mut report = ReconcileReport {
                checked: rows.len(),
                reconciled: Vec::new(),
            };
            for row in &rows {
                let Some(h) = row.holder.as_ref() else {
                    continue;
                };
                let (held, _) = reg.observe(Some(row), &row.file, now)?;
                let locker_gone = reg.liveness(h.locker_pid, h.locker_start) != Liveness::Alive;
                let orphan_lease = h.kind == HolderKind::Lease
                    && reg.is_mine(h)
                    && !reg
                        .leases()
                        .by_id
                        .contains_key(h.lease_id.as_deref().unwrap_or(""));
                if locker_gone || !held || orphan_lease {
                    let why = if locker_gone {
                        format!("holder_dead: pid {} is gone", h.locker_pid)
                    } else if orphan_lease {
                        "holder_dead: this service no longer holds the lease's handle".to_string()
                    } else {
                        "holder_dead: the lock file is no longer locked".to_string()
                    };
                    close_record(
                        conn,
                        LockRef::row(row),
                        h.token,
                        EventKind::Reconciled,
                        now,
                        Some(&actor),
                        Some(&why),
                    )?;
                    report
                        .reconciled
                        .push(format!("{}/{}", row.owner, display_field(&row.field)));
                }
            }
            Ok(report)
        })
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
                    let client_gone = s.client_pid.is_some_and(|p| {
                        process::liveness(p, s.client_start) != process::Liveness::Alive
                    });
                    if client_gone {
                        Some((k.clone(), s.token, "holder_dead: the client process exited"))
                    } else if auto && now >= s.expires_at {
                        Some((k.clone(), s.token, "lease_expired: not renewed in time"))
                    } else {
                        None
                    }
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

    /// Prunes history by age and count (configured retention). Returns rows deleted.
    pub fn prune_history(&self) -> Result<usize, RegistryError> {
        let cfg = &self.inner.config;
        let cutoff = cfg
            .retention_age
            .map(|a| self.now_ms() - a.as_millis() as i64);
        let max = cfg.retention_max_events;
        if cutoff.is_none() && max.is_none() {
            return Ok(0);
        }
        let mut total = 0;
        loop {
            let n =
                self.write(move |_, conn| Ok(records::prune_events(conn, cutoff, max, 5000)?))?;
            total += n;
            if n < 5000 {
                return Ok(total);
            }
        }
    }

    /// A fresh read connection from the pool (admin SQL uses its own read-only one).
    pub fn db_path(&self) -> PathBuf {
        self.inner.config.db_path()
    }
}

/// Who is asking for a lock (for the wait queue and `wait_timeout` events).
struct Requester<'a> {
    holder: &'a str,
    operation: &'a str,
    pid: Option<i32>,
}

/// What a grant records about its holder.
struct GrantSpec {
    kind: HolderKind,
    lease_id: Option<String>,
    holder: String,
    operation: String,
    pid: Option<i32>,
    pid_start: Option<u64>,
    host: String,
    thread: Option<String>,
    ttl_ms: Option<i64>,
}

/// The pid that holds a lock file's flock, from /proc/locks. The kernel prints that
/// table a page per read, and entries added or removed between reads can shift an entry
/// out of view; while the lock is still held, a few fresh reads find it.
fn external_holder_pid(path: &std::path::Path) -> Option<i32> {
    for _ in 0..4 {
        if let Some(pid) = crate::proc_locks::read_flock_holders(path)
            .ok()
            .and_then(|pids| pids.first().copied())
        {
            return Some(pid);
        }
        if !flock::probe(path).unwrap_or(false) {
            return None;
        }
    }
    None
}

/// Which lock an event is about.
#[derive(Debug, Clone, Copy)]
struct LockRef<'a> {
    lock_id: i64,
    namespace: &'a str,
    owner: &'a str,
    field: &'a str,
}

impl<'a> LockRef<'a> {
    fn of(key: &'a LockKey, lock_id: i64) -> LockRef<'a> {
        LockRef {
            lock_id,
            namespace: key.namespace(),
            owner: key.owner(),
            field: key.field(),
        }
    }
    fn row(row: &'a LockRow) -> LockRef<'a> {
        LockRef {
            lock_id: row.lock_id,
            namespace: &row.namespace,
            owner: &row.owner,
            field: &row.field,
        }
    }
}

/// Deletes the holder row with `token` and writes its closing event — unless a force
/// clear already closed this grant, in which case only the row goes. Returns how long
/// it was held, or None if there was no such row.
fn close_record(
    conn: &Connection,
    lock: LockRef<'_>,
    token: i64,
    event: EventKind,
    now: i64,
    actor: Option<&str>,
    reason: Option<&str>,
) -> Result<Option<i64>, RegistryError> {
    let Some(taken) = records::take_holder(conn, lock.lock_id, token)? else {
        return Ok(None);
    };
    let held_ms = (now - taken.acquired_at).max(0);
    if !taken.revoked {
        records::insert_event(
            conn,
            &NewEvent {
                at: now,
                lock_id: lock.lock_id,
                namespace: lock.namespace,
                owner: lock.owner,
                field: lock.field,
                event: Some(event),
                token: Some(token),
                pid: taken.pid,
                host: Some(&taken.host),
                holder: Some(&taken.holder),
                operation: Some(&taken.operation),
                actor,
                reason,
                held_ms: Some(held_ms),
            },
        )?;
    }
    Ok(Some(held_ms))
}

/// Crash-test hook: with `LOCKLEDGER_FAULT=<name>` in the environment, the process kills
/// itself with SIGKILL when it reaches the fault point of that name. The one point,
/// `clear_after_fs_step`, sits between a clear's filesystem step and its commit, so tests
/// can show that reconciliation repairs a clear interrupted there.
fn fault_point(name: &str) {
    static FAULT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let armed = FAULT.get_or_init(|| std::env::var("LOCKLEDGER_FAULT").ok());
    if armed.as_deref() == Some(name) {
        log::error!("fault point {name} reached: killing this process (LOCKLEDGER_FAULT)");
        // SAFETY: getpid and kill have no memory-safety preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

/// One `renewed` event per holder per minute keeps history readable.
fn renewal_is_sampled(row: &LockRow, now: i64) -> bool {
    row.holder
        .as_ref()
        .is_some_and(|h| h.renewed_at / 60_000 != now / 60_000)
}

/// A command line with every absolute path cut to its last component, so reports never
/// reveal server paths (`/usr/bin/python3 app.py /srv/x/locks/a.lock` → `python3 app.py
/// a.lock`).
pub fn without_paths(cmdline: &str) -> String {
    cmdline
        .split(' ')
        .map(|word| match word.rfind('/') {
            Some(i) if word.starts_with('/') || word.contains("=/") => {
                let prefix = word.find("=/").map(|e| &word[..=e]).unwrap_or("");
                format!("{prefix}{}", &word[i + 1..])
            }
            _ => word.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn display_field(field: &str) -> &str {
    if field.is_empty() {
        "(main)"
    } else {
        field
    }
}

/// "pid 812 (send_message) since 12:01:07"
/// "pid 812", or the lease holder's label when the client gave no pid.
fn holder_name(h: &records::HolderRow) -> String {
    match h.pid {
        Some(pid) => format!("pid {pid}"),
        None => format!("lease holder {:?}", h.holder),
    }
}

pub fn describe_holder(r: &LockReport) -> String {
    let pid = match (r.pid, &r.holder) {
        (Some(p), _) => format!("pid {p}"),
        (None, Some(h)) => format!("{h:?}"),
        (None, None) => "an unknown process".into(),
    };
    match (&r.kind, &r.operation, &r.acquired_at) {
        (Some(HolderKind::External), _, _) => {
            let cmd = r.command.as_deref().unwrap_or("unknown command");
            format!("{pid} ({cmd}), outside lockledger")
        }
        (_, Some(op), Some(at)) => {
            let hms = at.get(11..19).unwrap_or(at);
            format!("{pid} ({op}) since {hms}")
        }
        _ => pid,
    }
}

fn note_for(r: &LockReport) -> String {
    let lock = format!("lock {}/{}", r.owner, display_field(&r.field));
    match (r.state, r.stale_reason) {
        (LockState::Free, _) => format!("{lock} is free"),
        (LockState::Held, _) if r.revoke_requested => {
            format!(
                "{lock} was force-cleared; {} has been asked to let go",
                describe_holder(r)
            )
        }
        (LockState::Held, _) => format!("{lock} is held by {}", describe_holder(r)),
        (LockState::Stale, Some(StaleReason::HolderDead)) => {
            format!(
                "{lock} is stale: its holder ({}) is gone",
                describe_holder(r)
            )
        }
        (LockState::Stale, Some(StaleReason::LeaseExpired)) => {
            format!(
                "{lock} is stale: the lease of {} was not renewed",
                describe_holder(r)
            )
        }
        (LockState::Stale, _) => format!(
            "{lock} is stale: {} is alive but has not renewed for too long (hung?)",
            describe_holder(r)
        ),
    }
}

/// 128 random bits, hex: a lease id is a bearer capability for renew and release.
fn new_lease_id() -> Result<String, RegistryError> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(StoreError::Io)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
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
        let (lock_id, token, key) = (self.lock_id, self.token, self.key.clone());
        self.registry.write(move |reg, conn| {
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
                        records::insert_event(
                            conn,
                            &NewEvent::about(row, EventKind::Renewed, now),
                        )?;
                    }
                    Ok(())
                }
            }
        })
    }

    /// Releases now: commits the `released` event, then lets go of the flock.
    pub fn release(mut self) -> Result<(), RegistryError> {
        self.release_inner()
    }

    fn release_inner(&mut self) -> Result<(), RegistryError> {
        let Some(flock) = self.flock.take() else {
            return Ok(());
        };
        let (key, token, lock_id) = (self.key.clone(), self.token, self.lock_id);
        let res = self.registry.write(move |reg, conn| {
            let lock = LockRef::of(&key, lock_id);
            close_record(
                conn,
                lock,
                token,
                EventKind::Released,
                reg.now_ms(),
                None,
                None,
            )?;
            Ok(())
        });
        // The flock goes last, whatever the database said: a record left behind is
        // repaired by reconciliation, a flock left behind would block everyone.
        drop(flock);
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

#[cfg(test)]
mod tests {
    use super::without_paths;

    #[test]
    fn command_lines_lose_their_paths() {
        assert_eq!(
            without_paths("/usr/bin/python3 -c x /srv/app/storage/locks/c3_messages.lock"),
            "python3 -c x c3_messages.lock"
        );
        assert_eq!(
            without_paths("gunicorn --chdir=/srv/app app:wsgi"),
            "gunicorn --chdir=app app:wsgi"
        );
        assert_eq!(without_paths("python3 server.py"), "python3 server.py");
    }
}

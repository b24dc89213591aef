//! Granting locks: one attempt (the kernel lock, then the record) and waiting in arrival
//! order for a turn (library holders and their guard are in `guard.rs`).
//!
//! Invariants:
//! - The holder row and the `acquired` event are committed before a grant is returned.
//! - The record wins over the path: while a recorded holder lives, nobody is granted the
//!   lock again, even when its lock file was deleted or replaced at the path and the new
//!   file's flock is free (the grant is refused and a `file_replaced` event is written,
//!   once per holder).

use super::report::describe_holder;
use super::waitq::{Full, Ticket, WaiterInfo};
use super::{close_record, LockRef, Registry, RegistryError};
use crate::ids::LockKey;
use crate::kernel::flock::{self, FileId, HeldFlock};
use crate::policy::stale::{HolderKind, LockState};
use crate::store::history::{self, EventKind, NewEvent};
use crate::store::records::{self, NewHolder};
use rusqlite::Connection;
use std::time::{Duration, Instant};

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

/// What a grant records about its holder.
#[derive(Debug, Clone)]
pub(super) struct GrantSpec {
    pub kind: HolderKind,
    pub holder: String,
    pub operation: String,
    pub pid: Option<i32>,
    pub pid_start: Option<u64>,
    pub host: String,
    pub thread: Option<String>,
    /// For a lease: its id and how long it lasts unrenewed.
    pub lease: Option<LeaseTerms>,
    /// The process holding the flock, when it is not this one (a registered holder).
    pub locker: Option<Locker>,
    /// A registered holder's id (kept where a lease keeps its id).
    pub registration_id: Option<String>,
}

/// A process by its pid and start time (pids are reused).
#[derive(Debug, Clone, Copy)]
pub(super) struct Locker {
    pub pid: i32,
    pub start: u64,
}

#[derive(Debug, Clone)]
pub(super) struct LeaseTerms {
    pub lease_id: String,
    pub ttl: Duration,
    /// The client's pid on this host, whose death ends the lease.
    pub client_pid: Option<i32>,
    pub client_start: Option<u64>,
}

/// A grant made for a waiter that may be gone by the time it arrives (its future was
/// dropped): if nobody claims it, dropping it gives the lock back.
struct Unclaimed {
    registry: Registry,
    granted: Option<Granted>,
}

impl Drop for Unclaimed {
    fn drop(&mut self) {
        let Some(granted) = self.granted.take() else {
            return;
        };
        let registry = self.registry.clone();
        let give_back = move || {
            if let Err(e) = registry.give_back(granted) {
                log::warn!("giving back a grant nobody waited for: {e}");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => drop(h.spawn_blocking(give_back)),
            Err(_) => give_back(),
        }
    }
}

/// A grant just committed.
#[derive(Debug)]
pub(super) struct Granted {
    pub key: LockKey,
    /// The lease's id, for a lease.
    pub lease_id: Option<String>,
    pub lock_id: i64,
    pub token: i64,
    /// When a lease expires unless renewed (wall clock, for display).
    pub expires_at_ms: Option<i64>,
    /// The kernel lock, for a library holder (a lease's stays in the holdings).
    pub flock: Option<HeldFlock>,
}

impl Registry {
    /// One attempt, without waiting: the kernel lock, then the record. `Ok(None)` when
    /// someone holds the lock (or a live holder's lock file was replaced).
    pub(super) fn try_grant(
        &self,
        key: &LockKey,
        file: &str,
        spec: &GrantSpec,
    ) -> Result<Option<Granted>, RegistryError> {
        let Some(flock) = flock::try_acquire(&self.path_of_file(file), self.file_mode())? else {
            return Ok(None);
        };
        let (k, f, s) = (key.clone(), file.to_string(), spec.clone());
        let lease_id = spec.lease.as_ref().map(|l| l.lease_id.clone());
        let id = flock.id();
        let lock_grant =
            self.write(move |reg, conn| reg.record_grant(conn, &k, &f, s, id, Some(flock)));
        if lock_grant.is_err() {
            // The commit failed after the job ran: drop what it put in the holdings.
            let mut holdings = self.holdings();
            if let Some(id) = &lease_id {
                drop(holdings.remove_lease(id));
            }
        }
        lock_grant
    }

    /// [`Registry::try_grant`] for the service's async threads: the non-blocking flock try
    /// here, the record through the writer's async path. The grant comes wrapped: if this
    /// future is dropped before it is claimed, it is given back.
    async fn try_grant_async(
        &self,
        key: &LockKey,
        file: &str,
        spec: &GrantSpec,
    ) -> Result<Option<Unclaimed>, RegistryError> {
        let Some(flock) = flock::try_acquire(&self.path_of_file(file), self.file_mode())? else {
            return Ok(None);
        };
        let (k, f, s) = (key.clone(), file.to_string(), spec.clone());
        let lease_id = spec.lease.as_ref().map(|l| l.lease_id.clone());
        let id = flock.id();
        let lock_grant = self
            .write_async(move |reg, conn| {
                let granted = reg.record_grant(conn, &k, &f, s, id, Some(flock))?;
                Ok(granted.map(|g| Unclaimed {
                    registry: reg.clone(),
                    granted: Some(g),
                }))
            })
            .await;
        if lock_grant.is_err() {
            // The commit failed after the job ran: drop what it put in the holdings.
            if let Some(id) = &lease_id {
                drop(self.holdings().remove_lease(id));
            }
        }
        lock_grant
    }

    /// Records a grant of the lock whose flock is on the file `file_id`: held by this
    /// process as `flock`, or by the registrant `spec.locker`. Runs in the writer.
    pub(super) fn record_grant(
        &self,
        conn: &Connection,
        key: &LockKey,
        file: &str,
        spec: GrantSpec,
        file_id: FileId,
        flock: Option<HeldFlock>,
    ) -> Result<Option<Granted>, RegistryError> {
        let now = self.now_ms();
        let prev = records::find_lock(conn, key)?;
        if let Some(prev) = &prev {
            if let Some(h) = &prev.holder {
                let same_file = h.file_id.is_none_or(|id| id == file_id);
                if !same_file && self.holder_alive(prev.lock_id, h) {
                    // Its lock file was deleted or replaced, and it still holds the old
                    // one: granting the new file would make two holders.
                    if records::mark_file_replaced(conn, prev.lock_id, h.token, now)? {
                        let mut event = NewEvent::about(prev, EventKind::FileReplaced, now);
                        event.held_ms = None;
                        event.actor = Some("lockledger");
                        event.reason = Some(
                            "its lock file was deleted or replaced at the lock path while it \
                             held it; the lock is not granted again until this holder ends",
                        );
                        history::insert_event(conn, &event)?;
                    }
                    return Ok(None);
                }
                // We hold the flock of the file its record names, or it is gone: it does
                // not hold the lock any more.
                let why = if same_file {
                    "superseded: its holder no longer held the lock file"
                } else {
                    "superseded: its holder is gone (and its lock file was replaced)"
                };
                close_record(
                    conn,
                    LockRef::row(prev),
                    h.token,
                    EventKind::Reconciled,
                    now,
                    Some("lockledger"),
                    Some(why),
                )?;
            }
        }
        // A known lock's token is bumped by its rowid (cheaper than the upsert by name,
        // which only a lock's first grant needs).
        let (lock_id, token) = match &prev {
            Some(prev) => (prev.lock_id, records::next_token(conn, prev.lock_id)?),
            None => records::grant_token(conn, key, file, now)?,
        };
        self.cover_token(conn, token)?;
        let expires_at = spec.lease.as_ref().map(|l| now + l.ttl.as_millis() as i64);
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
        let event_id = history::insert_event(conn, &event)?;
        records::insert_holder(
            conn,
            &NewHolder {
                lock_id,
                token,
                kind: spec.kind,
                lease_id: spec
                    .lease
                    .as_ref()
                    .map(|l| l.lease_id.as_str())
                    .or(spec.registration_id.as_deref()),
                holder: &spec.holder,
                operation: &spec.operation,
                pid: spec.pid,
                pid_start: spec.pid_start,
                host: &spec.host,
                thread: spec.thread.as_deref(),
                locker_pid: spec.locker.map_or(self.inner.me.0, |l| l.pid),
                locker_start: spec.locker.map_or(self.inner.me.1, |l| Some(l.start)),
                acquired_at: now,
                expires_at,
                acquired_event: event_id,
                file_id,
            },
        )?;
        let lease_id = spec.lease.as_ref().map(|l| l.lease_id.clone());
        // The grant joins this process's holdings inside the transaction, so a clear or
        // a grant in the same batch sees record and holding together.
        let flock = match (spec.lease, flock) {
            (Some(terms), Some(flock)) => {
                self.insert_lease_slot(key, lock_id, token, flock, terms);
                None
            }
            (None, Some(flock)) => {
                self.holdings().add_guard(lock_id, token);
                Some(flock)
            }
            // A registrant holds its own flock.
            (_, None) => None,
        };
        Ok(Some(Granted {
            key: key.clone(),
            lease_id,
            lock_id,
            token,
            expires_at_ms: expires_at,
            flock,
        }))
    }

    /// Why an acquirer gave up: who holds the lock, as status shows it.
    pub(super) fn busy_error(&self, key: &LockKey, waited: Duration) -> RegistryError {
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

    /// Joins the wait queue of `key`, or refuses at once when it is full.
    pub(super) fn join_queue(
        &self,
        key: &LockKey,
        spec: &GrantSpec,
    ) -> Result<Ticket, RegistryError> {
        self.inner
            .waiters
            .join(key, &spec.holder, &spec.operation, self.now_ms())
            .map_err(|full| RegistryError::TooManyWaiters {
                lock: key.to_string(),
                why: match full {
                    Full::Lock(n) => format!("{n} are waiting for it"),
                    Full::Total(n) => format!("{n} are waiting in this service"),
                },
            })
    }

    /// The lock of `key` was let go in this process: the head of its queue tries now.
    pub(super) fn let_go(&self, key: &LockKey) {
        self.inner.waiters.wake(key);
    }

    /// Waits in arrival order (among this process's waiters) for a grant, up to `wait`,
    /// blocking this thread (library holders): tries when it is this waiter's turn, and
    /// while someone holds the lock waits for it to be let go in this process or backs
    /// off (0.5 ms doubling to 25 ms) for holders elsewhere.
    pub(super) fn grant_waiting(
        &self,
        key: &LockKey,
        spec: &GrantSpec,
        wait: Duration,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Granted, RegistryError> {
        let file = self.file_of(key)?;
        let started = Instant::now();
        let deadline = started + wait;
        let ticket = self.join_queue(key, spec)?;
        let got = take_turns(&ticket, deadline, cancelled, || {
            self.try_grant(key, &file, spec)
        })?;
        if let Some(granted) = got {
            return Ok(granted);
        }
        drop(ticket);
        let waited = started.elapsed();
        self.note_busy(key, spec, waited, cancelled());
        if let Err(e) = self.flush_busy() {
            log::warn!("could not record a busy answer: {e}");
        }
        Err(self.busy_error(key, waited))
    }

    /// Waits in arrival order for a grant, up to `wait`, holding no thread: the waiter is
    /// a future, woken when it becomes the head and when the lock is let go in this
    /// process; the head retries on a backoff (1 ms doubling to 50 ms) for holders in other
    /// processes. Each attempt is a non-blocking flock try on this thread and a commit
    /// through the writer's async path (no thread waits for it). If this future is dropped
    /// after an attempt succeeded, the grant is given back.
    pub(super) async fn grant_waiting_async(
        &self,
        key: &LockKey,
        spec: &GrantSpec,
        wait: Duration,
    ) -> Result<Granted, RegistryError> {
        let file = self.file_of(key)?;
        let started = tokio::time::Instant::now();
        let deadline = started + wait;
        let ticket = self.join_queue(key, spec)?;
        let mut pause = Duration::from_millis(1);
        loop {
            if tokio::time::timeout_at(deadline, ticket.turn())
                .await
                .is_err()
            {
                break;
            }
            // The flock try here; the commit joins the writer's queue without holding a
            // thread (see `store::writer::drain`).
            let attempt = self.try_grant_async(key, &file, spec).await?;
            if let Some(mut unclaimed) = attempt {
                if let Some(granted) = unclaimed.granted.take() {
                    return Ok(granted);
                }
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                break;
            }
            let next_try = now + pause.min(deadline - now);
            let _ = tokio::time::timeout_at(next_try, ticket.woken()).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
        drop(ticket);
        let waited = started.elapsed();
        self.note_busy(key, spec, waited, false);
        let (reg, k) = (self.clone(), key.clone());
        tokio::task::spawn_blocking(move || reg.busy_error(&k, waited))
            .await
            .map_err(|_| RegistryError::BadRequest("an acquire attempt failed".into()))
            .and_then(Err)
    }

    /// Gives a grant back that nobody will use: its `released` event is committed, then
    /// its kernel lock goes.
    pub(super) fn give_back(&self, granted: Granted) -> Result<(), RegistryError> {
        if let Some(id) = &granted.lease_id {
            return self.release_lease(id).map(|_| ());
        }
        let (key, lock_id, token) = (granted.key.clone(), granted.lock_id, granted.token);
        let res = self.write(move |reg, conn| {
            close_record(
                conn,
                LockRef::of(&key, lock_id),
                token,
                EventKind::Released,
                reg.now_ms(),
                Some("lockledger"),
                Some("its waiter went away before the grant arrived"),
            )?;
            Ok(())
        });
        drop(granted.flock);
        self.holdings().remove_guard(lock_id, token);
        self.let_go(&granted.key);
        res
    }

    /// Acquirers waiting in this process, in queue order.
    pub fn waiters(&self) -> Vec<WaiterInfo> {
        self.inner.waiters.list()
    }

    pub fn waiting_count(&self) -> usize {
        self.inner.waiters.len()
    }
}

/// Waits in this process's arrival order (blocking the thread) and calls `attempt` at
/// each turn: when it is this waiter's turn, and while someone holds the lock, when the
/// lock is let go in this process or after a backoff (0.5 ms doubling to 25 ms) for
/// holders elsewhere. None once `deadline` passed or the caller `cancelled`.
pub(super) fn take_turns<T>(
    ticket: &Ticket,
    deadline: Instant,
    cancelled: &dyn Fn() -> bool,
    mut attempt: impl FnMut() -> Result<Option<T>, RegistryError>,
) -> Result<Option<T>, RegistryError> {
    let mut pause = Duration::from_micros(500);
    while ticket.wait_turn(deadline, cancelled) {
        if let Some(got) = attempt()? {
            return Ok(Some(got));
        }
        let now = Instant::now();
        if now >= deadline || cancelled() {
            break;
        }
        ticket.wait_woken(now + pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(25));
    }
    Ok(None)
}

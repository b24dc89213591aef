//! Granting locks to library holders in this process: waiting in arrival order for the
//! kernel lock, recording the grant, and the [`LockGuard`] that gives it back.
//!
//! Invariants: the holder row and the `acquired` event are committed before a grant is
//! returned; a guard releases on every path (return, `?`, panic unwinding, a dropped
//! future), committing its `released` event before the flock goes.

use super::{check_label, close_record, renewal_is_sampled, LockRef, Registry, RegistryError};
use crate::ids::LockKey;
use crate::kernel::flock::{self, FlockError, HeldFlock};
use crate::kernel::process;
use crate::policy::stale::{HolderKind, LockState};
use crate::registry::report::describe_holder;
use crate::registry::waitq::WaiterInfo;
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

/// Who is asking for a lock (for the wait queue and `wait_timeout` events).
pub(super) struct Requester<'a> {
    pub(super) holder: &'a str,
    pub(super) operation: &'a str,
    pub(super) pid: Option<i32>,
}

/// What a grant records about its holder.
pub(super) struct GrantSpec {
    pub(super) kind: HolderKind,
    pub(super) lease_id: Option<String>,
    pub(super) holder: String,
    pub(super) operation: String,
    pub(super) pid: Option<i32>,
    pub(super) pid_start: Option<u64>,
    pub(super) host: String,
    pub(super) thread: Option<String>,
    pub(super) ttl_ms: Option<i64>,
}

impl Registry {
    // ---------------------------------------------------------------- granting

    /// Records a grant for a lock whose flock the caller holds. Runs in the writer.
    pub(super) fn record_grant(
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
        let event_id = history::insert_event(conn, &event)?;
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
            history::insert_event(
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
    pub(super) fn take_flock(
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

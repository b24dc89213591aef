//! Registered holders: a process that took a lock file's flock itself (the chat app
//! through the Python package's drop-in `FileLock`) tells the registry who it is, so its
//! hold is shown with its pid, operation and token, and can be reconciled and revoked
//! like a library holder's.
//!
//! Invariants:
//! - Nothing is recorded unless `/proc/locks` shows that very pid holding the flock of
//!   the very file now at the lock path; exclusion never depends on the registry (the
//!   kernel lock is the process's own, taken before it registers).
//! - A registration is a grant: it gets a fencing token and an `acquired` event, and its
//!   record is a library holder's whose locking process is the registrant, so a dead
//!   registrant is reconciled, a safe clear skips a live one, and a force clear marks it
//!   revoked (its fence checks and renewals fail from then on).
//! - A registration id (128 random bits) names exactly one grant: unregistering with it
//!   closes that grant only.

use super::backend::Registering;
use super::grant::{GrantSpec, Locker};
use super::{check_label, close_record, LockRef, Registry, RegistryError};
use crate::ids::LockKey;
use crate::kernel::flock;
use crate::kernel::proc_locks::Snapshot;
use crate::kernel::process;
use crate::policy::stale::HolderKind;
use crate::store::history::EventKind;
use crate::store::records;
use crate::store::StoreError;
use serde::Serialize;

/// A process checked to hold a lock file's flock, about to be registered.
#[derive(Debug)]
pub(super) struct Registrant {
    pub pid: i32,
    pub start: u64,
    pub file: String,
    pub file_id: crate::kernel::flock::FileId,
    pub registration_id: String,
}

/// What a registration answers.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Registration {
    /// Pass it to `DELETE /api/v1/registrations/{id}` when the lock is let go.
    pub registration_id: String,
    /// The fencing token of this grant.
    pub token: i64,
    pub owner: String,
    pub field: String,
    /// The lock file's bare name.
    pub file: String,
}

impl Registry {
    /// Records that process `pid` holds `key`'s lock file (it took the flock itself). On a
    /// shared (PostgreSQL) registry the registration is also the grant across hosts, made
    /// by [`Registry::register_async`] (this blocking form answers `unsupported` there).
    pub fn register(
        &self,
        key: &LockKey,
        pid: i32,
        holder: &str,
        operation: &str,
    ) -> Result<Registration, RegistryError> {
        let who = self.registrant(key, pid, holder, operation)?;
        self.backend().register(
            self,
            Registering {
                key,
                who,
                holder,
                operation,
            },
        )
    }

    /// [`Registry::register`] for the service: on a shared (PostgreSQL) registry it waits
    /// up to `wait`, as a future, while another host holds the lock, and is refused (busy)
    /// after that; the process must then let its flock go. `wait` means nothing with
    /// SQLite, where the registrant's own flock is the grant.
    pub async fn register_async(
        &self,
        key: &LockKey,
        pid: i32,
        holder: &str,
        operation: &str,
        wait: std::time::Duration,
    ) -> Result<Registration, RegistryError> {
        let deadline = tokio::time::Instant::now() + wait;
        let (me, k, h, o) = (
            self.clone(),
            key.clone(),
            holder.to_string(),
            operation.to_string(),
        );
        // /proc/locks is read off the async thread.
        let who = tokio::task::spawn_blocking(move || me.registrant(&k, pid, &h, &o))
            .await
            .map_err(|_| RegistryError::Store(StoreError::JobPanicked))??;
        let r = Registering {
            key,
            who,
            holder,
            operation,
        };
        self.backend().register_async(self, r, deadline).await
    }

    /// Checks that process `pid` holds `key`'s lock file now (`/proc/locks`, the very
    /// file at the lock path) and names its registration.
    fn registrant(
        &self,
        key: &LockKey,
        pid: i32,
        holder: &str,
        operation: &str,
    ) -> Result<Registrant, RegistryError> {
        check_label("holder", holder)?;
        check_label("operation", operation)?;
        let start = (pid > 0)
            .then(|| process::start_ticks(pid))
            .flatten()
            .ok_or_else(|| {
                RegistryError::BadRequest(format!(
                    "pid {pid} is not a running process on this host"
                ))
            })?;
        let file = self.file_of(key)?;
        let path = self.path_of_file(&file);
        let not_holding = |reason: String| RegistryError::NotHolding {
            lock: key.to_string(),
            pid,
            reason,
        };
        let id = flock::file_id(&path)?.ok_or_else(|| {
            not_holding(format!(
                "it does not hold the lock: its lock file {file} does not exist; take the lock first, then register"
            ))
        })?;
        // The kernel prints /proc/locks a page per read, and entries added or removed
        // between reads (other processes' locks churning) can shift this one out of view:
        // a refusal is only made after a few fresh reads agree.
        let mut holders = Vec::new();
        for _ in 0..4 {
            holders = Snapshot::read()
                .map_err(|e| StoreError::Io(std::io::Error::other(format!("/proc/locks: {e}"))))?
                .holders(id);
            if holders.contains(&pid) {
                break;
            }
        }
        if !holders.contains(&pid) {
            let held_by = match holders.as_slice() {
                [] => "nobody holds it".to_string(),
                pids => format!(
                    "it is held by pid {}",
                    pids.iter()
                        .map(i32::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            return Err(not_holding(format!(
                "/proc/locks does not show it holding {file} ({held_by}); take the lock first, then register"
            )));
        }
        let registration_id = crate::random::hex(16)
            .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))?;
        Ok(Registrant {
            pid,
            start,
            file,
            file_id: id,
            registration_id,
        })
    }

    /// Records a checked registrant's grant on SQLite (its flock is the grant).
    pub(super) fn sqlite_register(
        &self,
        key: &LockKey,
        checked: Registrant,
        holder: &str,
        operation: &str,
    ) -> Result<Registration, RegistryError> {
        let Registrant {
            pid,
            start,
            file,
            file_id: id,
            registration_id,
        } = checked;
        let spec = GrantSpec {
            kind: HolderKind::Library,
            holder: holder.to_string(),
            operation: operation.to_string(),
            pid: Some(pid),
            pid_start: Some(start),
            host: process::hostname().to_string(),
            thread: None,
            lease: None,
            locker: None,
            registration_id: None,
        };
        let (k, f) = (key.clone(), file.clone());
        let spec = GrantSpec {
            locker: Some(Locker { pid, start }),
            registration_id: Some(registration_id.clone()),
            ..spec
        };
        // A refusal (a live holder's lock file was replaced) commits its `file_replaced`
        // event; the error is made after the commit.
        let granted = self
            .write(move |reg, conn| reg.record_grant(conn, &k, &f, spec, id, None))?
            .ok_or_else(|| RegistryError::Busy {
                message: format!(
                    "lock {key} is recorded as held by another live holder whose lock file was \
                     replaced; pid {pid} holds the new file: two processes believe they hold it"
                ),
                holder: None,
            })?;
        Ok(Registration {
            registration_id,
            token: granted.token,
            owner: key.owner().to_string(),
            field: key.field().to_string(),
            file,
        })
    }

    /// Ends a registration: the process let go of its flock (or is about to).
    pub fn unregister(&self, registration_id: &str) -> Result<Option<i64>, RegistryError> {
        self.backend().unregister(self, registration_id)
    }

    /// [`Registry::unregister`] on SQLite.
    pub(super) fn sqlite_unregister(
        &self,
        registration_id: &str,
    ) -> Result<Option<i64>, RegistryError> {
        let id = registration_id.to_string();
        self.write(move |reg, conn| {
            let Some(row) = records::find_by_lease_id(conn, &id)? else {
                return Err(RegistryError::LeaseGone {
                    lease_id: id,
                    why: "it was already unregistered, reconciled or cleared".into(),
                });
            };
            let token = row.holder.as_ref().map(|h| h.token).unwrap_or_default();
            let held = close_record(
                conn,
                LockRef::row(&row),
                token,
                EventKind::Released,
                reg.now_ms(),
                None,
                None,
            )?;
            Ok(held)
        })
    }
}

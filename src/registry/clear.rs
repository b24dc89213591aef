//! Safe and forced clearing of one owner's locks.
//!
//! Invariants: every clear re-checks each lock inside one IMMEDIATE transaction, does the
//! filesystem step (closing a lease's handle) there, writes the events, and commits; what
//! may be cleared is decided by `policy::stale::plan`, never here. Nothing here deletes a
//! lock file.

use super::observe::Observed;
use super::words::{skip_reason, unsafe_file_words, without_paths};
use super::{close_record, LockRef, Registry, RegistryError, MAX_LABEL_LEN};
use crate::config::Namespace;
use crate::ids::{self, LockKey};
use crate::kernel::process;
use crate::kernel::view::KernelView;
use crate::policy::clear::{ForcePlan, Plan, Skip};
use crate::policy::stale::StaleReason;
use crate::store::history::{self, EventKind, NewEvent};
use crate::store::records;
use crate::store::records::HolderRow;
use rusqlite::Connection;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ClearedLock {
    pub field: String,
    pub file: String,
    pub reason: StaleReason,
    pub token: i64,
}

/// Why a safe clear left a lock alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SkipKind {
    /// A live holder within its limits.
    Live,
    /// A live holder silent for too long: only a force clear takes it.
    HeldTooLong,
    /// The token the caller was shown is not the holder's any more.
    Changed,
    /// Held by a process lockledger does not manage.
    External,
    /// A lease whose kernel lock another lockledger service holds.
    LeasedElsewhere,
    /// Something other than a regular file is at the lock path (a symlink, a FIFO, ...):
    /// it is never opened or followed, so it cannot be cleared; remove it.
    UnsafeLockFile,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct SkippedLock {
    pub field: String,
    pub file: String,
    pub outcome: SkipKind,
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

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ForceCleared {
    pub field: String,
    pub file: String,
    pub token: i64,
    pub new_token: i64,
    /// True when the holder was a live library (or registered) holder that was asked to
    /// let go: it still holds the kernel lock until it does.
    pub revocation_pending: bool,
    /// The process that still holds the kernel lock, when `revocation_pending`.
    pub still_held_by: Option<i32>,
    /// What happened, in words every surface shows as is.
    pub note: String,
}

impl Registry {
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
        self.backend().clear(self, &ns, owner, expected, actor)
    }

    /// [`Registry::clear`] on SQLite: every lock of the owner re-checked and cleared in
    /// one transaction.
    pub(super) fn sqlite_clear(
        &self,
        ns: &Namespace,
        owner: &str,
        expected: BTreeMap<String, i64>,
        actor: &str,
    ) -> Result<ClearOutcome, RegistryError> {
        let keys: Vec<LockKey> = ns
            .fields
            .iter()
            .map(|f| LockKey::new(ns, owner, f))
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

    /// Why a safe clear left `key` alone, in the words every surface shows; an external
    /// holder is named by its pid from `/proc/locks` when it can be.
    pub(super) fn skipped_lock(
        &self,
        key: &LockKey,
        file: &str,
        skip: Skip,
        seen: &Observed,
        holder: Option<&HolderRow>,
        view: &KernelView,
    ) -> SkippedLock {
        let reason = match (skip, seen.unsafe_file) {
            (Skip::UnsafeLockFile, Some(what)) => unsafe_file_words(file, what),
            _ => skip_reason(skip, holder),
        };
        let mut skipped = SkippedLock {
            field: key.field().to_string(),
            file: file.to_string(),
            outcome: match skip {
                Skip::Live => SkipKind::Live,
                Skip::HeldTooLong => SkipKind::HeldTooLong,
                Skip::External => SkipKind::External,
                Skip::LeasedElsewhere => SkipKind::LeasedElsewhere,
                Skip::UnsafeLockFile => SkipKind::UnsafeLockFile,
            },
            reason,
            holder: holder.map(|h| h.holder.clone()),
            pid: holder.and_then(|h| h.pid),
            operation: holder.map(|h| h.operation.clone()),
        };
        if skip == Skip::External && holder.is_none() {
            let pid = seen
                .path_file
                .and_then(|id| self.flock_holder_pid(view, id));
            skipped.pid = pid;
            if let Some(pid) = pid {
                let cmd = process::cmdline(pid)
                    .map(|c| without_paths(&c))
                    .unwrap_or_default();
                skipped.reason = format!("held by pid {pid} ({cmd}), a process lockledger does not manage; it cannot be cleared here — stop that process");
            }
        }
        skipped
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
                    outcome: SkipKind::Changed,
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
        let view = KernelView::take();
        let seen = self.observe(row.as_ref(), file, now, &view)?;
        match seen.plan() {
            Plan::Nothing => {}
            Plan::Skip(skip) => {
                let skipped = self.skipped_lock(key, file, skip, &seen, holder, &view);
                if skip == Skip::External && holder.is_none() {
                    let pid = skipped.pid;
                    let lock_id = records::ensure_lock(conn, key, file, now)?;
                    history::insert_event(
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
                release_handle,
            } => {
                let row = row.as_ref().ok_or_else(|| RegistryError::NotHeld {
                    lock: key.to_string(),
                })?;
                let token = row.holder.as_ref().map(|h| h.token).unwrap_or(0);
                if release_handle {
                    self.release_handle(key, token);
                }
                crate::fault::point("clear_after_fs_step");
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
            return Err(RegistryError::BadRequest(format!(
                "lock {key}: a force clear needs a reason"
            )));
        }
        if reason.len() > MAX_LABEL_LEN || reason.chars().any(char::is_control) {
            return Err(RegistryError::BadRequest(format!(
                "lock {key}: a force-clear reason must be at most {MAX_LABEL_LEN} bytes of printable \
                 text (UTF-8; this one is {} bytes)",
                reason.len()
            )));
        }
        self.backend().force_clear(self, key, token, reason, actor)
    }

    /// [`Registry::force_clear`] on SQLite: one transaction.
    pub(super) fn sqlite_force_clear(
        &self,
        key: &LockKey,
        token: i64,
        reason: &str,
        actor: &str,
    ) -> Result<ForceCleared, RegistryError> {
        let file = self.file_of(key)?;
        let (key, reason, actor) = (key.clone(), reason.to_string(), actor.to_string());
        self.write(move |reg, conn| {
            let now = reg.now_ms();
            let row = records::find_lock(conn, &key)?;
            let seen = reg.observe(row.as_ref(), &file, now, &KernelView::take())?;
            let verdict = seen.verdict;
            let Some((row, h)) = row.as_ref().and_then(|r| r.holder.as_ref().map(|h| (r, h))) else {
                return Err(match seen.force_plan() {
                    ForcePlan::NotHeld { external: true } => RegistryError::NotClearable {
                        lock: key.to_string(),
                        reason: "it is held by a process lockledger does not manage (external); stop that process".into(),
                    },
                    _ => RegistryError::NotHeld { lock: key.to_string() },
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
            let plan = seen.force_plan();
            let mut event = NewEvent::about(row, EventKind::ForceCleared, now);
            event.actor = Some(&actor);
            event.reason = Some(&why);
            let revocation_pending = match plan {
                ForcePlan::Clear { release_handle } => {
                    if release_handle {
                        reg.release_handle(&key, token);
                    }
                    crate::fault::point("clear_after_fs_step");
                    records::delete_holder(conn, row.lock_id, token)?;
                    false
                }
                ForcePlan::Revoke => {
                    // A live library holder keeps the flock until it lets go; the mark
                    // makes its guard fail on its next renewal.
                    records::mark_revoked(conn, row.lock_id, token, now, &actor)?;
                    true
                }
                ForcePlan::Refuse(skip) => {
                    return Err(RegistryError::NotClearable {
                        lock: key.to_string(),
                        reason: skip_reason(skip, Some(h)),
                    })
                }
                ForcePlan::NotHeld { .. } => return Err(RegistryError::NotHeld { lock: key.to_string() }),
            };
            history::insert_event(conn, &event)?;
            let new_token = records::next_token(conn, row.lock_id)?;
            let still_held_by = revocation_pending.then_some(h.locker_pid);
            let lock = format!("lock {key}");
            let note = match still_held_by {
                Some(pid) => format!(
                    "{lock} was revoked (token {token} -> {new_token}), but process {pid} still holds the file lock; \
                     its writes are now refused (fenced); the lock frees when that process lets go or ends"
                ),
                None => format!("{lock} was force-cleared (token {token} -> {new_token}); it is free now"),
            };
            Ok(ForceCleared {
                field: key.field().to_string(),
                file: row.file.clone(),
                token,
                new_token,
                revocation_pending,
                still_held_by,
                note,
            })
        })
    }
}

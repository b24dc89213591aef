//! Safe and force clears on a shared (PostgreSQL) registry.
//!
//! Invariants:
//! - What may be cleared is decided by the same pure policy as with SQLite
//!   (`policy::clear`, on what `observe` sees): a holder granted by another service is
//!   judged by its row and the database clock only, never by this host's kernel.
//! - The database decides last: `store::pg` clears a holder only if it still carries the
//!   token that was judged (otherwise the lock is skipped as `changed`), in one
//!   transaction with its event; a force clear there also raises the lock's token, so the
//!   revoked holder's writes are refused (fenced) from then on.
//! - This host's flock of a cleared lease of this service goes only after that commit.
//! - A live registered holder of this host keeps its own flock until it lets go: the
//!   clear says so (`revocation_pending`), as with SQLite.

use super::clear::{ClearOutcome, ClearedLock, ForceCleared, SkipKind, SkippedLock};
use super::dist::{pg_error, Dist};
use super::{Registry, RegistryError};
use crate::config::Namespace;
use crate::ids::LockKey;
use crate::kernel::view::KernelView;
use crate::policy::clear::{ForcePlan, Plan, Skip};
use crate::policy::stale::{HolderKind, Liveness};
use crate::store::history::{EventKind, NewEvent};
use crate::store::sink::EventSink;
use std::collections::BTreeMap;

impl Registry {
    /// A safe clear of one owner on the shared database.
    pub(super) fn dist_clear(
        &self,
        d: &Dist,
        ns: &Namespace,
        owner: &str,
        expected: &BTreeMap<String, i64>,
        actor: &str,
    ) -> Result<ClearOutcome, RegistryError> {
        let rows = self.dist_owner_rows(d, &ns.name, owner)?;
        let view = KernelView::take();
        let now = self.now_ms();
        let mut out = ClearOutcome::default();
        for field in &ns.fields {
            let key = LockKey::new(ns, owner, field)?;
            let file = self.file_of(&key)?;
            let row = rows.iter().find(|r| r.field == key.field());
            let holder = row.and_then(|r| r.holder.as_ref());
            let changed = |now_token: Option<i64>, expected: i64| SkippedLock {
                field: key.field().to_string(),
                file: file.clone(),
                outcome: SkipKind::Changed,
                reason: format!(
                    "changed since you looked: token {expected} is no longer the holder's (now {})",
                    now_token.map_or_else(|| "free".to_string(), |t| t.to_string())
                ),
                holder: holder.map(|h| h.holder.clone()),
                pid: holder.and_then(|h| h.pid),
                operation: holder.map(|h| h.operation.clone()),
            };
            if let Some(&want) = expected.get(key.field()) {
                if holder.map(|h| h.token) != Some(want) {
                    out.skipped.push(changed(holder.map(|h| h.token), want));
                    continue;
                }
            }
            let seen = self.observe(row, &file, now, &view)?;
            match seen.plan() {
                Plan::Nothing => {}
                Plan::Skip(skip) => {
                    let skipped = self.skipped_lock(&key, &file, skip, &seen, holder, &view);
                    if skip == Skip::External && holder.is_none() {
                        let event = NewEvent {
                            at: now,
                            namespace: key.namespace(),
                            owner: key.owner(),
                            field: key.field(),
                            event: Some(EventKind::ObservedExternal),
                            pid: skipped.pid,
                            host: Some(crate::kernel::process::hostname()),
                            actor: Some(actor),
                            reason: Some("a clear found it held without a record"),
                            ..NewEvent::default()
                        };
                        d.store.record(&key, &file, &event)?;
                    }
                    out.skipped.push(skipped);
                }
                Plan::Clear {
                    reason,
                    release_handle,
                } => {
                    let (Some(row), Some(h)) = (row, holder) else {
                        continue;
                    };
                    let done = d
                        .store
                        .clear(
                            row.lock_id,
                            h.token,
                            actor,
                            reason.as_str(),
                            EventKind::Cleared,
                        )
                        .map_err(pg_error)?;
                    if done.is_none() {
                        out.skipped.push(changed(None, h.token));
                        continue;
                    }
                    if release_handle {
                        self.release_handle(&key, h.token);
                    }
                    out.cleared.push(ClearedLock {
                        field: key.field().to_string(),
                        file: file.clone(),
                        reason,
                        token: h.token,
                    });
                }
            }
        }
        Ok(out)
    }

    /// A force clear on the shared database: the holder with `token` loses the lock, and
    /// the lock's token is raised.
    pub(super) fn dist_force_clear(
        &self,
        d: &Dist,
        key: &LockKey,
        token: i64,
        reason: &str,
        actor: &str,
    ) -> Result<ForceCleared, RegistryError> {
        let rows = self.dist_owner_rows(d, key.namespace(), key.owner())?;
        let Some(row) = rows
            .iter()
            .find(|r| r.field == key.field() && r.holder.is_some())
        else {
            // No holder recorded anywhere: perhaps a process of this host that lockledger
            // does not manage.
            let file = self.file_of(key)?;
            let seen = self.observe(None, &file, self.now_ms(), &KernelView::take())?;
            return Err(match seen.force_plan() {
                ForcePlan::NotHeld { external: true } => RegistryError::NotClearable {
                    lock: key.to_string(),
                    reason: "it is held by a process lockledger does not manage (external); \
                             stop that process"
                        .into(),
                },
                _ => RegistryError::NotHeld {
                    lock: key.to_string(),
                },
            });
        };
        let Some(h) = &row.holder else {
            return Err(RegistryError::NotHeld {
                lock: key.to_string(),
            });
        };
        let mismatch = |current: i64| RegistryError::TokenMismatch {
            lock: key.to_string(),
            given: token,
            current,
        };
        if h.token != token {
            return Err(mismatch(h.token));
        }
        let why = format!("{reason} (force clear)");
        d.store
            .clear(row.lock_id, token, actor, &why, EventKind::ForceCleared)
            .map_err(pg_error)?
            .ok_or_else(|| mismatch(token))?;
        self.release_handle(key, token);
        let new_token = d
            .store
            .lock(row.lock_id)
            .map_err(pg_error)?
            .map_or(token, |r| r.last_token);
        // A registered process of this host still holds its own flock until it lets go.
        let local = h.host == crate::kernel::process::hostname();
        let still_held_by = (h.kind == HolderKind::Library
            && local
            && self.liveness(h.locker_pid, h.locker_start) == Liveness::Alive)
            .then_some(h.locker_pid);
        let lock = format!("lock {key}");
        let note = match still_held_by {
            Some(pid) => format!(
                "{lock} was revoked (token {token} -> {new_token}), but process {pid} still holds \
                 the file lock; its writes are now refused (fenced); the lock frees when that \
                 process lets go or ends"
            ),
            None => {
                format!("{lock} was force-cleared (token {token} -> {new_token}); it is free now")
            }
        };
        Ok(ForceCleared {
            field: key.field().to_string(),
            file: row.file.clone(),
            token,
            new_token,
            revocation_pending: still_held_by.is_some(),
            still_held_by,
            note,
        })
    }
}

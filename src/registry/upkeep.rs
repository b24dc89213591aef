//! Upkeep: reconciliation of records whose holders are gone, and history retention.
//!
//! Invariant: both are idempotent and safe at any time; reconciliation writes one
//! `reconciled` event for every record it fixes.

use super::{close_record, LockRef, Registry, RegistryError};
use crate::ids::lock_name;
use crate::kernel::view::KernelView;
use crate::policy::clear::{self, Orphan};
use crate::store::history::{self, EventKind, NewEvent};
use crate::store::records;
use serde::Serialize;

#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ReconcileReport {
    pub checked: usize,
    pub reconciled: Vec<String>,
}

impl Registry {
    /// Removes every record whose holder is gone (dead process, or flock no longer
    /// taken), with one `reconciled` event each. Idempotent; safe at any time.
    pub fn reconcile(&self, actor: &str) -> Result<ReconcileReport, RegistryError> {
        self.backend().reconcile(self, actor)
    }

    /// [`Registry::reconcile`] on SQLite: every holder row is judged against the kernel,
    /// in one transaction.
    pub(super) fn sqlite_reconcile(&self, actor: &str) -> Result<ReconcileReport, RegistryError> {
        let actor = actor.to_string();
        self.write(move |reg, conn| {
            let now = reg.now_ms();
            let rows = records::all_held(conn)?;
            let view = KernelView::take();
            let mut report = ReconcileReport {
                checked: rows.len(),
                reconciled: Vec::new(),
            };
            for row in &rows {
                let Some(h) = row.holder.as_ref() else {
                    continue;
                };
                let seen = reg.observe(Some(row), &row.file, now, &view)?;
                let Some(facts) = seen.holder else {
                    continue;
                };
                if seen.file_replaced
                    && h.file_replaced_at.is_none()
                    && records::mark_file_replaced(conn, row.lock_id, h.token, now)?
                {
                    let mut event = NewEvent::about(row, EventKind::FileReplaced, now);
                    event.held_ms = None;
                    event.actor = Some(&actor);
                    event.reason = Some(
                        "its lock file was deleted or replaced at the lock path while it held \
                         it; the lock is not granted again until this holder ends",
                    );
                    history::insert_event(conn, &event)?;
                }
                if let Some(orphan) = clear::orphan(seen.flock_held, facts) {
                    let why = match orphan {
                        Orphan::LockerGone => format!("holder_dead: pid {} is gone", h.locker_pid),
                        Orphan::HandleLost => {
                            "holder_dead: this service no longer holds the lease's handle"
                                .to_string()
                        }
                        Orphan::LockFree => {
                            "holder_dead: the lock file is no longer locked".to_string()
                        }
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
                    report.reconciled.push(lock_name(&row.owner, &row.field));
                }
            }
            Ok(report)
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
            let n = self.backend().prune_events(self, cutoff, max, 5000)?;
            total += n;
            if n < 5000 {
                return Ok(total);
            }
        }
    }
}

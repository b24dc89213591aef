//! Status reports: one lock as every surface shows it (CLI `status --json`, the JSON
//! API, the UI), one owner's locks, the list of known locks, and the counts behind
//! `/metrics`.
//!
//! Invariant: nothing here writes. A status read creates no file and no row; the state
//! comes from `policy::stale::classify` (through `observe`), the words from `words`.

use super::backend::Page;
use super::observe::Observed;
use super::words::note_for;
use super::{Registry, RegistryError};
use crate::clock;
use crate::config::Namespace;
use crate::ids::{self, LockKey};
use crate::kernel::process;
use crate::kernel::view::KernelView;
use crate::policy::clear::Plan;
use crate::policy::stale::{HolderKind, LockState, StaleReason};
use crate::store::records::LockRow;
use serde::Serialize;

pub use super::words::{describe_holder, without_paths};

/// One lock as every surface shows it (CLI `status --json`, the JSON API, the UI).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
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
    /// The holder's lock file was deleted or replaced at the lock path while it held it;
    /// it is still the holder (nobody is granted the lock through lockledger until it
    /// ends).
    pub file_replaced: bool,
    /// A process holding the new file at the lock path while the recorded holder holds
    /// the old one: two processes believe they hold this lock.
    pub conflict: Option<ConflictingHolder>,
    /// Is `field` one of the namespace's configured keys? A lock file of the owner with a
    /// key that is not configured is reported too (`false`), so a status is never "all
    /// clear" while any lock file of the owner is held.
    pub configured: bool,
    /// What is at the lock path when it is not a regular file: "a symbolic link", "a
    /// FIFO (named pipe)", "a socket", "a character device", "a block device", "a
    /// directory". lockledger never opens or follows it; with no recorded holder the
    /// state is `unsafe`.
    pub unsafe_file: Option<String>,
    /// Would a safe clear from here clear it?
    pub clearable: bool,
    /// One line for humans: who holds it, or why it is stale.
    pub note: String,
}

/// A process that locks the file now at a lock path whose recorded holder holds another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ConflictingHolder {
    pub pid: Option<i32>,
    pub command: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct OwnerStatus {
    pub namespace: String,
    pub owner: String,
    pub locks: Vec<LockReport>,
}

/// Recorded holders by what they are now, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordedCounts {
    pub held: u64,
    pub stale: u64,
    /// Holders whose lock file was deleted or replaced at its path.
    pub file_replaced: u64,
    /// Locks where another process holds the new file at the path.
    pub conflicts: u64,
}

/// The command line of `pid`, without paths.
fn command_of(pid: Option<i32>) -> Option<String> {
    pid.and_then(process::cmdline).map(|c| without_paths(&c))
}

/// Which lock a report is about: its namespace, owner and field, and its row if any.
struct Subject<'a> {
    ns: &'a Namespace,
    owner: &'a str,
    field: &'a str,
    row: Option<&'a LockRow>,
}

impl Registry {
    fn report(
        &self,
        subject: Subject<'_>,
        seen: Observed,
        view: &KernelView,
        now: i64,
    ) -> LockReport {
        let Subject {
            ns,
            owner,
            field,
            row,
        } = subject;
        let verdict = seen.verdict;
        let file = row.map(|r| r.file.clone()).unwrap_or_else(|| {
            ns.pattern
                .replace("{owner}", owner)
                .replace("{field}", field)
        });
        let holder = row.and_then(|r| r.holder.as_ref());
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
            file_replaced: seen.file_replaced,
            conflict: None,
            configured: ns.fields.iter().any(|f| f == field),
            unsafe_file: seen.unsafe_file.map(str::to_string),
            clearable: matches!(seen.plan(), Plan::Clear { .. }),
            note: String::new(),
        };
        if let Some(id) = seen.path_file {
            if verdict.kind == Some(HolderKind::External) {
                let pid = self.flock_holder_pid(view, id);
                report.pid = pid;
                report.host = Some(process::hostname().to_string());
                report.command = command_of(pid);
            } else if seen.conflict {
                let pid = self.flock_holder_pid(view, id);
                report.conflict = Some(ConflictingHolder {
                    pid,
                    command: command_of(pid),
                });
            }
        }
        report.note = note_for(&report);
        report
    }

    /// Every configured lock of one owner, with its state, and every other lock file of
    /// the owner. Changes nothing. A symlink, FIFO or the like at one lock path is
    /// reported on that lock (state `unsafe`), never as an error of the whole status.
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
        let rows = self.backend().owner_rows(self, &ns_name, &owner_s)?;
        let view = KernelView::take();
        let mut locks = Vec::with_capacity(ns.fields.len());
        for field in &ns.fields {
            let mut row = rows.iter().find(|r| &r.field == field).cloned();
            let file = LockKey::new(&ns, owner, field)?.file_name(&ns);
            let mut seen = self.observe(row.as_ref(), &file, now, &view)?;
            let anomalous = row.as_ref().is_some_and(|r| r.holder.is_some()) != seen.flock_held;
            if anomalous {
                // A holder may have been between its flock and its commit while we
                // looked; one more read (and a fresh look) settles it.
                let key = LockKey::new(&ns, owner, field)?;
                row = self.backend().lock_row(self, &key)?;
                seen = self.observe(row.as_ref(), &file, now, &KernelView::take())?;
            }
            let subject = Subject {
                ns: &ns,
                owner,
                field,
                row: row.as_ref(),
            };
            locks.push(self.report(subject, seen, &view, now));
        }
        // Lock files of this owner whose keys are not configured: reported, never hidden.
        if let Some(prefix) = ids::owner_prefix(&ns, owner) {
            for file in self.inner.lock_dir.names_with_prefix(&prefix) {
                let Some(key) = ids::unconfigured_key(&ns, owner, &file) else {
                    continue;
                };
                let seen = self.observe(None, &file, now, &view)?;
                let subject = Subject {
                    ns: &ns,
                    owner,
                    field: &key,
                    row: None,
                };
                locks.push(self.report(subject, seen, &view, now));
            }
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
        let view = KernelView::take();
        let mut out = Vec::new();
        let mut after = cursor;
        loop {
            let page = self.backend().list_page(
                self,
                Page {
                    owner_prefix,
                    after,
                    only_recorded,
                    limit: 256,
                },
            )?;
            let exhausted = page.len() < 256;
            for row in &page {
                after = row.lock_id;
                let Some(ns) = self.inner.config.namespace(&row.namespace) else {
                    continue;
                };
                let seen = self.observe(Some(row), &row.file, now, &view)?;
                if state.is_none_or(|s| s == seen.verdict.state) {
                    let subject = Subject {
                        ns,
                        owner: &row.owner,
                        field: &row.field,
                        row: Some(row),
                    };
                    out.push(self.report(subject, seen, &view, now));
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

    /// The locks with a holder record, by what they are now.
    pub fn recorded_counts(&self) -> Result<RecordedCounts, RegistryError> {
        let now = self.now_ms();
        let rows = self.backend().held_rows(self)?;
        let view = KernelView::take();
        let mut counts = RecordedCounts::default();
        for row in &rows {
            let seen = self.observe(Some(row), &row.file, now, &view)?;
            match seen.verdict.state {
                LockState::Held => counts.held += 1,
                LockState::Stale => counts.stale += 1,
                LockState::Free | LockState::Unsafe => {}
            }
            counts.file_replaced += u64::from(seen.file_replaced);
            counts.conflicts += u64::from(seen.conflict);
        }
        Ok(counts)
    }
}

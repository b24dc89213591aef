//! Busy answers, aggregated: a client looping on `wait_ms: 0` against a held lock must not
//! write a history row per attempt (nor push acquisitions out of a count-capped history).
//!
//! Invariants: busy answers are counted in memory and written with the next write
//! transaction of the registry (so history keeps their order with what followed), or by
//! [`Registry::flush_busy`] (the service's upkeep, every reaper period): one
//! `wait_timeout` row per lock, holder, operation and minute, whose `count` says how many
//! answers it stands for and whose reason describes all of them (the row's total count,
//! the longest wait among them), however many flushes it grew over. A crash loses at
//! most the counts of that last moment.

use super::grant::GrantSpec;
use super::{Registry, RegistryError};
use crate::ids::LockKey;
use crate::kernel::process;
use crate::store::history::{EventKind, NewEvent};
use crate::store::sink::EventSink;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Who was told "busy", on which lock.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Asker {
    key: LockKey,
    holder: String,
    operation: String,
    pid: Option<i32>,
}

#[derive(Debug, Clone)]
struct Pending {
    count: i64,
    at: i64,
    longest_wait: Duration,
    gave_up: bool,
}

/// The row this process last wrote for an asker: more answers in the same minute add to
/// it. The longest wait and whether a waiter went away cover every answer in the row, so
/// its reason can describe all of them.
#[derive(Debug, Clone, Copy)]
pub(super) struct Written {
    event_id: i64,
    minute: i64,
    longest_wait: Duration,
    gave_up: bool,
}

/// The reason of a folded busy row standing for `count` answers: it describes them all.
fn busy_reason(count: i64, longest_wait: Duration, gave_up: bool) -> String {
    let waited = longest_wait.as_millis();
    let went = if gave_up { "; a waiter went away" } else { "" };
    if count == 1 {
        format!("waited {waited} ms{went}")
    } else {
        format!("waited up to {waited} ms, {count} busy answers{went}")
    }
}

#[derive(Debug, Default)]
pub(super) struct BusyLog {
    pending: Mutex<HashMap<Asker, Pending>>,
    written: Mutex<HashMap<Asker, Written>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Single inserts and removes only: a poisoned map is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl BusyLog {
    fn note(&self, asker: Asker, now_ms: i64, waited: Duration, gave_up: bool) {
        let mut pending = lock(&self.pending);
        let p = pending.entry(asker).or_insert(Pending {
            count: 0,
            at: now_ms,
            longest_wait: Duration::ZERO,
            gave_up: false,
        });
        p.count += 1;
        p.at = now_ms;
        p.longest_wait = p.longest_wait.max(waited);
        p.gave_up |= gave_up;
    }
}

impl Registry {
    /// Notes a busy answer to the grant `spec` asked for (written with the next write).
    pub(super) fn note_busy(
        &self,
        key: &LockKey,
        spec: &GrantSpec,
        waited: Duration,
        gave_up: bool,
    ) {
        let asker = Asker {
            key: key.clone(),
            holder: spec.holder.clone(),
            operation: spec.operation.clone(),
            pid: spec.pid,
        };
        self.inner.busy.note(asker, self.now_ms(), waited, gave_up);
    }

    /// Writes the busy answers counted since the last flush: one `wait_timeout` row per
    /// lock, holder, operation and minute. Returns how many answers were written. (Any
    /// other write of this registry writes them too, first: see [`Registry::write`].)
    pub fn flush_busy(&self) -> Result<i64, RegistryError> {
        let total = lock(&self.inner.busy.pending)
            .values()
            .map(|p| p.count)
            .sum();
        if total == 0 {
            return Ok(0);
        }
        self.backend().flush_busy(self)?;
        Ok(total)
    }

    /// Takes the busy answers not written yet (for the next write transaction).
    pub(super) fn take_busy(&self) -> Option<PendingBusy> {
        let mut pending = lock(&self.inner.busy.pending);
        if pending.is_empty() {
            return None;
        }
        Some(PendingBusy {
            answers: pending.drain().collect(),
            written: lock(&self.inner.busy.written).clone(),
        })
    }

    /// After the write that carried `busy` (taken by [`Registry::take_busy`]): its rows
    /// are remembered when it committed, the answers put back when it did not.
    pub(super) fn settle_busy<R>(
        &self,
        busy: Option<PendingBusy>,
        outcome: Result<(R, Option<BusyRows>), RegistryError>,
    ) -> Result<R, RegistryError> {
        match (outcome, busy) {
            (Ok((out, rows)), _) => {
                if let Some(rows) = rows {
                    self.busy_written(rows);
                }
                Ok(out)
            }
            (Err(e), Some(busy)) => {
                self.restore_busy(busy);
                Err(e)
            }
            (Err(e), None) => Err(e),
        }
    }

    /// Puts back busy answers whose transaction did not commit.
    pub(super) fn restore_busy(&self, busy: PendingBusy) {
        let mut pending = lock(&self.inner.busy.pending);
        for (asker, p) in busy.answers {
            let e = pending.entry(asker).or_insert(Pending {
                count: 0,
                at: p.at,
                longest_wait: Duration::ZERO,
                gave_up: false,
            });
            e.count += p.count;
            e.longest_wait = e.longest_wait.max(p.longest_wait);
            e.gave_up |= p.gave_up;
        }
    }

    /// Remembers the rows a committed transaction wrote, so more answers in the same
    /// minute add to them.
    pub(super) fn busy_written(&self, rows: BusyRows) {
        let mut written = lock(&self.inner.busy.written);
        // Rows of past minutes are of no use: keep the map small.
        if written.len() > 10_000 {
            written.clear();
        }
        written.extend(rows);
    }

    /// Writes `busy` in the open transaction; returns the rows it wrote.
    pub(super) fn write_busy(
        &self,
        sink: &dyn EventSink,
        busy: &PendingBusy,
    ) -> Result<BusyRows, RegistryError> {
        let mut now_written = Vec::new();
        for (asker, p) in &busy.answers {
            let minute = p.at / 60_000;
            if let Some(w) = busy.written.get(asker).filter(|w| w.minute == minute) {
                if let Some(before) = sink.folded_count(w.event_id)? {
                    let grown = Written {
                        longest_wait: w.longest_wait.max(p.longest_wait),
                        gave_up: w.gave_up || p.gave_up,
                        ..*w
                    };
                    let reason = busy_reason(before + p.count, grown.longest_wait, grown.gave_up);
                    if sink.add_to_count(w.event_id, p.count, p.at, &reason)? {
                        now_written.push((asker.clone(), grown));
                        continue;
                    }
                }
            }
            let reason = busy_reason(p.count, p.longest_wait, p.gave_up);
            let file = self.file_of(&asker.key)?;
            let event_id = sink.record(
                &asker.key,
                &file,
                &NewEvent {
                    at: p.at,
                    namespace: asker.key.namespace(),
                    owner: asker.key.owner(),
                    field: asker.key.field(),
                    event: Some(EventKind::WaitTimeout),
                    pid: asker.pid,
                    host: Some(process::hostname()),
                    holder: Some(&asker.holder),
                    operation: Some(&asker.operation),
                    reason: Some(&reason),
                    count: p.count,
                    ..NewEvent::default()
                },
            )?;
            now_written.push((
                asker.clone(),
                Written {
                    event_id,
                    minute,
                    longest_wait: p.longest_wait,
                    gave_up: p.gave_up,
                },
            ));
        }
        Ok(now_written)
    }
}

/// The busy rows a write transaction wrote, by asker.
pub(super) type BusyRows = Vec<(Asker, Written)>;

/// Busy answers taken for one transaction.
#[derive(Debug, Clone)]
pub(super) struct PendingBusy {
    answers: Vec<(Asker, Pending)>,
    written: HashMap<Asker, Written>,
}

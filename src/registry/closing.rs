//! Closing a grant's record on SQLite: the holder row goes and its one closing event is
//! written, in the caller's write transaction; and when a renewal writes its sampled
//! `renewed` event.
//!
//! Invariant: every `acquired` event is closed by exactly one closing event; a grant a
//! force clear already closed loses only its row here.

use super::RegistryError;
use crate::ids::LockKey;
use crate::store::history::{self, EventKind, NewEvent};
use crate::store::records::{self, LockRow};
use rusqlite::Connection;

/// Which lock an event is about.
#[derive(Debug, Clone, Copy)]
pub(super) struct LockRef<'a> {
    lock_id: i64,
    namespace: &'a str,
    owner: &'a str,
    field: &'a str,
}

impl<'a> LockRef<'a> {
    pub(super) fn of(key: &'a LockKey, lock_id: i64) -> LockRef<'a> {
        LockRef {
            lock_id,
            namespace: key.namespace(),
            owner: key.owner(),
            field: key.field(),
        }
    }
    pub(super) fn row(row: &'a LockRow) -> LockRef<'a> {
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
pub(super) fn close_record(
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
        history::insert_event(
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
                count: 1,
            },
        )?;
    }
    Ok(Some(held_ms))
}

/// One `renewed` event per holder per minute keeps history readable.
pub(super) fn renewal_is_sampled(row: &LockRow, now: i64) -> bool {
    row.holder
        .as_ref()
        .is_some_and(|h| h.renewed_at / 60_000 != now / 60_000)
}

//! Waiting for a lock across services: [`PgStore::acquire_waiting`] and its rows in
//! `lock_waiters` (migration 0002), which give waiters of different services one arrival
//! order.
//!
//! Invariants:
//! - a caller that has to wait queues one row (`seq` is its place) and keeps it alive
//!   with a heartbeat (database clock) every [`HEARTBEAT_EVERY`]; the row lapses
//!   [`WAITER_TTL_MS`] after the last heartbeat, so a service that dies while waiting
//!   blocks that lock's line for at most that long;
//! - the row is deleted in the grant's own transaction, or when the caller gives up
//!   (then the lock is notified, so the next in line looks at once). On every return,
//!   error paths included, the caller's row is gone or lapsing;
//! - a caller whose row lapsed (it was paused past the ttl) queues again at the back;
//! - each try is one grant attempt (`leases`: a read-only look, then a grant transaction
//!   only when it may be the caller's turn), so waiting never holds a database lock or a
//!   transaction open; between tries the caller sleeps until a notification
//!   names it first in line (or names nobody) or a backoff tick (1 ms doubling to
//!   [`MAX_BACKOFF`]) passes: the tick is the polling backstop for lost notifications,
//!   for expiries nobody announced and for a line whose head lapsed.

use super::ends::free_payload;
use super::error::{Busy, PgError};
use super::line::FirstTry;
use super::listen::FreeListener;
use super::listen::CHANNEL;
use super::request::{GrantRequest, Granted};
use super::store::{PgStore, NOW_MS};
use postgres::types::Type;
use std::time::{Duration, Instant};

/// A waiter row lapses this long after its last heartbeat (database clock).
pub const WAITER_TTL_MS: i64 = 3_000;
/// How often a waiting caller renews its row.
pub const HEARTBEAT_EVERY: Duration = Duration::from_millis(750);
/// The longest sleep between two tries when no notification comes.
pub const MAX_BACKOFF: Duration = Duration::from_millis(50);
/// The first sleep between two tries.
pub const MIN_BACKOFF: Duration = Duration::from_millis(1);

/// What woke the try that was granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The first try, before any wait.
    First,
    /// A notification for the lock.
    Notified,
    /// The backoff tick ran out (polling backstop) or a heartbeat was due.
    Tick,
}

/// A grant after waiting, with how the wait went.
#[derive(Debug, Clone)]
pub struct Waited {
    pub granted: Granted,
    /// Tries (1: granted at once).
    pub attempts: u32,
    /// Wake-ups by a notification for this lock.
    pub notified: u32,
    /// Wake-ups by the backoff tick.
    pub ticks: u32,
    /// What woke the try that was granted.
    pub woken_by: Wake,
    /// Times the caller queued again because its row had lapsed.
    pub requeued: u32,
    pub waited: Duration,
}

/// The caller's row in `lock_waiters`.
pub(super) struct Place {
    pub(super) lock_id: i64,
    pub(super) seq: i64,
    pub(super) next_heartbeat: Instant,
}

impl PgStore {
    /// Tries to grant `req`; while the lock is held (or promised to earlier waiters of
    /// any service), waits in line until granted or `wait` has passed
    /// ([`PgError::WaitTimeout`] with the last refusal). `listener` wakes the wait when
    /// the lock is freed; without notifications the wait still ends by polling.
    pub fn acquire_waiting(
        &self,
        req: &GrantRequest,
        wait: Duration,
        listener: &FreeListener,
    ) -> Result<Waited, PgError> {
        let start = Instant::now();
        let deadline = start + wait;
        // The same steps as an async waiter (`line`), with the sleeping done here.
        let mut line = match self.first_try(req, false)? {
            FirstTry::Granted(granted) => {
                return Ok(Waited {
                    granted,
                    attempts: 1,
                    notified: 0,
                    ticks: 0,
                    woken_by: Wake::First,
                    requeued: 0,
                    waited: start.elapsed(),
                })
            }
            FirstTry::Refused(line) => line,
        };
        if Instant::now() >= deadline {
            return Err(line.give_up());
        }
        // Watch before queueing (the next try queues): a free after this point wakes the
        // next wait.
        let mut watch = listener.watch(line.lock_id());
        let mut stats = Waited {
            granted: Granted::default(),
            attempts: 1,
            notified: 0,
            ticks: 0,
            woken_by: Wake::First,
            requeued: 0,
            waited: Duration::ZERO,
        };
        let mut backoff = MIN_BACKOFF;
        let result = loop {
            let mark = watch.mark();
            let before = line.seq();
            stats.attempts += 1;
            match self.try_in_line(&mut line) {
                Ok(Some(granted)) => {
                    stats.granted = granted;
                    stats.waited = start.elapsed();
                    return Ok(stats);
                }
                Ok(None) => {}
                Err(e) => break Err(e),
            }
            if let Some(seq) = line.seq().filter(|&s| Some(s) != before) {
                // Queued, or queued again at the back because the row had lapsed.
                watch.queued(seq);
                stats.requeued += u32::from(before.is_some());
            }
            let now = Instant::now();
            if now >= deadline {
                break Err(line.give_up());
            }
            let until = deadline
                .min(now + backoff)
                .min(line.next_heartbeat().unwrap_or(deadline));
            if watch.wait(mark, until) {
                stats.notified += 1;
                stats.woken_by = Wake::Notified;
                backoff = MIN_BACKOFF;
            } else {
                stats.ticks += 1;
                stats.woken_by = Wake::Tick;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        };
        if let Err(e) = self.leave_line(&mut line) {
            log::warn!("could not leave the line of lock {}: {e}", line.lock_id());
        }
        result
    }

    /// Queues a waiter row for `lock_id` at the back of the line.
    pub(super) fn enqueue(&self, lock_id: i64, req: &GrantRequest) -> Result<Place, PgError> {
        let row = self.conn()?.cached().query_typed_one(
            &format!(
                "INSERT INTO lock_waiters (lock_id, service, host, pid, holder, operation,
                                           enqueued_at, expires_at)
                 SELECT $1, $2, $3, $4, $5, $6, n.now_ms, n.now_ms + $7
                 FROM (SELECT {NOW_MS} AS now_ms) n
                 RETURNING seq"
            ),
            &[
                (&lock_id, Type::INT8),
                (&self.service(), Type::TEXT),
                (&req.host, Type::TEXT),
                (&i64::from(req.locker_pid), Type::INT8),
                (&req.holder, Type::TEXT),
                (&req.operation, Type::TEXT),
                (&WAITER_TTL_MS, Type::INT8),
            ],
        )?;
        Ok(Place {
            lock_id,
            seq: row.try_get(0)?,
            next_heartbeat: Instant::now() + HEARTBEAT_EVERY,
        })
    }

    /// Moves the row's lapse time forward; false if it has lapsed already (it is never
    /// revived: others may have been granted past it).
    pub(super) fn heartbeat(&self, seq: i64) -> Result<bool, PgError> {
        let n = self.conn()?.cached().execute_typed(
            &format!(
                "UPDATE lock_waiters SET expires_at = {NOW_MS} + $2
                 WHERE seq = $1 AND expires_at > {NOW_MS}"
            ),
            &[(&seq, Type::INT8), (&WAITER_TTL_MS, Type::INT8)],
        )?;
        Ok(n == 1)
    }

    /// Leaves the line and notifies the lock, so the next waiter looks at once.
    pub(super) fn leave(&self, lock_id: i64, seq: i64) -> Result<(), PgError> {
        self.conn()?.cached().query_typed(
            &format!(
                "WITH n AS MATERIALIZED (SELECT {NOW_MS} AS now_ms),
                 d AS (DELETE FROM lock_waiters WHERE seq = $1)
                 SELECT pg_notify('{CHANNEL}', {}) FROM n",
                free_payload("$2::bigint", "$1::bigint")
            ),
            &[(&seq, Type::INT8), (&lock_id, Type::INT8)],
        )?;
        Ok(())
    }
}

pub(super) fn timeout(busy: Busy, start: Instant) -> PgError {
    PgError::WaitTimeout {
        busy: Box::new(busy),
        waited_ms: start.elapsed().as_millis() as u64,
    }
}

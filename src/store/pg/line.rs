//! Waiting in a lock's line one step at a time: the one implementation of the
//! `lock_waiters` rules. Callers that wait without holding a thread (the service's async
//! lease acquire) sleep between the steps as futures; [`PgStore::acquire_waiting`] is the
//! blocking loop over the same steps.
//!
//! Invariants:
//! - a refused first try queues the caller at once (its arrival is its place), unless it
//!   will not wait at all;
//! - every try keeps the row alive (heartbeat when due) and queues again at the back when
//!   the row lapsed (the caller was paused past the waiter ttl);
//! - a grant deletes the row in its own transaction; a caller that gives up calls
//!   [`PgStore::leave_line`] (the next in line is notified). A `Line` dropped without
//!   either lapses within the waiter ttl, as a dead service's does.

use super::error::{Busy, PgError};
use super::leases::Attempt;
use super::request::{GrantRequest, Granted};
use super::store::PgStore;
use super::waiters::{timeout, Place, HEARTBEAT_EVERY};
use std::time::Instant;

/// A caller waiting for one lock.
pub struct Line {
    req: GrantRequest,
    place: Option<Place>,
    /// The latest refusal, for the busy answer when the caller gives up.
    last: Busy,
    start: Instant,
}

/// The outcome of a first try.
pub enum FirstTry {
    Granted(Granted),
    /// Refused; queued when the caller waits.
    Refused(Line),
}

impl Line {
    /// The lock waited for.
    pub fn lock_id(&self) -> i64 {
        self.last.lock_id
    }

    /// The caller's place in line (`lock_waiters.seq`), once queued.
    pub fn seq(&self) -> Option<i64> {
        self.place.as_ref().map(|p| p.seq)
    }

    /// When the caller's row needs its next heartbeat, once queued.
    pub fn next_heartbeat(&self) -> Option<Instant> {
        self.place.as_ref().map(|p| p.next_heartbeat)
    }

    /// The refusal to answer with when the caller gives up now.
    pub fn give_up(&self) -> PgError {
        timeout(self.last.clone(), self.start)
    }
}

impl PgStore {
    /// Tries `req` once; when refused, queues it if `queue` (the caller will wait).
    pub fn first_try(&self, req: &GrantRequest, queue: bool) -> Result<FirstTry, PgError> {
        let start = Instant::now();
        // Checked once: a lease keeps one id over all tries.
        let req = req.checked()?;
        let busy = match self.attempt(&req, None)? {
            Attempt::Granted(g) => return Ok(FirstTry::Granted(g)),
            Attempt::Refused(busy) => busy,
            Attempt::LostPlace => return Err(PgError::Postgres("a plain try lost a place".into())),
        };
        let place = if queue {
            Some(self.enqueue(busy.lock_id, &req)?)
        } else {
            None
        };
        Ok(FirstTry::Refused(Line {
            req,
            place,
            last: busy,
            start,
        }))
    }

    /// One more try for a caller in line: `Some` when granted (its row is gone then).
    pub fn try_in_line(&self, line: &mut Line) -> Result<Option<Granted>, PgError> {
        let lock_id = line.last.lock_id;
        let place = match &mut line.place {
            Some(p) => p,
            None => line.place.insert(self.enqueue(lock_id, &line.req)?),
        };
        let now = Instant::now();
        if now >= place.next_heartbeat && self.heartbeat(place.seq)? {
            place.next_heartbeat = now + HEARTBEAT_EVERY;
        }
        match self.attempt(&line.req, Some(place.seq)) {
            Ok(Attempt::Granted(g)) => {
                line.place = None;
                Ok(Some(g))
            }
            Ok(Attempt::Refused(busy)) => {
                line.last = busy;
                Ok(None)
            }
            Ok(Attempt::LostPlace) => {
                line.place = Some(self.enqueue(lock_id, &line.req)?);
                Ok(None)
            }
            // A lock row held past lock_timeout is another tick of waiting.
            Err(PgError::LockTimeout(why)) => {
                log::warn!("waiting for a lock: {why}");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Leaves the line (the next in line is notified); nothing when not in it.
    pub fn leave_line(&self, line: &mut Line) -> Result<(), PgError> {
        match line.place.take() {
            Some(p) => self.leave(p.lock_id, p.seq),
            None => Ok(()),
        }
    }
}

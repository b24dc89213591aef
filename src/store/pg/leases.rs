//! Grants in the PostgreSQL store: the grant is the row (DESIGN §9, issue #13).
//!
//! Invariants:
//! - a grant is one transaction: lock the lock's `locks` row (`FOR NO KEY UPDATE`, which
//!   leaves the foreign-key checks of concurrent event and waiter inserts unblocked), read
//!   its holder and waiters in a later statement (so the snapshot is taken after the row
//!   lock: a holder committed meanwhile is seen), end an expired holder (`expired` event),
//!   bump `last_token`, write the holder row and its `acquired` event, commit. No advisory
//!   lock is held per lease: a lease outlives any connection;
//! - before that transaction, one read-only statement (no row lock) looks at the lock: a
//!   live holder or a live waiter ahead refuses at once, so refused callers (a crowd of
//!   waiters woken by one release) never queue on the lock's row in front of the one
//!   whose turn it is. Only the locked read decides a grant;
//! - every change of a lock's holder row or token happens with the lock's row locked or
//!   by a statement that locks the holder row itself (release, renew, expiry): row locks
//!   are taken locks-row first, then holder row, never the other way, so no deadlock;
//! - fencing tokens strictly increase per lock across all services: only a transaction
//!   holding the lock's row raises `last_token`, to `max(last_token, token_floor) + 1`;
//! - time is the database's clock ([`NOW_MS`]), read after the row lock is taken: a lease
//!   is expired when `expires_at <= now`, whoever asks;
//! - a lock goes to a caller only when no live waiter is ahead of it (`lock_waiters`,
//!   see `waiters`): a plain try defers to every live waiter;
//! - a refusal writes nothing, unless it ended an expired holder first (then that end is
//!   committed and notified, so whoever is next looks at once).

use super::ends::{ended_row, ending_sql, Ended};
use super::error::{Busy, BusyHolder, PgError};
use super::request::{pid32, pid64, GrantRequest, Granted, Param};
use super::store::{Cached, PgStore, NOW_MS};
use crate::ids::lock_name;
use crate::policy::stale::HolderKind;
use postgres::types::Type;
use postgres::{GenericClient, Row, Transaction};

/// One try at a grant, as `acquire_waiting` sees it.
pub(super) enum Attempt {
    Granted(Granted),
    Refused(Busy),
    /// The caller's waiter row lapsed (or was never there): it must queue again.
    LostPlace,
}

/// A lock's state at one instant of the database clock.
struct LockState {
    now: i64,
    /// Live waiters ahead of the caller.
    ahead: i64,
    /// The caller's waiter row is live (always true for a plain try).
    in_line: bool,
    holder: Option<BusyHolder>,
}

impl LockState {
    fn holder_expired(&self) -> bool {
        self.holder
            .as_ref()
            .and_then(|h| h.expires_at)
            .is_some_and(|end| end <= self.now)
    }

    fn refusal(self, lock_id: i64, req: &GrantRequest) -> Busy {
        Busy {
            lock_id,
            lock: lock_name(&req.owner, &req.field),
            holder: self.holder,
            waiters_ahead: self.ahead,
        }
    }
}

/// The columns [`lock_state`] reads, for lock `{lock}` and waiter seq `$seq` (NULL for a
/// plain try), at `n.now_ms`, with the holder joined as `h`.
fn state_columns(lock: &str, seq: &str) -> String {
    format!(
        "n.now_ms,
         (SELECT count(*) FROM lock_waiters w
          WHERE w.lock_id = {lock} AND w.expires_at > n.now_ms
            AND ({seq}::bigint IS NULL OR w.seq < {seq})),
         ({seq}::bigint IS NULL OR EXISTS (SELECT 1 FROM lock_waiters w
            WHERE w.seq = {seq} AND w.lock_id = {lock} AND w.expires_at > n.now_ms)),
         h.token, h.kind, h.holder, h.operation, h.pid, h.host, h.acquired_at, h.expires_at"
    )
}

/// A [`LockState`] from the [`state_columns`] starting at column `at`.
fn lock_state(row: &Row, at: usize) -> Result<LockState, PgError> {
    let holder = match row.try_get::<_, Option<i64>>(at + 3)? {
        None => None,
        Some(token) => Some(BusyHolder {
            token,
            kind: HolderKind::parse(row.try_get(at + 4)?).unwrap_or(HolderKind::Library),
            holder: row.try_get(at + 5)?,
            operation: row.try_get(at + 6)?,
            pid: pid32(row.try_get(at + 7)?),
            host: row.try_get(at + 8)?,
            acquired_at: row.try_get(at + 9)?,
            expires_at: row.try_get(at + 10)?,
        }),
    };
    Ok(LockState {
        now: row.try_get(at)?,
        ahead: row.try_get(at + 1)?,
        in_line: row.try_get(at + 2)?,
        holder,
    })
}

impl PgStore {
    /// One try at a grant: granted, or [`PgError::Busy`] (nothing written) when the lock
    /// has a live holder or live waiters are queued for it (they go first).
    pub fn try_grant(&self, req: &GrantRequest) -> Result<Granted, PgError> {
        match self.attempt(&req.checked()?, None)? {
            Attempt::Granted(g) => Ok(g),
            Attempt::Refused(busy) => Err(PgError::Busy(Box::new(busy))),
            Attempt::LostPlace => Err(PgError::Postgres(
                "a plain try lost a place in line it never had".into(),
            )),
        }
    }

    /// One try (see the module's invariants); `seq` is the caller's waiter row, None for
    /// a plain try. `req` is checked and has its lease id.
    pub(super) fn attempt(&self, req: &GrantRequest, seq: Option<i64>) -> Result<Attempt, PgError> {
        let mut conn = self.conn()?;
        if let Some((lock_id, state)) = peek(&mut conn.cached(), req, seq)? {
            if !state.in_line {
                return Ok(Attempt::LostPlace);
            }
            if state.ahead > 0 || (state.holder.is_some() && !state.holder_expired()) {
                return Ok(Attempt::Refused(state.refusal(lock_id, req)));
            }
        }
        let (mut tx, cache) = conn.cached_transaction()?;
        let lock_id = lock_row(&mut Cached { c: &mut tx, cache }, req)?;
        let mut state = read_state(&mut Cached { c: &mut tx, cache }, lock_id, seq)?;
        if !state.in_line {
            tx.rollback()?;
            return Ok(Attempt::LostPlace);
        }
        let mut took_over = None;
        // An expired holder is ended here; if its row changed meanwhile (renewed, or ended
        // by another service), the state is read again: a few times at most.
        for _ in 0..3 {
            if !state.holder_expired() {
                break;
            }
            match self.end_expired(&mut Cached { c: &mut tx, cache }, lock_id, &state)? {
                Some(ended) => {
                    took_over = Some(ended);
                    state.holder = None;
                }
                None => state = read_state(&mut Cached { c: &mut tx, cache }, lock_id, seq)?,
            }
        }
        if state.holder.is_some() || state.ahead > 0 {
            // Ending an expired holder is kept even when refusing (its NOTIFY wakes
            // whoever is next); otherwise nothing is written.
            if took_over.is_some() {
                tx.commit()?;
            } else {
                tx.rollback()?;
            }
            return Ok(Attempt::Refused(state.refusal(lock_id, req)));
        }
        let granted = grant(
            &mut Cached { c: &mut tx, cache },
            lock_id,
            req,
            seq,
            state.now,
            took_over,
        )?;
        tx.commit()?;
        Ok(Attempt::Granted(granted))
    }

    /// Ends the expired holder `state` shows (if its row still says so): its `expired`
    /// event names this service.
    fn end_expired(
        &self,
        tx: &mut Cached<'_, Transaction<'_>>,
        lock_id: i64,
        state: &LockState,
    ) -> Result<Option<Ended>, PgError> {
        let Some(h) = state.holder.as_ref() else {
            return Ok(None);
        };
        let sql = ending_sql(
            "",
            "h.lock_id = $1 AND h.token = $2 AND h.expires_at <= n.now_ms",
            "'expired'",
            "$3::text",
            "'lease_expired: not renewed in time (ended by a grant)'",
            // Announced only when the caller will not take the lock now.
            state.ahead > 0,
        );
        let service = self.service();
        let rows = tx.query_typed(
            &sql,
            &[
                (&lock_id, Type::INT8),
                (&h.token, Type::INT8),
                (&service, Type::TEXT),
            ],
        )?;
        rows.first().map(ended_row).transpose()
    }
}

/// Raises the token and writes the holder row and its `acquired` event (one statement),
/// deleting the caller's waiter row; the lock's row is locked and free.
fn grant(
    tx: &mut Cached<'_, Transaction<'_>>,
    lock_id: i64,
    req: &GrantRequest,
    seq: Option<i64>,
    now: i64,
    took_over: Option<Ended>,
) -> Result<Granted, PgError> {
    let expires_at = req.ttl_ms.map(|ttl| now + ttl as i64);
    let row = tx
        .query_typed_one(
            "WITH t AS (
                 UPDATE locks SET file = $2, last_token = GREATEST(last_token,
                     (SELECT value FROM registry_settings WHERE key = 'token_floor')) + 1
                 WHERE lock_id = $1
                 RETURNING lock_id, namespace, owner, field, last_token),
             e AS (
                 INSERT INTO event_log (at, lock_id, namespace, owner, field, event, token,
                                        pid, host, holder, operation)
                 SELECT $3, t.lock_id, t.namespace, t.owner, t.field, 'acquired',
                        t.last_token, $4, $5, $6, $7
                 FROM t RETURNING event_id, token),
             w AS (DELETE FROM lock_waiters WHERE seq = $8)
             INSERT INTO holders (lock_id, token, kind, lease_id, holder, operation, pid,
                 pid_start, host, thread, locker_pid, locker_start, acquired_at, renewed_at,
                 expires_at, acquired_event)
             SELECT $1, e.token, $9, $10, $6, $7, $4, $11, $5, $12, $13, $14, $3, $3, $15,
                    e.event_id
             FROM e RETURNING token, acquired_event",
            &[
                (&lock_id, Type::INT8),
                (&req.file, Type::TEXT),
                (&now, Type::INT8),
                (&pid64(req.pid), Type::INT8),
                (&req.host, Type::TEXT),
                (&req.holder, Type::TEXT),
                (&req.operation, Type::TEXT),
                (&seq, Type::INT8),
                (&req.kind.as_str(), Type::TEXT),
                (&req.lease_id, Type::TEXT),
                (&req.pid_start.map(|v| v as i64), Type::INT8),
                (&req.thread, Type::TEXT),
                (&i64::from(req.locker_pid), Type::INT8),
                (&req.locker_start.map(|v| v as i64), Type::INT8),
                (&expires_at, Type::INT8),
            ],
        )
        .map_err(|e| {
            if e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION) {
                PgError::BadRequest("that lease id is in use by another holder".into())
            } else {
                PgError::from(e)
            }
        })?;
    Ok(Granted {
        lock_id,
        token: row.try_get(0)?,
        lease_id: req.lease_id.clone(),
        acquired_at: now,
        expires_at,
        acquired_event: row.try_get(1)?,
        took_over,
    })
}

/// The lock's state without locking anything (one statement, autocommit); None when the
/// lock has no row yet.
fn peek<C: GenericClient>(
    conn: &mut Cached<'_, C>,
    req: &GrantRequest,
    seq: Option<i64>,
) -> Result<Option<(i64, LockState)>, PgError> {
    let sql = format!(
        "WITH n AS MATERIALIZED (SELECT {NOW_MS} AS now_ms)
         SELECT l.lock_id, {}
         FROM locks l CROSS JOIN n LEFT JOIN holders h ON h.lock_id = l.lock_id
         WHERE l.namespace = $1 AND l.owner = $2 AND l.field = $3",
        state_columns("l.lock_id", "$4")
    );
    let row = conn.query_typed_opt(
        &sql,
        &[
            (&req.namespace, Type::TEXT),
            (&req.owner, Type::TEXT),
            (&req.field, Type::TEXT),
            (&seq, Type::INT8),
        ],
    )?;
    match row {
        None => Ok(None),
        Some(r) => Ok(Some((r.try_get(0)?, lock_state(&r, 1)?))),
    }
}

/// Locks the lock's row (making it first if it is new) and returns its id.
fn lock_row(tx: &mut Cached<'_, Transaction<'_>>, req: &GrantRequest) -> Result<i64, PgError> {
    let key: [Param<'_>; 3] = [
        (&req.namespace, Type::TEXT),
        (&req.owner, Type::TEXT),
        (&req.field, Type::TEXT),
    ];
    const SELECT: &str = "SELECT lock_id FROM locks
                          WHERE namespace = $1 AND owner = $2 AND field = $3
                          FOR NO KEY UPDATE";
    if let Some(r) = tx.query_typed_opt(SELECT, &key)? {
        return Ok(r.try_get(0)?);
    }
    tx.execute_typed(
        &format!(
            "INSERT INTO locks (namespace, owner, field, file, last_token, created_at)
             VALUES ($1, $2, $3, $4, 0, {NOW_MS})
             ON CONFLICT (namespace, owner, field) DO NOTHING"
        ),
        &[
            (&req.namespace, Type::TEXT),
            (&req.owner, Type::TEXT),
            (&req.field, Type::TEXT),
            (&req.file, Type::TEXT),
        ],
    )?;
    // Ours, or another service's committed meanwhile (the insert waited for it).
    match tx.query_typed_opt(SELECT, &key)? {
        Some(r) => Ok(r.try_get(0)?),
        None => Err(PgError::Postgres(format!(
            "the row of lock {} could not be made",
            lock_name(&req.owner, &req.field)
        ))),
    }
}

/// The state of a lock whose row the transaction has locked (a statement of its own, so
/// its snapshot follows the lock). Waiter rows that lapsed are deleted on the way.
fn read_state(
    tx: &mut Cached<'_, Transaction<'_>>,
    lock_id: i64,
    seq: Option<i64>,
) -> Result<LockState, PgError> {
    let sql = format!(
        "WITH n AS MATERIALIZED (SELECT {NOW_MS} AS now_ms),
         lapsed AS (DELETE FROM lock_waiters w USING n
                    WHERE w.lock_id = $1 AND w.expires_at <= n.now_ms)
         SELECT {} FROM n LEFT JOIN holders h ON h.lock_id = $1",
        state_columns("$1", "$2")
    );
    let row = tx.query_typed_one(&sql, &[(&lock_id, Type::INT8), (&seq, Type::INT8)])?;
    lock_state(&row, 0)
}

//! Renewals and ends of holders in the PostgreSQL store: release (by lease id or token),
//! expiry by the database clock, clears.
//!
//! Invariants:
//! - every `acquired` event is closed by exactly one released / expired / cleared /
//!   force_cleared / reconciled event: each closing statement ([`ending_sql`]) deletes
//!   the holder row (matched by lease id or token) and writes its event in the same
//!   statement, so of two racing closers only the one whose delete found the row writes;
//! - a lease is over when `expires_at <= now` by the database clock: it is never renewed
//!   then, and a release after that point is recorded as `expired`;
//! - a statement that frees a lock sends `NOTIFY lockledger_free, '<lock_id>'` in its
//!   transaction (delivered at commit, never for a rolled-back end); a renewal frees
//!   nothing and notifies nothing;
//! - the expiry sweep takes the due rows `FOR UPDATE SKIP LOCKED`, so services may run it
//!   at once: each row is ended by exactly one of them;
//! - a clear locks the lock's row before the holder row, as a grant does (no deadlock),
//!   and a force clear raises the fencing token.

use super::error::PgError;
use super::listen::CHANNEL;
use super::request::{pid32, Param, MAX_TTL_MS};
use super::store::{PgStore, NOW_MS};
use crate::policy::stale::HolderKind;
use crate::store::history::EventKind;
use postgres::types::Type;
use postgres::Row;

/// A holder that ended (released, expired, cleared), with its closing event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    pub lock_id: i64,
    pub namespace: String,
    pub owner: String,
    pub field: String,
    pub token: i64,
    pub kind: HolderKind,
    pub lease_id: Option<String>,
    pub holder: String,
    pub operation: String,
    pub pid: Option<i32>,
    pub host: String,
    /// The closing event, its id and time (database clock) and how long it was held.
    pub event: EventKind,
    pub event_id: i64,
    pub at: i64,
    pub held_ms: i64,
    /// When the lease was due to end (None for library holders).
    pub expires_at: Option<i64>,
}

pub type Released = Ended;
pub type Expired = Ended;
pub type Cleared = Ended;

/// A renewal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renewed {
    pub lock_id: i64,
    pub token: i64,
    pub renewed_at: i64,
    pub expires_at: i64,
    /// The sampled `renewed` event, if this renewal wrote one (at most one per holder per
    /// clock minute, as the SQLite store does).
    pub event_id: Option<i64>,
}

/// The sampled `renewed` event of a renewal (a CTE after `u`, the updated holder row
/// with `prev`, its `renewed_at` before, and `now_ms`): one per holder per clock minute,
/// as the SQLite store writes.
const RENEWED_EVENT: &str = "ev AS (
                     INSERT INTO event_log (at, lock_id, namespace, owner, field, event, token,
                                            pid, host, holder, operation, held_ms)
                     SELECT u.now_ms, u.lock_id, l.namespace, l.owner, l.field, 'renewed',
                            u.token, u.pid, u.host, u.holder, u.operation,
                            GREATEST(u.now_ms - u.acquired_at, 0)
                     FROM u JOIN locks l USING (lock_id)
                     WHERE u.prev / 60000 <> u.now_ms / 60000
                     RETURNING event_id)";

/// What renewing a library holder found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HolderRenewal {
    Renewed,
    /// A force clear revoked it: it must stop writing and let go.
    Revoked {
        by: String,
    },
    /// It ended (cleared, reconciled).
    Gone,
}

/// SQL of the payload announcing that lock `{lock}` is free: `<lock_id>`, or
/// `<lock_id>:<seq>` naming the first live waiter in line (other than seq `{except}`), so
/// only that waiter wakes at once (see `listen`). Needs `n.now_ms`.
pub(super) fn free_payload(lock: &str, except: &str) -> String {
    format!(
        "{lock}::text || coalesce(':' || (SELECT min(w.seq) FROM lock_waiters w
             WHERE w.lock_id = {lock} AND w.expires_at > n.now_ms
               AND w.seq IS DISTINCT FROM {except})::text, '')"
    )
}

/// Columns of an ending statement's result, read by [`ended_row`].
pub(super) const ENDED_COLUMNS: &str =
    "ev.event_id, ev.at, ev.event, ev.held_ms, ev.lock_id, ev.namespace, \
     ev.owner, ev.field, g.token, g.kind, g.lease_id, g.holder, g.operation, g.pid, g.host, \
     g.expires_at";

/// A statement that deletes the holder rows `gone_where` picks (it may use `n.now_ms` and
/// the CTEs of `ctes`), writes one closing event per deleted row (`event`, `actor`,
/// `reason` are SQL expressions over the deleted row `g` and `n`), notifies each freed
/// lock when `notify` (a grant that takes the lock at once does not), and returns
/// [`ENDED_COLUMNS`].
pub(super) fn ending_sql(
    ctes: &str,
    gone_where: &str,
    event: &str,
    actor: &str,
    reason: &str,
    notify: bool,
) -> String {
    let announce = if notify {
        format!(
            "pg_notify('{CHANNEL}', {})",
            free_payload("ev.lock_id", "NULL")
        )
    } else {
        "NULL".to_string()
    };
    format!(
        "WITH n AS MATERIALIZED (SELECT {NOW_MS} AS now_ms){ctes},
         gone AS (DELETE FROM holders h USING n WHERE {gone_where} RETURNING h.*),
         ev AS (
             INSERT INTO event_log (at, lock_id, namespace, owner, field, event, token, pid,
                                    host, holder, operation, actor, reason, held_ms)
             SELECT n.now_ms, g.lock_id, l.namespace, l.owner, l.field, {event}, g.token,
                    g.pid, g.host, g.holder, g.operation, {actor}, {reason},
                    GREATEST(n.now_ms - g.acquired_at, 0)
             FROM gone g JOIN locks l USING (lock_id) CROSS JOIN n
             RETURNING *)
         SELECT {ENDED_COLUMNS}, {announce}
         FROM ev JOIN gone g USING (lock_id) CROSS JOIN n
         ORDER BY ev.event_id"
    )
}

pub(super) fn ended_row(r: &Row) -> Result<Ended, PgError> {
    let event: String = r.try_get(2)?;
    let kind: String = r.try_get(9)?;
    Ok(Ended {
        event_id: r.try_get(0)?,
        at: r.try_get(1)?,
        event: EventKind::parse(&event)
            .ok_or_else(|| PgError::Postgres(format!("unknown event kind {event:?}")))?,
        held_ms: r.try_get::<_, Option<i64>>(3)?.unwrap_or(0),
        lock_id: r.try_get(4)?,
        namespace: r.try_get(5)?,
        owner: r.try_get(6)?,
        field: r.try_get(7)?,
        token: r.try_get(8)?,
        kind: HolderKind::parse(&kind).unwrap_or(HolderKind::Library),
        lease_id: r.try_get(10)?,
        holder: r.try_get(11)?,
        operation: r.try_get(12)?,
        pid: pid32(r.try_get(13)?),
        host: r.try_get(14)?,
        expires_at: r.try_get(15)?,
    })
}

/// What a lease's holder is told when it comes back after its end.
fn expired_words(expires_at: Option<i64>) -> String {
    match expires_at {
        Some(end) => format!(
            "it expired at {} by the database clock",
            crate::clock::rfc3339(end)
        ),
        None => "it expired".into(),
    }
}

impl PgStore {
    /// Extends a lease to `ttl_ms` from now (database clock), unless it has already
    /// expired, ended or been revoked. Writes a sampled `renewed` event (one per holder
    /// per clock minute). Sends no notification: a renewal frees nothing.
    pub fn renew(&self, lease_id: &str, ttl_ms: u64) -> Result<Renewed, PgError> {
        if !(1..=MAX_TTL_MS).contains(&ttl_ms) {
            return Err(PgError::BadRequest(format!(
                "ttl_ms must be 1..={MAX_TTL_MS}, not {ttl_ms}"
            )));
        }
        self.renew_by(lease_id, ttl_ms as i64)
    }

    /// Renews a lease by its own ttl (its last `expires_at - renewed_at`): for a service
    /// that did not grant it and so does not know the ttl the client asked for.
    pub fn renew_own_ttl(&self, lease_id: &str) -> Result<Renewed, PgError> {
        self.renew_by(lease_id, 0)
    }

    /// `ttl` > 0: that many ms from now; 0: the lease's own ttl.
    fn renew_by(&self, lease_id: &str, ttl: i64) -> Result<Renewed, PgError> {
        let mut conn = self.conn()?;
        // One statement: the UPDATE locks the holder row and re-checks the expiry against
        // its newest version; `o` is the row as it was, for the sampling rule.
        let row = conn.cached().query_typed_opt(
            &format!(
                "WITH n AS MATERIALIZED (SELECT {NOW_MS} AS now_ms),
                 u AS (
                     UPDATE holders h SET renewed_at = n.now_ms,
                         expires_at = n.now_ms + CASE WHEN $2 > 0 THEN $2
                                                      ELSE o.expires_at - o.renewed_at END
                     FROM n, holders o
                     WHERE h.lease_id = $1 AND o.lock_id = h.lock_id
                       AND h.expires_at > n.now_ms AND h.revoked_at IS NULL
                     RETURNING h.lock_id, h.token, h.pid, h.host, h.holder, h.operation,
                               h.acquired_at, h.expires_at, o.renewed_at AS prev, n.now_ms),
                 {RENEWED_EVENT}
                 SELECT u.lock_id, u.token, u.now_ms, u.expires_at,
                        (SELECT max(event_id) FROM ev)
                 FROM u"
            ),
            &[(&lease_id, Type::TEXT), (&ttl, Type::INT8)],
        )?;
        if let Some(r) = row {
            return Ok(Renewed {
                lock_id: r.try_get(0)?,
                token: r.try_get(1)?,
                renewed_at: r.try_get(2)?,
                expires_at: r.try_get(3)?,
                event_id: r.try_get(4)?,
            });
        }
        // Not renewed: say why.
        let why = conn.query_typed_opt(
            &format!("SELECT expires_at, revoked_by, {NOW_MS} FROM holders WHERE lease_id = $1"),
            &[(&lease_id, Type::TEXT)],
        )?;
        let why = match why {
            None => "it was released, expired or cleared".to_string(),
            Some(r) => match r.try_get::<_, Option<String>>(1)? {
                Some(by) => format!("it was revoked by {by}"),
                None => expired_words(r.try_get(0)?),
            },
        };
        Err(PgError::LeaseGone {
            lease_id: lease_id.to_string(),
            why,
        })
    }

    /// Tells the database that the library holder of `lock_id` with `token` is alive
    /// and working (its `renewed_at`, so it is not `held_too_long`), with the sampled
    /// `renewed` event; or why not.
    pub fn renew_holder(&self, lock_id: i64, token: i64) -> Result<HolderRenewal, PgError> {
        let mut conn = self.conn()?;
        let row = conn.cached().query_typed_opt(
            &format!(
                "WITH n AS MATERIALIZED (SELECT {NOW_MS} AS now_ms),
                 u AS (
                     UPDATE holders h SET renewed_at = n.now_ms
                     FROM n, holders o
                     WHERE h.lock_id = $1 AND h.token = $2 AND o.lock_id = h.lock_id
                       AND h.revoked_at IS NULL
                     RETURNING h.lock_id, h.token, h.pid, h.host, h.holder, h.operation,
                               h.acquired_at, o.renewed_at AS prev, n.now_ms),
                 {RENEWED_EVENT}
                 SELECT (SELECT count(*) FROM u), h.revoked_by
                 FROM holders h WHERE h.lock_id = $1 AND h.token = $2"
            ),
            &[(&lock_id, Type::INT8), (&token, Type::INT8)],
        )?;
        let Some(row) = row else {
            return Ok(HolderRenewal::Gone);
        };
        let renewed: i64 = row.try_get(0)?;
        let revoked_by: Option<String> = row.try_get(1)?;
        Ok(if renewed == 1 {
            HolderRenewal::Renewed
        } else {
            HolderRenewal::Revoked {
                by: revoked_by.unwrap_or_else(|| "an admin".into()),
            }
        })
    }

    /// Ends a lease: deletes its holder row and writes `released`, in one statement that
    /// also notifies the freed lock. A lease past its end (database clock) that no one
    /// ended yet is ended as `expired` instead, and the caller gets
    /// [`PgError::LeaseGone`]: its lock was not safely held to the end.
    pub fn release(&self, lease_id: &str) -> Result<Released, PgError> {
        let ended = self.end_one("h.lease_id = $1", &[(&lease_id, Type::TEXT)])?;
        let Some(ended) = ended else {
            return Err(PgError::LeaseGone {
                lease_id: lease_id.to_string(),
                why: "it was already released, expired or cleared".into(),
            });
        };
        if ended.event == EventKind::Expired {
            return Err(PgError::LeaseGone {
                lease_id: lease_id.to_string(),
                why: format!(
                    "{}, before this release (recorded as expired)",
                    expired_words(ended.expires_at)
                ),
            });
        }
        Ok(ended)
    }

    /// Ends the holder of `lock_id` that carries `token` (library holders, which have no
    /// lease id), like [`PgStore::release`].
    pub fn release_by_token(&self, lock_id: i64, token: i64) -> Result<Released, PgError> {
        let ended = self.end_one(
            "h.lock_id = $1 AND h.token = $2",
            &[(&lock_id, Type::INT8), (&token, Type::INT8)],
        )?;
        match ended {
            None => Err(PgError::NotHolding { lock_id, token }),
            Some(e) if e.event == EventKind::Expired => Err(PgError::LeaseGone {
                lease_id: e.lease_id.unwrap_or_else(|| format!("token {token}")),
                why: format!(
                    "{}, before this release (recorded as expired)",
                    expired_words(e.expires_at)
                ),
            }),
            Some(e) => Ok(e),
        }
    }

    /// The release statement for the holder `gone_where` picks (at most one row).
    fn end_one(&self, gone_where: &str, params: &[Param<'_>]) -> Result<Option<Ended>, PgError> {
        let sql = ending_sql(
            "",
            gone_where,
            "CASE WHEN g.expires_at <= n.now_ms THEN 'expired' ELSE 'released' END",
            "NULL",
            "CASE WHEN g.expires_at <= n.now_ms \
                  THEN 'lease_expired: released after its end' END",
            true,
        );
        let rows = self.conn()?.cached().query_typed(&sql, params)?;
        rows.first().map(ended_row).transpose()
    }

    /// Ends up to `limit` leases that expired by the database clock, oldest first, each
    /// with one `expired` event and a notification. Rows another service is ending at the
    /// same moment are skipped (`FOR UPDATE SKIP LOCKED`), so services may run this at
    /// once without double events.
    pub fn expire_due(&self, limit: usize) -> Result<Vec<Expired>, PgError> {
        let limit = limit.clamp(1, 10_000) as i64;
        let sql = ending_sql(
            ",
             due AS (SELECT d.lock_id FROM holders d
                     WHERE d.expires_at <= (SELECT now_ms FROM n)
                     ORDER BY d.expires_at LIMIT $1
                     FOR UPDATE SKIP LOCKED)",
            "h.lock_id IN (SELECT lock_id FROM due) AND h.expires_at <= n.now_ms",
            "'expired'",
            "$2::text",
            "'lease_expired: not renewed in time'",
            true,
        );
        let service = self.service();
        let rows = self
            .conn()?
            .query_typed(&sql, &[(&limit, Type::INT8), (&service, Type::TEXT)])?;
        rows.iter().map(ended_row).collect()
    }

    /// Ends the holder of `lock_id` if it still carries `token`, with the event `kind`
    /// (`cleared`, `force_cleared` or `reconciled`) naming `actor` and `reason`; a force
    /// clear also raises the lock's fencing token, so the revoked token is never current
    /// again. None (nothing written) when the holder changed since the caller looked.
    /// The policy (who may clear what) is the caller's.
    pub fn clear(
        &self,
        lock_id: i64,
        token: i64,
        actor: &str,
        reason: &str,
        kind: EventKind,
    ) -> Result<Option<Cleared>, PgError> {
        if !matches!(
            kind,
            EventKind::Cleared
                | EventKind::ForceCleared
                | EventKind::Reconciled
                | EventKind::Expired
                | EventKind::Released
        ) {
            return Err(PgError::BadRequest(format!(
                "a clear writes cleared, force_cleared, reconciled, expired or released, not {}",
                kind.as_str()
            )));
        }
        let mut conn = self.conn()?;
        let mut tx = conn.transaction()?;
        // The lock's row first, as a grant takes it (see the module's invariants).
        let found = tx.query_typed_opt(
            "SELECT lock_id FROM locks WHERE lock_id = $1 FOR NO KEY UPDATE",
            &[(&lock_id, Type::INT8)],
        )?;
        if found.is_none() {
            return Ok(None);
        }
        let sql = ending_sql(
            "",
            "h.lock_id = $1 AND h.token = $2",
            "$3::text",
            "$4::text",
            "$5::text",
            true,
        );
        let rows = tx.query_typed(
            &sql,
            &[
                (&lock_id, Type::INT8),
                (&token, Type::INT8),
                (&kind.as_str(), Type::TEXT),
                (&actor, Type::TEXT),
                (&reason, Type::TEXT),
            ],
        )?;
        let Some(cleared) = rows.first().map(ended_row).transpose()? else {
            tx.rollback()?;
            return Ok(None);
        };
        if kind == EventKind::ForceCleared {
            tx.execute_typed(
                "UPDATE locks SET last_token = GREATEST(last_token,
                     (SELECT value FROM registry_settings WHERE key = 'token_floor')) + 1
                 WHERE lock_id = $1",
                &[(&lock_id, Type::INT8)],
            )?;
        }
        tx.commit()?;
        Ok(Some(cleared))
    }
}

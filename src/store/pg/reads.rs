//! Reads of the PostgreSQL store: current holders (all, one owner's, one host's) and
//! history, as the SQLite store's row types ([`LockRow`], [`EventRow`]), so the registry
//! can read either backend the same way.
//!
//! Invariants: reads change nothing and run on any pooled connection, each one statement
//! (one snapshot); history has the SQLite store's semantics (`store::history::history`):
//! only the filters given, newest first by event id, at most `limit` rows, paged with
//! `before_event_id`; statements name only the filters given, so the planner can use the
//! owner, time and kind indexes of `event_log`. The fixed statements (holders, locks, one
//! lock) are prepared once per pooled connection; history's, built from the filters
//! given, are not.

use super::error::PgError;
use super::request::pid32;
use super::store::PgStore;
use crate::kernel::flock::FileId;
use crate::policy::stale::HolderKind;
use crate::store::history::{EventRow, HistoryQuery};
use crate::store::records::{HolderRow, LockRow};
use postgres::types::{ToSql, Type};
use postgres::Row;

/// The columns [`lock_row`] reads.
const LOCK_COLUMNS: &str = "l.lock_id, l.namespace, l.owner, l.field, l.file, l.last_token,
    h.token, h.kind, h.lease_id, h.holder, h.operation, h.pid, h.pid_start, h.host, h.thread,
    h.locker_pid, h.locker_start, h.acquired_at, h.renewed_at, h.expires_at, h.revoked_at,
    h.revoked_by, h.file_dev, h.file_ino, h.file_replaced_at";

fn lock_row(r: &Row) -> Result<LockRow, PgError> {
    let holder = match r.try_get::<_, Option<i64>>(6)? {
        None => None,
        Some(token) => {
            let kind: String = r.try_get(7)?;
            let dev: Option<i64> = r.try_get(22)?;
            let ino: Option<i64> = r.try_get(23)?;
            Some(HolderRow {
                token,
                kind: HolderKind::parse(&kind).unwrap_or(HolderKind::Library),
                lease_id: r.try_get(8)?,
                holder: r.try_get(9)?,
                operation: r.try_get(10)?,
                pid: pid32(r.try_get(11)?),
                pid_start: r.try_get::<_, Option<i64>>(12)?.map(|v| v as u64),
                host: r.try_get(13)?,
                thread: r.try_get(14)?,
                locker_pid: pid32(r.try_get(15)?).unwrap_or(0),
                locker_start: r.try_get::<_, Option<i64>>(16)?.map(|v| v as u64),
                acquired_at: r.try_get(17)?,
                renewed_at: r.try_get(18)?,
                expires_at: r.try_get(19)?,
                revoked_at: r.try_get(20)?,
                revoked_by: r.try_get(21)?,
                file_id: match (dev, ino) {
                    (Some(dev), Some(ino)) => Some(FileId {
                        dev: dev as u64,
                        ino: ino as u64,
                    }),
                    _ => None,
                },
                file_replaced_at: r.try_get(24)?,
            })
        }
    };
    Ok(LockRow {
        lock_id: r.try_get(0)?,
        namespace: r.try_get(1)?,
        owner: r.try_get(2)?,
        field: r.try_get(3)?,
        file: r.try_get(4)?,
        last_token: r.try_get(5)?,
        holder,
    })
}

impl PgStore {
    /// Every lock with a recorded holder (of one owner, when given), by lock id.
    pub fn current(&self, owner: Option<&str>) -> Result<Vec<LockRow>, PgError> {
        let mut conn = self.conn()?;
        let rows = match owner {
            Some(owner) => conn.cached().query_typed(
                &format!(
                    "SELECT {LOCK_COLUMNS} FROM holders h JOIN locks l USING (lock_id)
                     WHERE l.owner = $1 ORDER BY l.lock_id"
                ),
                &[(&owner, Type::TEXT)],
            )?,
            None => conn.cached().query_typed(
                &format!(
                    "SELECT {LOCK_COLUMNS} FROM holders h JOIN locks l USING (lock_id)
                     ORDER BY l.lock_id"
                ),
                &[],
            )?,
        };
        rows.iter().map(lock_row).collect()
    }

    /// The holders recorded on `host`, by lock id: the service of that host judges their
    /// pids (nobody else can) and ends the dead ones with [`PgStore::clear`].
    pub fn holders_on_host(&self, host: &str) -> Result<Vec<LockRow>, PgError> {
        let rows = self.conn()?.cached().query_typed(
            &format!(
                "SELECT {LOCK_COLUMNS} FROM holders h JOIN locks l USING (lock_id)
                 WHERE h.host = $1 ORDER BY l.lock_id"
            ),
            &[(&host, Type::TEXT)],
        )?;
        rows.iter().map(lock_row).collect()
    }

    /// The lock `lock_id` with its holder, if the lock exists.
    pub fn lock(&self, lock_id: i64) -> Result<Option<LockRow>, PgError> {
        let row = self.conn()?.cached().query_typed_opt(
            &format!(
                "SELECT {LOCK_COLUMNS} FROM locks l LEFT JOIN holders h USING (lock_id)
                 WHERE l.lock_id = $1"
            ),
            &[(&lock_id, Type::INT8)],
        )?;
        row.as_ref().map(lock_row).transpose()
    }

    /// A page of locks by lock id after `after_lock_id` (only those with a holder when
    /// `only_recorded`), of owners starting with `owner_prefix` when given.
    pub fn list_locks(
        &self,
        owner_prefix: Option<&str>,
        after_lock_id: i64,
        only_recorded: bool,
        limit: usize,
    ) -> Result<Vec<LockRow>, PgError> {
        let join = if only_recorded { "JOIN" } else { "LEFT JOIN" };
        let rows = self.conn()?.cached().query_typed(
            &format!(
                "SELECT {LOCK_COLUMNS} FROM locks l {join} holders h USING (lock_id)
                 WHERE l.lock_id > $1 AND ($2::text IS NULL OR starts_with(l.owner, $2))
                 ORDER BY l.lock_id LIMIT $3"
            ),
            &[
                (&after_lock_id, Type::INT8),
                (&owner_prefix, Type::TEXT),
                (&(limit as i64), Type::INT8),
            ],
        )?;
        rows.iter().map(lock_row).collect()
    }

    /// The lock `namespace`/`owner`/`field` with its holder, if the lock exists.
    pub fn lock_by_key(
        &self,
        namespace: &str,
        owner: &str,
        field: &str,
    ) -> Result<Option<LockRow>, PgError> {
        let row = self.conn()?.cached().query_typed_opt(
            &format!(
                "SELECT {LOCK_COLUMNS} FROM locks l LEFT JOIN holders h USING (lock_id)
                 WHERE l.namespace = $1 AND l.owner = $2 AND l.field = $3"
            ),
            &[
                (&namespace, Type::TEXT),
                (&owner, Type::TEXT),
                (&field, Type::TEXT),
            ],
        )?;
        row.as_ref().map(lock_row).transpose()
    }

    /// History rows matching `q`, newest first (see the module's invariants).
    pub fn history(&self, q: &HistoryQuery) -> Result<Vec<EventRow>, PgError> {
        let mut filters = String::new();
        let mut args: Vec<(Box<dyn ToSql + Sync>, Type)> = Vec::new();
        let mut filter = |column: &str, op: &str, value: Box<dyn ToSql + Sync>, ty: Type| {
            args.push((value, ty));
            filters.push_str(&format!(" AND {column} {op} ${}", args.len()));
        };
        let text = |v: &str| -> Box<dyn ToSql + Sync> { Box::new(v.to_string()) };
        if let Some(v) = &q.owner {
            filter("owner", "=", text(v), Type::TEXT);
        }
        if let Some(v) = &q.field {
            filter("field", "=", text(v), Type::TEXT);
        }
        if let Some(v) = q.event {
            filter("event", "=", text(v.as_str()), Type::TEXT);
        }
        if let Some(v) = &q.holder {
            filter("holder", "=", text(v), Type::TEXT);
        }
        if let Some(v) = q.since_ms {
            filter("at", ">=", Box::new(v), Type::INT8);
        }
        if let Some(v) = q.until_ms {
            filter("at", "<", Box::new(v), Type::INT8);
        }
        if let Some(v) = q.before_event_id {
            filter("event_id", "<", Box::new(v), Type::INT8);
        }
        if let Some(v) = &q.namespace {
            filter("namespace", "=", text(v), Type::TEXT);
        }
        args.push((Box::new(q.limit as i64), Type::INT8));
        let sql = format!(
            "SELECT event_id, at, namespace, owner, field, event, token, pid, host, holder,
                    operation, actor, reason, held_ms, count
             FROM event_log WHERE true{filters}
             ORDER BY event_id DESC LIMIT ${}",
            args.len()
        );
        let params: Vec<(&(dyn ToSql + Sync), Type)> =
            args.iter().map(|(v, t)| (v.as_ref(), t.clone())).collect();
        let rows = self.conn()?.query_typed(&sql, &params)?;
        rows.iter()
            .map(|r| {
                Ok(EventRow {
                    event_id: r.try_get(0)?,
                    at: r.try_get(1)?,
                    namespace: r.try_get(2)?,
                    owner: r.try_get(3)?,
                    field: r.try_get(4)?,
                    event: r.try_get(5)?,
                    token: r.try_get(6)?,
                    pid: pid32(r.try_get(7)?),
                    host: r.try_get(8)?,
                    holder: r.try_get(9)?,
                    operation: r.try_get(10)?,
                    actor: r.try_get(11)?,
                    reason: r.try_get(12)?,
                    held_ms: r.try_get(13)?,
                    count: r.try_get(14)?,
                })
            })
            .collect()
    }
}

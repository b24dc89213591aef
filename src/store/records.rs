//! Rows of the registry database and the SQL that reads and writes them.
//!
//! Owns the mapping between the tables of `migrations/` and Rust types. Every function
//! takes a `&Connection` and runs inside whatever transaction the caller opened; none
//! opens, commits or sleeps. Policy (who may clear what, staleness) lives elsewhere.

use crate::ids::LockKey;
use crate::kernel::flock::FileId;
use crate::policy::stale::HolderKind;
use rusqlite::{params, Connection, OptionalExtension, Row};

/// The current holder of a lock, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolderRow {
    pub token: i64,
    pub kind: HolderKind,
    pub lease_id: Option<String>,
    pub holder: String,
    pub operation: String,
    pub pid: Option<i32>,
    pub pid_start: Option<u64>,
    pub host: String,
    pub thread: Option<String>,
    pub locker_pid: i32,
    pub locker_start: Option<u64>,
    pub acquired_at: i64,
    pub renewed_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub revoked_by: Option<String>,
    /// The lock file the holder's flock is on (None for rows older than schema v2).
    pub file_id: Option<FileId>,
    /// When its file was first found replaced or deleted at the lock path.
    pub file_replaced_at: Option<i64>,
}

/// A lock the registry knows, with its holder if one is recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockRow {
    pub lock_id: i64,
    pub namespace: String,
    pub owner: String,
    pub field: String,
    pub file: String,
    pub last_token: i64,
    pub holder: Option<HolderRow>,
}

const LOCK_COLUMNS: &str = "l.lock_id, l.namespace, l.owner, l.field, l.file, l.last_token,
    h.token, h.kind, h.lease_id, h.holder, h.operation, h.pid, h.pid_start, h.host, h.thread,
    h.locker_pid, h.locker_start, h.acquired_at, h.renewed_at, h.expires_at, h.revoked_at,
    h.revoked_by, h.file_dev, h.file_ino, h.file_replaced_at";

fn lock_row(r: &Row<'_>) -> rusqlite::Result<LockRow> {
    let token: Option<i64> = r.get(6)?;
    let holder = match token {
        None => None,
        Some(token) => {
            let kind: String = r.get(7)?;
            Some(HolderRow {
                token,
                kind: HolderKind::parse(&kind).unwrap_or(HolderKind::Library),
                lease_id: r.get(8)?,
                holder: r.get(9)?,
                operation: r.get(10)?,
                pid: r.get(11)?,
                pid_start: r.get::<_, Option<i64>>(12)?.map(|v| v as u64),
                host: r.get(13)?,
                thread: r.get(14)?,
                locker_pid: r.get(15)?,
                locker_start: r.get::<_, Option<i64>>(16)?.map(|v| v as u64),
                acquired_at: r.get(17)?,
                renewed_at: r.get(18)?,
                expires_at: r.get(19)?,
                revoked_at: r.get(20)?,
                revoked_by: r.get(21)?,
                file_id: match (r.get::<_, Option<i64>>(22)?, r.get::<_, Option<i64>>(23)?) {
                    (Some(dev), Some(ino)) => Some(FileId {
                        dev: dev as u64,
                        ino: ino as u64,
                    }),
                    _ => None,
                },
                file_replaced_at: r.get(24)?,
            })
        }
    };
    Ok(LockRow {
        lock_id: r.get(0)?,
        namespace: r.get(1)?,
        owner: r.get(2)?,
        field: r.get(3)?,
        file: r.get(4)?,
        last_token: r.get(5)?,
        holder,
    })
}

/// Every known lock of one owner, holders included.
pub fn owner_locks(
    conn: &Connection,
    namespace: &str,
    owner: &str,
) -> rusqlite::Result<Vec<LockRow>> {
    let sql = format!(
        "SELECT {LOCK_COLUMNS} FROM locks l LEFT JOIN holders h USING (lock_id)
         WHERE l.namespace = ?1 AND l.owner = ?2"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params![namespace, owner], lock_row)?;
    rows.collect()
}

pub fn find_lock(conn: &Connection, key: &LockKey) -> rusqlite::Result<Option<LockRow>> {
    let sql = format!(
        "SELECT {LOCK_COLUMNS} FROM locks l LEFT JOIN holders h USING (lock_id)
         WHERE l.namespace = ?1 AND l.owner = ?2 AND l.field = ?3"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    stmt.query_row(params![key.namespace(), key.owner(), key.field()], lock_row)
        .optional()
}

/// The lock whose holder carries `lease_id` (a lease's or a registration's id).
pub fn find_by_lease_id(conn: &Connection, lease_id: &str) -> rusqlite::Result<Option<LockRow>> {
    let sql = format!(
        "SELECT {LOCK_COLUMNS} FROM holders h JOIN locks l USING (lock_id) WHERE h.lease_id = ?1"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    stmt.query_row([lease_id], lock_row).optional()
}

/// Every lock that has a recorded holder (for reconciliation and the reaper).
pub fn all_held(conn: &Connection) -> rusqlite::Result<Vec<LockRow>> {
    let sql = format!(
        "SELECT {LOCK_COLUMNS} FROM holders h JOIN locks l USING (lock_id) ORDER BY l.lock_id"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map([], lock_row)?;
    rows.collect()
}

/// A page of known locks, by lock id, optionally by owner prefix and only those with a
/// recorded holder.
pub fn list_locks(
    conn: &Connection,
    owner_prefix: Option<&str>,
    after_lock_id: i64,
    only_recorded: bool,
    limit: usize,
) -> rusqlite::Result<Vec<LockRow>> {
    let join = if only_recorded { "JOIN" } else { "LEFT JOIN" };
    // The prefix range `owner >= p AND owner < p || char(0x10FFFF)` uses the owner index
    // without LIKE's escaping pitfalls (owners may contain '_').
    let sql = format!(
        "SELECT {LOCK_COLUMNS} FROM locks l {join} holders h USING (lock_id)
         WHERE l.lock_id > ?1
           AND (?2 IS NULL OR (l.owner >= ?2 AND l.owner < ?2 || char(1114111)))
         ORDER BY l.lock_id LIMIT ?3"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params![after_lock_id, owner_prefix, limit as i64], lock_row)?;
    rows.collect()
}

/// Makes sure the lock has a row and returns its id (the token is not touched).
pub fn ensure_lock(
    conn: &Connection,
    key: &LockKey,
    file: &str,
    now: i64,
) -> rusqlite::Result<i64> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO locks (namespace, owner, field, file, last_token, created_at)
         VALUES (?1, ?2, ?3, ?4, 0, ?5)
         ON CONFLICT (namespace, owner, field) DO UPDATE SET file = excluded.file
         RETURNING lock_id",
    )?;
    stmt.query_row(
        params![key.namespace(), key.owner(), key.field(), file, now],
        |r| r.get(0),
    )
}

/// Makes sure the lock has a row and issues its next fencing token in one statement:
/// `(lock_id, token)`, the token strictly greater than every earlier one, and than the
/// token floor (see `store::ceiling`). The caller covers it with the ceiling.
pub fn grant_token(
    conn: &Connection,
    key: &LockKey,
    file: &str,
    now: i64,
) -> rusqlite::Result<(i64, i64)> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO locks (namespace, owner, field, file, last_token, created_at)
         VALUES (?1, ?2, ?3, ?4, (SELECT value FROM registry_settings WHERE key = 'token_floor') + 1, ?5)
         ON CONFLICT (namespace, owner, field) DO UPDATE SET last_token =
             max(last_token, (SELECT value FROM registry_settings WHERE key = 'token_floor')) + 1
         RETURNING lock_id, last_token",
    )?;
    stmt.query_row(
        params![key.namespace(), key.owner(), key.field(), file, now],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
}

/// The token of the lock's recorded holder, if any.
pub fn holder_token(conn: &Connection, lock_id: i64) -> rusqlite::Result<Option<i64>> {
    let mut stmt = conn.prepare_cached("SELECT token FROM holders WHERE lock_id = ?1")?;
    stmt.query_row([lock_id], |r| r.get(0)).optional()
}

/// What a deleted holder row said, for its closing event.
#[derive(Debug, Clone)]
pub struct TakenHolder {
    pub holder: String,
    pub operation: String,
    pub pid: Option<i32>,
    pub host: String,
    pub acquired_at: i64,
    pub revoked: bool,
}

/// Deletes the holder row if it still carries `token`, returning what it said. A read
/// and a delete by rowid rather than `DELETE … RETURNING`: SQLite gathers a RETURNING
/// clause's rows in a temporary table, which cost more than the delete itself, and the
/// caller's write transaction keeps the two together.
pub fn take_holder(
    conn: &Connection,
    lock_id: i64,
    token: i64,
) -> rusqlite::Result<Option<TakenHolder>> {
    let taken = conn
        .prepare_cached(
            "SELECT holder, operation, pid, host, acquired_at, revoked_at IS NOT NULL
             FROM holders WHERE lock_id = ?1 AND token = ?2",
        )?
        .query_row(params![lock_id, token], |r| {
            Ok(TakenHolder {
                holder: r.get(0)?,
                operation: r.get(1)?,
                pid: r.get(2)?,
                host: r.get(3)?,
                acquired_at: r.get(4)?,
                revoked: r.get(5)?,
            })
        })
        .optional()?;
    if taken.is_some() {
        conn.prepare_cached("DELETE FROM holders WHERE lock_id = ?1")?
            .execute([lock_id])?;
    }
    Ok(taken)
}

/// Issues the next fencing token of a lock; strictly greater than every earlier one (and
/// than the token floor). An update and a read by rowid rather than `UPDATE … RETURNING`
/// (see [`take_holder`]), in the caller's write transaction.
pub fn next_token(conn: &Connection, lock_id: i64) -> rusqlite::Result<i64> {
    let updated = conn
        .prepare_cached(
            "UPDATE locks SET last_token =
                 max(last_token, (SELECT value FROM registry_settings WHERE key = 'token_floor')) + 1
             WHERE lock_id = ?1",
        )?
        .execute([lock_id])?;
    if updated != 1 {
        return Err(rusqlite::Error::QueryReturnedNoRows);
    }
    conn.prepare_cached("SELECT last_token FROM locks WHERE lock_id = ?1")?
        .query_row([lock_id], |r| r.get(0))
}

pub struct NewHolder<'a> {
    pub lock_id: i64,
    pub token: i64,
    pub kind: HolderKind,
    pub lease_id: Option<&'a str>,
    pub holder: &'a str,
    pub operation: &'a str,
    pub pid: Option<i32>,
    pub pid_start: Option<u64>,
    pub host: &'a str,
    pub thread: Option<&'a str>,
    pub locker_pid: i32,
    pub locker_start: Option<u64>,
    pub acquired_at: i64,
    pub expires_at: Option<i64>,
    pub acquired_event: i64,
    /// The lock file whose flock the holder took.
    pub file_id: FileId,
}

pub fn insert_holder(conn: &Connection, h: &NewHolder<'_>) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO holders (lock_id, token, kind, lease_id, holder, operation, pid, pid_start,
             host, thread, locker_pid, locker_start, acquired_at, renewed_at, expires_at,
             acquired_event, file_dev, file_ino)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?13, ?14, ?15, ?16, ?17)",
    )?;
    stmt.execute(params![
        h.lock_id,
        h.token,
        h.kind.as_str(),
        h.lease_id,
        h.holder,
        h.operation,
        h.pid,
        h.pid_start.map(|v| v as i64),
        h.host,
        h.thread,
        h.locker_pid,
        h.locker_start.map(|v| v as i64),
        h.acquired_at,
        h.expires_at,
        h.acquired_event,
        h.file_id.dev as i64,
        h.file_id.ino as i64,
    ])?;
    Ok(())
}

/// Removes the holder row if it still carries `token`; false if it was already gone.
pub fn delete_holder(conn: &Connection, lock_id: i64, token: i64) -> rusqlite::Result<bool> {
    let mut stmt = conn.prepare_cached("DELETE FROM holders WHERE lock_id = ?1 AND token = ?2")?;
    Ok(stmt.execute(params![lock_id, token])? == 1)
}

/// Records a renewal; false if the holder with that token is gone.
pub fn renew_holder(
    conn: &Connection,
    lock_id: i64,
    token: i64,
    now: i64,
    expires_at: Option<i64>,
) -> rusqlite::Result<bool> {
    let mut stmt = conn.prepare_cached(
        "UPDATE holders SET renewed_at = ?3, expires_at = COALESCE(?4, expires_at)
         WHERE lock_id = ?1 AND token = ?2 AND revoked_at IS NULL",
    )?;
    Ok(stmt.execute(params![lock_id, token, now, expires_at])? == 1)
}

/// Notes, once, that the holder's file was found replaced or deleted; true the first time.
pub fn mark_file_replaced(
    conn: &Connection,
    lock_id: i64,
    token: i64,
    now: i64,
) -> rusqlite::Result<bool> {
    let mut stmt = conn.prepare_cached(
        "UPDATE holders SET file_replaced_at = ?3
         WHERE lock_id = ?1 AND token = ?2 AND file_replaced_at IS NULL",
    )?;
    Ok(stmt.execute(params![lock_id, token, now])? == 1)
}

pub fn mark_revoked(
    conn: &Connection,
    lock_id: i64,
    token: i64,
    now: i64,
    actor: &str,
) -> rusqlite::Result<bool> {
    let mut stmt = conn.prepare_cached(
        "UPDATE holders SET revoked_at = ?3, revoked_by = ?4 WHERE lock_id = ?1 AND token = ?2",
    )?;
    Ok(stmt.execute(params![lock_id, token, now, actor])? == 1)
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn plan(conn: &rusqlite::Connection, sql: &str) -> String {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let rows = stmt.query_map([], |r| r.get::<_, String>(3)).unwrap();
        rows.map(|r| r.unwrap()).collect::<Vec<_>>().join(" | ")
    }

    /// The statements that must stay fast at millions of events use their indexes.
    #[test]
    fn hot_statements_use_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::store::db::open_and_migrate(&Config::defaults(dir.path())).unwrap();
        let query = crate::store::history::HistoryQuery {
            owner: Some("x".into()),
            limit: 50,
            ..Default::default()
        };
        let (sql, _) = crate::store::history::history_statement(&query);
        let sql = sql.replace("?1", "'x'").replace("?2", "50");
        let by_owner = plan(&conn, &sql);
        assert!(by_owner.contains("lock_events_by_owner"), "{by_owner}");
        assert!(by_owner.contains("MERGE"), "{by_owner}");
        // An admin's query on the view finds the same index.
        let view = plan(
            &conn,
            "SELECT event_id FROM lock_events WHERE owner = 'x' ORDER BY event_id DESC LIMIT 50",
        );
        assert!(view.contains("lock_events_by_owner"), "{view}");
        let aged = plan(
            &conn,
            "SELECT event_id FROM event_log INDEXED BY lock_events_by_at WHERE at < 5 ORDER BY at LIMIT 10",
        );
        assert!(aged.contains("lock_events_by_at"), "{aged}");
        let status = plan(
            &conn,
            "SELECT l.lock_id FROM locks l LEFT JOIN holders h USING (lock_id) WHERE l.namespace = 'c' AND l.owner = 'x'",
        );
        assert!(!status.contains("SCAN l"), "{status}");
    }
}

//! History rows (`lock_events`): appending events, moving them from the inbox to the
//! indexed log, reading them back with filters, and retention.
//!
//! Invariants: events are appended to `event_inbox` (no secondary index, so an acquire's
//! or release's commit writes one history page) and moved by [`move_inbox`] into
//! `event_log` (indexed by owner, time and kind) in batches; an event is in exactly one
//! of the two, and event ids increase across both. History is append-only except for
//! retention ([`prune_events`]), which never deletes the `acquired` event of a current
//! holder. Reads name only the filters given, so the planner can use the log's owner and
//! time indexes (`records::tests::hot_statements_use_indexes`), and read both tables.

use super::records::LockRow;
use rusqlite::{params, Connection};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Acquired,
    Released,
    Renewed,
    Expired,
    Cleared,
    ForceCleared,
    Reconciled,
    WaitTimeout,
    ObservedExternal,
    FileReplaced,
}

impl EventKind {
    pub const ALL: [EventKind; 10] = [
        EventKind::Acquired,
        EventKind::Released,
        EventKind::Renewed,
        EventKind::Expired,
        EventKind::Cleared,
        EventKind::ForceCleared,
        EventKind::Reconciled,
        EventKind::WaitTimeout,
        EventKind::ObservedExternal,
        EventKind::FileReplaced,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Acquired => "acquired",
            EventKind::Released => "released",
            EventKind::Renewed => "renewed",
            EventKind::Expired => "expired",
            EventKind::Cleared => "cleared",
            EventKind::ForceCleared => "force_cleared",
            EventKind::Reconciled => "reconciled",
            EventKind::WaitTimeout => "wait_timeout",
            EventKind::ObservedExternal => "observed_external",
            EventKind::FileReplaced => "file_replaced",
        }
    }
    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// One history row to append.
#[derive(Debug, Clone, Default)]
pub struct NewEvent<'a> {
    pub at: i64,
    pub lock_id: i64,
    pub namespace: &'a str,
    pub owner: &'a str,
    pub field: &'a str,
    pub event: Option<EventKind>,
    pub token: Option<i64>,
    pub pid: Option<i32>,
    pub host: Option<&'a str>,
    pub holder: Option<&'a str>,
    pub operation: Option<&'a str>,
    pub actor: Option<&'a str>,
    pub reason: Option<&'a str>,
    pub held_ms: Option<i64>,
    /// How many occurrences the row stands for (busy answers are folded; 0 means 1).
    pub count: i64,
}

impl<'a> NewEvent<'a> {
    /// An event about `row`'s lock and, when there is one, its holder.
    pub fn about(row: &'a LockRow, event: EventKind, at: i64) -> NewEvent<'a> {
        let h = row.holder.as_ref();
        NewEvent {
            at,
            lock_id: row.lock_id,
            namespace: &row.namespace,
            owner: &row.owner,
            field: &row.field,
            event: Some(event),
            token: h.map(|h| h.token),
            pid: h.and_then(|h| h.pid),
            host: h.map(|h| h.host.as_str()),
            holder: h.map(|h| h.holder.as_str()),
            operation: h.map(|h| h.operation.as_str()),
            held_ms: h.map(|h| (at - h.acquired_at).max(0)),
            ..NewEvent::default()
        }
    }
}

/// The columns of a history row, in table order (both tables and the view share them).
const COLUMNS: &str = "event_id, at, lock_id, namespace, owner, field, event, token, pid, \
                       host, holder, operation, actor, reason, held_ms, count";

/// Appends `e` to the inbox; returns its event id, above every id in either table (two
/// seeks to the last row of each, so ids never repeat even if the inbox was emptied by
/// hand).
pub fn insert_event(conn: &Connection, e: &NewEvent<'_>) -> rusqlite::Result<i64> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO event_inbox (event_id, at, lock_id, namespace, owner, field, event, token,
             pid, host, holder, operation, actor, reason, held_ms, count)
         VALUES (max(coalesce((SELECT max(event_id) FROM event_inbox), 0),
                     coalesce((SELECT max(event_id) FROM event_log), 0)) + 1,
                 ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    )?;
    stmt.execute(params![
        e.at,
        e.lock_id,
        e.namespace,
        e.owner,
        e.field,
        e.event.map(EventKind::as_str),
        e.token,
        e.pid,
        e.host,
        e.holder,
        e.operation,
        e.actor,
        e.reason,
        e.held_ms,
        e.count.max(1),
    ])?;
    Ok(conn.last_insert_rowid())
}

/// Adds `count` occurrences to the folded row `event_id` (moving its time to `at`);
/// false if the row is gone (pruned).
pub fn add_to_count(
    conn: &Connection,
    event_id: i64,
    count: i64,
    at: i64,
    reason: &str,
) -> rusqlite::Result<bool> {
    for table in ["event_inbox", "event_log"] {
        let mut stmt = conn.prepare_cached(&format!(
            "UPDATE {table} SET count = count + ?2, at = max(at, ?3), reason = ?4
             WHERE event_id = ?1"
        ))?;
        if stmt.execute(params![event_id, count, at, reason])? == 1 {
            return Ok(true);
        }
    }
    Ok(false)
}

/// How many answers the folded busy row `event_id` stands for now (None: it is gone,
/// pruned). Read in the write transaction that adds to it, so the sum is exact.
pub fn folded_count(conn: &Connection, event_id: i64) -> rusqlite::Result<Option<i64>> {
    use rusqlite::OptionalExtension;
    conn.prepare_cached(
        "SELECT count FROM lock_events WHERE event_id = ?1 AND event = 'wait_timeout'",
    )?
    .query_row([event_id], |r| r.get(0))
    .optional()
}

/// Most inbox rows [`move_inbox`] moves in one call (one transaction of the writer).
pub const MOVE_BATCH: usize = 2048;

/// Moves the oldest inbox rows, those with ids below the oldest's plus `limit` (so at
/// most `limit` rows, at least one while any waits), into the indexed log, in one
/// statement pair inside the caller's transaction; returns how many moved.
pub fn move_inbox(conn: &Connection, limit: usize) -> rusqlite::Result<usize> {
    // Not `max(event_id) FROM (... ORDER BY event_id LIMIT ?1)`: perf showed SQLite
    // preparing that statement anew on every run, 15% of a move.
    let upto: Option<i64> = conn
        .prepare_cached("SELECT min(event_id) FROM event_inbox")?
        .query_row([], |r| r.get::<_, Option<i64>>(0))?
        .map(|first: i64| first.saturating_add(limit as i64 - 1));
    let Some(upto) = upto else {
        return Ok(0);
    };
    conn.prepare_cached(&format!(
        "INSERT INTO event_log ({COLUMNS}) SELECT {COLUMNS} FROM event_inbox WHERE event_id <= ?1"
    ))?
    .execute([upto])?;
    let moved = conn
        .prepare_cached("DELETE FROM event_inbox WHERE event_id <= ?1")?
        .execute([upto])?;
    Ok(moved)
}

/// The writer's deferred job ([`crate::store::writer::Tidy`]): one batch of the inbox
/// moved; true while more is waiting.
pub fn tidy(conn: &Connection) -> rusqlite::Result<bool> {
    move_inbox(conn, MOVE_BATCH)?;
    conn.prepare_cached("SELECT EXISTS (SELECT 1 FROM event_inbox)")?
        .query_row([], |r| r.get(0))
}

/// Rows waiting in the inbox.
pub fn inbox_len(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT count(*) FROM event_inbox", [], |r| r.get(0))
}

/// A history row as read back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct EventRow {
    pub event_id: i64,
    #[serde(serialize_with = "ser_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: i64,
    pub namespace: String,
    pub owner: String,
    pub field: String,
    pub event: String,
    pub token: Option<i64>,
    pub pid: Option<i32>,
    pub host: Option<String>,
    pub holder: Option<String>,
    pub operation: Option<String>,
    pub actor: Option<String>,
    pub reason: Option<String>,
    pub held_ms: Option<i64>,
    /// How many occurrences this row stands for (busy answers are folded per minute).
    pub count: i64,
}

fn ser_rfc3339<S: serde::Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::clock::rfc3339(*ms))
}

/// Filters for [`history`]; every filter is optional. Newest first.
#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    pub namespace: Option<String>,
    pub owner: Option<String>,
    pub field: Option<String>,
    pub event: Option<EventKind>,
    pub holder: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// Only events older than this event id (the cursor of the previous page).
    pub before_event_id: Option<i64>,
    pub limit: usize,
}

/// The statement [`history`] runs for `q`, and its arguments.
pub fn history_statement(q: &HistoryQuery) -> (String, Vec<rusqlite::types::Value>) {
    // Only the filters given go into the statement: `(?1 IS NULL OR owner = ?1)` would
    // hide the owner index from the planner and scan the whole table.
    // Both tables get the same filters; the compound's ORDER BY ... LIMIT merges the
    // two ordered arms and stops at the limit, so the log arm walks its index.
    let mut filters = String::new();
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    let mut filter = |column: &str, op: &str, value: rusqlite::types::Value| {
        args.push(value);
        filters.push_str(&format!(" AND {column} {op} ?{}", args.len()));
    };
    if let Some(v) = &q.owner {
        filter("owner", "=", v.clone().into());
    }
    if let Some(v) = &q.field {
        filter("field", "=", v.clone().into());
    }
    if let Some(v) = q.event {
        filter("event", "=", v.as_str().to_string().into());
    }
    if let Some(v) = &q.holder {
        filter("holder", "=", v.clone().into());
    }
    if let Some(v) = q.since_ms {
        filter("at", ">=", v.into());
    }
    if let Some(v) = q.until_ms {
        filter("at", "<", v.into());
    }
    if let Some(v) = q.before_event_id {
        filter("event_id", "<", v.into());
    }
    if let Some(v) = &q.namespace {
        filter("namespace", "=", v.clone().into());
    }
    args.push((q.limit as i64).into());
    let cols = "event_id, at, namespace, owner, field, event, token, pid, host, holder, \
                operation, actor, reason, held_ms, count";
    let sql = format!(
        "SELECT {cols} FROM event_inbox WHERE 1{filters}
         UNION ALL
         SELECT {cols} FROM event_log WHERE 1{filters}
         ORDER BY event_id DESC LIMIT ?{}",
        args.len()
    );
    (sql, args)
}

pub fn history(conn: &Connection, q: &HistoryQuery) -> rusqlite::Result<Vec<EventRow>> {
    let (sql, args) = history_statement(q);
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| {
        Ok(EventRow {
            event_id: r.get(0)?,
            at: r.get(1)?,
            namespace: r.get(2)?,
            owner: r.get(3)?,
            field: r.get(4)?,
            event: r.get(5)?,
            token: r.get(6)?,
            pid: r.get(7)?,
            host: r.get(8)?,
            holder: r.get(9)?,
            operation: r.get(10)?,
            actor: r.get(11)?,
            reason: r.get(12)?,
            held_ms: r.get(13)?,
            count: r.get(14)?,
        })
    })?;
    rows.collect()
}

/// Events of low value, pruned first when history is over its count: busy answers,
/// sampled renewals and external holders seen by a clear.
pub const LOW_VALUE: [EventKind; 3] = [
    EventKind::WaitTimeout,
    EventKind::Renewed,
    EventKind::ObservedExternal,
];

/// Deletes up to `batch` history rows that are older than `cutoff_ms`, or, while there
/// are more than `max_events` rows, the oldest rows beyond that count — low-value events
/// ([`LOW_VALUE`]) before acquisitions, releases, clears and the rest — and never the
/// `acquired` event of a current holder. Returns how many rows went; callers loop until
/// it returns less than `batch`, so no single transaction holds the write lock for long.
/// Every delete walks an index range (`at`; `event, event_id`; the event id).
pub fn prune_events(
    conn: &Connection,
    cutoff_ms: Option<i64>,
    max_events: Option<u64>,
    batch: usize,
) -> rusqlite::Result<usize> {
    // Retention works on the indexed log: whatever waits in the inbox goes there first.
    while move_inbox(conn, MOVE_BATCH)? > 0 {}
    let mut deleted = 0;
    if let Some(cutoff) = cutoff_ms {
        let mut stmt = conn.prepare_cached(
            "DELETE FROM event_log WHERE event_id IN (
                 SELECT event_id FROM event_log INDEXED BY lock_events_by_at
                 WHERE at < ?1
                   AND event_id NOT IN (SELECT acquired_event FROM holders
                                        WHERE acquired_event IS NOT NULL)
                 ORDER BY at LIMIT ?2)",
        )?;
        deleted += stmt.execute(params![cutoff, batch as i64])?;
    }
    let Some(max) = max_events else {
        return Ok(deleted);
    };
    let total: i64 = conn.query_row("SELECT count(*) FROM event_log", [], |r| r.get(0))?;
    let mut excess = (total - max as i64)
        .max(0)
        .min(batch.saturating_sub(deleted) as i64);
    for kind in LOW_VALUE {
        if excess == 0 {
            break;
        }
        let mut stmt = conn.prepare_cached(
            "DELETE FROM event_log WHERE event_id IN (
                 SELECT event_id FROM event_log INDEXED BY lock_events_by_event
                 WHERE event = ?1 ORDER BY event_id LIMIT ?2)",
        )?;
        let n = stmt.execute(params![kind.as_str(), excess])?;
        deleted += n;
        excess -= n as i64;
    }
    if excess > 0 {
        let mut stmt = conn.prepare_cached(
            "DELETE FROM event_log WHERE event_id IN (
                 SELECT event_id FROM event_log
                 WHERE event_id NOT IN (SELECT acquired_event FROM holders
                                        WHERE acquired_event IS NOT NULL)
                 ORDER BY event_id LIMIT ?1)",
        )?;
        deleted += stmt.execute(params![excess])?;
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests;

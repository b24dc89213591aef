//! History rows (`lock_events`): appending events, reading them back with filters, and
//! retention.
//!
//! Invariants: history is append-only except for retention ([`prune_events`]), which never
//! deletes the `acquired` event of a current holder; reads name only the filters given, so
//! the planner can use the owner and time indexes (`tests::hot_statements_use_indexes`).

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

pub fn insert_event(conn: &Connection, e: &NewEvent<'_>) -> rusqlite::Result<i64> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO lock_events (at, lock_id, namespace, owner, field, event, token, pid, host,
             holder, operation, actor, reason, held_ms, count)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
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
    let mut stmt = conn.prepare_cached(
        "UPDATE lock_events SET count = count + ?2, at = max(at, ?3), reason = ?4
         WHERE event_id = ?1",
    )?;
    Ok(stmt.execute(params![event_id, count, at, reason])? == 1)
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

pub fn history(conn: &Connection, q: &HistoryQuery) -> rusqlite::Result<Vec<EventRow>> {
    // Only the filters given go into the statement: `(?1 IS NULL OR owner = ?1)` would
    // hide the owner index from the planner and scan the whole table.
    let mut sql = String::from(
        "SELECT event_id, at, namespace, owner, field, event, token, pid, host, holder,
                operation, actor, reason, held_ms, count
         FROM lock_events WHERE 1",
    );
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    let mut filter = |column: &str, op: &str, value: rusqlite::types::Value| {
        args.push(value);
        sql.push_str(&format!(" AND {column} {op} ?{}", args.len()));
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
    sql.push_str(&format!(" ORDER BY event_id DESC LIMIT ?{}", args.len()));
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
    let mut deleted = 0;
    if let Some(cutoff) = cutoff_ms {
        let mut stmt = conn.prepare_cached(
            "DELETE FROM lock_events WHERE event_id IN (
                 SELECT event_id FROM lock_events INDEXED BY lock_events_by_at
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
    let total: i64 = conn.query_row("SELECT count(*) FROM lock_events", [], |r| r.get(0))?;
    let mut excess = (total - max as i64)
        .max(0)
        .min(batch.saturating_sub(deleted) as i64);
    for kind in LOW_VALUE {
        if excess == 0 {
            break;
        }
        let mut stmt = conn.prepare_cached(
            "DELETE FROM lock_events WHERE event_id IN (
                 SELECT event_id FROM lock_events INDEXED BY lock_events_by_event
                 WHERE event = ?1 ORDER BY event_id LIMIT ?2)",
        )?;
        let n = stmt.execute(params![kind.as_str(), excess])?;
        deleted += n;
        excess -= n as i64;
    }
    if excess > 0 {
        let mut stmt = conn.prepare_cached(
            "DELETE FROM lock_events WHERE event_id IN (
                 SELECT event_id FROM lock_events
                 WHERE event_id NOT IN (SELECT acquired_event FROM holders
                                        WHERE acquired_event IS NOT NULL)
                 ORDER BY event_id LIMIT ?1)",
        )?;
        deleted += stmt.execute(params![excess])?;
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn event(lock_id: i64, owner: &str, kind: EventKind, at: i64) -> NewEvent<'_> {
        NewEvent {
            at,
            lock_id,
            namespace: "conversation",
            owner,
            field: "messages",
            event: Some(kind),
            ..NewEvent::default()
        }
    }

    #[test]
    fn count_retention_prunes_low_value_events_first() {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::store::db::open_and_migrate(&Config::defaults(dir.path())).unwrap();
        conn.execute(
            "INSERT INTO locks (lock_id, namespace, owner, field, file, created_at)
             VALUES (1, 'conversation', 'x', 'messages', 'x_messages.lock', 0)",
            [],
        )
        .unwrap();
        // The unrelated conversation's grants come first (oldest), then a flood of busy
        // answers and renewals.
        for i in 0..25 {
            insert_event(&conn, &event(1, "keep", EventKind::Acquired, i)).unwrap();
            insert_event(&conn, &event(1, "keep", EventKind::Released, i)).unwrap();
        }
        for i in 0..400 {
            let kind = if i % 2 == 0 {
                EventKind::WaitTimeout
            } else {
                EventKind::Renewed
            };
            insert_event(&conn, &event(1, "noisy", kind, 100 + i)).unwrap();
        }
        let count = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
        let mut total = 0;
        loop {
            let n = prune_events(&conn, None, Some(200), 64).unwrap();
            total += n;
            if n < 64 {
                break;
            }
        }
        assert_eq!(total, 250);
        assert_eq!(count("SELECT count(*) FROM lock_events"), 200);
        assert_eq!(
            count("SELECT count(*) FROM lock_events WHERE owner = 'keep'"),
            50,
            "acquisitions and releases outlive busy answers and renewals"
        );
        // Once only valuable events are left, the oldest go.
        prune_events(&conn, None, Some(10), 1000).unwrap();
        assert_eq!(count("SELECT count(*) FROM lock_events"), 10);
        assert_eq!(
            count("SELECT count(*) FROM lock_events WHERE owner = 'keep'"),
            10
        );
    }
}

//! Where history rows that are not part of a grant go: the busy answers folded into
//! `wait_timeout` rows and `observed_external` notes. One trait, so the registry writes
//! them the same way into SQLite (inside the writer's transaction) and into the shared
//! PostgreSQL database.
//!
//! Invariant: `record` makes sure the lock has a row first (its token is not touched),
//! and gives the new row's event id, which `add_to_count` folds later answers into.

use super::history::{self, NewEvent};
use super::pg::PgStore;
use super::{records, StoreError};
use crate::ids::LockKey;
use postgres::types::Type;

pub trait EventSink {
    /// Appends `e` about `key` (whose lock file is `file`); returns its event id.
    fn record(&self, key: &LockKey, file: &str, e: &NewEvent<'_>) -> Result<i64, StoreError>;
    /// How many answers the folded row `event_id` stands for (None: it is gone).
    fn folded_count(&self, event_id: i64) -> Result<Option<i64>, StoreError>;
    /// Adds `count` answers to the folded row; false if it is gone (pruned).
    fn add_to_count(
        &self,
        event_id: i64,
        count: i64,
        at: i64,
        reason: &str,
    ) -> Result<bool, StoreError>;
}

impl EventSink for rusqlite::Connection {
    fn record(&self, key: &LockKey, file: &str, e: &NewEvent<'_>) -> Result<i64, StoreError> {
        let lock_id = records::ensure_lock(self, key, file, e.at)?;
        Ok(history::insert_event(
            self,
            &NewEvent {
                lock_id,
                ..e.clone()
            },
        )?)
    }
    fn folded_count(&self, event_id: i64) -> Result<Option<i64>, StoreError> {
        Ok(history::folded_count(self, event_id)?)
    }
    fn add_to_count(
        &self,
        event_id: i64,
        count: i64,
        at: i64,
        reason: &str,
    ) -> Result<bool, StoreError> {
        Ok(history::add_to_count(self, event_id, count, at, reason)?)
    }
}

fn shared(e: impl std::fmt::Display) -> StoreError {
    StoreError::Shared(e.to_string())
}

/// No connection: refused on an async thread (made again off it), or the database's.
fn conn_error(e: super::pg::PgError) -> StoreError {
    match e {
        super::pg::PgError::WouldWait => StoreError::WouldWait,
        other => shared(other),
    }
}

impl EventSink for PgStore {
    fn record(&self, key: &LockKey, file: &str, e: &NewEvent<'_>) -> Result<i64, StoreError> {
        let kind = e.event.map(|k| k.as_str());
        let pid = e.pid.map(i64::from);
        let row = self
            .conn()
            .map_err(conn_error)?
            .query_typed_one(
                "WITH l AS (
                     INSERT INTO locks (namespace, owner, field, file, created_at)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (namespace, owner, field) DO UPDATE SET file = locks.file
                     RETURNING lock_id)
                 INSERT INTO event_log (at, lock_id, namespace, owner, field, event, token,
                                        pid, host, holder, operation, actor, reason,
                                        held_ms, count)
                 SELECT $5, l.lock_id, $1, $2, $3, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15
                 FROM l RETURNING event_id",
                &[
                    (&key.namespace(), Type::TEXT),
                    (&key.owner(), Type::TEXT),
                    (&key.field(), Type::TEXT),
                    (&file, Type::TEXT),
                    (&e.at, Type::INT8),
                    (&kind, Type::TEXT),
                    (&e.token, Type::INT8),
                    (&pid, Type::INT8),
                    (&e.host, Type::TEXT),
                    (&e.holder, Type::TEXT),
                    (&e.operation, Type::TEXT),
                    (&e.actor, Type::TEXT),
                    (&e.reason, Type::TEXT),
                    (&e.held_ms, Type::INT8),
                    (&e.count.max(1), Type::INT8),
                ],
            )
            .map_err(shared)?;
        row.try_get(0).map_err(shared)
    }
    fn folded_count(&self, event_id: i64) -> Result<Option<i64>, StoreError> {
        let row = self
            .conn()
            .map_err(conn_error)?
            .query_typed_opt(
                "SELECT count FROM event_log WHERE event_id = $1 AND event = 'wait_timeout'",
                &[(&event_id, Type::INT8)],
            )
            .map_err(shared)?;
        row.map(|r| r.try_get(0)).transpose().map_err(shared)
    }
    fn add_to_count(
        &self,
        event_id: i64,
        count: i64,
        at: i64,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let n = self
            .conn()
            .map_err(conn_error)?
            .execute_typed(
                "UPDATE event_log SET count = count + $2, at = greatest(at, $3), reason = $4
                 WHERE event_id = $1",
                &[
                    (&event_id, Type::INT8),
                    (&count, Type::INT8),
                    (&at, Type::INT8),
                    (&reason, Type::TEXT),
                ],
            )
            .map_err(shared)?;
        Ok(n == 1)
    }
}

//! History retention on the shared (PostgreSQL) registry: the same rules as SQLite's
//! `store::history::prune_events`.
//!
//! Invariants: the `acquired` event of a current holder is never deleted; past the row
//! cap the low-value kinds (`store::history::LOW_VALUE`) go first, then the oldest rows;
//! each call deletes at most `batch` rows in one short transaction, so several services
//! pruning at once only share the work.

use super::error::PgError;
use super::store::PgStore;
use crate::store::history::LOW_VALUE;
use postgres::types::Type;

impl PgStore {
    /// Deletes up to `batch` history rows older than `cutoff_ms` or beyond `max_events`.
    pub fn prune_events(
        &self,
        cutoff_ms: Option<i64>,
        max_events: Option<u64>,
        batch: usize,
    ) -> Result<usize, PgError> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction()?;
        let limit = batch as i64;
        let mut deleted = 0u64;
        if let Some(cutoff) = cutoff_ms {
            deleted += tx.execute_typed(
                "DELETE FROM event_log WHERE event_id IN (
                     SELECT event_id FROM event_log
                     WHERE at < $1
                       AND event_id NOT IN (SELECT acquired_event FROM holders
                                            WHERE acquired_event IS NOT NULL)
                     ORDER BY at LIMIT $2)",
                &[(&cutoff, Type::INT8), (&limit, Type::INT8)],
            )?;
        }
        if let Some(max) = max_events {
            let total: i64 = tx
                .query_typed_one("SELECT count(*) FROM event_log", &[])?
                .try_get(0)?;
            let mut excess = (total - max as i64).max(0).min(limit - deleted as i64);
            for kind in LOW_VALUE {
                if excess <= 0 {
                    break;
                }
                let n = tx.execute_typed(
                    "DELETE FROM event_log WHERE event_id IN (
                         SELECT event_id FROM event_log WHERE event = $1
                         ORDER BY event_id LIMIT $2)",
                    &[(&kind.as_str(), Type::TEXT), (&excess, Type::INT8)],
                )?;
                deleted += n;
                excess -= n as i64;
            }
            if excess > 0 {
                deleted += tx.execute_typed(
                    "DELETE FROM event_log WHERE event_id IN (
                         SELECT event_id FROM event_log
                         WHERE event_id NOT IN (SELECT acquired_event FROM holders
                                                WHERE acquired_event IS NOT NULL)
                         ORDER BY event_id LIMIT $1)",
                    &[(&excess, Type::INT8)],
                )?;
            }
        }
        tx.commit()?;
        Ok(deleted as usize)
    }
}

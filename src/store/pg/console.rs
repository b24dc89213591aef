//! Read-only SQL for admins on the shared (PostgreSQL) registry: the same answers and
//! caps as the SQLite console (`store::console`), PostgreSQL's own means.
//!
//! Invariants, each enforced on its own:
//! - one statement: it is prepared with the extended protocol, which refuses several;
//! - it runs in a `READ ONLY` transaction that is always rolled back, with
//!   `statement_timeout` set to the time cap for that transaction only;
//! - rows are read one at a time and stop at the row cap or the byte cap (truncated);
//! - values of the common column types are read directly; for any other type the
//!   database renders each row as JSON (`row_to_json` of the statement as a subquery).
//!
//! Not a sandbox against the database role itself: functions with effects outside
//! transactions (`pg_terminate_backend`, server file reads for superusers) are limited
//! only by the role the service connects as. Give the service a role without superuser
//! rights (README, Several hosts).

use super::PgStore;
use crate::store::console::{Limits, SqlError, SqlResult, MAX_SQL_LEN};
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::Type;
use serde_json::Value;

/// Column types read directly into JSON values.
const DIRECT: [Type; 10] = [
    Type::BOOL,
    Type::INT2,
    Type::INT4,
    Type::INT8,
    Type::FLOAT4,
    Type::FLOAT8,
    Type::TEXT,
    Type::VARCHAR,
    Type::NAME,
    Type::BPCHAR,
];

/// One cell of a directly read row.
fn cell(row: &postgres::Row, i: usize, ty: &Type) -> Result<Value, postgres::Error> {
    Ok(match *ty {
        Type::BOOL => row.try_get::<_, Option<bool>>(i)?.map(Value::from),
        Type::INT2 => row.try_get::<_, Option<i16>>(i)?.map(Value::from),
        Type::INT4 => row.try_get::<_, Option<i32>>(i)?.map(Value::from),
        Type::INT8 => row.try_get::<_, Option<i64>>(i)?.map(Value::from),
        Type::FLOAT4 => row.try_get::<_, Option<f32>>(i)?.map(Value::from),
        Type::FLOAT8 => row.try_get::<_, Option<f64>>(i)?.map(Value::from),
        _ => row.try_get::<_, Option<String>>(i)?.map(Value::from),
    }
    .unwrap_or(Value::Null))
}

impl PgStore {
    /// Runs one read-only statement under `limits`.
    pub fn console(&self, sql: &str, limits: Limits) -> Result<SqlResult, SqlError> {
        let sql = sql.trim().trim_end_matches(';').trim();
        if sql.is_empty() {
            return Err(SqlError::Empty);
        }
        if sql.len() > MAX_SQL_LEN {
            return Err(SqlError::TooLong(sql.len()));
        }
        let mut conn = self.conn().map_err(|e| SqlError::Open(e.to_string()))?;
        let mut tx = conn
            .build_transaction()
            .read_only(true)
            .start()
            .map_err(|e| SqlError::Open(super::describe(&e)))?;
        let ms = limits.max_time.as_millis().max(1);
        tx.batch_execute(&format!("SET LOCAL statement_timeout = {ms}"))
            .map_err(|e| SqlError::Open(super::describe(&e)))?;
        let stmt = tx.prepare(sql).map_err(|e| sql_error(&e, ms))?;
        let columns: Vec<String> = stmt
            .columns()
            .iter()
            .map(|c| c.name().to_string())
            .collect();
        let types: Vec<Type> = stmt.columns().iter().map(|c| c.type_().clone()).collect();
        let mut out = SqlResult {
            columns,
            rows: Vec::new(),
            truncated: false,
            truncated_by: None,
        };
        let params: [&(dyn postgres::types::ToSql + Sync); 0] = [];
        // Types read here directly; any other makes the database render the row as JSON
        // (which needs the statement to be a query it can nest).
        let direct = types.iter().all(|t| DIRECT.contains(t));
        let mut rows = if direct {
            tx.query_raw(&stmt, params)
        } else {
            let wrapped = format!("SELECT row_to_json(q)::text FROM ({sql}) AS q");
            tx.query_raw(wrapped.as_str(), params)
        }
        .map_err(|e| sql_error(&e, ms))?;
        let mut bytes = 0usize;
        while let Some(row) = rows.next().map_err(|e| sql_error(&e, ms))? {
            if out.rows.len() >= limits.max_rows {
                out.truncated = true;
                out.truncated_by = Some("rows".into());
                break;
            }
            let values: Vec<serde_json::Value> = if direct {
                (0..types.len())
                    .map(|i| cell(&row, i, &types[i]))
                    .collect::<Result<_, _>>()
                    .map_err(|e| sql_error(&e, ms))?
            } else {
                let text: String = row.try_get(0).map_err(|e| sql_error(&e, ms))?;
                let object: serde_json::Value =
                    serde_json::from_str(&text).map_err(|e| SqlError::Sqlite(e.to_string()))?;
                out.columns
                    .iter()
                    .map(|c| object.get(c).cloned().unwrap_or(serde_json::Value::Null))
                    .collect()
            };
            bytes += values
                .iter()
                .map(|v| v.to_string().len() + 1)
                .sum::<usize>();
            if bytes > limits.max_bytes {
                out.truncated = true;
                out.truncated_by = Some("bytes".into());
                break;
            }
            out.rows.push(values);
        }
        drop(rows);
        // Read only, and rolled back whatever it was.
        let _ = tx.rollback();
        Ok(out)
    }
}

/// A statement's failure in the console's words: a timeout, a write refused by the read
/// only transaction, several statements, or the database's message.
fn sql_error(e: &postgres::Error, ms: u128) -> SqlError {
    let text = super::describe(e);
    match e.code().map(|c| c.code()) {
        Some("57014") => SqlError::Timeout(ms),
        Some("25006") => SqlError::NotReadOnly(text),
        Some("42601") if text.contains("multiple commands") => SqlError::MultipleStatements,
        _ => SqlError::Sqlite(text),
    }
}

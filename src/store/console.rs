//! Read-only SQL for admins.
//!
//! Invariants, each enforced independently so one mistake does not open the database:
//! - the connection is opened read-only and has `query_only` on;
//! - exactly one statement is accepted, and SQLite must call it read-only;
//! - an authorizer allows only reads, `SELECT`, plain functions and a short list of
//!   schema pragmas without arguments; `ATTACH`, writes, transactions, `load_extension`
//!   and every other pragma are denied while the statement is prepared;
//! - results are capped in rows and in bytes, and the statement in time: a progress
//!   handler stops it at the deadline, and a watchdog interrupts it there too (a single
//!   long step, such as one huge function call, never reaches the progress handler);
//! - SQLite's own limits bound what one statement can build: strings and blobs of at
//!   most [`MAX_VALUE_BYTES`], and a process-wide hard heap limit of [`HEAP_LIMIT_BYTES`],
//!   so no query can take more memory than that.

use super::db;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::types::ValueRef;
use serde::Serialize;
use std::path::Path;
use std::time::{Duration, Instant};

/// Longest SQL text accepted.
pub const MAX_SQL_LEN: usize = 10_000;

/// Longest string or blob a console statement may build (SQLite's length limit).
pub const MAX_VALUE_BYTES: i32 = 16 * 1024 * 1024;

/// SQLite's hard heap limit for the whole process, set when the console first runs.
pub const HEAP_LIMIT_BYTES: i64 = 256 * 1024 * 1024;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_rows: usize,
    /// Roughly the size of the JSON answer: rows stop (truncated) past it.
    pub max_bytes: usize,
    pub max_time: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_rows: 1000,
            max_bytes: 4 * 1024 * 1024,
            max_time: Duration::from_secs(2),
        }
    }
}

/// Sets SQLite's process-wide hard heap limit once.
fn limit_heap() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: sqlite3_hard_heap_limit64 only sets a limit; it is safe to call at any
        // time, from any thread.
        unsafe {
            rusqlite::ffi::sqlite3_hard_heap_limit64(HEAP_LIMIT_BYTES);
        }
    });
}

/// Interrupts a statement that runs past its deadline; stops when dropped.
struct Watchdog {
    done: Option<std::sync::mpsc::Sender<()>>,
}

impl Watchdog {
    fn arm(handle: rusqlite::InterruptHandle, after: Duration) -> Watchdog {
        let (done, wait) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(after) {
                handle.interrupt();
            }
        });
        Watchdog { done: Some(done) }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.done.take());
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error("no SQL given")]
    Empty,
    #[error("the SQL is {0} bytes; the limit is {MAX_SQL_LEN}")]
    TooLong(usize),
    #[error("only one statement at a time is accepted")]
    MultipleStatements,
    #[error("refused: only read-only statements are allowed ({0})")]
    NotReadOnly(String),
    #[error("the query ran longer than {0} ms and was stopped")]
    Timeout(u128),
    #[error("sql error: {0}")]
    Sqlite(String),
    #[error("cannot open the database read-only: {0}")]
    Open(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct SqlResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<serde_json::Value>>,
    pub truncated: bool,
    /// Why rows stopped early: `rows` (the row cap) or `bytes` (the size cap).
    pub truncated_by: Option<String>,
}

/// Schema pragmas that only read and reveal no server paths (`database_list` would).
const ALLOWED_PRAGMAS: [&str; 8] = [
    "table_info",
    "table_xinfo",
    "table_list",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
    "user_version",
];

const DENIED_FUNCTIONS: [&str; 4] = ["load_extension", "readfile", "writefile", "fts3_tokenizer"];

fn authorize(ctx: AuthContext<'_>) -> Authorization {
    match ctx.action {
        AuthAction::Select | AuthAction::Read { .. } | AuthAction::Recursive => {
            Authorization::Allow
        }
        AuthAction::Function { function_name } => {
            if DENIED_FUNCTIONS
                .iter()
                .any(|f| f.eq_ignore_ascii_case(function_name))
            {
                Authorization::Deny
            } else {
                Authorization::Allow
            }
        }
        AuthAction::Pragma {
            pragma_name,
            pragma_value,
        } => {
            let name = pragma_name.to_ascii_lowercase();
            // table_info(x) passes x as the value; only user_version must have none.
            let read_only = ALLOWED_PRAGMAS.contains(&name.as_str())
                && (name != "user_version" || pragma_value.is_none());
            if read_only {
                Authorization::Allow
            } else {
                Authorization::Deny
            }
        }
        _ => Authorization::Deny,
    }
}

fn to_json(v: ValueRef<'_>) -> serde_json::Value {
    match v {
        ValueRef::Null => serde_json::Value::Null,
        ValueRef::Integer(i) => i.into(),
        ValueRef::Real(f) => serde_json::Number::from_f64(f)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned().into(),
        ValueRef::Blob(b) => {
            let hex: String = b.iter().take(64).map(|x| format!("{x:02x}")).collect();
            format!("x'{hex}{}'", if b.len() > 64 { "…" } else { "" }).into()
        }
    }
}

/// Runs one read-only statement against the registry database.
pub fn run(db_path: &Path, sql: &str, limits: Limits) -> Result<SqlResult, SqlError> {
    let sql = sql.trim();
    if sql.is_empty() {
        return Err(SqlError::Empty);
    }
    if sql.len() > MAX_SQL_LEN {
        return Err(SqlError::TooLong(sql.len()));
    }
    limit_heap();
    let conn = db::open_read_only(db_path, Duration::from_millis(500))
        .map_err(|e| SqlError::Open(e.to_string()))?;
    conn.authorizer(Some(authorize))
        .map_err(|e| SqlError::Sqlite(e.to_string()))?;
    conn.set_limit(
        rusqlite::limits::Limit::SQLITE_LIMIT_LENGTH,
        MAX_VALUE_BYTES,
    )
    .map_err(|e| SqlError::Sqlite(e.to_string()))?;
    let deadline = Instant::now() + limits.max_time;
    conn.progress_handler(1_000, Some(move || Instant::now() >= deadline))
        .map_err(|e| SqlError::Sqlite(e.to_string()))?;
    let _watchdog = Watchdog::arm(conn.get_interrupt_handle(), limits.max_time);

    let mut stmt = conn.prepare(sql).map_err(|e| match e {
        rusqlite::Error::MultipleStatement => SqlError::MultipleStatements,
        rusqlite::Error::SqliteFailure(f, msg)
            if f.code == rusqlite::ErrorCode::AuthorizationForStatementDenied =>
        {
            SqlError::NotReadOnly(msg.unwrap_or_else(|| "not authorized".into()))
        }
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::OperationInterrupted =>
        {
            SqlError::Timeout(limits.max_time.as_millis())
        }
        other => SqlError::Sqlite(other.to_string()),
    })?;
    if !stmt.readonly() {
        return Err(SqlError::NotReadOnly("the statement would write".into()));
    }
    let columns: Vec<String> = stmt.column_names().iter().map(|c| c.to_string()).collect();
    let width = columns.len();
    let mut rows_out = Vec::new();
    let mut truncated_by = None;
    let mut bytes = 0usize;
    let map_err = |e: rusqlite::Error| match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::OperationInterrupted) => {
            SqlError::Timeout(limits.max_time.as_millis())
        }
        _ => SqlError::Sqlite(e.to_string()),
    };
    let mut rows = stmt.query([]).map_err(map_err)?;
    while let Some(row) = rows.next().map_err(map_err)? {
        if rows_out.len() == limits.max_rows {
            truncated_by = Some("rows");
            break;
        }
        let mut out = Vec::with_capacity(width);
        for i in 0..width {
            let value = row.get_ref(i).map_err(map_err)?;
            bytes += match value {
                ValueRef::Text(t) => t.len() + 2,
                ValueRef::Blob(b) => b.len().min(64) * 2 + 4,
                _ => 8,
            };
            out.push(to_json(value));
        }
        if bytes > limits.max_bytes {
            truncated_by = Some("bytes");
            break;
        }
        rows_out.push(out);
    }
    Ok(SqlResult {
        columns,
        rows: rows_out,
        truncated: truncated_by.is_some(),
        truncated_by: truncated_by.map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn db() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::defaults(dir.path());
        let conn = db::open_and_migrate(&config).unwrap();
        conn.execute(
            "INSERT INTO locks (namespace, owner, field, file, last_token, created_at)
             VALUES ('conversation', 'c1', 'messages', 'c1_messages.lock', 3, 0)",
            [],
        )
        .unwrap();
        (dir, config.db_path())
    }

    #[test]
    fn selects_work_and_views_are_queryable() {
        let (_d, path) = db();
        let r = run(
            &path,
            "SELECT owner, last_token FROM locks",
            Limits::default(),
        )
        .unwrap();
        assert_eq!(r.columns, vec!["owner", "last_token"]);
        assert_eq!(
            r.rows,
            vec![vec![serde_json::json!("c1"), serde_json::json!(3)]]
        );
        run(&path, "SELECT * FROM current_locks", Limits::default()).unwrap();
        run(&path, "SELECT * FROM stale_locks", Limits::default()).unwrap();
        run(&path, "SELECT * FROM lock_history", Limits::default()).unwrap();
        run(&path, "PRAGMA table_info(locks)", Limits::default()).unwrap();
    }

    #[test]
    fn anything_that_writes_or_escapes_is_refused_and_changes_nothing() {
        let (_d, path) = db();
        let hostile = [
            "DELETE FROM locks",
            "UPDATE locks SET last_token = 0",
            "INSERT INTO locks (namespace, owner, field, file, created_at) VALUES ('a','b','c','d',0)",
            "DROP TABLE locks",
            "CREATE TABLE x (a)",
            "ATTACH DATABASE '/tmp/evil.db' AS evil",
            "PRAGMA writable_schema = ON",
            "PRAGMA journal_mode = DELETE",
            "PRAGMA database_list",
            "PRAGMA user_version = 7",
            "SELECT load_extension('/tmp/x.so')",
            "BEGIN IMMEDIATE",
            "VACUUM",
            "SELECT 1; DELETE FROM locks",
            "WITH x AS (SELECT 1) DELETE FROM locks",
            "REINDEX",
            "ANALYZE",
        ];
        for sql in hostile {
            let r = run(&path, sql, Limits::default());
            assert!(r.is_err(), "{sql} was accepted: {r:?}");
        }
        let r = run(
            &path,
            "SELECT count(*), max(last_token) FROM locks",
            Limits::default(),
        )
        .unwrap();
        assert_eq!(r.rows[0], vec![serde_json::json!(1), serde_json::json!(3)]);
        assert!(!std::path::Path::new("/tmp/evil.db").exists());
    }

    #[test]
    fn rows_and_time_are_capped() {
        let (_d, path) = db();
        let r = run(
            &path,
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n LIMIT 5000) SELECT i FROM n",
            Limits { max_rows: 100, max_time: Duration::from_secs(5), ..Limits::default() },
        )
        .unwrap();
        assert_eq!(r.rows.len(), 100);
        assert!(r.truncated);
        let slow = run(
            &path,
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n",
            Limits { max_rows: 10, max_time: Duration::from_millis(200), ..Limits::default() },
        );
        assert!(matches!(slow, Err(SqlError::Timeout(_))), "{slow:?}");
    }

    #[test]
    fn empty_and_oversized_sql_are_refused() {
        let (_d, path) = db();
        assert!(matches!(
            run(&path, "  ", Limits::default()),
            Err(SqlError::Empty)
        ));
        let long = format!("SELECT '{}'", "a".repeat(MAX_SQL_LEN));
        assert!(matches!(
            run(&path, &long, Limits::default()),
            Err(SqlError::TooLong(_))
        ));
    }

    #[test]
    fn huge_values_are_refused_fast_and_results_are_capped_in_bytes() {
        let (_d, path) = db();
        for sql in [
            "SELECT length(randomblob(1000000000))",
            "SELECT hex(zeroblob(500000000))",
            "SELECT length(printf('%.*c', 100000000, 'x'))",
        ] {
            let t = Instant::now();
            let r = run(&path, sql, Limits::default());
            assert!(r.is_err(), "{sql}: {r:?}");
            assert!(
                t.elapsed() < Duration::from_secs(3),
                "{sql}: {:?}",
                t.elapsed()
            );
        }
        let r = run(
            &path,
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n LIMIT 100)
             SELECT printf('%.*c', 100000, 'x') FROM n",
            Limits {
                max_bytes: 1_000_000,
                ..Limits::default()
            },
        )
        .unwrap();
        assert!(r.truncated && r.rows.len() < 10, "{} rows", r.rows.len());
        assert_eq!(r.truncated_by.as_deref(), Some("bytes"));
    }
}

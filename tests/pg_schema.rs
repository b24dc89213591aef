//! The PostgreSQL schema (`migrations/postgres/`, `store::pg::migrate`) against a real
//! PostgreSQL: migrations apply on a fresh database and exactly once when services start
//! at once, and the schema admins query has SQLite's names, columns and values.
//!
//! Invariants: every test runs against the test process's one throwaway cluster
//! (`PgCluster::shared`) in a database of its own, so they run in parallel; a machine
//! without PostgreSQL fails these tests (with the way to install it), never skips them.

use lockledger::store::pg::migrate::{migrate, MIGRATIONS};
use lockledger_harness::pg::{connect_url, PgCluster};
use rusqlite::Connection;
use std::sync::{Arc, Barrier};

/// The views admins query; SQLite has exactly these (checked below).
const VIEWS: [&str; 4] = [
    "current_locks",
    "stale_locks",
    "lock_history",
    "lock_events",
];
/// Tables whose rows admins may read, with the same columns on both databases (SQLite's
/// event_inbox has no PostgreSQL counterpart).
const TABLES: [&str; 4] = ["locks", "holders", "event_log", "registry_settings"];

/// A fresh database `name` on the shared cluster and a client of it.
fn fresh_db(name: &str) -> (String, postgres::Client) {
    let url = PgCluster::test_database(name);
    let client = connect_url(&url).unwrap_or_else(|e| panic!("{e}"));
    (url, client)
}

fn all_versions() -> Vec<i32> {
    MIGRATIONS.iter().map(|m| m.0).collect()
}

/// A migrated SQLite registry in a temp dir (kept alive with the connection).
fn sqlite() -> (tempfile::TempDir, Connection) {
    let dir = tempfile::tempdir().unwrap();
    let conn =
        lockledger::store::db::open_and_migrate(&lockledger::Config::defaults(dir.path())).unwrap();
    (dir, conn)
}

fn sqlite_columns(conn: &Connection, relation: &str) -> Vec<String> {
    let stmt = conn.prepare(&format!("SELECT * FROM {relation}")).unwrap();
    stmt.column_names().iter().map(|c| c.to_string()).collect()
}

fn pg_columns(client: &mut postgres::Client, relation: &str) -> Vec<String> {
    client
        .query(
            "SELECT column_name::text FROM information_schema.columns
             WHERE table_schema = current_schema() AND table_name = $1
             ORDER BY ordinal_position",
            &[&relation],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn versions_recorded(client: &mut postgres::Client) -> Vec<(i32, i64)> {
    client
        .query(
            "SELECT version, count(*) FROM schema_migrations GROUP BY version ORDER BY version",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[test]
fn migrations_apply_on_a_fresh_database_and_then_are_a_no_op() {
    let (_, mut client) = fresh_db("schema_fresh");
    assert_eq!(migrate(&mut client).unwrap(), all_versions());
    assert_eq!(
        migrate(&mut client).unwrap(),
        Vec::<i32>::new(),
        "a current schema is left alone"
    );
    let recorded = versions_recorded(&mut client);
    let expected: Vec<(i32, i64)> = all_versions().into_iter().map(|v| (v, 1)).collect();
    assert_eq!(recorded, expected);
    for relation in VIEWS.iter().chain(TABLES.iter()) {
        let n: i64 = client
            .query_one(&format!("SELECT count(*) FROM {relation}"), &[])
            .unwrap()
            .get(0);
        let expected = if *relation == "registry_settings" {
            3
        } else {
            0
        };
        assert_eq!(n, expected, "{relation}");
    }
    let max_hold: i64 = client
        .query_one(
            "SELECT value FROM registry_settings WHERE key = 'max_hold_ms'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(max_hold, 600_000);
}

#[test]
fn services_migrating_at_once_apply_each_migration_once() {
    const SERVICES: usize = 8;
    let (url, mut check) = fresh_db("schema_concurrent");
    let start = Arc::new(Barrier::new(SERVICES));
    let threads: Vec<_> = (0..SERVICES)
        .map(|_| {
            let url = url.clone();
            let start = Arc::clone(&start);
            std::thread::spawn(move || {
                // Connected first, so the migrations themselves race.
                let mut client = connect_url(&url).unwrap_or_else(|e| panic!("{e}"));
                start.wait();
                migrate(&mut client).map_err(|e| e.to_string())
            })
        })
        .collect();
    let results: Vec<Result<Vec<i32>, String>> =
        threads.into_iter().map(|t| t.join().unwrap()).collect();
    let applied: Vec<Vec<i32>> = results
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("a concurrent migration failed: {e}")))
        .filter(|a| !a.is_empty())
        .collect();
    assert_eq!(
        applied,
        vec![all_versions()],
        "exactly one service applies the migrations, the others find them applied"
    );
    let expected: Vec<(i32, i64)> = all_versions().into_iter().map(|v| (v, 1)).collect();
    assert_eq!(versions_recorded(&mut check), expected);
}

#[test]
fn views_and_tables_have_sqlite_columns_in_sqlite_order() {
    let (_, mut client) = fresh_db("schema_columns");
    migrate(&mut client).unwrap();
    let (_dir, conn) = sqlite();

    let mut sqlite_views: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'view' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut pg_views: Vec<String> = client
        .query(
            "SELECT table_name::text FROM information_schema.views
             WHERE table_schema = current_schema() ORDER BY table_name",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    sqlite_views.sort();
    pg_views.sort();
    assert_eq!(pg_views, sqlite_views, "the same views on both databases");
    let mut listed: Vec<String> = VIEWS.iter().map(|v| v.to_string()).collect();
    listed.sort();
    assert_eq!(listed, sqlite_views, "VIEWS names every view");

    for relation in VIEWS.iter().chain(TABLES.iter()) {
        let expected = sqlite_columns(&conn, relation);
        assert!(!expected.is_empty(), "{relation}");
        assert_eq!(
            pg_columns(&mut client, relation),
            expected,
            "columns of {relation}"
        );
    }
}

#[test]
fn history_rows_read_the_same_on_both_databases() {
    let (_, mut client) = fresh_db("schema_rows");
    migrate(&mut client).unwrap();
    let (_dir, conn) = sqlite();
    // One lock and two events with the same values on both databases (an `at` with
    // milliseconds, a year 2000 one): lock_history must read the same.
    let lock = "INSERT INTO locks (lock_id, namespace, owner, field, file, created_at)
                VALUES (1, 'conversation', 'conv42', 'messages', 'conv42_messages.lock', 0)";
    let events = "INSERT INTO event_log (event_id, at, lock_id, namespace, owner, field, event,
                                         token, pid, host, holder, operation, held_ms)
                  VALUES (1, 1764530000123, 1, 'conversation', 'conv42', 'messages',
                          'acquired', 7, 4242, 'host-a', 'chat', 'send_message', NULL),
                         (2, 946684800005, 1, 'conversation', 'conv42', 'messages',
                          'released', 7, 4242, 'host-a', 'chat', 'send_message', 1500)";
    conn.execute_batch(&format!("{lock}; {events};")).unwrap();
    client.batch_execute(&format!("{lock}; {events};")).unwrap();

    let query = "SELECT event_id, at, at_utc, owner, event, token, pid, host, held_ms, count
                 FROM lock_history ORDER BY event_id";
    type Row = (
        i64,
        i64,
        String,
        String,
        String,
        i64,
        i64,
        String,
        Option<i64>,
        i64,
    );
    let from_sqlite: Vec<Row> = conn
        .prepare(query)
        .unwrap()
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get(8)?,
                r.get(9)?,
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let from_pg: Vec<Row> = client
        .query(query, &[])
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.get(0),
                r.get(1),
                r.get(2),
                r.get(3),
                r.get(4),
                r.get(5),
                r.get(6),
                r.get(7),
                r.get(8),
                r.get(9),
            )
        })
        .collect();
    assert_eq!(from_sqlite.len(), 2);
    assert_eq!(from_pg, from_sqlite);
    assert_eq!(from_pg[0].2, "2025-11-30T19:13:20.123Z");
}

#[test]
fn current_and_stale_locks_judge_time_by_the_database_clock() {
    let (_, mut client) = fresh_db("schema_clock");
    migrate(&mut client).unwrap();
    // Times relative to the database's clock; the client's clock plays no part.
    client
        .batch_execute(
            "CREATE TEMP TABLE t AS
               SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS now_ms;
             INSERT INTO locks (lock_id, namespace, owner, field, file, created_at)
             SELECT i, 'conversation', 'conv' || i, 'messages', 'conv' || i || '_messages.lock', 0
             FROM generate_series(1, 4) i;
             INSERT INTO holders (lock_id, token, kind, lease_id, holder, operation, host,
                                  locker_pid, acquired_at, renewed_at, expires_at)
             SELECT 1, 1, 'lease', 'expired', 'chat', 'op', 'host-a', 1,
                    now_ms - 5000, now_ms - 5000, now_ms - 1000 FROM t
             UNION ALL
             SELECT 2, 1, 'lease', 'live', 'chat', 'op', 'host-a', 1,
                    now_ms - 5000, now_ms - 5000, now_ms + 600000 FROM t
             UNION ALL
             SELECT 3, 1, 'library', NULL, 'chat', 'op', 'host-b', 1,
                    now_ms - 700000, now_ms - 700000, NULL FROM t
             UNION ALL
             SELECT 4, 1, 'library', NULL, 'chat', 'op', 'host-b', 1,
                    now_ms - 700000, now_ms - 1000, NULL FROM t;",
        )
        .unwrap();
    let stale: Vec<(String, String)> = client
        .query(
            "SELECT owner, stale_reason FROM stale_locks ORDER BY owner",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        stale,
        vec![
            ("conv1".to_string(), "lease_expired".to_string()),
            ("conv3".to_string(), "held_too_long".to_string()),
        ],
        "an expired lease and a holder silent past max_hold (600 s) are stale; a live \
         lease and a recently renewed holder are not"
    );
    for row in client
        .query(
            "SELECT owner, held_ms FROM current_locks ORDER BY owner",
            &[],
        )
        .unwrap()
    {
        let (owner, held): (String, i64) = (row.get(0), row.get(1));
        let floor = if owner == "conv1" || owner == "conv2" {
            5000
        } else {
            700_000
        };
        assert!(
            (floor..floor + 60_000).contains(&held),
            "{owner}: held_ms {held}"
        );
    }
}

#[test]
fn a_schema_newer_than_this_build_is_refused() {
    let (_, mut client) = fresh_db("schema_newer");
    migrate(&mut client).unwrap();
    client
        .batch_execute("INSERT INTO schema_migrations (version) VALUES (999)")
        .unwrap();
    let err = migrate(&mut client).unwrap_err();
    assert!(
        matches!(
            err,
            lockledger::store::pg::MigrateError::TooNew { found: 999, .. }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("newer than this lockledger"),
        "{err}"
    );
}

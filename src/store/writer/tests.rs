use super::*;
use crate::config::Config;
use crate::store::db::{open_and_migrate, open_read_only};

#[test]
fn group_commit_answers_every_caller_and_isolates_failures() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::defaults(dir.path());
    let writer = Writer::start(open_and_migrate(&config).unwrap(), None, None).unwrap();
    let mut threads = Vec::new();
    for i in 0..32i64 {
        let w = writer.clone();
        threads.push(std::thread::spawn(move || {
            w.write(move |c| -> Result<i64, StoreError> {
                if i % 8 == 7 {
                    c.execute("INSERT INTO registry_settings VALUES ('x', 1)", [])?;
                    c.execute("INSERT INTO no_such_table VALUES (1)", [])?;
                }
                c.execute(
                    "INSERT INTO registry_settings (key, value) VALUES (?1, ?2)",
                    (format!("k{i}"), i),
                )?;
                Ok(i)
            })
        }));
    }
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(results.iter().filter(|r| r.is_err()).count(), 4);
    let conn = open_read_only(&config.db_path(), Duration::from_secs(1)).unwrap();
    let n: i64 = conn
        .query_row(
            "SELECT count(*) FROM registry_settings WHERE key LIKE 'k%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 28);
    let x: i64 = conn
        .query_row(
            "SELECT count(*) FROM registry_settings WHERE key = 'x'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        x, 0,
        "a failed job's earlier statements are rolled back too"
    );
}

#[test]
fn a_lone_failing_job_leaves_nothing_and_the_next_write_works() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::defaults(dir.path());
    let writer = Writer::start(open_and_migrate(&config).unwrap(), None, None).unwrap();
    let failed: Result<(), StoreError> = writer.write(|c| {
        c.execute("INSERT INTO registry_settings VALUES ('half', 1)", [])?;
        c.execute("INSERT INTO no_such_table VALUES (1)", [])?;
        Ok(())
    });
    assert!(failed.is_err());
    let ok: Result<i64, StoreError> = writer.write(|c| {
        c.execute("INSERT INTO registry_settings VALUES ('whole', 2)", [])?;
        Ok(2)
    });
    assert_eq!(ok.unwrap(), 2);
    let conn = open_read_only(&config.db_path(), Duration::from_secs(1)).unwrap();
    let keys: Vec<String> = conn
        .prepare("SELECT key FROM registry_settings WHERE key IN ('half', 'whole')")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(keys, ["whole"]);
}

#[test]
fn a_panicking_job_is_answered_and_the_writer_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::defaults(dir.path());
    let writer = Writer::start(open_and_migrate(&config).unwrap(), None, None).unwrap();
    let r: Result<(), StoreError> = writer.write(|_| panic!("boom"));
    assert!(matches!(r, Err(StoreError::JobPanicked)), "{r:?}");
    let ok: Result<u8, StoreError> = writer.write(|_| Ok(7));
    assert_eq!(ok.unwrap(), 7);
}

#[test]
fn under_steady_load_every_caller_is_answered_in_shared_commits() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::defaults(dir.path());
    let writer = Writer::start(open_and_migrate(&config).unwrap(), None, None).unwrap();
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let w = writer.clone();
            std::thread::spawn(move || {
                for i in 0..200 {
                    let k = format!("load{t}_{i}");
                    w.write(move |c| -> Result<(), StoreError> {
                        c.execute(
                            "INSERT INTO registry_settings (key, value) VALUES (?1, 1)",
                            [&k],
                        )?;
                        Ok(())
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let commits = lock(&writer.inner.committer).commits;
    assert!(
        commits < 3200,
        "{commits} commits for 3200 writes: none shared"
    );
    let conn = open_read_only(&config.db_path(), Duration::from_secs(1)).unwrap();
    let n: i64 = conn
        .query_row(
            "SELECT count(*) FROM registry_settings WHERE key LIKE 'load%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 3200);
}

#[test]
fn the_tidy_job_runs_in_the_background_every_few_dozen_commits() {
    use crate::store::history::{self, EventKind, NewEvent};
    let dir = tempfile::tempdir().unwrap();
    let config = Config::defaults(dir.path());
    let writer = Writer::start(
        open_and_migrate(&config).unwrap(),
        None,
        Some(history::tidy),
    )
    .unwrap();
    writer
        .write(|c| -> Result<(), StoreError> {
            c.execute(
                "INSERT INTO locks (lock_id, namespace, owner, field, file, created_at)
                 VALUES (1, 'conversation', 'x', 'messages', 'x_messages.lock', 0)",
                [],
            )?;
            Ok(())
        })
        .unwrap();
    for i in 0..TIDY_EVERY as i64 * 3 {
        writer
            .write(move |c| -> Result<i64, StoreError> {
                let e = NewEvent {
                    at: i,
                    lock_id: 1,
                    namespace: "conversation",
                    owner: "x",
                    field: "messages",
                    event: Some(EventKind::Acquired),
                    ..NewEvent::default()
                };
                Ok(history::insert_event(c, &e)?)
            })
            .unwrap();
    }
    let conn = open_read_only(&config.db_path(), Duration::from_secs(1)).unwrap();
    let count = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while count("SELECT count(*) FROM event_inbox") > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        count("SELECT count(*) FROM event_inbox"),
        0,
        "moved within 10 s"
    );
    assert_eq!(
        count("SELECT count(*) FROM event_log"),
        TIDY_EVERY as i64 * 3
    );
}

#[test]
fn a_no_wait_write_never_waits_and_runs_nothing_when_it_would() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let config = Config::defaults(dir.path());
    let writer = Writer::start(open_and_migrate(&config).unwrap(), None, None).unwrap();
    // Another connection holds SQLite's write lock.
    let other = rusqlite::Connection::open(config.db_path()).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let ran = Arc::new(AtomicBool::new(false));
    let r = Arc::clone(&ran);
    let started = std::time::Instant::now();
    let out: Result<(), StoreError> = no_wait(|| {
        writer.write(move |c| {
            r.store(true, Ordering::SeqCst);
            c.execute("INSERT INTO registry_settings VALUES ('nw', 1)", [])?;
            Ok(())
        })
    });
    assert!(matches!(out, Err(StoreError::WouldWait)), "{out:?}");
    assert!(!ran.load(Ordering::SeqCst), "the job did not run");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "no busy wait: {:?}",
        started.elapsed()
    );
    other.execute_batch("ROLLBACK").unwrap();
    // Free again: the same write commits on this thread, and the writer still works for
    // ordinary callers (the role was handed back).
    let out: Result<(), StoreError> = no_wait(|| {
        writer.write(|c| {
            c.execute("INSERT INTO registry_settings VALUES ('nw', 1)", [])?;
            Ok(())
        })
    });
    out.unwrap();
    writer
        .write(|c| -> Result<(), StoreError> {
            c.execute("INSERT INTO registry_settings VALUES ('after', 1)", [])?;
            Ok(())
        })
        .unwrap();
    let n: i64 = other
        .query_row(
            "SELECT count(*) FROM registry_settings WHERE key IN ('nw', 'after')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 2);
}

#[test]
fn a_no_wait_write_does_not_queue_behind_a_committer() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::defaults(dir.path());
    let writer = Writer::start(open_and_migrate(&config).unwrap(), None, None).unwrap();
    let (inside_tx, inside_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let w = writer.clone();
    let slow = std::thread::spawn(move || {
        w.write(move |_c| -> Result<(), StoreError> {
            let _ = inside_tx.send(());
            let _ = go_rx.recv_timeout(Duration::from_secs(10));
            Ok(())
        })
    });
    inside_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let out: Result<(), StoreError> = no_wait(|| writer.write(|_c| Ok(())));
    assert!(matches!(out, Err(StoreError::WouldWait)), "{out:?}");
    go_tx.send(()).unwrap();
    slow.join().unwrap().unwrap();
    let out: Result<(), StoreError> = no_wait(|| writer.write(|_c| Ok(())));
    out.unwrap();
}

/// Under steady commits from a thread that may block, the writer restarts the WAL every
/// `RESTART_EVERY` commits itself: with no background thread (so no other checkpoint at
/// all), the file stays about one span of commits long instead of holding them all.
#[test]
fn steady_commits_restart_the_wal() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::defaults(dir.path());
    let conn = open_and_migrate(&config).unwrap();
    let writer = Writer::start_with(conn, None, None, false).unwrap();
    let value = "v".repeat(600);
    let commit = |i: u64| {
        let value = value.clone();
        writer
            .write(move |c| -> Result<(), StoreError> {
                c.execute(
                    "INSERT OR REPLACE INTO registry_settings (key, value) VALUES (?1, ?2)",
                    (format!("k{}", i % 64), value),
                )?;
                Ok(())
            })
            .unwrap();
    };
    let wal = || {
        std::fs::metadata(dir.path().join("registry.db-wal"))
            .unwrap()
            .len()
    };
    for i in 0..RESTART_EVERY {
        commit(i);
    }
    // The file keeps the largest size it reached.
    let one_span = wal();
    for i in 0..RESTART_EVERY * 3 {
        commit(i);
    }
    let four_spans = wal();
    assert!(
        four_spans < one_span + one_span / 4,
        "WAL {four_spans} bytes after four spans of {RESTART_EVERY} commits, {one_span} after one"
    );
}

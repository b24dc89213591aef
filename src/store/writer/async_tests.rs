//! The writer's async path with real threads, a real database and a second connection
//! that holds SQLite's write lock: every async write commits and is answered, commits are
//! shared, nothing blocks an async thread, and a reply nobody awaits is dropped off the
//! committing thread.

use super::*;
use crate::config::Config;
use crate::store::db::{open_and_migrate, open_read_only};
use std::path::Path;
use std::time::Instant;

fn writer_in(dir: &Path) -> (Config, Writer) {
    let config = Config::defaults(dir);
    let writer = Writer::start(open_and_migrate(&config).unwrap(), None, None).unwrap();
    (config, writer)
}

fn count(config: &Config, like: &str) -> i64 {
    let conn = open_read_only(&config.db_path(), Duration::from_secs(1)).unwrap();
    conn.query_row(
        "SELECT count(*) FROM registry_settings WHERE key LIKE ?1",
        [like],
        |r| r.get(0),
    )
    .unwrap()
}

/// The job that writes the setting `key`.
fn setting(key: String) -> impl FnOnce(&Connection) -> Result<(), StoreError> + Send + 'static {
    move |c| {
        c.execute("INSERT INTO registry_settings VALUES (?1, 1)", [key])?;
        Ok(())
    }
}

fn commits(w: &Writer) -> u64 {
    lock(&w.inner.committer).commits
}

#[test]
fn many_async_writes_all_commit_and_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let (config, writer) = writer_in(dir.path());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let before = commits(&writer);
    let n = 400i64;
    let results = rt.block_on(async {
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let w = writer.clone();
                tokio::spawn(async move {
                    w.write_async(move |c| -> Result<i64, StoreError> {
                        c.execute(
                            "INSERT INTO registry_settings (key, value) VALUES (?1, ?2)",
                            (format!("a{i}"), i),
                        )?;
                        Ok(i)
                    })
                    .await
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(
                tokio::time::timeout(Duration::from_secs(30), t)
                    .await
                    .expect("an async write was never answered")
                    .unwrap(),
            );
        }
        out
    });
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    assert_eq!(count(&config, "a%"), n);
    let used = commits(&writer) - before;
    assert!(
        used < n as u64,
        "{n} async writes took {used} commits: none were shared"
    );
}

#[test]
fn an_async_write_waits_for_another_process_lock_without_blocking_its_thread() {
    let dir = tempfile::tempdir().unwrap();
    let (config, writer) = writer_in(dir.path());
    // Another connection (as another process would) holds the write lock for 400 ms.
    let other = rusqlite::Connection::open(config.db_path()).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let released = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(400));
        other.execute_batch("COMMIT").unwrap();
    });
    let (answer, ticks) = rt.block_on(async {
        let w = writer.clone();
        let write = tokio::spawn(async move {
            w.write_async(|c| -> Result<(), StoreError> {
                c.execute("INSERT INTO registry_settings VALUES ('late', 1)", [])?;
                Ok(())
            })
            .await
        });
        // The one async thread keeps running other work meanwhile.
        let mut ticks = 0u32;
        let start = Instant::now();
        while !write.is_finished() && start.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(10)).await;
            ticks += 1;
        }
        (write.await.unwrap(), ticks)
    });
    released.join().unwrap();
    assert!(answer.is_ok(), "{answer:?}");
    assert_eq!(count(&config, "late"), 1);
    assert!(
        ticks >= 20,
        "the async thread was blocked while the write waited ({ticks} ticks of 10 ms)"
    );
}

/// Records the thread it is dropped on.
struct DropProbe(Arc<Mutex<Option<String>>>);
impl Drop for DropProbe {
    fn drop(&mut self) {
        let name = std::thread::current().name().unwrap_or("?").to_string();
        *lock(&self.0) = Some(name);
    }
}

#[test]
fn a_reply_nobody_awaits_is_committed_and_dropped_on_the_blocking_pool() {
    let dir = tempfile::tempdir().unwrap();
    let (config, writer) = writer_in(dir.path());
    let dropped_on = Arc::new(Mutex::new(None));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("probe-worker")
        .enable_all()
        .build()
        .unwrap();
    // Hold the committer role from a sync caller so the async job queues behind it.
    let gate = Arc::new((Mutex::new(false), Condvar::new()));
    let (w, g) = (writer.clone(), Arc::clone(&gate));
    let blocker = std::thread::spawn(move || {
        w.write(move |_| -> Result<(), StoreError> {
            let mut open = lock(&g.0);
            while !*open {
                open = g.1.wait(open).unwrap();
            }
            Ok(())
        })
    });
    let start = Instant::now();
    while !lock(&writer.inner.queue).committing {
        assert!(start.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(1));
    }
    let probe = Arc::clone(&dropped_on);
    rt.block_on(async {
        let fut = writer.write_async(move |c| -> Result<DropProbe, StoreError> {
            c.execute("INSERT INTO registry_settings VALUES ('orphan', 1)", [])?;
            Ok(DropProbe(probe))
        });
        // The request goes away before the commit.
        drop(fut);
    });
    *lock(&gate.0) = true;
    gate.1.notify_all();
    blocker.join().unwrap().unwrap();
    let start = Instant::now();
    while lock(&dropped_on).is_none() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        count(&config, "orphan"),
        1,
        "the orphaned job was committed"
    );
    let on = lock(&dropped_on)
        .clone()
        .expect("the unheard reply was never dropped");
    assert_ne!(on, "lockledger-drain", "dropped on the committing thread");
    assert_ne!(on, "?", "dropped on an unnamed (committing) thread");
    drop(rt);
}

#[test]
fn sync_and_async_writers_mixed_are_all_answered() {
    let dir = tempfile::tempdir().unwrap();
    let (config, writer) = writer_in(dir.path());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sync: Vec<_> = (0..8)
        .map(|t| {
            let w = writer.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    w.write(move |c| -> Result<(), StoreError> {
                        c.execute(
                            "INSERT INTO registry_settings VALUES (?1, 1)",
                            [format!("s{t}-{i}")],
                        )?;
                        Ok(())
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    rt.block_on(async {
        let tasks: Vec<_> = (0..8)
            .map(|t| {
                let w = writer.clone();
                tokio::spawn(async move {
                    for i in 0..50 {
                        w.write_async(setting(format!("y{t}-{i}"))).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .expect("async writers stuck")
                .unwrap();
        }
    });
    for t in sync {
        t.join().unwrap();
    }
    assert_eq!(count(&config, "s%"), 400);
    assert_eq!(count(&config, "y%"), 400);
}

#[test]
fn async_writes_ready_together_share_one_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (config, writer) = writer_in(dir.path());
    // One async thread: the first write takes the committer role and yields; the others,
    // ready on the same thread, queue behind it and are committed with it.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let before = commits(&writer);
    rt.block_on(async {
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let w = writer.clone();
                tokio::spawn(async move { w.write_async(setting(format!("together{i}"))).await })
            })
            .collect();
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("an async write was never answered")
                .unwrap()
                .unwrap();
        }
    });
    assert_eq!(count(&config, "together%"), 8);
    assert_eq!(commits(&writer) - before, 1, "8 ready writes, one commit");
}

#[test]
fn a_write_dropped_before_its_commit_is_committed_and_frees_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let (config, writer) = writer_in(dir.path());
    // The writer is idle: this write takes the committer role, and its request goes away
    // before the future is ever polled, so it never commits on its own thread.
    let fut = writer.write_async(|c| -> Result<(), StoreError> {
        c.execute("INSERT INTO registry_settings VALUES ('dropped', 1)", [])?;
        Ok(())
    });
    assert!(lock(&writer.inner.queue).committing);
    drop(fut);
    // The drain thread takes the role over and commits the job.
    let start = Instant::now();
    while count(&config, "dropped") == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the dropped write was never committed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // And the role is free again: a later write is answered.
    let (tx, rx) = mpsc::channel();
    let w = writer.clone();
    std::thread::spawn(move || {
        let _ = tx.send(w.write(|c| -> Result<(), StoreError> {
            c.execute("INSERT INTO registry_settings VALUES ('after', 1)", [])?;
            Ok(())
        }));
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the writer was left without a committer")
        .unwrap();
    assert_eq!(count(&config, "after"), 1);
}

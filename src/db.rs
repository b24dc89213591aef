//! The SQLite store: connection setup, migrations, a read pool and one group-committing
//! writer.
//!
//! Invariants:
//! - Every connection runs with WAL, `synchronous=NORMAL`, a busy timeout and foreign
//!   keys on (set per connection, since SQLite forgets them on close).
//! - Every write goes through [`Writer::write`] and runs inside a `BEGIN IMMEDIATE`
//!   transaction (a deferred read-then-write transaction fails with "database is locked"
//!   under contention, whatever the busy timeout).
//! - Group commit by flat combining: whichever caller holds the connection takes every job
//!   waiting in the queue, runs each in its own savepoint inside one transaction, commits
//!   once, and only then answers each caller. A caller never hears "ok" for a write that
//!   is not committed, and one failing job rolls back only its own savepoint. A job must
//!   never call `Writer::write` itself (it would wait for a commit that cannot start).
//! - Checkpoints are off the write path: the writer's connection never auto-checkpoints
//!   (a checkpoint fsyncs the database, which would stall every caller in that batch);
//!   a checkpointer thread with its own connection runs passive checkpoints every second
//!   and after every [`CHECKPOINT_EVERY`] commits.
//! - Migrations run under an exclusive flock on `registry.migrate.lock`, so several
//!   processes starting on a fresh storage directory at once apply them exactly once.

use crate::config::Config;
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{Connection, OpenFlags};
use rusqlite_migration::{Migrations, M};
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// The migrations, in order. `tests::every_migration_file_is_listed` keeps this list and
/// the `migrations/` directory in step.
pub const MIGRATIONS: &[(&str, &str)] =
    &[("0001_init.sql", include_str!("../migrations/0001_init.sql"))];

/// Most jobs committed in one transaction; bounds the time a batch holds the write lock.
const MAX_BATCH: usize = 256;

/// Commits between checkpoint nudges (about 1000 WAL pages of typical grants).
pub const CHECKPOINT_EVERY: u64 = 200;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database is busy; try again")]
    Busy,
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot prepare storage directory: {0}")]
    Io(#[from] std::io::Error),
    #[error("database migration failed: {0}")]
    Migration(String),
    #[error("commit failed: {0}")]
    CommitFailed(String),
    #[error("a database job panicked; its changes were rolled back")]
    JobPanicked,
}

impl StoreError {
    /// Busy and locked errors become [`StoreError::Busy`] so callers can answer 503.
    pub fn from_sqlite(e: rusqlite::Error) -> StoreError {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy) | Some(rusqlite::ErrorCode::DatabaseLocked) => {
                StoreError::Busy
            }
            _ => StoreError::Sqlite(e),
        }
    }
}

pub type ReadPool = r2d2::Pool<SqliteConnectionManager>;

/// Per-connection settings; SQLite keeps none of them across connections.
pub fn configure(conn: &Connection, busy_timeout: Duration) -> rusqlite::Result<()> {
    conn.busy_timeout(busy_timeout)?;
    conn.execute_batch("PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;")?;
    Ok(())
}

fn migrations() -> Migrations<'static> {
    Migrations::new(MIGRATIONS.iter().map(|(_, sql)| M::up(sql)).collect())
}

/// Opens (creating if needed) the database and brings its schema up to date.
pub fn open_and_migrate(config: &Config) -> Result<Connection, StoreError> {
    std::fs::create_dir_all(&config.storage_dir)?;
    let path = config.db_path();
    let migrate_lock = config.storage_dir.join("registry.migrate.lock");
    // Another process may be migrating right now: wait for it rather than race it.
    let _exclusive = crate::flock::acquire_until(
        &migrate_lock,
        Instant::now() + Duration::from_secs(60),
        &|| false,
    )
    .map_err(|e| StoreError::Migration(e.to_string()))?;
    let mut conn = Connection::open(&path).map_err(StoreError::from_sqlite)?;
    configure(&conn, config.busy_timeout).map_err(StoreError::from_sqlite)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(StoreError::from_sqlite)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Migration(format!(
            "the database refused WAL mode (journal_mode={mode})"
        )));
    }
    migrations()
        .to_latest(&mut conn)
        .map_err(|e| StoreError::Migration(e.to_string()))?;
    conn.execute(
        "INSERT INTO registry_settings (key, value) VALUES ('max_hold_ms', ?1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value WHERE value <> excluded.value",
        [config.max_hold.as_millis() as i64],
    )
    .map_err(StoreError::from_sqlite)?;
    Ok(conn)
}

pub fn read_pool(config: &Config, max_size: u32) -> Result<ReadPool, StoreError> {
    let busy = config.busy_timeout;
    let manager = SqliteConnectionManager::file(config.db_path())
        .with_flags(
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_URI,
        )
        .with_init(move |c| configure(c, busy));
    r2d2::Pool::builder()
        .max_size(max_size)
        .min_idle(Some(1))
        .connection_timeout(config.pool_timeout)
        .build(manager)
        .map_err(|_| StoreError::Busy)
}

/// A read-only connection for admin SQL: opened read-only, `query_only` on top.
pub fn open_read_only(db_path: &Path, busy_timeout: Duration) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        db_path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(StoreError::from_sqlite)?;
    conn.busy_timeout(busy_timeout)
        .map_err(StoreError::from_sqlite)?;
    conn.execute_batch("PRAGMA query_only = ON;")
        .map_err(StoreError::from_sqlite)?;
    Ok(conn)
}

type Reply = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// A job runs against the open transaction (or is told `None`: the batch could not
/// start) and hands back whether it succeeded plus how to answer after the commit.
type Job = Box<dyn FnOnce(Option<&Connection>) -> (bool, Reply) + Send>;

/// Handle to the single writer. Cloning shares it.
///
/// There is no writer thread: the caller that finds the connection free becomes the
/// committer and commits every job queued at that moment, its own included, in one
/// transaction (flat combining). A lone caller therefore never hands its work to another
/// thread, and callers that arrive while a commit is running are batched together.
#[derive(Clone)]
pub struct Writer {
    inner: Arc<WriterInner>,
}

struct WriterInner {
    conn: Mutex<Committer>,
    queue: Mutex<Vec<Job>>,
}

struct Committer {
    conn: Connection,
    commits: u64,
    wal: Option<std::path::PathBuf>,
    // Dropped with the writer, which tells the checkpointer to finish.
    nudge: mpsc::SyncSender<()>,
}

/// WAL size past which the committer folds it back (a checkpoint that truncates).
const WAL_LIMIT_BYTES: u64 = 64 * 1024 * 1024;

impl Writer {
    pub fn start(conn: Connection) -> Result<Writer, StoreError> {
        conn.execute_batch("PRAGMA wal_autocheckpoint = 0")
            .map_err(StoreError::from_sqlite)?;
        let db_path = conn
            .path()
            .map(std::path::PathBuf::from)
            .filter(|p| !p.as_os_str().is_empty());
        let (nudge, nudges) = mpsc::sync_channel::<()>(1);
        if let Some(path) = db_path.clone() {
            std::thread::Builder::new()
                .name("lockledger-checkpoint".into())
                .spawn(move || run_checkpointer(&path, nudges))?;
        }
        let wal = db_path.map(|p| {
            let mut w = p.into_os_string();
            w.push("-wal");
            std::path::PathBuf::from(w)
        });
        Ok(Writer {
            inner: Arc::new(WriterInner {
                conn: Mutex::new(Committer {
                    conn,
                    commits: 0,
                    wal,
                    nudge,
                }),
                queue: Mutex::new(Vec::new()),
            }),
        })
    }

    /// Runs `f` inside a write transaction and returns its result once committed.
    pub fn write<R, E, F>(&self, f: F) -> Result<R, E>
    where
        F: FnOnce(&Connection) -> Result<R, E> + Send + 'static,
        R: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let (tx, rx) = mpsc::sync_channel::<Result<R, E>>(1);
        let job: Job = Box::new(move |conn| match conn {
            None => (
                false,
                Box::new(move |res: Result<(), StoreError>| {
                    let err = res.err().unwrap_or(StoreError::Busy);
                    let _ = tx.send(Err(E::from(err)));
                }),
            ),
            Some(conn) => {
                let out = f(conn);
                (
                    out.is_ok(),
                    Box::new(move |commit: Result<(), StoreError>| {
                        let answer = match commit {
                            Ok(()) => out,
                            Err(e) => Err(E::from(e)),
                        };
                        let _ = tx.send(answer);
                    }),
                )
            }
        });
        lock(&self.inner.queue).push(job);
        loop {
            match rx.try_recv() {
                Ok(answer) => return answer,
                Err(mpsc::TryRecvError::Disconnected) => {
                    return Err(E::from(StoreError::JobPanicked))
                }
                Err(mpsc::TryRecvError::Empty) => {}
            }
            let free = match self.inner.conn.try_lock() {
                Ok(guard) => Some(guard),
                Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) => None,
            };
            if let Some(committer) = free {
                self.commit_until_empty(committer);
                continue;
            }
            // Someone else is committing, and will take our job with its next batch.
            match rx.recv_timeout(Duration::from_millis(2)) {
                Ok(answer) => return answer,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(E::from(StoreError::JobPanicked))
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
    }
}

impl Writer {
    /// Commits queued jobs until the queue is empty. After letting go of the connection
    /// it looks once more: a job pushed between the last drain and the unlock saw the
    /// connection taken, and its caller is waiting for someone to commit it.
    fn commit_until_empty<'a>(&'a self, mut committer: std::sync::MutexGuard<'a, Committer>) {
        loop {
            loop {
                let batch: Vec<Job> = {
                    let mut queue = lock(&self.inner.queue);
                    let n = queue.len().min(MAX_BATCH);
                    queue.drain(..n).collect()
                };
                if batch.is_empty() {
                    break;
                }
                committer.commit_batch(batch);
            }
            drop(committer);
            if lock(&self.inner.queue).is_empty() {
                return;
            }
            committer = match self.inner.conn.try_lock() {
                Ok(guard) => guard,
                Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                // Whoever holds it now drains the queue.
                Err(std::sync::TryLockError::WouldBlock) => return,
            };
        }
    }
}

/// A poisoned lock is still consistent here: jobs run under `catch_unwind`, and the queue
/// is only pushed to or taken whole.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Passive checkpoints every second or when nudged; stops when the writer is gone.
fn run_checkpointer(path: &Path, nudges: mpsc::Receiver<()>) {
    let conn = match Connection::open(path) {
        Ok(c) => c,
        Err(e) => {
            log::warn!("checkpointer: cannot open the database: {e}");
            return;
        }
    };
    let _ = conn.busy_timeout(Duration::from_millis(100));
    loop {
        match nudges.recv_timeout(Duration::from_secs(1)) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    log::debug!("checkpointer: {e}");
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // Last chance to fold the WAL into the database before the process ends.
                let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
                return;
            }
        }
    }
}

impl Committer {
    /// Commits `batch` in one IMMEDIATE transaction and answers every job.
    fn commit_batch(&mut self, mut batch: Vec<Job>) {
        if batch.is_empty() {
            return;
        }
        let conn = &self.conn;
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            let msg = StoreError::from_sqlite(e).to_string();
            log::warn!("writer: cannot begin a transaction: {msg}");
            for job in batch {
                let (_, reply) = job(None);
                reply(Err(StoreError::Busy));
            }
            return;
        }
        let mut replies: Vec<(bool, Reply)> = Vec::with_capacity(batch.len());
        if batch.len() == 1 {
            // Alone in its transaction, a job needs no savepoint: a failure rolls back all.
            if let Some(job) = batch.pop() {
                match std::panic::catch_unwind(AssertUnwindSafe(|| job(Some(conn)))) {
                    Ok((true, reply)) => replies.push((true, reply)),
                    Ok((false, reply)) => {
                        let _ = conn.execute_batch("ROLLBACK");
                        reply(Ok(()));
                        return;
                    }
                    Err(_) => {
                        log::error!("writer: a job panicked; its changes were rolled back");
                        let _ = conn.execute_batch("ROLLBACK");
                        return;
                    }
                }
            }
        }
        for job in batch {
            if conn.execute_batch("SAVEPOINT job").is_err() {
                let (_, reply) = job(None);
                replies.push((false, reply));
                continue;
            }
            match std::panic::catch_unwind(AssertUnwindSafe(|| job(Some(conn)))) {
                Ok((true, reply)) => {
                    let _ = conn.execute_batch("RELEASE job");
                    replies.push((true, reply));
                }
                Ok((false, reply)) => {
                    let _ = conn.execute_batch("ROLLBACK TO job; RELEASE job");
                    replies.push((false, reply));
                }
                Err(_) => {
                    // The job's reply sender went with it; its caller sees JobPanicked.
                    log::error!("writer: a job panicked; its changes were rolled back");
                    let _ = conn.execute_batch("ROLLBACK TO job; RELEASE job");
                }
            }
        }
        match conn.execute_batch("COMMIT") {
            Ok(()) => {
                for (_, reply) in replies {
                    reply(Ok(()));
                }
                self.after_commit();
            }
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                let err = StoreError::from_sqlite(e);
                log::warn!("writer: commit failed: {err}");
                for (_, reply) in replies {
                    reply(Err(match &err {
                        StoreError::Busy => StoreError::Busy,
                        other => StoreError::CommitFailed(other.to_string()),
                    }));
                }
            }
        }
    }

    /// Nudges the checkpointer now and then, and folds the WAL back when it has grown
    /// past [`WAL_LIMIT_BYTES`] (passive checkpoints cannot reset a WAL that is written
    /// without pause).
    fn after_commit(&mut self) {
        self.commits += 1;
        if self.commits % CHECKPOINT_EVERY != 0 {
            return;
        }
        let _ = self.nudge.try_send(());
        let big = self
            .wal
            .as_ref()
            .and_then(|w| std::fs::metadata(w).ok())
            .is_some_and(|m| m.len() > WAL_LIMIT_BYTES);
        if big {
            if let Err(e) = self
                .conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            {
                log::debug!("writer: truncating checkpoint: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_migration_file_is_listed_in_order() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        on_disk.sort();
        let listed: Vec<String> = MIGRATIONS.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(on_disk, listed);
        for (i, name) in listed.iter().enumerate() {
            assert!(name.starts_with(&format!("{:04}_", i + 1)), "{name}");
        }
        migrations().validate().unwrap();
    }

    #[test]
    fn migrating_twice_is_a_no_op_and_creates_the_views() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::defaults(dir.path());
        drop(open_and_migrate(&config).unwrap());
        let conn = open_and_migrate(&config).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        for view in ["current_locks", "stale_locks", "lock_history"] {
            let n: i64 = conn
                .query_row(&format!("SELECT count(*) FROM {view}"), [], |r| r.get(0))
                .unwrap();
            assert_eq!(n, 0, "{view}");
        }
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn group_commit_answers_every_caller_and_isolates_failures() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::defaults(dir.path());
        let writer = Writer::start(open_and_migrate(&config).unwrap()).unwrap();
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
}

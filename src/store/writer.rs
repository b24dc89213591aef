//! The one writer: every write of this process goes through [`Writer::write`].
//!
//! Invariants:
//! - Every write runs inside a `BEGIN IMMEDIATE` transaction (a deferred read-then-write
//!   transaction fails with "database is locked" under contention, whatever the busy
//!   timeout).
//! - Group commit by flat combining: whichever caller holds the connection takes every job
//!   waiting in the queue, runs each in its own savepoint inside one transaction, commits
//!   once, and only then answers each caller. A caller never hears "ok" for a write that
//!   is not committed, and one failing job rolls back only its own savepoint. A job must
//!   never call `Writer::write` itself (it would wait for a commit that cannot start).
//! - Checkpoints are off the write path: the writer's connection never auto-checkpoints
//!   (a checkpoint fsyncs the database, which would stall every caller in that batch);
//!   a checkpointer thread with its own connection runs passive checkpoints every second
//!   and after every [`CHECKPOINT_EVERY`] commits.

use super::{StoreError, Watch};
use rusqlite::Connection;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// Most jobs committed in one transaction; bounds the time a batch holds the write lock.
const MAX_BATCH: usize = 256;

/// Commits between checkpoint nudges (about 1000 WAL pages of typical grants).
pub const CHECKPOINT_EVERY: u64 = 200;

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

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Writer")
    }
}

struct WriterInner {
    conn: Mutex<Committer>,
    queue: Mutex<Vec<Job>>,
}

struct Committer {
    conn: Connection,
    /// Checked before every batch: never write into a deleted or replaced database.
    watch: Option<Arc<Watch>>,
    commits: u64,
    wal: Option<std::path::PathBuf>,
    // Dropped with the writer, which tells the checkpointer to finish.
    nudge: mpsc::SyncSender<()>,
}

/// WAL size past which the committer folds it back (a checkpoint that truncates).
const WAL_LIMIT_BYTES: u64 = 64 * 1024 * 1024;

impl Writer {
    /// A writer on `conn`; with a `watch`, no batch starts once the database file is gone.
    pub fn start(conn: Connection, watch: Option<Arc<Watch>>) -> Result<Writer, StoreError> {
        conn.execute_batch("PRAGMA wal_autocheckpoint = 0")
            .map_err(StoreError::from_sqlite)?;
        let db_path = conn
            .path()
            .map(std::path::PathBuf::from)
            .filter(|p| !p.as_os_str().is_empty());
        let (nudge, nudges) = mpsc::sync_channel::<()>(1);
        if let Some(path) = db_path.clone() {
            let watch = watch.clone();
            std::thread::Builder::new()
                .name("lockledger-checkpoint".into())
                .spawn(move || run_checkpointer(&path, nudges, watch))?;
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
                    watch,
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
fn run_checkpointer(path: &Path, nudges: mpsc::Receiver<()>, watch: Option<Arc<Watch>>) {
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
                if watch.as_ref().is_some_and(|w| w.gone().is_some()) {
                    return;
                }
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    log::debug!("checkpointer: {e}");
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                if watch.as_ref().is_some_and(|w| w.gone().is_some()) {
                    return;
                }
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
        if let Some(why) = self.watch.as_ref().and_then(|w| w.gone()) {
            for job in batch {
                let (_, reply) = job(None);
                reply(Err(StoreError::Lost(why.clone())));
            }
            return;
        }
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
    use crate::config::Config;
    use crate::store::db::{open_and_migrate, open_read_only};

    #[test]
    fn group_commit_answers_every_caller_and_isolates_failures() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::defaults(dir.path());
        let writer = Writer::start(open_and_migrate(&config).unwrap(), None).unwrap();
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

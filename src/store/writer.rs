//! The one writer: every write of this process goes through [`Writer::write`].
//!
//! Invariants:
//! - Every write runs inside a `BEGIN IMMEDIATE` transaction (a deferred read-then-write
//!   transaction fails with "database is locked" under contention, whatever the busy
//!   timeout).
//! - Group commit by flat combining: the caller that finds nobody committing becomes the
//!   committer; it takes up to [`MAX_BATCH`] queued jobs, runs each in its own savepoint
//!   inside one transaction, commits once, and only then answers each caller. A caller
//!   never hears "ok" for a write that is not committed, and one failing job rolls back
//!   only its own savepoint. A job must never call `Writer::write` itself.
//! - Nobody commits for others indefinitely: a committer stops as soon as its own job is
//!   answered and hands the role to the caller at the head of the queue. Nobody polls:
//!   a waiting caller sleeps until it is answered or handed the role.
//! - A lone caller commits on its own thread (no hand-off to another thread).
//! - The writer never waits for readers. A background thread with its own connection
//!   runs passive checkpoints every second (or every [`CHECKPOINT_EVERY`] commits), and
//!   when the WAL has passed [`WAL_LIMIT_BYTES`] a truncating one that waits at most
//!   [`TRUNCATE_WAIT`] for readers (during which it holds writers back). Every
//!   [`RESTART_EVERY`] commits, a committer that is not on an async thread runs a
//!   passive checkpoint (which waits for nobody) on the writer's connection between
//!   transactions, so the WAL restarts from its start under steady load.
//! - A waiting caller that heads the queue spins briefly before it sleeps, one waiter at
//!   a time (`ticket`).
//! - Inside [`no_wait`] (the service's async threads) a write never waits: it commits at
//!   once on the calling thread when nobody commits or queues and SQLite's write lock is
//!   free (busy timeout 0 for its `BEGIN`), else it runs nothing and answers
//!   [`StoreError::WouldWait`], and the caller makes it again on the blocking pool.
//! - Deferred work ([`Tidy`], the history inbox move) runs as an ordinary job of this
//!   writer, submitted by that background thread every [`TIDY_EVERY`] commits and every
//!   second: callers never run it, they only queue behind it like behind any other job.
//! - With a [`Watch`], no batch starts once the database file is gone.
//! - Async callers ([`Writer::write_async`], the service's requests) never block their
//!   thread: one that finds the writer idle yields once (so the requests ready on its
//!   thread queue behind it), then commits the queued async jobs on its own thread as in
//!   no-wait mode; otherwise its job joins the queue and its future waits for the reply.
//!   Whoever commits takes its job in the next batch; when the committer role would pass
//!   to a queued async job (nobody sleeps on it), the writer's drain thread takes the
//!   role instead and commits until a sleeping caller heads the queue or the queue is
//!   empty (see `drain`).
//!
//! Files: this one owns the queue and the committer role; `commit` runs a batch and
//! answers it; `drain` is the async side; `background` the tidy job and checkpoints;
//! `ticket` a waiting caller's place.

use super::{StoreError, Watch};
use rusqlite::Connection;
use std::cell::Cell;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

thread_local! {
    /// Set by [`no_wait`] for the duration of its closure.
    static NO_WAIT: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with every [`Writer::write`] on this thread in no-wait mode (see the module
/// header): a write that cannot commit at once fails with [`StoreError::WouldWait`]
/// without running.
pub fn no_wait<T>(f: impl FnOnce() -> T) -> T {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            NO_WAIT.set(self.0);
        }
    }
    let _reset = Reset(NO_WAIT.replace(true));
    f()
}

/// Is this thread inside [`no_wait`] (an async thread, where nothing may block)?
pub fn in_no_wait() -> bool {
    NO_WAIT.get()
}

/// Most jobs committed in one transaction; bounds the time a batch holds the write lock.
pub const MAX_BATCH: usize = 256;

/// Commits between nudges of the background thread, which then runs the [`Tidy`] job.
pub const TIDY_EVERY: u64 = 64;

/// Commits between checkpoints (at least; about 1000 WAL pages of typical grants).
pub const CHECKPOINT_EVERY: u64 = 192;

/// Commits between checkpoints the committer runs itself, between transactions, so the
/// WAL restarts under steady load (see `commit`'s `restart_wal`).
pub const RESTART_EVERY: u64 = 2048;

/// Deferred work run as a writer job by the background thread; returns whether there is
/// more to do right away.
pub type Tidy = fn(&Connection) -> rusqlite::Result<bool>;

/// WAL size past which the checkpointer folds it back (a checkpoint that truncates).
pub const WAL_LIMIT_BYTES: u64 = 64 * 1024 * 1024;

/// Longest a truncating checkpoint waits for readers (and holds writers back).
pub const TRUNCATE_WAIT: Duration = Duration::from_millis(100);

type Reply = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// A job runs against the open transaction (or is told `None`: the batch could not
/// start) and hands back whether it succeeded plus how to answer after the commit.
type Job = Box<dyn FnOnce(Option<&Connection>) -> (bool, Reply) + Send>;

struct Entry {
    job: Job,
    ticket: Arc<Ticket>,
    /// A caller sleeps on the ticket and can be handed the committer role (an async
    /// caller cannot: it awaits its reply instead).
    waits: bool,
}

#[derive(Default)]
struct Queue {
    entries: VecDeque<Entry>,
    /// Someone holds the committer role.
    committing: bool,
    /// The role passes to the drain thread (the queue's head is an async job).
    drain: bool,
}

/// Handle to the single writer. Cloning shares it.
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
    queue: Mutex<Queue>,
    /// Which of this writer's waiters may spin (see `ticket`).
    spin: SpinSlot,
    /// Locked only by the holder of the committer role, so never contended.
    committer: Mutex<Committer>,
    /// Wakes the drain thread (with `queue`) when the role passes to it.
    drain_wake: Condvar,
}

struct Committer {
    conn: Connection,
    /// The connection's busy timeout, restored after a no-wait `BEGIN`.
    busy_timeout: Duration,
    watch: Option<Arc<Watch>>,
    commits: u64,
    /// A checkpoint between transactions is due (see `commit`'s `restart_wal`).
    restart_due: bool,
    // Dropped with the writer, which tells the checkpointer to finish.
    nudge: mpsc::SyncSender<()>,
}

impl WriterInner {
    /// Passes the committer role to the drain thread (`q` is this writer's queue, locked).
    fn to_drain(&self, q: &mut Queue) {
        q.drain = true;
        self.drain_wake.notify_one();
    }
}

impl Writer {
    /// A writer on `conn`; with a `watch`, no batch starts once the database file is gone;
    /// with `tidy`, that job runs every [`TIDY_EVERY`] commits and every second.
    pub fn start(
        conn: Connection,
        watch: Option<Arc<Watch>>,
        tidy: Option<Tidy>,
    ) -> Result<Writer, StoreError> {
        Writer::start_with(conn, watch, tidy, true)
    }

    /// [`Writer::start`], optionally without the background thread (for tests that must
    /// see the writer's own checkpoints alone).
    fn start_with(
        conn: Connection,
        watch: Option<Arc<Watch>>,
        tidy: Option<Tidy>,
        background: bool,
    ) -> Result<Writer, StoreError> {
        conn.execute_batch("PRAGMA wal_autocheckpoint = 0")
            .map_err(StoreError::from_sqlite)?;
        let db_path = conn
            .path()
            .map(PathBuf::from)
            .filter(|p| background && !p.as_os_str().is_empty());
        let (nudge, nudges) = mpsc::sync_channel::<()>(1);
        let busy_ms: i64 = conn
            .query_row("PRAGMA busy_timeout", [], |r| r.get(0))
            .map_err(StoreError::from_sqlite)?;
        let inner = Arc::new(WriterInner {
            queue: Mutex::new(Queue::default()),
            spin: SpinSlot::default(),
            committer: Mutex::new(Committer {
                busy_timeout: Duration::from_millis(busy_ms.max(0) as u64),
                conn,
                watch: watch.clone(),
                commits: 0,
                restart_due: false,
                nudge,
            }),
            drain_wake: Condvar::new(),
        });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("lockledger-drain".into())
            .spawn(move || drain::run_drain(weak))?;
        if let Some(path) = db_path {
            let writer = Arc::downgrade(&inner);
            std::thread::Builder::new()
                .name("lockledger-checkpoint".into())
                .spawn(move || run_background(&path, nudges, watch, writer, tidy))?;
        }
        Ok(Writer { inner })
    }

    /// Runs `f` inside a write transaction and returns its result once committed.
    pub fn write<R, E, F>(&self, f: F) -> Result<R, E>
    where
        F: FnOnce(&Connection) -> Result<R, E> + Send + 'static,
        R: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let (tx, rx) = mpsc::sync_channel::<Result<R, E>>(1);
        let job = job(f, move |answer| {
            let _ = tx.send(answer);
        });
        let ticket = Ticket::new();
        if NO_WAIT.get() {
            return self.write_now(job, ticket, rx);
        }
        let (commit_now, first) = {
            let mut q = lock(&self.inner.queue);
            let first = q.entries.is_empty();
            q.entries.push_back(Entry {
                job,
                ticket: Arc::clone(&ticket),
                waits: true,
            });
            (!std::mem::replace(&mut q.committing, true), first)
        };
        // Only a caller that heads the queue may spin: one behind others has a long
        // wait ahead, and on a busy machine its spin would take a core from that work.
        let spin = first.then_some(&self.inner.spin);
        if commit_now || ticket.wait(spin) == Turn::Commit {
            self.commit_for(&ticket);
        }
        // The ticket is Done: the answer is in the channel, or its sender was dropped by
        // a job that panicked.
        rx.recv().unwrap_or(Err(E::from(StoreError::JobPanicked)))
    }

    /// The no-wait write: takes the committer role only if it is free and nobody queues,
    /// commits `job` alone without waiting for SQLite's write lock, and hands the role on.
    fn write_now<R, E>(
        &self,
        job: Job,
        ticket: Arc<Ticket>,
        rx: mpsc::Receiver<Result<R, E>>,
    ) -> Result<R, E>
    where
        E: From<StoreError>,
    {
        {
            let mut q = lock(&self.inner.queue);
            if q.committing || !q.entries.is_empty() {
                return Err(E::from(StoreError::WouldWait));
            }
            q.committing = true;
        }
        let mut committer = lock(&self.inner.committer);
        let entry = Entry {
            job,
            ticket,
            waits: true,
        };
        let ran = committer.commit_batch_now(vec![entry]).is_ok();
        drop(committer);
        self.hand_on();
        if !ran {
            return Err(E::from(StoreError::WouldWait));
        }
        rx.recv().unwrap_or(Err(E::from(StoreError::JobPanicked)))
    }

    /// Gives the committer role to the head of the queue (to the drain thread when the
    /// head is an async job), or up when the queue is empty.
    fn hand_on(&self) {
        let mut q = lock(&self.inner.queue);
        match q.entries.front() {
            Some(next) if next.waits => next.ticket.set(Turn::Commit),
            Some(_) => self.inner.to_drain(&mut q),
            None => q.committing = false,
        }
    }

    /// Holds the committer role: commits batches until `mine` is answered, then hands the
    /// role to the head of the queue (or gives it up when the queue is empty).
    fn commit_for(&self, mine: &Ticket) {
        let mut committer = lock(&self.inner.committer);
        loop {
            let batch: Vec<Entry> = {
                let mut q = lock(&self.inner.queue);
                let n = q.entries.len().min(MAX_BATCH);
                q.entries.drain(..n).collect()
            };
            committer.commit_batch(batch);
            if mine.get() == Turn::Done {
                break;
            }
        }
        drop(committer);
        self.hand_on();
    }
}

/// The job of `f`: it runs in the open transaction (or is told the batch could not start),
/// and `answer` gets its result once the commit (or its failure) is known: `f`'s own error
/// as is, a commit's or a start's failure as `E`.
fn job<R, E, F>(f: F, answer: impl FnOnce(Result<R, E>) + Send + 'static) -> Job
where
    F: FnOnce(&Connection) -> Result<R, E> + Send + 'static,
    R: Send + 'static,
    E: From<StoreError> + Send + 'static,
{
    Box::new(move |conn| match conn {
        None => (
            false,
            Box::new(move |res: Result<(), StoreError>| {
                answer(Err(E::from(res.err().unwrap_or(StoreError::Busy))));
            }),
        ),
        Some(conn) => {
            let out = f(conn);
            (
                out.is_ok(),
                Box::new(move |commit: Result<(), StoreError>| {
                    answer(match commit {
                        Ok(()) => out,
                        Err(e) => Err(E::from(e)),
                    });
                }),
            )
        }
    })
}

/// A poisoned lock is still consistent here: jobs run under `catch_unwind`, and the
/// queue and tickets are only changed by single assignments.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

mod background;
mod commit;
mod drain;
mod ticket;
use background::run_background;
use ticket::{SpinSlot, Ticket, Turn};

#[cfg(test)]
mod tests;

#[cfg(test)]
mod async_tests;

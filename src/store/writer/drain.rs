//! Async writes: [`Writer::write_async`], and the drain thread that commits queued async
//! jobs when no sleeping caller can.
//!
//! Why: the service's requests run on a few async threads. Before, a request whose write
//! found the writer busy went to the blocking pool, and a thread there slept until its
//! job was committed: two more thread hand-offs per request (tens of µs each on these
//! machines, and most of the service's CPU with 16 clients). Now its job joins the queue
//! and its future waits; one commit answers every job it took.
//!
//! Invariants:
//! - An async caller never blocks its thread on another's commit. One that finds the
//!   writer idle takes the committer role ([`Flush`]), yields once to its runtime so that
//!   the other requests ready on its thread queue their jobs behind it, then commits the
//!   async jobs at the head of the queue in one transaction on its own thread, only if
//!   SQLite's write lock is free (no waiting, as in no-wait mode, and no checkpoint
//!   between transactions); when the lock is taken by another process, the jobs go back
//!   to the head of the queue and the drain thread, which may wait, commits them.
//!   With 16 HTTP clients, against the binary that committed its own job at once
//!   (alternated runs): 6,392–6,959 against 4,404–5,580 pairs/s, 6.85 jobs per commit
//!   against 4.13 (BENCHMARKS.md, "Session 5").
//! - A role taken but never used (the request went away before its future ran) passes to
//!   the drain thread, which commits the queued jobs: a queued job is always committed.
//! - The committer role passes to the drain thread only through `hand_on` (queue head is
//!   an async job) or the cases above; the drain thread commits batches until the queue is
//!   empty or a sleeping caller heads it (that caller then commits for itself), and hands
//!   the role on like any committer.
//! - A reply nobody awaits any more (the request went away) is dropped on the blocking
//!   pool, never on the committing thread: its `Drop` may write (a grant given back), and
//!   a write from inside a commit would wait for itself.
//! - The drain thread holds the writer only while it has work or waits (a `Weak`
//!   otherwise, re-checked every second), so the writer's last handle can go.

use super::{job, lock, Entry, StoreError, Ticket, Writer, WriterInner};
use rusqlite::Connection;
use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

impl Writer {
    /// Runs `f` inside a write transaction; the future answers once it is committed.
    /// `f` runs on whichever thread commits (this one when the writer is idle): it must be
    /// short and must not wait.
    pub fn write_async<R, E, F>(&self, f: F) -> impl Future<Output = Result<R, E>> + Send
    where
        F: FnOnce(&Connection) -> Result<R, E> + Send + 'static,
        R: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel::<Result<R, E>>();
        let pool = tokio::runtime::Handle::try_current().ok();
        let answer = move |a: Result<R, E>| {
            if let Err(unheard) = tx.send(a) {
                match &pool {
                    Some(h) => drop(h.spawn_blocking(move || drop(unheard))),
                    None => drop(unheard),
                }
            }
        };
        let flush = self.submit_async(Entry {
            job: job(f, answer),
            ticket: Ticket::new(),
            waits: false,
        });
        async move {
            if let Some(flush) = flush {
                // Let the other requests that are ready on this thread queue their jobs
                // first: they join this commit instead of waiting for the next one.
                tokio::task::yield_now().await;
                flush.run();
            }
            rx.await.unwrap_or(Err(E::from(StoreError::JobPanicked)))
        }
    }

    /// Queues `entry`; when nobody holds the committer role, takes it for the caller,
    /// who commits the queue's async jobs with [`Flush::run`].
    fn submit_async(&self, entry: Entry) -> Option<Flush> {
        let mut q = lock(&self.inner.queue);
        q.entries.push_back(entry);
        if std::mem::replace(&mut q.committing, true) {
            return None;
        }
        Some(Flush {
            writer: self.clone(),
            ran: false,
        })
    }

    /// Holding the role: commits batches until the queue is empty or a sleeping caller
    /// heads it, then hands the role on.
    fn drain(&self) {
        let mut committer = lock(&self.inner.committer);
        loop {
            let batch: Vec<Entry> = {
                let mut q = lock(&self.inner.queue);
                if q.entries.front().is_none_or(|e| e.waits) {
                    break;
                }
                let n = q.entries.len().min(super::MAX_BATCH);
                q.entries.drain(..n).collect()
            };
            committer.commit_batch(batch);
        }
        drop(committer);
        self.hand_on();
    }
}

/// The committer role, taken by an async caller that found the writer idle: it commits
/// the async jobs at the head of the queue on the caller's thread, without waiting for
/// SQLite's write lock. Dropped without running (the request went away), it hands the
/// role to the drain thread, which commits the queued jobs.
pub(super) struct Flush {
    writer: Writer,
    ran: bool,
}

impl Flush {
    /// Commits the leading async jobs (the caller's own is first) if SQLite's write lock
    /// is free, else leaves them to the drain thread; then hands the role on.
    pub(super) fn run(mut self) {
        self.ran = true;
        let inner = &self.writer.inner;
        let batch: Vec<Entry> = {
            let mut q = lock(&inner.queue);
            let n = q
                .entries
                .iter()
                .take(super::MAX_BATCH)
                .take_while(|e| !e.waits)
                .count();
            q.entries.drain(..n).collect()
        };
        if batch.is_empty() {
            // Nothing of ours heads the queue (cannot happen while we hold the role, but
            // an empty transaction must not count as a commit).
            return self.writer.hand_on();
        }
        let mut committer = lock(&inner.committer);
        // An async thread: no checkpoint between transactions here (its syncs would
        // stall every request on this thread); the next committer that may block runs it.
        let unrun = super::no_wait(|| committer.commit_batch_now(batch));
        drop(committer);
        match unrun {
            Ok(()) => self.writer.hand_on(),
            Err(batch) => {
                // Another process holds SQLite's write lock: the drain thread waits for it.
                let mut q = lock(&inner.queue);
                for entry in batch.into_iter().rev() {
                    q.entries.push_front(entry);
                }
                inner.to_drain(&mut q);
            }
        }
    }
}

impl Drop for Flush {
    fn drop(&mut self) {
        if !self.ran {
            let inner = &self.writer.inner;
            inner.to_drain(&mut lock(&inner.queue));
        }
    }
}

/// The drain thread: waits until the role passes to it, drains, and ends once the writer
/// is gone.
pub(super) fn run_drain(writer: Weak<WriterInner>) {
    loop {
        let Some(inner) = writer.upgrade() else {
            return;
        };
        if !wait_for_role(&inner) {
            continue;
        }
        Writer { inner }.drain();
    }
}

/// Waits (at most a second, so a gone writer is noticed) for the role; true when given.
fn wait_for_role(inner: &Arc<WriterInner>) -> bool {
    let mut q = lock(&inner.queue);
    if !q.drain {
        q = inner
            .drain_wake
            .wait_timeout(q, Duration::from_secs(1))
            .map(|(g, _)| g)
            .unwrap_or_else(|p| p.into_inner().0);
    }
    std::mem::replace(&mut q.drain, false)
}

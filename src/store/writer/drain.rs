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
//! - An async caller never blocks its thread on another's commit. It runs a commit itself
//!   only when it finds the writer idle and SQLite's write lock free (no waiting, as in
//!   no-wait mode); when the lock is taken by another process, its job goes to the head of
//!   the queue and the drain thread, which may wait, commits it.
//! - The committer role passes to the drain thread only through `hand_on` (queue head is
//!   an async job) or the case above; the drain thread commits batches until the queue is
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
        self.submit_async(Entry {
            job: job(f, answer),
            ticket: Ticket::new(),
            waits: false,
        });
        async move { rx.await.unwrap_or(Err(E::from(StoreError::JobPanicked))) }
    }

    /// Commits `entry` now if the writer is idle and SQLite's lock free, else queues it.
    fn submit_async(&self, entry: Entry) {
        let alone = {
            let mut q = lock(&self.inner.queue);
            if q.committing || !q.entries.is_empty() {
                q.entries.push_back(entry);
                return;
            }
            q.committing = true;
            entry
        };
        let mut committer = lock(&self.inner.committer);
        let unrun = committer.commit_alone_now(alone);
        drop(committer);
        match unrun {
            Ok(()) => self.hand_on(),
            Err(entry) => {
                // Another process holds SQLite's write lock: the drain thread waits for it.
                let mut q = lock(&self.inner.queue);
                q.entries.push_front(entry);
                q.drain = true;
                self.inner.drain_wake.notify_one();
            }
        }
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

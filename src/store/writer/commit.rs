//! Committing: the holder of the committer role runs a batch of jobs in one IMMEDIATE
//! transaction (each in its own savepoint when there are several), commits once, and
//! only then answers each caller; in no-wait mode a batch commits only if SQLite's
//! write lock can be had at once.
//!
//! Invariant: a caller never hears "ok" for a write that is not committed, and one
//! failing job rolls back only its own savepoint.

use super::{Committer, Entry, Reply, Ticket, Turn, RESTART_EVERY, TIDY_EVERY};
use crate::store::{busy_holder, StoreError};
use rusqlite::Connection;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Runs one of the writer's transaction statements from the connection's statement cache
/// (parsing `BEGIN`/`COMMIT` anew on every commit is measurable at these rates).
fn run(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

impl Committer {
    /// Commits `batch` if SQLite's write lock can be had at once; gives it back unrun if
    /// not.
    pub(super) fn commit_batch_now(&mut self, batch: Vec<Entry>) -> Result<(), Vec<Entry>> {
        if let Some(why) = self.watch.as_ref().and_then(|w| w.gone()) {
            Committer::refuse(batch, || StoreError::Lost(why.clone()));
            return Ok(());
        }
        let _ = self.conn.busy_timeout(Duration::ZERO);
        let begun = run(&self.conn, "BEGIN IMMEDIATE");
        let _ = self.conn.busy_timeout(self.busy_timeout);
        match begun {
            Ok(()) => {
                self.commit_batch_begun(batch);
                Ok(())
            }
            Err(_) => Err(batch),
        }
    }

    /// Why no transaction can start, answered to every job of the batch.
    fn refuse(batch: Vec<Entry>, err: impl Fn() -> StoreError) {
        for entry in batch {
            let (_, reply) = (entry.job)(None);
            reply(Err(err()));
            entry.ticket.set(Turn::Done);
        }
    }

    /// Commits `batch` in one IMMEDIATE transaction and answers every job.
    pub(super) fn commit_batch(&mut self, batch: Vec<Entry>) {
        if batch.is_empty() {
            return;
        }
        if let Some(why) = self.watch.as_ref().and_then(|w| w.gone()) {
            return Committer::refuse(batch, || StoreError::Lost(why.clone()));
        }
        let conn = &self.conn;
        if let Err(e) = run(conn, "BEGIN IMMEDIATE") {
            let err = StoreError::from_sqlite(e);
            let err = match (err, conn.path()) {
                (StoreError::Busy, Some(path)) => busy_holder(Path::new(path)),
                (other, _) => other,
            };
            log::warn!("writer: cannot begin a transaction: {err}");
            let text = err.to_string();
            return Committer::refuse(batch, || match &err {
                StoreError::Busy => StoreError::Busy,
                StoreError::Locked(who) => StoreError::Locked(who.clone()),
                _ => StoreError::CommitFailed(text.clone()),
            });
        }
        self.commit_batch_begun(batch);
    }

    /// Runs `batch` in the transaction just begun, commits it, and answers every job.
    fn commit_batch_begun(&mut self, batch: Vec<Entry>) {
        let conn = &self.conn;
        crate::fault::point("inside_write");
        let alone = batch.len() == 1;
        let mut answered: Vec<(Reply, Arc<Ticket>)> = Vec::with_capacity(batch.len());
        let mut finished: Vec<Arc<Ticket>> = Vec::new();
        // Alone, a failed job rolls the whole transaction back: nothing is left to commit.
        let mut open = true;
        for entry in batch {
            // Alone in its transaction, a job needs no savepoint: a failure rolls back all.
            if !alone && run(conn, "SAVEPOINT job").is_err() {
                let (_, reply) = (entry.job)(None);
                reply(Err(StoreError::Busy));
                finished.push(entry.ticket);
                continue;
            }
            match std::panic::catch_unwind(AssertUnwindSafe(|| (entry.job)(Some(conn)))) {
                Ok((true, reply)) => {
                    if !alone {
                        let _ = run(conn, "RELEASE job");
                    }
                    answered.push((reply, entry.ticket));
                }
                failed => {
                    if let Ok((_, reply)) = failed {
                        // Its own error is its answer; nothing of it is committed.
                        reply(Ok(()));
                    } else {
                        // The job's reply sender went with it; its caller sees JobPanicked.
                        log::error!("writer: a job panicked; its changes were rolled back");
                    }
                    if alone {
                        let _ = conn.execute_batch("ROLLBACK");
                        open = false;
                    } else {
                        let _ = conn.execute_batch("ROLLBACK TO job; RELEASE job");
                    }
                    finished.push(entry.ticket);
                }
            }
        }
        let commit = if open { run(conn, "COMMIT") } else { Ok(()) };
        match commit {
            Ok(()) => {
                for (reply, ticket) in answered {
                    reply(Ok(()));
                    ticket.set(Turn::Done);
                }
                if open {
                    self.after_commit();
                }
            }
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                let err = StoreError::from_sqlite(e);
                log::warn!("writer: commit failed: {err}");
                for (reply, ticket) in answered {
                    reply(Err(match &err {
                        StoreError::Busy => StoreError::Busy,
                        other => StoreError::CommitFailed(other.to_string()),
                    }));
                    ticket.set(Turn::Done);
                }
            }
        }
        for ticket in finished {
            ticket.set(Turn::Done);
        }
    }

    /// Nudges the background thread now and then, and restarts the WAL every
    /// [`RESTART_EVERY`] commits when on a thread that may block.
    fn after_commit(&mut self) {
        self.commits += 1;
        if self.commits % TIDY_EVERY == 0 {
            let _ = self.nudge.try_send(());
        }
        if self.commits % RESTART_EVERY == 0 {
            self.restart_due = true;
        }
        if self.restart_due && !super::in_no_wait() {
            self.restart_due = !self.restart_wal();
        }
    }

    /// A passive checkpoint on the writer's own connection, between its transactions:
    /// with no commit in between, it backfills every frame, so the next transaction
    /// writes the WAL from its start again. True when it did backfill every frame.
    ///
    /// Why: the background thread's checkpoints run beside the commits, which append
    /// frames meanwhile, so under steady load the WAL is never wholly backfilled when a
    /// transaction starts, and SQLite only restarts it then. Commits then keep appending
    /// to a growing file (new page-cache pages, new blocks: 51 MB after 28,000 commits);
    /// restarting it every 2048 commits made a pair 7% faster (median of 7 runs each,
    /// side by side). Its cost, about a millisecond (the few frames since the last
    /// background checkpoint, and its two syncs), falls on this caller.
    ///
    /// Never on an async thread ([`super::no_wait`]): the service's requests commit there,
    /// and a sync must not stall a runtime thread. A passive checkpoint waits for nobody:
    /// while the background thread checkpoints (SQLite answers busy at once), or a
    /// reader holds old frames, it does what it can, and the next commit tries again.
    fn restart_wal(&self) -> bool {
        let backfilled_all = |r: &rusqlite::Row<'_>| -> rusqlite::Result<bool> {
            let (busy, log, done): (i64, i64, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
            Ok(busy == 0 && log == done)
        };
        match self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], backfilled_all)
        {
            Ok(done) => done,
            Err(e) => {
                log::debug!("writer: checkpoint between transactions: {e}");
                false
            }
        }
    }
}

//! [`FreeListener`]: one thread with its own connection doing `LISTEN lockledger_free`,
//! so waiters wake as soon as another service frees a lock.
//!
//! Invariants:
//! - a free is announced with the first live waiter in line (`<lock_id>:<seq>`, see
//!   [`CHANNEL`]): only the watch of that waiter wakes, the others would only find that
//!   it is not their turn (waking them all cost 16 services 60% of their grant rate in
//!   tests/pg_store.rs); a free that names nobody wakes every watch of the lock;
//! - notifications are a hint, never the only way to learn that a lock is free: a
//!   notification can be lost (the connection broke; a lease expired with nobody running
//!   the expiry sweep yet), so every waiter also polls on a backoff tick (`acquire_waiting`
//!   retries after 1 ms doubling to 50 ms, whatever it hears). The listener only shortens
//!   waits;
//! - after a reconnection every watcher is woken (anything may have been freed while the
//!   connection was down);
//! - the thread never blocks for long: it waits for notifications in slices of
//!   [`POLL`], reconnects with a backoff of 50 ms doubling to 5 s, and checks its stop
//!   flag between slices; dropping the listener stops it and joins it within
//!   [`JOIN_WAIT`] (a thread still stuck in a connect attempt is left to end by itself);
//! - the callback runs on the listener thread, once per notification, and must be quick;
//!   a panic in it is caught and logged.

use super::error::PgError;
use postgres::fallible_iterator::FallibleIterator;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The channel freed locks are announced on. The payload is the lock id in decimal,
/// followed by `:<seq>` of the first live waiter in line when there is one.
pub const CHANNEL: &str = "lockledger_free";
/// Longest single wait for a notification before the stop flag is looked at again.
pub const POLL: Duration = Duration::from_millis(100);
/// An idle connection is pinged this often, so a dead one is noticed and replaced.
pub const PING_EVERY: Duration = Duration::from_secs(5);
/// Longest wait for the thread when the listener is dropped.
pub const JOIN_WAIT: Duration = Duration::from_secs(2);
/// Longest wait for the first `LISTEN` in [`FreeListener::start`].
pub const START_WAIT: Duration = Duration::from_secs(10);

/// One lock's watchers in this process and how often they were notified.
#[derive(Default)]
struct LockWatch {
    /// Notifications naming no waiter (nobody was in line).
    any: u64,
    /// Notifications naming each waiter row (seq) of this process in line for the lock.
    heads: HashMap<i64, u64>,
    watchers: usize,
}

/// Who waits for which lock.
#[derive(Default)]
struct Watches {
    locks: HashMap<i64, LockWatch>,
    /// Bumped on every reconnection: everyone should look again.
    epoch: u64,
}

impl Watches {
    fn mark(&self, lock_id: i64, seq: Option<i64>) -> Mark {
        let w = self.locks.get(&lock_id);
        Mark(
            w.map_or(0, |w| w.any),
            w.zip(seq)
                .and_then(|(w, s)| w.heads.get(&s).copied())
                .unwrap_or(0),
            self.epoch,
        )
    }
}

struct Shared {
    stop: AtomicBool,
    notifications: AtomicU64,
    connects: AtomicU64,
    watches: Mutex<Watches>,
    changed: Condvar,
}

impl Shared {
    fn watches(&self) -> MutexGuard<'_, Watches> {
        // A poisoned lock only means a panic elsewhere while it was held; the counters
        // inside are still consistent (each update is one statement).
        self.watches.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `lock_id` was freed; `head` is the first waiter in line, if any: only its watch
    /// wakes (the others would find it is not their turn).
    fn freed(&self, lock_id: i64, head: Option<i64>) {
        let mut w = self.watches();
        let Some(entry) = w.locks.get_mut(&lock_id) else {
            return;
        };
        let counter = match head {
            None => Some(&mut entry.any),
            Some(seq) => entry.heads.get_mut(&seq),
        };
        if let Some(c) = counter {
            *c += 1;
            self.changed.notify_all();
        }
    }

    fn wake_all(&self) {
        self.watches().epoch += 1;
        self.changed.notify_all();
    }
}

/// Listens for freed locks on its own connection (see the module's invariants).
pub struct FreeListener {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FreeListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FreeListener")
            .field("notifications", &self.notifications())
            .field("connects", &self.connects())
            .finish()
    }
}

/// A position in a watched lock's notifications (see [`Watch::wait`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark(u64, u64, u64);

/// Interest in one lock's notifications, from [`FreeListener::watch`] until dropped.
pub struct Watch<'a> {
    shared: &'a Shared,
    lock_id: i64,
    /// The watcher's waiter row, once it is in line.
    seq: Option<i64>,
}

impl Watch<'_> {
    /// The watcher is in line as waiter row `seq` (replacing an earlier row): from now
    /// on it wakes for notifications that name it first in line, and for those that name
    /// nobody.
    pub fn queued(&mut self, seq: i64) {
        let mut w = self.shared.watches();
        if let Some(entry) = w.locks.get_mut(&self.lock_id) {
            if let Some(old) = self.seq {
                entry.heads.remove(&old);
            }
            entry.heads.insert(seq, 0);
        }
        self.seq = Some(seq);
    }

    /// Where the notifications stand now: take it before looking at the lock, then
    /// [`Watch::wait`] for anything newer, so a notification in between is not missed.
    pub fn mark(&self) -> Mark {
        self.shared.watches().mark(self.lock_id, self.seq)
    }

    /// Waits until a notification for this watcher came after `mark` (true) or `until`
    /// passes (false).
    pub fn wait(&self, mark: Mark, until: Instant) -> bool {
        let mut w = self.shared.watches();
        loop {
            if w.mark(self.lock_id, self.seq) != mark {
                return true;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            w = self
                .shared
                .changed
                .wait_timeout(w, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        let mut w = self.shared.watches();
        if let Some(entry) = w.locks.get_mut(&self.lock_id) {
            if let Some(seq) = self.seq {
                entry.heads.remove(&seq);
            }
            entry.watchers -= 1;
            if entry.watchers == 0 {
                w.locks.remove(&self.lock_id);
            }
        }
    }
}

impl FreeListener {
    /// Starts listening with the session settings `config` (e.g.
    /// [`PgStore::session_config`](super::PgStore::session_config)); returns once the
    /// first `LISTEN` is in force (within [`START_WAIT`]), so no later free is missed.
    /// `on_free` is called with the lock id of every notification.
    pub fn start(
        config: &postgres::Config,
        on_free: impl Fn(i64) + Send + Sync + 'static,
    ) -> Result<FreeListener, PgError> {
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            notifications: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            watches: Mutex::new(Watches::default()),
            changed: Condvar::new(),
        });
        let (ready_tx, ready_rx) = mpsc::channel();
        let config = config.clone();
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("pg-listen".into())
            .spawn(move || run(&s, &config, &on_free, ready_tx))
            .map_err(|e| PgError::Postgres(format!("cannot start the listener thread: {e}")))?;
        let mut listener = FreeListener {
            shared,
            thread: Some(thread),
        };
        match ready_rx.recv_timeout(START_WAIT) {
            Ok(Ok(())) => Ok(listener),
            Ok(Err(why)) => {
                listener.stop();
                Err(PgError::Postgres(format!(
                    "cannot listen for freed locks: {why}"
                )))
            }
            Err(_) => {
                listener.stop();
                Err(PgError::Postgres(format!(
                    "cannot listen for freed locks: no LISTEN within {} s",
                    START_WAIT.as_secs()
                )))
            }
        }
    }

    /// Notifications received so far.
    pub fn notifications(&self) -> u64 {
        self.shared.notifications.load(Ordering::Relaxed)
    }

    /// Connections made so far (1 until a reconnection).
    pub fn connects(&self) -> u64 {
        self.shared.connects.load(Ordering::Relaxed)
    }

    /// Starts watching `lock_id`'s notifications (until the watch is dropped).
    pub fn watch(&self, lock_id: i64) -> Watch<'_> {
        self.shared
            .watches()
            .locks
            .entry(lock_id)
            .or_default()
            .watchers += 1;
        Watch {
            shared: &self.shared,
            lock_id,
            seq: None,
        }
    }

    fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let Some(thread) = self.thread.take() else {
            return;
        };
        let deadline = Instant::now() + JOIN_WAIT;
        while !thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if thread.is_finished() {
            let _ = thread.join();
        } else {
            log::warn!("the postgresql listener did not stop within {JOIN_WAIT:?}; left to end");
        }
    }
}

impl Drop for FreeListener {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The listener thread: connect, LISTEN, wait in slices, reconnect on error.
fn run(
    shared: &Shared,
    config: &postgres::Config,
    on_free: &(dyn Fn(i64) + Send + Sync),
    ready: mpsc::Sender<Result<(), String>>,
) {
    let mut ready = Some(ready);
    let mut backoff = Duration::from_millis(50);
    while !shared.stop.load(Ordering::SeqCst) {
        let mut client = match connect(config) {
            Ok(c) => c,
            Err(why) => {
                log::warn!("postgresql listener: {why}; retrying in {backoff:?}");
                if let Some(r) = ready.take() {
                    let _ = r.send(Err(why));
                    return;
                }
                sleep_unless_stopped(shared, backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        if shared.connects.fetch_add(1, Ordering::SeqCst) > 0 {
            log::info!("postgresql listener reconnected; waking every waiter");
            shared.wake_all();
        }
        if let Some(r) = ready.take() {
            let _ = r.send(Ok(()));
        }
        listen(shared, &mut client, on_free);
    }
}

fn connect(config: &postgres::Config) -> Result<postgres::Client, String> {
    let mut client = config
        .connect(postgres::NoTls)
        .map_err(|e| super::describe(&e))?;
    client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .map_err(|e| super::describe(&e))?;
    Ok(client)
}

/// Handles notifications until the connection fails or the listener stops.
fn listen(shared: &Shared, client: &mut postgres::Client, on_free: &(dyn Fn(i64) + Send + Sync)) {
    let mut last_traffic = Instant::now();
    while !shared.stop.load(Ordering::SeqCst) {
        let next = client.notifications().timeout_iter(POLL).next();
        match next {
            Ok(Some(n)) => {
                last_traffic = Instant::now();
                let Some((lock_id, head)) = parse_payload(n.payload()) else {
                    log::warn!("postgresql listener: ignoring payload {:?}", n.payload());
                    continue;
                };
                shared.notifications.fetch_add(1, Ordering::Relaxed);
                shared.freed(lock_id, head);
                if catch_unwind(AssertUnwindSafe(|| on_free(lock_id))).is_err() {
                    log::error!("the freed-lock callback panicked (lock {lock_id})");
                }
            }
            Ok(None) if client.is_closed() => {
                log::warn!("postgresql listener: connection closed");
                return;
            }
            Ok(None) => {
                if last_traffic.elapsed() >= PING_EVERY {
                    if let Err(e) = client.simple_query("") {
                        log::warn!("postgresql listener: ping failed: {}", super::describe(&e));
                        return;
                    }
                    last_traffic = Instant::now();
                }
            }
            Err(e) => {
                log::warn!("postgresql listener: {}", super::describe(&e));
                return;
            }
        }
    }
}

/// `<lock_id>` or `<lock_id>:<seq of the first waiter in line>`.
fn parse_payload(payload: &str) -> Option<(i64, Option<i64>)> {
    match payload.split_once(':') {
        None => Some((payload.parse().ok()?, None)),
        Some((lock, seq)) => Some((lock.parse().ok()?, Some(seq.parse().ok()?))),
    }
}

fn sleep_unless_stopped(shared: &Shared, total: Duration) {
    let end = Instant::now() + total;
    while !shared.stop.load(Ordering::SeqCst) {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(POLL));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_name_the_lock_and_maybe_the_first_waiter() {
        assert_eq!(parse_payload("42"), Some((42, None)));
        assert_eq!(parse_payload("42:7"), Some((42, Some(7))));
        assert_eq!(parse_payload("x"), None);
        assert_eq!(parse_payload("42:"), None);
    }

    #[test]
    fn only_the_named_waiter_wakes_and_an_unnamed_free_wakes_all() {
        let shared = Shared {
            stop: AtomicBool::new(false),
            notifications: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            watches: Mutex::new(Watches::default()),
            changed: Condvar::new(),
        };
        let listener = FreeListener {
            shared: Arc::new(shared),
            thread: None,
        };
        let mut first = listener.watch(1);
        let mut second = listener.watch(1);
        first.queued(10);
        second.queued(11);
        let (m1, m2) = (first.mark(), second.mark());
        listener.shared.freed(1, Some(10));
        let soon = Instant::now() + Duration::from_millis(20);
        assert!(first.wait(m1, soon));
        assert!(!second.wait(m2, soon), "not its turn");
        let (m1, m2) = (first.mark(), second.mark());
        listener.shared.freed(1, None);
        assert!(first.wait(m1, soon) && second.wait(m2, soon));
        let m2 = second.mark();
        listener.shared.freed(2, Some(11));
        assert!(!second.wait(m2, soon), "another lock");
        listener.shared.wake_all();
        assert!(second.wait(m2, soon), "after a reconnection everyone looks");
        drop(first);
        drop(second);
        assert!(listener.shared.watches().locks.is_empty());
    }
}

//! Arrival-order queues of the acquirers waiting inside this process.
//!
//! `flock` itself is not fair: whoever tries first after a release wins. Inside one
//! process we restore first-come-first-served: a waiter joins the queue of its lock and
//! only the head of the queue tries for it. (Waiters in other processes still compete with
//! the head; the kernel cannot order them.)
//!
//! Invariants:
//! - A waiter holds no thread: an async waiter awaits its [`Signal`], a blocking one (a
//!   library holder) sleeps on it. Nobody polls the queue: a waiter is woken when it
//!   becomes the head, and the head is woken when the lock is let go in this process
//!   (`WaitQueues::wake`); for holders in other processes the head retries on a backoff.
//! - A [`Ticket`] is in its queue from [`WaitQueues::join`] until it is dropped, on every
//!   path (granted, gave up, cancelled, its future dropped), so a waiter that leaves never
//!   blocks the ones behind; dropping the head wakes the next.
//! - The number of waiters is capped per lock and in all; a waiter over a cap is refused
//!   at once (the service answers 503 with Retry-After).

use crate::ids::LockKey;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct WaiterInfo {
    pub namespace: String,
    pub owner: String,
    pub field: String,
    pub position: usize,
    pub holder: String,
    pub operation: String,
    pub waiting_since: String,
}

/// A waiter's wake-up: async waiters await it, blocking ones sleep on it. A wake that
/// comes before anyone waits is kept (one permit), so none is lost.
#[derive(Debug, Default)]
pub struct Signal {
    notify: tokio::sync::Notify,
    woken: Mutex<bool>,
    cv: Condvar,
}

impl Signal {
    pub fn wake(&self) {
        *self.woken.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.cv.notify_all();
        self.notify.notify_one();
    }

    /// Waits (async) for the next wake.
    pub async fn woken(&self) {
        self.notify.notified().await;
        *self.woken.lock().unwrap_or_else(|p| p.into_inner()) = false;
    }

    /// Sleeps until woken or `until`; true if woken.
    pub fn wait_until(&self, until: Instant) -> bool {
        let mut woken = self.woken.lock().unwrap_or_else(|p| p.into_inner());
        while !*woken {
            let now = Instant::now();
            if now >= until {
                return false;
            }
            woken = match self.cv.wait_timeout(woken, until - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        *woken = false;
        true
    }
}

#[derive(Debug)]
struct Waiter {
    id: u64,
    holder: String,
    operation: String,
    since_ms: i64,
    signal: Arc<Signal>,
}

#[derive(Debug, Default)]
struct Queues {
    next_id: u64,
    by_key: HashMap<LockKey, VecDeque<Waiter>>,
}

/// Why a waiter was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// This lock has this many waiters already.
    Lock(usize),
    /// The service has this many waiters already.
    Total(usize),
}

#[derive(Debug)]
pub struct WaitQueues {
    queues: Mutex<Queues>,
    /// Waiters in all, readable without the lock (health, metrics).
    count: AtomicUsize,
    max_per_lock: usize,
    max_total: usize,
}

impl Default for WaitQueues {
    fn default() -> Self {
        WaitQueues::new(usize::MAX, usize::MAX)
    }
}

/// A place in the queue of one lock; leaving it (drop) lets the next waiter go.
#[derive(Debug)]
pub struct Ticket {
    queues: Arc<WaitQueues>,
    key: LockKey,
    id: u64,
    signal: Arc<Signal>,
}

impl WaitQueues {
    pub fn new(max_per_lock: usize, max_total: usize) -> WaitQueues {
        WaitQueues {
            queues: Mutex::new(Queues::default()),
            count: AtomicUsize::new(0),
            max_per_lock,
            max_total,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queues> {
        // Every mutation is a single push or remove, so a poisoned queue is consistent.
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn join(
        self: &Arc<Self>,
        key: &LockKey,
        holder: &str,
        operation: &str,
        now_ms: i64,
    ) -> Result<Ticket, Full> {
        let mut q = self.lock();
        if self.count.load(Ordering::Relaxed) >= self.max_total {
            return Err(Full::Total(self.max_total));
        }
        let queue_len = q.by_key.get(key).map_or(0, VecDeque::len);
        if queue_len >= self.max_per_lock {
            return Err(Full::Lock(queue_len));
        }
        q.next_id += 1;
        let id = q.next_id;
        let signal = Arc::new(Signal::default());
        q.by_key.entry(key.clone()).or_default().push_back(Waiter {
            id,
            holder: holder.to_string(),
            operation: operation.to_string(),
            since_ms: now_ms,
            signal: Arc::clone(&signal),
        });
        self.count.fetch_add(1, Ordering::Relaxed);
        Ok(Ticket {
            queues: Arc::clone(self),
            key: key.clone(),
            id,
            signal,
        })
    }

    /// The lock of `key` was let go in this process: wake the head of its queue.
    pub fn wake(&self, key: &LockKey) {
        let q = self.lock();
        if let Some(head) = q.by_key.get(key).and_then(VecDeque::front) {
            head.signal.wake();
        }
    }

    /// How many waiters in all.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn list(&self) -> Vec<WaiterInfo> {
        let q = self.lock();
        let mut out: Vec<WaiterInfo> = q
            .by_key
            .iter()
            .flat_map(|(key, waiters)| {
                waiters.iter().enumerate().map(move |(i, w)| WaiterInfo {
                    namespace: key.namespace().to_string(),
                    owner: key.owner().to_string(),
                    field: key.field().to_string(),
                    position: i + 1,
                    holder: w.holder.clone(),
                    operation: w.operation.clone(),
                    waiting_since: crate::clock::rfc3339(w.since_ms),
                })
            })
            .collect();
        out.sort_by(|a, b| (&a.owner, &a.field, a.position).cmp(&(&b.owner, &b.field, b.position)));
        out
    }
}

impl Ticket {
    /// Is this waiter at the head of its queue?
    pub fn is_head(&self) -> bool {
        self.queues
            .lock()
            .by_key
            .get(&self.key)
            .and_then(VecDeque::front)
            .is_some_and(|w| w.id == self.id)
    }

    /// Resolves once this waiter is at the head of its queue.
    pub async fn turn(&self) {
        while !self.is_head() {
            self.signal.woken().await;
        }
    }

    /// Resolves at the next wake (the lock was let go in this process, or this waiter
    /// became the head).
    pub async fn woken(&self) {
        self.signal.woken().await;
    }

    /// Blocks until this waiter is at the head (true), or until `deadline` or
    /// `cancelled()` (false). Wakes at least every 50 ms to check `cancelled`.
    pub fn wait_turn(&self, deadline: Instant, cancelled: &dyn Fn() -> bool) -> bool {
        loop {
            if self.is_head() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline || cancelled() {
                return false;
            }
            let step = (deadline - now).min(std::time::Duration::from_millis(50));
            self.signal.wait_until(now + step);
        }
    }

    /// Blocks until woken or `until`.
    pub fn wait_woken(&self, until: Instant) {
        self.signal.wait_until(until);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut q = self.queues.lock();
        if let Some(waiters) = q.by_key.get_mut(&self.key) {
            let was_head = waiters.front().is_some_and(|w| w.id == self.id);
            waiters.retain(|w| w.id != self.id);
            if was_head {
                if let Some(next) = waiters.front() {
                    next.signal.wake();
                }
            }
            if waiters.is_empty() {
                q.by_key.remove(&self.key);
            }
        }
        self.queues.count.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::time::Duration;

    fn key(owner: &str) -> LockKey {
        LockKey::new(&Config::defaults("/tmp").namespaces[0], owner, "all").unwrap()
    }

    #[test]
    fn waiters_go_in_arrival_order_and_leaving_lets_the_next_go() {
        let q = Arc::new(WaitQueues::default());
        let a = q.join(&key("c1"), "a", "op", 0).unwrap();
        let b = q.join(&key("c1"), "b", "op", 1).unwrap();
        let other = q.join(&key("c2"), "c", "op", 2).unwrap();
        let soon = Instant::now() + Duration::from_millis(30);
        assert!(a.wait_turn(soon, &|| false));
        assert!(other.wait_turn(soon, &|| false));
        assert!(!b.wait_turn(Instant::now() + Duration::from_millis(30), &|| false));
        assert_eq!(
            q.list().iter().find(|w| w.holder == "b").unwrap().position,
            2
        );
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            drop(a);
        });
        let started = Instant::now();
        assert!(b.wait_turn(Instant::now() + Duration::from_secs(5), &|| false));
        // Woken, not found by polling: well under the 50 ms poll step.
        assert!(started.elapsed() < Duration::from_millis(45));
        t.join().unwrap();
        drop(b);
        drop(other);
        assert!(q.is_empty());
    }

    #[test]
    fn a_cancelled_waiter_stops_waiting() {
        let q = Arc::new(WaitQueues::default());
        let _a = q.join(&key("c1"), "a", "op", 0).unwrap();
        let b = q.join(&key("c1"), "b", "op", 0).unwrap();
        let t = Instant::now();
        assert!(!b.wait_turn(t + Duration::from_secs(10), &|| true));
        assert!(t.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn caps_refuse_waiters_at_once() {
        let q = Arc::new(WaitQueues::new(2, 3));
        let a = q.join(&key("c1"), "a", "op", 0).unwrap();
        let _b = q.join(&key("c1"), "b", "op", 0).unwrap();
        assert_eq!(q.join(&key("c1"), "c", "op", 0).unwrap_err(), Full::Lock(2));
        let _c = q.join(&key("c2"), "c", "op", 0).unwrap();
        assert_eq!(
            q.join(&key("c3"), "d", "op", 0).unwrap_err(),
            Full::Total(3)
        );
        drop(a);
        let _d = q.join(&key("c3"), "d", "op", 0).unwrap();
        assert_eq!(q.len(), 3);
    }

    #[tokio::test]
    async fn async_waiters_are_woken_in_order_without_threads() {
        let q = Arc::new(WaitQueues::default());
        let first = q.join(&key("c1"), "a", "op", 0).unwrap();
        let mut later = Vec::new();
        for i in 0..100 {
            later.push(q.join(&key("c1"), &format!("w{i}"), "op", 0).unwrap());
        }
        let order = Arc::new(Mutex::new(Vec::new()));
        let tasks: Vec<_> = later
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                let order = Arc::clone(&order);
                tokio::spawn(async move {
                    t.turn().await;
                    order.lock().unwrap().push(i);
                    drop(t);
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(order.lock().unwrap().is_empty());
        drop(first);
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(5), t)
                .await
                .unwrap()
                .unwrap();
        }
        assert_eq!(*order.lock().unwrap(), (0..100).collect::<Vec<_>>());
        assert!(q.is_empty());
    }
}

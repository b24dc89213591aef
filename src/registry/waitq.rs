//! Arrival-order queues of the acquirers waiting inside this process.
//!
//! `flock` itself is not fair: every waiter polls and whoever polls first after a release
//! wins. Inside one process we restore first-come-first-served: a waiter joins the queue
//! of its lock and only the head of the queue competes for the flock. (Waiters in other
//! processes still compete with the head; the kernel cannot order them.)
//!
//! Invariant: a [`Ticket`] is in its queue from [`WaitQueues::join`] until it is dropped,
//! on every path, so a waiter that gives up or is cancelled never blocks the ones behind.

use crate::ids::LockKey;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
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

#[derive(Debug)]
struct Waiter {
    id: u64,
    holder: String,
    operation: String,
    since_ms: i64,
}

#[derive(Debug, Default)]
struct Queues {
    next_id: u64,
    by_key: HashMap<LockKey, VecDeque<Waiter>>,
}

#[derive(Debug, Default)]
pub struct WaitQueues {
    queues: Mutex<Queues>,
    turn: Condvar,
}

/// A place in the queue of one lock; leaving it (drop) lets the next waiter go.
#[derive(Debug)]
pub struct Ticket {
    queues: Arc<WaitQueues>,
    key: LockKey,
    id: u64,
}

impl WaitQueues {
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
    ) -> Ticket {
        let mut q = self.lock();
        q.next_id += 1;
        let id = q.next_id;
        q.by_key.entry(key.clone()).or_default().push_back(Waiter {
            id,
            holder: holder.to_string(),
            operation: operation.to_string(),
            since_ms: now_ms,
        });
        Ticket {
            queues: Arc::clone(self),
            key: key.clone(),
            id,
        }
    }

    /// How many waiters in all.
    pub fn len(&self) -> usize {
        self.lock().by_key.values().map(VecDeque::len).sum()
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
    /// Blocks until this ticket is at the head of its queue (true), or until `deadline`
    /// or `cancelled()` (false). Wakes at least every 50 ms to check `cancelled`.
    pub fn wait_turn(&self, deadline: Instant, cancelled: &dyn Fn() -> bool) -> bool {
        let mut q = self.queues.lock();
        loop {
            let head = q
                .by_key
                .get(&self.key)
                .and_then(|w| w.front())
                .map(|w| w.id);
            if head == Some(self.id) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline || cancelled() {
                return false;
            }
            let pause = (deadline - now).min(std::time::Duration::from_millis(50));
            q = match self.queues.turn.wait_timeout(q, pause) {
                Ok((guard, _)) => guard,
                Err(p) => p.into_inner().0,
            };
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut q = self.queues.lock();
        if let Some(waiters) = q.by_key.get_mut(&self.key) {
            waiters.retain(|w| w.id != self.id);
            if waiters.is_empty() {
                q.by_key.remove(&self.key);
            }
        }
        drop(q);
        self.queues.turn.notify_all();
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
        let a = q.join(&key("c1"), "a", "op", 0);
        let b = q.join(&key("c1"), "b", "op", 1);
        let other = q.join(&key("c2"), "c", "op", 2);
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
        assert!(b.wait_turn(Instant::now() + Duration::from_secs(5), &|| false));
        t.join().unwrap();
        drop(b);
        drop(other);
        assert!(q.is_empty());
    }

    #[test]
    fn a_cancelled_waiter_stops_waiting() {
        let q = Arc::new(WaitQueues::default());
        let _a = q.join(&key("c1"), "a", "op", 0);
        let b = q.join(&key("c1"), "b", "op", 0);
        let t = Instant::now();
        assert!(!b.wait_turn(t + Duration::from_secs(10), &|| true));
        assert!(t.elapsed() < Duration::from_secs(1));
    }
}

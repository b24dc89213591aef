//! A caller's place in the writer's queue: it waits on its [`Ticket`] until it is
//! answered ([`Turn::Done`]) or handed the committer role ([`Turn::Commit`]).
//!
//! Why it spins before it sleeps: on these VMs, waking a thread whose vCPU went idle
//! costs 100–150 µs, several commits' worth. The wait it ends is usually shorter: the
//! committer's batch, or the history move (about 250 µs for 64 rows). So one waiter at a
//! time (the [`SpinSlot`]), and only one that heads the writer's queue, watches its
//! ticket for up to [`SPIN_FOR`] before it parks on the condition variable; the others
//! park at once, so a crowd of waiters never burns more than one core, and a waiter
//! with others ahead of it (a long wait, on a busy machine) burns none. (With 16 HTTP
//! clients on 2 cores, letting any waiter spin was 6–8% slower in three of four
//! alternated runs, faster in the fourth: noisy, but no reason to burn the core.)
//!
//! Invariants:
//! - A turn only moves from `Waiting` to `Done` or `Commit`, once, stored under the mutex
//!   that guards `parked`.
//! - `set` notifies only when the waiter has parked (registered under the same mutex), so
//!   a wake is never lost and an answer to a spinning waiter costs no system call.

use super::lock;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Longest one waiter spins before it parks.
pub const SPIN_FOR: Duration = Duration::from_millis(1);

/// Where a waiting caller stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Turn {
    Waiting = 0,
    /// Answered: its reply is in its channel.
    Done = 1,
    /// Handed the committer role.
    Commit = 2,
}

impl Turn {
    fn from_u8(v: u8) -> Turn {
        match v {
            1 => Turn::Done,
            2 => Turn::Commit,
            _ => Turn::Waiting,
        }
    }
}

/// Who may spin now: at most one waiter of a writer at a time.
#[derive(Default)]
pub(super) struct SpinSlot(AtomicBool);

pub(super) struct Ticket {
    /// The turn, read without the mutex (by a spinning waiter too), written under it.
    turn: AtomicU8,
    /// The waiter sleeps on `wake` (or is about to): `set` must notify.
    parked: Mutex<bool>,
    wake: Condvar,
}

impl Ticket {
    pub(super) fn new() -> Arc<Ticket> {
        Arc::new(Ticket {
            turn: AtomicU8::new(Turn::Waiting as u8),
            parked: Mutex::new(false),
            wake: Condvar::new(),
        })
    }

    pub(super) fn set(&self, turn: Turn) {
        let parked = lock(&self.parked);
        self.turn.store(turn as u8, Ordering::Release);
        if *parked {
            self.wake.notify_one();
        }
    }

    pub(super) fn get(&self) -> Turn {
        Turn::from_u8(self.turn.load(Ordering::Acquire))
    }

    /// Waits until answered or handed the role: spins for up to [`SPIN_FOR`] if given a
    /// `slot` and it is free, then sleeps.
    pub(super) fn wait(&self, slot: Option<&SpinSlot>) -> Turn {
        if let Some(slot) = slot.filter(|s| {
            s.0.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        }) {
            let turn = self.spin();
            slot.0.store(false, Ordering::Release);
            if turn != Turn::Waiting {
                return turn;
            }
        }
        let mut parked = lock(&self.parked);
        *parked = true;
        loop {
            let turn = self.get();
            if turn != Turn::Waiting {
                return turn;
            }
            parked = self.wake.wait(parked).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn spin(&self) -> Turn {
        let start = Instant::now();
        loop {
            for _ in 0..64 {
                let turn = self.get();
                if turn != Turn::Waiting {
                    return turn;
                }
                std::hint::spin_loop();
            }
            if start.elapsed() >= SPIN_FOR {
                return self.get();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// Runs `wait` on a thread; its answer must come within 10 s.
    fn waiter(t: &Arc<Ticket>, slot: &Arc<SpinSlot>) -> mpsc::Receiver<Turn> {
        let (tx, rx) = mpsc::channel();
        let (t, slot) = (Arc::clone(t), Arc::clone(slot));
        std::thread::spawn(move || {
            let _ = tx.send(t.wait(Some(&slot)));
        });
        rx
    }

    #[test]
    fn a_spinning_waiter_is_answered_without_parking() {
        // A waiter preempted past its spin parks even when the answer came in time, so
        // under load some rounds may park; each is answered, and some never parked.
        let slot = Arc::new(SpinSlot::default());
        let mut unparked = 0;
        for _ in 0..20 {
            let t = Ticket::new();
            let answer = waiter(&t, &slot);
            std::thread::sleep(Duration::from_micros(200));
            t.set(Turn::Done);
            assert_eq!(answer.recv_timeout(Duration::from_secs(10)), Ok(Turn::Done));
            unparked += usize::from(!*lock(&t.parked));
            assert!(!slot.0.load(Ordering::Acquire), "the slot is free again");
        }
        assert!(unparked > 0, "every round parked");
    }

    #[test]
    fn a_waiter_without_the_slot_parks_and_is_woken() {
        let (t, slot) = (Ticket::new(), Arc::new(SpinSlot::default()));
        slot.0.store(true, Ordering::Release); // another waiter spins
        let answer = waiter(&t, &slot);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !*lock(&t.parked) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(*lock(&t.parked), "it parked at once");
        t.set(Turn::Commit);
        assert_eq!(
            answer.recv_timeout(Duration::from_secs(10)),
            Ok(Turn::Commit)
        );
    }

    #[test]
    fn a_waiter_past_its_spin_parks_and_is_woken() {
        let (t, slot) = (Ticket::new(), Arc::new(SpinSlot::default()));
        let answer = waiter(&t, &slot);
        std::thread::sleep(SPIN_FOR * 20);
        assert!(*lock(&t.parked));
        assert!(!slot.0.load(Ordering::Acquire), "it gave the slot up");
        t.set(Turn::Done);
        assert_eq!(answer.recv_timeout(Duration::from_secs(10)), Ok(Turn::Done));
    }

    #[test]
    fn no_answer_is_lost_when_it_races_the_wait() {
        let slot = Arc::new(SpinSlot::default());
        for i in 0..2000 {
            // Every other round someone else spins, so the waiter parks at once.
            slot.0.store(i % 2 == 1, Ordering::Release);
            let t = Ticket::new();
            let answer = waiter(&t, &slot);
            t.set(Turn::Done);
            assert_eq!(
                answer.recv_timeout(Duration::from_secs(10)),
                Ok(Turn::Done),
                "round {i}"
            );
        }
    }
}

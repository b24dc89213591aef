//! A status probe never makes a try-acquire of the same process fail (DESIGN §5a): both
//! pass one gate for the instant of their non-blocking attempt.
//!
//! Alone in its test binary on purpose: a process that forks (other tests spawn
//! children) lends its open lock files to each child between fork and exec, which keeps
//! a just-released lock held for a moment; that is not what this test is about.

use lockledger::kernel::flock::{probe, try_acquire};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[test]
fn probes_never_make_a_try_acquire_fail() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c_messages.lock");
    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let (path, stop) = (path.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut probes, mut saw_held) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                // Held now and then: by the acquirer, between its take and its drop.
                saw_held += u64::from(probe(&path).unwrap().held);
                probes += 1;
            }
            (probes, saw_held)
        })
    };
    let mut busy = 0;
    for _ in 0..20_000 {
        match try_acquire(&path, 0o600).unwrap() {
            Some(held) => drop(held),
            None => busy += 1,
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (probes, saw_held) = prober.join().unwrap();
    assert!(probes > 1000, "only {probes} probes ran");
    assert!(
        saw_held > 0,
        "the probes never overlapped a holder: the test proves nothing"
    );
    assert_eq!(busy, 0, "a probe made {busy} of 20000 try-acquires fail");
}

//! Bounded waiting: every wait in the tests and the tools ends at a deadline.
//!
//! Invariant: nothing here blocks without a deadline; the polling helpers sleep a fixed,
//! short interval ([`POLL`] unless given) between checks and check once more at the end,
//! so a condition that holds at the deadline is still seen.

use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// Default pause between two checks of a condition.
pub const POLL: Duration = Duration::from_millis(20);

/// Polls `cond` every [`POLL`] until it holds (true) or `deadline` passes (false).
pub fn wait_until(deadline: Instant, cond: impl FnMut() -> bool) -> bool {
    wait_until_every(deadline, POLL, cond)
}

/// [`wait_until`] with its own polling interval.
pub fn wait_until_every(
    deadline: Instant,
    every: Duration,
    mut cond: impl FnMut() -> bool,
) -> bool {
    loop {
        if cond() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::sleep(every.min(deadline - now));
    }
}

/// Polls `f` until it returns `Some`; panics naming `what` after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        std::thread::sleep(POLL);
    }
}

/// Polls `f` until it returns `Ok`; panics after `timeout` with the last `Err` (what was
/// seen instead).
pub fn poll_until<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// Polls `child` until it exits or `timeout` passes (None: still running).
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

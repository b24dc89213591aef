//! Helpers shared by the integration tests (each test file includes this module; not
//! every file uses every helper).
#![allow(dead_code)]

use serde_json::Value;
use std::path::Path;

/// The `event` names of history rows, in their order.
pub fn event_names(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["event"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// Asks the kernel whether anyone holds the lock file's flock (takes it for an instant
/// when nobody does; released when the file closes).
pub fn flock_is_free(path: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {path:?}: {e}"));
    // SAFETY: flock(2) on a descriptor we own for the duration of the call.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// Polls `child` until it exits or `timeout` passes.
pub fn wait_exit(
    child: &mut std::process::Child,
    timeout: std::time::Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// The lock with `field` in a status document's `locks` array, or in a bare array of
/// locks (what `lockledger status --json` prints).
pub fn lock_in(status: &Value, field: &str) -> Value {
    status
        .as_array()
        .or_else(|| status["locks"].as_array())
        .unwrap_or_else(|| panic!("no locks array in {status}"))
        .iter()
        .find(|l| l["field"] == field)
        .unwrap_or_else(|| panic!("no lock {field:?} in {status}"))
        .clone()
}

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

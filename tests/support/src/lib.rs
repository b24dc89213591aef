//! lockledger-harness: the one test harness of lockledger, used by every integration
//! test in `tests/*.rs` and by the chaos and benchmark tools (`tools/`).
//!
//! - [`server`]: the real `lockledger serve` binary on a free port (path given by the
//!   caller), killed on drop;
//! - [`process`]: clean `lockledger` commands, bounded runs, kill-on-drop children
//!   ([`process::ChildGuard`], [`process::Proc`]);
//! - [`group`]: a process group that ends all of a run's children on every exit path;
//! - [`http`]: the one HTTP/1.1 client (one-shot and keep-alive, plus raw connections);
//! - [`wait`]: waits that always end at a deadline;
//! - [`pg`]: throwaway PostgreSQL clusters ([`PgCluster`]), a database per test;
//! - here: small helpers about locks and history shared by the tests.
//!
//! Invariants: nothing here waits without a deadline, and no child process outlives the
//! handle that started it. The harness does not link the `lockledger` library: it talks
//! to the binary, its files and the kernel, as any client would.

pub mod group;
pub mod http;
pub mod pg;
pub mod process;
pub mod server;
pub mod wait;

pub use group::ProcessGroup;
pub use http::{Client, Conn, Request, Response};
pub use pg::{PgCluster, PgDurability};
pub use process::{exit_code, lockledger, run, send_signal, ChildGuard, Output, Proc, StderrTo};
pub use server::{Server, ServerOpts, StartError};
pub use wait::{poll_until, wait_exit, wait_for, wait_until, POLL};

use serde_json::Value;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

/// The `event` names of history rows, in their order.
pub fn event_names(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["event"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// One non-blocking `flock(LOCK_EX)` attempt on an open file, released at once: is the
/// lock free? (Errors other than "would block" are returned.)
pub fn flock_free(file: &File) -> std::io::Result<bool> {
    let fd = file.as_raw_fd();
    // SAFETY: fd is a valid descriptor owned by `file` for the duration of these calls.
    let rc = unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        // SAFETY: as above; unlocks the lock just taken.
        unsafe { libc::flock(fd, libc::LOCK_UN) };
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(err)
    }
}

/// Asks the kernel whether anyone holds the lock file's flock; panics when the file
/// cannot be opened or probed.
pub fn flock_is_free(path: &Path) -> bool {
    let f = File::open(path).unwrap_or_else(|e| panic!("open {path:?}: {e}"));
    flock_free(&f).unwrap_or_else(|e| panic!("flock {path:?}: {e}"))
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

//! Crash-test hooks: with `LOCKLEDGER_FAULT=<point>` (or `<point>:stop`) in the
//! environment, the process sends itself SIGKILL (or SIGSTOP) when it reaches the fault
//! point of that name. Tests use them to stop a process exactly where it matters:
//!
//! - `clear_after_fs_step`: between a clear's filesystem step and its commit
//!   (reconciliation repairs it);
//! - `inside_write`: inside a write transaction, holding SQLite's write lock (other
//!   processes must keep serving reads and name this one in their busy answers).
//!
//! Invariant: without the variable, a fault point is one cached comparison.

/// Stops or kills this process if `LOCKLEDGER_FAULT` names `point` (once per process: a
/// stopped process that is resumed goes on).
pub fn point(name: &str) {
    static FIRED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    static FAULT: std::sync::OnceLock<Option<(String, libc::c_int)>> = std::sync::OnceLock::new();
    let armed = FAULT.get_or_init(|| {
        let v = std::env::var("LOCKLEDGER_FAULT").ok()?;
        Some(match v.split_once(':') {
            Some((p, "stop")) => (p.to_string(), libc::SIGSTOP),
            _ => (v, libc::SIGKILL),
        })
    });
    if let Some((point, sig)) = armed {
        if point == name && !FIRED.swap(true, std::sync::atomic::Ordering::SeqCst) {
            log::error!("fault point {name} reached: signalling this process (LOCKLEDGER_FAULT)");
            // SAFETY: getpid and kill have no memory-safety preconditions.
            unsafe {
                libc::kill(libc::getpid(), *sig);
            }
        }
    }
}

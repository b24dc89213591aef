//! `lockledger hold`: take a lock and keep it until SIGTERM/SIGINT (or `--for-ms`),
//! renewing it; for demos and tests. `--external` takes only the kernel lock, with no
//! record, like a process lockledger does not manage.
//!
//! Prints one JSON line `{"event":"held",...}` once the lock is held, so a parent process
//! can wait for it, and `{"event":"released",...}` after letting go.

use super::{exit_code_of, GlobalOpts, EXIT_OK};
use crate::ids::{self, LockKey};
use crate::kernel::flock;
use crate::registry::{AcquireOptions, RegistryError};
use crate::store::StoreError;
use clap::Args;
use std::io::Write;
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
pub struct HoldArgs {
    pub owner: String,
    pub field: String,
    #[arg(long, default_value = "hold")]
    pub operation: String,
    #[arg(long, default_value = "lockledger-cli")]
    pub holder: String,
    /// How long to wait for the lock
    #[arg(long, default_value_t = 10_000)]
    pub wait_ms: u64,
    /// Renew this often (0: never) so a live holder is not held_too_long
    #[arg(long, default_value_t = 1_000)]
    pub renew_ms: u64,
    /// Release after this long instead of waiting for a signal
    #[arg(long)]
    pub for_ms: Option<u64>,
    /// Take only the kernel lock, with no record, like a process lockledger does not
    /// manage (for demos and tests of external holders)
    #[arg(long, hide = true)]
    pub external: bool,
}

/// Blocks SIGINT and SIGTERM in this thread (and the threads it starts later), so they
/// can be taken synchronously with `sigtimedwait`.
fn block_exit_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it, and
    // pthread_sigmask only changes this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Waits up to `timeout` for SIGINT/SIGTERM; true if one arrived.
fn wait_for_exit_signal(set: &libc::sigset_t, timeout: Duration) -> bool {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `set` is an initialised signal set; a null siginfo pointer is allowed.
    let sig = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
    sig == libc::SIGINT || sig == libc::SIGTERM
}

fn announce(line: serde_json::Value) {
    println!("{line}");
    let _ = std::io::stdout().flush();
}

pub fn hold(g: &GlobalOpts, a: HoldArgs) -> Result<i32, RegistryError> {
    if a.external {
        return hold_external(g, a);
    }
    let signals = block_exit_signals();
    let reg = g.open()?;
    let key = reg.key(g.namespace(), &a.owner, &a.field)?;
    let opts = AcquireOptions::new(a.holder, a.operation).wait(Duration::from_millis(a.wait_ms));
    let guard = reg.acquire(&key, &opts)?;
    announce(serde_json::json!({
        "event": "held",
        "owner": key.owner(),
        "field": key.field(),
        "token": guard.token(),
        "pid": std::process::id(),
    }));
    let started = Instant::now();
    let tick = if a.renew_ms == 0 {
        Duration::from_secs(3600)
    } else {
        Duration::from_millis(a.renew_ms)
    };
    loop {
        let remaining = a
            .for_ms
            .map(|f| Duration::from_millis(f).saturating_sub(started.elapsed()));
        if remaining.is_some_and(|r| r.is_zero()) {
            break;
        }
        if wait_for_exit_signal(&signals, remaining.map_or(tick, |r| r.min(tick))) {
            break;
        }
        if a.renew_ms > 0 {
            if let Err(e) = guard.renew() {
                eprintln!("lockledger: {e}");
                let code = exit_code_of(&e);
                drop(guard);
                return Ok(code);
            }
        }
    }
    guard.release()?;
    announce(serde_json::json!({"event": "released", "owner": key.owner(), "field": key.field()}));
    Ok(EXIT_OK)
}

/// Holds only the flock, with no registry record: an "external" holder.
fn hold_external(g: &GlobalOpts, a: HoldArgs) -> Result<i32, RegistryError> {
    let signals = block_exit_signals();
    let config = g.config()?;
    let key = LockKey::in_config(&config, g.namespace(), &a.owner, &a.field)?;
    let namespace = ids::namespace_of(&config, g.namespace())?;
    let dir = crate::registry::lockdir::ensure_storage(&config).map_err(StoreError::Io)?;
    let deadline = Instant::now() + Duration::from_millis(a.wait_ms);
    let held = flock::acquire_until(
        &dir.join(key.file_name(namespace)),
        config.lock_file_mode,
        deadline,
        &|| false,
    )
    .map_err(|e| RegistryError::Busy {
        message: e.to_string(),
        holder: None,
    })?;
    announce(
        serde_json::json!({"event": "held", "owner": key.owner(), "field": key.field(), "pid": std::process::id(), "external": true}),
    );
    wait_for_exit_signal(
        &signals,
        Duration::from_millis(a.for_ms.unwrap_or(u64::MAX / 4)),
    );
    drop(held);
    Ok(EXIT_OK)
}

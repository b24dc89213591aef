//! Background work of the service, on a thread of its own: the reaper (expired leases,
//! dead clients' leases), the registry-file watch, busy-answer flushing, periodic
//! reconciliation and hourly history pruning.
//!
//! Invariants: none of it waits behind requests (it has its own thread, not the shared
//! blocking pool), one round at a time; a failing round is logged and the next one runs
//! on schedule. [`Upkeep`] stops the thread when dropped.

use super::App;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The running upkeep thread; dropping it stops the thread after its current round.
#[derive(Debug)]
pub struct Upkeep {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Upkeep {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the upkeep thread: every `reaper_period` the reaper, the file watch and the
/// busy log; reconciliation every `reconcile_period` (default 5 s); pruning hourly.
pub fn spawn_upkeep(app: Arc<App>) -> std::io::Result<Upkeep> {
    let (stop, stopped) = mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("lockledger-upkeep".into())
        .spawn(move || run(&app, &stopped))?;
    Ok(Upkeep {
        stop: Some(stop),
        thread: Some(thread),
    })
}

fn run(app: &App, stopped: &mpsc::Receiver<()>) {
    let reg = &app.registry;
    let period = reg.config().reaper_period;
    let reconcile_every = reg.config().reconcile_period;
    // Reconciliation runs first thing (start-up) and then every `reconcile_period`; a
    // database whose write lock another process holds makes it wait and retry, never
    // keeps the service from starting.
    let mut last_reconcile: Option<Instant> = None;
    let mut last_prune: Option<Instant> = None;
    let mut first = true;
    loop {
        if !first
            && !matches!(
                stopped.recv_timeout(period),
                Err(mpsc::RecvTimeoutError::Timeout)
            )
        {
            break;
        }
        first = false;
        // Notices a deleted or replaced registry.db within one period, writes or not (the
        // registry logs it once and refuses every call from then on).
        let _ = reg.check_store();
        match reg.reap() {
            Ok(ended) => {
                app.metrics.expiries.inc_by(ended.len() as u64);
            }
            Err(e) => log::warn!("reaper: {e}"),
        }
        if let Err(e) = reg.flush_busy() {
            log::warn!("busy answers: {e}");
        }
        let due = match last_reconcile {
            None => true,
            Some(t) => reconcile_every.is_some_and(|p| t.elapsed() >= p),
        };
        if due {
            let actor = if last_reconcile.is_none() {
                "startup"
            } else {
                "reconciler"
            };
            match reg.reconcile(actor) {
                Ok(r) => {
                    if actor == "startup" && !r.reconciled.is_empty() {
                        log::warn!(
                            "start-up reconciliation repaired {} record(s)",
                            r.reconciled.len()
                        );
                    }
                    app.metrics.reconciled.inc_by(r.reconciled.len() as u64);
                    last_reconcile = Some(Instant::now());
                }
                // Retried next round (the start-up pass until it succeeds).
                Err(e) => log::warn!("reconcile: {e}"),
            }
        }
        if last_prune.is_none_or(|t| t.elapsed() >= Duration::from_secs(3600)) {
            if let Err(e) = reg.prune_history() {
                log::warn!("prune: {e}");
            }
            last_prune = Some(Instant::now());
        }
    }
    // A last flush, so busy answers of the final second are not lost.
    if let Err(e) = reg.flush_busy() {
        log::warn!("busy answers: {e}");
    }
}

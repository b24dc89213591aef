//! Background work of the service: the reaper (expired leases, dead clients' leases),
//! periodic reconciliation and hourly history pruning.
//!
//! Invariant: all of it runs on the blocking pool, one round at a time; a failing round
//! is logged and the next one runs on schedule.

use super::App;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Periodic upkeep: reap leases every `reaper_period`, reconcile every
/// `reconcile_period` (default 5 s), prune hourly.
pub fn spawn_upkeep(app: Arc<App>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let period = app.registry.config().reaper_period;
        let reconcile_every = app.registry.config().reconcile_period;
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_reconcile = Instant::now();
        let mut last_prune: Option<Instant> = None;
        loop {
            tick.tick().await;
            let reg = app.registry.clone();
            let do_reconcile = reconcile_every.is_some_and(|p| last_reconcile.elapsed() >= p);
            let do_prune = last_prune.is_none_or(|t| t.elapsed() >= Duration::from_secs(3600));
            let res = tokio::task::spawn_blocking(move || {
                // Notices a deleted or replaced registry.db within one period, writes or
                // not (the registry logs it once and refuses every call from then on).
                let _ = reg.check_store();
                let reaped = reg.reap().map(|v| v.len()).unwrap_or_else(|e| {
                    log::warn!("reaper: {e}");
                    0
                });
                let reconciled = if do_reconcile {
                    reg.reconcile("reconciler")
                        .map(|r| r.reconciled.len())
                        .unwrap_or_else(|e| {
                            log::warn!("reconcile: {e}");
                            0
                        })
                } else {
                    0
                };
                if do_prune {
                    if let Err(e) = reg.prune_history() {
                        log::warn!("prune: {e}");
                    }
                }
                (reaped, reconciled)
            })
            .await;
            if let Ok((reaped, reconciled)) = res {
                app.metrics.expiries.inc_by(reaped as u64);
                app.metrics.reconciled.inc_by(reconciled as u64);
            }
            if do_reconcile {
                last_reconcile = Instant::now();
            }
            if do_prune {
                last_prune = Some(Instant::now());
            }
        }
    })
}

//! Waiting for the shared grant without a thread: a lease acquire on a PostgreSQL
//! registry, once it heads this service's queue and holds this host's flock, waits in
//! the database's line as a future.
//!
//! Invariants: each try is one short call on the blocking pool (`store::pg::line`);
//! between tries the future sleeps until the lock is announced free here (the listener
//! wakes the lock's one waiter of this service) or a backoff tick (1 ms doubling to
//! 50 ms) passes; a future dropped mid-wait leaves its place (or lets it lapse), and a
//! grant that lands during its last try is given back at once; every busy answer is
//! counted in the shared history and carries the holder's report.

use super::dist::{off_thread, Dist};
use super::grant::GrantSpec;
use super::{Registry, RegistryError};
use crate::ids::LockKey;
use crate::store::pg::line::{FirstTry, Line};
use crate::store::pg::{GrantRequest, Granted, PgError};
use crate::store::StoreError;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A place in a lock's line held by an async waiter: left when dropped (on the blocking
/// pool; the row lapses by itself if even that cannot run).
struct InLine {
    d: Arc<Dist>,
    lock_id: i64,
    line: Option<Line>,
}

impl InLine {
    async fn leave(&mut self) {
        if let Some(mut line) = self.line.take() {
            let d = Arc::clone(&self.d);
            let _ = tokio::task::spawn_blocking(move || d.store.leave_line(&mut line)).await;
        }
    }
}

impl Drop for InLine {
    fn drop(&mut self) {
        self.d.forget_wake(self.lock_id);
        let Some(mut line) = self.line.take() else {
            return;
        };
        let d = Arc::clone(&self.d);
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            drop(h.spawn_blocking(move || d.store.leave_line(&mut line)));
        }
    }
}

/// Tells a blocking wait that its caller went away (set when the future is dropped).
struct SetOnDrop(Arc<AtomicBool>);
impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl Registry {
    /// The shared grant of `req`, waiting in the database's line until `deadline`
    /// without holding a thread: each try is a short call on the blocking pool, and
    /// between tries this future sleeps until the lock is announced free here or a backoff
    /// tick (1 ms doubling to 50 ms) passes. If this future is dropped, its place is left
    /// (or lapses), and a grant that lands during its last try is given back.
    pub(super) async fn dist_wait_in_line(
        &self,
        d: &Arc<Dist>,
        req: GrantRequest,
        deadline: tokio::time::Instant,
    ) -> Result<Result<Granted, PgError>, RegistryError> {
        let gone = Arc::new(AtomicBool::new(false));
        let _dropped = SetOnDrop(Arc::clone(&gone));
        let waits = deadline > tokio::time::Instant::now();
        let dd = Arc::clone(d);
        let first = off_thread(move || Ok(dd.store.first_try(&req, waits))).await?;
        let line = match first {
            Ok(FirstTry::Granted(g)) => return Ok(Ok(g)),
            Ok(FirstTry::Refused(line)) => line,
            Err(e) => return Ok(Err(e)),
        };
        let wake = d.wake_for(line.lock_id());
        let mut place = InLine {
            d: Arc::clone(d),
            lock_id: line.lock_id(),
            line: Some(line),
        };
        let mut pause = Duration::from_millis(1);
        loop {
            let now = tokio::time::Instant::now();
            if now >= deadline {
                let refusal = place.line.as_ref().map(Line::give_up);
                place.leave().await;
                return Ok(Err(refusal.unwrap_or_else(|| {
                    PgError::Postgres("the wait ended without a refusal".into())
                })));
            }
            tokio::select! {
                _ = wake.notified() => pause = Duration::from_millis(1),
                _ = tokio::time::sleep_until((now + pause).min(deadline)) => {
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
            }
            let Some(mut line) = place.line.take() else {
                return Ok(Err(PgError::Postgres("a wait lost its line".into())));
            };
            let (dd, gone) = (Arc::clone(d), Arc::clone(&gone));
            let (line, got) = off_thread(move || {
                let got = dd.store.try_in_line(&mut line);
                if let (Ok(Some(g)), true) = (&got, gone.load(Ordering::Relaxed)) {
                    // Granted as its caller went away: give it back at once.
                    if let Some(id) = &g.lease_id {
                        let _ = dd.store.release(id);
                    }
                }
                Ok((line, got))
            })
            .await?;
            place.line = Some(line);
            match got {
                Ok(Some(g)) => {
                    place.line = None;
                    return Ok(Ok(g));
                }
                Ok(None) => {}
                Err(e) => {
                    place.leave().await;
                    return Ok(Err(e));
                }
            }
        }
    }

    /// The busy answer for `key` with its holder's report, made on the blocking pool; the
    /// answer is counted in the shared history (folded `wait_timeout` rows).
    pub(super) async fn dist_busy(
        &self,
        key: &LockKey,
        spec: &GrantSpec,
        waited: Duration,
    ) -> RegistryError {
        self.note_busy(key, spec, waited, false);
        let (me, k) = (self.clone(), key.clone());
        let answer = move || {
            if let Err(e) = me.flush_busy() {
                log::warn!("cannot write busy answers to the shared database: {e}");
            }
            me.busy_error(&k, waited)
        };
        match tokio::task::spawn_blocking(answer).await {
            Ok(e) => e,
            Err(_) => RegistryError::Store(StoreError::JobPanicked),
        }
    }
}

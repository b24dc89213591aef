//! The listener: accepting connections and serving HTTP/1.1 on each, with the limits
//! that keep one client from starving the others.
//!
//! Invariants:
//! - A request head must arrive within [`HEADER_READ_TIMEOUT`] of the connection being
//!   ready to read one (hyper's header-read timeout): a half-sent header (slowloris) and
//!   an idle keep-alive connection are both closed after it.
//! - At most `max_connections` are open at once, below the process's file-descriptor
//!   limit. When the cap is reached, the oldest connection is asked to close (idle ones
//!   close at once, busy ones after their request), so a new caller — a health check —
//!   is still answered; the first time, and then at most once a minute, it is logged.
//! - An accept error (out of file descriptors) is logged and retried after a pause; it
//!   never ends the service.

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// How long a request head may take to arrive by default (also the keep-alive idle
/// timeout); `serve --header-timeout-ms` changes it.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// File descriptors kept free of connections (lock files, the database, /proc reads).
const FD_RESERVE: u64 = 256;

/// The connection cap for this process: `wanted`, but below its file-descriptor limit
/// (raised to the hard limit first).
pub fn connection_cap(wanted: usize) -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we pass.
    let soft = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return wanted.min(512);
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
        lim.rlim_cur
    };
    let room = soft.saturating_sub(FD_RESERVE).max(16);
    wanted.min(usize::try_from(room).unwrap_or(usize::MAX))
}

/// The open connections, oldest first, each with the signal that asks it to close.
#[derive(Debug, Default)]
struct Tracker {
    open: Mutex<VecDeque<(u64, Arc<Notify>)>>,
    next_id: AtomicU64,
    last_warned: Mutex<Option<Instant>>,
}

impl Tracker {
    fn open(&self) -> std::sync::MutexGuard<'_, VecDeque<(u64, Arc<Notify>)>> {
        // Single pushes and removes: a poisoned list is still consistent.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a new connection, asking the oldest to close when at `cap`.
    fn admit(&self, cap: usize) -> (u64, Arc<Notify>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let close = Arc::new(Notify::new());
        let mut open = self.open();
        if open.len() >= cap {
            if let Some((_, oldest)) = open.pop_front() {
                oldest.notify_one();
            }
            self.warn_at_cap(cap);
        }
        open.push_back((id, Arc::clone(&close)));
        (id, close)
    }

    fn leave(&self, id: u64) {
        self.open().retain(|(i, _)| *i != id);
    }

    fn warn_at_cap(&self, cap: usize) {
        let mut last = self.last_warned.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
            log::warn!(
                "connection cap reached ({cap} open): closing the oldest connections to \
                 admit new ones (raise the file-descriptor limit or max_connections)"
            );
            *last = Some(Instant::now());
        }
    }
}

/// Serves `service` on `listener` until `shutdown` resolves; then stops accepting and
/// asks every connection to close (in-flight requests finish).
pub async fn run<S>(
    listener: TcpListener,
    service: S,
    max_connections: usize,
    header_timeout: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) where
    S: tower_service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = warp::reply::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let tracker = Arc::new(Tracker::default());
    let mut shutdown = std::pin::pin!(shutdown);
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and friends: let connections close, then try again.
                log::warn!("cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (id, close) = tracker.admit(max_connections);
        let tracker = Arc::clone(&tracker);
        let svc = TowerToHyperService::new(service.clone());
        tasks.spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .keep_alive(true);
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = close.notified() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(header_timeout, conn.as_mut()).await;
                }
            }
            tracker.leave(id);
        });
        // Reap finished connection tasks as we go, so the set stays small.
        while tasks.try_join_next().is_some() {}
    }
    drop(listener);
    for (_, close) in tracker.open().drain(..) {
        close.notify_one();
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
}

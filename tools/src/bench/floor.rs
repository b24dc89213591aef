//! The floors under each path, measured in the same run as the path: what one operation
//! could cost here if lockledger added nothing to the work it cannot avoid.
//!
//! - a flock pair: open + `flock(LOCK_EX|LOCK_NB)` + unlock + close of a lock file;
//! - a one-row commit with the registry's settings: a `released` row written by
//!   `store::history::insert_event` into a scratch registry database opened by
//!   `store::db::open_and_migrate` (the real schema, indexes, WAL, `synchronous=NORMAL`);
//! - a bare HTTP round trip: `GET /bare` on one keep-alive connection to a minimal warp
//!   route served by this process on the service's own runtime settings (a default
//!   multi-thread tokio runtime, as `src/cli/serve.rs` builds, with worker threads = cores)
//!   and the service's own accept loop (`lockledger::http::server::run`, header-read
//!   timeout and connection cap included); `GET /bare-blocking` adds one hop through
//!   `spawn_blocking`, which every service route takes for its registry call.
//!
//! Invariants: the bare server is stopped when its [`BareServer`] is dropped (it serves
//! only this process's clients, on 127.0.0.1); floors are measured right after the path
//! they are compared with, so both see the same machine.

use crate::machine::cpu_seconds;
use crate::report::{now_ms, pct};
use crate::R;
use lockledger::store::history::{self, EventKind, NewEvent};
use lockledger::store::records;
use lockledger::{Config, LockKey};
use lockledger_harness::{flock_free, Client, Request};
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};
use warp::Filter;

/// µs per open + flock + unlock + close of a lock file (the floor of any file lock).
pub fn raw_flock_us(path: &Path) -> R<f64> {
    let n = 20_000;
    let t = Instant::now();
    for _ in 0..n {
        let f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| format!("open: {e}"))?;
        if !flock_free(&f).map_err(|e| format!("flock: {e}"))? {
            return Err("raw flock file is held".into());
        }
    }
    Ok(t.elapsed().as_secs_f64() * 1e6 / n as f64)
}

/// A scratch registry database (its own storage directory under `dir`) and the id of
/// one lock row in it, for the commit floors.
pub fn floor_db(dir: &Path, name: &str) -> R<(rusqlite::Connection, i64)> {
    let config = Config::defaults(dir.join(name));
    let conn = lockledger::store::db::open_and_migrate(&config).map_err(|e| e.to_string())?;
    let key = LockKey::in_config(&config, None, "floor", "messages").map_err(|e| e.to_string())?;
    let file = key.file_name(config.default_namespace());
    let (lock_id, _) =
        records::grant_token(&conn, &key, &file, now_ms()).map_err(|e| e.to_string())?;
    Ok((conn, lock_id))
}

/// The row each floor commit writes: a `released` event, as a release does.
pub fn floor_event(lock_id: i64) -> NewEvent<'static> {
    NewEvent {
        at: now_ms(),
        lock_id,
        namespace: "conversation",
        owner: "floor",
        field: "messages",
        event: Some(EventKind::Released),
        token: Some(1),
        held_ms: Some(1),
        ..NewEvent::default()
    }
}

/// µs per one-row commit (autocommit) on the calling thread, over `dur`.
pub fn raw_commit_us(dir: &Path, name: &str, dur: Duration) -> R<f64> {
    let (conn, lock_id) = floor_db(dir, name)?;
    let ev = floor_event(lock_id);
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed() < dur {
        history::insert_event(&conn, &ev).map_err(|e| e.to_string())?;
        n += 1;
    }
    Ok(t.elapsed().as_secs_f64() * 1e6 / n as f64)
}

/// A minimal warp service in this process, on the service's runtime settings.
pub struct BareServer {
    pub port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BareServer {
    pub fn start() -> R<BareServer> {
        let (port_tx, port_rx) = std::sync::mpsc::channel::<R<u16>>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("bare-http".into())
            .spawn(move || {
                // As `lockledger serve` builds its runtime.
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = port_tx.send(Err(format!("tokio runtime: {e}")));
                        return;
                    }
                };
                rt.block_on(async move {
                    let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = port_tx.send(Err(format!("bind: {e}")));
                            return;
                        }
                    };
                    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
                    let _ = port_tx.send(Ok(port));
                    let body = || warp::reply::json(&serde_json::json!({"status": "ok"}));
                    let bare = warp::path!("bare").and(warp::get()).map(body);
                    let blocking =
                        warp::path!("bare-blocking")
                            .and(warp::get())
                            .then(move || async move {
                                let _ = tokio::task::spawn_blocking(|| ()).await;
                                body()
                            });
                    let routes = bare.or(blocking);
                    lockledger::http::server::run(
                        listener,
                        warp::service(routes),
                        4096,
                        Duration::from_secs(10),
                        async {
                            let _ = stop_rx.await;
                        },
                    )
                    .await;
                });
            })
            .map_err(|e| format!("cannot start the bare HTTP thread: {e}"))?;
        let port = port_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| "the bare HTTP server did not start".to_string())??;
        Ok(BareServer {
            port,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// p50 and p99 (µs) of `GET path` on one keep-alive connection over `dur`, after a
    /// short warm-up.
    pub fn round_trip_us(&self, path: &str, dur: Duration) -> R<(f64, f64)> {
        round_trip_us(self.port, path, dur)
    }

    /// Round trips per second of `clients` keep-alive clients (threads) on `GET /bare`
    /// over `dur`, and the CPU (cores) this process used meanwhile (server and clients).
    pub fn load(&self, clients: usize, dur: Duration) -> R<(f64, f64)> {
        let port = self.port;
        let barrier = Barrier::new(clients + 1);
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..clients)
                .map(|_| {
                    let (barrier, stop) = (&barrier, &stop);
                    s.spawn(move || -> R<u64> {
                        let mut c = Client::new(port);
                        let req = Request::get("/bare");
                        let mut warm = Ok(());
                        for _ in 0..50 {
                            warm = c.send(&req).map(|_| ()).map_err(|e| e.to_string());
                            if warm.is_err() {
                                break;
                            }
                        }
                        barrier.wait();
                        warm?;
                        let mut n = 0;
                        while !stop.load(Ordering::Relaxed) {
                            let r = c.send(&req).map_err(|e| e.to_string())?;
                            if r.status != 200 {
                                return Err(format!("GET /bare: HTTP {}", r.status));
                            }
                            n += 1;
                        }
                        Ok(n)
                    })
                })
                .collect();
            barrier.wait();
            let cpu0 = cpu_seconds("self");
            let t = Instant::now();
            std::thread::sleep(dur);
            stop.store(true, Ordering::Relaxed);
            let mut total = 0;
            for h in handles {
                total += h.join().map_err(|_| "a client panicked".to_string())??;
            }
            let secs = t.elapsed().as_secs_f64();
            let cores = match (cpu0, cpu_seconds("self")) {
                (Some(a), Some(b)) => (b - a) / secs,
                _ => f64::NAN,
            };
            Ok((total as f64 / secs, cores))
        })
    }
}

impl Drop for BareServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// p50 and p99 (µs) of `GET path` on one keep-alive connection to `port` over `dur`,
/// after 100 warm-up requests.
pub fn round_trip_us(port: u16, path: &str, dur: Duration) -> R<(f64, f64)> {
    let mut c = Client::new(port);
    let req = Request::get(path);
    let mut one = || -> R<f64> {
        let t = Instant::now();
        let r = c.send(&req).map_err(|e| format!("GET {path}: {e}"))?;
        if r.status != 200 {
            return Err(format!("GET {path}: HTTP {}", r.status));
        }
        Ok(t.elapsed().as_secs_f64() * 1e6)
    };
    for _ in 0..100 {
        one()?;
    }
    let mut v = Vec::new();
    let t = Instant::now();
    while t.elapsed() < dur {
        v.push(one()?);
    }
    v.sort_by(f64::total_cmp);
    Ok((pct(&v, 0.5), pct(&v, 0.99)))
}

/// The HTTP floors of one moment: the bare route, the bare route through
/// `spawn_blocking`, and the service's own `/healthz` (p50/p99 µs each), and a
/// one-row commit (µs).
#[derive(Debug, Clone, Copy)]
pub struct HttpFloors {
    pub bare: (f64, f64),
    pub bare_blocking: (f64, f64),
    pub healthz: Option<(f64, f64)>,
    pub commit_us: f64,
}

impl HttpFloors {
    /// Measures them now (`service_port`: the service whose `/healthz` to time).
    pub fn measure(
        bare: &BareServer,
        service_port: Option<u16>,
        scratch: &Path,
        name: &str,
    ) -> R<HttpFloors> {
        let dur = Duration::from_millis(700);
        Ok(HttpFloors {
            bare: bare.round_trip_us("/bare", dur)?,
            bare_blocking: bare.round_trip_us("/bare-blocking", dur)?,
            healthz: match service_port {
                Some(p) => Some(round_trip_us(p, "/healthz", dur)?),
                None => None,
            },
            commit_us: raw_commit_us(scratch, name, Duration::from_millis(700))?,
        })
    }

    /// "bare round trip p50 X µs (through spawn_blocking Y µs; the service's /healthz Z
    /// µs); one-row commit W µs"
    pub fn describe(&self) -> String {
        format!(
            "bare warp round trip (in-process, the service's runtime and accept loop) p50 {:.0} µs p99 {:.0} µs; through one spawn_blocking p50 {:.0} µs; the service's GET /healthz p50 {}; one-row commit {:.1} µs",
            self.bare.0,
            self.bare.1,
            self.bare_blocking.0,
            self.healthz
                .map_or("-".into(), |h| format!("{:.0} µs p99 {:.0} µs", h.0, h.1)),
            self.commit_us
        )
    }
}

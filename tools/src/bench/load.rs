//! Lease traffic over HTTP: a keep-alive lease client (the harness's [`Client`]) and the
//! timed load of N such clients, each on its own lock, that three groups measure.
//!
//! Invariants: every request of a measurement goes over one kept-alive connection per
//! client (the round trips are what is measured); a request that does not answer 200 is
//! an error of the measurement, never silently counted.

use crate::machine::cpu_seconds;
use crate::R;
use lockledger_harness::{Client, Request};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

/// The body of a benchmark pair's acquire.
pub const PAIR_BODY: &[u8] = br#"{"holder":"bench","operation":"pair","ttl_ms":30000}"#;

/// One keep-alive connection speaking the lease API.
pub struct LeaseClient(Client);

impl LeaseClient {
    pub fn new(port: u16) -> LeaseClient {
        LeaseClient(Client::new(port))
    }

    /// A request that must answer 200 (a JSON body when one is given).
    pub fn ok(&mut self, method: &str, path: &str, body: Option<&[u8]>) -> R<Vec<u8>> {
        let mut req = Request::new(method, path);
        if let Some(b) = body {
            req = req.json_text(b);
        }
        let r = self
            .0
            .send(&req)
            .map_err(|e| format!("{method} {path}: {e}"))?;
        if r.status != 200 {
            return Err(format!(
                "{method} {path}: HTTP {}: {}",
                r.status,
                r.text().chars().take(300).collect::<String>()
            ));
        }
        Ok(r.body)
    }

    /// Acquires a lease; returns (lease id, expires_at in ms).
    pub fn acquire(&mut self, owner: &str, field: &str, body: &[u8]) -> R<(String, i64)> {
        let path = format!("/api/v1/locks/{owner}/{field}/acquire");
        let body = self.ok("POST", &path, Some(body))?;
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| format!("acquire answer: {e}"))?;
        let id = v["lease_id"]
            .as_str()
            .ok_or_else(|| format!("no lease_id in {v}"))?
            .to_string();
        let expires = v["expires_at"]
            .as_str()
            .and_then(lockledger::clock::parse_time)
            .unwrap_or(0);
        Ok((id, expires))
    }

    pub fn release(&mut self, lease_id: &str) -> R<()> {
        self.ok("DELETE", &format!("/api/v1/leases/{lease_id}"), Some(b""))
            .map(|_| ())
    }

    /// One acquire+release pair of a lease.
    pub fn pair(&mut self, owner: &str) -> R<()> {
        let (id, _) = self.acquire(owner, "messages", PAIR_BODY)?;
        self.release(&id)
    }
}

/// A timed run of `clients` keep-alive HTTP clients, each on its own lock.
pub struct Load {
    pub pairs: u64,
    pub secs: f64,
    pub server_cores: f64,
    pub bench_cores: f64,
}

impl Load {
    pub fn rate(&self) -> f64 {
        self.pairs as f64 / self.secs
    }
}

/// Warms each client up for 500 ms, then counts pairs for `dur` (owners `PREFIX0..`).
pub fn http_load(
    port: u16,
    server_pid: u32,
    clients: usize,
    prefix: &str,
    dur: Duration,
) -> R<Load> {
    let barrier = Barrier::new(clients + 1);
    let stop = AtomicBool::new(false);
    let warm = Duration::from_millis(500);
    let spid = server_pid.to_string();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|i| {
                let (barrier, stop) = (&barrier, &stop);
                let owner = format!("{prefix}{i}");
                s.spawn(move || -> R<u64> {
                    let mut c = LeaseClient::new(port);
                    let warm_end = Instant::now() + warm;
                    let mut warmed = Ok(());
                    while Instant::now() < warm_end {
                        warmed = c.pair(&owner);
                        if warmed.is_err() {
                            break;
                        }
                    }
                    barrier.wait();
                    warmed?;
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        c.pair(&owner)?;
                        n += 1;
                    }
                    Ok(n)
                })
            })
            .collect();
        barrier.wait();
        let (cpu0, me0) = (cpu_seconds(&spid), cpu_seconds("self"));
        let t0 = Instant::now();
        std::thread::sleep(dur);
        stop.store(true, Ordering::Relaxed);
        let mut pairs = 0;
        let mut err = None;
        for h in handles {
            match h.join() {
                Ok(Ok(n)) => pairs += n,
                Ok(Err(e)) => err = Some(e),
                Err(_) => err = Some("a client thread panicked".into()),
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        let (cpu1, me1) = (cpu_seconds(&spid), cpu_seconds("self"));
        if let Some(e) = err {
            return Err(e);
        }
        let cores = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => (b - a) / secs,
            _ => f64::NAN,
        };
        Ok(Load {
            pairs,
            secs,
            server_cores: cores(cpu0, cpu1),
            bench_cores: cores(me0, me1),
        })
    })
}

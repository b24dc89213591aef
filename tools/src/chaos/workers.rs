//! The holders of a chaos run: Rust library holders and HTTP lease holders (this binary
//! started with `--worker lib|http`) and the Python `filelock` holder script, all doing
//! read-modify-write on shared data while they hold a lock, and journaling what they did.
//!
//! Invariants:
//! - every Rust holder does the same fenced read-modify-write ([`fenced_rmw`]): admit its
//!   token at the data file, append the token, write under the token; the journal records
//!   admits (`A`), accepted writes (`W`), refused writes (`S`) and refused admits (`R`),
//!   with CLOCK_MONOTONIC stamps taken under the data file's serialising lock;
//! - a journal line is written with one `write`, so a worker killed at any moment leaves
//!   whole lines only;
//! - Python holders, which have no tokens, use only the `memory` locks of
//!   [`PY_OWNERS`] and journal each critical section (`P`) with its start and end.

use crate::{ADMIN_TOKEN, LEASE_TTL_MS, OWNERS, PY_OWNERS};
use lockledger::fence::{FenceError, FencedFile};
use lockledger::{AcquireOptions, Config, Registry, RegistryError};
use lockledger_harness::{Request, Response};
use lockledger_tools::rng::Rng;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

/// The data file of one lock, guarded by fencing tokens.
pub fn data_file(dir: &Path, owner: &str, field: &str) -> FencedFile {
    FencedFile::new(dir.join("data").join(format!("{owner}_{field}.data")))
}

/// One worker's append-only journal (`DIR/journal/ROLE-PID.log`).
struct Journal(std::fs::File);

impl Journal {
    fn open(dir: &Path, role: &str) -> std::io::Result<Journal> {
        let path = dir
            .join("journal")
            .join(format!("{role}-{}.log", std::process::id()));
        Ok(Journal(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        ))
    }
    fn line(&mut self, text: String) {
        // One write per line: a killed worker leaves whole lines behind.
        let _ = self.0.write_all(format!("{text}\n").as_bytes());
    }
}

/// The fenced read-modify-write every Rust holder does: admit, append own token, write.
fn fenced_rmw(
    ff: &FencedFile,
    journal: &mut Journal,
    owner: &str,
    field: &str,
    token: i64,
    pause: Duration,
) {
    match ff.admit(token) {
        Ok(admitted) => {
            journal.line(format!("A {owner} {field} {token} {}", admitted.at_ns));
            std::thread::sleep(pause);
            let mut data = admitted.value;
            data.extend_from_slice(format!("{token}\n").as_bytes());
            match ff.write(token, &data) {
                Ok(w) => journal.line(format!("W {owner} {field} {token} {}", w.at_ns)),
                Err(FenceError::Stale { .. }) => journal.line(format!("S {owner} {field} {token}")),
                Err(e) => eprintln!("chaos worker: write failed: {e}"),
            }
        }
        Err(FenceError::Stale { .. }) => journal.line(format!("R {owner} {field} {token}")),
        Err(e) => eprintln!("chaos worker: admit failed: {e}"),
    }
}

/// A library holder: the registry in this process, forever (until killed).
pub fn worker_lib(dir: &Path, seed: u64) -> Result<(), String> {
    let config = Config::load(&dir.join("storage"), None).map_err(|e| e.to_string())?;
    let reg = Registry::open(config).map_err(|e| e.to_string())?;
    let mut journal = Journal::open(dir, "lib").map_err(|e| e.to_string())?;
    let mut rng = Rng::new(seed ^ std::process::id() as u64);
    loop {
        let owner = OWNERS[rng.below(OWNERS.len() as u64) as usize];
        let field = if rng.chance(30) && PY_OWNERS.contains(&owner) {
            "memory"
        } else {
            "messages"
        };
        let key = reg.key(None, owner, field).map_err(|e| e.to_string())?;
        let opts = AcquireOptions::new("chaos-lib", "rmw").wait(Duration::from_secs(3));
        match reg.acquire(&key, &opts) {
            Ok(guard) => {
                let ff = data_file(dir, owner, field);
                let pause = Duration::from_micros(rng.below(4000));
                fenced_rmw(&ff, &mut journal, owner, field, guard.token(), pause);
                if let Err(e) = guard.release() {
                    eprintln!("chaos lib worker: release: {e}");
                }
            }
            Err(RegistryError::Busy { .. }) => {}
            Err(e) => {
                eprintln!("chaos lib worker: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// One request to the service on a connection of its own (JSON content type, the admin
/// token when `admin`); an error when no complete answer came back.
pub fn api(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
    admin: bool,
) -> Result<Response, String> {
    send(port, method, path, body, admin, Duration::from_secs(15))
}

/// [`api`] without the admin token, with `timeout` for the connection's reads and writes
/// (so no answer within it is an error).
pub fn api_within(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<Response, String> {
    send(port, method, path, body, false, timeout)
}

fn send(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
    admin: bool,
    timeout: Duration,
) -> Result<Response, String> {
    let mut req = Request::new(method, path)
        .header("Content-Type", "application/json")
        .timeout(timeout);
    if let Some(b) = body {
        req = req.body(b);
    }
    if admin {
        req = req.bearer(ADMIN_TOKEN);
    }
    req.try_send(port)
}

/// A lease holder over HTTP, forever (until killed, or until it vanishes on purpose).
pub fn worker_http(dir: &Path, port: u16, seed: u64) -> Result<(), String> {
    let mut journal = Journal::open(dir, "http").map_err(|e| e.to_string())?;
    let mut rng = Rng::new(seed ^ (std::process::id() as u64).rotate_left(17));
    let state = dir
        .join("state")
        .join(format!("http-{}", std::process::id()));
    loop {
        let owner = OWNERS[rng.below(OWNERS.len() as u64) as usize];
        let body = format!(
            r#"{{"holder":"chaos-http","operation":"rmw","pid":{},"ttl_ms":{LEASE_TTL_MS},"wait_ms":3000}}"#,
            std::process::id()
        );
        let path = format!("/api/v1/locks/{owner}/messages/acquire");
        let r = match api(port, "POST", &path, Some(&body), false) {
            Ok(r) => r,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if r.status != 200 {
            if r.status >= 500 {
                std::thread::sleep(Duration::from_millis(50));
            }
            continue;
        }
        let v = r.json_or_null();
        let (Some(lease), Some(token)) = (v["lease_id"].as_str(), v["token"].as_i64()) else {
            continue;
        };
        let _ = std::fs::write(&state, format!("{owner} messages {token}"));
        if rng.chance(3) {
            // Vanish mid-lease without releasing: the service must notice this pid died.
            std::process::exit(0);
        }
        let ff = data_file(dir, owner, "messages");
        let pause = if rng.chance(10) {
            Duration::from_millis(rng.below(300))
        } else {
            Duration::from_micros(rng.below(4000))
        };
        fenced_rmw(&ff, &mut journal, owner, "messages", token, pause);
        let _ = api(
            port,
            "DELETE",
            &format!("/api/v1/leases/{lease}"),
            None,
            false,
        );
        let _ = std::fs::remove_file(&state);
    }
}

/// The Python holder: argv = locks dir, data dir, journal file, owners...
pub const PY_WORKER: &str = r#"
import os, random, sys, time
from filelock import FileLock, Timeout
locks, data, journal, owners = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
j = open(journal, "a", buffering=1)
while True:
    owner = random.choice(owners)
    lock = FileLock(os.path.join(locks, f"{owner}_memory.lock"))
    try:
        lock.acquire(timeout=3)
    except Timeout:
        continue
    try:
        enter = time.monotonic_ns()
        p = os.path.join(data, f"py-{owner}_memory.log")
        n = len(open(p).read().splitlines()) if os.path.exists(p) else 0
        time.sleep(random.random() * 0.004)
        with open(p + ".tmp", "w") as f:
            f.write("x\n" * (n + 1))
        os.replace(p + ".tmp", p)
        j.write(f"P {owner} memory {enter} {time.monotonic_ns()}\n")
    finally:
        lock.release()
"#;

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
//!   [`PY_OWNERS`] and journal each critical section (`P`) with its start and end;
//! - the PostgreSQL mode's holders ([`worker_pg`]) are HTTP lease holders that also
//!   journal every grant, renewal, release and unanswered request.

use crate::{ADMIN_TOKEN, LEASE_TTL_MS, OWNERS, PY_OWNERS};
use lockledger::fence::{monotonic_ns, FenceError, FencedFile};
use lockledger::{AcquireOptions, Config, Registry, RegistryError};
use lockledger_harness::{Request, Response};
use lockledger_tools::rng::Rng;
use std::cell::Cell;
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
/// Between the admit and the write the holder does `hold` (a pause; lease renewals for
/// the PostgreSQL mode's holders).
fn fenced_rmw(
    ff: &FencedFile,
    journal: &mut Journal,
    owner: &str,
    field: &str,
    token: i64,
    hold: impl FnOnce(&mut Journal),
) {
    match ff.admit(token) {
        Ok(admitted) => {
            journal.line(format!("A {owner} {field} {token} {}", admitted.at_ns));
            hold(journal);
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
                let hold = |_: &mut Journal| std::thread::sleep(pause);
                fenced_rmw(&ff, &mut journal, owner, field, guard.token(), hold);
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

/// The lease id and token of a granted acquire. Otherwise None, after a pause when the
/// service did not answer (100 ms) or failed (50 ms): a refusal is tried again at once.
fn granted_lease(r: Result<Response, String>) -> Option<(String, i64)> {
    let r = match r {
        Ok(r) => r,
        Err(_) => {
            std::thread::sleep(Duration::from_millis(100));
            return None;
        }
    };
    if r.status != 200 {
        if r.status >= 500 {
            std::thread::sleep(Duration::from_millis(50));
        }
        return None;
    }
    let v = r.json_or_null();
    Some((v["lease_id"].as_str()?.to_string(), v["token"].as_i64()?))
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
        let Some((lease, token)) = granted_lease(api(port, "POST", &path, Some(&body), false))
        else {
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
        let hold = |_: &mut Journal| std::thread::sleep(pause);
        fenced_rmw(&ff, &mut journal, owner, "messages", token, hold);
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

/// How long a PostgreSQL-mode holder's acquire waits for its lock (`wait_ms`).
pub const PG_ACQUIRE_WAIT_MS: u64 = 3_000;

/// How a request of a PostgreSQL-mode holder ended, as its journal records it: the
/// answer's status, `refused` (nothing listens: the service is down) or `unanswered`
/// (connected, but no complete answer came back).
fn outcome(r: &Result<Response, String>) -> String {
    match r {
        Ok(r) => r.status.to_string(),
        Err(e) if e.contains("cannot connect") => "refused".into(),
        Err(_) => "unanswered".into(),
    }
}

/// A lease holder of the PostgreSQL mode (`--worker pg`), bound to one service (`svc`, on
/// `port`), forever (until killed, or until it vanishes on purpose). Like
/// [`worker_http`], plus: some holds are long and renew the lease every third of its
/// ttl, and every answer is journaled, so the run can tell a fenced holder (its renewal
/// or release answered `lease_gone`) from a second holder (released normally although
/// its write was refused, or after its ttl). Journal lines besides `A`/`W`/`S`/`R`
/// (`T0`, `T1`: CLOCK_MONOTONIC ns when the request was sent and when it failed):
/// - `T owner field token svc`: a grant received;
/// - `N owner field token outcome ttl_left_ms since_ms`: a renewal (`ttl_left_ms` is the
///   lease's end as answered minus this host's wall clock, -1 when not renewed;
///   `since_ms` how long after the answer of the grant or last renewal it was sent: the
///   lease ends at most a ttl after that answer, so past the ttl it must be gone);
/// - `E owner field token outcome since_ms`: the release (`200`, `410` = lease_gone, ...);
/// - `U svc kind T0 T1`: a request (`acquire`, `renew`, `release`) without an answer.
pub fn worker_pg(dir: &Path, port: u16, svc: &str, seed: u64) -> Result<(), String> {
    let pid = std::process::id();
    let mut journal = Journal::open(dir, "pg").map_err(|e| e.to_string())?;
    let mut rng = Rng::new(seed ^ (pid as u64).rotate_left(23));
    let state = dir.join("state").join(format!("pg-{pid}"));
    let holder = format!("chaos-pg-{svc}");
    // The request's answer and when it was sent.
    let timed = |journal: &mut Journal, kind: &str, f: &dyn Fn() -> Result<Response, String>| {
        let t0 = monotonic_ns();
        let r = f();
        if outcome(&r) == "unanswered" {
            journal.line(format!("U {svc} {kind} {t0} {}", monotonic_ns()));
        }
        (r, t0)
    };
    let ms_since = |from: u64, to: u64| to.saturating_sub(from) / 1_000_000;
    loop {
        let owner = OWNERS[rng.below(OWNERS.len() as u64) as usize];
        let body = format!(
            r#"{{"holder":"{holder}","operation":"rmw","pid":{pid},"ttl_ms":{LEASE_TTL_MS},"wait_ms":{PG_ACQUIRE_WAIT_MS}}}"#
        );
        let path = format!("/api/v1/locks/{owner}/messages/acquire");
        let (r, _) = timed(&mut journal, "acquire", &|| {
            api(port, "POST", &path, Some(&body), false)
        });
        // The lease ends at most a ttl after this (its grant was committed before).
        let granted = Cell::new(monotonic_ns());
        let Some((lease, token)) = granted_lease(r) else {
            continue;
        };
        journal.line(format!("T {owner} messages {token} {svc}"));
        let _ = std::fs::write(&state, format!("{owner} messages {token}"));
        if rng.chance(3) {
            // Vanish mid-lease without releasing: the service must notice this pid died.
            std::process::exit(0);
        }
        let ff = data_file(dir, owner, "messages");
        let renewals = if rng.chance(15) { 2 + rng.below(3) } else { 0 };
        let pause = if rng.chance(10) {
            Duration::from_millis(rng.below(300))
        } else {
            Duration::from_micros(rng.below(4000))
        };
        let renew_path = format!("/api/v1/leases/{lease}/renew");
        let hold = |journal: &mut Journal| {
            if renewals == 0 {
                std::thread::sleep(pause);
            }
            for _ in 0..renewals {
                std::thread::sleep(Duration::from_millis(LEASE_TTL_MS / 3));
                let (r, sent) = timed(journal, "renew", &|| {
                    api(port, "POST", &renew_path, None, false)
                });
                let since = ms_since(granted.get(), sent);
                let left = match &r {
                    Ok(r) if r.status == 200 => r.json_or_null()["expires_at"]
                        .as_str()
                        .and_then(lockledger::clock::parse_time)
                        .map_or(-1, |end| end - wall_ms()),
                    _ => -1,
                };
                journal.line(format!(
                    "N {owner} messages {token} {} {left} {since}",
                    outcome(&r)
                ));
                if !matches!(&r, Ok(r) if r.status == 200) {
                    break;
                }
                granted.set(monotonic_ns());
            }
        };
        fenced_rmw(&ff, &mut journal, owner, "messages", token, hold);
        let release = format!("/api/v1/leases/{lease}");
        let (r, sent) = timed(&mut journal, "release", &|| {
            api(port, "DELETE", &release, None, false)
        });
        let since = ms_since(granted.get(), sent);
        journal.line(format!(
            "E {owner} messages {token} {} {since}",
            outcome(&r)
        ));
        let _ = std::fs::remove_file(&state);
    }
}

/// This host's wall clock, UTC ms.
fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
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

//! lockledger-chaos: many holders, real faults, and the invariants checked at the end.
//!
//! The orchestrator starts the real service, Rust library holders and HTTP lease holders
//! (this binary in worker mode) and Python `filelock` holders, all doing read-modify-write
//! on shared data while holding a lock. A fault injector SIGKILLs holders, SIGSTOPs and
//! later SIGCONTs them, lets lease holders vanish mid-lease, force-clears live leases, and
//! SIGKILLs and restarts the service. At the end it checks, from journals the workers keep
//! and from the database:
//!
//! - overlaps: no two valid critical sections on one lock overlap in time (a fenced
//!   section is valid when its write was accepted; stamps are CLOCK_MONOTONIC taken under
//!   the data file's serialising lock);
//! - lost_updates: every accepted write is present in the final data;
//! - stale_writes_accepted: no write was accepted after a newer holder was admitted, and
//!   the tokens in the data strictly increase;
//! - stuck_locks: a lease whose holder was stopped is gone within ttl + reaper period
//!   (+ slack), and after the final restart and reconciliation every lock is free and no
//!   holder row is left;
//! - orphan_events: every `acquired` event is closed by exactly one closing event;
//! - integrity: `PRAGMA integrity_check` is ok.
//!
//! Fenced holders (library, lease) share the `messages` locks; Python holders, which have
//! no tokens, share the `memory` locks with library holders only (an unfenced holder
//! cannot be protected from a revoked lease holder, by design).

use clap::Parser;

#[path = "common/rng.rs"]
mod rng;
use lockledger::fence::{monotonic_ns, FenceError, FencedFile};
use lockledger::{AcquireOptions, Config, Registry, RegistryError};
use rng::Rng;
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ADMIN_TOKEN: &str = "chaos-admin-token";
const LEASE_TTL_MS: u64 = 800;
const REAPER_MS: u64 = 100;
const OWNERS: [&str; 3] = ["chaos0", "chaos1", "chaos2"];
const PY_OWNERS: [&str; 2] = ["chaos0", "chaos1"];

#[derive(Debug, Parser)]
#[command(about = "Chaos run for lockledger: real processes, real faults, checked invariants")]
struct Args {
    /// Short run (about a minute) for the test suite
    #[arg(long)]
    quick: bool,
    /// Seconds of faults (default: 40 quick, 600 long)
    #[arg(long)]
    seconds: Option<u64>,
    /// Keep the working directory here instead of a temporary one
    #[arg(long)]
    dir: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, hide = true)]
    worker: Option<String>,
    #[arg(long, hide = true)]
    port: Option<u16>,
}

fn data_file(dir: &Path, owner: &str, field: &str) -> FencedFile {
    FencedFile::new(dir.join("data").join(format!("{owner}_{field}.data")))
}

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

fn worker_lib(dir: &Path, seed: u64) -> Result<(), String> {
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

/// A minimal HTTP/1.1 client: one request per connection.
fn http(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
    admin: bool,
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(15)))?;
    let body = body.unwrap_or("");
    let auth = if admin {
        format!("Authorization: Bearer {ADMIN_TOKEN}\r\n")
    } else {
        String::new()
    };
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status line"))?;
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or(serde_json::Value::Null)
}

fn worker_http(dir: &Path, port: u16, seed: u64) -> Result<(), String> {
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
        let resp = http(
            port,
            "POST",
            &format!("/api/v1/locks/{owner}/messages/acquire"),
            Some(&body),
            false,
        );
        let (status, text) = match resp {
            Ok(r) => r,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if status != 200 {
            if status >= 500 {
                std::thread::sleep(Duration::from_millis(50));
            }
            continue;
        }
        let v = json(&text);
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
        let _ = http(
            port,
            "DELETE",
            &format!("/api/v1/leases/{lease}"),
            None,
            false,
        );
        let _ = std::fs::remove_file(&state);
    }
}

const PY_WORKER: &str = r#"
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Lib,
    Http,
    Python,
}

struct Worker {
    role: Role,
    child: Child,
    stopped_until: Option<Instant>,
}

struct Orchestrator {
    dir: PathBuf,
    exe: PathBuf,
    service_exe: PathBuf,
    port: u16,
    seed: u64,
    service: Option<Child>,
    workers: Vec<Worker>,
    faults: BTreeMap<&'static str, u64>,
    stuck: u64,
    /// (when to check, owner, token) for leases whose holder was SIGSTOPped.
    lease_checks: Vec<(Instant, String, i64)>,
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill has no memory-safety preconditions; the pid is our own child's.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

impl Orchestrator {
    fn start_service(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut child = Command::new(&self.service_exe)
                .args(["--storage"])
                .arg(self.dir.join("storage"))
                .args([
                    "serve",
                    "--bind",
                    &format!("127.0.0.1:{}", self.port),
                    "--admin-token",
                    ADMIN_TOKEN,
                ])
                .env("LOCKLEDGER_REAPER_PERIOD_MS", REAPER_MS.to_string())
                .env("RUST_LOG", "warn,warp::server=off")
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| format!("cannot start the service: {e}"))?;
            let mut line = String::new();
            let stdout = child.stdout.take().ok_or("no service stdout")?;
            let mut reader = BufReader::new(stdout);
            let _ = reader.read_line(&mut line);
            if line.contains("listening") {
                // Keep draining stdout so the service never blocks on a full pipe.
                std::thread::spawn(move || {
                    let mut sink = String::new();
                    while reader.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
                        sink.clear();
                    }
                });
                self.service = Some(child);
                return Ok(());
            }
            let _ = child.wait();
            if Instant::now() > deadline {
                return Err("the service did not come up (port taken?)".into());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn spawn(&mut self, role: Role) -> Result<(), String> {
        let dir = &self.dir;
        let child = match role {
            Role::Lib | Role::Http => Command::new(&self.exe)
                .args([
                    "--worker",
                    if role == Role::Lib { "lib" } else { "http" },
                    "--dir",
                ])
                .arg(dir)
                .args([
                    "--port",
                    &self.port.to_string(),
                    "--seed",
                    &self.seed.to_string(),
                ])
                .stdin(Stdio::null())
                .spawn(),
            Role::Python => Command::new("python3")
                .arg(dir.join("py_worker.py"))
                .arg(dir.join("storage").join("locks"))
                .arg(dir.join("data"))
                .arg(
                    dir.join("journal")
                        .join(format!("py-{}.log", self.workers.len())),
                )
                .args(PY_OWNERS)
                .stdin(Stdio::null())
                .spawn(),
        }
        .map_err(|e| format!("cannot start a {role:?} worker: {e}"))?;
        self.workers.push(Worker {
            role,
            child,
            stopped_until: None,
        });
        Ok(())
    }

    fn fault(&mut self, name: &'static str) {
        *self.faults.entry(name).or_default() += 1;
    }

    /// Respawns workers that exited (vanished lease holders, killed ones).
    fn reap_workers(&mut self) -> Result<(), String> {
        let mut gone = Vec::new();
        for (i, w) in self.workers.iter_mut().enumerate() {
            if let Ok(Some(_)) = w.child.try_wait() {
                gone.push(i);
            }
        }
        for i in gone.into_iter().rev() {
            let w = self.workers.remove(i);
            if w.role == Role::Http {
                self.fault("lease_holder_vanished_or_killed");
            }
            self.spawn(w.role)?;
        }
        Ok(())
    }

    fn lease_of(&self, pid: u32) -> Option<(String, i64)> {
        let text =
            std::fs::read_to_string(self.dir.join("state").join(format!("http-{pid}"))).ok()?;
        let mut parts = text.split_whitespace();
        let owner = parts.next()?.to_string();
        let _field = parts.next()?;
        Some((owner, parts.next()?.parse().ok()?))
    }

    fn lease_token_now(&self, owner: &str) -> Option<i64> {
        let (status, body) = http(
            self.port,
            "GET",
            &format!("/api/v1/locks/{owner}"),
            None,
            false,
        )
        .ok()?;
        if status != 200 {
            return None;
        }
        let v = json(&body);
        v["locks"].as_array()?.iter().find_map(|l| {
            // Held means the kernel lock is still taken for that lease: a lease whose
            // handle the reaper closed shows as stale until its record is written.
            (l["field"] == "messages" && l["kind"] == "lease" && l["state"] == "held")
                .then(|| l["token"].as_i64())
                .flatten()
        })
    }

    fn inject(&mut self, rng: &mut Rng) -> Result<(), String> {
        let now = Instant::now();
        // Resume the stopped.
        for w in &mut self.workers {
            if w.stopped_until.is_some_and(|t| now >= t) {
                signal(&w.child, libc::SIGCONT);
                w.stopped_until = None;
            }
        }
        // Check leases of stopped holders.
        let due: Vec<(Instant, String, i64)> = self
            .lease_checks
            .iter()
            .filter(|c| now >= c.0)
            .cloned()
            .collect();
        self.lease_checks.retain(|c| now < c.0);
        for (_, owner, token) in due {
            if self.lease_token_now(&owner) == Some(token) {
                eprintln!(
                    "chaos: lease {owner}/messages token {token} outlived its stopped holder"
                );
                self.stuck += 1;
            }
        }
        let running: Vec<usize> = (0..self.workers.len())
            .filter(|i| self.workers[*i].stopped_until.is_none())
            .collect();
        match rng.below(100) {
            0..=29 if !running.is_empty() => {
                let i = running[rng.below(running.len() as u64) as usize];
                if self.workers[i].role != Role::Python {
                    signal(&self.workers[i].child, libc::SIGKILL);
                    let _ = self.workers[i].child.wait();
                    self.fault("sigkill_holder");
                }
            }
            30..=59 if !running.is_empty() => {
                let i = running[rng.below(running.len() as u64) as usize];
                let pid = self.workers[i].child.id();
                signal(&self.workers[i].child, libc::SIGSTOP);
                self.workers[i].stopped_until =
                    Some(now + Duration::from_millis(1500 + rng.below(1000)));
                self.fault("sigstop_holder");
                if self.workers[i].role == Role::Http {
                    if let Some((owner, token)) = self.lease_of(pid) {
                        let slack = Duration::from_millis(LEASE_TTL_MS + REAPER_MS + 600);
                        self.lease_checks.push((now + slack, owner, token));
                    }
                }
            }
            60..=79 => {
                let owner = OWNERS[rng.below(OWNERS.len() as u64) as usize];
                if let Some(token) = self.lease_token_now(owner) {
                    let body = format!(
                        r#"{{"field":"messages","token":{token},"reason":"chaos force clear"}}"#
                    );
                    if let Ok((200, _)) = http(
                        self.port,
                        "POST",
                        &format!("/api/v1/locks/{owner}/force-clear"),
                        Some(&body),
                        true,
                    ) {
                        self.fault("force_clear_live_lease");
                    }
                }
            }
            80..=85 => {
                if let Some(mut svc) = self.service.take() {
                    signal(&svc, libc::SIGKILL);
                    let _ = svc.wait();
                    self.fault("sigkill_service");
                    self.start_service()?;
                }
            }
            _ => {}
        }
        self.reap_workers()
    }
}

#[derive(Debug, Default)]
struct Verdict {
    runs: u64,
    overlaps: u64,
    lost_updates: u64,
    stale_writes_accepted: u64,
    refused_writes: u64,
    refused_admits: u64,
}

fn analyse(dir: &Path) -> Result<Verdict, String> {
    let mut v = Verdict::default();
    // (owner, field) -> intervals; token -> admit stamp; accepted writes
    let mut intervals: HashMap<(String, String), Vec<(u64, u64)>> = HashMap::new();
    let mut admits: HashMap<(String, String), Vec<(i64, u64)>> = HashMap::new();
    let mut writes: HashMap<(String, String), Vec<(i64, u64)>> = HashMap::new();
    let mut py_sections: HashMap<String, u64> = HashMap::new();
    for entry in std::fs::read_dir(dir.join("journal")).map_err(|e| e.to_string())? {
        let path = entry.map_err(|e| e.to_string())?.path();
        let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
        for line in text.lines() {
            let p: Vec<&str> = line.split_whitespace().collect();
            let num = |i: usize| p.get(i).and_then(|s| s.parse::<i64>().ok());
            match p.as_slice() {
                ["A", o, f, ..] => {
                    if let (Some(t), Some(at)) = (num(3), num(4)) {
                        admits
                            .entry((o.to_string(), f.to_string()))
                            .or_default()
                            .push((t, at as u64));
                    }
                }
                ["W", o, f, ..] => {
                    if let (Some(t), Some(at)) = (num(3), num(4)) {
                        writes
                            .entry((o.to_string(), f.to_string()))
                            .or_default()
                            .push((t, at as u64));
                    }
                }
                ["S", ..] => v.refused_writes += 1,
                ["R", ..] => v.refused_admits += 1,
                ["P", o, f, ..] => {
                    if let (Some(a), Some(b)) = (num(3), num(4)) {
                        intervals
                            .entry((o.to_string(), f.to_string()))
                            .or_default()
                            .push((a as u64, b as u64));
                        *py_sections.entry(o.to_string()).or_default() += 1;
                        v.runs += 1;
                    }
                }
                _ => {}
            }
        }
    }
    for (key, ws) in &writes {
        let key_admits = admits.get(key).cloned().unwrap_or_default();
        let admit_of: HashMap<i64, u64> = key_admits.iter().copied().collect();
        let final_tokens: Vec<i64> = {
            let (_, data) = data_file(dir, &key.0, &key.1)
                .read()
                .map_err(|e| e.to_string())?;
            String::from_utf8_lossy(&data)
                .lines()
                .filter_map(|l| l.parse().ok())
                .collect()
        };
        v.stale_writes_accepted += final_tokens.windows(2).filter(|w| w[1] <= w[0]).count() as u64;
        for (token, at) in ws {
            v.runs += 1;
            if !final_tokens.contains(token) {
                v.lost_updates += 1;
            }
            // A write accepted after a newer holder was admitted is a stale write.
            if key_admits.iter().any(|(t, a)| t > token && a < at) {
                v.stale_writes_accepted += 1;
            }
            if let Some(start) = admit_of.get(token) {
                intervals
                    .entry(key.clone())
                    .or_default()
                    .push((*start, *at));
            }
        }
    }
    for (owner, n) in &py_sections {
        let p = dir.join("data").join(format!("py-{owner}_memory.log"));
        let lines = std::fs::read_to_string(p)
            .map(|t| t.lines().count() as u64)
            .unwrap_or(0);
        v.lost_updates += n.saturating_sub(lines);
    }
    for list in intervals.values_mut() {
        list.sort();
        let mut end = 0u64;
        for (s, e) in list.iter() {
            if *s < end {
                v.overlaps += 1;
            }
            end = end.max(*e);
        }
    }
    Ok(v)
}

fn database_checks(dir: &Path) -> Result<(u64, String, u64), String> {
    let db = dir.join("storage").join("registry.db");
    let run = |sql: &str| -> Result<serde_json::Value, String> {
        let r = lockledger::store::console::run(
            &db,
            sql,
            lockledger::store::console::Limits::default(),
        )
        .map_err(|e| e.to_string())?;
        Ok(r.rows
            .first()
            .and_then(|row| row.first())
            .cloned()
            .unwrap_or_default())
    };
    let orphans = run("SELECT count(*) FROM (SELECT lock_id, token,
                sum(event = 'acquired') AS a,
                sum(event IN ('released','expired','cleared','force_cleared','reconciled')) AS c
             FROM lock_events WHERE token IS NOT NULL
               AND event IN ('acquired','released','expired','cleared','force_cleared','reconciled')
             GROUP BY lock_id, token) WHERE a != 1 OR c != 1")?
    .as_u64()
    .unwrap_or(u64::MAX);
    let holders = run("SELECT count(*) FROM holders")?
        .as_u64()
        .unwrap_or(u64::MAX);
    let conn = lockledger::store::db::open_read_only(&db, Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    Ok((orphans, integrity, holders))
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

fn orchestrate(args: &Args) -> Result<bool, String> {
    let tmp;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile_dir()?;
            tmp.clone()
        }
    };
    for sub in ["storage", "data", "journal", "state"] {
        std::fs::create_dir_all(dir.join(sub)).map_err(|e| e.to_string())?;
    }
    std::fs::write(dir.join("py_worker.py"), PY_WORKER).map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let service_exe = exe.with_file_name("lockledger");
    if !service_exe.exists() {
        return Err(format!(
            "{} is missing: build it first (cargo build --release)",
            service_exe.display()
        ));
    }
    let seconds = args.seconds.unwrap_or(if args.quick { 40 } else { 600 });
    let seed = if args.seed == 0 {
        monotonic_ns()
    } else {
        args.seed
    };
    let mut o = Orchestrator {
        dir: dir.clone(),
        exe,
        service_exe,
        port: free_port()?,
        seed,
        service: None,
        workers: Vec::new(),
        faults: BTreeMap::new(),
        stuck: 0,
        lease_checks: Vec::new(),
    };
    o.start_service()?;
    let (libs, https, pys) = if args.quick { (2, 3, 1) } else { (3, 4, 2) };
    for _ in 0..libs {
        o.spawn(Role::Lib)?;
    }
    for _ in 0..https {
        o.spawn(Role::Http)?;
    }
    for _ in 0..pys {
        o.spawn(Role::Python)?;
    }
    let mut rng = Rng::new(seed);
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(250 + rng.below(400)));
        o.inject(&mut rng)?;
    }
    // Wind down: resume everyone, then stop every HTTP holder and check that its lease
    // goes within ttl + reaper period (+ slack) while the holder can no longer renew.
    for w in &mut o.workers {
        signal(&w.child, libc::SIGCONT);
        w.stopped_until = None;
    }
    let mut stopped_leases = Vec::new();
    for w in o.workers.iter().filter(|w| w.role == Role::Http) {
        signal(&w.child, libc::SIGSTOP);
        if let Some(lease) = o.lease_of(w.child.id()) {
            stopped_leases.push(lease);
        }
    }
    std::thread::sleep(Duration::from_millis(LEASE_TTL_MS + REAPER_MS + 600));
    for (owner, token) in &stopped_leases {
        if o.lease_token_now(owner) == Some(*token) {
            o.stuck += 1;
        }
    }
    for w in &mut o.workers {
        signal(&w.child, libc::SIGKILL);
        let _ = w.child.wait();
    }
    // Crash the service one last time, restart (start-up reconciliation), reconcile again.
    if let Some(mut svc) = o.service.take() {
        signal(&svc, libc::SIGKILL);
        let _ = svc.wait();
    }
    o.start_service()?;
    let _ = http(o.port, "POST", "/api/v1/reconcile", None, true);
    for owner in OWNERS {
        if let Ok((200, body)) = http(
            o.port,
            "GET",
            &format!("/api/v1/locks/{owner}"),
            None,
            false,
        ) {
            let v = json(&body);
            for l in v["locks"].as_array().cloned().unwrap_or_default() {
                if l["state"] != "free" {
                    eprintln!(
                        "chaos: {owner}/{} is {} after the run",
                        l["field"], l["state"]
                    );
                    o.stuck += 1;
                }
            }
        }
    }
    if let Some(svc) = o.service.take() {
        signal(&svc, libc::SIGTERM);
        let mut svc = svc;
        let _ = svc.wait();
    }
    let verdict = analyse(&dir)?;
    let (orphans, integrity, holders_left) = database_checks(&dir)?;
    o.stuck += holders_left;
    let faults: u64 = o.faults.values().sum();
    println!(
        "chaos: runs={} faults={} overlaps={} lost_updates={} stale_writes_accepted={} stuck_locks={} orphan_events={} integrity={}",
        verdict.runs, faults, verdict.overlaps, verdict.lost_updates, verdict.stale_writes_accepted, o.stuck, orphans, integrity
    );
    println!(
        "chaos: seconds={seconds} seed={seed} refused_stale_writes={} refused_admits={} faults_by_kind={:?}",
        verdict.refused_writes, verdict.refused_admits, o.faults
    );
    let ok = verdict.overlaps == 0
        && verdict.lost_updates == 0
        && verdict.stale_writes_accepted == 0
        && o.stuck == 0
        && orphans == 0
        && integrity == "ok"
        && verdict.runs > 0
        && faults > 0;
    if args.dir.is_none() && ok {
        let _ = std::fs::remove_dir_all(&dir);
    } else if !ok {
        eprintln!("chaos: evidence kept in {}", dir.display());
    }
    Ok(ok)
}

fn tempfile_dir() -> Result<PathBuf, String> {
    let dir = std::env::temp_dir().join(format!(
        "lockledger-chaos-{}-{}",
        std::process::id(),
        monotonic_ns()
    ));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    Ok(dir)
}

fn main() {
    let args = Args::parse();
    let result = match args.worker.as_deref() {
        Some("lib") => {
            worker_lib(args.dir.as_deref().unwrap_or(Path::new(".")), args.seed).map(|_| true)
        }
        Some("http") => worker_http(
            args.dir.as_deref().unwrap_or(Path::new(".")),
            args.port.unwrap_or(8787),
            args.seed,
        )
        .map(|_| true),
        Some(other) => Err(format!("unknown worker kind {other:?}")),
        None => orchestrate(&args),
    };
    match result {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("lockledger-chaos: {e}");
            std::process::exit(2);
        }
    }
}

//! The orchestrator's side of a chaos run: the service and the workers it runs, and the
//! fault injector (SIGKILL and SIGSTOP holders, force-clear live leases, SIGKILL and
//! restart the service, and the hostile-filesystem acts of `hostile`, one chance per
//! step). When the hostile mode steps the clock, the service always runs under
//! libfaketime (restarts included), so the offset in force survives a restart.
//!
//! Invariants:
//! - every child (service, workers, Python holders) is spawned into the run's
//!   [`ProcessGroup`]; the group is the first field of [`Orchestrator`], so dropping the
//!   orchestrator — normal end, error return, panic unwinding — kills the whole group and
//!   SIGCONTs it before anything else is reaped, and no SIGSTOPped worker can be left
//!   holding SQLite's write lock;
//! - the service always comes back on the same port (workers know only that port); a
//!   service that does not come up within its deadline ([`START_DEADLINE`]) is an error
//!   that carries the tail of its stderr;
//! - the fault schedule goes on while the orchestrator waits for the service: between
//!   start attempts, stopped workers whose pause is over are resumed (a library holder
//!   stopped inside a transaction holds SQLite's write lock, and the service cannot start
//!   until it lets go);
//! - a stopped worker is resumed after at most 2.5 s; an HTTP holder stopped while it held
//!   a lease is checked to have lost it within ttl + reaper period + slack.

use crate::hostile::Hostile;
use crate::workers::api;
use crate::{ADMIN_TOKEN, LEASE_TTL_MS, OWNERS, PY_OWNERS, REAPER_MS};
use lockledger_harness::process::signal;
use lockledger_harness::{ChildGuard, ProcessGroup, Server, ServerOpts, StderrTo};
use lockledger_tools::rng::Rng;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long a (re)start of the service may take, retries on a busy port included.
pub const START_DEADLINE: Duration = Duration::from_secs(20);
/// How long one start attempt may wait for the listening line before it is killed and
/// retried (between attempts, stopped workers whose pause is over are resumed).
const ATTEMPT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Lib,
    Http,
    Python,
}

pub struct Worker {
    pub role: Role,
    pub child: ChildGuard,
    pub stopped_until: Option<Instant>,
}

impl Worker {
    pub fn signal(&self, sig: libc::c_int) {
        let _ = signal(self.child.pid(), sig);
    }
}

pub struct Orchestrator {
    /// First field: dropped first, so the whole group dies before anything is reaped.
    pub group: ProcessGroup,
    pub dir: PathBuf,
    pub exe: PathBuf,
    pub service_exe: PathBuf,
    pub port: u16,
    pub seed: u64,
    pub service: Option<Server>,
    pub workers: Vec<Worker>,
    pub faults: BTreeMap<&'static str, u64>,
    pub stuck: u64,
    /// (when to check, owner, token) for leases whose holder was SIGSTOPped.
    pub lease_checks: Vec<(Instant, String, i64)>,
    /// Extra service arguments for the next start (a self-test of the failure path).
    pub next_start_args: Vec<String>,
    /// How long one (re)start may take ([`START_DEADLINE`] unless a self-test says).
    pub start_deadline: Duration,
    /// The hostile-filesystem acts (`--no-hostile` turns them off).
    pub hostile: Option<Hostile>,
}

impl Orchestrator {
    /// Starts the service on the run's port, retrying while the port is still taken.
    pub fn start_service(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + self.start_deadline;
        let extra = std::mem::take(&mut self.next_start_args);
        let mut last_tail = String::new();
        loop {
            self.resume_due();
            let left = deadline.saturating_duration_since(Instant::now());
            let mut opts = ServerOpts::default()
                .bind(&format!("127.0.0.1:{}", self.port))
                .args(&["--admin-token", ADMIN_TOKEN])
                .args(&extra.iter().map(String::as_str).collect::<Vec<_>>())
                .env("LOCKLEDGER_REAPER_PERIOD_MS", &REAPER_MS.to_string())
                .env("RUST_LOG", "warn,warp::server=off")
                .stderr(StderrTo::CaptureAndEcho)
                .start_timeout(left.clamp(Duration::from_secs(1), ATTEMPT));
            for (k, v) in self.hostile.iter().flat_map(Hostile::service_env) {
                opts = opts.env(&k, &v);
            }
            let storage = self.dir.join("storage");
            match Server::try_start(&self.service_exe, &storage, &opts, Some(&self.group)) {
                Ok(s) => {
                    self.service = Some(s);
                    return Ok(());
                }
                Err(e) => {
                    if !e.stderr_tail.is_empty() {
                        last_tail = e.stderr_tail;
                    }
                    if Instant::now() > deadline {
                        return Err(format!(
                            "the service did not come up on port {} within {:?}: {}; \
                             its stderr ended with: {last_tail}",
                            self.port, self.start_deadline, e.message
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }

    /// Resumes the stopped workers whose pause is over.
    pub fn resume_due(&mut self) {
        let now = Instant::now();
        for w in &mut self.workers {
            if w.stopped_until.is_some_and(|t| now >= t) {
                w.signal(libc::SIGCONT);
                w.stopped_until = None;
            }
        }
    }

    /// SIGKILLs the service (if running) and waits for it.
    pub fn kill_service(&mut self) {
        if let Some(mut svc) = self.service.take() {
            svc.kill9();
        }
    }

    pub fn spawn(&mut self, role: Role) -> Result<(), String> {
        let dir = &self.dir;
        let mut cmd = match role {
            Role::Lib | Role::Http => {
                let mut c = Command::new(&self.exe);
                c.args([
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
                ]);
                c
            }
            Role::Python => {
                let mut c = Command::new("python3");
                c.arg(dir.join("py_worker.py"))
                    .arg(dir.join("storage").join("locks"))
                    .arg(dir.join("data"))
                    .arg(
                        dir.join("journal")
                            .join(format!("py-{}.log", self.workers.len())),
                    )
                    .args(PY_OWNERS);
                c
            }
        };
        cmd.stdin(Stdio::null());
        self.group.adopt(&mut cmd);
        let child = ChildGuard::spawn(&mut cmd)
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

    /// The lease an HTTP worker said it holds (its state file): (owner, token).
    pub fn lease_of(&self, pid: i32) -> Option<(String, i64)> {
        let text =
            std::fs::read_to_string(self.dir.join("state").join(format!("http-{pid}"))).ok()?;
        let mut parts = text.split_whitespace();
        let owner = parts.next()?.to_string();
        let _field = parts.next()?;
        Some((owner, parts.next()?.parse().ok()?))
    }

    /// The token of the live lease on `owner`/messages, as the service reports it now.
    pub fn lease_token_now(&self, owner: &str) -> Option<i64> {
        let r = api(
            self.port,
            "GET",
            &format!("/api/v1/locks/{owner}"),
            None,
            false,
        )
        .ok()?;
        if r.status != 200 {
            return None;
        }
        let v = r.json_or_null();
        v["locks"].as_array()?.iter().find_map(|l| {
            // Held means the kernel lock is still taken for that lease: a lease whose
            // handle the reaper closed shows as stale until its record is written.
            (l["field"] == "messages" && l["kind"] == "lease" && l["state"] == "held")
                .then(|| l["token"].as_i64())
                .flatten()
        })
    }

    /// One step of the fault schedule.
    pub fn inject(&mut self, rng: &mut Rng) -> Result<(), String> {
        let now = Instant::now();
        self.resume_due();
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
                    self.workers[i].signal(libc::SIGKILL);
                    let _ = self.workers[i].child.wait();
                    self.fault("sigkill_holder");
                }
            }
            30..=59 if !running.is_empty() => {
                let i = running[rng.below(running.len() as u64) as usize];
                let pid = self.workers[i].child.pid();
                self.workers[i].signal(libc::SIGSTOP);
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
                    let path = format!("/api/v1/locks/{owner}/force-clear");
                    if api(self.port, "POST", &path, Some(&body), true)
                        .is_ok_and(|r| r.status == 200)
                    {
                        self.fault("force_clear_live_lease");
                    }
                }
            }
            80..=85 if self.service.is_some() => {
                self.kill_service();
                self.fault("sigkill_service");
                self.start_service()?;
            }
            _ => {}
        }
        if let Some(h) = self.hostile.as_mut() {
            if self.service.is_some() {
                h.act(rng, self.port, &self.group)?;
            }
        }
        self.reap_workers()
    }
}

//! The PostgreSQL mode of the chaos run (`--postgres`, issue #13 point 6): two services on
//! one shared database, as on two hosts, with real faults and the same invariant line.
//!
//! The orchestrator starts a throwaway PostgreSQL cluster (the harness's [`PgCluster`]),
//! two `lockledger serve --database URL` services `a` and `b`, each with a storage
//! directory of its own, and lease holders (this binary with `--worker pg`) split across
//! them, racing on the `messages` locks of [`OWNERS`] and doing the fenced
//! read-modify-write of every chaos holder on the shared data files. The fault injector:
//!
//! - SIGKILLs holders, preferably mid-lease (their service ends the lease when it sees
//!   the pid gone, or the lease ends by its ttl);
//! - SIGSTOPs holders past their lease's ttl, then SIGCONTs them: a stopped holder's lease
//!   must be gone within ttl + reaper period + slack, and once resumed its renewal or
//!   release must answer `lease_gone` and its stale writes be refused by the fence;
//! - SIGKILLs a service and restarts it (same storage, same database), at once or after
//!   the ttl: its holders' leases must end by their ttl while the other service goes on
//!   granting;
//! - SIGSTOPs a service past the ttl, then SIGCONTs it: the leases of its holders (which
//!   cannot renew) must end by their ttl, ended by the other service's reaper.
//!
//! At most one service is down or stopped at a time (a lease ends by the reaper of a
//! service that runs). At the end every holder is stopped (their leases must go), then
//! killed; once the acquires they left waiting in the services are over, no lease may be
//! left; both services are crashed and restarted, every lock must be free on both, and
//! the checks of `invariants` (fencing) and `pg_checks`
//! (history, leases, database) run. It prints
//! `chaos[postgres]: runs=N faults=N overlaps=N lost_updates=N stale_writes_accepted=N
//! stuck_locks=N orphan_events=N integrity=ok` (the line of the SQLite mode, where
//! integrity is the shared database's consistency: history the same through both
//! services and the view, `last_token`, tokens in grant order), then
//! `chaos[postgres]: service: unanswered=N past_ttl=N unclean_exits=N`, which must be all
//! zero too (a request without an answer while its service was not SIGKILLed; a lease
//! renewed or released after its end, or renewed past its ttl; a service that does not
//! exit with status 0 on SIGTERM), and two detail lines.
//!
//! Invariants: as in the SQLite mode, every child (services, holders) is in the run's
//! [`ProcessGroup`], the first field of [`PgRun`], killed and SIGCONTed however the run
//! ends. The cluster is not in that group (pg_ctl detaches the postmaster): it is stopped
//! when [`PgRun`] is dropped (its last field), and a watchdog process outside the group
//! stops it if this process dies without dropping it (SIGKILL, or a signal the group's
//! handler ends the process with).

use crate::pg_checks::{self, Sql};
use crate::workers::{api, PG_ACQUIRE_WAIT_MS};
use crate::{free_port, tempfile_dir, Args, ADMIN_TOKEN, LEASE_TTL_MS, OWNERS, REAPER_MS};
use lockledger::fence::monotonic_ns;
use lockledger_harness::process::signal;
use lockledger_harness::{ChildGuard, PgCluster, ProcessGroup, Server, ServerOpts, StderrTo};
use lockledger_tools::rng::Rng;
use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The two services ("hosts").
const SERVICES: [&str; 2] = ["a", "b"];
/// Beyond ttl + reaper period, how long a lease whose holder cannot renew may last.
const SLACK_MS: u64 = 1_500;
/// An expired lease that no service has ended this long after its end is stuck.
const UNREAPED_LIMIT_MS: i64 = 5_000;
/// Longest (re)start of a service (connecting, migrations, a port still taken).
const START_DEADLINE: Duration = Duration::from_secs(30);
/// No grant at all for this long (database clock) while the run goes on is a hang.
const HANG_MS: i64 = 10_000;
/// How long a service may take to exit on SIGTERM at the end.
const STOP_GRACE: Duration = Duration::from_secs(8);

/// When a lease whose holder cannot renew must be gone.
fn lease_deadline(from: Instant) -> Instant {
    from + Duration::from_millis(LEASE_TTL_MS + REAPER_MS + SLACK_MS)
}

struct Svc {
    name: &'static str,
    storage: PathBuf,
    port: u16,
    server: Option<Server>,
    /// SIGSTOPped until then.
    stopped_until: Option<Instant>,
    /// SIGKILLed, restarted then; with the newest event id at the kill.
    down_until: Option<(Instant, i64)>,
}

impl Svc {
    fn healthy(&self) -> bool {
        self.server.is_some() && self.stopped_until.is_none() && self.down_until.is_none()
    }
}

struct Holder {
    svc: usize,
    child: ChildGuard,
    stopped_until: Option<Instant>,
}

/// A lease that must be gone (its holder cannot renew it) from `due` on.
#[derive(Clone)]
struct LeaseCheck {
    due: Instant,
    owner: String,
    token: i64,
    why: &'static str,
}

pub struct PgRun {
    /// First field: dropped first, so every service and holder dies before the rest.
    group: ProcessGroup,
    dir: PathBuf,
    exe: PathBuf,
    service_exe: PathBuf,
    url: String,
    seed: u64,
    svcs: Vec<Svc>,
    holders: Vec<Holder>,
    faults: BTreeMap<&'static str, u64>,
    stuck: u64,
    checks: Vec<LeaseCheck>,
    /// CLOCK_MONOTONIC ns of every SIGKILL of each service: (before the signal, after
    /// the reap).
    kills: BTreeMap<String, Vec<(u64, u64)>>,
    /// Services that did not exit cleanly on SIGTERM at the end.
    unclean_exits: u64,
    /// Grants by the other service while one was down (SIGKILLed, not yet restarted).
    grants_while_down: i64,
    /// Lease checks passed (the lease was gone in time).
    leases_gone_in_time: u64,
    sql: Sql,
    /// Last field: the cluster stops after everything else is gone.
    cluster: PgCluster,
}

/// Starts a process outside the run's group that stops the cluster in `cluster_dir` (and
/// removes that directory) once this process is gone, however it ended.
fn watchdog(cluster_dir: &Path) -> Result<(), String> {
    let bin = lockledger_harness::pg::find_bin()?;
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let script = r#"
while kill -0 "$1" 2>/dev/null; do sleep 1; done
[ -f "$3/.lockledger-pg" ] || exit 0
if [ -f "$3/data/postmaster.pid" ]; then
  if [ "$4" = root ]; then
    runuser -u postgres -- "$2/pg_ctl" -D "$3/data" -m immediate -w -t 30 stop
  else
    "$2/pg_ctl" -D "$3/data" -m immediate -w -t 30 stop
  fi
fi
rm -rf -- "$3"
"#;
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(script)
        .arg("lockledger-chaos-pg-watchdog")
        .arg(std::process::id().to_string())
        .arg(&bin)
        .arg(cluster_dir)
        .arg(if root { "root" } else { "user" })
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    // Never waited for: it outlives this process by design (init reaps it).
    cmd.spawn()
        .map(drop)
        .map_err(|e| format!("cannot start the cluster's watchdog: {e}"))
}

impl PgRun {
    fn fault(&mut self, name: &'static str) {
        *self.faults.entry(name).or_default() += 1;
    }

    /// Starts service `i` on its port (the holders know only that port), retrying while
    /// the port is still taken by the killed one.
    fn start_service(&mut self, i: usize) -> Result<(), String> {
        let deadline = Instant::now() + START_DEADLINE;
        let log = self
            .dir
            .join("logs")
            .join(format!("service-{}.log", self.svcs[i].name));
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let opts = ServerOpts::default()
                .bind(&format!("127.0.0.1:{}", self.svcs[i].port))
                .args(&["--admin-token", ADMIN_TOKEN, "--database", &self.url])
                .env("LOCKLEDGER_REAPER_PERIOD_MS", &REAPER_MS.to_string())
                .env("RUST_LOG", "warn,warp::server=off")
                .stderr(StderrTo::File(log.clone()))
                .start_timeout(left.clamp(Duration::from_secs(1), Duration::from_secs(10)));
            let storage = self.svcs[i].storage.clone();
            match Server::try_start(&self.service_exe, &storage, &opts, Some(&self.group)) {
                Ok(s) => {
                    self.svcs[i].server = Some(s);
                    return Ok(());
                }
                Err(e) if Instant::now() > deadline => {
                    return Err(format!(
                        "service {} did not come up on port {} within {START_DEADLINE:?}: {e}",
                        self.svcs[i].name, self.svcs[i].port
                    ));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    fn kill_service(&mut self, i: usize) {
        if let Some(mut s) = self.svcs[i].server.take() {
            let before = monotonic_ns();
            s.kill9();
            self.kills
                .entry(self.svcs[i].name.to_string())
                .or_default()
                .push((before, monotonic_ns()));
        }
        self.svcs[i].stopped_until = None;
    }

    fn spawn(&mut self, svc: usize) -> Result<(), String> {
        let mut cmd = Command::new(&self.exe);
        cmd.args(["--worker", "pg", "--dir"])
            .arg(&self.dir)
            .args([
                "--port",
                &self.svcs[svc].port.to_string(),
                "--service",
                self.svcs[svc].name,
                "--seed",
                &self.seed.to_string(),
            ])
            .stdin(Stdio::null());
        self.group.adopt(&mut cmd);
        let child =
            ChildGuard::spawn(&mut cmd).map_err(|e| format!("cannot start a holder: {e}"))?;
        self.holders.push(Holder {
            svc,
            child,
            stopped_until: None,
        });
        Ok(())
    }

    /// The pids of the holders bound to service `svc`.
    fn holder_pids(&self, svc: usize) -> Vec<i32> {
        self.holders
            .iter()
            .filter(|h| h.svc == svc)
            .map(|h| h.child.pid())
            .collect()
    }

    /// The lease a holder said it holds (its state file): (owner, token).
    fn lease_of(&self, pid: i32) -> Option<(String, i64)> {
        let text =
            std::fs::read_to_string(self.dir.join("state").join(format!("pg-{pid}"))).ok()?;
        let mut parts = text.split_whitespace();
        let owner = parts.next()?.to_string();
        let _field = parts.next()?;
        Some((owner, parts.next()?.parse().ok()?))
    }

    /// The newest event id (0 when none).
    fn newest_event(&mut self) -> i64 {
        self.sql
            .int("SELECT coalesce(max(event_id), 0)::text FROM event_log")
            .ok()
            .flatten()
            .unwrap_or(0)
    }

    /// Resumes stopped holders and services whose pause is over, and restarts killed
    /// services whose time is up.
    fn resume_due(&mut self) -> Result<(), String> {
        let now = Instant::now();
        for h in &mut self.holders {
            if h.stopped_until.is_some_and(|t| now >= t) {
                let _ = signal(h.child.pid(), libc::SIGCONT);
                h.stopped_until = None;
            }
        }
        for s in &mut self.svcs {
            if s.stopped_until.is_some_and(|t| now >= t) {
                if let Some(server) = &s.server {
                    server.signal(libc::SIGCONT);
                }
                s.stopped_until = None;
            }
        }
        for i in 0..self.svcs.len() {
            if let Some((until, mark)) = self.svcs[i].down_until {
                if now >= until {
                    let other = format!("chaos-pg-{}", self.svcs[1 - i].name);
                    let q = format!(
                        "SELECT count(*)::text FROM event_log
                         WHERE event = 'acquired' AND event_id > {mark} AND holder = '{other}'"
                    );
                    self.grants_while_down += self.sql.int(&q).ok().flatten().unwrap_or(0);
                    self.svcs[i].down_until = None;
                    self.start_service(i)?;
                }
            }
        }
        Ok(())
    }

    /// Checks the due leases: gone is right; live (its end ahead by the database clock)
    /// is a lease that outlived a holder that could not renew it; ended by nobody long
    /// after its end is a hang of every reaper. Otherwise looked at again a bit later.
    fn run_checks(&mut self, all: bool) {
        let now = Instant::now();
        let (due, later): (Vec<LeaseCheck>, Vec<LeaseCheck>) = std::mem::take(&mut self.checks)
            .into_iter()
            .partition(|c| all || now >= c.due);
        self.checks = later;
        for c in due {
            let q = format!(
                "SELECT h.expires_at::text,
                        (extract(epoch FROM clock_timestamp()) * 1000)::bigint::text
                 FROM holders h JOIN locks l USING (lock_id)
                 WHERE l.owner = '{}' AND l.field = 'messages' AND h.token = {}",
                c.owner, c.token
            );
            let row = match self.sql.rows(&q) {
                Ok(rows) => rows.into_iter().next(),
                Err(e) => {
                    eprintln!("chaos[postgres]: cannot check a lease: {e}");
                    self.stuck += 1;
                    continue;
                }
            };
            let Some(row) = row else {
                self.leases_gone_in_time += 1;
                continue;
            };
            let parse = |v: &Option<String>| v.as_deref().and_then(|s| s.parse::<i64>().ok());
            let (end, db_now) = (
                parse(&row[0]).unwrap_or(i64::MAX),
                parse(&row[1]).unwrap_or(0),
            );
            if end > db_now {
                eprintln!(
                    "chaos[postgres]: lease {}/messages token {} ({}) is live {} ms after it \
                     should have ended: it ends in {} ms",
                    c.owner,
                    c.token,
                    c.why,
                    now.saturating_duration_since(c.due).as_millis() + SLACK_MS as u128,
                    end - db_now
                );
                self.stuck += 1;
            } else if db_now - end > UNREAPED_LIMIT_MS {
                eprintln!(
                    "chaos[postgres]: lease {}/messages token {} ({}) expired {} ms ago and no \
                     service has ended it",
                    c.owner,
                    c.token,
                    c.why,
                    db_now - end
                );
                self.stuck += 1;
            } else {
                self.checks.push(LeaseCheck {
                    due: now + Duration::from_millis(500),
                    ..c
                });
            }
        }
    }

    /// Schedules the check of the leases that the holders `pids` hold now.
    fn check_leases_of(&mut self, pids: &[i32], from: Instant, why: &'static str) {
        for pid in pids {
            if let Some((owner, token)) = self.lease_of(*pid) {
                self.checks.push(LeaseCheck {
                    due: lease_deadline(from),
                    owner,
                    token,
                    why,
                });
            }
        }
    }

    /// Respawns holders that exited (vanished mid-lease on purpose, or killed).
    fn reap_holders(&mut self) -> Result<(), String> {
        let mut gone = Vec::new();
        for (i, h) in self.holders.iter_mut().enumerate() {
            if let Ok(Some(_)) = h.child.try_wait() {
                h.child.reaped();
                gone.push(i);
            }
        }
        for i in gone.into_iter().rev() {
            let h = self.holders.remove(i);
            let _ =
                std::fs::remove_file(self.dir.join("state").join(format!("pg-{}", h.child.pid())));
            self.spawn(h.svc)?;
        }
        Ok(())
    }

    /// One of the `running` holders: most of the time one that holds a lease now (if
    /// any does), so that faults land mid-lease.
    fn pick_holder(&self, running: &[usize], rng: &mut Rng) -> usize {
        let mid: Vec<usize> = running
            .iter()
            .copied()
            .filter(|i| self.lease_of(self.holders[*i].child.pid()).is_some())
            .collect();
        let pool = if !mid.is_empty() && rng.chance(80) {
            &mid
        } else {
            running
        };
        pool[rng.below(pool.len() as u64) as usize]
    }

    /// One step of the fault schedule.
    fn inject(&mut self, rng: &mut Rng) -> Result<(), String> {
        self.resume_due()?;
        self.run_checks(false);
        let now = Instant::now();
        let running: Vec<usize> = (0..self.holders.len())
            .filter(|i| self.holders[*i].stopped_until.is_none())
            .collect();
        let both_healthy = self.svcs.iter().all(Svc::healthy);
        match rng.below(100) {
            0..=29 if !running.is_empty() => {
                let i = self.pick_holder(&running, rng);
                let holding = self.lease_of(self.holders[i].child.pid()).is_some();
                self.holders[i].child.kill_and_wait();
                self.fault(if holding {
                    "sigkill_holder_mid_lease"
                } else {
                    "sigkill_holder"
                });
            }
            30..=59 if !running.is_empty() => {
                let i = self.pick_holder(&running, rng);
                let pid = self.holders[i].child.pid();
                let _ = signal(pid, libc::SIGSTOP);
                self.holders[i].stopped_until =
                    Some(now + Duration::from_millis(1500 + rng.below(1000)));
                self.fault("sigstop_holder");
                self.check_leases_of(&[pid], now, "its holder was stopped");
            }
            60..=69 if both_healthy => {
                let i = rng.below(2) as usize;
                let pids = self.holder_pids(i);
                self.kill_service(i);
                if rng.chance(50) {
                    self.fault("sigkill_service_restart_at_once");
                    self.start_service(i)?;
                } else {
                    // Down past the ttl: its holders cannot renew, so their leases must
                    // end by their ttl (the other service's reaper) before it returns.
                    self.fault("sigkill_service_restart_after_ttl");
                    let mark = self.newest_event();
                    let back = lease_deadline(now) + Duration::from_millis(200);
                    self.svcs[i].down_until = Some((back, mark));
                    self.check_leases_of(&pids, now, "its service was killed");
                }
            }
            70..=79 if both_healthy => {
                let i = rng.below(2) as usize;
                let pids = self.holder_pids(i);
                if let Some(s) = &self.svcs[i].server {
                    s.signal(libc::SIGSTOP);
                }
                let back = lease_deadline(now) + Duration::from_millis(200 + rng.below(800));
                self.svcs[i].stopped_until = Some(back);
                self.fault("sigstop_service");
                self.check_leases_of(&pids, now, "its service was stopped");
            }
            _ => {}
        }
        self.reap_holders()
    }

    /// Wind down: resume everything, stop every holder and check that its lease goes;
    /// kill every holder and wait (bounded) until no lease is left.
    fn wind_down(&mut self) -> Result<(), String> {
        for h in &mut self.holders {
            let _ = signal(h.child.pid(), libc::SIGCONT);
            h.stopped_until = None;
        }
        for i in 0..self.svcs.len() {
            if let Some(s) = &self.svcs[i].server {
                s.signal(libc::SIGCONT);
            }
            self.svcs[i].stopped_until = None;
            if let Some((_, mark)) = self.svcs[i].down_until {
                self.svcs[i].down_until = Some((Instant::now(), mark));
            }
        }
        self.resume_due()?;
        let now = Instant::now();
        let pids: Vec<i32> = self.holders.iter().map(|h| h.child.pid()).collect();
        for pid in &pids {
            let _ = signal(*pid, libc::SIGSTOP);
        }
        self.check_leases_of(&pids, now, "its holder was stopped at the end");
        // Every check, the earlier ones too, settles within the unreaped limit.
        let until = lease_deadline(now) + Duration::from_millis(UNREAPED_LIMIT_MS as u64 + 1000);
        while !self.checks.is_empty() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(250));
            self.run_checks(false);
        }
        self.run_checks(true);
        for c in std::mem::take(&mut self.checks) {
            eprintln!(
                "chaos[postgres]: lease {}/messages token {} ({}) was still not ended at the end",
                c.owner, c.token, c.why
            );
            self.stuck += 1;
        }
        for h in &mut self.holders {
            h.child.kill_and_wait();
        }
        // Killed holders' leases end by their service (dead pid) or by their ttl. An
        // acquire a killed holder left waiting in a service may still be granted (to a
        // dead pid, whose lease then ends the same way) until its wait is over: only
        // after that must no lease be left.
        let killed = Instant::now();
        let quiet = killed + Duration::from_millis(PG_ACQUIRE_WAIT_MS + 500);
        let until = lease_deadline(quiet) + Duration::from_secs(3);
        let mut left = -1;
        while Instant::now() < until {
            if Instant::now() < quiet {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            left = self
                .sql
                .int("SELECT count(*)::text FROM holders")?
                .unwrap_or(-1);
            if left == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if left != 0 {
            eprintln!("chaos[postgres]: {left} holder rows left after every holder was killed");
            self.stuck += left.unsigned_abs();
        }
        Ok(())
    }

    /// Crash both services, restart both, and count the locks either reports not free.
    fn final_restart(&mut self) -> Result<(), String> {
        for i in 0..self.svcs.len() {
            self.kill_service(i);
        }
        for i in 0..self.svcs.len() {
            self.start_service(i)?;
        }
        for s in &self.svcs {
            for owner in OWNERS {
                let r = api(
                    s.port,
                    "GET",
                    &format!("/api/v1/locks/{owner}"),
                    None,
                    false,
                )?;
                if r.status != 200 {
                    return Err(format!(
                        "GET /api/v1/locks/{owner} on {}: HTTP {}",
                        s.name, r.status
                    ));
                }
                for l in r.json_or_null()["locks"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                {
                    if l["state"] != "free" {
                        eprintln!(
                            "chaos[postgres]: {owner}/{} is {} on service {} after the run",
                            l["field"], l["state"], s.name
                        );
                        self.stuck += 1;
                    }
                }
            }
        }
        Ok(())
    }
}

pub fn orchestrate(args: &Args) -> Result<bool, String> {
    if args.selftest.is_some() {
        return Err("--selftest exercises the SQLite mode only".into());
    }
    let tmp;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile_dir()?;
            tmp.clone()
        }
    };
    for sub in ["a", "b", "data", "journal", "state", "logs"] {
        std::fs::create_dir_all(dir.join(sub)).map_err(|e| e.to_string())?;
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let service_exe = lockledger_tools::service_binary(true)?;
    let seconds = args.seconds.unwrap_or(if args.quick { 30 } else { 600 });
    let seed = args.seed_or_now();
    let with_seed = |e: String| format!("{e} (seed {seed})");
    let group = ProcessGroup::new().map_err(|e| format!("cannot start a process group: {e}"))?;
    group.kill_on_signals();
    let cluster = PgCluster::start().map_err(|e| format!("cannot start PostgreSQL: {e}"))?;
    watchdog(cluster.dir())?;
    let url = cluster.create_database("lockledger_chaos")?;
    let sql = Sql::connect(&url)?;
    let mut svcs = Vec::new();
    for name in SERVICES {
        svcs.push(Svc {
            name,
            storage: dir.join(name),
            port: free_port()?,
            server: None,
            stopped_until: None,
            down_until: None,
        });
    }
    // From here on, dropping `o` (however this function ends) kills every child, then
    // stops the cluster.
    let mut o = PgRun {
        group,
        dir: dir.clone(),
        exe,
        service_exe,
        url,
        seed,
        svcs,
        holders: Vec::new(),
        faults: BTreeMap::new(),
        stuck: 0,
        checks: Vec::new(),
        kills: BTreeMap::new(),
        unclean_exits: 0,
        grants_while_down: 0,
        leases_gone_in_time: 0,
        sql,
        cluster,
    };
    for i in 0..o.svcs.len() {
        o.start_service(i).map_err(with_seed)?;
    }
    let per_service = if args.quick { 3 } else { 4 };
    for i in 0..o.svcs.len() {
        for _ in 0..per_service {
            o.spawn(i)?;
        }
    }
    let mut rng = Rng::new(seed);
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(250 + rng.below(400)));
        o.inject(&mut rng).map_err(with_seed)?;
    }
    o.wind_down().map_err(with_seed)?;
    o.final_restart().map_err(with_seed)?;
    // History through both services (paged), and through the view.
    let (hist_a, pages_a) = pg_checks::history_http(o.svcs[0].port).map_err(with_seed)?;
    let (hist_b, pages_b) = pg_checks::history_http(o.svcs[1].port).map_err(with_seed)?;
    let hist_sql = pg_checks::history_sql(&mut o.sql)?;
    // A clean stop: SIGTERM, and exit status 0 within the grace period.
    for s in &mut o.svcs {
        if let Some(mut server) = s.server.take() {
            match server.terminate(STOP_GRACE) {
                Some(status) if status.success() => {}
                other => {
                    eprintln!(
                        "chaos[postgres]: service {} did not exit cleanly on SIGTERM: {} (its \
                         log: {})",
                        s.name,
                        other.map_or("still running".to_string(), |st| st.to_string()),
                        o.dir
                            .join("logs")
                            .join(format!("service-{}.log", s.name))
                            .display()
                    );
                    o.unclean_exits += 1;
                    server.kill9();
                }
            }
        }
    }
    let fenced = crate::invariants::analyse(&dir)?;
    let history = pg_checks::check_history(&hist_a);
    let leases = pg_checks::check_leases(&dir, &o.kills, &history)?;
    let mut problems = Vec::new();
    if let Some(diff) = pg_checks::first_difference(&hist_a, &hist_b) {
        eprintln!("chaos[postgres]: history through a and through b differ: {diff}");
        problems.push("history_differs_between_services".to_string());
    }
    if let Some(diff) = pg_checks::first_difference(&hist_a, &hist_sql) {
        eprintln!("chaos[postgres]: history through a and lock_history differ: {diff}");
        problems.push("history_differs_from_view".to_string());
    }
    if history.token_order > 0 {
        problems.push(format!("tokens_out_of_order:{}", history.token_order));
    }
    let last_token = pg_checks::last_token_mismatches(&mut o.sql)?;
    if last_token > 0 {
        problems.push(format!("last_token:{last_token}"));
    }
    let integrity = if problems.is_empty() {
        "ok".to_string()
    } else {
        problems.join(",")
    };
    if history.max_grant_gap_ms > HANG_MS {
        eprintln!(
            "chaos[postgres]: no lease was granted for {} ms",
            history.max_grant_gap_ms
        );
        o.stuck += 1;
    }
    let overlaps = fenced.overlaps + history.overlaps + leases.fenced_but_released;
    let orphans = history.orphans + leases.grants_missing + leases.releases_missing;
    let faults: u64 = o.faults.values().sum();
    println!(
        "chaos[postgres]: runs={} faults={} overlaps={} lost_updates={} stale_writes_accepted={} stuck_locks={} orphan_events={} integrity={}",
        fenced.runs, faults, overlaps, fenced.lost_updates, fenced.stale_writes_accepted, o.stuck, orphans, integrity
    );
    let unanswered = leases.unanswered_total();
    println!(
        "chaos[postgres]: service: unanswered={unanswered} past_ttl={} unclean_exits={}",
        leases.past_ttl, o.unclean_exits
    );
    println!(
        "chaos[postgres]: leases: grants={} renewed={} renew_lease_gone={} renew_failed={} \
         release_ok={} release_lease_gone={} release_failed={} fenced={} late={} \
         late_lease_gone={} unanswered_by_kind={:?} unanswered_by_kill={}",
        leases.grants,
        leases.renew_ok,
        leases.renew_gone,
        leases.renew_other,
        leases.release_ok,
        leases.release_gone,
        leases.release_other,
        leases.fenced,
        leases.late,
        leases.late_gone,
        leases.unanswered,
        leases.unanswered_by_kill,
    );
    println!(
        "chaos[postgres]: seconds={seconds} seed={seed} events={} history_pages=a:{pages_a},b:{pages_b} \
         grants_by={:?} ends_by={:?} grants_while_other_down={} leases_gone_in_time={} \
         max_grant_gap_ms={} refused_stale_writes={} refused_admits={} faults_by_kind={:?}",
        history.events,
        history.grants_by,
        history.ends_by,
        o.grants_while_down,
        o.leases_gone_in_time,
        history.max_grant_gap_ms,
        fenced.refused_writes,
        fenced.refused_admits,
        o.faults
    );
    if unanswered > 0 {
        eprintln!(
            "chaos[postgres]: {unanswered} requests got no answer while their service was \
             running (see the services' logs in {})",
            dir.join("logs").display()
        );
    }
    let ok = overlaps == 0
        && fenced.lost_updates == 0
        && fenced.stale_writes_accepted == 0
        && o.stuck == 0
        && orphans == 0
        && integrity == "ok"
        && unanswered == 0
        && leases.past_ttl == 0
        && o.unclean_exits == 0
        && fenced.runs > 0
        && faults > 0
        && history.grants_by.len() == SERVICES.len();
    if !ok {
        let _ = std::fs::write(
            dir.join("logs").join("postgres.log"),
            o.cluster.log_tail(500),
        );
    }
    drop(o);
    if args.dir.is_none() && ok {
        let _ = std::fs::remove_dir_all(&dir);
    } else if !ok {
        eprintln!("chaos[postgres]: evidence kept in {}", dir.display());
    }
    Ok(ok)
}

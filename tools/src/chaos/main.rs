//! lockledger-chaos: many holders, real faults, and the invariants checked at the end.
//!
//! The orchestrator starts the real service, Rust library holders and HTTP lease holders
//! (this binary in worker mode) and Python `filelock` holders, all doing read-modify-write
//! on shared data while holding a lock. A fault injector SIGKILLs holders, SIGSTOPs and
//! later SIGCONTs them, lets lease holders vanish mid-lease, force-clears live leases, and
//! SIGKILLs and restarts the service. At the end it checks, from journals the workers keep
//! and from the database, the invariants of `invariants` (overlaps, lost_updates,
//! stale_writes_accepted, orphan_events, integrity) and stuck_locks: a lease whose holder
//! was stopped is gone within ttl + reaper period (+ slack), and after the final restart
//! and reconciliation every lock is free and no holder row is left. It prints one line of
//! them and exits 0 only when all hold (1 when one fails, 2 on an error of the run).
//!
//! Fenced holders (library, lease) share the `messages` locks; Python holders, which have
//! no tokens, share the `memory` locks with library holders only (an unfenced holder
//! cannot be protected from a revoked lease holder, by design).
//!
//! Hostile mode (on unless `--no-hostile`; see `hostile`): the injector also deletes and
//! replaces `messages` lock files under live holders, plants symlinks and FIFOs at lock
//! paths of unused owners and tries every way in on them, and steps the service's wall
//! clock through libfaketime when it is installed. It adds the line
//! `hostile: deleted=N replaced=N symlinks=N fifos=N clock_steps=N targets_intact=yes`
//! and a detail line; a late or missing answer, a grant of a planted path, a changed
//! symlink target or a file at a dangling target fails the run.
//!
//! PostgreSQL mode (`--postgres`; see `pg`): two services on one throwaway PostgreSQL
//! database, HTTP lease holders split across them, services and holders SIGKILLed and
//! SIGSTOPped; the same invariant line, prefixed `chaos[postgres]:`, with `pg_checks`
//! adding the history, lease and database checks of that mode.
//!
//! This file owns the command line and the run from start to verdict; `workers` the
//! holders, `faults` the service, the workers' processes and the fault schedule,
//! `invariants` the final checks; `pg` and `pg_checks` the PostgreSQL mode.
//!
//! Invariant: the run's children all live in one process group owned by the
//! orchestrator; on every exit path — normal end, error return, panic, SIGINT, SIGTERM,
//! SIGHUP — the whole group is killed and SIGCONTed (see `faults` and
//! `lockledger_harness::group`).

mod faults;
mod hostile;
mod invariants;
mod pg;
mod pg_checks;
mod workers;

use clap::Parser;
use faults::{Orchestrator, Role};
use lockledger::fence::monotonic_ns;
use lockledger_harness::ProcessGroup;
use lockledger_tools::rng::Rng;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
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
    /// No hostile-filesystem acts (lock files deleted and replaced under live holders,
    /// symlinks and FIFOs planted at lock paths, wall-clock steps): on by default
    #[arg(long)]
    no_hostile: bool,
    /// Hostile mode without wall-clock steps (which need libfaketime: `apt-get install
    /// faketime`; without it they are skipped, and the run says so)
    #[arg(long)]
    no_clock_steps: bool,
    /// Two services on one throwaway PostgreSQL database (`serve --database`), as on two
    /// hosts: lease holders split across them; holders and services SIGKILLed and
    /// SIGSTOPped; prints `chaos[postgres]: ...` lines (default 30 s quick, 600 s long)
    #[arg(long)]
    postgres: bool,
    #[arg(long, hide = true)]
    worker: Option<String>,
    /// The service a `--worker pg` holder is bound to (`a` or `b`).
    #[arg(long, hide = true)]
    service: Option<String>,
    #[arg(long, hide = true)]
    port: Option<u16>,
    /// Exercises a failure path of the orchestrator itself (tools/tests): `panic` or
    /// `error` after the first faults, `restart-fails` makes the first service restart
    /// fail.
    #[arg(long, hide = true)]
    selftest: Option<String>,
}

impl Args {
    /// The run's seed: the one given, or (0, the default) the monotonic clock now.
    fn seed_or_now(&self) -> u64 {
        match self.seed {
            0 => monotonic_ns(),
            seed => seed,
        }
    }
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
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

/// Wind down: resume everyone, then stop every HTTP holder and check that its lease goes
/// within ttl + reaper period (+ slack) while the holder can no longer renew; then kill
/// every worker.
fn wind_down(o: &mut Orchestrator) {
    for w in &mut o.workers {
        w.signal(libc::SIGCONT);
        w.stopped_until = None;
    }
    let mut stopped_leases = Vec::new();
    for w in o.workers.iter().filter(|w| w.role == Role::Http) {
        w.signal(libc::SIGSTOP);
        if let Some(lease) = o.lease_of(w.child.pid()) {
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
        w.child.kill_and_wait();
    }
}

/// Crash the service one last time, restart (start-up reconciliation), reconcile again
/// and count the locks that are not free; then stop the service.
fn final_restart(o: &mut Orchestrator) -> Result<(), String> {
    o.kill_service();
    o.start_service()?;
    let _ = workers::api(o.port, "POST", "/api/v1/reconcile", None, true);
    for owner in OWNERS {
        let path = format!("/api/v1/locks/{owner}");
        if let Ok(r) = workers::api(o.port, "GET", &path, None, false) {
            if r.status != 200 {
                continue;
            }
            let v = r.json_or_null();
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
    let port = o.port;
    if let Some(h) = o.hostile.as_mut() {
        h.final_look(port);
    }
    if let Some(mut svc) = o.service.take() {
        svc.stop();
    }
    Ok(())
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
    std::fs::write(dir.join("py_worker.py"), workers::PY_WORKER).map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // Built from this tree first (a no-op when up to date), unless LOCKLEDGER_BIN names one.
    let service_exe = lockledger_tools::service_binary(true)?;
    let seconds = args.seconds.unwrap_or(if args.quick { 40 } else { 600 });
    let seed = args.seed_or_now();
    let group = ProcessGroup::new().map_err(|e| format!("cannot start a process group: {e}"))?;
    group.kill_on_signals();
    // From here on, dropping `o` (however this function ends) kills every child.
    let mut o = Orchestrator {
        group,
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
        next_start_args: Vec::new(),
        start_deadline: faults::START_DEADLINE,
        hostile: None,
    };
    if !args.no_hostile {
        o.hostile = Some(hostile::Hostile::new(
            &dir,
            &o.service_exe,
            !args.no_clock_steps,
        )?);
    }
    // Errors of the run name the seed, so a failing schedule can be replayed.
    let with_seed = |e: String| format!("{e} (seed {seed})");
    o.start_service().map_err(with_seed)?;
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
    let mut first = true;
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(250 + rng.below(400)));
        o.inject(&mut rng).map_err(with_seed)?;
        if std::mem::take(&mut first) {
            selftest(args.selftest.as_deref(), &mut o).map_err(with_seed)?;
        }
    }
    wind_down(&mut o);
    final_restart(&mut o).map_err(with_seed)?;
    let verdict = invariants::analyse(&dir)?;
    let (orphans, integrity, holders_left) = invariants::database_checks(&dir)?;
    o.stuck += holders_left;
    let faults: u64 = o.faults.values().sum();
    let hostile = match o.hostile.as_mut() {
        None => None,
        Some(h) => {
            let intact = h.targets_intact();
            let replaced_events = invariants::count_events(&dir, "file_replaced")?;
            Some((
                h.line(intact),
                h.detail_line(replaced_events),
                intact && h.problems.is_empty(),
                std::mem::take(&mut h.problems),
            ))
        }
    };
    println!(
        "chaos: runs={} faults={} overlaps={} lost_updates={} stale_writes_accepted={} stuck_locks={} orphan_events={} integrity={}",
        verdict.runs, faults, verdict.overlaps, verdict.lost_updates, verdict.stale_writes_accepted, o.stuck, orphans, integrity
    );
    let mut hostile_ok = true;
    if let Some((line, detail, ok, problems)) = &hostile {
        println!("{line}");
        println!("{detail}");
        for p in problems {
            eprintln!("chaos: hostile: {p}");
        }
        hostile_ok = *ok;
    }
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
        && faults > 0
        && hostile_ok;
    drop(o);
    if args.dir.is_none() && ok {
        let _ = std::fs::remove_dir_all(&dir);
    } else if !ok {
        eprintln!("chaos: evidence kept in {}", dir.display());
    }
    Ok(ok)
}

/// The hidden `--selftest` failure paths, run once after the first faults.
fn selftest(which: Option<&str>, o: &mut Orchestrator) -> Result<(), String> {
    match which {
        None => Ok(()),
        Some("panic") => panic!("chaos self-test: a panic in the orchestrator"),
        Some("error") => Err("chaos self-test: an error in the orchestrator".into()),
        Some("restart-fails") => {
            o.kill_service();
            o.next_start_args = vec!["--no-such-option".into()];
            o.start_deadline = Duration::from_secs(3);
            o.start_service()
        }
        Some(other) => Err(format!("unknown --selftest {other:?}")),
    }
}

fn main() {
    let args = Args::parse();
    let dir = || args.dir.as_deref().unwrap_or(Path::new("."));
    let result = match args.worker.as_deref() {
        Some("lib") => workers::worker_lib(dir(), args.seed).map(|_| true),
        Some("http") => {
            workers::worker_http(dir(), args.port.unwrap_or(8787), args.seed).map(|_| true)
        }
        Some("pg") => workers::worker_pg(
            dir(),
            args.port.unwrap_or(8787),
            args.service.as_deref().unwrap_or("a"),
            args.seed,
        )
        .map(|_| true),
        Some(other) => Err(format!("unknown worker kind {other:?}")),
        None if args.postgres => pg::orchestrate(&args),
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

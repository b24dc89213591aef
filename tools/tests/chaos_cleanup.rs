//! The chaos orchestrator survives its own failures: on SIGTERM, SIGINT, a panic, an
//! error return, and a service that does not come back after a restart, every process of
//! its group is gone afterwards — stopped workers included — and a failed restart is
//! reported with the service's stderr. In the PostgreSQL mode, SIGTERM also ends the
//! throwaway cluster (which is not in the group) and removes its directory.
//!
//! Each test runs the real `lockledger-chaos` on a scratch directory (its hidden
//! `--selftest` flag triggers the failure paths), finds the run's process group from the
//! service it started (whose command line names the scratch directory), and checks
//! `/proc` for members after the orchestrator ended. Every wait has a deadline.

use lockledger_harness::{send_signal, wait_until, Proc};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

const CHAOS: &str = env!("CARGO_BIN_EXE_lockledger-chaos");
/// Upper bound for the run to start its service and workers.
const START: Duration = Duration::from_secs(60);
/// Upper bound for the orchestrator to end once told to (or once it failed).
const END: Duration = Duration::from_secs(60);

/// A process seen in /proc: (pid, process group, state letter, command line).
fn processes() -> Vec<(i32, i32, char, String)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rfind(')').and_then(|i| stat.get(i + 2..)) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let (Some(state), Some(pgrp)) = (
            f.first().and_then(|s| s.chars().next()),
            f.get(2).and_then(|s| s.parse().ok()),
        ) else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        out.push((pid, pgrp, state, cmdline));
    }
    out
}

/// Live (not zombie) members of process group `pgid`.
fn members(pgid: i32) -> Vec<(i32, char, String)> {
    processes()
        .into_iter()
        .filter(|p| p.1 == pgid && p.2 != 'Z')
        .map(|(pid, _, state, cmd)| (pid, state, cmd))
        .collect()
}

struct Run {
    _dir: tempfile::TempDir,
    path: PathBuf,
    chaos: Proc,
}

/// Starts `lockledger-chaos --seconds 60 --dir DIR --seed 7 EXTRA...` with the service
/// binary beside this test's workspace target directory.
fn start(extra: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run");
    let service = lockledger_tools::service_binary(true).expect("the lockledger binary");
    let mut cmd = Command::new(CHAOS);
    cmd.args(["--seconds", "60", "--seed", "7", "--dir"])
        .arg(&path)
        .args(extra)
        .env("LOCKLEDGER_BIN", &service);
    let chaos = Proc::spawn(cmd, "lockledger-chaos");
    Run {
        _dir: dir,
        path,
        chaos,
    }
}

/// The run's process group, from its service's command line (polled every 5 ms, so
/// even a run that fails right after its first faults is caught).
fn group_of(run: &mut Run, want_workers: usize) -> i32 {
    let needle = run.path.to_string_lossy().into_owned();
    let mut pgid = 0;
    let found = lockledger_harness::wait::wait_until_every(
        Instant::now() + START,
        Duration::from_millis(5),
        || {
            let ps = processes();
            let Some(svc) = ps
                .iter()
                .find(|p| p.3.contains(&needle) && p.3.contains(" serve "))
            else {
                return false;
            };
            pgid = svc.1;
            let workers = ps
                .iter()
                .filter(|p| p.1 == pgid && p.3.contains("--worker"))
                .count();
            workers >= want_workers || !run.chaos.running()
        },
    );
    assert!(
        found,
        "no service of the run within {START:?}; chaos stderr: {}",
        run.chaos.stderr_text()
    );
    assert_ne!(pgid, 0);
    // SAFETY: getpgrp has no preconditions.
    let own = unsafe { libc::getpgrp() };
    assert_ne!(
        pgid, own,
        "the children must not share the test's process group"
    );
    pgid
}

fn assert_group_gone(pgid: i32, run: &Run) {
    let gone = wait_until(Instant::now() + Duration::from_secs(10), || {
        members(pgid).is_empty()
    });
    assert!(
        gone,
        "processes of the run's group {pgid} are left: {:?}; chaos stderr: {}",
        members(pgid),
        run.chaos.stderr_text()
    );
}

/// SIGSTOPs one worker of the group (as the fault injector does), so the cleanup must
/// also end a stopped process.
fn stop_a_worker(pgid: i32) {
    let (pid, _, _) = members(pgid)
        .into_iter()
        .find(|m| m.2.contains("--worker"))
        .expect("a worker in the group");
    send_signal(pid, libc::SIGSTOP);
    let stopped = wait_until(Instant::now() + Duration::from_secs(5), || {
        members(pgid).iter().any(|m| m.0 == pid && m.1 == 'T')
    });
    assert!(stopped, "worker {pid} did not stop");
}

fn ended_by_signal(sig: libc::c_int) {
    let mut run = start(&[]);
    let pgid = group_of(&mut run, 3);
    stop_a_worker(pgid);
    run.chaos.signal(sig);
    let code = run
        .chaos
        .try_wait_exit(END)
        .map(lockledger_harness::exit_code);
    assert_eq!(
        code,
        Some(128 + sig),
        "chaos did not end by signal {sig}; stderr: {}",
        run.chaos.stderr_text()
    );
    assert_group_gone(pgid, &run);
}

#[test]
fn sigterm_ends_every_child_stopped_ones_included() {
    ended_by_signal(libc::SIGTERM);
}

#[test]
fn sigint_ends_every_child_stopped_ones_included() {
    ended_by_signal(libc::SIGINT);
}

#[test]
fn a_panic_in_the_orchestrator_ends_every_child() {
    let mut run = start(&["--selftest", "panic"]);
    let pgid = group_of(&mut run, 0);
    let code = run.chaos.wait_exit(END);
    assert_eq!(code, 101, "stderr: {}", run.chaos.stderr_text());
    assert!(
        run.chaos.stderr_text().contains("chaos self-test: a panic"),
        "{}",
        run.chaos.stderr_text()
    );
    assert_group_gone(pgid, &run);
}

#[test]
fn an_error_in_the_orchestrator_ends_every_child() {
    let mut run = start(&["--selftest", "error"]);
    let pgid = group_of(&mut run, 0);
    let code = run.chaos.wait_exit(END);
    assert_eq!(code, 2, "stderr: {}", run.chaos.stderr_text());
    assert!(
        run.chaos
            .stderr_text()
            .contains("an error in the orchestrator"),
        "{}",
        run.chaos.stderr_text()
    );
    assert_group_gone(pgid, &run);
}

#[test]
fn a_service_that_does_not_come_back_is_reported_and_every_child_ends() {
    let mut run = start(&["--selftest", "restart-fails"]);
    let pgid = group_of(&mut run, 0);
    let code = run.chaos.wait_exit(END);
    let err = run.chaos.stderr_text();
    assert_eq!(code, 2, "stderr: {err}");
    assert!(err.contains("the service did not come up"), "{err}");
    assert!(
        err.contains("its stderr ended with:") && err.contains("--no-such-option"),
        "the report lacks the service's stderr: {err}"
    );
    assert_group_gone(pgid, &run);
}

#[test]
fn sigterm_in_the_postgresql_mode_ends_every_child_and_the_cluster() {
    let mut run = start(&["--postgres"]);
    // Two services, three holders each.
    let pgid = group_of(&mut run, 6);
    let needle = run.path.to_string_lossy().into_owned();
    let service = processes()
        .into_iter()
        .find(|p| p.1 == pgid && p.3.contains(&needle) && p.3.contains(" serve "))
        .map(|p| p.3)
        .expect("a service of the run");
    // --database postgres://postgres@127.0.0.1:PORT/DB
    let port: u16 = service
        .split_whitespace()
        .skip_while(|a| *a != "--database")
        .nth(1)
        .and_then(|url| url.rsplit_once(':')?.1.split('/').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no database port in {service:?}"));
    let prefix = format!("lockledger-pg-{}-", run.chaos.pid());
    let cluster_dirs = || -> Vec<PathBuf> {
        std::fs::read_dir(std::env::temp_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .map(|e| e.path())
            .collect()
    };
    assert!(!cluster_dirs().is_empty(), "the run's cluster directory");
    stop_a_worker(pgid);
    run.chaos.signal(libc::SIGTERM);
    let code = run
        .chaos
        .try_wait_exit(END)
        .map(lockledger_harness::exit_code);
    assert_eq!(
        code,
        Some(128 + libc::SIGTERM),
        "stderr: {}",
        run.chaos.stderr_text()
    );
    assert_group_gone(pgid, &run);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let stopped = wait_until(Instant::now() + Duration::from_secs(45), || {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err()
            && cluster_dirs().is_empty()
    });
    assert!(
        stopped,
        "the cluster on port {port} is still there: {:?}",
        cluster_dirs()
    );
}

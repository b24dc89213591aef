//! What the benchmark reads about the machine and runs beside it: CPU and memory from
//! `/proc`, other work on the machine, database sizes, and the Python comparisons; and
//! the page-cache writeback between groups.
//!
//! Invariants: every reading is best effort (a missing `/proc` field gives NaN or "?",
//! never an error), and the Python scripts print their result as one JSON line last.

use crate::R;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Dirty page-cache memory waiting to be written back, in KiB (`/proc/meminfo`).
fn dirty_kb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("Dirty:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Writes back what an earlier group left dirty in the page cache (the large database
/// leaves gigabytes), so its writeback does not land in the next group's measurements.
/// Says so when there was enough to matter.
pub fn settle_writeback() {
    let dirty = dirty_kb();
    if dirty < 32 * 1024 {
        return;
    }
    let t = Instant::now();
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    println!(
        "  (wrote back {} MB left dirty by the previous group first, in {:.1} s)",
        dirty / 1024,
        t.elapsed().as_secs_f64()
    );
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// CPU seconds (user + system) a process has used; `pid` may be "self".
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.get(s.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / hz.max(1.0))
}

/// Cores kept busy by everything on the machine over `window` (call it while this
/// benchmark is idle to see how much other work is running).
fn machine_busy_cores(window: Duration) -> f64 {
    fn sample() -> Option<(f64, f64)> {
        let s = std::fs::read_to_string("/proc/stat").ok()?;
        let v: Vec<f64> = s
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        let idle = v.get(3)? + v.get(4)?;
        let busy = v.iter().take(8).sum::<f64>() - idle;
        Some((busy, idle))
    }
    let (Some((b0, _)), t0) = (sample(), Instant::now()) else {
        return f64::NAN;
    };
    std::thread::sleep(window);
    let Some((b1, _)) = sample() else {
        return f64::NAN;
    };
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (b1 - b0) / hz.max(1.0) / t0.elapsed().as_secs_f64()
}

/// How busy the rest of the machine is, apart from this benchmark and its services.
pub fn other_work(own: &[u32]) -> String {
    let ids: Vec<String> = std::iter::once("self".to_string())
        .chain(own.iter().map(|p| p.to_string()))
        .collect();
    let mine = || ids.iter().filter_map(|p| cpu_seconds(p)).sum::<f64>();
    let (t, a) = (Instant::now(), mine());
    let busy = machine_busy_cores(Duration::from_millis(700));
    let own_cores = (mine() - a) / t.elapsed().as_secs_f64();
    format!(
        "other work on the machine: {:.2} cores busy, besides this benchmark's {:.2}",
        (busy - own_cores).max(0.0),
        own_cores
    )
}

/// Sizes of a storage directory's database and its WAL.
pub fn db_sizes(storage: &Path) -> String {
    let mb = |f: &str| std::fs::metadata(storage.join(f)).map_or(0.0, |m| m.len() as f64 / 1e6);
    format!(
        "registry.db {:.1} MB, registry.db-wal {:.1} MB, registry.db-shm {:.1} MB",
        mb("registry.db"),
        mb("registry.db-wal"),
        mb("registry.db-shm")
    )
}

/// A `kB` field of /proc/PID/status, e.g. VmRSS.
pub fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

pub fn vm_rss_kb(pid: u32) -> Option<u64> {
    status_kb(pid, "VmRSS")
}

/// Waits until a process uses under 5% of a core over 300 ms (or `max` passes).
pub fn wait_idle(pid: u32, max: Duration) -> f64 {
    let start = Instant::now();
    let id = pid.to_string();
    while start.elapsed() < max {
        let Some(a) = cpu_seconds(&id) else { break };
        std::thread::sleep(Duration::from_millis(300));
        let Some(b) = cpu_seconds(&id) else { break };
        if b - a < 0.015 {
            break;
        }
    }
    start.elapsed().as_secs_f64()
}

/// What a short command prints, trimmed, if it runs and succeeds.
pub fn command_line(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The version of a Python module, if python3 can import it.
pub fn python_module(module: &str) -> Option<String> {
    command_line(
        "python3",
        &[
            "-c",
            &format!("import {module}; print(getattr({module}, '__version__', '?'))"),
        ],
    )
}

/// Runs a Python script and parses the JSON object it prints last.
pub fn run_python(script: &str, args: &[String]) -> R<serde_json::Value> {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run python3: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "python3 failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or("");
    serde_json::from_str(last).map_err(|e| format!("python3 printed {last:?}: {e}"))
}

pub fn json_f64(v: &serde_json::Value, key: &str) -> R<f64> {
    v[key]
        .as_f64()
        .ok_or_else(|| format!("no number {key:?} in {v}"))
}

/// Raises this process's soft file-descriptor limit to its hard limit; returns the soft
/// limit now in force (0 if it cannot be read).
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
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
    }
    lim.rlim_cur
}

//! Group `inproc`: `Registry::acquire` + `LockGuard::release` in this process against
//! Python `filelock.FileLock`, interleaved round by round, and where the time goes (each
//! call, and the floors under them: a bare flock, a one-row commit, a writer hand-off).
//!
//! Invariants: both sides run the same number of pairs per round, calibrated so the
//! faster one takes about `--seconds`; the commit floors write the registry's own
//! `lock_events` rows through `lockledger::store::records` on a database opened and
//! migrated by `lockledger::store::db` (the same schema, indexes and settings a release
//! commits to), in a scratch storage directory of their own.

use crate::ctx::Ctx;
use crate::floor::{floor_db, floor_event, raw_commit_us, raw_flock_us};
use crate::machine::{db_sizes, json_f64, other_work, python_module, run_python};
use crate::report::{median, pct, rate, spread, us, Data, Floor, Verdict};
use crate::R;
use lockledger::store::history;
use lockledger::{AcquireOptions, Config, LockKey, Registry};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// filelock acquire/release pairs: argv = lock path, timed iterations, warm-up iterations.
const FILELOCK_PY: &str = r#"
import json, sys, time
from filelock import FileLock
path, n, warm = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
lock = FileLock(path)
for _ in range(warm):
    lock.acquire(); lock.release()
t = time.perf_counter()
for _ in range(n):
    lock.acquire(); lock.release()
el = time.perf_counter() - t
print(json.dumps({"pairs": n, "seconds": el, "rate": n / el}))
"#;

fn inproc_round(reg: &Registry, key: &LockKey, opts: &AcquireOptions, n: u64, warm: u64) -> R<f64> {
    let pair = || -> R<()> {
        reg.acquire(key, opts)
            .map_err(|e| format!("acquire: {e}"))?
            .release()
            .map_err(|e| format!("release: {e}"))
    };
    for _ in 0..warm {
        pair()?;
    }
    let t = Instant::now();
    for _ in 0..n {
        pair()?;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// µs per one-row commit handed to a dedicated writer thread and answered over a reply
/// channel: the shape of the registry's writer, without the registry. With `spin`, a
/// thread spins meanwhile, so no core is idle: on a VM, waking an idle vCPU for each
/// hand-off costs far more than a hand-off to a running one.
fn raw_writer_commit_us(dir: &Path, spin: bool) -> R<f64> {
    let stop = Arc::new(AtomicBool::new(false));
    let spinner = spin.then(|| {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        })
    });
    let result = writer_round_trips(dir);
    stop.store(true, Ordering::Relaxed);
    if let Some(h) = spinner {
        let _ = h.join();
    }
    result
}

fn writer_round_trips(dir: &Path) -> R<f64> {
    use std::sync::mpsc;
    let (mut conn, lock_id) = floor_db(dir, "writer-floor")?;
    let (jobs, queue) = mpsc::channel::<mpsc::SyncSender<Result<(), String>>>();
    let writer = std::thread::spawn(move || {
        while let Ok(reply) = queue.recv() {
            let r = (|| {
                let tx =
                    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                history::insert_event(&tx, &floor_event(lock_id))?;
                tx.commit()
            })()
            .map_err(|e| e.to_string());
            let _ = reply.send(r);
        }
    });
    let t = Instant::now();
    let mut n = 0u64;
    let mut result = Ok(());
    while t.elapsed() < Duration::from_secs(1) {
        let (tx, rx) = mpsc::sync_channel(1);
        if jobs.send(tx).is_err() {
            result = Err("writer thread stopped".to_string());
            break;
        }
        match rx.recv() {
            Ok(Ok(())) => n += 1,
            Ok(Err(e)) => {
                result = Err(e);
                break;
            }
            Err(e) => {
                result = Err(e.to_string());
                break;
            }
        }
    }
    let el = t.elapsed().as_secs_f64();
    drop(jobs);
    let _ = writer.join();
    result.map(|()| el * 1e6 / n.max(1) as f64)
}

pub fn bench_inproc(ctx: &mut Ctx) -> R<()> {
    println!("\n[in-process] Registry::acquire + LockGuard::release vs Python filelock.FileLock");
    println!("  ({})", other_work(&ctx.pids()));
    let storage = ctx.dir("inproc")?;
    let reg = Registry::open(Config::defaults(&storage)).map_err(|e| format!("open: {e}"))?;
    let key = reg
        .key(None, "bench", "messages")
        .map_err(|e| e.to_string())?;
    let opts = AcquireOptions::new("bench", "pair");
    let py_lock = ctx.dir("py")?.join("bench.lock");
    let py_lock_s = py_lock.to_string_lossy().into_owned();
    let filelock = python_module("filelock");

    // Calibrate so that the faster side runs for about `secs` with the same N.
    let ll_cal = inproc_round(&reg, &key, &opts, 500, 100)?;
    let py_cal = match &filelock {
        Some(_) => json_f64(
            &run_python(
                FILELOCK_PY,
                &[py_lock_s.clone(), "3000".into(), "300".into()],
            )?,
            "rate",
        )?,
        None => 0.0,
    };
    let fastest = ll_cal.max(py_cal);
    let slowest = if py_cal > 0.0 {
        ll_cal.min(py_cal)
    } else {
        ll_cal
    };
    let n = ((fastest * ctx.set.secs) as u64)
        .min((slowest * ctx.set.secs * 4.0) as u64)
        .max(1000);
    ctx.detail(format!(
        "calibration: lockledger {} python_filelock {} -> N = {n} pairs per side per round",
        rate(ll_cal),
        if py_cal > 0.0 {
            rate(py_cal)
        } else {
            "-".into()
        }
    ));
    let (mut ll, mut py) = (Vec::new(), Vec::new());
    for round in 0..ctx.set.rounds {
        let mut r_ll = 0.0;
        let mut r_py = f64::NAN;
        for side in 0..2 {
            if (side == 0) == (round % 2 == 0) {
                r_ll = inproc_round(&reg, &key, &opts, n, 300)?;
            } else if filelock.is_some() {
                let v = run_python(
                    FILELOCK_PY,
                    &[py_lock_s.clone(), n.to_string(), "500".into()],
                )?;
                r_py = json_f64(&v, "rate")?;
            }
        }
        ll.push(r_ll);
        if filelock.is_some() {
            py.push(r_py);
        }
        ctx.detail(format!(
            "round {}: lockledger {}  python_filelock {}  ({} first)",
            round + 1,
            rate(r_ll),
            if r_py.is_nan() {
                "-".into()
            } else {
                rate(r_py)
            },
            if round % 2 == 0 {
                "lockledger"
            } else {
                "python"
            }
        ));
    }

    // Where the time goes: each call separately, and the floors under them.
    let (mut acq, mut rel) = (Vec::new(), Vec::new());
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(1) {
        let a = Instant::now();
        let g = reg.acquire(&key, &opts).map_err(|e| e.to_string())?;
        let b = Instant::now();
        g.release().map_err(|e| e.to_string())?;
        acq.push((b - a).as_secs_f64() * 1e6);
        rel.push(b.elapsed().as_secs_f64() * 1e6);
    }
    acq.sort_by(f64::total_cmp);
    rel.sort_by(f64::total_cmp);
    let sizes = db_sizes(&storage);
    let flock_us = raw_flock_us(&storage.join("raw-floor.lock"))?;
    let floors = ctx.dir("floors")?;
    let commit_us = raw_commit_us(&floors, "commit-floor", Duration::from_secs(1))?;
    let writer_us = raw_writer_commit_us(&floors, false)?;
    let writer_spin_us = raw_writer_commit_us(&floors, true)?;
    drop(reg);

    let m_ll = median(&ll);
    // The floor of a pair: two one-row commits (acquired, released) and a flock pair.
    let floor = Floor {
        what: format!(
            "2 one-row commits of {commit_us:.1} µs + open+flock+unlock+close {flock_us:.1} µs"
        ),
        us: 2.0 * commit_us + flock_us,
        measured_us: 1e6 / m_ll,
    };
    let (body, verdict, data) = if filelock.is_some() {
        let m_py = median(&py);
        let ratio = m_ll / m_py;
        (
            format!(
                "lockledger {}  python_filelock {}  ratio {ratio:.2} (target >= 2.0)",
                rate(m_ll),
                rate(m_py)
            ),
            Verdict::of(ratio >= 2.0),
            Data::new(m_ll, "pairs/s")
                .compare("python_filelock", m_py, "pairs/s")
                .ratio(ratio),
        )
    } else {
        (
            format!(
                "lockledger {}  python_filelock not installed (python3 -m pip install filelock, or scripts/bench.sh)",
                rate(m_ll)
            ),
            Verdict::Skip,
            Data::new(m_ll, "pairs/s"),
        )
    };
    let data = data.target(">= 2.0").floor(Some(floor.clone()));
    ctx.report_with("in_process_pairs", body, verdict, data);
    ctx.floor_line("in_process_pairs", "pair", &floor);
    if !py.is_empty() {
        ctx.detail(floor.ceiling_line("in_process_pairs", "python_filelock", median(&py), 2.0));
    }
    ctx.detail(format!(
        "medians of {} rounds; range lockledger {}  python_filelock {}",
        ctx.set.rounds,
        spread(&ll),
        if py.is_empty() {
            "-".into()
        } else {
            spread(&py)
        }
    ));
    ctx.detail(format!(
        "breakdown: acquire p50 {} p99 {}; release p50 {} p99 {} (n={})",
        us(pct(&acq, 0.5)),
        us(pct(&acq, 0.99)),
        us(pct(&rel, 0.5)),
        us(pct(&rel, 0.99)),
        acq.len()
    ));
    ctx.detail(format!(
        "floors here: open+flock+unlock+close {:.1} µs; one-row SQLite commit (WAL, synchronous=NORMAL) {:.0} µs; the same commit through a writer thread + reply channel {:.0} µs (two per pair cap {}), {:.0} µs while another thread keeps the second core busy",
        flock_us,
        commit_us,
        writer_us,
        rate(1e6 / (2.0 * writer_us + flock_us)),
        writer_spin_us
    ));
    ctx.detail(format!("database after the rounds: {sizes}"));
    Ok(())
}

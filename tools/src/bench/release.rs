//! Group `release`: how soon locks come free on a `--demo` service when a streamed reply's
//! connection is dropped, when a lease's client process dies, and when a lease is not
//! renewed.
//!
//! Invariants: each case is timed from the event (close, SIGKILL, `expires_at`) to the
//! kernel saying the lock file is free (a non-blocking flock probe on an open file); a
//! lock never freed within its timeout counts as infinite and is cleaned up before the
//! next repetition, so one miss cannot leak into the next; moments of death are spread
//! over the reaper's period.

use crate::ctx::Ctx;
use crate::load::LeaseClient;
use crate::machine::other_work;
use crate::report::{lat_line, ms, now_ms, pct};
use crate::services::Service;
use crate::R;
use lockledger_harness::{flock_free, ChildGuard, Conn, Request};
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Polls a lock file until it is free; returns when (None: still held at `deadline`).
fn wait_free(path: &Path, deadline: Instant, every: Duration) -> R<Option<Instant>> {
    let file = File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    loop {
        if flock_free(&file).map_err(|e| format!("flock: {e}"))? {
            return Ok(Some(Instant::now()));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(every);
    }
}

fn is_held(path: &Path) -> R<bool> {
    match File::open(path) {
        Ok(f) => Ok(!flock_free(&f).map_err(|e| format!("flock: {e}"))?),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(format!("open {}: {e}", path.display())),
    }
}

/// Opens a streamed demo reply on conversation `c`, waits until its locks are held, drops
/// the connection and times until both lock files are free. Returns ms (messages, all).
fn dropped_stream_once(port: u16, locks: &Path, offset: Duration) -> R<(f64, f64)> {
    let files = [
        locks.join("c_messages.lock"),
        locks.join("c_message_operations.lock"),
    ];
    let mut conn = Conn::connect(port, Duration::from_secs(10)).map_err(|e| e.to_string())?;
    let req = Request::post("/demo/chat/c").json_text(&br#"{"message":"benchmark"}"#[..]);
    conn.write_all(&req.wire(port, false))
        .map_err(|e| e.to_string())?;
    let head = conn.read_head().map_err(|e| e.to_string())?;
    if head.status != 200 || !head.chunked {
        return Err(format!(
            "demo chat answered HTTP {} (chunked: {})",
            head.status, head.chunked
        ));
    }
    let mut first = Vec::new();
    conn.read_chunk(&mut first).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(2);
    while !(is_held(&files[0])? && is_held(&files[1])?) {
        if Instant::now() > deadline {
            return Err("the streamed reply's locks are not held".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(offset);
    // Read what has arrived so the close is a plain FIN (the slower case to notice), then
    // close.
    let s = conn.stream();
    s.set_nonblocking(true).map_err(|e| e.to_string())?;
    let mut sink = [0u8; 8192];
    loop {
        match s.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e.to_string()),
        }
    }
    let t0 = Instant::now();
    drop(conn);
    let deadline = t0 + Duration::from_secs(5);
    let every = Duration::from_micros(200);
    let a = wait_free(&files[0], deadline, every)?;
    let b = wait_free(&files[1], deadline, every)?;
    let since = |t: Option<Instant>| t.map_or(f64::INFINITY, |t| (t - t0).as_secs_f64() * 1e3);
    let wait_gone = Instant::now() + Duration::from_secs(6);
    // A lock never freed must not leak into the next round.
    while (a.is_none() || b.is_none()) && Instant::now() < wait_gone {
        if !is_held(&files[0])? && !is_held(&files[1])? {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok((since(a), since(a).max(since(b))))
}

pub fn bench_release(ctx: &mut Ctx) -> R<()> {
    println!(
        "\n[release] how soon locks come free: dropped stream, dead client pid, expired lease"
    );
    println!("  ({})", other_work(&ctx.pids()));
    if ctx.demo.is_none() {
        let storage = ctx.dir("demo")?;
        let mut svc = Service::start(
            &ctx.server_bin,
            &storage,
            true,
            "demo service",
            ctx.rust_log.as_deref(),
        )?;
        svc.settle();
        println!(
            "  started lockledger serve --demo (pid {}, port {})",
            svc.pid(),
            svc.port
        );
        ctx.demo = Some(svc);
    }
    let (port, locks) = match &ctx.demo {
        Some(s) => (s.port, s.storage.join("locks")),
        None => return Err("no demo service".into()),
    };
    let n = ctx.set.repeat;

    // (a) a dropped streaming connection.
    let (mut first, mut all) = (Vec::new(), Vec::new());
    for i in 0..n {
        let offset = Duration::from_millis((i as u64 * 7) % 25);
        let (a, b) = dropped_stream_once(port, &locks, offset)?;
        first.push(a);
        all.push(b);
    }
    let (body, v, data) = lat_line(&all, 50.0, "from close to both locks free");
    ctx.report_with("dropped_stream_release", body, v, data);
    let mut f = first.clone();
    f.sort_by(f64::total_cmp);
    ctx.detail(format!(
        "messages lock alone: p50 {} max {}; each: {}",
        ms(pct(&f, 0.5)),
        ms(f.last().copied().unwrap_or(f64::NAN)),
        all.iter()
            .map(|v| format!("{v:.1}"))
            .collect::<Vec<_>>()
            .join(" ")
    ));

    // (b) a client pid that dies.
    let mut c = LeaseClient::new(port);
    let file = locks.join("deadpid_messages.lock");
    let mut dead = Vec::new();
    // The reaper runs periodically: spread the moments of death over its period instead
    // of always landing at the same phase.
    let phase = |i: usize| Duration::from_millis((i as u64 * 37) % 250);
    for i in 0..n {
        let mut sleeper = ChildGuard::spawn(Command::new("sleep").arg("60").stdin(Stdio::null()))
            .map_err(|e| format!("sleep: {e}"))?;
        let body = format!(
            r#"{{"holder":"bench","operation":"dead_pid","pid":{},"ttl_ms":60000}}"#,
            sleeper.pid()
        );
        let (id, _) = c.acquire("deadpid", "messages", body.as_bytes())?;
        if !is_held(&file)? {
            return Err("the dead-pid lease's lock is not held".into());
        }
        std::thread::sleep(phase(i));
        let t0 = Instant::now();
        sleeper.kill_and_wait();
        let freed = wait_free(&file, t0 + Duration::from_secs(5), Duration::from_millis(1))?;
        match freed {
            Some(t) => dead.push((t - t0).as_secs_f64() * 1e3),
            None => {
                dead.push(f64::INFINITY);
                let _ = c.release(&id);
            }
        }
    }
    let (body, v, data) = lat_line(&dead, 1500.0, "from SIGKILL to lock free");
    ctx.report_with("dead_pid_release", body, v, data);
    ctx.detail(format!(
        "each: {}",
        dead.iter()
            .map(|v| format!("{v:.0}"))
            .collect::<Vec<_>>()
            .join(" ")
    ));

    // (c) a lease that is not renewed.
    let file = locks.join("expiry_messages.lock");
    let mut expired = Vec::new();
    for i in 0..n {
        std::thread::sleep(phase(i));
        let (id, expires_ms) = c.acquire(
            "expiry",
            "messages",
            br#"{"holder":"bench","operation":"expiry","ttl_ms":300}"#,
        )?;
        if expires_ms == 0 {
            return Err("acquire answered no expires_at".into());
        }
        let until = Instant::now() + Duration::from_millis(300 + 5000);
        match wait_free(&file, until, Duration::from_millis(1))? {
            Some(_) => expired.push((now_ms() - expires_ms) as f64),
            None => {
                expired.push(f64::INFINITY);
                let _ = c.release(&id);
            }
        }
    }
    let (body, v, data) = lat_line(&expired, 1000.0, "from expires_at to lock free");
    ctx.report_with("expired_lease_release", body, v, data);
    ctx.detail(format!(
        "each: {} (clock resolution 1 ms)",
        expired
            .iter()
            .map(|v| format!("{v:.0}"))
            .collect::<Vec<_>>()
            .join(" ")
    ));
    Ok(())
}

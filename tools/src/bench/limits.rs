//! Group `limits` (DESIGN.md §10 last point and §11): abuse cases against the real
//! service, one line
//! `limits: waiters=1000 healthz_p99_ms=… release_ms=… handoff_ms=… slow_headers_closed=… sql_rss_mb=… history_kept=…`.
//!
//! Not part of the default `--quick` run (it takes about a minute and up to a few GB of
//! the service's memory); `--only limits` runs it, and a full run includes it.
//!
//! 1. **Waiters**: a lease holds `limits/messages`; 1,000 clients without keep-alive
//!    (one thread and one connection each, `Connection: close`) ask for it with
//!    `wait_ms: 60000`. Once `/healthz` says all 1,000 wait, `GET /healthz`, a renewal of
//!    the held lease and an acquire+release of another lock are timed in turn (300 times;
//!    100 times before the waiters came, as the control). Then the lease is released and
//!    each waiter, once granted, releases at once (a DELETE on a new connection): each
//!    hand-off is the time from the previous holder's release answer to the next
//!    waiter's grant answer, both as the clients see them. `handoff_ms` is the p99 of the
//!    first 100 hand-offs (at least 900 still waiting); all of them are in the details.
//! 2. **Slow headers**: 200 connections send half a request head and then one byte a
//!    second; counted: those the service closes within 15 s of their opening (its
//!    header-read timeout is 10 s). `/healthz` is timed meanwhile.
//! 3. **Admin SQL**: `SELECT length(randomblob(1000000000))` and, in parallel,
//!    `SELECT hex(zeroblob(500000000))` through `POST /api/v1/sql`: each answer's status
//!    and time (refused or cut within 3 s is the aim), and the service's peak RSS
//!    (`VmHWM`) after them (`sql_rss_mb`); the peak before them is in the details.
//! 4. **Busy answers and retention**: with `retention_max_events = 200` in
//!    `STORAGE/lockledger.toml`, an unrelated owner (`keep`) does 50 acquire+release
//!    pairs, then 5,000 `wait_ms: 0` acquires are answered busy on a held lock, then
//!    `lockledger prune` runs: `history_kept` is how many of `keep`'s 100
//!    acquired/released events survived.
//!
//! Targets (the line's verdict): `/healthz` and release p99 < 50 ms with 1,000 waiting,
//! hand-off < 5 ms. The rest is measured and printed against §11, not judged.
//!
//! Invariants: every socket has a deadline; the waiter threads end on every path (their
//! requests time out at 90 s, and a failed phase releases the held lease first); the
//! file-descriptor limit of this process is raised to its hard limit first.

use crate::ctx::Ctx;
use crate::load::LeaseClient;
use crate::machine::{other_work, raise_nofile, status_kb};
use crate::report::{ms, pct, Data, Verdict};
use crate::services::Service;
use crate::R;
use lockledger_harness::{lockledger, process::try_run, Request, Response};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

pub const WAITERS: usize = 1000;
const SLOW: usize = 200;
const ADMIN: &str = "limits-admin-token";
const RETENTION: u64 = 200;
const KEEP_PAIRS: usize = 50;
const BUSY_ASKS: usize = 5000;

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

fn p(v: &[f64], q: f64) -> f64 {
    pct(v, q)
}

/// One `Connection: close` request with a JSON body; (response, when its answer was read).
fn once(
    port: u16,
    method: &str,
    path: &str,
    body: &str,
    timeout: Duration,
) -> R<(Response, Instant)> {
    let r = Request::new(method, path)
        .json_text(body.as_bytes().to_vec())
        .timeout(timeout)
        .try_send(port)?;
    Ok((r, Instant::now()))
}

/// What one waiter saw.
struct Waited {
    status: u16,
    code: String,
    granted: Option<Instant>,
    release_answered: Option<Instant>,
}

fn waiter(port: u16, i: usize) -> Waited {
    let body =
        format!(r#"{{"holder":"waiter-{i}","operation":"wait","ttl_ms":60000,"wait_ms":60000}}"#);
    let r = once(
        port,
        "POST",
        "/api/v1/locks/limits/messages/acquire",
        &body,
        Duration::from_secs(90),
    );
    let (r, at) = match r {
        Ok(x) => x,
        Err(e) => {
            return Waited {
                status: 0,
                code: e.chars().take(120).collect(),
                granted: None,
                release_answered: None,
            }
        }
    };
    let v = r.json_or_null();
    let code = v["error"]["code"].as_str().unwrap_or("").to_string();
    let Some(lease) = v["lease_id"].as_str().filter(|_| r.status == 200) else {
        return Waited {
            status: r.status,
            code,
            granted: None,
            release_answered: None,
        };
    };
    // Hand the lock on at once.
    let released = once(
        port,
        "DELETE",
        &format!("/api/v1/leases/{lease}"),
        "",
        Duration::from_secs(30),
    )
    .ok()
    .filter(|(r, _)| r.status == 200)
    .map(|(_, t)| t);
    Waited {
        status: r.status,
        code,
        granted: Some(at),
        release_answered: released,
    }
}

/// One timed request on a keep-alive client that must answer 200; ms.
fn timed(c: &mut LeaseClient, method: &str, path: &str, body: Option<&[u8]>) -> R<f64> {
    let t = Instant::now();
    c.ok(method, path, body)?;
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

/// `n` rounds of: GET /healthz, renew `lease`, acquire+release another lock; ms each.
struct Probe {
    healthz: Vec<f64>,
    renew: Vec<f64>,
    acquire: Vec<f64>,
    release: Vec<f64>,
}

fn probe(c: &mut LeaseClient, lease: &str, n: usize) -> R<Probe> {
    let mut pr = Probe {
        healthz: Vec::new(),
        renew: Vec::new(),
        acquire: Vec::new(),
        release: Vec::new(),
    };
    let body = br#"{"holder":"bench","operation":"probe","ttl_ms":30000}"#;
    for i in 0..n {
        pr.healthz.push(timed(c, "GET", "/healthz", None)?);
        pr.renew.push(timed(
            c,
            "POST",
            &format!("/api/v1/leases/{lease}/renew"),
            Some(b""),
        )?);
        let t = Instant::now();
        let (id, _) = c.acquire(&format!("other{}", i % 16), "messages", body)?;
        pr.acquire.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        c.release(&id)?;
        pr.release.push(t.elapsed().as_secs_f64() * 1e3);
    }
    pr.healthz = sorted(pr.healthz);
    pr.renew = sorted(pr.renew);
    pr.acquire = sorted(pr.acquire);
    pr.release = sorted(pr.release);
    Ok(pr)
}

impl Probe {
    fn describe(&self) -> String {
        let s = |v: &[f64]| format!("p50 {} p99 {}", ms(p(v, 0.5)), ms(p(v, 0.99)));
        format!(
            "healthz {}; renew {}; acquire {}; release {} (n={})",
            s(&self.healthz),
            s(&self.renew),
            s(&self.acquire),
            s(&self.release),
            self.healthz.len()
        )
    }
}

/// Waits until the service says `n` acquirers wait (or `deadline`); how many it said.
fn wait_queued(c: &mut LeaseClient, n: usize, deadline: Instant) -> R<usize> {
    loop {
        let v: serde_json::Value =
            serde_json::from_slice(&c.ok("GET", "/healthz", None)?).map_err(|e| e.to_string())?;
        let w = v["waiting"].as_u64().unwrap_or(0) as usize;
        if w >= n || Instant::now() > deadline {
            return Ok(w);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct WaitersResult {
    queued: usize,
    queue_s: f64,
    before: Probe,
    during: Probe,
    /// Hand-offs in grant order (ms; negative: the grant arrived before the release answer).
    handoffs: Vec<f64>,
    granted: usize,
    errors: Vec<String>,
    chain_s: f64,
    rss_waiting_mb: f64,
}

fn phase_waiters(port: u16, pid: u32) -> R<WaitersResult> {
    let mut c = LeaseClient::new(port);
    let (held, _) = c.acquire(
        "limits",
        "messages",
        br#"{"holder":"bench","operation":"hold for the waiters","ttl_ms":300000}"#,
    )?;
    let before = probe(&mut c, &held, 100)?;
    let t = Instant::now();
    let mut handles = Vec::with_capacity(WAITERS);
    let mut spawn_err = None;
    for i in 0..WAITERS {
        match std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(move || waiter(port, i))
        {
            Ok(h) => handles.push(h),
            Err(e) => {
                spawn_err = Some(format!("cannot start waiter thread {i}: {e}"));
                break;
            }
        }
    }
    // From here on the held lease is released on every path, so the waiters end.
    let result = (|| -> R<(usize, f64, Probe, f64, Instant)> {
        if let Some(e) = spawn_err.take() {
            return Err(e);
        }
        let n = wait_queued(&mut c, WAITERS, Instant::now() + Duration::from_secs(60))?;
        let queue_s = t.elapsed().as_secs_f64();
        let rss = status_kb(pid, "VmRSS").map_or(f64::NAN, |k| k as f64 / 1024.0);
        let during = probe(&mut c, &held, 300)?;
        c.release(&held)?;
        Ok((n, queue_s, during, rss, Instant::now()))
    })();
    if result.is_err() {
        let _ = c.release(&held);
    }
    let chain_start = Instant::now();
    let mut waited = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(w) = h.join() {
            waited.push(w);
        }
    }
    let chain_s = chain_start.elapsed().as_secs_f64();
    let (queued_n, queue_s, during, rss_waiting_mb, released_at) = result?;
    let mut errors: Vec<String> = waited
        .iter()
        .filter(|w| w.status != 200)
        .map(|w| format!("{} {}", w.status, w.code))
        .collect();
    errors.sort();
    errors.dedup();
    let mut grants: Vec<&Waited> = waited.iter().filter(|w| w.granted.is_some()).collect();
    grants.sort_by_key(|w| w.granted);
    let mut handoffs = Vec::new();
    let mut prev = Some(released_at);
    for w in &grants {
        let g = w.granted.unwrap_or(released_at);
        if let Some(p) = prev {
            handoffs.push(if g >= p {
                (g - p).as_secs_f64() * 1e3
            } else {
                -((p - g).as_secs_f64() * 1e3)
            });
        }
        prev = w.release_answered;
    }
    Ok(WaitersResult {
        queued: queued_n,
        queue_s,
        before,
        during,
        handoffs,
        granted: grants.len(),
        errors,
        chain_s,
        rss_waiting_mb,
    })
}

struct SlowResult {
    closed: usize,
    close_s: Vec<f64>,
    healthz_ms: Vec<f64>,
}

fn phase_slow_headers(port: u16) -> R<SlowResult> {
    let head = format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Slow: a");
    let mut socks: Vec<(TcpStream, Instant, Option<f64>)> = Vec::new();
    for _ in 0..SLOW {
        let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
        s.write_all(head.as_bytes())
            .map_err(|e| format!("write: {e}"))?;
        s.set_nonblocking(true).map_err(|e| e.to_string())?;
        socks.push((s, Instant::now(), None));
    }
    let start = Instant::now();
    let mut last_drip = Instant::now();
    let mut c = LeaseClient::new(port);
    let mut healthz_ms = Vec::new();
    let mut buf = [0u8; 1024];
    while start.elapsed() < Duration::from_secs(16) {
        let drip = last_drip.elapsed() >= Duration::from_secs(1);
        if drip {
            last_drip = Instant::now();
        }
        for (s, opened, closed) in socks.iter_mut().filter(|x| x.2.is_none()) {
            let gone = loop {
                match s.read(&mut buf) {
                    Ok(0) => break true,
                    Ok(_) => continue,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
                    Err(_) => break true,
                }
            };
            let gone = gone || (drip && s.write_all(b"a").is_err());
            if gone {
                *closed = Some(opened.elapsed().as_secs_f64());
            }
        }
        if socks.iter().all(|x| x.2.is_some()) {
            break;
        }
        if healthz_ms.len() < 40 {
            healthz_ms.push(timed(&mut c, "GET", "/healthz", None)?);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let close_s: Vec<f64> = sorted(socks.iter().filter_map(|x| x.2).collect());
    Ok(SlowResult {
        closed: close_s.iter().filter(|s| **s <= 15.0).count(),
        close_s,
        healthz_ms: sorted(healthz_ms),
    })
}

/// One admin SQL answer: (status, error code and message, ms, first value).
type SqlAnswer = (u16, String, f64, String);

/// One admin SQL statement.
fn sql(port: u16, statement: &str) -> SqlAnswer {
    let t = Instant::now();
    let body = serde_json::json!({ "sql": statement }).to_string();
    let r = Request::post("/api/v1/sql")
        .json_text(body.into_bytes())
        .bearer(ADMIN)
        .timeout(Duration::from_secs(180))
        .try_send(port);
    let ms = t.elapsed().as_secs_f64() * 1e3;
    match r {
        Ok(r) => {
            let v = r.json_or_null();
            let first = v["rows"][0][0].to_string();
            let code = v["error"]["code"].as_str().unwrap_or("").to_string();
            let msg = v["error"]["message"].as_str().unwrap_or("").to_string();
            (
                r.status,
                if code.is_empty() {
                    String::new()
                } else {
                    format!("{code}: {}", msg.chars().take(100).collect::<String>())
                },
                ms,
                first.chars().take(40).collect(),
            )
        }
        Err(e) => (0, e.chars().take(160).collect(), ms, String::new()),
    }
}

struct SqlResult {
    hwm_before_mb: f64,
    hwm_after_mb: f64,
    answers: Vec<(&'static str, SqlAnswer)>,
    alive_after: bool,
}

fn phase_sql(port: u16, pid: u32) -> SqlResult {
    let mb = |k: Option<u64>| k.map_or(f64::NAN, |k| k as f64 / 1024.0);
    let hwm_before_mb = mb(status_kb(pid, "VmHWM"));
    let statements: [(&'static str, &'static str); 2] = [
        ("randomblob(1e9)", "SELECT length(randomblob(1000000000))"),
        ("hex(zeroblob(5e8))", "SELECT hex(zeroblob(500000000))"),
    ];
    let answers = std::thread::scope(|s| {
        let hs: Vec<_> = statements
            .iter()
            .map(|(name, st)| (*name, s.spawn(move || sql(port, st))))
            .collect();
        hs.into_iter()
            .map(|(n, h)| {
                (
                    n,
                    h.join()
                        .unwrap_or((0, "panicked".into(), f64::NAN, String::new())),
                )
            })
            .collect::<Vec<_>>()
    });
    let hwm_after_mb = mb(status_kb(pid, "VmHWM"));
    let alive_after = LeaseClient::new(port).ok("GET", "/healthz", None).is_ok();
    SqlResult {
        hwm_before_mb,
        hwm_after_mb,
        answers,
        alive_after,
    }
}

struct RetentionResult {
    busy_answers: usize,
    other_answers: Vec<String>,
    busy_rate: f64,
    pruned: String,
    kept: u64,
    rows_after: u64,
    wait_timeout_rows: u64,
    wait_timeout_count: u64,
}

/// One number from an admin SQL query.
fn sql_number(port: u16, statement: &str) -> R<u64> {
    let (status, err, _, first) = sql(port, statement);
    if status != 200 {
        return Err(format!("{statement}: HTTP {status} {err}"));
    }
    Ok(first.trim_matches('"').parse().unwrap_or(0))
}

fn phase_retention(
    port: u16,
    bin: &std::path::Path,
    storage: &std::path::Path,
) -> R<RetentionResult> {
    let mut c = LeaseClient::new(port);
    for _ in 0..KEEP_PAIRS {
        c.pair("keep")?;
    }
    let (busy_lease, _) = c.acquire(
        "busy",
        "messages",
        br#"{"holder":"bench","operation":"hold for the busy loop","ttl_ms":300000}"#,
    )?;
    let body = br#"{"holder":"busy-loop","operation":"try","ttl_ms":30000,"wait_ms":0}"#;
    let mut busy = 0;
    let mut other = Vec::new();
    let t = Instant::now();
    for _ in 0..BUSY_ASKS {
        let r = c.ok("POST", "/api/v1/locks/busy/messages/acquire", Some(body));
        match r {
            Ok(_) => other.push("200 (granted!)".to_string()),
            Err(e) if e.contains("HTTP 409") && e.contains("\"busy\"") => busy += 1,
            Err(e) => other.push(e.chars().take(120).collect()),
        }
    }
    let busy_rate = BUSY_ASKS as f64 / t.elapsed().as_secs_f64();
    c.release(&busy_lease)?;
    other.sort();
    other.dedup();
    let out = try_run(
        lockledger(bin, storage, &["prune"]),
        Duration::from_secs(120),
    )?;
    let pruned = format!(
        "{} (exit {}){}",
        out.stdout.trim(),
        out.code,
        if out.stderr.trim().is_empty() {
            String::new()
        } else {
            format!("; stderr: {}", out.stderr.trim())
        }
    );
    let kept = sql_number(
        port,
        "SELECT count(*) FROM lock_events WHERE owner = 'keep' AND event IN ('acquired', 'released')",
    )?;
    let rows_after = sql_number(port, "SELECT count(*) FROM lock_events")?;
    let wait_timeout_rows = sql_number(
        port,
        "SELECT count(*) FROM lock_events WHERE event = 'wait_timeout'",
    )?;
    let wait_timeout_count = sql_number(
        port,
        "SELECT coalesce(sum(count), 0) FROM lock_events WHERE event = 'wait_timeout'",
    )?;
    Ok(RetentionResult {
        busy_answers: busy,
        other_answers: other,
        busy_rate,
        pruned,
        kept,
        rows_after,
        wait_timeout_rows,
        wait_timeout_count,
    })
}

pub fn bench_limits(ctx: &mut Ctx) -> R<()> {
    println!("\n[limits] {WAITERS} waiters on one lock, slow headers, heavy admin SQL, busy answers and retention");
    println!("  ({})", other_work(&ctx.pids()));
    let nofile = raise_nofile();
    if nofile < (WAITERS + SLOW + 200) as u64 {
        return Err(format!(
            "the file-descriptor limit is {nofile}; the limits run needs {} (ulimit -n)",
            WAITERS + SLOW + 200
        ));
    }
    let storage = ctx.dir("limits")?;
    std::fs::write(
        storage.join("lockledger.toml"),
        format!("retention_max_events = {RETENTION}\n"),
    )
    .map_err(|e| format!("lockledger.toml: {e}"))?;
    let mut svc = Service::start_with(
        &ctx.server_bin,
        &storage,
        "limits service",
        ctx.rust_log.as_deref(),
        &["--admin-token", ADMIN],
    )?;
    svc.settle();
    let (port, pid) = (svc.port, svc.pid());
    ctx.detail(format!(
        "started lockledger serve (pid {pid}, port {port}) with retention_max_events = {RETENTION}; this process's fd limit {nofile}"
    ));

    // 1. Waiters.
    let w = phase_waiters(port, pid)?;
    ctx.detail(format!("before the waiters: {}", w.before.describe()));
    ctx.detail(format!(
        "{} of {WAITERS} waiting after {:.1} s (service RSS {:.1} MB): {}",
        w.queued,
        w.queue_s,
        w.rss_waiting_mb,
        w.during.describe()
    ));
    let first: Vec<f64> = sorted(w.handoffs.iter().take(100).map(|h| h.max(0.0)).collect());
    let all: Vec<f64> = sorted(w.handoffs.iter().map(|h| h.max(0.0)).collect());
    let early = w.handoffs.iter().filter(|h| **h < 0.0).count();
    ctx.detail(format!(
        "hand-offs (previous holder's release answer -> next waiter's grant answer): first 100 p50 {} p99 {}; all {} p50 {} p99 {} max {}; {early} grants arrived before the release answer (counted as 0); first {}; {} granted in {:.1} s{}",
        ms(p(&first, 0.5)),
        ms(p(&first, 0.99)),
        all.len(),
        ms(p(&all, 0.5)),
        ms(p(&all, 0.99)),
        ms(all.last().copied().unwrap_or(f64::NAN)),
        ms(w.handoffs.first().copied().unwrap_or(f64::NAN)),
        w.granted,
        w.chain_s,
        if w.errors.is_empty() {
            String::new()
        } else {
            format!("; other answers: {}", w.errors.join(", "))
        }
    ));

    // 2. Slow headers.
    let s = phase_slow_headers(port)?;
    ctx.detail(format!(
        "slow headers: {} of {SLOW} closed by the service within 15 s (closed after p50 {:.1} s, max {:.1} s; {} still open at 16 s); GET /healthz meanwhile p50 {} p99 {} (n={})",
        s.closed,
        p(&s.close_s, 0.5),
        s.close_s.last().copied().unwrap_or(f64::NAN),
        SLOW - s.close_s.len(),
        ms(p(&s.healthz_ms, 0.5)),
        ms(p(&s.healthz_ms, 0.99)),
        s.healthz_ms.len()
    ));

    // 3. Admin SQL.
    let q = phase_sql(port, pid);
    let cut_fast = q
        .answers
        .iter()
        .all(|(_, (st, _, ms, _))| *st != 200 && *st != 0 && *ms < 3000.0);
    for (name, (status, err, took, first)) in &q.answers {
        ctx.detail(format!(
            "admin SQL {name}: HTTP {status} in {} {}",
            ms(*took),
            if err.is_empty() {
                format!("(answered: {first})")
            } else {
                format!("({err})")
            }
        ));
    }
    ctx.detail(format!(
        "service peak RSS (VmHWM): {:.0} MB before the SQL, {:.0} MB after; {}; {}",
        q.hwm_before_mb,
        q.hwm_after_mb,
        if cut_fast {
            "both refused or cut within 3 s"
        } else {
            "NOT both refused or cut within 3 s"
        },
        if q.alive_after {
            "the service answers afterwards"
        } else {
            "the service does NOT answer afterwards"
        }
    ));
    if !q.alive_after {
        drop(svc);
        svc = Service::start_with(
            &ctx.server_bin,
            &storage,
            "limits service",
            ctx.rust_log.as_deref(),
            &["--admin-token", ADMIN],
        )?;
        ctx.detail(format!("restarted the service (pid {})", svc.pid()));
    }
    let port = svc.port;

    // 4. Busy answers and retention.
    let r = phase_retention(port, &ctx.server_bin, &storage)?;
    ctx.detail(format!(
        "busy loop: {} of {BUSY_ASKS} wait_ms=0 acquires answered 409 busy ({:.0}/s){}; history now {} rows, {} wait_timeout rows folding {} busy answers; lockledger prune: {}",
        r.busy_answers,
        r.busy_rate,
        if r.other_answers.is_empty() {
            String::new()
        } else {
            format!(" (other answers: {})", r.other_answers.join(", "))
        },
        r.rows_after,
        r.wait_timeout_rows,
        r.wait_timeout_count,
        r.pruned
    ));
    drop(svc);

    let healthz = p(&w.during.healthz, 0.99);
    let release = p(&w.during.release, 0.99);
    let handoff = p(&first, 0.99);
    let ok = w.queued >= WAITERS
        && w.granted == WAITERS
        && healthz < 50.0
        && release < 50.0
        && handoff < 5.0;
    let sec11 = [
        (s.closed == SLOW, "every slow header closed within 15 s"),
        (cut_fast, "both SQL statements refused or cut within 3 s"),
        (
            r.kept == 2 * KEEP_PAIRS as u64,
            "every acquired/released event of the unrelated owner kept",
        ),
    ];
    ctx.detail(format!(
        "DESIGN §11 (measured, not judged here): {}",
        sec11
            .iter()
            .map(|(met, what)| format!("{what}: {}", if *met { "yes" } else { "NO" }))
            .collect::<Vec<_>>()
            .join("; ")
    ));
    ctx.report_with(
        "limits",
        format!(
            "waiters={} healthz_p99_ms={:.2} release_ms={:.2} handoff_ms={:.2} slow_headers_closed={} sql_rss_mb={:.0} history_kept={}  (targets: healthz and release p99 < 50 ms with {WAITERS} waiting, hand-off p99 < 5 ms; {} granted)",
            w.queued,
            healthz,
            release,
            handoff,
            s.closed,
            q.hwm_after_mb,
            r.kept,
            w.granted
        ),
        Verdict::of(ok),
        Data::new(healthz, "ms")
            .target("healthz and release p99 < 50 ms, hand-off p99 < 5 ms")
            .more("waiters", w.queued as f64)
            .more("healthz_p99_ms", healthz)
            .more("release_p99_ms", release)
            .more("renew_p99_ms", p(&w.during.renew, 0.99))
            .more("handoff_p99_ms", handoff)
            .more("handoff_p50_ms", p(&first, 0.5))
            .more("granted", w.granted as f64)
            .more("slow_headers_closed", s.closed as f64)
            .more("sql_rss_mb", q.hwm_after_mb)
            .more("history_kept", r.kept as f64),
    );
    Ok(())
}

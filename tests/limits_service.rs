//! Limits under load and abuse against the real binary (DESIGN §11): a thousand waiters
//! hold no thread and starve nothing; a process stopped inside a registry write does not
//! take the service down; busy answers do not push grants out of a capped history; the
//! admin console cannot run away; half-sent requests are closed; CSV exports are whole.

use lockledger::store::{db, history, records};
use lockledger::{Config, LockKey};
use lockledger_harness::{lockledger, wait_for, Conn, Proc, Request as Req, Server, ServerOpts};
use serde_json::json;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_lockledger");
const ADMIN: &str = "admin-token-0123456789";

fn start(storage: &Path, extra: &[&str]) -> Server {
    let mut args = vec!["--admin-token", ADMIN];
    args.extend_from_slice(extra);
    Server::start(Path::new(BIN), storage, &ServerOpts::default().args(&args))
}

fn acquire_body(wait_ms: u64) -> serde_json::Value {
    json!({"holder": "t", "operation": "o", "ttl_ms": 60_000, "wait_ms": wait_ms})
}

fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: get/setrlimit read and write the struct passed.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
}

#[test]
fn a_thousand_waiters_starve_nothing_and_the_next_one_gets_the_lock() {
    raise_fd_limit();
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path(), &[]);
    let held = Req::post("/api/v1/locks/hot/messages/acquire")
        .json(&acquire_body(0))
        .send(srv.port)
        .json();
    let lease = held["lease_id"].as_str().unwrap().to_string();
    // 1000 waiters, each on its own connection, waiting up to a minute.
    let wire = Req::post("/api/v1/locks/hot/messages/acquire")
        .json(&acquire_body(60_000))
        .wire(srv.port, true);
    let mut waiters = Vec::new();
    for _ in 0..1000 {
        let mut c = Conn::connect(srv.port, Duration::from_secs(5)).expect("connect");
        c.write_all(&wire).unwrap();
        waiters.push(c);
    }
    wait_for(Duration::from_secs(20), "1000 waiters queued", || {
        let h = Req::get("/healthz").send(srv.port).json();
        (h["waiting"].as_u64() == Some(1000)).then_some(())
    });
    // Health and renewals answer while they wait.
    for _ in 0..20 {
        let t = Instant::now();
        assert_eq!(Req::get("/healthz").send(srv.port).status, 200);
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "healthz took {:?}",
            t.elapsed()
        );
    }
    let t = Instant::now();
    let renewed = Req::post(&format!("/api/v1/leases/{lease}/renew"))
        .empty_json()
        .send(srv.port);
    assert_eq!(renewed.status, 200);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "renew took {:?}",
        t.elapsed()
    );
    // The holder lets go: exactly one waiter is granted, at once.
    let t = Instant::now();
    let released = Req::delete(&format!("/api/v1/leases/{lease}"))
        .empty_json()
        .send(srv.port);
    assert_eq!(released.status, 200);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "release took {:?}",
        t.elapsed()
    );
    let mut granted = None;
    for (i, c) in waiters.iter_mut().enumerate() {
        c.stream()
            .set_read_timeout(Some(Duration::from_millis(5)))
            .unwrap();
        let mut buf = [0u8; 16];
        if c.stream().peek(&mut buf).is_ok_and(|n| n > 0) {
            granted = Some(i);
            break;
        }
    }
    let first = granted.unwrap_or_else(|| {
        // Give the hand-off a moment, bounded.
        wait_for(Duration::from_secs(5), "a waiter to be granted", || {
            waiters.iter_mut().position(|c| {
                let mut buf = [0u8; 16];
                c.stream().peek(&mut buf).is_ok_and(|n| n > 0)
            })
        })
    });
    let head = waiters[first].read_head().unwrap();
    assert_eq!(head.status, 200, "the next waiter was granted");
    drop(waiters);
}

#[test]
fn waiters_over_the_cap_are_refused_at_once_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(
        Path::new(BIN),
        dir.path(),
        &ServerOpts::default()
            .args(&["--admin-token", ADMIN])
            .env("LOCKLEDGER_MAX_WAITERS_PER_LOCK", "2"),
    );
    Req::post("/api/v1/locks/cap/all/acquire")
        .json(&acquire_body(0))
        .send(srv.port);
    let wire = Req::post("/api/v1/locks/cap/all/acquire")
        .json(&acquire_body(10_000))
        .wire(srv.port, true);
    let mut queued = Vec::new();
    for _ in 0..2 {
        let mut c = Conn::connect(srv.port, Duration::from_secs(5)).unwrap();
        c.write_all(&wire).unwrap();
        queued.push(c);
    }
    wait_for(Duration::from_secs(5), "two waiters", || {
        (Req::get("/healthz").send(srv.port).json()["waiting"] == 2).then_some(())
    });
    let t = Instant::now();
    let r = Req::post("/api/v1/locks/cap/all/acquire")
        .json(&acquire_body(10_000))
        .send(srv.port);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (503, "too_many_waiters")
    );
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(t.elapsed() < Duration::from_secs(1));
}

#[test]
fn a_process_stopped_inside_a_write_does_not_take_the_service_down() {
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path();
    {
        // Create and migrate the registry first.
        let mut srv = start(storage, &[]);
        srv.stop();
    }
    // A holder stops itself inside its grant's write transaction (SQLite's write lock).
    let mut cmd = lockledger(Path::new(BIN), storage, &["hold", "frozen", "messages"]);
    cmd.env("LOCKLEDGER_FAULT", "inside_write:stop");
    let mut holder = Proc::spawn(cmd, "stopped holder");
    let pid = holder.pid();
    wait_for(Duration::from_secs(10), "the holder to stop", || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let state = stat
            .rsplit_once(')')?
            .1
            .split_whitespace()
            .next()?
            .to_string();
        (state == "T").then_some(())
    });
    // The service starts anyway and serves status.
    let srv = Server::start(
        Path::new(BIN),
        storage,
        &ServerOpts::default()
            .args(&["--admin-token", ADMIN])
            .env("LOCKLEDGER_BUSY_TIMEOUT_MS", "300"),
    );
    let status = Req::get("/api/v1/locks/other").send(srv.port);
    assert_eq!(status.status, 200, "{}", status.text());
    // Writes are refused with the pid that holds the write lock, and health says so.
    let r = Req::post("/api/v1/locks/other/all/acquire")
        .json(&acquire_body(0))
        .send(srv.port);
    assert_eq!(r.status, 503, "{}", r.text());
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains(&format!("pid {pid}")) && msg.contains("stopped"),
        "{msg}"
    );
    let h = Req::get("/healthz").send(srv.port).json();
    let words = h["status"].as_str().unwrap();
    assert!(
        words.starts_with("degraded") && words.contains(&format!("pid {pid}")),
        "{h}"
    );
    // It resumes: everything recovers.
    holder.signal(libc::SIGCONT);
    wait_for(Duration::from_secs(10), "writes to work again", || {
        let r = Req::post("/api/v1/locks/other/all/acquire")
            .json(&acquire_body(0))
            .send(srv.port);
        (r.status == 200).then_some(())
    });
    holder.signal(libc::SIGTERM);
    holder.wait_exit(Duration::from_secs(10));
}

#[test]
fn busy_answers_never_push_grants_out_of_a_capped_history() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path()).unwrap();
    std::fs::write(
        dir.path().join("lockledger.toml"),
        "retention_max_events = 200\n",
    )
    .unwrap();
    let srv = start(dir.path(), &[]);
    // An unrelated conversation's grants.
    for _ in 0..20 {
        let g = Req::post("/api/v1/locks/quiet/messages/acquire")
            .json(&acquire_body(0))
            .send(srv.port)
            .json();
        let id = g["lease_id"].as_str().unwrap();
        Req::delete(&format!("/api/v1/leases/{id}"))
            .empty_json()
            .send(srv.port);
    }
    // A client hammering a held lock with wait_ms 0.
    Req::post("/api/v1/locks/noisy/messages/acquire")
        .json(&acquire_body(0))
        .send(srv.port);
    for _ in 0..500 {
        let r = Req::post("/api/v1/locks/noisy/messages/acquire")
            .json(&acquire_body(0))
            .send(srv.port);
        assert_eq!(r.status, 409);
    }
    let h = wait_for(Duration::from_secs(5), "busy answers written", || {
        let h = Req::get("/api/v1/history?owner=noisy&event=wait_timeout")
            .send(srv.port)
            .json();
        let total: i64 = h["events"]
            .as_array()?
            .iter()
            .map(|e| e["count"].as_i64().unwrap_or(0))
            .sum();
        (total == 500).then_some(h)
    });
    assert!(
        h["events"].as_array().unwrap().len() <= 3,
        "folded into one row per minute: {h}"
    );
    // Each row grew over many flushes; its reason describes all of its answers.
    for e in h["events"].as_array().unwrap() {
        let (count, reason) = (e["count"].as_i64().unwrap(), e["reason"].as_str().unwrap());
        if count > 1 {
            assert!(reason.contains(&format!(", {count} busy answers")), "{e}");
        } else {
            assert!(!reason.contains("busy answers"), "{e}");
        }
    }
    let pruned = lockledger_harness::run(
        lockledger(Path::new(BIN), dir.path(), &["prune"]),
        Duration::from_secs(20),
    );
    assert_eq!(pruned.code, 0, "{}", pruned.stderr);
    let quiet = Req::get("/api/v1/history?owner=quiet&limit=100")
        .send(srv.port)
        .json();
    assert_eq!(quiet["events"].as_array().unwrap().len(), 40, "{quiet}");
}

#[test]
fn the_admin_console_cannot_run_away() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path(), &[]);
    for sql in [
        "SELECT length(randomblob(1000000000))",
        "SELECT hex(zeroblob(500000000))",
    ] {
        let t = Instant::now();
        let r = Req::post("/api/v1/sql")
            .json(&json!({ "sql": sql }))
            .bearer(ADMIN)
            .send(srv.port);
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "{sql}: {:?}",
            t.elapsed()
        );
        assert!(r.status >= 400, "{sql}: {}", r.text());
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", srv.pid())).unwrap();
    let hwm_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    assert!(hwm_kb < 300 * 1024, "peak RSS {hwm_kb} kB");
}

#[test]
fn a_half_sent_request_is_closed_by_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path(), &["--header-timeout-ms", "500"]);
    let mut slow = std::net::TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let t = Instant::now();
    let mut buf = Vec::new();
    let _ = slow.read_to_end(&mut buf);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "closed after {:?}",
        t.elapsed()
    );
    assert_eq!(Req::get("/healthz").send(srv.port).status, 200);
}

#[test]
fn a_csv_export_has_every_matching_row() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::defaults(dir.path());
    {
        let mut conn = db::open_and_migrate(&config).unwrap();
        let tx = conn.transaction().unwrap();
        let ns = &config.namespaces[0];
        let key = LockKey::new(ns, "big", "messages").unwrap();
        let lock_id = records::ensure_lock(&tx, &key, "big_messages.lock", 0).unwrap();
        for i in 0..25_000 {
            history::insert_event(
                &tx,
                &history::NewEvent {
                    at: 1_800_000_000_000 + i,
                    lock_id,
                    namespace: "conversation",
                    owner: "big",
                    field: "messages",
                    event: Some(history::EventKind::Acquired),
                    token: Some(i),
                    ..Default::default()
                },
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }
    let srv = start(dir.path(), &[]);
    let r = Req::get("/api/v1/history?owner=big&format=csv")
        .timeout(Duration::from_secs(60))
        .send(srv.port);
    assert_eq!(r.status, 200);
    let text = r.text();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("event_id,"), "{}", lines[0]);
    assert_eq!(lines.last(), Some(&"# rows: 25000"));
    assert_eq!(lines.len(), 25_002);
}

//! Two `lockledger serve` processes on one PostgreSQL (`--database`), each with a storage
//! directory of its own (as on two hosts): clients split across them never hold one lock
//! at once, tokens increase across both, a SIGKILLed service's leases end by their ttl and
//! the other service grants the lock, and history from both is in one place.
//!
//! A real throwaway PostgreSQL cluster (the harness's `PgCluster`, installed by
//! `scripts/setup.sh --tests`); every wait has a deadline; servers are killed on drop.

use lockledger_harness::{Client, PgCluster, Request, Server};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_lockledger");

fn database(name: &str) -> String {
    PgCluster::test_database(name)
}

/// A service on `url` with its own storage directory under `dir`.
fn service(dir: &Path, name: &str, url: &str) -> Server {
    Server::on_database(Path::new(BIN), &dir.join(name), url)
}

fn send(c: &mut Client, req: Request) -> (u16, Value) {
    let r = c
        .send(&req)
        .unwrap_or_else(|e| panic!("request failed: {e}"));
    (r.status, r.json_or_null())
}

fn acquire(c: &mut Client, owner: &str, body: Value) -> (u16, Value) {
    send(
        c,
        Request::post(&format!("/api/v1/locks/{owner}/messages/acquire")).json(&body),
    )
}

fn release(c: &mut Client, lease_id: &str) -> u16 {
    send(
        c,
        Request::delete(&format!("/api/v1/leases/{lease_id}")).json_text(""),
    )
    .0
}

fn history(c: &mut Client, owner: &str) -> Vec<Value> {
    let (status, v) = send(
        c,
        Request::get(&format!("/api/v1/history?owner={owner}&limit=1000")),
    );
    assert_eq!(status, 200, "{v}");
    v["events"].as_array().cloned().unwrap_or_default()
}

fn count(events: &[Value], kind: &str) -> usize {
    events.iter().filter(|e| e["event"] == kind).count()
}

#[test]
fn sixteen_clients_on_two_services_never_hold_one_lock_twice() {
    let url = database("svc_race");
    let dir = tempfile::tempdir().unwrap();
    let a = service(dir.path(), "host-a", &url);
    let b = service(dir.path(), "host-b", &url);
    let ports = [a.port, b.port];
    let rounds = 12;
    let counter = dir.path().join("counter");
    std::fs::write(&counter, "0").unwrap();
    let inside = Arc::new(AtomicUsize::new(0));
    let most_inside = Arc::new(AtomicUsize::new(0));
    let grants = Arc::new(Mutex::new(Vec::<(Instant, i64)>::new()));
    let deadline = Instant::now() + Duration::from_secs(240);
    std::thread::scope(|s| {
        for i in 0..16 {
            let (inside, most, grants, counter) = (&inside, &most_inside, &grants, &counter);
            let port = ports[i % 2];
            s.spawn(move || {
                let mut c = Client::new(port);
                for _ in 0..rounds {
                    let lease = loop {
                        assert!(Instant::now() < deadline, "client {i} never got the lock");
                        let body = json!({"holder": format!("client-{i}"), "operation": "count",
                                          "ttl_ms": 20000, "wait_ms": 5000});
                        let (status, v) = acquire(&mut c, "race", body);
                        match status {
                            200 => break v,
                            409 | 503 => continue,
                            other => panic!("acquire: HTTP {other}: {v}"),
                        }
                    };
                    let now_inside = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now_inside, Ordering::SeqCst);
                    let token = lease["token"].as_i64().unwrap();
                    grants.lock().unwrap().push((Instant::now(), token));
                    // A read-modify-write that loses updates if two clients overlap.
                    let n: u64 = std::fs::read_to_string(counter)
                        .unwrap()
                        .trim()
                        .parse()
                        .unwrap();
                    std::thread::sleep(Duration::from_millis(2));
                    std::fs::write(counter, (n + 1).to_string()).unwrap();
                    inside.fetch_sub(1, Ordering::SeqCst);
                    let id = lease["lease_id"].as_str().unwrap();
                    assert_eq!(release(&mut c, id), 200, "release of {id}");
                }
            });
        }
    });
    let total: u64 = std::fs::read_to_string(&counter).unwrap().parse().unwrap();
    assert_eq!(
        total,
        16 * rounds as u64,
        "lost updates: two holders overlapped"
    );
    assert_eq!(
        most_inside.load(Ordering::SeqCst),
        1,
        "two clients held the lock at once"
    );
    let mut g = grants.lock().unwrap().clone();
    g.sort_by_key(|(at, _)| *at);
    for w in g.windows(2) {
        assert!(
            w[0].1 < w[1].1,
            "tokens must increase across both services in grant order: {} then {}",
            w[0].1,
            w[1].1
        );
    }
    // History from both services, in one place, read through either.
    for port in ports {
        let ev = history(&mut Client::new(port), "race");
        assert_eq!(
            count(&ev, "acquired"),
            16 * rounds,
            "acquired events via {port}"
        );
        assert_eq!(
            count(&ev, "released"),
            16 * rounds,
            "released events via {port}"
        );
    }
    // The records live in PostgreSQL only: no SQLite database was opened beside the
    // lock files, and each service says which database it runs on.
    for (name, port) in [("host-a", a.port), ("host-b", b.port)] {
        let storage = dir.path().join(name);
        assert!(storage.join("locks").is_dir(), "{name} has its lock files");
        for f in ["registry.db", "registry.db-wal", "registry.db-shm"] {
            assert!(!storage.join(f).exists(), "{name} opened {f} on PostgreSQL");
        }
        let (status, health) = send(&mut Client::new(port), Request::get("/healthz"));
        assert_eq!(status, 200, "{health}");
        assert_eq!(health["database"], "postgresql", "{health}");
    }
}

#[test]
fn a_killed_services_lease_ends_by_ttl_and_the_other_service_grants() {
    let url = database("svc_kill");
    let dir = tempfile::tempdir().unwrap();
    let mut a = service(dir.path(), "host-a", &url);
    let b = service(dir.path(), "host-b", &url);
    let mut ca = Client::new(a.port);
    let (status, held) = acquire(
        &mut ca,
        "kill",
        json!({"holder": "doomed", "operation": "stream", "ttl_ms": 1500}),
    );
    assert_eq!(status, 200, "{held}");
    let first_token = held["token"].as_i64().unwrap();
    // B is refused while A's lease lives, and says who holds it.
    let mut cb = Client::new(b.port);
    let (status, busy) = acquire(
        &mut cb,
        "kill",
        json!({"holder": "next", "operation": "stream", "ttl_ms": 5000}),
    );
    assert_eq!(status, 409, "{busy}");
    assert!(
        busy["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("doomed")
            || busy.to_string().contains("doomed"),
        "the refusal names the holder: {busy}"
    );
    a.kill9();
    let started = Instant::now();
    let (status, got) = acquire(
        &mut cb,
        "kill",
        json!({"holder": "next", "operation": "stream", "ttl_ms": 5000, "wait_ms": 15000}),
    );
    let waited = started.elapsed();
    assert_eq!(status, 200, "{got}");
    assert!(got["token"].as_i64().unwrap() > first_token);
    assert!(
        waited < Duration::from_secs(10),
        "granted only after {waited:?} (the dead lease's ttl was 1.5 s)"
    );
    let ev = history(&mut cb, "kill");
    // Its end: by ttl (`expired`, the database clock), or, since both services run on
    // this one host here, by B's reaper finding A's pid dead (`reconciled`); once.
    assert_eq!(
        count(&ev, "expired") + count(&ev, "reconciled"),
        1,
        "{ev:?}"
    );
    assert_eq!(count(&ev, "acquired"), 2, "{ev:?}");
    // B's status shows its own lease held.
    let (status, st) = send(&mut cb, Request::get("/api/v1/locks/kill"));
    assert_eq!(status, 200, "{st}");
    let messages = st["locks"]
        .as_array()
        .and_then(|l| l.iter().find(|x| x["field"] == "messages").cloned())
        .unwrap_or(Value::Null);
    assert_eq!(messages["state"], "held", "{st}");
}

fn admin_token(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name).join("admin-token"))
        .expect("the service wrote its admin token")
        .trim()
        .to_string()
}

#[test]
fn clears_fencing_and_admin_sql_work_across_services() {
    let url = database("svc_clear");
    let dir = tempfile::tempdir().unwrap();
    let a = service(dir.path(), "host-a", &url);
    let b = service(dir.path(), "host-b", &url);
    let admin_b = admin_token(dir.path(), "host-b");
    let (mut ca, mut cb) = (Client::new(a.port), Client::new(b.port));
    let (status, held) = acquire(
        &mut ca,
        "keep",
        json!({"holder": "streamer", "operation": "stream", "ttl_ms": 30000}),
    );
    assert_eq!(status, 200, "{held}");
    let token = held["token"].as_i64().unwrap();
    let lease = held["lease_id"].as_str().unwrap().to_string();

    // A safe clear through B leaves A's live lease alone and says why.
    let (status, v) = send(
        &mut cb,
        Request::post("/api/v1/locks/keep/clear")
            .json(&json!({}))
            .bearer(&admin_b),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["cleared"].as_array().map(Vec::len), Some(0), "{v}");
    assert!(
        v.to_string().contains("streamer"),
        "the skip names the holder: {v}"
    );

    // A renewal through A (on its async path the PostgreSQL call must go off-thread).
    let (status, v) = send(
        &mut ca,
        Request::post(&format!("/api/v1/leases/{lease}/renew")).json_text(""),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["token"].as_i64(), Some(token), "{v}");

    // The fence check through B agrees the token is current.
    let fence = |c: &mut Client, t: i64| {
        let (status, v) = send(
            c,
            Request::post("/api/v1/fence/check")
                .json(&json!({"owner": "keep", "field": "messages", "token": t})),
        );
        assert_eq!(status, 200, "{v}");
        v["current"].as_bool().unwrap()
    };
    assert!(fence(&mut cb, token));

    // Admin SQL through B sees A's holder in the same view as on SQLite; writes are
    // refused; a long query is stopped.
    let sql = |c: &mut Client, q: &str| {
        send(
            c,
            Request::post("/api/v1/sql")
                .json(&json!({"sql": q}))
                .bearer(&admin_b),
        )
    };
    let (status, v) = sql(
        &mut cb,
        "SELECT owner, field, token, holder, held_ms >= 0 AS ok FROM current_locks",
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["columns"],
        json!(["owner", "field", "token", "holder", "ok"])
    );
    assert_eq!(
        v["rows"],
        json!([["keep", "messages", token, "streamer", true]])
    );
    let (status, v) = sql(&mut cb, "DELETE FROM event_log");
    assert_eq!(status, 403, "{v}");
    assert_eq!(v["error"]["code"], "read_only", "{v}");
    let (status, v) = sql(&mut cb, "SELECT pg_sleep(10)");
    assert_eq!(status, 422, "{v}");
    let (status, v) = sql(&mut cb, "SELECT 1; SELECT 2");
    assert_eq!(status, 400, "{v}");
    let (status, v) = sql(
        &mut cb,
        "SELECT avg(last_token) AS a, now() AS t FROM locks",
    );
    assert_eq!(status, 200, "types read through JSON: {v}");

    // A force clear through B revokes A's lease: the token rises, the old one is fenced,
    // A's client learns its lease is gone, and the lock is granted again.
    let (status, v) = send(
        &mut cb,
        Request::post("/api/v1/locks/keep/force-clear")
            .json(&json!({"field": "messages", "token": token, "reason": "stuck stream"}))
            .bearer(&admin_b),
    );
    assert_eq!(status, 200, "{v}");
    assert!(
        v["force_cleared"]["new_token"].as_i64().unwrap() > token,
        "{v}"
    );
    assert!(!fence(&mut ca, token), "the revoked token is fenced");
    let (status, v) = send(
        &mut ca,
        Request::post(&format!("/api/v1/leases/{lease}/renew")).json_text(""),
    );
    assert_eq!(status, 410, "{v}");
    let (status, again) = acquire(
        &mut cb,
        "keep",
        json!({"holder": "next", "operation": "send", "ttl_ms": 5000, "wait_ms": 10000}),
    );
    assert_eq!(status, 200, "{again}");
    assert!(again["token"].as_i64().unwrap() > token);
    let ev = history(&mut ca, "keep");
    assert_eq!(count(&ev, "force_cleared"), 1, "{ev:?}");
}

#[test]
fn a_lease_renewed_or_released_through_the_other_service_keeps_its_terms() {
    let url = database("svc_cross");
    let dir = tempfile::tempdir().unwrap();
    let a = service(dir.path(), "host-a", &url);
    let b = service(dir.path(), "host-b", &url);
    let (mut ca, mut cb) = (Client::new(a.port), Client::new(b.port));
    let (status, held) = acquire(
        &mut ca,
        "cross",
        json!({"holder": "h", "operation": "stream", "ttl_ms": 2000}),
    );
    assert_eq!(status, 200, "{held}");
    let lease = held["lease_id"].as_str().unwrap().to_string();
    // Renewed through B, which does not know the ttl the client asked A for: its own.
    let (status, v) = send(
        &mut cb,
        Request::post(&format!("/api/v1/leases/{lease}/renew")).json_text(""),
    );
    assert_eq!(status, 200, "{v}");
    let left = v["expires_at"]
        .as_str()
        .and_then(lockledger::clock::parse_time)
        .unwrap()
        - std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
    assert!(
        (1000..=2500).contains(&left),
        "renewed through B for {left} ms, not the lease's own 2 s"
    );
    // Released through B: A lets go of its flock soon after (the free is announced), so
    // A grants the lock again well before the old lease's end.
    assert_eq!(release(&mut cb, &lease), 200);
    let started = Instant::now();
    let (status, again) = acquire(
        &mut ca,
        "cross",
        json!({"holder": "next", "operation": "send", "ttl_ms": 5000, "wait_ms": 5000}),
    );
    assert_eq!(status, 200, "{again}");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "A kept the released lease's flock for {:?}",
        started.elapsed()
    );
}

#[test]
fn hundreds_of_waiters_on_postgresql_hold_no_thread() {
    let url = database("svc_waiters");
    let dir = tempfile::tempdir().unwrap();
    let a = service(dir.path(), "host-a", &url);
    let b = service(dir.path(), "host-b", &url);
    let n = 300;
    // A holds n locks; B gets one waiting acquire for each (each waits in the database's
    // line as a future, not on a thread).
    let mut ca = Client::new(a.port);
    let leases: Vec<String> = (0..n)
        .map(|i| {
            let (status, v) = acquire(
                &mut ca,
                &format!("w{i}"),
                json!({"holder": "a", "operation": "hold", "ttl_ms": 60000}),
            );
            assert_eq!(status, 200, "{v}");
            v["lease_id"].as_str().unwrap().to_string()
        })
        .collect();
    let port = b.port;
    let granted = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for i in 0..n {
            let granted = &granted;
            s.spawn(move || {
                let mut c = Client::new(port);
                let (status, v) = acquire(
                    &mut c,
                    &format!("w{i}"),
                    json!({"holder": "b", "operation": "wait", "ttl_ms": 5000, "wait_ms": 30000}),
                );
                assert_eq!(status, 200, "waiter {i}: {v}");
                granted.fetch_add(1, Ordering::SeqCst);
            });
        }
        // While they all wait, B answers at once: health, status, a renewal of its own.
        let mut cb = Client::new(port);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, w) = send(&mut cb, Request::get("/api/v1/waiters"));
            if w["waiters"].as_array().map_or(0, Vec::len) >= n {
                break;
            }
            assert!(Instant::now() < deadline, "not all {n} waiters queued: {w}");
            std::thread::sleep(Duration::from_millis(50));
        }
        let t = Instant::now();
        let (status, _) = send(&mut cb, Request::get("/healthz"));
        assert_eq!(status, 200);
        let (status, own) = acquire(
            &mut cb,
            "free-one",
            json!({"holder": "b", "operation": "o", "ttl_ms": 5000}),
        );
        assert_eq!(status, 200, "{own}");
        let (status, v) = send(
            &mut cb,
            Request::post(&format!(
                "/api/v1/leases/{}/renew",
                own["lease_id"].as_str().unwrap()
            ))
            .json_text(""),
        );
        assert_eq!(status, 200, "{v}");
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "with {n} waiters B took {:?} to answer",
            t.elapsed()
        );
        assert_eq!(granted.load(Ordering::SeqCst), 0);
        // A lets go of every lock: each waiter on B is granted.
        for id in &leases {
            assert_eq!(release(&mut ca, id), 200);
        }
    });
    assert_eq!(granted.load(Ordering::SeqCst), n);
}

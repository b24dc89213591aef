//! The in-process library and the CLI on a shared (PostgreSQL) registry: `Registry::acquire`
//! guards and library leases of registries on two storage directories (as on two hosts)
//! exclude each other through the one database, a force clear through one revokes the
//! other's guard, and `lockledger hold --database` excludes a service's leases on another
//! "host".
//!
//! A real throwaway PostgreSQL cluster (the harness's `PgCluster`); every wait has a
//! deadline; child processes are killed on drop.

use lockledger::registry::LeaseRequest;
use lockledger::store::history::HistoryQuery;
use lockledger::{AcquireOptions, Config, LockKey, Registry, RegistryError};
use lockledger_harness::{ChildGuard, Client, PgCluster, Proc, Request, Server};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_lockledger");

/// A registry on `url` with a storage directory of its own (one "host").
fn registry(dir: &Path, name: &str, url: &str) -> Registry {
    let mut config = Config::defaults(dir.join(name));
    config.database = Some(url.to_string());
    Registry::open(config).unwrap_or_else(|e| panic!("open registry {name}: {e}"))
}

fn opts(holder: &str, wait_ms: u64) -> AcquireOptions {
    AcquireOptions::new(holder, "count").wait(Duration::from_millis(wait_ms))
}

#[test]
fn library_guards_of_two_hosts_exclude_each_other_through_the_database() {
    let url = PgCluster::test_database("lib_guards");
    let dir = tempfile::tempdir().unwrap();
    let hosts = [
        registry(dir.path(), "host-a", &url),
        registry(dir.path(), "host-b", &url),
    ];
    let key = hosts[0].key(None, "conv7", "messages").unwrap();
    let counter = dir.path().join("counter");
    std::fs::write(&counter, "0").unwrap();
    let inside = AtomicUsize::new(0);
    let most = AtomicUsize::new(0);
    let rounds = 15;
    let deadline = Instant::now() + Duration::from_secs(120);
    std::thread::scope(|s| {
        for i in 0..4 {
            let (reg, key, counter, inside, most) = (&hosts[i % 2], &key, &counter, &inside, &most);
            s.spawn(move || {
                for _ in 0..rounds {
                    let guard = loop {
                        assert!(Instant::now() < deadline, "worker {i} never got the lock");
                        match reg.acquire(key, &opts(&format!("worker-{i}"), 5_000)) {
                            Ok(g) => break g,
                            Err(RegistryError::Busy { .. }) => continue,
                            Err(e) => panic!("worker {i}: {e}"),
                        }
                    };
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    let n: u64 = std::fs::read_to_string(counter)
                        .unwrap()
                        .trim()
                        .parse()
                        .unwrap();
                    std::thread::sleep(Duration::from_millis(1));
                    std::fs::write(counter, (n + 1).to_string()).unwrap();
                    inside.fetch_sub(1, Ordering::SeqCst);
                    guard
                        .release()
                        .unwrap_or_else(|e| panic!("worker {i} release: {e}"));
                }
            });
        }
    });
    assert_eq!(
        most.load(Ordering::SeqCst),
        1,
        "two holders were inside at once"
    );
    let total: u64 = std::fs::read_to_string(&counter)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(total, 4 * rounds, "lost updates");
    // Both hosts' grants are in the one history, each closed once, tokens all distinct.
    let events = hosts[1]
        .history(&HistoryQuery {
            owner: Some("conv7".into()),
            limit: 10_000,
            ..HistoryQuery::default()
        })
        .unwrap();
    let tokens = |kind: &str| {
        let mut t: Vec<i64> = events
            .iter()
            .filter(|e| e.event == kind)
            .filter_map(|e| e.token)
            .collect();
        t.sort_unstable();
        t
    };
    let acquired = tokens("acquired");
    assert_eq!(acquired.len() as u64, 4 * rounds, "{events:?}");
    assert!(
        acquired.windows(2).all(|w| w[0] < w[1]),
        "tokens repeat: {acquired:?}"
    );
    assert_eq!(tokens("released"), acquired, "every grant released once");
    // No SQLite database beside the lock files.
    for h in ["host-a", "host-b"] {
        assert!(
            !dir.path().join(h).join("registry.db").exists(),
            "{h} opened registry.db"
        );
    }
}

#[test]
fn a_force_clear_on_one_host_revokes_the_other_hosts_guard() {
    let url = PgCluster::test_database("lib_revoke");
    let dir = tempfile::tempdir().unwrap();
    let a = registry(dir.path(), "host-a", &url);
    let b = registry(dir.path(), "host-b", &url);
    let key: LockKey = a.key(None, "conv8", "messages").unwrap();
    let guard = a.acquire(&key, &opts("writer", 1_000)).unwrap();
    guard.renew().expect("a live guard renews");
    let token = guard.token();
    // Host b's own acquirers wait, then are refused, naming the holder.
    let refused = b.acquire(&key, &opts("other", 300)).unwrap_err();
    assert!(matches!(refused, RegistryError::Busy { .. }), "{refused}");
    assert!(!b.fence_check(&key, token - 1).unwrap().current);
    assert!(b.fence_check(&key, token).unwrap().current);
    let cleared = b
        .force_clear(&key, token, "stuck writer", "admin:test")
        .unwrap();
    assert!(cleared.new_token > token, "{cleared:?}");
    assert!(
        !b.fence_check(&key, token).unwrap().current,
        "revoked token still current"
    );
    match guard.renew() {
        Err(RegistryError::Revoked { .. }) => {}
        other => panic!("a revoked guard renewed: {other:?}"),
    }
    // Letting go after the revocation is not an error; host b then gets the lock with a
    // token above the raised one.
    guard.release().expect("release after a force clear");
    let g = b.acquire(&key, &opts("next", 2_000)).unwrap();
    assert!(
        g.token() > cleared.new_token,
        "{} <= {}",
        g.token(),
        cleared.new_token
    );
    drop(g);
}

#[test]
fn a_library_lease_is_granted_across_hosts_and_released() {
    let url = PgCluster::test_database("lib_lease");
    let dir = tempfile::tempdir().unwrap();
    let a = registry(dir.path(), "host-a", &url);
    let b = registry(dir.path(), "host-b", &url);
    let key = a.key(None, "conv9", "messages").unwrap();
    let req = |wait_ms: u64| LeaseRequest {
        holder: "demo".into(),
        operation: "stream_reply".into(),
        pid: None,
        host: None,
        ttl: Some(Duration::from_secs(30)),
        wait: Duration::from_millis(wait_ms),
    };
    let lease = a.acquire_lease(&key, &req(0), &|| false).unwrap();
    let refused = b.acquire_lease(&key, &req(200), &|| false).unwrap_err();
    assert!(matches!(refused, RegistryError::Busy { .. }), "{refused}");
    a.release_lease(&lease.lease_id).unwrap();
    let next = b.acquire_lease(&key, &req(2_000), &|| false).unwrap();
    assert!(next.token > lease.token);
    b.release_lease(&next.lease_id).unwrap();
}

#[test]
fn a_lease_whose_client_died_is_reaped_and_named_by_its_lock() {
    let url = PgCluster::test_database("lib_reap_dead");
    let dir = tempfile::tempdir().unwrap();
    let a = registry(dir.path(), "host-a", &url);
    let key = a.key(None, "conv11", "messages").unwrap();
    let mut client = ChildGuard::spawn(std::process::Command::new("sleep").arg("60")).unwrap();
    let req = LeaseRequest {
        holder: "demo".into(),
        operation: "stream_reply".into(),
        pid: Some(client.pid()),
        host: None,
        ttl: Some(Duration::from_secs(30)),
        wait: Duration::ZERO,
    };
    let lease = a.acquire_lease(&key, &req, &|| false).unwrap();
    assert!(a.reap().unwrap().is_empty(), "a live client's lease stays");
    client.kill_and_wait();
    // The reap names what it ended by its lock, as on SQLite (not by lease id).
    assert_eq!(a.reap().unwrap(), ["conv11/messages"]);
    assert!(matches!(
        a.renew_lease(&lease.lease_id),
        Err(RegistryError::LeaseGone { .. })
    ));
    let b = registry(dir.path(), "host-b", &url);
    let next = b
        .acquire_lease(&key, &req_without_pid(), &|| false)
        .unwrap();
    assert!(next.token > lease.token);
}

fn req_without_pid() -> LeaseRequest {
    LeaseRequest {
        holder: "next".into(),
        operation: "stream_reply".into(),
        pid: None,
        host: None,
        ttl: Some(Duration::from_secs(30)),
        wait: Duration::from_secs(2),
    }
}

#[test]
fn cli_hold_on_postgresql_excludes_a_service_on_another_host() {
    let url = PgCluster::test_database("cli_hold");
    let dir = tempfile::tempdir().unwrap();
    let (sa, sb) = (dir.path().join("host-a"), dir.path().join("host-b"));
    std::fs::create_dir_all(&sa).unwrap();
    std::fs::create_dir_all(&sb).unwrap();
    let mut hold = Proc::spawn(
        lockledger_harness::lockledger(
            Path::new(BIN),
            &sa,
            &[
                "--database",
                &url,
                "hold",
                "conv10",
                "messages",
                "--renew-ms",
                "200",
            ],
        ),
        "hold on postgresql",
    );
    let line = hold
        .line(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("hold printed nothing: {}", hold.stderr_text()));
    let held: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(held["event"], "held", "{line}");
    let srv = Server::on_database(Path::new(BIN), &sb, &url);
    let mut c = Client::new(srv.port);
    let acquire = |c: &mut Client, wait_ms: u64| {
        let r = c
            .send(
                &Request::post("/api/v1/locks/conv10/messages/acquire")
                    .json(&json!({"holder": "svc", "operation": "send", "wait_ms": wait_ms})),
            )
            .unwrap();
        (r.status, r.json_or_null())
    };
    let (status, body) = acquire(&mut c, 300);
    assert_eq!(status, 409, "{body}");
    // The service on host b sees the CLI holder of host a in the owner's status.
    let r = c.send(&Request::get("/api/v1/locks/conv10")).unwrap();
    let st = r.json_or_null();
    let lock = st["locks"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["field"] == "messages"))
        .cloned()
        .unwrap_or_else(|| panic!("{st}"));
    assert_eq!(lock["state"], "held", "{lock}");
    hold.signal(libc::SIGTERM);
    assert_eq!(
        hold.wait_exit(Duration::from_secs(20)),
        0,
        "{}",
        hold.stderr_text()
    );
    let (status, body) = acquire(&mut c, 5_000);
    assert_eq!(status, 200, "{body}");
    assert!(body["token"].as_i64().unwrap() > held["token"].as_i64().unwrap_or(0));
}

//! Crash-safety of clearing: a process killed between a clear's filesystem step and its
//! commit leaves a state that reconciliation repairs, with a `reconciled` event, and every
//! grant is closed exactly once afterwards.
//!
//! The fault point is armed with `LOCKLEDGER_FAULT=clear_after_fs_step`: the process
//! SIGKILLs itself there (see `fault_point` in src/registry.rs).

use lockledger_harness::{flock_is_free, lock_in, wait_for, Output, Request, Server, ServerOpts};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_lockledger");
const ADMIN: &str = "crash-admin-token";
/// Upper bound for one CLI command, and for a process to exit after a fault point.
const CMD_TIMEOUT: Duration = Duration::from_secs(20);

fn lockledger(storage: &Path, args: &[&str], fault: bool) -> Output {
    let mut cmd = lockledger_harness::lockledger(Path::new(BIN), storage, args);
    if fault {
        cmd.env("LOCKLEDGER_FAULT", "clear_after_fs_step");
    }
    lockledger_harness::run(cmd, CMD_TIMEOUT)
}

fn sql_count(storage: &Path, sql: &str) -> i64 {
    let out = lockledger(storage, &["sql", sql, "--json"], false);
    assert!(out.status.success(), "{}", out.stderr);
    out.json()["rows"][0][0].as_i64().unwrap()
}

fn lock_state(storage: &Path, owner: &str, field: &str) -> (String, Option<String>) {
    let out = lockledger(storage, &["status", owner, "--json"], false);
    assert!(out.status.success(), "{}", out.stderr);
    let lock = lock_in(&out.json(), field);
    (
        lock["state"].as_str().unwrap().to_string(),
        lock["stale_reason"].as_str().map(str::to_string),
    )
}

/// Every `acquired` grant closed exactly once, and no closing event without its grant.
fn assert_every_grant_closed_once(storage: &Path) {
    let bad = sql_count(
        storage,
        "SELECT count(*) FROM (SELECT lock_id, token, sum(event = 'acquired') AS a,
             sum(event IN ('released','expired','cleared','force_cleared','reconciled')) AS c
           FROM lock_events WHERE event IN ('acquired','released','expired','cleared','force_cleared','reconciled')
           GROUP BY lock_id, token) WHERE a != 1 OR c != 1",
    );
    assert_eq!(bad, 0, "some grant is not closed exactly once");
}

#[test]
fn a_cli_clear_killed_before_its_commit_is_repaired_by_reconciliation() {
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("storage");
    let mut holder = lockledger_harness::Proc::spawn(
        lockledger_harness::lockledger(
            Path::new(BIN),
            &storage,
            &["hold", "c1", "messages", "--operation", "send_message"],
        ),
        "hold c1 messages",
    );
    let line = holder.line(CMD_TIMEOUT).unwrap_or_else(|| {
        panic!(
            "hold printed no line within {CMD_TIMEOUT:?}; stderr: {}",
            holder.stderr_text()
        )
    });
    assert!(line.contains("\"held\""), "{line}");
    holder.kill();
    assert_eq!(
        lock_state(&storage, "c1", "messages"),
        ("stale".into(), Some("holder_dead".into()))
    );

    let crashed = lockledger(&storage, &["clear", "c1"], true);
    assert_eq!(
        crashed.status.signal(),
        Some(libc::SIGKILL),
        "the clear must die at the fault point"
    );
    // Rolled back: the record is still there, no clear was recorded.
    assert_eq!(sql_count(&storage, "SELECT count(*) FROM holders"), 1);
    assert_eq!(
        sql_count(
            &storage,
            "SELECT count(*) FROM lock_events WHERE event = 'cleared'"
        ),
        0
    );
    assert_eq!(lock_state(&storage, "c1", "messages").0, "stale");

    let fixed = lockledger(&storage, &["reconcile", "--json"], false);
    assert!(fixed.status.success());
    let report = fixed.json();
    assert_eq!(report["reconciled"], serde_json::json!(["c1/messages"]));
    assert_eq!(
        lock_state(&storage, "c1", "messages"),
        ("free".into(), None)
    );
    assert_eq!(
        sql_count(
            &storage,
            "SELECT count(*) FROM lock_events WHERE event = 'reconciled'"
        ),
        1
    );
    let again = lockledger(&storage, &["reconcile", "--json"], false);
    let report = again.json();
    assert_eq!(
        report["reconciled"],
        serde_json::json!([]),
        "reconciliation is idempotent"
    );
    assert_every_grant_closed_once(&storage);
}

/// The service with fast upkeep and no automatic expiry; with `fault`, it SIGKILLs itself
/// between a clear's filesystem step and its commit.
fn start_service(storage: &Path, fault: bool) -> Server {
    let mut opts = ServerOpts::default()
        .args(&["--admin-token", ADMIN])
        .env("LOCKLEDGER_AUTO_EXPIRE", "0")
        .env("LOCKLEDGER_REAPER_PERIOD_MS", "50")
        .env("RUST_LOG", "error");
    if fault {
        opts = opts.env("LOCKLEDGER_FAULT", "clear_after_fs_step");
    }
    Server::start(Path::new(BIN), storage, &opts)
}

/// One admin request on its own connection; None when the connection died.
fn request(svc: &Server, method: &str, path: &str, body: &str) -> Option<(u16, serde_json::Value)> {
    let r = Request::new(method, path)
        .json_text(body)
        .bearer(ADMIN)
        .timeout(Duration::from_secs(10))
        .try_send(svc.port)
        .ok()?;
    Some((r.status, r.json_or_null()))
}

/// The service's exit after it killed itself at the fault point (bounded).
fn fault_exit(svc: &mut Server) -> std::process::ExitStatus {
    svc.wait_exit(CMD_TIMEOUT).unwrap_or_else(|| {
        panic!(
            "the service did not die within {CMD_TIMEOUT:?}; stderr: {}",
            svc.stderr()
        )
    })
}

#[test]
fn a_service_killed_between_closing_a_lease_and_committing_recovers_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("storage");
    let mut svc = start_service(&storage, true);
    let (status, grant) = request(
        &svc,
        "POST",
        "/api/v1/locks/c2/messages/acquire",
        r#"{"holder":"t","operation":"stream","ttl_ms":200}"#,
    )
    .unwrap();
    assert_eq!(status, 200, "{grant}");
    let token = grant["token"].as_i64().unwrap();
    wait_for(Duration::from_secs(10), "the lease to expire", || {
        let (_, v) = request(&svc, "GET", "/api/v1/locks/c2", "").unwrap();
        v["locks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["stale_reason"] == "lease_expired")
            .then_some(())
    });

    // The clear closes the lease's handle (the filesystem step), then the service dies.
    let answer = request(&svc, "POST", "/api/v1/locks/c2/clear", "{}");
    assert!(
        answer.is_none(),
        "the service must die before answering: {answer:?}"
    );
    let exit = fault_exit(&mut svc);
    assert_eq!(exit.signal(), Some(libc::SIGKILL));
    let lock_file = storage.join("locks").join("c2_messages.lock");
    assert!(
        flock_is_free(&lock_file),
        "the handle was closed and the process is gone"
    );
    assert_eq!(
        sql_count(&storage, "SELECT count(*) FROM holders"),
        1,
        "the clear was not committed"
    );
    assert_eq!(
        sql_count(
            &storage,
            "SELECT count(*) FROM lock_events WHERE event = 'cleared'"
        ),
        0
    );

    // Restart: start-up reconciliation repairs the record.
    let svc = start_service(&storage, false);
    let (_, v) = request(&svc, "GET", "/api/v1/locks/c2", "").unwrap();
    let lock = lock_in(&v, "messages");
    assert_eq!(lock["state"], "free", "{lock}");
    let (_, h) = request(&svc, "GET", "/api/v1/history?owner=c2&field=messages", "").unwrap();
    let events: Vec<&str> = h["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["reconciled", "acquired"]);
    assert_eq!(h["events"][0]["token"].as_i64(), Some(token));
    assert!(h["events"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("holder_dead"));
    // The lock works again, with a newer token.
    let (status, g2) = request(
        &svc,
        "POST",
        "/api/v1/locks/c2/messages/acquire",
        r#"{"holder":"t","operation":"again"}"#,
    )
    .unwrap();
    assert_eq!(status, 200);
    assert!(g2["token"].as_i64().unwrap() > token);
    drop(svc); // SIGKILL with that lease held: one more record for reconciliation.
    assert!(lockledger(&storage, &["reconcile"], false).status.success());
    assert_every_grant_closed_once(&storage);
}

#[test]
fn a_force_clear_killed_before_its_commit_is_repaired_too() {
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("storage");
    let mut svc = start_service(&storage, true);
    let (_, grant) = request(
        &svc,
        "POST",
        "/api/v1/locks/c3/all/acquire",
        r#"{"holder":"t","operation":"stream","ttl_ms":60000}"#,
    )
    .unwrap();
    let token = grant["token"].as_i64().unwrap();
    let body = format!(r#"{{"field":"all","token":{token},"reason":"crash test"}}"#);
    assert!(request(&svc, "POST", "/api/v1/locks/c3/force-clear", &body).is_none());
    assert_eq!(fault_exit(&mut svc).signal(), Some(libc::SIGKILL));
    assert_eq!(
        sql_count(
            &storage,
            "SELECT count(*) FROM lock_events WHERE event = 'force_cleared'"
        ),
        0
    );
    let out = lockledger(&storage, &["reconcile", "--json"], false);
    let report = out.json();
    assert_eq!(report["reconciled"], serde_json::json!(["c3/all"]));
    assert_eq!(lock_state(&storage, "c3", "all"), ("free".into(), None));
    assert_every_grant_closed_once(&storage);
}

//! Crash-safety of clearing: a process killed between a clear's filesystem step and its
//! commit leaves a state that reconciliation repairs, with a `reconciled` event, and every
//! grant is closed exactly once afterwards.
//!
//! The fault point is armed with `LOCKLEDGER_FAULT=clear_after_fs_step`: the process
//! SIGKILLs itself there (see `fault_point` in src/registry.rs).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod support;
use support::{flock_is_free, lock_in};

const BIN: &str = env!("CARGO_BIN_EXE_lockledger");

fn lockledger(storage: &Path, args: &[&str], fault: bool) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("--storage").arg(storage).args(args);
    cmd.env_remove("LOCKLEDGER_FAULT").env_remove("RUST_LOG");
    if fault {
        cmd.env("LOCKLEDGER_FAULT", "clear_after_fs_step");
    }
    cmd.output().expect("run lockledger")
}

fn sql_count(storage: &Path, sql: &str) -> i64 {
    let out = lockledger(storage, &["sql", sql, "--json"], false);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["rows"][0][0].as_i64().unwrap()
}

fn lock_state(storage: &Path, owner: &str, field: &str) -> (String, Option<String>) {
    let out = lockledger(storage, &["status", owner, "--json"], false);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let lock = lock_in(&v, field);
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

fn wait_for(what: &str, deadline: Duration, mut check: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !check() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn a_cli_clear_killed_before_its_commit_is_repaired_by_reconciliation() {
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("storage");
    let mut holder = Command::new(BIN)
        .arg("--storage")
        .arg(&storage)
        .args(["hold", "c1", "messages", "--operation", "send_message"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("\"held\""), "{line}");
    holder.kill().unwrap();
    holder.wait().unwrap();
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
    let report: serde_json::Value = serde_json::from_slice(&fixed.stdout).unwrap();
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
    let report: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(
        report["reconciled"],
        serde_json::json!([]),
        "reconciliation is idempotent"
    );
    assert_every_grant_closed_once(&storage);
}

struct Service {
    child: Child,
    port: u16,
}

impl Service {
    fn start(storage: &Path, fault: bool) -> Service {
        let mut cmd = Command::new(BIN);
        cmd.arg("--storage")
            .arg(storage)
            .args([
                "serve",
                "--bind",
                "127.0.0.1:0",
                "--admin-token",
                "crash-admin-token",
            ])
            .env("LOCKLEDGER_AUTO_EXPIRE", "0")
            .env("LOCKLEDGER_REAPER_PERIOD_MS", "50")
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped());
        if fault {
            cmd.env("LOCKLEDGER_FAULT", "clear_after_fs_step");
        } else {
            cmd.env_remove("LOCKLEDGER_FAULT");
        }
        let mut child = cmd.spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect(&line);
        Service { child, port }
    }

    /// One request on its own connection; None when the connection died.
    fn request(&self, method: &str, path: &str, body: &str) -> Option<(u16, serde_json::Value)> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\nContent-Type: application/json\r\nAuthorization: Bearer crash-admin-token\r\nContent-Length: {}\r\n\r\n{body}",
            self.port,
            body.len()
        )
        .ok()?;
        let mut raw = String::new();
        s.read_to_string(&mut raw).ok()?;
        let status = raw.split_whitespace().nth(1)?.parse().ok()?;
        let body = raw.split_once("\r\n\r\n")?.1;
        let json = body
            .find('{')
            .map(|i| &body[i..body.rfind('}').unwrap_or(body.len() - 1) + 1]);
        Some((
            status,
            json.and_then(|j| serde_json::from_str(j).ok())
                .unwrap_or_default(),
        ))
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_service_killed_between_closing_a_lease_and_committing_recovers_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("storage");
    let mut svc = Service::start(&storage, true);
    let (status, grant) = svc
        .request(
            "POST",
            "/api/v1/locks/c2/messages/acquire",
            r#"{"holder":"t","operation":"stream","ttl_ms":200}"#,
        )
        .unwrap();
    assert_eq!(status, 200, "{grant}");
    let token = grant["token"].as_i64().unwrap();
    wait_for("the lease to expire", Duration::from_secs(10), || {
        let (_, v) = svc.request("GET", "/api/v1/locks/c2", "").unwrap();
        v["locks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["stale_reason"] == "lease_expired")
    });

    // The clear closes the lease's handle (the filesystem step), then the service dies.
    let answer = svc.request("POST", "/api/v1/locks/c2/clear", "{}");
    assert!(
        answer.is_none(),
        "the service must die before answering: {answer:?}"
    );
    let exit = svc.child.wait().unwrap();
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
    let svc = Service::start(&storage, false);
    let (_, v) = svc.request("GET", "/api/v1/locks/c2", "").unwrap();
    let lock = lock_in(&v, "messages");
    assert_eq!(lock["state"], "free", "{lock}");
    let (_, h) = svc
        .request("GET", "/api/v1/history?owner=c2&field=messages", "")
        .unwrap();
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
    let (status, g2) = svc
        .request(
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
    let mut svc = Service::start(&storage, true);
    let (_, grant) = svc
        .request(
            "POST",
            "/api/v1/locks/c3/all/acquire",
            r#"{"holder":"t","operation":"stream","ttl_ms":60000}"#,
        )
        .unwrap();
    let token = grant["token"].as_i64().unwrap();
    let body = format!(r#"{{"field":"all","token":{token},"reason":"crash test"}}"#);
    assert!(svc
        .request("POST", "/api/v1/locks/c3/force-clear", &body)
        .is_none());
    assert_eq!(svc.child.wait().unwrap().signal(), Some(libc::SIGKILL));
    assert_eq!(
        sql_count(
            &storage,
            "SELECT count(*) FROM lock_events WHERE event = 'force_cleared'"
        ),
        0
    );
    let out = lockledger(&storage, &["reconcile", "--json"], false);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["reconciled"], serde_json::json!(["c3/all"]));
    assert_eq!(lock_state(&storage, "c3", "all"), ("free".into(), None));
    assert_every_grant_closed_once(&storage);
}

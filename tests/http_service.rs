//! HTTP integration tests of `lockledger serve`: the real binary on port 0 in a temporary
//! storage directory, spoken to by the harness's HTTP/1.1 client (`lockledger-harness`,
//! `tests/support`), which can also send the malformed requests these tests need.
//!
//! Every server is killed on drop, every wait is bounded by a deadline, and every request
//! has read and write timeouts, so a failing test never hangs or leaves a process behind.

use lockledger_harness::http::{short, IO_TIMEOUT};
use lockledger_harness::{
    event_names, flock_is_free, lock_in, wait_for, ChildGuard, Conn, Request as Req,
    Response as Resp, ServerOpts,
};
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashSet};
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_lockledger");
/// Upper bound for a process to exit after it was told to (or failed to start).
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

const USER: &str = "user-token-0123456789";
const ADMIN: &str = "admin-token-0123456789";

// ------------------------------------------------------------------ the server

/// How to start one server.
#[derive(Debug, Clone, Default)]
struct Opts {
    bind: Option<String>,
    token: Option<String>,
    admin_token: Option<String>,
    env: Vec<(String, String)>,
}

impl Opts {
    fn env(mut self, key: &str, value: &str) -> Opts {
        self.env.push((key.to_string(), value.to_string()));
        self
    }
    fn tokens(mut self) -> Opts {
        self.token = Some(USER.to_string());
        self.admin_token = Some(ADMIN.to_string());
        self
    }
}

/// `lockledger --storage STORAGE ARGS...` with a clean `LOCKLEDGER_*` environment.
fn lockledger(storage: &Path, args: &[&str]) -> Command {
    lockledger_harness::lockledger(Path::new(BIN), storage, args)
}

/// With `LOCKLEDGER_TEST_POSTGRES=1` (the test script's second run of this suite), each
/// server gets a fresh database of the harness's throwaway PostgreSQL cluster: the same
/// API tests then run against the PostgreSQL backend.
fn postgres_mode() -> bool {
    std::env::var("LOCKLEDGER_TEST_POSTGRES").ok().as_deref() == Some("1")
}

fn postgres_database(storage: &Path) -> Option<String> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static DATABASES: Mutex<Option<HashMap<PathBuf, String>>> = Mutex::new(None);
    if !postgres_mode() {
        return None;
    }
    let mut dbs = DATABASES.lock().unwrap_or_else(|p| p.into_inner());
    let dbs = dbs.get_or_insert_with(HashMap::new);
    // A restart on the same storage finds the same database, as a host would.
    if let Some(url) = dbs.get(storage) {
        return Some(url.clone());
    }
    let cluster = lockledger_harness::PgCluster::shared().unwrap_or_else(|e| panic!("{e}"));
    let name = format!("api_{}_{}", std::process::id(), dbs.len());
    let url = cluster
        .create_database(&name)
        .unwrap_or_else(|e| panic!("{e}"));
    dbs.insert(storage.to_path_buf(), url.clone());
    Some(url)
}

/// A running `lockledger serve` (the harness's, killed on drop) and the tokens to speak
/// to it with.
struct Server {
    inner: lockledger_harness::Server,
    port: u16,
    admin: String,
    user: Option<String>,
}

impl Server {
    fn start(storage: &Path, opts: &Opts) -> Server {
        let mut so = ServerOpts::default();
        if let Some(bind) = &opts.bind {
            so = so.bind(bind);
        }
        if let Some(t) = &opts.token {
            so = so.args(&["--token", t]);
        }
        if let Some(t) = &opts.admin_token {
            so = so.args(&["--admin-token", t]);
        }
        for (k, v) in &opts.env {
            so = so.env(k, v);
        }
        let url;
        if let Some(db) = postgres_database(storage) {
            url = db;
            so = so.args(&["--database", &url]);
        }
        let inner = lockledger_harness::Server::start(Path::new(BIN), storage, &so);
        let admin = match &opts.admin_token {
            Some(t) => t.clone(),
            None => {
                let text = std::fs::read_to_string(storage.join("admin-token"))
                    .expect("a generated STORAGE/admin-token");
                let admin = text.trim().to_string();
                assert!(admin.len() >= 32, "generated admin token {admin:?}");
                admin
            }
        };
        Server {
            port: inner.port,
            inner,
            admin,
            user: opts.token.clone(),
        }
    }

    fn stderr(&self) -> String {
        self.inner.stderr()
    }

    /// Sends SIGTERM and waits (bounded) for the exit.
    fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.inner.terminate(timeout)
    }

    /// SIGKILL and reap.
    fn kill9(&mut self) {
        self.inner.kill9();
    }

    fn with_user(&self, req: Req) -> Req {
        match &self.user {
            Some(t) => req.token(t),
            None => req,
        }
    }

    fn send(&self, req: Req) -> Resp {
        req.send(self.port)
    }

    fn get(&self, path: &str) -> Resp {
        self.send(self.with_user(Req::get(path)))
    }

    fn post(&self, path: &str, body: &Value) -> Resp {
        self.send(self.with_user(Req::post(path).json(body)))
    }

    fn post_admin(&self, path: &str, body: &Value) -> Resp {
        self.send(Req::post(path).json(body).bearer(&self.admin))
    }

    fn acquire(&self, owner: &str, field: &str, body: &Value) -> Resp {
        self.post(&format!("/api/v1/locks/{owner}/{field}/acquire"), body)
    }

    /// An acquire that must succeed at once.
    fn lease(&self, owner: &str, field: &str, holder: &str, ttl_ms: u64) -> Lease {
        let body = json!({"holder": holder, "operation": format!("{holder}-op"), "ttl_ms": ttl_ms});
        Lease::from(self.acquire(owner, field, &body))
    }

    /// Renew with the `X-Lockledger-Client` header and no body (the other CSRF branch).
    fn renew(&self, lease_id: &str) -> Resp {
        self.send(
            self.with_user(
                Req::post(&format!("/api/v1/leases/{lease_id}/renew"))
                    .header("X-Lockledger-Client", "http-test"),
            ),
        )
    }

    fn release(&self, lease_id: &str) -> Resp {
        self.send(
            self.with_user(
                Req::delete(&format!("/api/v1/leases/{lease_id}"))
                    .header("X-Lockledger-Client", "http-test"),
            ),
        )
    }

    /// The per-lock object of `field` in `GET /api/v1/locks/{owner}`.
    fn lock(&self, owner: &str, field: &str) -> Value {
        let r = self.get(&format!("/api/v1/locks/{owner}"));
        assert_eq!(r.status, 200, "status of {owner}: {}", r.text());
        let v = r.json();
        let want = if field == "main" { "" } else { field };
        lock_in(&v, want)
    }

    /// History of one owner, oldest first.
    fn history(&self, owner: &str) -> Vec<Value> {
        let r = self.get(&format!("/api/v1/history?owner={owner}&limit=1000"));
        assert_eq!(r.status, 200, "history of {owner}: {}", r.text());
        let mut events = r.json()["events"]
            .as_array()
            .unwrap_or_else(|| panic!("no events array: {}", r.text()))
            .clone();
        events.reverse();
        events
    }

    /// A one-row, one-column admin SQL query.
    fn sql_i64(&self, sql: &str) -> i64 {
        let r = self.post_admin("/api/v1/sql", &json!({ "sql": sql }));
        assert_eq!(r.status, 200, "sql {sql:?}: {}", r.text());
        let v = r.json();
        v["rows"][0][0]
            .as_i64()
            .unwrap_or_else(|| panic!("sql {sql:?}: no integer in {v}"))
    }

    fn fence(&self, owner: &str, field: &str, token: i64) -> Value {
        let r = self.post(
            "/api/v1/fence/check",
            &json!({"owner": owner, "field": field, "token": token}),
        );
        assert_eq!(r.status, 200, "fence check: {}", r.text());
        r.json()
    }
}

/// A granted lease.
#[derive(Debug, Clone)]
struct Lease {
    id: String,
    token: i64,
    expires_at: String,
}

impl From<Resp> for Lease {
    fn from(r: Resp) -> Lease {
        assert_eq!(r.status, 200, "acquire: {}", r.text());
        let v = r.json();
        Lease {
            id: v["lease_id"]
                .as_str()
                .unwrap_or_else(|| panic!("no lease_id: {v}"))
                .to_string(),
            token: v["token"]
                .as_i64()
                .unwrap_or_else(|| panic!("no token: {v}")),
            expires_at: v["expires_at"]
                .as_str()
                .unwrap_or_else(|| panic!("no expires_at: {v}"))
                .to_string(),
        }
    }
}

// ------------------------------------------------------------------ small helpers

fn storage_in(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("storage")
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// RFC 3339 → UTC milliseconds.
fn ms_of(rfc3339: &str) -> i64 {
    let t = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{rfc3339:?} is not RFC 3339: {e}"));
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// Every file below `root`, relative, except the database's own files.
fn files_below(root: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let name = e.file_name().to_string_lossy().into_owned();
                if !name.starts_with("registry.db") {
                    out.insert(p.strip_prefix(root).unwrap().display().to_string());
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, root, &mut out);
    out
}

/// Runs a command that must exit by itself (bounded); returns (exit code, stdout,
/// stderr).
fn run_to_exit(cmd: Command) -> (Option<i32>, String, String) {
    let out = lockledger_harness::run(cmd, EXIT_TIMEOUT);
    (out.status.code(), out.stdout, out.stderr)
}

// ------------------------------------------------------------------ 1. legacy routes

const LOCK_KEYS: [&str; 12] = [
    "field",
    "file",
    "state",
    "stale_reason",
    "kind",
    "holder",
    "operation",
    "pid",
    "host",
    "acquired_at",
    "age_s",
    "token",
];

fn check_legacy_status(v: &Value, owner: &str) {
    assert_eq!(
        keys(v),
        set(&[
            "conversation_id",
            "locks_status",
            "any_locked",
            "stale_locks",
            "can_cleanup",
            "locks"
        ]),
        "legacy status keys: {v}"
    );
    assert_eq!(v["conversation_id"], owner);
    let fields = [
        "",
        "all",
        "message_operations",
        "memory",
        "messages",
        "uploaded_documents_list",
        "artefacts",
    ];
    assert_eq!(keys(&v["locks_status"]), set(&fields), "locks_status: {v}");
    for (k, b) in v["locks_status"].as_object().unwrap() {
        assert!(b.is_boolean(), "locks_status[{k:?}] is not a bool: {v}");
    }
    assert!(v["any_locked"].is_boolean(), "{v}");
    assert!(v["can_cleanup"].is_boolean(), "{v}");
    assert!(v["stale_locks"].is_array(), "{v}");
    let locks = v["locks"].as_array().expect("locks array");
    assert_eq!(locks.len(), 7, "one entry per field: {v}");
    for l in locks {
        for k in LOCK_KEYS {
            assert!(l.get(k).is_some(), "lock entry without {k:?}: {l}");
        }
        let field = l["field"].as_str().expect("field");
        assert!(fields.contains(&field), "unknown field {field:?}");
        let file = l["file"].as_str().expect("file");
        assert_eq!(file, format!("{owner}_{field}.lock"), "{l}");
        assert!(
            !file.contains('/') && !file.contains('\\'),
            "not bare: {file}"
        );
        assert_eq!(
            v["locks_status"][field].as_bool(),
            Some(l["state"] != "free"),
            "locks_status disagrees with locks for {field:?}: {v}"
        );
    }
}

#[test]
fn legacy_routes_keep_their_exact_keys() {
    let dir = tempfile::tempdir().unwrap();
    let storage = storage_in(&dir);
    let srv = Server::start(&storage, &Opts::default()); // admin token generated
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(storage.join("admin-token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "admin-token mode {mode:o}");
    }

    let r = srv.get("/get_lock_status/c1");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r
        .header("content-type")
        .unwrap_or("")
        .starts_with("application/json"));
    let v = r.json();
    check_legacy_status(&v, "c1");
    assert_eq!(v["any_locked"], false, "{v}");
    assert_eq!(v["can_cleanup"], false, "{v}");
    assert_eq!(v["stale_locks"], json!([]), "{v}");
    for l in v["locks"].as_array().unwrap() {
        assert_eq!(l["state"], "free", "{l}");
        assert_eq!(l["token"], Value::Null, "{l}");
    }
    assert!(
        files_below(&storage.join("locks")).is_empty(),
        "a status read created lock files: {:?}",
        files_below(&storage.join("locks"))
    );

    // A held lock shows in every part of the legacy answer.
    let lease = srv.lease("c1", "messages", "legacy-client", 30_000);
    let v = srv.get("/get_lock_status/c1").json();
    check_legacy_status(&v, "c1");
    assert_eq!(v["any_locked"], true, "{v}");
    assert_eq!(v["locks_status"]["messages"], true, "{v}");
    assert_eq!(v["locks_status"][""], false, "{v}");
    assert_eq!(
        v["can_cleanup"], false,
        "a live lease is not clearable: {v}"
    );
    let held = lock_in(&v, "messages");
    assert_eq!(held["state"], "held", "{held}");
    assert_eq!(held["stale_reason"], Value::Null, "{held}");
    assert_eq!(held["kind"], "lease", "{held}");
    assert_eq!(held["holder"], "legacy-client", "{held}");
    assert_eq!(held["operation"], "legacy-client-op", "{held}");
    assert_eq!(held["token"], lease.token, "{held}");
    assert!(held["host"].is_string(), "{held}");
    assert!(held["acquired_at"].is_string(), "{held}");
    assert!(held["age_s"].as_f64().is_some_and(|a| a >= 0.0), "{held}");
    assert_eq!(
        files_below(&storage.join("locks")),
        set(&["c1_messages.lock"]),
        "only the acquired lock has a file"
    );

    // Safe clear, exactly as the chat app sends it: JSON content type, empty body.
    let r = srv.send(Req::post("/ensure_locks_cleared/c1").empty_json());
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    // The keys the chat app reads, plus the per-lock outcomes the widget shows.
    assert_eq!(
        keys(&v),
        set(&["success", "cleared", "skipped", "message", "outcomes"]),
        "{v}"
    );
    // Something is still held: not a success, and the message says who holds what and
    // what frees it (the front end prints it only when success is false).
    assert_eq!(v["success"], false, "{v}");
    let message = v["message"].as_str().expect("message");
    assert!(
        message.contains("messages is held by legacy-client"),
        "{message}"
    );
    assert!(message.contains("frees when"), "{message}");
    assert!(!message.contains(['<', '>', '&', '"']), "{message}");
    assert_eq!(
        v["cleared"],
        json!([]),
        "a live lease is never cleared: {v}"
    );
    let skipped = v["skipped"].as_array().expect("skipped");
    assert_eq!(skipped.len(), 1, "{v}");
    assert_eq!(skipped[0]["field"], "messages", "{v}");
    assert!(
        skipped[0]["reason"].as_str().is_some_and(|s| !s.is_empty()),
        "{v}"
    );
    assert!(v["message"].is_string(), "{v}");
    assert_eq!(srv.lock("c1", "messages")["state"], "held");

    // Force clear: admin only, and only with the tokens shown.
    let r = srv.send(Req::post("/force_clear_locks/c1").empty_json());
    assert!(
        r.status == 401 || r.status == 403,
        "force clear without the admin token: {} {}",
        r.status,
        r.text()
    );
    let r = srv.send(
        Req::post("/force_clear_locks/c1")
            .json(&json!({"tokens": {"messages": lease.token}}))
            .token(USER),
    );
    assert!(
        r.status == 401 || r.status == 403,
        "{} {}",
        r.status,
        r.text()
    );
    let r = srv.send(
        Req::post("/force_clear_locks/c1")
            .empty_json()
            .bearer(&srv.admin),
    );
    assert_eq!(r.status, 400, "force clear without tokens: {}", r.text());
    assert!(r.json()["error"]["message"].is_string());
    assert_eq!(srv.lock("c1", "messages")["state"], "held");
    let r = srv.send(
        Req::post("/force_clear_locks/c1")
            .json(&json!({"tokens": {"messages": lease.token}, "reason": "legacy test"}))
            .bearer(&srv.admin),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    for k in ["success", "cleared", "warning"] {
        assert!(v.get(k).is_some(), "force clear answer without {k:?}: {v}");
    }
    assert_eq!(v["success"], true, "{v}");
    assert_eq!(v["cleared"], json!(["c1_messages.lock"]), "{v}");
    assert!(v["warning"].is_string(), "{v}");
    assert_eq!(srv.lock("c1", "messages")["state"], "free");
    let v = srv.get("/get_lock_status/c1").json();
    assert_eq!(v["any_locked"], false, "{v}");
    assert!(
        storage.join("locks/c1_messages.lock").exists(),
        "lock files are never deleted"
    );
}

// ------------------------------------------------------------------ 2. lease lifecycle

#[test]
fn lease_acquire_renew_release_and_history() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(&storage_in(&dir), &Opts::default());

    let r = srv.acquire(
        "c2",
        "messages",
        &json!({"holder": "client-A", "operation": "send_message", "ttl_ms": 5000}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    for k in ["lease_id", "token", "expires_at"] {
        assert!(v.get(k).is_some(), "acquire answer without {k:?}: {v}");
    }
    let a = Lease::from(r);
    assert_eq!(a.id.len(), 32, "lease id {:?}", a.id);
    assert!(a.token > 0, "token {}", a.token);
    let now_ms = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    let left = ms_of(&a.expires_at) - now_ms as i64;
    assert!(
        (3000..=6000).contains(&left),
        "expires_at {} is {left} ms away, wanted ~5000",
        a.expires_at
    );

    let l = srv.lock("c2", "messages");
    assert_eq!(l["state"], "held", "{l}");
    assert_eq!(l["kind"], "lease", "{l}");
    assert_eq!(l["holder"], "client-A", "{l}");
    assert_eq!(l["operation"], "send_message", "{l}");
    assert_eq!(l["token"], a.token, "{l}");

    // A second client waits 200 ms, then gets 409 naming the holder.
    let t = Instant::now();
    let r = srv.acquire(
        "c2",
        "messages",
        &json!({"holder": "client-B", "operation": "edit", "wait_ms": 200}),
    );
    let waited = t.elapsed();
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.error_code(), "busy", "{}", r.text());
    let v = r.json();
    assert!(v["error"]["message"].is_string(), "{v}");
    assert!(v["holder"].is_object(), "409 without a holder object: {v}");
    assert_eq!(v["holder"]["operation"], "send_message", "{v}");
    assert_eq!(v["holder"]["holder"], "client-A", "{v}");
    assert!(
        waited >= Duration::from_millis(190),
        "gave up after {waited:?}"
    );

    // Renew extends the lease.
    thread::sleep(Duration::from_millis(30));
    let r = srv.renew(&a.id);
    assert_eq!(r.status, 200, "{}", r.text());
    let renewed = r.json()["expires_at"]
        .as_str()
        .expect("expires_at")
        .to_string();
    assert!(
        ms_of(&renewed) > ms_of(&a.expires_at),
        "renewed expires_at {renewed} is not after {}",
        a.expires_at
    );

    let r = srv.release(&a.id);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(srv.lock("c2", "messages")["state"], "free");

    let events = srv.history("c2");
    let main: Vec<&Value> = events.iter().filter(|e| e["event"] != "renewed").collect();
    assert_eq!(
        main.iter()
            .map(|e| e["event"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["acquired", "wait_timeout", "released"],
        "history: {events:?}"
    );
    assert_eq!(main[0]["token"], a.token);
    assert_eq!(main[0]["holder"], "client-A");
    assert_eq!(main[1]["holder"], "client-B");
    assert_eq!(main[2]["token"], a.token);
    assert!(
        main[2]["held_ms"].as_i64().is_some_and(|ms| ms >= 200),
        "released without a plausible held_ms: {}",
        main[2]
    );

    // A released lease cannot be renewed or released again.
    let r = srv.renew(&a.id);
    assert_eq!(r.status, 410, "{}", r.text());
    assert_eq!(r.error_code(), "lease_gone");
    let r = srv.release(&a.id);
    assert!((400..500).contains(&r.status), "{} {}", r.status, r.text());

    let b = srv.lease("c2", "messages", "client-B", 5000);
    assert!(b.token > a.token, "token {} after {}", b.token, a.token);
    assert_ne!(b.id, a.id);
}

// ------------------------------------------------------------------ 3. expiry

#[test]
fn expired_lease_stays_stale_without_auto_expire_until_cleared() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Opts::default()
        .env("LOCKLEDGER_AUTO_EXPIRE", "0")
        .env("LOCKLEDGER_REAPER_PERIOD_MS", "100");
    let srv = Server::start(&storage_in(&dir), &opts);

    let lease = srv.lease("c3", "messages", "sleepy", 1000);
    assert_eq!(srv.lock("c3", "messages")["state"], "held");
    let l = wait_for(Duration::from_secs(4), "c3/messages turning stale", || {
        let l = srv.lock("c3", "messages");
        (l["state"] == "stale").then_some(l)
    });
    assert_eq!(l["stale_reason"], "lease_expired", "{l}");
    assert_eq!(l["token"], lease.token, "{l}");
    assert_eq!(l["clearable"], true, "{l}");
    let legacy = srv.get("/get_lock_status/c3").json();
    assert_eq!(
        legacy["stale_locks"],
        json!(["c3_messages.lock"]),
        "{legacy}"
    );
    assert_eq!(legacy["can_cleanup"], true, "{legacy}");
    assert_eq!(legacy["locks_status"]["messages"], true, "{legacy}");
    // Without automatic expiry the reaper (every 100 ms) leaves it alone.
    thread::sleep(Duration::from_millis(400));
    let l = srv.lock("c3", "messages");
    assert_eq!(l["state"], "stale", "auto expiry is off: {l}");
    assert!(
        !event_names(&srv.history("c3")).contains(&"expired".to_string()),
        "expired although LOCKLEDGER_AUTO_EXPIRE=0"
    );

    let r = srv.send(Req::post("/api/v1/locks/c3/clear").empty_json());
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let cleared = v["cleared"].as_array().expect("cleared");
    assert_eq!(cleared.len(), 1, "{v}");
    assert_eq!(cleared[0]["field"], "messages", "{v}");
    assert_eq!(cleared[0]["reason"], "lease_expired", "{v}");
    assert_eq!(v["skipped"], json!([]), "{v}");

    assert_eq!(srv.lock("c3", "messages")["state"], "free");
    let r = srv.renew(&lease.id);
    assert_eq!(r.status, 410, "renew after clear: {}", r.text());
    let events = srv.history("c3");
    let cleared = events
        .iter()
        .find(|e| e["event"] == "cleared")
        .unwrap_or_else(|| panic!("no cleared event: {events:?}"));
    assert_eq!(cleared["reason"], "lease_expired", "{cleared}");
    assert!(dir.path().join("storage/locks/c3_messages.lock").exists());
    // The service really let go of the flock.
    let next = srv.lease("c3", "messages", "next", 1000);
    assert!(next.token > lease.token);
}

#[test]
fn expired_lease_ends_by_itself_with_auto_expire() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Opts::default().env("LOCKLEDGER_REAPER_PERIOD_MS", "100");
    let srv = Server::start(&storage_in(&dir), &opts);

    let t0 = Instant::now();
    let lease = srv.lease("c3b", "memory", "forgetful", 500);
    let expired = wait_for(Duration::from_secs(5), "an expired event for c3b", || {
        let r = srv.get("/api/v1/history?owner=c3b&event=expired");
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["events"]
            .as_array()
            .and_then(|e| e.first().cloned())
    });
    let took = t0.elapsed();
    assert!(
        took <= Duration::from_millis(1500),
        "a 500 ms lease ended only after {took:?}"
    );
    assert_eq!(expired["token"], lease.token, "{expired}");
    assert!(
        expired["reason"]
            .as_str()
            .is_some_and(|r| r.contains("lease_expired")),
        "{expired}"
    );
    assert_eq!(srv.lock("c3b", "memory")["state"], "free");
    let r = srv.renew(&lease.id);
    assert_eq!(r.status, 410, "renew after expiry: {}", r.text());
    let again = Lease::from(srv.acquire(
        "c3b",
        "memory",
        &json!({"holder": "h", "operation": "o", "wait_ms": 0}),
    ));
    assert!(again.token > lease.token);
}

// ------------------------------------------------------------------ 4. client death

#[test]
fn dead_client_pid_frees_the_lease() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(&storage_in(&dir), &Opts::default());
    let mut client = ChildGuard::spawn(Command::new("sleep").arg("30").stdin(Stdio::null()))
        .expect("spawn sleep");
    let pid = client.pid();
    let lease = Lease::from(srv.acquire(
        "c4",
        "messages",
        &json!({"holder": "sleeper", "operation": "stream", "pid": pid, "ttl_ms": 60_000}),
    ));
    let l = srv.lock("c4", "messages");
    assert_eq!(l["state"], "held", "{l}");
    assert_eq!(l["pid"], pid, "{l}");

    client.kill().expect("SIGKILL the client");
    client.wait().expect("reap the client");
    let killed = Instant::now();
    wait_for(
        Duration::from_secs(5),
        "c4/messages free after its client died",
        || (srv.lock("c4", "messages")["state"] == "free").then_some(()),
    );
    let took = killed.elapsed();
    assert!(
        took <= Duration::from_millis(1500),
        "freed only {took:?} after the client died"
    );
    let events = srv.history("c4");
    let expired = events
        .iter()
        .find(|e| e["event"] == "expired")
        .unwrap_or_else(|| panic!("no expired event: {events:?}"));
    assert_eq!(expired["token"], lease.token, "{expired}");
    assert!(
        expired["reason"]
            .as_str()
            .is_some_and(|r| r.contains("holder_dead")),
        "{expired}"
    );
    assert_eq!(srv.renew(&lease.id).status, 410);
}

// ------------------------------------------------------------------ 5. concurrency

#[derive(Debug)]
struct Section {
    start: Instant,
    end: Instant,
    token: i64,
}

#[test]
fn concurrent_clients_never_overlap() {
    const CLIENTS: usize = 32;
    const ROUNDS: usize = 3;
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(&storage_in(&dir), &Opts::default());
    let counter = dir.path().join("counter.txt");
    std::fs::write(&counter, "0").unwrap();
    let port = srv.port;
    let barrier = Barrier::new(CLIENTS);

    let sections: Vec<Section> = thread::scope(|s| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let (counter, barrier) = (&counter, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    let mut mine = Vec::new();
                    for round in 0..ROUNDS {
                        let body = json!({
                            "holder": format!("client-{i}"),
                            "operation": format!("increment-{round}"),
                            "ttl_ms": 30_000,
                            "wait_ms": 20_000,
                        });
                        let r = Req::post("/api/v1/locks/c5/all/acquire")
                            .json(&body)
                            .send(port);
                        let lease = Lease::from(r);
                        let start = Instant::now();
                        let n: u64 = std::fs::read_to_string(counter)
                            .unwrap()
                            .trim()
                            .parse()
                            .unwrap();
                        thread::sleep(Duration::from_millis(1));
                        std::fs::write(counter, (n + 1).to_string()).unwrap();
                        let end = Instant::now();
                        let r = Req::delete(&format!("/api/v1/leases/{}", lease.id))
                            .header("X-Lockledger-Client", "http-test")
                            .send(port);
                        assert_eq!(r.status, 200, "release: {}", r.text());
                        mine.push(Section {
                            start,
                            end,
                            token: lease.token,
                        });
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a client thread failed"))
            .collect()
    });

    let total = std::fs::read_to_string(&counter).unwrap();
    assert_eq!(total.trim(), (CLIENTS * ROUNDS).to_string(), "lost updates");
    let tokens: HashSet<i64> = sections.iter().map(|s| s.token).collect();
    assert_eq!(tokens.len(), CLIENTS * ROUNDS, "tokens are not distinct");
    let mut sorted = sections;
    sorted.sort_by_key(|s| s.start);
    for w in sorted.windows(2) {
        assert!(
            w[0].token < w[1].token,
            "tokens not increasing in grant order: {} then {}",
            w[0].token,
            w[1].token
        );
        assert!(
            w[0].end <= w[1].start,
            "critical sections overlap (tokens {} and {})",
            w[0].token,
            w[1].token
        );
    }
    let acquired = srv.sql_i64(
        "SELECT count(*) FROM lock_events WHERE owner = 'c5' AND field = 'all' AND event = 'acquired'",
    );
    let released = srv.sql_i64(
        "SELECT count(*) FROM lock_events WHERE owner = 'c5' AND field = 'all' AND event = 'released'",
    );
    assert_eq!((acquired, released), (96, 96));
    assert_eq!(srv.lock("c5", "all")["state"], "free");
}

// ------------------------------------------------------------------ 6. fencing

#[test]
fn force_clear_fences_out_the_old_token() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(&storage_in(&dir), &Opts::default()); // generated admin token
    let a = srv.lease("c6", "messages", "paused-writer", 60_000);

    let f = srv.fence("c6", "messages", a.token);
    assert_eq!(f, json!({"current": true, "newest_token": a.token}));

    let body = json!({"field": "messages", "token": a.token, "reason": "stuck in test"});
    let r = srv.post("/api/v1/locks/c6/force-clear", &body);
    assert_eq!(r.status, 403, "force clear as a user: {}", r.text());
    let r = srv.post_admin(
        "/api/v1/locks/c6/force-clear",
        &json!({"field": "messages", "token": a.token + 1, "reason": "wrong token"}),
    );
    assert_eq!(
        r.status,
        409,
        "force clear with a wrong token: {}",
        r.text()
    );
    assert_eq!(srv.lock("c6", "messages")["state"], "held");

    let r = srv.send(
        Req::post("/api/v1/locks/c6/force-clear")
            .json(&body)
            .bearer(&srv.admin)
            .header("X-Lockledger-Actor", "alice"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["success"], true, "{v}");
    let new_token = v["force_cleared"]["new_token"].as_i64().expect("new_token");
    assert!(new_token > a.token, "{v}");

    let f = srv.fence("c6", "messages", a.token);
    assert_eq!(f["current"], false, "{f}");
    assert!(
        f["newest_token"].as_i64().is_some_and(|t| t > a.token),
        "{f}"
    );
    let r = srv.renew(&a.id);
    assert_eq!(r.status, 410, "renew after force clear: {}", r.text());

    let t = Instant::now();
    let b = Lease::from(srv.acquire(
        "c6",
        "messages",
        &json!({"holder": "next", "operation": "o", "wait_ms": 0}),
    ));
    assert!(t.elapsed() < Duration::from_secs(2));
    assert!(b.token > new_token - 1 && b.token > a.token, "{b:?}");
    assert_eq!(srv.fence("c6", "messages", b.token)["current"], true);
    assert_eq!(srv.fence("c6", "messages", a.token)["current"], false);

    let events = srv.history("c6");
    let fc = events
        .iter()
        .find(|e| e["event"] == "force_cleared")
        .unwrap_or_else(|| panic!("no force_cleared event: {events:?}"));
    assert_eq!(fc["token"], a.token, "{fc}");
    assert!(
        fc["actor"].as_str().is_some_and(|s| s.contains("alice")),
        "{fc}"
    );
    assert!(
        fc["reason"]
            .as_str()
            .is_some_and(|s| s.contains("stuck in test")),
        "{fc}"
    );
}

// ------------------------------------------------------------------ 7. shutdown

#[test]
fn sigterm_releases_leases_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let storage = storage_in(&dir);
    let mut srv = Server::start(&storage, &Opts::default());
    let lease = srv.lease("c7", "messages", "long-stream", 60_000);
    let file = storage.join("locks").join("c7_messages.lock");
    assert!(!flock_is_free(&file), "the service holds the flock");

    let t = Instant::now();
    let status = srv.terminate(EXIT_TIMEOUT);
    let status = status.unwrap_or_else(|| {
        panic!(
            "still running {EXIT_TIMEOUT:?} after SIGTERM; stderr:\n{}",
            srv.stderr()
        )
    });
    assert_eq!(
        status.code(),
        Some(0),
        "exit status; stderr:\n{}",
        srv.stderr()
    );
    assert!(t.elapsed() < EXIT_TIMEOUT);
    assert!(flock_is_free(&file), "the lock file is still locked");
    drop(srv);

    let srv = Server::start(&storage, &Opts::default());
    let events = srv.history("c7");
    let names = event_names(&events);
    assert_eq!(names, ["acquired", "released"], "{events:?}");
    assert_eq!(events[1]["token"], lease.token);
    assert!(
        events[1]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("shutdown")),
        "{}",
        events[1]
    );
    assert_eq!(srv.lock("c7", "messages")["state"], "free");
}

#[test]
fn sigterm_with_a_waiting_acquirer_still_exits_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let storage = storage_in(&dir);
    let mut srv = Server::start(&storage, &Opts::default());
    let lease = srv.lease("c7b", "messages", "holder", 60_000);
    let port = srv.port;
    let waiter = thread::spawn(move || {
        // Blocks in the service for up to 20 s; the answer (if any) does not matter.
        let mut s = Conn::connect(port, IO_TIMEOUT).unwrap();
        let body = json!({"holder": "waiter", "operation": "w", "wait_ms": 20_000});
        let req = Req::post("/api/v1/locks/c7b/messages/acquire").json(&body);
        s.write_all(&req.wire(port, true)).unwrap();
        let mut out = Vec::new();
        let _ = s.stream().read_to_end(&mut out);
    });
    wait_for(Duration::from_secs(5), "the waiter to queue", || {
        let r = srv.get("/api/v1/waiters");
        (r.json()["waiters"].as_array().map_or(0, Vec::len) == 1).then_some(())
    });

    let t = Instant::now();
    let status = srv.terminate(EXIT_TIMEOUT).unwrap_or_else(|| {
        panic!(
            "a waiting acquirer kept the server alive past {EXIT_TIMEOUT:?}; stderr:\n{}",
            srv.stderr()
        )
    });
    assert_eq!(status.code(), Some(0), "stderr:\n{}", srv.stderr());
    assert!(t.elapsed() < EXIT_TIMEOUT);
    waiter.join().unwrap();
    drop(srv);

    let srv = Server::start(&storage, &Opts::default());
    let events = srv.history("c7b");
    let released = events
        .iter()
        .find(|e| e["event"] == "released" && e["token"] == lease.token)
        .unwrap_or_else(|| panic!("no released event for the lease: {events:?}"));
    assert!(
        released["reason"]
            .as_str()
            .is_some_and(|r| r.contains("shutdown")),
        "{released}"
    );
    // Every grant is closed exactly once, whatever happened to the waiter.
    let opened = events.iter().filter(|e| e["event"] == "acquired").count();
    let closed = events
        .iter()
        .filter(|e| {
            [
                "released",
                "expired",
                "cleared",
                "force_cleared",
                "reconciled",
            ]
            .iter()
            .any(|k| e["event"] == *k)
        })
        .count();
    assert_eq!(opened, closed, "{events:?}");
    assert_eq!(srv.lock("c7b", "messages")["state"], "free");
}

// ------------------------------------------------------------------ 8. restart

#[test]
fn restart_after_sigkill_reconciles() {
    let dir = tempfile::tempdir().unwrap();
    let storage = storage_in(&dir);
    let mut srv = Server::start(&storage, &Opts::default());
    let lease = srv.lease("c8", "messages", "doomed", 60_000);
    srv.kill9();
    drop(srv);

    let srv = Server::start(&storage, &Opts::default());
    let l = srv.lock("c8", "messages");
    assert_eq!(l["state"], "free", "{l}");
    let events = srv.history("c8");
    assert_eq!(
        event_names(&events),
        ["acquired", "reconciled"],
        "{events:?}"
    );
    assert_eq!(events[1]["token"], lease.token);
    assert!(
        events[1]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("holder_dead")),
        "{}",
        events[1]
    );
    let next = srv.lease("c8", "messages", "next", 1000);
    assert!(next.token > lease.token);
}

// ------------------------------------------------------------------ 9. bad input

/// One row of the bad-input table.
struct Case {
    name: String,
    req: Req,
    status: u16,
    code: &'static str,
}

fn case(name: impl Into<String>, req: Req, status: u16, code: &'static str) -> Case {
    Case {
        name: name.into(),
        req,
        status,
        code,
    }
}

fn bad_input_cases(port: u16, scratch: &Path) -> Vec<Case> {
    let mut cases = Vec::new();
    let acq = json!({"holder": "h", "operation": "o"});

    // Owners that must never name a lock (URL form, JSON form).
    let owners: Vec<(&str, String, String)> = vec![
        ("encoded ../x", "..%2Fx".into(), "../x".into()),
        ("encoded ..", "%2E%2E".into(), "..".into()),
        ("raw ..", "..".into(), "..".into()),
        ("NUL", "%00".into(), "\0".into()),
        ("300 chars", "a".repeat(300), "a".repeat(300)),
        ("leading dash", "-x".into(), "-x".into()),
        ("encoded slash", "a%2Fb".into(), "a/b".into()),
        ("space", "a%20b".into(), "a b".into()),
    ];
    for (what, url, raw) in &owners {
        let o = url;
        let routes: Vec<(&str, Req)> = vec![
            (
                "legacy status",
                Req::get(&format!("/get_lock_status/{o}")).token(USER),
            ),
            (
                "legacy ensure",
                Req::post(&format!("/ensure_locks_cleared/{o}"))
                    .empty_json()
                    .token(USER),
            ),
            (
                "legacy force",
                Req::post(&format!("/force_clear_locks/{o}"))
                    .json(&json!({"tokens": {"messages": 1}, "reason": "t"}))
                    .bearer(ADMIN),
            ),
            (
                "owner status",
                Req::get(&format!("/api/v1/locks/{o}")).token(USER),
            ),
            (
                "acquire",
                Req::post(&format!("/api/v1/locks/{o}/messages/acquire"))
                    .json(&acq)
                    .token(USER),
            ),
            (
                "clear",
                Req::post(&format!("/api/v1/locks/{o}/clear"))
                    .json(&json!({}))
                    .token(USER),
            ),
            (
                "force-clear",
                Req::post(&format!("/api/v1/locks/{o}/force-clear"))
                    .json(&json!({"field": "messages", "token": 1, "reason": "t"}))
                    .bearer(ADMIN),
            ),
            (
                "history",
                Req::get(&format!("/api/v1/history?owner={o}")).token(USER),
            ),
            (
                "fence",
                Req::post("/api/v1/fence/check")
                    .json(&json!({"owner": raw, "field": "messages", "token": 1}))
                    .token(USER),
            ),
        ];
        for (route, req) in routes {
            cases.push(case(
                format!("{route}, owner {what}"),
                req,
                400,
                "invalid_id",
            ));
        }
    }

    // Unknown fields.
    cases.push(case(
        "acquire unknown field nope",
        Req::post("/api/v1/locks/c9/nope/acquire")
            .json(&acq)
            .token(USER),
        400,
        "invalid_id",
    ));
    cases.push(case(
        "force-clear unknown field",
        Req::post("/api/v1/locks/c9/force-clear")
            .json(&json!({"field": "nope", "token": 1, "reason": "t"}))
            .bearer(ADMIN),
        400,
        "invalid_id",
    ));
    cases.push(case(
        "legacy force unknown field",
        Req::post("/force_clear_locks/c9")
            .json(&json!({"tokens": {"nope": 1}}))
            .bearer(ADMIN),
        400,
        "invalid_id",
    ));
    cases.push(case(
        "clear with a token for an unknown field",
        Req::post("/api/v1/locks/c9/clear")
            .json(&json!({"tokens": {"nope": 1}}))
            .token(USER),
        400,
        "invalid_id",
    ));
    cases.push(case(
        "history unknown field",
        Req::get("/api/v1/history?field=nope").token(USER),
        400,
        "invalid_id",
    ));

    // Bodies: malformed JSON, unknown JSON fields, wrong types.
    let json_routes: Vec<(&str, &str, &str)> = vec![
        ("acquire", "/api/v1/locks/c9/messages/acquire", USER),
        ("clear", "/api/v1/locks/c9/clear", USER),
        ("legacy ensure", "/ensure_locks_cleared/c9", USER),
        ("force-clear", "/api/v1/locks/c9/force-clear", ADMIN),
        ("legacy force", "/force_clear_locks/c9", ADMIN),
        ("fence", "/api/v1/fence/check", USER),
        ("sql", "/api/v1/sql", ADMIN),
    ];
    for (route, path, tok) in &json_routes {
        cases.push(case(
            format!("{route}: malformed JSON"),
            Req::post(path)
                .header("Content-Type", "application/json")
                .body(r#"{"holder":"#)
                .token(tok),
            400,
            "malformed_json",
        ));
    }
    let evil: Vec<(&str, &str, Value, &str)> = vec![
        (
            "acquire",
            "/api/v1/locks/c9/messages/acquire",
            json!({"holder": "a", "operation": "b", "evil": 1}),
            USER,
        ),
        ("clear", "/api/v1/locks/c9/clear", json!({"evil": 1}), USER),
        (
            "legacy ensure",
            "/ensure_locks_cleared/c9",
            json!({"evil": 1}),
            USER,
        ),
        (
            "force-clear",
            "/api/v1/locks/c9/force-clear",
            json!({"field": "messages", "token": 1, "reason": "t", "evil": 1}),
            ADMIN,
        ),
        (
            "legacy force",
            "/force_clear_locks/c9",
            json!({"tokens": {"messages": 1}, "evil": 1}),
            ADMIN,
        ),
        (
            "fence",
            "/api/v1/fence/check",
            json!({"owner": "c9", "field": "messages", "token": 1, "evil": 1}),
            USER,
        ),
        (
            "sql",
            "/api/v1/sql",
            json!({"sql": "SELECT 1", "evil": 1}),
            ADMIN,
        ),
        (
            "acquire, holder is a number",
            "/api/v1/locks/c9/messages/acquire",
            json!({"holder": 1, "operation": "b"}),
            USER,
        ),
        (
            "acquire without operation",
            "/api/v1/locks/c9/messages/acquire",
            json!({"holder": "a"}),
            USER,
        ),
        (
            "acquire, body is an array",
            "/api/v1/locks/c9/messages/acquire",
            json!([1, 2]),
            USER,
        ),
    ];
    for (route, path, body, tok) in evil {
        cases.push(case(
            format!("{route}: unknown or mistyped JSON field"),
            Req::post(path).json(&body).token(tok),
            400,
            "malformed_json",
        ));
    }
    cases.push(case(
        "acquire with an empty body",
        Req::post("/api/v1/locks/c9/messages/acquire")
            .empty_json()
            .token(USER),
        400,
        "malformed_json",
    ));

    // Acquire values out of range.
    let bad_values: Vec<(&str, Value)> = vec![
        (
            "holder with a control character",
            json!({"holder": "a\u{1}b", "operation": "o"}),
        ),
        (
            "holder of 300 bytes",
            json!({"holder": "h".repeat(300), "operation": "o"}),
        ),
        (
            "operation with a newline",
            json!({"holder": "h", "operation": "o\nx"}),
        ),
        (
            "host with a newline",
            json!({"holder": "h", "operation": "o", "host": "a\nb"}),
        ),
        ("pid 0", json!({"holder": "h", "operation": "o", "pid": 0})),
        (
            "negative pid",
            json!({"holder": "h", "operation": "o", "pid": -5}),
        ),
        (
            "pid of no process",
            json!({"holder": "h", "operation": "o", "pid": 2_000_000_000}),
        ),
        (
            "ttl_ms 0",
            json!({"holder": "h", "operation": "o", "ttl_ms": 0}),
        ),
        (
            "ttl_ms of a year",
            json!({"holder": "h", "operation": "o", "ttl_ms": 31_536_000_000u64}),
        ),
        (
            "wait_ms above the limit",
            json!({"holder": "h", "operation": "o", "wait_ms": 1_000_000}),
        ),
    ];
    for (what, body) in bad_values {
        cases.push(case(
            format!("acquire: {what}"),
            Req::post("/api/v1/locks/c9/messages/acquire")
                .json(&body)
                .token(USER),
            400,
            "bad_request",
        ));
    }
    cases.push(case(
        "force-clear with an empty reason",
        Req::post("/api/v1/locks/c9/force-clear")
            .json(&json!({"field": "messages", "token": 1, "reason": "  "}))
            .bearer(ADMIN),
        400,
        "bad_request",
    ));

    // Oversized bodies (declared, and streamed chunked).
    let big = json!({"holder": "x".repeat(100 * 1024), "operation": "o"});
    for (route, path, tok) in &json_routes {
        cases.push(case(
            format!("{route}: 100 KB body"),
            Req::post(path).json(&big).token(tok),
            413,
            "body_too_large",
        ));
    }
    cases.push(case(
        "acquire: 100 KB chunked body",
        Req::post("/api/v1/locks/c9/messages/acquire")
            .json(&big)
            .chunked()
            .token(USER),
        413,
        "body_too_large",
    ));

    // Wrong methods.
    let post_only: Vec<(&str, &str)> = vec![
        ("/ensure_locks_cleared/c9", USER),
        ("/force_clear_locks/c9", ADMIN),
        ("/clear_locks", ADMIN),
        ("/api/v1/locks/c9/messages/acquire", USER),
        ("/api/v1/locks/c9/clear", USER),
        ("/api/v1/locks/c9/force-clear", ADMIN),
        ("/api/v1/fence/check", USER),
        ("/api/v1/sql", ADMIN),
        ("/api/v1/reconcile", ADMIN),
        (
            "/api/v1/leases/0123456789abcdef0123456789abcdef/renew",
            USER,
        ),
    ];
    for (path, tok) in &post_only {
        cases.push(case(
            format!("GET {path}"),
            Req::get(path).token(tok),
            405,
            "method_not_allowed",
        ));
    }
    for path in ["/get_lock_status/c9", "/api/v1/locks/c9", "/api/v1/history"] {
        cases.push(case(
            format!("POST {path}"),
            Req::post(path).json(&json!({})).token(USER),
            405,
            "method_not_allowed",
        ));
    }
    cases.push(case(
        "DELETE an owner",
        Req::delete("/api/v1/locks/c9")
            .header("X-Lockledger-Client", "t")
            .token(USER),
        405,
        "method_not_allowed",
    ));
    cases.push(case(
        "GET a lease",
        Req::get("/api/v1/leases/0123456789abcdef0123456789abcdef").token(USER),
        405,
        "method_not_allowed",
    ));

    // The CSRF rule: POST/DELETE need JSON or the client header.
    let csrf: Vec<(&str, &str, &str)> = vec![
        ("POST", "/ensure_locks_cleared/c9", USER),
        ("POST", "/force_clear_locks/c9", ADMIN),
        ("POST", "/clear_locks", ADMIN),
        ("POST", "/api/v1/locks/c9/messages/acquire", USER),
        ("POST", "/api/v1/locks/c9/clear", USER),
        ("POST", "/api/v1/locks/c9/force-clear", ADMIN),
        ("POST", "/api/v1/fence/check", USER),
        ("POST", "/api/v1/sql", ADMIN),
        (
            "POST",
            "/api/v1/leases/0123456789abcdef0123456789abcdef/renew",
            USER,
        ),
        (
            "DELETE",
            "/api/v1/leases/0123456789abcdef0123456789abcdef",
            USER,
        ),
    ];
    for (method, path, tok) in &csrf {
        cases.push(case(
            format!("{method} {path} without content type"),
            Req::new(method, path).token(tok),
            415,
            "json_required",
        ));
        for ct in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
        ] {
            cases.push(case(
                format!("{method} {path} as {ct}"),
                Req::new(method, path)
                    .header("Content-Type", ct)
                    .body(r#"{"holder":"h","operation":"o"}"#)
                    .token(tok),
                415,
                "json_required",
            ));
        }
    }

    // Tokens.
    let user_routes: Vec<Req> = vec![
        Req::get("/get_lock_status/c9"),
        Req::post("/ensure_locks_cleared/c9").empty_json(),
        Req::get("/api/v1/locks"),
        Req::get("/api/v1/locks/c9"),
        Req::post("/api/v1/locks/c9/messages/acquire").json(&acq),
        Req::post("/api/v1/locks/c9/clear").json(&json!({})),
        Req::post("/api/v1/fence/check")
            .json(&json!({"owner": "c9", "field": "messages", "token": 1})),
        Req::get("/api/v1/history"),
        Req::get("/api/v1/waiters"),
        Req::get("/metrics"),
        Req::post("/api/v1/leases/0123456789abcdef0123456789abcdef/renew").empty_json(),
    ];
    let admin_routes: Vec<Req> = vec![
        Req::post("/force_clear_locks/c9").json(&json!({"tokens": {"messages": 1}})),
        Req::post("/clear_locks").empty_json(),
        Req::post("/api/v1/locks/c9/force-clear")
            .json(&json!({"field": "messages", "token": 1, "reason": "t"})),
        Req::post("/api/v1/sql").json(&json!({"sql": "SELECT 1"})),
        Req::post("/api/v1/reconcile").empty_json(),
    ];
    for r in user_routes.iter().chain(&admin_routes) {
        let label = format!("{} {}", r.method, r.path);
        cases.push(case(
            format!("{label} without a token"),
            r.clone(),
            401,
            "unauthenticated",
        ));
        cases.push(case(
            format!("{label} with a wrong token"),
            r.clone().token("wrong-token-0123456789"),
            401,
            "unauthenticated",
        ));
        cases.push(case(
            format!("{label} with a wrong bearer token"),
            r.clone().bearer("wrong-token-0123456789"),
            401,
            "unauthenticated",
        ));
    }
    for r in &admin_routes {
        let label = format!("{} {}", r.method, r.path);
        cases.push(case(
            format!("{label} with the user token"),
            r.clone().token(USER),
            403,
            "admin_only",
        ));
        cases.push(case(
            format!("{label} with the user token as bearer"),
            r.clone().bearer(USER),
            403,
            "admin_only",
        ));
    }

    // Host and Origin (DNS rebinding, cross-site requests), with valid tokens.
    let with_tokens: Vec<Req> = vec![
        Req::get("/healthz"),
        Req::get("/get_lock_status/c9").token(USER),
        Req::post("/ensure_locks_cleared/c9")
            .empty_json()
            .token(USER),
        Req::post("/api/v1/locks/c9/messages/acquire")
            .json(&acq)
            .token(USER),
        Req::post("/api/v1/sql")
            .json(&json!({"sql": "SELECT 1"}))
            .bearer(ADMIN),
        Req::post("/api/v1/locks/c9/force-clear")
            .json(&json!({"field": "messages", "token": 1, "reason": "t"}))
            .bearer(ADMIN),
    ];
    for r in &with_tokens {
        let label = format!("{} {}", r.method, r.path);
        for host in [
            "evil.com".to_string(),
            format!("evil.com:{port}"),
            format!("localhost.evil.com:{port}"),
            "127.0.0.1:1".to_string(),
        ] {
            cases.push(case(
                format!("{label} with Host {host}"),
                r.clone().host(&host),
                403,
                "forbidden_host",
            ));
        }
        for origin in [
            "http://evil.com".to_string(),
            format!("http://evil.com:{port}"),
            "null".to_string(),
            format!("http://127.0.0.1:{port}.evil.com"),
        ] {
            cases.push(case(
                format!("{label} with Origin {origin}"),
                r.clone().header("Origin", &origin),
                403,
                "forbidden_origin",
            ));
        }
    }

    // Unknown or repeated query parameters.
    let queries: Vec<Req> = vec![
        Req::get("/get_lock_status/c9?x=1").token(USER),
        Req::post("/ensure_locks_cleared/c9?x=1")
            .empty_json()
            .token(USER),
        Req::post("/force_clear_locks/c9?x=1")
            .json(&json!({"tokens": {"messages": 1}}))
            .bearer(ADMIN),
        Req::get("/api/v1/locks/c9?nope=1").token(USER),
        Req::get("/api/v1/locks?nope=1").token(USER),
        Req::post("/api/v1/locks/c9/messages/acquire?nope=1")
            .json(&acq)
            .token(USER),
        Req::post("/api/v1/locks/c9/clear?nope=1")
            .json(&json!({}))
            .token(USER),
        Req::post("/api/v1/locks/c9/force-clear?nope=1")
            .json(&json!({"field": "messages", "token": 1, "reason": "t"}))
            .bearer(ADMIN),
        Req::get("/api/v1/history?nope=1").token(USER),
        Req::get("/api/v1/history?owner=c9&owner=c8").token(USER),
        Req::post("/api/v1/sql?x=1")
            .json(&json!({"sql": "SELECT 1"}))
            .bearer(ADMIN),
        Req::post("/api/v1/fence/check?x=1")
            .json(&json!({"owner": "c9", "field": "messages", "token": 1}))
            .token(USER),
    ];
    for r in queries {
        cases.push(case(
            format!("{} {} (query)", r.method, r.path),
            r,
            400,
            "bad_request",
        ));
    }
    for q in [
        "limit=0",
        "limit=abc",
        "limit=100000",
        "event=nope",
        "since=yesterday",
        "format=xml",
        "cursor=x",
    ] {
        cases.push(case(
            format!("history ?{q}"),
            Req::get(&format!("/api/v1/history?{q}")).token(USER),
            400,
            "bad_request",
        ));
    }
    for q in ["state=locked", "limit=0", "limit=5000"] {
        cases.push(case(
            format!("list ?{q}"),
            Req::get(&format!("/api/v1/locks?{q}")).token(USER),
            400,
            "bad_request",
        ));
    }
    cases.push(case(
        "malformed percent-encoding",
        Req::get("/get_lock_status/%zz").token(USER),
        400,
        "bad_request",
    ));
    cases.push(case(
        "percent-encoded invalid UTF-8",
        Req::get("/get_lock_status/%ff%fe").token(USER),
        400,
        "bad_request",
    ));
    cases.push(case(
        "a 3000-byte path",
        Req::get(&format!("/get_lock_status/{}", "a".repeat(3000))).token(USER),
        414,
        "uri_too_long",
    ));
    cases.push(case(
        "unknown route",
        Req::get("/api/v1/nope").token(USER),
        404,
        "not_found",
    ));

    // Lease ids.
    cases.push(case(
        "renew a traversal lease id",
        Req::post("/api/v1/leases/..%2F..%2Fregistry.db/renew")
            .empty_json()
            .token(USER),
        404,
        "unknown_lease",
    ));
    cases.push(case(
        "release a short lease id",
        Req::delete("/api/v1/leases/abc")
            .header("X-Lockledger-Client", "t")
            .token(USER),
        404,
        "unknown_lease",
    ));

    // Admin SQL that must be refused.
    let attach_here = scratch.join("attached.db");
    let vacuum_here = scratch.join("vacuum.db");
    let sqls = vec![
        "DELETE FROM locks".to_string(),
        "DELETE FROM lock_events".to_string(),
        "ATTACH DATABASE '/tmp/x' AS x".to_string(),
        format!("ATTACH DATABASE '{}' AS x", attach_here.display()),
        "PRAGMA writable_schema=ON".to_string(),
        "PRAGMA journal_mode=DELETE".to_string(),
        "PRAGMA user_version=7".to_string(),
        "PRAGMA database_list".to_string(),
        "SELECT file FROM pragma_database_list".to_string(),
        "INSERT INTO lock_events(event) VALUES ('x')".to_string(),
        "UPDATE locks SET last_token = 0".to_string(),
        "DROP TABLE lock_events".to_string(),
        "CREATE TABLE t(x)".to_string(),
        "SELECT 1; DELETE FROM locks".to_string(),
        format!("VACUUM INTO '{}'", vacuum_here.display()),
        "SELECT load_extension('/tmp/x')".to_string(),
        "BEGIN IMMEDIATE".to_string(),
        "".to_string(),
    ];
    for sql in sqls {
        cases.push(case(
            format!("sql {sql:?}"),
            Req::post("/api/v1/sql")
                .json(&json!({ "sql": sql }))
                .bearer(ADMIN),
            0, // any 4xx: the exact refusal differs by statement
            "",
        ));
    }
    cases
}

#[test]
fn bad_input_is_refused_without_side_effects() {
    let dir = tempfile::tempdir().unwrap();
    let storage = storage_in(&dir);
    let scratch = dir.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let srv = Server::start(&storage, &Opts::default().tokens());
    let storage_abs = storage.to_str().unwrap().to_string();
    let storage_canon = std::fs::canonicalize(&storage)
        .unwrap()
        .to_string_lossy()
        .into_owned();

    // Some real activity first, so there are events and a lock file to compare.
    let lease = srv.lease("c9", "messages", "before", 30_000);
    assert_eq!(srv.release(&lease.id).status, 200);
    let events_before = srv.sql_i64("SELECT count(*) FROM lock_events");
    assert!(events_before >= 2);
    let files_before = files_below(dir.path());
    let tmp_x_existed = Path::new("/tmp/x").exists();

    let cases = bad_input_cases(srv.port, &scratch);
    let mut failures = Vec::new();
    for c in &cases {
        let r = srv.send(c.req.clone());
        let body = r.text();
        let mut why = Vec::new();
        if !(400..500).contains(&r.status) {
            why.push(format!("status {} is not 4xx", r.status));
        } else if c.status != 0 && r.status != c.status {
            why.push(format!("status {} (wanted {})", r.status, c.status));
        }
        match serde_json::from_slice::<Value>(&r.body) {
            Ok(v) => {
                let code = v["error"]["code"].as_str();
                if code.is_none() || !v["error"]["message"].is_string() {
                    why.push("no {error: {code, message}}".to_string());
                }
                if !c.code.is_empty() && code != Some(c.code) {
                    why.push(format!("code {code:?} (wanted {:?})", c.code));
                }
            }
            Err(e) => why.push(format!("body is not JSON ({e})")),
        }
        if !r
            .header("content-type")
            .is_some_and(|ct| ct.starts_with("application/json"))
        {
            why.push(format!("content-type {:?}", r.header("content-type")));
        }
        if body.contains(&storage_abs) || body.contains(&storage_canon) {
            why.push("the body contains the storage path".to_string());
        }
        if r.status == 405 && r.header("allow").is_none() {
            why.push("405 without Allow".to_string());
        }
        if !why.is_empty() {
            failures.push(format!("{}: {} — {}", c.name, why.join("; "), short(&body)));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} bad requests were mishandled:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    assert_eq!(
        files_below(dir.path()),
        files_before,
        "bad requests created or removed files"
    );
    assert!(
        tmp_x_existed || !Path::new("/tmp/x").exists(),
        "ATTACH created /tmp/x"
    );
    assert_eq!(
        srv.sql_i64("SELECT count(*) FROM lock_events"),
        events_before,
        "bad requests wrote history"
    );
    assert_eq!(srv.lock("c9", "messages")["state"], "free");
}

#[test]
fn exposed_bind_without_tokens_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let storage = storage_in(&dir);
    let (code, out, err) = run_to_exit(lockledger(&storage, &["serve", "--bind", "0.0.0.0:0"]));
    assert_ne!(code, Some(0), "stdout {out:?} stderr {err:?}");
    assert!(code.is_some(), "killed by a signal: {err}");
    assert!(!out.contains("listening"), "it listened: {out}");
    assert!(err.contains("token"), "no word about tokens: {err}");
    assert!(!err.contains("panicked"), "{err}");
    // One token is not enough either.
    let (code, out, err) = run_to_exit(lockledger(
        &storage,
        &["serve", "--bind", "0.0.0.0:0", "--token", USER],
    ));
    assert_ne!(code, Some(0), "stdout {out:?} stderr {err:?}");
    assert!(!out.contains("listening"), "it listened: {out}");
    assert!(err.contains("token"), "{err}");
}

#[test]
fn taken_port_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let bind = format!("127.0.0.1:{port}");
    let (code, out, err) = run_to_exit(lockledger(&storage_in(&dir), &["serve", "--bind", &bind]));
    assert_ne!(code, Some(0), "stdout {out:?} stderr {err:?}");
    assert!(code.is_some(), "killed by a signal: {err}");
    assert!(!out.contains("listening"), "{out}");
    assert!(
        !err.contains("panicked"),
        "a panic instead of a message: {err}"
    );
    assert!(
        err.contains(&bind),
        "the message does not name {bind}: {err}"
    );
    assert!(err.to_lowercase().contains("in use"), "{err}");
    drop(taken);
}

// ------------------------------------------------------------------ 10. metrics etc.

/// The value of an unlabelled sample (or a labelled one, `name{...}`) in Prometheus text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == name).then(|| v.parse().ok()).flatten()
    })
}

#[test]
fn metrics_health_and_openapi() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(&storage_in(&dir), &Opts::default());

    let r = srv.get("/healthz");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "ok", "{}", r.text());
    let database = if postgres_mode() {
        "postgresql"
    } else {
        "sqlite"
    };
    assert_eq!(r.json()["database"], database, "{}", r.text());

    let r = srv.get("/metrics");
    assert_eq!(r.status, 200, "{}", r.text());
    // OpenMetrics text (prometheus-client), which Prometheus scrapes natively.
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/openmetrics-text")),
        "{:?}",
        r.header("content-type")
    );
    let text = r.text();
    assert!(text.contains("# TYPE lockledger_grants counter"), "{text}");
    assert!(
        text.contains("# HELP lockledger_grants Grants made by this service, by kind"),
        "{text}"
    );
    assert!(
        text.contains("# HELP lockledger_releases Grants ended by their holder"),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(
        text.contains("lockledger_acquire_wait_seconds_bucket"),
        "{text}"
    );
    for kind in ["lease", "registration"] {
        for counter in ["lockledger_grants_total", "lockledger_releases_total"] {
            let name = format!("{counter}{{kind=\"{kind}\"}}");
            assert_eq!(sample(&text, &name), Some(0.0), "{name}: {text}");
        }
    }
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (_, v) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        assert!(v.parse::<f64>().is_ok(), "bad sample line {line:?}");
    }

    let lease = srv.lease("c10", "messages", "metered", 30_000);
    let text = srv.get("/metrics").text();
    assert_eq!(
        sample(&text, "lockledger_grants_total{kind=\"lease\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "lockledger_acquire_wait_seconds_bucket{le=\"+Inf\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(sample(&text, "lockledger_leases"), Some(1.0), "{text}");
    let r = srv.acquire("c10", "messages", &json!({"holder": "b", "operation": "o"}));
    assert_eq!(r.status, 409, "{}", r.text());
    let text = srv.get("/metrics").text();
    assert_eq!(
        sample(&text, "lockledger_acquire_busy_total"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "lockledger_grants_total{kind=\"lease\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(srv.release(&lease.id).status, 200);
    let text = srv.get("/metrics").text();
    assert_eq!(sample(&text, "lockledger_leases"), Some(0.0), "{text}");
    assert_eq!(
        sample(&text, "lockledger_releases_total{kind=\"lease\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "lockledger_releases_total{kind=\"registration\"}"),
        Some(0.0),
        "{text}"
    );

    let r = srv.get("/api/v1/openapi.json");
    assert_eq!(r.status, 200, "{}", r.text());
    let doc = r.json();
    let paths = doc["paths"].as_object().expect("paths object");
    let acquire = paths
        .get("/api/v1/locks/{owner}/{field}/acquire")
        .unwrap_or_else(|| panic!("no acquire path in {:?}", paths.keys().collect::<Vec<_>>()));
    assert!(acquire.get("post").is_some(), "{acquire}");
    for p in [
        "/api/v1/locks/{owner}",
        "/api/v1/leases/{lease_id}/renew",
        "/api/v1/sql",
    ] {
        assert!(paths.contains_key(p), "no {p} in the API document");
    }
}

/// A process holding `owner`/`field`'s flock by itself, with no record (as the chat
/// app's `FileLock` does), until killed.
fn external_holder(storage: &Path, owner: &str, field: &str) -> lockledger_harness::Proc {
    let cmd = lockledger(storage, &["hold", owner, field, "--external"]);
    let holder = lockledger_harness::Proc::spawn(cmd, "external holder");
    let line = holder.line(Duration::from_secs(10));
    assert!(
        line.as_deref().is_some_and(|l| l.contains("\"held\"")),
        "{line:?}: {}",
        holder.stderr_text()
    );
    holder
}

/// Registrations are counted as their own kind, never as leases; a process that does not
/// hold the file is refused with its own code, naming the lock and the pid.
#[test]
fn registrations_are_counted_by_kind_and_a_refused_one_says_not_holding() {
    let dir = tempfile::tempdir().unwrap();
    let storage = storage_in(&dir);
    let srv = Server::start(&storage, &Opts::default());
    let mut holder = external_holder(&storage, "r1", "memory");
    let register = |pid: i64| {
        srv.post(
            "/api/v1/locks/r1/memory/register",
            &json!({"pid": pid, "holder": "chat-app", "operation": "save_local"}),
        )
    };

    // This test process does not hold the file: its own code, the lock and the pid named.
    let me = i64::from(std::process::id());
    let r = register(me);
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.error_code(), "not_holding", "{}", r.text());
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        msg.starts_with(&format!(
            "lock r1/memory cannot be registered for pid {me}:"
        )),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("held by pid {}", holder.pid())),
        "{msg}"
    );
    assert!(!msg.contains("cleared"), "{msg}");
    // No lock file at all: the same code.
    let r = srv.post(
        "/api/v1/locks/r2/memory/register",
        &json!({"pid": me, "holder": "chat-app", "operation": "save_local"}),
    );
    assert_eq!(r.error_code(), "not_holding", "{}", r.text());
    assert!(
        r.text().contains("r2_memory.lock does not exist"),
        "{}",
        r.text()
    );

    let r = register(i64::from(holder.pid()));
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["registration_id"].as_str().unwrap().to_string();
    let text = srv.get("/metrics").text();
    assert_eq!(
        sample(&text, "lockledger_grants_total{kind=\"registration\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "lockledger_grants_total{kind=\"lease\"}"),
        Some(0.0),
        "a registration is not a lease: {text}"
    );
    let r = srv.send(srv.with_user(
        Req::delete(&format!("/api/v1/registrations/{id}")).header("X-Lockledger-Client", "t"),
    ));
    assert_eq!(r.status, 200, "{}", r.text());
    let text = srv.get("/metrics").text();
    assert_eq!(
        sample(&text, "lockledger_releases_total{kind=\"registration\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "lockledger_releases_total{kind=\"lease\"}"),
        Some(0.0),
        "an unregistration is not a lease release: {text}"
    );
    holder.kill();
}

/// LOCKLEDGER_ACCESS_LOG (and the other boolean variables) take the usual spellings, as
/// deploy/lockledger.service suggests (`=1`), and still refuse nonsense.
#[test]
fn boolean_environment_variables_take_the_usual_spellings() {
    let logged = |value: &str| -> bool {
        let dir = tempfile::tempdir().unwrap();
        let srv = Server::start(
            &storage_in(&dir),
            &Opts::default()
                .env("LOCKLEDGER_ACCESS_LOG", value)
                .env("LOCKLEDGER_AUTO_EXPIRE", value)
                .env("RUST_LOG", "info"),
        );
        assert_eq!(srv.get("/healthz").status, 200);
        let deadline = Instant::now() + Duration::from_millis(500);
        loop {
            let seen = srv.stderr().contains("GET /healthz -> 200");
            if seen || Instant::now() >= deadline {
                return seen;
            }
            thread::sleep(Duration::from_millis(20));
        }
    };
    for on in ["1", "true", "yes", "on", "TRUE"] {
        assert!(logged(on), "LOCKLEDGER_ACCESS_LOG={on} logs requests");
    }
    for off in ["0", "false", "no", "off"] {
        assert!(!logged(off), "LOCKLEDGER_ACCESS_LOG={off} logs no requests");
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = lockledger(&storage_in(&dir), &["serve", "--bind", "127.0.0.1:0"]);
    cmd.env("LOCKLEDGER_ACCESS_LOG", "maybe");
    let (code, _, stderr) = run_to_exit(cmd);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("maybe"), "{stderr}");
}

// ------------------------------------------------------------------ beyond the brief

/// The chat app's own `FileLock` is an external holder: shown with its pid, never cleared.
#[test]
fn external_holder_is_reported_and_never_cleared() {
    use std::os::fd::AsRawFd;
    let dir = tempfile::tempdir().unwrap();
    let storage = storage_in(&dir);
    let srv = Server::start(&storage, &Opts::default());
    let path = storage.join("locks").join("e1_memory.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap();
    // SAFETY: flock(2) on a descriptor this test owns; released when `file` drops.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(rc, 0, "take the flock as an outside process");
    let me = std::process::id() as i64;

    let l = srv.lock("e1", "memory");
    assert_eq!(l["state"], "held", "{l}");
    assert_eq!(l["kind"], "external", "{l}");
    assert_eq!(l["pid"], me, "{l}");
    assert_eq!(l["clearable"], false, "{l}");
    let legacy = srv.get("/get_lock_status/e1").json();
    assert_eq!(legacy["any_locked"], true, "{legacy}");
    assert_eq!(legacy["can_cleanup"], false, "{legacy}");

    let r = srv.send(Req::post("/ensure_locks_cleared/e1").empty_json());
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["cleared"], json!([]), "{v}");
    assert_eq!(v["skipped"][0]["field"], "memory", "{v}");
    assert!(
        v["skipped"][0]["reason"]
            .as_str()
            .is_some_and(|s| s.contains(&me.to_string())),
        "the reason should name pid {me}: {v}"
    );
    let r = srv.post_admin(
        "/api/v1/locks/e1/force-clear",
        &json!({"field": "memory", "token": 0, "reason": "try"}),
    );
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.error_code(), "not_clearable");
    let r = srv.acquire(
        "e1",
        "memory",
        &json!({"holder": "h", "operation": "o", "wait_ms": 100}),
    );
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json()["holder"]["kind"], "external", "{}", r.text());
    assert!(path.exists());

    drop(file);
    assert_eq!(srv.lock("e1", "memory")["state"], "free");
    srv.lease("e1", "memory", "after", 1000);
    assert!(event_names(&srv.history("e1")).contains(&"observed_external".to_string()));
}

/// LOCKLEDGER_MAX_HOLD_MS: a lease not renewed for longer is held_too_long; a safe clear
/// leaves it, a renewal heals it, a force clear takes it.
#[test]
fn held_too_long_is_skipped_by_safe_clear_and_taken_by_force() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Opts::default().env("LOCKLEDGER_MAX_HOLD_MS", "300");
    let srv = Server::start(&storage_in(&dir), &opts);
    let lease = srv.lease("h1", "memory", "hung", 60_000);
    let l = wait_for(Duration::from_secs(3), "h1/memory held_too_long", || {
        let l = srv.lock("h1", "memory");
        (l["state"] == "stale").then_some(l)
    });
    assert_eq!(l["stale_reason"], "held_too_long", "{l}");
    assert_eq!(l["clearable"], false, "{l}");
    let v = srv
        .send(Req::post("/ensure_locks_cleared/h1").empty_json())
        .json();
    assert_eq!(v["cleared"], json!([]), "{v}");
    assert_eq!(v["skipped"][0]["field"], "memory", "{v}");
    assert!(
        v["skipped"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("held_too_long")),
        "{v}"
    );
    assert_eq!(srv.renew(&lease.id).status, 200);
    assert_eq!(srv.lock("h1", "memory")["state"], "held");

    let r = srv.post_admin(
        "/api/v1/locks/h1/force-clear",
        &json!({"field": "memory", "token": lease.token, "reason": "hung worker"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(srv.lock("h1", "memory")["state"], "free");
    assert_eq!(srv.renew(&lease.id).status, 410);
}

/// A waiter whose client disconnects leaves the queue and is never granted the lock.
#[test]
fn a_disconnected_waiter_is_never_granted() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(&storage_in(&dir), &Opts::default());
    let a = srv.lease("c11", "messages", "A", 30_000);
    let port = srv.port;
    let mut ghost = Conn::connect(port, IO_TIMEOUT).unwrap();
    let body = json!({"holder": "ghost", "operation": "w", "wait_ms": 20_000});
    let req = Req::post("/api/v1/locks/c11/messages/acquire").json(&body);
    ghost.write_all(&req.wire(port, true)).unwrap();
    let waiters = || {
        srv.get("/api/v1/waiters").json()["waiters"]
            .as_array()
            .map_or(0, Vec::len)
    };
    wait_for(Duration::from_secs(5), "the ghost to queue", || {
        (waiters() == 1).then_some(())
    });
    drop(ghost);
    wait_for(
        Duration::from_secs(3),
        "the ghost to leave the queue",
        || (waiters() == 0).then_some(()),
    );
    assert_eq!(srv.release(&a.id).status, 200);
    let r = srv.acquire(
        "c11",
        "messages",
        &json!({"holder": "C", "operation": "o", "wait_ms": 0}),
    );
    assert_eq!(r.status, 200, "the lock went to nobody: {}", r.text());
    let events = srv.history("c11");
    assert!(
        !events
            .iter()
            .any(|e| e["event"] == "acquired" && e["holder"] == "ghost"),
        "{events:?}"
    );
}

/// POST /clear_locks (admin): safe clear of every stale lock of every owner.
#[test]
fn global_clear_takes_every_stale_lock_and_no_live_one() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Opts::default().env("LOCKLEDGER_AUTO_EXPIRE", "0");
    let srv = Server::start(&storage_in(&dir), &opts);
    srv.lease("g1", "messages", "s1", 200);
    srv.lease("g2", "memory", "s2", 200);
    let live = srv.lease("g3", "messages", "live", 60_000);
    wait_for(Duration::from_secs(3), "g1 and g2 stale", || {
        (srv.lock("g1", "messages")["state"] == "stale"
            && srv.lock("g2", "memory")["state"] == "stale")
            .then_some(())
    });
    let r = srv.send(Req::post("/clear_locks").empty_json());
    assert_eq!(r.status, 403, "global clear is admin only: {}", r.text());
    let r = srv.send(Req::post("/clear_locks").empty_json().bearer(&srv.admin));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let cleared: BTreeSet<String> = v["cleared"]
        .as_array()
        .expect("cleared")
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    assert_eq!(cleared, set(&["g1_messages.lock", "g2_memory.lock"]), "{v}");
    assert_eq!(srv.lock("g1", "messages")["state"], "free");
    assert_eq!(srv.lock("g2", "memory")["state"], "free");
    assert_eq!(srv.lock("g3", "messages")["state"], "held");
    assert_eq!(srv.renew(&live.id).status, 200);
    // g3 had nothing stale, so it was not cleared; nothing it cleared is left.
    assert_eq!(v["success"], true, "{v}");
}

/// POST /clear_locks says `success: true` only when nothing of the owners it cleared is
/// still held or stale: a stale lock cleared beside a lock a real process holds is not a
/// success, and the message says who holds what.
#[test]
fn global_clear_is_a_success_only_when_nothing_is_left_held_or_stale() {
    let dir = tempfile::tempdir().unwrap();
    let storage = storage_in(&dir);
    let opts = Opts::default().env("LOCKLEDGER_AUTO_EXPIRE", "0");
    let srv = Server::start(&storage, &opts);
    srv.lease("h1", "messages", "gone", 200);
    // A real process holds h1's memory lock by itself (as the chat app's FileLock does).
    let mut holder = external_holder(&storage, "h1", "memory");
    wait_for(Duration::from_secs(3), "h1/messages stale", || {
        (srv.lock("h1", "messages")["state"] == "stale").then_some(())
    });
    let clear_all = || {
        let r = srv.send(Req::post("/clear_locks").empty_json().bearer(&srv.admin));
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    };
    let v = clear_all();
    assert_eq!(v["cleared"], json!(["h1_messages.lock"]), "{v}");
    assert_eq!(v["success"], false, "a lock is still held: {v}");
    let skipped = v["skipped"].as_array().unwrap();
    assert!(
        skipped
            .iter()
            .any(|s| s["field"] == "memory" && s["outcome"] == "external"),
        "{v}"
    );
    let message = v["message"].as_str().unwrap();
    assert!(
        message.contains("still held") && message.contains(&format!("pid {}", holder.pid())),
        "{message}"
    );
    assert!(!message.contains(['<', '>', '&', '"', '\'']), "{message}");
    assert_eq!(srv.lock("h1", "memory")["state"], "held");

    // Once the holder is gone and something is stale again, a clear leaves nothing.
    holder.kill();
    srv.lease("h1", "all", "gone-too", 200);
    wait_for(Duration::from_secs(3), "h1/all stale", || {
        (srv.lock("h1", "all")["state"] == "stale").then_some(())
    });
    let v = clear_all();
    assert_eq!(v["cleared"], json!(["h1_all.lock"]), "{v}");
    assert_eq!(v["success"], true, "{v}");
}

/// Admin SQL: views readable, rows capped, runaway queries stopped, no server paths.
#[test]
fn admin_sql_is_capped_and_reveals_no_paths() {
    let dir = tempfile::tempdir().unwrap();
    let storage = storage_in(&dir);
    let srv = Server::start(&storage, &Opts::default());
    let lease = srv.lease("q1", "messages", "sql", 30_000);
    let storage_s = storage.to_str().unwrap();
    // The catalogue queries are each database's own; the views and tables are shared.
    let catalogue: [&str; 2] = if postgres_mode() {
        [
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'",
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'locks'",
        ]
    } else {
        [
            "SELECT name, sql FROM sqlite_master",
            "PRAGMA table_info(locks)",
        ]
    };
    for sql in [
        "SELECT * FROM current_locks",
        "SELECT * FROM stale_locks",
        "SELECT * FROM lock_history",
        "SELECT * FROM locks",
        "SELECT * FROM holders",
        catalogue[0],
        catalogue[1],
    ] {
        let r = srv.post_admin("/api/v1/sql", &json!({ "sql": sql }));
        assert_eq!(r.status, 200, "{sql}: {}", r.text());
        assert!(
            !r.text().contains(storage_s),
            "{sql} shows the storage path"
        );
    }
    let v = srv
        .post_admin(
            "/api/v1/sql",
            &json!({"sql": "SELECT owner, token FROM current_locks"}),
        )
        .json();
    assert_eq!(v["columns"], json!(["owner", "token"]), "{v}");
    assert_eq!(v["rows"], json!([["q1", lease.token]]), "{v}");

    let (many, endless) = if postgres_mode() {
        (
            "SELECT x FROM generate_series(1, 5000) AS x",
            "SELECT count(*) FROM generate_series(1, 10000000000) AS x",
        )
    } else {
        (
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 5000) SELECT x FROM c",
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
        )
    };
    let r = srv.post_admin("/api/v1/sql", &json!({ "sql": many }));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["rows"].as_array().map(Vec::len), Some(1000), "row cap");
    assert_eq!(v["truncated"], true);

    let t = Instant::now();
    let r = srv.post_admin("/api/v1/sql", &json!({ "sql": endless }));
    assert!((400..500).contains(&r.status), "{} {}", r.status, r.text());
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "ran {:?}",
        t.elapsed()
    );
    // The service still answers.
    assert_eq!(srv.get("/healthz").status, 200);
}

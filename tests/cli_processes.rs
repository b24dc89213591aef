//! End-to-end tests of the `lockledger` binary with real processes and real signals.
//!
//! Every test gets its own temporary storage directory, every wait is bounded by a
//! deadline (polling with short sleeps), and every child process is killed on drop, so a
//! failing test never leaves a holder behind.
//!
//! The Python interoperability test needs `python3` with the `filelock` package
//! (`pip install filelock`); it fails with that instruction when the module is missing.

use lockledger_harness::{
    event_names, exit_code, poll_until, run, ChildGuard, Output as Out, Proc,
};
use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_lockledger");
/// Upper bound for one short CLI command (status, clear, sql, ...).
const CMD_TIMEOUT: Duration = Duration::from_secs(20);
/// Upper bound for a `hold` to print its "held" line when the lock is free.
const HELD_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound for a process to exit after it was told to.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

// ------------------------------------------------------------------------- helpers

/// A fresh storage directory (not yet created: the binary must create it) plus the
/// environment every command of one test runs with.
struct Store {
    dir: tempfile::TempDir,
    path: PathBuf,
    env: Vec<(String, String)>,
}

impl Store {
    fn new() -> Store {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("storage");
        Store {
            dir,
            path,
            env: Vec::new(),
        }
    }

    fn with_env(mut self, key: &str, value: &str) -> Store {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    fn locks_dir(&self) -> PathBuf {
        self.path.join("locks")
    }

    fn path_str(&self) -> &str {
        self.path.to_str().expect("utf-8 temp path")
    }

    /// `lockledger --storage <store> ARGS...`, with a clean `LOCKLEDGER_*` environment.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = lockledger_harness::lockledger(Path::new(BIN), &self.path, args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs a short command to completion (bounded by [`CMD_TIMEOUT`]).
    fn run(&self, args: &[&str]) -> Out {
        run(self.command(args), CMD_TIMEOUT)
    }

    /// `status OWNER --json`, which must succeed.
    fn status(&self, owner: &str) -> Vec<Value> {
        let out = self.run(&["status", owner, "--json"]);
        assert_eq!(out.code, 0, "status {owner} failed: {out:?}");
        let v = out.json();
        v.as_array()
            .unwrap_or_else(|| panic!("status --json is not an array: {v}"))
            .clone()
    }

    /// The per-lock object of `field` in `status OWNER --json`.
    fn lock(&self, owner: &str, field: &str) -> Value {
        let locks = self.status(owner);
        find_field(&locks, field)
    }

    /// `history --owner OWNER --json`, oldest first.
    fn history(&self, owner: &str) -> Vec<Value> {
        let out = self.run(&["history", "--owner", owner, "--json", "--limit", "1000"]);
        assert_eq!(out.code, 0, "history failed: {out:?}");
        let mut v = out.json().as_array().expect("history array").clone();
        v.reverse();
        v
    }

    /// One-row, one-column `sql ... --json` result.
    fn sql_scalar(&self, sql: &str) -> Value {
        let out = self.run(&["sql", sql, "--json"]);
        assert_eq!(out.code, 0, "sql {sql:?} failed: {out:?}");
        let v = out.json();
        let rows = v["rows"].as_array().expect("rows");
        assert_eq!(rows.len(), 1, "sql {sql:?}: expected one row, got {v}");
        rows[0][0].clone()
    }

    fn sql_i64(&self, sql: &str) -> i64 {
        let v = self.sql_scalar(sql);
        v.as_i64()
            .unwrap_or_else(|| panic!("sql {sql:?}: not an integer: {v}"))
    }

    /// Full `sql ... --json` result (columns and rows) as JSON, for before/after checks.
    fn sql_dump(&self, sql: &str) -> Value {
        let out = self.run(&["sql", sql, "--json"]);
        assert_eq!(out.code, 0, "sql {sql:?} failed: {out:?}");
        out.json()
    }

    /// Starts `hold OWNER FIELD EXTRA...` and waits for its "held" line.
    fn hold(&self, owner: &str, field: &str, extra: &[&str]) -> Holder {
        let mut h = self.spawn_hold(owner, field, extra);
        h.wait_held(HELD_TIMEOUT);
        h
    }

    /// Starts `hold OWNER FIELD EXTRA...` without waiting for it to get the lock.
    fn spawn_hold(&self, owner: &str, field: &str, extra: &[&str]) -> Holder {
        let mut args = vec!["hold", owner, field];
        args.extend_from_slice(extra);
        Holder {
            proc: Proc::spawn(self.command(&args), &format!("hold {owner} {field}")),
            held: None,
        }
    }
}

fn find_field(locks: &[Value], field: &str) -> Value {
    locks
        .iter()
        .find(|l| l["field"] == field)
        .unwrap_or_else(|| panic!("no lock with field {field:?} in {locks:?}"))
        .clone()
}

/// A `lockledger hold` child.
struct Holder {
    proc: Proc,
    /// The parsed {"event":"held",...} line, once seen.
    held: Option<Value>,
}

impl Holder {
    /// Waits for the "held" line; panics (with stderr) if the process exits or prints
    /// something else first, or after `timeout`.
    fn wait_held(&mut self, timeout: Duration) -> Value {
        let started = Instant::now();
        let Some(line) = self.proc.line(timeout) else {
            let state = if self.proc.running() {
                "still running".to_string()
            } else {
                format!("exited with {}", exit_code(self.proc.exited().unwrap()))
            };
            panic!(
                "{} printed no held line within {:?} ({state}); stderr: {}",
                self.proc.name(),
                started.elapsed(),
                self.proc.stderr_text()
            );
        };
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("held line is not JSON ({e}): {line:?}"));
        assert_eq!(v["event"], "held", "unexpected first line: {line}");
        assert_eq!(
            v["pid"].as_i64(),
            Some(i64::from(self.proc.pid())),
            "held line names another pid: {line}"
        );
        assert!(
            v["token"].as_i64().is_some(),
            "held line has no token: {line}"
        );
        self.held = Some(v.clone());
        v
    }

    fn token(&self) -> i64 {
        self.held.as_ref().expect("not held yet")["token"]
            .as_i64()
            .unwrap()
    }

    fn pid(&self) -> i32 {
        self.proc.pid()
    }
}

/// Events of one grant (by token) in chronological order.
fn events_of_token(history: &[Value], field: &str, token: i64) -> Vec<Value> {
    history
        .iter()
        .filter(|e| e["field"] == field && e["token"].as_i64() == Some(token))
        .cloned()
        .collect()
}

/// Sorted file names in a directory (empty if it does not exist).
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

/// Number of migration files shipped in `migrations/`.
fn migration_count() -> i64 {
    listing(&Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations"))
        .into_iter()
        .filter(|n| n.ends_with(".sql"))
        .count() as i64
}

/// A directory listing without SQLite's own files, which come and go with connections.
fn listing_without_db(dir: &Path) -> Vec<String> {
    listing(dir)
        .into_iter()
        .filter(|n| !n.starts_with("registry.db"))
        .collect()
}

// ------------------------------------------------------------------------- 1. SIGKILL

#[test]
fn sigkilled_holder_is_holder_dead_and_safely_cleared() {
    let store = Store::new();
    let mut h = store.hold("c1", "messages", &[]);
    let (pid, token) = (h.pid(), h.token());

    let l = store.lock("c1", "messages");
    assert_eq!(l["state"], "held", "{l}");
    assert_eq!(l["kind"], "library", "{l}");
    assert_eq!(l["pid"].as_i64(), Some(i64::from(pid)), "{l}");
    assert_eq!(l["token"].as_i64(), Some(token), "{l}");
    assert_eq!(l["file"], "c1_messages.lock", "{l}");
    assert_eq!(l["clearable"], false, "a live holder is not clearable: {l}");

    let raw = store.run(&["status", "c1", "--json"]);
    assert!(!raw.stdout.contains(store.path_str()), "path leak: {raw:?}");

    h.proc.signal(libc::SIGKILL);
    assert_eq!(h.proc.wait_exit(EXIT_TIMEOUT), 128 + libc::SIGKILL);

    // Reaped, so its flock is gone: the very next status must say so.
    let l = store.lock("c1", "messages");
    assert_eq!(l["state"], "stale", "{l}");
    assert_eq!(l["stale_reason"], "holder_dead", "{l}");
    assert_eq!(l["pid"].as_i64(), Some(i64::from(pid)), "{l}");
    assert_eq!(l["token"].as_i64(), Some(token), "{l}");
    assert_eq!(l["clearable"], true, "{l}");

    let out = store.run(&["clear", "c1", "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(!out.stdout.contains(store.path_str()), "path leak: {out:?}");
    let v = out.json();
    assert_eq!(v["skipped"], serde_json::json!([]), "{v}");
    let cleared = v["cleared"].as_array().expect("cleared");
    assert_eq!(cleared.len(), 1, "{v}");
    assert_eq!(cleared[0]["field"], "messages", "{v}");
    assert_eq!(cleared[0]["file"], "c1_messages.lock", "{v}");
    assert_eq!(cleared[0]["reason"], "holder_dead", "{v}");
    assert_eq!(cleared[0]["token"].as_i64(), Some(token), "{v}");

    for l in store.status("c1") {
        assert_eq!(l["state"], "free", "after the clear: {l}");
        assert!(l["token"].is_null(), "{l}");
    }
    assert!(
        store.locks_dir().join("c1_messages.lock").exists(),
        "lock files are never deleted"
    );

    // A second clear finds nothing left to do.
    let again = store.run(&["clear", "c1", "--json"]);
    assert_eq!(again.code, 0, "{again:?}");
    assert_eq!(again.json()["cleared"], serde_json::json!([]), "{again:?}");

    let events = events_of_token(&store.history("c1"), "messages", token);
    assert_eq!(
        event_names(&events),
        ["acquired", "cleared"],
        "history of token {token}: {events:?}"
    );
    assert_eq!(events[0]["pid"].as_i64(), Some(i64::from(pid)));
    let actor = events[1]["actor"].as_str().unwrap_or("");
    assert!(actor.starts_with("cli:"), "cleared actor {actor:?}");
    assert_eq!(events[1]["reason"], "holder_dead", "{:?}", events[1]);
}

// ------------------------------------------------------------------------- 2. SIGSTOP

#[test]
fn sigstopped_holder_is_held_too_long_not_safely_clearable_and_recovers() {
    let store = Store::new().with_env("LOCKLEDGER_MAX_HOLD_MS", "1500");
    let mut h = store.hold("c2", "messages", &["--renew-ms", "200"]);
    let (pid, token) = (h.pid(), h.token());
    let l = store.lock("c2", "messages");
    assert_eq!(l["state"], "held", "{l}");

    h.proc.signal(libc::SIGSTOP);
    let stopped_at = Instant::now();
    let l = poll_until(Duration::from_secs(10), "held_too_long", || {
        let l = store.lock("c2", "messages");
        if l["state"] == "stale" && l["stale_reason"] == "held_too_long" {
            Ok(l)
        } else {
            Err(l.to_string())
        }
    });
    // The last renewal was at most 200 ms before the stop, and max_hold is 1500 ms.
    assert!(
        stopped_at.elapsed() >= Duration::from_millis(1000),
        "stale too early ({:?} after SIGSTOP): {l}",
        stopped_at.elapsed()
    );
    assert_eq!(l["pid"].as_i64(), Some(i64::from(pid)), "{l}");
    assert_eq!(l["token"].as_i64(), Some(token), "{l}");
    assert_eq!(l["clearable"], false, "{l}");

    let out = store.run(&["clear", "c2", "--json"]);
    assert_eq!(
        out.code, 3,
        "a safe clear must skip a hung live holder: {out:?}"
    );
    let v = out.json();
    assert_eq!(v["cleared"], serde_json::json!([]), "{v}");
    let skipped = v["skipped"].as_array().expect("skipped");
    assert_eq!(skipped.len(), 1, "{v}");
    assert_eq!(skipped[0]["field"], "messages", "{v}");
    assert_eq!(skipped[0]["pid"].as_i64(), Some(i64::from(pid)), "{v}");
    let reason = skipped[0]["reason"].as_str().unwrap_or("");
    assert!(reason.contains("held_too_long"), "skip reason: {reason:?}");

    // Still held: the record is untouched and the flock still excludes.
    let l = store.lock("c2", "messages");
    assert_eq!(l["token"].as_i64(), Some(token), "{l}");
    assert_eq!(l["stale_reason"], "held_too_long", "{l}");
    let second = store.run(&[
        "hold",
        "c2",
        "messages",
        "--wait-ms",
        "300",
        "--for-ms",
        "1",
    ]);
    assert_eq!(
        second.code, 4,
        "second holder must give up busy: {second:?}"
    );
    assert!(!second.stdout.contains("held"), "{second:?}");

    h.proc.signal(libc::SIGCONT);
    let l = poll_until(Duration::from_secs(5), "held again after SIGCONT", || {
        let l = store.lock("c2", "messages");
        if l["state"] == "held" {
            Ok(l)
        } else {
            Err(l.to_string())
        }
    });
    assert_eq!(l["token"].as_i64(), Some(token), "same grant: {l}");
    assert!(
        h.proc.running(),
        "holder died after SIGCONT: {}",
        h.proc.stderr_text()
    );

    h.proc.signal(libc::SIGTERM);
    assert_eq!(
        h.proc.wait_exit(EXIT_TIMEOUT),
        0,
        "stderr: {}",
        h.proc.stderr_text()
    );
    let last = h.proc.line(Duration::from_secs(2)).unwrap_or_default();
    assert!(last.contains("\"released\""), "last line {last:?}");
    assert_eq!(store.lock("c2", "messages")["state"], "free");

    let history = store.history("c2");
    let events = events_of_token(&history, "messages", token);
    let names = event_names(&events);
    assert_eq!(
        names.first().map(String::as_str),
        Some("acquired"),
        "{names:?}"
    );
    let closing: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] != "acquired" && e["event"] != "renewed")
        .collect();
    assert_eq!(closing.len(), 1, "exactly one closing event: {names:?}");
    assert_eq!(closing[0]["event"], "released", "{names:?}");
    let held_ms = closing[0]["held_ms"]
        .as_i64()
        .expect("released has held_ms");
    assert!(held_ms >= 1300, "held_ms {held_ms} < time it was held");
    assert!(
        history.iter().any(|e| e["event"] == "wait_timeout"),
        "the busy second holder left a wait_timeout event: {history:?}"
    );
}

#[test]
fn force_clear_needs_the_exact_token_and_revokes_a_live_holder() {
    let store = Store::new();
    let mut h = store.hold("c2f", "messages", &["--renew-ms", "200"]);
    let token = h.token();
    let last_token_sql = "SELECT last_token FROM locks WHERE owner='c2f' AND field='messages'";
    assert_eq!(store.sql_i64(last_token_sql), token);

    let wrong = (token + 1).to_string();
    let out = store.run(&[
        "clear", "c2f", "--force", "--field", "messages", "--token", &wrong, "--reason", "test",
    ]);
    assert_eq!(out.code, 3, "wrong token must not clear: {out:?}");
    assert!(
        out.stderr.contains(&token.to_string()),
        "the error names the current token: {out:?}"
    );
    // Without --field the token cannot name a lock: refused as well.
    let out = store.run(&[
        "clear", "c2f", "--force", "--token", &wrong, "--reason", "test",
    ]);
    assert_ne!(out.code, 0, "{out:?}");
    // Neither attempt changed anything.
    let l = store.lock("c2f", "messages");
    assert_eq!(l["state"], "held", "{l}");
    assert_eq!(l["token"].as_i64(), Some(token), "{l}");
    assert_eq!(l["revoke_requested"], false, "{l}");
    assert_eq!(store.sql_i64(last_token_sql), token);
    assert!(h.proc.running());

    let right = token.to_string();
    let out = store.run(&[
        "clear",
        "c2f",
        "--force",
        "--token",
        &right,
        "--reason",
        "test revoke",
        "--json",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let v = out.json();
    assert_eq!(v["field"], "messages", "{v}");
    assert_eq!(v["token"].as_i64(), Some(token), "{v}");
    assert_eq!(v["revocation_pending"], true, "{v}");
    let new_token = v["new_token"].as_i64().expect("new_token");
    assert!(new_token > token, "{v}");
    assert_eq!(
        store.sql_i64(last_token_sql),
        new_token,
        "the fencing token was bumped"
    );

    // The holder sees the revocation on its next renewal (every 200 ms) and exits 5.
    let code = h.proc.wait_exit(Duration::from_secs(5));
    let stderr = h.proc.stderr_text();
    assert_eq!(code, 5, "revoked holder exit code; stderr: {stderr}");
    assert!(stderr.contains("revoked"), "stderr: {stderr}");
    let l = store.lock("c2f", "messages");
    assert_eq!(l["state"], "free", "{l}");

    let history = store.history("c2f");
    let events = events_of_token(&history, "messages", token);
    assert_eq!(
        event_names(&events)
            .into_iter()
            .filter(|e| e != "renewed")
            .collect::<Vec<_>>(),
        ["acquired", "force_cleared"],
        "one closing event, no release after the revocation: {events:?}"
    );
    let fc = &events[events.len() - 1];
    assert!(
        fc["actor"].as_str().unwrap_or("").starts_with("cli:"),
        "{fc}"
    );
    assert!(
        fc["reason"].as_str().unwrap_or("").contains("test revoke"),
        "{fc}"
    );

    // The next grant is newer than the bumped token.
    let mut next = store.hold("c2f", "messages", &[]);
    assert!(next.token() > new_token, "{:?}", next.held);
    next.proc.signal(libc::SIGTERM);
    assert_eq!(next.proc.wait_exit(EXIT_TIMEOUT), 0);
}

// ------------------------------------------------------------------------- 3. Python

const PY_HOLD: &str = r#"
import sys, filelock
lock = filelock.FileLock(sys.argv[1])
lock.acquire()
print("held", flush=True)
sys.stdin.read()
lock.release()
print("released", flush=True)
"#;

const PY_TRY: &str = r#"
import sys, filelock
try:
    filelock.FileLock(sys.argv[1], timeout=0.3).acquire()
except filelock.Timeout:
    print("timeout")
else:
    print("acquired")
"#;

fn require_python_filelock() {
    let mut cmd = Command::new("python3");
    cmd.args(["-c", "import filelock"]);
    let out = match lockledger_harness::process::try_run(cmd, CMD_TIMEOUT) {
        Ok(o) => o,
        Err(e) => panic!("cannot run python3 ({e}); this test needs python3 with filelock"),
    };
    assert!(
        out.status.success(),
        "python3 cannot import filelock: run `pip install filelock` (the project's test \
         script installs it). python3 said: {}",
        out.stderr
    );
}

fn python(script: &str, lock_file: &Path) -> Command {
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(script).arg(lock_file);
    cmd
}

#[test]
fn python_filelock_holder_is_external_and_excludes_both_ways() {
    require_python_filelock();
    let store = Store::new();
    // The chat app's locks directory already exists; Python creates the lock file.
    std::fs::create_dir_all(store.locks_dir()).unwrap();
    let lock_file = store.locks_dir().join("c3_messages.lock");

    let mut py = Proc::spawn(python(PY_HOLD, &lock_file), "python FileLock holder");
    let line = py.line(HELD_TIMEOUT);
    assert_eq!(
        line.as_deref(),
        Some("held"),
        "python stderr: {}",
        py.stderr_text()
    );
    let py_pid = py.pid();

    let l = store.lock("c3", "messages");
    assert_eq!(l["state"], "held", "{l}");
    assert_eq!(l["kind"], "external", "{l}");
    assert_eq!(l["pid"].as_i64(), Some(i64::from(py_pid)), "{l}");
    let command = l["command"].as_str().unwrap_or("");
    assert!(command.contains("python"), "command {command:?}: {l}");
    assert_eq!(l["clearable"], false, "{l}");

    let out = store.run(&["clear", "c3", "--json"]);
    assert_eq!(out.code, 3, "an external holder cannot be cleared: {out:?}");
    let v = out.json();
    assert_eq!(v["cleared"], serde_json::json!([]), "{v}");
    let skipped = v["skipped"].as_array().expect("skipped");
    assert_eq!(skipped.len(), 1, "{v}");
    assert_eq!(skipped[0]["field"], "messages", "{v}");
    assert_eq!(skipped[0]["pid"].as_i64(), Some(i64::from(py_pid)), "{v}");
    let reason = skipped[0]["reason"].as_str().unwrap_or("");
    assert!(reason.contains(&py_pid.to_string()), "reason {reason:?}");
    assert!(py.running(), "the clear must not disturb python");
    let history = store.history("c3");
    assert!(
        history
            .iter()
            .any(|e| e["event"] == "observed_external" && e["pid"].as_i64() == Some(py_pid.into())),
        "{history:?}"
    );

    // lockledger waits for Python's lock ...
    let mut h = store.spawn_hold("c3", "messages", &["--wait-ms", "8000"]);
    let early = h.proc.line(Duration::from_millis(500));
    assert_eq!(early, None, "hold got in while python held the lock");
    assert!(
        h.proc.running(),
        "hold gave up early: {}",
        h.proc.stderr_text()
    );
    assert_eq!(
        h.proc.line_now(),
        None,
        "hold got in while python held the lock"
    );
    py.close_stdin();
    // ... and gets it once Python lets go.
    h.wait_held(Duration::from_secs(6));
    assert_eq!(
        py.wait_exit(EXIT_TIMEOUT),
        0,
        "python: {}",
        py.stderr_text()
    );
    assert_eq!(py.line(Duration::from_secs(2)).as_deref(), Some("released"));

    let l = store.lock("c3", "messages");
    assert_eq!(l["state"], "held", "{l}");
    assert_eq!(l["kind"], "library", "{l}");
    assert_eq!(l["pid"].as_i64(), Some(i64::from(h.pid())), "{l}");
    assert_eq!(l["token"].as_i64(), Some(h.token()), "{l}");

    // The reverse: Python cannot take the lock while lockledger holds it ...
    let out = run(python(PY_TRY, &lock_file), CMD_TIMEOUT);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.trim(), "timeout", "{out:?}");

    // ... and can once lockledger let go.
    h.proc.signal(libc::SIGTERM);
    assert_eq!(h.proc.wait_exit(EXIT_TIMEOUT), 0);
    let out = run(python(PY_TRY, &lock_file), CMD_TIMEOUT);
    assert_eq!(out.stdout.trim(), "acquired", "{out:?}");
    assert_eq!(store.lock("c3", "messages")["state"], "free");
}

// ------------------------------------------------------------------------- 4. race

#[test]
fn concurrent_holders_never_overlap_and_tokens_increase() {
    const WORKERS: usize = 4;
    const ROUNDS: usize = 10;
    let store = Store::new();
    let counter = store.dir.path().join("counter");
    std::fs::write(&counter, "0").unwrap();

    // Each worker: take the lock through a `hold` process, do a read-modify-write of the
    // counter on its behalf, note the interval, then SIGTERM it and wait for it to exit.
    let sections: Vec<(i64, Instant, Instant)> = thread::scope(|s| {
        let workers: Vec<_> = (0..WORKERS)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    for _ in 0..ROUNDS {
                        let mut h = store.spawn_hold(
                            "c4",
                            "all",
                            &["--renew-ms", "0", "--wait-ms", "30000"],
                        );
                        h.wait_held(Duration::from_secs(40));
                        let start = Instant::now();
                        let text = std::fs::read_to_string(&counter).unwrap();
                        let n: u64 = text.trim().parse().unwrap_or_else(|_| {
                            panic!(
                                "counter file reads {text:?}: another holder is writing it \
                                 inside the critical section (two holders at once)"
                            )
                        });
                        thread::sleep(Duration::from_millis(1));
                        std::fs::write(&counter, (n + 1).to_string()).unwrap();
                        let end = Instant::now();
                        h.proc.signal(libc::SIGTERM);
                        assert_eq!(
                            h.proc.wait_exit(EXIT_TIMEOUT),
                            0,
                            "{}",
                            h.proc.stderr_text()
                        );
                        mine.push((h.token(), start, end));
                    }
                    mine
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("worker panicked"))
            .collect()
    });

    let total = WORKERS * ROUNDS;
    let n: usize = std::fs::read_to_string(&counter)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(n, total, "lost updates: the lock let two holders in");

    let mut sections = sections;
    sections.sort_by_key(|&(_, start, _)| start);
    for pair in sections.windows(2) {
        let ((t1, s1, e1), (t2, s2, _)) = (pair[0], pair[1]);
        assert!(
            e1 <= s2,
            "critical sections overlap: token {t1} [{:?}..{:?}] and token {t2} starting {:?}",
            s1.duration_since(sections[0].1),
            e1.duration_since(sections[0].1),
            s2.duration_since(sections[0].1)
        );
        assert!(
            t1 < t2,
            "tokens not increasing in acquisition order: {t1} then {t2}"
        );
    }
    let mut tokens: Vec<i64> = sections.iter().map(|s| s.0).collect();
    tokens.sort_unstable();
    tokens.dedup();
    assert_eq!(tokens.len(), total, "tokens not distinct");

    let count = |event: &str| {
        store.sql_i64(&format!(
            "SELECT count(*) FROM lock_events WHERE owner='c4' AND field='all' AND event='{event}'"
        ))
    };
    assert_eq!(count("acquired"), total as i64);
    assert_eq!(count("released"), total as i64);
    assert_eq!(
        store.sql_i64(
            "SELECT count(DISTINCT token) FROM lock_events WHERE owner='c4' AND event='released'"
        ),
        total as i64
    );
    assert_eq!(store.lock("c4", "all")["state"], "free");
}

// ------------------------------------------------------------------------- 5. fresh storage

#[test]
fn many_processes_start_at_once_on_fresh_storage() {
    let migrations = migration_count();
    assert!(migrations > 0);

    for round in 0..3 {
        let store = Store::new();
        assert!(!store.path.exists());
        let mut statuses: Vec<(String, ChildGuard)> = (0..6)
            .map(|i| {
                let owner = format!("r{round}s{i}");
                let mut cmd = store.command(&["status", &owner, "--json"]);
                cmd.stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
                (owner, ChildGuard::spawn(&mut cmd).expect("spawn status"))
            })
            .collect();
        let mut holders = [
            store.spawn_hold("h1", "messages", &[]),
            store.spawn_hold("h2", "main", &["--renew-ms", "0"]),
        ];
        for (owner, child) in &mut statuses {
            let status = child
                .wait_exit(CMD_TIMEOUT)
                .unwrap_or_else(|| panic!("status {owner} hung"));
            let mut stdout = String::new();
            let mut stderr = String::new();
            child
                .stdout
                .take()
                .unwrap()
                .read_to_string(&mut stdout)
                .unwrap();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .unwrap();
            assert_eq!(exit_code(status), 0, "status {owner}: {stderr}");
            let locks: Vec<Value> = serde_json::from_str(&stdout)
                .unwrap_or_else(|e| panic!("status {owner}: {e}: {stdout}"));
            assert_eq!(locks.len(), 7, "status {owner}: {stdout}");
            assert!(locks.iter().all(|l| l["state"] == "free"), "{stdout}");
        }
        for h in &mut holders {
            h.wait_held(HELD_TIMEOUT);
        }
        assert!(
            store.sql_i64("SELECT count(*) FROM lock_events") >= 2,
            "both acquisitions recorded"
        );
        assert_eq!(
            store.sql_i64("PRAGMA user_version"),
            migrations,
            "schema version == number of migrations"
        );
        assert_eq!(store.lock("h1", "messages")["state"], "held");
        assert_eq!(store.lock("h2", "")["state"], "held");
        for h in &mut holders {
            h.proc.signal(libc::SIGTERM);
            assert_eq!(h.proc.wait_exit(EXIT_TIMEOUT), 0);
        }
    }
}

// ------------------------------------------------------------------------- 6. bad input

#[test]
fn bad_input_is_refused_with_exit_2_and_changes_nothing() {
    let store = Store::new();
    // Some real data first: one lock granted and released.
    let out = store.run(&["hold", "ok1", "messages", "--for-ms", "0"]);
    assert_eq!(out.code, 0, "{out:?}");
    let storage_before = listing_without_db(&store.path);
    let locks_before = listing(&store.locks_dir());
    assert_eq!(locks_before, ["ok1_messages.lock"]);
    let parent_before = listing(store.path.parent().unwrap());
    let locks_sql = "SELECT lock_id, namespace, owner, field, file, last_token FROM locks";
    let events_sql = "SELECT * FROM lock_events";
    let data_before = (store.sql_dump(locks_sql), store.sql_dump(events_sql));

    // A status read of a valid, never-locked owner creates nothing.
    let out = store.run(&["status", "never_locked", "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(listing(&store.locks_dir()), locks_before);

    let long = "a".repeat(300);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["status", "../x"], "owner id"),
        (vec!["status", "a/b"], "owner id"),
        (vec!["status", ""], "owner id"),
        (vec!["status", ".hidden"], "owner id"),
        (vec!["status", &long], "owner id"),
        (vec!["clear", "../x"], "owner id"),
        (
            vec!["hold", "../x", "messages", "--wait-ms", "100"],
            "owner id",
        ),
        (
            vec!["hold", "a/b", "messages", "--wait-ms", "100"],
            "owner id",
        ),
        (
            vec!["hold", &long, "messages", "--wait-ms", "100"],
            "owner id",
        ),
        (
            vec!["hold", "ok1", "nosuchfield", "--wait-ms", "100"],
            "unknown field",
        ),
        (
            vec!["hold", "ok1", "../x", "--wait-ms", "100"],
            "unknown field",
        ),
        (
            vec!["history", "--owner", "ok1", "--field", "../x"],
            "unknown field",
        ),
    ];
    for (args, expect) in &cases {
        let out = store.run(args);
        assert_eq!(out.code, 2, "{args:?}: {out:?}");
        assert!(
            out.stderr.contains(expect),
            "{args:?}: stderr should say {expect:?}: {}",
            out.stderr
        );
        assert!(
            !out.stderr.contains(store.path_str()),
            "{args:?}: stderr leaks the storage path: {}",
            out.stderr
        );
        assert!(!out.stdout.contains("held"), "{args:?}: {out:?}");
    }

    let attach = format!(
        "ATTACH DATABASE '{}' AS other",
        store.dir.path().join("attached.db").display()
    );
    let writes = [
        "DELETE FROM locks",
        "UPDATE locks SET last_token = 0",
        "INSERT INTO locks (namespace, owner, field, file, created_at) VALUES ('x','y','','y_.lock',0)",
        "SELECT 1; DELETE FROM locks",
        "DROP TABLE lock_events",
        "PRAGMA user_version = 99",
        &attach,
    ];
    for sql in writes {
        let out = store.run(&["sql", sql]);
        assert_eq!(out.code, 2, "sql {sql:?} must be refused: {out:?}");
        assert!(!out.stderr.trim().is_empty(), "sql {sql:?}: no message");
        assert!(
            !out.stderr.contains(store.path_str()),
            "sql {sql:?}: stderr leaks the storage path: {}",
            out.stderr
        );
    }

    assert_eq!(
        (store.sql_dump(locks_sql), store.sql_dump(events_sql)),
        data_before,
        "refused input changed the database"
    );
    assert_eq!(
        store.sql_i64("PRAGMA user_version"),
        migration_count(),
        "user_version unchanged"
    );
    assert_eq!(listing(&store.locks_dir()), locks_before, "locks/ changed");
    assert_eq!(
        listing_without_db(&store.path),
        storage_before,
        "storage dir changed"
    );
    assert_eq!(
        listing(store.path.parent().unwrap()),
        parent_before,
        "something was created next to the storage dir"
    );
}

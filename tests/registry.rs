//! In-process integration tests of the registry (DESIGN §2-§5).
//!
//! Each test opens its own registry on a fresh temporary storage directory, most of them
//! on a [`ManualClock`] so staleness is reached by moving time, never by sleeping. Every
//! test ends with [`assert_grants_closed_once`], which checks the history invariant of
//! `registry.rs` over the whole `lock_events` table: every `acquired` token is closed by
//! exactly one of released / expired / cleared / force_cleared / reconciled (none while
//! it is still held, only `force_cleared` while a revoked library holder still holds it).

use lockledger::clock::ManualClock;
use lockledger::policy::stale::{HolderKind, LockState, StaleReason};
use lockledger::registry::{LeaseGrant, LeaseRequest, LockReport};
use lockledger::store::history::{EventRow, HistoryQuery};
use lockledger::{AcquireOptions, Config, LockKey, Registry, RegistryError};
use lockledger_harness::{ChildGuard, Proc};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::process::Command;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

/// Start of every manual clock: 2027-01-15, far from the real clock on purpose.
const T0: i64 = 1_800_000_000_000;

const CLOSING: [&str; 5] = [
    "released",
    "expired",
    "cleared",
    "force_cleared",
    "reconciled",
];

// ------------------------------------------------------------------ helpers

fn storage() -> tempfile::TempDir {
    tempfile::tempdir().expect("temporary storage directory")
}

fn open_manual(config: Config) -> (Registry, Arc<ManualClock>) {
    let clock = ManualClock::new(T0);
    let reg = Registry::open_with_clock(config, clock.clone()).expect("open registry");
    (reg, clock)
}

fn opts(holder: &str, operation: &str, wait_ms: u64) -> AcquireOptions {
    AcquireOptions::new(holder, operation).wait(Duration::from_millis(wait_ms))
}

fn lease_req(holder: &str, ttl_ms: u64, pid: Option<i32>) -> LeaseRequest {
    LeaseRequest {
        holder: holder.to_string(),
        operation: "stream_reply".to_string(),
        pid,
        host: None,
        ttl: Some(Duration::from_millis(ttl_ms)),
        wait: Duration::from_millis(0),
    }
}

fn lease(reg: &Registry, key: &LockKey, holder: &str, ttl_ms: u64) -> LeaseGrant {
    reg.acquire_lease(key, &lease_req(holder, ttl_ms, None), &|| false)
        .expect("acquire lease")
}

/// The whole history, oldest first.
fn all_events(reg: &Registry) -> Vec<EventRow> {
    let mut events = reg
        .history(&HistoryQuery {
            limit: 10_000,
            ..Default::default()
        })
        .expect("history");
    assert!(events.len() < 10_000, "history too long for these helpers");
    events.reverse();
    events
}

/// One lock's history, oldest first.
fn events_of(reg: &Registry, key: &LockKey) -> Vec<EventRow> {
    all_events(reg)
        .into_iter()
        .filter(|e| {
            e.namespace == key.namespace() && e.owner == key.owner() && e.field == key.field()
        })
        .collect()
}

fn last_event(reg: &Registry, key: &LockKey) -> EventRow {
    events_of(reg, key)
        .pop()
        .unwrap_or_else(|| panic!("no event for {key}"))
}

/// The events of one grant (token) of one lock, by name, oldest first.
fn grant_events(reg: &Registry, key: &LockKey, token: i64) -> Vec<String> {
    events_of(reg, key)
        .into_iter()
        .filter(|e| e.token == Some(token))
        .map(|e| e.event)
        .collect()
}

fn report(reg: &Registry, key: &LockKey) -> LockReport {
    reg.status(Some(key.namespace()), key.owner())
        .expect("status")
        .locks
        .into_iter()
        .find(|l| l.field == key.field())
        .unwrap_or_else(|| panic!("status of {} lacks field {:?}", key.owner(), key.field()))
}

fn sql(reg: &Registry, query: &str) -> Vec<Vec<serde_json::Value>> {
    lockledger::store::console::run(&reg.db_path(), query, Default::default())
        .unwrap_or_else(|e| panic!("{query}: {e}"))
        .rows
}

fn count(reg: &Registry, query: &str) -> i64 {
    sql(reg, query)[0][0].as_i64().expect("an integer")
}

/// `current_locks` rows of one lock: (token, holder, kind).
fn current_rows(reg: &Registry, key: &LockKey) -> Vec<(i64, String, String)> {
    sql(
        reg,
        "SELECT namespace, owner, field, token, holder, kind FROM current_locks",
    )
    .into_iter()
    .filter(|r| r[0] == key.namespace() && r[1] == key.owner() && r[2] == key.field())
    .map(|r| {
        (
            r[3].as_i64().unwrap(),
            r[4].as_str().unwrap().to_string(),
            r[5].as_str().unwrap().to_string(),
        )
    })
    .collect()
}

/// Asserts that acquiring `key` now gives up with `Busy`; returns the message.
fn expect_busy(reg: &Registry, key: &LockKey, wait_ms: u64) -> (String, Option<LockReport>) {
    match reg.acquire(key, &opts("probe-waiter", "probe", wait_ms)) {
        Err(RegistryError::Busy { message, holder }) => (message, holder.map(|h| *h)),
        Err(e) => panic!("expected Busy for {key}, got {e:?}"),
        Ok(g) => panic!(
            "acquired {key} (token {}) while it should be held",
            g.token()
        ),
    }
}

/// The lock is free: status says so, no holder row, and a zero-wait acquire succeeds.
/// Returns the token of that probe grant (released again).
///
/// Other tests of this binary spawn processes from their own threads: a child holds a
/// copy of every descriptor of this process from its fork until its exec (`O_CLOEXEC`
/// closes them only then), so a flock let go here can stay held by such a child for that
/// moment. The lock must be free within a short deadline, not at the very same instant.
fn assert_free(reg: &Registry, key: &LockKey) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut r = report(reg, key);
    while r.state != LockState::Free && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
        r = report(reg, key);
    }
    assert_eq!(r.state, LockState::Free, "{key}: {r:?}");
    assert_eq!(r.token, None, "{key}: {r:?}");
    assert!(
        current_rows(reg, key).is_empty(),
        "{key} still has a holder row"
    );
    let g = reg
        .acquire(key, &opts("free-probe", "probe", 0))
        .unwrap_or_else(|e| panic!("{key} should be free at once: {e}"));
    let token = g.token();
    g.release().expect("release probe");
    token
}

/// The history invariant of `registry.rs`, over the whole `lock_events` table.
/// With `history_pruned`, closing events whose `acquired` row was pruned are allowed.
fn check_grants(reg: &Registry, history_pruned: bool) {
    type Grant = (String, String, String, i64);
    let mut acquired: HashMap<Grant, usize> = HashMap::new();
    let mut closings: HashMap<Grant, Vec<String>> = HashMap::new();
    for e in all_events(reg) {
        let is_closing = CLOSING.contains(&e.event.as_str());
        let Some(token) = e.token else {
            assert!(
                e.event != "acquired" && !is_closing,
                "event without a token: {e:?}"
            );
            continue;
        };
        let grant = (e.namespace.clone(), e.owner.clone(), e.field.clone(), token);
        if e.event == "acquired" {
            *acquired.entry(grant).or_default() += 1;
        } else if is_closing {
            closings.entry(grant).or_default().push(e.event.clone());
        }
    }
    let mut current: HashMap<Grant, bool> = HashMap::new();
    for r in sql(
        reg,
        "SELECT namespace, owner, field, token, revoked_at IS NOT NULL FROM current_locks",
    ) {
        let grant = (
            r[0].as_str().unwrap().to_string(),
            r[1].as_str().unwrap().to_string(),
            r[2].as_str().unwrap().to_string(),
            r[3].as_i64().unwrap(),
        );
        current.insert(grant, r[4].as_i64() == Some(1));
    }
    for (grant, n) in &acquired {
        assert_eq!(*n, 1, "token granted {n} times: {grant:?}");
        let closed = closings.get(grant).map(Vec::as_slice).unwrap_or(&[]);
        match current.get(grant) {
            Some(false) => assert!(
                closed.is_empty(),
                "{grant:?} is still held but was closed by {closed:?}"
            ),
            Some(true) => assert_eq!(
                closed,
                ["force_cleared".to_string()],
                "{grant:?} is revoked but still held"
            ),
            None => assert_eq!(
                closed.len(),
                1,
                "{grant:?} must be closed exactly once, got {closed:?}"
            ),
        }
    }
    if !history_pruned {
        for grant in closings.keys() {
            assert!(
                acquired.contains_key(grant),
                "closing event(s) {:?} for a grant never acquired: {grant:?}",
                closings[grant]
            );
        }
        for grant in current.keys() {
            assert!(
                acquired.contains_key(grant),
                "holder row without an acquired event: {grant:?}"
            );
        }
    }
}

fn assert_grants_closed_once(reg: &Registry) {
    check_grants(reg, false);
}

/// A pid that belonged to a process which has exited and been reaped.
fn dead_pid() -> i32 {
    let mut child = ChildGuard::spawn(&mut Command::new("true")).expect("spawn true");
    let pid = child.pid();
    child
        .wait_exit(Duration::from_secs(10))
        .expect("`true` did not exit within 10 s");
    pid
}

struct NoopWake;

impl Wake for NoopWake {
    fn wake(self: Arc<Self>) {}
}

fn poll_once<F: Future>(fut: Pin<&mut F>) -> Poll<F::Output> {
    let waker = Waker::from(Arc::new(NoopWake));
    let mut cx = Context::from_waker(&waker);
    fut.poll(&mut cx)
}

fn lock_files(dir: &Path) -> Vec<(String, u64)> {
    let mut files: Vec<(String, u64)> = std::fs::read_dir(dir.join("locks"))
        .expect("locks dir")
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .collect();
    files.sort();
    files
}

// ------------------------------------------------------------------ 1. library guard

#[test]
fn library_guard_commits_before_returning_and_releases_on_every_path() {
    let dir = storage();
    let (reg, clock) = open_manual(Config::defaults(dir.path()));
    let key = reg.key(None, "c1", "messages").unwrap();
    let me = std::process::id() as i32;

    // acquire: holder row and `acquired` event are committed when acquire returns.
    let g = reg
        .acquire(&key, &opts("worker-a", "send_message", 1000))
        .unwrap();
    let token = g.token();
    let acquired = last_event(&reg, &key);
    assert_eq!(acquired.event, "acquired");
    assert_eq!(acquired.token, Some(token));
    assert_eq!(acquired.holder.as_deref(), Some("worker-a"));
    assert_eq!(acquired.operation.as_deref(), Some("send_message"));
    assert_eq!(acquired.pid, Some(me));
    assert_eq!(acquired.at, T0);
    assert_eq!(
        current_rows(&reg, &key),
        vec![(token, "worker-a".to_string(), "library".to_string())]
    );
    let r = report(&reg, &key);
    assert_eq!(r.state, LockState::Held);
    assert_eq!(r.kind, Some(HolderKind::Library));
    assert_eq!(r.token, Some(token));
    assert_eq!(r.pid, Some(me));
    assert_eq!(r.file, "c1_messages.lock");
    expect_busy(&reg, &key, 0);

    // release: a `released` event with the time held.
    clock.advance_ms(1234);
    g.release().unwrap();
    let released = last_event(&reg, &key);
    assert_eq!(released.event, "released");
    assert_eq!(released.token, Some(token));
    assert_eq!(released.held_ms, Some(1234));
    assert!(current_rows(&reg, &key).is_empty());
    assert_free(&reg, &key);

    // 1. normal end of scope.
    let scoped_token = {
        let g = reg.acquire(&key, &opts("scoped", "op", 1000)).unwrap();
        assert_eq!(report(&reg, &key).state, LockState::Held);
        g.token()
    };
    assert_eq!(
        grant_events(&reg, &key, scoped_token),
        ["acquired", "released"]
    );
    assert_free(&reg, &key);

    // 2. an early `?` return.
    fn work_then_fail(reg: &Registry, key: &LockKey) -> Result<i64, Box<dyn std::error::Error>> {
        let g = reg.acquire(key, &opts("early-return", "op", 1000))?;
        let _n: i32 = "not a number".parse()?;
        Ok(g.token())
    }
    assert!(work_then_fail(&reg, &key).is_err());
    let early = events_of(&reg, &key)
        .into_iter()
        .rev()
        .find(|e| e.event == "acquired" && e.holder.as_deref() == Some("early-return"))
        .expect("the early-return grant was recorded");
    assert_eq!(
        grant_events(&reg, &key, early.token.unwrap()),
        ["acquired", "released"]
    );
    assert_free(&reg, &key);

    // 3. panic unwinding.
    let reg2 = reg.clone();
    let key2 = key.clone();
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let _g = reg2.acquire(&key2, &opts("panicker", "op", 1000)).unwrap();
        panic!("simulated failure while holding the lock (expected by the test)");
    }));
    assert!(unwound.is_err());
    let panicked = events_of(&reg, &key)
        .into_iter()
        .rev()
        .find(|e| e.event == "acquired" && e.holder.as_deref() == Some("panicker"))
        .expect("the panicking grant was recorded");
    assert_eq!(
        grant_events(&reg, &key, panicked.token.unwrap()),
        ["acquired", "released"]
    );
    assert_free(&reg, &key);

    // 4a. a future that took the lock, polled once and then dropped (a cancelled stream).
    let (reg3, key3) = (reg.clone(), key.clone());
    let mut fut = Box::pin(async move {
        let g = reg3.acquire(&key3, &opts("stream", "stream_reply", 1000))?;
        std::future::pending::<()>().await;
        g.release()
    });
    assert!(poll_once(fut.as_mut()).is_pending());
    let r = report(&reg, &key);
    assert_eq!(r.state, LockState::Held);
    assert_eq!(r.holder.as_deref(), Some("stream"));
    let stream_token = r.token.unwrap();
    drop(fut);
    assert_eq!(
        grant_events(&reg, &key, stream_token),
        ["acquired", "released"]
    );
    assert_free(&reg, &key);

    // 4b. a future that owns a guard and is dropped without ever being polled.
    let g = reg
        .acquire(&key, &opts("never-polled", "op", 1000))
        .unwrap();
    let unpolled_token = g.token();
    let fut = async move {
        std::future::pending::<()>().await;
        g.release()
    };
    assert_eq!(report(&reg, &key).state, LockState::Held);
    drop(fut);
    assert_eq!(
        grant_events(&reg, &key, unpolled_token),
        ["acquired", "released"]
    );
    assert_free(&reg, &key);

    assert_grants_closed_once(&reg);
}

// ------------------------------------------------------------------ 2. tokens, Busy

#[test]
fn tokens_increase_across_reacquisition_and_reopening_and_a_second_instance_gets_busy() {
    let dir = storage();
    let mut tokens = Vec::new();
    {
        let reg = Registry::open(Config::defaults(dir.path())).unwrap();
        let key = reg.key(None, "c1", "messages").unwrap();
        for _ in 0..3 {
            let g = reg.acquire(&key, &opts("first", "op", 1000)).unwrap();
            tokens.push(g.token());
            g.release().unwrap();
        }
        let l = lease(&reg, &key, "client", 30_000);
        tokens.push(l.token);
        reg.release_lease(&l.lease_id).unwrap();
        assert_grants_closed_once(&reg);
    }
    // A new registry on the same storage directory continues the sequence.
    let reg = Registry::open(Config::defaults(dir.path())).unwrap();
    let key = reg.key(None, "c1", "messages").unwrap();
    let g = reg
        .acquire(&key, &opts("reopened", "send_message", 1000))
        .unwrap();
    tokens.push(g.token());
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "tokens must strictly increase: {tokens:?}"
    );

    // A second, separate instance in this process is excluded by the kernel lock.
    let other = Registry::open(Config::defaults(dir.path())).unwrap();
    let started = Instant::now();
    let err = other
        .acquire(&key, &opts("second", "summarise", 300))
        .expect_err("the lock is held by the first instance");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(290),
        "gave up early: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(5),
        "waited far too long: {waited:?}"
    );
    let RegistryError::Busy { message, holder } = &err else {
        panic!("expected Busy, got {err:?}");
    };
    assert!(message.contains("c1/messages"), "{message}");
    assert!(
        message.contains(&format!("held by pid {}", std::process::id())),
        "{message}"
    );
    assert_eq!(err.to_string(), *message);
    let holder = holder.as_ref().expect("Busy names the holder");
    assert_eq!(holder.state, LockState::Held);
    assert_eq!(holder.token, Some(g.token()));
    assert_eq!(holder.holder.as_deref(), Some("reopened"));

    let timeout = last_event(&other, &key);
    assert_eq!(timeout.event, "wait_timeout");
    assert_eq!(timeout.holder.as_deref(), Some("second"));
    assert_eq!(timeout.operation.as_deref(), Some("summarise"));
    assert!(
        timeout
            .reason
            .as_deref()
            .unwrap_or("")
            .starts_with("waited "),
        "{timeout:?}"
    );

    // The second instance sees the first's grant as current, and gets the next token.
    assert!(other.fence_check(&key, g.token()).unwrap().current);
    let last = g.token();
    g.release().unwrap();
    let g2 = other
        .acquire(&key, &opts("second", "summarise", 0))
        .unwrap();
    assert!(g2.token() > last);
    assert!(!reg.fence_check(&key, last).unwrap().current);
    g2.release().unwrap();
    assert_grants_closed_once(&reg);
}

// ------------------------------------------------------------------ 3. leases

/// Busy answers folded into one row across several flushes: the row's reason describes
/// all of them (its total count and the longest wait), not the last batch.
#[test]
fn a_folded_busy_row_describes_every_answer_it_stands_for() {
    let dir = storage();
    let (reg, _clock) = open_manual(Config::defaults(dir.path()));
    let key = reg.key(None, "c-busy", "messages").unwrap();
    let _held = reg.acquire(&key, &opts("writer", "save", 0)).unwrap();
    let busy_row = || {
        let rows: Vec<EventRow> = events_of(&reg, &key)
            .into_iter()
            .filter(|e| e.event == "wait_timeout")
            .collect();
        assert_eq!(rows.len(), 1, "one folded row: {rows:?}");
        rows[0].clone()
    };
    // A blocking acquire writes its busy answer as it gives up: each is its own flush.
    let _ = expect_busy(&reg, &key, 0);
    reg.flush_busy().unwrap();
    let row = busy_row();
    assert_eq!(row.count, 1);
    assert!(
        row.reason.as_deref().unwrap().starts_with("waited "),
        "{row:?}"
    );
    // A longer wait, then three quick answers.
    let _ = expect_busy(&reg, &key, 60);
    for _ in 0..3 {
        let _ = expect_busy(&reg, &key, 0);
    }
    reg.flush_busy().unwrap();
    let row = busy_row();
    assert_eq!(row.count, 5, "{row:?}");
    let reason = row.reason.clone().unwrap();
    assert!(reason.contains("5 busy answers"), "{reason}");
    let longest: u64 = reason
        .strip_prefix("waited up to ")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{reason}"));
    assert!(
        longest >= 60,
        "the longest wait of the row, not of the last batch: {reason}"
    );
}

#[test]
fn expired_lease_stays_stale_without_auto_expire_and_a_safe_clear_frees_it() {
    let dir = storage();
    let mut config = Config::defaults(dir.path());
    config.auto_expire = false;
    let (reg, clock) = open_manual(config);
    let key = reg.key(None, "c3", "messages").unwrap();

    let l = lease(&reg, &key, "flask-client", 1000);
    assert_eq!(l.expires_at_ms, T0 + 1000);
    let r = report(&reg, &key);
    assert_eq!(
        (r.state, r.kind),
        (LockState::Held, Some(HolderKind::Lease))
    );
    assert_eq!(r.token, Some(l.token));
    assert!(!r.clearable);

    clock.advance_ms(999);
    assert_eq!(report(&reg, &key).state, LockState::Held);
    clock.advance_ms(1);
    let r = report(&reg, &key);
    assert_eq!(r.state, LockState::Stale);
    assert_eq!(r.stale_reason, Some(StaleReason::LeaseExpired));
    assert!(r.clearable);

    // No automatic expiry: the reaper leaves it, and it stays stale.
    assert_eq!(reg.reap().unwrap(), Vec::<String>::new());
    assert_eq!(
        report(&reg, &key).stale_reason,
        Some(StaleReason::LeaseExpired)
    );
    assert_eq!(reg.leases_held().len(), 1);
    expect_busy(&reg, &key, 0);
    // Renewing after expiry is refused.
    assert!(matches!(
        reg.renew_lease(&l.lease_id),
        Err(RegistryError::LeaseGone { .. })
    ));

    let out = reg.clear(None, "c3", None, "tester").unwrap();
    assert!(out.skipped.is_empty(), "{out:?}");
    assert_eq!(out.cleared.len(), 1, "{out:?}");
    assert_eq!(out.cleared[0].field, "messages");
    assert_eq!(out.cleared[0].reason, StaleReason::LeaseExpired);
    assert_eq!(out.cleared[0].token, l.token);
    let cleared = last_event(&reg, &key);
    assert_eq!(cleared.event, "cleared");
    assert_eq!(cleared.token, Some(l.token));
    assert_eq!(cleared.actor.as_deref(), Some("tester"));
    assert_eq!(cleared.reason.as_deref(), Some("lease_expired"));
    assert!(reg.leases_held().is_empty());

    // The handle was closed: the lock can be taken again at once.
    let next = assert_free(&reg, &key);
    assert!(next > l.token);
    assert!(matches!(
        reg.renew_lease(&l.lease_id),
        Err(RegistryError::LeaseGone { .. })
    ));
    assert!(matches!(
        reg.release_lease(&l.lease_id),
        Err(RegistryError::LeaseGone { .. })
    ));
    assert_grants_closed_once(&reg);
}

#[test]
fn leases_renew_and_auto_expire_through_the_reaper() {
    let dir = storage();
    let (reg, clock) = open_manual(Config::defaults(dir.path()));
    assert!(reg.config().auto_expire);
    let key = reg.key(None, "c3", "messages").unwrap();

    let l = lease(&reg, &key, "flask-client", 1000);
    clock.advance_ms(600);
    let renewed = reg.renew_lease(&l.lease_id).unwrap();
    assert_eq!(renewed.token, l.token);
    assert_eq!(renewed.expires_at_ms, T0 + 1600);
    clock.advance_ms(999); // T0 + 1599: past the first expiry, before the renewed one
    assert_eq!(report(&reg, &key).state, LockState::Held);
    assert!(reg.reap().unwrap().is_empty());
    clock.advance_ms(1); // T0 + 1600
    let r = report(&reg, &key);
    assert_eq!(
        (r.state, r.stale_reason),
        (LockState::Stale, Some(StaleReason::LeaseExpired))
    );

    assert_eq!(reg.reap().unwrap(), vec!["c3/messages".to_string()]);
    let expired = last_event(&reg, &key);
    assert_eq!(expired.event, "expired");
    assert_eq!(expired.token, Some(l.token));
    assert!(
        expired
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("lease_expired"),
        "{expired:?}"
    );
    assert!(reg.leases_held().is_empty());
    assert!(
        reg.reap().unwrap().is_empty(),
        "reaping twice ends nothing more"
    );
    assert!(matches!(
        reg.renew_lease(&l.lease_id),
        Err(RegistryError::LeaseGone { .. })
    ));
    assert_free(&reg, &key);

    // Renewal and release of a released lease fail with LeaseGone.
    let l2 = lease(&reg, &key, "flask-client", 1000);
    clock.advance_ms(250);
    reg.release_lease(&l2.lease_id).unwrap();
    let released = last_event(&reg, &key);
    assert_eq!(
        (released.event.as_str(), released.token, released.held_ms),
        ("released", Some(l2.token), Some(250))
    );
    assert!(matches!(
        reg.renew_lease(&l2.lease_id),
        Err(RegistryError::LeaseGone { .. })
    ));
    assert!(matches!(
        reg.release_lease(&l2.lease_id),
        Err(RegistryError::LeaseGone { .. })
    ));
    assert_free(&reg, &key);
    assert_grants_closed_once(&reg);
}

#[test]
fn a_lease_ends_when_its_client_process_dies() {
    let dir = storage();
    let mut config = Config::defaults(dir.path());
    config.auto_expire = false; // the client's death alone must end it
    let (reg, _clock) = open_manual(config);
    let key = reg.key(None, "c3", "memory").unwrap();
    let mut child = ChildGuard::spawn(Command::new("sleep").arg("30")).expect("spawn sleep");

    let l = reg
        .acquire_lease(
            &key,
            &lease_req("py-client", 60_000, Some(child.pid())),
            &|| false,
        )
        .unwrap();
    let r = report(&reg, &key);
    assert_eq!(r.state, LockState::Held);
    assert_eq!(r.pid, Some(child.pid()));
    assert!(reg.reap().unwrap().is_empty(), "the client is alive");

    child.kill_and_wait();
    let r = report(&reg, &key);
    assert_eq!(
        (r.state, r.stale_reason),
        (LockState::Stale, Some(StaleReason::HolderDead))
    );
    assert_eq!(reg.reap().unwrap(), vec!["c3/memory".to_string()]);
    let ended = last_event(&reg, &key);
    assert_eq!(ended.event, "expired");
    assert_eq!(ended.token, Some(l.token));
    assert!(
        ended
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("holder_dead"),
        "{ended:?}"
    );
    assert!(reg.leases_held().is_empty());
    assert_free(&reg, &key);
    assert_grants_closed_once(&reg);
}

// ------------------------------------------------------------------ 4. held_too_long

#[test]
fn a_hung_library_holder_is_held_too_long_but_never_safely_cleared() {
    let dir = storage();
    let (reg, clock) = open_manual(Config::defaults(dir.path()));
    let max_hold = reg.config().max_hold.as_millis() as i64;
    let key = reg.key(None, "c4", "messages").unwrap();
    let g = reg
        .acquire(&key, &opts("worker", "send_message", 1000))
        .unwrap();

    // A live holder within its limits is skipped by a safe clear.
    let out = reg.clear(None, "c4", None, "tester").unwrap();
    assert!(out.cleared.is_empty(), "{out:?}");
    assert_eq!(out.skipped.len(), 1, "{out:?}");
    assert!(out.skipped[0].reason.contains("live holder"), "{out:?}");

    clock.advance_ms(max_hold);
    assert_eq!(
        report(&reg, &key).state,
        LockState::Held,
        "max_hold itself is not too long"
    );
    clock.advance_ms(1);
    let r = report(&reg, &key);
    assert_eq!(
        (r.state, r.stale_reason, r.kind),
        (
            LockState::Stale,
            Some(StaleReason::HeldTooLong),
            Some(HolderKind::Library)
        )
    );
    assert!(!r.clearable);

    let out = reg.clear(None, "c4", None, "tester").unwrap();
    assert!(out.cleared.is_empty(), "{out:?}");
    assert_eq!(out.skipped.len(), 1, "{out:?}");
    assert_eq!(out.skipped[0].field, "messages");
    assert!(out.skipped[0].reason.contains("held_too_long"), "{out:?}");
    assert_eq!(out.skipped[0].holder.as_deref(), Some("worker"));

    // Still held, for real and on record.
    expect_busy(&reg, &key, 50);
    assert_eq!(current_rows(&reg, &key).len(), 1);
    assert!(reg.fence_check(&key, g.token()).unwrap().current);
    assert_eq!(grant_events(&reg, &key, g.token()), ["acquired"]);

    // A renewal shows it is alive again.
    g.renew().unwrap();
    let r = report(&reg, &key);
    assert_eq!((r.state, r.stale_reason), (LockState::Held, None));
    assert_eq!(
        r.renewed_at.as_deref(),
        Some(lockledger::clock::rfc3339(T0 + max_hold + 1).as_str())
    );
    assert_eq!(last_event(&reg, &key).event, "renewed");
    g.release().unwrap();
    assert_free(&reg, &key);
    assert_grants_closed_once(&reg);
}

// ------------------------------------------------------------------ 5. compare by token

#[test]
fn a_safe_clear_with_an_old_token_skips_a_regranted_lock() {
    let dir = storage();
    let mut config = Config::defaults(dir.path());
    config.auto_expire = false;
    let (reg, clock) = open_manual(config);
    let key = reg.key(None, "c5", "messages").unwrap();

    // The user looks at an expired lease with token t1...
    let l1 = lease(&reg, &key, "client-1", 1000);
    clock.advance_ms(1000);
    let shown = report(&reg, &key);
    assert_eq!(shown.stale_reason, Some(StaleReason::LeaseExpired));
    assert_eq!(shown.token, Some(l1.token));
    // ...meanwhile someone else clears it and a new lease takes it, and expires too.
    assert_eq!(
        reg.clear(None, "c5", None, "someone-else")
            .unwrap()
            .cleared
            .len(),
        1
    );
    let l2 = lease(&reg, &key, "client-2", 1000);
    assert!(l2.token > l1.token);
    clock.advance_ms(1000);
    assert!(report(&reg, &key).clearable);

    // The user's clear names t1: the lock changed since, so it is skipped.
    let tokens = BTreeMap::from([("messages".to_string(), l1.token)]);
    let out = reg.clear(None, "c5", Some(tokens), "user").unwrap();
    assert!(out.cleared.is_empty(), "{out:?}");
    assert_eq!(out.skipped.len(), 1, "{out:?}");
    assert_eq!(out.skipped[0].field, "messages");
    assert!(
        out.skipped[0].reason.contains("changed since you looked"),
        "{out:?}"
    );
    let r = report(&reg, &key);
    assert_eq!(r.token, Some(l2.token));
    assert_eq!(r.state, LockState::Stale);
    assert_eq!(reg.leases_held().len(), 1);
    assert_eq!(last_event(&reg, &key).event, "acquired");

    // With the current token it is cleared.
    let tokens = BTreeMap::from([("messages".to_string(), l2.token)]);
    let out = reg.clear(None, "c5", Some(tokens), "user").unwrap();
    assert_eq!(out.cleared.len(), 1, "{out:?}");
    assert_eq!(out.cleared[0].token, l2.token);
    assert_free(&reg, &key);

    // The main lock, named `main` in the token map.
    let main = reg.key(None, "c5", "").unwrap();
    let l3 = lease(&reg, &main, "client-3", 1000);
    clock.advance_ms(1000);
    let wrong = BTreeMap::from([("main".to_string(), l3.token - 1)]);
    let out = reg.clear(None, "c5", Some(wrong), "user").unwrap();
    assert!(out.cleared.is_empty(), "{out:?}");
    assert_eq!(out.skipped.len(), 1, "{out:?}");
    assert_eq!(out.skipped[0].field, "");
    assert!(out.skipped[0].reason.contains("changed since you looked"));
    let right = BTreeMap::from([("main".to_string(), l3.token)]);
    let out = reg.clear(None, "c5", Some(right), "user").unwrap();
    assert_eq!(out.cleared.len(), 1, "{out:?}");
    assert_eq!(
        (out.cleared[0].field.as_str(), out.cleared[0].file.as_str()),
        ("", "c5_.lock")
    );
    assert_free(&reg, &main);
    assert_grants_closed_once(&reg);
}

// ------------------------------------------------------------------ 6. force clear

#[test]
fn force_clear_needs_the_exact_token_and_revokes_leases_and_library_holders() {
    let dir = storage();
    let (reg, _clock) = open_manual(Config::defaults(dir.path()));
    let key = reg.key(None, "c6", "messages").unwrap();

    // Never held: nothing to force-clear.
    assert!(matches!(
        reg.force_clear(&key, 1, "nothing there", "admin"),
        Err(RegistryError::NotHeld { .. })
    ));

    // A live lease.
    let l = lease(&reg, &key, "flask-client", 30_000);
    match reg.force_clear(&key, l.token + 1, "wrong token", "admin") {
        Err(RegistryError::TokenMismatch { given, current, .. }) => {
            assert_eq!((given, current), (l.token + 1, l.token));
        }
        other => panic!("expected TokenMismatch, got {other:?}"),
    }
    assert!(matches!(
        reg.force_clear(&key, l.token, "   ", "admin"),
        Err(RegistryError::BadRequest(_))
    ));
    assert_eq!(
        report(&reg, &key).state,
        LockState::Held,
        "failed attempts change nothing"
    );

    let fc = reg
        .force_clear(&key, l.token, "stream stuck since lunch", "admin-alice")
        .unwrap();
    assert_eq!(fc.token, l.token);
    assert!(fc.new_token > l.token);
    assert!(!fc.revocation_pending);
    assert!(reg.leases_held().is_empty());
    let ev = last_event(&reg, &key);
    assert_eq!(ev.event, "force_cleared");
    assert_eq!(ev.token, Some(l.token));
    assert_eq!(ev.actor.as_deref(), Some("admin-alice"));
    assert!(
        ev.reason
            .as_deref()
            .unwrap_or("")
            .contains("stream stuck since lunch"),
        "{ev:?}"
    );
    let fence = reg.fence_check(&key, l.token).unwrap();
    assert!(!fence.current);
    assert!(fence.newest_token > l.token);
    assert!(matches!(
        reg.renew_lease(&l.lease_id),
        Err(RegistryError::LeaseGone { .. })
    ));
    // The service closed the lease's handle: someone else gets the lock at once.
    let g = reg.acquire(&key, &opts("next", "op", 0)).unwrap();
    assert!(g.token() > fc.new_token);
    let fence = reg.fence_check(&key, g.token()).unwrap();
    assert!(fence.current);
    assert_eq!(fence.newest_token, g.token());
    g.release().unwrap();

    // A live library holder: asked to let go.
    let mem = reg.key(None, "c6", "memory").unwrap();
    let g = reg
        .acquire(&mem, &opts("hung-worker", "summarise", 1000))
        .unwrap();
    let t = g.token();
    let fc = reg
        .force_clear(&mem, t, "hung worker", "admin-bob")
        .unwrap();
    assert!(fc.revocation_pending);
    assert_eq!(fc.token, t);
    assert!(fc.new_token > t);
    let r = report(&reg, &mem);
    assert_eq!(r.state, LockState::Held, "it still holds the flock");
    assert!(r.revoke_requested);
    match g.renew() {
        Err(RegistryError::Revoked { by, .. }) => assert_eq!(by, "admin-bob"),
        other => panic!("expected Revoked, got {other:?}"),
    }
    let fence = reg.fence_check(&mem, t).unwrap();
    assert!(!fence.current);
    assert_eq!(fence.newest_token, fc.new_token);
    expect_busy(&reg, &mem, 0);
    assert!(matches!(
        reg.force_clear(&mem, t, "again", "admin-bob"),
        Err(RegistryError::NotClearable { .. })
    ));
    let out = reg.clear(None, "c6", None, "tester").unwrap();
    assert!(out.cleared.is_empty(), "{out:?}");
    assert_eq!(grant_events(&reg, &mem, t), ["acquired", "force_cleared"]);
    check_grants(&reg, false);

    // Letting go frees the lock and writes no second closing event.
    drop(g);
    assert_eq!(grant_events(&reg, &mem, t), ["acquired", "force_cleared"]);
    let next = assert_free(&reg, &mem);
    assert!(next > fc.new_token);

    // Force clear of a free lock.
    assert!(matches!(
        reg.force_clear(&mem, next, "free", "admin"),
        Err(RegistryError::NotHeld { .. })
    ));
    assert_grants_closed_once(&reg);
}

// ------------------------------------------------------------------ 7. reconcile

/// Starts `lockledger hold OWNER FIELD` and waits for its "held" line.
fn spawn_holder(dir: &Path, owner: &str, field: &str) -> (Proc, serde_json::Value) {
    let cmd = lockledger_harness::lockledger(
        Path::new(env!("CARGO_BIN_EXE_lockledger")),
        dir,
        &[
            "hold",
            owner,
            field,
            "--holder",
            "cli-child",
            "--renew-ms",
            "0",
        ],
    );
    let child = Proc::spawn(cmd, "lockledger hold");
    let line = child.line(Duration::from_secs(20)).unwrap_or_else(|| {
        panic!(
            "`lockledger hold` printed nothing within 20 s; stderr: {}",
            child.stderr_text()
        )
    });
    let held: serde_json::Value =
        serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{line:?}: {e}"));
    assert_eq!(held["event"], "held", "{line}");
    (child, held)
}

#[test]
fn reconcile_repairs_a_holder_killed_with_sigkill_once() {
    let dir = storage();
    let reg = Registry::open(Config::defaults(dir.path())).unwrap();
    let key = reg.key(None, "c7", "messages").unwrap();

    let (mut child, held) = spawn_holder(dir.path(), "c7", "messages");
    let token = held["token"].as_i64().expect("token");
    let pid = held["pid"].as_i64().expect("pid") as i32;
    assert_eq!(pid, child.pid());
    let r = report(&reg, &key);
    assert_eq!(
        (r.state, r.kind),
        (LockState::Held, Some(HolderKind::Library))
    );
    assert_eq!((r.pid, r.token), (Some(pid), Some(token)));
    let (message, _) = expect_busy(&reg, &key, 0);
    assert!(message.contains(&format!("held by pid {pid}")), "{message}");

    child.kill();
    let r = report(&reg, &key);
    assert_eq!(
        (r.state, r.stale_reason),
        (LockState::Stale, Some(StaleReason::HolderDead))
    );
    assert!(r.clearable);

    let rep = reg.reconcile("tester").unwrap();
    assert_eq!(rep.reconciled, vec!["c7/messages".to_string()]);
    let ev = last_event(&reg, &key);
    assert_eq!(ev.event, "reconciled");
    assert_eq!(ev.token, Some(token));
    assert_eq!(ev.actor.as_deref(), Some("tester"));
    let reason = ev.reason.unwrap_or_default();
    assert!(reason.contains("holder_dead"), "{reason}");
    assert!(reason.contains(&format!("pid {pid}")), "{reason}");
    assert_eq!(report(&reg, &key).state, LockState::Free);

    // Idempotent: nothing more to do, nothing written.
    let before = all_events(&reg).len();
    let rep = reg.reconcile("tester").unwrap();
    assert!(rep.reconciled.is_empty(), "{rep:?}");
    assert_eq!(all_events(&reg).len(), before);

    assert!(assert_free(&reg, &key) > token);
    assert_grants_closed_once(&reg);
}

#[test]
fn reconcile_repairs_a_record_left_by_a_dead_pid() {
    let dir = storage();
    let reg = Registry::open(Config::defaults(dir.path())).unwrap();
    let key = reg.key(None, "c7b", "messages").unwrap();
    let dead = dead_pid();
    let now = reg.now_ms();

    // What a process that died between its commit and its release leaves behind.
    {
        let conn = rusqlite::Connection::open(reg.db_path()).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        conn.execute(
            "INSERT INTO locks (namespace, owner, field, file, last_token, created_at)
             VALUES ('conversation', 'c7b', 'messages', 'c7b_messages.lock', 4, ?1)",
            [now],
        )
        .unwrap();
        let lock_id = conn.last_insert_rowid();
        // New history rows go to the inbox, numbered above every row of the log.
        let event_id: i64 = conn
            .query_row(
                "INSERT INTO event_inbox (event_id, at, lock_id, namespace, owner, field, event,
                     token, pid, host, holder, operation)
                 VALUES ((SELECT coalesce(max(event_id), 0) + 1 FROM lock_events), ?1, ?2,
                         'conversation', 'c7b', 'messages', 'acquired', 4, ?3, 'h', 'ghost', 'op')
                 RETURNING event_id",
                rusqlite::params![now, lock_id, dead],
                |r| r.get(0),
            )
            .unwrap();
        conn.execute(
            "INSERT INTO holders (lock_id, token, kind, holder, operation, pid, host, locker_pid,
                 acquired_at, renewed_at, acquired_event)
             VALUES (?1, 4, 'library', 'ghost', 'op', ?2, 'h', ?2, ?3, ?3, ?4)",
            rusqlite::params![lock_id, dead, now, event_id],
        )
        .unwrap();
    }
    let r = report(&reg, &key);
    assert_eq!(
        (r.state, r.stale_reason),
        (LockState::Stale, Some(StaleReason::HolderDead))
    );

    let rep = reg.reconcile("tester").unwrap();
    assert_eq!(rep.reconciled, vec!["c7b/messages".to_string()]);
    let ev = last_event(&reg, &key);
    assert_eq!((ev.event.as_str(), ev.token), ("reconciled", Some(4)));
    assert!(ev
        .reason
        .unwrap_or_default()
        .contains(&format!("pid {dead}")));
    let before = all_events(&reg).len();
    assert!(reg.reconcile("tester").unwrap().reconciled.is_empty());
    assert_eq!(all_events(&reg).len(), before);
    assert_eq!(assert_free(&reg, &key), 5);
    assert_grants_closed_once(&reg);
}

// ------------------------------------------------------------------ 8. status is read-only

#[test]
fn status_list_and_reads_change_nothing() {
    let dir = storage();
    let (reg, clock) = open_manual(Config::defaults(dir.path()));
    let held = reg.key(None, "s8", "messages").unwrap();
    let expiring = reg.key(None, "s8", "memory").unwrap();
    let released = reg.key(None, "s8", "all").unwrap();
    let g = reg.acquire(&held, &opts("worker", "op", 1000)).unwrap();
    let _l = lease(&reg, &expiring, "client", 1000);
    reg.acquire(&released, &opts("w", "op", 1000))
        .unwrap()
        .release()
        .unwrap();
    clock.advance_ms(2000); // the lease is now expired (auto_expire is on, but nobody reaps)

    let watcher = rusqlite::Connection::open_with_flags(
        reg.db_path(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let data_version = || -> i64 {
        watcher
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .unwrap()
    };
    let snapshot = |reg: &Registry| {
        (
            lock_files(dir.path()),
            count(reg, "SELECT count(*) FROM lock_events"),
            count(reg, "SELECT coalesce(max(event_id), 0) FROM lock_events"),
            count(reg, "SELECT count(*) FROM locks"),
            count(reg, "SELECT count(*) FROM holders"),
            count(reg, "SELECT coalesce(sum(last_token), 0) FROM locks"),
            std::fs::read(reg.db_path()).unwrap(),
        )
    };
    let before = snapshot(&reg);
    let version_before = data_version();
    assert_eq!(
        before.0.iter().map(|f| f.0.as_str()).collect::<Vec<_>>(),
        ["s8_all.lock", "s8_memory.lock", "s8_messages.lock"]
    );

    let unknown = reg.key(None, "never-seen", "messages").unwrap();
    for _ in 0..50 {
        let s = reg.status(None, "s8").unwrap();
        assert_eq!(s.locks.len(), 7);
        let state_of = |f: &str| {
            let l = s.locks.iter().find(|l| l.field == f).unwrap();
            (l.state, l.stale_reason)
        };
        assert_eq!(state_of("messages"), (LockState::Held, None));
        assert_eq!(
            state_of("memory"),
            (LockState::Stale, Some(StaleReason::LeaseExpired))
        );
        assert_eq!(state_of("all"), (LockState::Free, None));
        assert_eq!(state_of(""), (LockState::Free, None));
        let s = reg.status(None, "never-seen").unwrap();
        assert!(s.locks.iter().all(|l| l.state == LockState::Free), "{s:?}");
        let d = reg.status(Some("document"), "doc123").unwrap();
        assert!(d.locks.iter().all(|l| l.state == LockState::Free));
        let (all, _) = reg.list(None, None, 0, 100).unwrap();
        assert_eq!(all.len(), 3);
        let (stale, _) = reg.list(Some(LockState::Stale), None, 0, 100).unwrap();
        assert_eq!(stale.len(), 1);
        assert!(reg.fence_check(&held, g.token()).unwrap().current);
        assert!(!reg.fence_check(&unknown, 1).unwrap().current);
        reg.history(&HistoryQuery {
            owner: Some("s8".into()),
            limit: 50,
            ..Default::default()
        })
        .unwrap();
    }

    assert_eq!(
        data_version(),
        version_before,
        "someone committed during reads"
    );
    let after = snapshot(&reg);
    assert_eq!(before.0, after.0, "lock files changed");
    assert_eq!(
        (before.1, before.2, before.3, before.4, before.5),
        (after.1, after.2, after.3, after.4, after.5),
        "rows changed"
    );
    assert!(before.6 == after.6, "registry.db changed");
    assert!(!dir.path().join("locks/never-seen_messages.lock").exists());
    assert!(!dir.path().join("locks/doc123-.lock").exists());
    assert_eq!(reg.leases_held().len(), 1, "status must not expire leases");
    drop(g);
    assert_grants_closed_once(&reg);
}

// ------------------------------------------------------------------ 9. concurrency

#[test]
fn concurrent_guards_exclude_each_other_and_tokens_follow_grant_order() {
    const THREADS: usize = 16;
    const ROUNDS: usize = 50;
    let dir = storage();
    let reg = Registry::open(Config::defaults(dir.path())).unwrap();
    let fields = ["messages", "memory", "all", "message_operations"];
    let keys: Vec<LockKey> = fields
        .iter()
        .map(|f| reg.key(None, "c9", f).unwrap())
        .collect();
    let counters = dir.path().join("counters");
    std::fs::create_dir(&counters).unwrap();
    for f in fields {
        std::fs::write(counters.join(f), "0").unwrap();
    }
    fn pick(t: usize, i: usize) -> usize {
        (t * 7 + i * 3) % 4
    }
    let mut expected = [0usize; 4];
    for t in 0..THREADS {
        for i in 0..ROUNDS {
            expected[pick(t, i)] += 1;
        }
    }

    let started = Instant::now();
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (reg, keys, counters) = (reg.clone(), keys.clone(), counters.clone());
            std::thread::spawn(move || {
                let mut seen = Vec::with_capacity(ROUNDS);
                for i in 0..ROUNDS {
                    let k = pick(t, i);
                    let g = reg
                        .acquire(&keys[k], &opts(&format!("worker-{t}"), "increment", 20_000))
                        .unwrap();
                    let path = counters.join(keys[k].field());
                    let n: u64 = std::fs::read_to_string(&path).unwrap().parse().unwrap();
                    std::thread::yield_now();
                    std::fs::write(&path, (n + 1).to_string()).unwrap();
                    seen.push((k, g.token()));
                    drop(g);
                }
                seen
            })
        })
        .collect();
    let mut seen: Vec<BTreeSet<i64>> = vec![BTreeSet::new(); fields.len()];
    for h in handles {
        for (k, token) in h.join().expect("worker thread") {
            assert!(
                seen[k].insert(token),
                "token {token} of {} seen twice",
                fields[k]
            );
        }
    }
    let elapsed = started.elapsed();
    eprintln!("{} acquire/release pairs in {elapsed:?}", THREADS * ROUNDS);

    for (k, f) in fields.iter().enumerate() {
        let n: usize = std::fs::read_to_string(counters.join(f))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(n, expected[k], "lost updates on {f}");
        // History, in commit order: acquired/released strictly alternate with the same
        // token, and tokens increase with every grant.
        let events: Vec<(String, i64)> = events_of(&reg, &keys[k])
            .into_iter()
            .map(|e| (e.event, e.token.unwrap()))
            .collect();
        assert_eq!(events.len(), 2 * expected[k], "{f}");
        let mut last = 0;
        for pair in events.chunks(2) {
            assert_eq!(pair[0].0, "acquired", "{f}: {pair:?}");
            assert_eq!(pair[1].0, "released", "{f}: {pair:?}");
            assert_eq!(pair[0].1, pair[1].1, "{f}: interleaved grants {pair:?}");
            assert!(pair[0].1 > last, "{f}: token {} after {last}", pair[0].1);
            last = pair[0].1;
        }
        let from_history: BTreeSet<i64> = events.iter().map(|e| e.1).collect();
        assert_eq!(from_history, seen[k], "{f}: tokens the guards saw");
        assert_eq!(report(&reg, &keys[k]).state, LockState::Free);
    }
    assert_grants_closed_once(&reg);
}

// ------------------------------------------------------------------ 10. retention

#[test]
fn pruning_keeps_the_newest_events_and_every_current_holders_grant() {
    let dir = storage();
    let mut config = Config::defaults(dir.path());
    config.retention_max_events = Some(100);
    config.retention_age = Some(Duration::from_secs(3600));
    let (reg, clock) = open_manual(config);
    let k_guard = reg.key(None, "r10", "messages").unwrap();
    let k_lease = reg.key(None, "r10", "memory").unwrap();
    let k_busy = reg.key(None, "r10", "all").unwrap();

    // Two long-lived holders whose `acquired` events are the oldest rows.
    let g = reg
        .acquire(&k_guard, &opts("long-guard", "op", 1000))
        .unwrap();
    let l = lease(&reg, &k_lease, "long-lease", 3_000_000);
    for _ in 0..150 {
        reg.acquire(&k_busy, &opts("churn", "op", 1000))
            .unwrap()
            .release()
            .unwrap();
        clock.advance_ms(1);
    }
    let before = all_events(&reg);
    assert_eq!(before.len(), 302);
    let max_id = before.last().unwrap().event_id;

    let deleted = reg.prune_history().unwrap();
    let after = all_events(&reg);
    assert_eq!(deleted, before.len() - after.len());
    assert!(after.len() <= 100 + 2, "{} events kept", after.len());
    let is_holder_grant = |e: &EventRow| {
        e.event == "acquired"
            && ((e.field == "messages" && e.token == Some(g.token()))
                || (e.field == "memory" && e.token == Some(l.token)))
    };
    assert_eq!(
        after.iter().filter(|e| is_holder_grant(e)).count(),
        2,
        "a current holder's acquired event was pruned"
    );
    assert_eq!(
        after.last().unwrap().event_id,
        max_id,
        "the newest event must stay"
    );
    for e in after.iter().filter(|e| !is_holder_grant(e)) {
        assert!(e.event_id > max_id - 100, "kept an old event: {e:?}");
    }
    assert_eq!(
        reg.prune_history().unwrap(),
        0,
        "pruning again deletes nothing"
    );
    check_grants(&reg, true);

    // By age: everything older than retention_age goes, holders' grants excepted.
    clock.advance_ms(3_600_000 + 1);
    let fresh_from = reg.now_ms();
    for _ in 0..5 {
        reg.acquire(&k_busy, &opts("late", "op", 1000))
            .unwrap()
            .release()
            .unwrap();
    }
    reg.prune_history().unwrap();
    let after = all_events(&reg);
    assert_eq!(after.len(), 10 + 2, "{after:#?}");
    for e in after.iter().filter(|e| !is_holder_grant(e)) {
        assert!(e.at >= fresh_from, "kept an expired event: {e:?}");
    }
    check_grants(&reg, true);
    drop(g);
    reg.release_lease(&l.lease_id).unwrap();
    check_grants(&reg, true);
}

// ------------------------------------------------------------------ two instances, one process
//
// `Registry::open` may be called twice on one storage directory in one process (test 2
// relies on it for Busy). Each instance has its own lease table, so an instance must not
// treat another instance's live lease as its own orphan, nor claim to have closed a
// handle it does not hold.

fn two_instances(auto_expire: bool) -> (tempfile::TempDir, Registry, Registry, Arc<ManualClock>) {
    let dir = storage();
    let mut config = Config::defaults(dir.path());
    config.auto_expire = auto_expire;
    let clock = ManualClock::new(T0);
    let a = Registry::open_with_clock(config.clone(), clock.clone()).unwrap();
    let b = Registry::open_with_clock(config, clock.clone()).unwrap();
    (dir, a, b, clock)
}

#[test]
fn reconcile_on_a_second_instance_leaves_a_live_lease_alone() {
    let (_dir, a, b, _clock) = two_instances(true);
    let key = a.key(None, "c11", "messages").unwrap();
    let l = lease(&a, &key, "client", 30_000);

    // The lease is live: its holder (this process) is alive and holds the lock file.
    let rep = b.reconcile("b").unwrap();
    assert!(
        rep.reconciled.is_empty(),
        "B reconciled A's live lease: {rep:?}"
    );
    let r = report(&b, &key);
    assert_eq!(
        (r.state, r.kind),
        (LockState::Held, Some(HolderKind::Lease))
    );
    assert_eq!(r.token, Some(l.token));
    a.renew_lease(&l.lease_id).unwrap();
    a.release_lease(&l.lease_id).unwrap();
    assert_free(&b, &key);
    assert_grants_closed_once(&a);
}

#[test]
fn a_safe_clear_on_a_second_instance_never_reports_cleared_what_it_did_not_free() {
    let (_dir, a, b, clock) = two_instances(false);
    let key = a.key(None, "c12", "messages").unwrap();
    let l = lease(&a, &key, "client", 1000);
    clock.advance_ms(1000);

    let out = b.clear(None, "c12", None, "b").unwrap();
    if out.cleared.is_empty() {
        // Skipping it (it is another instance's handle) is a correct answer.
        assert_eq!(out.skipped.len(), 1, "{out:?}");
        assert_eq!(report(&b, &key).token, Some(l.token));
        a.release_lease(&l.lease_id).unwrap();
    } else {
        // "cleared" must mean what it means on the owning instance: free at once.
        let r = report(&b, &key);
        assert_ne!(r.kind, Some(HolderKind::External), "{}", r.note);
        assert_free(&b, &key);
    }
    assert_grants_closed_once(&a);
}

#[test]
fn a_force_clear_on_a_second_instance_frees_the_lease_or_refuses() {
    let (_dir, a, b, _clock) = two_instances(true);
    let key = a.key(None, "c13", "messages").unwrap();
    let l = lease(&a, &key, "client", 30_000);

    match b.force_clear(&key, l.token, "stuck", "admin") {
        Ok(fc) => {
            assert!(!fc.revocation_pending);
            // DESIGN §5: a force-cleared lease's handle is closed; the lock is free at once.
            let r = report(&b, &key);
            assert_ne!(r.kind, Some(HolderKind::External), "{}", r.note);
            assert_free(&b, &key);
        }
        Err(RegistryError::NotClearable { .. }) => {
            assert_eq!(report(&b, &key).token, Some(l.token));
            a.release_lease(&l.lease_id).unwrap();
        }
        Err(e) => panic!("unexpected {e:?}"),
    }
    assert_grants_closed_once(&a);
}

//! The PostgreSQL store (`store::pg`: grants, renewals, releases, expiry, clears, waiting
//! in line across services, LISTEN/NOTIFY) against a real PostgreSQL.
//!
//! Invariants: every test runs in a database of its own on the test process's one
//! throwaway cluster (`PgCluster::shared`); "services" are separate `PgStore`s (each its
//! own pool and listener), as several hosts' services would be; every wait has a
//! deadline; a machine without PostgreSQL fails these tests, never skips them.

use lockledger::policy::stale::HolderKind;
use lockledger::store::history::{EventKind, EventRow, HistoryQuery};
use lockledger::store::pg::{FreeListener, GrantRequest, HolderRenewal, PgError, PgStore, Wake};
use lockledger_harness::pg::{connect_url, PgCluster};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

fn fresh_db(name: &str) -> String {
    PgCluster::test_database(name)
}

fn open(url: &str) -> PgStore {
    PgStore::open(url, 2).unwrap_or_else(|e| panic!("open: {e}"))
}

fn listener(store: &PgStore) -> FreeListener {
    FreeListener::start(store.session_config(), |_| {}).unwrap_or_else(|e| panic!("{e}"))
}

/// A lease on conversation `owner`'s `field` held by pid 812 on host h1.
fn lease(owner: &str, field: &str, ttl_ms: u64) -> GrantRequest {
    let mut req = GrantRequest::lease("conversation", owner, field, "chat", "send_message", ttl_ms);
    req.pid = Some(812);
    req.host = "h1".into();
    req
}

/// Every event of `owner`, oldest first.
fn events(store: &PgStore, owner: &str) -> Vec<EventRow> {
    let mut rows = store
        .history(&HistoryQuery {
            owner: Some(owner.into()),
            limit: 100_000,
            ..Default::default()
        })
        .unwrap();
    rows.reverse();
    rows
}

fn kinds(rows: &[EventRow]) -> Vec<(String, Option<i64>)> {
    rows.iter().map(|e| (e.event.clone(), e.token)).collect()
}

fn ev(kind: &str, token: i64) -> (String, Option<i64>) {
    (kind.to_string(), Some(token))
}

/// Every `acquired` is followed, before the next `acquired`, by exactly one closing
/// event with its token; tokens strictly increase.
fn assert_closed_pairs(rows: &[EventRow]) {
    let mut open: Option<i64> = None;
    let mut last_token = 0;
    for e in rows {
        match e.event.as_str() {
            "acquired" => {
                assert_eq!(open, None, "acquired while token {open:?} was held: {e:?}");
                let t = e.token.unwrap();
                assert!(t > last_token, "token {t} after {last_token}");
                last_token = t;
                open = Some(t);
            }
            "released" | "expired" | "cleared" | "force_cleared" | "reconciled" => {
                assert_eq!(open, e.token, "closing event without its acquired: {e:?}");
                open = None;
            }
            _ => {}
        }
    }
}

/// Polls `f` until it is true or `limit` passes.
fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn waiters(url: &str) -> i64 {
    let mut c = connect_url(url).unwrap();
    c.query_one("SELECT count(*) FROM lock_waiters", &[])
        .unwrap()
        .get(0)
}

#[test]
fn grant_busy_renew_release_round_trip() {
    let url = fresh_db("store_round_trip");
    let a = open(&url);
    let b = open(&url);
    let g = a.try_grant(&lease("conv42", "messages", 30_000)).unwrap();
    assert_eq!(g.token, 1);
    let lease_id = g.lease_id.clone().unwrap();
    assert_eq!(lease_id.len(), 32, "128 bits in hex");
    assert_eq!(g.expires_at, Some(g.acquired_at + 30_000));
    assert!(g.took_over.is_none());

    // Another service is refused with the holder, and writes nothing.
    let mut other = lease("conv42", "messages", 30_000);
    other.host = "h2".into();
    let err = b.try_grant(&other).unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with(
            "lock conv42/messages is held by pid 812 (send_message) on host h1 since "
        ),
        "{text}"
    );
    assert!(text.contains("its lease ends at"), "{text}");
    let busy = err.busy().unwrap();
    assert_eq!(busy.holder.as_ref().unwrap().token, 1);
    assert_eq!(events(&a, "conv42").len(), 1, "a refusal writes nothing");

    // Renewal moves the end by the ttl from the database's now.
    let r = b.renew(&lease_id, 60_000).unwrap();
    assert_eq!((r.lock_id, r.token), (g.lock_id, 1));
    assert_eq!(r.expires_at, r.renewed_at + 60_000);
    assert!(r.expires_at > g.expires_at.unwrap());

    let now = a.now_ms().unwrap();
    let cur = a.current(Some("conv42")).unwrap();
    assert_eq!(cur.len(), 1);
    let h = cur[0].holder.as_ref().unwrap();
    assert_eq!((h.token, h.kind, h.pid), (1, HolderKind::Lease, Some(812)));
    assert_eq!(h.lease_id.as_deref(), Some(lease_id.as_str()));
    assert!(h.expires_at.unwrap() > now);
    assert!(a.current(Some("conv7")).unwrap().is_empty());

    // Any service may release by lease id; once.
    let rel = b.release(&lease_id).unwrap();
    assert_eq!(
        (rel.event, rel.token, rel.lock_id),
        (EventKind::Released, 1, g.lock_id)
    );
    assert!(rel.held_ms >= 0);
    assert!(matches!(
        a.release(&lease_id),
        Err(PgError::LeaseGone { .. })
    ));
    let gone = a.renew(&lease_id, 1000).unwrap_err().to_string();
    assert!(gone.contains("released, expired or cleared"), "{gone}");
    assert!(a.current(None).unwrap().is_empty());

    let g2 = b.try_grant(&other).unwrap();
    assert_eq!(g2.token, 2);
    let rows = events(&a, "conv42");
    let k = kinds(&rows);
    assert_eq!(k[0], ev("acquired", 1));
    assert_eq!(k[k.len() - 2..], [ev("released", 1), ev("acquired", 2)]);
    assert_closed_pairs(&rows);
    assert_eq!(rows.last().unwrap().host.as_deref(), Some("h2"));
}

#[test]
fn renewals_write_one_sampled_event_per_minute() {
    let url = fresh_db("store_renew_sample");
    let s = open(&url);
    let g = s.try_grant(&lease("conv1", "memory", 30_000)).unwrap();
    let id = g.lease_id.unwrap();
    // As if the last renewal was two minutes ago.
    let mut c = connect_url(&url).unwrap();
    c.execute("UPDATE holders SET renewed_at = renewed_at - 120000", &[])
        .unwrap();
    let first = s.renew(&id, 30_000).unwrap();
    assert!(first.event_id.is_some(), "a new minute: sampled");
    let second = s.renew(&id, 30_000).unwrap();
    assert_eq!(second.event_id, None, "the same minute: not sampled");
    let renewed: Vec<_> = events(&s, "conv1")
        .into_iter()
        .filter(|e| e.event == "renewed")
        .collect();
    assert_eq!(renewed.len(), 1);
    assert_eq!(renewed[0].event_id, first.event_id.unwrap());
    assert!(matches!(s.renew(&id, 0), Err(PgError::BadRequest(_))));
}

#[test]
fn a_library_holder_renews_by_token_until_revoked_or_gone() {
    let url = fresh_db("store_renew_holder");
    let s = open(&url);
    let g = s.try_grant(&lease("doc9", "summary", 1).library()).unwrap();
    let mut c = connect_url(&url).unwrap();
    // As if the last renewal was two minutes ago: this one is sampled, the next is not.
    c.execute("UPDATE holders SET renewed_at = renewed_at - 120000", &[])
        .unwrap();
    assert_eq!(
        s.renew_holder(g.lock_id, g.token).unwrap(),
        HolderRenewal::Renewed
    );
    assert_eq!(
        s.renew_holder(g.lock_id, g.token).unwrap(),
        HolderRenewal::Renewed
    );
    let renewed = events(&s, "doc9")
        .into_iter()
        .filter(|e| e.event == "renewed" && e.token == Some(g.token))
        .count();
    assert_eq!(renewed, 1, "one sampled renewed event per minute");
    let row = c
        .query_one("SELECT renewed_at > acquired_at FROM holders", &[])
        .unwrap();
    assert!(row.get::<_, bool>(0), "renewed_at moved");
    assert_eq!(
        s.renew_holder(g.lock_id, g.token + 1).unwrap(),
        HolderRenewal::Gone,
        "another token is not this holder"
    );
    c.execute(
        "UPDATE holders SET revoked_at = 1, revoked_by = 'admin:test'",
        &[],
    )
    .unwrap();
    assert_eq!(
        s.renew_holder(g.lock_id, g.token).unwrap(),
        HolderRenewal::Revoked {
            by: "admin:test".into()
        }
    );
    c.execute("DELETE FROM holders", &[]).unwrap();
    assert_eq!(
        s.renew_holder(g.lock_id, g.token).unwrap(),
        HolderRenewal::Gone
    );
}

#[test]
fn an_expired_lease_is_taken_over_with_an_expired_event_then_acquired() {
    let url = fresh_db("store_takeover");
    let a = open(&url);
    let b = open(&url);
    let g1 = a.try_grant(&lease("conv9", "", 100)).unwrap();
    let mut second = lease("conv9", "", 30_000);
    second.host = "h2".into();
    let start = Instant::now();
    let g2 = loop {
        match b.try_grant(&second) {
            Ok(g) => break g,
            Err(PgError::Busy(busy)) => {
                assert!(busy.to_string().starts_with("lock conv9/(main) is held by"));
                assert!(start.elapsed() < Duration::from_secs(5), "never expired");
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert!(
        g2.acquired_at >= g1.expires_at.unwrap(),
        "by the database clock"
    );
    assert_eq!(g2.token, 2);
    let old = g2.took_over.as_ref().expect("the expired holder was ended");
    assert_eq!((old.event, old.token), (EventKind::Expired, 1));
    assert_eq!(old.lease_id, g1.lease_id);
    let rows = events(&a, "conv9");
    assert_eq!(
        kinds(&rows),
        vec![ev("acquired", 1), ev("expired", 1), ev("acquired", 2)]
    );
    assert_eq!(
        rows[1].reason.as_deref(),
        Some("lease_expired: not renewed in time (ended by a grant)")
    );
    assert_eq!(rows[1].actor.as_deref(), Some(b.service()));
    // The first holder comes back too late.
    let old_id = g1.lease_id.unwrap();
    assert!(matches!(
        a.renew(&old_id, 1000),
        Err(PgError::LeaseGone { .. })
    ));
    assert!(matches!(a.release(&old_id), Err(PgError::LeaseGone { .. })));

    // A lease past its end that nobody ended: renewal is refused, release records it as
    // expired and tells the holder.
    let g3 = a.try_grant(&lease("conv9", "memory", 100)).unwrap();
    let id3 = g3.lease_id.unwrap();
    wait_until(Duration::from_secs(5), "the lease to pass its end", || {
        a.now_ms().unwrap() > g3.expires_at.unwrap()
    });
    let renew = a.renew(&id3, 1000).unwrap_err().to_string();
    assert!(renew.contains("expired at"), "{renew}");
    let release = a.release(&id3).unwrap_err().to_string();
    assert!(release.contains("recorded as expired"), "{release}");
    let last = events(&a, "conv9").pop().unwrap();
    assert_eq!(
        (last.event.as_str(), last.field.as_str()),
        ("expired", "memory")
    );
}

#[test]
fn library_holders_release_by_token_and_tokens_respect_the_floor() {
    let url = fresh_db("store_library");
    let s = open(&url);
    let req = lease("doc1", "summary", 1).library();
    let g = s.try_grant(&req).unwrap();
    assert_eq!((g.lease_id.clone(), g.expires_at), (None, None));
    assert!(matches!(
        s.release_by_token(g.lock_id, g.token + 1),
        Err(PgError::NotHolding { .. })
    ));
    let rel = s.release_by_token(g.lock_id, g.token).unwrap();
    assert_eq!(
        (rel.event, rel.kind),
        (EventKind::Released, HolderKind::Library)
    );

    let mut c = connect_url(&url).unwrap();
    c.execute(
        "UPDATE registry_settings SET value = 100 WHERE key = 'token_floor'",
        &[],
    )
    .unwrap();
    assert_eq!(
        s.try_grant(&req).unwrap().token,
        101,
        "max(last, floor) + 1"
    );
    assert_eq!(
        s.try_grant(&lease("doc2", "summary", 1).library())
            .unwrap()
            .token,
        101,
        "a new lock starts above the floor too"
    );
    let mut bad = lease("doc3", "summary", 1000);
    bad.lease_id = Some("short".into());
    assert!(matches!(s.try_grant(&bad), Err(PgError::BadRequest(_))));
    bad.lease_id = None;
    bad.kind = HolderKind::External;
    assert!(matches!(s.try_grant(&bad), Err(PgError::BadRequest(_))));
}

#[test]
fn clear_ends_only_the_token_shown_and_force_clear_raises_the_token() {
    let url = fresh_db("store_clear");
    let s = open(&url);
    let g = s.try_grant(&lease("conv5", "messages", 30_000)).unwrap();
    assert_eq!(
        s.clear(g.lock_id, g.token + 7, "ann", "stuck", EventKind::Cleared)
            .unwrap(),
        None,
        "changed since you looked: nothing written"
    );
    let c = s
        .clear(g.lock_id, g.token, "ann", "holder_dead", EventKind::Cleared)
        .unwrap()
        .unwrap();
    assert_eq!((c.event, c.token), (EventKind::Cleared, 1));
    let g2 = s.try_grant(&lease("conv5", "messages", 30_000)).unwrap();
    assert_eq!(g2.token, 2);
    let f = s
        .clear(
            g2.lock_id,
            2,
            "root",
            "hung stream",
            EventKind::ForceCleared,
        )
        .unwrap()
        .unwrap();
    assert_eq!(f.event, EventKind::ForceCleared);
    assert_eq!(s.lock(g2.lock_id).unwrap().unwrap().last_token, 3);
    assert_eq!(
        s.try_grant(&lease("conv5", "messages", 30_000))
            .unwrap()
            .token,
        4
    );
    assert!(matches!(
        s.clear(g2.lock_id, 4, "root", "x", EventKind::Acquired),
        Err(PgError::BadRequest(_))
    ));
    let rows = events(&s, "conv5");
    assert_closed_pairs(&rows);
    let cleared: Vec<_> = rows
        .iter()
        .filter(|e| e.event.ends_with("cleared"))
        .map(|e| (e.actor.clone().unwrap(), e.reason.clone().unwrap()))
        .collect();
    assert_eq!(
        cleared,
        vec![
            ("ann".to_string(), "holder_dead".to_string()),
            ("root".to_string(), "hung stream".to_string())
        ]
    );
}

#[test]
fn holders_on_host_and_history_pages() {
    let url = fresh_db("store_reads");
    let s = open(&url);
    for (owner, host) in [("c1", "h1"), ("c2", "h2"), ("c3", "h1")] {
        let mut req = lease(owner, "messages", 30_000);
        req.host = host.into();
        s.try_grant(&req).unwrap();
    }
    let on_h1: Vec<String> = s
        .holders_on_host("h1")
        .unwrap()
        .into_iter()
        .map(|l| l.owner)
        .collect();
    assert_eq!(on_h1, ["c1", "c3"]);
    for row in s.current(None).unwrap() {
        let h = row.holder.unwrap();
        s.release(h.lease_id.as_deref().unwrap()).unwrap();
    }
    // Six events: three acquired, three released; newest first, in pages of two.
    let q = |before: Option<i64>| HistoryQuery {
        before_event_id: before,
        limit: 2,
        ..Default::default()
    };
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let page = s.history(&q(before)).unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 2);
        before = Some(page.last().unwrap().event_id);
        seen.extend(page.into_iter().map(|e| e.event_id));
    }
    assert_eq!(seen.len(), 6);
    assert!(
        seen.windows(2).all(|w| w[0] > w[1]),
        "newest first: {seen:?}"
    );
    let acquired = s
        .history(&HistoryQuery {
            event: Some(EventKind::Acquired),
            field: Some("messages".into()),
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(acquired.len(), 3);
    assert!(acquired.iter().all(|e| e.event == "acquired"));
    let c2 = s
        .history(&HistoryQuery {
            owner: Some("c2".into()),
            holder: Some("chat".into()),
            since_ms: Some(0),
            until_ms: Some(i64::MAX),
            namespace: Some("conversation".into()),
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        c2.iter().map(|e| e.event.as_str()).collect::<Vec<_>>(),
        ["released", "acquired"]
    );
    assert_eq!(c2[0].pid, Some(812));
}

/// 16 services race for one lock, 200 grants in all; the critical section checks that
/// nobody else is inside and increments a counter non-atomically (a lost update shows a
/// second holder).
#[test]
fn sixteen_services_racing_on_one_lock_never_hold_it_together() {
    const SERVICES: usize = 16;
    const GRANTS: usize = 200;
    let url = fresh_db("store_race");
    let stores: Vec<(PgStore, FreeListener)> = (0..SERVICES)
        .map(|_| {
            let s = open(&url);
            let l = listener(&s);
            (s, l)
        })
        .collect();
    let inside = Arc::new(AtomicUsize::new(0));
    let max_inside = Arc::new(AtomicUsize::new(0));
    let counter = Arc::new(AtomicU64::new(0));
    let tokens = Arc::new(Mutex::new(Vec::new()));
    let woken = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
    let start = Arc::new(Barrier::new(SERVICES));
    let began = Instant::now();
    std::thread::scope(|scope| {
        for (i, (store, listener)) in stores.iter().enumerate() {
            let (inside, max_inside, counter, tokens, woken, start) = (
                Arc::clone(&inside),
                Arc::clone(&max_inside),
                Arc::clone(&counter),
                Arc::clone(&tokens),
                Arc::clone(&woken),
                Arc::clone(&start),
            );
            scope.spawn(move || {
                let mine = GRANTS / SERVICES + usize::from(i < GRANTS % SERVICES);
                let mut req = lease("race", "messages", 30_000);
                req.host = format!("h{i}");
                if i % 2 == 1 {
                    req = req.library();
                }
                start.wait();
                for _ in 0..mine {
                    let w = store
                        .acquire_waiting(&req, Duration::from_secs(60), listener)
                        .unwrap_or_else(|e| panic!("service {i}: {e}"));
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    max_inside.fetch_max(now, Ordering::SeqCst);
                    let v = counter.load(Ordering::SeqCst);
                    std::thread::yield_now();
                    counter.store(v + 1, Ordering::SeqCst);
                    tokens.lock().unwrap().push(w.granted.token);
                    *woken
                        .lock()
                        .unwrap()
                        .entry(format!("{:?}", w.woken_by))
                        .or_default() += 1;
                    inside.fetch_sub(1, Ordering::SeqCst);
                    match &w.granted.lease_id {
                        Some(id) => store.release(id).map(|_| ()),
                        None => store
                            .release_by_token(w.granted.lock_id, w.granted.token)
                            .map(|_| ()),
                    }
                    .unwrap_or_else(|e| panic!("service {i}: {e}"));
                }
            });
        }
    });
    let elapsed = began.elapsed();
    assert_eq!(max_inside.load(Ordering::SeqCst), 1, "never two holders");
    assert_eq!(
        counter.load(Ordering::SeqCst),
        GRANTS as u64,
        "no lost update"
    );
    let tokens = tokens.lock().unwrap().clone();
    assert_eq!(tokens.len(), GRANTS);
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "tokens strictly increase in grant order"
    );
    let rows = events(&stores[0].0, "race");
    assert_eq!(
        rows.iter().filter(|e| e.event == "acquired").count(),
        GRANTS
    );
    assert_eq!(
        rows.iter().filter(|e| e.event == "released").count(),
        GRANTS
    );
    assert_closed_pairs(&rows);
    assert_eq!(waiters(&url), 0, "every waiter row is gone");
    eprintln!(
        "race: {GRANTS} grants by {SERVICES} services in {:.2} s = {:.0} grants/s; \
         granted after: {:?}",
        elapsed.as_secs_f64(),
        GRANTS as f64 / elapsed.as_secs_f64(),
        woken.lock().unwrap()
    );
}

#[test]
fn expiry_from_four_services_writes_one_expired_event_per_lease() {
    const LEASES: usize = 40;
    let url = fresh_db("store_expire_due");
    let a = open(&url);
    let mut last_end = 0;
    for i in 0..LEASES {
        let g = a
            .try_grant(&lease(&format!("e{i}"), "messages", 100))
            .unwrap();
        last_end = last_end.max(g.expires_at.unwrap());
    }
    let live = a.try_grant(&lease("keep", "messages", 60_000)).unwrap();
    wait_until(
        Duration::from_secs(5),
        "all leases to pass their end",
        || a.now_ms().unwrap() > last_end,
    );
    let stores: Vec<PgStore> = (0..4).map(|_| open(&url)).collect();
    let start = Barrier::new(4);
    let ended: Vec<Vec<i64>> = std::thread::scope(|scope| {
        let handles: Vec<_> = stores
            .iter()
            .map(|s| {
                let start = &start;
                scope.spawn(move || {
                    start.wait();
                    let mut mine = Vec::new();
                    loop {
                        let batch = s.expire_due(3).unwrap();
                        if batch.is_empty() {
                            return mine;
                        }
                        assert!(batch.iter().all(|e| e.event == EventKind::Expired));
                        mine.extend(batch.iter().map(|e| e.lock_id));
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let per_store: Vec<usize> = ended.iter().map(Vec::len).collect();
    let mut all: Vec<i64> = ended.into_iter().flatten().collect();
    assert_eq!(all.len(), LEASES, "per store: {per_store:?}");
    all.sort();
    all.dedup();
    assert_eq!(all.len(), LEASES, "no lease ended twice");
    let expired = a
        .history(&HistoryQuery {
            event: Some(EventKind::Expired),
            limit: 1000,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(expired.len(), LEASES, "one expired event per lease");
    let remaining = a.current(None).unwrap();
    assert_eq!(remaining.len(), 1);
    assert_eq!(
        remaining[0].lock_id, live.lock_id,
        "a live lease is left alone"
    );
    eprintln!("expire_due: {LEASES} leases ended by 4 services: {per_store:?}");
}

/// A waiter blocked in acquire_waiting is granted right after a release, woken by the
/// notification (ten hand-overs, each timed from the release call).
#[test]
fn a_waiter_is_woken_by_the_release_notification() {
    const ROUNDS: usize = 10;
    let url = fresh_db("store_notify");
    let a = open(&url);
    let b = open(&url);
    let heard = Arc::new(AtomicU64::new(0));
    let h = Arc::clone(&heard);
    let lb = FreeListener::start(b.session_config(), move |_| {
        h.fetch_add(1, Ordering::SeqCst);
    })
    .unwrap();
    let mut lat = Vec::new();
    let mut by_notify = 0;
    for round in 0..ROUNDS {
        let owner = format!("n{round}");
        let held = a.try_grant(&lease(&owner, "messages", 30_000)).unwrap();
        let released_at = Mutex::new(None::<Instant>);
        let (w, granted_at) = std::thread::scope(|scope| {
            let waiter = scope.spawn(|| {
                let w = b
                    .acquire_waiting(
                        &lease(&owner, "messages", 30_000),
                        Duration::from_secs(10),
                        &lb,
                    )
                    .unwrap();
                (w, Instant::now())
            });
            wait_until(Duration::from_secs(5), "the waiter to queue", || {
                waiters(&url) == 1
            });
            // Let its backoff grow to the 50 ms tick, so a tick would be slow.
            std::thread::sleep(Duration::from_millis(150));
            *released_at.lock().unwrap() = Some(Instant::now());
            a.release(held.lease_id.as_deref().unwrap()).unwrap();
            waiter.join().unwrap()
        });
        let took = granted_at - released_at.lock().unwrap().unwrap();
        assert!(took < Duration::from_secs(2), "round {round}: {took:?}");
        assert_eq!(w.granted.token, 2);
        if w.woken_by == Wake::Notified {
            by_notify += 1;
        }
        lat.push(took);
        b.release(w.granted.lease_id.as_deref().unwrap()).unwrap();
    }
    lat.sort();
    assert!(
        by_notify >= ROUNDS - 2,
        "granted after a notification in {by_notify} of {ROUNDS} rounds"
    );
    assert!(lb.notifications() >= ROUNDS as u64);
    // The callback runs right after the count is taken: give the last one a moment.
    wait_until(
        Duration::from_secs(2),
        "the callback to see every notification",
        || heard.load(Ordering::SeqCst) == lb.notifications(),
    );
    eprintln!(
        "notify: release -> grant of the waiter: median {:?}, max {:?}; woken by a \
         notification in {by_notify}/{ROUNDS}; notifications heard: {}",
        lat[ROUNDS / 2],
        lat[ROUNDS - 1],
        lb.notifications()
    );
}

/// Waiters of three services are granted in arrival order; a plain try defers to them.
#[test]
fn waiters_of_different_services_are_granted_in_arrival_order() {
    let url = fresh_db("store_order");
    let a = open(&url);
    let (b, c, d) = (open(&url), open(&url), open(&url));
    let (lb, lc) = (listener(&b), listener(&c));
    let held = a.try_grant(&lease("q1", "messages", 30_000)).unwrap();
    let order = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        let order = &order;
        let hb = scope.spawn(|| {
            let w = b
                .acquire_waiting(
                    &lease("q1", "messages", 30_000),
                    Duration::from_secs(20),
                    &lb,
                )
                .unwrap();
            order.lock().unwrap().push(("b", w.granted.token));
            std::thread::sleep(Duration::from_millis(200));
            b.release(w.granted.lease_id.as_deref().unwrap()).unwrap();
        });
        wait_until(Duration::from_secs(5), "b to queue", || waiters(&url) == 1);
        let hc = scope.spawn(|| {
            let w = c
                .acquire_waiting(
                    &lease("q1", "messages", 30_000),
                    Duration::from_secs(20),
                    &lc,
                )
                .unwrap();
            order.lock().unwrap().push(("c", w.granted.token));
            c.release(w.granted.lease_id.as_deref().unwrap()).unwrap();
        });
        wait_until(Duration::from_secs(5), "c to queue", || waiters(&url) == 2);
        a.release(held.lease_id.as_deref().unwrap()).unwrap();
        // Whichever service tries now, the lock goes to the line first.
        let refused = d.try_grant(&lease("q1", "messages", 30_000));
        assert!(refused.is_err(), "a plain try never jumps the line");
        hb.join().unwrap();
        hc.join().unwrap();
    });
    assert_eq!(*order.lock().unwrap(), vec![("b", 2), ("c", 3)]);
    assert_eq!(waiters(&url), 0);

    // A free lock with a live waiter row (its service then vanished): refused with the
    // line, until the row lapses; then granted and the row is gone.
    let mut sql = connect_url(&url).unwrap();
    sql.batch_execute(
        "INSERT INTO lock_waiters (lock_id, service, host, pid, holder, operation,
                                   enqueued_at, expires_at)
         SELECT lock_id, 'gone:1:0', 'h9', 1, 'chat', 'send_message', 0,
                (extract(epoch FROM clock_timestamp()) * 1000)::bigint + 1000
         FROM locks WHERE owner = 'q1'",
    )
    .unwrap();
    let err = d.try_grant(&lease("q1", "messages", 30_000)).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("lock q1/messages is free but 1 earlier waiter(s) are queued"),
        "{err}"
    );
    let t = Instant::now();
    let w = d
        .acquire_waiting(
            &lease("q1", "messages", 30_000),
            Duration::from_secs(10),
            &lb,
        )
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(w.granted.token, 4);
    assert_eq!(waiters(&url), 0, "the lapsed row was deleted by the grant");
    assert_closed_pairs(&events(&a, "q1"));
}

/// A service that vanishes mid-lease (its store dropped, as after SIGKILL) leaves a
/// holder row that ends by its ttl; a waiter of another service is then granted.
#[test]
fn a_vanished_services_lease_ends_by_ttl_and_the_waiter_gets_the_lock() {
    let url = fresh_db("store_vanished");
    let a = open(&url);
    let g = a.try_grant(&lease("v1", "messages", 400)).unwrap();
    drop(a);
    let b = open(&url);
    let lb = listener(&b);
    let t = Instant::now();
    let w = b
        .acquire_waiting(
            &lease("v1", "messages", 30_000),
            Duration::from_secs(10),
            &lb,
        )
        .unwrap();
    let waited = t.elapsed();
    assert!(w.granted.acquired_at >= g.expires_at.unwrap());
    assert_eq!(w.granted.token, 2);
    assert_eq!(
        w.granted.took_over.as_ref().map(|e| (e.event, e.token)),
        Some((EventKind::Expired, 1))
    );
    assert_eq!(
        kinds(&events(&b, "v1")),
        vec![ev("acquired", 1), ev("expired", 1), ev("acquired", 2)]
    );
    eprintln!(
        "vanished: granted {waited:?} after waiting began ({} tries, {} ticks)",
        w.attempts, w.ticks
    );
    assert!(waited < Duration::from_secs(3), "{waited:?}");
}

/// The listener survives losing its connection: it reconnects and wakes everyone.
#[test]
fn the_listener_reconnects_after_its_backend_is_killed() {
    let url = fresh_db("store_listen_again");
    let s = open(&url);
    let l = listener(&s);
    assert_eq!(l.connects(), 1);
    let mut sql = connect_url(&url).unwrap();
    let killed: i64 = sql
        .query_one(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND query = 'LISTEN lockledger_free') t",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(killed, 1);
    wait_until(Duration::from_secs(10), "the listener to reconnect", || {
        l.connects() >= 2
    });
    let g = s.try_grant(&lease("r1", "messages", 30_000)).unwrap();
    let before = l.notifications();
    s.release(g.lease_id.as_deref().unwrap()).unwrap();
    wait_until(
        Duration::from_secs(5),
        "a notification after reconnecting",
        || l.notifications() > before,
    );
}

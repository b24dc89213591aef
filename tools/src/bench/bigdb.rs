//! Group `bigdb`: one owner's status and newest 50 events, in process and over HTTP, on a
//! database of `--owners` × 6 locks and `--events` history rows.
//!
//! Invariants: the database is filled only through the library's store code — a
//! connection from `lockledger::store::db::open_and_migrate`, rows written by
//! `lockledger::store::records::{ensure_lock, grant_token, insert_event}` inside
//! transactions — so it has exactly the schema, indexes and settings the service expects
//! and the benchmark holds no SQL of its own; tokens come from `grant_token`, so every
//! lock's `last_token` is its newest event's token. Events are acquired/released pairs
//! on random locks, oldest first, over the last 7 days.

use crate::ctx::Ctx;
use crate::floor::round_trip_us;
use crate::load::LeaseClient;
use crate::machine::other_work;
use crate::report::{ms, now_ms, Data, Floor, Series, Verdict};
use crate::services::Service;
use crate::R;
use lockledger::config::CONVERSATION_FIELDS;
use lockledger::store::history::{self, EventKind, HistoryQuery, NewEvent};
use lockledger::store::records;
use lockledger::{Config, LockKey, Registry};
use lockledger_tools::rng::Rng;
use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

pub fn owner_name(i: u64) -> String {
    format!("conv{i:06}")
}

/// Rows per transaction of the bulk load.
const BATCH: u64 = 200_000;

/// Fills a fresh storage directory's database with `owners` × 6 lock rows and `events`
/// history rows (acquired/released pairs on random locks over the last 7 days).
fn fill_big_db(storage: &Path, owners: u64, events: u64, rng: &mut Rng) -> R<()> {
    let config = Config::defaults(storage);
    let mut conn = lockledger::store::db::open_and_migrate(&config).map_err(|e| e.to_string())?;
    bulk_load_mode(&conn, true)?;
    let ns = config.default_namespace();
    let fields = CONVERSATION_FIELDS;
    let nf = fields.len() as u64;
    let span: i64 = 7 * 24 * 3600 * 1000;
    let base = now_ms() - span - 60_000;
    let e = |e: rusqlite::Error| e.to_string();

    // The lock rows, in owner order (lock ids follow).
    let mut keys: Vec<(LockKey, String)> = Vec::with_capacity((owners * nf) as usize);
    for o in 0..owners {
        let owner = owner_name(o);
        for field in fields {
            let key = LockKey::new(ns, &owner, field).map_err(|e| e.to_string())?;
            let file = key.file_name(ns);
            keys.push((key, file));
        }
    }
    let mut lock_ids = Vec::with_capacity(keys.len());
    for batch in keys.chunks(BATCH as usize) {
        let tx = conn.transaction().map_err(e)?;
        for (key, file) in batch {
            lock_ids.push(records::ensure_lock(&tx, key, file, base).map_err(e)?);
        }
        tx.commit().map_err(e)?;
    }

    // The history: each pair takes the lock's next token, then writes both events.
    const OPS: [&str; 4] = [
        "send_message",
        "stream_reply",
        "save_memory",
        "index_documents",
    ];
    let pairs = events / 2;
    let step = span / (pairs * 2).max(1) as i64;
    let n_locks = keys.len() as u64;
    let mut i = 0u64;
    while i < pairs {
        let tx = conn.transaction().map_err(e)?;
        for i in i..(i + BATCH / 2).min(pairs) {
            let lock = rng.below(n_locks) as usize;
            let (key, file) = &keys[lock];
            let at = base + 2 * i as i64 * step;
            let (lock_id, token) = records::grant_token(&tx, key, file, at).map_err(e)?;
            debug_assert_eq!(lock_id, lock_ids[lock]);
            let pid = 1000 + rng.below(60_000) as i32;
            let op = OPS[rng.below(4) as usize];
            let held = 1 + rng.below((2 * step).clamp(1, 5000) as u64) as i64;
            let mut ev = NewEvent {
                at,
                lock_id,
                namespace: key.namespace(),
                owner: key.owner(),
                field: key.field(),
                event: Some(EventKind::Acquired),
                token: Some(token),
                pid: Some(pid),
                host: Some("bench-host"),
                holder: Some("chat-app"),
                operation: Some(op),
                ..NewEvent::default()
            };
            history::insert_event(&tx, &ev).map_err(e)?;
            ev.at = at + held;
            ev.event = Some(EventKind::Released);
            ev.held_ms = Some(held);
            history::insert_event(&tx, &ev).map_err(e)?;
        }
        // As the service's writer does every few dozen commits: the rows move from the
        // unindexed inbox into the indexed log, so the database is the one a running
        // service would have left (history reads never scan a 200,000-row inbox).
        while history::move_inbox(&tx, history::MOVE_BATCH).map_err(e)? > 0 {}
        tx.commit().map_err(e)?;
        i += BATCH / 2;
    }
    bulk_load_mode(&conn, false)
}

/// Connection settings for the bulk load, and back: no journal, no syncs, a large page
/// cache (settings only: the rows go in through the store's statements). Afterwards the
/// database is in WAL mode again, exactly as the service expects it; nobody else has it
/// open meanwhile.
fn bulk_load_mode(conn: &rusqlite::Connection, on: bool) -> R<()> {
    let e = |e: rusqlite::Error| e.to_string();
    let (journal, sync, cache) = if on {
        ("OFF", "OFF", -1_000_000)
    } else {
        ("WAL", "NORMAL", -2000)
    };
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", journal, |r| r.get(0))
        .map_err(e)?;
    if !mode.eq_ignore_ascii_case(journal) {
        return Err(format!(
            "journal_mode {journal} refused (journal_mode={mode})"
        ));
    }
    conn.pragma_update(None, "synchronous", sync).map_err(e)?;
    conn.pragma_update(None, "cache_size", cache).map_err(e)
}

/// Times `f` for each owner after a short warm-up, stopping early at `cap`.
pub fn series(
    owners: &[String],
    warm: usize,
    cap: Duration,
    mut f: impl FnMut(&str) -> R<()>,
) -> R<Series> {
    let t = Instant::now();
    for o in owners.iter().take(warm) {
        f(o)?;
        if t.elapsed() > Duration::from_secs(5) {
            break;
        }
    }
    let start = Instant::now();
    let mut lat = Vec::with_capacity(owners.len());
    let mut capped = false;
    for o in owners.iter().skip(warm) {
        let a = Instant::now();
        f(o)?;
        lat.push(a.elapsed().as_secs_f64() * 1e3);
        if start.elapsed() > cap && lat.len() < owners.len() - warm {
            capped = true;
            break;
        }
    }
    lat.sort_by(f64::total_cmp);
    Ok(Series {
        sorted: lat,
        capped,
    })
}

pub fn bench_bigdb(ctx: &mut Ctx) -> R<()> {
    let (owners, events) = (ctx.set.owners, ctx.set.events);
    println!(
        "\n[bigdb] one owner's status and newest 50 events with {owners} owners and {events} events"
    );
    println!("  ({})", other_work(&ctx.pids()));
    let storage = ctx.dir("bigdb")?;
    let t = Instant::now();
    fill_big_db(&storage, owners, events, &mut ctx.rng)?;
    let size: u64 = ["registry.db", "registry.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(storage.join(f)).ok())
        .map(|m| m.len())
        .sum();
    ctx.detail(format!(
        "filled {} lock rows and {} events in {:.1} s (database {:.0} MB)",
        owners * CONVERSATION_FIELDS.len() as u64,
        events / 2 * 2,
        t.elapsed().as_secs_f64(),
        size as f64 / 1e6
    ));
    let warm = 20;
    let n = ctx.set.samples + warm;
    let pick =
        |rng: &mut Rng| -> Vec<String> { (0..n).map(|_| owner_name(rng.below(owners))).collect() };
    let lists: Vec<Vec<String>> = (0..4).map(|_| pick(&mut ctx.rng)).collect();
    // Owners that were ever locked have their lock files on disk: create them for the
    // owners asked about, so status probes real files.
    let locks_dir = storage.join("locks");
    std::fs::create_dir_all(&locks_dir).map_err(|e| format!("mkdir: {e}"))?;
    for owner in lists.iter().flatten() {
        for field in CONVERSATION_FIELDS {
            let p = locks_dir.join(format!("{owner}_{field}.lock"));
            File::options()
                .create(true)
                .append(true)
                .open(&p)
                .map_err(|e| format!("create {}: {e}", p.display()))?;
        }
    }
    let cap = ctx.set.series_cap;

    // In-process, through the public Registry API.
    let reg = Registry::open(Config::defaults(&storage)).map_err(|e| format!("open: {e}"))?;
    let st_in = series(&lists[0], warm, cap, |o| {
        reg.status(None, o).map(|_| ()).map_err(|e| e.to_string())
    })?;
    ctx.detail(format!("in-process Registry::status  {}", st_in.summary()));
    // An owner the random fill never picked has no history (with 10 pairs per owner on
    // average, a few in a thousand): that is an answer too, but most must have some.
    let mut empty = 0usize;
    let hi_in = series(&lists[1], warm, cap, |o| {
        let q = HistoryQuery {
            owner: Some(o.to_string()),
            limit: 50,
            ..HistoryQuery::default()
        };
        let rows = reg.history(&q).map_err(|e| e.to_string())?;
        empty += usize::from(rows.is_empty());
        Ok(())
    })?;
    if empty * 10 > lists[1].len() {
        return Err(format!(
            "{empty} of {} owners asked about had no history: the fill or the query is wrong",
            lists[1].len()
        ));
    }
    ctx.detail(format!(
        "in-process Registry::history {}{}",
        hi_in.summary(),
        if empty > 0 {
            format!(" ({empty} owners asked about had no events)")
        } else {
            String::new()
        }
    ));
    drop(reg);

    // Through the real service.
    let t = Instant::now();
    let svc = Service::start(
        &ctx.server_bin,
        &storage,
        false,
        "service on the large database",
        ctx.rust_log.as_deref(),
    )?;
    let start_s = t.elapsed().as_secs_f64();
    let port = svc.port;
    let pid = svc.pid();
    ctx.bigdb = Some(svc);
    // The first write right after start-up waits behind the start-up upkeep (reconcile,
    // history pruning) on this database.
    let mut c = LeaseClient::new(port);
    let t = Instant::now();
    c.pair(&owner_name(0))?;
    let first_write = t.elapsed().as_secs_f64() * 1e3;
    if let Some(s) = ctx.bigdb.as_mut() {
        s.settle();
    }
    ctx.detail(format!(
        "service (pid {pid}) listening {start_s:.1} s after launch; first acquire+release right after {}",
        ms(first_write)
    ));
    let st_http = series(&lists[2], warm, cap, |o| {
        c.ok("GET", &format!("/api/v1/locks/{o}"), None).map(|_| ())
    })?;
    ctx.detail(format!(
        "HTTP GET /api/v1/locks/{{owner}}          {}",
        st_http.summary()
    ));
    let hi_http = series(&lists[3], warm, cap, |o| {
        c.ok("GET", &format!("/api/v1/history?owner={o}&limit=50"), None)
            .map(|_| ())
    })?;
    ctx.detail(format!(
        "HTTP GET /api/v1/history?owner=&limit=50 {}",
        hi_http.summary()
    ));

    // The floor of one request over HTTP: a bare warp round trip (p99 against p99).
    let bare_p99 = {
        let port = ctx.bare()?.port;
        round_trip_us(port, "/bare", std::time::Duration::from_millis(700))?.1
    };
    let scale = format!("{owners} owners, {events} events");
    let floor = |what: &str, p99_ms: f64| Floor {
        what: format!("bare warp round trip p99 {bare_p99:.0} µs ({what})"),
        us: bare_p99,
        measured_us: p99_ms * 1e3,
    };
    let status_floor = floor("GET, no registry call", st_http.p99());
    ctx.report_with(
        "owner_status_p99",
        format!(
            "http p99 {}  in-process p99 {}  (target p99 < 2 ms; {scale})",
            ms(st_http.p99()),
            ms(st_in.p99())
        ),
        Verdict::of(st_http.p99() < 2.0 && st_in.p99() < 2.0),
        Data::new(st_http.p99(), "ms")
            .target("p99 < 2 ms (http and in-process)")
            .floor(Some(status_floor.clone()))
            .more("in_process_p99_ms", st_in.p99())
            .more("owners", owners as f64)
            .more("events", events as f64),
    );
    ctx.floor_line("owner_status_p99", "status over HTTP (p99)", &status_floor);
    let history_floor = floor("GET, no registry call", hi_http.p99());
    ctx.report_with(
        "owner_history_p99",
        format!(
            "http p99 {}  in-process p99 {}  (target p99 < 5 ms; newest 50 events; {scale})",
            ms(hi_http.p99()),
            ms(hi_in.p99())
        ),
        Verdict::of(hi_http.p99() < 5.0 && hi_in.p99() < 5.0),
        Data::new(hi_http.p99(), "ms")
            .target("p99 < 5 ms (http and in-process)")
            .floor(Some(history_floor.clone()))
            .more("in_process_p99_ms", hi_in.p99())
            .more("owners", owners as f64)
            .more("events", events as f64),
    );
    ctx.floor_line(
        "owner_history_p99",
        "history page over HTTP (p99)",
        &history_floor,
    );
    Ok(())
}

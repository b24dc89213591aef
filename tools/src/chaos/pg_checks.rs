//! The checks at the end of a PostgreSQL-mode run (`--postgres`, see `pg`), besides the
//! fencing checks of `invariants::analyse` (overlaps of fenced sections, lost updates,
//! stale writes accepted), which read the same journals and data files:
//!
//! - history: every service's history is read through `GET /api/v1/history`, page by
//!   page, from both services, and from the `lock_history` view; the three must be the
//!   same rows. From it: every `acquired` event is closed by exactly one closing event
//!   (`released`, `expired`, `cleared`, `force_cleared`, `reconciled`), per lock the
//!   grants and their ends alternate in event order (an `acquired` while the previous
//!   grant is still open is two holders at once), and tokens strictly increase in grant
//!   order;
//! - leases, from the holders' journals: every grant a holder received has its
//!   `acquired` event and every release answered 200 its `released` event; a holder whose
//!   fenced write or admit was refused must not have its release answered 200 (it was
//!   granted away meanwhile, so its release must say `lease_gone`); a renewal never
//!   extends a lease past its ttl; and every request is answered unless its service was
//!   SIGKILLed while it was in flight;
//! - the database: `locks.last_token` is the newest granted token of each lock.
//!
//! Invariant: nothing here writes; the database is read with plain `SELECT`s.

use crate::workers::api;
use crate::LEASE_TTL_MS;
use lockledger_harness::pg::{connect_url, describe};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

/// Events that end a grant.
const CLOSING: [&str; 5] = [
    "released",
    "expired",
    "cleared",
    "force_cleared",
    "reconciled",
];
/// History rows per page (small, so that even a quick run reads several pages).
const PAGE: usize = 200;
/// A renewal may end its lease at most this much later than a ttl from now, and a lease
/// may be renewed or released at most this much later than a ttl after the answer of
/// its grant or last renewal (clock readings and rounding between the database and this
/// host).
const TTL_SLACK_MS: i64 = 300;

type Query = Box<dyn FnMut(&str) -> Result<Vec<Vec<Option<String>>>, String>>;

/// Plain SQL on the run's database (through the harness's bounded connection); every
/// column is read as text, so queries cast what they select to `text`.
pub struct Sql {
    url: String,
    query: Option<Query>,
}

impl Sql {
    pub fn connect(url: &str) -> Result<Sql, String> {
        Ok(Sql {
            url: url.to_string(),
            query: Some(Self::open(url)?),
        })
    }

    fn open(url: &str) -> Result<Query, String> {
        let mut client = connect_url(url)?;
        Ok(Box::new(move |q: &str| {
            let rows = client.query(q, &[]).map_err(|e| describe(&e))?;
            rows.iter()
                .map(|r| {
                    (0..r.len())
                        .map(|i| r.try_get::<_, Option<String>>(i).map_err(|e| describe(&e)))
                        .collect()
                })
                .collect()
        }))
    }

    /// The rows of `q`; on an error, once more on a new connection.
    pub fn rows(&mut self, q: &str) -> Result<Vec<Vec<Option<String>>>, String> {
        if let Some(query) = self.query.as_mut() {
            if let Ok(rows) = query(q) {
                return Ok(rows);
            }
        }
        self.query = None;
        let mut query = Self::open(&self.url)?;
        let rows = query(q).map_err(|e| format!("{q}: {e}"))?;
        self.query = Some(query);
        Ok(rows)
    }

    /// The first column of the first row as a number (None: no row, or NULL).
    pub fn int(&mut self, q: &str) -> Result<Option<i64>, String> {
        Ok(self
            .rows(q)?
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .and_then(|v| v.parse().ok()))
    }
}

fn num(v: &Option<String>) -> Option<i64> {
    v.as_deref().and_then(|s| s.parse().ok())
}

/// One history row, as both the API and the view show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ev {
    pub id: i64,
    pub at: i64,
    pub owner: String,
    pub field: String,
    pub event: String,
    pub token: Option<i64>,
    pub holder: Option<String>,
}

/// Every history row through `GET /api/v1/history` on `port`, newest first, page by
/// page ([`PAGE`] rows a page, following `next_cursor`); and how many pages that took.
pub fn history_http(port: u16) -> Result<(Vec<Ev>, u64), String> {
    let mut out = Vec::new();
    let mut cursor: Option<i64> = None;
    let mut pages = 0;
    loop {
        let path = match cursor {
            None => format!("/api/v1/history?limit={PAGE}"),
            Some(c) => format!("/api/v1/history?limit={PAGE}&cursor={c}"),
        };
        let r = api(port, "GET", &path, None, false)?;
        if r.status != 200 {
            return Err(format!("GET {path} on port {port}: HTTP {}", r.status));
        }
        pages += 1;
        let v = r.json_or_null();
        for e in v["events"].as_array().cloned().unwrap_or_default() {
            let text = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            out.push(Ev {
                id: e["event_id"].as_i64().unwrap_or(-1),
                at: lockledger::clock::parse_time(&text("at")).unwrap_or(-1),
                owner: text("owner"),
                field: text("field"),
                event: text("event"),
                token: e["token"].as_i64(),
                holder: e["holder"].as_str().map(str::to_string),
            });
        }
        match v["next_cursor"].as_i64() {
            Some(c) if Some(c) != cursor => cursor = Some(c),
            _ => break,
        }
    }
    Ok((out, pages))
}

/// Every history row through the `lock_history` view, newest first.
pub fn history_sql(sql: &mut Sql) -> Result<Vec<Ev>, String> {
    let rows = sql.rows(
        // Ordered by the view's column (a bare `event_id` would be the text output column).
        "SELECT e.event_id::text, e.at::text, e.owner, e.field, e.event, e.token::text, e.holder
         FROM lock_history e ORDER BY e.event_id DESC",
    )?;
    Ok(rows
        .iter()
        .map(|r| Ev {
            id: num(&r[0]).unwrap_or(-1),
            at: num(&r[1]).unwrap_or(-1),
            owner: r[2].clone().unwrap_or_default(),
            field: r[3].clone().unwrap_or_default(),
            event: r[4].clone().unwrap_or_default(),
            token: num(&r[5]),
            holder: r[6].clone(),
        })
        .collect())
}

/// Where two histories (newest first) differ, if they do.
pub fn first_difference(x: &[Ev], y: &[Ev]) -> Option<String> {
    if let Some((a, b)) = x.iter().zip(y).find(|(a, b)| a != b) {
        return Some(format!("{a:?} vs {b:?}"));
    }
    (x.len() != y.len()).then(|| format!("{} rows vs {} rows", x.len(), y.len()))
}

/// What the history shows.
#[derive(Debug, Default)]
pub struct HistoryTally {
    pub events: usize,
    /// (owner, field, token) whose `acquired` is not closed by exactly one closing event.
    pub orphans: u64,
    /// Grants made while the previous grant of the lock was still open.
    pub overlaps: u64,
    /// Grants whose token is not above every earlier token of the lock.
    pub token_order: u64,
    /// The longest time between two grants (database clock), any lock.
    pub max_grant_gap_ms: i64,
    /// Grants per holder label (`chaos-pg-a`, `chaos-pg-b`).
    pub grants_by: BTreeMap<String, u64>,
    /// Closing events per kind.
    pub ends_by: BTreeMap<String, u64>,
    /// (owner, field, token) of every grant, and of every `released` event.
    pub acquired: HashSet<(String, String, i64)>,
    pub released: HashSet<(String, String, i64)>,
}

pub fn check_history(events: &[Ev]) -> HistoryTally {
    let mut t = HistoryTally {
        events: events.len(),
        ..HistoryTally::default()
    };
    let mut sorted: Vec<&Ev> = events.iter().collect();
    sorted.sort_by_key(|e| e.id);
    let mut pairs: HashMap<(String, String, i64), (u64, u64)> = HashMap::new();
    // per lock: (open grant, newest token granted)
    let mut locks: HashMap<(String, String), (Option<i64>, i64)> = HashMap::new();
    let mut grant_times = Vec::new();
    for e in sorted {
        let Some(token) = e.token else { continue };
        let key = (e.owner.clone(), e.field.clone(), token);
        let lock = locks
            .entry((e.owner.clone(), e.field.clone()))
            .or_insert((None, 0));
        if e.event == "acquired" {
            pairs.entry(key.clone()).or_default().0 += 1;
            if lock.0.is_some() {
                t.overlaps += 1;
                eprintln!(
                    "chaos[postgres]: {}/{} granted token {token} (event {}) while token {} \
                     was still held",
                    e.owner,
                    e.field,
                    e.id,
                    lock.0.unwrap_or_default()
                );
            }
            if token <= lock.1 {
                t.token_order += 1;
                eprintln!(
                    "chaos[postgres]: {}/{} granted token {token} (event {}) after token {}",
                    e.owner, e.field, e.id, lock.1
                );
            }
            lock.1 = lock.1.max(token);
            lock.0 = Some(token);
            *t.grants_by
                .entry(e.holder.clone().unwrap_or_default())
                .or_default() += 1;
            grant_times.push(e.at);
            t.acquired.insert(key);
        } else if CLOSING.contains(&e.event.as_str()) {
            pairs.entry(key.clone()).or_default().1 += 1;
            if lock.0 == Some(token) {
                lock.0 = None;
            }
            *t.ends_by.entry(e.event.clone()).or_default() += 1;
            if e.event == "released" {
                t.released.insert(key);
            }
        }
    }
    for ((owner, field, token), (a, c)) in &pairs {
        if *a != 1 || *c != 1 {
            t.orphans += 1;
            eprintln!(
                "chaos[postgres]: {owner}/{field} token {token}: {a} acquired and {c} closing \
                 events"
            );
        }
    }
    grant_times.sort();
    t.max_grant_gap_ms = grant_times
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or(0);
    t
}

/// What the PostgreSQL-mode holders' journals show.
#[derive(Debug, Default)]
pub struct LeaseTally {
    pub grants: u64,
    pub renew_ok: u64,
    pub renew_gone: u64,
    pub renew_other: u64,
    /// Renewals answered with an end later than a ttl from now, and renewals and
    /// releases answered 200 although sent past the lease's end.
    pub past_ttl: u64,
    /// Renewals and releases sent past the lease's end (paused or slow holders), and how
    /// many of them were answered `lease_gone`.
    pub late: u64,
    pub late_gone: u64,
    pub release_ok: u64,
    pub release_gone: u64,
    pub release_other: u64,
    /// Holders whose fenced admit or write was refused and whose release said
    /// `lease_gone`: paused or slow holders that were fenced, as they must be.
    pub fenced: u64,
    /// Holders whose fenced admit or write was refused and whose release was answered
    /// 200: their lock was granted to another holder while they still held it.
    pub fenced_but_released: u64,
    /// Requests without an answer while their service was not SIGKILLed, by kind.
    pub unanswered: BTreeMap<String, u64>,
    /// Requests without an answer because their service was SIGKILLed.
    pub unanswered_by_kill: u64,
    /// Grants received with no `acquired` event, releases answered 200 with no
    /// `released` event.
    pub grants_missing: u64,
    pub releases_missing: u64,
}

impl LeaseTally {
    pub fn unanswered_total(&self) -> u64 {
        self.unanswered.values().sum()
    }

    /// A renewal or release sent `since` ms after the answer of its grant or last
    /// renewal: past the ttl, the lease has ended and only `lease_gone` is right.
    fn late_request(&mut self, outcome: Option<&str>, since: i64, line: &str) {
        if since <= LEASE_TTL_MS as i64 + TTL_SLACK_MS {
            return;
        }
        self.late += 1;
        match outcome {
            Some("410") => self.late_gone += 1,
            Some("200") => {
                self.past_ttl += 1;
                eprintln!(
                    "chaos[postgres]: a {LEASE_TTL_MS} ms lease was renewed or released {since} \
                     ms after its grant or last renewal was answered ({line})"
                );
            }
            _ => {}
        }
    }
}

/// Reads the `pg-*.log` journals; `kills[svc]` are the CLOCK_MONOTONIC windows (from
/// before the signal to after the reap) in which service `svc` (`a`, `b`) was SIGKILLed:
/// a request in flight then is explained by the kill.
pub fn check_leases(
    dir: &Path,
    kills: &BTreeMap<String, Vec<(u64, u64)>>,
    history: &HistoryTally,
) -> Result<LeaseTally, String> {
    let mut t = LeaseTally::default();
    let mut refused: HashSet<(String, String, i64)> = HashSet::new();
    let mut released_ok: Vec<(String, String, i64)> = Vec::new();
    let mut released_gone: Vec<(String, String, i64)> = Vec::new();
    let mut granted: Vec<(String, String, i64)> = Vec::new();
    for entry in std::fs::read_dir(dir.join("journal")).map_err(|e| e.to_string())? {
        let path = entry.map_err(|e| e.to_string())?.path();
        if !path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("pg-"))
        {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
        for line in text.lines() {
            let p: Vec<&str> = line.split_whitespace().collect();
            let key = |p: &[&str]| -> Option<(String, String, i64)> {
                Some((
                    p.get(1)?.to_string(),
                    p.get(2)?.to_string(),
                    p.get(3)?.parse().ok()?,
                ))
            };
            match p.first().copied() {
                Some("T") => {
                    if let Some(k) = key(&p) {
                        t.grants += 1;
                        granted.push(k);
                    }
                }
                Some("S") | Some("R") => {
                    if let Some(k) = key(&p) {
                        refused.insert(k);
                    }
                }
                Some("N") => {
                    let since: i64 = p.get(6).and_then(|s| s.parse().ok()).unwrap_or(0);
                    t.late_request(p.get(4).copied(), since, line);
                    match p.get(4).copied() {
                        Some("200") => {
                            t.renew_ok += 1;
                            let left: i64 = p.get(5).and_then(|s| s.parse().ok()).unwrap_or(-1);
                            if left > LEASE_TTL_MS as i64 + TTL_SLACK_MS {
                                t.past_ttl += 1;
                                eprintln!(
                                    "chaos[postgres]: a renewal of a {LEASE_TTL_MS} ms lease \
                                     ends it {left} ms from now ({line})"
                                );
                            }
                        }
                        Some("410") => t.renew_gone += 1,
                        _ => t.renew_other += 1,
                    }
                }
                Some("E") => {
                    let since: i64 = p.get(5).and_then(|s| s.parse().ok()).unwrap_or(0);
                    t.late_request(p.get(4).copied(), since, line);
                    if let Some(k) = key(&p) {
                        match p.get(4).copied() {
                            Some("200") => {
                                t.release_ok += 1;
                                released_ok.push(k);
                            }
                            Some("410") => {
                                t.release_gone += 1;
                                released_gone.push(k);
                            }
                            _ => t.release_other += 1,
                        }
                    }
                }
                Some("U") => {
                    let (Some(svc), Some(kind), Some(t0), Some(t1)) = (
                        p.get(1),
                        p.get(2),
                        p.get(3).and_then(|s| s.parse::<u64>().ok()),
                        p.get(4).and_then(|s| s.parse::<u64>().ok()),
                    ) else {
                        continue;
                    };
                    let killed = kills
                        .get(*svc)
                        .is_some_and(|ks| ks.iter().any(|(k0, k1)| t0 <= *k1 && *k0 <= t1));
                    if killed {
                        t.unanswered_by_kill += 1;
                    } else {
                        *t.unanswered.entry(kind.to_string()).or_default() += 1;
                    }
                }
                _ => {}
            }
        }
    }
    for k in &released_ok {
        if refused.contains(k) {
            t.fenced_but_released += 1;
            eprintln!(
                "chaos[postgres]: {}/{} token {}: the holder's fenced write was refused (a \
                 newer token had been admitted), yet its release was answered 200",
                k.0, k.1, k.2
            );
        }
        if !history.released.contains(k) {
            t.releases_missing += 1;
            eprintln!(
                "chaos[postgres]: {}/{} token {}: release answered 200 but no released event",
                k.0, k.1, k.2
            );
        }
    }
    t.fenced = released_gone
        .iter()
        .filter(|k| refused.contains(*k))
        .count() as u64;
    for k in &granted {
        if !history.acquired.contains(k) {
            t.grants_missing += 1;
            eprintln!(
                "chaos[postgres]: {}/{} token {}: granted to a holder but no acquired event",
                k.0, k.1, k.2
            );
        }
    }
    Ok(t)
}

/// Locks whose `last_token` is not their newest granted token.
pub fn last_token_mismatches(sql: &mut Sql) -> Result<u64, String> {
    let rows = sql.rows(
        "SELECT l.owner, l.field, l.last_token::text, coalesce(max(e.token), 0)::text
         FROM locks l LEFT JOIN event_log e ON e.lock_id = l.lock_id AND e.event = 'acquired'
         GROUP BY l.lock_id, l.owner, l.field, l.last_token",
    )?;
    let mut n = 0;
    for r in rows {
        if num(&r[2]) != num(&r[3]) {
            n += 1;
            eprintln!(
                "chaos[postgres]: lock {:?}/{:?}: last_token {:?} but newest granted token {:?}",
                r[0], r[1], r[2], r[3]
            );
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: i64, event: &str, token: i64, holder: &str) -> Ev {
        Ev {
            id,
            at: 1_000 + id * 10,
            owner: "chaos0".into(),
            field: "messages".into(),
            event: event.into(),
            token: Some(token),
            holder: Some(holder.into()),
        }
    }

    #[test]
    fn a_clean_history_passes_and_is_counted() {
        let h = [
            ev(1, "acquired", 1, "chaos-pg-a"),
            ev(2, "released", 1, "chaos-pg-a"),
            ev(3, "acquired", 2, "chaos-pg-b"),
            ev(4, "renewed", 2, "chaos-pg-b"),
            ev(5, "expired", 2, "chaos-pg-b"),
            ev(6, "acquired", 3, "chaos-pg-a"),
            ev(7, "reconciled", 3, "chaos-pg-a"),
        ];
        // Newest first, as the API and the view give it.
        let newest_first: Vec<Ev> = h.iter().rev().cloned().collect();
        let t = check_history(&newest_first);
        assert_eq!((t.orphans, t.overlaps, t.token_order), (0, 0, 0));
        assert_eq!(t.grants_by["chaos-pg-a"], 2);
        assert_eq!(t.ends_by["expired"], 1);
        assert_eq!(t.max_grant_gap_ms, 30);
        assert!(t
            .released
            .contains(&("chaos0".into(), "messages".into(), 1)));
    }

    #[test]
    fn two_open_grants_unclosed_ones_and_old_tokens_are_caught() {
        let t = check_history(&[
            ev(1, "acquired", 5, "chaos-pg-a"),
            // Granted while 5 is open, with an older token, and never closed.
            ev(2, "acquired", 4, "chaos-pg-b"),
            ev(3, "released", 5, "chaos-pg-a"),
            ev(4, "expired", 5, "chaos-pg-a"),
        ]);
        assert_eq!(t.overlaps, 1);
        assert_eq!(t.token_order, 1);
        // 5: closed twice; 4: never closed.
        assert_eq!(t.orphans, 2);
    }

    #[test]
    fn histories_that_differ_say_where() {
        let a = [ev(2, "released", 1, "x"), ev(1, "acquired", 1, "x")];
        assert_eq!(first_difference(&a, &a), None);
        assert!(first_difference(&a, &a[..1]).is_some_and(|d| d.contains("2 rows vs 1")));
        let mut b = a.clone();
        b[1].token = Some(9);
        assert!(first_difference(&a, &b).is_some_and(|d| d.contains("Some(9)")));
    }

    #[test]
    fn lease_journals_tell_fenced_holders_from_second_holders() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("journal")).unwrap();
        let late = LEASE_TTL_MS + TTL_SLACK_MS as u64 + 1;
        let journal = format!(
            "T chaos0 messages 1 a\n\
             E chaos0 messages 1 200 3\n\
             T chaos0 messages 2 a\n\
             S chaos0 messages 2\n\
             E chaos0 messages 2 410 {late}\n\
             T chaos0 messages 3 a\n\
             R chaos0 messages 3\n\
             E chaos0 messages 3 200 5\n\
             T chaos0 messages 7 a\n\
             N chaos0 messages 7 200 790 100\n\
             N chaos0 messages 7 200 30000 100\n\
             E chaos0 messages 7 200 {late}\n\
             U a renew 100 200\n\
             U a acquire 1000 2000\n\
             U b release 1000 2000\n"
        );
        std::fs::write(dir.path().join("journal").join("pg-1.log"), journal).unwrap();
        // Not a PostgreSQL-mode journal: ignored.
        std::fs::write(
            dir.path().join("journal").join("http-1.log"),
            "E x y 1 200\n",
        )
        .unwrap();
        let mut history = HistoryTally::default();
        for token in [1, 2, 3] {
            history
                .acquired
                .insert(("chaos0".into(), "messages".into(), token));
        }
        history
            .released
            .insert(("chaos0".into(), "messages".into(), 1));
        let kills = BTreeMap::from([("a".to_string(), vec![(1500, 1600)])]);
        let t = check_leases(dir.path(), &kills, &history).unwrap();
        assert_eq!(t.grants, 4);
        assert_eq!((t.release_ok, t.release_gone), (3, 1));
        assert_eq!(t.fenced, 1, "token 2: refused, then lease_gone");
        assert_eq!(t.fenced_but_released, 1, "token 3: refused, then released");
        // Token 7: renewed 30 s ahead, and released past its ttl.
        assert_eq!(t.past_ttl, 2);
        assert_eq!((t.late, t.late_gone), (2, 1));
        assert_eq!(t.grants_missing, 1, "token 7 has no acquired event");
        assert_eq!(
            t.releases_missing, 2,
            "tokens 3 and 7 have no released event"
        );
        // The acquire on a was in flight when a was killed; the others were not.
        assert_eq!(t.unanswered_by_kill, 1);
        assert_eq!(
            t.unanswered,
            BTreeMap::from([("release".to_string(), 1), ("renew".to_string(), 1)])
        );
    }
}

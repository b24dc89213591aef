//! The checks at the end of a chaos run, from the workers' journals, the data files and
//! the database.
//!
//! - overlaps: no two valid critical sections on one lock overlap in time (a fenced
//!   section is valid when its write was accepted; Python sections always count);
//! - lost_updates: every accepted write is present in the final data, and every Python
//!   section added its line;
//! - stale_writes_accepted: no write was accepted after a newer holder was admitted, and
//!   the tokens in the data strictly increase;
//! - orphan_events: every `acquired` event is closed by exactly one closing event;
//! - integrity: `PRAGMA integrity_check` is ok.
//!
//! Invariant: the database is only read, through the library's read-only admin console
//! (`lockledger::store::console::run`) and its read-only connection for the integrity
//! check; nothing here writes anywhere.

use crate::workers::data_file;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, Default)]
pub struct Tally {
    pub runs: u64,
    pub overlaps: u64,
    pub lost_updates: u64,
    pub stale_writes_accepted: u64,
    pub refused_writes: u64,
    pub refused_admits: u64,
}

type Key = (String, String);

pub fn analyse(dir: &Path) -> Result<Tally, String> {
    let mut v = Tally::default();
    // (owner, field) -> intervals; token -> admit stamp; accepted writes
    let mut intervals: HashMap<Key, Vec<(u64, u64)>> = HashMap::new();
    let mut admits: HashMap<Key, Vec<(i64, u64)>> = HashMap::new();
    let mut writes: HashMap<Key, Vec<(i64, u64)>> = HashMap::new();
    let mut py_sections: HashMap<String, u64> = HashMap::new();
    for entry in std::fs::read_dir(dir.join("journal")).map_err(|e| e.to_string())? {
        let path = entry.map_err(|e| e.to_string())?.path();
        let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
        for line in text.lines() {
            let p: Vec<&str> = line.split_whitespace().collect();
            let num = |i: usize| p.get(i).and_then(|s| s.parse::<i64>().ok());
            match p.as_slice() {
                ["A", o, f, ..] => {
                    if let (Some(t), Some(at)) = (num(3), num(4)) {
                        admits
                            .entry((o.to_string(), f.to_string()))
                            .or_default()
                            .push((t, at as u64));
                    }
                }
                ["W", o, f, ..] => {
                    if let (Some(t), Some(at)) = (num(3), num(4)) {
                        writes
                            .entry((o.to_string(), f.to_string()))
                            .or_default()
                            .push((t, at as u64));
                    }
                }
                ["S", ..] => v.refused_writes += 1,
                ["R", ..] => v.refused_admits += 1,
                ["P", o, f, ..] => {
                    if let (Some(a), Some(b)) = (num(3), num(4)) {
                        intervals
                            .entry((o.to_string(), f.to_string()))
                            .or_default()
                            .push((a as u64, b as u64));
                        *py_sections.entry(o.to_string()).or_default() += 1;
                        v.runs += 1;
                    }
                }
                _ => {}
            }
        }
    }
    for (key, ws) in &writes {
        let key_admits = admits.get(key).cloned().unwrap_or_default();
        let admit_of: HashMap<i64, u64> = key_admits.iter().copied().collect();
        let final_tokens: Vec<i64> = {
            let (_, data) = data_file(dir, &key.0, &key.1)
                .read()
                .map_err(|e| e.to_string())?;
            String::from_utf8_lossy(&data)
                .lines()
                .filter_map(|l| l.parse().ok())
                .collect()
        };
        v.stale_writes_accepted += final_tokens.windows(2).filter(|w| w[1] <= w[0]).count() as u64;
        for (token, at) in ws {
            v.runs += 1;
            if !final_tokens.contains(token) {
                v.lost_updates += 1;
            }
            // A write accepted after a newer holder was admitted is a stale write.
            if key_admits.iter().any(|(t, a)| t > token && a < at) {
                v.stale_writes_accepted += 1;
            }
            if let Some(start) = admit_of.get(token) {
                intervals
                    .entry(key.clone())
                    .or_default()
                    .push((*start, *at));
            }
        }
    }
    for (owner, n) in &py_sections {
        let p = dir.join("data").join(format!("py-{owner}_memory.log"));
        let lines = std::fs::read_to_string(p)
            .map(|t| t.lines().count() as u64)
            .unwrap_or(0);
        v.lost_updates += n.saturating_sub(lines);
    }
    for list in intervals.values_mut() {
        list.sort();
        let mut end = 0u64;
        for (s, e) in list.iter() {
            if *s < end {
                v.overlaps += 1;
            }
            end = end.max(*e);
        }
    }
    Ok(v)
}

/// (orphan grants, integrity_check answer, holder rows left).
pub fn database_checks(dir: &Path) -> Result<(u64, String, u64), String> {
    let db = dir.join("storage").join("registry.db");
    let run = |sql: &str| -> Result<serde_json::Value, String> {
        let r = lockledger::store::console::run(
            &db,
            sql,
            lockledger::store::console::Limits::default(),
        )
        .map_err(|e| e.to_string())?;
        Ok(r.rows
            .first()
            .and_then(|row| row.first())
            .cloned()
            .unwrap_or_default())
    };
    let orphans = run("SELECT count(*) FROM (SELECT lock_id, token,
                sum(event = 'acquired') AS a,
                sum(event IN ('released','expired','cleared','force_cleared','reconciled')) AS c
             FROM lock_events WHERE token IS NOT NULL
               AND event IN ('acquired','released','expired','cleared','force_cleared','reconciled')
             GROUP BY lock_id, token) WHERE a != 1 OR c != 1")?
    .as_u64()
    .unwrap_or(u64::MAX);
    let holders = run("SELECT count(*) FROM holders")?
        .as_u64()
        .unwrap_or(u64::MAX);
    // The console refuses this pragma (it reads the whole file); the library's read-only
    // connection runs it.
    let conn = lockledger::store::db::open_read_only(&db, Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    Ok((orphans, integrity, holders))
}

/// How many history rows of one event kind the database holds (e.g. `file_replaced`).
pub fn count_events(dir: &Path, event: &str) -> Result<u64, String> {
    let db = dir.join("storage").join("registry.db");
    if !event.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
        return Err(format!("not an event name: {event:?}"));
    }
    let r = lockledger::store::console::run(
        &db,
        &format!("SELECT count(*) FROM lock_events WHERE event = '{event}'"),
        lockledger::store::console::Limits::default(),
    )
    .map_err(|e| e.to_string())?;
    Ok(r.rows
        .first()
        .and_then(|row| row.first())
        .and_then(|v| v.as_u64())
        .unwrap_or(0))
}

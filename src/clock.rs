//! Time: the injectable clock and the one way times are shown.
//!
//! Invariants: times are stored as UTC milliseconds since the Unix epoch (`i64`) and sent
//! as RFC 3339. Durations that decide something (lease expiry, waiting, renew intervals)
//! run on the monotonic clock, which a wall-clock step does not move; wall time is for
//! records and display. Both come from a [`Clock`], so tests move time (or step the wall
//! clock alone) instead of sleeping.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Wall-clock time, UTC milliseconds since the epoch: for records and display.
    fn now_ms(&self) -> i64;
    /// Monotonic time: for deadlines and intervals.
    fn monotonic(&self) -> Instant;
}

#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
    }
    fn monotonic(&self) -> Instant {
        Instant::now()
    }
}

/// A clock tests move by hand: [`ManualClock::advance_ms`] moves both clocks, as time
/// passing does; [`ManualClock::step_wall_ms`] moves the wall clock alone, as an
/// administrator or NTP stepping it does.
#[derive(Debug)]
pub struct ManualClock {
    wall_ms: AtomicI64,
    mono_ms: AtomicU64,
    base: Instant,
}

impl ManualClock {
    pub fn new(start_ms: i64) -> Arc<ManualClock> {
        Arc::new(ManualClock {
            wall_ms: AtomicI64::new(start_ms),
            mono_ms: AtomicU64::new(0),
            base: Instant::now(),
        })
    }
    /// Time passes: both clocks move forward by `ms` (≥ 0).
    pub fn advance_ms(&self, ms: i64) {
        let ms = ms.max(0);
        self.wall_ms.fetch_add(ms, Ordering::SeqCst);
        self.mono_ms.fetch_add(ms as u64, Ordering::SeqCst);
    }
    /// The wall clock is stepped by `ms` (either way); monotonic time does not move.
    pub fn step_wall_ms(&self, ms: i64) {
        self.wall_ms.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.wall_ms.load(Ordering::SeqCst)
    }
    fn monotonic(&self) -> Instant {
        self.base + Duration::from_millis(self.mono_ms.load(Ordering::SeqCst))
    }
}

/// RFC 3339 in UTC with exactly three fraction digits, e.g. `2026-11-27T05:20:04.120Z`,
/// so the strings sort in time order. Times outside years 0000–9999 are shown as plain
/// milliseconds rather than as a wrong date.
pub fn rfc3339(ms: i64) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    match OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000) {
        Ok(dt) if (0..=9999).contains(&dt.year()) => {
            dt.format(FORMAT).unwrap_or_else(|_| ms.to_string())
        }
        _ => ms.to_string(),
    }
}

/// `HH:MM:SS` (UTC) for one-line messages.
pub fn hms(ms: i64) -> String {
    let dt = OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!("{:02}:{:02}:{:02}", dt.hour(), dt.minute(), dt.second())
}

/// Parses RFC 3339, or a bare integer of milliseconds since the epoch.
pub fn parse_time(s: &str) -> Option<i64> {
    if let Ok(ms) = s.parse::<i64>() {
        return Some(ms);
    }
    OffsetDateTime::parse(s, &Rfc3339)
        .ok()
        .map(|dt| (dt.unix_timestamp_nanos() / 1_000_000) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_round_trip() {
        let ms = 1_764_220_804_123;
        let s = rfc3339(ms);
        assert_eq!(s, "2025-11-27T05:20:04.123Z");
        assert_eq!(parse_time(&s), Some(ms));
        assert_eq!(parse_time("1764220804123"), Some(ms));
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(hms(ms), "05:20:04");
        assert_eq!(rfc3339(1_764_220_804_000), "2025-11-27T05:20:04.000Z");
        assert_eq!(rfc3339(253_402_387_139_999), "253402387139999");
    }
}

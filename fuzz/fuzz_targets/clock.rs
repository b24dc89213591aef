//! Time parsing and display (`src/clock.rs`).
//!
//! Input: any bytes. As text (lossy) they go to `parse_time`; their first 8 bytes, as a
//! little-endian i64, are a time in epoch milliseconds for `rfc3339` and `hms`.
//!
//! Properties:
//! - `parse_time`, `rfc3339` and `hms` never panic;
//! - for any millisecond time of years 0000..=9999 (what RFC 3339 can write),
//!   `parse_time(rfc3339(ms)) == Some(ms)` and `rfc3339` writes UTC (`Z`);
//! - a time `parse_time` reads in that range is shown again as the same instant.

#![no_main]

use libfuzzer_sys::fuzz_target;
use lockledger::clock::{hms, parse_time, rfc3339};

/// 0000-01-01T00:00:00.000Z and 9999-12-31T23:59:59.999Z in epoch milliseconds.
const MIN_MS: i64 = -62_167_219_200_000;
const MAX_MS: i64 = 253_402_300_799_999;

fn check_shown(ms: i64) {
    let shown = rfc3339(ms);
    let _ = hms(ms);
    if (MIN_MS..=MAX_MS).contains(&ms) {
        assert_eq!(parse_time(&shown), Some(ms), "{ms} shown as {shown:?}");
        // `time` drops trailing zeros of the fraction: `...:04.5Z`, `...:04Z`.
        assert!((20..=24).contains(&shown.len()), "{shown:?}");
        assert!(shown.ends_with('Z'), "{shown:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Some(ms) = parse_time(&text) {
        check_shown(ms);
    }
    let trimmed = text.trim();
    if let Some(ms) = parse_time(trimmed) {
        check_shown(ms);
    }
    if let Some(bytes) = data.get(..8) {
        let ms = i64::from_le_bytes(bytes.try_into().expect("8 bytes"));
        check_shown(ms);
        check_shown(ms % (MAX_MS + 1));
    }
});

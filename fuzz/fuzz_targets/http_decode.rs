//! The router's request decoding (`src/http/decode.rs`, `src/http/routes.rs`).
//!
//! Input: `path 0xFF query 0xFF body`. 0xFF never occurs in UTF-8, so it splits the
//! input without restricting the path or query; the body stays raw bytes.
//!
//! Properties:
//! - `fuzz_decode(path, query, body)` never panics (path split and percent-decoding,
//!   route classification, query parsing, every JSON body type);
//! - `percent_decode` never panics, and undoes percent-encoding of any string exactly
//!   (with `+` left alone in paths and read as a space in queries).

#![no_main]

use libfuzzer_sys::fuzz_target;
use lockledger::http::decode::{fuzz_decode, percent_decode};
use std::fmt::Write;

fn encode_all(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        let _ = write!(out, "%{b:02X}");
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |&b| b == 0xFF);
    let path = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let query = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let body = parts.next().unwrap_or_default();

    fuzz_decode(&path, &query, body);
    // The whole input as a path and as a query too, so splitting is not needed to reach
    // every decoder with every byte.
    let whole = String::from_utf8_lossy(data);
    fuzz_decode(&whole, &whole, data);

    let _ = percent_decode(&path, false);
    let _ = percent_decode(&query, true);

    let encoded = encode_all(&path);
    assert_eq!(
        percent_decode(&encoded, false).ok().as_deref(),
        Some(&*path)
    );
    assert_eq!(percent_decode(&encoded, true).ok().as_deref(), Some(&*path));
    if !path.contains(['%', '+']) {
        assert_eq!(percent_decode(&path, false).ok().as_deref(), Some(&*path));
        assert_eq!(percent_decode(&path, true).ok().as_deref(), Some(&*path));
    }
});

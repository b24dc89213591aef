//! CSV export of the history (`src/export.rs`).
//!
//! Input: any bytes, lossily read as text. The whole text is one cell; split at 0xFF
//! (never in UTF-8) its parts fill the text columns of one history row.
//!
//! Properties:
//! - `csv_cell` never panics; output with `,`, `"`, CR or LF is quoted, and every output
//!   reads back (RFC 4180) as the value, or the value behind a `'` that defuses a
//!   formula; a cell never reads back as text starting with `= + - @ TAB CR` unless that
//!   text is a number;
//! - `history_csv` writes a header and one record per row, 14 fields each, and the text
//!   columns read back as their cells.

#![no_main]

use libfuzzer_sys::fuzz_target;
use lockledger::export::{csv_cell, history_csv, HISTORY_CSV_HEADER};
use lockledger::store::history::EventRow;

const FORMULA_START: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

/// Reads one cell as RFC 4180 writes it.
fn read_cell(cell: &str) -> String {
    if let Some(inner) = cell.strip_prefix('"') {
        let inner = inner
            .strip_suffix('"')
            .unwrap_or_else(|| panic!("unterminated quoted cell {cell:?}"));
        let unpaired = inner.replace("\"\"", "");
        assert!(!unpaired.contains('"'), "lone quote inside {cell:?}");
        inner.replace("\"\"", "\"")
    } else {
        assert!(
            !cell.contains([',', '"', '\n', '\r']),
            "unquoted cell with a special character: {cell:?}"
        );
        cell.to_string()
    }
}

fn check_cell(value: &str) {
    let cell = csv_cell(value);
    let read = read_cell(&cell);
    if read != value {
        assert_eq!(read, format!("'{value}"), "{value:?} written as {cell:?}");
        assert!(value.starts_with(FORMULA_START), "needless ' on {value:?}");
    }
    if read.starts_with(FORMULA_START) {
        assert!(read.parse::<f64>().is_ok(), "formula survives: {cell:?}");
    }
}

/// Splits a CSV document into records of fields (RFC 4180, LF record ends).
fn read_csv(text: &str) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => {
                assert!(field.is_empty(), "quote inside an unquoted field: {text:?}");
                quoted = true;
            }
            (false, ',') => record.push(std::mem::take(&mut field)),
            (false, '\n') => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            (false, c) => field.push(c),
        }
    }
    assert!(!quoted, "unterminated quote");
    assert!(field.is_empty() && record.is_empty(), "no final newline");
    records
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    check_cell(&text);

    let parts: Vec<String> = data
        .split(|&b| b == 0xFF)
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    let part = |i: usize| parts.get(i).cloned().unwrap_or_default();
    for p in &parts {
        check_cell(p);
    }
    let n = data.len() as i64;
    let row = EventRow {
        event_id: n,
        at: n.wrapping_mul(1_000_003),
        namespace: part(0),
        owner: part(1),
        field: part(2),
        event: part(3),
        token: Some(-n),
        pid: Some(n as i32),
        host: Some(part(4)),
        holder: Some(part(5)),
        operation: Some(part(6)),
        actor: Some(part(7)),
        reason: Some(part(8)),
        held_ms: None,
        count: 3,
    };
    let out = history_csv(&[row.clone(), row.clone()]);
    let records = read_csv(&out);
    assert_eq!(records.len(), 3, "{out:?}");
    assert_eq!(records[0].join(","), HISTORY_CSV_HEADER);
    for r in &records[1..] {
        assert_eq!(r.len(), 15, "{out:?}");
        for (got, want) in [(&r[2], &row.namespace), (&r[3], &row.owner)] {
            assert_eq!(*got, read_cell(&csv_cell(want)));
        }
        assert_eq!(r[0], n.to_string());
        assert_eq!(r[13], "");
        assert_eq!(r[14], "3");
    }
});

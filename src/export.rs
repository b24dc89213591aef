//! Text renderings shared by the CLI and the HTTP API: CSV of history, plain tables.
//!
//! Invariant: CSV cells are quoted when needed and a cell that a spreadsheet would run
//! as a formula (`=`, `+`, `-`, `@` first) is prefixed with `'`, because history holds
//! client-supplied labels.

use crate::store::history::EventRow;

pub const HISTORY_CSV_HEADER: &str =
    "event_id,at,namespace,owner,field,event,token,pid,host,holder,operation,actor,reason,held_ms,count";

pub fn csv_cell(value: &str) -> String {
    let defused = match value.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') if value.parse::<f64>().is_err() => {
            format!("'{value}")
        }
        _ => value.to_string(),
    };
    if defused.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", defused.replace('"', "\"\""))
    } else {
        defused
    }
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref()
        .map(|x| csv_cell(&x.to_string()))
        .unwrap_or_default()
}

pub fn history_csv(rows: &[EventRow]) -> String {
    let mut out = String::with_capacity(64 * (rows.len() + 1));
    out.push_str(HISTORY_CSV_HEADER);
    out.push('\n');
    out.push_str(&history_csv_rows(rows));
    out
}

/// The CSV lines of `rows`, without the header (for streamed exports).
pub fn history_csv_rows(rows: &[EventRow]) -> String {
    let mut out = String::with_capacity(64 * rows.len());
    for r in rows {
        let cells = [
            r.event_id.to_string(),
            crate::clock::rfc3339(r.at),
            csv_cell(&r.namespace),
            csv_cell(&r.owner),
            csv_cell(&r.field),
            csv_cell(&r.event),
            opt(&r.token),
            opt(&r.pid),
            opt(&r.host),
            opt(&r.holder),
            opt(&r.operation),
            opt(&r.actor),
            opt(&r.reason),
            opt(&r.held_ms),
            r.count.to_string(),
        ];
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    out
}

/// Left-aligned columns separated by two spaces; widths from the widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(c);
                s.push_str(&" ".repeat(widths[i] - c.chars().count() + 2));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(headers.to_vec());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_and_defuses_formulas() {
        assert_eq!(csv_cell("plain"), "plain");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_cell("=cmd()"), "'=cmd()");
        assert_eq!(csv_cell("-5"), "-5");
        assert_eq!(csv_cell("@SUM(A1)"), "'@SUM(A1)");
    }

    #[test]
    fn tables_align() {
        let t = table(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A    BB\nxxx  y\n");
    }
}

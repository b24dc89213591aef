//! Regression tests from fuzzing (`fuzz/`): the hand-written seeds that exercise edge
//! cases, and every input a fuzz target found, run as plain tests with the same
//! properties the targets check. A test marked `#[ignore = "BUG: ..."]` records a bug
//! in `src/` that is not fixed yet; it passes once the bug is.

use lockledger::clock::{hms, parse_time, rfc3339};
use lockledger::config::Namespace;
use lockledger::export::{csv_cell, history_csv, HISTORY_CSV_HEADER};
use lockledger::http::decode::{fuzz_decode, percent_decode};
use lockledger::ids::{parse_file_name, LockKey, MAIN_FIELD_ALIAS, MAX_OWNER_LEN};
use lockledger::kernel::proc_locks::{flock_holders, parse, ProcLock, ProcLockKind};
use lockledger::store::history::EventRow;
use lockledger::Config;
use std::path::{Component, Path};

// ---------------------------------------------------------------- ids (fuzz target `ids`)

fn config() -> Config {
    Config::defaults("/tmp/x")
}

/// The file name is one plain path component.
fn assert_plain_name(name: &str) {
    assert!(!name.contains('/'), "slash in {name:?}");
    assert!(!name.contains('\0'), "NUL in {name:?}");
    assert!(!name.starts_with('.'), "leading dot in {name:?}");
    assert!(name != "." && name != "..", "{name:?}");
    assert!(name.len() <= 255, "{} bytes: {name:?}", name.len());
    let mut parts = Path::new(name).components();
    assert!(
        matches!(parts.next(), Some(Component::Normal(_))),
        "{name:?}"
    );
    assert!(parts.next().is_none(), "{name:?}");
}

/// What the `ids` target checks for one (namespace, owner, field): if the key is
/// accepted, its file name is plain and reads back as (owner, field as stored).
/// Returns whether the key was accepted.
fn check_key(ns_name: Option<&str>, owner: &str, field: &str) -> bool {
    let config = config();
    let Ok(key) = LockKey::in_config(&config, ns_name, owner, field) else {
        return false;
    };
    let ns: &Namespace = match ns_name {
        Some(n) => config.namespace(n).expect("namespace"),
        None => config.default_namespace(),
    };
    let stored = if field == MAIN_FIELD_ALIAS { "" } else { field };
    assert_eq!((key.owner(), key.field()), (owner, stored));
    let name = key.file_name(ns);
    assert_plain_name(&name);
    assert_eq!(
        parse_file_name(ns, &name),
        Some((owner.to_string(), stored.to_string())),
        "{name:?}"
    );
    true
}

/// What the `ids` target checks for a raw name: no panic, and a name that parses is
/// exactly the file name of the key it parses to.
fn check_parse(name: &str) {
    for ns in &config().namespaces {
        if let Some((owner, field)) = parse_file_name(ns, name) {
            let key = LockKey::new(ns, &owner, &field).expect("parsed key is valid");
            assert_eq!(key.file_name(ns), name);
            assert_plain_name(name);
        }
    }
}

const NAMESPACES: [Option<&str>; 3] = [Some("conversation"), Some("document"), None];

#[test]
fn ids_every_field_round_trips_in_both_namespaces() {
    let config = config();
    for ns in &config.namespaces {
        for field in ns
            .fields
            .iter()
            .map(String::as_str)
            .chain([MAIN_FIELD_ALIAS])
        {
            for owner in [
                "c1",
                "main",
                "all",
                "a_memory",
                "x-",
                "a..",
                "user@example.com_a1B2c3",
                "x+y.z-1",
                "messages_",
                "raw_data-",
            ] {
                assert!(check_key(Some(&ns.name), owner, field), "{owner}/{field}");
            }
        }
    }
}

#[test]
fn ids_owner_main_and_field_main() {
    for ns in NAMESPACES {
        assert!(check_key(ns, "main", "main"));
        assert!(check_key(ns, "main", ""));
    }
    let config = config();
    let key = LockKey::in_config(&config, None, "main", "main").unwrap();
    assert_eq!(key.field(), "");
    assert_eq!(key.file_name(config.default_namespace()), "main_.lock");
}

#[test]
fn ids_longest_owner_fits_one_name() {
    let owner = "a".repeat(MAX_OWNER_LEN);
    for ns in &config().namespaces {
        for field in &ns.fields {
            assert!(check_key(Some(&ns.name), &owner, field));
        }
    }
}

#[test]
fn ids_hostile_owners_and_fields_are_refused() {
    let long = "a".repeat(300);
    let just_over = "a".repeat(MAX_OWNER_LEN + 1);
    let owners = [
        "",
        ".",
        "..",
        "../x",
        "a/b",
        "/etc/passwd",
        "a\0b",
        "\0",
        ".hidden",
        "-rf",
        "a b",
        "a\\b",
        "é",
        "%2e%2e",
        "a\u{fffd}",
        &long,
        &just_over,
    ];
    for ns in NAMESPACES {
        for owner in owners {
            for field in ["", "main", "messages", "indices", "all"] {
                assert!(!check_key(ns, owner, field), "{owner:?} accepted");
            }
        }
        for field in [
            "../messages",
            "messages/",
            ".",
            "..",
            "MAIN",
            " all",
            "\0",
            "x",
        ] {
            assert!(!check_key(ns, "c1", field), "field {field:?} accepted");
        }
    }
    let config = config();
    for ns in ["", "..", "conversation/", "Conversation", "\0"] {
        assert!(LockKey::in_config(&config, Some(ns), "c1", "").is_err());
    }
}

#[test]
fn ids_parse_file_name_on_junk_never_panics() {
    let long = format!("{}_.lock", "a".repeat(300));
    for name in [
        "",
        ".",
        "..",
        ".lock",
        "_.lock",
        "-.lock",
        "..__.lock",
        "._.lock",
        "/_.lock",
        "a/b_.lock",
        "\0_.lock",
        "a_messages",
        "a_messages.lock\0",
        "_messages.lock",
        "a__messages.lock",
        "a_message_operations.lock",
        "a-raw_data.lock",
        "-a-all.lock",
        "é_.lock",
        &long,
    ] {
        check_parse(name);
    }
    let conv = config().default_namespace().clone();
    assert_eq!(parse_file_name(&conv, "..__.lock"), None);
    assert_eq!(parse_file_name(&conv, &long), None);
    assert_eq!(
        parse_file_name(&conv, "a__messages.lock"),
        Some(("a_".into(), "messages".into()))
    );
}

// ------------------------------------------------------ proc_locks (fuzz target `proc_locks`)

/// What the `proc_locks` target checks: holders are positive, distinct pids of
/// non-blocked FLOCK entries on the inode (on the device when one matches exactly).
fn check_holders(locks: &[ProcLock], inode: u64, dev: Option<(u32, u32)>) -> Vec<i32> {
    let pids = flock_holders(locks, inode, dev);
    let holds = |l: &&ProcLock| l.kind == ProcLockKind::Flock && !l.blocked && l.inode == inode;
    let exact = dev.filter(|&d| {
        locks
            .iter()
            .filter(holds)
            .any(|l| (l.dev_major, l.dev_minor) == d)
    });
    for (i, &pid) in pids.iter().enumerate() {
        assert!(pid > 0, "pid {pid}");
        assert!(!pids[..i].contains(&pid), "{pids:?}");
        assert!(locks
            .iter()
            .filter(holds)
            .any(|l| l.pid == pid && exact.is_none_or(|d| (l.dev_major, l.dev_minor) == d)));
    }
    pids
}

fn check_table(text: &str) -> Vec<ProcLock> {
    let locks = parse(text);
    assert!(locks.len() <= text.lines().count());
    for lock in &locks {
        check_holders(&locks, lock.inode, Some((lock.dev_major, lock.dev_minor)));
        check_holders(&locks, lock.inode, None);
    }
    for inode in [0, 1, 1_234_567, u64::MAX] {
        check_holders(&locks, inode, None);
        check_holders(&locks, inode, Some((0xfd, 1)));
    }
    for line in text.lines() {
        let [whole] = &parse(line)[..] else { continue };
        for (cut, _) in line.char_indices() {
            if let [part] = &parse(&line[..cut])[..] {
                let id = |l: &ProcLock| (l.kind, l.pid, l.dev_major, l.dev_minor, l.inode);
                assert_eq!(id(part), id(whole), "prefix {:?}", &line[..cut]);
            }
        }
    }
    locks
}

#[test]
fn proc_locks_waiter_arrows() {
    let text = "\
1: FLOCK  ADVISORY  WRITE 812 fd:01:42 0 EOF
1: -> FLOCK  ADVISORY  WRITE 813 fd:01:42 0 EOF
1:  -> FLOCK  ADVISORY  WRITE 814 fd:01:42 0 EOF
1: ->FLOCK  ADVISORY  WRITE 815 fd:01:42 0 EOF
1: -> -> FLOCK  ADVISORY  WRITE 816 fd:01:42 0 EOF
1: ->
1: -> FLOCK
2: -> FLOCK  ADVISORY  WRITE 900 fd:01:43 0 EOF
";
    let locks = check_table(text);
    assert!(locks.iter().filter(|l| l.blocked).all(|l| l.pid != 812));
    assert_eq!(check_holders(&locks, 42, Some((0xfd, 1))), vec![812]);
    assert!(check_holders(&locks, 43, None).is_empty(), "only a waiter");
}

#[test]
fn proc_locks_huge_numbers() {
    let text = "\
1: FLOCK  ADVISORY  WRITE 2147483647 ffffffff:ffffffff:18446744073709551615 0 EOF
2: FLOCK  ADVISORY  WRITE 2147483648 fd:01:1 0 EOF
3: FLOCK  ADVISORY  WRITE 812 fd:01:18446744073709551616 0 EOF
4: FLOCK  ADVISORY  WRITE 812 100000000:01:1 0 EOF
5: FLOCK  ADVISORY  WRITE 7 fd:01:2 9223372036854775807 9223372036854775808
6: FLOCK  ADVISORY  WRITE 8 fd:01:3 -9223372036854775808 EOF
7: FLOCK  ADVISORY  WRITE -2147483648 fd:01:4 0 EOF
8: FLOCK  ADVISORY  WRITE 0 fd:01:4 0 EOF
99999999999999999999999: FLOCK  ADVISORY  WRITE 9 fd:01:5 0 EOF
";
    let locks = check_table(text);
    assert_eq!(
        check_holders(&locks, u64::MAX, Some((u32::MAX, u32::MAX))),
        vec![i32::MAX]
    );
    assert!(check_holders(&locks, 2, None).is_empty(), "end past i64");
    assert_eq!(check_holders(&locks, 3, None), vec![8]);
    assert!(check_holders(&locks, 4, None).is_empty(), "pids <= 0");
    assert_eq!(
        check_holders(&locks, 5, None),
        vec![9],
        "ordinal is not a number"
    );
}

#[test]
fn proc_locks_junk_never_panics() {
    let bytes: &[u8] = b"1: FLOCK ADVISORY WRITE 1 fd:01:1 0 EOF\xff\n\xfe: FLOCK\r\n\0\0\0";
    check_table(&String::from_utf8_lossy(bytes));
    for text in [
        "",
        "\n\n",
        ":",
        "1:",
        "1: ",
        "é: FLOCK ADVISORY WRITE 1 fd:01:1 0 EOF",
        "1: FLOCK ADVISORY WRITE 1 fd:01:1:9 0 EOF",
        "1: FLOCK ADVISORY WRITE 1 ::1 0 EOF",
        "1: FLOCK ADVISORY WRITE +1 +fd:+1:+1 +0 EOF",
        "1: FLOCK ADVISORY WRITE 1 fd:01:1 0 EOF trailing junk",
        "1: FLOCK ADVISORY WRITE 1 <none>:0 0 EOF",
    ] {
        check_table(text);
    }
}

// ------------------------------------------------------ http (fuzz target `http_decode`)

#[test]
fn http_decode_percent_edge_cases() {
    for path in [
        "%",
        "/api/v1/locks/conv%",
        "/api/v1/locks/conv%4",
        "/api/v1/locks/%00/main/acquire",
        "/api/v1/locks/a%00b/clear",
        "/api/v1/locks/%zz",
        "/api/v1/locks/%C3",
        "/api/v1/locks/%FF%FE",
        "/api/v1/locks/%é",
        "/api/v1/locks/%1é",
        "/api/v1/locks/%2e%2e/messages/acquire",
        "/api/v1/locks/%2F",
        "//api//v1//leases//%2B//renew//",
        "",
        "/",
    ] {
        fuzz_decode(path, path, path.as_bytes());
    }
    assert_eq!(percent_decode("%00", false).unwrap(), "\0");
    assert_eq!(percent_decode("%C3%A9+", false).unwrap(), "é+");
    assert_eq!(percent_decode("a+b%2B", true).unwrap(), "a b+");
    for bad in ["%", "a%", "%4", "%zz", "%é", "%1é", "%C3", "%FF"] {
        assert!(percent_decode(bad, false).is_err(), "{bad:?}");
        assert!(percent_decode(bad, true).is_err(), "{bad:?}");
    }
}

#[test]
fn http_decode_long_and_odd_queries_and_bodies() {
    let long_path = format!("/api/v1/locks/{}", "a".repeat(4096));
    fuzz_decode(&long_path, "", b"");
    for query in [
        "=",
        "&&",
        "&=&",
        "owner=%",
        "owner=a&owner=b",
        "limit=18446744073709551616",
        "since=9999-12-31T23:59:59.999-23:59",
        "%6Fwner=x",
        "x=1",
    ] {
        fuzz_decode("/api/v1/history", query, b"");
    }
    let deep_array = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let deep_object = "{\"tokens\":".repeat(5_000);
    let bodies: [&[u8]; 9] = [
        b"",
        b"\xff\xfe",
        b"null",
        deep_array.as_bytes(),
        deep_object.as_bytes(),
        br#"{"holder":"h","operation":"o","pid":2147483648}"#,
        br#"{"field":"","token":-9223372036854775809,"reason":"r"}"#,
        br#"{"sql":"select 1","max_rows":99999999999999999999999}"#,
        br#"{"tokens":{"messages":1e400},"reason":"\ud800"}"#,
    ];
    for body in bodies {
        fuzz_decode("/api/v1/locks/c1/messages/acquire", "", body);
    }
}

// ----------------------------------------------- csv and time (`history_csv`, `clock`)

const FORMULA_START: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

/// Reads one RFC 4180 cell, checking it is well formed.
fn read_cell(cell: &str) -> String {
    if let Some(inner) = cell.strip_prefix('"') {
        let inner = inner.strip_suffix('"').expect("closing quote");
        assert!(!inner.replace("\"\"", "").contains('"'), "{cell:?}");
        inner.replace("\"\"", "\"")
    } else {
        assert!(!cell.contains([',', '"', '\n', '\r']), "unquoted {cell:?}");
        cell.to_string()
    }
}

fn check_cell(value: &str) {
    let cell = csv_cell(value);
    let read = read_cell(&cell);
    if read != value {
        assert_eq!(read, format!("'{value}"));
        assert!(value.starts_with(FORMULA_START), "{value:?}");
    }
    if read.starts_with(FORMULA_START) {
        assert!(read.parse::<f64>().is_ok(), "formula survives: {cell:?}");
    }
}

#[test]
fn csv_cells_are_quoted_and_defused() {
    for value in [
        "",
        "a",
        ",",
        "\"",
        "\"\"",
        "\n",
        "\r",
        "\r\n",
        "a,b",
        "say \"hi\"",
        "=1+2",
        "=HYPERLINK(\"http://x\",\"y\")",
        "+1",
        "-1",
        "-12.5",
        "-inf",
        "+NaN",
        "1e400",
        "@x",
        "\t=1",
        "\r\n=1",
        "'",
        "é,ü",
        "\0",
    ] {
        check_cell(value);
    }
    assert_eq!(csv_cell("a,b"), "\"a,b\"");
    assert_eq!(csv_cell("=1,2"), "\"'=1,2\"");
    assert_eq!(csv_cell("-5"), "-5");
}

#[test]
fn history_csv_rows_keep_their_shape() {
    let row = EventRow {
        event_id: 1,
        at: i64::MAX,
        namespace: "conversation".into(),
        owner: "a,\"b\"\nc".into(),
        field: "=cmd".into(),
        event: "acquired".into(),
        token: Some(i64::MIN),
        pid: Some(-1),
        host: Some("\r".into()),
        holder: Some(String::new()),
        operation: None,
        actor: Some("@admin".into()),
        reason: Some("x\ny".into()),
        held_ms: None,
        count: 3,
    };
    let out = history_csv(&[row.clone(), row]);
    assert!(out.starts_with(HISTORY_CSV_HEADER));
    let mut records = 0;
    let mut fields = 1;
    let mut quoted = false;
    for c in out.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => fields += 1,
            '\n' if !quoted => {
                assert_eq!(fields, 15, "{out:?}");
                records += 1;
                fields = 1;
            }
            _ => {}
        }
    }
    assert!(!quoted);
    assert_eq!(records, 3, "{out:?}");
}

/// 0000-01-01T00:00:00.000Z and 9999-12-31T23:59:59.999Z in epoch milliseconds.
const MIN_MS: i64 = -62_167_219_200_000;
const MAX_MS: i64 = 253_402_300_799_999;

#[test]
fn clock_parse_time_edge_cases() {
    for s in [
        "",
        " ",
        "-",
        "+1",
        "9223372036854775807",
        "-9223372036854775808",
        "9223372036854775808",
        "-9223372036854775809",
        "2016-12-31T23:59:60Z",
        "2026-02-30T00:00:00Z",
        "2026-11-27T05:20:04.123456789123Z",
        "0000-01-01T00:00:00+23:59",
        "9999-12-31T23:59:59.999-23:59",
        "1969-12-31T23:59:59.9995Z",
        "2026-11-27 05:20:04Z",
        "2026-11-27T05:20:04",
        "2026-11-27T05:20:04+24:00",
        "é",
    ] {
        if let Some(ms) = parse_time(s) {
            let _ = (rfc3339(ms), hms(ms));
        }
    }
    assert_eq!(parse_time("9223372036854775807"), Some(i64::MAX));
    assert_eq!(parse_time("9223372036854775808"), None);
    assert_eq!(parse_time("2016-12-31T23:59:60Z"), Some(1_483_228_799_999));
}

#[test]
fn clock_round_trips_over_the_writable_years() {
    for ms in [
        MIN_MS,
        MIN_MS + 1,
        -1,
        0,
        1,
        500,
        1_764_220_804_120,
        MAX_MS - 1,
        MAX_MS,
    ] {
        let shown = rfc3339(ms);
        assert_eq!(parse_time(&shown), Some(ms), "{ms} shown as {shown:?}");
        assert!(shown.ends_with('Z'), "{shown:?}");
    }
    // Before year 0 RFC 3339 cannot write the time; the bare milliseconds stand in.
    assert_eq!(rfc3339(MIN_MS - 1), (MIN_MS - 1).to_string());
    for ms in [i64::MIN, i64::MAX, MAX_MS + 1] {
        let _ = (rfc3339(ms), hms(ms));
    }
}

#[test]
fn clock_times_after_year_9999_are_not_shown_as_1970() {
    // parse_time accepts this (year 9999 at -23:59 is 10000-01-01 in UTC) ...
    let ms = parse_time("9999-12-31T23:59:59.999-23:59").expect("parses");
    assert_eq!(ms, 253_402_387_139_999);
    // ... and rfc3339 shows it as "1970-01-01T00:00:00.999Z".
    for ms in [ms, MAX_MS + 1, i64::MAX] {
        let shown = rfc3339(ms);
        assert_eq!(parse_time(&shown), Some(ms), "{ms} shown as {shown:?}");
    }
}

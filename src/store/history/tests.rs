use super::*;
use crate::config::Config;

fn event(lock_id: i64, owner: &str, kind: EventKind, at: i64) -> NewEvent<'_> {
    NewEvent {
        at,
        lock_id,
        namespace: "conversation",
        owner,
        field: "messages",
        event: Some(kind),
        ..NewEvent::default()
    }
}

#[test]
fn count_retention_prunes_low_value_events_first() {
    let dir = tempfile::tempdir().unwrap();
    let conn = crate::store::db::open_and_migrate(&Config::defaults(dir.path())).unwrap();
    conn.execute(
        "INSERT INTO locks (lock_id, namespace, owner, field, file, created_at)
         VALUES (1, 'conversation', 'x', 'messages', 'x_messages.lock', 0)",
        [],
    )
    .unwrap();
    // The unrelated conversation's grants come first (oldest), then a flood of busy
    // answers and renewals.
    for i in 0..25 {
        insert_event(&conn, &event(1, "keep", EventKind::Acquired, i)).unwrap();
        insert_event(&conn, &event(1, "keep", EventKind::Released, i)).unwrap();
    }
    for i in 0..400 {
        let kind = if i % 2 == 0 {
            EventKind::WaitTimeout
        } else {
            EventKind::Renewed
        };
        insert_event(&conn, &event(1, "noisy", kind, 100 + i)).unwrap();
    }
    let count = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
    let mut total = 0;
    loop {
        let n = prune_events(&conn, None, Some(200), 64).unwrap();
        total += n;
        if n < 64 {
            break;
        }
    }
    assert_eq!(total, 250);
    assert_eq!(count("SELECT count(*) FROM lock_events"), 200);
    assert_eq!(
        count("SELECT count(*) FROM lock_events WHERE owner = 'keep'"),
        50,
        "acquisitions and releases outlive busy answers and renewals"
    );
    // Once only valuable events are left, the oldest go.
    prune_events(&conn, None, Some(10), 1000).unwrap();
    assert_eq!(count("SELECT count(*) FROM lock_events"), 10);
    assert_eq!(
        count("SELECT count(*) FROM lock_events WHERE owner = 'keep'"),
        10
    );
}

#[test]
fn the_inbox_and_the_log_read_as_one_history() {
    let dir = tempfile::tempdir().unwrap();
    let conn = crate::store::db::open_and_migrate(&Config::defaults(dir.path())).unwrap();
    conn.execute(
        "INSERT INTO locks (lock_id, namespace, owner, field, file, created_at)
         VALUES (1, 'conversation', 'x', 'messages', 'x_messages.lock', 0)",
        [],
    )
    .unwrap();
    let count = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(insert_event(&conn, &event(1, "a", EventKind::Acquired, i)).unwrap());
    }
    assert_eq!(move_inbox(&conn, 4).unwrap(), 4, "the oldest four move");
    assert_eq!(count("SELECT min(event_id) FROM event_inbox"), ids[4]);
    // Emptied by hand: the next id still goes above every id of the log.
    assert_eq!(move_inbox(&conn, MOVE_BATCH).unwrap(), 6);
    assert_eq!(inbox_len(&conn).unwrap(), 0);
    for i in 10..15 {
        ids.push(insert_event(&conn, &event(1, "a", EventKind::Released, i)).unwrap());
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert_eq!(count("SELECT count(*) FROM lock_events"), 15);
    // A page crossing both tables, newest first, and the next page after it.
    let q = |before: Option<i64>| HistoryQuery {
        owner: Some("a".into()),
        before_event_id: before,
        limit: 8,
        ..HistoryQuery::default()
    };
    let first = history(&conn, &q(None)).unwrap();
    let got: Vec<i64> = first.iter().map(|e| e.event_id).collect();
    let want: Vec<i64> = ids.iter().rev().take(8).copied().collect();
    assert_eq!(got, want);
    let second = history(&conn, &q(first.last().map(|e| e.event_id))).unwrap();
    let got: Vec<i64> = second.iter().map(|e| e.event_id).collect();
    let want: Vec<i64> = ids.iter().rev().skip(8).copied().collect();
    assert_eq!(got, want);
    // Folding finds its row in either table.
    assert!(
        add_to_count(&conn, ids[0], 2, 0, "r").unwrap(),
        "in the log"
    );
    assert!(
        add_to_count(&conn, ids[14], 3, 0, "r").unwrap(),
        "in the inbox"
    );
    assert!(!add_to_count(&conn, 10_000, 1, 0, "r").unwrap(), "gone");
    assert_eq!(count("SELECT sum(count) FROM lock_events"), 15 + 2 + 3);
    // The writer's tidy job empties the inbox in batches.
    assert!(!tidy(&conn).unwrap());
    assert_eq!(inbox_len(&conn).unwrap(), 0);
    assert_eq!(count("SELECT count(*) FROM event_log"), 15);
}

-- lockledger schema v3: history is written to a small unindexed table, `event_inbox`, and
-- moved in batches into the indexed `event_log`; `lock_events` is the view over both.
--
-- Why: every history row used to be inserted into a table with three indexes, so each
-- acquire or release committed four more B-tree pages to the WAL than the rows it wrote;
-- the commit that an acquire or release waits for was mostly index maintenance. Now that
-- commit writes one inbox page, and the move (a background job of the writer, see
-- `store::writer`) updates each index page once per batch.
--
-- Invariants: an event is in exactly one of the two tables (the move inserts and deletes
-- in one transaction); event ids increase across both (`store::history::insert_event`
-- takes the larger of both maxima); the inbox stays small (moved every few dozen commits
-- and before every retention pass), so a query over `lock_events` scans at most that
-- many unindexed rows besides what the indexes find.

DROP VIEW lock_history;
ALTER TABLE lock_events RENAME TO event_log;

CREATE TABLE event_inbox (
    event_id   INTEGER PRIMARY KEY,
    at         INTEGER NOT NULL,
    lock_id    INTEGER NOT NULL REFERENCES locks(lock_id),
    namespace  TEXT    NOT NULL,
    owner      TEXT    NOT NULL,
    field      TEXT    NOT NULL,
    event      TEXT    NOT NULL CHECK (event IN ('acquired', 'released', 'renewed', 'expired',
                   'cleared', 'force_cleared', 'reconciled', 'wait_timeout', 'observed_external',
                   'file_replaced')),
    token      INTEGER,
    pid        INTEGER,
    host       TEXT,
    holder     TEXT,
    operation  TEXT,
    actor      TEXT,
    reason     TEXT,
    held_ms    INTEGER,
    count      INTEGER NOT NULL DEFAULT 1
);

-- Every history row, old and new: the name admins and earlier versions query.
CREATE VIEW lock_events AS
SELECT event_id, at, lock_id, namespace, owner, field, event, token, pid, host, holder,
       operation, actor, reason, held_ms, count
FROM event_log
UNION ALL
SELECT event_id, at, lock_id, namespace, owner, field, event, token, pid, host, holder,
       operation, actor, reason, held_ms, count
FROM event_inbox;

CREATE VIEW lock_history AS
SELECT e.event_id, e.at,
       strftime('%Y-%m-%dT%H:%M:%fZ', e.at / 1000.0, 'unixepoch') AS at_utc,
       e.namespace, e.owner, e.field, e.event, e.token, e.pid, e.host, e.holder,
       e.operation, e.actor, e.reason, e.held_ms, e.count
FROM lock_events e;

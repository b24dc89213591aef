-- 0005: the history inbox checks its event kind without an IN list.
--
-- SQLite evaluates `event IN ('acquired', ..., 'file_replaced')` (ten values) by building
-- a temporary index of the ten values for every INSERT statement it runs (`OpenEphemeral`
-- and ten `IdxInsert`s), and every acquire and release inserts one inbox row on its own:
-- that index cost more than the row (about 7 µs of about 9 µs per insert, measured).
-- A CASE over the same values is checked by plain comparisons. Same columns, same rows,
-- same values accepted (`event` is NOT NULL); the inbox is small (moved every few dozen
-- commits), so rebuilding it is quick. `event_log` keeps its IN list: it is written in
-- batches, one temporary index per batch. The views over the inbox are dropped and made
-- again unchanged.

DROP VIEW lock_history;
DROP VIEW lock_events;

CREATE TABLE event_inbox_v2 (
    event_id   INTEGER PRIMARY KEY,
    at         INTEGER NOT NULL,
    lock_id    INTEGER NOT NULL REFERENCES locks(lock_id),
    namespace  TEXT    NOT NULL,
    owner      TEXT    NOT NULL,
    field      TEXT    NOT NULL,
    event      TEXT    NOT NULL CONSTRAINT event_kind CHECK (CASE event
                   WHEN 'acquired' THEN 1 WHEN 'released' THEN 1 WHEN 'renewed' THEN 1
                   WHEN 'expired' THEN 1 WHEN 'cleared' THEN 1 WHEN 'force_cleared' THEN 1
                   WHEN 'reconciled' THEN 1 WHEN 'wait_timeout' THEN 1
                   WHEN 'observed_external' THEN 1 WHEN 'file_replaced' THEN 1
                   ELSE 0 END),
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
INSERT INTO event_inbox_v2 (event_id, at, lock_id, namespace, owner, field, event, token, pid,
                            host, holder, operation, actor, reason, held_ms, count)
SELECT event_id, at, lock_id, namespace, owner, field, event, token, pid, host, holder,
       operation, actor, reason, held_ms, count
FROM event_inbox;
DROP TABLE event_inbox;
ALTER TABLE event_inbox_v2 RENAME TO event_inbox;

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

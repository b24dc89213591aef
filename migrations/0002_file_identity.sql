-- lockledger schema v2: grants are tied to the identity of the lock file they locked,
-- history has a `file_replaced` event and a `count` column (aggregated busy answers),
-- and tokens have a floor that survives the loss of this database.

-- Holders: the device and inode of the file whose flock the holder took, and when a
-- replaced or deleted file was first noticed (the `file_replaced` event is written once).
ALTER TABLE holders ADD COLUMN file_dev INTEGER;
ALTER TABLE holders ADD COLUMN file_ino INTEGER;
ALTER TABLE holders ADD COLUMN file_replaced_at INTEGER;

-- History gets the new event kind; SQLite cannot alter a CHECK constraint, so the table
-- is rebuilt (once, at the first start of this version; minutes for tens of millions of
-- rows). Nothing references lock_events by foreign key.
DROP VIEW lock_history;
CREATE TABLE lock_events_v2 (
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
    count      INTEGER NOT NULL DEFAULT 1      -- busy answers folded into one row
);
INSERT INTO lock_events_v2 (event_id, at, lock_id, namespace, owner, field, event, token, pid,
                            host, holder, operation, actor, reason, held_ms)
SELECT event_id, at, lock_id, namespace, owner, field, event, token, pid, host, holder,
       operation, actor, reason, held_ms
FROM lock_events;
DROP TABLE lock_events;
ALTER TABLE lock_events_v2 RENAME TO lock_events;
CREATE INDEX lock_events_by_owner ON lock_events (owner, event_id);
CREATE INDEX lock_events_by_at ON lock_events (at);
CREATE INDEX lock_events_by_event ON lock_events (event, event_id);

CREATE VIEW lock_history AS
SELECT e.event_id, e.at,
       strftime('%Y-%m-%dT%H:%M:%fZ', e.at / 1000.0, 'unixepoch') AS at_utc,
       e.namespace, e.owner, e.field, e.event, e.token, e.pid, e.host, e.holder,
       e.operation, e.actor, e.reason, e.held_ms, e.count
FROM lock_events e;

-- Tokens: every token issued is at most `token_ceiling`, which is also kept in files
-- beside the database (storage/token-ceiling, locks/.token-ceiling) and raised there
-- first; a database created after the loss of an older one starts every lock above the
-- ceiling it finds in those files (`token_floor`).
INSERT INTO registry_settings (key, value) VALUES ('token_floor', 0);
INSERT INTO registry_settings (key, value) VALUES ('token_ceiling', 0);

-- current_locks shows when a holder's file was found replaced or deleted.
DROP VIEW stale_locks;
DROP VIEW current_locks;
CREATE VIEW current_locks AS
SELECT l.namespace, l.owner, l.field, l.file,
       h.token, h.kind, h.lease_id, h.holder, h.operation, h.pid, h.host, h.thread,
       h.locker_pid,
       h.acquired_at, h.renewed_at, h.expires_at, h.revoked_at, h.file_replaced_at,
       strftime('%Y-%m-%dT%H:%M:%fZ', h.acquired_at / 1000.0, 'unixepoch') AS acquired_at_utc,
       (CAST(unixepoch('subsec') * 1000 AS INTEGER) - h.acquired_at) AS held_ms
FROM holders h JOIN locks l USING (lock_id);

CREATE VIEW stale_locks AS
SELECT c.*,
       CASE WHEN c.expires_at IS NOT NULL
                 AND c.expires_at <= CAST(unixepoch('subsec') * 1000 AS INTEGER)
            THEN 'lease_expired' ELSE 'held_too_long' END AS stale_reason
FROM current_locks c
WHERE (c.expires_at IS NOT NULL AND c.expires_at <= CAST(unixepoch('subsec') * 1000 AS INTEGER))
   OR (CAST(unixepoch('subsec') * 1000 AS INTEGER) - MAX(c.renewed_at, c.acquired_at))
        > (SELECT value FROM registry_settings WHERE key = 'max_hold_ms');

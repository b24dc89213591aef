-- 0004: the lease-id index holds lease ids only.
--
-- `holders.lease_id` was declared UNIQUE, so SQLite kept an index entry for every holder,
-- including library holders whose lease_id is NULL: every grant and every release of a
-- library lock wrote one more page (a WAL frame) for nothing. The table is rebuilt
-- without the column constraint and the uniqueness moves to a partial index over lease
-- ids that exist, which lookups by lease id (`lease_id = ?`) still use. Same columns, same
-- rows; the views over `holders` are dropped and made again unchanged.

DROP VIEW stale_locks;
DROP VIEW current_locks;

CREATE TABLE holders_v2 (
    lock_id       INTEGER PRIMARY KEY REFERENCES locks(lock_id),
    token         INTEGER NOT NULL,
    kind          TEXT    NOT NULL CHECK (kind IN ('lease', 'library')),
    lease_id      TEXT,                          -- leases only (unique: holders_by_lease)
    holder        TEXT    NOT NULL,
    operation     TEXT    NOT NULL,
    pid           INTEGER,
    pid_start     INTEGER,
    host          TEXT    NOT NULL,
    thread        TEXT,
    locker_pid    INTEGER NOT NULL,
    locker_start  INTEGER,
    acquired_at   INTEGER NOT NULL,
    renewed_at    INTEGER NOT NULL,
    expires_at    INTEGER,
    revoked_at    INTEGER,
    revoked_by    TEXT,
    acquired_event INTEGER,
    file_dev      INTEGER,
    file_ino      INTEGER,
    file_replaced_at INTEGER
);
INSERT INTO holders_v2 (lock_id, token, kind, lease_id, holder, operation, pid, pid_start,
                        host, thread, locker_pid, locker_start, acquired_at, renewed_at,
                        expires_at, revoked_at, revoked_by, acquired_event, file_dev,
                        file_ino, file_replaced_at)
SELECT lock_id, token, kind, lease_id, holder, operation, pid, pid_start, host, thread,
       locker_pid, locker_start, acquired_at, renewed_at, expires_at, revoked_at, revoked_by,
       acquired_event, file_dev, file_ino, file_replaced_at
FROM holders;
DROP TABLE holders;
ALTER TABLE holders_v2 RENAME TO holders;
CREATE UNIQUE INDEX holders_by_lease ON holders (lease_id) WHERE lease_id IS NOT NULL;

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

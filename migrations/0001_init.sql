-- lockledger schema v1. Times are UTC milliseconds since the Unix epoch (INTEGER).
-- The views at the end are the stable surface for admins' SQL; the tables may change.

-- Every lock the registry has ever granted, with its fencing counter. Rows are never
-- deleted, so tokens keep increasing across restarts and history can name the lock.
CREATE TABLE locks (
    lock_id     INTEGER PRIMARY KEY,
    namespace   TEXT    NOT NULL,
    owner       TEXT    NOT NULL,
    field       TEXT    NOT NULL,
    file        TEXT    NOT NULL,                -- bare file name inside storage/locks/
    last_token  INTEGER NOT NULL DEFAULT 0,      -- newest fencing token ever issued
    created_at  INTEGER NOT NULL,
    UNIQUE (namespace, owner, field)
);

-- The current holder of each lock, at most one. A row exists from the commit that
-- follows taking the flock until the commit that precedes releasing it.
CREATE TABLE holders (
    lock_id       INTEGER PRIMARY KEY REFERENCES locks(lock_id),
    token         INTEGER NOT NULL,
    kind          TEXT    NOT NULL CHECK (kind IN ('lease', 'library')),
    lease_id      TEXT    UNIQUE,                -- leases only
    holder        TEXT    NOT NULL,              -- free-form label given by the client
    operation     TEXT    NOT NULL,
    pid           INTEGER,                       -- the client process, if known
    pid_start     INTEGER,                       -- its start time (clock ticks since boot)
    host          TEXT    NOT NULL,
    thread        TEXT,
    locker_pid    INTEGER NOT NULL,              -- the process that holds the flock
    locker_start  INTEGER,
    acquired_at   INTEGER NOT NULL,
    renewed_at    INTEGER NOT NULL,
    expires_at    INTEGER,                       -- leases: end of the lease
    revoked_at    INTEGER,                       -- force clear asked a library holder to let go
    revoked_by    TEXT,
    acquired_event INTEGER                       -- lock_events.event_id of the grant
);

-- Append-only history.
CREATE TABLE lock_events (
    event_id   INTEGER PRIMARY KEY,
    at         INTEGER NOT NULL,
    lock_id    INTEGER NOT NULL REFERENCES locks(lock_id),
    namespace  TEXT    NOT NULL,
    owner      TEXT    NOT NULL,
    field      TEXT    NOT NULL,
    event      TEXT    NOT NULL CHECK (event IN ('acquired', 'released', 'renewed', 'expired',
                   'cleared', 'force_cleared', 'reconciled', 'wait_timeout', 'observed_external')),
    token      INTEGER,
    pid        INTEGER,
    host       TEXT,
    holder     TEXT,
    operation  TEXT,
    actor      TEXT,
    reason     TEXT,
    held_ms    INTEGER
);

-- One owner's newest events (the audit page and status) and time-range scans/pruning.
CREATE INDEX lock_events_by_owner ON lock_events (owner, event_id);
CREATE INDEX lock_events_by_at ON lock_events (at);
CREATE INDEX lock_events_by_event ON lock_events (event, event_id);
CREATE INDEX locks_by_owner ON locks (owner);

-- Settings the views need (written by each process at start-up from its configuration).
CREATE TABLE registry_settings (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT INTO registry_settings (key, value) VALUES ('max_hold_ms', 600000);

CREATE VIEW current_locks AS
SELECT l.namespace, l.owner, l.field, l.file,
       h.token, h.kind, h.lease_id, h.holder, h.operation, h.pid, h.host, h.thread,
       h.locker_pid,
       h.acquired_at, h.renewed_at, h.expires_at, h.revoked_at,
       strftime('%Y-%m-%dT%H:%M:%fZ', h.acquired_at / 1000.0, 'unixepoch') AS acquired_at_utc,
       (CAST(unixepoch('subsec') * 1000 AS INTEGER) - h.acquired_at) AS held_ms
FROM holders h JOIN locks l USING (lock_id);

-- Staleness that SQL can see: expired leases and holders silent for longer than
-- max_hold. A dead holder needs the kernel to tell (pid and flock checks): the service,
-- `lockledger status` and `lockledger list --state stale` report those as holder_dead.
CREATE VIEW stale_locks AS
SELECT c.*,
       CASE WHEN c.expires_at IS NOT NULL
                 AND c.expires_at <= CAST(unixepoch('subsec') * 1000 AS INTEGER)
            THEN 'lease_expired' ELSE 'held_too_long' END AS stale_reason
FROM current_locks c
WHERE (c.expires_at IS NOT NULL AND c.expires_at <= CAST(unixepoch('subsec') * 1000 AS INTEGER))
   OR (CAST(unixepoch('subsec') * 1000 AS INTEGER) - MAX(c.renewed_at, c.acquired_at))
        > (SELECT value FROM registry_settings WHERE key = 'max_hold_ms');

CREATE VIEW lock_history AS
SELECT e.event_id, e.at,
       strftime('%Y-%m-%dT%H:%M:%fZ', e.at / 1000.0, 'unixepoch') AS at_utc,
       e.namespace, e.owner, e.field, e.event, e.token, e.pid, e.host, e.holder,
       e.operation, e.actor, e.reason, e.held_ms
FROM lock_events e;

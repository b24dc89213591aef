-- lockledger schema v1 for PostgreSQL: the SQLite schema of migrations/0001..0003 as it
-- stands after 0003, for several hosts sharing one registry (DESIGN §9).
-- Applied by `store::pg::migrate` under `pg_advisory_xact_lock`, in one transaction,
-- recorded in schema_migrations.
--
-- Invariants, so admins' SQL and rows are the same on both databases:
-- - times are UTC milliseconds since the Unix epoch in BIGINT columns, as in SQLite;
-- - tables and views have SQLite's names, and every view (current_locks, stale_locks,
--   lock_events, lock_history) has SQLite's column names in SQLite's order
--   (tests/pg_schema.rs compares them);
-- - "now" in the views is the database's clock, never a host's, read once per query:
--   (extract(epoch FROM clock_timestamp()) * 1000)::bigint;
-- - history is one indexed table, event_log (SQLite's event_inbox exists only to cut its
--   write amplification), and lock_events is a plain view over it.

-- Applied migrations: one row per version.
CREATE TABLE schema_migrations (
    version    INTEGER     PRIMARY KEY,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Every lock the registry has ever granted, with its fencing counter. Rows are never
-- deleted, so tokens keep increasing and history can name the lock.
CREATE TABLE locks (
    lock_id     BIGSERIAL PRIMARY KEY,
    namespace   TEXT      NOT NULL,
    owner       TEXT      NOT NULL,
    field       TEXT      NOT NULL,
    file        TEXT      NOT NULL,              -- bare file name inside storage/locks/
    last_token  BIGINT    NOT NULL DEFAULT 0,    -- newest fencing token ever issued
    created_at  BIGINT    NOT NULL,
    UNIQUE (namespace, owner, field)
);
CREATE INDEX locks_by_owner ON locks (owner);

-- The current holder of each lock, at most one. `host` names the machine of the holder
-- (and of the granting service, which holds the flock there): pids are judged only on
-- that host.
CREATE TABLE holders (
    lock_id          BIGINT PRIMARY KEY REFERENCES locks (lock_id),
    token            BIGINT NOT NULL,
    kind             TEXT   NOT NULL CHECK (kind IN ('lease', 'library')),
    lease_id         TEXT   UNIQUE,              -- leases only
    holder           TEXT   NOT NULL,            -- free-form label given by the client
    operation        TEXT   NOT NULL,
    pid              BIGINT,                     -- the client process, if known
    pid_start        BIGINT,                     -- its start time (clock ticks since boot)
    host             TEXT   NOT NULL,
    thread           TEXT,
    locker_pid       BIGINT NOT NULL,            -- the process that holds the flock
    locker_start     BIGINT,
    acquired_at      BIGINT NOT NULL,
    renewed_at       BIGINT NOT NULL,
    expires_at       BIGINT,                     -- leases: end of the lease
    revoked_at       BIGINT,                     -- force clear asked a library holder to let go
    revoked_by       TEXT,
    acquired_event   BIGINT,                     -- lock_events.event_id of the grant
    file_dev         BIGINT,                     -- identity of the file whose flock was taken
    file_ino         BIGINT,
    file_replaced_at BIGINT                      -- when that file was found deleted/replaced
);

-- Append-only history (pruned only by retention).
CREATE TABLE event_log (
    event_id   BIGSERIAL PRIMARY KEY,
    at         BIGINT NOT NULL,
    lock_id    BIGINT NOT NULL REFERENCES locks (lock_id),
    namespace  TEXT   NOT NULL,
    owner      TEXT   NOT NULL,
    field      TEXT   NOT NULL,
    event      TEXT   NOT NULL CHECK (event IN ('acquired', 'released', 'renewed', 'expired',
                   'cleared', 'force_cleared', 'reconciled', 'wait_timeout', 'observed_external',
                   'file_replaced')),
    token      BIGINT,
    pid        BIGINT,
    host       TEXT,
    holder     TEXT,
    operation  TEXT,
    actor      TEXT,
    reason     TEXT,
    held_ms    BIGINT,
    count      BIGINT NOT NULL DEFAULT 1         -- busy answers folded into one row
);
-- One owner's newest events (the audit page and status), time-range scans and pruning,
-- and one kind's newest events.
CREATE INDEX event_log_by_owner ON event_log (owner, event_id);
CREATE INDEX event_log_by_at ON event_log (at);
CREATE INDEX event_log_by_event ON event_log (event, event_id);

-- Settings the views need (written by each service at start-up from its configuration),
-- and the token bounds (as in SQLite).
CREATE TABLE registry_settings (
    key   TEXT   PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO registry_settings (key, value) VALUES
    ('max_hold_ms', 600000),
    ('token_floor', 0),
    ('token_ceiling', 0);

-- Every history row: the name admins query (in SQLite, a view over event_log and
-- event_inbox with these columns).
CREATE VIEW lock_events AS
SELECT event_id, at, lock_id, namespace, owner, field, event, token, pid, host, holder,
       operation, actor, reason, held_ms, count
FROM event_log;

-- The clock is read once per query (a materialized CTE is evaluated once; a volatile
-- call in the select list or a joined subquery could be evaluated once per row).
CREATE VIEW current_locks AS
WITH n AS MATERIALIZED (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS now_ms)
SELECT l.namespace, l.owner, l.field, l.file,
       h.token, h.kind, h.lease_id, h.holder, h.operation, h.pid, h.host, h.thread,
       h.locker_pid,
       h.acquired_at, h.renewed_at, h.expires_at, h.revoked_at, h.file_replaced_at,
       to_char(timestamp '1970-01-01' + h.acquired_at * interval '1 millisecond',
               'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS acquired_at_utc,
       (n.now_ms - h.acquired_at) AS held_ms
FROM holders h
JOIN locks l USING (lock_id)
CROSS JOIN n;

-- Staleness that SQL can see: expired leases and holders silent for longer than
-- max_hold. A dead holder needs the kernel of its host to tell: the services report
-- those as holder_dead.
-- "Now" is current_locks's reading (acquired_at + held_ms), so held_ms and the staleness
-- judged here agree, as in SQLite, where one statement sees one time.
CREATE VIEW stale_locks AS
SELECT c.*,
       CASE WHEN c.expires_at IS NOT NULL AND c.expires_at <= n.now_ms
            THEN 'lease_expired' ELSE 'held_too_long' END AS stale_reason
FROM current_locks c
CROSS JOIN LATERAL (SELECT c.acquired_at + c.held_ms AS now_ms) n
WHERE (c.expires_at IS NOT NULL AND c.expires_at <= n.now_ms)
   OR (n.now_ms - GREATEST(c.renewed_at, c.acquired_at))
        > (SELECT value FROM registry_settings WHERE key = 'max_hold_ms');

CREATE VIEW lock_history AS
SELECT e.event_id, e.at,
       to_char(timestamp '1970-01-01' + e.at * interval '1 millisecond',
               'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS at_utc,
       e.namespace, e.owner, e.field, e.event, e.token, e.pid, e.host, e.holder,
       e.operation, e.actor, e.reason, e.held_ms, e.count
FROM lock_events e;

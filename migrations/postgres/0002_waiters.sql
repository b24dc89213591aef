-- lockledger schema v2 for PostgreSQL: arrival order of waiters across services, and
-- the index the expiry sweep walks (DESIGN §9, issue #13).
--
-- Invariants:
-- - a waiter row stands for one caller of store::pg acquire_waiting, from the moment its
--   first try is refused until it is granted (the row is deleted in the grant's own
--   transaction) or gives up (deleted then); `seq` is its place in line;
-- - a waiter is live while expires_at (database clock, ms) is in the future; its service
--   moves expires_at forward (heartbeat) while it waits, so the row of a service that died
--   lapses by itself. Rows that lapsed are ignored by every grant and deleted by the next
--   grant attempt on that lock;
-- - a lock is granted only to a caller with no live waiter ahead of it: a plain try (no
--   row) defers to every live waiter, a waiter to those with a smaller seq.
CREATE TABLE lock_waiters (
    seq         BIGSERIAL PRIMARY KEY,
    lock_id     BIGINT NOT NULL REFERENCES locks (lock_id),
    service     TEXT   NOT NULL,                 -- the waiting service (host:pid:n)
    host        TEXT   NOT NULL,
    pid         BIGINT NOT NULL,                 -- the process that would take the flock
    holder      TEXT   NOT NULL,
    operation   TEXT   NOT NULL,
    enqueued_at BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL                  -- heartbeat deadline, database clock
);
CREATE INDEX lock_waiters_by_lock ON lock_waiters (lock_id, seq);

-- The expiry sweep (expire_due) takes the due leases oldest first.
CREATE INDEX holders_by_expiry ON holders (expires_at) WHERE expires_at IS NOT NULL;

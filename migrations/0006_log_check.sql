-- 0006: the history log checks its event kind without an IN list, as the inbox does
-- since 0005.
--
-- SQLite checks `event IN ('acquired', ..., 'file_replaced')` through a temporary index
-- of the ten values, built for every statement and probed for every row. The inbox move
-- (64 rows every 64 commits) spent about 40% of its time there: 413–465 µs per 64 rows
-- with the IN list, 247–272 µs with this CASE, measured side by side. Callers queue
-- behind the move, so that time was on their path.
--
-- The table is not rebuilt (at 10 M events that would take minutes): only the text of
-- its CHECK constraint changes, by SQLite's documented procedure for changes that leave
-- the stored format alone ("Making Other Kinds Of Table Schema Changes" in the ALTER
-- TABLE page): edit `sqlite_schema` under `writable_schema`, then raise
-- `schema_version` so every connection reloads the schema (done by this migration's
-- hook in `store::db`, which also checks the edit took). Both checks accept exactly the
-- same values (`event` is NOT NULL), so the rows already there satisfy the new one.

PRAGMA writable_schema = ON;
UPDATE sqlite_schema
SET sql = replace(sql,
    'CHECK (event IN (''acquired'', ''released'', ''renewed'', ''expired'',
                   ''cleared'', ''force_cleared'', ''reconciled'', ''wait_timeout'', ''observed_external'',
                   ''file_replaced''))',
    'CONSTRAINT event_kind CHECK (CASE event
                   WHEN ''acquired'' THEN 1 WHEN ''released'' THEN 1 WHEN ''renewed'' THEN 1
                   WHEN ''expired'' THEN 1 WHEN ''cleared'' THEN 1 WHEN ''force_cleared'' THEN 1
                   WHEN ''reconciled'' THEN 1 WHEN ''wait_timeout'' THEN 1
                   WHEN ''observed_external'' THEN 1 WHEN ''file_replaced'' THEN 1
                   ELSE 0 END)')
WHERE type = 'table' AND name = 'event_log';
PRAGMA writable_schema = OFF;

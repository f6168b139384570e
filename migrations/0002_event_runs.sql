-- flow-archiver state, version 2 (docs/scaling.md, "What the tables hold").

-- A row may now hold a run of one part's events from one ingest batch: n is their
-- number. With n = 1 the row is one event, as every row of version 1 was; with n > 1,
-- ord is the first event's key and raw their frames, each
-- [u32 BE key length][key][u32 BE event length][event] (src/state/postgres/runs.rs).
--
-- The table is renamed so that a binary that knows only version 1, and would read a
-- run as one event, fails on its first statement instead: stop such instances before
-- this migration runs (docs/scaling.md, "Upgrades").
ALTER TABLE events RENAME TO event_runs;
ALTER TABLE event_runs RENAME CONSTRAINT events_pkey TO event_runs_pkey;
ALTER TABLE event_runs ADD COLUMN n integer NOT NULL DEFAULT 1;

-- Runs and intents above the TOAST threshold (~2 KB) are compressed; lz4 is several
-- times faster than the default pglz. A server built without lz4 keeps pglz.
DO $$
BEGIN
    ALTER TABLE event_runs ALTER COLUMN raw SET COMPRESSION lz4;
    ALTER TABLE intents ALTER COLUMN body SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported OR syntax_error THEN
    RAISE NOTICE 'lz4 is not available: event runs are compressed with pglz';
END
$$;

-- Keys compare as bytes: a btree comparison is then a memcmp rather than a call into
-- the database's locale, and the order rows are locked in by one statement (the
-- database's) is the order another locks them in (the archiver's, bytewise), so
-- ingest and seal never wait on each other in a cycle. Rebuilds these indexes.
ALTER TABLE flows
    ALTER COLUMN tenant TYPE text COLLATE "C",
    ALTER COLUMN flow_id TYPE text COLLATE "C";
ALTER TABLE event_runs
    ALTER COLUMN tenant TYPE text COLLATE "C",
    ALTER COLUMN flow_id TYPE text COLLATE "C";
ALTER TABLE holds
    ALTER COLUMN tenant TYPE text COLLATE "C",
    ALTER COLUMN flow_id TYPE text COLLATE "C";

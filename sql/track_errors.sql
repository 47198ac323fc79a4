-- track()/untrack() refuse what cannot be tracked faithfully, with a clear
-- error, and change nothing.
CREATE EXTENSION replstamp;
\set VERBOSITY default

CREATE TABLE no_pk (a int, b text);
SELECT replstamp.track('no_pk');
SELECT replstamp.track('no_pk', backfill => true);

CREATE VIEW a_view AS SELECT 1 AS a;
SELECT replstamp.track('a_view');

CREATE MATERIALIZED VIEW a_matview AS SELECT 1 AS a;
SELECT replstamp.track('a_matview');

CREATE TEMP TABLE a_temp (id int PRIMARY KEY);
SELECT replstamp.track('a_temp');

CREATE UNLOGGED TABLE an_unlogged (id int PRIMARY KEY);
SELECT replstamp.track('an_unlogged');

CREATE TABLE parted (id int PRIMARY KEY) PARTITION BY RANGE (id);
CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (100);
SELECT replstamp.track('parted_1');   -- a partition is an ordinary table
SELECT replstamp.track('parted');     -- but then not its partitioned table
INSERT INTO parted VALUES (5);
SELECT relation, op, pk FROM replstamp.changes;

SELECT replstamp.track('pg_class');
SELECT replstamp.track('replstamp.changes');
SELECT replstamp.track('no_such_table');

CREATE TABLE "Odd ""name""" (id int PRIMARY KEY);
SELECT replstamp.track('"Odd ""name"""');
SELECT replstamp.track('"Odd ""name"""');   -- already tracked
INSERT INTO "Odd ""name""" VALUES (1);
SELECT relation FROM replstamp.changes WHERE relation LIKE '%Odd%';
-- TRUNCATE is stamped as one change of its own (since 1.2).
TRUNCATE "Odd ""name""";
SELECT count(*) FROM "Odd ""name""";
SELECT relation, op, pk = jsonb_build_object('', replica_id || '/' || serial) AS own_key,
       row_image ? 'vector' AS covers
  FROM replstamp.changes WHERE relation LIKE '%Odd%' ORDER BY serial;
-- TRUNCATE of a partitioned table stamps each tracked partition.
TRUNCATE parted;
SELECT relation, op FROM replstamp.changes WHERE relation LIKE '%parted%' ORDER BY serial;

CREATE TABLE plain (id int PRIMARY KEY);
SELECT replstamp.untrack('plain');

-- The trigger function is not callable directly.
SELECT replstamp.stamp();
-- The TRUNCATE trigger only as track() installs it.
CREATE TABLE by_hand (id int PRIMARY KEY);
CREATE TRIGGER by_hand AFTER TRUNCATE ON by_hand
    FOR EACH STATEMENT EXECUTE FUNCTION replstamp.refuse_truncate();
TRUNCATE by_hand;
DROP TABLE by_hand;

-- Nothing above left a trigger behind on a refused table, nor registered
-- it or asked for a backfill.
SELECT relation FROM replstamp.tracked_tables ORDER BY 1;
SELECT relation, state, backfill FROM replstamp.tracked_table ORDER BY 1;

-- A tracked table cannot lose its primary key, change it, or become
-- unlogged (1.2): its changes would go unstamped or unidentifiable.
CREATE TABLE loses_pk (id int CONSTRAINT loses_pk_pkey PRIMARY KEY, v int NOT NULL);
SELECT replstamp.track('loses_pk');
ALTER TABLE loses_pk DROP CONSTRAINT loses_pk_pkey;
ALTER TABLE loses_pk DROP CONSTRAINT loses_pk_pkey, ADD PRIMARY KEY (v);
ALTER TABLE loses_pk DROP CONSTRAINT loses_pk_pkey, ADD CONSTRAINT loses_pk_pkey PRIMARY KEY (id);
ALTER TABLE loses_pk SET UNLOGGED;
SELECT key_columns FROM replstamp.tracked_table WHERE relation = 'public.loses_pk';
INSERT INTO loses_pk VALUES (1, 1);
SELECT count(*) FROM loses_pk;
SELECT * FROM replstamp.problems;
-- Untracked first, it may.
SELECT replstamp.untrack('loses_pk');
ALTER TABLE loses_pk SET UNLOGGED;
ALTER TABLE loses_pk DROP CONSTRAINT loses_pk_pkey;

DROP TABLE no_pk, parted, "Odd ""name""", plain, an_unlogged, loses_pk;
DROP VIEW a_view;
DROP MATERIALIZED VIEW a_matview;
DROP EXTENSION replstamp;

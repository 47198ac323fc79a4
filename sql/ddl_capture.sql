-- Schema changes of a tracked table are stamped as one change each, op
-- DDL, in their transaction; what is refused, what stays local.
CREATE EXTENSION replstamp;
\set VERBOSITY default

CREATE TABLE d (id int PRIMARY KEY, v text);
CREATE TABLE other (id int PRIMARY KEY);
SELECT replstamp.track('d');
-- Only this statement's text, out of a multi-statement query string.
INSERT INTO d VALUES (1, 'a')\; ALTER TABLE d ADD COLUMN c int\; INSERT INTO d VALUES (2, 'b', 2);
SELECT op, relation, pk, row_image->>'sql' AS sql, row_image->'touched' AS touched,
       row_image->'after'->'column c' AS c, row_image->>'role' = current_user AS role
  FROM replstamp.changes ORDER BY serial;
ALTER TABLE d ALTER COLUMN c TYPE bigint, ALTER COLUMN v SET NOT NULL;
ALTER TABLE d RENAME COLUMN c TO cc;
CREATE INDEX d_v ON d (v);
ALTER INDEX d_v RENAME TO d_v2;
DROP INDEX d_v2;
ALTER TABLE d ADD CONSTRAINT v_set CHECK (v <> '');
ALTER TABLE d DROP CONSTRAINT v_set;
-- Changed nothing: not recorded.
ALTER TABLE d ADD COLUMN IF NOT EXISTS cc bigint;
-- Not replicated: other subcommands, untracked tables.
ALTER TABLE d SET (fillfactor = 90);
ALTER TABLE other ADD COLUMN x int;
CREATE INDEX other_x ON other (x);
SELECT row_image->>'sql' AS sql, row_image->'touched' AS touched
  FROM replstamp.changes WHERE op = 'DDL' ORDER BY serial;
SELECT origin, outcome, relation, statement FROM replstamp.schema_change ORDER BY serial;

-- Refused while replicate_ddl is on.
CREATE INDEX CONCURRENTLY d_cc ON d (cc);
ALTER TABLE d ADD COLUMN y int, SET (fillfactor = 80);
CREATE INDEX d_cc ON d (cc);
DROP INDEX d_cc, other_x;
-- A rolled-back schema change leaves no change.
BEGIN;
ALTER TABLE d ADD COLUMN gone int;
ROLLBACK;
SELECT count(*) FROM replstamp.changes WHERE row_image->>'sql' LIKE '%gone%';
-- Off, a schema change stays local (superusers only).
SET replstamp.replicate_ddl = off;
CREATE INDEX CONCURRENTLY d_local ON d (cc);
ALTER TABLE d ADD COLUMN local_only int;
RESET replstamp.replicate_ddl;
SELECT count(*) FROM replstamp.changes WHERE op = 'DDL' AND row_image->>'sql' ~ 'local';
CREATE ROLE ddl_nobody;
SET ROLE ddl_nobody;
SET replstamp.replicate_ddl = off;
RESET ROLE;
-- A schema change is no row's version.
DO $$
BEGIN
	PERFORM replstamp.restore_version(replica_id, serial) FROM replstamp.changes WHERE op = 'DDL' LIMIT 1;
EXCEPTION WHEN wrong_object_type THEN
	RAISE NOTICE '%', regexp_replace(SQLERRM, '[-0-9a-f]{36}/[0-9]+', 'ID/SERIAL');
END $$;

-- CREATE TABLE in a tracked schema: tracked, and replicated.
CREATE SCHEMA app;
SELECT replstamp.track_schema('missing');
SELECT replstamp.track_schema('app');
SELECT replstamp.track_schema('app');
SELECT schema_name FROM replstamp.tracked_schema;
CREATE TABLE app.n (id int PRIMARY KEY, v text);
CREATE TABLE IF NOT EXISTS app.n (id int PRIMARY KEY, v text);
CREATE TABLE app.nokey (v text);
CREATE TEMP TABLE tmp_n (id int PRIMARY KEY);
SELECT relation, state FROM replstamp.tracked_table ORDER BY relation;
SELECT relation, row_image->>'sql' AS sql, row_image->'create' AS "create", row_image->'track' AS track
  FROM replstamp.changes WHERE op = 'DDL' AND relation LIKE 'app.%';
SELECT replstamp.untrack_schema('app');
CREATE TABLE app.later (id int PRIMARY KEY);
SELECT count(*) FROM replstamp.tracked_table WHERE relation = 'app.later';
SELECT replstamp.table_schema('app.n');

DROP TABLE d, other, app.n, app.later;
DROP SCHEMA app;
DROP ROLE ddl_nobody;
DROP EXTENSION replstamp;

-- track() refuses a table whose primary key treats as equal values that
-- print differently (float 0 and -0, 1.0 and 1.00 inside an array, interval
-- 1 day and 24 hours, alice and ALICE under a nondeterministic collation):
-- nodes identify a row by the text of its key, and would take two
-- spellings of one key for two rows.  Keys whose equal values are
-- identical are tracked; so is numeric, which the key image compares by
-- value.  DDL that gives a tracked table such a key is refused too.
CREATE EXTENSION replstamp;
CREATE EXTENSION citext;
\set VERBOSITY default

CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
CREATE TYPE pair_f AS (a int, b float8);
CREATE TYPE pair_ci AS (a int, b text COLLATE ci);
CREATE TYPE pair_ok AS (a int, b text, c date[], d char(2));
CREATE DOMAIN money_amount AS numeric;
CREATE DOMAIN small_id AS int;
CREATE TYPE floatrange AS RANGE (subtype = float8);

-- Refused, each naming the column and the type or collation to blame.
CREATE TABLE k_float8 (k float8 PRIMARY KEY);
SELECT replstamp.track('k_float8');
CREATE TABLE k_float4 (k real PRIMARY KEY);
SELECT replstamp.track('k_float4');
CREATE TABLE k_interval (k interval PRIMARY KEY);
SELECT replstamp.track('k_interval');
CREATE TABLE k_ci (id int, k text COLLATE ci, PRIMARY KEY (id, k));
SELECT replstamp.track('k_ci');
CREATE TABLE k_citext (k citext PRIMARY KEY);
SELECT replstamp.track('k_citext');
CREATE TABLE k_numeric_array (k numeric[] PRIMARY KEY);
SELECT replstamp.track('k_numeric_array');
CREATE TABLE k_numeric_domain (k money_amount PRIMARY KEY);
SELECT replstamp.track('k_numeric_domain');
CREATE TABLE k_float_array (k float8[] PRIMARY KEY);
SELECT replstamp.track('k_float_array');
CREATE TABLE k_ci_array (k text[] COLLATE ci PRIMARY KEY);
SELECT replstamp.track('k_ci_array');
CREATE TABLE k_composite_f (k pair_f PRIMARY KEY);
SELECT replstamp.track('k_composite_f');
CREATE TABLE k_composite_ci (k pair_ci PRIMARY KEY);
SELECT replstamp.track('k_composite_ci');
CREATE TABLE k_numrange (k numrange PRIMARY KEY);
SELECT replstamp.track('k_numrange');
CREATE TABLE k_floatrange (k floatrange PRIMARY KEY);
SELECT replstamp.track('k_floatrange');
CREATE TABLE k_nummultirange (k nummultirange PRIMARY KEY);
SELECT replstamp.track('k_nummultirange');
CREATE TABLE k_jsonb (k jsonb PRIMARY KEY);
SELECT replstamp.track('k_jsonb');
CREATE TABLE k_bpchar (k bpchar PRIMARY KEY);
SELECT replstamp.track('k_bpchar');
CREATE TABLE k_backfill (k float8 PRIMARY KEY);
SELECT replstamp.track('k_backfill', backfill => true);

-- Tracked: equal values are identical, or compared by value (numeric).
CREATE TABLE ok_int (a int, b bigint, c smallint, PRIMARY KEY (a, b, c));
CREATE TABLE ok_numeric (k numeric PRIMARY KEY);
CREATE TABLE ok_text (a text, b varchar(10), c text COLLATE "C", d char(3), PRIMARY KEY (a, b, c, d));
CREATE TABLE ok_time (a date, b timestamp, c timestamptz, d time, e timetz, PRIMARY KEY (a, b, c, d, e));
CREATE TABLE ok_misc (a uuid, b bool, c bytea, d inet, e small_id, f money, PRIMARY KEY (a, b, c, d, e, f));
CREATE TABLE ok_array (a int[], b text[], c date[], PRIMARY KEY (a, b, c));
CREATE TABLE ok_range (a int4range, b tstzrange, c datemultirange, PRIMARY KEY (a, b, c));
CREATE TABLE ok_composite (k pair_ok PRIMARY KEY);
SELECT replstamp.track('ok_int');
SELECT replstamp.track('ok_numeric');
SELECT replstamp.track('ok_text');
SELECT replstamp.track('ok_time');
SELECT replstamp.track('ok_misc');
SELECT replstamp.track('ok_array');
SELECT replstamp.track('ok_range');
SELECT replstamp.track('ok_composite');

-- DDL that gives a tracked table such a key is refused, and undone.
ALTER TABLE ok_numeric ALTER COLUMN k TYPE float8;
ALTER TABLE ok_text ALTER COLUMN a TYPE text COLLATE ci;
ALTER TABLE ok_misc ALTER COLUMN e TYPE interval USING make_interval(days => e);
-- The same key columns, rebuilt, with their types kept: fine.
ALTER TABLE ok_int DROP CONSTRAINT ok_int_pkey, ADD PRIMARY KEY (a, b, c);
\d ok_numeric
-- Other DDL of a tracked table goes on.
ALTER TABLE ok_numeric ADD COLUMN v float8;
ALTER TABLE ok_numeric ALTER COLUMN k TYPE numeric(10,2);

-- Only the accepted tables are tracked, and nothing was asked to backfill.
SELECT relation, state, backfill FROM replstamp.tracked_table ORDER BY 1;

-- Leave the database as the next test expects it.
SET client_min_messages = warning;
DROP EXTENSION replstamp CASCADE;
DROP EXTENSION citext CASCADE;
DROP COLLATION ci CASCADE;
RESET client_min_messages;

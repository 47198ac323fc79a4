-- The update to 1.2 gives replstamp.tracked_table its key_index column
-- (NULL for tables tracked before, all by a primary key), tracked_tables
-- its key_index, and track() its key_index and row_id arguments, granted
-- to the roles granted the 1.1 track().
CREATE EXTENSION replstamp VERSION '1.1';
CREATE ROLE regress_tracker;
GRANT EXECUTE ON FUNCTION replstamp.track(regclass, boolean) TO regress_tracker;
CREATE TABLE old_pk (id int PRIMARY KEY, v text);
SELECT replstamp.track('old_pk');
ALTER EXTENSION replstamp UPDATE;
SELECT relation, key_columns, key_index FROM replstamp.tracked_table;
SELECT relation, key_index FROM replstamp.tracked_tables;
SELECT p.oid::regprocedure AS track, has_function_privilege('regress_tracker', p.oid, 'EXECUTE') AS granted,
       has_function_privilege('public', p.oid, 'EXECUTE') AS public
  FROM pg_proc p WHERE p.proname = 'track' AND p.pronamespace = 'replstamp'::regnamespace;
-- A table without a primary key is tracked on the updated catalog.
CREATE TABLE new_u (code text NOT NULL, v int);
CREATE UNIQUE INDEX new_u_code ON new_u (code);
SELECT replstamp.track('new_u');
CREATE TABLE new_dup (v text);
SELECT replstamp.track('new_dup', row_id => true);
SELECT relation, key_index FROM replstamp.tracked_tables ORDER BY 1;
DROP TABLE old_pk, new_u, new_dup;
DROP EXTENSION replstamp;
DROP ROLE regress_tracker;

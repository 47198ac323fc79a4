-- Stamping: every INSERT, UPDATE and DELETE of a tracked table leaves one
-- stamp in replstamp.changes, in the same transaction.
CREATE EXTENSION replstamp;

-- The state row: one, original, with a replica ID also in the history.
SELECT count(*) AS nodes, bool_and(state = 'original') AS original,
       bool_and(replica_id IS NOT NULL) AS has_id
  FROM replstamp.node;
SELECT h.minted_reason, h.retired_at IS NULL AS current
  FROM replstamp.replica_history h JOIN replstamp.node n USING (replica_id);
-- A second row cannot exist.
INSERT INTO replstamp.node (singleton, replica_id, system_identifier, timeline)
VALUES (true, gen_random_uuid(), 1, 1);
\set VERBOSITY terse
INSERT INTO replstamp.node (singleton, replica_id, system_identifier, timeline)
VALUES (false, gen_random_uuid(), 1, 1);
\set VERBOSITY default

CREATE TABLE accounts (id int PRIMARY KEY, owner text, balance numeric, active boolean,
                       tags jsonb, doubled numeric GENERATED ALWAYS AS (balance * 2) STORED);
SELECT replstamp.track('accounts');
SELECT relation, schema_name, table_name FROM replstamp.tracked_tables;

SELECT replstamp.next_serial() AS first_serial \gset
INSERT INTO accounts VALUES (1, 'ann', 10.5, true, '{"a": [1, 2]}'),
                            (2, 'bob', 'NaN', NULL, NULL);
UPDATE accounts SET balance = balance + 1 WHERE id = 1;
UPDATE accounts SET id = 3 WHERE id = 2;   -- primary key change
DELETE FROM accounts WHERE id = 1;

-- Rolled-back changes leave no stamp.
BEGIN;
INSERT INTO accounts VALUES (10, 'rolled back', 0, false, NULL);
ROLLBACK;
BEGIN;
INSERT INTO accounts VALUES (11, 'in savepoint', 0, false, NULL);
SAVEPOINT s;
INSERT INTO accounts VALUES (12, 'rolled back to savepoint', 0, false, NULL);
ROLLBACK TO SAVEPOINT s;
COMMIT;

SELECT serial - :first_serial AS n, relation, op, pk, row_image,
       replica_id = (SELECT replica_id FROM replstamp.node) AS own_id,
       changed_at <= now() AS stamped_in_past
  FROM replstamp.changes ORDER BY serial;

-- row_hash identifies the row the same way in the trigger and in SQL.
SELECT bool_and(row_hash = replstamp.row_hash(relation, pk)) AS row_hash_ok,
       count(DISTINCT row_hash) AS distinct_rows
  FROM replstamp.changes;

-- Images of 128 bytes or more are stored compressed (the log row is far
-- below the size at which heap insertion would compress them), smaller
-- ones as they are; both read back whole.
INSERT INTO accounts VALUES (30, repeat('wide ', 100), 1, true, NULL),
                            (31, 'narrow', 1, true, NULL);
SELECT pk ->> 'id' AS id,
       pg_column_compression(row_image) IS NOT NULL AS compressed,
       pg_column_size(row_image) < octet_length(row_image::text) / 3 AS much_smaller,
       row_image ->> 'owner' = (SELECT owner FROM accounts a WHERE a.id = (c.pk ->> 'id')::int) AS reads_back
  FROM replstamp.changes c
 WHERE relation = 'public.accounts' AND pk ->> 'id' IN ('30', '31') ORDER BY 1;
-- The column's compression method is the one used (lz4 where the server
-- has it); a superuser may change it for new rows.
ALTER TABLE replstamp.changes ALTER COLUMN row_image SET COMPRESSION pglz;
INSERT INTO accounts VALUES (32, repeat('wide ', 100), 1, true, NULL);
SELECT pg_column_compression(row_image) FROM replstamp.changes
 WHERE relation = 'public.accounts' AND pk ->> 'id' = '32';
DELETE FROM accounts WHERE id IN (30, 31, 32);

-- Serials increase, LUS equals the next serial when nothing is in flight.
SELECT replstamp.lowest_uncommitted_serial() = replstamp.next_serial() AS lus_is_next;
SELECT count(DISTINCT serial) = count(*) AS distinct_serials FROM replstamp.changes;

-- An open transaction holds its first serial as the LUS.
BEGIN;
INSERT INTO accounts VALUES (20, 'open', 1, true, NULL);
SELECT replstamp.lowest_uncommitted_serial() =
       (SELECT max(serial) FROM replstamp.changes) AS lus_held;
INSERT INTO accounts VALUES (21, 'open', 1, true, NULL);
SELECT replstamp.lowest_uncommitted_serial() =
       (SELECT max(serial) - 1 FROM replstamp.changes) AS lus_is_first_of_xact;
COMMIT;
SELECT replstamp.lowest_uncommitted_serial() = replstamp.next_serial() AS lus_released;

-- A stamped transaction cannot be prepared; one without stamps can.
BEGIN;
INSERT INTO accounts VALUES (30, 'prepared', 1, true, NULL);
PREPARE TRANSACTION 'stamped';
SELECT count(*) FROM accounts WHERE id = 30;
BEGIN;
SELECT 1;
PREPARE TRANSACTION 'unstamped';
COMMIT PREPARED 'unstamped';

-- Stamps survive session_replication_role = replica (ENABLE ALWAYS).
SET session_replication_role = replica;
INSERT INTO accounts VALUES (40, 'replica role', 1, true, NULL);
RESET session_replication_role;
SELECT op, pk FROM replstamp.changes ORDER BY serial DESC LIMIT 1;

-- ALTER TABLE: new columns appear in later images.
ALTER TABLE accounts ADD COLUMN note text DEFAULT 'x';
ALTER TABLE accounts DROP COLUMN tags;
UPDATE accounts SET owner = 'renamed' WHERE id = 40;
SELECT row_image FROM replstamp.changes ORDER BY serial DESC LIMIT 1;

-- Untracking stops stamping and keeps the stamps.
SELECT count(*) AS before FROM replstamp.changes \gset
SELECT replstamp.untrack('accounts');
INSERT INTO accounts VALUES (50, 'untracked', 1, true);
SELECT count(*) - :before AS new_stamps FROM replstamp.changes;
SELECT count(*) AS tracked FROM replstamp.tracked_tables;
TRUNCATE accounts;

-- The status view (its figures cost O(1): changes is the statistics
-- collector's estimate, never a scan of the log).
SELECT replica_id = (SELECT replica_id FROM replstamp.node) AS id, state,
       next_serial = replstamp.next_serial() AS next_ok,
       lowest_uncommitted_serial = next_serial AS lus_ok,
       changes >= 0 AS count_ok
  FROM replstamp.status;
DROP TABLE accounts;
DROP EXTENSION replstamp;

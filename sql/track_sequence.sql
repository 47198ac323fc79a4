-- Sequences confined to this node's block: track() covers the sequences of
-- a table's columns, track_sequence() any other; both refuse what cannot
-- be confined, with a clear error, and change nothing then.
CREATE EXTENSION replstamp;
\set VERBOSITY default

-- The blocks: integer and bigint only, the same for every node.
SELECT replstamp.sequence_block('00000000-0000-4000-8000-000000000000', 'integer') AS int4_of_zero,
       replstamp.sequence_block('ffffffff-ffff-4fff-bfff-ffffffffffff', 'bigint') AS int8_of_ones;
SELECT replstamp.sequence_block('00000000-0000-4000-8000-000000000000', 'smallint');

-- track() covers serial, bigserial and identity columns.
CREATE TABLE t_serial (id serial PRIMARY KEY, v text);
CREATE TABLE t_big (id bigserial PRIMARY KEY, v text);
CREATE TABLE t_ident (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);
CREATE TABLE t_small (id smallserial PRIMARY KEY, v text);
SELECT replstamp.track('t_serial');
SELECT replstamp.track('t_big');
SELECT replstamp.track('t_ident');
SELECT replstamp.track('t_small');    -- tracked, its sequence is not
SELECT sequence, state, feeds,
       replica_id = (SELECT replica_id FROM replstamp.node) AS current_id,
       int8range(block_min, block_max, '[]') = replstamp.sequence_block(replica_id, s.seqtypid) AS its_block
  FROM replstamp.tracked_sequences JOIN pg_sequence s ON s.seqrelid = sequence
 ORDER BY sequence::text;

-- nextval() stays in the block, ALTER ... RESTART cannot leave it.
INSERT INTO t_serial (v) VALUES ('a'), ('b');
INSERT INTO t_ident (v) VALUES ('a');
SELECT (SELECT array_agg(id ORDER BY id) FROM t_serial) =
       ARRAY[(SELECT block_min FROM replstamp.tracked_sequence WHERE seqrelid = 't_serial_id_seq'::regclass),
             (SELECT block_min FROM replstamp.tracked_sequence WHERE seqrelid = 't_serial_id_seq'::regclass) + 1]::int[]
       AS serial_starts_at_its_block;
SELECT id = (SELECT block_min FROM replstamp.tracked_sequence WHERE seqrelid = 't_ident_id_seq'::regclass)
       AS identity_starts_at_its_block FROM t_ident;
-- (The bounds differ from run to run: N stands for each.)
DO $$ BEGIN ALTER TABLE t_ident ALTER COLUMN id RESTART WITH 1;
   EXCEPTION WHEN others THEN RAISE NOTICE '%: %', SQLSTATE, regexp_replace(SQLERRM, '\d{4,}', 'N', 'g'); END $$;
DO $$ BEGIN PERFORM setval('t_serial_id_seq', 1);
   EXCEPTION WHEN others THEN RAISE NOTICE '%: %', SQLSTATE, regexp_replace(SQLERRM, '\d{4,}', 'N', 'g'); END $$;
ALTER TABLE t_ident ALTER COLUMN id SET INCREMENT BY 10;   -- allowed: stays in the block
SELECT seqincrement FROM pg_sequence WHERE seqrelid = 't_ident_id_seq'::regclass;

-- track_sequence(): any ascending integer or bigint sequence.
CREATE SEQUENCE orders_seq;
SELECT replstamp.track_sequence('orders_seq');
SELECT nextval('orders_seq') = lower(replstamp.sequence_block((SELECT replica_id FROM replstamp.node), 'bigint'))
       AS first_value_of_block;
SELECT replstamp.track_sequence('orders_seq');          -- already tracked

-- What it refuses.
SELECT replstamp.track_sequence('t_serial');            -- a table
CREATE VIEW a_view AS SELECT 1 AS a;
SELECT replstamp.track_sequence('a_view');
SELECT replstamp.track_sequence('no_such_seq');
CREATE SEQUENCE small_seq AS smallint;
SELECT replstamp.track_sequence('small_seq');
CREATE SEQUENCE down_seq INCREMENT BY -1;
SELECT replstamp.track_sequence('down_seq');
CREATE TEMP SEQUENCE temp_seq;
SELECT replstamp.track_sequence('temp_seq');
CREATE UNLOGGED SEQUENCE unlogged_seq;
SELECT replstamp.track_sequence('unlogged_seq');
SELECT replstamp.track_sequence('replstamp.serial_seq');
CREATE SEQUENCE far_seq;
SELECT setval('far_seq', 10000000000000);
SELECT replstamp.track_sequence('far_seq');              -- tracked, with a warning
CREATE ROLE seq_stranger;
GRANT EXECUTE ON FUNCTION replstamp.track_sequence(regclass), replstamp.untrack_sequence(regclass) TO seq_stranger;
CREATE SEQUENCE owned_seq;
SET ROLE seq_stranger;
SELECT replstamp.track_sequence('owned_seq');           -- not the owner
SELECT replstamp.untrack_sequence('orders_seq');        -- not the owner
RESET ROLE;
SELECT count(*) AS untouched FROM replstamp.tracked_sequence
 WHERE seqrelid IN ('small_seq'::regclass, 'down_seq'::regclass, 'unlogged_seq'::regclass, 'owned_seq'::regclass);

-- untrack_sequence(): rotations leave it alone, it keeps its bounds.
SELECT replstamp.untrack_sequence('orders_seq');
SELECT replstamp.untrack_sequence('orders_seq');        -- not tracked
SELECT seqmin > 1 AS keeps_its_bounds FROM pg_sequence WHERE seqrelid = 'orders_seq'::regclass;
SELECT replstamp.track_sequence('orders_seq');          -- again: in its block, no warning
SELECT replstamp.untrack_sequence('orders_seq');
-- A column's sequence can be left out; untrack() of the table forgets it.
SELECT replstamp.untrack_sequence('t_big_id_seq');
SELECT state FROM replstamp.tracked_sequence WHERE seqrelid = 't_big_id_seq'::regclass;
SELECT replstamp.untrack('t_big');
SELECT count(*) FROM replstamp.tracked_sequence WHERE seqrelid = 't_big_id_seq'::regclass;

-- A rotation moves every tracked sequence to the new ID's block.
SELECT block_min AS old_min FROM replstamp.tracked_sequence WHERE seqrelid = 't_serial_id_seq'::regclass \gset
SELECT replstamp.rotate('test') IS NOT NULL AS rotated;
SELECT replica_id = (SELECT replica_id FROM replstamp.node) AS new_id,
       block_min <> :old_min AS new_block, moved_at IS NOT NULL AS moved
  FROM replstamp.tracked_sequence WHERE seqrelid = 't_serial_id_seq'::regclass;
INSERT INTO t_serial (v) VALUES ('c');
SELECT id = (SELECT block_min FROM replstamp.tracked_sequence WHERE seqrelid = 't_serial_id_seq'::regclass)
       AS next_value_from_new_block FROM t_serial WHERE v = 'c';
SELECT problem, object FROM replstamp.problems WHERE problem LIKE 'sequence%';

-- A dropped sequence leaves the registry.
DROP TABLE t_ident;
SELECT count(*) FROM replstamp.tracked_sequence WHERE relation = 'public.t_ident_id_seq';
REVOKE EXECUTE ON FUNCTION replstamp.track_sequence(regclass), replstamp.untrack_sequence(regclass) FROM seq_stranger;
DROP ROLE seq_stranger;
DROP TABLE t_serial, t_big, t_small;
DROP SEQUENCE orders_seq, small_seq, down_seq, temp_seq, unlogged_seq, far_seq, owned_seq;
DROP VIEW a_view;
DROP EXTENSION replstamp;

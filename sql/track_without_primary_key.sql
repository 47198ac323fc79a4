-- Tables without a primary key: tracked by a unique index of NOT NULL
-- columns, made their replica identity, or by a column of row IDs that
-- track(..., row_id => true) adds.  track() refuses what cannot be a key
-- and changes nothing then; the DDL guard keeps the key.
CREATE EXTENSION replstamp;
\set VERBOSITY default

-- Nothing that can be a key.
CREATE TABLE bare (a int, b text);
SELECT replstamp.track('bare');
CREATE TABLE nullable_u (a int, b text);
CREATE UNIQUE INDEX nullable_u_a ON nullable_u (a);
SELECT replstamp.track('nullable_u');
CREATE TABLE partial_u (a int NOT NULL, b text);
CREATE UNIQUE INDEX partial_u_a ON partial_u (a) WHERE a > 0;
SELECT replstamp.track('partial_u');
CREATE TABLE expr_u (a text NOT NULL);
CREATE UNIQUE INDEX expr_u_a ON expr_u (lower(a));
SELECT replstamp.track('expr_u');
CREATE TABLE deferred_u (a int NOT NULL, CONSTRAINT deferred_u_a UNIQUE (a) DEFERRABLE);
SELECT replstamp.track('deferred_u');
CREATE TABLE full_u (a int NOT NULL);
CREATE UNIQUE INDEX full_u_a ON full_u (a);
ALTER TABLE full_u REPLICA IDENTITY FULL;
SELECT replstamp.track('full_u');
SELECT replstamp.track('full_u', row_id => true);
-- A key whose equal values print differently, as for a primary key.
CREATE TABLE float_u (k float8 NOT NULL, v text);
CREATE UNIQUE INDEX float_u_k ON float_u (k);
SELECT replstamp.track('float_u');
-- key_index must name a fit index of the table.
SELECT replstamp.track('nullable_u', key_index => 'nullable_u_a');
SELECT replstamp.track('bare', key_index => 'full_u_a');
CREATE TABLE with_pk (id int PRIMARY KEY, a int NOT NULL UNIQUE);
SELECT replstamp.track('with_pk', key_index => 'with_pk_a_key');
SELECT replstamp.track('with_pk', row_id => true);
SELECT replstamp.track('full_u', key_index => 'full_u_a', row_id => true);
-- Nothing changed.
SELECT c.relname, c.relreplident, (SELECT count(*) FROM pg_attribute a
                                    WHERE a.attrelid = c.oid AND a.attname = 'replstamp_row_id') AS row_id
  FROM pg_class c
 WHERE c.relname IN ('bare', 'nullable_u', 'partial_u', 'expr_u', 'deferred_u', 'full_u', 'float_u', 'with_pk')
 ORDER BY 1;
SELECT * FROM replstamp.tracked_tables;

-- A fit unique index: the one of fewest columns, then the first by name,
-- made the table's replica identity.
CREATE TABLE keyed (a int NOT NULL, b int NOT NULL, c text);
CREATE UNIQUE INDEX keyed_z ON keyed (a);
CREATE UNIQUE INDEX keyed_ab ON keyed (a, b);
CREATE UNIQUE INDEX keyed_y ON keyed (b);
SELECT replstamp.track('keyed');
SELECT relreplident FROM pg_class WHERE relname = 'keyed';
-- key_index chooses another.
CREATE TABLE keyed2 (a int NOT NULL, b int NOT NULL);
CREATE UNIQUE INDEX keyed2_a ON keyed2 (a);
CREATE UNIQUE INDEX keyed2_b ON keyed2 (b);
SELECT replstamp.track('keyed2', key_index => 'keyed2_b');
-- A replica identity set already is the key.
CREATE TABLE keyed3 (a int NOT NULL, b int NOT NULL);
CREATE UNIQUE INDEX keyed3_a ON keyed3 (a);
CREATE UNIQUE INDEX keyed3_b ON keyed3 (b);
ALTER TABLE keyed3 REPLICA IDENTITY USING INDEX keyed3_b;
SELECT replstamp.track('keyed3', key_index => 'keyed3_a');
SELECT replstamp.track('keyed3');
SELECT replstamp.track('with_pk');
SELECT * FROM replstamp.tracked_tables ORDER BY 1;
SELECT relation, key_columns, key_index::regclass FROM replstamp.tracked_table ORDER BY 1;

-- Changes are keyed by the index's columns.
INSERT INTO keyed VALUES (1, 2, 'x');
UPDATE keyed SET b = 3;
UPDATE keyed SET c = 'y';
DELETE FROM keyed;
SELECT op, pk, row_image FROM replstamp.changes WHERE relation = 'public.keyed' ORDER BY serial;

-- The DDL guard keeps the key.
DROP INDEX keyed_y;
ALTER TABLE keyed REPLICA IDENTITY FULL;
ALTER TABLE keyed REPLICA IDENTITY DEFAULT;
ALTER TABLE keyed REPLICA IDENTITY USING INDEX keyed_z;
ALTER TABLE keyed ADD PRIMARY KEY (a);
ALTER TABLE keyed DROP COLUMN b;
ALTER TABLE keyed ALTER COLUMN b DROP NOT NULL;
-- Another index on the same columns is the same key.
CREATE UNIQUE INDEX keyed_b2 ON keyed (b);
ALTER TABLE keyed REPLICA IDENTITY USING INDEX keyed_b2;
SELECT key_index::regclass FROM replstamp.tracked_table WHERE relation = 'public.keyed';
DROP INDEX keyed_y;
DROP INDEX keyed_z;
SELECT * FROM replstamp.problems;

-- A row ID: a column filled from a sequence confined to this node's block.
CREATE TABLE dup (v text);
INSERT INTO dup VALUES ('a'), ('a'), ('b');
SELECT replstamp.track('dup', row_id => true);
\d dup
SELECT v, count(*), count(DISTINCT replstamp_row_id) AS ids,
       bool_and(replstamp_row_id <@ replstamp.sequence_block((SELECT replica_id FROM replstamp.node), 'bigint')) AS in_block
  FROM dup GROUP BY v ORDER BY v;
SELECT sequence, feeds, state FROM replstamp.tracked_sequences;
SELECT * FROM replstamp.tracked_tables WHERE relation = 'dup'::regclass;
-- Duplicates are two rows, each with a change of its own.
INSERT INTO dup (v) VALUES ('a');
UPDATE dup SET v = 'c' WHERE replstamp_row_id = (SELECT min(replstamp_row_id) FROM dup WHERE v = 'a');
SELECT op, row_image->>'v' AS v FROM replstamp.changes WHERE relation = 'public.dup' ORDER BY serial;
SELECT v, count(*) FROM dup GROUP BY v ORDER BY v;
DROP INDEX dup_replstamp_row_id_key;
ALTER TABLE dup DROP COLUMN replstamp_row_id;
-- Tracked again: the row ID stays the key.
SELECT replstamp.untrack('dup');
SELECT replstamp.track('dup', row_id => true);
SELECT replstamp.track('dup', row_id => true);
SELECT count(*) FROM pg_attribute WHERE attrelid = 'dup'::regclass AND attname LIKE 'replstamp_row_id%';
DROP TABLE bare, nullable_u, partial_u, expr_u, deferred_u, full_u, float_u, with_pk,
    keyed, keyed2, keyed3, dup;
DROP EXTENSION replstamp;

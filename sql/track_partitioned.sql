-- track() of a partitioned table covers its partitions, present and
-- future, under its own name; what it refuses, and untrack().
CREATE EXTENSION replstamp;
\set VERBOSITY default

CREATE TABLE pm (k int, id int, v text, PRIMARY KEY (k, id)) PARTITION BY RANGE (k);
CREATE TABLE pm_1 PARTITION OF pm FOR VALUES FROM (0) TO (10);
CREATE TABLE pm_2 PARTITION OF pm FOR VALUES FROM (10) TO (20);
SELECT replstamp.track('pm', backfill => true);
SELECT replstamp.track('pm');
SELECT replstamp.track('pm_1');       -- covered already
SELECT replstamp.untrack('pm_1');
CREATE TABLE pm_3 PARTITION OF pm FOR VALUES FROM (20) TO (30);
INSERT INTO pm VALUES (1, 1, 'a'), (11, 2, 'b'), (21, 3, 'c');
-- A move to another partition is one UPDATE, from the old key.
UPDATE pm SET k = 12 WHERE id = 1;
UPDATE pm SET v = 'B' WHERE id = 2;
DELETE FROM pm WHERE id = 3;
SELECT relation, op, pk, row_image FROM replstamp.changes ORDER BY serial;
SELECT relation, state FROM replstamp.tracked_table;

-- TRUNCATE: of the table, one change of it; of a partition alone, refused.
TRUNCATE pm_1;
TRUNCATE pm_2, pm_3;
TRUNCATE pm;
SELECT relation, op FROM replstamp.changes WHERE op = 'TRUNCATE';
-- The cloned trigger stays as track() made it.
ALTER TABLE pm_2 DISABLE TRIGGER replstamp_stamp;
ALTER TABLE pm_2 ENABLE TRIGGER replstamp_stamp;           -- not ALWAYS
ALTER TABLE pm_2 ENABLE ALWAYS TRIGGER replstamp_stamp;    -- as it is

-- untrack() removes the trigger from every partition.
SELECT replstamp.untrack('pm');
SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'replstamp%';
INSERT INTO pm VALUES (2, 2, 'local');
SELECT count(*) FROM replstamp.changes WHERE op <> 'TRUNCATE' AND row_image->>'v' = 'local';
TRUNCATE pm_1;                       -- not tracked any more

-- Refused: foreign keys, partitions that are not tables.
CREATE TABLE ref (id int PRIMARY KEY);
CREATE TABLE pf (k int, id int REFERENCES ref, PRIMARY KEY (k, id)) PARTITION BY RANGE (k);
SELECT replstamp.track('pf');
CREATE TABLE pr (k int PRIMARY KEY) PARTITION BY RANGE (k);
CREATE TABLE pr_child (k int REFERENCES pr);
SELECT replstamp.track('pr');
CREATE VIEW notrack AS SELECT 1;
SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'replstamp%';
DROP TABLE pm, pf, ref, pr_child, pr;
DROP VIEW notrack;
DROP EXTENSION replstamp;

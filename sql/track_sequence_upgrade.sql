-- A table tracked before 1.2 keeps its running sequence through ALTER
-- EXTENSION replstamp UPDATE: the update names it (WARNING, and
-- replstamp.problems) and moves it only once the DBA tracks it.
CREATE EXTENSION replstamp VERSION '1.1';
CREATE TABLE old_t (id serial PRIMARY KEY, v text);
SELECT replstamp.track('old_t');
INSERT INTO old_t (v) VALUES ('a'), ('b');
ALTER EXTENSION replstamp UPDATE;
SELECT extversion FROM pg_extension WHERE extname = 'replstamp';
SELECT last_value, min_value FROM pg_sequences WHERE sequencename = 'old_t_id_seq';
SELECT problem, object, hint FROM replstamp.problems WHERE problem LIKE 'sequence%';
INSERT INTO old_t (v) VALUES ('c');
SELECT max(id) AS goes_on_where_it_was FROM old_t;
SELECT replstamp.track_sequence('old_t_id_seq');
SELECT count(*) AS problems FROM replstamp.problems WHERE problem LIKE 'sequence%';
INSERT INTO old_t (v) VALUES ('d');
SELECT id = (SELECT block_min FROM replstamp.tracked_sequence WHERE seqrelid = 'old_t_id_seq'::regclass)
       AS now_in_its_block FROM old_t WHERE v = 'd';
DROP TABLE old_t;
DROP EXTENSION replstamp;

-- replstamp.skip() refuses stamps no change can carry (serial zero or
-- negative, the all-zero replica ID) and records nothing for them.
CREATE EXTENSION replstamp;
\set VERBOSITY default

SELECT replstamp.skip('6f2c5b7e-4e0a-4a8e-9c1d-2b3a4c5d6e7f', 0);
SELECT replstamp.skip('6f2c5b7e-4e0a-4a8e-9c1d-2b3a4c5d6e7f', -5);
SELECT replstamp.skip('00000000-0000-0000-0000-000000000000', 7);
SELECT count(*) AS recorded FROM replstamp.skipped;

-- A possible stamp of another node is still recorded.
SELECT replstamp.skip('6f2c5b7e-4e0a-4a8e-9c1d-2b3a4c5d6e7f', 1);
SELECT replica_id, serial FROM replstamp.skipped;

-- The first serial a node hands out is 1: serial 0 never names a change.
CREATE TABLE s (id int PRIMARY KEY);
SELECT replstamp.track('s');
INSERT INTO s VALUES (1);
SELECT serial FROM replstamp.changes;

DROP TABLE s;
DROP EXTENSION replstamp;

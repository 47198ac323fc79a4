
/*
 * Part 3: identity check and rotation (src/identity.c).
 */

CREATE FUNCTION replstamp.rotate(reason text)
RETURNS uuid
LANGUAGE C STRICT
AS 'MODULE_PATHNAME', 'replstamp_rotate';
COMMENT ON FUNCTION replstamp.rotate(text) IS
    'retire the current replica ID and mint a new one; returns the new ID';
REVOKE ALL ON FUNCTION replstamp.rotate(text) FROM PUBLIC;

-- Per replica ID, the serial up to which this node holds every committed
-- change of it.  Entries in vector_state are fixed: other origins' IDs as
-- pulled, and IDs this database lost changes of (retired by a restore).
-- Every other ID this database minted (the current one, manually retired
-- ones) made all its changes here: below the lowest uncommitted serial,
-- every one is final and held.
CREATE VIEW replstamp.vector AS
    SELECT v.replica_id, v.serial
      FROM replstamp.vector_state v
    UNION ALL
    SELECT h.replica_id, replstamp.lowest_uncommitted_serial() - 1
      FROM replstamp.replica_history h
     WHERE NOT EXISTS (SELECT 1 FROM replstamp.vector_state v
                        WHERE v.replica_id = h.replica_id);
GRANT SELECT ON replstamp.vector TO PUBLIC;

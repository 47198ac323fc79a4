
/*
 * Part 4: replication between nodes (src/replicator.c).
 */

-- Peers.  The connection strings may hold passwords: only the owner reads
-- this table; everybody reads the view replstamp.peers.
CREATE TABLE replstamp.peer (
    name            text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9_.-]{1,63}$'),
    conninfo        text NOT NULL,
    added_at        timestamptz NOT NULL DEFAULT now(),
    last_sync_at    timestamptz,
    last_error      text,
    last_error_at   timestamptz,
    changes_pulled  bigint NOT NULL DEFAULT 0
);
REVOKE ALL ON replstamp.peer FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('replstamp.peer', '');

CREATE VIEW replstamp.peers AS
    SELECT name, added_at, last_sync_at, changes_pulled, last_error, last_error_at
      FROM replstamp.peer;
GRANT SELECT ON replstamp.peers TO PUBLIC;

-- Last writer wins needs the changes of a row.  Only applied changes are
-- indexed: a local stamp does not pay for an index insert (it was 40 % of
-- the trigger's cost), and the apply finds local changes by serial, newest
-- first, since their serials follow their stamp times (src/replicator.c).
CREATE INDEX changes_row_idx ON replstamp.changes USING hash (row_hash) WHERE applied;

CREATE FUNCTION replstamp.add_peer(name text, conninfo text)
RETURNS void
LANGUAGE C STRICT
AS 'MODULE_PATHNAME', 'replstamp_add_peer';

CREATE FUNCTION replstamp.drop_peer(name text)
RETURNS void
LANGUAGE plpgsql STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM replstamp.peer p WHERE p.name = drop_peer.name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'peer "%" does not exist', name
            USING ERRCODE = 'undefined_object';
    END IF;
END $$;

-- What a peer may pull from this node: the vector, computed before the
-- changes are read; flushes WAL.  Called by pulling nodes.
CREATE FUNCTION replstamp.serve_vector()
RETURNS TABLE (replica_id uuid, serial bigint)
LANGUAGE C STRICT
AS 'MODULE_PATHNAME', 'replstamp_serve_vector';

CREATE FUNCTION replstamp.sync(peer text)
RETURNS bigint
LANGUAGE C STRICT
AS 'MODULE_PATHNAME', 'replstamp_sync';
COMMENT ON FUNCTION replstamp.sync(text) IS
    'pull from a peer every change it holds that this node lacks; returns the number applied';

-- Every peer, each in its own subtransaction: a failing peer's batch is
-- rolled back whole and its error recorded in replstamp.peers.
CREATE FUNCTION replstamp.sync_all()
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p record;
    total bigint := 0;
    msg text;
BEGIN
    FOR p IN SELECT name FROM replstamp.peer ORDER BY name LOOP
        BEGIN
            total := total + replstamp.sync(p.name);
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
            UPDATE replstamp.peer SET last_error = msg, last_error_at = now()
             WHERE name = p.name;
            RAISE WARNING 'replstamp: sync from peer "%" failed: %', p.name, msg;
        END;
    END LOOP;
    RETURN total;
END $$;

REVOKE ALL ON FUNCTION replstamp.add_peer(text, text), replstamp.drop_peer(text),
    replstamp.sync(text), replstamp.sync_all(), replstamp.serve_vector() FROM PUBLIC;

-- One row: what a DBA looks at first (defined here, once the peers exist).
CREATE VIEW replstamp.status AS
    SELECT n.replica_id,
           n.state,
           replstamp.next_serial() AS next_serial,
           replstamp.lowest_uncommitted_serial() AS lowest_uncommitted_serial,
           (SELECT count(*) FROM replstamp.changes) AS changes,
           (SELECT count(*) FROM replstamp.tracked_tables) AS tracked_tables,
           n.minted_at,
           n.last_backup_at,
           (SELECT count(*) FROM replstamp.peer) AS peers,
           (SELECT now() - min(coalesce(p.last_sync_at, p.added_at)) FROM replstamp.peer p) AS oldest_peer_sync_age,
           (SELECT count(*) FROM replstamp.peer p WHERE p.last_error IS NOT NULL) AS peers_failing
      FROM replstamp.node n;
GRANT SELECT ON replstamp.status TO PUBLIC;

/* replstamp--1.0.sql: the catalog of the replstamp extension */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION replstamp" to load this file. \quit

/*
 * Part 1: identity, state and stamping (src/replstamp.c, src/stamp.c,
 * src/serial.c).
 */

-- Refuses unless the library was loaded by shared_preload_libraries.
CREATE FUNCTION replstamp._require_preload()
RETURNS void
LANGUAGE C STRICT
AS 'MODULE_PATHNAME', 'replstamp_require_preload';
SELECT replstamp._require_preload();

-- Serials come from this sequence: crash-safe, never handed out twice.
-- CACHE 1 keeps the order in which serials are taken across backends.
CREATE SEQUENCE replstamp.serial_seq AS bigint MINVALUE 1 CACHE 1 NO CYCLE;

-- The single state row of this database.
CREATE TABLE replstamp.node (
    singleton           boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    replica_id          uuid NOT NULL,
    state               text NOT NULL DEFAULT 'original'
                        CHECK (state IN ('original', 'backup')),
    minted_at           timestamptz NOT NULL DEFAULT now(),
    system_identifier   bigint NOT NULL,
    timeline            integer NOT NULL,
    -- set by a backup while it runs, kept afterwards for the restored copy
    backup_label        text,
    backup_started_at   timestamptz,
    backup_lus          bigint,
    backup_next_serial  bigint,
    last_backup_at      timestamptz,
    -- identity check: fingerprint of the last backup_label.old seen
    restore_fingerprint text
);

-- Every replica ID this database has used.
CREATE TABLE replstamp.replica_history (
    replica_id          uuid PRIMARY KEY,
    minted_at           timestamptz NOT NULL DEFAULT now(),
    minted_reason       text NOT NULL,
    retired_at          timestamptz,
    retired_reason      text,
    lus_at_retirement   bigint,
    next_serial_at_retirement bigint,
    backup_label        text,
    system_identifier   bigint,
    timeline            integer
);

-- One row per stamped change, here or pulled from a peer.
CREATE TABLE replstamp.changes (
    replica_id  uuid NOT NULL,
    serial      bigint NOT NULL,
    relation    text NOT NULL,
    op          text NOT NULL CHECK (op IN ('INSERT', 'UPDATE', 'DELETE')),
    pk          jsonb NOT NULL,
    row_image   jsonb,
    changed_at  timestamptz NOT NULL,
    -- replstamp.row_hash(relation, pk): finds the changes of one row cheaply
    row_hash    bigint NOT NULL,
    -- pulled from a peer (true) or stamped here (false)
    applied     boolean NOT NULL DEFAULT false,
    PRIMARY KEY (replica_id, serial)
);

-- Per replica ID of other origins: every change up to serial is held here.
-- (The current ID's own entry is computed: see the view replstamp.vector.)
CREATE TABLE replstamp.vector_state (
    replica_id  uuid PRIMARY KEY,
    serial      bigint NOT NULL CHECK (serial >= 0)
);

-- Identifies a row across nodes: hash of the table name and the key
-- (semantic: equal keys hash equally whatever their text form).
CREATE FUNCTION replstamp.row_hash(relation text, pk jsonb)
RETURNS bigint
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE
AS 'MODULE_PATHNAME', 'replstamp_row_hash';

-- The state row: exactly one, created here with a fresh replica ID.
CREATE FUNCTION replstamp._init_node()
RETURNS uuid
LANGUAGE C STRICT
AS 'MODULE_PATHNAME', 'replstamp_init_node';
SELECT replstamp._init_node();

-- Any change to the state row tells every backend to reload its cached copy.
CREATE FUNCTION replstamp._node_changed()
RETURNS trigger
LANGUAGE C
AS 'MODULE_PATHNAME', 'replstamp_node_changed';
CREATE TRIGGER node_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON replstamp.node
    FOR EACH STATEMENT EXECUTE FUNCTION replstamp._node_changed();

-- The stamping trigger function (AFTER ROW) and its TRUNCATE guard.
CREATE FUNCTION replstamp.stamp()
RETURNS trigger
LANGUAGE C
AS 'MODULE_PATHNAME', 'replstamp_stamp';
CREATE FUNCTION replstamp.refuse_truncate()
RETURNS trigger
LANGUAGE C
AS 'MODULE_PATHNAME', 'replstamp_refuse_truncate';

CREATE FUNCTION replstamp.track(relation regclass)
RETURNS void
LANGUAGE C STRICT
AS 'MODULE_PATHNAME', 'replstamp_track';
COMMENT ON FUNCTION replstamp.track(regclass) IS
    'start stamping every change of a table (primary key required)';

CREATE FUNCTION replstamp.untrack(relation regclass)
RETURNS void
LANGUAGE C STRICT
AS 'MODULE_PATHNAME', 'replstamp_untrack';
COMMENT ON FUNCTION replstamp.untrack(regclass) IS
    'stop stamping the changes of a table';

CREATE FUNCTION replstamp.lowest_uncommitted_serial()
RETURNS bigint
LANGUAGE C STRICT
AS 'MODULE_PATHNAME', 'replstamp_lowest_uncommitted_serial';
COMMENT ON FUNCTION replstamp.lowest_uncommitted_serial() IS
    'lowest serial held by a transaction in progress, or the next serial if none';

CREATE FUNCTION replstamp.next_serial()
RETURNS bigint
LANGUAGE C STRICT
AS 'MODULE_PATHNAME', 'replstamp_next_serial';
COMMENT ON FUNCTION replstamp.next_serial() IS
    'the serial the next change will get (or a higher one)';

-- Tracked tables: the triggers are the single source of truth.
CREATE VIEW replstamp.tracked_tables AS
    SELECT t.tgrelid::regclass AS relation,
           n.nspname AS schema_name,
           c.relname AS table_name
      FROM pg_catalog.pg_trigger t
      JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     WHERE t.tgfoid = 'replstamp.stamp()'::pg_catalog.regprocedure
       AND NOT t.tgisinternal;

-- Privileges: everybody may look at the state, nobody but the owner may write.
REVOKE ALL ON ALL TABLES IN SCHEMA replstamp FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA replstamp FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA replstamp FROM PUBLIC;
GRANT USAGE ON SCHEMA replstamp TO PUBLIC;
-- Not replstamp.changes: its row images would show every tracked table to
-- users who may not read them.  Grant it to the roles peers pull as.
GRANT SELECT ON replstamp.node, replstamp.replica_history,
    replstamp.vector_state, replstamp.tracked_tables TO PUBLIC;
-- next_serial() reads the sequence's position; nextval stays forbidden.
GRANT SELECT ON SEQUENCE replstamp.serial_seq TO PUBLIC;
GRANT EXECUTE ON FUNCTION replstamp.lowest_uncommitted_serial(),
    replstamp.next_serial(), replstamp.row_hash(text, jsonb) TO PUBLIC;
-- Trigger functions need no EXECUTE grant to fire: PostgreSQL checks it
-- when the trigger is created, which track() does as a privileged role.

/*
 * Part 2: the state flip around backups (src/backup.c).
 */

CREATE FUNCTION replstamp.prepare_backup(label text DEFAULT NULL)
RETURNS text
LANGUAGE C
SET synchronous_commit = on
AS 'MODULE_PATHNAME', 'replstamp_prepare_backup';
COMMENT ON FUNCTION replstamp.prepare_backup(text) IS
    'mark every database with replstamp ''backup'' and record its serials; call before an outside backup starts';

CREATE FUNCTION replstamp.finish_backup()
RETURNS void
LANGUAGE C
AS 'MODULE_PATHNAME', 'replstamp_finish_backup';
COMMENT ON FUNCTION replstamp.finish_backup() IS
    'mark every database that is ''backup'' ''original'' again; call after an outside backup ended';

REVOKE ALL ON FUNCTION replstamp.prepare_backup(text), replstamp.finish_backup() FROM PUBLIC;

CREATE PROCEDURE replstamp.backup(target text, fast boolean DEFAULT true,
                                  max_rate integer DEFAULT 0, label text DEFAULT NULL)
LANGUAGE C
AS 'MODULE_PATHNAME', 'replstamp_backup';
COMMENT ON PROCEDURE replstamp.backup(text, boolean, integer, text) IS
    'a self-contained, verifiable base backup of the whole cluster into target, taken while every database with replstamp is marked ''backup''';

REVOKE ALL ON PROCEDURE replstamp.backup(text, boolean, integer, text) FROM PUBLIC;

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

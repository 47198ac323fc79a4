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

/* replstamp--1.0--1.1.sql: from release 1.0 to 1.1 */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION replstamp UPDATE TO '1.1'" to load this file. \quit

/*
 * Identity: a per-start token instead of per-backend memory (a check rolled
 * back by a savepoint is done again), epochs that let peers see a data set
 * that went back in time, the lowest uncommitted serial recorded every
 * second for copies that carry no backup mark.
 */

-- The server start whose identity check this row has passed (src/identity.c).
ALTER TABLE replstamp.node ADD COLUMN verified_token uuid;

-- How far the changes stamped here are recorded in replstamp.row_version;
-- whether the ID is still in the vector (a retired ID leaves it once every
-- change of it is pruned and every puller holds it).
ALTER TABLE replstamp.replica_history
    ADD COLUMN reconciled_upto bigint NOT NULL DEFAULT 0,
    ADD COLUMN in_vector boolean NOT NULL DEFAULT true;

CREATE OR REPLACE VIEW replstamp.vector AS
    SELECT v.replica_id, v.serial
      FROM replstamp.vector_state v
    UNION ALL
    SELECT h.replica_id, replstamp.lowest_uncommitted_serial() OPERATOR(pg_catalog.-) 1
      FROM replstamp.replica_history h
     WHERE h.in_vector
       AND NOT EXISTS (SELECT 1 FROM replstamp.vector_state v
                        WHERE v.replica_id OPERATOR(pg_catalog.=) h.replica_id);

-- Per replica ID, each server start: the serial it hands out serials from.
-- Two copies of one data set that both write have different tokens from
-- some serial on; dead marks an epoch whose changes were re-issued.
CREATE TABLE replstamp.epoch (
    replica_id   uuid NOT NULL,
    first_serial bigint NOT NULL,
    token        uuid NOT NULL,
    started_at   timestamptz NOT NULL,
    dead         boolean NOT NULL DEFAULT false,
    PRIMARY KEY (replica_id, token)
);

-- The lowest uncommitted serial, recorded every second by the background
-- worker: a copy made without the backup mark (a promoted standby, a base
-- backup taken without prepare_backup()) holds every change below it.
CREATE TABLE replstamp.lus_mark (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    replica_id uuid NOT NULL,
    lus        bigint NOT NULL,
    marked_at  timestamptz NOT NULL
);

/*
 * Last writer wins in O(1): per row, the latest version held here.
 */
CREATE TABLE replstamp.row_version (
    row_hash    bigint NOT NULL,     -- replstamp.row_hash(relation, pk)
    relation    text NOT NULL,
    pk          jsonb NOT NULL,
    replica_id  uuid NOT NULL,       -- the stamp of the row's latest change
    serial      bigint NOT NULL,
    changed_at  timestamptz NOT NULL,
    deleted     boolean NOT NULL,    -- that change deleted the row: a tombstone
    -- During a rolling ADD COLUMN, versions of a row carry different
    -- columns.  A column's value is the one of the latest version that
    -- carries it: the carry is the latest version that carries columns the
    -- row's latest version lacks (carry_columns), kept until a later version
    -- carries them; once this node has such a column, it is filled in from
    -- the carry.
    partial          boolean NOT NULL DEFAULT false,
    carry_replica_id uuid,
    carry_serial     bigint,
    carry_columns    text[],
    carry_changed_at timestamptz
);
-- A row's version is only ever looked up by its hash (one lookup per
-- change applied or pruned): a hash index reaches it in fewer page reads
-- than a btree.
CREATE INDEX row_version_hash ON replstamp.row_version USING hash (row_hash);
CREATE INDEX row_version_tombstones ON replstamp.row_version (changed_at) WHERE deleted;
CREATE INDEX row_version_partial ON replstamp.row_version (relation) WHERE partial;

-- Applied changes were indexed by row for last writer wins; row_version
-- does that now, for local changes too.
DROP INDEX replstamp.changes_row_idx;

-- Per replica ID: the latest stamp time held (the hybrid clock's floor
-- after a restart), and whether its node retired it.
ALTER TABLE replstamp.vector_state
    ADD COLUMN max_changed_at timestamptz,
    ADD COLUMN retired boolean NOT NULL DEFAULT false;

/*
 * Tracked tables, as a registry: what peers may send, what was dropped or
 * untracked, the columns the apply last saw, backfill progress.
 */
CREATE TABLE replstamp.tracked (
    relation       text PRIMARY KEY,  -- schema-qualified, as in replstamp.changes
    relid          oid,               -- while tracked; NULL once dropped or untracked
    state          text NOT NULL CHECK (state IN ('tracked', 'untracked', 'dropped')),
    since          timestamptz NOT NULL DEFAULT now(),
    columns        text[],
    backfill       text CHECK (backfill IN ('pending', 'running', 'done', 'failed')),
    backfill_rows  bigint NOT NULL DEFAULT 0,
    backfill_after tid,               -- the backfill went up to this row
    -- What track() saw under the lock that keeps the table's writers out:
    -- a row version this snapshot sees was written before and has no stamp
    -- yet; the table ended before backfill_end, rows past it are newer; a
    -- file node other than backfill_filenode means the table was rewritten.
    backfill_snapshot pg_snapshot,
    backfill_end   tid,
    backfill_filenode oid,
    backfill_error text,
    conflicts      bigint NOT NULL DEFAULT 0,
    log_purged     boolean NOT NULL DEFAULT false, -- dropped/untracked: its changes are gone from the log
    dropped_columns text[]            -- columns dropped here: peers' values of them are not kept
);
INSERT INTO replstamp.tracked (relation, relid, state)
    SELECT pg_catalog.quote_ident(schema_name) OPERATOR(pg_catalog.||) '.'
               OPERATOR(pg_catalog.||) pg_catalog.quote_ident(table_name),
           relation::oid, 'tracked'
      FROM replstamp.tracked_tables;
-- Tables with changes in the log that are tracked no more (dropped, or
-- untracked, under 1.0): as for a table that leaves under 1.1, their
-- changes are no longer served, so that a node that never had the table is
-- not stopped by them, and pruning removes them.
INSERT INTO replstamp.tracked (relation, state)
    SELECT c.relation,
           CASE WHEN pg_catalog.to_regclass(c.relation) IS NULL THEN 'dropped' ELSE 'untracked' END
      FROM (SELECT DISTINCT relation FROM replstamp.changes) c
     WHERE NOT EXISTS (SELECT 1 FROM replstamp.tracked t
                        WHERE t.relation OPERATOR(pg_catalog.=) c.relation);

/*
 * Replication: peers, pullers, lag, conflicts, skipped changes.
 */
ALTER TABLE replstamp.peer
    ADD COLUMN replica_id uuid,          -- the peer's current replica ID at the last sync
    ADD COLUMN issued bigint,            -- the serials it had handed out then
    ADD COLUMN status text NOT NULL DEFAULT 'new',
    ADD COLUMN last_error_sqlstate text,
    ADD COLUMN last_error_change text,   -- replica_id/serial of the change that failed
    ADD COLUMN clock_skew interval,      -- how far ahead of ours its stamps were
    ADD COLUMN changes_skipped bigint NOT NULL DEFAULT 0,
    ADD COLUMN conflicts bigint NOT NULL DEFAULT 0,
    ADD COLUMN protocol integer;

-- Per peer and replica ID: what the peer held at the last sync.
CREATE TABLE replstamp.peer_lag (
    peer          text NOT NULL REFERENCES replstamp.peer ON DELETE CASCADE,
    replica_id    uuid NOT NULL,
    peer_serial   bigint NOT NULL,       -- the peer held every change up to here
    pending       bigint NOT NULL,       -- of them, how many we lacked then
    oldest_pending timestamptz,          -- the stamp time of the oldest of those
    observed_at   timestamptz NOT NULL,
    PRIMARY KEY (peer, replica_id)
);

-- Nodes that pull from this one, whether or not they are peers here, and
-- what they hold: pruning keeps what one of them lacks.
CREATE TABLE replstamp.puller (
    replica_id    uuid PRIMARY KEY,      -- the puller's current replica ID
    label         text,
    first_pull_at timestamptz NOT NULL DEFAULT now(),
    last_pull_at  timestamptz NOT NULL
);
CREATE TABLE replstamp.puller_vector (
    puller     uuid NOT NULL REFERENCES replstamp.puller ON DELETE CASCADE,
    replica_id uuid NOT NULL,
    serial     bigint NOT NULL,
    PRIMARY KEY (puller, replica_id)
);

-- Per replica ID, the highest serial whose tombstone was dropped: a node
-- that holds less of that ID could bring deleted rows back.
CREATE TABLE replstamp.purged (
    replica_id uuid PRIMARY KEY,
    serial     bigint NOT NULL
);

-- Pruning: per replica ID, how far its changes were looked at; and the
-- latest versions looked at then and superseded since.
CREATE TABLE replstamp.prune_progress (
    replica_id  uuid PRIMARY KEY,
    walked_upto bigint NOT NULL
);
CREATE TABLE replstamp.prune_queue (
    replica_id uuid NOT NULL,
    serial     bigint NOT NULL,
    PRIMARY KEY (replica_id, serial)
);

-- One row per change that lost to a later change of the same row, or that
-- replaced a version written by another replica ID.  It keeps a copy of
-- the version that lost (loser_op, loser_image: what its change wrote),
-- for replstamp.restore_version(): the change itself is pruned like any
-- other.
CREATE TABLE replstamp.conflict_log (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    resolved_at       timestamptz NOT NULL DEFAULT now(),
    relation          text NOT NULL,
    pk                jsonb NOT NULL,
    kind              text NOT NULL CHECK (kind IN ('incoming_lost', 'overwrote')),
    peer              text,
    winner_replica_id uuid NOT NULL,
    winner_serial     bigint NOT NULL,
    winner_changed_at timestamptz NOT NULL,
    loser_replica_id  uuid NOT NULL,
    loser_serial      bigint NOT NULL,
    loser_changed_at  timestamptz NOT NULL,
    loser_op          text CHECK (loser_op IN ('INSERT', 'UPDATE', 'DELETE')),
    loser_image       jsonb
);
CREATE INDEX conflict_log_loser ON replstamp.conflict_log (loser_replica_id, loser_serial);

-- Keys and row images are found through indexes, never planned on: ANALYZE
-- skips them (sorting samples of jsonb values was most of what autovacuum
-- spent on these tables while pruning).
ALTER TABLE replstamp.changes ALTER COLUMN pk SET STATISTICS 0,
    ALTER COLUMN row_image SET STATISTICS 0;
ALTER TABLE replstamp.row_version ALTER COLUMN pk SET STATISTICS 0;
ALTER TABLE replstamp.conflict_log ALTER COLUMN pk SET STATISTICS 0,
    ALTER COLUMN loser_image SET STATISTICS 0;

-- Changes a superuser chose to hold without applying (replstamp.skip()).
CREATE TABLE replstamp.skipped (
    replica_id   uuid NOT NULL,
    serial       bigint NOT NULL,
    relation     text,
    error        text,
    requested_at timestamptz NOT NULL DEFAULT now(),
    requested_by name NOT NULL DEFAULT current_user,
    skipped_at   timestamptz,            -- when a sync met it
    PRIMARY KEY (replica_id, serial)
);

/*
 * Fill row_version from the change log: per row, its latest change.  An
 * UPDATE that changed the key is the old key deleted and the new written.
 */
INSERT INTO replstamp.row_version
    (row_hash, relation, pk, replica_id, serial, changed_at, deleted)
SELECT DISTINCT ON (r.relation, r.key)
       replstamp.row_hash(r.relation, r.key), r.relation, r.key,
       r.replica_id, r.serial, r.changed_at, r.deleted
  FROM (SELECT c.relation, c.pk AS key, c.replica_id, c.serial, c.changed_at,
               c.op = 'DELETE' OR (c.op = 'UPDATE' AND c.pk OPERATOR(pg_catalog.<>) k.newkey) AS deleted
          FROM replstamp.changes c
          LEFT JOIN LATERAL (SELECT pg_catalog.jsonb_object_agg(n, c.row_image OPERATOR(pg_catalog.->) n) AS newkey
                               FROM pg_catalog.jsonb_object_keys(c.pk) n) k ON c.op = 'UPDATE'
        UNION ALL
        SELECT c.relation, k.newkey, c.replica_id, c.serial, c.changed_at, false
          FROM replstamp.changes c
          CROSS JOIN LATERAL (SELECT pg_catalog.jsonb_object_agg(n, c.row_image OPERATOR(pg_catalog.->) n) AS newkey
                                FROM pg_catalog.jsonb_object_keys(c.pk) n) k
         WHERE c.op = 'UPDATE' AND c.pk OPERATOR(pg_catalog.<>) k.newkey) r
 ORDER BY r.relation, r.key, r.changed_at DESC, r.replica_id DESC, r.serial DESC;

-- The row hash is 64 bits of key now (32 before): recompute it.
UPDATE replstamp.changes SET row_hash = replstamp.row_hash(relation, pk);

-- What row_version holds of this node's own changes.
UPDATE replstamp.replica_history h
   SET reconciled_upto = coalesce((SELECT pg_catalog.max(c.serial) FROM replstamp.changes c
                                    WHERE c.replica_id OPERATOR(pg_catalog.=) h.replica_id), 0);

UPDATE replstamp.vector_state v
   SET max_changed_at = (SELECT pg_catalog.max(c.changed_at) FROM replstamp.changes c
                          WHERE c.replica_id OPERATOR(pg_catalog.=) v.replica_id);

/*
 * Functions.
 */

-- track() gets its backfill argument.
DROP FUNCTION replstamp.track(regclass);
CREATE FUNCTION replstamp.track(relation regclass, backfill boolean DEFAULT false)
RETURNS void
LANGUAGE C
AS 'MODULE_PATHNAME', 'replstamp_track';
COMMENT ON FUNCTION replstamp.track(regclass, boolean) IS
    'start stamping every change of a table (primary key required); with backfill, stamp its existing rows once (also when it is tracked already)';

-- The process whose open transaction holds the lowest uncommitted serial.
CREATE FUNCTION replstamp.lus_holder()
RETURNS integer
LANGUAGE C STRICT
AS 'MODULE_PATHNAME', 'replstamp_lus_holder';

-- The handshake a pulling node starts every sync with (src/serve.c).
CREATE FUNCTION replstamp.serve(request jsonb)
RETURNS jsonb
LANGUAGE C STRICT
AS 'MODULE_PATHNAME', 'replstamp_serve';

-- sync() and sync_all() run in a background worker now, committing page
-- by page (src/sync.c).
CREATE OR REPLACE FUNCTION replstamp.sync_all()
RETURNS bigint
LANGUAGE C
AS 'MODULE_PATHNAME', 'replstamp_sync_all';
COMMENT ON FUNCTION replstamp.sync_all() IS
    'pull from every peer, each on its own; a failing peer is recorded in replstamp.peers; returns the number of changes applied';

-- drop_peer also forgets the node as a puller.
CREATE OR REPLACE FUNCTION replstamp.drop_peer(name text)
RETURNS void
LANGUAGE C STRICT
AS 'MODULE_PATHNAME', 'replstamp_drop_peer';

CREATE FUNCTION replstamp.forget_puller(replica_id uuid)
RETURNS boolean
LANGUAGE C STRICT
AS 'MODULE_PATHNAME', 'replstamp_forget_puller';
COMMENT ON FUNCTION replstamp.forget_puller(uuid) IS
    'forget a node that pulled from here and is gone for good, so that it no longer holds pruning back';

CREATE FUNCTION replstamp.prune()
RETURNS bigint
LANGUAGE C
AS 'MODULE_PATHNAME', 'replstamp_prune';
COMMENT ON FUNCTION replstamp.prune() IS
    'remove the changes every puller holds, except the latest of each row and tombstones younger than replstamp.tombstone_lifetime; returns the number removed';

CREATE FUNCTION replstamp.skip(replica_id uuid, serial bigint)
RETURNS void
LANGUAGE C STRICT
AS 'MODULE_PATHNAME', 'replstamp_skip';
COMMENT ON FUNCTION replstamp.skip(uuid, bigint) IS
    'hold the change (replica_id, serial) without applying it, so that syncs go on past it';

CREATE FUNCTION replstamp.restore_version(replica_id uuid, serial bigint)
RETURNS void
LANGUAGE C STRICT
AS 'MODULE_PATHNAME', 'replstamp_restore_version';
COMMENT ON FUNCTION replstamp.restore_version(uuid, bigint) IS
    'make the version of a row that change wrote the current one again, as a new change';

-- Event triggers: a tracked table keeps its triggers and its name (its
-- schema's too), whatever its owner runs.
CREATE FUNCTION replstamp._ddl_guard()
RETURNS event_trigger
LANGUAGE C
AS 'MODULE_PATHNAME', 'replstamp_ddl_guard';
CREATE FUNCTION replstamp._drop_guard()
RETURNS event_trigger
LANGUAGE C
AS 'MODULE_PATHNAME', 'replstamp_drop_guard';
CREATE EVENT TRIGGER replstamp_ddl_guard ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE', 'CREATE TRIGGER', 'ALTER TRIGGER', 'ALTER SCHEMA')
    EXECUTE FUNCTION replstamp._ddl_guard();
CREATE EVENT TRIGGER replstamp_drop_guard ON sql_drop
    EXECUTE FUNCTION replstamp._drop_guard();
ALTER EVENT TRIGGER replstamp_ddl_guard ENABLE ALWAYS;
ALTER EVENT TRIGGER replstamp_drop_guard ENABLE ALWAYS;

/*
 * Views.
 */

-- Peers: last_error never holds row values (the server log has the rest).
CREATE OR REPLACE VIEW replstamp.peers AS
    SELECT name, added_at, last_sync_at, changes_pulled, last_error, last_error_at,
           status, replica_id, last_error_sqlstate, last_error_change, clock_skew,
           changes_skipped, conflicts
      FROM replstamp.peer;

-- Per peer and replica ID: changes the peer held at the last sync that
-- this node has not pulled yet, and how old the oldest of them is.
CREATE VIEW replstamp.lag AS
    SELECT l.peer, l.replica_id,
           CASE WHEN coalesce(v.serial, 0) OPERATOR(pg_catalog.>=) l.peer_serial THEN 0
                ELSE l.pending END AS changes_behind,
           CASE WHEN coalesce(v.serial, 0) OPERATOR(pg_catalog.>=) l.peer_serial THEN NULL
                ELSE pg_catalog.now() OPERATOR(pg_catalog.-) l.oldest_pending END AS oldest_behind_age,
           l.peer_serial,
           coalesce(v.serial, 0) AS our_serial,
           l.observed_at
      FROM replstamp.peer_lag l
      LEFT JOIN replstamp.vector v ON v.replica_id OPERATOR(pg_catalog.=) l.replica_id;

-- Pullers and how far they hold pruning back (like pg_replication_slots):
-- the changes above what each held when its last sync began, their bytes
-- and the age of the oldest; a replica ID it held nothing of counts whole.
CREATE VIEW replstamp.pullers AS
    SELECT p.replica_id, p.label, p.first_pull_at, p.last_pull_at,
           coalesce(h.changes, 0) AS changes_not_held,
           coalesce(h.bytes, 0) AS bytes_not_held,
           pg_catalog.now() OPERATOR(pg_catalog.-) h.oldest AS oldest_not_held_age,
           pg_catalog.now() OPERATOR(pg_catalog.-) p.last_pull_at AS since_last_pull
      FROM replstamp.puller p
      CROSS JOIN LATERAL (
           SELECT pg_catalog.count(*) AS changes,
                  pg_catalog.sum(pg_catalog.pg_column_size(c.*)) AS bytes,
                  pg_catalog.min(c.changed_at) AS oldest
             FROM replstamp.vector v
             LEFT JOIN replstamp.puller_vector pv
                    ON pv.puller OPERATOR(pg_catalog.=) p.replica_id
                   AND pv.replica_id OPERATOR(pg_catalog.=) v.replica_id
             JOIN replstamp.changes c ON c.replica_id OPERATOR(pg_catalog.=) v.replica_id
                                     AND c.serial OPERATOR(pg_catalog.>) coalesce(pv.serial, 0)) h;

-- Conflicts, readable by whoever may read replstamp.changes (keys are row values).
CREATE VIEW replstamp.conflicts AS
    SELECT id, resolved_at, relation, pk, kind, peer,
           winner_replica_id, winner_serial, winner_changed_at,
           loser_replica_id, loser_serial, loser_changed_at, loser_op, loser_image
      FROM replstamp.conflict_log;

-- One row, every figure O(1).
CREATE OR REPLACE VIEW replstamp.status AS
    SELECT n.replica_id,
           n.state,
           replstamp.next_serial() AS next_serial,
           replstamp.lowest_uncommitted_serial() AS lowest_uncommitted_serial,
           pg_catalog.pg_stat_get_live_tuples('replstamp.changes'::pg_catalog.regclass) AS changes,
           (SELECT pg_catalog.count(*) FROM replstamp.tracked t WHERE t.state = 'tracked') AS tracked_tables,
           n.minted_at,
           n.last_backup_at,
           (SELECT pg_catalog.count(*) FROM replstamp.peer) AS peers,
           (SELECT pg_catalog.now() OPERATOR(pg_catalog.-) pg_catalog.min(coalesce(p.last_sync_at, p.added_at))
              FROM replstamp.peer p) AS oldest_peer_sync_age,
           (SELECT pg_catalog.count(*) FROM replstamp.peer p WHERE p.last_error IS NOT NULL) AS peers_failing,
           replstamp.lus_holder() AS lus_holder_pid,
           (SELECT pg_catalog.now() OPERATOR(pg_catalog.-) a.xact_start FROM pg_catalog.pg_stat_activity a
             WHERE a.pid OPERATOR(pg_catalog.=) replstamp.lus_holder()) AS lus_holder_xact_age,
           (SELECT pg_catalog.count(*) FROM replstamp.tracked t
             WHERE t.state = 'tracked' AND NOT EXISTS (
                   SELECT 1 FROM pg_catalog.pg_trigger g
                    WHERE g.tgrelid OPERATOR(pg_catalog.=) t.relid
                      AND g.tgname = 'replstamp_stamp' AND g.tgenabled = 'A')) AS tracked_tables_not_stamped,
           (SELECT pg_catalog.count(*) FROM replstamp.puller) AS pullers,
           (SELECT pg_catalog.now() OPERATOR(pg_catalog.-) pg_catalog.min(p.last_pull_at)
              FROM replstamp.puller p) AS oldest_puller_age,
           (SELECT pg_catalog.count(*) FROM replstamp.peer p
             WHERE p.status IN ('diverged', 'stale')) AS peers_diverged,
           -- the size of the log, and the puller that has not pulled for
           -- the longest: replstamp.pullers says how much it holds back
           pg_catalog.pg_total_relation_size('replstamp.changes'::pg_catalog.regclass) AS changes_bytes,
           (SELECT p.label FROM replstamp.puller p
             ORDER BY p.last_pull_at LIMIT 1) AS oldest_puller
      FROM replstamp.node n;

/*
 * Privileges.
 */
REVOKE ALL ON replstamp.prune_progress, replstamp.prune_queue FROM PUBLIC;
GRANT SELECT ON replstamp.prune_progress TO PUBLIC;
REVOKE ALL ON replstamp.epoch, replstamp.lus_mark, replstamp.row_version,
    replstamp.tracked, replstamp.peer_lag, replstamp.puller, replstamp.puller_vector,
    replstamp.purged, replstamp.conflict_log, replstamp.skipped FROM PUBLIC;
GRANT SELECT ON replstamp.epoch, replstamp.lus_mark, replstamp.tracked,
    replstamp.peer_lag, replstamp.puller, replstamp.puller_vector, replstamp.purged,
    replstamp.lag, replstamp.pullers, replstamp.status, replstamp.peers TO PUBLIC;
-- row_version, conflicts and skipped show keys (row values): like
-- replstamp.changes, grant them to the roles that may read every table.
REVOKE ALL ON FUNCTION replstamp.lus_holder(), replstamp.serve(jsonb),
    replstamp.sync_all(), replstamp.drop_peer(text), replstamp.forget_puller(uuid),
    replstamp.prune(), replstamp.skip(uuid, bigint), replstamp.restore_version(uuid, bigint),
    replstamp.track(regclass, boolean), replstamp._ddl_guard(), replstamp._drop_guard() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION replstamp.lus_holder() TO PUBLIC;

-- Check this database's identity now, in this transaction: a new database
-- is verified before it stamps anything, an updated copy that was restored
-- rotates.
CREATE FUNCTION replstamp._verify_identity()
RETURNS void
LANGUAGE C
AS 'MODULE_PATHNAME', 'replstamp_verify_identity';
REVOKE ALL ON FUNCTION replstamp._verify_identity() FROM PUBLIC;
SELECT replstamp._verify_identity();

-- pg_dump keeps what a user configured.
SELECT pg_catalog.pg_extension_config_dump('replstamp.skipped', '');
-- And the tables that left, so that a restored copy ignores their changes
-- as this node does.  The tracked ones are not dumped (relid is this
-- database's): pg_restore re-creates their triggers, and the DDL guard
-- registers each table as the triggers are enabled again.
SELECT pg_catalog.pg_extension_config_dump('replstamp.tracked', 'WHERE state <> ''tracked''');

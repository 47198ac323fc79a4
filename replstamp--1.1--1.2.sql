/* replstamp--1.1--1.2.sql: from release 1.1 to 1.2 */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION replstamp UPDATE TO '1.2'" to load this file. \quit

/*
 * Pullers are bound to the role they connect as (src/serve.c).  Only a
 * trusted puller (a superuser, or a role with the REPLICATION attribute,
 * which only a superuser can give) is recorded and has its claims (dead
 * epochs, "you went back in time", what it holds) acted on; a record made
 * by one role is never updated by a request of another.  NULL: recorded
 * by 1.1, taken over by the first trusted role that pulls under it.
 */
ALTER TABLE replstamp.puller ADD COLUMN role name;

CREATE OR REPLACE VIEW replstamp.pullers AS
    SELECT p.replica_id, p.label, p.first_pull_at, p.last_pull_at,
           coalesce(h.changes, 0) AS changes_not_held,
           coalesce(h.bytes, 0) AS bytes_not_held,
           pg_catalog.now() OPERATOR(pg_catalog.-) h.oldest AS oldest_not_held_age,
           pg_catalog.now() OPERATOR(pg_catalog.-) p.last_pull_at AS since_last_pull,
           p.role
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


/*
 * Tracked tables keep the primary key they were tracked with (issue 27):
 * every node identifies their rows by these columns, so the DDL guard
 * refuses a new key, as it refuses SET UNLOGGED and a dropped key.
 */
ALTER TABLE replstamp.tracked ADD COLUMN key_columns text[];
UPDATE replstamp.tracked t
   SET key_columns = (SELECT pg_catalog.array_agg(a.attname::text ORDER BY k.ord)
                        FROM pg_catalog.pg_index i
                        CROSS JOIN LATERAL pg_catalog.unnest(i.indkey::pg_catalog.int2[])
                             WITH ORDINALITY AS k(attnum, ord)
                        JOIN pg_catalog.pg_attribute a
                          ON a.attrelid OPERATOR(pg_catalog.=) i.indrelid
                         AND a.attnum OPERATOR(pg_catalog.=) k.attnum
                       WHERE i.indrelid OPERATOR(pg_catalog.=) t.relid AND i.indisprimary
                         AND k.ord OPERATOR(pg_catalog.<=) i.indnkeyatts)
 WHERE t.state OPERATOR(pg_catalog.=) 'tracked';

/*
 * Tables without a primary key (issue 26, item 4): their row key is the
 * unique index of NOT NULL columns that their replica identity names
 * (ALTER TABLE ... REPLICA IDENTITY USING INDEX, which track() sets), or
 * the replstamp_row_id column track(..., row_id => true) adds.  key_index
 * is that index while the table is tracked; NULL when the key is the
 * primary key.  Every table tracked before 1.2 has a primary key.
 */
ALTER TABLE replstamp.tracked ADD COLUMN key_index oid;

-- track() gets its key_index and row_id arguments; the grants follow.
CREATE FUNCTION replstamp.track(relation regclass, backfill boolean DEFAULT false,
                                key_index regclass DEFAULT NULL, row_id boolean DEFAULT false)
RETURNS void
LANGUAGE C
AS 'MODULE_PATHNAME', 'replstamp_track';
COMMENT ON FUNCTION replstamp.track(regclass, boolean, regclass, boolean) IS
    'start stamping every change of a table, identified by its primary key, else by a unique index of NOT NULL columns (key_index, made its replica identity), else by a row ID column (row_id); with backfill, stamp its existing rows once (also when it is tracked already)';
REVOKE ALL ON FUNCTION replstamp.track(regclass, boolean, regclass, boolean) FROM PUBLIC;
/*
 * For this script only (dropped at its end): grant EXECUTE on the
 * functions named in onto (signatures, comma-separated) to every role that
 * has it on src, its owner and PUBLIC aside: a renamed or re-signed
 * function keeps who may call it.
 */
CREATE FUNCTION replstamp._copy_execute_grants(src regprocedure, onto text)
    RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT DISTINCT a.grantee::pg_catalog.regrole AS role
               FROM pg_catalog.pg_proc p,
                    LATERAL pg_catalog.aclexplode(p.proacl) a
              WHERE p.oid OPERATOR(pg_catalog.=) src
                AND a.privilege_type OPERATOR(pg_catalog.=) 'EXECUTE'
                AND a.grantee OPERATOR(pg_catalog.<>) 0
                AND a.grantee OPERATOR(pg_catalog.<>) p.proowner
    LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO %s', onto, r.role);
    END LOOP;
END
$$;
SELECT replstamp._copy_execute_grants('replstamp.track(regclass, boolean)',
                                      'replstamp.track(regclass, boolean, regclass, boolean)');
DROP FUNCTION replstamp.track(regclass, boolean);

-- The key of each tracked table: its primary key, or its replica identity index.
CREATE OR REPLACE VIEW replstamp.tracked_tables AS
    SELECT t.tgrelid::pg_catalog.regclass AS relation,
           n.nspname AS schema_name,
           c.relname AS table_name,
           (SELECT i.indexrelid::pg_catalog.regclass FROM pg_catalog.pg_index i
             WHERE i.indrelid OPERATOR(pg_catalog.=) t.tgrelid
               AND (i.indisprimary OR (i.indisreplident AND c.relreplident OPERATOR(pg_catalog.=) 'i'))
             ORDER BY i.indisprimary DESC LIMIT 1) AS key_index
      FROM pg_catalog.pg_trigger t
      JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) t.tgrelid
      JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
     WHERE t.tgfoid OPERATOR(pg_catalog.=) 'replstamp.stamp()'::pg_catalog.regprocedure
       AND NOT t.tgisinternal;

-- The last verification against each peer (issue 23): replstamp.peers
-- and replstamp.problems show it.
CREATE TABLE replstamp.verification (
    peer          text PRIMARY KEY REFERENCES replstamp.peer ON DELETE CASCADE,
    verified_at   timestamptz NOT NULL,
    tables        text[],                -- NULL: every tracked table
    deep          boolean NOT NULL,
    differences   bigint NOT NULL,       -- rows named by that run
    digests_read  bigint NOT NULL,       -- bucket digests compared
    rows_read     bigint NOT NULL,       -- rows read, here and there
    duration      interval NOT NULL
);
REVOKE ALL ON replstamp.verification FROM PUBLIC;
GRANT SELECT ON replstamp.verification TO PUBLIC;

/*
 * Sequences that hand out node-unique values (issue 26, item 5; see
 * src/sequences.c and doc/sequences.md).  Each tracked sequence is kept,
 * by its own MINVALUE, MAXVALUE and START, inside the block of its type's
 * range that belongs to the current replica ID; a rotation moves it to the
 * new ID's block.  track() covers the sequences of the table's columns
 * (serial, bigserial, identity); track_sequence() any other.  Rows of this
 * table are not dumped: their OIDs mean nothing in another database, and
 * pg_restore gives a restored database a new ID, so the sequences of
 * tracked tables are covered again as their triggers come back.
 *
 * The update does not touch a sequence that already runs: those feeding
 * tables tracked before 1.2 are listed by replstamp.problems (and the
 * WARNING below) until the DBA tracks them, which moves them into a block.
 */
CREATE TABLE replstamp.tracked_sequence (
    seqrelid      oid PRIMARY KEY,
    relation      text NOT NULL,            -- schema-qualified, when tracked
    feeds         oid,                      -- the tracked table whose column it feeds (track()), or NULL
    state         text NOT NULL CHECK (state IN ('tracked', 'untracked')),
    replica_id    uuid,                     -- whose block it is confined to
    block_min     bigint,
    block_max     bigint,
    since         timestamptz NOT NULL DEFAULT pg_catalog.now(),
    moved_at      timestamptz               -- last moved into a block
);
REVOKE ALL ON replstamp.tracked_sequence FROM PUBLIC;
GRANT SELECT ON replstamp.tracked_sequence TO PUBLIC;

CREATE FUNCTION replstamp.sequence_block(replica_id uuid, seqtype regtype)
RETURNS int8range
LANGUAGE C STRICT IMMUTABLE
AS 'MODULE_PATHNAME', 'replstamp_sequence_block';
COMMENT ON FUNCTION replstamp.sequence_block(uuid, regtype) IS
    'the values a sequence of this type (integer or bigint) may hand out under this replica ID';

CREATE FUNCTION replstamp.track_sequence(sequence regclass)
RETURNS void
LANGUAGE C STRICT
AS 'MODULE_PATHNAME', 'replstamp_track_sequence';
COMMENT ON FUNCTION replstamp.track_sequence(regclass) IS
    'confine a sequence to this node''s block of values, moved on by every rotation';

CREATE FUNCTION replstamp.untrack_sequence(sequence regclass)
RETURNS void
LANGUAGE C STRICT
AS 'MODULE_PATHNAME', 'replstamp_untrack_sequence';
COMMENT ON FUNCTION replstamp.untrack_sequence(regclass) IS
    'stop moving a sequence on rotation; it keeps its current bounds';
-- As track(): superusers and the roles they grant it to, owners only.
REVOKE ALL ON FUNCTION replstamp.track_sequence(regclass), replstamp.untrack_sequence(regclass) FROM PUBLIC;

CREATE VIEW replstamp.tracked_sequences AS
    SELECT s.seqrelid::pg_catalog.regclass AS sequence, s.state,
           s.feeds::pg_catalog.regclass AS feeds, s.replica_id,
           s.block_min, s.block_max, l.last_value,
           s.block_max OPERATOR(pg_catalog.-) coalesce(l.last_value, s.block_min OPERATOR(pg_catalog.-) 1) AS values_left,
           s.since, s.moved_at
      FROM replstamp.tracked_sequence s
      CROSS JOIN LATERAL (
           SELECT CASE WHEN pg_catalog.has_sequence_privilege(s.seqrelid, 'SELECT,USAGE')
                       THEN pg_catalog.pg_sequence_last_value(s.seqrelid) END AS last_value) l;
GRANT SELECT ON replstamp.tracked_sequences TO PUBLIC;

DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT d.objid::pg_catalog.regclass AS seq, t.relation
               FROM replstamp.tracked t
               JOIN pg_catalog.pg_depend d
                 ON d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
                AND d.refobjid OPERATOR(pg_catalog.=) t.relid
                AND d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
                AND d.deptype IN ('a', 'i')
               JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) d.objid AND c.relkind = 'S'
              WHERE t.state = 'tracked'
    LOOP
        RAISE WARNING 'sequence % feeds tracked table % but is left as it is: it hands out values other nodes may hand out too', r.seq, r.relation
            USING HINT = pg_catalog.format('To confine it to this node''s block, run SELECT replstamp.track_sequence(%L); see replstamp.problems.', r.seq::text);
    END LOOP;
END
$$;

/*
 * replstamp.problems: every reason this node is not replicating a tracked
 * table fully, one row each; empty when all is well (issue 27).  A sync
 * warns of each row about a table, and replstamp.status counts them.
 */
CREATE VIEW replstamp.problems AS
    -- Tracked tables whose changes are not stamped, or not kept.
    SELECT 'not stamped'::text AS problem, t.relation AS object,
           'Changes of the table made on this node are not stamped: its trigger replstamp_stamp or replstamp_refuse_truncate is missing, disabled or not enabled ALWAYS.'::text AS detail,
           pg_catalog.format('Run SELECT replstamp.untrack(%L), then SELECT replstamp.track(%L, backfill => true).',
                             t.relation, t.relation) AS hint
      FROM replstamp.tracked t
     WHERE t.state = 'tracked'
       AND EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) t.relid)
       AND (SELECT pg_catalog.count(*) FROM pg_catalog.pg_trigger g
             WHERE g.tgrelid OPERATOR(pg_catalog.=) t.relid AND g.tgenabled = 'A'
               AND g.tgname IN ('replstamp_stamp', 'replstamp_refuse_truncate')) OPERATOR(pg_catalog.<>) 2
    UNION ALL
    SELECT 'unlogged', t.relation,
           'The table is unlogged: a crash empties it on this node without a stamp for the rows it loses.',
           pg_catalog.format('Run ALTER TABLE %s SET LOGGED.', t.relation)
      FROM replstamp.tracked t JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) t.relid
     WHERE t.state = 'tracked' AND c.relpersistence OPERATOR(pg_catalog.<>) 'p'
    UNION ALL
    SELECT CASE WHEN t.key_index IS NULL THEN 'no primary key' ELSE 'no row key' END, t.relation,
           CASE WHEN t.key_index IS NULL
                THEN 'The table has no primary key: its changes cannot be stamped, nor peers'' changes applied.'
                ELSE 'The table has neither a primary key nor a replica identity index: its changes cannot be stamped, nor peers'' changes applied.'
           END,
           CASE WHEN t.key_index IS NULL
                THEN pg_catalog.format('Add its primary key again (%s).',
                                       pg_catalog.array_to_string(t.key_columns, ', '))
                ELSE pg_catalog.format('Create a unique index on (%s) again and make it the replica identity with ALTER TABLE %s REPLICA IDENTITY USING INDEX.',
                                       pg_catalog.array_to_string(t.key_columns, ', '), t.relation)
           END
      FROM replstamp.tracked t JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) t.relid
     WHERE t.state = 'tracked'
       AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_index i
                        WHERE i.indrelid OPERATOR(pg_catalog.=) t.relid
                          AND (i.indisprimary OR (i.indisreplident AND c.relreplident OPERATOR(pg_catalog.=) 'i')))
    UNION ALL
    -- Dropped, and a table of that name is there again without the
    -- triggers (pg_restore --clean -t): peers' changes to it are skipped,
    -- changes made here are not stamped.
    SELECT 're-created, not tracked', t.relation,
           'The table was dropped while tracked and created again, but is not tracked: changes made here are not stamped and peers'' changes to it are skipped.',
           CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_index i
                              WHERE i.indrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(t.relation)
                                AND (i.indisprimary OR t.key_index IS NOT NULL AND i.indisreplident))
                THEN ''
                WHEN t.key_index IS NOT NULL
                THEN pg_catalog.format('Give %s a unique index on (%s) again as its replica identity (ALTER TABLE ... REPLICA IDENTITY USING INDEX); then, ',
                                       t.relation, coalesce(pg_catalog.array_to_string(t.key_columns, ', '), '...'))
                ELSE pg_catalog.format('Add its primary key again with ALTER TABLE %s ADD PRIMARY KEY (%s); then, ',
                                       t.relation, coalesce(pg_catalog.array_to_string(t.key_columns, ', '), '...'))
           END OPERATOR(pg_catalog.||)
           pg_catalog.format('if its rows as they are here should become the current version on every node, run SELECT replstamp.track(%L, backfill => true); if it is meant to stay local to this node, run SELECT replstamp.untrack(%L).',
                             t.relation, t.relation)
      FROM replstamp.tracked t
     WHERE t.state = 'dropped' AND pg_catalog.to_regclass(t.relation) IS NOT NULL
    UNION ALL
    SELECT 'backfill failed', t.relation,
           'Its existing rows were not all stamped: ' OPERATOR(pg_catalog.||) coalesce(t.backfill_error, 'unknown error'),
           pg_catalog.format('Run SELECT replstamp.track(%L, backfill => true) again.', t.relation)
      FROM replstamp.tracked t
     WHERE t.state = 'tracked' AND t.backfill = 'failed'
    UNION ALL
    -- The DDL guard itself.
    SELECT 'ddl guard disabled', e.evtname::text,
           'The event trigger that keeps tracked tables stamped is disabled.',
           pg_catalog.format('Run ALTER EVENT TRIGGER %I ENABLE ALWAYS.', e.evtname)
      FROM pg_catalog.pg_event_trigger e
     WHERE e.evtname IN ('replstamp_ddl_guard', 'replstamp_drop_guard') AND e.evtenabled OPERATOR(pg_catalog.<>) 'A'
    UNION ALL
    -- Sequences feeding tracked tables that hand out values other nodes
    -- may hand out too (tracked before 1.2, or smallint, or descending).
    SELECT 'sequence not tracked', d.objid::pg_catalog.regclass::text,
           pg_catalog.format('The sequence feeds the tracked table %s but is not confined to this node''s block: other nodes may hand out its values too, and a restored copy of this node hands out again what it gave after the backup.', t.relation),
           pg_catalog.format('Run SELECT replstamp.track_sequence(%L); to leave it as it is, SELECT replstamp.untrack_sequence(%L).',
                             d.objid::pg_catalog.regclass::text, d.objid::pg_catalog.regclass::text)
      FROM replstamp.tracked t
      JOIN pg_catalog.pg_depend d
        ON d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
       AND d.refobjid OPERATOR(pg_catalog.=) t.relid
       AND d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
       AND d.deptype IN ('a', 'i')
      JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) d.objid AND c.relkind = 'S'
     WHERE t.state = 'tracked'
       AND NOT EXISTS (SELECT 1 FROM replstamp.tracked_sequence s WHERE s.seqrelid OPERATOR(pg_catalog.=) d.objid)
    UNION ALL
    SELECT 'sequence out of its block', s.seqrelid::pg_catalog.regclass::text,
           pg_catalog.format('Its bounds (%s..%s%s) are not those of this node''s block (%s..%s): it may hand out values of other nodes'' blocks.',
                             q.seqmin, q.seqmax, CASE WHEN q.seqcycle THEN ', CYCLE' ELSE '' END, s.block_min, s.block_max),
           pg_catalog.format('Run ALTER SEQUENCE %s MINVALUE %s MAXVALUE %s NO CYCLE; to leave it as it is, SELECT replstamp.untrack_sequence(%L).',
                             s.seqrelid::pg_catalog.regclass, s.block_min, s.block_max, s.seqrelid::pg_catalog.regclass::text)
      FROM replstamp.tracked_sequence s
      JOIN pg_catalog.pg_sequence q ON q.seqrelid OPERATOR(pg_catalog.=) s.seqrelid
     WHERE s.state = 'tracked'
       AND (q.seqmin OPERATOR(pg_catalog.<) s.block_min OR q.seqmax OPERATOR(pg_catalog.>) s.block_max OR q.seqcycle)
    UNION ALL
    -- Two replica IDs minted without knowing of each other may share a
    -- block (see doc/sequences.md): one of the nodes rotates.
    SELECT 'sequence block shared', s.seqrelid::pg_catalog.regclass::text,
           pg_catalog.format('Replica ID %s, known here, has the same block of values (%s) as this node''s current ID: both may hand out the same values.',
                             k.replica_id, s.block_min OPERATOR(pg_catalog.||) '..' OPERATOR(pg_catalog.||) s.block_max),
           'Run SELECT replstamp.rotate(''sequence block shared'') on this node or on the node of that ID: a rotation moves its sequences to the new ID''s block.'
      FROM replstamp.tracked_sequence s
      JOIN pg_catalog.pg_sequence q ON q.seqrelid OPERATOR(pg_catalog.=) s.seqrelid
      JOIN (SELECT v.replica_id FROM replstamp.vector_state v
            UNION SELECT h.replica_id FROM replstamp.replica_history h) k
        ON k.replica_id OPERATOR(pg_catalog.<>) s.replica_id
     WHERE s.state = 'tracked'
       AND s.replica_id OPERATOR(pg_catalog.=) (SELECT n.replica_id FROM replstamp.node n)
       AND replstamp.sequence_block(k.replica_id, q.seqtypid) OPERATOR(pg_catalog.=)
           replstamp.sequence_block(s.replica_id, q.seqtypid)
    UNION ALL
    -- Peers this node cannot pull from.
    SELECT 'peer failing', p.name::text,
           'The last sync from this peer failed: ' OPERATOR(pg_catalog.||) p.last_error,
           'See replstamp.peers and the server log; the sync is retried.'
      FROM replstamp.peers p
     WHERE p.last_error IS NOT NULL
    UNION ALL
    SELECT 'peer ' OPERATOR(pg_catalog.||) p.status, p.name::text,
           CASE WHEN v.differences OPERATOR(pg_catalog.>) 0
                THEN pg_catalog.format('replstamp.verify() found %s rows that differ from the peer''s at the same vector (%s).',
                                       v.differences, v.verified_at)
                ELSE 'The peer''s data went back in time or it was away too long: see replstamp.peers.' END,
           CASE WHEN v.differences OPERATOR(pg_catalog.>) 0
                THEN pg_catalog.format('List them with SELECT * FROM replstamp.verify(%L), make them equal with replstamp.repair().', p.name)
                ELSE 'See the documentation of replstamp.peers.status.' END
      FROM replstamp.peers p
      LEFT JOIN replstamp.verification v ON v.peer OPERATOR(pg_catalog.=) p.name
     WHERE p.status IN ('diverged', 'stale');
GRANT SELECT ON replstamp.problems TO PUBLIC;

-- replstamp.status counts them.
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
           pg_catalog.pg_total_relation_size('replstamp.changes'::pg_catalog.regclass) AS changes_bytes,
           (SELECT p.label FROM replstamp.puller p
             ORDER BY p.last_pull_at LIMIT 1) AS oldest_puller,
           -- every reason a tracked table is not replicated fully: see
           -- replstamp.problems
           (SELECT pg_catalog.count(*) FROM replstamp.problems) AS problems
      FROM replstamp.node n;

/*
 * Columns dropped and added again (1.2).  A column dropped here is
 * remembered in replstamp.tracked.dropped_columns so that the old values
 * peers still send of it are not kept for filling in.  Once every peer
 * has been seen lacking it at the start of a sync (then everything it
 * wrote into the old column is below what it had handed out) and this
 * node holds those serials, the name is forgotten: from then on a value
 * of that name comes from a node that added the column again, and is
 * kept and filled in like the value of a new column.
 */
CREATE TABLE replstamp.dropped_column_peers (
    relation      text NOT NULL,         -- schema-qualified, as in replstamp.tracked
    column_name   text NOT NULL,         -- a name in that table's dropped_columns
    peer          text NOT NULL REFERENCES replstamp.peer ON DELETE CASCADE,
    replica_id    uuid NOT NULL,         -- the peer's current replica ID then
    serial        bigint NOT NULL,       -- what it had handed out of it then
    seen_at       timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (relation, column_name, peer)
);
REVOKE ALL ON replstamp.dropped_column_peers FROM PUBLIC;
GRANT SELECT ON replstamp.dropped_column_peers TO PUBLIC;

-- Primary keys that treat as equal values that print differently (float
-- 0 and -0, interval 1 day and 24 hours, a nondeterministic collation,
-- citext, numeric in an array): nodes identify a row by the text of its
-- key, so two spellings of one key became two rows, each node ending with
-- the other's values.  track() refuses such keys from 1.2 on.  A table
-- tracked before keeps being tracked (refusing its writes would stop the
-- application): the update names it, so that its owner can untrack it on
-- every node or change its key.
CREATE FUNCTION replstamp._inexact_key(relation regclass) RETURNS text
    LANGUAGE C STRICT STABLE AS 'MODULE_PATHNAME', 'replstamp_inexact_key';
REVOKE ALL ON FUNCTION replstamp._inexact_key(regclass) FROM PUBLIC;

DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT t.relation, replstamp._inexact_key(t.relid) AS why
               FROM replstamp.tracked t
              WHERE t.state OPERATOR(pg_catalog.=) 'tracked' AND t.relid IS NOT NULL
              ORDER BY t.relation
    LOOP
        IF r.why IS NOT NULL THEN
            RAISE WARNING 'tracked table % has a primary key whose equal values can print differently: %',
                r.relation, r.why
                USING DETAIL = 'Two nodes that write one key spelled two ways keep two rows, each with the other''s values.',
                      HINT = 'Untrack the table with replstamp.untrack() on every node, or give it another key.';
        END IF;
    END LOOP;
END
$$;

/*
 * Wake-ups (src/wakeup.c, src/watch.c).  A puller's sync worker keeps one
 * connection per peer waiting in wait_for_changes(), which returns as soon
 * as a commit there wrote changes (stamped or applied): the puller syncs
 * at once.  A wake-up only says "there is more"; the pull is still by
 * vector.  EXECUTE on it goes with EXECUTE on serve(jsonb): this update
 * grants it to every role that already pulls.
 */
CREATE FUNCTION replstamp.wait_for_changes(since bigint, timeout interval DEFAULT '60s')
    RETURNS bigint LANGUAGE c VOLATILE PARALLEL RESTRICTED
    AS 'MODULE_PATHNAME', 'replstamp_wait_for_changes';
COMMENT ON FUNCTION replstamp.wait_for_changes(bigint, interval) IS
    'for pullers: the commit counter of changes written here, as soon as it differs from since (NULL: at once), or at the timeout';
REVOKE ALL ON FUNCTION replstamp.wait_for_changes(bigint, interval) FROM PUBLIC;

-- Granted to the roles that may serve, further down (with the verify functions).

-- A peer whose waiting connection failed is tried again at next_retry_at
-- (back-off doubling from 1 s up to a minute); NULL: connected, or not
-- tried yet.  wakeups: whether a connection waits on the peer now.
ALTER TABLE replstamp.peer
    ADD COLUMN next_retry_at timestamptz,
    ADD COLUMN wakeups boolean NOT NULL DEFAULT false;

CREATE OR REPLACE VIEW replstamp.peers AS
    SELECT name, added_at, last_sync_at, changes_pulled, last_error, last_error_at,
           status, replica_id, last_error_sqlstate, last_error_change, clock_skew,
           changes_skipped, conflicts, wakeups, next_retry_at
      FROM replstamp.peer;

/*
 * Read-your-writes: the session's last committed stamp, and a wait on any
 * node until it holds it.
 */
CREATE FUNCTION replstamp.last_stamp()
    RETURNS text LANGUAGE c VOLATILE PARALLEL RESTRICTED
    AS 'MODULE_PATHNAME', 'replstamp_last_stamp';
COMMENT ON FUNCTION replstamp.last_stamp() IS
    'replica_id/serial of the last change this session stamped in a committed transaction, or NULL';

CREATE FUNCTION replstamp.wait_for(stamp text, timeout interval DEFAULT '10s')
    RETURNS boolean LANGUAGE c VOLATILE PARALLEL RESTRICTED
    AS 'MODULE_PATHNAME', 'replstamp_wait_for';
COMMENT ON FUNCTION replstamp.wait_for(text, interval) IS
    'true as soon as this node holds the change of the stamp (see last_stamp()), false at the timeout';

/*
 * Whole transactions.  Every change recorded here, stamped here or pulled,
 * carries the local transaction that recorded it (xact: its full
 * transaction ID) and its place in this node's log (usn: the serial it
 * was stamped with, or for a pulled change the last serial handed out
 * here when it was applied).  A server sends the changes a
 * puller lacks grouped by xact, the groups in the order of their last usn:
 * whole transactions, in an order no transaction precedes one it had
 * already seen.  Changes recorded before this update have neither: each
 * is its own group, sent first.
 */
ALTER TABLE replstamp.changes
    ADD COLUMN usn bigint,
    ADD COLUMN xact bigint;
COMMENT ON COLUMN replstamp.changes.usn IS
    'place in this node''s log: the serial it was stamped with here, or the last serial handed out here when it was applied';
COMMENT ON COLUMN replstamp.changes.xact IS
    'the local transaction that recorded it (full transaction ID): a peer applies its changes together';

-- Constraints on apply (constraints.c): a pulled change that would break
-- a foreign key or a second unique key is resolved by a change made here,
-- recorded with the version that lost.  orphan_deleted / orphan_updated: a
-- row whose referenced row is gone, deleted, or its key set to NULL or its
-- default (ON DELETE SET NULL / SET DEFAULT); unique_lost: of two rows
-- taking one value of a unique key, the later one, deleted.
ALTER TABLE replstamp.conflict_log DROP CONSTRAINT conflict_log_kind_check;
ALTER TABLE replstamp.conflict_log ADD CONSTRAINT conflict_log_kind_check
    CHECK (kind IN ('incoming_lost', 'overwrote', 'orphan_deleted', 'orphan_updated', 'unique_lost'));

/*
 * Verifying that two nodes agree (issue 23, src/digest.c, src/verify.c).
 *
 * Per tracked table and bucket (the top 12 bits of row_hash, 4096
 * buckets), the sum modulo 2^256 of SHA-256(relation, key, stamp) over the
 * table's live rows as row_version records them: adding a row's version
 * and subtracting the one it replaces keeps it current, in any order.  Two
 * nodes at the same vector have equal digests; verify() compares them
 * before it reads any row.  Written where row_version is written (the
 * apply, the reconciliation of local changes, a rotation's re-issue), in
 * the same transaction, one write per bucket touched.
 */
CREATE TABLE replstamp.row_digest (
    relation text NOT NULL,              -- schema-qualified, as in replstamp.tracked
    bucket   integer NOT NULL,           -- 0 .. 4095: row_hash's top 12 bits
    digest   bytea NOT NULL,             -- 32 bytes, sum mod 2^256, big-endian
    nrows    bigint NOT NULL,            -- live rows counted in it
    PRIMARY KEY (relation, bucket)
);
REVOKE ALL ON replstamp.row_digest FROM PUBLIC;

-- The rows of one bucket, read by verify when its digests differ: a
-- bucket is a range of row_hash.
CREATE INDEX row_version_bucket ON replstamp.row_version (relation, row_hash);

/*
 * Every stamp and every applied change writes the row's new version over
 * its old one.  The tombstone index covered changed_at, which every new
 * version changes, so no such update could be HOT: each inserted into the
 * hash and bucket indexes too.  It covers deleted_at now, the time of a
 * tombstone's delete and NULL for a live row, so the new version of a live
 * row changes no indexed column; a fillfactor of 90 leaves the room on the
 * page that a HOT update needs.  Prune and sync ask "tombstones older than
 * t" as deleted_at < t (src/catalog.h, TOMBSTONE_TIME).
 */
ALTER TABLE replstamp.row_version ADD COLUMN deleted_at timestamptz;
UPDATE replstamp.row_version SET deleted_at = changed_at WHERE deleted;
DROP INDEX replstamp.row_version_tombstones;
CREATE INDEX row_version_tombstones ON replstamp.row_version (deleted_at)
    WHERE deleted_at IS NOT NULL;
ALTER TABLE replstamp.row_version SET (fillfactor = 90);

-- a + b modulo 2^256, for the writes of row_digest.
CREATE FUNCTION replstamp._digest_add(a bytea, b bytea)
    RETURNS bytea LANGUAGE c STRICT IMMUTABLE
    AS 'MODULE_PATHNAME', 'replstamp_digest_add';
REVOKE ALL ON FUNCTION replstamp._digest_add(bytea, bytea) FROM PUBLIC;

CREATE FUNCTION replstamp.rebuild_digests(relation regclass DEFAULT NULL)
    RETURNS bigint LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'replstamp_rebuild_digests';
COMMENT ON FUNCTION replstamp.rebuild_digests(regclass) IS
    'recompute replstamp.row_digest from replstamp.row_version (one table, or every one); returns the rows counted';
REVOKE ALL ON FUNCTION replstamp.rebuild_digests(regclass) FROM PUBLIC;

-- Every row repair() wrote (or, dry run, would write).
CREATE TABLE replstamp.repairs (
    id           bigserial PRIMARY KEY,
    repaired_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    peer         text NOT NULL,
    relation     text NOT NULL,
    pk           jsonb NOT NULL,
    action       text NOT NULL CHECK (action IN ('insert', 'update', 'delete')),
    stamp_before text,                   -- the row's stamp here before
    stamp_peer   text,                   -- the version copied from the peer
    repaired_by  name NOT NULL DEFAULT current_user
);
REVOKE ALL ON replstamp.repairs FROM PUBLIC;

/*
 * The peer's side: called by verify() over the peer's connection, as the
 * role of its connection string.  Granted, as wait_for_changes(), to
 * every role that may pull (EXECUTE on serve(jsonb)).  They serve keys
 * and stamps, which SELECT on replstamp.changes shows anyway; content
 * (deep, repair) only of tables the role may SELECT.
 */
CREATE FUNCTION replstamp.verify_digests(request jsonb)
    RETURNS jsonb LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'replstamp_verify_digests';
COMMENT ON FUNCTION replstamp.verify_digests(jsonb) IS
    'for verify(): this node''s vector and digests of the tables requested';
REVOKE ALL ON FUNCTION replstamp.verify_digests(jsonb) FROM PUBLIC;

CREATE FUNCTION replstamp.verify_rows(request jsonb)
    RETURNS TABLE (relation text, pk jsonb, stamp text, deleted boolean, content text)
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'replstamp_verify_rows';
COMMENT ON FUNCTION replstamp.verify_rows(jsonb) IS
    'for verify(): the keys and stamps (deep: content hashes) of the buckets requested';
REVOKE ALL ON FUNCTION replstamp.verify_rows(jsonb) FROM PUBLIC;

CREATE FUNCTION replstamp.verify_images(relation text, keys jsonb[])
    RETURNS TABLE (pk jsonb, stamp text, image jsonb)
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'replstamp_verify_images';
COMMENT ON FUNCTION replstamp.verify_images(text, jsonb[]) IS
    'for repair(): the rows of these keys as they are here';
REVOKE ALL ON FUNCTION replstamp.verify_images(text, jsonb[]) FROM PUBLIC;

SELECT replstamp._copy_execute_grants('replstamp.serve(jsonb)',
    'replstamp.wait_for_changes(bigint, interval), replstamp.verify_digests(jsonb), '
    'replstamp.verify_rows(jsonb), replstamp.verify_images(text, jsonb[])');

CREATE FUNCTION replstamp.verify(peer text, tables regclass[] DEFAULT NULL, deep boolean DEFAULT false)
    RETURNS TABLE (relation text, pk jsonb, stamp_here text, stamp_there text, difference text)
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'replstamp_verify';
COMMENT ON FUNCTION replstamp.verify(text, regclass[], boolean) IS
    'every row this node and the peer disagree on, compared at one vector; nothing when they agree';
REVOKE ALL ON FUNCTION replstamp.verify(text, regclass[], boolean) FROM PUBLIC;

CREATE FUNCTION replstamp.repair(peer text, tbl regclass, keys jsonb[] DEFAULT NULL,
                                 dry_run boolean DEFAULT false)
    RETURNS TABLE (pk jsonb, action text, stamp_before text, stamp_peer text)
    LANGUAGE c VOLATILE
    AS 'MODULE_PATHNAME', 'replstamp_repair';
COMMENT ON FUNCTION replstamp.repair(text, regclass, jsonb[], boolean) IS
    'make these rows here (NULL: every row deep verify names) equal to the peer''s, as new stamped changes';
REVOKE ALL ON FUNCTION replstamp.repair(text, regclass, jsonb[], boolean) FROM PUBLIC;

-- What the last verification against each peer found: a peer whose rows
-- differ shows status diverged and how many rows.
CREATE OR REPLACE VIEW replstamp.peers AS
    SELECT p.name, p.added_at, p.last_sync_at, p.changes_pulled, p.last_error, p.last_error_at,
           CASE WHEN p.status OPERATOR(pg_catalog.=) 'ok' AND v.differences OPERATOR(pg_catalog.>) 0
                THEN 'diverged' ELSE p.status END AS status,
           p.replica_id, p.last_error_sqlstate, p.last_error_change, p.clock_skew,
           p.changes_skipped, p.conflicts, p.wakeups, p.next_retry_at,
           v.verified_at, v.differences AS rows_differing
      FROM replstamp.peer p
      LEFT JOIN replstamp.verification v ON v.peer OPERATOR(pg_catalog.=) p.name;

-- Digests of the rows row_version holds already.
SELECT replstamp.rebuild_digests();

/*
 * Joining a mesh with one call (src/mesh.c).  replstamp.mesh holds, once
 * this node joined with replstamp.join(), its name in the mesh and the
 * connection string by which the others pull from it; the others store
 * that string as their peer's.  The string may hold a password: only the
 * owner reads it (the name is readable by everybody).
 */
CREATE TABLE replstamp.mesh (
    one        boolean PRIMARY KEY DEFAULT true CHECK (one),
    name       text NOT NULL CHECK (name ~ '^[A-Za-z0-9_.-]{1,63}$'),
    conninfo   text NOT NULL,
    joined_at  timestamptz NOT NULL DEFAULT pg_catalog.now()
);
REVOKE ALL ON replstamp.mesh FROM PUBLIC;
GRANT SELECT (name, joined_at) ON replstamp.mesh TO PUBLIC;

-- On a new node: join the mesh of the node conninfo reaches.
CREATE FUNCTION replstamp."join"(conninfo text, my_conninfo text DEFAULT NULL, name text DEFAULT NULL)
    RETURNS TABLE (node text, action text)
    LANGUAGE C VOLATILE
    AS 'MODULE_PATHNAME', 'replstamp_join';
COMMENT ON FUNCTION replstamp."join"(text, text, text) IS
    'join the mesh of the node conninfo reaches: every member and this node pull from each other';

-- On a member, called by join(): add the joining node as a peer, and
-- list the members this node knows.
CREATE FUNCTION replstamp.admit(name text, conninfo text)
    RETURNS TABLE (node text, conninfo text, is_self boolean, action text)
    LANGUAGE C VOLATILE STRICT
    AS 'MODULE_PATHNAME', 'replstamp_admit';
COMMENT ON FUNCTION replstamp.admit(text, text) IS
    'for join(): add a joining node as a peer; returns this node and its peers with their connection strings';

-- Leave the mesh: every peer pulls what it lacks from here and drops this
-- node; then this node drops its peers.
CREATE FUNCTION replstamp.leave(conninfo text DEFAULT NULL)
    RETURNS TABLE (node text, action text)
    LANGUAGE C VOLATILE
    AS 'MODULE_PATHNAME', 'replstamp_leave';
COMMENT ON FUNCTION replstamp.leave(text) IS
    'leave the mesh: every peer pulls from this node, then drops it; this node drops its peers';

REVOKE ALL ON FUNCTION replstamp."join"(text, text, text), replstamp.admit(text, text),
    replstamp.leave(text) FROM PUBLIC;

/*
 * Every node this node knows of, like repadmin /replsummary: itself, its
 * peers and the nodes that pull from it (matched by replica ID), with the
 * last contact and what each side lacks of the other as of then.
 */
CREATE VIEW replstamp.cluster AS
    WITH self AS (
        SELECT coalesce((SELECT m.name FROM replstamp.mesh m),
                        CASE WHEN pg_catalog.current_setting('cluster_name')
                                  OPERATOR(pg_catalog.~) '^[A-Za-z0-9_.-]{1,63}$'
                             THEN pg_catalog.current_setting('cluster_name') END,
                        'n' OPERATOR(pg_catalog.||) n.system_identifier::text) AS name,
               n.replica_id
          FROM replstamp.node n
    ), lag AS (
        SELECT l.peer, pg_catalog.sum(l.changes_behind)::bigint AS changes
          FROM replstamp.lag l GROUP BY l.peer
    )
    SELECT s.name, s.replica_id, true AS is_self, NULL::timestamptz AS last_contact,
           NULL::bigint AS changes_to_pull, NULL::bigint AS changes_to_send,
           'this node'::text AS status, NULL::boolean AS wakeups,
           NULL::timestamptz AS next_retry_at, NULL::text AS last_error
      FROM self s
    UNION ALL
    SELECT p.name, p.replica_id, false,
           CASE WHEN u.last_pull_at OPERATOR(pg_catalog.>) p.last_sync_at OR p.last_sync_at IS NULL
                THEN u.last_pull_at ELSE p.last_sync_at END,
           coalesce(l.changes, 0), u.changes_not_held,
           CASE WHEN p.status IN ('diverged', 'stale') THEN p.status
                WHEN p.last_error IS NOT NULL THEN 'failing'
                WHEN p.last_sync_at IS NULL THEN 'new'
                WHEN u.replica_id IS NULL THEN 'not pulling'
                ELSE 'ok' END,
           p.wakeups, p.next_retry_at, p.last_error
      FROM replstamp.peer p
      LEFT JOIN replstamp.pullers u ON u.replica_id OPERATOR(pg_catalog.=) p.replica_id
      LEFT JOIN lag l ON l.peer OPERATOR(pg_catalog.=) p.name
    UNION ALL
    SELECT u.label, u.replica_id, false, u.last_pull_at, NULL, u.changes_not_held,
           'pulls only', NULL, NULL, NULL
      FROM replstamp.pullers u
     WHERE NOT EXISTS (SELECT 1 FROM replstamp.peer p
                        WHERE p.replica_id OPERATOR(pg_catalog.=) u.replica_id);
GRANT SELECT ON replstamp.cluster TO PUBLIC;

/*
 * One naming rule for the SQL names (doc/reference.md, "Names"): views
 * are plural nouns, actions verb_object with one verb for each action
 * (drop_ removes), a leading underscore marks what nobody calls, and an
 * abbreviation has one spelling.  What 1.1 named otherwise is renamed
 * here; a function users call keeps its old name for 1.2 as a deprecated
 * wrapper (CHANGELOG.md lists them).
 *
 * forget_puller() -> drop_puller(): drop_peer() already removes.  The
 * rename keeps the function (its OID, and the grants made on it); the old
 * name calls the new one, and is granted to the roles granted the new one.
 */
ALTER FUNCTION replstamp.forget_puller(uuid) RENAME TO drop_puller;
CREATE FUNCTION replstamp.forget_puller(replica_id uuid)
RETURNS boolean
LANGUAGE sql STRICT
AS 'SELECT replstamp.drop_puller($1)';
COMMENT ON FUNCTION replstamp.forget_puller(uuid) IS
    'deprecated since 1.2, removed in the next release: use replstamp.drop_puller()';
REVOKE ALL ON FUNCTION replstamp.forget_puller(uuid) FROM PUBLIC;
SELECT replstamp._copy_execute_grants('replstamp.drop_puller(uuid)', 'replstamp.forget_puller(uuid)');

/*
 * lus_holder() -> lowest_uncommitted_serial_holder(): a function's name
 * spells the lowest uncommitted serial out, as lowest_uncommitted_serial()
 * does; columns keep the one short spelling, lus (status.lus_holder_pid,
 * node.backup_lus).  replstamp.status calls the function by OID and follows.
 */
ALTER FUNCTION replstamp.lus_holder() RENAME TO lowest_uncommitted_serial_holder;
COMMENT ON FUNCTION replstamp.lowest_uncommitted_serial_holder() IS
    'the process ID of the backend whose open transaction holds the lowest uncommitted serial, or NULL';
CREATE FUNCTION replstamp.lus_holder()
RETURNS integer
LANGUAGE sql STABLE
AS 'SELECT replstamp.lowest_uncommitted_serial_holder()';
COMMENT ON FUNCTION replstamp.lus_holder() IS
    'deprecated since 1.2, removed in the next release: use replstamp.lowest_uncommitted_serial_holder()';
GRANT EXECUTE ON FUNCTION replstamp.lus_holder() TO PUBLIC;

/*
 * conflict_log -> conflict: the table behind a view is the view's noun in
 * the singular (peer/peers, puller/pullers, conflict/conflicts).  Nobody
 * but the extension reads it (replstamp.conflicts is the interface); the
 * library finds it under either name, so that a new library runs on the
 * 1.1 catalog until this update.
 */
ALTER TABLE replstamp.conflict_log RENAME TO conflict;
ALTER INDEX replstamp.conflict_log_pkey RENAME TO conflict_pkey;
ALTER INDEX replstamp.conflict_log_loser RENAME TO conflict_loser;
ALTER SEQUENCE replstamp.conflict_log_id_seq RENAME TO conflict_id_seq;
ALTER TABLE replstamp.conflict RENAME CONSTRAINT conflict_log_kind_check TO conflict_kind_check;
ALTER TABLE replstamp.conflict RENAME CONSTRAINT conflict_log_loser_op_check TO conflict_loser_op_check;

/*
 * tracked -> tracked_table: the registry behind replstamp.tracked_tables,
 * in the singular.  Users read it (backfill progress), so the old name
 * stays for 1.2 as a view of it, with the same privileges.  The library
 * finds the table under either name (catalog_sql(), src/catalog.c), so
 * that track(), untrack(), the DDL guards, backfills and prunes go on with
 * a new library on the 1.1 catalog until this update.
 */
ALTER TABLE replstamp.tracked RENAME TO tracked_table;
ALTER INDEX replstamp.tracked_pkey RENAME TO tracked_table_pkey;
ALTER TABLE replstamp.tracked_table RENAME CONSTRAINT tracked_state_check TO tracked_table_state_check;
ALTER TABLE replstamp.tracked_table RENAME CONSTRAINT tracked_backfill_check TO tracked_table_backfill_check;
CREATE VIEW replstamp.tracked AS
    SELECT * FROM replstamp.tracked_table;
COMMENT ON VIEW replstamp.tracked IS
    'deprecated since 1.2, removed in the next release: read replstamp.tracked_table';
REVOKE ALL ON replstamp.tracked FROM PUBLIC;
GRANT SELECT ON replstamp.tracked TO PUBLIC;

/*
 * TRUNCATE of a tracked table is stamped instead of refused (src/stamp.c,
 * src/rowversion.c, "TRUNCATE"): one change per table, op TRUNCATE, whose
 * row_image says which versions of the table's rows the truncating node
 * held ({"vector": {id: serial}, "also": {id: [serial]}}), and whose pk is
 * a key of its own that no row has ({"": "id/serial"}).  The trigger
 * replstamp_refuse_truncate and its function keep their 1.0 names.
 */
ALTER TABLE replstamp.changes DROP CONSTRAINT changes_op_check;
ALTER TABLE replstamp.changes ADD CONSTRAINT changes_op_check
    CHECK (op IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE'));
COMMENT ON FUNCTION replstamp.refuse_truncate() IS
    'BEFORE TRUNCATE trigger of tracked tables: stamps the TRUNCATE as one change (named when it refused)';

/*
 * Schema changes (src/ddl.c; doc/replication.md, "Schema changes"): ALTER
 * TABLE (columns, defaults, NOT NULL, constraints), RENAME of a column, a
 * constraint or an index, CREATE/DROP INDEX of a tracked table, and
 * CREATE TABLE in a tracked schema, are stamped as one change each, op
 * DDL, in the transaction that made them.  Its pk is the empty object (no
 * row has it); its row_image carries the statement, the search_path and
 * role it ran with, what it changed (touched: the names of the columns,
 * constraints and indexes whose definition it changed), what they were
 * after it (after: replstamp.table_schema()), and the vector of the node
 * that made it (seen), which tells a peer what schema changes it was made
 * after.
 */
ALTER TABLE replstamp.changes DROP CONSTRAINT changes_op_check;
ALTER TABLE replstamp.changes ADD CONSTRAINT changes_op_check
    CHECK (op IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'DDL'));

-- Schemas whose new tables are tracked (and whose CREATE TABLE replicates).
CREATE TABLE replstamp.tracked_schema (
    schema_name name PRIMARY KEY,
    since timestamptz NOT NULL DEFAULT pg_catalog.now()
);
SELECT pg_catalog.pg_extension_config_dump('replstamp.tracked_schema', '');
REVOKE ALL ON replstamp.tracked_schema FROM PUBLIC;
GRANT SELECT ON replstamp.tracked_schema TO PUBLIC;
COMMENT ON TABLE replstamp.tracked_schema IS
    'schemas where CREATE TABLE is replicated and the new table tracked (replstamp.track_schema())';

-- Every schema change made or applied here: what a concurrent one is checked against.
CREATE TABLE replstamp.schema_change (
    replica_id uuid NOT NULL,
    serial bigint NOT NULL,
    relation text NOT NULL,
    origin boolean NOT NULL,
    outcome text NOT NULL CHECK (outcome IN ('made', 'applied', 'found_done')),
    statement text NOT NULL,
    touched jsonb NOT NULL,
    after jsonb NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    -- The schema change's own id, which its re-issued copies keep (NULL:
    -- made by a build that gave none): a copy of one held here is not run.
    id uuid UNIQUE,
    -- The stamps it had before a rotation re-issued it, {replica_id: serial}:
    -- a change whose node had seen one of them had seen it.
    reissued_from jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (replica_id, serial)
);
CREATE INDEX schema_change_relation ON replstamp.schema_change (relation);
REVOKE ALL ON replstamp.schema_change FROM PUBLIC;
GRANT SELECT ON replstamp.schema_change TO PUBLIC;
COMMENT ON TABLE replstamp.schema_change IS
    'schema changes made here (made) or pulled and applied (applied), or found done already (found_done)';

-- The definition of a table's columns, constraints and indexes, by name.
CREATE FUNCTION replstamp.table_schema(tbl regclass) RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
SELECT coalesce(jsonb_object_agg(k, v), '{}') FROM (
    SELECT 'column ' || a.attname AS k,
           format_type(a.atttypid, a.atttypmod)
           || coalesce((SELECT ' collate ' || quote_ident(co.collname) FROM pg_collation co, pg_type ty
                         WHERE co.oid = a.attcollation AND ty.oid = a.atttypid
                           AND ty.typcollation <> a.attcollation), '')
           || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
           || CASE a.attidentity WHEN 'a' THEN ' generated always as identity'
                                 WHEN 'd' THEN ' generated by default as identity' ELSE '' END
           || CASE WHEN a.attgenerated <> '' THEN ' generated always as ' ELSE '' END
           || coalesce(CASE WHEN a.attgenerated = '' THEN ' default ' ELSE '' END
                       || pg_get_expr(d.adbin, d.adrelid), '') AS v
      FROM pg_attribute a
      LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
     WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped
    UNION ALL
    SELECT 'constraint ' || c.conname, pg_get_constraintdef(c.oid)
      FROM pg_constraint c WHERE c.conrelid = tbl AND c.contype <> 'n'
    UNION ALL
    SELECT 'index ' || i.relname, pg_get_indexdef(x.indexrelid)
      FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid WHERE x.indrelid = tbl
) s
$$;
GRANT EXECUTE ON FUNCTION replstamp.table_schema(regclass) TO PUBLIC;
COMMENT ON FUNCTION replstamp.table_schema(regclass) IS
    'the definitions of a table''s columns, constraints and indexes, by name: what schema changes and verify() compare';

-- The names whose definitions differ between two table_schema() results.
CREATE FUNCTION replstamp._schema_diff(a jsonb, b jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
SELECT coalesce(jsonb_agg(k ORDER BY k), '[]')
  FROM (SELECT jsonb_object_keys(a) UNION SELECT jsonb_object_keys(b)) u(k)
 WHERE a -> k IS DISTINCT FROM b -> k
$$;

-- The definitions of the names keys in d (null for one d lacks).
CREATE FUNCTION replstamp._schema_part(d jsonb, keys jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
SELECT coalesce(jsonb_object_agg(k, coalesce(d -> k, 'null'::jsonb)), '{}')
  FROM jsonb_array_elements_text(keys) k
$$;

/*
 * The first schema change held here on relation that a change made after
 * seen (the vector of its node) did not know of, under its stamp or under
 * one it had before a rotation re-issued it, and that changed one of the
 * names it touched to something else than it did.  (Positional
 * parameters: touched and after are also columns of schema_change.)
 */
CREATE FUNCTION replstamp._schema_conflict(relation text, seen jsonb, touched jsonb, after jsonb,
                                           OUT replica_id uuid, OUT serial bigint, OUT statement text)
RETURNS SETOF record
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
SELECT y.replica_id, y.serial, y.statement
  FROM replstamp.schema_change y,
       LATERAL (SELECT coalesce(jsonb_agg(DISTINCT k), '[]') AS keys
                  FROM (SELECT jsonb_array_elements_text($3)
                        UNION SELECT jsonb_array_elements_text(y.touched)) s(k)) u
 WHERE y.relation = $1
   AND coalesce(($2 ->> y.replica_id::text)::bigint, 0) < y.serial
   AND NOT EXISTS (SELECT 1 FROM jsonb_each_text(y.reissued_from) r
                    WHERE coalesce(($2 ->> r.key)::bigint, 0) >= r.value::bigint)
   AND y.touched ?| ARRAY(SELECT jsonb_array_elements_text($3))
   AND replstamp._schema_part(y.after, u.keys) IS DISTINCT FROM replstamp._schema_part($4, u.keys)
 ORDER BY y.recorded_at, y.replica_id, y.serial
 LIMIT 1
$$;
REVOKE ALL ON FUNCTION replstamp._schema_diff(jsonb, jsonb), replstamp._schema_part(jsonb, jsonb),
    replstamp._schema_conflict(text, jsonb, jsonb, jsonb) FROM PUBLIC;

CREATE FUNCTION replstamp.track_schema(schema_name name) RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
SELECT quote_ident(schema_name)::regnamespace;   -- refuses a schema that does not exist
INSERT INTO replstamp.tracked_schema (schema_name) VALUES (schema_name)
    ON CONFLICT ON CONSTRAINT tracked_schema_pkey DO NOTHING;
$$;
CREATE FUNCTION replstamp.untrack_schema(schema_name name) RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
DELETE FROM replstamp.tracked_schema t WHERE t.schema_name = untrack_schema.schema_name;
$$;
REVOKE ALL ON FUNCTION replstamp.track_schema(name), replstamp.untrack_schema(name) FROM PUBLIC;
COMMENT ON FUNCTION replstamp.track_schema(name) IS
    'from now on, a table created in the schema is tracked, and its CREATE TABLE replicated';
COMMENT ON FUNCTION replstamp.untrack_schema(name) IS
    'tables created in the schema from now on are neither tracked nor replicated';

DROP FUNCTION replstamp._copy_execute_grants(regprocedure, text);

/*
 * Row images in the log are stored compressed from 128 bytes on
 * (changelog.c: heap insertion itself compresses only tuples of about
 * 2 kB).  lz4 where the server was built with it, being fast enough for
 * the write path; else default_toast_compression.
 */
DO $$
BEGIN
    ALTER TABLE replstamp.changes ALTER COLUMN row_image SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'this server has no lz4: row images in replstamp.changes are compressed with default_toast_compression';
END
$$;

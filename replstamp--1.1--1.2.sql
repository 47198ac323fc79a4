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

DO $grant$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT DISTINCT a.grantee::pg_catalog.regrole AS role
               FROM pg_catalog.pg_proc p,
                    LATERAL pg_catalog.aclexplode(p.proacl) a
              WHERE p.oid OPERATOR(pg_catalog.=) 'replstamp.serve(jsonb)'::pg_catalog.regprocedure
                AND a.privilege_type OPERATOR(pg_catalog.=) 'EXECUTE'
                AND a.grantee OPERATOR(pg_catalog.<>) 0
                AND a.grantee OPERATOR(pg_catalog.<>) p.proowner
    LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION replstamp.wait_for_changes(bigint, interval) TO %s',
                                  r.role);
    END LOOP;
END
$grant$;

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

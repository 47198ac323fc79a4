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

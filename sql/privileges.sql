-- Privileges: ordinary users get their writes stamped but cannot forge
-- stamps, change the state, or call what changes state.  A hostile role's
-- look-alike objects on the search_path are never used.
\set VERBOSITY terse

-- An upgraded cluster lets everybody create objects in public.
GRANT CREATE ON SCHEMA public TO PUBLIC;
CREATE ROLE regress_hostile;
CREATE ROLE regress_writer;
CREATE TABLE planted_calls (what text);
GRANT INSERT ON planted_calls TO PUBLIC;

SET ROLE regress_hostile;
-- Look-alikes of what replstamp might call by name.
CREATE FUNCTION public.gen_random_uuid() RETURNS uuid LANGUAGE sql
    AS $$ INSERT INTO public.planted_calls VALUES ('gen_random_uuid'); SELECT '00000000-0000-0000-0000-000000000000'::uuid $$;
CREATE FUNCTION public.now() RETURNS timestamptz LANGUAGE sql
    AS $$ INSERT INTO public.planted_calls VALUES ('now'); SELECT 'epoch'::timestamptz $$;
CREATE FUNCTION public.nextval(regclass) RETURNS bigint LANGUAGE sql
    AS $$ INSERT INTO public.planted_calls VALUES ('nextval'); SELECT 1::bigint $$;
CREATE FUNCTION public.to_jsonb(anyelement) RETURNS jsonb LANGUAGE sql
    AS $$ INSERT INTO public.planted_calls VALUES ('to_jsonb'); SELECT '{}'::jsonb $$;
CREATE FUNCTION public.hostile_eq(text, text) RETURNS boolean LANGUAGE sql
    AS $$ INSERT INTO public.planted_calls VALUES ('= text'); SELECT true $$;
CREATE OPERATOR public.= (LEFTARG = text, RIGHTARG = text, FUNCTION = public.hostile_eq);
CREATE FUNCTION public.hostile_uuid_eq(uuid, uuid) RETURNS boolean LANGUAGE sql
    AS $$ INSERT INTO public.planted_calls VALUES ('= uuid'); SELECT true $$;
CREATE OPERATOR public.= (LEFTARG = uuid, RIGHTARG = uuid, FUNCTION = public.hostile_uuid_eq);
CREATE TABLE public.changes (x int);     -- a look-alike of replstamp.changes
CREATE TABLE public.node (x int);
RESET ROLE;

-- Install with public first on the path, as a careless superuser would.
-- Nothing replstamp does from here on may call a planted object.
SET search_path = public, pg_catalog;
CREATE EXTENSION replstamp;
CREATE TABLE accounts (id int PRIMARY KEY, balance int);
SELECT replstamp.track('accounts');
GRANT SELECT, INSERT, UPDATE, DELETE ON accounts TO regress_writer;

-- The writer's changes are stamped with the node's real ID and serials.
SET ROLE regress_writer;
SET search_path = public, pg_catalog;
INSERT INTO accounts VALUES (1, 100), (2, 200);
UPDATE accounts SET balance = balance + 1 WHERE id = 1;
DELETE FROM accounts WHERE id = 2;
RESET ROLE;
SELECT what, count(*) AS planted_calls FROM planted_calls GROUP BY what;
SET search_path = pg_catalog;
SELECT count(*) AS stamps,
       bool_and(replica_id = (SELECT replica_id FROM replstamp.node)) AS real_id,
       count(DISTINCT serial) AS serials,
       bool_and(changed_at > 'epoch') AS real_time
  FROM replstamp.changes;
SELECT replstamp.lowest_uncommitted_serial() <= replstamp.next_serial() AS lus_ok;
SELECT state FROM replstamp.status;
SET ROLE regress_writer;
-- The change log shows rows of every tracked table: not for everybody.
SELECT count(*) FROM replstamp.changes;
-- Nor do the conflicts, with their copies of the versions that lost.
SELECT count(*) FROM replstamp.conflicts;
SELECT loser_image FROM replstamp.conflict;

-- ... but cannot forge or remove stamps, or touch the state.
INSERT INTO replstamp.changes VALUES (gen_random_uuid(), 1, 'public.accounts', 'INSERT', '{}', NULL, now());
UPDATE replstamp.changes SET serial = serial + 1000;
DELETE FROM replstamp.changes;
UPDATE replstamp.node SET state = 'backup';
UPDATE replstamp.node SET replica_id = gen_random_uuid();
DELETE FROM replstamp.node;
INSERT INTO replstamp.replica_history (replica_id, minted_reason) VALUES (gen_random_uuid(), 'forged');
INSERT INTO replstamp.vector_state VALUES (gen_random_uuid(), 1000000);
SELECT nextval('replstamp.serial_seq');
SELECT setval('replstamp.serial_seq', 1);
SELECT replstamp.track('accounts');
SELECT replstamp.untrack('accounts');
-- Reading is allowed.
SELECT state FROM replstamp.node;
RESET ROLE;
RESET search_path;

-- A table owner who is not a superuser cannot track even their own table
-- unless granted; with the grant, track() checks ownership.
CREATE TABLE owned_by_superuser (id int PRIMARY KEY);
GRANT EXECUTE ON FUNCTION replstamp.track(regclass, boolean, regclass, boolean) TO regress_writer;
SET ROLE regress_writer;
SELECT replstamp.track('owned_by_superuser');
SELECT replstamp.track('owned_by_superuser', backfill => true);
RESET ROLE;
REVOKE EXECUTE ON FUNCTION replstamp.track(regclass, boolean, regclass, boolean) FROM regress_writer;
-- Nor with backfill without the grant, even their own table.
CREATE TABLE writer_owned (id int PRIMARY KEY);
ALTER TABLE writer_owned OWNER TO regress_writer;
SET ROLE regress_writer;
SELECT replstamp.track('writer_owned', backfill => true);
RESET ROLE;
-- Nothing was registered or installed.
SELECT count(*) AS registered FROM replstamp.tracked_table
 WHERE relation IN ('public.owned_by_superuser', 'public.writer_owned');
SELECT count(*) AS triggers FROM pg_trigger
 WHERE tgrelid IN ('owned_by_superuser'::regclass, 'writer_owned'::regclass);

-- From the catalog, for every function of the extension (including those
-- later parts add): SECURITY DEFINER ones pin search_path, and PUBLIC may
-- execute only the read-only ones on this list.
SELECT p.oid::regprocedure AS secdef_without_search_path
  FROM pg_proc p JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid
 WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
   AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'replstamp')
   AND p.prosecdef
   AND NOT EXISTS (SELECT 1 FROM unnest(p.proconfig) c WHERE c LIKE 'search_path=%');
SELECT p.oid::regprocedure AS public_may_execute
  FROM pg_proc p JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid
 WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
   AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'replstamp')
   AND has_function_privilege('public', p.oid, 'EXECUTE')
   AND p.oid::regprocedure::text NOT IN (
       'replstamp.lowest_uncommitted_serial()',
       'replstamp.next_serial()',
       'replstamp.lus_holder()',                  -- deprecated name of the next one
       'replstamp.lowest_uncommitted_serial_holder()',
       'replstamp.row_hash(text,jsonb)',
       'replstamp.sequence_block(uuid,regtype)',  -- a function of its arguments
       'replstamp.last_stamp()',                  -- read-your-writes, for every client
       'replstamp.wait_for(text,interval)',
       'replstamp.table_schema(regclass)')        -- what the catalogs show anyone
 ORDER BY 1;
-- Tables, sequences and views: PUBLIC may read, never write.
SELECT c.oid::regclass AS public_may_write
  FROM pg_class c JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = c.oid
 WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
   AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'replstamp')
   AND c.relkind IN ('r', 'v', 'S')
   AND (has_table_privilege('public', c.oid, 'INSERT') OR
        has_table_privilege('public', c.oid, 'UPDATE') OR
        has_table_privilege('public', c.oid, 'DELETE') OR
        has_table_privilege('public', c.oid, 'TRUNCATE') OR
        (c.relkind = 'S' AND has_sequence_privilege('public', c.oid, 'USAGE')));

DROP TABLE accounts, owned_by_superuser, planted_calls;
DROP EXTENSION replstamp;
DROP OWNED BY regress_hostile, regress_writer;
DROP ROLE regress_hostile, regress_writer;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

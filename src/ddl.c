/*-------------------------------------------------------------------------
 *
 * ddl.c
 *		Schema changes replicated as stamped changes.  A ProcessUtility hook
 *		sees ALTER TABLE (columns, defaults, NOT NULL, constraints), RENAME
 *		of a column, constraint or index, CREATE INDEX and DROP INDEX of a
 *		tracked table, and CREATE TABLE in a tracked schema; once the
 *		statement has run, it records one change, op DDL, in the same
 *		transaction, with a serial like any change: the statement is then
 *		ordered with the node's row changes (a row written after it, in the
 *		same transaction or a later one, comes after it in every peer's
 *		apply).  A peer runs the statement at that place, as the table's
 *		owner (for CREATE TABLE, as the role that created it), in a
 *		security-restricted operation, with the search_path it ran with.
 *
 * What a change says besides its statement: the definitions, by name, of
 * the columns, constraints and indexes it changed (touched) as they were
 * after it (after: replstamp.table_schema()), and the vector of its node
 * (seen).  A peer refuses a change made concurrently with a schema change
 * it holds (one the change's node had not seen) that changed one of the
 * same names to something else: whichever order each node applies them in,
 * they would not end alike.  It takes a change whose statement fails as
 * done already when the names it touched are here as it left them (the
 * same ADD COLUMN run on two nodes), and refuses one that leaves them
 * otherwise than on its origin.  Refusing stops the sync there, visibly
 * (replstamp.peer, replstamp.status), until the schema is made the same
 * by hand and the change skipped or found done.  Every schema change made
 * or applied is kept in replstamp.schema_change for that check.
 *
 * A rotation re-issues a schema change under a new stamp like any change
 * (identity.c), and ddl_reissue() moves its record here to that stamp.  A
 * schema change has an id, which its copies keep: a node that holds it
 * under another stamp (the original, or another copy) takes a copy as held
 * and never runs the statement twice.  A copy of a restored node keeps its
 * old stamps (reissued_from), and a node that had seen one of them had seen
 * the schema change.
 *
 * Nothing here runs for DDL a peer's change runs (applying), nor with
 * replstamp.replicate_ddl off (superusers only: the rolling, by-hand
 * schema changes of doc/operations.md).
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/index.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "nodes/parsenodes.h"
#include "parser/parser.h"
#include "parser/scansup.h"
#include "storage/lmgr.h"
#include "tcop/utility.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/regproc.h"
#include "utils/resowner.h"
#include "utils/syscache.h"

#include "catalog.h"
#include "changelog.h"
#include "compat.h"
#include "dbaccess.h"
#include "ddl.h"
#include "errors.h"
#include "identity.h"
#include "serial.h"
#include "wakeup.h"

extern Datum replstamp_track(PG_FUNCTION_ARGS);

static bool replicate_ddl = true;
static ProcessUtility_hook_type prev_ProcessUtility = NULL;

/* ddl_apply() is running a peer's statement: it is not captured again. */
static bool applying = false;

/* What the hook learnt before the statement ran. */
typedef struct DdlTarget
{
	Oid			relid;			/* the tracked table; for CREATE TABLE, one of
								 * that name that existed before */
	bool		create;			/* CREATE TABLE in a tracked schema */
	bool		track;			/* and the new table is to be tracked */
	RangeVar   *newrel;			/* CREATE TABLE: its schema-qualified name */
	Jsonb	   *before;			/* replstamp.table_schema() before */
} DdlTarget;

static char *member_text(Jsonb *image, const char *key, const char *peer);

#define DDL_HINT \
	"Make the table the same on every node by hand (with replstamp.replicate_ddl off), then run replstamp.skip() with the change named above on each node whose sync stops at it; a change whose effect is found here already is passed over by the next sync."

/* ---------------------------------------------------------------------
 * SQL run as the extension's owner
 * ---------------------------------------------------------------------
 */

/* The one jsonb a query returns (NULL for none), in the caller's context. */
static Jsonb *
query_jsonb(const char *sql, int nargs, Oid *types, Datum *values, const char *nulls)
{
	ReplstampOwnerContext ctx;
	MemoryContext caller = CurrentMemoryContext;
	Jsonb	   *result = NULL;

	dbaccess_become_owner(&ctx);
	SPI_connect();
	dbaccess_spi_exec(sql, nargs, types, values, nulls, SPI_OK_SELECT);
	if (SPI_processed == 1)
	{
		bool		isnull;
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		if (!isnull)
		{
			MemoryContext old = MemoryContextSwitchTo(caller);

			result = DatumGetJsonbPCopy(d);
			MemoryContextSwitchTo(old);
		}
	}
	SPI_finish();
	dbaccess_restore_user(&ctx);
	return result;
}

/* The one boolean a query returns (false for none or NULL). */
static bool
query_bool(const char *sql, int nargs, Oid *types, Datum *values)
{
	ReplstampOwnerContext ctx;
	bool		result = false;

	dbaccess_become_owner(&ctx);
	SPI_connect();
	dbaccess_spi_exec(sql, nargs, types, values, NULL, SPI_OK_SELECT);
	if (SPI_processed == 1)
	{
		bool		isnull;
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		result = !isnull && DatumGetBool(d);
	}
	SPI_finish();
	dbaccess_restore_user(&ctx);
	return result;
}

/* The key of every schema change: the empty object, which no row has. */
Jsonb *
ddl_key(void)
{
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum("{}")));
}

static bool
table_tracked(Oid relid)
{
	Oid			types[1] = {OIDOID};
	Datum		values[1] = {ObjectIdGetDatum(relid)};

	if (!OidIsValid(relid))
		return false;
	return query_bool("SELECT EXISTS (SELECT 1 FROM replstamp.tracked_table "
					  "WHERE relid OPERATOR(pg_catalog.=) $1 AND state OPERATOR(pg_catalog.=) 'tracked')",
					  1, types, values);
}

static bool
schema_tracked(Oid nsp)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1];
	char	   *name = get_namespace_name(nsp);

	if (name == NULL)
		return false;
	values[0] = CStringGetTextDatum(name);
	return query_bool("SELECT EXISTS (SELECT 1 FROM replstamp.tracked_schema "
					  "WHERE schema_name OPERATOR(pg_catalog.=) $1::pg_catalog.name)",
					  1, types, values);
}

/* replstamp.table_schema() of a table, or {} for none. */
static Jsonb *
describe(Oid relid)
{
	Oid			types[1] = {OIDOID};
	Datum		values[1] = {ObjectIdGetDatum(relid)};

	if (!OidIsValid(relid))
		return ddl_key();
	return query_jsonb("SELECT replstamp.table_schema($1::pg_catalog.regclass)",
					   1, types, values, NULL);
}

/* Do a and b define the names keys alike? */
static bool
same_parts(Jsonb *a, Jsonb *b, Jsonb *keys)
{
	Oid			types[3] = {JSONBOID, JSONBOID, JSONBOID};
	Datum		values[3] = {JsonbPGetDatum(a), JsonbPGetDatum(b), JsonbPGetDatum(keys)};

	return query_bool("SELECT replstamp._schema_part($1, $3) OPERATOR(pg_catalog.=) replstamp._schema_part($2, $3)",
					  3, types, values);
}

/* ---------------------------------------------------------------------
 * Which statements are replicated
 * ---------------------------------------------------------------------
 */

/* Is an ALTER TABLE subcommand one that is replicated? */
static bool
replicated_subcommand(AlterTableType t)
{
	switch (t)
	{
		case AT_AddColumn:
		case AT_DropColumn:
		case AT_ColumnDefault:
		case AT_DropNotNull:
		case AT_SetNotNull:
		case AT_AlterColumnType:
		case AT_AddConstraint:
		case AT_DropConstraint:
		case AT_ValidateConstraint:
		case AT_AlterConstraint:
			return true;
		default:
			return false;
	}
}

/* The table of the index rv names, or InvalidOid. */
static Oid
index_table(RangeVar *rv)
{
	Oid			idx = RangeVarGetRelid(rv, NoLock, true);
	char		kind = OidIsValid(idx) ? get_rel_relkind(idx) : '\0';

	if (kind != RELKIND_INDEX && kind != RELKIND_PARTITIONED_INDEX)
		return InvalidOid;
	return IndexGetRelation(idx, true);
}

static char *
qualified_name(Oid relid)
{
	return quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
									  get_rel_name(relid));
}

pg_attribute_noreturn()
static void
refuse_concurrently(const char *what, Oid relid)
{
	ereport(ERROR,
			(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
			 errmsg("cannot replicate %s CONCURRENTLY of tracked table %s", what, qualified_name(relid)),
			 errdetail("A peer applies a schema change in the transaction of the changes around it, where CONCURRENTLY cannot run."),
			 errhint("Leave out CONCURRENTLY, or run the statement on every node with replstamp.replicate_ddl off.")));
}

/*
 * Before a utility statement runs: is it a schema change to replicate?
 * Then *t says of which table, and what the table was like.  Refuses
 * what cannot be replicated faithfully.  Without tracked, only the kind of
 * statement is checked (for a statement a peer sent).
 */
static bool
ddl_classify(Node *stmt, DdlTarget *t, bool tracked)
{
	ListCell   *lc;

	memset(t, 0, sizeof(*t));
	switch (nodeTag(stmt))
	{
		case T_AlterTableStmt:
			{
				AlterTableStmt *a = (AlterTableStmt *) stmt;
				int			replicated = 0;
				int			other = 0;

				if (a->objtype != OBJECT_TABLE)
					return false;
				foreach(lc, a->cmds)
				{
					if (replicated_subcommand(lfirst_node(AlterTableCmd, lc)->subtype))
						replicated++;
					else
						other++;
				}
				if (replicated == 0)
					return false;
				if (!tracked)
					return other == 0;
				t->relid = RangeVarGetRelid(a->relation, NoLock, true);
				if (!table_tracked(t->relid))
					return false;
				if (other > 0)
					ereport(ERROR,
							(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
							 errmsg("cannot replicate an ALTER TABLE of tracked table %s that also changes what is not replicated",
									qualified_name(t->relid)),
							 errdetail("Columns, defaults, NOT NULL and constraints are replicated; the other subcommands of ALTER TABLE are not."),
							 errhint("Run them as separate ALTER TABLE statements.")));
				break;
			}
		case T_IndexStmt:
			{
				IndexStmt  *i = (IndexStmt *) stmt;

				if (!tracked)
					return !i->concurrent;
				t->relid = RangeVarGetRelid(i->relation, NoLock, true);
				if (!table_tracked(t->relid))
					return false;
				if (i->concurrent)
					refuse_concurrently("CREATE INDEX", t->relid);
				break;
			}
		case T_DropStmt:
			{
				DropStmt   *d = (DropStmt *) stmt;
				bool		others = false;

				if (d->removeType != OBJECT_INDEX)
					return false;
				if (!tracked)
					return !d->concurrent;
				foreach(lc, d->objects)
				{
					Oid			tbl = index_table(makeRangeVarFromNameList(lfirst(lc)));

					if (!OidIsValid(tbl))
						continue;
					if (!table_tracked(tbl) || (OidIsValid(t->relid) && t->relid != tbl))
						others = true;
					if (table_tracked(tbl))
						t->relid = tbl;
				}
				if (!OidIsValid(t->relid))
					return false;
				if (others)
					ereport(ERROR,
							(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
							 errmsg("cannot replicate a DROP INDEX of indexes of several tables"),
							 errdetail("An index of tracked table %s is dropped with indexes of other tables.",
									   qualified_name(t->relid)),
							 errhint("Drop the indexes of each table in a statement of its own.")));
				if (d->concurrent)
					refuse_concurrently("DROP INDEX", t->relid);
				break;
			}
		case T_RenameStmt:
			{
				RenameStmt *r = (RenameStmt *) stmt;

				if ((r->renameType == OBJECT_COLUMN || r->renameType == OBJECT_TABCONSTRAINT) &&
					r->relationType == OBJECT_TABLE)
				{
					if (!tracked)
						return true;
					t->relid = RangeVarGetRelid(r->relation, NoLock, true);
				}
				else if (r->renameType == OBJECT_INDEX)
				{
					if (!tracked)
						return true;
					t->relid = index_table(r->relation);
				}
				else
					return false;
				if (!table_tracked(t->relid))
					return false;
				break;
			}
		case T_CreateStmt:
			{
				CreateStmt *c = (CreateStmt *) stmt;
				Oid			nsp;

				if (!tracked)
					return true;
				if (c->relation->relpersistence == RELPERSISTENCE_TEMP)
					return false;
				nsp = RangeVarGetCreationNamespace(c->relation);
				if (isAnyTempNamespace(nsp) || !schema_tracked(nsp))
					return false;
				t->create = true;
				/* A partition is covered by its partitioned table. */
				t->track = c->partbound == NULL;
				t->newrel = makeRangeVar(get_namespace_name(nsp), pstrdup(c->relation->relname), -1);
				t->relid = get_relname_relid(c->relation->relname, nsp);
				break;
			}
		default:
			return false;
	}
	t->before = describe(t->relid);
	return true;
}

/* ---------------------------------------------------------------------
 * Capture
 * ---------------------------------------------------------------------
 */

/* The text of the one statement pstmt is, out of the query string. */
static char *
statement_text(PlannedStmt *pstmt, const char *query)
{
	int			loc = pstmt->stmt_location;
	int			len = pstmt->stmt_len;

	if (loc < 0)
		loc = 0;
	if (len <= 0)
		len = strlen(query + loc);
	/* What follows the previous statement's semicolon. */
	while (len > 0 && scanner_isspace(query[loc]))
	{
		loc++;
		len--;
	}
	return pnstrdup(query + loc, len);
}

/*
 * Keep a schema change made or applied here, with its id (NULL for none)
 * and the stamps it had before re-issues.
 */
static void
record_schema_change(Change *change, bool origin, const char *outcome, const char *sql,
					 Jsonb *touched, Jsonb *after, const char *id, Jsonb *reissued_from)
{
	ReplstampOwnerContext ctx;
	Oid			types[10] = {UUIDOID, INT8OID, TEXTOID, BOOLOID, TEXTOID, TEXTOID, JSONBOID, JSONBOID,
	TEXTOID, JSONBOID};
	Datum		values[10];
	char		nulls[10] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};

	values[0] = UUIDPGetDatum(&change->replica_id);
	values[1] = Int64GetDatum(change->serial);
	values[2] = PointerGetDatum(change->relation);
	values[3] = BoolGetDatum(origin);
	values[4] = CStringGetTextDatum(outcome);
	values[5] = CStringGetTextDatum(sql);
	values[6] = JsonbPGetDatum(touched);
	values[7] = JsonbPGetDatum(after);
	if (id != NULL)
		values[8] = CStringGetTextDatum(id);
	else
		nulls[8] = 'n';
	values[9] = JsonbPGetDatum(reissued_from != NULL ? reissued_from : ddl_key());
	dbaccess_become_owner(&ctx);
	SPI_connect();
	dbaccess_spi_exec("INSERT INTO replstamp.schema_change "
					  "(replica_id, serial, relation, origin, outcome, statement, touched, after, "
					  "id, reissued_from) "
					  "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::pg_catalog.uuid, $10)",
					  10, types, values, nulls, SPI_OK_INSERT);
	SPI_finish();
	dbaccess_restore_user(&ctx);
}

/*
 * After the statement ran: stamp it, unless it changed nothing here (IF
 * NOT EXISTS of what exists).  A table created in a tracked schema is
 * tracked first.
 */
static void
ddl_record(const char *sql, DdlTarget *t)
{
	const ReplstampCatalog *cat = catalog_get(false);
	Oid			relid = t->relid;
	Jsonb	   *after;
	Jsonb	   *touched;
	Change		change;
	Oid			dtypes[2] = {JSONBOID, JSONBOID};
	Datum		dvalues[2];
	Oid			types[9] = {TEXTOID, TEXTOID, TEXTOID, BOOLOID, BOOLOID, JSONBOID, JSONBOID,
	UUIDOID, INT8OID};
	Datum		values[9];

	if (t->create)
		relid = RangeVarGetRelid(t->newrel, NoLock, true);
	if (!OidIsValid(relid))
		return;
	after = describe(relid);
	dvalues[0] = JsonbPGetDatum(t->before);
	dvalues[1] = JsonbPGetDatum(after);
	touched = query_jsonb("SELECT replstamp._schema_diff($1, $2)", 2, dtypes, dvalues, NULL);
	if (JB_ROOT_COUNT(touched) == 0)
		return;
	if (t->create && t->track && !table_tracked(relid))
		(void) DirectFunctionCall1(replstamp_track, ObjectIdGetDatum(relid));

	/* A restored copy must not stamp with its old ID. */
	identity_ensure_verified();
	memset(&change, 0, sizeof(change));
	change.op = 'S';
	change.relation = cstring_to_text(qualified_name(relid));
	change.changed_at = serial_stamp_time();
	change.applied = false;
	change.serial = serial_take(cat->serial_seq);
	change.replica_id = catalog_node()->replica_id;
	change.pk = ddl_key();

	values[0] = CStringGetTextDatum(sql);
	values[1] = CStringGetTextDatum(GetConfigOption("search_path", false, false));
	values[2] = CStringGetTextDatum(GetUserNameFromId(GetUserId(), false));
	values[3] = BoolGetDatum(t->create);
	values[4] = BoolGetDatum(t->track);
	values[5] = JsonbPGetDatum(touched);
	values[6] = JsonbPGetDatum(after);
	values[7] = UUIDPGetDatum(&change.replica_id);
	values[8] = Int64GetDatum(change.serial - 1);
	change.image = query_jsonb("SELECT pg_catalog.jsonb_build_object('sql', $1, 'search_path', $2, "
							   "'role', $3, 'create', $4, 'track', $5, 'touched', $6, 'after', $7, "
							   "'id', pg_catalog.gen_random_uuid(), "
							   "'seen', coalesce((SELECT pg_catalog.jsonb_object_agg(v.replica_id::text, v.serial) "
							   "  FROM replstamp.vector v WHERE v.replica_id OPERATOR(pg_catalog.<>) $8), '{}') "
							   "  OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object($8::text, $9))",
							   9, types, values, NULL);
	changelog_append(cat, &change);
	record_schema_change(&change, true, "made", sql, touched, after,
						 member_text(change.image, "id", NULL), NULL);
	wakeup_stamped(&change.replica_id, change.serial);
}

static void
ddl_process_utility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
					ProcessUtilityContext context, ParamListInfo params,
					QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	DdlTarget	target;
	bool		capture = false;
	char	   *sql = NULL;

	if (replicate_ddl && !applying && !creating_extension &&
		context != PROCESS_UTILITY_SUBCOMMAND && queryString != NULL &&
		(IsA(pstmt->utilityStmt, AlterTableStmt) || IsA(pstmt->utilityStmt, IndexStmt) ||
		 IsA(pstmt->utilityStmt, DropStmt) || IsA(pstmt->utilityStmt, RenameStmt) ||
		 IsA(pstmt->utilityStmt, CreateStmt)) &&
		IsTransactionState())
	{
		const ReplstampCatalog *cat = catalog_get(true);

		if (cat != NULL && cat->v12 &&
			OidIsValid(get_relname_relid("schema_change", cat->schema)) &&
			ddl_classify(pstmt->utilityStmt, &target, true))
		{
			capture = true;
			sql = statement_text(pstmt, queryString);
		}
	}
	if (prev_ProcessUtility)
		prev_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
							queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
								queryEnv, dest, qc);
	if (capture)
		ddl_record(sql, &target);
}

/*
 * The setting and the hook.  Called from _PG_init.
 */
void
ddl_init(void)
{
	DefineCustomBoolVariable("replstamp.replicate_ddl",
							 "Replicates schema changes of tracked tables and CREATE TABLE in tracked schemas.",
							 "Off, a schema change stays on this node: the by-hand, rolling way.",
							 &replicate_ddl, true, PGC_SUSET, 0, NULL, NULL, NULL);
	prev_ProcessUtility = ProcessUtility_hook;
	ProcessUtility_hook = ddl_process_utility;
}

/* ---------------------------------------------------------------------
 * Re-issue
 * ---------------------------------------------------------------------
 */

/*
 * A rotation re-issues change, a schema change of an old replica ID, as
 * new_serial of new_id (identity.c): returns the copy's image, and moves
 * this node's record of the change to the new stamp.  The old stamp is
 * dropped from the log here, so that the peers' change of that stamp can be
 * pulled back; the record must not keep it either.
 *
 * What the copy says it had seen (seen) is what its original had seen, but
 * the changes of the old ID it had seen from from_serial on were re-issued
 * too, before it (in serial order), under new stamps: a peer that holds
 * such a copy must not take it as concurrent with this one.  So:
 *	- REISSUE_RESTORED: the old stamps name the same changes on the peers.
 *	  The copy and the record keep the old stamp in reissued_from: a node
 *	  that holds the original takes the copy as held (by its id,
 *	  ddl_apply()), and a change whose node had seen the old stamp, or an
 *	  earlier copy's old stamp, had seen it.
 *	- REISSUE_DIVERGED: the old stamps from from_serial on name other
 *	  changes on the peers (this data set parted from their history): the
 *	  copy keeps none of them, and claims the old ID only below from_serial.
 *	- In both, new_id was minted for the re-issue: every serial of it below
 *	  new_serial is the copy of a change the original had seen, which seen
 *	  then claims.
 *	- REISSUE_DEAD_EPOCH: as REISSUE_DIVERGED, but new_id is this node's
 *	  current ID, whose earlier serials the original had not all seen: two
 *	  such copies that change the same name may then be taken as concurrent,
 *	  a false conflict that stops the sync (never a silent one).
 */
Jsonb *
ddl_reissue(const Change *change, const pg_uuid_t *new_id, int64 new_serial,
			int64 from_serial, ReissueKind kind)
{
	ReplstampOwnerContext ctx;
	Oid			types[7] = {JSONBOID, UUIDOID, INT8OID, INT8OID, BOOLOID, UUIDOID, INT8OID};
	Datum		values[7];
	Jsonb	   *image;

	values[0] = JsonbPGetDatum(change->image);
	values[1] = UUIDPGetDatum(&change->replica_id);
	values[2] = Int64GetDatum(change->serial);
	values[3] = Int64GetDatum(from_serial);
	values[4] = BoolGetDatum(kind == REISSUE_RESTORED);
	values[5] = UUIDPGetDatum(new_id);
	values[6] = Int64GetDatum(kind == REISSUE_DEAD_EPOCH ? 0 : new_serial - 1);
	image = query_jsonb("SELECT $1 OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object("
						"  'seen', s.seen OPERATOR(pg_catalog.||) CASE WHEN $7 OPERATOR(pg_catalog.>) 0 "
						"    THEN pg_catalog.jsonb_build_object($6::text, $7) ELSE '{}' END, "
						"  'reissued_from', CASE WHEN $5 "
						"    THEN r.was OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object($2::text, $3) "
						"    ELSE r.was END) "
						"FROM (SELECT CASE WHEN $5 THEN $1 OPERATOR(pg_catalog.->) 'seen' "
						"        ELSE ($1 OPERATOR(pg_catalog.->) 'seen') OPERATOR(pg_catalog.||) "
						"          pg_catalog.jsonb_build_object($2::text, LEAST(coalesce(($1 OPERATOR(pg_catalog.->) 'seen' "
						"            OPERATOR(pg_catalog.->>) $2::text)::bigint, 0), $4 OPERATOR(pg_catalog.-) 1)) END) s(seen), "
						"     (SELECT coalesce($1 OPERATOR(pg_catalog.->) 'reissued_from', '{}')) r(was)",
						7, types, values, NULL);

	values[3] = Int64GetDatum(new_serial);
	dbaccess_become_owner(&ctx);
	SPI_connect();
	dbaccess_spi_exec("UPDATE replstamp.schema_change SET replica_id = $6, serial = $4, "
					  "reissued_from = CASE WHEN $5 THEN reissued_from "
					  "  OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object($2::text, $3) "
					  "  ELSE reissued_from END "
					  "WHERE replica_id OPERATOR(pg_catalog.=) $2 AND serial OPERATOR(pg_catalog.=) $3",
					  6, types, values, NULL, SPI_OK_UPDATE);
	SPI_finish();
	dbaccess_restore_user(&ctx);
	return image;
}

/* ---------------------------------------------------------------------
 * Apply
 * ---------------------------------------------------------------------
 */

pg_attribute_noreturn()
static void
malformed(const char *peer, const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_DATA_EXCEPTION),
			 errmsg("peer \"%s\" sent a malformed schema change", peer),
			 errdetail("%s", what)));
}

static JsonbValue *
member(Jsonb *image, const char *key)
{
	JsonbValue	k;

	k.type = jbvString;
	k.val.string.val = (char *) key;
	k.val.string.len = strlen(key);
	return findJsonbValueFromContainer(&image->root, JB_FOBJECT, &k);
}

static char *
member_text(Jsonb *image, const char *key, const char *peer)
{
	JsonbValue *v = member(image, key);

	if (v == NULL || v->type != jbvString)
		malformed(peer, psprintf("Its \"%s\" is not a string.", key));
	return pnstrdup(v->val.string.val, v->val.string.len);
}

static bool
member_bool(Jsonb *image, const char *key, const char *peer)
{
	JsonbValue *v = member(image, key);

	if (v == NULL || v->type != jbvBool)
		malformed(peer, psprintf("Its \"%s\" is not a boolean.", key));
	return v->val.boolean;
}

static Jsonb *
member_jsonb(Jsonb *image, const char *key, bool array, const char *peer)
{
	JsonbValue *v = member(image, key);
	Jsonb	   *j;

	if (v == NULL || v->type != jbvBinary)
		malformed(peer, psprintf("Its \"%s\" is not an %s.", key, array ? "array" : "object"));
	j = JsonbValueToJsonb(v);
	if (array ? !JB_ROOT_IS_ARRAY(j) : !JB_ROOT_IS_OBJECT(j))
		malformed(peer, psprintf("Its \"%s\" is not an %s.", key, array ? "array" : "object"));
	return j;
}

static Oid
relation_oid(const char *relation)
{
	return RangeVarGetRelid(makeRangeVarFromNameList(stringToQualifiedNameList(relation)),
							NoLock, true);
}

/*
 * Is the error one of the statement's own (a duplicate column, a missing
 * one, a type it cannot convert), rather than of the transaction or the
 * server (a deadlock, a cancel, a lack of memory)?
 */
static bool
statement_error(int sqlerrcode)
{
	switch (ERRCODE_TO_CATEGORY(sqlerrcode))
	{
		case ERRCODE_TRANSACTION_ROLLBACK:
		case ERRCODE_OPERATOR_INTERVENTION:
		case ERRCODE_INSUFFICIENT_RESOURCES:
		case ERRCODE_PROGRAM_LIMIT_EXCEEDED:
		case ERRCODE_SYSTEM_ERROR:
		case ERRCODE_INTERNAL_ERROR:
			return false;
	}
	return sqlerrcode != ERRCODE_LOCK_NOT_AVAILABLE && sqlerrcode != ERRCODE_QUERY_CANCELED;
}

/*
 * Run a peer's statement as role, with its search_path, in a
 * subtransaction.  Returns NULL when it ran, else its error.
 */
static ErrorData *
run_statement(const char *sql, const char *path, Oid role)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	ErrorData  *volatile edata = NULL;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		ReplstampOwnerContext uctx;
		int			ret;

		dbaccess_become_untrusted(role, &uctx);
		(void) set_config_option("search_path", path, PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_SAVE, true, 0, false);
		applying = true;
		SPI_connect();
		ret = SPI_execute(sql, false, 0);
		if (ret < 0)
			elog(ERROR, "replstamp: could not run a schema change (%s)", SPI_result_code_string(ret));
		SPI_finish();
		applying = false;
		dbaccess_restore_user(&uctx);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
	}
	PG_CATCH();
	{
		applying = false;
		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
		if (!statement_error(edata->sqlerrcode))
			ReThrowError(edata);
	}
	PG_END_TRY();
	return edata;
}

/*
 * Apply a schema change pulled from peer, in the current transaction:
 * checked against the concurrent ones held here, run as the table's owner,
 * its effect checked.  With nowait, false (nothing done) when a local
 * transaction holds the table.  The caller has closed every relation it
 * holds open, and records the change in the log.
 */
bool
ddl_apply(Change *change, const char *peer, bool nowait)
{
	char	   *relation = text_to_cstring(change->relation);
	Jsonb	   *image = change->image;
	char	   *sql = member_text(image, "sql", peer);
	char	   *path = member_text(image, "search_path", peer);
	char	   *rolename = member_text(image, "role", peer);
	bool		create = member_bool(image, "create", peer);
	bool		track = member_bool(image, "track", peer);
	Jsonb	   *touched = member_jsonb(image, "touched", true, peer);
	Jsonb	   *after = member_jsonb(image, "after", false, peer);
	Jsonb	   *seen = member_jsonb(image, "seen", false, peer);
	char	   *id = member(image, "id") == NULL ? NULL : member_text(image, "id", peer);
	Jsonb	   *reissued_from = member(image, "reissued_from") == NULL ? ddl_key() :
		member_jsonb(image, "reissued_from", false, peer);
	const char *outcome = "applied";
	List	   *parsed;
	DdlTarget	kind;
	Oid			relid;
	Oid			role;

	/* One statement of a kind that is replicated, and nothing else. */
	parsed = raw_parser(sql, RAW_PARSE_DEFAULT);
	if (list_length(parsed) != 1 ||
		!ddl_classify(linitial_node(RawStmt, parsed)->stmt, &kind, false) ||
		IsA(linitial_node(RawStmt, parsed)->stmt, CreateStmt) != create)
		malformed(peer, "Its statement is not one schema change of a kind that is replicated.");
	{
		Oid			types[2] = {JSONBOID, TEXTOID};
		Datum		values[2] = {JsonbPGetDatum(reissued_from), CStringGetTextDatum(id ? id : "")};

		/* A uuid as uuid_out() prints it; reissued_from: {uuid: serial}. */
#define UUID_PATTERN "'^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'"
		if (id != NULL &&
			!query_bool("SELECT $2 OPERATOR(pg_catalog.~) " UUID_PATTERN, 2, types, values))
			malformed(peer, "Its \"id\" is not a uuid.");
		if (!query_bool("SELECT pg_catalog.bool_and(e.key OPERATOR(pg_catalog.~) " UUID_PATTERN
						" AND e.value::text OPERATOR(pg_catalog.~) '^[0-9]{1,18}$') IS NOT FALSE "
						"FROM pg_catalog.jsonb_each($1) e", 2, types, values))
			malformed(peer, "Its \"reissued_from\" is not an object of stamps.");
#undef UUID_PATTERN
	}

	/*
	 * Held here already under another stamp: the copy a rotation re-issued of
	 * a schema change held here, or the original of a copy held here.  It ran
	 * here once; its stamp is one more name for it.
	 */
	if (id != NULL)
	{
		Oid			types[4] = {TEXTOID, UUIDOID, INT8OID, JSONBOID};
		Datum		values[4];
		ReplstampOwnerContext ctx;
		bool		held;

		values[0] = CStringGetTextDatum(id);
		values[1] = UUIDPGetDatum(&change->replica_id);
		values[2] = Int64GetDatum(change->serial);
		values[3] = JsonbPGetDatum(reissued_from);
		dbaccess_become_owner(&ctx);
		SPI_connect();
		dbaccess_spi_exec("UPDATE replstamp.schema_change SET reissued_from = $4 OPERATOR(pg_catalog.||) "
						  "  pg_catalog.jsonb_build_object($2::text, $3) OPERATOR(pg_catalog.||) reissued_from "
						  "WHERE id OPERATOR(pg_catalog.=) $1::pg_catalog.uuid",
						  4, types, values, NULL, SPI_OK_UPDATE);
		held = SPI_processed > 0;
		SPI_finish();
		dbaccess_restore_user(&ctx);
		if (held)
			return true;
	}

	relid = relation_oid(relation);
	if (OidIsValid(relid))
	{
		HeapTuple	tup;

		if (nowait)
		{
			if (!ConditionalLockRelationOid(relid, AccessExclusiveLock))
				return false;
		}
		else
			LockRelationOid(relid, AccessExclusiveLock);
		tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
		if (!HeapTupleIsValid(tup))
			elog(ERROR, "replstamp: cache lookup failed for relation %u", relid);
		role = ((Form_pg_class) GETSTRUCT(tup))->relowner;
		ReleaseSysCache(tup);
	}
	else if (!create)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("peer \"%s\" sent a schema change of table %s, which does not exist here", peer, relation),
				 errhint("Create and track the table on every node, or drop it on every node.")));
	else
	{
		role = get_role_oid(rolename, true);
		if (!OidIsValid(role))
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("peer \"%s\" sent a CREATE TABLE of %s by role \"%s\", which does not exist here",
							peer, relation, rolename),
					 errhint("Create the role on this node; the sync goes on from this change.")));
	}

	/* A concurrent schema change of the same names that left them otherwise. */
	{
		ReplstampOwnerContext ctx;
		Oid			types[4] = {TEXTOID, JSONBOID, JSONBOID, JSONBOID};
		Datum		values[4] = {PointerGetDatum(change->relation), JsonbPGetDatum(seen),
		JsonbPGetDatum(touched), JsonbPGetDatum(after)};
		char	   *other = NULL;
		char	   *other_sql = NULL;
		Jsonb	   *keys = NULL;
		MemoryContext caller = CurrentMemoryContext;

		dbaccess_become_owner(&ctx);
		SPI_connect();
		dbaccess_spi_exec("SELECT c.replica_id::text OPERATOR(pg_catalog.||) '/' OPERATOR(pg_catalog.||) c.serial, "
						  "c.statement, (SELECT pg_catalog.jsonb_agg(DISTINCT k) FROM ("
						  "  SELECT pg_catalog.jsonb_array_elements_text($3) "
						  "  UNION SELECT pg_catalog.jsonb_array_elements_text(y.touched)) s(k)) "
						  "FROM replstamp._schema_conflict($1, $2, $3, $4) c "
						  "JOIN replstamp.schema_change y ON y.replica_id OPERATOR(pg_catalog.=) c.replica_id "
						  "AND y.serial OPERATOR(pg_catalog.=) c.serial",
						  4, types, values, NULL, SPI_OK_SELECT);
		if (SPI_processed == 1)
		{
			MemoryContext old = MemoryContextSwitchTo(caller);
			bool		isnull;

			other = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
			other_sql = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
			keys = DatumGetJsonbPCopy(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull));
			MemoryContextSwitchTo(old);
		}
		SPI_finish();
		dbaccess_restore_user(&ctx);
		if (other != NULL)
		{
			/* Made alike here by hand since: found done. */
			if (!same_parts(describe(relid), after, keys))
				ereport(ERROR,
						(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						 errmsg("schema change of table %s from peer \"%s\" conflicts with schema change %s, made concurrently",
								relation, peer, other),
						 errdetail("The peer's statement: %s  The concurrent one: %s  They leave the same columns, constraints or indexes otherwise, and each node would end as the one it applied last.",
								   sql, other_sql),
						 errhint(DDL_HINT)));
			outcome = "found_done";
		}
	}

	if (strcmp(outcome, "applied") == 0)
	{
		ErrorData  *edata = run_statement(sql, path, role);
		Jsonb	   *now = describe(create ? relation_oid(relation) : relid);

		if (edata != NULL)
		{
			if (!same_parts(now, after, touched))
				ereport(ERROR,
						(errcode(edata->sqlerrcode),
						 errmsg("could not apply a schema change of table %s from peer \"%s\"",
								relation, peer),
						 errdetail("%s  The statement: %s", edata->message, sql),
						 errhint(DDL_HINT)));
			outcome = "found_done";
		}
		else if (!same_parts(now, after, touched))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("a schema change of table %s from peer \"%s\" left it otherwise here than on the peer", relation, peer),
					 errdetail("The statement: %s", sql),
					 errhint(DDL_HINT)));
	}
	if (create && track)
	{
		relid = relation_oid(relation);
		if (OidIsValid(relid) && !table_tracked(relid))
			(void) DirectFunctionCall1(replstamp_track, ObjectIdGetDatum(relid));
	}
	record_schema_change(change, false, outcome, sql, touched, after, id, reissued_from);
	return true;
}

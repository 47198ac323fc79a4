/*-------------------------------------------------------------------------
 *
 * stamp.c
 *		The data manager: an AFTER ROW trigger that writes one row to
 *		replstamp.changes per INSERT, UPDATE or DELETE of a tracked table,
 *		in the writer's transaction; track()/untrack() to install it; the
 *		registry replstamp.tracked_table and the DDL guard that keeps the trigger
 *		from being disabled or dropped behind replstamp's back.
 *
 * The trigger is on the hot path of every write, so it builds no SQL: the
 * OIDs of the extension's relations and the state row are cached per
 * backend (catalog.c), the per-table column layout in rowimage.c, and the
 * change goes in through changelog.c.  It runs in the after-trigger
 * per-tuple memory context, which the trigger manager resets after every
 * row.
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/relation.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/genam.h"
#include "lib/stringinfo.h"
#include "access/xact.h"
#include "catalog/catalog.h"
#include "catalog/namespace.h"
#include "catalog/partition.h"
#include "catalog/pg_constraint.h"
#include "catalog/pg_inherits.h"
#include "catalog/pg_trigger.h"
#include "catalog/pg_type.h"
#include "commands/defrem.h"
#include "commands/event_trigger.h"
#include "commands/extension.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "optimizer/optimizer.h"
#include "rewrite/rewriteHandler.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "backfill.h"
#include "catalog.h"
#include "changelog.h"
#include "compat.h"
#include "dbaccess.h"
#include "errors.h"
#include "identity.h"
#include "rowimage.h"
#include "rowversion.h"
#include "sequences.h"
#include "serial.h"
#include "shmem.h"
#include "stamp.h"
#include "wakeup.h"

PG_FUNCTION_INFO_V1(replstamp_stamp);
PG_FUNCTION_INFO_V1(replstamp_refuse_truncate);
PG_FUNCTION_INFO_V1(replstamp_track);
PG_FUNCTION_INFO_V1(replstamp_untrack);
PG_FUNCTION_INFO_V1(replstamp_ddl_guard);
PG_FUNCTION_INFO_V1(replstamp_drop_guard);
PG_FUNCTION_INFO_V1(replstamp_inexact_key);

/* Tuples written by the apply in this transaction: not stamped again. */
#define MAX_SKIP	8
static int	nskip = 0;
static struct
{
	Oid			relid;
	ItemPointerData tid;
}			skip[MAX_SKIP];

/*
 * The DELETE just stamped of a row that an UPDATE moves to another
 * partition of a tracked partitioned table (its old version is marked
 * "moved partitions").  PostgreSQL fires the row triggers of such an
 * UPDATE as a DELETE on the old partition followed at once by an INSERT
 * on the new one; that INSERT turns the DELETE into one UPDATE of the
 * partitioned table (pair_moved()).  In TopTransactionContext; valid only
 * until the next stamp.
 */
static struct
{
	bool		valid;
	CommandId	cid;
	text	   *relation;
	pg_uuid_t	replica_id;
	int64		serial;
	Jsonb	   *pk;
}			moved;

static bool pair_moved(const ReplstampCatalog *cat, Change *change);

static void
stamp_xact_callback(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_ABORT || event == XACT_EVENT_COMMIT ||
		event == XACT_EVENT_PARALLEL_ABORT || event == XACT_EVENT_PARALLEL_COMMIT ||
		event == XACT_EVENT_PREPARE)
	{
		nskip = 0;
		moved.valid = false;
	}
}

/*
 * Register callbacks.  Called from _PG_init.
 */
void
stamp_init(void)
{
	RegisterXactCallback(stamp_xact_callback, NULL);
}

/*
 * The apply wrote this tuple with a change that already has its stamp.
 */
void
stamp_skip_tuple(Oid relid, ItemPointer tid)
{
	if (nskip >= MAX_SKIP)
		elog(ERROR, "replstamp: too many tuples to skip");
	skip[nskip].relid = relid;
	ItemPointerCopy(tid, &skip[nskip].tid);
	nskip++;
}

void
stamp_skip_clear(void)
{
	nskip = 0;
}

static bool
skipped(Oid relid, ItemPointer tid)
{
	for (int i = 0; i < nskip; i++)
		if (skip[i].relid == relid && ItemPointerEquals(&skip[i].tid, tid))
			return true;
	return false;
}

static void
check_trigger_call(FunctionCallInfo fcinfo, const char *funcname)
{
	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"%s\" was not called by trigger manager",
						funcname)));
}

/*
 * replstamp.stamp(): AFTER INSERT OR UPDATE OR DELETE FOR EACH ROW.
 *
 * Writes (replica_id, serial, relation, op, pk, row_image, changed_at) to
 * replstamp.changes.  pk is the key the row had before the change (for an
 * INSERT, the new key), row_image the row after it (NULL for a DELETE).
 */
Datum
replstamp_stamp(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Relation	rel;
	const ReplstampCatalog *cat;
	const ReplstampNode *node;
	RowLayout  *layout;
	HeapTuple	keytuple;
	HeapTuple	newtuple;
	ItemPointer tid;
	Change		change;

	check_trigger_call(fcinfo, "replstamp.stamp");
	if (!TRIGGER_FIRED_AFTER(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("replstamp.stamp() must be fired AFTER ... FOR EACH ROW"),
				 errhint("Use replstamp.track() to install it.")));

	rel = trigdata->tg_relation;
	if (TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
	{
		change.op = 'I';
		keytuple = newtuple = trigdata->tg_trigtuple;
		tid = &newtuple->t_self;
	}
	else if (TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
	{
		change.op = 'U';
		keytuple = trigdata->tg_trigtuple;
		newtuple = trigdata->tg_newtuple;
		tid = &newtuple->t_self;
	}
	else if (TRIGGER_FIRED_BY_DELETE(trigdata->tg_event))
	{
		change.op = 'D';
		keytuple = trigdata->tg_trigtuple;
		newtuple = NULL;
		tid = &keytuple->t_self;
	}
	else
		elog(ERROR, "replstamp.stamp() fired for an unexpected event");

	/* A row the apply wrote arrives with its stamp: the apply records it. */
	if (unlikely(nskip > 0) && skipped(RelationGetRelid(rel), tid))
		return PointerGetDatum(NULL);

	cat = catalog_get(false);

	/*
	 * A restored copy must not stamp with its old ID: check before the first
	 * stamp.
	 */
	identity_ensure_verified();
	node = catalog_node();
	layout = rowimage_layout(rel);
	if (!OidIsValid(layout->pkoid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("tracked table \"%s\" has no row key",
						RelationGetRelationName(rel)),
				 errdetail("replstamp identifies rows by their primary key or, without one, by the unique index of the table's replica identity."),
				 errhint("Give the table back the key it was tracked with (replstamp.problems names it), or stop tracking it with replstamp.untrack().")));

	rowimage_both(layout, RelationGetDescr(rel), keytuple, newtuple,
				  &change.pk, newtuple ? &change.image : NULL);
	if (newtuple == NULL)
		change.image = NULL;
	change.relation = layout->relname_text;
	change.changed_at = serial_stamp_time();
	change.applied = false;
	if (!pair_moved(cat, &change))
		change.serial = serial_take(cat->serial_seq);
	change.replica_id = node->replica_id;
	changelog_append(cat, &change);
	wakeup_stamped(&change.replica_id, change.serial);

	/* The first half of a row moving to another partition: see "moved". */
	if (change.op == 'D' && rel->rd_rel->relispartition &&
		HeapTupleHeaderIndicatesMovedPartitions(keytuple->t_data))
	{
		MemoryContext old = MemoryContextSwitchTo(TopTransactionContext);

		moved.cid = GetCurrentCommandId(false);
		moved.relation = DatumGetTextPCopy(PointerGetDatum(change.relation));
		moved.replica_id = change.replica_id;
		moved.serial = change.serial;
		moved.pk = DatumGetJsonbPCopy(JsonbPGetDatum(change.pk));
		moved.valid = true;
		MemoryContextSwitchTo(old);
	}
	return PointerGetDatum(NULL);
}

/*
 * An INSERT right after the DELETE of a row moved out of another partition
 * of the same tracked table, by the same command: the DELETE's change is
 * replaced by this one, an UPDATE from the old key to the new row, under
 * the DELETE's serial.  Peers apply it as any key-changing UPDATE: every
 * node, whatever its partitions, moves the row.  Returns whether it did
 * (change->serial is then set).
 */
static bool
pair_moved(const ReplstampCatalog *cat, Change *change)
{
	bool		pair = moved.valid && change->op == 'I' &&
		moved.cid == GetCurrentCommandId(false) &&
		rowimage_bytes_equal((struct varlena *) moved.relation,
							 (struct varlena *) change->relation);

	moved.valid = false;
	if (!pair)
		return false;
	/* The DELETE's change was written by this command: make it visible. */
	CommandCounterIncrement();
	if (!changelog_delete(cat, &moved.replica_id, moved.serial))
		return false;
	change->op = 'U';
	change->pk = moved.pk;
	change->serial = moved.serial;
	return true;
}

/*
 * What this node holds of the rows of a table it truncates, as the
 * TRUNCATE's image (rowversion.c, "TRUNCATE"): its vector, with its own
 * current ID at the serial before the TRUNCATE's, and the versions of the
 * table's live rows it holds above its vector (a sync still under way).
 * Read in the latest snapshot, not the transaction's: TRUNCATE removes
 * every row committed by now, whatever the isolation level, and a sync's
 * page that wrote one committed before the table's lock was granted.
 */
static Jsonb *
truncate_coverage(Change *change)
{
	ReplstampOwnerContext ctx;
	Oid			types[3] = {TEXTOID, UUIDOID, INT8OID};
	Datum		values[3];
	Jsonb	   *image;
	bool		isnull;
	MemoryContext caller = CurrentMemoryContext;
	MemoryContext old;
	SPIPlanPtr	plan;

	values[0] = PointerGetDatum(change->relation);
	values[1] = UUIDPGetDatum(&change->replica_id);
	values[2] = Int64GetDatum(change->serial - 1);
	dbaccess_become_owner(&ctx);
	SPI_connect();
	plan = SPI_prepare("SELECT pg_catalog.jsonb_build_object('vector', "
					   "  coalesce((SELECT pg_catalog.jsonb_object_agg(v.replica_id::text, v.serial) "
					   "            FROM replstamp.vector v WHERE v.replica_id OPERATOR(pg_catalog.<>) $2), '{}') "
					   "  OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object($2::text, $3), "
					   "'also', coalesce((SELECT pg_catalog.jsonb_object_agg(a.replica_id::text, a.serials) FROM ("
					   "  SELECT rv.replica_id, pg_catalog.jsonb_agg(rv.serial ORDER BY rv.serial) AS serials "
					   "    FROM replstamp.row_version rv LEFT JOIN replstamp.vector v "
					   "      ON v.replica_id OPERATOR(pg_catalog.=) rv.replica_id "
					   "   WHERE rv.relation OPERATOR(pg_catalog.=) $1 AND NOT rv.deleted "
					   "     AND rv.replica_id OPERATOR(pg_catalog.<>) $2 "
					   "     AND rv.serial OPERATOR(pg_catalog.>) coalesce(v.serial, 0) "
					   "   GROUP BY rv.replica_id) a), '{}'))",
					   3, types);
	if (plan == NULL ||
		SPI_execute_snapshot(plan, values, NULL, GetLatestSnapshot(), InvalidSnapshot,
							 true, false, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "replstamp: could not read what this node holds of table \"%s\"",
			 text_to_cstring(change->relation));
	old = MemoryContextSwitchTo(caller);
	image = DatumGetJsonbPCopy(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	MemoryContextSwitchTo(old);
	SPI_finish();
	dbaccess_restore_user(&ctx);
	return image;
}

/*
 * replstamp.refuse_truncate(): BEFORE TRUNCATE FOR EACH STATEMENT.  (Named
 * in 1.0, when it refused; since 1.2 it stamps.)  TRUNCATE fires no row
 * triggers: the rows it removes are stamped as one change, which says
 * what this node held of them (rowversion.c, "TRUNCATE").  TRUNCATE has
 * locked the table ACCESS EXCLUSIVE before its triggers fire, so every
 * change of it stamped here with a lower serial has committed or is this
 * transaction's, and every later one comes after it.  With CASCADE, or
 * several tables, each tracked table gets a change of its own, in the
 * same transaction.  On the 1.1 catalog (before ALTER EXTENSION UPDATE)
 * the change cannot be recorded, and TRUNCATE is refused as before.
 */
Datum
replstamp_refuse_truncate(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Relation	rel;
	const ReplstampCatalog *cat;
	Change		change;

	check_trigger_call(fcinfo, "replstamp.refuse_truncate");
	if (!TRIGGER_FIRED_BEFORE(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_STATEMENT(trigdata->tg_event) ||
		!TRIGGER_FIRED_BY_TRUNCATE(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("replstamp.refuse_truncate() must be fired BEFORE TRUNCATE ... FOR EACH STATEMENT"),
				 errhint("Use replstamp.track() to install it.")));
	rel = trigdata->tg_relation;
	cat = catalog_get(false);
	if (!cat->v12)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot truncate table \"%s\" because it is tracked by replstamp",
						RelationGetRelationName(rel)),
				 errdetail("This database still has the catalog of replstamp 1.1, which cannot record a TRUNCATE."),
				 errhint("Run ALTER EXTENSION replstamp UPDATE, or use DELETE.")));

	/* A restored copy must not stamp with its old ID. */
	identity_ensure_verified();
	change.op = 'T';
	change.relation = rowimage_layout(rel)->relname_text;
	change.changed_at = serial_stamp_time();
	change.applied = false;
	change.serial = serial_take(cat->serial_seq);
	change.replica_id = catalog_node()->replica_id;
	change.pk = rowversion_truncate_key(&change.replica_id, change.serial);
	change.image = truncate_coverage(&change);
	changelog_append(cat, &change);
	wakeup_stamped(&change.replica_id, change.serial);
	return PointerGetDatum(NULL);
}

static bool
has_trigger(Relation rel, const char *tgname, bool always)
{
	TriggerDesc *td = rel->trigdesc;

	if (td == NULL)
		return false;
	for (int i = 0; i < td->numtriggers; i++)
		if (strcmp(td->triggers[i].tgname, tgname) == 0)
			return !always || td->triggers[i].tgenabled == TRIGGER_FIRES_ALWAYS;
	return false;
}

/*
 * Is the trigger tgname of rel the one track() installed: enabled ALWAYS,
 * calling replstamp.funcname, for the events of tgtype, with no WHEN
 * clause and no column list?  A table owner may not call replstamp's
 * functions, but may replace a trigger of that name with her own
 * (CREATE OR REPLACE TRIGGER) and enable it ALWAYS.
 */
static bool
trigger_intact(Relation rel, const char *tgname, const char *funcname, int16 tgtype)
{
	TriggerDesc *td = rel->trigdesc;
	Oid			schema = catalog_get(false)->schema;

	if (td == NULL)
		return false;
	for (int i = 0; i < td->numtriggers; i++)
	{
		Trigger    *tg = &td->triggers[i];
		char	   *proname;

		if (strcmp(tg->tgname, tgname) != 0)
			continue;
		proname = get_func_name(tg->tgfoid);
		return tg->tgenabled == TRIGGER_FIRES_ALWAYS &&
			tg->tgtype == tgtype &&
			tg->tgqual == NULL &&
			tg->tgnattr == 0 &&
			get_func_namespace(tg->tgfoid) == schema &&
			proname != NULL && strcmp(proname, funcname) == 0;
	}
	return false;
}

/* Does rel carry a trigger named tgname of its own, not a partition's clone? */
static bool
trigger_is_own(Relation rel, const char *tgname)
{
	TriggerDesc *td = rel->trigdesc;

	for (int i = 0; td != NULL && i < td->numtriggers; i++)
		if (strcmp(td->triggers[i].tgname, tgname) == 0)
			return !td->triggers[i].tgisclone;
	return false;
}

/*
 * Is the table tracked (does it carry the stamp trigger)?
 */
bool
stamp_is_tracked(Relation rel)
{
	return has_trigger(rel, STAMP_TRIGGER_NAME, false);
}

/*
 * The names of the row key columns of rel (rowimage_key_index()), in key
 * order; NIL if it has no row key.
 */
static List *
key_columns(Relation rel)
{
	Oid			pkoid = rowimage_key_index(rel);
	Relation	pk;
	List	   *names = NIL;

	if (!OidIsValid(pkoid))
		return NIL;
	pk = index_open(pkoid, AccessShareLock);
	for (int i = 0; i < pk->rd_index->indnkeyatts; i++)
	{
		AttrNumber	attnum = pk->rd_index->indkey.values[i];

		names = lappend(names,
						pstrdup(NameStr(TupleDescAttr(RelationGetDescr(rel), attnum - 1)->attname)));
	}
	index_close(pk, AccessShareLock);
	return names;
}

/* Does the registry have the key_columns and key_index columns (1.2)? */
static bool
registry_has_key_columns(const ReplstampCatalog *cat)
{
	return OidIsValid(cat->tracked) && get_attnum(cat->tracked, "key_columns") != InvalidAttrNumber &&
		get_attnum(cat->tracked, "key_index") != InvalidAttrNumber;
}

/*
 * The index of rel's row key as replstamp.tracked_table records it: the
 * replica identity index of a table without a primary key, else InvalidOid.
 */
static Oid
key_index_to_record(Relation rel)
{
	if (OidIsValid(RelationGetPrimaryKeyIndex(rel)))
		return InvalidOid;
	return rowimage_key_index(rel);
}

/* The names of a list, as "a, b" (quoted where needed). */
static char *
names_text(List *names)
{
	StringInfoData buf;
	ListCell   *lc;

	initStringInfo(&buf);
	foreach(lc, names)
		appendStringInfo(&buf, "%s%s", buf.len ? ", " : "", quote_identifier(lfirst(lc)));
	return buf.data;
}

/*
 * Record the row key columns of a tracked table in replstamp.tracked_table
 * (1.2), and its key index if that is not a primary key: the DDL guard
 * keeps them.  Only where none are recorded yet, unless replace.  The
 * caller is connected to SPI as the extension's owner.
 */
static void
registry_set_key(const char *regname, List *keys, Oid keyindex, bool replace)
{
	Oid			types[3] = {TEXTOID, TEXTARRAYOID, OIDOID};
	Datum		values[3];
	char		nulls[3] = {' ', ' ', ' '};

	values[0] = CStringGetTextDatum(regname);
	values[1] = dbaccess_names_array(keys);
	values[2] = ObjectIdGetDatum(keyindex);
	if (!OidIsValid(keyindex))
		nulls[2] = 'n';
	dbaccess_spi_exec(replace ?
					  catalog_sql("UPDATE replstamp.tracked_table SET key_columns = $2, key_index = $3 "
								  "WHERE relation OPERATOR(pg_catalog.=) $1") :
					  catalog_sql("UPDATE replstamp.tracked_table SET key_columns = $2, key_index = $3 "
								  "WHERE relation OPERATOR(pg_catalog.=) $1 AND key_columns IS NULL"),
					  3, types, values, nulls, SPI_OK_UPDATE);
}

/*
 * The key index recorded for a tracked table (registry_set_key()), or
 * InvalidOid: its key is its primary key, or nothing is recorded.  The
 * caller is connected to SPI as the extension's owner.
 */
static Oid
registry_key_index(const char *regname)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1];
	bool		isnull;
	Oid			keyindex = InvalidOid;

	values[0] = CStringGetTextDatum(regname);
	dbaccess_spi_exec(catalog_sql("SELECT key_index FROM replstamp.tracked_table "
								  "WHERE relation OPERATOR(pg_catalog.=) $1"),
					  1, types, values, NULL, SPI_OK_SELECT);
	if (SPI_processed > 0)
	{
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		if (!isnull)
			keyindex = DatumGetObjectId(d);
	}
	return keyindex;
}

/*
 * The row key columns recorded for a tracked table, as text, or NULL if
 * they are what keys names (then keys and keyindex are recorded now: the
 * same columns under another index are the same key).  The caller is
 * connected to SPI as the extension's owner.
 */
static char *
registry_key_differs(const char *regname, List *keys, Oid keyindex)
{
	Oid			types[2] = {TEXTOID, TEXTARRAYOID};
	Datum		values[2];
	char	   *recorded = NULL;

	values[0] = CStringGetTextDatum(regname);
	values[1] = dbaccess_names_array(keys);
	dbaccess_spi_exec(catalog_sql("SELECT pg_catalog.array_to_string(key_columns, ', ') FROM replstamp.tracked_table "
								  "WHERE relation OPERATOR(pg_catalog.=) $1 AND key_columns IS NOT NULL "
								  "AND key_columns OPERATOR(pg_catalog.<>) $2"),
					  2, types, values, NULL, SPI_OK_SELECT);
	if (SPI_processed > 0)
		recorded = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	else
		registry_set_key(regname, keys, keyindex, true);
	return recorded;
}

/* Run SQL through SPI as the extension owner, with a safe search_path. */
static void
run_as_owner(const char *const *commands, int ncommands, int expected)
{
	ReplstampOwnerContext ctx;

	dbaccess_become_owner(&ctx);
	SPI_connect();
	for (int i = 0; i < ncommands; i++)
	{
		int			ret = SPI_execute(commands[i], false, 0);

		if (ret != expected)
			elog(ERROR, "replstamp: \"%s\" failed: %s", commands[i],
				 SPI_result_code_string(ret));
	}
	SPI_finish();
	dbaccess_restore_user(&ctx);
}

/*
 * Record a table's state in replstamp.tracked_table (1.1).  backfill: where the
 * background worker starts stamping its existing rows once, or NULL.  The
 * OID is kept only while the table is tracked: the rows of tables that left
 * are dumped by pg_dump, and an OID means nothing in another database.
 */
static void
registry_set(const ReplstampCatalog *cat, Oid relid, const char *state,
			 const BackfillOrigin *backfill)
{
	ReplstampOwnerContext ctx;
	Oid			types[6] = {TEXTOID, OIDOID, TEXTOID, TEXTOID, TEXTOID, OIDOID};
	Datum		values[6];
	char		nulls[6] = {' ', ' ', ' ', ' ', ' ', ' '};
	int			ret;

	if (!cat->v11)
		return;
	values[0] = CStringGetTextDatum(quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
															   get_rel_name(relid)));
	values[1] = ObjectIdGetDatum(relid);
	if (strcmp(state, "tracked") != 0)
		nulls[1] = 'n';
	values[2] = CStringGetTextDatum(state);
	if (backfill)
	{
		values[3] = CStringGetTextDatum(backfill->snapshot);
		values[4] = CStringGetTextDatum(backfill->end);
		values[5] = ObjectIdGetDatum(backfill->filenode);
	}
	else
		nulls[3] = nulls[4] = nulls[5] = 'n';
	dbaccess_become_owner(&ctx);
	SPI_connect();
	ret = SPI_execute_with_args(catalog_sql("INSERT INTO replstamp.tracked_table AS t "
											"(relation, relid, state, since, backfill, backfill_snapshot, "
											"backfill_end, backfill_filenode) "
											"VALUES ($1, $2, $3, pg_catalog.now(), "
											"CASE WHEN $4 IS NOT NULL THEN 'pending' END, "
											"$4::pg_catalog.pg_snapshot, $5::pg_catalog.tid, $6) "
											"ON CONFLICT (relation) DO UPDATE SET relid = EXCLUDED.relid, "
											"state = EXCLUDED.state, since = EXCLUDED.since, "
											"backfill = EXCLUDED.backfill, backfill_rows = 0, backfill_after = NULL, "
											"backfill_snapshot = EXCLUDED.backfill_snapshot, "
											"backfill_end = EXCLUDED.backfill_end, "
											"backfill_filenode = EXCLUDED.backfill_filenode, "
											"backfill_error = NULL, log_purged = false"),
								6, types, values, nulls, false, 0);
	if (ret != SPI_OK_INSERT)
		elog(ERROR, "replstamp: could not record the table: %s", SPI_result_code_string(ret));
	if (strcmp(state, "tracked") == 0 && registry_has_key_columns(cat))
	{
		Relation	rel = relation_open(relid, AccessShareLock);
		List	   *keys = key_columns(rel);

		/* None yet (pg_restore adds it later): the guard records it then. */
		if (keys != NIL)
			registry_set_key(TextDatumGetCString(values[0]), keys, key_index_to_record(rel), true);
		relation_close(rel, AccessShareLock);
	}
	SPI_finish();
	dbaccess_restore_user(&ctx);

	/* The sequences of its columns come and go with the table. */
	if (strcmp(state, "tracked") == 0)
		sequences_cover_table(relid);
	else
		sequences_uncover_table(relid);
}

/*
 * Stamp the existing rows of a table that is tracked already once more
 * (track() with backfill on a tracked table): rows that were never stamped
 * (the table had them before it was tracked), or whose changes a node that
 * joins later cannot get otherwise: every row version the snapshot of
 * backfill sees.  Returns false if a backfill of the table is under way
 * already.
 */
static bool
registry_backfill_again(Oid relid, const BackfillOrigin *backfill)
{
	ReplstampOwnerContext ctx;
	Oid			types[4] = {TEXTOID, TEXTOID, TEXTOID, OIDOID};
	Datum		values[4];
	int			ret;
	bool		started;

	values[0] = CStringGetTextDatum(quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
															   get_rel_name(relid)));
	values[1] = CStringGetTextDatum(backfill->snapshot);
	values[2] = CStringGetTextDatum(backfill->end);
	values[3] = ObjectIdGetDatum(backfill->filenode);
	dbaccess_become_owner(&ctx);
	SPI_connect();
	ret = SPI_execute_with_args(catalog_sql("UPDATE replstamp.tracked_table SET backfill = 'pending', backfill_rows = 0, "
											"backfill_after = NULL, backfill_error = NULL, "
											"backfill_snapshot = $2::pg_catalog.pg_snapshot, "
											"backfill_end = $3::pg_catalog.tid, backfill_filenode = $4 "
											"WHERE relation OPERATOR(pg_catalog.=) $1 AND state = 'tracked' "
											"AND backfill IS DISTINCT FROM 'pending' AND backfill IS DISTINCT FROM 'running'"),
								4, types, values, NULL, false, 0);
	if (ret != SPI_OK_UPDATE)
		elog(ERROR, "replstamp: could not record the backfill: %s", SPI_result_code_string(ret));
	started = SPI_processed > 0;
	SPI_finish();
	dbaccess_restore_user(&ctx);
	return started;
}

/*
 * Open a table for track()/untrack(), checking the caller owns it.
 */
static Relation
open_table_for_tracking(Oid relid)
{
	Relation	rel = relation_open(relid, ShareRowExclusiveLock);

	if (!pg_class_ownercheck(relid, GetUserId()))
		aclcheck_error(ACLCHECK_NOT_OWNER, get_relkind_objtype(rel->rd_rel->relkind),
					   RelationGetRelationName(rel));
	return rel;
}

/*
 * Refuse a table whose primary key treats as equal values that print
 * differently (rowimage_key_inexact()): nodes identify a row by its key
 * image, and would take two spellings of one key for two rows, each node
 * ending with the other's values.  For track(), or (guard) for DDL that
 * gave a tracked table such a key.
 */
static void
refuse_inexact_key(Relation rel, Oid keyoid, const char *relname, bool guard)
{
	const char *column;
	Oid			col_type;
	Oid			bad_type;
	Oid			bad_coll;
	const char *what;

	if (!rowimage_key_inexact(rel, keyoid, &column, &col_type, &bad_type, &bad_coll))
		return;
	what = OidIsValid(RelationGetPrimaryKeyIndex(rel)) ? "primary key" : "row key";
	if (OidIsValid(bad_coll))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 guard ?
				 errmsg("cannot give tracked table %s a %s column \"%s\" with nondeterministic collation \"%s\"",
						relname, what, column, get_collation_name(bad_coll)) :
				 errmsg("cannot track table \"%s\" because its %s column \"%s\" has nondeterministic collation \"%s\"",
						relname, what, column, get_collation_name(bad_coll)),
				 errdetail("The collation treats strings as equal that differ (such as alice and ALICE), "
						   "and replstamp identifies a row on every node by the text of its key: "
						   "nodes would take two spellings of one key for two rows."),
				 errhint("Use a deterministic collation for the key column, or a key of another column.")));
	ereport(ERROR,
			(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
			 guard ?
			 errmsg("cannot give tracked table %s a %s column \"%s\" of type %s",
					relname, what, column, format_type_be(col_type)) :
			 errmsg("cannot track table \"%s\" because its %s column \"%s\" is of type %s",
					relname, what, column, format_type_be(col_type)),
			 errdetail("The %s treats some values of type %s as equal that print differently, "
					   "and replstamp identifies a row on every node by the text of its key: "
					   "nodes would take two spellings of one key for two rows.",
					   what, format_type_be(bad_type)),
			 errhint("Use a key whose equal values are identical, such as integer, bigint, uuid, "
					 "text with a deterministic collation, date or timestamp (or arrays, ranges "
					 "and composites of these), or numeric on its own.")));
}

/*
 * replstamp._inexact_key(relation regclass) RETURNS text: why track() would
 * refuse the table's primary key (refuse_inexact_key()), NULL if it would
 * not; the upgrade to 1.2 warns with it about tables tracked before.
 */
Datum
replstamp_inexact_key(PG_FUNCTION_ARGS)
{
	Relation	rel = try_relation_open(PG_GETARG_OID(0), AccessShareLock);
	const char *column;
	Oid			col_type;
	Oid			bad_type;
	Oid			bad_coll;
	char	   *why;

	if (rel == NULL)
		PG_RETURN_NULL();
	if (!rowimage_key_inexact(rel, InvalidOid, &column, &col_type, &bad_type, &bad_coll))
	{
		relation_close(rel, AccessShareLock);
		PG_RETURN_NULL();
	}
	if (OidIsValid(bad_coll))
		why = psprintf("column \"%s\" has nondeterministic collation \"%s\"",
					   column, get_collation_name(bad_coll));
	else if (bad_type == getBaseType(col_type))
		why = psprintf("column \"%s\" is of type %s", column, format_type_be(col_type));
	else
		why = psprintf("column \"%s\" of type %s holds values of type %s", column,
					   format_type_be(col_type), format_type_be(bad_type));
	relation_close(rel, AccessShareLock);
	PG_RETURN_TEXT_P(cstring_to_text(why));
}

static bool has_foreign_keys(Oid relid);

/*
 * Refuse a partitioned table whose tracking would not cover its rows
 * faithfully.  Tracking it installs the stamp trigger on it, which
 * PostgreSQL clones to every partition, present and future; the changes of
 * every partition are stamped under its name (rowimage.c).  A partition
 * tracked on its own, a foreign partition, foreign keys to or from the
 * table (constraints.c checks them on leaves it does not know how to
 * reach) and backfill (a heap scan of one table) are not supported.
 */
static void
check_partitions(Relation rel, const char *relname, bool backfill)
{
	List	   *parts = find_all_inheritors(RelationGetRelid(rel), ShareRowExclusiveLock, NULL);
	ListCell   *lc;

	if (backfill)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot backfill partitioned table \"%s\"", relname),
				 errhint("Track it without backfill.")));
	foreach(lc, parts)
	{
		Oid			part = lfirst_oid(lc);
		Relation	prel;
		char		relkind;
		bool		own;

		if (part == RelationGetRelid(rel))
			continue;
		prel = relation_open(part, NoLock);
		relkind = prel->rd_rel->relkind;
		own = has_trigger(prel, STAMP_TRIGGER_NAME, false);
		relation_close(prel, NoLock);
		if (relkind != RELKIND_RELATION && relkind != RELKIND_PARTITIONED_TABLE)
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("cannot track partitioned table \"%s\" because its partition \"%s\" is not a table",
							relname, get_rel_name(part)),
					 errhint("Only partitions that are ordinary tables can be tracked.")));
		if (own)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("cannot track partitioned table \"%s\" because its partition \"%s\" is tracked",
							relname, get_rel_name(part)),
					 errdetail("The changes of a partition are stamped under one name on every node."),
					 errhint("Untrack the partition with replstamp.untrack() on every node first.")));
	}
	if (has_foreign_keys(RelationGetRelid(rel)))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot track partitioned table \"%s\" because it has or is referenced by a foreign key",
						relname),
				 errdetail("replstamp does not check foreign keys of partitioned tables on apply yet."),
				 errhint("Drop the foreign key, or track the partitions one by one.")));
}

/* Does a foreign key reference the table, or the table reference another? */
static bool
has_foreign_keys(Oid relid)
{
	Relation	con = table_open(ConstraintRelationId, AccessShareLock);
	SysScanDesc scan = systable_beginscan(con, InvalidOid, false, NULL, 0, NULL);
	HeapTuple	tup;
	bool		found = false;

	while (!found && HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		Form_pg_constraint c = (Form_pg_constraint) GETSTRUCT(tup);

		found = c->contype == CONSTRAINT_FOREIGN &&
			(c->conrelid == relid || c->confrelid == relid);
	}
	systable_endscan(scan);
	table_close(con, AccessShareLock);
	return found;
}

/*
 * TRUNCATE of a partition of a tracked partitioned table, without the
 * table itself in the statement, is refused: the TRUNCATE trigger is a
 * statement trigger, which PostgreSQL does not clone to partitions, and
 * the partition's rows would go without a stamp.  Called from the
 * ProcessUtility hook (fence.c) before the statement runs.
 */
void
stamp_check_truncate(TruncateStmt *stmt)
{
	List	   *relids = NIL;
	ListCell   *lc;

	foreach(lc, stmt->relations)
	{
		Oid			relid = RangeVarGetRelid(lfirst_node(RangeVar, lc), NoLock, true);

		if (OidIsValid(relid))
			relids = lappend_oid(relids, relid);
	}
	foreach(lc, relids)
	{
		Oid			relid = lfirst_oid(lc);
		List	   *ancestors;
		ListCell   *a;

		if (!get_rel_relispartition(relid))
			continue;
		ancestors = get_partition_ancestors(relid);
		foreach(a, ancestors)
		{
			Relation	arel;
			bool		root;

			if (list_member_oid(relids, lfirst_oid(a)))
				break;			/* its ancestor's TRUNCATE covers it */
			arel = try_relation_open(lfirst_oid(a), AccessShareLock);
			if (arel == NULL)
				continue;
			root = trigger_is_own(arel, STAMP_TRIGGER_NAME);
			relation_close(arel, AccessShareLock);
			if (root)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot truncate partition \"%s\" of tracked table \"%s\" on its own",
								get_rel_name(relid), get_rel_name(lfirst_oid(a))),
						 errdetail("replstamp replicates a TRUNCATE of the whole partitioned table only."),
						 errhint("Truncate \"%s\", or DELETE the partition's rows.",
								 get_rel_name(lfirst_oid(a)))));
		}
	}
}

/*
 * Refuse track()/untrack() of a partition whose partitioned table is
 * tracked: it carries a clone of the stamp trigger, which comes and goes
 * with the partitioned table's.
 */
static void
refuse_covered_partition(Relation rel)
{
	if (has_trigger(rel, STAMP_TRIGGER_NAME, false) && !trigger_is_own(rel, STAMP_TRIGGER_NAME))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("partition \"%s\" is tracked with its partitioned table",
						RelationGetRelationName(rel)),
				 errhint("Track or untrack the partitioned table instead.")));
}

/* The name of the row ID column track(..., row_id => true) adds. */
#define ROW_ID_COLUMN "replstamp_row_id"

/*
 * Why index idx of rel cannot be a row key, or NULL if it can: the rules
 * of ALTER TABLE ... REPLICA IDENTITY USING INDEX (unique, immediate,
 * valid, not partial, plain NOT NULL columns).
 */
static char *
key_index_unfit(Relation rel, Relation idx)
{
	const char *name = RelationGetRelationName(idx);

	if (!idx->rd_index->indisunique)
		return psprintf("index \"%s\" is not unique", name);
	if (!idx->rd_index->indimmediate)
		return psprintf("index \"%s\" is deferrable", name);
	if (!idx->rd_index->indisvalid)
		return psprintf("index \"%s\" is not valid", name);
	if (!heap_attisnull(idx->rd_indextuple, Anum_pg_index_indpred, NULL))
		return psprintf("index \"%s\" is partial", name);
	for (int i = 0; i < idx->rd_index->indnkeyatts; i++)
	{
		AttrNumber	attnum = idx->rd_index->indkey.values[i];

		if (attnum <= 0)
			return psprintf("index \"%s\" has an expression", name);
		if (!TupleDescAttr(RelationGetDescr(rel), attnum - 1)->attnotnull)
			return psprintf("column \"%s\" of index \"%s\" may be null",
							NameStr(TupleDescAttr(RelationGetDescr(rel), attnum - 1)->attname), name);
	}
	return NULL;
}

/*
 * The row key track() gives a table (see rowimage_key_index()): its primary
 * key; else the index its replica identity names; else the index asked
 * for, or the fit unique index of fewest columns (ties: the first by name),
 * which *set_identity says track() makes the replica identity.  InvalidOid
 * if none is fit; *why then says why each unique index is not.
 */
static Oid
choose_key_index(Relation rel, Oid asked, bool *set_identity, char **why)
{
	Oid			pkoid = RelationGetPrimaryKeyIndex(rel);
	const char *relname = RelationGetRelationName(rel);
	List	   *indexes;
	ListCell   *lc;
	Oid			best = InvalidOid;
	int			best_ncols = 0;
	char	   *best_name = NULL;
	StringInfoData reasons;

	*set_identity = false;
	*why = NULL;
	if (OidIsValid(pkoid) || rel->rd_rel->relreplident == REPLICA_IDENTITY_INDEX)
	{
		Oid			key = rowimage_key_index(rel);

		if (OidIsValid(asked) && asked != key)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("cannot track table \"%s\" by index \"%s\"", relname, get_rel_name(asked)),
					 OidIsValid(pkoid) ?
					 errdetail("A table with a primary key is identified by its primary key.") :
					 errdetail("Its replica identity is index \"%s\": replstamp identifies its rows by that index.",
							   get_rel_name(key)),
					 OidIsValid(pkoid) ? 0 :
					 errhint("Make the index its replica identity with ALTER TABLE ... REPLICA IDENTITY USING INDEX, or track the table without key_index.")));
		if (OidIsValid(key))
			return key;
	}
	if (rel->rd_rel->relreplident == REPLICA_IDENTITY_FULL ||
		rel->rd_rel->relreplident == REPLICA_IDENTITY_NOTHING)
	{
		*why = psprintf("its replica identity is %s, and replstamp records the row key of a table without a primary key as the table's replica identity",
						rel->rd_rel->relreplident == REPLICA_IDENTITY_FULL ? "FULL" : "NOTHING");
		return InvalidOid;
	}
	if (OidIsValid(asked))
	{
		Relation	idx = index_open(asked, AccessShareLock);
		char	   *unfit;

		if (idx->rd_index->indrelid != RelationGetRelid(rel))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("index \"%s\" is not an index of table \"%s\"",
							RelationGetRelationName(idx), relname)));
		unfit = key_index_unfit(rel, idx);
		if (unfit)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("cannot track table \"%s\" by index \"%s\"", relname,
							RelationGetRelationName(idx)),
					 errdetail("The key of a table without a primary key must be a unique, immediate, non-partial index of NOT NULL columns, but %s.",
							   unfit)));
		index_close(idx, AccessShareLock);
		*set_identity = true;
		return asked;
	}

	initStringInfo(&reasons);
	indexes = RelationGetIndexList(rel);
	foreach(lc, indexes)
	{
		Relation	idx = index_open(lfirst_oid(lc), AccessShareLock);
		char	   *unfit = idx->rd_index->indisunique ? key_index_unfit(rel, idx) : NULL;
		const char *name = RelationGetRelationName(idx);
		int			ncols = idx->rd_index->indnkeyatts;

		if (!idx->rd_index->indisunique)
			;
		else if (unfit)
			appendStringInfo(&reasons, "%s%s", reasons.len ? "; " : "", unfit);
		else if (!OidIsValid(best) || ncols < best_ncols ||
				 (ncols == best_ncols && strcmp(name, best_name) < 0))
		{
			best = lfirst_oid(lc);
			best_ncols = ncols;
			best_name = pstrdup(name);
		}
		index_close(idx, AccessShareLock);
	}
	list_free(indexes);
	if (OidIsValid(best))
		*set_identity = true;
	else
		*why = reasons.len ? reasons.data : pstrdup("it has no unique index");
	return best;
}

/*
 * Give rel a row ID (track(..., row_id => true)): a bigint column
 * replstamp_row_id, NOT NULL, filled from a sequence of its own that is
 * confined to this node's block (src/sequences.c) before it fills the
 * existing rows, with a unique index made the table's replica identity.
 * Runs in the caller's rights (the table's owner, or a member of its role):
 * no trigger fires, and the table is rewritten once.  ALTER TABLE refuses
 * a table this session holds open: rel is closed (its lock kept) and
 * opened again.
 */
static Relation
add_row_id(Relation rel, const char *qname)
{
	Oid			relid = RelationGetRelid(rel);
	Oid			nsp = RelationGetNamespace(rel);
	const char *relname = RelationGetRelationName(rel);
	const char *nspname = get_namespace_name(nsp);
	char	   *seqname = ChooseRelationName(relname, ROW_ID_COLUMN, "seq", nsp, false);
	char	   *qseq = quote_qualified_identifier(nspname, seqname);
	char	   *idxname = ChooseRelationName(relname, ROW_ID_COLUMN, "key", nsp, false);
	char	   *owner = GetUserNameFromId(rel->rd_rel->relowner, false);
	char	   *cmds[6];
	Oid			seqrelid;
	int			nestlevel;

	relname = pstrdup(relname);
	relation_close(rel, NoLock);
	nestlevel = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	SPI_connect();
	cmds[0] = psprintf("CREATE SEQUENCE %s AS bigint", qseq);
	cmds[1] = psprintf("ALTER SEQUENCE %s OWNER TO %s", qseq, quote_identifier(owner));
	for (int i = 0; i < 2; i++)
		if (SPI_execute(cmds[i], false, 0) != SPI_OK_UTILITY)
			elog(ERROR, "replstamp: \"%s\" failed", cmds[i]);
	CommandCounterIncrement();
	seqrelid = get_relname_relid(seqname, nsp);
	if (!sequences_cover_row_id(seqrelid, relid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("track() with row_id needs the extension's catalog of release 1.2"),
				 errhint("Run ALTER EXTENSION replstamp UPDATE in this database.")));
	cmds[2] = psprintf("ALTER TABLE %s ADD COLUMN %s bigint NOT NULL DEFAULT pg_catalog.nextval(%s::pg_catalog.regclass)",
					   qname, ROW_ID_COLUMN, quote_literal_cstr(qseq));
	cmds[3] = psprintf("ALTER SEQUENCE %s OWNED BY %s.%s", qseq, qname, ROW_ID_COLUMN);
	cmds[4] = psprintf("CREATE UNIQUE INDEX %s ON %s (%s)", quote_identifier(idxname), qname, ROW_ID_COLUMN);
	cmds[5] = psprintf("ALTER TABLE %s REPLICA IDENTITY USING INDEX %s", qname, quote_identifier(idxname));
	for (int i = 2; i < 6; i++)
		if (SPI_execute(cmds[i], false, 0) != SPI_OK_UTILITY)
			elog(ERROR, "replstamp: \"%s\" failed", cmds[i]);
	SPI_finish();
	AtEOXact_GUC(true, nestlevel);
	ereport(NOTICE,
			(errmsg("table \"%s\" has no primary key: column %s added as its row key", relname, ROW_ID_COLUMN),
			 errdetail("Its values come from sequence %s, confined to this node's block; unique index \"%s\" is the table's replica identity.",
					   qseq, idxname),
			 errhint("Other nodes must track the table with row_id => true while it is empty there, and get its rows by replication.")));
	return relation_open(relid, NoLock);
}

/*
 * replstamp.track(regclass [, backfill boolean [, key_index regclass
 * [, row_id boolean]]]): from now on, every change of the table is stamped;
 * with backfill, its existing rows are stamped once too (in the background,
 * in batches), also when the table is tracked already.  A table without a
 * primary key is tracked by a unique index of NOT NULL columns, made its
 * replica identity (key_index, or chosen by choose_key_index()), or, with
 * row_id, by a column of node-unique row IDs added to it.  Refuses what
 * cannot be tracked faithfully.
 */
Datum
replstamp_track(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	bool		backfill = PG_NARGS() > 1 && !PG_ARGISNULL(1) && PG_GETARG_BOOL(1);
	Oid			asked = PG_NARGS() > 2 && !PG_ARGISNULL(2) ? PG_GETARG_OID(2) : InvalidOid;
	bool		row_id = PG_NARGS() > 3 && !PG_ARGISNULL(3) && PG_GETARG_BOOL(3);
	const ReplstampCatalog *cat = catalog_get(false);
	Relation	rel;
	const char *relname;
	char	   *qname;
	char	   *cmds[4];
	BackfillOrigin origin;
	Oid			keyoid;
	bool		set_identity;
	char	   *unkeyed;

	shmem_require();
	if (backfill)
		(void) catalog_get_v11("replstamp.track()");
	rel = open_table_for_tracking(relid);
	relname = RelationGetRelationName(rel);
	refuse_covered_partition(rel);

	if (rel->rd_rel->relkind == RELKIND_PARTITIONED_TABLE)
		check_partitions(rel, relname, backfill);
	else if (rel->rd_rel->relkind != RELKIND_RELATION)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("cannot track \"%s\" because it is not a table", relname),
				 errhint("Only ordinary and partitioned tables can be tracked.")));
	if (IsCatalogRelation(rel))
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("cannot track system catalog \"%s\"", relname)));
	if (RelationGetNamespace(rel) == cat->schema)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("cannot track \"%s\" because it belongs to replstamp", relname)));
	if (rel->rd_rel->relpersistence == RELPERSISTENCE_TEMP)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("cannot track temporary table \"%s\"", relname),
				 errdetail("Temporary tables are private to one session and cannot be replicated.")));
	if (rel->rd_rel->relpersistence == RELPERSISTENCE_UNLOGGED)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("cannot track unlogged table \"%s\"", relname),
				 errdetail("An unlogged table is emptied by a crash while its stamps survive."),
				 errhint("Make the table logged first with ALTER TABLE ... SET LOGGED.")));
	qname = quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
									   relname);
	if (OidIsValid(asked) && row_id)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("key_index and row_id cannot both be given")));
	keyoid = choose_key_index(rel, asked, &set_identity, &unkeyed);
	if (rel->rd_rel->relkind == RELKIND_PARTITIONED_TABLE &&
		!OidIsValid(RelationGetPrimaryKeyIndex(rel)))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot track partitioned table \"%s\" because it has no primary key", relname),
				 errdetail("A partitioned table is tracked by its primary key only."),
				 errhint("Add a primary key with ALTER TABLE ... ADD PRIMARY KEY, then track the table.")));
	if (row_id)
	{
		/* Tracked by its row ID already (untracked since): keep it. */
		if (OidIsValid(keyoid) && !(OidIsValid(rowimage_key_index(rel)) &&
									list_length(key_columns(rel)) == 1 &&
									strcmp(linitial(key_columns(rel)), ROW_ID_COLUMN) == 0))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("table \"%s\" needs no row ID: it has a key", relname),
					 errdetail("replstamp would identify its rows by index \"%s\".", get_rel_name(keyoid)),
					 errhint("Track it without row_id.")));
		if (!OidIsValid(keyoid) && unkeyed && rel->rd_rel->relreplident != REPLICA_IDENTITY_DEFAULT)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("cannot give table \"%s\" a row ID because %s", relname, unkeyed),
					 errhint("Set ALTER TABLE ... REPLICA IDENTITY DEFAULT first.")));
		if (!OidIsValid(keyoid))
		{
			if (has_trigger(rel, STAMP_TRIGGER_NAME, false))
				ereport(ERROR,
						(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						 errmsg("cannot give tracked table \"%s\" a row ID", relname),
						 errhint("Untrack it first with replstamp.untrack() on every node.")));
			rel = add_row_id(rel, qname);
			relname = RelationGetRelationName(rel);
			keyoid = rowimage_key_index(rel);
			if (!OidIsValid(keyoid))
				elog(ERROR, "replstamp: the row ID index of \"%s\" is not its replica identity", relname);
		}
	}
	else if (!OidIsValid(keyoid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot track table \"%s\" because it has no primary key and no usable unique index", relname),
				 errdetail("replstamp identifies rows by their primary key or, without one, by a unique, immediate, non-partial index of NOT NULL columns, but %s.",
						   unkeyed),
				 errhint("Add a primary key or such an index, then track the table; or track it with row_id => true to add a column of row IDs.")));
	refuse_inexact_key(rel, keyoid, relname, false);
	if (set_identity)
	{
		char	   *cmd = psprintf("ALTER TABLE %s REPLICA IDENTITY USING INDEX %s", qname,
								   quote_identifier(get_rel_name(keyoid)));

		if (has_trigger(rel, STAMP_TRIGGER_NAME, false))
			elog(ERROR, "replstamp: tracked table \"%s\" has no row key", relname);
		relation_close(rel, NoLock);
		SPI_connect();
		if (SPI_execute(cmd, false, 0) != SPI_OK_UTILITY)
			elog(ERROR, "replstamp: \"%s\" failed", cmd);
		SPI_finish();
		rel = relation_open(relid, NoLock);
		relname = RelationGetRelationName(rel);
		ereport(NOTICE,
				(errmsg("table \"%s\" has no primary key: its rows are identified by unique index \"%s\"",
						relname, get_rel_name(keyoid)),
				 errdetail("The index is now the table's replica identity; the DDL guard keeps it."),
				 errhint("Every node must track the table by an index on the same columns.")));
	}
	if (backfill)
	{
		if (rel->rd_tableam != GetHeapamTableAmRoutine())
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("cannot backfill table \"%s\" because it does not use the heap access method",
							relname),
					 errhint("Track it without backfill.")));

		/*
		 * Under the lock that keeps writers out: the backfill stamps the row
		 * versions this snapshot sees, which were written without the stamp
		 * trigger (or before this call, when the table is tracked already);
		 * every later one has its own stamp.
		 */
		backfill_origin(rel, &origin);
	}
	if (has_trigger(rel, STAMP_TRIGGER_NAME, false))
	{
		if (!backfill)
			ereport(ERROR,
					(errcode(ERRCODE_DUPLICATE_OBJECT),
					 errmsg("table \"%s\" is already tracked", relname),
					 errhint("To stamp its existing rows once more, so that nodes lacking them get them, call replstamp.track() with backfill => true.")));
		/* Tracked already: only its existing rows are stamped once more. */
		relation_close(rel, NoLock);
		if (registry_backfill_again(relid, &origin))
			backfill_request(); /* a worker starts at commit */
		else
			ereport(NOTICE,
					(errmsg("a backfill of table \"%s\" is under way already", relname),
					 errhint("replstamp.tracked_table shows its progress.")));
		PG_RETURN_VOID();
	}

	cmds[0] = psprintf("CREATE TRIGGER %s AFTER INSERT OR UPDATE OR DELETE ON %s "
					   "FOR EACH ROW EXECUTE FUNCTION replstamp.stamp()",
					   STAMP_TRIGGER_NAME, qname);
	cmds[1] = psprintf("CREATE TRIGGER %s BEFORE TRUNCATE ON %s "
					   "FOR EACH STATEMENT EXECUTE FUNCTION replstamp.refuse_truncate()",
					   TRUNCATE_TRIGGER_NAME, qname);
	/* Stamp even under session_replication_role = replica. */
	cmds[2] = psprintf("ALTER TABLE %s ENABLE ALWAYS TRIGGER %s",
					   qname, STAMP_TRIGGER_NAME);
	cmds[3] = psprintf("ALTER TABLE %s ENABLE ALWAYS TRIGGER %s",
					   qname, TRUNCATE_TRIGGER_NAME);

	/*
	 * ALTER TABLE refuses a table this session holds open: keep the lock
	 * only.
	 */
	relation_close(rel, NoLock);
	run_as_owner((const char *const *) cmds, 4, SPI_OK_UTILITY);
	/* Registered only once the triggers are in place: see the DDL guard. */
	registry_set(cat, relid, "tracked", backfill ? &origin : NULL);
	if (backfill)
		backfill_request();		/* a worker starts at commit */
	PG_RETURN_VOID();
}

/* Is the table's name registered as a tracked table that was dropped? */
static bool
registry_dropped(const ReplstampCatalog *cat, Oid relid)
{
	ReplstampOwnerContext ctx;
	Oid			types[1] = {TEXTOID};
	Datum		values[1];
	bool		dropped;

	if (!cat->v11)
		return false;
	values[0] = CStringGetTextDatum(quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
															   get_rel_name(relid)));
	dbaccess_become_owner(&ctx);
	SPI_connect();
	dbaccess_spi_exec(catalog_sql("SELECT 1 FROM replstamp.tracked_table WHERE relation OPERATOR(pg_catalog.=) $1 "
								  "AND state OPERATOR(pg_catalog.=) 'dropped'"),
					  1, types, values, NULL, SPI_OK_SELECT);
	dropped = SPI_processed > 0;
	SPI_finish();
	dbaccess_restore_user(&ctx);
	return dropped;
}

/*
 * replstamp.untrack(regclass): stop stamping the table's changes.  The
 * changes already stamped stay in replstamp.changes until pruned.  For a
 * table that was dropped while tracked and created again untracked, it
 * records that the new table stays local.
 */
Datum
replstamp_untrack(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	const ReplstampCatalog *cat = catalog_get(false);
	Relation	rel;
	char	   *qname;
	char	   *cmds[2];
	int			ncmds = 0;

	rel = open_table_for_tracking(relid);
	refuse_covered_partition(rel);
	if (!has_trigger(rel, STAMP_TRIGGER_NAME, false) && registry_dropped(cat, relid))
	{
		/*
		 * Dropped while tracked and created again (pg_restore --clean -t),
		 * and meant to stay local: replstamp.problems names it no more.
		 */
		relation_close(rel, NoLock);
		registry_set(cat, relid, "untracked", NULL);
		PG_RETURN_VOID();
	}
	if (!has_trigger(rel, STAMP_TRIGGER_NAME, false))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("table \"%s\" is not tracked", RelationGetRelationName(rel))));

	/* Unregistered first, so that the DDL guard lets the triggers go. */
	registry_set(cat, relid, "untracked", NULL);
	qname = quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
									   RelationGetRelationName(rel));
	cmds[ncmds++] = psprintf("DROP TRIGGER %s ON %s", STAMP_TRIGGER_NAME, qname);
	if (has_trigger(rel, TRUNCATE_TRIGGER_NAME, false))
		cmds[ncmds++] = psprintf("DROP TRIGGER %s ON %s", TRUNCATE_TRIGGER_NAME, qname);
	relation_close(rel, NoLock);
	run_as_owner((const char *const *) cmds, ncmds, SPI_OK_UTILITY);
	PG_RETURN_VOID();
}

/* ---------------------------------------------------------------------
 * The DDL guard (event triggers, 1.1)
 * ---------------------------------------------------------------------
 */

/* Is the registry there, and are we outside CREATE/ALTER EXTENSION? */
static bool
guard_active(void)
{
	const ReplstampCatalog *cat;

	if (creating_extension)
		return false;
	cat = catalog_get(true);
	return cat != NULL && cat->v11 && OidIsValid(cat->tracked);
}

/*
 * A table that carries both triggers of track(), enabled ALWAYS, and is
 * not registered: pg_restore has just re-created the triggers of a table
 * that was tracked in the dumped database, whose row in replstamp.tracked_table
 * is not dumped (its relid is the dumped database's).  Register it.
 */
static void
register_restored(Oid relid)
{
	Relation	rel = try_relation_open(relid, AccessShareLock);
	bool		tracked;

	if (rel == NULL)
		return;
	tracked = (rel->rd_rel->relkind == RELKIND_RELATION ||
			   rel->rd_rel->relkind == RELKIND_PARTITIONED_TABLE) &&
		has_trigger(rel, STAMP_TRIGGER_NAME, true) &&
		has_trigger(rel, TRUNCATE_TRIGGER_NAME, true);

	/*
	 * A partition of a tracked partitioned table carries a clone of the stamp
	 * trigger; it may not be disabled there either.
	 */
	if (has_trigger(rel, STAMP_TRIGGER_NAME, false) && !trigger_is_own(rel, STAMP_TRIGGER_NAME) &&
		!trigger_intact(rel, STAMP_TRIGGER_NAME, "stamp",
						TRIGGER_TYPE_ROW | TRIGGER_TYPE_INSERT | TRIGGER_TYPE_UPDATE |
						TRIGGER_TYPE_DELETE))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot disable, replace or drop the replstamp triggers of partition \"%s\"",
						RelationGetRelationName(rel)),
				 errdetail("Changes made without them would never reach the peers."),
				 errhint("Stop tracking its partitioned table with replstamp.untrack() instead.")));
	relation_close(rel, AccessShareLock);
	if (tracked)
		registry_set(catalog_get(false), relid, "tracked", NULL);
}

/*
 * Was the primary key index of rel created in this transaction: a key
 * added, or a key column's type or collation changed (which replaces the
 * index; a table rewrite only gives it new storage)?  Only then does the
 * guard look at the key's type: a table tracked before release 1.2 with a
 * key track() now refuses keeps its other DDL.
 */
static bool
key_defined_now(Relation rel)
{
	Oid			pkoid = rowimage_key_index(rel);
	Relation	idx;
	bool		now;

	if (!OidIsValid(pkoid))
		return false;
	idx = index_open(pkoid, AccessShareLock);
	now = idx->rd_createSubid != InvalidSubTransactionId;
	index_close(idx, AccessShareLock);
	return now;
}

/*
 * Refuse if a tracked table lost what keeps its changes stamped and
 * identified on every node: its name, its triggers as track() installed
 * them, its WAL (SET UNLOGGED), its primary key or the key's columns.  The
 * caller is connected to SPI as the extension's owner.  A new key is also
 * refused if track() would refuse it.
 */
static void
check_tracked(Oid relid, const char *regname)
{
	Relation	rel = try_relation_open(relid, AccessShareLock);
	char	   *name;
	List	   *keys;
	char	   *recorded;

	if (rel == NULL)
		return;					/* dropped: the sql_drop guard records it */
	name = quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
									  RelationGetRelationName(rel));
	if (strcmp(name, regname) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot rename or move table %s because it is tracked by replstamp", regname),
				 errdetail("Peers identify its rows by the schema-qualified name."),
				 errhint("Untrack it with replstamp.untrack() on every node, rename it everywhere, then track it again.")));
	if (rel->rd_rel->relpersistence != RELPERSISTENCE_PERMANENT)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot make table %s unlogged because it is tracked by replstamp", regname),
				 errdetail("A crash would empty it on this node without a stamp for the rows it loses, so no peer would learn of it."),
				 errhint("Untrack it first with replstamp.untrack('%s').", regname)));
	keys = key_columns(rel);
	if (keys == NIL && registry_has_key_columns(catalog_get(false)) &&
		OidIsValid(registry_key_index(regname)))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot drop the row key of table %s because it is tracked by replstamp", regname),
				 errdetail("The table has no primary key: every node identifies its rows by the unique index of its replica identity."),
				 errhint("Keep a unique index on the key columns as its replica identity (ALTER TABLE ... REPLICA IDENTITY USING INDEX), "
						 "or untrack it first with replstamp.untrack('%s') on every node.", regname)));
	if (keys == NIL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot drop the primary key of table %s because it is tracked by replstamp", regname),
				 errdetail("Every node identifies the table's rows by their primary key."),
				 errhint("Untrack it first with replstamp.untrack('%s') on every node.", regname)));
	if (registry_has_key_columns(catalog_get(false)) &&
		(recorded = registry_key_differs(regname, keys, key_index_to_record(rel))) != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 OidIsValid(RelationGetPrimaryKeyIndex(rel)) ?
				 errmsg("cannot change the primary key of table %s because it is tracked by replstamp", regname) :
				 errmsg("cannot change the row key of table %s because it is tracked by replstamp", regname),
				 errdetail("Every node identifies the table's rows by (%s); the new key is (%s).",
						   recorded, names_text(keys)),
				 errhint("Untrack it with replstamp.untrack('%s') on every node, change the key everywhere, then track it again.",
						 regname)));
	if (!trigger_intact(rel, STAMP_TRIGGER_NAME, "stamp",
						TRIGGER_TYPE_ROW | TRIGGER_TYPE_INSERT | TRIGGER_TYPE_UPDATE |
						TRIGGER_TYPE_DELETE) ||
		!trigger_intact(rel, TRUNCATE_TRIGGER_NAME, "refuse_truncate",
						TRIGGER_TYPE_BEFORE | TRIGGER_TYPE_TRUNCATE))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot disable, replace or drop the replstamp triggers of table %s", regname),
				 errdetail("Changes made without them would never reach the peers."),
				 errhint("Stop tracking the table with replstamp.untrack() instead.")));
	if (key_defined_now(rel))
		refuse_inexact_key(rel, InvalidOid, regname, true);
	relation_close(rel, AccessShareLock);
}

/*
 * Did the column definition say how to fill the rows (a DEFAULT, an
 * identity, a generation expression, a serial type)?  Without, the rows
 * get the type's default: a SET DEFAULT in the same ALTER TABLE runs after
 * the rows are filled.
 */
static bool
column_def_fills(const ColumnDef *def)
{
	ListCell   *lc;

	if (def->raw_default || def->cooked_default || def->identity || def->generated)
		return true;
	foreach(lc, def->constraints)
	{
		Constraint *c = lfirst_node(Constraint, lc);

		if (c->contype == CONSTR_DEFAULT || c->contype == CONSTR_IDENTITY ||
			c->contype == CONSTR_GENERATED)
			return true;
	}
	if (def->typeName && list_length(def->typeName->names) == 1 && !def->typeName->pct_type)
	{
		const char *typname = strVal(linitial(def->typeName->names));

		if (strcmp(typname, "smallserial") == 0 || strcmp(typname, "serial2") == 0 ||
			strcmp(typname, "serial") == 0 || strcmp(typname, "serial4") == 0 ||
			strcmp(typname, "bigserial") == 0 || strcmp(typname, "serial8") == 0)
			return true;
	}
	return false;
}

/*
 * Refuse a column added to a tracked table with a default that can give
 * the rows it holds other values on other nodes: the values are written
 * by the ALTER TABLE on each node, unstamped, and never replicated.  A
 * default that can give the same value on every node is made of
 * immutable parts only (a constant, a generation expression over the
 * row); now(), clock_timestamp(), random(), gen_random_uuid(), nextval()
 * (serial, identity) are not.
 */
static void
check_added_column(Relation rel, const ColumnDef *def)
{
	AttrNumber	attnum = get_attnum(RelationGetRelid(rel), def->colname);
	Form_pg_attribute att;
	Node	   *expr;

	if (attnum == InvalidAttrNumber || attnum < 0)
		return;
	att = TupleDescAttr(RelationGetDescr(rel), attnum - 1);
	if (column_def_fills(def))
		expr = build_column_default(rel, attnum);
	else
		expr = att->attgenerated ? NULL : get_typdefault(att->atttypid);
	if (expr == NULL || !contain_mutable_functions(expr))
		return;
	ereport(ERROR,
			(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
			 errmsg("cannot add column \"%s\" to table %s with a default that can differ between nodes",
					def->colname,
					quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
											   RelationGetRelationName(rel))),
			 errdetail("The table is tracked by replstamp: each node would compute the values of the rows it holds on its own, and they are not replicated."),
			 errhint("Add the column without a default, then set the default with ALTER TABLE ... ALTER COLUMN ... SET DEFAULT, on every node; "
					 "to fill in the rows that exist, UPDATE them on one node only, once the column exists everywhere.")));
}

/* The checks of the columns an ALTER TABLE adds to tracked tables. */
static void
check_added_columns(AlterTableStmt *stmt)
{
	Oid			relid;
	List	   *relids;
	ListCell   *lc;

	if (stmt->objtype != OBJECT_TABLE || stmt->relation == NULL)
		return;
	relid = RangeVarGetRelid(stmt->relation, NoLock, true);
	if (!OidIsValid(relid))
		return;
	/* ADD COLUMN adds the column to inheritors too, unless ONLY. */
	relids = stmt->relation->inh ? find_all_inheritors(relid, NoLock, NULL) : list_make1_oid(relid);
	foreach(lc, relids)
	{
		Relation	rel = try_relation_open(lfirst_oid(lc), AccessShareLock);
		ListCell   *c;

		if (rel == NULL)
			continue;
		if (stamp_is_tracked(rel))
		{
			foreach(c, stmt->cmds)
			{
				AlterTableCmd *cmd = lfirst_node(AlterTableCmd, c);

				if (cmd->subtype == AT_AddColumn && cmd->def && IsA(cmd->def, ColumnDef))
					check_added_column(rel, (ColumnDef *) cmd->def);
			}
		}
		relation_close(rel, AccessShareLock);
	}
}

/*
 * replstamp._ddl_guard(): event trigger on ddl_command_end for ALTER TABLE,
 * CREATE TRIGGER, ALTER TRIGGER and ALTER SCHEMA: a tracked table keeps its
 * name and its triggers as track() installed them, and gets no column
 * whose default fills its rows with values that differ between nodes; a
 * table whose triggers pg_restore re-enables is registered.
 *
 * It runs in the session of whoever ran the DDL, with that session's
 * search_path: its queries run as the extension's owner with a safe one,
 * and name every operator.
 */
Datum
replstamp_ddl_guard(PG_FUNCTION_ARGS)
{
	ReplstampOwnerContext ctx;

	if (!CALLED_AS_EVENT_TRIGGER(fcinfo))
		elog(ERROR, "replstamp._ddl_guard() must be called as an event trigger");
	if (!guard_active())
		PG_RETURN_VOID();

	/* In the caller's own rights: it has just altered the tables. */
	{
		EventTriggerData *trigdata = (EventTriggerData *) fcinfo->context;

		if (trigdata->parsetree && IsA(trigdata->parsetree, AlterTableStmt))
			check_added_columns((AlterTableStmt *) trigdata->parsetree);
	}

	dbaccess_become_owner(&ctx);
	SPI_connect();

	/*
	 * The tables the command touched, itself or a trigger of it, and the
	 * tracked tables of a schema it touched; with their registered names
	 * (NULL: not tracked).
	 */
	if (SPI_execute(catalog_sql("WITH cmd AS (SELECT classid, objid FROM pg_catalog.pg_event_trigger_ddl_commands()), "
								"touched AS ("
								"  SELECT cmd.objid AS relid FROM cmd "
								"  WHERE cmd.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass "
								"  UNION SELECT g.tgrelid FROM cmd JOIN pg_catalog.pg_trigger g "
								"  ON g.oid OPERATOR(pg_catalog.=) cmd.objid "
								"  WHERE cmd.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_trigger'::pg_catalog.regclass "
								"  UNION SELECT c.oid FROM cmd JOIN pg_catalog.pg_class c "
								"  ON c.relnamespace OPERATOR(pg_catalog.=) cmd.objid "
								"  JOIN replstamp.tracked_table t ON t.relid OPERATOR(pg_catalog.=) c.oid "
								"  AND t.state OPERATOR(pg_catalog.=) 'tracked' "
								"  WHERE cmd.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_namespace'::pg_catalog.regclass) "
								"SELECT x.relid, t.relation FROM touched x LEFT JOIN replstamp.tracked_table t "
								"ON t.relid OPERATOR(pg_catalog.=) x.relid AND t.state OPERATOR(pg_catalog.=) 'tracked'"),
					true, 0) != SPI_OK_SELECT)
		elog(ERROR, "replstamp: could not read the DDL commands");
	if (SPI_processed > 0)
	{
		int			n = SPI_processed;
		Oid		   *relids = palloc(sizeof(Oid) * n);
		char	  **regnames = palloc(sizeof(char *) * n);
		bool		isnull;

		/* Copied first: registering a table runs queries of its own. */
		for (int i = 0; i < n; i++)
		{
			relids[i] = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[i],
													   SPI_tuptable->tupdesc, 1, &isnull));
			regnames[i] = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2);
		}
		for (int i = 0; i < n; i++)
		{
			if (regnames[i])
			{
				check_tracked(relids[i], regnames[i]);
				/* A serial or identity column added to a tracked table. */
				sequences_cover_table(relids[i]);
			}
			else
				register_restored(relids[i]);
		}
	}
	SPI_finish();
	dbaccess_restore_user(&ctx);
	PG_RETURN_VOID();
}

/*
 * replstamp._drop_guard(): event trigger on sql_drop: a dropped tracked
 * table is recorded as dropped; the stamp trigger of a table that stays
 * cannot be dropped.
 */
Datum
replstamp_drop_guard(PG_FUNCTION_ARGS)
{
	ReplstampOwnerContext ctx;

	if (!CALLED_AS_EVENT_TRIGGER(fcinfo))
		elog(ERROR, "replstamp._drop_guard() must be called as an event trigger");
	if (!guard_active())
		PG_RETURN_VOID();

	/* As the owner, with a safe search_path: see replstamp_ddl_guard(). */
	dbaccess_become_owner(&ctx);
	SPI_connect();
	/* Tracked tables that are gone now. */
	if (SPI_execute(catalog_sql("UPDATE replstamp.tracked_table t SET state = 'dropped', relid = NULL, "
								"since = pg_catalog.now() "
								"FROM pg_catalog.pg_event_trigger_dropped_objects() d "
								"WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass "
								"AND d.objid OPERATOR(pg_catalog.=) t.relid AND d.objsubid OPERATOR(pg_catalog.=) 0 "
								"AND t.state OPERATOR(pg_catalog.=) 'tracked'"),
					false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "replstamp: could not record dropped tables");
	sequences_forget_dropped();

	/*
	 * Was one of our triggers dropped from a table that stays tracked, or the
	 * index that is its row key (DROP INDEX, which no ALTER TABLE reports)?
	 */
	if (SPI_execute(psprintf(catalog_sql("SELECT t.relid, t.relation FROM replstamp.tracked_table t "
										 "WHERE t.state OPERATOR(pg_catalog.=) 'tracked' AND EXISTS (SELECT 1 FROM "
										 "pg_catalog.pg_event_trigger_dropped_objects() d "
										 "WHERE d.object_type OPERATOR(pg_catalog.=) 'trigger' AND (d.object_identity OPERATOR(pg_catalog.~~) '"
										 STAMP_TRIGGER_NAME " on %%' OR d.object_identity OPERATOR(pg_catalog.~~) '"
										 TRUNCATE_TRIGGER_NAME " on %%')%s)"),
							 registry_has_key_columns(catalog_get(false)) ?
							 " OR d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass "
							 "AND d.objid OPERATOR(pg_catalog.=) t.key_index" : ""),
					true, 0) != SPI_OK_SELECT)
		elog(ERROR, "replstamp: could not read replstamp.tracked_table");
	if (SPI_processed > 0)
	{
		int			n = SPI_processed;
		Oid		   *relids = palloc(sizeof(Oid) * n);
		char	  **names = palloc(sizeof(char *) * n);
		bool		isnull;

		for (int i = 0; i < n; i++)
		{
			relids[i] = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[i],
													   SPI_tuptable->tupdesc, 1, &isnull));
			names[i] = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2);
		}
		for (int i = 0; i < n; i++)
			check_tracked(relids[i], names[i]);
	}
	SPI_finish();
	dbaccess_restore_user(&ctx);
	PG_RETURN_VOID();
}

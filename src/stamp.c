/*-------------------------------------------------------------------------
 *
 * stamp.c
 *		The data manager: an AFTER ROW trigger that writes one row to
 *		replstamp.changes per INSERT, UPDATE or DELETE of a tracked table,
 *		in the writer's transaction, and track()/untrack() to install it.
 *
 * The trigger is on the hot path of every write, so it builds no SQL: the
 * OIDs of the extension's relations and the state row are cached per
 * backend (node.c), the per-table column layout (names, output functions,
 * primary key) is cached here and dropped on a relcache invalidation of the
 * table, and the change row goes in with heap_insert() plus one index
 * insert.  It runs in the after-trigger per-tuple memory context, which the
 * trigger manager resets after every row.
 *
 * Row images are jsonb objects keyed by column name: booleans as booleans,
 * integers and finite numerics as numbers, everything else as the text its
 * output function gives, so that any peer can feed it back through the
 * column type's input function.  Stored generated columns are left out (the
 * peer computes them).
 *
 * Copyright (c) 2026, the replstamp authors
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/catalog.h"
#include "catalog/index.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "parser/parse_relation.h"
#include "storage/proc.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/rel.h"
#include "utils/timestamp.h"

#include "identity.h"
#include "replstamp.h"
#include "serial.h"
#include "stamp.h"

PG_FUNCTION_INFO_V1(replstamp_stamp);
PG_FUNCTION_INFO_V1(replstamp_refuse_truncate);
PG_FUNCTION_INFO_V1(replstamp_track);
PG_FUNCTION_INFO_V1(replstamp_untrack);
PG_FUNCTION_INFO_V1(replstamp_row_hash);

/* How a column's value goes into a row image. */
typedef enum StampKind
{
	STAMP_BOOL,
	STAMP_INT2,
	STAMP_INT4,
	STAMP_INT8,
	STAMP_NUMERIC,
	STAMP_TEXT					/* via the type's output function */
} StampKind;

typedef struct StampColumn
{
	AttrNumber	attnum;
	StampKind	kind;
	const char *name;
	int			namelen;
	FmgrInfo	out;			/* for STAMP_TEXT */
} StampColumn;

/* Per-table layout, keyed by relation OID. */
typedef struct StampRelInfo
{
	Oid			relid;			/* hash key */
	bool		valid;
	MemoryContext cxt;			/* owns everything below */
	text	   *relname;		/* schema-qualified, quoted where needed */
	int			ncols;
	StampColumn *cols;			/* every live, non-generated column */
	int			npk;
	StampColumn *pk;			/* primary key columns, in key order */
} StampRelInfo;

static HTAB *relinfo_hash = NULL;

/* Constant op names, made once per backend. */
static text *op_insert = NULL;
static text *op_update = NULL;
static text *op_delete = NULL;

/*
 * The indexes of replstamp.changes (plain column indexes, and partial ones
 * on applied changes only), cached until a relcache invalidation of the
 * table.
 */
typedef struct ChangesIndex
{
	Oid			indexoid;
	IndexInfo  *info;
	bool		applied_only;	/* WHERE applied: nothing the trigger writes */
} ChangesIndex;

static ChangesIndex *changes_indexes = NULL;
static int	changes_nindexes = 0;
static Oid	changes_indexes_relid = InvalidOid;

static bool applying = false;

static void
relinfo_callback(Datum arg, Oid relid)
{
	HASH_SEQ_STATUS status;
	StampRelInfo *info;

	if (relinfo_hash == NULL)
		return;
	if (OidIsValid(relid))
	{
		info = hash_search(relinfo_hash, &relid, HASH_FIND, NULL);
		if (info)
			info->valid = false;
		if (relid == changes_indexes_relid)
			changes_indexes_relid = InvalidOid;
		return;
	}
	hash_seq_init(&status, relinfo_hash);
	while ((info = hash_seq_search(&status)) != NULL)
		info->valid = false;
	changes_indexes_relid = InvalidOid;
}

static void
stamp_xact_callback(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_ABORT || event == XACT_EVENT_COMMIT ||
		event == XACT_EVENT_PARALLEL_ABORT || event == XACT_EVENT_PARALLEL_COMMIT ||
		event == XACT_EVENT_PREPARE)
		applying = false;
}

/*
 * Register caches and callbacks.  Called from _PG_init.
 */
void
stamp_init(void)
{
	CacheRegisterRelcacheCallback(relinfo_callback, (Datum) 0);
	RegisterXactCallback(stamp_xact_callback, NULL);
}

void
stamp_begin_apply(void)
{
	applying = true;
}

void
stamp_end_apply(void)
{
	applying = false;
}

bool
stamp_applying(void)
{
	return applying;
}

static void
column_init(StampColumn *col, Form_pg_attribute att, MemoryContext cxt)
{
	col->attnum = att->attnum;
	col->name = MemoryContextStrdup(cxt, NameStr(att->attname));
	col->namelen = strlen(col->name);
	switch (att->atttypid)
	{
		case BOOLOID:
			col->kind = STAMP_BOOL;
			break;
		case INT2OID:
			col->kind = STAMP_INT2;
			break;
		case INT4OID:
			col->kind = STAMP_INT4;
			break;
		case INT8OID:
			col->kind = STAMP_INT8;
			break;
		case NUMERICOID:
			col->kind = STAMP_NUMERIC;
			break;
		default:
			{
				Oid			outfunc;
				bool		isvarlena;

				col->kind = STAMP_TEXT;
				getTypeOutputInfo(att->atttypid, &outfunc, &isvarlena);
				fmgr_info_cxt(outfunc, &col->out, cxt);
			}
			break;
	}
}

static void
relinfo_build(StampRelInfo *info, Relation rel)
{
	TupleDesc	desc = RelationGetDescr(rel);
	MemoryContext old;
	Oid			pkoid;
	Relation	pkrel;

	if (info->cxt)
		MemoryContextReset(info->cxt);
	else
		info->cxt = AllocSetContextCreate(CacheMemoryContext,
										  "replstamp table layout",
										  ALLOCSET_SMALL_SIZES);
	old = MemoryContextSwitchTo(info->cxt);

	info->relname = cstring_to_text(
		quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
								   RelationGetRelationName(rel)));

	info->cols = palloc(sizeof(StampColumn) * desc->natts);
	info->ncols = 0;
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (att->attisdropped || att->attgenerated)
			continue;
		column_init(&info->cols[info->ncols++], att, info->cxt);
	}

	pkoid = RelationGetPrimaryKeyIndex(rel);
	if (!OidIsValid(pkoid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("tracked table \"%s\" has no primary key",
						RelationGetRelationName(rel)),
				 errdetail("replstamp identifies rows by their primary key."),
				 errhint("Add a primary key to the table, or stop tracking it with replstamp.untrack().")));
	pkrel = index_open(pkoid, AccessShareLock);
	info->npk = pkrel->rd_index->indnkeyatts;
	info->pk = palloc(sizeof(StampColumn) * info->npk);
	for (int i = 0; i < info->npk; i++)
		column_init(&info->pk[i],
					TupleDescAttr(desc, pkrel->rd_index->indkey.values[i] - 1),
					info->cxt);
	index_close(pkrel, AccessShareLock);

	MemoryContextSwitchTo(old);
	info->valid = true;
}

static StampRelInfo *
relinfo_get(Relation rel)
{
	Oid			relid = RelationGetRelid(rel);
	StampRelInfo *info;
	bool		found;

	if (relinfo_hash == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(StampRelInfo);
		ctl.hcxt = CacheMemoryContext;
		relinfo_hash = hash_create("replstamp table layouts", 64, &ctl,
								   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}

	info = hash_search(relinfo_hash, &relid, HASH_ENTER, &found);
	if (!found)
	{
		info->valid = false;
		info->cxt = NULL;
	}
	if (!info->valid)
		relinfo_build(info, rel);
	return info;
}

static void
column_value(StampColumn *col, Datum value, bool isnull, JsonbValue *v)
{
	if (isnull)
	{
		v->type = jbvNull;
		return;
	}
	switch (col->kind)
	{
		case STAMP_BOOL:
			v->type = jbvBool;
			v->val.boolean = DatumGetBool(value);
			return;
		case STAMP_INT2:
			v->type = jbvNumeric;
			v->val.numeric = int64_to_numeric(DatumGetInt16(value));
			return;
		case STAMP_INT4:
			v->type = jbvNumeric;
			v->val.numeric = int64_to_numeric(DatumGetInt32(value));
			return;
		case STAMP_INT8:
			v->type = jbvNumeric;
			v->val.numeric = int64_to_numeric(DatumGetInt64(value));
			return;
		case STAMP_NUMERIC:
			{
				Numeric		num = DatumGetNumeric(value);

				/* JSON has no NaN or Infinity: those go as text */
				if (!numeric_is_nan(num) && !numeric_is_inf(num))
				{
					v->type = jbvNumeric;
					v->val.numeric = num;
					return;
				}
				v->type = jbvString;
				v->val.string.val = DatumGetCString(DirectFunctionCall1(numeric_out,
																		value));
				v->val.string.len = strlen(v->val.string.val);
				return;
			}
		case STAMP_TEXT:
			v->type = jbvString;
			v->val.string.val = OutputFunctionCall(&col->out, value);
			v->val.string.len = strlen(v->val.string.val);
			return;
	}
}

static Jsonb *
build_image(StampColumn *cols, int ncols, TupleDesc desc, HeapTuple tuple)
{
	JsonbParseState *state = NULL;
	JsonbValue *result;

	pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	for (int i = 0; i < ncols; i++)
	{
		StampColumn *col = &cols[i];
		JsonbValue	key;
		JsonbValue	val;
		bool		isnull;
		Datum		d = heap_getattr(tuple, col->attnum, desc, &isnull);

		key.type = jbvString;
		key.val.string.val = (char *) col->name;
		key.val.string.len = col->namelen;
		pushJsonbValue(&state, WJB_KEY, &key);
		column_value(col, d, isnull, &val);
		pushJsonbValue(&state, WJB_VALUE, &val);
	}
	result = pushJsonbValue(&state, WJB_END_OBJECT, NULL);
	return JsonbValueToJsonb(result);
}

/*
 * The row's identity across nodes as a number: table name and key.
 */
int64
stamp_row_hash(text *relation, Jsonb *pk)
{
	uint32		h1 = hash_bytes((const unsigned char *) VARDATA_ANY(relation),
								VARSIZE_ANY_EXHDR(relation));
	uint32		h2 = DatumGetUInt32(DirectFunctionCall1(jsonb_hash, JsonbPGetDatum(pk)));

	return (int64) (((uint64) h1 << 32) | h2);
}

/*
 * replstamp.row_hash(relation text, pk jsonb) RETURNS bigint
 */
Datum
replstamp_row_hash(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT64(stamp_row_hash(PG_GETARG_TEXT_PP(0), PG_GETARG_JSONB_P(1)));
}

/*
 * Schema-qualified name of a table as it appears in replstamp.changes.
 */
text *
stamp_relation_name(Relation rel)
{
	return relinfo_get(rel)->relname;
}

/*
 * The primary key of a row, as a jsonb object.
 */
Jsonb *
stamp_pk_image(Relation rel, HeapTuple tuple)
{
	StampRelInfo *info = relinfo_get(rel);

	return build_image(info->pk, info->npk, RelationGetDescr(rel), tuple);
}

/*
 * The whole row (generated columns left out), as a jsonb object.
 */
Jsonb *
stamp_row_image(Relation rel, HeapTuple tuple)
{
	StampRelInfo *info = relinfo_get(rel);

	return build_image(info->cols, info->ncols, RelationGetDescr(rel), tuple);
}

static void
init_op_names(void)
{
	MemoryContext old;

	if (op_insert)
		return;
	old = MemoryContextSwitchTo(TopMemoryContext);
	op_insert = cstring_to_text("INSERT");
	op_update = cstring_to_text("UPDATE");
	op_delete = cstring_to_text("DELETE");
	MemoryContextSwitchTo(old);
}

static bool has_trigger(Relation rel, const char *tgname);

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
 * Cache the indexes of replstamp.changes.  They are the extension's own:
 * plain column indexes, no expressions, no predicates.
 */
static void
load_changes_indexes(Relation changes)
{
	List	   *indexes = RelationGetIndexList(changes);
	MemoryContext old = MemoryContextSwitchTo(CacheMemoryContext);
	ListCell   *lc;
	int			n = 0;

	if (changes_indexes)
	{
		for (int i = 0; i < changes_nindexes; i++)
			pfree(changes_indexes[i].info);
		pfree(changes_indexes);
	}
	changes_indexes = palloc(sizeof(ChangesIndex) * Max(list_length(indexes), 1));
	foreach(lc, indexes)
	{
		Relation	irel = index_open(lfirst_oid(lc), AccessShareLock);
		IndexInfo  *ii = BuildIndexInfo(irel);

		bool		applied_only = false;

		/* A predicate must be "WHERE applied": the trigger writes false. */
		if (ii->ii_Predicate != NIL)
		{
			Node	   *pred = linitial(ii->ii_Predicate);
			AttrNumber	applied_att = attnameAttNum(changes, "applied", false);

			if (list_length(ii->ii_Predicate) == 1 && IsA(pred, Var) &&
				((Var *) pred)->varattno == applied_att)
				applied_only = true;
		}
		if (ii->ii_Expressions != NIL || (ii->ii_Predicate != NIL && !applied_only))
			elog(ERROR, "replstamp.changes has an unsupported index \"%s\"",
				 RelationGetRelationName(irel));
		changes_indexes[n].indexoid = lfirst_oid(lc);
		changes_indexes[n].info = ii;
		changes_indexes[n].applied_only = applied_only;
		n++;
		index_close(irel, AccessShareLock);
	}
	MemoryContextSwitchTo(old);
	changes_nindexes = n;
	changes_indexes_relid = RelationGetRelid(changes);
	list_free(indexes);
}

/* The (sub)transaction that holds the locks on replstamp.changes. */
static LocalTransactionId locked_lxid = InvalidLocalTransactionId;
static SubTransactionId locked_subid = InvalidSubTransactionId;
static Oid	locked_relid = InvalidOid;

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
	TupleDesc	desc;
	const ReplstampCatalog *cat;
	const ReplstampNode *node;
	StampRelInfo *info;
	HeapTuple	keytuple;
	HeapTuple	newtuple;
	text	   *op;
	Datum		values[9];
	bool		nulls[9] = {false, false, false, false, false, false, false, false, false};
	Relation	changes;
	HeapTuple	change;
	int64		serial;
	LOCKMODE	lockmode;

	check_trigger_call(fcinfo, "replstamp.stamp");
	if (!TRIGGER_FIRED_AFTER(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("replstamp.stamp() must be fired AFTER ... FOR EACH ROW"),
				 errhint("Use replstamp.track() to install it.")));

	/* Replicated changes arrive with their stamps: the replicator writes them. */
	if (applying)
		return PointerGetDatum(NULL);

	rel = trigdata->tg_relation;
	desc = RelationGetDescr(rel);
	init_op_names();

	if (TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
	{
		op = op_insert;
		keytuple = newtuple = trigdata->tg_trigtuple;
	}
	else if (TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
	{
		op = op_update;
		keytuple = trigdata->tg_trigtuple;
		newtuple = trigdata->tg_newtuple;
	}
	else if (TRIGGER_FIRED_BY_DELETE(trigdata->tg_event))
	{
		op = op_delete;
		keytuple = trigdata->tg_trigtuple;
		newtuple = NULL;
	}
	else
		elog(ERROR, "replstamp.stamp() fired for an unexpected event");

	cat = replstamp_catalog(false);
	/* A restored copy must not stamp with its old ID: check before the first stamp. */
	identity_ensure_verified();
	node = replstamp_node();
	info = relinfo_get(rel);

	values[2] = PointerGetDatum(info->relname);
	values[3] = PointerGetDatum(op);
	values[4] = JsonbPGetDatum(build_image(info->pk, info->npk, desc, keytuple));
	if (newtuple)
		values[5] = JsonbPGetDatum(build_image(info->cols, info->ncols, desc, newtuple));
	else
		nulls[5] = true;
	values[6] = TimestampTzGetDatum(serial_stamp_time());
	values[7] = Int64GetDatum(stamp_row_hash(info->relname, DatumGetJsonbP(values[4])));

	values[8] = BoolGetDatum(false);	/* applied: no, stamped here */

	serial = serial_take(cat->serial_seq);
	values[0] = UUIDPGetDatum(&node->replica_id);
	values[1] = Int64GetDatum(serial);

	/*
	 * Lock replstamp.changes and its indexes once per (sub)transaction, and
	 * keep the locks to its end as any DML does: the lock manager is not
	 * visited again for every row.
	 */
	lockmode = RowExclusiveLock;
	if (locked_lxid == MyProc->lxid && locked_subid == GetCurrentSubTransactionId() &&
		locked_relid == cat->changes)
		lockmode = NoLock;
	changes = table_open(cat->changes, lockmode);
	if (changes_indexes_relid != cat->changes)
		load_changes_indexes(changes);

	change = heap_form_tuple(RelationGetDescr(changes), values, nulls);
	simple_heap_insert(changes, change);
	for (int i = 0; i < changes_nindexes; i++)
	{
		IndexInfo  *ii = changes_indexes[i].info;
		Datum		ivalues[INDEX_MAX_KEYS];
		bool		inulls[INDEX_MAX_KEYS];
		Relation	irel;

		if (changes_indexes[i].applied_only)
			continue;
		irel = index_open(changes_indexes[i].indexoid, lockmode);

		for (int k = 0; k < ii->ii_NumIndexAttrs; k++)
		{
			AttrNumber	att = ii->ii_IndexAttrNumbers[k];

			ivalues[k] = values[att - 1];
			inulls[k] = nulls[att - 1];
		}
		index_insert(irel, ivalues, inulls, &change->t_self, changes,
					 ii->ii_Unique ? UNIQUE_CHECK_YES : UNIQUE_CHECK_NO,
					 false, ii);
		index_close(irel, NoLock);
	}
	table_close(changes, NoLock);
	locked_lxid = MyProc->lxid;
	locked_subid = GetCurrentSubTransactionId();
	locked_relid = cat->changes;

	return PointerGetDatum(NULL);
}

/*
 * replstamp.refuse_truncate(): BEFORE TRUNCATE FOR EACH STATEMENT.
 * TRUNCATE fires no row triggers, so it would remove rows without a stamp.
 */
Datum
replstamp_refuse_truncate(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	check_trigger_call(fcinfo, "replstamp.refuse_truncate");
	ereport(ERROR,
			(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
			 errmsg("cannot truncate table \"%s\" because it is tracked by replstamp",
					RelationGetRelationName(trigdata->tg_relation)),
			 errdetail("TRUNCATE removes rows without stamping the change, so peers would never learn of it."),
			 errhint("Use DELETE, or stop tracking the table first with replstamp.untrack().")));
	PG_RETURN_NULL();
}

/*
 * Is the table tracked (does it carry the stamp trigger)?
 */
bool
stamp_is_tracked(Relation rel)
{
	return has_trigger(rel, STAMP_TRIGGER_NAME);
}

static bool
has_trigger(Relation rel, const char *tgname)
{
	TriggerDesc *td = rel->trigdesc;

	if (td == NULL)
		return false;
	for (int i = 0; i < td->numtriggers; i++)
		if (strcmp(td->triggers[i].tgname, tgname) == 0)
			return true;
	return false;
}

/* Run DDL through SPI as the extension owner, with a safe search_path. */
static void
run_ddl_as_owner(const char *const *commands, int ncommands)
{
	ReplstampOwnerContext ctx;

	replstamp_become_owner(&ctx);
	SPI_connect();
	for (int i = 0; i < ncommands; i++)
	{
		int			ret = SPI_execute(commands[i], false, 0);

		if (ret != SPI_OK_UTILITY)
			elog(ERROR, "replstamp: \"%s\" failed: %s", commands[i],
				 SPI_result_code_string(ret));
	}
	SPI_finish();
	replstamp_restore_user(&ctx);
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
 * replstamp.track(regclass): from now on, every change of the table is
 * stamped.  Refuses what cannot be tracked faithfully.
 */
Datum
replstamp_track(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	const ReplstampCatalog *cat = replstamp_catalog(false);
	Relation	rel;
	const char *relname;
	char	   *qname;
	char	   *cmds[4];

	serial_require_shmem();
	rel = open_table_for_tracking(relid);
	relname = RelationGetRelationName(rel);

	if (rel->rd_rel->relkind == RELKIND_PARTITIONED_TABLE)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("cannot track partitioned table \"%s\"", relname),
				 errdetail("replstamp stamps the changes of each partition under the partition's own name."),
				 errhint("Track each partition instead.")));
	if (rel->rd_rel->relkind != RELKIND_RELATION)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("cannot track \"%s\" because it is not a table", relname),
				 errhint("Only ordinary tables with a primary key can be tracked.")));
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
	if (!OidIsValid(RelationGetPrimaryKeyIndex(rel)))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot track table \"%s\" because it has no primary key", relname),
				 errdetail("replstamp identifies rows by their primary key."),
				 errhint("Add a primary key with ALTER TABLE ... ADD PRIMARY KEY, then track the table.")));
	if (has_trigger(rel, STAMP_TRIGGER_NAME))
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("table \"%s\" is already tracked", relname)));

	qname = quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
									   relname);
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
	/* ALTER TABLE refuses a table this session holds open: keep the lock. */
	relation_close(rel, NoLock);
	run_ddl_as_owner((const char *const *) cmds, 4);
	PG_RETURN_VOID();
}

/*
 * replstamp.untrack(regclass): stop stamping the table's changes.  The
 * changes already stamped stay in replstamp.changes.
 */
Datum
replstamp_untrack(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	Relation	rel;
	char	   *qname;
	char	   *cmds[2];
	int			ncmds = 0;

	(void) replstamp_catalog(false);
	rel = open_table_for_tracking(relid);
	if (!has_trigger(rel, STAMP_TRIGGER_NAME))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("table \"%s\" is not tracked", RelationGetRelationName(rel))));

	qname = quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
									   RelationGetRelationName(rel));
	cmds[ncmds++] = psprintf("DROP TRIGGER %s ON %s", STAMP_TRIGGER_NAME, qname);
	if (has_trigger(rel, TRUNCATE_TRIGGER_NAME))
		cmds[ncmds++] = psprintf("DROP TRIGGER %s ON %s", TRUNCATE_TRIGGER_NAME, qname);
	relation_close(rel, NoLock);
	run_ddl_as_owner((const char *const *) cmds, ncmds);
	PG_RETURN_VOID();
}

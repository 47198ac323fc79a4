/*-------------------------------------------------------------------------
 *
 * apply.c
 *		Applying one change pulled from a peer: find and lock its row,
 *		decide by last writer wins against the row's latest version
 *		(rowversion.c), write the row with the executor's own routines (as
 *		PostgreSQL's logical replication apply worker does: no SQL is built
 *		or planned), record the change with its original stamp.  The cost
 *		per change does not depend on the backlog or on the row's history.
 *
 * The caller (sync.c) groups changes in pages, one transaction each, and
 * calls apply_page_begin()/apply_page_end() around them; the tables a page
 * touches are opened once per page, their layout and column metadata once
 * per sync.  Every change runs in a memory context reset after it.
 *
 * Security: everything a table owner controls runs as that owner, in a
 * security-restricted operation, and whatever settings that code changes
 * are rolled back after the change (dbaccess.c): type input (domain
 * checks), key lookups (operator classes), triggers (ENABLE REPLICA and
 * ENABLE ALWAYS ones; session_replication_role is 'replica' during a
 * sync), defaults of absent columns, constraints, index expressions.  The
 * rows the apply itself writes are not stamped again (stamp.c); rows a
 * table owner's trigger writes meanwhile are stamped as local changes.
 *
 * Schema differences: a change whose image lacks a column of the table
 * writes the column's default (INSERT) or keeps its value (UPDATE); a
 * column the table lacks is left out, and the row's version is marked
 * partial so that the value can be filled in once the column exists here
 * (sync.c).  Key columns must be the same on both nodes.  Values are
 * converted with the column's type modifier, as INSERT does.
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/nbtree.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/dependency.h"
#include "catalog/namespace.h"
#include "catalog/pg_inherits.h"
#include "catalog/pg_type.h"
#include "commands/sequence.h"
#include "commands/trigger.h"
#include "executor/execPartition.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "nodes/makefuncs.h"
#include "optimizer/optimizer.h"
#include "rewrite/rewriteHandler.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/regproc.h"
#include "utils/snapmgr.h"

#include "apply.h"
#include "catalog.h"
#include "compat.h"
#include "constraints.h"
#include "dbaccess.h"
#include "ddl.h"
#include "errors.h"
#include "rowimage.h"
#include "rowversion.h"
#include "serial.h"
#include "stamp.h"

/* Longest table name accepted from a peer (two quoted identifiers). */
#define MAX_RELATION_LEN	(NAMEDATALEN * 4 + 8)

typedef enum TableState
{
	TABLE_OK,
	TABLE_IGNORED				/* dropped or untracked here */
} TableState;

/* A table the sync writes to. */
typedef struct ApplyTable
{
	char		relation[MAX_RELATION_LEN]; /* hash key: the change's name */
	TableState	state;
	Oid			relid;
	Oid			owner;
	int64		conflicts;		/* in this page */
	List	   *dropped;		/* columns dropped here (not carried) */
	bool		partitioned;	/* rows are written to its leaf partitions */
	struct HTAB *leaves;		/* partitioned: LeafEntry by OID, for the sync */

	/* Open for the current page only. */
	bool		open;
	Relation	rel;
	RowLayout  *layout;
	EState	   *estate;
	ResultRelInfo *rri;
	EPQState	epq;
	TupleTableSlot *keyslot;
	TupleTableSlot *localslot;
	TupleTableSlot *newslot;
	TupleTableSlot *baseslot;	/* the old row of a key-changing UPDATE */
	/* find_row()'s scan of the primary key, begun once per page */
	Relation	pkidx;
	int			npkkeys;
	ScanKeyData pkkeys[INDEX_MAX_KEYS];
	SnapshotData dirty;
	IndexScanDesc pkscan;
	MemoryContext pkscan_cxt;	/* the page's: what the scan keeps lives there */
	ExprState **defaults;		/* per attribute, built on first use */
	bool	   *defaults_built;
	/* partitioned, for the current page: tuple routing */
	ModifyTableState *mtstate;
	PartitionTupleRouting *proute;
} ApplyTable;

/* A leaf partition of a partitioned table the sync writes to. */
typedef struct LeafEntry
{
	Oid			relid;			/* hash key */
	ApplyTable *t;
} LeafEntry;

/* The log's highest serial of a replica ID, as far as this sync knows. */
typedef struct HeldUpto
{
	pg_uuid_t	id;				/* hash key */
	int64		max;
} HeldUpto;

typedef struct SkipKey
{
	pg_uuid_t	id;
	int64		serial;
} SkipKey;

struct ApplySession
{
	MemoryContext cxt;			/* the sync */
	MemoryContext page_cxt;		/* one page */
	MemoryContext row_cxt;		/* one change */
	const char *peer;
	const ReplstampCatalog *cat;
	HTAB	   *tables;
	HTAB	   *skips;			/* replstamp.skip() requests not met yet */
	HTAB	   *held;			/* HeldUpto by replica ID (change_held()) */
	ReconcileState *reconcile;
	RowVersionWriter *rvw;		/* the current page's */
	/* replstamp.conflict, once the page records a conflict */
	Relation	clog;
	EState	   *clog_estate;
	ResultRelInfo *clog_rri;
	TupleTableSlot *clog_slot;
	Oid			clog_seq;		/* the sequence of its ids */
	List	   *open_tables;
	int64		conflicts;
	int64		skipped;
	ConstraintState *cons;		/* foreign keys to check (constraints.c) */
	bool		causal;			/* every page holds what its writers had seen */
};

/* What an error while applying a change names: never row values. */
typedef struct ApplyErrorArg
{
	ApplySession *s;
	Change	   *change;
} ApplyErrorArg;

static ApplyTable *resolve_table(ApplySession *s, Change *change);
static void table_open_page(ApplySession *s, ApplyTable *t);
static void log_conflict(ApplySession *s, ApplyTable *t, Change *change, ChangeRow *row,
						 const char *kind, const Version *winner, const Version *loser,
						 Change *lost);

static void
apply_error_context(void *arg)
{
	ApplyErrorArg *a = arg;

	errcontext("applying change %s/" INT64_FORMAT " (%s) of table %s from peer \"%s\"",
			   catalog_uuid_text(&a->change->replica_id), a->change->serial,
			   changelog_op_name(a->change->op),
			   text_to_cstring(a->change->relation), a->s->peer);
}

/*
 * Start applying changes from peer; the session lives in cxt.  Call in a
 * transaction (it reads the pending skip requests).
 */
ApplySession *
apply_session_begin(const char *peer, MemoryContext cxt)
{
	ApplySession *s = MemoryContextAllocZero(cxt, sizeof(ApplySession));
	HASHCTL		ctl;
	ReplstampOwnerContext octx;

	s->cxt = cxt;
	s->page_cxt = AllocSetContextCreate(cxt, "replstamp apply page", ALLOCSET_DEFAULT_SIZES);
	s->row_cxt = AllocSetContextCreate(cxt, "replstamp apply change", ALLOCSET_DEFAULT_SIZES);
	s->peer = MemoryContextStrdup(cxt, peer);
	s->cat = catalog_get_v11("replstamp.sync()");
	s->reconcile = rowversion_reconcile_begin(cxt);
	s->cons = constraints_session_begin(cxt);

	ctl.keysize = MAX_RELATION_LEN;
	ctl.entrysize = sizeof(ApplyTable);
	ctl.hcxt = cxt;
	s->tables = hash_create("replstamp apply tables", 16, &ctl,
							HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);

	ctl.keysize = sizeof(SkipKey);
	ctl.entrysize = sizeof(SkipKey);
	ctl.hcxt = cxt;
	s->skips = hash_create("replstamp skip requests", 16, &ctl,
						   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);

	ctl.keysize = sizeof(pg_uuid_t);
	ctl.entrysize = sizeof(HeldUpto);
	ctl.hcxt = cxt;
	s->held = hash_create("replstamp held serials", 16, &ctl,
						  HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	dbaccess_become_owner(&octx);
	SPI_connect();
	if (SPI_execute("SELECT replica_id, serial FROM replstamp.skipped WHERE skipped_at IS NULL",
					true, 0) != SPI_OK_SELECT)
		elog(ERROR, "replstamp: could not read replstamp.skipped");
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		SkipKey		key;
		bool		isnull;

		memset(&key, 0, sizeof(key));
		memcpy(&key.id, DatumGetUUIDP(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc,
													1, &isnull)), sizeof(pg_uuid_t));
		key.serial = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc,
												 2, &isnull));
		(void) hash_search(s->skips, &key, HASH_ENTER, NULL);
	}
	SPI_finish();
	dbaccess_restore_user(&octx);
	return s;
}

int64
apply_conflicts(ApplySession *s)
{
	return s->conflicts;
}

int64
apply_skipped(ApplySession *s)
{
	return s->skipped;
}

/* Was (id, serial) asked to be skipped? */
bool
apply_stamp_skipped(ApplySession *s, const pg_uuid_t *id, int64 serial)
{
	SkipKey		key;

	memset(&key, 0, sizeof(key));
	key.id = *id;
	key.serial = serial;
	return hash_search(s->skips, &key, HASH_FIND, NULL) != NULL;
}

/* ---------------------------------------------------------------------
 * What constraints.c uses of the session
 * ---------------------------------------------------------------------
 */

ConstraintState *
apply_constraint_state(ApplySession *s)
{
	return s->cons;
}

const char *
apply_peer(ApplySession *s)
{
	return s->peer;
}

/* The page's row_version writer, with every local change committed or made so far in it. */
RowVersionWriter *
apply_reconciled(ApplySession *s)
{
	rowversion_reconcile(s->rvw, s->reconcile);
	return s->rvw;
}

/*
 * Every page holds what the writers of its changes had seen (the apply is
 * causal): foreign keys are then resolved before each page commits,
 * instead of at the end of the sync.
 */
void
apply_set_causal(ApplySession *s, bool causal)
{
	s->causal = causal;
}

/*
 * At the end of a sync, in a transaction of its own: the node holds all
 * the peer held, so a referenced row still missing is gone, and the keys
 * left are resolved (constraints.c).
 */
void
apply_sync_end(ApplySession *s)
{
	if (!constraints_pending(s->cons))
		return;
	apply_page_begin(s);
	constraints_check_deferred(s, true);
	apply_page_end(s);
}

/*
 * Record a conflict that a constraint resolved (kind: see constraints.c)
 * on a row of rel (key pk): the version kept and the one that lost.
 */
void
apply_record_conflict(ApplySession *s, Relation rel, Jsonb *pk, const char *kind,
					  const Version *winner, const Version *loser, Change *lost)
{
	Change		probe;
	ChangeRow	row;
	ApplyTable *t;

	memset(&probe, 0, sizeof(probe));
	probe.relation = rowimage_layout(rel)->relname_text;
	t = resolve_table(s, &probe);
	table_open_page(s, t);
	memset(&row, 0, sizeof(row));
	row.key = pk;
	log_conflict(s, t, &probe, &row, kind, winner, loser, lost);
}

/*
 * In a new transaction: ready for a page of changes.  A prune's batch
 * waits for the page to end, and the page for the batch (rowversion.c).
 */
void
apply_page_begin(ApplySession *s)
{
	MemoryContext old;

	rowversion_page_lock(false);
	old = MemoryContextSwitchTo(s->page_cxt);
	s->rvw = rowversion_writer_begin(s->cat);
	s->open_tables = NIL;
	MemoryContextSwitchTo(old);
}

static void
table_close_page(ApplyTable *t)
{
	if (!t->open)
		return;
	if (t->partitioned)
	{
		ExecCleanupTupleRouting(t->mtstate, t->proute);
		ExecResetTupleTable(t->estate->es_tupleTable, false);
		FreeExecutorState(t->estate);
		table_close(t->rel, NoLock);
		t->open = false;
		return;
	}
	index_endscan(t->pkscan);
	index_close(t->pkidx, NoLock);
	/* Our result relation's indexes, and those the trigger manager opened. */
	ExecCloseResultRelations(t->estate);
	ExecCloseRangeTableRelations(t->estate);
	EvalPlanQualEnd(&t->epq);
	ExecResetTupleTable(t->estate->es_tupleTable, false);
	FreeExecutorState(t->estate);
	table_close(t->rel, NoLock);
	t->open = false;
}

static void
spi_owner_exec(const char *sql, int nargs, Oid *types, Datum *values, int expected)
{
	ReplstampOwnerContext ctx;
	int			ret;

	dbaccess_become_owner(&ctx);
	SPI_connect();
	ret = SPI_execute_with_args(sql, nargs, types, values, NULL, false, 0);
	if (ret != expected)
		elog(ERROR, "replstamp: query failed (%s): %s", SPI_result_code_string(ret), sql);
	SPI_finish();
	dbaccess_restore_user(&ctx);
}

/*
 * Before the page's transaction commits: close its tables, save the
 * reconciliation and the conflict counters.
 */
void
apply_page_end(ApplySession *s)
{
	ListCell   *lc;

	/* The page's foreign keys hold before it commits. */
	constraints_check_deferred(s, s->causal);
	foreach(lc, s->open_tables)
	{
		ApplyTable *t = lfirst(lc);

		table_close_page(t);
		if (t->conflicts > 0)
		{
			Oid			types[2] = {TEXTOID, INT8OID};
			Datum		values[2] = {CStringGetTextDatum(t->relation), Int64GetDatum(t->conflicts)};

			spi_owner_exec(catalog_sql("UPDATE replstamp.tracked_table SET conflicts = conflicts OPERATOR(pg_catalog.+) $2 "
									   "WHERE relation OPERATOR(pg_catalog.=) $1"), 2, types, values, SPI_OK_UPDATE);
			t->conflicts = 0;
		}
	}
	if (s->clog)
	{
		ExecCloseResultRelations(s->clog_estate);
		ExecCloseRangeTableRelations(s->clog_estate);
		ExecResetTupleTable(s->clog_estate->es_tupleTable, false);
		FreeExecutorState(s->clog_estate);
		table_close(s->clog, NoLock);
		s->clog = NULL;
	}
	rowversion_writer_end(s->rvw);
	s->rvw = NULL;
	rowversion_reconcile_save(s->reconcile);
	s->open_tables = NIL;
	MemoryContextReset(s->page_cxt);
}

/*
 * After an error in a page (its transaction is being aborted): forget
 * what was opened for it; the abort releases the resources themselves.
 */
void
apply_page_abort(ApplySession *s)
{
	ListCell   *lc;

	foreach(lc, s->open_tables)
	{
		ApplyTable *t = lfirst(lc);

		t->open = false;
		t->conflicts = 0;
	}
	s->open_tables = NIL;
	s->rvw = NULL;
	s->clog = NULL;
	/* What was reconciled in the aborted transaction must be read again. */
	s->reconcile->loaded = false;
	s->reconcile->looked = false;
	/* Nor does anything it wrote need checking any more. */
	if (s->cons)
		constraints_forget(s->cons);
	MemoryContextReset(s->page_cxt);
	MemoryContextReset(s->row_cxt);
}

/* The state of a table in replstamp.tracked_table, or NULL. */
static char *
registry_state(const char *relation)
{
	ReplstampOwnerContext ctx;
	Oid			types[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(relation)};
	char	   *state = NULL;

	dbaccess_become_owner(&ctx);
	SPI_connect();
	if (SPI_execute_with_args(catalog_sql("SELECT state FROM replstamp.tracked_table WHERE relation OPERATOR(pg_catalog.=) $1"),
							  1, types, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "replstamp: could not read replstamp.tracked_table");
	if (SPI_processed > 0)
		state = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	if (state)
		state = MemoryContextStrdup(TopTransactionContext, state);
	SPI_finish();
	dbaccess_restore_user(&ctx);
	return state;
}

/*
 * Find the table relation names, into t.  Refuses a name that is not this
 * table's canonical spelling, a table that does not exist or is not
 * tracked here (unless this node dropped or untracked it: then its changes
 * are ignored).
 */
static void
lookup_table(ApplySession *s, ApplyTable *t, const char *relation)
{
	List	   *names;
	Oid			relid;
	Relation	rel;
	char	   *canonical;
	char	   *state;

	t->state = TABLE_OK;
	t->partitioned = false;
	names = stringToQualifiedNameList(relation);
	relid = RangeVarGetRelid(makeRangeVarFromNameList(names), RowExclusiveLock, true);
	if (!OidIsValid(relid))
	{
		state = registry_state(relation);
		if (state && strcmp(state, "tracked") != 0)
			t->state = TABLE_IGNORED;
		else
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_TABLE),
					 errmsg("peer sent a change of table %s, which does not exist here", relation),
					 errhint("Create and track the table on every node, or drop it on every node.")));
	}
	else
	{
		rel = table_open(relid, NoLock);
		canonical = quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
											   RelationGetRelationName(rel));
		if (strcmp(canonical, relation) != 0)
			ereport(ERROR,
					(errcode(ERRCODE_DATA_EXCEPTION),
					 errmsg("peer \"%s\" sent a change of table %s, which is not how the table is spelled (%s)",
							s->peer, relation, canonical),
					 errdetail("Every node writes the schema-qualified name, quoted only where needed.")));
		if (!stamp_is_tracked(rel))
		{
			state = registry_state(relation);
			if (state && strcmp(state, "tracked") != 0)
				t->state = TABLE_IGNORED;
			else
				ereport(ERROR,
						(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						 errmsg("peer sent a change of table %s, which is not tracked here", relation),
						 errhint("Track the table with replstamp.track() on every node.")));
		}
		else if (!OidIsValid(rowimage_key_index(rel)))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("table %s has no row key", relation),
					 errdetail("It has neither a primary key nor a replica identity index."),
					 errhint("Give it back the key it was tracked with (replstamp.problems names it).")));
		t->relid = relid;
		t->owner = rel->rd_rel->relowner;
		t->partitioned = rel->rd_rel->relkind == RELKIND_PARTITIONED_TABLE;
		table_close(rel, NoLock);
	}
}

/* The table a change names: resolved once per sync (lookup_table()). */
static ApplyTable *
resolve_table(ApplySession *s, Change *change)
{
	char	   *relation;
	ApplyTable *t;
	bool		found;

	if (VARSIZE_ANY_EXHDR(change->relation) >= MAX_RELATION_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_NAME_TOO_LONG),
				 errmsg("peer \"%s\" sent a change with an overlong table name", s->peer)));
	relation = text_to_cstring(change->relation);
	t = hash_search(s->tables, relation, HASH_ENTER, &found);
	if (found)
		return t;
	t->open = false;
	t->conflicts = 0;
	t->dropped = NIL;
	t->leaves = NULL;

	PG_TRY();
	{
		lookup_table(s, t, relation);
	}
	PG_CATCH();
	{
		(void) hash_search(s->tables, relation, HASH_REMOVE, NULL);
		PG_RE_THROW();
	}
	PG_END_TRY();
	return t;
}

/* Open a table for the current page. */
static void
table_open_page(ApplySession *s, ApplyTable *t)
{
	MemoryContext old;
	TupleDesc	desc;

	if (t->open)
		return;
	old = MemoryContextSwitchTo(s->page_cxt);
	t->rel = table_open(t->relid, RowExclusiveLock);
	t->layout = rowimage_layout(t->rel);
	desc = RelationGetDescr(t->rel);
	t->estate = CreateExecutorState();
	if (t->partitioned)
	{
		/* No rows of its own: a key's leaf is found by tuple routing. */
		t->rri = makeNode(ResultRelInfo);
		InitResultRelInfo(t->rri, t->rel, 1, NULL, 0);
		t->mtstate = makeNode(ModifyTableState);
		t->mtstate->ps.plan = NULL;
		t->mtstate->ps.state = t->estate;
		t->mtstate->operation = CMD_INSERT;
		t->mtstate->resultRelInfo = t->rri;
		t->proute = ExecSetupPartitionTupleRouting(t->estate, t->rel);
		t->keyslot = ExecInitExtraTupleSlot(t->estate, desc, &TTSOpsVirtual);
		t->open = true;
		s->open_tables = lappend(s->open_tables, t);
		MemoryContextSwitchTo(old);
		return;
	}
	t->rri = dbaccess_open_result_rel(t->rel, t->estate);
	EvalPlanQualInit(&t->epq, t->estate, NULL, NIL, -1);
	t->keyslot = ExecInitExtraTupleSlot(t->estate, desc, &TTSOpsVirtual);
	t->newslot = ExecInitExtraTupleSlot(t->estate, desc, &TTSOpsVirtual);
	t->baseslot = ExecInitExtraTupleSlot(t->estate, desc, &TTSOpsVirtual);
	t->localslot = table_slot_create(t->rel, &t->estate->es_tupleTable);
	t->defaults = palloc0(sizeof(ExprState *) * Max(desc->natts, 1));
	t->defaults_built = palloc0(sizeof(bool) * Max(desc->natts, 1));

	/* The primary key's equality procedures, for every lookup of the page. */
	t->pkidx = index_open(t->layout->pkoid, RowExclusiveLock);
	t->npkkeys = IndexRelationGetNumberOfKeyAttributes(t->pkidx);
	for (int k = 0; k < t->npkkeys; k++)
	{
		Oid			op = get_opfamily_member(t->pkidx->rd_opfamily[k], t->pkidx->rd_opcintype[k],
											 t->pkidx->rd_opcintype[k], BTEqualStrategyNumber);

		if (!OidIsValid(op))
			elog(ERROR, "replstamp: no equality operator for column %d of index \"%s\"",
				 k + 1, RelationGetRelationName(t->pkidx));
		ScanKeyEntryInitialize(&t->pkkeys[k], 0, k + 1, BTEqualStrategyNumber,
							   t->pkidx->rd_opcintype[k], t->pkidx->rd_indcollation[k],
							   get_opcode(op), (Datum) 0);
	}
	InitDirtySnapshot(t->dirty);
	t->pkscan = index_beginscan(t->rel, t->pkidx, &t->dirty, t->npkkeys, 0);
	t->pkscan_cxt = s->page_cxt;
	t->open = true;
	s->open_tables = lappend(s->open_tables, t);
	MemoryContextSwitchTo(old);
}

/* The default of an attribute a change does not carry, for an INSERT. */
static Datum
column_default(ApplyTable *t, int a, bool *isnull)
{
	if (!t->defaults_built[a])
	{
		MemoryContext old = MemoryContextSwitchTo(t->estate->es_query_cxt);
		Node	   *expr = build_column_default(t->rel, a + 1);

		t->defaults[a] = expr ? ExecInitExpr((Expr *) expression_planner((Expr *) expr), NULL) : NULL;
		t->defaults_built[a] = true;
		MemoryContextSwitchTo(old);
	}
	if (t->defaults[a] == NULL)
	{
		*isnull = true;
		return (Datum) 0;
	}
	return ExecEvalExprSwitchContext(t->defaults[a], GetPerTupleExprContext(t->estate), isnull);
}

/*
 * Are two changes of a row one write under two stamps: the same time,
 * operation and image?  A rotation re-issues the changes a restored node
 * made in its backup window under its new ID (identity.c): a node holding
 * the original that receives the copy, or the reverse, keeps one stamp as
 * the row's version and loses nothing.  (Byte equality: both images went
 * through jsonb_in of the same text, or are one stored copy; a difference
 * of form only makes a conflict recorded as before.)
 */
static bool
same_write(const Change *a, const Change *b)
{
	if (a->changed_at != b->changed_at || a->op != b->op)
		return false;
	if (a->image == NULL || b->image == NULL)
		return a->image == NULL && b->image == NULL;
	return VARSIZE_ANY(a->image) == VARSIZE_ANY(b->image) &&
		memcmp(a->image, b->image, VARSIZE_ANY(a->image)) == 0;
}

/*
 * Record a conflict (kind: 'incoming_lost' or 'overwrote'), with a copy of
 * the version that lost (lost: its change, if this has it; NULL: read it
 * from the log) for replstamp.restore_version().  Written with the
 * executor's routines, as the extension's owner, into a result relation
 * kept for the page (a statement per conflict parsed and started its
 * CHECK constraints every time: most of what a conflict cost).
 */
static void
log_conflict(ApplySession *s, ApplyTable *t, Change *change, ChangeRow *row,
			 const char *kind, const Version *winner, const Version *loser,
			 Change *lost)
{
	ReplstampOwnerContext ctx;
	TupleTableSlot *slot;
	Datum	   *values;
	bool	   *isnull;

	if (lost == NULL)
	{
		/* The version this overwrites: the latest of its row, in the log. */
		lost = palloc(sizeof(Change));
		if (changelog_fetch(s->cat, &loser->replica_id, loser->serial, lost))
			s->rvw->superseding = lost;
		else
			lost = NULL;		/* not here: nothing to restore it from */
	}

	/* The same write under another stamp (a re-issued copy) is no conflict. */
	if (lost != NULL && winner->changed_at == loser->changed_at)
	{
		Change		fetched;
		Change	   *won = NULL;

		if (changelog_same_stamp(&change->replica_id, change->serial,
								 &winner->replica_id, winner->serial))
			won = change;
		else if (changelog_fetch(s->cat, &winner->replica_id, winner->serial, &fetched))
			won = &fetched;
		if (won != NULL && same_write(won, lost))
			return;
	}

	dbaccess_become_owner(&ctx);
	if (s->clog == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(s->page_cxt);

		s->clog = table_open(s->cat->conflict, RowExclusiveLock);
		s->clog_estate = CreateExecutorState();
		s->clog_rri = dbaccess_open_result_rel(s->clog, s->clog_estate);
		s->clog_slot = table_slot_create(s->clog, &s->clog_estate->es_tupleTable);
		s->clog_seq = getIdentitySequence(s->cat->conflict, Anum_conflict_id, false);
		MemoryContextSwitchTo(old);
	}
	s->clog_estate->es_output_cid = GetCurrentCommandId(true);
	slot = s->clog_slot;
	ExecClearTuple(slot);
	values = slot->tts_values;
	isnull = slot->tts_isnull;
	for (int a = 0; a < slot->tts_tupleDescriptor->natts; a++)
		isnull[a] = true;
	/* The id's identity sequence, as its default would. */
	values[Anum_conflict_id - 1] = Int64GetDatum(nextval_internal(s->clog_seq, false));
	values[Anum_conflict_resolved_at - 1] = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
	values[Anum_conflict_relation - 1] = PointerGetDatum(change->relation);
	values[Anum_conflict_pk - 1] = JsonbPGetDatum(row->key);
	values[Anum_conflict_kind - 1] = CStringGetTextDatum(kind);
	values[Anum_conflict_peer - 1] = CStringGetTextDatum(s->peer);
	values[Anum_conflict_winner_replica_id - 1] = UUIDPGetDatum(&winner->replica_id);
	values[Anum_conflict_winner_serial - 1] = Int64GetDatum(winner->serial);
	values[Anum_conflict_winner_changed_at - 1] = TimestampTzGetDatum(winner->changed_at);
	values[Anum_conflict_loser_replica_id - 1] = UUIDPGetDatum(&loser->replica_id);
	values[Anum_conflict_loser_serial - 1] = Int64GetDatum(loser->serial);
	values[Anum_conflict_loser_changed_at - 1] = TimestampTzGetDatum(loser->changed_at);
	for (int a = Anum_conflict_id; a <= Anum_conflict_loser_changed_at; a++)
		isnull[a - 1] = false;
	if (lost)
	{
		values[Anum_conflict_loser_op - 1] = CStringGetTextDatum(changelog_op_name(lost->op));
		isnull[Anum_conflict_loser_op - 1] = false;
		if (lost->image)
		{
			values[Anum_conflict_loser_image - 1] = JsonbPGetDatum(lost->image);
			isnull[Anum_conflict_loser_image - 1] = false;
		}
	}
	ExecStoreVirtualTuple(slot);
	ExecSimpleRelationInsert(s->clog_rri, s->clog_estate, slot);
	ResetPerTupleExprContext(s->clog_estate);
	dbaccess_restore_user(&ctx);
	s->conflicts++;
	t->conflicts++;
}

/* Fill newslot for a row the change writes. */
static void
build_new_row(ApplyTable *t, bool found, bool have_base, Datum *values, bool *nulls,
			  bool *present)
{
	TupleDesc	desc = RelationGetDescr(t->rel);
	TupleTableSlot *slot = t->newslot;

	ExecClearTuple(slot);
	if (found)
		slot_getallattrs(t->localslot);
	for (int a = 0; a < desc->natts; a++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, a);

		if (att->attisdropped || att->attgenerated)
		{
			slot->tts_values[a] = (Datum) 0;
			slot->tts_isnull[a] = true;
		}
		else if (present[a])
		{
			slot->tts_values[a] = values[a];
			slot->tts_isnull[a] = nulls[a];
		}
		else if (found)
		{
			/* an UPDATE keeps what the change does not carry */
			slot->tts_values[a] = t->localslot->tts_values[a];
			slot->tts_isnull[a] = t->localslot->tts_isnull[a];
		}
		else if (have_base)
		{
			/* the new key of a key-changing UPDATE: the old row's values */
			slot->tts_values[a] = t->baseslot->tts_values[a];
			slot->tts_isnull[a] = t->baseslot->tts_isnull[a];
		}
		else
			slot->tts_values[a] = column_default(t, a, &slot->tts_isnull[a]);
	}
	ExecStoreVirtualTuple(slot);
}

/*
 * Keep the old row of a key-changing UPDATE, found in t, for the new key's
 * absent columns, written to to (t itself, or the leaf partition the new
 * key goes to: its columns are t's, leaf_for_key() makes sure).
 */
static void
keep_base(ApplyTable *t, ApplyTable *to)
{
	TupleDesc	desc = RelationGetDescr(t->rel);

	slot_getallattrs(t->localslot);
	ExecClearTuple(to->baseslot);
	for (int a = 0; a < desc->natts; a++)
	{
		to->baseslot->tts_values[a] = t->localslot->tts_values[a];
		to->baseslot->tts_isnull[a] = t->localslot->tts_isnull[a];
	}
	ExecStoreVirtualTuple(to->baseslot);
	ExecMaterializeSlot(to->baseslot);
}

/* ---------------------------------------------------------------------
 * Columns added here after changes that carried them were applied
 * ---------------------------------------------------------------------
 */

/* The table's columns as the apply sees them (not dropped, not generated). */
static List *
current_columns(Relation rel)
{
	TupleDesc	desc = RelationGetDescr(rel);
	List	   *cols = NIL;

	for (int a = 0; a < desc->natts; a++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, a);

		if (!att->attisdropped && !att->attgenerated)
			cols = lappend(cols, pstrdup(NameStr(att->attname)));
	}
	return cols;
}

static bool
list_has_name(List *names, const char *name)
{
	ListCell   *lc;

	foreach(lc, names)
		if (strcmp(lfirst(lc), name) == 0)
		return true;
	return false;
}

/*
 * The keys of t's rows whose version is partial (it carries values of
 * columns this node lacked), in the caller's memory; with names, only those
 * that carry one of them.  Sets *n.
 */
static Jsonb **
partial_row_keys(ApplyTable *t, List *names, int *n)
{
	ReplstampOwnerContext octx;
	Oid			types[2] = {TEXTOID, TEXTARRAYOID};
	Datum		args[2];
	Jsonb	  **keys;
	MemoryContext caller = CurrentMemoryContext;

	args[0] = CStringGetTextDatum(t->relation);
	if (names)
		args[1] = dbaccess_names_array(names);
	dbaccess_become_owner(&octx);
	SPI_connect();
	if (SPI_execute_with_args(names ?
							  "SELECT pk FROM replstamp.row_version "
							  "WHERE relation OPERATOR(pg_catalog.=) $1 AND partial AND NOT deleted "
							  "AND carry_columns OPERATOR(pg_catalog.&&) $2" :
							  "SELECT pk FROM replstamp.row_version "
							  "WHERE relation OPERATOR(pg_catalog.=) $1 AND partial AND NOT deleted",
							  names ? 2 : 1, types, args, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "replstamp: could not read replstamp.row_version");
	*n = SPI_processed;
	/* Outlives SPI_finish(). */
	keys = MemoryContextAlloc(caller, sizeof(Jsonb *) * Max(*n, 1));
	for (int i = 0; i < *n; i++)
	{
		bool		isnull;
		Datum		d = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull);
		MemoryContext spi = MemoryContextSwitchTo(caller);

		keys[i] = DatumGetJsonbPCopy(d);
		MemoryContextSwitchTo(spi);
	}
	SPI_finish();
	dbaccess_restore_user(&octx);
	return keys;
}

/*
 * Fill the columns in new_cols of t's rows from the change that last
 * carried them while this node lacked them (row_version's carry), kept in
 * the change log.  Only those columns are written: the rest of each row is
 * as the later versions left it.
 */
static void
fill_columns(ApplySession *s, ApplyTable *t, List *new_cols, List *all_cols)
{
	ReplstampOwnerContext uctx;
	int			n;
	Jsonb	  **keys = partial_row_keys(t, NIL, &n);
	int64		filled = 0;
	TupleDesc	desc;
	text	   *relation = cstring_to_text(t->relation);


	table_open_page(s, t);
	desc = RelationGetDescr(t->rel);
	for (int i = 0; i < n; i++)
	{
		Change		c;
		ChangeRow	row;
		RowVersion	cur;
		Datum	   *values = palloc(sizeof(Datum) * desc->natts);
		bool	   *nulls = palloc0(sizeof(bool) * desc->natts);
		bool	   *present = palloc0(sizeof(bool) * desc->natts);
		Datum	   *keyvalues = palloc(sizeof(Datum) * desc->natts);
		bool	   *keynulls = palloc0(sizeof(bool) * desc->natts);
		List	   *remaining = NIL;
		ListCell   *lc;
		bool		found;
		bool		usable;

		CHECK_FOR_INTERRUPTS();
		row.key = keys[i];
		row.hash = rowimage_row_hash(t->relation, strlen(t->relation), keys[i]);
		row.deleted = false;

		dbaccess_become_untrusted(t->owner, &uctx);
		rowimage_decode_key(t->layout, keys[i], keyvalues, keynulls);
		ExecClearTuple(t->keyslot);
		memset(t->keyslot->tts_isnull, true, sizeof(bool) * desc->natts);
		for (int k = 0; k < t->layout->npk; k++)
		{
			int			a = t->layout->pk[k].attnum - 1;

			t->keyslot->tts_values[a] = keyvalues[a];
			t->keyslot->tts_isnull[a] = keynulls[a];
		}
		ExecStoreVirtualTuple(t->keyslot);
		PushActiveSnapshot(GetLatestSnapshot());

		/*
		 * The row locked first: a local change of it has then committed, and
		 * reconciling brings it into row_version.  One made since the column
		 * was added here carries the column, is later than the carry, and
		 * leaves the row partial no more: its value stays.
		 */
		found = RelationFindReplTupleByIndex(t->rel, t->layout->pkoid, LockTupleExclusive,
											 t->keyslot, t->localslot);
		rowversion_reconcile(s->rvw, s->reconcile);
		rowversion_get(s->rvw, relation, &row, &cur);
		usable = cur.found && cur.partial &&
			changelog_fetch(s->cat, &cur.carry.replica_id, cur.carry.serial, &c) &&
			c.image != NULL;
		if (usable && found)
		{
			(void) rowimage_decode(t->layout, c.image, values, nulls, present, NULL);
			/* Only the columns added here that the carry has a value for. */
			for (int a = 0; a < desc->natts; a++)
			{
				const char *name = NameStr(TupleDescAttr(desc, a)->attname);

				if (present[a] && (!list_has_name(new_cols, name) || !list_has_name(cur.carry_columns, name)))
					present[a] = false;
			}
			t->estate->es_output_cid = GetCurrentCommandId(true);
			AfterTriggerBeginQuery();
			build_new_row(t, true, false, values, nulls, present);
			ExecSimpleRelationUpdate(t->rri, t->estate, &t->epq, t->localslot, t->newslot);
			stamp_skip_tuple(t->relid, &t->newslot->tts_tid);
			AfterTriggerEndQuery(t->estate);
			stamp_skip_clear();
			filled++;
		}
		PopActiveSnapshot();
		dbaccess_restore_user(&uctx);
		CommandCounterIncrement();
		if (!usable)
			continue;

		/* What the carry still has that this node lacks. */
		foreach(lc, cur.carry_columns)
			if (!list_has_name(all_cols, lfirst(lc)))
			remaining = lappend(remaining, lfirst(lc));
		rowversion_set_carry(s->rvw, relation, &row, &cur, remaining);
	}
	if (filled > 0)
		ereport(LOG,
				(errmsg("replstamp: filled the new columns of %lld rows of table %s from the changes that carried them",
						(long long) filled, t->relation)));
}

/*
 * Columns just dropped here: forget the values of them that t's rows carry
 * (kept from changes pulled between the DROP COLUMN and this look, while
 * the names were not known as dropped yet), so that a column of the same
 * name added later is not filled in with them.
 */
static void
drop_from_carries(ApplySession *s, ApplyTable *t, List *names)
{
	int			n;
	Jsonb	  **keys = partial_row_keys(t, names, &n);
	text	   *relation = cstring_to_text(t->relation);

	for (int i = 0; i < n; i++)
	{
		ChangeRow	row;
		RowVersion	cur;
		List	   *remaining = NIL;
		ListCell   *lc;

		CHECK_FOR_INTERRUPTS();
		row.key = keys[i];
		row.hash = rowimage_row_hash(t->relation, strlen(t->relation), keys[i]);
		row.deleted = false;
		rowversion_get(s->rvw, relation, &row, &cur);
		if (!cur.found || !cur.partial)
			continue;
		foreach(lc, cur.carry_columns)
			if (!list_has_name(names, lfirst(lc)))
			remaining = lappend(remaining, lfirst(lc));
		rowversion_set_carry(s->rvw, relation, &row, &cur, remaining);
	}
	if (n > 0)
		ereport(LOG,
				(errmsg("replstamp: dropped the values of columns dropped here that %d rows of table %s carried",
						n, t->relation)));
}

static List *
names_of(Datum d, bool isnull)
{
	List	   *names = NIL;
	Datum	   *elems;
	bool	   *nulls;
	int			n;

	if (isnull)
		return NIL;
	deconstruct_array(DatumGetArrayTypeP(d), TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
	for (int i = 0; i < n; i++)
		if (!nulls[i])
			names = lappend(names, TextDatumGetCString(elems[i]));
	return names;
}

/*
 * For every tracked table: if columns were added since the apply last
 * looked, fill them in from the changes that carried them (a rolling ADD
 * COLUMN); columns dropped here are remembered, so that peers' values of
 * them are not kept for filling in.  In a page's transaction.
 */
void
apply_fill_new_columns(ApplySession *s)
{
	ReplstampOwnerContext ctx;
	int			n;
	char	  **relations;
	List	  **known;
	List	  **dropped;
	bool	   *have_known;
	MemoryContext caller = CurrentMemoryContext;

	dbaccess_become_owner(&ctx);
	SPI_connect();
	if (SPI_execute(catalog_sql("SELECT relation, columns, dropped_columns FROM replstamp.tracked_table "
								"WHERE state = 'tracked' AND relid IS NOT NULL"), false, 0) != SPI_OK_SELECT)
		elog(ERROR, "replstamp: could not read replstamp.tracked_table");
	n = SPI_processed;
	/* Outlive SPI_finish(). */
	relations = MemoryContextAlloc(caller, sizeof(char *) * Max(n, 1));
	known = MemoryContextAlloc(caller, sizeof(List *) * Max(n, 1));
	dropped = MemoryContextAlloc(caller, sizeof(List *) * Max(n, 1));
	have_known = MemoryContextAlloc(caller, sizeof(bool) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	td = SPI_tuptable->tupdesc;
		bool		isnull;
		Datum		cols = SPI_getbinval(tup, td, 2, &isnull);
		Datum		drop;
		bool		dropnull;
		MemoryContext spi;

		drop = SPI_getbinval(tup, td, 3, &dropnull);
		spi = MemoryContextSwitchTo(caller);
		relations[i] = pstrdup(SPI_getvalue(tup, td, 1));
		have_known[i] = !isnull;
		known[i] = names_of(cols, isnull);
		dropped[i] = names_of(drop, dropnull);
		MemoryContextSwitchTo(spi);
	}
	SPI_finish();
	dbaccess_restore_user(&ctx);

	for (int i = 0; i < n; i++)
	{
		Change		probe;
		ApplyTable *t;
		List	   *cols;
		List	   *new_cols = NIL;
		List	   *just_dropped = NIL;
		List	   *now_dropped = NIL;
		ListCell   *lc;
		Oid			types[3] = {TEXTOID, TEXTARRAYOID, TEXTARRAYOID};
		Datum		values[3];
		MemoryContext old;

		memset(&probe, 0, sizeof(probe));
		probe.relation = cstring_to_text(relations[i]);
		t = resolve_table(s, &probe);
		/* Not for partitioned tables yet (Limitations). */
		if (t->state != TABLE_OK || t->partitioned)
			continue;
		table_open_page(s, t);
		cols = current_columns(t->rel);
		foreach(lc, cols)
			if (have_known[i] && !list_has_name(known[i], lfirst(lc)))
			new_cols = lappend(new_cols, lfirst(lc));
		/* Dropped here: what was known and is gone, plus what was before. */
		foreach(lc, known[i])
			if (!list_has_name(cols, lfirst(lc)))
			just_dropped = lappend(just_dropped, lfirst(lc));
		now_dropped = list_copy(just_dropped);
		foreach(lc, dropped[i])
			if (!list_has_name(cols, lfirst(lc)) && !list_has_name(now_dropped, lfirst(lc)))
			now_dropped = lappend(now_dropped, lfirst(lc));
		old = MemoryContextSwitchTo(s->cxt);
		list_free_deep(t->dropped);
		t->dropped = NIL;
		foreach(lc, now_dropped)
			t->dropped = lappend(t->dropped, pstrdup(lfirst(lc)));
		MemoryContextSwitchTo(old);

		if (have_known[i] && new_cols == NIL &&
			list_length(known[i]) == list_length(cols) &&
			list_length(dropped[i]) == list_length(now_dropped))
			continue;			/* nothing changed */
		if (just_dropped != NIL)
			drop_from_carries(s, t, just_dropped);
		if (new_cols != NIL)
			fill_columns(s, t, new_cols, cols);
		values[0] = CStringGetTextDatum(relations[i]);
		values[1] = dbaccess_names_array(cols);
		values[2] = dbaccess_names_array(now_dropped);
		spi_owner_exec(catalog_sql("UPDATE replstamp.tracked_table SET columns = $2, dropped_columns = $3 "
								   "WHERE relation OPERATOR(pg_catalog.=) $1"), 3, types, values, SPI_OK_UPDATE);
	}
}

/* ---------------------------------------------------------------------
 * Dropped columns: when peers' values of the name are new ones
 *
 * A column dropped here is remembered (tracked.dropped_columns) so that
 * what peers that still have it send of it is not kept for filling in: the
 * old column's values.  Once every peer has dropped it too and this node
 * holds everything each one wrote before, a value of that name can only
 * come from a node that added the column again: it is kept like a value
 * of a column that never existed, and filled in when the column is added
 * here.  The evidence: at the start of a sync, the peer lacks the column
 * (then its changes from before its drop are all below what it has handed
 * out); recorded in replstamp.dropped_column_peers with that serial; the
 * name is forgotten once every peer has been seen lacking it and the
 * vector holds those serials.  (1.2; a node whose catalog is older keeps
 * every dropped name.)
 * ---------------------------------------------------------------------
 */

/* Is replstamp.dropped_column_peers there (1.2)? */
static bool
have_dropped_column_peers(void)
{
	const ReplstampCatalog *cat = catalog_get(true);

	return cat != NULL && OidIsValid(get_relname_relid("dropped_column_peers", cat->schema));
}

/*
 * The columns dropped here that are not forgotten yet, as a jsonb array of
 * {"r": relation, "c": column} (text, allocated in cxt), or NULL.  In a
 * transaction.
 */
char *
apply_dropped_columns(MemoryContext cxt)
{
	ReplstampOwnerContext ctx;
	char	   *json = NULL;

	if (!have_dropped_column_peers())
		return NULL;
	dbaccess_become_owner(&ctx);
	SPI_connect();
	if (SPI_execute(catalog_sql("SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object('r', t.relation, 'c', d.c)) "
								"FROM replstamp.tracked_table t, pg_catalog.unnest(t.dropped_columns) AS d(c) "
								"WHERE t.state OPERATOR(pg_catalog.=) 'tracked'"), true, 0) != SPI_OK_SELECT)
		elog(ERROR, "replstamp: could not read replstamp.tracked_table");
	if (SPI_processed == 1)
	{
		char	   *v = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

		if (v)
			json = MemoryContextStrdup(cxt, v);
	}
	SPI_finish();
	dbaccess_restore_user(&ctx);
	return json;
}

/* Some peer has not been seen lacking column x of table t.relation yet. */
#define SOME_PEER_MAY_HAVE_IT \
	"EXISTS (SELECT 1 FROM replstamp.peer p WHERE NOT EXISTS (" \
	"  SELECT 1 FROM replstamp.dropped_column_peers w " \
	"  LEFT JOIN replstamp.vector v ON v.replica_id OPERATOR(pg_catalog.=) w.replica_id " \
	"  WHERE w.relation OPERATOR(pg_catalog.=) t.relation " \
	"  AND w.column_name OPERATOR(pg_catalog.=) x " \
	"  AND w.peer OPERATOR(pg_catalog.=) p.name " \
	"  AND COALESCE(v.serial, 0) OPERATOR(pg_catalog.>=) w.serial))"

/*
 * After a sync with peer: record that it lacked the columns in lacking
 * (what apply_dropped_columns() said, filtered by the peer; NULL: none
 * checked) when it had handed out serials of id up to serial, and forget
 * the dropped names every peer has been seen lacking, once the vector
 * holds what each had handed out then.  In the sync's last transaction,
 * SPI connected, as the extension's owner.
 */
void
apply_note_dropped_elsewhere(const char *peer, const char *lacking, const pg_uuid_t *id, int64 serial)
{
	if (!have_dropped_column_peers())
		return;
	if (lacking && id)
	{
		Oid			types[4] = {JSONBOID, TEXTOID, UUIDOID, INT8OID};
		Datum		values[4];

		values[0] = DirectFunctionCall1(jsonb_in, CStringGetDatum(lacking));
		values[1] = CStringGetTextDatum(peer);
		values[2] = UUIDPGetDatum(id);
		values[3] = Int64GetDatum(serial);
		/* The first sighting stays: a later one would only ask for more. */
		dbaccess_spi_exec("INSERT INTO replstamp.dropped_column_peers (relation, column_name, peer, replica_id, serial) "
						  "SELECT d.r, d.c, $2, $3, $4 FROM pg_catalog.jsonb_to_recordset($1) AS d(r text, c text) "
						  "ON CONFLICT (relation, column_name, peer) DO NOTHING",
						  4, types, values, NULL, SPI_OK_INSERT);
	}
	dbaccess_spi_exec(catalog_sql("UPDATE replstamp.tracked_table t SET dropped_columns = ARRAY("
								  "  SELECT x FROM pg_catalog.unnest(t.dropped_columns) AS x WHERE " SOME_PEER_MAY_HAVE_IT ") "
								  "WHERE t.state OPERATOR(pg_catalog.=) 'tracked' "
								  "AND EXISTS (SELECT 1 FROM pg_catalog.unnest(t.dropped_columns) AS x "
								  "  WHERE NOT " SOME_PEER_MAY_HAVE_IT ")"),
					  0, NULL, NULL, NULL, SPI_OK_UPDATE);
	dbaccess_spi_exec(catalog_sql("DELETE FROM replstamp.dropped_column_peers w WHERE NOT EXISTS ("
								  "  SELECT 1 FROM replstamp.tracked_table t WHERE t.relation OPERATOR(pg_catalog.=) w.relation "
								  "  AND t.state OPERATOR(pg_catalog.=) 'tracked' "
								  "  AND w.column_name OPERATOR(pg_catalog.=) ANY (t.dropped_columns))"),
					  0, NULL, NULL, NULL, SPI_OK_DELETE);
}

/* ---------------------------------------------------------------------
 * Rows whose versions carry different columns (a rolling ADD COLUMN)
 * ---------------------------------------------------------------------
 */

/* The names of the members of an image, or NIL. */
static List *
image_names(Jsonb *image)
{
	List	   *names = NIL;
	JsonbIterator *it;
	JsonbValue	k;
	JsonbIteratorToken tok;

	if (image == NULL || JB_ROOT_IS_SCALAR(image) || !JB_ROOT_IS_OBJECT(image))
		return NIL;
	it = JsonbIteratorInit(&image->root);
	while ((tok = JsonbIteratorNext(&it, &k, true)) != WJB_DONE)
		if (tok == WJB_KEY)
			names = lappend(names, pnstrdup(k.val.string.val, k.val.string.len));
	return names;
}

/* The image of a version held here, or NULL. */
static Jsonb *
version_image(ApplySession *s, const Version *v)
{
	Change		c;

	if (!changelog_fetch(s->cat, &v->replica_id, v->serial, &c))
		return NULL;
	return c.image;
}

/*
 * A winning version becomes the row's latest.  Its carry: the latest
 * version carrying columns it lacks.  That is the winner itself if it
 * carries columns this table lacks; else the old latest version, if it
 * carries columns of this table the winner lacks (the winner came from a
 * node without them: their values stay the old version's); else what is
 * left of the old carry.
 */
static void
put_winner(ApplySession *s, ApplyTable *t, Change *change, ChangeRow *row,
		   RowVersion *cur, const Version *ver, List *lacked, bool *present)
{
	TupleDesc	desc = RelationGetDescr(t->rel);
	List	   *absent = NIL;
	List	   *left;
	Version		old_carry = cur->carry;
	Version		old_latest = cur->v;

	if (lacked != NIL)
	{
		rowversion_put(s->rvw, change->relation, row, cur, ver, false, ver, lacked);
		return;
	}
	/* Columns of this table the winner does not carry. */
	for (int a = 0; a < desc->natts; a++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, a);

		if (!att->attisdropped && !att->attgenerated && !present[a])
			absent = lappend(absent, pstrdup(NameStr(att->attname)));
	}
	if (absent != NIL && cur->found && !cur->deleted)
	{
		List	   *old_names = image_names(version_image(s, &old_latest));
		List	   *kept = NIL;
		ListCell   *lc;

		foreach(lc, absent)
			if (list_has_name(old_names, lfirst(lc)))
			kept = lappend(kept, lfirst(lc));
		if (kept != NIL)
		{
			rowversion_put(s->rvw, change->relation, row, cur, ver, false, &old_latest, kept);
			return;
		}
	}
	left = rowversion_carry_left(cur, change->image);
	rowversion_put(s->rvw, change->relation, row, cur, ver, false, left ? &old_carry : NULL, left);
}

/*
 * A losing version may still carry the latest values of columns the row's
 * latest version lacks (it came from a node without them).  Those values
 * are written (if this table has the columns) and the loser becomes the
 * row's carry, unless a later carry holds them already.
 */
static void
carry_from_loser(ApplySession *s, ApplyTable *t, Change *change, ChangeRow *row,
				 RowVersion *cur, const Version *ver, bool found,
				 Datum *values, bool *nulls, bool *present)
{
	TupleDesc	desc = RelationGetDescr(t->rel);
	List	   *latest_names;
	List	   *theirs = image_names(change->image);
	List	   *only_here = NIL;
	ListCell   *lc;
	bool	   *write;
	bool		any = false;
	Version		latest = cur->v;

	if (cur->partial && rowversion_cmp(ver, &cur->carry) < 0)
		return;					/* a later version carries them already */
	/* Fetched only when versions are compared: during rolling DDL. */
	latest_names = image_names(version_image(s, &latest));
	if (latest_names == NIL)
		return;
	foreach(lc, theirs)
		if (!list_has_name(latest_names, lfirst(lc)) && !list_has_name(t->dropped, lfirst(lc)))
		only_here = lappend(only_here, lfirst(lc));
	if (only_here == NIL)
		return;

	write = palloc0(sizeof(bool) * desc->natts);
	for (int a = 0; a < desc->natts; a++)
		if (present[a] && list_has_name(only_here, NameStr(TupleDescAttr(desc, a)->attname)))
			write[a] = any = true;
	if (any && found)
	{
		PushActiveSnapshot(GetLatestSnapshot());
		t->estate->es_output_cid = GetCurrentCommandId(true);
		AfterTriggerBeginQuery();
		build_new_row(t, true, false, values, nulls, write);
		ExecSimpleRelationUpdate(t->rri, t->estate, &t->epq, t->localslot, t->newslot);
		stamp_skip_tuple(t->relid, &t->newslot->tts_tid);
		AfterTriggerEndQuery(t->estate);
		stamp_skip_clear();
		PopActiveSnapshot();
		ResetPerTupleExprContext(t->estate);
	}
	rowversion_put(s->rvw, change->relation, row, cur, &latest, false, ver, only_here);
}

/* What looking for a row and locking it found. */
typedef enum RowLookup
{
	ROW_ABSENT,					/* no such row (none committed or in flight) */
	ROW_LOCKED,					/* found and locked for update: in
								 * t->localslot */
	ROW_BUSY					/* another transaction holds it or is writing
								 * it */
} RowLookup;

/*
 * Find the row whose primary key is in key, through the primary key index,
 * and lock it for update, as RelationFindReplTupleByIndex() does; but
 * with nowait, answer ROW_BUSY at once instead of waiting for another
 * transaction that holds the row, or inserts, updates or deletes it.
 */
static RowLookup
find_row(ApplyTable *t, TupleTableSlot *key, bool nowait)
{
	IndexScanDesc scan = t->pkscan;
	RowLookup	result;

	for (int k = 0; k < t->npkkeys; k++)
		t->pkkeys[k].sk_argument = key->tts_values[t->pkidx->rd_index->indkey.values[k] - 1];
	InitDirtySnapshot(t->dirty);
	for (;;)
	{
		TransactionId xwait;
		TM_Result	res;
		TM_FailureData tmfd;
		MemoryContext old;
		bool		got;

		/*
		 * In the page's memory: the index AM may keep what it allocates
		 * (btree's list of dead items) until the scan ends with the page.
		 */
		old = MemoryContextSwitchTo(t->pkscan_cxt);
		index_rescan(scan, t->pkkeys, t->npkkeys, NULL, 0);
		got = index_getnext_slot(scan, ForwardScanDirection, t->localslot);
		MemoryContextSwitchTo(old);
		if (!got)
		{
			result = ROW_ABSENT;
			break;
		}
		/* A transaction in flight inserts or changes it: wait, look again. */
		xwait = TransactionIdIsValid(t->dirty.xmin) ? t->dirty.xmin : t->dirty.xmax;
		if (TransactionIdIsValid(xwait))
		{
			if (nowait)
			{
				result = ROW_BUSY;
				break;
			}
			XactLockTableWait(xwait, t->rel, &t->localslot->tts_tid, XLTW_Lock);
			continue;
		}
		res = table_tuple_lock(t->rel, &t->localslot->tts_tid, GetActiveSnapshot(), t->localslot,
							   GetCurrentCommandId(false), LockTupleExclusive,
							   nowait ? LockWaitSkip : LockWaitBlock, 0, &tmfd);
		if (res == TM_Ok)
		{
			result = ROW_LOCKED;
			break;
		}
		if (res == TM_WouldBlock)
		{
			result = ROW_BUSY;
			break;
		}
		/* Changed or deleted since we looked: look again. */
		if (res != TM_Updated && res != TM_Deleted)
			elog(ERROR, "replstamp: unexpected result %d locking a row of %s", (int) res,
				 RelationGetRelationName(t->rel));
	}
	return result;
}

/* A change's primary key into t's key slot, the other columns null. */
static void
store_key(ApplyTable *t, Datum *keyvalues, bool *keynulls, int natts)
{
	TupleTableSlot *key = t->keyslot;

	ExecClearTuple(key);
	memset(key->tts_isnull, true, sizeof(bool) * natts);
	for (int k = 0; k < t->layout->npk; k++)
	{
		int			a = t->layout->pk[k].attnum - 1;

		key->tts_values[a] = keyvalues[a];
		key->tts_isnull[a] = keynulls[a];
	}
	ExecStoreVirtualTuple(key);
}

/* Find and lock one of a change's rows by its primary key (see find_row()). */
static RowLookup
lock_key(ApplyTable *t, Datum *keyvalues, bool *keynulls, int natts, bool nowait)
{
	TupleTableSlot *key = t->keyslot;
	RowLookup	r;

	store_key(t, keyvalues, keynulls, natts);
	PushActiveSnapshot(GetLatestSnapshot());
	r = find_row(t, key, nowait);
	PopActiveSnapshot();
	return r;
}

/*
 * The leaf partition of the partitioned table t that holds, or would hold,
 * the row of a key, open for the page.  A partitioned table's primary key
 * includes its partition key, so the key alone routes, by this node's
 * partitions, whatever the peer's are.  A change is decoded in t's columns
 * and written as t's owner: a leaf whose columns are numbered otherwise,
 * or that has another owner, is refused.
 */
static ApplyTable *
leaf_for_key(ApplySession *s, ApplyTable *t, Datum *keyvalues, bool *keynulls)
{
	TupleTableSlot *key = t->keyslot;
	int			natts = RelationGetDescr(t->rel)->natts;
	ResultRelInfo *leafrri = NULL;
	Relation	leaf;
	Oid			leafid;
	LeafEntry  *e;
	bool		found;
	MemoryContext caller = CurrentMemoryContext;

	store_key(t, keyvalues, keynulls, natts);
	/* What routing builds lives as long as the page. */
	MemoryContextSwitchTo(s->page_cxt);
	PG_TRY();
	{
		leafrri = ExecFindPartition(t->mtstate, t->rri, t->proute, key, t->estate);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(caller);
		edata = CopyErrorData();
		if (edata->sqlerrcode != ERRCODE_CHECK_VIOLATION)
			PG_RE_THROW();
		/* PostgreSQL's message shows the key's values: ours names the table. */
		FlushErrorState();
		ereport(ERROR,
				(errcode(ERRCODE_CHECK_VIOLATION),
				 errmsg("no partition of table %s on this node takes a row of a change from peer \"%s\"",
						t->relation, s->peer),
				 errdetail("Each node finds a row's partition by its key among its own partitions."),
				 errhint("Create the partition, or a default partition, on this node.")));
	}
	PG_END_TRY();
	MemoryContextSwitchTo(caller);
	leaf = leafrri->ri_RelationDesc;
	leafid = RelationGetRelid(leaf);
	if (t->leaves == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(LeafEntry);
		ctl.hcxt = s->cxt;
		t->leaves = hash_create("replstamp leaf partitions", 16, &ctl,
								HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	e = hash_search(t->leaves, &leafid, HASH_ENTER, &found);
	if (!found || e->t == NULL)
	{
		e->t = NULL;
		if (replstamp_root_to_partition_map(leafrri, t->estate) != NULL)
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("partition \"%s\" of table %s has its columns in another order or with other dropped columns",
							RelationGetRelationName(leaf), t->relation),
					 errdetail("replstamp writes a partitioned table's rows only to partitions whose columns match the table's."),
					 errhint("Create the partition with CREATE TABLE ... PARTITION OF.")));
		if (leaf->rd_rel->relowner != t->owner)
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("partition \"%s\" of table %s has another owner than the table",
							RelationGetRelationName(leaf), t->relation),
					 errdetail("replstamp writes a partitioned table's rows as the table's owner."),
					 errhint("Give the partition the table's owner.")));
		e->t = MemoryContextAllocZero(s->cxt, sizeof(ApplyTable));
		memcpy(e->t->relation, t->relation, sizeof(t->relation));
		e->t->state = TABLE_OK;
		e->t->relid = leafid;
		e->t->owner = t->owner;
		e->t->dropped = NIL;
	}
	table_open_page(s, e->t);
	return e->t;
}

/*
 * A change replstamp.skip() asked to hold without applying: recorded as
 * held, and the skip as met.
 */
static ApplyOutcome
apply_skipped_change(ApplySession *s, Change *change)
{
	Oid			types[3] = {UUIDOID, INT8OID, TEXTOID};
	Datum		vals[3] = {UUIDPGetDatum(&change->replica_id), Int64GetDatum(change->serial),
	PointerGetDatum(change->relation)};

	change->applied = true;
	changelog_append(s->cat, change);
	spi_owner_exec("UPDATE replstamp.skipped SET skipped_at = pg_catalog.now(), relation = $3 "
				   "WHERE replica_id OPERATOR(pg_catalog.=) $1 AND serial OPERATOR(pg_catalog.=) $2",
				   3, types, vals, SPI_OK_UPDATE);
	s->skipped++;
	return APPLY_SKIPPED;
}

/*
 * Apply change to its table t: last writer wins per row, the rows written
 * as t's owner.  In the change's memory context (s->row_cxt), which the
 * caller resets.  APPLY_BUSY (with nowait) when another transaction holds
 * a row, and then nothing is written.
 */
static ApplyOutcome
apply_to_table(ApplySession *s, ApplyTable *t, Change *change, bool nowait)
{
	ApplyOutcome outcome = APPLY_NEW;
	ReplstampOwnerContext uctx;
	ChangeRow	rows[2];
	int			nrows;
	Version		ver;
	int			natts;
	Datum	   *values = NULL;
	bool	   *nulls = NULL;
	bool	   *present = NULL;
	Datum	   *keyvalues[2];
	bool	   *keynulls[2];
	List	   *lacked = NIL;
	bool		have_base = false;
	ApplyTable *rt[2];			/* each row's table: t, or its leaf partition */

	Assert(CurrentMemoryContext == s->row_cxt);
	table_open_page(s, t);
	natts = RelationGetDescr(t->rel)->natts;

	if (!rowimage_key_matches(t->layout, change->pk))
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("the row key of table %s differs between peer \"%s\" and this node",
						t->layout->relname, s->peer),
				 errdetail("The peer identifies its rows by (%s), this node by (%s).",
						   rowimage_key_names(change->pk), rowimage_layout_key_names(t->layout)),
				 errhint("Give the table the same key on every node: the same primary key, or, without one, a replica identity index on the same columns (or the same replstamp_row_id column).")));
	nrows = rowversion_change_rows(change, rows);
	ver.changed_at = change->changed_at;
	ver.replica_id = change->replica_id;
	ver.serial = change->serial;

	/* Everything the table owner's code touches runs as the table owner. */
	dbaccess_become_untrusted(t->owner, &uctx);

	/* Decode first: nothing the owner's code does later can sway it. */
	if (change->image)
	{
		List	   *missing = NIL;
		ListCell   *lc;

		values = palloc(sizeof(Datum) * natts);
		nulls = palloc0(sizeof(bool) * natts);
		present = palloc0(sizeof(bool) * natts);
		(void) rowimage_decode(t->layout, change->image, values, nulls, present, &missing);
		/* Columns this table lacks, unless dropped here on purpose. */
		foreach(lc, missing)
			if (!list_has_name(t->dropped, lfirst(lc)))
			lacked = lappend(lacked, lfirst(lc));
	}
	for (int i = 0; i < nrows; i++)
	{
		keyvalues[i] = palloc(sizeof(Datum) * natts);
		keynulls[i] = palloc0(sizeof(bool) * natts);
		rowimage_decode_key(t->layout, rows[i].key, keyvalues[i], keynulls[i]);
		rt[i] = t->partitioned ? leaf_for_key(s, t, keyvalues[i], keynulls[i]) : t;
	}

	/*
	 * A key-changing UPDATE (two rows): both rows locked before either is
	 * written, or neither.
	 */
	if (nowait && nrows == 2)
	{
		for (int i = 0; i < nrows && outcome != APPLY_BUSY; i++)
			if (lock_key(rt[i], keyvalues[i], keynulls[i], natts, true) == ROW_BUSY)
				outcome = APPLY_BUSY;
	}
	for (int i = 0; i < nrows && outcome != APPLY_BUSY; i++)
	{
		ChangeRow  *row = &rows[i];
		RowVersion	cur;
		RowLookup	r;
		bool		found;

		/* Lock the row: a local change of it has then committed. */
		r = lock_key(rt[i], keyvalues[i], keynulls[i], natts, nowait && nrows == 1);
		if (r == ROW_BUSY)
		{
			/* Only with one row: nothing is written yet. */
			outcome = APPLY_BUSY;
			break;
		}
		found = (r == ROW_LOCKED);

		/* Last writer wins, against the row's latest version held here. */
		rowversion_reconcile(s->rvw, s->reconcile);
		s->rvw->superseding = NULL;
		rowversion_get(s->rvw, change->relation, row, &cur);
		if (row->deleted && nrows == 2 && found)
		{
			keep_base(rt[i], rt[nrows - 1]);
			have_base = true;
		}
		if (cur.found && rowversion_cmp(&ver, &cur.v) < 0)
		{
			log_conflict(s, rt[i], change, row, "incoming_lost", &cur.v, &ver, change);
			if (!row->deleted && !cur.deleted)
				carry_from_loser(s, rt[i], change, row, &cur, &ver, found, values, nulls, present);
			continue;
		}
		if (cur.found && !cur.deleted &&
			memcmp(cur.v.replica_id.data, ver.replica_id.data, UUID_LEN) != 0)
			log_conflict(s, rt[i], change, row, "overwrote", &ver, &cur.v, NULL);

		/* Write the row, with the executor's routines. */
		PushActiveSnapshot(GetLatestSnapshot());
		rt[i]->estate->es_output_cid = GetCurrentCommandId(true);
		AfterTriggerBeginQuery();
		if (row->deleted)
		{
			if (found)
			{
				constraints_note_write(s->cons, rt[i]->rel, rt[i]->localslot, NULL);
				ExecSimpleRelationDelete(rt[i]->rri, rt[i]->estate, &rt[i]->epq, rt[i]->localslot);
				stamp_skip_tuple(rt[i]->relid, &rt[i]->localslot->tts_tid);
			}
		}
		else
		{
			build_new_row(rt[i], found, have_base, values, nulls, present);
			if (!constraints_unique_ok(s, rt[i]->rel, rt[i]->rri, rt[i]->estate, rt[i]->newslot,
									   found ? rt[i]->localslot : NULL, &ver, change, row))
			{
				/*
				 * It lost a second unique key: its row goes, as a change made
				 * here.
				 */
				if (found)
				{
					constraints_note_write(s->cons, rt[i]->rel, rt[i]->localslot, NULL);
					ExecSimpleRelationDelete(rt[i]->rri, rt[i]->estate, &rt[i]->epq, rt[i]->localslot);
				}
			}
			else
			{
				/* After what constraints_unique_ok() may have deleted. */
				rt[i]->estate->es_output_cid = GetCurrentCommandId(true);
				constraints_note_write(s->cons, rt[i]->rel, found ? rt[i]->localslot : NULL, rt[i]->newslot);
				if (found)
					ExecSimpleRelationUpdate(rt[i]->rri, rt[i]->estate, &rt[i]->epq, rt[i]->localslot, rt[i]->newslot);
				else
					ExecSimpleRelationInsert(rt[i]->rri, rt[i]->estate, rt[i]->newslot);
				stamp_skip_tuple(rt[i]->relid, &rt[i]->newslot->tts_tid);
			}
		}
		AfterTriggerEndQuery(rt[i]->estate);
		stamp_skip_clear();
		PopActiveSnapshot();
		ResetPerTupleExprContext(rt[i]->estate);

		if (row->deleted)
			rowversion_put(s->rvw, change->relation, row, &cur, &ver, true, NULL, NIL);
		else
			put_winner(s, rt[i], change, row, &cur, &ver, lacked, present);
	}
	dbaccess_restore_user(&uctx);

	if (outcome == APPLY_NEW)
	{
		change->applied = true;
		changelog_append(s->cat, change);
		serial_clock_seen(change->changed_at);
	}
	return outcome;
}

/* What truncate_row() needs. */
typedef struct TruncateArg
{
	ApplySession *s;
	ApplyTable *t;
	Datum	   *keyvalues;
	bool	   *keynulls;
} TruncateArg;

/* Delete from its table one row a TRUNCATE covers, as the table's owner. */
static void
truncate_row(Jsonb *key, void *arg)
{
	TruncateArg *a = arg;
	ApplyTable *t = a->t;
	int			natts = RelationGetDescr(t->rel)->natts;
	ReplstampOwnerContext uctx;

	dbaccess_become_untrusted(t->owner, &uctx);
	memset(a->keynulls, false, sizeof(bool) * natts);
	rowimage_decode_key(t->layout, key, a->keyvalues, a->keynulls);
	if (t->partitioned)
		t = leaf_for_key(a->s, t, a->keyvalues, a->keynulls);
	if (lock_key(t, a->keyvalues, a->keynulls, natts, false) == ROW_LOCKED)
	{
		PushActiveSnapshot(GetLatestSnapshot());
		t->estate->es_output_cid = GetCurrentCommandId(true);
		AfterTriggerBeginQuery();
		constraints_note_write(a->s->cons, t->rel, t->localslot, NULL);
		ExecSimpleRelationDelete(t->rri, t->estate, &t->epq, t->localslot);
		stamp_skip_tuple(t->relid, &t->localslot->tts_tid);
		AfterTriggerEndQuery(t->estate);
		stamp_skip_clear();
		PopActiveSnapshot();
		ResetPerTupleExprContext(t->estate);
	}
	dbaccess_restore_user(&uctx);
}

/*
 * Lock a table EXCLUSIVE, and, when it is partitioned, every partition
 * (a local write of a partition need not lock its parent).  With nowait,
 * false if one is held.
 */
static bool
lock_for_truncate(Oid relid, bool nowait)
{
	List	   *rels = find_all_inheritors(relid, NoLock, NULL);
	ListCell   *lc;

	foreach(lc, rels)
	{
		if (!nowait)
			LockRelationOid(lfirst_oid(lc), ExclusiveLock);
		else if (!ConditionalLockRelationOid(lfirst_oid(lc), ExclusiveLock))
			return false;
	}
	return true;
}

/*
 * Apply a TRUNCATE to its table t: every row whose latest version the
 * truncating node held is deleted, the others stay (rowversion.c,
 * "TRUNCATE").  The table is locked EXCLUSIVE first, so that no local
 * transaction holds or writes one of its rows while the rows are deleted
 * one by one (with nowait, APPLY_BUSY if one does).  Rows that have no
 * version here (written before the table was tracked, and not backfilled)
 * are not replicated rows, and stay.
 */
static ApplyOutcome
apply_truncate(ApplySession *s, ApplyTable *t, Change *change, bool nowait)
{
	TruncateArg a;
	int			natts;

	Assert(CurrentMemoryContext == s->row_cxt);
	table_open_page(s, t);
	if (!lock_for_truncate(t->relid, nowait))
		return APPLY_BUSY;

	/* Local changes of the table are all committed now: record them. */
	rowversion_reconcile(s->rvw, s->reconcile);
	s->rvw->superseding = NULL;
	natts = RelationGetDescr(t->rel)->natts;
	a.s = s;
	a.t = t;
	a.keyvalues = palloc0(sizeof(Datum) * Max(natts, 1));
	a.keynulls = palloc0(sizeof(bool) * Max(natts, 1));
	(void) rowversion_truncate(s->rvw, change, truncate_row, &a);

	change->applied = true;
	changelog_append(s->cat, change);
	serial_clock_seen(change->changed_at);
	return APPLY_NEW;
}

/*
 * Apply a schema change (ddl.c) at its place in the stream.  The statement
 * may alter a table the page holds open: every table of the page is
 * closed first (the next change opens it again, with its new layout), and
 * what the sync knew of the change's table is looked up again after it.
 * Columns it added or dropped are then noted as a sync's start notes a
 * rolling ADD or DROP COLUMN.
 */
static ApplyOutcome
apply_schema_change(ApplySession *s, Change *change, bool nowait)
{
	ListCell   *lc;
	ApplyTable *t;

	Assert(CurrentMemoryContext == s->row_cxt);
	if (VARSIZE_ANY_EXHDR(change->relation) >= MAX_RELATION_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_NAME_TOO_LONG),
				 errmsg("peer \"%s\" sent a change with an overlong table name", s->peer)));
	foreach(lc, s->open_tables)
		table_close_page(lfirst(lc));
	if (!ddl_apply(change, s->peer, nowait))
		return APPLY_BUSY;
	t = hash_search(s->tables, text_to_cstring(change->relation), HASH_FIND, NULL);
	if (t != NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(s->cxt);

		lookup_table(s, t, t->relation);
		MemoryContextSwitchTo(old);
	}
	apply_fill_new_columns(s);

	change->applied = true;
	changelog_append(s->cat, change);
	serial_clock_seen(change->changed_at);
	return APPLY_NEW;
}

/*
 * Does the log hold the change already?  The log's highest serial of each
 * replica ID is looked up once per sync and raised as the sync appends, so
 * a change above it, as nearly every change of a backlog is, needs no
 * lookup.  That holds because only a sync adds changes of other nodes'
 * IDs, and the syncs of a database run one at a time (rowversion_lock());
 * a highest serial left too high by an aborted page only sends changes to
 * the lookup.  The node's own ID, which local writes stamp meanwhile, is
 * always looked up.
 */
static bool
change_held(ApplySession *s, const Change *change)
{
	HeldUpto   *h;
	bool		found;

	Assert(rowversion_lock_held());
	if (memcmp(change->replica_id.data, catalog_node()->replica_id.data, UUID_LEN) == 0)
		return changelog_held(s->cat, &change->replica_id, change->serial);
	h = hash_search(s->held, &change->replica_id, HASH_ENTER, &found);
	if (!found)
		h->max = changelog_max_serial(s->cat, &change->replica_id);
	if (change->serial > h->max)
		return false;
	return changelog_held(s->cat, &change->replica_id, change->serial);
}

/* After the change was appended to the log: change_held() knows. */
static void
note_held(ApplySession *s, const Change *change)
{
	HeldUpto   *h = hash_search(s->held, &change->replica_id, HASH_FIND, NULL);

	if (h != NULL)
		h->max = Max(h->max, change->serial);
}

/*
 * Apply one change, in the current page's transaction.  With nowait, a
 * change whose row another transaction holds is not applied: APPLY_BUSY,
 * and nothing of it written (the caller commits what it applied before,
 * so that it holds no row lock while it waits, and applies it again).
 * Whatever the outcome, the change's memory is freed and the error
 * context popped in one place, at the end.
 */
ApplyOutcome
apply_change(ApplySession *s, Change *change, bool nowait)
{
	ApplyOutcome outcome = APPLY_HELD;

	Assert(IsTransactionState());
	if (!change_held(s, change))
	{
		MemoryContext old = MemoryContextSwitchTo(s->row_cxt);
		ApplyErrorArg earg;
		ErrorContextCallback errcb;

		earg.s = s;
		earg.change = change;
		errcb.callback = apply_error_context;
		errcb.arg = &earg;
		errcb.previous = error_context_stack;
		error_context_stack = &errcb;

		if (apply_stamp_skipped(s, &change->replica_id, change->serial))
			outcome = apply_skipped_change(s, change);
		else if (change->op == 'S')
			outcome = apply_schema_change(s, change, nowait);
		else
		{
			ApplyTable *t = resolve_table(s, change);

			if (t->state == TABLE_IGNORED)
				outcome = APPLY_IGNORED;
			else if (change->op == 'T')
				outcome = apply_truncate(s, t, change, nowait);
			else
				outcome = apply_to_table(s, t, change, nowait);
		}
		if (outcome == APPLY_NEW || outcome == APPLY_SKIPPED)
			note_held(s, change);

		error_context_stack = errcb.previous;
		MemoryContextSwitchTo(old);
		MemoryContextReset(s->row_cxt);
	}
	return outcome;
}

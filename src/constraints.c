/*-------------------------------------------------------------------------
 *
 * constraints.c
 *		Constraints on apply.  The apply runs with session_replication_role
 *		'replica', so PostgreSQL's foreign-key triggers do not fire, and a
 *		second unique key taken on two nodes would stop the sync.  Here a
 *		pulled change that would break a foreign key or a second unique key
 *		is a conflict with one outcome on every node, whatever order the
 *		changes arrive in:
 *
 *	- foreign keys: a child row whose referenced row is gone (a child
 *	  written here or pulled, its parent deleted concurrently elsewhere)
 *	  gets what the key's ON DELETE action gives: SET NULL and SET DEFAULT
 *	  set its columns, every other action (CASCADE, NO ACTION, RESTRICT)
 *	  deletes it: the parent's deletion wins.  A child deleted so may be a
 *	  parent in turn: its children follow.
 *	- second unique keys (every unique index but the row key's, the
 *	  primary key or rowimage_key_index()): of
 *	  two rows that take the same value, the one whose latest version is
 *	  the later (by last writer wins' order) is deleted; a row never
 *	  stamped loses to one that was.
 *
 * Every remedy is a new change made here, stamped by the stamp trigger as
 * a local change, later than everything this node has seen (the hybrid
 * clock): it reaches every peer and wins there as it did here, so every
 * node converges even when it got the rows through relays, and two nodes
 * that both resolve a conflict make the same change twice (two deletions
 * of one row).  Each remedy is recorded in replstamp.conflict with the
 * version that lost, which replstamp.restore_version() can bring back.
 *
 * When: second unique keys are checked before each write (the index would
 * refuse the row), deferrable ones before the applied transaction commits
 * (replica mode skips the trigger that checks them; inside a transaction
 * they may be broken and hold again at its end).  Foreign keys are noted as the apply writes (a child
 * written, a parent deleted or its referenced key changed) and checked
 * before the applied transaction commits: constraints_check_deferred().
 * A referenced row missing then is resolved only once the node holds
 * everything the writer of the change had seen ('complete'): until the
 * apply is causal, that is the end of a sync (a child pulled before its
 * parent, which another replica ID's range brings later, is no orphan);
 * meanwhile the notes whose parent is present are dropped at every
 * commit, so the list holds only rows still orphaned.
 *
 * replstamp.on_constraint_conflict = 'stop' makes each of these an error
 * instead (the sync stops; a unique key stops at the change, which
 * replstamp.skip() can name).
 *
 * Plans and the constraints of each table are cached per backend and
 * dropped when a relcache invalidation names a table of the cache.
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"
#include "errors.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/nbtree.h"
#include "access/relscan.h"
#include "access/skey.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/index.h"
#include "catalog/indexing.h"
#include "catalog/pg_constraint.h"
#include "catalog/pg_operator.h"
#include "catalog/pg_type.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "storage/lmgr.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

#include "apply.h"
#include "catalog.h"
#include "compat.h"
#include "constraints.h"
#include "dbaccess.h"
#include "rowimage.h"
#include "rowversion.h"
#include "serial.h"
#include "stamp.h"
#include "wakeup.h"

int			constraints_on_conflict = CONSTRAINT_CONFLICT_RESOLVE;

static const struct config_enum_entry on_conflict_options[] = {
	{"resolve", CONSTRAINT_CONFLICT_RESOLVE, false},
	{"stop", CONSTRAINT_CONFLICT_STOP, false},
	{NULL, 0, false}
};

/* The four lookups of a foreign key, each a kept plan. */
enum
{
	PARENT_BY_PARENT,			/* is there a parent with these parent values */
	PARENT_BY_CHILD,			/* ... with these child values */
	CHILDREN_BY_PARENT,			/* the children of these parent values */
	CHILDREN_BY_CHILD,			/* ... of these child values */
	NPLANS
};

/* One foreign key. */
typedef struct FkInfo
{
	Oid			conoid;
	char	   *conname;
	Oid			child;			/* conrelid */
	Oid			parent;			/* confrelid */
	Oid			child_owner;
	Oid			parent_owner;
	char	   *child_name;		/* schema-qualified, quoted */
	char	   *parent_name;
	bool		child_partitioned;
	bool		parent_partitioned;
	int			nkeys;
	AttrNumber	childatt[INDEX_MAX_KEYS];
	AttrNumber	parentatt[INDEX_MAX_KEYS];
	Oid			childtype[INDEX_MAX_KEYS];
	Oid			parenttype[INDEX_MAX_KEYS];
	Oid			pfeq[INDEX_MAX_KEYS];
	Oid			ppeq[INDEX_MAX_KEYS];
	Oid			ffeq[INDEX_MAX_KEYS];
	char		deltype;		/* confdeltype */
	int			nsetcols;		/* ON DELETE SET NULL/DEFAULT (columns) */
	AttrNumber	setcols[INDEX_MAX_KEYS];
	SPIPlanPtr	plans[NPLANS];
} FkInfo;

/* What the cache knows of one table. */
typedef struct RelCons
{
	Oid			relid;			/* hash key */
	List	   *as_child;		/* FkInfo *: keys of this table */
	List	   *as_parent;		/* FkInfo *: keys referencing this table */
	bool		has_unique;		/* a unique index besides the primary key */
	bool		has_deferred_unique;	/* one of them deferrable */
} RelCons;

/* A foreign key to check: a child's values, or a parent's old ones. */
typedef struct Candidate
{
	Oid			child;
	Oid			conoid;
	bool		child_side;		/* values are the child's columns */
	bool		delete_only;	/* set by a SET DEFAULT remedy: delete next */
	Datum		values[INDEX_MAX_KEYS];
} Candidate;

/* A row written to a table with a deferrable unique key: to check. */
typedef struct UniqueCandidate
{
	Oid			relid;
	HeapTuple	tuple;			/* the row as written */
} UniqueCandidate;

struct ConstraintState
{
	MemoryContext cxt;			/* the sync's */
	List	   *pending;		/* Candidate * */
	List	   *unique_pending; /* UniqueCandidate * */
};

/* The backend's cache. */
static MemoryContext cache_cxt = NULL;
static HTAB *rel_cache = NULL;
static bool cache_stale = false;
static int	cache_pins = 0;		/* callers holding pointers into it */

/* Set while a SET DEFAULT remedy notes the row it wrote. */
static bool noting_delete_only = false;

static void
invalidate_callback(Datum arg, Oid relid)
{
	if (rel_cache == NULL)
		return;
	if (!OidIsValid(relid) || hash_search(rel_cache, &relid, HASH_FIND, NULL) != NULL)
		cache_stale = true;
}

/*
 * GUCs and the relcache callback.  Called from _PG_init.
 */
void
constraints_init(void)
{
	DefineCustomEnumVariable("replstamp.on_constraint_conflict",
							 "What the apply does with a pulled change that would break a foreign key or a second unique key.",
							 "resolve (the default): the outcome the documentation gives, made as new stamped "
							 "changes and recorded in replstamp.conflicts; stop: an error, the sync stops there.",
							 &constraints_on_conflict,
							 CONSTRAINT_CONFLICT_RESOLVE, on_conflict_options,
							 PGC_SUSET,
							 0,
							 NULL, NULL, NULL);
	CacheRegisterRelcacheCallback(invalidate_callback, (Datum) 0);
}

/* Drop the cache if an invalidation named one of its tables. */
static void
cache_ready(void)
{
	HASHCTL		ctl;

	if (cache_cxt != NULL && cache_stale && cache_pins == 0)
	{
		HASH_SEQ_STATUS seq;
		RelCons    *rc;

		hash_seq_init(&seq, rel_cache);
		while ((rc = hash_seq_search(&seq)) != NULL)
		{
			ListCell   *lc;

			foreach(lc, list_concat_copy(rc->as_child, rc->as_parent))
			{
				FkInfo	   *fk = lfirst(lc);

				for (int p = 0; p < NPLANS; p++)
					if (fk->plans[p])
						SPI_freeplan(fk->plans[p]);
			}
		}
		MemoryContextDelete(cache_cxt);
		cache_cxt = NULL;
		rel_cache = NULL;
	}
	if (cache_cxt != NULL)
		return;
	cache_stale = false;
	cache_cxt = AllocSetContextCreate(CacheMemoryContext, "replstamp constraints",
									  ALLOCSET_SMALL_SIZES);
	ctl.keysize = sizeof(Oid);
	ctl.entrysize = sizeof(RelCons);
	ctl.hcxt = cache_cxt;
	rel_cache = hash_create("replstamp constraints", 64, &ctl,
							HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
}

/* OPERATOR(schema.name), for a query. */
static char *
operator_sql(Oid opoid)
{
	HeapTuple	tup = SearchSysCache1(OPEROID, ObjectIdGetDatum(opoid));
	Form_pg_operator op;
	char	   *s;

	if (!HeapTupleIsValid(tup))
		elog(ERROR, "replstamp: cache lookup failed for operator %u", opoid);
	op = (Form_pg_operator) GETSTRUCT(tup);
	s = psprintf("OPERATOR(%s.%s)", quote_identifier(get_namespace_name(op->oprnamespace)),
				 NameStr(op->oprname));
	ReleaseSysCache(tup);
	return s;
}

static void
rel_facts(Oid relid, char **name, Oid *owner, bool *partitioned)
{
	HeapTuple	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	Form_pg_class c;

	if (!HeapTupleIsValid(tup))
		elog(ERROR, "replstamp: cache lookup failed for relation %u", relid);
	c = (Form_pg_class) GETSTRUCT(tup);
	*name = quote_qualified_identifier(get_namespace_name(c->relnamespace), NameStr(c->relname));
	*owner = c->relowner;
	*partitioned = c->relkind == RELKIND_PARTITIONED_TABLE;
	ReleaseSysCache(tup);
}

/* A foreign key from its pg_constraint row, in the cache's memory. */
static FkInfo *
fk_from_tuple(HeapTuple tup)
{
	Form_pg_constraint con = (Form_pg_constraint) GETSTRUCT(tup);
	FkInfo	   *fk = palloc0(sizeof(FkInfo));

	fk->conoid = con->oid;
	fk->conname = pstrdup(NameStr(con->conname));
	fk->child = con->conrelid;
	fk->parent = con->confrelid;
	fk->deltype = con->confdeltype;
	DeconstructFkConstraintRow(tup, &fk->nkeys, fk->childatt, fk->parentatt,
							   fk->pfeq, fk->ppeq, fk->ffeq, &fk->nsetcols, fk->setcols);
	rel_facts(fk->child, &fk->child_name, &fk->child_owner, &fk->child_partitioned);
	rel_facts(fk->parent, &fk->parent_name, &fk->parent_owner, &fk->parent_partitioned);
	for (int k = 0; k < fk->nkeys; k++)
	{
		fk->childtype[k] = get_atttype(fk->child, fk->childatt[k]);
		fk->parenttype[k] = get_atttype(fk->parent, fk->parentatt[k]);
	}
	return fk;
}

/* The foreign keys of rel (as child, or as parent if parent), from pg_constraint. */
static List *
fks_of(Oid relid, bool parent)
{
	Relation	conrel = table_open(ConstraintRelationId, AccessShareLock);
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;
	List	   *fks = NIL;

	/* No index leads by confrelid: a scan, once per table per cache. */
	ScanKeyInit(&key, parent ? Anum_pg_constraint_confrelid : Anum_pg_constraint_conrelid,
				BTEqualStrategyNumber, F_OIDEQ, ObjectIdGetDatum(relid));
	scan = systable_beginscan(conrel, parent ? InvalidOid : ConstraintRelidTypidNameIndexId,
							  !parent, NULL, 1, &key);
	while (HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		if (((Form_pg_constraint) GETSTRUCT(tup))->contype == CONSTRAINT_FOREIGN)
			fks = lappend(fks, fk_from_tuple(tup));
	}
	systable_endscan(scan);
	table_close(conrel, AccessShareLock);
	return fks;
}

/* What the cache knows of rel, built on first use. */
static RelCons *
rel_cons(Relation rel)
{
	Oid			relid = RelationGetRelid(rel);
	RelCons    *rc;
	bool		found;
	List	   *as_child;
	List	   *as_parent;
	bool		has_unique = false;
	bool		has_deferred_unique = false;
	Oid			keyoid;
	List	   *indexes;
	ListCell   *lc;
	MemoryContext old;

	cache_ready();
	rc = hash_search(rel_cache, &relid, HASH_FIND, NULL);
	if (rc)
		return rc;
	old = MemoryContextSwitchTo(cache_cxt);
	as_child = fks_of(relid, false);
	as_parent = fks_of(relid, true);
	MemoryContextSwitchTo(old);
	keyoid = rowimage_key_index(rel);
	indexes = RelationGetIndexList(rel);
	foreach(lc, indexes)
	{
		HeapTuple	tup = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(lfirst_oid(lc)));
		Form_pg_index ix;

		if (!HeapTupleIsValid(tup))
			continue;
		ix = (Form_pg_index) GETSTRUCT(tup);
		if (ix->indisunique && ix->indexrelid != keyoid && ix->indimmediate && ix->indisvalid)
			has_unique = true;
		if (ix->indisunique && ix->indexrelid != keyoid && !ix->indimmediate && ix->indisvalid)
			has_deferred_unique = true;
		ReleaseSysCache(tup);
	}
	list_free(indexes);
	rc = hash_search(rel_cache, &relid, HASH_ENTER, &found);
	rc->as_child = as_child;
	rc->as_parent = as_parent;
	rc->has_unique = has_unique;
	rc->has_deferred_unique = has_deferred_unique;
	return rc;
}

static FkInfo *
find_fk(Oid child, Oid conoid)
{
	RelCons    *rc;
	ListCell   *lc;

	cache_ready();
	rc = hash_search(rel_cache, &child, HASH_FIND, NULL);
	if (rc == NULL)
	{
		Relation	rel = try_table_open(child, AccessShareLock);

		if (rel == NULL)
			return NULL;
		rc = rel_cons(rel);
		table_close(rel, AccessShareLock);
	}
	foreach(lc, rc->as_child)
		if (((FkInfo *) lfirst(lc))->conoid == conoid)
		return lfirst(lc);
	return NULL;
}

/*
 * The plan of one of a key's lookups, prepared once per backend.  The
 * lookups are those of PostgreSQL's own triggers (ri_triggers.c): a
 * parent is locked FOR KEY SHARE, children FOR UPDATE.
 */
static SPIPlanPtr
fk_plan(FkInfo *fk, int which)
{
	StringInfoData q;
	bool		by_child = (which == PARENT_BY_CHILD || which == CHILDREN_BY_CHILD);
	bool		of_parent = (which == PARENT_BY_PARENT || which == PARENT_BY_CHILD);
	Oid			types[INDEX_MAX_KEYS];
	SPIPlanPtr	plan;

	if (fk->plans[which])
		return fk->plans[which];
	initStringInfo(&q);
	if (of_parent)
		appendStringInfo(&q, "SELECT 1 FROM %s%s x WHERE ", fk->parent_partitioned ? "" : "ONLY ",
						 fk->parent_name);
	else
		appendStringInfo(&q, "SELECT x.ctid FROM %s%s x WHERE ", fk->child_partitioned ? "" : "ONLY ",
						 fk->child_name);
	for (int k = 0; k < fk->nkeys; k++)
	{
		const char *col = quote_identifier(of_parent ?
										   get_attname(fk->parent, fk->parentatt[k], false) :
										   get_attname(fk->child, fk->childatt[k], false));

		types[k] = by_child ? fk->childtype[k] : fk->parenttype[k];
		if (k > 0)
			appendStringInfoString(&q, " AND ");
		if (which == PARENT_BY_PARENT)
			appendStringInfo(&q, "x.%s %s $%d", col, operator_sql(fk->ppeq[k]), k + 1);
		else if (which == PARENT_BY_CHILD)
			appendStringInfo(&q, "x.%s %s $%d", col, operator_sql(fk->pfeq[k]), k + 1);
		else if (which == CHILDREN_BY_PARENT)
			appendStringInfo(&q, "$%d %s x.%s", k + 1, operator_sql(fk->pfeq[k]), col);
		else
			appendStringInfo(&q, "x.%s %s $%d", col, operator_sql(fk->ffeq[k]), k + 1);
	}
	appendStringInfoString(&q, of_parent ? " FOR KEY SHARE OF x" : " FOR UPDATE OF x");
	plan = SPI_prepare(q.data, fk->nkeys, types);
	if (plan == NULL)
		elog(ERROR, "replstamp: could not prepare \"%s\": %s", q.data, SPI_result_code_string(SPI_result));
	if (SPI_keepplan(plan) != 0)
		elog(ERROR, "replstamp: could not keep a plan");
	fk->plans[which] = plan;
	return plan;
}

/* ---------------------------------------------------------------------
 * Noting what a write may leave without its referenced row
 * ---------------------------------------------------------------------
 */

ConstraintState *
constraints_session_begin(MemoryContext cxt)
{
	ConstraintState *cs = MemoryContextAllocZero(cxt, sizeof(ConstraintState));

	cs->cxt = cxt;
	return cs;
}

/* The values of atts in slot; false if one is null (MATCH SIMPLE: no check). */
static bool
key_values(TupleTableSlot *slot, int n, const AttrNumber *atts, Datum *values)
{
	for (int k = 0; k < n; k++)
	{
		if (slot->tts_isnull[atts[k] - 1])
			return false;
		values[k] = slot->tts_values[atts[k] - 1];
	}
	return true;
}

static bool
key_same(TupleTableSlot *a, TupleTableSlot *b, int n, const AttrNumber *atts)
{
	for (int k = 0; k < n; k++)
	{
		Form_pg_attribute att = TupleDescAttr(a->tts_tupleDescriptor, atts[k] - 1);
		int			i = atts[k] - 1;

		if (a->tts_isnull[i] != b->tts_isnull[i])
			return false;
		if (!a->tts_isnull[i] &&
			!datum_image_eq(a->tts_values[i], b->tts_values[i], att->attbyval, att->attlen))
			return false;
	}
	return true;
}

static void
add_candidate(ConstraintState *cs, FkInfo *fk, bool child_side, TupleDesc desc,
			  const AttrNumber *atts, Datum *values)
{
	MemoryContext old = MemoryContextSwitchTo(cs->cxt);
	Candidate  *c = palloc0(sizeof(Candidate));

	c->child = fk->child;
	c->conoid = fk->conoid;
	c->child_side = child_side;
	c->delete_only = child_side && noting_delete_only;
	for (int k = 0; k < fk->nkeys; k++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, atts[k] - 1);

		c->values[k] = datumCopy(values[k], att->attbyval, att->attlen);
	}
	cs->pending = lappend(cs->pending, c);
	MemoryContextSwitchTo(old);
}

/*
 * A row of rel is about to be written: oldrow is the row as it is (NULL
 * for an INSERT), newrow the row to be (NULL for a DELETE).  Notes each
 * foreign key the write may break: one whose child columns it sets, one
 * whose referenced columns it deletes or changes; and a row written to a
 * table with a deferrable unique key.  Checked by
 * constraints_check_deferred() before the transaction commits.
 */
void
constraints_note_write(ConstraintState *cs, Relation rel, TupleTableSlot *oldrow,
					   TupleTableSlot *newrow)
{
	RelCons    *rc = rel_cons(rel);
	TupleDesc	desc = RelationGetDescr(rel);
	ListCell   *lc;

	if (rc->has_deferred_unique && newrow)
	{
		MemoryContext old = MemoryContextSwitchTo(cs->cxt);
		UniqueCandidate *u = palloc(sizeof(UniqueCandidate));

		u->relid = RelationGetRelid(rel);
		u->tuple = ExecCopySlotHeapTuple(newrow);
		cs->unique_pending = lappend(cs->unique_pending, u);
		MemoryContextSwitchTo(old);
	}
	if (rc->as_child == NIL && rc->as_parent == NIL)
		return;
	if (oldrow)
		slot_getallattrs(oldrow);
	if (newrow)
		slot_getallattrs(newrow);
	foreach(lc, rc->as_child)
	{
		FkInfo	   *fk = lfirst(lc);
		Datum		values[INDEX_MAX_KEYS];

		if (newrow && key_values(newrow, fk->nkeys, fk->childatt, values) &&
			!(oldrow && key_same(oldrow, newrow, fk->nkeys, fk->childatt)))
			add_candidate(cs, fk, true, desc, fk->childatt, values);
	}
	foreach(lc, rc->as_parent)
	{
		FkInfo	   *fk = lfirst(lc);
		Datum		values[INDEX_MAX_KEYS];

		if (oldrow && key_values(oldrow, fk->nkeys, fk->parentatt, values) &&
			!(newrow && key_same(oldrow, newrow, fk->nkeys, fk->parentatt)))
			add_candidate(cs, fk, false, desc, fk->parentatt, values);
	}
}

/* ---------------------------------------------------------------------
 * Checking foreign keys before the applied transaction commits
 * ---------------------------------------------------------------------
 */

/* Does the referenced row of c exist (locked FOR KEY SHARE if so)? */
static bool
parent_exists(FkInfo *fk, Candidate *c)
{
	ReplstampOwnerContext ctx;
	int			ret;
	bool		found;

	dbaccess_become_untrusted(fk->parent_owner, &ctx);
	SPI_connect();
	ret = SPI_execute_plan(fk_plan(fk, c->child_side ? PARENT_BY_CHILD : PARENT_BY_PARENT),
						   c->values, NULL, false, 1);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "replstamp: could not look up a referenced row: %s", SPI_result_code_string(ret));
	found = SPI_processed > 0;
	SPI_finish();
	dbaccess_restore_user(&ctx);
	return found;
}

/* The children of c, locked FOR UPDATE: their tids, in the caller's memory. */
static List *
children_of(FkInfo *fk, Candidate *c)
{
	ReplstampOwnerContext ctx;
	MemoryContext caller = CurrentMemoryContext;
	List	   *tids = NIL;
	int			ret;

	dbaccess_become_untrusted(fk->child_owner, &ctx);
	SPI_connect();
	ret = SPI_execute_plan(fk_plan(fk, c->child_side ? CHILDREN_BY_CHILD : CHILDREN_BY_PARENT),
						   c->values, NULL, false, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "replstamp: could not look up referencing rows: %s", SPI_result_code_string(ret));
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		Datum		d = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull);
		MemoryContext spi = MemoryContextSwitchTo(caller);
		ItemPointer tid = palloc(sizeof(ItemPointerData));

		ItemPointerCopy((ItemPointer) DatumGetPointer(d), tid);
		tids = lappend(tids, tid);
		MemoryContextSwitchTo(spi);
	}
	SPI_finish();
	dbaccess_restore_user(&ctx);
	return tids;
}

/*
 * Delete or update one row of rel by its tid, as its owner, through SQL:
 * the stamp trigger stamps it as a change made here.  set: NULL to delete;
 * else "SET ..." for an UPDATE.  Returns the new tid of an updated row.
 */
static bool
remedy_write(Relation rel, ItemPointer tid, const char *set, ItemPointer newtid)
{
	ReplstampOwnerContext ctx;
	char	   *name = quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
												  RelationGetRelationName(rel));
	Oid			types[1] = {TIDOID};
	Datum		values[1] = {PointerGetDatum(tid)};
	char	   *sql;
	int			ret;
	bool		done;

	if (set)
		sql = psprintf("UPDATE ONLY %s SET %s WHERE ctid OPERATOR(pg_catalog.=) $1 RETURNING ctid", name, set);
	else
		sql = psprintf("DELETE FROM ONLY %s WHERE ctid OPERATOR(pg_catalog.=) $1", name);
	dbaccess_become_untrusted(rel->rd_rel->relowner, &ctx);
	SPI_connect();
	ret = SPI_execute_with_args(sql, 1, types, values, NULL, false, 0);
	if (ret != (set ? SPI_OK_UPDATE_RETURNING : SPI_OK_DELETE))
		elog(ERROR, "replstamp: could not write a row of %s: %s", name, SPI_result_code_string(ret));
	done = SPI_processed > 0;
	if (done && set)
	{
		bool		isnull;

		ItemPointerCopy((ItemPointer) DatumGetPointer(SPI_getbinval(SPI_tuptable->vals[0],
																	SPI_tuptable->tupdesc, 1, &isnull)),
						newtid);
	}
	SPI_finish();
	dbaccess_restore_user(&ctx);
	return done;
}

/* The key image of the row in slot, and its latest version held here. */
static void
row_version_of(ApplySession *s, Relation rel, TupleTableSlot *slot, ChangeRow *row,
			   RowVersion *cur)
{
	RowLayout  *layout = rowimage_layout(rel);

	rowimage_both(layout, RelationGetDescr(rel), ExecFetchSlotHeapTuple(slot, false, NULL), NULL,
				  &row->key, NULL);
	row->hash = rowimage_row_hash(layout->relname, strlen(layout->relname), row->key);
	row->deleted = false;
	rowversion_get(apply_reconciled(s), layout->relname_text, row, cur);
}

/* The change the current transaction just stamped here, if it stamped one since before. */
static bool
stamped_since(bool had, const pg_uuid_t *id0, int64 serial0, Version *v)
{
	Change		c;

	if (!wakeup_xact_stamp(&v->replica_id, &v->serial))
		return false;
	if (had && changelog_same_stamp(&v->replica_id, v->serial, id0, serial0))
		return false;
	if (!changelog_fetch(catalog_get_v11("replstamp.sync()"), &v->replica_id, v->serial, &c))
		return false;
	v->changed_at = c.changed_at;
	return true;
}

/*
 * Make one child of a missing parent hold its key: SET NULL or SET
 * DEFAULT as the key says, else delete it; as a change made here,
 * recorded.  What the remedy changes is noted in turn.
 */
static void
resolve_child(ApplySession *s, FkInfo *fk, Candidate *c, ItemPointer tid)
{
	ConstraintState *cs = apply_constraint_state(s);
	Relation	rel = table_open(fk->child, RowExclusiveLock);
	TupleTableSlot *slot = table_slot_create(rel, NULL);
	TupleTableSlot *newslot = NULL;
	bool		tracked = stamp_is_tracked(rel);
	bool		set = (fk->deltype == FKCONSTR_ACTION_SETNULL ||
					   fk->deltype == FKCONSTR_ACTION_SETDEFAULT) && !c->delete_only;
	ChangeRow	row;
	RowVersion	cur;
	Version		remedy;
	pg_uuid_t	id0;
	int64		serial0 = 0;
	bool		had;
	ItemPointerData newtid;

	if (!table_tuple_fetch_row_version(rel, tid, SnapshotAny, slot))
		elog(ERROR, "replstamp: a row of %s locked for update is gone", fk->child_name);
	slot_getallattrs(slot);
	if (tracked)
		row_version_of(s, rel, slot, &row, &cur);
	had = wakeup_xact_stamp(&id0, &serial0);
	if (set)
	{
		StringInfoData q;
		int			n = fk->nsetcols > 0 ? fk->nsetcols : fk->nkeys;
		const AttrNumber *cols = fk->nsetcols > 0 ? fk->setcols : fk->childatt;

		initStringInfo(&q);
		for (int k = 0; k < n; k++)
			appendStringInfo(&q, "%s%s = %s", k ? ", " : "",
							 quote_identifier(get_attname(fk->child, cols[k], false)),
							 fk->deltype == FKCONSTR_ACTION_SETNULL ? "NULL" : "DEFAULT");
		if (remedy_write(rel, tid, q.data, &newtid))
		{
			/* A default may name a missing parent too: then it goes. */
			newslot = table_slot_create(rel, NULL);
			if (table_tuple_fetch_row_version(rel, &newtid, SnapshotAny, newslot))
			{
				noting_delete_only = true;
				PG_TRY();
				{
					constraints_note_write(cs, rel, slot, newslot);
				}
				PG_FINALLY();
				{
					noting_delete_only = false;
				}
				PG_END_TRY();
			}
		}
	}
	else
	{
		constraints_note_write(cs, rel, slot, NULL);
		(void) remedy_write(rel, tid, NULL, NULL);
	}
	if (tracked && cur.found && stamped_since(had, &id0, serial0, &remedy))
		apply_record_conflict(s, rel, row.key, set ? "orphan_updated" : "orphan_deleted",
							  &remedy, &cur.v, NULL);
	else if (set)
		ereport(LOG,
				(errmsg("replstamp: updated a row of table %s whose row in %s is gone (foreign key \"%s\")",
						fk->child_name, fk->parent_name, fk->conname)));
	else
		ereport(LOG,
				(errmsg("replstamp: deleted a row of table %s whose row in %s is gone (foreign key \"%s\")",
						fk->child_name, fk->parent_name, fk->conname)));
	if (newslot)
		ExecDropSingleTupleTableSlot(newslot);
	ExecDropSingleTupleTableSlot(slot);
	table_close(rel, NoLock);
}

static void check_pending(ApplySession *s, ConstraintState *cs, bool complete);
static void check_deferred_unique(ApplySession *s, ConstraintState *cs);

/*
 * The page's transaction was rolled back: what its writes noted is void
 * (a retry notes it again).
 */
void
constraints_forget(ConstraintState *cs)
{
	ListCell   *lc;

	list_free_deep(cs->pending);
	cs->pending = NIL;
	foreach(lc, cs->unique_pending)
		heap_freetuple(((UniqueCandidate *) lfirst(lc))->tuple);
	list_free_deep(cs->unique_pending);
	cs->unique_pending = NIL;
}

/* Are constraints noted and not checked yet? */
bool
constraints_pending(ConstraintState *cs)
{
	return cs->pending != NIL || cs->unique_pending != NIL;
}

/*
 * Before the applied transaction commits: every foreign key noted since
 * the last call holds, or is made to hold.  complete: this node holds
 * every change that the writers of the changes applied had seen (the
 * apply is causal, or a sync has pulled all its peer held); until then a
 * child whose parent is missing may only be early, and stays noted.
 *
 * Call it before every commit of applied changes (apply_page_end() does),
 * and with complete once the node holds all the peer held (the end of a
 * sync, apply_sync_end()).
 */
void
constraints_check_deferred(ApplySession *s, bool complete)
{
	ConstraintState *cs = apply_constraint_state(s);

	if (cs->pending == NIL && cs->unique_pending == NIL)
		return;
	cache_ready();
	cache_pins++;
	PG_TRY();
	{
		/* First: a row a unique key deletes may be a parent. */
		check_deferred_unique(s, cs);
		check_pending(s, cs, complete);
	}
	PG_FINALLY();
	{
		cache_pins--;
	}
	PG_END_TRY();
}

/* constraints_check_deferred(), the cache pinned. */
static void
check_pending(ApplySession *s, ConstraintState *cs, bool complete)
{
	List	   *carried = NIL;

	while (cs->pending != NIL)
	{
		List	   *work = cs->pending;
		ListCell   *lc;

		cs->pending = NIL;
		foreach(lc, work)
		{
			Candidate  *c = lfirst(lc);
			FkInfo	   *fk;
			List	   *tids;
			ListCell   *lt;

			CHECK_FOR_INTERRUPTS();
			fk = find_fk(c->child, c->conoid);
			if (fk == NULL || parent_exists(fk, c))
			{
				pfree(c);
				continue;
			}
			if (!complete)
			{
				MemoryContext old = MemoryContextSwitchTo(cs->cxt);

				carried = lappend(carried, c);
				MemoryContextSwitchTo(old);
				continue;
			}
			tids = children_of(fk, c);
			if (tids != NIL && constraints_on_conflict == CONSTRAINT_CONFLICT_STOP)
				ereport(ERROR,
						(errcode(ERRCODE_FOREIGN_KEY_VIOLATION),
						 errmsg("rows of table %s reference a row of %s that is gone (foreign key \"%s\")",
								fk->child_name, fk->parent_name, fk->conname),
						 errdetail("A change pulled from peer \"%s\" wrote a referencing row or deleted a referenced one.",
								   apply_peer(s)),
						 errhint("Delete or change the referencing rows here, or set replstamp.on_constraint_conflict to 'resolve'.")));
			foreach(lt, tids)
				resolve_child(s, fk, c, lfirst(lt));
			list_free_deep(tids);
			pfree(c);
		}
		list_free(work);
		if (!complete)
			break;
	}
	if (carried != NIL)
	{
		MemoryContext old = MemoryContextSwitchTo(cs->cxt);

		List	   *newer = cs->pending;

		cs->pending = list_concat(carried, newer);
		list_free(newer);
		MemoryContextSwitchTo(old);
	}
}

/* ---------------------------------------------------------------------
 * Second unique keys
 * ---------------------------------------------------------------------
 */

/*
 * Another row than self (whose row as it is now is oldslot, if given)
 * that holds the key newslot takes in index idx: the row in slot.  Waits for a transaction in
 * flight that writes such a row, as the index would.
 */
static bool
find_holder(Relation rel, Relation idx, IndexInfo *ii, EState *estate, TupleTableSlot *newslot,
			ItemPointer self, TupleTableSlot *oldslot, TupleTableSlot *slot)
{
	ExprContext *econtext = GetPerTupleExprContext(estate);
	Datum		values[INDEX_MAX_KEYS];
	bool		isnull[INDEX_MAX_KEYS];
	int			nkeys = IndexRelationGetNumberOfKeyAttributes(idx);
	ScanKeyData skey[INDEX_MAX_KEYS];
	SnapshotData dirty;
	IndexScanDesc scan;
	bool		found = false;

	/* An UPDATE that keeps the key's columns keeps the key. */
	if (self && oldslot && ii->ii_Expressions == NIL && ii->ii_Predicate == NIL)
	{
		bool		same = true;

		slot_getallattrs(oldslot);
		slot_getallattrs(newslot);
		for (int k = 0; k < nkeys && same; k++)
		{
			int			a = ii->ii_IndexAttrNumbers[k] - 1;
			Form_pg_attribute att = TupleDescAttr(newslot->tts_tupleDescriptor, a);

			same = oldslot->tts_isnull[a] == newslot->tts_isnull[a] &&
				(newslot->tts_isnull[a] ||
				 datum_image_eq(oldslot->tts_values[a], newslot->tts_values[a],
								att->attbyval, att->attlen));
		}
		if (same)
			return false;
	}
	econtext->ecxt_scantuple = newslot;
	if (ii->ii_Predicate != NIL)
	{
		if (ii->ii_PredicateState == NULL)
			ii->ii_PredicateState = ExecPrepareQual(ii->ii_Predicate, estate);
		if (!ExecQual(ii->ii_PredicateState, econtext))
			return false;
	}
	FormIndexDatum(ii, newslot, estate, values, isnull);
	for (int k = 0; k < nkeys; k++)
	{
		Oid			op;

		if (isnull[k])
		{
			if (!idx->rd_index->indnullsnotdistinct)
				return false;
			ScanKeyEntryInitialize(&skey[k], SK_ISNULL | SK_SEARCHNULL, k + 1, InvalidStrategy,
								   InvalidOid, InvalidOid, InvalidOid, (Datum) 0);
			continue;
		}
		op = get_opfamily_member(idx->rd_opfamily[k], idx->rd_opcintype[k],
								 idx->rd_opcintype[k], BTEqualStrategyNumber);
		if (!OidIsValid(op))
			return false;		/* not a btree: left to the index */
		ScanKeyEntryInitialize(&skey[k], 0, k + 1, BTEqualStrategyNumber, idx->rd_opcintype[k],
							   idx->rd_indcollation[k], get_opcode(op), values[k]);
	}
	InitDirtySnapshot(dirty);
	scan = index_beginscan(rel, idx, &dirty, nkeys, 0);
	for (;;)
	{
		TransactionId xwait;

		index_rescan(scan, skey, nkeys, NULL, 0);
		found = false;
		while (index_getnext_slot(scan, ForwardScanDirection, slot))
		{
			if (self && ItemPointerEquals(&slot->tts_tid, self))
				continue;
			found = true;
			break;
		}
		if (!found)
			break;
		xwait = TransactionIdIsValid(dirty.xmin) ? dirty.xmin : dirty.xmax;
		if (!TransactionIdIsValid(xwait))
			break;
		XactLockTableWait(xwait, rel, &slot->tts_tid, XLTW_InsertIndexUnique);
	}
	index_endscan(scan);
	return found;
}

static bool resolve_unique(ApplySession *s, Relation rel, ResultRelInfo *rri, EState *estate,
						   TupleTableSlot *newslot, ItemPointer self, TupleTableSlot *oldslot,
						   const Version *ver, Change *change, ChangeRow *row);

/*
 * Before the apply writes newslot (over oldslot, the row as it is, or as
 * a new row if NULL) for the change of row at version ver: does another
 * row hold one of its second unique keys?  Of the two, the one whose latest version is the later
 * loses.  If the other row loses, it is deleted (a change made here) and
 * the write may go on: true.  If the incoming row loses: false, and the
 * caller deletes its row here, if it has one (a change made here too),
 * instead of writing it.  Either way the conflict is recorded, with the
 * loser's version.  With replstamp.on_constraint_conflict = 'stop',
 * always true: the index refuses the row.
 */
bool
constraints_unique_ok(ApplySession *s, Relation rel, ResultRelInfo *rri, EState *estate,
					  TupleTableSlot *newslot, TupleTableSlot *oldslot, const Version *ver,
					  Change *change, ChangeRow *row)
{
	RelCons    *rc = rel_cons(rel);
	ItemPointer self = oldslot ? &oldslot->tts_tid : NULL;
	volatile bool ok = true;

	if (!rc->has_unique || constraints_on_conflict == CONSTRAINT_CONFLICT_STOP)
		return true;
	cache_pins++;
	PG_TRY();
	{
		ok = resolve_unique(s, rel, rri, estate, newslot, self, oldslot, ver, change, row);
	}
	PG_FINALLY();
	{
		cache_pins--;
	}
	PG_END_TRY();
	return ok;
}

/* constraints_unique_ok(), the cache pinned. */
static bool
resolve_unique(ApplySession *s, Relation rel, ResultRelInfo *rri, EState *estate,
			   TupleTableSlot *newslot, ItemPointer self, TupleTableSlot *oldslot,
			   const Version *ver, Change *change, ChangeRow *row)
{
	TupleTableSlot *slot = table_slot_create(rel, NULL);
	bool		ok = true;
	Oid			keyoid = rowimage_key_index(rel);

	for (int i = 0; i < rri->ri_NumIndices && ok; i++)
	{
		Relation	idx = rri->ri_IndexRelationDescs[i];
		IndexInfo  *ii = rri->ri_IndexRelationInfo[i];

		if (idx == NULL || !idx->rd_index->indisunique || RelationGetRelid(idx) == keyoid ||
			!idx->rd_index->indimmediate || !idx->rd_index->indisvalid)
			continue;
		while (find_holder(rel, idx, ii, estate, newslot, self, oldslot, slot))
		{
			ChangeRow	hrow;
			RowVersion	hcur;

			/* A remedy made now is later than this change. */
			serial_clock_seen(ver->changed_at);
			slot_getallattrs(slot);
			row_version_of(s, rel, slot, &hrow, &hcur);
			if (hcur.found && !hcur.deleted && rowversion_cmp(ver, &hcur.v) > 0)
			{
				apply_record_conflict(s, rel, row->key, "unique_lost", &hcur.v, ver, change);
				ok = false;
				break;
			}
			constraints_note_write(apply_constraint_state(s), rel, slot, NULL);
			if (!remedy_write(rel, &slot->tts_tid, NULL, NULL))
				elog(ERROR, "replstamp: could not delete a row of %s holding a unique key",
					 RelationGetRelationName(rel));
			if (hcur.found)
				apply_record_conflict(s, rel, hrow.key, "unique_lost", ver, &hcur.v, NULL);
			else
				ereport(LOG,
						(errmsg("replstamp: deleted a row of table %s that was never stamped, for the unique index \"%s\" of a change from peer \"%s\"",
								RelationGetRelationName(rel), RelationGetRelationName(idx),
								apply_peer(s))));
		}
	}
	ExecDropSingleTupleTableSlot(slot);
	return ok;
}

/* ---------------------------------------------------------------------
 * Deferrable unique keys
 * ---------------------------------------------------------------------
 */

/*
 * A deferrable unique key may be broken inside a transaction and hold at
 * its end (two rows that swap their values): the origin checks it at
 * commit, and replica mode skips the trigger that would check it here.
 * So the rows the apply wrote to such tables are checked before the
 * applied transaction commits, when each origin transaction applied is
 * whole: a value two rows hold then is a conflict of concurrent writes,
 * resolved as for other unique keys (the row whose latest version is the
 * later is deleted, a change made here, recorded).
 */
/* The tables of the rows to check, one after the other. */
static int
unique_candidate_cmp(const ListCell *a, const ListCell *b)
{
	Oid			x = ((UniqueCandidate *) lfirst(a))->relid;
	Oid			y = ((UniqueCandidate *) lfirst(b))->relid;

	return (x > y) - (x < y);
}

/* One table's indexes and slots, open while its rows are checked. */
typedef struct UniqueTable
{
	Relation	rel;
	EState	   *estate;
	ResultRelInfo *rri;
	TupleTableSlot *written;
	TupleTableSlot *cur;
	TupleTableSlot *holder;
	Relation	pk;
	IndexInfo  *pkinfo;
} UniqueTable;

static bool
unique_table_open(UniqueTable *t, Oid relid)
{
	Oid			keyoid;

	memset(t, 0, sizeof(UniqueTable));
	t->rel = try_table_open(relid, RowExclusiveLock);
	if (t->rel == NULL)
		return false;
	t->estate = CreateExecutorState();
	t->rri = makeNode(ResultRelInfo);
	InitResultRelInfo(t->rri, t->rel, 1, NULL, 0);
	ExecOpenIndices(t->rri, false);
	t->written = MakeSingleTupleTableSlot(RelationGetDescr(t->rel), &TTSOpsHeapTuple);
	t->cur = table_slot_create(t->rel, NULL);
	t->holder = table_slot_create(t->rel, NULL);
	keyoid = rowimage_key_index(t->rel);
	for (int i = 0; i < t->rri->ri_NumIndices; i++)
		if (RelationGetRelid(t->rri->ri_IndexRelationDescs[i]) == keyoid)
		{
			t->pk = t->rri->ri_IndexRelationDescs[i];
			t->pkinfo = t->rri->ri_IndexRelationInfo[i];
		}
	return true;
}

static void
unique_table_close(UniqueTable *t)
{
	if (t->rel == NULL)
		return;
	ExecDropSingleTupleTableSlot(t->holder);
	ExecDropSingleTupleTableSlot(t->cur);
	ExecDropSingleTupleTableSlot(t->written);
	ExecCloseIndices(t->rri);
	FreeExecutorState(t->estate);
	table_close(t->rel, NoLock);
	t->rel = NULL;
}

static void
check_deferred_unique(ApplySession *s, ConstraintState *cs)
{
	List	   *work = cs->unique_pending;
	ListCell   *lc;
	UniqueTable t = {0};
	Oid			open_relid = InvalidOid;
	bool		open_ok = false;

	cs->unique_pending = NIL;
	/* Each table opened once, however many of its rows the page wrote. */
	list_sort(work, unique_candidate_cmp);
	foreach(lc, work)
	{
		UniqueCandidate *u = lfirst(lc);
		Relation	rel;
		EState	   *estate;
		ResultRelInfo *rri;
		TupleTableSlot *cur;
		TupleTableSlot *holder;
		bool		found = false;

		CHECK_FOR_INTERRUPTS();
		if (u->relid != open_relid)
		{
			unique_table_close(&t);
			open_relid = u->relid;
			open_ok = unique_table_open(&t, u->relid);
		}
		if (!open_ok)
		{
			heap_freetuple(u->tuple);
			continue;
		}
		rel = t.rel;
		estate = t.estate;
		rri = t.rri;
		cur = t.cur;
		holder = t.holder;
		/* A remedy's SQL sees what the apply wrote. */
		CommandCounterIncrement();
		ExecStoreHeapTuple(u->tuple, t.written, false);

		/*
		 * The row as it is now (a later change of the page may have changed
		 * it).
		 */
		if (t.pk)
			found = find_holder(rel, t.pk, t.pkinfo, estate, t.written, NULL, NULL, cur);
		for (int i = 0; found && i < rri->ri_NumIndices; i++)
		{
			Relation	idx = rri->ri_IndexRelationDescs[i];
			IndexInfo  *ii = rri->ri_IndexRelationInfo[i];

			if (!idx->rd_index->indisunique || RelationGetRelid(idx) == rowimage_key_index(rel) ||
				idx->rd_index->indimmediate || !idx->rd_index->indisvalid)
				continue;
			while (found && find_holder(rel, idx, ii, estate, cur, &cur->tts_tid, NULL, holder))
			{
				ChangeRow	crow;
				RowVersion	cver;
				ChangeRow	hrow;
				RowVersion	hver;
				bool		cur_loses;
				TupleTableSlot *loser;

				if (constraints_on_conflict == CONSTRAINT_CONFLICT_STOP)
					ereport(ERROR,
							(errcode(ERRCODE_UNIQUE_VIOLATION),
							 errmsg("rows of table %s take the same value of the deferrable unique index \"%s\"",
									quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
															   RelationGetRelationName(rel)),
									RelationGetRelationName(idx)),
							 errdetail("A change pulled from peer \"%s\" wrote one of them.", apply_peer(s)),
							 errhint("Change or delete one of the rows here, or set replstamp.on_constraint_conflict to 'resolve'.")));
				slot_getallattrs(cur);
				slot_getallattrs(holder);
				row_version_of(s, rel, cur, &crow, &cver);
				row_version_of(s, rel, holder, &hrow, &hver);

				/*
				 * The later version loses; a row never stamped loses to one
				 * that was.
				 */
				if (!cver.found || cver.deleted)
					cur_loses = hver.found && !hver.deleted;
				else
					cur_loses = hver.found && !hver.deleted && rowversion_cmp(&cver.v, &hver.v) > 0;
				loser = cur_loses ? cur : holder;
				serial_clock_seen(cur_loses ? cver.v.changed_at : hver.v.changed_at);
				constraints_note_write(cs, rel, loser, NULL);
				if (!remedy_write(rel, &loser->tts_tid, NULL, NULL))
					elog(ERROR, "replstamp: could not delete a row of %s holding a unique key",
						 RelationGetRelationName(rel));
				CommandCounterIncrement();
				if (cur_loses ? cver.found : hver.found)
					apply_record_conflict(s, rel, cur_loses ? crow.key : hrow.key, "unique_lost",
										  cur_loses ? &hver.v : &cver.v,
										  cur_loses ? &cver.v : &hver.v, NULL);
				else
					ereport(LOG,
							(errmsg("replstamp: deleted a row of table %s that was never stamped, for the unique index \"%s\" of a change from peer \"%s\"",
									RelationGetRelationName(rel), RelationGetRelationName(idx),
									apply_peer(s))));
				if (cur_loses)
					found = false;
			}
		}
		ExecClearTuple(t.written);
		ResetPerTupleExprContext(estate);
		heap_freetuple(u->tuple);
	}
	unique_table_close(&t);
	list_free_deep(work);
}

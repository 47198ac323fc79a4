/*-------------------------------------------------------------------------
 *
 * changelog.c
 *		Direct access to replstamp.changes.  Appending is on the hot path
 *		of every stamped write, so it builds no SQL: heap_insert() plus the
 *		table's index entries, with the table and its indexes locked once
 *		per (sub)transaction and kept locked to its end, as DML does.
 *
 * Lookups and range reads go through the primary key (replica_id, serial)
 * with SnapshotSelf: they see this transaction's own changes (a batch sees
 * what it recorded so far) and every committed one, which is what the
 * apply and the reconciliation of local changes need.
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/toast_compression.h"
#include "access/toast_internals.h"
#include "access/xact.h"
#include "catalog/index.h"
#include "miscadmin.h"
#include "parser/parse_relation.h"
#include "storage/proc.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/inval.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "changelog.h"
#include "compat.h"
#include "errors.h"
#include "rowimage.h"
#include "serial.h"
#include "wakeup.h"

/*
 * The indexes of replstamp.changes (plain column indexes, and partial ones
 * on applied changes only), cached until a relcache invalidation of the
 * table.
 */
typedef struct ChangesIndex
{
	Oid			indexoid;
	IndexInfo  *info;
	bool		applied_only;	/* WHERE applied */
} ChangesIndex;

static ChangesIndex *changes_indexes = NULL;
static int	changes_nindexes = 0;
static Oid	changes_indexes_relid = InvalidOid;

/* The (sub)transaction that holds the locks on replstamp.changes. */
static LocalTransactionId locked_lxid = InvalidLocalTransactionId;
static SubTransactionId locked_subid = InvalidSubTransactionId;
static Oid	locked_relid = InvalidOid;

static text *op_texts[5] = {NULL, NULL, NULL, NULL, NULL};

/*
 * Row images of at least this many bytes are stored compressed.  Heap
 * insertion compresses a value only when the whole tuple passes
 * TOAST_TUPLE_THRESHOLD (about 2 kB), which a log row of an ordinary row
 * never does: left to it, a 1 kB image of mostly text is stored as it is.
 * Below this size the compressed form seldom saves enough to pay for the
 * attempt.
 */
#define IMAGE_COMPRESS_MIN	128

static void
changes_relcache_callback(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == changes_indexes_relid)
		changes_indexes_relid = InvalidOid;
}

/*
 * Register the invalidation callback.  Called from _PG_init.
 */
void
changelog_init(void)
{
	CacheRegisterRelcacheCallback(changes_relcache_callback, (Datum) 0);
}

const char *
changelog_op_name(char op)
{
	switch (op)
	{
		case 'I':
			return "INSERT";
		case 'U':
			return "UPDATE";
		case 'D':
			return "DELETE";
		case 'T':
			return "TRUNCATE";
		case 'S':
			return "DDL";
	}
	elog(ERROR, "replstamp: unknown operation code %d", op);
	return NULL;				/* keep compiler quiet */
}

/* 'I', 'U', 'D', 'T', 'S' (DDL), or 0 for anything else. */
char
changelog_op_code(const char *name, int len)
{
	if (len == 6 && memcmp(name, "INSERT", 6) == 0)
		return 'I';
	if (len == 6 && memcmp(name, "UPDATE", 6) == 0)
		return 'U';
	if (len == 6 && memcmp(name, "DELETE", 6) == 0)
		return 'D';
	if (len == 8 && memcmp(name, "TRUNCATE", 8) == 0)
		return 'T';
	if (len == 3 && memcmp(name, "DDL", 3) == 0)
		return 'S';
	return 0;
}

static text *
op_text(char op)
{
	int			i = (op == 'I') ? 0 : (op == 'U') ? 1 : (op == 'D') ? 2 : (op == 'T') ? 3 : 4;

	if (op_texts[i] == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		op_texts[i] = cstring_to_text(changelog_op_name(op));
		MemoryContextSwitchTo(old);
	}
	return op_texts[i];
}

/* Cache the indexes of replstamp.changes. */
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

		/* A predicate must be "WHERE applied". */
		if (ii->ii_Predicate != NIL)
		{
			Node	   *pred = linitial(ii->ii_Predicate);

			if (list_length(ii->ii_Predicate) == 1 && IsA(pred, Var) &&
				((Var *) pred)->varattno == Anum_changes_applied)
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

/*
 * The datum to store for a row image: compressed inline if it is large
 * enough and compression saves space, with the column's compression method
 * (ALTER TABLE replstamp.changes ALTER COLUMN row_image SET COMPRESSION),
 * else default_toast_compression, as TOAST would choose.  Readers detoast
 * as they do any stored value.
 */
static Datum
image_datum(Relation changes, Jsonb *image)
{
	Datum		value = JsonbPGetDatum(image);
	char		method;
	Datum		compressed;

	if (!VARATT_IS_4B_U(image) || VARSIZE(image) < IMAGE_COMPRESS_MIN)
		return value;
	method = TupleDescAttr(RelationGetDescr(changes), Anum_changes_row_image - 1)->attcompression;
	if (!CompressionMethodIsValid(method))
		method = default_toast_compression;
	compressed = toast_compress_datum(value, method);
	return DatumGetPointer(compressed) != NULL ? compressed : value;
}

/*
 * Append one change to the log, in the current transaction.
 */
void
changelog_append(const ReplstampCatalog *cat, Change *change)
{
	Datum		values[Natts_changes];
	bool		nulls[Natts_changes];
	Relation	changes;
	HeapTuple	tuple;
	LOCKMODE	lockmode;

	/*
	 * Lock replstamp.changes and its indexes once per (sub)transaction, and
	 * keep the locks to its end as any DML does: the lock manager is not
	 * visited again for every row.
	 */
	lockmode = RowExclusiveLock;
	if (locked_lxid == PGPROC_LXID(MyProc) && locked_subid == GetCurrentSubTransactionId() &&
		locked_relid == cat->changes)
		lockmode = NoLock;
	changes = table_open(cat->changes, lockmode);
	if (changes_indexes_relid != cat->changes)
		load_changes_indexes(changes);

	memset(nulls, false, sizeof(nulls));
	values[Anum_changes_replica_id - 1] = UUIDPGetDatum(&change->replica_id);
	values[Anum_changes_serial - 1] = Int64GetDatum(change->serial);
	values[Anum_changes_relation - 1] = PointerGetDatum(change->relation);
	values[Anum_changes_op - 1] = PointerGetDatum(op_text(change->op));
	values[Anum_changes_pk - 1] = JsonbPGetDatum(change->pk);
	if (change->image)
		values[Anum_changes_row_image - 1] = image_datum(changes, change->image);
	else
		nulls[Anum_changes_row_image - 1] = true;
	values[Anum_changes_changed_at - 1] = TimestampTzGetDatum(change->changed_at);
	values[Anum_changes_row_hash - 1] =
		Int64GetDatum(rowimage_row_hash(VARDATA_ANY(change->relation),
										VARSIZE_ANY_EXHDR(change->relation),
										change->pk));
	values[Anum_changes_applied - 1] = BoolGetDatum(change->applied);

	/*
	 * Its place in this node's log (usn) and the transaction recording it. A
	 * change stamped here is placed by its serial; a pulled one by the last
	 * serial handed out here so far, read, not taken (taking one would move
	 * this node's own vector entry with every apply, and leave gaps in its
	 * stamps).  A transaction that read another's committed change takes its
	 * serials after that one's places, so it is placed after it; two places
	 * can be equal only for transactions that did not see each other, which a
	 * server orders by transaction (sync.c).
	 */
	if (cat->v12)
	{
		values[Anum_changes_usn - 1] = change->applied ?
			Int64GetDatum(serial_next(cat->serial_seq) - 1) :
			Int64GetDatum(change->serial);
		values[Anum_changes_xact - 1] =
			Int64GetDatum((int64) U64FromFullTransactionId(GetTopFullTransactionId()));
	}
	wakeup_change_written();

	tuple = heap_form_tuple(RelationGetDescr(changes), values, nulls);
	simple_heap_insert(changes, tuple);
	for (int i = 0; i < changes_nindexes; i++)
	{
		IndexInfo  *ii = changes_indexes[i].info;
		Datum		ivalues[INDEX_MAX_KEYS];
		bool		inulls[INDEX_MAX_KEYS];
		Relation	irel;

		if (changes_indexes[i].applied_only && !change->applied)
			continue;
		irel = index_open(changes_indexes[i].indexoid, lockmode);
		for (int k = 0; k < ii->ii_NumIndexAttrs; k++)
		{
			AttrNumber	att = ii->ii_IndexAttrNumbers[k];

			ivalues[k] = values[att - 1];
			inulls[k] = nulls[att - 1];
		}
		index_insert(irel, ivalues, inulls, &tuple->t_self, changes,
					 ii->ii_Unique ? UNIQUE_CHECK_YES : UNIQUE_CHECK_NO,
					 false, ii);
		index_close(irel, NoLock);
	}
	table_close(changes, NoLock);
	heap_freetuple(tuple);
	if (change->image &&
		DatumGetPointer(values[Anum_changes_row_image - 1]) != (Pointer) change->image)
		pfree(DatumGetPointer(values[Anum_changes_row_image - 1]));
	locked_lxid = PGPROC_LXID(MyProc);
	locked_subid = GetCurrentSubTransactionId();
	locked_relid = cat->changes;
}

/* Read a change tuple into *change, in the current memory context. */
static void
deform_change(HeapTuple tuple, TupleDesc desc, Change *change)
{
	Datum		values[Natts_changes];
	bool		nulls[Natts_changes];
	text	   *op;

	heap_deform_tuple(tuple, desc, values, nulls);
	memcpy(&change->replica_id, DatumGetUUIDP(values[Anum_changes_replica_id - 1]),
		   sizeof(pg_uuid_t));
	change->serial = DatumGetInt64(values[Anum_changes_serial - 1]);
	change->relation = DatumGetTextPCopy(values[Anum_changes_relation - 1]);
	op = DatumGetTextPP(values[Anum_changes_op - 1]);
	change->op = changelog_op_code(VARDATA_ANY(op), VARSIZE_ANY_EXHDR(op));
	change->pk = DatumGetJsonbPCopy(values[Anum_changes_pk - 1]);
	change->image = nulls[Anum_changes_row_image - 1] ? NULL :
		DatumGetJsonbPCopy(values[Anum_changes_row_image - 1]);
	change->changed_at = DatumGetTimestampTz(values[Anum_changes_changed_at - 1]);
	change->applied = DatumGetBool(values[Anum_changes_applied - 1]);
	change->tid = tuple->t_self;
}

static void
stamp_keys(ScanKeyData *keys, const pg_uuid_t *id, int64 serial)
{
	ScanKeyInit(&keys[0], Anum_changes_replica_id, BTEqualStrategyNumber,
				F_UUID_EQ, UUIDPGetDatum(id));
	ScanKeyInit(&keys[1], Anum_changes_serial, BTEqualStrategyNumber,
				F_INT8EQ, Int64GetDatum(serial));
}

/*
 * Is the change (id, serial) in the log (committed, or recorded by this
 * transaction)?
 */
bool
changelog_held(const ReplstampCatalog *cat, const pg_uuid_t *id, int64 serial)
{
	Relation	rel = table_open(cat->changes, AccessShareLock);
	ScanKeyData keys[2];
	SysScanDesc scan;
	bool		found;

	stamp_keys(keys, id, serial);
	scan = systable_beginscan(rel, cat->changes_pkey, true, SnapshotSelf, 2, keys);
	found = HeapTupleIsValid(systable_getnext(scan));
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return found;
}

/*
 * The highest serial of replica ID id in the log (committed, or recorded
 * by this transaction), or 0 when it holds none.
 */
int64
changelog_max_serial(const ReplstampCatalog *cat, const pg_uuid_t *id)
{
	Relation	rel = table_open(cat->changes, AccessShareLock);
	Relation	idx = index_open(cat->changes_pkey, AccessShareLock);
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tuple;
	int64		max = 0;

	ScanKeyInit(&key, Anum_changes_replica_id, BTEqualStrategyNumber,
				F_UUID_EQ, UUIDPGetDatum(id));
	scan = systable_beginscan_ordered(rel, idx, SnapshotSelf, 1, &key);
	tuple = systable_getnext_ordered(scan, BackwardScanDirection);
	if (tuple != NULL)
	{
		bool		isnull;

		max = DatumGetInt64(heap_getattr(tuple, Anum_changes_serial,
										 RelationGetDescr(rel), &isnull));
	}
	systable_endscan_ordered(scan);
	index_close(idx, AccessShareLock);
	table_close(rel, AccessShareLock);
	return max;
}

/*
 * The change (id, serial), if it is in the log.
 */
bool
changelog_fetch(const ReplstampCatalog *cat, const pg_uuid_t *id, int64 serial,
				Change *change)
{
	Relation	rel = table_open(cat->changes, AccessShareLock);
	ScanKeyData keys[2];
	SysScanDesc scan;
	HeapTuple	tuple;
	bool		found;

	stamp_keys(keys, id, serial);
	scan = systable_beginscan(rel, cat->changes_pkey, true, SnapshotSelf, 2, keys);
	tuple = systable_getnext(scan);
	found = HeapTupleIsValid(tuple);
	if (found)
		deform_change(tuple, RelationGetDescr(rel), change);
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return found;
}

/*
 * Remove the change (id, serial) from the log.  Returns whether it was
 * there.  The caller makes sure nobody else deletes it concurrently.
 */
bool
changelog_delete(const ReplstampCatalog *cat, const pg_uuid_t *id, int64 serial)
{
	Relation	rel = table_open(cat->changes, RowExclusiveLock);
	ScanKeyData keys[2];
	SysScanDesc scan;
	HeapTuple	tuple;
	bool		found;

	stamp_keys(keys, id, serial);
	scan = systable_beginscan(rel, cat->changes_pkey, true, SnapshotSelf, 2, keys);
	tuple = systable_getnext(scan);
	found = HeapTupleIsValid(tuple);
	if (found)
		simple_heap_delete(rel, &tuple->t_self);
	systable_endscan(scan);
	table_close(rel, RowExclusiveLock);
	return found;
}

/*
 * Remove the change at tid (as read by changelog_scan()).
 */
void
changelog_delete_tid(const ReplstampCatalog *cat, ItemPointer tid)
{
	Relation	rel = table_open(cat->changes, RowExclusiveLock);

	simple_heap_delete(rel, tid);
	table_close(rel, RowExclusiveLock);
}

/*
 * Every change of id with after < serial <= upto, in serial order (only
 * those stamped here with local_only), to callback.  Each change lives in
 * a memory context reset after the callback returns.  Returns the number
 * of changes passed.
 */
int64
changelog_scan(const ReplstampCatalog *cat, const pg_uuid_t *id, int64 after,
			   int64 upto, bool local_only, ChangeCallback callback, void *arg)
{
	Relation	rel = table_open(cat->changes, AccessShareLock);
	Relation	idx = index_open(cat->changes_pkey, AccessShareLock);
	ScanKeyData keys[3];
	SysScanDesc scan;
	HeapTuple	tuple;
	MemoryContext cxt,
				old;
	int64		n = 0;

	ScanKeyInit(&keys[0], Anum_changes_replica_id, BTEqualStrategyNumber,
				F_UUID_EQ, UUIDPGetDatum(id));
	ScanKeyInit(&keys[1], Anum_changes_serial, BTGreaterStrategyNumber,
				F_INT8GT, Int64GetDatum(after));
	ScanKeyInit(&keys[2], Anum_changes_serial, BTLessEqualStrategyNumber,
				F_INT8LE, Int64GetDatum(upto));
	cxt = AllocSetContextCreate(CurrentMemoryContext, "replstamp change scan",
								ALLOCSET_DEFAULT_SIZES);
	scan = systable_beginscan_ordered(rel, idx, SnapshotSelf, 3, keys);
	while ((tuple = systable_getnext_ordered(scan, ForwardScanDirection)) != NULL)
	{
		Change		change;
		bool		go_on;

		CHECK_FOR_INTERRUPTS();
		if (local_only)
		{
			bool		isnull;

			if (DatumGetBool(heap_getattr(tuple, Anum_changes_applied,
										  RelationGetDescr(rel), &isnull)))
				continue;
		}
		old = MemoryContextSwitchTo(cxt);
		deform_change(tuple, RelationGetDescr(rel), &change);
		go_on = callback(&change, arg);
		MemoryContextSwitchTo(old);
		MemoryContextReset(cxt);
		n++;
		if (!go_on)
			break;
	}
	systable_endscan_ordered(scan);
	MemoryContextDelete(cxt);
	index_close(idx, AccessShareLock);
	table_close(rel, AccessShareLock);
	return n;
}

/*-------------------------------------------------------------------------
 *
 * verify.c
 *		replstamp.verify(): every row this node and a peer disagree on,
 *		compared when both hold the same vector; replstamp.repair(): make
 *		rows here equal to the peer's as new stamped changes; the peer's
 *		side of both (verify_digests(), verify_rows(), verify_images());
 *		and the background check (replstamp.verify_interval).
 *
 * Wording: a table's sum is the sum of its bucket digests (digest.c); a
 * side is one node's answer: its vector, then its sums and, where the two
 * sums differ, its bucket digests, then the rows of the buckets whose
 * digests differ.  A plain verification compares row_version's stamps
 * through the digests kept as rows are written: two equal tables cost
 * 4096 digest rows a side, no row.  A deep one scans the tables, digests
 * each row's content (SHA-256 of its canonical image), and so also finds
 * what was written with the trigger disabled, which row_version never saw.
 *
 * One vector: each side reads its vector, reconciles its own changes into
 * row_version and reads its digests holding the sync lock
 * (rowversion_lock(), so no apply runs meanwhile) and a page's share of
 * the page lock (no prune batch), reads its vector again, and reads rows
 * the same way; the comparison counts only if both vectors were equal and
 * did not move from the first read to the last, otherwise it is done
 * again, VERIFY_ATTEMPTS times in all, then refused.  A row that one side
 * holds only as a tombstone counts as absent there.
 *
 * Nothing here changes a row of a table but repair(), which writes through
 * the table's triggers as the caller, so that the stamp trigger stamps
 * each change and it replicates like any other.  Neither side keeps a
 * lock once its call returns; a peer that fails mid-way leaves an error
 * and nothing changed here.
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "errors.h"

#include "access/htup_details.h"
#include "access/relation.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "common/hashfn.h"
#include "catalog/namespace.h"
#include "catalog/pg_inherits.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "catalog.h"
#include "dbaccess.h"
#include "digest.h"
#include "remote.h"
#include "rowimage.h"
#include "rowversion.h"
#include "verify.h"
#include "workers.h"

PG_FUNCTION_INFO_V1(replstamp_verify);
PG_FUNCTION_INFO_V1(replstamp_repair);
PG_FUNCTION_INFO_V1(replstamp_verify_digests);
PG_FUNCTION_INFO_V1(replstamp_verify_rows);
PG_FUNCTION_INFO_V1(replstamp_verify_images);
PGDLLEXPORT void replstamp_verify_main(Datum arg);

#define VERIFY_ATTEMPTS		5
#define VERIFY_PAUSE_MS		200

/* GUC: seconds between background verifications; 0 = off. */
static int	verify_interval = 0;
static int	debug_verify_pause = 0; /* ms */

/* One table of a verification. */
typedef struct VTable
{
	char	   *relation;		/* schema-qualified, as in
								 * replstamp.tracked_table */
	Oid			relid;
	DigestSum	total;
	DigestSum  *buckets;		/* DIGEST_BUCKETS of them; zero: no row */
	bool		differs;		/* the peer's total is another */
	List	   *differing;		/* buckets (int) whose digests differ */
} VTable;

typedef struct VRowEntry
{
	char	   *pktext;			/* hash key (string) */
	Jsonb	   *pk;
	char	   *stamp_here;
	bool		deleted_here;
	bool		present_here;
	char	   *content_here;
	char	   *stamp_there;
	bool		deleted_there;
	bool		present_there;
	char	   *content_there;
	struct Image *image_there;	/* repair: the peer's row */
} VRowEntry;

/* One difference found. */
typedef struct VDiff
{
	char	   *relation;
	Jsonb	   *pk;
	char	   *stamp_here;
	char	   *stamp_there;
	const char *what;
} VDiff;

/* What a verification found and read. */
typedef struct VResult
{
	List	   *diffs;			/* VDiff */
	int64		digests_read;
	int64		rows_read;
	int			stale_buckets;
} VResult;

/* ---------------------------------------------------------------------
 * Settings
 * ---------------------------------------------------------------------
 */

void
verify_init(void)
{
	DefineCustomIntVariable("replstamp.verify_interval",
							"Seconds between background verifications of every peer; zero turns them off.",
							"Each compares this node with each peer as replstamp.verify() does "
							"and records the outcome in replstamp.peers.",
							&verify_interval,
							0, 0, INT_MAX / 1000,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);
#ifdef REPLSTAMP_TESTING
	DefineCustomIntVariable("replstamp.debug_verify_pause",
							"Testing aid: pause each verification this long between the digests and the rows.",
							"So that a test can take the peer away in the middle of a verification. Zero "
							"(the default) means no pause.",
							&debug_verify_pause,
							0, 0, 3600 * 1000,
							PGC_SUSET,
							GUC_UNIT_MS | GUC_NOT_IN_SAMPLE,
							NULL, NULL, NULL);
#endif
}

int
verify_interval_s(void)
{
	return verify_interval;
}

/* ---------------------------------------------------------------------
 * Helpers
 * ---------------------------------------------------------------------
 */

static char *
stamp_text(const pg_uuid_t *id, int64 serial)
{
	return psprintf("%s/" INT64_FORMAT, catalog_uuid_text(id), serial);
}

static char *
jsonb_text(Jsonb *j)
{
	return JsonbToCString(NULL, &j->root, VARSIZE(j));
}

static Jsonb *
jsonb_parse(const char *s)
{
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(s)));
}

/* A string member of a JSON object, or NULL. */
static JsonbValue *
json_member(Jsonb *j, const char *key)
{
	JsonbValue	k;

	if (j == NULL || !JB_ROOT_IS_OBJECT(j))
		return NULL;
	k.type = jbvString;
	k.val.string.val = (char *) key;
	k.val.string.len = strlen(key);
	return findJsonbValueFromContainer(&j->root, JB_FOBJECT, &k);
}

static char *
json_string(JsonbValue *v)
{
	if (v == NULL || v->type != jbvString)
		return NULL;
	return pnstrdup(v->val.string.val, v->val.string.len);
}

/* A nested object of a JSON object, as a Jsonb of its own, or NULL. */
static Jsonb *
json_sub(Jsonb *j, const char *key)
{
	JsonbValue *v = json_member(j, key);

	if (v == NULL || v->type != jbvBinary)
		return NULL;
	return JsonbValueToJsonb(v);
}

/* Hash tables keyed by a string a char * entry field points to. */
static uint32
text_key_hash(const void *key, Size keysize)
{
	const char *s = *(char *const *) key;

	return hash_bytes((const unsigned char *) s, strlen(s));
}

static int
text_key_compare(const void *a, const void *b, Size keysize)
{
	return strcmp(*(char *const *) a, *(char *const *) b);
}

static HTAB *
text_table(const char *name, Size entrysize)
{
	HASHCTL		ctl;

	ctl.keysize = sizeof(char *);
	ctl.entrysize = entrysize;
	ctl.hash = text_key_hash;
	ctl.match = text_key_compare;
	ctl.hcxt = CurrentMemoryContext;
	return hash_create(name, 256, &ctl, HASH_ELEM | HASH_FUNCTION | HASH_COMPARE | HASH_CONTEXT);
}

/* A JSON string literal. */
static char *
json_quote(const char *s)
{
	StringInfoData buf;

	initStringInfo(&buf);
	escape_json(&buf, s);
	return buf.data;
}

/* This node's vector as canonical JSON text: replica ID -> serial. */
static char *
vector_text(void)
{
	ReplstampOwnerContext ctx;
	char	   *v;
	MemoryContext outer = CurrentMemoryContext;

	dbaccess_become_owner(&ctx);
	SPI_connect();
	dbaccess_spi_exec_kept("SELECT coalesce(pg_catalog.jsonb_object_agg(replica_id::text, serial), '{}')::text "
						   "FROM replstamp.vector WHERE serial OPERATOR(pg_catalog.>) 0",
						   0, NULL, NULL, NULL, SPI_OK_SELECT);
	v = MemoryContextStrdup(outer, SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1));
	SPI_finish();
	dbaccess_restore_user(&ctx);
	return v;
}

/* The relation name replstamp.tracked_table knows a tracked table by. */
static char *
tracked_name(Oid relid)
{
	Relation	rel = relation_open(relid, AccessShareLock);
	char	   *name = pstrdup(rowimage_layout(rel)->relname);
	ReplstampOwnerContext ctx;
	Oid			types[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(name)};
	bool		tracked;

	relation_close(rel, AccessShareLock);
	dbaccess_become_owner(&ctx);
	SPI_connect();
	dbaccess_spi_exec(catalog_sql("SELECT 1 FROM replstamp.tracked_table WHERE relation OPERATOR(pg_catalog.=) $1 "
								  "AND state OPERATOR(pg_catalog.=) 'tracked'"),
					  1, types, values, NULL, SPI_OK_SELECT);
	tracked = SPI_processed > 0;
	SPI_finish();
	dbaccess_restore_user(&ctx);
	if (!tracked)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table %s is not tracked", name),
				 errhint("Only tables tracked with replstamp.track() can be verified or repaired.")));
	return name;
}

/* Tables by name (NULL: every tracked table here). */
static List *
resolve_tables(ArrayType *arr)
{
	List	   *out = NIL;

	if (arr == NULL)
	{
		ReplstampOwnerContext ctx;
		MemoryContext outer = CurrentMemoryContext;

		dbaccess_become_owner(&ctx);
		SPI_connect();
		dbaccess_spi_exec(catalog_sql("SELECT relation, relid FROM replstamp.tracked_table "
									  "WHERE state OPERATOR(pg_catalog.=) 'tracked' ORDER BY relation"),
						  0, NULL, NULL, NULL, SPI_OK_SELECT);
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			MemoryContext old = MemoryContextSwitchTo(outer);
			VTable	   *t = palloc0(sizeof(VTable));
			bool		isnull;

			t->relation = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
			t->relid = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull));
			out = lappend(out, t);
			MemoryContextSwitchTo(old);
		}
		SPI_finish();
		dbaccess_restore_user(&ctx);
		return out;
	}
	else
	{
		Datum	   *elems;
		bool	   *nulls;
		int			n;

		deconstruct_array(arr, REGCLASSOID, sizeof(Oid), true, TYPALIGN_INT, &elems, &nulls, &n);
		for (int i = 0; i < n; i++)
		{
			VTable	   *t;

			if (nulls[i])
				continue;
			t = palloc0(sizeof(VTable));
			t->relid = DatumGetObjectId(elems[i]);
			t->relation = tracked_name(t->relid);
			out = lappend(out, t);
		}
	}
	return out;
}

/* ---------------------------------------------------------------------
 * One side: digests
 * ---------------------------------------------------------------------
 */

/*
 * Take what keeps row_version still (the sync lock for the call, the
 * page lock's share for the transaction) and bring this node's own
 * changes into it.  The caller holds the sync lock (rowversion_lock()).
 */
static void
hold_still_and_reconcile(void)
{
	const ReplstampCatalog *cat = catalog_get_v11("replstamp.verify()");
	RowVersionWriter *w;
	ReconcileState *st;

	Assert(rowversion_lock_held());
	rowversion_page_lock(false);
	w = rowversion_writer_begin(cat);
	st = rowversion_reconcile_begin(CurrentMemoryContext);
	rowversion_reconcile(w, st);
	rowversion_reconcile_save(st);
	rowversion_writer_end(w);
	CommandCounterIncrement();
}

/* A table's bucket digests as row_digest keeps them. */
static int64
sum_plain(VTable *t)
{
	ReplstampOwnerContext ctx;
	Oid			types[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(t->relation)};
	int64		n;

	dbaccess_become_owner(&ctx);
	SPI_connect();
	dbaccess_spi_exec_kept("SELECT bucket, digest FROM replstamp.row_digest "
						   "WHERE relation OPERATOR(pg_catalog.=) $1",
						   1, types, values, NULL, SPI_OK_SELECT);
	n = SPI_processed;
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		int			b = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
		bytea	   *d = DatumGetByteaPP(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull));

		if (b < 0 || b >= DIGEST_BUCKETS || VARSIZE_ANY_EXHDR(d) != DIGEST_LEN)
			elog(ERROR, "replstamp: malformed digest of table %s", t->relation);
		memcpy(t->buckets[b].d, VARDATA_ANY(d), DIGEST_LEN);
		digest_add(&t->total, &t->buckets[b]);
	}
	SPI_finish();
	dbaccess_restore_user(&ctx);
	return n;
}

/* The canonical image of a tuple of rel, its key and its content hash. */
static void
image_of(RowLayout *layout, TupleDesc desc, HeapTuple tup, Jsonb **pk, Jsonb **image,
		 char **content)
{
	DigestSum	h;

	rowimage_both(layout, desc, tup, tup, pk, image);
	if (content)
	{
		char	   *text = jsonb_text(*image);

		digest_of_text(text, &h);
		*content = digest_hex(&h);
		pfree(text);
	}
}

/* Refuse to read a table's content for a role that may not SELECT it. */
static void
check_select(Oid relid, const char *relation)
{
	if (pg_class_aclcheck(relid, GetUserId(), ACL_SELECT) != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for table %s", relation),
				 errdetail("Deep verification and repair read the rows of the table."),
				 errhint("Grant SELECT on the table to the role that connects, or verify without deep.")));
}

typedef void (*DeepRowCallback) (VTable *t, Jsonb *pk, int64 hash, char *content, void *arg);

static int64 scan_one_table(VTable *t, Oid relid, DeepRowCallback cb, void *arg);

/*
 * Scan the table: each row's key, row hash and content hash.  A
 * partitioned table's rows are those of its leaf partitions, known by the
 * table's name (rowimage.c).
 */
static int64
scan_table(VTable *t, DeepRowCallback cb, void *arg)
{
	List	   *rels = find_all_inheritors(t->relid, AccessShareLock, NULL);
	ListCell   *lc;
	int64		n = 0;

	foreach(lc, rels)
		if (get_rel_relkind(lfirst_oid(lc)) == RELKIND_RELATION)
		n += scan_one_table(t, lfirst_oid(lc), cb, arg);
	return n;
}

/* Scan one table of scan_table(): a table, or a leaf partition. */
static int64
scan_one_table(VTable *t, Oid relid, DeepRowCallback cb, void *arg)
{
	Relation	rel = table_open(relid, AccessShareLock);
	RowLayout  *layout = rowimage_layout(rel);
	TupleDesc	desc = RelationGetDescr(rel);
	TupleTableSlot *slot = table_slot_create(rel, NULL);
	TableScanDesc scan;
	MemoryContext rowcxt = AllocSetContextCreate(CurrentMemoryContext, "replstamp verify row",
												 ALLOCSET_DEFAULT_SIZES);
	int64		n = 0;
	int			rellen = strlen(t->relation);

	scan = table_beginscan(rel, GetActiveSnapshot(), 0, NULL);
	while (table_scan_getnextslot(scan, ForwardScanDirection, slot))
	{
		MemoryContext old = MemoryContextSwitchTo(rowcxt);
		bool		shouldfree;
		HeapTuple	tup = ExecFetchSlotHeapTuple(slot, false, &shouldfree);
		Jsonb	   *pk;
		Jsonb	   *image;
		char	   *content;

		CHECK_FOR_INTERRUPTS();
		image_of(layout, desc, tup, &pk, &image, &content);
		cb(t, pk, rowimage_row_hash(t->relation, rellen, pk), content, arg);
		MemoryContextSwitchTo(old);
		MemoryContextReset(rowcxt);
		n++;
	}
	table_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	MemoryContextDelete(rowcxt);
	table_close(rel, AccessShareLock);
	return n;
}

static void
deep_sum_row(VTable *t, Jsonb *pk, int64 hash, char *content, void *arg)
{
	DigestSum	e;
	char	   *key = jsonb_text(pk);

	digest_of_content(t->relation, strlen(t->relation), key, content, &e);
	digest_add(&t->buckets[digest_bucket(hash)], &e);
	digest_add(&t->total, &e);
}

/*
 * One side's sums of tables (and their bucket digests), at the vector it
 * returns; *moved if the vector moved while it read.  Returns the digest
 * rows (plain) or table rows (deep) read.
 */
static int64
side_digests(List *tables, bool deep, char **vector, bool *moved)
{
	char	   *before;
	int64		read = 0;
	ListCell   *lc;

	before = vector_text();
	rowversion_lock();
	PG_TRY();
	{
		hold_still_and_reconcile();
		foreach(lc, tables)
		{
			VTable	   *t = lfirst(lc);

			t->buckets = palloc0(sizeof(DigestSum) * DIGEST_BUCKETS);
			memset(&t->total, 0, sizeof(DigestSum));
			if (deep)
				read += scan_table(t, deep_sum_row, NULL);
			else
				read += sum_plain(t);
		}
		*vector = vector_text();
	}
	PG_FINALLY();
	{
		rowversion_unlock();
	}
	PG_END_TRY();
	*moved = strcmp(before, *vector) != 0;
	return read;
}

/* ---------------------------------------------------------------------
 * One side: the rows of some buckets
 * ---------------------------------------------------------------------
 */

typedef struct SideRow
{
	char	   *relation;
	Jsonb	   *pk;
	char	   *stamp;			/* NULL: no row_version entry */
	bool		deleted;
	char	   *content;		/* deep: NULL when the table lacks the row */
} SideRow;

typedef struct RowsArg
{
	VTable	   *t;
	bool	   *want;			/* per bucket */
	HTAB	   *versions;		/* pk text -> SideRow of row_version */
	List	   *out;
	MemoryContext cxt;
} RowsArg;

typedef struct VersionEntry
{
	char	   *pktext;			/* hash key */
	SideRow    *row;
	bool		seen;			/* the table has the row */
} VersionEntry;

/*
 * The row_version entries of a bucket; for a plain read also checks the
 * bucket's stored digest against them, and rewrites it if it was stale
 * (returns true then).
 */
static bool
bucket_versions(VTable *t, int bucket, bool check, RowsArg *a, int64 *read)
{
	ReplstampOwnerContext ctx;
	Oid			types[3] = {TEXTOID, INT8OID, INT8OID};
	Datum		values[3];
	int64		lo,
				hi;
	DigestSum	sum;
	int64		live = 0;
	bool		stale = false;
	int			rellen = strlen(t->relation);

	digest_bucket_range(bucket, &lo, &hi);
	values[0] = CStringGetTextDatum(t->relation);
	values[1] = Int64GetDatum(lo);
	values[2] = Int64GetDatum(hi);
	memset(&sum, 0, sizeof(sum));
	dbaccess_become_owner(&ctx);
	SPI_connect();
	dbaccess_spi_exec_kept("SELECT pk, replica_id, serial, deleted FROM replstamp.row_version "
						   "WHERE relation OPERATOR(pg_catalog.=) $1 "
						   "AND row_hash OPERATOR(pg_catalog.>=) $2 AND row_hash OPERATOR(pg_catalog.<=) $3",
						   3, types, values, NULL, SPI_OK_SELECT);
	*read += SPI_processed;
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		Jsonb	   *pk = DatumGetJsonbP(SPI_getbinval(tup, desc, 1, &isnull));
		pg_uuid_t  *id = DatumGetUUIDP(SPI_getbinval(tup, desc, 2, &isnull));
		int64		serial = DatumGetInt64(SPI_getbinval(tup, desc, 3, &isnull));
		bool		deleted = DatumGetBool(SPI_getbinval(tup, desc, 4, &isnull));
		MemoryContext old = MemoryContextSwitchTo(a->cxt);
		SideRow    *r = palloc0(sizeof(SideRow));
		bool		found;
		VersionEntry *e;
		char	   *pktext;

		r->relation = t->relation;
		r->pk = DatumGetJsonbPCopy(JsonbPGetDatum(pk));
		r->stamp = stamp_text(id, serial);
		r->deleted = deleted;
		pktext = jsonb_text(r->pk);
		e = hash_search(a->versions, &pktext, HASH_ENTER, &found);
		e->pktext = pktext;
		e->row = r;
		e->seen = false;
		MemoryContextSwitchTo(old);
		if (!deleted)
		{
			DigestSum	x;

			digest_of_version(t->relation, rellen, pk, id, serial, &x);
			digest_add(&sum, &x);
			live++;
		}
	}
	if (check)
	{
		Oid			t2[2] = {TEXTOID, INT4OID};
		Datum		v2[2] = {values[0], Int32GetDatum(bucket)};
		DigestSum	stored;

		memset(&stored, 0, sizeof(stored));
		dbaccess_spi_exec_kept("SELECT digest FROM replstamp.row_digest "
							   "WHERE relation OPERATOR(pg_catalog.=) $1 AND bucket OPERATOR(pg_catalog.=) $2",
							   2, t2, v2, NULL, SPI_OK_SELECT);
		if (SPI_processed == 1)
		{
			bool		isnull;
			bytea	   *d = DatumGetByteaPP(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));

			if (VARSIZE_ANY_EXHDR(d) == DIGEST_LEN)
				memcpy(stored.d, VARDATA_ANY(d), DIGEST_LEN);
		}
		if (memcmp(stored.d, sum.d, DIGEST_LEN) != 0)
		{
			stale = true;
			ereport(WARNING,
					(errmsg("replstamp: digest of bucket %d of table %s was stale", bucket, t->relation),
					 errdetail("It did not match the row versions it sums; it was computed again from them."),
					 errhint("Report this as a bug of replstamp.")));
			digest_set_bucket(t->relation, bucket, &sum, live);
		}
	}
	SPI_finish();
	dbaccess_restore_user(&ctx);
	return stale;
}

static void
deep_rows_row(VTable *t, Jsonb *pk, int64 hash, char *content, void *arg)
{
	RowsArg    *a = arg;
	MemoryContext old;
	SideRow    *r;
	char	   *pktext;
	VersionEntry *e;

	if (!a->want[digest_bucket(hash)])
		return;
	pktext = jsonb_text(pk);
	old = MemoryContextSwitchTo(a->cxt);
	r = palloc0(sizeof(SideRow));
	r->relation = t->relation;
	r->pk = DatumGetJsonbPCopy(JsonbPGetDatum(pk));
	r->content = pstrdup(content);
	e = hash_search(a->versions, &pktext, HASH_FIND, NULL);
	if (e)
	{
		e->seen = true;
		r->stamp = e->row->stamp;
		r->deleted = e->row->deleted;
	}
	a->out = lappend(a->out, r);
	MemoryContextSwitchTo(old);
}

/*
 * One side's rows of the given buckets of t: plain, row_version's
 * entries; deep, the table's rows with their content hashes, and the
 * entries of row_version the table lacks.  *stale counts buckets whose
 * stored digest was stale.
 */
static List *
side_rows(VTable *t, List *buckets, bool deep, int64 *read, int *stale)
{
	RowsArg		a;
	ListCell   *lc;

	memset(&a, 0, sizeof(a));
	a.t = t;
	a.cxt = CurrentMemoryContext;
	a.want = palloc0(sizeof(bool) * DIGEST_BUCKETS);
	a.versions = text_table("replstamp verify versions", sizeof(VersionEntry));
	foreach(lc, buckets)
	{
		a.want[lfirst_int(lc)] = true;
		if (bucket_versions(t, lfirst_int(lc), !deep, &a, read))
			(*stale)++;
	}
	if (deep)
	{
		HASH_SEQ_STATUS seq;
		VersionEntry *e;

		*read += scan_table(t, deep_rows_row, &a);
		hash_seq_init(&seq, a.versions);
		while ((e = hash_seq_search(&seq)) != NULL)
			if (!e->seen && !e->row->deleted)
				a.out = lappend(a.out, e->row); /* content NULL: not in the
												 * table */
	}
	else
	{
		HASH_SEQ_STATUS seq;
		VersionEntry *e;

		hash_seq_init(&seq, a.versions);
		while ((e = hash_seq_search(&seq)) != NULL)
			a.out = lappend(a.out, e->row);
	}
	return a.out;
}

/* ---------------------------------------------------------------------
 * The peer's side, as SQL functions
 * ---------------------------------------------------------------------
 */

/* Pullers may ask: they read keys and stamps from replstamp.changes anyway. */
static void
check_puller(void)
{
	const ReplstampCatalog *cat = catalog_get_v11("replstamp.verify_digests()");

	if (pg_class_aclcheck(cat->changes, GetUserId(), ACL_SELECT) != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for table replstamp.changes"),
				 errdetail("Verification serves the keys and stamps the change log holds."),
				 errhint("Connect as a role that may pull from this node.")));
	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
				 errmsg("verification cannot run in a REPEATABLE READ or SERIALIZABLE transaction"),
				 errhint("Run it in a READ COMMITTED transaction.")));
}

/* A table named by a peer: it must be tracked here. */
static VTable *
named_table(const char *relation)
{
	VTable	   *t = palloc0(sizeof(VTable));
	ReplstampOwnerContext ctx;
	Oid			types[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(relation)};
	bool		isnull = true;

	t->relation = pstrdup(relation);
	dbaccess_become_owner(&ctx);
	SPI_connect();
	dbaccess_spi_exec(catalog_sql("SELECT relid FROM replstamp.tracked_table WHERE relation OPERATOR(pg_catalog.=) $1 "
								  "AND state OPERATOR(pg_catalog.=) 'tracked'"),
					  1, types, values, NULL, SPI_OK_SELECT);
	if (SPI_processed == 1)
		t->relid = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();
	dbaccess_restore_user(&ctx);
	if (isnull || !OidIsValid(t->relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("table %s is not tracked on this node", relation)));
	return t;
}

/* The names of a JSON array of strings. */
static List *
json_names(Jsonb *req, const char *key)
{
	JsonbValue *v = json_member(req, key);
	List	   *out = NIL;
	JsonbIterator *it;
	JsonbValue	e;
	JsonbIteratorToken tok;

	if (v == NULL || v->type != jbvBinary)
		return NIL;
	it = JsonbIteratorInit((JsonbContainer *) v->val.binary.data);
	while ((tok = JsonbIteratorNext(&it, &e, true)) != WJB_DONE)
		if (tok == WJB_ELEM && e.type == jbvString)
			out = lappend(out, pnstrdup(e.val.string.val, e.val.string.len));
	return out;
}

static bool
json_bool(Jsonb *req, const char *key)
{
	JsonbValue *v = json_member(req, key);

	return v != NULL && v->type == jbvBool && v->val.boolean;
}

/*
 * replstamp.verify_digests(request jsonb) RETURNS jsonb: the vector, and
 * per table asked for its sum and, unless the request's own sum for it
 * (totals) is the same, its non-zero bucket digests.
 * Request: {"tables": [...], "deep": bool, "totals": {table: hex}}.
 */
Datum
replstamp_verify_digests(PG_FUNCTION_ARGS)
{
	Jsonb	   *req = PG_GETARG_JSONB_P(0);
	bool		deep = json_bool(req, "deep");
	Jsonb	   *totals = json_sub(req, "totals");
	List	   *tables = NIL;
	ListCell   *lc;
	char	   *vector;
	bool		moved;
	int64		read;
	StringInfoData out;

	check_puller();
	foreach(lc, json_names(req, "tables"))
	{
		VTable	   *t = named_table(lfirst(lc));

		if (deep)
			check_select(t->relid, t->relation);
		tables = lappend(tables, t);
	}
	read = side_digests(tables, deep, &vector, &moved);

	initStringInfo(&out);
	appendStringInfo(&out, "{\"vector\": %s, \"moved\": %s, \"read\": " INT64_FORMAT ", \"tables\": {",
					 vector, moved ? "true" : "false", read);
	foreach(lc, tables)
	{
		VTable	   *t = lfirst(lc);
		char	   *theirs = json_string(json_member(totals, t->relation));
		char	   *mine = digest_hex(&t->total);
		bool		first = true;

		appendStringInfo(&out, "%s%s: {\"total\": \"%s\"", lc == list_head(tables) ? "" : ", ",
						 json_quote(t->relation), mine);
		if (theirs == NULL || strcmp(theirs, mine) != 0)
		{
			appendStringInfoString(&out, ", \"buckets\": {");
			for (int b = 0; b < DIGEST_BUCKETS; b++)
			{
				if (digest_is_zero(&t->buckets[b]))
					continue;
				appendStringInfo(&out, "%s\"%d\": \"%s\"", first ? "" : ", ", b, digest_hex(&t->buckets[b]));
				first = false;
			}
			appendStringInfoChar(&out, '}');
		}
		appendStringInfoChar(&out, '}');
	}
	appendStringInfoString(&out, "}}");
	PG_RETURN_JSONB_P(jsonb_parse(out.data));
}

/* Bucket numbers of a JSON array. */
static List *
json_ints(JsonbValue *v)
{
	List	   *out = NIL;
	JsonbIterator *it;
	JsonbValue	e;
	JsonbIteratorToken tok;

	if (v == NULL || v->type != jbvBinary)
		return NIL;
	it = JsonbIteratorInit((JsonbContainer *) v->val.binary.data);
	while ((tok = JsonbIteratorNext(&it, &e, true)) != WJB_DONE)
	{
		if (tok == WJB_ELEM && e.type == jbvNumeric)
		{
			int			b = DatumGetInt32(DirectFunctionCall1(numeric_int4, NumericGetDatum(e.val.numeric)));

			if (b < 0 || b >= DIGEST_BUCKETS)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("bucket %d is out of range", b)));
			out = lappend_int(out, b);
		}
	}
	return out;
}

static void
put_side_row(ReturnSetInfo *rsinfo, SideRow *r)
{
	Datum		values[5];
	bool		nulls[5] = {false, false, r->stamp == NULL, false, r->content == NULL};

	values[0] = CStringGetTextDatum(r->relation);
	values[1] = JsonbPGetDatum(r->pk);
	values[2] = r->stamp ? CStringGetTextDatum(r->stamp) : (Datum) 0;
	values[3] = BoolGetDatum(r->deleted);
	values[4] = r->content ? CStringGetTextDatum(r->content) : (Datum) 0;
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
}

/*
 * replstamp.verify_rows(request jsonb): the rows of the buckets asked for.
 * Request: {"deep": bool, "tables": {table: [bucket, ...]}}.
 */
Datum
replstamp_verify_rows(PG_FUNCTION_ARGS)
{
	Jsonb	   *req = PG_GETARG_JSONB_P(0);
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	bool		deep = json_bool(req, "deep");
	Jsonb	   *tables = json_sub(req, "tables");
	JsonbIterator *it;
	JsonbValue	k;
	JsonbIteratorToken tok;
	List	   *names = NIL;
	ListCell   *lc;
	int64		read = 0;
	int			stale = 0;

	check_puller();
	InitMaterializedSRF(fcinfo, 0);
	if (tables == NULL)
		return (Datum) 0;
	it = JsonbIteratorInit(&tables->root);
	while ((tok = JsonbIteratorNext(&it, &k, true)) != WJB_DONE)
		if (tok == WJB_KEY)
			names = lappend(names, pnstrdup(k.val.string.val, k.val.string.len));
	rowversion_lock();
	PG_TRY();
	{
		rowversion_page_lock(false);
		foreach(lc, names)
		{
			VTable	   *t = named_table(lfirst(lc));
			List	   *rows;
			ListCell   *rc;

			if (deep)
				check_select(t->relid, t->relation);
			rows = side_rows(t, json_ints(json_member(tables, t->relation)), deep, &read, &stale);
			foreach(rc, rows)
				put_side_row(rsinfo, lfirst(rc));
		}
	}
	PG_FINALLY();
	{
		rowversion_unlock();
	}
	PG_END_TRY();
	return (Datum) 0;
}

/* The row of a key in a table (as the caller), or false. */
static bool
fetch_row(RowLayout *layout, Relation rel, Jsonb *pk, Jsonb **image)
{
	StringInfoData sql;
	Datum	   *values = palloc0(sizeof(Datum) * RelationGetDescr(rel)->natts);
	bool	   *nulls = palloc0(sizeof(bool) * RelationGetDescr(rel)->natts);
	Oid		   *types = palloc(sizeof(Oid) * layout->npk);
	Datum	   *args = palloc(sizeof(Datum) * layout->npk);
	bool		found = false;

	if (!rowimage_key_matches(layout, pk))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("key %s does not name the key columns of table %s",
						jsonb_text(pk), layout->relname)));
	rowimage_decode_key(layout, pk, values, nulls);
	initStringInfo(&sql);
	appendStringInfo(&sql, "SELECT t FROM %s t WHERE ", layout->relname);
	for (int i = 0; i < layout->npk; i++)
	{
		ImageColumn *col = &layout->pk[i];

		appendStringInfo(&sql, "%st.%s OPERATOR(pg_catalog.=) $%d", i ? " AND " : "",
						 quote_identifier(col->name), i + 1);
		types[i] = col->typid;
		args[i] = values[col->attnum - 1];
	}
	if (SPI_execute_with_args(sql.data, layout->npk, types, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "replstamp: could not read table %s", layout->relname);
	if (SPI_processed == 1)
	{
		bool		isnull;
		HeapTupleHeader th = DatumGetHeapTupleHeader(SPI_getbinval(SPI_tuptable->vals[0],
																   SPI_tuptable->tupdesc, 1, &isnull));
		HeapTupleData tup;
		Jsonb	   *k;

		tup.t_len = HeapTupleHeaderGetDatumLength(th);
		ItemPointerSetInvalid(&tup.t_self);
		tup.t_tableOid = RelationGetRelid(rel);
		tup.t_data = th;
		image_of(layout, RelationGetDescr(rel), &tup, &k, image, NULL);
		found = true;
	}
	return found;
}

/* The stamp of a row's latest version here, or NULL. */
static char *
version_stamp(const char *relation, Jsonb *pk)
{
	ReplstampOwnerContext ctx;
	Oid			types[3] = {INT8OID, TEXTOID, JSONBOID};
	Datum		values[3];
	char	   *stamp = NULL;
	MemoryContext outer = CurrentMemoryContext;

	values[0] = Int64GetDatum(rowimage_row_hash(relation, strlen(relation), pk));
	values[1] = CStringGetTextDatum(relation);
	values[2] = JsonbPGetDatum(pk);
	dbaccess_become_owner(&ctx);
	SPI_connect();
	dbaccess_spi_exec_kept("SELECT replica_id::text OPERATOR(pg_catalog.||) '/' OPERATOR(pg_catalog.||) serial "
						   "FROM replstamp.row_version WHERE row_hash OPERATOR(pg_catalog.=) $1 "
						   "AND relation OPERATOR(pg_catalog.=) $2 AND pk OPERATOR(pg_catalog.=) $3",
						   3, types, values, NULL, SPI_OK_SELECT);
	if (SPI_processed == 1)
		stamp = MemoryContextStrdup(outer,
									SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1));
	SPI_finish();
	dbaccess_restore_user(&ctx);
	return stamp;
}

typedef struct Image
{
	Jsonb	   *pk;
	char	   *stamp;
	Jsonb	   *image;			/* NULL: no such row */
} Image;

/* The rows of the keys here, read as the caller. */
static List *
images_here(VTable *t, List *keys)
{
	Relation	rel = table_open(t->relid, AccessShareLock);
	RowLayout  *layout = rowimage_layout(rel);
	List	   *out = NIL;
	ListCell   *lc;
	MemoryContext outer = CurrentMemoryContext;
	int			save_nestlevel = NewGUCNestLevel();

	check_select(t->relid, t->relation);
	rowimage_enter_input_settings(false);
	SPI_connect();
	foreach(lc, keys)
	{
		MemoryContext old;
		Image	   *im;
		Jsonb	   *image = NULL;
		bool		found = fetch_row(layout, rel, lfirst(lc), &image);

		old = MemoryContextSwitchTo(outer);
		im = palloc0(sizeof(Image));
		im->pk = lfirst(lc);
		im->image = found ? DatumGetJsonbPCopy(JsonbPGetDatum(image)) : NULL;
		out = lappend(out, im);
		MemoryContextSwitchTo(old);
	}
	SPI_finish();
	AtEOXact_GUC(true, save_nestlevel);
	foreach(lc, out)
	{
		Image	   *im = lfirst(lc);

		im->stamp = version_stamp(t->relation, im->pk);
	}
	table_close(rel, AccessShareLock);
	return out;
}

/*
 * replstamp.verify_images(relation text, keys jsonb[]): the rows of these
 * keys here, for repair() on a peer.  Read as the caller: its SELECT
 * privilege on the table applies.
 */
Datum
replstamp_verify_images(PG_FUNCTION_ARGS)
{
	char	   *relation = text_to_cstring(PG_GETARG_TEXT_PP(0));
	ArrayType  *arr = PG_GETARG_ARRAYTYPE_P(1);
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	VTable	   *t;
	Datum	   *elems;
	bool	   *enulls;
	int			n;
	List	   *keys = NIL;
	ListCell   *lc;

	check_puller();
	InitMaterializedSRF(fcinfo, 0);
	t = named_table(relation);
	deconstruct_array(arr, JSONBOID, -1, false, TYPALIGN_INT, &elems, &enulls, &n);
	for (int i = 0; i < n; i++)
		if (!enulls[i])
			keys = lappend(keys, DatumGetJsonbP(elems[i]));
	foreach(lc, images_here(t, keys))
	{
		Image	   *im = lfirst(lc);
		Datum		values[3];
		bool		nulls[3] = {false, im->stamp == NULL, im->image == NULL};

		values[0] = JsonbPGetDatum(im->pk);
		values[1] = im->stamp ? CStringGetTextDatum(im->stamp) : (Datum) 0;
		values[2] = im->image ? JsonbPGetDatum(im->image) : (Datum) 0;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/* ---------------------------------------------------------------------
 * This node's side: verify()
 * ---------------------------------------------------------------------
 */

static char *
read_conninfo(const char *peer)
{
	ReplstampOwnerContext ctx;
	Oid			types[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(peer)};
	char	   *conninfo = NULL;
	MemoryContext outer = CurrentMemoryContext;

	dbaccess_become_owner(&ctx);
	SPI_connect();
	dbaccess_spi_exec("SELECT conninfo FROM replstamp.peer WHERE name OPERATOR(pg_catalog.=) $1",
					  1, types, values, NULL, SPI_OK_SELECT);
	if (SPI_processed == 1)
		conninfo = MemoryContextStrdup(outer,
									   SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1));
	SPI_finish();
	dbaccess_restore_user(&ctx);
	if (conninfo == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("peer \"%s\" does not exist", peer),
				 errhint("Add it with replstamp.add_peer().")));
	return conninfo;
}

/* The peer's answer to verify_digests(). */
static Jsonb *
remote_digests(Remote *r, List *tables, bool deep, bool with_totals)
{
	StringInfoData req;
	ListCell   *lc;
	const char *params[1];
	PGresult   *res;
	Jsonb	   *out;

	initStringInfo(&req);
	appendStringInfo(&req, "{\"deep\": %s, \"tables\": [", deep ? "true" : "false");
	foreach(lc, tables)
		appendStringInfo(&req, "%s%s", lc == list_head(tables) ? "" : ", ",
						 json_quote(((VTable *) lfirst(lc))->relation));
	appendStringInfoString(&req, "], \"totals\": {");
	if (with_totals)
	{
		foreach(lc, tables)
		{
			VTable	   *t = lfirst(lc);

			appendStringInfo(&req, "%s%s: \"%s\"", lc == list_head(tables) ? "" : ", ",
							 json_quote(t->relation), digest_hex(&t->total));
		}
	}
	appendStringInfoString(&req, "}}");
	params[0] = jsonb_text(jsonb_parse(req.data));
	res = remote_exec(r, "SELECT replstamp.verify_digests($1::jsonb)", 1, params, PGRES_TUPLES_OK);
	PG_TRY();
	{
		if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0))
			ereport(ERROR,
					(errcode(ERRCODE_PROTOCOL_VIOLATION),
					 errmsg("peer \"%s\" sent no digests", r->peer)));
		out = jsonb_parse(PQgetvalue(res, 0, 0));
	}
	PG_FINALLY();
	{
		PQclear(res);
	}
	PG_END_TRY();
	return out;
}

/*
 * A row of one side into the comparison, by the text of its key (pk: its
 * jsonb, or NULL to parse the text only if the row differs).
 */
static VRowEntry *
row_entry(HTAB *rows, char *pktext, Jsonb *pk)
{
	bool		found;
	VRowEntry  *e = hash_search(rows, &pktext, HASH_ENTER, &found);

	if (!found)
	{
		memset(e, 0, sizeof(VRowEntry));
		e->pktext = pktext;
		e->pk = pk;
	}
	return e;
}

/* Compare the rows of the two sides; a difference per row that differs. */
static int
compare_rows(VTable *t, HTAB *rows, bool deep, VResult *res)
{
	HASH_SEQ_STATUS seq;
	VRowEntry  *e;
	int			n = 0;

	hash_seq_init(&seq, rows);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		bool		here = deep ? e->content_here != NULL : e->present_here && !e->deleted_here;
		bool		there = deep ? e->content_there != NULL : e->present_there && !e->deleted_there;
		bool		changelog_same_stamp = e->stamp_here && e->stamp_there && strcmp(e->stamp_here, e->stamp_there) == 0;
		const char *what = NULL;
		VDiff	   *d;

		if (here && !there)
			what = "missing there";
		else if (!here && there)
			what = "missing here";
		else if (here && there)
		{
			if (deep && strcmp(e->content_here, e->content_there) != 0)
				what = changelog_same_stamp ? "other content" : "other version";
			else if (!deep && !changelog_same_stamp)
				what = "other version";
		}
		if (what == NULL)
			continue;
		d = palloc0(sizeof(VDiff));
		d->relation = t->relation;
		d->pk = e->pk ? e->pk : jsonb_parse(e->pktext);
		d->stamp_here = e->present_here ? e->stamp_here : NULL;
		d->stamp_there = e->present_there ? e->stamp_there : NULL;
		d->what = what;
		res->diffs = lappend(res->diffs, d);
		n++;
	}
	return n;
}

/* The peer's rows of the differing buckets of t into rows. */
static void
remote_rows(Remote *r, VTable *t, bool deep, HTAB *rows, VResult *res)
{
	StringInfoData req;
	ListCell   *lc;
	const char *params[1];
	PGresult   *pres;

	initStringInfo(&req);
	appendStringInfo(&req, "{\"deep\": %s, \"tables\": {%s: [", deep ? "true" : "false",
					 json_quote(t->relation));
	foreach(lc, t->differing)
		appendStringInfo(&req, "%s%d", lc == list_head(t->differing) ? "" : ", ", lfirst_int(lc));
	appendStringInfoString(&req, "]}}");
	params[0] = jsonb_text(jsonb_parse(req.data));
	pres = remote_exec(r, "SELECT pk, stamp, deleted, content FROM replstamp.verify_rows($1::jsonb)",
					   1, params, PGRES_TUPLES_OK);
	PG_TRY();
	{
		res->rows_read += PQntuples(pres);
		for (int i = 0; i < PQntuples(pres); i++)
		{
			VRowEntry  *e = row_entry(rows, pstrdup(PQgetvalue(pres, i, 0)), NULL);

			e->present_there = !PQgetisnull(pres, i, 1) || !PQgetisnull(pres, i, 3);
			e->stamp_there = PQgetisnull(pres, i, 1) ? NULL : pstrdup(PQgetvalue(pres, i, 1));
			e->deleted_there = strcmp(PQgetvalue(pres, i, 2), "t") == 0;
			e->content_there = PQgetisnull(pres, i, 3) ? NULL : pstrdup(PQgetvalue(pres, i, 3));
		}
	}
	PG_FINALLY();
	{
		PQclear(pres);
	}
	PG_END_TRY();
}

/*
 * Pause ms between attempts; a cancel ends it.  With a peer's connection
 * (the testing pause of debug_verify_pause), so does anything to read on
 * it: an answer nobody asked for is the end of the connection, and a test
 * that takes the peer away need not outwait a pause long enough for a
 * loaded machine.
 */
static void
pause_ms(long ms, Remote *r)
{
	int			events = WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH;

	if (r)
		events |= WL_SOCKET_READABLE;
	(void) WaitLatchOrSocket(MyLatch, events, r ? PQsocket(r->conn) : PGINVALID_SOCKET,
							 ms, PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
	CHECK_FOR_INTERRUPTS();
}

/*
 * One attempt: returns false if the vectors differed or moved (*why says
 * how), true with res filled otherwise.
 */
static bool
attempt(Remote *r, List *tables, bool deep, VResult *res, char **here_v, char **there_v)
{
	char	   *vl;
	char	   *vr;
	bool		moved;
	Jsonb	   *ans;
	Jsonb	   *ttables;
	ListCell   *lc;
	JsonbValue *rv;

	int64		n;

	memset(res, 0, sizeof(VResult));
	n = side_digests(tables, deep, &vl, &moved);
	if (deep)
		res->rows_read += n;
	else
		res->digests_read += n;
	ans = remote_digests(r, tables, deep, true);
	rv = json_member(ans, "vector");
	vr = rv ? jsonb_text(JsonbValueToJsonb(rv)) : pstrdup("?");
	*here_v = vl;
	*there_v = vr;
	if (moved || json_bool(ans, "moved") || strcmp(vl, vr) != 0)
		return false;
	rv = json_member(ans, "read");
	if (rv && rv->type == jbvNumeric)
	{
		n = DatumGetInt64(DirectFunctionCall1(numeric_int8, NumericGetDatum(rv->val.numeric)));
		if (deep)
			res->rows_read += n;
		else
			res->digests_read += n;
	}
	ttables = json_sub(ans, "tables");
	if (debug_verify_pause > 0)
		pause_ms(debug_verify_pause, r);

	foreach(lc, tables)
	{
		VTable	   *t = lfirst(lc);
		Jsonb	   *tt = json_sub(ttables, t->relation);
		Jsonb	   *buckets = json_sub(tt, "buckets");
		char	   *total = json_string(json_member(tt, "total"));
		HTAB	   *rows;
		List	   *mine;
		ListCell   *rc;
		int			found;
		int			stale = 0;

		if (tt == NULL || total == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_PROTOCOL_VIOLATION),
					 errmsg("peer \"%s\" sent no digest of table %s", r->peer, t->relation)));
		t->differing = NIL;
		if (strcmp(total, digest_hex(&t->total)) == 0)
			continue;
		for (int b = 0; b < DIGEST_BUCKETS; b++)
		{
			char		key[16];
			char	   *theirs;
			DigestSum	d;

			snprintf(key, sizeof(key), "%d", b);
			theirs = json_string(json_member(buckets, key));
			memset(&d, 0, sizeof(d));
			if (theirs && !digest_from_hex(theirs, &d))
				ereport(ERROR,
						(errcode(ERRCODE_PROTOCOL_VIOLATION),
						 errmsg("peer \"%s\" sent a malformed digest", r->peer)));
			if (memcmp(d.d, t->buckets[b].d, DIGEST_LEN) != 0)
				t->differing = lappend_int(t->differing, b);
		}
		if (t->differing == NIL)
			continue;
		rows = text_table("replstamp verify rows", sizeof(VRowEntry));
		rowversion_lock();
		PG_TRY();
		{
			mine = side_rows(t, t->differing, deep, &res->rows_read, &stale);
		}
		PG_FINALLY();
		{
			rowversion_unlock();
		}
		PG_END_TRY();
		foreach(rc, mine)
		{
			SideRow    *s = lfirst(rc);
			VRowEntry  *e = row_entry(rows, jsonb_text(s->pk), s->pk);

			e->present_here = true;
			e->stamp_here = s->stamp;
			e->deleted_here = s->deleted;
			e->content_here = s->content;
		}
		remote_rows(r, t, deep, rows, res);
		found = compare_rows(t, rows, deep, res);
		/* Digests differed, rows agree: one side's digest was stale. */
		if (found == 0 && !deep)
			res->stale_buckets += list_length(t->differing);
	}
	/* Nothing moved on either side while the rows were read. */
	vl = vector_text();
	ans = remote_digests(r, NIL, false, false);
	rv = json_member(ans, "vector");
	vr = rv ? jsonb_text(JsonbValueToJsonb(rv)) : pstrdup("?");
	return strcmp(vl, *here_v) == 0 && strcmp(vr, *there_v) == 0;
}

/*
 * Tables whose definitions (replstamp.table_schema()) differ here and on
 * the peer: one difference each, under the key {}, naming the columns,
 * constraints and indexes that differ.  Schema changes replicate, so two
 * nodes at the same vector have the same definitions unless one was
 * changed with replstamp.replicate_ddl off or a conflict was resolved
 * otherwise.
 */
static void
compare_schemas(Remote *r, List *tables, VResult *res)
{
	StringInfoData req;
	ListCell   *lc;
	const char *params[1];
	PGresult   *pres;
	Jsonb	   *theirs;

	if (tables == NIL)
		return;
	initStringInfo(&req);
	appendStringInfoChar(&req, '[');
	foreach(lc, tables)
		appendStringInfo(&req, "%s%s", lc == list_head(tables) ? "" : ", ",
						 json_quote(((VTable *) lfirst(lc))->relation));
	appendStringInfoChar(&req, ']');
	params[0] = req.data;
	pres = remote_exec(r, "SELECT pg_catalog.jsonb_object_agg(t, replstamp.table_schema(t::pg_catalog.regclass)) "
					   "FROM pg_catalog.jsonb_array_elements_text($1::pg_catalog.jsonb) t",
					   1, params, PGRES_TUPLES_OK);
	PG_TRY();
	{
		if (PQntuples(pres) != 1 || PQgetisnull(pres, 0, 0))
			ereport(ERROR,
					(errcode(ERRCODE_PROTOCOL_VIOLATION),
					 errmsg("peer \"%s\" sent no table definitions", r->peer)));
		theirs = jsonb_parse(PQgetvalue(pres, 0, 0));
	}
	PG_FINALLY();
	{
		PQclear(pres);
	}
	PG_END_TRY();

	foreach(lc, tables)
	{
		VTable	   *t = lfirst(lc);
		Jsonb	   *there = json_sub(theirs, t->relation);
		ReplstampOwnerContext ctx;
		Oid			types[2] = {OIDOID, JSONBOID};
		Datum		values[2];
		char		nulls[2] = {' ', ' '};
		char	   *names = NULL;
		MemoryContext caller = CurrentMemoryContext;

		values[0] = ObjectIdGetDatum(t->relid);
		values[1] = there ? JsonbPGetDatum(there) : (Datum) 0;
		if (there == NULL)
			nulls[1] = 'n';
		dbaccess_become_owner(&ctx);
		SPI_connect();
		dbaccess_spi_exec("SELECT pg_catalog.string_agg(k, ', ') FROM pg_catalog.jsonb_array_elements_text("
						  "replstamp._schema_diff(replstamp.table_schema($1::pg_catalog.regclass), "
						  "coalesce($2, '{}'))) k",
						  2, types, values, nulls, SPI_OK_SELECT);
		if (SPI_processed == 1)
		{
			char	   *v = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

			if (v)
				names = MemoryContextStrdup(caller, v);
		}
		SPI_finish();
		dbaccess_restore_user(&ctx);
		if (names)
		{
			VDiff	   *d = palloc0(sizeof(VDiff));

			d->relation = t->relation;
			d->pk = jsonb_parse("{}");
			d->what = psprintf("other definition: %s", names);
			res->diffs = lappend(res->diffs, d);
		}
	}
}

/* Record the outcome for replstamp.peers. */
static void
record_verification(const char *peer, ArrayType *tables, bool deep, VResult *res,
					TimestampTz started)
{
	ReplstampOwnerContext ctx;
	Oid			types[7] = {TEXTOID, TEXTARRAYOID, BOOLOID, INT8OID, INT8OID, INT8OID, INTERVALOID};
	Datum		values[7];
	char		nulls[7] = "       ";

	values[0] = CStringGetTextDatum(peer);
	if (tables)
	{
		Datum	   *elems;
		bool	   *enulls;
		int			n;
		Datum	   *names;

		deconstruct_array(tables, REGCLASSOID, sizeof(Oid), true, TYPALIGN_INT, &elems, &enulls, &n);
		names = palloc(sizeof(Datum) * Max(n, 1));
		for (int i = 0; i < n; i++)
			names[i] = CStringGetTextDatum(enulls[i] ? "" : tracked_name(DatumGetObjectId(elems[i])));
		values[1] = PointerGetDatum(construct_array(names, n, TEXTOID, -1, false, TYPALIGN_INT));
	}
	else
		nulls[1] = 'n';
	values[2] = BoolGetDatum(deep);
	values[3] = Int64GetDatum(list_length(res->diffs));
	values[4] = Int64GetDatum(res->digests_read);
	values[5] = Int64GetDatum(res->rows_read);
	values[6] = DirectFunctionCall2(timestamp_mi, TimestampTzGetDatum(GetCurrentTimestamp()),
									TimestampTzGetDatum(started));
	dbaccess_become_owner(&ctx);
	SPI_connect();
	dbaccess_spi_exec("INSERT INTO replstamp.verification AS v (peer, verified_at, tables, deep, differences, "
					  "  digests_read, rows_read, duration) "
					  "VALUES ($1, pg_catalog.now(), $2, $3, $4, $5, $6, $7) "
					  "ON CONFLICT (peer) DO UPDATE SET verified_at = EXCLUDED.verified_at, "
					  "tables = EXCLUDED.tables, deep = EXCLUDED.deep, differences = EXCLUDED.differences, "
					  "digests_read = EXCLUDED.digests_read, rows_read = EXCLUDED.rows_read, "
					  "duration = EXCLUDED.duration",
					  7, types, values, nulls, SPI_OK_INSERT);
	SPI_finish();
	dbaccess_restore_user(&ctx);
}

/*
 * Compare this node with a peer: the rows that differ, into res.  The
 * caller is in a transaction (READ COMMITTED).
 */
static void
verify_run(const char *peer, ArrayType *tables_arr, bool deep, VResult *res)
{
	List	   *tables;
	char	   *conninfo;
	Remote		r;
	TimestampTz started = GetCurrentTimestamp();
	bool		done = false;
	char	   *here_v = NULL;
	char	   *there_v = NULL;

	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
				 errmsg("replstamp.verify() cannot run in a REPEATABLE READ or SERIALIZABLE transaction"),
				 errhint("Run it in a READ COMMITTED transaction.")));
	(void) catalog_get_v11("replstamp.verify()");
	conninfo = read_conninfo(peer);
	tables = resolve_tables(tables_arr);

	memset(&r, 0, sizeof(r));
	PG_TRY();
	{
		remote_connect(&r, peer, conninfo);
		r.verifying = true;
		for (int i = 0; i < VERIFY_ATTEMPTS && !done; i++)
		{
			if (i > 0)
				pause_ms(VERIFY_PAUSE_MS * i, NULL);
			done = attempt(&r, tables, deep, res, &here_v, &there_v);
			if (!done)
				elog(DEBUG1, "replstamp: verification attempt %d: vector here %s, there %s, or one moved",
					 i + 1, here_v, there_v);
		}
		/* The 1.1 catalog has no table_schema(). */
		if (done && catalog_get(false)->v12)
			compare_schemas(&r, tables, res);
	}
	PG_FINALLY();
	{
		remote_disconnect(&r);
	}
	PG_END_TRY();
	if (!done)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("this node and peer \"%s\" do not hold the same changes", peer),
				 errdetail("Their vectors differed or moved at each of %d attempts; last here %s, there %s.",
						   VERIFY_ATTEMPTS, here_v ? here_v : "?", there_v ? there_v : "?"),
				 errhint("Verification compares two nodes at the same vector: let each pull from the other "
						 "(replstamp.sync()), and verify again when writes pause.")));
	if (res->stale_buckets > 0)
		ereport(WARNING,
				(errmsg("replstamp: %d bucket digests of peer \"%s\" or of this node were stale",
						res->stale_buckets, peer),
				 errdetail("Their rows agree; the digests were computed again from them."),
				 errhint("Report this as a bug of replstamp.")));
	record_verification(peer, tables_arr, deep, res, started);
}

/*
 * replstamp.verify(peer text, tables regclass[] DEFAULT NULL, deep boolean
 * DEFAULT false): every row that differs between this node and the peer.
 */
Datum
replstamp_verify(PG_FUNCTION_ARGS)
{
	char	   *peer;
	ArrayType  *tables = PG_ARGISNULL(1) ? NULL : PG_GETARG_ARRAYTYPE_P(1);
	bool		deep = PG_ARGISNULL(2) ? false : PG_GETARG_BOOL(2);
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	VResult		res;
	ListCell   *lc;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("peer must not be null")));
	peer = text_to_cstring(PG_GETARG_TEXT_PP(0));
	InitMaterializedSRF(fcinfo, 0);
	verify_run(peer, tables, deep, &res);
	foreach(lc, res.diffs)
	{
		VDiff	   *d = lfirst(lc);
		Datum		values[5];
		bool		nulls[5] = {false, false, d->stamp_here == NULL, d->stamp_there == NULL, false};

		values[0] = CStringGetTextDatum(d->relation);
		values[1] = JsonbPGetDatum(d->pk);
		values[2] = d->stamp_here ? CStringGetTextDatum(d->stamp_here) : (Datum) 0;
		values[3] = d->stamp_there ? CStringGetTextDatum(d->stamp_there) : (Datum) 0;
		values[4] = CStringGetTextDatum(d->what);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/* ---------------------------------------------------------------------
 * repair()
 * ---------------------------------------------------------------------
 */

/* The peer's rows of keys. */
static List *
remote_images(Remote *r, VTable *t, List *keys)
{
	StringInfoData arr;
	const char *params[2];
	PGresult   *pres;
	List	   *out = NIL;
	ListCell   *lc;

	initStringInfo(&arr);
	appendStringInfoChar(&arr, '{');
	foreach(lc, keys)
	{
		char	   *k = jsonb_text(lfirst(lc));

		appendStringInfoString(&arr, lc == list_head(keys) ? "\"" : ",\"");
		for (char *p = k; *p; p++)
		{
			if (*p == '"' || *p == '\\')
				appendStringInfoChar(&arr, '\\');
			appendStringInfoChar(&arr, *p);
		}
		appendStringInfoChar(&arr, '"');
	}
	appendStringInfoChar(&arr, '}');
	params[0] = t->relation;
	params[1] = arr.data;
	pres = remote_exec(r, "SELECT pk, stamp, image FROM replstamp.verify_images($1, $2::jsonb[])",
					   2, params, PGRES_TUPLES_OK);
	PG_TRY();
	{
		for (int i = 0; i < PQntuples(pres); i++)
		{
			Image	   *im = palloc0(sizeof(Image));

			im->pk = jsonb_parse(PQgetvalue(pres, i, 0));
			im->stamp = PQgetisnull(pres, i, 1) ? NULL : pstrdup(PQgetvalue(pres, i, 1));
			im->image = PQgetisnull(pres, i, 2) ? NULL : jsonb_parse(PQgetvalue(pres, i, 2));
			out = lappend(out, im);
		}
	}
	PG_FINALLY();
	{
		PQclear(pres);
	}
	PG_END_TRY();
	return out;
}

/* Write one row here as the caller: through the table's triggers, stamped. */
static void
write_row(RowLayout *layout, Relation rel, const char *action, Jsonb *pk, Jsonb *image)
{
	int			natts = RelationGetDescr(rel)->natts;
	Datum	   *values = palloc0(sizeof(Datum) * natts);
	bool	   *nulls = palloc0(sizeof(bool) * natts);
	bool	   *present = palloc0(sizeof(bool) * natts);
	Oid		   *types = palloc(sizeof(Oid) * (layout->ncols + layout->npk));
	Datum	   *args = palloc(sizeof(Datum) * (layout->ncols + layout->npk));
	char	   *argnulls = palloc(layout->ncols + layout->npk + 1);
	StringInfoData sql;
	int			n = 0;
	int			ret;

	initStringInfo(&sql);
	if (strcmp(action, "delete") == 0)
	{
		rowimage_decode_key(layout, pk, values, nulls);
		appendStringInfo(&sql, "DELETE FROM %s WHERE ", layout->relname);
	}
	else
	{
		rowimage_decode(layout, image, values, nulls, present, NULL);
		if (strcmp(action, "insert") == 0)
		{
			StringInfoData vals;

			initStringInfo(&vals);
			appendStringInfo(&sql, "INSERT INTO %s (", layout->relname);
			for (int i = 0; i < layout->ncols; i++)
			{
				ImageColumn *col = &layout->cols[i];
				int			a = col->attnum - 1;

				if (!present[a])
					continue;
				appendStringInfo(&sql, "%s%s", n ? ", " : "", quote_identifier(col->name));
				appendStringInfo(&vals, "%s$%d", n ? ", " : "", n + 1);
				types[n] = col->typid;
				args[n] = values[a];
				argnulls[n] = nulls[a] ? 'n' : ' ';
				n++;
			}
			appendStringInfo(&sql, ") OVERRIDING SYSTEM VALUE VALUES (%s)", vals.data);
		}
		else
		{
			appendStringInfo(&sql, "UPDATE %s SET ", layout->relname);
			for (int i = 0; i < layout->ncols; i++)
			{
				ImageColumn *col = &layout->cols[i];
				int			a = col->attnum - 1;

				if (!present[a])
					continue;
				appendStringInfo(&sql, "%s%s = $%d", n ? ", " : "", quote_identifier(col->name), n + 1);
				types[n] = col->typid;
				args[n] = values[a];
				argnulls[n] = nulls[a] ? 'n' : ' ';
				n++;
			}
			appendStringInfoString(&sql, " WHERE ");
		}
	}
	if (strcmp(action, "insert") != 0)
	{
		for (int i = 0; i < layout->npk; i++)
		{
			ImageColumn *col = &layout->pk[i];
			int			a = col->attnum - 1;

			appendStringInfo(&sql, "%s%s OPERATOR(pg_catalog.=) $%d", i ? " AND " : "",
							 quote_identifier(col->name), n + 1);
			types[n] = col->typid;
			args[n] = values[a];
			argnulls[n] = ' ';
			n++;
		}
	}
	argnulls[n] = '\0';
	ret = SPI_execute_with_args(sql.data, n, types, args, argnulls, false, 0);
	if (ret < 0 || SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("could not repair a row of table %s", layout->relname),
				 errdetail("The row changed here while it was repaired."),
				 errhint("Call replstamp.repair() again.")));
}

static void
record_repair(const char *peer, const char *relation, Image *here, Image *there, const char *action)
{
	ReplstampOwnerContext ctx;
	Oid			types[6] = {TEXTOID, TEXTOID, JSONBOID, TEXTOID, TEXTOID, TEXTOID};
	Datum		values[6];
	char		nulls[7] = "      ";

	values[0] = CStringGetTextDatum(peer);
	values[1] = CStringGetTextDatum(relation);
	values[2] = JsonbPGetDatum(here->pk);
	values[3] = CStringGetTextDatum(action);
	if (here->stamp)
		values[4] = CStringGetTextDatum(here->stamp);
	else
		nulls[4] = 'n';
	if (there && there->stamp)
		values[5] = CStringGetTextDatum(there->stamp);
	else
		nulls[5] = 'n';
	dbaccess_become_owner(&ctx);
	SPI_connect();
	dbaccess_spi_exec("INSERT INTO replstamp.repairs (peer, relation, pk, action, stamp_before, stamp_peer, repaired_by) "
					  "VALUES ($1, $2, $3, $4, $5, $6, pg_catalog.session_user())",
					  6, types, values, nulls, SPI_OK_INSERT);
	SPI_finish();
	dbaccess_restore_user(&ctx);
}

/*
 * replstamp.repair(peer text, tbl regclass, keys jsonb[] DEFAULT NULL,
 * dry_run boolean DEFAULT false): make these rows here (NULL: every row
 * a deep verification names) what they are on the peer, each as a new
 * change stamped here, so that the repair replicates to every node.
 */
Datum
replstamp_repair(PG_FUNCTION_ARGS)
{
	char	   *peer;
	Oid			relid;
	bool		dry_run = PG_ARGISNULL(3) ? false : PG_GETARG_BOOL(3);
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	VTable	   *t;
	List	   *keys = NIL;
	List	   *theirs;
	List	   *mine;
	ListCell   *lc;
	ListCell   *tc;
	HTAB	   *byk;
	Remote		r;
	Relation	rel;
	RowLayout  *layout;
	int			save_nestlevel;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("peer and table must not be null")));
	peer = text_to_cstring(PG_GETARG_TEXT_PP(0));
	relid = PG_GETARG_OID(1);
	InitMaterializedSRF(fcinfo, 0);
	(void) catalog_get_v11("replstamp.repair()");
	t = palloc0(sizeof(VTable));
	t->relid = relid;
	t->relation = tracked_name(relid);
	check_select(relid, t->relation);

	if (PG_ARGISNULL(2))
	{
		/* Every row a deep verification of the table names. */
		Datum		one = ObjectIdGetDatum(relid);
		VResult		res;

		verify_run(peer, construct_array(&one, 1, REGCLASSOID, sizeof(Oid), true, TYPALIGN_INT),
				   true, &res);
		foreach(lc, res.diffs)
			keys = lappend(keys, ((VDiff *) lfirst(lc))->pk);
	}
	else
	{
		Datum	   *elems;
		bool	   *enulls;
		int			n;

		deconstruct_array(PG_GETARG_ARRAYTYPE_P(2), JSONBOID, -1, false, TYPALIGN_INT, &elems, &enulls, &n);
		for (int i = 0; i < n; i++)
			if (!enulls[i])
				keys = lappend(keys, DatumGetJsonbP(elems[i]));
	}
	if (keys == NIL)
		return (Datum) 0;

	memset(&r, 0, sizeof(r));
	PG_TRY();
	{
		remote_connect(&r, peer, read_conninfo(peer));
		r.verifying = true;
		theirs = remote_images(&r, t, keys);
	}
	PG_FINALLY();
	{
		remote_disconnect(&r);
	}
	PG_END_TRY();
	mine = images_here(t, keys);

	byk = text_table("replstamp repair rows", sizeof(VRowEntry));
	foreach(tc, theirs)
	{
		Image	   *im = lfirst(tc);
		VRowEntry  *e = row_entry(byk, jsonb_text(im->pk), im->pk);

		e->image_there = im;
	}

	rel = table_open(relid, RowExclusiveLock);
	layout = rowimage_layout(rel);
	save_nestlevel = NewGUCNestLevel();
	rowimage_enter_input_settings(false);
	SPI_connect();
	foreach(lc, mine)
	{
		Image	   *here = lfirst(lc);
		char	   *pktext = jsonb_text(here->pk);
		VRowEntry  *e = hash_search(byk, &pktext, HASH_FIND, NULL);
		Image	   *there = e ? e->image_there : NULL;
		const char *action;
		Datum		values[4];
		bool		nulls[4] = {false, false, here->stamp == NULL, there == NULL || there->stamp == NULL};

		if (there && there->image)
			action = here->image ? "update" : "insert";
		else if (here->image)
			action = "delete";
		else
			continue;			/* neither has it */
		if (here->image && there && there->image && here->stamp && there->stamp &&
			strcmp(here->stamp, there->stamp) == 0 &&
			strcmp(jsonb_text(here->image), jsonb_text(there->image)) == 0)
			continue;			/* equal already */
		if (!dry_run)
		{
			write_row(layout, rel, action, here->pk, there ? there->image : NULL);
			record_repair(peer, t->relation, here, there, action);
		}
		values[0] = JsonbPGetDatum(here->pk);
		values[1] = CStringGetTextDatum(action);
		values[2] = here->stamp ? CStringGetTextDatum(here->stamp) : (Datum) 0;
		values[3] = there && there->stamp ? CStringGetTextDatum(there->stamp) : (Datum) 0;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	SPI_finish();
	AtEOXact_GUC(true, save_nestlevel);
	table_close(rel, NoLock);
	return (Datum) 0;
}

/* ---------------------------------------------------------------------
 * The background check
 * ---------------------------------------------------------------------
 */

/*
 * A short worker per database, every replstamp.verify_interval (the
 * launcher starts it): verifies every peer, one transaction each, and
 * warns of each that differs; replstamp.peers shows the outcome.  A peer
 * that cannot be reached is logged and left as it was.
 */
void
replstamp_verify_main(Datum arg)
{
	List	   *peers = NIL;
	ListCell   *lc;
	bool		ready;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	worker_connect(arg, NULL, 0);

	worker_begin_xact();
	ready = OidIsValid(get_extension_oid("replstamp", true)) && catalog_get(false)->v11 &&
		OidIsValid(get_relname_relid("verification", get_namespace_oid("replstamp", false)));
	if (ready)
	{
		ReplstampOwnerContext ctx;
		MemoryContext old;

		dbaccess_become_owner(&ctx);
		SPI_connect();
		dbaccess_spi_exec("SELECT name FROM replstamp.peer ORDER BY name", 0, NULL, NULL, NULL, SPI_OK_SELECT);
		old = MemoryContextSwitchTo(TopMemoryContext);
		for (uint64 i = 0; i < SPI_processed; i++)
			peers = lappend(peers, SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1));
		MemoryContextSwitchTo(old);
		SPI_finish();
		dbaccess_restore_user(&ctx);
	}
	worker_commit_xact();

	foreach(lc, peers)
	{
		const char *peer = lfirst(lc);
		MemoryContext cxt = CurrentMemoryContext;

		CHECK_FOR_INTERRUPTS();
		pgstat_report_activity(STATE_RUNNING, psprintf("replstamp: verifying peer %s", peer));
		worker_begin_xact();
		PG_TRY();
		{
			VResult		res;

			verify_run(peer, NULL, false, &res);
			if (res.diffs != NIL)
				ereport(WARNING,
						(errmsg("replstamp: %d rows differ between this node and peer \"%s\"",
								list_length(res.diffs), peer),
						 errdetail("Both hold the same changes, yet their rows differ."),
						 errhint("See SELECT * FROM replstamp.verify('%s'); repair with replstamp.repair().",
								 peer)));
			worker_commit_xact();
		}
		PG_CATCH();
		{
			MemoryContextSwitchTo(cxt);
			EmitErrorReport();
			FlushErrorState();
			AbortCurrentTransaction();
		}
		PG_END_TRY();
	}
	pgstat_report_activity(STATE_IDLE, NULL);
	proc_exit(0);
}

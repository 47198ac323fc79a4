/*-------------------------------------------------------------------------
 *
 * prune.c
 *		Pruning the change log (replstamp.prune(), and the launcher every
 *		replstamp.prune_interval): a change every puller holds is removed,
 *		unless it is the latest change of its row (last writer wins
 *		compares against it, and a late joiner or a node restored from an
 *		older backup converges from it); a tombstone (the latest change of
 *		a deleted row) is removed once it is older than
 *		replstamp.tombstone_lifetime and every puller holds it, and the
 *		highest serial dropped that way per replica ID is recorded, so
 *		that a node which holds less is refused rather than allowed to
 *		bring deleted rows back (serve.c, sync.c); retired replica IDs with
 *		nothing left leave the vector; pullers not seen for a tombstone
 *		lifetime are forgotten; conflicts, each with a copy of the version
 *		that lost, are kept for replstamp.conflict_retention.
 *
 * Pruning runs in batches, each a transaction of its own that a sync's
 * pages wait for and that waits for them (rowversion.c): a prune goes on
 * while a sync waits for its peer or for local writers.  Prunes of a
 * database run one at a time.  Pullers record what they hold at
 * every sync (serve.c); what a change log keeps for a puller is bounded by
 * what it lacks, as pg_replication_slots keep WAL (replstamp.pullers shows
 * it).
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/relation.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/transam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/interrupt.h"
#include "storage/bufmgr.h"
#include "storage/itemptr.h"
#include "storage/latch.h"
#include "storage/lock.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/regproc.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/xid8.h"

#include "catalog.h"
#include "changelog.h"
#include "compat.h"
#include "dbaccess.h"
#include "errors.h"
#include "identity.h"
#include "latest.h"
#include "prune.h"
#include "rowimage.h"
#include "rowversion.h"
#include "serial.h"
#include "workers.h"
#define PRUNE_BATCH		2000
/* The field4 of the advisory lock tag a prune holds (rowversion.c has 3 and 4). */
#define PRUNE_LOCK_CLASS	5

/* GUCs */
static int	tombstone_lifetime = 14 * 24 * 3600;	/* seconds */
static int	conflict_retention = 3600;	/* seconds */
static int	prune_interval = 60;	/* seconds */
static int	debug_prune_pause = 0;	/* ms */

/*
 * GUCs.  Called from _PG_init.
 */
void
prune_init(void)
{
	DefineCustomIntVariable("replstamp.tombstone_lifetime",
							"How long the latest change of a deleted row is kept.",
							"A node that has not synced for longer is refused: it could bring deleted "
							"rows back. Rebuild it from a fresh backup of a current node.",
							&tombstone_lifetime,
							14 * 24 * 3600, 1, INT_MAX,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);
	DefineCustomIntVariable("replstamp.conflict_retention",
							"How long replstamp.conflicts keeps a conflict, and its copy of the version that lost.",
							"Until then replstamp.restore_version() can bring the losing version back. "
							"Every write from another replica ID that replaces a row's version is recorded, "
							"so on nodes that write the same rows the log holds that many changes per second "
							"times this long.",
							&conflict_retention,
							3600, 0, INT_MAX,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);
	DefineCustomIntVariable("replstamp.prune_interval",
							"Seconds between automatic prunes of the change log.",
							"Zero means no automatic pruning: call replstamp.prune() yourself.",
							&prune_interval,
							60, 0, INT_MAX / 1000,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);
#ifdef REPLSTAMP_TESTING
	DefineCustomIntVariable("replstamp.debug_prune_pause",
							"Testing aid: pause each prune this long after each batch of its walk, without excluding a sync's pages.",
							"So that a test can make a sync run in the middle of a prune. Zero "
							"(the default) means no pause.",
							&debug_prune_pause,
							0, 0, 3600 * 1000,
							PGC_SUSET,
							GUC_UNIT_MS | GUC_NOT_IN_SAMPLE,
							NULL, NULL, NULL);
#endif
}

/* replstamp.prune_interval, in seconds (0: no automatic pruning). */
int
prune_interval_s(void)
{
	return prune_interval;
}

static char *
lifetime_text(void)
{
	return psprintf("%d seconds", tombstone_lifetime);
}

/* ---------------------------------------------------------------------
 * Pruning
 * ---------------------------------------------------------------------
 */

/* Per replica ID: look at (walked, upto]. */
typedef struct PruneItem
{
	pg_uuid_t	id;
	int64		walked;
	int64		upto;			/* every puller holds it up to here */
} PruneItem;

typedef struct StampKey
{
	pg_uuid_t	id;
	int64		serial;
} StampKey;

typedef struct PruneRun
{
	const ReplstampCatalog *cat;
	MemoryContext cxt;
	int			nitems;
	PruneItem  *items;
	int64		expire_below;	/* conflicts with smaller ids have expired */
	RowVersionWriter *w;
	/* The batch's lookups of row versions, by row hash (LatestEntry). */
	MemoryContext latest_cxt;
	HTAB	   *latest;
	int64		removed;
	int			batch;			/* looked at in this batch */
	int64		last;
} PruneRun;

/*
 * Each batch is a transaction of its own, which the sync's pages and it
 * exclude each other from (rowversion_page_lock()).
 */
static void
batch_begin(void)
{
	worker_begin_xact();
	rowversion_page_lock(true);
}

static void
batch_end(PruneRun *p)
{
	if (p->latest)
	{
		MemoryContextReset(p->latest_cxt);
		p->latest = NULL;
	}
	worker_commit_xact();
}

/*
 * Prunes of a database run one at a time: each holds this session lock
 * (an advisory lock, shown in pg_locks) from its first batch to its last.
 */
static LOCKTAG
prune_locktag(void)
{
	LOCKTAG		tag;

	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, 0x72737470, 0x73796e63, PRUNE_LOCK_CLASS);
	return tag;
}

/*
 * What a batch remembers of a row's version: a hot row's changes, many in
 * one batch, cost one lookup.  Nothing writes row_version while a batch
 * runs (a sync's pages wait for it, local writers leave row_version to
 * the reconciliation), so what it read holds to its end.
 */
typedef struct LatestEntry
{
	int64		hash;			/* hash key: the row hash */
	text	   *relation;
	Jsonb	   *key;
	bool		found;
	StampKey	latest;
	bool		partial;
	StampKey	carry;
} LatestEntry;

/* Rows a batch remembers at most (then it forgets them all). */
#define LATEST_CACHE_SIZE	8192

/*
 * The row's version, as row_version has it.  Keys are compared byte for
 * byte: two spellings of one key only cost another lookup.
 */
static LatestEntry *
latest_of(PruneRun *p, text *relation, ChangeRow *row)
{
	LatestEntry *e;
	RowVersion	cur;
	bool		found;
	MemoryContext old;

	if (p->latest == NULL || hash_get_num_entries(p->latest) >= LATEST_CACHE_SIZE)
	{
		HASHCTL		ctl;

		if (p->latest_cxt == NULL)
			p->latest_cxt = AllocSetContextCreate(p->cxt, "replstamp prune row versions",
												  ALLOCSET_DEFAULT_SIZES);
		else
			MemoryContextReset(p->latest_cxt);
		ctl.keysize = sizeof(int64);
		ctl.entrysize = sizeof(LatestEntry);
		ctl.hcxt = p->latest_cxt;
		p->latest = hash_create("replstamp prune row versions", 256, &ctl,
								HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	e = hash_search(p->latest, &row->hash, HASH_ENTER, &found);
	if (found && rowimage_bytes_equal(e->relation, relation) &&
		rowimage_bytes_equal((struct varlena *) e->key, (struct varlena *) row->key))
		return e;
	rowversion_get(p->w, relation, row, &cur);
	old = MemoryContextSwitchTo(p->latest_cxt);
	e->relation = DatumGetTextPCopy(PointerGetDatum(relation));
	e->key = DatumGetJsonbPCopy(JsonbPGetDatum(row->key));
	MemoryContextSwitchTo(old);
	e->found = cur.found;
	memset(&e->latest, 0, sizeof(StampKey));
	memset(&e->carry, 0, sizeof(StampKey));
	e->partial = cur.found && cur.partial;
	if (cur.found)
	{
		e->latest.id = cur.v.replica_id;
		e->latest.serial = cur.v.serial;
		e->carry.id = cur.carry.replica_id;
		e->carry.serial = cur.carry.serial;
	}
	return e;
}

/*
 * Is the change the latest of one of its rows, or the change a rolling
 * ADD COLUMN will fill one in from?  (A conflict that names it keeps a
 * copy of its own.)
 */
static bool
kept(PruneRun *p, Change *c)
{
	ChangeRow	rows[2];
	int			n = rowversion_change_rows(c, rows);

	for (int i = 0; i < n; i++)
	{
		LatestEntry *e = latest_of(p, c->relation, &rows[i]);

		if (e->found && changelog_same_stamp(&e->latest.id, e->latest.serial, &c->replica_id, c->serial))
			return true;
		if (e->found && e->partial &&
			changelog_same_stamp(&e->carry.id, e->carry.serial, &c->replica_id, c->serial))
			return true;
	}
	return false;
}

static bool
walk_callback(Change *c, void *arg)
{
	PruneRun   *p = arg;

	p->last = c->serial;
	/* Known to be the latest (latest.c): kept, without a lookup. */
	if (!latest_known(&c->replica_id, c->serial) && !kept(p, c))
	{
		changelog_delete_tid(p->cat, &c->tid);
		p->removed++;
	}
	return ++p->batch < PRUNE_BATCH;
}

/*
 * The id below which every conflict is older than
 * replstamp.conflict_retention.  Conflicts are recorded by a sync's pages,
 * one page at a time, their ids and times rising together: the boundary
 * is found by reading them in id order up to the first that has not
 * expired (what a prune reads is what it forgets).
 */
static int64
expiry_boundary(PruneRun *p)
{
	TimestampTz cutoff = GetCurrentTransactionStartTimestamp() -
		(TimestampTz) conflict_retention * USECS_PER_SEC;
	Relation	rel = table_open(p->cat->conflict, AccessShareLock);
	Relation	idx = index_open(p->cat->conflict_pkey, AccessShareLock);
	SysScanDesc scan = systable_beginscan_ordered(rel, idx, GetActiveSnapshot(), 0, NULL);
	HeapTuple	tuple;
	int64		below = 0;

	while ((tuple = systable_getnext_ordered(scan, ForwardScanDirection)) != NULL)
	{
		bool		isnull;
		int64		id = DatumGetInt64(heap_getattr(tuple, Anum_conflict_id,
													RelationGetDescr(rel), &isnull));

		if (DatumGetTimestampTz(heap_getattr(tuple, Anum_conflict_resolved_at,
											 RelationGetDescr(rel), &isnull)) >= cutoff)
		{
			below = id;
			break;
		}
		below = id + 1;
	}
	systable_endscan_ordered(scan);
	index_close(idx, AccessShareLock);
	table_close(rel, AccessShareLock);
	return below;
}

/* Forget stale pullers, reconcile local changes, and decide what to walk. */
static void
prune_plan(PruneRun *p)
{
	ReplstampOwnerContext ctx;
	ReconcileState *rs = rowversion_reconcile_begin(p->cxt);
	Oid			types[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(lifetime_text())};

	p->w = rowversion_writer_begin(p->cat);
	rowversion_reconcile(p->w, rs);
	rowversion_reconcile_save(rs);
	p->removed += p->w->removed;
	rowversion_writer_end(p->w);
	p->w = NULL;

	dbaccess_become_owner(&ctx);
	SPI_connect();
	/* A puller away longer than a tombstone lifetime is refused anyway. */
	dbaccess_spi_exec("DELETE FROM replstamp.puller WHERE last_pull_at OPERATOR(pg_catalog.<) "
					  "(pg_catalog.now() OPERATOR(pg_catalog.-) $1::pg_catalog.interval)",
					  1, types, values, NULL, SPI_OK_DELETE);
	/* Per replica ID: up to where every puller holds it. */
	dbaccess_spi_exec("SELECT v.replica_id, coalesce(pp.walked_upto, 0), "
					  "LEAST(v.serial, coalesce((SELECT pg_catalog.min(coalesce(pv.serial, 0)) "
					  "  FROM replstamp.puller u LEFT JOIN replstamp.puller_vector pv "
					  "  ON pv.puller OPERATOR(pg_catalog.=) u.replica_id "
					  "  AND pv.replica_id OPERATOR(pg_catalog.=) v.replica_id), v.serial)) "
					  "FROM replstamp.vector v LEFT JOIN replstamp.prune_progress pp "
					  "ON pp.replica_id OPERATOR(pg_catalog.=) v.replica_id",
					  0, NULL, NULL, NULL, SPI_OK_SELECT);
	p->nitems = SPI_processed;
	p->items = MemoryContextAllocZero(p->cxt, sizeof(PruneItem) * Max(p->nitems, 1));
	for (int i = 0; i < p->nitems; i++)
	{
		bool		isnull;
		PruneItem  *it = &p->items[i];

		memcpy(&it->id, DatumGetUUIDP(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc,
													1, &isnull)), sizeof(pg_uuid_t));
		it->walked = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull));
		it->upto = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 3, &isnull));
		/* This node's own changes: only as far as row_version has them. */
		for (int k = 0; k < rs->nids; k++)
			if (memcmp(rs->ids[k].id.data, it->id.data, UUID_LEN) == 0)
				it->upto = Min(it->upto, rs->ids[k].done_upto);
	}

	SPI_finish();
	dbaccess_restore_user(&ctx);
	p->expire_below = expiry_boundary(p);
}

static void
save_walked(const pg_uuid_t *id, int64 walked)
{
	ReplstampOwnerContext ctx;
	Oid			types[2] = {UUIDOID, INT8OID};
	Datum		values[2] = {UUIDPGetDatum(id), Int64GetDatum(walked)};

	dbaccess_become_owner(&ctx);
	SPI_connect();
	dbaccess_spi_exec("INSERT INTO replstamp.prune_progress (replica_id, walked_upto) VALUES ($1, $2) "
					  "ON CONFLICT (replica_id) DO UPDATE SET walked_upto = EXCLUDED.walked_upto",
					  2, types, values, NULL, SPI_OK_INSERT);
	SPI_finish();
	dbaccess_restore_user(&ctx);
}

/*
 * Walk every replica ID's new changes, in batches of PRUNE_BATCH changes
 * whatever their IDs (a log of many small IDs is walked in few batches).
 */
static void
prune_walk(PruneRun *p)
{
	for (;;)
	{
		bool		any = false;

		for (int i = 0; i < p->nitems; i++)
			any |= p->items[i].walked < p->items[i].upto;
		if (!any)
			break;
		CHECK_FOR_INTERRUPTS();
		batch_begin();
		p->w = rowversion_writer_begin(p->cat);
		p->batch = 0;
		for (int i = 0; i < p->nitems && p->batch < PRUNE_BATCH; i++)
		{
			PruneItem  *it = &p->items[i];

			if (it->walked >= it->upto)
				continue;
			p->last = it->upto;
			(void) changelog_scan(p->cat, &it->id, it->walked, it->upto, false, walk_callback, p);
			if (p->batch < PRUNE_BATCH)
				p->last = it->upto; /* the scan ran out: the range is done */
			save_walked(&it->id, p->last);
			latest_walked(&it->id, p->last);
			it->walked = p->last;
		}
		rowversion_writer_end(p->w);
		p->w = NULL;
		batch_end(p);
		if (debug_prune_pause > 0)
		{
			/* Testing aid: let a sync run in the middle of this prune. */
			pgstat_report_activity(STATE_RUNNING, "replstamp: prune paused between batches");
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 debug_prune_pause, PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
			CHECK_FOR_INTERRUPTS();
		}
	}
}

/*
 * The replica IDs and how far every puller holds each, as two arrays, in
 * the prune's memory (between its transactions the current context is
 * TopMemoryContext).
 */
static void
horizons(PruneRun *p, Datum *ids, Datum *uptos)
{
	MemoryContext old = MemoryContextSwitchTo(p->cxt);
	Datum	   *id = palloc(sizeof(Datum) * Max(p->nitems, 1));
	Datum	   *upto = palloc(sizeof(Datum) * Max(p->nitems, 1));

	for (int i = 0; i < p->nitems; i++)
	{
		id[i] = UUIDPGetDatum(&p->items[i].id);
		upto[i] = Int64GetDatum(p->items[i].upto);
	}
	*ids = PointerGetDatum(construct_array(id, p->nitems, UUIDOID, UUID_LEN, false,
										   TYPALIGN_CHAR));
	*uptos = PointerGetDatum(construct_array(upto, p->nitems, INT8OID, sizeof(int64),
											 FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	MemoryContextSwitchTo(old);
}

/*
 * Conflicts older than replstamp.conflict_retention are forgotten, oldest
 * first, in batches (with them the copies of the versions that lost).
 */
static void
prune_expired(PruneRun *p)
{
	int64		from = 0;
	int			n;

	do
	{
		ReplstampOwnerContext ctx;
		Oid			types[2] = {INT8OID, INT8OID};
		Datum		values[2] = {Int64GetDatum(from), Int64GetDatum(p->expire_below)};

		CHECK_FOR_INTERRUPTS();
		batch_begin();
		dbaccess_become_owner(&ctx);
		SPI_connect();
		dbaccess_spi_exec(psprintf("DELETE FROM %s WHERE ctid OPERATOR(pg_catalog.=) ANY (ARRAY("
								   "SELECT ctid FROM %s "
								   "WHERE id OPERATOR(pg_catalog.>=) $1 AND id OPERATOR(pg_catalog.<) $2 "
								   "ORDER BY id LIMIT " CppAsString2(PRUNE_BATCH) ")) "
								   "RETURNING id", p->cat->conflict_name, p->cat->conflict_name),
						  2, types, values, NULL, SPI_OK_DELETE_RETURNING);
		n = SPI_processed;
		for (int i = 0; i < n; i++)
		{
			bool		isnull;

			from = Max(from, DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc,
														 1, &isnull)) + 1);
		}
		SPI_finish();
		dbaccess_restore_user(&ctx);
		batch_end(p);
	} while (n == PRUNE_BATCH);
}

/*
 * Latest versions looked at before and superseded since, as far as every
 * puller holds their replica ID, in batches taken off the queue whatever
 * their IDs.  (Entries a puller still lacks wait there, and never hide the
 * others.)
 */
static void
prune_queue(PruneRun *p)
{
	Oid			types[2] = {UUIDARRAYOID, INT8ARRAYOID};
	Datum		values[2];
	int			n;

	horizons(p, &values[0], &values[1]);
	do
	{
		ReplstampOwnerContext ctx;
		StampKey   *keys;
		MemoryContext caller;

		CHECK_FOR_INTERRUPTS();
		batch_begin();
		caller = CurrentMemoryContext;
		dbaccess_become_owner(&ctx);
		SPI_connect();
		dbaccess_spi_exec("DELETE FROM replstamp.prune_queue WHERE ctid OPERATOR(pg_catalog.=) ANY (ARRAY("
						  "SELECT q.ctid FROM replstamp.prune_queue q "
						  "JOIN ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2)) u(replica_id, upto) "
						  "  ON u.replica_id OPERATOR(pg_catalog.=) q.replica_id "
						  "  AND q.serial OPERATOR(pg_catalog.<=) u.upto "
						  "LIMIT " CppAsString2(PRUNE_BATCH) ")) RETURNING replica_id, serial",
						  2, types, values, NULL, SPI_OK_DELETE_RETURNING);
		n = SPI_processed;
		/* Outlives SPI_finish(). */
		keys = MemoryContextAlloc(caller, sizeof(StampKey) * Max(n, 1));
		for (int k = 0; k < n; k++)
		{
			bool		isnull;

			memcpy(&keys[k].id, DatumGetUUIDP(SPI_getbinval(SPI_tuptable->vals[k], SPI_tuptable->tupdesc,
															1, &isnull)), sizeof(pg_uuid_t));
			keys[k].serial = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[k],
														 SPI_tuptable->tupdesc, 2, &isnull));
		}
		SPI_finish();
		dbaccess_restore_user(&ctx);
		p->w = rowversion_writer_begin(p->cat);
		for (int k = 0; k < n; k++)
		{
			Change		c;

			if (changelog_fetch(p->cat, &keys[k].id, keys[k].serial, &c) && !kept(p, &c))
			{
				changelog_delete_tid(p->cat, &c.tid);
				p->removed++;
			}
		}
		rowversion_writer_end(p->w);
		p->w = NULL;
		batch_end(p);
	} while (n == PRUNE_BATCH);
}

/*
 * Tombstones older than the lifetime that every puller holds.  (A puller
 * that lacks one is refused once it is dropped; one that keeps syncing
 * must get it first, however late the tombstone arrived here.  A puller
 * not seen for a lifetime is forgotten, so this waits a lifetime at most.)
 * The highest serial dropped per replica ID is recorded in
 * replstamp.purged: a node that holds less of that ID is refused.
 */
static void
prune_tombstones(PruneRun *p)
{
	int64	   *dropped = MemoryContextAllocZero(p->cxt, sizeof(int64) * Max(p->nitems, 1));
	Oid			types[3] = {TEXTOID, UUIDARRAYOID, INT8ARRAYOID};
	Datum		values[3];
	MemoryContext old = MemoryContextSwitchTo(p->cxt);
	int			n;
	char	   *query;

	values[0] = CStringGetTextDatum(lifetime_text());
	query = psprintf("DELETE FROM replstamp.row_version WHERE ctid OPERATOR(pg_catalog.=) ANY (ARRAY("
					 "SELECT v.ctid FROM replstamp.row_version v "
					 "JOIN ROWS FROM (pg_catalog.unnest($2), pg_catalog.unnest($3)) u(replica_id, upto) "
					 "  ON u.replica_id OPERATOR(pg_catalog.=) v.replica_id "
					 "  AND v.serial OPERATOR(pg_catalog.<=) u.upto "
					 "WHERE %s OPERATOR(pg_catalog.<) "
					 "(pg_catalog.now() OPERATOR(pg_catalog.-) $1::pg_catalog.interval) "
					 "LIMIT " CppAsString2(PRUNE_BATCH) ")) RETURNING replica_id, serial",
					 TOMBSTONE_TIME(p->cat, "v"));
	MemoryContextSwitchTo(old);
	horizons(p, &values[1], &values[2]);
	do
	{
		ReplstampOwnerContext ctx;
		StampKey   *keys;

		CHECK_FOR_INTERRUPTS();
		batch_begin();
		dbaccess_become_owner(&ctx);
		SPI_connect();
		dbaccess_spi_exec(query, 3, types, values, NULL, SPI_OK_DELETE_RETURNING);
		n = SPI_processed;
		keys = palloc(sizeof(StampKey) * Max(n, 1));
		for (int i = 0; i < n; i++)
		{
			bool		isnull;

			memcpy(&keys[i].id, DatumGetUUIDP(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc,
															1, &isnull)), sizeof(pg_uuid_t));
			keys[i].serial = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
														 SPI_tuptable->tupdesc, 2, &isnull));
		}
		CommandCounterIncrement();
		p->w = rowversion_writer_begin(p->cat);
		for (int i = 0; i < n; i++)
		{
			Change		c;

			if (changelog_fetch(p->cat, &keys[i].id, keys[i].serial, &c) && !kept(p, &c))
			{
				changelog_delete_tid(p->cat, &c.tid);
				p->removed++;
			}
			for (int k = 0; k < p->nitems; k++)
				if (memcmp(p->items[k].id.data, keys[i].id.data, UUID_LEN) == 0)
					dropped[k] = Max(dropped[k], keys[i].serial);
		}
		rowversion_writer_end(p->w);
		p->w = NULL;
		/* A node holding less of these IDs could bring the rows back. */
		for (int k = 0; k < p->nitems; k++)
		{
			Oid			pt[2] = {UUIDOID, INT8OID};
			Datum		pv[2] = {UUIDPGetDatum(&p->items[k].id), Int64GetDatum(dropped[k])};

			if (dropped[k] == 0)
				continue;
			dbaccess_spi_exec("INSERT INTO replstamp.purged (replica_id, serial) VALUES ($1, $2) "
							  "ON CONFLICT (replica_id) DO UPDATE SET serial = "
							  "GREATEST(replstamp.purged.serial, EXCLUDED.serial)",
							  2, pt, pv, NULL, SPI_OK_INSERT);
			dropped[k] = 0;
		}
		SPI_finish();
		dbaccess_restore_user(&ctx);
		batch_end(p);
	} while (n == PRUNE_BATCH);
}

/*
 * Retired replica IDs with no change left here, held by every puller,
 * leave the vector: it must not grow by one entry per restore forever.
 */
static void
prune_retired(PruneRun *p)
{
	ReplstampOwnerContext ctx;
	const char *held_everywhere =
		"NOT EXISTS (SELECT 1 FROM replstamp.changes c WHERE c.replica_id OPERATOR(pg_catalog.=) %s) "
		"AND NOT EXISTS (SELECT 1 FROM replstamp.puller u WHERE NOT EXISTS ("
		"  SELECT 1 FROM replstamp.puller_vector pv WHERE pv.puller OPERATOR(pg_catalog.=) u.replica_id "
		"  AND pv.replica_id OPERATOR(pg_catalog.=) %s AND pv.serial OPERATOR(pg_catalog.>=) %s))";

	batch_begin();
	dbaccess_become_owner(&ctx);
	SPI_connect();
	/* IDs other nodes retired. */
	dbaccess_spi_exec(psprintf("WITH gone AS (DELETE FROM replstamp.vector_state v WHERE v.retired "
							   "AND NOT EXISTS (SELECT 1 FROM replstamp.replica_history h "
							   "  WHERE h.replica_id OPERATOR(pg_catalog.=) v.replica_id) AND %s "
							   "RETURNING v.replica_id) "
							   "DELETE FROM replstamp.epoch e USING gone WHERE e.replica_id OPERATOR(pg_catalog.=) gone.replica_id "
							   "AND NOT e.dead",
							   psprintf(held_everywhere, "v.replica_id", "v.replica_id", "v.serial")),
					  0, NULL, NULL, NULL, SPI_OK_DELETE);

	/*
	 * IDs this database retired.  Held up to where: the vector's entry of a
	 * restored copy's old ID; else (every change of it was made here) the
	 * last serial it can have, below the first serial of the ID minted when
	 * it was retired; the lowest uncommitted serial, which the vector claims,
	 * only goes up and pullers would never catch up with it.
	 */
	dbaccess_spi_exec(psprintf("WITH gone AS (UPDATE replstamp.replica_history h SET in_vector = false "
							   "WHERE h.in_vector AND h.retired_at IS NOT NULL AND %s RETURNING h.replica_id) "
							   "DELETE FROM replstamp.vector_state v USING gone "
							   "WHERE v.replica_id OPERATOR(pg_catalog.=) gone.replica_id",
							   psprintf(held_everywhere, "h.replica_id", "h.replica_id",
										"coalesce((SELECT v2.serial FROM replstamp.vector_state v2 "
										"  WHERE v2.replica_id OPERATOR(pg_catalog.=) h.replica_id), "
										"(SELECT pg_catalog.min(e.first_serial) OPERATOR(pg_catalog.-) 1 "
										"  FROM replstamp.epoch e JOIN replstamp.replica_history h2 "
										"    ON h2.replica_id OPERATOR(pg_catalog.=) e.replica_id "
										"  WHERE h2.minted_at OPERATOR(pg_catalog.>=) h.retired_at "
										"    AND h2.replica_id OPERATOR(pg_catalog.<>) h.replica_id), "
										"replstamp.lowest_uncommitted_serial() OPERATOR(pg_catalog.-) 1)")),
					  0, NULL, NULL, NULL, SPI_OK_DELETE);
	dbaccess_spi_exec("DELETE FROM replstamp.puller_vector pv WHERE NOT EXISTS (SELECT 1 FROM replstamp.vector v "
					  "WHERE v.replica_id OPERATOR(pg_catalog.=) pv.replica_id)", 0, NULL, NULL, NULL, SPI_OK_DELETE);
	dbaccess_spi_exec("DELETE FROM replstamp.prune_progress pp WHERE NOT EXISTS (SELECT 1 FROM replstamp.vector v "
					  "WHERE v.replica_id OPERATOR(pg_catalog.=) pp.replica_id)", 0, NULL, NULL, NULL, SPI_OK_DELETE);
	dbaccess_spi_exec("DELETE FROM replstamp.prune_queue q WHERE NOT EXISTS (SELECT 1 FROM replstamp.vector v "
					  "WHERE v.replica_id OPERATOR(pg_catalog.=) q.replica_id)", 0, NULL, NULL, NULL, SPI_OK_DELETE);
	SPI_finish();
	dbaccess_restore_user(&ctx);
	batch_end(p);
}

/*
 * Tables dropped or untracked here: their changes leave the log (peers
 * that still track them keep theirs; a node that never had them is not
 * bothered by them).  Once per table, in the plan's transaction.
 */
static void
prune_dropped_tables(PruneRun *p)
{
	ReplstampOwnerContext ctx;

	dbaccess_become_owner(&ctx);
	SPI_connect();
	dbaccess_spi_exec(catalog_sql("WITH gone AS (UPDATE replstamp.tracked_table SET log_purged = true "
								  "  WHERE state OPERATOR(pg_catalog.<>) 'tracked' AND NOT log_purged RETURNING relation), "
								  "rv AS (DELETE FROM replstamp.row_version v USING gone "
								  "  WHERE v.relation OPERATOR(pg_catalog.=) gone.relation), "
								  "rd AS (DELETE FROM replstamp.row_digest d USING gone "
								  "  WHERE d.relation OPERATOR(pg_catalog.=) gone.relation) "
								  "DELETE FROM replstamp.changes c USING gone WHERE c.relation OPERATOR(pg_catalog.=) gone.relation"),
					  0, NULL, NULL, NULL, SPI_OK_DELETE);
	p->removed += SPI_processed;
	SPI_finish();
	dbaccess_restore_user(&ctx);
}

/*
 * Prune the change log of the current database.  For background workers,
 * outside any transaction.  Returns the number of changes removed.
 */
int64
prune_run(void)
{
	MemoryContext cxt = AllocSetContextCreate(TopMemoryContext, "replstamp prune",
											  ALLOCSET_DEFAULT_SIZES);
	MemoryContext old = MemoryContextSwitchTo(cxt);
	PruneRun   *p = palloc0(sizeof(PruneRun));
	LOCKTAG		tag = prune_locktag();
	int64		removed;

	p->cxt = cxt;
	pgstat_report_activity(STATE_RUNNING, "replstamp: pruning the change log");
	worker_begin_xact();
	(void) LockAcquire(&tag, ExclusiveLock, true, false);
	PG_TRY();
	{
		rowversion_page_lock(true);
		p->cat = catalog_get_v11("replstamp.prune()");
		prune_plan(p);
		prune_dropped_tables(p);
		batch_end(p);
		prune_walk(p);
		prune_expired(p);
		prune_queue(p);
		prune_tombstones(p);
		prune_retired(p);
	}
	PG_FINALLY();
	{
		LockRelease(&tag, ExclusiveLock, true);
	}
	PG_END_TRY();
	removed = p->removed;
	pgstat_report_activity(STATE_IDLE, NULL);
	MemoryContextSwitchTo(old);
	MemoryContextDelete(cxt);
	if (removed > 0)
		ereport(DEBUG1, (errmsg("replstamp: pruned " INT64_FORMAT " changes", removed)));
	return removed;
}

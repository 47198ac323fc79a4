/*-------------------------------------------------------------------------
 *
 * maintenance.c
 *		Background upkeep of a database with replstamp:
 *		- pruning (replstamp.prune(), and the launcher every
 *		  replstamp.prune_interval): a change every puller holds is removed,
 *		  unless it is the latest change of its row (last writer wins
 *		  compares against it, and a late joiner or a node restored from an
 *		  older backup converges from it); a tombstone (the latest change of
 *		  a deleted row) is removed once it is older than
 *		  replstamp.tombstone_lifetime and every puller holds it, and the
 *		  highest serial dropped that way per replica ID is recorded, so
 *		  that a node which
 *		  holds less is refused rather than allowed to bring deleted rows
 *		  back (serve.c, sync.c); retired replica IDs with nothing left leave
 *		  the vector; pullers not seen for a tombstone lifetime are
 *		  forgotten; conflicts, each with a copy of the version that lost,
 *		  are kept for replstamp.conflict_retention;
 *		- the lowest uncommitted serial, recorded at every sync and round,
 *		  which a copy without the backup mark starts from (identity.c);
 *		- backfill of tables tracked with backfill => true;
 *		- replstamp.restore_version().
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
#include "errors.h"
#include "identity.h"
#include "latest.h"
#include "maintenance.h"
#include "rowimage.h"
#include "rowversion.h"
#include "serial.h"
#include "workers.h"

PG_FUNCTION_INFO_V1(replstamp_restore_version);

#define PRUNE_BATCH		2000
/* The field4 of the advisory lock tag a prune holds (rowversion.c has 3 and 4). */
#define PRUNE_LOCK_CLASS	5

/* GUCs */
static int	tombstone_lifetime = 14 * 24 * 3600;	/* seconds */
static int	conflict_retention = 3600;	/* seconds */
static int	prune_interval = 60;	/* seconds */
static int	debug_prune_pause = 0;	/* ms */
static int	backfill_batch_size = 1000; /* rows */
static int	backfill_delay = 0;		/* milliseconds */

/*
 * GUCs.  Called from _PG_init.
 */
void
maintenance_init(void)
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
	DefineCustomIntVariable("replstamp.backfill_batch_size",
							"Rows the backfill of a table stamps per transaction.",
							"Each row stays locked against updates until its batch commits.",
							&backfill_batch_size,
							1000, 1, 1000000,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("replstamp.backfill_delay",
							"Pause between two batches of a backfill.",
							"Spreads the load of backfilling a large table; zero means no pause.",
							&backfill_delay,
							0, 0, 3600 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);
}

int
maintenance_prune_interval(void)
{
	return prune_interval;
}

static char *
lifetime_text(void)
{
	return psprintf("%d seconds", tombstone_lifetime);
}

/*
 * Record the lowest uncommitted serial of the current replica ID, if a
 * serial was taken since this process last did.  In a transaction.  The
 * mark never goes down while it is about one ID (a lowest uncommitted
 * serial read while a transaction starts can be below an earlier one):
 * identity.c relies on it.
 */
void
maintenance_mark_lus(void)
{
	static bool marked = false;
	static uint64 marked_activity = 0;
	const ReplstampCatalog *cat = replstamp_catalog(true);
	ReplstampOwnerContext ctx;
	uint64		activity;
	int64		lus;

	if (cat == NULL || !cat->v11 || RecoveryInProgress())
		return;
	activity = serial_activity();
	if (marked && activity == marked_activity)
		return;
	lus = serial_lus(cat->serial_seq);
	replstamp_become_owner(&ctx);
	SPI_connect();
	identity_raise_lus_mark(&replstamp_node()->replica_id, lus);
	SPI_finish();
	replstamp_restore_user(&ctx);
	marked = true;
	marked_activity = activity;
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
	if (found && bytes_equal(e->relation, relation) &&
		bytes_equal((struct varlena *) e->key, (struct varlena *) row->key))
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
	int			n = change_rows(c, rows);

	for (int i = 0; i < n; i++)
	{
		LatestEntry *e = latest_of(p, c->relation, &rows[i]);

		if (e->found && same_stamp(&e->latest.id, e->latest.serial, &c->replica_id, c->serial))
			return true;
		if (e->found && e->partial &&
			same_stamp(&e->carry.id, e->carry.serial, &c->replica_id, c->serial))
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
	Relation	rel = table_open(p->cat->conflict_log, AccessShareLock);
	Relation	idx = index_open(p->cat->conflict_log_pkey, AccessShareLock);
	SysScanDesc scan = systable_beginscan_ordered(rel, idx, GetActiveSnapshot(), 0, NULL);
	HeapTuple	tuple;
	int64		below = 0;

	while ((tuple = systable_getnext_ordered(scan, ForwardScanDirection)) != NULL)
	{
		bool		isnull;
		int64		id = DatumGetInt64(heap_getattr(tuple, Anum_conflict_log_id,
													RelationGetDescr(rel), &isnull));

		if (DatumGetTimestampTz(heap_getattr(tuple, Anum_conflict_log_resolved_at,
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
	ReconcileState *rs = reconcile_begin(p->cxt);
	Oid			types[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(lifetime_text())};

	p->w = rowversion_writer_begin(p->cat);
	reconcile(p->w, rs);
	reconcile_save(rs);
	p->removed += p->w->removed;
	rowversion_writer_end(p->w);
	p->w = NULL;

	replstamp_become_owner(&ctx);
	SPI_connect();
	/* A puller away longer than a tombstone lifetime is refused anyway. */
	replstamp_spi_exec("DELETE FROM replstamp.puller WHERE last_pull_at OPERATOR(pg_catalog.<) "
			           "(pg_catalog.now() OPERATOR(pg_catalog.-) $1::pg_catalog.interval)",
			           1, types, values, NULL, SPI_OK_DELETE);
	/* Per replica ID: up to where every puller holds it. */
	replstamp_spi_exec("SELECT v.replica_id, coalesce(pp.walked_upto, 0), "
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
	replstamp_restore_user(&ctx);
	p->expire_below = expiry_boundary(p);
}

static void
save_walked(const pg_uuid_t *id, int64 walked)
{
	ReplstampOwnerContext ctx;
	Oid			types[2] = {UUIDOID, INT8OID};
	Datum		values[2] = {UUIDPGetDatum(id), Int64GetDatum(walked)};

	replstamp_become_owner(&ctx);
	SPI_connect();
	replstamp_spi_exec("INSERT INTO replstamp.prune_progress (replica_id, walked_upto) VALUES ($1, $2) "
			           "ON CONFLICT (replica_id) DO UPDATE SET walked_upto = EXCLUDED.walked_upto",
			           2, types, values, NULL, SPI_OK_INSERT);
	SPI_finish();
	replstamp_restore_user(&ctx);
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
		replstamp_become_owner(&ctx);
		SPI_connect();
		replstamp_spi_exec("DELETE FROM replstamp.conflict_log WHERE ctid OPERATOR(pg_catalog.=) ANY (ARRAY("
				           "SELECT ctid FROM replstamp.conflict_log "
				           "WHERE id OPERATOR(pg_catalog.>=) $1 AND id OPERATOR(pg_catalog.<) $2 "
				           "ORDER BY id LIMIT " CppAsString2(PRUNE_BATCH) ")) "
				           "RETURNING id",
				           2, types, values, NULL, SPI_OK_DELETE_RETURNING);
		n = SPI_processed;
		for (int i = 0; i < n; i++)
		{
			bool		isnull;

			from = Max(from, DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc,
														 1, &isnull)) + 1);
		}
		SPI_finish();
		replstamp_restore_user(&ctx);
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
		replstamp_become_owner(&ctx);
		SPI_connect();
		replstamp_spi_exec("DELETE FROM replstamp.prune_queue WHERE ctid OPERATOR(pg_catalog.=) ANY (ARRAY("
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
		replstamp_restore_user(&ctx);
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

	values[0] = CStringGetTextDatum(lifetime_text());
	MemoryContextSwitchTo(old);
	horizons(p, &values[1], &values[2]);
	do
	{
		ReplstampOwnerContext ctx;
		StampKey   *keys;

		CHECK_FOR_INTERRUPTS();
		batch_begin();
		replstamp_become_owner(&ctx);
		SPI_connect();
		replstamp_spi_exec("DELETE FROM replstamp.row_version WHERE ctid OPERATOR(pg_catalog.=) ANY (ARRAY("
				           "SELECT v.ctid FROM replstamp.row_version v "
				           "JOIN ROWS FROM (pg_catalog.unnest($2), pg_catalog.unnest($3)) u(replica_id, upto) "
				           "  ON u.replica_id OPERATOR(pg_catalog.=) v.replica_id "
				           "  AND v.serial OPERATOR(pg_catalog.<=) u.upto "
				           "WHERE v.deleted AND v.changed_at OPERATOR(pg_catalog.<) "
				           "(pg_catalog.now() OPERATOR(pg_catalog.-) $1::pg_catalog.interval) "
				           "LIMIT " CppAsString2(PRUNE_BATCH) ")) RETURNING replica_id, serial",
				           3, types, values, NULL, SPI_OK_DELETE_RETURNING);
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
			replstamp_spi_exec("INSERT INTO replstamp.purged (replica_id, serial) VALUES ($1, $2) "
					           "ON CONFLICT (replica_id) DO UPDATE SET serial = "
					           "GREATEST(replstamp.purged.serial, EXCLUDED.serial)",
					           2, pt, pv, NULL, SPI_OK_INSERT);
			dropped[k] = 0;
		}
		SPI_finish();
		replstamp_restore_user(&ctx);
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
	replstamp_become_owner(&ctx);
	SPI_connect();
	/* IDs other nodes retired. */
	replstamp_spi_exec(psprintf("WITH gone AS (DELETE FROM replstamp.vector_state v WHERE v.retired "
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
	 * it was retired; the lowest uncommitted serial, which the vector
	 * claims, only goes up and pullers would never catch up with it.
	 */
	replstamp_spi_exec(psprintf("WITH gone AS (UPDATE replstamp.replica_history h SET in_vector = false "
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
	replstamp_spi_exec("DELETE FROM replstamp.puller_vector pv WHERE NOT EXISTS (SELECT 1 FROM replstamp.vector v "
			           "WHERE v.replica_id OPERATOR(pg_catalog.=) pv.replica_id)", 0, NULL, NULL, NULL, SPI_OK_DELETE);
	replstamp_spi_exec("DELETE FROM replstamp.prune_progress pp WHERE NOT EXISTS (SELECT 1 FROM replstamp.vector v "
			           "WHERE v.replica_id OPERATOR(pg_catalog.=) pp.replica_id)", 0, NULL, NULL, NULL, SPI_OK_DELETE);
	replstamp_spi_exec("DELETE FROM replstamp.prune_queue q WHERE NOT EXISTS (SELECT 1 FROM replstamp.vector v "
			           "WHERE v.replica_id OPERATOR(pg_catalog.=) q.replica_id)", 0, NULL, NULL, NULL, SPI_OK_DELETE);
	SPI_finish();
	replstamp_restore_user(&ctx);
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

	replstamp_become_owner(&ctx);
	SPI_connect();
	replstamp_spi_exec("WITH gone AS (UPDATE replstamp.tracked SET log_purged = true "
			           "  WHERE state OPERATOR(pg_catalog.<>) 'tracked' AND NOT log_purged RETURNING relation), "
			           "rv AS (DELETE FROM replstamp.row_version v USING gone "
			           "  WHERE v.relation OPERATOR(pg_catalog.=) gone.relation), "
			           "rd AS (DELETE FROM replstamp.row_digest d USING gone "
			           "  WHERE d.relation OPERATOR(pg_catalog.=) gone.relation) "
			           "DELETE FROM replstamp.changes c USING gone WHERE c.relation OPERATOR(pg_catalog.=) gone.relation",
			           0, NULL, NULL, NULL, SPI_OK_DELETE);
	p->removed += SPI_processed;
	SPI_finish();
	replstamp_restore_user(&ctx);
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
		p->cat = replstamp_catalog_v11("replstamp.prune()");
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

/* ---------------------------------------------------------------------
 * Backfill
 *
 * track(t, backfill => true) takes, once it holds the lock that keeps the
 * writers of t out, a snapshot and the size of t (backfill_origin()).  A
 * row version that snapshot sees was written before track() and has no
 * stamp; every other version was written by a transaction that fired the
 * stamp trigger, and its change carries the whole row.  The backfill
 * stamps, once, as an INSERT, each row whose current version is one of the
 * former, and leaves the others alone.  No version past the end of the
 * table at track() can be one of them, so the walk ends there, however
 * fast writers insert.
 *
 * It walks the table in ctid order, in batches (replstamp.backfill_batch_size
 * rows, replstamp.backfill_delay apart), each a transaction that records how
 * far it went (backfill_after) with its stamps: after a crash or a restart
 * it resumes there, and nothing is stamped twice.  Each row it stamps stays
 * locked FOR SHARE until its batch commits, so a writer that updates or
 * deletes the row meanwhile waits and stamps its own change later: on every
 * node the writer's change wins.  A row a writer holds is waited for only
 * when the batch holds no other lock a writer or a sync could wait for (no
 * row, and its row of replstamp.tracked is only written at its end), so
 * that the backfill never takes part in a deadlock; otherwise the batch
 * ends before that row and the next one starts with it.
 *
 * One worker backfills a table at a time: it holds a session-level lock of
 * its own on the table (an advisory lock tag, BACKFILL_LOCK_CLASS) until it
 * is done or exits; another worker that finds the table taken leaves it.
 *
 * A table rewritten meanwhile (VACUUM FULL, CLUSTER, a rewriting ALTER
 * TABLE) has its rows in other places and maybe under other xmins: its
 * backfill starts again from the first row with a new snapshot, and rows
 * stamped before the rewrite get a second INSERT stamp with the same image.
 * ---------------------------------------------------------------------
 */

/* The field4 of the advisory lock tag that marks a table's backfill. */
#define BACKFILL_LOCK_CLASS		0x7262

/* A batch looks at no more than this many rows it leaves alone. */
#define BACKFILL_SCAN_FACTOR	10

/* What a batch of a backfill leaves to do. */
typedef enum BackfillStep
{
	BACKFILL_MORE,				/* the next batch goes on */
	BACKFILL_DONE,				/* the table is done, or gone */
	BACKFILL_STALE				/* tracked anew meanwhile: roll this batch back */
} BackfillStep;

/* A table's backfill, as replstamp.tracked records it. */
typedef struct Backfill
{
	Oid			relid;
	char	   *relation;		/* schema-qualified, as registered */
	ItemPointerData after;		/* stamped up to here */
	ItemPointerData end;		/* the table ended before this row */
	Oid			filenode;		/* the table's file node at track() */
	bool		has_origin;		/* the three above and the snapshot are set */
	char	   *snapshot;		/* the snapshot, as text */
	TransactionId xmax;			/* the snapshot: transactions from xmax on */
	int			nrunning;		/* and these (sorted) had not ended */
	TransactionId *running;
} Backfill;

/* Start a worker that backfills the current database's pending tables, once
 * the current transaction commits (track() with backfill). */
static bool backfill_requested = false;

static void
backfill_xact_callback(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_COMMIT && backfill_requested)
	{
		if (!replstamp_start_worker("replstamp_maintenance_main", "replstamp backfill",
									MyDatabaseId, InvalidOid, NULL, 0, NULL))
			ereport(WARNING,
					(errmsg("replstamp: could not start the backfill worker"),
					 errhint("The launcher starts it at its next round; raise max_worker_processes.")));
	}
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT)
		backfill_requested = false;
}

void
maintenance_request_backfill(void)
{
	static bool registered = false;

	if (!registered)
	{
		RegisterXactCallback(backfill_xact_callback, NULL);
		registered = true;
	}
	backfill_requested = true;
}

/* A transaction ID of a current snapshot, with its epoch. */
static FullTransactionId
widen_xid(FullTransactionId next, TransactionId xid)
{
	uint32		epoch = EpochFromFullTransactionId(next);

	if (!TransactionIdIsNormal(xid))
		return FullTransactionIdFromEpochAndXid(0, xid);
	if (xid > XidFromFullTransactionId(next))
		epoch--;				/* assigned before next wrapped around */
	return FullTransactionIdFromEpochAndXid(epoch, xid);
}

static int
fxid_cmp(const void *a, const void *b)
{
	uint64		x = U64FromFullTransactionId(*(const FullTransactionId *) a);
	uint64		y = U64FromFullTransactionId(*(const FullTransactionId *) b);

	return x < y ? -1 : x > y ? 1 : 0;
}

/*
 * Where a backfill of rel starts, taken now: a snapshot that sees every
 * transaction that has ended (as pg_snapshot text; its transactions in
 * progress include their subtransactions), the end of the table and its
 * file node.  The caller holds a lock that keeps writers of rel out, or
 * knows that every writer from now on fires the stamp trigger.
 */
void
backfill_origin(Relation rel, BackfillOrigin *origin)
{
	Snapshot	snap = GetLatestSnapshot();
	FullTransactionId next = ReadNextFullTransactionId();
	FullTransactionId *running;
	int			n = 0;
	StringInfoData buf;

	running = palloc(sizeof(FullTransactionId) * (snap->xcnt + Max(snap->subxcnt, 0) + 1));
	for (int i = 0; i < snap->xcnt; i++)
		running[n++] = widen_xid(next, snap->xip[i]);
	/* Subtransactions from xmax on count as in progress anyway. */
	for (int i = 0; i < snap->subxcnt; i++)
		if (TransactionIdPrecedes(snap->subxip[i], snap->xmax))
			running[n++] = widen_xid(next, snap->subxip[i]);
	qsort(running, n, sizeof(FullTransactionId), fxid_cmp);

	initStringInfo(&buf);
	appendStringInfo(&buf, UINT64_FORMAT ":" UINT64_FORMAT ":",
					 U64FromFullTransactionId(widen_xid(next, snap->xmin)),
					 U64FromFullTransactionId(widen_xid(next, snap->xmax)));
	for (int i = 0; i < n; i++)
		if (i == 0 || !FullTransactionIdEquals(running[i], running[i - 1]))
			appendStringInfo(&buf, "%s" UINT64_FORMAT, i ? "," : "",
							 U64FromFullTransactionId(running[i]));
	origin->snapshot = buf.data;
	origin->end = psprintf("(%u,0)", RelationGetNumberOfBlocks(rel));
	origin->filenode = RELATION_FILENUMBER(rel);
}

/* Was this version written before track(), so that it has no stamp yet? */
static bool
written_before_track(const Backfill *bf, HeapTupleHeader tuple)
{
	TransactionId xmin = HeapTupleHeaderGetXmin(tuple);

	if (!TransactionIdIsNormal(xmin))
		return true;			/* frozen */
	if (!TransactionIdPrecedes(xmin, bf->xmax))
		return false;
	return bsearch(&xmin, bf->running, bf->nrunning, sizeof(TransactionId),
				   xidComparator) == NULL;
}

/*
 * Read the table's backfill from replstamp.tracked.  False if it has
 * nothing (left) to do.  Its row there is not locked: a batch that waited
 * for a row of the table while holding it could deadlock with a sync,
 * which updates it (the conflict counts) while holding rows of the table.
 */
static bool
backfill_read(Backfill *bf)
{
	ReplstampOwnerContext ctx;
	Oid			types[1] = {OIDOID};
	Datum		values[1] = {ObjectIdGetDatum(bf->relid)};
	MemoryContext caller = CurrentMemoryContext;
	bool		found;

	replstamp_become_owner(&ctx);
	SPI_connect();
	replstamp_spi_exec("SELECT relation, coalesce(backfill_after, '(0,0)'), backfill_end, backfill_filenode, "
			           "pg_catalog.pg_snapshot_xmax(backfill_snapshot), "
			           "ARRAY(SELECT pg_catalog.pg_snapshot_xip(backfill_snapshot)), "
			           "backfill_snapshot::pg_catalog.text "
			           "FROM replstamp.tracked WHERE relid OPERATOR(pg_catalog.=) $1 AND state = 'tracked' "
			           "AND backfill IN ('pending', 'running')",
			           1, types, values, NULL, SPI_OK_SELECT);
	found = SPI_processed > 0;
	if (found)
	{
		HeapTuple	row = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull[6];
		Datum		d[6];

		for (int i = 0; i < 6; i++)
			d[i] = SPI_getbinval(row, desc, i + 1, &isnull[i]);
		/* Outlives SPI_finish(). */
		bf->relation = MemoryContextStrdup(caller, SPI_getvalue(row, desc, 1));
		bf->after = *(ItemPointer) DatumGetPointer(d[1]);
		bf->has_origin = !isnull[2] && !isnull[3] && !isnull[4];
		if (bf->has_origin)
		{
			ArrayType  *arr = DatumGetArrayTypeP(d[5]);
			Datum	   *xids;
			int			n;

			bf->end = *(ItemPointer) DatumGetPointer(d[2]);
			bf->filenode = DatumGetObjectId(d[3]);
			bf->snapshot = MemoryContextStrdup(caller, SPI_getvalue(row, desc, 7));
			bf->xmax = XidFromFullTransactionId(DatumGetFullTransactionId(d[4]));
			deconstruct_array(arr, XID8OID, sizeof(uint64), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE,
							  &xids, NULL, &n);
			bf->nrunning = n;
			bf->running = MemoryContextAlloc(caller, sizeof(TransactionId) * Max(n, 1));
			for (int i = 0; i < n; i++)
				bf->running[i] = XidFromFullTransactionId(DatumGetFullTransactionId(xids[i]));
			qsort(bf->running, n, sizeof(TransactionId), xidComparator);
		}
	}
	SPI_finish();
	replstamp_restore_user(&ctx);
	return found;
}

/* Start the backfill over from the first row, with a new origin. */
static void
backfill_restart(Relation rel, Backfill *bf)
{
	ReplstampOwnerContext ctx;
	BackfillOrigin origin;
	Oid			types[4] = {OIDOID, TEXTOID, TEXTOID, OIDOID};
	Datum		values[4];

	if (bf->has_origin)
		ereport(LOG,
				(errmsg("replstamp: table %s was rewritten during its backfill; its backfill starts again",
						bf->relation),
				 errdetail("Rows stamped before the rewrite are stamped once more.")));
	backfill_origin(rel, &origin);
	values[0] = ObjectIdGetDatum(bf->relid);
	values[1] = CStringGetTextDatum(origin.snapshot);
	values[2] = CStringGetTextDatum(origin.end);
	values[3] = ObjectIdGetDatum(origin.filenode);
	replstamp_become_owner(&ctx);
	SPI_connect();
	replstamp_spi_exec("UPDATE replstamp.tracked SET backfill_after = NULL, "
			           "backfill_snapshot = $2::pg_catalog.pg_snapshot, backfill_end = $3::pg_catalog.tid, "
			           "backfill_filenode = $4 WHERE relid OPERATOR(pg_catalog.=) $1 AND state = 'tracked'",
			           4, types, values, NULL, SPI_OK_UPDATE);
	SPI_finish();
	replstamp_restore_user(&ctx);
}

/* Stamp one row the backfill holds locked. */
static void
backfill_stamp(const ReplstampCatalog *cat, Relation rel, RowLayout *layout,
			   TupleTableSlot *slot)
{
	Change		c;
	bool		should_free;
	HeapTuple	tuple = ExecFetchSlotHeapTuple(slot, false, &should_free);

	rowimage_both(layout, RelationGetDescr(rel), tuple, tuple, &c.pk, &c.image);
	c.op = 'I';
	c.relation = layout->relname_text;
	c.changed_at = serial_stamp_time();
	c.applied = false;
	c.serial = serial_take(cat->serial_seq);
	c.replica_id = replstamp_node()->replica_id;
	changelog_append(cat, &c);
	if (should_free)
		heap_freetuple(tuple);
}

/*
 * One batch of the table's backfill, in the current transaction: stamp the
 * next rows, record how far it went.
 */
static BackfillStep
backfill_batch(const ReplstampCatalog *cat, Oid relid)
{
	Relation	rel;
	Backfill	bf;
	ItemPointerData from;
	RowLayout  *layout;
	Snapshot	snap;
	TableScanDesc scan;
	TupleTableSlot *slot;
	TupleTableSlot *locked;
	ItemPointerData first;
	ItemPointerData last;
	MemoryContext rowcxt;
	MemoryContext old;
	int64		stamped = 0;
	int64		looked = 0;
	bool		done = true;
	BackfillStep step;
	ReplstampOwnerContext ctx;
	Oid			types[6] = {OIDOID, TEXTOID, INT8OID, TIDOID, TEXTOID, TIDOID};
	Datum		values[6];

	/* DROP TABLE and rewrites wait for this batch, or it for them. */
	rel = try_relation_open(relid, AccessShareLock);
	if (rel == NULL)
		return BACKFILL_DONE;	/* dropped: the drop guard records it */
	memset(&bf, 0, sizeof(bf));
	bf.relid = relid;
	if (!backfill_read(&bf))
	{
		relation_close(rel, AccessShareLock);
		return BACKFILL_DONE;	/* untracked, or done by another worker */
	}
	from = bf.after;
	if (rel->rd_tableam != GetHeapamTableAmRoutine())
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot backfill table %s because it does not use the heap access method",
						bf.relation)));
	if (!bf.has_origin || bf.filenode != RELATION_FILENUMBER(rel))
	{
		backfill_restart(rel, &bf);
		relation_close(rel, NoLock);
		return BACKFILL_MORE;
	}
	pgstat_report_activity(STATE_RUNNING, psprintf("replstamp: backfilling %s", bf.relation));

	identity_ensure_verified();
	layout = rowimage_layout(rel);
	if (!OidIsValid(layout->pkoid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot backfill table %s because it has no primary key", bf.relation),
				 errdetail("replstamp identifies rows by their primary key."),
				 errhint("Add a primary key to the table; its backfill goes on at the next maintenance round or server start.")));

	if (ItemPointerGetBlockNumberNoCheck(&bf.end) > 0)
	{
		rowcxt = AllocSetContextCreate(CurrentMemoryContext, "replstamp backfill row",
									   ALLOCSET_DEFAULT_SIZES);
		snap = RegisterSnapshot(GetLatestSnapshot());
		first = bf.after;
		ItemPointerSet(&last, ItemPointerGetBlockNumberNoCheck(&bf.end) - 1, MaxOffsetNumber);
		scan = table_beginscan_tidrange(rel, snap, &first, &last);
		slot = table_slot_create(rel, NULL);
		locked = table_slot_create(rel, NULL);
		for (;;)
		{
			ItemPointerData tid;
			bool		should_free;
			HeapTuple	tuple;
			bool		before;
			TM_Result	res;
			TM_FailureData tmfd;

			if (!table_scan_getnextslot_tidrange(scan, ForwardScanDirection, slot))
				break;			/* the end: done */
			tid = slot->tts_tid;
			if (ItemPointerCompare(&tid, &bf.after) <= 0)
				continue;
			CHECK_FOR_INTERRUPTS();
			tuple = ExecFetchSlotHeapTuple(slot, false, &should_free);
			before = written_before_track(&bf, tuple->t_data);
			if (should_free)
				heap_freetuple(tuple);
			if (before)
			{
				/* Wait for a writer only while holding no other row. */
				res = table_tuple_lock(rel, &tid, snap, locked, GetCurrentCommandId(false),
									   LockTupleShare, stamped == 0 ? LockWaitBlock : LockWaitSkip,
									   0, &tmfd);
				if (res == TM_WouldBlock)
				{
					done = false;	/* the next batch starts with it */
					break;
				}
				if (res == TM_Ok)
				{
					old = MemoryContextSwitchTo(rowcxt);
					backfill_stamp(cat, rel, layout, locked);
					MemoryContextSwitchTo(old);
					MemoryContextReset(rowcxt);
					stamped++;
				}
				else if (res != TM_Updated && res != TM_Deleted)
					elog(ERROR, "replstamp: unexpected result %d locking a row of %s",
						 (int) res, bf.relation);
				/* Updated or deleted since: the writer's change is stamped. */
			}
			bf.after = tid;
			if (stamped >= backfill_batch_size ||
				++looked >= (int64) backfill_batch_size * BACKFILL_SCAN_FACTOR)
			{
				done = false;
				break;
			}
		}
		ExecDropSingleTupleTableSlot(locked);
		ExecDropSingleTupleTableSlot(slot);
		table_endscan(scan);
		UnregisterSnapshot(snap);
		MemoryContextDelete(rowcxt);
	}

	/*
	 * The progress, unless the table was untracked or tracked anew since
	 * this batch read it: then its stamps are rolled back, and the next
	 * batch reads what is to do now.
	 */
	values[0] = ObjectIdGetDatum(relid);
	values[1] = CStringGetTextDatum(done ? "done" : "running");
	values[2] = Int64GetDatum(stamped);
	values[3] = PointerGetDatum(&bf.after);
	values[4] = CStringGetTextDatum(bf.snapshot);
	values[5] = PointerGetDatum(&from);
	replstamp_become_owner(&ctx);
	SPI_connect();
	replstamp_spi_exec("UPDATE replstamp.tracked SET backfill = $2, "
			           "backfill_rows = backfill_rows OPERATOR(pg_catalog.+) $3, backfill_after = $4, "
			           "backfill_error = NULL "
			           "WHERE relid OPERATOR(pg_catalog.=) $1 AND state = 'tracked' "
			           "AND backfill IN ('pending', 'running') "
			           "AND backfill_snapshot::pg_catalog.text OPERATOR(pg_catalog.=) $5 "
			           "AND coalesce(backfill_after, '(0,0)') OPERATOR(pg_catalog.=) $6 "
			           "RETURNING backfill_rows",
			           6, types, values, NULL, SPI_OK_UPDATE_RETURNING);
	step = SPI_processed == 0 ? BACKFILL_STALE : done ? BACKFILL_DONE : BACKFILL_MORE;
	if (step == BACKFILL_DONE)
	{
		bool		isnull;

		ereport(LOG,
				(errmsg("replstamp: backfill of table %s done, " INT64_FORMAT " rows stamped",
						bf.relation,
						DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
													1, &isnull)))));
	}
	SPI_finish();
	replstamp_restore_user(&ctx);
	relation_close(rel, NoLock);
	return step;
}

/* Record why the table's backfill failed. */
static void
backfill_record_error(Oid relid, const char *message)
{
	ReplstampOwnerContext ctx;
	Oid			types[2] = {OIDOID, TEXTOID};
	Datum		values[2] = {ObjectIdGetDatum(relid), CStringGetTextDatum(message)};

	replstamp_become_owner(&ctx);
	SPI_connect();
	replstamp_spi_exec("UPDATE replstamp.tracked SET backfill_error = $2 "
			           "WHERE relid OPERATOR(pg_catalog.=) $1 AND state = 'tracked'",
			           2, types, values, NULL, SPI_OK_UPDATE);
	SPI_finish();
	replstamp_restore_user(&ctx);
}

/*
 * Backfill one table, batch after batch, until it is done.  An error ends
 * it: it is logged and recorded in replstamp.tracked (backfill_error), and
 * the table is tried again by the next worker (the launcher's next
 * maintenance round, the next server start).
 */
static void
backfill_table(Oid relid)
{
	MemoryContext cxt = CurrentMemoryContext;

	for (;;)
	{
		volatile BackfillStep step = BACKFILL_MORE;
		volatile bool failed = false;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		PG_TRY();
		{
			worker_begin_xact();
			step = backfill_batch(replstamp_catalog_v11("the backfill"), relid);
			if (step == BACKFILL_STALE)
			{
				PopActiveSnapshot();
				AbortCurrentTransaction();
			}
			else
				worker_commit_xact();
		}
		PG_CATCH();
		{
			ErrorData  *edata;

			MemoryContextSwitchTo(cxt);
			edata = CopyErrorData();
			if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED)
				PG_RE_THROW();
			EmitErrorReport();
			FlushErrorState();
			AbortCurrentTransaction();
			worker_begin_xact();
			backfill_record_error(relid, errors_public_text(edata, NULL));
			worker_commit_xact();
			FreeErrorData(edata);
			failed = true;
		}
		PG_END_TRY();
		if (failed || step == BACKFILL_DONE)
			return;
		if (backfill_delay > 0)
		{
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 backfill_delay, PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
			CHECK_FOR_INTERRUPTS();
		}
	}
}

/*
 * The next table with a backfill to do that no other worker has, locked
 * for this one (a session lock, see above); InvalidOid if none.  skip: the
 * tables this worker found taken, or has backfilled or failed to.
 */
static Oid
backfill_claim(List **skip)
{
	ReplstampOwnerContext ctx;
	const ReplstampCatalog *cat;
	Oid			claimed = InvalidOid;
	Oid		   *relids;
	int			n;
	MemoryContext caller = CurrentMemoryContext;

	worker_begin_xact();
	cat = replstamp_catalog(true);
	if (cat == NULL || !cat->v11)
	{
		worker_commit_xact();
		return InvalidOid;
	}
	replstamp_become_owner(&ctx);
	SPI_connect();
	replstamp_spi_exec("SELECT relid FROM replstamp.tracked WHERE state = 'tracked' "
			           "AND backfill IN ('pending', 'running') AND relid IS NOT NULL ORDER BY since",
			           0, NULL, NULL, NULL, SPI_OK_SELECT);
	n = SPI_processed;
	relids = MemoryContextAlloc(caller, sizeof(Oid) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		bool		isnull;

		relids[i] = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc,
												   1, &isnull));
	}
	SPI_finish();
	replstamp_restore_user(&ctx);

	/* A session lock: it outlives this transaction. */
	for (int i = 0; i < n && !OidIsValid(claimed); i++)
	{
		LOCKTAG		tag;

		if (list_member_oid(*skip, relids[i]))
			continue;
		SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, relids[i], 0, BACKFILL_LOCK_CLASS);
		if (LockAcquire(&tag, ExclusiveLock, true, true) == LOCKACQUIRE_NOT_AVAIL)
		{
			MemoryContext old = MemoryContextSwitchTo(caller);

			*skip = lappend_oid(*skip, relids[i]);
			MemoryContextSwitchTo(old);
		}
		else
			claimed = relids[i];
	}
	worker_commit_xact();
	pfree(relids);
	return claimed;
}

/*
 * Stamp once, as INSERTs, the rows of every table tracked with backfill
 * that existed before track(), in batches of their own transactions;
 * resumes where a previous run stopped.  For background workers, outside
 * any transaction.
 */
void
backfill_run(void)
{
	List	   *skip = NIL;
	Oid			relid;

	while (OidIsValid(relid = backfill_claim(&skip)))
	{
		LOCKTAG		tag;

		/*
		 * Done or failed: not again in this run.  Tracked anew meanwhile, it
		 * was done in its new form (each batch reads what is to do).
		 */
		backfill_table(relid);
		skip = lappend_oid(skip, relid);
		SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, relid, 0, BACKFILL_LOCK_CLASS);
		LockRelease(&tag, ExclusiveLock, true);
	}
	list_free(skip);
	pgstat_report_activity(STATE_IDLE, NULL);
}

/* ---------------------------------------------------------------------
 * replstamp.restore_version()
 * ---------------------------------------------------------------------
 */

/*
 * The copy of a version that lost which the latest conflict naming it
 * keeps (a change pruned from the log since), as a change: relation, key
 * of the row, operation and image.  In the caller's memory.
 */
static bool
conflict_copy(const pg_uuid_t *id, int64 serial, Change *out)
{
	MemoryContext caller = CurrentMemoryContext;
	ReplstampOwnerContext ctx;
	Oid			types[2] = {UUIDOID, INT8OID};
	Datum		values[2] = {UUIDPGetDatum(id), Int64GetDatum(serial)};
	bool		found;

	replstamp_become_owner(&ctx);
	SPI_connect();
	replstamp_spi_exec("SELECT relation, pk, loser_op, loser_image, loser_changed_at "
			           "FROM replstamp.conflict_log "
			           "WHERE loser_replica_id OPERATOR(pg_catalog.=) $1 "
			           "AND loser_serial OPERATOR(pg_catalog.=) $2 AND loser_op IS NOT NULL "
			           "ORDER BY id DESC LIMIT 1",
			           2, types, values, NULL, SPI_OK_SELECT);
	found = SPI_processed == 1;
	if (found)
	{
		HeapTuple	t = SPI_tuptable->vals[0];
		TupleDesc	d = SPI_tuptable->tupdesc;
		MemoryContext spi = MemoryContextSwitchTo(caller);
		bool		isnull;
		Datum		image;

		memset(out, 0, sizeof(Change));
		out->replica_id = *id;
		out->serial = serial;
		out->relation = DatumGetTextPCopy(SPI_getbinval(t, d, 1, &isnull));
		out->pk = DatumGetJsonbPCopy(SPI_getbinval(t, d, 2, &isnull));
		out->op = TextDatumGetCString(SPI_getbinval(t, d, 3, &isnull))[0];
		image = SPI_getbinval(t, d, 4, &isnull);
		out->image = isnull ? NULL : DatumGetJsonbPCopy(image);
		out->changed_at = DatumGetTimestampTz(SPI_getbinval(t, d, 5, &isnull));
		MemoryContextSwitchTo(spi);
	}
	SPI_finish();
	replstamp_restore_user(&ctx);
	return found;
}

/*
 * replstamp.restore_version(replica_id, serial): make the version of a row
 * that change wrote (or its deletion) the current one again, as a new
 * change made here, by the caller, with the caller's privileges: peers
 * apply it like any other, and as the latest it wins everywhere.
 */
Datum
replstamp_restore_version(PG_FUNCTION_ARGS)
{
	pg_uuid_t  *id = PG_GETARG_UUID_P(0);
	int64		serial = PG_GETARG_INT64(1);
	const ReplstampCatalog *cat = replstamp_catalog_v11("replstamp.restore_version()");
	Change		c;
	List	   *names;
	Oid			relid;
	Relation	rel;
	RowLayout  *layout;
	TupleDesc	desc;
	char	   *qname;
	StringInfoData sql;
	Datum	   *values;
	bool	   *nulls;
	bool	   *present;
	Oid		   *types;
	Datum	   *params;
	char	   *pnulls;
	int			np = 0;
	int			nestlevel;

	if (!changelog_fetch(cat, id, serial, &c) && !conflict_copy(id, serial, &c))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("change %s/" INT64_FORMAT " is not held here", replstamp_uuid_text(id), serial),
				 errhint("Changes every node holds are pruned unless they are the latest of their row; replstamp.conflicts lists the versions that can be restored, for replstamp.conflict_retention.")));
	names = stringToQualifiedNameList(text_to_cstring(c.relation));
	relid = RangeVarGetRelid(makeRangeVarFromNameList(names), RowExclusiveLock, false);
	rel = table_open(relid, NoLock);
	layout = rowimage_layout(rel);
	desc = RelationGetDescr(rel);
	qname = layout->relname;
	if (!rowimage_key_matches(layout, c.pk))
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("the primary key of table %s is not the one of that change", qname)));

	nestlevel = NewGUCNestLevel();
	rowimage_enter_input_settings(false);
	values = palloc0(sizeof(Datum) * desc->natts);
	nulls = palloc0(sizeof(bool) * desc->natts);
	present = palloc0(sizeof(bool) * desc->natts);
	types = palloc(sizeof(Oid) * (desc->natts + INDEX_MAX_KEYS));
	params = palloc(sizeof(Datum) * (desc->natts + INDEX_MAX_KEYS));
	pnulls = palloc(desc->natts + INDEX_MAX_KEYS);
	initStringInfo(&sql);

	if (c.op == 'D')
	{
		rowimage_decode_key(layout, c.pk, values, nulls);
		appendStringInfo(&sql, "DELETE FROM %s WHERE ", qname);
		for (int k = 0; k < layout->npk; k++)
		{
			int			a = layout->pk[k].attnum - 1;

			appendStringInfo(&sql, "%s%s OPERATOR(pg_catalog.=) $%d", k ? " AND " : "",
							 quote_identifier(layout->pk[k].name), np + 1);
			types[np] = TupleDescAttr(desc, a)->atttypid;
			params[np] = values[a];
			pnulls[np++] = ' ';
		}
	}
	else
	{
		StringInfoData cols,
					args,
					sets,
					keys;

		bool		override = false;

		(void) rowimage_decode(layout, c.image, values, nulls, present, NULL);
		initStringInfo(&cols);
		initStringInfo(&args);
		initStringInfo(&sets);
		initStringInfo(&keys);
		for (int a = 0; a < desc->natts; a++)
		{
			Form_pg_attribute att = TupleDescAttr(desc, a);
			const char *col;

			/* A generated column is computed, never written. */
			if (!present[a] || att->attgenerated)
				continue;
			col = quote_identifier(NameStr(att->attname));
			appendStringInfo(&cols, "%s%s", np ? ", " : "", col);
			appendStringInfo(&args, "%s$%d", np ? ", " : "", np + 1);

			/*
			 * GENERATED ALWAYS AS IDENTITY: the INSERT takes the version's
			 * value with OVERRIDING SYSTEM VALUE; an UPDATE can set such a
			 * column only to DEFAULT, so the row keeps its value (a key
			 * column's is the version's anyway: ON CONFLICT matched it).
			 */
			if (att->attidentity == ATTRIBUTE_IDENTITY_ALWAYS)
				override = true;
			else
				appendStringInfo(&sets, "%s%s = EXCLUDED.%s", sets.len ? ", " : "", col, col);
			types[np] = att->atttypid;
			params[np] = values[a];
			pnulls[np++] = nulls[a] ? 'n' : ' ';
		}
		for (int k = 0; k < layout->npk; k++)
			appendStringInfo(&keys, "%s%s", k ? ", " : "", quote_identifier(layout->pk[k].name));
		appendStringInfo(&sql, "INSERT INTO %s (%s) %sVALUES (%s) ON CONFLICT (%s) ",
						 qname, cols.data, override ? "OVERRIDING SYSTEM VALUE " : "",
						 args.data, keys.data);
		if (sets.len > 0)
			appendStringInfo(&sql, "DO UPDATE SET %s", sets.data);
		else
			appendStringInfoString(&sql, "DO NOTHING");
	}
	table_close(rel, NoLock);

	/* As the caller, with the caller's privileges: the stamp trigger stamps it. */
	SPI_connect();
	if (SPI_execute_with_args(sql.data, np, types, params, pnulls, false, 0) < 0)
		elog(ERROR, "replstamp: could not restore the version");
	if (SPI_processed == 0)
		ereport(NOTICE,
				(errmsg("the row of that change is not here, nothing to delete")));
	SPI_finish();
	AtEOXact_GUC(false, nestlevel);
	PG_RETURN_VOID();
}

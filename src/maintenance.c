/*-------------------------------------------------------------------------
 *
 * maintenance.c
 *		Background upkeep of a database with replstamp:
 *		- pruning (replstamp.prune(), and the launcher every
 *		  replstamp.prune_interval): a change every puller holds is removed,
 *		  unless it is the latest change of its row (last writer wins
 *		  compares against it, and a late joiner or a node restored from an
 *		  older backup converges from it) or a conflict still names it; a
 *		  tombstone (the latest change of a deleted row) is removed once it
 *		  is older than replstamp.tombstone_lifetime, and the highest serial
 *		  dropped that way per replica ID is recorded, so that a node which
 *		  holds less is refused rather than allowed to bring deleted rows
 *		  back (serve.c, sync.c); retired replica IDs with nothing left leave
 *		  the vector; pullers not seen for a tombstone lifetime are
 *		  forgotten;
 *		- the lowest uncommitted serial, recorded at every sync and round,
 *		  which a copy without the backup mark starts from (identity.c);
 *		- backfill of tables tracked with backfill => true;
 *		- replstamp.restore_version().
 *
 * Pruning runs in batches, each a transaction of its own holding the
 * database's writer lock (rowversion.c) only for that batch, so that a
 * sync waits for one batch at most.  Pullers record what they hold at
 * every sync (serve.c); what a change log keeps for a puller is bounded by
 * what it lacks, as pg_replication_slots keep WAL (replstamp.pullers shows
 * it).
 *
 * Copyright (c) 2026, the replstamp authors
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "access/heapam.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "storage/itemptr.h"
#include "executor/tuptable.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/interrupt.h"
#include "storage/latch.h"
#include "utils/builtins.h"
#include "utils/regproc.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "catalog.h"
#include "changelog.h"
#include "identity.h"
#include "maintenance.h"
#include "rowimage.h"
#include "rowversion.h"
#include "serial.h"
#include "workers.h"

PG_FUNCTION_INFO_V1(replstamp_restore_version);

#define PRUNE_BATCH		2000

/* GUCs */
static int	tombstone_lifetime = 14 * 24 * 3600;	/* seconds */
static int	prune_interval = 60;	/* seconds */
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
	DefineCustomIntVariable("replstamp.prune_interval",
							"Seconds between automatic prunes of the change log.",
							"Zero means no automatic pruning: call replstamp.prune() yourself.",
							&prune_interval,
							60, 0, INT_MAX / 1000,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);
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

static void
spi_exec(const char *sql, int nargs, Oid *types, Datum *values, int expected)
{
	int			ret = SPI_execute_with_args(sql, nargs, types, values, NULL, false, 0);

	if (ret != expected)
		elog(ERROR, "replstamp: query failed (%s): %s", SPI_result_code_string(ret), sql);
}

static char *
lifetime_text(void)
{
	return psprintf("%d seconds", tombstone_lifetime);
}

/*
 * Record the lowest uncommitted serial of the current replica ID, if a
 * serial was taken since this process last did.  In a transaction.
 */
void
maintenance_mark_lus(void)
{
	static bool marked = false;
	static uint64 marked_activity = 0;
	const ReplstampCatalog *cat = replstamp_catalog(true);
	ReplstampOwnerContext ctx;
	Oid			types[2] = {UUIDOID, INT8OID};
	Datum		values[2];
	uint64		activity;
	int64		lus;

	if (cat == NULL || !cat->v11 || RecoveryInProgress())
		return;
	activity = serial_activity();
	if (marked && activity == marked_activity)
		return;
	lus = serial_lus(cat->serial_seq);
	values[0] = UUIDPGetDatum(&replstamp_node()->replica_id);
	values[1] = Int64GetDatum(lus);
	replstamp_become_owner(&ctx);
	SPI_connect();
	spi_exec("INSERT INTO replstamp.lus_mark (singleton, replica_id, lus, marked_at) "
			 "VALUES (true, $1, $2, pg_catalog.now()) ON CONFLICT (singleton) DO UPDATE "
			 "SET replica_id = EXCLUDED.replica_id, lus = EXCLUDED.lus, marked_at = EXCLUDED.marked_at",
			 2, types, values, SPI_OK_INSERT);
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
	HTAB	   *losers;			/* changes a conflict names: kept for restore_version() */
	RowVersionWriter *w;
	int64		removed;
	int			batch;			/* looked at in this batch */
	int64		last;
} PruneRun;

static void
batch_begin(void)
{
	worker_begin_xact();
	rowversion_lock();
}

static void
batch_end(void)
{
	worker_commit_xact();
	rowversion_unlock();
}

/* Is the change the latest of one of its rows, or named by a conflict? */
static bool
kept(PruneRun *p, Change *c)
{
	ChangeRow	rows[2];
	int			n;
	StampKey	key;

	memset(&key, 0, sizeof(key));
	key.id = c->replica_id;
	key.serial = c->serial;
	if (hash_search(p->losers, &key, HASH_FIND, NULL))
		return true;
	n = change_rows(c, rows);
	for (int i = 0; i < n; i++)
	{
		RowVersion	cur;

		rowversion_get(p->w, c->relation, &rows[i], &cur);
		if (cur.found && cur.v.serial == c->serial &&
			memcmp(cur.v.replica_id.data, c->replica_id.data, UUID_LEN) == 0)
			return true;
		/* The change a rolling ADD COLUMN will fill the row in from. */
		if (cur.found && cur.partial && cur.carry.serial == c->serial &&
			memcmp(cur.carry.replica_id.data, c->replica_id.data, UUID_LEN) == 0)
			return true;
	}
	return false;
}

static bool
walk_callback(Change *c, void *arg)
{
	PruneRun   *p = arg;

	p->last = c->serial;
	if (!kept(p, c))
	{
		changelog_delete_tid(p->cat, &c->tid);
		p->removed++;
	}
	return ++p->batch < PRUNE_BATCH;
}

/* Forget stale pullers, reconcile local changes, and decide what to walk. */
static void
prune_plan(PruneRun *p)
{
	ReplstampOwnerContext ctx;
	ReconcileState *rs = reconcile_begin(p->cxt);
	Oid			types[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(lifetime_text())};
	HASHCTL		ctl;

	p->w = rowversion_writer_begin(p->cat);
	reconcile(p->w, rs);
	reconcile_save(rs);
	rowversion_writer_end(p->w);
	p->w = NULL;

	replstamp_become_owner(&ctx);
	SPI_connect();
	/* A puller away longer than a tombstone lifetime is refused anyway. */
	spi_exec("DELETE FROM replstamp.puller WHERE last_pull_at OPERATOR(pg_catalog.<) "
			 "(pg_catalog.now() OPERATOR(pg_catalog.-) $1::pg_catalog.interval)",
			 1, types, values, SPI_OK_DELETE);
	spi_exec("DELETE FROM replstamp.conflict_log WHERE resolved_at OPERATOR(pg_catalog.<) "
			 "(pg_catalog.now() OPERATOR(pg_catalog.-) $1::pg_catalog.interval)",
			 1, types, values, SPI_OK_DELETE);

	/* Per replica ID: up to where every puller holds it. */
	spi_exec("SELECT v.replica_id, coalesce(pp.walked_upto, 0), "
			 "LEAST(v.serial, coalesce((SELECT pg_catalog.min(coalesce(pv.serial, 0)) "
			 "  FROM replstamp.puller u LEFT JOIN replstamp.puller_vector pv "
			 "  ON pv.puller OPERATOR(pg_catalog.=) u.replica_id "
			 "  AND pv.replica_id OPERATOR(pg_catalog.=) v.replica_id), v.serial)) "
			 "FROM replstamp.vector v LEFT JOIN replstamp.prune_progress pp "
			 "ON pp.replica_id OPERATOR(pg_catalog.=) v.replica_id",
			 0, NULL, NULL, SPI_OK_SELECT);
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

	ctl.keysize = sizeof(StampKey);
	ctl.entrysize = sizeof(StampKey);
	ctl.hcxt = p->cxt;
	p->losers = hash_create("replstamp conflict losers", 64, &ctl,
							HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	spi_exec("SELECT loser_replica_id, loser_serial FROM replstamp.conflict_log",
			 0, NULL, NULL, SPI_OK_SELECT);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		StampKey	key;

		memset(&key, 0, sizeof(key));
		memcpy(&key.id, DatumGetUUIDP(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc,
													1, &isnull)), sizeof(pg_uuid_t));
		key.serial = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull));
		(void) hash_search(p->losers, &key, HASH_ENTER, NULL);
	}
	SPI_finish();
	replstamp_restore_user(&ctx);
}

static void
save_walked(const pg_uuid_t *id, int64 walked)
{
	ReplstampOwnerContext ctx;
	Oid			types[2] = {UUIDOID, INT8OID};
	Datum		values[2] = {UUIDPGetDatum(id), Int64GetDatum(walked)};

	replstamp_become_owner(&ctx);
	SPI_connect();
	spi_exec("INSERT INTO replstamp.prune_progress (replica_id, walked_upto) VALUES ($1, $2) "
			 "ON CONFLICT (replica_id) DO UPDATE SET walked_upto = EXCLUDED.walked_upto",
			 2, types, values, SPI_OK_INSERT);
	SPI_finish();
	replstamp_restore_user(&ctx);
}

/* Walk every replica ID's new changes, in batches. */
static void
prune_walk(PruneRun *p)
{
	for (int i = 0; i < p->nitems; i++)
	{
		PruneItem  *it = &p->items[i];

		while (it->walked < it->upto)
		{
			CHECK_FOR_INTERRUPTS();
			batch_begin();
			p->w = rowversion_writer_begin(p->cat);
			p->batch = 0;
			p->last = it->upto;
			(void) changelog_scan(p->cat, &it->id, it->walked, it->upto, false, walk_callback, p);
			if (p->batch < PRUNE_BATCH)
				p->last = it->upto;	/* the scan ran out: the range is done */
			rowversion_writer_end(p->w);
			p->w = NULL;
			save_walked(&it->id, p->last);
			it->walked = p->last;
			batch_end();
		}
	}
}

static int64
upto_of(PruneRun *p, const pg_uuid_t *id)
{
	for (int i = 0; i < p->nitems; i++)
		if (memcmp(p->items[i].id.data, id->data, UUID_LEN) == 0)
			return p->items[i].upto;
	return 0;
}

/* Latest versions looked at before and superseded since. */
static void
prune_queue(PruneRun *p)
{
	for (;;)
	{
		ReplstampOwnerContext ctx;
		int			n,
					done = 0;
		StampKey   *keys;

		CHECK_FOR_INTERRUPTS();
		batch_begin();
		replstamp_become_owner(&ctx);
		SPI_connect();
		spi_exec("SELECT replica_id, serial FROM replstamp.prune_queue ORDER BY 1, 2 LIMIT "
				 CppAsString2(PRUNE_BATCH), 0, NULL, NULL, SPI_OK_SELECT);
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
		p->w = rowversion_writer_begin(p->cat);
		for (int i = 0; i < n; i++)
		{
			Change		c;
			Oid			types[2] = {UUIDOID, INT8OID};
			Datum		values[2] = {UUIDPGetDatum(&keys[i].id), Int64GetDatum(keys[i].serial)};

			if (keys[i].serial > upto_of(p, &keys[i].id))
				continue;		/* a puller still lacks it */
			if (changelog_fetch(p->cat, &keys[i].id, keys[i].serial, &c) && !kept(p, &c))
			{
				changelog_delete_tid(p->cat, &c.tid);
				p->removed++;
			}
			spi_exec("DELETE FROM replstamp.prune_queue WHERE replica_id OPERATOR(pg_catalog.=) $1 "
					 "AND serial OPERATOR(pg_catalog.=) $2", 2, types, values, SPI_OK_DELETE);
			done++;
		}
		rowversion_writer_end(p->w);
		p->w = NULL;
		SPI_finish();
		replstamp_restore_user(&ctx);
		batch_end();
		if (n < PRUNE_BATCH || done == 0)
			break;
	}
}

/* Tombstones older than the lifetime. */
static void
prune_tombstones(PruneRun *p)
{
	for (;;)
	{
		ReplstampOwnerContext ctx;
		Oid			types[1] = {TEXTOID};
		Datum		values[1] = {CStringGetTextDatum(lifetime_text())};
		int			n;
		StampKey   *keys;

		CHECK_FOR_INTERRUPTS();
		batch_begin();
		replstamp_become_owner(&ctx);
		SPI_connect();
		spi_exec("DELETE FROM replstamp.row_version WHERE ctid OPERATOR(pg_catalog.=) ANY (ARRAY("
				 "SELECT ctid FROM replstamp.row_version WHERE deleted "
				 "AND changed_at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) $1::pg_catalog.interval) "
				 "LIMIT " CppAsString2(PRUNE_BATCH) ")) RETURNING replica_id, serial",
				 1, types, values, SPI_OK_DELETE_RETURNING);
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
			Oid			pt[2] = {UUIDOID, INT8OID};
			Datum		pv[2] = {UUIDPGetDatum(&keys[i].id), Int64GetDatum(keys[i].serial)};

			if (changelog_fetch(p->cat, &keys[i].id, keys[i].serial, &c) && !kept(p, &c))
			{
				changelog_delete_tid(p->cat, &c.tid);
				p->removed++;
			}
			/* A node holding less of this ID could bring the row back. */
			spi_exec("INSERT INTO replstamp.purged (replica_id, serial) VALUES ($1, $2) "
					 "ON CONFLICT (replica_id) DO UPDATE SET serial = "
					 "GREATEST(replstamp.purged.serial, EXCLUDED.serial)",
					 2, pt, pv, SPI_OK_INSERT);
		}
		rowversion_writer_end(p->w);
		p->w = NULL;
		SPI_finish();
		replstamp_restore_user(&ctx);
		batch_end();
		if (n < PRUNE_BATCH)
			break;
	}
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
	spi_exec(psprintf("WITH gone AS (DELETE FROM replstamp.vector_state v WHERE v.retired "
					  "AND NOT EXISTS (SELECT 1 FROM replstamp.replica_history h "
					  "  WHERE h.replica_id OPERATOR(pg_catalog.=) v.replica_id) AND %s "
					  "RETURNING v.replica_id) "
					  "DELETE FROM replstamp.epoch e USING gone WHERE e.replica_id OPERATOR(pg_catalog.=) gone.replica_id "
					  "AND NOT e.dead",
					  psprintf(held_everywhere, "v.replica_id", "v.replica_id", "v.serial")),
			 0, NULL, NULL, SPI_OK_DELETE);
	/* IDs this database retired. */
	spi_exec(psprintf("WITH gone AS (UPDATE replstamp.replica_history h SET in_vector = false "
					  "WHERE h.in_vector AND h.retired_at IS NOT NULL AND %s RETURNING h.replica_id) "
					  "DELETE FROM replstamp.vector_state v USING gone "
					  "WHERE v.replica_id OPERATOR(pg_catalog.=) gone.replica_id",
					  psprintf(held_everywhere, "h.replica_id", "h.replica_id",
							   "coalesce((SELECT v2.serial FROM replstamp.vector_state v2 "
							   "WHERE v2.replica_id OPERATOR(pg_catalog.=) h.replica_id), "
							   "replstamp.lowest_uncommitted_serial() OPERATOR(pg_catalog.-) 1)")),
			 0, NULL, NULL, SPI_OK_DELETE);
	spi_exec("DELETE FROM replstamp.puller_vector pv WHERE NOT EXISTS (SELECT 1 FROM replstamp.vector v "
			 "WHERE v.replica_id OPERATOR(pg_catalog.=) pv.replica_id)", 0, NULL, NULL, SPI_OK_DELETE);
	spi_exec("DELETE FROM replstamp.prune_progress pp WHERE NOT EXISTS (SELECT 1 FROM replstamp.vector v "
			 "WHERE v.replica_id OPERATOR(pg_catalog.=) pp.replica_id)", 0, NULL, NULL, SPI_OK_DELETE);
	SPI_finish();
	replstamp_restore_user(&ctx);
	batch_end();
}

/*
 * Tables dropped or untracked here: their changes leave the log (peers
 * that still track them keep theirs; a node that never had them is not
 * bothered by them).  Once per table.
 */
static void
prune_dropped_tables(PruneRun *p)
{
	ReplstampOwnerContext ctx;

	batch_begin();
	replstamp_become_owner(&ctx);
	SPI_connect();
	spi_exec("WITH gone AS (UPDATE replstamp.tracked SET log_purged = true "
			 "  WHERE state OPERATOR(pg_catalog.<>) 'tracked' AND NOT log_purged RETURNING relation), "
			 "rv AS (DELETE FROM replstamp.row_version v USING gone "
			 "  WHERE v.relation OPERATOR(pg_catalog.=) gone.relation) "
			 "DELETE FROM replstamp.changes c USING gone WHERE c.relation OPERATOR(pg_catalog.=) gone.relation",
			 0, NULL, NULL, SPI_OK_DELETE);
	p->removed += SPI_processed;
	SPI_finish();
	replstamp_restore_user(&ctx);
	batch_end();
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
	int64		removed;

	p->cxt = cxt;
	pgstat_report_activity(STATE_RUNNING, "replstamp: pruning the change log");
	batch_begin();
	p->cat = replstamp_catalog_v11("replstamp.prune()");
	prune_plan(p);
	batch_end();
	prune_dropped_tables(p);
	prune_walk(p);
	prune_queue(p);
	prune_tombstones(p);
	prune_retired(p);
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
 * ---------------------------------------------------------------------
 */

/*
 * Start a worker that backfills the current database's pending tables, once
 * the current transaction commits (track() with backfill).
 */
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

/* Stamp one batch of the table's rows; returns how many, -1 when done. */
static int
backfill_batch(const ReplstampCatalog *cat, Oid relid, ItemPointer after)
{
	Relation	rel = try_relation_open(relid, AccessShareLock);
	char	   *qname;
	Oid			types[1] = {TIDOID};
	Datum		values[1] = {PointerGetDatum(after)};
	int			n;
	ItemPointerData *tids;
	RowLayout  *layout;
	TupleTableSlot *slot;
	Snapshot	snap;
	MemoryContext caller = CurrentMemoryContext;

	if (rel == NULL)
		return -1;
	qname = quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
									   RelationGetRelationName(rel));
	/* The rows, locked against updates until this batch's stamps commit. */
	SPI_connect();
	spi_exec(psprintf("SELECT ctid FROM %s WHERE ctid OPERATOR(pg_catalog.>) $1 ORDER BY ctid LIMIT %d "
					  "FOR SHARE", qname, backfill_batch_size),
			 1, types, values, SPI_OK_SELECT);
	n = SPI_processed;
	/* Outlives SPI_finish(). */
	tids = MemoryContextAlloc(caller, sizeof(ItemPointerData) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		bool		isnull;

		tids[i] = *(ItemPointer) DatumGetPointer(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc,
													 1, &isnull));
	}
	SPI_finish();

	identity_ensure_verified();
	layout = rowimage_layout(rel);
	slot = table_slot_create(rel, NULL);
	snap = RegisterSnapshot(GetLatestSnapshot());
	for (int i = 0; i < n; i++)
	{
		Change		c;
		bool		should_free;
		HeapTuple	tuple;

		if (!table_tuple_fetch_row_version(rel, &tids[i], snap, slot))
			continue;			/* gone meanwhile: its DELETE is stamped */
		tuple = ExecFetchSlotHeapTuple(slot, false, &should_free);
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
	UnregisterSnapshot(snap);
	ExecDropSingleTupleTableSlot(slot);
	if (n > 0)
		*after = tids[n - 1];
	relation_close(rel, AccessShareLock);
	return n < backfill_batch_size ? (n == 0 ? -1 : -1 - n) : n;
}

/*
 * Stamp once, as INSERTs, the existing rows of every table tracked with
 * backfill, in batches of its own transactions; resumes where it stopped.
 * For background workers, outside any transaction.
 */
void
backfill_run(void)
{
	MemoryContext caller = CurrentMemoryContext;

	for (;;)
	{
		ReplstampOwnerContext ctx;
		const ReplstampCatalog *cat;
		char	   *relation = NULL;
		Oid			relid = InvalidOid;
		ItemPointerData after;
		bool		isnull;
		int			n;
		Oid			types[4] = {TEXTOID, INT8OID, TIDOID, TEXTOID};
		Datum		values[4];

		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		worker_begin_xact();
		cat = replstamp_catalog(true);
		if (cat == NULL || !cat->v11)
		{
			worker_commit_xact();
			return;
		}
		replstamp_become_owner(&ctx);
		SPI_connect();
		spi_exec("SELECT relation, relid, coalesce(backfill_after, '(0,0)') FROM replstamp.tracked "
				 "WHERE backfill IN ('pending', 'running') AND state = 'tracked' ORDER BY since LIMIT 1",
				 0, NULL, NULL, SPI_OK_SELECT);
		if (SPI_processed > 0)
		{
			/* Outlives SPI_finish(). */
			relation = MemoryContextStrdup(caller, SPI_getvalue(SPI_tuptable->vals[0],
																SPI_tuptable->tupdesc, 1));
			relid = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
			after = *(ItemPointer) DatumGetPointer(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull));
		}
		SPI_finish();
		replstamp_restore_user(&ctx);
		if (relation == NULL)
		{
			worker_commit_xact();
			return;
		}
		pgstat_report_activity(STATE_RUNNING, psprintf("replstamp: backfilling %s", relation));
		n = backfill_batch(cat, relid, &after);
		values[0] = CStringGetTextDatum(relation);
		values[1] = Int64GetDatum(n >= 0 ? n : -1 - n);
		values[2] = PointerGetDatum(&after);
		values[3] = CStringGetTextDatum(n >= 0 ? "running" : "done");
		replstamp_become_owner(&ctx);
		SPI_connect();
		spi_exec("UPDATE replstamp.tracked SET backfill = $4, "
				 "backfill_rows = backfill_rows OPERATOR(pg_catalog.+) $2, backfill_after = $3 "
				 "WHERE relation OPERATOR(pg_catalog.=) $1", 4, types, values, SPI_OK_UPDATE);
		if (SPI_processed != 1)
			elog(ERROR, "replstamp: could not record the progress of the backfill of %s", relation);
		SPI_finish();
		replstamp_restore_user(&ctx);
		worker_commit_xact();
		CHECK_FOR_INTERRUPTS();
		if (n >= 0 && backfill_delay > 0)
		{
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 backfill_delay, PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
		}
	}
}

/* ---------------------------------------------------------------------
 * replstamp.restore_version()
 * ---------------------------------------------------------------------
 */

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

	if (!changelog_fetch(cat, id, serial, &c))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("change %s/" INT64_FORMAT " is not held here", replstamp_uuid_text(id), serial),
				 errhint("Changes every node holds are pruned unless they are the latest of their row or a conflict names them; replstamp.conflicts lists what can be restored.")));
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

		(void) rowimage_decode(layout, c.image, values, nulls, present, NULL);
		initStringInfo(&cols);
		initStringInfo(&args);
		initStringInfo(&sets);
		initStringInfo(&keys);
		for (int a = 0; a < desc->natts; a++)
		{
			const char *col;

			if (!present[a])
				continue;
			col = quote_identifier(NameStr(TupleDescAttr(desc, a)->attname));
			appendStringInfo(&cols, "%s%s", np ? ", " : "", col);
			appendStringInfo(&args, "%s$%d", np ? ", " : "", np + 1);
			appendStringInfo(&sets, "%s%s = EXCLUDED.%s", np ? ", " : "", col, col);
			types[np] = TupleDescAttr(desc, a)->atttypid;
			params[np] = values[a];
			pnulls[np++] = nulls[a] ? 'n' : ' ';
		}
		for (int k = 0; k < layout->npk; k++)
			appendStringInfo(&keys, "%s%s", k ? ", " : "", quote_identifier(layout->pk[k].name));
		appendStringInfo(&sql, "INSERT INTO %s (%s) VALUES (%s) ON CONFLICT (%s) DO UPDATE SET %s",
						 qname, cols.data, args.data, keys.data, sets.data);
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

/*-------------------------------------------------------------------------
 *
 * backfill.c
 *		Backfill of tables tracked with backfill => true: the rows a table
 *		held when it was tracked are stamped once, as INSERTs, in batches,
 *		by a background worker, so that peers get them.
 *
 * How a batch decides which rows to stamp, how it avoids deadlocks and
 * what a rewrite of the table does are told below, before the code.
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
#include "storage/procarray.h"
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

#include "backfill.h"
#include "catalog.h"
#include "changelog.h"
#include "compat.h"
#include "dbaccess.h"
#include "errors.h"
#include "identity.h"
#include "latest.h"
#include "rowimage.h"
#include "rowversion.h"
#include "serial.h"
#include "workers.h"

/* GUCs */
static int	backfill_batch_size = 1000; /* rows */
static int	backfill_delay = 0; /* milliseconds */

/*
 * GUCs.  Called from _PG_init.
 */
void
backfill_init(void)
{
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
 * row, and its row of replstamp.tracked_table is only written at its end), so
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
	BACKFILL_STALE				/* tracked anew meanwhile: roll this batch
								 * back */
} BackfillStep;

/* A table's backfill, as replstamp.tracked_table records it. */
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
		if (!worker_start("replstamp_maintenance_main", "replstamp backfill",
						  MyDatabaseId, InvalidOid, NULL, 0, NULL))
			ereport(WARNING,
					(errmsg("replstamp: could not start the backfill worker"),
					 errhint("The launcher starts it at its next round; raise max_worker_processes.")));
	}
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT)
		backfill_requested = false;
}

void
backfill_request(void)
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
	int			size;
	TransactionId xmax = snap->xmax;
	TransactionId own = GetTopTransactionIdIfAny();
	StringInfoData buf;

	size = snap->xcnt + Max(snap->subxcnt, 0) + 1;
	running = palloc(sizeof(FullTransactionId) * size);
	for (int i = 0; i < snap->xcnt; i++)
		running[n++] = widen_xid(next, snap->xip[i]);
	/* Subtransactions from xmax on count as in progress anyway. */
	for (int i = 0; i < snap->subxcnt; i++)
		if (TransactionIdPrecedes(snap->subxip[i], snap->xmax))
			running[n++] = widen_xid(next, snap->subxip[i]);

	/*
	 * What this transaction wrote before track() installed the trigger (the
	 * rewrite of track(..., row_id => true), or the caller's own writes) has
	 * no stamp either: the snapshot takes this transaction as ended, so its
	 * xmax moves past our xid, naming those still in progress below it.  No
	 * transaction between wrote the table: our lock waited for its writers.
	 */
	if (TransactionIdIsNormal(own) && !TransactionIdPrecedes(own, xmax))
	{
		TransactionId x = xmax;

		while (TransactionIdPrecedes(x, own))
		{
			if (TransactionIdIsInProgress(x))
			{
				if (n == size)
				{
					size *= 2;
					running = repalloc(running, sizeof(FullTransactionId) * size);
				}
				running[n++] = widen_xid(next, x);
			}
			TransactionIdAdvance(x);
		}
		xmax = own;
		TransactionIdAdvance(xmax);
	}
	qsort(running, n, sizeof(FullTransactionId), fxid_cmp);

	initStringInfo(&buf);
	appendStringInfo(&buf, UINT64_FORMAT ":" UINT64_FORMAT ":",
					 U64FromFullTransactionId(widen_xid(next, snap->xmin)),
					 U64FromFullTransactionId(widen_xid(next, xmax)));
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
 * Read the table's backfill from replstamp.tracked_table.  False if it has
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

	dbaccess_become_owner(&ctx);
	SPI_connect();
	dbaccess_spi_exec(catalog_sql("SELECT relation, coalesce(backfill_after, '(0,0)'), backfill_end, backfill_filenode, "
								  "pg_catalog.pg_snapshot_xmax(backfill_snapshot), "
								  "ARRAY(SELECT pg_catalog.pg_snapshot_xip(backfill_snapshot)), "
								  "backfill_snapshot::pg_catalog.text "
								  "FROM replstamp.tracked_table WHERE relid OPERATOR(pg_catalog.=) $1 AND state = 'tracked' "
								  "AND backfill IN ('pending', 'running')"),
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
	dbaccess_restore_user(&ctx);
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
	dbaccess_become_owner(&ctx);
	SPI_connect();
	dbaccess_spi_exec(catalog_sql("UPDATE replstamp.tracked_table SET backfill_after = NULL, "
								  "backfill_snapshot = $2::pg_catalog.pg_snapshot, backfill_end = $3::pg_catalog.tid, "
								  "backfill_filenode = $4 WHERE relid OPERATOR(pg_catalog.=) $1 AND state = 'tracked'"),
					  4, types, values, NULL, SPI_OK_UPDATE);
	SPI_finish();
	dbaccess_restore_user(&ctx);
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
	c.replica_id = catalog_node()->replica_id;
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
				 errmsg("cannot backfill table %s because it has no row key", bf.relation),
				 errdetail("replstamp identifies rows by their primary key or, without one, by the unique index of the table's replica identity."),
				 errhint("Give the table back the key it was tracked with (replstamp.problems names it); its backfill goes on at the next maintenance round or server start.")));

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
	 * The progress, unless the table was untracked or tracked anew since this
	 * batch read it: then its stamps are rolled back, and the next batch
	 * reads what is to do now.
	 */
	values[0] = ObjectIdGetDatum(relid);
	values[1] = CStringGetTextDatum(done ? "done" : "running");
	values[2] = Int64GetDatum(stamped);
	values[3] = PointerGetDatum(&bf.after);
	values[4] = CStringGetTextDatum(bf.snapshot);
	values[5] = PointerGetDatum(&from);
	dbaccess_become_owner(&ctx);
	SPI_connect();
	dbaccess_spi_exec(catalog_sql("UPDATE replstamp.tracked_table SET backfill = $2, "
								  "backfill_rows = backfill_rows OPERATOR(pg_catalog.+) $3, backfill_after = $4, "
								  "backfill_error = NULL "
								  "WHERE relid OPERATOR(pg_catalog.=) $1 AND state = 'tracked' "
								  "AND backfill IN ('pending', 'running') "
								  "AND backfill_snapshot::pg_catalog.text OPERATOR(pg_catalog.=) $5 "
								  "AND coalesce(backfill_after, '(0,0)') OPERATOR(pg_catalog.=) $6 "
								  "RETURNING backfill_rows"),
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
	dbaccess_restore_user(&ctx);
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

	dbaccess_become_owner(&ctx);
	SPI_connect();
	dbaccess_spi_exec(catalog_sql("UPDATE replstamp.tracked_table SET backfill_error = $2 "
								  "WHERE relid OPERATOR(pg_catalog.=) $1 AND state = 'tracked'"),
					  2, types, values, NULL, SPI_OK_UPDATE);
	SPI_finish();
	dbaccess_restore_user(&ctx);
}

/*
 * Backfill one table, batch after batch, until it is done.  An error ends
 * it: it is logged and recorded in replstamp.tracked_table (backfill_error), and
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
			step = backfill_batch(catalog_get_v11("replstamp backfill"), relid);
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
	cat = catalog_get(true);
	if (cat == NULL || !cat->v11)
	{
		worker_commit_xact();
		return InvalidOid;
	}
	dbaccess_become_owner(&ctx);
	SPI_connect();
	dbaccess_spi_exec(catalog_sql("SELECT relid FROM replstamp.tracked_table WHERE state = 'tracked' "
								  "AND backfill IN ('pending', 'running') AND relid IS NOT NULL ORDER BY since"),
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
	dbaccess_restore_user(&ctx);

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

/*-------------------------------------------------------------------------
 *
 * serial.c
 *		Hands out serials and keeps, per backend, the lowest serial its
 *		open transaction holds, in shared memory.
 *
 * Serials come from the sequence replstamp.serial_seq (CACHE 1): it is
 * WAL-logged ahead of use, so no serial is handed out twice in a database,
 * even across crashes.  Serials are taken in increasing order but commit in
 * any order; the lowest uncommitted serial (LUS) is the bound below which
 * every serial is final (committed or aborted), which is what replication
 * needs to advance a version vector safely.
 *
 * Concurrency contract (the shared array, shmem.h, has one slot per
 * backend, indexed by replstamp_my_proc_index(), compat.h):
 *	- a slot's dboid and lowest are written only by the backend owning it,
 *	  with atomic 64-bit stores; anybody may read them without a lock;
 *	- before a transaction takes its first serial it publishes a lower bound
 *	  of that serial (this backend's last serial + 1, or the sequence's
 *	  position), then calls nextval, then raises the slot to the serial it
 *	  got.  A reader reads the sequence's position first (under the
 *	  sequence's buffer lock, which orders it after every completed
 *	  nextval) and then scans the slots, so it sees every serial handed out
 *	  before its read either in a slot or as final;
 *	- the slot is cleared by the transaction callback at commit, which runs
 *	  after the commit is visible to others, or at abort.
 *
 * A prepared transaction would hold its serials past the end of its
 * backend's transaction, so PREPARE TRANSACTION is refused once a serial
 * was taken.
 *
 * The stamp time of a change comes from a hybrid clock: the wall clock,
 * but always later than every stamp time handed out or seen here before
 * (clock_floor, raised by compare-and-swap).  Stamps of one node are
 * therefore strictly increasing, and a change made after a replicated
 * change was applied is always the later one, whatever the clocks of the
 * nodes: last writer wins orders them the same everywhere.
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "commands/sequence.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/ipc.h"
#include "storage/proc.h"
#include "storage/sinvaladt.h"
#include "utils/fmgrprotos.h"
#include "utils/guc.h"
#include "utils/timestamp.h"

#include "catalog.h"
#include "compat.h"
#include "errors.h"
#include "serial.h"
#include "shmem.h"

PG_FUNCTION_INFO_V1(replstamp_lowest_uncommitted_serial);
PG_FUNCTION_INFO_V1(replstamp_next_serial);
PG_FUNCTION_INFO_V1(replstamp_lus_holder);

/* GUC: testing aid, moves this node's clock (milliseconds). */
static int	debug_clock_offset = 0;

/* Backend-local state */
static SerialSlot *my_slot = NULL;
static bool xact_holds_serial = false;
static int64 last_serial_taken = 0; /* by this backend, in this database */
static bool callbacks_registered = false;

/*
 * GUCs.  Called from _PG_init.
 */
void
serial_init(void)
{
#ifdef REPLSTAMP_TESTING
	DefineCustomIntVariable("replstamp.debug_clock_offset",
							"Testing aid: this node's stamp clock runs this far ahead (or behind).",
							"So that a test can show last writer wins with skewed clocks. Zero "
							"(the default) means the system clock.",
							&debug_clock_offset,
							0, -24 * 3600 * 1000, 24 * 3600 * 1000,
							PGC_SUSET,
							GUC_UNIT_MS | GUC_NOT_IN_SAMPLE,
							NULL, NULL, NULL);
#endif
}

static void
serial_release_slot(void)
{
	if (my_slot != NULL && xact_holds_serial)
		pg_atomic_write_u64(&my_slot->lowest, 0);
	xact_holds_serial = false;
}

static void
serial_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_PREPARE:
			if (xact_holds_serial)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot prepare a transaction that has stamped changes"),
						 errdetail("replstamp cannot tell peers that a prepared change is final before it commits."),
						 errhint("Commit the transaction directly instead of using PREPARE TRANSACTION.")));
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			serial_release_slot();
			break;
		default:
			break;
	}
}

static void
serial_shmem_exit(int code, Datum arg)
{
	serial_release_slot();
}

/*
 * Take the next serial of the current database for the current transaction.
 * The caller has checked that the extension is installed; seqoid is
 * replstamp.serial_seq.
 */
int64
serial_take(Oid seqoid)
{
	int64		serial;

	if (my_slot == NULL)
	{
		shmem_require();
		if (replstamp_my_proc_index() < 0 || replstamp_my_proc_index() >= replstamp_shared->nslots)
			elog(ERROR, "replstamp: backend index %d out of range", replstamp_my_proc_index());
		my_slot = &replstamp_shared->slots[replstamp_my_proc_index()];
		pg_atomic_write_u64(&my_slot->lowest, 0);
		pg_atomic_write_u32(&my_slot->dboid, MyDatabaseId);
	}
	/* This backend's own slot, the only one it writes. */
	Assert(my_slot == &replstamp_shared->slots[replstamp_my_proc_index()]);
	if (!callbacks_registered)
	{
		RegisterXactCallback(serial_xact_callback, NULL);
		before_shmem_exit(serial_shmem_exit, 0);
		callbacks_registered = true;
	}

	if (!xact_holds_serial)
	{
		/* Publish a lower bound of the serial we are about to take. */
		if (last_serial_taken == 0)
			last_serial_taken = serial_next(seqoid) - 1;
		pg_atomic_write_u64(&my_slot->lowest, (uint64) (last_serial_taken + 1));
		xact_holds_serial = true;
		pg_memory_barrier();

		serial = nextval_internal(seqoid, false);

		/* The first serial of a transaction is its lowest: make it exact. */
		pg_atomic_write_u64(&my_slot->lowest, (uint64) serial);
	}
	else
		serial = nextval_internal(seqoid, false);

	pg_atomic_fetch_add_u64(&replstamp_shared->serials_taken, 1);
	last_serial_taken = serial;
	return serial;
}

/*
 * A number that changes whenever a serial is taken, in any database: a
 * sync that sees it unchanged knows no local change was stamped meanwhile.
 */
uint64
serial_activity(void)
{
	shmem_require();
	return pg_atomic_read_u64(&replstamp_shared->serials_taken);
}

/*
 * The serial the next nextval of the sequence will return, at least.
 */
int64
serial_next(Oid seqoid)
{
	Datum		last;

	LOCAL_FCINFO(fcinfo, 1);

	/* pg_sequence_last_value() returns NULL until the first nextval. */
	InitFunctionCallInfoData(*fcinfo, NULL, 1, InvalidOid, NULL, NULL);
	fcinfo->args[0].value = ObjectIdGetDatum(seqoid);
	fcinfo->args[0].isnull = false;
	last = pg_sequence_last_value(fcinfo);
	if (fcinfo->isnull)
		return 1;
	return DatumGetInt64(last) + 1;
}

/*
 * Lowest serial of the current database held by a transaction in progress,
 * or the next serial if none is: every serial below it is final.  With
 * holder, also the index of the slot holding it (-1 if none).
 */
static int64
lus_internal(Oid seqoid, int *holder)
{
	int64		lus;
	Oid			dboid = MyDatabaseId;

	shmem_require();

	/* Read the sequence first: see the concurrency contract above. */
	lus = serial_next(seqoid);
	pg_memory_barrier();

	if (holder)
		*holder = -1;
	for (int i = 0; i < replstamp_shared->nslots; i++)
	{
		SerialSlot *slot = &replstamp_shared->slots[i];
		uint64		lowest;

		if (pg_atomic_read_u32(&slot->dboid) != dboid)
			continue;
		lowest = pg_atomic_read_u64(&slot->lowest);
		if (lowest != 0 && (int64) lowest < lus)
		{
			lus = (int64) lowest;
			if (holder)
				*holder = i;
		}
	}
	return lus;
}

int64
serial_lus(Oid seqoid)
{
	return lus_internal(seqoid, NULL);
}

/*
 * PID of the backend whose open transaction holds the lowest uncommitted
 * serial, or 0 if none does.
 */
int
serial_lus_holder(Oid seqoid)
{
	int			holder;
	PGPROC	   *proc;

	(void) lus_internal(seqoid, &holder);
	if (holder < 0)
		return 0;
	proc = replstamp_proc_at_index(holder);
	return proc ? proc->pid : 0;
}

/*
 * replstamp.lowest_uncommitted_serial()
 */
Datum
replstamp_lowest_uncommitted_serial(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT64(serial_lus(catalog_get(false)->serial_seq));
}

/*
 * replstamp.next_serial()
 */
Datum
replstamp_next_serial(PG_FUNCTION_ARGS)
{
	shmem_require();
	PG_RETURN_INT64(serial_next(catalog_get(false)->serial_seq));
}

/*
 * replstamp.lowest_uncommitted_serial_holder() (lus_holder() until 1.2,
 * whose C name the 1.1 script keeps): the process holding the LUS back, or
 * NULL.
 */
Datum
replstamp_lus_holder(PG_FUNCTION_ARGS)
{
	int			pid = serial_lus_holder(catalog_get(false)->serial_seq);

	if (pid == 0)
		PG_RETURN_NULL();
	PG_RETURN_INT32(pid);
}

/*
 * This node's clock: the system clock, moved by replstamp.debug_clock_offset.
 */
TimestampTz
serial_clock_now(void)
{
	return GetCurrentTimestamp() + (TimestampTz) debug_clock_offset * 1000;
}

/*
 * The time a change is stamped with: the clock, but always after every
 * stamp time handed out or seen before (a hybrid clock).
 */
TimestampTz
serial_stamp_time(void)
{
	TimestampTz now = serial_clock_now();
	uint64		floor;

	shmem_require();
	floor = pg_atomic_read_u64(&replstamp_shared->clock_floor);
	for (;;)
	{
		TimestampTz t = now > (TimestampTz) floor ? now : (TimestampTz) floor + 1;

		if (pg_atomic_compare_exchange_u64(&replstamp_shared->clock_floor, &floor, (uint64) t))
			return t;
		/* floor now holds the value another backend set: try again */
	}
}

/*
 * A change stamped at t exists here (applied from a peer, or found at
 * start-up): every later stamp is later than t.  Not capped: capping would
 * let a later local write lose to an earlier change of a peer whose clock
 * is ahead.  The skew is reported by the sync, and changes beyond
 * replstamp.max_clock_skew are refused there.
 */
void
serial_clock_seen(TimestampTz t)
{
	uint64		cur;

	shmem_require();
	cur = pg_atomic_read_u64(&replstamp_shared->clock_floor);
	while ((TimestampTz) cur < t &&
		   !pg_atomic_compare_exchange_u64(&replstamp_shared->clock_floor, &cur, (uint64) t))
		;
}

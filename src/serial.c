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
 * Concurrency contract (the shared array has one slot per backend, indexed
 * by MyBackendId - 1):
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
 * Copyright (c) 2026, the replstamp authors
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "commands/sequence.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/backendid.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/fmgrprotos.h"
#include "utils/timestamp.h"

#include "replstamp.h"
#include "serial.h"

typedef struct SerialSlot
{
	pg_atomic_uint32 dboid;		/* database of the owning backend */
	pg_atomic_uint64 lowest;	/* lowest serial held, 0 = none */
} SerialSlot;

typedef struct SerialShared
{
	pg_atomic_uint64 clock_floor;	/* latest changed_at applied from a peer */
	int			nslots;			/* MaxBackends at start-up, never changes */
	SerialSlot	slots[FLEXIBLE_ARRAY_MEMBER];
} SerialShared;

static SerialShared *serial_shared = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/* Backend-local state */
static SerialSlot *my_slot = NULL;
static bool xact_holds_serial = false;
static int64 last_serial_taken = 0;	/* by this backend, in this database */
static bool callbacks_registered = false;

static Size
serial_shmem_size(void)
{
	return add_size(offsetof(SerialShared, slots),
					mul_size(MaxBackends, sizeof(SerialSlot)));
}

static void
serial_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(serial_shmem_size());
}

static void
serial_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	serial_shared = ShmemInitStruct("replstamp serials", serial_shmem_size(),
									&found);
	if (!found)
	{
		serial_shared->nslots = MaxBackends;
		pg_atomic_init_u64(&serial_shared->clock_floor, 0);
		for (int i = 0; i < MaxBackends; i++)
		{
			pg_atomic_init_u32(&serial_shared->slots[i].dboid, InvalidOid);
			pg_atomic_init_u64(&serial_shared->slots[i].lowest, 0);
		}
	}
	LWLockRelease(AddinShmemInitLock);
}

/*
 * Install the shared memory hooks.  Called from _PG_init.
 */
void
serial_init(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = serial_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = serial_shmem_startup;
}

/*
 * Error out unless the shared state exists (library preloaded).
 */
void
serial_require_shmem(void)
{
	if (serial_shared == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("replstamp must be loaded via shared_preload_libraries"),
				 errhint("Add replstamp to the shared_preload_libraries configuration parameter in postgresql.conf and restart the server.")));
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
		serial_require_shmem();
		if (MyBackendId == InvalidBackendId || MyBackendId > serial_shared->nslots)
			elog(ERROR, "replstamp: backend id %d out of range", MyBackendId);
		my_slot = &serial_shared->slots[MyBackendId - 1];
		pg_atomic_write_u64(&my_slot->lowest, 0);
		pg_atomic_write_u32(&my_slot->dboid, MyDatabaseId);
	}
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

	last_serial_taken = serial;
	return serial;
}

/*
 * Does the current transaction hold a serial?
 */
bool
serial_xact_holds_serial(void)
{
	return xact_holds_serial;
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
 * or the next serial if none is: every serial below it is final.
 */
int64
serial_lus(Oid seqoid)
{
	int64		lus;
	Oid			dboid = MyDatabaseId;

	serial_require_shmem();

	/* Read the sequence first: see the concurrency contract above. */
	lus = serial_next(seqoid);
	pg_memory_barrier();

	for (int i = 0; i < serial_shared->nslots; i++)
	{
		SerialSlot *slot = &serial_shared->slots[i];
		uint64		lowest;

		if (pg_atomic_read_u32(&slot->dboid) != dboid)
			continue;
		lowest = pg_atomic_read_u64(&slot->lowest);
		if (lowest != 0 && (int64) lowest < lus)
			lus = (int64) lowest;
	}
	return lus;
}

PG_FUNCTION_INFO_V1(replstamp_lowest_uncommitted_serial);
PG_FUNCTION_INFO_V1(replstamp_next_serial);

/*
 * replstamp.lowest_uncommitted_serial()
 */
Datum
replstamp_lowest_uncommitted_serial(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT64(serial_lus(replstamp_catalog(false)->serial_seq));
}

/*
 * replstamp.next_serial()
 */
Datum
replstamp_next_serial(PG_FUNCTION_ARGS)
{
	serial_require_shmem();
	PG_RETURN_INT64(serial_next(replstamp_catalog(false)->serial_seq));
}

/*
 * The time a change is stamped with: the clock, but never at or before a
 * change applied from a peer (a hybrid clock).  A local write that follows
 * an applied change of the same row (it waited for its row lock) is then
 * the later one on every node, whatever the skew of the clocks.
 */
TimestampTz
serial_stamp_time(void)
{
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz floor;

	serial_require_shmem();
	floor = (TimestampTz) pg_atomic_read_u64(&serial_shared->clock_floor);
	return now > floor ? now : floor + 1;
}

/*
 * A change stamped at t was applied here.  A clock more than a minute
 * ahead of ours moves the floor only that far: a peer with a wild clock
 * must not push every later local stamp into the future.
 */
void
serial_clock_seen(TimestampTz t)
{
	TimestampTz cap = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 60 * 1000);
	uint64		cur;

	serial_require_shmem();
	if (t > cap)
		t = cap;
	cur = pg_atomic_read_u64(&serial_shared->clock_floor);
	while ((TimestampTz) cur < t &&
		   !pg_atomic_compare_exchange_u64(&serial_shared->clock_floor, &cur, (uint64) t))
		;
}

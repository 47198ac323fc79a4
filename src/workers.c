/*-------------------------------------------------------------------------
 *
 * workers.c
 *		Starting replstamp's short-lived background workers, and the list
 *		of databases they visit.
 *
 * A worker connects to one database (as userid, or the bootstrap superuser)
 * and learns what to do from its main argument (the database OID) and
 * bgw_extra.  Its entry point is a PGDLLEXPORT function of this library.
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "catalog/pg_database.h"
#include "miscadmin.h"
#include "portability/instr_time.h"
#include "postmaster/bgworker.h"
#include "access/xact.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/spin.h"
#include "utils/guc.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "compat.h"
#include "errors.h"
#include "fence.h"
#include "shmem.h"
#include "workers.h"

/*
 * Start a short-lived worker connected to database dboid, running
 * function; extra goes to bgw_extra (the role to connect as goes first).
 * With handle, this backend is told when it stops; without, nobody is.
 */
bool
worker_start(const char *function, const char *type, Oid dboid,
			 Oid userid, const void *extra, Size extralen,
			 BackgroundWorkerHandle **handle)
{
	BackgroundWorker worker;

	Assert(sizeof(Oid) + extralen <= BGW_EXTRALEN);
	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	strlcpy(worker.bgw_library_name, "replstamp", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, function, BGW_MAXLEN);
	snprintf(worker.bgw_name, BGW_MAXLEN, "%s %u", type, dboid);
	strlcpy(worker.bgw_type, type, BGW_MAXLEN);
	worker.bgw_main_arg = ObjectIdGetDatum(dboid);
	worker.bgw_notify_pid = handle ? MyProcPid : 0;
	memcpy(worker.bgw_extra, &userid, sizeof(Oid));
	if (extra)
		memcpy(worker.bgw_extra + sizeof(Oid), extra, extralen);
	return RegisterDynamicBackgroundWorker(&worker, handle);
}

/*
 * In a worker started by worker_start(): unblock signals, connect
 * to the database of main_arg as the role chosen by the starter, and copy
 * the rest of bgw_extra to extra.  Waits while the extension is being
 * dropped or updated there (fence.c).
 */
void
worker_connect(Datum main_arg, void *extra, Size extralen)
{
	Oid			userid;

	memcpy(&userid, MyBgworkerEntry->bgw_extra, sizeof(Oid));
	if (extra)
		memcpy(extra, MyBgworkerEntry->bgw_extra + sizeof(Oid), extralen);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(DatumGetObjectId(main_arg), userid, 0);
	worker_pin_settings();
	/* DROP or ALTER EXTENSION replstamp is stopping our work here. */
	fence_check_worker();
}

/*
 * The settings replstamp's background work runs with, whatever the
 * database's and the role's defaults say (ALTER DATABASE/ROLE ... SET, which
 * a database owner may use): the workers write (stamps, pulled changes,
 * peers' state), assume READ COMMITTED (each statement sees what committed
 * before it: the vector, a peer's row locked and re-read), and must neither
 * give up waiting for a lock that a user's transaction holds for a while
 * nor be cut off mid-page.  PGC_S_OVERRIDE outranks every default and a
 * configuration reload.  Called once, right after the worker connected.
 */
void
worker_pin_settings(void)
{
	static const char *const pinned[][2] = {
		{"default_transaction_read_only", "off"},
		{"default_transaction_isolation", "read committed"},
		{"default_transaction_deferrable", "off"},
		{"statement_timeout", "0"},
		{"lock_timeout", "0"},
		{"idle_in_transaction_session_timeout", "0"},
		{"idle_session_timeout", "0"},

		/*
		 * The workers' queries are many, short, and read replstamp's own
		 * tables: compiling one (jit_above_cost is met by a large change log)
		 * takes longer than running it.
		 */
		{"jit", "off"},
	};

	for (int i = 0; i < lengthof(pinned); i++)
		SetConfigOption(pinned[i][0], pinned[i][1], PGC_SUSET, PGC_S_OVERRIDE);
}

/* ---------------------------------------------------------------------
 * Waking sync workers
 *
 * add_peer() asks, through worker_wake_sync_at_commit(), that the sync
 * worker of its database run now, not at the end of its interval nor, for
 * a database whose worker left because replstamp was not installed yet,
 * SYNC_RETRY_S later (launcher.c).  The request is sent when the
 * transaction commits, never before (a peer the worker cannot see yet
 * would be missed): the database goes into replstamp_shared's
 * sync_wakeups, peers_added is bumped, and the launcher's latch is set.
 * The launcher starts the worker at once, or sets the latch of the one
 * running, which syncs when it sees peers_added move.  A rollback sends
 * nothing; a savepoint rolled back does not take the request back: one
 * sync too many costs nothing.
 * ---------------------------------------------------------------------
 */

static bool sync_wakeup_pending = false;

static void
sync_wakeup_xact_callback(XactEvent event, void *arg)
{
	Latch	   *latch = NULL;

	if (!sync_wakeup_pending)
		return;
	switch (event)
	{
		case XACT_EVENT_COMMIT:
			SpinLockAcquire(&replstamp_shared->mutex);
			if (!replstamp_shared->sync_wakeup_all)
			{
				int			i;

				for (i = 0; i < replstamp_shared->nsync_wakeups; i++)
					if (replstamp_shared->sync_wakeups[i] == MyDatabaseId)
						break;
				if (i == replstamp_shared->nsync_wakeups)
				{
					if (i < SYNC_WAKEUPS)
						replstamp_shared->sync_wakeups[replstamp_shared->nsync_wakeups++] = MyDatabaseId;
					else
						replstamp_shared->sync_wakeup_all = true;
				}
			}
			latch = replstamp_shared->launcher_latch;
			SpinLockRelease(&replstamp_shared->mutex);
			pg_atomic_fetch_add_u32(&replstamp_shared->peers_added, 1);
			if (latch)
				SetLatch(latch);
			sync_wakeup_pending = false;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PREPARE:

			/*
			 * After a COMMIT PREPARED the worker finds the peer at its
			 * interval.
			 */
			sync_wakeup_pending = false;
			break;
		default:
			break;
	}
}

/*
 * Have the sync worker of this database run as soon as the current
 * transaction commits.
 */
void
worker_wake_sync_at_commit(void)
{
	static bool registered = false;

	if (!registered)
	{
		RegisterXactCallback(sync_wakeup_xact_callback, NULL);
		registered = true;
	}
	sync_wakeup_pending = true;
}

static void
launcher_gone(int code, Datum arg)
{
	SpinLockAcquire(&replstamp_shared->mutex);
	replstamp_shared->launcher_latch = NULL;
	SpinLockRelease(&replstamp_shared->mutex);
}

/* In the launcher: from now on, wake-ups set its latch. */
void
worker_launcher_ready(void)
{
	SpinLockAcquire(&replstamp_shared->mutex);
	replstamp_shared->launcher_latch = MyLatch;
	SpinLockRelease(&replstamp_shared->mutex);
	before_shmem_exit(launcher_gone, 0);
}

/*
 * In the launcher: the databases whose sync worker should run now, into
 * dbs (room for SYNC_WAKEUPS; NULL to drop them), their number returned;
 * -1 means every database.  The requests are taken: the next call returns
 * only newer ones.
 */
int
worker_take_sync_wakeups(Oid *dbs)
{
	int			n;

	SpinLockAcquire(&replstamp_shared->mutex);
	n = replstamp_shared->sync_wakeup_all ? -1 : replstamp_shared->nsync_wakeups;
	if (n > 0 && dbs != NULL)
		memcpy(dbs, replstamp_shared->sync_wakeups, sizeof(Oid) * n);
	replstamp_shared->nsync_wakeups = 0;
	replstamp_shared->sync_wakeup_all = false;
	SpinLockRelease(&replstamp_shared->mutex);
	return n;
}

/* How many add_peer() commits this start has seen (see above). */
uint32
worker_peers_added(void)
{
	return pg_atomic_read_u32(&replstamp_shared->peers_added);
}

/*
 * Every database that accepts connections.  Call inside a transaction; the
 * list is allocated in the current context.
 */
List *
worker_connectable_databases(void)
{
	List	   *dbs = NIL;
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tuple;

	Assert(IsTransactionState());

	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while ((tuple = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tuple);

		if (db->datallowconn)
			dbs = lappend_oid(dbs, db->oid);
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	return dbs;
}

/*
 * For code that runs outside any transaction (background workers): a
 * transaction with an active snapshot, and its commit.
 */
void
worker_begin_xact(void)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
}

void
worker_commit_xact(void)
{
	PopActiveSnapshot();
	CommitTransactionCommand();
}

/*
 * In the PG_CATCH of such code: the error, copied into cxt, with the error
 * state cleared and no transaction left open.
 */
ErrorData *
worker_catch_error(MemoryContext cxt)
{
	ErrorData  *e;

	MemoryContextSwitchTo(cxt);
	e = CopyErrorData();
	FlushErrorState();
	AbortOutOfAnyTransaction();
	return e;
}

/*
 * Testing aids (replstamp.debug_*_pause): say so in the log, then wait ms
 * milliseconds, however often the latch is set; a cancel or a termination
 * ends the wait.
 */
void
worker_pause_for_tests(int ms, const char *what, const char *setting)
{
	instr_time	start;

	ereport(LOG,
			(errmsg("replstamp: pausing the %s for %d ms (%s)", what, ms, setting)));
	INSTR_TIME_SET_CURRENT(start);
	for (;;)
	{
		instr_time	now;
		double		left;

		CHECK_FOR_INTERRUPTS();
		INSTR_TIME_SET_CURRENT(now);
		INSTR_TIME_SUBTRACT(now, start);
		left = ms - INSTR_TIME_GET_MILLISEC(now);
		if (left <= 0)
			break;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 (long) Min(left, 1000), PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

/*-------------------------------------------------------------------------
 *
 * launcher.c
 *		The replstamp launcher: one background worker per server, started
 *		once recovery has finished.  It first has the identity of every
 *		database checked (identity.c), then, while replstamp.sync_interval
 *		is above zero, keeps one sync worker per database running, which
 *		calls replstamp.sync_all() every sync_interval seconds.
 *
 * The launcher stays up (idle, on its latch) so that the postmaster starts
 * it again after a crash restart, when every database must be checked
 * again: shared memory is new then, so no database counts as verified.  If
 * the launcher itself exits with an error, it is restarted after
 * LAUNCHER_RESTART_S and checks only the databases not yet verified (a
 * second check of a verified database could mistake the live node's own
 * backup mark for a restore).
 *
 * A sync worker connects to its database and exits at once when the
 * extension is not installed there; the launcher tries that database again
 * after SYNC_RETRY_S.  A sync that fails is recorded in replstamp.peers by
 * sync_all() and logged; the worker goes on at the next interval.
 *
 * Copyright (c) 2026, the replstamp authors
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "backup.h"
#include "identity.h"
#include "replstamp.h"

PGDLLEXPORT void replstamp_launcher_main(Datum arg);
PGDLLEXPORT void replstamp_sync_main(Datum arg);

#define LAUNCHER_RESTART_S	10
#define SYNC_RETRY_S		60
#define LAUNCHER_NAP_MS		10000

/* GUC */
static int	sync_interval = 0;

/* A database's sync worker, as the launcher sees it. */
typedef struct SyncSlot
{
	Oid			dboid;
	BackgroundWorkerHandle *handle; /* NULL if none started */
	TimestampTz stopped_at;		/* when we saw it stopped */
} SyncSlot;

/*
 * Register the launcher and define its GUC.  Called from _PG_init.
 */
void
launcher_init(void)
{
	BackgroundWorker worker;

	DefineCustomIntVariable("replstamp.sync_interval",
							"Seconds between automatic syncs with every peer, in every database with replstamp.",
							"Zero (the default) means no automatic sync: call replstamp.sync_all() yourself.",
							&sync_interval,
							0, 0, INT_MAX / 1000,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = LAUNCHER_RESTART_S;
	strlcpy(worker.bgw_library_name, "replstamp", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "replstamp_launcher_main", BGW_MAXLEN);
	strlcpy(worker.bgw_name, "replstamp launcher", BGW_MAXLEN);
	strlcpy(worker.bgw_type, "replstamp launcher", BGW_MAXLEN);
	RegisterBackgroundWorker(&worker);
}

/*
 * Start a short-lived worker connected to database dboid, running
 * function; extra goes to bgw_extra.  With handle, this backend is told
 * when it stops; without, nobody is.
 */
bool
replstamp_start_worker(const char *function, const char *type, Oid dboid,
					   const void *extra, Size extralen,
					   BackgroundWorkerHandle **handle)
{
	BackgroundWorker worker;

	Assert(extralen <= BGW_EXTRALEN);
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
	if (extra)
		memcpy(worker.bgw_extra, extra, extralen);
	return RegisterDynamicBackgroundWorker(&worker, handle);
}

static List *
current_databases(void)
{
	List	   *dbs;
	MemoryContext old;

	StartTransactionCommand();
	old = MemoryContextSwitchTo(TopMemoryContext);
	dbs = replstamp_connectable_databases();
	MemoryContextSwitchTo(old);
	CommitTransactionCommand();
	return dbs;
}

/* Check, one after the other, every database not verified since start. */
static void
check_identities(void)
{
	List	   *dbs = current_databases();
	ListCell   *lc;

	foreach(lc, dbs)
	{
		BackgroundWorkerHandle *handle;

		if (identity_db_verified(lfirst_oid(lc)))
			continue;
		if (!replstamp_start_worker("replstamp_identity_db_main", "replstamp identity check",
									lfirst_oid(lc), NULL, 0, &handle))
		{
			ereport(LOG,
					(errmsg("replstamp: could not start the identity check of database %u",
							lfirst_oid(lc)),
					 errhint("The first write in that database will check it instead. Consider raising max_worker_processes.")));
			continue;
		}
		(void) WaitForBackgroundWorkerShutdown(handle);
	}
	list_free(dbs);
}

/* Start the sync workers that should run and do not. */
static void
tend_sync_workers(List **slots)
{
	List	   *dbs = current_databases();
	ListCell   *lc;
	TimestampTz now = GetCurrentTimestamp();

	foreach(lc, dbs)
	{
		Oid			dboid = lfirst_oid(lc);
		SyncSlot   *slot = NULL;
		ListCell   *lc2;
		pid_t		pid;

		foreach(lc2, *slots)
		{
			if (((SyncSlot *) lfirst(lc2))->dboid == dboid)
				slot = lfirst(lc2);
		}
		if (slot == NULL)
		{
			slot = MemoryContextAllocZero(TopMemoryContext, sizeof(SyncSlot));
			slot->dboid = dboid;
			*slots = lappend(*slots, slot);
		}

		if (slot->handle != NULL)
		{
			if (GetBackgroundWorkerPid(slot->handle, &pid) != BGWH_STOPPED)
				continue;		/* running, or about to */
			pfree(slot->handle);
			slot->handle = NULL;
			slot->stopped_at = now;
		}
		if (slot->stopped_at != 0 &&
			!TimestampDifferenceExceeds(slot->stopped_at, now,
										Max(SYNC_RETRY_S, sync_interval) * 1000))
			continue;
		if (!replstamp_start_worker("replstamp_sync_main", "replstamp sync", dboid,
									NULL, 0, &slot->handle))
		{
			slot->handle = NULL;
			slot->stopped_at = now;
			ereport(LOG,
					(errmsg("replstamp: could not start the sync worker of database %u", dboid),
					 errhint("Consider raising max_worker_processes.")));
		}
	}
	list_free(dbs);
}

/*
 * The launcher.
 */
void
replstamp_launcher_main(Datum arg)
{
	List	   *slots = NIL;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);

	check_identities();

	for (;;)
	{
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		if (sync_interval > 0)
			tend_sync_workers(&slots);

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 LAUNCHER_NAP_MS, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

/*
 * One round of the sync worker: replstamp.sync_all() in a transaction of
 * its own.  Returns false if the extension is not installed here.
 */
static bool
sync_round(void)
{
	bool		installed;
	MemoryContext cxt = CurrentMemoryContext;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	installed = OidIsValid(get_extension_oid("replstamp", true));
	if (!installed)
	{
		PopActiveSnapshot();
		CommitTransactionCommand();
		return false;
	}

	pgstat_report_activity(STATE_RUNNING, "SELECT replstamp.sync_all()");
	PG_TRY();
	{
		int			ret;

		SPI_connect();
		ret = SPI_execute("SELECT replstamp.sync_all()", false, 0);
		if (ret != SPI_OK_SELECT)
			elog(ERROR, "SPI_execute failed: %s", SPI_result_code_string(ret));
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		/* Log it, forget it, try again at the next interval. */
		MemoryContextSwitchTo(cxt);
		EmitErrorReport();
		FlushErrorState();
		AbortCurrentTransaction();
	}
	PG_END_TRY();
	pgstat_report_activity(STATE_IDLE, NULL);
	return true;
}

/*
 * A database's sync worker: sync_all() every sync_interval seconds, until
 * sync_interval is set to zero or the extension is dropped.
 */
void
replstamp_sync_main(Datum arg)
{
	Oid			dboid = DatumGetObjectId(arg);

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);

	for (;;)
	{
		TimestampTz start = GetCurrentTimestamp();

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		if (sync_interval <= 0 || !sync_round())
			proc_exit(0);

		/* Sleep what is left of the interval; a reload wakes us early. */
		for (;;)
		{
			long		secs;
			int			usecs;

			CHECK_FOR_INTERRUPTS();
			if (ConfigReloadPending || sync_interval <= 0)
				break;
			TimestampDifference(GetCurrentTimestamp(),
								TimestampTzPlusMilliseconds(start, (int64) sync_interval * 1000),
								&secs, &usecs);
			if (secs == 0 && usecs == 0)
				break;
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 secs * 1000 + usecs / 1000 + 1, PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
		}
	}
}

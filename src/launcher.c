/*-------------------------------------------------------------------------
 *
 * launcher.c
 *		The replstamp launcher: one background worker per server, started
 *		once recovery has finished.  It first has the identity of every
 *		database checked (identity.c), then, while replstamp.sync_interval
 *		is above zero, keeps one sync worker per database with peers
 *		running, which syncs with a peer as soon as a commit there wakes
 *		it (watch.c), with the peers no connection waits on every
 *		sync_interval seconds and with every peer every FULL_ROUND_EVERY
 *		intervals (the fallback poll), and every
 *		replstamp.prune_interval starts a short maintenance worker per
 *		database (prune.c, backfill.c, the recorded LUS: identity.c), and
 *		every replstamp.verify_interval (off by default) a short verify
 *		worker per database (verify.c); right after the identity checks, a
 *		backfill worker per database carries on with the backfills a
 *		shutdown or a crash interrupted.
 *
 * The launcher stays up (idle, on its latch) so that the postmaster starts
 * it again after a crash restart, when every database must be checked
 * again: shared memory is new then, so no database counts as verified.  If
 * the launcher itself exits with an error, it is restarted after
 * LAUNCHER_RESTART_S and has every database checked again: a database
 * already checked in this start (its state row carries this start's token)
 * is left alone, so the live node's own backup mark is never mistaken for
 * a restore.
 *
 * A sync worker connects to its database and exits at once when the
 * extension is not installed there, or the database has no peer; the launcher tries that database again
 * after SYNC_RETRY_S, or at once when add_peer() commits there (workers.c:
 * the commit sets the launcher's latch; a running worker is woken through
 * its own).  A sync that fails is recorded in replstamp.peers
 * and logged; the worker goes on at the next interval.
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "backfill.h"
#include "catalog.h"
#include "compat.h"
#include "errors.h"
#include "identity.h"
#include "launcher.h"
#include "prune.h"
#include "shmem.h"
#include "sync.h"
#include "verify.h"
#include "watch.h"
#include "workers.h"

PGDLLEXPORT void replstamp_launcher_main(Datum arg);
PGDLLEXPORT void replstamp_sync_main(Datum arg);
PGDLLEXPORT void replstamp_maintenance_main(Datum arg);

#define LAUNCHER_RESTART_S	10
#define SYNC_RETRY_S		60
#define LAUNCHER_NAP_MS		10000
#define FULL_ROUND_EVERY	6	/* intervals between polls of watched peers */

/* GUC */
static int	sync_interval = 10;

/* A database's sync (or maintenance) worker, as the launcher sees it. */
typedef struct SyncSlot
{
	Oid			dboid;
	BackgroundWorkerHandle *handle; /* NULL if none started */
	TimestampTz stopped_at;		/* when we saw it stopped */
	bool		woken;			/* a wake-up reached the running worker */
} SyncSlot;

/*
 * Register the launcher and define its GUC.  Called from _PG_init.
 */
void
launcher_init(void)
{
	BackgroundWorker worker;

	DefineCustomIntVariable("replstamp.sync_interval",
							"Seconds between syncs with every peer (the fallback poll), in every database with replstamp.",
							"Between them, a commit on a peer wakes its pullers, which sync at once. "
							"Zero means no automatic sync at all: call replstamp.sync_all() yourself.",
							&sync_interval,
							10, 0, INT_MAX / 1000,
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

static List *
current_databases(void)
{
	List	   *dbs;
	MemoryContext old;

	StartTransactionCommand();
	old = MemoryContextSwitchTo(TopMemoryContext);
	dbs = worker_connectable_databases();
	MemoryContextSwitchTo(old);
	CommitTransactionCommand();
	return dbs;
}

/* Check, one after the other, every database (a checked one returns at once). */
static void
check_identities(void)
{
	List	   *dbs = current_databases();
	ListCell   *lc;

	foreach(lc, dbs)
	{
		BackgroundWorkerHandle *handle;

		if (!worker_start("replstamp_identity_db_main", "replstamp identity check",
						  lfirst_oid(lc), InvalidOid, NULL, 0, &handle))
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

/* The slot of database dboid in slots, made if there is none yet. */
static SyncSlot *
slot_for(List **slots, Oid dboid)
{
	ListCell   *lc;
	SyncSlot   *slot;

	foreach(lc, *slots)
	{
		if (((SyncSlot *) lfirst(lc))->dboid == dboid)
			return lfirst(lc);
	}
	slot = MemoryContextAllocZero(TopMemoryContext, sizeof(SyncSlot));
	slot->dboid = dboid;
	*slots = lappend(*slots, slot);
	return slot;
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
		SyncSlot   *slot;
		pid_t		pid;

		slot = slot_for(slots, dboid);

		if (slot->handle != NULL)
		{
			if (GetBackgroundWorkerPid(slot->handle, &pid) != BGWH_STOPPED)
				continue;		/* running, or about to */
			pfree(slot->handle);
			slot->handle = NULL;

			/*
			 * A worker woken as it left (it found no replstamp just before
			 * the CREATE EXTENSION and add_peer() committed) is followed by a
			 * new one at once.
			 */
			slot->stopped_at = slot->woken ? 0 : now;
		}
		if (slot->stopped_at != 0 &&
			!TimestampDifferenceExceeds(slot->stopped_at, now,
										Max(SYNC_RETRY_S, sync_interval) * 1000))
			continue;
		slot->woken = false;
		if (!worker_start("replstamp_sync_main", "replstamp sync", dboid,
						  InvalidOid, NULL, 0, &slot->handle))
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
 * replstamp.sync_interval went from zero to above: the workers that zero
 * stopped start again now.  (A worker that stops on its own is started
 * again only SYNC_RETRY_S later: that is for databases without replstamp,
 * not for a switch turned back on.)
 */
static void
sync_workers_switched_on(List *slots)
{
	ListCell   *lc;

	foreach(lc, slots)
	{
		SyncSlot   *slot = lfirst(lc);
		pid_t		pid;

		if (slot->handle != NULL &&
			GetBackgroundWorkerPid(slot->handle, &pid) == BGWH_STOPPED)
		{
			pfree(slot->handle);
			slot->handle = NULL;
		}
		slot->stopped_at = 0;
	}
}

/*
 * add_peer() committed in the database of slot: its sync worker runs now.
 * A running one has its latch set; one that stopped is started again by
 * tend_sync_workers() without waiting for SYNC_RETRY_S.
 */
static void
wake_sync_worker(SyncSlot *slot)
{
	pid_t		pid;

	if (slot->handle != NULL &&
		GetBackgroundWorkerPid(slot->handle, &pid) == BGWH_STARTED)
	{
		PGPROC	   *proc = BackendPidGetProc(pid);

		if (proc != NULL)
			SetLatch(&proc->procLatch);
		slot->woken = true;
	}
	else
		slot->stopped_at = 0;
}

/* The wake-ups workers.c queued since the last call, on slots. */
static void
take_sync_wakeups(List **slots)
{
	Oid			dbs[SYNC_WAKEUPS];
	int			n = worker_take_sync_wakeups(dbs);

	if (n < 0)
	{
		List	   *all = current_databases();
		ListCell   *lc;

		foreach(lc, all)
			wake_sync_worker(slot_for(slots, lfirst_oid(lc)));
		list_free(all);
	}
	for (int i = 0; i < n; i++)
		wake_sync_worker(slot_for(slots, dbs[i]));
}

static void start_short_workers(List **slots, const char *function, const char *type);

/*
 * A short maintenance worker of the given type ("replstamp maintenance", or
 * "replstamp backfill" for one that only backfills) in every database; it
 * leaves at once where replstamp is not installed or there is nothing to
 * do.  With slots, not where the one started before is still running: a
 * prune of a long log, or one waiting for a sync, must not be joined by
 * another each interval until no worker slot is left.
 */
static void
start_maintenance(List **slots, const char *type)
{
	start_short_workers(slots, "replstamp_maintenance_main", type);
}

/*
 * A short worker running function in every database (see
 * start_maintenance()).
 */
static void
start_short_workers(List **slots, const char *function, const char *type)
{
	List	   *dbs = current_databases();
	ListCell   *lc;

	foreach(lc, dbs)
	{
		Oid			dboid = lfirst_oid(lc);
		SyncSlot   *slot;
		pid_t		pid;

		if (slots == NULL)
		{
			if (!worker_start(function, type,
							  dboid, InvalidOid, NULL, 0, NULL))
				ereport(LOG,
						(errmsg("replstamp: could not start the %s worker of database %u",
								type, dboid),
						 errhint("Consider raising max_worker_processes.")));
			continue;
		}
		slot = slot_for(slots, dboid);
		if (slot->handle != NULL)
		{
			if (GetBackgroundWorkerPid(slot->handle, &pid) != BGWH_STOPPED)
				continue;		/* still at it */
			pfree(slot->handle);
			slot->handle = NULL;
		}
		if (!worker_start(function, type,
						  dboid, InvalidOid, NULL, 0, &slot->handle))
		{
			slot->handle = NULL;
			ereport(LOG,
					(errmsg("replstamp: could not start the %s worker of database %u",
							type, dboid),
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
	List	   *maintenance_slots = NIL;
	List	   *verify_slots = NIL;
	TimestampTz last_maintenance;
	TimestampTz last_verify;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	worker_pin_settings();
	worker_launcher_ready();

	check_identities();
	/* A backfill a shutdown or a crash interrupted goes on now. */
	start_maintenance(NULL, "replstamp backfill");
	last_maintenance = GetCurrentTimestamp();
	last_verify = last_maintenance;

	for (;;)
	{
		long		nap = LAUNCHER_NAP_MS;
		int			interval;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			int			was = sync_interval;

			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			if (was <= 0 && sync_interval > 0)
				sync_workers_switched_on(slots);
		}
		if (sync_interval > 0)
		{
			take_sync_wakeups(&slots);
			tend_sync_workers(&slots);
		}
		else
			(void) worker_take_sync_wakeups(NULL);	/* nothing to wake */
		interval = prune_interval_s();
		if (interval > 0)
		{
			TimestampTz due = TimestampTzPlusMilliseconds(last_maintenance, (int64) interval * 1000);

			if (GetCurrentTimestamp() >= due)
			{
				start_maintenance(&maintenance_slots, "replstamp maintenance");
				last_maintenance = GetCurrentTimestamp();
				due = TimestampTzPlusMilliseconds(last_maintenance, (int64) interval * 1000);
			}
			nap = Min(nap, Max(TimestampDifferenceMilliseconds(GetCurrentTimestamp(), due), 100));
		}

		/*
		 * The background check (verify.c), off unless
		 * replstamp.verify_interval is set.
		 */
		interval = verify_interval_s();
		if (interval > 0)
		{
			TimestampTz due = TimestampTzPlusMilliseconds(last_verify, (int64) interval * 1000);

			if (GetCurrentTimestamp() >= due)
			{
				start_short_workers(&verify_slots, "replstamp_verify_main", "replstamp verify");
				last_verify = GetCurrentTimestamp();
				due = TimestampTzPlusMilliseconds(last_verify, (int64) interval * 1000);
			}
			nap = Min(nap, Max(TimestampDifferenceMilliseconds(GetCurrentTimestamp(), due), 100));
		}

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 nap, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

/*
 * One round of the sync worker: every peer, each in transactions of its
 * own, but those watches has waiting connections on (unless full) and
 * those it finds down (watch.c: it syncs them when it reaches them).  Returns false if the
 * extension is not installed here, or the database has no peer: the
 * worker leaves, so that it holds no connection to a database that does
 * not replicate (DROP DATABASE would wait for it); add_peer() has it
 * started again.
 */
static bool
sync_round(List *watches, bool full)
{
	bool		installed;
	bool		ready;			/* the 1.2 catalog: replication can run */
	MemoryContext cxt = CurrentMemoryContext;

	worker_begin_xact();
	installed = OidIsValid(get_extension_oid("replstamp", true));
	/* Replication needs the 1.2 catalog (whole transactions). */
	ready = installed && catalog_get(false)->v12;
	if (!installed)
		ereport(DEBUG1,
				(errmsg_internal("replstamp: no replstamp in database \"%s\", its sync worker exits",
								 get_database_name(MyDatabaseId))));
	worker_commit_xact();
	if (!installed)
		return false;
	if (!ready)
		return true;			/* waiting for ALTER EXTENSION replstamp
								 * UPDATE */
	if (!sync_has_peers())
	{
		ereport(DEBUG1,
				(errmsg_internal("replstamp: no peers in database \"%s\", its sync worker exits",
								 get_database_name(MyDatabaseId))));
		return false;
	}

	PG_TRY();
	{
		(void) sync_peers_but(full ? watch_is_down : watch_is_up_or_down, watches);
		worker_begin_xact();
		identity_mark_lus();
		worker_commit_xact();
	}
	PG_CATCH();
	{
		/* Log it, forget it, try again at the next interval. */
		MemoryContextSwitchTo(cxt);
		EmitErrorReport();
		FlushErrorState();
		AbortOutOfAnyTransaction();
	}
	PG_END_TRY();
	pgstat_report_activity(STATE_IDLE, NULL);
	return true;
}

/*
 * A database's sync worker: syncs with every peer at start, every
 * sync_interval seconds (the fallback poll) and when a peer is added; in
 * between, with a peer as soon as that peer says it committed changes
 * (watch.c).  Leaves when sync_interval is set to zero or the extension is
 * dropped.
 */
void
replstamp_sync_main(Datum arg)
{
	List	   *watches = NIL;
	TimestampTz next_round = 0;
	TimestampTz next_full = 0;
	uint32		peers_added = 0;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	worker_connect(arg, NULL, 0);

	for (;;)
	{
		const char *peer;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			next_round = 0;		/* the interval may have changed */
			next_full = 0;
		}
		if (sync_interval <= 0)
			proc_exit(0);

		/*
		 * The fallback poll: each interval, the peers no connection waits on;
		 * every peer at start, when a peer was added, and every
		 * FULL_ROUND_EVERY intervals.
		 */
		if (next_round == 0 || GetCurrentTimestamp() >= next_round ||
			worker_peers_added() != peers_added)
		{
			bool		full = next_full == 0 || GetCurrentTimestamp() >= next_full ||
				worker_peers_added() != peers_added;

			/* Read before the round: a peer added during it gets another. */
			peers_added = worker_peers_added();
			next_round = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													 (int64) sync_interval * 1000);
			if (full)
			{
				next_full = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
														(int64) sync_interval * 1000 * FULL_ROUND_EVERY);
				watch_clear_due(watches);
			}
			if (!sync_round(watches, full))
			{
				watch_close_all(&watches);
				proc_exit(0);
			}
			watch_refresh(&watches);
		}

		/* The peers that said they committed changes. */
		while ((peer = watch_take_due(watches)) != NULL)
		{
			CHECK_FOR_INTERRUPTS();
			(void) sync_one_peer_warn(peer);
			pgstat_report_activity(STATE_IDLE, NULL);
		}

		watch_connect(watches);
		if (ConfigReloadPending || worker_peers_added() != peers_added)
			continue;
		watch_wait(watches, next_round);
	}
}

/*
 * A short maintenance worker: records the LUS, backfills tables tracked
 * with backfill, and (unless started just for a backfill) prunes.
 */
void
replstamp_maintenance_main(Datum arg)
{
	bool		backfill_only = strcmp(MyBgworkerEntry->bgw_type, "replstamp backfill") == 0;
	bool		ready;
	MemoryContext cxt;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	worker_connect(arg, NULL, 0);

	worker_begin_xact();
	ready = OidIsValid(get_extension_oid("replstamp", true)) && catalog_get(false)->v11;
	if (ready)
		identity_mark_lus();
	worker_commit_xact();
	if (!ready)
		proc_exit(0);

	cxt = CurrentMemoryContext;
	PG_TRY();
	{
		backfill_run();
		if (!backfill_only && prune_interval_s() > 0)
			(void) prune_run();
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		EmitErrorReport();
		FlushErrorState();
		AbortOutOfAnyTransaction();
	}
	PG_END_TRY();
	pgstat_report_activity(STATE_IDLE, NULL);
	proc_exit(0);
}

/*-------------------------------------------------------------------------
 *
 * fence.c
 *		DROP EXTENSION replstamp, DROP SCHEMA replstamp and ALTER EXTENSION
 *		replstamp stop replstamp's running work in their database before
 *		they take a lock: a sync, a prune, a backfill, a maintenance round.
 *
 * Without that, the DDL could wait forever: a session in replstamp.sync()
 * holds a lock on replstamp.peer and waits for its worker, which is not a
 * lock wait; the DDL takes the change log's lock and waits for
 * replstamp.peer; the worker waits for the change log.  The deadlock
 * detector sees no cycle, and every write to a tracked table queues behind
 * the DDL.
 *
 * So the backend running the DDL first puts up a fence for its database
 * (replstamp_shared->fences, under replstamp_shared->lock), marks the sync
 * requests of the database as fenced (their callers report why they
 * stopped), sends SIGTERM to every replstamp worker connected to the
 * database and waits until they are gone.  A worker that connects while
 * the fence stands waits until it comes down (fence_check_worker(), called
 * by every worker right after it connects); a new request is refused.  Either the
 * worker's check sees the fence, or the DDL's scan of the backends, which
 * comes after it put the fence up, sees the worker.  The fence comes down
 * when the DDL's transaction ends, or its backend exits.
 *
 * The same hook lets stamp.c refuse a TRUNCATE of a partition of a tracked
 * partitioned table on its own, which no trigger of the partition sees
 * (stamp_check_truncate()).
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>

#include "access/xact.h"
#include "commands/extension.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/utility.h"
#include "utils/acl.h"
#include "utils/backend_status.h"

#include "backfill.h"
#include "catalog.h"
#include "compat.h"
#include "errors.h"
#include "fence.h"
#include "shmem.h"
#include "stamp.h"

static ProcessUtility_hook_type prev_ProcessUtility = NULL;

/* Index of the fence this backend holds, or -1. */
static int	my_fence = -1;

static void
fence_release(void)
{
	if (my_fence < 0 || replstamp_shared == NULL)
		return;
	LWLockAcquire(replstamp_shared->lock, LW_EXCLUSIVE);
	if (replstamp_shared->fences[my_fence].pid == MyProcPid)
	{
		replstamp_shared->fences[my_fence].dboid = InvalidOid;
		replstamp_shared->fences[my_fence].pid = 0;
	}
	LWLockRelease(replstamp_shared->lock);
	my_fence = -1;
}

static void
fence_xact_callback(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_ABORT || event == XACT_EVENT_COMMIT ||
		event == XACT_EVENT_PARALLEL_ABORT || event == XACT_EVENT_PARALLEL_COMMIT ||
		event == XACT_EVENT_PREPARE)
		fence_release();
}

static void
fence_exit(int code, Datum arg)
{
	fence_release();
}

/*
 * Put up the fence of this database (if this backend has none up yet), and
 * mark its sync requests as stopped by it.
 */
static void
fence_take(void)
{
	static bool exit_registered = false;
	int			free_slot = -1;

	if (my_fence >= 0)
		return;
	if (!exit_registered)
	{
		before_shmem_exit(fence_exit, (Datum) 0);
		exit_registered = true;
	}
	LWLockAcquire(replstamp_shared->lock, LW_EXCLUSIVE);
	for (int i = 0; i < MAX_FENCES; i++)
		if (!OidIsValid(replstamp_shared->fences[i].dboid))
		{
			free_slot = i;
			break;
		}
	if (free_slot >= 0)
	{
		replstamp_shared->fences[free_slot].dboid = MyDatabaseId;
		replstamp_shared->fences[free_slot].pid = MyProcPid;
		my_fence = free_slot;
		for (int i = 0; i < MAX_SYNC_REQUESTS; i++)
			if (replstamp_shared->requests[i].in_use &&
				replstamp_shared->requests[i].dboid == MyDatabaseId)
				replstamp_shared->requests[i].fenced = true;
	}
	LWLockRelease(replstamp_shared->lock);
	if (free_slot < 0)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("too many sessions are dropping or updating extension \"replstamp\""),
				 errhint("Wait for one to finish.")));
}

/*
 * Is the fence of database dboid up?  Caller holds replstamp_shared->lock.
 */
static bool
fenced_locked(Oid dboid)
{
	Assert(LWLockHeldByMe(replstamp_shared->lock));
	for (int i = 0; i < MAX_FENCES; i++)
		if (replstamp_shared->fences[i].dboid == dboid)
			return true;
	return false;
}

/*
 * Is replstamp being dropped or updated in database dboid right now?
 */
bool
fence_is_up(Oid dboid)
{
	bool		up;

	if (replstamp_shared == NULL)
		return false;
	LWLockAcquire(replstamp_shared->lock, LW_SHARED);
	up = fenced_locked(dboid);
	LWLockRelease(replstamp_shared->lock);
	return up;
}

/*
 * In a replstamp worker, right after it connected to its database (holding
 * no lock, in no transaction): while the extension is being dropped or
 * updated there, wait.  The DDL stops the workers it finds; one that
 * connected after it looked goes on once the DDL's transaction has ended,
 * and finds the extension gone or updated.
 */
void
fence_check_worker(void)
{
	while (fence_is_up(MyDatabaseId))
	{
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 100L, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}

/*
 * Send SIGTERM to every replstamp worker connected to this database;
 * returns how many there were.
 */
static int
signal_workers(void)
{
	int			n = 0;
	int			nbackends;

	pgstat_clear_snapshot();
	nbackends = pgstat_fetch_stat_numbackends();
	for (int i = 1; i <= nbackends; i++)
	{
		LocalPgBackendStatus *local = pgstat_fetch_stat_local_beentry(i);
		PgBackendStatus *be;
		const char *type;

		if (local == NULL)
			continue;
		be = &local->backendStatus;
		if (be->st_backendType != B_BG_WORKER || be->st_databaseid != MyDatabaseId ||
			be->st_procpid == MyProcPid || be->st_procpid <= 0)
			continue;
		type = GetBackgroundWorkerTypeByPid(be->st_procpid);
		if (type == NULL || strncmp(type, "replstamp ", 10) != 0)
			continue;
		if (kill(be->st_procpid, SIGTERM) == 0)
			n++;
	}
	return n;
}

/* Stop replstamp's work in this database and wait until it has stopped. */
static void
stop_workers(void)
{
	fence_take();
	while (signal_workers() > 0)
	{
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 10L, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}

static bool
names_replstamp(List *objects)
{
	ListCell   *lc;

	foreach(lc, objects)
	{
		Node	   *obj = lfirst(lc);

		if (IsA(obj, String) && strcmp(strVal(obj), "replstamp") == 0)
			return true;
	}
	return false;
}

/*
 * Does the statement drop or update the extension replstamp of this
 * database, and may its user do that (so that one who may not is refused
 * by the command, not served by stopping replstamp's work)?
 */
static bool
drops_or_updates_replstamp(Node *parsetree)
{
	Oid			extoid;

	if (IsA(parsetree, DropStmt))
	{
		DropStmt   *drop = (DropStmt *) parsetree;

		if ((drop->removeType != OBJECT_EXTENSION && drop->removeType != OBJECT_SCHEMA) ||
			!names_replstamp(drop->objects))
			return false;
	}
	else if (IsA(parsetree, AlterExtensionStmt))
	{
		if (strcmp(((AlterExtensionStmt *) parsetree)->extname, "replstamp") != 0)
			return false;
	}
	else
		return false;
	extoid = get_extension_oid("replstamp", true);
	return OidIsValid(extoid) && pg_extension_ownercheck(extoid, GetUserId());
}

static void
fence_process_utility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
					  ProcessUtilityContext context, ParamListInfo params,
					  QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *parsetree = pstmt->utilityStmt;
	bool		fence = replstamp_shared != NULL && !IsBinaryUpgrade &&
		drops_or_updates_replstamp(parsetree);

	if (fence)
		stop_workers();
	if (replstamp_shared != NULL && IsA(parsetree, TruncateStmt))
		stamp_check_truncate((TruncateStmt *) parsetree);
	if (prev_ProcessUtility)
		prev_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
							queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
								queryEnv, dest, qc);
	/* A backfill it stopped goes on once the update commits. */
	if (fence && IsA(parsetree, AlterExtensionStmt))
		backfill_request();
}

/*
 * Install the hook.  Called from _PG_init.
 */
void
fence_init(void)
{
	prev_ProcessUtility = ProcessUtility_hook;
	ProcessUtility_hook = fence_process_utility;
	RegisterXactCallback(fence_xact_callback, NULL);
}

/*-------------------------------------------------------------------------
 *
 * shmem.c
 *		Requests and attaches replstamp's shared memory (one struct, see
 *		shmem.h), as pg_stat_statements does, and offers the one check that
 *		the library was preloaded.
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/shmem.h"

#include "errors.h"
#include "latest.h"
#include "shmem.h"

ReplstampShared *replstamp_shared = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static Size
shmem_size(void)
{
	return add_size(offsetof(ReplstampShared, slots),
					mul_size(MaxBackends, sizeof(SerialSlot)));
}

static void
shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(shmem_size());
	RequestNamedLWLockTranche("replstamp", 1);
	latest_shmem_request();
}

static void
shmem_startup(void)
{
	bool		found;
	ReplstampShared *s;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	s = ShmemInitStruct("replstamp", shmem_size(), &found);
	if (!found)
	{
		memset(s, 0, offsetof(ReplstampShared, slots));
		if (!pg_strong_random(s->start_token.data, UUID_LEN))
			elog(FATAL, "replstamp: could not generate random values");
		s->nslots = MaxBackends;
		pg_atomic_init_u64(&s->clock_floor, 0);
		pg_atomic_init_u64(&s->serials_taken, 0);
		pg_atomic_init_u32(&s->peers_added, 0);
		pg_atomic_init_u64(&s->changes_committed, 0);
		pg_atomic_init_u32(&s->change_waiters, 0);
		ConditionVariableInit(&s->changes_cv);
		SpinLockInit(&s->mutex);
		s->lock = &(GetNamedLWLockTranche("replstamp"))->lock;
		for (int i = 0; i < MaxBackends; i++)
		{
			pg_atomic_init_u32(&s->slots[i].dboid, InvalidOid);
			pg_atomic_init_u64(&s->slots[i].lowest, 0);
		}
	}
	replstamp_shared = s;
	latest_shmem_startup();
	LWLockRelease(AddinShmemInitLock);
}

/*
 * Install the shared memory hooks.  Called from _PG_init.
 */
void
shmem_init(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = shmem_startup;
}

/*
 * Error out unless the shared state exists (the library was preloaded).
 * Every SQL entry point that needs shared memory calls this first.
 */
void
shmem_require(void)
{
	if (replstamp_shared == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("replstamp must be loaded via shared_preload_libraries"),
				 errhint("Add replstamp to the shared_preload_libraries configuration parameter in postgresql.conf and restart the server.")));
}

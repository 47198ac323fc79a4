/*-------------------------------------------------------------------------
 *
 * shmem.h
 *		replstamp's one shared-memory struct, and the check that it exists
 *		(the library was preloaded).  latest.c keeps a struct of its own,
 *		with its own lock.
 *
 * Concurrency contract, field by field (see each part's file for how it
 * uses its fields):
 *	- start_token, nslots: written once at start-up, read-only afterwards;
 *	- clock_floor, serials_taken, slots[].*: 64/32-bit atomics, no lock
 *	  (serial.c documents the order of reads and writes);
 *	- flip_owner, backup_owner, flip_label, flip[]: protected by mutex
 *	  (backup_mark.c);
 *	- launcher_latch, nsync_wakeups, sync_wakeups[], sync_wakeup_all:
 *	  protected by mutex; peers_added: atomic, no lock (workers.c);
 *	- changes_committed, change_waiters: atomics, no lock; changes_cv:
 *	  its own spinlock (wakeup.c documents the order of reads and writes);
 *	- nv10_checked, v10_checked[]: protected by mutex (identity.c);
 *	- requests[]: protected by lock (run_in_worker.c);
 *	- fences[]: protected by lock (fence.c).
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#ifndef REPLSTAMP_SHMEM_H
#define REPLSTAMP_SHMEM_H

#include "port/atomics.h"
#include "storage/condition_variable.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/spin.h"
#include "utils/uuid.h"

/* How many databases one state flip handles at a time (backup_mark.c). */
#define FLIP_BATCH			64
#define FLIP_MESSAGE_LEN	256
#define FLIP_LABEL_LEN		1024

/* Databases on the 1.0 catalog whose check this start remembers (identity.c). */
#define V10_MAX_DBS			256

/* Databases whose extension DDL stops replstamp's work (fence.c). */
#define MAX_FENCES			32

/* Databases whose sync worker a commit asked to run now (workers.c). */
#define SYNC_WAKEUPS		16

/*
 * sync(), sync_all() and prune() asked for by SQL sessions and run by
 * background workers (run_in_worker.c).
 */
#define MAX_SYNC_REQUESTS	32
#define SYNC_MESSAGE_LEN	1024

typedef enum FlipStatus
{
	FLIP_PENDING = 0,			/* the worker has not reported */
	FLIP_DONE,					/* the state was changed */
	FLIP_NOT_INSTALLED,			/* no replstamp in this database */
	FLIP_UNCHANGED,				/* already in the requested state */
	FLIP_FAILED					/* error; see message */
} FlipStatus;

typedef struct FlipResult
{
	FlipStatus	status;
	char		message[FLIP_MESSAGE_LEN];
} FlipResult;

/* Per backend: the lowest serial its open transaction holds. */
typedef struct SerialSlot
{
	pg_atomic_uint32 dboid;		/* database of the owning backend */
	pg_atomic_uint64 lowest;	/* lowest serial held, 0 = none */
} SerialSlot;

/* A sync asked for by a SQL session and run by a background worker. */
typedef struct SyncRequest
{
	bool		in_use;
	uint32		generation;		/* a worker reports only to its request */
	Oid			dboid;
	Oid			userid;			/* the worker runs as this role */
	char		peer[NAMEDATALEN];	/* "" = every peer */
	char		settings[SYNC_MESSAGE_LEN]; /* the caller's, see
											 * run_in_worker.c */
	pid_t		requester;
	bool		done;			/* the worker has reported */
	int64		applied;
	int			sqlerrcode;		/* 0 = success */
	char		message[SYNC_MESSAGE_LEN];
	char		detail[SYNC_MESSAGE_LEN];
	char		hint[SYNC_MESSAGE_LEN];
	char		context[SYNC_MESSAGE_LEN];
	char		warnings[SYNC_MESSAGE_LEN]; /* what sync_all() warned of */
	bool		fenced;			/* stopped by DROP/ALTER EXTENSION (fence.c) */
} SyncRequest;

/* A backend running DROP or ALTER EXTENSION replstamp in a database. */
typedef struct Fence
{
	Oid			dboid;			/* InvalidOid: a free entry */
	pid_t		pid;			/* the backend; it clears the entry at its
								 * transaction's end or exit */
} Fence;

typedef struct ReplstampShared
{
	/* Set at start-up, read-only afterwards. */
	pg_uuid_t	start_token;	/* random, new at every start, crash restarts
								 * included: identity checks are per start */
	int			nslots;			/* MaxBackends */

	/* Atomics, no lock. */
	pg_atomic_uint64 clock_floor;	/* latest stamp time handed out or seen */
	pg_atomic_uint64 serials_taken; /* bumped by every serial taken */

	/* The state flip around backups (backup_mark.c). */
	slock_t		mutex;
	pid_t		flip_owner;		/* backend running a flip, or 0 */
	pid_t		backup_owner;	/* backend running replstamp.backup(), or 0 */
	char		flip_label[FLIP_LABEL_LEN];
	FlipResult	flip[FLIP_BATCH];

	/*
	 * Wake-ups of sync workers (workers.c): the launcher's latch, NULL while
	 * none runs; the databases whose sync worker a committed add_peer() asks
	 * to run now (all of them once more than SYNC_WAKEUPS wait); and a count
	 * of such commits, by which a running sync worker tells a wake-up from
	 * other reasons to wake.
	 */
	Latch	   *launcher_latch;
	int			nsync_wakeups;
	Oid			sync_wakeups[SYNC_WAKEUPS];
	bool		sync_wakeup_all;
	pg_atomic_uint32 peers_added;

	/*
	 * The commit counter (wakeup.c): bumped by every commit that wrote to a
	 * change log here; the backends waiting for it to move, and where they
	 * sleep.
	 */
	pg_atomic_uint64 changes_committed;
	pg_atomic_uint32 change_waiters;
	ConditionVariable changes_cv;

	/*
	 * Databases still on the 1.0 catalog checked in this start: that catalog
	 * has no column for start_token (identity.c).
	 */
	int			nv10_checked;
	Oid			v10_checked[V10_MAX_DBS];

	/* Requests of sync(), sync_all() and prune() (run_in_worker.c). */
	LWLock	   *lock;
	SyncRequest requests[MAX_SYNC_REQUESTS];

	/* Extension DDL under way, per database (fence.c). */
	Fence		fences[MAX_FENCES];

	/* Per backend, indexed by replstamp_my_proc_index() (serial.c). */
	SerialSlot	slots[FLEXIBLE_ARRAY_MEMBER];
} ReplstampShared;

extern PGDLLIMPORT ReplstampShared *replstamp_shared;

extern void shmem_init(void);
extern void shmem_require(void);

#endif							/* REPLSTAMP_SHMEM_H */

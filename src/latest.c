/*-------------------------------------------------------------------------
 *
 * latest.c
 *		Which changes are the latest version of their row, as far as this
 *		server has seen since it started, in shared memory: the prune's walk
 *		keeps those without looking their row up in replstamp.row_version
 *		(on a node that writes many rows once, most of what a walk did).
 *
 * Per database and replica ID (a slot, LATEST_SLOTS of them, the least
 * recently used given up for a new one), one bit per serial, for a window
 * of LATEST_WINDOW serials past where the walk has gone.  A bit is set
 * when row_version records that change as a row's latest version, and
 * cleared when a later version supersedes it (rowversion.c), both when
 * the transaction that wrote row_version commits (before it lets go of
 * the page lock, which the prune's batches wait for): an aborted write
 * leaves the bits as they were.
 *
 * A set bit means "latest": the walk keeps the change.  Anything else (no
 * slot, a serial outside the window, a clear bit, a server restarted
 * since) means "not known": the walk looks the row up, as it always did.
 * So a lost or missing bit costs a lookup, never a change: only a bit
 * left set for a change that is no longer the latest would keep it in the
 * log, and every write of row_version that supersedes a version clears its
 * bit (rowversion_put()); the other writes of row_version (the re-issue
 * of a rotation, tombstones and dropped tables pruned) remove that change
 * from the log too.
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "nodes/pg_list.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/guc.h"
#include "utils/memutils.h"

#include "errors.h"
#include "latest.h"

#define LATEST_SLOTS	16
#define LATEST_WINDOW	((int64) 1 << 20)	/* serials per slot: 128 kB */
#define LATEST_WORDS	(LATEST_WINDOW / 64)

/*
 * Notes one transaction keeps at most (32 MB); past them it forgets, when
 * it commits, every bit of its database instead (the first prune after a
 * long time without one reconciles that many local changes).  A GUC, for
 * tests.
 */
#define LATEST_MAX_OPS	(1024 * 1024)
static int	max_notes = LATEST_MAX_OPS;

typedef struct LatestSlot
{
	Oid			dboid;			/* InvalidOid: free */
	pg_uuid_t	id;
	int64		from;			/* covers serials from + 1 .. from +
								 * LATEST_WINDOW */
	uint64		used;			/* when last used, for eviction */
	uint64		bits[LATEST_WORDS]; /* by serial % LATEST_WINDOW */
} LatestSlot;

typedef struct LatestShared
{
	LWLock	   *lock;
	uint64		tick;
	LatestSlot	slots[LATEST_SLOTS];
} LatestShared;

static LatestShared *latest_shared = NULL;

/* What the current transaction will record when it commits. */
typedef struct LatestOp
{
	pg_uuid_t	id;
	int64		serial;
	bool		latest;
} LatestOp;

static LatestOp *ops = NULL;
static int	nops = 0;
static int	maxops = 0;
static List *sub_marks = NIL;	/* nops when each open subtransaction began */
static bool overflowed = false; /* more notes than LATEST_MAX_OPS */
static bool callbacks_registered = false;

/* GUCs.  Called from _PG_init. */
void
latest_init(void)
{
#ifdef REPLSTAMP_TESTING
	DefineCustomIntVariable("replstamp.debug_latest_notes",
							"Testing aid: how many notes of latest versions one transaction keeps.",
							"Past them the transaction forgets, when it commits, what is known of "
							"its database's latest versions, and prunes look rows up.",
							&max_notes,
							LATEST_MAX_OPS, 0, LATEST_MAX_OPS,
							PGC_SUSET,
							GUC_NOT_IN_SAMPLE,
							NULL, NULL, NULL);
#endif
}

Size
latest_shmem_size(void)
{
	return sizeof(LatestShared);
}

void
latest_shmem_request(void)
{
	RequestAddinShmemSpace(latest_shmem_size());
	RequestNamedLWLockTranche("replstamp latest", 1);
}

/* Called with AddinShmemInitLock held. */
void
latest_shmem_startup(void)
{
	bool		found;

	latest_shared = ShmemInitStruct("replstamp latest", latest_shmem_size(), &found);
	if (!found)
	{
		memset(latest_shared, 0, sizeof(LatestShared));
		latest_shared->lock = &(GetNamedLWLockTranche("replstamp latest"))->lock;
	}
}

static LatestSlot *
find_slot(const pg_uuid_t *id)
{
	for (int i = 0; i < LATEST_SLOTS; i++)
	{
		LatestSlot *sl = &latest_shared->slots[i];

		if (sl->dboid == MyDatabaseId && memcmp(sl->id.data, id->data, UUID_LEN) == 0)
			return sl;
	}
	return NULL;
}

/* A slot for id whose window starts at serial; the lock held exclusive. */
static LatestSlot *
new_slot(const pg_uuid_t *id, int64 serial)
{
	LatestSlot *sl = &latest_shared->slots[0];

	for (int i = 0; i < LATEST_SLOTS; i++)
	{
		LatestSlot *c = &latest_shared->slots[i];

		if (c->dboid == InvalidOid)
		{
			sl = c;
			break;
		}
		if (c->used < sl->used)
			sl = c;
	}
	sl->dboid = MyDatabaseId;
	sl->id = *id;
	sl->from = serial - 1;
	memset(sl->bits, 0, sizeof(sl->bits));
	return sl;
}

static inline bool
in_window(const LatestSlot *sl, int64 serial)
{
	return serial > sl->from && serial - sl->from <= LATEST_WINDOW;
}

/* Clear the bits of serials lo .. hi (at most a window of them). */
static void
clear_range(LatestSlot *sl, int64 lo, int64 hi)
{
	int64		s = lo;

	while (s <= hi)
	{
		uint64		pos = (uint64) s % LATEST_WINDOW;
		int			bit = pos % 64;

		if (bit == 0 && hi - s >= 63)
		{
			sl->bits[pos / 64] = 0;
			s += 64;
		}
		else
		{
			sl->bits[pos / 64] &= ~(UINT64CONST(1) << bit);
			s++;
		}
	}
}

/* At commit: record the transaction's notes, in the order it made them. */
static void
apply_ops(void)
{
	LWLockAcquire(latest_shared->lock, LW_EXCLUSIVE);
	if (overflowed)
	{
		/* Too many to keep: nothing of this database is known any more. */
		for (int i = 0; i < LATEST_SLOTS; i++)
			if (latest_shared->slots[i].dboid == MyDatabaseId)
				latest_shared->slots[i].dboid = InvalidOid;
		nops = 0;
	}
	for (int i = 0; i < nops; i++)
	{
		LatestOp   *op = &ops[i];
		LatestSlot *sl = find_slot(&op->id);
		uint64		pos;

		if (sl == NULL)
		{
			if (!op->latest)
				continue;
			sl = new_slot(&op->id, op->serial);
		}
		sl->used = ++latest_shared->tick;
		if (!in_window(sl, op->serial))
			continue;
		pos = (uint64) op->serial % LATEST_WINDOW;
		if (op->latest)
			sl->bits[pos / 64] |= UINT64CONST(1) << (pos % 64);
		else
			sl->bits[pos / 64] &= ~(UINT64CONST(1) << (pos % 64));
	}
	LWLockRelease(latest_shared->lock);
}

static void
forget_ops(void)
{
	ops = NULL;					/* in TopTransactionContext */
	nops = 0;
	maxops = 0;
	sub_marks = NIL;
	overflowed = false;
}

static void
latest_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
			if ((nops > 0 || overflowed) && latest_shared != NULL)
				apply_ops();
			forget_ops();
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PREPARE:
		case XACT_EVENT_PRE_PREPARE:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_PARALLEL_ABORT:
			forget_ops();
			break;
		default:
			break;
	}
}

static void
latest_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						SubTransactionId parentSubid, void *arg)
{
	MemoryContext old;

	switch (event)
	{
		case SUBXACT_EVENT_START_SUB:
			old = MemoryContextSwitchTo(TopTransactionContext);
			sub_marks = lappend_int(sub_marks, nops);
			MemoryContextSwitchTo(old);
			break;
		case SUBXACT_EVENT_COMMIT_SUB:
			if (sub_marks != NIL)
				sub_marks = list_delete_last(sub_marks);
			break;
		case SUBXACT_EVENT_ABORT_SUB:
			if (sub_marks != NIL)
			{
				nops = Min(nops, llast_int(sub_marks));
				sub_marks = list_delete_last(sub_marks);
			}
			break;
		default:
			break;
	}
}

/*
 * Note, for when the current transaction commits, that row_version now
 * records the change (id, serial) as a row's latest version (latest), or
 * that a later version superseded it.
 */
void
latest_note(const pg_uuid_t *id, int64 serial, bool latest)
{
	if (latest_shared == NULL)
		return;
	if (!callbacks_registered)
	{
		RegisterXactCallback(latest_xact_callback, NULL);
		RegisterSubXactCallback(latest_subxact_callback, NULL);
		callbacks_registered = true;
	}
	if (overflowed)
		return;
	if (nops >= max_notes)
	{
		overflowed = true;
		return;
	}
	if (nops >= maxops)
	{
		int			newmax = Max(maxops * 2, 256);

		ops = ops ? repalloc(ops, sizeof(LatestOp) * newmax) :
			MemoryContextAlloc(TopTransactionContext, sizeof(LatestOp) * newmax);
		maxops = newmax;
	}
	ops[nops].id = *id;
	ops[nops].serial = serial;
	ops[nops].latest = latest;
	nops++;
}

/* Is the change known to be the latest version of its row? */
bool
latest_known(const pg_uuid_t *id, int64 serial)
{
	LatestSlot *sl;
	bool		known = false;

	if (latest_shared == NULL)
		return false;
	LWLockAcquire(latest_shared->lock, LW_SHARED);
	sl = find_slot(id);
	if (sl && in_window(sl, serial))
	{
		uint64		pos = (uint64) serial % LATEST_WINDOW;

		known = (sl->bits[pos / 64] & (UINT64CONST(1) << (pos % 64))) != 0;
	}
	LWLockRelease(latest_shared->lock);
	return known;
}

/*
 * The walk has gone through the changes of id up to upto: their bits are
 * not needed any more, and the window moves on past them.
 */
void
latest_walked(const pg_uuid_t *id, int64 upto)
{
	LatestSlot *sl;

	if (latest_shared == NULL)
		return;
	LWLockAcquire(latest_shared->lock, LW_EXCLUSIVE);
	sl = find_slot(id);
	if (sl && upto > sl->from)
	{
		if (upto - sl->from >= LATEST_WINDOW)
			memset(sl->bits, 0, sizeof(sl->bits));
		else
			clear_range(sl, sl->from + 1, upto);
		sl->from = upto;
	}
	LWLockRelease(latest_shared->lock);
}

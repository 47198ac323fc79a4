/*-------------------------------------------------------------------------
 *
 * wakeup.c
 *		The commit counter: a number in shared memory that every commit of
 *		a transaction that wrote to the change log (a stamp here, or a
 *		change applied from a peer) moves on, and the waits on it:
 *		replstamp.wait_for_changes(), which a puller's sync worker keeps
 *		running on each of its peers to learn that there is more to pull
 *		(launcher.c), and replstamp.wait_for(), which waits until this node
 *		holds a given change (read-your-writes).  Also the session's last
 *		committed stamp, replstamp.last_stamp().
 *
 * A wake-up only says "there is more": pullers still pull by vector, so
 * one missed costs latency, never a change.
 *
 * Concurrency contract (fields of replstamp_shared, shmem.h):
 *	- changes_committed is bumped (atomic fetch-add, a full barrier) by the
 *	  transaction callback at commit, which runs once the commit is visible
 *	  to every new snapshot: a reader that saw the counter at n and then
 *	  takes a snapshot sees every commit counted in n;
 *	- change_waiters counts backends inside a wait.  A waiter adds itself
 *	  (a full barrier), joins the condition variable's wait list, and only
 *	  then reads the counter; a committer bumps the counter, then reads
 *	  change_waiters and broadcasts only when it is above zero.  One of the
 *	  two sees the other, so no wait sleeps through a commit, and a commit
 *	  nobody waits for costs one atomic add and one read: no lock.
 *
 * An abort of a transaction that wrote to the log moves the counter too:
 * the serials it releases may let the lowest uncommitted serial pass
 * changes committed meanwhile, which become pullable only then.
 *
 * The counter is one for the server, not per database: a commit in
 * another database wakes a puller for nothing, which costs it one sync.
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/condition_variable.h"
#include "storage/ipc.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"
#include "utils/wait_event.h"

#include "catalog.h"
#include "dbaccess.h"
#include "errors.h"
#include "shmem.h"
#include "wakeup.h"

PG_FUNCTION_INFO_V1(replstamp_wait_for_changes);
PG_FUNCTION_INFO_V1(replstamp_last_stamp);
PG_FUNCTION_INFO_V1(replstamp_wait_for);

/* This transaction wrote to the change log. */
static bool xact_wrote = false;

/* The highest serial this transaction stamped here, and under which ID. */
static bool xact_stamped = false;
static pg_uuid_t xact_stamp_id;
static int64 xact_stamp_serial = 0;

/* The session's last committed stamp. */
static bool session_stamped = false;
static pg_uuid_t session_stamp_id;
static int64 session_stamp_serial = 0;

/* Move the counter on; wake the waiters, if any. */
static void
bump(void)
{
	pg_atomic_fetch_add_u64(&replstamp_shared->changes_committed, 1);
	if (pg_atomic_read_u32(&replstamp_shared->change_waiters) > 0)
		ConditionVariableBroadcast(&replstamp_shared->changes_cv);
}

static void
wakeup_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
			if (xact_wrote)
				bump();
			if (xact_stamped)
			{
				session_stamped = true;
				session_stamp_id = xact_stamp_id;
				session_stamp_serial = xact_stamp_serial;
			}
			xact_wrote = false;
			xact_stamped = false;
			break;
		case XACT_EVENT_ABORT:

			/*
			 * Serials released: the lowest uncommitted serial may move, and
			 * changes committed above them become pullable.
			 */
			if (xact_wrote)
				bump();
			xact_wrote = false;
			xact_stamped = false;
			break;
		case XACT_EVENT_PREPARE:
			xact_wrote = false;
			xact_stamped = false;
			break;
		default:
			break;
	}
}

/*
 * Register the transaction callback.  Called from _PG_init.
 */
void
wakeup_init(void)
{
	RegisterXactCallback(wakeup_xact_callback, NULL);
}

/*
 * The current transaction wrote a change to the log: its commit moves the
 * counter on and wakes the waiters.
 */
void
wakeup_change_written(void)
{
	xact_wrote = true;
}

/*
 * The current transaction stamped a change of this node.  A serial of a
 * savepoint rolled back counts too: the token of a committed transaction
 * is its highest serial, and a vector that covers it covers every change
 * of that transaction (the vector moves past serials that never commit).
 */
void
wakeup_stamped(const pg_uuid_t *replica_id, int64 serial)
{
	if (!xact_stamped || serial > xact_stamp_serial ||
		memcmp(replica_id, &xact_stamp_id, sizeof(pg_uuid_t)) != 0)
	{
		xact_stamp_id = *replica_id;
		xact_stamp_serial = serial;
	}
	xact_stamped = true;
}

/*
 * The highest stamp the current transaction has made here so far (the
 * apply's remedies for constraints read the stamp of the change they just
 * made): false if it made none.
 */
bool
wakeup_xact_stamp(pg_uuid_t *replica_id, int64 *serial)
{
	if (!xact_stamped)
		return false;
	*replica_id = xact_stamp_id;
	*serial = xact_stamp_serial;
	return true;
}

static uint64
counter_now(void)
{
	return pg_atomic_read_u64(&replstamp_shared->changes_committed);
}

static void
waiter_gone(int code, Datum arg)
{
	pg_atomic_fetch_sub_u32(&replstamp_shared->change_waiters, 1);
}

/*
 * Wait until the counter differs from since (it moved on, or the server
 * restarted) or timeout_ms passed; returns the counter.  Interrupts
 * (cancel, terminate, postmaster death) end the wait.
 */
static uint64
wait_counter_moves(uint64 since, int64 timeout_ms)
{
	uint64		now_value;
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);

	pg_atomic_fetch_add_u32(&replstamp_shared->change_waiters, 1);
	PG_ENSURE_ERROR_CLEANUP(waiter_gone, (Datum) 0);
	{
		ConditionVariablePrepareToSleep(&replstamp_shared->changes_cv);
		for (;;)
		{
			long		left;

			now_value = counter_now();
			if (now_value != since)
				break;
			left = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);
			if (left <= 0)
				break;
			(void) ConditionVariableTimedSleep(&replstamp_shared->changes_cv, left,
											   PG_WAIT_EXTENSION);
		}
		ConditionVariableCancelSleep();
	}
	PG_END_ENSURE_ERROR_CLEANUP(waiter_gone, (Datum) 0);
	waiter_gone(0, (Datum) 0);
	return now_value;
}

/* An interval argument as milliseconds, at least 0. */
static int64
interval_ms(Interval *iv)
{
	int64		ms;

	ms = iv->time / 1000 + (int64) iv->day * SECS_PER_DAY * 1000 +
		(int64) iv->month * DAYS_PER_MONTH * SECS_PER_DAY * 1000;
	return Max(ms, 0);
}

/*
 * replstamp.wait_for_changes(since bigint, timeout interval) RETURNS bigint:
 * the commit counter, as soon as it differs from since, or at the timeout.
 * With since NULL, at once.  For pullers (EXECUTE granted like serve()).
 */
Datum
replstamp_wait_for_changes(PG_FUNCTION_ARGS)
{
	int64		timeout_ms;

	shmem_require();
	if (PG_ARGISNULL(0))
		PG_RETURN_INT64((int64) counter_now());
	timeout_ms = PG_ARGISNULL(1) ? 0 : interval_ms(PG_GETARG_INTERVAL_P(1));
	PG_RETURN_INT64((int64) wait_counter_moves((uint64) PG_GETARG_INT64(0), timeout_ms));
}

/*
 * replstamp.last_stamp() RETURNS text: 'replica_id/serial' of the last
 * change this session stamped in a transaction that committed, or NULL.
 */
Datum
replstamp_last_stamp(PG_FUNCTION_ARGS)
{
	shmem_require();
	if (!session_stamped)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(psprintf("%s/" INT64_FORMAT,
											  DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(&session_stamp_id))),
											  session_stamp_serial)));
}

/* Parse 'replica_id/serial'. */
static void
parse_stamp(const char *s, pg_uuid_t *id, int64 *serial)
{
	const char *slash = strchr(s, '/');
	char	   *end;
	Datum		d;

	if (slash == NULL || slash - s != 36)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
				 errmsg("invalid stamp \"%s\"", s),
				 errhint("A stamp reads replica_id/serial, as replstamp.last_stamp() returns it.")));
	d = DirectFunctionCall1(uuid_in, CStringGetDatum(pnstrdup(s, 36)));
	*id = *DatumGetUUIDP(d);
	errno = 0;
	*serial = strtoi64(slash + 1, &end, 10);
	if (errno != 0 || *end != '\0' || end == slash + 1 || *serial <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
				 errmsg("invalid stamp \"%s\"", s),
				 errhint("A stamp reads replica_id/serial, as replstamp.last_stamp() returns it.")));
}

/* Does this node hold the change, in a snapshot taken now? */
static bool
holds_change(pg_uuid_t *id, int64 serial)
{
	ReplstampOwnerContext ctx;
	Oid			types[2] = {UUIDOID, INT8OID};
	Datum		values[2] = {UUIDPGetDatum(id), Int64GetDatum(serial)};
	bool		held;

	dbaccess_become_owner(&ctx);
	SPI_connect();
	dbaccess_spi_exec("SELECT EXISTS (SELECT 1 FROM replstamp.vector "
					  "WHERE replica_id OPERATOR(pg_catalog.=) $1 AND serial OPERATOR(pg_catalog.>=) $2) "
					  "OR EXISTS (SELECT 1 FROM replstamp.changes "
					  "WHERE replica_id OPERATOR(pg_catalog.=) $1 AND serial OPERATOR(pg_catalog.=) $2)",
					  2, types, values, NULL, SPI_OK_SELECT);
	held = SPI_processed == 1 &&
		strcmp(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1), "t") == 0;
	SPI_finish();
	dbaccess_restore_user(&ctx);
	return held;
}

/*
 * replstamp.wait_for(stamp text, timeout interval) RETURNS boolean: true as
 * soon as this node holds the change (its vector covers the serial, or the
 * change is in the log), false at the timeout.  It sleeps until a commit
 * of changes here, and looks again, each time in a new snapshot.
 */
Datum
replstamp_wait_for(PG_FUNCTION_ARGS)
{
	pg_uuid_t	id;
	int64		serial;
	TimestampTz deadline;
	bool		held;

	shmem_require();
	(void) catalog_get_v11("replstamp.wait_for()");
	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
				 errmsg("replstamp.wait_for() cannot wait in a transaction that keeps one snapshot"),
				 errdetail("Under REPEATABLE READ or SERIALIZABLE a change that arrives later stays invisible."),
				 errhint("Call it in a READ COMMITTED transaction, before the reads it guards.")));
	parse_stamp(text_to_cstring(PG_GETARG_TEXT_PP(0)), &id, &serial);
	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
										   PG_ARGISNULL(1) ? 0 : interval_ms(PG_GETARG_INTERVAL_P(1)));
	for (;;)
	{
		/* Read before looking: a commit after the look moves it on. */
		uint64		seen = counter_now();
		long		left;

		held = holds_change(&id, serial);
		if (held)
			break;
		left = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);
		if (left <= 0)
			break;
		(void) wait_counter_moves(seen, left);
	}
	PG_RETURN_BOOL(held);
}

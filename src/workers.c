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
#include "postmaster/bgworker.h"
#include "access/xact.h"
#include "utils/guc.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "workers.h"

/*
 * Start a short-lived worker connected to database dboid, running
 * function; extra goes to bgw_extra (the role to connect as goes first).
 * With handle, this backend is told when it stops; without, nobody is.
 */
bool
replstamp_start_worker(const char *function, const char *type, Oid dboid,
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
 * In a worker started by replstamp_start_worker(): unblock signals, connect
 * to the database of main_arg as the role chosen by the starter, and copy
 * the rest of bgw_extra to extra.
 */
void
replstamp_worker_connect(Datum main_arg, void *extra, Size extralen)
{
	Oid			userid;

	memcpy(&userid, MyBgworkerEntry->bgw_extra, sizeof(Oid));
	if (extra)
		memcpy(extra, MyBgworkerEntry->bgw_extra + sizeof(Oid), extralen);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(DatumGetObjectId(main_arg), userid, 0);
	worker_pin_settings();
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
		 * tables: compiling one (jit_above_cost is met by a large change
		 * log) takes longer than running it.
		 */
		{"jit", "off"},
	};

	for (int i = 0; i < lengthof(pinned); i++)
		SetConfigOption(pinned[i][0], pinned[i][1], PGC_SUSET, PGC_S_OVERRIDE);
}

/*
 * Every database that accepts connections.  Call inside a transaction; the
 * list is allocated in the current context.
 */
List *
replstamp_connectable_databases(void)
{
	List	   *dbs = NIL;
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tuple;

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

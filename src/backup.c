/*-------------------------------------------------------------------------
 *
 * backup.c
 *		The state flip around a backup, in every database of the cluster
 *		that has replstamp: replstamp.prepare_backup() marks each one
 *		'backup' and records its serials, so that any snapshot taken until
 *		replstamp.finish_backup() carries the mark.  replstamp.backup()
 *		(basebackup.c) uses the same flip around its own copy.
 *
 * A backend can only write its own database, so the flip of each database
 * is done by a short-lived background worker connected to it, all started
 * at once; the caller waits for each and collects its outcome from shared
 * memory.  Each worker commits with synchronous_commit = on before it
 * reports, so a flip that was reported is durable before the backup starts.
 *
 * Before it flips, a worker runs the identity check of its database: a
 * database not verified since the server started (a restored copy whose
 * check has not run yet) must rotate now, not see the state that the live
 * node's own backup sets and take it for a restore.
 *
 * Concurrency contract:
 *	- BackupShared is protected by its spinlock;
 *	- one flip at a time in the whole cluster: flip_owner holds the PID of
 *	  the backend collecting outcomes in db[]; a dead owner's claim is
 *	  taken over;
 *	- a worker writes only its own db[] entry, and only when started with
 *	  a result index (a fire-and-forget flip back from an exiting backend
 *	  reports nowhere);
 *	- the label is read by prepare workers while the owner waits for them.
 *
 * Copyright (c) 2026, the replstamp authors
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_database.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "backup.h"
#include "identity.h"
#include "replstamp.h"
#include "serial.h"

PG_FUNCTION_INFO_V1(replstamp_prepare_backup);
PG_FUNCTION_INFO_V1(replstamp_finish_backup);

PGDLLEXPORT void replstamp_backup_flip_main(Datum arg);

#define FLIP_MAX_DBS		256
#define FLIP_MESSAGE_LEN	256
#define FLIP_LABEL_LEN		1024

typedef enum FlipStatus
{
	FLIP_PENDING = 0,			/* the worker has not reported */
	FLIP_DONE,					/* the state was changed */
	FLIP_NOT_INSTALLED,			/* no replstamp in this database */
	FLIP_UNCHANGED,				/* already in the requested state */
	FLIP_FAILED					/* error; see message */
} FlipStatus;

/* What a worker is asked to do, in bgw_extra. */
typedef struct FlipRequest
{
	bool		to_backup;
	int			result_index;	/* db[] entry to report to, or -1 */
} FlipRequest;

typedef struct BackupShared
{
	slock_t		mutex;
	pid_t		flip_owner;		/* backend running a flip, or 0 */
	pid_t		backup_owner;	/* backend running replstamp.backup(), or 0 */
	char		label[FLIP_LABEL_LEN];
	struct
	{
		FlipStatus	status;
		char		message[FLIP_MESSAGE_LEN];
	}			db[FLIP_MAX_DBS];
} BackupShared;

static BackupShared *backup_shared = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static void
backup_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(sizeof(BackupShared));
}

static void
backup_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	backup_shared = ShmemInitStruct("replstamp backup", sizeof(BackupShared), &found);
	if (!found)
	{
		memset(backup_shared, 0, sizeof(BackupShared));
		SpinLockInit(&backup_shared->mutex);
	}
	LWLockRelease(AddinShmemInitLock);
}

/*
 * Shared memory for the flip.  Called from _PG_init.
 */
void
backup_init(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = backup_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = backup_shmem_startup;
}

/*
 * Claim *slot for this backend.  A claim by a backend that no longer exists
 * is taken over.  Returns the PID of a live holder, or 0 on success.
 */
static pid_t
claim(pid_t *slot)
{
	pid_t		holder;

	serial_require_shmem();
	SpinLockAcquire(&backup_shared->mutex);
	holder = *slot;
	if (holder == 0 || holder == MyProcPid)
		*slot = MyProcPid;
	SpinLockRelease(&backup_shared->mutex);
	if (holder == 0 || holder == MyProcPid)
		return 0;

	/* Is the holder still there?  (It may have died in a crash of its own.) */
	if (BackendPidGetProc(holder) == NULL && kill(holder, 0) != 0)
	{
		SpinLockAcquire(&backup_shared->mutex);
		if (*slot == holder)
			*slot = MyProcPid;
		holder = (*slot == MyProcPid) ? 0 : *slot;
		SpinLockRelease(&backup_shared->mutex);
	}
	return holder;
}

static void
release(pid_t *slot)
{
	SpinLockAcquire(&backup_shared->mutex);
	if (*slot == MyProcPid)
		*slot = 0;
	SpinLockRelease(&backup_shared->mutex);
}

void
backup_claim_owner(void)
{
	pid_t		holder = claim(&backup_shared->backup_owner);

	if (holder != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_IN_USE),
				 errmsg("another replstamp.backup() is running in process %d", (int) holder),
				 errhint("Wait for it to finish, or cancel it with pg_cancel_backend(%d).",
						 (int) holder)));
}

void
backup_release_owner(void)
{
	if (backup_shared)
		release(&backup_shared->backup_owner);
}

/*
 * The databases a flip visits: every one that accepts connections.
 * Call inside a transaction; the list is allocated in the current context.
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

static bool
start_flip_worker(Oid dboid, bool to_backup, int result_index,
				  BackgroundWorkerHandle **handle)
{
	FlipRequest req;

	StaticAssertStmt(sizeof(FlipRequest) <= BGW_EXTRALEN, "FlipRequest too large");
	req.to_backup = to_backup;
	req.result_index = result_index;
	return replstamp_start_worker("replstamp_backup_flip_main", "replstamp backup flip",
								  dboid, &req, sizeof(req), handle);
}

/*
 * Run the flip in every database in dbs (one worker each, concurrently) and
 * return the databases whose state changed.  On the way to 'backup', the
 * first failure flips back the databases already flipped and raises the
 * error; on the way back, failures are reported as WARNINGs and the others
 * go on.
 */
List *
backup_flip(List *dbs, bool to_backup, const char *label)
{
	List	   *volatile changed = NIL;
	ListCell   *lc;
	pid_t		holder;
	char	   *volatile failed_db = NULL;
	char		failed_msg[FLIP_MESSAGE_LEN] = "";
	volatile FlipStatus failed_status = FLIP_PENDING;

	if (list_length(dbs) > FLIP_MAX_DBS)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("replstamp can flip at most %d databases, this cluster has %d",
						FLIP_MAX_DBS, list_length(dbs))));

	holder = claim(&backup_shared->flip_owner);
	if (holder != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_IN_USE),
				 errmsg("process %d is changing the backup state right now", (int) holder),
				 errhint("Try again in a moment.")));

	PG_TRY();
	{
		BackgroundWorkerHandle **handles;

		SpinLockAcquire(&backup_shared->mutex);
		strlcpy(backup_shared->label, label ? label : "", FLIP_LABEL_LEN);
		SpinLockRelease(&backup_shared->mutex);

		/* Start one worker per database, all at once ... */
		handles = palloc0(sizeof(BackgroundWorkerHandle *) * Max(list_length(dbs), 1));
		foreach(lc, dbs)
		{
			int			n = foreach_current_index(lc);

			SpinLockAcquire(&backup_shared->mutex);
			backup_shared->db[n].status = FLIP_PENDING;
			backup_shared->db[n].message[0] = '\0';
			SpinLockRelease(&backup_shared->mutex);
			if (!start_flip_worker(lfirst_oid(lc), to_backup, n, &handles[n]))
			{
				/* Out of worker slots: let the ones started finish, retry. */
				for (int k = 0; k < n; k++)
					if (handles[k] != NULL)
						(void) WaitForBackgroundWorkerShutdown(handles[k]);
				if (!start_flip_worker(lfirst_oid(lc), to_backup, n, &handles[n]))
					handles[n] = NULL;
			}
		}

		/* ... then collect their outcomes in order. */
		foreach(lc, dbs)
		{
			Oid			dboid = lfirst_oid(lc);
			int			n = foreach_current_index(lc);
			FlipStatus	status;
			char		message[FLIP_MESSAGE_LEN];

			if (handles[n] == NULL)
			{
				status = FLIP_FAILED;
				strlcpy(message, "could not start a background worker (max_worker_processes is exhausted)",
						sizeof(message));
			}
			else
			{
				(void) WaitForBackgroundWorkerShutdown(handles[n]);
				SpinLockAcquire(&backup_shared->mutex);
				status = backup_shared->db[n].status;
				strlcpy(message, backup_shared->db[n].message, sizeof(message));
				SpinLockRelease(&backup_shared->mutex);
				if (status == FLIP_PENDING)
					strlcpy(message, "the background worker exited without reporting", sizeof(message));
			}

			if (status == FLIP_DONE)
				changed = lappend_oid(changed, dboid);
			else if (status == FLIP_FAILED || status == FLIP_PENDING ||
					 (status == FLIP_UNCHANGED && to_backup))
			{
				char	   *dbname = get_database_name(dboid);

				if (!to_backup)
					ereport(WARNING,
							(errmsg("could not mark database \"%s\" 'original' again: %s",
									dbname ? dbname : "?", message),
							 errhint("Run SELECT replstamp.finish_backup() once the cause is fixed.")));
				else if (failed_db == NULL)
				{
					/* Remember the first failure; wait for the others. */
					failed_db = dbname ? dbname : psprintf("%u", dboid);
					failed_status = status;
					strlcpy(failed_msg, message, sizeof(failed_msg));
				}
			}
		}
	}
	PG_FINALLY();
	{
		release(&backup_shared->flip_owner);
	}
	PG_END_TRY();

	if (failed_db != NULL)
	{
		/* Undo what this call did, then report the first failure. */
		if (changed != NIL)
			(void) backup_flip(changed, false, NULL);
		if (failed_status == FLIP_UNCHANGED)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("a backup is already in progress in database \"%s\"", failed_db),
					 errhint("Wait for it to end, or call SELECT replstamp.finish_backup() if it was abandoned.")));
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("could not mark database \"%s\" 'backup': %s", failed_db, failed_msg)));
	}
	return changed;
}

/*
 * From a backend that is exiting: start the flip back of dbs and do not
 * wait.  Best effort; a database left 'backup' is reported by the next
 * prepare_backup() and fixed by finish_backup().
 */
void
backup_flip_back_detached(List *dbs)
{
	ListCell   *lc;

	foreach(lc, dbs)
	{
		if (!start_flip_worker(lfirst_oid(lc), false, -1, NULL))
			ereport(WARNING,
					(errmsg("could not start the background worker that marks database %u 'original' again",
							lfirst_oid(lc)),
					 errhint("Run SELECT replstamp.finish_backup().")));
	}
}

/* A comma-separated list of database names, for messages. */
char *
backup_database_names(List *dbs)
{
	StringInfoData buf;
	ListCell   *lc;

	initStringInfo(&buf);
	foreach(lc, dbs)
	{
		char	   *name = get_database_name(lfirst_oid(lc));

		appendStringInfo(&buf, "%s%s", buf.len ? ", " : "", name ? name : "?");
	}
	return buf.data;
}

/*
 * The flip in the current database, in the current transaction, as the
 * extension owner.
 */
static FlipStatus
flip_here(bool to_backup, const char *label)
{
	const ReplstampCatalog *cat = replstamp_catalog(false);
	ReplstampOwnerContext ctx;
	FlipStatus	result = FLIP_DONE;
	int			ret;

	replstamp_become_owner(&ctx);
	SPI_connect();
	if (to_backup)
	{
		Oid			types[3] = {INT8OID, INT8OID, TEXTOID};
		Datum		values[3];

		ret = SPI_execute("SELECT state FROM replstamp.node FOR UPDATE", false, 0);
		if (ret != SPI_OK_SELECT || SPI_processed != 1)
			elog(ERROR, "replstamp.node has no row");
		if (strcmp(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1),
				   REPLSTAMP_STATE_BACKUP) == 0)
			result = FLIP_UNCHANGED;
		else
		{
			/* The node row is locked: read the serials now. */
			values[0] = Int64GetDatum(serial_lus(cat->serial_seq));
			values[1] = Int64GetDatum(serial_next(cat->serial_seq));
			values[2] = CStringGetTextDatum(label);
			ret = SPI_execute_with_args("UPDATE replstamp.node SET state = 'backup', "
										"backup_lus = $1, backup_next_serial = $2, "
										"backup_label = $3, backup_started_at = pg_catalog.now()",
										3, types, values, NULL, false, 0);
			if (ret != SPI_OK_UPDATE)
				elog(ERROR, "could not flip the state: %s", SPI_result_code_string(ret));
		}
	}
	else
	{
		ret = SPI_execute("UPDATE replstamp.node SET state = 'original', "
						  "last_backup_at = pg_catalog.now() "
						  "WHERE state = 'backup'", false, 0);
		if (ret != SPI_OK_UPDATE)
			elog(ERROR, "could not flip the state: %s", SPI_result_code_string(ret));
		if (SPI_processed == 0)
			result = FLIP_UNCHANGED;
	}
	SPI_finish();
	replstamp_restore_user(&ctx);
	return result;
}

static void
report(int index, FlipStatus status, const char *message)
{
	if (index < 0 || index >= FLIP_MAX_DBS)
		return;
	SpinLockAcquire(&backup_shared->mutex);
	backup_shared->db[index].status = status;
	strlcpy(backup_shared->db[index].message, message ? message : "", FLIP_MESSAGE_LEN);
	SpinLockRelease(&backup_shared->mutex);
}

/*
 * The worker: connect to one database, check its identity, flip its state,
 * commit durably, report.
 */
void
replstamp_backup_flip_main(Datum arg)
{
	Oid			dboid = DatumGetObjectId(arg);
	FlipRequest req;
	FlipStatus	status = FLIP_FAILED;
	char	   *message = NULL;
	char		label[FLIP_LABEL_LEN];
	MemoryContext topcxt = CurrentMemoryContext;

	memcpy(&req, MyBgworkerEntry->bgw_extra, sizeof(req));
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
	SetConfigOption("synchronous_commit", "on", PGC_SUSET, PGC_S_OVERRIDE);

	SpinLockAcquire(&backup_shared->mutex);
	strlcpy(label, backup_shared->label, sizeof(label));
	SpinLockRelease(&backup_shared->mutex);

	PG_TRY();
	{
		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		PushActiveSnapshot(GetTransactionSnapshot());
		pgstat_report_activity(STATE_RUNNING, req.to_backup ?
							   "replstamp: marking the database 'backup'" :
							   "replstamp: marking the database 'original'");
		if (!OidIsValid(get_extension_oid("replstamp", true)))
			status = FLIP_NOT_INSTALLED;
		else
		{
			identity_verify_slow();
			status = flip_here(req.to_backup, label);
		}
		PopActiveSnapshot();
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(topcxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		status = FLIP_FAILED;
		message = edata->message;
		ereport(LOG,
				(errmsg("replstamp: could not change the backup state of database %u: %s",
						dboid, edata->message)));
	}
	PG_END_TRY();

	report(req.result_index, status, message);
	if (req.result_index < 0 && status == FLIP_DONE)
		ereport(LOG,
				(errmsg("replstamp: database %u marked 'original' again after an interrupted backup",
						dboid)));
	pgstat_report_activity(STATE_IDLE, NULL);
	proc_exit(0);
}

/*
 * replstamp.prepare_backup(label text DEFAULT NULL) RETURNS text: mark every
 * database with replstamp 'backup' and record its lowest uncommitted serial,
 * next serial, the label and the start time.  Returns the label.
 */
Datum
replstamp_prepare_backup(PG_FUNCTION_ARGS)
{
	char	   *label;
	List	   *changed;

	PreventInTransactionBlock(true, "replstamp.prepare_backup()");
	(void) replstamp_catalog(false);
	if (RecoveryInProgress())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("replstamp.prepare_backup() cannot run during recovery"),
				 errhint("Run it on the primary.")));

	if (PG_ARGISNULL(0))
		label = psprintf("replstamp %s", timestamptz_to_str(GetCurrentTimestamp()));
	else
		label = text_to_cstring(PG_GETARG_TEXT_PP(0));
	if (strlen(label) >= FLIP_LABEL_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
				 errmsg("backup label too long (maximum %d bytes)", FLIP_LABEL_LEN - 1)));

	changed = backup_flip(replstamp_connectable_databases(), true, label);
	ereport(NOTICE,
			(errmsg("marked 'backup': %s", backup_database_names(changed)),
			 errhint("Take the backup now, then call SELECT replstamp.finish_backup().")));
	PG_RETURN_TEXT_P(cstring_to_text(label));
}

/*
 * replstamp.finish_backup() RETURNS void: mark every database that is
 * 'backup' 'original' again.
 */
Datum
replstamp_finish_backup(PG_FUNCTION_ARGS)
{
	List	   *changed;

	(void) replstamp_catalog(false);
	changed = backup_flip(replstamp_connectable_databases(), false, NULL);
	if (changed == NIL)
		ereport(WARNING,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("no backup is in progress"),
				 errhint("Call SELECT replstamp.prepare_backup() before the backup starts.")));
	else
		ereport(NOTICE,
				(errmsg("marked 'original': %s", backup_database_names(changed))));
	PG_RETURN_VOID();
}

/*-------------------------------------------------------------------------
 *
 * backup_mark.c
 *		The state flip around a backup, in every database of the cluster
 *		that has replstamp: replstamp.prepare_backup() marks each one
 *		'backup' and records its serials, so that any snapshot taken until
 *		replstamp.finish_backup() carries the mark.  replstamp.backup()
 *		(basebackup.c) uses the same flip around its own copy.
 *
 * A backend can only write its own database, so the flip of each database
 * is done by a short-lived background worker connected to it, up to
 * FLIP_BATCH at once (a cluster with more databases is flipped batch after
 * batch); the caller waits for each and collects its outcome from shared
 * memory.  Each worker commits with synchronous_commit = on before it
 * reports, so a flip that was reported is durable before the backup starts.
 *
 * Before it flips, a worker runs the identity check of its database: a
 * database not verified since the server started (a restored copy whose
 * check has not run yet) must rotate now, not see the state that the live
 * node's own backup sets and take it for a restore.
 *
 * Concurrency contract (fields of replstamp_shared, shmem.h):
 *	- flip_owner, backup_owner, flip_label and flip[] are protected by
 *	  mutex;
 *	- one flip at a time in the whole cluster: flip_owner holds the PID of
 *	  the backend collecting outcomes in flip[]; a claim is released by its
 *	  owner, at the latest by a before_shmem_exit callback when it exits;
 *	- a worker writes only its own flip[] entry, and only when started
 *	  with a result index (a fire-and-forget flip back from an exiting
 *	  backend reports nowhere);
 *	- the label is read by prepare workers while the owner waits for them.
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
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

#include "backup_mark.h"
#include "catalog.h"
#include "compat.h"
#include "dbaccess.h"
#include "errors.h"
#include "identity.h"
#include "serial.h"
#include "shmem.h"
#include "workers.h"

PG_FUNCTION_INFO_V1(replstamp_prepare_backup);
PG_FUNCTION_INFO_V1(replstamp_finish_backup);

PGDLLEXPORT void replstamp_backup_flip_main(Datum arg);

/* What a worker is asked to do, in bgw_extra. */
typedef struct FlipRequest
{
	bool		to_backup;
	int			result_index;	/* flip[] entry to report to, or -1 */
} FlipRequest;

static bool exit_callback_registered = false;

static void release(pid_t *slot);

/* An exiting backend gives up what it claimed. */
static void
release_claims(int code, Datum arg)
{
	if (replstamp_shared == NULL)
		return;
	release(&replstamp_shared->flip_owner);
	release(&replstamp_shared->backup_owner);
}

/*
 * Claim *slot for this backend.  Returns the PID of the holder, or 0 on
 * success.  A claim is released by release(), or when its backend exits.
 */
static pid_t
claim(pid_t *slot)
{
	pid_t		holder;

	shmem_require();
	if (!exit_callback_registered)
	{
		before_shmem_exit(release_claims, (Datum) 0);
		exit_callback_registered = true;
	}
	SpinLockAcquire(&replstamp_shared->mutex);
	holder = *slot;
	if (holder == 0 || holder == MyProcPid)
		*slot = MyProcPid;
	SpinLockRelease(&replstamp_shared->mutex);
	return (holder == 0 || holder == MyProcPid) ? 0 : holder;
}

static void
release(pid_t *slot)
{
	SpinLockAcquire(&replstamp_shared->mutex);
	if (*slot == MyProcPid)
		*slot = 0;
	SpinLockRelease(&replstamp_shared->mutex);
}

void
backup_mark_claim_owner(void)
{
	pid_t		holder = claim(&replstamp_shared->backup_owner);

	if (holder != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_IN_USE),
				 errmsg("another replstamp.backup() is running in process %d", (int) holder),
				 errhint("Wait for it to finish, or cancel it with pg_cancel_backend(%d).",
						 (int) holder)));
}

void
backup_mark_release_owner(void)
{
	if (replstamp_shared)
		release(&replstamp_shared->backup_owner);
}

/* How long a flip waits for a free background worker slot. */
#define FLIP_SLOT_WAIT_MS	10000

/* The last flip failed for want of a worker slot. */
static bool flip_slots_short = false;

static bool
start_flip_worker(Oid dboid, bool to_backup, int result_index,
				  BackgroundWorkerHandle **handle)
{
	FlipRequest req;

	StaticAssertStmt(sizeof(FlipRequest) + sizeof(Oid) <= BGW_EXTRALEN, "FlipRequest too large");
	req.to_backup = to_backup;
	req.result_index = result_index;
	return worker_start("replstamp_backup_flip_main", "replstamp backup flip",
						dboid, InvalidOid, &req, sizeof(req), handle);
}

/*
 * Flip the databases in batch (at most FLIP_BATCH), one worker each,
 * concurrently; append the ones whose state changed to *changed, and note
 * the first failure on the way to 'backup'.  Caller holds flip_owner.
 */
static void
flip_batch(List *batch, bool to_backup, List **changed, char **failed_db,
		   FlipStatus *failed_status, char *failed_msg)
{
	ListCell   *lc;
	BackgroundWorkerHandle **handles;

	Assert(list_length(batch) <= FLIP_BATCH);
	Assert(replstamp_shared->flip_owner == MyProcPid);

	/* Start one worker per database, all at once ... */
	handles = palloc0(sizeof(BackgroundWorkerHandle *) * Max(list_length(batch), 1));
	foreach(lc, batch)
	{
		int			n = foreach_current_index(lc);

		SpinLockAcquire(&replstamp_shared->mutex);
		replstamp_shared->flip[n].status = FLIP_PENDING;
		replstamp_shared->flip[n].message[0] = '\0';
		SpinLockRelease(&replstamp_shared->mutex);
		if (!start_flip_worker(lfirst_oid(lc), to_backup, n, &handles[n]))
		{
			/*
			 * Out of worker slots: let the ones started finish, then wait a
			 * while for one to come free (workers that start with the
			 * server, or a verify, hold them for a moment).
			 */
			for (int k = 0; k < n; k++)
				if (handles[k] != NULL)
					(void) WaitForBackgroundWorkerShutdown(handles[k]);
			handles[n] = NULL;
			for (int waited = 0; waited <= FLIP_SLOT_WAIT_MS; waited += 100)
			{
				if (start_flip_worker(lfirst_oid(lc), to_backup, n, &handles[n]))
					break;
				handles[n] = NULL;
				(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
								 100L, PG_WAIT_EXTENSION);
				ResetLatch(MyLatch);
				CHECK_FOR_INTERRUPTS();
			}
		}
	}

	/* ... then collect their outcomes in order. */
	foreach(lc, batch)
	{
		Oid			dboid = lfirst_oid(lc);
		int			n = foreach_current_index(lc);
		FlipStatus	status;
		char		message[FLIP_MESSAGE_LEN];

		if (handles[n] == NULL)
		{
			status = FLIP_FAILED;
			flip_slots_short = true;
			snprintf(message, sizeof(message),
					 "could not start a background worker: all max_worker_processes (%d) were busy for %d s",
					 max_worker_processes, FLIP_SLOT_WAIT_MS / 1000);
		}
		else
		{
			(void) WaitForBackgroundWorkerShutdown(handles[n]);
			SpinLockAcquire(&replstamp_shared->mutex);
			status = replstamp_shared->flip[n].status;
			strlcpy(message, replstamp_shared->flip[n].message, sizeof(message));
			SpinLockRelease(&replstamp_shared->mutex);
			if (status == FLIP_PENDING)
				strlcpy(message, "the background worker exited without reporting", sizeof(message));
		}

		if (status == FLIP_DONE)
			*changed = lappend_oid(*changed, dboid);
		else if (status == FLIP_FAILED || status == FLIP_PENDING ||
				 (status == FLIP_UNCHANGED && to_backup))
		{
			char	   *dbname = get_database_name(dboid);

			if (!to_backup)
				ereport(WARNING,
						(errmsg("could not mark database \"%s\" 'original' again: %s",
								dbname ? dbname : "?", message),
						 errhint("Run SELECT replstamp.finish_backup() once the cause is fixed.")));
			else if (*failed_db == NULL)
			{
				/* Remember the first failure; wait for the others. */
				*failed_db = dbname ? dbname : psprintf("%u", dboid);
				*failed_status = status;
				strlcpy(failed_msg, message, FLIP_MESSAGE_LEN);
			}
		}
	}
}

/*
 * Run the flip in every database in dbs (one worker each, up to FLIP_BATCH
 * at a time) and return the databases whose state changed.  On the way to
 * 'backup', the first failure flips back the databases already flipped and
 * raises the error; on the way back, failures are reported as WARNINGs and
 * the others go on.
 */
List *
backup_mark_flip(List *dbs, bool to_backup, const char *label)
{
	List	   *volatile changed = NIL;
	pid_t		holder;
	char	   *volatile failed_db = NULL;
	char		failed_msg[FLIP_MESSAGE_LEN] = "";
	volatile FlipStatus failed_status = FLIP_PENDING;

	flip_slots_short = false;
	holder = claim(&replstamp_shared->flip_owner);
	if (holder != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_IN_USE),
				 errmsg("process %d is changing the backup state right now", (int) holder),
				 errhint("Try again in a moment.")));

	PG_TRY();
	{
		List	   *changed_here = NIL;
		char	   *failed_here = NULL;
		FlipStatus	status_here = FLIP_PENDING;

		SpinLockAcquire(&replstamp_shared->mutex);
		strlcpy(replstamp_shared->flip_label, label ? label : "", FLIP_LABEL_LEN);
		SpinLockRelease(&replstamp_shared->mutex);

		for (int start = 0; start < list_length(dbs) && failed_here == NULL; start += FLIP_BATCH)
		{
			List	   *batch = list_copy_tail(dbs, start);

			if (list_length(batch) > FLIP_BATCH)
				batch = list_truncate(batch, FLIP_BATCH);
			flip_batch(batch, to_backup, &changed_here, &failed_here, &status_here, failed_msg);
		}
		changed = changed_here;
		failed_db = failed_here;
		failed_status = status_here;
	}
	PG_FINALLY();
	{
		release(&replstamp_shared->flip_owner);
	}
	PG_END_TRY();

	if (failed_db != NULL)
	{
		bool		slots_short = flip_slots_short;

		/* Undo what this call did, then report the first failure. */
		if (changed != NIL)
			(void) backup_mark_flip(changed, false, NULL);
		if (failed_status == FLIP_UNCHANGED)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("a backup is already in progress in database \"%s\"", failed_db),
					 errhint("Wait for it to end, or call SELECT replstamp.finish_backup() if it was abandoned.")));
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("could not mark database \"%s\" 'backup': %s", failed_db, failed_msg),
				 slots_short ?
				 errhint("Raise max_worker_processes (replstamp needs one slot per database being marked, beside its sync and other workers), or take the backup when fewer workers run.") : 0));
	}
	return changed;
}

/*
 * From a backend that is exiting: start the flip back of dbs and do not
 * wait.  Best effort; a database left 'backup' is reported by the next
 * prepare_backup() and fixed by finish_backup().
 */
void
backup_mark_flip_back_detached(List *dbs)
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
backup_mark_database_names(List *dbs)
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
	const ReplstampCatalog *cat = catalog_get(false);
	ReplstampOwnerContext ctx;
	FlipStatus	result = FLIP_DONE;
	int			ret;

	dbaccess_become_owner(&ctx);
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
	dbaccess_restore_user(&ctx);
	return result;
}

static void
report(int index, FlipStatus status, const char *message)
{
	if (index < 0 || index >= FLIP_BATCH)
		return;
	SpinLockAcquire(&replstamp_shared->mutex);
	replstamp_shared->flip[index].status = status;
	strlcpy(replstamp_shared->flip[index].message, message ? message : "", FLIP_MESSAGE_LEN);
	SpinLockRelease(&replstamp_shared->mutex);
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

	pqsignal(SIGTERM, die);
	worker_connect(arg, &req, sizeof(req));
	SetConfigOption("synchronous_commit", "on", PGC_SUSET, PGC_S_OVERRIDE);

	SpinLockAcquire(&replstamp_shared->mutex);
	strlcpy(label, replstamp_shared->flip_label, sizeof(label));
	SpinLockRelease(&replstamp_shared->mutex);

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
	(void) catalog_get(false);
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

	changed = backup_mark_flip(worker_connectable_databases(), true, label);
	ereport(NOTICE,
			(errmsg("marked 'backup': %s", backup_mark_database_names(changed)),
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

	(void) catalog_get(false);
	changed = backup_mark_flip(worker_connectable_databases(), false, NULL);
	if (changed == NIL)
		ereport(WARNING,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("no backup is in progress"),
				 errhint("Call SELECT replstamp.prepare_backup() before the backup starts.")));
	else
		ereport(NOTICE,
				(errmsg("marked 'original': %s", backup_mark_database_names(changed))));
	PG_RETURN_VOID();
}

/*-------------------------------------------------------------------------
 *
 * identity.c
 *		The identity check: after every server start, each database with
 *		replstamp finds out whether it is a restored or copied data set and,
 *		if so, retires its replica ID and mints a new one before it stamps
 *		anything.  Also replstamp.rotate() and the vector entry of a retired
 *		ID.
 *
 * Signals that this data set is not the one that minted its replica ID
 * (any one is enough; all that apply are recorded as the reason):
 *	- replstamp.node.state = 'backup': a backup flipped by replstamp;
 *	- backup_label.old changed: PostgreSQL renames a base backup's
 *	  backup_label to backup_label.old when recovery from it ends, whoever
 *	  took the backup; the fingerprint (database OID, START WAL LOCATION,
 *	  START TIME, LABEL) is kept in node.restore_fingerprint;
 *	- the database OID changed (CREATE DATABASE ... TEMPLATE copied it);
 *	- the timeline changed (point-in-time recovery, promoted standby);
 *	- the system identifier changed (a copy into another cluster).
 *
 * Who checks: the launcher (launcher.c), once recovery has finished, starts
 * one worker per database not verified yet, in turn.  Until a database is verified, the stamp
 * trigger does the check itself, inside the writer's transaction.
 *
 * Concurrency contract:
 *	- the check locks the node row (SELECT ... FOR UPDATE) before it reads
 *	  it, so checks of one database run one after the other; a check that
 *	  waited sees the row the previous one committed, finds no signal left,
 *	  and rotates nothing: exactly one rotation happens;
 *	- IdentityShared.db[] is protected by IdentityShared->lock; an entry is
 *	  marked verified only after the transaction that checked (and maybe
 *	  rotated) has committed, by the worker after CommitTransactionCommand,
 *	  and in a backend by its commit callback; an aborted check leaves the
 *	  database unverified and the next stamp checks again;
 *	- shared memory is recreated at every start, crash restarts included,
 *	  so every start is checked.
 *
 * Copyright (c) 2026, the replstamp authors
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <sys/stat.h>

#include "access/xact.h"
#include "access/xlog.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/uuid.h"

#include "identity.h"
#include "replstamp.h"
#include "serial.h"

PG_FUNCTION_INFO_V1(replstamp_rotate);

PGDLLEXPORT void replstamp_identity_db_main(Datum arg);

#define IDENTITY_MAX_DBS	256

typedef struct IdentityShared
{
	LWLock	   *lock;			/* protects ndbs and db[] */
	int			ndbs;
	struct
	{
		Oid			dboid;
		bool		verified;
	}			db[IDENTITY_MAX_DBS];
} IdentityShared;

static IdentityShared *identity_shared = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/* GUCs */
static bool rotate_on_restore = true;
static int	debug_rotation_pause = 0;

/* Backend-local */
bool		identity_local_verified = false;
static bool verify_at_commit = false;
static bool checked_in_xact = false;
static bool callback_registered = false;

static void
identity_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(sizeof(IdentityShared));
	RequestNamedLWLockTranche("replstamp_identity", 1);
}

static void
identity_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	identity_shared = ShmemInitStruct("replstamp identity", sizeof(IdentityShared),
									  &found);
	if (!found)
	{
		identity_shared->lock = &(GetNamedLWLockTranche("replstamp_identity"))->lock;
		identity_shared->ndbs = 0;
	}
	LWLockRelease(AddinShmemInitLock);
}

/*
 * GUCs and shared memory.  Called from _PG_init.
 */
void
identity_init(void)
{
	DefineCustomBoolVariable("replstamp.rotate_on_restore",
							 "Gives a restored or copied database a new replica ID before it stamps anything.",
							 "Off only logs a warning and keeps the old replica ID, so that peers skip "
							 "the restored node's new changes; it exists to show that failure.",
							 &rotate_on_restore,
							 true,
							 PGC_SUSET,
							 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("replstamp.debug_rotation_pause",
							"Testing aid: pause each rotation this long in the middle of its transaction.",
							"So that a test can kill the process that rotates half-way through. Zero "
							"(the default) means no pause.",
							&debug_rotation_pause,
							0, 0, 3600 * 1000,
							PGC_SUSET,
							GUC_UNIT_MS | GUC_NOT_IN_SAMPLE,
							NULL, NULL, NULL);

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = identity_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = identity_shmem_startup;
}

/* Caller must hold identity_shared->lock. */
static int
db_slot(Oid dboid, bool create)
{
	for (int i = 0; i < identity_shared->ndbs; i++)
		if (identity_shared->db[i].dboid == dboid)
			return i;
	if (!create || identity_shared->ndbs >= IDENTITY_MAX_DBS)
		return -1;
	identity_shared->db[identity_shared->ndbs].dboid = dboid;
	identity_shared->db[identity_shared->ndbs].verified = false;
	return identity_shared->ndbs++;
}

bool
identity_db_verified(Oid dboid)
{
	bool		verified = false;
	int			i;

	LWLockAcquire(identity_shared->lock, LW_SHARED);
	i = db_slot(dboid, false);
	if (i >= 0)
		verified = identity_shared->db[i].verified;
	LWLockRelease(identity_shared->lock);
	return verified;
}

/*
 * Record that the current database's identity is settled for this server
 * start.  With more databases than slots, the extra ones are simply checked
 * by every backend once (the check is cheap when nothing changed).
 */
void
identity_mark_verified(void)
{
	int			i;

	serial_require_shmem();
	LWLockAcquire(identity_shared->lock, LW_EXCLUSIVE);
	i = db_slot(MyDatabaseId, true);
	if (i >= 0)
		identity_shared->db[i].verified = true;
	LWLockRelease(identity_shared->lock);
	identity_local_verified = true;
}

/*
 * Fingerprint of this data set's origin: the database OID, and the start
 * WAL location, start time and label of the base backup it was restored
 * from, if any (backup_label.old).
 */
char *
identity_fingerprint(void)
{
	StringInfoData buf;
	FILE	   *f;
	char		line[MAXPGPATH + 64];

	initStringInfo(&buf);
	appendStringInfo(&buf, "database %u", MyDatabaseId);
	f = AllocateFile("backup_label.old", "r");
	if (f == NULL)
	{
		if (errno != ENOENT)
			ereport(WARNING,
					(errcode_for_file_access(),
					 errmsg("could not read file \"%s\": %m", "backup_label.old")));
		return buf.data;
	}
	while (fgets(line, sizeof(line), f) != NULL)
	{
		if (strncmp(line, "START WAL LOCATION:", 19) == 0 ||
			strncmp(line, "START TIME:", 11) == 0 ||
			strncmp(line, "LABEL:", 6) == 0)
		{
			line[strcspn(line, "\n")] = '\0';
			appendStringInfo(&buf, "; %s", line);
		}
	}
	FreeFile(f);
	return buf.data;
}

static char *
spi_text(int col)
{
	return SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, col);
}

static void
spi_exec(const char *sql, int nargs, Oid *types, Datum *values, const char *nulls, int expected)
{
	int			ret = SPI_execute_with_args(sql, nargs, types, values, nulls, false, 0);

	if (ret != expected)
		elog(ERROR, "replstamp: query failed (%s): %s", SPI_result_code_string(ret), sql);
}

/*
 * Retire the current replica ID and mint a new one, in the current
 * transaction; the caller holds the node row lock.  lost_after >= 1 means
 * this data set may lack the old ID's changes from that serial on (it was
 * restored): the vector then claims the old ID only below it, so that a
 * sync pulls the rest back from the peers.  lost_after = 0 means every
 * change the old ID made is here (manual rotation): the old ID's vector
 * entry follows the lowest uncommitted serial like the current one's.
 * The new ID goes to *new_id.
 */
static void
rotate_locked(pg_uuid_t *new_id, const char *old_id, const char *reason, int64 lost_after,
			  const char *backup_lus, const char *backup_next, const char *backup_label,
			  const char *fingerprint)
{
	Datum		old_datum = DirectFunctionCall1(uuid_in, CStringGetDatum(old_id));
	Oid			t1[5] = {UUIDOID, TEXTOID, INT8OID, INT8OID, TEXTOID};
	Datum		v1[5];
	char		n1[5] = {' ', ' ', ' ', ' ', ' '};
	Oid			t2[5] = {UUIDOID, TEXTOID, INT8OID, INT4OID, TEXTOID};
	Datum		v2[5];

	replstamp_mint_uuid(new_id);

	v1[0] = old_datum;
	v1[1] = CStringGetTextDatum(reason);
	if (backup_lus)
		v1[2] = Int64GetDatum(pg_strtoint64(backup_lus));
	else
		n1[2] = 'n';
	if (backup_next)
		v1[3] = Int64GetDatum(pg_strtoint64(backup_next));
	else
		n1[3] = 'n';
	if (backup_label)
		v1[4] = CStringGetTextDatum(backup_label);
	else
		n1[4] = 'n';
	spi_exec("UPDATE replstamp.replica_history "
			 "SET retired_at = pg_catalog.now(), retired_reason = $2, "
			 "lus_at_retirement = $3, next_serial_at_retirement = $4, backup_label = $5 "
			 "WHERE replica_id OPERATOR(pg_catalog.=) $1",
			 5, t1, v1, n1, SPI_OK_UPDATE);

	v2[0] = UUIDPGetDatum(new_id);
	v2[1] = CStringGetTextDatum(reason);
	v2[2] = Int64GetDatum((int64) GetSystemIdentifier());
	v2[3] = Int32GetDatum((int32) GetWALInsertionTimeLine());
	v2[4] = CStringGetTextDatum(fingerprint);
	spi_exec("INSERT INTO replstamp.replica_history "
			 "(replica_id, minted_reason, system_identifier, timeline) "
			 "VALUES ($1, $2, $3, $4)",
			 4, t2, v2, NULL, SPI_OK_INSERT);

	/* Half-way: the old ID is retired, the new one is not current yet. */
	if (debug_rotation_pause > 0)
	{
		instr_time	start;

		ereport(LOG,
				(errmsg("replstamp: pausing the rotation for %d ms (replstamp.debug_rotation_pause)",
						debug_rotation_pause)));
		INSTR_TIME_SET_CURRENT(start);
		for (;;)
		{
			instr_time	now;
			double		left;

			CHECK_FOR_INTERRUPTS();
			INSTR_TIME_SET_CURRENT(now);
			INSTR_TIME_SUBTRACT(now, start);
			left = debug_rotation_pause - INSTR_TIME_GET_MILLISEC(now);
			if (left <= 0)
				break;
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 (long) Min(left, 1000), PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
		}
	}

	if (lost_after >= 1)
	{
		Oid			t3[2] = {UUIDOID, INT8OID};
		Datum		v3[2];

		v3[0] = old_datum;
		v3[1] = Int64GetDatum(lost_after - 1);
		spi_exec("INSERT INTO replstamp.vector_state (replica_id, serial) VALUES ($1, $2) "
				 "ON CONFLICT (replica_id) DO UPDATE SET serial = EXCLUDED.serial",
				 2, t3, v3, NULL, SPI_OK_INSERT);
	}

	spi_exec("UPDATE replstamp.node SET replica_id = $1, state = 'original', "
			 "minted_at = pg_catalog.now(), system_identifier = $3, timeline = $4, "
			 "restore_fingerprint = $5",
			 5, t2, v2, NULL, SPI_OK_UPDATE);
}

#define NODE_QUERY \
	"SELECT replica_id, state, system_identifier, timeline, restore_fingerprint, " \
	"backup_lus, backup_next_serial, backup_label FROM replstamp.node FOR UPDATE"

/*
 * The check itself, in the current transaction, as the extension owner.
 * Returns true if it rotated.
 */
static bool
identity_check(void)
{
	ReplstampOwnerContext ctx;
	char	   *old_id,
			   *state,
			   *sysid,
			   *tli,
			   *fp_recorded,
			   *backup_lus,
			   *backup_next,
			   *backup_label;
	char	   *fp_now;
	char		buf[64];
	StringInfoData reason;
	bool		rotated = false;
	int64		lost_after = 0;

	replstamp_become_owner(&ctx);
	SPI_connect();
	spi_exec(NODE_QUERY, 0, NULL, NULL, NULL, SPI_OK_SELECT);
	if (SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the state row replstamp.node is missing"),
				 errhint("Reinstall the extension with DROP EXTENSION replstamp and CREATE EXTENSION replstamp.")));
	old_id = spi_text(1);
	state = spi_text(2);
	sysid = spi_text(3);
	tli = spi_text(4);
	fp_recorded = spi_text(5);
	backup_lus = spi_text(6);
	backup_next = spi_text(7);
	backup_label = spi_text(8);
	fp_now = identity_fingerprint();

	initStringInfo(&reason);
	if (strcmp(state, REPLSTAMP_STATE_BACKUP) == 0)
	{
		appendStringInfo(&reason, "restored from backup \"%s\" (state was 'backup')",
						 backup_label ? backup_label : "?");
		/* Whatever was in flight or came after the backup started is lost. */
		lost_after = backup_lus ? pg_strtoint64(backup_lus) : 1;
	}
	if (fp_recorded == NULL || strcmp(fp_recorded, fp_now) != 0)
	{
		char		dbpart[32];

		snprintf(dbpart, sizeof(dbpart), "database %u", MyDatabaseId);
		if (fp_recorded != NULL && strncmp(fp_recorded, dbpart, strlen(dbpart)) != 0)
			appendStringInfo(&reason, "%scopied from another database",
							 reason.len ? "; " : "");
		else
			appendStringInfo(&reason, "%sa base backup was restored (%s)",
							 reason.len ? "; " : "", fp_now);
		if (lost_after == 0)
			lost_after = 1;
	}
	snprintf(buf, sizeof(buf), "%u", GetWALInsertionTimeLine());
	if (strcmp(tli, buf) != 0)
	{
		appendStringInfo(&reason, "%stimeline changed from %s to %s (point-in-time recovery or promoted standby)",
						 reason.len ? "; " : "", tli, buf);
		if (lost_after == 0)
			lost_after = 1;
	}
	snprintf(buf, sizeof(buf), INT64_FORMAT, (int64) GetSystemIdentifier());
	if (strcmp(sysid, buf) != 0)
	{
		appendStringInfo(&reason, "%ssystem identifier changed from %s to %s",
						 reason.len ? "; " : "", sysid, buf);
		if (lost_after == 0)
			lost_after = 1;
	}

	if (reason.len > 0)
	{
		if (!rotate_on_restore)
			ereport(WARNING,
					(errmsg("replstamp: database \"%s\" was restored or copied but keeps replica ID %s",
							get_database_name(MyDatabaseId), old_id),
					 errdetail("Reason: %s.", reason.data),
					 errhint("replstamp.rotate_on_restore is off: peers will skip the changes this copy stamps with serials they have already seen. Turn it on and restart.")));
		else
		{
			pg_uuid_t	new_id_buf;
			pg_uuid_t  *new_id = &new_id_buf;

			rotate_locked(new_id, old_id, reason.data, lost_after,
						  backup_lus, backup_next, backup_label, fp_now);

			ereport(LOG,
					(errmsg("replstamp: database \"%s\" retired replica ID %s and now stamps as %s",
							get_database_name(MyDatabaseId), old_id,
							DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(new_id)))),
					 errdetail("Reason: %s.", reason.data)));
			rotated = true;
		}
	}

	SPI_finish();
	replstamp_restore_user(&ctx);
	return rotated;
}

static void
identity_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
			if (verify_at_commit)
				identity_mark_verified();
			verify_at_commit = false;
			checked_in_xact = false;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PREPARE:
			verify_at_commit = false;
			checked_in_xact = false;
			break;
		default:
			break;
	}
}

/*
 * The stamp path's check, for a database not verified yet since the server
 * started: look in shared memory, else check (and maybe rotate) in the
 * writer's transaction; the database counts as verified once it commits.
 */
void
identity_verify_slow(void)
{
	serial_require_shmem();
	if (identity_db_verified(MyDatabaseId))
	{
		identity_local_verified = true;
		return;
	}
	if (checked_in_xact)
		return;
	if (!callback_registered)
	{
		RegisterXactCallback(identity_xact_callback, NULL);
		callback_registered = true;
	}
	(void) identity_check();
	/* Make this transaction's new node row visible to its next stamps. */
	CommandCounterIncrement();
	replstamp_node_forget();
	checked_in_xact = true;
	verify_at_commit = true;
}

/*
 * replstamp.rotate(reason text): retire the current replica ID and mint a
 * new one, by hand.  Every change of the old ID stays here, so its vector
 * entry keeps following the lowest uncommitted serial.
 */
Datum
replstamp_rotate(PG_FUNCTION_ARGS)
{
	char	   *reason = text_to_cstring(PG_GETARG_TEXT_PP(0));
	ReplstampOwnerContext ctx;
	pg_uuid_t  *new_id;
	char	   *old_id;
	char	   *why;

	(void) replstamp_catalog(false);
	if (strlen(reason) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a reason for the rotation is required"),
				 errhint("Say why, for example replstamp.rotate('node cloned by hand').")));

	new_id = palloc(sizeof(pg_uuid_t));
	replstamp_become_owner(&ctx);
	SPI_connect();
	spi_exec(NODE_QUERY, 0, NULL, NULL, NULL, SPI_OK_SELECT);
	if (SPI_processed != 1)
		elog(ERROR, "replstamp.node has no row");
	old_id = spi_text(1);
	why = psprintf("manual: %s", reason);
	rotate_locked(new_id, old_id, why, 0, NULL, NULL, NULL, identity_fingerprint());
	ereport(LOG,
			(errmsg("replstamp: database \"%s\" retired replica ID %s and now stamps as %s",
					get_database_name(MyDatabaseId), old_id,
					DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(new_id)))),
			 errdetail("Reason: %s.", why)));
	SPI_finish();
	replstamp_restore_user(&ctx);

	CommandCounterIncrement();
	replstamp_node_forget();
	PG_RETURN_UUID_P(new_id);
}

/*
 * Per-database worker: check one database, then mark it verified.
 */
void
replstamp_identity_db_main(Datum arg)
{
	Oid			dboid = DatumGetObjectId(arg);
	bool		installed;
	char	   *dbname;
	instr_time	start,
				elapsed;

	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
	INSTR_TIME_SET_CURRENT(start);

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "replstamp: checking the replica ID");
	installed = OidIsValid(get_extension_oid("replstamp", true));
	dbname = pstrdup(get_database_name(dboid));
	if (installed)
		(void) identity_check();
	PopActiveSnapshot();
	CommitTransactionCommand();

	identity_mark_verified();
	pgstat_report_activity(STATE_IDLE, NULL);
	if (installed)
	{
		INSTR_TIME_SET_CURRENT(elapsed);
		INSTR_TIME_SUBTRACT(elapsed, start);
		ereport(LOG,
				(errmsg("replstamp: identity of database \"%s\" verified in %.1f ms",
						dbname, INSTR_TIME_GET_MILLISEC(elapsed))));
	}
	proc_exit(0);
}

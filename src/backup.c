/*-------------------------------------------------------------------------
 *
 * backup.c
 *		The state flip around a backup: replstamp.prepare_backup() marks
 *		the data set 'backup' and records the serials, so that any snapshot
 *		taken until replstamp.finish_backup() carries the mark.
 *
 * prepare_backup() must commit, durably, before the backup starts, so it
 * refuses to run inside a transaction block and its SQL definition sets
 * synchronous_commit = on.  Each database with the extension has its own
 * state row: wrap a cluster-wide backup with one call per such database.
 *
 * Copyright (c) 2026, the replstamp authors
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "replstamp.h"
#include "serial.h"

PG_FUNCTION_INFO_V1(replstamp_prepare_backup);
PG_FUNCTION_INFO_V1(replstamp_finish_backup);

/*
 * replstamp.prepare_backup(label text DEFAULT NULL) RETURNS text: set state
 * = 'backup' and record the lowest uncommitted serial, the next serial, the
 * label and the start time.  Returns the label.
 */
Datum
replstamp_prepare_backup(PG_FUNCTION_ARGS)
{
	const ReplstampCatalog *cat = replstamp_catalog(false);
	char	   *label;
	Oid			types[3] = {INT8OID, INT8OID, TEXTOID};
	Datum		values[3];
	int			ret;
	ReplstampOwnerContext ctx;

	PreventInTransactionBlock(true, "replstamp.prepare_backup()");
	serial_require_shmem();

	if (PG_ARGISNULL(0))
		label = psprintf("replstamp %s", timestamptz_to_str(GetCurrentTimestamp()));
	else
		label = text_to_cstring(PG_GETARG_TEXT_PP(0));

	replstamp_become_owner(&ctx);
	SPI_connect();
	ret = SPI_execute("SELECT state FROM replstamp.node FOR UPDATE", false, 0);
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "replstamp.node has no row");
	if (strcmp(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1),
			   REPLSTAMP_STATE_BACKUP) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("a backup is already in progress in this database"),
				 errhint("Finish it with replstamp.finish_backup(), or call replstamp.finish_backup() if it was abandoned.")));

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
	SPI_finish();
	replstamp_restore_user(&ctx);

	PG_RETURN_TEXT_P(cstring_to_text(label));
}

/*
 * replstamp.finish_backup() RETURNS void: set state = 'original' again.
 */
Datum
replstamp_finish_backup(PG_FUNCTION_ARGS)
{
	int			ret;
	ReplstampOwnerContext ctx;

	(void) replstamp_catalog(false);
	replstamp_become_owner(&ctx);
	SPI_connect();
	ret = SPI_execute("UPDATE replstamp.node SET state = 'original', "
					  "last_backup_at = pg_catalog.now() "
					  "WHERE state = 'backup'", false, 0);
	if (ret != SPI_OK_UPDATE)
		elog(ERROR, "could not flip the state: %s", SPI_result_code_string(ret));
	if (SPI_processed == 0)
		ereport(WARNING,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("no backup is in progress in this database"),
				 errhint("Call replstamp.prepare_backup() before the backup starts.")));
	SPI_finish();
	replstamp_restore_user(&ctx);
	PG_RETURN_VOID();
}

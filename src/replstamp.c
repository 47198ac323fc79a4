/*-------------------------------------------------------------------------
 *
 * replstamp.c
 *		Module entry point: refuses to load outside shared_preload_libraries,
 *		then lets each part register its GUCs, hooks and workers.
 *
 * Copyright (c) 2026, the replstamp authors
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "utils/guc.h"

#include "backup.h"
#include "identity.h"
#include "replstamp.h"
#include "serial.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

PG_FUNCTION_INFO_V1(replstamp_require_preload);

/*
 * Module load.  Everything replstamp does needs shared memory and background
 * workers, which only exist when the library is preloaded.
 */
void
_PG_init(void)
{
	if (IsBinaryUpgrade)
		return;

	if (!process_shared_preload_libraries_in_progress)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("replstamp must be loaded via shared_preload_libraries"),
				 errhint("Add replstamp to the shared_preload_libraries configuration parameter in postgresql.conf and restart the server.")));

	serial_init();
	replstamp_catalog_init();
	stamp_init();
	identity_init();
	backup_init();
	launcher_init();

	MarkGUCPrefixReserved("replstamp");
}

/*
 * replstamp._require_preload(): called by the install script so that
 * CREATE EXTENSION fails cleanly when the shared state is absent.
 */
Datum
replstamp_require_preload(PG_FUNCTION_ARGS)
{
	serial_require_shmem();
	PG_RETURN_VOID();
}

/*-------------------------------------------------------------------------
 *
 * replstamp.c
 *		Module entry point: refuses to load outside shared_preload_libraries,
 *		then lets each part register its GUCs, hooks and workers.
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "utils/guc.h"

#include "backfill.h"
#include "basebackup.h"
#include "catalog.h"
#include "changelog.h"
#include "constraints.h"
#include "ddl.h"
#include "errors.h"
#include "fence.h"
#include "identity.h"
#include "latest.h"
#include "launcher.h"
#include "prune.h"
#include "remote.h"
#include "rowimage.h"
#include "serial.h"
#include "shmem.h"
#include "stamp.h"
#include "sync.h"
#include "verify.h"
#include "wakeup.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

PG_FUNCTION_INFO_V1(replstamp_require_preload);
PG_FUNCTION_INFO_V1(replstamp_row_hash);

/*
 * Module load.  Everything replstamp does needs shared memory and background
 * workers, which only exist when the library is preloaded.
 */
void
_PG_init(void)
{
	/* pg_upgrade: only its mark (identity.c), nothing else runs. */
	if (IsBinaryUpgrade)
	{
		identity_note_binary_upgrade();
		return;
	}

	if (!process_shared_preload_libraries_in_progress)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("replstamp must be loaded via shared_preload_libraries"),
				 errhint("Add replstamp to the shared_preload_libraries configuration parameter in postgresql.conf and restart the server.")));

	shmem_init();
	catalog_init();
	changelog_init();
	rowimage_init();
	serial_init();
	stamp_init();
	identity_init();
	remote_init();
	sync_init();
	constraints_init();
	prune_init();
	backfill_init();
	latest_init();
	launcher_init();
	fence_init();
	ddl_init();
	wakeup_init();
	verify_init();
	basebackup_init();

	MarkGUCPrefixReserved("replstamp");
}

/*
 * replstamp._require_preload(): called by the install script so that
 * CREATE EXTENSION fails cleanly when the shared state is absent.
 */
Datum
replstamp_require_preload(PG_FUNCTION_ARGS)
{
	shmem_require();
	PG_RETURN_VOID();
}

/*
 * replstamp.row_hash(relation text, pk jsonb) RETURNS bigint: a row's
 * identity across nodes as a number (equal keys hash equally whatever
 * their text form).
 */
Datum
replstamp_row_hash(PG_FUNCTION_ARGS)
{
	text	   *relation = PG_GETARG_TEXT_PP(0);

	PG_RETURN_INT64(rowimage_row_hash(VARDATA_ANY(relation), VARSIZE_ANY_EXHDR(relation),
									  PG_GETARG_JSONB_P(1)));
}

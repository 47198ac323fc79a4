/*-------------------------------------------------------------------------
 *
 * peers.c
 *		Administration of the nodes this node exchanges changes with:
 *		replstamp.add_peer() and replstamp.drop_peer() (the peers it pulls
 *		from, replstamp.peer), replstamp.drop_puller() (a node that pulled
 *		from here and is gone for good).  Pulling itself is sync.c's.
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "libpq-fe.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lmgr.h"
#include "storage/lwlock.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "apply.h"
#include "catalog.h"
#include "changelog.h"
#include "compat.h"
#include "dbaccess.h"
#include "epochs.h"
#include "errors.h"
#include "identity.h"
#include "peers.h"
#include "proto.h"
#include "remote.h"
#include "rowimage.h"
#include "rowversion.h"
#include "serial.h"
#include "shmem.h"
#include "workers.h"

PG_FUNCTION_INFO_V1(replstamp_add_peer);
PG_FUNCTION_INFO_V1(replstamp_drop_peer);
PG_FUNCTION_INFO_V1(replstamp_forget_puller);

/*
 * replstamp.add_peer(name, conninfo): validate and store a peer.
 */
Datum
replstamp_add_peer(PG_FUNCTION_ARGS)
{
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *conninfo = text_to_cstring(PG_GETARG_TEXT_PP(1));
	char	   *err = NULL;
	PQconninfoOption *opts;
	Oid			types[2] = {TEXTOID, TEXTOID};
	Datum		values[2];
	ReplstampOwnerContext ctx;

	(void) catalog_get(false);
	opts = PQconninfoParse(conninfo, &err);
	if (opts == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid connection string for peer \"%s\"", name),
				 errdetail_internal("%s", err ? pchomp(err) : "out of memory")));
	PQconninfoFree(opts);

	values[0] = CStringGetTextDatum(name);
	values[1] = CStringGetTextDatum(conninfo);
	dbaccess_become_owner(&ctx);
	SPI_connect();
	dbaccess_spi_exec("INSERT INTO replstamp.peer (name, conninfo) VALUES ($1, $2) "
					  "ON CONFLICT (name) DO NOTHING", 2, types, values, NULL, SPI_OK_INSERT);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("peer \"%s\" already exists", name),
				 errhint("Remove it first with replstamp.drop_peer().")));
	SPI_finish();
	dbaccess_restore_user(&ctx);
	/* With replstamp.sync_interval on, the first sync need not wait for it. */
	worker_wake_sync_at_commit();
	PG_RETURN_VOID();
}

/*
 * replstamp.drop_peer(name): this node no longer pulls from the peer, and
 * forgets it as a puller (it no longer holds pruning back).
 */
Datum
replstamp_drop_peer(PG_FUNCTION_ARGS)
{
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	Oid			types[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(name)};
	ReplstampOwnerContext ctx;

	(void) catalog_get_v11("replstamp.drop_peer()");
	dbaccess_become_owner(&ctx);
	SPI_connect();
	dbaccess_spi_exec("DELETE FROM replstamp.peer p WHERE p.name OPERATOR(pg_catalog.=) $1 "
					  "RETURNING p.replica_id", 1, types, values, NULL, SPI_OK_DELETE_RETURNING);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("peer \"%s\" does not exist", name),
				 errhint("replstamp.peers lists the peers; a node that only pulled from here is forgotten with replstamp.drop_puller().")));
	/* Its replica ID as of the last sync from it: it pulled under that one. */
	{
		bool		isnull;
		Datum		id = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		if (!isnull)
		{
			Oid			ut[1] = {UUIDOID};
			Datum		uv[1] = {id};

			dbaccess_spi_exec("DELETE FROM replstamp.puller WHERE replica_id OPERATOR(pg_catalog.=) $1",
							  1, ut, uv, NULL, SPI_OK_DELETE);
		}
	}
	SPI_finish();
	dbaccess_restore_user(&ctx);
	PG_RETURN_VOID();
}

/*
 * replstamp.drop_puller(replica_id) (forget_puller() until 1.2, whose C
 * name the 1.1 script keeps): a node that pulled from here is gone for
 * good; it no longer holds pruning back.
 */
Datum
replstamp_forget_puller(PG_FUNCTION_ARGS)
{
	pg_uuid_t  *id = PG_GETARG_UUID_P(0);
	Oid			types[1] = {UUIDOID};
	Datum		values[1] = {UUIDPGetDatum(id)};
	ReplstampOwnerContext ctx;
	bool		found;

	(void) catalog_get_v11("replstamp.drop_puller()");
	dbaccess_become_owner(&ctx);
	SPI_connect();
	dbaccess_spi_exec("DELETE FROM replstamp.puller WHERE replica_id OPERATOR(pg_catalog.=) $1",
					  1, types, values, NULL, SPI_OK_DELETE);
	found = SPI_processed > 0;
	SPI_finish();
	dbaccess_restore_user(&ctx);
	PG_RETURN_BOOL(found);
}

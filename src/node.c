/*-------------------------------------------------------------------------
 *
 * node.c
 *		The per-backend cache of the extension's catalog: OIDs of its
 *		relations and the state row replstamp.node; creation of that row.
 *
 * Both caches are dropped on a relcache invalidation of any of the
 * extension's relations.  Every change of replstamp.node fires the
 * statement trigger node_changed, which queues such an invalidation, so
 * after a rotation or a state flip commits, every backend reloads the row
 * before its next stamp.
 *
 * Copyright (c) 2026, the replstamp authors
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xlog.h"
#include "catalog/indexing.h"
#include "catalog/namespace.h"
#include "catalog/pg_extension.h"
#include "commands/extension.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "identity.h"
#include "replstamp.h"

PG_FUNCTION_INFO_V1(replstamp_init_node);
PG_FUNCTION_INFO_V1(replstamp_node_changed);

/* Attribute numbers of replstamp.node, as created by the install script. */
#define Anum_node_replica_id	2
#define Anum_node_state			3

static ReplstampCatalog catalog;
static bool catalog_valid = false;

static ReplstampNode node_cache;
static bool node_valid = false;

static void
catalog_relcache_callback(Datum arg, Oid relid)
{
	if (!catalog_valid)
		return;
	if (relid == InvalidOid ||
		relid == catalog.node || relid == catalog.changes ||
		relid == catalog.changes_pkey || relid == catalog.serial_seq ||
		relid == catalog.vector_state || relid == catalog.replica_history)
	{
		catalog_valid = false;
		node_valid = false;
	}
}

/*
 * Register the invalidation callback.  Called from _PG_init.
 */
void
replstamp_catalog_init(void)
{
	CacheRegisterRelcacheCallback(catalog_relcache_callback, (Datum) 0);
}

static Oid
catalog_relid(const char *relname)
{
	Oid			relid = get_relname_relid(relname, catalog.schema);

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("relation \"%s.%s\" is missing", REPLSTAMP_SCHEMA, relname),
				 errhint("Reinstall the extension with DROP EXTENSION replstamp and CREATE EXTENSION replstamp.")));
	return relid;
}

/*
 * OIDs of the extension's relations in the current database.  With
 * missing_ok, returns NULL when the extension is not installed here;
 * otherwise that is an error.
 */
const ReplstampCatalog *
replstamp_catalog(bool missing_ok)
{
	if (catalog_valid)
		return &catalog;

	catalog.schema = get_namespace_oid(REPLSTAMP_SCHEMA, true);
	if (!OidIsValid(catalog.schema) ||
		!OidIsValid(get_relname_relid("changes", catalog.schema)))
	{
		if (missing_ok)
			return NULL;
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension \"replstamp\" is not installed in this database"),
				 errhint("Run CREATE EXTENSION replstamp.")));
	}
	catalog.node = catalog_relid("node");
	catalog.changes = catalog_relid("changes");
	catalog.changes_pkey = catalog_relid("changes_pkey");
	catalog.serial_seq = catalog_relid("serial_seq");
	catalog.vector_state = catalog_relid("vector_state");
	catalog.replica_history = catalog_relid("replica_history");
	catalog_valid = true;
	return &catalog;
}

/*
 * The state row as last committed.  Errors out if the extension is not
 * installed or the row is missing.
 */
const ReplstampNode *
replstamp_node(void)
{
	const ReplstampCatalog *cat;
	Relation	rel;
	SysScanDesc scan;
	HeapTuple	tuple;
	bool		isnull;
	Datum		d;
	char	   *state;
	Snapshot	snapshot;

	if (node_valid && catalog_valid)
		return &node_cache;

	cat = replstamp_catalog(false);
	rel = table_open(cat->node, AccessShareLock);
	/*
	 * The latest snapshot: the last committed row, or this transaction's own
	 * change of it (a rotation by the identity check in this transaction).
	 * If this transaction aborts, the invalidation it queued is processed
	 * locally and the cache is dropped.
	 */
	snapshot = RegisterSnapshot(GetLatestSnapshot());
	scan = systable_beginscan(rel, InvalidOid, false, snapshot, 0, NULL);
	tuple = systable_getnext(scan);
	if (!HeapTupleIsValid(tuple))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the state row replstamp.node is missing"),
				 errhint("Reinstall the extension with DROP EXTENSION replstamp and CREATE EXTENSION replstamp.")));

	d = heap_getattr(tuple, Anum_node_replica_id, RelationGetDescr(rel), &isnull);
	if (isnull)
		elog(ERROR, "replstamp.node.replica_id is null");
	memcpy(&node_cache.replica_id, DatumGetUUIDP(d), sizeof(pg_uuid_t));
	d = heap_getattr(tuple, Anum_node_state, RelationGetDescr(rel), &isnull);
	if (isnull)
		elog(ERROR, "replstamp.node.state is null");
	state = TextDatumGetCString(d);
	node_cache.in_backup = (strcmp(state, REPLSTAMP_STATE_BACKUP) == 0);
	pfree(state);

	systable_endscan(scan);
	UnregisterSnapshot(snapshot);
	table_close(rel, AccessShareLock);

	/* An invalidation while we read means we must read again next time. */
	node_valid = catalog_valid;
	return &node_cache;
}

/*
 * Forget the cached state row (after this backend changed it).
 */
void
replstamp_node_forget(void)
{
	node_valid = false;
}

/*
 * A new random (version 4) uuid.
 */
void
replstamp_mint_uuid(pg_uuid_t *uuid)
{
	if (!pg_strong_random(uuid->data, UUID_LEN))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate random values")));
	uuid->data[6] = (uuid->data[6] & 0x0f) | 0x40;	/* version 4 */
	uuid->data[8] = (uuid->data[8] & 0x3f) | 0x80;	/* RFC 4122 variant */
}

/*
 * replstamp._init_node(): called once by the install script.  Creates the
 * state row with a fresh replica ID and records it in replica_history.
 */
Datum
replstamp_init_node(PG_FUNCTION_ARGS)
{
	pg_uuid_t  *id = palloc(sizeof(pg_uuid_t));
	Oid			argtypes[4] = {UUIDOID, INT8OID, INT4OID, TEXTOID};
	Datum		args[4];
	int			ret;

	replstamp_mint_uuid(id);
	args[0] = UUIDPGetDatum(id);
	args[1] = Int64GetDatum((int64) GetSystemIdentifier());
	args[2] = Int32GetDatum((int32) GetWALInsertionTimeLine());
	/* A fresh ID is this data set's own: nothing to check until a restart. */
	args[3] = CStringGetTextDatum(identity_fingerprint());

	SPI_connect();
	ret = SPI_execute_with_args("INSERT INTO replstamp.node "
								"(replica_id, system_identifier, timeline, restore_fingerprint) "
								"VALUES ($1, $2, $3, $4)",
								4, argtypes, args, NULL, false, 0);
	if (ret != SPI_OK_INSERT)
		elog(ERROR, "could not create the state row: %s", SPI_result_code_string(ret));
	ret = SPI_execute_with_args("INSERT INTO replstamp.replica_history "
								"(replica_id, minted_reason, system_identifier, timeline) "
								"VALUES ($1, 'created', $2, $3)",
								3, argtypes, args, NULL, false, 0);
	if (ret != SPI_OK_INSERT)
		elog(ERROR, "could not record the replica ID: %s", SPI_result_code_string(ret));
	SPI_finish();
	identity_mark_verified();

	PG_RETURN_DATUM(UUIDPGetDatum(id));
}

/*
 * Statement trigger on replstamp.node: every backend reloads the row once
 * this transaction commits (and this one at its next command).
 */
Datum
replstamp_node_changed(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"%s\" was not called by trigger manager",
						"replstamp._node_changed")));

	CacheInvalidateRelcacheByRelid(RelationGetRelid(trigdata->tg_relation));
	node_valid = false;
	return PointerGetDatum(NULL);
}

/* Owner of the extension in the current database. */
static Oid
extension_owner(void)
{
	Oid			extoid = get_extension_oid("replstamp", false);
	Relation	rel;
	SysScanDesc scan;
	ScanKeyData key;
	HeapTuple	tuple;
	Oid			owner;

	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_oid, BTEqualStrategyNumber,
				F_OIDEQ, ObjectIdGetDatum(extoid));
	scan = systable_beginscan(rel, ExtensionOidIndexId, true, NULL, 1, &key);
	tuple = systable_getnext(scan);
	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "could not find extension replstamp");
	owner = ((Form_pg_extension) GETSTRUCT(tuple))->extowner;
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return owner;
}

/*
 * Act as the extension's owner, with search_path = pg_catalog, pg_temp and
 * in a security-restricted context, until replstamp_restore_user().  For
 * SQL that replstamp runs on behalf of a user who may not write its tables
 * (the identity check in the stamp path, trigger DDL in track()).  An error
 * in between restores the user and the GUCs through transaction abort.
 */
void
replstamp_become_owner(ReplstampOwnerContext *ctx)
{
	GetUserIdAndSecContext(&ctx->save_userid, &ctx->save_sec_context);
	SetUserIdAndSecContext(extension_owner(),
						   ctx->save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	ctx->save_nestlevel = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp",
							 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE,
							 true, 0, false);
}

void
replstamp_restore_user(ReplstampOwnerContext *ctx)
{
	AtEOXact_GUC(true, ctx->save_nestlevel);
	SetUserIdAndSecContext(ctx->save_userid, ctx->save_sec_context);
}

/*-------------------------------------------------------------------------
 *
 * catalog.c
 *		The per-backend cache of the extension's catalog: OIDs of its
 *		relations and the state row replstamp.node; acting as the
 *		extension's owner or, for a table owner's code, as that role.
 *
 * Both caches are dropped on a relcache invalidation of any of the
 * extension's relations.  Every change of replstamp.node fires the
 * statement trigger node_changed (identity.c), which queues such an
 * invalidation, so after a rotation or a state flip commits, every backend
 * reloads the row before its next stamp; a change rolled back (a savepoint)
 * is forgotten the same way, since the invalidations of an aborted
 * (sub)transaction are processed locally.
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/indexing.h"
#include "catalog/namespace.h"
#include "catalog/pg_extension.h"
#include "commands/extension.h"
#include "lib/stringinfo.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "storage/proc.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "catalog.h"
#include "compat.h"
#include "errors.h"
#include "shmem.h"

static ReplstampCatalog catalog;
static bool catalog_valid = false;

/* The extension's owner, as looked up in transaction owner_seen_in. */
static Oid	owner_seen = InvalidOid;
static LocalTransactionId owner_seen_in = InvalidLocalTransactionId;

static ReplstampNode node_cache;
static bool node_valid = false;
static MemoryContext node_cxt = NULL;

static void
catalog_relcache_callback(Datum arg, Oid relid)
{
	/* Cheap to look up again; any relation's change may be the extension's. */
	owner_seen = InvalidOid;
	if (!catalog_valid)
		return;
	if (relid == InvalidOid ||
		relid == catalog.node || relid == catalog.changes ||
		relid == catalog.changes_pkey || relid == catalog.serial_seq ||
		relid == catalog.vector_state || relid == catalog.replica_history ||
		relid == catalog.row_version || relid == catalog.row_version_hash ||
		relid == catalog.conflict || relid == catalog.conflict_pkey ||
		relid == catalog.conflict_loser || relid == catalog.tracked)
	{
		catalog_valid = false;
		node_valid = false;
	}
}

/*
 * Register the invalidation callback.  Called from _PG_init.
 */
void
catalog_init(void)
{
	CacheRegisterRelcacheCallback(catalog_relcache_callback, (Datum) 0);
}

static Oid
catalog_relid(const char *relname, bool missing_ok)
{
	Oid			relid = get_relname_relid(relname, catalog.schema);

	if (!OidIsValid(relid) && !missing_ok)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("relation \"%s.%s\" is missing", REPLSTAMP_SCHEMA, relname),
				 errhint("Reinstall the extension with DROP EXTENSION replstamp and CREATE EXTENSION replstamp.")));
	return relid;
}

/* Check that a column is where the code expects it. */
static void
check_attnum(Oid relid, AttrNumber attnum, const char *attname)
{
	char	   *name = get_attname(relid, attnum, true);

	if (name == NULL || strcmp(name, attname) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("column %d of %s is not \"%s\"", attnum, get_rel_name(relid), attname),
				 errhint("Reinstall the extension with DROP EXTENSION replstamp and CREATE EXTENSION replstamp.")));
}

/*
 * OIDs of the extension's relations in the current database.  With
 * missing_ok, returns NULL when the extension is not installed here;
 * otherwise that is an error.
 */
const ReplstampCatalog *
catalog_get(bool missing_ok)
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
	catalog.node = catalog_relid("node", false);
	catalog.changes = catalog_relid("changes", false);
	catalog.changes_pkey = catalog_relid("changes_pkey", false);
	catalog.serial_seq = catalog_relid("serial_seq", false);
	catalog.vector_state = catalog_relid("vector_state", false);
	catalog.replica_history = catalog_relid("replica_history", false);
	catalog.row_version = catalog_relid("row_version", true);
	catalog.row_version_hash = catalog_relid("row_version_hash", true);
	/* replstamp.conflict, named conflict_log before 1.2 */
	catalog.conflict = catalog_relid("conflict", true);
	if (OidIsValid(catalog.conflict))
	{
		catalog.conflict_name = "replstamp.conflict";
		catalog.conflict_pkey = catalog_relid("conflict_pkey", true);
		catalog.conflict_loser = catalog_relid("conflict_loser", true);
	}
	else
	{
		catalog.conflict = catalog_relid("conflict_log", true);
		catalog.conflict_name = "replstamp.conflict_log";
		catalog.conflict_pkey = catalog_relid("conflict_log_pkey", true);
		catalog.conflict_loser = catalog_relid("conflict_log_loser", true);
	}
	/* replstamp.tracked_table, named tracked before 1.2 */
	catalog.tracked = catalog_relid("tracked_table", true);
	catalog.tracked_name = "replstamp.tracked_table";
	if (!OidIsValid(catalog.tracked))
	{
		catalog.tracked = catalog_relid("tracked", true);
		catalog.tracked_name = "replstamp.tracked";
	}
	catalog.v11 = OidIsValid(catalog.row_version) && OidIsValid(catalog.row_version_hash) &&
		OidIsValid(catalog.conflict) && OidIsValid(catalog.conflict_pkey) &&
		OidIsValid(catalog.conflict_loser);

	check_attnum(catalog.changes, Anum_changes_applied, "applied");
	catalog.v12 = catalog.v11 && get_attname(catalog.changes, Anum_changes_xact, true) != NULL;
	catalog.row_version_deleted_at = false;
	if (catalog.v12)
	{
		char	   *att = get_attname(catalog.row_version, Anum_row_version_deleted_at, true);

		catalog.row_version_deleted_at = att != NULL && strcmp(att, "deleted_at") == 0;
		check_attnum(catalog.changes, Anum_changes_usn, "usn");
		check_attnum(catalog.changes, Anum_changes_xact, "xact");
	}
	check_attnum(catalog.node, Anum_node_restore_fingerprint, "restore_fingerprint");
	if (catalog.v11)
	{
		check_attnum(catalog.node, Anum_node_verified_token, "verified_token");
		check_attnum(catalog.row_version, Anum_row_version_carry_changed_at, "carry_changed_at");
		check_attnum(catalog.conflict, Anum_conflict_resolved_at, "resolved_at");
		check_attnum(catalog.conflict, Anum_conflict_loser_replica_id, "loser_replica_id");
		check_attnum(catalog.conflict, Anum_conflict_loser_serial, "loser_serial");
		check_attnum(catalog.conflict, Anum_conflict_peer, "peer");
		check_attnum(catalog.conflict, Anum_conflict_loser_image, "loser_image");
	}
	catalog_valid = true;
	return &catalog;
}

/*
 * The catalog, for a feature that needs the 1.1 catalog: a clear error
 * while the library is newer than the installed extension.
 */
const ReplstampCatalog *
catalog_get_v11(const char *what)
{
	const ReplstampCatalog *cat = catalog_get(false);

	if (!cat->v11)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%s needs replstamp 1.1, but this database still has the catalog of replstamp 1.0", what),
				 errhint("Run ALTER EXTENSION replstamp UPDATE in this database.")));
	return cat;
}

/*
 * The catalog, for a feature that needs the 1.2 catalog (replication: whole
 * transactions need the transaction of every change).
 */
const ReplstampCatalog *
catalog_get_v12(const char *what)
{
	const ReplstampCatalog *cat = catalog_get_v11(what);

	if (!cat->v12)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%s needs replstamp 1.2, but this database still has the catalog of replstamp 1.1", what),
				 errdetail("The 1.1 catalog does not record which transaction made each change, and replication applies remote transactions whole."),
				 errhint("Run ALTER EXTENSION replstamp UPDATE in this database.")));
	return cat;
}

/*
 * sql, a statement that names replstamp.tracked_table, as this database's
 * catalog needs it: before 1.2 the table was replstamp.tracked, and a new
 * library runs track(), untrack(), the DDL guards, backfills and prunes on
 * that catalog until ALTER EXTENSION replstamp UPDATE.  On a 1.2 catalog,
 * sql itself (the same pointer: plans kept by it stay valid).
 */
const char *
catalog_sql(const char *sql)
{
	static const char new_name[] = "replstamp.tracked_table";
	const ReplstampCatalog *cat = catalog_get(true);
	StringInfoData buf;
	const char *p = sql;
	const char *hit;

	if (cat == NULL || strcmp(cat->tracked_name, new_name) == 0)
		return sql;
	initStringInfo(&buf);
	while ((hit = strstr(p, new_name)) != NULL)
	{
		appendBinaryStringInfo(&buf, p, hit - p);
		appendStringInfoString(&buf, cat->tracked_name);
		p = hit + strlen(new_name);
	}
	appendStringInfoString(&buf, p);
	return buf.data;
}

static char *
node_text(HeapTuple tuple, TupleDesc desc, AttrNumber att)
{
	bool		isnull;
	Datum		d = heap_getattr(tuple, att, desc, &isnull);

	return isnull ? NULL : TextDatumGetCString(d);
}

static bool
node_int64(HeapTuple tuple, TupleDesc desc, AttrNumber att, int64 *out)
{
	bool		isnull;
	Datum		d = heap_getattr(tuple, att, desc, &isnull);

	if (!isnull)
		*out = DatumGetInt64(d);
	return !isnull;
}

/*
 * The state row, as last committed or as changed by this transaction.
 * Errors out if the extension is not installed or the row is missing.
 */
const ReplstampNode *
catalog_node(void)
{
	const ReplstampCatalog *cat;
	Relation	rel;
	TupleDesc	desc;
	SysScanDesc scan;
	HeapTuple	tuple;
	bool		isnull;
	Datum		d;
	char	   *state;
	Snapshot	snapshot;
	MemoryContext old;

	if (node_valid && catalog_valid)
		return &node_cache;

	cat = catalog_get(false);
	if (node_cxt == NULL)
		node_cxt = AllocSetContextCreate(CacheMemoryContext, "replstamp node row",
										 ALLOCSET_SMALL_SIZES);
	MemoryContextReset(node_cxt);
	old = MemoryContextSwitchTo(node_cxt);

	rel = table_open(cat->node, AccessShareLock);
	desc = RelationGetDescr(rel);

	/*
	 * The latest snapshot: the last committed row, or this transaction's own
	 * change of it (a rotation by the identity check in this transaction).
	 */
	snapshot = RegisterSnapshot(GetLatestSnapshot());
	scan = systable_beginscan(rel, InvalidOid, false, snapshot, 0, NULL);
	tuple = systable_getnext(scan);
	if (!HeapTupleIsValid(tuple))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the state row replstamp.node is missing"),
				 errhint("Reinstall the extension with DROP EXTENSION replstamp and CREATE EXTENSION replstamp.")));

	d = heap_getattr(tuple, Anum_node_replica_id, desc, &isnull);
	if (isnull)
		elog(ERROR, "replstamp.node.replica_id is null");
	memcpy(&node_cache.replica_id, DatumGetUUIDP(d), sizeof(pg_uuid_t));
	state = node_text(tuple, desc, Anum_node_state);
	node_cache.in_backup = (state != NULL && strcmp(state, REPLSTAMP_STATE_BACKUP) == 0);
	if (!node_int64(tuple, desc, Anum_node_system_identifier, &node_cache.system_identifier))
		node_cache.system_identifier = 0;
	d = heap_getattr(tuple, Anum_node_timeline, desc, &isnull);
	node_cache.timeline = isnull ? 0 : DatumGetInt32(d);
	node_cache.has_backup_lus = node_int64(tuple, desc, Anum_node_backup_lus,
										   &node_cache.backup_lus);
	node_cache.has_backup_next_serial = node_int64(tuple, desc, Anum_node_backup_next_serial,
												   &node_cache.backup_next_serial);
	node_cache.backup_label = node_text(tuple, desc, Anum_node_backup_label);
	node_cache.restore_fingerprint = node_text(tuple, desc, Anum_node_restore_fingerprint);
	node_cache.verified = false;
	if (cat->v11)
	{
		/*
		 * Checked in this start, and in this database: CREATE DATABASE ...
		 * TEMPLATE copies the row, token and all, and the copy must still be
		 * checked (it rotates).  Every check leaves the OID of its database
		 * at the head of restore_fingerprint (identity.c).
		 */
		d = heap_getattr(tuple, Anum_node_verified_token, desc, &isnull);
		node_cache.verified = !isnull && replstamp_shared != NULL &&
			memcmp(DatumGetUUIDP(d)->data, replstamp_shared->start_token.data, UUID_LEN) == 0 &&
			catalog_fingerprint_is_this_database(node_cache.restore_fingerprint);
	}

	systable_endscan(scan);
	UnregisterSnapshot(snapshot);
	table_close(rel, AccessShareLock);
	MemoryContextSwitchTo(old);

	/* An invalidation while we read means we must read again next time. */
	node_valid = catalog_valid;
	return &node_cache;
}

/*
 * Does a restore fingerprint (identity.c) name this database?  A database
 * copied with CREATE DATABASE ... TEMPLATE carries its template's state
 * row, verified token included: it must not pass for verified.
 */
bool
catalog_fingerprint_is_this_database(const char *fp)
{
	char		dbpart[32];
	size_t		len;

	if (fp == NULL)
		return false;
	len = snprintf(dbpart, sizeof(dbpart), "database %u", MyDatabaseId);
	return strncmp(fp, dbpart, len) == 0 && (fp[len] == '\0' || fp[len] == ';');
}

/*
 * Forget the cached state row (after this backend changed it).
 */
void
catalog_node_forget(void)
{
	node_valid = false;
}

/*
 * A new random (version 4) uuid.
 */
void
catalog_mint_uuid(pg_uuid_t *uuid)
{
	if (!pg_strong_random(uuid->data, UUID_LEN))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate random values")));
	uuid->data[6] = (uuid->data[6] & 0x0f) | 0x40;	/* version 4 */
	uuid->data[8] = (uuid->data[8] & 0x3f) | 0x80;	/* RFC 4122 variant */
}

/* The text form of a uuid, palloc'd. */
char *
catalog_uuid_text(const pg_uuid_t *uuid)
{
	return DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(uuid)));
}

/*
 * Owner of the extension in the current database.  Looked up once per
 * transaction (and again after a relation changed): the apply
 * and the stamp path act as the owner for every change.
 */
Oid
catalog_extension_owner(void)
{
	Oid			extoid;
	Relation	rel;
	SysScanDesc scan;
	ScanKeyData key;
	HeapTuple	tuple;
	Oid			owner;

	if (OidIsValid(owner_seen) && owner_seen_in == PGPROC_LXID(MyProc) &&
		owner_seen_in != InvalidLocalTransactionId)
		return owner_seen;
	extoid = get_extension_oid("replstamp", false);

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
	owner_seen = owner;
	owner_seen_in = PGPROC_LXID(MyProc);
	return owner;
}

/*-------------------------------------------------------------------------
 *
 * replicator.c
 *		Pull-based replication: replstamp.sync(peer) connects to a peer
 *		with libpq, asks for every change it holds that this node's vector
 *		lacks, and applies them in the caller's transaction with their
 *		original stamps, last writer wins per row.
 *
 * Serving side (replstamp.serve_vector()): the peer's vector is computed
 * first, from its lowest uncommitted serial, then its WAL is flushed, and
 * only then are the changes read, with a later snapshot, up to that vector:
 * a change below the watermark has committed before the snapshot, and is
 * durable, so a crash cannot make the peer hand its serial out again.
 *
 * Applying: every change of the batch in one transaction (the caller's),
 * so a batch applies whole or not at all.  Each change is applied to its
 * table as the table's owner, in a security-restricted operation, with
 * session_replication_role = replica (the table's ordinary triggers and
 * foreign keys do not fire, ENABLE REPLICA/ALWAYS ones do) and with the
 * stamp trigger told to stand aside; the change row is then added to
 * replstamp.changes with its original stamp, so it is served on
 * (transitive replication).  A change already held is skipped.  Conflicts:
 * a change is applied to the table only if no change of the same row (same
 * relation and key) held here is later by (changed_at, replica_id); it is
 * recorded either way, so every node converges to the same rows.
 *
 * Copyright (c) 2026, the replstamp authors
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/table.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "libpq-fe.h"
#include "libpq/libpq-be-fe-helpers.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/regproc.h"
#include "utils/rel.h"
#include "utils/uuid.h"

#include "replstamp.h"
#include "serial.h"
#include "stamp.h"

PG_FUNCTION_INFO_V1(replstamp_add_peer);
PG_FUNCTION_INFO_V1(replstamp_sync);
PG_FUNCTION_INFO_V1(replstamp_serve_vector);

#define PULL_PAGE	1000

/* One entry of a vector. */
typedef struct VectorEntry
{
	char		id[UUID_LEN * 2 + 5];	/* text form */
	int64		serial;
} VectorEntry;

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
	int			ret;

	(void) replstamp_catalog(false);
	opts = PQconninfoParse(conninfo, &err);
	if (opts == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid connection string for peer \"%s\"", name),
				 errdetail_internal("%s", err ? pchomp(err) : "out of memory")));
	PQconninfoFree(opts);

	values[0] = CStringGetTextDatum(name);
	values[1] = CStringGetTextDatum(conninfo);
	replstamp_become_owner(&ctx);
	SPI_connect();
	ret = SPI_execute_with_args("INSERT INTO replstamp.peer (name, conninfo) VALUES ($1, $2) "
								"ON CONFLICT (name) DO NOTHING",
								2, types, values, NULL, false, 0);
	if (ret != SPI_OK_INSERT)
		elog(ERROR, "could not add peer: %s", SPI_result_code_string(ret));
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("peer \"%s\" already exists", name),
				 errhint("Remove it first with replstamp.drop_peer().")));
	SPI_finish();
	replstamp_restore_user(&ctx);
	PG_RETURN_VOID();
}

/*
 * replstamp.serve_vector(): what a peer may pull from this node, per
 * replica ID.  Flushes WAL so that everything below it is durable.
 */
Datum
replstamp_serve_vector(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int			ret;

	(void) replstamp_catalog(false);
	InitMaterializedSRF(fcinfo, 0);

	SPI_connect();
	ret = SPI_execute("SELECT replica_id, serial FROM replstamp.vector", true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read the vector: %s", SPI_result_code_string(ret));
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		Datum		values[2];
		bool		nulls[2];

		values[0] = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &nulls[0]);
		values[1] = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &nulls[1]);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	SPI_finish();

	/* Every change below the vector just read is now on disk. */
	XLogFlush(GetXLogInsertRecPtr());
	return (Datum) 0;
}

static PGresult *
peer_exec(PGconn *conn, const char *peer, const char *sql, int nparams,
		  const char *const *params, ExecStatusType expected)
{
	PGresult   *res;

	if (nparams > 0)
		res = libpqsrv_exec_params(conn, sql, nparams, NULL, params, NULL, NULL, 0,
								   PG_WAIT_EXTENSION);
	else
		res = libpqsrv_exec(conn, sql, PG_WAIT_EXTENSION);
	if (PQresultStatus(res) != expected)
	{
		char	   *msg = pchomp(res ? PQresultErrorMessage(res) : PQerrorMessage(conn));

		if (msg[0] == '\0')
			msg = pchomp(PQerrorMessage(conn));
		PQclear(res);
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("peer \"%s\" failed during sync", peer),
				 errdetail_internal("%s", msg),
				 errhint("Nothing of this batch was applied; the next sync starts over.")));
	}
	return res;
}

static PGconn *
peer_connect(const char *peer, const char *conninfo)
{
	const char *keywords[8];
	const char *values[8];
	PGconn	   *conn;
	char	   *err = NULL;
	PQconninfoOption *opts = PQconninfoParse(conninfo, &err);
	bool		has_timeout = false;
	int			n = 0;

	if (opts == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid connection string for peer \"%s\"", peer)));
	for (PQconninfoOption *o = opts; o->keyword; o++)
		if (strcmp(o->keyword, "connect_timeout") == 0 && o->val && o->val[0])
			has_timeout = true;
	PQconninfoFree(opts);

	keywords[n] = "dbname";
	values[n++] = conninfo;
	keywords[n] = "application_name";
	values[n++] = "replstamp";
	/* The peer's session reads only what replstamp exposes, by full name. */
	keywords[n] = "options";
	values[n++] = "-c search_path= -c default_transaction_isolation=read\\ committed";
	keywords[n] = "keepalives";
	values[n++] = "1";
	if (!has_timeout)
	{
		keywords[n] = "connect_timeout";
		values[n++] = "10";
	}
	keywords[n] = NULL;
	values[n] = NULL;

	conn = libpqsrv_connect_params(keywords, values, true, PG_WAIT_EXTENSION);
	if (conn == NULL || PQstatus(conn) != CONNECTION_OK)
	{
		char	   *msg = conn ? pchomp(PQerrorMessage(conn)) : "out of memory";

		libpqsrv_disconnect(conn);
		ereport(ERROR,
				(errcode(ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION),
				 errmsg("could not connect to peer \"%s\"", peer),
				 errdetail_internal("%s", msg)));
	}
	return conn;
}

/* Longest relation name accepted from a peer (two quoted identifiers). */
#define MAX_RELATION_LEN	(NAMEDATALEN * 4 + 8)

/* Per-table apply statements, keyed by the relation's name in the change. */
typedef struct ApplyTable
{
	char		relation[MAX_RELATION_LEN];	/* hash key */
	Oid			relid;
	Oid			owner;
	char	   *keys;			/* sorted column names, as a text[] literal */
	char	   *del;			/* $1 = key to delete by, $2 = new image or NULL */
	char	   *upsert;			/* $1 = row image */
} ApplyTable;

static ApplyTable *
apply_table(const char *relation)
{
	List	   *names;
	Oid			relid;
	Relation	rel;
	TupleDesc	desc;
	Oid			pkoid;
	Relation	pkrel;
	ApplyTable *t = palloc0(sizeof(ApplyTable));
	StringInfoData cols,
				vals,
				sets,
				conflict,
				where,
				keychanged,
				keys;
	const char *qname;
	char	  **names_sorted;
	int			ncols = 0;

	names = stringToQualifiedNameList(relation);
	relid = RangeVarGetRelid(makeRangeVarFromNameList(names), RowExclusiveLock, true);
	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("peer sent a change of table %s, which does not exist here", relation),
				 errhint("Create and track the table on every node.")));
	rel = table_open(relid, NoLock);
	if (!stamp_is_tracked(rel))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("peer sent a change of table %s, which is not tracked here", relation),
				 errhint("Track the table with replstamp.track() on every node.")));
	pkoid = RelationGetPrimaryKeyIndex(rel);
	if (!OidIsValid(pkoid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table %s has no primary key", relation)));

	t->relid = relid;
	t->owner = rel->rd_rel->relowner;
	desc = RelationGetDescr(rel);
	qname = quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
									   RelationGetRelationName(rel));
	initStringInfo(&cols);
	initStringInfo(&vals);
	initStringInfo(&sets);
	initStringInfo(&conflict);
	initStringInfo(&where);
	initStringInfo(&keychanged);
	initStringInfo(&keys);
	names_sorted = palloc(sizeof(char *) * desc->natts);
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		const char *col;
		const char *lit;
		char	   *type;

		if (att->attisdropped || att->attgenerated)
			continue;
		col = quote_identifier(NameStr(att->attname));
		lit = quote_literal_cstr(NameStr(att->attname));
		type = format_type_extended(att->atttypid, att->atttypmod,
									FORMAT_TYPE_FORCE_QUALIFY | FORMAT_TYPE_TYPEMOD_GIVEN);
		appendStringInfo(&cols, "%s%s", ncols ? ", " : "", col);
		appendStringInfo(&vals, "%s($1 OPERATOR(pg_catalog.->>) %s)::%s", ncols ? ", " : "", lit, type);
		appendStringInfo(&sets, "%s%s = EXCLUDED.%s", ncols ? ", " : "", col, col);
		names_sorted[ncols++] = NameStr(att->attname);
	}
	pkrel = index_open(pkoid, AccessShareLock);
	for (int k = 0; k < pkrel->rd_index->indnkeyatts; k++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, pkrel->rd_index->indkey.values[k] - 1);
		const char *col = quote_identifier(NameStr(att->attname));
		const char *lit = quote_literal_cstr(NameStr(att->attname));
		char	   *type = format_type_extended(att->atttypid, att->atttypmod,
												FORMAT_TYPE_FORCE_QUALIFY | FORMAT_TYPE_TYPEMOD_GIVEN);

		appendStringInfo(&conflict, "%s%s", k ? ", " : "", col);
		appendStringInfo(&where, "%s%s OPERATOR(pg_catalog.=) ($1 OPERATOR(pg_catalog.->>) %s)::%s",
						 k ? " AND " : "", col, lit, type);
		appendStringInfo(&keychanged, "%s($1 OPERATOR(pg_catalog.->>) %s) IS DISTINCT FROM ($2 OPERATOR(pg_catalog.->>) %s)",
						 k ? " OR " : "", lit, lit);
	}
	index_close(pkrel, AccessShareLock);
	table_close(rel, NoLock);

	/* Sorted column names, for checking that an image fits the table. */
	qsort(names_sorted, ncols, sizeof(char *), pg_qsort_strcmp);
	appendStringInfoString(&keys, "{");
	for (int i = 0; i < ncols; i++)
	{
		appendStringInfoString(&keys, i ? "," : "");
		appendStringInfoChar(&keys, '"');
		for (const char *p = names_sorted[i]; *p; p++)
		{
			if (*p == '"' || *p == '\\')
				appendStringInfoChar(&keys, '\\');
			appendStringInfoChar(&keys, *p);
		}
		appendStringInfoChar(&keys, '"');
	}
	appendStringInfoString(&keys, "}");
	t->keys = keys.data;

	/* Delete by the old key; for an UPDATE only when the key changed. */
	t->del = psprintf("DELETE FROM %s WHERE %s AND ($2 IS NULL OR %s)",
					  qname, where.data, keychanged.data);
	t->upsert = psprintf("INSERT INTO %s (%s) VALUES (%s) ON CONFLICT (%s) DO UPDATE SET %s",
						 qname, cols.data, vals.data, conflict.data, sets.data);
	return t;
}

/* What an error while applying a change names. */
typedef struct ApplyContext
{
	const char *peer;
	char	  **f;
} ApplyContext;

static void
apply_error_context(void *arg)
{
	ApplyContext *c = arg;

	errcontext("applying change %s/%s of table %s from peer \"%s\"",
			   c->f[0] ? c->f[0] : "?", c->f[1] ? c->f[1] : "?",
			   c->f[2] ? c->f[2] : "?", c->peer);
}

/*
 * Local changes (stamped here, applied = false) are not in the row index,
 * so that a local write does not pay for an index insert.  The apply finds
 * them in a map of the rows changed here, built from the change log by
 * serial: this node's serials follow its stamp times (the trigger reads
 * the clock, then takes the serial; the hybrid clock never goes back past
 * an applied change), so the local changes stamped at or after T are the
 * newest serials of each of this data set's replica IDs, read newest first
 * down to a stamp older than T - LOCAL_MARGIN_MS.  The margin covers the
 * moment between reading the clock and taking the serial, and small steps
 * back of the wall clock.  Serials at or above the lowest uncommitted one
 * may still commit: local_refresh() reads them again each time.
 */
#define LOCAL_MARGIN_MS		5000
#define LOCAL_PAGE			1000

typedef struct LocalRow
{
	char	   *relation;
	Jsonb	   *pk;
	TimestampTz changed_at;
	pg_uuid_t	replica_id;
	int64		serial;
} LocalRow;

typedef struct LocalEntry
{
	int64		row_hash;		/* hash key */
	List	   *rows;			/* LocalRow *, one per distinct row */
} LocalEntry;

typedef struct OwnId
{
	Datum		id;				/* uuid */
	int64		top;			/* every local change up to here is read */
	int64		next_down;		/* reading down continues below here */
	bool		exhausted;		/* read down to the first */
} OwnId;

typedef struct LocalMap
{
	MemoryContext cxt;
	HTAB	   *rows;
	int			nids;
	OwnId	   *ids;
	TimestampTz covered_from;	/* local changes stamped since are read */
	int64		quiet_at;		/* next serial when the last refresh found
								 * nothing in flight, or 0 */
} LocalMap;

static LocalMap *local_map = NULL;

static void
local_add(int64 hash, const char *relation, Jsonb *pk, TimestampTz changed_at,
		  const pg_uuid_t *replica_id, int64 serial)
{
	LocalEntry *e;
	bool		found;
	ListCell   *lc;
	LocalRow   *r;
	MemoryContext old = MemoryContextSwitchTo(local_map->cxt);

	e = hash_search(local_map->rows, &hash, HASH_ENTER, &found);
	if (!found)
		e->rows = NIL;
	foreach(lc, e->rows)
	{
		r = lfirst(lc);
		if (strcmp(r->relation, relation) == 0 &&
			DatumGetBool(DirectFunctionCall2(jsonb_eq, JsonbPGetDatum(r->pk), JsonbPGetDatum(pk))))
		{
			if (changed_at > r->changed_at ||
				(changed_at == r->changed_at &&
				 memcmp(replica_id->data, r->replica_id.data, UUID_LEN) > 0))
			{
				r->changed_at = changed_at;
				r->replica_id = *replica_id;
				r->serial = serial;
			}
			MemoryContextSwitchTo(old);
			return;
		}
	}
	r = palloc(sizeof(LocalRow));
	r->relation = pstrdup(relation);
	r->pk = DatumGetJsonbPCopy(JsonbPGetDatum(pk));
	r->changed_at = changed_at;
	r->replica_id = *replica_id;
	r->serial = serial;
	e->rows = lappend(e->rows, r);
	MemoryContextSwitchTo(old);
}

/* Add the rows of the last SPI result (row_hash, relation, pk, changed_at, serial). */
static void
local_add_result(OwnId *own, TimestampTz *oldest, int64 *last)
{
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		int64		hash = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		char	   *relation = TextDatumGetCString(SPI_getbinval(tup, desc, 2, &isnull));
		Jsonb	   *pk = DatumGetJsonbP(SPI_getbinval(tup, desc, 3, &isnull));
		TimestampTz t = DatumGetTimestampTz(SPI_getbinval(tup, desc, 4, &isnull));
		int64		serial = DatumGetInt64(SPI_getbinval(tup, desc, 5, &isnull));

		local_add(hash, relation, pk, t, DatumGetUUIDP(own->id), serial);
		if (oldest && t < *oldest)
			*oldest = t;
		*last = serial;
	}
}

static void
local_map_start(void)
{
	const ReplstampCatalog *cat = replstamp_catalog(false);
	HASHCTL		ctl;
	MemoryContext cxt;
	int64		lus;
	int			ret;

	cxt = AllocSetContextCreate(TopTransactionContext, "replstamp local rows",
								ALLOCSET_DEFAULT_SIZES);
	local_map = MemoryContextAllocZero(cxt, sizeof(LocalMap));
	local_map->cxt = cxt;
	ctl.keysize = sizeof(int64);
	ctl.entrysize = sizeof(LocalEntry);
	ctl.hcxt = cxt;
	local_map->rows = hash_create("replstamp local rows", 1024, &ctl,
								  HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	local_map->covered_from = DT_NOEND;

	/* Below the LUS every local change is final, and visible after it. */
	lus = serial_lus(cat->serial_seq);
	ret = SPI_execute("SELECT h.replica_id, "
					  "(SELECT max(c.serial) FROM replstamp.changes c WHERE c.replica_id = h.replica_id) "
					  "FROM replstamp.replica_history h", false, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "replstamp: could not read the replica history");
	local_map->nids = SPI_processed;
	local_map->ids = MemoryContextAllocZero(cxt, sizeof(OwnId) * Max(SPI_processed, 1));
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		Datum		id = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull);
		Datum		max = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull);
		OwnId	   *own = &local_map->ids[i];

		own->id = PointerGetDatum(MemoryContextAlloc(cxt, UUID_LEN));
		memcpy(DatumGetPointer(own->id), DatumGetPointer(id), UUID_LEN);
		own->top = isnull ? 0 : Min(DatumGetInt64(max), lus - 1);
		own->next_down = own->top + 1;
	}
}

static void
local_map_end(void)
{
	if (local_map)
		MemoryContextDelete(local_map->cxt);
	local_map = NULL;
}

/*
 * Read the local changes that committed since the last look.  Nothing to
 * read if no serial was in flight then and none has been taken since.
 */
static void
local_refresh(void)
{
	const ReplstampCatalog *cat = replstamp_catalog(false);
	int64		lus = serial_lus(cat->serial_seq);
	int64		next = serial_next(cat->serial_seq);

	if (local_map->quiet_at != 0 && local_map->quiet_at == next)
		return;
	local_map->quiet_at = (lus == next) ? next : 0;

	for (int i = 0; i < local_map->nids; i++)
	{
		OwnId	   *own = &local_map->ids[i];
		Oid			t[2] = {UUIDOID, INT8OID};
		Datum		v[2] = {own->id, Int64GetDatum(own->top)};
		int64		last = own->top;
		int			ret;

		ret = SPI_execute_with_args("SELECT row_hash, relation, pk, changed_at, serial "
									"FROM replstamp.changes WHERE replica_id = $1 AND serial > $2 "
									"AND NOT applied ORDER BY serial",
									2, t, v, NULL, false, 0);
		if (ret != SPI_OK_SELECT)
			elog(ERROR, "replstamp: could not read local changes");
		local_add_result(own, NULL, &last);
		own->top = Max(own->top, Min(last, lus - 1));
	}
}

/*
 * Make sure every local change stamped at or after t is in the map.  Not
 * read-only: the snapshot of the statement that called sync() is older
 * than the LUS that set the tops, and would miss changes committed in
 * between, below the tops, where local_refresh() does not look.
 */
static void
local_cover(TimestampTz t)
{
	TimestampTz target = t - (TimestampTz) LOCAL_MARGIN_MS * 1000;

	if (target >= local_map->covered_from)
		return;
	for (int i = 0; i < local_map->nids; i++)
	{
		OwnId	   *own = &local_map->ids[i];

		while (!own->exhausted)
		{
			Oid			ty[2] = {UUIDOID, INT8OID};
			Datum		v[2] = {own->id, Int64GetDatum(own->next_down)};
			TimestampTz oldest = DT_NOEND;
			int64		last = own->next_down;
			int			ret;

			CHECK_FOR_INTERRUPTS();
			ret = SPI_execute_with_args("SELECT row_hash, relation, pk, changed_at, serial "
										"FROM replstamp.changes WHERE replica_id = $1 AND serial < $2 "
										"AND NOT applied ORDER BY serial DESC LIMIT " CppAsString2(LOCAL_PAGE),
										2, ty, v, NULL, false, 0);
			if (ret != SPI_OK_SELECT)
				elog(ERROR, "replstamp: could not read local changes");
			if (SPI_processed < LOCAL_PAGE)
				own->exhausted = true;
			local_add_result(own, &oldest, &last);
			own->next_down = last;
			if (oldest < target)
				break;
		}
	}
	local_map->covered_from = target;
}

/* The latest local change of (relation, pk) later than (t, id), or NULL. */
static LocalRow *
local_later(text *relation, Jsonb *pk, TimestampTz t, const pg_uuid_t *id)
{
	int64		hash = stamp_row_hash(relation, pk);
	LocalEntry *e;
	ListCell   *lc;
	char	   *rel = text_to_cstring(relation);

	local_cover(t);
	e = hash_search(local_map->rows, &hash, HASH_FIND, NULL);
	if (e == NULL)
		return NULL;
	foreach(lc, e->rows)
	{
		LocalRow   *r = lfirst(lc);

		if (strcmp(r->relation, rel) == 0 &&
			DatumGetBool(DirectFunctionCall2(jsonb_eq, JsonbPGetDatum(r->pk), JsonbPGetDatum(pk))))
		{
			if (r->changed_at > t ||
				(r->changed_at == t && memcmp(r->replica_id.data, id->data, UUID_LEN) > 0))
				return r;
			return NULL;
		}
	}
	return NULL;
}

/*
 * The latest change held here of the row (relation, pk) that is later than
 * (changed_at, replica_id), if any: returns false if there is none, else
 * its pk and row image (NULL for a DELETE) in *pk_out and *image_out.
 * Applied changes come from the row index, local ones from the map.  Not
 * read-only: it must see what this batch recorded so far, and changes
 * committed meanwhile.
 */
static bool
later_change(Datum relation, Datum pk, Datum changed_at, Datum replica_id,
			 Datum *pk_out, Datum *image_out, bool *image_null)
{
	Oid			tl[4] = {TEXTOID, JSONBOID, TIMESTAMPTZOID, UUIDOID};
	Datum		vl[4] = {relation, pk, changed_at, replica_id};
	int			ret;
	LocalRow   *local;
	bool		have_applied;
	TimestampTz applied_at = 0;
	pg_uuid_t	applied_id;

	/* First: it may read the change log, and SPI_tuptable is needed below. */
	local = local_later(DatumGetTextPP(relation), DatumGetJsonbP(pk),
						DatumGetTimestampTz(changed_at), DatumGetUUIDP(replica_id));

	ret = SPI_execute_with_args("SELECT pk, row_image, changed_at, replica_id FROM replstamp.changes "
								"WHERE row_hash = replstamp.row_hash($1, $2) AND applied "
								"AND relation = $1 AND pk = $2 "
								"AND (changed_at, replica_id) > ($3, $4) "
								"ORDER BY changed_at DESC, replica_id DESC LIMIT 1",
								4, tl, vl, NULL, false, 1);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "replstamp: lookup failed");
	have_applied = SPI_processed > 0;
	if (have_applied)
	{
		bool		isnull;

		applied_at = DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[0],
													   SPI_tuptable->tupdesc, 3, &isnull));
		applied_id = *DatumGetUUIDP(SPI_getbinval(SPI_tuptable->vals[0],
												  SPI_tuptable->tupdesc, 4, &isnull));
	}

	if (local && have_applied &&
		(applied_at > local->changed_at ||
		 (applied_at == local->changed_at &&
		  memcmp(applied_id.data, local->replica_id.data, UUID_LEN) > 0)))
		local = NULL;			/* the applied one is the latest */
	if (local == NULL && !have_applied)
		return false;
	if (pk_out == NULL)
		return true;

	if (local)
	{
		Oid			tk[2] = {UUIDOID, INT8OID};
		Datum		vk[2] = {UUIDPGetDatum(&local->replica_id), Int64GetDatum(local->serial)};

		ret = SPI_execute_with_args("SELECT pk, row_image FROM replstamp.changes "
									"WHERE replica_id = $1 AND serial = $2",
									2, tk, vk, NULL, false, 1);
		if (ret != SPI_OK_SELECT || SPI_processed != 1)
			elog(ERROR, "replstamp: could not read local change " INT64_FORMAT, local->serial);
	}
	{
		bool		isnull;

		*pk_out = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		*image_out = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, image_null);
		/* Out of SPI's memory, into the caller's. */
		*pk_out = PointerGetDatum(SPI_datumTransfer(*pk_out, false, -1));
		if (!*image_null)
			*image_out = PointerGetDatum(SPI_datumTransfer(*image_out, false, -1));
	}
	return true;
}

/*
 * Write one change into its table: remove the row under its old key (an
 * UPDATE or DELETE; for an UPDATE only if the key changed), then upsert the
 * new image.  Runs as the table's owner, in a security-restricted
 * operation, with session_replication_role = replica, and unstamped.
 */
static void
apply_to_table(ApplyTable *t, bool is_insert, Datum pk, Datum image, bool image_null)
{
	Oid			save_userid;
	int			save_sec;
	int			save_nestlevel;
	Oid			tj[2] = {JSONBOID, JSONBOID};
	Datum		vj[2];
	char		nj[2] = {' ', ' '};
	int			ret;

	GetUserIdAndSecContext(&save_userid, &save_sec);
	SetUserIdAndSecContext(t->owner, save_sec | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	save_nestlevel = NewGUCNestLevel();
	(void) set_config_option("session_replication_role", "replica",
							 PGC_SUSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	stamp_begin_apply();

	if (!is_insert)
	{
		vj[0] = pk;
		vj[1] = image_null ? (Datum) 0 : image;
		nj[1] = image_null ? 'n' : ' ';
		ret = SPI_execute_with_args(t->del, 2, tj, vj, nj, false, 0);
		if (ret != SPI_OK_DELETE)
			elog(ERROR, "replstamp: apply failed: %s", SPI_result_code_string(ret));
	}
	if (!image_null)
	{
		vj[0] = image;
		ret = SPI_execute_with_args(t->upsert, 1, tj, vj, NULL, false, 0);
		if (ret != SPI_OK_INSERT)
			elog(ERROR, "replstamp: apply failed: %s", SPI_result_code_string(ret));
	}

	stamp_end_apply();
	AtEOXact_GUC(true, save_nestlevel);
	SetUserIdAndSecContext(save_userid, save_sec);
}

/*
 * Apply one change; returns true if it was new here.  The caller acts as
 * the extension owner with search_path = pg_catalog.
 */
static bool
apply_change(const char *peer, char **f, HTAB *tables)
{
	const char *id = f[0],
			   *serial = f[1],
			   *relation = f[2],
			   *op = f[3],
			   *pk = f[4],
			   *image = f[5],
			   *changed_at = f[6];
	Datum		v7[7];
	char		n7[7] = {' ', ' ', ' ', ' ', ' ', ' ', ' '};
	Oid			t7[7] = {UUIDOID, INT8OID, TEXTOID, TEXTOID, JSONBOID, JSONBOID, TIMESTAMPTZOID};
	bool		superseded;
	ApplyTable *t;
	bool		found;
	int			ret;

	if (id == NULL || serial == NULL || relation == NULL || op == NULL ||
		pk == NULL || changed_at == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("peer \"%s\" sent a malformed change", peer)));
	if (strcmp(op, "INSERT") != 0 && strcmp(op, "UPDATE") != 0 && strcmp(op, "DELETE") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("peer \"%s\" sent a change with unknown operation \"%s\"", peer, op)));
	if ((image == NULL) != (strcmp(op, "DELETE") == 0))
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("peer \"%s\" sent a malformed change", peer),
				 errdetail("An %s must have a row image exactly when it is not a DELETE.", op)));

	v7[0] = DirectFunctionCall1(uuid_in, CStringGetDatum(id));
	v7[1] = DirectFunctionCall1(int8in, CStringGetDatum(serial));
	v7[2] = CStringGetTextDatum(relation);
	v7[3] = CStringGetTextDatum(op);
	v7[4] = DirectFunctionCall1(jsonb_in, CStringGetDatum(pk));
	if (image)
		v7[5] = DirectFunctionCall1(jsonb_in, CStringGetDatum(image));
	else
		n7[5] = 'n';
	v7[6] = DirectFunctionCall3(timestamptz_in, CStringGetDatum(changed_at),
								ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1));

	/*
	 * Held already (it came through another peer)?  Lookups are not
	 * read-only: they must see the changes this batch has recorded so far.
	 */
	ret = SPI_execute_with_args("SELECT 1 FROM replstamp.changes WHERE replica_id = $1 AND serial = $2",
								2, t7, v7, NULL, false, 1);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "replstamp: lookup failed");
	if (SPI_processed > 0)
		return false;

	if (strlen(relation) >= MAX_RELATION_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_NAME_TOO_LONG),
				 errmsg("peer \"%s\" sent a change with an overlong table name", peer)));
	t = hash_search(tables, relation, HASH_FIND, &found);
	if (!found)
	{
		ApplyTable *nt = apply_table(relation);

		t = hash_search(tables, relation, HASH_ENTER, NULL);
		memcpy((char *) t + MAX_RELATION_LEN, (char *) nt + MAX_RELATION_LEN,
			   sizeof(ApplyTable) - MAX_RELATION_LEN);
	}

	/* Last writer wins: is a later change of this row held here? */
	superseded = later_change(v7[2], v7[4], v7[6], v7[0], NULL, NULL, NULL);

	if (image)
	{
		Oid			tk[2] = {JSONBOID, TEXTOID};
		Datum		vk[2];

		vk[0] = v7[5];
		vk[1] = CStringGetTextDatum(t->keys);
		ret = SPI_execute_with_args("SELECT (SELECT array_agg(k ORDER BY k COLLATE \"C\") "
									"FROM jsonb_object_keys($1) k) = $2::text[]",
									2, tk, vk, NULL, true, 1);
		if (ret != SPI_OK_SELECT || SPI_processed != 1)
			elog(ERROR, "replstamp: image check failed");
		if (!DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &found)) || found)
			ereport(ERROR,
					(errcode(ERRCODE_DATA_EXCEPTION),
					 errmsg("peer \"%s\" sent a row of %s that does not fit the table here", peer, relation),
					 errdetail("The row has the columns %s; the table here has %s.",
							   TextDatumGetCString(DirectFunctionCall1(jsonb_out, v7[5])), t->keys),
					 errhint("Give the table the same columns on every node.")));
	}

	if (!superseded)
	{
		Datum		later_pk,
					later_image;
		bool		later_null;

		apply_to_table(t, strcmp(op, "INSERT") == 0, v7[4], v7[5], image == NULL);

		/*
		 * A local transaction that held the row may have committed a later
		 * change of it while we waited for its lock, and we wrote over it:
		 * put the latest change back.
		 */
		local_refresh();
		if (later_change(v7[2], v7[4], v7[6], v7[0], &later_pk, &later_image, &later_null))
			apply_to_table(t, false, later_pk, later_image, later_null);
	}
	serial_clock_seen(DatumGetTimestampTz(v7[6]));

	ret = SPI_execute_with_args("INSERT INTO replstamp.changes "
								"(replica_id, serial, relation, op, pk, row_image, changed_at, row_hash, applied) "
								"VALUES ($1, $2, $3, $4, $5, $6, $7, replstamp.row_hash($3, $5), true)",
								7, t7, v7, n7, false, 0);
	if (ret != SPI_OK_INSERT)
		elog(ERROR, "replstamp: could not record the change: %s", SPI_result_code_string(ret));
	return true;
}

static int
vector_find(VectorEntry *v, int n, const char *id)
{
	for (int i = 0; i < n; i++)
		if (strcmp(v[i].id, id) == 0)
			return i;
	return -1;
}

/*
 * replstamp.sync(peer text) RETURNS bigint: pull and apply what the peer
 * has and this node lacks; returns the number of changes applied.
 */
Datum
replstamp_sync(PG_FUNCTION_ARGS)
{
	char	   *peer = text_to_cstring(PG_GETARG_TEXT_PP(0));
	ReplstampOwnerContext ctx;
	char	   *conninfo;
	VectorEntry *have;
	int			nhave;
	VectorEntry *wm = NULL;
	int			nwm = 0;
	PGconn	   *volatile conn = NULL;
	int64		applied = 0;
	Oid			tp[1] = {TEXTOID};
	Datum		vp[1];
	HASHCTL		hctl;
	HTAB	   *tables;
	int			ret;

	(void) replstamp_catalog(false);
	serial_require_shmem();

	replstamp_become_owner(&ctx);
	SPI_connect();

	vp[0] = CStringGetTextDatum(peer);
	ret = SPI_execute_with_args("SELECT conninfo FROM replstamp.peer WHERE name = $1",
								1, tp, vp, NULL, true, 1);
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("peer \"%s\" does not exist", peer),
				 errhint("Add it with replstamp.add_peer().")));
	conninfo = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

	ret = SPI_execute("SELECT replica_id, serial FROM replstamp.vector", true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read the vector");
	nhave = SPI_processed;
	have = palloc0(sizeof(VectorEntry) * Max(nhave, 1));
	for (int i = 0; i < nhave; i++)
	{
		strlcpy(have[i].id, SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1),
				sizeof(have[i].id));
		have[i].serial = pg_strtoint64(SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2));
	}

	hctl.keysize = MAX_RELATION_LEN;
	hctl.entrysize = sizeof(ApplyTable);
	hctl.hcxt = CurrentMemoryContext;
	tables = hash_create("replstamp apply tables", 16, &hctl, HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);

	pgstat_report_activity(STATE_RUNNING, psprintf("replstamp: syncing from peer %s", peer));
	local_map_start();
	PG_TRY();
	{
		PGresult   *res;
		char		prev_id[UUID_LEN * 2 + 5] = "";
		int64		prev_serial = 0;
		StringInfoData ids,
					los,
					his;
		const char *params[3];

		conn = peer_connect(peer, conninfo);
		PQclear(peer_exec(conn, peer, "BEGIN ISOLATION LEVEL READ COMMITTED READ ONLY", 0, NULL, PGRES_COMMAND_OK));

		/* 1. The peer's watermarks, computed before its changes are read. */
		res = peer_exec(conn, peer, "SELECT replica_id, serial FROM replstamp.serve_vector()",
						0, NULL, PGRES_TUPLES_OK);
		if (PQnfields(res) != 2)
		{
			PQclear(res);
			ereport(ERROR, (errcode(ERRCODE_DATA_EXCEPTION),
							errmsg("peer \"%s\" sent a malformed vector", peer)));
		}
		nwm = PQntuples(res);
		wm = palloc0(sizeof(VectorEntry) * Max(nwm, 1));
		initStringInfo(&ids);
		initStringInfo(&los);
		initStringInfo(&his);
		for (int i = 0; i < nwm; i++)
		{
			int			h;

			if (PQgetisnull(res, i, 0) || PQgetisnull(res, i, 1))
			{
				PQclear(res);
				ereport(ERROR, (errcode(ERRCODE_DATA_EXCEPTION),
								errmsg("peer \"%s\" sent a malformed vector", peer)));
			}
			/* validates the uuid */
			(void) DirectFunctionCall1(uuid_in, CStringGetDatum(PQgetvalue(res, i, 0)));
			strlcpy(wm[i].id, PQgetvalue(res, i, 0), sizeof(wm[i].id));
			wm[i].serial = pg_strtoint64(PQgetvalue(res, i, 1));
			h = vector_find(have, nhave, wm[i].id);
			appendStringInfo(&ids, "%s%s", i ? "," : "{", wm[i].id);
			appendStringInfo(&los, "%s" INT64_FORMAT, i ? "," : "{", h >= 0 ? have[h].serial : (int64) 0);
			appendStringInfo(&his, "%s" INT64_FORMAT, i ? "," : "{", wm[i].serial);
		}
		PQclear(res);
		appendStringInfoString(&ids, nwm ? "}" : "{}");
		appendStringInfoString(&los, nwm ? "}" : "{}");
		appendStringInfoString(&his, nwm ? "}" : "{}");
		params[0] = ids.data;
		params[1] = los.data;
		params[2] = his.data;

		/* 2. Every change above our vector and up to theirs, a page at a time. */
		PQclear(peer_exec(conn, peer,
						  "DECLARE replstamp_pull NO SCROLL CURSOR FOR "
						  "SELECT c.replica_id, c.serial, c.relation, c.op, c.pk, c.row_image, c.changed_at, w.lo, w.hi "
						  "FROM unnest($1::pg_catalog.uuid[], $2::pg_catalog.int8[], $3::pg_catalog.int8[]) w(id, lo, hi) "
						  "JOIN replstamp.changes c ON c.replica_id = w.id AND c.serial > w.lo AND c.serial <= w.hi "
						  "ORDER BY c.replica_id, c.serial",
						  3, params, PGRES_COMMAND_OK));
		for (;;)
		{
			int			n;

			CHECK_FOR_INTERRUPTS();
			res = peer_exec(conn, peer, "FETCH " CppAsString2(PULL_PAGE) " FROM replstamp_pull",
							0, NULL, PGRES_TUPLES_OK);
			n = PQntuples(res);
			if (PQnfields(res) != 9)
			{
				PQclear(res);
				ereport(ERROR, (errcode(ERRCODE_DATA_EXCEPTION),
								errmsg("peer \"%s\" sent malformed changes", peer)));
			}
			for (int i = 0; i < n; i++)
			{
				char	   *f[7];
				int64		s,
							lo,
							hi;

				for (int k = 0; k < 7; k++)
					f[k] = PQgetisnull(res, i, k) ? NULL : PQgetvalue(res, i, k);
				/*
				 * The range asked for, from our own records, not from what
				 * the peer echoes: a peer must not widen it.
				 */
				s = f[1] ? pg_strtoint64(f[1]) : 0;
				{
					int			w = f[0] ? vector_find(wm, nwm, f[0]) : -1;
					int			h = f[0] ? vector_find(have, nhave, f[0]) : -1;

					lo = h >= 0 ? have[h].serial : 0;
					hi = w >= 0 ? wm[w].serial : -1;
				}
				if (f[0] && strcmp(prev_id, f[0]) == 0 && s <= prev_serial)
				{
					PQclear(res);
					ereport(ERROR,
							(errcode(ERRCODE_DATA_EXCEPTION),
							 errmsg("peer \"%s\" sent serial " INT64_FORMAT " after " INT64_FORMAT " of the same replica ID", peer, s, prev_serial),
							 errdetail("Changes must come in increasing serial order.")));
				}
				if (f[0])
				{
					strlcpy(prev_id, f[0], sizeof(prev_id));
					prev_serial = s;
				}
				if (s <= lo || s > hi)
				{
					PQclear(res);
					ereport(ERROR,
							(errcode(ERRCODE_DATA_EXCEPTION),
							 errmsg("peer \"%s\" sent serial " INT64_FORMAT " outside the range it was asked for", peer, s)));
				}
				{
					ApplyContext actx = {peer, f};
					ErrorContextCallback errcb;

					errcb.callback = apply_error_context;
					errcb.arg = &actx;
					errcb.previous = error_context_stack;
					error_context_stack = &errcb;
					if (apply_change(peer, f, tables))
						applied++;
					error_context_stack = errcb.previous;
				}
			}
			PQclear(res);
			if (n < PULL_PAGE)
				break;
		}
		PQclear(peer_exec(conn, peer, "COMMIT", 0, NULL, PGRES_COMMAND_OK));
	}
	PG_FINALLY();
	{
		libpqsrv_disconnect(conn);
		stamp_end_apply();
		local_map_end();
	}
	PG_END_TRY();

	/* 3. Advance the vector to the peer's watermarks (never backwards). */
	for (int i = 0; i < nwm; i++)
	{
		Oid			tv[2] = {UUIDOID, INT8OID};
		Datum		vv[2];

		vv[0] = DirectFunctionCall1(uuid_in, CStringGetDatum(wm[i].id));
		vv[1] = Int64GetDatum(wm[i].serial);
		/* IDs whose every change was made here follow our own LUS. */
		ret = SPI_execute_with_args("INSERT INTO replstamp.vector_state (replica_id, serial) "
									"SELECT $1, $2 WHERE NOT EXISTS (SELECT 1 FROM replstamp.replica_history h "
									"  WHERE h.replica_id = $1 AND NOT EXISTS "
									"  (SELECT 1 FROM replstamp.vector_state v WHERE v.replica_id = $1)) "
									"ON CONFLICT (replica_id) DO UPDATE SET serial = greatest(replstamp.vector_state.serial, EXCLUDED.serial)",
									2, tv, vv, NULL, false, 0);
		if (ret != SPI_OK_INSERT)
			elog(ERROR, "could not advance the vector");
	}

	vp[0] = CStringGetTextDatum(peer);
	{
		Oid			ts[2] = {TEXTOID, INT8OID};
		Datum		vs[2] = {vp[0], Int64GetDatum(applied)};

		ret = SPI_execute_with_args("UPDATE replstamp.peer SET last_sync_at = now(), last_error = NULL, "
									"changes_pulled = changes_pulled + $2 WHERE name = $1",
									2, ts, vs, NULL, false, 0);
	}
	SPI_finish();
	replstamp_restore_user(&ctx);
	pgstat_report_activity(STATE_RUNNING, NULL);
	PG_RETURN_INT64(applied);
}

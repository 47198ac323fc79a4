/*-------------------------------------------------------------------------
 *
 * proto.c
 *		The sync handshake (protocol 2): describing this node, encoding
 *		that as JSON, decoding and validating what a peer sent, and
 *		comparing two histories of one replica ID.
 *
 * Histories: the epochs of a replica ID (identity.c) cut its serials into
 * ranges, one per start of the data set that handed them out.  Two nodes
 * that hold changes of an ID from the same history know the same epochs
 * below what they both hold.  If they know different ones there, their
 * changes of that ID with the same stamps are not the same changes: the
 * data set went back in time, or was cloned, and goes on from there in two
 * histories.
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "catalog.h"
#include "compat.h"
#include "errors.h"
#include "proto.h"
#include "serial.h"
#include "workers.h"

/* GUC replstamp.max_new_replica_ids (defined in sync.c) */
int			proto_max_new_replica_ids = 1000;

/* GUC replstamp.debug_handshake_pause (defined in sync.c, test builds) */
int			proto_debug_handshake_pause = 0;

static int
epoch_cmp(const void *a, const void *b)
{
	const EpochEntry *x = a;
	const EpochEntry *y = b;

	if (x->first != y->first)
		return x->first < y->first ? -1 : 1;
	return memcmp(x->token.data, y->token.data, UUID_LEN);
}

/*
 * Read-only: in the snapshot proto_local() pushed, so that every read of
 * one handshake sees the same commits.  SPI_execute() returns in SPI's
 * procedure context, which SPI_finish() frees; what is allocated after it
 * must go where the caller wanted it.
 */
static void
spi_select(const char *sql)
{
	MemoryContext cxt = CurrentMemoryContext;

	if (SPI_execute(sql, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "replstamp: query failed: %s", sql);
	MemoryContextSwitchTo(cxt);
}

static pg_uuid_t
spi_uuid(int row, int col)
{
	bool		isnull;
	pg_uuid_t	u;

	memcpy(&u, DatumGetUUIDP(SPI_getbinval(SPI_tuptable->vals[row], SPI_tuptable->tupdesc,
										   col, &isnull)), sizeof(pg_uuid_t));
	return u;
}

static int64
spi_int64(int row, int col)
{
	bool		isnull;
	Datum		d = SPI_getbinval(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, col, &isnull);

	return isnull ? 0 : DatumGetInt64(d);
}


/*
 * Describe this node, from its catalog, in the current memory context
 * (which may outlive SPI).  The caller is connected to SPI, as the
 * extension's owner, in a transaction.
 */
void
proto_local(Handshake *h, bool unused)
{
	const ReplstampCatalog *cat = catalog_get_v12("replstamp.serve()");
	const ReplstampNode *node = catalog_node();
	const char *cluster = GetConfigOption("cluster_name", true, false);
	int			nepochs;
	EpochEntry *epochs;
	pg_uuid_t  *epoch_ids;

	Assert(IsTransactionState());

	memset(h, 0, sizeof(Handshake));
	h->protocol = REPLSTAMP_PROTOCOL;
	h->version = REPLSTAMP_VERSION;
	h->replica_id = node->replica_id;
	h->now = serial_clock_now();
	h->label = psprintf("%s%s%s", cluster && cluster[0] ? cluster : "",
						cluster && cluster[0] ? "/" : "",
						get_database_name(MyDatabaseId));

	/*
	 * One snapshot for every read.  A sync commits a vector entry together
	 * with the epochs of the ID up to it (sync.c, advance_vector()); read in
	 * two snapshots, with such a commit between them, the handshake showed
	 * the new entry and the old epochs: a history of the ID that parts from
	 * its origin's at the epoch it lacks.  A peer then refused to pull the
	 * ID, and the ID's own node took itself for a node gone back in time
	 * and rotated.  This transaction may just have rotated (identity.c):
	 * the snapshot is taken after its writes.
	 */
	CommandCounterIncrement();
	PushActiveSnapshot(GetTransactionSnapshot());

	/* Every live epoch, then the vector they are attached to. */
	spi_select("SELECT replica_id, token, first_serial FROM replstamp.epoch WHERE NOT dead "
			   "ORDER BY replica_id, first_serial, token");
	nepochs = SPI_processed;
	epochs = palloc(sizeof(EpochEntry) * Max(nepochs, 1));
	epoch_ids = palloc(sizeof(pg_uuid_t) * Max(nepochs, 1));
	for (int i = 0; i < nepochs; i++)
	{
		epoch_ids[i] = spi_uuid(i, 1);
		epochs[i].token = spi_uuid(i, 2);
		epochs[i].first = spi_int64(i, 3);
	}

#ifdef REPLSTAMP_TESTING
	if (proto_debug_handshake_pause > 0)
		worker_pause_for_tests(proto_debug_handshake_pause, "handshake",
							   "replstamp.debug_handshake_pause");
#endif
	spi_select("SELECT replica_id, serial FROM replstamp.vector ORDER BY replica_id");
	h->nvector = SPI_processed;
	h->vector = palloc0(sizeof(VectorItem) * Max(h->nvector, 1));
	for (int i = 0; i < h->nvector; i++)
	{
		VectorItem *v = &h->vector[i];
		bool		current;

		v->id = spi_uuid(i, 1);
		v->serial = spi_int64(i, 2);
		current = memcmp(v->id.data, h->replica_id.data, UUID_LEN) == 0;
		v->epochs = palloc(sizeof(EpochEntry) * Max(nepochs, 1));
		for (int k = 0; k < nepochs; k++)
			if (memcmp(epoch_ids[k].data, v->id.data, UUID_LEN) == 0 &&
				(current || epochs[k].first <= v->serial))
				v->epochs[v->nepochs++] = epochs[k];
	}

	/* After the vector (its LUS): what it claims was handed out. */
	h->issued = serial_next(cat->serial_seq) - 1;

	spi_select("SELECT replica_id FROM replstamp.replica_history WHERE retired_at IS NOT NULL");
	h->nretired = SPI_processed;
	h->retired = palloc(sizeof(pg_uuid_t) * Max(h->nretired, 1));
	for (int i = 0; i < h->nretired; i++)
		h->retired[i] = spi_uuid(i, 1);

	spi_select("SELECT replica_id, token, first_serial FROM replstamp.epoch WHERE dead");
	h->ndead = SPI_processed;
	h->dead = palloc(sizeof(DeadMark) * Max(h->ndead, 1));
	for (int i = 0; i < h->ndead; i++)
	{
		h->dead[i].id = spi_uuid(i, 1);
		h->dead[i].token = spi_uuid(i, 2);
		h->dead[i].first = spi_int64(i, 3);
	}
	spi_select("SELECT replica_id, serial FROM replstamp.purged");
	h->npurged = SPI_processed;
	h->purged = palloc(sizeof(PurgedMark) * Max(h->npurged, 1));
	for (int i = 0; i < h->npurged; i++)
	{
		h->purged[i].id = spi_uuid(i, 1);
		h->purged[i].serial = spi_int64(i, 2);
	}
	PopActiveSnapshot();
}

static void
append_uuid(StringInfo buf, const pg_uuid_t *u)
{
	appendStringInfo(buf, "\"%s\"", catalog_uuid_text(u));
}

/*
 * The handshake as JSON text.
 */
char *
proto_encode(Handshake *h)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfo(&buf, "{\"protocol\": %d, \"version\": ", h->protocol);
	escape_json(&buf, h->version ? h->version : "");
	appendStringInfoString(&buf, ", \"replica_id\": ");
	append_uuid(&buf, &h->replica_id);
	appendStringInfoString(&buf, ", \"label\": ");
	escape_json(&buf, h->label ? h->label : "");
	appendStringInfo(&buf, ", \"issued\": " INT64_FORMAT ", \"now\": " INT64_FORMAT,
					 h->issued, (int64) h->now);
	appendStringInfoString(&buf, ", \"vector\": [");
	for (int i = 0; i < h->nvector; i++)
	{
		VectorItem *v = &h->vector[i];

		appendStringInfoString(&buf, i ? ", {\"id\": " : "{\"id\": ");
		append_uuid(&buf, &v->id);
		appendStringInfo(&buf, ", \"serial\": " INT64_FORMAT ", \"count\": " INT64_FORMAT
						 ", \"oldest\": " INT64_FORMAT ", \"epochs\": [",
						 v->serial, v->count, (int64) v->oldest);
		for (int k = 0; k < v->nepochs; k++)
		{
			appendStringInfoString(&buf, k ? ", [" : "[");
			append_uuid(&buf, &v->epochs[k].token);
			appendStringInfo(&buf, ", " INT64_FORMAT "]", v->epochs[k].first);
		}
		appendStringInfoString(&buf, "]}");
	}
	appendStringInfoString(&buf, "], \"retired\": [");
	for (int i = 0; i < h->nretired; i++)
	{
		if (i)
			appendStringInfoString(&buf, ", ");
		append_uuid(&buf, &h->retired[i]);
	}
	appendStringInfoString(&buf, "], \"dead\": [");
	for (int i = 0; i < h->ndead; i++)
	{
		appendStringInfoString(&buf, i ? ", [" : "[");
		append_uuid(&buf, &h->dead[i].id);
		appendStringInfoString(&buf, ", ");
		append_uuid(&buf, &h->dead[i].token);
		appendStringInfo(&buf, ", " INT64_FORMAT "]", h->dead[i].first);
	}
	appendStringInfoString(&buf, "], \"purged\": [");
	for (int i = 0; i < h->npurged; i++)
	{
		appendStringInfoString(&buf, i ? ", [" : "[");
		append_uuid(&buf, &h->purged[i].id);
		appendStringInfo(&buf, ", " INT64_FORMAT "]", h->purged[i].serial);
	}
	appendStringInfo(&buf, "], \"rotated\": %s}", h->rotated ? "true" : "false");
	return buf.data;
}

/* ---------------------------------------------------------------------
 * Decoding, with every field checked
 * ---------------------------------------------------------------------
 */

static const char *decoding_from;

pg_attribute_noreturn()
static void
malformed(const char *detail)
{
	ereport(ERROR,
			(errcode(ERRCODE_DATA_EXCEPTION),
			 errmsg("%s sent a malformed handshake", decoding_from),
			 errdetail_internal("%s", detail)));
}

static int
replica_id_cmp(const void *a, const void *b)
{
	return memcmp(((const pg_uuid_t *) a)->data, ((const pg_uuid_t *) b)->data, UUID_LEN);
}

static JsonbValue *
member(JsonbContainer *c, const char *key)
{
	JsonbValue	k;

	if (!JsonContainerIsObject(c))
		malformed(_("An object was expected."));
	k.type = jbvString;
	k.val.string.val = (char *) key;
	k.val.string.len = strlen(key);
	return findJsonbValueFromContainer(c, JB_FOBJECT, &k);
}

static int64
as_int64(JsonbValue *v, const char *what)
{
	if (v == NULL || v->type != jbvNumeric)
		malformed(psprintf(_("The value of \"%s\" is not a number."), what));
	return DatumGetInt64(DirectFunctionCall1(numeric_int8, NumericGetDatum(v->val.numeric)));
}

static pg_uuid_t
as_uuid(JsonbValue *v, const char *what)
{
	pg_uuid_t	u;
	char	   *s;
	Datum		d;

	if (v == NULL || v->type != jbvString || v->val.string.len != 36)
		malformed(psprintf(_("The value of \"%s\" is not a uuid."), what));
	s = pnstrdup(v->val.string.val, v->val.string.len);
	d = DirectFunctionCall1(uuid_in, CStringGetDatum(s));
	memcpy(&u, DatumGetUUIDP(d), sizeof(pg_uuid_t));
	return u;
}

static char *
as_text(JsonbValue *v, const char *what, int maxlen)
{
	if (v == NULL || v->type != jbvString || v->val.string.len > maxlen)
		malformed(psprintf(_("The value of \"%s\" is not a string of at most %d bytes."), what, maxlen));
	return pnstrdup(v->val.string.val, v->val.string.len);
}

static JsonbContainer *
as_array(JsonbValue *v, const char *what, int *n)
{
	if (v == NULL || v->type != jbvBinary || !JsonContainerIsArray(v->val.binary.data))
		malformed(psprintf(_("The value of \"%s\" is not an array."), what));
	*n = JsonContainerSize(v->val.binary.data);
	return v->val.binary.data;
}

static JsonbValue *
element(JsonbContainer *c, int i)
{
	JsonbValue *v = getIthJsonbValueFromContainer(c, i);

	if (v == NULL)
		malformed(_("An array is shorter than it says."));
	return v;
}

static JsonbContainer *
as_object(JsonbValue *v, const char *what)
{
	if (v == NULL || v->type != jbvBinary || !JsonContainerIsObject(v->val.binary.data))
		malformed(psprintf(_("The value of \"%s\" is not an object."), what));
	return v->val.binary.data;
}

/*
 * Parse a handshake sent by a peer ("peer \"x\"" or "node \"label\"" in
 * messages).  Anything malformed is an error that names from.
 */
void
proto_decode(Jsonb *json, Handshake *h, const char *from)
{
	JsonbContainer *root = &json->root;
	JsonbContainer *arr;
	int			n;

	decoding_from = from;
	memset(h, 0, sizeof(Handshake));
	if (JB_ROOT_IS_SCALAR(json) || !JB_ROOT_IS_OBJECT(json))
		malformed(_("It is not a JSON object."));
	h->protocol = (int) as_int64(member(root, "protocol"), "protocol");
	h->version = as_text(member(root, "version"), "version", 64);
	h->replica_id = as_uuid(member(root, "replica_id"), "replica_id");
	h->label = as_text(member(root, "label"), "label", 256);
	h->issued = as_int64(member(root, "issued"), "issued");
	h->now = (TimestampTz) as_int64(member(root, "now"), "now");
	if (h->issued < 0)
		malformed(_("The value of \"issued\" is negative."));

	arr = as_array(member(root, "vector"), "vector", &n);
	h->nvector = n;
	h->vector = palloc0(sizeof(VectorItem) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		JsonbContainer *item = as_object(element(arr, i), "vector[]");
		VectorItem *v = &h->vector[i];
		JsonbContainer *eps;
		int			ne;

		v->id = as_uuid(member(item, "id"), "vector[].id");
		v->serial = as_int64(member(item, "serial"), "vector[].serial");
		v->count = as_int64(member(item, "count"), "vector[].count");
		v->oldest = (TimestampTz) as_int64(member(item, "oldest"), "vector[].oldest");
		if (v->serial < 0 || v->count < 0)
			malformed(_("A vector entry is negative."));
		eps = as_array(member(item, "epochs"), "vector[].epochs", &ne);
		v->nepochs = ne;
		v->epochs = palloc(sizeof(EpochEntry) * Max(ne, 1));
		for (int k = 0; k < ne; k++)
		{
			int			two;
			JsonbContainer *pair = as_array(element(eps, k), "vector[].epochs[]", &two);

			if (two != 2)
				malformed(_("An epoch is not a [token, first serial] pair."));
			v->epochs[k].token = as_uuid(element(pair, 0), "vector[].epochs[][0]");
			v->epochs[k].first = as_int64(element(pair, 1), "vector[].epochs[][1]");
		}
		qsort(v->epochs, ne, sizeof(EpochEntry), epoch_cmp);
	}
	/* Sorted, not pairwise: a peer may send a vector of any length. */
	if (n > 1)
	{
		pg_uuid_t  *ids = palloc(sizeof(pg_uuid_t) * n);

		for (int i = 0; i < n; i++)
			ids[i] = h->vector[i].id;
		qsort(ids, n, sizeof(pg_uuid_t), replica_id_cmp);
		for (int i = 1; i < n; i++)
			if (replica_id_cmp(&ids[i - 1], &ids[i]) == 0)
				malformed(_("A replica ID appears twice in the vector."));
		pfree(ids);
	}

	arr = as_array(member(root, "retired"), "retired", &n);
	h->nretired = n;
	h->retired = palloc(sizeof(pg_uuid_t) * Max(n, 1));
	for (int i = 0; i < n; i++)
		h->retired[i] = as_uuid(element(arr, i), "retired[]");

	{
		JsonbValue *rot = member(root, "rotated");

		if (rot && rot->type != jbvBool)
			malformed(_("The value of \"rotated\" is not a boolean."));
		h->rotated = rot && rot->val.boolean;
	}

	arr = as_array(member(root, "dead"), "dead", &n);
	h->ndead = n;
	h->dead = palloc(sizeof(DeadMark) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		int			three;
		JsonbContainer *t = as_array(element(arr, i), "dead[]", &three);

		if (three != 3)
			malformed(_("A dead epoch is not a [replica ID, token, first serial] triple."));
		h->dead[i].id = as_uuid(element(t, 0), "dead[][0]");
		h->dead[i].token = as_uuid(element(t, 1), "dead[][1]");
		h->dead[i].first = as_int64(element(t, 2), "dead[][2]");
	}

	/* Absent from the handshakes of earlier 1.1 builds. */
	if (member(root, "purged") != NULL)
	{
		arr = as_array(member(root, "purged"), "purged", &n);
		h->npurged = n;
		h->purged = palloc(sizeof(PurgedMark) * Max(n, 1));
		for (int i = 0; i < n; i++)
		{
			int			two;
			JsonbContainer *pm = as_array(element(arr, i), "purged[]", &two);

			if (two != 2)
				malformed(_("A purged mark is not a [replica ID, serial] pair."));
			h->purged[i].id = as_uuid(element(pm, 0), "purged[][0]");
			h->purged[i].serial = as_int64(element(pm, 1), "purged[][1]");
			if (h->purged[i].serial <= 0)
				malformed(_("A purged mark's serial is not positive."));
		}
	}
}

/*
 * The vector entry of id, or NULL.
 */
VectorItem *
proto_find(Handshake *h, const pg_uuid_t *id)
{
	for (int i = 0; i < h->nvector; i++)
		if (memcmp(h->vector[i].id.data, id->data, UUID_LEN) == 0)
			return &h->vector[i];
	return NULL;
}

/*
 * Enter a replica ID (token NULL) or a dead epoch in a set of them;
 * returns whether it was there already.
 */
static bool
seen(HTAB *set, const pg_uuid_t *id, const pg_uuid_t *token)
{
	pg_uuid_t	key[2];
	bool		found;

	memset(key, 0, sizeof(key));
	key[0] = *id;
	if (token)
		key[1] = *token;
	(void) hash_search(set, key, HASH_ENTER, &found);
	return found;
}

/*
 * Refuse a peer's handshake that names more than
 * replstamp.max_new_replica_ids replica IDs (with vector_too, in its
 * vector) or dead epochs that this node (described by mine) has never
 * heard of.  Called before anything of the handshake is acted on: a
 * hostile node must neither flood the vector and the epochs (dead epochs
 * travel on to every node) nor keep this one busy.  Linear in the size of
 * the handshake.
 */
void
proto_refuse_flood(const Handshake *mine, const Handshake *theirs, bool vector_too,
				   const char *from)
{
	HASHCTL		ctl;
	HTAB	   *known;
	int			newids = 0;
	int			newdead = 0;

	ctl.keysize = 2 * sizeof(pg_uuid_t);
	ctl.entrysize = 2 * sizeof(pg_uuid_t);
	ctl.hcxt = CurrentMemoryContext;
	known = hash_create("replstamp known replica IDs and dead epochs",
						Max(mine->nvector + 2 * mine->ndead, 16),
						&ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	(void) seen(known, &mine->replica_id, NULL);
	for (int i = 0; i < mine->nvector; i++)
		(void) seen(known, &mine->vector[i].id, NULL);
	for (int i = 0; i < mine->ndead; i++)
	{
		(void) seen(known, &mine->dead[i].id, NULL);
		(void) seen(known, &mine->dead[i].id, &mine->dead[i].token);
	}

	for (int i = 0; vector_too && i < theirs->nvector; i++)
		if (!seen(known, &theirs->vector[i].id, NULL) &&
			++newids > proto_max_new_replica_ids)
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("%s advertises more than %d replica IDs this node has never seen",
							from, proto_max_new_replica_ids),
					 errdetail("Its vector names %d replica IDs.", theirs->nvector),
					 errhint("If that is right, raise replstamp.max_new_replica_ids; a hostile node can flood the vector.")));
	for (int i = 0; i < theirs->ndead; i++)
		if (!seen(known, &theirs->dead[i].id, &theirs->dead[i].token) &&
			++newdead > proto_max_new_replica_ids)
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("%s advertises more than %d dead epochs this node has never seen",
							from, proto_max_new_replica_ids),
					 errdetail("Its handshake names %d dead epochs.", theirs->ndead),
					 errhint("If that is right, raise replstamp.max_new_replica_ids; a hostile node can flood the epochs, which every node passes on.")));
	hash_destroy(known);
}

/*
 * Do two nodes' histories of one replica ID agree on every serial both
 * hold?  extent is how far each side's history goes: what it holds of the
 * ID, or for the ID's own node (its current ID) everything it will hand
 * out.  A side that knows no epoch of the ID (it pulled it before epochs
 * existed) cannot tell: that counts as agreeing.  If they disagree,
 * *diverge_at is the first serial where they part.
 */
bool
proto_histories_agree(const VectorItem *a, int64 extent_a,
					  const VectorItem *b, int64 extent_b, int64 *diverge_at)
{
	int64		m = Min(extent_a, extent_b);
	int			i = 0,
				k = 0;

	if (a == NULL || b == NULL || a->nepochs == 0 || b->nepochs == 0)
		return true;
	for (;;)
	{
		const EpochEntry *x = (i < a->nepochs && a->epochs[i].first <= m) ? &a->epochs[i] : NULL;
		const EpochEntry *y = (k < b->nepochs && b->epochs[k].first <= m) ? &b->epochs[k] : NULL;

		if (x == NULL && y == NULL)
			return true;
		if (x && y && epoch_cmp(x, y) == 0)
		{
			i++;
			k++;
			continue;
		}
		*diverge_at = (x && y) ? Min(x->first, y->first) : (x ? x->first : y->first);
		return false;
	}
}

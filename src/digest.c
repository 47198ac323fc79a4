/*-------------------------------------------------------------------------
 *
 * digest.c
 *		Bucket digests of tracked tables (replstamp.row_digest), kept as
 *		row_version is written, so that verify (verify.c) compares two
 *		nodes by reading 4096 numbers per table instead of their rows.
 *
 * Wording: a row's element is SHA-256 of (relation, key, stamp) of its
 * latest version, for a live row (a tombstone has none); a bucket's digest
 * is the sum modulo 2^256 of the elements of its rows, a bucket being the
 * rows whose row_hash has the same top 12 bits.  Addition makes the digest
 * independent of the order rows were written in, and writing a version
 * adds its element and subtracts the one of the version it replaces, so
 * it is kept current without reading other rows.  (XOR of short hashes
 * would let two changes of one row cancel out; a sum of 256-bit hashes is
 * a multiset hash: unequal sets of rows collide only by chance, about
 * once in 2^128 comparisons at worst.)
 *
 * Who calls it: rowversion.c notes each version it records or replaces
 * (digest_note()), and a rotation's re-issue each stamp it moves.  The
 * notes of a transaction are summed per bucket in memory and written when
 * the row_version writer ends (digest_flush()), a re-issue's at once, and
 * whatever is left just before commit: one row_digest write per bucket and
 * writer, however many rows of the bucket a page touched.  row_version has one writer at a time
 * (rowversion.c's sync and page locks, a rotation's lock on the state
 * row), so the digest rows are no hot spot for anyone else; the stamp
 * trigger, which does not write row_version, pays nothing.  The notes of
 * a subtransaction that aborts are dropped with it.
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "errors.h"

#include "access/relation.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "common/cryptohash.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"

#include "catalog.h"
#include "dbaccess.h"
#include "digest.h"
#include "rowimage.h"

PG_FUNCTION_INFO_V1(replstamp_digest_add);
PG_FUNCTION_INFO_V1(replstamp_rebuild_digests);

#define MAX_RELATION_LEN	(NAMEDATALEN * 4 + 8)

/* A bucket's change in the current transaction. */
typedef struct PendingKey
{
	char		relation[MAX_RELATION_LEN];
	int			bucket;
} PendingKey;

typedef struct PendingBucket
{
	PendingKey	key;			/* hash key */
	DigestSum	delta;
	int64		nrows;
} PendingBucket;

static MemoryContext pending_cxt = NULL;
static HTAB *pending = NULL;
static int	pending_level = 0;	/* the nesting level its notes were made at */
static bool callbacks_registered = false;

/* ---------------------------------------------------------------------
 * Sums
 * ---------------------------------------------------------------------
 */

void
digest_add(DigestSum *sum, const DigestSum *x)
{
	unsigned	carry = 0;

	for (int i = DIGEST_LEN - 1; i >= 0; i--)
	{
		unsigned	s = (unsigned) sum->d[i] + x->d[i] + carry;

		sum->d[i] = (uint8) s;
		carry = s >> 8;
	}
}

void
digest_sub(DigestSum *sum, const DigestSum *x)
{
	int			borrow = 0;

	for (int i = DIGEST_LEN - 1; i >= 0; i--)
	{
		int			s = (int) sum->d[i] - x->d[i] - borrow;

		borrow = s < 0;
		sum->d[i] = (uint8) (s + (borrow ? 256 : 0));
	}
}

bool
digest_is_zero(const DigestSum *sum)
{
	for (int i = 0; i < DIGEST_LEN; i++)
		if (sum->d[i] != 0)
			return false;
	return true;
}

char *
digest_hex(const DigestSum *sum)
{
	static const char hexdigits[] = "0123456789abcdef";
	char	   *out = palloc(DIGEST_LEN * 2 + 1);

	for (int i = 0; i < DIGEST_LEN; i++)
	{
		out[2 * i] = hexdigits[sum->d[i] >> 4];
		out[2 * i + 1] = hexdigits[sum->d[i] & 15];
	}
	out[DIGEST_LEN * 2] = '\0';
	return out;
}

static int
hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

bool
digest_from_hex(const char *hex, DigestSum *out)
{
	if (hex == NULL || strlen(hex) != DIGEST_LEN * 2)
		return false;
	for (int i = 0; i < DIGEST_LEN; i++)
	{
		int			hi = hexval(hex[2 * i]);
		int			lo = hexval(hex[2 * i + 1]);

		if (hi < 0 || lo < 0)
			return false;
		out->d[i] = (uint8) (hi << 4 | lo);
	}
	return true;
}

/* ---------------------------------------------------------------------
 * Elements
 * ---------------------------------------------------------------------
 */

typedef struct Part
{
	const void *data;
	size_t		len;
} Part;

static inline void
set_part(Part *part, const void *data, size_t len)
{
	part->data = data;
	part->len = len;
}

/* SHA-256 of the parts, each followed by a zero byte (none contains one). */
static void
sha256_parts(const Part *parts, int nparts, DigestSum *out)
{
	static pg_cryptohash_ctx *ctx = NULL;
	static const uint8 zero = 0;

	/*
	 * One context for the life of the process, re-initialized for each
	 * element: a sync computes two per row it applies, and creating one costs
	 * more than hashing.  It belongs to a resource owner of its own, which no
	 * transaction releases.
	 */
	if (ctx == NULL)
	{
		static ResourceOwner owner = NULL;
		ResourceOwner save = CurrentResourceOwner;

		if (owner == NULL)
			owner = ResourceOwnerCreate(NULL, "replstamp digests");
		CurrentResourceOwner = owner;
		ctx = pg_cryptohash_create(PG_SHA256);
		CurrentResourceOwner = save;
		if (ctx == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_OUT_OF_MEMORY),
					 errmsg("out of memory")));
	}
	if (pg_cryptohash_init(ctx) < 0)
		elog(ERROR, "replstamp: could not initialize SHA-256: %s", pg_cryptohash_error(ctx));
	for (int i = 0; i < nparts; i++)
	{
		if (pg_cryptohash_update(ctx, parts[i].data, parts[i].len) < 0 ||
			pg_cryptohash_update(ctx, &zero, 1) < 0)
			elog(ERROR, "replstamp: could not compute SHA-256: %s", pg_cryptohash_error(ctx));
	}
	if (pg_cryptohash_final(ctx, out->d, DIGEST_LEN) < 0)
		elog(ERROR, "replstamp: could not compute SHA-256: %s", pg_cryptohash_error(ctx));
}

static char *
jsonb_text(Jsonb *j)
{
	return JsonbToCString(NULL, &j->root, VARSIZE(j));
}

/*
 * The element of a row whose latest version here is the stamp (id,
 * serial): what the incremental digests sum.
 */
void
digest_of_version(const char *relation, int rellen, Jsonb *pk,
				  const pg_uuid_t *id, int64 serial, DigestSum *out)
{
	char	   *key = jsonb_text(pk);
	char		stamp[64];
	Part		parts[4];

	snprintf(stamp, sizeof(stamp), "%s/" INT64_FORMAT, catalog_uuid_text(id), serial);
	set_part(&parts[0], "version", 7);
	set_part(&parts[1], relation, rellen);
	set_part(&parts[2], key, strlen(key));
	set_part(&parts[3], stamp, strlen(stamp));
	sha256_parts(parts, 4, out);
	pfree(key);
}

/*
 * The element of a row as its table holds it (deep verification):
 * relation, key and the SHA-256 of its canonical image (content, hex).
 */
void
digest_of_content(const char *relation, int rellen, const char *pk,
				  const char *content, DigestSum *out)
{
	Part		parts[4];

	set_part(&parts[0], "content", 7);
	set_part(&parts[1], relation, rellen);
	set_part(&parts[2], pk, strlen(pk));
	set_part(&parts[3], content, strlen(content));
	sha256_parts(parts, 4, out);
}

/* SHA-256 of a text (a row image). */
void
digest_of_text(const char *str, DigestSum *out)
{
	Part		part = {str, strlen(str)};

	sha256_parts(&part, 1, out);
}

/* ---------------------------------------------------------------------
 * Notes of the current transaction
 * ---------------------------------------------------------------------
 */

static void
pending_reset(void)
{
	if (pending_cxt)
		MemoryContextReset(pending_cxt);
	pending = NULL;
	pending_level = 0;
}

static void
digest_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
		case XACT_EVENT_PARALLEL_PRE_COMMIT:
		case XACT_EVENT_PRE_PREPARE:
			/* Normally written by the writer's end already. */
			digest_flush();
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			pending_reset();
			break;
		default:
			break;
	}
}

static void
digest_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						SubTransactionId parentSubid, void *arg)
{
	if (pending == NULL)
		return;
	if (event == SUBXACT_EVENT_ABORT_SUB && pending_level >= GetCurrentTransactionNestLevel())
		pending_reset();
	else if (event == SUBXACT_EVENT_COMMIT_SUB && pending_level == GetCurrentTransactionNestLevel())
		pending_level--;
}

/*
 * Note that the row (relation, key) now has (add) or no longer has the
 * version (id, serial) as its latest live one, for the current
 * transaction's row_digest.
 */
void
digest_note(text *relation, int64 row_hash, Jsonb *pk,
			const pg_uuid_t *id, int64 serial, bool add)
{
	PendingKey	key;
	PendingBucket *b;
	DigestSum	e;
	bool		found;
	int			level = GetCurrentTransactionNestLevel();
	int			len = VARSIZE_ANY_EXHDR(relation);

	if (!callbacks_registered)
	{
		RegisterXactCallback(digest_xact_callback, NULL);
		RegisterSubXactCallback(digest_subxact_callback, NULL);
		callbacks_registered = true;
	}
	/* Notes of another level are written first, in theirs as far as can be. */
	if (pending != NULL && level != pending_level)
		digest_flush();
	if (pending == NULL)
	{
		HASHCTL		ctl;

		if (pending_cxt == NULL)
			pending_cxt = AllocSetContextCreate(TopMemoryContext, "replstamp digests",
												ALLOCSET_DEFAULT_SIZES);
		ctl.keysize = sizeof(PendingKey);
		ctl.entrysize = sizeof(PendingBucket);
		ctl.hcxt = pending_cxt;
		pending = hash_create("replstamp digest notes", 256, &ctl,
							  HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
		pending_level = level;
	}
	if (len >= MAX_RELATION_LEN)
		elog(ERROR, "replstamp: relation name too long");
	memset(&key, 0, sizeof(key));
	memcpy(key.relation, VARDATA_ANY(relation), len);
	key.bucket = digest_bucket(row_hash);
	b = hash_search(pending, &key, HASH_ENTER, &found);
	if (!found)
	{
		memset(&b->delta, 0, sizeof(DigestSum));
		b->nrows = 0;
	}
	digest_of_version(key.relation, len, pk, id, serial, &e);
	if (add)
	{
		digest_add(&b->delta, &e);
		b->nrows++;
	}
	else
	{
		digest_sub(&b->delta, &e);
		b->nrows--;
	}
}

/* Order of the rows a flush writes: by relation, then bucket. */
static int
pending_cmp(const void *a, const void *b)
{
	const PendingBucket *x = *(PendingBucket *const *) a;
	const PendingBucket *y = *(PendingBucket *const *) b;
	int			c = strcmp(x->key.relation, y->key.relation);

	if (c != 0)
		return c;
	return (x->key.bucket > y->key.bucket) - (x->key.bucket < y->key.bucket);
}

static bytea *
digest_bytea(const DigestSum *sum)
{
	bytea	   *b = palloc(VARHDRSZ + DIGEST_LEN);

	SET_VARSIZE(b, VARHDRSZ + DIGEST_LEN);
	memcpy(VARDATA(b), sum->d, DIGEST_LEN);
	return b;
}

/*
 * Write the notes of the current transaction to replstamp.row_digest.
 */
void
digest_flush(void)
{
	HASH_SEQ_STATUS seq;
	PendingBucket *b;
	PendingBucket **rows;
	int			n = 0;
	ReplstampOwnerContext ctx;
	HTAB	   *notes = pending;
	bool		pushed = false;

	if (notes == NULL)
		return;
	pending = NULL;				/* an error below leaves nothing to write
								 * twice */
	rows = palloc(sizeof(PendingBucket *) * Max(hash_get_num_entries(notes), 1));
	hash_seq_init(&seq, notes);
	while ((b = hash_seq_search(&seq)) != NULL)
	{
		if (b->nrows == 0 && digest_is_zero(&b->delta))
			continue;			/* a version replaced by itself */
		rows[n++] = b;
	}
	if (n > 0)
	{
		Oid			types[4] = {TEXTARRAYOID, INT4ARRAYOID, BYTEAARRAYOID, INT8ARRAYOID};
		Datum		values[4];
		Datum	   *relations = palloc(sizeof(Datum) * n);
		Datum	   *buckets = palloc(sizeof(Datum) * n);
		Datum	   *digests = palloc(sizeof(Datum) * n);
		Datum	   *nrows = palloc(sizeof(Datum) * n);

		/*
		 * One statement for the whole transaction, its rows in one order for
		 * every writer, so that two flushing at once wait for each other
		 * rather than deadlock.
		 */
		qsort(rows, n, sizeof(PendingBucket *), pending_cmp);
		for (int i = 0; i < n; i++)
		{
			relations[i] = CStringGetTextDatum(rows[i]->key.relation);
			buckets[i] = Int32GetDatum(rows[i]->key.bucket);
			digests[i] = PointerGetDatum(digest_bytea(&rows[i]->delta));
			nrows[i] = Int64GetDatum(rows[i]->nrows);
		}
		values[0] = PointerGetDatum(construct_array(relations, n, TEXTOID, -1, false, TYPALIGN_INT));
		values[1] = PointerGetDatum(construct_array(buckets, n, INT4OID, sizeof(int32), true, TYPALIGN_INT));
		values[2] = PointerGetDatum(construct_array(digests, n, BYTEAOID, -1, false, TYPALIGN_INT));
		values[3] = PointerGetDatum(construct_array(nrows, n, INT8OID, sizeof(int64), FLOAT8PASSBYVAL,
													TYPALIGN_DOUBLE));
		/* Just before commit (a worker's) there may be no snapshot left. */
		if (!ActiveSnapshotSet())
		{
			PushActiveSnapshot(GetTransactionSnapshot());
			pushed = true;
		}
		dbaccess_become_owner(&ctx);
		SPI_connect();
		dbaccess_spi_exec_kept("INSERT INTO replstamp.row_digest AS d (relation, bucket, digest, nrows) "
							   "SELECT * FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), "
							   "pg_catalog.unnest($3), pg_catalog.unnest($4)) "
							   "ON CONFLICT (relation, bucket) DO UPDATE "
							   "SET digest = replstamp._digest_add(d.digest, EXCLUDED.digest), "
							   "nrows = d.nrows OPERATOR(pg_catalog.+) EXCLUDED.nrows",
							   4, types, values, NULL, SPI_OK_INSERT);
		SPI_finish();
		dbaccess_restore_user(&ctx);
		if (pushed)
			PopActiveSnapshot();
	}
	pending_reset();
}

/*
 * Set a bucket's digest (verify found it stale: recomputed from its rows).
 * Caller is connected to SPI, as the extension's owner.
 */
void
digest_set_bucket(const char *relation, int bucket, const DigestSum *sum, int64 nrows)
{
	Oid			types[4] = {TEXTOID, INT4OID, BYTEAOID, INT8OID};
	Datum		values[4];

	values[0] = CStringGetTextDatum(relation);
	values[1] = Int32GetDatum(bucket);
	values[2] = PointerGetDatum(digest_bytea(sum));
	values[3] = Int64GetDatum(nrows);
	dbaccess_spi_exec_kept("INSERT INTO replstamp.row_digest (relation, bucket, digest, nrows) "
						   "VALUES ($1, $2, $3, $4) ON CONFLICT (relation, bucket) DO UPDATE "
						   "SET digest = EXCLUDED.digest, nrows = EXCLUDED.nrows",
						   4, types, values, NULL, SPI_OK_INSERT);
}

/*
 * Recompute the digests of one relation (NULL: every one) from
 * row_version.  Returns the live rows counted.  Callers hold what keeps
 * row_version still (the sync lock), or run where nothing else writes it
 * (the upgrade script).
 */
int64
digest_rebuild(const char *relation)
{
	ReplstampOwnerContext ctx;
	Portal		portal;
	int64		n = 0;
	Oid			types[1] = {TEXTOID};
	Datum		values[1];
	SPIPlanPtr	plan;

	digest_flush();
	dbaccess_become_owner(&ctx);
	SPI_connect();
	values[0] = relation ? CStringGetTextDatum(relation) : (Datum) 0;
	dbaccess_spi_exec("DELETE FROM replstamp.row_digest WHERE $1 IS NULL OR relation OPERATOR(pg_catalog.=) $1",
					  1, types, values, relation ? NULL : "n", SPI_OK_DELETE);
	plan = SPI_prepare("SELECT relation, row_hash, pk, replica_id, serial FROM replstamp.row_version "
					   "WHERE NOT deleted AND ($1 IS NULL OR relation OPERATOR(pg_catalog.=) $1)",
					   1, types);
	if (plan == NULL)
		elog(ERROR, "replstamp: could not read row_version: %s", SPI_result_code_string(SPI_result));
	portal = SPI_cursor_open(NULL, plan, values, relation ? NULL : "n", true);
	for (;;)
	{
		SPI_cursor_fetch(portal, true, 10000);
		if (SPI_processed == 0)
			break;
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			HeapTuple	tup = SPI_tuptable->vals[i];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			bool		isnull;
			text	   *rel = DatumGetTextPP(SPI_getbinval(tup, desc, 1, &isnull));
			int64		hash = DatumGetInt64(SPI_getbinval(tup, desc, 2, &isnull));
			Jsonb	   *pk = DatumGetJsonbP(SPI_getbinval(tup, desc, 3, &isnull));
			pg_uuid_t  *id = DatumGetUUIDP(SPI_getbinval(tup, desc, 4, &isnull));
			int64		serial = DatumGetInt64(SPI_getbinval(tup, desc, 5, &isnull));

			digest_note(rel, hash, pk, id, serial, true);
			n++;
		}
		SPI_freetuptable(SPI_tuptable);
	}
	SPI_cursor_close(portal);
	SPI_finish();
	dbaccess_restore_user(&ctx);
	digest_flush();
	return n;
}

/*
 * replstamp._digest_add(a bytea, b bytea): a + b modulo 2^256.
 */
Datum
replstamp_digest_add(PG_FUNCTION_ARGS)
{
	bytea	   *a = PG_GETARG_BYTEA_PP(0);
	bytea	   *b = PG_GETARG_BYTEA_PP(1);
	DigestSum	s;
	DigestSum	x;

	if (VARSIZE_ANY_EXHDR(a) != DIGEST_LEN || VARSIZE_ANY_EXHDR(b) != DIGEST_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a digest must be %d bytes long", DIGEST_LEN)));
	memcpy(s.d, VARDATA_ANY(a), DIGEST_LEN);
	memcpy(x.d, VARDATA_ANY(b), DIGEST_LEN);
	digest_add(&s, &x);
	PG_RETURN_BYTEA_P(digest_bytea(&s));
}

/*
 * replstamp.rebuild_digests(relation regclass DEFAULT NULL): recompute
 * row_digest from row_version, holding the sync lock so that no apply
 * writes meanwhile.
 */
Datum
replstamp_rebuild_digests(PG_FUNCTION_ARGS)
{
	char	   *relation = NULL;
	int64		n;

	(void) catalog_get_v11("replstamp.rebuild_digests()");
	if (!PG_ARGISNULL(0))
	{
		Oid			relid = PG_GETARG_OID(0);
		Relation	rel = relation_open(relid, AccessShareLock);

		relation = pstrdup(rowimage_layout(rel)->relname);
		relation_close(rel, AccessShareLock);
	}
	n = digest_rebuild(relation);
	PG_RETURN_INT64(n);
}

/*-------------------------------------------------------------------------
 *
 * digest.h
 *		Bucket digests of the rows of tracked tables (replstamp.row_digest):
 *		per table and bucket, the sum modulo 2^256 of a SHA-256 per live
 *		row, kept current where row_version is written, so that two nodes
 *		are compared without reading their rows (verify.c).
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#ifndef REPLSTAMP_DIGEST_H
#define REPLSTAMP_DIGEST_H

#include "utils/jsonb.h"
#include "utils/uuid.h"

#define DIGEST_LEN			32	/* bytes: a SHA-256, and the sums of them */
#define DIGEST_BUCKET_BITS	12
#define DIGEST_BUCKETS		(1 << DIGEST_BUCKET_BITS)

typedef struct DigestSum
{
	uint8		d[DIGEST_LEN];	/* big-endian, modulo 2^256 */
} DigestSum;

/* The bucket of a row: the top bits of its row_hash. */
static inline int
digest_bucket(int64 row_hash)
{
	return (int) ((uint64) row_hash >> (64 - DIGEST_BUCKET_BITS));
}

/* The range of row_hash (signed, inclusive) a bucket holds. */
static inline void
digest_bucket_range(int bucket, int64 *lo, int64 *hi)
{
	uint64		base = (uint64) bucket << (64 - DIGEST_BUCKET_BITS);

	*lo = (int64) base;
	*hi = (int64) (base | ((UINT64CONST(1) << (64 - DIGEST_BUCKET_BITS)) - 1));
}

extern void digest_add(DigestSum *sum, const DigestSum *x);
extern void digest_sub(DigestSum *sum, const DigestSum *x);
extern bool digest_is_zero(const DigestSum *sum);
extern char *digest_hex(const DigestSum *sum);
extern bool digest_from_hex(const char *hex, DigestSum *out);

extern void digest_of_version(const char *relation, int rellen, Jsonb *pk,
							  const pg_uuid_t *id, int64 serial, DigestSum *out);
extern void digest_of_content(const char *relation, int rellen, const char *pk,
							  const char *content, DigestSum *out);
extern void digest_of_text(const char *str, DigestSum *out);

extern void digest_note(text *relation, int64 row_hash, Jsonb *pk,
						const pg_uuid_t *id, int64 serial, bool add);
extern void digest_flush(void);
extern void digest_set_bucket(const char *relation, int bucket, const DigestSum *sum, int64 nrows);
extern int64 digest_rebuild(const char *relation);

#endif							/* REPLSTAMP_DIGEST_H */

/*-------------------------------------------------------------------------
 *
 * changelog.h
 *		Direct access to replstamp.changes, the change log: append a
 *		change (the stamp trigger's hot path, the apply, a rotation's
 *		re-issue), look one up by its stamp, read a range of serials.
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#ifndef REPLSTAMP_CHANGELOG_H
#define REPLSTAMP_CHANGELOG_H

#include "datatype/timestamp.h"
#include "utils/jsonb.h"
#include "storage/itemptr.h"
#include "utils/uuid.h"

#include "catalog.h"

/* One change, parsed once. */
typedef struct Change
{
	pg_uuid_t	replica_id;
	int64		serial;
	text	   *relation;		/* schema-qualified, canonical spelling */
	char		op;				/* 'I', 'U', 'D', 'T' (TRUNCATE) or 'S' (DDL) */
	Jsonb	   *pk;				/* the key before the change; for a TRUNCATE,
								 * a key no row has (rowversion.c); for a DDL,
								 * {} */
	Jsonb	   *image;			/* the row after it; NULL for a DELETE; for a
								 * TRUNCATE, what it covers (rowversion.c);
								 * for a DDL, the statement (ddl.c) */
	TimestampTz changed_at;
	bool		applied;		/* pulled from a peer */
	ItemPointerData tid;		/* where it is in the log, when read from it */
} Change;

/* Do two stamps (replica ID, serial) name the same change? */
static inline bool
changelog_same_stamp(const pg_uuid_t *a, int64 a_serial, const pg_uuid_t *b, int64 b_serial)
{
	return a_serial == b_serial && memcmp(a->data, b->data, UUID_LEN) == 0;
}

/* Called for each change of a range, in serial order; return false to stop. */
typedef bool (*ChangeCallback) (Change *change, void *arg);

extern void changelog_init(void);
extern const char *changelog_op_name(char op);
extern char changelog_op_code(const char *name, int len);
extern void changelog_append(const ReplstampCatalog *cat, Change *change);
extern bool changelog_held(const ReplstampCatalog *cat, const pg_uuid_t *id, int64 serial);
extern int64 changelog_max_serial(const ReplstampCatalog *cat, const pg_uuid_t *id);
extern bool changelog_fetch(const ReplstampCatalog *cat, const pg_uuid_t *id, int64 serial,
							Change *change);
extern bool changelog_delete(const ReplstampCatalog *cat, const pg_uuid_t *id, int64 serial);
extern void changelog_delete_tid(const ReplstampCatalog *cat, ItemPointer tid);
extern int64 changelog_scan(const ReplstampCatalog *cat, const pg_uuid_t *id, int64 after,
							int64 upto, bool local_only, ChangeCallback callback, void *arg);

#endif							/* REPLSTAMP_CHANGELOG_H */

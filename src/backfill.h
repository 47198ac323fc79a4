/*-------------------------------------------------------------------------
 *
 * backfill.h
 *		Stamping once, in the background, the rows a table held when it was
 *		tracked with backfill => true.
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#ifndef REPLSTAMP_BACKFILL_H
#define REPLSTAMP_BACKFILL_H

#include "utils/relcache.h"

/* Where a table's backfill starts: what track() records for it. */
typedef struct BackfillOrigin
{
	char	   *snapshot;		/* pg_snapshot, as text */
	char	   *end;			/* tid, as text: the table ends before it */
	Oid			filenode;		/* the table's file node */
} BackfillOrigin;

extern void backfill_init(void);
extern void backfill_run(void);
extern void backfill_request(void);
extern void backfill_origin(Relation rel, BackfillOrigin *origin);

#endif							/* REPLSTAMP_BACKFILL_H */

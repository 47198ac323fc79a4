/*-------------------------------------------------------------------------
 *
 * maintenance.h
 *		Background upkeep of a database: pruning the change log, recording
 *		the lowest uncommitted serial every round, backfilling newly
 *		tracked tables; and replstamp.restore_version().
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#ifndef REPLSTAMP_MAINTENANCE_H
#define REPLSTAMP_MAINTENANCE_H

#include "utils/relcache.h"

/* Where a table's backfill starts: what track() records for it. */
typedef struct BackfillOrigin
{
	char	   *snapshot;		/* pg_snapshot, as text */
	char	   *end;			/* tid, as text: the table ends before it */
	Oid			filenode;		/* the table's file node */
} BackfillOrigin;

extern void maintenance_init(void);
extern int	maintenance_prune_interval(void);
extern void maintenance_mark_lus(void);
extern int64 prune_run(void);
extern void backfill_run(void);
extern void maintenance_request_backfill(void);
extern void backfill_origin(Relation rel, BackfillOrigin *origin);

#endif							/* REPLSTAMP_MAINTENANCE_H */

/*-------------------------------------------------------------------------
 *
 * stamp.h
 *		The data manager: the stamping trigger, track()/untrack(), the
 *		registry of tracked tables and the DDL guard that keeps the trigger
 *		in place.
 *
 * What it offers the other parts:
 *	- stamp_is_tracked(): does a table carry the stamp trigger;
 *	- stamp_skip_tuple()/stamp_skip_clear(): the apply writes rows that
 *	  arrive with their stamps; the trigger must not stamp those tuples
 *	  again, but must stamp whatever else happens meanwhile (the writes of
 *	  a table owner's ENABLE ALWAYS trigger, for example).  The list is
 *	  cleared at the end of every transaction in any case.
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#ifndef REPLSTAMP_STAMP_H
#define REPLSTAMP_STAMP_H

#include "storage/itemptr.h"
#include "utils/relcache.h"

struct TruncateStmt;

/* Name of the row trigger track() creates; AFTER ROW, ENABLE ALWAYS. */
#define STAMP_TRIGGER_NAME		"replstamp_stamp"
#define TRUNCATE_TRIGGER_NAME	"replstamp_refuse_truncate"

extern void stamp_init(void);
extern bool stamp_is_tracked(Relation rel);
extern void stamp_skip_tuple(Oid relid, ItemPointer tid);
extern void stamp_skip_clear(void);
extern void stamp_check_truncate(struct TruncateStmt *stmt);

#endif							/* REPLSTAMP_STAMP_H */

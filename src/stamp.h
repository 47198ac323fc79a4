/*-------------------------------------------------------------------------
 *
 * stamp.h
 *		The data manager: the stamping trigger and track()/untrack().
 *
 * What it offers the other parts:
 *	- stamp_row_images(): the jsonb images of a row, the same as the trigger
 *	  writes them, for code that needs to compare or write rows;
 *	- stamp_begin_apply()/stamp_end_apply(): while applying replicated
 *	  changes (which arrive with their stamps), the trigger stamps nothing;
 *	  the flag is cleared at the end of the transaction in any case.
 *
 * Copyright (c) 2026, the replstamp authors
 *
 *-------------------------------------------------------------------------
 */
#ifndef REPLSTAMP_STAMP_H
#define REPLSTAMP_STAMP_H

#include "access/htup.h"
#include "utils/jsonb.h"
#include "utils/relcache.h"

/* Name of the row trigger track() creates; AFTER ROW, ENABLE ALWAYS. */
#define STAMP_TRIGGER_NAME		"replstamp_stamp"
#define TRUNCATE_TRIGGER_NAME	"replstamp_refuse_truncate"

extern void stamp_begin_apply(void);
extern void stamp_end_apply(void);
extern bool stamp_applying(void);

extern bool stamp_is_tracked(Relation rel);
extern text *stamp_relation_name(Relation rel);
extern Jsonb *stamp_pk_image(Relation rel, HeapTuple tuple);
extern Jsonb *stamp_row_image(Relation rel, HeapTuple tuple);
extern int64 stamp_row_hash(text *relation, Jsonb *pk);

#endif							/* REPLSTAMP_STAMP_H */

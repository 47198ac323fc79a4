/*-------------------------------------------------------------------------
 *
 * constraints.h
 *		Constraints on apply: foreign keys and second unique keys that a
 *		pulled change would break, resolved the same way on every node by
 *		new stamped changes, each recorded in replstamp.conflicts.
 *
 * What it offers the apply (apply.c):
 *	- constraints_note_write(): before the apply writes a row, note what
 *	  the write may leave without its referenced row (a child written, a
 *	  parent deleted or its referenced key changed);
 *	- constraints_unique_ok(): before the apply writes a row, whether a
 *	  second unique key it takes is held by another row, and which of the
 *	  two keeps it;
 *	- constraints_check_deferred(): before the applied transaction
 *	  commits, every foreign key noted holds, or is made to hold.
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#ifndef REPLSTAMP_CONSTRAINTS_H
#define REPLSTAMP_CONSTRAINTS_H

#include "executor/tuptable.h"
#include "nodes/execnodes.h"
#include "utils/relcache.h"

#include "apply.h"
#include "rowversion.h"

typedef struct ConstraintState ConstraintState;

/* replstamp.on_constraint_conflict */
typedef enum ConstraintConflictAction
{
	CONSTRAINT_CONFLICT_RESOLVE,	/* new stamped changes, recorded */
	CONSTRAINT_CONFLICT_STOP	/* an error: the sync stops there */
} ConstraintConflictAction;

extern int	constraints_on_conflict;

extern void constraints_init(void);
extern ConstraintState *constraints_session_begin(MemoryContext cxt);
extern void constraints_note_write(ConstraintState *cs, Relation rel,
								   TupleTableSlot *oldrow, TupleTableSlot *newrow);
extern bool constraints_unique_ok(ApplySession *s, Relation rel, ResultRelInfo *rri,
								  EState *estate, TupleTableSlot *newslot, TupleTableSlot *oldslot,
								  const Version *ver, Change *change, ChangeRow *row);
extern bool constraints_pending(ConstraintState *cs);
extern void constraints_forget(ConstraintState *cs);
extern void constraints_check_deferred(ApplySession *s, bool complete);

#endif							/* REPLSTAMP_CONSTRAINTS_H */

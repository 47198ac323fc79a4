/*-------------------------------------------------------------------------
 *
 * apply.h
 *		Applying changes pulled from a peer, one at a time, in transactions
 *		(pages) the caller opens and commits.
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#ifndef REPLSTAMP_APPLY_H
#define REPLSTAMP_APPLY_H

#include "utils/relcache.h"

#include "changelog.h"

typedef enum ApplyOutcome
{
	APPLY_NEW,					/* recorded (and written to its table if
								 * latest) */
	APPLY_HELD,					/* held already (it came through another peer) */
	APPLY_SKIPPED,				/* replstamp.skip() asked to hold it unapplied */
	APPLY_IGNORED,				/* its table was dropped or untracked here */
	APPLY_BUSY					/* not applied: another transaction holds its
								 * row */
} ApplyOutcome;

typedef struct ApplySession ApplySession;

extern ApplySession *apply_session_begin(const char *peer, MemoryContext cxt);
extern void apply_page_begin(ApplySession *s);
extern void apply_fill_new_columns(ApplySession *s);
extern char *apply_dropped_columns(MemoryContext cxt);
extern void apply_note_dropped_elsewhere(const char *peer, const char *lacking,
										 const pg_uuid_t *id, int64 serial);
extern ApplyOutcome apply_change(ApplySession *s, Change *change, bool nowait);
extern void apply_page_end(ApplySession *s);
extern void apply_page_abort(ApplySession *s);
extern int64 apply_conflicts(ApplySession *s);
extern int64 apply_skipped(ApplySession *s);
extern bool apply_stamp_skipped(ApplySession *s, const pg_uuid_t *id, int64 serial);
extern void apply_set_causal(ApplySession *s, bool causal);
extern void apply_sync_end(ApplySession *s);

/* For constraints.c */
struct ConstraintState;
struct RowVersionWriter;
struct Version;
extern struct ConstraintState *apply_constraint_state(ApplySession *s);
extern const char *apply_peer(ApplySession *s);
extern struct RowVersionWriter *apply_reconciled(ApplySession *s);
extern void apply_record_conflict(ApplySession *s, Relation rel, Jsonb *pk, const char *kind,
								  const struct Version *winner, const struct Version *loser,
								  Change *lost);

#endif							/* REPLSTAMP_APPLY_H */

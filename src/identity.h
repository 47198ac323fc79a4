/*-------------------------------------------------------------------------
 *
 * identity.h
 *		The identity check: a restored or copied database takes a new
 *		replica ID before it stamps anything; a rotation re-issues the
 *		changes the vector no longer claims, so none is stranded.
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#ifndef REPLSTAMP_IDENTITY_H
#define REPLSTAMP_IDENTITY_H

#include "catalog.h"

extern void identity_init(void);
extern void identity_note_binary_upgrade(void);
extern void identity_verify_slow(void);
extern char *identity_fingerprint(void);
extern bool identity_rotate_diverged(const pg_uuid_t *diverged_id, int64 from_serial,
									 const char *reason);

/*
 * Why changes are re-issued: what their old stamps name on the peers, and
 * whether the new ID is one minted for the re-issue.
 */
typedef enum ReissueKind
{
	REISSUE_RESTORED,			/* a restored copy rotated: the old stamps
								 * name the same changes on the peers */
	REISSUE_DIVERGED,			/* a rolled-back or cloned copy rotated: they
								 * name other changes there */
	REISSUE_DEAD_EPOCH			/* another node's abandoned history, under
								 * this node's current ID (epochs.c) */
} ReissueKind;

extern int64 identity_reissue(const ReplstampCatalog *cat, const pg_uuid_t *old_id,
							  int64 from_serial, int64 to_serial, const pg_uuid_t *new_id,
							  ReissueKind kind);
extern bool identity_check_histories(void);
extern void identity_raise_lus_mark(const pg_uuid_t *id, int64 lus);
extern void identity_mark_lus(void);
extern void identity_mark_served(const pg_uuid_t *id, int64 lus);

/*
 * Called by the stamp trigger before every stamp: once the current
 * database's identity has been checked since the server started (the state
 * row carries this start's token), it costs a look at the cached row.
 */
static inline void
identity_ensure_verified(void)
{
	if (likely(catalog_node()->verified))
		return;
	identity_verify_slow();
}

#endif							/* REPLSTAMP_IDENTITY_H */

/*-------------------------------------------------------------------------
 *
 * sequences.h
 *		Sequences that hand out node-unique values: each tracked sequence
 *		is confined to the current replica ID's block of its type's range,
 *		and every rotation moves it to the new ID's block.
 *
 * What it offers the other parts:
 *	- sequences_cover_table() / sequences_uncover_table(): track() and
 *	  untrack() of a table take the sequences of its columns along;
 *	- sequences_cover_row_id(): the sequence of a row ID column that
 *	  track() adds, confined before it fills the existing rows;
 *	- sequences_mint_id(): a new replica ID whose blocks no ID known here
 *	  has (rotation);
 *	- sequences_move_all(): every tracked sequence not in the current ID's
 *	  block moved there (rotation, and the check after every start);
 *	- sequences_forget_dropped(): the drop guard forgets dropped sequences.
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#ifndef REPLSTAMP_SEQUENCES_H
#define REPLSTAMP_SEQUENCES_H

#include "utils/uuid.h"

extern void sequences_cover_table(Oid relid);
extern bool sequences_cover_row_id(Oid seqrelid, Oid feeds);
extern void sequences_uncover_table(Oid relid);
extern void sequences_mint_id(pg_uuid_t *id);
extern void sequences_move_all(const pg_uuid_t *id);
extern void sequences_forget_dropped(void);

#endif							/* REPLSTAMP_SEQUENCES_H */

/*-------------------------------------------------------------------------
 *
 * epochs.h
 *		What a node does with the histories (epochs) its peers tell it of:
 *		notice that its own data set went back in time, adopt the epochs
 *		of changes it pulls, and act on epochs others found dead.
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#ifndef REPLSTAMP_EPOCHS_H
#define REPLSTAMP_EPOCHS_H

#include "proto.h"

extern char *epochs_own_divergence(const pg_uuid_t *current, const VectorItem *theirs,
								   int64 *diverge_at);
extern void epochs_learn_dead(Handshake *h, const char *from);
extern void epochs_adopt(const VectorItem *theirs, int64 upto);

#endif							/* REPLSTAMP_EPOCHS_H */

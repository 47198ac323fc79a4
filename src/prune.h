/*-------------------------------------------------------------------------
 *
 * prune.h
 *		Pruning the change log: what every puller holds and nothing keeps
 *		(last writer wins, late joiners, tombstones within their lifetime).
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#ifndef REPLSTAMP_PRUNE_H
#define REPLSTAMP_PRUNE_H

extern void prune_init(void);
extern int	prune_interval_s(void);
extern int64 prune_run(void);

#endif							/* REPLSTAMP_PRUNE_H */

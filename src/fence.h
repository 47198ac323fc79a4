/*-------------------------------------------------------------------------
 *
 * fence.h
 *		DROP and ALTER EXTENSION replstamp stop replstamp's running work in
 *		their database first; workers and requests respect the fence.
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#ifndef REPLSTAMP_FENCE_H
#define REPLSTAMP_FENCE_H

extern void fence_init(void);
extern bool fence_is_up(Oid dboid);
extern void fence_check_worker(void);

#endif							/* REPLSTAMP_FENCE_H */

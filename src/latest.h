/*-------------------------------------------------------------------------
 *
 * latest.h
 *		Which changes are, as far as this server has seen since it started,
 *		the latest version of their row: lets the prune's walk keep them
 *		without looking their row up (latest.c).
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#ifndef REPLSTAMP_LATEST_H
#define REPLSTAMP_LATEST_H

#include "utils/uuid.h"

extern void latest_init(void);
extern Size latest_shmem_size(void);
extern void latest_shmem_request(void);
extern void latest_shmem_startup(void);

extern void latest_note(const pg_uuid_t *id, int64 serial, bool latest);
extern bool latest_known(const pg_uuid_t *id, int64 serial);
extern void latest_walked(const pg_uuid_t *id, int64 upto);

#endif							/* REPLSTAMP_LATEST_H */

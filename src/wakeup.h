/*-------------------------------------------------------------------------
 *
 * wakeup.h
 *		The commit counter of changes written here, what waits on it
 *		(replstamp.wait_for_changes() for pullers, replstamp.wait_for() for
 *		read-your-writes), and the session's last committed stamp.
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#ifndef REPLSTAMP_WAKEUP_H
#define REPLSTAMP_WAKEUP_H

#include "utils/uuid.h"

extern void wakeup_init(void);
extern void wakeup_change_written(void);
extern void wakeup_stamped(const pg_uuid_t *replica_id, int64 serial);
extern bool wakeup_xact_stamp(pg_uuid_t *replica_id, int64 *serial);

#endif							/* REPLSTAMP_WAKEUP_H */

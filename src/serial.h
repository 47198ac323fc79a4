/*-------------------------------------------------------------------------
 *
 * serial.h
 *		Serials, the lowest uncommitted serial (LUS), and the hybrid clock
 *		that gives changes their stamp times.
 *
 * serial_take() hands out the next serial of the current database and
 * records, in shared memory, the lowest serial the current transaction
 * holds, so that serial_lus() can tell in O(MaxBackends) below which
 * serial every change is final.
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#ifndef REPLSTAMP_SERIAL_H
#define REPLSTAMP_SERIAL_H

#include "datatype/timestamp.h"

extern void serial_init(void);
extern int64 serial_take(Oid seqoid);
extern int64 serial_next(Oid seqoid);
extern int64 serial_lus(Oid seqoid);
extern int	serial_lus_holder(Oid seqoid);
extern uint64 serial_activity(void);

extern TimestampTz serial_clock_now(void);
extern TimestampTz serial_stamp_time(void);
extern void serial_clock_seen(TimestampTz t);

#endif							/* REPLSTAMP_SERIAL_H */

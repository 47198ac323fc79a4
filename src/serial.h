/*-------------------------------------------------------------------------
 *
 * serial.h
 *		Serials and the lowest uncommitted serial (LUS).
 *
 * serial_take() hands out the next serial of the current database and
 * records, in shared memory, the lowest serial the current transaction
 * holds, so that serial_lus() can tell in O(MaxBackends) below which
 * serial every change is final.
 *
 * Copyright (c) 2026, the replstamp authors
 *
 *-------------------------------------------------------------------------
 */
#ifndef REPLSTAMP_SERIAL_H
#define REPLSTAMP_SERIAL_H

#include "datatype/timestamp.h"

extern void serial_require_shmem(void);
extern int64 serial_take(Oid seqoid);
extern int64 serial_next(Oid seqoid);
extern int64 serial_lus(Oid seqoid);
extern bool serial_xact_holds_serial(void);
extern TimestampTz serial_stamp_time(void);
extern void serial_clock_seen(TimestampTz t);

#endif							/* REPLSTAMP_SERIAL_H */

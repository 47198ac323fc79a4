/*-------------------------------------------------------------------------
 *
 * basebackup.h
 *		CALL replstamp.backup(): its settings.
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#ifndef REPLSTAMP_BASEBACKUP_H
#define REPLSTAMP_BASEBACKUP_H

extern void basebackup_init(void);

#endif							/* REPLSTAMP_BASEBACKUP_H */

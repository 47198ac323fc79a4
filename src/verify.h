/*-------------------------------------------------------------------------
 *
 * verify.h
 *		Verifying that this node and a peer hold the same rows
 *		(replstamp.verify(), replstamp.repair()), and the background check
 *		the launcher starts every replstamp.verify_interval.
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#ifndef REPLSTAMP_VERIFY_H
#define REPLSTAMP_VERIFY_H

extern void verify_init(void);
extern int	verify_interval_s(void);

#endif							/* REPLSTAMP_VERIFY_H */

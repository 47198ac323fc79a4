/*-------------------------------------------------------------------------
 *
 * launcher.h
 *		The replstamp launcher and the per-database workers it starts.
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#ifndef REPLSTAMP_LAUNCHER_H
#define REPLSTAMP_LAUNCHER_H

extern void launcher_init(void);

#endif							/* REPLSTAMP_LAUNCHER_H */

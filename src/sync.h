/*-------------------------------------------------------------------------
 *
 * sync.h
 *		Pulling from peers: replstamp.sync(), replstamp.sync_all(), and the
 *		same for the background worker (launcher.c).
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#ifndef REPLSTAMP_SYNC_H
#define REPLSTAMP_SYNC_H

#include "fmgr.h"
#include "lib/stringinfo.h"

extern void sync_init(void);
extern int64 sync_one_peer(const char *peer);
extern void sync_check_peer(const char *peer);
extern int64 sync_all_peers(void);
extern int64 sync_one_peer_warn(const char *peer);
extern bool sync_has_peers(void);
extern int64 sync_peers_but(bool (*but) (const char *peer, void *arg), void *arg);

#endif							/* REPLSTAMP_SYNC_H */

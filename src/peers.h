/*-------------------------------------------------------------------------
 *
 * peers.h
 *		The peers this node pulls from: added and dropped (mesh.c calls
 *		both through the function manager).
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#ifndef REPLSTAMP_PEERS_H
#define REPLSTAMP_PEERS_H

#include "fmgr.h"

extern Datum replstamp_add_peer(PG_FUNCTION_ARGS);
extern Datum replstamp_drop_peer(PG_FUNCTION_ARGS);

#endif							/* REPLSTAMP_PEERS_H */

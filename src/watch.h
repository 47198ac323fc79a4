/*-------------------------------------------------------------------------
 *
 * watch.h
 *		The sync worker's watch on its peers: one connection per peer
 *		waiting in replstamp.wait_for_changes() there, so that a commit on
 *		the peer has this node pull at once (launcher.c runs it).
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#ifndef REPLSTAMP_WATCH_H
#define REPLSTAMP_WATCH_H

#include "datatype/timestamp.h"
#include "nodes/pg_list.h"

extern void watch_refresh(List **watches);
extern void watch_connect(List *watches);
extern void watch_wait(List *watches, TimestampTz until);
extern const char *watch_take_due(List *watches);
extern void watch_clear_due(List *watches);
extern void watch_close_all(List **watches);
extern bool watch_is_up(const char *peer, void *watches);
extern bool watch_is_down(const char *peer, void *watches);
extern bool watch_is_up_or_down(const char *peer, void *watches);

#endif							/* REPLSTAMP_WATCH_H */

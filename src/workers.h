/*-------------------------------------------------------------------------
 *
 * workers.h
 *		Starting replstamp's short-lived background workers, and the list
 *		of databases they visit.  Used by the launcher, the backup flip and
 *		sync requests.
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#ifndef REPLSTAMP_WORKERS_H
#define REPLSTAMP_WORKERS_H

#include "nodes/pg_list.h"

struct BackgroundWorkerHandle;

extern bool worker_start(const char *function, const char *type, Oid dboid,
						 Oid userid, const void *extra, Size extralen,
						 struct BackgroundWorkerHandle **handle);
extern void worker_connect(Datum main_arg, void *extra, Size extralen);
extern void worker_pin_settings(void);
extern List *worker_connectable_databases(void);
extern void worker_wake_sync_at_commit(void);
extern void worker_launcher_ready(void);
extern int	worker_take_sync_wakeups(Oid *dbs);
extern uint32 worker_peers_added(void);
extern void worker_begin_xact(void);
extern void worker_commit_xact(void);
extern ErrorData *worker_catch_error(MemoryContext cxt);
extern void worker_pause_for_tests(int ms, const char *what, const char *setting);

#endif							/* REPLSTAMP_WORKERS_H */

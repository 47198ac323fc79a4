/*-------------------------------------------------------------------------
 *
 * remote.h
 *		A connection to a peer over libpq that never blocks without
 *		watching interrupts and a deadline: connect with connect_timeout,
 *		run a query, stream a query's rows one at a time, each wait bounded
 *		by replstamp.peer_timeout.  A peer's error comes back with its own
 *		SQLSTATE.
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#ifndef REPLSTAMP_REMOTE_H
#define REPLSTAMP_REMOTE_H

#include "datatype/timestamp.h"
#include "libpq-fe.h"

#include "compat.h"				/* pg_attribute_noreturn() on 18 */

typedef struct Remote
{
	PGconn	   *conn;
	const char *peer;			/* for messages */
	int			timeout_ms;		/* per wait; 0 = none */
	bool		fd_acquired;
	bool		streaming;		/* a single-row-mode query is running */
	bool		verifying;		/* for messages: a verification, not a sync */
	/* While connecting (remote_connect_start() and _poll()): */
	TimestampTz connect_deadline;
	int			connect_timeout_s;
	int			connect_events; /* WL_SOCKET_READABLE or WRITEABLE */
} Remote;

extern void remote_init(void);
extern void remote_connect(Remote *r, const char *peer, const char *conninfo);
extern void remote_connect_start(Remote *r, const char *peer, const char *conninfo,
								 const char *options);
extern bool remote_connect_poll(Remote *r);
extern void remote_connect_timed_out(Remote *r) pg_attribute_noreturn();
extern int	remote_peer_timeout_ms(void);
extern void remote_disconnect(Remote *r);
extern PGresult *remote_exec(Remote *r, const char *sql, int nparams,
							 const char *const *params, ExecStatusType expected);
extern void remote_stream(Remote *r, const char *sql, int nparams, const char *const *params);
extern PGresult *remote_next_row(Remote *r);

#endif							/* REPLSTAMP_REMOTE_H */

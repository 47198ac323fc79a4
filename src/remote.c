/*-------------------------------------------------------------------------
 *
 * remote.c
 *		libpq in the server, as postgres_fdw and pg_cron do it: connect with
 *		PQconnectStartParams/PQconnectPoll and a deadline, send queries
 *		asynchronously, and wait on the socket with WaitLatchOrSocket, so
 *		that a cancel, a terminate or postmaster death ends any wait, and a
 *		peer that accepts the connection and then says nothing is given up
 *		after replstamp.peer_timeout.
 *
 * The connection's own settings make what the peer sends independent of
 * its configuration: an empty search_path (every query names its objects
 * in full), ISO dates in UTC.  The connection string never appears in a
 * message (it may hold a password); the peer's error does, with the peer's
 * SQLSTATE.  The caller closes the connection in a PG_FINALLY block.
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "miscadmin.h"
#include "pgstat.h"
#include "storage/fd.h"
#include "storage/latch.h"
#include "utils/guc.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "errors.h"
#include "remote.h"

#define DEFAULT_CONNECT_TIMEOUT_S	10

/* GUC: seconds a sync waits for a peer's answer; 0 = forever. */
static int	peer_timeout = 60;

/*
 * GUCs.  Called from _PG_init.
 */
void
remote_init(void)
{
	DefineCustomIntVariable("replstamp.peer_timeout",
							"How long a sync waits for a peer to answer before it gives up.",
							"Each wait for the peer counts on its own; zero waits forever. "
							"connect_timeout in the peer's connection string (default 10 s) "
							"bounds the connection itself.",
							&peer_timeout,
							60, 0, INT_MAX / 1000,
							PGC_SUSET,
							GUC_UNIT_S,
							NULL, NULL, NULL);
}

pg_attribute_noreturn()
static void
connection_failed(Remote *r, const char *what)
{
	char	   *msg = r->conn ? pchomp(PQerrorMessage(r->conn)) : pstrdup("out of memory");

	ereport(ERROR,
			(errcode(ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION),
			 errmsg("could not connect to peer \"%s\"", r->peer),
			 errdetail_internal("%s", what ? what : msg)));
}

/*
 * Wait until the socket is ready for events (WL_SOCKET_READABLE or
 * WRITEABLE) or the deadline passes (0: none).  Returns false on timeout.
 */
static bool
wait_socket(Remote *r, int events, TimestampTz deadline)
{
	for (;;)
	{
		long		timeout = -1;
		int			rc;
		int			flags = WL_LATCH_SET | WL_EXIT_ON_PM_DEATH | events;

		if (deadline != 0)
		{
			timeout = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);
			if (timeout <= 0)
				return false;
			flags |= WL_TIMEOUT;
		}
		rc = WaitLatchOrSocket(MyLatch, flags, PQsocket(r->conn), timeout, PG_WAIT_EXTENSION);
		if (rc & WL_LATCH_SET)
		{
			ResetLatch(MyLatch);
			CHECK_FOR_INTERRUPTS();
		}
		if (rc & events)
			return true;
	}
}

static TimestampTz
wait_deadline(Remote *r)
{
	return r->timeout_ms > 0 ?
		TimestampTzPlusMilliseconds(GetCurrentTimestamp(), r->timeout_ms) : 0;
}

/* What the peer's session says (its warnings, notices) goes to our log. */
static void
notice_receiver(void *arg, const PGresult *res)
{
	Remote	   *r = arg;
	char	   *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);

	if (msg)
		ereport(LOG,
				(errmsg("replstamp: peer \"%s\" says: %s", r->peer, msg)));
}

/*
 * Start connecting to a peer, without waiting: remote_connect_poll() goes
 * on.  conninfo may name connect_timeout; otherwise 10 s.  options, if not
 * NULL, are more server settings for the session ("-c name=value ...").
 */
void
remote_connect_start(Remote *r, const char *peer, const char *conninfo, const char *options)
{
	const char *keywords[8];
	const char *values[8];
	char	   *err = NULL;
	PQconninfoOption *opts;
	int			connect_timeout = DEFAULT_CONNECT_TIMEOUT_S;
	int			n = 0;

	memset(r, 0, sizeof(Remote));
	r->peer = peer;
	r->timeout_ms = peer_timeout * 1000;

	opts = PQconninfoParse(conninfo, &err);
	if (opts == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid connection string for peer \"%s\"", peer),
				 errdetail_internal("%s", err ? pchomp(err) : "out of memory")));
	for (PQconninfoOption *o = opts; o->keyword; o++)
		if (strcmp(o->keyword, "connect_timeout") == 0 && o->val && o->val[0])
			connect_timeout = Max(atoi(o->val), 1);
	PQconninfoFree(opts);
	r->connect_timeout_s = connect_timeout;

	keywords[n] = "dbname";
	values[n++] = conninfo;
	keywords[n] = "application_name";
	values[n++] = "replstamp";
	/* What the peer sends must not depend on its settings. */
	keywords[n] = "options";
	values[n++] = psprintf("-c search_path= -c datestyle=ISO -c intervalstyle=postgres "
						   "-c timezone=UTC -c extra_float_digits=3 "
						   "-c default_transaction_isolation=read\\ committed%s%s",
						   options ? " " : "", options ? options : "");
	keywords[n] = "keepalives";
	values[n++] = "1";
	keywords[n] = NULL;
	values[n] = NULL;

	if (!AcquireExternalFD())
		ereport(ERROR,
				(errcode(ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION),
				 errmsg("could not connect to peer \"%s\"", peer),
				 errdetail("There are too many open files on the local server."),
				 errhint("Raise the server's max_files_per_process and/or \"ulimit -n\" limits.")));
	r->fd_acquired = true;

	r->conn = PQconnectStartParams(keywords, values, true);
	if (r->conn == NULL || PQstatus(r->conn) == CONNECTION_BAD)
		connection_failed(r, NULL);
	r->connect_deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), connect_timeout * 1000);
	r->connect_events = WL_SOCKET_WRITEABLE;
}

/*
 * One step of a connection remote_connect_start() began, once the socket
 * is ready for r->connect_events.  Returns true once connected; otherwise
 * r->connect_events says what to wait for next.  Raises the error of a
 * connection that failed.  The caller gives up at r->connect_deadline
 * (remote_connect_timed_out()).
 */
bool
remote_connect_poll(Remote *r)
{
	PostgresPollingStatusType status = PQconnectPoll(r->conn);

	if (status == PGRES_POLLING_FAILED)
		connection_failed(r, NULL);
	if (status != PGRES_POLLING_OK)
	{
		r->connect_events = status == PGRES_POLLING_READING ?
			WL_SOCKET_READABLE : WL_SOCKET_WRITEABLE;
		return false;
	}
	if (PQstatus(r->conn) != CONNECTION_OK)
		connection_failed(r, NULL);
	PQsetNoticeReceiver(r->conn, notice_receiver, r);
	return true;
}

/*
 * Connect to a peer, waiting at most connect_timeout (conninfo may name
 * it; otherwise 10 s).
 */
void
remote_connect(Remote *r, const char *peer, const char *conninfo)
{
	remote_connect_start(r, peer, conninfo, NULL);
	do
	{
		if (!wait_socket(r, r->connect_events, r->connect_deadline))
			remote_connect_timed_out(r);
	} while (!remote_connect_poll(r));
}

/* Give up a connection that took longer than connect_timeout. */
void
remote_connect_timed_out(Remote *r)
{
	connection_failed(r, psprintf("timeout expired after %d s (connect_timeout)",
								  r->connect_timeout_s));
}

/* How long a sync waits for a peer's answer, in ms (0: forever). */
int
remote_peer_timeout_ms(void)
{
	return peer_timeout * 1000;
}

/*
 * Close the connection, if any.  Safe to call twice.
 */
void
remote_disconnect(Remote *r)
{
	if (r->conn)
		PQfinish(r->conn);
	r->conn = NULL;
	if (r->fd_acquired)
		ReleaseExternalFD();
	r->fd_acquired = false;
	r->streaming = false;
}

/* Raise the peer's error (or the connection's), clearing res. */
static void
remote_error(Remote *r, PGresult *res)
{
	char	   *sqlstate = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	char	   *primary = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
	char	   *detail = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL) : NULL;
	char	   *hint = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_HINT) : NULL;
	int			code;

	sqlstate = sqlstate ? pstrdup(sqlstate) : NULL;
	primary = primary ? pstrdup(primary) : NULL;
	detail = detail ? pstrdup(detail) : NULL;
	hint = hint ? pstrdup(hint) : NULL;
	PQclear(res);

	if (sqlstate == NULL || primary == NULL || strlen(sqlstate) != 5)
	{
		char	   *msg = pchomp(PQerrorMessage(r->conn));

		/* A verification (verify.c) changes nothing here: no hint needed. */
		if (r->verifying)
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("peer \"%s\" failed during verification", r->peer),
					 errdetail_internal("%s", msg[0] ? msg : "the connection was lost")));
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("peer \"%s\" failed during sync", r->peer),
				 errdetail_internal("%s", msg[0] ? msg : "the connection was lost"),
				 errhint("What was committed before stays; the next sync goes on from there.")));
	}
	code = MAKE_SQLSTATE(sqlstate[0], sqlstate[1], sqlstate[2], sqlstate[3], sqlstate[4]);
	ereport(ERROR,
			(errcode(code),
			 errmsg_internal("%s", primary),
			 detail ? errdetail_internal("%s", detail) : 0,
			 hint ? errhint("%s", hint) : 0,
			 errcontext("on peer \"%s\"", r->peer)));
}

/* The next result of the running query, waiting at most peer_timeout. */
static PGresult *
next_result(Remote *r)
{
	TimestampTz deadline = wait_deadline(r);

	while (PQisBusy(r->conn))
	{
		if (!wait_socket(r, WL_SOCKET_READABLE, deadline))
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("peer \"%s\" did not answer within %d s", r->peer,
							r->timeout_ms / 1000),
					 errhint("Check the peer. replstamp.peer_timeout sets how long a sync waits for it.")));
		if (!PQconsumeInput(r->conn))
			remote_error(r, NULL);
	}
	return PQgetResult(r->conn);
}

static void
send_query(Remote *r, const char *sql, int nparams, const char *const *params, int format)
{
	if (!PQsendQueryParams(r->conn, sql, nparams, NULL, params, NULL, NULL, format))
		remote_error(r, NULL);
}

/*
 * Run one statement and return its result, which must have the expected
 * status (the caller clears it).
 */
PGresult *
remote_exec(Remote *r, const char *sql, int nparams, const char *const *params,
			ExecStatusType expected)
{
	PGresult   *last = NULL;
	PGresult   *res;

	send_query(r, sql, nparams, params, 0);
	while ((res = next_result(r)) != NULL)
	{
		if (last)
			PQclear(last);
		last = res;
		if (PQstatus(r->conn) == CONNECTION_BAD)
			break;
	}
	if (last == NULL || PQresultStatus(last) != expected)
		remote_error(r, last);
	return last;
}

/*
 * Start a query whose rows (binary format) remote_next_row() returns one
 * at a time: memory holds one row, whatever the size of the result.
 */
void
remote_stream(Remote *r, const char *sql, int nparams, const char *const *params)
{
	send_query(r, sql, nparams, params, 1);
	if (!PQsetSingleRowMode(r->conn))
		elog(ERROR, "replstamp: could not stream the rows of peer \"%s\"", r->peer);
	r->streaming = true;
}

/*
 * The next row of the streaming query (the caller clears it), or NULL once
 * all rows have come.
 */
PGresult *
remote_next_row(Remote *r)
{
	PGresult   *res;

	Assert(r->streaming);
	res = next_result(r);
	if (res == NULL)
		remote_error(r, NULL);
	if (PQresultStatus(res) == PGRES_SINGLE_TUPLE)
		return res;
	if (PQresultStatus(res) != PGRES_TUPLES_OK)
		remote_error(r, res);
	PQclear(res);
	/* The end of the query. */
	while ((res = next_result(r)) != NULL)
	{
		if (PQresultStatus(res) != PGRES_TUPLES_OK)
			remote_error(r, res);
		PQclear(res);
	}
	r->streaming = false;
	return NULL;
}

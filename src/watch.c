/*-------------------------------------------------------------------------
 *
 * watch.c
 *		The sync worker's watch on its peers.  Beside its syncs, the sync
 *		worker of a database (launcher.c) keeps one connection per peer
 *		that waits in replstamp.wait_for_changes() there: the call returns
 *		when a commit on the peer wrote changes (stamped there, or applied
 *		from another node: relays wake their own pullers), and the worker
 *		then syncs from that peer at once and sends the wait again.
 *
 * Pull by vector stays the model: the answer is only a number, the peer's
 * commit counter (wakeup.c); a number other than the one sent means "there
 * is more".  The counter is read on the peer before the sync that follows
 * begins, so a commit during that sync moves it past what the next wait
 * sends, and that wait returns at once.  A wake-up lost with a connection
 * costs latency, never a change: a new connection asks for the counter
 * (since NULL) and syncs, and the fallback poll (replstamp.sync_interval)
 * syncs every peer anyway.
 *
 * A connection that fails is tried again after a back-off that doubles
 * from BACKOFF_MIN_MS up to BACKOFF_MAX_MS; replstamp.peers shows whether
 * a peer's connection waits (wakeups) and when the next try is due
 * (next_retry_at).  A wait that has not answered replstamp.peer_timeout
 * past its timeout is taken for a lost connection.
 *
 * Faults (issue 24, item 6): a connection is made without blocking (the
 * worker waits on its socket with the others'), so a peer that accepts
 * connections and never answers (stopped, or behind a dead link) costs
 * the other peers nothing while it is tried.  A peer whose connection
 * was lost or could not be made is "down" until its next try: the
 * fallback poll leaves it to the watch (a sync would only wait for
 * connect_timeout or replstamp.peer_timeout), and replstamp.peers shows
 * it failing, with what failed in last_error, as a failed sync would.
 * When a connection is made again, the worker asks for the counter and
 * syncs (which records the peer ok again): nothing is lost, whatever
 * happened meanwhile.
 *
 * Everything here runs in the sync worker only, outside any transaction;
 * the list of watches lives in TopMemoryContext.
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "libpq-fe.h"
#include "miscadmin.h"
#include "storage/latch.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "catalog.h"
#include "compat.h"
#include "dbaccess.h"
#include "errors.h"
#include "remote.h"
#include "watch.h"
#include "workers.h"

/*
 * The timeout of one wait_for_changes().  The serving backend holds a
 * snapshot while it waits, which holds back the xmin horizon of VACUUM
 * there by up to this long: keep it short; a wait answered costs one round
 * trip.
 */
#define WAIT_S				10
#define LOST_DEFAULT_MS		60000	/* with replstamp.peer_timeout = 0 */
#define BACKOFF_MIN_MS		1000
#define BACKOFF_MAX_MS		60000

/* One peer watched. */
typedef struct Watch
{
	char	   *name;
	char	   *conninfo;
	Remote		remote;			/* remote.conn NULL: not connected */
	bool		connecting;		/* remote.conn is being connected */
	bool		down;			/* the connection was lost or not made */
	bool		known;			/* since holds the peer's counter */
	int64		since;
	TimestampTz sent_at;		/* when the running wait was sent */
	bool		due;			/* sync from this peer now */
	int			backoff_ms;		/* 0: the last try succeeded */
	TimestampTz next_retry;		/* 0: connect now */
	bool		shown_up;		/* replstamp.peer says wakeups = true */
	bool		seen;			/* still in replstamp.peer */
} Watch;

/* The catalog has replstamp.peer.wakeups and next_retry_at (1.2). */
static bool has_columns = false;

/*
 * Record what replstamp.peers shows of the watch: its own transaction.
 * error, if not NULL: the peer is down, and this is what failed (words of
 * replstamp's own, which every role may read).
 */
static void
record(Watch *w, const char *error)
{
	MemoryContext cxt = CurrentMemoryContext;

	if (!has_columns)
		return;
	PG_TRY();
	{
		ReplstampOwnerContext ctx;
		Oid			types[4] = {TEXTOID, BOOLOID, TIMESTAMPTZOID, TEXTOID};
		Datum		values[4];
		char		nulls[4] = {' ', ' ', ' ', ' '};

		values[0] = CStringGetTextDatum(w->name);
		values[1] = BoolGetDatum(w->remote.conn != NULL);
		values[2] = TimestampTzGetDatum(w->next_retry);
		if (w->remote.conn != NULL || w->next_retry == 0)
			nulls[2] = 'n';
		values[3] = CStringGetTextDatum(error ? error : "");
		worker_begin_xact();
		dbaccess_become_owner(&ctx);
		SPI_connect();
		if (error)
			dbaccess_spi_exec("UPDATE replstamp.peer SET wakeups = $2, next_retry_at = $3, "
							  "last_error = $4, last_error_at = pg_catalog.now(), "
							  "last_error_sqlstate = '08006', last_error_change = NULL, "
							  "status = CASE WHEN status IN ('diverged', 'stale') THEN status "
							  "ELSE 'failing' END "
							  "WHERE name OPERATOR(pg_catalog.=) $1",
							  4, types, values, nulls, SPI_OK_UPDATE);
		else
			dbaccess_spi_exec("UPDATE replstamp.peer SET wakeups = $2, next_retry_at = $3 "
							  "WHERE name OPERATOR(pg_catalog.=) $1",
							  3, types, values, nulls, SPI_OK_UPDATE);
		SPI_finish();
		dbaccess_restore_user(&ctx);
		worker_commit_xact();
		w->shown_up = w->remote.conn != NULL;
	}
	PG_CATCH();
	{
		ErrorData  *e = worker_catch_error(cxt);

		ereport(LOG,
				(errmsg("replstamp: could not record the wake-ups of peer \"%s\": %s",
						w->name, e->message)));
		FreeErrorData(e);
	}
	PG_END_TRY();
}

/* What replstamp.peers shows of a peer that cannot be reached. */
static char *
unreachable(Watch *w)
{
	return psprintf("could not connect to peer \"%s\"", w->name);
}

static char *
lost(Watch *w)
{
	return psprintf("lost the connection to peer \"%s\"", w->name);
}

static void
disconnect(Watch *w)
{
	remote_disconnect(&w->remote);
	w->known = false;
	w->connecting = false;
}

/*
 * The connection failed: try again after the back-off.  down, if not
 * NULL: the peer could not be reached (rather than refusing the wait),
 * in replstamp's words, for replstamp.peers (why goes to the log).
 */
static void
failed(Watch *w, const char *why, const char *down)
{
	disconnect(w);
	w->down = down != NULL;
	w->backoff_ms = w->backoff_ms == 0 ? BACKOFF_MIN_MS :
		Min(w->backoff_ms * 2, BACKOFF_MAX_MS);
	w->next_retry = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), w->backoff_ms);
	ereport(w->backoff_ms == BACKOFF_MIN_MS ? LOG : DEBUG1,
			(errmsg("replstamp: wake-ups from peer \"%s\" stopped, next try in %d ms",
					w->name, w->backoff_ms),
			 errdetail_internal("%s", why)));
	record(w, down);
}

/* Send the wait; since unknown: ask for the counter at once. */
static bool
send_wait(Watch *w)
{
	char		since[32];
	const char *params[2];

	snprintf(since, sizeof(since), INT64_FORMAT, w->since);
	params[0] = w->known ? since : NULL;
	params[1] = CppAsString2(WAIT_S) " s";
	if (!PQsendQueryParams(w->remote.conn,
						   "SELECT replstamp.wait_for_changes($1::pg_catalog.int8, $2::pg_catalog.interval)",
						   2, NULL, params, NULL, NULL, 0))
	{
		failed(w, pchomp(PQerrorMessage(w->remote.conn)), lost(w));
		return false;
	}
	w->sent_at = GetCurrentTimestamp();
	return true;
}

/*
 * The peers of replstamp.peer, in the watch list: new ones added (to
 * connect now), dropped ones closed, changed connection strings
 * reconnected.  Runs its own transaction.
 */
void
watch_refresh(List **watches)
{
	ReplstampOwnerContext ctx;
	ListCell   *lc;
	MemoryContext old;

	foreach(lc, *watches)
		((Watch *) lfirst(lc))->seen = false;

	worker_begin_xact();
	dbaccess_become_owner(&ctx);
	SPI_connect();
	dbaccess_spi_exec("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute "
					  "WHERE attrelid OPERATOR(pg_catalog.=) 'replstamp.peer'::pg_catalog.regclass "
					  "AND attname OPERATOR(pg_catalog.=) 'next_retry_at' AND NOT attisdropped)",
					  0, NULL, NULL, NULL, SPI_OK_SELECT);
	has_columns = strcmp(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1), "t") == 0;
	dbaccess_spi_exec("SELECT name, conninfo FROM replstamp.peer ORDER BY name",
					  0, NULL, NULL, NULL, SPI_OK_SELECT);
	old = MemoryContextSwitchTo(TopMemoryContext);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		char	   *name = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
		char	   *conninfo = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2);
		Watch	   *w = NULL;

		foreach(lc, *watches)
		{
			if (strcmp(((Watch *) lfirst(lc))->name, name) == 0)
				w = lfirst(lc);
		}
		if (w == NULL)
		{
			w = palloc0(sizeof(Watch));
			w->name = pstrdup(name);
			w->conninfo = pstrdup(conninfo);
			*watches = lappend(*watches, w);
		}
		else if (strcmp(w->conninfo, conninfo) != 0)
		{
			disconnect(w);
			pfree(w->conninfo);
			w->conninfo = pstrdup(conninfo);
			w->backoff_ms = 0;
			w->next_retry = 0;
			w->down = false;
		}
		w->seen = true;
	}
	MemoryContextSwitchTo(old);
	SPI_finish();
	dbaccess_restore_user(&ctx);
	worker_commit_xact();

	foreach(lc, *watches)
	{
		Watch	   *w = lfirst(lc);

		if (!w->seen)
		{
			disconnect(w);
			pfree(w->name);
			pfree(w->conninfo);
			pfree(w);
			*watches = foreach_delete_current(*watches, lc);
		}
	}
}

/*
 * In the PG_CATCH of a step of making a connection: the error, recorded
 * as the peer's being unreachable.
 */
static void
connect_failed(Watch *w, MemoryContext cxt)
{
	ErrorData  *e = worker_catch_error(cxt);

	failed(w, e->detail ? e->detail : e->message, unreachable(w));
	FreeErrorData(e);
}

/* Start connecting to every peer not connected whose next try is due. */
void
watch_connect(List *watches)
{
	ListCell   *lc;
	TimestampTz now = GetCurrentTimestamp();

	foreach(lc, watches)
	{
		Watch	   *w = lfirst(lc);
		MemoryContext cxt = CurrentMemoryContext;

		if (w->remote.conn != NULL || w->next_retry > now)
			continue;
		PG_TRY();
		{
			/* The serving side's settings must not cut the wait short. */
			remote_connect_start(&w->remote, w->name, w->conninfo,
								 "-c statement_timeout=0 -c idle_in_transaction_session_timeout=0");
			w->connecting = true;
		}
		PG_CATCH();
		{
			connect_failed(w, cxt);
		}
		PG_END_TRY();
	}
}

/* The socket of a connection being made is ready: go on with it. */
static void
connect_step(Watch *w)
{
	MemoryContext cxt = CurrentMemoryContext;
	bool		done = false;
	bool		ok = true;

	PG_TRY();
	{
		done = remote_connect_poll(&w->remote);
	}
	PG_CATCH();
	{
		connect_failed(w, cxt);
		ok = false;
	}
	PG_END_TRY();
	if (!ok || !done)
		return;
	w->connecting = false;
	w->down = false;
	w->known = false;
	if (!send_wait(w))
		return;
	w->backoff_ms = 0;
	w->next_retry = 0;
	if (!w->shown_up)
		record(w, NULL);
}

/* A connection being made took longer than connect_timeout. */
static void
connect_timed_out(Watch *w)
{
	MemoryContext cxt = CurrentMemoryContext;

	PG_TRY();
	{
		remote_connect_timed_out(&w->remote);
	}
	PG_CATCH();
	{
		connect_failed(w, cxt);
	}
	PG_END_TRY();
}

/* The answer of a wait arrived (or part of it): read it, send the next. */
static void
receive(Watch *w)
{
	PGresult   *res;

	if (!PQconsumeInput(w->remote.conn))
	{
		failed(w, pchomp(PQerrorMessage(w->remote.conn)), lost(w));
		return;
	}
	while (!PQisBusy(w->remote.conn))
	{
		res = PQgetResult(w->remote.conn);
		if (res == NULL)
		{
			/* The wait is over: the next one. */
			(void) send_wait(w);
			return;
		}
		if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1 ||
			PQgetisnull(res, 0, 0))
		{
			char	   *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
			char	   *why = pstrdup(msg ? msg : "unexpected answer to wait_for_changes()");

			PQclear(res);
			/* A connection that broke, or an answer that is an error. */
			failed(w, why, PQstatus(w->remote.conn) == CONNECTION_BAD ? lost(w) : NULL);
			return;
		}
		else
		{
			int64		value = pg_strtoint64(PQgetvalue(res, 0, 0));

			if (!w->known || value != w->since)
				w->due = true;
			w->since = value;
			w->known = true;
			PQclear(res);
		}
	}
}

/*
 * Sleep until the latch is set, a peer answers, a retry or a wait times
 * out, or until (0: no bound); the peers that answered are marked due.
 */
void
watch_wait(List *watches, TimestampTz until)
{
	WaitEventSet *set;
	WaitEvent  *events;
	ListCell   *lc;
	int			n = 2;
	int			nready;
	long		timeout = -1;
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz wake = until;
	int			lost_ms = WAIT_S * 1000 +
		(remote_peer_timeout_ms() > 0 ? remote_peer_timeout_ms() : LOST_DEFAULT_MS);

	foreach(lc, watches)
	{
		Watch	   *w = lfirst(lc);
		TimestampTz t;

		if (w->remote.conn != NULL && PQsocket(w->remote.conn) == PGINVALID_SOCKET)
		{
			failed(w, "the connection has no socket", lost(w));
			t = w->next_retry;
		}
		else if (w->remote.conn != NULL && w->connecting)
		{
			t = w->remote.connect_deadline;
			if (t <= now)
			{
				connect_timed_out(w);
				t = w->next_retry;
			}
			else
				n++;
		}
		else if (w->remote.conn != NULL)
		{
			/* A wait unanswered for too long: the connection is lost. */
			t = TimestampTzPlusMilliseconds(w->sent_at, lost_ms);
			if (t <= now)
			{
				failed(w, "the peer did not answer the wait in time",
					   psprintf("peer \"%s\" did not answer within %d s", w->name, lost_ms / 1000));
				t = w->next_retry;
			}
			else
				n++;
		}
		else
			t = w->next_retry;
		if (wake == 0 || t < wake)
			wake = t;
	}
	if (wake != 0)
		timeout = Max(TimestampDifferenceMilliseconds(now, wake), 0);

	set = CreateWaitEventSet(CurrentMemoryContext, n);
	(void) AddWaitEventToSet(set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
	(void) AddWaitEventToSet(set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
	foreach(lc, watches)
	{
		Watch	   *w = lfirst(lc);

		if (w->remote.conn != NULL)
			(void) AddWaitEventToSet(set, w->connecting ? w->remote.connect_events : WL_SOCKET_READABLE,
									 PQsocket(w->remote.conn), NULL, w);
	}
	events = palloc(sizeof(WaitEvent) * n);
	nready = WaitEventSetWait(set, timeout, events, n, PG_WAIT_EXTENSION);
	FreeWaitEventSet(set);
	for (int i = 0; i < nready; i++)
	{
		if (events[i].events & WL_LATCH_SET)
			ResetLatch(MyLatch);
		else if ((events[i].events & (WL_SOCKET_READABLE | WL_SOCKET_WRITEABLE)) &&
				 events[i].user_data != NULL)
		{
			Watch	   *w = events[i].user_data;

			if (w->remote.conn != NULL && w->connecting)
				connect_step(w);
			else if (w->remote.conn != NULL)
				receive(w);
		}
	}
	pfree(events);
}

/* A peer to sync from now, its mark taken; NULL when none is due. */
const char *
watch_take_due(List *watches)
{
	ListCell   *lc;

	foreach(lc, watches)
	{
		Watch	   *w = lfirst(lc);

		if (w->due)
		{
			w->due = false;
			return w->name;
		}
	}
	return NULL;
}

/* A sync of every peer is starting: what was due is covered by it. */
void
watch_clear_due(List *watches)
{
	ListCell   *lc;

	foreach(lc, watches)
		((Watch *) lfirst(lc))->due = false;
}

/* Close every connection and forget the peers. */
void
watch_close_all(List **watches)
{
	ListCell   *lc;

	foreach(lc, *watches)
	{
		Watch	   *w = lfirst(lc);

		disconnect(w);
	}
	*watches = NIL;
}

/*
 * Does a connection wait on the peer (watches: the List of watches)?  For
 * sync_peers_but(): the fallback poll leaves such a peer to its wake-ups.
 */
bool
watch_is_up(const char *peer, void *watches)
{
	ListCell   *lc;

	foreach(lc, (List *) watches)
	{
		Watch	   *w = lfirst(lc);

		if (strcmp(w->name, peer) == 0)
			return w->remote.conn != NULL && !w->connecting && w->known;
	}
	return false;
}

/*
 * Is the peer down: its connection lost or not made, and not made again
 * yet?  For sync_peers_but(): the fallback poll leaves such a peer to the
 * watch, which tries it with its back-off and syncs once it connects (a
 * sync would only wait for connect_timeout or replstamp.peer_timeout,
 * and the worker's other peers with it).
 */
bool
watch_is_down(const char *peer, void *watches)
{
	ListCell   *lc;

	foreach(lc, (List *) watches)
	{
		Watch	   *w = lfirst(lc);

		if (strcmp(w->name, peer) == 0)
			return w->down && (w->remote.conn == NULL || w->connecting);
	}
	return false;
}

/* Up or down: the fallback poll leaves the peer to the watch. */
bool
watch_is_up_or_down(const char *peer, void *watches)
{
	return watch_is_up(peer, watches) || watch_is_down(peer, watches);
}

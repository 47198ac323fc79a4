/*-------------------------------------------------------------------------
 *
 * sync.c
 *		Pulling from peers.  replstamp.sync(peer) and replstamp.sync_all()
 *		hand the work to a background worker and wait for it; the worker
 *		(or the resident sync worker of launcher.c) connects to the peer,
 *		exchanges handshakes (proto.c, serve.c), reads every change the peer
 *		holds above this node's vector, one replica ID at a time, one row at
 *		a time, and applies them (apply.c) in pages of at most
 *		replstamp.sync_batch_size changes or 16 MB, one transaction each.
 *
 * A page commits with the vector entry it reached, and the epochs of that
 * ID's history up to there: an interrupted sync keeps what it committed
 * and the next one goes on from there, locks are held for one page, and
 * memory holds one page.  Changes arrive in serial order per replica ID,
 * so a committed prefix never claims a serial whose change is not held,
 * nor a history other than the one it was pulled from.  A page that
 * failed is rolled back whole: on a transient error (a concurrent local
 * insert of the same key, a deadlock, a serialisation failure) it is
 * tried again, three tries in all; on any other error, or a third
 * failure, the sync stops at that change and records it
 * (record_failure()).  Nothing is skipped without skip().
 *
 * Syncs of a database run one at a time: each holds a session advisory
 * lock on the database (rowversion_lock(), shown in pg_locks) while it
 * runs.  Prunes run one at a time too (maintenance.c), beside a sync: a
 * sync's page and a prune's batch exclude each other (rowversion.c).
 *
 * What a node accepts from a peer (a hostile or broken peer cannot make it
 * diverge or stop others): never changes of its own current replica ID;
 * for the peer's own ID, no serial beyond what the peer says it handed
 * out; for the current ID of another node it also pulls from, the changes
 * the peer sends, but the vector moves past what that node itself said it
 * handed out only as far as those changes go (a peer cannot claim changes
 * of a node it relays and leave them unsent); no replica ID whose history parts
 * from what this node holds of it (a rolled-back or cloned node: see
 * epochs.c); stamp times that are finite and at most
 * replstamp.max_clock_skew ahead of this node's clock; at most
 * replstamp.max_new_replica_ids replica IDs, and as many dead epochs, it
 * has never heard of per handshake (proto.c); and a peer that could bring
 * deleted rows back (it holds less of an ID than a tombstone this node
 * dropped, or learnt from a peer was
 * dropped) is refused.
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "libpq-fe.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lmgr.h"
#include "storage/lwlock.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "apply.h"
#include "catalog.h"
#include "changelog.h"
#include "epochs.h"
#include "compat.h"
#include "errors.h"
#include "identity.h"
#include "maintenance.h"
#include "proto.h"
#include "remote.h"
#include "rowversion.h"
#include "rowimage.h"
#include "serial.h"
#include "shmem.h"
#include "sync.h"
#include "workers.h"

PG_FUNCTION_INFO_V1(replstamp_add_peer);
PG_FUNCTION_INFO_V1(replstamp_drop_peer);
PG_FUNCTION_INFO_V1(replstamp_forget_puller);
PG_FUNCTION_INFO_V1(replstamp_skip);

#define PAGE_BYTES			(16 * 1024 * 1024)
#define MAX_RELATION_LEN	(NAMEDATALEN * 4 + 8)
#define PAGE_RETRIES		3

/* GUCs */
static int	sync_batch_size = 1000;
static int	sync_delay = 0;			/* milliseconds */
static int	max_clock_skew = 300;

/* One replica ID's range to pull. */
typedef struct Range
{
	VectorItem *item;			/* the peer's entry */
	int64		lo;				/* we hold it up to here */
	int64		hi;				/* pull up to here */
	int64		vector_to;		/* then hold it up to here, at least */
} Range;

/* Changes read but not applied yet. */
typedef struct PageBuf
{
	MemoryContext cxt;
	Change	   *changes;
	int			n;
	int			max;
	int64		bytes;
} PageBuf;

typedef struct SyncRun
{
	const char *peer;
	MemoryContext cxt;
	Remote		remote;
	Handshake	me;
	Handshake	srv;
	bool		legacy;			/* the peer runs replstamp 1.0 */
	Range	   *ranges;
	int			nranges;
	ApplySession *apply;
	int64		applied;
	int64		skew;			/* microseconds the peer's stamps were ahead of us */
	StringInfoData notes;		/* replica IDs not pulled, and why */
	char	   *dropped;		/* columns dropped here (jsonb), or NULL */
	char	   *lacking;		/* of them, those the peer lacked too, or NULL */
} SyncRun;

/*
 * GUCs.  Called from _PG_init.
 */
void
sync_init(void)
{
	DefineCustomIntVariable("replstamp.sync_batch_size",
							"Changes a sync applies per transaction.",
							"A sync commits after this many changes (or 16 MB): locks are held that "
							"long, and an interrupted sync goes on from the last commit.",
							&sync_batch_size,
							1000, 1, 1000000,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("replstamp.sync_delay",
							"Pause after each page a sync applies.",
							"Spreads a long catch-up over time and leaves the CPU it would take to "
							"the node's own sessions; zero (the default) means no pause.",
							&sync_delay,
							0, 0, 3600 * 1000,
							PGC_SUSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("replstamp.max_clock_skew",
							"How far ahead of this node's clock a peer's stamp times may be.",
							"A change stamped further in the future is refused (the sync stops there "
							"and goes on once the clocks allow it). The skew seen is shown in replstamp.peers.",
							&max_clock_skew,
							300, 1, INT_MAX / 1000,
							PGC_SUSET,
							GUC_UNIT_S,
							NULL, NULL, NULL);
	DefineCustomIntVariable("replstamp.max_new_replica_ids",
							"How many replica IDs, and dead epochs, never seen before one handshake may name.",
							"A peer (or puller) naming more is refused: a hostile node must not flood "
							"the vector or the epochs.",
							&proto_max_new_replica_ids,
							1000, 1, INT_MAX,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);
}

/* ---------------------------------------------------------------------
 * Small helpers
 * ---------------------------------------------------------------------
 */

static bool
same_id(const pg_uuid_t *a, const pg_uuid_t *b)
{
	return memcmp(a->data, b->data, UUID_LEN) == 0;
}

/* ---------------------------------------------------------------------
 * The handshake
 * ---------------------------------------------------------------------
 */

static char *
read_conninfo(const char *peer)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(peer)};

	replstamp_spi_exec("SELECT conninfo FROM replstamp.peer WHERE name OPERATOR(pg_catalog.=) $1",
			           1, types, values, NULL, SPI_OK_SELECT);
	if (SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("peer \"%s\" does not exist", peer),
				 errhint("Add it with replstamp.add_peer().")));
	return SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
}

/* This node's side of the handshake, in a transaction of its own. */
static void
describe_self(SyncRun *r)
{
	ReplstampOwnerContext ctx;
	MemoryContext old;

	worker_begin_xact();
	/*
	 * A data set restored or copied and not checked yet (a database just
	 * made with CREATE DATABASE ... TEMPLATE pulls before it stamps) must
	 * rotate before it tells a peer which replica ID it is.
	 */
	identity_ensure_verified();
	replstamp_become_owner(&ctx);
	SPI_connect();
	old = MemoryContextSwitchTo(r->cxt);
	proto_local(&r->me, false);
	MemoryContextSwitchTo(old);
	SPI_finish();
	replstamp_restore_user(&ctx);
	worker_commit_xact();
}

/* The 1.0 handshake: a vector, nothing else. */
static void
legacy_handshake(SyncRun *r)
{
	PGresult   *res = remote_exec(&r->remote,
								  "SELECT replica_id, serial FROM replstamp.serve_vector()",
								  0, NULL, PGRES_TUPLES_OK);
	int			n = PQntuples(res);

	r->legacy = true;
	memset(&r->srv, 0, sizeof(Handshake));
	r->srv.label = pstrdup(r->peer);
	r->srv.issued = PG_INT64_MAX;
	r->srv.nvector = n;
	r->srv.vector = palloc0(sizeof(VectorItem) * Max(n, 1));
	if (PQnfields(res) != 2)
	{
		PQclear(res);
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("peer \"%s\" sent a malformed vector", r->peer)));
	}
	for (int i = 0; i < n; i++)
	{
		VectorItem *v = &r->srv.vector[i];

		if (PQgetisnull(res, i, 0) || PQgetisnull(res, i, 1))
		{
			PQclear(res);
			ereport(ERROR,
					(errcode(ERRCODE_DATA_EXCEPTION),
					 errmsg("peer \"%s\" sent a malformed vector", r->peer)));
		}
		memcpy(&v->id, DatumGetUUIDP(DirectFunctionCall1(uuid_in,
														 CStringGetDatum(PQgetvalue(res, i, 0)))),
			   sizeof(pg_uuid_t));
		v->serial = pg_strtoint64(PQgetvalue(res, i, 1));
		if (v->serial < 0)
		{
			PQclear(res);
			ereport(ERROR,
					(errcode(ERRCODE_DATA_EXCEPTION),
					 errmsg("peer \"%s\" sent a malformed vector", r->peer)));
		}
	}
	PQclear(res);
}

/* Exchange handshakes with the peer (no transaction open). */
static void
handshake(SyncRun *r)
{
	MemoryContext old = MemoryContextSwitchTo(r->cxt);
	const char *params[1];
	PGresult   *res;
	volatile bool legacy = false;
	char	   *from = psprintf("peer \"%s\"", r->peer);

	params[0] = proto_encode(&r->me);
	PG_TRY();
	{
		res = remote_exec(&r->remote, "SELECT replstamp.serve($1::jsonb)", 1, params,
						  PGRES_TUPLES_OK);
	}
	PG_CATCH();
	{
		ErrorData  *e;

		MemoryContextSwitchTo(r->cxt);
		e = CopyErrorData();
		if (e->sqlerrcode != ERRCODE_UNDEFINED_FUNCTION)
			PG_RE_THROW();
		FlushErrorState();
		legacy = true;
	}
	PG_END_TRY();

	if (legacy)
		legacy_handshake(r);
	else
	{
		Jsonb	   *json;

		if (PQntuples(res) != 1 || PQnfields(res) != 1 || PQgetisnull(res, 0, 0))
		{
			PQclear(res);
			ereport(ERROR,
					(errcode(ERRCODE_DATA_EXCEPTION),
					 errmsg("peer \"%s\" sent a malformed handshake", r->peer)));
		}
		ereport(DEBUG1, (errmsg_internal("replstamp: handshake from peer \"%s\": %s", r->peer,
										 PQgetvalue(res, 0, 0))));
		json = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(PQgetvalue(res, 0, 0))));
		PQclear(res);
		proto_decode(json, &r->srv, from);
		if (r->srv.protocol != REPLSTAMP_PROTOCOL)
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("peer \"%s\" speaks sync protocol %d, this node %d",
							r->peer, r->srv.protocol, REPLSTAMP_PROTOCOL),
					 errhint("Run the same version of replstamp on every node.")));
		r->skew = r->srv.now - serial_clock_now();
	}
	MemoryContextSwitchTo(old);
}

/* Is id one of this node's own IDs whose every change is here? */
static bool
own_local_id(const pg_uuid_t *id)
{
	Oid			types[1] = {UUIDOID};
	Datum		values[1] = {UUIDPGetDatum(id)};

	replstamp_spi_exec("SELECT 1 FROM replstamp.replica_history h WHERE h.replica_id OPERATOR(pg_catalog.=) $1 "
			           "AND NOT EXISTS (SELECT 1 FROM replstamp.vector_state v "
			           "WHERE v.replica_id OPERATOR(pg_catalog.=) $1)", 1, types, values, NULL, SPI_OK_SELECT);
	return SPI_processed > 0;
}

/*
 * What another peer of ours said it handed out under its current ID id at
 * our last sync with it.  Only a bound on how far the vector moves without
 * the changes (see plan()): a node that cannot be reached any more (a
 * primary that died, whose promoted standby serves its changes) strands
 * nothing, since what a relay sends is pulled whatever that node said.
 */
static bool
issued_by_other_peer(SyncRun *r, const pg_uuid_t *id, int64 *issued)
{
	Oid			types[2] = {UUIDOID, TEXTOID};
	Datum		values[2] = {UUIDPGetDatum(id), CStringGetTextDatum(r->peer)};
	bool		isnull;

	replstamp_spi_exec("SELECT pg_catalog.max(issued) FROM replstamp.peer WHERE replica_id OPERATOR(pg_catalog.=) $1 "
			           "AND name OPERATOR(pg_catalog.<>) $2 AND issued IS NOT NULL",
			           2, types, values, NULL, SPI_OK_SELECT);
	if (SPI_processed == 0)
		return false;
	*issued = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	return !isnull;
}

/*
 * The peer dropped tombstones of some IDs up to a serial (or learnt that
 * another node did): where this node now holds that ID at least that far,
 * it refuses from now on, as the peer does, a node holding less.  A node
 * that joined after the tombstones were dropped never held them: without
 * the peer's word it would let such a node pass for current.
 */
static void
adopt_purged(SyncRun *r)
{
	for (int i = 0; i < r->srv.npurged; i++)
	{
		Oid			types[2] = {UUIDOID, INT8OID};
		Datum		values[2] = {UUIDPGetDatum(&r->srv.purged[i].id),
		Int64GetDatum(r->srv.purged[i].serial)};

		replstamp_spi_exec("INSERT INTO replstamp.purged (replica_id, serial) SELECT $1, $2 "
				           "WHERE EXISTS (SELECT 1 FROM replstamp.vector v WHERE v.replica_id OPERATOR(pg_catalog.=) $1 "
				           "  AND v.serial OPERATOR(pg_catalog.>=) $2) "
				           "ON CONFLICT (replica_id) DO UPDATE SET serial = "
				           "GREATEST(replstamp.purged.serial, EXCLUDED.serial)",
				           2, types, values, NULL, SPI_OK_INSERT);
	}
}

/* The highest serial of id whose tombstone we dropped, or 0. */
static int64
purged_upto(const pg_uuid_t *id)
{
	Oid			types[1] = {UUIDOID};
	Datum		values[1] = {UUIDPGetDatum(id)};
	bool		isnull;

	replstamp_spi_exec("SELECT serial FROM replstamp.purged WHERE replica_id OPERATOR(pg_catalog.=) $1",
			           1, types, values, NULL, SPI_OK_SELECT);
	if (SPI_processed == 0)
		return 0;
	return DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

/*
 * Record what the peer held that this node lacked, as the handshake said
 * (replstamp.lag): a failed or interrupted sync leaves it there.
 */
static void
record_lag(SyncRun *r)
{
	/* What the peer held that we lacked at the start of this sync. */
	{
		Oid			dt[1] = {TEXTOID};
		Datum		dv[1] = {CStringGetTextDatum(r->peer)};

		replstamp_spi_exec("DELETE FROM replstamp.peer_lag WHERE peer OPERATOR(pg_catalog.=) $1",
				           1, dt, dv, NULL, SPI_OK_DELETE);
	}
	for (int i = 0; i < r->srv.nvector; i++)
	{
		VectorItem *v = &r->srv.vector[i];
		Oid			lt[5] = {TEXTOID, UUIDOID, INT8OID, INT8OID, TIMESTAMPTZOID};
		Datum		lv[5];
		char		ln[5] = {' ', ' ', ' ', ' ', ' '};

		if (same_id(&v->id, &r->me.replica_id))
			continue;
		lv[0] = CStringGetTextDatum(r->peer);
		lv[1] = UUIDPGetDatum(&v->id);
		lv[2] = Int64GetDatum(v->serial);
		lv[3] = Int64GetDatum(v->count);
		if (v->oldest != 0)
			lv[4] = TimestampTzGetDatum(v->oldest);
		else
			ln[4] = 'n';
		replstamp_spi_exec("INSERT INTO replstamp.peer_lag (peer, replica_id, peer_serial, pending, oldest_pending, observed_at) "
				           "VALUES ($1, $2, $3, $4, $5, pg_catalog.now())", 5, lt, lv, ln, SPI_OK_INSERT);
	}
}

/*
 * Act on the peer's handshake and decide what to pull, in a transaction.
 * May rotate this node's replica ID (the peer shows it went back in time)
 * and re-issue changes of dead epochs.
 */
static void
plan(SyncRun *r)
{
	ReplstampOwnerContext ctx;
	char	   *from = psprintf("peer \"%s\"", r->peer);
	MemoryContext old;

	proto_refuse_flood(&r->me, &r->srv, true, from);
	worker_begin_xact();
	replstamp_become_owner(&ctx);
	SPI_connect();

	if (!r->legacy)
	{
		/* Has this data set gone back in time, as the peer sees it? */
		VectorItem *mine = proto_find(&r->srv, &r->me.replica_id);

		if (mine && mine->serial > 0 && identity_check_histories())
		{
			int64		diverge_at;
			char	   *why = epochs_own_divergence(&r->me.replica_id, mine, &diverge_at);

			if (why)
			{
				ereport(WARNING,
						(errmsg("replstamp: peer \"%s\" holds changes of this node's replica ID %s that this data set does not have: %s",
								r->peer, replstamp_uuid_text(&r->me.replica_id), why),
						 errhint("This node rotates its replica ID now and re-issues what it stamped since serial " INT64_FORMAT "; nothing to do.",
								 diverge_at)));
				(void) identity_rotate_diverged(&r->me.replica_id, diverge_at,
												psprintf("peer history: %s", why));
			}
		}
		epochs_learn_dead(&r->srv, from);
		old = MemoryContextSwitchTo(r->cxt);
		proto_local(&r->me, false);
		MemoryContextSwitchTo(old);
	}

	r->ranges = MemoryContextAllocZero(r->cxt, sizeof(Range) * Max(r->srv.nvector, 1));
	r->nranges = 0;
	for (int i = 0; i < r->srv.nvector; i++)
	{
		VectorItem *v = &r->srv.vector[i];
		VectorItem *ours = proto_find(&r->me, &v->id);
		int64		hi = v->serial;
		int64		lo = ours ? ours->serial : 0;
		int64		cap;
		int64		vector_to;
		bool		peers_own = !r->legacy && same_id(&v->id, &r->srv.replica_id);

		/*
		 * A peer that could bring deleted rows back is not pulled from (an
		 * entry of 0 counts: a restored copy claims its old ID from 0).
		 */
		if (purged_upto(&v->id) > v->serial)
			ereport(ERROR,
					(errcode(ERRCODE_SNAPSHOT_TOO_OLD),
					 errmsg("peer \"%s\" is too far behind to pull from", r->peer),
					 errdetail("It holds changes of replica ID %s only up to serial " INT64_FORMAT
							   ", and this node has dropped the tombstones of rows deleted after that: it could bring them back.",
							   replstamp_uuid_text(&v->id), v->serial),
					 errhint("Rebuild that node from a fresh backup of a current node, then add it again.")));

		/* Never pull this node's own current ID, nor IDs all made here. */
		if (same_id(&v->id, &r->me.replica_id) || (ours && own_local_id(&v->id)))
			continue;
		if (peers_own && lo > r->srv.issued && identity_check_histories())
		{
			/* We hold more of its current ID than it ever handed out. */
			appendStringInfo(&r->notes, "%sits replica ID %s: it says it handed out serials up to " INT64_FORMAT
							 " and this node holds them up to " INT64_FORMAT " (its data went back in time)",
							 r->notes.len ? "; " : "", replstamp_uuid_text(&v->id), r->srv.issued, lo);
			ereport(WARNING,
					(errmsg("replstamp: peer \"%s\" has handed out serials of its replica ID %s only up to " INT64_FORMAT
							", but this node holds them up to " INT64_FORMAT,
							r->peer, replstamp_uuid_text(&v->id), r->srv.issued, lo),
					 errdetail("The peer's data went back in time (a snapshot or a copy put back); it would hand out serials this node already holds."),
					 errhint("Nothing is pulled under that ID. The peer rotates its replica ID when it next syncs or is synced from by a node running replstamp 1.1.")));
			continue;
		}
		if (peers_own && hi > r->srv.issued)
			ereport(ERROR,
					(errcode(ERRCODE_DATA_EXCEPTION),
					 errmsg("peer \"%s\" claims serials of its own replica ID up to " INT64_FORMAT
							" but says it handed out only up to " INT64_FORMAT, r->peer, hi, r->srv.issued)));
		/*
		 * A relayed ID whose node we also pull from: the peer may well be
		 * ahead of what that node last told us, so everything it has is
		 * pulled, but the vector moves beyond what that node said it handed
		 * out only as far as the changes actually sent.  A peer claiming
		 * that ID up to 2^63-1 without the changes cannot make this node
		 * skip that node's next changes.
		 */
		vector_to = hi;
		if (!peers_own && issued_by_other_peer(r, &v->id, &cap) && hi > cap)
			vector_to = Max(cap, lo);

		if (!r->legacy && identity_check_histories())
		{
			int64		diverge_at;

			if (!proto_histories_agree(ours, lo, v, peers_own ? PG_INT64_MAX : v->serial,
									   &diverge_at))
			{
				appendStringInfo(&r->notes, "%sreplica ID %s: its history parts from ours at serial " INT64_FORMAT,
								 r->notes.len ? "; " : "", replstamp_uuid_text(&v->id), diverge_at);
				ereport(WARNING,
						(errmsg("replstamp: not pulling replica ID %s from peer \"%s\": the peer's history of it parts from this node's at serial " INT64_FORMAT,
								replstamp_uuid_text(&v->id), r->peer, diverge_at),
						 errdetail("Two different data sets handed out the same serials under that ID (a node went back in time, or was cloned)."),
						 errhint("Nothing to do: the node that diverged rotates its replica ID when it next syncs, and the changes follow.")));
				continue;
			}
		}
		if (hi <= lo)
			continue;
		r->ranges[r->nranges].item = v;
		r->ranges[r->nranges].lo = lo;
		r->ranges[r->nranges].hi = hi;
		r->ranges[r->nranges].vector_to = vector_to;
		r->nranges++;
	}
	record_lag(r);

	SPI_finish();
	replstamp_restore_user(&ctx);
	worker_commit_xact();
}

/* ---------------------------------------------------------------------
 * Reading changes
 * ---------------------------------------------------------------------
 */

pg_attribute_noreturn()
static void
malformed(SyncRun *r, PGresult *res, const char *what)
{
	PQclear(res);
	ereport(ERROR,
			(errcode(ERRCODE_DATA_EXCEPTION),
			 errmsg("peer \"%s\" sent a malformed change", r->peer),
			 errdetail("%c%s.", pg_toupper((unsigned char) what[0]), what + 1)));
}

static int64
be_int64(const char *p)
{
	uint64		v = 0;

	for (int i = 0; i < 8; i++)
		v = (v << 8) | (unsigned char) p[i];
	return (int64) v;
}

static Jsonb *
parse_jsonb(SyncRun *r, PGresult *res, int col, const char *what)
{
	const char *p = PQgetvalue(res, 0, col);

	if (PQgetlength(res, 0, col) < 1 || p[0] != 1)
		malformed(r, res, psprintf("%s is not jsonb", what));
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(p + 1)));
}

/*
 * One streamed row (binary: replica_id, serial, relation, op, pk,
 * row_image, changed_at) into *c, checked.  prev is the last serial of the
 * range; the row is cleared.
 */
static void
parse_row(SyncRun *r, Range *rg, PGresult *res, Change *c, int64 prev)
{
	const char *relation;
	int			rellen;
	TimestampTz limit;

	if (PQnfields(res) != 7 || PQntuples(res) != 1)
		malformed(r, res, "a row does not have the seven columns asked for");
	for (int k = 0; k < 7; k++)
		if (k != 5 && PQgetisnull(res, 0, k))
			malformed(r, res, "a column other than row_image is null");
	if (PQgetlength(res, 0, 0) != UUID_LEN || PQgetlength(res, 0, 1) != 8 ||
		PQgetlength(res, 0, 6) != 8)
		malformed(r, res, "a stamp or a time has the wrong size");

	memcpy(&c->replica_id, PQgetvalue(res, 0, 0), UUID_LEN);
	c->serial = be_int64(PQgetvalue(res, 0, 1));
	if (!same_id(&c->replica_id, &rg->item->id))
		malformed(r, res, "a change of another replica ID than asked for came");
	if (c->serial <= prev)
	{
		PQclear(res);
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("peer \"%s\" sent serial " INT64_FORMAT " after " INT64_FORMAT " of the same replica ID",
						r->peer, c->serial, prev),
				 errdetail("Changes must come in increasing serial order.")));
	}
	if (c->serial <= rg->lo || c->serial > rg->hi)
	{
		PQclear(res);
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("peer \"%s\" sent serial " INT64_FORMAT " outside the range it was asked for",
						r->peer, c->serial)));
	}

	relation = PQgetvalue(res, 0, 2);
	rellen = PQgetlength(res, 0, 2);
	if (rellen == 0 || rellen >= MAX_RELATION_LEN)
		malformed(r, res, "a table name is empty or too long");
	c->relation = cstring_to_text_with_len(relation, rellen);
	c->op = changelog_op_code(PQgetvalue(res, 0, 3), PQgetlength(res, 0, 3));
	if (c->op == 0)
	{
		char	   *op = pnstrdup(PQgetvalue(res, 0, 3), Min(PQgetlength(res, 0, 3), 32));

		PQclear(res);
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("peer \"%s\" sent a change with unknown operation \"%s\"", r->peer, op)));
	}
	if (PQgetisnull(res, 0, 5) != (c->op == 'D'))
	{
		PQclear(res);
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("peer \"%s\" sent a malformed change", r->peer),
				 errdetail("An %s must have a row image exactly when it is not a DELETE.",
						   changelog_op_name(c->op))));
	}
	c->pk = parse_jsonb(r, res, 4, "the key");
	c->image = c->op == 'D' ? NULL : parse_jsonb(r, res, 5, "the row image");
	c->changed_at = be_int64(PQgetvalue(res, 0, 6));
	c->applied = true;
	if (TIMESTAMP_NOT_FINITE(c->changed_at))
		malformed(r, res, "a stamp time is not finite");
	limit = serial_clock_now() + (TimestampTz) max_clock_skew * USECS_PER_SEC;
	if (c->changed_at > limit)
	{
		PQclear(res);
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("peer \"%s\" sent a change stamped %s, more than replstamp.max_clock_skew ahead of this node's clock",
						r->peer, timestamptz_to_str(c->changed_at)),
				 errdetail("Change %s/" INT64_FORMAT ".", replstamp_uuid_text(&c->replica_id), c->serial),
				 errhint("Fix the clocks (NTP). The sync goes on from this change once it is no longer that far ahead, or raise replstamp.max_clock_skew.")));
	}
	if (c->changed_at - serial_clock_now() > r->skew)
		r->skew = c->changed_at - serial_clock_now();
	PQclear(res);
}

static void
page_add(PageBuf *p, Change *c, int64 bytes)
{
	if (p->n >= p->max)
	{
		p->max = Max(64, p->max * 2);
		p->changes = p->changes ?
			repalloc(p->changes, sizeof(Change) * p->max) :
			MemoryContextAlloc(p->cxt, sizeof(Change) * p->max);
	}
	p->changes[p->n++] = *c;
	p->bytes += bytes;
}

/*
 * Advance the vector entry of the range's replica ID to upto, in the
 * current transaction, and record with it the epochs of that ID's history
 * the peer showed up to there (epochs.c).  The two go together: a vector
 * entry past the first serial of an epoch this node never recorded is a
 * history that parts from its origin's, and the origin, seeing it in the
 * next handshake, would take itself for a node gone back in time and
 * rotate -- a page committed before the last one of a range, or before a
 * row held by a local writer, would do that to a node that merely
 * restarted.
 */
static void
advance_vector(SyncRun *r, Range *rg, int64 upto, TimestampTz max_changed_at)
{
	ReplstampOwnerContext ctx;
	Oid			types[3] = {UUIDOID, INT8OID, TIMESTAMPTZOID};
	Datum		values[3];
	char		nulls[3] = {' ', ' ', ' '};

	values[0] = UUIDPGetDatum(&rg->item->id);
	values[1] = Int64GetDatum(upto);
	if (max_changed_at != 0)
		values[2] = TimestampTzGetDatum(max_changed_at);
	else
		nulls[2] = 'n';
	replstamp_become_owner(&ctx);
	SPI_connect();
	/* IDs whose every change was made here follow our own LUS: no entry. */
	replstamp_spi_exec("INSERT INTO replstamp.vector_state (replica_id, serial, max_changed_at) "
			           "SELECT $1, $2, $3 WHERE NOT EXISTS (SELECT 1 FROM replstamp.replica_history h "
			           "  WHERE h.replica_id OPERATOR(pg_catalog.=) $1 AND NOT EXISTS "
			           "  (SELECT 1 FROM replstamp.vector_state v WHERE v.replica_id OPERATOR(pg_catalog.=) $1)) "
			           "ON CONFLICT (replica_id) DO UPDATE SET "
			           "serial = GREATEST(replstamp.vector_state.serial, EXCLUDED.serial), "
			           "max_changed_at = GREATEST(replstamp.vector_state.max_changed_at, EXCLUDED.max_changed_at)",
			           3, types, values, nulls, SPI_OK_INSERT);
	if (!r->legacy)
		epochs_adopt(rg->item, upto);
	SPI_finish();
	replstamp_restore_user(&ctx);
}

static bool
transient(ErrorData *e)
{
	return e->sqlerrcode == ERRCODE_UNIQUE_VIOLATION ||
		e->sqlerrcode == ERRCODE_T_R_SERIALIZATION_FAILURE ||
		e->sqlerrcode == ERRCODE_T_R_DEADLOCK_DETECTED ||
		(e->message && strcmp(e->message, "tuple concurrently updated") == 0);
}

/*
 * Apply a page and commit it with the vector entry it reached (upto, if it
 * is above the page's last serial: the end of the range).  A page is one
 * transaction, unless a change's row is held by another transaction (a
 * local writer's): what the page applied before it is committed first, so
 * that the sync holds no row lock while it waits, and no local writer
 * waiting for one of those rows can deadlock with it.  Retried on
 * transient errors.  Then pause for replstamp.sync_delay, if set.
 */
static void
apply_page(SyncRun *r, Range *rg, PageBuf *p, int64 upto)
{
	volatile int done = 0;		/* changes committed */

	for (int attempt = 1;; attempt++)
	{
		MemoryContext cxt = CurrentMemoryContext;
		bool		retry = false;

		/*
		 * No jump leaves the PG_TRY or the PG_CATCH below (a "continue" in
		 * the PG_CATCH would only leave PG_TRY's do-while, skip the
		 * restoring of the exception stack, and end this loop as if the page
		 * had committed): the outcome is decided after PG_END_TRY.
		 */
		PG_TRY();
		{
			for (;;)
			{
				int64		last = 0;
				TimestampTz max_t = 0;
				int64		applied = 0;
				int			i;

				worker_begin_xact();
				apply_page_begin(r->apply);
				for (i = done; i < p->n; i++)
				{
					Change	   *c = &p->changes[i];
					ApplyOutcome o;

					CHECK_FOR_INTERRUPTS();
					o = apply_change(r->apply, c, i > done);
					if (o == APPLY_BUSY)
						break;
					if (o == APPLY_NEW)
						applied++;
					last = c->serial;
					max_t = Max(max_t, c->changed_at);
				}
				apply_page_end(r->apply);
				if (i < p->n)
				{
					/* Busy: commit what came before it, then wait for it. */
					advance_vector(r, rg, last, max_t);
					worker_commit_xact();
					r->applied += applied;
					done = i;
					continue;
				}
				if (Max(last, upto) > 0)
					advance_vector(r, rg, Max(last, upto), max_t);
				worker_commit_xact();
				r->applied += applied;
				break;
			}
		}
		PG_CATCH();
		{
			ErrorData  *e;

			MemoryContextSwitchTo(cxt);
			e = CopyErrorData();
			if (attempt >= PAGE_RETRIES || !transient(e))
				PG_RE_THROW();
			FlushErrorState();
			AbortCurrentTransaction();
			apply_page_abort(r->apply);
			ereport(LOG,
					(errcode(e->sqlerrcode),
					 errmsg("replstamp: retrying a page from peer \"%s\" (attempt %d of %d) after: %s",
							r->peer, attempt + 1, PAGE_RETRIES, e->message)));
			FreeErrorData(e);
			retry = true;
		}
		PG_END_TRY();
		if (!retry)
			break;
	}
	if (p->n > 0 && sync_delay > 0)
	{
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 sync_delay, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
	MemoryContextReset(p->cxt);
	p->n = 0;
	p->max = 0;
	p->changes = NULL;
	p->bytes = 0;
}

/* Pull one replica ID's range. */
static void
pull_range(SyncRun *r, Range *rg)
{
	char		idtext[UUID_LEN * 2 + 5];
	char		lo[32];
	char		hi[32];
	const char *params[3] = {idtext, lo, hi};
	PageBuf		page;
	int64		prev = rg->lo;

	strlcpy(idtext, replstamp_uuid_text(&rg->item->id), sizeof(idtext));
	snprintf(lo, sizeof(lo), INT64_FORMAT, rg->lo);
	snprintf(hi, sizeof(hi), INT64_FORMAT, rg->hi);
	memset(&page, 0, sizeof(page));
	page.cxt = AllocSetContextCreate(r->cxt, "replstamp sync page", ALLOCSET_DEFAULT_SIZES);

	/*
	 * A 1.1 peer leaves out the changes of tables it dropped or untracked:
	 * a node that never had such a table must not be stopped by them.
	 */
	remote_stream(&r->remote, r->legacy ?
				  "SELECT replica_id, serial, relation, op, pk, row_image, changed_at "
				  "FROM replstamp.changes WHERE replica_id OPERATOR(pg_catalog.=) $1::pg_catalog.uuid "
				  "AND serial OPERATOR(pg_catalog.>) $2::pg_catalog.int8 "
				  "AND serial OPERATOR(pg_catalog.<=) $3::pg_catalog.int8 ORDER BY serial" :
				  "SELECT c.replica_id, c.serial, c.relation, c.op, c.pk, c.row_image, c.changed_at "
				  "FROM replstamp.changes c WHERE c.replica_id OPERATOR(pg_catalog.=) $1::pg_catalog.uuid "
				  "AND c.serial OPERATOR(pg_catalog.>) $2::pg_catalog.int8 "
				  "AND c.serial OPERATOR(pg_catalog.<=) $3::pg_catalog.int8 "
				  "AND NOT EXISTS (SELECT 1 FROM replstamp.tracked t "
				  "  WHERE t.relation OPERATOR(pg_catalog.=) c.relation AND t.state OPERATOR(pg_catalog.<>) 'tracked') "
				  "ORDER BY c.serial",
				  3, params);
	for (;;)
	{
		PGresult   *res;
		Change		c;
		int64		bytes = 0;
		MemoryContext old;

		CHECK_FOR_INTERRUPTS();
		res = remote_next_row(&r->remote);
		if (res == NULL)
			break;
		for (int k = 0; k < PQnfields(res); k++)
			bytes += PQgetlength(res, 0, k);
		old = MemoryContextSwitchTo(page.cxt);
		parse_row(r, rg, res, &c, prev);
		page_add(&page, &c, bytes);
		MemoryContextSwitchTo(old);
		prev = c.serial;
		if (page.n >= sync_batch_size || page.bytes >= PAGE_BYTES)
			apply_page(r, rg, &page, 0);
	}
	/* The last page carries the end of the range. */
	apply_page(r, rg, &page, rg->vector_to);
	MemoryContextDelete(page.cxt);
}

/* ---------------------------------------------------------------------
 * A whole sync with one peer
 * ---------------------------------------------------------------------
 */

/*
 * Which of the columns dropped here the peer lacks too (r->lacking).  Asked
 * before the handshake: what the peer wrote into such a column before it
 * dropped it has a serial below what the handshake says it handed out.
 */
static void
peer_lacks_dropped(SyncRun *r)
{
	const char *params[1] = {r->dropped};
	PGresult   *volatile res = NULL;

	if (r->dropped == NULL)
		return;
	PG_TRY();
	{
		res = remote_exec(&r->remote,
						  "SELECT COALESCE(pg_catalog.jsonb_agg(d), '[]') "
						  "FROM pg_catalog.jsonb_to_recordset($1::pg_catalog.jsonb) AS d(r text, c text) "
						  "WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a "
						  "  WHERE a.attrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(d.r) "
						  "  AND a.attname OPERATOR(pg_catalog.=) d.c AND NOT a.attisdropped)",
						  1, params, PGRES_TUPLES_OK);
		if (PQntuples(res) != 1 || PQnfields(res) != 1 || PQgetisnull(res, 0, 0))
			ereport(ERROR,
					(errcode(ERRCODE_PROTOCOL_VIOLATION),
					 errmsg("peer \"%s\" answered the question which columns it lacks with something else", r->peer)));
		r->lacking = MemoryContextStrdup(r->cxt, PQgetvalue(res, 0, 0));
	}
	PG_FINALLY();
	{
		PQclear(res);
	}
	PG_END_TRY();
}

/* Record the outcome in replstamp.peer and replstamp.peer_lag. */
static void
record_success(SyncRun *r)
{
	ReplstampOwnerContext ctx;
	Oid			types[9] = {TEXTOID, INT8OID, UUIDOID, INT8OID, TEXTOID, TEXTOID, INT8OID,
	INT8OID, INT4OID};
	Datum		values[9];
	char		nulls[9] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};

	worker_begin_xact();
	replstamp_become_owner(&ctx);
	SPI_connect();
	values[0] = CStringGetTextDatum(r->peer);
	values[1] = Int64GetDatum(r->applied);
	if (r->legacy)
	{
		nulls[2] = 'n';
		nulls[3] = 'n';
	}
	else
	{
		values[2] = UUIDPGetDatum(&r->srv.replica_id);
		values[3] = Int64GetDatum(r->srv.issued);
	}
	values[4] = CStringGetTextDatum(r->notes.len ? "diverged" : "ok");
	if (r->notes.len)
		values[5] = CStringGetTextDatum(psprintf("not pulled: %s", r->notes.data));
	else
		nulls[5] = 'n';
	values[6] = Int64GetDatum(r->skew);
	values[7] = Int64GetDatum(apply_conflicts(r->apply));
	values[8] = Int32GetDatum(r->legacy ? 1 : REPLSTAMP_PROTOCOL);
	replstamp_spi_exec("UPDATE replstamp.peer SET last_sync_at = pg_catalog.now(), "
			           "changes_pulled = changes_pulled OPERATOR(pg_catalog.+) $2, "
			           "replica_id = $3, issued = $4, status = $5, last_error = $6, "
			           "last_error_at = CASE WHEN $6 IS NULL THEN NULL ELSE pg_catalog.now() END, "
			           "last_error_sqlstate = NULL, last_error_change = NULL, "
			           "clock_skew = pg_catalog.make_interval(secs => $7::float8 / 1000000), "
			           "conflicts = conflicts OPERATOR(pg_catalog.+) $8, protocol = $9 "
			           "WHERE name OPERATOR(pg_catalog.=) $1",
			           9, types, values, nulls, SPI_OK_UPDATE);
	replstamp_spi_exec("UPDATE replstamp.peer SET changes_skipped = changes_skipped OPERATOR(pg_catalog.+) $2 "
			           "WHERE name OPERATOR(pg_catalog.=) $1", 2, types,
			           (Datum[]) {values[0], Int64GetDatum(apply_skipped(r->apply))}, NULL, SPI_OK_UPDATE);

	/* IDs the peer retired: they may leave the vector once pruned. */
	for (int i = 0; i < r->srv.nretired; i++)
	{
		Oid			rt[1] = {UUIDOID};
		Datum		rv[1] = {UUIDPGetDatum(&r->srv.retired[i])};

		replstamp_spi_exec("UPDATE replstamp.vector_state SET retired = true "
				           "WHERE replica_id OPERATOR(pg_catalog.=) $1 AND NOT retired", 1, rt, rv, NULL, SPI_OK_UPDATE);
	}
	adopt_purged(r);
	/* Only a sync that pulled everything the peer offered says it lacks a column. */
	apply_note_dropped_elsewhere(r->peer, r->legacy || r->notes.len ? NULL : r->lacking,
								 &r->srv.replica_id, r->srv.issued);

	SPI_finish();
	replstamp_restore_user(&ctx);
	maintenance_mark_lus();
	worker_commit_xact();
}

/*
 * The error of a failed sync, in replstamp.peer, which every role can
 * read: no row values in it (errors.c).  The change that failed, if it
 * failed applying one, goes in last_error_change, what replstamp.skip()
 * takes.
 */
static void
record_failure(const char *peer, ErrorData *e)
{
	ReplstampOwnerContext ctx;
	Oid			types[4] = {TEXTOID, TEXTOID, TEXTOID, TEXTOID};
	Datum		values[4];
	char		nulls[4] = {' ', ' ', ' ', 'n'};
	char	   *stamp;
	char	   *msg = errors_public_text(e, &stamp);

	if (stamp)
	{
		values[3] = CStringGetTextDatum(stamp);
		nulls[3] = ' ';
	}

	worker_begin_xact();
	replstamp_become_owner(&ctx);
	SPI_connect();
	values[0] = CStringGetTextDatum(peer);
	values[1] = CStringGetTextDatum(msg);
	values[2] = CStringGetTextDatum(unpack_sql_state(e->sqlerrcode));
	replstamp_spi_exec("UPDATE replstamp.peer SET last_error = $2, last_error_at = pg_catalog.now(), "
			           "last_error_sqlstate = $3, last_error_change = $4, "
			           "status = CASE WHEN $3 OPERATOR(pg_catalog.=) '72000' THEN 'stale' ELSE 'failing' END "
			           "WHERE name OPERATOR(pg_catalog.=) $1", 4, types, values, nulls, SPI_OK_UPDATE);
	SPI_finish();
	replstamp_restore_user(&ctx);
	worker_commit_xact();
}

/*
 * Pull everything the peer holds and this node lacks.  Runs in a
 * background worker, outside any transaction, holding the database's sync
 * lock.  Returns the number of changes applied; errors are recorded in
 * replstamp.peer and raised.
 */
static int64
sync_peer(const char *peer)
{
	MemoryContext cxt = AllocSetContextCreate(TopMemoryContext, "replstamp sync",
											  ALLOCSET_DEFAULT_SIZES);
	MemoryContext old = MemoryContextSwitchTo(cxt);
	SyncRun    *r = palloc0(sizeof(SyncRun));
	int64		applied;

	r->peer = pstrdup(peer);
	r->cxt = cxt;
	initStringInfo(&r->notes);
	pgstat_report_activity(STATE_RUNNING, psprintf("replstamp: syncing from peer %s", peer));

	PG_TRY();
	{
		char	   *conninfo;
		ReplstampOwnerContext ctx;

		worker_begin_xact();
		/*
		 * This process only syncs: every value is read back with the
		 * canonical settings, and the table owners' ordinary triggers do not
		 * fire (ENABLE REPLICA and ALWAYS ones do), as in logical
		 * replication.
		 */
		rowimage_enter_input_settings(true);
		SetConfigOption("session_replication_role", "replica", PGC_SUSET, PGC_S_SESSION);
		(void) replstamp_catalog_v11("replstamp.sync()");
		replstamp_become_owner(&ctx);
		SPI_connect();
		conninfo = read_conninfo(peer);
		conninfo = MemoryContextStrdup(cxt, conninfo);
		SPI_finish();
		replstamp_restore_user(&ctx);
		r->apply = apply_session_begin(peer, cxt);
		/* Columns added here since the last sync: fill them in first. */
		apply_page_begin(r->apply);
		apply_fill_new_columns(r->apply);
		apply_page_end(r->apply);
		r->dropped = apply_dropped_columns(cxt);
		worker_commit_xact();

		describe_self(r);
		remote_connect(&r->remote, r->peer, conninfo);
		/* Before the handshake: see apply_note_dropped_elsewhere(). */
		peer_lacks_dropped(r);
		handshake(r);
		if (r->srv.rotated)
		{
			/*
			 * The peer saw that its data went back in time and rotated while
			 * it answered: what it re-issued is committed now; ask again.
			 */
			describe_self(r);
			handshake(r);
		}
		plan(r);

		(void) PQclear(remote_exec(&r->remote, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
								   0, NULL, PGRES_COMMAND_OK));
		for (int i = 0; i < r->nranges; i++)
			pull_range(r, &r->ranges[i]);
		/* All the peer held is here: foreign keys still broken are resolved. */
		worker_begin_xact();
		apply_sync_end(r->apply);
		worker_commit_xact();
		(void) PQclear(remote_exec(&r->remote, "COMMIT", 0, NULL, PGRES_COMMAND_OK));
		remote_disconnect(&r->remote);

		record_success(r);
	}
	PG_CATCH();
	{
		ErrorData  *e = worker_catch_error(cxt);

		remote_disconnect(&r->remote);
		record_failure(peer, e);
		pgstat_report_activity(STATE_IDLE, NULL);
		MemoryContextSwitchTo(old);
		ReThrowError(e);
	}
	PG_END_TRY();

	applied = r->applied;
	pgstat_report_activity(STATE_IDLE, NULL);
	MemoryContextSwitchTo(old);
	MemoryContextDelete(cxt);
	return applied;
}

/* The peers, in name order. */
static List *
peer_names(void)
{
	List	   *names = NIL;
	ReplstampOwnerContext ctx;
	MemoryContext caller = CurrentMemoryContext;

	worker_begin_xact();
	replstamp_become_owner(&ctx);
	SPI_connect();
	if (SPI_execute("SELECT name FROM replstamp.peer ORDER BY name", true, 0) != SPI_OK_SELECT)
		elog(ERROR, "replstamp: could not read the peers");
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		char	   *name = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
		MemoryContext old = MemoryContextSwitchTo(caller);

		names = lappend(names, pstrdup(name));
		MemoryContextSwitchTo(old);
	}
	SPI_finish();
	replstamp_restore_user(&ctx);
	worker_commit_xact();
	return names;
}

static void
lock_for_sync(void)
{
	worker_begin_xact();
	rowversion_lock();
	worker_commit_xact();
}

/*
 * A WARNING for every reason a tracked table of this database is not
 * replicated fully (replstamp.problems, 1.2), at every sync until the user
 * acts: a table re-created without its triggers (pg_restore --clean -t)
 * must not look as if it replicated.  Outside any transaction.
 */
static void
warn_problems(void)
{
	const ReplstampCatalog *cat;
	ReplstampOwnerContext ctx;

	worker_begin_xact();
	cat = replstamp_catalog(false);
	if (OidIsValid(get_relname_relid("problems", cat->schema)))
	{
		replstamp_become_owner(&ctx);
		SPI_connect();
		replstamp_spi_exec("SELECT object, problem, detail, hint FROM replstamp.problems "
						   "WHERE problem OPERATOR(pg_catalog.!~~) 'peer %' "
						   "AND problem OPERATOR(pg_catalog.<>) 'ddl guard disabled'",
						   0, NULL, NULL, NULL, SPI_OK_SELECT);
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			HeapTuple	tup = SPI_tuptable->vals[i];
			TupleDesc	desc = SPI_tuptable->tupdesc;

			ereport(WARNING,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("replstamp: table %s is not replicated by this node: %s",
							SPI_getvalue(tup, desc, 1), SPI_getvalue(tup, desc, 2)),
					 errdetail_internal("%s", SPI_getvalue(tup, desc, 3)),
					 errhint("%s", SPI_getvalue(tup, desc, 4))));
		}
		SPI_finish();
		replstamp_restore_user(&ctx);
	}
	worker_commit_xact();
}

/*
 * One peer, holding the database's sync lock.
 */
static int64
sync_locked(const char *peer)
{
	int64		applied = 0;

	lock_for_sync();
	PG_TRY();
	{
		applied = sync_peer(peer);
	}
	PG_FINALLY();
	{
		rowversion_unlock();
	}
	PG_END_TRY();
	return applied;
}

/*
 * One peer, holding the database's sync lock.  For background workers,
 * outside any transaction.
 */
int64
sync_one_peer(const char *peer)
{
	warn_problems();
	return sync_locked(peer);
}

/*
 * Error out unless the peer exists (in the caller's transaction).
 */
void
sync_check_peer(const char *peer)
{
	ReplstampOwnerContext ctx;

	replstamp_become_owner(&ctx);
	SPI_connect();
	(void) read_conninfo(peer);
	SPI_finish();
	replstamp_restore_user(&ctx);
}

/*
 * Every peer, each in its own transactions and under the database's sync
 * lock on its own (a prune takes its turn between two peers): a failing
 * peer is recorded in replstamp.peer, reported in a WARNING (and the server
 * log), and the others go on.  Returns the number of changes applied.  For background
 * workers, outside any transaction.
 */
int64
sync_all_peers(void)
{
	return sync_peers_but(NULL, NULL);
}

static int64 sync_locked_warn(const char *peer);

/*
 * As sync_all_peers(), but for the peers for which but(peer, arg), if
 * given, returns true.
 */
int64
sync_peers_but(bool (*but) (const char *peer, void *arg), void *arg)
{
	List	   *names;
	ListCell   *lc;
	int64		total = 0;

	warn_problems();
	names = peer_names();
	foreach(lc, names)
	{
		if (but == NULL || !but(lfirst(lc), arg))
			total += sync_locked_warn(lfirst(lc));
	}
	list_free_deep(names);
	return total;
}

/*
 * Has this database any peer?  For background workers, outside any
 * transaction.
 */
bool
sync_has_peers(void)
{
	List	   *names = peer_names();
	bool		has = names != NIL;

	list_free_deep(names);
	return has;
}

/*
 * One peer, under the database's sync lock, as sync_all_peers() syncs
 * each: a failure is recorded and reported in a WARNING, not raised.
 */
static int64
sync_locked_warn(const char *peer)
{
	MemoryContext cxt = CurrentMemoryContext;
	int64		applied = 0;

	PG_TRY();
	{
		applied = sync_locked(peer);
	}
	PG_CATCH();
	{
		ErrorData  *e = worker_catch_error(cxt);

		ereport(WARNING,
				(errcode(e->sqlerrcode),
				 errmsg("replstamp: sync from peer \"%s\" failed: %s", peer, e->message),
				 e->hint ? errhint("%s", e->hint) : 0));
		FreeErrorData(e);
	}
	PG_END_TRY();
	return applied;
}

/*
 * One peer, as sync_all_peers() syncs each, with the warnings of the
 * database's problems first.  Returns the changes applied.
 */
int64
sync_one_peer_warn(const char *peer)
{
	warn_problems();
	return sync_locked_warn(peer);
}

/* ---------------------------------------------------------------------
 * Peers
 * ---------------------------------------------------------------------
 */

/*
 * replstamp.add_peer(name, conninfo): validate and store a peer.
 */
Datum
replstamp_add_peer(PG_FUNCTION_ARGS)
{
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *conninfo = text_to_cstring(PG_GETARG_TEXT_PP(1));
	char	   *err = NULL;
	PQconninfoOption *opts;
	Oid			types[2] = {TEXTOID, TEXTOID};
	Datum		values[2];
	ReplstampOwnerContext ctx;

	(void) replstamp_catalog(false);
	opts = PQconninfoParse(conninfo, &err);
	if (opts == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid connection string for peer \"%s\"", name),
				 errdetail_internal("%s", err ? pchomp(err) : "out of memory")));
	PQconninfoFree(opts);

	values[0] = CStringGetTextDatum(name);
	values[1] = CStringGetTextDatum(conninfo);
	replstamp_become_owner(&ctx);
	SPI_connect();
	replstamp_spi_exec("INSERT INTO replstamp.peer (name, conninfo) VALUES ($1, $2) "
			           "ON CONFLICT (name) DO NOTHING", 2, types, values, NULL, SPI_OK_INSERT);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("peer \"%s\" already exists", name),
				 errhint("Remove it first with replstamp.drop_peer().")));
	SPI_finish();
	replstamp_restore_user(&ctx);
	/* With replstamp.sync_interval on, the first sync need not wait for it. */
	worker_wake_sync_at_commit();
	PG_RETURN_VOID();
}

/*
 * replstamp.drop_peer(name): this node no longer pulls from the peer, and
 * forgets it as a puller (it no longer holds pruning back).
 */
Datum
replstamp_drop_peer(PG_FUNCTION_ARGS)
{
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	Oid			types[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(name)};
	ReplstampOwnerContext ctx;

	(void) replstamp_catalog_v11("replstamp.drop_peer()");
	replstamp_become_owner(&ctx);
	SPI_connect();
	replstamp_spi_exec("DELETE FROM replstamp.peer p WHERE p.name OPERATOR(pg_catalog.=) $1 "
			           "RETURNING p.replica_id", 1, types, values, NULL, SPI_OK_DELETE_RETURNING);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("peer \"%s\" does not exist", name),
				 errhint("replstamp.peers lists the peers; a node that only pulled from here is forgotten with replstamp.forget_puller().")));
	/* Its replica ID as of the last sync from it: it pulled under that one. */
	{
		bool		isnull;
		Datum		id = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		if (!isnull)
		{
			Oid			ut[1] = {UUIDOID};
			Datum		uv[1] = {id};

			replstamp_spi_exec("DELETE FROM replstamp.puller WHERE replica_id OPERATOR(pg_catalog.=) $1",
					           1, ut, uv, NULL, SPI_OK_DELETE);
		}
	}
	SPI_finish();
	replstamp_restore_user(&ctx);
	PG_RETURN_VOID();
}

/*
 * replstamp.forget_puller(replica_id): a node that pulled from here is gone
 * for good; it no longer holds pruning back.
 */
Datum
replstamp_forget_puller(PG_FUNCTION_ARGS)
{
	pg_uuid_t  *id = PG_GETARG_UUID_P(0);
	Oid			types[1] = {UUIDOID};
	Datum		values[1] = {UUIDPGetDatum(id)};
	ReplstampOwnerContext ctx;
	bool		found;

	(void) replstamp_catalog_v11("replstamp.forget_puller()");
	replstamp_become_owner(&ctx);
	SPI_connect();
	replstamp_spi_exec("DELETE FROM replstamp.puller WHERE replica_id OPERATOR(pg_catalog.=) $1",
			           1, types, values, NULL, SPI_OK_DELETE);
	found = SPI_processed > 0;
	SPI_finish();
	replstamp_restore_user(&ctx);
	PG_RETURN_BOOL(found);
}

/*
 * replstamp.skip(replica_id, serial): hold that change without applying
 * it, so that syncs go on past it.  Nothing is skipped without this call.
 */
Datum
replstamp_skip(PG_FUNCTION_ARGS)
{
	pg_uuid_t  *id = PG_GETARG_UUID_P(0);
	int64		serial = PG_GETARG_INT64(1);
	const ReplstampCatalog *cat = replstamp_catalog_v11("replstamp.skip()");
	Oid			types[3] = {UUIDOID, INT8OID, TEXTOID};
	Datum		values[3];
	ReplstampOwnerContext ctx;
	char	   *stamp;
	static const pg_uuid_t nil_id;

	/* No change ever carries these: recording one would hide a typo. */
	if (serial <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("serial " INT64_FORMAT " cannot be skipped: serials start at 1", serial),
				 errhint("Pass the stamp of the change a sync could not apply, as replstamp.peers shows it in last_error_change.")));
	if (same_id(id, &nil_id))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the all-zero replica ID cannot be skipped: no node stamps with it"),
				 errhint("Pass the stamp of the change a sync could not apply, as replstamp.peers shows it in last_error_change.")));
	if (changelog_held(cat, id, serial))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("change %s/" INT64_FORMAT " is held here already", replstamp_uuid_text(id), serial),
				 errhint("Only a change that a sync could not apply can be skipped.")));
	if (same_id(id, &replstamp_node()->replica_id))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("cannot skip a change of this node's own replica ID")));
	stamp = psprintf("%s/" INT64_FORMAT, replstamp_uuid_text(id), serial);
	values[0] = UUIDPGetDatum(id);
	values[1] = Int64GetDatum(serial);
	values[2] = CStringGetTextDatum(stamp);
	replstamp_become_owner(&ctx);
	SPI_connect();
	/* The error the sync reported for it, if one did. */
	replstamp_spi_exec("INSERT INTO replstamp.skipped (replica_id, serial, error, requested_by) "
			           "SELECT $1, $2, (SELECT p.last_error FROM replstamp.peer p "
			           "  WHERE p.last_error_change OPERATOR(pg_catalog.=) $3 LIMIT 1), session_user "
			           "ON CONFLICT (replica_id, serial) DO NOTHING",
			           3, types, values, NULL, SPI_OK_INSERT);
	SPI_finish();
	replstamp_restore_user(&ctx);
	ereport(NOTICE,
			(errmsg("change %s will be held without being applied", stamp),
			 errhint("The next sync from a peer that has it goes on past it; replstamp.skipped lists it.")));
	PG_RETURN_VOID();
}

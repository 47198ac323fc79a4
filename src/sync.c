/*-------------------------------------------------------------------------
 *
 * sync.c
 *		Pulling from peers.  replstamp.sync(peer) and replstamp.sync_all()
 *		hand the work to a background worker and wait for it; the worker
 *		(or the resident sync worker of launcher.c) connects to the peer,
 *		exchanges handshakes (proto.c, serve.c), reads every change the peer
 *		holds above this node's vector in one stream, one row at a time,
 *		and applies them (apply.c) in pages, one local transaction each.
 *
 * The stream comes in the peer's log order: the changes grouped by the
 * peer's transaction that recorded them (replstamp.changes.xact), the
 * groups ordered by the place of their last change (usn), which a
 * transaction always has after every transaction it saw committed.  A page
 * ends only between two groups, once it holds replstamp.sync_batch_size
 * changes or 16 MB: every remote transaction is applied whole, in an order
 * that never puts one before a transaction its writer had seen, relays
 * included, and an interrupted sync keeps whole transactions only.  The
 * vector moves with the last page, to what the peer held when the sync
 * began: changes do not come in serial order per replica ID, so no page
 * before the last can claim a serial prefix; a change held already (an
 * earlier, interrupted sync applied it, or another peer brought it) is
 * passed over by the apply.  A page that failed is rolled back whole: on
 * a transient error (a concurrent local insert of the same key, a
 * deadlock, a serialisation failure) it is applied again from the changes
 * kept for that, three tries in all; on any other error, a third failure,
 * or in a page too large to keep (one transaction over 16 MB: memory
 * holds one change of it at a time), the sync stops at that change and
 * records it (record_failure()).  Nothing is skipped without skip().
 *
 * Syncs of a database run one at a time: each holds a session advisory
 * lock on the database (rowversion_lock(), shown in pg_locks) while it
 * runs.  Prunes run one at a time too (prune.c), beside a sync: a
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
#include "compat.h"
#include "dbaccess.h"
#include "epochs.h"
#include "errors.h"
#include "identity.h"
#include "proto.h"
#include "remote.h"
#include "rowimage.h"
#include "rowversion.h"
#include "serial.h"
#include "shmem.h"
#include "sync.h"
#include "workers.h"

PG_FUNCTION_INFO_V1(replstamp_skip);

#define PAGE_BYTES			(16 * 1024 * 1024)
#define MAX_RELATION_LEN	(NAMEDATALEN * 4 + 8)
#define PAGE_RETRIES		3

/* GUCs */
static int	sync_batch_size = 1000;
static int	sync_delay = 0;		/* milliseconds */
static int	max_clock_skew = 300;

/* One replica ID's range to pull. */
typedef struct Range
{
	VectorItem *item;			/* the peer's entry */
	int64		lo;				/* we hold it up to here */
	int64		vector_to;		/* after the sync, hold it up to here */
	TimestampTz max_t;			/* the latest stamp time pulled */
} Range;

/*
 * The changes applied since the last commit, kept to apply them again
 * after a transient error, unless they outgrew PAGE_BYTES (one large
 * remote transaction): then only the current change is kept, and an error
 * ends the sync (the next one pulls the transaction again).
 */
typedef struct PageBuf
{
	MemoryContext cxt;			/* the kept changes */
	MemoryContext row_cxt;		/* the current change, once not kept */
	Change	   *changes;
	int			n;
	int			max;
	int64		bytes;
	bool		overflowed;		/* changes since the last commit not kept */
	bool		open;			/* a local transaction is open */
	int64		count;			/* changes since the last commit */
	int64		applied;		/* of them, applied */
	int64		groups;			/* whole remote transactions since the last
								 * commit */
	int			group_at;		/* kept changes before the current transaction */
} PageBuf;

typedef struct SyncRun
{
	const char *peer;
	MemoryContext cxt;
	Remote		remote;
	Handshake	me;
	Handshake	srv;
	Range	   *ranges;
	int			nranges;
	ApplySession *apply;
	int64		applied;
	int64		skew;			/* microseconds the peer's stamps were ahead
								 * of us */
	StringInfoData notes;		/* replica IDs not pulled, and why */
	char	   *dropped;		/* columns dropped here (jsonb), or NULL */
	char	   *lacking;		/* of them, those the peer lacked too, or NULL */
} SyncRun;

static int	sync_range_cmp(const void *a, const void *b);

/*
 * GUCs.  Called from _PG_init.
 */
void
sync_init(void)
{
	DefineCustomIntVariable("replstamp.sync_batch_size",
							"Changes a sync applies per local transaction, at least.",
							"A sync commits at the first end of a remote transaction after this many "
							"changes (or 16 MB): remote transactions are never split, so a larger one "
							"is a page of its own. An interrupted sync keeps what it committed.",
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
#ifdef REPLSTAMP_TESTING
	DefineCustomIntVariable("replstamp.debug_handshake_pause",
							"Testing aid: pause each handshake this long between reading the epochs and the vector.",
							"So that a test can commit a sync in between. Zero (the default) means no pause.",
							&proto_debug_handshake_pause,
							0, 0, 3600 * 1000,
							PGC_SUSET,
							GUC_UNIT_MS | GUC_NOT_IN_SAMPLE,
							NULL, NULL, NULL);
#endif
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

	dbaccess_spi_exec("SELECT conninfo FROM replstamp.peer WHERE name OPERATOR(pg_catalog.=) $1",
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
	 * A data set restored or copied and not checked yet (a database just made
	 * with CREATE DATABASE ... TEMPLATE pulls before it stamps) must rotate
	 * before it tells a peer which replica ID it is.
	 */
	identity_ensure_verified();
	dbaccess_become_owner(&ctx);
	SPI_connect();
	old = MemoryContextSwitchTo(r->cxt);
	proto_local(&r->me, false);
	MemoryContextSwitchTo(old);
	SPI_finish();
	dbaccess_restore_user(&ctx);
	worker_commit_xact();
}

/* Exchange handshakes with the peer (no transaction open). */
static void
handshake(SyncRun *r)
{
	MemoryContext old = MemoryContextSwitchTo(r->cxt);
	const char *params[1];
	PGresult   *res;
	char	   *from = psprintf(_("peer \"%s\""), r->peer);
	Jsonb	   *json;

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
		/* replstamp 1.0 has no serve(). */
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("peer \"%s\" runs replstamp 1.0, this node %s", r->peer, REPLSTAMP_VERSION),
				 errdetail("replstamp 1.0 does not record which transaction made each change, and this node applies remote transactions whole."),
				 errhint("Update replstamp on the peer (install the same version, restart, ALTER EXTENSION replstamp UPDATE). Nothing is lost meanwhile: its changes wait in its log.")));
	}
	PG_END_TRY();

	{
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
					 errmsg("peer \"%s\" runs replstamp %s (sync protocol %d), this node %s (protocol %d)",
							r->peer, r->srv.version && r->srv.version[0] ? r->srv.version : "?",
							r->srv.protocol, REPLSTAMP_VERSION, REPLSTAMP_PROTOCOL),
					 errdetail("replstamp 1.2 applies remote transactions whole and in order, which needs what a node of the same version sends."),
					 errhint("Update replstamp on the peer (install the same version, restart, ALTER EXTENSION replstamp UPDATE). Nothing is lost meanwhile: its changes wait in its log.")));
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

	dbaccess_spi_exec("SELECT 1 FROM replstamp.replica_history h WHERE h.replica_id OPERATOR(pg_catalog.=) $1 "
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

	dbaccess_spi_exec("SELECT pg_catalog.max(issued) FROM replstamp.peer WHERE replica_id OPERATOR(pg_catalog.=) $1 "
					  "AND name OPERATOR(pg_catalog.<>) $2 AND issued IS NOT NULL",
					  2, types, values, NULL, SPI_OK_SELECT);
	if (SPI_processed == 0)
		return false;
	*issued = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	return !isnull;
}

/* The highest serial of id whose tombstone we dropped, or 0. */
static int64
purged_upto(const pg_uuid_t *id)
{
	Oid			types[1] = {UUIDOID};
	Datum		values[1] = {UUIDPGetDatum(id)};
	bool		isnull;

	dbaccess_spi_exec("SELECT serial FROM replstamp.purged WHERE replica_id OPERATOR(pg_catalog.=) $1",
					  1, types, values, NULL, SPI_OK_SELECT);
	if (SPI_processed == 0)
		return 0;
	return DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

/*
 * The peer dropped tombstones of some IDs up to a serial (or learnt that
 * another node did): where this node now holds that ID at least that far,
 * it refuses from now on, as the peer does, a node holding less.  A node
 * that joined after the tombstones were dropped never held them: without
 * the peer's word it would let such a node pass for current.
 *
 * The peer's word is taken only as far as this node can check it (issue
 * 20): a tombstone is dropped once it is older than
 * replstamp.tombstone_lifetime, so a mark is plausible whole when the
 * first change of that ID held here at or after it is older than that (a
 * node's serials follow its clock), and else up to the newest change of
 * that ID held here that is older than that (in the log, found walking
 * back from the mark, or an old tombstone below it).  A node that joined
 * after the tombstones were dropped holds neither them nor the changes
 * they replaced, but it holds the changes made after them.  A mark beyond that (a hostile
 * peer echoing this node's own vector would make it refuse every node one
 * change behind) is cut back to it, and the peer is named in a warning.
 */
static void
adopt_purged(SyncRun *r)
{
	for (int i = 0; i < r->srv.npurged; i++)
	{
		Oid			types[2] = {UUIDOID, INT8OID};
		Datum		values[2] = {UUIDPGetDatum(&r->srv.purged[i].id),
		Int64GetDatum(r->srv.purged[i].serial)};
		bool		isnull;
		int64		claimed = r->srv.purged[i].serial;
		int64		held;
		int64		plausible;
		int64		recorded;

		dbaccess_spi_exec(psprintf("WITH old AS (SELECT pg_catalog.now() OPERATOR(pg_catalog.-) "
						  "  pg_catalog.current_setting('replstamp.tombstone_lifetime')::pg_catalog.interval AS before) "
						  "SELECT COALESCE((SELECT pg_catalog.max(v.serial) FROM replstamp.vector v "
						  "                 WHERE v.replica_id OPERATOR(pg_catalog.=) $1), 0), "
						  "  COALESCE(GREATEST("
						  "    (SELECT $2 FROM old, (SELECT c.changed_at FROM replstamp.changes c "
						  "      WHERE c.replica_id OPERATOR(pg_catalog.=) $1 AND c.serial OPERATOR(pg_catalog.>=) $2 "
						  "      ORDER BY c.serial LIMIT 1) n WHERE n.changed_at OPERATOR(pg_catalog.<) old.before), "
						  "    (SELECT c.serial FROM replstamp.changes c, old "
						  "      WHERE c.replica_id OPERATOR(pg_catalog.=) $1 AND c.serial OPERATOR(pg_catalog.<=) $2 "
						  "      AND c.changed_at OPERATOR(pg_catalog.<) old.before "
						  "      ORDER BY c.serial DESC LIMIT 1), "
						  "    (SELECT pg_catalog.max(t.serial) FROM replstamp.row_version t, old "
						  "      WHERE %s OPERATOR(pg_catalog.<) old.before "
						  "      AND t.replica_id OPERATOR(pg_catalog.=) $1 AND t.serial OPERATOR(pg_catalog.<=) $2)), 0) "
						  ", COALESCE((SELECT p.serial FROM replstamp.purged p "
						  "            WHERE p.replica_id OPERATOR(pg_catalog.=) $1), 0) "
						  "FROM old", TOMBSTONE_TIME(catalog_get(false), "t")),
						  2, types, values, NULL, SPI_OK_SELECT);
		held = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		plausible = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
		recorded = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull));

		/* Of an ID held here less far, the peer's word is no use here. */
		if (held < claimed || claimed <= recorded)
			continue;
		if (plausible < claimed && plausible > 0)
			ereport(WARNING,
					(errmsg("replstamp: peer \"%s\" says tombstones of replica ID %s were dropped up to serial " INT64_FORMAT
							", but this node holds changes of that ID older than replstamp.tombstone_lifetime only up to serial " INT64_FORMAT,
							r->peer, catalog_uuid_text(&r->srv.purged[i].id), claimed, plausible),
					 errhint("This node takes the claim only that far. Set replstamp.tombstone_lifetime to the same value on every node; "
							 "if it is, check that peer's replstamp.purged: its claim would make this node refuse current nodes.")));
		else if (plausible < claimed)
			ereport(WARNING,
					(errmsg("replstamp: peer \"%s\" says tombstones of replica ID %s were dropped up to serial " INT64_FORMAT
							", but this node holds no change of that ID older than replstamp.tombstone_lifetime",
							r->peer, catalog_uuid_text(&r->srv.purged[i].id), claimed),
					 errhint("This node ignores the claim. Set replstamp.tombstone_lifetime to the same value on every node; "
							 "if it is, check that peer's replstamp.purged: its claim would make this node refuse current nodes.")));
		if (plausible == 0)
			continue;
		values[1] = Int64GetDatum(plausible);
		dbaccess_spi_exec("INSERT INTO replstamp.purged (replica_id, serial) VALUES ($1, $2) "
						  "ON CONFLICT (replica_id) DO UPDATE SET serial = "
						  "GREATEST(replstamp.purged.serial, EXCLUDED.serial)",
						  2, types, values, NULL, SPI_OK_INSERT);
	}
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

		dbaccess_spi_exec("DELETE FROM replstamp.peer_lag WHERE peer OPERATOR(pg_catalog.=) $1",
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
		dbaccess_spi_exec("INSERT INTO replstamp.peer_lag (peer, replica_id, peer_serial, pending, oldest_pending, observed_at) "
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
	char	   *from = psprintf(_("peer \"%s\""), r->peer);
	MemoryContext old;

	proto_refuse_flood(&r->me, &r->srv, true, from);
	worker_begin_xact();
	dbaccess_become_owner(&ctx);
	SPI_connect();

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
						(errmsg("replstamp: peer \"%s\" holds changes of this node's replica ID %s that this data set does not have",
								r->peer, catalog_uuid_text(&r->me.replica_id)),
						 errdetail_internal("%s", why),
						 errhint("This node rotates its replica ID now and re-issues what it stamped since serial " INT64_FORMAT "; nothing to do.",
								 diverge_at)));
				(void) identity_rotate_diverged(&r->me.replica_id, diverge_at,
												psprintf("peer history: parts at serial " INT64_FORMAT, diverge_at));
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
		bool		peers_own = same_id(&v->id, &r->srv.replica_id);

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
							   catalog_uuid_text(&v->id), v->serial),
					 errhint("Rebuild that node from a fresh backup of a current node, then add it again.")));

		/* Never pull this node's own current ID, nor IDs all made here. */
		if (same_id(&v->id, &r->me.replica_id) || (ours && own_local_id(&v->id)))
			continue;
		if (peers_own && lo > r->srv.issued && identity_check_histories())
		{
			/* We hold more of its current ID than it ever handed out. */
			appendStringInfo(&r->notes, "%sits replica ID %s: it says it handed out serials up to " INT64_FORMAT
							 " and this node holds them up to " INT64_FORMAT " (its data went back in time)",
							 r->notes.len ? "; " : "", catalog_uuid_text(&v->id), r->srv.issued, lo);
			ereport(WARNING,
					(errmsg("replstamp: peer \"%s\" has handed out serials of its replica ID %s only up to " INT64_FORMAT
							", but this node holds them up to " INT64_FORMAT,
							r->peer, catalog_uuid_text(&v->id), r->srv.issued, lo),
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
		 * out only as far as the changes actually sent.  A peer claiming that
		 * ID up to 2^63-1 without the changes cannot make this node skip that
		 * node's next changes.
		 */
		vector_to = hi;
		if (!peers_own && issued_by_other_peer(r, &v->id, &cap) && hi > cap)
			vector_to = Max(cap, lo);

		if (identity_check_histories())
		{
			int64		diverge_at;

			if (!proto_histories_agree(ours, lo, v, peers_own ? PG_INT64_MAX : v->serial,
									   &diverge_at))
			{
				appendStringInfo(&r->notes, "%sreplica ID %s: its history parts from ours at serial " INT64_FORMAT,
								 r->notes.len ? "; " : "", catalog_uuid_text(&v->id), diverge_at);
				ereport(WARNING,
						(errmsg("replstamp: not pulling replica ID %s from peer \"%s\": the peer's history of it parts from this node's at serial " INT64_FORMAT,
								catalog_uuid_text(&v->id), r->peer, diverge_at),
						 errdetail("Two different data sets handed out the same serials under that ID (a node went back in time, or was cloned)."),
						 errhint("Nothing to do: the node that diverged rotates its replica ID when it next syncs, and the changes follow.")));
				continue;
			}
		}
		if (hi <= lo)
			continue;
		r->ranges[r->nranges].item = v;
		r->ranges[r->nranges].lo = lo;
		r->ranges[r->nranges].vector_to = vector_to;
		r->nranges++;
	}
	qsort(r->ranges, r->nranges, sizeof(Range), sync_range_cmp);
	record_lag(r);

	SPI_finish();
	dbaccess_restore_user(&ctx);
	worker_commit_xact();
}

/* ---------------------------------------------------------------------
 * Reading changes
 * ---------------------------------------------------------------------
 */

pg_attribute_noreturn()
static void
malformed(SyncRun *r, PGresult *res, const char *detail)
{
	PQclear(res);
	ereport(ERROR,
			(errcode(ERRCODE_DATA_EXCEPTION),
			 errmsg("peer \"%s\" sent a malformed change", r->peer),
			 errdetail_internal("%s", detail)));
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
		malformed(r, res, psprintf(_("Column \"%s\" is not jsonb."), what));
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(p + 1)));
}

/*
 * The range of a replica ID, or NULL.  plan() sorts the ranges by ID.
 */
static int
sync_range_cmp(const void *a, const void *b)
{
	return memcmp(((const Range *) a)->item->id.data, ((const Range *) b)->item->id.data, UUID_LEN);
}

static Range *
find_range(SyncRun *r, const pg_uuid_t *id)
{
	int			lo = 0;
	int			hi = r->nranges - 1;

	while (lo <= hi)
	{
		int			mid = lo + (hi - lo) / 2;
		int			c = memcmp(id->data, r->ranges[mid].item->id.data, UUID_LEN);

		if (c == 0)
			return &r->ranges[mid];
		if (c < 0)
			hi = mid - 1;
		else
			lo = mid + 1;
	}
	return NULL;
}

/*
 * One streamed row (binary: replica_id, serial, relation, op, pk,
 * row_image, changed_at, group) into *c, checked; returns the range of its
 * replica ID.  *group is the peer's place of the last change of the
 * transaction it belongs to, the same for every change of that
 * transaction; *single is set for a change recorded before replstamp 1.2,
 * which is a transaction of its own.  The row is cleared.
 */
static Range *
parse_row(SyncRun *r, PGresult *res, Change *c, int64 *group, bool *single)
{
	const char *relation;
	int			rellen;
	TimestampTz limit;
	Range	   *rg;

	if (PQnfields(res) != 8 || PQntuples(res) != 1)
		malformed(r, res, _("A row does not have the eight columns asked for."));
	for (int k = 0; k < 7; k++)
		if (k != 5 && PQgetisnull(res, 0, k))
			malformed(r, res, _("A column other than row_image and the transaction is null."));
	if (PQgetlength(res, 0, 0) != UUID_LEN || PQgetlength(res, 0, 1) != 8 ||
		PQgetlength(res, 0, 6) != 8 ||
		(!PQgetisnull(res, 0, 7) && PQgetlength(res, 0, 7) != 8))
		malformed(r, res, _("A stamp, a time or a transaction has the wrong size."));

	memcpy(&c->replica_id, PQgetvalue(res, 0, 0), UUID_LEN);
	c->serial = be_int64(PQgetvalue(res, 0, 1));
	rg = find_range(r, &c->replica_id);
	if (rg == NULL)
		malformed(r, res, _("A change of a replica ID not asked for came."));
	if (c->serial <= rg->lo)
	{
		PQclear(res);
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("peer \"%s\" sent serial " INT64_FORMAT " of replica ID %s, which this node holds already",
						r->peer, c->serial, catalog_uuid_text(&rg->item->id)),
				 errdetail("It was asked for serials above " INT64_FORMAT ".", rg->lo)));
	}
	*single = PQgetisnull(res, 0, 7);
	*group = *single ? 0 : be_int64(PQgetvalue(res, 0, 7));

	relation = PQgetvalue(res, 0, 2);
	rellen = PQgetlength(res, 0, 2);
	if (rellen == 0 || rellen >= MAX_RELATION_LEN)
		malformed(r, res, _("A table name is empty or too long."));
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
	c->pk = parse_jsonb(r, res, 4, "pk");
	c->image = c->op == 'D' ? NULL : parse_jsonb(r, res, 5, "row_image");
	/* A TRUNCATE's key is one no row has (rowversion.c). */
	if (c->op == 'T' &&
		(!rowversion_is_truncate_key(c->pk) ||
		 !JB_ROOT_IS_OBJECT(c->image) || JB_ROOT_IS_SCALAR(c->image)))
		malformed(r, res, _("A TRUNCATE has a key a row could have, or an image that is not an object."));
	if (c->op != 'T' && rowversion_is_truncate_key(c->pk))
		malformed(r, res, _("A row change has the key of a TRUNCATE."));
	/* A schema change's key is {}, which no row has (ddl.c). */
	if ((c->op == 'S') != (JB_ROOT_IS_OBJECT(c->pk) && !JB_ROOT_IS_SCALAR(c->pk) &&
						   JB_ROOT_COUNT(c->pk) == 0))
		malformed(r, res, _("A schema change has a key other than {}, or a row change has that key."));
	if (c->op == 'S' && (!JB_ROOT_IS_OBJECT(c->image) || JB_ROOT_IS_SCALAR(c->image)))
		malformed(r, res, _("A schema change has an image that is not an object."));
	c->changed_at = be_int64(PQgetvalue(res, 0, 6));
	c->applied = true;
	if (TIMESTAMP_NOT_FINITE(c->changed_at))
		malformed(r, res, _("A stamp time is not finite."));
	limit = serial_clock_now() + (TimestampTz) max_clock_skew * USECS_PER_SEC;
	if (c->changed_at > limit)
	{
		PQclear(res);
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("peer \"%s\" sent a change stamped %s, more than replstamp.max_clock_skew ahead of this node's clock",
						r->peer, timestamptz_to_str(c->changed_at)),
				 errdetail("Change %s/" INT64_FORMAT ".", catalog_uuid_text(&c->replica_id), c->serial),
				 errhint("Fix the clocks (NTP). The sync goes on from this change once it is no longer that far ahead, or raise replstamp.max_clock_skew.")));
	}
	if (c->changed_at - serial_clock_now() > r->skew)
		r->skew = c->changed_at - serial_clock_now();
	PQclear(res);
	return rg;
}

/*
 * Advance the vector entry of the range's replica ID to upto, in the
 * current transaction, and record with it the epochs of that ID's history
 * the peer showed up to there (epochs.c).  The two go together: a vector
 * entry past the first serial of an epoch this node never recorded is a
 * history that parts from its origin's, and the origin, seeing it in the
 * next handshake, would take itself for a node gone back in time and
 * rotate.
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
	dbaccess_become_owner(&ctx);
	SPI_connect();
	/* IDs whose every change was made here follow our own LUS: no entry. */
	dbaccess_spi_exec("INSERT INTO replstamp.vector_state (replica_id, serial, max_changed_at) "
					  "SELECT $1, $2, $3 WHERE NOT EXISTS (SELECT 1 FROM replstamp.replica_history h "
					  "  WHERE h.replica_id OPERATOR(pg_catalog.=) $1 AND NOT EXISTS "
					  "  (SELECT 1 FROM replstamp.vector_state v WHERE v.replica_id OPERATOR(pg_catalog.=) $1)) "
					  "ON CONFLICT (replica_id) DO UPDATE SET "
					  "serial = GREATEST(replstamp.vector_state.serial, EXCLUDED.serial), "
					  "max_changed_at = GREATEST(replstamp.vector_state.max_changed_at, EXCLUDED.max_changed_at)",
					  3, types, values, nulls, SPI_OK_INSERT);
	epochs_adopt(rg->item, upto);
	SPI_finish();
	dbaccess_restore_user(&ctx);
}

static bool
transient(ErrorData *e)
{
	return e->sqlerrcode == ERRCODE_UNIQUE_VIOLATION ||
		e->sqlerrcode == ERRCODE_T_R_SERIALIZATION_FAILURE ||
		e->sqlerrcode == ERRCODE_T_R_DEADLOCK_DETECTED ||
		(e->message && strcmp(e->message, "tuple concurrently updated") == 0);
}

/* ---------------------------------------------------------------------
 * Pages: whole remote transactions, one local transaction
 * ---------------------------------------------------------------------
 */

static void
page_open(SyncRun *r, PageBuf *p)
{
	worker_begin_xact();
	apply_page_begin(r->apply);
	p->open = true;
}

static void
page_forget(PageBuf *p)
{
	MemoryContextReset(p->cxt);
	p->changes = NULL;
	p->n = 0;
	p->max = 0;
	p->bytes = 0;
	p->overflowed = false;
	p->count = 0;
	p->applied = 0;
	p->groups = 0;
	p->group_at = 0;
}

/*
 * Commit the page: every remote transaction in it is whole.  The last one
 * of a sync carries the vector: every ID's entry moves to what the peer
 * held when the sync began (or less: see plan()), and only then, since the
 * peer sends its changes in its own log's order, not in serial order per
 * ID, and a vector entry claims every serial up to it.
 */
static void
page_commit(SyncRun *r, PageBuf *p, bool last)
{
	if (!p->open)
		page_open(r, p);
	apply_page_end(r->apply);
	if (last)
		for (int i = 0; i < r->nranges; i++)
			advance_vector(r, &r->ranges[i], r->ranges[i].vector_to, r->ranges[i].max_t);
	worker_commit_xact();
	p->open = false;
	r->applied += p->applied;
	page_forget(p);
}

/* Keep an applied change, to apply the page again after a transient error. */
static void
page_keep(PageBuf *p, const Change *c, int64 bytes)
{
	MemoryContext old;
	Change	   *k;

	if (p->overflowed)
		return;
	if (p->bytes + bytes > PAGE_BYTES)
	{
		/* One large remote transaction: memory stays flat, no retry. */
		MemoryContextReset(p->cxt);
		p->changes = NULL;
		p->n = 0;
		p->max = 0;
		p->group_at = 0;
		p->overflowed = true;
		return;
	}
	old = MemoryContextSwitchTo(p->cxt);
	if (p->n >= p->max)
	{
		p->max = Max(64, p->max * 2);
		p->changes = p->changes ? repalloc(p->changes, sizeof(Change) * p->max) :
			palloc(sizeof(Change) * p->max);
	}
	k = &p->changes[p->n++];
	*k = *c;
	k->relation = (text *) PG_DETOAST_DATUM_COPY(PointerGetDatum(c->relation));
	k->pk = DatumGetJsonbPCopy(JsonbPGetDatum(c->pk));
	k->image = c->image ? DatumGetJsonbPCopy(JsonbPGetDatum(c->image)) : NULL;
	MemoryContextSwitchTo(old);
	p->bytes += bytes;
}

/*
 * Apply one change in the page's transaction.  At the start of a remote
 * transaction, a change whose row another transaction holds (a local
 * writer's) makes the page commit the whole transactions before it
 * first, so that the sync holds no row lock while it waits; inside one it
 * waits holding them, as any transaction does (a deadlock is retried).
 */
static void
page_apply(SyncRun *r, PageBuf *p, Range *rg, Change *c, bool group_start)
{
	ApplyOutcome o;

	if (!p->open)
		page_open(r, p);
	o = apply_change(r->apply, c, group_start && p->groups > 0);
	if (o == APPLY_BUSY)
	{
		page_commit(r, p, false);
		page_open(r, p);
		o = apply_change(r->apply, c, false);
	}
	p->count++;
	if (o == APPLY_NEW)
		p->applied++;
	if (c->changed_at > rg->max_t)
		rg->max_t = c->changed_at;
}

/*
 * After a transient error: the first n kept changes again, in a new
 * transaction.
 */
static void
page_replay(SyncRun *r, PageBuf *p, int n)
{
	page_open(r, p);
	p->count = 0;
	p->applied = 0;
	for (int i = 0; i < n; i++)
	{
		CHECK_FOR_INTERRUPTS();
		if (apply_change(r->apply, &p->changes[i], false) == APPLY_NEW)
			p->applied++;
		p->count++;
	}
}

/*
 * The sync stops at an error: the whole transactions of the page before
 * the one that failed are committed first (without the vector), so that
 * what came before the failing transaction stays, as if each were a page
 * of its own.  If that fails too, nothing more is done: the page is rolled
 * back whole, and the next sync applies it again.
 */
static void
page_salvage(SyncRun *r, PageBuf *p)
{
	int			n = p->group_at;

	AbortCurrentTransaction();
	apply_page_abort(r->apply);
	p->open = false;
	if (p->overflowed || n <= 0)
		return;
	PG_TRY();
	{
		page_replay(r, p, n);
		page_commit(r, p, false);
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(r->cxt);
		FlushErrorState();
		AbortCurrentTransaction();
		apply_page_abort(r->apply);
		p->open = false;
	}
	PG_END_TRY();
}

/*
 * Apply a change (c), or commit the page (c NULL), trying again on a
 * transient error (a concurrent local insert of the same key, a deadlock,
 * a serialisation failure): the page's transaction is rolled back whole
 * and its changes applied again, three tries in all.  Any other error, a
 * third failure, or one in a page too large to keep ends the sync at
 * that change (record_failure()), after committing the whole transactions
 * of the page before the one that failed (page_salvage()).
 *
 * No jump leaves the PG_TRY or the PG_CATCH (a "continue" in the PG_CATCH
 * would only leave PG_TRY's do-while and skip the restoring of the
 * exception stack): the outcome is decided after PG_END_TRY.
 */
static void
page_step(SyncRun *r, PageBuf *p, Range *rg, Change *c, bool group_start, bool last)
{
	for (int attempt = 1;; attempt++)
	{
		ErrorData  *volatile failed = NULL;
		bool		retry = false;

		PG_TRY();
		{
			if (attempt > 1)
				page_replay(r, p, p->n);
			if (c)
				page_apply(r, p, rg, c, group_start);
			else
				page_commit(r, p, last);
		}
		PG_CATCH();
		{
			ErrorData  *e;

			/* Not the page's transaction's memory: it is rolled back. */
			MemoryContextSwitchTo(r->cxt);
			e = CopyErrorData();
			FlushErrorState();
			if (attempt >= PAGE_RETRIES || !transient(e) || p->overflowed)
				failed = e;
			else
			{
				AbortCurrentTransaction();
				apply_page_abort(r->apply);
				p->open = false;
				ereport(LOG,
						(errcode(e->sqlerrcode),
						 errmsg("replstamp: retrying a page from peer \"%s\" (attempt %d of %d) after: %s",
								r->peer, attempt + 1, PAGE_RETRIES, e->message)));
				FreeErrorData(e);
				retry = true;
			}
		}
		PG_END_TRY();
		if (failed)
		{
			page_salvage(r, p);
			ReThrowError(failed);
		}
		if (!retry)
			break;
	}
}

/* Pause for replstamp.sync_delay after a page, if set. */
static void
page_pause(void)
{
	if (sync_delay <= 0)
		return;
	(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					 sync_delay, PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
	CHECK_FOR_INTERRUPTS();
}

/*
 * Pull every change of the ranges in one stream, in the peer's log order:
 * the transactions the peer recorded (made there or applied there), each
 * whole, ordered by the place of their last change (replstamp.changes.usn),
 * which a transaction always has after every transaction it saw committed.
 * A change this node holds already (it came through another peer) is
 * passed over by the apply.  Pages end between two transactions, after
 * replstamp.sync_batch_size changes or 16 MB; the last one moves the
 * vector.  Memory holds one page, and one change of a larger transaction.
 */
static void
pull(SyncRun *r)
{
	StringInfoData ranges;
	StringInfoData sql;
	PageBuf		page;
	int64		group_prev = 0;
	bool		have_prev = false;
	bool		single_prev = false;

	memset(&page, 0, sizeof(page));
	page.cxt = AllocSetContextCreate(r->cxt, "replstamp sync page", ALLOCSET_DEFAULT_SIZES);
	page.row_cxt = AllocSetContextCreate(r->cxt, "replstamp sync change", ALLOCSET_DEFAULT_SIZES);

	/*
	 * The ranges go into the query as constants, not as arrays to unnest: the
	 * peer's planner then sees how few of its log's rows lie above each
	 * range's start (a btree finds the actual highest serial) and reads them
	 * through the log's primary key.  Given parameters, it guessed a third of
	 * the log and read all of it for every sync, so that each sync cost more
	 * as the log grew (84 ms for one change over a log of 100,000). IDs and
	 * serials are this node's own values, printed as such.
	 */
	initStringInfo(&ranges);
	for (int i = 0; i < r->nranges; i++)
		appendStringInfo(&ranges, "%s(c.replica_id OPERATOR(pg_catalog.=) '%s'::pg_catalog.uuid "
						 "AND c.serial OPERATOR(pg_catalog.>) " INT64_FORMAT "::pg_catalog.int8)",
						 i ? " OR " : "", catalog_uuid_text(&r->ranges[i].item->id), r->ranges[i].lo);
	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "SELECT c.replica_id, c.serial, c.relation, c.op, c.pk, c.row_image, c.changed_at, "
					 "  CASE WHEN c.xact IS NULL THEN NULL "
					 "  ELSE pg_catalog.max(c.usn) OVER (PARTITION BY c.xact) END AS grp "
					 "FROM replstamp.changes c "
					 "WHERE (%s) "
					 "AND NOT EXISTS (SELECT 1 FROM replstamp.tracked_table t "
					 "  WHERE t.relation OPERATOR(pg_catalog.=) c.relation AND t.state OPERATOR(pg_catalog.<>) 'tracked') "
					 "ORDER BY grp NULLS FIRST, c.xact NULLS FIRST, c.usn NULLS FIRST, c.replica_id, c.serial",
					 ranges.data);

	/*
	 * Changes of tables the peer dropped or untracked are left out: a node
	 * that never had such a table must not be stopped by them.
	 */
	if (r->nranges > 0)
		remote_stream(&r->remote, sql.data, 0, NULL);
	for (;;)
	{
		PGresult   *res;
		Change		c;
		Range	   *rg;
		int64		group;
		bool		single;
		bool		group_start;
		int64		bytes = 0;
		MemoryContext old;

		if (r->nranges == 0)
			break;
		CHECK_FOR_INTERRUPTS();
		res = remote_next_row(&r->remote);
		if (res == NULL)
			break;
		for (int k = 0; k < PQnfields(res); k++)
			bytes += PQgetlength(res, 0, k);
		MemoryContextReset(page.row_cxt);
		old = MemoryContextSwitchTo(page.row_cxt);
		rg = parse_row(r, res, &c, &group, &single);
		MemoryContextSwitchTo(old);

		group_start = !have_prev || single || single_prev || group != group_prev;
		if (group_start && have_prev)
		{
			/* The transaction before this change is whole. */
			page.groups++;
			if (page.open && (page.count >= sync_batch_size || page.bytes >= PAGE_BYTES ||
							  page.overflowed))
			{
				page_step(r, &page, NULL, NULL, false, false);
				page_pause();
			}
		}
		if (group_start)
			page.group_at = page.n;
		page_step(r, &page, rg, &c, group_start, false);
		page_keep(&page, &c, bytes);
		have_prev = true;
		single_prev = single;
		group_prev = group;
	}
	/* The last transaction is whole: commit it with the vector. */
	page_step(r, &page, NULL, NULL, false, true);
	MemoryContextDelete(page.row_cxt);
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
	dbaccess_become_owner(&ctx);
	SPI_connect();
	values[0] = CStringGetTextDatum(r->peer);
	values[1] = Int64GetDatum(r->applied);
	values[2] = UUIDPGetDatum(&r->srv.replica_id);
	values[3] = Int64GetDatum(r->srv.issued);
	values[4] = CStringGetTextDatum(r->notes.len ? "diverged" : "ok");
	if (r->notes.len)
		values[5] = CStringGetTextDatum(psprintf("not pulled: %s", r->notes.data));
	else
		nulls[5] = 'n';
	values[6] = Int64GetDatum(r->skew);
	values[7] = Int64GetDatum(apply_conflicts(r->apply));
	values[8] = Int32GetDatum(REPLSTAMP_PROTOCOL);
	dbaccess_spi_exec("UPDATE replstamp.peer SET last_sync_at = pg_catalog.now(), "
					  "changes_pulled = changes_pulled OPERATOR(pg_catalog.+) $2, "
					  "replica_id = $3, issued = $4, status = $5, last_error = $6, "
					  "last_error_at = CASE WHEN $6 IS NULL THEN NULL ELSE pg_catalog.now() END, "
					  "last_error_sqlstate = NULL, last_error_change = NULL, "
					  "clock_skew = pg_catalog.make_interval(secs => $7::float8 / 1000000), "
					  "conflicts = conflicts OPERATOR(pg_catalog.+) $8, protocol = $9 "
					  "WHERE name OPERATOR(pg_catalog.=) $1",
					  9, types, values, nulls, SPI_OK_UPDATE);
	values[1] = Int64GetDatum(apply_skipped(r->apply));
	dbaccess_spi_exec("UPDATE replstamp.peer SET changes_skipped = changes_skipped OPERATOR(pg_catalog.+) $2 "
					  "WHERE name OPERATOR(pg_catalog.=) $1", 2, types, values, NULL, SPI_OK_UPDATE);

	/* IDs the peer retired: they may leave the vector once pruned. */
	for (int i = 0; i < r->srv.nretired; i++)
	{
		Oid			rt[1] = {UUIDOID};
		Datum		rv[1] = {UUIDPGetDatum(&r->srv.retired[i])};

		dbaccess_spi_exec("UPDATE replstamp.vector_state SET retired = true "
						  "WHERE replica_id OPERATOR(pg_catalog.=) $1 AND NOT retired", 1, rt, rv, NULL, SPI_OK_UPDATE);
	}
	adopt_purged(r);

	/*
	 * Only a sync that pulled everything the peer offered says it lacks a
	 * column.
	 */
	apply_note_dropped_elsewhere(r->peer, r->notes.len ? NULL : r->lacking,
								 &r->srv.replica_id, r->srv.issued);

	SPI_finish();
	dbaccess_restore_user(&ctx);
	identity_mark_lus();
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
	dbaccess_become_owner(&ctx);
	SPI_connect();
	values[0] = CStringGetTextDatum(peer);
	values[1] = CStringGetTextDatum(msg);
	values[2] = CStringGetTextDatum(unpack_sql_state(e->sqlerrcode));
	dbaccess_spi_exec("UPDATE replstamp.peer SET last_error = $2, last_error_at = pg_catalog.now(), "
					  "last_error_sqlstate = $3, last_error_change = $4, "
					  "status = CASE WHEN $3 OPERATOR(pg_catalog.=) '72000' THEN 'stale' ELSE 'failing' END "
					  "WHERE name OPERATOR(pg_catalog.=) $1", 4, types, values, nulls, SPI_OK_UPDATE);
	SPI_finish();
	dbaccess_restore_user(&ctx);
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
		(void) catalog_get_v12("replstamp.sync()");
		dbaccess_become_owner(&ctx);
		SPI_connect();
		conninfo = read_conninfo(peer);
		conninfo = MemoryContextStrdup(cxt, conninfo);
		SPI_finish();
		dbaccess_restore_user(&ctx);
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

		/*
		 * Pages come in causal order, whole: foreign keys are resolved at the
		 * end of each.  Not when an ID was left out (its history parts from
		 * ours): a parent of it may merely be missing here, and deleting its
		 * children would replicate everywhere.
		 */
		apply_set_causal(r->apply, r->notes.len == 0);
		pull(r);
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
	dbaccess_become_owner(&ctx);
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
	dbaccess_restore_user(&ctx);
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
 * must not look as if it replicated.  Not the rows about sequences: their
 * tables replicate, and what they say is not "not replicated".  Outside
 * any transaction.
 */
static void
warn_problems(void)
{
	const ReplstampCatalog *cat;
	ReplstampOwnerContext ctx;

	worker_begin_xact();
	cat = catalog_get(false);
	if (OidIsValid(get_relname_relid("problems", cat->schema)))
	{
		dbaccess_become_owner(&ctx);
		SPI_connect();
		dbaccess_spi_exec("SELECT object, problem, detail, hint FROM replstamp.problems "
						  "WHERE problem OPERATOR(pg_catalog.!~~) 'peer %' "
						  "AND problem OPERATOR(pg_catalog.!~~) 'sequence %' "
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
		dbaccess_restore_user(&ctx);
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

	dbaccess_become_owner(&ctx);
	SPI_connect();
	(void) read_conninfo(peer);
	SPI_finish();
	dbaccess_restore_user(&ctx);
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

/*
 * replstamp.skip(replica_id, serial): hold that change without applying
 * it, so that syncs go on past it.  Nothing is skipped without this call.
 */
Datum
replstamp_skip(PG_FUNCTION_ARGS)
{
	pg_uuid_t  *id = PG_GETARG_UUID_P(0);
	int64		serial = PG_GETARG_INT64(1);
	const ReplstampCatalog *cat = catalog_get_v11("replstamp.skip()");
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
				 errmsg("change %s/" INT64_FORMAT " is held here already", catalog_uuid_text(id), serial),
				 errhint("Only a change that a sync could not apply can be skipped.")));
	if (same_id(id, &catalog_node()->replica_id))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("cannot skip a change of this node's own replica ID")));
	stamp = psprintf("%s/" INT64_FORMAT, catalog_uuid_text(id), serial);
	values[0] = UUIDPGetDatum(id);
	values[1] = Int64GetDatum(serial);
	values[2] = CStringGetTextDatum(stamp);
	dbaccess_become_owner(&ctx);
	SPI_connect();
	/* The error the sync reported for it, if one did. */
	dbaccess_spi_exec("INSERT INTO replstamp.skipped (replica_id, serial, error, requested_by) "
					  "SELECT $1, $2, (SELECT p.last_error FROM replstamp.peer p "
					  "  WHERE p.last_error_change OPERATOR(pg_catalog.=) $3 LIMIT 1), session_user "
					  "ON CONFLICT (replica_id, serial) DO NOTHING",
					  3, types, values, NULL, SPI_OK_INSERT);
	SPI_finish();
	dbaccess_restore_user(&ctx);
	ereport(NOTICE,
			(errmsg("change %s will be held without being applied", stamp),
			 errhint("The next sync from a peer that has it goes on past it; replstamp.skipped lists it.")));
	PG_RETURN_VOID();
}

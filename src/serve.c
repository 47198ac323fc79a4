/*-------------------------------------------------------------------------
 *
 * serve.c
 *		The serving side of a sync: replstamp.serve(request), the handshake
 *		a pulling node starts with, and replstamp.serve_vector(), the 1.0
 *		handshake kept for pullers that still run 1.0.
 *
 * serve() answers with this node's vector, computed from its lowest
 * uncommitted serial before the puller reads a single change (the puller
 * reads them afterwards, in a transaction of its own whose snapshot is
 * later), after flushing WAL: a change below the vector has committed and
 * is durable, so a crash cannot make this node hand its serial out again.
 *
 * On the way it
 *	- refuses while the server is in recovery: a standby cannot know which
 *	  of its primary's serials are final (it sees neither the primary's
 *	  open transactions nor its sequence as handed out);
 *	- compares the puller's history of this node's current replica ID with
 *	  its own (proto.c): if the puller holds changes of this ID that this
 *	  data set never made or made differently, this data set went back in
 *	  time or is a clone, and it rotates now (identity.c);
 *	- learns the epochs the puller knows to be dead, unless more of them
 *	  than replstamp.max_new_replica_ids are unknown here;
 *	- refuses a puller that could bring deleted rows back: one that holds a
 *	  replica ID only up to a serial below a tombstone this node has dropped;
 *	- records what the puller holds, so that pruning keeps what it lacks,
 *	  and forgets the puller's retired IDs as pullers (but not the record
 *	  of a live node that the puller is a copy of).
 * It runs as the extension's owner for these writes; the role the puller
 * connects as needs EXECUTE on it and SELECT on replstamp.changes.
 *
 * Who is believed: a request is words, and the role it comes in as is the
 * only thing about it this node can check.  A puller is trusted when that
 * role is a superuser or has the REPLICATION attribute, which only a
 * superuser can give: the same step a DBA takes for a native logical
 * replication subscriber.  Only a trusted puller's claims change state
 * others depend on (the rotation, the dead epochs it hands on, its record
 * as a puller, which holds pruning back and lets it go); a pulling role
 * without it reads changes and nothing more, and is told so in a
 * WARNING.  A puller's record is bound to the role that made it: a
 * request of another role under the same replica ID leaves it alone.
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xlog.h"
#include "access/xlog_internal.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

#include "catalog.h"
#include "compat.h"
#include "dbaccess.h"
#include "epochs.h"
#include "errors.h"
#include "identity.h"
#include "proto.h"
#include "serial.h"
#include "shmem.h"

PG_FUNCTION_INFO_V1(replstamp_serve);
PG_FUNCTION_INFO_V1(replstamp_serve_vector);

static void
refuse_in_recovery(void)
{
	if (RecoveryInProgress())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot serve changes while the server is in recovery"),
				 errdetail("A standby cannot tell which serials of its primary are final: it sees neither the primary's open transactions nor the serials it has handed out."),
				 errhint("Pull from the primary.")));
}

/*
 * Make every committed change durable: flush WAL up to the end of the last
 * record inserted.  (The insert position right after a page header is not
 * a record's end, and a flush request beyond what was ever written fails.)
 */
static void
flush_wal(void)
{
	XLogRecPtr	upto = GetXLogInsertRecPtr();

	if (XLogSegmentOffset(upto, wal_segment_size) == SizeOfXLogLongPHD)
		upto -= SizeOfXLogLongPHD;
	else if (upto % XLOG_BLCKSZ == SizeOfXLogShortPHD)
		upto -= SizeOfXLogShortPHD;
	XLogFlush(upto);
}

/* Refuse a puller that holds an ID only below a dropped tombstone. */
static void
refuse_stale_puller(Handshake *req)
{
	for (int i = 0; i < req->nvector; i++)
	{
		VectorItem *v = &req->vector[i];
		Oid			types[2] = {UUIDOID, INT8OID};
		Datum		values[2] = {UUIDPGetDatum(&v->id), Int64GetDatum(v->serial)};

		/*
		 * Even an entry of 0: it is a restored copy's claim on its old ID
		 * when nothing was recorded, and the copy holds that ID's rows.  A
		 * node that never held any change of an ID has no entry for it.
		 */
		dbaccess_spi_exec("SELECT serial FROM replstamp.purged WHERE replica_id OPERATOR(pg_catalog.=) $1 "
						  "AND serial OPERATOR(pg_catalog.>) $2", 2, types, values, NULL, SPI_OK_SELECT);
		if (SPI_processed > 0)
			ereport(ERROR,
					(errcode(ERRCODE_SNAPSHOT_TOO_OLD),
					 errmsg("node \"%s\" is too far behind to pull from here", req->label),
					 errdetail("It holds changes of replica ID %s only up to serial " INT64_FORMAT
							   ", and this node has dropped the tombstones of rows deleted after that: it could bring them back.",
							   catalog_uuid_text(&v->id), v->serial),
					 errhint("Rebuild that node from a fresh backup of a current node (its data is older than replstamp.tombstone_lifetime).")));
	}
}

/*
 * May the role a request comes in as change what others depend on?  A
 * superuser, or a role with the REPLICATION attribute.
 */
static bool
puller_trusted(Oid role)
{
	return superuser_arg(role) || has_rolreplication(role);
}

/*
 * Record what the puller holds; forget it under its retired IDs.  An ID
 * missing from its vector now but recorded before is one it held all of
 * and let leave its vector (a retired ID, prune.c): its record
 * stays, or it would hold back forever the pruning of that ID here.  The
 * record is role's: under a replica ID whose record another role made,
 * nothing is written (a WARNING says why).
 */
static void
record_puller(Handshake *req, const char *role, const char *from)
{
	Oid			types[3] = {UUIDOID, TEXTOID, NAMEOID};
	Datum		values[3];

	values[0] = UUIDPGetDatum(&req->replica_id);
	values[1] = CStringGetTextDatum(req->label);
	values[2] = CStringGetDatum(role);
	dbaccess_spi_exec("INSERT INTO replstamp.puller AS u (replica_id, label, last_pull_at, role) "
					  "VALUES ($1, $2, pg_catalog.now(), $3) ON CONFLICT (replica_id) "
					  "DO UPDATE SET label = EXCLUDED.label, last_pull_at = EXCLUDED.last_pull_at, "
					  "role = EXCLUDED.role "
					  "WHERE u.role IS NULL OR u.role OPERATOR(pg_catalog.=) EXCLUDED.role",
					  3, types, values, NULL, SPI_OK_INSERT);
	if (SPI_processed == 0)
	{
		ereport(WARNING,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("replstamp: %s pulls under replica ID %s as role \"%s\", but another role pulls under that ID: its record is left as it is",
						from, catalog_uuid_text(&req->replica_id), role),
				 errhint("Each node should pull as its own role; replstamp.pullers shows which role each record is bound to.")));
		return;
	}
	for (int i = 0; i < req->nvector; i++)
	{
		Oid			vt[3] = {UUIDOID, UUIDOID, INT8OID};
		Datum		vv[3];

		vv[0] = UUIDPGetDatum(&req->replica_id);
		vv[1] = UUIDPGetDatum(&req->vector[i].id);
		vv[2] = Int64GetDatum(req->vector[i].serial);
		dbaccess_spi_exec("INSERT INTO replstamp.puller_vector (puller, replica_id, serial) VALUES ($1, $2, $3) "
						  "ON CONFLICT (puller, replica_id) DO UPDATE SET serial = EXCLUDED.serial",
						  3, vt, vv, NULL, SPI_OK_INSERT);
	}

	/*
	 * The puller goes on under a new ID: its record under a retired one would
	 * only hold pruning back.  Unless a peer of this node still said at its
	 * last sync that it stamps under that ID: then the puller is a copy of
	 * that node (made from its backup) and the record is the live node's.  (A
	 * node restored in its own place stops saying so at the next sync from
	 * it.)
	 */
	for (int i = 0; i < req->nretired; i++)
	{
		values[0] = UUIDPGetDatum(&req->retired[i]);
		dbaccess_spi_exec("DELETE FROM replstamp.puller u WHERE u.replica_id OPERATOR(pg_catalog.=) $1 "
						  "AND (u.role IS NULL OR u.role OPERATOR(pg_catalog.=) $3) "
						  "AND NOT EXISTS (SELECT 1 FROM replstamp.peer p "
						  "  WHERE p.replica_id OPERATOR(pg_catalog.=) $1)",
						  3, types, values, NULL, SPI_OK_DELETE);
	}
}

/* How many changes above the puller's entry, and the oldest one's time. */
static void
add_lag(VectorItem *mine, VectorItem *theirs)
{
	Oid			types[3] = {UUIDOID, INT8OID, INT8OID};
	Datum		values[3];
	bool		isnull;
	Datum		d;
	int64		lo = theirs ? theirs->serial : 0;

	mine->count = 0;
	mine->oldest = 0;
	if (mine->serial <= lo)
		return;
	values[0] = UUIDPGetDatum(&mine->id);
	values[1] = Int64GetDatum(lo);
	values[2] = Int64GetDatum(mine->serial);
	dbaccess_spi_exec("SELECT pg_catalog.count(*), pg_catalog.min(changed_at) FROM replstamp.changes "
					  "WHERE replica_id OPERATOR(pg_catalog.=) $1 AND serial OPERATOR(pg_catalog.>) $2 "
					  "AND serial OPERATOR(pg_catalog.<=) $3", 3, types, values, NULL, SPI_OK_SELECT);
	mine->count = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
	if (!isnull)
		mine->oldest = DatumGetTimestampTz(d);
}

/*
 * replstamp.serve(request jsonb) RETURNS jsonb
 */
Datum
replstamp_serve(PG_FUNCTION_ARGS)
{
	Jsonb	   *json = PG_GETARG_JSONB_P(0);
	Handshake	req;
	Handshake	me;
	ReplstampOwnerContext ctx;
	char	   *from;
	bool		rotated = false;
	MemoryContext caller = CurrentMemoryContext;
	Oid			role = GetUserId();
	bool		trusted = puller_trusted(role);
	char	   *rolename = GetUserNameFromId(role, false);

	shmem_require();
	(void) catalog_get_v12("replstamp.serve()");
	refuse_in_recovery();
	/* A data set restored and not checked yet must rotate before it serves. */
	identity_ensure_verified();

	proto_decode(json, &req, "the pulling node");
	from = psprintf(_("node \"%s\""), req.label);
	if (req.protocol != REPLSTAMP_PROTOCOL)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("%s runs replstamp %s (sync protocol %d), this node %s (protocol %d)", from,
						req.version && req.version[0] ? req.version : "?", req.protocol,
						REPLSTAMP_VERSION, REPLSTAMP_PROTOCOL),
				 errdetail("replstamp 1.2 applies remote transactions whole and in order; a node of another version would apply them otherwise."),
				 errhint("Update replstamp on that node (install the same version, restart, ALTER EXTENSION replstamp UPDATE). Nothing is lost meanwhile: the changes wait in this node's log.")));

	dbaccess_become_owner(&ctx);
	SPI_connect();

	/* Dead epochs travel on to every node: no flood of unknown ones. */
	{
		Handshake	known;

		proto_local(&known, false);
		proto_refuse_flood(&known, &req, false, from);
	}

	/* Has this data set gone back in time, as the puller sees it? */
	if (identity_check_histories())
	{
		const ReplstampNode *node = catalog_node();
		pg_uuid_t	current = node->replica_id;
		VectorItem *theirs = proto_find(&req, &current);

		if (theirs && theirs->serial > 0)
		{
			int64		diverge_at;
			char	   *why = epochs_own_divergence(&current, theirs, &diverge_at);

			if (why && !trusted)
				ereport(WARNING,
						(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
						 errmsg("replstamp: %s says it holds changes of this node's replica ID %s that this data set does not have; not acted on: role \"%s\" is not trusted",
								from, catalog_uuid_text(&current), rolename),
						 errdetail_internal("%s", why),
						 errhint("A node rotates on what a trusted puller (a superuser or a role with REPLICATION) shows, or on what its own syncs from its peers show.")));
			else if (why)
			{
				ereport(WARNING,
						(errmsg("replstamp: %s holds changes of this node's replica ID %s that this data set does not have",
								from, catalog_uuid_text(&current)),
						 errdetail_internal("%s", why),
						 errhint("This node rotates its replica ID now and re-issues what it stamped since serial " INT64_FORMAT ".",
								 diverge_at)));
				rotated = identity_rotate_diverged(&current, diverge_at,
												   psprintf("peer history: parts at serial " INT64_FORMAT, diverge_at));
			}
		}
	}

	refuse_stale_puller(&req);
	if (trusted)
	{
		epochs_learn_dead(&req, from);
		record_puller(&req, rolename, from);
	}
	else
		ereport(WARNING,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("replstamp: %s pulls as role \"%s\", which is not trusted: it reads changes, but what it holds does not hold pruning back here and what it reports is not acted on",
						from, rolename),
				 errdetail("A trusted puller is a superuser or a role with the REPLICATION attribute."),
				 errhint("If that node is a peer, give its role REPLICATION: ALTER ROLE %s REPLICATION.",
						 quote_identifier(rolename))));

	/* This node's vector, before any change is read; then make it durable. */
	{
		/* In the caller's memory: it is encoded after SPI_finish(). */
		MemoryContext spi = MemoryContextSwitchTo(caller);

		proto_local(&me, false);
		MemoryContextSwitchTo(spi);
	}
	/* What it claims of its own ID was served: the next epoch begins above. */
	{
		VectorItem *own = proto_find(&me, &me.replica_id);

		if (own)
			identity_mark_served(&me.replica_id, own->serial + 1);
	}
	/* What it re-issued commits with this call: the puller asks again. */
	me.rotated = rotated;
	flush_wal();
	for (int i = 0; i < me.nvector; i++)
		add_lag(&me.vector[i], proto_find(&req, &me.vector[i].id));

	SPI_finish();
	dbaccess_restore_user(&ctx);
	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(proto_encode(&me))));
}

/*
 * replstamp.serve_vector(): the 1.0 handshake.  A 1.0 puller would apply
 * what it reads split into pages and per replica ID: refused, with what to
 * do.  (The function stays so that the refusal is a clear one, not an
 * undefined function.)
 */
Datum
replstamp_serve_vector(PG_FUNCTION_ARGS)
{
	(void) catalog_get(false);
	ereport(ERROR,
			(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
			 errmsg("a node running replstamp 1.0 cannot pull from this node, which runs replstamp %s", REPLSTAMP_VERSION),
			 errdetail("replstamp 1.2 applies remote transactions whole and in order; replstamp 1.0 would apply them split."),
			 errhint("Update replstamp on the pulling node (install the same version, restart, ALTER EXTENSION replstamp UPDATE). Nothing is lost meanwhile: the changes wait in this node's log.")));
	PG_RETURN_VOID();
}

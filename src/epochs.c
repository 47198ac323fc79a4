/*-------------------------------------------------------------------------
 *
 * epochs.c
 *		What a node does with the histories (epochs, see identity.c and
 *		proto.c) its peers tell it of.
 *
 *	- epochs_own_divergence(): does a peer hold changes of this node's
 *	  current replica ID that this data set never made, or made in another
 *	  history?  Then this data set went back in time (a VM snapshot, a cold
 *	  copy put back) or is a clone, and must rotate.
 *	- epochs_adopt(): a node that pulls changes of an ID records the epochs
 *	  they come from, so that it can compare histories with other nodes.
 *	- epochs_learn_dead(): a node that rotated because of a divergence
 *	  marks the epochs it minted since as dead: their changes were
 *	  re-issued under its new ID.  Every node that holds changes of a dead
 *	  epoch re-issues them under its own ID as well (nothing is lost even if
 *	  the rotated node is gone), drops the old stamps, and lowers its vector
 *	  below the epoch, so that it can pull the other history's changes of
 *	  those serials.  Dead marks travel with every handshake, both ways.
 *
 * All of it runs in the caller's transaction, as the extension owner, with
 * SPI connected.
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/uuid.h"

#include "catalog.h"
#include "dbaccess.h"
#include "epochs.h"
#include "errors.h"
#include "identity.h"
#include "serial.h"

/* This node's live epochs of id, sorted. */
static VectorItem *
own_epochs(const pg_uuid_t *id)
{
	VectorItem *v = palloc0(sizeof(VectorItem));
	Oid			types[1] = {UUIDOID};
	Datum		values[1] = {UUIDPGetDatum(id)};

	dbaccess_spi_exec("SELECT token, first_serial FROM replstamp.epoch "
					  "WHERE replica_id OPERATOR(pg_catalog.=) $1 AND NOT dead "
					  "ORDER BY first_serial, token", 1, types, values, NULL, SPI_OK_SELECT);
	v->id = *id;
	v->nepochs = SPI_processed;
	v->epochs = palloc(sizeof(EpochEntry) * Max(v->nepochs, 1));
	for (int i = 0; i < v->nepochs; i++)
	{
		bool		isnull;

		memcpy(&v->epochs[i].token,
			   DatumGetUUIDP(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull)),
			   sizeof(pg_uuid_t));
		v->epochs[i].first = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
														 SPI_tuptable->tupdesc, 2, &isnull));
	}
	return v;
}

/*
 * theirs is what a peer holds of this node's current replica ID: up to
 * theirs->serial, from the epochs it lists.  Returns NULL if that fits this
 * data set's history, else why not, as a sentence for a message's detail
 * (and where the histories part in *diverge_at).
 */
char *
epochs_own_divergence(const pg_uuid_t *current, const VectorItem *theirs,
					  int64 *diverge_at)
{
	const ReplstampCatalog *cat = catalog_get(false);
	VectorItem *mine;
	int64		issued;

	/* Called in a sync or replstamp.serve(), which need the 1.2 catalog. */
	Assert(cat->v12);
	mine = own_epochs(current);
	issued = serial_next(cat->serial_seq) - 1;

	if (!proto_histories_agree(mine, PG_INT64_MAX, theirs, theirs->serial, diverge_at))
		return psprintf(_("The peer's history of it parts from this data set's at serial " INT64_FORMAT "."),
						*diverge_at);
	if (theirs->serial > issued)
	{
		/* They hold serials never handed out here: re-issue this start's. */
		*diverge_at = mine->nepochs > 0 ? mine->epochs[mine->nepochs - 1].first : 1;
		return psprintf(_("The peer holds it up to serial " INT64_FORMAT
						  ", and this data set has handed out serials only up to " INT64_FORMAT "."),
						theirs->serial, issued);
	}
	return NULL;
}

/*
 * Record the epochs of theirs (a peer's history of one ID) that cover the
 * serials now held here (up to upto).
 */
void
epochs_adopt(const VectorItem *theirs, int64 upto)
{
	for (int i = 0; i < theirs->nepochs; i++)
	{
		Oid			types[3] = {UUIDOID, UUIDOID, INT8OID};
		Datum		values[3];

		if (theirs->epochs[i].first > upto)
			break;
		values[0] = UUIDPGetDatum(&theirs->id);
		values[1] = UUIDPGetDatum(&theirs->epochs[i].token);
		values[2] = Int64GetDatum(theirs->epochs[i].first);
		dbaccess_spi_exec("INSERT INTO replstamp.epoch (replica_id, token, first_serial, started_at) "
						  "VALUES ($1, $2, $3, pg_catalog.now()) ON CONFLICT (replica_id, token) DO NOTHING",
						  3, types, values, NULL, SPI_OK_INSERT);
	}
}

/*
 * Act on the dead epochs a peer knows of (h->dead).
 */
void
epochs_learn_dead(Handshake *h, const char *from)
{
	const ReplstampCatalog *cat = catalog_get(false);

	/* Called in a sync or replstamp.serve(), which need the 1.2 catalog. */
	Assert(cat->v12);

	for (int i = 0; i < h->ndead; i++)
	{
		DeadMark   *d = &h->dead[i];
		Oid			types[3] = {UUIDOID, UUIDOID, INT8OID};
		Datum		values[3];
		bool		live;
		int64		until = PG_INT64_MAX;
		VectorItem *mine;

		values[0] = UUIDPGetDatum(&d->id);
		values[1] = UUIDPGetDatum(&d->token);
		values[2] = Int64GetDatum(d->first);
		dbaccess_spi_exec("SELECT NOT dead FROM replstamp.epoch WHERE replica_id OPERATOR(pg_catalog.=) $1 "
						  "AND token OPERATOR(pg_catalog.=) $2", 2, types, values, NULL, SPI_OK_SELECT);
		if (SPI_processed > 0)
		{
			bool		isnull;

			live = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
			if (!live)
				continue;		/* known already */
		}
		else
		{
			/* Never held anything of it: just remember, and pass it on. */
			dbaccess_spi_exec("INSERT INTO replstamp.epoch (replica_id, token, first_serial, started_at, dead) "
							  "VALUES ($1, $2, $3, pg_catalog.now(), true) ON CONFLICT DO NOTHING",
							  3, types, values, NULL, SPI_OK_INSERT);
			continue;
		}
		if (memcmp(d->id.data, catalog_node()->replica_id.data, UUID_LEN) == 0)
			continue;			/* only this data set kills its own epochs */

		/*
		 * The changes of that epoch held here end where our next epoch
		 * begins.
		 */
		mine = own_epochs(&d->id);
		for (int k = 0; k < mine->nepochs; k++)
			if (mine->epochs[k].first > d->first)
			{
				until = mine->epochs[k].first - 1;
				break;
			}
		{
			pg_uuid_t	current = catalog_node()->replica_id;
			int64		n = identity_reissue(cat, &d->id, d->first, until, &current,
											 REISSUE_DEAD_EPOCH);

			dbaccess_spi_exec("UPDATE replstamp.epoch SET dead = true WHERE replica_id OPERATOR(pg_catalog.=) $1 "
							  "AND token OPERATOR(pg_catalog.=) $2", 2, types, values, NULL, SPI_OK_UPDATE);
			dbaccess_spi_exec("UPDATE replstamp.vector_state SET serial = $3 - 1 "
							  "WHERE replica_id OPERATOR(pg_catalog.=) $1 AND serial OPERATOR(pg_catalog.>=) $3",
							  3, types, values, NULL, SPI_OK_UPDATE);
			ereport(LOG,
					(errmsg("replstamp: %s reports that the history of replica ID %s from serial " INT64_FORMAT " on was abandoned (a rolled-back or cloned node rotated)",
							from, catalog_uuid_text(&d->id), d->first),
					 errdetail("%lld changes of it held here were re-issued under this node's replica ID; the other history's changes of those serials will be pulled.",
							   (long long) n)));
		}
	}
}

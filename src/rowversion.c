/*-------------------------------------------------------------------------
 *
 * rowversion.c
 *		replstamp.row_version: per row (table and key), the stamp and time
 *		of the latest change of it held here, and whether that change
 *		deleted it.  Last writer wins compares an incoming change with one
 *		row of it, found through an index on row_hash, instead of scanning
 *		the row's history: one lookup per change, whatever the backlog and
 *		however often the row changed.  It is also what pruning keeps: the
 *		change a row_version names is the latest of its row.
 *
 * Who writes it:
 *	- the apply (apply.c), for every change it pulls;
 *	- the reconciliation below, for the changes stamped here: the stamp
 *	  trigger does not touch row_version (an index write there was 40 % of
 *	  its cost); a sync or a prune reads the changes stamped here since it
 *	  last looked, in serial order, and records them.  Before it decides on
 *	  a row, the apply has locked the row in its table, so any local change
 *	  of it has committed and is found by reconciling once more; when no
 *	  serial was taken since the last look and none was in flight, there is
 *	  nothing to read;
 *	- a rotation that re-issues changes (identity.c), which moves the rows
 *	  that named an old stamp to the new one.
 * Syncs of one database run one at a time (sync.c holds rowversion_lock()),
 * so do prunes (prune.c), and a sync's page and a prune's batch
 * exclude each other (rowversion_page_lock()), so only a rotation can
 * write concurrently; the writes here then fail with "tuple concurrently
 * updated" and the page is tried again.
 *
 * An UPDATE that changes the key is two rows' versions: the old key
 * deleted, the new key written, both at the change's stamp.  Every node
 * applies the same rule, so nodes converge whatever order key changes and
 * other changes of the same keys arrive in.
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "utils/jsonb.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "parser/parsetree.h"
#include "storage/lmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "catalog.h"
#include "changelog.h"
#include "compat.h"
#include "dbaccess.h"
#include "digest.h"
#include "errors.h"
#include "latest.h"
#include "rowimage.h"
#include "rowversion.h"
#include "serial.h"

/*
 * Order of two versions: the later stamp time wins, then the greater
 * replica ID, then the greater serial.  The same on every node.
 */
int
rowversion_cmp(const Version *a, const Version *b)
{
	int			c;

	if (a->changed_at != b->changed_at)
		return a->changed_at > b->changed_at ? 1 : -1;
	c = memcmp(a->replica_id.data, b->replica_id.data, UUID_LEN);
	if (c != 0)
		return c > 0 ? 1 : -1;
	if (a->serial != b->serial)
		return a->serial > b->serial ? 1 : -1;
	return 0;
}

static bool
jsonb_equal(Jsonb *a, Jsonb *b)
{
	return DatumGetBool(DirectFunctionCall2(jsonb_eq, JsonbPGetDatum(a), JsonbPGetDatum(b)));
}

/*
 * The rows a change affects, into rows[] (room for 2): an INSERT or an
 * UPDATE that keeps the key writes one row, a DELETE deletes one, an
 * UPDATE that changes the key deletes the old key and writes the new one.
 */
int
rowversion_change_rows(Change *change, ChangeRow *rows)
{
	const char *rel = VARDATA_ANY(change->relation);
	int			len = VARSIZE_ANY_EXHDR(change->relation);

	rows[0].key = change->pk;
	rows[0].hash = rowimage_row_hash(rel, len, change->pk);
	/* A TRUNCATE's own entry, under a key no row has: a tombstone. */
	rows[0].deleted = (change->op == 'D' || change->op == 'T');
	if (change->op != 'U' || !rowimage_key_changed(change->pk, change->image))
		return 1;
	rows[1].key = rowimage_key_of(change->pk, change->image);
	if (jsonb_equal(rows[1].key, change->pk))
		return 1;
	rows[0].deleted = true;
	rows[1].hash = rowimage_row_hash(rel, len, rows[1].key);
	rows[1].deleted = false;
	return 2;
}

/*
 * Open replstamp.row_version for writing in the current transaction.
 */
RowVersionWriter *
rowversion_writer_begin(const ReplstampCatalog *cat)
{
	RowVersionWriter *w = palloc0(sizeof(RowVersionWriter));

	w->cat = cat;
	w->rel = table_open(cat->row_version, RowExclusiveLock);
	w->estate = CreateExecutorState();
	w->rri = dbaccess_open_result_rel(w->rel, w->estate);
	w->estate->es_output_cid = GetCurrentCommandId(true);
	w->slot = table_slot_create(w->rel, &w->estate->es_tupleTable);
	w->oldslot = table_slot_create(w->rel, &w->estate->es_tupleTable);
	w->walked = NULL;
	w->cxt = CurrentMemoryContext;
	return w;
}

typedef struct WalkedEntry
{
	pg_uuid_t	id;				/* hash key */
	int64		walked_upto;
	int64		held_upto;		/* every puller holds the ID up to here */
} WalkedEntry;

/*
 * How far pruning has looked at the changes of id (prune.c), and
 * how far every puller holds them, as the writer first asks.
 */
static WalkedEntry *
walked_entry(RowVersionWriter *w, const pg_uuid_t *id)
{
	if (w->walked == NULL)
	{
		HASHCTL		ctl;
		ReplstampOwnerContext ctx;

		ctl.keysize = sizeof(pg_uuid_t);
		ctl.entrysize = sizeof(WalkedEntry);
		ctl.hcxt = w->cxt;		/* lives as long as the writer */
		w->walked = hash_create("replstamp prune progress", 16, &ctl,
								HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
		dbaccess_become_owner(&ctx);
		SPI_connect();
		/* Once per sync page: a plan kept for the process. */
		dbaccess_spi_exec_kept("SELECT pp.replica_id, pp.walked_upto, "
							   "coalesce(LEAST(v.serial, (SELECT pg_catalog.min(coalesce(pv.serial, 0)) "
							   "  FROM replstamp.puller u LEFT JOIN replstamp.puller_vector pv "
							   "  ON pv.puller OPERATOR(pg_catalog.=) u.replica_id "
							   "  AND pv.replica_id OPERATOR(pg_catalog.=) pp.replica_id)), 0) "
							   "FROM replstamp.prune_progress pp LEFT JOIN replstamp.vector v "
							   "ON v.replica_id OPERATOR(pg_catalog.=) pp.replica_id",
							   0, NULL, NULL, NULL, SPI_OK_SELECT);
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			bool		isnull;
			pg_uuid_t	key;
			WalkedEntry *e;

			memcpy(&key, DatumGetUUIDP(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc,
													 1, &isnull)), sizeof(pg_uuid_t));
			e = hash_search(w->walked, &key, HASH_ENTER, NULL);
			e->walked_upto = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
														 SPI_tuptable->tupdesc, 2, &isnull));
			e->held_upto = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
													   SPI_tuptable->tupdesc, 3, &isnull));
		}
		SPI_finish();
		dbaccess_restore_user(&ctx);
	}
	return hash_search(w->walked, id, HASH_FIND, NULL);
}

/*
 * A latest version is superseded (current: the row as it was; carry: the
 * row's carry from now on).  If pruning has looked at its change already
 * (and kept it for being the latest), the prune would now remove it: as
 * it would, this removes it at once if every puller holds it and nothing
 * else needs it (it is no row's carry, it is the latest of no other row:
 * an UPDATE that changed the key is left to the prune); otherwise it is
 * queued, and the next prune looks at it again.  (A conflict that names
 * it keeps a copy of its own.)  Pruning and this exclude each other (a
 * prune batch and a sync's page, rowversion_page_lock(); the
 * reconciliation in a prune runs in its first batch).
 */
static void
superseded(RowVersionWriter *w, const Version *old, const RowVersion *current,
		   const Version *carry)
{
	ReplstampOwnerContext ctx;
	Oid			types[2] = {UUIDOID, INT8OID};
	Datum		values[2];
	WalkedEntry *e;

	/* No longer the latest: the walk must look at it (latest.c). */
	latest_note(&old->replica_id, old->serial, false);

	/* Not walked yet: the walk finds it superseded. */
	e = walked_entry(w, &old->replica_id);
	if (e == NULL || old->serial > e->walked_upto)
		return;
	if (old->serial <= e->held_upto &&
		!(current->partial && changelog_same_stamp(&current->carry.replica_id, current->carry.serial,
												   &old->replica_id, old->serial)) &&
		!(carry && changelog_same_stamp(&carry->replica_id, carry->serial, &old->replica_id, old->serial)))
	{
		Change		fetched;
		Change	   *change = w->superseding;
		ChangeRow	rows[2];

		/* A conflict recorded just now read it from the log already. */
		if (change == NULL ||
			!changelog_same_stamp(&change->replica_id, change->serial, &old->replica_id, old->serial))
		{
			change = &fetched;
			if (!changelog_fetch(w->cat, &old->replica_id, old->serial, change))
				return;			/* gone already */
		}
		if (rowversion_change_rows(change, rows) == 1)
		{
			changelog_delete_tid(w->cat, &change->tid);
			w->removed++;
			return;
		}
	}
	values[0] = UUIDPGetDatum(&old->replica_id);
	values[1] = Int64GetDatum(old->serial);
	dbaccess_become_owner(&ctx);
	SPI_connect();
	dbaccess_spi_exec_kept("INSERT INTO replstamp.prune_queue (replica_id, serial) VALUES ($1, $2) "
						   "ON CONFLICT DO NOTHING", 2, types, values, NULL, SPI_OK_INSERT);
	SPI_finish();
	dbaccess_restore_user(&ctx);
}

void
rowversion_writer_end(RowVersionWriter *w)
{
	if (w->scan)
	{
		index_endscan(w->scan);
		index_close(w->hash_index, NoLock);
	}
	ExecCloseResultRelations(w->estate);
	ExecCloseRangeTableRelations(w->estate);
	ExecResetTupleTable(w->estate->es_tupleTable, false);
	FreeExecutorState(w->estate);
	table_close(w->rel, NoLock);
	pfree(w);
	/* The bucket digests of what it wrote, one write per bucket. */
	digest_flush();
}

/*
 * The next tuple of the writer's index scan.  In the writer's memory: the
 * scan keeps what it allocates on the way (the index's killed items) for the
 * next lookups, which the caller's context would not outlive.
 */
static bool
next_version(RowVersionWriter *w, TupleTableSlot *slot)
{
	MemoryContext old = MemoryContextSwitchTo(w->cxt);
	bool		found = index_getnext_slot(w->scan, ForwardScanDirection, slot);

	MemoryContextSwitchTo(old);
	return found;
}

/*
 * The recorded latest version of a row, if any.
 */
void
rowversion_get(RowVersionWriter *w, text *relation, ChangeRow *row, RowVersion *out)
{
	ScanKeyData key;
	TupleTableSlot *slot;
	MemoryContext old;

	/*
	 * One index scan for every lookup of the writer, started anew for each:
	 * the apply and the prune look up one row per change.
	 */
	if (w->scan == NULL)
	{
		old = MemoryContextSwitchTo(w->cxt);
		w->hash_index = index_open(w->cat->row_version_hash, AccessShareLock);
		w->scan = index_beginscan(w->rel, w->hash_index, SnapshotSelf, 1, 0);
		w->getslot = table_slot_create(w->rel, &w->estate->es_tupleTable);
		MemoryContextSwitchTo(old);
	}
	slot = w->getslot;
	out->found = false;
	ScanKeyInit(&key, 1, HTEqualStrategyNumber, F_INT8EQ, Int64GetDatum(row->hash));
	old = MemoryContextSwitchTo(w->cxt);
	index_rescan(w->scan, &key, 1, NULL, 0);
	MemoryContextSwitchTo(old);
	while (next_version(w, slot))
	{
		Datum	   *values;
		bool	   *nulls;

		slot_getallattrs(slot);
		values = slot->tts_values;
		nulls = slot->tts_isnull;
		if (!rowimage_bytes_equal(DatumGetTextPP(values[Anum_row_version_relation - 1]), relation) ||
			!jsonb_equal(DatumGetJsonbP(values[Anum_row_version_pk - 1]), row->key))
			continue;
		out->found = true;
		out->tid = slot->tts_tid;
		out->v.changed_at = DatumGetTimestampTz(values[Anum_row_version_changed_at - 1]);
		memcpy(&out->v.replica_id, DatumGetUUIDP(values[Anum_row_version_replica_id - 1]),
			   sizeof(pg_uuid_t));
		out->v.serial = DatumGetInt64(values[Anum_row_version_serial - 1]);
		out->deleted = DatumGetBool(values[Anum_row_version_deleted - 1]);
		out->partial = DatumGetBool(values[Anum_row_version_partial - 1]);
		out->carry_columns = NIL;
		memset(&out->carry, 0, sizeof(Version));
		if (out->partial && !nulls[Anum_row_version_carry_replica_id - 1])
		{
			Datum	   *elems;
			int			nelems;

			memcpy(&out->carry.replica_id,
				   DatumGetUUIDP(values[Anum_row_version_carry_replica_id - 1]), sizeof(pg_uuid_t));
			out->carry.serial = DatumGetInt64(values[Anum_row_version_carry_serial - 1]);
			out->carry.changed_at = nulls[Anum_row_version_carry_changed_at - 1] ? 0 :
				DatumGetTimestampTz(values[Anum_row_version_carry_changed_at - 1]);
			if (!nulls[Anum_row_version_carry_columns - 1])
			{
				deconstruct_array(DatumGetArrayTypeP(values[Anum_row_version_carry_columns - 1]),
								  TEXTOID, -1, false, TYPALIGN_INT, &elems, NULL, &nelems);
				for (int k = 0; k < nelems; k++)
					out->carry_columns = lappend(out->carry_columns, TextDatumGetCString(elems[k]));
			}
		}
		break;
	}
	ExecClearTuple(slot);
}

/* Write the row_version tuple from the slot: insert or update current. */
static void
write_version(RowVersionWriter *w, RowVersion *current)
{
	w->estate->es_output_cid = GetCurrentCommandId(true);
	if (current->found)
	{
		ExecClearTuple(w->oldslot);
		w->oldslot->tts_tid = current->tid;
		ExecSimpleRelationUpdate(w->rri, w->estate, NULL, w->oldslot, w->slot);
		current->tid = w->slot->tts_tid;
	}
	else
	{
		ExecSimpleRelationInsert(w->rri, w->estate, w->slot);
		current->found = true;
		current->tid = w->slot->tts_tid;
	}
	/* The next lookup of the same row, and the next update, must see it. */
	CommandCounterIncrement();
}

static void
fill_slot(RowVersionWriter *w, text *relation, ChangeRow *row, RowVersion *rv)
{
	TupleTableSlot *slot = w->slot;

	ExecClearTuple(slot);
	memset(slot->tts_isnull, false, sizeof(bool) * slot->tts_tupleDescriptor->natts);
	slot->tts_values[Anum_row_version_row_hash - 1] = Int64GetDatum(row->hash);
	slot->tts_values[Anum_row_version_relation - 1] = PointerGetDatum(relation);
	slot->tts_values[Anum_row_version_pk - 1] = JsonbPGetDatum(row->key);
	slot->tts_values[Anum_row_version_replica_id - 1] = UUIDPGetDatum(&rv->v.replica_id);
	slot->tts_values[Anum_row_version_serial - 1] = Int64GetDatum(rv->v.serial);
	slot->tts_values[Anum_row_version_changed_at - 1] = TimestampTzGetDatum(rv->v.changed_at);
	slot->tts_values[Anum_row_version_deleted - 1] = BoolGetDatum(rv->deleted);
	slot->tts_values[Anum_row_version_partial - 1] = BoolGetDatum(rv->partial);
	if (rv->partial)
	{
		slot->tts_values[Anum_row_version_carry_replica_id - 1] = UUIDPGetDatum(&rv->carry.replica_id);
		slot->tts_values[Anum_row_version_carry_serial - 1] = Int64GetDatum(rv->carry.serial);
		slot->tts_values[Anum_row_version_carry_columns - 1] = dbaccess_names_array(rv->carry_columns);
		slot->tts_values[Anum_row_version_carry_changed_at - 1] = TimestampTzGetDatum(rv->carry.changed_at);
	}
	else
	{
		slot->tts_isnull[Anum_row_version_carry_replica_id - 1] = true;
		slot->tts_isnull[Anum_row_version_carry_serial - 1] = true;
		slot->tts_isnull[Anum_row_version_carry_columns - 1] = true;
		slot->tts_isnull[Anum_row_version_carry_changed_at - 1] = true;
	}
	if (w->cat->row_version_deleted_at)
	{
		slot->tts_values[Anum_row_version_deleted_at - 1] = TimestampTzGetDatum(rv->v.changed_at);
		slot->tts_isnull[Anum_row_version_deleted_at - 1] = !rv->deleted;
	}
	ExecStoreVirtualTuple(slot);
}

/*
 * What is left of the row's carry once a version carrying the columns of
 * image becomes the latest: the carry's columns that image lacks (NIL: no
 * carry any more).  NIL for a row without a carry.
 */
List *
rowversion_carry_left(RowVersion *current, Jsonb *image)
{
	List	   *left = NIL;
	ListCell   *lc;

	if (!current->found || !current->partial || image == NULL)
		return NIL;
	foreach(lc, current->carry_columns)
	{
		JsonbValue	k;

		k.type = jbvString;
		k.val.string.val = lfirst(lc);
		k.val.string.len = strlen(lfirst(lc));
		if (findJsonbValueFromContainer(&image->root, JB_FOBJECT, &k) == NULL)
			left = lappend(left, lfirst(lc));
	}
	return left;
}

/*
 * Record v as the latest version of a row (current is what rowversion_get
 * found for it), with carry (NULL: none) and its columns as the row's
 * carry: the latest version carrying columns v does not (see apply.c).
 */
void
rowversion_put(RowVersionWriter *w, text *relation, ChangeRow *row,
			   RowVersion *current, const Version *v, bool deleted,
			   const Version *carry, List *carry_columns)
{
	if (current->found &&
		!changelog_same_stamp(&current->v.replica_id, current->v.serial, &v->replica_id, v->serial))
		superseded(w, &current->v, current, carry);
	w->superseding = NULL;
	latest_note(&v->replica_id, v->serial, true);
	/* The table's digest: the old live version out, the new one in. */
	if (current->found && !current->deleted)
		digest_note(relation, row->hash, row->key, &current->v.replica_id, current->v.serial, false);
	if (!deleted)
		digest_note(relation, row->hash, row->key, &v->replica_id, v->serial, true);

	current->v = *v;
	current->deleted = deleted;
	current->partial = !deleted && carry != NULL && carry_columns != NIL;
	if (current->partial)
	{
		current->carry = *carry;
		current->carry_columns = carry_columns;
	}
	fill_slot(w, relation, row, current);
	write_version(w, current);
}

/*
 * The row's carry now lacks only columns (those still missing here; none:
 * the carry is done).
 */
void
rowversion_set_carry(RowVersionWriter *w, text *relation, ChangeRow *row,
					 RowVersion *current, List *columns)
{
	current->partial = (columns != NIL);
	current->carry_columns = columns;
	fill_slot(w, relation, row, current);
	write_version(w, current);
}

/*
 * A change was re-issued under (new_id, new_serial): rows whose latest
 * version was the old stamp now name the new one.
 */
void
rowversion_restamp(const ReplstampCatalog *cat, Change *change,
				   const pg_uuid_t *new_id, int64 new_serial)
{
	ChangeRow	rows[2];
	int			n = rowversion_change_rows(change, rows);

	for (int i = 0; i < n; i++)
	{
		Oid			types[7] = {INT8OID, TEXTOID, JSONBOID, UUIDOID, INT8OID, UUIDOID, INT8OID};
		Datum		values[7];
		int			ret;

		values[0] = Int64GetDatum(rows[i].hash);
		values[1] = PointerGetDatum(change->relation);
		values[2] = JsonbPGetDatum(rows[i].key);
		values[3] = UUIDPGetDatum(&change->replica_id);
		values[4] = Int64GetDatum(change->serial);
		values[5] = UUIDPGetDatum(new_id);
		values[6] = Int64GetDatum(new_serial);
		ret = SPI_execute_with_args("UPDATE replstamp.row_version SET "
									"replica_id = CASE WHEN replica_id OPERATOR(pg_catalog.=) $4 "
									"  AND serial OPERATOR(pg_catalog.=) $5 THEN $6 ELSE replica_id END, "
									"serial = CASE WHEN replica_id OPERATOR(pg_catalog.=) $4 "
									"  AND serial OPERATOR(pg_catalog.=) $5 THEN $7 ELSE serial END, "
									"carry_replica_id = CASE WHEN carry_replica_id OPERATOR(pg_catalog.=) $4 "
									"  AND carry_serial OPERATOR(pg_catalog.=) $5 THEN $6 ELSE carry_replica_id END, "
									"carry_serial = CASE WHEN carry_replica_id OPERATOR(pg_catalog.=) $4 "
									"  AND carry_serial OPERATOR(pg_catalog.=) $5 THEN $7 ELSE carry_serial END "
									"WHERE row_hash OPERATOR(pg_catalog.=) $1 "
									"AND relation OPERATOR(pg_catalog.=) $2 "
									"AND pk OPERATOR(pg_catalog.=) $3 "
									"AND ((replica_id OPERATOR(pg_catalog.=) $4 AND serial OPERATOR(pg_catalog.=) $5) "
									" OR (carry_replica_id OPERATOR(pg_catalog.=) $4 AND carry_serial OPERATOR(pg_catalog.=) $5)) "
									"RETURNING NOT deleted AND replica_id OPERATOR(pg_catalog.=) $6 "
									"AND serial OPERATOR(pg_catalog.=) $7",
									7, types, values, NULL, false, 0);
		if (ret != SPI_OK_UPDATE_RETURNING)
			elog(ERROR, "replstamp: could not move a row version: %s", SPI_result_code_string(ret));
		/* A live row's latest version moved: so does its element. */
		for (uint64 k = 0; k < SPI_processed; k++)
		{
			bool		isnull;

			if (!DatumGetBool(SPI_getbinval(SPI_tuptable->vals[k], SPI_tuptable->tupdesc, 1, &isnull)))
				continue;
			digest_note(change->relation, rows[i].hash, rows[i].key,
						&change->replica_id, change->serial, false);
			digest_note(change->relation, rows[i].hash, rows[i].key, new_id, new_serial, true);
		}
	}

	/*
	 * Written now: a rotation is rare, and its commit may come without a
	 * snapshot.
	 */
	digest_flush();
}

/* ---------------------------------------------------------------------
 * TRUNCATE
 *
 * A TRUNCATE of a tracked table is one change.  Its image says which
 * versions of the table's rows the truncating node held when it
 * truncated: {"vector": {id: serial, ...}, "also": {id: [serial, ...]}},
 * every serial of id up to the vector's entry and the listed ones above
 * it (held by a sync that had not finished).  On every node, a row whose
 * latest version is covered is deleted; one whose latest version is not
 * covered (written where the truncating node had not seen it yet) stays.
 * The row's row_version entry keeps its version and becomes a tombstone:
 * a version not covered, arriving later, wins or loses against it as it
 * would have without the TRUNCATE, so every node ends with the same rows
 * whatever the order of arrival.  Every covered version was held by the
 * truncating node, so causal order brings it to each node before the
 * TRUNCATE.
 *
 * The TRUNCATE itself has an entry of its own, a tombstone under a key no
 * row has ({"": "id/serial"}: no column is named ""), so that pruning
 * keeps it as long as a tombstone (a late joiner still gets the versions
 * it covers, and must get it too), and no later change supersedes it.
 * ---------------------------------------------------------------------
 */

/* The key of a TRUNCATE's own row_version entry. */
Jsonb *
rowversion_truncate_key(const pg_uuid_t *id, int64 serial)
{
	char	   *json = psprintf("{\"\": \"%s/" INT64_FORMAT "\"}", catalog_uuid_text(id), serial);

	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(json)));
}

/* Is key a TRUNCATE's own (an object whose one member is named "")? */
bool
rowversion_is_truncate_key(Jsonb *key)
{
	JsonbValue	k;

	if (!JB_ROOT_IS_OBJECT(key) || JB_ROOT_IS_SCALAR(key) || JB_ROOT_COUNT(key) != 1)
		return false;
	k.type = jbvString;
	k.val.string.val = "";
	k.val.string.len = 0;
	return findJsonbValueFromContainer(&key->root, JB_FOBJECT, &k) != NULL;
}

/* The member name of an object, or NULL. */
static JsonbValue *
image_member(JsonbContainer *c, const char *name)
{
	JsonbValue	k;

	k.type = jbvString;
	k.val.string.val = unconstify(char *, name);
	k.val.string.len = strlen(name);
	return findJsonbValueFromContainer(c, JB_FOBJECT, &k);
}

/* Does a TRUNCATE's image cover the version (id, serial)? */
static bool
truncate_covers(Jsonb *image, const char *id, int64 serial)
{
	JsonbValue *part = image_member(&image->root, "vector");
	JsonbValue *v;
	JsonbValue	num;

	if (part && part->type == jbvBinary &&
		(v = image_member(part->val.binary.data, id)) != NULL && v->type == jbvNumeric &&
		serial <= DatumGetInt64(DirectFunctionCall1(numeric_int8, NumericGetDatum(v->val.numeric))))
		return true;
	part = image_member(&image->root, "also");
	if (part == NULL || part->type != jbvBinary ||
		(v = image_member(part->val.binary.data, id)) == NULL || v->type != jbvBinary)
		return false;
	num.type = jbvNumeric;
	num.val.numeric = DatumGetNumeric(DirectFunctionCall1(int8_numeric, Int64GetDatum(serial)));
	return findJsonbValueFromContainer(v->val.binary.data, JB_FARRAY, &num) != NULL;
}

/* image with the member path[0].path[1] set to the JSON value json. */
static Jsonb *
image_set(Jsonb *image, const char *outer, const char *inner, const char *json)
{
	Datum		path[2];

	path[0] = CStringGetTextDatum(outer);
	path[1] = CStringGetTextDatum(inner);
	return DatumGetJsonbP(DirectFunctionCall4(jsonb_set, JsonbPGetDatum(image),
											  PointerGetDatum(construct_array(path, 2, TEXTOID, -1, false, TYPALIGN_INT)),
											  DirectFunctionCall1(jsonb_in, CStringGetDatum(json)),
											  BoolGetDatum(true)));
}

/*
 * A rotation re-issues a TRUNCATE (identity.c) with the changes of old_id
 * from serial from on: those stamps are dropped, and where the history of
 * old_id parted (a node put back in time), other changes carry them.  So
 * the TRUNCATE covers old_id only below from; and the changes of its
 * table re-issued before it, n of them, which had the stamps (old_id,
 * old_serials[i]) and now have (new_id, new_serials[i]), are listed by
 * their new stamps where it covered their old ones.  Its key stays the
 * old one: a key of its own still.
 */
Jsonb *
rowversion_truncate_reissued(Jsonb *image, const pg_uuid_t *old_id, int64 from,
							 const pg_uuid_t *new_id,
							 const int64 *old_serials, const int64 *new_serials, int n)
{
	char	   *old_text = catalog_uuid_text(old_id);
	Jsonb	   *result = image;
	StringInfoData buf;
	bool		any = false;

	if (truncate_covers(image, old_text, from))
		result = image_set(result, "vector", old_text, psprintf(INT64_FORMAT, from - 1));
	initStringInfo(&buf);
	appendStringInfoChar(&buf, '[');
	for (int i = 0; i < n; i++)
		if (new_serials[i] > 0 && truncate_covers(image, old_text, old_serials[i]))
		{
			appendStringInfo(&buf, "%s" INT64_FORMAT, any ? ", " : "", new_serials[i]);
			any = true;
		}
	appendStringInfoChar(&buf, ']');
	if (any)
		result = image_set(result, "also", catalog_uuid_text(new_id), buf.data);
	return result;
}

/* The rows of a table whose latest version a TRUNCATE's image covers. */
#define COVERED_ROWS \
	"SELECT rv.pk, rv.row_hash FROM replstamp.row_version rv " \
	"WHERE rv.relation OPERATOR(pg_catalog.=) $1 AND NOT rv.deleted " \
	"AND (rv.serial OPERATOR(pg_catalog.<=) coalesce((($2 OPERATOR(pg_catalog.->) 'vector') " \
	"      OPERATOR(pg_catalog.->>) rv.replica_id::text)::bigint, 0) " \
	"  OR coalesce(($2 OPERATOR(pg_catalog.->) 'also') OPERATOR(pg_catalog.->) rv.replica_id::text, '[]') " \
	"      OPERATOR(pg_catalog.@>) pg_catalog.to_jsonb(rv.serial))"

/*
 * Apply a TRUNCATE to row_version: every live row whose latest version
 * the change covers becomes a tombstone of that version, after callback
 * (if any) was called with its key (the apply deletes the row from its
 * table there); then the TRUNCATE's own entry.  Returns the rows covered.
 * Rows are read through a cursor, a batch at a time, each in a memory
 * context reset after it.
 */
int64
rowversion_truncate(RowVersionWriter *w, Change *change,
					RowVersionTruncateCallback callback, void *arg)
{
	ReplstampOwnerContext ctx;
	MemoryContext caller = CurrentMemoryContext;
	MemoryContext rowcxt = AllocSetContextCreate(caller, "replstamp truncate row",
												 ALLOCSET_DEFAULT_SIZES);
	Oid			types[2] = {TEXTOID, JSONBOID};
	Datum		values[2];
	Portal		portal;
	int64		covered = 0;
	ChangeRow	own[2];
	RowVersion	cur;
	Version		v;

	Assert(change->op == 'T' && change->image != NULL);
	values[0] = PointerGetDatum(change->relation);
	values[1] = JsonbPGetDatum(change->image);
	dbaccess_become_owner(&ctx);
	SPI_connect();
	portal = SPI_cursor_open_with_args(NULL, COVERED_ROWS, 2, types, values, NULL, false, 0);
	for (;;)
	{
		SPI_cursor_fetch(portal, true, 1000);
		if (SPI_processed == 0)
			break;
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			HeapTuple	tup = SPI_tuptable->vals[i];
			bool		isnull;
			ChangeRow	row;
			MemoryContext old = MemoryContextSwitchTo(rowcxt);

			CHECK_FOR_INTERRUPTS();
			row.key = DatumGetJsonbPCopy(SPI_getbinval(tup, SPI_tuptable->tupdesc, 1, &isnull));
			row.hash = DatumGetInt64(SPI_getbinval(tup, SPI_tuptable->tupdesc, 2, &isnull));
			row.deleted = true;
			if (callback)
				callback(row.key, arg);
			rowversion_get(w, change->relation, &row, &cur);
			if (cur.found && !cur.deleted)
			{
				rowversion_put(w, change->relation, &row, &cur, &cur.v, true, NULL, NIL);
				covered++;
			}
			MemoryContextSwitchTo(old);
			MemoryContextReset(rowcxt);
		}
		SPI_freetuptable(SPI_tuptable);
	}
	SPI_cursor_close(portal);
	SPI_finish();
	dbaccess_restore_user(&ctx);
	MemoryContextDelete(rowcxt);

	(void) rowversion_change_rows(change, own);
	v.changed_at = change->changed_at;
	v.replica_id = change->replica_id;
	v.serial = change->serial;
	rowversion_get(w, change->relation, &own[0], &cur);
	if (!cur.found)
		rowversion_put(w, change->relation, &own[0], &cur, &v, true, NULL, NIL);
	return covered;
}

/* ---------------------------------------------------------------------
 * Reconciling the changes stamped here
 * ---------------------------------------------------------------------
 */

ReconcileState *
rowversion_reconcile_begin(MemoryContext cxt)
{
	ReconcileState *st = MemoryContextAllocZero(cxt, sizeof(ReconcileState));

	st->cxt = cxt;
	return st;
}

/* Read this node's replica IDs and how far each was reconciled. */
static void
load_ids(ReconcileState *st)
{
	MemoryContext old;
	ReplstampOwnerContext ctx;

	dbaccess_become_owner(&ctx);
	SPI_connect();
	if (SPI_execute("SELECT replica_id, reconciled_upto FROM replstamp.replica_history",
					true, 0) != SPI_OK_SELECT)
		elog(ERROR, "replstamp: could not read the replica history");
	old = MemoryContextSwitchTo(st->cxt);
	if (st->ids)
	{
		for (int i = 0; i < st->nids; i++)
			if (st->ids[i].holes)
				pfree(st->ids[i].holes);
		pfree(st->ids);
	}
	st->nids = SPI_processed;
	st->ids = palloc0(sizeof(OwnIdState) * Max(st->nids, 1));
	for (int i = 0; i < st->nids; i++)
	{
		bool		isnull;
		OwnIdState *o = &st->ids[i];

		memcpy(&o->id, DatumGetUUIDP(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc,
												   1, &isnull)), sizeof(pg_uuid_t));
		o->done_upto = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc,
												   2, &isnull));
		o->saved_upto = o->done_upto;
		o->hi = o->done_upto;
	}
	MemoryContextSwitchTo(old);
	SPI_finish();
	dbaccess_restore_user(&ctx);
	st->current_id = catalog_node()->replica_id;
	st->loaded = true;
}

/*
 * The latest local version of each row met by one reconciliation: a row
 * written many times since the last look is written to row_version once.
 * (Writing it each time made a chain of versions of one row_version tuple
 * in one transaction, which every later lookup of the row walked: a hot
 * row made the reconciliation of a backlog quadratic.)  Versions met and
 * superseded within the same look never were the latest recorded, so
 * pruning needs no queue entry for them: it finds them superseded.
 */
typedef struct PendingRow
{
	int64		hash;			/* hash key: the row hash */
	struct PendingRow *next;	/* other rows with the same hash */
	text	   *relation;
	Jsonb	   *key;
	Version		v;
	bool		deleted;
} PendingRow;

typedef struct Pending
{
	MemoryContext cxt;
	HTAB	   *rows;
	RowVersionWriter *w;		/* where they are written */
	MemoryContext parent;		/* of cxt: the reconciliation's */
} Pending;

static void pending_write(Pending *pd, RowVersionWriter *w);

static void
pending_begin(Pending *pd, RowVersionWriter *w)
{
	HASHCTL		ctl;

	if (pd->w == NULL)
		pd->parent = CurrentMemoryContext;
	pd->w = w;
	pd->cxt = AllocSetContextCreate(pd->parent, "replstamp reconcile",
									ALLOCSET_DEFAULT_SIZES);
	ctl.keysize = sizeof(int64);
	ctl.entrysize = sizeof(PendingRow);
	ctl.hcxt = pd->cxt;
	pd->rows = hash_create("replstamp reconcile rows", 256, &ctl,
						   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
}

/*
 * Note one local change, for each of its rows if it is the latest met.  A
 * TRUNCATE is recorded at once, after the rows noted before it: the rows
 * it covers are those written before it.
 */
static void
pending_add(Pending *pd, Change *change)
{
	ChangeRow	rows[2];
	int			n;
	Version		v;

	/* A schema change is no row's version (ddl.c). */
	if (change->op == 'S')
		return;
	if (change->op == 'T')
	{
		pending_write(pd, pd->w);
		(void) rowversion_truncate(pd->w, change, NULL, NULL);
		pending_begin(pd, pd->w);
		return;
	}
	n = rowversion_change_rows(change, rows);

	v.changed_at = change->changed_at;
	v.replica_id = change->replica_id;
	v.serial = change->serial;
	for (int i = 0; i < n; i++)
	{
		bool		found;
		PendingRow *head = hash_search(pd->rows, &rows[i].hash, HASH_ENTER, &found);
		PendingRow *r = NULL;
		MemoryContext old;

		if (found)
		{
			for (r = head; r; r = r->next)
				if (rowimage_bytes_equal(r->relation, change->relation) &&
					jsonb_equal(r->key, rows[i].key))
					break;
			if (r && rowversion_cmp(&v, &r->v) <= 0)
				continue;
		}
		old = MemoryContextSwitchTo(pd->cxt);
		if (r == NULL)
		{
			/* The hash table's entry is the first row of the chain. */
			r = found ? palloc0(sizeof(PendingRow)) : head;
			if (found)
			{
				r->next = head->next;
				head->next = r;
			}
			else
				r->next = NULL;
			r->relation = DatumGetTextPCopy(PointerGetDatum(change->relation));
			r->key = DatumGetJsonbPCopy(JsonbPGetDatum(rows[i].key));
		}
		r->v = v;
		r->deleted = rows[i].deleted;
		MemoryContextSwitchTo(old);
	}
}

/* Record in row_version each row noted that is later than what it holds. */
static void
pending_write(Pending *pd, RowVersionWriter *w)
{
	HASH_SEQ_STATUS seq;
	PendingRow *head;

	hash_seq_init(&seq, pd->rows);
	while ((head = hash_seq_search(&seq)) != NULL)
	{
		for (PendingRow *r = head; r; r = r->next)
		{
			ChangeRow	row;
			RowVersion	cur;

			row.hash = head->hash;
			row.key = r->key;
			row.deleted = r->deleted;
			rowversion_get(w, r->relation, &row, &cur);
			if (!cur.found || rowversion_cmp(&r->v, &cur.v) > 0)
			{
				List	   *left = NIL;
				Version		carry = cur.carry;

				/*
				 * A local change carries every column this node has: what is
				 * left of a carry (rare: a rolling schema change) is the
				 * carry's columns the change's image lacks, read back from
				 * the log.
				 */
				if (cur.found && cur.partial)
				{
					Change		change;

					if (changelog_fetch(w->cat, &r->v.replica_id, r->v.serial, &change))
						left = rowversion_carry_left(&cur, change.image);
					else
						left = cur.carry_columns;
				}
				rowversion_put(w, r->relation, &row, &cur, &r->v, r->deleted,
							   left ? &carry : NULL, left);
			}
		}
	}
	MemoryContextDelete(pd->cxt);
}

typedef struct ScanArg
{
	Pending    *pd;
	ReconcileState *st;
	OwnIdState *o;
	int64		lus;
	int64		prev;
} ScanArg;

static void
add_hole(ReconcileState *st, OwnIdState *o, int64 serial)
{
	if (o->nholes >= o->maxholes)
	{
		o->maxholes = Max(16, o->maxholes * 2);
		o->holes = o->holes ?
			repalloc_huge(o->holes, sizeof(int64) * o->maxholes) :
			MemoryContextAlloc(st->cxt, sizeof(int64) * o->maxholes);
	}
	o->holes[o->nholes++] = serial;
}

static bool
scan_callback(Change *change, void *arg)
{
	ScanArg    *a = arg;

	/*
	 * Serials skipped between two we see were not committed when we looked:
	 * those at or above the lowest uncommitted serial may still commit (they
	 * are looked at again), those below it never will.
	 */
	for (int64 s = Max(a->prev + 1, a->lus); s < change->serial; s++)
		add_hole(a->st, a->o, s);
	a->prev = change->serial;
	if (change->serial > a->o->hi)
		a->o->hi = change->serial;
	if (!change->applied)
		pending_add(a->pd, change);
	return true;
}

/*
 * Bring every change stamped here and committed by now into row_version.
 */
void
rowversion_reconcile(RowVersionWriter *w, ReconcileState *st)
{
	const ReplstampCatalog *cat = w->cat;
	uint64		activity = serial_activity();
	bool		holes = false;
	int64		lus;
	int64		next;
	Pending		pd;

	if (!st->loaded ||
		memcmp(catalog_node()->replica_id.data, st->current_id.data, UUID_LEN) != 0)
		load_ids(st);
	for (int i = 0; i < st->nids; i++)
		holes |= st->ids[i].nholes > 0;
	if (st->looked && st->activity == activity && !holes && !st->inflight)
		return;

	/*
	 * Taken before the look: a serial taken during it makes the next look
	 * read again.
	 */
	st->activity = activity;
	st->looked = true;
	lus = serial_lus(cat->serial_seq);
	next = serial_next(cat->serial_seq);
	/* A serial in flight now may commit without another being taken. */
	st->inflight = lus < next;

	pd.w = NULL;
	pending_begin(&pd, w);
	for (int i = 0; i < st->nids; i++)
	{
		OwnIdState *o = &st->ids[i];
		ScanArg		arg;
		int			keep = 0;

		/* Serials that were in flight at the last look. */
		for (int h = 0; h < o->nholes; h++)
		{
			Change		change;

			if (changelog_fetch(cat, &o->id, o->holes[h], &change))
			{
				if (!change.applied)
					pending_add(&pd, &change);
			}
			else if (o->holes[h] >= lus)
				o->holes[keep++] = o->holes[h];
		}
		o->nholes = keep;

		arg.pd = &pd;
		arg.st = st;
		arg.o = o;
		arg.lus = lus;
		arg.prev = o->hi;

		/*
		 * Up to the serials taken before the look: changes that commit while
		 * it reads would keep a busy node's look going (and they are read at
		 * the next one, which starts from the highest serial seen).
		 */
		(void) changelog_scan(cat, &o->id, o->hi, next - 1, false, scan_callback, &arg);

		/* Every serial below the LUS is final, and was seen now or before. */
		o->done_upto = Max(o->done_upto, lus - 1);
	}
	pending_write(&pd, w);
}

/*
 * Save how far each ID is reconciled, in the current transaction.
 */
void
rowversion_reconcile_save(ReconcileState *st)
{
	ReplstampOwnerContext ctx;
	bool		connected = false;

	for (int i = 0; i < st->nids; i++)
	{
		OwnIdState *o = &st->ids[i];
		Oid			types[2] = {UUIDOID, INT8OID};
		Datum		values[2];

		if (o->done_upto <= o->saved_upto)
			continue;
		if (!connected)
		{
			dbaccess_become_owner(&ctx);
			SPI_connect();
			connected = true;
		}
		values[0] = UUIDPGetDatum(&o->id);
		values[1] = Int64GetDatum(o->done_upto);
		if (SPI_execute_with_args("UPDATE replstamp.replica_history SET reconciled_upto = $2 "
								  "WHERE replica_id OPERATOR(pg_catalog.=) $1",
								  2, types, values, NULL, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "replstamp: could not save the reconciliation");
		o->saved_upto = o->done_upto;
	}
	if (connected)
	{
		SPI_finish();
		dbaccess_restore_user(&ctx);
	}
}

/* ---------------------------------------------------------------------
 * One sync at a time, and prunes between its pages
 * ---------------------------------------------------------------------
 */

/* An advisory lock tag in a space of its own (field4 3 and up: not a SQL function's). */
static LOCKTAG
locktag(uint16 which)
{
	LOCKTAG		tag;

	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, 0x72737470, 0x73796e63, which);
	return tag;
}

#define WRITER_LOCK		3
#define PAGE_LOCK		4

/* How many times this backend holds the sync lock, for Asserts. */
static int	sync_lock_count = 0;

/*
 * Syncs of a database run one at a time: each holds this session lock (an
 * advisory lock, shown in pg_locks) across its transactions.  Call inside
 * a transaction.
 */
void
rowversion_lock(void)
{
	LOCKTAG		tag = locktag(WRITER_LOCK);

	Assert(IsTransactionState());
	(void) LockAcquire(&tag, ExclusiveLock, true, false);
	sync_lock_count++;
}

void
rowversion_unlock(void)
{
	LOCKTAG		tag = locktag(WRITER_LOCK);

	if (LockRelease(&tag, ExclusiveLock, true))
		sync_lock_count--;
}

/*
 * The sync lock until the end of the current transaction: for a change to
 * the peers that no sync may overtake before it commits (leave()).  A sync
 * that waits for it reads the peers after the commit.
 */
void
rowversion_lock_xact(void)
{
	LOCKTAG		tag = locktag(WRITER_LOCK);

	Assert(IsTransactionState());
	(void) LockAcquire(&tag, ExclusiveLock, false, false);
}

/* Does this backend hold the sync lock (rowversion_lock())?  For Asserts. */
bool
rowversion_lock_held(void)
{
	return sync_lock_count > 0;
}

/*
 * A sync's page (share) and a prune's batch (exclusive) exclude each other
 * until their transactions end: a batch sees every page before it whole
 * (the row versions it superseded, the conflicts it recorded) and a page
 * sees how far the batches before it walked.  A prune thus waits for one
 * page at most, never for a whole sync, which may spend minutes waiting
 * for its peer.  Call at the start of the transaction: its active snapshot
 * is taken anew once the lock is held.
 */
void
rowversion_page_lock(bool prune)
{
	LOCKTAG		tag = locktag(PAGE_LOCK);

	(void) LockAcquire(&tag, prune ? ExclusiveLock : ShareLock, false, false);
	if (ActiveSnapshotSet())
	{
		PopActiveSnapshot();
		PushActiveSnapshot(GetTransactionSnapshot());
	}
}

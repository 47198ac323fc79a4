/*-------------------------------------------------------------------------
 *
 * conflicts.c
 *		What replstamp.conflicts keeps is used for: replstamp.restore_version()
 *		makes the version that lost a conflict current again, as a new
 *		change made here.  The conflicts themselves are recorded where they
 *		are decided: the apply (apply.c) and the constraints it keeps
 *		(constraints.c); prune.c removes them after
 *		replstamp.conflict_retention.
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/relation.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/transam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/interrupt.h"
#include "storage/bufmgr.h"
#include "storage/itemptr.h"
#include "storage/latch.h"
#include "storage/lock.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/regproc.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/xid8.h"

#include "catalog.h"
#include "changelog.h"
#include "compat.h"
#include "dbaccess.h"
#include "errors.h"
#include "identity.h"
#include "latest.h"
#include "rowimage.h"
#include "rowversion.h"
#include "serial.h"
#include "workers.h"
PG_FUNCTION_INFO_V1(replstamp_restore_version);

/* ---------------------------------------------------------------------
 * replstamp.restore_version()
 * ---------------------------------------------------------------------
 */

/*
 * The copy of a version that lost which the latest conflict naming it
 * keeps (a change pruned from the log since), as a change: relation, key
 * of the row, operation and image.  In the caller's memory.
 */
static bool
conflict_copy(const pg_uuid_t *id, int64 serial, Change *out)
{
	MemoryContext caller = CurrentMemoryContext;
	ReplstampOwnerContext ctx;
	Oid			types[2] = {UUIDOID, INT8OID};
	Datum		values[2] = {UUIDPGetDatum(id), Int64GetDatum(serial)};
	bool		found;

	dbaccess_become_owner(&ctx);
	SPI_connect();
	dbaccess_spi_exec(psprintf("SELECT relation, pk, loser_op, loser_image, loser_changed_at "
							   "FROM %s "
							   "WHERE loser_replica_id OPERATOR(pg_catalog.=) $1 "
							   "AND loser_serial OPERATOR(pg_catalog.=) $2 AND loser_op IS NOT NULL "
							   "ORDER BY id DESC LIMIT 1", catalog_get(false)->conflict_name),
					  2, types, values, NULL, SPI_OK_SELECT);
	found = SPI_processed == 1;
	if (found)
	{
		HeapTuple	t = SPI_tuptable->vals[0];
		TupleDesc	d = SPI_tuptable->tupdesc;
		MemoryContext spi = MemoryContextSwitchTo(caller);
		bool		isnull;
		Datum		image;

		memset(out, 0, sizeof(Change));
		out->replica_id = *id;
		out->serial = serial;
		out->relation = DatumGetTextPCopy(SPI_getbinval(t, d, 1, &isnull));
		out->pk = DatumGetJsonbPCopy(SPI_getbinval(t, d, 2, &isnull));
		out->op = TextDatumGetCString(SPI_getbinval(t, d, 3, &isnull))[0];
		image = SPI_getbinval(t, d, 4, &isnull);
		out->image = isnull ? NULL : DatumGetJsonbPCopy(image);
		out->changed_at = DatumGetTimestampTz(SPI_getbinval(t, d, 5, &isnull));
		MemoryContextSwitchTo(spi);
	}
	SPI_finish();
	dbaccess_restore_user(&ctx);
	return found;
}

/*
 * replstamp.restore_version(replica_id, serial): make the version of a row
 * that change wrote (or its deletion) the current one again, as a new
 * change made here, by the caller, with the caller's privileges: peers
 * apply it like any other, and as the latest it wins everywhere.
 */
Datum
replstamp_restore_version(PG_FUNCTION_ARGS)
{
	pg_uuid_t  *id = PG_GETARG_UUID_P(0);
	int64		serial = PG_GETARG_INT64(1);
	const ReplstampCatalog *cat = catalog_get_v11("replstamp.restore_version()");
	Change		c;
	List	   *names;
	Oid			relid;
	Relation	rel;
	RowLayout  *layout;
	TupleDesc	desc;
	char	   *qname;
	StringInfoData sql;
	Datum	   *values;
	bool	   *nulls;
	bool	   *present;
	Oid		   *types;
	Datum	   *params;
	char	   *pnulls;
	int			np = 0;
	int			nestlevel;

	if (!changelog_fetch(cat, id, serial, &c) && !conflict_copy(id, serial, &c))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("change %s/" INT64_FORMAT " is not held here", catalog_uuid_text(id), serial),
				 errhint("Changes every node holds are pruned unless they are the latest of their row; replstamp.conflicts lists the versions that can be restored, for replstamp.conflict_retention.")));
	if (c.op == 'S' || c.op == 'T')
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("change %s/" INT64_FORMAT " is a %s, not a version of a row", catalog_uuid_text(id), serial,
						changelog_op_name(c.op)),
				 errhint("replstamp.restore_version() restores a version an INSERT, UPDATE or DELETE wrote.")));
	names = stringToQualifiedNameList(text_to_cstring(c.relation));
	relid = RangeVarGetRelid(makeRangeVarFromNameList(names), RowExclusiveLock, false);
	rel = table_open(relid, NoLock);
	layout = rowimage_layout(rel);
	desc = RelationGetDescr(rel);
	qname = layout->relname;
	if (!rowimage_key_matches(layout, c.pk))
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("the row key of table %s is not the one of that change", qname),
				 errdetail("The change identifies its row by (%s), the table by (%s).",
						   rowimage_key_names(c.pk), rowimage_layout_key_names(layout))));

	nestlevel = NewGUCNestLevel();
	rowimage_enter_input_settings(false);
	values = palloc0(sizeof(Datum) * desc->natts);
	nulls = palloc0(sizeof(bool) * desc->natts);
	present = palloc0(sizeof(bool) * desc->natts);
	types = palloc(sizeof(Oid) * (desc->natts + INDEX_MAX_KEYS));
	params = palloc(sizeof(Datum) * (desc->natts + INDEX_MAX_KEYS));
	pnulls = palloc(desc->natts + INDEX_MAX_KEYS);
	initStringInfo(&sql);

	if (c.op == 'D')
	{
		rowimage_decode_key(layout, c.pk, values, nulls);
		appendStringInfo(&sql, "DELETE FROM %s WHERE ", qname);
		for (int k = 0; k < layout->npk; k++)
		{
			int			a = layout->pk[k].attnum - 1;

			appendStringInfo(&sql, "%s%s OPERATOR(pg_catalog.=) $%d", k ? " AND " : "",
							 quote_identifier(layout->pk[k].name), np + 1);
			types[np] = TupleDescAttr(desc, a)->atttypid;
			params[np] = values[a];
			pnulls[np++] = ' ';
		}
	}
	else
	{
		StringInfoData cols,
					args,
					sets,
					keys;

		bool		override = false;

		(void) rowimage_decode(layout, c.image, values, nulls, present, NULL);
		initStringInfo(&cols);
		initStringInfo(&args);
		initStringInfo(&sets);
		initStringInfo(&keys);
		for (int a = 0; a < desc->natts; a++)
		{
			Form_pg_attribute att = TupleDescAttr(desc, a);
			const char *col;

			/* A generated column is computed, never written. */
			if (!present[a] || att->attgenerated)
				continue;
			col = quote_identifier(NameStr(att->attname));
			appendStringInfo(&cols, "%s%s", np ? ", " : "", col);
			appendStringInfo(&args, "%s$%d", np ? ", " : "", np + 1);

			/*
			 * GENERATED ALWAYS AS IDENTITY: the INSERT takes the version's
			 * value with OVERRIDING SYSTEM VALUE; an UPDATE can set such a
			 * column only to DEFAULT, so the row keeps its value (a key
			 * column's is the version's anyway: ON CONFLICT matched it).
			 */
			if (att->attidentity == ATTRIBUTE_IDENTITY_ALWAYS)
				override = true;
			else
				appendStringInfo(&sets, "%s%s = EXCLUDED.%s", sets.len ? ", " : "", col, col);
			types[np] = att->atttypid;
			params[np] = values[a];
			pnulls[np++] = nulls[a] ? 'n' : ' ';
		}
		for (int k = 0; k < layout->npk; k++)
			appendStringInfo(&keys, "%s%s", k ? ", " : "", quote_identifier(layout->pk[k].name));
		appendStringInfo(&sql, "INSERT INTO %s (%s) %sVALUES (%s) ON CONFLICT (%s) ",
						 qname, cols.data, override ? "OVERRIDING SYSTEM VALUE " : "",
						 args.data, keys.data);
		if (sets.len > 0)
			appendStringInfo(&sql, "DO UPDATE SET %s", sets.data);
		else
			appendStringInfoString(&sql, "DO NOTHING");
	}
	table_close(rel, NoLock);

	/*
	 * As the caller, with the caller's privileges: the stamp trigger stamps
	 * it.
	 */
	SPI_connect();
	if (SPI_execute_with_args(sql.data, np, types, params, pnulls, false, 0) < 0)
		elog(ERROR, "replstamp: could not restore the version");
	if (SPI_processed == 0)
		ereport(NOTICE,
				(errmsg("the row of that change is not here, nothing to delete")));
	SPI_finish();
	AtEOXact_GUC(false, nestlevel);
	PG_RETURN_VOID();
}

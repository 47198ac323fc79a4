/*-------------------------------------------------------------------------
 *
 * rowimage.c
 *		Row images: a row of a tracked table as a jsonb object keyed by
 *		column name, that reads back to exactly the same values on every
 *		node, whatever the session settings of the writer and the reader.
 *
 * Encoding: booleans as JSON booleans; integers and finite numerics as JSON
 * numbers; money as a JSON number holding the stored amount (its text form
 * depends on lc_monetary); everything else as the text its output function
 * gives under canonical settings: DateStyle ISO, IntervalStyle postgres,
 * TimeZone UTC, extra_float_digits 1 (shortest exact), bytea_output hex,
 * and, for types that need them, lc_monetary C and search_path pg_catalog.
 * Only columns whose text form depends on a setting pay for it: their
 * types are classified once per table (arrays, ranges, composites and
 * domains by what they contain; types of other extensions are assumed to
 * depend).  The five output settings are swapped around the output calls
 * directly (they are plain variables the output functions read); the two
 * others need the GUC machinery and are set in a GUC nest level.
 *
 * Keys: nodes identify a row by its key image (rowimage_row_hash(), and
 * the row_version lookup compares images), so two values the primary key
 * treats as equal must have one image.  track() accepts only such keys
 * (rowimage_key_inexact()): not float 0 and -0, interval 1 day and 24
 * hours, alice and ALICE under a nondeterministic collation.
 *
 * Decoding: each value goes through the column type's input function with
 * the column's type modifier, as COPY and INSERT do (a value too long for
 * varchar(5) is an error, numeric(6,1) rounds), under canonical settings
 * the caller establishes once (rowimage_enter_input_settings()).
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/genam.h"
#include "access/nbtree.h"
#include "access/relation.h"
#include "catalog/partition.h"
#include "catalog/pg_range.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "miscadmin.h"
#include "pgtime.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/bytea.h"
#include "utils/cash.h"
#include "utils/float.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/rel.h"
#include "utils/relcache.h"
#include "utils/syscache.h"
#include "utils/typcache.h"
#include "utils/xml.h"

#include "compat.h"
#include "errors.h"
#include "rowimage.h"
#include "stamp.h"

static HTAB *layouts = NULL;
static pg_tz *utc_tz = NULL;

typedef struct NameEntry
{
	char		name[NAMEDATALEN];	/* hash key */
	int			index;
} NameEntry;

static void
layout_callback(Datum arg, Oid relid)
{
	HASH_SEQ_STATUS status;
	RowLayout  *layout;

	if (layouts == NULL)
		return;
	if (OidIsValid(relid))
	{
		layout = hash_search(layouts, &relid, HASH_FIND, NULL);
		if (layout)
			layout->valid = false;
		return;
	}
	hash_seq_init(&status, layouts);
	while ((layout = hash_seq_search(&status)) != NULL)
		layout->valid = false;
}

/*
 * Register the invalidation callback.  Called from _PG_init.
 */
void
rowimage_init(void)
{
	CacheRegisterRelcacheCallback(layout_callback, (Datum) 0);
}

/*
 * Does the text form of values of this type depend on session settings?
 */
static ImageSensitivity
type_sensitivity(Oid typid, int depth)
{
	HeapTuple	tup;
	Form_pg_type typ;
	ImageSensitivity result = SENSITIVE_NONE;

	if (depth > 16)
		return SENSITIVE_GUC;
	switch (typid)
	{
		case DATEOID:
		case TIMEOID:
		case TIMETZOID:
		case TIMESTAMPOID:
		case TIMESTAMPTZOID:
		case INTERVALOID:
		case FLOAT4OID:
		case FLOAT8OID:
		case BYTEAOID:
		case POINTOID:
		case LSEGOID:
		case PATHOID:
		case BOXOID:
		case POLYGONOID:
		case LINEOID:
		case CIRCLEOID:
			return SENSITIVE_OUTPUT;
		case CASHOID:			/* lc_monetary */
		case REGCLASSOID:		/* search_path, and the rest likewise */
		case REGPROCOID:
		case REGPROCEDUREOID:
		case REGOPEROID:
		case REGOPERATOROID:
		case REGTYPEOID:
		case REGCONFIGOID:
		case REGDICTIONARYOID:
		case REGNAMESPACEOID:
		case REGROLEOID:
		case REGCOLLATIONOID:
			return SENSITIVE_GUC;
		default:
			break;
	}

	tup = SearchSysCache1(TYPEOID, ObjectIdGetDatum(typid));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for type %u", typid);
	typ = (Form_pg_type) GETSTRUCT(tup);
	switch (typ->typtype)
	{
		case TYPTYPE_DOMAIN:
			result = type_sensitivity(typ->typbasetype, depth + 1);
			break;
		case TYPTYPE_RANGE:
			result = type_sensitivity(get_range_subtype(typid), depth + 1);
			break;
		case TYPTYPE_MULTIRANGE:
			result = type_sensitivity(get_multirange_range(typid), depth + 1);
			break;
		case TYPTYPE_COMPOSITE:
			{
				TupleDesc	desc = lookup_rowtype_tupdesc(typid, -1);

				for (int i = 0; i < desc->natts; i++)
				{
					Form_pg_attribute att = TupleDescAttr(desc, i);

					if (!att->attisdropped)
						result = Max(result, type_sensitivity(att->atttypid, depth + 1));
				}
				ReleaseTupleDesc(desc);
			}
			break;
		case TYPTYPE_BASE:
			if (IsTrueArrayType(typ))
				result = type_sensitivity(typ->typelem, depth + 1);
			else if (typid >= FirstNormalObjectId)
				result = SENSITIVE_OUTPUT;	/* another extension's: be safe */
			break;
		default:
			break;
	}
	ReleaseSysCache(tup);
	return result;
}

static void
column_init(ImageColumn *col, Form_pg_attribute att, MemoryContext cxt)
{
	col->attnum = att->attnum;
	col->name = MemoryContextStrdup(cxt, NameStr(att->attname));
	col->namelen = strlen(col->name);
	col->typid = att->atttypid;
	col->typmod = att->atttypmod;
	col->in_ready = false;
	col->sensitivity = SENSITIVE_NONE;
	switch (getBaseType(att->atttypid) == att->atttypid ? att->atttypid : InvalidOid)
	{
		case BOOLOID:
			col->kind = IMAGE_BOOL;
			break;
		case INT2OID:
			col->kind = IMAGE_INT2;
			break;
		case INT4OID:
			col->kind = IMAGE_INT4;
			break;
		case INT8OID:
			col->kind = IMAGE_INT8;
			break;
		case NUMERICOID:
			col->kind = IMAGE_NUMERIC;
			break;
		case CASHOID:
			col->kind = IMAGE_MONEY;
			break;
		default:
			{
				Oid			outfunc;
				bool		isvarlena;

				col->kind = IMAGE_TEXT;
				col->sensitivity = type_sensitivity(att->atttypid, 0);
				getTypeOutputInfo(att->atttypid, &outfunc, &isvarlena);
				fmgr_info_cxt(outfunc, &col->out, cxt);
			}
			break;
	}
}

/*
 * The partitioned table whose tracking covers rel, if rel is a partition
 * (or a partitioned table under it) that carries the stamp trigger as a
 * clone: the ancestor whose stamp trigger is its own.  Its changes are
 * stamped, and its rows known on every node, under that table's name.
 * InvalidOid if there is none.  Read when the layout is built; creating or
 * dropping the trigger on the ancestor, attaching or detaching the
 * partition, invalidate the partition's relcache entry, and so its layout.
 */
static Oid
tracked_ancestor(Relation rel)
{
	List	   *ancestors;
	ListCell   *lc;
	Oid			root = InvalidOid;

	if (!rel->rd_rel->relispartition || rel->trigdesc == NULL)
		return InvalidOid;
	ancestors = get_partition_ancestors(RelationGetRelid(rel));
	foreach(lc, ancestors)
	{
		Relation	a = relation_open(lfirst_oid(lc), AccessShareLock);
		TriggerDesc *td = a->trigdesc;

		for (int i = 0; td != NULL && i < td->numtriggers; i++)
			if (strcmp(td->triggers[i].tgname, STAMP_TRIGGER_NAME) == 0 &&
				!td->triggers[i].tgisclone)
				root = RelationGetRelid(a);
		relation_close(a, AccessShareLock);
	}
	return root;
}

static void
layout_build(RowLayout *layout, Relation rel)
{
	Oid			root = tracked_ancestor(rel);

	TupleDesc	desc = RelationGetDescr(rel);
	MemoryContext old;

	if (layout->cxt)
		MemoryContextReset(layout->cxt);
	else
		layout->cxt = AllocSetContextCreate(CacheMemoryContext,
											"replstamp table layout",
											ALLOCSET_SMALL_SIZES);
	old = MemoryContextSwitchTo(layout->cxt);

	if (OidIsValid(root))
		layout->relname = quote_qualified_identifier(get_namespace_name(get_rel_namespace(root)),
													 get_rel_name(root));
	else
		layout->relname = quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
													 RelationGetRelationName(rel));
	layout->relname_text = cstring_to_text(layout->relname);
	layout->sensitivity = SENSITIVE_NONE;
	layout->byname = NULL;

	layout->cols = palloc(sizeof(ImageColumn) * Max(desc->natts, 1));
	layout->ncols = 0;
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		ImageColumn *col;

		if (att->attisdropped || att->attgenerated)
			continue;
		col = &layout->cols[layout->ncols++];
		column_init(col, att, layout->cxt);
		layout->sensitivity = Max(layout->sensitivity, col->sensitivity);
	}

	layout->pkoid = rowimage_key_index(rel);
	layout->npk = 0;
	layout->pk = NULL;
	if (OidIsValid(layout->pkoid))
	{
		Relation	pkrel = index_open(layout->pkoid, AccessShareLock);

		layout->npk = pkrel->rd_index->indnkeyatts;
		layout->pk = palloc(sizeof(ImageColumn) * layout->npk);
		for (int i = 0; i < layout->npk; i++)
		{
			column_init(&layout->pk[i],
						TupleDescAttr(desc, pkrel->rd_index->indkey.values[i] - 1),
						layout->cxt);
			layout->sensitivity = Max(layout->sensitivity, layout->pk[i].sensitivity);
		}
		index_close(pkrel, AccessShareLock);
	}

	MemoryContextSwitchTo(old);
	layout->valid = true;
}

/*
 * The column layout of a table, built once and kept until a relcache
 * invalidation of the table.
 */
RowLayout *
rowimage_layout(Relation rel)
{
	Oid			relid = RelationGetRelid(rel);
	RowLayout  *layout;
	bool		found;

	if (layouts == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(RowLayout);
		ctl.hcxt = CacheMemoryContext;
		layouts = hash_create("replstamp table layouts", 64, &ctl,
							  HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}

	layout = hash_search(layouts, &relid, HASH_ENTER, &found);
	if (!found)
	{
		layout->valid = false;
		layout->cxt = NULL;
	}
	if (!layout->valid)
		layout_build(layout, rel);
	return layout;
}

/* ---------------------------------------------------------------------
 * Encoding
 * ---------------------------------------------------------------------
 */

static void
column_value(ImageColumn *col, Datum value, bool isnull, JsonbValue *v)
{
	if (isnull)
	{
		v->type = jbvNull;
		return;
	}
	switch (col->kind)
	{
		case IMAGE_BOOL:
			v->type = jbvBool;
			v->val.boolean = DatumGetBool(value);
			return;
		case IMAGE_INT2:
			v->type = jbvNumeric;
			v->val.numeric = int64_to_numeric(DatumGetInt16(value));
			return;
		case IMAGE_INT4:
			v->type = jbvNumeric;
			v->val.numeric = int64_to_numeric(DatumGetInt32(value));
			return;
		case IMAGE_INT8:
		case IMAGE_MONEY:
			v->type = jbvNumeric;
			v->val.numeric = int64_to_numeric(DatumGetInt64(value));
			return;
		case IMAGE_NUMERIC:
			{
				Numeric		num = DatumGetNumeric(value);

				/* JSON has no NaN or Infinity: those go as text */
				if (!numeric_is_nan(num) && !numeric_is_inf(num))
				{
					v->type = jbvNumeric;
					v->val.numeric = num;
					return;
				}
				v->type = jbvString;
				v->val.string.val = DatumGetCString(DirectFunctionCall1(numeric_out,
																		value));
				v->val.string.len = strlen(v->val.string.val);
				return;
			}
		case IMAGE_TEXT:
			v->type = jbvString;
			v->val.string.val = OutputFunctionCall(&col->out, value);
			v->val.string.len = strlen(v->val.string.val);
			return;
	}
}

static Jsonb *
build_image(ImageColumn *cols, int ncols, TupleDesc desc, HeapTuple tuple)
{
	JsonbParseState *state = NULL;
	JsonbValue *result;

	pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	for (int i = 0; i < ncols; i++)
	{
		ImageColumn *col = &cols[i];
		JsonbValue	key;
		JsonbValue	val;
		bool		isnull;
		Datum		d = heap_getattr(tuple, col->attnum, desc, &isnull);

		key.type = jbvString;
		key.val.string.val = (char *) col->name;
		key.val.string.len = col->namelen;
		pushJsonbValue(&state, WJB_KEY, &key);
		column_value(col, d, isnull, &val);
		pushJsonbValue(&state, WJB_VALUE, &val);
	}
	result = pushJsonbValue(&state, WJB_END_OBJECT, NULL);
	return JsonbValueToJsonb(result);
}

static pg_tz *
get_utc(void)
{
	if (utc_tz == NULL)
	{
		utc_tz = pg_tzset("UTC");
		if (utc_tz == NULL)
			elog(ERROR, "replstamp: could not load time zone UTC");
	}
	return utc_tz;
}

/* Are the five output settings canonical already? */
static bool
output_settings_canonical(void)
{
	return DateStyle == USE_ISO_DATES && IntervalStyle == INTSTYLE_POSTGRES &&
		extra_float_digits > 0 && bytea_output == BYTEA_OUTPUT_HEX &&
		session_timezone == get_utc();
}

/* Canonical values of every setting an output or input function reads. */
static const char *const canonical_gucs[][2] = {
	{"datestyle", "ISO, YMD"},
	{"intervalstyle", "postgres"},
	{"timezone", "UTC"},
	{"extra_float_digits", "1"},
	{"bytea_output", "hex"},
	{"lc_monetary", "C"},
	{"search_path", "pg_catalog, pg_temp"},
	{"xmloption", "content"},
	{NULL, NULL}
};

static void
set_canonical_gucs(GucAction action)
{
	for (int i = 0; canonical_gucs[i][0]; i++)
		(void) set_config_option(canonical_gucs[i][0], canonical_gucs[i][1],
								 PGC_USERSET, PGC_S_SESSION, action,
								 true, 0, false);
}

/*
 * The images of a row change: the key of keytuple (if pk) and the whole of
 * newtuple (if row), built under canonical settings.
 */
void
rowimage_both(RowLayout *layout, TupleDesc desc, HeapTuple keytuple,
			  HeapTuple newtuple, Jsonb **pk, Jsonb **row)
{
	if (layout->sensitivity == SENSITIVE_NONE ||
		(layout->sensitivity == SENSITIVE_OUTPUT && output_settings_canonical()))
	{
		if (pk)
			*pk = build_image(layout->pk, layout->npk, desc, keytuple);
		if (row)
			*row = build_image(layout->cols, layout->ncols, desc, newtuple);
	}
	else if (layout->sensitivity == SENSITIVE_OUTPUT)
	{
		/* Swap the five variables the output functions read, and back. */
		int			save_datestyle = DateStyle;
		int			save_dateorder = DateOrder;
		int			save_intervalstyle = IntervalStyle;
		int			save_efd = extra_float_digits;
		int			save_bytea = bytea_output;
		pg_tz	   *save_tz = session_timezone;
		pg_tz	   *utc = get_utc();

		PG_TRY();
		{
			DateStyle = USE_ISO_DATES;
			DateOrder = DATEORDER_YMD;
			IntervalStyle = INTSTYLE_POSTGRES;
			extra_float_digits = 1;
			bytea_output = BYTEA_OUTPUT_HEX;
			session_timezone = utc;
			if (pk)
				*pk = build_image(layout->pk, layout->npk, desc, keytuple);
			if (row)
				*row = build_image(layout->cols, layout->ncols, desc, newtuple);
		}
		PG_FINALLY();
		{
			DateStyle = save_datestyle;
			DateOrder = save_dateorder;
			IntervalStyle = save_intervalstyle;
			extra_float_digits = save_efd;
			bytea_output = save_bytea;
			session_timezone = save_tz;
		}
		PG_END_TRY();
	}
	else
	{
		/*
		 * lc_monetary or search_path: the GUC machinery, undone whatever
		 * happens
		 */
		int			nestlevel = NewGUCNestLevel();

		set_canonical_gucs(GUC_ACTION_SAVE);
		if (pk)
			*pk = build_image(layout->pk, layout->npk, desc, keytuple);
		if (row)
			*row = build_image(layout->cols, layout->ncols, desc, newtuple);
		AtEOXact_GUC(false, nestlevel);
	}
}

/*
 * The row's identity across nodes as a number: table name and key image.
 * Keys the primary key index treats as equal hash equally, because track()
 * accepts only keys whose equal values have equal images (see
 * rowimage_key_inexact()): integers and numerics are JSON numbers, which
 * jsonb compares and hashes by value (1.0 and 1.00 alike), and every other
 * key type prints equal values alike.
 */
int64
rowimage_row_hash(const char *relation, int len, Jsonb *pk)
{
	uint64		h1 = hash_bytes_extended((const unsigned char *) relation, len, 0);
	uint64		h2 = DatumGetUInt64(DirectFunctionCall2(jsonb_hash_extended,
														JsonbPGetDatum(pk),
														Int64GetDatum(0)));

	return (int64) hash_combine64(h1, h2);
}

/* ---------------------------------------------------------------------
 * Decoding
 * ---------------------------------------------------------------------
 */

/*
 * Canonical settings for input functions.  With session, for the rest of
 * the session (a background worker that only applies changes); without,
 * in the current GUC nest level, which the caller opened and ends with
 * AtEOXact_GUC(false).  In a transaction, either way.
 */
void
rowimage_enter_input_settings(bool session)
{
	set_canonical_gucs(session ? GUC_ACTION_SET : GUC_ACTION_SAVE);
}

static void
column_input_init(RowLayout *layout, ImageColumn *col)
{
	Oid			infunc;
	MemoryContext old;

	if (col->in_ready)
		return;
	old = MemoryContextSwitchTo(layout->cxt);
	getTypeInputInfo(col->typid, &infunc, &col->typioparam);
	fmgr_info_cxt(infunc, &col->in, layout->cxt);
	col->in_ready = true;
	MemoryContextSwitchTo(old);
}

static void
build_name_index(RowLayout *layout)
{
	HASHCTL		ctl;

	ctl.keysize = NAMEDATALEN;
	ctl.entrysize = sizeof(NameEntry);
	ctl.hcxt = layout->cxt;
	layout->byname = hash_create("replstamp column names", Max(layout->ncols, 8), &ctl,
								 HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	for (int i = 0; i < layout->ncols; i++)
	{
		NameEntry  *e = hash_search(layout->byname, layout->cols[i].name, HASH_ENTER, NULL);

		e->index = i;
	}
}

static ImageColumn *
find_column(RowLayout *layout, ImageColumn *cols, int ncols, const char *name, int len)
{
	char		key[NAMEDATALEN];
	NameEntry  *e;

	if (len >= NAMEDATALEN)
		return NULL;
	if (cols != layout->cols)
	{
		for (int i = 0; i < ncols; i++)
			if (cols[i].namelen == len && memcmp(cols[i].name, name, len) == 0)
				return &cols[i];
		return NULL;
	}
	if (layout->byname == NULL)
		build_name_index(layout);
	memset(key, 0, sizeof(key));
	memcpy(key, name, len);
	e = hash_search(layout->byname, key, HASH_FIND, NULL);
	return e ? &layout->cols[e->index] : NULL;
}

/* The value of one image entry for a column, converted as INSERT would. */
static Datum
decode_value(RowLayout *layout, ImageColumn *col, JsonbValue *v, bool *isnull)
{
	char	   *str;

	*isnull = false;
	switch (v->type)
	{
		case jbvNull:
			*isnull = true;
			return (Datum) 0;
		case jbvString:
			str = pnstrdup(v->val.string.val, v->val.string.len);
			break;
		case jbvNumeric:
			if (col->kind == IMAGE_MONEY)
				return DirectFunctionCall1(numeric_int8, NumericGetDatum(v->val.numeric));
			str = DatumGetCString(DirectFunctionCall1(numeric_out,
													  NumericGetDatum(v->val.numeric)));
			break;
		case jbvBool:
			str = v->val.boolean ? "true" : "false";
			break;
		case jbvBinary:
			str = JsonbToCString(NULL, v->val.binary.data, v->val.binary.len);
			break;
		default:
			ereport(ERROR,
					(errcode(ERRCODE_DATA_EXCEPTION),
					 errmsg("row image has a value of an unexpected kind for column \"%s\"",
							col->name)));
	}
	column_input_init(layout, col);
	return InputFunctionCall(&col->in, str, col->typioparam, col->typmod);
}

/* The value currently being decoded, for error messages (no values). */
static const char *decoding_column = NULL;
static const char *decoding_table = NULL;

static void
decode_error_context(void *arg)
{
	if (decoding_column)
		errcontext("column \"%s\" of table %s", decoding_column,
				   decoding_table ? decoding_table : "?");
}

/* Refuse a row image (or, with key, a primary key image) that is not an object. */
static void
check_object(Jsonb *image, bool key)
{
	if (JB_ROOT_IS_OBJECT(image) && !JB_ROOT_IS_SCALAR(image))
		return;
	if (key)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("primary key image is not a JSON object")));
	ereport(ERROR,
			(errcode(ERRCODE_DATA_EXCEPTION),
			 errmsg("row image is not a JSON object")));
}

/*
 * The values of a row image for this node's table: values[], nulls[] and
 * present[] are indexed by attribute number - 1.  Returns how many columns
 * of the image this table lacks (their names in *missing, if given).
 */
int
rowimage_decode(RowLayout *layout, Jsonb *image, Datum *values, bool *nulls,
				bool *present, List **missing)
{
	JsonbIterator *it;
	JsonbValue	k,
				v;
	JsonbIteratorToken tok;
	int			extra = 0;
	ErrorContextCallback errcb;

	check_object(image, false);
	if (missing)
		*missing = NIL;
	errcb.callback = decode_error_context;
	errcb.arg = NULL;
	errcb.previous = error_context_stack;
	error_context_stack = &errcb;
	decoding_table = layout->relname;

	it = JsonbIteratorInit(&image->root);
	while ((tok = JsonbIteratorNext(&it, &k, true)) != WJB_DONE)
	{
		ImageColumn *col;
		int			a;

		if (tok != WJB_KEY)
			continue;
		tok = JsonbIteratorNext(&it, &v, true);
		col = find_column(layout, layout->cols, layout->ncols,
						  k.val.string.val, k.val.string.len);
		if (col == NULL)
		{
			extra++;
			if (missing)
				*missing = lappend(*missing, pnstrdup(k.val.string.val, k.val.string.len));
			continue;
		}
		a = col->attnum - 1;
		decoding_column = col->name;
		values[a] = decode_value(layout, col, &v, &nulls[a]);
		present[a] = true;
	}
	decoding_column = NULL;
	error_context_stack = errcb.previous;
	return extra;
}

/*
 * Does the key object name exactly the primary key columns of this table?
 */
bool
rowimage_key_matches(RowLayout *layout, Jsonb *pk)
{
	JsonbIterator *it;
	JsonbValue	k;
	JsonbIteratorToken tok;
	int			n = 0;

	check_object(pk, true);
	it = JsonbIteratorInit(&pk->root);
	while ((tok = JsonbIteratorNext(&it, &k, true)) != WJB_DONE)
	{
		if (tok != WJB_KEY)
			continue;
		if (find_column(layout, layout->pk, layout->npk,
						k.val.string.val, k.val.string.len) == NULL)
			return false;
		n++;
	}
	return n == layout->npk;
}

/*
 * The key columns of a key image into values[]/nulls[] (by attribute
 * number - 1).  The caller has checked the key with rowimage_key_matches().
 */
void
rowimage_decode_key(RowLayout *layout, Jsonb *pk, Datum *values, bool *nulls)
{
	ErrorContextCallback errcb;

	errcb.callback = decode_error_context;
	errcb.arg = NULL;
	errcb.previous = error_context_stack;
	error_context_stack = &errcb;
	decoding_table = layout->relname;
	for (int i = 0; i < layout->npk; i++)
	{
		ImageColumn *col = &layout->pk[i];
		JsonbValue	kv;
		JsonbValue *v;
		int			a = col->attnum - 1;

		kv.type = jbvString;
		kv.val.string.val = (char *) col->name;
		kv.val.string.len = col->namelen;
		v = findJsonbValueFromContainer(&pk->root, JB_FOBJECT, &kv);
		if (v == NULL)
			elog(ERROR, "replstamp: key image lacks column \"%s\"", col->name);
		decoding_column = col->name;
		values[a] = decode_value(layout, col, v, &nulls[a]);
		if (nulls[a])
			ereport(ERROR,
					(errcode(ERRCODE_DATA_EXCEPTION),
					 errmsg("primary key image has a null value")));
	}
	decoding_column = NULL;
	error_context_stack = errcb.previous;
}

/*
 * The key of the row a row image describes: the members of image named by
 * the keys of pk (an UPDATE's change holds the old key in pk and the new
 * row in its image).
 */
Jsonb *
rowimage_key_of(Jsonb *pk, Jsonb *image)
{
	JsonbParseState *state = NULL;
	JsonbIterator *it;
	JsonbValue	k;
	JsonbIteratorToken tok;
	JsonbValue *result;

	check_object(pk, true);
	check_object(image, false);
	pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	it = JsonbIteratorInit(&pk->root);
	while ((tok = JsonbIteratorNext(&it, &k, true)) != WJB_DONE)
	{
		JsonbValue *v;
		JsonbValue	key = k;

		if (tok != WJB_KEY)
			continue;
		v = findJsonbValueFromContainer(&image->root, JB_FOBJECT, &k);
		if (v == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_DATA_EXCEPTION),
					 errmsg("row image lacks key column \"%.*s\"",
							k.val.string.len, k.val.string.val)));
		pushJsonbValue(&state, WJB_KEY, &key);
		pushJsonbValue(&state, WJB_VALUE, v);
	}
	result = pushJsonbValue(&state, WJB_END_OBJECT, NULL);
	return JsonbValueToJsonb(result);
}

/*
 * Does the row image give the row another key than pk (an UPDATE that
 * changed its key)?  What jsonb equality of rowimage_key_of(pk, image) and
 * pk says, without building the new key: a key's members are scalars.
 * Anything else (a member the image lacks, or not a scalar) answers true,
 * and rowimage_key_of() decides (or reports the malformed image).
 */
bool
rowimage_key_changed(Jsonb *pk, Jsonb *image)
{
	JsonbIterator *it;
	JsonbValue	k;
	JsonbIteratorToken tok;

	if (pk == NULL || image == NULL || !JB_ROOT_IS_OBJECT(pk) || !JB_ROOT_IS_OBJECT(image))
		return true;
	it = JsonbIteratorInit(&pk->root);
	while ((tok = JsonbIteratorNext(&it, &k, true)) != WJB_DONE)
	{
		JsonbValue	old;
		JsonbValue *v;

		if (tok != WJB_KEY)
			continue;
		v = findJsonbValueFromContainer(&image->root, JB_FOBJECT, &k);
		tok = JsonbIteratorNext(&it, &old, true);
		if (v == NULL || tok != WJB_VALUE || v->type != old.type)
			return true;
		switch (v->type)
		{
			case jbvNull:
				break;
			case jbvBool:
				if (v->val.boolean != old.val.boolean)
					return true;
				break;
			case jbvString:
				/* jsonb equality of strings: the same bytes */
				if (v->val.string.len != old.val.string.len ||
					memcmp(v->val.string.val, old.val.string.val, v->val.string.len) != 0)
					return true;
				break;
			case jbvNumeric:
				if (DatumGetInt32(DirectFunctionCall2(numeric_cmp,
													  NumericGetDatum(v->val.numeric),
													  NumericGetDatum(old.val.numeric))) != 0)
					return true;
				break;
			default:
				return true;
		}
	}
	return false;
}

/*
 * The names of the members of a key image, for messages: "a, b".
 */
char *
rowimage_key_names(Jsonb *pk)
{
	StringInfoData buf;
	JsonbIterator *it;
	JsonbValue	k;
	JsonbIteratorToken tok;

	initStringInfo(&buf);
	if (JB_ROOT_IS_SCALAR(pk) || !JB_ROOT_IS_OBJECT(pk))
		return buf.data;
	it = JsonbIteratorInit(&pk->root);
	while ((tok = JsonbIteratorNext(&it, &k, true)) != WJB_DONE)
		if (tok == WJB_KEY)
			appendStringInfo(&buf, "%s%s", buf.len ? ", " : "",
							 quote_identifier(pnstrdup(k.val.string.val, k.val.string.len)));
	return buf.data;
}

/*
 * The primary key columns of a table, for messages: "a, b".
 */
char *
rowimage_layout_key_names(RowLayout *layout)
{
	StringInfoData buf;

	initStringInfo(&buf);
	for (int i = 0; i < layout->npk; i++)
		appendStringInfo(&buf, "%s%s", i ? ", " : "", quote_identifier(layout->pk[i].name));
	return buf.data;
}

/* ---------------------------------------------------------------------
 * Keys whose equal values have equal images
 * ---------------------------------------------------------------------
 */

/*
 * Do values of typid (with typmod) that the btree operator family opfamily
 * (input type opcintype) treats as equal under collation collid always
 * have the same image?  With opfamily invalid, the type's default btree
 * family: what arrays, ranges and composites compare their members with.
 * If not, the type or the collation to blame goes to *bad_type or
 * *bad_coll.
 *
 * A family that declares its equality to be image equality (its
 * equalimage support function, which B-tree deduplication asks) prints
 * equal values alike: the same bytes give the same text.  Containers
 * compare member by member with their members' default families, so they
 * are as exact as their members, whose text they print one by one.
 * Everything else is refused: float4 and float8 (0 and -0), numeric in a
 * container or a domain (1.0 and 1.00 as text), interval (1 day and 24
 * hours), a nondeterministic collation (alice and ALICE), citext, jsonb.
 */
static bool
equal_means_same_image(Oid typid, int32 typmod, Oid collid, Oid opfamily,
					   Oid opcintype, Oid *bad_type, Oid *bad_coll)
{
	TypeCacheEntry *tc;
	Oid			proc;
	Oid			elem;

	check_stack_depth();
	typid = getBaseTypeAndTypmod(typid, &typmod);
	tc = lookup_type_cache(typid, TYPECACHE_BTREE_OPFAMILY);
	if (!OidIsValid(opfamily))
	{
		opfamily = tc->btree_opf;
		opcintype = tc->btree_opintype;
	}
	*bad_type = typid;
	*bad_coll = InvalidOid;
	if (!OidIsValid(opfamily))
		return false;

	/*
	 * bpchar equality ignores trailing blanks (in every family: its pattern
	 * family uses the same =), so its default family does not claim image
	 * equality; but char(n) pads every value to n characters, where equal
	 * values are identical under a deterministic collation.
	 */
	if (typid == BPCHAROID)
	{
		if (typmod < 0)
			return false;
		if (opfamily == tc->btree_opf)
		{
			if (OidIsValid(collid) && !get_collation_isdeterministic(collid))
			{
				*bad_coll = collid;
				return false;
			}
			return true;
		}
	}

	proc = get_opfamily_proc(opfamily, opcintype, opcintype, BTEQUALIMAGE_PROC);
	if (OidIsValid(proc))
	{
		if (DatumGetBool(OidFunctionCall1Coll(proc, collid, ObjectIdGetDatum(opcintype))))
			return true;
		if (OidIsValid(collid) && !get_collation_isdeterministic(collid))
			*bad_coll = collid;
		return false;
	}

	/* The members' rules hold for the default family only. */
	if (opfamily != tc->btree_opf)
		return false;
	elem = get_element_type(typid);
	if (OidIsValid(elem))		/* array_cmp: the elements' family, collid */
		return equal_means_same_image(elem, typmod, collid, InvalidOid, InvalidOid,
									  bad_type, bad_coll);
	switch (get_typtype(typid))
	{
		case TYPTYPE_RANGE:
			{
				/*
				 * range_cmp: the subtype's operator class, the range's
				 * collation
				 */
				HeapTuple	tup = SearchSysCache1(RANGETYPE, ObjectIdGetDatum(typid));
				Form_pg_range rng;
				Oid			subfamily;
				Oid			subtype;

				if (!HeapTupleIsValid(tup))
					elog(ERROR, "cache lookup failed for range type %u", typid);
				rng = (Form_pg_range) GETSTRUCT(tup);
				if (!get_opclass_opfamily_and_input_type(rng->rngsubopc, &subfamily, &subtype))
					elog(ERROR, "cache lookup failed for operator class %u", rng->rngsubopc);
				elem = rng->rngsubtype;
				collid = rng->rngcollation;
				ReleaseSysCache(tup);
				return equal_means_same_image(elem, -1, collid, subfamily, subtype,
											  bad_type, bad_coll);
			}
		case TYPTYPE_MULTIRANGE:
			return equal_means_same_image(get_multirange_range(typid), -1, InvalidOid,
										  InvalidOid, InvalidOid, bad_type, bad_coll);
		case TYPTYPE_COMPOSITE:
			{
				/* record_cmp: each field's default family and collation */
				TupleDesc	desc = lookup_rowtype_tupdesc(typid, -1);
				bool		exact = true;

				for (int i = 0; exact && i < desc->natts; i++)
				{
					Form_pg_attribute att = TupleDescAttr(desc, i);

					if (!att->attisdropped)
						exact = equal_means_same_image(att->atttypid, att->atttypmod,
													   att->attcollation, InvalidOid,
													   InvalidOid, bad_type, bad_coll);
				}
				ReleaseTupleDesc(desc);
				return exact;
			}
		default:
			return false;
	}
}

/*
 * The index by which every node identifies the rows of rel, its row key:
 * its primary key; without one, the unique index its replica identity
 * names (ALTER TABLE ... REPLICA IDENTITY USING INDEX, which PostgreSQL
 * accepts only for a unique, immediate, non-partial index of plain NOT NULL
 * columns; track() sets it for a table without a primary key).  Both come
 * from the relcache: no catalog lookup per row.  InvalidOid if rel has
 * neither.
 */
Oid
rowimage_key_index(Relation rel)
{
	Oid			pkoid = RelationGetPrimaryKeyIndex(rel);

	if (OidIsValid(pkoid))
		return pkoid;
	if (rel->rd_rel->relreplident == REPLICA_IDENTITY_INDEX)
		return RelationGetReplicaIndex(rel);
	return InvalidOid;
}

/*
 * Can two values that the row key index of rel (rowimage_key_index())
 * treats as equal have different key images, so that nodes would take
 * them for two rows?  If so, the first such key column goes to *column
 * (its name) and *col_type, and the type or nondeterministic collation to
 * blame to *bad_type or *bad_coll (the column's own type, or a type it
 * contains).  A table without a row key answers false.  keyoid, if
 * valid, is the index to look at instead (track() asks before it makes the
 * index the table's replica identity).
 *
 * Integer, boolean, money and numeric columns are JSON values in the image,
 * which jsonb compares and hashes by value; every other column is exact if
 * its equal values print alike (equal_means_same_image()).
 */
bool
rowimage_key_inexact(Relation rel, Oid keyoid, const char **column, Oid *col_type,
					 Oid *bad_type, Oid *bad_coll)
{
	Oid			pkoid = OidIsValid(keyoid) ? keyoid : rowimage_key_index(rel);
	TupleDesc	desc = RelationGetDescr(rel);
	Relation	idx;
	bool		inexact = false;

	if (!OidIsValid(pkoid))
		return false;
	idx = index_open(pkoid, AccessShareLock);
	for (int i = 0; !inexact && i < idx->rd_index->indnkeyatts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, idx->rd_index->indkey.values[i] - 1);

		/* the kind of image the column gets, as column_init() decides it */
		switch (getBaseType(att->atttypid) == att->atttypid ? att->atttypid : InvalidOid)
		{
			case BOOLOID:
			case INT2OID:
			case INT4OID:
			case INT8OID:
			case NUMERICOID:
			case CASHOID:
				if (idx->rd_opfamily[i] ==
					lookup_type_cache(att->atttypid, TYPECACHE_BTREE_OPFAMILY)->btree_opf)
					continue;
				break;
			default:
				break;
		}
		if (!equal_means_same_image(att->atttypid, att->atttypmod, idx->rd_indcollation[i],
									idx->rd_opfamily[i], idx->rd_opcintype[i],
									bad_type, bad_coll))
		{
			*column = pstrdup(NameStr(att->attname));
			*col_type = att->atttypid;
			inexact = true;
		}
	}
	index_close(idx, AccessShareLock);
	return inexact;
}

/* Byte for byte (a key spelled two ways differs: only a lookup is lost). */
bool
rowimage_bytes_equal(const struct varlena *a, const struct varlena *b)
{
	return VARSIZE_ANY_EXHDR(a) == VARSIZE_ANY_EXHDR(b) &&
		memcmp(VARDATA_ANY(a), VARDATA_ANY(b), VARSIZE_ANY_EXHDR(a)) == 0;
}

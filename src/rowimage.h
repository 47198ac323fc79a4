/*-------------------------------------------------------------------------
 *
 * rowimage.h
 *		Row images: a row of a tracked table as a jsonb object keyed by
 *		column name, the same on every node whatever the session settings
 *		of the writer and of the reader.
 *
 * What it offers:
 *	- rowimage_layout(): the per-table column layout, cached per backend
 *	  and dropped on a relcache invalidation of the table;
 *	- rowimage_both(): the key and row images of heap tuples (stamp
 *	  trigger, backfill);
 *	- rowimage_decode() / rowimage_decode_key(): the values of an image for
 *	  this node's table, converted as an INSERT would (the apply);
 *	- rowimage_key_of(): the key object of a row image;
 *	- rowimage_row_hash(): a row's identity across nodes as a number;
 *	- rowimage_key_inexact(): whether a table's primary key treats as equal
 *	  values whose images differ (track() refuses such a table).
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#ifndef REPLSTAMP_ROWIMAGE_H
#define REPLSTAMP_ROWIMAGE_H

#include "access/htup.h"
#include "fmgr.h"
#include "nodes/pg_list.h"
#include "utils/jsonb.h"
#include "utils/relcache.h"

/* How a column's value goes into a row image. */
typedef enum ImageKind
{
	IMAGE_BOOL,					/* JSON boolean */
	IMAGE_INT2,					/* JSON number */
	IMAGE_INT4,
	IMAGE_INT8,
	IMAGE_NUMERIC,				/* JSON number, NaN and infinities as text */
	IMAGE_MONEY,				/* JSON number: the stored amount, locale-free */
	IMAGE_TEXT					/* the type's output function, canonical
								 * settings */
} ImageKind;

/* Does a type's text form depend on session settings? */
typedef enum ImageSensitivity
{
	SENSITIVE_NONE = 0,
	SENSITIVE_OUTPUT,			/* DateStyle, IntervalStyle, TimeZone,
								 * extra_float_digits, bytea_output */
	SENSITIVE_GUC				/* also lc_monetary or search_path */
} ImageSensitivity;

typedef struct ImageColumn
{
	AttrNumber	attnum;
	const char *name;
	int			namelen;
	Oid			typid;
	int32		typmod;
	ImageKind	kind;
	ImageSensitivity sensitivity;
	FmgrInfo	out;			/* for IMAGE_TEXT */
	/* for decoding, filled on first use */
	bool		in_ready;
	FmgrInfo	in;
	Oid			typioparam;
} ImageColumn;

typedef struct RowLayout
{
	Oid			relid;			/* hash key */
	bool		valid;
	MemoryContext cxt;			/* owns everything below */
	char	   *relname;		/* schema-qualified, quoted where needed */
	text	   *relname_text;
	int			ncols;
	ImageColumn *cols;			/* every live, non-generated column */
	int			npk;
	ImageColumn *pk;			/* row key columns, in key order */
	Oid			pkoid;			/* row key index (rowimage_key_index()), or
								 * InvalidOid */
	ImageSensitivity sensitivity;	/* of the whole row */
	struct HTAB *byname;		/* column name -> index in cols, for decoding */
} RowLayout;

extern void rowimage_init(void);
extern RowLayout *rowimage_layout(Relation rel);
extern void rowimage_both(RowLayout *layout, TupleDesc desc, HeapTuple keytuple,
						  HeapTuple newtuple, Jsonb **pk, Jsonb **row);
extern int	rowimage_decode(RowLayout *layout, Jsonb *image, Datum *values,
							bool *nulls, bool *present, List **missing);
extern void rowimage_decode_key(RowLayout *layout, Jsonb *pk, Datum *values, bool *nulls);
extern bool rowimage_key_matches(RowLayout *layout, Jsonb *pk);
extern Jsonb *rowimage_key_of(Jsonb *pk, Jsonb *image);
extern bool rowimage_key_changed(Jsonb *pk, Jsonb *image);
extern int64 rowimage_row_hash(const char *relation, int len, Jsonb *pk);
extern Oid	rowimage_key_index(Relation rel);
extern bool rowimage_key_inexact(Relation rel, Oid keyoid, const char **column,
								 Oid *col_type, Oid *bad_type, Oid *bad_coll);
extern void rowimage_enter_input_settings(bool session);
extern char *rowimage_key_names(Jsonb *pk);
extern char *rowimage_layout_key_names(RowLayout *layout);
extern bool rowimage_bytes_equal(const struct varlena *a, const struct varlena *b);

#endif							/* REPLSTAMP_ROWIMAGE_H */

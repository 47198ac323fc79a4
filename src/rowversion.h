/*-------------------------------------------------------------------------
 *
 * rowversion.h
 *		replstamp.row_version: per row (table and key), the stamp of the
 *		latest change held here, so that last writer wins costs one lookup
 *		per change whatever the history of the row; and the reconciliation
 *		that brings changes stamped here into it.
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#ifndef REPLSTAMP_ROWVERSION_H
#define REPLSTAMP_ROWVERSION_H

#include "executor/execdesc.h"
#include "nodes/execnodes.h"

#include "catalog.h"
#include "changelog.h"

/* A stamp with its time: what last writer wins compares. */
typedef struct Version
{
	TimestampTz changed_at;
	pg_uuid_t	replica_id;
	int64		serial;
} Version;

/* The latest version of a row, as recorded. */
typedef struct RowVersion
{
	bool		found;
	ItemPointerData tid;		/* of the row_version tuple */
	Version		v;
	bool		deleted;
	bool		partial;		/* a version carries columns the latest lacks: */
	Version		carry;			/* the latest such change */
	List	   *carry_columns;	/* and those columns (char *) */
} RowVersion;

/* One row a change affects (an UPDATE that changes the key affects two). */
typedef struct ChangeRow
{
	Jsonb	   *key;
	int64		hash;
	bool		deleted;		/* the change removes this row */
} ChangeRow;

/* Writes to replstamp.row_version within one transaction. */
typedef struct RowVersionWriter
{
	const ReplstampCatalog *cat;
	Relation	rel;
	EState	   *estate;
	ResultRelInfo *rri;
	TupleTableSlot *slot;
	TupleTableSlot *oldslot;
	Relation	hash_index;		/* row_version_hash, once a lookup opened it */
	struct IndexScanDescData *scan; /* on it, kept open for every lookup */
	TupleTableSlot *getslot;	/* what a lookup reads */
	struct HTAB *walked;		/* replica ID -> how far pruning looked */
	Change	   *superseding;	/* the change of the version the next put
								 * supersedes, if a conflict just read it */
	int64		removed;		/* superseded changes it removed from the log */
	MemoryContext cxt;			/* the writer's */
} RowVersionWriter;

/* What a session has reconciled of this node's own changes. */
typedef struct OwnIdState
{
	pg_uuid_t	id;
	int64		done_upto;		/* every change up to here is reconciled */
	int64		saved_upto;		/* done_upto as last saved */
	int64		hi;				/* highest serial reconciled */
	int			nholes;			/* serials above done_upto not seen yet */
	int			maxholes;
	int64	   *holes;
} OwnIdState;

typedef struct ReconcileState
{
	MemoryContext cxt;
	bool		loaded;
	pg_uuid_t	current_id;		/* the node's ID when the list was loaded */
	bool		looked;			/* at least once */
	bool		inflight;		/* a serial was in flight at the last look */
	uint64		activity;		/* serial_activity() at the last look */
	int			nids;
	OwnIdState *ids;
} ReconcileState;

extern int	rowversion_cmp(const Version *a, const Version *b);
extern int	rowversion_change_rows(Change *change, ChangeRow *rows);

extern RowVersionWriter *rowversion_writer_begin(const ReplstampCatalog *cat);
extern void rowversion_writer_end(RowVersionWriter *w);
extern void rowversion_get(RowVersionWriter *w, text *relation, ChangeRow *row, RowVersion *out);
extern List *rowversion_carry_left(RowVersion *current, Jsonb *image);
extern void rowversion_put(RowVersionWriter *w, text *relation, ChangeRow *row,
						   RowVersion *current, const Version *v, bool deleted,
						   const Version *carry, List *carry_columns);
extern void rowversion_set_carry(RowVersionWriter *w, text *relation, ChangeRow *row,
								 RowVersion *current, List *columns);
extern void rowversion_restamp(const ReplstampCatalog *cat, Change *change,
							   const pg_uuid_t *new_id, int64 new_serial);

/* Called for each row a TRUNCATE deletes, before row_version records it. */
typedef void (*RowVersionTruncateCallback) (Jsonb *key, void *arg);
extern Jsonb *rowversion_truncate_key(const pg_uuid_t *id, int64 serial);
extern bool rowversion_is_truncate_key(Jsonb *key);
extern Jsonb *rowversion_truncate_reissued(Jsonb *image, const pg_uuid_t *old_id, int64 from,
										   const pg_uuid_t *new_id, const int64 *old_serials,
										   const int64 *new_serials, int n);
extern int64 rowversion_truncate(RowVersionWriter *w, Change *change,
								 RowVersionTruncateCallback callback, void *arg);
extern void rowversion_lock(void);
extern void rowversion_unlock(void);
extern void rowversion_lock_xact(void);
extern bool rowversion_lock_held(void);
extern void rowversion_page_lock(bool prune);

extern ReconcileState *rowversion_reconcile_begin(MemoryContext cxt);
extern void rowversion_reconcile(RowVersionWriter *w, ReconcileState *st);
extern void rowversion_reconcile_save(ReconcileState *st);

#endif							/* REPLSTAMP_ROWVERSION_H */

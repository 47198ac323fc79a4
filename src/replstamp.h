/*-------------------------------------------------------------------------
 *
 * replstamp.h
 *		What the parts of replstamp offer each other: the catalog cache
 *		(OIDs of the extension's relations, the state row) and the
 *		per-part initialisation entry points called from _PG_init.
 *
 * Copyright (c) 2026, the replstamp authors
 *
 *-------------------------------------------------------------------------
 */
#ifndef REPLSTAMP_H
#define REPLSTAMP_H

#include "postgres.h"
#include "utils/uuid.h"

#define REPLSTAMP_SCHEMA	"replstamp"

/* Values of replstamp.node.state */
#define REPLSTAMP_STATE_ORIGINAL	"original"
#define REPLSTAMP_STATE_BACKUP		"backup"

/*
 * OIDs of the extension's objects in the current database, looked up once per
 * backend and forgotten on a relcache invalidation of any of them (which
 * happens when the extension is dropped or re-created).
 */
typedef struct ReplstampCatalog
{
	Oid			schema;
	Oid			node;			/* replstamp.node */
	Oid			changes;		/* replstamp.changes */
	Oid			changes_pkey;	/* its primary key index */
	Oid			serial_seq;		/* replstamp.serial_seq */
	Oid			vector_state;	/* replstamp.vector_state */
	Oid			replica_history;	/* replstamp.replica_history */
} ReplstampCatalog;

/*
 * The state row as last read by this backend.  Reloaded after any change of
 * replstamp.node has been committed (the node_changed trigger sends a
 * relcache invalidation for it).
 */
typedef struct ReplstampNode
{
	pg_uuid_t	replica_id;
	bool		in_backup;		/* state = 'backup' */
} ReplstampNode;

/* Saved user and GUC state while acting as the extension's owner. */
typedef struct ReplstampOwnerContext
{
	Oid			save_userid;
	int			save_sec_context;
	int			save_nestlevel;
} ReplstampOwnerContext;

/* node.c */
extern void replstamp_become_owner(ReplstampOwnerContext *ctx);
extern void replstamp_restore_user(ReplstampOwnerContext *ctx);
extern const ReplstampCatalog *replstamp_catalog(bool missing_ok);
extern const ReplstampNode *replstamp_node(void);
extern void replstamp_node_forget(void);
extern void replstamp_mint_uuid(pg_uuid_t *uuid);
extern void replstamp_catalog_init(void);

/* launcher.c */
struct BackgroundWorkerHandle;
extern bool replstamp_start_worker(const char *function, const char *type, Oid dboid,
								   const void *extra, Size extralen,
								   struct BackgroundWorkerHandle **handle);

/* Per-part entry points, called once from _PG_init. */
extern void serial_init(void);		/* serial.c */
extern void stamp_init(void);		/* stamp.c */
extern void launcher_init(void);	/* launcher.c */

#endif							/* REPLSTAMP_H */

/*-------------------------------------------------------------------------
 *
 * catalog.h
 *		The extension's catalog as the C code sees it: OIDs of its
 *		relations (cached per backend), named attribute numbers, the state
 *		row replstamp.node as a struct, and acting as another role.
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#ifndef REPLSTAMP_CATALOG_H
#define REPLSTAMP_CATALOG_H

#include "datatype/timestamp.h"
#include "utils/uuid.h"

#define REPLSTAMP_SCHEMA	"replstamp"

/* Values of replstamp.node.state */
#define REPLSTAMP_STATE_ORIGINAL	"original"
#define REPLSTAMP_STATE_BACKUP		"backup"

/* replstamp.node */
#define Anum_node_singleton				1
#define Anum_node_replica_id			2
#define Anum_node_state					3
#define Anum_node_minted_at				4
#define Anum_node_system_identifier		5
#define Anum_node_timeline				6
#define Anum_node_backup_label			7
#define Anum_node_backup_started_at		8
#define Anum_node_backup_lus			9
#define Anum_node_backup_next_serial	10
#define Anum_node_last_backup_at		11
#define Anum_node_restore_fingerprint	12
#define Anum_node_verified_token		13	/* 1.1 */

/* replstamp.changes */
#define Anum_changes_replica_id		1
#define Anum_changes_serial			2
#define Anum_changes_relation		3
#define Anum_changes_op				4
#define Anum_changes_pk				5
#define Anum_changes_row_image		6
#define Anum_changes_changed_at		7
#define Anum_changes_row_hash		8
#define Anum_changes_applied		9
/* from 1.2 on */
#define Anum_changes_usn			10
#define Anum_changes_xact			11
#define Natts_changes				11

/* replstamp.row_version (1.1) */
#define Anum_row_version_row_hash	1
#define Anum_row_version_relation	2
#define Anum_row_version_pk			3
#define Anum_row_version_replica_id	4
#define Anum_row_version_serial		5
#define Anum_row_version_changed_at	6
#define Anum_row_version_deleted	7
#define Anum_row_version_partial	8
#define Anum_row_version_carry_replica_id	9
#define Anum_row_version_carry_serial	10
#define Anum_row_version_carry_columns	11
#define Anum_row_version_carry_changed_at	12
/* from 1.2 on: changed_at of a tombstone, NULL for a live row */
#define Anum_row_version_deleted_at	13
#define Natts_row_version			13

/*
 * SQL that, followed by "OPERATOR(pg_catalog.<) t", says a row_version
 * entry (alias a) is a tombstone older than t, in the terms of the
 * catalog's tombstone index.
 */
#define TOMBSTONE_TIME(cat, a) \
	((cat)->row_version_deleted_at ? a ".deleted_at" : \
	 a ".deleted AND " a ".changed_at")

/* The columns of replstamp.conflict (conflict_log before 1.2). */
#define Anum_conflict_id		1
#define Anum_conflict_resolved_at	2
#define Anum_conflict_relation	3
#define Anum_conflict_pk		4
#define Anum_conflict_kind		5
#define Anum_conflict_peer		6
#define Anum_conflict_winner_replica_id	7
#define Anum_conflict_winner_serial	8
#define Anum_conflict_winner_changed_at	9
#define Anum_conflict_loser_replica_id	10
#define Anum_conflict_loser_serial	11
#define Anum_conflict_loser_changed_at	12
#define Anum_conflict_loser_op	13
#define Anum_conflict_loser_image	14
#define Natts_conflict			14

/*
 * OIDs of the extension's objects in the current database, looked up once per
 * backend and forgotten on a relcache invalidation of any of them (which
 * happens when the extension is dropped, re-created or updated).
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

	/*
	 * From 1.1 on.  With the 1.0 catalog (a new library before ALTER
	 * EXTENSION replstamp UPDATE) stamping goes on, everything else refuses.
	 */
	bool		v11;
	Oid			row_version;	/* replstamp.row_version */
	Oid			row_version_hash;	/* its index on row_hash */
	Oid			conflict;		/* replstamp.conflict (1.1: conflict_log) */
	const char *conflict_name;	/* its qualified name, for SQL */
	Oid			conflict_pkey;	/* its primary key (id) */
	Oid			conflict_loser; /* its index on (loser_replica_id,
								 * loser_serial) */
	Oid			tracked;		/* replstamp.tracked_table (1.1: tracked) */
	const char *tracked_name;	/* its qualified name, for SQL */

	/*
	 * From 1.2 on: replstamp.changes records each change's local transaction
	 * and place in the log (usn, xact), which a sync needs to send and apply
	 * whole transactions.  Before ALTER EXTENSION UPDATE, stamping goes on
	 * without them and syncs refuse.
	 */
	bool		v12;

	/*
	 * row_version has deleted_at (1.2), the column its tombstone index
	 * covers instead of changed_at: a live row's new version changes no
	 * indexed column, so its update can be HOT.
	 */
	bool		row_version_deleted_at;
} ReplstampCatalog;

/*
 * The state row replstamp.node, as last committed (or as changed by the
 * current transaction).
 */
typedef struct ReplstampNode
{
	pg_uuid_t	replica_id;
	bool		in_backup;		/* state = 'backup' */
	int64		system_identifier;
	int32		timeline;
	bool		has_backup_lus;
	int64		backup_lus;
	bool		has_backup_next_serial;
	int64		backup_next_serial;
	char	   *backup_label;	/* or NULL */
	char	   *restore_fingerprint;	/* or NULL */
	bool		verified;		/* checked since this server started (1.1) */
} ReplstampNode;

extern void catalog_init(void);
extern const ReplstampCatalog *catalog_get(bool missing_ok);
extern const ReplstampCatalog *catalog_get_v11(const char *what);
extern const ReplstampCatalog *catalog_get_v12(const char *what);
extern const char *catalog_sql(const char *sql);
extern const ReplstampNode *catalog_node(void);
extern void catalog_node_forget(void);
extern bool catalog_fingerprint_is_this_database(const char *fp);
extern void catalog_mint_uuid(pg_uuid_t *uuid);
extern char *catalog_uuid_text(const pg_uuid_t *uuid);

extern Oid	catalog_extension_owner(void);

#endif							/* REPLSTAMP_CATALOG_H */

/*-------------------------------------------------------------------------
 *
 * backup_mark.h
 *		The state flip around a backup (backup_mark.c): every database with
 *		replstamp is marked 'backup' before a backup and 'original' after
 *		it.  Used by prepare/finish_backup() and by replstamp.backup()
 *		(basebackup.c).
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#ifndef REPLSTAMP_BACKUP_MARK_H
#define REPLSTAMP_BACKUP_MARK_H

#include "nodes/pg_list.h"

extern List *backup_mark_flip(List *dbs, bool to_backup, const char *label);
extern void backup_mark_flip_back_detached(List *dbs);
extern char *backup_mark_database_names(List *dbs);
extern void backup_mark_claim_owner(void);
extern void backup_mark_release_owner(void);

#endif							/* REPLSTAMP_BACKUP_MARK_H */

/*-------------------------------------------------------------------------
 *
 * dbaccess.h
 *		Acting as the extension's owner or, restricted, as a table's owner;
 *		running SPI statements; writing through the executor.
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#ifndef REPLSTAMP_DBACCESS_H
#define REPLSTAMP_DBACCESS_H

#include "nodes/execnodes.h"
#include "nodes/pg_list.h"
#include "utils/relcache.h"

/* Saved user and GUC state while acting as another role. */
typedef struct ReplstampOwnerContext
{
	Oid			save_userid;
	int			save_sec_context;
	int			save_nestlevel;
} ReplstampOwnerContext;

extern void dbaccess_become_owner(ReplstampOwnerContext *ctx);
extern void dbaccess_become_untrusted(Oid role, ReplstampOwnerContext *ctx);
extern void dbaccess_restore_user(ReplstampOwnerContext *ctx);
extern void dbaccess_spi_exec(const char *sql, int nargs, Oid *types, Datum *values,
							  const char *nulls, int expected);
extern void dbaccess_spi_exec_kept(const char *sql, int nargs, Oid *types, Datum *values,
								   const char *nulls, int expected);
extern ResultRelInfo *dbaccess_open_result_rel(Relation rel, EState *estate);
extern Datum dbaccess_names_array(List *names);

#endif							/* REPLSTAMP_DBACCESS_H */

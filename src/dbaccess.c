/*-------------------------------------------------------------------------
 *
 * dbaccess.c
 *		How replstamp reaches the database on behalf of others: as which
 *		role (the extension's owner; a table's owner, in a
 *		security-restricted operation, for code that role controls) and
 *		through which door (SPI statements, with plans kept per process for
 *		those run per change; the executor's routines on a result relation,
 *		for writes without a plan).
 *
 * Every function here runs inside a transaction: an error between taking
 * a role and giving it back is cleaned up by the transaction's abort.
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/rel.h"

#include "catalog.h"
#include "compat.h"
#include "dbaccess.h"
#include "errors.h"

/*
 * Act as the extension's owner, with search_path = pg_catalog, pg_temp,
 * until dbaccess_restore_user().  For SQL that replstamp runs on behalf of
 * a user who may not write its tables (the identity check in the stamp
 * path, trigger DDL in track()).  An error in between restores the user and
 * the GUCs through transaction abort.
 */
void
dbaccess_become_owner(ReplstampOwnerContext *ctx)
{
	Assert(IsTransactionState());
	GetUserIdAndSecContext(&ctx->save_userid, &ctx->save_sec_context);
	SetUserIdAndSecContext(catalog_extension_owner(),
						   ctx->save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	ctx->save_nestlevel = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp",
							 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE,
							 true, 0, false);
}

/*
 * Act as role (a table's owner), in a security-restricted operation, for
 * code that role controls: its triggers, defaults, constraints, index
 * expressions.  Whatever settings that code changes, SET or SET LOCAL, are
 * undone by dbaccess_restore_user(), so nothing it does outlives it (a
 * search_path it sets must not steer the operators the caller resolves
 * later).
 */
void
dbaccess_become_untrusted(Oid role, ReplstampOwnerContext *ctx)
{
	Assert(IsTransactionState());
	GetUserIdAndSecContext(&ctx->save_userid, &ctx->save_sec_context);
	SetUserIdAndSecContext(role, ctx->save_sec_context | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	ctx->save_nestlevel = NewGUCNestLevel();
}

/*
 * Back to the saved user.  Every setting changed since, even with a plain
 * SET, is rolled back (AtEOXact_GUC with isCommit = false, as PostgreSQL
 * does after running index functions and other user code).
 */
void
dbaccess_restore_user(ReplstampOwnerContext *ctx)
{
	AtEOXact_GUC(false, ctx->save_nestlevel);
	SetUserIdAndSecContext(ctx->save_userid, ctx->save_sec_context);
}

/*
 * Run one statement through SPI (the caller is connected) and raise an
 * internal error unless it returns expected.
 */
void
dbaccess_spi_exec(const char *sql, int nargs, Oid *types, Datum *values, const char *nulls,
				  int expected)
{
	int			ret = SPI_execute_with_args(sql, nargs, types, values, nulls, false, 0);

	if (ret != expected)
		elog(ERROR, "replstamp: query failed (%s): %s", SPI_result_code_string(ret), sql);
}

typedef struct KeptPlan
{
	const char *sql;			/* hash key: the statement's address */
	SPIPlanPtr	plan;
} KeptPlan;

/*
 * As dbaccess_spi_exec(), for a statement run once per change (sql a
 * string constant, the same types every time): prepared once per process
 * and kept, as PL/pgSQL keeps its statements' plans (the plan cache makes
 * it anew after DDL on what it reads).
 */
void
dbaccess_spi_exec_kept(const char *sql, int nargs, Oid *types, Datum *values, const char *nulls,
					   int expected)
{
	static HTAB *plans = NULL;
	KeptPlan   *e;
	bool		found;
	int			ret;

	if (plans == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(const char *);
		ctl.entrysize = sizeof(KeptPlan);
		ctl.hcxt = TopMemoryContext;
		plans = hash_create("replstamp kept plans", 16, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	e = hash_search(plans, &sql, HASH_ENTER, &found);
	if (!found)
		e->plan = NULL;
	if (e->plan == NULL)
	{
		SPIPlanPtr	plan = SPI_prepare(sql, nargs, types);

		if (plan == NULL || SPI_keepplan(plan) != 0)
			elog(ERROR, "replstamp: could not prepare (%s): %s", SPI_result_code_string(SPI_result), sql);
		e->plan = plan;
	}
	ret = SPI_execute_plan(e->plan, values, nulls, false, 0);
	if (ret != expected)
		elog(ERROR, "replstamp: query failed (%s): %s", SPI_result_code_string(ret), sql);
}

/*
 * Make rel (opened, RowExclusiveLock) the one result relation of estate,
 * with its indexes open, as PostgreSQL's logical replication apply does:
 * the executor's routines then insert, update and delete its tuples and
 * maintain its indexes (and fire its triggers) without a plan.
 */
ResultRelInfo *
dbaccess_open_result_rel(Relation rel, EState *estate)
{
	RangeTblEntry *rte = makeNode(RangeTblEntry);
	ResultRelInfo *rri = makeNode(ResultRelInfo);

	rte->rtekind = RTE_RELATION;
	rte->relid = RelationGetRelid(rel);
	rte->relkind = rel->rd_rel->relkind;
	rte->rellockmode = RowExclusiveLock;
	ExecInitRangeTable(estate, list_make1(rte));
	InitResultRelInfo(rri, rel, 1, NULL, 0);

	/*
	 * The triggers' function lookups live as long as the estate.  Left to the
	 * trigger manager, each is made on the first call in whatever context is
	 * current then (a row's, reset after every change): the cache
	 * fmgr_security_definer() keeps for a function with SET or SECURITY
	 * DEFINER was freed with the row and read again by the next one.
	 */
	if (rri->ri_TrigDesc)
	{
		for (int i = 0; i < rri->ri_TrigDesc->numtriggers; i++)
			fmgr_info_cxt(rri->ri_TrigDesc->triggers[i].tgfoid,
						  &rri->ri_TrigFunctions[i], estate->es_query_cxt);
	}
	/* Known to the executor, so that firing triggers finds it. */
	estate->es_opened_result_relations = lappend(estate->es_opened_result_relations, rri);
	ExecOpenIndices(rri, false);
	return rri;
}

/* A text[] of names (column names of a carry, dropped columns). */
Datum
dbaccess_names_array(List *names)
{
	Datum	   *elems = palloc(sizeof(Datum) * Max(list_length(names), 1));
	ListCell   *lc;
	int			n = 0;

	foreach(lc, names)
		elems[n++] = CStringGetTextDatum(lfirst(lc));
	return PointerGetDatum(construct_array(elems, n, TEXTOID, -1, false, TYPALIGN_INT));
}

/*-------------------------------------------------------------------------
 *
 * run_in_worker.c
 *		replstamp.sync(), replstamp.sync_all() and replstamp.prune() run in
 *		a background worker, which commits page by page (a function in the
 *		caller's transaction could not), while the caller waits for it.
 *
 * The caller takes a slot in shared memory (replstamp_shared->requests,
 * under its lock), starts the worker, waits for it, and reads the outcome
 * from the slot: the number of changes, or the error with its SQLSTATE,
 * detail and hint, which it raises again as its own.  A caller that is
 * cancelled or terminated stops the worker; its slot is released by a
 * before_shmem_exit callback if it exits without the usual cleanup.  The
 * generation number makes a worker that outlives its caller report
 * nowhere.  DROP and ALTER EXTENSION replstamp stop the worker first and
 * mark the request fenced (fence.c): its caller says why it stopped.
 *
 * The worker runs as the role that called, in the same database, with the
 * values the caller SET of replstamp's settings (a superuser's SET
 * replstamp.peer_timeout applies to the sync it calls), as a parallel
 * worker takes its leader's.  These
 * functions refuse to run inside a transaction block: the worker would
 * wait for locks the caller holds.
 *
 * While it waits, the caller holds its statement's snapshot, whose xmin
 * would keep every row version the worker's pages make dead from being
 * pruned: the HOT chains of rows changed again and again (a table's hot
 * rows, their replstamp.row_version entries) grew through the whole sync,
 * and each lookup walked them, so a sync slowed down with every change it
 * applied (a 100,000-change pgbench backlog: 17 s instead of 2.5 s).  When
 * the statement evaluates nothing but these functions, constants and
 * parameters ("SELECT replstamp.sync('a')"), nothing reads with that
 * snapshot after the wait, and the caller stops advertising its xmin while
 * it waits, as VACUUM's own process is left out of the horizons.  Any
 * other statement keeps it.
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_language.h"
#include "catalog/pg_proc.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "nodes/nodeFuncs.h"
#include "nodes/plannodes.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "tcop/pquery.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/guc_tables.h"
#include "utils/memutils.h"
#include "utils/portal.h"
#include "utils/syscache.h"

#include "catalog.h"
#include "compat.h"
#include "errors.h"
#include "fence.h"
#include "prune.h"
#include "shmem.h"
#include "sync.h"
#include "workers.h"

PG_FUNCTION_INFO_V1(replstamp_sync);
PG_FUNCTION_INFO_V1(replstamp_sync_all);
PG_FUNCTION_INFO_V1(replstamp_prune);

PGDLLEXPORT void replstamp_request_main(Datum arg);

/* What a request worker is asked to do, in bgw_extra. */
typedef struct Assignment
{
	int			index;
	uint32		generation;
	char		kind;			/* 'S' one peer, 'A' all peers, 'P' prune */
} Assignment;

static int	my_request = -1;

/*
 * In a request worker: the warnings it emits, relayed to the caller, one a
 * line, each with its hint after a tab.
 */
static StringInfo relayed = NULL;
static emit_log_hook_type prev_emit_log_hook = NULL;

static void
relay_warnings(ErrorData *edata)
{
	if (relayed && edata->elevel == WARNING && edata->message &&
		relayed->len + strlen(edata->message) + (edata->hint ? strlen(edata->hint) + 1 : 0) + 2 <
		SYNC_MESSAGE_LEN)
		appendStringInfo(relayed, "%s%s%s%s", relayed->len ? "\n" : "", edata->message,
						 edata->hint ? "\t" : "", edata->hint ? edata->hint : "");
	if (prev_emit_log_hook)
		prev_emit_log_hook(edata);
}

static void
release_request(int code, Datum arg)
{
	if (my_request < 0 || replstamp_shared == NULL)
		return;
	LWLockAcquire(replstamp_shared->lock, LW_EXCLUSIVE);
	if (replstamp_shared->requests[my_request].requester == MyProcPid)
	{
		replstamp_shared->requests[my_request].in_use = false;
		replstamp_shared->requests[my_request].generation++;
	}
	LWLockRelease(replstamp_shared->lock);
	my_request = -1;
}

static const char *
kind_name(char kind)
{
	return kind == 'S' ? "replstamp.sync()" : kind == 'A' ? "replstamp.sync_all()" : "replstamp.prune()";
}

/* Is funcid one of this file's functions (the C symbols of this library)? */
static bool
is_request_function(Oid funcid)
{
	HeapTuple	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(funcid));
	bool		ours = false;

	if (HeapTupleIsValid(tup))
	{
		Form_pg_proc proc = (Form_pg_proc) GETSTRUCT(tup);
		bool		isnull;
		Datum		src;

		if (proc->prolang == ClanguageId)
		{
			src = SysCacheGetAttr(PROCOID, tup, Anum_pg_proc_prosrc, &isnull);
			if (!isnull)
			{
				char	   *name = TextDatumGetCString(src);

				ours = strcmp(name, "replstamp_sync") == 0 ||
					strcmp(name, "replstamp_sync_all") == 0 ||
					strcmp(name, "replstamp_prune") == 0;
			}
		}
		ReleaseSysCache(tup);
	}
	return ours;
}

/* Only constants, parameters and calls of this file's functions? */
static bool
only_requests_walker(Node *node, void *context)
{
	if (node == NULL)
		return false;
	switch (nodeTag(node))
	{
		case T_Const:
		case T_Param:
		case T_TargetEntry:
		case T_List:
		case T_RelabelType:
			break;
		case T_FuncExpr:
			if (!is_request_function(((FuncExpr *) node)->funcid))
				return true;
			break;
		default:
			return true;
	}
	return expression_tree_walker(node, only_requests_walker, context);
}

/*
 * Does the statement that called us read nothing once we return: a plain
 * SELECT of these functions, constants and parameters, with no table, no
 * subquery and no other function?  (See the header comment.)
 */
static bool
caller_reads_nothing(void)
{
	PlannedStmt *stmt;
	Plan	   *plan;
	ListCell   *lc;

	if (ActivePortal == NULL || ActivePortal->strategy != PORTAL_ONE_SELECT ||
		list_length(ActivePortal->stmts) != 1)
		return false;
	stmt = linitial_node(PlannedStmt, ActivePortal->stmts);
	plan = stmt->planTree;
	if (stmt->commandType != CMD_SELECT || stmt->utilityStmt != NULL ||
		stmt->subplans != NIL || plan == NULL || !IsA(plan, Result) ||
		plan->lefttree != NULL || plan->initPlan != NIL)
		return false;
	foreach(lc, stmt->rtable)
	{
		if (lfirst_node(RangeTblEntry, lc)->rtekind != RTE_RESULT)
			return false;
	}
	return !only_requests_walker((Node *) plan->targetlist, NULL) &&
		!only_requests_walker((Node *) plan->qual, NULL) &&
		!only_requests_walker(((Result *) plan)->resconstantqual, NULL);
}

/*
 * The values of replstamp's settings that the caller's session set (SET,
 * SET LOCAL, a function's SET clause, the client's options), as
 * "name=value" lines.  Those of postgresql.conf, ALTER SYSTEM, ALTER
 * DATABASE and ALTER ROLE the worker has already.
 */
static char *
caller_settings(void)
{
	struct config_generic **vars = get_guc_variables();
	int			n = GetNumConfigOptions();
	StringInfoData buf;

	initStringInfo(&buf);
	for (int i = 0; i < n; i++)
	{
		struct config_generic *g = vars[i];

		if (strncmp(g->name, "replstamp.", 10) != 0 ||
			(g->source != PGC_S_SESSION && g->source != PGC_S_CLIENT) ||
			(g->flags & GUC_CUSTOM_PLACEHOLDER))
			continue;
		appendStringInfo(&buf, "%s=%s\n", g->name, GetConfigOption(g->name, false, false));
	}
	if (buf.len >= SYNC_MESSAGE_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("the replstamp settings of this session take more than %d bytes",
						SYNC_MESSAGE_LEN - 1),
				 errhint("RESET some of them, or set them with ALTER SYSTEM.")));
	return buf.data;
}

/* In the worker: take on the caller's settings. */
static void
take_settings(char *lines)
{
	char	   *save;

	for (char *line = strtok_r(lines, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
	{
		char	   *eq = strchr(line, '=');

		if (eq == NULL)
			continue;
		*eq = '\0';
		SetConfigOption(line, eq + 1, PGC_SUSET, PGC_S_SESSION);
	}
}

/*
 * Run a request in a background worker and wait for it.
 */
static int64
run_in_worker(char kind, const char *peer)
{
	Assignment	a;
	BackgroundWorkerHandle *handle;
	SyncRequest result;
	static bool callback_registered = false;
	char	   *settings = caller_settings();

	shmem_require();
	(void) catalog_get_v11(kind_name(kind));
	PreventInTransactionBlock(true, kind_name(kind));
	if (kind == 'S')
		sync_check_peer(peer);

	if (!callback_registered)
	{
		before_shmem_exit(release_request, (Datum) 0);
		callback_registered = true;
	}
	a.kind = kind;
	LWLockAcquire(replstamp_shared->lock, LW_EXCLUSIVE);
	for (a.index = 0; a.index < MAX_SYNC_REQUESTS; a.index++)
		if (!replstamp_shared->requests[a.index].in_use)
			break;
	if (a.index < MAX_SYNC_REQUESTS)
	{
		SyncRequest *req = &replstamp_shared->requests[a.index];
		uint32		generation = req->generation + 1;

		memset(req, 0, sizeof(SyncRequest));
		req->in_use = true;
		req->generation = generation;
		req->dboid = MyDatabaseId;
		req->userid = GetUserId();
		strlcpy(req->peer, peer, sizeof(req->peer));
		strlcpy(req->settings, settings, sizeof(req->settings));
		req->requester = MyProcPid;
		a.generation = generation;
		my_request = a.index;
	}
	LWLockRelease(replstamp_shared->lock);
	if (fence_is_up(MyDatabaseId))
	{
		release_request(0, (Datum) 0);
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot run %s while extension \"replstamp\" is being dropped or updated", kind_name(kind)),
				 errhint("Run it again once the DROP EXTENSION or ALTER EXTENSION has finished.")));
	}
	if (a.index >= MAX_SYNC_REQUESTS)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("too many syncs and prunes are running"),
				 errhint("Wait for one to finish.")));

	PG_TRY();
	{
		if (!worker_start("replstamp_request_main",
						  kind == 'P' ? "replstamp prune" : "replstamp sync request",
						  MyDatabaseId, GetUserId(), &a, sizeof(a), &handle))
			ereport(ERROR,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 errmsg("could not start a background worker for %s", kind_name(kind)),
					 errhint("Raise max_worker_processes.")));
		PG_TRY_NESTED();
		{
			TransactionId xmin = MyProc->xmin;
			bool		release = TransactionIdIsValid(xmin) && caller_reads_nothing();

			if (release)
				MyProc->xmin = InvalidTransactionId;
			(void) WaitForBackgroundWorkerShutdown(handle);
			if (release)
				MyProc->xmin = xmin;
		}
		PG_CATCH_NESTED();
		{
			/* Cancelled or terminated: the worker stops with us. */
			TerminateBackgroundWorker(handle);
			PG_RE_THROW();
		}
		PG_END_TRY_NESTED();
		LWLockAcquire(replstamp_shared->lock, LW_SHARED);
		result = replstamp_shared->requests[a.index];
		LWLockRelease(replstamp_shared->lock);
	}
	PG_FINALLY();
	{
		release_request(0, (Datum) 0);
	}
	PG_END_TRY();

	if (!result.done && result.fenced)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%s was stopped because extension \"replstamp\" is being dropped or updated", kind_name(kind)),
				 errdetail("DROP EXTENSION and ALTER EXTENSION stop replstamp's work in their database first, so that they never wait for it."),
				 errhint("If the extension is still installed, run it again.")));
	if (!result.done)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("the background worker of %s exited without reporting", kind_name(kind)),
				 errhint("See the server log.")));
	if (result.warnings[0])
	{
		char	   *w = pstrdup(result.warnings);
		char	   *save;

		for (char *line = strtok_r(w, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
		{
			char	   *hint = strchr(line, '\t');

			if (hint)
				*hint++ = '\0';
			ereport(WARNING, (errmsg_internal("%s", line), hint ? errhint("%s", hint) : 0));
		}
	}
	if (result.sqlerrcode != 0)
		ereport(ERROR,
				(errcode(result.sqlerrcode),
				 errmsg_internal("%s", result.message),
				 result.detail[0] ? errdetail_internal("%s", result.detail) : 0,
				 result.hint[0] ? errhint("%s", result.hint) : 0,
				 result.context[0] ? errcontext("%s", result.context) : 0));
	return result.applied;
}

/*
 * replstamp.sync(peer text) RETURNS bigint: pull from one peer; returns
 * the number of changes applied.
 */
Datum
replstamp_sync(PG_FUNCTION_ARGS)
{
	char	   *peer = text_to_cstring(PG_GETARG_TEXT_PP(0));

	if (peer[0] == '\0' || strlen(peer) >= NAMEDATALEN)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("peer \"%s\" does not exist", peer)));
	PG_RETURN_INT64(run_in_worker('S', peer));
}

/*
 * replstamp.sync_all() RETURNS bigint: every peer, each on its own.
 */
Datum
replstamp_sync_all(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT64(run_in_worker('A', ""));
}

/*
 * replstamp.prune() RETURNS bigint: changes removed.
 */
Datum
replstamp_prune(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT64(run_in_worker('P', ""));
}

/* Report to the request, if it is still ours. */
static void
report(Assignment *a, int64 result, ErrorData *e, const char *warnings)
{
	SyncRequest *req = &replstamp_shared->requests[a->index];

	LWLockAcquire(replstamp_shared->lock, LW_EXCLUSIVE);
	if (req->in_use && req->generation == a->generation)
	{
		req->done = true;
		req->applied = result;
		if (e)
		{
			req->sqlerrcode = e->sqlerrcode ? e->sqlerrcode : ERRCODE_INTERNAL_ERROR;
			strlcpy(req->message, e->message ? e->message : "unknown error", SYNC_MESSAGE_LEN);

			/*
			 * Only replstamp's own details (errors.c): PostgreSQL's may quote
			 * the row ("Failing row contains ..."), and stay in this worker's
			 * log line.
			 */
			strlcpy(req->detail, e->detail && errors_raised_here(e) ?
					e->detail : "", SYNC_MESSAGE_LEN);
			strlcpy(req->hint, e->hint ? e->hint : "", SYNC_MESSAGE_LEN);
			strlcpy(req->context, e->context ? e->context : "", SYNC_MESSAGE_LEN);
		}
		strlcpy(req->warnings, warnings ? warnings : "", SYNC_MESSAGE_LEN);
	}
	LWLockRelease(replstamp_shared->lock);
}

/*
 * The worker behind a request.
 */
void
replstamp_request_main(Datum arg)
{
	Assignment	a;
	char		peer[NAMEDATALEN];
	char		settings[SYNC_MESSAGE_LEN];
	MemoryContext cxt;

	pqsignal(SIGTERM, die);
	worker_connect(arg, &a, sizeof(a));

	LWLockAcquire(replstamp_shared->lock, LW_SHARED);
	if (!replstamp_shared->requests[a.index].in_use ||
		replstamp_shared->requests[a.index].generation != a.generation)
	{
		LWLockRelease(replstamp_shared->lock);
		proc_exit(0);			/* the caller is gone */
	}
	strlcpy(peer, replstamp_shared->requests[a.index].peer, sizeof(peer));
	strlcpy(settings, replstamp_shared->requests[a.index].settings, sizeof(settings));
	LWLockRelease(replstamp_shared->lock);

	cxt = CurrentMemoryContext;
	relayed = makeStringInfo();
	prev_emit_log_hook = emit_log_hook;
	emit_log_hook = relay_warnings;
	PG_TRY();
	{
		int64		result;

		take_settings(settings);
		if (a.kind == 'S')
			result = sync_one_peer(peer);
		else if (a.kind == 'A')
			result = sync_all_peers();
		else
			result = prune_run();
		report(&a, result, NULL, relayed->data);
	}
	PG_CATCH();
	{
		ErrorData  *e = worker_catch_error(cxt);

		report(&a, 0, e, relayed->data);
		ereport(LOG,
				(errmsg("replstamp: %s failed: %s", kind_name(a.kind), e->message)));
	}
	PG_END_TRY();
	proc_exit(0);
}

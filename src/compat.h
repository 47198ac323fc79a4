/*-------------------------------------------------------------------------
 *
 * compat.h
 *		What differs between the PostgreSQL major releases replstamp builds
 *		against (15, 17 and 18), in one place, as pg_cron and pglogical
 *		keep theirs: the code is written against PostgreSQL 15's API, and
 *		where a later release changed a function, a macro or an inline
 *		wrapper here gives it back its 15 form.  Thresholds at 16 are the
 *		release that made the change (16 itself is not built: see the
 *		Makefile).
 *
 * A macro that keeps a function's name must come after the function's own
 * declaration: this header includes every PostgreSQL header it wraps
 * first, so that a later #include of one is a no-op.  Include it after
 * PostgreSQL's headers, among replstamp's own.
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#ifndef REPLSTAMP_COMPAT_H
#define REPLSTAMP_COMPAT_H

#include "access/genam.h"
#include "access/relation.h"
#include "access/xlog.h"
#include "catalog/dependency.h"
#include "catalog/namespace.h"
#include "executor/executor.h"
#include "miscadmin.h"
#include "replication/slot.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/reinit.h"
#include "utils/acl.h"
#include "utils/backend_status.h"
#include "utils/guc.h"
#include "utils/guc_tables.h"
#include "utils/rel.h"
#include "utils/regproc.h"
#include "utils/relcache.h"

#if PG_VERSION_NUM >= 160000
#include "access/xlogbackup.h"
#include "catalog/pg_class.h"
#include "catalog/pg_extension.h"
#include "parser/parse_relation.h"
#endif
#if PG_VERSION_NUM >= 170000
#include "common/file_utils.h"	/* PG_TEMP_FILE_PREFIX, was storage/fd.h */
#include "storage/procarray.h"
#include "storage/procnumber.h"
#else
#include "storage/backendid.h"
#include "storage/fd.h"
#include "storage/sinvaladt.h"
#endif

/*
 * Headers of a newer release built on a newer C library may declare that
 * the library has strlcpy (glibc 2.38 added it) while this one does not:
 * the server then still exports PostgreSQL's own (src/port), declared here.
 */
#if HAVE_DECL_STRLCPY && defined(__GLIBC__) && !__GLIBC_PREREQ(2, 38)
extern size_t strlcpy(char *dst, const char *src, size_t siz);
#endif

/* 18 made noreturn a prefix (pg_noreturn) and dropped the attribute form. */
#ifndef pg_attribute_noreturn
#if defined(__GNUC__) || defined(__clang__)
#define pg_attribute_noreturn() __attribute__((noreturn))
#else
#define pg_attribute_noreturn()
#endif
#endif

/*
 * 17 dropped old_snapshot_threshold and its SQLSTATE; replstamp still
 * reports "too far behind to pull from" with it, which peers of any
 * release recognize.
 */
#ifndef ERRCODE_SNAPSHOT_TOO_OLD
#define ERRCODE_SNAPSHOT_TOO_OLD MAKE_SQLSTATE('7','2','0','0','0')
#endif

/*
 * A PG_TRY inside another: 16 lets it name its variables apart, which
 * -Wshadow=compatible-local (in 16's compiler flags) asks for; 15 cannot.
 */
#if PG_VERSION_NUM >= 160000
#define PG_TRY_NESTED() PG_TRY(nested)
#define PG_CATCH_NESTED() PG_CATCH(nested)
#define PG_FINALLY_NESTED() PG_FINALLY(nested)
#define PG_END_TRY_NESTED() PG_END_TRY(nested)
#else
#define PG_TRY_NESTED() PG_TRY()
#define PG_CATCH_NESTED() PG_CATCH()
#define PG_FINALLY_NESTED() PG_FINALLY()
#define PG_END_TRY_NESTED() PG_END_TRY()
#endif

/* ---- names and arguments ---- */

#if PG_VERSION_NUM >= 160000
/* 16 added soft error reporting (escontext). */
#define stringToQualifiedNameList(string) stringToQualifiedNameList((string), NULL)
/* 16: one ownership check for every catalog. */
#define pg_class_ownercheck(relid, roleid) \
	object_ownercheck(RelationRelationId, (relid), (roleid))
#define pg_extension_ownercheck(extoid, roleid) \
	object_ownercheck(ExtensionRelationId, (extoid), (roleid))
/* 16: EPQ knows the result relations (none: replstamp has no plan). */
#define EvalPlanQualInit(epqstate, estate, subplan, auxrowmarks, epqParam) \
	EvalPlanQualInit((epqstate), (estate), (subplan), (auxrowmarks), (epqParam), NIL)
/* 16 renamed it (the index into the local array, from 1, as before). */
#define pgstat_fetch_stat_local_beentry(idx) pgstat_get_local_beentry_by_index(idx)
#endif

/*
 * The map from a partitioned table's columns to a leaf partition's (NULL
 * when they match): set when tuple routing opens the leaf until 15, built
 * on first use since 16.
 */
#if PG_VERSION_NUM >= 160000
#define replstamp_root_to_partition_map(rri, estate) ExecGetRootToChildMap((rri), (estate))
#else
#define replstamp_root_to_partition_map(rri, estate) ((rri)->ri_RootToPartitionMap)
#endif

#if PG_VERSION_NUM >= 170000
/*
 * 17: a wait event set belongs to a resource owner, which frees it on
 * error, not to a memory context; FreeWaitEventSet() frees it as before.
 */
#define CreateWaitEventSet(context, nevents) \
	CreateWaitEventSet(CurrentResourceOwner, (nevents))
/* 17: the flag became a test of the backend type. */
#define IsBackgroundWorker AmBackgroundWorkerProcess()
/* 17: slots may be synchronized to standbys (replstamp's are temporary). */
#define ReplicationSlotCreate(name, db_specific, persistency, two_phase) \
	ReplicationSlotCreate((name), (db_specific), (persistency), (two_phase), false, false)
#endif

#if PG_VERSION_NUM >= 180000
/* 18: a deferrable primary key is returned only when asked for; before, never. */
#define RelationGetPrimaryKeyIndex(rel) RelationGetPrimaryKeyIndex((rel), false)
/* 18: scans may count into EXPLAIN's instrumentation. */
#define index_beginscan(heap, index, snapshot, nkeys, norderbys) \
	index_beginscan((heap), (index), (snapshot), NULL, (nkeys), (norderbys))
#endif

/* ---- wrappers ---- */

#if PG_VERSION_NUM >= 160000
/*
 * 16 replaced get_guc_variables() and GetNumConfigOptions() by one call
 * that builds the array: the count comes from a second call (the array of
 * the first is left to the memory context, as 15's caller expects).
 */
static inline struct config_generic **
compat_get_guc_variables(void)
{
	int			n;

	return get_guc_variables(&n);
}

static inline int
compat_num_guc_variables(void)
{
	int			n;

	pfree(get_guc_variables(&n));
	return n;
}
#define get_guc_variables() compat_get_guc_variables()
#define GetNumConfigOptions() compat_num_guc_variables()

/*
 * 16 checks permissions through RTEPermissionInfo; 18 also wants the
 * range table entries that partition pruning kept (all of them).
 */
static inline void
compat_ExecInitRangeTable(EState *estate, List *rangeTable)
{
	List	   *perminfos = NIL;
	ListCell   *lc;

	foreach(lc, rangeTable)
		(void) addRTEPermissionInfo(&perminfos, lfirst_node(RangeTblEntry, lc));
#if PG_VERSION_NUM >= 180000
	ExecInitRangeTable(estate, rangeTable, perminfos,
					   bms_add_range(NULL, 1, list_length(rangeTable)));
#else
	ExecInitRangeTable(estate, rangeTable, perminfos);
#endif
}
#define ExecInitRangeTable(estate, rangeTable) compat_ExecInitRangeTable((estate), (rangeTable))

/*
 * 16 keeps a backup session in a BackupState, where 15 kept it in the label
 * file: with 15's calls, the state of this backend's one session lives
 * here.  The label is built at the start, as 15 does (17's incremental
 * backups add a line, for a full backup none).
 */
static BackupState *compat_backup_state pg_attribute_unused();

static inline XLogRecPtr
compat_do_pg_backup_start(const char *backupidstr, bool fast, TimeLineID *starttli_p,
						  StringInfo labelfile, List **tablespaces, StringInfo tblspcmapfile)
{
	compat_backup_state = palloc0(sizeof(BackupState));
	do_pg_backup_start(backupidstr, fast, tablespaces, compat_backup_state, tblspcmapfile);
	*starttli_p = compat_backup_state->starttli;
	appendStringInfoString(labelfile, build_backup_content(compat_backup_state, false));
	return compat_backup_state->startpoint;
}

static inline XLogRecPtr
compat_do_pg_backup_stop(char *labelfile, bool waitforarchive, TimeLineID *stoptli_p)
{
	(void) labelfile;
	do_pg_backup_stop(compat_backup_state, waitforarchive);
	*stoptli_p = compat_backup_state->stoptli;
	return compat_backup_state->stoppoint;
}
#define do_pg_backup_start(backupidstr, fast, starttli_p, labelfile, tablespaces, tblspcmapfile) \
	compat_do_pg_backup_start((backupidstr), (fast), (starttli_p), (labelfile), (tablespaces), (tblspcmapfile))
#define do_pg_backup_stop(labelfile, waitforarchive, stoptli_p) \
	compat_do_pg_backup_stop((labelfile), (waitforarchive), (stoptli_p))
#endif							/* PG_VERSION_NUM >= 160000 */

#if PG_VERSION_NUM >= 170000
/*
 * 17 parses the relation number and segment too, and no longer says how
 * many characters the number took.
 */
static inline bool
compat_parse_filename_for_nontemp_relation(const char *name, int *relnumchars,
										   ForkNumber *fork)
{
	RelFileNumber relnumber;
	unsigned	segno;

	if (!parse_filename_for_nontemp_relation(name, &relnumber, fork, &segno))
		return false;
	*relnumchars = (int) strspn(name, "0123456789");
	return true;
}
#define parse_filename_for_nontemp_relation(name, relnumchars, fork) \
	compat_parse_filename_for_nontemp_relation((name), (relnumchars), (fork))

/* 17 takes the relation (for partitioned tables' identity columns). */
static inline Oid
compat_getIdentitySequence(Oid relid, AttrNumber attnum, bool missing_ok)
{
	Relation	rel = relation_open(relid, AccessShareLock);
	Oid			seqid = getIdentitySequence(rel, attnum, missing_ok);

	relation_close(rel, NoLock);
	return seqid;
}
#define getIdentitySequence(relid, attnum, missing_ok) \
	compat_getIdentitySequence((relid), (attnum), (missing_ok))
#endif							/* PG_VERSION_NUM >= 170000 */

/* ---- fields and numbering: used by name, one line per call site ---- */

/* The local transaction ID of a PGPROC: 17 moved it into vxid. */
#if PG_VERSION_NUM >= 170000
#define PGPROC_LXID(proc) ((proc)->vxid.lxid)
#else
#define PGPROC_LXID(proc) ((proc)->lxid)
#endif

/* A relation's file number: 16 renamed RelFileNode to RelFileLocator. */
#if PG_VERSION_NUM >= 160000
#define RELATION_FILENUMBER(rel) ((rel)->rd_locator.relNumber)
#else
#define RELATION_FILENUMBER(rel) ((rel)->rd_node.relNode)
#endif

/*
 * This backend's index among the PGPROCs of backends, from 0, or -1 if it
 * has none: 17's ProcNumber, 15's BackendId less one (BackendIds start at
 * 1).  Regular backends and background workers are below MaxBackends in
 * both.  And the PGPROC at such an index, NULL if none runs there.
 */
#if PG_VERSION_NUM >= 170000
#define replstamp_my_proc_index() ((int) MyProcNumber)
#define replstamp_proc_at_index(index) ProcNumberGetProc(index)
#else
#define replstamp_my_proc_index() \
	(MyBackendId == InvalidBackendId ? -1 : (int) MyBackendId - 1)
#define replstamp_proc_at_index(index) BackendIdGetProc((index) + 1)
#endif

#endif							/* REPLSTAMP_COMPAT_H */

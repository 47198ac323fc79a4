/*-------------------------------------------------------------------------
 *
 * identity.c
 *		The identity check: after every server start, each database with
 *		replstamp finds out whether it is a restored or copied data set and,
 *		if so, retires its replica ID and mints a new one before it stamps
 *		anything.  Also replstamp.rotate(), rotations asked for by the sync
 *		when peers show that this data set went back in time, the epochs
 *		that let them see it, and the re-issue of stranded changes.
 *
 * Signals that this data set is not the one that minted its replica ID
 * (any one is enough; all that apply are recorded as the reason):
 *	- replstamp.node.state = 'backup': a backup flipped by replstamp;
 *	- backup_label.old changed: PostgreSQL renames a base backup's
 *	  backup_label to backup_label.old when recovery from it ends, whoever
 *	  took the backup; the fingerprint (database OID, START WAL LOCATION,
 *	  START TIME, LABEL) is kept in node.restore_fingerprint;
 *	- the database OID changed (CREATE DATABASE ... TEMPLATE copied it);
 *	- the timeline changed (point-in-time recovery, promoted standby);
 *	- the system identifier changed (a copy into another cluster), unless
 *	  pg_upgrade made this cluster from the one that minted the ID: see
 *	  "pg_upgrade" below.
 * A data set put back in time without any of these (a VM snapshot, a cold
 * copy of the data directory) is caught by its peers instead (sync.c,
 * serve.c), through the epochs below, and rotates through
 * identity_rotate_diverged().
 *
 * A rotation retires the old ID with the serial below which this data set
 * is known to hold all of its changes (lost_after: the lowest uncommitted
 * serial recorded at backup, the one last recorded in replstamp.lus_mark
 * (identity_mark_lus(), identity_mark_served()), or the point where the
 * peers' history parts from ours).  Changes of the old ID held here from lost_after on are re-issued
 * under the new ID (same table, key, image and stamp time), so that they
 * reach the peers although the vector no longer claims them, and the old
 * stamps are dropped here, so that the peers' own versions of those
 * serials can be pulled back.  No stamp is ever given to two changes.
 *
 * Epochs: every start of a database (every identity check) records in
 * replstamp.epoch, for its current replica ID, a random token and the
 * serial from which that start's history may differ from the last one's:
 * the first serial it does not hold from where it was last known to be
 * whole (replstamp.lus_mark; see epoch_start()).  Two copies of one data
 * set that both go on writing have different tokens from some serial on;
 * a peer that holds changes of both sees it.
 *
 * pg_upgrade: the new cluster has a system identifier of its own, and no
 * backup_label.old, but it is the same data set moved on to a new major
 * release, not a copy: it keeps its replica ID.  pg_upgrade starts both
 * clusters in binary-upgrade mode, in which nothing of replstamp runs but
 * identity_note_binary_upgrade(): it writes UPGRADE_MARK_FILE into the data
 * directory, naming that cluster's system identifier.  The first normal
 * start after it reads and removes the file (identity_init()); when the
 * file names this cluster, the checks of that start take a changed system
 * identifier, and a backup_label.old gone, for the upgrade they are, and
 * record the new ones.  Any other signal still rotates.  The old cluster,
 * if it is started again and writes, is a clone of the upgraded one, caught
 * by the peers as every clone is (the epochs below).
 *
 * Who checks: the launcher (launcher.c) starts one worker per database
 * after every start.  Until a database is checked, the stamp trigger does
 * the check itself, inside the writer's transaction.  A database is checked
 * for this start when replstamp.node.verified_token equals the token in
 * shared memory, which is new at every start: a check that is rolled back
 * (a savepoint, an error) leaves the row as it was, so the next stamp
 * checks again.
 *
 * Concurrency contract:
 *	- every check and rotation locks the node row (SELECT ... FOR UPDATE)
 *	  before it reads it, so they run one after the other; one that waited
 *	  reads the row the previous one committed, finds it verified or no
 *	  signal left, and rotates nothing: exactly one rotation happens.
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <sys/stat.h>

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "catalog.h"
#include "changelog.h"
#include "compat.h"
#include "dbaccess.h"
#include "ddl.h"
#include "errors.h"
#include "identity.h"
#include "rowimage.h"
#include "rowversion.h"
#include "sequences.h"
#include "serial.h"
#include "shmem.h"
#include "workers.h"

PG_FUNCTION_INFO_V1(replstamp_rotate);
PG_FUNCTION_INFO_V1(replstamp_init_node);
PG_FUNCTION_INFO_V1(replstamp_node_changed);
PG_FUNCTION_INFO_V1(replstamp_verify_identity);

PGDLLEXPORT void replstamp_identity_db_main(Datum arg);

/* GUCs */
static bool rotate_on_restore = true;
static bool check_histories = true;
static bool reissue_on_rotation = true;
static int	debug_rotation_pause = 0;

/* 1.0 catalog only: this backend's check has committed / is in this xact. */
static bool v10_verified = false;
static bool v10_checked_in_xact = false;
static SubTransactionId v10_check_subid = InvalidSubTransactionId;
static bool callbacks_registered = false;

static bool v10_checked_this_start(void);

/*
 * pg_upgrade's mark in the data directory (see the file header), and whether
 * the first normal start after it found it naming this cluster: set in the
 * postmaster, inherited by every process of this start.
 */
#define UPGRADE_MARK_FILE "replstamp_pg_upgrade"
static bool upgraded_this_start = false;

static void read_upgrade_mark(void);
static bool upgrade_explains_fingerprint(const ReplstampNode *node, const char *fp_now);
static void record_upgrade(const ReplstampNode *node, const char *fp_now);


/*
 * Called instead of everything else when the library is loaded in
 * binary-upgrade mode, which only pg_upgrade uses (in the postmaster when
 * preloaded, in a backend by pg_upgrade's LOAD): marks the data directory,
 * which is the working directory, as pg_upgrade's.  A mark that cannot be
 * written costs the upgraded node a rotation, nothing more.
 */
void
identity_note_binary_upgrade(void)
{
	FILE	   *f;

	f = fopen(UPGRADE_MARK_FILE ".tmp", "w");
	if (f == NULL ||
		fprintf(f, "system identifier " UINT64_FORMAT "\n", GetSystemIdentifier()) < 0 ||
		fclose(f) != 0 ||
		rename(UPGRADE_MARK_FILE ".tmp", UPGRADE_MARK_FILE) != 0)
		ereport(WARNING,
				(errcode_for_file_access(),
				 errmsg("replstamp: could not write file \"%s\": %m", UPGRADE_MARK_FILE),
				 errdetail("The upgraded cluster will take new replica IDs when it starts.")));
}

/*
 * In the postmaster of a normal start: does pg_upgrade's mark name this
 * cluster?  The mark is removed, whatever it says: only the first start
 * after an upgrade may take a new system identifier for one.
 */
static void
read_upgrade_mark(void)
{
	FILE	   *f;
	uint64		sysid;

	f = fopen(UPGRADE_MARK_FILE, "r");
	if (f == NULL)
	{
		if (errno != ENOENT)
			ereport(WARNING,
					(errcode_for_file_access(),
					 errmsg("replstamp: could not read file \"%s\": %m", UPGRADE_MARK_FILE)));
		return;
	}
	if (fscanf(f, "system identifier " UINT64_FORMAT, &sysid) == 1 &&
		sysid == GetSystemIdentifier())
		upgraded_this_start = true;
	fclose(f);
	if (unlink(UPGRADE_MARK_FILE) != 0)
		ereport(WARNING,
				(errcode_for_file_access(),
				 errmsg("replstamp: could not remove file \"%s\": %m", UPGRADE_MARK_FILE)));
	if (upgraded_this_start)
		ereport(LOG,
				(errmsg("replstamp: this cluster was made by pg_upgrade: its databases keep their replica IDs")));
}

/*
 * GUCs.  Called from _PG_init.
 */
void
identity_init(void)
{
	if (process_shared_preload_libraries_in_progress && !IsUnderPostmaster)
		read_upgrade_mark();

	DefineCustomBoolVariable("replstamp.rotate_on_restore",
							 "Gives a restored or copied database a new replica ID before it stamps anything.",
							 "Off only logs a warning and keeps the old replica ID, so that peers skip "
							 "the restored node's new changes; it exists to show that failure.",
							 &rotate_on_restore,
							 true,
							 PGC_SUSET,
							 0,
							 NULL, NULL, NULL);

	DefineCustomBoolVariable("replstamp.check_histories",
							 "Compares the history of every replica ID with the peers' at each sync, to catch "
							 "nodes whose data went back in time or was cloned.",
							 "Off pulls without looking, so that a rolled-back node or a clone silently "
							 "diverges; it exists to show that failure.",
							 &check_histories,
							 true,
							 PGC_SUSET,
							 0,
							 NULL, NULL, NULL);

	DefineCustomBoolVariable("replstamp.reissue_on_rotation",
							 "Re-issues under the new replica ID the changes a rotation no longer claims under the old one.",
							 "Off leaves them stranded: held here, claimed nowhere, never served; it exists "
							 "to show that failure.",
							 &reissue_on_rotation,
							 true,
							 PGC_SUSET,
							 0,
							 NULL, NULL, NULL);

#ifdef REPLSTAMP_TESTING
	DefineCustomIntVariable("replstamp.debug_rotation_pause",
							"Testing aid: pause each rotation this long in the middle of its transaction.",
							"So that a test can kill the process that rotates half-way through. Zero "
							"(the default) means no pause.",
							&debug_rotation_pause,
							0, 0, 3600 * 1000,
							PGC_SUSET,
							GUC_UNIT_MS | GUC_NOT_IN_SAMPLE,
							NULL, NULL, NULL);
#endif
}

bool
identity_check_histories(void)
{
	return check_histories;
}

/*
 * Fingerprint of this data set's origin: the database OID, and the start
 * WAL location, start time and label of the base backup it was restored
 * from, if any (backup_label.old).
 */
char *
identity_fingerprint(void)
{
	StringInfoData buf;
	FILE	   *f;
	char		line[MAXPGPATH + 64];

	initStringInfo(&buf);
	appendStringInfo(&buf, "database %u", MyDatabaseId);
	f = AllocateFile("backup_label.old", "r");
	if (f == NULL)
	{
		if (errno != ENOENT)
			ereport(WARNING,
					(errcode_for_file_access(),
					 errmsg("could not read file \"%s\": %m", "backup_label.old")));
		return buf.data;
	}
	while (fgets(line, sizeof(line), f) != NULL)
	{
		if (strncmp(line, "START WAL LOCATION:", 19) == 0 ||
			strncmp(line, "START TIME:", 11) == 0 ||
			strncmp(line, "LABEL:", 6) == 0)
		{
			line[strcspn(line, "\n")] = '\0';
			appendStringInfo(&buf, "; %s", line);
		}
	}
	FreeFile(f);
	return buf.data;
}

/* Lock the node row and read it afresh.  Caller is connected to SPI. */
static const ReplstampNode *
lock_node(void)
{
	dbaccess_spi_exec("SELECT 1 FROM replstamp.node FOR UPDATE", 0, NULL, NULL, NULL, SPI_OK_SELECT);
	if (SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the state row replstamp.node is missing"),
				 errhint("Reinstall the extension with DROP EXTENSION replstamp and CREATE EXTENSION replstamp.")));
	catalog_node_forget();
	return catalog_node();
}

/*
 * Record an epoch of id: this start's (or a new ID's) history of id, which
 * may part from any other's from first_serial on (1.1).  Caller is
 * connected to SPI.
 */
static void
mint_epoch(const pg_uuid_t *id, int64 first_serial)
{
	Oid			types[2] = {UUIDOID, INT8OID};
	Datum		values[2] = {UUIDPGetDatum(id), Int64GetDatum(first_serial)};

	dbaccess_spi_exec("INSERT INTO replstamp.epoch (replica_id, first_serial, token, started_at) "
					  "VALUES ($1, $2, pg_catalog.gen_random_uuid(), pg_catalog.now())",
					  2, types, values, NULL, SPI_OK_INSERT);
}

/*
 * Re-issue under new_id every change of old_id held here with from_serial
 * <= serial <= to_serial: the same table, key, image and stamp time, a new
 * stamp; the old stamp is dropped here and every row that had it as its
 * latest version gets the new one.  A TRUNCATE's cover and a schema
 * change's record (ddl_reissue(), after kind) follow.  Returns how many.
 */
typedef struct ReissueList
{
	int64	   *serials;
	int			n;
	int			max;
} ReissueList;

static bool
collect_serial(Change *change, void *arg)
{
	ReissueList *l = arg;

	if (l->n >= l->max)
	{
		l->max *= 2;
		l->serials = repalloc_huge(l->serials, sizeof(int64) * l->max);
	}
	l->serials[l->n++] = change->serial;
	return true;
}

int64
identity_reissue(const ReplstampCatalog *cat, const pg_uuid_t *old_id,
				 int64 from_serial, int64 to_serial, const pg_uuid_t *new_id,
				 ReissueKind kind)
{
	ReissueList list;
	MemoryContext cxt,
				old;

	int64	   *new_serials;
	text	  **relations;

	list.max = 64;
	list.n = 0;
	list.serials = palloc(sizeof(int64) * list.max);
	(void) changelog_scan(cat, old_id, from_serial - 1, to_serial, false,
						  collect_serial, &list);
	/* What each became, and of which table: a TRUNCATE covers them. */
	new_serials = palloc0(sizeof(int64) * Max(list.n, 1));
	relations = palloc0(sizeof(text *) * Max(list.n, 1));

	cxt = AllocSetContextCreate(CurrentMemoryContext, "replstamp re-issue",
								ALLOCSET_DEFAULT_SIZES);
	for (int i = 0; i < list.n; i++)
	{
		Change		change;
		Change		copy;

		CHECK_FOR_INTERRUPTS();
		old = MemoryContextSwitchTo(cxt);
		if (changelog_fetch(cat, old_id, list.serials[i], &change))
		{
			copy = change;
			copy.replica_id = *new_id;
			copy.serial = serial_take(cat->serial_seq);
			copy.applied = false;
			if (change.op == 'T')
			{
				int64	   *olds = palloc(sizeof(int64) * Max(i, 1));
				int64	   *news = palloc(sizeof(int64) * Max(i, 1));
				int			k = 0;

				for (int j = 0; j < i; j++)
					if (relations[j] && rowimage_bytes_equal(relations[j], change.relation))
					{
						olds[k] = list.serials[j];
						news[k++] = new_serials[j];
					}
				copy.image = rowversion_truncate_reissued(change.image, old_id, from_serial,
														  new_id, olds, news, k);
			}
			else if (change.op == 'S')
				copy.image = ddl_reissue(&change, new_id, copy.serial, from_serial, kind);
			new_serials[i] = copy.serial;
			MemoryContextSwitchTo(old);
			relations[i] = DatumGetTextPCopy(PointerGetDatum(change.relation));
			MemoryContextSwitchTo(cxt);
			changelog_append(cat, &copy);
			rowversion_restamp(cat, &change, new_id, copy.serial);
			(void) changelog_delete(cat, old_id, list.serials[i]);
		}
		MemoryContextSwitchTo(old);
		MemoryContextReset(cxt);
	}
	MemoryContextDelete(cxt);
	pfree(list.serials);
	pfree(new_serials);
	for (int i = 0; i < list.n; i++)
		if (relations[i])
			pfree(relations[i]);
	pfree(relations);
	return list.n;
}

/*
 * Retire the current replica ID and mint a new one, in the current
 * transaction; the caller holds the node row lock and is connected to SPI.
 * lost_after >= 1 means this data set may lack the old ID's changes from
 * that serial on (it was restored, or it parted from its peers' history
 * there): the vector then claims the old ID only below it, so that a sync
 * pulls the rest back from the peers, and what it holds from there on is
 * re-issued under the new ID.  lost_after = 0 means every change the old ID
 * made is here (manual rotation): the old ID's vector entry follows the
 * lowest uncommitted serial like the current one's.  kind: whether the
 * peers' changes of the old ID from lost_after on are this data set's
 * (REISSUE_RESTORED) or not (REISSUE_DIVERGED: it parted from their
 * history there).
 */
static void
rotate_locked(const ReplstampCatalog *cat, const ReplstampNode *node,
			  pg_uuid_t *new_id, const char *reason, int64 lost_after,
			  ReissueKind kind, const char *fingerprint)
{
	pg_uuid_t	old_id = node->replica_id;
	Oid			t1[5] = {UUIDOID, TEXTOID, INT8OID, INT8OID, TEXTOID};
	Datum		v1[5];
	char		n1[5] = {' ', ' ', ' ', ' ', ' '};
	Oid			t2[5] = {UUIDOID, TEXTOID, INT8OID, INT4OID, TEXTOID};
	Datum		v2[5];
	int64		reissued = 0;

	Assert(IsTransactionState());

	/* Its blocks of sequence values differ from every ID's known here. */
	sequences_mint_id(new_id);

	v1[0] = UUIDPGetDatum(&old_id);
	v1[1] = CStringGetTextDatum(reason);
	if (node->has_backup_lus && node->in_backup)
		v1[2] = Int64GetDatum(node->backup_lus);
	else
		n1[2] = 'n';
	if (node->has_backup_next_serial && node->in_backup)
		v1[3] = Int64GetDatum(node->backup_next_serial);
	else
		n1[3] = 'n';
	if (node->backup_label && node->in_backup)
		v1[4] = CStringGetTextDatum(node->backup_label);
	else
		n1[4] = 'n';
	dbaccess_spi_exec("UPDATE replstamp.replica_history "
					  "SET retired_at = pg_catalog.now(), retired_reason = $2, "
					  "lus_at_retirement = $3, next_serial_at_retirement = $4, backup_label = $5 "
					  "WHERE replica_id OPERATOR(pg_catalog.=) $1",
					  5, t1, v1, n1, SPI_OK_UPDATE);

	v2[0] = UUIDPGetDatum(new_id);
	v2[1] = CStringGetTextDatum(reason);
	v2[2] = Int64GetDatum((int64) GetSystemIdentifier());
	v2[3] = Int32GetDatum((int32) GetWALInsertionTimeLine());
	v2[4] = CStringGetTextDatum(fingerprint);
	dbaccess_spi_exec("INSERT INTO replstamp.replica_history "
					  "(replica_id, minted_reason, system_identifier, timeline) "
					  "VALUES ($1, $2, $3, $4)",
					  4, t2, v2, NULL, SPI_OK_INSERT);

	/* Half-way: the old ID is retired, the new one is not current yet. */
	if (debug_rotation_pause > 0)
		worker_pause_for_tests(debug_rotation_pause, "rotation", "replstamp.debug_rotation_pause");

	if (lost_after >= 1)
	{
		Oid			t3[2] = {UUIDOID, INT8OID};
		Datum		v3[2];

		v3[0] = UUIDPGetDatum(&old_id);
		v3[1] = Int64GetDatum(lost_after - 1);
		dbaccess_spi_exec("INSERT INTO replstamp.vector_state (replica_id, serial) VALUES ($1, $2) "
						  "ON CONFLICT (replica_id) DO UPDATE SET serial = EXCLUDED.serial",
						  2, t3, v3, NULL, SPI_OK_INSERT);
	}

	dbaccess_spi_exec("UPDATE replstamp.node SET replica_id = $1, state = 'original', "
					  "minted_at = pg_catalog.now(), system_identifier = $3, timeline = $4, "
					  "restore_fingerprint = $5",
					  5, t2, v2, NULL, SPI_OK_UPDATE);

	/*
	 * Tracked sequences go to the new ID's block: whatever the old ID handed
	 * out after a backup, this copy cannot know how far it went.
	 */
	sequences_move_all(new_id);

	if (cat->v11)
	{
		/* The new ID's first epoch starts below every serial it will use. */
		mint_epoch(new_id, serial_next(cat->serial_seq));
		if (lost_after >= 1 && reissue_on_rotation)
			reissued = identity_reissue(cat, &old_id, lost_after, PG_INT64_MAX, new_id, kind);
	}

	ereport(LOG,
			(errmsg("replstamp: database \"%s\" retired replica ID %s and now stamps as %s",
					get_database_name(MyDatabaseId), catalog_uuid_text(&old_id),
					catalog_uuid_text(new_id)),
			 errdetail("Reason: %s.", reason),
			 reissued > 0 ?
			 errhint("%lld changes the old ID made from serial %lld on were re-issued under the new one, so that every peer gets them.",
					 (long long) reissued, (long long) lost_after) : 0));
}

/*
 * The serial of the old ID below which a copy holds every change, when the
 * copy carries no backup mark: the lowest uncommitted serial recorded in
 * replstamp.lus_mark (after each start, every maintenance round, after
 * syncs, and before serving a puller), if it is about this ID; else 1
 * (then everything held is re-issued).
 */
static int64
marked_lus(const ReplstampCatalog *cat, const pg_uuid_t *id)
{
	Oid			types[1] = {UUIDOID};
	Datum		values[1] = {UUIDPGetDatum(id)};
	bool		isnull;
	int64		lus = 1;

	if (!cat->v11)
		return 1;
	dbaccess_spi_exec("SELECT lus FROM replstamp.lus_mark WHERE replica_id OPERATOR(pg_catalog.=) $1",
					  1, types, values, NULL, SPI_OK_SELECT);
	if (SPI_processed > 0)
	{
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		if (!isnull && DatumGetInt64(d) >= 1)
			lus = DatumGetInt64(d);
	}
	return lus;
}

/*
 * Where the epoch of a start of id begins: the first serial of id this
 * data set does not hold, from the floor below which it was known to be
 * whole on: the lowest uncommitted serial recorded in replstamp.lus_mark,
 * or above what pruning walked (else 1); at most the next serial.
 *
 * No peer of this very history holds a change of id from there on: no
 * serial at or above the mark was ever served to a puller
 * (identity_mark_served()), so a crash restart keeps its ID.  And every
 * change a copy of this data set lacks and the original's peers hold is
 * from there on: a copy of a running data set (a VM or storage snapshot)
 * lacks what was in flight at the snapshot, which the original committed,
 * and what came after it -- all at or above the lowest uncommitted serial
 * of the snapshot, which is a serial the copy does not hold, at or above
 * the floor.  Not the sequence's position: after a crash the sequence
 * resumes where it was WAL-logged ahead, above serials the original went
 * on to hand out.  A peer that holds any of those sees another history
 * from this epoch on, and the copy rotates (epochs.c).  Between the floor
 * and the first serial not held, the serials were final and held in both
 * histories: scanning over them keeps a copy from re-issuing them.
 */
static int64
epoch_start(const ReplstampCatalog *cat, const pg_uuid_t *id)
{
	Oid			types[2] = {UUIDOID, INT8OID};
	Datum		values[2];
	int64		from = marked_lus(cat, id);
	int64		first;
	bool		isnull;

	values[0] = UUIDPGetDatum(id);
	dbaccess_spi_exec("SELECT walked_upto FROM replstamp.prune_progress WHERE replica_id OPERATOR(pg_catalog.=) $1",
					  1, types, values, NULL, SPI_OK_SELECT);
	if (SPI_processed > 0)
	{
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		if (!isnull)
			from = Max(from, DatumGetInt64(d) + 1);
	}

	values[1] = Int64GetDatum(from);
	dbaccess_spi_exec("SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM replstamp.changes "
					  "  WHERE replica_id OPERATOR(pg_catalog.=) $1 AND serial OPERATOR(pg_catalog.=) $2) THEN $2 "
					  "ELSE (SELECT pg_catalog.min(c.serial) OPERATOR(pg_catalog.+) 1 FROM replstamp.changes c "
					  "  WHERE c.replica_id OPERATOR(pg_catalog.=) $1 AND c.serial OPERATOR(pg_catalog.>=) $2 "
					  "  AND NOT EXISTS (SELECT 1 FROM replstamp.changes n WHERE n.replica_id OPERATOR(pg_catalog.=) $1 "
					  "    AND n.serial OPERATOR(pg_catalog.=) (c.serial OPERATOR(pg_catalog.+) 1))) END",
					  2, types, values, NULL, SPI_OK_SELECT);
	first = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	return Min(first, serial_next(cat->serial_seq));
}

/*
 * Raise replstamp.lus_mark to lus for the current replica ID id.  The mark
 * never goes down while it is about one ID, so that the epoch of the next
 * start begins above whatever a peer was served (epoch_start()).  Caller
 * is connected to SPI as the extension owner.
 */
void
identity_raise_lus_mark(const pg_uuid_t *id, int64 lus)
{
	Oid			types[2] = {UUIDOID, INT8OID};
	Datum		values[2] = {UUIDPGetDatum(id), Int64GetDatum(lus)};

	dbaccess_spi_exec("INSERT INTO replstamp.lus_mark (singleton, replica_id, lus, marked_at) "
					  "VALUES (true, $1, $2, pg_catalog.now()) ON CONFLICT (singleton) DO UPDATE "
					  "SET lus = CASE WHEN replstamp.lus_mark.replica_id OPERATOR(pg_catalog.=) EXCLUDED.replica_id "
					  "  THEN GREATEST(replstamp.lus_mark.lus, EXCLUDED.lus) ELSE EXCLUDED.lus END, "
					  "replica_id = EXCLUDED.replica_id, marked_at = EXCLUDED.marked_at",
					  2, types, values, NULL, SPI_OK_INSERT);
}

/*
 * Record the lowest uncommitted serial of the current replica ID, if a
 * serial was taken since this process last did (after each start, every
 * maintenance round, after syncs).  In a transaction.  The mark never goes
 * down while it is about one ID (a lowest uncommitted serial read while a
 * transaction starts can be below an earlier one): the re-issue from it
 * relies on that.
 */
void
identity_mark_lus(void)
{
	static bool marked = false;
	static uint64 marked_activity = 0;
	const ReplstampCatalog *cat = catalog_get(true);
	ReplstampOwnerContext ctx;
	uint64		activity;
	int64		lus;

	Assert(IsTransactionState());
	if (cat == NULL || !cat->v11 || RecoveryInProgress())
		return;
	activity = serial_activity();
	if (marked && activity == marked_activity)
		return;
	lus = serial_lus(cat->serial_seq);
	dbaccess_become_owner(&ctx);
	SPI_connect();
	identity_raise_lus_mark(&catalog_node()->replica_id, lus);
	SPI_finish();
	dbaccess_restore_user(&ctx);
	marked = true;
	marked_activity = activity;
}

/*
 * A node serves its vector, claiming its current replica ID id up to
 * lus - 1: raise the mark to lus, durably with this transaction, before
 * the puller reads a change (identity_mark_lus() raises it too).
 * Caller is connected to SPI as the extension owner.
 */
void
identity_mark_served(const pg_uuid_t *id, int64 lus)
{
	identity_raise_lus_mark(id, lus);
	/* Durable before the puller pulls, whatever synchronous_commit says. */
	(void) set_config_option("synchronous_commit", "local", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_LOCAL, true, 0, false);
}

/*
 * After a start, stamps are later than every stamp this database holds:
 * the hybrid clock's floor is in shared memory, which a restart empties.
 */
static void
restore_clock_floor(void)
{
	bool		isnull;
	Datum		d;

	dbaccess_spi_exec("SELECT pg_catalog.max(t) FROM ("
					  "SELECT pg_catalog.max(max_changed_at) AS t FROM replstamp.vector_state "
					  "UNION ALL SELECT (SELECT c.changed_at FROM replstamp.changes c "
					  "  WHERE c.replica_id OPERATOR(pg_catalog.=) h.replica_id "
					  "  ORDER BY c.serial DESC LIMIT 1) FROM replstamp.replica_history h) s",
					  0, NULL, NULL, NULL, SPI_OK_SELECT);
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (!isnull)
		serial_clock_seen(DatumGetTimestampTz(d));
}

/*
 * What says that the data set of the state row node is not the one that
 * minted its replica ID (fp_now: identity_fingerprint()), appended to
 * reason; nothing when it is.
 */
static void
restore_signals(const ReplstampNode *node, const char *fp_now, StringInfo reason)
{
	if (node->in_backup)
		appendStringInfo(reason, "restored from backup \"%s\" (state was 'backup')",
						 node->backup_label ? node->backup_label : "?");
	if ((node->restore_fingerprint == NULL || strcmp(node->restore_fingerprint, fp_now) != 0) &&
		!upgrade_explains_fingerprint(node, fp_now))
	{
		if (node->restore_fingerprint != NULL &&
			!catalog_fingerprint_is_this_database(node->restore_fingerprint))
			appendStringInfo(reason, "%scopied from another database",
							 reason->len ? "; " : "");
		else
			appendStringInfo(reason, "%sa base backup was restored (%s)",
							 reason->len ? "; " : "", fp_now);
	}
	if (node->timeline != (int32) GetWALInsertionTimeLine())
		appendStringInfo(reason, "%stimeline changed from %d to %u (point-in-time recovery or promoted standby)",
						 reason->len ? "; " : "", node->timeline, GetWALInsertionTimeLine());
	if (node->system_identifier != (int64) GetSystemIdentifier() && !upgraded_this_start)
		appendStringInfo(reason, "%ssystem identifier changed from " INT64_FORMAT " to " UINT64_FORMAT,
						 reason->len ? "; " : "", node->system_identifier, GetSystemIdentifier());
}

/*
 * In the first start after pg_upgrade, a fingerprint that differs only by
 * the backup_label.old the new data directory does not have: the database
 * OID, which pg_upgrade keeps, is the same, and there is no new
 * backup_label.old (a restore after the upgrade still shows).
 */
static bool
upgrade_explains_fingerprint(const ReplstampNode *node, const char *fp_now)
{
	char	   *db_only = psprintf("database %u", MyDatabaseId);
	size_t		len = strlen(db_only);

	return upgraded_this_start && node->restore_fingerprint != NULL &&
		strcmp(fp_now, db_only) == 0 &&
		strncmp(node->restore_fingerprint, db_only, len) == 0 &&
		(node->restore_fingerprint[len] == '\0' || node->restore_fingerprint[len] == ';');
}

/*
 * After pg_upgrade, what this database keeps: its replica ID, under the new
 * cluster's system identifier and fingerprint, which later starts compare
 * with.  Caller holds the node row's lock and found no other signal.
 */
static void
record_upgrade(const ReplstampNode *node, const char *fp_now)
{
	Oid			types[2] = {INT8OID, TEXTOID};
	Datum		values[2];

	values[0] = Int64GetDatum((int64) GetSystemIdentifier());
	values[1] = CStringGetTextDatum(fp_now);
	dbaccess_spi_exec("UPDATE replstamp.node SET system_identifier = $1, restore_fingerprint = $2",
					  2, types, values, NULL, SPI_OK_UPDATE);
	ereport(LOG,
			(errmsg("replstamp: database \"%s\" was upgraded by pg_upgrade and keeps replica ID %s",
					get_database_name(MyDatabaseId), catalog_uuid_text(&node->replica_id)),
			 errdetail("System identifier " INT64_FORMAT " before, " UINT64_FORMAT " now.",
					   node->system_identifier, GetSystemIdentifier())));
}

/*
 * The check itself, in the current transaction, as the extension owner.
 * Returns true if it rotated.
 */
static bool
identity_check(void)
{
	const ReplstampCatalog *cat = catalog_get(false);
	ReplstampOwnerContext ctx;
	const ReplstampNode *node;
	char	   *fp_now;
	StringInfoData reason;
	bool		rotated = false;
	int64		lost_after = 0;
	char	   *old_id;

	dbaccess_become_owner(&ctx);
	SPI_connect();
	node = lock_node();
	if (cat->v11 && node->verified)
	{
		/* Another check of this start committed while we waited. */
		SPI_finish();
		dbaccess_restore_user(&ctx);
		return false;
	}
	old_id = catalog_uuid_text(&node->replica_id);
	fp_now = identity_fingerprint();

	initStringInfo(&reason);

	/*
	 * Checked in this start while its catalog was 1.0: ALTER EXTENSION
	 * replstamp UPDATE only records that check, and a 'backup' mark now is a
	 * backup of the live node in progress, not a restore.
	 */
	if (!(cat->v11 && v10_checked_this_start()))
		restore_signals(node, fp_now, &reason);
	/* Whatever was in flight or came after the backup started is lost. */
	if (node->in_backup)
		lost_after = node->has_backup_lus ? node->backup_lus : 1;
	if (reason.len > 0 && lost_after == 0)
		lost_after = marked_lus(cat, &node->replica_id);

	if (reason.len > 0 && !rotate_on_restore)
		ereport(WARNING,
				(errmsg("replstamp: database \"%s\" was restored or copied but keeps replica ID %s",
						get_database_name(MyDatabaseId), old_id),
				 errdetail("Reason: %s.", reason.data),
				 errhint("replstamp.rotate_on_restore is off: peers will skip the changes this copy stamps with serials they have already seen. Turn it on and restart.")));
	else if (reason.len > 0)
	{
		pg_uuid_t	new_id;

		rotate_locked(cat, node, &new_id, reason.data, lost_after, REISSUE_RESTORED, fp_now);
		rotated = true;
	}
	else if (upgraded_this_start &&
			 (node->system_identifier != (int64) GetSystemIdentifier() ||
			  node->restore_fingerprint == NULL || strcmp(node->restore_fingerprint, fp_now) != 0))
		record_upgrade(node, fp_now);

	if (cat->v11)
	{
		Oid			types[1] = {UUIDOID};
		Datum		values[1] = {UUIDPGetDatum(&replstamp_shared->start_token)};

		if (!rotated)
		{
			mint_epoch(&node->replica_id, epoch_start(cat, &node->replica_id));
			/* A sequence recorded under another ID (pg_restore) moves. */
			sequences_move_all(&node->replica_id);
		}
		dbaccess_spi_exec("UPDATE replstamp.node SET verified_token = $1", 1, types, values, NULL,
						  SPI_OK_UPDATE);
		restore_clock_floor();
	}

	SPI_finish();
	dbaccess_restore_user(&ctx);
	catalog_node_forget();
	return rotated;
}

/*
 * 1.0 catalog only: has the current database been checked in this start?
 * The catalog has no column for the start's token, so shared memory lists
 * the databases checked.  Without that, a session that starts while the
 * live node is marked 'backup' would take it for a restored copy and
 * rotate.  Beyond V10_MAX_DBS such databases, the others are checked once
 * per session, as release 1.0 did.
 */
static bool
v10_checked_this_start(void)
{
	bool		found = false;

	SpinLockAcquire(&replstamp_shared->mutex);
	for (int i = 0; i < replstamp_shared->nv10_checked && !found; i++)
		found = replstamp_shared->v10_checked[i] == MyDatabaseId;
	SpinLockRelease(&replstamp_shared->mutex);
	return found;
}

/* 1.0 catalog only: a check of the current database has committed. */
static void
v10_mark_checked(void)
{
	bool		found = false;

	SpinLockAcquire(&replstamp_shared->mutex);
	for (int i = 0; i < replstamp_shared->nv10_checked && !found; i++)
		found = replstamp_shared->v10_checked[i] == MyDatabaseId;
	if (!found && replstamp_shared->nv10_checked < V10_MAX_DBS)
		replstamp_shared->v10_checked[replstamp_shared->nv10_checked++] = MyDatabaseId;
	SpinLockRelease(&replstamp_shared->mutex);
	v10_verified = true;
}

static void
v10_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
			if (v10_checked_in_xact)
				v10_mark_checked();
			v10_checked_in_xact = false;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PREPARE:
			v10_checked_in_xact = false;
			break;
		default:
			break;
	}
}

static void
v10_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
					 SubTransactionId parentSubid, void *arg)
{
	if (!v10_checked_in_xact)
		return;
	if (event == SUBXACT_EVENT_ABORT_SUB && v10_check_subid >= mySubid)
		v10_checked_in_xact = false;	/* the check was rolled back */
	else if (event == SUBXACT_EVENT_COMMIT_SUB && v10_check_subid == mySubid)
		v10_check_subid = parentSubid;
}

/*
 * The check in a worker of its own, which commits on its own: a writer
 * waits for that commit, not for another writer's transaction to end.
 * Returns false if no worker could run it (max_worker_processes).
 */
static bool
verify_in_worker(void)
{
	BackgroundWorkerHandle *handle;

	if (IsBackgroundWorker ||
		!worker_start("replstamp_identity_db_main", "replstamp identity check",
					  MyDatabaseId, InvalidOid, NULL, 0, &handle))
		return false;
	PG_TRY();
	{
		(void) WaitForBackgroundWorkerShutdown(handle);
	}
	PG_CATCH();
	{
		TerminateBackgroundWorker(handle);
		PG_RE_THROW();
	}
	PG_END_TRY();
	catalog_node_forget();
	return catalog_node()->verified;
}

/*
 * The check in the current transaction (no worker slot, or the catalog is
 * this transaction's own: CREATE EXTENSION).  A check rolled back by a
 * savepoint leaves the row unverified, and the next stamp checks again.
 */
static void
verify_in_xact(void)
{
	(void) identity_check();
	/* Make this transaction's new node row visible to its next stamps. */
	CommandCounterIncrement();
	catalog_node_forget();
}

/*
 * The stamp path's check, for a database not checked since the server
 * started (the launcher's worker has not run yet, or could not).
 */
void
identity_verify_slow(void)
{
	const ReplstampCatalog *cat = catalog_get(false);

	shmem_require();
	if (cat->v11)
	{
		if (catalog_node()->verified)
			return;
		if (!verify_in_worker())
			verify_in_xact();
		return;
	}

	/*
	 * The 1.0 catalog has no place for the token: once per start, as
	 * remembered in shared memory when the check commits.
	 */
	if (v10_verified || v10_checked_in_xact)
		return;
	if (v10_checked_this_start())
	{
		v10_verified = true;
		return;
	}

	/*
	 * Nothing says this data set was restored or copied: then there is
	 * nothing to rotate, and the state row is left unlocked.  The check locks
	 * it until its transaction ends, which would make the first stamp of
	 * every other session wait for this one's transaction, and fail in a
	 * read-only transaction (a 1.0 node pulling through serve_vector()).
	 */
	{
		StringInfoData reason;

		initStringInfo(&reason);
		restore_signals(catalog_node(), identity_fingerprint(), &reason);
		if (reason.len == 0)
		{
			v10_mark_checked();
			return;
		}
	}
	if (!callbacks_registered)
	{
		RegisterXactCallback(v10_xact_callback, NULL);
		RegisterSubXactCallback(v10_subxact_callback, NULL);
		callbacks_registered = true;
	}
	verify_in_xact();
	v10_checked_in_xact = true;
	v10_check_subid = GetCurrentSubTransactionId();
}

/*
 * replstamp._verify_identity(): the check, in the current transaction (the
 * install and upgrade scripts call it, so that a new or updated database is
 * checked before anything is stamped).
 */
Datum
replstamp_verify_identity(PG_FUNCTION_ARGS)
{
	shmem_require();
	if (!catalog_node()->verified)
		verify_in_xact();
	PG_RETURN_VOID();
}

/*
 * The peers show that this data set's history of diverged_id parts from
 * theirs at from_serial (it went back in time, or it is a clone): retire
 * that ID with from_serial as the point from which changes may be lost,
 * re-issue what this data set made under it since then, and mark the
 * epochs it minted since as dead, so that every node that holds changes of
 * them knows they were re-issued.  Runs in the current transaction.
 * Returns false if diverged_id is not the current ID any more.
 */
bool
identity_rotate_diverged(const pg_uuid_t *diverged_id, int64 from_serial,
						 const char *reason)
{
	const ReplstampCatalog *cat = catalog_get(false);
	ReplstampOwnerContext ctx;
	const ReplstampNode *node;
	pg_uuid_t	new_id;
	Oid			types[2] = {UUIDOID, INT8OID};
	Datum		values[2];

	/* Called in a sync or replstamp.serve(), which need the 1.2 catalog. */
	Assert(cat->v12);

	dbaccess_become_owner(&ctx);
	SPI_connect();
	node = lock_node();
	if (memcmp(node->replica_id.data, diverged_id->data, UUID_LEN) != 0)
	{
		SPI_finish();
		dbaccess_restore_user(&ctx);
		return false;
	}
	values[0] = UUIDPGetDatum(diverged_id);
	values[1] = Int64GetDatum(from_serial);
	dbaccess_spi_exec("UPDATE replstamp.epoch SET dead = true "
					  "WHERE replica_id OPERATOR(pg_catalog.=) $1 AND first_serial OPERATOR(pg_catalog.>=) $2",
					  2, types, values, NULL, SPI_OK_UPDATE);
	rotate_locked(cat, node, &new_id, reason, Max(from_serial, 1), REISSUE_DIVERGED, identity_fingerprint());
	SPI_finish();
	dbaccess_restore_user(&ctx);
	CommandCounterIncrement();
	catalog_node_forget();
	return true;
}

/*
 * replstamp.rotate(reason text): retire the current replica ID and mint a
 * new one, by hand.  Every change of the old ID stays here, so its vector
 * entry keeps following the lowest uncommitted serial.
 */
Datum
replstamp_rotate(PG_FUNCTION_ARGS)
{
	char	   *reason = text_to_cstring(PG_GETARG_TEXT_PP(0));
	const ReplstampCatalog *cat = catalog_get(false);
	ReplstampOwnerContext ctx;
	const ReplstampNode *node;
	pg_uuid_t  *new_id;

	if (strlen(reason) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a reason for the rotation is required"),
				 errhint("Say why, for example replstamp.rotate('node cloned by hand').")));

	new_id = palloc(sizeof(pg_uuid_t));
	dbaccess_become_owner(&ctx);
	SPI_connect();
	node = lock_node();
	rotate_locked(cat, node, new_id, psprintf("manual: %s", reason), 0, REISSUE_RESTORED, identity_fingerprint());
	SPI_finish();
	dbaccess_restore_user(&ctx);

	CommandCounterIncrement();
	catalog_node_forget();
	PG_RETURN_UUID_P(new_id);
}

/*
 * replstamp._init_node(): called once by the 1.0 install script.  Creates
 * the state row with a fresh replica ID and records it in replica_history.
 */
Datum
replstamp_init_node(PG_FUNCTION_ARGS)
{
	pg_uuid_t  *id = palloc(sizeof(pg_uuid_t));
	Oid			argtypes[4] = {UUIDOID, INT8OID, INT4OID, TEXTOID};
	Datum		args[4];

	catalog_mint_uuid(id);
	args[0] = UUIDPGetDatum(id);
	args[1] = Int64GetDatum((int64) GetSystemIdentifier());
	args[2] = Int32GetDatum((int32) GetWALInsertionTimeLine());
	/* A fresh ID is this data set's own: nothing to check until a restart. */
	args[3] = CStringGetTextDatum(identity_fingerprint());

	SPI_connect();
	dbaccess_spi_exec("INSERT INTO replstamp.node "
					  "(replica_id, system_identifier, timeline, restore_fingerprint) "
					  "VALUES ($1, $2, $3, $4)",
					  4, argtypes, args, NULL, SPI_OK_INSERT);
	dbaccess_spi_exec("INSERT INTO replstamp.replica_history "
					  "(replica_id, minted_reason, system_identifier, timeline) "
					  "VALUES ($1, 'created', $2, $3)",
					  3, argtypes, args, NULL, SPI_OK_INSERT);
	SPI_finish();
	PG_RETURN_DATUM(UUIDPGetDatum(id));
}

/*
 * Statement trigger on replstamp.node: every backend reloads the row once
 * this transaction commits (and this one at its next command).
 */
Datum
replstamp_node_changed(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"%s\" was not called by trigger manager",
						"replstamp._node_changed")));

	CacheInvalidateRelcacheByRelid(RelationGetRelid(trigdata->tg_relation));
	catalog_node_forget();
	return PointerGetDatum(NULL);
}

/*
 * Per-database worker: check one database for this start.
 */
void
replstamp_identity_db_main(Datum arg)
{
	Oid			dboid = DatumGetObjectId(arg);
	bool		installed;
	bool		v10 = false;
	char	   *dbname;
	instr_time	start,
				elapsed;

	pqsignal(SIGTERM, die);
	worker_connect(arg, NULL, 0);
	INSTR_TIME_SET_CURRENT(start);

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "replstamp: checking the replica ID");
	installed = OidIsValid(get_extension_oid("replstamp", true));
	dbname = pstrdup(get_database_name(dboid));
	if (installed)
	{
		v10 = !catalog_get(false)->v11;
		if (v10 || !catalog_get(false)->v12)
			ereport(LOG,
					(errmsg("replstamp: database \"%s\" still has the catalog of replstamp %s", dbname,
							v10 ? "1.0" : "1.1"),
					 errhint("Run ALTER EXTENSION replstamp UPDATE in that database; replication waits for it.")));
		/* A launcher restarted in this start leaves a checked database alone. */
		if (!v10 || !v10_checked_this_start())
			(void) identity_check();
	}
	PopActiveSnapshot();
	CommitTransactionCommand();
	if (v10)
		v10_mark_checked();

	pgstat_report_activity(STATE_IDLE, NULL);
	if (installed)
	{
		INSTR_TIME_SET_CURRENT(elapsed);
		INSTR_TIME_SUBTRACT(elapsed, start);
		ereport(LOG,
				(errmsg("replstamp: identity of database \"%s\" verified in %.1f ms",
						dbname, INSTR_TIME_GET_MILLISEC(elapsed))));
	}
	proc_exit(0);
}

/*-------------------------------------------------------------------------
 *
 * sequences.c
 *		Sequences that hand out node-unique values: every tracked sequence
 *		is confined, by its own parameters, to the block of its type's
 *		range that belongs to the current replica ID; a rotation moves it
 *		to the new ID's block.  replstamp.track_sequence(),
 *		untrack_sequence(), sequence_block(); track() covers the
 *		sequences of a table's columns (serial, bigserial, identity).
 *
 * Wording: a block is the part of a sequence type's positive range that
 * one replica ID may hand out.  bigint's range is cut into 2^20 blocks of
 * 2^43 values, integer's into 2^10 blocks of 2^21 (2,097,152) values;
 * smallint is too small and is refused.  Block 0 (from 1) is left to what
 * sequences handed out before they were tracked and belongs to no ID;
 * replica ID u has block 1 + h mod (blocks - 1), h being u's first 48 bits
 * (random in a version 4 uuid), so that every node can tell any ID's block
 * (replstamp.sequence_block()).  Nothing is coordinated: two IDs share a
 * block only when minted without knowing of each other (1 in 1,023 for
 * integer per pair, 1 in 1,048,575 for bigint); a rotation mints again
 * until the new ID's blocks differ from those of every ID this node knows
 * of (its own history and every origin in its vector), and
 * replstamp.problems names a block shared all the same.
 *
 * Confining is ALTER SEQUENCE ... MINVALUE, MAXVALUE, START WITH the
 * block's first value, NO CYCLE, and RESTART WITH it unless the sequence
 * is in the block already: nextval() costs what it did (no trigger, no
 * lookup) and refuses to leave the block; so do RESTART and setval().
 * The rotation that retires an ID moves every tracked sequence to the new
 * ID's block in the same transaction (identity.c calls
 * sequences_move_all()): a restored, rolled-back or cloned copy never hands
 * out a value of its former self's block, however far its former self
 * went after the backup.
 *
 * Concurrency contract: ALTER SEQUENCE takes the sequence's
 * ShareRowExclusiveLock until commit, so a rotation waits for the
 * transactions that took a value of a tracked sequence, and nextval()
 * waits for the rotation.  The registry replstamp.tracked_sequence is
 * written only as the extension's owner.
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/dependency.h"
#include "catalog/pg_class.h"
#include "catalog/pg_sequence.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/proc.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"

#include "catalog.h"
#include "compat.h"
#include "dbaccess.h"
#include "errors.h"
#include "sequences.h"
#include "shmem.h"

PG_FUNCTION_INFO_V1(replstamp_sequence_block);
PG_FUNCTION_INFO_V1(replstamp_track_sequence);
PG_FUNCTION_INFO_V1(replstamp_untrack_sequence);

/* Blocks per type (2^bits) and values per block (2^size_bits). */
#define INT8_BLOCK_BITS		20
#define INT8_SIZE_BITS		43
#define INT4_BLOCK_BITS		10
#define INT4_SIZE_BITS		21

/* Candidates a rotation mints before it settles for a shared block. */
#define MINT_TRIES			1000

/*
 * How long a rotation waits for a transaction holding a value of a tracked
 * sequence.  A writer that took a value and then waits for the identity
 * check (in a worker) that is moving that sequence would wait for ever,
 * unseen by the deadlock detector: the rotation gives up instead, and the
 * writer's check runs in its own transaction.
 */
#define MOVE_LOCK_TIMEOUT	"10s"

/* What confine() needs of a sequence. */
typedef struct SeqInfo
{
	Oid			typid;
	int64		increment;
	int64		last_value;
	bool		is_called;
	char	   *qname;
} SeqInfo;

/*
 * The block of values replica ID id may hand out from a sequence of type
 * seqtype; false for a type that has no blocks (smallint).
 */
static bool
block_bounds(const pg_uuid_t *id, Oid seqtype, int64 *min, int64 *max)
{
	uint64		h = 0;
	uint64		k;
	int			bits;
	int			size_bits;

	if (seqtype == INT8OID)
	{
		bits = INT8_BLOCK_BITS;
		size_bits = INT8_SIZE_BITS;
	}
	else if (seqtype == INT4OID)
	{
		bits = INT4_BLOCK_BITS;
		size_bits = INT4_SIZE_BITS;
	}
	else
		return false;
	for (int i = 0; i < 6; i++)
		h = (h << 8) | id->data[i];
	k = 1 + h % ((UINT64CONST(1) << bits) - 1);
	*min = (int64) (k << size_bits);
	*max = (int64) (((k + 1) << size_bits) - 1);
	Assert(*min > 0 && *max > *min);
	return true;
}

/* The registry's OID, or InvalidOid on a catalog older than this feature. */
static Oid
registry(void)
{
	const ReplstampCatalog *cat = catalog_get(true);

	if (cat == NULL || !cat->v11)
		return InvalidOid;
	return get_relname_relid("tracked_sequence", cat->schema);
}

static char *
qualified_name(Oid relid)
{
	return quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
									  get_rel_name(relid));
}

/* Type, increment and current value; caller connected to SPI as owner. */
static void
read_sequence(Oid seqrelid, SeqInfo *info)
{
	HeapTuple	tup = SearchSysCache1(SEQRELID, ObjectIdGetDatum(seqrelid));
	Form_pg_sequence seq;
	bool		isnull;

	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for sequence %u", seqrelid);
	seq = (Form_pg_sequence) GETSTRUCT(tup);
	info->typid = seq->seqtypid;
	info->increment = seq->seqincrement;
	ReleaseSysCache(tup);
	info->qname = qualified_name(seqrelid);
	if (SPI_execute(psprintf("SELECT last_value, is_called FROM %s", info->qname), true, 0) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "replstamp: could not read sequence %s", info->qname);
	info->last_value = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	info->is_called = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
}

/*
 * Refuse a sequence that cannot be confined to a block.  Returns the reason
 * as a message for a WARNING instead when quiet (a sequence track() meets
 * on a column), NULL if it can be.
 */
static char *
refuse(Oid seqrelid, const SeqInfo *info, bool quiet)
{
	char	   *name = get_rel_name(seqrelid);
	char		persistence = get_rel_persistence(seqrelid);
	const ReplstampCatalog *cat = catalog_get(false);

	if (get_rel_namespace(seqrelid) == cat->schema)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("cannot track sequence \"%s\" because it belongs to replstamp", name)));
	if (persistence == RELPERSISTENCE_TEMP)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("cannot track temporary sequence \"%s\"", name)));
	if (info->typid != INT8OID && info->typid != INT4OID)
	{
		if (quiet)
			return psprintf("sequence \"%s\" of type %s is not confined to this node's block", name,
							format_type_be(info->typid));
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot track sequence \"%s\" of type %s", name, format_type_be(info->typid)),
				 errdetail("Its range is too small to give every replica ID a block of its own."),
				 errhint("Change its type with ALTER SEQUENCE %s AS integer (or AS bigint), then track it.",
						 info->qname)));
	}
	if (info->increment < 0)
	{
		if (quiet)
			return psprintf("descending sequence \"%s\" is not confined to this node's block", name);
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot track descending sequence \"%s\"", name),
				 errdetail("Blocks are handed out upwards.")));
	}
	if (persistence == RELPERSISTENCE_UNLOGGED)
	{
		if (quiet)
			return psprintf("unlogged sequence \"%s\" is not confined to this node's block", name);
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("cannot track unlogged sequence \"%s\"", name),
				 errdetail("A crash resets an unlogged sequence to its start, and it would hand out its block's values again."),
				 errhint("Make it logged first with ALTER SEQUENCE %s SET LOGGED.", info->qname)));
	}
	return NULL;
}

static void
confine_context(void *arg)
{
	errcontext("moving sequence %s into a block of values of the current replica ID", (char *) arg);
}

/*
 * Confine the sequence to id's block and record it; moved: restarted at the
 * block's first value.  Caller connected to SPI as the extension owner.
 */
static void
confine(Oid seqrelid, const SeqInfo *info, const pg_uuid_t *id)
{
	ErrorContextCallback errcallback;
	int64		min;
	int64		max;
	bool		in_block;
	Oid			types[4] = {OIDOID, UUIDOID, INT8OID, INT8OID};
	Datum		values[4];
	char	   *cmd;

	if (!block_bounds(id, info->typid, &min, &max))
		elog(ERROR, "replstamp: sequence %s has no blocks", info->qname);
	in_block = info->last_value >= min && info->last_value <= max;
	cmd = psprintf("ALTER SEQUENCE %s MINVALUE " INT64_FORMAT " MAXVALUE " INT64_FORMAT
				   " START WITH " INT64_FORMAT " NO CYCLE",
				   info->qname, min, max, min);
	if (!in_block)
		cmd = psprintf("%s RESTART WITH " INT64_FORMAT, cmd, min);
	errcallback.callback = confine_context;
	errcallback.arg = info->qname;
	errcallback.previous = error_context_stack;
	error_context_stack = &errcallback;
	if (SPI_execute(cmd, false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "replstamp: could not alter sequence %s", info->qname);
	error_context_stack = errcallback.previous;

	values[0] = ObjectIdGetDatum(seqrelid);
	values[1] = UUIDPGetDatum(id);
	values[2] = Int64GetDatum(min);
	values[3] = Int64GetDatum(max);
	dbaccess_spi_exec(in_block ?
					  "UPDATE replstamp.tracked_sequence SET replica_id = $2, block_min = $3, block_max = $4 "
					  "WHERE seqrelid OPERATOR(pg_catalog.=) $1" :
					  "UPDATE replstamp.tracked_sequence SET replica_id = $2, block_min = $3, block_max = $4, "
					  "moved_at = pg_catalog.now() WHERE seqrelid OPERATOR(pg_catalog.=) $1",
					  4, types, values, NULL, SPI_OK_UPDATE);
}

/* Record the sequence as tracked (feeds: the table, or InvalidOid). */
static void
record_tracked(Oid seqrelid, Oid feeds)
{
	Oid			types[3] = {OIDOID, TEXTOID, OIDOID};
	Datum		values[3];
	char		nulls[3] = {' ', ' ', ' '};

	values[0] = ObjectIdGetDatum(seqrelid);
	values[1] = CStringGetTextDatum(qualified_name(seqrelid));
	values[2] = ObjectIdGetDatum(feeds);
	if (!OidIsValid(feeds))
		nulls[2] = 'n';
	dbaccess_spi_exec("INSERT INTO replstamp.tracked_sequence (seqrelid, relation, feeds, state) "
					  "VALUES ($1, $2, $3, 'tracked') ON CONFLICT (seqrelid) DO UPDATE "
					  "SET relation = EXCLUDED.relation, state = 'tracked', since = pg_catalog.now()",
					  3, types, values, nulls, SPI_OK_INSERT);
}

/* The registry's state of the sequence: 't', 'u', or 0 if it has no row. */
static char
recorded_state(Oid seqrelid)
{
	Oid			types[1] = {OIDOID};
	Datum		values[1] = {ObjectIdGetDatum(seqrelid)};

	dbaccess_spi_exec("SELECT state FROM replstamp.tracked_sequence WHERE seqrelid OPERATOR(pg_catalog.=) $1",
					  1, types, values, NULL, SPI_OK_SELECT);
	if (SPI_processed == 0)
		return 0;
	return SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1)[0];
}

/*
 * A warning when values the sequence handed out before it was tracked lie
 * beyond block 0, where other IDs' blocks are (and not in id's own, where
 * a sequence tracked before and left out since may be).
 */
static void
warn_if_beyond_block_zero(Oid seqrelid, const SeqInfo *info, const pg_uuid_t *id)
{
	int64		zero_end = info->typid == INT8OID ?
		(INT64CONST(1) << INT8_SIZE_BITS) - 1 : (INT64CONST(1) << INT4_SIZE_BITS) - 1;
	int64		min = 0;
	int64		max = 0;

	(void) block_bounds(id, info->typid, &min, &max);
	if (info->last_value > zero_end && !(info->last_value >= min && info->last_value <= max))
		ereport(WARNING,
				(errmsg("sequence \"%s\" has handed out values beyond " INT64_FORMAT ", which other nodes may hand out too",
						get_rel_name(seqrelid), zero_end),
				 errdetail("Values up to " INT64_FORMAT " are left to what sequences gave before they were tracked; each replica ID has a block above it.",
						   zero_end)));
}

/*
 * Has this transaction warned of this sequence already?  track() registers
 * a table twice (the DDL guard sees its triggers come first).
 */
static bool
warned_already(Oid seqrelid)
{
	static Oid	warned_seq = InvalidOid;
	static LocalTransactionId warned_lxid = InvalidLocalTransactionId;

	if (warned_seq == seqrelid && warned_lxid == PGPROC_LXID(MyProc))
		return true;
	warned_seq = seqrelid;
	warned_lxid = PGPROC_LXID(MyProc);
	return false;
}

/*
 * Track one sequence and confine it to the current ID's block: for
 * track_sequence() (feeds invalid) or for a column of the tracked table
 * feeds.  Caller connected to SPI as the extension owner.
 */
static void
track_one(Oid seqrelid, Oid feeds)
{
	SeqInfo		info;
	char	   *why;

	read_sequence(seqrelid, &info);
	why = refuse(seqrelid, &info, OidIsValid(feeds));
	if (why != NULL && !warned_already(seqrelid))
	{
		ereport(WARNING,
				(errmsg("%s", why),
				 errdetail("It feeds tracked table \"%s\"; other nodes may hand out its values too.",
						   get_rel_name(feeds)),
				 errhint("Make it ascending, logged, and of type integer or bigint, then run SELECT replstamp.track_sequence('%s').",
						 info.qname)));
	}
	if (why != NULL)
		return;
	warn_if_beyond_block_zero(seqrelid, &info, &catalog_node()->replica_id);
	record_tracked(seqrelid, feeds);
	confine(seqrelid, &info, &catalog_node()->replica_id);
}

/*
 * track() has made the table tracked: track the sequences of its columns
 * (serial, bigserial, identity: those owned by a column), unless tracked
 * already or left untracked by untrack_sequence().
 */
void
sequences_cover_table(Oid relid)
{
	ReplstampOwnerContext ctx;
	List	   *seqs;
	ListCell   *lc;

	if (!OidIsValid(registry()))
		return;
	seqs = getOwnedSequences(relid);
	if (seqs == NIL)
		return;
	dbaccess_become_owner(&ctx);
	SPI_connect();
	foreach(lc, seqs)
	{
		Oid			seqrelid = lfirst_oid(lc);

		if (recorded_state(seqrelid) == 0)
			track_one(seqrelid, relid);
	}
	SPI_finish();
	dbaccess_restore_user(&ctx);
}

/*
 * track(..., row_id => true): confine the new sequence of the row ID
 * column of table feeds to the current ID's block before it hands out its
 * first value (the existing rows get theirs when the column is added).
 * Returns false on a catalog older than 1.2, which has no blocks.
 */
bool
sequences_cover_row_id(Oid seqrelid, Oid feeds)
{
	ReplstampOwnerContext ctx;

	if (!OidIsValid(registry()))
		return false;
	dbaccess_become_owner(&ctx);
	SPI_connect();
	track_one(seqrelid, feeds);
	SPI_finish();
	dbaccess_restore_user(&ctx);
	return true;
}

/*
 * untrack() has made the table untracked: so are the sequences track()
 * covered for it.  They keep their bounds: values beyond them would be
 * other IDs' blocks.
 */
void
sequences_uncover_table(Oid relid)
{
	ReplstampOwnerContext ctx;
	Oid			types[1] = {OIDOID};
	Datum		values[1] = {ObjectIdGetDatum(relid)};

	if (!OidIsValid(registry()))
		return;
	dbaccess_become_owner(&ctx);
	SPI_connect();
	dbaccess_spi_exec("DELETE FROM replstamp.tracked_sequence WHERE feeds OPERATOR(pg_catalog.=) $1",
					  1, types, values, NULL, SPI_OK_DELETE);
	SPI_finish();
	dbaccess_restore_user(&ctx);
}

static bool
block_taken(int64 *taken, int ntaken, const pg_uuid_t *id, Oid typid)
{
	int64		min;
	int64		max;

	(void) block_bounds(id, typid, &min, &max);
	for (int i = 0; i < ntaken; i++)
		if (taken[i] == min)
			return true;
	return false;
}

/*
 * Mint a new replica ID whose integer and bigint blocks differ from those
 * of every ID this node knows of: its own history and every origin in its
 * vector.  After MINT_TRIES candidates (more IDs known than integer has
 * blocks) one whose bigint block is free will do, and replstamp.problems
 * names the integer block it shares.
 */
void
sequences_mint_id(pg_uuid_t *id)
{
	ReplstampOwnerContext ctx;
	int			n;
	int64	   *taken4;
	int64	   *taken8;
	pg_uuid_t	fallback;
	bool		have_fallback = false;

	if (!OidIsValid(registry()))
	{
		catalog_mint_uuid(id);
		return;
	}
	dbaccess_become_owner(&ctx);
	SPI_connect();
	dbaccess_spi_exec("SELECT replica_id FROM replstamp.replica_history "
					  "UNION SELECT replica_id FROM replstamp.vector_state",
					  0, NULL, NULL, NULL, SPI_OK_SELECT);
	n = SPI_processed;
	taken4 = palloc(sizeof(int64) * (n + 1));
	taken8 = palloc(sizeof(int64) * (n + 1));
	for (int i = 0; i < n; i++)
	{
		bool		isnull;
		pg_uuid_t  *known = DatumGetUUIDP(SPI_getbinval(SPI_tuptable->vals[i],
														SPI_tuptable->tupdesc, 1, &isnull));
		int64		max;

		(void) block_bounds(known, INT4OID, &taken4[i], &max);
		(void) block_bounds(known, INT8OID, &taken8[i], &max);
	}
	SPI_finish();
	dbaccess_restore_user(&ctx);

	for (int i = 0; i < MINT_TRIES; i++)
	{
		catalog_mint_uuid(id);
		if (block_taken(taken8, n, id, INT8OID))
			continue;
		if (!block_taken(taken4, n, id, INT4OID))
			return;
		if (!have_fallback)
		{
			fallback = *id;
			have_fallback = true;
		}
	}
	if (have_fallback)
		*id = fallback;
}

/*
 * Move every tracked sequence that is not confined to id's block there: a
 * rotation's new ID, or (the check after every start) the current one, for
 * a sequence recorded under another.  Registry rows of sequences that are
 * gone are removed.
 */
void
sequences_move_all(const pg_uuid_t *id)
{
	ReplstampOwnerContext ctx;
	Oid			types[1] = {UUIDOID};
	Datum		values[1] = {UUIDPGetDatum(id)};
	int			n;
	Oid		   *seqs;

	if (!OidIsValid(registry()))
		return;
	dbaccess_become_owner(&ctx);
	/* Until dbaccess_restore_user(), which undoes it. */
	(void) set_config_option("lock_timeout", MOVE_LOCK_TIMEOUT, PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	SPI_connect();
	dbaccess_spi_exec("DELETE FROM replstamp.tracked_sequence s WHERE NOT EXISTS "
					  "(SELECT 1 FROM pg_catalog.pg_sequence q WHERE q.seqrelid OPERATOR(pg_catalog.=) s.seqrelid)",
					  0, NULL, NULL, NULL, SPI_OK_DELETE);
	dbaccess_spi_exec("SELECT seqrelid FROM replstamp.tracked_sequence "
					  "WHERE state OPERATOR(pg_catalog.=) 'tracked' "
					  "AND replica_id IS DISTINCT FROM $1 ORDER BY seqrelid",
					  1, types, values, NULL, SPI_OK_SELECT);
	n = SPI_processed;
	seqs = palloc(sizeof(Oid) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		bool		isnull;

		seqs[i] = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
	}
	for (int i = 0; i < n; i++)
	{
		SeqInfo		info;

		read_sequence(seqs[i], &info);
		if (info.typid == INT8OID || info.typid == INT4OID)
			confine(seqs[i], &info, id);
	}
	SPI_finish();
	dbaccess_restore_user(&ctx);
}

/*
 * In the drop guard (connected to SPI as the extension owner): dropped
 * sequences leave the registry, so that no later object with the same OID
 * is taken for them.
 */
void
sequences_forget_dropped(void)
{
	if (!OidIsValid(registry()))
		return;
	dbaccess_spi_exec("DELETE FROM replstamp.tracked_sequence s "
					  "USING pg_catalog.pg_event_trigger_dropped_objects() d "
					  "WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass "
					  "AND d.objid OPERATOR(pg_catalog.=) s.seqrelid AND d.objsubid OPERATOR(pg_catalog.=) 0",
					  0, NULL, NULL, NULL, SPI_OK_DELETE);
}

/*
 * Open the sequence for track_sequence()/untrack_sequence(): it must be one,
 * and the caller must own it.
 */
static void
check_sequence(Oid seqrelid)
{
	char		relkind = get_rel_relkind(seqrelid);
	char	   *name = get_rel_name(seqrelid);

	if (name == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation with OID %u does not exist", seqrelid)));
	if (relkind != RELKIND_SEQUENCE)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("\"%s\" is not a sequence", name),
				 errhint("Tables are tracked with replstamp.track(), which covers the sequences of their columns.")));
	if (!pg_class_ownercheck(seqrelid, GetUserId()))
		aclcheck_error(ACLCHECK_NOT_OWNER, OBJECT_SEQUENCE, name);
}

/*
 * replstamp.track_sequence(regclass): confine the sequence to the current
 * replica ID's block; every rotation moves it to the new ID's.
 */
Datum
replstamp_track_sequence(PG_FUNCTION_ARGS)
{
	Oid			seqrelid = PG_GETARG_OID(0);
	ReplstampOwnerContext ctx;
	char		state;

	shmem_require();
	(void) catalog_get_v12("replstamp.track_sequence()");
	check_sequence(seqrelid);
	dbaccess_become_owner(&ctx);
	SPI_connect();
	state = recorded_state(seqrelid);
	if (state == 't')
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("sequence \"%s\" is already tracked", get_rel_name(seqrelid)),
				 errhint("replstamp.tracked_sequences shows its block.")));
	{
		SeqInfo		info;

		read_sequence(seqrelid, &info);
		(void) refuse(seqrelid, &info, false);
		warn_if_beyond_block_zero(seqrelid, &info, &catalog_node()->replica_id);
		record_tracked(seqrelid, InvalidOid);
		confine(seqrelid, &info, &catalog_node()->replica_id);
	}
	SPI_finish();
	dbaccess_restore_user(&ctx);
	PG_RETURN_VOID();
}

/*
 * replstamp.untrack_sequence(regclass): rotations leave the sequence alone
 * from now on.  It keeps its bounds, which the owner may lift with ALTER
 * SEQUENCE ... NO MINVALUE NO MAXVALUE.  A sequence feeding a tracked table
 * stays recorded as untracked, so that track() and replstamp.problems leave
 * it be.
 */
Datum
replstamp_untrack_sequence(PG_FUNCTION_ARGS)
{
	Oid			seqrelid = PG_GETARG_OID(0);
	ReplstampOwnerContext ctx;
	Oid			types[3] = {OIDOID, TEXTOID, OIDOID};
	Datum		values[3];
	Oid			table = InvalidOid;
	int32		column;
	char		state;

	shmem_require();
	(void) catalog_get_v12("replstamp.untrack_sequence()");
	check_sequence(seqrelid);
	if (!sequenceIsOwned(seqrelid, DEPENDENCY_AUTO, &table, &column) &&
		!sequenceIsOwned(seqrelid, DEPENDENCY_INTERNAL, &table, &column))
		table = InvalidOid;
	values[0] = ObjectIdGetDatum(seqrelid);
	values[1] = CStringGetTextDatum(qualified_name(seqrelid));
	values[2] = ObjectIdGetDatum(table);
	dbaccess_become_owner(&ctx);
	SPI_connect();
	state = recorded_state(seqrelid);
	/* A column's sequence may be left out before track() covers it. */
	if (state != 't' && !(state == 0 && OidIsValid(table)))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("sequence \"%s\" is not tracked", get_rel_name(seqrelid))));
	if (OidIsValid(table))
		dbaccess_spi_exec("INSERT INTO replstamp.tracked_sequence (seqrelid, relation, feeds, state) "
						  "VALUES ($1, $2, $3, 'untracked') ON CONFLICT (seqrelid) DO UPDATE "
						  "SET feeds = EXCLUDED.feeds, state = 'untracked', since = pg_catalog.now()",
						  3, types, values, NULL, SPI_OK_INSERT);
	else
		dbaccess_spi_exec("DELETE FROM replstamp.tracked_sequence WHERE seqrelid OPERATOR(pg_catalog.=) $1",
						  1, types, values, NULL, SPI_OK_DELETE);
	SPI_finish();
	dbaccess_restore_user(&ctx);
	PG_RETURN_VOID();
}

/*
 * replstamp.sequence_block(uuid, regtype): the values a sequence of that
 * type may hand out under that replica ID, as an int8range.
 */
Datum
replstamp_sequence_block(PG_FUNCTION_ARGS)
{
	pg_uuid_t  *id = PG_GETARG_UUID_P(0);
	Oid			typid = PG_GETARG_OID(1);
	int64		min;
	int64		max;

	if (!block_bounds(id, typid, &min, &max))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("sequences of type %s have no blocks", format_type_be(typid)),
				 errhint("Blocks exist for integer and bigint.")));
	PG_RETURN_DATUM(OidInputFunctionCall(F_RANGE_IN,
										 psprintf("[" INT64_FORMAT "," INT64_FORMAT "]", min, max),
										 INT8RANGEOID, -1));
}

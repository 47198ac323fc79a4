/*-------------------------------------------------------------------------
 *
 * errors.c
 *		What replstamp shows of an error where every role can read it.
 *
 * replstamp.peers (last_error) and replstamp.tracked_table (backfill_error) are
 * readable by PUBLIC, but an error raised while a change is applied may
 * quote a value of the row: an input function's "invalid input syntax
 * ... \"4111-...\"", a text search parser's "syntax error in tsvector:
 * ...", a reg* type's "relation \"...\" does not exist", a constraint's
 * detail.  Which messages quote values is not a property of the SQLSTATE
 * class, so no list of classes is trusted: replstamp's own messages
 * (raised in this module's message domain, which names stamps, tables and
 * columns, never values: see the error conventions in doc/design.md) are
 * shown, and PostgreSQL's own integrity constraint violations (raised in
 * the backend's domain, not by a trigger's RAISE), whose message names the
 * relation, the column and the constraint and leaves the row to the
 * detail; for any other error, its condition and SQLSTATE.  The whole
 * message stays in the server log.
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "lib/stringinfo.h"
#include "utils/elog.h"

#include "errors.h"

/* Conditions a sync commonly meets, by their names in Appendix A. */
static const struct
{
	int			code;
	const char *name;
}			conditions[] =

{
	{ERRCODE_UNIQUE_VIOLATION, "unique_violation"},
	{ERRCODE_FOREIGN_KEY_VIOLATION, "foreign_key_violation"},
	{ERRCODE_NOT_NULL_VIOLATION, "not_null_violation"},
	{ERRCODE_CHECK_VIOLATION, "check_violation"},
	{ERRCODE_EXCLUSION_VIOLATION, "exclusion_violation"},
	{ERRCODE_T_R_SERIALIZATION_FAILURE, "serialization_failure"},
	{ERRCODE_T_R_DEADLOCK_DETECTED, "deadlock_detected"},
	{ERRCODE_LOCK_NOT_AVAILABLE, "lock_not_available"},
	{ERRCODE_QUERY_CANCELED, "query_canceled"},
	{ERRCODE_ADMIN_SHUTDOWN, "admin_shutdown"},
	{ERRCODE_DISK_FULL, "disk_full"},
	{ERRCODE_OUT_OF_MEMORY, "out_of_memory"},
	{ERRCODE_READ_ONLY_SQL_TRANSACTION, "read_only_sql_transaction"},
	{ERRCODE_INSUFFICIENT_PRIVILEGE, "insufficient_privilege"},
	{ERRCODE_UNDEFINED_COLUMN, "undefined_column"},
	{ERRCODE_UNDEFINED_TABLE, "undefined_table"},
	{ERRCODE_UNDEFINED_OBJECT, "undefined_object"},
	{ERRCODE_SYNTAX_ERROR, "syntax_error"},
	{ERRCODE_DATATYPE_MISMATCH, "datatype_mismatch"},
	{ERRCODE_INVALID_TEXT_REPRESENTATION, "invalid_text_representation"},
	{ERRCODE_STRING_DATA_RIGHT_TRUNCATION, "string_data_right_truncation"},
	{ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE, "numeric_value_out_of_range"},
	{ERRCODE_INVALID_DATETIME_FORMAT, "invalid_datetime_format"},
	{ERRCODE_DATETIME_FIELD_OVERFLOW, "datetime_field_overflow"},
	{ERRCODE_CONNECTION_FAILURE, "connection_failure"},
	{ERRCODE_RAISE_EXCEPTION, "raise_exception"},
	{ERRCODE_INTERNAL_ERROR, "internal_error"},
};

/* The other conditions, by their class (Appendix A). */
static const struct
{
	const char	class[3];
	const char *name;
}			classes[] =

{
	{"08", "connection exception"},
	{"09", "triggered action exception"},
	{"0A", "feature not supported"},
	{"0B", "invalid transaction initiation"},
	{"0L", "invalid grantor"},
	{"0P", "invalid role specification"},
	{"21", "cardinality violation"},
	{"22", "data exception"},
	{"23", "integrity constraint violation"},
	{"24", "invalid cursor state"},
	{"25", "invalid transaction state"},
	{"27", "triggered data change violation"},
	{"28", "invalid authorization specification"},
	{"2B", "dependent privilege descriptors still exist"},
	{"2D", "invalid transaction termination"},
	{"2F", "SQL routine exception"},
	{"38", "external routine exception"},
	{"39", "external routine invocation exception"},
	{"3B", "savepoint exception"},
	{"3D", "invalid catalog name"},
	{"3F", "invalid schema name"},
	{"40", "transaction rollback"},
	{"42", "syntax error or access rule violation"},
	{"44", "WITH CHECK OPTION violation"},
	{"53", "insufficient resources"},
	{"54", "program limit exceeded"},
	{"55", "object not in prerequisite state"},
	{"57", "operator intervention"},
	{"58", "system error"},
	{"72", "snapshot failure"},
	{"F0", "configuration file error"},
	{"HV", "foreign data wrapper error"},
	{"P0", "PL/pgSQL error"},
	{"XX", "internal error"},
};

/* A peer's own error, passed on by remote.c with this context line. */
static bool
passed_on_from_peer(const ErrorData *e)
{
	return e->context && (strncmp(e->context, "on peer \"", 9) == 0 ||
						  strstr(e->context, "\non peer \"") != NULL);
}

/*
 * Was e raised by replstamp itself (not by PostgreSQL, a trigger, a type's
 * input function, or passed on from a peer)?
 */
bool
errors_raised_here(const ErrorData *e)
{
	return e->domain != NULL && strcmp(e->domain, REPLSTAMP_TEXTDOMAIN) == 0 &&
		!passed_on_from_peer(e);
}

/*
 * "unique_violation (SQLSTATE 23505)", or the class for a condition not
 * in the list: "data exception (SQLSTATE 22P05)".  Palloc'd.
 */
const char *
errors_condition_text(int sqlerrcode)
{
	const char *state = unpack_sql_state(sqlerrcode);

	for (int i = 0; i < lengthof(conditions); i++)
		if (conditions[i].code == sqlerrcode)
			return psprintf("%s (SQLSTATE %s)", conditions[i].name, state);
	for (int i = 0; i < lengthof(classes); i++)
		if (strncmp(classes[i].class, state, 2) == 0)
			return psprintf("%s (SQLSTATE %s)", classes[i].name, state);
	return psprintf("SQLSTATE %s", state);
}

/*
 * The text of e that every role may read: replstamp's own message, or the
 * condition of any other error; followed by the change being applied when
 * it was raised (apply.c's context line: stamp, operation, table, peer).
 * If stamp is not NULL, *stamp is set to that change's stamp
 * ("<replica_id>/<serial>", what replstamp.skip() takes), or NULL.
 */
char *
errors_public_text(const ErrorData *e, char **stamp)
{
	StringInfoData buf;
	const char *applying = NULL;

	initStringInfo(&buf);
	if (errors_raised_here(e) && e->message)
		appendStringInfoString(&buf, e->message);
	else if (e->message && e->domain && strcmp(e->domain, PG_TEXTDOMAIN("postgres")) == 0 &&
			 ERRCODE_TO_CATEGORY(e->sqlerrcode) == ERRCODE_INTEGRITY_CONSTRAINT_VIOLATION &&
			 !passed_on_from_peer(e))
		appendStringInfo(&buf, "%s (SQLSTATE %s)", e->message, unpack_sql_state(e->sqlerrcode));
	else if (passed_on_from_peer(e))
		appendStringInfo(&buf, "the peer reported %s", errors_condition_text(e->sqlerrcode));
	else
		appendStringInfoString(&buf, errors_condition_text(e->sqlerrcode));

	/*
	 * The change, which other context lines (a trigger, a column) may
	 * precede.
	 */
	for (const char *p = e->context; p != NULL; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
	{
		if (strncmp(p, "applying change ", 16) == 0)
		{
			applying = p;
			break;
		}
	}
	if (stamp)
		*stamp = NULL;
	if (applying)
	{
		int			len = strcspn(applying, "\n");

		appendStringInfo(&buf, " (%.*s)", len, applying);
		if (stamp)
			*stamp = pnstrdup(applying + 16, strcspn(applying + 16, " \n"));
	}
	return buf.data;
}

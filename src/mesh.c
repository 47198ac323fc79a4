/*-------------------------------------------------------------------------
 *
 * mesh.c
 *		Joining a mesh with one call, and leaving it.  replstamp.join() on a
 *		new node connects to one member (the sponsor) as a role that may add
 *		peers there, and has it and every member it knows of (transitively)
 *		add this node as a peer (replstamp.admit() there); this node then
 *		adds each of them.  replstamp.leave() has every peer pull what it
 *		lacks from this node and drop it, then drops its peers.
 *
 * Wording: a member is a node of the mesh, known to another by the name it
 * has as that node's peer.  A node's own name (replstamp.cluster, the row
 * with is_self) is the one it joined under (replstamp.mesh), or its
 * cluster_name, or 'n' and its system identifier.  The address of a
 * connection string is its host, hostaddr, port, dbname and service; the
 * rest (user, password, sslmode, ...) is its credential.
 *
 * Credentials: the others pull from this node with my_conninfo (stored as
 * their peer's connection string); this node pulls from each member with
 * the connection string the sponsor holds for it (the sponsor itself: its
 * own replstamp.mesh.conninfo, else the address of the conninfo given with
 * the credential of my_conninfo, or the conninfo given).  To add peers,
 * join() and leave() connect to each member at the address this node knows
 * it by, with the credential of their conninfo argument: a role that may
 * add peers on every member (a superuser, or granted EXECUTE on
 * replstamp.admit()), never the pulling role.  No connection string
 * appears in a message.
 *
 * Nothing here is undone by a rollback on the other nodes: join() and
 * leave() refuse to run in a transaction block, and both can be called
 * again after an error (each step is skipped where it is done already).
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "errors.h"

#include <ctype.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "libpq-fe.h"
#include "miscadmin.h"
#include "postmaster/postmaster.h"
#include "utils/builtins.h"
#include "utils/uuid.h"

#include "catalog.h"
#include "compat.h"
#include "dbaccess.h"
#include "peers.h"
#include "remote.h"
#include "rowversion.h"
#include "sync.h"

PG_FUNCTION_INFO_V1(replstamp_join);
PG_FUNCTION_INFO_V1(replstamp_admit);
PG_FUNCTION_INFO_V1(replstamp_leave);

/* A member, as join() learns of it. */
typedef struct Member
{
	char	   *name;
	char	   *pull;			/* how this node pulls from it */
	char	   *admin;			/* how join() connects to it to add peers */
	bool		admitted;		/* it has this node as a peer now */
	char	   *there;			/* what admit() did there */
	char	   *here;			/* what join() did here */
} Member;

/* ---------------------------------------------------------------------
 * Connection strings
 * ---------------------------------------------------------------------
 */

static bool
address_key(const char *k)
{
	return strcmp(k, "host") == 0 || strcmp(k, "hostaddr") == 0 ||
		strcmp(k, "port") == 0 || strcmp(k, "dbname") == 0 ||
		strcmp(k, "service") == 0;
}

/*
 * Parse conninfo, the argument argname of the function called, or, with
 * argname NULL, the address of a member the sponsor sent.
 */
static PQconninfoOption *
parse_conninfo(const char *conninfo, const char *argname)
{
	char	   *err = NULL;
	PQconninfoOption *opts = PQconninfoParse(conninfo, &err);

	if (opts == NULL && argname)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid connection string in argument \"%s\"", argname),
				 errdetail_internal("%s", err ? pchomp(err) : "out of memory")));
	if (opts == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid connection string of a member"),
				 errdetail_internal("%s", err ? pchomp(err) : "out of memory")));
	return opts;
}

static void
append_option(StringInfo buf, const char *k, const char *v)
{
	if (buf->len > 0)
		appendStringInfoChar(buf, ' ');
	appendStringInfo(buf, "%s='", k);
	for (const char *p = v; *p; p++)
	{
		if (*p == '\'' || *p == '\\')
			appendStringInfoChar(buf, '\\');
		appendStringInfoChar(buf, *p);
	}
	appendStringInfoChar(buf, '\'');
}

/* The value of keyword k in opts, or NULL. */
static const char *
option(PQconninfoOption *opts, const char *k)
{
	for (PQconninfoOption *o = opts; o && o->keyword; o++)
		if (strcmp(o->keyword, k) == 0 && o->val && o->val[0])
			return o->val;
	return NULL;
}

/*
 * A connection string with the address of address (or, where host is not
 * NULL, of host, port and dbname) and the credential of credential (if
 * NULL, of address).  Credentials are never mixed: a password of one with
 * the user of the other would be a wrong password, or the right one sent
 * where it does not belong.
 */
static char *
compose(const char *address, const char *credential,
		const char *host, const char *port, const char *dbname)
{
	PQconninfoOption *a = address ? parse_conninfo(address, NULL) : NULL;
	PQconninfoOption *c = credential ? parse_conninfo(credential, "conninfo") : NULL;
	PQconninfoOption *all = a ? a : c;
	StringInfoData buf;

	initStringInfo(&buf);
	for (PQconninfoOption *o = all; o && o->keyword; o++)
	{
		const char *v;

		if (address_key(o->keyword))
			v = host ? NULL : option(a, o->keyword);
		else
			v = c ? option(c, o->keyword) : option(a, o->keyword);
		if (v)
			append_option(&buf, o->keyword, v);
	}
	if (host)
	{
		append_option(&buf, "host", host);
		append_option(&buf, "port", port);
		append_option(&buf, "dbname", dbname);
	}
	if (a)
		PQconninfoFree(a);
	if (c)
		PQconninfoFree(c);
	return buf.data;
}

/* ---------------------------------------------------------------------
 * This node
 * ---------------------------------------------------------------------
 */

static void
check_name(const char *name)
{
	size_t		len = strlen(name);

	for (const char *p = name; *p; p++)
		if (!(isalnum((unsigned char) *p) || *p == '_' || *p == '.' || *p == '-'))
			len = 0;
	if (len == 0 || len > 63)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid node name \"%s\"", name),
				 errdetail("A node name has 1 to 63 letters, digits, \"_\", \".\" or \"-\"."),
				 errhint("Pass another with name => '...'.")));
}

/* This node's name in the mesh (see the file header), palloc'd. */
static char *
self_name(void)
{
	ReplstampOwnerContext ctx;
	char	   *name;
	MemoryContext caller = CurrentMemoryContext;

	dbaccess_become_owner(&ctx);
	SPI_connect();
	dbaccess_spi_exec("SELECT name FROM replstamp.cluster WHERE is_self", 0, NULL, NULL, NULL, SPI_OK_SELECT);
	name = MemoryContextStrdup(caller, SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1));
	SPI_finish();
	dbaccess_restore_user(&ctx);
	return name;
}

/*
 * Add a peer here unless it is there already with the same connection
 * string; returns what was done.  A peer of that name with another
 * connection string is an error.
 */
static const char *
ensure_peer(const char *name, const char *conninfo)
{
	ReplstampOwnerContext ctx;
	Oid			types[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(name)};
	bool		same = false;
	bool		exists;

	dbaccess_become_owner(&ctx);
	SPI_connect();
	dbaccess_spi_exec("SELECT conninfo FROM replstamp.peer WHERE name OPERATOR(pg_catalog.=) $1",
					  1, types, values, NULL, SPI_OK_SELECT);
	exists = SPI_processed > 0;
	if (exists)
		same = strcmp(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1), conninfo) == 0;
	SPI_finish();
	dbaccess_restore_user(&ctx);
	if (exists && !same)
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("a peer named \"%s\" already exists on node \"%s\" with another connection string",
						name, self_name()),
				 errdetail("Every node of a mesh needs a name of its own."),
				 errhint("Join under another name (replstamp.join(..., name => '...')), or drop that peer first with replstamp.drop_peer().")));
	if (exists)
		return "already a peer";
	(void) DirectFunctionCall2(replstamp_add_peer, CStringGetTextDatum(name),
							   CStringGetTextDatum(conninfo));
	return "added";
}

/*
 * Refuse to join with rows that would never reach the others: a tracked
 * table that holds rows but no change of them was ever stamped or pulled
 * here (loaded before it was tracked, without backfill).  A node that
 * joins starts empty, from a copy of a member, or with its rows stamped.
 */
static void
refuse_unstamped_rows(void)
{
	ReplstampOwnerContext ctx;
	char	   *table = NULL;

	dbaccess_become_owner(&ctx);
	SPI_connect();
	dbaccess_spi_exec(catalog_sql("SELECT t.relid::pg_catalog.regclass::pg_catalog.text FROM replstamp.tracked_table t "
								  "WHERE t.state OPERATOR(pg_catalog.=) 'tracked' AND t.relid IS NOT NULL "
								  "AND (t.backfill IS NULL OR t.backfill OPERATOR(pg_catalog.<>) ALL ('{pending,running}'::pg_catalog.text[])) "
								  "AND NOT EXISTS (SELECT 1 FROM replstamp.changes c "
								  "                 WHERE c.relation OPERATOR(pg_catalog.=) t.relation) "
								  "ORDER BY 1"), 0, NULL, NULL, NULL, SPI_OK_SELECT);
	if (SPI_processed > 0)
	{
		SPITupleTable *tables = SPI_tuptable;
		uint64		n = SPI_processed;

		for (uint64 i = 0; i < n && table == NULL; i++)
		{
			char	   *rel = SPI_getvalue(tables->vals[i], tables->tupdesc, 1);

			dbaccess_spi_exec(psprintf("SELECT 1 FROM %s LIMIT 1", rel), 0, NULL, NULL, NULL, SPI_OK_SELECT);
			if (SPI_processed > 0)
				table = pstrdup(rel);
		}
	}
	SPI_finish();
	dbaccess_restore_user(&ctx);
	if (table)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot join: tracked table %s holds rows that were never stamped", table),
				 errdetail("Its rows would never reach the other nodes, and rows of the same keys there would stay different here."),
				 errhint("Join from an empty table or a copy of a member (CALL replstamp.backup()), or stamp the rows first with SELECT replstamp.track('%s', backfill => true): where a key is on both sides, the later write wins.",
						 table)));
}

/*
 * Refuse to join a mesh whose sponsor dropped tombstones this node lacks:
 * it would refuse this node as too far behind (serve.c), as every member
 * would.
 */
static void
refuse_stale(Remote *r)
{
	PGresult   *res = remote_exec(r, "SELECT replica_id::pg_catalog.text, serial::pg_catalog.text "
								  "FROM replstamp.purged", 0, NULL, PGRES_TUPLES_OK);
	char	   *stale = NULL;
	ReplstampOwnerContext ctx;

	dbaccess_become_owner(&ctx);
	SPI_connect();
	for (int i = 0; i < PQntuples(res) && stale == NULL; i++)
	{
		Oid			types[2] = {UUIDOID, INT8OID};
		Datum		values[2];

		values[0] = DirectFunctionCall1(uuid_in, CStringGetDatum(PQgetvalue(res, i, 0)));
		values[1] = Int64GetDatum(pg_strtoint64(PQgetvalue(res, i, 1)));
		dbaccess_spi_exec("SELECT 1 FROM replstamp.vector WHERE replica_id OPERATOR(pg_catalog.=) $1 "
						  "AND serial OPERATOR(pg_catalog.<) $2", 2, types, values, NULL, SPI_OK_SELECT);
		if (SPI_processed > 0)
			stale = pstrdup(PQgetvalue(res, i, 0));
	}
	SPI_finish();
	dbaccess_restore_user(&ctx);
	PQclear(res);
	if (stale)
		ereport(ERROR,
				(errcode(ERRCODE_SNAPSHOT_TOO_OLD),
				 errmsg("cannot join: this node is too far behind the mesh"),
				 errdetail("It holds changes of replica ID %s only up to a serial below a tombstone the mesh has dropped: it could bring deleted rows back.",
						   stale),
				 errhint("Start this node again from a fresh copy of a member (CALL replstamp.backup()), or from an empty schema.")));
}

/* ---------------------------------------------------------------------
 * join()
 * ---------------------------------------------------------------------
 */

static Member *
find_member(List *members, const char *name)
{
	ListCell   *lc;

	foreach(lc, members)
	{
		Member	   *m = lfirst(lc);

		if (strcmp(m->name, name) == 0)
			return m;
	}
	return NULL;
}

/*
 * Have the node r reaches admit this node (me, mine); add the members it
 * lists that are new to *members.  That node is target (NULL: the sponsor,
 * added under the name it gives itself), whatever name it gives itself:
 * a member's name is the one the sponsor knows it by.  Returns its member
 * (NULL when it lists no row of itself, which admit() always does).
 */
static Member *
admit_at(Remote *r, const char *me, const char *mine, const char *credential,
		 List **members, Member *target)
{
	const char *params[2] = {me, mine};
	PGresult   *res = remote_exec(r, "SELECT node, conninfo, is_self, action FROM replstamp.admit($1, $2)",
								  2, params, PGRES_TUPLES_OK);
	Member	   *self = NULL;

	for (int i = 0; i < PQntuples(res); i++)
	{
		const char *name = PQgetvalue(res, i, 0);
		bool		is_self = strcmp(PQgetvalue(res, i, 2), "t") == 0;
		Member	   *m;

		if (strcmp(name, me) == 0)
			continue;			/* this node, as a peer there */
		if (is_self && target != NULL)
		{
			target->admitted = true;
			target->there = pstrdup(PQgetvalue(res, i, 3));
			self = target;
			continue;
		}
		m = find_member(*members, name);
		if (m == NULL)
		{
			m = palloc0(sizeof(Member));
			m->name = pstrdup(name);
			if (!PQgetisnull(res, i, 1))
			{
				m->pull = pstrdup(PQgetvalue(res, i, 1));
				m->admin = compose(m->pull, credential, NULL, NULL, NULL);
			}
			*members = lappend(*members, m);
		}
		if (is_self)
		{
			m->admitted = true;
			m->there = pstrdup(PQgetvalue(res, i, 3));
			self = m;
		}
	}
	PQclear(res);
	return self;
}

/*
 * Connect to a member (target; NULL: the sponsor, at conninfo) and admit
 * this node there; closes the connection.
 */
static Member *
admit_via(const char *label, const char *conninfo, const char *me, const char *mine,
		  const char *credential, List **members, Member *target)
{
	Remote		r;
	Member	   *self = NULL;

	memset(&r, 0, sizeof(r));
	PG_TRY();
	{
		remote_connect(&r, label, conninfo);
		if (target == NULL)
			refuse_stale(&r);
		self = admit_at(&r, me, mine, credential, members, target);
	}
	PG_FINALLY();
	{
		remote_disconnect(&r);
	}
	PG_END_TRY();
	return self;
}

/* How the sponsor sees this node connect: its address, or NULL (a socket). */
static char *
client_address(const char *conninfo)
{
	Remote		r;
	char	   *addr = NULL;

	memset(&r, 0, sizeof(r));
	PG_TRY();
	{
		PGresult   *res;

		remote_connect(&r, "the node to join", conninfo);
		res = remote_exec(&r, "SELECT pg_catalog.host(pg_catalog.inet_client_addr())",
						  0, NULL, PGRES_TUPLES_OK);
		if (!PQgetisnull(res, 0, 0))
			addr = pstrdup(PQgetvalue(res, 0, 0));
		PQclear(res);
	}
	PG_FINALLY();
	{
		remote_disconnect(&r);
	}
	PG_END_TRY();
	return addr;
}

/*
 * my_conninfo by default: the credential of conninfo, and the address by
 * which the sponsor saw this node connect (its first socket directory when
 * it came over a Unix socket), this server's port and this database.
 */
static char *
default_my_conninfo(const char *conninfo)
{
	char	   *host = client_address(conninfo);

	if (host == NULL)
	{
		char	   *dirs = pstrdup(Unix_socket_directories ? Unix_socket_directories : "");
		char	   *comma = strchr(dirs, ',');

		if (comma)
			*comma = '\0';
		host = dirs;
		while (*host == ' ')
			host++;
		if (host[0] == '\0')
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("cannot tell how the other nodes reach this one"),
					 errhint("Pass my_conninfo => 'host=... dbname=... user=...'.")));
	}
	return compose(NULL, conninfo, host, psprintf("%d", PostPortNumber),
				   get_database_name(MyDatabaseId));
}

static void
remember_self(const char *name, const char *conninfo)
{
	ReplstampOwnerContext ctx;
	Oid			types[2] = {TEXTOID, TEXTOID};
	Datum		values[2] = {CStringGetTextDatum(name), CStringGetTextDatum(conninfo)};

	dbaccess_become_owner(&ctx);
	SPI_connect();
	dbaccess_spi_exec("INSERT INTO replstamp.mesh (name, conninfo) VALUES ($1, $2) "
					  "ON CONFLICT (one) DO UPDATE SET name = EXCLUDED.name, conninfo = EXCLUDED.conninfo",
					  2, types, values, NULL, SPI_OK_INSERT);
	SPI_finish();
	dbaccess_restore_user(&ctx);
}

/*
 * replstamp.join(conninfo, my_conninfo, name): see the file header.
 * Returns one row per member: its name and what was done there and here.
 */
Datum
replstamp_join(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	char	   *conninfo;
	char	   *mine;
	char	   *me;
	List	   *members = NIL;
	Member	   *sponsor;
	ListCell   *lc;

	PreventInTransactionBlock(true, "replstamp.join()");
	(void) catalog_get_v11("replstamp.join()");
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("the connection string of a node to join is required")));
	conninfo = text_to_cstring(PG_GETARG_TEXT_PP(0));
	PQconninfoFree(parse_conninfo(conninfo, "conninfo"));
	me = PG_ARGISNULL(2) ? self_name() : text_to_cstring(PG_GETARG_TEXT_PP(2));
	check_name(me);
	refuse_unstamped_rows();
	if (!PG_ARGISNULL(1))
	{
		mine = text_to_cstring(PG_GETARG_TEXT_PP(1));
		PQconninfoFree(parse_conninfo(mine, "my_conninfo"));
	}
	else
		mine = default_my_conninfo(conninfo);

	/* The sponsor first, then every member it (or another) names. */
	sponsor = admit_via("the node to join", conninfo, me, mine, conninfo, &members, NULL);
	if (sponsor == NULL)
		elog(ERROR, "replstamp: the node to join did not name itself");

	/*
	 * The sponsor did not join with join(): pull from it at the address of
	 * conninfo as the role others pull from here (my_conninfo's credential:
	 * the mesh's pulling role), or as conninfo's.
	 */
	if (sponsor->pull == NULL)
		sponsor->pull = PG_ARGISNULL(1) ? conninfo : compose(conninfo, mine, NULL, NULL, NULL);
	sponsor->admin = conninfo;
	for (int i = 0; i < list_length(members); i++)
	{
		Member	   *m = list_nth(members, i);

		if (m->admitted)
			continue;
		if (m->admin == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("no node of the mesh says how to reach member \"%s\"", m->name)));
		if (admit_via(m->name, m->admin, me, mine, conninfo, &members, m) == NULL)
			elog(ERROR, "replstamp: member \"%s\" did not name itself", m->name);
	}

	/* Every member admitted this node: now this node pulls from each. */
	InitMaterializedSRF(fcinfo, 0);
	foreach(lc, members)
	{
		Member	   *m = lfirst(lc);
		Datum		values[2];
		bool		nulls[2] = {false, false};

		m->here = (char *) ensure_peer(m->name, m->pull);
		values[0] = CStringGetTextDatum(m->name);
		values[1] = CStringGetTextDatum(psprintf("there: %s; here: %s", m->there, m->here));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	remember_self(me, mine);
	return (Datum) 0;
}

/*
 * replstamp.admit(name, conninfo): on a member, called by join() on a new
 * node: add it as a peer (nothing when it is one already, with the same
 * connection string), and list this node (is_self, with its
 * replstamp.mesh.conninfo if it joined with join()) and its other peers
 * with their connection strings.  As privileged as add_peer(): the
 * connection strings may hold passwords.
 */
Datum
replstamp_admit(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *conninfo = text_to_cstring(PG_GETARG_TEXT_PP(1));
	char	   *self;
	const char *action;
	ReplstampOwnerContext ctx;
	Oid			types[1] = {TEXTOID};
	Datum		args[1];

	(void) catalog_get_v11("replstamp.admit()");
	check_name(name);
	self = self_name();
	if (strcmp(name, self) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("node \"%s\" cannot join under the name of the node it joins", name),
				 errhint("Join under another name (replstamp.join(..., name => '...')), or set cluster_name.")));
	action = ensure_peer(name, conninfo);

	InitMaterializedSRF(fcinfo, 0);
	args[0] = CStringGetTextDatum(name);
	dbaccess_become_owner(&ctx);
	SPI_connect();
	dbaccess_spi_exec("SELECT c.name, m.conninfo, true FROM replstamp.cluster c "
					  "LEFT JOIN replstamp.mesh m ON true WHERE c.is_self "
					  "UNION ALL "
					  "SELECT p.name, p.conninfo, false FROM replstamp.peer p "
					  "WHERE p.name OPERATOR(pg_catalog.<>) $1",
					  1, types, args, NULL, SPI_OK_SELECT);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		Datum		values[4];
		bool		nulls[4];

		for (int k = 0; k < 3; k++)
			values[k] = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, k + 1, &nulls[k]);
		nulls[3] = !DatumGetBool(values[2]);
		values[3] = CStringGetTextDatum(action);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	SPI_finish();
	dbaccess_restore_user(&ctx);
	return (Datum) 0;
}

/* ---------------------------------------------------------------------
 * leave()
 * ---------------------------------------------------------------------
 */

/*
 * On the member r reaches: pull what it lacks from this node, then drop
 * it (under any name it has there: the name, or this node's replica ID as
 * of its last pull).  Returns what was done.
 */
static char *
release_at(Remote *r, const char *me, const char *my_id)
{
	const char *params[2] = {me, my_id};
	PGresult   *res = remote_exec(r, "SELECT name FROM replstamp.peers "
								  "WHERE name OPERATOR(pg_catalog.=) $1 "
								  "OR replica_id OPERATOR(pg_catalog.=) $2::pg_catalog.uuid "
								  "ORDER BY name", 2, params, PGRES_TUPLES_OK);
	int			n = PQntuples(res);
	char	   *action = n == 0 ? "not a peer there" : "pulled from here, dropped there";

	for (int i = 0; i < n; i++)
	{
		const char *name[1] = {PQgetvalue(res, i, 0)};

		PQclear(remote_exec(r, "SELECT replstamp.sync($1)", 1, name, PGRES_TUPLES_OK));
		PQclear(remote_exec(r, "SELECT replstamp.drop_peer($1)", 1, name, PGRES_TUPLES_OK));
	}
	PQclear(res);
	return action;
}

/*
 * replstamp.leave(conninfo): see the file header.  conninfo, if given,
 * lends its credential to the connections to the peers.  Returns one row
 * per peer: what was done there and here.
 */
Datum
replstamp_leave(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	char	   *credential = PG_ARGISNULL(0) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *me;
	char	   *my_id;
	List	   *names = NIL;
	List	   *conninfos = NIL;
	ReplstampOwnerContext ctx;
	MemoryContext caller = CurrentMemoryContext;

	PreventInTransactionBlock(true, "replstamp.leave()");
	(void) catalog_get_v11("replstamp.leave()");
	if (credential)
		PQconninfoFree(parse_conninfo(credential, "conninfo"));

	/*
	 * No sync of this node's database runs until its peers are dropped here
	 * too and that is committed (one that runs now is waited for): a pull
	 * from a peer that had already dropped this node recorded it there again
	 * as a puller, shown in its replstamp.cluster and holding its pruning
	 * back.  Hence a lock held to the end of the transaction: a sync that
	 * took it between the drops and their commit would still see its peers.
	 */
	rowversion_lock_xact();
	me = self_name();
	my_id = catalog_uuid_text(&catalog_node()->replica_id);

	dbaccess_become_owner(&ctx);
	SPI_connect();
	dbaccess_spi_exec("SELECT name, conninfo FROM replstamp.peer ORDER BY name", 0, NULL, NULL, NULL, SPI_OK_SELECT);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		MemoryContext old = MemoryContextSwitchTo(caller);

		names = lappend(names, pstrdup(SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1)));
		conninfos = lappend(conninfos, pstrdup(SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2)));
		MemoryContextSwitchTo(old);
	}
	SPI_finish();
	dbaccess_restore_user(&ctx);

	InitMaterializedSRF(fcinfo, 0);
	for (int i = 0; i < list_length(names); i++)
	{
		char	   *name = list_nth(names, i);
		char	   *admin = compose(list_nth(conninfos, i), credential, NULL, NULL, NULL);
		char	   *there = NULL;
		Remote		r;
		Datum		values[2];
		bool		nulls[2] = {false, false};

		memset(&r, 0, sizeof(r));
		PG_TRY();
		{
			remote_connect(&r, name, admin);
			there = release_at(&r, me, my_id);
		}
		PG_FINALLY();
		{
			remote_disconnect(&r);
		}
		PG_END_TRY();
		values[0] = CStringGetTextDatum(name);
		values[1] = CStringGetTextDatum(psprintf("%s; dropped here", there));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	/* Every peer let this node go: drop them here. */
	for (int i = 0; i < list_length(names); i++)
		(void) DirectFunctionCall1(replstamp_drop_peer, CStringGetTextDatum(list_nth(names, i)));
	dbaccess_become_owner(&ctx);
	SPI_connect();
	dbaccess_spi_exec("DELETE FROM replstamp.mesh", 0, NULL, NULL, NULL, SPI_OK_DELETE);
	SPI_finish();
	dbaccess_restore_user(&ctx);
	return (Datum) 0;
}

/*-------------------------------------------------------------------------
 *
 * proto.h
 *		The sync handshake: what a pulling node and the node it pulls from
 *		tell each other before any change moves (protocol 2, a JSON object
 *		each way; replstamp.serve(request) answers it).
 *
 * Each side describes itself the same way: its current replica ID, the
 * serials it has handed out, its vector with, per replica ID, the epochs
 * of that ID it knows (proof of which history its changes come from), its
 * retired IDs, the epochs it knows to be dead, and per replica ID the
 * highest serial whose tombstone it dropped or learnt was dropped.
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#ifndef REPLSTAMP_PROTO_H
#define REPLSTAMP_PROTO_H

#include "datatype/timestamp.h"
#include "utils/jsonb.h"
#include "utils/uuid.h"

/*
 * 1: replstamp 1.0 (serve_vector()); 2: 1.1 (serve(), changes per replica
 * ID in serial order); 3: 1.2 (whole transactions, in the server's log
 * order).  Both sides refuse any other: a puller that applies what a
 * server sends split or reordered would break what 1.2 promises.
 */
#define REPLSTAMP_PROTOCOL	3
#define REPLSTAMP_VERSION	"1.2"

typedef struct EpochEntry
{
	pg_uuid_t	token;
	int64		first;			/* the first serial of that epoch */
} EpochEntry;

typedef struct VectorItem
{
	pg_uuid_t	id;
	int64		serial;			/* every change of id up to here is held */
	int64		count;			/* response: changes above the puller's entry */
	TimestampTz oldest;			/* response: the oldest of them, or 0 */
	int			nepochs;
	EpochEntry *epochs;			/* sorted by first */
} VectorItem;

typedef struct DeadMark
{
	pg_uuid_t	id;
	pg_uuid_t	token;
	int64		first;
} DeadMark;

/* Tombstones of id were dropped up to serial (replstamp.purged). */
typedef struct PurgedMark
{
	pg_uuid_t	id;
	int64		serial;
} PurgedMark;

typedef struct Handshake
{
	int			protocol;
	char	   *version;		/* of replstamp */
	pg_uuid_t	replica_id;		/* current */
	char	   *label;
	int64		issued;			/* next serial - 1 */
	TimestampTz now;
	int			nvector;
	VectorItem *vector;
	int			nretired;
	pg_uuid_t  *retired;
	int			ndead;
	DeadMark   *dead;
	int			npurged;		/* absent from older 1.1 handshakes: none */
	PurgedMark *purged;
	bool		rotated;		/* response: the server rotated while
								 * answering */
} Handshake;

extern int	proto_max_new_replica_ids;
extern int	proto_debug_handshake_pause;

extern void proto_local(Handshake *h, bool with_lag_for);
extern char *proto_encode(Handshake *h);
extern void proto_decode(Jsonb *json, Handshake *h, const char *from);
extern VectorItem *proto_find(Handshake *h, const pg_uuid_t *id);
extern void proto_refuse_flood(const Handshake *mine, const Handshake *theirs, bool vector_too,
							   const char *from);
extern bool proto_histories_agree(const VectorItem *a, int64 extent_a,
								  const VectorItem *b, int64 extent_b, int64 *diverge_at);

#endif							/* REPLSTAMP_PROTO_H */

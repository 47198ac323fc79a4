/*-------------------------------------------------------------------------
 *
 * ddl.h
 *		Schema changes as stamped changes: captured where they are made
 *		(a ProcessUtility hook), applied where they are pulled.
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#ifndef REPLSTAMP_DDL_H
#define REPLSTAMP_DDL_H

#include "changelog.h"
#include "identity.h"

extern void ddl_init(void);
extern bool ddl_apply(Change *change, const char *peer, bool nowait);
extern Jsonb *ddl_key(void);
extern Jsonb *ddl_reissue(const Change *change, const pg_uuid_t *new_id, int64 new_serial,
						  int64 from_serial, ReissueKind kind);

#endif							/* REPLSTAMP_DDL_H */

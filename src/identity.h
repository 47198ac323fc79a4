/*-------------------------------------------------------------------------
 *
 * identity.h
 *		The identity check: a restored or copied database takes a new
 *		replica ID before it stamps anything.
 *
 * Copyright (c) 2026, the replstamp authors
 *
 *-------------------------------------------------------------------------
 */
#ifndef REPLSTAMP_IDENTITY_H
#define REPLSTAMP_IDENTITY_H

extern bool identity_local_verified;

extern void identity_init(void);
extern void identity_verify_slow(void);
extern void identity_mark_verified(void);
extern bool identity_db_verified(Oid dboid);
extern char *identity_fingerprint(void);

/*
 * Called by the stamp trigger before every stamp: once this backend has
 * seen the current database verified since the server started, it costs a
 * test of one bool.
 */
static inline void
identity_ensure_verified(void)
{
	if (likely(identity_local_verified))
		return;
	identity_verify_slow();
}

#endif							/* REPLSTAMP_IDENTITY_H */

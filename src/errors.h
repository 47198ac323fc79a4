/*-------------------------------------------------------------------------
 *
 * errors.h
 *		What replstamp shows of an error in places every role can read
 *		(replstamp.peers, replstamp.tracked_table): the SQLSTATE, the stamp and
 *		the table, never a value of a row.
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#ifndef REPLSTAMP_ERRORS_H
#define REPLSTAMP_ERRORS_H

/*
 * The message domain of replstamp's own ereports, by which errors.c tells
 * them from PostgreSQL's.  Every source file includes this header, after
 * postgres.h (whose elog.h sets TEXTDOMAIN to NULL, the backend's own), as
 * PostgreSQL's PL modules override TEXTDOMAIN.
 */
#define REPLSTAMP_TEXTDOMAIN	"replstamp"
#undef TEXTDOMAIN
#define TEXTDOMAIN REPLSTAMP_TEXTDOMAIN

extern bool errors_raised_here(const ErrorData *e);
extern const char *errors_condition_text(int sqlerrcode);
extern char *errors_public_text(const ErrorData *e, char **stamp);

#endif							/* REPLSTAMP_ERRORS_H */

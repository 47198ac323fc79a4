/*-------------------------------------------------------------------------
 *
 * basebackup.c
 *		CALL replstamp.backup(target): a self-contained, verifiable base
 *		backup of the whole cluster, taken inside the backup/original flip.
 *
 * The steps, in order:
 *	1. check the target (absolute; outside the data directory, the WAL
 *	   directory and every tablespace, symbolic links resolved, and not
 *	   holding any of them; empty or absent; writable) and claim the one
 *	   backup slot of the cluster;
 *	2. mark every database with replstamp 'backup' (backup_mark.c), durably;
 *	3. keep WAL from recycling with a temporary physical replication slot,
 *	   then start a backup (do_pg_backup_start, as pg_backup_start does);
 *	4. copy the data directory and every tablespace into the target,
 *	   skipping what PostgreSQL's own base backup skips, computing a
 *	   CRC-32C of every file and, when the cluster has data checksums,
 *	   verifying the checksum of every page of every relation file;
 *	   global/pg_control is copied last; bad pages fail the backup;
 *	5. fsync everything copied (before the stop, whose WAL flush would
 *	   otherwise queue behind the writeback of the copy);
 *	6. stop the backup, write its backup_label, copy every WAL segment from
 *	   the start to the stop location into target/pg_wal;
 *	7. fsync the WAL, write backup_manifest (the format pg_verifybackup
 *	   reads), remove the "incomplete" marker, fsync the target;
 *	8. mark the databases 'original' again.
 *
 * Tablespaces are copied into target/pg_tblspc/<oid> as directories (what
 * PostgreSQL calls in-place tablespaces; the copy's postgresql.auto.conf
 * gets allow_in_place_tablespaces = on, without which PostgreSQL 15 refuses
 * them at the end of recovery) and no tablespace_map is written: the
 * target is self-contained and can be moved anywhere.  A tablespace_map
 * naming the original locations would make a copy restored on the same
 * host write into the live node's tablespaces.  To put a tablespace back
 * in a place of its own, stop the copy, move the directory and leave a
 * symbolic link, as pg_basebackup --tablespace-mapping would.
 *
 * A failed backup (error, cancel, termination, full disk) ends the backup
 * session, drops the slot, removes what it wrote to the target and marks
 * the databases 'original' again.  Until the very end the target holds a
 * file named replstamp_backup.incomplete and no backup_manifest, and
 * global/pg_control is copied only after every other data file, so a
 * partial target cannot be started or verified by mistake.
 *
 * Progress: NOTICE lines at each phase and every few seconds while files
 * are copied, and the standard pg_stat_progress_basebackup view.
 *
 * Copyright (c) 2026, the replstamp authors
 * Distributed under the PostgreSQL License: see LICENSE.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "access/xact.h"
#include "access/xlog.h"
#include "access/xlog_internal.h"
#include "commands/progress.h"
#include "commands/tablespace.h"
#include "common/cryptohash.h"
#include "common/file_perm.h"
#include "common/sha2.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "pgstat.h"
#include "port/pg_crc32c.h"
#include "postmaster/syslogger.h"
#include "replication/slot.h"
#include "storage/dsm_impl.h"
#include "storage/bufpage.h"
#include "storage/checksum.h"
#include "storage/fd.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/reinit.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/json.h"
#include "utils/memutils.h"
#include "utils/relcache.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "backup_mark.h"
#include "basebackup.h"
#include "catalog.h"
#include "compat.h"
#include "errors.h"
#include "shmem.h"
#include "workers.h"

PG_FUNCTION_INFO_V1(replstamp_backup);

#define COPY_BUFSIZE		(1024 * 1024)
/* Start the writeback of a file's copy every this many bytes. */
#define FLUSH_EVERY			(8 * 1024 * 1024)
StaticAssertDecl(COPY_BUFSIZE % BLCKSZ == 0, "pages are verified a buffer at a time");
#define NOTICE_INTERVAL_MS	5000
#define INCOMPLETE_MARKER	"replstamp_backup.incomplete"
#define MANIFEST_FILE		"backup_manifest"

/*
 * The longest path, relative to the data directory, that PostgreSQL 15
 * gives a file of its own, which may appear while the backup runs: a
 * logical rewrite mapping, pg_logical/mappings/map-<six 32-bit numbers in
 * hex> (77 bytes); a relation segment, pg_tblspc/<oid>/<version
 * directory>/<oid>/<oid>_<fork>.<segment>, takes at most 74.  A target
 * must leave room for it before anything is written; the size estimate
 * then checks the names that are actually there.
 */
#define LONGEST_MAPPING_PATH \
	(sizeof("pg_logical/mappings/map-") - 1 + 6 * 8 + 5)
#define LONGEST_SEGMENT_PATH \
	(sizeof("pg_tblspc/") - 1 + OIDCHARS + 1 + \
	 sizeof(TABLESPACE_VERSION_DIRECTORY) - 1 + 1 + OIDCHARS + 1 + \
	 OIDCHARS + 1 + FORKNAMECHARS + 1 + 10)
#define LONGEST_PG_PATH		((int) Max(LONGEST_MAPPING_PATH, LONGEST_SEGMENT_PATH))

/*
 * Tablespaces are copied into pg_tblspc/<oid> as directories; PostgreSQL
 * 15 accepts such in-place tablespaces only with this setting, which is
 * appended to the copy's postgresql.auto.conf.
 */
#define IN_PLACE_SETTING \
	"\n# Added by replstamp.backup(): the tablespaces of this backup are\n" \
	"# directories in pg_tblspc, so that it can be moved anywhere.\n" \
	"allow_in_place_tablespaces = on\n"

/*
 * What is skipped follows PostgreSQL's own base backup of the major it
 * runs on (src/backend/replication/basebackup.c in 15, backup/basebackup.c
 * since 16): the lists below, files and directories whose names start with
 * pgsql_tmp, temporary relations, every fork but the init fork of an
 * unlogged relation, and of a tablespace all but this server's version
 * directory.  17 and 18 skip the same; 17 adds pg_wal/summaries (empty)
 * and a manifest of version 2 that names the system.  The WAL summaries
 * themselves are WAL's, not copied: a backup is always a full one.
 */

/*
 * Directories of the data directory whose contents the server clears or
 * rebuilds when it starts: copied empty, also when they are symbolic links
 * to elsewhere.  (pg_wal too, whose WAL is copied afterwards.)
 */
static const char *const skip_contents[] = {
	PG_STAT_TMP_DIR, "pg_replslot", PG_DYNSHMEM_DIR, "pg_notify", "pg_serial",
	"pg_snapshots", "pg_subtrans", NULL
};

/*
 * The directories inside pg_wal a base backup holds, empty: 17 added the
 * WAL summaries that incremental backups read (pg_basebackup of 17 and 18
 * sends pg_wal/summaries empty, as it sends archive_status).
 */
static const char *const wal_subdirs[] = {
	XLOGDIR "/archive_status",
#if PG_VERSION_NUM >= 170000
	XLOGDIR "/summaries",
#endif
	NULL
};

/* Files not copied, wherever they are; prefix: any name that starts so. */
typedef struct SkipFile
{
	const char *name;
	bool		prefix;
} SkipFile;

static const SkipFile skip_files[] = {
	{"postmaster.pid", false},
	{"postmaster.opts", false},
	/* rebuilt at start; pg_internal.init.<pid> are its temporary files */
	{RELCACHE_INIT_FILENAME, true},
	/* a running server has none of its own; ours are written apart */
	{BACKUP_LABEL_FILE, false},
	{TABLESPACE_MAP, false},
	{MANIFEST_FILE, false},
	{LOG_METAINFO_DATAFILE_TMP, false},
	{PG_AUTOCONF_FILENAME ".tmp", false},
	{NULL, false}
};

/* What a directory holds, which decides what is skipped in it. */
typedef enum DirKind
{
	DIR_TOP,					/* the data directory */
	DIR_BASE,					/* base: a directory per database */
	DIR_GLOBAL,					/* global: shared relations, pg_control */
	DIR_TBLSPC_LINKS,			/* pg_tblspc: an entry per tablespace */
	DIR_TBLSPC,					/* pg_tblspc/<oid>: version directories */
	DIR_VERSION,				/* pg_tblspc/<oid>/<this version> */
	DIR_DATABASE,				/* base/<oid>, pg_tblspc/<oid>/<version>/<oid> */
	DIR_OTHER
} DirKind;

/* One copied file, for the manifest. */
typedef struct CopiedFile
{
	char	   *path;			/* relative to the target */
	uint64		size;
	pg_time_t	mtime;
	pg_crc32c	crc;
} CopiedFile;

/*
 * A relation file whose page checksums are verified as it is copied.
 */
typedef struct PageCheck
{
	BlockNumber first_block;	/* of the file in its relation fork */
	Oid			dboid;			/* for pg_stat_database; InvalidOid: shared */
} PageCheck;

/* Pages listed in the error that fails a backup for bad checksums. */
#define MAX_BAD_PAGES_LISTED	20
/* Bad pages reported as warnings, per file. */
#define MAX_BAD_PAGE_WARNINGS	5

/* A directory, recognised whatever the path that leads to it. */
typedef struct FileId
{
	dev_t		dev;
	ino_t		ino;
} FileId;

/* Everything about the backup in progress. */
typedef struct BackupRun
{
	char	   *target;			/* real path: no symbolic links, . or .. */
	dev_t		target_dev;		/* the target directory, to recognise it */
	ino_t		target_ino;
	bool		created_target; /* we created it (else it was empty) */
	char	   *created_root;	/* the highest directory we created for it */
	List	   *flipped;		/* databases marked 'backup' */
	bool		session_started;	/* do_pg_backup_start done */
	char		slot_name[NAMEDATALEN];
	bool		slot_created;
	bool		wrote_target;

	List	   *files;			/* CopiedFile *, in copy order */
	bool		verify_checksums;	/* the cluster has data checksums */
	XLogRecPtr	start_lsn;		/* pages from here on are WAL's to restore */
	int			bad_pages;		/* pages that failed verification */
	int			bad_files;		/* files that have any */
	StringInfoData bad_list;	/* the first few, for the error */
	uint64		total_bytes;	/* estimate for the data files */
	uint64		done_bytes;
	char	   *longest_rel;	/* the longest path the copy will write */
	List	   *tblspc_dirs;	/* FileId of every tablespace location */
	int			ntablespaces;
	int			done_tablespaces;
	int			max_rate;		/* kB/s, 0 = unlimited */
	int			sync_fd;		/* the target, open for syncfs(); else -1 */
	instr_time	started;
	instr_time	last_notice;
	char	   *buf;
} BackupRun;

static BackupRun *current_run = NULL;

/*
 * replstamp.backup_sync_method: how the copy is made durable.  fsync: every
 * file and directory, one call each, as pg_basebackup does by default;
 * syncfs: the target's whole file system in one call, as PostgreSQL's
 * recovery_init_sync_method = syncfs and pg_basebackup --sync-method=syncfs
 * (PostgreSQL 17) do; auto: syncfs where the kernel reports write-back
 * errors through it (Linux 5.8 and later), else fsync.
 */
typedef enum BackupSyncMethod
{
	BACKUP_SYNC_AUTO,
	BACKUP_SYNC_FSYNC,
#ifdef HAVE_SYNCFS
	BACKUP_SYNC_SYNCFS,
#endif
} BackupSyncMethod;

static const struct config_enum_entry backup_sync_options[] = {
	{"auto", BACKUP_SYNC_AUTO, false},
	{"fsync", BACKUP_SYNC_FSYNC, false},
#ifdef HAVE_SYNCFS
	{"syncfs", BACKUP_SYNC_SYNCFS, false},
#endif
	{NULL, 0, false}
};

static int	backup_sync_method = BACKUP_SYNC_AUTO;

void
basebackup_init(void)
{
	DefineCustomEnumVariable("replstamp.backup_sync_method",
							 "How replstamp.backup() makes the copy durable.",
							 "fsync: each file and directory; syncfs: the target's file system "
							 "in one call; auto (the default): syncfs on Linux 5.8 or later, "
							 "which reports write-back errors through it, else fsync.",
							 &backup_sync_method,
							 BACKUP_SYNC_AUTO, backup_sync_options,
							 PGC_SUSET,
							 0,
							 NULL, NULL, NULL);
}

/* Does this kernel report write-back errors through syncfs()? */
static bool
syncfs_reports_errors(void)
{
#if defined(HAVE_SYNCFS) && defined(__linux__)
	struct utsname u;
	int			major = 0,
				minor = 0;

	if (uname(&u) != 0 || sscanf(u.release, "%d.%d", &major, &minor) != 2)
		return false;
	return major > 5 || (major == 5 && minor >= 8);
#else
	return false;
#endif
}

/*
 * With syncfs, open the target now and keep it open to the end: syncfs()
 * reports the write-back errors of its file system that happened since the
 * descriptor was opened, so none of the copy's can go unseen.
 */
static void
open_sync_fd(BackupRun *run)
{
	bool		use_syncfs = false;

	run->sync_fd = -1;
#ifdef HAVE_SYNCFS
	use_syncfs = backup_sync_method == BACKUP_SYNC_SYNCFS ||
		(backup_sync_method == BACKUP_SYNC_AUTO && syncfs_reports_errors());
#endif
	if (!use_syncfs)
		return;
	if (!AcquireExternalFD())
	{
		/* No descriptor to spare: the slower way is as durable. */
		ereport(DEBUG1,
				(errmsg_internal("no file descriptor for syncfs(), the backup uses fsync")));
		return;
	}
	run->sync_fd = open(run->target, O_RDONLY | PG_BINARY);
	if (run->sync_fd < 0)
	{
		ReleaseExternalFD();
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not open backup target \"%s\": %m", run->target)));
	}
}

static void
close_sync_fd(BackupRun *run)
{
	if (run->sync_fd >= 0)
	{
		close(run->sync_fd);
		ReleaseExternalFD();
		run->sync_fd = -1;
	}
}

static bool
in_list(const char *name, const char *const *list)
{
	for (; *list; list++)
		if (strcmp(name, *list) == 0)
			return true;
	return false;
}

static bool
skip_file_name(const char *name)
{
	const SkipFile *sf;

	for (sf = skip_files; sf->name; sf++)
		if (sf->prefix ? strncmp(name, sf->name, strlen(sf->name)) == 0 :
			strcmp(name, sf->name) == 0)
			return true;
	return false;
}

static bool
all_digits(const char *name)
{
	return name[0] != '\0' && strspn(name, "0123456789") == strlen(name);
}

/* The kind of the directory name in a directory of kind parent. */
static DirKind
child_kind(DirKind parent, const char *name)
{
	switch (parent)
	{
		case DIR_TOP:
			if (strcmp(name, "base") == 0)
				return DIR_BASE;
			if (strcmp(name, "global") == 0)
				return DIR_GLOBAL;
			if (strcmp(name, "pg_tblspc") == 0)
				return DIR_TBLSPC_LINKS;
			return DIR_OTHER;
		case DIR_TBLSPC_LINKS:
			return DIR_TBLSPC;
		case DIR_TBLSPC:
			return DIR_VERSION;
		case DIR_BASE:
		case DIR_VERSION:
			return all_digits(name) ? DIR_DATABASE : DIR_OTHER;
		default:
			return DIR_OTHER;
	}
}

/*
 * Is path the same as dir or below it?  Both are real paths.
 */
static bool
path_within(const char *path, const char *dir)
{
	size_t		len = strlen(dir);

	if (strcmp(dir, "/") == 0)
		return true;
	return strncmp(path, dir, len) == 0 && (path[len] == '\0' || path[len] == '/');
}

/*
 * Format a path into buf, which has MAXPGPATH bytes.  A path that does not
 * fit is an error, never a silently shortened name.  (The target's length
 * is checked before anything is written and again before anything is
 * copied, so this is the last line of defence.)
 */
static void build_path(char *buf, const char *fmt,...) pg_attribute_printf(2, 3);

static void
build_path(char *buf, const char *fmt,...)
{
	va_list		args;
	int			len;

	va_start(args, fmt);
	len = vsnprintf(buf, MAXPGPATH, fmt, args);
	va_end(args);
	if (len < 0 || len >= MAXPGPATH)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("path \"%s...\" is too long (maximum %d bytes)", buf, MAXPGPATH - 1),
				 errhint("Choose a shorter backup target.")));
}

/*
 * Refuse the target when a file named rel (relative to the data directory,
 * rellen bytes) would not fit below it.  rel NULL: the longest name
 * PostgreSQL gives a file of its own.
 */
static void
check_room(const char *target, const char *rel, int rellen)
{
	int			room = MAXPGPATH - 2 - rellen;

	if ((int) strlen(target) <= room)
		return;
	if (rel == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("backup target \"%s\" is too long", target),
				 errdetail("PostgreSQL names files up to %d bytes long below the target, and a path must be shorter than %d bytes.",
						   rellen, MAXPGPATH),
				 errhint("Choose a target path of at most %d bytes.", room)));
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("backup target \"%s\" is too long for the file \"%s\"", target, rel),
			 errdetail("Below the target, its path would have %d bytes; a path must be shorter than %d bytes.",
					   (int) strlen(target) + 1 + rellen, MAXPGPATH),
			 errhint("Choose a target path of at most %d bytes.", room)));
}

static char *
pretty_bytes(uint64 n)
{
	if (n >= UINT64CONST(10) * 1024 * 1024 * 1024)
		return psprintf("%.1f GB", n / (1024.0 * 1024 * 1024));
	if (n >= UINT64CONST(10) * 1024 * 1024)
		return psprintf("%.0f MB", n / (1024.0 * 1024));
	if (n >= 10 * 1024)
		return psprintf("%.0f kB", n / 1024.0);
	return psprintf(UINT64_FORMAT " bytes", n);
}

static double
elapsed_ms(instr_time since)
{
	instr_time	now;

	INSTR_TIME_SET_CURRENT(now);
	INSTR_TIME_SUBTRACT(now, since);
	return INSTR_TIME_GET_MILLISEC(now);
}

static void
progress_notice(BackupRun *run, bool force)
{
	if (!force && elapsed_ms(run->last_notice) < NOTICE_INTERVAL_MS)
		return;
	INSTR_TIME_SET_CURRENT(run->last_notice);
	ereport(NOTICE,
			(errmsg("copying files: %s of %s (%d%%), %.0f s elapsed",
					pretty_bytes(run->done_bytes), pretty_bytes(run->total_bytes),
					run->total_bytes ? (int) Min(100, run->done_bytes * 100 / run->total_bytes) : 100,
					elapsed_ms(run->started) / 1000.0)));
}

/*
 * Sleep as needed so that the copy does not go faster than max_rate.
 */
static void
throttle(BackupRun *run)
{
	double		should_ms;
	double		is_ms;

	if (run->max_rate <= 0)
		return;
	should_ms = (double) run->done_bytes / (run->max_rate * 1024.0) * 1000.0;
	is_ms = elapsed_ms(run->started);
	if (should_ms > is_ms)
	{
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 (long) Min(should_ms - is_ms, 1000), PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

/* Create a file in the target; errors name the target. */
static int
create_target_file(BackupRun *run, const char *path, int flags)
{
	int			fd = OpenTransientFile(path, O_WRONLY | O_CREAT | flags | PG_BINARY);

	if (fd < 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not create file \"%s\": %m", path),
				 errhint("Check that the backup target is writable.")));
	run->wrote_target = true;
	return fd;
}

/* Write all of buf; a short write is a full disk. */
static void
write_target(int fd, const char *path, const void *buf, size_t len)
{
	errno = 0;
	if (write(fd, buf, len) != (ssize_t) len)
	{
		if (errno == 0)
			errno = ENOSPC;
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not write file \"%s\": %m", path),
				 errhint("Free space on the backup target, or choose another target.")));
	}
}

/* Read up to len bytes at offset; fewer only at the end of the file. */
static ssize_t
read_block(int fd, const char *path, char *buf, size_t len, off_t offset)
{
	size_t		done = 0;

	while (done < len)
	{
		ssize_t		n;

		pgstat_report_wait_start(WAIT_EVENT_BASEBACKUP_READ);
		n = pg_pread(fd, buf + done, len - done, offset + done);
		pgstat_report_wait_end();
		if (n < 0)
			ereport(ERROR,
					(errcode_for_file_access(),
					 errmsg("could not read file \"%s\": %m", path)));
		if (n == 0)
			break;
		done += n;
	}
	return done;
}

/*
 * Does the page pass: new (never written, so without a checksum), written
 * since the backup started (WAL replay restores it, and it may have been
 * read half-written), or with the checksum its contents give?
 */
static bool
page_passes(BackupRun *run, char *page, BlockNumber blkno, uint16 *computed)
{
	if (PageIsNew(page) || PageGetLSN(page) >= run->start_lsn)
		return true;
	*computed = pg_checksum_page(page, blkno);
	return *computed == ((PageHeader) page)->pd_checksum;
}

/*
 * Verify the checksums of the whole pages in buf, read from fd at offset.
 * A page that fails is read once more before it counts as bad: the first
 * read may have met it half-written, and a page written since carries an
 * LSN past the start.  The fresher read is what gets copied.
 */
static void
verify_pages(BackupRun *run, int fd, const char *src, const char *relpath,
			 const PageCheck *check, char *buf, size_t len, off_t offset,
			 int *failures)
{
	size_t		pos;

	for (pos = 0; pos + BLCKSZ <= len; pos += BLCKSZ)
	{
		char	   *page = buf + pos;
		BlockNumber blkno = (offset + pos) / BLCKSZ;
		uint16		computed = 0;

		if (page_passes(run, page, check->first_block + blkno, &computed))
			continue;
		if (read_block(fd, src, page, BLCKSZ, offset + pos) < BLCKSZ)
			continue;			/* truncated meanwhile: WAL replay does that */
		if (page_passes(run, page, check->first_block + blkno, &computed))
			continue;

		(*failures)++;
		if (*failures <= MAX_BAD_PAGE_WARNINGS)
			ereport(WARNING,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("checksum verification failed in file \"%s\", block %u: calculated %X but expected %X",
							relpath, blkno, computed, ((PageHeader) page)->pd_checksum)));
		if (*failures == MAX_BAD_PAGE_WARNINGS)
			ereport(WARNING,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("further checksum verification failures in file \"%s\" are counted, not reported",
							relpath)));
		if (run->bad_pages < MAX_BAD_PAGES_LISTED)
			appendStringInfo(&run->bad_list, "%sfile \"%s\" block %u",
							 run->bad_pages > 0 ? ", " : "", relpath, blkno);
		run->bad_pages++;
	}
}

/*
 * Copy one file, computing its CRC-32C.  Returns false if the source
 * vanished before it could be opened (a relation dropped meanwhile: WAL
 * replay recreates whatever it needs).
 */
static bool
copy_file(BackupRun *run, const char *src, const char *dst, const char *relpath,
		  const char *append, const PageCheck *check)
{
	bool		data_file = (relpath != NULL);

	int			in,
				out;
	struct stat st;
	CopiedFile *cf;
	uint64		size = 0;
	uint64		flushed = 0;
	int			failures = 0;

	in = OpenTransientFile(src, O_RDONLY | PG_BINARY);
	if (in < 0)
	{
		if (errno == ENOENT)
			return false;
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not open file \"%s\": %m", src)));
	}
	if (fstat(in, &st) < 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not stat file \"%s\": %m", src)));

	out = create_target_file(run, dst, O_EXCL);

	cf = palloc(sizeof(CopiedFile));
	cf->path = relpath ? pstrdup(relpath) : NULL;
	cf->mtime = (pg_time_t) st.st_mtime;
	INIT_CRC32C(cf->crc);

	for (;;)
	{
		ssize_t		nread;

		CHECK_FOR_INTERRUPTS();
		nread = read_block(in, src, run->buf, COPY_BUFSIZE, size);
		if (nread == 0)
			break;
		if (check)
			verify_pages(run, in, src, relpath, check, run->buf, nread, size, &failures);
		COMP_CRC32C(cf->crc, run->buf, nread);
		write_target(out, dst, run->buf, nread);
		size += nread;

		/*
		 * Start writing a large file's copy back as it goes (sync_file_range()
		 * on Linux): the disk then writes while the rest is read, and the
		 * sync at the end finds little left.  The kernel alone would not
		 * start before a tenth of the memory is dirty.
		 */
		if (size - flushed >= FLUSH_EVERY)
		{
			pg_flush_data(out, flushed, size - flushed);
			flushed = size;
		}
		if (data_file)
		{
			run->done_bytes += nread;
			pgstat_progress_update_param(PROGRESS_BASEBACKUP_BACKUP_STREAMED,
										 run->done_bytes);
			progress_notice(run, false);
			throttle(run);
		}
	}
	if (append)
	{
		size_t		len = strlen(append);

		COMP_CRC32C(cf->crc, append, len);
		write_target(out, dst, append, len);
		size += len;
	}

	/*
	 * Start writing the copy back now (sync_file_range() on Linux), so that
	 * the disk works while the next files are read: the fsync of every file
	 * at the end then finds little left to write.  PostgreSQL's own fsync of
	 * a data directory does the same in a first pass.
	 */
	pg_flush_data(out, flushed, 0);
	if (CloseTransientFile(out) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not close file \"%s\": %m", dst)));
	CloseTransientFile(in);
	if (failures > 0)
	{
		run->bad_files++;
		pgstat_report_checksum_failures_in_db(check->dboid, failures);
	}

	FIN_CRC32C(cf->crc);
	cf->size = size;
	if (data_file)
		run->files = lappend(run->files, cf);
	else
		pfree(cf);
	return true;
}

static void
make_dir(BackupRun *run, const char *path)
{
	if (MakePGDirectory(path) < 0 && errno != EEXIST)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not create directory \"%s\": %m", path),
				 errhint("Check that the backup target is writable and has free space.")));
	run->wrote_target = true;
}

/*
 * Is this file in a database directory a relation fork that is not copied:
 * a temporary relation, or a fork other than the init fork of an unlogged
 * relation (whose init fork the directory also holds)?
 */
static bool
skip_relation_file(const char *dir, const char *name)
{
	int			oidchars;
	ForkNumber	fork;
	char		initpath[MAXPGPATH];
	struct stat st;

	if (looks_like_temp_rel_name(name))
		return true;
	if (!parse_filename_for_nontemp_relation(name, &oidchars, &fork))
		return false;
	if (fork == INIT_FORKNUM)
		return false;
	build_path(initpath, "%s/%.*s_init", dir, oidchars, name);
	return lstat(initpath, &st) == 0;
}

/* Remember the longest relative path the copy will write. */
static void
note_length(BackupRun *run, const char *rel)
{
	if (run->longest_rel == NULL || strlen(rel) > strlen(run->longest_rel))
		run->longest_rel = pstrdup(rel);
}

/*
 * Remember where the tablespaces are, so that one located inside the data
 * directory is copied once, from pg_tblspc, and not a second time where it
 * lies.
 */
static void
find_tablespace_dirs(BackupRun *run)
{
	DIR		   *dir;
	struct dirent *de;

	dir = AllocateDir("pg_tblspc");
	while ((de = ReadDir(dir, "pg_tblspc")) != NULL)
	{
		char		path[MAXPGPATH];
		struct stat st;
		FileId	   *id;

		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		build_path(path, "pg_tblspc/%s", de->d_name);
		if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode))
			continue;			/* the walk reports it */
		id = palloc(sizeof(FileId));
		id->dev = st.st_dev;
		id->ino = st.st_ino;
		run->tblspc_dirs = lappend(run->tblspc_dirs, id);
	}
	FreeDir(dir);
}

static bool
is_tablespace_dir(BackupRun *run, const struct stat *st)
{
	ListCell   *lc;

	foreach(lc, run->tblspc_dirs)
	{
		FileId	   *id = lfirst(lc);

		if (id->dev == st->st_dev && id->ino == st->st_ino)
			return true;
	}
	return false;
}

/*
 * Should the pages of file name, in directory rel of kind kind, be
 * verified?  With data checksums, those of every relation file (the same
 * files pg_checksums verifies): fills *check and returns it, else NULL.
 */
static const PageCheck *
page_check(BackupRun *run, DirKind kind, const char *rel, const char *name,
		   PageCheck *check)
{
	int			oidchars;
	ForkNumber	fork;
	const char *dot;

	if (!run->verify_checksums || (kind != DIR_DATABASE && kind != DIR_GLOBAL) ||
		!parse_filename_for_nontemp_relation(name, &oidchars, &fork))
		return NULL;
	dot = strchr(name, '.');
	check->first_block = dot ? (BlockNumber) strtoul(dot + 1, NULL, 10) * RELSEG_SIZE : 0;
	check->dboid = kind == DIR_DATABASE ? atooid(strrchr(rel, '/') + 1) : InvalidOid;
	return check;
}

/* Create (or count) a directory of the copy. */
static void
copy_dir(BackupRun *run, const char *dst, const char *rel)
{
	if (dst)
		make_dir(run, dst);
	else
		note_length(run, rel);
}

/*
 * Walk one directory: with dst == NULL only add up the sizes of what would
 * be copied; else copy it.  rel is the path relative to the data directory
 * (the manifest's name for it); kind says what the directory holds.
 * global/pg_control is skipped here and copied last.
 */
static void
walk(BackupRun *run, const char *src, const char *dst, const char *rel,
	 DirKind kind)
{
	DIR		   *dir;
	struct dirent *de;
	bool		in_tblspc = strncmp(rel, "pg_tblspc", 9) == 0 &&
		(rel[9] == '\0' || rel[9] == '/');

	dir = AllocateDir(src);
	while ((de = ReadDir(dir, src)) != NULL)
	{
		char		spath[MAXPGPATH];
		char		dpath[MAXPGPATH];
		char		rpath[MAXPGPATH];
		struct stat st;
		PageCheck	check;

		CHECK_FOR_INTERRUPTS();
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		if (strncmp(de->d_name, PG_TEMP_FILE_PREFIX, strlen(PG_TEMP_FILE_PREFIX)) == 0 ||
			skip_file_name(de->d_name))
			continue;
		if (kind == DIR_DATABASE && skip_relation_file(src, de->d_name))
			continue;
		if (kind == DIR_TOP && strcmp(de->d_name, INCOMPLETE_MARKER) == 0)
			continue;
		if (kind == DIR_GLOBAL && strcmp(de->d_name, "pg_control") == 0)
			continue;
		/* Another major version's directory is another cluster's data. */
		if (kind == DIR_TBLSPC && strcmp(de->d_name, TABLESPACE_VERSION_DIRECTORY) != 0)
			continue;

		build_path(spath, "%s/%s", src, de->d_name);
		if (dst)
			build_path(dpath, "%s/%s", dst, de->d_name);
		if (rel[0] == '\0')
			build_path(rpath, "%s", de->d_name);
		else
			build_path(rpath, "%s/%s", rel, de->d_name);

		if (lstat(spath, &st) < 0)
		{
			if (errno == ENOENT)
				continue;		/* dropped meanwhile */
			ereport(ERROR,
					(errcode_for_file_access(),
					 errmsg("could not stat file or directory \"%s\": %m", spath)));
		}

		/* Copied empty, whether directories or links to elsewhere. */
		if (kind == DIR_TOP && (S_ISDIR(st.st_mode) || S_ISLNK(st.st_mode)) &&
			(in_list(de->d_name, skip_contents) || strcmp(de->d_name, XLOGDIR) == 0))
		{
			copy_dir(run, dst ? dpath : NULL, rpath);
			if (strcmp(de->d_name, XLOGDIR) == 0)
			{
				const char *const *sub;

				/* pg_wal keeps its subdirectories, empty. */
				for (sub = wal_subdirs; *sub; sub++)
				{
					if (dst)
						build_path(dpath, "%s/%s", dst, *sub);
					copy_dir(run, dst ? dpath : NULL, *sub);
				}
			}
			continue;
		}

		/* Of the other symbolic links, tablespaces are followed. */
		if (S_ISLNK(st.st_mode))
		{
			if (kind != DIR_TBLSPC_LINKS)
			{
				if (dst)
					ereport(WARNING,
							(errmsg("skipping symbolic link \"%s\"", spath)));
				continue;
			}
			if (stat(spath, &st) < 0 || !S_ISDIR(st.st_mode))
				ereport(ERROR,
						(errcode_for_file_access(),
						 errmsg("could not follow the link \"%s\" to a directory: %m", spath)));
		}

		if (S_ISDIR(st.st_mode))
		{
			/* prepare_target() keeps it out; never copy the copy. */
			if (st.st_dev == run->target_dev && st.st_ino == run->target_ino)
				ereport(ERROR,
						(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						 errmsg("backup target \"%s\" is inside the cluster, at \"%s\"",
								run->target, spath),
						 errhint("Choose a target outside the data directory, the WAL directory and every tablespace.")));

			if (kind == DIR_TBLSPC_LINKS && dst == NULL)
				run->ntablespaces++;
			copy_dir(run, dst ? dpath : NULL, rpath);
			/* A tablespace inside the data directory: from pg_tblspc only. */
			if (!in_tblspc && is_tablespace_dir(run, &st))
				continue;
			walk(run, spath, dst ? dpath : NULL, rpath, child_kind(kind, de->d_name));
			if (kind == DIR_TBLSPC_LINKS && dst)
			{
				run->done_tablespaces++;
				pgstat_progress_update_param(PROGRESS_BASEBACKUP_TBLSPC_STREAMED,
											 run->done_tablespaces);
			}
		}
		else if (S_ISREG(st.st_mode))
		{
			if (dst == NULL)
			{
				run->total_bytes += st.st_size;
				note_length(run, rpath);
			}
			else
				(void) copy_file(run, spath, dpath, rpath,
								 (kind == DIR_TOP && run->ntablespaces > 0 &&
								  strcmp(de->d_name, PG_AUTOCONF_FILENAME) == 0) ?
								 IN_PLACE_SETTING : NULL,
								 page_check(run, kind, rel, de->d_name, &check));
		}
		else if (dst)
			ereport(WARNING,
					(errmsg("skipping special file \"%s\"", spath)));
	}
	FreeDir(dir);
}

/* Write a small file of our own into the target and record it. */
static void
write_target_file(BackupRun *run, const char *name, const char *data, size_t len,
				  bool in_manifest)
{
	char		path[MAXPGPATH];
	int			fd;
	CopiedFile *cf;

	build_path(path, "%s/%s", run->target, name);
	fd = create_target_file(run, path, O_TRUNC);
	write_target(fd, path, data, len);
	if (pg_fsync(fd) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not fsync file \"%s\": %m", path)));
	if (CloseTransientFile(fd) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not close file \"%s\": %m", path)));
	if (!in_manifest)
		return;
	cf = palloc(sizeof(CopiedFile));
	cf->path = pstrdup(name);
	cf->size = len;
	cf->mtime = (pg_time_t) time(NULL);
	INIT_CRC32C(cf->crc);
	COMP_CRC32C(cf->crc, data, len);
	FIN_CRC32C(cf->crc);
	run->files = lappend(run->files, cf);
}

/*
 * fsync every file and directory under path (durably on disk before the
 * manifest says the backup is complete).  Errors are ERRORs, never PANICs:
 * this is not the server's own data.
 */
static void
fsync_tree(const char *path)
{
	DIR		   *dir;
	struct dirent *de;

	dir = AllocateDir(path);
	while ((de = ReadDir(dir, path)) != NULL)
	{
		char		sub[MAXPGPATH];
		struct stat st;

		CHECK_FOR_INTERRUPTS();
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		build_path(sub, "%s/%s", path, de->d_name);
		if (lstat(sub, &st) < 0)
			ereport(ERROR,
					(errcode_for_file_access(),
					 errmsg("could not stat file \"%s\": %m", sub)));
		if (S_ISDIR(st.st_mode))
			fsync_tree(sub);
		else if (S_ISREG(st.st_mode))
			(void) fsync_fname_ext(sub, false, false, ERROR);
	}
	FreeDir(dir);
	(void) fsync_fname_ext(path, true, false, ERROR);
}

/*
 * Make everything under path durable: with syncfs, the target's file
 * system in one call (the whole target is on it: tablespaces and WAL are
 * directories inside it); else each file and directory.
 */
static void
sync_tree(BackupRun *run, const char *path)
{
#ifdef HAVE_SYNCFS
	if (run->sync_fd >= 0)
	{
		if (syncfs(run->sync_fd) < 0)
			ereport(ERROR,
					(errcode_for_file_access(),
					 errmsg("could not synchronize file system of backup target \"%s\": %m",
							run->target),
					 errhint("Check the backup target's disk, or take the backup again with replstamp.backup_sync_method = fsync.")));
		return;
	}
#endif
	fsync_tree(path);
}

/*
 * The manifest, in the format of PostgreSQL's backup_manifest: one line per
 * file, the WAL range, and a SHA-256 of everything before the line that
 * carries it.
 */
static void
write_manifest(BackupRun *run, TimeLineID tli, XLogRecPtr start, XLogRecPtr stop)
{
	StringInfoData buf;
	ListCell   *lc;
	bool		first = true;
	pg_cryptohash_ctx *sha;
	uint8		digest[PG_SHA256_DIGEST_LENGTH];
	char		hex[PG_SHA256_DIGEST_LENGTH * 2 + 1];

	initStringInfo(&buf);
#if PG_VERSION_NUM >= 170000
	/* 17's version 2 names the system, which pg_verifybackup checks. */
	appendStringInfo(&buf, "{ \"PostgreSQL-Backup-Manifest-Version\": 2,\n"
					 "\"System-Identifier\": " UINT64_FORMAT ",\n\"Files\": [",
					 GetSystemIdentifier());
#else
	appendStringInfoString(&buf, "{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": [");
#endif
	foreach(lc, run->files)
	{
		CopiedFile *cf = lfirst(lc);
		char		when[64];
		struct tm  *tm;
		time_t		t = (time_t) cf->mtime;
		uint8		crcbytes[sizeof(pg_crc32c)];
		char		crchex[sizeof(pg_crc32c) * 2 + 1];

		tm = gmtime(&t);
		strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S GMT", tm);
		/* The checksum is the CRC's bytes in memory order, as PostgreSQL's. */
		memcpy(crcbytes, &cf->crc, sizeof(crcbytes));
		hex_encode((char *) crcbytes, sizeof(crcbytes), crchex);
		crchex[sizeof(crchex) - 1] = '\0';

		appendStringInfoString(&buf, first ? "\n" : ",\n");
		first = false;
		appendStringInfoString(&buf, "{ \"Path\": ");
		escape_json(&buf, cf->path);
		appendStringInfo(&buf, ", \"Size\": " UINT64_FORMAT ", \"Last-Modified\": \"%s\", "
						 "\"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"%s\" }",
						 cf->size, when, crchex);
	}
	appendStringInfo(&buf, "\n],\n\"WAL-Ranges\": [\n"
					 "{ \"Timeline\": %u, \"Start-LSN\": \"%X/%X\", \"End-LSN\": \"%X/%X\" }\n"
					 "],\n",
					 tli, LSN_FORMAT_ARGS(start), LSN_FORMAT_ARGS(stop));

	sha = pg_cryptohash_create(PG_SHA256);
	if (sha == NULL || pg_cryptohash_init(sha) < 0 ||
		pg_cryptohash_update(sha, (uint8 *) buf.data, buf.len) < 0 ||
		pg_cryptohash_final(sha, digest, sizeof(digest)) < 0)
		elog(ERROR, "could not compute the manifest checksum: %s",
			 sha ? pg_cryptohash_error(sha) : "out of memory");
	pg_cryptohash_free(sha);
	hex_encode((char *) digest, sizeof(digest), hex);
	hex[sizeof(hex) - 1] = '\0';
	appendStringInfo(&buf, "\"Manifest-Checksum\": \"%s\"}\n", hex);

	write_target_file(run, MANIFEST_FILE, buf.data, buf.len, false);
}

/*
 * Copy WAL from the segment holding start to the one holding stop (and the
 * timeline's history file) into target/pg_wal.  The slot kept them.
 */
static void
copy_wal(BackupRun *run, TimeLineID tli, XLogRecPtr start, XLogRecPtr stop)
{
	XLogSegNo	startseg,
				endseg,
				seg;
	char		fname[MAXFNAMELEN];
	char		src[MAXPGPATH];
	char		dst[MAXPGPATH];

	XLByteToSeg(start, startseg, wal_segment_size);
	XLByteToPrevSeg(stop, endseg, wal_segment_size);
	if (XLogGetLastRemovedSegno() >= startseg)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("WAL needed by the backup was removed while it ran")));

	for (seg = startseg; seg <= endseg; seg++)
	{
		XLogFileName(fname, tli, seg, wal_segment_size);
		build_path(src, XLOGDIR "/%s", fname);
		build_path(dst, "%s/" XLOGDIR "/%s", run->target, fname);

		/*
		 * WAL is not in the manifest: pg_verifybackup checks it with
		 * pg_waldump.
		 */
		if (!copy_file(run, src, dst, NULL, NULL, NULL))
			ereport(ERROR,
					(errcode_for_file_access(),
					 errmsg("WAL segment \"%s\" needed by the backup is missing", src)));
	}
	if (tli > 1)
	{
		TLHistoryFileName(fname, tli);
		build_path(src, XLOGDIR "/%s", fname);
		build_path(dst, "%s/" XLOGDIR "/%s", run->target, fname);
		(void) copy_file(run, src, dst, NULL, NULL, NULL);
	}
}

/*
 * Remove the directories created on the way to the target, as long as they
 * are empty (someone else may have put something there meanwhile).
 */
static void
remove_created_parents(BackupRun *run)
{
	char	   *dir = pstrdup(run->target);

	while (path_within(dir, run->created_root) && strcmp(dir, run->created_root) != 0)
	{
		*strrchr(dir, '/') = '\0';
		if (rmdir(dir) != 0)
			break;
	}
	pfree(dir);
}

/*
 * Undo what a failed backup did.  Runs on ERROR (from PG_CATCH, before the
 * error is re-thrown) and on backend exit (pg_terminate_backend), where no
 * transaction can run: there the databases are flipped back by workers we
 * do not wait for.
 */
static void
backup_cleanup(int code, Datum arg)
{
	BackupRun  *run = current_run;

	if (run == NULL)
		return;
	current_run = NULL;

	HOLD_INTERRUPTS();
	if (run->session_started && get_backup_status() == SESSION_BACKUP_RUNNING)
		do_pg_abort_backup(0, BoolGetDatum(false));
	/* On exit, the slot goes with the backend. */
	if (run->slot_created && !proc_exit_inprogress)
	{
		if (MyReplicationSlot != NULL)
			ReplicationSlotRelease();
		if (SearchNamedReplicationSlot(run->slot_name, true) != NULL)
			ReplicationSlotDrop(run->slot_name, true);
	}
	pgstat_progress_end_command();
	backup_mark_release_owner();
	close_sync_fd(run);
	if (run->wrote_target || run->created_target)
	{
		if (!rmtree(run->target, run->created_target))
			ereport(WARNING,
					(errmsg("could not remove the incomplete backup in \"%s\"", run->target),
					 errhint("Remove it by hand; it is marked by the file %s.", INCOMPLETE_MARKER)));
		else if (run->created_target)
			remove_created_parents(run);
	}
	if (run->flipped != NIL)
	{
		if (proc_exit_inprogress)
			backup_mark_flip_back_detached(run->flipped);
		else
			(void) backup_mark_flip(run->flipped, false, NULL);
	}
	RESUME_INTERRUPTS();
}

/*
 * The real path of an absolute path, whether or not it exists yet: each
 * component that exists is resolved with realpath(), symbolic links
 * included; the rest, which pg_mkdir_p() will create, are appended as they
 * are, "." dropped and ".." taking back the component before it (the
 * parent of a directory just created is the one it was created in).
 */
static char *
resolve_path(const char *path)
{
	StringInfoData res;
	const char *p = path;

	initStringInfo(&res);
	appendStringInfoChar(&res, '/');
	while (*p)
	{
		const char *end = strchr(p, '/');
		int			len = end ? end - p : strlen(p);
		struct stat st;
		char	   *real;

		if (len == 0 || (len == 1 && p[0] == '.'))
			;
		else if (len == 2 && p[0] == '.' && p[1] == '.')
		{
			char	   *slash = strrchr(res.data, '/');

			res.len = (slash == res.data) ? 1 : slash - res.data;
			res.data[res.len] = '\0';
		}
		else
		{
			if (res.len > 1)
				appendStringInfoChar(&res, '/');
			appendBinaryStringInfo(&res, p, len);
			if (lstat(res.data, &st) != 0)
			{
				if (errno != ENOENT)
					ereport(ERROR,
							(errcode_for_file_access(),
							 errmsg("could not access \"%s\" on the way to the backup target: %m",
									res.data)));
			}
			else if ((real = realpath(res.data, NULL)) == NULL)
				ereport(ERROR,
						(errcode_for_file_access(),
						 errmsg("could not resolve \"%s\" on the way to the backup target: %m",
								res.data),
						 errhint("Check the symbolic links in the path of the target.")));
			else
			{
				resetStringInfo(&res);
				appendStringInfoString(&res, real);
				free(real);
			}
		}
		p += len;
		if (*p == '/')
			p++;
	}
	return res.data;
}

/*
 * The highest directory on the way to path (path included) that does not
 * exist: what pg_mkdir_p(path) creates, and a failed backup removes.
 */
static char *
first_missing_dir(const char *path)
{
	char	   *top = pstrdup(path);
	char	   *parent = pstrdup(path);

	for (;;)
	{
		char	   *slash = strrchr(parent, '/');
		struct stat st;

		if (slash == NULL || slash == parent)
			break;
		*slash = '\0';
		if (stat(parent, &st) == 0 || errno != ENOENT)
			break;
		strcpy(top, parent);
	}
	pfree(parent);
	return top;
}

/* A place that belongs to the cluster: the target must keep out of it. */
typedef struct ClusterArea
{
	char	   *label;			/* for messages: "the data directory", ... */
	char	   *path;			/* real path */
} ClusterArea;

static ClusterArea *
cluster_area(const char *path, const char *label)
{
	ClusterArea *area = palloc(sizeof(ClusterArea));
	char	   *real = realpath(path, NULL);

	if (real == NULL)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not resolve \"%s\": %m", path)));
	area->path = pstrdup(real);
	free(real);
	area->label = pstrdup(label);
	return area;
}

/*
 * Where the cluster keeps its files: the data directory, the WAL directory
 * when pg_wal links elsewhere, and every tablespace location.
 */
static List *
cluster_areas(void)
{
	List	   *areas = NIL;
	struct stat st;
	DIR		   *dir;
	struct dirent *de;

	areas = lappend(areas, cluster_area(DataDir, _("the data directory")));
	if (lstat(XLOGDIR, &st) == 0 && S_ISLNK(st.st_mode))
		areas = lappend(areas, cluster_area(XLOGDIR, _("the WAL directory")));

	dir = AllocateDir("pg_tblspc");
	while ((de = ReadDir(dir, "pg_tblspc")) != NULL)
	{
		char		link[MAXPGPATH];
		char	   *name = NULL;

		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		build_path(link, "pg_tblspc/%s", de->d_name);
		if (lstat(link, &st) != 0)
			continue;			/* dropped meanwhile */
		if (strspn(de->d_name, "0123456789") == strlen(de->d_name))
			name = get_tablespace_name(atooid(de->d_name));
		areas = lappend(areas,
						cluster_area(link, name ? psprintf(_("tablespace \"%s\""), name) :
									 _("a tablespace")));
	}
	FreeDir(dir);
	return areas;
}

/*
 * Check the target: absolute, outside the data directory, the WAL
 * directory and every tablespace (after resolving symbolic links, and also
 * when it would not exist yet), absent or an empty directory, writable.
 * Nothing is written until all of that holds.  Creates the target (or its
 * marker) on success; from then on the real path is used.
 */
static void
prepare_target(BackupRun *run, const char *target)
{
	struct stat st;
	char	   *given = pstrdup(target);
	char	   *path;
	char		marker[MAXPGPATH];
	int			fd;
	ListCell   *lc;

	if (!is_absolute_path(given))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("backup target must be an absolute path: \"%s\"", target),
				 errhint("The path is read by the server, whose working directory is the data directory.")));
	canonicalize_path(given);
	path = resolve_path(target);
	check_room(path, NULL, LONGEST_PG_PATH);

	foreach(lc, cluster_areas())
	{
		ClusterArea *area = lfirst(lc);
		bool		inside = path_within(path, area->path);

		if (!inside && !path_within(area->path, path))
			continue;
		if (strcmp(path, given) != 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("backup target \"%s\" overlaps %s", target, area->label),
					 inside ?
					 errdetail("With its symbolic links resolved, the target is \"%s\", which is inside \"%s\".",
							   path, area->path) :
					 errdetail("With its symbolic links resolved, the target is \"%s\", which holds \"%s\".",
							   path, area->path),
					 errhint("Choose a target outside the data directory, the WAL directory and every tablespace.")));
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("backup target \"%s\" overlaps %s", target, area->label),
				 inside ?
				 errdetail("The target is inside \"%s\".", area->path) :
				 errdetail("The target holds \"%s\".", area->path),
				 errhint("Choose a target outside the data directory, the WAL directory and every tablespace.")));
	}

	if (stat(path, &st) == 0)
	{
		DIR		   *dir;
		struct dirent *de;

		if (!S_ISDIR(st.st_mode))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("backup target \"%s\" exists and is not a directory", path)));
		dir = AllocateDir(path);
		while ((de = ReadDir(dir, path)) != NULL)
		{
			if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
				ereport(ERROR,
						(errcode(ERRCODE_DUPLICATE_FILE),
						 errmsg("backup target \"%s\" exists and is not empty", path),
						 errhint("Choose a new directory, or empty this one.")));
		}
		FreeDir(dir);
	}
	else if (errno == ENOENT)
	{
		char	   *copy = pstrdup(path);

		run->created_root = first_missing_dir(path);
		if (pg_mkdir_p(copy, pg_dir_create_mode) != 0 && errno != EEXIST)
			ereport(ERROR,
					(errcode_for_file_access(),
					 errmsg("could not create backup target \"%s\": %m", path),
					 errhint("Create the directory, writable by the server's operating system user, or choose another target.")));
		run->created_target = true;
	}
	else
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not access backup target \"%s\": %m", path)));

	run->target = path;
	if (stat(path, &st) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not stat backup target \"%s\": %m", path)));
	run->target_dev = st.st_dev;
	run->target_ino = st.st_ino;
	build_path(marker, "%s/%s", path, INCOMPLETE_MARKER);
	fd = OpenTransientFile(marker, O_WRONLY | O_CREAT | O_EXCL | PG_BINARY);
	if (fd < 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not write into backup target \"%s\": %m", path),
				 errhint("Make the directory writable by the server's operating system user, or choose another target.")));
	run->wrote_target = true;
	CloseTransientFile(fd);
	open_sync_fd(run);
}

/*
 * CALL replstamp.backup(target text, fast boolean DEFAULT true,
 *                       max_rate integer DEFAULT 0, label text DEFAULT NULL)
 */
Datum
replstamp_backup(PG_FUNCTION_ARGS)
{
	BackupRun  *run;
	char	   *target;
	bool		fast;
	char	   *label;
	TimeLineID	starttli,
				stoptli;
	XLogRecPtr	startpoint,
				stoppoint;
	StringInfo	labelfile;
	StringInfo	tblspcmap;
	MemoryContext cxt,
				oldcxt;
	char		src[MAXPGPATH];
	char		dst[MAXPGPATH];
	char	   *names;

	if (fcinfo->context == NULL || !IsA(fcinfo->context, CallContext) ||
		((CallContext *) fcinfo->context)->atomic || IsTransactionBlock())
		ereport(ERROR,
				(errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
				 errmsg("replstamp.backup() cannot run inside a transaction block"),
				 errhint("Run CALL replstamp.backup(...) on its own: it commits between its steps.")));
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("backup target must not be null")));
	if (RecoveryInProgress())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("replstamp.backup() cannot run during recovery"),
				 errhint("Run it on the primary.")));
	if (get_backup_status() == SESSION_BACKUP_RUNNING)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("a backup is already in progress in this session")));
	(void) catalog_get(false);

	/* Lives across the procedure's commits. */
	cxt = AllocSetContextCreate(TopMemoryContext, "replstamp backup", ALLOCSET_DEFAULT_SIZES);
	oldcxt = MemoryContextSwitchTo(cxt);
	target = text_to_cstring(PG_GETARG_TEXT_PP(0));
	fast = PG_ARGISNULL(1) ? true : PG_GETARG_BOOL(1);
	label = PG_ARGISNULL(3) ?
		psprintf("replstamp.backup %s", timestamptz_to_str(GetCurrentTimestamp())) :
		text_to_cstring(PG_GETARG_TEXT_PP(3));
	if (strlen(label) >= 1024)
		ereport(ERROR,
				(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
				 errmsg("backup label too long (maximum %d bytes)", 1023)));
	run = palloc0(sizeof(BackupRun));
	run->sync_fd = -1;
	run->max_rate = PG_ARGISNULL(2) ? 0 : PG_GETARG_INT32(2);
	if (run->max_rate < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_rate must not be negative")));
	run->buf = palloc(COPY_BUFSIZE);
	INSTR_TIME_SET_CURRENT(run->started);
	run->last_notice = run->started;

	backup_mark_claim_owner();
	current_run = run;
	/* Before our own cleanup: exit callbacks must nest. */
	register_persistent_abort_backup_handler();

	PG_ENSURE_ERROR_CLEANUP(backup_cleanup, (Datum) 0);
	{
		struct stat st;

		prepare_target(run, target);

		/* 2. The flip, committed by the workers before the backup starts. */
		run->flipped = backup_mark_flip(worker_connectable_databases(), true, label);
		MemoryContextSwitchTo(cxt);
		run->flipped = list_copy(run->flipped);
		names = backup_mark_database_names(run->flipped);
		ereport(NOTICE,
				(errmsg("marked 'backup': %s", names)));

		/* Hold no snapshot while the copy runs: end the caller's transaction. */
		SPI_connect_ext(SPI_OPT_NONATOMIC);
		SPI_commit();
		SPI_finish();
		MemoryContextSwitchTo(cxt);

		pgstat_progress_start_command(PROGRESS_COMMAND_BASEBACKUP, InvalidOid);

		/* 3. Keep WAL, then start the backup session. */
		snprintf(run->slot_name, sizeof(run->slot_name), "replstamp_backup_%d", MyProcPid);
		ReplicationSlotCreate(run->slot_name, false, RS_TEMPORARY, false);
		run->slot_created = true;
		ReplicationSlotReserveWal();
		ReplicationSlotRelease();

		pgstat_progress_update_param(PROGRESS_BASEBACKUP_PHASE,
									 PROGRESS_BASEBACKUP_PHASE_WAIT_CHECKPOINT);
		if (fast)
			ereport(NOTICE,
					(errmsg("starting the backup: waiting for an immediate checkpoint")));
		else
			ereport(NOTICE,
					(errmsg("starting the backup: waiting for a spread checkpoint")));
		labelfile = makeStringInfo();
		tblspcmap = makeStringInfo();
		run->session_started = true;
		startpoint = do_pg_backup_start(label, fast, &starttli, labelfile, NULL, tblspcmap);
		run->start_lsn = startpoint;
		run->verify_checksums = DataChecksumsEnabled();
		initStringInfo(&run->bad_list);

		/* 4. Estimate, then copy. */
		pgstat_progress_update_param(PROGRESS_BASEBACKUP_PHASE,
									 PROGRESS_BASEBACKUP_PHASE_ESTIMATE_BACKUP_SIZE);
		find_tablespace_dirs(run);
		walk(run, ".", NULL, "", DIR_TOP);
		if (run->longest_rel)
			check_room(run->target, run->longest_rel, strlen(run->longest_rel));
		if (stat(XLOG_CONTROL_FILE, &st) == 0)
			run->total_bytes += st.st_size;
		{
			const int	index[] = {PROGRESS_BASEBACKUP_PHASE,
				PROGRESS_BASEBACKUP_BACKUP_TOTAL,
			PROGRESS_BASEBACKUP_TBLSPC_TOTAL};
			const int64 val[] = {PROGRESS_BASEBACKUP_PHASE_STREAM_BACKUP,
			(int64) run->total_bytes, run->ntablespaces + 1};

			pgstat_progress_update_multi_param(3, index, val);
		}
		ereport(NOTICE,
				(errmsg_plural("copying %s from the data directory and %d tablespace to \"%s\"",
							   "copying %s from the data directory and %d tablespaces to \"%s\"",
							   run->ntablespaces,
							   pretty_bytes(run->total_bytes), run->ntablespaces, run->target)));
		walk(run, ".", run->target, "", DIR_TOP);
		build_path(dst, "%s/%s", run->target, XLOG_CONTROL_FILE);
		(void) copy_file(run, XLOG_CONTROL_FILE, dst, XLOG_CONTROL_FILE, NULL, NULL);
		pgstat_progress_update_param(PROGRESS_BASEBACKUP_TBLSPC_STREAMED,
									 run->ntablespaces + 1);
		progress_notice(run, true);
		if (run->bad_pages > 0)
			ereport(ERROR,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg_plural("data checksum verification failed for %d page",
								   "data checksum verification failed for %d pages",
								   run->bad_pages, run->bad_pages),
					 run->bad_pages > MAX_BAD_PAGES_LISTED ?
					 errdetail("Bad pages, in %d files, the first %d: %s.",
							   run->bad_files, MAX_BAD_PAGES_LISTED, run->bad_list.data) :
					 errdetail("Bad pages: %s.", run->bad_list.data),
					 errhint("Find the relation of each file with pg_filenode_relation(), restore it from an earlier backup or rebuild it, then take the backup again.")));

		/*
		 * 5. Durable first: the copy on disk before the session stops.  The
		 * stop switches to a new WAL segment and flushes the WAL, and that
		 * flush would otherwise wait behind the writeback of the whole copy
		 * (0.9 s of a 3.5 s backup of 800 MB here).
		 */
		ereport(NOTICE,
				(errmsg(run->sync_fd >= 0 ?
						"syncing the backup to disk: syncfs() of its file system" :
						"syncing the backup to disk: fsync() of each file")));
		sync_tree(run, run->target);

		/* 6. Stop the session; the label and the WAL it needs. */
		stoppoint = do_pg_backup_stop(labelfile->data, false, &stoptli);
		run->session_started = false;
		write_target_file(run, BACKUP_LABEL_FILE, labelfile->data, labelfile->len, true);
		pgstat_progress_update_param(PROGRESS_BASEBACKUP_PHASE,
									 PROGRESS_BASEBACKUP_PHASE_TRANSFER_WAL);
		copy_wal(run, starttli, startpoint, stoppoint);
		ReplicationSlotDrop(run->slot_name, true);
		run->slot_created = false;

		/* 7. The WAL durable too (the label syncs itself), then complete. */
		build_path(dst, "%s/" XLOGDIR, run->target);
		sync_tree(run, dst);
		write_manifest(run, starttli, startpoint, stoppoint);
		build_path(src, "%s/%s", run->target, INCOMPLETE_MARKER);
		if (unlink(src) != 0)
			ereport(ERROR,
					(errcode_for_file_access(),
					 errmsg("could not remove file \"%s\": %m", src)));
		(void) fsync_fname_ext(run->target, true, false, ERROR);
		close_sync_fd(run);

		/* 8. Back to 'original'; from here on the backup stands. */
		run->wrote_target = false;
		run->created_target = false;
		(void) backup_mark_flip(run->flipped, false, NULL);
		run->flipped = NIL;
	}
	PG_END_ENSURE_ERROR_CLEANUP(backup_cleanup, (Datum) 0);

	current_run = NULL;
	pgstat_progress_end_command();
	backup_mark_release_owner();
	ereport(NOTICE,
			(errmsg("backup complete in %.1f s: %s in \"%s\", WAL %X/%X to %X/%X; marked 'original' again: %s",
					elapsed_ms(run->started) / 1000.0, pretty_bytes(run->done_bytes),
					run->target, LSN_FORMAT_ARGS(startpoint), LSN_FORMAT_ARGS(stoppoint), names),
			 errhint("Check it with pg_verifybackup \"%s\".", run->target)));
	MemoryContextSwitchTo(oldcxt);
	MemoryContextDelete(cxt);
	PG_RETURN_VOID();
}

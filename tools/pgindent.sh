#!/usr/bin/env bash
# Indents src/ as PostgreSQL indents its own sources: PostgreSQL's pgindent
# (a Perl driver) running pg_bsd_indent 2.1.2 with a typedefs list.
#
#   tools/pgindent.sh            re-indent src/*.c and src/*.h in place
#   tools/pgindent.sh --check    show what would change; exit 2 if anything would
#   tools/pgindent.sh --typedefs print the typedefs list and exit
#
# The two programs do not come with Debian's postgresql-server-dev-15; both
# are in PostgreSQL's source from release 16 on (src/tools/pgindent/pgindent,
# src/tools/pg_bsd_indent).  Point PG_SOURCE at such a tree: pg_bsd_indent
# is built from it once, against this machine's server headers and
# libpgport, into $PGINDENT_CACHE (default $HOME/.cache/replstamp-pgindent).
# Or name both programs: PGINDENT_SCRIPT=.../pgindent PG_BSD_INDENT=.../pg_bsd_indent.
#
# The typedefs list is made on each run, not kept: the type names declared
# in the server headers this project builds against (pg_config
# --includedir-server) and in libpq's, those of the C library that src/
# uses, and every type src/ declares (tools/typedefs.pl).  PGTYPEDEFS names
# an extra list to add (PostgreSQL's src/tools/pgindent/typedefs.list).
#
# Copyright (c) 2026, the replstamp authors
# Distributed under the PostgreSQL License: see LICENSE.
set -euo pipefail
SRCDIR=$(cd "$(dirname "$0")/.." && pwd)
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
[ -x "$PG_CONFIG" ] || PG_CONFIG=pg_config

mode=write
case "${1:-}" in
	--check) mode=check ;;
	--typedefs) mode=typedefs ;;
	"") ;;
	*) echo "usage: tools/pgindent.sh [--check | --typedefs]" >&2; exit 1 ;;
esac

# Type names of the C library and POSIX that src/ uses: not in any header
# of PostgreSQL's, so not found by the scan.
LIBC_TYPES="DIR FILE int16_t int32_t int64_t int8_t intptr_t mode_t off_t
pid_t sigjmp_buf size_t socklen_t ssize_t time_t uint16_t uint32_t
uint64_t uint8_t uintptr_t va_list"
# Types of later PostgreSQL releases that src/compat.h names, for 16 and on.
LATER_PG_TYPES="BackupState"

typedefs() {
	local inc
	inc=$("$PG_CONFIG" --includedir-server)
	{
		find "$inc" -name '*.h' -print0 | xargs -0 perl "$SRCDIR/tools/typedefs.pl"
		perl "$SRCDIR/tools/typedefs.pl" "$("$PG_CONFIG" --includedir)"/libpq-fe.h \
			"$("$PG_CONFIG" --includedir)"/postgres_ext.h
		perl "$SRCDIR/tools/typedefs.pl" "$SRCDIR"/src/*.h "$SRCDIR"/src/*.c
		printf '%s\n' $LIBC_TYPES $LATER_PG_TYPES
		if [ -n "${PGTYPEDEFS:-}" ]; then cat "$PGTYPEDEFS"; fi
	} | LC_ALL=C sort -u
}

if [ $mode = typedefs ]; then
	typedefs
	exit 0
fi

# The programs.
if [ -z "${PGINDENT_SCRIPT:-}" ] || [ -z "${PG_BSD_INDENT:-}" ]; then
	if [ -z "${PG_SOURCE:-}" ]; then
		echo "tools/pgindent.sh: set PG_SOURCE to a PostgreSQL source tree (16 or later)," >&2
		echo "or PGINDENT_SCRIPT and PG_BSD_INDENT to the two programs (see the head of this script)." >&2
		exit 1
	fi
	PGINDENT_SCRIPT=${PGINDENT_SCRIPT:-$PG_SOURCE/src/tools/pgindent/pgindent}
	if [ -z "${PG_BSD_INDENT:-}" ]; then
		cache=${PGINDENT_CACHE:-$HOME/.cache/replstamp-pgindent}
		PG_BSD_INDENT=$cache/pg_bsd_indent
		if [ ! -x "$PG_BSD_INDENT" ]; then
			mkdir -p "$cache"
			echo "building pg_bsd_indent into $cache" >&2
			# Debian puts libpgport.a in the package library directory.
			pgport=$("$PG_CONFIG" --libdir)/libpgport.a
			[ -f "$pgport" ] || pgport=$("$PG_CONFIG" --pkglibdir)/libpgport.a
			${CC:-cc} -O2 -I"$("$PG_CONFIG" --includedir-server)" -o "$PG_BSD_INDENT" \
				"$PG_SOURCE"/src/tools/pg_bsd_indent/{args,err,indent,io,lexi,parse,pr_comment}.c \
				"$pgport"
		fi
	fi
fi
[ -f "$PGINDENT_SCRIPT" ] || { echo "tools/pgindent.sh: no pgindent at $PGINDENT_SCRIPT" >&2; exit 1; }
[ -x "$PG_BSD_INDENT" ] || { echo "tools/pgindent.sh: no pg_bsd_indent at $PG_BSD_INDENT" >&2; exit 1; }

list=$(mktemp)
trap 'rm -f "$list"' EXIT
typedefs >"$list"
# pgindent writes its temporary files into the current directory.
cd "$SRCDIR"
args=(--typedefs="$list" --indent="$PG_BSD_INDENT")
if [ $mode = check ]; then
	perl "$PGINDENT_SCRIPT" "${args[@]}" --diff --check src
else
	perl "$PGINDENT_SCRIPT" "${args[@]}" src
fi

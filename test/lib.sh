# Shared by test/run and test/demo.sh: packages, an unprivileged user, and a
# private build of replstamp installed next to a private copy of PostgreSQL's
# binaries, so that nothing outside the work directory is written to.
#
# Copyright (c) 2026, the replstamp authors

PGVER=15
PGBIN_SYS=/usr/lib/postgresql/$PGVER/bin
PACKAGES="postgresql-$PGVER postgresql-server-dev-$PGVER libipc-run-perl build-essential rsync pgbackrest barman"

say() { printf '%s\n' "$*" >&2; }

# Install what is missing (as root), or print the exact command and stop.
ensure_packages() {
	local missing="" p
	for p in $PACKAGES; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
			missing="$missing $p"
	done
	[ -z "$missing" ] && return 0
	if [ "$(id -u)" -eq 0 ]; then
		say "replstamp: installing$missing"
		export DEBIAN_FRONTEND=noninteractive
		apt-get update -qq >&2 && apt-get install -y -qq $missing >&2 || {
			say "replstamp: apt-get install$missing failed"
			exit 1
		}
	else
		say "replstamp: missing packages:$missing"
		say "Install them with:"
		say "  sudo apt-get update && sudo apt-get install -y$missing"
		exit 1
	fi
}

# As root, re-run this script as an unprivileged user (initdb refuses root)
# on a copy of the source tree that user owns.  Sets nothing when not root.
# Usage: drop_root "$0" "$@"
drop_root() {
	[ "$(id -u)" -eq 0 ] || return 0
	local script="$1"; shift
	local user="${REPLSTAMP_TEST_USER:-postgres}"
	id "$user" >/dev/null 2>&1 || useradd --system --create-home "$user"
	local src
	src=$(mktemp -d "${TMPDIR:-/tmp}/replstamp-src.XXXXXX")
	rsync -a --exclude .git --exclude 'tmp_*' --exclude '*.o' --exclude '*.so' \
		--exclude '*.bc' "$SRCDIR"/ "$src"/
	# The copy has no git history: bring along the released sources the
	# upgrade tests build (release_source).
	local r a
	for r in $RELEASES; do
		a="$src/$(release_archive_name "${r%%:*}")"
		release_archive "${r%%:*}" "$SRCDIR" >"$a" 2>/dev/null || rm -f "$a"
	done
	chown -R "$user": "$src"
	local rel="${script#"$SRCDIR"/}"
	set +e
	runuser -u "$user" -- env REPLSTAMP_SRC_COPY=1 "$src/$rel" "$@"
	local rc=$?
	rm -rf "$src"
	exit $rc
}

# The released versions the upgrade and mixed-version tests install next
# to the tree under test (test/t/080_upgrade.pl starts from 1.0,
# test/t/082_rolling_upgrade_from_1_1.pl from 1.1): each VERSION:COMMIT.
# A test asks for one by naming REPLSTAMP_INSTALL_<VERSION with _ for .>;
# test/run builds it from the git history.  Its sources come as a tar
# archive named by release_archive_name at the top of a copy of the tree
# that has no history (drop_root makes one).
RELEASES="1.0:76eb008 1.1:600457c"

release_commit() { local r; for r in $RELEASES; do [ "${r%%:*}" = "$1" ] && echo "${r#*:}"; done; }
release_archive_name() { echo "tmp_release-$1.tar"; }

# The sources of release $1 as a tar archive on stdout, from the git
# history of the tree $2; fails if there is none.
release_archive() {
	local commit
	commit=$(release_commit "$1")
	git -C "$2" rev-parse -q --verify "$commit^{commit}" >/dev/null 2>&1 &&
		git -C "$2" archive --format=tar "$commit"
}

# Unpack the sources of release $1 into the directory $2 (created): from
# the archive drop_root left, or from the git history of $SRCDIR.  Fails
# with nothing unpacked when neither is there.
release_source() {
	local version="$1" dir="$2" archive
	archive="$SRCDIR/$(release_archive_name "$version")"
	mkdir -p "$dir"
	if [ -s "$archive" ]; then
		tar -x -C "$dir" -f "$archive"
	elif git -C "$SRCDIR" rev-parse -q --verify "$(release_commit "$version")^{commit}" >/dev/null 2>&1; then
		release_archive "$version" "$SRCDIR" | tar -x -C "$dir"
	else
		return 1
	fi
}

# Build replstamp (warnings are errors) and install it into a private copy
# of PostgreSQL under $1; with $2 = 1, a test build (the testing aids, the
# replstamp.debug_* settings, compiled in), against the major release $3
# (default 15).  Prints the bin directory to use.
private_install() {
	private_install_from "$SRCDIR" "$1" 1 "${2:-0}" "${3:-$PGVER}"
}

# Build the replstamp sources in $1 and install them into a private copy of
# PostgreSQL under $2, with warnings as errors if $3 is 1 (not for a
# release: a newer compiler may warn about code that can no longer change),
# as a test build if $4 is 1.  Prints the bin directory to use.  The
# PostgreSQL is the major release $5 (default 15, the system's; 17 and 18
# from the cache test/pg_major.sh fills).
private_install_from() {
	local srcdir="$1" dest="$2" werror="" testing="" major="${5:-$PGVER}" bin
	local pgc destdir=""
	[ "$3" = 1 ] && werror=WERROR=1
	[ "${4:-0}" = 1 ] && testing=REPLSTAMP_TESTING=1
	bin=$(private_tree "$major" "$dest/install") || return 1
	# Debian's pg_config names the system's directories: the copy is the
	# DESTDIR.  The cache's answers for wherever it was copied to.
	if [ "$major" = "$PGVER" ]; then
		pgc=$PGBIN_SYS/pg_config destdir="$dest/install"
	else
		pgc=$bin/pg_config
	fi
	rsync -a --exclude .git --exclude 'tmp_*' "$srcdir"/ "$dest/build"/
	(cd "$dest/build" && make -s clean >/dev/null 2>&1; \
	 make -s $werror $testing PG_CONFIG="$pgc" >&2 &&
	 make -s install DESTDIR="$destdir" PG_CONFIG="$pgc" >/dev/null) || {
		say "replstamp: build failed"
		return 1
	}
	echo "$bin"
}

# Whether every directory from / down to $1 lets other users through.
others_may_enter() {
	local d
	d=$(cd "$1" && pwd) || return 1
	while [ -n "$d" ]; do
		[ "$(( 0$(stat -c %a "$d") & 1 ))" -eq 1 ] || return 1
		d=${d%/*}
	done
}

# Where test/pg_major.sh keeps the PostgreSQL trees of majors other than 15.
pg_cache() { echo "${REPLSTAMP_PG_CACHE:-$SRCDIR/tmp_pg}"; }

# A private copy of PostgreSQL's binaries of the major release $1 in the
# directory $2 (created): of Debian's 15, or of the tree test/pg_major.sh
# made for 17 or 18, whose pg_config answers for wherever it is copied.
# PostgreSQL finds its share and lib directories relative to its own
# binary, so real copies of the binaries make a relocated installation.
# Prints its bin directory.
private_tree() {
	local major="$1" ti="$2" tree
	if [ "$major" = "$PGVER" ]; then
		mkdir -p "$ti/usr/lib/postgresql/$PGVER" "$ti/usr/share/postgresql"
		cp -a /usr/lib/postgresql/$PGVER/bin /usr/lib/postgresql/$PGVER/lib \
			"$ti/usr/lib/postgresql/$PGVER/"
		cp -a /usr/share/postgresql/$PGVER "$ti/usr/share/postgresql/"
		echo "$ti/usr/lib/postgresql/$PGVER/bin"
		return 0
	fi
	tree="$(pg_cache)/$major/install"
	if [ ! -x "$tree/bin/pg_config" ]; then
		say "replstamp: no PostgreSQL $major in $(pg_cache)/$major: test/pg_major.sh $major (as root) fetches it"
		return 1
	fi
	mkdir -p "$ti"
	cp -a "$tree"/. "$ti"/
	echo "$ti/bin"
}

# For the benchmarks: a private build and one throw-away cluster with
# replstamp preloaded, on a private port and socket directory, stopped and
# removed on exit (with every other cluster started under $WORK).  Extra
# arguments are postgresql.conf lines.  Sets WORK, PORT and the libpq
# environment (database "bench", which it creates).
bench_cluster() {
	WORK=$(mktemp -d /tmp/replstamp-bench.XXXXXX)
	PORT=$((5400 + RANDOM % 500))
	# Before the build, so that a failed build removes the directory too.
	trap bench_cleanup EXIT
	local bin
	bin=$(private_install "$WORK") || exit 1
	export PATH="$bin:$PATH" PGHOST="$WORK" PGPORT="$PORT" PGDATABASE=bench
	unset PGUSER PGSERVICE
	bench_initdb "$WORK/data" "$PORT" "$@"
	pg_ctl -D "$WORK/data" -l "$WORK/log" -w start >/dev/null
	createdb bench
}

# For benchmarks that need more than one cluster, after bench_cluster:
# another one in $WORK/$1 on port $2 (its socket in $WORK too), with the
# same settings and the extra postgresql.conf lines given, logging to
# $WORK/$1.log, with a database "bench".  bench_cleanup stops it.
bench_node() {
	local dir="$WORK/$1" port="$2"
	shift 2
	bench_initdb "$dir" "$port" "$@"
	pg_ctl -D "$dir" -l "$dir.log" -w start >/dev/null
	createdb -p "$port" bench
}

bench_initdb() {
	local dir="$1" port="$2"
	shift 2
	# BENCH_CHECKSUMS=1: data checksums on (initdb -k), as PostgreSQL 18's
	# initdb has by default.
	local k=""
	[ "${BENCH_CHECKSUMS:-0}" = 1 ] && k=-k
	initdb -D "$dir" -A trust $k >/dev/null
	{
		echo "shared_preload_libraries = 'replstamp'"
		echo "listen_addresses = ''"
		echo "unix_socket_directories = '$WORK'"
		echo "port = $port"
		printf '%s\n' "$@"
	} >>"$dir/postgresql.conf"
}

# The median of the numbers on stdin, one a line: for an even count the
# mean of the two middle values (the lower one alone would favour the
# faster of two rounds).
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR) print (v[int((NR + 1) / 2)] + v[int(NR / 2) + 1]) / 2 }'; }

# For a benchmark with background jobs of its own (samplers, waiters, a
# sync): on exit they are stopped by their ids before the clusters are.
bench_jobs_cleanup() {
	local p
	for p in $(jobs -p); do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	bench_cleanup
}
bench_trap_jobs() {
	trap bench_jobs_cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
}

bench_cleanup() {
	local pid
	for pid in "$WORK"/*/postmaster.pid; do
		[ -f "$pid" ] && pg_ctl -D "$(dirname "$pid")" -m immediate stop >/dev/null 2>&1
	done
	rm -rf "$WORK"
}

#!/usr/bin/env bash
# What does replstamp.verify() cost, next to comparing whole tables?  Two
# clusters a and b, a table of VERIFY_ROWS rows (default 1,000,000) written
# on a and pulled by b; in the same run, for the two tables equal and then
# differing in VERIFY_DIFF rows (default 100):
#
#   verify        SELECT * FROM replstamp.verify('b') on a (digests, then
#                 the rows of differing buckets only)
#   verify deep   the same with deep => true (both tables scanned)
#   md5           SELECT md5(string_agg(t::text, ',' ORDER BY id)) on a,
#                 then on b: what a whole-table comparison costs
#
# each BENCH_ROUNDS times in turn, medians printed side by side: time (ms,
# wall clock of the client) and rows read (verify: the digest rows and the
# table or row_version rows both sides read, from replstamp.verification;
# md5: the rows of both tables).  The differing rows are made on b with
# the stamp trigger off (as pg_restore --disable-triggers would) and
# their row_version entries moved to another stamp (as a lost apply
# would), so that both plain and deep verification have them to find.
#
#   test/bench/verify.sh
#   VERIFY_ROWS=100000 BENCH_ROUNDS=3 test/bench/verify.sh
#
#   VERIFY_ROWS    rows of the table (default 1000000)
#   VERIFY_DIFF    rows that differ in the second half (default 100)
#   BENCH_ROUNDS   rounds, medians (default 5)
#
# Copyright (c) 2026, the replstamp authors
set -eu
SRCDIR=$(cd "$(dirname "$0")/../.." && pwd)
. "$SRCDIR/test/lib.sh"
ensure_packages
drop_root "$SRCDIR/test/bench/verify.sh" "$@"

ROWS=${VERIFY_ROWS:-1000000}
DIFF=${VERIFY_DIFF:-100}
ROUNDS=${BENCH_ROUNDS:-5}
for v in $ROWS $DIFF $ROUNDS; do
	case "$v" in ''|*[!0-9]*) say "verify.sh: not a number: \"$v\""; exit 2 ;; esac
done
[ "$ROUNDS" -gt 0 ] && [ "$DIFF" -le "$ROWS" ] || { say "verify.sh: BENCH_ROUNDS > 0 and VERIFY_DIFF <= VERIFY_ROWS"; exit 2; }

CONF=("synchronous_commit = off" "shared_buffers = 256MB" "max_wal_size = 4GB"
	"checkpoint_timeout = 30min" "replstamp.sync_interval = 0" "replstamp.prune_interval = 0")
bench_cluster "${CONF[@]}"
PORT_A=$PORT
PORT_B=$((PORT + 1))
bench_node b "$PORT_B" "${CONF[@]}"

q() { local port="$1"; shift; psql -qXAt -v ON_ERROR_STOP=1 -p "$port" "$@"; }
now_ms() { date +%s%3N; }

for p in $PORT_A $PORT_B; do
	q "$p" -c "CREATE EXTENSION replstamp" \
		-c "CREATE TABLE big (id int PRIMARY KEY, v text NOT NULL, n int NOT NULL, at timestamptz NOT NULL)" \
		-c "SELECT replstamp.track('big')"
done
q "$PORT_A" -c "SELECT replstamp.add_peer('b', 'host=$WORK port=$PORT_B dbname=bench')"
q "$PORT_B" -c "SELECT replstamp.add_peer('a', 'host=$WORK port=$PORT_A dbname=bench')"

say "== writing $ROWS rows on a, b pulling them"
t0=$(now_ms)
q "$PORT_A" -c "INSERT INTO big SELECT g, md5(g::text), g % 1000, '2026-01-01'::timestamptz + g * interval '1 s'
                FROM generate_series(1, $ROWS) g"
q "$PORT_B" -c "SET replstamp.sync_batch_size = 10000" -c "SELECT replstamp.sync('a')" >/dev/null
q "$PORT_A" -c "SELECT replstamp.sync('b')" >/dev/null
say "   $(( $(now_ms) - t0 )) ms"
# The first verification reconciles a's own changes into row_version, as
# the next sync or prune would: timed apart.
t0=$(now_ms)
q "$PORT_A" -c "SELECT count(*) FROM replstamp.verify('b')" >/dev/null
FIRST=$(( $(now_ms) - t0 ))
q "$PORT_A" -c "VACUUM ANALYZE big" -c "VACUUM ANALYZE replstamp.row_version" -c "VACUUM ANALYZE replstamp.row_digest"
q "$PORT_B" -c "VACUUM ANALYZE big" -c "VACUUM ANALYZE replstamp.row_version" -c "VACUUM ANALYZE replstamp.row_digest"

# One measurement: prints "ms rows differences".
measure() {
	local what="$1" t0 t1 out
	case "$what" in
	verify|deep)
		local deep=false
		[ "$what" = deep ] && deep=true
		t0=$(now_ms)
		out=$(q "$PORT_A" -c "SELECT count(*) FROM replstamp.verify('b', deep => $deep)")
		t1=$(now_ms)
		echo "$((t1 - t0)) $(q "$PORT_A" -c "SELECT digests_read + rows_read FROM replstamp.verification WHERE peer = 'b'") $out"
		;;
	md5)
		local ha hb
		t0=$(now_ms)
		ha=$(q "$PORT_A" -c "SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM big t")
		hb=$(q "$PORT_B" -c "SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM big t")
		t1=$(now_ms)
		local differ=0
		[ "$ha" = "$hb" ] || differ=1
		echo "$((t1 - t0)) $((2 * ROWS)) $differ"
		;;
	esac
}

declare -A TIMES READS FOUND
run_case() {
	local case="$1" r w m
	for r in $(seq 1 "$ROUNDS"); do
		for w in verify deep md5; do
			m=$(measure "$w")
			TIMES[$case.$w]+="$(echo "$m" | cut -d' ' -f1) "
			READS[$case.$w]+="$(echo "$m" | cut -d' ' -f2) "
			FOUND[$case.$w]=$(echo "$m" | cut -d' ' -f3)
		done
	done
}
med() { printf '%s\n' $1 | median; }

say "== equal tables, $ROUNDS rounds"
run_case equal

say "== $DIFF rows made to differ on b"
q "$PORT_B" -c "ALTER EVENT TRIGGER replstamp_ddl_guard DISABLE" \
	-c "ALTER TABLE big DISABLE TRIGGER replstamp_stamp" \
	-c "UPDATE big SET v = 'differs' WHERE id IN (SELECT id FROM big ORDER BY md5(id::text) LIMIT $DIFF)" \
	-c "ALTER TABLE big ENABLE ALWAYS TRIGGER replstamp_stamp" \
	-c "ALTER EVENT TRIGGER replstamp_ddl_guard ENABLE ALWAYS" \
	-c "UPDATE replstamp.row_version SET serial = serial + 1000000000
	    WHERE relation = 'public.big' AND (pk->>'id')::int IN (SELECT id FROM big WHERE v = 'differs')" \
	-c "SELECT replstamp.rebuild_digests('big')" >/dev/null
run_case differ

echo
echo "verify of two tables of $ROWS rows (medians of $ROUNDS rounds; rows read: both nodes)"
printf '%-24s | %12s %12s %8s | %12s %12s %8s\n' "" "equal: ms" "rows read" "found" "$DIFF differ: ms" "rows read" "found"
for w in verify deep md5; do
	label=$w
	[ "$w" = verify ] && label="verify('b')"
	[ "$w" = deep ] && label="verify('b', deep)"
	[ "$w" = md5 ] && label="md5 of both tables"
	printf '%-24s | %12s %12s %8s | %12s %12s %8s\n' "$label" \
		"$(med "${TIMES[equal.$w]}")" "$(med "${READS[equal.$w]}")" "${FOUND[equal.$w]}" \
		"$(med "${TIMES[differ.$w]}")" "$(med "${READS[differ.$w]}")" "${FOUND[differ.$w]}"
done
echo "(found: rows verify named; for md5, 1 if the two digests differ)"
echo "first verify after writing the rows on a (it reconciles them into row_version): $FIRST ms"
